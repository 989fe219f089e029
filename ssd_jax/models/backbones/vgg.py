"""VGG16 as SSD uses it: conv1_1 .. conv5_3, pool5 3x3/1, dilated fc6, fc7.

The SSD authors' "reduced fc" VGG16 (Liu et al., 2016, Sec. 3): pool3 rounds
up (Caffe's ceil mode, so a 300 input gives a 38x38 conv4_3), pool5 is a 3x3
max pool with stride 1 and padding 1, fc6 is a 3x3 convolution with 1024
channels and dilation 6 (a trous), fc7 a 1x1 convolution with 1024 channels.
conv4_3's activations are much larger than fc7's, so SSD L2-normalises them
with a learnable per-channel scale (ParseNet) before its heads read them:
`VGG16Backbone` is the trunk plus that normalisation, returning the two
source maps. Inputs are NHWC; parameters are HWIO kernels and biases.

`conv3_3_map=True` adds conv3_3 (stride 4, L2-normalised like conv4_3) as a
first source map, for objects too small for conv4_3's stride 8 to cover at
the matching threshold (a box of 8 px is never within IoU 0.5 of a prior on
an 8 px grid unless nearly centred on it); the paper's SSD starts at
conv4_3.
`batch_norm=True` puts a BatchNorm between every convolution and its ReLU
(the layout of torchvision's `vgg16_bn`, biases kept): the small VGG then
trains from scratch with a larger learning rate and in far fewer steps
(ScratchDet, Zhu et al., 2019, found BatchNorm in the backbone and the extra
layers the key to training SSD without ImageNet weights).
`stem="space_to_depth"` folds each 2x2 block of input pixels into 12
channels and runs conv1_1 and conv1_2 at half resolution in place of pool1
(the space-to-depth stem of MLPerf's TPU ResNet-50 and TResNet): the same
maps and default boxes, a quarter of stage 1's positions; conv1_1's kernel
is 3x3x12, so ImageNet VGG16 weights no longer fit it.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ssd_jax.models import cpu_ops
from ssd_jax.models.layers import conv_relu, scaled_channels

# (name, output channels) of the 13 VGG16 convolutions, grouped by stage.
VGG16_STAGES = (
  (("conv1_1", 64), ("conv1_2", 64)),
  (("conv2_1", 128), ("conv2_2", 128)),
  (("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256)),
  (("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512)),
  (("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512)),
)
FC_CHANNELS = 1024
# The first stage's layouts (`VGG16.stem`).
STEMS = ("vgg", "space_to_depth")


def pool_size(size: int, ceil_mode: bool = False) -> int:
  """Side of a 2x2 stride-2 max pool output (Caffe/PyTorch rounding)."""
  return math.ceil(size / 2) if ceil_mode else size // 2


def vgg16_feature_sizes(
  image_size: int, conv3_3_map: bool = False
) -> tuple[int, ...]:
  """Sides of the source maps for a square input, computed arithmetically.

  pool1, pool2 and pool4 round down, pool3 rounds up; pool5 (3x3, stride 1,
  padding 1), fc6 (dilation 6, padding 6) and fc7 keep the size.

  Args:
    image_size: input side in pixels.
    conv3_3_map: include conv3_3's side first.

  Returns:
    (conv4_3 side, fc7 side), after conv3_3's side with `conv3_3_map`; 300
    gives (38, 19) or (75, 38, 19), 512 gives (64, 32) or (128, 64, 32).
  """
  conv3_3 = pool_size(pool_size(image_size))  # pool1, pool2
  conv4_3 = pool_size(conv3_3, ceil_mode=True)  # pool3
  sizes = (conv4_3, pool_size(conv4_3))  # pool4
  return (conv3_3, *sizes) if conv3_3_map else sizes


def space_to_depth(x: jax.Array, block: int = 2) -> jax.Array:
  """Folds each block x block patch of pixels into the channels.

  Args:
    x: [B, H, W, C] with H and W multiples of `block`.
    block: the patch side.

  Returns:
    [B, H / block, W / block, block * block * C]; channel
    `(i * block + j) * C + c` of output pixel (y, x) is channel c of input
    pixel (block * y + i, block * x + j).

  Raises:
    ValueError: when H or W is not a multiple of `block`.
  """
  b, h, w, c = x.shape
  if h % block or w % block:
    raise ValueError(
      f"space_to_depth needs sides that are multiples of {block}; got {h}x{w}"
    )
  x = x.reshape(b, h // block, block, w // block, block, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // block, w // block, block * block * c)


def max_pool_2x2(
  x: jax.Array, ceil_mode: bool = False, cpu_fast_ops: bool = False
) -> jax.Array:
  """2x2 stride-2 max pool on NHWC; `ceil_mode` pads odd sides with -inf.

  `cpu_fast_ops` takes `cpu_ops.max_pool`: same values and gradients, a
  cheaper gradient on XLA CPU.
  """
  pad_h = x.shape[1] % 2 if ceil_mode else 0
  pad_w = x.shape[2] % 2 if ceil_mode else 0
  pool = cpu_ops.max_pool if cpu_fast_ops else nn.max_pool
  return pool(x, (2, 2), strides=(2, 2), padding=((0, pad_h), (0, pad_w)))


class VGG16(nn.Module):
  """The SSD VGG16 trunk, returning the conv4_3 and fc7 maps (and conv3_3).

  Kernels start Xavier-uniform and biases zero (the release's init for the
  layers it adds; `ssd_jax.weights.from_torchvision_vgg16` gives the
  ImageNet start).

  Attributes:
    width: channel multiplier (1.0 is VGG16; 0.25 a small CPU variant).
    batch_norm: a BatchNorm `<conv>_bn` after every convolution, before its
      ReLU (running statistics in "batch_stats").
    conv3_3_map: also return conv3_3, first.
    stem: "vgg" (conv1_1 and conv1_2 at full resolution, then pool1: VGG16)
      or "space_to_depth" (`space_to_depth` of the input, then conv1_1 and
      conv1_2 at half resolution, no pool1; even input sides only). With
      the small CPU models' 12-16 channels, stage 1 at full resolution is
      about half the trunk's training time on XLA CPU.
    dtype: computation dtype.
    param_dtype: parameter dtype.
    cpu_fast_ops: use `cpu_ops.max_pool` for the 2x2 stride-2 pools (same
      forward, same gradients; on XLA CPU the pool gradient is 3-8x
      cheaper and the SSD300 float32 training step at batch 8 takes 8.97
      instead of 9.51 s; unmeasured elsewhere) and, with `batch_norm`,
      `cpu_ops.BatchNorm` (same variables and values, its reductions
      2.5-5x faster on XLA CPU). Convolutions are always flax's own.
  """

  width: float = 1.0
  batch_norm: bool = False
  conv3_3_map: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cpu_fast_ops: bool = False
  stem: str = "vgg"

  def _conv_relu(
    self,
    x: jax.Array,
    train: bool,
    channels: int,
    kernel: int,
    name: str,
    **kwargs: Any,
  ) -> jax.Array:
    return conv_relu(
      x,
      scaled_channels(channels, self.width),
      kernel,
      name,
      train=train,
      batch_norm_after=self.batch_norm,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      cpu_fast=self.cpu_fast_ops,
      **kwargs,
    )

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False
  ) -> tuple[jax.Array, ...]:
    """Runs the trunk.

    Args:
      x: [B, H, W, 3] images (already normalised).
      train: with `batch_norm`, normalise with the batch's statistics and
        update the running ones; otherwise unused.

    Returns:
      (conv4_3, fc7), after conv3_3 with `conv3_3_map`:
      conv3_3: [B, h3, w3, 256 * width] after ReLU (h3 = 75 for H = 300).
      conv4_3: [B, h4, w4, 512 * width] after ReLU, before L2Norm
        (h4 = 38 for H = 300).
      fc7: [B, h7, w7, 1024 * width] after ReLU (h7 = 19 for H = 300).
    """
    if self.stem not in STEMS:
      raise ValueError(f"VGG16.stem must be one of {STEMS}; got {self.stem!r}")
    x = x.astype(self.dtype)
    folded = self.stem == "space_to_depth"
    if folded:
      x = space_to_depth(x)
    maps = []
    for stage, layers in enumerate(VGG16_STAGES):
      if stage > 1 or (stage == 1 and not folded):
        # pool3 rounds up.
        x = max_pool_2x2(x, stage == 3, cpu_fast_ops=self.cpu_fast_ops)
      for name, channels in layers:
        x = self._conv_relu(x, train, channels, 3, name)
      if stage == 3 or (stage == 2 and self.conv3_3_map):
        maps.append(x)  # conv4_3; conv3_3 before it
    x = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    x = self._conv_relu(x, train, FC_CHANNELS, 3, "fc6", padding=6, dilation=6)
    x = self._conv_relu(x, train, FC_CHANNELS, 1, "fc7", padding=0)
    return (*maps, x)


class L2Norm(nn.Module):
  """Per-location L2 normalisation over channels with a learnable scale.

  `y = scale * x / sqrt(sum_c x^2 + eps)`, computed in float32 (ParseNet,
  as the SSD release applies it to conv4_3; eps as Caffe's Normalize layer).

  Attributes:
    scale_init: initial value of every channel's scale (20 in SSD).
    eps: added to the sum of squares.
    dtype: output dtype.
    param_dtype: dtype of the scale.
  """

  scale_init: float = 20.0
  eps: float = 1e-10
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalises x.

    Args:
      x: [..., C] features.

    Returns:
      [..., C] normalised and scaled features in `dtype`.
    """
    scale = self.param(
      "scale",
      nn.initializers.constant(self.scale_init),
      (x.shape[-1],),
      self.param_dtype,
    )
    x = x.astype(jnp.float32)
    inv_norm = lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) + self.eps)
    return (x * inv_norm * scale.astype(jnp.float32)).astype(self.dtype)


