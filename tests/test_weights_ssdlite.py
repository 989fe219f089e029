"""Tests for ssd_jax/weights/ssdlite.py: torchvision SSDLite / MobileNetV3.

State dicts are built here with random values and the keys and shapes of
torchvision's modules, written out from torchvision's `mobilenet_v3_large`
and `ssdlite320_mobilenet_v3_large` definitions (at a reduced width, by
torchvision's width rules); no torch is needed for the placement and error
tests. Where torch is installed, those tables are checked against
torchvision's own state dicts, and the converted models' outputs against
torchvision's on the same input, with BatchNorm in eval mode on random
running statistics.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ssd_jax.models.backbones.mobilenet_v3 import MobileNetV3Large
from ssd_jax.models.ssdlite import SSDLite320
from ssd_jax.weights import io
from ssd_jax.weights import ssdlite as convert

WIDTH = 0.25

# torchvision's `_mobilenet_v3_conf("mobilenet_v3_large")`: input, kernel,
# expanded, output channels, SE, hardswish, stride (before width and tail).
TV_BLOCKS = [
  (16, 3, 16, 16, False, False, 1),
  (16, 3, 64, 24, False, False, 2),
  (24, 3, 72, 24, False, False, 1),
  (24, 5, 72, 40, True, False, 2),
  (40, 5, 120, 40, True, False, 1),
  (40, 5, 120, 40, True, False, 1),
  (40, 3, 240, 80, False, True, 2),
  (80, 3, 200, 80, False, True, 1),
  (80, 3, 184, 80, False, True, 1),
  (80, 3, 184, 80, False, True, 1),
  (80, 3, 480, 112, True, True, 1),
  (112, 3, 672, 112, True, True, 1),
  (112, 5, 672, 160, True, True, 2),
  (160, 5, 960, 160, True, True, 1),
  (160, 5, 960, 160, True, True, 1),
]


def _divisible(v):
  """torchvision's `_make_divisible(v, 8)`."""
  out = max(8, int(v + 4) // 8 * 8)
  return out + 8 if out < 0.9 * v else out


def _blocks(width, reduced_tail):
  out = []
  for i, (cin, k, exp, cout, se, hs, stride) in enumerate(TV_BLOCKS):
    if reduced_tail and i >= 12:
      cout //= 2
      if i > 12:
        cin, exp = cin // 2, exp // 2
    scaled = [_divisible(c * width) for c in (cin, exp, cout)]
    out.append((scaled[0], k, scaled[1], scaled[2], se, hs, stride))
  return out


def _conv_bn(shapes, prefix, cout, cin, k, groups=1):
  shapes[f"{prefix}.0.weight"] = (cout, cin // groups, k, k)
  for name in ("weight", "bias", "running_mean", "running_var"):
    shapes[f"{prefix}.1.{name}"] = (cout,)
  shapes[f"{prefix}.1.num_batches_tracked"] = ()


def _inverted_residual(shapes, layer_prefix, block):
  """torchvision's InvertedResidual; `layer_prefix(j)` names `block[j]`."""
  cin, k, exp, cout, se, _, _ = block
  j = 0
  if exp != cin:
    _conv_bn(shapes, layer_prefix(j), exp, cin, 1)
    j += 1
  _conv_bn(shapes, layer_prefix(j), exp, exp, k, groups=exp)
  j += 1
  if se:
    squeeze = _divisible(exp // 4)
    shapes[f"{layer_prefix(j)}.fc1.weight"] = (squeeze, exp, 1, 1)
    shapes[f"{layer_prefix(j)}.fc1.bias"] = (squeeze,)
    shapes[f"{layer_prefix(j)}.fc2.weight"] = (exp, squeeze, 1, 1)
    shapes[f"{layer_prefix(j)}.fc2.bias"] = (exp,)
    j += 1
  _conv_bn(shapes, layer_prefix(j), cout, exp, 1)


def tv_mobilenet_v3_shapes(width=1.0, reduced_tail=False):
  """Keys and shapes of torchvision's `mobilenet_v3_large(...)`."""
  blocks, shapes = _blocks(width, reduced_tail), {}
  _conv_bn(shapes, "features.0", _divisible(16 * width), 3, 3)
  for i, block in enumerate(blocks, start=1):
    _inverted_residual(shapes, lambda j, i=i: f"features.{i}.block.{j}", block)
  last = 6 * blocks[-1][3]
  _conv_bn(shapes, "features.16", last, blocks[-1][3], 1)
  hidden = _divisible((1280 // (2 if reduced_tail else 1)) * width)
  shapes["classifier.0.weight"] = (hidden, last)
  shapes["classifier.0.bias"] = (hidden,)
  shapes["classifier.3.weight"] = (1000, hidden)
  shapes["classifier.3.bias"] = (1000,)
  return shapes


def tv_ssdlite_shapes(num_classes, width=1.0):
  """Keys and shapes of torchvision's SSDLite320 (reduced tail), its
  backbone built at `width_mult=width` and its extractor at `width`."""
  blocks, shapes = _blocks(width, reduced_tail=True), {}
  _conv_bn(shapes, "backbone.features.0.0", _divisible(16 * width), 3, 3)

  def layer_prefix(i, j):
    if i < 13:
      return f"backbone.features.0.{i}.block.{j}"
    if i == 13:  # split after C4's expansion, indices kept
      return (
        "backbone.features.0.13" if j == 0 else f"backbone.features.1.0.{j}"
      )
    return f"backbone.features.1.{i - 13}.block.{j}"

  for i, block in enumerate(blocks, start=1):
    _inverted_residual(shapes, functools.partial(layer_prefix, i), block)
  last = 6 * blocks[-1][3]
  _conv_bn(shapes, "backbone.features.1.3", last, blocks[-1][3], 1)
  sources = [blocks[12][2], last]
  for k, depth in enumerate((512, 256, 256, 128)):
    out = max(16, int(depth * width))
    prefix = f"backbone.extra.{k}"
    _conv_bn(shapes, f"{prefix}.0", out // 2, sources[-1], 1)
    _conv_bn(shapes, f"{prefix}.1", out // 2, out // 2, 3, groups=out // 2)
    _conv_bn(shapes, f"{prefix}.2", out, out // 2, 1)
    sources.append(out)
  for head, columns in [("regression", 4), ("classification", num_classes)]:
    for k, channels in enumerate(sources):
      prefix = f"head.{head}_head.module_list.{k}"
      _conv_bn(shapes, f"{prefix}.0", channels, channels, 3, groups=channels)
      shapes[f"{prefix}.1.weight"] = (6 * columns, channels, 1, 1)
      shapes[f"{prefix}.1.bias"] = (6 * columns,)
  return shapes


def random_state_dict(shapes, seed=0):
  """Distinct random values; BatchNorm variances in [0.5, 1.5]."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, shape in shapes.items():
    if key.endswith("num_batches_tracked"):
      out[key] = np.asarray(7, np.int64)
    elif key.endswith("running_var"):
      out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      out[key] = rng.normal(0, 0.2, shape).astype(np.float32)
  return out


def _oihw(hwio):
  return np.transpose(np.asarray(hwio), (3, 2, 0, 1))


def _get(tree, path):
  for key in path.split("/"):
    tree = tree[key]
  return np.asarray(tree)


# --- SSDLite320 ---------------------------------------------------------------

# Torch key -> our path, written out by hand for every kind of layer.
SSDLITE_PLACES = {
  "backbone.features.0.0.0.weight": "params/backbone/stem/conv/kernel",
  "backbone.features.0.0.1.weight": "params/backbone/stem/bn/scale",
  "backbone.features.0.1.block.0.0.weight": (
    "params/backbone/block1/depthwise/conv/kernel"
  ),
  "backbone.features.0.4.block.2.fc2.bias": (
    "params/backbone/block4/se/fc2/bias"
  ),
  "backbone.features.0.13.0.weight": (
    "params/backbone/block13/expand/conv/kernel"
  ),
  "backbone.features.0.13.1.running_var": (
    "batch_stats/backbone/block13/expand/bn/var"
  ),
  "backbone.features.1.0.1.0.weight": (
    "params/backbone/block13/depthwise/conv/kernel"
  ),
  "backbone.features.1.0.2.fc1.weight": "params/backbone/block13/se/fc1/kernel",
  "backbone.features.1.0.3.1.bias": "params/backbone/block13/project/bn/bias",
  "backbone.features.1.1.block.0.1.running_mean": (
    "batch_stats/backbone/block14/expand/bn/mean"
  ),
  "backbone.features.1.2.block.3.0.weight": (
    "params/backbone/block15/project/conv/kernel"
  ),
  "backbone.features.1.3.1.running_mean": (
    "batch_stats/backbone/last_conv/bn/mean"
  ),
  "backbone.extra.0.0.0.weight": "params/extra_0/reduce/conv/kernel",
  "backbone.extra.2.1.1.bias": "params/extra_2/depthwise/bn/bias",
  "backbone.extra.3.2.0.weight": "params/extra_3/expand/conv/kernel",
  "head.regression_head.module_list.0.0.1.running_mean": (
    "batch_stats/heads/loc_0/depthwise/bn/mean"
  ),
  "head.regression_head.module_list.5.1.bias": "params/heads/loc_5/conv/bias",
  "head.classification_head.module_list.4.1.weight": (
    "params/heads/conf_4/conv/kernel"
  ),
  "head.classification_head.module_list.2.0.0.weight": (
    "params/heads/conf_2/depthwise/conv/kernel"
  ),
}


def _sorted_values(tree):
  """All values of a tree's (or list's) arrays, sorted."""
  return np.sort(np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)]))


def test_ssdlite_places_every_tensor_once():
  sd = random_state_dict(tv_ssdlite_shapes(5, WIDTH))
  variables = convert.from_torchvision_ssdlite320(sd, width=WIDTH)
  for key, path in SSDLITE_PLACES.items():
    ours = _get(variables, path)
    if key.endswith(".weight") and ours.ndim == 4:
      ours = _oihw(ours)  # depthwise [k, k, 1, C] -> [C, 1, k, k] too
    np.testing.assert_array_equal(ours, sd[key], err_msg=key)
  # Every float tensor lands exactly once (the values are all distinct).
  floats = [v for k, v in sd.items() if "num_batches" not in k]
  np.testing.assert_array_equal(
    _sorted_values(variables), _sorted_values(floats)
  )
  model = SSDLite320(num_classes=5, image_size=96, width=WIDTH)
  shapes = jax.eval_shape(
    model.init, jax.random.key(0), jnp.zeros((1, 96, 96, 3))
  )
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)
  assert all(
    a.shape == b.shape
    for a, b in zip(
      jax.tree.leaves(shapes), jax.tree.leaves(variables), strict=True
    )
  )
  assert convert.num_classes_of_ssdlite(sd) == 5


def test_ssdlite_full_size_shapes_accepted():
  shapes = tv_ssdlite_shapes(91)
  sd = {k: np.zeros(v, np.float32) for k, v in shapes.items()}
  variables = convert.from_torchvision_ssdlite320(sd)
  count = sum(np.size(x) for x in jax.tree.leaves(variables["params"]))
  assert count == 3_440_060
  assert variables["params"]["heads"]["conf_0"]["conv"]["kernel"].shape == (
    1, 1, 672, 6 * 91
  )  # fmt: skip


def test_ssdlite_errors_name_the_key():
  sd = random_state_dict(tv_ssdlite_shapes(5, WIDTH))
  key = "backbone.features.1.0.2.fc1.bias"
  with pytest.raises(KeyError, match=r"missing key.*'backbone\.features\.1\.0"):
    convert.from_torchvision_ssdlite320(
      {k: v for k, v in sd.items() if k != key}, WIDTH
    )
  with pytest.raises(KeyError, match=r"unexpected keys.*'backbone\.extra\.4"):
    convert.from_torchvision_ssdlite320(
      {**sd, "backbone.extra.4.0.0.weight": np.zeros(3)}, WIDTH
    )
  # A counter of a BatchNorm that is not there is unexpected too.
  with pytest.raises(KeyError, match=r"unexpected.*'head\.num_batches"):
    convert.from_torchvision_ssdlite320(
      {**sd, "head.num_batches_tracked": np.asarray(1)}, WIDTH
    )
  bad = dict(sd)
  bad["backbone.extra.1.1.0.weight"] = np.zeros((32, 32, 3, 3), np.float32)
  with pytest.raises(
    ValueError, match=r"shape mismatch for 'backbone\.extra\.1\.1\.0\.weight'"
  ):
    convert.from_torchvision_ssdlite320(bad, WIDTH)
  bad = dict(sd)
  bad["head.regression_head.module_list.3.0.1.running_var"] = np.ones(
    bad["head.regression_head.module_list.3.0.1.running_var"].shape, np.int32
  )
  with pytest.raises(TypeError, match=r"module_list\.3\.0\.1\.running_var"):
    convert.from_torchvision_ssdlite320(bad, WIDTH)
  bad = dict(sd)
  value = bad["backbone.features.0.0.1.running_mean"].copy()
  value[:2] = np.nan
  bad["backbone.features.0.0.1.running_mean"] = value
  with pytest.raises(
    ValueError, match=r"'backbone\.features\.0\.0\.1\.running_mean' has 2 non"
  ):
    convert.from_torchvision_ssdlite320(bad, WIDTH)
  odd = dict(sd)
  odd["head.classification_head.module_list.0.1.weight"] = np.zeros((31, 4))
  with pytest.raises(ValueError, match=r"6 \* num_classes"):
    convert.from_torchvision_ssdlite320(odd, WIDTH)
  no_head = {k: v for k, v in sd.items() if "classification_head" not in k}
  with pytest.raises(KeyError, match=r"classification_head\.module_list\.0"):
    convert.from_torchvision_ssdlite320(no_head, WIDTH)
  # Batch counters are optional (e.g. a state dict saved without them).
  no_counters = {k: v for k, v in sd.items() if "num_batches" not in k}
  convert.from_torchvision_ssdlite320(no_counters, WIDTH)


# --- MobileNetV3-Large (ImageNet) ------------------------------------------


def test_mobilenet_v3_large_into_the_backbone():
  sd = random_state_dict(tv_mobilenet_v3_shapes(WIDTH), seed=1)
  variables = convert.from_torchvision_mobilenet_v3_large(sd, width=WIDTH)
  assert set(variables) == {"params", "batch_stats"}
  assert set(variables["params"]) == {"backbone"}
  places = {
    "features.0.0.weight": "params/backbone/stem/conv/kernel",
    "features.13.block.0.1.running_var": (
      "batch_stats/backbone/block13/expand/bn/var"
    ),
    "features.13.block.2.fc2.weight": "params/backbone/block13/se/fc2/kernel",
    "features.16.1.bias": "params/backbone/last_conv/bn/bias",
  }
  for key, path in places.items():
    ours = _get(variables, path)
    ours = _oihw(ours) if ours.ndim == 4 else ours
    np.testing.assert_array_equal(ours, sd[key], err_msg=key)
  features = [
    v for k, v in sd.items() if k.startswith("features") and "num_b" not in k
  ]
  np.testing.assert_array_equal(
    _sorted_values(variables), _sorted_values(features)
  )
  # It fills the backbone of an SSDLite320 with the full tail.
  model = SSDLite320(
    num_classes=3, image_size=96, width=WIDTH, reduced_tail=False
  )
  fresh = jax.eval_shape(
    model.init, jax.random.key(0), jnp.zeros((1, 96, 96, 3))
  )
  fresh = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), fresh)
  for collection in ("params", "batch_stats"):
    merged = io.merge_params(fresh[collection], variables[collection])
    assert jax.tree.structure(merged) == jax.tree.structure(fresh[collection])
    flat = traverse_util.flatten_dict(merged, sep="/")
    untouched = [v for k, v in flat.items() if not k.startswith("backbone")]
    assert untouched and all(np.all(v == 1) for v in untouched)
    loaded = [v for k, v in flat.items() if k.startswith("backbone")]
    assert not any(np.all(v == 1) for v in loaded)


def test_mobilenet_v3_large_errors_name_the_key():
  sd = random_state_dict(tv_mobilenet_v3_shapes(WIDTH), seed=1)
  # The ImageNet classifier is ignored, whatever it holds.
  sd["classifier.3.weight"] = np.full((3,), np.nan)
  convert.from_torchvision_mobilenet_v3_large(sd, WIDTH)
  # The full tail is not the reduced one: the first differing key is named.
  with pytest.raises(
    ValueError, match=r"shape mismatch for 'features\.13\.block\.3\.0\.weight'"
  ):
    convert.from_torchvision_mobilenet_v3_large(sd, WIDTH, reduced_tail=True)
  with pytest.raises(KeyError, match=r"missing key.*'features\.7\.block\.1"):
    convert.from_torchvision_mobilenet_v3_large(
      {k: v for k, v in sd.items() if k != "features.7.block.1.1.bias"}, WIDTH
    )
  with pytest.raises(KeyError, match=r"unexpected keys.*'features\.17"):
    convert.from_torchvision_mobilenet_v3_large(
      {**sd, "features.17.0.weight": np.zeros(1)}, WIDTH
    )


# --- against torchvision ------------------------------------------------------


def _torch():
  torch = pytest.importorskip("torch")
  pytest.importorskip("torchvision")
  return torch


def _randomise_batchnorm(torch, module, seed):
  """Eval mode with random running statistics, scales and offsets."""
  g = torch.Generator().manual_seed(seed)
  for m in module.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      n = m.num_features
      m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
      m.running_var.copy_(0.5 + torch.rand(n, generator=g))
      m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
      m.bias.data.copy_(0.2 * torch.randn(n, generator=g))
  return module.eval()


def _numpy_state_dict(module):
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _assert_close(ours, ref):
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape
  scale = np.abs(ref).max()
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * scale)


def _ssdlite_outputs(torch, tv, model, variables, x):
  """torchvision's head(backbone(x)) and ours on the same NHWC input."""
  x_nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    out = tv.head(list(tv.backbone(x_nchw).values()))
  with jax.default_matmul_precision("highest"):
    loc, logits = jax.jit(model.apply)(variables, x)
  _assert_close(loc, out["bbox_regression"].numpy())
  _assert_close(logits, out["cls_logits"].numpy())


def test_against_torchvision_ssdlite320():
  torch = _torch()
  from torchvision.models.detection import ssdlite320_mobilenet_v3_large

  torch.manual_seed(0)
  tv = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
  tv = _randomise_batchnorm(torch, tv, seed=1)
  sd = tv.state_dict()  # torch tensors, converted as they are
  assert {k: tuple(v.shape) for k, v in sd.items()} == tv_ssdlite_shapes(91)
  variables = convert.from_torchvision_ssdlite320(sd)
  model = SSDLite320(num_classes=91)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 320, 320, 3))
  _ssdlite_outputs(torch, tv, model, variables, x.astype(np.float32))


def test_against_torchvision_ssdlite_at_another_width_and_size():
  """torchvision's parts built at width 0.5, on a 128 px input."""
  torch = _torch()
  from torchvision.models import mobilenet_v3_large
  from torchvision.models.detection import ssdlite

  torch.manual_seed(0)
  norm = functools.partial(torch.nn.BatchNorm2d, eps=0.001, momentum=0.03)
  trunk = mobilenet_v3_large(width_mult=0.5, reduced_tail=True, norm_layer=norm)
  tv = torch.nn.Module()
  tv.backbone = ssdlite.SSDLiteFeatureExtractorMobileNet(
    trunk.features, 13, norm, width_mult=0.5
  )
  with torch.no_grad():
    maps = tv.backbone.eval()(torch.zeros(1, 3, 128, 128)).values()
  tv.head = ssdlite.SSDLiteHead([m.shape[1] for m in maps], [6] * 6, 7, norm)
  tv = _randomise_batchnorm(torch, tv, seed=2)
  sd = _numpy_state_dict(tv)
  assert {k: v.shape for k, v in sd.items()} == tv_ssdlite_shapes(7, 0.5)
  variables = convert.from_torchvision_ssdlite320(sd, width=0.5)
  model = SSDLite320(num_classes=7, image_size=128, width=0.5)
  x = np.random.default_rng(1).uniform(-1, 1, (2, 128, 128, 3))
  _ssdlite_outputs(torch, tv, model, variables, x.astype(np.float32))


def test_against_torchvision_mobilenet_v3_large():
  torch = _torch()
  from torchvision.models import mobilenet_v3_large

  torch.manual_seed(0)
  tv = _randomise_batchnorm(torch, mobilenet_v3_large(weights=None), seed=3)
  sd = _numpy_state_dict(tv)
  assert {k: v.shape for k, v in sd.items()} == tv_mobilenet_v3_shapes()
  variables = convert.from_torchvision_mobilenet_v3_large(sd)
  backbone = MobileNetV3Large()
  x = np.random.default_rng(2).normal(0, 1, (2, 96, 96, 3)).astype(np.float32)
  x_nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    c4 = tv.features[13].block[0](tv.features[:13](x_nchw))
    last = tv.features(x_nchw)
  with jax.default_matmul_precision("highest"):
    ours = jax.jit(backbone.apply)(
      {c: tree["backbone"] for c, tree in variables.items()}, x
    )
  _assert_close(ours[0], c4.numpy().transpose(0, 2, 3, 1))
  _assert_close(ours[1], last.numpy().transpose(0, 2, 3, 1))
