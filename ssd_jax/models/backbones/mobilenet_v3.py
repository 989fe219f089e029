"""MobileNetV3-Large as torchvision builds it (Howard et al., 2019).

torchvision's `mobilenet_v3_large(width_mult, reduced_tail, dilated=False)`
`.features`: a 3x3 stride-2 stem (conv-BN-hardswish, 16 channels), fifteen
inverted residual blocks (`MOBILENET_V3_LARGE`, the paper's Table 1) and a
1x1 conv-BN-hardswish to six times the last block's channels. An inverted
residual block is a 1x1 expansion conv-BN-activation (absent where the
expansion keeps the channel count), a depthwise k x k conv-BN-activation
(the block's stride), an optional squeeze-and-excitation (`SqueezeExcitation`:
mean pool, 1x1 conv + ReLU, 1x1 conv + hardsigmoid, a channel gate) and a
1x1 projection conv-BN without activation; a residual connection where the
stride is 1 and the channel count unchanged. BatchNorm: eps 0.001, torch
momentum 0.01 (flax 0.99) for the ImageNet classifier; torchvision's SSDLite
builds it with momentum 0.03 (`bn_momentum=0.97` here).

`reduced_tail` halves the channels of the blocks after the last stride-2
block's input (C4: 160 -> 80, expansion 960 -> 480, last conv 960 -> 480),
as torchvision does for SSDLite trained from scratch (the paper's Sec. 6.3).

The backbone returns two maps, as `SSDLiteFeatureExtractorMobileNet` splits
it: the output of the C4 block's expansion conv (stride 16, 672 channels at
width 1) and the last conv's output (stride 32).

`width` is torchvision's `width_mult`: every channel count becomes
`make_divisible(c * width, 8)`, so `from_torchvision_mobilenet_v3_large`
also takes torchvision's scaled models. Parameters follow torchvision's
modules: `stem`, `block1` .. `block15` (`expand`, `depthwise`, `se/fc1`,
`se/fc2`, `project`), `last_conv`; each conv-BN is a `layers.ConvBN`.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssd_jax.models.layers import ConvBN


class BlockConfig(NamedTuple):
  """One inverted residual block (torchvision's `InvertedResidualConfig`).

  Attributes:
    in_channels: input channels.
    kernel: side of the depthwise kernel (3 or 5).
    expanded: channels after the 1x1 expansion (= in_channels: none).
    out_channels: channels after the 1x1 projection.
    use_se: whether a squeeze-and-excitation gate follows the depthwise.
    hardswish: hardswish activations (the paper's "HS"); ReLU otherwise.
    stride: stride of the depthwise convolution (1 or 2).
  """

  in_channels: int
  kernel: int
  expanded: int
  out_channels: int
  use_se: bool
  hardswish: bool
  stride: int

  @property
  def residual(self) -> bool:
    """Whether the block adds its input (torchvision's `use_res_connect`)."""
    return self.stride == 1 and self.in_channels == self.out_channels


# torchvision's `_mobilenet_v3_conf("mobilenet_v3_large")` at width 1 with
# the full tail; the paper's Table 1.
MOBILENET_V3_LARGE = (
  BlockConfig(16, 3, 16, 16, False, False, 1),
  BlockConfig(16, 3, 64, 24, False, False, 2),  # C1
  BlockConfig(24, 3, 72, 24, False, False, 1),
  BlockConfig(24, 5, 72, 40, True, False, 2),  # C2
  BlockConfig(40, 5, 120, 40, True, False, 1),
  BlockConfig(40, 5, 120, 40, True, False, 1),
  BlockConfig(40, 3, 240, 80, False, True, 2),  # C3
  BlockConfig(80, 3, 200, 80, False, True, 1),
  BlockConfig(80, 3, 184, 80, False, True, 1),
  BlockConfig(80, 3, 184, 80, False, True, 1),
  BlockConfig(80, 3, 480, 112, True, True, 1),
  BlockConfig(112, 3, 672, 112, True, True, 1),
  BlockConfig(112, 5, 672, 160, True, True, 2),  # C4
  BlockConfig(160, 5, 960, 160, True, True, 1),
  BlockConfig(160, 5, 960, 160, True, True, 1),
)
STEM_CHANNELS = 16
BN_EPS = 0.001


def make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision's `_make_divisible`: the nearest multiple of `divisor`.

  Rounds half up, never below `divisor` and never more than 10% below
  `value` (then one `divisor` more).

  Args:
    value: a scaled channel count.
    divisor: the multiple.

  Returns:
    The channel count, a positive multiple of `divisor`.
  """
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return rounded


def mobilenet_v3_large_blocks(
  width: float = 1.0, reduced_tail: bool = False
) -> tuple[BlockConfig, ...]:
  """The fifteen blocks of MobileNetV3-Large as torchvision configures them.

  Args:
    width: torchvision's `width_mult`; channels become `make_divisible(c *
      width, 8)`.
    reduced_tail: halve the channels of the C4 block's output and of the
      blocks after it (torchvision's `reduced_tail`, used by SSDLite).

  Returns:
    `MOBILENET_V3_LARGE` with the tail reduced and channels scaled.
  """
  divider = 2 if reduced_tail else 1
  c4 = max(i for i, b in enumerate(MOBILENET_V3_LARGE) if b.stride > 1)
  blocks = []
  for i, b in enumerate(MOBILENET_V3_LARGE):
    if reduced_tail and i >= c4:
      b = b._replace(out_channels=b.out_channels // divider)
      if i > c4:
        b = b._replace(
          in_channels=b.in_channels // divider,
          expanded=b.expanded // divider,
        )
    blocks.append(
      b._replace(
        in_channels=make_divisible(b.in_channels * width),
        expanded=make_divisible(b.expanded * width),
        out_channels=make_divisible(b.out_channels * width),
      )
    )
  return tuple(blocks)


def c4_index(blocks: tuple[BlockConfig, ...]) -> int:
  """Index (0-based) of the last stride-2 block, where SSDLite's first map is.

  torchvision's `_mobilenet_extractor` takes `stage_indices[-2]`, the last
  strided block of `features` (block 13 of MobileNetV3-Large, 1-based as in
  `features`; 12 here).
  """
  return max(i for i, b in enumerate(blocks) if b.stride > 1)


class SqueezeExcitation(nn.Module):
  """torchvision's `SqueezeExcitation` with a hardsigmoid gate.

  `x * hardsigmoid(fc2(relu(fc1(mean_hw(x)))))`, fc1 and fc2 1x1 convs with
  bias (parameters `fc1`, `fc2`).

  Attributes:
    squeeze: channels of fc1's output.
    dtype: computation dtype.
    param_dtype: parameter dtype.
  """

  squeeze: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H, W, C], each channel scaled by its gate."""
    conv = lambda features, name: nn.Conv(
      features,
      (1, 1),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
      bias_init=nn.initializers.zeros,
      name=name,
    )
    scale = jnp.mean(x, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
    scale = nn.relu(conv(self.squeeze, "fc1")(scale))
    scale = nn.hard_sigmoid(conv(x.shape[-1], "fc2")(scale))
    return x * scale


class InvertedResidual(nn.Module):
  """torchvision's MobileNetV3 `InvertedResidual` (dilation 1).

  Parameters: `expand` (when `expanded != in_channels`), `depthwise`, `se`
  (when `use_se`), `project`; `ConvBN` blocks but for `se`.

  Attributes:
    config: the block.
    bn_momentum: flax's decay of the BatchNorm running statistics.
    dtype: computation dtype.
    param_dtype: parameter dtype.
    cpu_fast_ops: the BatchNorms are `cpu_ops.BatchNorm` (the same
      variables and values, faster to train on XLA CPU).
  """

  config: BlockConfig
  bn_momentum: float = 0.99
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cpu_fast_ops: bool = False

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False
  ) -> tuple[jax.Array, jax.Array]:
    """Runs the block.

    Args:
      x: [B, H, W, in_channels].
      train: BatchNorm on batch statistics, updating the running ones.

    Returns:
      out: [B, H / stride, W / stride, out_channels] (sides rounded up).
      hidden: [B, H, W, expanded], the expansion conv's output (`x` where
        the block has none): SSDLite's first source map is this of C4.
    """
    cfg = self.config
    act = nn.hard_swish if cfg.hardswish else nn.relu
    layer = dict(
      bn_eps=BN_EPS,
      bn_momentum=self.bn_momentum,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      cpu_fast_ops=self.cpu_fast_ops,
    )
    hidden = x
    if cfg.expanded != cfg.in_channels:
      hidden = ConvBN(cfg.expanded, 1, activation=act, name="expand", **layer)(
        x, train
      )
    y = ConvBN(
      cfg.expanded,
      cfg.kernel,
      stride=cfg.stride,
      padding=(cfg.kernel - 1) // 2,
      groups=cfg.expanded,
      activation=act,
      name="depthwise",
      **layer,
    )(hidden, train)
    if cfg.use_se:
      y = SqueezeExcitation(
        make_divisible(cfg.expanded // 4),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="se",
      )(y)
    y = ConvBN(cfg.out_channels, 1, activation=None, name="project", **layer)(
      y, train
    )
    return (y + x if cfg.residual else y), hidden


class MobileNetV3Large(nn.Module):
  """MobileNetV3-Large's features, returning SSDLite's two backbone maps.

  Parameters: `stem`, `block1` .. `block15`, `last_conv` (torchvision's
  `features.0` .. `features.16`), with BatchNorm statistics in
  "batch_stats". Kernels start as torchvision's classifier does (Kaiming
  normal, fan out), BatchNorm at scale 1 and offset 0.

  Attributes:
    width: torchvision's `width_mult` (see `mobilenet_v3_large_blocks`).
    reduced_tail: torchvision's `reduced_tail` (True in SSDLite from
      scratch; the ImageNet classifier has the full tail).
    bn_momentum: flax's decay of the running statistics, 1 - torch's
      momentum: 0.99 as the classifier, 0.97 as SSDLite.
    dtype: computation dtype; the maps come in it.
    param_dtype: parameter dtype.
    cpu_fast_ops: the BatchNorms are `cpu_ops.BatchNorm` (the same
      variables and values, faster to train on XLA CPU).
  """

  width: float = 1.0
  reduced_tail: bool = False
  bn_momentum: float = 0.99
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cpu_fast_ops: bool = False

  @nn.nowrap
  def blocks(self) -> tuple[BlockConfig, ...]:
    """The inverted residual blocks of this width and tail."""
    return mobilenet_v3_large_blocks(self.width, self.reduced_tail)

  @nn.nowrap
  def feature_sizes(self, image_size: int) -> tuple[int, int]:
    """Sides of the two maps for a square input, computed arithmetically.

    Every convolution pads (k - 1) / 2, so a stride-s one gives the side
    ceil(n / s): the stem and the four strided blocks halve it, the first
    map is taken before C4's depthwise conv.

    Args:
      image_size: input side in pixels.

    Returns:
      (C4 expansion side, last side): 320 gives (20, 10).
    """
    size = -(-image_size // 2)  # the stem
    blocks = self.blocks()
    c4 = c4_index(blocks)
    for b in blocks[:c4]:
      size = -(-size // b.stride)
    return size, -(-size // blocks[c4].stride)

  @nn.compact
  def __call__(
    self, images: jax.Array, train: bool = False
  ) -> tuple[jax.Array, jax.Array]:
    """Runs the features.

    Args:
      images: [B, H, W, 3] normalised images.
      train: BatchNorm on batch statistics, updating the running ones
        (needs `mutable=["batch_stats"]`).

    Returns:
      c4: [B, H / 16, W / 16, C4's expanded channels], after C4's
        expansion conv (672 at width 1; sides rounded up).
      last: [B, H / 32, W / 32, 6 * last block's channels] (960, or 480
        with the reduced tail).
    """
    layer = dict(
      bn_momentum=self.bn_momentum,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      cpu_fast_ops=self.cpu_fast_ops,
    )
    blocks = self.blocks()
    c4 = c4_index(blocks)
    x = ConvBN(
      make_divisible(STEM_CHANNELS * self.width),
      3,
      stride=2,
      padding=1,
      activation=nn.hard_swish,
      bn_eps=BN_EPS,
      name="stem",
      **layer,
    )(images.astype(self.dtype), train)
    tap = x
    for i, cfg in enumerate(blocks):
      x, hidden = InvertedResidual(cfg, name=f"block{i + 1}", **layer)(x, train)
      if i == c4:
        tap = hidden
    x = ConvBN(
      6 * blocks[-1].out_channels,
      1,
      activation=nn.hard_swish,
      bn_eps=BN_EPS,
      name="last_conv",
      **layer,
    )(x, train)
    return tap, x
