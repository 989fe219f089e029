"""Host-side SSD postprocessing: NMS and per-image detection decoding (numpy).

Everything here runs on the host in numpy, by design (DESIGN.md): the device
returns an image's `[P, 4]` offsets and `[P, C]` class probabilities and the
host turns them into at most `max_detections` boxes, as the SSD Caffe release's
`DetectionOutput` layer does:

1. decode the offsets against the priors (`ssd_jax.boxes.decode` semantics,
   including its clamp on the size offsets),
2. per class c in 1..C-1: keep priors whose score is strictly above
   `score_threshold`, then the `top_k_per_class` highest of them,
3. greedy NMS per class (a box is dropped when its IoU with a kept box of the
   same class is strictly above `nms_threshold`),
4. keep the `max_detections` highest-scoring survivors over all classes,
5. clip the kept boxes to [0, 1] (NMS sees the unclipped boxes, as in the
   release).

Ordering is deterministic: scores descending; equal scores go to the lower
class label, then to the lower prior (or input) index.

The per-class cap bounds the work on an untrained network (every score above
0.01): at most `top_k_per_class` boxes per class enter NMS, and the classes are
suppressed together in score order, stopping as soon as `max_detections`
boxes are kept, so an image costs at most `max_detections` NMS steps.
"""

import heapq
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ssd_jax.boxes import DEFAULT_VARIANCES, MAX_LOG_SCALE


class Detections(NamedTuple):
  """One image's detections, highest score first.

  Attributes:
    boxes: [K, 4] float32 corners (x_min, y_min, x_max, y_max) in [0, 1].
    scores: [K] float32 class probabilities.
    labels: [K] int32 class labels in 1..C-1 (0, background, never occurs).
  """

  boxes: np.ndarray
  scores: np.ndarray
  labels: np.ndarray


def empty_detections() -> Detections:
  """Detections with K = 0 (shapes [0, 4], [0], [0]; float32/int32)."""
  return Detections(
    np.zeros((0, 4), np.float32),
    np.zeros((0,), np.float32),
    np.zeros((0,), np.int32),
  )


def decode_boxes(
  deltas: np.ndarray,
  priors: np.ndarray,
  variances: Sequence[float] = DEFAULT_VARIANCES,
) -> np.ndarray:
  """Numpy twin of `ssd_jax.boxes.decode` (same clamp, float32).

  Args:
    deltas: [..., P, 4] offsets (dcx, dcy, dw, dh).
    priors: [P, 4] centre form (cx, cy, w, h).
    variances: (centre variance, size variance).

  Returns:
    [..., P, 4] float32 corners (not clipped).
  """
  deltas = np.asarray(deltas, np.float32)
  priors = np.asarray(priors, np.float32)
  v0, v1 = (np.float32(v) for v in variances)
  cxcy = priors[..., :2] + deltas[..., :2] * v0 * priors[..., 2:]  # [..., P, 2]
  log_scale = np.minimum(deltas[..., 2:] * v1, np.float32(MAX_LOG_SCALE))
  half = priors[..., 2:] * np.exp(log_scale) / np.float32(2)  # [..., P, 2]
  return np.concatenate([cxcy - half, cxcy + half], -1)


def _check_boxes_scores(fn: str, boxes: np.ndarray, scores: np.ndarray):
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"{fn}: boxes must be [K, 4], got shape {boxes.shape}")
  if scores.shape != (boxes.shape[0],):
    raise ValueError(
      f"{fn}: scores must be [K] with K = {boxes.shape[0]} (boxes), got "
      f"shape {scores.shape}"
    )


