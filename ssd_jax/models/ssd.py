"""SSD: the VGG16 trunk, extra feature layers and multibox heads.

Source maps, in order: conv4_3 (L2-normalised, learnable scale), fc7, then
the second conv of each extra block (conv8_2, conv9_2, ... in the paper's
names). Each map has a 3x3 convolution for box offsets (4 per default box)
and one for class logits (`num_classes` per default box). Head outputs are
reshaped from `[B, H, W, A * K]` to `[B, H * W * A, K]` (channel `a * K + k`
is default box `a`, column `k`) and concatenated map by map, which is the
order of `ssd_jax.default_boxes.default_boxes`: map, row-major location, box
kind (min square, sqrt(min * max) square, then each ratio and its
transpose).

SSD300 and SSD512 are the Caffe release's architectures and default boxes.
Other input sizes build extra blocks by a rule (see `extra_blocks`) and take
their default boxes from the actual feature map sizes with the paper's scale
rule (`ssd_jax.default_boxes.paper_sizes`).
"""

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ssd_jax.default_boxes import (
  SSD300_COCO_PRIORS,
  SSD300_PRIORS,
  SSD512_COCO_PRIORS,
  SSD512_PRIORS,
  PriorConfig,
  boxes_per_location,
  default_boxes,
  paper_sizes,
)
from ssd_jax.models.vgg import VGG16, scaled_channels, vgg16_feature_sizes


class TorchvisionPriorConfig(PriorConfig):
  """A PriorConfig whose boxes clamp only (w, h) to [0, 1], not the centres.

  torchvision's `DefaultBoxGenerator(clip=True)` clamps the width/height
  pairs and leaves centres as they are (SSD300's 10x10 map with step 32 has
  its last centres at 9.5 * 32 / 300 = 1.013); `default_boxes(clip=True)`
  clamps all four values. `boxes()` reproduces torchvision.
  """

  __slots__ = ()

  def boxes(self) -> np.ndarray:
    """[P, 4] float32 (cx, cy, w, h), w and h clamped to [0, 1]."""
    boxes = default_boxes(**self._replace(clip=False)._asdict())
    if self.clip:
      boxes[:, 2:] = np.clip(boxes[:, 2:], 0.0, 1.0)
    return boxes


def prior_boxes(config: PriorConfig) -> np.ndarray:
  """Default boxes of a config: `default_boxes(**config)`, or `boxes()`.

  Args:
    config: a PriorConfig (or TorchvisionPriorConfig).

  Returns:
    [P, 4] float32 (cx, cy, w, h).
  """
  if isinstance(config, TorchvisionPriorConfig):
    return config.boxes()
  return default_boxes(**config._asdict())


# The default boxes of torchvision's `ssd300_vgg16` COCO model: scales
# (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05) of 300 (the release's COCO
# sizes 21, 45, 99, ...), the same grid, steps, ratios and box order as
# SSD300_PRIORS, torchvision's clamping. Use them with weights from
# `ssd_jax.weights.from_torchvision_ssd300`.
TORCHVISION_SSD300_PRIORS = TorchvisionPriorConfig(
  *SSD300_PRIORS._replace(
    min_sizes=(21.0, 45.0, 99.0, 153.0, 207.0, 261.0),
    max_sizes=(45.0, 99.0, 153.0, 207.0, 261.0, 315.0),
  )
)


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


def feature_sizes(image_size: int) -> tuple[int, ...]:
  """Sides of the source maps (conv4_3, fc7, extras) computed arithmetically.

  Args:
    image_size: input side in pixels.

  Returns:
    One side per source map: 300 gives (38, 19, 10, 5, 3, 1), 512 gives
    (64, 32, 16, 8, 4, 2, 1).
  """
  conv4_3, size = vgg16_feature_sizes(image_size)
  sizes = [conv4_3, size]
  for block in extra_blocks(image_size):
    size = conv_output_size(size, block.kernel, block.stride, block.padding)
    sizes.append(size)
  return tuple(sizes)


