"""Tests for ssd_jax/data/synthetic.py."""

import numpy as np
import pytest

from ssd_jax.data import synthetic


def _check_exact_box(image, box):
  """The box is the exact pixel extent of one solid-colour object.

  The object's colour is the most common colour in the box; it must touch
  all four edges of the box and never appear in the one-pixel ring around
  it (the background is noisy, so an exact colour match there is an error).
  """
  size = image.shape[0]
  x0, y0, x1, y1 = np.round(box * size).astype(int)
  crop = image[y0:y1, x0:x1].reshape(-1, 3)
  colours, counts = np.unique(crop, axis=0, return_counts=True)
  colour = colours[counts.argmax()]
  hit = np.all(image == colour, -1)  # [S, S]
  inside = hit[y0:y1, x0:x1]
  assert inside[0].any() and inside[-1].any()
  assert inside[:, 0].any() and inside[:, -1].any()
  ring = np.zeros_like(hit)
  ring[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = True
  ring[y0:y1, x0:x1] = False
  assert not hit[ring].any()


def test_boxes_are_exact_and_labels_valid():
  for index in range(25):
    ex = synthetic.generate_example(3, index)
    assert ex["image"].shape == (128, 128, 3) and ex["image"].dtype == np.uint8
    g = len(ex["labels"])
    assert 1 <= g <= 5
    assert ex["boxes"].shape == (g, 4) and ex["boxes"].dtype == np.float32
    assert ex["labels"].dtype == np.int32
    assert set(ex["labels"]) <= set(range(1, len(synthetic.SHAPE_NAMES) + 1))
    assert not ex["difficult"].any() and ex["original_size"] == (128, 128)
    for box in ex["boxes"]:
      _check_exact_box(ex["image"], box)


def test_deterministic_and_splits_disjoint():
  a = synthetic.generate_example(0, 5)
  b = synthetic.generate_example(0, 5)
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["boxes"], b["boxes"])
  other_seed = synthetic.generate_example(1, 5)
  eval_split = synthetic.generate_example(0, 5, "eval")
  assert not np.array_equal(a["image"], other_seed["image"])
  assert not np.array_equal(a["image"], eval_split["image"])
  assert a["image_id"] != eval_split["image_id"]


def test_multi_scale_and_all_classes():
  boxes, labels = [], []
  for ex in synthetic.read_synthetic(0, 150):
    boxes.append(ex["boxes"])
    labels.append(ex["labels"])
  boxes = np.concatenate(boxes)
  side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
  assert side.min() >= 0.05 and side.max() <= 0.6
  assert (side < 0.15).sum() > 20 and (side > 0.35).sum() > 20
  assert set(np.concatenate(labels)) == set(range(1, 7))
  # Non-overlapping objects.
  for ex in synthetic.read_synthetic(0, 30):
    b = ex["boxes"]
    for i in range(len(b)):
      for j in range(i):
        w = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])
        h = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])
        assert w <= 0 or h <= 0


def test_arrays_match_examples():
  arrays = synthetic.synthetic_arrays(2, 6, "eval", image_size=32)
  assert arrays["image"].shape == (6, 32, 32, 3)
  assert not arrays["image"].flags.writeable
  for i in range(6):
    ex = synthetic.generate_example(2, i, "eval", image_size=32)
    g = len(ex["labels"])
    assert arrays["num_boxes"][i] == g
    np.testing.assert_array_equal(arrays["image"][i], ex["image"])
    np.testing.assert_array_equal(arrays["boxes"][i, :g], ex["boxes"])
    assert not arrays["labels"][i, g:].any()
    assert arrays["image_id"][i] == ex["image_id"]


def test_bad_arguments():
  with pytest.raises(ValueError, match="split"):
    synthetic.generate_example(0, 0, "test")
  with pytest.raises(ValueError, match="min_size"):
    synthetic.generate_example(0, 0, min_size=0.6, max_size=0.5)
  with pytest.raises(ValueError, match="max_objects"):
    synthetic.generate_example(0, 0, max_objects=0)
  with pytest.raises(ValueError, match="num_images"):
    synthetic.synthetic_arrays(0, 0)
