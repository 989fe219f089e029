"""On-device SSD postprocessing: fixed-size per-class NMS in JAX.

The jit-able, vmap-able twin of the host decoder
`ssd_jax.postprocess.decode_detections` (the default decoder, DESIGN.md): the
same rule and the same algorithm, with static shapes, for export and
end-to-end jitted inference. For each image of a batch:

1. decode the offsets against the priors (`ssd_jax.boxes.decode`, float32,
   with its clamp on the size offsets),
2. per class c in 1..C-1: keep priors whose score is strictly above
   `score_threshold`, then the `top_k_per_class` highest of them
   (`lax.top_k` on [C-1, P]; rows past a class's candidates are padding),
3. order all [(C-1) k] candidates by score (`lax.top_k` again, a stable
   sort) and run greedy NMS over them in that order (`greedy_nms`): a box is
   dropped when its IoU with a kept box of the same class is strictly above
   `nms_threshold`; boxes are unclipped, as in the release,
4. stop once `max_detections` boxes are kept: they are the detections,
5. clip the kept boxes to [0, 1].

`greedy_nms` is the tiled scheme of Google's MLPerf SSD (and of the host
engine, `postprocess._greedy_nms`): tiles of `TILE` candidates in score
order, each first checked against the boxes kept so far (a [K + TILE, TILE]
IoU block), then resolved inside by fixed-point iteration, in a
`lax.while_loop` that stops when `max_detections` are kept or the
candidates run out. A trained network's few candidates take a few tiles,
an untrained one's (every score above 0.01) about one tile per 64 kept
boxes. A first design, a [C-1, k, k] IoU tensor per image (20 x 400 x 400
on SSD300 VOC) resolved per class, took 1.6-15x longer on this CPU (the
bench's two cases at batch 1 and 8; it was replaced, not kept). The cost of
a tile is a [max_keep + TILE, TILE] IoU block, so `greedy_nms` suits a
detection cap (200), not thousands of kept boxes (see
experiments/results/bench_postprocess_cpu_2026-12-01.txt).

Ordering is the host's: scores descending; equal scores go to the lower
class label, then to the lower prior index. `lax.top_k` puts the lower index
first among equal values, so both top-k steps reproduce the host's stable
sorts exactly (class-major flattening makes "lower index" mean "lower
class, then higher rank in the class", i.e. lower prior index on equal
scores).

Where the two decoders can differ (each case is tested in
tests/test_device_postprocess.py):
- exact score ties are resolved identically, at the per-class top-k cut, in
  the NMS visiting order and at the max-detections cut (no difference);
- an IoU within float32 rounding of `nms_threshold`: the host computes IoUs in
  float64 from the float32 boxes, the device in float32, so a pair whose IoU
  lies within ~1e-7 of the threshold may be suppressed on one side only (an
  IoU exactly equal to the threshold in both precisions suppresses on
  neither: the test is strict). Not observed on random and model scores;
- XLA's `exp` and its fused multiply-adds round differently from numpy, so
  boxes agree to ~1e-7, not bit for bit (the kept sets are the same).
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ssd_jax import boxes as box_lib
from ssd_jax.boxes import DEFAULT_VARIANCES

# Candidates resolved together by `greedy_nms` (measured on CPU: 64 beat 32
# and 128 on both the trained-like and the untrained case).
TILE = 64


class DeviceDetections(NamedTuple):
  """A batch's detections, padded to K = max_detections rows per image.

  Rows `[:num_detections[b]]` of image b are its detections, highest score
  first (ties: lower class, then lower prior index); the rows after them
  are padding: boxes and scores 0, labels 0.

  Attributes:
    boxes: [B, K, 4] float32 corners (x_min, y_min, x_max, y_max), clipped to
      [0, 1] of the network input (`ssd_jax.detect` scales them to pixels).
    scores: [B, K] float32 class probabilities.
    labels: [B, K] int32 class labels in 1..C-1; 0 in padding rows.
    num_detections: [B] int32 valid rows per image.
  """

  boxes: jax.Array
  scores: jax.Array
  labels: jax.Array
  num_detections: jax.Array


class KeptBoxes(NamedTuple):
  """What `greedy_nms` keeps, in visiting order.

  Attributes:
    index: [K] int32 positions of the kept boxes in the input (0 after
      `num_kept`).
    num_kept: int32 scalar, valid entries of `index` (<= K).
  """

  index: jax.Array
  num_kept: jax.Array


def greedy_nms(
  boxes: jax.Array,
  classes: jax.Array,
  valid: jax.Array,
  iou_threshold: float,
  max_keep: int,
  tile: int = TILE,
) -> KeptBoxes:
  """Exact greedy NMS of boxes given in priority order; fixed-size output.

  Box j is kept iff it is valid and no kept box i < j of the same class has
  IoU(i, j) > `iou_threshold` (`boxes.pairwise_iou`: zero-area and inverted
  boxes have IoU 0 with everything, so they are always kept). Only the first
  `max_keep` kept boxes are computed: the greedy result on a prefix does not
  depend on later boxes. Tiles of `tile` boxes: each tile is checked against
  the kept boxes, then solved inside by fixed-point iteration from "keep all
  alive" (after t rounds the first t boxes are final and the recurrence has
  one solution, so stopping at the first round that changes nothing is
  exact). Pure and static-shaped: jit it, vmap it over images.

  Args:
    boxes: [N, 4] float32 corners, highest priority first.
    classes: [N] int class ids; boxes of different classes never suppress
      each other (all equal: plain NMS).
    valid: [N] bool; invalid rows (padding) are never kept and suppress
      nothing.
    iou_threshold: suppress when the IoU is strictly above this.
    max_keep: K, the most boxes returned (a Python int).
    tile: boxes resolved together (a Python int).

  Returns:
    `KeptBoxes`: index [K] int32 of the kept boxes in priority order,
    num_kept int32 scalar.

  Raises:
    ValueError: if boxes is not [N, 4], classes and valid not [N], or the
      sizes are not >= 1.
  """
  boxes = jnp.asarray(boxes)
  classes = jnp.asarray(classes, jnp.int32)
  valid = jnp.asarray(valid, bool)
  if boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise ValueError(
      f"greedy_nms: boxes must be [N, 4], got shape {boxes.shape}"
    )
  for name, array in (("classes", classes), ("valid", valid)):
    if array.shape != boxes.shape[:1]:
      raise ValueError(
        f"greedy_nms: {name} must be [N] with N = {boxes.shape[0]} (boxes), "
        f"got shape {array.shape}"
      )
  if max_keep < 1 or tile < 1:
    raise ValueError(
      f"greedy_nms: max_keep and tile must be >= 1, got {max_keep}, {tile}"
    )
  num = boxes.shape[0]
  if num == 0:
    return KeptBoxes(jnp.zeros((max_keep,), jnp.int32), jnp.int32(0))
  tile = min(tile, num)
  num_tiles = -(-num // tile)
  pad = num_tiles * tile - num
  boxes = jnp.pad(boxes, ((0, pad), (0, 0)))  # zero area: never overlaps
  classes = jnp.pad(classes, (0, pad))
  valid = jnp.pad(valid, (0, pad))
  # Past the last valid box nothing can be kept: stop there.
  end = jnp.max(jnp.where(valid, jnp.arange(num + pad) + 1, 0))
  size = max_keep + tile  # Kept before the last tile < K, plus one tile.
  later = jnp.arange(tile)[:, None] < jnp.arange(tile)[None, :]  # [T, T]

  def more(carry):
    start, num_kept = carry[0], carry[1]
    return (start < end) & (num_kept < max_keep)

  def one_tile(carry):
    start, num_kept, kept_boxes, kept_classes, kept_index = carry
    cur = lax.dynamic_slice_in_dim(boxes, start, tile)  # [T, 4]
    cur_classes = lax.dynamic_slice_in_dim(classes, start, tile)  # [T]
    hit = (
      (box_lib.pairwise_iou(kept_boxes, cur) > iou_threshold)
      & (kept_classes[:, None] == cur_classes[None, :])
      & (jnp.arange(size) < num_kept)[:, None]
    )  # [K + T, T]
    alive = lax.dynamic_slice_in_dim(valid, start, tile) & ~hit.any(0)  # [T]
    sup = (
      (box_lib.pairwise_iou(cur, cur) > iou_threshold)
      & (cur_classes[:, None] == cur_classes[None, :])
      & later
      & alive[:, None]
    )  # [T, T] i would suppress j

    def step(state):
      keep, _ = state
      new = alive & ~jnp.any(sup & keep[:, None], axis=0)  # [T]
      return new, jnp.any(new != keep)

    keep, _ = lax.while_loop(lambda s: s[1], step, (alive, jnp.asarray(True)))
    dest = jnp.where(keep, num_kept + jnp.cumsum(keep) - 1, size)  # [T]
    return (
      start + tile,
      num_kept + keep.sum(dtype=jnp.int32),
      kept_boxes.at[dest].set(cur, mode="drop"),
      kept_classes.at[dest].set(cur_classes, mode="drop"),
      kept_index.at[dest].set(start + jnp.arange(tile), mode="drop"),
    )

  init = (
    jnp.int32(0),
    jnp.int32(0),
    jnp.zeros((size, 4), boxes.dtype),
    jnp.zeros((size,), jnp.int32),
    jnp.zeros((size,), jnp.int32),
  )
  _, num_kept, _, _, kept_index = lax.while_loop(more, one_tile, init)
  num_kept = jnp.minimum(num_kept, max_keep)
  index = jnp.where(jnp.arange(max_keep) < num_kept, kept_index[:max_keep], 0)
  return KeptBoxes(index, num_kept)


def _check_inputs(loc, probs, priors) -> None:
  """Static shape checks of `decode_detections_device` (ValueError)."""
  fn = "decode_detections_device"
  if priors.ndim != 2 or priors.shape[1] != 4 or priors.shape[0] < 1:
    raise ValueError(
      f"{fn}: priors must be [P, 4] with P >= 1, got shape {priors.shape}"
    )
  num_priors = priors.shape[0]
  if probs.ndim != 3 or probs.shape[1] != num_priors or probs.shape[2] < 2:
    raise ValueError(
      f"{fn}: probs must be [B, P, C] with P = {num_priors} (priors) and "
      f"C >= 2 (background + classes), got shape {probs.shape}"
    )
  if loc.shape != (probs.shape[0], num_priors, 4):
    raise ValueError(
      f"{fn}: loc must be [B, P, 4] = {(probs.shape[0], num_priors, 4)} "
      f"(probs, priors), got shape {loc.shape}"
    )


def _check_cap(name: str, cap) -> None:
  if cap is not None and (
    not isinstance(cap, int) or isinstance(cap, bool) or cap < 1
  ):
    raise ValueError(
      f"decode_detections_device: {name} must be >= 1 or None (a Python "
      f"int, static under jit), got {cap!r}"
    )


def decode_detections_device(
  loc: jax.Array,
  probs: jax.Array,
  priors: jax.Array,
  *,
  score_threshold: float = 0.01,
  nms_threshold: float = 0.45,
  top_k_per_class: int | None = 400,
  max_detections: int | None = 200,
  variances: Sequence[float] = DEFAULT_VARIANCES,
) -> DeviceDetections:
  """A batch's SSD outputs to padded detections (see the module docstring).

  The same kept sets, order and scores as `postprocess.decode_detections`
  on each image (the module docstring lists where float rounding can
  differ). Jit-able with the keyword arguments static (they are Python
  numbers; the thresholds may also be traced scalars).

  Args:
    loc: [B, P, 4] float predicted offsets (dcx, dcy, dw, dh).
    probs: [B, P, C] float softmax probabilities; column 0 is background.
    priors: [P, 4] default boxes, centre form (cx, cy, w, h) in [0, 1].
    score_threshold: a class score must be strictly above this.
    nms_threshold: per-class NMS IoU threshold.
    top_k_per_class: at most this many boxes per class enter NMS (None: P);
      larger than P means P.
    max_detections: K, the rows per image (None: (C-1) k, every candidate).
    variances: SSD encoding variances (centre, size).

  Returns:
    `DeviceDetections`: boxes [B, K, 4] float32 clipped to [0, 1], scores
    [B, K] float32, labels [B, K] int32 (0 in padding), num_detections [B]
    int32; padding rows are zero.

  Raises:
    ValueError: on shapes that do not fit together or bad caps.
  """
  loc = jnp.asarray(loc)
  probs = jnp.asarray(probs)
  priors = jnp.asarray(priors)
  _check_inputs(loc, probs, priors)
  _check_cap("top_k_per_class", top_k_per_class)
  _check_cap("max_detections", max_detections)
  batch, num_priors, num_classes = probs.shape
  k = min(top_k_per_class or num_priors, num_priors)  # per-class rows
  num_cand = (num_classes - 1) * k
  out = num_cand if max_detections is None else max_detections

  variances = tuple(float(v) for v in variances)
  priors = priors.astype(jnp.float32)
  # Per image (vmap): `boxes.decode`'s static broadcast check then never sees
  # a symbolic batch size (jax.export).
  boxes = jax.vmap(lambda d: box_lib.decode(d, priors, variances))(
    loc.astype(jnp.float32)
  )  # [B, P, 4] unclipped
  scores = jnp.swapaxes(probs[..., 1:].astype(jnp.float32), 1, 2)  # [B,C-1,P]
  above = scores > score_threshold  # [B, C-1, P]; NaN is never above
  top_scores, top_idx = lax.top_k(jnp.where(above, scores, -jnp.inf), k)
  top_valid = jnp.take_along_axis(above, top_idx, -1)  # [B, C-1, k]
  # All candidates by score. Class-major flattening: lax.top_k's
  # lower-index-first order on equal scores is the host's (lower class,
  # then lower prior index).
  flat = jnp.where(top_valid, top_scores, -jnp.inf).reshape(batch, num_cand)
  cand_scores, order = lax.top_k(flat, num_cand)  # [B, N]
  cand_valid = jnp.take_along_axis(
    top_valid.reshape(batch, num_cand), order, -1
  )
  cand_prior = jnp.take_along_axis(top_idx.reshape(batch, num_cand), order, -1)
  cand_class = order // k  # [B, N] in 0..C-2
  cand_boxes = jnp.take_along_axis(boxes, cand_prior[..., None], 1)  # [B,N,4]
  kept = jax.vmap(greedy_nms, (0, 0, 0, None, None))(
    cand_boxes, cand_class, cand_valid, nms_threshold, out
  )  # index [B, K], num_kept [B]
  rows = jnp.arange(out) < kept.num_kept[:, None]  # [B, K]
  take = lambda a: jnp.take_along_axis(a, kept.index, 1)
  sel_boxes = jnp.take_along_axis(cand_boxes, kept.index[..., None], 1)
  return DeviceDetections(
    boxes=jnp.where(rows[..., None], jnp.clip(sel_boxes, 0.0, 1.0), 0.0),
    scores=jnp.where(rows, take(cand_scores), 0.0),
    labels=jnp.where(rows, take(cand_class) + 1, 0).astype(jnp.int32),
    num_detections=kept.num_kept.astype(jnp.int32),
  )
