r"""The quick recipe on held-out VOC-format sets: one timed run per set.

    .venv/bin/python experiments/own_data/make_sets.py --out /tmp/own_data
    .venv/bin/python experiments/own_data/run_recipe.py --data /tmp/own_data
    .venv/bin/python experiments/own_data/run_recipe.py --data /tmp/own_data \
      --sets shapes10 --budget_minutes 2 --out_dir /tmp/own_results \
      --config.num_steps=50

For each set (the folders `make_sets.py` writes; a set missing from
`--data` is written first, with its defaults) it runs, from the repository
root,

    python -m ssd_jax.main --config=configs/voc_folder.py:small \
      --config.data.root=DATA/SET --config.data.train_split=train \
      --config.data.eval_split=test --workdir=WORKDIRS/SET [--config.*=...]

as a new user would, with every `--config.*` argument given here passed
through. Each run has a wall-clock budget (`--budget_minutes`, 10 by
default: the issue's goal); a run still going then is stopped (SIGTERM to
its process group, SIGKILL 30 s later) and its row reports the last
evaluation it wrote within the budget (status "stopped"), or none.

The table (set, train/test images, classes, steps, minutes, mAP@0.5,
status) is printed and written with the details as JSON to
`OUT_DIR/own_data_<date>.md` and `.json` (by default experiments/results/).
Each run's output is in `WORKDIRS/SET/run.log`; WORKDIRS is a new temporary
folder unless `--workdir_root` names one (a set's workdir must not exist
yet, so that no run resumes an old checkpoint).
"""

import argparse
import importlib.util
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from ssd_jax import recipe
from ssd_jax.data import voc_folder
from ssd_jax.evaluator import EVAL_RESULTS

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
RESULTS_DIR = os.path.join(REPO_ROOT, "experiments", "results")
DEFAULT_CONFIG = "configs/voc_folder.py:small"
TRAIN_SPLIT, EVAL_SPLIT = "train", "test"
_KILL_GRACE_S = 30.0


