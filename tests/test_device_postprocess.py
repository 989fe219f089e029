"""Tests for ssd_jax/device_postprocess.py: the on-device NMS against the
host decoder (`postprocess.decode_detections`, the reference) on trained-like
and untrained-like scores, each score-tie case, degenerate inputs, jit/vmap,
and the errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import boxes as box_lib
from ssd_jax import device_postprocess as dp
from ssd_jax import postprocess
from ssd_jax.default_boxes import SSD300_PRIORS, default_boxes


@functools.cache
def ssd300_priors() -> np.ndarray:
  return default_boxes(*SSD300_PRIORS).astype(np.float32)  # [8732, 4]


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def trained_like(priors, rng, num_classes, num_objects=4):
  """(loc [P, 4], probs [P, C]): confident background, peaks on objects."""
  centres = rng.uniform(0.2, 0.8, (num_objects, 2))
  sizes = rng.uniform(0.1, 0.5, (num_objects, 2))
  objects = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1)
  labels = rng.integers(1, num_classes, num_objects)
  iou = np.asarray(
    box_lib.pairwise_iou(
      box_lib.center_to_corners(priors, xp=np), objects, xp=np
    )
  )  # [P, O]
  logits = rng.normal(0, 1, (len(priors), num_classes))
  logits[:, 0] += 8.0
  logits[np.arange(len(priors)), labels[iou.argmax(1)]] += 12.0 * iou.max(1)
  loc = rng.normal(0, 0.5, (len(priors), 4)).astype(np.float32)
  return loc, softmax(logits)


def untrained_like(priors, rng, num_classes):
  """Near-uniform probabilities (every class above 0.01), small offsets."""
  logits = rng.normal(0, 0.1, (len(priors), num_classes))
  loc = rng.normal(0, 0.1, (len(priors), 4)).astype(np.float32)
  return loc, softmax(logits)


decode_jit = jax.jit(
  dp.decode_detections_device,
  static_argnames=(
    "score_threshold",
    "nms_threshold",
    "top_k_per_class",
    "max_detections",
    "variances",
  ),
)


def assert_same_as_host(loc, probs, priors, **kwargs):
  """Device detections of a batch == host `decode_detections` per image."""
  got = jax.device_get(decode_jit(loc, probs, priors, **kwargs))
  k = got.scores.shape[1]
  for b in range(len(loc)):
    want = postprocess.decode_detections(loc[b], probs[b], priors, **kwargs)
    n = int(got.num_detections[b])
    assert n == len(want.scores)
    np.testing.assert_array_equal(got.labels[b, :n], want.labels)
    np.testing.assert_array_equal(got.scores[b, :n], want.scores)
    np.testing.assert_allclose(got.boxes[b, :n], want.boxes, rtol=0, atol=1e-6)
    # Padding rows are zero.
    assert not got.labels[b, n:].any() and not got.scores[b, n:].any()
    assert not got.boxes[b, n:].any() and n <= k
  return got


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trained_like_scores_match_the_host_decoder(seed):
  rng = np.random.default_rng(seed)
  priors = ssd300_priors()
  loc, probs = zip(
    *[trained_like(priors, rng, 21) for _ in range(2)], strict=True
  )
  got = assert_same_as_host(np.stack(loc), np.stack(probs), priors)
  assert got.boxes.shape == (2, 200, 4) and got.labels.dtype == np.int32
  assert (got.num_detections > 0).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_untrained_scores_match_the_host_decoder(seed):
  rng = np.random.default_rng(seed)
  priors = ssd300_priors()
  loc, probs = zip(
    *[untrained_like(priors, rng, 21) for _ in range(2)], strict=True
  )
  loc, probs = np.stack(loc), np.stack(probs)
  assert (probs[..., 1:] > 0.01).all()  # Every prior is a candidate.
  got = assert_same_as_host(loc, probs, priors)
  assert (got.num_detections == 200).all()  # Capped by max_detections.
  # Other caps and thresholds.
  kwargs = dict(top_k_per_class=50, max_detections=300, nms_threshold=0.3)
  assert_same_as_host(loc, probs, priors, **kwargs)


def test_nothing_above_the_threshold_gives_empty_rows():
  rng = np.random.default_rng(0)
  priors = ssd300_priors()[:50]
  probs = np.zeros((2, 50, 3), np.float32)
  probs[..., 0] = 1.0
  probs[1, :, 1] = 0.01  # Equal to the threshold: not strictly above.
  loc = rng.normal(0, 0.1, (2, 50, 4)).astype(np.float32)
  got = assert_same_as_host(loc, probs, priors, max_detections=7)
  assert got.num_detections.tolist() == [0, 0]
  assert got.boxes.shape == (2, 7, 4) and not got.boxes.any()


def test_small_inputs_two_classes_and_caps_above_the_candidates():
  # C = 2 (one class), P = 3, top_k > P, max_detections > candidates.
  priors = np.array(
    [[0.5, 0.5, 0.4, 0.4], [0.52, 0.5, 0.4, 0.4], [0.1, 0.1, 0.1, 0.1]],
    np.float32,
  )
  probs = np.array([[[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]]], np.float32)
  loc = np.zeros((1, 3, 4), np.float32)
  got = assert_same_as_host(
    loc, probs, priors, top_k_per_class=10, max_detections=5
  )
  assert got.num_detections.tolist() == [2]  # Prior 1 is suppressed by 0.
  np.testing.assert_array_equal(got.labels[0], [1, 1, 0, 0, 0])
  np.testing.assert_array_equal(got.scores[0], np.float32([0.9, 0.7, 0, 0, 0]))
  # Boxes are clipped after NMS, never before.
  np.testing.assert_allclose(got.boxes[0, 1], [0.05, 0.05, 0.15, 0.15])
  # No caps at all: every candidate gets a row.
  none = decode_jit(
    loc, probs, priors, top_k_per_class=None, max_detections=None
  )
  assert none.scores.shape == (1, 3) and none.num_detections.tolist() == [2]


def test_ties_at_the_top_k_cut_keep_the_lower_prior_indices():
  # Six far-apart priors with one score: top_k 4 keeps priors 0..3, as the
  # host's stable top-k does.
  priors = np.array(
    [[0.1 + 0.15 * i, 0.5, 0.05, 0.05] for i in range(6)], np.float32
  )
  probs = np.tile(np.array([0.5, 0.5], np.float32), (1, 6, 1))
  loc = np.zeros((1, 6, 4), np.float32)
  got = assert_same_as_host(loc, probs, priors, top_k_per_class=4)
  centres = (got.boxes[0, :4, 0] + got.boxes[0, :4, 2]) / 2
  np.testing.assert_allclose(centres, priors[:4, 0], atol=1e-6)


def test_ties_in_nms_order_keep_the_lower_prior_index():
  # Two overlapping boxes with one score: the lower prior index is visited
  # first and suppresses the other (host and device alike), for either
  # order of the priors.
  a, b = [0.5, 0.5, 0.4, 0.4], [0.51, 0.5, 0.4, 0.4]
  for rows in ([a, b], [b, a]):
    priors = np.array(rows, np.float32)
    probs = np.tile(np.array([0.4, 0.6], np.float32), (1, 2, 1))
    loc = np.zeros((1, 2, 4), np.float32)
    got = assert_same_as_host(loc, probs, priors)
    assert got.num_detections.tolist() == [1]
    np.testing.assert_allclose(got.boxes[0, 0, 0], rows[0][0] - 0.2, atol=1e-6)


def test_ties_at_the_max_detections_cut_keep_the_lower_class():
  # One prior scoring 0.3 for classes 1, 2 and 3: max_detections 2 keeps
  # classes 1 and 2 (boxes of different classes never suppress each other).
  priors = np.array([[0.5, 0.5, 0.4, 0.4]], np.float32)
  probs = np.array([[[0.1, 0.3, 0.3, 0.3]]], np.float32)
  loc = np.zeros((1, 1, 4), np.float32)
  got = assert_same_as_host(loc, probs, priors, max_detections=2)
  np.testing.assert_array_equal(got.labels[0], [1, 2])


greedy_jit = jax.jit(dp.greedy_nms, static_argnames=("max_keep", "tile"))


def kept_indices(boxes, classes, valid, thr, max_keep, tile=dp.TILE):
  classes = np.asarray(classes, np.int32)  # One compile per shape.
  kept = greedy_jit(boxes, classes, valid, thr, max_keep=max_keep, tile=tile)
  return np.asarray(kept.index)[: int(kept.num_kept)]


def test_greedy_nms_equals_host_nms_and_batched_nms():
  rng = np.random.default_rng(0)
  for n in (7, 300):
    # Grid boxes: exact in float32 and float64, many exact IoU values.
    xy = rng.integers(0, 16, (n, 2)) / 16
    wh = rng.integers(1, 8, (n, 2)) / 16
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    scores = rng.uniform(size=n)
    classes = rng.integers(0, 3, n)
    order = np.argsort(-scores, kind="stable")
    ones = np.ones(n, bool)
    for thr in (0.0, 0.3, 0.5):
      # Tiles of 16: one tile for n = 7, 19 tiles for n = 300.
      want = postprocess.nms(boxes, scores, thr)
      got = kept_indices(boxes[order], np.zeros(n), ones, thr, n, 16)
      np.testing.assert_array_equal(order[got], want)
      want = postprocess.batched_nms(boxes, scores, classes, thr)
      got = kept_indices(boxes[order], classes[order], ones, thr, n, 16)
      np.testing.assert_array_equal(order[got], want)
      # max_keep: the first kept boxes, the same as the host's.
      got = kept_indices(boxes[order], classes[order], ones, thr, 5, 16)
      np.testing.assert_array_equal(order[got], want[:5])


def test_greedy_nms_iou_equal_to_the_threshold_does_not_suppress():
  # IoU exactly 0.5 (exact in float32 and float64): the test is strict.
  boxes = np.array([[0, 0, 1, 1], [0, 0, 0.5, 1]], np.float32)
  same, ones = np.zeros(2), np.ones(2, bool)
  assert kept_indices(boxes, same, ones, 0.5, 2).tolist() == [0, 1]
  assert postprocess.nms(boxes, np.array([2.0, 1.0]), 0.5).tolist() == [0, 1]
  assert kept_indices(boxes, same, ones, 0.49, 2).tolist() == [0]


def test_greedy_nms_padding_never_kept_nor_suppresses():
  boxes = np.array(
    [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 1, 1]],
    np.float32,
  )
  valid = np.array([False, True, True, True, False])
  # Row 0 is padding: row 1 is kept, suppresses row 2; the zero-area row 3
  # overlaps nothing and is kept; row 4 is padding.
  got = kept_indices(boxes, np.zeros(5), valid, 0.5, 5, tile=2)
  assert got.tolist() == [1, 3]
  kept = dp.greedy_nms(np.zeros((0, 4), np.float32), [], [], 0.5, 3)
  assert kept.index.shape == (3,) and int(kept.num_kept) == 0


def test_vmap_over_a_leading_axis_equals_the_batch():
  rng = np.random.default_rng(3)
  priors = ssd300_priors()[:400]
  loc, probs = zip(
    *[trained_like(priors, rng, 4) for _ in range(4)], strict=True
  )
  loc, probs = np.stack(loc), np.stack(probs)
  kwargs = dict(top_k_per_class=40, max_detections=30)
  batch = assert_same_as_host(loc, probs, priors, **kwargs)
  mapped = jax.jit(
    jax.vmap(
      lambda lo, pr: dp.decode_detections_device(lo, pr, priors, **kwargs)
    )
  )(loc.reshape(2, 2, 400, 4), probs.reshape(2, 2, 400, 4))
  for a, b in zip(batch, mapped, strict=True):
    np.testing.assert_allclose(np.asarray(b).reshape(a.shape), a, atol=1e-6)


def test_bad_inputs_name_the_argument():
  priors = np.zeros((5, 4), np.float32)
  loc = np.zeros((1, 5, 4), np.float32)
  probs = np.zeros((1, 5, 3), np.float32)
  fn = dp.decode_detections_device
  with pytest.raises(ValueError, match=r"priors must be \[P, 4\]"):
    fn(loc, probs, priors[:, :3])
  with pytest.raises(ValueError, match=r"probs must be \[B, P, C\].*C >= 2"):
    fn(loc, probs[..., :1], priors)
  with pytest.raises(ValueError, match=r"loc must be \[B, P, 4\]"):
    fn(loc[:, :4], probs, priors)
  with pytest.raises(ValueError, match="top_k_per_class must be >= 1"):
    fn(loc, probs, priors, top_k_per_class=0)
  with pytest.raises(ValueError, match="max_detections must be >= 1.*2.5"):
    fn(loc, probs, priors, max_detections=2.5)
  with pytest.raises(ValueError, match=r"greedy_nms: valid must be \[N\]"):
    dp.greedy_nms(jnp.zeros((3, 4)), jnp.zeros(3), jnp.zeros(2, bool), 0.5, 3)
  with pytest.raises(ValueError, match=r"priors must be \[P, 4\] with P >= 1"):
    fn(loc[:, :0], probs[:, :0], priors[:0])
