"""Tests for ssd_jax/models/layers.py: the shared convolution, the width."""

import math
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ssd_jax.models import cpu_ops, layers

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


# --- ConvBN -----------------------------------------------------------------


def numpy_conv(x, kernel, stride=1, padding=0, groups=1):
  """Reference convolution in float64: NHWC input, HWIO kernel [k, k, C /
  groups, O], symmetric zero padding (torch's `Conv2d` semantics), one
  matrix product per kernel tap and group."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  x = np.pad(np.asarray(x, np.float64), pad)
  kernel = np.asarray(kernel, np.float64)
  b, h, w, _ = x.shape
  k, _, cg, o = kernel.shape
  ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
  out = np.zeros((b, ho, wo, groups, o // groups))
  for i in range(k):
    for j in range(k):
      patch = x[:, i : i + stride * (ho - 1) + 1 : stride]
      patch = patch[:, :, j : j + stride * (wo - 1) + 1 : stride]
      patch = patch.reshape(b, ho, wo, groups, cg)
      tap = kernel[i, j].reshape(cg, groups, o // groups).transpose(1, 0, 2)
      out += np.einsum("bhwgc,gco->bhwgo", patch, tap)
  return out.reshape(b, ho, wo, o)


def numpy_conv_bn(x, params, stats, stride=1, padding=0, groups=1, eps=1e-5):
  """Reference ConvBN in evaluation mode, before the activation."""
  y = numpy_conv(x, params["conv"]["kernel"], stride, padding, groups)
  bn = {k: np.asarray(v, np.float64) for k, v in params["bn"].items()}
  mean, var = (np.asarray(stats["bn"][k], np.float64) for k in ("mean", "var"))
  return (y - mean) / np.sqrt(var + eps) * bn["scale"] + bn["bias"]


def random_conv_bn_variables(layer, x, seed=0):
  """`layer.init` with random BN scale/bias and running statistics (not
  the 0/1 of a fresh init, so that their mapping is tested)."""
  variables = layer.init(jax.random.key(seed), x)
  rng = np.random.default_rng(seed)
  params, stats = variables["params"], variables["batch_stats"]
  c = params["bn"]["scale"].shape
  params["bn"]["scale"] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
  params["bn"]["bias"] = jnp.asarray(rng.normal(0, 0.3, c), jnp.float32)
  stats["bn"]["mean"] = jnp.asarray(rng.normal(0, 0.3, c), jnp.float32)
  stats["bn"]["var"] = jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32)
  return {"params": params, "batch_stats": stats}


@pytest.mark.parametrize(
  "features, kernel, stride, padding, groups, activation",
  [
    (6, 3, 2, 1, 1, "relu"),  # strided: torch's symmetric padding
    (6, 3, 1, 1, 1, None),
    (5, 1, 1, 0, 1, "relu"),
    (6, 7, 2, 3, 1, "relu"),  # a ResNet stem
    (4, 3, 2, 1, 4, "relu6"),  # depthwise
    (8, 3, 1, 1, 4, None),  # depthwise with a channel multiplier of 2
  ],
)
def test_conv_bn_eval_equals_numpy_conv_then_bn(
  features, kernel, stride, padding, groups, activation
):
  act = {"relu": jax.nn.relu, "relu6": jax.nn.relu6, None: None}[activation]
  layer = layers.ConvBN(
    features, kernel, stride, padding, groups, activation=act, **F32
  )
  x = jax.random.normal(jax.random.key(0), (2, 10, 9, 4))
  variables = random_conv_bn_variables(layer, x)
  assert set(variables["params"]) == {"conv", "bn"}  # no conv bias
  assert variables["params"]["conv"]["kernel"].shape == (
    kernel,
    kernel,
    4 // groups,
    features,
  )
  got = layer.apply(variables, x)
  want = numpy_conv_bn(
    x,
    variables["params"],
    variables["batch_stats"],
    stride,
    padding,
    groups,
  )
  if activation == "relu":
    want = np.maximum(want, 0)
  elif activation == "relu6":
    want = np.clip(want, 0, 6)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv_bn_strided_padding_is_symmetric():
  # A 1x1-ones kernel at stride 2, padding 1, on a 4x4 input reads input
  # rows/columns -1, 1, 3 (torch); flax's "SAME" would read 0, 2.
  layer = layers.ConvBN(1, 3, 2, 1, activation=None, **F32)
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  variables = layer.init(jax.random.key(0), x)
  kernel = jnp.zeros((3, 3, 1, 1)).at[1, 1].set(1.0)  # the centre tap
  variables["params"]["conv"]["kernel"] = kernel
  got = layer.apply(variables, x)  # BN at init: mean 0, var 1, identity
  want = np.asarray(x)[:, ::2, ::2] / np.sqrt(1 + 1e-5)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_conv_bn_train_uses_batch_statistics_and_updates_running_ones():
  from flax.errors import ModifyScopeVariableError

  momentum, eps = 0.8, 1e-3
  layer = layers.ConvBN(
    3, 3, 1, 1, activation=None, bn_momentum=momentum, bn_eps=eps, **F32
  )
  x = 2.0 + 3.0 * jax.random.normal(jax.random.key(0), (4, 6, 6, 2))
  variables = random_conv_bn_variables(layer, x)
  got, updates = layer.apply(variables, x, train=True, mutable=["batch_stats"])
  y = numpy_conv(x, variables["params"]["conv"]["kernel"], 1, 1)
  mean, var = y.mean((0, 1, 2)), y.var((0, 1, 2))  # biased, as flax
  bn = variables["params"]["bn"]
  want = (y - mean) / np.sqrt(var + eps) * np.asarray(bn["scale"])
  want += np.asarray(bn["bias"])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  old = variables["batch_stats"]["bn"]
  new = updates["batch_stats"]["bn"]
  np.testing.assert_allclose(
    new["mean"],
    momentum * np.asarray(old["mean"]) + (1 - momentum) * mean,
    rtol=1e-5,
    atol=1e-5,
  )
  np.testing.assert_allclose(
    new["var"],
    momentum * np.asarray(old["var"]) + (1 - momentum) * var,
    rtol=1e-5,
    atol=1e-5,
  )
  # Evaluation mode reads the running statistics and changes nothing.
  assert layer.apply(variables, x).shape == got.shape
  with pytest.raises(ModifyScopeVariableError, match="batch_stats"):
    layer.apply(variables, x, train=True)  # not mutable


def test_conv_bn_default_momentum_is_torchs_default():
  # flax decay 0.9 == torch momentum 0.1; eps 1e-5 as torch's.
  layer = layers.ConvBN(2, 1)
  assert layer.bn_momentum == 0.9 and layer.bn_eps == 1e-5


def batch_norm_kinds(model, variables, x) -> dict[str, int]:
  """How many of flax's and of `cpu_ops`' BatchNorms a training-mode apply
  calls: {"flax": n, "cpu_ops": m}."""
  kinds = {"flax": 0, "cpu_ops": 0}

  def count(next_fun, args, kwargs, context):
    if context.method_name == "__call__":
      if type(context.module) is nn.BatchNorm:
        kinds["flax"] += 1
      elif type(context.module) is cpu_ops.BatchNorm:
        kinds["cpu_ops"] += 1
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(count):
    model.apply(variables, x, train=True, mutable=["batch_stats"])
  return kinds


def assert_cpu_fast_ops_everywhere(model, variables, x) -> None:
  """`model` (cpu_fast_ops off) calls only flax's BatchNorms, one per
  running mean in `variables`; with cpu_fast_ops only `cpu_ops.BatchNorm`s;
  and both give the same training outputs and running statistics."""
  fast = model.clone(cpu_fast_ops=True)
  flat = flax.traverse_util.flatten_dict(variables["batch_stats"])
  bns = sum(k[-1] == "mean" for k in flat)
  assert bns > 0
  assert batch_norm_kinds(model, variables, x) == {"flax": bns, "cpu_ops": 0}
  assert batch_norm_kinds(fast, variables, x) == {"flax": 0, "cpu_ops": bns}
  train = dict(train=True, mutable=["batch_stats"])
  want = model.apply(variables, x, **train)
  got = fast.apply(variables, x, **train)
  # Float rounding grows through a deep net (ResNet-50: ~7e-5 of the
  # outputs' scale); a wrong statistic would be off by far more.
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-4 * scale)


def test_conv_bn_cpu_fast_ops_same_training_results():
  """cpu_fast_ops: cpu_ops.BatchNorm, the same variables, and in training
  the same outputs, running statistics and gradients as flax's."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(4, 7, 7, 3)) * 20, jnp.float32)
  plain = layers.ConvBN(5, 3, stride=2, padding=1, **F32)
  fast = plain.clone(cpu_fast_ops=True)
  variables = plain.init(jax.random.key(0), x)
  assert jax.tree.map(np.shape, fast.init(jax.random.key(0), x)) == (
    jax.tree.map(np.shape, variables)
  )
  variables = {
    "params": {
      **variables["params"],
      "bn": {
        "scale": jnp.asarray(rng.uniform(0.5, 1.5, 5), jnp.float32),
        "bias": jnp.asarray(rng.normal(size=5), jnp.float32),
      },
    },
    "batch_stats": variables["batch_stats"],
  }
  assert batch_norm_kinds(plain, variables, x) == {"flax": 1, "cpu_ops": 0}
  assert batch_norm_kinds(fast, variables, x) == {"flax": 0, "cpu_ops": 1}

  def loss(layer, params, x):
    y, new = layer.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    return jnp.sum(jnp.sin(y)), (y, new["batch_stats"])

  grad = jax.grad(loss, argnums=(1, 2), has_aux=True)
  (gp_fast, gx_fast), (y_fast, s_fast) = grad(fast, variables["params"], x)
  (gp, gx), (y, s) = grad(plain, variables["params"], x)
  np.testing.assert_allclose(y_fast, y, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(s_fast), jax.tree.leaves(s), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  for a, b in zip(
    jax.tree.leaves((gp_fast, gx_fast)), jax.tree.leaves((gp, gx)), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_conv_bn_dtypes():
  layer = layers.ConvBN(4, 3, padding=1, dtype=jnp.bfloat16)
  y, variables = layer.init_with_output(
    jax.random.key(0), jnp.ones((1, 5, 5, 2))
  )
  assert y.dtype == jnp.bfloat16
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))


