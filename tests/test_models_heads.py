"""Tests for ssd_jax/models/heads.py: head convolutions and their row order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ssd_jax.models import heads


def test_flatten_head_row_is_location_then_box():
  b, h, w, a, k = 2, 3, 4, 5, 6
  x = np.random.default_rng(0).normal(size=(b, h, w, a * k)).astype("f4")
  rows = heads.flatten_head(jnp.asarray(x), k)
  assert rows.shape == (b, h * w * a, k)
  for i in range(h):
    for j in range(w):
      for box in range(a):
        np.testing.assert_array_equal(
          rows[:, (i * w + j) * a + box], x[:, i, j, box * k : (box + 1) * k]
        )


def test_heads_equal_a_loop_over_maps_cells_and_boxes():
  num_classes, boxes = 3, (4, 6, 4)
  module = heads.MultiboxHeads(num_classes, boxes)
  rng = np.random.default_rng(1)
  sources = [
    jnp.asarray(rng.normal(size=(2, f, f, c)), jnp.float32)
    for f, c in [(5, 8), (3, 4), (1, 4)]
  ]
  params = module.init(jax.random.key(0), sources)["params"]
  assert sorted(params) == [
    f"{n}_{k}" for n in ("conf", "loc") for k in range(3)
  ]
  params = jax.tree.map(
    lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params
  )
  loc, logits = module.apply({"params": params}, sources)
  p = sum(
    s.shape[1] * s.shape[2] * a for s, a in zip(sources, boxes, strict=True)
  )
  assert loc.shape == (2, p, 4) and logits.shape == (2, p, num_classes)
  ref_loc, ref_logits = [], []
  for k, (source, a) in enumerate(zip(sources, boxes, strict=True)):
    outs = []
    for name in ("loc", "conf"):
      w = params[f"{name}_{k}"]
      outs.append(
        lax.conv_general_dilated(
          source,
          w["kernel"],
          (1, 1),
          [(1, 1), (1, 1)],
          dimension_numbers=("NHWC", "HWIO", "NHWC"),
          precision=lax.Precision.HIGHEST,
        )
        + w["bias"]
      )
    out_loc, out_conf = map(np.asarray, outs)
    for i in range(source.shape[1]):
      for j in range(source.shape[2]):
        for box in range(a):
          ref_loc.append(out_loc[:, i, j, 4 * box : 4 * box + 4])
          c = num_classes
          ref_logits.append(out_conf[:, i, j, c * box : c * box + c])
  np.testing.assert_allclose(loc, np.stack(ref_loc, 1), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
    logits, np.stack(ref_logits, 1), rtol=1e-4, atol=1e-4
  )


def test_heads_need_one_map_per_entry():
  module = heads.MultiboxHeads(3, (4, 4))
  with pytest.raises(ValueError, match="zip"):
    module.init(jax.random.key(0), [jnp.zeros((1, 2, 2, 3))])


def test_heads_dtype():
  module = heads.MultiboxHeads(3, (4,), dtype=jnp.bfloat16)
  (loc, logits), variables = module.init_with_output(
    jax.random.key(0), [jnp.zeros((1, 2, 2, 3))]
  )
  assert loc.dtype == logits.dtype == jnp.bfloat16
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
