"""Converters for NVIDIA's SSD300 v1.1 and torchvision's ResNet-50 weights.

Both take a state dict (key -> numpy array or torch tensor) and return
variables `{"params": ..., "batch_stats": ...}` of float32 numpy arrays:

- `from_nvidia_ssd300`: NVIDIA DeepLearningExamples' SSD300 v1.1 checkpoint
  (`torch.load(ckpt)["model"]`; a `module.` prefix from a distributed run is
  dropped) -> every variable of `SSD300ResNet50(num_classes=C)`, C read from
  the first classification head (81 for their COCO model).
- `from_torchvision_resnet50`: torchvision's ImageNet `resnet50` -> the
  `backbone` subtree of `SSD300ResNet50` (conv1 .. layer3; layer4 and fc
  are not part of it and are ignored), a partial tree to merge into a fresh
  init (the paper-style start, as `from_torchvision_vgg16` is for VGG).

Key mapping. torchvision's `conv1`, `bn1`, `layer{s}.{b}.conv{i}` /
`.bn{i}` / `.downsample.{0,1}` -> our `conv1`, `layer{s}_{b}/conv{i}`,
`layer{s}_{b}/downsample`, each a ConvBN (`conv/kernel`, `bn/scale`,
`bn/bias`, `bn/mean`, `bn/var`). NVIDIA's trunk is `nn.Sequential(*list(
resnet50.children())[:7])` under `feature_extractor.feature_extractor`, so
its conv1, bn1, layer1, layer2, layer3 are the children `0`, `1`, `4`, `5`,
`6`; `additional_blocks.{i}.{0,1,3,4}` (conv, BN, conv, BN) -> `extras/
block{i}/conv1`, `conv2`; `loc.{k}` / `conf.{k}` -> `heads/loc_k` /
`heads/conf_k`. Convolution weights go OIHW -> HWIO; BatchNorm `weight`,
`bias` -> `scale`, `bias` in "params" and `running_mean`, `running_var` ->
`mean`, `var` in "batch_stats"; `num_batches_tracked` is ignored.

Box order. NVIDIA's heads view their output `[N, A * K, H, W]` as `[N, K,
A * H * W]` (`bbox_view`), so head channel `k * A + a` is column k of box
kind a, and boxes are box-kind-major within a map, as their default boxes
are. This project's heads read channel `a * K + k` with boxes
location-major (`ssd_jax.models.heads`), so the conversion permutes each
head's output channels (`head_channel_order`); the converted model's rows
are then NVIDIA's rows reordered, the same permutation that takes their
`dboxes300_coco()` to `SSD300ResNet50.priors()`.

Every key is accounted for: a missing, unexpected or misshapen key, a
non-floating-point array, NaN/inf values (`ssd_jax.weights.io.check_array`)
and a negative running variance are errors naming the key.
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax.models.backbones.resnet import (
  NVIDIA_STAGE_SIZES,
  ResNet50Backbone,
)
from ssd_jax.models.ssd_resnet50 import NVIDIA_EXTRAS, SSD300ResNet50
from ssd_jax.weights.torchvision import (
  _conv,
  _conv_torch_shape,
  _Converter,
  classes_of_head,
)

Variables = dict[str, Any]

# NVIDIA's trunk: children 0 (conv1), 1 (bn1), 4, 5, 6 (layer1..3) of
# torchvision's resnet50 in an nn.Sequential.
_NVIDIA_TRUNK = "feature_extractor.feature_extractor"
# (our name, torch's name, collection) of a BatchNorm's four tensors.
_BN_TENSORS = (
  ("scale", "weight", "params"),
  ("bias", "bias", "params"),
  ("mean", "running_mean", "batch_stats"),
  ("var", "running_var", "batch_stats"),
)


def head_channel_order(boxes: int, columns: int) -> np.ndarray:
  """Which NVIDIA head channel each of our head channels takes.

  NVIDIA's channel `k * boxes + a` (column k of box kind a) becomes our
  channel `a * columns + k`.

  Args:
    boxes: default boxes per location, A.
    columns: values per box, K (4 for offsets, num_classes for logits).

  Returns:
    [A * K] int64 `order`, `ours = theirs[order]` along the output channels.
  """
  return np.arange(boxes * columns).reshape(columns, boxes).T.reshape(-1)


class _Conversion:
  """ConvBN, head and ResNet conversions through `_Converter`'s checked
  `take`/`put` (as `ssd_jax.weights.ssdlite` does). The converter's
  expected tree is the variables dict, so its paths start with the
  collection: "params/heads/loc_0/bias"."""

  def __init__(self, state_dict: Mapping[str, Any], variables: Variables):
    self.converter = _Converter(state_dict, variables)
    self.counters: list[str] = []  # BatchNorms' num_batches_tracked keys

  def conv(self, key: str, path: str, order: np.ndarray | None = None) -> None:
    """torch Conv2d `key.weight` (and `key.bias` if the model has one) ->
    `path/kernel` (and `path/bias`), output channels taken in `order`."""
    c = self.converter
    hwio = c.expected[f"params/{path}/kernel"].shape
    order = slice(None) if order is None else order
    weight = c.take(f"{key}.weight", _conv_torch_shape(hwio))
    c.put(f"params/{path}/kernel", _conv(weight[order]))
    if f"params/{path}/bias" in c.expected:
      c.put(f"params/{path}/bias", c.take(f"{key}.bias", (hwio[-1],))[order])

  def conv_bn(self, conv_key: str, bn_key: str, path: str) -> None:
    """torch Conv2d `conv_key` + BatchNorm2d `bn_key` -> ConvBN `path`."""
    self.conv(conv_key, f"{path}/conv")
    c = self.converter
    for ours, theirs, collection in _BN_TENSORS:
      key, target = f"{bn_key}.{theirs}", f"{collection}/{path}/bn/{ours}"
      value = c.take(key, c.expected[target].shape)
      if ours == "var" and (value < 0).any():
        raise ValueError(
          f"{key!r} has {(value < 0).sum()} negative value(s); a running "
          "variance is never negative"
        )
      c.put(target, value)
    self.counters.append(f"{bn_key}.num_batches_tracked")

  def resnet(
    self,
    stem: tuple[str, str],
    layers: tuple[str, ...],
    stage_sizes: tuple[int, ...],
    path: str,
  ) -> None:
    """A torchvision ResNet's stem and stages -> our `ResNet` at `path`.

    Args:
      stem: torch keys of the stem's conv and BatchNorm.
      layers: torch key of each stage (e.g. "layer1").
      stage_sizes: blocks per stage.
      path: our path of the trunk (e.g. "backbone").
    """
    self.conv_bn(*stem, f"{path}/conv1")
    for s, (layer, blocks) in enumerate(zip(layers, stage_sizes, strict=True)):
      for b in range(blocks):
        key, ours = f"{layer}.{b}", f"{path}/layer{s + 1}_{b}"
        for i in (1, 2, 3):
          self.conv_bn(f"{key}.conv{i}", f"{key}.bn{i}", f"{ours}/conv{i}")
        if b == 0:
          self.conv_bn(
            f"{key}.downsample.0", f"{key}.downsample.1", f"{ours}/downsample"
          )

  def finish(self, ignored: tuple[str, ...] = ()) -> Variables:
    """The filled variables; a KeyError names the keys left over but
    `ignored` and the BatchNorm counters."""
    c = self.converter
    variables = c.finish(ignored=(*self.counters, *ignored))
    unfilled = sorted(set(c.expected) - set(c.out))
    if unfilled:  # an internal error: the mapping misses a model variable
      raise ValueError(f"no state dict key converts to {unfilled}")
    return variables


def _shapes(model: Any, image_size: int) -> Variables:
  x = jnp.zeros((1, image_size, image_size, 3))
  return jax.eval_shape(model.init, jax.random.key(0), x)


def _strip_module_prefix(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
  """Drops the `module.` that DistributedDataParallel puts on every key."""
  if state_dict and all(k.startswith("module.") for k in state_dict):
    return {k[len("module.") :]: v for k, v in state_dict.items()}
  return state_dict


def num_classes_of_nvidia_ssd300(state_dict: Mapping[str, Any]) -> int:
  """Classes (with background) of an NVIDIA SSD300 state dict.

  Args:
    state_dict: NVIDIA `SSD300` state dict (`module.` prefix allowed).

  Returns:
    Output channels of `conf.0` (4 boxes per location) / 4.

  Raises:
    KeyError: if `conf.0.weight` is missing.
    ValueError: if its channels are not a multiple of 4 (or below 8).
  """
  state_dict = _strip_module_prefix(state_dict)
  return classes_of_head(state_dict, "conf.0.weight", boxes=4)


def from_nvidia_ssd300(
  state_dict: Mapping[str, Any], width: float = 1.0
) -> Variables:
  """Converts NVIDIA's SSD300 v1.1 weights to `SSD300ResNet50` variables.

  See the module docstring for the key mapping and the head permutation.

  Args:
    state_dict: NVIDIA key -> array, exactly the keys of their
      `SSD300(ResNet('resnet50')).state_dict()` (`torch.load(ckpt)
      ["model"]`), optionally all prefixed with `module.`.
    width: channel multiplier of the model the weights are for (1.0 for
      NVIDIA's; other values are for tests of scaled copies).

  Returns:
    `{"params": ..., "batch_stats": ...}` of `SSD300ResNet50(num_classes=C,
    width=width)`, float32 numpy, C from `num_classes_of_nvidia_ssd300`.
    For an input normalised as NVIDIA's (RGB in [0, 1], ImageNet mean/std)
    its outputs in evaluation mode equal NVIDIA's `model.eval()(x)` with
    rows reordered to this project's box order: `loc[:, p]` is their
    `locs[:, :, q]` for the same default box.

  Raises:
    KeyError: naming a missing or unexpected key.
    TypeError: naming a key whose array is not floating point.
    ValueError: naming a key whose shape is wrong, whose values are not all
      finite, or whose running variance is negative.
  """
  state_dict = _strip_module_prefix(state_dict)
  model = SSD300ResNet50(
    num_classes=num_classes_of_nvidia_ssd300(state_dict), width=width
  )
  conversion = _Conversion(state_dict, _shapes(model, model.image_size))
  conversion.resnet(
    (f"{_NVIDIA_TRUNK}.0", f"{_NVIDIA_TRUNK}.1"),
    tuple(f"{_NVIDIA_TRUNK}.{i}" for i in (4, 5, 6)),
    NVIDIA_STAGE_SIZES,
    "backbone",
  )
  for i in range(len(NVIDIA_EXTRAS)):
    key, path = f"additional_blocks.{i}", f"extras/block{i}"
    conversion.conv_bn(f"{key}.0", f"{key}.1", f"{path}/conv1")
    conversion.conv_bn(f"{key}.3", f"{key}.4", f"{path}/conv2")
  for k, boxes in enumerate(model.head_boxes()):
    conversion.conv(f"loc.{k}", f"heads/loc_{k}", head_channel_order(boxes, 4))
    conversion.conv(
      f"conf.{k}",
      f"heads/conf_{k}",
      head_channel_order(boxes, model.num_classes),
    )
  return conversion.finish()


def from_torchvision_resnet50(
  state_dict: Mapping[str, Any], width: float = 1.0
) -> Variables:
  """Converts torchvision's ImageNet `resnet50` to the SSD backbone.

  Args:
    state_dict: torchvision key -> array, the keys of `resnet50()
      .state_dict()`: `conv1`, `bn1`, `layer1` .. `layer3` are converted;
      `layer4.*` and `fc.*` (not part of SSD's trunk) are ignored.
    width: channel multiplier of the model the weights are for (1.0 for
      torchvision's; other values are for tests of scaled copies).

  Returns:
    `{"params": {"backbone": ...}, "batch_stats": {"backbone": ...}}`,
    float32 numpy: every variable of `ResNet50Backbone(width)` under
    `backbone`, the partial tree of `SSD300ResNet50` to merge into its
    fresh init. The strides are the model's (layer3 at stride 1), which
    changes no weight.

  Raises:
    KeyError: naming a missing or unexpected key.
    TypeError: naming a key whose array is not floating point.
    ValueError: naming a key whose shape is wrong, whose values are not all
      finite, or whose running variance is negative.
  """
  shapes = _shapes(ResNet50Backbone(width=width), 32)
  conversion = _Conversion(
    state_dict, {col: {"backbone": tree} for col, tree in shapes.items()}
  )
  conversion.resnet(
    ("conv1", "bn1"),
    ("layer1", "layer2", "layer3"),
    NVIDIA_STAGE_SIZES,
    "backbone",
  )
  return conversion.finish(
    ignored=tuple(k for k in state_dict if k.startswith(("layer4.", "fc.")))
  )


# `--from` names of the command line -> converter (for `weights.cli`).
CONVERTERS = {
  "nvidia-ssd300": from_nvidia_ssd300,
  "torchvision-resnet50": from_torchvision_resnet50,
}
