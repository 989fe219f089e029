"""ResNet-50 as torchvision builds it, and its trunk as NVIDIA's SSD uses it.

torchvision's ResNet (He et al., 2016) with bottleneck blocks in the "v1.5"
form: a block's stride sits on its 3x3 convolution (conv2), not on the first
1x1 (the original paper's v1). Every convolution is bias-free and followed
by BatchNorm (`layers.ConvBN`); a block adds its input (through a strided
1x1 convolution + BatchNorm, `downsample`, when the shape changes) before
the last ReLU. The stem is a 7x7 stride-2 convolution and a 3x3 stride-2
max pool, both padded as torch pads them.

`ResNet` is the trunk for any stage sizes and strides: `ResNet50` is the
full ImageNet trunk (layer1..layer4, no classifier), and
`ResNet50Backbone` is NVIDIA's SSD300 v1.1 backbone (DeepLearningExamples,
`PyTorch/Detection/SSD/ssd/model.py`, `ResNet('resnet50')`): conv1 ..
layer3, with layer3's first block at stride 1, so a 300 px input gives one
38x38x1024 source map.

Parameters (HWIO kernels; BatchNorm `scale`/`bias` in "params" and
`mean`/`var` in "batch_stats"): `conv1` (the stem, a ConvBN), then
`layer{s}_{b}` for stage s (1-based) and block b (0-based), each with
`conv1`, `conv2`, `conv3` and, in a stage's first block, `downsample`: the
torchvision names with `.` -> `_` (`ssd_jax.weights.nvidia` converts).
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssd_jax.models.layers import ConvBN, scaled_channels

# Bottleneck widths of the four stages (the 3x3 conv's channels); a block's
# output has EXPANSION times as many.
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4
STEM_CHANNELS = 64


class Bottleneck(nn.Module):
  """torchvision's `Bottleneck` (v1.5: the stride on the 3x3 convolution).

  `relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))`,
  conv1 1x1 to `features`, conv2 3x3 (stride, padding 1) to `features`,
  conv3 1x1 to `EXPANSION * features`; the shortcut is x, or `downsample`
  (1x1 conv with the stride + BN) when `downsample` is set.

  Attributes:
    features: the bottleneck's channels (after the width multiplier).
    stride: stride of conv2 and of the downsample conv.
    downsample: project the shortcut (a stage's first block).
    dtype: computation dtype.
    param_dtype: parameter dtype.
    cpu_fast_ops: the BatchNorms are `cpu_ops.BatchNorm` (the same
      variables and values, faster to train on XLA CPU).
  """

  features: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cpu_fast_ops: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """[B, H, W, C] -> [B, H', W', EXPANSION * features].

    H' = ceil(H / stride) (3x3 conv, padding 1).

    Args:
      x: the block's input, NHWC.
      train: BatchNorm with batch statistics, updating the running ones.
    """
    layer = dict(
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      cpu_fast_ops=self.cpu_fast_ops,
    )
    out = EXPANSION * self.features
    y = ConvBN(self.features, 1, name="conv1", **layer)(x, train)
    y = ConvBN(self.features, 3, self.stride, padding=1, name="conv2", **layer)(
      y, train
    )
    y = ConvBN(out, 1, activation=None, name="conv3", **layer)(y, train)
    if self.downsample:
      x = ConvBN(
        out, 1, self.stride, activation=None, name="downsample", **layer
      )(x, train)
    return nn.relu(y + x)


class ResNet(nn.Module):
  """A torchvision bottleneck ResNet trunk: stem, then stages of blocks.

  Attributes:
    stage_sizes: blocks per stage ((3, 4, 6, 3) for ResNet-50); the stages
      take the bottleneck widths of `STAGE_WIDTHS` in order.
    strides: stride of each stage's first block (torchvision: 1, 2, 2, 2).
    width: channel multiplier of every layer (1.0 is torchvision's).
    dtype: computation dtype; the output comes in it.
    param_dtype: parameter dtype.
    cpu_fast_ops: the BatchNorms are `cpu_ops.BatchNorm` (the same
      variables and values, faster to train on XLA CPU).
  """

  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  strides: Sequence[int] = (1, 2, 2, 2)
  width: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cpu_fast_ops: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Runs the trunk.

    Args:
      x: [B, H, W, 3] normalised images.
      train: BatchNorm with batch statistics, updating the running ones
        (apply with `mutable=["batch_stats"]`); False uses the running ones.

    Returns:
      [B, h, w, EXPANSION * STAGE_WIDTHS[n - 1] * width], the last stage's
      output for n stages; h = `ResNet.output_size(H, strides)`.

    Raises:
      ValueError: if `stage_sizes` and `strides` differ in length or there
        are more than four stages.
    """
    if len(self.stage_sizes) != len(self.strides) or len(
      self.stage_sizes
    ) > len(STAGE_WIDTHS):
      raise ValueError(
        f"ResNet: stage_sizes {tuple(self.stage_sizes)} and strides "
        f"{tuple(self.strides)} need one entry per stage, at most "
        f"{len(STAGE_WIDTHS)} stages"
      )
    layer = dict(
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      cpu_fast_ops=self.cpu_fast_ops,
    )
    x = x.astype(self.dtype)
    stem = scaled_channels(STEM_CHANNELS, self.width)
    x = ConvBN(stem, 7, 2, padding=3, name="conv1", **layer)(x, train)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for s, (blocks, stride) in enumerate(
      zip(self.stage_sizes, self.strides, strict=True)
    ):
      features = scaled_channels(STAGE_WIDTHS[s], self.width)
      for b in range(blocks):
        x = Bottleneck(
          features,
          stride if b == 0 else 1,
          downsample=b == 0,
          name=f"layer{s + 1}_{b}",
          **layer,
        )(x, train)
    return x

  @staticmethod
  def output_size(image_size: int, strides: Sequence[int]) -> int:
    """Side of the trunk's output for a square input, arithmetically.

    Args:
      image_size: input side in pixels.
      strides: each stage's first-block stride.

    Returns:
      The side. Every strided layer (the 7x7 conv with padding 3, the 3x3
      pool and the 3x3 convs with padding 1) pads by half its kernel, so a
      stride s takes a side n to ceil(n / s): 300 -> 150 -> 75 (the stem),
      then 38 after a stride-2 stage.
    """
    size = image_size
    for stride in (2, 2, *strides):  # conv1, the max pool, the stages
      size = -(-size // stride)
    return size


# torchvision's `resnet50()` without `avgpool` and `fc`.
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))

# NVIDIA's SSD300 v1.1 trunk: layer1..layer3, layer3's first block at
# stride 1 (their `conv4_block1` with conv2 and downsample strides set to 1).
NVIDIA_STAGE_SIZES = (3, 4, 6)
NVIDIA_STRIDES = (1, 2, 1)


class ResNet50Backbone(nn.Module):
  """NVIDIA's SSD300 backbone: ResNet-50 conv1 .. layer3, one source map.

  The parameters are those of `ResNet(stage_sizes=(3, 4, 6), strides=(1,
  2, 1))`, in this module's own scope (`conv1`, `layer1_0`, ...,
  `layer3_5`), so torchvision's ImageNet ResNet-50 weights fit them
  (`ssd_jax.weights.from_torchvision_resnet50`).

  Attributes:
    width: channel multiplier (1.0 is ResNet-50).
    dtype: computation dtype; the map comes in it.
    param_dtype: parameter dtype.
    cpu_fast_ops: the BatchNorms are `cpu_ops.BatchNorm` (the same
      variables and values, faster to train on XLA CPU).
  """

  width: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cpu_fast_ops: bool = False

  @staticmethod
  def feature_sizes(image_size: int) -> tuple[int]:
    """Side of the source map (38 for 300 px), arithmetically."""
    return (ResNet.output_size(image_size, NVIDIA_STRIDES),)

  @staticmethod
  def out_channels(width: float = 1.0) -> int:
    """Channels of the source map: layer3's output (1024 at width 1)."""
    return EXPANSION * scaled_channels(STAGE_WIDTHS[2], width)

  def setup(self):
    self.trunk = ResNet(
      stage_sizes=NVIDIA_STAGE_SIZES,
      strides=NVIDIA_STRIDES,
      width=self.width,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      cpu_fast_ops=self.cpu_fast_ops,
    )
    nn.share_scope(self, self.trunk)

  def __call__(self, images: jax.Array, train: bool = False) -> list[jax.Array]:
    """Computes the source map.

    Args:
      images: [B, H, W, 3] normalised images (ImageNet mean/std).
      train: BatchNorm with batch statistics, updating the running ones.

    Returns:
      [layer3 [B, h, h, 1024 * width]] with h = `feature_sizes(H)[0]`
      (38 for H = 300), in `dtype`.
    """
    return [self.trunk(images, train)]
