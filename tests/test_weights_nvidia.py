"""Tests for ssd_jax/weights/nvidia.py: NVIDIA SSD300 and ResNet-50 imports.

State dicts are built here with random values and the keys and shapes of
NVIDIA's `SSD300(ResNet('resnet50'))` and torchvision's `resnet50`,
written out from their module structure and scaled by a channel width to
keep them small; no torch is needed for those. The head permutation is
checked against NVIDIA's `bbox_view` written with numpy. Where
torch is installed, the converted models are compared with torchvision's
ResNet-50 and with NVIDIA's SSD300 re-created here from the structure of
their public `ssd/model.py` (no weights are downloaded), BatchNorms in
evaluation mode with random running statistics.
"""

import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO
from flax import traverse_util

from ssd_jax.models.backbones.resnet import ResNet50Backbone
from ssd_jax.models.heads import flatten_head
from ssd_jax.models.ssd_resnet50 import SSD300ResNet50
from ssd_jax.weights import io, nvidia

SMALL = 1 / 16
FEATURES = (38, 19, 10, 5, 3, 1)
BOXES = (4, 6, 6, 6, 4, 4)
TRUNK = "feature_extractor.feature_extractor."


def _c(n, width):
  return max(1, round(n * width))


def resnet_shapes(width, prefix, names, stages):
  """torchvision's ResNet-50 keys: `names` are the stem conv, the stem BN
  and the stages' keys (torchvision: conv1, bn1, layer1, ...)."""
  shapes = {}

  def conv(key, cout, cin, k):
    shapes[f"{prefix}{key}.weight"] = (cout, cin, k, k)

  def bn(key, c):
    for tensor in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{prefix}{key}.{tensor}"] = (c,)
    shapes[f"{prefix}{key}.num_batches_tracked"] = ()

  cin = _c(64, width)
  conv(names[0], cin, 3, 7)
  bn(names[1], cin)
  for layer, blocks, planes in zip(
    names[2:], stages, (64, 128, 256, 512), strict=False
  ):
    mid = _c(planes, width)
    out = 4 * mid
    for b in range(blocks):
      key = f"{layer}.{b}"
      conv(f"{key}.conv1", mid, cin, 1)
      bn(f"{key}.bn1", mid)
      conv(f"{key}.conv2", mid, mid, 3)
      bn(f"{key}.bn2", mid)
      conv(f"{key}.conv3", out, mid, 1)
      bn(f"{key}.bn3", out)
      if b == 0:
        conv(f"{key}.downsample.0", out, cin, 1)
        bn(f"{key}.downsample.1", out)
      cin = out
  return shapes


def tv_resnet50_shapes(width=1.0):
  """Keys and shapes of torchvision's `resnet50().state_dict()`."""
  names = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
  shapes = resnet_shapes(width, "", names, (3, 4, 6, 3))
  shapes["fc.weight"] = (1000, 4 * _c(512, width))
  shapes["fc.bias"] = (1000,)
  return shapes


def nvidia_ssd300_shapes(num_classes, width=1.0):
  """Keys and shapes of NVIDIA's `SSD300(ResNet('resnet50')).state_dict()`:
  the trunk `nn.Sequential(*list(resnet50.children())[:7])` (children 0,
  1, 4, 5, 6 have weights), `additional_blocks.i` = (Conv2d no bias, BN,
  ReLU, Conv2d no bias, BN, ReLU), `loc.k` / `conf.k` 3x3 with bias."""
  shapes = resnet_shapes(width, TRUNK, ("0", "1", "4", "5", "6"), (3, 4, 6))
  chans = [4 * _c(256, width)] + [_c(c, width) for c in (512, 512, 256)]
  chans += [_c(256, width)] * 2
  for i, mid in enumerate((256, 256, 128, 128, 128)):
    key, mid = f"additional_blocks.{i}", _c(mid, width)
    shapes[f"{key}.0.weight"] = (mid, chans[i], 1, 1)
    shapes[f"{key}.3.weight"] = (chans[i + 1], mid, 3, 3)
    for bn, c in ((1, mid), (4, chans[i + 1])):
      for tensor in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{key}.{bn}.{tensor}"] = (c,)
      shapes[f"{key}.{bn}.num_batches_tracked"] = ()
  for k, (c, a) in enumerate(zip(chans, BOXES, strict=True)):
    for head, cols in (("loc", 4), ("conf", num_classes)):
      shapes[f"{head}.{k}.weight"] = (a * cols, c, 3, 3)
      shapes[f"{head}.{k}.bias"] = (a * cols,)
  return shapes


