"""Converters from torchvision's MobileNetV3 / SSDLite weights.

Two sources, each a mapping from torchvision's key names to arrays (numpy
or torch tensors; a "state dict"):

- `from_torchvision_ssdlite320`: torchvision's `ssdlite320_mobilenet_v3_large`
  (COCO: 91 classes) -> all variables of `SSDLite320(num_classes=C)`.
- `from_torchvision_mobilenet_v3_large`: torchvision's ImageNet
  `mobilenet_v3_large` (full tail) -> the `backbone` subtree of
  `SSDLite320(reduced_tail=False)`, the ImageNet start as torchvision builds
  SSDLite with `weights_backbone`; its `classifier.*` is ignored.

Mapping: a conv-BN-activation (`Conv2dNormActivation`) `P.0.weight`, `P.1.
{weight,bias,running_mean,running_var}` -> `ConvBN`'s `conv/kernel` (OIHW ->
HWIO; a depthwise [C, 1, k, k] becomes [k, k, 1, C]), `bn/scale`, `bn/bias`
(params) and `bn/mean`, `bn/var` (batch_stats); `P.1.num_batches_tracked` is
ignored. torchvision's features index -> ours: `features.0` = `stem`,
`features.i` = `block{i}` (its `block.j` numbered expand, depthwise, se,
project, skipping the ones the block lacks), `features.16` = `last_conv`.
SSDLite splits `features` at the C4 block (13): `backbone.features.0` holds
`features.0 .. 12` and C4's expansion as `backbone.features.0.13`;
`backbone.features.1.0` holds C4's remaining layers (keeping their indices
1, 2, 3), `backbone.features.1.{1, 2}` blocks 14, 15 and
`backbone.features.1.3` the last conv. `backbone.extra.k.{0,1,2}` ->
`extra_k/{reduce,depthwise,expand}`; `head.regression_head.module_list.k.
{0,1}` -> `heads/loc_k/{depthwise,conv}`, the classification head ->
`heads/conf_k`. Head channels keep their order (see `ssd_jax.models.ssdlite`
for why no permutation is needed).

What is equal after `from_torchvision_ssdlite320`: for `x` [B, H, W, 3] in
[-1, 1] (torchvision's transform normalises [0, 1] with mean = std = 0.5),
`model.apply(variables, x)` equals torchvision's
`model.head(list(model.backbone(x_nchw).values()))` (eval mode)
`["bbox_regression"]` and `["cls_logits"]` row for row, up to float
rounding.

Every key is accounted for, with the VGG converters' checks
(`ssd_jax.weights.torchvision`, through `io.check_array`): a missing,
unexpected or misshapen key, a non-floating-point array and NaN/inf values
are errors naming the key.
"""

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ssd_jax.models.backbones.mobilenet_v3 import (
  BlockConfig,
  MobileNetV3Large,
  c4_index,
)
from ssd_jax.models.ssdlite import EXTRA_CHANNELS, SSDLite320
from ssd_jax.weights.torchvision import (
  _conv,
  _conv_torch_shape,
  _Converter,
  classes_of_head,
)

Variables = dict[str, Any]

# The input side used to trace parameter shapes (they do not depend on it).
_TRACE_SIZE = 64


def _block_layers(block: BlockConfig) -> Iterator[tuple[str, int]]:
  """(our layer name, torchvision `block` index) of an inverted residual."""
  names = ["expand"] if block.expanded != block.in_channels else []
  names += ["depthwise", "se"] if block.use_se else ["depthwise"]
  yield from ((name, j) for j, name in enumerate([*names, "project"]))


def _mobilenet_layers(
  blocks: tuple[BlockConfig, ...], ssdlite: bool
) -> Iterator[tuple[str, str]]:
  """(our path under `backbone`, torchvision module prefix) of every layer.

  Args:
    blocks: the backbone's blocks.
    ssdlite: SSDLite's split `backbone.features.{0,1}` (see the module
      docstring); else the classifier's `features`.
  """
  last = len(blocks) + 1  # features index of the last conv
  c4 = c4_index(blocks) + 1  # features index of the C4 block

  def prefix(index: int) -> str:
    if not ssdlite:
      return f"features.{index}"
    if index < c4:
      return f"backbone.features.0.{index}"
    return f"backbone.features.1.{index - c4}"

  yield "stem", prefix(0)
  for index, block in enumerate(blocks, start=1):
    for name, j in _block_layers(block):
      key = f"{prefix(index)}.block.{j}"
      if ssdlite and index == c4:  # split after the expansion
        key = f"backbone.features.0.{c4}" if j == 0 else f"{prefix(c4)}.{j}"
      yield f"block{index}/{name}", key
  yield "last_conv", prefix(last)


