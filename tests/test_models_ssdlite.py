"""Tests for ssd_jax/models/ssdlite.py: SSDLite320, its parts and priors.

Also tests `default_boxes.torchvision_prior_config`, the prior rule this
model added at the end of ssd_jax/default_boxes.py. Priors are checked
against a loop written here from torchvision's `DefaultBoxGenerator` (always)
and against the generator itself (where torch is installed); outputs of the
whole model against torchvision's in tests/test_weights_ssdlite.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_models_layers import assert_cpu_fast_ops_everywhere

from ssd_jax import default_boxes as db
from ssd_jax.models import ssdlite

# torchvision's ssdlite320_mobilenet_v3_large(num_classes=91).
TORCHVISION_PARAMS = 3_440_060


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def test_full_size_parameter_count_and_collections():
  model = ssdlite.SSDLite320(num_classes=91)
  x = jnp.zeros((1, 320, 320, 3))
  (loc, logits), variables = jax.eval_shape(
    model.init_with_output, jax.random.key(0), x
  )
  assert set(variables) == {"params", "batch_stats"}
  assert _count(variables["params"]) == TORCHVISION_PARAMS
  assert set(variables["params"]) == {
    "backbone", "extra_0", "extra_1", "extra_2", "extra_3", "heads"
  }  # fmt: skip
  # BatchNorm scale + offset in params, mean + var in batch_stats.
  bn_params = sum(
    math.prod(leaf.shape)
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
    if "bn" in str(path)
  )
  assert _count(variables["batch_stats"]) == bn_params
  assert loc.shape == (1, 3234, 4) and logits.shape == (1, 3234, 91)
  assert ssdlite.SSDLite320.normalization == "minus_one_one"


def test_parts_at_full_size():
  model = ssdlite.SSDLite320(num_classes=91)
  params = jax.eval_shape(
    model.init, jax.random.key(0), jnp.zeros((1, 320, 320, 3))
  )["params"]
  kernel = lambda *path: _tree_get(params, *path, "kernel").shape
  assert kernel("extra_0", "reduce", "conv") == (1, 1, 480, 256)
  assert kernel("extra_0", "depthwise", "conv") == (3, 3, 1, 256)
  assert kernel("extra_3", "expand", "conv") == (1, 1, 64, 128)
  sources = (672, 480, 512, 256, 256, 128)
  for k, channels in enumerate(sources):
    assert kernel("heads", f"loc_{k}", "depthwise", "conv") == (
      3, 3, 1, channels
    )  # fmt: skip
    assert kernel("heads", f"loc_{k}", "conv") == (1, 1, channels, 24)
    assert kernel("heads", f"conf_{k}", "conv") == (1, 1, channels, 6 * 91)
  assert ssdlite.extra_channels() == (512, 256, 256, 128)
  assert ssdlite.extra_channels(0.25) == (128, 64, 64, 32)
  assert ssdlite.extra_channels(0.1) == (51, 25, 25, 16)  # min_depth 16


def _tree_get(tree, *path):
  for key in path:
    tree = tree[key]
  return tree


def reference_priors(image_size, feature_sizes):
  """torchvision's DefaultBoxGenerator([[2, 3]] * 6, 0.2, 0.95), as a loop.

  Scales 0.2 + 0.15 k for the six maps, then 1; at each location (row-major,
  y outer) the boxes (s, s), (s', s') with s' = sqrt(s_k s_{k+1}), then for
  r in (2, 3): (s sqrt(r), s / sqrt(r)), (s / sqrt(r), s sqrt(r)); w and h
  clamped to [0, 1]. Centres do not depend on image_size.
  """
  del image_size
  scales = [0.2 + 0.15 * k for k in range(6)] + [1.0]
  rows = []
  for k, f in enumerate(feature_sizes):
    s, s_next = scales[k], scales[k + 1]
    pairs = [(s, s), (math.sqrt(s * s_next),) * 2]
    for r in (2, 3):
      pairs += [(s * math.sqrt(r), s / math.sqrt(r))]
      pairs += [(s / math.sqrt(r), s * math.sqrt(r))]
    for i in range(f):
      for j in range(f):
        for w, h in pairs:
          rows.append(((j + 0.5) / f, (i + 0.5) / f, min(w, 1), min(h, 1)))
  return np.asarray(rows, np.float32)


@pytest.mark.parametrize(
  "image_size, sides",
  [
    (320, (20, 10, 5, 3, 2, 1)),
    (128, (8, 4, 2, 1, 1, 1)),
    (96, (6, 3, 2, 1, 1, 1)),
    (300, (19, 10, 5, 3, 2, 1)),
  ],
)
def test_priors_equal_loop_and_output_rows(image_size, sides):
  model = ssdlite.SSDLite320(num_classes=3, image_size=image_size, width=0.25)
  assert model.feature_sizes() == sides
  priors = model.priors()  # unbound
  assert priors.dtype == np.float32
  assert priors.shape == (6 * sum(f * f for f in sides), 4)
  np.testing.assert_allclose(
    priors, reference_priors(image_size, sides), atol=1e-6
  )
  x = jnp.zeros((1, image_size, image_size, 3))
  loc, logits = jax.eval_shape(model.init_with_output, jax.random.key(0), x)[0]
  assert loc.shape == (1, len(priors), 4)
  assert logits.shape == (1, len(priors), 3)
  if image_size == 320:
    assert len(priors) == 3234


def test_priors_equal_torchvision_default_box_generator():
  pytest.importorskip("torch")
  anchor_utils = pytest.importorskip(
    "torchvision.models.detection.anchor_utils"
  )
  generator = anchor_utils.DefaultBoxGenerator(
    [[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95
  )
  for image_size in (320, 128, 96):
    model = ssdlite.SSDLite320(num_classes=91, image_size=image_size)
    sides = [[f, f] for f in model.feature_sizes()]
    theirs = generator._grid_default_boxes(sides, [image_size, image_size])
    np.testing.assert_allclose(model.priors(), theirs.numpy(), atol=1e-6)


def test_torchvision_prior_config():
  config = db.torchvision_prior_config(
    100, (4, 2), ((2.0,), (3.0,)), min_ratio=0.3, max_ratio=0.8
  )
  assert isinstance(config, db.TorchvisionPriorConfig)
  # Scales 0.3, 0.8, then 1.0; steps 100 / side.
  np.testing.assert_allclose(config.min_sizes, (30, 80))
  np.testing.assert_allclose(config.max_sizes, (80, 100))
  np.testing.assert_allclose(config.steps, (25, 50))
  boxes = db.prior_boxes(config)
  assert boxes.shape == (16 * 4 + 4 * 4, 4)
  np.testing.assert_allclose(boxes[1], (0.125, 0.125) + (math.sqrt(0.24),) * 2)
  # The second map's (0.8 sqrt(3), ...) box is clamped to width 1.
  np.testing.assert_allclose(boxes[-2], (0.75, 0.75, 1.0, 0.8 / math.sqrt(3)))
  one = db.torchvision_prior_config(10, (1,), ((2,),), 0.4, 0.7)
  assert one.min_sizes == (4.0,) and one.max_sizes == (7.0,)
  with pytest.raises(ValueError, match="one aspect_ratios entry per map"):
    db.torchvision_prior_config(100, (4, 2), ((2.0,),))
  with pytest.raises(ValueError, match="one aspect_ratios entry per map"):
    db.torchvision_prior_config(100, (), ())


def test_input_shape_is_checked():
  model = ssdlite.SSDLite320(num_classes=3, image_size=96, width=0.25)
  x = jnp.zeros((1, 96, 96, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  for bad in [(1, 128, 128, 3), (96, 96, 3), (1, 96, 96, 1)]:
    with pytest.raises(
      ValueError, match=r"expects images of shape \[B, 96, 96, 3\]"
    ):
      model.apply(variables, jnp.zeros(bad))


def test_init_values_of_the_added_layers():
  # The heads alone: compiling the whole model's init takes ~40 s on a CPU.
  heads = ssdlite.SSDLiteHeads(num_classes=3, boxes_per_location=(6,))
  sources = [jnp.zeros((1, 2, 2, 16))]
  variables = jax.jit(heads.init)(jax.random.key(0), sources)
  assert set(variables) == {"params", "batch_stats"}
  conf = variables["params"]["conf_0"]
  assert conf["conv"]["kernel"].shape == (1, 1, 16, 18)
  np.testing.assert_array_equal(conf["conv"]["bias"], 0.0)
  std = float(np.std(variables["params"]["loc_0"]["conv"]["kernel"]))
  assert 0.02 < std < 0.04  # torchvision's normal(0, 0.03), 384 draws
  np.testing.assert_array_equal(conf["depthwise"]["bn"]["scale"], 1.0)
  for path, leaf in jax.tree_util.tree_leaves_with_path(
    variables["batch_stats"]
  ):
    np.testing.assert_array_equal(leaf, 1.0 if path[-1].key == "var" else 0.0)


def _fresh_variables(shapes, seed=0):
  """Random params and init's statistics (mean 0, var 1), without init."""
  rng = np.random.default_rng(seed)
  return {
    "params": jax.tree.map(
      lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32),
      shapes["params"],
    ),
    "batch_stats": jax.tree_util.tree_map_with_path(
      lambda path, s: np.full(s.shape, path[-1].key == "var", np.float32),
      shapes["batch_stats"],
    ),
  }


