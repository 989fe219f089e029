"""Drop-in max pool whose gradient is cheap on XLA CPU.

The gradient of `flax.linen.max_pool` is a `select_and_scatter`, which on
XLA CPU (jax 0.10) costs about 40x its forward. This module supplies
`max_pool`, signature-compatible with `flax.linen.max_pool`, with a
`jax.custom_vjp`: for a non-overlapping window (window == strides) the
forward is flax's own, and the gradient is an equality mask: the output
gradient goes to the first element of each window (row-major order) that
equals the window's maximum. That is exactly the element
`select_and_scatter` (and so `jax.grad` of `flax.linen.max_pool`) picks, so
the gradients are the same, ties included; with ties every window still
passes its gradient to exactly one element, which is a valid subgradient of
the max. Overlapping windows (SSD's pool5, 3x3 stride 1) fall back to
`flax.linen.max_pool`.

It works under `jit`, `pmap`, `jax.checkpoint` and in bfloat16. It does not
support forward-mode differentiation (`jax.jvp`), as any `jax.custom_vjp`
function. Use in a model (the forward values are flax's own, so parameters
and checkpoints are unchanged):

  x = cpu_ops.max_pool(x, (2, 2), strides=(2, 2), padding=...)

A custom convolution gradient (the kernel gradient as one matrix product
per kernel tap) was tried here too and removed: under the XLA flag that
`ssd_jax/runtime.py` sets (YNNPACK fusion off), XLA's own convolution
gradients are 1.2-1.4x faster (SSD300, batch 8, vjp ms XLA vs custom:
conv2_1 340 vs 459, conv2_2 596 vs 835, conv3_2 536 vs 709, conv4_2 531
vs 634), while this max pool gradient stays 3-8x faster than XLA's (pool1
at batch 8: 144 ms vs XLA's 513 ms). Whole float32 training step at
batch 8: custom convolution and pool gradients 10.6 s, XLA's convolution
gradients with this pool 8.97 s, all of XLA's 9.51 s
(`experiments/bench_layers.py`).
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


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
