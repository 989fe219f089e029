"""What every SSD part builds with: the release's convolution, the width rule.

The SSD release initialises the layers it adds with Xavier-uniform kernels
and zero biases; the trunk, the extra blocks and the heads all use `conv`.
`scaled_channels` is the channel multiplier (`width`) that shrinks a model
for CPU runs and tests.
"""

from typing import Any

import flax.linen as nn


def scaled_channels(channels: int, width: float) -> int:
  """Channel count after the width multiplier: `max(1, round(c * width))`."""
  return max(1, int(round(channels * width)))


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
    name=name,
  )
