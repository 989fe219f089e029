"""Tests for ssd_jax/models/layers.py: the shared convolution, the width."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ssd_jax.models import layers

F32 = dict(dtype=jnp.float32, param_dtype=jnp.float32)


def test_scaled_channels_rounds_and_keeps_one():
  assert layers.scaled_channels(512, 1.0) == 512
  assert layers.scaled_channels(512, 0.25) == 128
  assert layers.scaled_channels(1024, 1 / 16) == 64
  assert layers.scaled_channels(100, 0.125) == 12  # round(12.5), banker's
  assert layers.scaled_channels(64, 0.001) == 1


def test_fc6_dilation_and_padding_reach():
  # fc6 is a 3x3 conv with dilation 6 and padding 6: a single non-zero
  # input pixel reaches outputs 6 pixels away, and the side is kept.
  layer = layers.conv(1, 3, "fc6", padding=6, dilation=6, **F32)
  x = jnp.zeros((1, 13, 13, 1)).at[0, 6, 6, 0].set(1.0)
  kernel = jnp.ones((3, 3, 1, 1))
  y = layer.apply({"params": {"kernel": kernel, "bias": jnp.zeros(1)}}, x)
  hit = np.argwhere(np.asarray(y[0, :, :, 0]) != 0)
  assert y.shape == x.shape
  assert {tuple(p) for p in hit} == {
    (i, j) for i in (0, 6, 12) for j in (0, 6, 12)
  }


@pytest.mark.parametrize(
  "kernel, stride, padding, dilation",
  [(3, 1, 1, 1), (3, 2, 1, 1), (4, 1, 1, 1), (3, 1, 6, 6), (1, 1, 0, 1)],
)
def test_conv_equals_lax_conv(kernel, stride, padding, dilation):
  layer = layers.conv(
    5, kernel, "c", stride=stride, padding=padding, dilation=dilation, **F32
  )
  x = jax.random.normal(jax.random.key(0), (2, 15, 15, 3))
  params = layer.init(jax.random.key(1), x)["params"]
  params["bias"] = jnp.arange(5.0)
  y = layer.apply({"params": params}, x)
  ref = lax.conv_general_dilated(
    x,
    params["kernel"],
    (stride, stride),
    [(padding, padding)] * 2,
    rhs_dilation=(dilation, dilation),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=lax.Precision.HIGHEST,
  ) + jnp.arange(5.0)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_conv_init_xavier_uniform_zero_bias():
  layer = layers.conv(256, 3, "c", **F32)
  params = layer.init(jax.random.key(0), jnp.zeros((1, 8, 8, 128)))["params"]
  kernel = np.asarray(params["kernel"])
  assert kernel.shape == (3, 3, 128, 256)
  bound = math.sqrt(6 / (9 * (128 + 256)))
  assert np.abs(kernel).max() <= bound
  np.testing.assert_allclose(kernel.std(), bound / math.sqrt(3), rtol=0.02)
  np.testing.assert_array_equal(params["bias"], 0.0)


def test_conv_dtypes():
  layer = layers.conv(4, 3, "c", dtype=jnp.bfloat16, param_dtype=jnp.float32)
  y, variables = layer.init_with_output(
    jax.random.key(0), jnp.ones((1, 5, 5, 2))
  )
  assert y.dtype == jnp.bfloat16
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))


@pytest.mark.parametrize(
  "size, kernel, padding, dilation",
  [
    ((19, 19), 3, ((6, 6), (6, 6)), 6),  # SSD300's fc6
    ((32, 32), 3, ((6, 6), (6, 6)), 6),  # SSD512's fc6
    ((10, 7), 3, ((2, 2), (2, 2)), 2),
    ((9, 11), 3, ((0, 3), (4, 1)), 3),  # uneven padding, odd sizes
    ((8, 8), 2, ((0, 0), (0, 0)), 4),
    ((5, 5), 3, ((1, 1), (1, 1)), 1),  # no dilation: the plain conv
  ],
)
def test_dilated_conv_by_phases_equals_the_dilated_conv(
  size, kernel, padding, dilation
):
  x = jax.random.normal(jax.random.key(0), (2, *size, 3))
  k = jax.random.normal(jax.random.key(1), (kernel, kernel, 3, 4))
  got = layers.dilated_conv_by_phases(
    x, k, padding, dilation, precision=lax.Precision.HIGHEST
  )
  want = lax.conv_general_dilated(
    x,
    k,
    (1, 1),
    padding,
    rhs_dilation=(dilation, dilation),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=lax.Precision.HIGHEST,
  )
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _dilated_convs(fn, *args):
  """How many convolutions of the jitted HLO have a kernel dilation."""
  text = jax.jit(fn).lower(*args).as_text()
  convs = [line for line in text.splitlines() if "convolution(" in line]
  dilations = [re.findall(r"rhs_dilate = \[(\d+), (\d+)\]", c) for c in convs]
  dilated = sum(any(int(v) > 1 for pair in d for v in pair) for d in dilations)
  return dilated, len(convs)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_conv_takes_the_phases_where_the_backend_asks(backend, monkeypatch):
  # On the CPU fc6 stays a dilated convolution; on a PHASE_BACKENDS
  # backend (the GPU) it is an undilated one by phases, with equal results.
  if backend == "gpu":
    monkeypatch.setattr(layers, "PHASE_BACKENDS", (jax.default_backend(),))
  layer = layers.conv(8, 3, "fc6", padding=6, dilation=6, **F32)
  x = jax.random.normal(jax.random.key(0), (2, 19, 19, 4))
  params = layer.init(jax.random.key(1), x)["params"]
  fn = lambda p, x: layer.apply({"params": p}, x)
  dilated, total = _dilated_convs(fn, params, x)
  assert total == 1 and dilated == (1 if backend == "cpu" else 0)
  want = lax.conv_general_dilated(
    x,
    params["kernel"],
    (1, 1),
    [(6, 6)] * 2,
    rhs_dilation=(6, 6),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=lax.Precision.HIGHEST,
  )
  np.testing.assert_allclose(fn(params, x), want, rtol=1e-5, atol=1e-5)
  # Strided, grouped or undilated convolutions are lax's own either way.
  plain = layers.conv(8, 3, "c", stride=2, **F32)
  p = plain.init(jax.random.key(2), x)["params"]
  assert _dilated_convs(lambda p, x: plain.apply({"params": p}, x), p, x) == (
    0,
    1,
  )