def default_prior_config(image_size: int) -> PriorConfig:
  """The default-box configuration of an SSD with this input size.

  300 and 512 give the release's `SSD300_PRIORS` / `SSD512_PRIORS`. Other
  sizes use the actual feature map sizes, steps `image_size / side`, the
  paper's scale rule (`paper_sizes`: conv4_3 at 0.1, then 0.2 .. 0.9) and
  the release's ratio pattern: (2,) on the first and last two maps, (2, 3)
  in between.

  Args:
    image_size: input side in pixels.

  Returns:
    A PriorConfig whose feature sizes equal `feature_sizes(image_size)`.

  Raises:
    ValueError: if the input is too small for three source maps.
  """
  if image_size == 300:
    return SSD300_PRIORS
  if image_size == 512:
    return SSD512_PRIORS
  sizes = feature_sizes(image_size)
  n = len(sizes)
  if n < 3 or min(sizes) < 1:
    raise ValueError(
      f"image_size={image_size} is too small for SSD: source maps {sizes};"
      " need at least 3 maps of side >= 1 (image_size >= 32)"
    )
  min_sizes, max_sizes = paper_sizes(image_size, n)
  return PriorConfig(
    image_size=image_size,
    feature_sizes=sizes,
    steps=tuple(image_size / f for f in sizes),
    min_sizes=min_sizes,
    max_sizes=max_sizes,
    aspect_ratios=((2.0,),) + ((2.0, 3.0),) * (n - 3) + ((2.0,), (2.0,)),
  )


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


