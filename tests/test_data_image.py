"""Tests for ssd_jax/data/image.py: normalisation and pixel conversions."""

import subprocess
import sys

import numpy as np
import pytest

from ssd_jax.data import image


def test_normalize_and_denormalize():
  x = np.arange(2 * 3, dtype=np.uint8).reshape(1, 2, 3)
  y = image.normalize(x)
  assert y.dtype == np.float32
  np.testing.assert_allclose(y, x - np.asarray([123.0, 117.0, 104.0]))
  np.testing.assert_array_equal(image.denormalize(y), x)
  assert image.MEAN_RGB == (123.0, 117.0, 104.0)
  with pytest.raises(ValueError, match="3 RGB channels"):
    image.normalize(np.zeros((4, 4)))


def test_denormalize_rounds_half_to_even_and_clips():
  mean = np.asarray(image.MEAN_RGB, np.float32)
  values = np.array([-300.0, 0.5, 1.5, 2.4, 2.6, 400.0], np.float32)
  got = image.denormalize(values[:, None] - mean)  # [6, 3]
  want = [[0] * 3, [0] * 3, [2] * 3, [2] * 3, [3] * 3, [255] * 3]
  np.testing.assert_array_equal(got, want)
  assert got.dtype == np.uint8


def test_pixel_conversion_round_trip_and_devkit_width():
  rng = np.random.default_rng(0)
  size = (37, 53)
  x0 = rng.integers(1, 53, 20)
  y0 = rng.integers(1, 37, 20)
  px = np.stack(
    [x0, y0, rng.integers(x0, 54), rng.integers(y0, 38)], -1
  ).astype(np.float32)
  norm = image.voc_pixels_to_normalized(px, size)
  back = image.normalized_to_voc_pixels(norm, size)
  np.testing.assert_allclose(back, px, atol=1e-4)
  for p, n in zip(px, norm, strict=True):  # Slow reference per box.
    assert (n[2] - n[0]) * 53 == pytest.approx(p[2] - p[0] + 1, abs=1e-4)
    assert (n[3] - n[1]) * 37 == pytest.approx(p[3] - p[1] + 1, abs=1e-4)
  # Per-image sizes broadcast over a batch [N, K, 4] with sizes [N, 2].
  batch = image.normalized_to_voc_pixels(
    np.stack([norm, norm]), np.array([size, (10, 10)])
  )
  np.testing.assert_allclose(batch[0], px, atol=1e-4)
  np.testing.assert_allclose(batch[1, :, 2], norm[:, 2] * 10, atol=1e-5)
  assert image.normalized_to_voc_pixels(np.zeros((0, 4)), size).shape == (
    0,
    4,
  )


def test_normalized_to_pixels_continuous_corners():
  rng = np.random.default_rng(1)
  boxes = rng.uniform(0, 1, (7, 4)).astype(np.float32)
  size = np.array([37, 53], np.int32)  # (h, w)
  got = image.normalized_to_pixels(boxes, size)
  # Reference: float32 products, as evaluate.to_pixels(voc=False) had.
  want = boxes * np.array([53, 37, 53, 37], np.float32)
  assert got.dtype == np.float32 and got.shape == (7, 4)
  np.testing.assert_array_equal(got, want)
  for b, p in zip(boxes, got, strict=True):  # Slow reference per box.
    assert p[0] == pytest.approx(float(b[0]) * 53, rel=1e-6)
    assert p[3] == pytest.approx(float(b[3]) * 37, rel=1e-6)
  # Continuous and devkit pixels differ by the 1-based shift of the minima.
  voc = image.normalized_to_voc_pixels(boxes, size)
  np.testing.assert_allclose(voc - got, [[1, 1, 0, 0]] * 7, atol=1e-4)
  # Per-image sizes broadcast; empty lists give [0, 4].
  batch = image.normalized_to_pixels(np.stack([boxes, boxes]), [size, (2, 4)])
  np.testing.assert_array_equal(batch[0], want)
  np.testing.assert_allclose(batch[1], boxes * [4, 2, 4, 2], rtol=1e-6)
  assert image.normalized_to_pixels([], size).shape == (0, 4)


@pytest.mark.parametrize("module", ["ssd_jax.data", "ssd_jax.data.image"])
def test_import_does_not_load_tensorflow(module):
  code = (
    f"import sys, {module}; "
    "heavy = [m for m in ('tensorflow', 'tensorflow_datasets') "
    "if m in sys.modules]; "
    "assert not heavy, heavy"
  )
  subprocess.run([sys.executable, "-c", code], check=True)
