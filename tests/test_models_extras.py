"""Tests for ssd_jax/models/extras.py: the release's blocks, the size rule."""

import jax
import numpy as np
import pytest
from jax import lax

from ssd_jax.models import extras


def test_release_extra_blocks_at_300():
  blocks = extras.extra_blocks(300)
  assert [tuple(b) for b in blocks] == [
    (256, 512, 3, 2, 1),
    (128, 256, 3, 2, 1),
    (128, 256, 3, 1, 0),
    (128, 256, 3, 1, 0),
  ]
  assert extras.extra_feature_sizes(19, blocks) == (10, 5, 3, 1)


def test_release_extra_blocks_at_512():
  blocks = extras.extra_blocks(512)
  assert blocks == extras.SSD512_EXTRAS
  assert blocks[-1] == (128, 256, 4, 1, 1)  # ssd_pascal_512.py's conv12_2
  assert extras.extra_feature_sizes(32, blocks) == (16, 8, 4, 2, 1)


@pytest.mark.parametrize("size", [128, 100, 64, 32, 640])
def test_rule_ends_at_one_by_one(size):
  blocks = extras.extra_blocks(size)
  sides = extras.extra_feature_sizes((size // 4 + 1) // 2 // 2, blocks)
  assert sides[-1] == 1 and all(s >= 1 for s in sides)
  assert blocks[0][:2] == (256, 512)
  assert all(b[:2] == (128, 256) for b in blocks[1:])


def test_conv_output_size():
  assert extras.conv_output_size(19, 3, 2, 1) == 10
  assert extras.conv_output_size(3, 3, 1, 0) == 1
  assert extras.conv_output_size(2, 4, 1, 1) == 1
  assert extras.conv_output_size(2, 2, 1, 0) == 1


def test_layers_compute_the_blocks_in_order():
  blocks = (extras.ExtraBlock(8, 16, 3, 2, 1), extras.ExtraBlock(4, 8, 3, 1, 0))
  layer = extras.ExtraLayers(blocks, width=0.5)
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 6))
  params = layer.init(jax.random.key(1), x)["params"]
  assert sorted(params) == ["conv8_1", "conv8_2", "conv9_1", "conv9_2"]
  assert params["conv8_1"]["kernel"].shape == (1, 1, 6, 4)
  assert params["conv8_2"]["kernel"].shape == (3, 3, 4, 8)
  assert params["conv9_2"]["kernel"].shape == (3, 3, 2, 4)
  maps = layer.apply({"params": params}, x)

  def conv(x, p, stride, padding):  # an independent NHWC convolution
    y = lax.conv_general_dilated(
      x,
      p["kernel"],
      (stride, stride),
      [(padding, padding)] * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=lax.Precision.HIGHEST,
    )
    return jax.nn.relu(y + p["bias"])

  ref = x
  for i, block in enumerate(blocks):
    ref = conv(ref, params[f"conv{8 + i}_1"], 1, 0)
    ref = conv(ref, params[f"conv{8 + i}_2"], block.stride, block.padding)
    np.testing.assert_allclose(maps[i], ref, rtol=1e-5, atol=1e-5)
  assert [m.shape[1] for m in maps] == list(
    extras.extra_feature_sizes(7, blocks)
  )
  named = extras.ExtraLayers(blocks[:1], first_index=12)
  assert list(named.init(jax.random.key(0), x)["params"]) == [
    "conv12_1",
    "conv12_2",
  ]


def test_layers_with_batch_norm_normalise_every_conv():
  blocks = (extras.ExtraBlock(8, 16, 3, 2, 1), extras.ExtraBlock(4, 8, 3, 1, 0))
  layer = extras.ExtraLayers(blocks, batch_norm=True)
  x = 5.0 + 3.0 * jax.random.normal(jax.random.key(0), (4, 7, 7, 6))
  variables = layer.init(jax.random.key(1), x)
  convs = ["conv8_1", "conv8_2", "conv9_1", "conv9_2"]
  assert list(variables["params"]) == [p for n in convs for p in (n, f"{n}_bn")]
  assert list(variables["batch_stats"]) == [f"{n}_bn" for n in convs]
  maps, updates = layer.apply(variables, x, train=True, mutable=["batch_stats"])
  assert [m.shape for m in maps] == [(4, 4, 4, 16), (4, 2, 2, 8)]
  # Training normalises conv8_1 with the batch's statistics: its running
  # mean moves by (1 - 0.9) of the batch mean of x @ kernel + bias.
  p = variables["params"]["conv8_1"]
  y = np.einsum("bhwc,co->bhwo", np.asarray(x), np.asarray(p["kernel"][0, 0]))
  np.testing.assert_allclose(
    updates["batch_stats"]["conv8_1_bn"]["mean"],
    0.1 * (y.mean((0, 1, 2)) + np.asarray(p["bias"])),
    rtol=1e-4,
    atol=1e-4,
  )
