"""Host-side SSD postprocessing: NMS and per-image detection decoding (numpy).

Everything here runs on the host in numpy, by design (DESIGN.md): the device
returns an image's `[P, 4]` offsets and `[P, C]` class probabilities and the
host turns them into at most `max_detections` boxes, as the SSD Caffe release's
`DetectionOutput` layer does:

1. decode the offsets against the priors (`ssd_jax.boxes.decode` run with
   numpy in float32, including its clamp on the size offsets),
2. per class c in 1..C-1: keep priors whose score is strictly above
   `score_threshold`, then the `top_k_per_class` highest of them,
3. greedy NMS per class (a box is dropped when its IoU with a kept box of the
   same class is strictly above `nms_threshold`),
4. keep the `max_detections` highest-scoring survivors over all classes,
5. clip the kept boxes to [0, 1] (NMS sees the unclipped boxes, as in the
   release).

Ordering is deterministic: scores descending; equal scores go to the lower
class label, then to the lower prior (or input) index.

One NMS engine (`_greedy_nms`: greedy NMS in priority order, resolved in
blocks of IoU matrices, with an optional same-class mask and an optional cap
on the kept count) runs under `nms`, `batched_nms` and `decode_detections`.

The per-class cap bounds the work on an untrained network (every score above
0.01): at most `top_k_per_class` boxes per class enter NMS, and the classes are
suppressed together in one pass in score order, stopping after the block in
which `max_detections` boxes are kept.
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ssd_jax import boxes as box_lib
from ssd_jax.boxes import DEFAULT_VARIANCES


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


def _check_boxes_scores(fn: str, boxes: np.ndarray, scores: np.ndarray):
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"{fn}: boxes must be [K, 4], got shape {boxes.shape}")
  if scores.shape != (boxes.shape[0],):
    raise ValueError(
      f"{fn}: scores must be [K] with K = {boxes.shape[0]} (boxes), got "
      f"shape {scores.shape}"
    )


# Block sizes of `_greedy_nms`: boxes resolved together, and kept boxes
# compared with a block at once (bounds memory for huge K).
_NMS_BLOCK = 256
_NMS_ROWS = 4096


def _suppresses(boxes, classes, rows, cols, iou_threshold) -> np.ndarray:
  """[R, C] bool: box `rows[r]` suppresses box `cols[c]` (same class)."""
  hit = box_lib.pairwise_iou(boxes[rows], boxes[cols], xp=np) > iou_threshold
  if classes is not None:
    hit &= classes[rows][:, None] == classes[cols][None, :]
  return hit


def _greedy_nms(
  boxes: np.ndarray,
  classes: np.ndarray | None,
  iou_threshold: float,
  max_keep: int | None = None,
) -> np.ndarray:
  """THE NMS engine: exact greedy NMS of boxes in priority order.

  Box j is kept iff no kept box i before it of the same class has IoU(i, j)
  > threshold (`boxes.pairwise_iou` in float64: 0 for empty intersections,
  so zero-area and inverted boxes never suppress nor get suppressed). Boxes
  are resolved in blocks: drop the boxes of the block that an already kept
  box suppresses, then solve the recurrence inside the block by fixed-point
  iteration from "keep all" (after t rounds the first t boxes are final, so
  it terminates; the recurrence has one solution, so stopping at any fixed
  point is exact). Suppression chains are short in practice: a few matrix
  rounds replace one Python step per kept box.

  Two visiting orders, both exact: with `max_keep` the boxes are visited in
  the given order and the pass stops once `max_keep` are kept (the greedy
  result on a prefix does not depend on later boxes), which bounds the work
  on an untrained network; without it, classes are independent and are
  visited one after another (each in its own priority order) in blocks of
  one class, so no IoU between classes is computed: on
  experiments/bench_postprocess.py's `batched_nms` case (2,082 boxes, 20
  classes, 1,441 kept) the global order was 6.6x slower (27 ms vs 4.1).

  Args:
    boxes: [K, 4] float64 corners, in priority order (score descending).
    classes: [K] class ids (boxes of different classes never suppress each
      other), or None for one class.
    iou_threshold: suppress when IoU is strictly above this.
    max_keep: stop after this many kept boxes (None: no cap).

  Returns:
    [K] bool, True for kept boxes (at most `max_keep`).
  """
  num = len(boxes)
  visit = np.arange(num)  # [K] positions in visiting order
  starts = set(range(0, num, _NMS_BLOCK))  # first position of each block
  by_class = classes is not None and max_keep is None
  if by_class:
    visit = np.argsort(classes, kind="stable")
    # Blocks also split at class boundaries: one class per block.
    starts |= set((np.flatnonzero(np.diff(classes[visit]) != 0) + 1).tolist())
  boxes = boxes[visit]
  classes = None if classes is None else classes[visit]
  mixed = None if by_class else classes  # blocks of several classes: mask
  keep = np.zeros((num,), bool)  # in visiting order
  limit = num if max_keep is None else max_keep
  num_kept = 0
  bounds = sorted(starts) + [num]
  for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
    if num_kept >= limit:
      break
    block = np.arange(start, stop)  # [n]
    kept_before = np.flatnonzero(keep[:start])  # [k]
    if by_class:  # only kept boxes of the block's class matter
      kept_before = kept_before[classes[kept_before] == classes[start]]
    hit = np.zeros((len(block),), bool)  # [n]
    for row in range(0, len(kept_before), _NMS_ROWS):  # bounded memory
      rows = kept_before[row : row + _NMS_ROWS]
      hit |= _suppresses(boxes, mixed, rows, block, iou_threshold).any(0)
    alive = block[~hit]  # [m]
    sup = np.triu(_suppresses(boxes, mixed, alive, alive, iou_threshold), 1)
    state = np.ones((len(alive),), bool)  # [m]
    while True:
      new = ~(sup & state[:, None]).any(0)  # [m]
      if np.array_equal(new, state):
        break
      state = new
    kept = alive[state][: limit - num_kept]
    keep[kept] = True
    num_kept += len(kept)
  out = np.zeros_like(keep)
  out[visit] = keep
  return out


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
  keep = _greedy_nms(boxes[order].astype(np.float64), None, iou_threshold)
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
  different classes never suppress each other: the NMS engine's same-class
  mask (exact; the coordinate-offset trick can change IoUs by float rounding
  on large coordinates).

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
  order = np.argsort(-scores.astype(np.float64), kind="stable")  # [K]
  keep = _greedy_nms(
    boxes[order].astype(np.float64), classes[order], iou_threshold
  )
  return order[keep].astype(np.int64)  # score order, ties by index


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
    if cap is not None and (
      not isinstance(cap, int | np.integer) or isinstance(cap, bool) or cap < 1
    ):
      raise ValueError(
        f"decode_detections: {name} must be >= 1 or None (an integer), got "
        f"{cap!r}"
      )

  class_major = np.ascontiguousarray(scores.T)  # [C, P]
  # Per class: [n_c] prior indices, score descending, ties by lower index.
  candidates = [
    _top_candidates(class_major[c], score_threshold, top_k_per_class)
    for c in range(1, scores.shape[1])
  ]
  prior_idx = np.concatenate([np.zeros((0,), np.int64), *candidates])  # [N]
  if not prior_idx.size:
    return empty_detections()
  labels = np.repeat(
    np.arange(1, scores.shape[1], dtype=np.int32), [len(c) for c in candidates]
  )  # [N]
  cand_scores = class_major[labels, prior_idx]  # [N]
  # Score descending; ties to the lower class (concatenation order), then
  # to the class's own order (lower prior index).
  order = np.argsort(-cand_scores, kind="stable")  # [N]
  prior_idx, labels = prior_idx[order], labels[order]
  boxes = box_lib.decode(
    loc[prior_idx].astype(np.float32),
    priors[prior_idx].astype(np.float32),
    tuple(float(v) for v in variances),
    xp=np,
  )  # [N, 4] float32, unclipped
  # Per-class NMS in one pass over all classes in score order; stops once
  # max_detections are kept (lower-scored survivors could not be reported).
  keep = _greedy_nms(
    boxes.astype(np.float64), labels, nms_threshold, max_detections
  )  # [N]
  return Detections(
    np.clip(boxes[keep], 0.0, 1.0).astype(np.float32),
    cand_scores[order][keep].astype(np.float32),
    labels[keep],
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