def random_state_dict(shapes, seed=0):
  """Random values: He-normal conv weights, BN weights around 1, running
  variances in [0.5, 2], integer `num_batches_tracked`."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, shape in shapes.items():
    if key.endswith("num_batches_tracked"):
      out[key] = np.array(100, np.int64)
    elif key.endswith("running_var"):
      out[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    elif key.endswith("weight") and len(shape) == 1:  # BatchNorm
      out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif key.endswith("weight"):
      std = math.sqrt(2 / math.prod(shape[1:]))
      out[key] = rng.normal(0, std, shape).astype(np.float32)
    else:
      out[key] = rng.normal(0, 0.1, shape).astype(np.float32)
  return out


def _hwio(oihw):
  return np.transpose(oihw, (2, 3, 1, 0))


def nvidia_rows_in_our_order(features=FEATURES, boxes=BOXES):
  """For each of our rows, NVIDIA's: (box kind, location) per map."""
  rows, start = [], 0
  for f, a in zip(features, boxes, strict=True):
    for loc in range(f * f):
      rows += [start + kind * f * f + loc for kind in range(a)]
    start += a * f * f
  return np.asarray(rows)


# --- the head permutation ---------------------------------------------------


@pytest.mark.parametrize("boxes, columns", [(4, 4), (6, 4), (6, 3), (1, 5)])
def test_head_channel_order_turns_nvidias_view_into_ours(boxes, columns):
  # A head's output channels are its kernel's and bias's output channels,
  # so permuting those permutes these.
  n, h, w = 2, 5, 4
  y = np.random.default_rng(0).normal(size=(n, boxes * columns, h, w))
  # NVIDIA: `.view(N, K, -1)` of the NCHW output: [N, K, A * H * W].
  theirs = y.reshape(n, columns, -1).transpose(0, 2, 1)  # [N, A H W, K]
  order = nvidia.head_channel_order(boxes, columns)
  assert sorted(order) == list(range(boxes * columns))
  ours = flatten_head(y[:, order].transpose(0, 2, 3, 1), columns)
  rows = [a * h * w + loc for loc in range(h * w) for a in range(boxes)]
  np.testing.assert_array_equal(ours, theirs[:, rows])  # [N, H W A, K]


# --- from_nvidia_ssd300 -----------------------------------------------------


def test_nvidia_keys_land_in_their_places():
  sd = random_state_dict(nvidia_ssd300_shapes(5, SMALL))
  variables = nvidia.from_nvidia_ssd300(sd, width=SMALL)
  params, stats = variables["params"], variables["batch_stats"]
  shapes = jax.eval_shape(
    SSD300ResNet50(num_classes=5, width=SMALL).init,
    jax.random.key(0),
    jnp.zeros((1, 300, 300, 3)),
  )
  assert jax.tree.map(np.shape, variables) == jax.tree.map(
    lambda s: s.shape, shapes
  )
  assert all(v.dtype == np.float32 for v in jax.tree.leaves(variables))
  pairs = [
    ("0", "1", params["backbone"]["conv1"], stats["backbone"]["conv1"]),
    (
      "6.0.conv2",
      "6.0.bn2",
      params["backbone"]["layer3_0"]["conv2"],
      stats["backbone"]["layer3_0"]["conv2"],
    ),
    (
      "5.0.downsample.0",
      "5.0.downsample.1",
      params["backbone"]["layer2_0"]["downsample"],
      stats["backbone"]["layer2_0"]["downsample"],
    ),
  ]
  for conv, bn, p, s in pairs:
    conv, bn = TRUNK + conv, TRUNK + bn
    np.testing.assert_array_equal(
      p["conv"]["kernel"], _hwio(sd[conv + ".weight"])
    )
    np.testing.assert_array_equal(p["bn"]["scale"], sd[bn + ".weight"])
    np.testing.assert_array_equal(p["bn"]["bias"], sd[bn + ".bias"])
    np.testing.assert_array_equal(s["bn"]["mean"], sd[bn + ".running_mean"])
    np.testing.assert_array_equal(s["bn"]["var"], sd[bn + ".running_var"])
  block = params["extras"]["block3"]
  np.testing.assert_array_equal(
    block["conv2"]["conv"]["kernel"], _hwio(sd["additional_blocks.3.3.weight"])
  )
  np.testing.assert_array_equal(
    stats["extras"]["block3"]["conv1"]["bn"]["var"],
    sd["additional_blocks.3.1.running_var"],
  )
  # Heads: our channel a * K + k is NVIDIA's k * A + a.
  for k, a in enumerate(BOXES):
    for head, cols in (("loc", 4), ("conf", 5)):
      kernel = params["heads"][f"{head}_{k}"]["kernel"]
      bias = params["heads"][f"{head}_{k}"]["bias"]
      w, b = sd[f"{head}.{k}.weight"], sd[f"{head}.{k}.bias"]
      for box in range(a):
        for col in range(cols):
          np.testing.assert_array_equal(
            kernel[..., box * cols + col], _hwio(w[col * a + box][None])[..., 0]
          )
          assert bias[box * cols + col] == b[col * a + box]


