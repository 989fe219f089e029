"""Box arithmetic: format conversion, area, IoU, SSD encode/decode.

One box format is the contract everywhere in ssd_jax: boxes are float32
corners `(x_min, y_min, x_max, y_max)` normalised to [0, 1] of the network
input. Default boxes (priors) are the one exception: they are centre form
`(cx, cy, w, h)`, as SSD defines them.

One implementation for every array library (scenic's `box_utils` way): each
function takes the array module as `xp`, `jax.numpy` by default (pure,
jit/vmap/grad-safe, returns `jax.Array`). Host code passes `xp=numpy` and
gets numpy arrays in the dtype it gave (float64 for NMS and VOC AP);
TensorFlow graphs (the tf.data augmentation) pass
`xp=tensorflow.experimental.numpy` and get `tf.Tensor`s. Only array-module
functions shared by all three are used: `asarray`, `maximum`, `minimum`,
`where`, `concatenate`, `exp`, `log`, `finfo`, and indexing with `None`.

Shapes are checked on the static shape (`_check_boxes`, `_check_broadcast`):
a wrong last axis, rank or batch shape is a ValueError naming the function
and the argument, never a silent result of the wrong columns (an unknown
TensorFlow graph dimension passes). Arithmetic is in the inputs' dtype, so
results are finite for boxes whose areas are finite in it (all of [0, 1]
and any pixel box in float32; float16 pixel boxes overflow from 256 px).
"""

import math
from collections.abc import Sequence
from types import ModuleType

import jax.numpy as jnp
import numpy as np

Variances = Sequence[float]
DEFAULT_VARIANCES = (0.1, 0.2)
# Largest log size ratio `decode` will apply (torchvision's bound): keeps an
# untrained network's wild offsets from overflowing exp() to inf.
MAX_LOG_SCALE = math.log(1000.0 / 16)


def _static_shape(array) -> tuple | None:
  """The static shape as a tuple (None for an unknown TensorFlow dim or
  rank: a graph tensor's shape may be partly unknown when traced)."""
  try:
    return tuple(array.shape)
  except ValueError:  # TensorShape of unknown rank.
    return None


def _check_boxes(fn: str, name: str, array, spec: str = "[..., 4]") -> None:
  """Raises unless `array` is `spec`: "[..., 4]" (rank >= 1) or "[N, 4]".

  Args:
    fn: the public function, named in the error.
    name: the argument, named in the error.
    array: an array of the function's array module.
    spec: "[..., 4]" for any leading axes, or a rank-2 spec such as
      "[N, 4]" or "[P, 4]".

  Raises:
    ValueError: "fn: name must be SPEC, got shape (...)".
  """
  shape = _static_shape(array)
  if shape is None:
    return
  any_rank = spec.startswith("[...")
  if (
    not shape
    or shape[-1] not in (4, None)
    or (not any_rank and len(shape) != 2)
  ):
    raise ValueError(f"{fn}: {name} must be {spec}, got shape {shape}")


def _check_broadcast(fn: str, names: tuple[str, str], a, b) -> None:
  """Raises unless the leading axes of `a` and `b` broadcast together.

  Raises:
    ValueError: naming `fn`, both arguments and their shapes.
  """
  shape_a, shape_b = _static_shape(a), _static_shape(b)
  if shape_a is None or shape_b is None:
    return
  # Unknown (None) and symbolic (jax.export) sizes are taken as 1: only the
  # concrete ones are checked.
  known = lambda s: tuple(d if isinstance(d, int) else 1 for d in s[:-1])
  try:
    np.broadcast_shapes(known(shape_a), known(shape_b))
  except ValueError:
    raise ValueError(
      f"{fn}: the leading axes of {names[0]} {shape_a} and {names[1]} "
      f"{shape_b} do not broadcast together"
    ) from None


def _check_variances(fn: str, variances) -> tuple:
  """`variances` as a 2-tuple (centre, size), else a ValueError."""
  try:
    v0, v1 = variances
  except (TypeError, ValueError):
    raise ValueError(
      f"{fn}: variances must be two numbers (centre, size), got {variances!r}"
    ) from None
  return v0, v1


def center_to_corners(boxes, *, xp: ModuleType = jnp):
  """Centre form to corners.

  Args:
    boxes: [..., 4] `(cx, cy, w, h)`.
    xp: array module (`jax.numpy`, `numpy`, `tf.experimental.numpy`).

  Returns:
    [..., 4] `(x_min, y_min, x_max, y_max)`.

  Raises:
    ValueError: if `boxes` does not end in an axis of 4.
  """
  boxes = xp.asarray(boxes)
  _check_boxes("center_to_corners", "boxes", boxes)
  half = boxes[..., 2:] / 2  # [..., 2]
  return xp.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], -1)