class VGG16Backbone(nn.Module):
  """SSD's VGG16 backbone: the trunk and conv4_3's L2Norm, two source maps.

  Parameters: `vgg` (the `VGG16` trunk) and `conv4_3_norm/scale` (and
  `conv3_3_norm/scale` with `conv3_3_map`).

  Attributes:
    width: channel multiplier (1.0 is VGG16).
    batch_norm: BatchNorm after every convolution (see `VGG16`).
    conv3_3_map: conv3_3 as a third source map, first, with its own
      L2Norm (initial scale 20, as conv4_3's).
    dtype: computation dtype; the maps come in it.
    param_dtype: parameter dtype.
    cpu_fast_ops: the trunk's CPU-friendly pool gradient (see `VGG16`).
    stem: the first stage's layout (see `VGG16`).
  """

  width: float = 1.0
  batch_norm: bool = False
  conv3_3_map: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cpu_fast_ops: bool = False
  stem: str = "vgg"

  @staticmethod
  def feature_sizes(
    image_size: int, conv3_3_map: bool = False
  ) -> tuple[int, ...]:
    """Sides of the source maps; see `vgg16_feature_sizes`."""
    return vgg16_feature_sizes(image_size, conv3_3_map)

  def setup(self):
    self.vgg = VGG16(
      width=self.width,
      batch_norm=self.batch_norm,
      conv3_3_map=self.conv3_3_map,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      cpu_fast_ops=self.cpu_fast_ops,
      stem=self.stem,
    )
    layer = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.conv3_3_map:
      self.conv3_3_norm = L2Norm(**layer)
    self.conv4_3_norm = L2Norm(**layer)

  def __call__(self, images: jax.Array, train: bool = False) -> list[jax.Array]:
    """Computes the source maps.

    Args:
      images: [B, H, W, 3] normalised images.
      train: BatchNorm in training mode (with `batch_norm`).

    Returns:
      [conv4_3 [B, h4, w4, 512 * width] after L2Norm, fc7 [B, h7, w7,
      1024 * width]], in `dtype` (h4 = 38, h7 = 19 for H = 300); with
      `conv3_3_map`, conv3_3 [B, h3, w3, 256 * width] after its L2Norm
      first (h3 = 75).
    """
    if self.conv3_3_map:
      conv3_3, conv4_3, fc7 = self.vgg(images, train)
      return [self.conv3_3_norm(conv3_3), self.conv4_3_norm(conv4_3), fc7]
    conv4_3, fc7 = self.vgg(images, train)
    return [self.conv4_3_norm(conv4_3), fc7]
