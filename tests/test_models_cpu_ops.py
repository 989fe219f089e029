"""Tests for ssd_jax/models/cpu_ops.py against flax's max_pool and BatchNorm
(and numpy loops)."""

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


def _numpy_batch_norm(x, scale, bias, eps=1e-5):
  """float64 training-mode BatchNorm over all axes but the last."""
  x = np.asarray(x, np.float64)
  axes = tuple(range(x.ndim - 1))
  mean, var = x.mean(axes), x.var(axes)
  return (x - mean) / np.sqrt(var + eps) * scale + bias, mean, var


def _bn_variables(c, seed):
  rng = np.random.default_rng(seed)
  return {
    "params": {
      "scale": jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32),
      "bias": jnp.asarray(rng.normal(size=c), jnp.float32),
    },
    "batch_stats": {
      "mean": jnp.asarray(rng.normal(size=c), jnp.float32),
      "var": jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32),
    },
  }


def _bn_loss(module, variables, x, w):
  """sum(BatchNorm(x) * w) and the updated running statistics."""
  y, updated = module.apply(variables, x, mutable=["batch_stats"])
  return jnp.sum(y.astype(jnp.float32) * w), (y, updated["batch_stats"])


@pytest.mark.parametrize("shape", [(4, 6, 5, 3), (7, 2), (2, 3, 3, 1)])
def test_batch_norm_matches_flax_and_numpy(shape):
  x = _random(shape, 20) * 3.0 + 1.5
  w = _random(shape, 21)
  kwargs = dict(use_running_average=False, momentum=0.9, epsilon=1e-5)
  flax_bn, fast = nn.BatchNorm(**kwargs), cpu_ops.BatchNorm(**kwargs)
  key = jax.random.key(0)
  assert jax.tree.map(np.shape, fast.init(key, x)) == jax.tree.map(
    np.shape, flax_bn.init(key, x)
  )
  np.testing.assert_array_equal(
    jax.tree.leaves(fast.init(key, x)), jax.tree.leaves(flax_bn.init(key, x))
  )
  variables = _bn_variables(shape[-1], 22)
  grad = jax.grad(_bn_loss, argnums=(1, 2), has_aux=True)
  (g_vars, g_x), (y, stats) = jax.jit(grad, static_argnums=0)(
    fast, variables, x, w
  )
  (r_vars, r_x), (r_y, r_stats) = grad(flax_bn, variables, x, w)
  assert _uses_custom_vjp(lambda x: fast.apply(variables, x, mutable=True), x)
  # Values: flax's and a float64 loop's.
  want, mean, var = _numpy_batch_norm(
    x, variables["params"]["scale"], variables["params"]["bias"]
  )
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(y, r_y, rtol=1e-5, atol=1e-5)
  old = variables["batch_stats"]
  np.testing.assert_allclose(
    stats["mean"], 0.9 * old["mean"] + 0.1 * mean, rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    stats["var"], 0.9 * old["var"] + 0.1 * var, rtol=1e-5, atol=1e-6
  )
  # Gradients: flax's autodiff of its own BatchNorm.
  np.testing.assert_allclose(g_x, r_x, rtol=1e-4, atol=1e-5)
  for name in ("scale", "bias"):
    np.testing.assert_allclose(
      g_vars["params"][name], r_vars["params"][name], rtol=1e-4, atol=1e-5
    )
  # Evaluation mode: the running statistics, as flax.
  kwargs["use_running_average"] = True
  np.testing.assert_allclose(
    cpu_ops.BatchNorm(**kwargs).apply(variables, x),
    nn.BatchNorm(**kwargs).apply(variables, x),
    rtol=1e-6,
    atol=1e-6,
  )


def test_batch_norm_synchronised_equals_one_batch():
  # 4 parts normalised with their joint statistics (vmap with a named axis
  # stands for pmap's devices) are one batch of all the images: values,
  # running statistics and gradients.
  x = _random((4, 3, 5, 5, 2), 23) * 2.0 - 1.0
  w = _random(x.shape, 24)
  variables = _bn_variables(2, 25)
  kwargs = dict(use_running_average=False, momentum=0.9)
  synced = cpu_ops.BatchNorm(axis_name="batch", **kwargs)

  def parts_loss(variables, x):
    loss, (y, stats) = jax.vmap(
      lambda x, w: _bn_loss(synced, variables, x, w),
      axis_name="batch",
    )(x, w)
    return jnp.sum(loss), (y, stats)

  whole = jax.grad(_bn_loss, argnums=(1, 2), has_aux=True)
  (r_vars, r_x), (r_y, r_stats) = whole(
    nn.BatchNorm(**kwargs),
    variables,
    x.reshape(12, 5, 5, 2),
    w.reshape(12, 5, 5, 2),
  )
  (g_vars, g_x), (y, stats) = jax.grad(parts_loss, (0, 1), has_aux=True)(
    variables, x
  )
  np.testing.assert_allclose(y.reshape(r_y.shape), r_y, rtol=1e-5, atol=1e-5)
  for name in ("mean", "var"):
    for part in range(4):  # Every part updates with the joint statistics.
      np.testing.assert_allclose(
        stats[name][part], r_stats[name], rtol=1e-5, atol=1e-6
      )
  np.testing.assert_allclose(g_x.reshape(r_x.shape), r_x, rtol=1e-4, atol=1e-5)
  for name in ("scale", "bias"):
    np.testing.assert_allclose(
      g_vars["params"][name], r_vars["params"][name], rtol=1e-4, atol=1e-5
    )


def test_batch_norm_bfloat16():
  x = (_random((4, 4, 4, 3), 26) * 2.0 + 1.0).astype(jnp.bfloat16)
  variables = _bn_variables(3, 27)
  kwargs = dict(use_running_average=False, dtype=jnp.bfloat16)
  y, _ = cpu_ops.BatchNorm(**kwargs).apply(variables, x, mutable=True)
  want, _ = nn.BatchNorm(**kwargs).apply(variables, x, mutable=True)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    y.astype(np.float32), want.astype(np.float32), rtol=2e-2, atol=2e-2
  )
  grad = jax.grad(
    lambda x: jnp.sum(
      cpu_ops.BatchNorm(**kwargs)
      .apply(variables, x, mutable=True)[0]
      .astype(jnp.float32)
    )
  )(x)
  assert grad.dtype == jnp.bfloat16
