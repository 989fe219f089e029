"""SSD = backbone + extra blocks + heads, with its default-box config.

The parts, each in its own module:
- backbone (`backbones/vgg.py`, `VGG16Backbone`): the source maps conv4_3
  (L2-normalised, learnable scale) and fc7;
- extra blocks (`extras.py`, `ExtraLayers`): one more source map per block
  (conv8_2, conv9_2, ... in the paper's names);
- heads (`heads.py`, `MultiboxHeads`): offsets and logits per default box,
  in the order of `ssd_jax.default_boxes.default_boxes`;
- default boxes (`resolved_prior_config`, `priors`): a
  `default_boxes.PriorConfig` whose feature sizes are the network's maps.

SSD300 and SSD512 are the Caffe release's architectures and default boxes.
Other input sizes build extra blocks by a rule (see `extras.extra_blocks`)
and take their default boxes from the actual feature map sizes with the
paper's scale rule (`default_boxes.paper_prior_config`).

The parts share the SSD's parameter scope (`flax.linen.share_scope`), so the
tree is flat as it always was (`vgg`, `conv4_3_norm`, `conv8_1`, ...,
`loc_0`, `conf_0`, ...) and checkpoints written before the parts were split
restore unchanged. Another backbone (e.g. ResNet-50 or MobileNetV3) slots in
as a module in `backbones/` returning its source maps, with its own extra
blocks, heads (`MultiboxHeads`, or a new head module where they differ) and
default-box config; a BatchNorm backbone also takes a `train` argument and
keeps `batch_stats` beside `params`.
"""

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax.default_boxes import (
  NAMED_PRIORS,
  SSD300_PRIORS,
  SSD512_PRIORS,
  PriorConfig,
  boxes_per_location,
  paper_prior_config,
  prior_boxes,
)
from ssd_jax.models.backbones.vgg import STEMS, VGG16Backbone
from ssd_jax.models.extras import (
  ExtraLayers,
  extra_blocks,
  extra_feature_sizes,
)
from ssd_jax.models.heads import MultiboxHeads


def feature_sizes(
  image_size: int, conv3_3_map: bool = False
) -> tuple[int, ...]:
  """Sides of the source maps (conv4_3, fc7, extras) computed arithmetically.

  Args:
    image_size: input side in pixels.
    conv3_3_map: with conv3_3 (stride 4) as the first map.

  Returns:
    One side per source map: 300 gives (38, 19, 10, 5, 3, 1), 512 gives
    (64, 32, 16, 8, 4, 2, 1); with `conv3_3_map` 75 and 128 come first.
  """
  sizes = VGG16Backbone.feature_sizes(image_size, conv3_3_map)
  return sizes + extra_feature_sizes(sizes[-1], extra_blocks(image_size))


def default_prior_config(
  image_size: int, conv3_3_map: bool = False
) -> PriorConfig:
  """The default-box configuration of an SSD with this input size.

  300 and 512 give the release's `SSD300_PRIORS` / `SSD512_PRIORS`. Other
  sizes, and any size with `conv3_3_map`, use the actual feature map sizes
  with `default_boxes.paper_prior_config`: steps `image_size / side`, the
  paper's scale rule (the first map at 0.1, then 0.2 .. 0.9) and the
  release's ratio pattern: (2,) on the first and last two maps, (2, 3) in
  between.

  Args:
    image_size: input side in pixels.
    conv3_3_map: the SSD has conv3_3 as its first map (`SSD.conv3_3_map`).

  Returns:
    A PriorConfig whose feature sizes equal `feature_sizes(image_size,
    conv3_3_map)`.

  Raises:
    ValueError: if the input is too small for three source maps.
  """
  if image_size == 300 and not conv3_3_map:
    return SSD300_PRIORS
  if image_size == 512 and not conv3_3_map:
    return SSD512_PRIORS
  sizes = feature_sizes(image_size, conv3_3_map)
  if len(sizes) < 3 or min(sizes) < 1:
    raise ValueError(
      f"image_size={image_size} is too small for SSD: source maps {sizes};"
      " need at least 3 maps of side >= 1 (image_size >= 32)"
    )
  return paper_prior_config(image_size, sizes)


