"""Tests for ssd_jax/models/cpu_ops.py against plain lax / flax ops."""

import importlib.util
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ssd_jax.models import cpu_ops

_DN = ("NHWC", "HWIO", "NHWC")


@pytest.fixture
def always_fast(monkeypatch):
  """Makes every eligible convolution take the custom path, however small."""
  monkeypatch.setattr(cpu_ops, "MIN_FAST_PIXELS", 1)
  monkeypatch.setattr(cpu_ops, "MIN_FAST_CHANNEL_PRODUCT", 1)
  monkeypatch.setattr(cpu_ops, "MIN_FAST_CHANNELS", 1)


def _conv_and_grads(conv, x, w, g, padding, **kwargs):
  def f(x, w):
    return conv(x, w, (1, 1), padding, dimension_numbers=_DN, **kwargs)

  y, vjp = jax.vjp(f, x, w)
  return (y, *vjp(g))


def _random(shape, seed, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), shape).astype(dtype)


def _uses_custom_vjp(fn, *args) -> bool:
  return "custom_vjp_call" in str(jax.make_jaxpr(fn)(*args))


# float32 sums of up to N*Ho*Wo ~ 500 products, summed in another order
# than XLA's convolution: relative errors of a few 1e-7 * sqrt(terms).
_F32 = {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.parametrize(
  "kernel,padding",
  [
    ((3, 3), ((1, 1), (1, 1))),
    ((3, 3), ((0, 0), (0, 0))),
    ((3, 3), ((2, 0), (1, 2))),
    ((1, 1), ((0, 0), (0, 0))),
    ((2, 3), "SAME"),
    ((3, 3), "VALID"),
  ],
)
def test_conv_matches_lax_value_and_grads(always_fast, kernel, padding):
  x = _random((2, 9, 11, 5), 0)
  w = _random((*kernel, 5, 7), 1)
  ref = lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_DN)
  g = _random(ref.shape, 2)
  want = _conv_and_grads(lax.conv_general_dilated, x, w, g, padding)
  got = _conv_and_grads(cpu_ops.conv_general_dilated, x, w, g, padding)
  for a, b in zip(got, want, strict=True):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, **_F32)
  assert _uses_custom_vjp(
    lambda x, w: cpu_ops.conv_general_dilated(
      x, w, (1, 1), padding, dimension_numbers=_DN
    ),
    x,
    w,
  )


def test_kernel_grad_matches_numpy_loop():
  x = np.asarray(_random((2, 4, 5, 3), 3))
  g = np.asarray(_random((2, 4, 5, 2), 4))
  pads = ((1, 1), (1, 1))
  got = cpu_ops._kernel_grad(jnp.asarray(x), jnp.asarray(g), (3, 3, 3, 2), pads)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.zeros((3, 3, 3, 2), np.float64)
  for i in range(3):
    for j in range(3):
      for n in range(2):
        for h in range(4):
          for c in range(5):
            want[i, j] += np.outer(xp[n, h + i, c + j], g[n, h, c])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "kwargs",
  [
    {"window_strides": (2, 2)},
    {"rhs_dilation": (2, 2)},
    {"lhs_dilation": (2, 1)},
    {"feature_group_count": 5},
    {"padding": ((-1, 0), (0, 0))},
    {"dimension_numbers": ("NCHW", "OIHW", "NCHW")},
  ],
)
def test_unsupported_cases_fall_back_to_lax(always_fast, kwargs):
  args = {
    "window_strides": (1, 1),
    "padding": ((1, 1), (1, 1)),
    "dimension_numbers": _DN,
  } | kwargs
  x = _random((1, 8, 8, 5), 5)
  if args["dimension_numbers"][1] == "OIHW":
    x = _random((1, 5, 8, 8), 5)
    w = _random((10, 5, 3, 3), 6)
  elif "feature_group_count" in args:
    w = _random((3, 3, 1, 10), 6)
  else:
    w = _random((3, 3, 5, 10), 6)
  assert not cpu_ops.use_fast_conv(x.shape, w.shape, **args)
  want = jax.grad(lambda x, w: lax.conv_general_dilated(x, w, **args).sum())(
    x, w
  )
  fast = lambda x, w: cpu_ops.conv_general_dilated(x, w, **args)
  got = jax.grad(lambda x, w: fast(x, w).sum())(x, w)
  np.testing.assert_array_equal(got, want)
  assert not _uses_custom_vjp(fast, x, w)