class SSD(nn.Module):
  """The SSD detector on a VGG16 trunk.

  Parameters (a flat tree): `vgg` (conv1_1 .. conv5_3, fc6, fc7, each with
  `kernel` HWIO and `bias`), `conv4_3_norm/scale`, the extra convs
  `conv8_1`, `conv8_2`, `conv9_1`, ... (paper names), and the heads
  `loc_k` / `conf_k` for source map k.

  Attributes:
    num_classes: classes including background (21 for VOC).
    image_size: input side in pixels (square inputs).
    width: channel multiplier for every layer (1.0 is the paper's SSD).
    dtype: computation dtype (e.g. jnp.bfloat16); outputs come in it.
    param_dtype: parameter dtype.
    prior_config: the default boxes; None takes `default_prior_config`.
      Its feature sizes must match the network's maps and its ratios set
      the number of boxes per location of each head.
    cpu_fast_ops: the backbone's CPU-friendly max-pool gradient
      (`cpu_ops.max_pool` for VGG16's 2x2 pools; same results).
  """

  num_classes: int
  image_size: int = 300
  width: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  prior_config: PriorConfig | None = None
  cpu_fast_ops: bool = False

  @nn.nowrap
  def resolved_prior_config(self) -> PriorConfig:
    """The default-box config, checked against the network's map sizes.

    Returns:
      `prior_config`, or `default_prior_config(image_size)` when None.

    Raises:
      ValueError: when the config's image or feature sizes disagree with
        the network's.
    """
    config = self.prior_config or default_prior_config(self.image_size)
    sizes = feature_sizes(self.image_size)
    if config.image_size != self.image_size or (
      tuple(config.feature_sizes) != sizes
    ):
      raise ValueError(
        f"prior_config (image_size {config.image_size}, feature_sizes "
        f"{tuple(config.feature_sizes)}) does not fit SSD(image_size="
        f"{self.image_size}), whose maps are {sizes}"
      )
    return config

  @nn.nowrap
  def priors(self) -> np.ndarray:
    """Default boxes matching the outputs; works on an unbound module.

    Returns:
      [P, 4] float32 (cx, cy, w, h) in [0, 1], row p for output row p.
    """
    return prior_boxes(self.resolved_prior_config())

  def _conv(self, channels, kernel, name, stride=1, padding=1) -> nn.Conv:
    return nn.Conv(
      channels,
      (kernel, kernel),
      strides=(stride, stride),
      padding=padding,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.initializers.xavier_uniform(),
      bias_init=nn.initializers.zeros,
      name=name,
    )

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Predicts box offsets and class logits for every default box.

    Args:
      images: [B, image_size, image_size, 3] float32, normalised by the
        input pipeline (the model does no normalisation).

    Returns:
      loc: [B, P, 4] offsets (cx, cy, w, h) against `priors()`, to decode
        with variances (0.1, 0.2); in `dtype`.
      logits: [B, P, num_classes] class logits (column 0 background); in
        `dtype`.

    Raises:
      ValueError: on an input that is not [B, image_size, image_size, 3].
    """
    if images.ndim != 4 or images.shape[1:] != (
      self.image_size,
      self.image_size,
      3,
    ):
      raise ValueError(
        f"SSD(image_size={self.image_size}) expects images of shape "
        f"[B, {self.image_size}, {self.image_size}, 3], got {images.shape}"
      )
    config = self.resolved_prior_config()
    conv4_3, x = VGG16(
      width=self.width,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      cpu_fast_ops=self.cpu_fast_ops,
      name="vgg",
    )(images)
    sources = [
      L2Norm(
        dtype=self.dtype, param_dtype=self.param_dtype, name="conv4_3_norm"
      )(conv4_3),
      x,
    ]
    for i, block in enumerate(extra_blocks(self.image_size)):
      name = f"conv{8 + i}"
      x = self._conv(
        scaled_channels(block.mid, self.width), 1, f"{name}_1", padding=0
      )(x)
      x = nn.relu(x)
      x = self._conv(
        scaled_channels(block.out, self.width),
        block.kernel,
        f"{name}_2",
        stride=block.stride,
        padding=block.padding,
      )(x)
      x = nn.relu(x)
      sources.append(x)

    locs, logits = [], []
    for k, (source, ratios) in enumerate(
      zip(sources, config.aspect_ratios, strict=True)
    ):
      a = boxes_per_location(ratios)
      batch = source.shape[0]
      loc = self._conv(a * 4, 3, f"loc_{k}")(source)  # [B, H, W, A*4]
      conf = self._conv(a * self.num_classes, 3, f"conf_{k}")(source)
      locs.append(loc.reshape(batch, -1, 4))  # [B, H*W*A, 4]
      logits.append(conf.reshape(batch, -1, self.num_classes))
    return jnp.concatenate(locs, 1), jnp.concatenate(logits, 1)


SSD300 = functools.partial(SSD, image_size=300)
SSD512 = functools.partial(SSD, image_size=512)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# model.priors -> {image_size: PriorConfig}; None = default_prior_config.
_PRIORS = {
  "default": None,
  "coco": {300: SSD300_COCO_PRIORS, 512: SSD512_COCO_PRIORS},
  "torchvision": {300: TORCHVISION_SSD300_PRIORS},
}
_FIXED_SIZES = {"ssd300": 300, "ssd512": 512}


def from_config(model_cfg: Any, num_classes: int) -> SSD:
  """Builds the model from a config.

  Args:
    model_cfg: ConfigDict (or mapping) with `name` ("ssd300" | "ssd512" |
      "ssd"), `image_size` (must be 300 / 512 for the named variants, may
      be omitted for them), `width` (default 1.0), `dtype` ("float32" |
      "bfloat16", default "float32"), and optionally `param_dtype` (default
      "float32") and `priors` ("default": the release's VOC sizes or the
      paper's rule; "coco": the release's COCO sizes, SSD300/SSD512 only;
      "torchvision": the default boxes of torchvision's COCO SSD300, for
      imported torchvision weights), and
      `cpu_fast_ops` ("auto" | "true" | "false" or a bool, default "auto":
      on when JAX's default backend is the CPU; selects the CPU-friendly
      max-pool gradient, `cpu_ops.max_pool`).
    num_classes: classes including background.

  Returns:
    An unbound SSD.

  Raises:
    ValueError: naming the field that is unknown or inconsistent.
  """
  cfg = dict(model_cfg)
  name = cfg.get("name", "ssd")
  if name not in ("ssd", *_FIXED_SIZES):
    raise ValueError(f"model.name must be ssd300, ssd512 or ssd; got {name!r}")
  image_size = cfg.get("image_size", _FIXED_SIZES.get(name))
  if image_size is None:
    raise ValueError("model.image_size is required for model.name='ssd'")
  if name in _FIXED_SIZES and image_size != _FIXED_SIZES[name]:
    raise ValueError(
      f"model.image_size={image_size} contradicts model.name={name!r}"
    )
  for field in ("dtype", "param_dtype"):
    if cfg.get(field, "float32") not in _DTYPES:
      raise ValueError(
        f"model.{field} must be one of {sorted(_DTYPES)}; got {cfg[field]!r}"
      )
  priors = cfg.get("priors", "default")
  if priors not in _PRIORS:
    raise ValueError(
      f"model.priors must be one of {sorted(_PRIORS)}; got {priors!r}"
    )
  if _PRIORS[priors] is not None and int(image_size) not in _PRIORS[priors]:
    raise ValueError(
      f"model.priors={priors!r} exists for image sizes "
      f"{sorted(_PRIORS[priors])}, not model.image_size={image_size}"
    )
  if num_classes < 2:
    raise ValueError(
      f"num_classes must be >= 2 (background + 1); got {num_classes}"
    )
  fast = str(cfg.get("cpu_fast_ops", "auto")).lower()
  if fast not in ("true", "false", "auto"):
    raise ValueError(
      "model.cpu_fast_ops must be 'auto', 'true' or 'false'; got "
      f"{cfg['cpu_fast_ops']!r}"
    )
  fast = jax.default_backend() == "cpu" if fast == "auto" else fast == "true"
  return SSD(
    num_classes=num_classes,
    cpu_fast_ops=fast,
    image_size=int(image_size),
    width=float(cfg.get("width", 1.0)),
    dtype=_DTYPES[cfg.get("dtype", "float32")],
    param_dtype=_DTYPES[cfg.get("param_dtype", "float32")],
    prior_config=_PRIORS[priors] and _PRIORS[priors][int(image_size)],
  )