def corners_to_center(boxes, *, xp: ModuleType = jnp):
  """Corners to centre form.

  Args:
    boxes: [..., 4] `(x_min, y_min, x_max, y_max)`.
    xp: array module.

  Returns:
    [..., 4] `(cx, cy, w, h)`.

  Raises:
    ValueError: if `boxes` does not end in an axis of 4.
  """
  boxes = xp.asarray(boxes)
  _check_boxes("corners_to_center", "boxes", boxes)
  return xp.concatenate(
    [(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]],
    -1,
  )


def box_area(boxes, *, inclusive: bool = False, xp: ModuleType = jnp):
  """Area of corner boxes; inverted boxes (x_max < x_min) have area 0.

  Args:
    boxes: [..., 4] corners.
    inclusive: the VOC devkit's inclusive pixel convention, width
      `x_max - x_min + 1` (boxes in 1-based pixel indices); False: continuous
      corners, width `x_max - x_min`.
    xp: array module.

  Returns:
    [...] areas, >= 0.

  Raises:
    ValueError: if `boxes` does not end in an axis of 4.
  """
  boxes = xp.asarray(boxes)
  _check_boxes("box_area", "boxes", boxes)
  w = boxes[..., 2] - boxes[..., 0]  # [...]
  h = boxes[..., 3] - boxes[..., 1]  # [...]
  if inclusive:
    w, h = w + 1.0, h + 1.0
  return xp.maximum(w, 0.0) * xp.maximum(h, 0.0)


def elementwise_iou(
  boxes1, boxes2, *, inclusive: bool = False, xp: ModuleType = jnp
):
  """Intersection over union of aligned (broadcasting) pairs of boxes.

  THE IoU of ssd_jax: `pairwise_iou`, NMS, VOC AP and the augmentation's
  crop sampler all use it (the default-box fit its formula,
  `iou_from_overlaps`). `inter / (area1 + area2 - inter)` with areas as
  `box_area`; where the intersection is empty the IoU is 0, so zero-area,
  inverted and padded boxes give 0 with everything, never NaN (nor a NaN
  gradient: the division is guarded on both branches of the `where`).

  Args:
    boxes1: [..., 4] corners.
    boxes2: [..., 4] corners, broadcasting against `boxes1`.
    inclusive: the VOC devkit's "+1 pixel" convention (`box_area`): with it
      this is the devkit's `VOCevaldet.m` overlap, term for term.
    xp: array module.

  Returns:
    [...] IoU in [0, 1], the broadcast shape without the last axis.

  Raises:
    ValueError: if a box array does not end in an axis of 4, or their
      leading axes do not broadcast.
  """
  boxes1 = xp.asarray(boxes1)
  boxes2 = xp.asarray(boxes2)
  _check_boxes("elementwise_iou", "boxes1", boxes1)
  _check_boxes("elementwise_iou", "boxes2", boxes2)
  _check_broadcast("elementwise_iou", ("boxes1", "boxes2"), boxes1, boxes2)
  # Coordinate by coordinate: no [..., 2] intermediates (3x faster in numpy).
  iw = interval_overlap(
    boxes1[..., 0], boxes1[..., 2], boxes2[..., 0], boxes2[..., 2], xp=xp
  )  # [...]
  ih = interval_overlap(
    boxes1[..., 1], boxes1[..., 3], boxes2[..., 1], boxes2[..., 3], xp=xp
  )  # [...]
  if inclusive:
    iw, ih = iw + 1.0, ih + 1.0
  return iou_from_overlaps(
    iw,
    ih,
    box_area(boxes1, inclusive=inclusive, xp=xp),
    box_area(boxes2, inclusive=inclusive, xp=xp),
    xp=xp,
  )


def interval_overlap(lo1, hi1, lo2, hi2, *, xp: ModuleType = jnp):
  """`min(hi1, hi2) - max(lo1, lo2)`: the length two intervals share along
  one axis, negative when they are apart (`elementwise_iou`'s `iw`, `ih`).

  Args:
    lo1, hi1: [...] the first intervals' ends (x_min, x_max or y_min, y_max).
    lo2, hi2: [...] the second intervals'; all four broadcast.
    xp: array module.

  Returns:
    [...] the overlap, the broadcast shape.
  """
  return xp.minimum(hi1, hi2) - xp.maximum(lo1, lo2)


def iou_from_overlaps(iw, ih, area1, area2, *, xp: ModuleType = jnp):
  """The IoU of `elementwise_iou` from the boxes' overlaps along each axis.

  For callers that know the overlaps of many pairs without forming the
  pairs (`default_boxes` scores a box against a grid of priors from the
  box's overlap with each column [.., X, 1] and each row [.., 1, Y]): the
  same numbers, bit for bit, as `elementwise_iou` of the pairs.

  Args:
    iw: [...] `interval_overlap` of each pair along x (negative: apart).
    ih: [...] the same along y; broadcasts against `iw`.
    area1: [...] `box_area` of the first boxes; broadcasts.
    area2: [...] `box_area` of the second boxes; broadcasts.
    xp: array module.

  Returns:
    [...] IoU in [0, 1], the broadcast shape; 0 where the boxes do not
    overlap (never NaN).
  """
  inter = xp.maximum(iw, 0.0) * xp.maximum(ih, 0.0)  # [...]
  union = area1 + area2 - inter  # [...]
  overlap = inter > 0
  return xp.where(overlap, inter / xp.where(overlap, union, 1.0), 0.0)


