"""Tests for ssd_jax/weights/torchvision.py: key mapping, layouts, forward.

State dicts are built here with random values and the shapes torchvision's
modules have (written out from torchvision's `vgg16` and `ssd300_vgg16`
definitions, scaled by a channel width to keep them small); no torch is
needed. The SSD300 conversion is checked end to end against a forward pass
written here with torch's semantics (NCHW, OIHW kernels, ceil-mode pool3,
`F.normalize`, the heads' view/permute), and against torchvision itself
when it is installed. tests/test_weights_cli.py imports the state-dict
helpers from here.
"""

import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ssd_jax import default_boxes as db
from ssd_jax import models, weights

WIDTH = 1 / 16
VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]
VGG_CFG += [512, 512, 512, "M", 512, 512, 512, "M"]
ANCHORS = [4, 6, 6, 6, 4, 4]


def _c(n, width):
  return max(1, round(n * width))


def _vgg_feature_shapes(width, prefix="features."):
  """torchvision `make_layers`: conv, ReLU per number; MaxPool per "M"."""
  shapes, index, cin = {}, 0, 3
  for v in VGG_CFG:
    if v == "M":
      index += 1
      continue
    shapes[f"{prefix}{index}.weight"] = (_c(v, width), cin, 3, 3)
    shapes[f"{prefix}{index}.bias"] = (_c(v, width),)
    cin, index = _c(v, width), index + 2
  return shapes


def tv_vgg16_shapes(width=1.0):
  shapes = _vgg_feature_shapes(width)
  c4096, c512 = _c(4096, width), _c(512, width)
  shapes["classifier.0.weight"] = (c4096, c512 * 7 * 7)
  shapes["classifier.0.bias"] = (c4096,)
  shapes["classifier.3.weight"] = (c4096, c4096)
  shapes["classifier.3.bias"] = (c4096,)
  shapes["classifier.6.weight"] = (1000, c4096)
  shapes["classifier.6.bias"] = (1000,)
  return shapes


def tv_ssd300_shapes(num_classes, width=1.0):
  """Keys and shapes of torchvision's `ssd300_vgg16(...).state_dict()`."""
  c = lambda n: _c(n, width)
  feats = _vgg_feature_shapes(width, "backbone.features.")
  shapes = {k: v for k, v in feats.items() if int(k.split(".")[2]) < 23}
  shapes["backbone.scale_weight"] = (c(512),)

  def conv(key, cout, cin, k):
    shapes[f"{key}.weight"] = (cout, cin, k, k)
    shapes[f"{key}.bias"] = (cout,)

  for i in (1, 3, 5):  # backbone[23:30] = pool4, conv5_1, relu, ...
    conv(f"backbone.extra.0.{i}", c(512), c(512), 3)
  conv("backbone.extra.0.7.1", c(1024), c(512), 3)  # fc6
  conv("backbone.extra.0.7.3", c(1024), c(1024), 1)  # fc7
  for block, (cin, mid, out) in enumerate(
    [(1024, 256, 512), (512, 128, 256), (256, 128, 256), (256, 128, 256)]
  ):
    conv(f"backbone.extra.{block + 1}.0", c(mid), c(cin), 1)
    conv(f"backbone.extra.{block + 1}.2", c(out), c(mid), 3)
  sources = [512, 1024, 512, 256, 256, 256]
  for k, (cin, a) in enumerate(zip(sources, ANCHORS, strict=True)):
    conv(f"head.regression_head.module_list.{k}", 4 * a, c(cin), 3)
    conv(
      f"head.classification_head.module_list.{k}", num_classes * a, c(cin), 3
    )
  return shapes


