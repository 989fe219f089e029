"""End-to-end detection as one pure JAX function: uint8 pixels to boxes.

`detect(model, variables, images, settings)` resizes and normalises uint8
images exactly as evaluation does (`preprocess`, the eval pipeline's
`pipeline.eval_inputs` written in jnp), runs the network and the softmax
(`predict`, also the evaluator's forward), decodes and runs the on-device
per-class NMS (`device_postprocess.decode_detections_device`), and returns
boxes in the input images' pixels. It is jit-able with the model and the
settings static (both hashable) and is what `ssd_jax.export` serialises.

Box frame: continuous pixel corners (x_min, y_min, x_max, y_max) of the
given images, pixel i covering [i, i + 1): the network's normalised boxes
times (W, H, W, H) (`data.image.normalized_to_pixels`, COCO's convention).
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssd_jax import default_boxes as db
from ssd_jax import device_postprocess
from ssd_jax.boxes import DEFAULT_VARIANCES
from ssd_jax.data import image as image_lib
from ssd_jax.models import variables as model_vars


def predict(
  model: Any, params: Any, images: jax.Array, flip: bool = False
) -> tuple[jax.Array, jax.Array]:
  """Network forward and softmax, optionally averaged with the mirror image.

  With `flip`, the images and their horizontal mirrors run as one batch;
  the mirror's outputs for prior `m[p]` (`default_boxes.mirror_permutation`)
  describe prior p of the original (with the centre offset's sign turned),
  and each prior's offsets and probabilities are the mean of the two.
  Test-time mirroring of a model trained with mirrored images: +0.007 to
  +0.017 mAP@0.5 on four trained models of three held-out VOC-format sets
  (README, "Train on your own data").

  Args:
    model: the flax module (hashable: equal modules are equal values, so it
      can be a static argument of `jax.jit`).
    params: model parameters, or the model's variables ({"params",
      "batch_stats"}) for a BatchNorm model (`models.as_variables`).
    images: [B, H, W, 3] float32 normalised images.
    flip: average with the mirrored images (static).

  Returns:
    loc: [B, P, 4] float32 offsets; probs: [B, P, C] float32 class
    probabilities (column 0 background).

  Raises:
    ValueError: with `flip`, when the model's default boxes are not
      mirror-symmetric.
  """
  variables = model_vars.as_variables(params)
  if flip:
    perm = _mirror_permutation(model)
    images = jnp.concatenate([images, images[:, :, ::-1]], axis=0)
  loc, logits = model.apply(variables, images)
  loc = loc.astype(jnp.float32)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  if flip:
    n = loc.shape[0] // 2
    turned = jnp.asarray([-1.0, 1.0, 1.0, 1.0], jnp.float32)
    loc = 0.5 * (loc[:n] + loc[n:, perm] * turned)
    probs = 0.5 * (probs[:n] + probs[n:, perm])
  return loc, probs


@functools.lru_cache(maxsize=32)
def _mirror_permutation(model: Any) -> np.ndarray:
  """The model's `default_boxes.mirror_permutation` (once per model value)."""
  return db.mirror_permutation(np.asarray(model.priors()))


# One compiled predict per (model value, flip, input shape), shared by every
# Evaluator: equal modules hash equal, so a new but equal model object reuses
# the compile.
predict_jit = jax.jit(predict, static_argnums=(0, 3))


class DetectSettings(NamedTuple):
  """The decoding settings of `detect` (hashable: a static jit argument).

  Attributes:
    score_threshold: a class score must be strictly above this.
    nms_threshold: per-class NMS IoU threshold.
    top_k_per_class: at most this many boxes per class enter NMS (None: no
      cap).
    max_detections: K, the detection rows per image (None: every candidate,
      (C-1) top_k_per_class rows).
    variances: SSD encoding variances (centre, size).
    flip: average the outputs with the mirrored image's (`predict`).
  """

  score_threshold: float = 0.01
  nms_threshold: float = 0.45
  top_k_per_class: int | None = 400
  max_detections: int | None = 200
  variances: tuple[float, float] = DEFAULT_VARIANCES
  flip: bool = False

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "DetectSettings":
    """The settings evaluation uses: `config.eval` and `config.variances`."""
    ecfg = config.eval
    cap = lambda v: None if v is None else int(v)  # None: no cap
    return cls(
      score_threshold=float(ecfg.score_threshold),
      nms_threshold=float(ecfg.nms_threshold),
      top_k_per_class=cap(ecfg.top_k_per_class),
      max_detections=cap(ecfg.max_detections),
      variances=tuple(float(v) for v in config.variances),
      flip=bool(ecfg.get("flip", False)),
    )


