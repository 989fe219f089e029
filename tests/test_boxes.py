"""Tests for ssd_jax.boxes against slow numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ssd_jax import boxes as box_lib


def _ref_iou(a, b):
  """Pure-Python IoU of two corner boxes (0 for empty intersections)."""
  iw = min(a[2], b[2]) - max(a[0], b[0])
  ih = min(a[3], b[3]) - max(a[1], b[1])
  if iw <= 0 or ih <= 0:
    return 0.0
  inter = iw * ih
  area = lambda x: max(x[2] - x[0], 0) * max(x[3] - x[1], 0)
  return inter / (area(a) + area(b) - inter)


def _random_corners(rng, n, min_size=0.01):
  xy = rng.uniform(0, 0.9, (n, 2))
  wh = rng.uniform(min_size, 0.5, (n, 2))
  return np.concatenate([xy, np.minimum(xy + wh, 1.0)], -1).astype(np.float32)


# Coordinates on a 1/4096 grid: equal, touching, zero-size and inverted
# boxes are all common, but no area underflows float32. Areas below float32's
# smallest normal number (~1e-38) are flushed to zero by XLA, so such boxes
# count as zero-area (IoU 0), which the exact reference would not model.
corner_boxes = hnp.arrays(
  np.float32,
  st.tuples(st.integers(0, 6), st.just(4)),
  elements=st.integers(0, 4096).map(lambda k: k / 4096),
)


@settings(max_examples=50, deadline=None)
@given(corner_boxes, corner_boxes)
def test_pairwise_iou_matches_loop(a, b):
  got = np.asarray(box_lib.pairwise_iou(a, b))
  want = np.array([[_ref_iou(x, y) for y in b] for x in a]).reshape(
    len(a), len(b)
  )
  assert got.shape == (len(a), len(b))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_pairwise_iou_hand_worked():
  a = np.array([[0.0, 0.0, 0.5, 0.5]])
  b = np.array(
    [
      [0.0, 0.0, 0.5, 0.5],  # identical: 1
      [0.25, 0.0, 0.75, 0.5],  # half overlap: 0.125 / 0.375
      [0.5, 0.5, 1.0, 1.0],  # touching corner: 0
      [0.2, 0.2, 0.2, 0.4],  # zero area: 0
      [0.4, 0.4, 0.1, 0.1],  # inverted: 0
    ]
  )
  np.testing.assert_allclose(
    box_lib.pairwise_iou(a, b), [[1.0, 1 / 3, 0.0, 0.0, 0.0]], atol=1e-6
  )


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jnp"])
def test_interval_overlap_hand_worked(xp):
  lo1 = np.array([0.0, 0.0, 0.0, 0.2], np.float32)
  hi1 = np.array([0.5, 0.5, 0.5, 0.4], np.float32)
  lo2 = np.array([0.25, 0.5, 0.7, 0.0], np.float32)
  hi2 = np.array([0.75, 0.9, 0.9, 1.0], np.float32)
  got = box_lib.interval_overlap(lo1, hi1, lo2, hi2, xp=xp)
  # Half inside, touching, apart by 0.2, nested.
  np.testing.assert_allclose(got, [0.25, 0.0, -0.2, 0.2], atol=1e-7)
  broadcast = box_lib.interval_overlap(lo1[:, None], hi1[:, None], lo2, hi2)
  assert broadcast.shape == (4, 4)


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jnp"])
def test_iou_from_overlaps_is_elementwise_iou_bit_for_bit(xp):
  """From per-axis overlaps broadcast over a grid of pairs (columns x rows,
  as default_boxes scores a box against a grid), the same bits as
  elementwise_iou of the formed pairs, degenerate boxes included."""
  rng = np.random.default_rng(3)
  g = _random_corners(rng, 7)
  g[0] = [0.2, 0.2, 0.2, 0.4]  # Zero area.
  g[1] = [0.4, 0.4, 0.1, 0.1]  # Inverted.
  cols = np.sort(rng.uniform(0, 1, (5, 2)), -1).astype(np.float32)  # [X, 2]
  rows = np.sort(rng.uniform(0, 1, (6, 2)), -1).astype(np.float32)  # [Y, 2]
  cols[0] = [0.9, 0.95]  # Apart from most boxes.
  pairs = np.zeros((7, 5, 6, 4), np.float32)
  pairs[..., 0::2] = cols[None, :, None, :]
  pairs[..., 1::2] = rows[None, None, :, :]
  want = box_lib.elementwise_iou(g[:, None, None], pairs, xp=xp)
  iw = np.minimum(g[:, None, 2], cols[:, 1]) - np.maximum(
    g[:, None, 0], cols[:, 0]
  )  # [G, X]
  ih = np.minimum(g[:, None, 3], rows[:, 1]) - np.maximum(
    g[:, None, 1], rows[:, 0]
  )  # [G, Y]
  got = box_lib.iou_from_overlaps(
    iw[:, :, None],
    ih[:, None, :],
    box_lib.box_area(g, xp=np)[:, None, None],
    ((cols[:, 1] - cols[:, 0])[:, None] * (rows[:, 1] - rows[:, 0]))[None],
    xp=xp,
  )
  assert got.shape == (7, 5, 6)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert (np.asarray(got)[:2] == 0).all()  # Degenerate boxes: IoU 0.
  loop = [
    [[_ref_iou(g[i], pairs[i, x, y]) for y in range(6)] for x in range(5)]
    for i in range(7)
  ]
  np.testing.assert_allclose(np.asarray(got), loop, rtol=1e-6, atol=1e-7)


def test_pairwise_iou_empty_and_degenerate_gradients():
  assert box_lib.pairwise_iou(np.zeros((0, 4)), np.zeros((3, 4))).shape == (
    0,
    3,
  )
  assert box_lib.pairwise_iou(np.zeros((2, 4)), np.zeros((0, 4))).shape == (
    2,
    0,
  )
  zeros = jnp.zeros((2, 4))
  np.testing.assert_array_equal(box_lib.pairwise_iou(zeros, zeros), 0.0)
  grad = jax.grad(lambda x: box_lib.pairwise_iou(x, zeros).sum())(zeros)
  assert np.all(np.isfinite(grad))


def test_pairwise_iou_underflowing_areas_stay_finite():
  # The example CI's random fuzzing found: areas of ~1e-38 are subnormal in
  # float32 and XLA may flush them to zero. The answer must still be a
  # finite IoU in [0, 1], never NaN from a 0/0.
  tiny = np.finfo(np.float32).tiny
  a = np.array([[0.0, tiny, tiny, 0.5]], np.float32)
  b = np.array([[0.0, 0.0, tiny, 1.0]], np.float32)
  got = np.asarray(box_lib.pairwise_iou(a, b))
  assert np.all(np.isfinite(got)) and 0.0 <= got[0, 0] <= 1.0


def test_format_round_trip_and_area():
  rng = np.random.default_rng(0)
  corners = _random_corners(rng, 20)
  centre = box_lib.corners_to_center(corners)
  np.testing.assert_allclose(
    box_lib.center_to_corners(centre), corners, atol=1e-6
  )
  np.testing.assert_allclose(
    centre[:, 2] * centre[:, 3], box_lib.box_area(corners), rtol=1e-5
  )
  np.testing.assert_allclose(
    box_lib.center_to_corners(np.array([0.5, 0.5, 0.2, 0.4])),
    [0.4, 0.3, 0.6, 0.7],
    atol=1e-6,
  )
  assert box_lib.box_area(np.array([0.5, 0.5, 0.4, 0.9])) == 0.0


def test_encode_hand_worked():
  prior = np.array([[0.5, 0.5, 0.2, 0.4]])
  box = np.array([[0.42, 0.34, 0.62, 0.74]])  # cx .52, cy .54, w .2, h .4
  want = [[0.02 / (0.2 * 0.1), 0.04 / (0.4 * 0.1), 0.0, 0.0]]
  np.testing.assert_allclose(box_lib.encode(box, prior), want, atol=1e-5)
  big = np.array([[0.3, 0.1, 0.7, 0.9]])  # twice the prior
  np.testing.assert_allclose(
    box_lib.encode(big, prior)[0, 2:], [np.log(2) / 0.2] * 2, atol=1e-5
  )


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([(0.1, 0.2), (1.0, 1.0)]))
def test_decode_encode_round_trip(seed, variances):
  rng = np.random.default_rng(seed)
  corners = _random_corners(rng, 16)
  priors = box_lib.corners_to_center(_random_corners(rng, 16))
  deltas = box_lib.encode(corners, priors, variances)
  np.testing.assert_allclose(
    box_lib.decode(deltas, priors, variances), corners, atol=2e-5
  )


def test_decode_batched_and_clamped():
  priors = np.array([[0.5, 0.5, 0.1, 0.1]], np.float32)
  deltas = np.array([[[0.0, 0.0, 1e4, -1e4]], [[0.0, 0.0, 0.0, 0.0]]])
  out = np.asarray(box_lib.decode(deltas, priors))
  assert out.shape == (2, 1, 4)
  assert np.all(np.isfinite(out))
  width = out[0, 0, 2] - out[0, 0, 0]
  np.testing.assert_allclose(width, 0.1 * np.exp(box_lib.MAX_LOG_SCALE))
  np.testing.assert_allclose(out[1, 0], [0.45, 0.45, 0.55, 0.55], atol=1e-6)


def test_encode_degenerate_box_is_finite():
  prior = np.array([[0.5, 0.5, 0.2, 0.2]])
  assert np.all(
    np.isfinite(box_lib.encode(np.array([[0.5, 0.5, 0.5, 0.5]]), prior))
  )


@pytest.mark.parametrize("fn", [box_lib.encode, box_lib.decode])
def test_jit_equals_eager(fn):
  rng = np.random.default_rng(1)
  a = _random_corners(rng, 8)
  priors = box_lib.corners_to_center(_random_corners(rng, 8))
  np.testing.assert_allclose(
    jax.jit(fn)(a, priors), fn(a, priors), rtol=1e-6, atol=1e-6
  )


def _ref_devkit_iou(a, b):
  """VOCevaldet.m's overlap of two 1-based inclusive pixel boxes."""
  iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
  ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
  if iw <= 0 or ih <= 0:
    return 0.0
  ua = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (
    b[3] - b[1] + 1
  )
  return iw * ih / (ua - iw * ih)


