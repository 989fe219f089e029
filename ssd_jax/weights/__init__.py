"""Import torchvision weights into this package's SSD parameters.

- `torchvision.py`: the VGG converters (`from_torchvision_vgg16`,
  `from_torchvision_ssd300`), torchvision key names -> our params tree.
- `nvidia.py`: NVIDIA's ResNet-50 SSD300 v1.1 (`from_nvidia_ssd300`) and
  torchvision's ImageNet ResNet-50 (`from_torchvision_resnet50`).
- `ssdlite.py`: torchvision's SSDLite320 (`from_torchvision_ssdlite320`)
  and ImageNet MobileNetV3-Large (`from_torchvision_mobilenet_v3_large`).
  The BatchNorm converters return {"params", "batch_stats"}.
- `io.py`: the files: `load_state_dict` (.npz, .safetensors, .pth),
  `save_params` / `load_params` (orbax), and `merge_params` (a loaded tree
  into a fresh init, for `config.init_from`), and `check_array`, the one
  check of every imported array (key, shape, dtype, finite values).
- `cli.py` (`python -m ssd_jax.weights`): a weight file -> a checkpoint::

    python -m ssd_jax.weights --from torchvision-vgg16 vgg16.pth OUT_DIR
    python -m ssd_jax.weights --from torchvision-ssd300 ssd300.pth OUT_DIR
"""

from ssd_jax.weights.cli import CONVERTERS, main
from ssd_jax.weights.io import (
  MergedParams,
  ShapeMismatchError,
  check_array,
  describe_error,
  load_params,
  load_state_dict,
  load_variables,
  merge_params,
  merge_params_report,
  save_params,
)
from ssd_jax.weights.nvidia import (
  from_nvidia_ssd300,
  from_torchvision_resnet50,
  head_channel_order,
  num_classes_of_nvidia_ssd300,
)
from ssd_jax.weights.ssdlite import (
  from_torchvision_mobilenet_v3_large,
  from_torchvision_ssdlite320,
  num_classes_of_ssdlite,
)
from ssd_jax.weights.torchvision import (
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
  "from_nvidia_ssd300",
  "from_torchvision_mobilenet_v3_large",
  "from_torchvision_resnet50",
  "from_torchvision_ssdlite320",
  "from_torchvision_ssd300",
  "from_torchvision_vgg16",
  "load_params",
  "load_state_dict",
  "load_variables",
  "head_channel_order",
  "main",
  "merge_params",
  "merge_params_report",
  "num_classes_of_nvidia_ssd300",
  "num_classes_of_ssd300",
  "num_classes_of_ssdlite",
  "save_params",
]