def check_images(images: Any) -> None:
  """Raises unless `images` is a non-empty uint8 [N, H, W, 3] batch.

  Checks the static dtype and shape only, so it also fires while tracing
  under `jax.jit` or `jax.export` (a symbolic dimension passes).

  Args:
    images: an array (numpy, jax or a tracer).

  Raises:
    ValueError: naming the received shape and dtype, for a dtype other than
      uint8, a rank other than 4, a channel count other than 3, an empty
      batch (N = 0), or H or W = 0.
  """
  shape, dtype = tuple(np.shape(images)), np.dtype(images.dtype)
  got = f"got shape {shape} dtype {dtype}"
  if dtype != np.uint8:
    raise ValueError(f"detect: images must be uint8 RGB pixels, {got}")
  if len(shape) != 4:
    raise ValueError(f"detect: images must be [N, H, W, 3] (rank 4), {got}")
  if shape[3] != 3:
    raise ValueError(f"detect: images must have 3 RGB channels, {got}")
  if shape[0] == 0:
    raise ValueError(f"detect: images is an empty batch (N = 0), {got}")
  if shape[1] == 0 or shape[2] == 0:
    raise ValueError(f"detect: images have no pixels (H or W = 0), {got}")


def _sample_axis(source, out: int):
  """Where output pixels of one axis sample the source, as TF computes it.

  The full-window case of `augment._sample_points` followed by
  `tf.image.crop_and_resize`'s coordinate arithmetic (float32, term for
  term): the source is read with a one-pixel replicated border, so the
  padded coordinate k is source pixel clip(k - 1, 0, source - 1).

  Args:
    source: the source side (an int, or a symbolic dimension).
    out: the output side.

  Returns:
    (low [out] int32, high [out] int32 source indices, lerp [out] float32
    weight of `high`).
  """
  src = jnp.asarray(source, jnp.float32)
  half = jnp.float32(0.5 / out)
  first = src * half - jnp.float32(0.5)  # window (0, 1): lo = 0, span = src
  last = src * jnp.float32(1.0 - 0.5 / out) - jnp.float32(0.5)
  if out == 1:
    last = first
  c0 = (first + 1.0) / (src + 1.0)
  c1 = (last + 1.0) / (src + 1.0)
  padded_last = src + 1.0  # crop_and_resize's (image_height - 1)
  if out > 1:
    scale = (c1 - c0) * padded_last / jnp.float32(out - 1)
    at = c0 * padded_last + jnp.arange(out, dtype=jnp.float32) * scale
  else:
    at = jnp.full((1,), (0.5 * (c0 + c1)) * padded_last, jnp.float32)
  low, high = jnp.floor(at), jnp.ceil(at)  # [out]
  to_source = lambda k: jnp.clip(k.astype(jnp.int32) - 1, 0, source - 1)
  return to_source(low), to_source(high), at - low


