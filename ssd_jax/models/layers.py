"""What every SSD part builds with: the release's convolution, the width rule.

The SSD release initialises the layers it adds with Xavier-uniform kernels
and zero biases; the trunk, the extra blocks and the heads all use `conv`.
`scaled_channels` is the channel multiplier (`width`) that shrinks a model
for CPU runs and tests.

On a GPU, `conv` computes a dilated convolution (VGG16's fc6: 3x3,
dilation 6, padding 6) as an undilated one over the input's phases
(`dilated_conv_by_phases`). Measured on an H200 (jax 0.11.2, cuDNN 9.19,
float32, batch 128, 2026-11-30): XLA fuses fc6's convolution, bias and ReLU
into one cuDNN call that runs a `conv2d_grouped_direct_kernel` for 562 ms,
96% of SSD300's 586 ms forward (218 img/s against torchvision's 2,680);
without the ReLU fused the same convolution takes 2.95 ms, and by phases
with the ReLU 2.32 ms. Training graphs do not fuse it and were never slow,
nor is bfloat16. On the CPU the phases are slower (42.6 vs 62.8 ms for fc6
at batch 2 here), so the CPU keeps the dilated convolution. Same parameters,
same values up to float rounding.
"""

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ssd_jax.models import cpu_ops

_NHWC = ("NHWC", "HWIO", "NHWC")
# Backends whose `conv` computes dilated convolutions by phases.
PHASE_BACKENDS = ("gpu",)
# Backends that compute depthwise convolutions as sums of shifted products.
SHIFT_BACKENDS = ("cpu",)


def scaled_channels(channels: int, width: float) -> int:
  """Channel count after the width multiplier: `max(1, round(c * width))`."""
  return max(1, int(round(channels * width)))


def dilated_conv_by_phases(
  x: jax.Array,
  kernel: jax.Array,
  padding: Sequence[tuple[int, int]],
  dilation: int,
  precision: Any = None,
) -> jax.Array:
  """A stride-1 dilated convolution as an undilated one on the phases.

  With dilation r, output row i reads input rows i, i + r, i + 2r, ... (of
  the padded input), so the rows of one residue mod r ("phase") only meet
  each other: the padded input is cut into its r x r phases, stacked on the
  batch axis, convolved with the undilated kernel, and put back
  (TensorFlow's `atrous_conv2d` does the same with space_to_batch).

  Args:
    x: [B, H, W, C] input.
    kernel: [kh, kw, C, O] kernel (HWIO), applied with dilation r.
    padding: ((top, bottom), (left, right)) zero padding, each >= 0.
    dilation: r >= 1, on both spatial axes.
    precision: matmul precision, as for `lax.conv_general_dilated`.

  Returns:
    [B, H', W', O]: `lax.conv_general_dilated(x, kernel, (1, 1), padding,
    rhs_dilation=(r, r))`.
  """
  r = dilation
  (top, bottom), (left, right) = padding
  x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  b, h, w, c = x.shape  # padded
  kh, kw, _, o = kernel.shape
  out_h, out_w = h - r * (kh - 1), w - r * (kw - 1)
  ph, pw = -(-h // r), -(-w // r)  # rows and columns per phase
  x = jnp.pad(x, ((0, 0), (0, ph * r - h), (0, pw * r - w), (0, 0)))
  x = x.reshape(b, ph, r, pw, r, c).transpose(0, 2, 4, 1, 3, 5)
  x = x.reshape(b * r * r, ph, pw, c)  # [B r r, ph, pw, C]
  y = lax.conv_general_dilated(
    x, kernel, (1, 1), "VALID", dimension_numbers=_NHWC, precision=precision
  )  # [B r r, ph - kh + 1, pw - kw + 1, O]
  y = y.reshape(b, r, r, ph - kh + 1, pw - kw + 1, o).transpose(
    0, 3, 1, 4, 2, 5
  )
  y = y.reshape(b, (ph - kh + 1) * r, (pw - kw + 1) * r, o)
  return y[:, :out_h, :out_w]


def depthwise_conv_by_shifts(
  x: jax.Array,
  kernel: jax.Array,
  stride: int,
  padding: Sequence[tuple[int, int]],
) -> jax.Array:
  """A depthwise convolution as k * k shifted, strided products, summed.

  XLA's CPU backend runs grouped convolutions with one group per channel
  very slowly: a 3x3 depthwise convolution on [8, 40, 40, 240] took 146 ms
  here against 2.9 ms this way, and its gradient 158 against 55 ms
  (2 cores, jax 0.10.2, 2026-11-30; torch's own: 2.5 ms). The products fuse
  into one loop over the output.

  Args:
    x: [B, H, W, C] NHWC.
    kernel: [k, k, 1, C] HWIO, one filter per channel.
    stride: the same stride on both axes.
    padding: ((top, bottom), (left, right)) zero padding.

  Returns:
    [B, H', W', C], as `lax.conv_general_dilated(..., feature_group_count=C)`.
  """
  kh, kw = kernel.shape[:2]
  (top, bottom), (left, right) = padding
  x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  b, h, w, c = x.shape
  out_h, out_w = (h - kh) // stride + 1, (w - kw) // stride + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      patch = lax.slice(
        x,
        (0, i, j, 0),
        (b, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c),
        (1, stride, stride, 1),
      )  # [B, H', W', C]
      term = patch * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