def random_state_dict(shapes, seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for key, shape in shapes.items():
    if key.endswith("scale_weight"):
      out[key] = rng.uniform(10, 30, shape).astype(np.float32)
    elif key.endswith("weight"):
      fan_in = math.prod(shape[1:])
      out[key] = rng.normal(0, math.sqrt(2 / fan_in), shape).astype(np.float32)
    else:
      out[key] = rng.normal(0, 0.1, shape).astype(np.float32)
  return out


def _oihw(hwio):
  return np.transpose(np.asarray(hwio), (3, 2, 0, 1))


# --- VGG16 ------------------------------------------------------------------


def test_vgg16_placement_and_fc_reduction():
  sd = random_state_dict(tv_vgg16_shapes(WIDTH))
  params = weights.from_torchvision_vgg16(sd, width=WIDTH)
  vgg = params["vgg"]
  assert set(params) == {"vgg"}
  stages = [(1, 2), (2, 2), (3, 3), (4, 3), (5, 3)]
  names = [f"conv{s}_{i}" for s, n in stages for i in range(1, n + 1)]
  indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
  assert set(vgg) == {*names, "fc6", "fc7"}
  for name, index in zip(names, indices, strict=True):
    np.testing.assert_array_equal(
      _oihw(vgg[name]["kernel"]), sd[f"features.{index}.weight"]
    )
    np.testing.assert_array_equal(
      vgg[name]["bias"], sd[f"features.{index}.bias"]
    )
  # fc6[kh, kw, i, o] = classifier.0.weight[4 o, i * 49 + 3 kh * 7 + 3 kw].
  w6, w7 = sd["classifier.0.weight"], sd["classifier.3.weight"]
  k6, k7 = vgg["fc6"]["kernel"], vgg["fc7"]["kernel"]
  cin, cout = k6.shape[2], k6.shape[3]
  assert k6.shape == (3, 3, _c(512, WIDTH), _c(1024, WIDTH))
  assert k7.shape == (1, 1, _c(1024, WIDTH), _c(1024, WIDTH))
  for kh in range(3):
    for kw in range(3):
      for i in range(0, cin, 7):
        for o in range(0, cout, 5):
          assert k6[kh, kw, i, o] == w6[4 * o, i * 49 + 21 * kh + 3 * kw]
  for i in range(cout):
    for o in range(cout):
      assert k7[0, 0, i, o] == w7[4 * o, 4 * i]
  np.testing.assert_array_equal(
    vgg["fc6"]["bias"], sd["classifier.0.bias"][::4]
  )
  np.testing.assert_array_equal(
    vgg["fc7"]["bias"], sd["classifier.3.bias"][::4]
  )


def test_vgg16_full_size_shapes_accepted_and_merge_into_ssd300():
  shapes = tv_vgg16_shapes()
  # Zeros cost no memory until touched; the conversion only slices them.
  sd = {k: np.zeros(v, np.float32) for k, v in shapes.items()}
  params = weights.from_torchvision_vgg16(sd)
  assert params["vgg"]["fc6"]["kernel"].shape == (3, 3, 512, 1024)
  assert params["vgg"]["fc7"]["kernel"].shape == (1, 1, 1024, 1024)
  model = models.SSD300(num_classes=21)
  fresh = jax.eval_shape(
    model.init, jax.random.key(0), jnp.zeros((1, 300, 300, 3))
  )["params"]
  fresh = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), fresh)
  merged = weights.merge_params(fresh, params)
  assert np.all(np.asarray(merged["vgg"]["conv1_1"]["kernel"]) == 0)
  assert np.all(np.asarray(merged["conv8_1"]["kernel"]) == 1)  # untouched
  assert jax.tree.structure(merged) == jax.tree.structure(fresh)


def test_vgg16_features_only_leaves_fc_out():
  shapes = {
    k: v for k, v in tv_vgg16_shapes(WIDTH).items() if "classifier" not in k
  }
  params = weights.from_torchvision_vgg16(random_state_dict(shapes), WIDTH)
  assert "fc6" not in params["vgg"] and "conv5_3" in params["vgg"]


