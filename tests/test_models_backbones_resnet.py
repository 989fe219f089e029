"""Tests for ssd_jax/models/backbones/resnet.py: torchvision's ResNet-50.

The stem and the bottleneck blocks are checked against numpy references
(convolution, BatchNorm in evaluation mode with random running statistics,
torch's max pool padding); the sizes, parameter counts and names against
torchvision's `resnet50`, written out here. The equality with torchvision
itself, through the weight converter, is in tests/test_weights_nvidia.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_models_layers import numpy_conv_bn

from ssd_jax.models.backbones import resnet

SMALL = 1 / 16


def param_count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def random_variables(module, x, seed=0):
  """Variables of `module` for input `x`, all drawn at random with numpy
  (no initialiser runs): kernels He-normal, every BatchNorm's scale, bias,
  mean and var away from the 1/0/0/1 of a fresh init, so that each is seen
  by the checks."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)
  draws = {
    "kernel": lambda s: rng.normal(0, np.sqrt(2 / np.prod(s[:-1])), s),
    "scale": lambda s: rng.uniform(0.5, 1.5, s),
    "bias": lambda s: rng.normal(0, 0.2, s),
    "mean": lambda s: rng.normal(0, 0.2, s),
    "var": lambda s: rng.uniform(0.5, 2.0, s),
  }
  return jax.tree_util.tree_map_with_path(
    lambda path, leaf: jnp.asarray(
      draws[path[-1].key](leaf.shape), jnp.float32
    ),
    shapes,
  )


def sub(variables, name):
  """The variables of submodule `name` (both collections)."""
  return {col: tree[name] for col, tree in variables.items()}


def numpy_max_pool_3x3_s2_p1(x):
  """torch's MaxPool2d(3, 2, padding=1): pads with -inf, floor rounding."""
  x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  ho, wo = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
  windows = [
    x[:, i : i + 2 * (ho - 1) + 1 : 2, j : j + 2 * (wo - 1) + 1 : 2]
    for i in range(3)
    for j in range(3)
  ]
  return np.max(windows, axis=0)


def torch_conv_side(n, kernel, stride, padding):
  return (n + 2 * padding - kernel) // stride + 1


def test_parameter_counts_match_torchvision():
  # torchvision resnet50: 25,557,032 parameters, of which fc has
  # 2048 * 1000 + 1000; conv1 .. layer3 (NVIDIA's trunk) has 8,543,296.
  x = jnp.zeros((1, 64, 64, 3))
  full = jax.eval_shape(resnet.ResNet50().init, jax.random.key(0), x)
  trunk = jax.eval_shape(resnet.ResNet50Backbone().init, jax.random.key(0), x)
  assert param_count(full["params"]) == 25_557_032 - 2_049_000
  assert param_count(trunk["params"]) == 8_543_296
  # 53 BatchNorms in resnet50 (stem, 16 blocks x 3, 4 downsamples).
  assert len(jax.tree.leaves(full["batch_stats"])) == 2 * 53
  assert len(jax.tree.leaves(trunk["batch_stats"])) == 2 * (1 + 13 * 3 + 3)


def test_parameter_names_follow_torchvision():
  x = jnp.zeros((1, 32, 32, 3))
  shapes = jax.eval_shape(resnet.ResNet50().init, jax.random.key(0), x)
  params = shapes["params"]
  blocks = [
    f"layer{s}_{b}" for s, n in enumerate((3, 4, 6, 3), 1) for b in range(n)
  ]
  assert set(params) == {"conv1", *blocks}
  assert params["conv1"]["conv"]["kernel"].shape == (7, 7, 3, 64)
  for name in blocks:
    block = params[name]
    assert set(block) == {"conv1", "conv2", "conv3"} | (
      {"downsample"} if name.endswith("_0") else set()
    )
    assert set(block["conv2"]) == {"conv", "bn"}  # no conv bias
  l2 = params["layer2_0"]
  assert l2["conv1"]["conv"]["kernel"].shape == (1, 1, 256, 128)
  assert l2["conv2"]["conv"]["kernel"].shape == (3, 3, 128, 128)
  assert l2["conv3"]["conv"]["kernel"].shape == (1, 1, 128, 512)
  assert l2["downsample"]["conv"]["kernel"].shape == (1, 1, 256, 512)
  assert set(shapes["batch_stats"]["layer2_0"]["conv3"]["bn"]) == {
    "mean",
    "var",
  }


