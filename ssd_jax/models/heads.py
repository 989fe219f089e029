"""SSD's multibox heads: per source map, box offsets and class logits.

Each source map k has a 3x3 convolution `loc_k` for box offsets (4 per
default box) and one `conf_k` for class logits (`num_classes` per default
box). Head outputs are reshaped from `[B, H, W, A * K]` to `[B, H * W * A,
K]` (channel `a * K + k` is default box `a`, column `k`) and concatenated
map by map, which is the order of `ssd_jax.default_boxes.default_boxes`:
map, row-major location, box kind. torchvision's SSD heads view channels
the same way (anchor major), so its weights need no permutation.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssd_jax.models.layers import conv


def flatten_head(x: jax.Array, columns: int) -> jax.Array:
  """One head's output as rows of default boxes.

  Args:
    x: [B, H, W, A * columns] a head convolution's output.
    columns: values per default box (4 for offsets, C for logits).

  Returns:
    [B, H * W * A, columns]; row `(i * W + j) * A + a` is box `a` at
    location (i, j).
  """
  return x.reshape(x.shape[0], -1, columns)


class MultiboxHeads(nn.Module):
  """3x3 convolution heads on every source map (the release's SSD heads).

  Parameters: `loc_k` and `conf_k` for source map k, Xavier-uniform
  kernels and zero biases.

  Attributes:
    num_classes: classes including background.
    boxes_per_location: default boxes per location of each source map
      (`default_boxes.boxes_per_location` of its ratios).
    dtype: computation dtype; outputs come in it.
    param_dtype: parameter dtype.
  """

  num_classes: int
  boxes_per_location: tuple[int, ...]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, sources: Sequence[jax.Array]
  ) -> tuple[jax.Array, jax.Array]:
    """Predicts offsets and logits for every default box.

    Args:
      sources: one [B, H_k, W_k, C_k] map per entry of `boxes_per_location`.

    Returns:
      loc: [B, P, 4], P = sum_k H_k W_k A_k, in `dtype`.
      logits: [B, P, num_classes], in `dtype`.

    Raises:
      ValueError: if the number of maps differs from `boxes_per_location`.
    """
    locs, logits = [], []
    layer = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for k, (source, a) in enumerate(
      zip(sources, self.boxes_per_location, strict=True)
    ):
      loc = conv(a * 4, 3, f"loc_{k}", **layer)(source)  # [B, H, W, A*4]
      conf = conv(a * self.num_classes, 3, f"conf_{k}", **layer)(source)
      locs.append(flatten_head(loc, 4))  # [B, H*W*A, 4]
      logits.append(flatten_head(conf, self.num_classes))
    return jnp.concatenate(locs, 1), jnp.concatenate(logits, 1)
