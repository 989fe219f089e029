"""Tests for ssd_jax/models/ssd.py: the assembled SSD and `from_config`.

Full-size models are checked with `jax.eval_shape` (no computation); the
numerical checks use tiny widths and inputs to stay fast on a CPU. The
parameter trees and outputs of SSD300, SSD512 and the shapes models are
compared with `tests/data/models_reference.*`, recorded by the code before
the model was split into parts (commit d8675ba): a checkpoint written by
that code restores into this one.

`python tests/test_models_ssd.py --record` rewrites the reference (only
for a deliberate change of architecture).
"""

import functools
import itertools
import json
import math
import pathlib
import sys
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from ssd_jax import default_boxes as db
from ssd_jax import models

# Tiny model for numerical checks: 64x64 input, 1/16 of the channels.
TINY = dict(num_classes=3, image_size=64, width=1 / 16)


def _shapes(model, batch=1, dtype=jnp.float32):
  """(outputs, variables, intermediates) as ShapeDtypeStructs."""
  x = jnp.zeros((batch, model.image_size, model.image_size, 3), dtype)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)

  def run(v):
    return model.apply(v, x, capture_intermediates=True, mutable=True)

  outputs, state = jax.eval_shape(run, variables)
  return outputs, variables, state["intermediates"]


def _source_sides(model, intermediates):
  """Sides of the real source maps, read from the captured module outputs."""
  maps = [
    intermediates["conv4_3_norm"]["__call__"][0],
    intermediates["vgg"]["__call__"][0][1],
  ]
  for i in range(len(models.extra_blocks(model.image_size))):
    maps.append(intermediates[f"conv{8 + i}_2"]["__call__"][0])
  for m in maps:
    assert m.shape[1] == m.shape[2]
  return tuple(m.shape[1] for m in maps)


def _conv_params(k, cin, cout):
  return k * k * cin * cout + cout


def test_ssd300_param_count_from_layer_shapes():
  # VGG16 conv1_1 .. conv5_3, fc6 (3x3x512x1024), fc7 (1x1x1024x1024).
  chans = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  trunk = sum(_conv_params(3, a, b) for a, b in itertools.pairwise(chans))
  trunk += _conv_params(3, 512, 1024) + _conv_params(1, 1024, 1024)
  extras = (
    _conv_params(1, 1024, 256)
    + _conv_params(3, 256, 512)  # conv8
    + _conv_params(1, 512, 128)
    + _conv_params(3, 128, 256)  # conv9
    + 2 * (_conv_params(1, 256, 128) + _conv_params(3, 128, 256))  # 10, 11
  )
  sources = [512, 1024, 512, 256, 256, 256]
  boxes = [4, 6, 6, 6, 4, 4]
  heads = sum(
    _conv_params(3, c, a * 4) + _conv_params(3, c, a * 21)
    for c, a in zip(sources, boxes, strict=True)
  )
  expected = trunk + extras + heads + 512  # + the L2Norm scales
  assert expected == 26_285_486  # the original architecture's count
  # SSD_REFERENCE.md: backbone 22.94M, heads 3.34M.
  assert round((expected - heads) / 1e6, 2) == 22.94
  assert round(heads / 1e6, 2) == 3.34

  (loc, logits), variables, _ = _shapes(models.SSD300(num_classes=21))
  leaves = jax.tree.leaves(variables["params"])
  assert sum(math.prod(x.shape) for x in leaves) == expected
  assert loc.shape == (1, 8732, 4)
  assert logits.shape == (1, 8732, 21)


def test_ssd512_shapes_params_and_release_blocks():
  model = models.SSD512(num_classes=21)
  (loc, logits), variables, inter = _shapes(model, batch=2)
  assert loc.shape == (2, 24564, 4)
  assert logits.shape == (2, 24564, 21)
  assert _source_sides(model, inter) == (64, 32, 16, 8, 4, 2, 1)
  params = variables["params"]
  assert params["conv12_2"]["kernel"].shape == (4, 4, 128, 256)
  assert model.priors().shape == (24564, 4)
  np.testing.assert_array_equal(
    model.priors(), db.default_boxes(*db.SSD512_PRIORS)
  )
  # Same trunk as SSD300, one more extra block and a 7th pair of heads.
  n300 = 26_285_486
  c = 21
  delta = (
    _conv_params(1, 256, 128)  # conv12_1
    + _conv_params(4, 128, 256)  # conv12_2 (conv10_2, conv11_2 keep shapes)
    + _conv_params(3, 256, 6 * 4)  # SSD512's 5th map has ratios (2, 3)
    + _conv_params(3, 256, 6 * c)
    - _conv_params(3, 256, 4 * 4)
    - _conv_params(3, 256, 4 * c)
    + _conv_params(3, 256, 4 * 4)  # 7th map, 4 boxes
    + _conv_params(3, 256, 4 * c)
  )
  leaves = jax.tree.leaves(params)
  assert sum(math.prod(x.shape) for x in leaves) == n300 + delta


