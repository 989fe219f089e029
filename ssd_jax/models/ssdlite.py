"""SSDLite320: torchvision's `ssdlite320_mobilenet_v3_large` in flax.

The parts (torchvision's names in brackets):
- backbone (`backbones/mobilenet_v3.py`, `MobileNetV3Large` with the reduced
  tail) [`backbone.features`]: two source maps, the C4 block's expansion
  (20x20x672 at 320 px) and the last conv (10x10x480);
- four extra blocks (`SSDLiteExtraBlock`) [`backbone.extra`, torchvision's
  `_extra_block`]: 1x1 conv-BN-ReLU6 to half the output channels, a
  depthwise 3x3 stride-2 conv-BN-ReLU6, a 1x1 conv-BN-ReLU6 to 512, 256,
  256, 128 channels: maps of 5, 3, 2, 1 at 320 px;
- heads (`SSDLiteHeads`) [`head`, `SSDLiteClassificationHead` and
  `SSDLiteRegressionHead`]: per map, a depthwise 3x3 conv-BN-ReLU6 and a 1x1
  conv with bias to A * K channels, A = 6 boxes per location;
- default boxes: torchvision's `DefaultBoxGenerator([[2, 3]] * 6,
  min_ratio=0.2, max_ratio=0.95)` on the actual maps
  (`default_boxes.torchvision_prior_config`): 3234 boxes at 320 px.

Every BatchNorm has eps 0.001 and torch momentum 0.03 (flax 0.97), as
torchvision builds SSDLite. The width rules are torchvision's: the backbone's
`width_mult` (`mobilenet_v3.make_divisible`) and the extractor's
`max(min_depth, int(d * width))` for the extra blocks, so a torchvision
SSDLite built at another width converts as well.

Output order needs no permutation: torchvision's `SSDScoringHead` views a
`[N, A * K, H, W]` head output as `[N, A, K, H, W]` and permutes it to
`[N, H, W, A, K]` before flattening, i.e. row `(i * W + j) * A + a`, which is
`heads.flatten_head` of the NHWC output; its DefaultBoxGenerator lists boxes
location by location (y outer, x inner), then box kind, the order of
`ssd_jax.default_boxes`.

Parameters: `backbone`, `extra_0` .. `extra_3` (`reduce`, `depthwise`,
`expand`), `heads/loc_k` and `heads/conf_k` (`depthwise`, `conv`); the
BatchNorm statistics in "batch_stats". The input is RGB scaled to [-1, 1]
(`x / 127.5 - 1`; torchvision's image_mean = image_std = 0.5 on [0, 1]).
"""

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax.default_boxes import (
  TorchvisionPriorConfig,
  boxes_per_location,
  prior_boxes,
  torchvision_prior_config,
)
from ssd_jax.models.backbones.mobilenet_v3 import MobileNetV3Large
from ssd_jax.models.extras import conv_output_size
from ssd_jax.models.heads import flatten_head
from ssd_jax.models.layers import ConvBN

# torchvision's SSDLite: BatchNorm2d(eps=0.001, momentum=0.03).
BN_EPS = 0.001
BN_MOMENTUM = 0.97
# Output channels of the extra blocks at width 1 (`get_depth` of these).
EXTRA_CHANNELS = (512, 256, 256, 128)
MIN_DEPTH = 16
# DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95).
ASPECT_RATIOS = ((2.0, 3.0),) * 6
MIN_RATIO = 0.2
MAX_RATIO = 0.95
# torchvision's `_normal_init` of the layers SSDLite adds.
_NORMAL_INIT = nn.initializers.normal(0.03)


def extra_channels(width: float = 1.0) -> tuple[int, ...]:
  """Output channels of the four extra blocks: `max(16, int(d * width))`."""
  return tuple(max(MIN_DEPTH, int(d * width)) for d in EXTRA_CHANNELS)


