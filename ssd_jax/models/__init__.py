"""Flax SSD models: `SSD`, `SSD300`, `SSD512` (VGG16, the paper's),
`SSD300ResNet50` (NVIDIA's v1.1), `SSDLite320` (torchvision's) and
`from_config` (`model.backbone` picks the family).

The SSD is assembled in `ssd.py` from its parts: a backbone returning the
source maps (`backbones/`), the extra blocks (`extras.py`), the multibox
heads (`heads.py`) and its default-box config (`ssd_jax.default_boxes`).
`layers.py` holds the convolution they share, `cpu_ops.py` the CPU-friendly
max pool. The prior names below are re-exported from
`ssd_jax.default_boxes`, where they live.
"""

from ssd_jax.default_boxes import (
  TORCHVISION_SSD300_PRIORS,
  TorchvisionPriorConfig,
  prior_boxes,
)
from ssd_jax.models.backbones.mobilenet_v3 import MobileNetV3Large
from ssd_jax.models.backbones.resnet import ResNet50, ResNet50Backbone
from ssd_jax.models.backbones.vgg import VGG16, L2Norm
from ssd_jax.models.extras import extra_blocks
from ssd_jax.models.ssd import (
  BACKBONES,
  CONV3_3_PRIORS,
  SSD,
  SSD300,
  SSD512,
  default_prior_config,
  feature_sizes,
  from_config,
)
from ssd_jax.models.ssd_resnet50 import SSD300ResNet50
from ssd_jax.models.ssdlite import SSDLite320
from ssd_jax.models.variables import as_variables, normalization_of

__all__ = [
  "BACKBONES",
  "CONV3_3_PRIORS",
  "SSD",
  "SSD300",
  "SSD300ResNet50",
  "SSD512",
  "SSDLite320",
  "MobileNetV3Large",
  "ResNet50",
  "ResNet50Backbone",
  "TORCHVISION_SSD300_PRIORS",
  "VGG16",
  "L2Norm",
  "TorchvisionPriorConfig",
  "as_variables",
  "default_prior_config",
  "extra_blocks",
  "feature_sizes",
  "from_config",
  "normalization_of",
  "prior_boxes",
]
