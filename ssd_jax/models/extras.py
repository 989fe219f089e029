"""SSD's extra feature blocks: the smaller maps after the backbone's last one.

Each block is a 1x1 convolution to `mid` channels and a `kernel` convolution
to `out` channels, both with ReLU, named conv8_1/conv8_2, conv9_1/conv9_2,
... after the paper; the second conv's output is a source map. These are the
Caffe release's blocks for its VGG16 models (SSD300, SSD512) and the rule
that extends them to other input sizes (`extra_blocks`).
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssd_jax.models.backbones.vgg import vgg16_feature_sizes
from ssd_jax.models.layers import conv_relu, scaled_channels


class ExtraBlock(NamedTuple):
  """An extra feature block: 1x1 conv to `mid`, then a `kernel` conv to `out`.

  Channel counts are before the width multiplier; both convs use ReLU.
  """

  mid: int
  out: int
  kernel: int
  stride: int
  padding: int


# ssd_pascal_512.py: four 3x3 stride-2 blocks and a last 4x4 conv, padding 1.
SSD512_EXTRAS = (
  ExtraBlock(256, 512, 3, 2, 1),
  ExtraBlock(128, 256, 3, 2, 1),
  ExtraBlock(128, 256, 3, 2, 1),
  ExtraBlock(128, 256, 3, 2, 1),
  ExtraBlock(128, 256, 4, 1, 1),
)


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
  """Side of a convolution output (floor rounding, symmetric padding)."""
  return (size + 2 * padding - kernel) // stride + 1


def extra_blocks(image_size: int) -> tuple[ExtraBlock, ...]:
  """The extra feature blocks after fc7 for a square input.

  512 gives the release's SSD512 blocks. Any other size follows a rule that
  reproduces the release's SSD300 blocks at 300: from the fc7 side, a 3x3
  stride-2 (padding 1) block while the map is larger than 5, then 3x3
  unpadded blocks while it is at least 3, then a 2x2 unpadded block if it
  is 2; it stops at 1x1. The first block is 256 -> 512 channels, the rest
  128 -> 256.

  Args:
    image_size: input side in pixels.

  Returns:
    The blocks in order (SSD300: 4, SSD512: 5).
  """
  if image_size == 512:
    return SSD512_EXTRAS
  _, size = vgg16_feature_sizes(image_size)
  blocks = []
  while size > 1:
    mid, out = (128, 256) if blocks else (256, 512)
    if size > 5:
      block = ExtraBlock(mid, out, 3, 2, 1)
    elif size >= 3:
      block = ExtraBlock(mid, out, 3, 1, 0)
    else:
      block = ExtraBlock(mid, out, 2, 1, 0)
    blocks.append(block)
    size = conv_output_size(size, block.kernel, block.stride, block.padding)
  return tuple(blocks)


def extra_feature_sizes(
  size: int, blocks: tuple[ExtraBlock, ...]
) -> tuple[int, ...]:
  """Sides of the blocks' outputs, from the side of the map they start on.

  Args:
    size: side of the backbone's last source map (fc7).
    blocks: the extra blocks.

  Returns:
    One side per block.
  """
  sizes = []
  for block in blocks:
    size = conv_output_size(size, block.kernel, block.stride, block.padding)
    sizes.append(size)
  return tuple(sizes)


class ExtraLayers(nn.Module):
  """The extra blocks, one source map per block.

  Parameters: `conv{first_index + i}_1` and `conv{first_index + i}_2` for
  block i, Xavier-uniform kernels and zero biases.

  Attributes:
    blocks: the blocks, e.g. `extra_blocks(image_size)`.
    width: channel multiplier.
    batch_norm: a BatchNorm `<conv>_bn` after every convolution, before
      its ReLU (as `VGG16(batch_norm=True)`).
    dtype: computation dtype.
    param_dtype: parameter dtype.
    first_index: the paper's number of the first block (conv8 after fc7).
    cpu_fast_ops: with `batch_norm`, `cpu_ops.BatchNorm` (as
      `VGG16(cpu_fast_ops=True)`).
  """

  blocks: tuple[ExtraBlock, ...]
  width: float = 1.0
  batch_norm: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  first_index: int = 8
  cpu_fast_ops: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
    """Runs the blocks one after the other.

    Args:
      x: [B, h, w, C] the map the blocks start from (fc7).
      train: BatchNorm in training mode (with `batch_norm`).

    Returns:
      One [B, h_i, w_i, out_i * width] map per block (after ReLU), sides
      `extra_feature_sizes(h, blocks)`.
    """
    layer = dict(
      train=train,
      batch_norm_after=self.batch_norm,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      cpu_fast=self.cpu_fast_ops,
    )

    def conv_relu_(x, channels, kernel, name, **kwargs):
      channels = scaled_channels(channels, self.width)
      return conv_relu(x, channels, kernel, name, **kwargs, **layer)

    maps = []
    for i, block in enumerate(self.blocks):
      name = f"conv{self.first_index + i}"
      x = conv_relu_(x, block.mid, 1, f"{name}_1", padding=0)
      x = conv_relu_(
        x,
        block.out,
        block.kernel,
        f"{name}_2",
        stride=block.stride,
        padding=block.padding,
      )
      maps.append(x)
    return maps
