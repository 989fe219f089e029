"""Tests for ssd_jax.postprocess against slow pure-Python references."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ssd_jax import boxes as box_lib
from ssd_jax import postprocess
from ssd_jax.default_boxes import SSD300_PRIORS, default_boxes


def _ref_iou(a, b):
  """Pure-Python IoU of two corner boxes (0 for empty intersections)."""
  a = [float(v) for v in a]
  b = [float(v) for v in b]
  iw = min(a[2], b[2]) - max(a[0], b[0])
  ih = min(a[3], b[3]) - max(a[1], b[1])
  if iw <= 0 or ih <= 0:
    return 0.0
  inter = iw * ih
  area = lambda x: max(x[2] - x[0], 0.0) * max(x[3] - x[1], 0.0)
  return inter / (area(a) + area(b) - inter)


def _ref_nms(boxes, scores, threshold):
  """Greedy NMS, one box at a time: score descending, ties by index."""
  order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
  keep = []
  for i in order:
    if all(_ref_iou(boxes[j], boxes[i]) <= threshold for j in keep):
      keep.append(i)
  return keep


def _ref_batched_nms(boxes, scores, classes, threshold):
  kept = []
  for c in sorted(set(classes.tolist())):
    members = [i for i in range(len(classes)) if classes[i] == c]
    sub = _ref_nms(boxes[members], scores[members], threshold)
    kept += [members[k] for k in sub]
  return sorted(kept, key=lambda i: (-float(scores[i]), i))


def _ref_decode_detections(
  loc, scores, priors, score_threshold, nms_threshold, top_k, max_det
):
  """The Caffe DetectionOutput recipe as plain loops over classes/priors."""
  boxes = np.asarray(box_lib.decode(loc, priors))  # the jnp decode
  found = []  # (score, label, prior)
  for c in range(1, scores.shape[1]):
    cand = [
      (float(scores[p, c]), p)
      for p in range(len(priors))
      if scores[p, c] > score_threshold
    ]
    cand.sort(key=lambda t: (-t[0], t[1]))
    cand = cand[:top_k]
    keep = []
    for s, p in cand:
      if all(_ref_iou(boxes[q], boxes[p]) <= nms_threshold for _, q in keep):
        keep.append((s, p))
    found += [(s, c, p) for s, p in keep]
  found.sort(key=lambda t: (-t[0], t[1]))  # stable: class order, then rank
  found = found[:max_det]
  out_boxes = np.array([boxes[p] for _, _, p in found]).reshape(-1, 4)
  return (
    np.clip(out_boxes, 0, 1),
    np.array([s for s, _, _ in found], np.float32),
    np.array([c for _, c, _ in found], np.int32),
  )


def _random_priors(rng, n):
  cxcy = rng.uniform(0.05, 0.95, (n, 2))
  wh = rng.uniform(0.05, 0.6, (n, 2))
  return np.concatenate([cxcy, wh], -1).astype(np.float32)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)


# Boxes in [0, 1], possibly inverted or zero-area; scores on a coarse grid so
# that ties happen.
_boxes_and_scores = st.integers(0, 25).flatmap(
  lambda k: st.tuples(
    hnp.arrays(np.float32, (k, 4), elements=st.floats(0, 1, width=32)),
    hnp.arrays(np.float32, (k,), elements=st.sampled_from([0.1, 0.5, 0.9])),
    hnp.arrays(np.int32, (k,), elements=st.integers(0, 2)),
  )
)


@settings(max_examples=60, deadline=None)
@given(_boxes_and_scores, st.sampled_from([0.0, 0.3, 0.45, 0.7, 1.0]))
def test_nms_matches_reference(data, threshold):
  boxes, scores, _ = data
  got = postprocess.nms(boxes, scores, threshold)
  assert got.dtype == np.int64
  assert got.tolist() == _ref_nms(boxes, scores, threshold)


@settings(max_examples=60, deadline=None)
@given(_boxes_and_scores, st.sampled_from([0.3, 0.5]))
def test_batched_nms_matches_per_class_loop(data, threshold):
  boxes, scores, classes = data
  got = postprocess.batched_nms(boxes, scores, classes, threshold)
  assert got.dtype == np.int64
  assert got.tolist() == _ref_batched_nms(boxes, scores, classes, threshold)


def test_nms_dense_random_boxes_pixels():
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 400, (300, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(5, 120, (300, 2))], -1)
  scores = rng.uniform(size=300)
  for threshold in (0.3, 0.5):
    got = postprocess.nms(boxes, scores, threshold)
    assert got.tolist() == _ref_nms(boxes, scores, threshold)


def test_nms_many_blocks_heavy_overlap():
  # 700 boxes in a small region: several blocks, heavy suppression.
  rng = np.random.default_rng(8)
  xy = rng.uniform(0, 30, (700, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(20, 40, (700, 2))], -1)
  scores = rng.uniform(size=700).astype(np.float32)
  got = postprocess.nms(boxes, scores, 0.5)
  assert got.tolist() == _ref_nms(boxes, scores, 0.5)


def test_batched_nms_many_blocks_and_classes():
  # Classes of 5 to 600 boxes: blocks end at class boundaries and at 256.
  rng = np.random.default_rng(9)
  classes = np.repeat([7, -1, 3, 0], [600, 5, 300, 90])
  rng.shuffle(classes)
  xy = rng.uniform(0, 60, (len(classes), 2))
  boxes = np.concatenate([xy, xy + rng.uniform(10, 40, xy.shape)], -1)
  scores = rng.integers(0, 50, len(classes)).astype(np.float32)  # ties
  for threshold in (0.3, 0.6):
    got = postprocess.batched_nms(boxes, scores, classes, threshold)
    assert got.tolist() == _ref_batched_nms(boxes, scores, classes, threshold)


def test_nms_suppression_chain():
  # Each box overlaps the next by IoU 0.7 / 1.3 > 0.5 and the one after by
  # 0.4 / 1.6 < 0.5; scores fall along the chain, so greedy NMS keeps every
  # other box (a long chain, across a block boundary).
  x = np.arange(600) * 0.3
  boxes = np.stack([x, np.zeros(600), x + 1, np.ones(600)], -1)
  scores = np.linspace(1, 0.1, 600)
  assert postprocess.nms(boxes, scores, 0.5).tolist() == list(range(0, 600, 2))
  classes = np.arange(600) % 2  # per class no box overlaps another: all kept
  got = postprocess.batched_nms(boxes, scores, classes, 0.5)
  assert got.tolist() == list(range(600))


def test_nms_empty():
  for fn in (
    lambda b, s: postprocess.nms(b, s, 0.5),
    lambda b, s: postprocess.batched_nms(b, s, np.zeros(0, np.int32), 0.5),
  ):
    got = fn(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    assert got.shape == (0,)
    assert got.dtype == np.int64


def test_nms_identical_boxes_keeps_best():
  boxes = np.tile([[0.1, 0.1, 0.4, 0.5]], (5, 1))
  scores = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
  assert postprocess.nms(boxes, scores, 0.5).tolist() == [1]  # tie: index
  # Per class: one survivor per class, best score first.
  classes = np.array([0, 1, 1, 0, 2])
  got = postprocess.batched_nms(boxes, scores, classes, 0.5)
  assert got.tolist() == [1, 3, 4]
  # A threshold of 1 suppresses nothing (IoU must exceed it).
  assert postprocess.nms(boxes, scores, 1.0).tolist() == [1, 3, 2, 0, 4]


def test_nms_zero_area_boxes_never_suppress():
  boxes = np.array(
    [
      [0.2, 0.2, 0.2, 0.6],  # zero width
      [0.2, 0.2, 0.2, 0.6],  # same
      [0.0, 0.0, 1.0, 1.0],
      [0.5, 0.5, 0.4, 0.4],  # inverted
    ]
  )
  scores = np.array([0.9, 0.8, 0.7, 0.6])
  assert postprocess.nms(boxes, scores, 0.0).tolist() == [0, 1, 2, 3]


def test_nms_hand_worked():
  boxes = np.array(
    [
      [0.0, 0.0, 10.0, 10.0],
      [1.0, 0.0, 11.0, 10.0],  # IoU 90/110 = 0.818 with box 0
      [5.0, 0.0, 15.0, 10.0],  # IoU 50/150 = 1/3 with box 0
      [20.0, 20.0, 30.0, 30.0],
    ]
  )
  scores = np.array([0.9, 0.8, 0.7, 0.95])
  assert postprocess.nms(boxes, scores, 0.5).tolist() == [3, 0, 2]
  assert postprocess.nms(boxes, scores, 0.3).tolist() == [3, 0]
  assert postprocess.nms(boxes, scores, 0.85).tolist() == [3, 0, 1, 2]


def test_nms_bad_shapes():
  with pytest.raises(ValueError, match=r"nms: boxes must be \[K, 4\]"):
    postprocess.nms(np.zeros((3, 5)), np.zeros(3), 0.5)
  with pytest.raises(ValueError, match=r"nms: scores must be \[K\]"):
    postprocess.nms(np.zeros((3, 4)), np.zeros(2), 0.5)
  with pytest.raises(ValueError, match=r"batched_nms: classes must be \[K\]"):
    postprocess.batched_nms(np.zeros((3, 4)), np.zeros(3), np.zeros(2), 0.5)


def _check_against_reference(loc, scores, priors, **kw):
  kw = {
    "score_threshold": 0.01,
    "nms_threshold": 0.45,
    "top_k_per_class": 400,
    "max_detections": 200,
    **kw,
  }
  got = postprocess.decode_detections(loc, scores, priors, **kw)
  want_boxes, want_scores, want_labels = _ref_decode_detections(
    loc,
    scores,
    priors,
    kw["score_threshold"],
    kw["nms_threshold"],
    kw["top_k_per_class"],
    kw["max_detections"],
  )
  assert got.boxes.dtype == np.float32
  assert got.scores.dtype == np.float32
  assert got.labels.dtype == np.int32
  np.testing.assert_array_equal(got.labels, want_labels)
  np.testing.assert_array_equal(got.scores, want_scores)
  np.testing.assert_allclose(got.boxes, want_boxes, atol=1e-6)
  return got


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_detections_matches_reference(seed):
  rng = np.random.default_rng(seed)
  priors = _random_priors(rng, 300)
  loc = rng.normal(0, 1, (300, 4)).astype(np.float32)
  logits = rng.normal(0, 2, (300, 5))
  logits[:, 0] += 2.0
  scores = _softmax(logits)
  got = _check_against_reference(
    loc, scores, priors, score_threshold=0.05, top_k_per_class=40
  )
  assert 0 < len(got.scores) <= 200
  assert np.all(np.diff(got.scores) <= 0)
  assert np.all((got.boxes >= 0) & (got.boxes <= 1))
  assert set(got.labels.tolist()) <= {1, 2, 3, 4}


def test_decode_detections_caps_and_ties():
  rng = np.random.default_rng(3)
  priors = _random_priors(rng, 200)
  loc = rng.normal(0, 0.5, (200, 4)).astype(np.float32)
  # Coarse scores: ties inside the per-class cap and across classes.
  scores = rng.integers(0, 5, (200, 4)).astype(np.float32) / 8
  got = _check_against_reference(
    loc, scores, priors, top_k_per_class=7, max_detections=12
  )
  assert len(got.scores) == 12
  # Without NMS (threshold 1 suppresses nothing) the caps are exact.
  got = _check_against_reference(
    loc, scores, priors, nms_threshold=1.0, top_k_per_class=7,
    max_detections=1000,
  )  # fmt: skip
  assert np.bincount(got.labels, minlength=4).tolist() == [0, 7, 7, 7]
  got = _check_against_reference(
    loc, scores, priors, nms_threshold=1.0, top_k_per_class=7,
    max_detections=10,
  )  # fmt: skip
  assert len(got.scores) == 10


def test_decode_detections_without_caps():
  rng = np.random.default_rng(7)
  priors = _random_priors(rng, 400)
  loc = rng.normal(0, 0.5, (400, 4)).astype(np.float32)
  scores = rng.integers(0, 6, (400, 4)).astype(np.float32) / 8  # ties
  got = _check_against_reference(
    loc, scores, priors, top_k_per_class=None, max_detections=None
  )
  assert len(got.scores) > 300  # more than one block, all classes
  assert set(got.labels.tolist()) == {1, 2, 3}


def test_decode_detections_untrained_ssd300():
  """Uniform scores on the real 8732 priors: the per-class cap bounds work."""
  rng = np.random.default_rng(4)
  priors = default_boxes(*SSD300_PRIORS)
  loc = rng.normal(0, 0.1, (len(priors), 4)).astype(np.float32)
  scores = _softmax(rng.normal(0, 0.05, (len(priors), 3)))
  assert np.all(scores > 0.01)
  got = _check_against_reference(
    loc, scores, priors, top_k_per_class=150, max_detections=100
  )
  assert len(got.scores) == 100
  got = postprocess.decode_detections(loc, scores, priors, nms_threshold=1.0)
  assert len(got.scores) == 200  # 2 classes x 400 capped, then 200


def test_decode_detections_no_detections():
  rng = np.random.default_rng(5)
  priors = _random_priors(rng, 50)
  scores = np.zeros((50, 4), np.float32)
  scores[:, 0] = 1.0
  scores[:, 1:] = 0.01  # not strictly above the threshold
  got = postprocess.decode_detections(np.zeros((50, 4)), scores, priors)
  assert got.boxes.shape == (0, 4) and got.boxes.dtype == np.float32
  assert got.scores.shape == (0,) and got.scores.dtype == np.float32
  assert got.labels.shape == (0,) and got.labels.dtype == np.int32
  empty = postprocess.empty_detections()
  for a, b in zip(got, empty, strict=True):
    assert a.shape == b.shape and a.dtype == b.dtype
  # P = 0 too.
  got = postprocess.decode_detections(
    np.zeros((0, 4)), np.zeros((0, 3)), np.zeros((0, 4))
  )
  assert got.boxes.shape == (0, 4)


def test_decode_detections_clips_to_unit_square():
  priors = np.array([[0.05, 0.5, 0.3, 0.3], [0.9, 0.9, 0.4, 0.4]], np.float32)
  scores = np.array([[0.1, 0.9], [0.2, 0.8]], np.float32)
  got = postprocess.decode_detections(np.zeros((2, 4)), scores, priors)
  np.testing.assert_allclose(
    got.boxes, [[0.0, 0.35, 0.2, 0.65], [0.7, 0.7, 1.0, 1.0]], atol=1e-6
  )
  assert got.labels.tolist() == [1, 1]


def test_decode_detections_batch_equals_loop():
  rng = np.random.default_rng(6)
  priors = _random_priors(rng, 100)
  loc = rng.normal(0, 1, (3, 100, 4)).astype(np.float32)
  scores = _softmax(rng.normal(0, 2, (3, 100, 4)))
  got = postprocess.decode_detections_batch(
    loc, scores, priors, valid=np.array([True, False, True]), max_detections=9
  )
  assert len(got) == 2
  for out, b in zip(got, [0, 2], strict=True):
    want = postprocess.decode_detections(
      loc[b], scores[b], priors, max_detections=9
    )
    for x, y in zip(out, want, strict=True):
      np.testing.assert_array_equal(x, y)


def test_decode_detections_bad_input():
  priors = np.zeros((10, 4), np.float32)
  with pytest.raises(ValueError, match=r"loc must be \[P, 4\] with P = 10"):
    postprocess.decode_detections(np.zeros((9, 4)), np.zeros((10, 3)), priors)
  with pytest.raises(ValueError, match=r"scores must be \[P, C\]"):
    postprocess.decode_detections(np.zeros((10, 4)), np.zeros((10, 1)), priors)
  with pytest.raises(ValueError, match=r"priors must be \[P, 4\]"):
    postprocess.decode_detections(
      np.zeros((10, 4)), np.zeros((10, 3)), priors.T
    )
  with pytest.raises(ValueError, match="max_detections must be >= 1"):
    postprocess.decode_detections(
      np.zeros((10, 4)), np.zeros((10, 3)), priors, max_detections=0
    )
  with pytest.raises(ValueError, match="decode_detections_batch"):
    postprocess.decode_detections_batch(
      np.zeros((2, 10, 4)), np.zeros((3, 10, 3)), priors
    )


@pytest.mark.parametrize("cap", [1.5, True, "3"])
def test_decode_detections_caps_must_be_integers(cap):
  # Found by tests/test_fuzz.py: 1.5 gave numpy's "Partition index must be
  # integer" TypeError.
  priors = np.full((3, 4), 0.5, np.float32)
  with pytest.raises(ValueError, match="top_k_per_class must be >= 1 or None"):
    postprocess.decode_detections(
      np.zeros((3, 4)), np.full((3, 3), 0.5), priors, top_k_per_class=cap
    )
  got = postprocess.decode_detections(
    np.zeros((3, 4)), np.full((3, 3), 0.5), priors, top_k_per_class=np.int64(1)
  )
  assert np.bincount(got.labels).max() <= 1
