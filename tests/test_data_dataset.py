"""Tests for ssd_jax/data/dataset.py: sources, class names, tables, files."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssd_jax.data import dataset, synthetic

SYN = {"source": "synthetic", "num_eval": 5, "synthetic_image_size": 32}


def test_class_names():
  assert dataset.class_names(SYN) == list(synthetic.SHAPE_NAMES)
  assert len(dataset.class_names({"source": "tfds_voc"})) == 20
  assert len(dataset.class_names({"source": "tfds_coco"})) == 80
  folder = {"source": "voc_folder", "class_names": "a, b"}
  assert dataset.class_names(folder) == ["a", "b"]


def test_read_image_file_decodes_png_and_grey(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), np.uint8)
  Image.fromarray(rgb).save(tmp_path / "rgb.png")
  Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")  # Mode "L".
  got = dataset.read_image_file(tf.constant(str(tmp_path / "rgb.png")))
  np.testing.assert_array_equal(got.numpy(), rgb)  # PNG: lossless.
  grey = dataset.read_image_file(tf.constant(str(tmp_path / "grey.png")))
  np.testing.assert_array_equal(grey.numpy(), np.repeat(rgb[..., :1], 3, -1))


def test_unknown_source_and_splits():
  with pytest.raises(ValueError, match="data.source must be one of"):
    dataset.source({"source": "imagenet"})
  assert dataset.split({"source": "tfds_voc"}, train=True) == "07+12"
  assert dataset.split({"source": "tfds_voc"}, train=False) == "test07"
  assert dataset.split(
    {"source": "voc_folder", "eval_split": "val"}, False
  ) == ("val")
  assert dataset.field({"a": None}, "a", 3) == 3


def test_synthetic_table_lookup_gives_the_generated_examples():
  n, lookup = dataset.table_lookup(dataset.table(SYN, train=False))
  assert n == 5
  for k in (0, 4):
    got = lookup(tf.constant(k, tf.int64))
    want = synthetic.generate_example(0, k, "eval", image_size=32)
    np.testing.assert_array_equal(got["image"].numpy(), want["image"])
    np.testing.assert_allclose(got["boxes"].numpy(), want["boxes"], atol=1e-7)
    assert got["labels"].numpy().tolist() == want["labels"].tolist()
