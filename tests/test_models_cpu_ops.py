"""Tests for ssd_jax/models/cpu_ops.py against flax's max_pool."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax.models import cpu_ops


def _random(shape, seed, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), shape).astype(dtype)


def _uses_custom_vjp(fn, *args) -> bool:
  return "custom_vjp_call" in str(jax.make_jaxpr(fn)(*args))


def _pool_grad(pool, x, g, **kwargs):
  y, vjp = jax.vjp(lambda x: pool(x, **kwargs), x)
  return y, vjp(g)[0]


def _numpy_pool_grad(x, g, k):
  """First maximal element of each k x k window (row-major) gets g."""
  n, h, w, c = x.shape
  dx = np.zeros_like(x)
  for b in range(n):
    for i in range(h // k):
      for j in range(w // k):
        for ch in range(c):
          win = x[b, i * k : i * k + k, j * k : j * k + k, ch]
          r, s = np.unravel_index(np.argmax(win), win.shape)
          dx[b, i * k + r, j * k + s, ch] += g[b, i, j, ch]
  return dx


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [2, 3])
def test_max_pool_matches_flax_and_numpy(ties, k):
  x = _random((2, 6 * k // 2 * 2, 4 * k, 3), 14)
  if ties:  # post-ReLU zeros and repeated positive values
    x = jnp.maximum(jnp.round(x * 2) / 2, 0)
  kwargs = {"window_shape": (k, k), "strides": (k, k)}
  y_ref = nn.max_pool(x, **kwargs)
  g = _random(y_ref.shape, 15)
  want = _pool_grad(nn.max_pool, x, g, **kwargs)
  got = _pool_grad(cpu_ops.max_pool, x, g, **kwargs)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
  np.testing.assert_array_equal(
    got[1], _numpy_pool_grad(np.asarray(x), np.asarray(g), k)
  )
  # A valid subgradient: each window passes its gradient to exactly one
  # element, so the gradient of sum(y) has sum == number of windows.
  ones = _pool_grad(cpu_ops.max_pool, x, jnp.ones_like(y_ref), **kwargs)[1]
  assert float(ones.sum()) == y_ref.size
  assert set(np.unique(np.asarray(ones))) <= {0.0, 1.0}


@pytest.mark.parametrize(
  "shape,padding",
  [
    ((1, 7, 7, 2), ((0, 1), (0, 1))),  # Caffe ceil mode (pool3 at 75)
    ((1, 7, 6, 2), "SAME"),
    ((1, 7, 5, 2), "VALID"),  # odd sides: last row/column dropped
    ((2, 6, 7, 3), ((1, 0), (2, 2))),  # leading padding, dropped column
    ((1, 3, 3, 1), ((4, 0), (0, 1))),  # a window of padding only
  ],
)
def test_max_pool_padding(shape, padding):
  x = _random(shape, 16)
  kwargs = {"window_shape": (2, 2), "strides": (2, 2), "padding": padding}
  y_ref = nn.max_pool(x, **kwargs)
  g = _random(y_ref.shape, 17)
  want = _pool_grad(nn.max_pool, x, g, **kwargs)
  got = _pool_grad(cpu_ops.max_pool, x, g, **kwargs)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_array_equal(a, b)


def test_max_pool_overlapping_falls_back():
  x = _random((1, 5, 5, 2), 18)
  kwargs = {"window_shape": (3, 3), "strides": (1, 1), "padding": "SAME"}
  np.testing.assert_array_equal(
    cpu_ops.max_pool(x, **kwargs), nn.max_pool(x, **kwargs)
  )
  fast = lambda x: cpu_ops.max_pool(x, **kwargs)
  assert not _uses_custom_vjp(fast, x)
  assert _uses_custom_vjp(
    lambda x: cpu_ops.max_pool(x, (2, 2), strides=(2, 2)), x
  )


def test_max_pool_bfloat16_jit_and_empty():
  x = jnp.maximum(_random((2, 8, 8, 4), 19), 0).astype(jnp.bfloat16)
  pool = jax.jit(lambda x: cpu_ops.max_pool(x, (2, 2), strides=(2, 2)))
  ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  assert pool(x).dtype == jnp.bfloat16
  np.testing.assert_array_equal(
    jax.jit(jax.grad(lambda x: pool(x).astype(jnp.float32).sum()))(x),
    jax.grad(lambda x: ref(x).astype(jnp.float32).sum())(x),
  )
  empty = jnp.zeros((0, 4, 4, 3))
  assert cpu_ops.max_pool(empty, (2, 2), strides=(2, 2)).shape == (0, 2, 2, 3)


def test_max_pool_rejects_bad_rank():
  with pytest.raises(ValueError, match="cpu_ops.max_pool: expects NHWC"):
    cpu_ops.max_pool(jnp.zeros((4, 4, 3)), (2, 2), strides=(2, 2))