@pytest.mark.parametrize(
  "k, stride, pad",
  [(3, 1, (1, 1)), (3, 2, (1, 1)), (5, 2, (2, 2)), (3, 1, (0, 1))],
)
def test_depthwise_conv_by_shifts_equals_grouped_conv(k, stride, pad):
  rng = np.random.default_rng(k + stride)
  x = jnp.asarray(rng.normal(size=(2, 9, 11, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 1, 6)), jnp.float32)
  padding = (pad, pad)

  def ref(x, w):
    return jax.lax.conv_general_dilated(
      x, w, (stride, stride), padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=6,
    )  # fmt: skip

  def ours(x, w):
    return layers.depthwise_conv_by_shifts(x, w, stride, padding)

  np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
  g_ours = jax.grad(lambda x, w: (ours(x, w) ** 2).sum(), (0, 1))(x, w)
  g_ref = jax.grad(lambda x, w: (ref(x, w) ** 2).sum(), (0, 1))(x, w)
  for a, b in zip(g_ours, g_ref, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # The shared hook takes this path on the CPU, and only for depthwise.
  hook = layers.conv_general_dilated(
    x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=6,
  )  # fmt: skip
  np.testing.assert_allclose(hook, ref(x, w), rtol=1e-5, atol=1e-5)
  grouped = jnp.asarray(rng.normal(size=(k, k, 3, 6)), jnp.float32)
  out = layers.conv_general_dilated(
    x, grouped, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=2,
  )  # fmt: skip
  assert out.shape[-1] == 6


class _ConvRelu(nn.Module):
  """`layers.conv_relu` in a compact module, for the tests."""

  batch_norm_after: bool

  @nn.compact
  def __call__(self, x, train=False):
    return layers.conv_relu(
      x,
      5,
      3,
      "conv1",
      stride=2,
      padding=1,
      train=train,
      batch_norm_after=self.batch_norm_after,
      **F32,
    )


def test_conv_relu_without_batch_norm_is_relu_of_the_conv():
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))
  layer = _ConvRelu(batch_norm_after=False)
  variables = layer.init(jax.random.key(1), x)
  assert set(variables) == {"params"} and set(variables["params"]) == {"conv1"}
  p = variables["params"]["conv1"]
  p["bias"] = jnp.asarray(np.random.default_rng(0).normal(0, 0.5, 5))
  want = np.maximum(numpy_conv(x, p["kernel"], 2, 1) + np.asarray(p["bias"]), 0)
  got = layer.apply(variables, x, train=True)  # train changes nothing
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv_relu_with_batch_norm_is_conv_bias_bn_relu():
  # torchvision's vgg16_bn layout: the convolution keeps its bias, then
  # BatchNorm `<name>_bn`, then ReLU.
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))
  layer = _ConvRelu(batch_norm_after=True)
  variables = layer.init(jax.random.key(1), x)
  assert set(variables["params"]) == {"conv1", "conv1_bn"}
  assert set(variables["batch_stats"]) == {"conv1_bn"}
  rng = np.random.default_rng(0)
  params, stats = variables["params"], variables["batch_stats"]
  params["conv1"]["bias"] = jnp.asarray(rng.normal(0, 0.5, 5), jnp.float32)
  params["conv1_bn"]["scale"] = jnp.asarray(rng.uniform(0.5, 1.5, 5))
  params["conv1_bn"]["bias"] = jnp.asarray(rng.normal(0, 0.3, 5))
  stats["conv1_bn"]["mean"] = jnp.asarray(rng.normal(0, 0.3, 5))
  stats["conv1_bn"]["var"] = jnp.asarray(rng.uniform(0.5, 2.0, 5))
  y = numpy_conv(x, params["conv1"]["kernel"], 2, 1)
  y = y + np.asarray(params["conv1"]["bias"], np.float64)
  bn = {k: np.asarray(v, np.float64) for k, v in params["conv1_bn"].items()}

  def reference(mean, var):
    return np.maximum(
      (y - mean) / np.sqrt(var + 1e-5) * bn["scale"] + bn["bias"], 0
    )

  got = layer.apply(variables, x)  # evaluation: the running statistics
  want = reference(*(np.asarray(stats["conv1_bn"][k]) for k in ("mean", "var")))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  got, updates = layer.apply(
    variables, x, train=True, mutable=["batch_stats"]
  )  # training: the batch's statistics (biased variance, as flax)
  want = reference(y.mean((0, 1, 2)), y.var((0, 1, 2)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert not np.allclose(
    updates["batch_stats"]["conv1_bn"]["mean"], stats["conv1_bn"]["mean"]
  )
