"""The command line: a torchvision weight file -> an orbax params checkpoint.

Writes `{"params": ...}` for `config.init_from`::

  python -m ssd_jax.weights --from torchvision-vgg16 vgg16.pth OUT_DIR
  python -m ssd_jax.weights --from torchvision-ssd300 ssd300.pth OUT_DIR

`__main__.py` runs `main`; it lives here so that `ssd_jax.weights.main` can
be imported without `python -m` executing the module a second time.
"""

import argparse

import jax
import numpy as np

from ssd_jax.weights.io import load_state_dict, save_params
from ssd_jax.weights.torchvision import CONVERTERS


def main(argv: list[str] | None = None) -> None:
  """Converts a torchvision weight file to an orbax checkpoint.

  Args:
    argv: the arguments (default `sys.argv[1:]`): `--from NAME` (a key of
      `torchvision.CONVERTERS`), the input file (.pth, .npz or
      .safetensors), the new checkpoint directory, and `--width`.

  Raises:
    FileExistsError: if the output directory exists.
  """
  parser = argparse.ArgumentParser(
    prog="python -m ssd_jax.weights",
    description="Convert a torchvision weight file to an orbax checkpoint.",
  )
  parser.add_argument("--from", dest="source", choices=sorted(CONVERTERS))
  parser.add_argument("input", help=".pth, .npz or .safetensors state dict")
  parser.add_argument("output", help="new orbax checkpoint directory")
  parser.add_argument(
    "--width",
    type=float,
    default=1.0,
    help="channel multiplier of the weights (1.0 for torchvision's)",
  )
  args = parser.parse_args(argv)
  if args.source is None:
    parser.error("--from is required")
  state_dict = load_state_dict(args.input)
  params = CONVERTERS[args.source](state_dict, width=args.width)
  save_params(args.output, params, source=args.source)
  count = sum(np.size(x) for x in jax.tree.leaves(params))
  print(f"wrote {count:,} parameters from {args.input} to {args.output}")
