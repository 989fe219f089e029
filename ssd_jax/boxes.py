"""Box arithmetic: format conversion, area, pairwise IoU, SSD encode/decode.

One box format is the contract everywhere in ssd_jax: boxes are float32
corners `(x_min, y_min, x_max, y_max)` normalised to [0, 1] of the network
input. Default boxes (priors) are the one exception: they are centre form
`(cx, cy, w, h)`, as SSD defines them. Every function here is pure, works on
`jax.Array` or numpy input, and returns `jax.Array`.
"""

import math
from collections.abc import Sequence

import jax.numpy as jnp

Variances = Sequence[float]
DEFAULT_VARIANCES = (0.1, 0.2)
# Largest log size ratio `decode` will apply (torchvision's bound): keeps an
# untrained network's wild offsets from overflowing exp() to inf.
MAX_LOG_SCALE = math.log(1000.0 / 16)


def center_to_corners(boxes: jnp.ndarray) -> jnp.ndarray:
  """Centre form to corners.

  Args:
    boxes: [..., 4] `(cx, cy, w, h)`.

  Returns:
    [..., 4] `(x_min, y_min, x_max, y_max)`.
  """
  boxes = jnp.asarray(boxes)
  half = boxes[..., 2:] / 2  # [..., 2]
  return jnp.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], -1)


def corners_to_center(boxes: jnp.ndarray) -> jnp.ndarray:
  """Corners to centre form.

  Args:
    boxes: [..., 4] `(x_min, y_min, x_max, y_max)`.

  Returns:
    [..., 4] `(cx, cy, w, h)`.
  """
  boxes = jnp.asarray(boxes)
  return jnp.concatenate(
    [(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]],
    -1,
  )


def box_area(boxes: jnp.ndarray) -> jnp.ndarray:
  """Area of corner boxes; inverted boxes (x_max < x_min) have area 0.

  Args:
    boxes: [..., 4] corners.

  Returns:
    [...] areas, >= 0.
  """
  boxes = jnp.asarray(boxes)
  wh = jnp.maximum(boxes[..., 2:] - boxes[..., :2], 0.0)  # [..., 2]
  return wh[..., 0] * wh[..., 1]


def pairwise_iou(boxes1: jnp.ndarray, boxes2: jnp.ndarray) -> jnp.ndarray:
  """Intersection over union of every pair of boxes.

  Zero-area and inverted boxes give IoU 0 with everything (never NaN), so
  padded rows are harmless. N or M may be 0.

  Args:
    boxes1: [N, 4] corners.
    boxes2: [M, 4] corners.

  Returns:
    [N, M] float IoU in [0, 1].
  """
  boxes1 = jnp.asarray(boxes1)
  boxes2 = jnp.asarray(boxes2)
  lt = jnp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
  rb = jnp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
  wh = jnp.maximum(rb - lt, 0.0)  # [N, M, 2]
  inter = wh[..., 0] * wh[..., 1]  # [N, M]
  union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
  # Guard the division so that neither branch can produce NaN (or a NaN
  # gradient through jnp.where).
  safe_union = jnp.where(inter > 0, union, 1.0)
  return jnp.where(inter > 0, inter / safe_union, 0.0)


def encode(
  boxes: jnp.ndarray,
  priors: jnp.ndarray,
  variances: Variances = DEFAULT_VARIANCES,
) -> jnp.ndarray:
  """SSD regression targets of boxes relative to their priors.

  `((cx - pcx) / (pw v0), (cy - pcy) / (ph v0), log(w / pw) / v1,
  log(h / ph) / v1)`. Degenerate boxes (w or h 0) are clamped to a tiny
  size so the log stays finite; such boxes never match a prior anyway.

  Args:
    boxes: [P, 4] corners, one box per prior.
    priors: [P, 4] centre form `(cx, cy, w, h)`, w and h > 0.
    variances: `(centre variance, size variance)`.

  Returns:
    [P, 4] offsets `(dcx, dcy, dw, dh)`.
  """
  centre = corners_to_center(boxes)  # [P, 4]
  priors = jnp.asarray(priors)
  v0, v1 = variances
  dxy = (centre[..., :2] - priors[..., :2]) / (priors[..., 2:] * v0)
  wh = jnp.maximum(centre[..., 2:], 1e-8)
  dwh = jnp.log(wh / priors[..., 2:]) / v1
  return jnp.concatenate([dxy, dwh], -1)


def decode(
  deltas: jnp.ndarray,
  priors: jnp.ndarray,
  variances: Variances = DEFAULT_VARIANCES,
) -> jnp.ndarray:
  """Inverse of `encode`: offsets and priors to corner boxes.

  The size offsets are clamped so that a box is at most
  `exp(MAX_LOG_SCALE)` (62.5) times its prior, which keeps the output finite
  for any finite input.

  Args:
    deltas: [..., P, 4] offsets `(dcx, dcy, dw, dh)`.
    priors: [P, 4] centre form.
    variances: `(centre variance, size variance)`.

  Returns:
    [..., P, 4] corners.
  """
  deltas = jnp.asarray(deltas)
  priors = jnp.asarray(priors)
  v0, v1 = variances
  cxcy = priors[..., :2] + deltas[..., :2] * v0 * priors[..., 2:]
  log_scale = jnp.minimum(deltas[..., 2:] * v1, MAX_LOG_SCALE)
  wh = priors[..., 2:] * jnp.exp(log_scale)
  return center_to_corners(jnp.concatenate([cxcy, wh], -1))
