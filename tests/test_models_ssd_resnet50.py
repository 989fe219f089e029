"""Tests for ssd_jax/models/ssd_resnet50.py: NVIDIA's SSD300 v1.1.

Sizes and the parameter count are checked against NVIDIA's module (their
`SSD300(ResNet('resnet50'))` has 22,894,902 parameters at 81 classes), the
default boxes against a numpy re-implementation of NVIDIA's
`DefaultBoxes` loop (box-kind-major) put in this project's order. Forward
passes use a width-reduced model; the equality with NVIDIA's torch module
is in tests/test_weights_nvidia.py.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_models_backbones_resnet import param_count, random_variables
from test_models_layers import assert_cpu_fast_ops_everywhere

from ssd_jax.models import ssd_resnet50
from ssd_jax.models.ssd_resnet50 import SSD300ResNet50

SMALL = 1 / 16
FEATURES = (38, 19, 10, 5, 3, 1)
BOXES = (4, 6, 6, 6, 4, 4)


def nvidia_dboxes300_coco():
  """NVIDIA's `dboxes300_coco()` (`DefaultBoxes(300, [38, 19, 10, 5, 3, 1],
  [8, 16, 32, 64, 100, 300], [21, 45, 99, 153, 207, 261, 315], [[2], [2,
  3], [2, 3], [2, 3], [2], [2]])`): per map, per box kind, per (i, j),
  clamped to [0, 1]; in NVIDIA's (box-kind-major) order."""
  fig, steps = 300, [8, 16, 32, 64, 100, 300]
  scales = [21, 45, 99, 153, 207, 261, 315]
  ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
  boxes = []
  for idx, sfeat in enumerate(FEATURES):
    fk = fig / steps[idx]
    sk1, sk2 = scales[idx] / fig, scales[idx + 1] / fig
    sk3 = math.sqrt(sk1 * sk2)
    sizes = [(sk1, sk1), (sk3, sk3)]
    for alpha in ratios[idx]:
      w, h = sk1 * math.sqrt(alpha), sk1 / math.sqrt(alpha)
      sizes += [(w, h), (h, w)]
    for w, h in sizes:
      for i, j in itertools.product(range(sfeat), repeat=2):
        boxes.append(((j + 0.5) / fk, (i + 0.5) / fk, w, h))
  return np.clip(np.asarray(boxes, np.float32), 0, 1)


def nvidia_rows_in_our_order():
  """For each of our rows, NVIDIA's row: per map, ours is (location, box
  kind) with the box kind minor, theirs (box kind, location)."""
  rows, start = [], 0
  for f, a in zip(FEATURES, BOXES, strict=True):
    for loc in range(f * f):
      rows += [start + kind * f * f + loc for kind in range(a)]
    start += a * f * f
  return np.asarray(rows)


def test_full_size_parameter_count_is_nvidias():
  model = SSD300ResNet50(num_classes=81)
  variables = jax.eval_shape(
    model.init, jax.random.key(0), jnp.zeros((1, 300, 300, 3))
  )
  assert set(variables) == {"params", "batch_stats"}
  assert param_count(variables["params"]) == 22_894_902
  assert set(variables["params"]) == {"backbone", "extras", "heads"}
  out = jax.eval_shape(model.apply, variables, jnp.zeros((2, 300, 300, 3)))
  assert [o.shape for o in out] == [(2, 8732, 4), (2, 8732, 81)]


def test_extras_and_heads_are_nvidias():
  params = jax.eval_shape(
    SSD300ResNet50(num_classes=81).init,
    jax.random.key(0),
    jnp.zeros((1, 300, 300, 3)),
  )["params"]
  chans = (1024, 512, 512, 256, 256, 256)
  mids = (256, 256, 128, 128, 128)
  for i, (cin, cout, mid) in enumerate(
    zip(chans[:-1], chans[1:], mids, strict=True)
  ):
    block = params["extras"][f"block{i}"]
    assert set(block["conv1"]) == set(block["conv2"]) == {"conv", "bn"}
    assert set(block["conv2"]["conv"]) == {"kernel"}  # bias-free
    assert block["conv1"]["conv"]["kernel"].shape == (1, 1, cin, mid)
    assert block["conv2"]["conv"]["kernel"].shape == (3, 3, mid, cout)
  for k, (c, a) in enumerate(zip(chans, BOXES, strict=True)):
    loc, conf = params["heads"][f"loc_{k}"], params["heads"][f"conf_{k}"]
    assert loc["kernel"].shape == (3, 3, c, 4 * a)
    assert conf["kernel"].shape == (3, 3, c, 81 * a)
    assert loc["bias"].shape == (4 * a,)  # heads keep their bias


def test_source_map_sides():
  model = SSD300ResNet50(num_classes=3, width=SMALL)
  assert model.feature_sizes() == FEATURES
  assert model.head_boxes() == BOXES
  extras = ssd_resnet50.BNExtraLayers(ssd_resnet50.NVIDIA_EXTRAS, SMALL)
  maps = jax.eval_shape(
    lambda x: extras.init_with_output(jax.random.key(0), x)[0],
    jnp.zeros((1, 38, 38, 64)),
  )
  assert [m.shape[1:] for m in maps] == [
    (f, f, c) for f, c in zip(FEATURES[1:], (32, 32, 16, 16, 16), strict=True)
  ]


def test_priors_are_nvidias_dboxes300_coco_in_our_order():
  priors = SSD300ResNet50(num_classes=81).priors()  # unbound
  theirs = nvidia_dboxes300_coco()
  assert priors.shape == (8732, 4) and priors.dtype == np.float32
  assert priors.min() >= 0 and priors.max() <= 1
  np.testing.assert_allclose(
    priors, theirs[nvidia_rows_in_our_order()], rtol=1e-6, atol=1e-7
  )


@pytest.mark.parametrize("size", [320, 512, 224])
def test_other_image_sizes_are_refused(size):
  model = SSD300ResNet50(num_classes=81, image_size=size)
  with pytest.raises(ValueError, match=f"image_size must be 300, got {size}"):
    model.priors()
  with pytest.raises(ValueError, match="image_size must be 300"):
    model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))


def test_input_shape_is_checked():
  model = SSD300ResNet50(num_classes=3, width=SMALL)
  with pytest.raises(ValueError, match=r"expects images of shape \[B, 300"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 300, 299, 3)))
  with pytest.raises(ValueError, match=r"got \(300, 300, 3\)"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((300, 300, 3)))


def test_normalization_and_dtypes():
  assert SSD300ResNet50.normalization == "imagenet"
  model = SSD300ResNet50(num_classes=5, width=SMALL, dtype=jnp.bfloat16)
  x = jnp.zeros((1, 300, 300, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
  loc, logits = jax.eval_shape(model.apply, variables, x)
  assert loc.dtype == logits.dtype == jnp.bfloat16
  assert logits.shape == (1, 8732, 5)


def test_forward_eval_and_train_modes():
  model = SSD300ResNet50(num_classes=4, width=SMALL)
  x = jax.random.normal(jax.random.key(0), (2, 300, 300, 3))
  variables = random_variables(model, x)
  loc, logits = model.apply(variables, x)
  assert loc.shape == (2, 8732, 4) and logits.shape == (2, 8732, 4)
  assert np.isfinite(loc).all() and np.isfinite(logits).all()
  # Evaluation mode: each image on its own, whatever else is in the batch
  # (the same shapes, so no new compilation).
  loc1, logits1 = model.apply(variables, x.at[0].set(-x[0]))
  np.testing.assert_allclose(loc[1], loc1[1], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(logits[1], logits1[1], rtol=1e-4, atol=1e-4)
  assert not np.allclose(loc[0], loc1[0])
  # Training mode: batch statistics, every running statistic updated.
  (train_loc, _), updates = model.apply(
    variables, x, train=True, mutable=["batch_stats"]
  )
  assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
    variables["batch_stats"]
  )
  changed = jax.tree.map(
    lambda a, b: not np.allclose(a, b),
    updates["batch_stats"],
    variables["batch_stats"],
  )
  assert all(jax.tree.leaves(changed))
  assert not np.allclose(train_loc, loc)


def test_cpu_fast_ops_reach_every_batch_norm():
  """cpu_fast_ops: every BatchNorm of the trunk and the extras is
  cpu_ops.BatchNorm (none of flax's), the same training outputs."""
  model = SSD300ResNet50(num_classes=4, width=SMALL)
  x = jax.random.normal(jax.random.key(0), (2, 300, 300, 3))
  variables = random_variables(model, x)
  assert_cpu_fast_ops_everywhere(model, variables, x)


def test_extra_blocks_start_from_nvidias_xavier_init():
  block = ssd_resnet50.BNExtraBlock(ssd_resnet50.NVIDIA_EXTRAS[0])
  params = jax.jit(block.init)(jax.random.key(0), jnp.zeros((1, 5, 5, 1024)))[
    "params"
  ]
  for name in ("conv1", "conv2"):
    kernel = np.asarray(params[name]["conv"]["kernel"])
    k, _, fan_in, out = kernel.shape
    bound = math.sqrt(6 / (k * k * (fan_in + out)))  # Xavier uniform.
    assert np.abs(kernel).max() <= bound
    np.testing.assert_allclose(kernel.std(), bound / math.sqrt(3), rtol=0.05)
