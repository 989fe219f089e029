"""The command line: a torch weight file -> an orbax checkpoint.

Writes `{"params": ...}` (and "batch_stats" for the BatchNorm models) for
`config.init_from`::

  python -m ssd_jax.weights --from torchvision-vgg16 vgg16.pth OUT_DIR
  python -m ssd_jax.weights --from torchvision-ssd300 ssd300.pth OUT_DIR
  python -m ssd_jax.weights --from nvidia-ssd300 nvidia_ssd.pt OUT_DIR
  python -m ssd_jax.weights --from torchvision-resnet50 resnet50.pth OUT_DIR
  python -m ssd_jax.weights --from torchvision-ssdlite320 ssdlite.pth OUT_DIR
  python -m ssd_jax.weights --from torchvision-mobilenet-v3-large \
    mobilenet_v3_large.pth OUT_DIR

`__main__.py` runs `main`; it lives here so that `ssd_jax.weights.main` can
be imported without `python -m` executing the module a second time.
"""

import argparse

import jax
import numpy as np

from ssd_jax.models.variables import as_variables
from ssd_jax.weights import nvidia, ssdlite, torchvision
from ssd_jax.weights.io import load_state_dict, save_params

# --from NAME -> converter(state_dict, width=...) -> params or variables.
CONVERTERS = {
  **torchvision.CONVERTERS,
  **nvidia.CONVERTERS,
  "torchvision-ssdlite320": ssdlite.from_torchvision_ssdlite320,
  "torchvision-mobilenet-v3-large": ssdlite.from_torchvision_mobilenet_v3_large,
}


def main(argv: list[str] | None = None) -> None:
  """Converts a torchvision weight file to an orbax checkpoint.

  Args:
    argv: the arguments (default `sys.argv[1:]`): `--from NAME` (a key of
      `CONVERTERS`), the input file (.pth, .npz or
      .safetensors), the new checkpoint directory, and `--width`.

  Raises:
    FileExistsError: if the output directory exists.
  """
  parser = argparse.ArgumentParser(
    prog="python -m ssd_jax.weights",
    description="Convert a torch weight file to an orbax checkpoint.",
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
  variables = as_variables(
    CONVERTERS[args.source](state_dict, width=args.width)
  )
  save_params(
    args.output,
    variables["params"],
    source=args.source,
    batch_stats=variables.get("batch_stats"),
  )
  count = sum(np.size(x) for x in jax.tree.leaves(variables["params"]))
  print(f"wrote {count:,} parameters from {args.input} to {args.output}")
