"""Import torchvision weights into this package's SSD parameters.

- `torchvision.py`: the converters (`from_torchvision_vgg16`,
  `from_torchvision_ssd300`), torchvision key names -> our params tree.
- `io.py`: the files: `load_state_dict` (.npz, .safetensors, .pth),
  `save_params` / `load_params` (orbax), and `merge_params` (a loaded tree
  into a fresh init, for `config.init_from`), and `check_array`, the one
  check of every imported array (key, shape, dtype, finite values).
- `cli.py` (`python -m ssd_jax.weights`): a weight file -> a checkpoint::

    python -m ssd_jax.weights --from torchvision-vgg16 vgg16.pth OUT_DIR
    python -m ssd_jax.weights --from torchvision-ssd300 ssd300.pth OUT_DIR
"""

from ssd_jax.weights.cli import main
from ssd_jax.weights.io import (
  MergedParams,
  ShapeMismatchError,
  check_array,
  describe_error,
  load_params,
  load_state_dict,
  merge_params,
  merge_params_report,
  save_params,
)
from ssd_jax.weights.torchvision import (
  CONVERTERS,
  from_torchvision_ssd300,
  from_torchvision_vgg16,
  num_classes_of_ssd300,
)

__all__ = [
  "CONVERTERS",
  "MergedParams",
  "ShapeMismatchError",
  "check_array",
  "describe_error",
  "from_torchvision_ssd300",
  "from_torchvision_vgg16",
  "load_params",
  "load_state_dict",
  "main",
  "merge_params",
  "merge_params_report",
  "num_classes_of_ssd300",
  "save_params",
]