class _Variables:
  """Puts torch layers into a variables tree, through `_Converter`'s checks.

  The converter's expected tree is `{"params": ..., "batch_stats": ...}`,
  so its paths start with the collection.
  """

  def __init__(self, state_dict: Mapping[str, Any], expected: Variables):
    self.converter = _Converter(state_dict, expected)
    self.batch_norms: list[str] = []

  def conv_bn(self, path: str, prefix: str) -> None:
    """A `Conv2dNormActivation` `prefix` -> the `ConvBN` at `path`."""
    hwio = self.converter.expected[f"params/{path}/conv/kernel"].shape
    kernel = self.converter.take(f"{prefix}.0.weight", _conv_torch_shape(hwio))
    self.converter.put(f"params/{path}/conv/kernel", _conv(kernel))
    shape = (hwio[-1],)
    for collection, ours, theirs in [
      ("params", "scale", "weight"),
      ("params", "bias", "bias"),
      ("batch_stats", "mean", "running_mean"),
      ("batch_stats", "var", "running_var"),
    ]:
      value = self.converter.take(f"{prefix}.1.{theirs}", shape)
      self.converter.put(f"{collection}/{path}/bn/{ours}", value)
    self.batch_norms.append(f"{prefix}.1")

  def layer(self, path: str, prefix: str) -> None:
    """A conv-BN, or a squeeze-and-excitation (`fc1`, `fc2` with bias)."""
    if path.endswith("/se"):
      for fc in ("fc1", "fc2"):
        self.converter.conv(f"{prefix}.{fc}", f"params/{path}/{fc}")
    else:
      self.conv_bn(path, prefix)

  def finish(self, ignored: tuple[str, ...] = ()) -> Variables:
    """The variables; a KeyError names the keys left over but `ignored` and
    the BatchNorm batch counters."""
    counters = tuple(f"{bn}.num_batches_tracked" for bn in self.batch_norms)
    return self.converter.finish(ignored=counters + tuple(ignored))


def num_classes_of_ssdlite(state_dict: Mapping[str, Any]) -> int:
  """Classes (with background) of a torchvision SSDLite320 state dict.

  Args:
    state_dict: torchvision `ssdlite320_mobilenet_v3_large` state dict.

  Returns:
    Output channels of the first classification head / 6 boxes.

  Raises:
    KeyError: if the first classification head is missing.
    ValueError: if its channels are not a multiple of 6 (at least 12).
  """
  return classes_of_head(
    state_dict, "head.classification_head.module_list.0.1.weight", boxes=6
  )


def from_torchvision_ssdlite320(
  state_dict: Mapping[str, Any],
  width: float = 1.0,
  reduced_tail: bool = True,
) -> Variables:
  """Converts torchvision's `ssdlite320_mobilenet_v3_large` weights.

  Args:
    state_dict: torchvision key -> array, exactly the keys of its
      `state_dict()` (BatchNorm `num_batches_tracked` optional).
    width: the width the weights are for (1.0 for torchvision's model; its
      `width_mult` with the extractor built at the same width otherwise).
    reduced_tail: the backbone's tail (True for torchvision's model; False
      for one built with an ImageNet `weights_backbone`).

  Returns:
    `{"params": ..., "batch_stats": ...}` of `SSDLite320(num_classes=C,
    width=width, reduced_tail=reduced_tail)`, float32 numpy, C read from
    the classification head (91 for torchvision's COCO model).

  Raises:
    KeyError: naming a missing or unexpected key.
    TypeError: naming a key whose array is not floating point.
    ValueError: naming a key whose shape is wrong or whose values are not
      all finite.
  """
  model = SSDLite320(
    num_classes=num_classes_of_ssdlite(state_dict),
    image_size=_TRACE_SIZE,
    width=width,
    reduced_tail=reduced_tail,
  )
  x = jnp.zeros((1, _TRACE_SIZE, _TRACE_SIZE, 3))
  expected = jax.eval_shape(model.init, jax.random.key(0), x)
  out = _Variables(state_dict, expected)
  blocks = model.backbone_module(parent=None).blocks()
  for path, prefix in _mobilenet_layers(blocks, ssdlite=True):
    out.layer(f"backbone/{path}", prefix)
  for k in range(len(EXTRA_CHANNELS)):
    for j, name in enumerate(("reduce", "depthwise", "expand")):
      out.conv_bn(f"extra_{k}/{name}", f"backbone.extra.{k}.{j}")
  for k in range(len(model.feature_sizes())):
    for head, ours in [("regression", "loc"), ("classification", "conf")]:
      prefix = f"head.{head}_head.module_list.{k}"
      out.conv_bn(f"heads/{ours}_{k}/depthwise", f"{prefix}.0")
      out.converter.conv(f"{prefix}.1", f"params/heads/{ours}_{k}/conv")
  return out.finish()


def from_torchvision_mobilenet_v3_large(
  state_dict: Mapping[str, Any],
  width: float = 1.0,
  reduced_tail: bool = False,
) -> Variables:
  """Converts torchvision's ImageNet `mobilenet_v3_large` to the backbone.

  Args:
    state_dict: torchvision key -> array: `features.*` of
      `mobilenet_v3_large(width_mult=width, reduced_tail=reduced_tail)`;
      `classifier.*` (the ImageNet classifier) is accepted and ignored.
    width: torchvision's `width_mult` (1.0 for its ImageNet weights).
    reduced_tail: False for torchvision's ImageNet weights (the model they
      suit is `SSDLite320(reduced_tail=False)`).

  Returns:
    `{"params": {"backbone": ...}, "batch_stats": {"backbone": ...}}`,
    float32 numpy: the `backbone` subtree of `SSDLite320(width=width,
    reduced_tail=reduced_tail)`, and the variables of
    `MobileNetV3Large(width, reduced_tail)` under "backbone".

  Raises:
    KeyError: naming a missing or unexpected key.
    TypeError: naming a key whose array is not floating point.
    ValueError: naming a key whose shape is wrong or whose values are not
      all finite.
  """
  backbone = MobileNetV3Large(width=width, reduced_tail=reduced_tail)
  x = jnp.zeros((1, _TRACE_SIZE, _TRACE_SIZE, 3))
  shapes = jax.eval_shape(backbone.init, jax.random.key(0), x)
  expected = {c: {"backbone": tree} for c, tree in shapes.items()}
  out = _Variables(state_dict, expected)
  for path, prefix in _mobilenet_layers(backbone.blocks(), ssdlite=False):
    out.layer(f"backbone/{path}", prefix)
  return out.finish(
    ignored=tuple(k for k in state_dict if k.startswith("classifier."))
  )