def test_nvidia_full_size_shapes_are_accepted():
  sd = {
    k: np.zeros(s, np.float32)
    for k, s in nvidia_ssd300_shapes(81).items()
    if not k.endswith("num_batches_tracked")  # optional
  }
  variables = nvidia.from_nvidia_ssd300(sd)
  count = sum(np.size(v) for v in jax.tree.leaves(variables["params"]))
  assert count == 22_894_902
  assert nvidia.num_classes_of_nvidia_ssd300(sd) == 81


def test_nvidia_distributed_module_prefix_is_dropped():
  sd = random_state_dict(nvidia_ssd300_shapes(3, SMALL))
  plain = nvidia.from_nvidia_ssd300(sd, width=SMALL)
  wrapped = nvidia.from_nvidia_ssd300(
    {f"module.{k}": v for k, v in sd.items()}, width=SMALL
  )
  jax.tree.map(np.testing.assert_array_equal, plain, wrapped)


@pytest.fixture(scope="module")
def small_nvidia_state_dict():
  return random_state_dict(nvidia_ssd300_shapes(3, SMALL))


def _convert(sd):
  return nvidia.from_nvidia_ssd300(sd, width=SMALL)


def test_nvidia_missing_key_is_named(small_nvidia_state_dict):
  sd = dict(small_nvidia_state_dict)
  del sd[TRUNK + "6.2.bn3.running_mean"]
  with pytest.raises(KeyError, match=r"6\.2\.bn3\.running_mean"):
    _convert(sd)
  del sd["conf.0.weight"]
  with pytest.raises(KeyError, match=r"missing key .*'conf\.0\.weight'"):
    _convert(sd)


def test_nvidia_unexpected_key_is_named(small_nvidia_state_dict):
  sd = dict(small_nvidia_state_dict)
  sd["additional_blocks.5.0.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  with pytest.raises(KeyError, match=r"unexpected keys.*additional_blocks\.5"):
    _convert(sd)


def test_nvidia_bad_arrays_are_named(small_nvidia_state_dict):
  key = "additional_blocks.1.3.weight"
  sd = dict(small_nvidia_state_dict)
  sd[key] = sd[key][:, :-1]
  with pytest.raises(ValueError, match=r"shape mismatch for 'additional_bl"):
    _convert(sd)
  sd = dict(small_nvidia_state_dict)
  sd[key] = sd[key].astype(np.int32)
  with pytest.raises(TypeError, match=key):
    _convert(sd)
  sd = dict(small_nvidia_state_dict)
  sd[key] = sd[key].copy()
  sd[key][0, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match=f"'{key}' has 1 non-finite"):
    _convert(sd)
  var = "additional_blocks.1.4.running_var"
  sd = dict(small_nvidia_state_dict)
  sd[var] = -sd[var]
  with pytest.raises(ValueError, match=f"'{var}' has {sd[var].size} negative"):
    _convert(sd)


def test_nvidia_num_classes_errors():
  with pytest.raises(KeyError, match="conf.0.weight"):
    nvidia.num_classes_of_nvidia_ssd300({})
  with pytest.raises(ValueError, match="expected 4 \\* num_classes"):
    nvidia.num_classes_of_nvidia_ssd300(
      {"conf.0.weight": np.zeros((10, 2, 3, 3))}
    )


# --- from_torchvision_resnet50 ----------------------------------------------


def test_torchvision_resnet50_fills_the_backbone_and_merges():
  sd = random_state_dict(tv_resnet50_shapes(SMALL))
  variables = nvidia.from_torchvision_resnet50(sd, width=SMALL)
  assert set(variables) == {"params", "batch_stats"}
  assert (
    set(variables["params"]) == set(variables["batch_stats"]) == {"backbone"}
  )
  backbone = variables["params"]["backbone"]
  np.testing.assert_array_equal(
    backbone["conv1"]["conv"]["kernel"], _hwio(sd["conv1.weight"])
  )
  np.testing.assert_array_equal(
    backbone["layer3_5"]["conv3"]["bn"]["scale"], sd["layer3.5.bn3.weight"]
  )
  np.testing.assert_array_equal(
    variables["batch_stats"]["backbone"]["layer1_0"]["downsample"]["bn"][
      "mean"
    ],
    sd["layer1.0.downsample.1.running_mean"],
  )
  assert "layer4_0" not in backbone  # layer4 and fc are not SSD's
  # An init checkpoint's backbone: it merges into the SSD's fresh init.
  model = SSD300ResNet50(num_classes=3, width=SMALL)
  fresh = jax.eval_shape(
    model.init, jax.random.key(0), jnp.zeros((1, 300, 300, 3))
  )
  fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), fresh)
  for col in ("params", "batch_stats"):
    merged = io.merge_params(fresh[col], variables[col])
    flat = traverse_util.flatten_dict(variables[col], sep="/")
    merged = traverse_util.flatten_dict(merged, sep="/")
    for path, value in flat.items():
      np.testing.assert_array_equal(merged[path], value)


