r"""The speed probe's reference time (`budget.PROBE_REFERENCE_SECONDS`).

    .venv/bin/python experiments/own_data/calibrate_probe.py \
      --data /tmp/own_data --sets shapes10 --sizes 96,128

The quick recipe plans a run at `budget.seconds_per_image` times this
machine's speed, `budget.probe_seconds() / PROBE_REFERENCE_SECONDS`. The
reference is the probe's time on a machine where the recipe's steps take
the cost table's time. For each set and input size this script times the
probe (in this process, under the entry points' XLA flags,
`runtime.apply_xla_cpu_flags`; nothing else running), then starts the quick
recipe's command (`run_recipe.recipe_command` with
`--config.model.image_size=SIZE`, a new workdir), waits for the run's
"Timed steps" log line (`train._Replan`: the run's own milliseconds per
step, steps 11-40), stops it, and compares: with the table's time per step
for that run's model (`recipe.json`: conv3_3 map, width, stem; the config's
batch), the machine's speed is `measured / table` and the reference that
would have predicted it `probe / speed`. The median over the runs is the
value to set; each run's numbers are printed and written as JSON to
`OUT_DIR/calibrate_probe_<date>.json`.
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from ssd_jax import budget, recipe, runtime
from ssd_jax import config as config_lib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_recipe  # noqa: E402  (a script beside this one)

TIMED = re.compile(r"Timed steps \d+-\d+: ([0-9.]+) ms per step")


def implied_reference(
  probe_seconds: float, measured_step: float, table_step: float
) -> float:
  """The probe time at which the table would have predicted the measured
  step: `probe_seconds / (measured_step / table_step)`."""
  return probe_seconds * table_step / measured_step


def time_steps(command: Sequence[str], log_path: str, timeout: float) -> float:
  """Runs `command` until its "Timed steps" line; returns its seconds per
  step (the run is stopped then).

  Raises:
    RuntimeError: when the run ends or times out first (its log named).
  """
  with open(log_path, "w") as log:
    proc = subprocess.Popen(
      command,
      stdout=log,
      stderr=subprocess.STDOUT,
      cwd=run_recipe.REPO_ROOT,
      start_new_session=True,
    )
  deadline = time.monotonic() + timeout
  try:
    while time.monotonic() < deadline and proc.poll() is None:
      time.sleep(1.0)
      with open(log_path) as f:
        found = TIMED.search(f.read())
      if found:
        return float(found.group(1)) / 1e3
    raise RuntimeError(f"no 'Timed steps' line in {log_path}")
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True, help="folder of the sets")
  parser.add_argument("--sets", default="shapes10")
  parser.add_argument("--sizes", default="96,128")
  parser.add_argument("--timeout_s", type=float, default=300.0)
  parser.add_argument("--out_dir", default=run_recipe.RESULTS_DIR)
  parser.add_argument("--date", default=time.strftime("%Y-%m-%d"))
  parser.add_argument(
    "--python", default=sys.executable, help="the runs' interpreter"
  )
  args = parser.parse_args(argv)
  # The probe runs under the XLA flags training runs under (the entry
  # points set them before JAX starts; without them the probe took ~1.7x).
  runtime.apply_xla_cpu_flags()
  path, arg = run_recipe.DEFAULT_CONFIG.split(":")
  config = config_lib.config_from_file(
    os.path.join(run_recipe.REPO_ROOT, path), arg
  )
  runs = []
  root = tempfile.mkdtemp(prefix="calibrate_probe_")
  for name in args.sets.split(","):
    for size in (int(s) for s in args.sizes.split(",")):
      probe = budget.probe_seconds()
      workdir = os.path.join(root, f"{name}_{size}")
      command = run_recipe.recipe_command(
        os.path.join(os.path.abspath(args.data), name),
        workdir,
        [f"--config.model.image_size={size}"],
        python=args.python,
      )
      measured = time_steps(command, workdir + ".log", args.timeout_s)
      table = recipe.table_seconds_per_step(
        recipe.read(workdir), int(config.batch_size)
      )
      run = {
        "set": name,
        "image_size": size,
        "probe_ms": probe * 1e3,
        "measured_ms_per_step": measured * 1e3,
        "table_ms_per_step": table * 1e3,
        "speed": measured / table,
        "implied_reference_ms": implied_reference(probe, measured, table) * 1e3,
      }
      print(json.dumps(run), flush=True)
      runs.append(run)
  refs = [r["implied_reference_ms"] for r in runs]
  record = {
    "date": args.date,
    "cpu_count": os.cpu_count(),
    "probe_reference_ms_now": budget.PROBE_REFERENCE_SECONDS * 1e3,
    "median_implied_reference_ms": statistics.median(refs),
    "runs": runs,
  }
  print(json.dumps({k: v for k, v in record.items() if k != "runs"}))
  os.makedirs(args.out_dir, exist_ok=True)
  path = os.path.join(args.out_dir, f"calibrate_probe_{args.date}.json")
  with open(path, "w") as f:
    json.dump(record, f, indent=1)
  return record


if __name__ == "__main__":
  main()
