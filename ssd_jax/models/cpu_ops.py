"""Drop-in convolution and max pool whose gradients are faster on XLA CPU.

XLA CPU (jax 0.10) computes the forward of a 3x3 convolution well, but its
kernel (weight) gradient at large spatial sizes is slow: it is lowered as a
convolution whose "kernel" is the whole H x W output gradient. And the
gradient of `max_pool` is a `select_and_scatter`, which on CPU costs about
40x its forward. This module supplies replacements with a `jax.custom_vjp`:

- `conv_general_dilated`: signature-compatible with
  `jax.lax.conv_general_dilated` (so it plugs into
  `flax.linen.Conv(..., conv_general_dilated=conv_general_dilated)`). For a
  2-D NHWC/HWIO convolution with stride 1, no dilation, one feature group,
  non-negative padding, an output of at least `MIN_FAST_PIXELS` pixels
  per image and enough channels (`MIN_FAST_CHANNEL_PRODUCT`,
  `MIN_FAST_CHANNELS`; measured: SSD300's conv2_1 .. conv4_3, not conv1_x
  and not the 19x19 conv5_x), the backward pass is
    - input gradient: a forward convolution of the output gradient with the
      spatially flipped, in/out-swapped kernel (what XLA does too);
    - kernel gradient: one matrix product per kernel tap,
      `[N * Ho * Wo, Cin]^T @ [N * Ho * Wo, Cout]` of the shifted padded
      input and the output gradient, accumulated in float32.
  Everything else (strides, dilations such as SSD's fc6, small maps, other
  layouts) goes to `jax.lax.conv_general_dilated` unchanged.
- `max_pool`: signature-compatible with `flax.linen.max_pool`. For a
  non-overlapping window (window == strides) the forward is flax's own, and
  the gradient is an equality mask: the output gradient goes to the
  first element of each window (row-major order) that equals the window's
  maximum. That is exactly the element `select_and_scatter` (and so
  `jax.grad` of `flax.linen.max_pool`) picks, so the gradients are the same,
  ties included; with ties every window still passes its gradient to
  exactly one element, which is a valid subgradient of the max. Overlapping
  windows (SSD's pool5, 3x3 stride 1) fall back to `flax.linen.max_pool`.

Both work under `jit`, `pmap`, `jax.checkpoint` and in bfloat16 (the kernel
gradient accumulates in float32 and is cast to the kernel's dtype). They do
not support forward-mode differentiation (`jax.jvp`), as any
`jax.custom_vjp` function.

Use in a model (the forward values are XLA's own, so parameters and
checkpoints are unchanged):

  conv = nn.Conv(..., conv_general_dilated=cpu_ops.conv_general_dilated)
  x = cpu_ops.max_pool(x, (2, 2), strides=(2, 2), padding=...)

Measured with experiments/bench_layers.py (SSD300, batch 8, 2 shared cores):
the whole float32 training step takes about 0.6x the plain one's time.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# When the custom kernel gradient is used, from experiments/bench_layers.py
# (SSD300 shapes, batch 8, float32; vjp time custom / XLA): 150x150
# 64->128 0.36, 128->128 0.31; 75x75 128->256 0.33, 256->256 0.38; 38x38
# 256->512 0.71, 512->512 0.74; but 19x19 512->512 1.07 and 300x300 64->64
# 1.11 (per-tap dots with 64 x 64 outputs use the CPU poorly).
# Smallest output Ho * Wo per image.
MIN_FAST_PIXELS = 32 * 32
# Smallest Cin * Cout, and smallest of Cin and Cout.
MIN_FAST_CHANNEL_PRODUCT = 64 * 128
MIN_FAST_CHANNELS = 64

_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_nhwc(dimension_numbers, lhs_shape, rhs_shape) -> bool:
  """Whether `dimension_numbers` mean NHWC input, HWIO kernel, NHWC output."""
  if dimension_numbers is None or len(lhs_shape) != 4:
    return False
  try:
    given = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
  except (TypeError, ValueError):
    return False
  return given == lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC)


def _all_ones(values) -> bool:
  return values is None or all(v == 1 for v in values)


def _kernel_grad(
  x: jax.Array, g: jax.Array, kernel_shape, padding
) -> jax.Array:
  """Kernel gradient of a stride-1 NHWC/HWIO convolution as matmuls.

  One dot per kernel tap (i, j):
  `dw[i, j] = xpad[:, i:i + Ho, j:j + Wo, :]^T @ g`, both flattened to
  `[N * Ho * Wo, C]`, accumulated in float32.

  Args:
    x: [N, H, W, Cin] convolution input.
    g: [N, Ho, Wo, Cout] gradient of the convolution output.
    kernel_shape: (kh, kw, Cin, Cout).
    padding: ((top, bottom), (left, right)), all >= 0.

  Returns:
    [kh, kw, Cin, Cout] float32 gradient of the kernel.
  """
  kh, kw, cin, cout = kernel_shape
  _, ho, wo, _ = g.shape
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  g2 = g.reshape(-1, cout)  # [N * Ho * Wo, Cout]
  taps = []
  for i in range(kh):
    for j in range(kw):
      xs = xp[:, i : i + ho, j : j + wo, :].reshape(-1, cin)
      taps.append(
        lax.dot_general(
          xs,
          g2,
          (((0,), (0,)), ((), ())),
          preferred_element_type=jnp.float32,
        )
      )  # [Cin, Cout]
  return jnp.stack(taps).reshape(kh, kw, cin, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_fast(x, w, padding, precision):
  return lax.conv_general_dilated(
    x, w, (1, 1), padding, dimension_numbers=_NHWC, precision=precision
  )


def _conv_fast_fwd(x, w, padding, precision):
  return _conv_fast(x, w, padding, precision), (x, w)


def _conv_fast_bwd(padding, precision, residuals, g):
  x, w = residuals
  kh, kw = w.shape[:2]
  # Input gradient: correlate g with the flipped kernel, in/out swapped.
  w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)  # [kh, kw, Cout, Cin]
  dx_padding = (
    (kh - 1 - padding[0][0], kh - 1 - padding[0][1]),
    (kw - 1 - padding[1][0], kw - 1 - padding[1][1]),
  )
  dx = lax.conv_general_dilated(
    g, w_t, (1, 1), dx_padding, dimension_numbers=_NHWC, precision=precision
  )
  dw = _kernel_grad(x, g, w.shape, padding)
  return dx.astype(x.dtype), dw.astype(w.dtype)


_conv_fast.defvjp(_conv_fast_fwd, _conv_fast_bwd)


def use_fast_conv(
  lhs_shape: Sequence[int],
  rhs_shape: Sequence[int],
  window_strides: Sequence[int],
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  preferred_element_type=None,
  min_pixels: int | None = None,
  min_channel_product: int | None = None,
) -> bool:
  """Whether `conv_general_dilated` takes the custom-gradient path.

  Args:
    lhs_shape: input shape.
    rhs_shape: kernel shape.
    window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, batch_group_count, preferred_element_type: as
      `jax.lax.conv_general_dilated`.
    min_pixels: smallest output Ho * Wo for the custom path; None reads
      the module's `MIN_FAST_PIXELS` at call time.
    min_channel_product: smallest Cin * Cout for the custom path; None
      reads the module's `MIN_FAST_CHANNEL_PRODUCT` at call time.

  Returns:
    True for a 2-D NHWC/HWIO stride-1 undilated single-group convolution
    with non-negative padding, at least `min_pixels` output pixels, at
    least `min_channel_product` Cin * Cout and `MIN_FAST_CHANNELS` in both
    Cin and Cout.
  """
  if not _is_nhwc(dimension_numbers, lhs_shape, rhs_shape):
    return False
  if tuple(window_strides) != (1, 1) or not (
    _all_ones(lhs_dilation) and _all_ones(rhs_dilation)
  ):
    return False
  if feature_group_count != 1 or batch_group_count != 1:
    return False
  if preferred_element_type is not None:
    return False
  pads = _explicit_padding(lhs_shape, rhs_shape, padding)
  if any(p < 0 for pair in pads for p in pair):
    return False
  ho = lhs_shape[1] + sum(pads[0]) - rhs_shape[0] + 1
  wo = lhs_shape[2] + sum(pads[1]) - rhs_shape[1] + 1
  if min_pixels is None:
    min_pixels = MIN_FAST_PIXELS
  if min_channel_product is None:
    min_channel_product = MIN_FAST_CHANNEL_PRODUCT
  cin, cout = rhs_shape[2], rhs_shape[3]
  if cin * cout < min_channel_product or min(cin, cout) < MIN_FAST_CHANNELS:
    return False
  return ho > 0 and wo > 0 and ho * wo >= min_pixels


def _explicit_padding(lhs_shape, rhs_shape, padding):
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[:2], (1, 1), padding)
  else:
    pads = padding
  return tuple((int(lo), int(hi)) for lo, hi in pads)


def conv_general_dilated(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides: Sequence[int],
  padding,
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision=None,
  preferred_element_type=None,
) -> jax.Array:
  """`jax.lax.conv_general_dilated` with a faster CPU gradient where it helps.

  Same arguments and result as `jax.lax.conv_general_dilated`. The forward
  is always XLA's convolution; for the cases `use_fast_conv` accepts, the
  gradient is the custom one described in the module docstring. Use it in
  flax as `nn.Conv(..., conv_general_dilated=conv_general_dilated)`.

  Args:
    lhs: input, e.g. [N, H, W, Cin].
    rhs: kernel, e.g. [kh, kw, Cin, Cout].
    window_strides: spatial strides.
    padding: "SAME", "VALID" or ((top, bottom), (left, right)).
    lhs_dilation: input dilation.
    rhs_dilation: kernel dilation.
    dimension_numbers: as in lax (tuple of strings or ConvDimensionNumbers).
    feature_group_count: feature groups.
    batch_group_count: batch groups.
    precision: dot precision.
    preferred_element_type: accumulation/output dtype.

  Returns:
    The convolution output, e.g. [N, Ho, Wo, Cout].
  """
  if use_fast_conv(
    lhs.shape,
    rhs.shape,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    preferred_element_type,
  ):
    pads = _explicit_padding(lhs.shape, rhs.shape, padding)
    return _conv_fast(lhs, rhs, pads, precision)
  return lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )


def _pool_windows(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
  """[N, H, W, C] -> [N, H/kh, kh, W/kw, kw, C] (sides divisible)."""
  n, h, w, c = x.shape
  kh, kw = window
  return x.reshape(n, h // kh, kh, w // kw, kw, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_tiles(x: jax.Array, window: tuple[int, int], pads) -> jax.Array:
  # The forward is flax's own reduce_window, so values are bit-identical.
  return nn.max_pool(x, window, strides=window, padding=pads)


def _max_pool_tiles_fwd(x, window, pads):
  y = _max_pool_tiles(x, window, pads)
  return y, (x, y)


def _max_pool_tiles_bwd(window, pads, residuals, g):
  x, y = residuals
  kh, kw = window
  _, ho, wo, _ = y.shape
  # Padded with -inf and cropped to the windows: [N, ho * kh, wo * kw, C].
  xp = lax.pad(
    x,
    jnp.array(-jnp.inf, x.dtype),
    (
      (0, 0, 0),
      (pads[0][0], ho * kh - x.shape[1] - pads[0][0], 0),
      (pads[1][0], wo * kw - x.shape[2] - pads[1][0], 0),
      (0, 0, 0),
    ),
  )
  xw = _pool_windows(xp, window)  # [N, ho, kh, wo, kw, C]
  taken = jnp.zeros(y.shape, bool)
  parts = []
  for i in range(kh):
    row = []
    for j in range(kw):
      if i == kh - 1 and j == kw - 1:
        hit = ~taken  # the last element takes the window if nothing did
      else:
        hit = (xw[:, :, i, :, j, :] == y) & ~taken
        taken = taken | hit
      row.append(jnp.where(hit, g, jnp.zeros((), g.dtype)))
    parts.append(jnp.stack(row, axis=3))  # [N, ho, wo, kw, C]
  dxp = jnp.stack(parts, axis=2).reshape(xp.shape)  # [N, ho*kh, wo*kw, C]
  # Back to x's rows and columns: drop padding, zeros where windows ended.
  dx = lax.pad(
    dxp,
    jnp.zeros((), g.dtype),
    (
      (0, 0, 0),
      (-pads[0][0], x.shape[1] + pads[0][0] - ho * kh, 0),
      (-pads[1][0], x.shape[2] + pads[1][0] - wo * kw, 0),
      (0, 0, 0),
    ),
  )
  return (dx,)


_max_pool_tiles.defvjp(_max_pool_tiles_fwd, _max_pool_tiles_bwd)


def max_pool(
  inputs: jax.Array,
  window_shape: Sequence[int],
  strides: Sequence[int] | None = None,
  padding="VALID",
) -> jax.Array:
  """`flax.linen.max_pool` with a cheap gradient for non-overlapping windows.

  Same arguments and result as `flax.linen.max_pool` on NHWC inputs. When
  `strides == window_shape` (e.g. SSD's 2x2 stride-2 pools, with or without
  Caffe's ceil-mode padding) the forward is flax's and the gradient an
  equality mask that sends each window's gradient to its first
  maximal element (row-major), which is what `jax.grad` of
  `flax.linen.max_pool` gives. Other pools call `flax.linen.max_pool`.

  Args:
    inputs: [N, H, W, C] float array.
    window_shape: (kh, kw).
    strides: (sh, sw); defaults to (1, 1) as in flax.
    padding: "VALID", "SAME" or ((top, bottom), (left, right)); padded
      elements are -inf (never selected unless a window is all padding).

  Returns:
    [N, Ho, Wo, C] pooled array, the dtype of `inputs`.

  Raises:
    ValueError: if `inputs` is not 4-D or `window_shape` not 2 long.
  """
  if inputs.ndim != 4 or len(window_shape) != 2:
    raise ValueError(
      "cpu_ops.max_pool: expects NHWC inputs and a 2-D window, got inputs "
      f"{inputs.shape} and window_shape {tuple(window_shape)}"
    )
  window = tuple(int(k) for k in window_shape)
  strides = (1, 1) if strides is None else tuple(int(s) for s in strides)
  if strides != window or not jnp.issubdtype(inputs.dtype, jnp.floating):
    return nn.max_pool(inputs, window_shape, strides, padding)
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(inputs.shape[1:3], window, strides, padding)
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if any(p < 0 for pair in pads for p in pair):
    return nn.max_pool(inputs, window_shape, strides, padding)
  ho = (inputs.shape[1] + sum(pads[0])) // window[0]
  wo = (inputs.shape[2] + sum(pads[1])) // window[1]
  if ho == 0 or wo == 0:
    return nn.max_pool(inputs, window_shape, strides, padding)
  return _max_pool_tiles(inputs, window, pads)