@settings(max_examples=30, deadline=None)
@given(corner_boxes, corner_boxes)
def test_pairwise_iou_numpy_float64_matches_loop_and_jnp(a, b):
  a64, b64 = a.astype(np.float64), b.astype(np.float64)
  got = box_lib.pairwise_iou(a64, b64, xp=np)
  assert isinstance(got, np.ndarray) and got.dtype == np.float64
  want = np.array([[_ref_iou(x, y) for y in b64] for x in a64]).reshape(
    len(a), len(b)
  )
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
  # float32 numpy: the same arithmetic as the jnp path.
  np.testing.assert_allclose(
    box_lib.pairwise_iou(a, b, xp=np),
    box_lib.pairwise_iou(a, b),
    rtol=1e-6,
    atol=1e-7,
  )


def test_iou_inclusive_is_the_devkit_overlap():
  rng = np.random.default_rng(2)
  xy = rng.integers(1, 40, (30, 2)).astype(np.float64)
  a = np.concatenate([xy, xy + rng.integers(-2, 15, (30, 2))], -1)
  b = a[rng.permutation(30)] + rng.integers(-3, 4, (30, 4))
  got = box_lib.pairwise_iou(a, b, inclusive=True, xp=np)
  want = np.array([[_ref_devkit_iou(x, y) for y in b] for x in a])
  np.testing.assert_allclose(got, want, rtol=1e-12)
  # One-pixel boxes: the devkit counts them, the continuous IoU does not.
  one = np.array([[3.0, 3, 3, 3]])
  assert box_lib.pairwise_iou(one, one, inclusive=True, xp=np)[0, 0] == 1.0
  assert box_lib.pairwise_iou(one, one, xp=np)[0, 0] == 0.0
  # Aligned pairs: elementwise_iou is the diagonal of pairwise_iou.
  np.testing.assert_array_equal(
    box_lib.elementwise_iou(a, b, inclusive=True, xp=np), np.diagonal(got)
  )