def test_vgg16_key_and_shape_errors_name_the_key():
  sd = random_state_dict(tv_vgg16_shapes(WIDTH))
  missing = {k: v for k, v in sd.items() if k != "features.7.bias"}
  with pytest.raises(KeyError, match=r"missing key.*'features\.7\.bias'"):
    weights.from_torchvision_vgg16(missing, WIDTH)
  half = {k: v for k, v in sd.items() if not k.startswith("classifier.3")}
  with pytest.raises(KeyError, match=r"classifier\.3\.weight"):
    weights.from_torchvision_vgg16(half, WIDTH)
  with pytest.raises(
    KeyError, match=r"unexpected keys.*'features\.99\.weight'"
  ):
    weights.from_torchvision_vgg16(
      {**sd, "features.99.weight": sd["features.0.bias"]}, WIDTH
    )
  bad = dict(sd)
  bad["features.2.weight"] = np.zeros((4, 4, 1, 3), np.float32)
  with pytest.raises(
    ValueError, match=r"shape mismatch for 'features\.2\.weight'"
  ):
    weights.from_torchvision_vgg16(bad, WIDTH)
  full = {k: np.zeros(v, np.float32) for k, v in tv_vgg16_shapes().items()}
  full["classifier.0.weight"] = np.zeros((4096, 512 * 6 * 6), np.float32)
  with pytest.raises(
    ValueError, match=r"'classifier\.0\.weight': got \(4096, 18432\)"
  ):
    weights.from_torchvision_vgg16(full)


def test_vgg16_dtype_and_value_errors_name_the_key(tmp_path):
  sd = random_state_dict(tv_vgg16_shapes(WIDTH))
  # Any floating precision is cast to float32 (float64, float16 here).
  sd64 = {k: v.astype(np.float64) for k, v in sd.items()}
  sd64["features.0.weight"] = sd["features.0.weight"].astype(np.float16)
  params = weights.from_torchvision_vgg16(sd64, WIDTH)
  assert params["vgg"]["conv1_1"]["kernel"].dtype == np.float32
  np.testing.assert_array_equal(
    _oihw(params["vgg"]["conv1_2"]["kernel"]), sd["features.2.weight"]
  )
  # Written to a file and read back, as the command line does.
  bad = dict(sd)
  bad["features.5.bias"] = np.arange(bad["features.5.bias"].size)  # int64
  np.savez(tmp_path / "int.npz", **bad)
  with pytest.raises(TypeError, match=r"'features\.5\.bias' has dtype int64"):
    weights.from_torchvision_vgg16(
      weights.load_state_dict(str(tmp_path / "int.npz")), WIDTH
    )
  bad = dict(sd)
  weight = bad["classifier.3.weight"].copy()
  weight[0, :3] = np.nan
  weight[1, 0] = np.inf
  bad["classifier.3.weight"] = weight
  np.savez(tmp_path / "nan.npz", **bad)
  with pytest.raises(
    ValueError,
    match=r"'classifier\.3\.weight' has 4 non-finite \(NaN or inf\) value",
  ):
    weights.from_torchvision_vgg16(
      weights.load_state_dict(str(tmp_path / "nan.npz")), WIDTH
    )
  # The ImageNet classifier is ignored, whatever it holds.
  bad = dict(sd)
  bad["classifier.6.weight"] = np.full((1000, 1), np.nan)
  weights.from_torchvision_vgg16(bad, WIDTH)


def test_ssd300_dtype_errors_name_the_key():
  sd = random_state_dict(tv_ssd300_shapes(5, WIDTH))
  sd["backbone.scale_weight"] = sd["backbone.scale_weight"] > 15  # bool
  with pytest.raises(TypeError, match=r"'backbone\.scale_weight' has dtype"):
    weights.from_torchvision_ssd300(sd, WIDTH)


# --- SSD300 -----------------------------------------------------------------