def conv_general_dilated(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides: Sequence[int],
  padding: str | Sequence[tuple[int, int]],
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers: Any = None,
  feature_group_count: int = 1,
  precision: Any = None,
) -> jax.Array:
  """`lax.conv_general_dilated`, by phases for a dilated conv on a GPU.

  `dilated_conv_by_phases` when the backend is one of `PHASE_BACKENDS`
  (decided when the function is traced) and the convolution is NHWC/HWIO,
  stride 1, ungrouped, with the same kernel dilation on both axes and
  explicit padding; `depthwise_conv_by_shifts` when the backend is one of
  `SHIFT_BACKENDS` and the convolution is an NHWC/HWIO depthwise one
  (one group per channel, no dilation, explicit padding, the same stride on
  both axes); `lax.conv_general_dilated` with the same arguments otherwise.
  The arguments are those of `lax.conv_general_dilated`.

  Returns:
    The convolution, [B, H', W', O] for NHWC.
  """
  dilation = tuple(rhs_dilation or (1, 1))
  phases = (
    jax.default_backend() in PHASE_BACKENDS
    and lhs.ndim == 4
    and feature_group_count == 1
    and not isinstance(padding, str)
    and tuple(window_strides) == (1, 1)
    and tuple(lhs_dilation or (1, 1)) == (1, 1)
    and dilation[0] == dilation[1] > 1
    and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  )
  if phases:
    return dilated_conv_by_phases(
      lhs, rhs, padding, dilation[0], precision=precision
    )
  strides = tuple(window_strides)
  shifts = (
    jax.default_backend() in SHIFT_BACKENDS
    and lhs.ndim == 4
    and feature_group_count > 1
    and rhs.shape[2:] == (1, feature_group_count)
    and lhs.shape[3] == feature_group_count
    and not isinstance(padding, str)
    and strides[0] == strides[1]
    and tuple(lhs_dilation or (1, 1)) == (1, 1)
    and dilation == (1, 1)
    and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  )
  if shifts:
    return depthwise_conv_by_shifts(lhs, rhs, strides[0], padding)
  return lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    precision=precision,
  )


def conv(
  features: int,
  kernel: int,
  name: str,
  *,
  dtype: Any,
  param_dtype: Any,
  stride: int = 1,
  padding: int = 1,
  dilation: int = 1,
) -> nn.Conv:
  """A square convolution with the release's init, NHWC and HWIO.

  It computes with `conv_general_dilated` (dilated convolutions by phases on
  a GPU, see the module docstring); parameters and results are those of a
  plain `nn.Conv`.

  Args:
    features: output channels.
    kernel: side of the (square) kernel.
    name: the parameter scope, e.g. "conv8_1" or "loc_0".
    dtype: computation dtype.
    param_dtype: parameter dtype.
    stride: the same stride on both axes.
    padding: the same symmetric padding on both axes.
    dilation: kernel dilation on both axes (6 for VGG16's fc6).

  Returns:
    An unbound `nn.Conv` with a Xavier-uniform kernel
    `[kernel, kernel, in, features]` and a zero bias `[features]`.
  """
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=padding,
    kernel_dilation=(dilation, dilation),
    dtype=dtype,
    param_dtype=param_dtype,
    kernel_init=nn.initializers.xavier_uniform(),
    bias_init=nn.initializers.zeros,
    conv_general_dilated=conv_general_dilated,
    name=name,
  )


_BN_AXIS = contextvars.ContextVar("ssd_jax_bn_axis", default=None)


@contextlib.contextmanager
def batch_norm_axis(axis_name: str | None) -> Iterator[None]:
  """Within: training-mode BatchNorm averages its batch statistics over the
  named device axis (synchronised BatchNorm).

  The data-parallel step traces the model inside
  `batch_norm_axis("batch")`, so every `ConvBN` normalises with the
  statistics of the global batch: the step's result does not depend on
  how the batch is split over devices (as the MultiBox loss's normaliser
  does not). Outside it (or with None) BatchNorm uses the local batch.
  """
  token = _BN_AXIS.set(axis_name)
  try:
    yield
  finally:
    _BN_AXIS.reset(token)