def test_pairwise_iou_tensorflow_backend_matches_jnp():
  tf = pytest.importorskip("tensorflow")
  tnp = tf.experimental.numpy
  rng = np.random.default_rng(3)
  a = _random_corners(rng, 9)
  b = np.concatenate([_random_corners(rng, 5), np.zeros((2, 4), np.float32)])
  got = box_lib.pairwise_iou(tf.constant(a), tf.constant(b), xp=tnp)
  assert got.dtype == tf.float32
  np.testing.assert_allclose(
    got.numpy(), box_lib.pairwise_iou(a, b), rtol=1e-6, atol=1e-7
  )
  in_graph = tf.function(lambda x, y: box_lib.pairwise_iou(x, y, xp=tnp))
  np.testing.assert_array_equal(in_graph(a, b).numpy(), got.numpy())


def test_decode_numpy_matches_jnp_decode():
  rng = np.random.default_rng(1)
  cxcy = rng.uniform(0.05, 0.95, (500, 2))
  priors = np.concatenate([cxcy, rng.uniform(0.05, 0.6, (500, 2))], -1)
  priors = priors.astype(np.float32)
  deltas = rng.normal(0, 2, (2, 500, 4)).astype(np.float32)
  deltas[0, :10, 2:] = 100.0  # hits the size clamp
  got = box_lib.decode(deltas, priors, xp=np)
  want = np.asarray(box_lib.decode(deltas, priors))
  assert isinstance(got, np.ndarray) and got.dtype == np.float32
  assert got.shape == (2, 500, 4)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert np.all(np.isfinite(got))
  encoded = box_lib.encode(got[1], priors, xp=np)
  np.testing.assert_allclose(encoded, deltas[1], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jnp"])
def test_bad_shapes_name_the_function_and_argument(xp):
  # Found by tests/test_fuzz.py: a last axis of 3 or 5 gave a silent result
  # of the wrong columns, or an IndexError / broadcasting error.
  three, good = np.zeros((2, 3)), np.zeros((2, 4))
  priors = np.full((2, 4), 0.5)
  with pytest.raises(ValueError, match=r"center_to_corners: boxes must be"):
    box_lib.center_to_corners(three, xp=xp)
  with pytest.raises(ValueError, match=r"corners_to_center: boxes must be"):
    box_lib.corners_to_center(np.zeros((2, 5)), xp=xp)
  with pytest.raises(
    ValueError, match=r"box_area: boxes must be \[\.\.\., 4\]"
  ):
    box_lib.box_area(np.float32(1.0), xp=xp)
  with pytest.raises(ValueError, match="elementwise_iou: boxes1 must be"):
    box_lib.elementwise_iou(three, good, xp=xp)
  with pytest.raises(
    ValueError,
    match=r"elementwise_iou: the leading axes of boxes1 \(2, 4\) and boxes2 "
    r"\(3, 4\) do not broadcast",
  ):
    box_lib.elementwise_iou(good, np.zeros((3, 4)), xp=xp)
  with pytest.raises(
    ValueError, match=r"pairwise_iou: boxes1 must be \[N, 4\]"
  ):
    box_lib.pairwise_iou(np.zeros(4), good, xp=xp)
  with pytest.raises(
    ValueError, match=r"pairwise_iou: boxes2 must be \[M, 4\]"
  ):
    box_lib.pairwise_iou(good, np.zeros((1, 2, 4)), xp=xp)
  with pytest.raises(ValueError, match="encode: boxes must be"):
    box_lib.encode(three, priors, xp=xp)
  with pytest.raises(ValueError, match=r"encode: priors must be \[P, 4\]"):
    box_lib.encode(good, priors[None], xp=xp)
  with pytest.raises(ValueError, match="encode: the leading axes of boxes"):
    box_lib.encode(np.zeros((3, 4)), priors, xp=xp)
  with pytest.raises(ValueError, match="decode: deltas must be"):
    box_lib.decode(three, priors, xp=xp)
  with pytest.raises(ValueError, match="decode: the leading axes of deltas"):
    box_lib.decode(np.zeros((3, 4)), priors, xp=xp)
  for variances in ((0.1,), (0.1, 0.2, 0.3), 0.1):
    with pytest.raises(ValueError, match="encode: variances must be two"):
      box_lib.encode(good, priors, variances, xp=xp)
    with pytest.raises(ValueError, match="decode: variances must be two"):
      box_lib.decode(good, priors, variances, xp=xp)
  # Batched deltas [B, P, 4] with priors [P, 4] still broadcast.
  assert box_lib.decode(np.zeros((3, 2, 4)), priors, xp=xp).shape == (3, 2, 4)


def test_shape_checks_pass_unknown_tensorflow_dimensions():
  tf = pytest.importorskip("tensorflow")
  tnp = tf.experimental.numpy
  area = tf.function(
    lambda x: box_lib.box_area(x, xp=tnp),
    input_signature=[tf.TensorSpec([None, None], tf.float32)],
  )
  np.testing.assert_allclose(area(np.array([[0, 0, 2, 3]], np.float32)), [6])
  with pytest.raises(ValueError, match=r"got shape \(None, 3\)"):
    tf.function(
      lambda x: box_lib.box_area(x, xp=tnp),
      input_signature=[tf.TensorSpec([None, 3], tf.float32)],
    ).get_concrete_function()


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jnp"])
def test_encode_float16_degenerate_box_is_finite(xp):
  # Found by tests/test_fuzz.py: the 1e-8 clamp is 0 in float16 (log -inf).
  box = np.array([[0.5, 0.5, 0.5, 0.5]], np.float16)
  prior = np.array([[0.5, 0.5, 0.2, 0.2]], np.float16)
  got = np.asarray(box_lib.encode(box, prior, xp=xp))
  assert got.dtype == np.float16 and np.all(np.isfinite(got))
  # float32 keeps the 1e-8 clamp: log(1e-8 / 0.2) / 0.2.
  got32 = np.asarray(box_lib.encode(box.astype(np.float32), prior, xp=xp))
  np.testing.assert_allclose(got32[0, 2:], np.log(1e-8 / 0.2) / 0.2, rtol=1e-4)


def test_decode_exports_with_a_symbolic_batch():
  # jax.export with a symbolic leading axis: the shape checks skip the
  # symbolic sizes instead of failing on them.
  priors = np.array([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.4]], np.float32)
  (b,) = jax.export.symbolic_shape("b")
  exported = jax.export.export(jax.jit(lambda x: box_lib.decode(x, priors)))(
    jax.ShapeDtypeStruct((b, 2, 4), jnp.float32)
  )
  loc = np.random.default_rng(0).normal(size=(3, 2, 4)).astype(np.float32)
  np.testing.assert_allclose(
    exported.call(loc), box_lib.decode(loc, priors), atol=1e-6
  )
