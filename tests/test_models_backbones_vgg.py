"""Tests for ssd_jax/models/backbones/vgg.py: the trunk, L2Norm, sources."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import models
from ssd_jax.models.backbones import vgg


def test_l2norm_matches_numpy_and_is_finite_at_zero():
  x = np.random.default_rng(0).normal(size=(2, 3, 3, 5)).astype(np.float32)
  x[0, 0, 0] = 0.0
  layer = models.L2Norm()
  variables = layer.init(jax.random.key(0), x)
  y = np.asarray(layer.apply(variables, x))
  norm = np.sqrt((x.astype(np.float64) ** 2).sum(-1, keepdims=True))
  ref = 20.0 * x / np.maximum(norm, 1e-5)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
  assert np.all(y[0, 0, 0] == 0)
  grads = jax.grad(lambda v, x: layer.apply(v, x).sum(), argnums=(0, 1))(
    variables, x
  )
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_ceil_mode_pool_matches_loop():
  x = np.random.default_rng(1).normal(size=(1, 5, 7, 2)).astype(np.float32)
  y = np.asarray(vgg.max_pool_2x2(jnp.asarray(x), ceil_mode=True))
  assert y.shape == (1, 3, 4, 2)
  for i in range(3):
    for j in range(4):
      window = x[0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
      np.testing.assert_array_equal(y[0, i, j], window.max((0, 1)))
  assert vgg.max_pool_2x2(jnp.asarray(x)).shape == (1, 2, 3, 2)
  assert vgg.vgg16_feature_sizes(300) == (38, 19)


@pytest.mark.parametrize("size", [300, 512, 75, 33])
def test_feature_sizes_equal_real_maps(size):
  trunk = vgg.VGG16(width=1 / 16)
  x = jnp.zeros((1, size, size, 3))
  conv4_3, fc7 = jax.eval_shape(trunk.init_with_output, jax.random.key(0), x)[0]
  assert (conv4_3.shape[1], fc7.shape[1]) == vgg.vgg16_feature_sizes(size)
  assert conv4_3.shape[1:3] == (conv4_3.shape[1],) * 2
  assert conv4_3.shape[-1] == 32 and fc7.shape[-1] == 64
  assert vgg.VGG16Backbone.feature_sizes(size) == vgg.vgg16_feature_sizes(size)


def test_backbone_is_trunk_then_l2norm_of_conv4_3():
  backbone = vgg.VGG16Backbone(width=1 / 16)
  x = jnp.asarray(np.random.default_rng(0).normal(0, 50, (2, 40, 40, 3)))
  variables = jax.jit(backbone.init)(jax.random.key(0), x)
  params = variables["params"]
  assert set(params) == {"vgg", "conv4_3_norm"}
  np.testing.assert_array_equal(params["conv4_3_norm"]["scale"], 20.0)
  scale = np.random.default_rng(1).uniform(10, 30, (32,)).astype(np.float32)
  params = {**params, "conv4_3_norm": {"scale": scale}}
  sources = backbone.apply({"params": params}, x)
  conv4_3, fc7 = models.VGG16(width=1 / 16).apply({"params": params["vgg"]}, x)
  assert len(sources) == 2
  np.testing.assert_array_equal(sources[1], fc7)
  c = np.asarray(conv4_3, np.float64)
  ref = scale * c / np.sqrt((c * c).sum(-1, keepdims=True) + 1e-10)
  np.testing.assert_allclose(sources[0], ref, rtol=1e-5, atol=1e-5)
  assert sources[0].shape == (2, 5, 5, 32) and fc7.shape == (2, 2, 2, 64)


def test_trunk_layer_names_and_shapes():
  params = jax.eval_shape(
    vgg.VGG16().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3))
  )["params"]
  names = [n for stage in vgg.VGG16_STAGES for n, _ in stage]
  assert list(params) == [*names, "fc6", "fc7"]
  assert params["conv1_1"]["kernel"].shape == (3, 3, 3, 64)
  assert params["fc6"]["kernel"].shape == (3, 3, 512, 1024)
  assert params["fc7"]["kernel"].shape == (1, 1, 1024, 1024)


def test_batch_norm_trunk_has_a_batch_norm_after_every_conv():
  x = jnp.zeros((1, 32, 32, 3))
  variables = jax.eval_shape(
    vgg.VGG16(width=1 / 16, batch_norm=True).init, jax.random.key(0), x
  )
  names = [n for stage in vgg.VGG16_STAGES for n, _ in stage] + ["fc6", "fc7"]
  want = [p for n in names for p in (n, f"{n}_bn")]
  assert list(variables["params"]) == want
  assert list(variables["batch_stats"]) == [f"{n}_bn" for n in names]
  for n, channels in [("conv1_1", 4), ("conv4_3", 32), ("fc7", 64)]:
    assert variables["params"][n]["bias"].shape == (channels,)  # kept
    assert variables["params"][f"{n}_bn"]["scale"].shape == (channels,)
    assert variables["batch_stats"][f"{n}_bn"]["var"].shape == (channels,)


def test_batch_norm_trunk_normalises_with_the_batch_in_training():
  # In training every pre-ReLU map has zero mean and unit variance per
  # channel over the batch (BN scale 1, bias 0 at init): after the ReLU of a
  # standard normal, the mean is 1/sqrt(2 pi) wherever the channel is not
  # constant. Evaluation reads the fresh running statistics (0, 1) instead.
  x = 50.0 * jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  trunk = vgg.VGG16(width=1 / 16, batch_norm=True)
  variables = trunk.init(jax.random.key(1), x)
  (conv4_3, _), _ = trunk.apply(
    variables, x, train=True, mutable=["batch_stats"]
  )
  mean = np.asarray(conv4_3).mean((0, 1, 2))
  np.testing.assert_allclose(mean, 1 / np.sqrt(2 * np.pi), atol=0.12)
  conv4_3_eval, _ = trunk.apply(variables, x)
  eval_mean = np.asarray(conv4_3_eval).mean((0, 1, 2))
  assert np.abs(eval_mean - 1 / np.sqrt(2 * np.pi)).max() > 0.12


def test_batch_norm_backbone_passes_train_through():
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  backbone = vgg.VGG16Backbone(width=1 / 16, batch_norm=True)
  variables = backbone.init(jax.random.key(1), x)
  train, updates = backbone.apply(
    variables, x, train=True, mutable=["batch_stats"]
  )
  evaluation = backbone.apply(variables, x)
  assert set(updates["batch_stats"]["vgg"]) == set(
    variables["batch_stats"]["vgg"]
  )
  assert not np.allclose(train[1], evaluation[1])


@pytest.mark.parametrize("size", [300, 160, 33])
def test_conv3_3_map_sizes_equal_real_maps(size):
  trunk = vgg.VGG16(width=1 / 16, conv3_3_map=True)
  x = jnp.zeros((1, size, size, 3))
  maps = jax.eval_shape(trunk.init_with_output, jax.random.key(0), x)[0]
  sides = vgg.vgg16_feature_sizes(size, conv3_3_map=True)
  assert tuple(m.shape[1] for m in maps) == sides
  assert sides[1:] == vgg.vgg16_feature_sizes(size)
  assert [m.shape[-1] for m in maps] == [16, 32, 64]
  assert vgg.vgg16_feature_sizes(300, True) == (75, 38, 19)


def _conv_relu_ref(x, p, padding=1):
  y = jax.lax.conv_general_dilated(
    x,
    p["kernel"],
    (1, 1),
    [(padding, padding)] * 2,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=jax.lax.Precision.HIGHEST,
  )
  return np.maximum(np.asarray(y) + p["bias"], 0.0)


def _pool_ref(x):
  n, h, w, c = x.shape
  return (
    x[:, : h // 2 * 2, : w // 2 * 2]
    .reshape(n, h // 2, 2, w // 2, 2, c)
    .max((2, 4))
  )


def test_conv3_3_map_is_stage_3_then_its_own_l2norm():
  """conv3_3 against plain convolutions and pools; the other maps unchanged."""
  backbone = vgg.VGG16Backbone(width=1 / 16, conv3_3_map=True)
  x = jnp.asarray(np.random.default_rng(0).normal(0, 50, (2, 40, 40, 3)))
  variables = jax.jit(backbone.init)(jax.random.key(0), x)
  params = variables["params"]
  assert set(params) == {"vgg", "conv3_3_norm", "conv4_3_norm"}
  np.testing.assert_array_equal(params["conv3_3_norm"]["scale"], 20.0)
  scale = np.random.default_rng(1).uniform(10, 30, (16,)).astype(np.float32)
  params = {**params, "conv3_3_norm": {"scale": scale}}
  sources = backbone.apply({"params": params}, x)
  assert len(sources) == 3
  plain = vgg.VGG16Backbone(width=1 / 16).apply(
    {"params": {k: v for k, v in params.items() if k != "conv3_3_norm"}}, x
  )
  for got, want in zip(sources[1:], plain, strict=True):
    np.testing.assert_array_equal(got, want)
  h = np.asarray(x, np.float32)
  p = params["vgg"]
  for stage, names in enumerate(vgg.VGG16_STAGES[:3]):
    if stage:
      h = _pool_ref(h)
    for name, _ in names:
      h = _conv_relu_ref(h, p[name])
  c = h.astype(np.float64)
  ref = scale * c / np.sqrt((c * c).sum(-1, keepdims=True) + 1e-10)
  assert sources[0].shape == (2, 10, 10, 16)
  np.testing.assert_allclose(sources[0], ref, rtol=1e-4, atol=1e-4)


def test_space_to_depth_matches_loop_and_rejects_odd_sides():
  x = np.random.default_rng(2).normal(size=(2, 4, 6, 3)).astype(np.float32)
  y = np.asarray(vgg.space_to_depth(jnp.asarray(x)))
  assert y.shape == (2, 2, 3, 12)
  for b in range(2):
    for r in range(2):
      for c in range(3):
        for i in range(2):
          for j in range(2):
            np.testing.assert_array_equal(
              y[b, r, c, (i * 2 + j) * 3 : (i * 2 + j + 1) * 3],
              x[b, 2 * r + i, 2 * c + j],
            )
  assert vgg.space_to_depth(jnp.zeros((1, 0, 0, 3))).shape == (1, 0, 0, 12)
  with pytest.raises(ValueError, match="multiples of 2; got 5x6"):
    vgg.space_to_depth(jnp.zeros((1, 5, 6, 3)))


def test_space_to_depth_stem_is_conv1_at_half_resolution():
  """Same maps as the VGG stem; conv3_3 against plain convolutions."""
  trunk = vgg.VGG16(width=1 / 16, conv3_3_map=True, stem="vgg")
  folded = trunk.clone(stem="space_to_depth")
  x = jnp.asarray(np.random.default_rng(0).normal(0, 50, (2, 40, 40, 3)))
  variables = jax.jit(folded.init)(jax.random.key(0), x)
  p = variables["params"]
  assert p["conv1_1"]["kernel"].shape == (3, 3, 12, 4)
  assert p["conv1_2"]["kernel"].shape == (3, 3, 4, 4)
  maps = folded.apply(variables, x)
  want = jax.eval_shape(trunk.init_with_output, jax.random.key(0), x)[0]
  assert [m.shape for m in maps] == [m.shape for m in want]
  # Stage 1 of the folded stem, then the unchanged stages 2-3 (conv3_3).
  h = np.asarray(vgg.space_to_depth(x), np.float32)
  h = _conv_relu_ref(h, p["conv1_1"])
  h = _conv_relu_ref(h, p["conv1_2"])
  for name, _ in vgg.VGG16_STAGES[1]:
    h = _conv_relu_ref(h, p[name])
  h = _pool_ref(h)
  for name, _ in vgg.VGG16_STAGES[2]:
    h = _conv_relu_ref(h, p[name])
  np.testing.assert_allclose(maps[0], h, rtol=1e-4, atol=1e-3)
  with pytest.raises(ValueError, match="stem must be one of"):
    trunk.clone(stem="patchify").init(jax.random.key(0), x)