class SSDLiteExtraBlock(nn.Module):
  """torchvision's `_extra_block`: 1x1, depthwise 3x3 stride 2, 1x1.

  Parameters `reduce`, `depthwise`, `expand` (`ConvBN`, ReLU6 each).

  Attributes:
    features: output channels; the first two convs have `features // 2`.
    dtype: computation dtype.
    param_dtype: parameter dtype.
    cpu_fast_ops: the BatchNorms are `cpu_ops.BatchNorm` (the same
      variables and values, faster to train on XLA CPU).
  """

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cpu_fast_ops: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """[B, H, W, C] -> [B, ceil(H / 2), ceil(W / 2), features]."""
    mid = self.features // 2
    layer = dict(
      activation=nn.relu6,
      bn_eps=BN_EPS,
      bn_momentum=BN_MOMENTUM,
      kernel_init=_NORMAL_INIT,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      cpu_fast_ops=self.cpu_fast_ops,
    )
    x = ConvBN(mid, 1, name="reduce", **layer)(x, train)
    x = ConvBN(
      mid, 3, stride=2, padding=1, groups=mid, name="depthwise", **layer
    )(x, train)
    return ConvBN(self.features, 1, name="expand", **layer)(x, train)


class SSDLitePredictionBlock(nn.Module):
  """torchvision's `_prediction_block`: depthwise 3x3 conv-BN-ReLU6, 1x1 conv.

  Parameters `depthwise` (`ConvBN`) and `conv` (kernel and bias, normal
  std 0.03 and zero, as torchvision's `_normal_init`).

  Attributes:
    features: output channels (A * K).
    dtype: computation dtype.
    param_dtype: parameter dtype.
    cpu_fast_ops: the BatchNorms are `cpu_ops.BatchNorm` (the same
      variables and values, faster to train on XLA CPU).
  """

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cpu_fast_ops: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """[B, H, W, C] -> [B, H, W, features]."""
    x = ConvBN(
      x.shape[-1],
      3,
      padding=1,
      groups=x.shape[-1],
      activation=nn.relu6,
      bn_eps=BN_EPS,
      bn_momentum=BN_MOMENTUM,
      kernel_init=_NORMAL_INIT,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      cpu_fast_ops=self.cpu_fast_ops,
      name="depthwise",
    )(x, train)
    return nn.Conv(
      self.features,
      (1, 1),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=_NORMAL_INIT,
      bias_init=nn.initializers.zeros,
      name="conv",
    )(x)


class SSDLiteHeads(nn.Module):
  """SSDLite's heads: a prediction block per map for offsets and for logits.

  Parameters `loc_k` and `conf_k` (`SSDLitePredictionBlock`) for map k.

  Attributes:
    num_classes: classes including background.
    boxes_per_location: default boxes per location of each map.
    dtype: computation dtype; outputs come in it.
    param_dtype: parameter dtype.
    cpu_fast_ops: the BatchNorms are `cpu_ops.BatchNorm` (the same
      variables and values, faster to train on XLA CPU).
  """

  num_classes: int
  boxes_per_location: tuple[int, ...]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cpu_fast_ops: bool = False

  @nn.compact
  def __call__(
    self, sources: Sequence[jax.Array], train: bool = False
  ) -> tuple[jax.Array, jax.Array]:
    """Predicts offsets and logits for every default box.

    Args:
      sources: one [B, H_k, W_k, C_k] map per entry of `boxes_per_location`.
      train: BatchNorm on batch statistics, updating the running ones.

    Returns:
      loc: [B, P, 4], P = sum_k H_k W_k A_k, rows in `flatten_head` order.
      logits: [B, P, num_classes].
    """
    locs, logits = [], []
    layer = dict(
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      cpu_fast_ops=self.cpu_fast_ops,
    )
    for k, (source, a) in enumerate(
      zip(sources, self.boxes_per_location, strict=True)
    ):
      loc = SSDLitePredictionBlock(a * 4, name=f"loc_{k}", **layer)(
        source, train
      )  # [B, H, W, A*4]
      conf = SSDLitePredictionBlock(
        a * self.num_classes, name=f"conf_{k}", **layer
      )(source, train)  # [B, H, W, A*C]
      locs.append(flatten_head(loc, 4))  # [B, H*W*A, 4]
      logits.append(flatten_head(conf, self.num_classes))
    return jnp.concatenate(locs, 1), jnp.concatenate(logits, 1)


