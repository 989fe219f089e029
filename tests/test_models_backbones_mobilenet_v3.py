"""Tests for ssd_jax/models/backbones/mobilenet_v3.py: MobileNetV3-Large.

The channel rule and block table are checked against values written out
here (and against torchvision's own config where torch is installed); an
inverted residual block against a forward pass written here from the
formulas (lax convolutions, BatchNorm in eval mode with random statistics);
map sides against the real maps. tests/test_weights_ssdlite.py compares the
whole backbone with torchvision's.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ssd_jax.models.backbones import mobilenet_v3 as mnv3

# torchvision's mobilenet_v3_large(): 5,483,032 parameters, of which the
# classifier (Linear 960 -> 1280, Linear 1280 -> 1000) holds 2,511,080.
FEATURES_PARAMS = 5_483_032 - (960 * 1280 + 1280 + 1280 * 1000 + 1000)


@pytest.mark.parametrize(
  "value, expected",
  # 4 -> the floor 8; 54 -> 56 (rounds half up); 42 -> 40; 9.9 -> 8 is
  # more than 10% low -> 16; 20 -> 24 (half up); 480 stays.
  [(4.0, 8), (54.0, 56), (42.0, 40), (9.9, 16), (20.0, 24), (480.0, 480)],
)
def test_make_divisible(value, expected):
  assert mnv3.make_divisible(value) == expected


def test_block_table_full_and_reduced_tail():
  full = mnv3.mobilenet_v3_large_blocks()
  assert full == mnv3.MOBILENET_V3_LARGE and len(full) == 15
  assert [i for i, b in enumerate(full) if b.stride == 2] == [1, 3, 6, 12]
  assert mnv3.c4_index(full) == 12
  reduced = mnv3.mobilenet_v3_large_blocks(reduced_tail=True)
  assert reduced[:12] == full[:12]
  assert reduced[12] == full[12]._replace(out_channels=80)
  assert (
    reduced[13]
    == reduced[14]
    == mnv3.BlockConfig(80, 5, 480, 80, True, True, 1)
  )
  assert not reduced[12].residual and reduced[13].residual
  half = mnv3.mobilenet_v3_large_blocks(0.5, reduced_tail=True)
  # make_divisible(c / 2): 16 -> 8, 64 -> 32, 72 -> 40, 120 -> 64, ...
  assert [b.expanded for b in half] == [
    8, 32, 40, 40, 64, 64, 120, 104, 96, 96, 240, 336, 336, 240, 240
  ]  # fmt: skip
  assert half[12].out_channels == 40 and half[12].in_channels == 56


def test_block_table_equals_torchvision_config():
  pytest.importorskip("torch")
  mobilenetv3 = pytest.importorskip("torchvision.models.mobilenetv3")
  for width in (1.0, 0.5, 0.35):
    for reduced in (False, True):
      settings, _ = mobilenetv3._mobilenet_v3_conf(
        "mobilenet_v3_large", width_mult=width, reduced_tail=reduced
      )
      ours = mnv3.mobilenet_v3_large_blocks(width, reduced)
      theirs = [
        mnv3.BlockConfig(
          c.input_channels,
          c.kernel,
          c.expanded_channels,
          c.out_channels,
          c.use_se,
          c.use_hs,
          c.stride,
        )
        for c in settings
      ]
      assert list(ours) == theirs, (width, reduced)


@pytest.mark.parametrize(
  "size, reduced, sides",
  [(320, True, (20, 10)), (224, False, (14, 7)), (97, True, (7, 4))],
)
def test_maps_and_feature_sizes(size, reduced, sides):
  backbone = mnv3.MobileNetV3Large(width=0.25, reduced_tail=reduced)
  x = jnp.zeros((2, size, size, 3))
  (c4, last), variables = jax.eval_shape(
    backbone.init_with_output, jax.random.key(0), x
  )
  assert backbone.feature_sizes(size) == sides
  blocks = backbone.blocks()
  assert c4.shape == (2, sides[0], sides[0], blocks[12].expanded)
  assert last.shape == (2, sides[1], sides[1], 6 * blocks[-1].out_channels)
  assert set(variables) == {"params", "batch_stats"}
  assert set(variables["params"]) == {
    "stem",
    *[f"block{i}" for i in range(1, 16)],
    "last_conv",
  }


def test_full_size_parameter_count_is_torchvision_features():
  backbone = mnv3.MobileNetV3Large()
  variables = jax.eval_shape(
    backbone.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3))
  )
  count = sum(math.prod(p.shape) for p in jax.tree.leaves(variables["params"]))
  assert count == FEATURES_PARAMS == 2_971_952
  params = variables["params"]
  assert set(params["block1"]) == {"depthwise", "project"}  # no expansion
  assert set(params["block4"]) == {"expand", "depthwise", "se", "project"}
  assert params["block4"]["depthwise"]["conv"]["kernel"].shape == (5, 5, 1, 72)
  assert params["block4"]["se"]["fc1"]["kernel"].shape == (1, 1, 72, 24)
  assert params["last_conv"]["conv"]["kernel"].shape == (1, 1, 160, 960)


def _random_variables(variables, seed):
  """Random params and BatchNorm statistics (var in [0.5, 1.5])."""
  rng = np.random.default_rng(seed)
  out = {}
  for collection, tree in variables.items():

    def draw(path, leaf, collection=collection):
      name = path[-1].key
      if collection == "batch_stats" and name == "var":
        return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
      if name == "scale":
        return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
      return rng.normal(0, 0.3, leaf.shape).astype(np.float32)

    out[collection] = jax.tree_util.tree_map_with_path(draw, tree)
  return out


def _reference_block(v, x, cfg):
  """An inverted residual from the formulas, on our variables tree."""
  p, s = v["params"], v["batch_stats"]

  def conv_bn(name, x, stride=1, groups=1, act=None):
    k = p[name]["conv"]["kernel"]
    pad = (k.shape[0] - 1) // 2
    y = lax.conv_general_dilated(
      x, k, (stride, stride), [(pad, pad)] * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups, precision=lax.Precision.HIGHEST,
    )  # fmt: skip
    bn, stats = p[name]["bn"], s[name]["bn"]
    y = (y - stats["mean"]) / np.sqrt(stats["var"] + 0.001)
    y = y * bn["scale"] + bn["bias"]
    return y if act is None else act(y)

  relu6 = lambda y: jnp.clip(y, 0, 6)
  act = (lambda y: y * relu6(y + 3) / 6) if cfg.hardswish else jax.nn.relu
  h = x
  if "expand" in p:
    h = conv_bn("expand", x, act=act)
  y = conv_bn("depthwise", h, cfg.stride, cfg.expanded, act)
  if cfg.use_se:
    fc1, fc2 = p["se"]["fc1"], p["se"]["fc2"]
    g = y.mean((1, 2))  # [B, C]
    g = jax.nn.relu(g @ fc1["kernel"][0, 0] + fc1["bias"])
    g = relu6(g @ fc2["kernel"][0, 0] + fc2["bias"] + 3) / 6
    y = y * g[:, None, None, :]
  y = conv_bn("project", y)
  return (y + x if cfg.residual else y), h


@pytest.mark.parametrize(
  "cfg",
  [
    mnv3.BlockConfig(8, 5, 24, 8, True, True, 1),  # SE, hardswish, residual
    mnv3.BlockConfig(8, 3, 8, 16, False, False, 2),  # no expansion, stride 2
  ],
)
def test_inverted_residual_equals_reference(cfg):
  block = mnv3.InvertedResidual(cfg)
  x = np.random.default_rng(0).normal(size=(2, 7, 7, 8)).astype(np.float32)
  shapes = jax.eval_shape(block.init, jax.random.key(0), x)
  variables = _random_variables(shapes, seed=1)
  with jax.default_matmul_precision("highest"):
    out, hidden = jax.jit(block.apply)(variables, x)
    ref, ref_hidden = _reference_block(variables, x, cfg)
  side = -(-7 // cfg.stride)
  assert out.shape == (2, side, side, cfg.out_channels)
  assert hidden.shape == (2, 7, 7, cfg.expanded)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(hidden, ref_hidden, rtol=1e-4, atol=1e-4)


def test_train_mode_uses_and_updates_batch_statistics():
  backbone = mnv3.MobileNetV3Large(width=0.25, bn_momentum=0.9)
  x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
  # Variables as init makes them, without compiling init: random params,
  # statistics mean 0 and var 1 (init's own values are checked in
  # tests/test_models_ssdlite.py).
  shapes = jax.eval_shape(backbone.init, jax.random.key(0), x)
  variables = {
    "params": _random_variables(shapes, seed=2)["params"],
    "batch_stats": jax.tree_util.tree_map_with_path(
      lambda path, s: np.full(s.shape, path[-1].key == "var", np.float32),
      shapes["batch_stats"],
    ),
  }
  (_, last), updates = jax.jit(
    lambda v, x: backbone.apply(v, x, train=True, mutable=["batch_stats"])
  )(variables, x)
  # Every BatchNorm updated its statistics (train reaches all of them).
  new = updates["batch_stats"]
  bns = [
    path
    for path, _ in jax.tree_util.tree_leaves_with_path(new)
    if path[-1].key == "mean"
  ]
  assert len(bns) == 2 + sum(
    2 + (b.expanded != b.in_channels) for b in backbone.blocks()
  )
  for path in bns:
    node = new
    for key in path[:-1]:
      node = node[key.key]
    assert not np.allclose(node["var"], 1.0), path
  # The stem's running mean moved by 1 - momentum towards the batch mean.
  conv = lax.conv_general_dilated(
    x,
    variables["params"]["stem"]["conv"]["kernel"],
    (2, 2),
    [(1, 1)] * 2,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=lax.Precision.HIGHEST,
  )
  np.testing.assert_allclose(
    new["stem"]["bn"]["mean"],
    0.1 * np.asarray(conv).mean((0, 1, 2)),
    rtol=1e-3,
    atol=1e-6,
  )
  # Evaluation: an image's output does not depend on the rest of the batch.
  apply = jax.jit(backbone.apply)
  _, batched = apply(variables, x)
  _, other = apply(variables, np.concatenate([x[:1], -x[1:]]))
  np.testing.assert_allclose(other[0], batched[0], rtol=1e-4, atol=1e-5)
  assert not np.allclose(last[0], batched[0], atol=1e-3)