class _NmsState:
  """Greedy NMS over one set of boxes already sorted by score, descending.

  `step()` keeps the best remaining box and drops every remaining box whose
  IoU with it is strictly above the threshold. IoU is computed in float64 as
  inter / (area_a + area_b - inter) with areas max(w, 0) * max(h, 0), and is 0
  when the intersection is empty, so zero-area or inverted boxes never
  suppress anything and are never suppressed.
  """

  def __init__(self, boxes: np.ndarray, iou_threshold: float):
    boxes = np.asarray(boxes, np.float64)  # [K, 4]
    self.x1, self.y1, self.x2, self.y2 = (
      np.ascontiguousarray(boxes[:, i]) for i in range(4)
    )  # 4 x [K]
    self.areas = np.maximum(self.x2 - self.x1, 0.0) * np.maximum(
      self.y2 - self.y1, 0.0
    )  # [K]
    self.rest = np.arange(len(boxes))  # sorted positions not yet decided
    self.threshold = iou_threshold

  def step(self) -> int:
    """Keeps the best remaining box, suppresses its overlaps; returns it."""
    i = int(self.rest[0])
    rest = self.rest[1:]  # [n]
    if rest.size:
      iw = np.minimum(self.x2[i], self.x2[rest]) - np.maximum(
        self.x1[i], self.x1[rest]
      )  # [n]
      ih = np.minimum(self.y2[i], self.y2[rest]) - np.maximum(
        self.y1[i], self.y1[rest]
      )  # [n]
      inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)  # [n]
      union = self.areas[i] + self.areas[rest] - inter  # [n]
      overlap = inter > 0
      iou = np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)
      rest = rest[~(iou > self.threshold)]
    self.rest = rest
    return i