class SSD(nn.Module):
  """The SSD detector on a VGG16 backbone.

  Parameters (a flat tree): `vgg` (conv1_1 .. conv5_3, fc6, fc7, each with
  `kernel` HWIO and `bias`), `conv4_3_norm/scale` (and `conv3_3_norm/scale`
  with `conv3_3_map`), the extra convs `conv8_1`, `conv8_2`, `conv9_1`, ...
  (paper names), and the heads `loc_k` / `conf_k` for source map k.

  Attributes:
    num_classes: classes including background (21 for VOC).
    image_size: input side in pixels (square inputs).
    width: channel multiplier for every layer (1.0 is the paper's SSD).
    batch_norm: a BatchNorm after every convolution of the trunk and the
      extra blocks (not the heads), running statistics in "batch_stats";
      False is the paper's SSD.
    conv3_3_map: conv3_3 (stride 4, L2-normalised) as a first source map
      with its own heads, for objects too small for conv4_3's grid
      (`VGG16Backbone`); False is the paper's SSD.
    dtype: computation dtype (e.g. jnp.bfloat16); outputs come in it.
    param_dtype: parameter dtype.
    prior_config: the default boxes; None takes `default_prior_config`.
      Its feature sizes must match the network's maps and its ratios set
      the number of boxes per location of each head.
    cpu_fast_ops: the CPU-friendly max-pool gradient (`cpu_ops.max_pool`
      for VGG16's 2x2 pools) and BatchNorm (`cpu_ops.BatchNorm`, with
      `batch_norm`); same results.
    stem: VGG16's first stage, "vgg" (the paper's) or "space_to_depth"
      (conv1 at half resolution; `VGG16.stem`); the maps and default boxes
      are the same.
  """

  # The input normalisation (`ssd_jax.data.image.NORMALIZATIONS`): the Caffe
  # release's mean subtraction.
  normalization: ClassVar[str] = "caffe"

  num_classes: int
  image_size: int = 300
  width: float = 1.0
  batch_norm: bool = False
  conv3_3_map: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  prior_config: PriorConfig | None = None
  cpu_fast_ops: bool = False
  stem: str = "vgg"

  @nn.nowrap
  def resolved_prior_config(self) -> PriorConfig:
    """The default-box config, checked against the network's map sizes.

    Returns:
      `prior_config`, or `default_prior_config(image_size, conv3_3_map)`
      when None.

    Raises:
      ValueError: when the config's image or feature sizes disagree with
        the network's.
    """
    config = self.prior_config or default_prior_config(
      self.image_size, self.conv3_3_map
    )
    sizes = feature_sizes(self.image_size, self.conv3_3_map)
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

  def setup(self):
    config = self.resolved_prior_config()
    layer = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = dict(width=self.width, batch_norm=self.batch_norm, **layer)
    self.backbone = VGG16Backbone(
      conv3_3_map=self.conv3_3_map,
      cpu_fast_ops=self.cpu_fast_ops,
      stem=self.stem,
      **norm,
    )
    self.extras = ExtraLayers(
      extra_blocks(self.image_size), cpu_fast_ops=self.cpu_fast_ops, **norm
    )
    self.heads = MultiboxHeads(
      self.num_classes,
      tuple(boxes_per_location(r) for r in config.aspect_ratios),
      **layer,
    )
    # One flat parameter tree (see the module docstring).
    for part in (self.backbone, self.extras, self.heads):
      nn.share_scope(self, part)

  def __call__(
    self, images: jax.Array, train: bool = False
  ) -> tuple[jax.Array, jax.Array]:
    """Predicts box offsets and class logits for every default box.

    Args:
      images: [B, image_size, image_size, 3] float32, normalised by the
        input pipeline (the model does no normalisation).
      train: with `batch_norm`, normalise with the batch's statistics and
        update the running ones (`mutable=["batch_stats"]`); otherwise
        unused (the zoo's common signature).

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
    sources = self.backbone(images, train)  # [(conv3_3,) conv4_3, fc7]
    extras = self.extras(sources[-1], train)  # [conv8_2, conv9_2, ...]
    return self.heads([*sources, *extras])


SSD300 = functools.partial(SSD, image_size=300)
SSD512 = functools.partial(SSD, image_size=512)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
BACKBONES = ("vgg16", "resnet50", "mobilenet_v3_large")
_FIXED_SIZES = {"ssd300": 300, "ssd512": 512}
# The pixel sizes of model.priors="fitted" (`default_boxes.fit_prior_config`).
_PRIOR_SIZES = ("prior_min_sizes", "prior_max_sizes")
# The model.priors that have boxes for conv3_3's map (model.conv3_3_map):
# the paper's rule and boxes fitted from it; the named sets have none.
CONV3_3_PRIORS = ("default", "fitted")


def from_config(model_cfg: Any, num_classes: int) -> Any:
  """Builds the model from a config.

  `backbone` (default "vgg16") picks the family: "vgg16" is the paper's SSD
  as below; "resnet50" is NVIDIA's `SSD300ResNet50` and
  "mobilenet_v3_large" torchvision's `SSDLite320`, each with its own
  default boxes and input normalisation, built at `image_size` (default
  300 / 320) and `width`, with `dtype` / `param_dtype` (and SSDLite's
  `reduced_tail`, and `cpu_fast_ops`); `name` concerns the VGG models only.

  Args:
    model_cfg: ConfigDict (or mapping) with `name` ("ssd300" | "ssd512" |
      "ssd"), `image_size` (must be 300 / 512 for the named variants, may
      be omitted for them), `width` (default 1.0), `dtype` ("float32" |
      "bfloat16", default "float32"), and optionally `param_dtype` (default
      "float32") and `priors` (a name of `default_boxes.NAMED_PRIORS`:
      "default": the release's VOC sizes or the paper's rule; "coco": the
      release's COCO sizes, SSD300/SSD512 only; "torchvision": the default
      boxes of torchvision's COCO SSD300, for imported torchvision weights;
      "fitted": the "default" grid, maps, steps and ratios with the sizes
      `prior_min_sizes` / `prior_max_sizes`, tuples of one pixel size per
      map chosen by `default_boxes.fit_prior_config`; VGG models only),
      `batch_norm` and `conv3_3_map` (VGG models only, default False; see
      `SSD`; conv3_3_map with the priors of `CONV3_3_PRIORS`), `stem`
      (VGG models only: "vgg", default, or "space_to_depth", even
      `image_size` only; see `VGG16`), and
      `cpu_fast_ops` ("auto" | "true" | "false" or a bool, default
      "auto": on when JAX's default backend is the CPU; selects the
      CPU-friendly max-pool gradient, `cpu_ops.max_pool`, and BatchNorm,
      `cpu_ops.BatchNorm`, every family's).
    num_classes: classes including background.

  Returns:
    An unbound SSD.

  Raises:
    ValueError: naming the field that is unknown or inconsistent.
  """
  cfg = dict(model_cfg)
  backbone = cfg.get("backbone", "vgg16")
  if backbone not in BACKBONES:
    raise ValueError(
      f"model.backbone must be one of {BACKBONES}; got {backbone!r}"
    )
  # Checks every family shares.
  for field in ("dtype", "param_dtype"):
    if cfg.get(field, "float32") not in _DTYPES:
      raise ValueError(
        f"model.{field} must be one of {sorted(_DTYPES)}; got {cfg[field]!r}"
      )
  if num_classes < 2:
    raise ValueError(
      f"num_classes must be >= 2 (background + 1); got {num_classes}"
    )
  sized = [f for f in _PRIOR_SIZES if cfg.get(f)]
  if sized and cfg.get("priors", "default") != "fitted":
    raise ValueError(
      f"model.{sized[0]} is used with model.priors='fitted' only; got "
      f"model.priors={cfg.get('priors', 'default')!r}"
    )
  if backbone != "vgg16":
    return _zoo_model(backbone, cfg, num_classes)
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
  priors = cfg.get("priors", "default")
  if priors not in NAMED_PRIORS:
    raise ValueError(
      f"model.priors must be one of {sorted(NAMED_PRIORS)}; got {priors!r}"
    )
  by_size = NAMED_PRIORS[priors]
  if by_size is not None and int(image_size) not in by_size:
    raise ValueError(
      f"model.priors={priors!r} exists for image sizes "
      f"{sorted(by_size)}, not model.image_size={image_size}"
    )
  conv3_3_map = bool(cfg.get("conv3_3_map", False))
  if conv3_3_map and priors not in CONV3_3_PRIORS:
    raise ValueError(
      f"model.priors={priors!r} has no boxes for conv3_3; model.conv3_3_map "
      f"takes model.priors {' or '.join(map(repr, CONV3_3_PRIORS))}"
    )
  stem = cfg.get("stem", "vgg")
  if stem not in STEMS:
    raise ValueError(f"model.stem must be one of {STEMS}; got {stem!r}")
  if stem == "space_to_depth" and int(image_size) % 2:
    raise ValueError(
      "model.stem='space_to_depth' folds 2x2 pixel blocks and needs an even "
      f"model.image_size; got {image_size}"
    )
  prior_config = by_size and by_size[int(image_size)]
  if priors == "fitted":
    prior_config = _fitted_prior_config(cfg, int(image_size), conv3_3_map)
  return SSD(
    num_classes=num_classes,
    cpu_fast_ops=_cpu_fast_ops(cfg),
    image_size=int(image_size),
    width=float(cfg.get("width", 1.0)),
    batch_norm=bool(cfg.get("batch_norm", False)),
    conv3_3_map=conv3_3_map,
    stem=stem,
    dtype=_DTYPES[cfg.get("dtype", "float32")],
    param_dtype=_DTYPES[cfg.get("param_dtype", "float32")],
    prior_config=prior_config,
  )


def _cpu_fast_ops(cfg: dict) -> bool:
  """`model.cpu_fast_ops` resolved: "auto" is on for JAX's CPU backend."""
  fast = str(cfg.get("cpu_fast_ops", "auto")).lower()
  if fast not in ("true", "false", "auto"):
    raise ValueError(
      "model.cpu_fast_ops must be 'auto', 'true' or 'false'; got "
      f"{cfg['cpu_fast_ops']!r}"
    )
  return jax.default_backend() == "cpu" if fast == "auto" else fast == "true"


def _fitted_prior_config(
  cfg: dict, image_size: int, conv3_3_map: bool
) -> PriorConfig:
  """`default_prior_config` with the config's fitted sizes (priors="fitted").

  Raises:
    ValueError: naming `model.prior_min_sizes` / `model.prior_max_sizes`
      when they are unset or not one positive size per map.
  """
  base = default_prior_config(image_size, conv3_3_map)
  mins = tuple(float(s) for s in cfg.get("prior_min_sizes") or ())
  maxs = tuple(float(s) for s in cfg.get("prior_max_sizes") or ())
  n = len(base.feature_sizes)
  if not mins and not maxs:
    raise ValueError(
      "model.priors='fitted' needs model.prior_min_sizes and "
      "model.prior_max_sizes: training fits them to the data and stores them "
      "in <workdir>/default_boxes.json (train.fit_priors); evaluate with the "
      "training --workdir, or set them"
    )
  if len(mins) != n or len(maxs) != n:
    raise ValueError(
      f"model.prior_min_sizes and model.prior_max_sizes need one size per "
      f"map ({n} maps at model.image_size={image_size}); got {len(mins)} "
      f"and {len(maxs)}"
    )
  if not all(0 < lo <= hi for lo, hi in zip(mins, maxs, strict=True)):
    raise ValueError(
      "model.prior_min_sizes must be > 0 and <= model.prior_max_sizes; got "
      f"{mins} and {maxs}"
    )
  return base._replace(min_sizes=mins, max_sizes=maxs)


def _zoo_model(backbone: str, cfg: dict, num_classes: int) -> Any:
  """The BatchNorm models of the zoo (`from_config`'s other backbones)."""
  # Imported here: the zoo modules import this one's helpers.
  if backbone == "resnet50":
    from ssd_jax.models.ssd_resnet50 import SSD300ResNet50 as cls

    default_size = 300
  else:
    from ssd_jax.models.ssdlite import SSDLite320 as cls

    default_size = 320
  if cfg.get("priors", "default") != "default":
    raise ValueError(
      f"model.priors={cfg['priors']!r}: the {backbone} model brings its own "
      "default boxes; leave model.priors at 'default'"
    )
  if cfg.get("batch_norm"):
    raise ValueError(
      f"model.batch_norm adds BatchNorm to the VGG models; the {backbone} "
      "model has its own: leave model.batch_norm at False"
    )
  if cfg.get("conv3_3_map"):
    raise ValueError(
      f"model.conv3_3_map adds a VGG map; the {backbone} model has its own "
      "maps: leave model.conv3_3_map at False"
    )
  if cfg.get("stem", "vgg") != "vgg":
    raise ValueError(
      f"model.stem={cfg['stem']!r} changes VGG16's first stage; the "
      f"{backbone} model has its own: leave model.stem at 'vgg'"
    )
  extra = {}
  if backbone == "mobilenet_v3_large":
    extra["reduced_tail"] = bool(cfg.get("reduced_tail", True))
  return cls(
    num_classes=num_classes,
    image_size=int(cfg.get("image_size") or default_size),
    width=float(cfg.get("width", 1.0)),
    dtype=_DTYPES[cfg.get("dtype", "float32")],
    param_dtype=_DTYPES[cfg.get("param_dtype", "float32")],
    cpu_fast_ops=_cpu_fast_ops(cfg),
    **extra,
  )
