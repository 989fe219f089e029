"""NVIDIA's SSD300 v1.1: SSD on a ResNet-50 trunk, with BatchNorm extras.

The model of NVIDIA DeepLearningExamples, `PyTorch/Detection/SSD/ssd/
model.py` (`SSD300(backbone=ResNet('resnet50'))`), reference COCO 2017 mAP
0.25-0.27 after their 65-epoch recipe:

- backbone (`backbones/resnet.py`, `ResNet50Backbone`): torchvision's
  ResNet-50 conv1 .. layer3 with layer3's first block at stride 1, one
  38x38x1024 source map at 300 px;
- five extra blocks (`NVIDIA_EXTRAS`), each a bias-free 1x1 conv -> BN ->
  ReLU -> bias-free 3x3 conv -> BN -> ReLU (`layers.ConvBN`), the first
  three at stride 2 with padding 1, the last two unpadded: maps 19, 10, 5,
  3, 1 with 512, 512, 256, 256, 256 channels;
- plain 3x3 heads with bias (`heads.MultiboxHeads`), 4, 6, 6, 6, 4, 4 boxes
  per location;
- default boxes: their `dboxes300_coco()` (scales 21, 45, 99, 153, 207, 261,
  315 of 300, steps 8 .. 300, ratios (2,), (2, 3) x 3, (2,), (2,), all
  four values clipped to [0, 1]), which is `SSD300_COCO_PRIORS` here.

With 81 classes it has 22,894,902 parameters, as NVIDIA's module does.
NVIDIA orders boxes box-kind-major within a map (their heads' `view(N, 4,
-1)`); this model emits this project's order (location-major, then box
kind, `ssd_jax.default_boxes`), and `ssd_jax.weights.from_nvidia_ssd300`
permutes the head channels of their checkpoints to match.

Input: [B, 300, 300, 3] RGB scaled to [0, 1] then ImageNet mean/std
normalised (`normalization = "imagenet"`). The model is 300 px only, as
NVIDIA's is: its extra blocks and default boxes are laid out for a 38x38
first map (another size would need other extras and boxes, which NVIDIA
does not define), so other `image_size` values are a ValueError. A small
CPU variant keeps 300 px and shrinks the channels with `width`.

Parameters: `backbone` (`ResNet50Backbone`), `extras/block{i}/conv1` and
`conv2` (each a ConvBN: `conv/kernel`, `bn/scale`, `bn/bias`; `bn/mean`,
`bn/var` in "batch_stats"), `heads/loc_k` and `heads/conf_k`.
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax.default_boxes import (
  SSD300_COCO_PRIORS,
  boxes_per_location,
  prior_boxes,
)
from ssd_jax.models.backbones.resnet import ResNet50Backbone
from ssd_jax.models.extras import ExtraBlock, extra_feature_sizes
from ssd_jax.models.heads import MultiboxHeads
from ssd_jax.models.layers import ConvBN, scaled_channels

# NVIDIA's `_build_additional_features` for ResNet-50's channels (1024, 512,
# 512, 256, 256, 256) and mids (256, 256, 128, 128, 128).
NVIDIA_EXTRAS = (
  ExtraBlock(256, 512, 3, 2, 1),
  ExtraBlock(256, 512, 3, 2, 1),
  ExtraBlock(128, 256, 3, 2, 1),
  ExtraBlock(128, 256, 3, 1, 0),
  ExtraBlock(128, 256, 3, 1, 0),
)

# NVIDIA's `dboxes300_coco()` (clipped, their `clamp_(0, 1)`), in this
# project's order: the release's COCO SSD300 boxes.
NVIDIA_SSD300_PRIORS = SSD300_COCO_PRIORS

IMAGE_SIZE = 300


def check_image_size(image_size: int) -> None:
  """Raises unless `image_size` is 300, the only size NVIDIA defines.

  Raises:
    ValueError: naming `image_size` and what to use instead.
  """
  if image_size != IMAGE_SIZE:
    raise ValueError(
      f"SSD300ResNet50: image_size must be {IMAGE_SIZE}, got {image_size} "
      "(NVIDIA's extra blocks and default boxes exist for 300 px only; "
      "shrink the model with `width` instead)"
    )


class BNExtraBlock(nn.Module):
  """One NVIDIA extra block: ConvBN 1x1 to `mid`, ConvBN `kernel` to `out`.

  Parameters: `conv1` and `conv2` (ConvBN: bias-free convolution,
  BatchNorm, ReLU).

  Attributes:
    block: channels (before `width`), kernel, stride and padding.
    width: channel multiplier.
    dtype: computation dtype.
    param_dtype: parameter dtype.
    cpu_fast_ops: the BatchNorms are `cpu_ops.BatchNorm` (the same
      variables and values, faster to train on XLA CPU).
  """

  block: ExtraBlock
  width: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cpu_fast_ops: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """[B, h, w, C] -> [B, h', w', out * width], h' by the second conv.

    Args:
      x: the previous source map.
      train: BatchNorm with batch statistics, updating the running ones.
    """
    layer = dict(
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      cpu_fast_ops=self.cpu_fast_ops,
      kernel_init=nn.initializers.xavier_uniform(),  # NVIDIA's _init_weights.
    )
    b = self.block
    mid = scaled_channels(b.mid, self.width)
    out = scaled_channels(b.out, self.width)
    x = ConvBN(mid, 1, name="conv1", **layer)(x, train)
    return ConvBN(out, b.kernel, b.stride, b.padding, name="conv2", **layer)(
      x, train
    )


class BNExtraLayers(nn.Module):
  """NVIDIA's extra blocks, one source map per block.

  Parameters: `block{i}` (a `BNExtraBlock`) for block i.

  Attributes:
    blocks: the blocks (`NVIDIA_EXTRAS`); channels before `width`.
    width: channel multiplier.
    dtype: computation dtype.
    param_dtype: parameter dtype.
    cpu_fast_ops: the BatchNorms are `cpu_ops.BatchNorm` (the same
      variables and values, faster to train on XLA CPU).
  """

  blocks: tuple[ExtraBlock, ...]
  width: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cpu_fast_ops: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    """Runs the blocks one after the other.

    Args:
      x: [B, h, w, C] the backbone's last map.
      train: BatchNorm with batch statistics, updating the running ones.

    Returns:
      One [B, h_i, w_i, out_i * width] map per block, sides
      `extras.extra_feature_sizes(h, blocks)`.
    """
    maps = []
    for i, block in enumerate(self.blocks):
      x = BNExtraBlock(
        block,
        self.width,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        cpu_fast_ops=self.cpu_fast_ops,
        name=f"block{i}",
      )(x, train)
      maps.append(x)
    return maps


class SSD300ResNet50(nn.Module):
  """NVIDIA's SSD300 v1.1 (ResNet-50 trunk); see the module docstring.

  Attributes:
    num_classes: classes including background (81 for NVIDIA's COCO).
    image_size: input side; must be 300.
    width: channel multiplier for every layer (1.0 is NVIDIA's model).
    dtype: computation dtype (e.g. jnp.bfloat16); outputs come in it.
    param_dtype: parameter dtype.
    cpu_fast_ops: the BatchNorms are `cpu_ops.BatchNorm` (the same
      variables and values, faster to train on XLA CPU).
    normalization: the input normalisation the model expects (a class
      constant): "imagenet", RGB in [0, 1] minus ImageNet's mean (0.485,
      0.456, 0.406), divided by its std (0.229, 0.224, 0.225).
  """

  num_classes: int
  image_size: int = IMAGE_SIZE
  width: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cpu_fast_ops: bool = False

  normalization: ClassVar[str] = "imagenet"

  @nn.nowrap
  def feature_sizes(self) -> tuple[int, ...]:
    """Sides of the six source maps: (38, 19, 10, 5, 3, 1).

    Raises:
      ValueError: if `image_size` is not 300.
    """
    check_image_size(self.image_size)
    (side,) = ResNet50Backbone.feature_sizes(self.image_size)
    return (side, *extra_feature_sizes(side, NVIDIA_EXTRAS))

  @nn.nowrap
  def head_boxes(self) -> tuple[int, ...]:
    """Default boxes per location of each source map: (4, 6, 6, 6, 4, 4)."""
    ratios = NVIDIA_SSD300_PRIORS.aspect_ratios
    return tuple(boxes_per_location(r) for r in ratios)

  @nn.nowrap
  def priors(self) -> np.ndarray:
    """Default boxes matching the outputs; works on an unbound module.

    Returns:
      [8732, 4] float32 (cx, cy, w, h) in [0, 1], row p for output row p:
      NVIDIA's `dboxes300_coco()` in this project's order.

    Raises:
      ValueError: if `image_size` is not 300.
    """
    check_image_size(self.image_size)
    return prior_boxes(NVIDIA_SSD300_PRIORS)

  def setup(self):
    check_image_size(self.image_size)
    layer = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bn = dict(cpu_fast_ops=self.cpu_fast_ops)
    self.backbone = ResNet50Backbone(width=self.width, **layer, **bn)
    self.extras = BNExtraLayers(NVIDIA_EXTRAS, width=self.width, **layer, **bn)
    self.heads = MultiboxHeads(self.num_classes, self.head_boxes(), **layer)

  def __call__(
    self, images: jax.Array, train: bool = False
  ) -> tuple[jax.Array, jax.Array]:
    """Predicts box offsets and class logits for every default box.

    Args:
      images: [B, 300, 300, 3] float32, normalised as `normalization` says
        (the model does no normalisation).
      train: BatchNorm with batch statistics, updating the running ones
        (apply with `mutable=["batch_stats"]`); False (evaluation) uses the
        running statistics.

    Returns:
      loc: [B, 8732, 4] offsets (cx, cy, w, h) against `priors()`, to
        decode with variances (0.1, 0.2); in `dtype`.
      logits: [B, 8732, num_classes] class logits (column 0 background);
        in `dtype`.

    Raises:
      ValueError: on an input that is not [B, 300, 300, 3].
    """
    if images.ndim != 4 or images.shape[1:] != (
      self.image_size,
      self.image_size,
      3,
    ):
      raise ValueError(
        f"SSD300ResNet50(image_size={self.image_size}) expects images of "
        f"shape [B, {self.image_size}, {self.image_size}, 3], got "
        f"{images.shape}"
      )
    sources = self.backbone(images, train)  # [layer3]
    sources += self.extras(sources[-1], train)
    return self.heads(sources)