_NMS_BLOCK = 256  # boxes resolved together by `_greedy_keep`
_NMS_ROWS = 4096  # kept boxes compared with a block at once


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of every pair, float64, the same arithmetic as `_NmsState.step`.

  Args:
    a: [N, 4] float64 corners.
    b: [M, 4] float64 corners.

  Returns:
    [N, M] IoU; 0 where the intersection is empty.
  """
  iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(
    a[:, None, 0], b[None, :, 0]
  )  # [N, M]
  ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(
    a[:, None, 1], b[None, :, 1]
  )  # [N, M]
  inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)  # [N, M]
  area_a = np.maximum(a[:, 2] - a[:, 0], 0.0) * np.maximum(a[:, 3] - a[:, 1], 0)
  area_b = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0)
  union = area_a[:, None] + area_b[None, :] - inter  # [N, M]
  overlap = inter > 0
  return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def _greedy_keep(boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
  """Exact greedy NMS of boxes sorted by score, in blocks of matrices.

  Box j is kept iff no kept box i < j has IoU(i, j) > threshold. Per block:
  drop the boxes that an already kept box suppresses, then solve the
  recurrence inside the block by fixed-point iteration from "keep all"
  (after t rounds the first t boxes are final, so it terminates; the
  recurrence has one solution, so stopping at any fixed point is exact).
  Suppression chains are short in practice: a few matrix rounds replace one
  Python step per kept box.

  Args:
    boxes: [K, 4] float64 corners, sorted by score, descending.
    iou_threshold: suppress when IoU is strictly above this.

  Returns:
    [K] bool, True for kept boxes.
  """
  keep = np.zeros((len(boxes),), bool)
  for start in range(0, len(boxes), _NMS_BLOCK):
    block = boxes[start : start + _NMS_BLOCK]  # [n, 4]
    kept_before = boxes[:start][keep[:start]]  # [k, 4]
    hit = np.zeros((len(block),), bool)  # [n]
    for row in range(0, len(kept_before), _NMS_ROWS):  # bounded memory
      rows = kept_before[row : row + _NMS_ROWS]
      hit |= (_iou_matrix(rows, block) > iou_threshold).any(0)
    alive = np.flatnonzero(~hit)
    sub = block[alive]  # [m, 4]
    suppresses = np.triu(_iou_matrix(sub, sub) > iou_threshold, 1)  # [m, m]
    state = np.ones((len(sub),), bool)
    while True:
      new = ~(suppresses & state[:, None]).any(0)  # [m]
      if np.array_equal(new, state):
        break
      state = new
    keep[start + alive[state]] = True
  return keep


def nms(
  boxes: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> np.ndarray:
  """Greedy non-maximum suppression.

  Boxes are visited by score, highest first (equal scores: lower index
  first). A box is kept unless its IoU with an already kept box is strictly
  above `iou_threshold`. Zero-area and inverted boxes have IoU 0 with
  everything, so they are always kept. NaN scores sort last.

  Args:
    boxes: [K, 4] corners (x_min, y_min, x_max, y_max), any float dtype and
      scale (pixels or normalised). K may be 0.
    scores: [K] scores.
    iou_threshold: IoU above which the lower-scored box is dropped.

  Returns:
    [N] int64 indices into `boxes` of the kept boxes, highest score first.

  Raises:
    ValueError: if the shapes are not [K, 4] and [K].
  """
  boxes = np.asarray(boxes)
  scores = np.asarray(scores)
  _check_boxes_scores("nms", boxes, scores)
  order = np.argsort(-scores.astype(np.float64), kind="stable")  # [K]
  keep = _greedy_keep(boxes[order].astype(np.float64), iou_threshold)
  return order[keep].astype(np.int64)


def batched_nms(
  boxes: np.ndarray,
  scores: np.ndarray,
  classes: np.ndarray,
  iou_threshold: float,
) -> np.ndarray:
  """NMS run independently per class, in one call.

  Equal to running `nms` on each class's boxes separately and merging the
  kept indices by score (equal scores: lower index first). Boxes of
  different classes never suppress each other. Implemented by grouping per
  class (exact; the coordinate-offset trick can change IoUs by float
  rounding on large coordinates).

  Args:
    boxes: [K, 4] corners. K may be 0.
    scores: [K] scores.
    classes: [K] integer class ids (any values).
    iou_threshold: IoU above which the lower-scored box is dropped.

  Returns:
    [N] int64 indices into `boxes` of the kept boxes, highest score first.

  Raises:
    ValueError: if the shapes are not [K, 4], [K] and [K].
  """
  boxes = np.asarray(boxes)
  scores = np.asarray(scores)
  classes = np.asarray(classes)
  _check_boxes_scores("batched_nms", boxes, scores)
  if classes.shape != scores.shape:
    raise ValueError(
      f"batched_nms: classes must be [K] with K = {scores.shape[0]}, got "
      f"shape {classes.shape}"
    )
  kept = [np.zeros((0,), np.int64)]
  for c in np.unique(classes):
    members = np.flatnonzero(classes == c)  # [n_c], ascending
    kept.append(members[nms(boxes[members], scores[members], iou_threshold)])
  kept = np.concatenate(kept)
  # Score descending, ties by index: lexsort's last key is the primary one.
  return kept[np.lexsort((kept, -scores[kept].astype(np.float64)))]


def _top_candidates(
  class_scores: np.ndarray, score_threshold: float, top_k: int | None
) -> np.ndarray:
  """Priors of one class above the threshold, best `top_k`, sorted.

  Args:
    class_scores: [P] one class's scores.
    score_threshold: keep scores strictly above this.
    top_k: at most this many (None: no cap).

  Returns:
    [n] int64 prior indices, score descending, ties by lower index.
  """
  idx = np.flatnonzero(class_scores > score_threshold)  # [n], ascending
  values = class_scores[idx]
  if top_k is not None and idx.size > top_k:
    kth = idx.size - top_k
    cut = np.partition(values, kth)[kth]  # the top_k-th largest score
    above = values > cut
    # Exactly the stable top_k: everything above the cut, then the lowest
    # indices among those equal to it.
    equal = np.flatnonzero(values == cut)[: top_k - int(above.sum())]
    take = np.sort(np.concatenate([np.flatnonzero(above), equal]))
    idx, values = idx[take], values[take]
  return idx[np.argsort(-values, kind="stable")]


def decode_detections(
  loc: np.ndarray,
  scores: np.ndarray,
  priors: np.ndarray,
  score_threshold: float = 0.01,
  nms_threshold: float = 0.45,
  top_k_per_class: int | None = 400,
  max_detections: int | None = 200,
  variances: Sequence[float] = DEFAULT_VARIANCES,
) -> Detections:
  """One image's SSD outputs to final detections (see the module docstring).

  Args:
    loc: [P, 4] predicted offsets (dcx, dcy, dw, dh), numpy (call
      `jax.device_get` on device arrays first).
    scores: [P, C] softmax probabilities; column 0 is background and is
      ignored.
    priors: [P, 4] default boxes, centre form (cx, cy, w, h) in [0, 1].
    score_threshold: a class score must be strictly above this.
    nms_threshold: per-class NMS IoU threshold.
    top_k_per_class: at most this many boxes per class enter NMS (None: no
      cap).
    max_detections: at most this many boxes per image (None: no cap).
    variances: SSD encoding variances (centre, size).

  Returns:
    `Detections` with K <= max_detections: boxes [K, 4] float32 corners
    clipped to [0, 1], scores [K] float32, labels [K] int32 in 1..C-1, score
    descending. K = 0 gives shapes [0, 4], [0], [0].

  Raises:
    ValueError: on shapes that do not fit together or bad caps.
  """
  loc = np.asarray(loc)
  scores = np.asarray(scores)
  priors = np.asarray(priors)
  if priors.ndim != 2 or priors.shape[1] != 4:
    raise ValueError(
      f"decode_detections: priors must be [P, 4], got shape {priors.shape}"
    )
  num_priors = priors.shape[0]
  if loc.shape != (num_priors, 4):
    raise ValueError(
      f"decode_detections: loc must be [P, 4] with P = {num_priors} "
      f"(priors), got shape {loc.shape}"
    )
  if scores.ndim != 2 or scores.shape[0] != num_priors or scores.shape[1] < 2:
    raise ValueError(
      f"decode_detections: scores must be [P, C] with P = {num_priors} "
      f"(priors) and C >= 2 (background + classes), got shape {scores.shape}"
    )
  for name, cap in (
    ("top_k_per_class", top_k_per_class),
    ("max_detections", max_detections),
  ):
    if cap is not None and cap < 1:
      raise ValueError(f"decode_detections: {name} must be >= 1 or None")

  class_major = np.ascontiguousarray(scores.T)  # [C, P]
  # candidates[c]: [n_c] prior indices, score descending; c = 0 unused.
  candidates = [np.zeros((0,), np.int64)] + [
    _top_candidates(class_major[c], score_threshold, top_k_per_class)
    for c in range(1, scores.shape[1])
  ]
  if not any(c.size for c in candidates):
    return empty_detections()
  boxes = decode_boxes(loc, priors, variances)  # [P, 4] float32

  # Per-class NMS, all classes advanced together in score order; stops once
  # max_detections are kept (lower-scored survivors could not be reported).
  states = {}
  heap = []  # (-score of the class's best undecided box, class)
  for c in range(1, len(candidates)):
    if candidates[c].size:
      states[c] = _NmsState(boxes[candidates[c]], nms_threshold)
      heap.append((-float(class_major[c, candidates[c][0]]), c))
  heapq.heapify(heap)
  limit = np.inf if max_detections is None else max_detections
  kept_priors, kept_labels = [], []
  while heap and len(kept_priors) < limit:
    _, c = heapq.heappop(heap)
    state = states[c]
    kept_priors.append(candidates[c][state.step()])
    kept_labels.append(c)
    if state.rest.size:
      best = candidates[c][state.rest[0]]
      heapq.heappush(heap, (-float(class_major[c, best]), c))

  kept_priors = np.asarray(kept_priors, np.int64)  # [K]
  labels = np.asarray(kept_labels, np.int32)  # [K]
  return Detections(
    np.clip(boxes[kept_priors], 0.0, 1.0).astype(np.float32),
    class_major[labels, kept_priors].astype(np.float32),
    labels,
  )


def decode_detections_batch(
  loc: np.ndarray,
  scores: np.ndarray,
  priors: np.ndarray,
  valid: np.ndarray | None = None,
  **kwargs,
) -> list[Detections]:
  """`decode_detections` for each image of a batch.

  Args:
    loc: [B, P, 4] offsets.
    scores: [B, P, C] softmax probabilities (column 0 background).
    priors: [P, 4] default boxes, centre form.
    valid: optional [B] bool; images with False (batch padding) are skipped
      and do not appear in the output.
    **kwargs: passed to `decode_detections` (thresholds, caps, variances).

  Returns:
    A list of `Detections`, one per (valid) image, in batch order.

  Raises:
    ValueError: if the batch dimensions disagree.
  """
  loc = np.asarray(loc)
  scores = np.asarray(scores)
  if loc.ndim != 3 or scores.ndim != 3 or loc.shape[0] != scores.shape[0]:
    raise ValueError(
      "decode_detections_batch: loc must be [B, P, 4] and scores [B, P, C] "
      f"with the same B, got shapes {loc.shape} and {scores.shape}"
    )
  if valid is None:
    valid = np.ones(loc.shape[0], bool)
  valid = np.asarray(valid, bool)
  if valid.shape != (loc.shape[0],):
    raise ValueError(
      f"decode_detections_batch: valid must be [B] with B = {loc.shape[0]}, "
      f"got shape {valid.shape}"
    )
  return [
    decode_detections(loc[b], scores[b], priors, **kwargs)
    for b in range(loc.shape[0])
    if valid[b]
  ]
