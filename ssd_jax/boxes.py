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
`where`, `concatenate`, `exp`, `log`, and indexing with `None`.
"""

import math
from collections.abc import Sequence
from types import ModuleType

import jax.numpy as jnp

Variances = Sequence[float]
DEFAULT_VARIANCES = (0.1, 0.2)
# Largest log size ratio `decode` will apply (torchvision's bound): keeps an
# untrained network's wild offsets from overflowing exp() to inf.
MAX_LOG_SCALE = math.log(1000.0 / 16)


def center_to_corners(boxes, *, xp: ModuleType = jnp):
  """Centre form to corners.

  Args:
    boxes: [..., 4] `(cx, cy, w, h)`.
    xp: array module (`jax.numpy`, `numpy`, `tf.experimental.numpy`).

  Returns:
    [..., 4] `(x_min, y_min, x_max, y_max)`.
  """
  boxes = xp.asarray(boxes)
  half = boxes[..., 2:] / 2  # [..., 2]
  return xp.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], -1)


def corners_to_center(boxes, *, xp: ModuleType = jnp):
  """Corners to centre form.

  Args:
    boxes: [..., 4] `(x_min, y_min, x_max, y_max)`.
    xp: array module.

  Returns:
    [..., 4] `(cx, cy, w, h)`.
  """
  boxes = xp.asarray(boxes)
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
  """
  boxes = xp.asarray(boxes)
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
  crop sampler all use it. `inter / (area1 + area2 - inter)` with areas as
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
  """
  boxes1 = xp.asarray(boxes1)
  boxes2 = xp.asarray(boxes2)
  # Coordinate by coordinate: no [..., 2] intermediates (3x faster in numpy).
  iw = xp.minimum(boxes1[..., 2], boxes2[..., 2]) - xp.maximum(
    boxes1[..., 0], boxes2[..., 0]
  )  # [...]
  ih = xp.minimum(boxes1[..., 3], boxes2[..., 3]) - xp.maximum(
    boxes1[..., 1], boxes2[..., 1]
  )  # [...]
  if inclusive:
    iw, ih = iw + 1.0, ih + 1.0
  inter = xp.maximum(iw, 0.0) * xp.maximum(ih, 0.0)  # [...]
  union = (
    box_area(boxes1, inclusive=inclusive, xp=xp)
    + box_area(boxes2, inclusive=inclusive, xp=xp)
    - inter
  )  # [...]
  overlap = inter > 0
  return xp.where(overlap, inter / xp.where(overlap, union, 1.0), 0.0)


def pairwise_iou(
  boxes1, boxes2, *, inclusive: bool = False, xp: ModuleType = jnp
):
  """Intersection over union of every pair of boxes.

  Zero-area and inverted boxes give IoU 0 with everything (never NaN), so
  padded rows are harmless. N or M may be 0.

  Args:
    boxes1: [N, 4] corners.
    boxes2: [M, 4] corners.
    inclusive: the VOC devkit's "+1 pixel" convention (`elementwise_iou`).
    xp: array module (default `jax.numpy`: returns a `jax.Array`).

  Returns:
    [N, M] IoU in [0, 1].
  """
  boxes1 = xp.asarray(boxes1)
  boxes2 = xp.asarray(boxes2)
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
  size so the log stays finite; such boxes never match a prior anyway.

  Args:
    boxes: [P, 4] corners, one box per prior.
    priors: [P, 4] centre form `(cx, cy, w, h)`, w and h > 0.
    variances: `(centre variance, size variance)`.
    xp: array module.

  Returns:
    [P, 4] offsets `(dcx, dcy, dw, dh)`.
  """
  centre = corners_to_center(boxes, xp=xp)  # [P, 4]
  priors = xp.asarray(priors)
  v0, v1 = variances
  dxy = (centre[..., :2] - priors[..., :2]) / (priors[..., 2:] * v0)
  wh = xp.maximum(centre[..., 2:], 1e-8)
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
  """
  deltas = xp.asarray(deltas)
  priors = xp.asarray(priors)
  v0, v1 = variances
  cxcy = priors[..., :2] + deltas[..., :2] * v0 * priors[..., 2:]
  log_scale = xp.minimum(deltas[..., 2:] * v1, MAX_LOG_SCALE)
  half = priors[..., 2:] * xp.exp(log_scale) / 2  # [..., P, 2]
  return xp.concatenate([cxcy - half, cxcy + half], -1)
