"""Tests for ssd_jax.matching.match against a slow reference loop."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssd_jax import boxes as box_lib
from ssd_jax import default_boxes as db
from ssd_jax.matching import match, match_batch

# A small grid: 8x8, 4x4 and 2x2 maps on a 64-pixel input (368 priors).
PRIORS = db.default_boxes(
  64, (8, 4, 2), (8, 16, 32), (10, 24, 40), (24, 40, 60), ((2,), (2, 3), (2,))
)


def _ref_match(gt_boxes, gt_labels, priors, threshold):
  """The paper's rule as a plain loop over an IoU matrix.

  Uses the IoUs of `pairwise_iou` (tested on its own) so that comparisons
  and ties are the same numbers as the code under test.
  """
  iou = np.asarray(
    box_lib.pairwise_iou(gt_boxes, box_lib.center_to_corners(priors))
  )
  num_gt, num_priors = iou.shape
  real = [m for m in range(num_gt) if gt_labels[m] > 0]
  matched = np.full(num_priors, -1)
  for p in range(num_priors):
    best, best_iou = -1, -1.0
    for m in real:
      if iou[m, p] > best_iou:
        best, best_iou = m, iou[m, p]
    if best >= 0 and best_iou >= threshold:
      matched[p] = best
  forced = {}
  for m in real:
    bp = int(np.argmax(iou[m]))  # first maximum: lowest prior index
    if iou[m, bp] <= 0:
      continue
    if bp not in forced or iou[m, bp] > forced[bp][0]:
      forced[bp] = (iou[m, bp], m)
  for p, (_, m) in forced.items():
    matched[p] = m
  labels = np.concatenate([np.asarray(gt_labels), [0]])  # index -1 -> 0
  return matched, labels[matched]


def _random_gt(rng, num_real, num_pad, num_classes=5):
  xy = rng.uniform(0, 0.8, (num_real, 2))
  wh = rng.uniform(0.03, 0.6, (num_real, 2))
  boxes = np.concatenate([xy, np.minimum(xy + wh, 1)], -1)
  labels = rng.integers(1, num_classes, num_real)
  # Padding rows carry garbage boxes on purpose: the label alone decides.
  pad = rng.uniform(0, 1, (num_pad, 4))
  return (
    np.concatenate([boxes, pad]).astype(np.float32),
    np.concatenate([labels, np.zeros(num_pad, int)]).astype(np.int32),
  )


@settings(max_examples=40, deadline=None)
@given(
  st.integers(0, 2**31 - 1),
  st.integers(0, 6),
  st.integers(0, 3),
  st.sampled_from([0.3, 0.5, 0.7]),
)
def test_match_equals_reference(seed, num_real, num_pad, threshold):
  rng = np.random.default_rng(seed)
  gt_boxes, gt_labels = _random_gt(rng, num_real, num_pad)
  loc, cls = match(gt_boxes, gt_labels, PRIORS, threshold)
  matched, want_cls = _ref_match(gt_boxes, gt_labels, PRIORS, threshold)
  np.testing.assert_array_equal(cls, want_cls)
  assert loc.dtype == jnp.float32 and cls.dtype == jnp.int32
  pos = matched >= 0
  want_loc = np.asarray(box_lib.encode(gt_boxes[matched[pos]], PRIORS[pos]))
  np.testing.assert_allclose(np.asarray(loc)[pos], want_loc, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(loc)[~pos], 0.0)
  # Some prior is positive exactly when there is a real box.
  assert pos.any() == (num_real > 0)


def test_forced_match_below_threshold():
  # A tiny box whose best IoU is far below 0.5 still gets its best prior.
  gt = np.array([[0.50, 0.50, 0.52, 0.52]], np.float32)
  loc, cls = match(gt, np.array([3]), PRIORS)
  iou = np.asarray(box_lib.pairwise_iou(gt, box_lib.center_to_corners(PRIORS)))
  assert iou.max() < 0.5
  assert np.asarray(cls).sum() == 3  # exactly one prior, class 3
  assert int(np.argmax(cls)) == int(np.argmax(iou[0]))
  p = int(np.argmax(cls))
  decoded = box_lib.decode(loc[p][None], PRIORS[p][None])
  np.testing.assert_allclose(decoded[0], gt[0], atol=1e-5)


def test_threshold_is_inclusive_and_prior_itself_matches():
  priors = np.array([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]])
  gt = np.array([[0.0, 0.0, 0.5, 0.5]], np.float32)  # exactly prior 0
  loc, cls = match(gt, np.array([1]), priors)
  np.testing.assert_array_equal(cls, [1, 0])
  np.testing.assert_allclose(loc[0], 0.0, atol=1e-6)
  # IoU exactly 0.5 with a second prior: it matches (>=), not forced.
  priors = np.array([[0.25, 0.25, 0.5, 0.5], [0.25, 0.5, 0.5, 1.0]])
  _, cls = match(gt, np.array([2]), priors)
  np.testing.assert_array_equal(cls, [2, 2])


def test_no_ground_truth_all_padding_and_zero_rows():
  for gt, labels in [
    (np.zeros((0, 4), np.float32), np.zeros((0,), np.int32)),
    (np.random.default_rng(0).uniform(size=(4, 4)), np.zeros(4, np.int32)),
  ]:
    loc, cls = match(gt, labels, PRIORS)
    assert loc.shape == (len(PRIORS), 4) and cls.shape == (len(PRIORS),)
    np.testing.assert_array_equal(cls, 0)
    np.testing.assert_array_equal(loc, 0.0)


def test_zero_area_ground_truth_claims_nothing():
  gt = np.array([[0.3, 0.3, 0.3, 0.6], [0.1, 0.1, 0.6, 0.6]], np.float32)
  loc, cls = match(gt, np.array([1, 2]), PRIORS)
  assert not np.any(np.asarray(cls) == 1)
  assert np.any(np.asarray(cls) == 2)
  assert np.all(np.isfinite(loc))


def test_duplicate_boxes_tie_goes_to_lower_index():
  box = [0.2, 0.2, 0.6, 0.6]
  gt = np.array([box, box], np.float32)
  _, cls = match(gt, np.array([1, 2]), PRIORS)
  # Identical IoUs everywhere: every match goes to the first box.
  assert np.any(np.asarray(cls) == 1)
  assert not np.any(np.asarray(cls) == 2)


def test_border_boxes():
  gt = np.array([[0.0, 0.0, 0.2, 0.2], [0.8, 0.8, 1.0, 1.0]], np.float32)
  _, cls = match(gt, np.array([1, 2]), PRIORS)
  assert set(np.unique(cls)) == {0, 1, 2}


def test_jit_vmap_and_single_trace():
  rng = np.random.default_rng(3)
  batch = [_random_gt(rng, n, 4 - n) for n in (0, 1, 3, 4)]
  gt_boxes = np.stack([b for b, _ in batch])
  gt_labels = np.stack([lab for _, lab in batch])

  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def batched(b, lab):
    return match_batch(b, lab, PRIORS)

  loc, cls = batched(gt_boxes, gt_labels)
  for i in range(len(batch)):
    e_loc, e_cls = match(gt_boxes[i], gt_labels[i], PRIORS)
    np.testing.assert_array_equal(cls[i], e_cls)
    np.testing.assert_allclose(loc[i], e_loc, atol=1e-6)
  # New values, same shapes: no retrace (assert_max_traces would raise).
  batched(gt_boxes[::-1].copy(), gt_labels[::-1].copy())
  batched(gt_boxes * 0.5, gt_labels)


def test_match_jit_equals_eager_one_image():
  gt, labels = _random_gt(np.random.default_rng(5), 3, 2)
  fn = jax.jit(match, static_argnums=(3,))
  got, want = fn(gt, labels, PRIORS, 0.5), match(gt, labels, PRIORS)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_threshold_extremes(threshold):
  gt, labels = _random_gt(np.random.default_rng(7), 2, 0)
  _, cls = match(gt, labels, PRIORS, threshold)
  _, want = _ref_match(gt, labels, PRIORS, threshold)
  np.testing.assert_array_equal(cls, want)


def test_bad_shapes_name_the_argument():
  # Found by tests/test_fuzz.py: [M, 3] boxes or [P, 3] priors matched
  # silently; mismatched labels gave a broadcasting error.
  boxes, labels = np.zeros((2, 4)), np.ones(2, np.int32)
  with pytest.raises(ValueError, match=r"match: gt_boxes must be \[M, 4\]"):
    match(boxes[:, :3], labels, PRIORS)
  with pytest.raises(ValueError, match=r"match: gt_boxes must be \[M, 4\]"):
    match(boxes[0], labels[:1], PRIORS)
  with pytest.raises(ValueError, match=r"match: gt_labels must have shape"):
    match(boxes, np.ones(3, np.int32), PRIORS)
  with pytest.raises(ValueError, match=r"match: priors must be \[P, 4\]"):
    match(boxes, labels, PRIORS[:, :3])
  with pytest.raises(ValueError, match=r"gt_boxes must be \[B, M, 4\]"):
    match_batch(boxes, labels, PRIORS)
  with pytest.raises(ValueError, match=r"match_batch: gt_labels must have"):
    match_batch(boxes[None], np.ones((3, 2), np.int32), PRIORS)


def test_no_priors_gives_empty_targets():
  loc, cls = match(
    np.array([[0.1, 0.1, 0.5, 0.5]]), np.array([1]), np.zeros((0, 4))
  )
  assert loc.shape == (0, 4) and cls.shape == (0,)