def _expected_mapping(num_classes):
  """Our path -> torchvision key prefix, written out by hand."""
  out = {}
  vgg = [("conv1_1", 0), ("conv1_2", 2), ("conv2_1", 5), ("conv2_2", 7)]
  vgg += [("conv3_1", 10), ("conv3_2", 12), ("conv3_3", 14)]
  vgg += [("conv4_1", 17), ("conv4_2", 19), ("conv4_3", 21)]
  for name, index in vgg:
    out[f"vgg/{name}"] = f"backbone.features.{index}"
  out["vgg/conv5_1"] = "backbone.extra.0.1"
  out["vgg/conv5_2"] = "backbone.extra.0.3"
  out["vgg/conv5_3"] = "backbone.extra.0.5"
  out["vgg/fc6"] = "backbone.extra.0.7.1"
  out["vgg/fc7"] = "backbone.extra.0.7.3"
  for b in range(1, 5):
    out[f"conv{7 + b}_1"] = f"backbone.extra.{b}.0"
    out[f"conv{7 + b}_2"] = f"backbone.extra.{b}.2"
  for k in range(6):
    out[f"loc_{k}"] = f"head.regression_head.module_list.{k}"
    out[f"conf_{k}"] = f"head.classification_head.module_list.{k}"
  return out


def test_ssd300_places_every_tensor():
  sd = random_state_dict(tv_ssd300_shapes(5, WIDTH))
  params = weights.from_torchvision_ssd300(sd, width=WIDTH)
  mapping = _expected_mapping(5)
  seen = {"backbone.scale_weight"}
  np.testing.assert_array_equal(
    params["conv4_3_norm"]["scale"], sd["backbone.scale_weight"]
  )
  for path, key in mapping.items():
    node = params
    for part in path.split("/"):
      node = node[part]
    np.testing.assert_array_equal(_oihw(node["kernel"]), sd[f"{key}.weight"])
    np.testing.assert_array_equal(node["bias"], sd[f"{key}.bias"])
    seen |= {f"{key}.weight", f"{key}.bias"}
  assert seen == set(sd)
  model = models.SSD300(num_classes=5, width=WIDTH)
  shapes = jax.eval_shape(
    model.init, jax.random.key(0), jnp.zeros((1, 300, 300, 3))
  )["params"]
  assert jax.tree.structure(shapes) == jax.tree.structure(params)


def test_ssd300_full_size_torchvision_shapes_accepted():
  sd = {k: np.zeros(v, np.float32) for k, v in tv_ssd300_shapes(91).items()}
  assert len(sd) == 2 * (10 + 3 + 2 + 8 + 12) + 1
  params = weights.from_torchvision_ssd300(sd)
  assert params["conf_0"]["kernel"].shape == (3, 3, 512, 4 * 91)
  count = sum(np.size(x) for x in jax.tree.leaves(params))
  assert count == sum(math.prod(s) for s in tv_ssd300_shapes(91).values())


def test_ssd300_errors_name_the_key():
  sd = random_state_dict(tv_ssd300_shapes(5, WIDTH))
  missing = {k: v for k, v in sd.items() if k != "backbone.extra.3.2.weight"}
  with pytest.raises(KeyError, match=r"'backbone\.extra\.3\.2\.weight'"):
    weights.from_torchvision_ssd300(missing, WIDTH)
  with pytest.raises(KeyError, match=r"unexpected keys.*'head\.extra'"):
    weights.from_torchvision_ssd300({**sd, "head.extra": np.zeros(1)}, WIDTH)
  bad = dict(sd)
  bad["head.regression_head.module_list.2.weight"] = np.zeros((16, 32, 3, 3))
  with pytest.raises(
    ValueError, match=r"'head\.regression_head\.module_list\.2"
  ):
    weights.from_torchvision_ssd300(bad, WIDTH)
  no_head = {
    k: v for k, v in sd.items() if "classification_head.module_list.0" not in k
  }
  with pytest.raises(KeyError, match=r"classification_head\.module_list\.0"):
    weights.from_torchvision_ssd300(no_head, WIDTH)
  odd = dict(sd)
  odd["head.classification_head.module_list.0.weight"] = np.zeros(
    (21, 32, 3, 3)
  )
  with pytest.raises(ValueError, match="4 \\* num_classes"):
    weights.from_torchvision_ssd300(odd, WIDTH)