def preprocess(
  images_uint8: jax.Array, image_size: int, normalization: str
) -> jax.Array:
  """The evaluation preprocessing of a batch, in jnp (resize, normalise).

  The pixels `pipeline.eval_inputs` (TensorFlow) gives each image:
  bilinear resampling with pixel-centre alignment and replicated edges
  (`augment.render` of the full window, `tf.image.crop_and_resize`'s
  float32 arithmetic term for term), the caffe mean subtracted, then
  `renormalize_from_caffe` for the model's normalisation. Eagerly the
  result is TensorFlow's bit for bit on most pixels; under jit XLA fuses the
  interpolation into fused multiply-adds, so pixels differ by float32
  rounding (at most ~0.02 of a 0..255 level, tests/test_detect.py).
  Height and width may be symbolic (`jax.export`).

  Args:
    images_uint8: [N, H, W, 3] uint8 RGB, one size for the batch.
    image_size: S, the model input side.
    normalization: the model's (`ssd_jax.data.image.NORMALIZATIONS`).

  Returns:
    [N, S, S, 3] float32 normalised network input.

  Raises:
    ValueError: for bad images (`check_images`) or an unknown
      normalisation.
  """
  check_images(images_uint8)
  image_lib.normalization(normalization)  # Raises for an unknown kind.
  _, height, width, _ = images_uint8.shape
  y_low, y_high, y_lerp = _sample_axis(height, image_size)  # [S]
  x_low, x_high, x_lerp = _sample_axis(width, image_size)  # [S]
  pixels = jnp.asarray(images_uint8).astype(jnp.float32)  # [N, H, W, 3]
  top_rows, bottom_rows = pixels[:, y_low], pixels[:, y_high]  # [N, S, W, 3]
  x_lerp = x_lerp[:, None]  # [S, 1]

  def across(rows):  # [N, S, W, 3] -> [N, S, S, 3]
    left, right = rows[:, :, x_low], rows[:, :, x_high]
    return left + (right - left) * x_lerp

  top, bottom = across(top_rows), across(bottom_rows)
  resized = top + (bottom - top) * y_lerp[:, None, None]  # [N, S, S, 3]
  caffe = resized - jnp.asarray(image_lib.MEAN_RGB, jnp.float32)
  return image_lib.renormalize_from_caffe(caffe, normalization)


def detect_normalized(
  model: Any, variables: Any, images: jax.Array, settings: DetectSettings
) -> device_postprocess.DeviceDetections:
  """Forward, softmax and on-device NMS of preprocessed images.

  Args:
    model: the flax module (hashable; static under jit).
    variables: parameters, or {"params", "batch_stats"} for a BatchNorm
      model.
    images: [B, S, S, 3] float32 normalised (`preprocess`, or the eval
      pipeline's batches).
    settings: the decoding settings (static under jit).

  Returns:
    `DeviceDetections` with boxes normalised to [0, 1] of the network input.
  """
  loc, probs = predict(model, variables, images, settings.flip)
  return device_postprocess.decode_detections_device(
    loc,
    probs,
    jnp.asarray(model.priors(), jnp.float32),
    score_threshold=settings.score_threshold,
    nms_threshold=settings.nms_threshold,
    top_k_per_class=settings.top_k_per_class,
    max_detections=settings.max_detections,
    variances=settings.variances,
  )


# One compile per (model value, settings, input shape), shared by every
# Evaluator with config.eval.nms = "device".
detect_normalized_jit = jax.jit(detect_normalized, static_argnums=(0, 3))


def detect(
  model: Any,
  variables: Any,
  images_uint8: jax.Array,
  settings: DetectSettings,
) -> device_postprocess.DeviceDetections:
  """Detections of uint8 images, boxes in input pixels.

  `preprocess` -> the model -> softmax -> `decode_detections_device`; pure
  and jit-able with `model` and `settings` static.

  Args:
    model: the SSD module (`apply`, `priors()`, `image_size`, and its
      `normalization`).
    variables: parameters, or {"params", "batch_stats"} for a BatchNorm
      model.
    images_uint8: [N, H, W, 3] uint8 RGB, one size for the batch.
    settings: the decoding settings (`DetectSettings.from_config`).

  Returns:
    `DeviceDetections`: boxes [N, K, 4] float32 continuous pixel corners
    (x_min, y_min, x_max, y_max) of the input images, in [0, W] x [0, H];
    scores [N, K]; labels [N, K] int32 (0 in padding rows); num_detections
    [N] int32. K = settings.max_detections; padding rows are zero.

  Raises:
    ValueError: for bad images (`check_images`).
  """
  check_images(images_uint8)
  _, height, width, _ = images_uint8.shape
  images = preprocess(
    images_uint8, model.image_size, model_vars.normalization_of(model)
  )
  dets = detect_normalized(model, variables, images, settings)
  scale = jnp.asarray([width, height, width, height], jnp.float32)  # [4]
  return dets._replace(boxes=dets.boxes * scale)