@pytest.mark.parametrize("size", [300, 512, 128, 100, 64, 32, 640])
def test_feature_sizes_equal_real_maps_and_priors_agree(size):
  model = models.SSD(num_classes=4, image_size=size, width=0.25)
  (loc, logits), _, inter = _shapes(model)
  sides = _source_sides(model, inter)
  assert sides == models.feature_sizes(size)
  config = model.resolved_prior_config()
  assert tuple(config.feature_sizes) == sides
  priors = model.priors()
  expected_p = sum(
    f * f * db.boxes_per_location(r)
    for f, r in zip(sides, config.aspect_ratios, strict=True)
  )
  assert priors.shape == (expected_p, 4)
  assert loc.shape == (1, expected_p, 4)
  assert logits.shape == (1, expected_p, 4)


def test_default_prior_config_other_sizes_follow_paper_rule():
  assert models.default_prior_config(300) == db.SSD300_PRIORS
  assert models.default_prior_config(512) == db.SSD512_PRIORS
  cfg = models.default_prior_config(128)
  assert cfg.feature_sizes == (16, 8, 4, 2, 1)
  n = len(cfg.feature_sizes)
  # Paper: conv4_3 at 0.1, then s_k = 0.2 + 0.7 (k - 1) / (m - 1).
  scales = [0.1] + [0.2 + 0.7 * k / (n - 2) for k in range(n)]
  np.testing.assert_allclose(cfg.min_sizes, np.array(scales[:n]) * 128)
  np.testing.assert_allclose(cfg.max_sizes, np.array(scales[1:]) * 128)
  np.testing.assert_allclose(cfg.steps, [8, 16, 32, 64, 128])
  assert cfg.aspect_ratios == ((2,), (2, 3), (2, 3), (2,), (2,))
  priors = models.SSD(num_classes=4, image_size=128).priors()
  # First map: 16x16 cells of 4 boxes, centres at (j + 0.5) * 8 / 128.
  first = priors[: 16 * 16 * 4].reshape(16, 16, 4, 4)
  centres = (np.arange(16) + 0.5) * 8 / 128
  np.testing.assert_allclose(first[0, :, 0, 0], centres, atol=1e-6)
  np.testing.assert_allclose(first[:, 0, 0, 1], centres, atol=1e-6)
  np.testing.assert_allclose(first[0, 0, :2, 2], [0.1, math.sqrt(0.1 * 0.2)])


def test_too_small_image_is_a_clear_error():
  with pytest.raises(ValueError, match="image_size=16 is too small"):
    models.SSD(num_classes=3, image_size=16).priors()


def test_priors_on_unbound_module_equal_release():
  for model, cfg in [
    (models.SSD300(num_classes=21), db.SSD300_PRIORS),
    (models.SSD300(num_classes=5, width=0.5), db.SSD300_PRIORS),
  ]:
    np.testing.assert_array_equal(model.priors(), db.default_boxes(*cfg))
  tv = models.SSD300(
    num_classes=91, prior_config=models.TORCHVISION_SSD300_PRIORS
  )
  assert tv.priors().shape == (8732, 4)


def test_mismatched_prior_config_is_rejected():
  model = models.SSD(
    num_classes=3, image_size=128, prior_config=db.SSD300_PRIORS
  )
  with pytest.raises(ValueError, match="does not fit SSD"):
    model.priors()


def test_wrong_input_shape_is_a_clear_error():
  model = models.SSD(**TINY)
  with pytest.raises(ValueError, match=r"expects images of shape"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 60, 64, 3)))


