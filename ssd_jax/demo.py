r"""`make demo`: the synthetic shapes config end to end, offline.

Trains `configs/shapes.py` into a workdir (default `./demo_workdir`; a
previous run there is resumed, so a finished demo only re-evaluates),
evaluates on the held-out synthetic split, writes metrics, the PR plot and a
picture of detections, and prints the mAP@0.5 (VOC07 11-point) and the wall
time.

  python -m ssd_jax.demo [--workdir=DIR] [--fresh]
"""

import argparse
import json
import os
import shutil
import sys
import time

from absl import logging

from ssd_jax import config as config_lib
from ssd_jax import runtime, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_MAP = 0.9


def load_shapes_config(arg: str | None = None):
  """configs/shapes.py's `get_config(arg)`."""
  path = os.path.join(REPO, "configs", "shapes.py")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found; run the demo from a checkout")
  return config_lib.config_from_file(path, arg)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--workdir", default=os.path.join(os.getcwd(), "demo_workdir")
  )
  parser.add_argument(
    "--fresh", action="store_true", help="delete the workdir first"
  )
  parser.add_argument("--config_arg", default=None, help="e.g. small")
  args = parser.parse_args(argv)
  t0 = time.perf_counter()
  runtime.apply_xla_cpu_flags()  # Before JAX starts its backends.
  logging.set_verbosity(logging.WARNING)
  if args.fresh and os.path.isdir(args.workdir):
    shutil.rmtree(args.workdir)
  config = load_shapes_config(args.config_arg)
  print(
    f"SSD demo: synthetic shapes, {config.num_steps} steps of batch "
    f"{config.batch_size} at {config.model.image_size}px -> {args.workdir}",
    flush=True,
  )
  summary = train.train_and_evaluate(config, args.workdir)
  wall = time.perf_counter() - t0
  m_ap = summary["mAP"]
  with open(os.path.join(args.workdir, "eval_results.json")) as f:
    per_class = json.load(f)["per_class_ap"]
  for name, ap in per_class.items():
    print(f"  AP {name:<10} {ap if ap is None else round(ap, 4)}")
  print(f"mAP@0.5 (VOC07 11-point) on the held-out shapes: {m_ap:.4f}")
  print(f"wall time: {wall / 60:.1f} min; results in {args.workdir}")
  print(
    f"  {os.path.join(args.workdir, 'eval_results.json')}\n"
    f"  {os.path.join(args.workdir, 'pictures', 'detections.png')}\n"
    f"  {os.path.join(args.workdir, 'pictures', 'pr_curves.png')}"
  )
  if m_ap is None or m_ap < TARGET_MAP:
    print(f"below the target mAP {TARGET_MAP}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