def _load_make_sets():
  """make_sets.py beside this script (the scripts are not a package)."""
  path = os.path.join(HERE, "make_sets.py")
  spec = importlib.util.spec_from_file_location("make_sets", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


make_sets = _load_make_sets()


def recipe_command(
  set_root: str,
  workdir: str,
  overrides: Sequence[str] = (),
  config: str = DEFAULT_CONFIG,
  python: str = sys.executable,
) -> list[str]:
  """The training command for one set.

  Args:
    set_root: the set's VOC folder.
    workdir: the run's workdir.
    overrides: more `--config.KEY=VALUE` arguments, appended last (they win).
    config: the config file and argument.
    python: the interpreter.

  Returns:
    The argument list, to run from the repository root.
  """
  return [
    python,
    "-m",
    "ssd_jax.main",
    f"--config={config}",
    f"--config.data.root={set_root}",
    f"--config.data.train_split={TRAIN_SPLIT}",
    f"--config.data.eval_split={EVAL_SPLIT}",
    f"--workdir={workdir}",
    *overrides,
  ]


class Finished(NamedTuple):
  """How a budgeted run ended.

  Attributes:
    returncode: the exit status, or None when it was stopped.
    seconds: wall-clock seconds from start to exit or stop.
  """

  returncode: int | None
  seconds: float


def run_with_budget(
  command: Sequence[str],
  budget_s: float,
  log_path: str,
  cwd: str = REPO_ROOT,
  grace_s: float = _KILL_GRACE_S,
) -> Finished:
  """Runs `command` with output to `log_path`, stopped after `budget_s`.

  The command runs in its own process group; at the budget the group gets
  SIGTERM, and SIGKILL `grace_s` later if it is still there.

  Args:
    command: the argument list.
    budget_s: wall-clock seconds allowed.
    log_path: file for stdout and stderr (created).
    cwd: the working folder.
    grace_s: seconds between SIGTERM and SIGKILL.

  Returns:
    `Finished`: returncode None when the budget stopped it.
  """
  start = time.perf_counter()
  with open(log_path, "w") as log:
    proc = subprocess.Popen(
      list(command),
      cwd=cwd,
      stdout=log,
      stderr=subprocess.STDOUT,
      start_new_session=True,
    )
    try:
      code = proc.wait(timeout=budget_s)
      return Finished(code, time.perf_counter() - start)
    except subprocess.TimeoutExpired:
      seconds = time.perf_counter() - start
      os.killpg(proc.pid, signal.SIGTERM)
      try:
        proc.wait(timeout=grace_s)
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
      return Finished(None, seconds)


def read_eval(workdir: str) -> tuple[int | None, float]:
  """(step, mAP) of a workdir's `eval_results.json`; (None, NaN) if none."""
  path = os.path.join(workdir, EVAL_RESULTS)
  if not os.path.exists(path):
    return None, math.nan
  with open(path) as f:
    record = json.load(f)
  m_ap = record.get("mAP")
  return record.get("step"), math.nan if m_ap is None else float(m_ap)


class Row(NamedTuple):
  """One set's result."""

  set: str
  train_images: int
  test_images: int
  classes: int
  steps: int | None
  minutes: float
  mAP: float
  status: str


def run_set(
  name: str,
  set_root: str,
  workdir: str,
  budget_s: float,
  overrides: Sequence[str] = (),
  config: str = DEFAULT_CONFIG,
  python: str = sys.executable,
) -> tuple[Row, list[str]]:
  """Trains and evaluates the recipe on one set within `budget_s`.

  Args:
    name: the set's name (the row's label).
    set_root: its VOC folder (train and test splits, classes.txt).
    workdir: the run's workdir; must not exist.
    budget_s: wall-clock seconds.
    overrides, config, python: as `recipe_command`.

  Returns:
    (the `Row`, the command run). Status is "ok", "stopped" (over budget)
    or "failed (exit N)".

  Raises:
    FileExistsError: when `workdir` exists (a run would resume from it).
    FileNotFoundError, ValueError: from the VOC reader, naming a bad file.
  """
  if os.path.exists(workdir):
    raise FileExistsError(f"workdir {workdir} exists; give a new one")
  train = voc_folder.index_voc_folder(set_root, TRAIN_SPLIT, check_images=False)
  test = voc_folder.index_voc_folder(set_root, EVAL_SPLIT, check_images=False)
  classes = len(voc_folder.folder_class_names(set_root))
  os.makedirs(workdir)
  command = recipe_command(set_root, workdir, overrides, config, python)
  done = run_with_budget(command, budget_s, os.path.join(workdir, "run.log"))
  step, m_ap = read_eval(workdir)
  if done.returncode is None:
    status = "stopped"
  elif done.returncode:
    status = f"failed (exit {done.returncode})"
  else:
    status = "ok"
  row = Row(
    name, len(train), len(test), classes, step, done.seconds / 60, m_ap, status
  )
  return row, command


def portable(value: Any, paths: dict[str, str]) -> Any:
  """`value` (JSON-like) with each path prefix replaced by its placeholder.

  The results record names the data folder "DATA", the workdirs' root
  "RUNS" and the interpreter "python", so that a committed record holds no
  path of the machine it ran on. Longer prefixes are replaced first.
  """
  if isinstance(value, dict):
    return {k: portable(v, paths) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [portable(v, paths) for v in value]
  if isinstance(value, str):
    for prefix in sorted(paths, key=len, reverse=True):
      value = value.replace(prefix, paths[prefix])
  return value


def format_table(rows: Sequence[Row]) -> str:
  """A markdown table: set, images, classes, steps, minutes, mAP@0.5."""
  lines = [
    "| set | images (train/test) | classes | steps | minutes | mAP@0.5 "
    "| status |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in rows:
    steps = "-" if r.steps is None else str(r.steps)
    m_ap = "-" if math.isnan(r.mAP) else f"{r.mAP:.3f}"
    lines.append(
      f"| {r.set} | {r.train_images}/{r.test_images} | {r.classes} | "
      f"{steps} | {r.minutes:.1f} | {m_ap} | {r.status} |"
    )
  return "\n".join(lines)


def _parse(argv: Sequence[str] | None):
  parser = argparse.ArgumentParser(
    description=__doc__.splitlines()[0],
    epilog="Other arguments --config.KEY=VALUE are passed to every run.",
  )
  parser.add_argument("--data", required=True, help="folder of the sets")
  parser.add_argument(
    "--sets", default=",".join(make_sets.SETS), help="comma list of sets"
  )
  parser.add_argument("--budget_minutes", type=float, default=10.0)
  parser.add_argument("--workdir_root", default="", help="default: new tmp")
  parser.add_argument("--out_dir", default=RESULTS_DIR)
  parser.add_argument("--date", default=time.strftime("%Y-%m-%d"))
  parser.add_argument("--config", default=DEFAULT_CONFIG)
  parser.add_argument(
    "--python", default=sys.executable, help="the runs' interpreter"
  )
  args, extra = parser.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognised arguments (not --config.*): {bad}")
  names = [s.strip() for s in args.sets.split(",") if s.strip()]
  unknown = [n for n in names if n not in make_sets.SETS]
  if unknown or not names:
    parser.error(f"--sets: unknown {unknown}; known: {list(make_sets.SETS)}")
  return args, names, extra


def main(argv: Sequence[str] | None = None) -> list[Row]:
  """Runs the recipe on each set; writes and returns the rows."""
  args, names, overrides = _parse(argv)
  data = os.path.abspath(args.data)
  missing = [n for n in names if not os.path.isdir(os.path.join(data, n))]
  if missing:
    make_sets.main(["--out", data, "--sets", ",".join(missing)])
  root = args.workdir_root or tempfile.mkdtemp(prefix="own_data_runs_")
  rows, runs = [], []
  for name in names:
    workdir = os.path.join(os.path.abspath(root), name)
    row, command = run_set(
      name,
      os.path.join(data, name),
      workdir,
      args.budget_minutes * 60,
      overrides,
      args.config,
      args.python,
    )
    print(f"{row}\n  {shlex.join(command)}", flush=True)
    rows.append(row)
    # The run's choices with their reasons: the machine speed the plan saw
    # (image_size) and the speed the run measured (a re-planned num_steps).
    choices = recipe.read(workdir) or []
    runs.append(
      {
        **row._asdict(),
        "workdir": workdir,
        "command": command,
        "recipe": [{"field": c.field, "reason": c.reason} for c in choices],
      }
    )
  table = format_table(rows)
  print(table)
  os.makedirs(args.out_dir, exist_ok=True)
  stem = os.path.join(args.out_dir, f"own_data_{args.date}")
  header = (
    f"Quick recipe `{args.config}` on held-out sets "
    f"(experiments/own_data/make_sets.py), {args.budget_minutes:g} min "
    f"budget per set, {os.cpu_count()} CPUs; overrides: "
    f"{' '.join(overrides) or 'none'}.\n\n"
  )
  with open(stem + ".md", "w") as f:
    f.write(header + table + "\n")
  record = {
    "date": args.date,
    "config": args.config,
    "overrides": list(overrides),
    "budget_minutes": args.budget_minutes,
    "cpu_count": os.cpu_count(),
    "load_average": os.getloadavg(),
    "data": data,
    # NaN is not JSON: a missing mAP is written as null.
    "runs": [
      {**r, "mAP": None if math.isnan(r["mAP"]) else r["mAP"]} for r in runs
    ],
  }
  record = portable(
    record,
    {data: "DATA", os.path.abspath(root): "RUNS", args.python: "python"},
  )
  with open(stem + ".json", "w") as f:
    json.dump(record, f, indent=1)
  return rows


if __name__ == "__main__":
  main(sys.argv[1:])