@pytest.mark.parametrize("size", [300, 224, 65, 33, 8, 1])
def test_output_sides_follow_torchs_arithmetic(size):
  side = torch_conv_side(size, 7, 2, 3)  # conv1
  side = torch_conv_side(side, 3, 2, 1)  # max pool
  nvidia = torch_conv_side(side, 3, 2, 1)  # layer2 (layer3 at stride 1)
  full = torch_conv_side(torch_conv_side(nvidia, 3, 2, 1), 3, 2, 1)
  assert resnet.ResNet50Backbone.feature_sizes(size) == (nvidia,)
  assert resnet.ResNet.output_size(size, (1, 2, 2, 2)) == full
  x = jnp.zeros((1, size, size, 3))
  backbone = resnet.ResNet50Backbone(width=SMALL)
  (out,) = jax.eval_shape(
    lambda x: backbone.init_with_output(jax.random.key(0), x)[0], x
  )
  assert out.shape == (1, nvidia, nvidia, 4 * 16)
  trunk = resnet.ResNet50(width=SMALL)
  out = jax.eval_shape(
    lambda x: trunk.init_with_output(jax.random.key(0), x)[0], x
  )
  assert out.shape == (1, full, full, 4 * 32)
  if size == 300:
    assert nvidia == 38  # NVIDIA's 38x38x1024 map
    assert resnet.ResNet50Backbone.out_channels() == 1024


def test_stem_equals_numpy_conv_bn_relu_max_pool():
  stem = resnet.ResNet(stage_sizes=(), strides=(), width=SMALL)
  x = jax.random.normal(jax.random.key(0), (2, 23, 20, 3))
  variables = random_variables(stem, x)
  got = stem.apply(variables, x)
  y = numpy_conv_bn(
    x, variables["params"]["conv1"], variables["batch_stats"]["conv1"], 2, 3
  )
  want = numpy_max_pool_3x3_s2_p1(np.maximum(y, 0))
  assert got.shape == want.shape == (2, 6, 5, 4)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "stride, downsample", [(2, True), (1, True), (1, False)]
)
def test_bottleneck_equals_numpy_reference(stride, downsample):
  # v1.5: the stride is on conv2 (3x3); on conv1 (1x1) it would differ.
  channels = 16 if downsample else 32
  block = resnet.Bottleneck(8, stride, downsample)
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, channels))
  variables = random_variables(block, x)
  got = block.apply(variables, x)

  def conv_bn(name, x, stride=1, padding=0):
    v = sub(variables, name)
    return numpy_conv_bn(x, v["params"], v["batch_stats"], stride, padding)

  y = np.maximum(conv_bn("conv1", x), 0)
  y = np.maximum(conv_bn("conv2", y, stride, 1), 0)
  y = conv_bn("conv3", y)
  shortcut = conv_bn("downsample", x, stride) if downsample else x
  want = np.maximum(y + shortcut, 0)
  assert got.shape == want.shape == (2, -(-9 // stride), 8 // stride, 32)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_backbone_is_the_trunk_in_its_own_scope():
  # The same variables as the trunk at the top of the backbone's scope,
  # so torchvision's weights convert to both alike.
  x = jnp.zeros((1, 40, 40, 3))
  backbone = resnet.ResNet50Backbone(width=SMALL)
  trunk = resnet.ResNet(
    stage_sizes=resnet.NVIDIA_STAGE_SIZES,
    strides=resnet.NVIDIA_STRIDES,
    width=SMALL,
  )
  variables = jax.eval_shape(backbone.init, jax.random.key(0), x)
  assert jax.tree.structure(variables) == jax.tree.structure(
    jax.eval_shape(trunk.init, jax.random.key(0), x)
  )
  maps = jax.eval_shape(backbone.apply, variables, x)
  assert isinstance(maps, list) and len(maps) == 1
  assert maps[0].shape == (1, 5, 5, 64)


def test_train_mode_uses_batch_statistics_and_updates_every_one():
  backbone = resnet.ResNet50Backbone(width=SMALL)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  variables = random_variables(backbone, x)
  (train_map,), updates = backbone.apply(
    variables, x, train=True, mutable=["batch_stats"]
  )
  assert set(updates) == {"batch_stats"}
  old = jax.tree.leaves(variables["batch_stats"])
  new = jax.tree.leaves(updates["batch_stats"])
  assert len(old) == len(new) == 2 * (1 + 13 * 3 + 3)
  assert all(not np.allclose(a, b) for a, b in zip(old, new, strict=True))
  # Evaluation: per image, whatever else is in the batch.
  (eval_map,) = backbone.apply(variables, x)
  (other,) = backbone.apply(variables, x.at[0].set(-x[0]))
  np.testing.assert_allclose(eval_map[1], other[1], rtol=1e-4, atol=1e-4)
  assert not np.allclose(train_map, eval_map)


def test_stage_sizes_and_strides_must_pair():
  trunk = resnet.ResNet(stage_sizes=(3, 4), strides=(1,))
  with pytest.raises(ValueError, match=r"ResNet: stage_sizes \(3, 4\)"):
    trunk.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="at most 4 stages"):
    resnet.ResNet(stage_sizes=(1,) * 5, strides=(1,) * 5).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3))
    )