def test_torchvision_resnet50_key_errors():
  sd = random_state_dict(tv_resnet50_shapes(SMALL))
  del sd["layer2.3.conv2.weight"]
  with pytest.raises(KeyError, match=r"'layer2\.3\.conv2\.weight'"):
    nvidia.from_torchvision_resnet50(sd, width=SMALL)
  sd = random_state_dict(tv_resnet50_shapes(SMALL))
  sd["layer3.6.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  with pytest.raises(KeyError, match=r"unexpected keys.*layer3\.6\.conv1"):
    nvidia.from_torchvision_resnet50(sd, width=SMALL)
  sd = random_state_dict(tv_resnet50_shapes(1 / 8))  # another width
  with pytest.raises(ValueError, match="shape mismatch for 'conv1.weight'"):
    nvidia.from_torchvision_resnet50(sd, width=SMALL)


# --- against torch (skipped without it) -------------------------------------


def _randomize_batch_norms(torch, module, seed=1):
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=generator)
        m.bias.normal_(0, 0.1, generator=generator)
        m.running_mean.normal_(0, 0.1, generator=generator)
        m.running_var.uniform_(0.5, 2.0, generator=generator)
  return module.eval()


def _reference():
  """experiments/torch_nvidia_ssd300.py (shared with the zoo benchmark)."""
  path = REPO / "experiments" / "torch_nvidia_ssd300.py"
  spec = importlib.util.spec_from_file_location("torch_nvidia_ssd300", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _nvidia_trunk(torchvision, torch):
  return _reference().nvidia_trunk(torch, torchvision)


def _nvidia_ssd300(torch, torchvision, num_classes):
  return _reference().nvidia_ssd300(torch, torchvision, num_classes)


def _state_dict(module):
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _assert_close(ours, theirs, rtol=1e-4):
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape
  scale = np.abs(theirs).max()
  assert np.abs(ours - theirs).max() <= rtol * scale


def test_nvidia_ssd300_equals_their_torch_module():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  module = _randomize_batch_norms(torch, _nvidia_ssd300(torch, torchvision, 7))
  sd = _state_dict(module)
  assert {k: tuple(v.shape) for k, v in sd.items()} == nvidia_ssd300_shapes(7)
  x = torch.randn(1, 3, 300, 300, generator=torch.Generator().manual_seed(2))
  with torch.no_grad():
    locs, confs = module(x)  # [1, 4, 8732], [1, 7, 8732], box-kind-major
  variables = nvidia.from_nvidia_ssd300(sd)
  assert sum(p.numel() for p in module.parameters()) == sum(
    np.size(v) for v in jax.tree.leaves(variables["params"])
  )
  model = SSD300ResNet50(num_classes=7)
  loc, logits = jax.jit(model.apply)(
    variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
  )
  rows = nvidia_rows_in_our_order()
  _assert_close(loc, locs.numpy().transpose(0, 2, 1)[:, rows])
  _assert_close(logits, confs.numpy().transpose(0, 2, 1)[:, rows])


def test_torchvision_resnet50_equals_torchvision():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  resnet, trunk = _nvidia_trunk(torchvision, torch)
  _randomize_batch_norms(torch, resnet)
  sd = _state_dict(resnet)
  assert {k: tuple(v.shape) for k, v in sd.items()} == tv_resnet50_shapes()
  x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(2))
  with torch.no_grad():
    want = trunk(x).numpy().transpose(0, 2, 3, 1)
  variables = nvidia.from_torchvision_resnet50(sd)
  backbone_variables = {k: v["backbone"] for k, v in variables.items()}
  (got,) = jax.jit(ResNet50Backbone().apply)(
    backbone_variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
  )
  _assert_close(got, want)