def batch_norm(
  name: str,
  train: bool,
  *,
  dtype: Any,
  param_dtype: Any,
  momentum: float = 0.9,
  epsilon: float = 1e-5,
  cpu_fast: bool = False,
) -> nn.Module:
  """The zoo's BatchNorm: batch statistics in training, synchronised over
  the devices of `batch_norm_axis` when set; the running ones otherwise.

  Args:
    name: the parameter scope ("bn", "conv1_1_bn").
    train: normalise with the batch's statistics and update the running
      ones (needs `mutable=["batch_stats"]`).
    dtype: computation dtype.
    param_dtype: parameter dtype.
    momentum: flax's decay of the running statistics, `1 - torch's
      momentum` (0.9 for torch's default 0.1).
    epsilon: added to the variance (torch's `eps`).
    cpu_fast: `cpu_ops.BatchNorm` (the same variables and values, its
      reductions faster on XLA CPU) instead of flax's.

  Returns:
    An unbound `nn.BatchNorm` (or `cpu_ops.BatchNorm`) with `scale`,
    `bias` and running `mean`, `var` over the last axis.
  """
  return (cpu_ops.BatchNorm if cpu_fast else nn.BatchNorm)(
    use_running_average=not train,
    axis_name=_BN_AXIS.get() if train else None,
    momentum=momentum,
    epsilon=epsilon,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
  )


def conv_relu(
  x: jax.Array,
  features: int,
  kernel: int,
  name: str,
  *,
  train: bool,
  batch_norm_after: bool,
  dtype: Any,
  param_dtype: Any,
  cpu_fast: bool = False,
  **conv_kwargs: Any,
) -> jax.Array:
  """`conv` -> (BatchNorm `<name>_bn`) -> ReLU, inside a compact module.

  The VGG SSD's layer (trunk and extra blocks): the release's convolution,
  and with `batch_norm_after` a BatchNorm before the ReLU (torchvision's
  `vgg16_bn` layout, the convolution keeps its bias).

  Args:
    x: [B, H, W, C] NHWC.
    features: output channels.
    kernel: side of the square kernel.
    name: the convolution's scope; the BatchNorm's is `<name>_bn`.
    train: BatchNorm in training mode (see `batch_norm`).
    batch_norm_after: whether there is a BatchNorm.
    dtype: computation dtype.
    param_dtype: parameter dtype.
    cpu_fast: the BatchNorm is `cpu_ops.BatchNorm` (see `batch_norm`).
    **conv_kwargs: `stride`, `padding`, `dilation` of `conv`.

  Returns:
    [B, H', W', features] after the ReLU.
  """
  layer = dict(dtype=dtype, param_dtype=param_dtype)
  x = conv(features, kernel, name, **conv_kwargs, **layer)(x)
  if batch_norm_after:
    x = batch_norm(f"{name}_bn", train, cpu_fast=cpu_fast, **layer)(x)
  return nn.relu(x)


class ConvBN(nn.Module):
  """Convolution without bias -> BatchNorm -> activation, as torch builds it.

  The block of the BatchNorm models (ResNet-50, MobileNetV3 and their SSD
  parts). Parameters `conv/kernel` [k, k, in / groups, features] (HWIO) and
  `bn/scale`, `bn/bias`; statistics `bn/mean`, `bn/var` in the
  "batch_stats" collection. Padding is symmetric, as torch's
  `Conv2d(padding=p)` (flax's "SAME" pads a strided convolution
  asymmetrically, which would shift every output against torch's).

  Attributes:
    features: output channels.
    kernel: side of the square kernel.
    stride: the same stride on both axes.
    padding: symmetric padding on both axes (torch's `padding`).
    groups: feature groups (`groups = in channels` is depthwise).
    activation: applied after the BatchNorm; None for none.
    bn_eps: BatchNorm epsilon (torch's `eps`).
    bn_momentum: flax's decay of the running statistics, `1 - torch's
      momentum` (0.9 for torch's default 0.1).
    kernel_init: the convolution's initialiser (default Kaiming normal,
      fan-out, as torchvision's ResNet and MobileNetV3 trunks; the layers
      SSDLite and NVIDIA's SSD add pass their references' own).
    dtype: computation dtype.
    param_dtype: parameter dtype.
    cpu_fast_ops: the BatchNorm is `cpu_ops.BatchNorm` (the same
      variables and values, faster to train on XLA CPU).
  """

  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  groups: int = 1
  activation: Any = nn.relu
  bn_eps: float = 1e-5
  bn_momentum: float = 0.9
  kernel_init: Any = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  cpu_fast_ops: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """[B, H, W, C] -> [B, H', W', features].

    Args:
      x: the input, NHWC.
      train: normalise with the batch's statistics (over the devices of
        `batch_norm_axis`, when set) and update the running ones (needs
        `mutable=["batch_stats"]`); False uses the running ones.
    """
    p = self.padding
    x = nn.Conv(
      self.features,
      (self.kernel, self.kernel),
      strides=(self.stride, self.stride),
      padding=((p, p), (p, p)),
      feature_group_count=self.groups,
      use_bias=False,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=self.kernel_init,
      conv_general_dilated=conv_general_dilated,
      name="conv",
    )(x)
    x = batch_norm(
      "bn",
      train,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      momentum=self.bn_momentum,
      cpu_fast=self.cpu_fast_ops,
      epsilon=self.bn_eps,
    )(x)
    return x if self.activation is None else self.activation(x)
