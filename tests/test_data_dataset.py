"""Tests for ssd_jax/data/dataset.py: sources, class names, tables, files."""

import logging
from typing import NamedTuple

import minidata
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ssd_jax.data import dataset, synthetic, voc_folder

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


def _record(path, image_id, boxes, labels, size=(10, 20), **extra):
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  return voc_folder.VocRecord(
    image_path=path,
    image_id=image_id,
    boxes=boxes,
    labels=np.asarray(labels, np.int32),
    difficult=np.arange(len(labels)) == 0,
    original_size=size,
    **extra,
  )


def test_records_table_is_flat_and_image_after_image():
  a = [[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.9, 0.9]]
  records = [
    _record("a.jpg", "a", a, [3, 1]),
    _record("b.jpg", "b", [], [], size=(7, 8)),  # No boxes.
    _record("c.jpg", "c", [[0, 0, 1, 1]], [2]),
  ]
  t = dataset.records_table(records)
  assert t["num_boxes"].tolist() == [2, 0, 1]
  assert t["box_start"].tolist() == [0, 2, 2]
  assert t["boxes"].shape == (3, 4) and t["labels"].tolist() == [3, 1, 2]
  assert t["difficult"].tolist() == [True, False, True]
  assert not t["is_crowd"].any()  # VocRecord has none: all False.
  assert t["original_size"].tolist() == [[10, 20], [7, 8], [10, 20]]
  assert list(t["image_id"]) == ["a", "b", "c"]
  n, lookup = dataset.table_lookup({**t, "image": np.zeros((3, 2, 2, 3))})
  assert n == 3
  got = [lookup(tf.constant(i, tf.int64)) for i in range(3)]
  np.testing.assert_allclose(got[0]["boxes"].numpy(), a)
  assert got[1]["boxes"].shape == (0, 4) and got[1]["labels"].shape == (0,)
  assert got[2]["labels"].numpy().tolist() == [2]
  empty = dataset.records_table([])
  assert empty["boxes"].shape == (0, 4) and empty["box_start"].shape == (0,)


def test_records_table_keeps_crowd_flags():
  class Rec(NamedTuple):
    image_path: str
    image_id: str
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    is_crowd: np.ndarray
    original_size: tuple

  rec = Rec("x", "1", np.zeros((2, 4)), np.ones(2), np.ones(2, bool),
            np.asarray([False, True]), (4, 4))  # fmt: skip
  t = dataset.records_table([rec])
  assert t["is_crowd"].tolist() == [False, True]
  assert t["boxes"].dtype == np.float32 and t["labels"].dtype == np.int32


def test_routes():
  assert dataset.route(SYN) == "synthetic"
  assert dataset.route({"source": "voc_folder", "root": "x"}) == "voc_folder"
  assert dataset.route({"source": "tfds_voc"}) == "tfds"
  assert dataset.route({"source": "tfds_voc", "root": "d"}) == "voc_devkit"
  assert dataset.route({"source": "tfds_coco", "root": "d"}) == "coco_folder"
  assert not dataset.is_table({"source": "tfds_coco", "root": ""})
  with pytest.raises(ValueError, match="tfds route has no table"):
    dataset.table({"source": "tfds_voc"}, train=True)


def test_vocdevkit_table_reads_07_12_and_logs_counts(tmp_path, caplog):
  root = str(tmp_path / "VOCdevkit")
  counts = minidata.write_vocdevkit(root, num_images=4, num_test=3)
  cfg = {"source": "tfds_voc", "root": root}
  with caplog.at_level(logging.INFO, logger="ssd_jax.data.dataset"):
    train = dataset.table(cfg, train=True)
    test = dataset.table(cfg, train=False)
  images = counts[("2007", "trainval")]["images"]
  images += counts[("2012", "trainval")]["images"]
  assert len(train["num_boxes"]) == images
  assert len(test["num_boxes"]) == counts[("2007", "test")]["images"]
  assert test["difficult"].sum() == counts[("2007", "test")]["difficult"]
  assert all("/VOC2007/" in p for p in test["image_path"])
  assert any("/VOC2012/" in p for p in train["image_path"])
  boxes = counts[("2007", "test")]["boxes"]
  line = f"voc_devkit {root} split 'test07': {len(test['num_boxes'])} images"
  assert any(line in m and f"{boxes} boxes" in m for m in caplog.messages)
  # A tfds split spec reads the same images from the folders.
  same = dataset.table({**cfg, "eval_split": "2007:test"}, train=False)
  assert list(same["image_id"]) == list(test["image_id"])


def test_max_boxes_defaults_and_eval_falls_back_to_training():
  assert dataset.max_boxes({}) == dataset.max_boxes({}, train=False) == 100
  assert dataset.max_boxes({"max_boxes": None}) == 100  # a placeholder
  cfg = {"max_boxes": 8}
  assert dataset.max_boxes(cfg) == dataset.max_boxes(cfg, train=False) == 8
  cfg = {"max_boxes": 8, "eval_max_boxes": 64}
  assert dataset.max_boxes(cfg) == 8
  assert dataset.max_boxes(cfg, train=False) == 64