def _random_params(model, seed=0):
  """He-normal kernels, small random biases, from the init's shapes.

  Cheaper than `model.init` (whose RNG kernels take long to compile on a
  loaded CPU), and non-zero biases make the order checks stricter.
  """
  shapes = _shapes(model)[1]["params"]
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      std = math.sqrt(2 / math.prod(s.shape[:-1]))
      return rng.normal(0, std, s.shape).astype(np.float32)
    if name.endswith("['scale']"):
      return rng.uniform(10, 30, s.shape).astype(np.float32)
    return rng.normal(0, 0.1, s.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def tiny():
  model = models.SSD(**TINY)
  x = np.random.default_rng(1).normal(0, 50, (2, 64, 64, 3))
  return model, _random_params(model), jnp.asarray(x, jnp.float32)


def test_outputs_follow_prior_order(tiny):
  """Row p of the outputs is the head output at prior p's cell and kind."""
  model, params, x = tiny
  (loc, logits), state = jax.jit(
    lambda p, x: model.apply(
      {"params": p}, x, capture_intermediates=True, mutable=True
    )
  )(params, x)
  inter = state["intermediates"]
  config = model.resolved_prior_config()
  priors = model.priors()
  rows_loc, rows_conf, centres = [], [], []
  c = model.num_classes
  for k, (f, ratios) in enumerate(
    zip(config.feature_sizes, config.aspect_ratios, strict=True)
  ):
    head_loc = np.asarray(inter[f"loc_{k}"]["__call__"][0])  # [B,f,f,A*4]
    head_conf = np.asarray(inter[f"conf_{k}"]["__call__"][0])
    for i in range(f):
      for j in range(f):
        for a in range(db.boxes_per_location(ratios)):
          rows_loc.append(head_loc[:, i, j, a * 4 : (a + 1) * 4])
          rows_conf.append(head_conf[:, i, j, a * c : (a + 1) * c])
          step = config.steps[k] / config.image_size
          centres.append([(j + 0.5) * step, (i + 0.5) * step])
  np.testing.assert_array_equal(np.stack(rows_loc, 1), loc)
  np.testing.assert_array_equal(np.stack(rows_conf, 1), logits)
  np.testing.assert_allclose(priors[:, :2], np.clip(centres, 0, 1), atol=1e-6)


def test_init_xavier_uniform_zero_bias_scale_20():
  model = models.SSD(**TINY)
  # unsafe_rbg only to compile the init faster here; any key works.
  key = jax.random.key(0, impl="unsafe_rbg")
  params = jax.jit(model.init)(key, jnp.zeros((1, 64, 64, 3)))["params"]
  assert np.all(params["conv4_3_norm"]["scale"] == 20.0)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  kernels = 0
  for path, value in flat:
    name = jax.tree_util.keystr(path)
    if name.endswith("['bias']"):
      assert np.all(value == 0), name
    if name.endswith("['kernel']"):
      kernels += 1
      kh, kw, cin, cout = value.shape
      bound = math.sqrt(6 / (kh * kw * (cin + cout)))
      assert np.abs(value).max() <= bound, name
      if value.size >= 1000:  # uniform on [-b, b] has std b / sqrt(3)
        np.testing.assert_allclose(value.std(), bound / math.sqrt(3), rtol=0.1)
  assert kernels == 15 + 2 * 2 + 2 * 4  # trunk, extras (4 -> 2 -> 1), heads


def test_bfloat16_compute_with_float32_params(tiny):
  model, params, x = tiny
  model16 = models.SSD(**TINY, dtype=jnp.bfloat16)
  (loc16, logits16), variables = jax.eval_shape(
    model16.init_with_output, jax.random.key(0), x
  )
  assert loc16.dtype == jnp.bfloat16 and logits16.dtype == jnp.bfloat16
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
  loc32, logits32 = jax.jit(model.apply)({"params": params}, x)
  loc16, logits16 = jax.jit(model16.apply)({"params": params}, x)
  assert loc32.dtype == jnp.float32
  for a, b in [(loc32, loc16), (logits32, logits16)]:
    b = np.asarray(b, np.float32)
    assert np.all(np.isfinite(b))
    # bfloat16 has 8 mantissa bits: agree to a few percent of the range.
    scale = np.abs(np.asarray(a)).max()
    assert np.abs(np.asarray(a) - b).max() < 0.05 * scale
  # Full-size SSD300 in bfloat16: shapes and dtypes only.
  big = models.SSD300(num_classes=21, dtype=jnp.bfloat16)
  (loc, logits), _, _ = _shapes(big)
  assert (loc.shape, loc.dtype) == ((1, 8732, 4), jnp.bfloat16)
  assert (logits.shape, logits.dtype) == ((1, 8732, 21), jnp.bfloat16)


def test_jit_and_pmap_agree_with_apply(tiny):
  model, params, x = tiny
  n = jax.local_device_count()
  xs = jnp.stack([x[:1]] * n)  # [D, 1, 64, 64, 3]
  reference = model.apply({"params": params}, x[:1])
  replicated = jax.tree.map(lambda p: jnp.stack([p] * n), params)
  loc, logits = jax.pmap(lambda p, x: model.apply({"params": p}, x))(
    replicated, xs
  )
  for d in range(n):
    np.testing.assert_allclose(loc[d], reference[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[d], reference[1], rtol=1e-5, atol=1e-5)


def test_from_config_variants_and_errors():
  cfg = ml_collections.ConfigDict(
    dict(name="ssd300", image_size=300, width=1.0, dtype="bfloat16")
  )
  model = models.from_config(cfg, num_classes=21)
  assert (model.image_size, model.num_classes) == (300, 21)
  assert model.dtype == jnp.bfloat16 and model.param_dtype == jnp.float32
  small = models.from_config(
    ml_collections.ConfigDict(
      dict(name="ssd", image_size=128, width=0.25, dtype="float32")
    ),
    num_classes=4,
  )
  assert (small.image_size, small.width) == (128, 0.25)
  assert models.from_config({"name": "ssd512"}, 3).image_size == 512
  tv = models.from_config({"name": "ssd300", "priors": "torchvision"}, 91)
  assert tv.prior_config == models.TORCHVISION_SSD300_PRIORS
  bad = [
    ({"name": "ssd300", "image_size": 512}, "model.image_size"),
    ({"name": "yolo"}, "model.name"),
    ({"name": "ssd"}, "model.image_size"),
    ({"name": "ssd300", "dtype": "float16"}, "model.dtype"),
    ({"name": "ssd300", "priors": "caffe"}, "model.priors"),
  ]
  for fields, message in bad:
    with pytest.raises(ValueError, match=message):
      models.from_config(fields, 21)
  with pytest.raises(ValueError, match="num_classes"):
    models.from_config({"name": "ssd300"}, 1)


def test_cpu_fast_ops_same_outputs_and_gradients():
  """The CPU-friendly max-pool gradient changes speed, not results."""
  plain = models.SSD(num_classes=3, image_size=64, width=0.125)
  fast = plain.clone(cpu_fast_ops=True)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)) * 50)
  params = _random_params(plain)

  def loss(model, p):
    loc, logits = model.apply({"params": p}, x)
    return jnp.sum(loc**2) + jnp.sum(jax.nn.log_softmax(logits)[..., 0])

  jaxpr = str(jax.make_jaxpr(lambda p: loss(fast, p))(params))
  assert "custom_vjp_call" in jaxpr
  for a, b in zip(
    jax.tree.leaves(fast.apply({"params": params}, x)),
    jax.tree.leaves(plain.apply({"params": params}, x)),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)
  g_fast = jax.grad(lambda p: loss(fast, p))(params)
  g_plain = jax.grad(lambda p: loss(plain, p))(params)
  for a, b in zip(
    jax.tree.leaves(g_fast), jax.tree.leaves(g_plain), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_cpu_fast_ops_batch_norm_same_training_results():
  """With BatchNorm, cpu_ops.BatchNorm: the same variables, and in training
  mode the same outputs, running statistics and gradients as flax's."""
  plain = models.SSD(num_classes=3, image_size=64, width=0.125, batch_norm=True)
  fast = plain.clone(cpu_fast_ops=True)
  # Batch 4: the last map is 1x1, and a BatchNorm over 2 values has no
  # gradient to speak of (both outputs are -1 and 1 whatever the input).
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 64, 64, 3)) * 50)
  shapes = _shapes(plain)[1]
  assert _shapes(fast)[1] == shapes
  rng = np.random.default_rng(2)

  def bn_scale(path, p):  # Not _random_params' L2Norm-sized scales.
    bn = "_bn']['scale']" in jax.tree_util.keystr(path)
    return rng.uniform(0.5, 1.5, p.shape).astype(np.float32) if bn else p

  variables = {
    "params": jax.tree_util.tree_map_with_path(bn_scale, _random_params(plain)),
    "batch_stats": jax.tree.map(
      lambda s: np.ones(s.shape, np.float32), shapes["batch_stats"]
    ),
  }

  def loss(model, p):
    (loc, logits), new = model.apply(
      {"params": p, "batch_stats": variables["batch_stats"]},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    value = jnp.sum(loc**2) + jnp.sum(jax.nn.log_softmax(logits)[..., 0])
    return value, new["batch_stats"]

  (v_fast, s_fast), g_fast = jax.value_and_grad(
    lambda p: loss(fast, p), has_aux=True
  )(variables["params"])
  (v_plain, s_plain), g_plain = jax.value_and_grad(
    lambda p: loss(plain, p), has_aux=True
  )(variables["params"])
  np.testing.assert_allclose(v_fast, v_plain, rtol=1e-4)
  for a, b in zip(
    jax.tree.leaves(s_fast), jax.tree.leaves(s_plain), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())

  def by_layer(grads):  # {"conv1_1": {...}, "conv1_1_bn": ..., "loc_0": ...}
    return {**grads["vgg"], **{k: v for k, v in grads.items() if k != "vgg"}}

  fast_layers, layers = by_layer(g_fast), by_layer(g_plain)
  largest = max(np.abs(g).max() for g in jax.tree.leaves(g_plain))
  for name, grads in layers.items():
    for leaf, b in grads.items():
      a = fast_layers[name][leaf]
      if leaf == "bias" and f"{name}_bn" in layers:
        # A bias before a BatchNorm has no effect: zero gradient, both.
        assert np.abs(a).max() < 1e-4 * largest, name
        assert np.abs(b).max() < 1e-4 * largest, name
      else:
        np.testing.assert_allclose(
          a, b, rtol=1e-3, atol=1e-3 * np.abs(b).max(), err_msg=name
        )


def test_from_config_cpu_fast_ops():
  cfg = {"name": "ssd", "image_size": 64, "width": 0.125}
  auto = models.from_config(cfg, 3)
  assert auto.cpu_fast_ops == (jax.default_backend() == "cpu")
  assert not models.from_config(cfg | {"cpu_fast_ops": False}, 3).cpu_fast_ops
  with pytest.raises(ValueError, match="model.cpu_fast_ops"):
    models.from_config(cfg | {"cpu_fast_ops": "yes"}, 3)
  for backbone in ("resnet50", "mobilenet_v3_large"):  # The zoo's too.
    zoo = {"backbone": backbone, "width": 0.25}
    auto = models.from_config(zoo, 3)
    assert auto.cpu_fast_ops == (jax.default_backend() == "cpu")
    assert models.from_config(zoo | {"cpu_fast_ops": "true"}, 3).cpu_fast_ops
    assert not models.from_config(zoo | {"cpu_fast_ops": False}, 3).cpu_fast_ops
    with pytest.raises(ValueError, match="model.cpu_fast_ops"):
      models.from_config(zoo | {"cpu_fast_ops": "yes"}, 3)


def test_from_config_coco_priors():
  ssd300 = models.from_config({"name": "ssd300", "priors": "coco"}, 81)
  np.testing.assert_allclose(
    ssd300.priors(), db.default_boxes(*db.SSD300_COCO_PRIORS)
  )
  ssd512 = models.from_config({"name": "ssd512", "priors": "coco"}, 81)
  assert ssd512.resolved_prior_config() == db.SSD512_COCO_PRIORS
  with pytest.raises(ValueError, match="model.priors='coco'"):
    models.from_config({"name": "ssd", "image_size": 96, "priors": "coco"}, 81)
  with pytest.raises(ValueError, match="model.priors='torchvision'"):
    models.from_config({"name": "ssd512", "priors": "torchvision"}, 91)


def test_from_config_fitted_priors():
  cfg = {"name": "ssd", "image_size": 96, "width": 0.125, "priors": "fitted"}
  mins, maxs = (5.0, 12.0, 30.0, 60.0), (12.0, 30.0, 60.0, 100.0)
  model = models.from_config(
    cfg | {"prior_min_sizes": mins, "prior_max_sizes": list(maxs)}, 3
  )
  want = models.default_prior_config(96)._replace(
    min_sizes=mins, max_sizes=maxs
  )
  assert model.resolved_prior_config() == want
  np.testing.assert_array_equal(model.priors(), db.default_boxes(*want))
  assert model.priors().shape == models.SSD(3, image_size=96).priors().shape
  bad = [
    ({}, "needs model.prior_min_sizes and model.prior_max_sizes"),
    (
      {"prior_min_sizes": mins[:3], "prior_max_sizes": maxs[:3]},
      r"one size per map \(4 maps",
    ),
    (
      {"prior_min_sizes": (5.0, 12.0, 30.0, 0.0), "prior_max_sizes": maxs},
      "model.prior_min_sizes must be > 0",
    ),
  ]
  for fields, message in bad:
    with pytest.raises(ValueError, match=message):
      models.from_config(cfg | fields, 3)
  # Sizes mean nothing for the named boxes; the zoo keeps its own boxes.
  with pytest.raises(ValueError, match="with model.priors='fitted' only"):
    models.from_config({"name": "ssd300", "prior_min_sizes": mins}, 3)
  with pytest.raises(ValueError, match="model.priors='fitted'.*own default"):
    models.from_config({"backbone": "resnet50", "priors": "fitted"}, 3)


# --- Parameter trees and outputs recorded with the code before the split ----

# name -> (model config, num_classes, whether to record a forward pass).
REFERENCE_MODELS = {
  "ssd300_voc": ({"name": "ssd300"}, 21, True),
  "ssd512_voc": ({"name": "ssd512"}, 21, True),
  "ssd300_coco": ({"name": "ssd300", "priors": "coco"}, 81, False),
  "ssd512_coco": ({"name": "ssd512", "priors": "coco"}, 81, False),
  "ssd300_torchvision": (
    {"name": "ssd300", "priors": "torchvision"},
    91,
    False,
  ),
  "shapes": ({"name": "ssd", "image_size": 96, "width": 0.25}, 4, True),
  "shapes_small": ({"name": "ssd", "image_size": 64, "width": 0.125}, 4, True),
}
REFERENCE_ROWS = 256  # rows of outputs and priors stored per model
REFERENCE_FILE = pathlib.Path(__file__).parent / "data" / "models_reference"


def _reference_model(name):
  cfg, num_classes, _ = REFERENCE_MODELS[name]
  return models.from_config(cfg | {"cpu_fast_ops": False}, num_classes)


def _param_shapes(model):
  """Flattened params path ("vgg/conv1_1/kernel") -> shape list."""
  x = jnp.zeros((1, model.image_size, model.image_size, 3))
  params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  flat = traverse_util.flatten_dict(params, sep="/")
  return {k: list(v.shape) for k, v in sorted(flat.items())}


def _reference_params(shapes):
  """Deterministic params from the paths alone: one numpy seed per path."""
  out = {}
  for path, shape in shapes.items():
    rng = np.random.default_rng(zlib.crc32(path.encode()))
    if path.endswith("/kernel"):
      std = math.sqrt(2.0 / math.prod(shape[:-1]))
      out[path] = rng.normal(0, std, shape).astype(np.float32)
    elif path.endswith("/scale"):
      out[path] = rng.uniform(10, 30, shape).astype(np.float32)
    else:
      out[path] = rng.normal(0, 0.1, shape).astype(np.float32)
  return traverse_util.unflatten_dict(out, sep="/")


def _reference_arrays(name):
  """Priors (and outputs, on a fixed input) at evenly spread rows."""
  model = _reference_model(name)
  priors = model.priors()
  rows = np.linspace(0, len(priors) - 1, REFERENCE_ROWS).round().astype(int)
  out = {"rows": rows, "priors": priors[rows]}
  out["priors_sum"] = priors.astype(np.float64).sum(0)
  if REFERENCE_MODELS[name][2]:
    size = model.image_size
    x = np.random.default_rng(size).normal(0, 1, (1, size, size, 3))
    params = _reference_params(_param_shapes(model))
    loc, logits = jax.jit(model.apply)({"params": params}, x.astype(np.float32))
    for key, value in [("loc", loc[0]), ("logits", logits[0])]:
      value = np.asarray(value)
      out[key] = value[rows]
      out[f"{key}_sum"] = value.astype(np.float64).sum(0)
  return out


def record_reference(path=REFERENCE_FILE):
  """Writes `path`.json (param shapes) and `path`.npz (priors, outputs)."""
  trees, arrays = {}, {}
  for name in REFERENCE_MODELS:
    trees[name] = _param_shapes(_reference_model(name))
    for key, value in _reference_arrays(name).items():
      arrays[f"{name}/{key}"] = value
  pathlib.Path(f"{path}.json").write_text(json.dumps(trees, indent=1) + "\n")
  np.savez_compressed(f"{path}.npz", **arrays)


@pytest.fixture(scope="module")
def reference():
  trees = json.loads(pathlib.Path(f"{REFERENCE_FILE}.json").read_text())
  with np.load(f"{REFERENCE_FILE}.npz") as data:
    arrays = {k: data[k] for k in data.files}
  return trees, arrays


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_param_tree_equals_the_recorded_one(name, reference):
  """Same paths and shapes as before the split: old checkpoints restore."""
  trees, _ = reference
  assert _param_shapes(_reference_model(name)) == trees[name]


@pytest.mark.parametrize("name", sorted(REFERENCE_MODELS))
def test_priors_and_outputs_equal_the_recorded_ones(name, reference):
  _, arrays = reference
  got = _reference_arrays(name)
  want = {
    k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{name}/")
  }
  assert sorted(got) == sorted(want)
  np.testing.assert_array_equal(got["rows"], want["rows"])
  for key in sorted(got):
    scale = max(1.0, float(np.abs(want[key]).max()))
    # The same computation: equal to float32 rounding of the values. The
    # convolutions' sums run in the CPU kernel's order: an AMD EPYC without
    # AVX-512 gave up to 1.8e-5 off the recorded values (outputs of ~3),
    # while a changed layer moves them by O(scale).
    np.testing.assert_allclose(
      got[key], want[key], rtol=0, atol=2e-5 * scale, err_msg=key
    )


def test_models_reexports_every_name_it_exported():
  names = [
    "SSD",
    "SSD300",
    "SSD512",
    "TORCHVISION_SSD300_PRIORS",
    "VGG16",
    "L2Norm",
    "TorchvisionPriorConfig",
    "default_prior_config",
    "extra_blocks",
    "feature_sizes",
    "from_config",
    "prior_boxes",
  ]
  assert all(hasattr(models, n) for n in names)
  assert models.TORCHVISION_SSD300_PRIORS is db.TORCHVISION_SSD300_PRIORS
  assert models.prior_boxes is db.prior_boxes
  from ssd_jax.models.ssd import SSD300  # experiments/bench_layers.py

  assert SSD300(num_classes=3).image_size == 300


if __name__ == "__main__":
  if sys.argv[1:] != ["--record"]:
    sys.exit("usage: python tests/test_models_ssd.py --record")
  from ssd_jax import runtime  # as tests/conftest.py, before JAX starts

  runtime.apply_xla_cpu_flags()
  record_reference()


def test_from_config_builds_the_zoo_by_backbone():
  base = {"name": "ssd", "image_size": 96, "width": 0.25}
  lite = models.from_config({**base, "backbone": "mobilenet_v3_large"}, 5)
  assert isinstance(lite, models.SSDLite320) and lite.image_size == 96
  assert lite.reduced_tail and models.normalization_of(lite) == "minus_one_one"
  full = models.from_config(
    {**base, "backbone": "mobilenet_v3_large", "reduced_tail": False}, 5
  )
  assert not full.reduced_tail
  r50 = models.from_config({"backbone": "resnet50", "width": 0.125}, 81)
  assert isinstance(r50, models.SSD300ResNet50) and r50.image_size == 300
  assert models.normalization_of(r50) == "imagenet"
  vgg = models.from_config(base, 5)
  assert isinstance(vgg, models.SSD) and models.normalization_of(vgg) == "caffe"
  with pytest.raises(ValueError, match="model.backbone must be one of"):
    models.from_config({**base, "backbone": "resnet18"}, 5)
  with pytest.raises(ValueError, match="brings its own default boxes"):
    models.from_config({"backbone": "resnet50", "priors": "coco"}, 81)


def test_from_config_batch_norm_vgg():
  base = {"name": "ssd", "image_size": 64, "width": 0.125}
  model = models.from_config({**base, "batch_norm": True}, 5)
  assert isinstance(model, models.SSD) and model.batch_norm
  x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  plain = jax.eval_shape(models.from_config(base, 5).init, jax.random.key(1), x)
  assert set(plain) == {"params"} and "batch_stats" in variables
  # The same tree plus one BatchNorm per trunk and extra-block convolution;
  # heads and the conv4_3 L2Norm unchanged.
  flat = traverse_util.flatten_dict(variables["params"])
  bn = {k for k in flat if k[-2].endswith("_bn")}
  assert {k: flat[k].shape for k in flat if k not in bn} == {
    k: v.shape for k, v in traverse_util.flatten_dict(plain["params"]).items()
  }
  trunk_convs = 15  # 13 VGG convs, fc6, fc7
  extra_convs = 2 * len(models.extra_blocks(64))
  assert len(bn) == 2 * (trunk_convs + extra_convs)  # scale and bias
  (loc, logits), _ = jax.jit(
    functools.partial(model.apply, train=True, mutable=["batch_stats"])
  )(variables, x)
  assert loc.shape == (2, len(model.priors()), 4)
  assert logits.shape == (2, len(model.priors()), 5)
  with pytest.raises(ValueError, match="model.batch_norm adds BatchNorm"):
    models.from_config({**base, "backbone": "resnet50", "batch_norm": True}, 5)


def test_conv3_3_map_adds_a_first_map_read_by_its_own_heads():
  model = models.SSD(**TINY, conv3_3_map=True)
  (loc, logits), variables, inter = _shapes(model)
  sides = models.feature_sizes(64, conv3_3_map=True)
  assert sides == (16, *models.feature_sizes(64))
  assert inter["conv3_3_norm"]["__call__"][0].shape[1] == 16
  config = model.resolved_prior_config()
  assert config == models.default_prior_config(64, conv3_3_map=True)
  assert config == db.paper_prior_config(64, sides)
  assert loc.shape == (1, len(model.priors()), 4)
  assert set(variables["params"]) - set(
    _shapes(models.SSD(**TINY))[1]["params"]
  ) == {"conv3_3_norm", f"loc_{len(sides) - 1}", f"conf_{len(sides) - 1}"}
  # The conv3_3 scale reaches the rows of the first map only.
  params = _random_params(model)
  x = jnp.asarray(np.random.default_rng(2).normal(0, 50, (1, 64, 64, 3)))
  rows = db.rows_per_map(config)[0]

  def out(scale):
    p = {**params, "conv3_3_norm": {"scale": scale}}
    loc, logits = model.apply({"params": p}, x)
    return jnp.concatenate([loc, logits], -1)[0].sum(-1)  # [P]

  jac = np.asarray(jax.jacrev(out)(params["conv3_3_norm"]["scale"]))
  assert np.abs(jac[:rows]).sum(1).min() > 0
  np.testing.assert_array_equal(jac[rows:], 0.0)
  # 300 and 512 with conv3_3 leave the release's boxes for the paper's rule.
  assert models.default_prior_config(300, True) == db.paper_prior_config(
    300, (75, 38, 19, 10, 5, 3, 1)
  )


def test_from_config_conv3_3_map():
  base = {"name": "ssd", "image_size": 96, "width": 0.125, "conv3_3_map": True}
  model = models.from_config(base, 3)
  assert (
    model.conv3_3_map and model.resolved_prior_config().feature_sizes[0] == 24
  )
  sides = models.feature_sizes(96, True)
  mins = tuple(float(4 + 8 * i) for i in range(len(sides)))
  maxs = tuple(m + 8 for m in mins)
  fitted = models.from_config(
    base
    | {"priors": "fitted", "prior_min_sizes": mins, "prior_max_sizes": maxs},
    3,
  )
  assert fitted.resolved_prior_config() == models.default_prior_config(
    96, True
  )._replace(min_sizes=mins, max_sizes=maxs)
  with pytest.raises(ValueError, match="one size per map"):
    models.from_config(
      base
      | {
        "priors": "fitted",
        "prior_min_sizes": mins[1:],
        "prior_max_sizes": maxs[1:],
      },
      3,
    )
  with pytest.raises(ValueError, match="no boxes for conv3_3"):
    models.from_config(
      {"name": "ssd300", "priors": "coco", "conv3_3_map": True}, 3
    )
  with pytest.raises(ValueError, match="model.conv3_3_map adds a VGG map"):
    models.from_config({"backbone": "resnet50", "conv3_3_map": True}, 3)


def test_from_config_space_to_depth_stem():
  base = {"name": "ssd", "image_size": 64, "width": 0.125}
  model = models.from_config({**base, "stem": "space_to_depth"}, 5)
  assert model.stem == "space_to_depth"
  assert models.from_config(base, 5).stem == "vgg"
  x = jnp.zeros((2, 64, 64, 3))
  shapes = jax.eval_shape(model.init_with_output, jax.random.key(0), x)
  (loc, logits), variables = shapes
  assert loc.shape == (2, len(model.priors()), 4) and logits.shape[-1] == 5
  np.testing.assert_array_equal(
    model.priors(), models.from_config(base, 5).priors()
  )
  assert variables["params"]["vgg"]["conv1_1"]["kernel"].shape == (3, 3, 12, 8)
  bad = [
    ({**base, "stem": "patchify"}, "model.stem must be one of"),
    ({**base, "image_size": 65, "stem": "space_to_depth"}, "even model.image"),
    ({"backbone": "resnet50", "stem": "space_to_depth"}, "leave model.stem"),
  ]
  for fields, message in bad:
    with pytest.raises(ValueError, match=message):
      models.from_config(fields, 5)