def _torch_semantics_forward(sd, x, num_classes):
  """SSD300 `head(backbone(x))` with torch semantics, from torch-named weights.

  Args:
    sd: torchvision state dict.
    x: [B, 3, H, W] normalised input (NCHW).
    num_classes: classes of the classification head.

  Returns:
    (bbox_regression [B, P, 4], cls_logits [B, P, C]).
  """

  def conv(x, key, stride=1, padding=0, dilation=1):
    y = lax.conv_general_dilated(
      x,
      jnp.asarray(sd[f"{key}.weight"]),
      (stride, stride),
      [(padding, padding)] * 2,
      rhs_dilation=(dilation, dilation),
      dimension_numbers=("NCHW", "OIHW", "NCHW"),
      precision=lax.Precision.HIGHEST,
    )
    return y + sd[f"{key}.bias"][None, :, None, None]

  def max_pool(x, k, s, p=0, ceil_mode=False):
    size = x.shape[2]
    if ceil_mode:
      out = -(-(size + 2 * p - k) // s) + 1
      if (out - 1) * s >= size + p:
        out -= 1
    else:
      out = (size + 2 * p - k) // s + 1
    extra = max((out - 1) * s + k - (size + 2 * p), 0)
    pad = [(0, 0), (0, 0), (p, p + extra), (p, p + extra)]
    return lax.reduce_window(
      x, -jnp.inf, lax.max, (1, 1, k, k), (1, 1, s, s), pad
    )

  relu = jax.nn.relu
  for layer in [0, 2, "M", 5, 7, "M", 10, 12, 14, "C", 17, 19, 21]:
    if layer == "M":
      x = max_pool(x, 2, 2)
    elif layer == "C":
      x = max_pool(x, 2, 2, ceil_mode=True)
    else:
      x = relu(conv(x, f"backbone.features.{layer}", padding=1))
  norm = jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True))
  feats = [
    sd["backbone.scale_weight"][None, :, None, None]
    * x
    / jnp.maximum(norm, 1e-12)
  ]
  x = max_pool(x, 2, 2)
  for i in (1, 3, 5):
    x = relu(conv(x, f"backbone.extra.0.{i}", padding=1))
  x = max_pool(x, 3, 1, 1)
  x = relu(conv(x, "backbone.extra.0.7.1", padding=6, dilation=6))
  x = relu(conv(x, "backbone.extra.0.7.3"))
  feats.append(x)
  for b, (stride, padding) in enumerate([(2, 1), (2, 1), (1, 0), (1, 0)]):
    x = relu(conv(x, f"backbone.extra.{b + 1}.0"))
    x = relu(conv(x, f"backbone.extra.{b + 1}.2", stride, padding))
    feats.append(x)
  outputs = []
  for head, columns in [("regression", 4), ("classification", num_classes)]:
    results = []
    for k, f in enumerate(feats):
      r = conv(f, f"head.{head}_head.module_list.{k}", padding=1)
      n, _, h, w = r.shape
      r = r.reshape(n, -1, columns, h, w)  # view(N, -1, K, H, W)
      r = r.transpose(0, 3, 4, 1, 2)  # permute(0, 3, 4, 1, 2)
      results.append(r.reshape(n, -1, columns))
    outputs.append(jnp.concatenate(results, 1))
  return tuple(outputs)


