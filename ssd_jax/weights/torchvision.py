"""Converters from torchvision's weights to this package's SSD parameters.

Two sources, both given as a mapping from torchvision's own key names to
numpy arrays (a "state dict"):

- `from_torchvision_vgg16`: torchvision's ImageNet `vgg16` -> the SSD trunk
  (`params["vgg"]`), with fc6/fc7 reduced to convolutions as the SSD authors
  did (their `VGG_ILSVRC_16_layers_fc_reduced`): fc6 (4096 x 512*7*7) keeps
  every 4th output unit and every 3rd spatial tap (rows/columns 0, 3, 6),
  giving a 3x3x512x1024 kernel used with dilation 6; fc7 (4096 x 4096) keeps
  every 4th output and every 4th input unit, giving 1x1x1024x1024. The
  result is a partial tree; merge it into a fresh init with
  `ssd_jax.weights.io.merge_params`.
- `from_torchvision_ssd300`: torchvision's `ssd300_vgg16` (COCO: 91 classes,
  ids as torchvision's COCO category ids, 0 background) -> every parameter of
  `SSD300(num_classes=C, prior_config=TORCHVISION_SSD300_PRIORS)`.

What is equal after `from_torchvision_ssd300`: for an input `x` [B, 300,
300, 3] normalised as torchvision's SSD300 transform does (0..255 pixels
minus (123, 117, 104), std 1, the `ssd_jax.data` convention), our `(loc,
logits)` equal torchvision's `model.head(model.backbone(x_nchw))`
`["bbox_regression"]` and `["cls_logits"]` row for row, up to float
rounding (and the L2Norm epsilon: ours divides by sqrt(sum x^2 + 1e-10),
torchvision by max(norm, 1e-12); they differ only where the conv4_3 norm is
below ~1e-5). No permutation of head channels is needed, and none is made:
torchvision's DefaultBoxGenerator orders boxes per map, row-major (y outer,
x inner), and at each location (s_k, s_k), (s'_k, s'_k), then for each
ratio r (s_k sqrt(r), s_k / sqrt(r)) and its transpose, which is
`ssd_jax.default_boxes` order; its heads view channels as (anchor, column)
with the anchor major, as our reshape of NHWC channels does
(`ssd_jax.models.heads`); its box coder weights (10, 10, 5, 5) on (dx, dy,
dw, dh) are our variances (0.1, 0.2) on (cx, cy, w, h). Its boxes differ
from SSD300_PRIORS only in size (scales 0.07, 0.15, ... 1.05 of 300):
`TORCHVISION_SSD300_PRIORS` reproduces them.

Every key of the state dict is accounted for: a missing, unexpected or
misshapen key, a non-floating-point array and NaN/inf values are errors that
name the key (`ssd_jax.weights.io.check_array`; floating arrays of any
precision are cast to float32).
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ssd_jax.default_boxes import TORCHVISION_SSD300_PRIORS
from ssd_jax.models.backbones.vgg import VGG16, VGG16_STAGES
from ssd_jax.models.ssd import SSD
from ssd_jax.weights.io import check_array

Params = dict[str, Any]

# Indices of the 13 convolutions in torchvision's `vgg16().features`.
_VGG_FEATURE_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG_NAMES = tuple(name for stage in VGG16_STAGES for name, _ in stage)


def _conv(array: np.ndarray) -> np.ndarray:
  """OIHW (torch) -> HWIO (flax)."""
  return np.transpose(array, (2, 3, 1, 0))


def _conv_torch_shape(hwio: tuple[int, ...]) -> tuple[int, ...]:
  h, w, i, o = hwio
  return (o, i, h, w)


def _fc6(weight: np.ndarray, in_channels: int) -> np.ndarray:
  """[4n, in*7*7] classifier.0 -> [3, 3, in, n] dilated conv kernel."""
  w = weight.reshape(weight.shape[0], in_channels, 7, 7)  # torch flatten
  return _conv(w[::4, :, ::3, ::3])


def _fc7(weight: np.ndarray) -> np.ndarray:
  """[4n, 4m] classifier.3 -> [1, 1, m, n] conv kernel."""
  return _conv(weight[::4, ::4][:, :, None, None])


class _Converter:
  """Collects (torch key -> our path) conversions with shape checks."""

  def __init__(self, state_dict: Mapping[str, Any], expected: Params):
    self.state_dict = state_dict
    self.expected = traverse_util.flatten_dict(expected, sep="/")
    self.used: set[str] = set()
    self.out: dict[str, np.ndarray] = {}

  def take(self, key: str, torch_shape: tuple[int, ...]) -> np.ndarray:
    """`state_dict[key]` as float32 after `io.check_array` (dtype, shape,
    finite values), errors naming `key`."""
    if key not in self.state_dict:
      raise KeyError(f"missing key in state dict: {key!r}")
    value = check_array(key, self.state_dict[key], torch_shape)
    self.used.add(key)
    return value

  def put(self, path: str, value: np.ndarray) -> None:
    shape = self.expected[path].shape
    if value.shape != shape:  # an internal error, shapes are pre-checked
      raise ValueError(f"{path}: converted {value.shape}, model {shape}")
    self.out[path] = value

  def conv(self, prefix: str, path: str) -> None:
    """A torch Conv2d `prefix.weight/bias` -> our `path/kernel/bias`."""
    hwio = self.expected[f"{path}/kernel"].shape
    w = self.take(f"{prefix}.weight", _conv_torch_shape(hwio))
    b = self.take(f"{prefix}.bias", (hwio[-1],))
    self.put(f"{path}/kernel", _conv(w))
    self.put(f"{path}/bias", b)

  def finish(self, ignored: tuple[str, ...] = ()) -> Params:
    extra = sorted(set(self.state_dict) - self.used - set(ignored))
    if extra:
      raise KeyError(f"unexpected keys in state dict: {extra}")
    return traverse_util.unflatten_dict(self.out, sep="/")


def _vgg_shapes(width: float) -> Params:
  variables = jax.eval_shape(
    VGG16(width=width).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3))
  )
  return variables["params"]


def from_torchvision_vgg16(
  state_dict: Mapping[str, Any], width: float = 1.0
) -> Params:
  """Converts torchvision's ImageNet `vgg16` weights to the SSD trunk.

  Args:
    state_dict: torchvision key -> array: `features.{0,2,...,28}.weight`
      [O, I, 3, 3] and `.bias` [O]; optionally `classifier.0` (fc6) and
      `classifier.3` (fc7) weights and biases, both or neither (without them
      fc6/fc7 are left out of the result); `classifier.6` (the ImageNet
      classifier) is accepted and ignored.
    width: channel multiplier of the SSD the weights are for (1.0 for
      torchvision's VGG16; other values are for tests of scaled copies).

  Returns:
    `{"vgg": {"conv1_1": {"kernel": [3, 3, 3, 64], "bias": [64]}, ...,
    "fc6": {"kernel": [3, 3, 512, 1024], ...}, "fc7": ...}}`, float32 numpy,
    a partial SSD params tree for `merge_params`.

  Raises:
    KeyError: naming a missing or unexpected key.
    TypeError: naming a key whose array is not floating point.
    ValueError: naming a key whose shape is wrong or whose values are not
      all finite.
  """
  expected = _vgg_shapes(width)
  conv = _Converter(state_dict, {"vgg": expected})
  for index, name in zip(_VGG_FEATURE_INDICES, _VGG_NAMES, strict=True):
    conv.conv(f"features.{index}", f"vgg/{name}")
  has_fc = [f"classifier.{i}.weight" in state_dict for i in (0, 3)]
  if any(has_fc):
    fc6 = expected["fc6"]["kernel"].shape  # [3, 3, in, out]
    fc7 = expected["fc7"]["kernel"].shape  # [1, 1, out, out]
    w6 = conv.take("classifier.0.weight", (4 * fc6[3], fc6[2] * 49))
    b6 = conv.take("classifier.0.bias", (4 * fc6[3],))
    w7 = conv.take("classifier.3.weight", (4 * fc7[3], 4 * fc7[2]))
    b7 = conv.take("classifier.3.bias", (4 * fc7[3],))
    conv.put("vgg/fc6/kernel", _fc6(w6, fc6[2]))
    conv.put("vgg/fc6/bias", b6[::4])
    conv.put("vgg/fc7/kernel", _fc7(w7))
    conv.put("vgg/fc7/bias", b7[::4])
  return conv.finish(ignored=("classifier.6.weight", "classifier.6.bias"))


def from_torchvision_ssd300(
  state_dict: Mapping[str, Any], width: float = 1.0
) -> Params:
  """Converts torchvision's `ssd300_vgg16` weights to SSD300 params.

  Key mapping (torchvision -> ours): `backbone.features.{0..21}` ->
  `vgg/conv1_1 .. conv4_3`; `backbone.scale_weight` ->
  `conv4_3_norm/scale`; `backbone.extra.0.{1,3,5}` -> `vgg/conv5_1 ..
  conv5_3`, `backbone.extra.0.7.{1,3}` -> `vgg/fc6`, `vgg/fc7`;
  `backbone.extra.{1..4}.{0,2}` -> `conv{8..11}_{1,2}`;
  `head.regression_head.module_list.k` -> `loc_k`,
  `head.classification_head.module_list.k` -> `conf_k`. Kernels go OIHW ->
  HWIO; head channels keep their order (see the module docstring for why
  that is the same per-box layout).

  Args:
    state_dict: torchvision key -> array, exactly the keys of
      `ssd300_vgg16(...).state_dict()`.
    width: channel multiplier of the SSD the weights are for (1.0 for
      torchvision's; other values are for tests of scaled copies).

  Returns:
    The full params tree of `SSD300(num_classes=C, width=width,
    prior_config=TORCHVISION_SSD300_PRIORS)`, float32 numpy, with C read
    from the classification head (91 for torchvision's COCO model).

  Raises:
    KeyError: naming a missing or unexpected key.
    TypeError: naming a key whose array is not floating point.
    ValueError: naming a key whose shape is wrong or whose values are not
      all finite.
  """
  num_classes = num_classes_of_ssd300(state_dict)
  model = SSD(
    num_classes=num_classes,
    image_size=300,
    width=width,
    prior_config=TORCHVISION_SSD300_PRIORS,
  )
  variables = jax.eval_shape(
    model.init, jax.random.key(0), jnp.zeros((1, 300, 300, 3))
  )
  conv = _Converter(state_dict, variables["params"])
  for index, name in zip(_VGG_FEATURE_INDICES[:10], _VGG_NAMES, strict=False):
    conv.conv(f"backbone.features.{index}", f"vgg/{name}")
  for index, name in zip((1, 3, 5), _VGG_NAMES[10:], strict=True):
    conv.conv(f"backbone.extra.0.{index}", f"vgg/{name}")
  conv.conv("backbone.extra.0.7.1", "vgg/fc6")
  conv.conv("backbone.extra.0.7.3", "vgg/fc7")
  scale_shape = conv.expected["conv4_3_norm/scale"].shape
  conv.put(
    "conv4_3_norm/scale", conv.take("backbone.scale_weight", scale_shape)
  )
  for block in range(1, 5):
    conv.conv(f"backbone.extra.{block}.0", f"conv{7 + block}_1")
    conv.conv(f"backbone.extra.{block}.2", f"conv{7 + block}_2")
  for k in range(6):
    conv.conv(f"head.regression_head.module_list.{k}", f"loc_{k}")
    conv.conv(f"head.classification_head.module_list.{k}", f"conf_{k}")
  return conv.finish()


def num_classes_of_ssd300(state_dict: Mapping[str, Any]) -> int:
  """Classes (with background) of a torchvision SSD300 state dict.

  Args:
    state_dict: torchvision `ssd300_vgg16` state dict.

  Returns:
    Output channels of the first classification head / 4 boxes.

  Raises:
    KeyError: if the first classification head is missing.
    ValueError: if its channels are not a multiple of 4.
  """
  return classes_of_head(
    state_dict, "head.classification_head.module_list.0.weight", boxes=4
  )


def classes_of_head(state_dict: Mapping[str, Any], key: str, boxes: int) -> int:
  """Classes (with background) from a classification head's out channels.

  The one rule of every `num_classes_of_*`: a head predicting `boxes`
  default boxes per location has `boxes * num_classes` output channels.

  Args:
    state_dict: torch key -> array.
    key: the head convolution's weight (out channels first).
    boxes: default boxes per location of that head.

  Returns:
    Its output channels / `boxes`.

  Raises:
    KeyError: if `key` is missing.
    ValueError: if the channels are not a multiple of `boxes` (at least two
      classes: background and one).
  """
  if key not in state_dict:
    raise KeyError(f"missing key in state dict: {key!r}")
  channels = np.shape(state_dict[key])[0]
  if channels % boxes or channels < 2 * boxes:
    raise ValueError(
      f"{key!r} has {channels} output channels; expected {boxes} * num_classes"
    )
  return channels // boxes


# `--from` names of the command line -> converter.
CONVERTERS = {
  "torchvision-vgg16": from_torchvision_vgg16,
  "torchvision-ssd300": from_torchvision_ssd300,
}