def test_small_maps_and_channels_fall_back_by_default():
  def fast(lhs_shape, rhs_shape):
    return cpu_ops.use_fast_conv(
      lhs_shape, rhs_shape, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DN
    )

  assert not fast((1, 31, 33, 64), (3, 3, 64, 128))  # 31 * 33 < 32^2
  assert fast((1, 32, 32, 64), (3, 3, 64, 128))
  assert fast((1, 38, 38, 512), (3, 3, 512, 512))
  assert not fast((1, 19, 19, 512), (3, 3, 512, 512))
  assert not fast((1, 300, 300, 64), (3, 3, 64, 64))  # 64 * 64 < 64 * 128
  assert not fast((1, 300, 300, 3), (3, 3, 3, 64))
  assert not fast((1, 38, 38, 512), (3, 3, 512, 16))  # a box head


def test_empty_batch(always_fast):
  x = jnp.zeros((0, 6, 6, 3))
  w = _random((3, 3, 3, 4), 7)
  g = jnp.zeros((0, 6, 6, 4))
  y, dx, dw = _conv_and_grads(
    cpu_ops.conv_general_dilated, x, w, g, ((1, 1), (1, 1))
  )
  assert y.shape == (0, 6, 6, 4) and dx.shape == x.shape
  np.testing.assert_array_equal(dw, np.zeros((3, 3, 3, 4), np.float32))


def test_flax_conv_plugin_jit_and_remat(always_fast):
  x = _random((2, 10, 10, 3), 8)
  plain = nn.Conv(6, (3, 3), padding=1)
  fast = nn.Conv(
    6, (3, 3), padding=1, conv_general_dilated=cpu_ops.conv_general_dilated
  )
  params = plain.init(jax.random.key(0), x)

  def loss(module, p, x):
    return (jax.checkpoint(lambda p, x: module.apply(p, x))(p, x) ** 2).sum()

  want = jax.jit(jax.grad(lambda p, x: loss(plain, p, x), (0, 1)))(params, x)
  got = jax.jit(jax.grad(lambda p, x: loss(fast, p, x), (0, 1)))(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_pmap(always_fast):
  n = jax.local_device_count()
  x = _random((n, 1, 8, 8, 3), 9)
  w = _random((3, 3, 3, 4), 10)

  def grads(x, w):
    def f(w):
      y = cpu_ops.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DN
      )
      return (y**2).sum()

    return lax.psum(jax.grad(f)(w), "batch")

  got = jax.pmap(grads, axis_name="batch", in_axes=(0, None))(x, w)
  want = jax.grad(
    lambda w: (
      lax.conv_general_dilated(
        x.reshape(n, 8, 8, 3),
        w,
        (1, 1),
        ((1, 1), (1, 1)),
        dimension_numbers=_DN,
      )
      ** 2
    ).sum()
  )(w)
  np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4)


def test_bfloat16(always_fast):
  x = _random((2, 12, 12, 16), 11)
  w = _random((3, 3, 16, 8), 12) * 0.2
  g = _random((2, 12, 12, 8), 13)
  pads = ((1, 1), (1, 1))
  want = _conv_and_grads(lax.conv_general_dilated, x, w, g, pads)
  xb, wb, gb = (a.astype(jnp.bfloat16) for a in (x, w, g))
  got = _conv_and_grads(cpu_ops.conv_general_dilated, xb, wb, gb, pads)
  for a, b in zip(got, want, strict=True):
    assert a.dtype == jnp.bfloat16
    # bfloat16 inputs carry 8 bits of mantissa (relative error 2^-9 each);
    # sums of ~100 (dx) to ~300 (dw) such products stay within ~2% of the
    # largest entry.
    scale = float(jnp.abs(b).max())
    np.testing.assert_allclose(
      a.astype(jnp.float32), b, rtol=0, atol=0.02 * scale
    )


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


def test_bench_layers_smoke(capsys):
  path = pathlib.Path(__file__).parents[1] / "experiments" / "bench_layers.py"
  spec = importlib.util.spec_from_file_location("bench_layers", path)
  bench_layers = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench_layers)
  rows = bench_layers.bench(1, 1, jnp.float32, {"pool4"})
  assert [r["layer"] for r in rows] == ["pool4"]
  assert rows[0]["plain_grad_min_ms"] > 0 and rows[0]["grad_ratio"] > 0
  assert "pool4" in capsys.readouterr().out