def test_train_then_eval_at_small_width():
  model = ssdlite.SSDLite320(num_classes=4, image_size=96, width=0.25)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 96, 96, 3))
  x = x.astype(np.float32)
  variables = _fresh_variables(jax.eval_shape(model.init, jax.random.key(0), x))

  @jax.jit
  def train_then_eval(variables, x):
    train_out, updates = model.apply(
      variables, x, train=True, mutable=["batch_stats"]
    )
    eval_out = model.apply({"params": variables["params"], **updates}, x)
    return train_out, updates, eval_out

  (loc, logits), updates, (eval_loc, _) = train_then_eval(variables, x)
  assert loc.shape == (2, 312, 4) and logits.shape == (2, 312, 4)
  assert np.all(np.isfinite(loc)) and np.all(np.isfinite(logits))
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
    variables["batch_stats"]
  )
  # Running variances moved from 1 by 0.03 (torch's momentum) of a batch's.
  var = updates["batch_stats"]["heads"]["loc_5"]["depthwise"]["bn"]["var"]
  assert np.all(var >= 0.97) and np.any(var != 1.0)
  assert eval_loc.shape == (2, 312, 4)
  assert not np.allclose(eval_loc, loc)


def test_cpu_fast_ops_reach_every_batch_norm():
  """cpu_fast_ops: every BatchNorm of the backbone, extras and heads is
  cpu_ops.BatchNorm (none of flax's), the same training outputs."""
  model = ssdlite.SSDLite320(num_classes=4, image_size=96, width=0.25)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 96, 96, 3))
  x = x.astype(np.float32)
  variables = _fresh_variables(jax.eval_shape(model.init, jax.random.key(0), x))
  assert_cpu_fast_ops_everywhere(model, variables, x)


def test_bfloat16_outputs():
  model = ssdlite.SSDLite320(
    num_classes=3, image_size=96, width=0.25, dtype=jnp.bfloat16
  )
  x = jnp.zeros((1, 96, 96, 3))
  (loc, logits), variables = jax.eval_shape(
    model.init_with_output, jax.random.key(0), x
  )
  assert loc.dtype == logits.dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))


def test_extra_blocks_start_from_torchvisions_normal_init():
  block = ssdlite.SSDLiteExtraBlock(features=128)
  params = jax.jit(block.init)(jax.random.key(0), jnp.zeros((1, 4, 4, 256)))[
    "params"
  ]
  for name in ("reduce", "depthwise", "expand"):
    kernel = np.asarray(params[name]["conv"]["kernel"])
    assert 0.025 < kernel.std() < 0.035, name  # normal(0, 0.03)
