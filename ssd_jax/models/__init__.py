"""Flax SSD models: `SSD`, `SSD300`, `SSD512` and `from_config`.

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
from ssd_jax.models.backbones.vgg import VGG16, L2Norm
from ssd_jax.models.extras import extra_blocks
from ssd_jax.models.ssd import (
  SSD,
  SSD300,
  SSD512,
  default_prior_config,
  feature_sizes,
  from_config,
)

__all__ = [
  "SSD",
  "SSD300",
  "SSD512",
  "TORCHVISION_SSD300_PRIORS",
  "VGG16",
  "L2Norm",
  "TorchvisionPriorConfig",
  "default_prior_config",
  "extra_blocks",
  "feature_sizes",
  "from_config",
  "prior_boxes",
]
