"""Flax SSD models: `SSD`, `SSD300`, `SSD512` and `from_config`."""

from ssd_jax.models.ssd import (
  SSD,
  SSD300,
  SSD512,
  TORCHVISION_SSD300_PRIORS,
  L2Norm,
  TorchvisionPriorConfig,
  default_prior_config,
  extra_blocks,
  feature_sizes,
  from_config,
  prior_boxes,
)
from ssd_jax.models.vgg import VGG16

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
