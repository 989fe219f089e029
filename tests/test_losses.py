"""Tests for ssd_jax.losses against a float64 numpy loop."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssd_jax import losses


def _ref_loss(loc_pred, logits, loc_t, cls_t, ratio=3.0, norm=None):
  """Paper Eq. 1 image by image with sorted() for hard negative mining."""
  loc_sum = conf_sum = 0.0
  total_pos = 0
  for b in range(logits.shape[0]):
    z = logits[b].astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    pos = [p for p in range(len(z)) if cls_t[b, p] > 0]
    negs = [p for p in range(len(z)) if cls_t[b, p] == 0]
    k = min(int(np.floor(ratio * len(pos))), len(negs))
    negs = sorted(negs, key=lambda p: (logp[p, 0], p))[:k]  # hardest first
    for p in pos + negs:
      conf_sum -= logp[p, cls_t[b, p]]
    for p in pos:
      d = np.abs(loc_pred[b, p].astype(np.float64) - loc_t[b, p])
      loc_sum += np.where(d < 1, 0.5 * d * d, d - 0.5).sum()
    total_pos += len(pos)
  n = max(total_pos if norm is None else norm, 1)
  return loc_sum / n, conf_sum / n, total_pos


def _random_batch(rng, b=3, p=40, c=5, pos_frac=0.1):
  loc_pred = rng.normal(size=(b, p, 4)).astype(np.float32) * 2
  logits = rng.normal(size=(b, p, c)).astype(np.float32) * 3
  loc_t = rng.normal(size=(b, p, 4)).astype(np.float32)
  cls_t = np.where(
    rng.uniform(size=(b, p)) < pos_frac, rng.integers(1, c, (b, p)), 0
  ).astype(np.int32)
  return loc_pred, logits, loc_t, cls_t


@settings(max_examples=30, deadline=None)
@given(
  st.integers(0, 2**31 - 1),
  st.sampled_from([0.0, 0.05, 0.3, 0.9]),
  st.sampled_from([1.0, 3.0, 7.5]),
)
def test_multibox_loss_equals_reference(seed, pos_frac, ratio):
  batch = _random_batch(np.random.default_rng(seed), pos_frac=pos_frac)
  loss, metrics = losses.multibox_loss(*batch, neg_pos_ratio=ratio)
  loc, conf, n = _ref_loss(*batch, ratio=ratio)
  np.testing.assert_allclose(metrics["loc_loss"], loc, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(metrics["conf_loss"], conf, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(loss, loc + conf, rtol=1e-4, atol=1e-5)
  assert metrics["num_positives"] == n


def test_hand_worked_single_image():
  # Two priors, one positive of class 1: ratio 3 keeps the only negative.
  logits = np.log(np.array([[[0.25, 0.75], [0.5, 0.5]]], np.float32))
  loc_pred = np.array([[[0.5, -2.0, 0, 0], [9, 9, 9, 9]]], np.float32)
  loc_t = np.zeros((1, 2, 4), np.float32)
  cls_t = np.array([[1, 0]], np.int32)
  loss, m = losses.multibox_loss(loc_pred, logits, loc_t, cls_t)
  np.testing.assert_allclose(m["loc_loss"], 0.125 + 1.5, rtol=1e-6)
  np.testing.assert_allclose(
    m["conf_loss"], -np.log(0.75) - np.log(0.5), rtol=1e-6
  )
  np.testing.assert_allclose(loss, m["loc_loss"] + m["conf_loss"], rtol=1e-6)


def test_hard_negatives_picks_highest_background_loss():
  bg_loss = jnp.array([0.1, 5.0, 0.3, 2.0, 9.0, 0.2])
  positive = jnp.array([False, False, False, False, True, False])
  neg = losses.hard_negatives(bg_loss, positive, 2.0)
  np.testing.assert_array_equal(neg, [False, True, False, True, False, False])
  # Cap: never more negatives than there are.
  neg = losses.hard_negatives(bg_loss, positive, 100.0)
  np.testing.assert_array_equal(neg, ~np.asarray(positive))
  # Ties go to the lower index.
  neg = losses.hard_negatives(jnp.ones(6), positive, 1.0)
  np.testing.assert_array_equal(neg, [True] + [False] * 5)


@settings(max_examples=40, deadline=None)
@given(
  st.integers(0, 2**31 - 1),
  st.integers(1, 60),
  st.sampled_from([0.5, 1.0, 3.0, 50.0]),
)
def test_hard_negatives_equals_a_sorted_loop_with_ties(seed, p, ratio):
  """Integer losses (many ties): the hardest first, then the lower index."""
  rng = np.random.default_rng(seed)
  bg_loss = rng.integers(0, 4, p).astype(np.float32)
  positive = rng.uniform(size=p) < rng.uniform(0, 0.5)
  negs = [i for i in range(p) if not positive[i]]
  k = min(int(np.floor(ratio * positive.sum())), len(negs))
  want = np.zeros(p, bool)
  want[sorted(negs, key=lambda i: (-bg_loss[i], i))[:k]] = True
  got = losses.hard_negatives(
    jnp.asarray(bg_loss), jnp.asarray(positive), ratio
  )
  np.testing.assert_array_equal(got, want)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 80))
def test_kth_largest_equals_sorted_values(seed, p):
  """Mixed signs, ties, +-0.0, infinities and subnormals, every k."""
  rng = np.random.default_rng(seed)
  pool = np.array(
    [0.0, -0.0, 1e-42, -1e-42, 1.0, -1.0, 3.5, np.inf, -np.inf], np.float32
  )
  values = np.where(
    rng.uniform(size=p) < 0.5,
    rng.choice(pool, p),
    rng.normal(size=p).astype(np.float32) * 10.0 ** rng.integers(-3, 4, p),
  ).astype(np.float32)
  want = np.sort(values)[::-1]
  every_k = jax.jit(jax.vmap(losses.kth_largest, in_axes=(None, 0)))
  got = np.asarray(every_k(jnp.asarray(values), jnp.arange(1, p + 1)))
  np.testing.assert_array_equal(got, want)  # +-0.0 compare equal


def test_kth_largest_hand_worked_and_traced_k():
  values = jnp.array([2.0, -1.0, 7.0, 2.0, -np.inf])
  assert [float(losses.kth_largest(values, k)) for k in range(1, 6)] == [
    7.0, 2.0, 2.0, -1.0, -np.inf,
  ]  # fmt: skip
  ks = jnp.arange(1, 6)
  np.testing.assert_array_equal(
    jax.vmap(losses.kth_largest, in_axes=(None, 0))(values, ks),
    [7.0, 2.0, 2.0, -1.0, -np.inf],
  )
  # bfloat16 values are taken exactly (as float32).
  half = jnp.array([0.1, 0.3, 0.2], jnp.bfloat16)
  assert losses.kth_largest(half, 2) == half[2].astype(jnp.float32)


def test_no_positives_is_zero_with_finite_gradients():
  rng = np.random.default_rng(0)
  loc_pred, logits, loc_t, _ = _random_batch(rng)
  cls_t = np.zeros(logits.shape[:2], np.int32)
  (loss, m), grads = jax.value_and_grad(
    losses.multibox_loss, argnums=(0, 1), has_aux=True
  )(loc_pred, logits, loc_t, cls_t)
  assert loss == 0.0 and m["num_positives"] == 0
  for g in grads:
    assert np.all(np.isfinite(g)) and np.all(g == 0)


def test_gradients_match_finite_differences():
  batch = _random_batch(np.random.default_rng(1), b=2, p=12, c=3, pos_frac=0.3)
  fn = lambda lp, lg: losses.multibox_loss(lp, lg, *batch[2:])[0]
  grads = jax.grad(fn, argnums=(0, 1))(batch[0], batch[1])
  for argnum, g in enumerate(grads):
    x = np.asarray(batch[argnum], np.float64)
    idx = np.unravel_index(np.argmax(np.abs(g)), g.shape)
    eps = 1e-3
    hi, lo = x.copy(), x.copy()
    hi[idx] += eps
    lo[idx] -= eps
    args_hi = [batch[0], batch[1]]
    args_lo = [batch[0], batch[1]]
    args_hi[argnum], args_lo[argnum] = hi, lo
    fd = (fn(*args_hi) - fn(*args_lo)) / (2 * eps)
    np.testing.assert_allclose(g[idx], fd, rtol=2e-2)


def test_num_positives_overrides_normaliser():
  batch = _random_batch(np.random.default_rng(2), pos_frac=0.2)
  _, m = losses.multibox_loss(*batch)
  loss, m2 = losses.multibox_loss(*batch, num_positives=4 * m["num_positives"])
  np.testing.assert_allclose(loss, m["loss"] / 4, rtol=1e-6)
  assert m2["num_positives"] == m["num_positives"]
  # Split batch with the global normaliser: the parts sum to the whole.
  n = m["num_positives"]
  parts = [
    losses.multibox_loss(*[x[i : i + 1] for x in batch], num_positives=n)[0]
    for i in range(batch[0].shape[0])
  ]
  np.testing.assert_allclose(sum(parts), m["loss"], rtol=1e-5)


def test_bfloat16_inputs_computed_in_float32():
  batch = _random_batch(np.random.default_rng(3))
  loss, _ = losses.multibox_loss(
    batch[0].astype(jnp.bfloat16), batch[1].astype(jnp.bfloat16), *batch[2:]
  )
  assert loss.dtype == jnp.float32
  ref, _ = losses.multibox_loss(*batch)
  np.testing.assert_allclose(loss, ref, rtol=5e-2)


@pytest.mark.parametrize("x, want", [(0.5, 0.125), (-2.0, 1.5), (1.0, 0.5)])
def test_smooth_l1(x, want):
  np.testing.assert_allclose(losses.smooth_l1(jnp.float32(x)), want)


def test_jit_equals_eager_and_single_trace():
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fn(*args):
    return losses.multibox_loss(*args)

  for seed in range(3):
    batch = _random_batch(np.random.default_rng(seed))
    got, _ = fn(*batch)
    want, _ = losses.multibox_loss(*batch)
    np.testing.assert_allclose(got, want, rtol=1e-5)