def pairwise_iou(
  boxes1, boxes2, *, inclusive: bool = False, xp: ModuleType = jnp
):
  """Intersection over union of every pair of boxes.

  Zero-area and inverted boxes give IoU 0 with everything (never NaN), so
  padded rows are harmless. N or M may be 0. Areas below float32's smallest
  normal number (~1e-38) are flushed to zero by XLA and count as zero area.

  Args:
    boxes1: [N, 4] corners.
    boxes2: [M, 4] corners.
    inclusive: the VOC devkit's "+1 pixel" convention (`elementwise_iou`).
    xp: array module (default `jax.numpy`: returns a `jax.Array`).

  Returns:
    [N, M] IoU in [0, 1].

  Raises:
    ValueError: if a box array is not [N, 4] / [M, 4].
  """
  boxes1 = xp.asarray(boxes1)
  boxes2 = xp.asarray(boxes2)
  _check_boxes("pairwise_iou", "boxes1", boxes1, "[N, 4]")
  _check_boxes("pairwise_iou", "boxes2", boxes2, "[M, 4]")
  return elementwise_iou(
    boxes1[:, None, :], boxes2[None, :, :], inclusive=inclusive, xp=xp
  )  # [N, M]


def encode(
  boxes,
  priors,
  variances: Variances = DEFAULT_VARIANCES,
  *,
  xp: ModuleType = jnp,
):
  """SSD regression targets of boxes relative to their priors.

  `((cx - pcx) / (pw v0), (cy - pcy) / (ph v0), log(w / pw) / v1,
  log(h / ph) / v1)`. Degenerate boxes (w or h 0) are clamped to a tiny
  size (1e-8; float16: its smallest normal number) so the log stays finite;
  such boxes never match a prior anyway.

  Args:
    boxes: [P, 4] corners, one box per prior.
    priors: [P, 4] centre form `(cx, cy, w, h)`, w and h > 0.
    variances: `(centre variance, size variance)`.
    xp: array module.

  Returns:
    [P, 4] offsets `(dcx, dcy, dw, dh)`.

  Raises:
    ValueError: if `boxes` is not [..., 4], `priors` not [P, 4], their
      leading axes do not broadcast, or `variances` is not two numbers.
  """
  boxes = xp.asarray(boxes)
  priors = xp.asarray(priors)
  _check_boxes("encode", "boxes", boxes)
  _check_boxes("encode", "priors", priors, "[P, 4]")
  _check_broadcast("encode", ("boxes", "priors"), boxes, priors)
  v0, v1 = _check_variances("encode", variances)
  centre = corners_to_center(boxes, xp=xp)  # [P, 4]
  dxy = (centre[..., :2] - priors[..., :2]) / (priors[..., 2:] * v0)
  # 1e-8, or the dtype's smallest normal number where 1e-8 is not one (it
  # is 0 in float16, and log(0) = -inf).
  tiny = max(1e-8, float(xp.finfo(centre.dtype).tiny))
  wh = xp.maximum(centre[..., 2:], tiny)
  dwh = xp.log(wh / priors[..., 2:]) / v1
  return xp.concatenate([dxy, dwh], -1)


def decode(
  deltas,
  priors,
  variances: Variances = DEFAULT_VARIANCES,
  *,
  xp: ModuleType = jnp,
):
  """Inverse of `encode`: offsets and priors to corner boxes.

  The size offsets are clamped so that a box is at most
  `exp(MAX_LOG_SCALE)` (62.5) times its prior, which keeps the output finite
  for any finite input. With `xp=numpy` the result has the inputs' dtype
  (float32 inputs give the same float32 values as the jnp path).

  Args:
    deltas: [..., P, 4] offsets `(dcx, dcy, dw, dh)`.
    priors: [P, 4] centre form.
    variances: `(centre variance, size variance)`, Python floats.
    xp: array module.

  Returns:
    [..., P, 4] corners.

  Raises:
    ValueError: if `deltas` is not [..., 4], `priors` not [P, 4], their
      leading axes do not broadcast, or `variances` is not two numbers.
  """
  deltas = xp.asarray(deltas)
  priors = xp.asarray(priors)
  _check_boxes("decode", "deltas", deltas)
  _check_boxes("decode", "priors", priors, "[P, 4]")
  _check_broadcast("decode", ("deltas", "priors"), deltas, priors)
  v0, v1 = _check_variances("decode", variances)
  cxcy = priors[..., :2] + deltas[..., :2] * v0 * priors[..., 2:]
  log_scale = xp.minimum(deltas[..., 2:] * v1, MAX_LOG_SCALE)
  half = priors[..., 2:] * xp.exp(log_scale) / 2  # [..., P, 2]
  return xp.concatenate([cxcy - half, cxcy + half], -1)
