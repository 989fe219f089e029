r"""Hyper-parameter sweeps: expand, print or run, and summarise.

A sweep is a base config plus axes; each axis is a list of override dicts,
and the runs are their Cartesian product. Each run is one command

  python -m ssd_jax.main --config=BASE --workdir=ROOT/RUN --config.k=v ...

with its own workdir, so the same commands run here one after another, or
on TPU/GPU hosts (one command per host or job; see README.md here).

  python experiments/sweeps/sweep.py --sweep=voc_lr_bs_size --root=/tmp/sw
  python experiments/sweeps/sweep.py --sweep=shapes_tiny --root=/tmp/sw \
    --action=run
  python experiments/sweeps/sweep.py --sweep=shapes_tiny --root=/tmp/sw \
    --action=summary

The summary table (one row per run: overrides, final mAP, images/s) is read
from each workdir's `eval_results.json` and `metrics.jsonl`, printed, and
written to ROOT/summary.md.
"""

import argparse
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))

# name -> (base config, axes). Values are passed as --config.KEY=VALUE.
SWEEPS: dict[str, tuple[str, list[list[dict[str, Any]]]]] = {
  # The paper's SSD300 recipe around its learning rate, batch and input.
  "voc_lr_bs_size": (
    "configs/voc.py",
    [
      [{"learning_rate": v} for v in (5e-4, 1e-3, 2e-3)],
      [{"batch_size": v} for v in (32, 64)],
      [
        {"model.name": "ssd300", "model.image_size": 300},
        {"model.name": "ssd512", "model.image_size": 512},
      ],
    ],
  ),
  # Seconds per run on a CPU: the smoke test of the machinery.
  "shapes_tiny": (
    "configs/shapes.py:small",
    [[{"learning_rate": v} for v in (1e-3, 2e-3)]],
  ),
}


class Run(NamedTuple):
  """One run of a sweep: its name, workdir and command line."""

  name: str
  overrides: dict[str, Any]
  workdir: str
  command: list[str]


def _value_text(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return ",".join(str(v) for v in value)
  return str(value)


def run_name(overrides: Mapping[str, Any]) -> str:
  """A workdir-safe name for a set of overrides, e.g. `learning_rate=0.001`."""
  if not overrides:
    return "base"
  parts = [f"{k}={_value_text(v)}" for k, v in overrides.items()]
  return "_".join(p.replace("/", "-").replace(" ", "") for p in parts)


def expand(
  base: str,
  axes: Sequence[Sequence[Mapping[str, Any]]],
  root: str,
  extra: Sequence[str] = (),
  python: str = sys.executable,
) -> list[Run]:
  """The runs of a sweep: the product of its axes, in row-major order.

  Args:
    base: config path (with optional `:arg`).
    axes: each a list of override dicts; one dict per value.
    root: parent folder of the runs' workdirs.
    extra: more arguments appended to every command (e.g. overrides).
    python: the interpreter in the commands.

  Returns:
    One Run per combination (a single "base" run when there are no axes).

  Raises:
    ValueError: when two axes set the same key or an axis is empty.
  """
  for axis in axes:
    if not axis:
      raise ValueError("a sweep axis has no values")
  runs = []
  for combo in itertools.product(*axes):
    overrides: dict[str, Any] = {}
    for part in combo:
      clash = set(part) & set(overrides)
      if clash:
        raise ValueError(f"sweep axes both set {sorted(clash)}")
      overrides.update(part)
    name = run_name(overrides)
    workdir = os.path.join(root, name)
    command = [
      python,
      "-m",
      "ssd_jax.main",
      f"--config={base}",
      f"--workdir={workdir}",
      *[f"--config.{k}={_value_text(v)}" for k, v in overrides.items()],
      *extra,
    ]
    runs.append(Run(name, overrides, workdir, command))
  return runs


class Row(NamedTuple):
  """One summary row."""

  name: str
  overrides: dict[str, Any]
  step: int | None
  mAP: float
  images_per_sec: float


def collect(runs: Sequence[Run]) -> list[Row]:
  """Reads each run's final mAP and last images/s (NaN when missing)."""
  rows = []
  for run in runs:
    step, m_ap, ips = None, math.nan, math.nan
    path = os.path.join(run.workdir, "eval_results.json")
    if os.path.exists(path):
      with open(path) as f:
        record = json.load(f)
      step = record.get("step")
      m_ap = math.nan if record.get("mAP") is None else record["mAP"]
    metrics = os.path.join(run.workdir, "metrics.jsonl")
    if os.path.exists(metrics):
      with open(metrics) as f:
        for line in f:
          value = json.loads(line).get("images_per_sec")
          if value is not None and math.isfinite(value):
            ips = value
    rows.append(Row(run.name, run.overrides, step, m_ap, ips))
  return rows


def format_table(rows: Sequence[Row]) -> str:
  """A markdown table: run, overrides, step, mAP, images/s."""
  lines = [
    "| run | overrides | step | mAP | images/s |",
    "| --- | --- | --- | --- | --- |",
  ]
  for r in rows:
    overrides = ", ".join(
      f"{k}={_value_text(v)}" for k, v in r.overrides.items()
    )
    m_ap = "-" if math.isnan(r.mAP) else f"{r.mAP:.4f}"
    ips = "-" if math.isnan(r.images_per_sec) else f"{r.images_per_sec:.1f}"
    step = "-" if r.step is None else str(r.step)
    lines.append(f"| {r.name} | {overrides} | {step} | {m_ap} | {ips} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sweep", required=True, choices=sorted(SWEEPS))
  parser.add_argument("--root", required=True, help="parent of the workdirs")
  parser.add_argument(
    "--action", default="print", choices=("print", "run", "summary")
  )
  parser.add_argument(
    "--extra",
    action="append",
    default=[],
    help="extra argument for every run, e.g. --extra=--config.num_steps=10",
  )
  args = parser.parse_args(argv)
  base, axes = SWEEPS[args.sweep]
  # Printed commands say `python` (for other hosts); runs here use this one.
  python = "python" if args.action == "print" else sys.executable
  runs = expand(base, axes, os.path.abspath(args.root), args.extra, python)
  if args.action == "print":
    for run in runs:
      print(shlex.join(run.command))
    return 0
  if args.action == "run":
    for n, run in enumerate(runs):
      print(f"[{n + 1}/{len(runs)}] {shlex.join(run.command)}", flush=True)
      done = subprocess.run(run.command, check=False, cwd=REPO_ROOT or None)
      if done.returncode:
        print(f"run {run.name} failed with exit code {done.returncode}")
        return done.returncode
  table = format_table(collect(runs))
  os.makedirs(args.root, exist_ok=True)
  with open(os.path.join(args.root, "summary.md"), "w") as f:
    f.write(table + "\n")
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