class SSDLite320(nn.Module):
  """torchvision's `ssdlite320_mobilenet_v3_large` (3,440,060 parameters at
  91 classes), for any square input size.

  Attributes:
    num_classes: classes including background (91 for torchvision's COCO).
    image_size: input side in pixels (320 as torchvision's; the default
      boxes follow the maps, so e.g. 96 or 128 work for CPU runs).
    width: torchvision's width rules (see the module docstring); 1.0 is
      torchvision's model.
    reduced_tail: the backbone's reduced tail (True as torchvision builds
      SSDLite without an ImageNet backbone; False for the ImageNet start
      from `weights.from_torchvision_mobilenet_v3_large`, as torchvision
      does with `weights_backbone`).
    dtype: computation dtype; outputs come in it.
    param_dtype: parameter dtype.
    cpu_fast_ops: the BatchNorms are `cpu_ops.BatchNorm` (the same
      variables and values, faster to train on XLA CPU).
    normalization: the input normalisation's name: RGB to [-1, 1].
  """

  num_classes: int
  image_size: int = 320
  width: float = 1.0
  reduced_tail: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cpu_fast_ops: bool = False

  normalization: ClassVar[str] = "minus_one_one"

  @nn.nowrap
  def backbone_module(self, **kwargs) -> MobileNetV3Large:
    """The (unbound) backbone of this model."""
    return MobileNetV3Large(
      width=self.width,
      reduced_tail=self.reduced_tail,
      bn_momentum=BN_MOMENTUM,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      cpu_fast_ops=self.cpu_fast_ops,
      **kwargs,
    )

  @nn.nowrap
  def feature_sizes(self) -> tuple[int, ...]:
    """Sides of the six source maps: 320 gives (20, 10, 5, 3, 2, 1)."""
    # parent=None: an unbound helper, wherever priors() is called from.
    backbone = self.backbone_module(parent=None)
    sizes = list(backbone.feature_sizes(self.image_size))
    for _ in EXTRA_CHANNELS:
      sizes.append(conv_output_size(sizes[-1], 3, 2, 1))
    return tuple(sizes)

  @nn.nowrap
  def prior_config(self) -> TorchvisionPriorConfig:
    """torchvision's DefaultBoxGenerator for this model's maps."""
    return torchvision_prior_config(
      self.image_size,
      self.feature_sizes(),
      ASPECT_RATIOS,
      min_ratio=MIN_RATIO,
      max_ratio=MAX_RATIO,
    )

  @nn.nowrap
  def priors(self) -> np.ndarray:
    """Default boxes matching the outputs; works on an unbound module.

    Returns:
      [P, 4] float32 (cx, cy, w, h) in [0, 1], row p for output row p
      (P = 3234 at 320 px).
    """
    return prior_boxes(self.prior_config())

  @nn.compact
  def __call__(
    self, images: jax.Array, train: bool = False
  ) -> tuple[jax.Array, jax.Array]:
    """Predicts box offsets and class logits for every default box.

    Args:
      images: [B, image_size, image_size, 3] float32 RGB in [-1, 1].
      train: BatchNorm on batch statistics, updating the running ones
        (apply with `mutable=["batch_stats"]`); False uses the running
        statistics.

    Returns:
      loc: [B, P, 4] offsets (cx, cy, w, h) against `priors()`, to decode
        with variances (0.1, 0.2) (torchvision's box coder weights 10, 10,
        5, 5); in `dtype`.
      logits: [B, P, num_classes] class logits (column 0 background); in
        `dtype`.

    Raises:
      ValueError: on an input that is not [B, image_size, image_size, 3].
    """
    expected = (self.image_size, self.image_size, 3)
    if images.ndim != 4 or images.shape[1:] != expected:
      raise ValueError(
        f"SSDLite320(image_size={self.image_size}) expects images of shape "
        f"[B, {self.image_size}, {self.image_size}, 3], got {images.shape}"
      )
    layer = dict(
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      cpu_fast_ops=self.cpu_fast_ops,
    )
    sources = list(self.backbone_module(name="backbone")(images, train))
    x = sources[-1]
    for k, features in enumerate(extra_channels(self.width)):
      x = SSDLiteExtraBlock(features, name=f"extra_{k}", **layer)(x, train)
      sources.append(x)
    heads = SSDLiteHeads(
      self.num_classes,
      tuple(boxes_per_location(r) for r in ASPECT_RATIOS),
      name="heads",
      **layer,
    )
    return heads(sources, train)