def test_ssd300_outputs_equal_torch_semantics_forward():
  num_classes = 5
  sd = random_state_dict(tv_ssd300_shapes(num_classes, WIDTH), seed=3)
  params = weights.from_torchvision_ssd300(sd, width=WIDTH)
  model = models.SSD300(
    num_classes=num_classes,
    width=WIDTH,
    prior_config=models.TORCHVISION_SSD300_PRIORS,
  )
  x = (
    np.random.default_rng(4).normal(0, 50, (1, 300, 300, 3)).astype(np.float32)
  )
  with jax.default_matmul_precision("highest"):
    loc, logits = jax.jit(model.apply)({"params": params}, x)
    ref_loc, ref_logits = jax.jit(
      lambda x: _torch_semantics_forward(sd, x, num_classes)
    )(x.transpose(0, 3, 1, 2))
  assert loc.shape == ref_loc.shape == (1, 8732, 4)
  assert logits.shape == ref_logits.shape == (1, 8732, num_classes)
  for ours, ref in [(loc, ref_loc), (logits, ref_logits)]:
    scale = np.abs(np.asarray(ref)).max()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * scale)


def test_torchvision_priors_are_the_model_priors():
  """The SSD300 the weights are for uses torchvision's default boxes.

  tests/test_default_boxes.py checks `TORCHVISION_SSD300_PRIORS` against a
  loop written from torchvision's DefaultBoxGenerator.
  """
  model = models.SSD300(
    num_classes=91, prior_config=models.TORCHVISION_SSD300_PRIORS
  )
  np.testing.assert_array_equal(
    model.priors(), db.prior_boxes(db.TORCHVISION_SSD300_PRIORS)
  )


needs_torchvision = pytest.mark.skipif(
  importlib.util.find_spec("torchvision") is None, reason="needs torchvision"
)


@needs_torchvision
def test_against_torchvision_ssd300():
  import torch
  from torchvision.models.detection import ssd300_vgg16

  torch.manual_seed(0)
  tv = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91)
  tv = tv.eval()
  sd = {k: v.detach().numpy() for k, v in tv.state_dict().items()}
  assert set(sd) == set(tv_ssd300_shapes(91))
  assert {k: v.shape for k, v in sd.items()} == tv_ssd300_shapes(91)
  params = weights.from_torchvision_ssd300(sd)
  model = models.SSD300(
    num_classes=91, prior_config=models.TORCHVISION_SSD300_PRIORS
  )
  x = np.random.default_rng(0).normal(0, 50, (2, 300, 300, 3))
  x = x.astype(np.float32)
  x_nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    out = tv.head(list(tv.backbone(x_nchw).values()))
    sides = [[f, f] for f in (38, 19, 10, 5, 3, 1)]
    anchors = tv.anchor_generator._grid_default_boxes(sides, [300, 300])
  with jax.default_matmul_precision("highest"):
    loc, logits = jax.jit(model.apply)({"params": params}, x)
  for ours, ref in [
    (loc, out["bbox_regression"].numpy()),
    (logits, out["cls_logits"].numpy()),
  ]:
    assert ours.shape == ref.shape
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * scale)
  np.testing.assert_allclose(model.priors(), anchors.numpy(), atol=1e-6)


@needs_torchvision
def test_against_torchvision_vgg16_keys():
  import torch
  from torchvision.models import vgg16

  torch.manual_seed(0)
  sd = {
    k: v.detach().numpy() for k, v in vgg16(weights=None).state_dict().items()
  }
  assert {k: v.shape for k, v in sd.items()} == tv_vgg16_shapes()
  params = weights.from_torchvision_vgg16(sd)
  np.testing.assert_array_equal(
    _oihw(params["vgg"]["conv5_3"]["kernel"]), sd["features.28.weight"]
  )


def test_converters_of_the_command_line():
  assert weights.CONVERTERS == {
    "torchvision-vgg16": weights.from_torchvision_vgg16,
    "torchvision-ssd300": weights.from_torchvision_ssd300,
    "nvidia-ssd300": weights.from_nvidia_ssd300,
    "torchvision-resnet50": weights.from_torchvision_resnet50,
    "torchvision-ssdlite320": weights.from_torchvision_ssdlite320,
    "torchvision-mobilenet-v3-large": (
      weights.from_torchvision_mobilenet_v3_large
    ),
  }
  sd = {"head.classification_head.module_list.0.weight": np.zeros((84, 1))}
  assert weights.num_classes_of_ssd300(sd) == 21
