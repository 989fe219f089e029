"""Tests for ssd_jax/data/coco_folder.py on small jsons written here.

The reader never opens an image (sizes come from the json), so most tests
write empty image files; tests/test_minidata.py reads real miniature data.
"""

import json
import logging
import os
import subprocess
import sys
import warnings

import minidata
import numpy as np
import pytest

from ssd_jax.data import coco_folder

CATEGORIES = [
  {"supercategory": s, "id": i, "name": n}
  for i, n, s in minidata.COCO_CATEGORIES
]


def write_json(root, images, annotations, categories=None, split="val2017"):
  """Writes root/annotations/instances_<split>.json and empty image files.

  Args:
    root: the folder.
    images: [(id, file_name, width, height)] or dicts (written as given).
    annotations: [(id, image_id, category_id, bbox, iscrowd)] or dicts.
    categories: the json's categories (default: COCO's 80).
    split: the folder name.

  Returns:
    The json's path.
  """
  images = [
    im if isinstance(im, dict) else dict(zip(("id", "file_name", "width",
                                              "height"), im, strict=True))
    for im in images
  ]  # fmt: skip
  annotations = [
    a
    if isinstance(a, dict)
    else dict(
      zip(("id", "image_id", "category_id", "bbox", "iscrowd"), a, strict=True)
    )
    for a in annotations
  ]
  os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
  os.makedirs(os.path.join(root, split), exist_ok=True)
  for im in images:
    if isinstance(im.get("file_name"), str):
      open(os.path.join(root, split, im["file_name"]), "wb").close()
  path = os.path.join(root, "annotations", f"instances_{split}.json")
  with open(path, "w") as f:
    json.dump(
      {
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES if categories is None else categories,
      },
      f,
    )
  return path


def test_coco_classes_are_the_release_names_in_id_order():
  assert coco_folder.COCO_CLASSES == tuple(c["name"] for c in CATEGORIES)
  assert len(coco_folder.COCO_CLASSES) == 80


def test_box_conversion_hand_worked(tmp_path):
  root = str(tmp_path)
  write_json(
    root,
    [(7, "a.jpg", 640, 480), (8, "b.jpg", 100, 50)],
    [
      (1, 7, 18, [10, 20, 30, 40], 0),  # dog
      (2, 8, 1, [0, 0, 100, 50], 0),  # the whole image
      (3, 8, 1, [12.5, 2.5, 0.5, 45], 0),  # fractional pixels
    ],
  )
  a, b = coco_folder.index_coco_folder(root, "validation", training=True)
  assert a.image_id == "7" and a.original_size == (480, 640)
  assert a.image_path == os.path.join(root, "val2017", "a.jpg")
  # [x, y, w, h] = [10, 20, 30, 40] -> (10/640, 20/480, 40/640, 60/480).
  np.testing.assert_allclose(
    a.boxes, [[10 / 640, 20 / 480, 40 / 640, 60 / 480]], rtol=1e-6
  )
  assert a.labels.tolist() == [coco_folder.COCO_CLASSES.index("dog") + 1]
  np.testing.assert_allclose(
    b.boxes,
    [[0, 0, 1, 1], [12.5 / 100, 2.5 / 50, 13 / 100, 47.5 / 50]],
    rtol=1e-6,
  )
  assert b.boxes.dtype == np.float32 and b.boxes.shape == (2, 4)
  assert b.labels.dtype == np.int32 and b.labels.tolist() == [1, 1]
  assert b.difficult.dtype == bool and b.is_crowd.dtype == bool
  assert not b.difficult.any() and not b.is_crowd.any()


def test_sparse_category_ids_map_to_1_to_80(tmp_path):
  root = str(tmp_path)
  shuffled = [CATEGORIES[i] for i in np.random.default_rng(0).permutation(80)]
  ids = [1, 2, 3, 5, 13, 27, 90]  # 13 is 12th (no 12); 27 is 25th; 90 last.
  write_json(
    root,
    [(1, "a.jpg", 10, 10)],
    [(k, 1, c, [1, 1, 2, 2], 0) for k, c in enumerate(ids)],
    categories=shuffled,  # The json's order does not matter, the ids do.
  )
  (rec,) = coco_folder.index_coco_folder(root, "val2017", training=True)
  assert rec.labels.tolist() == [1, 2, 3, 5, 12, 25, 80]
  names = [coco_folder.COCO_CLASSES[label - 1] for label in rec.labels]
  assert names == [
    "person", "bicycle", "car", "airplane", "stop sign", "backpack",
    "toothbrush",
  ]  # fmt: skip
  path = coco_folder.coco_annotation_path(root, "validation")
  assert coco_folder.coco_class_names(path) == list(coco_folder.COCO_CLASSES)


def test_crowd_dropped_for_training_kept_as_difficult_for_eval(tmp_path):
  root = str(tmp_path)
  write_json(
    root,
    [(3, "a.jpg", 100, 100)],
    [
      (20, 3, 1, [50, 50, 40, 40], 1),  # crowd of people
      (10, 3, 18, [0, 0, 10, 10], 0),
    ],
  )
  (train,) = coco_folder.index_coco_folder(root, "val2017", training=True)
  np.testing.assert_allclose(train.boxes, [[0, 0, 0.1, 0.1]], atol=1e-7)
  assert train.labels.tolist() == [17]  # dog: id 18 is label 17.
  assert train.is_crowd.tolist() == [False]
  assert train.difficult.tolist() == [False]
  (ev,) = coco_folder.index_coco_folder(root, "val2017", training=False)
  # Annotation-id order (10 before 20), as tfds coco orders them.
  np.testing.assert_allclose(
    ev.boxes, [[0, 0, 0.1, 0.1], [0.5, 0.5, 0.9, 0.9]], atol=1e-7
  )
  assert ev.labels.tolist() == [17, 1]
  assert ev.is_crowd.tolist() == [False, True]
  assert ev.difficult.tolist() == [False, True]


def test_images_without_annotations_kept_sorted_by_id(tmp_path):
  root = str(tmp_path)
  write_json(
    root,
    [(30, "c.jpg", 8, 8), (4, "a.jpg", 8, 8), (17, "b.jpg", 8, 8)],
    [(1, 17, 1, [0, 0, 4, 4], 0)],
  )
  records = coco_folder.index_coco_folder(root, "val2017", training=True)
  assert [r.image_id for r in records] == ["4", "17", "30"]
  assert [len(r.labels) for r in records] == [0, 1, 0]
  empty = records[0]
  assert empty.boxes.shape == (0, 4) and empty.boxes.dtype == np.float32
  assert empty.labels.shape == (0,) and empty.labels.dtype == np.int32
  assert empty.difficult.shape == (0,) and empty.is_crowd.shape == (0,)


def test_no_images_gives_no_records(tmp_path, caplog):
  root = str(tmp_path)
  write_json(root, [], [])
  with caplog.at_level(logging.INFO, logger=coco_folder.__name__):
    assert coco_folder.index_coco_folder(root, "val2017", True) == []
  assert "0 images, 0 with annotations" in caplog.text


def test_clipped_and_dropped_boxes_counted_in_the_log(tmp_path, caplog):
  root = str(tmp_path)
  write_json(
    root,
    [(1, "a.jpg", 100, 50)],
    [
      (1, 1, 1, [-10, 5, 30, 10], 0),  # Partly outside: clipped.
      (2, 1, 1, [90, 40, 20, 20], 0),  # Partly outside: clipped.
      (3, 1, 1, [10, 10, 0, 5], 0),  # Zero width: dropped.
      (4, 1, 1, [120, 10, 5, 5], 0),  # Wholly outside: dropped.
      (5, 1, 1, [10, 10, -5, 5], 0),  # Negative width: dropped.
      (6, 1, 1, [0, 0, 50, 25], 0),  # Inside: kept as is.
    ],
  )
  with caplog.at_level(logging.INFO, logger=coco_folder.__name__):
    (rec,) = coco_folder.index_coco_folder(root, "val2017", training=True)
  np.testing.assert_allclose(
    rec.boxes,
    [[0, 0.1, 0.2, 0.3], [0.9, 0.8, 1, 1], [0, 0, 0.5, 0.5]],
    atol=1e-7,
  )
  text = caplog.text
  assert "instances_val2017.json: dropped annotation 3 of image 1" in text
  assert "dropped annotation 4 " in text and "dropped annotation 5 " in text
  assert (
    "1 images, 1 with annotations, 1 with non-crowd boxes; 3 non-crowd "
    "boxes, 0 crowd boxes (dropped for training); 2 clipped, 3 dropped as "
    "unusable"
  ) in text
  summary = [r for r in caplog.records if "COCO folder" in r.getMessage()]
  assert summary[0].levelno == logging.WARNING


def test_summary_counts_images_with_annotations_and_crowds(tmp_path, caplog):
  root = str(tmp_path)
  write_json(
    root,
    [(1, "a.jpg", 10, 10), (2, "b.jpg", 10, 10), (3, "c.jpg", 10, 10)],
    [
      (1, 2, 1, [0, 0, 5, 5], 1),  # Image 2: a crowd only.
      (2, 3, 1, [0, 0, 5, 5], 0),
      (3, 3, 3, [5, 5, 5, 5], 0),
    ],
  )
  with caplog.at_level(logging.INFO, logger=coco_folder.__name__):
    train = coco_folder.index_coco_folder(root, "validation", training=True)
    ev = coco_folder.index_coco_folder(root, "validation", training=False)
  assert [len(r.labels) for r in train] == [0, 0, 2]
  assert [len(r.labels) for r in ev] == [0, 1, 2]
  common = "3 images, 2 with annotations, 1 with non-crowd boxes; 2 non-crowd "
  assert (
    common + "boxes, 1 crowd boxes (dropped for training); 0" in caplog.text
  )
  assert common + "boxes, 1 crowd boxes (kept as difficult); 0" in caplog.text
  levels = {r.levelno for r in caplog.records}
  assert levels == {logging.INFO}


def _loop_reference(data, training):
  """A slow, direct reading of the json: one annotation at a time."""
  cats = sorted(c["id"] for c in data["categories"])
  out = []
  for im in sorted(data["images"], key=lambda im: im["id"]):
    w, h = im["width"], im["height"]
    anns = sorted(
      (a for a in data["annotations"] if a["image_id"] == im["id"]),
      key=lambda a: a["id"],
    )
    boxes, labels, crowd = [], [], []
    for a in anns:
      if training and a["iscrowd"]:
        continue
      x, y, bw, bh = a["bbox"]
      box = [
        min(max(v, 0.0), 1.0)
        for v in (x / w, y / h, (x + bw) / w, (y + bh) / h)
      ]
      if box[2] > box[0] and box[3] > box[1]:
        boxes.append(box)
        labels.append(cats.index(a["category_id"]) + 1)
        crowd.append(bool(a["iscrowd"]))
    out.append((str(im["id"]), boxes, labels, crowd, (h, w)))
  return out


def test_matches_a_loop_reference_on_random_annotations(tmp_path):
  rng = np.random.default_rng(3)
  images = [
    (int(i), f"{i}.jpg", int(rng.integers(20, 200)), int(rng.integers(20, 200)))
    for i in rng.choice(10_000, 25, replace=False)
  ]
  annotations = []
  for k in rng.permutation(120):
    _, _, w, h = images[int(rng.integers(len(images)))]
    x, y = rng.uniform(-0.3, 1.1) * w, rng.uniform(-0.3, 1.1) * h
    bw, bh = rng.uniform(-0.05, 0.6) * w, rng.uniform(-0.05, 0.6) * h
    annotations.append(
      (
        int(k) * 7 + 1,
        images[int(rng.integers(len(images)))][0],
        int(rng.choice([c["id"] for c in CATEGORIES])),
        [round(float(v), 2) for v in (x, y, bw, bh)],
        int(rng.random() < 0.1),
      )
    )
  path = write_json(str(tmp_path), images, annotations)
  with open(path) as f:
    data = json.load(f)
  for training in (True, False):
    records = coco_folder.index_coco_folder(str(tmp_path), "val2017", training)
    reference = _loop_reference(data, training)
    assert len(records) == len(reference) == 25
    for rec, (image_id, boxes, labels, crowd, size) in zip(
      records, reference, strict=True
    ):
      assert rec.image_id == image_id and rec.original_size == size
      np.testing.assert_allclose(
        rec.boxes, np.asarray(boxes, np.float32).reshape(-1, 4), atol=1e-6
      )
      assert rec.labels.tolist() == labels
      assert rec.is_crowd.tolist() == crowd == rec.difficult.tolist()


def test_split_names_aliases_folders_and_custom(tmp_path):
  root = str(tmp_path)
  write_json(root, [(1, "a.jpg", 10, 10)], [], split="val2017")
  write_json(root, [(2, "b.jpg", 10, 10)], [], split="train2017")
  write_json(root, [(3, "c.jpg", 10, 10)], [], split="mydata")
  for split, image_id, folder in [
    ("validation", "1", "val2017"),
    ("val2017", "1", "val2017"),
    ("train", "2", "train2017"),
    ("train2017", "2", "train2017"),
    ("mydata", "3", "mydata"),
  ]:
    (rec,) = coco_folder.index_coco_folder(root, split, training=True)
    assert rec.image_id == image_id
    assert os.path.dirname(rec.image_path) == os.path.join(root, folder)
  assert coco_folder.COCO_SPLITS == {
    "train": "train2017",
    "validation": "val2017",
  }


def test_custom_class_names(tmp_path):
  root = str(tmp_path)
  categories = [{"id": 7, "name": "widget"}, {"id": 3, "name": "gadget"}]
  path = write_json(
    root,
    [(1, "a.jpg", 10, 10)],
    [(1, 1, 7, [0, 0, 5, 5], 0), (2, 1, 3, [5, 5, 5, 5], 0)],
    categories=categories,
  )
  names = coco_folder.coco_class_names(path)
  assert names == ["gadget", "widget"]
  (rec,) = coco_folder.index_coco_folder(root, "val2017", True, names)
  assert rec.labels.tolist() == [2, 1]
  (rec,) = coco_folder.index_coco_folder(root, "val2017", True, "gadget,widget")
  assert rec.labels.tolist() == [2, 1]
  with pytest.raises(
    ValueError,
    match=r"instances_val2017\.json: category names \(in id order\) differ "
    r"from COCO_CLASSES: label 1 is 'gadget' in the json, 'person' expected; "
    r"the json has 2 categories, COCO_CLASSES has 80",
  ):
    coco_folder.index_coco_folder(root, "val2017", True)
  with pytest.raises(
    ValueError,
    match=r"instances_val2017\.json: category names \(in id order\) differ "
    r"from class_names: label 2 is 'widget' in the json, 'gizmo' expected",
  ):
    coco_folder.index_coco_folder(root, "val2017", True, ["gadget", "gizmo"])


def test_renamed_coco_category_names_first_mismatch(tmp_path):
  root = str(tmp_path)
  renamed = [dict(c) for c in CATEGORIES]
  renamed[62]["name"] = "tvmonitor"  # id 72, "tv": label 63.
  write_json(root, [], [], categories=renamed)
  with pytest.raises(
    ValueError,
    match=r"instances_val2017\.json: category names \(in id order\) differ "
    r"from COCO_CLASSES: label 63 is 'tvmonitor' in the json, 'tv' expected",
  ):
    coco_folder.index_coco_folder(root, "val2017", True)


def test_missing_json_names_path_and_layout(tmp_path):
  root = str(tmp_path)
  write_json(root, [], [], split="train2017")
  expected = os.path.join(root, "annotations", "instances_val2017.json")
  with pytest.raises(FileNotFoundError) as info:
    coco_folder.index_coco_folder(root, "validation", True)
  message = str(info.value)
  assert f"expected {expected}" in message
  assert "Expected layout: root/annotations/instances_<split>.json" in message
  assert "instances files found: ['instances_train2017.json']" in message
  with pytest.raises(FileNotFoundError, match=r"files found: none"):
    coco_folder.index_coco_folder(str(tmp_path / "nothing"), "train", True)


def test_malformed_json_names_the_file(tmp_path):
  path = write_json(str(tmp_path), [], [])
  with open(path, "w") as f:
    f.write('{"images": [')
  with pytest.raises(ValueError, match=r"instances_val2017\.json: malformed"):
    coco_folder.index_coco_folder(str(tmp_path), "val2017", True)
  with open(path, "w") as f:
    json.dump({"images": [], "categories": []}, f)
  with pytest.raises(ValueError, match=r"json: no 'annotations' list"):
    coco_folder.index_coco_folder(str(tmp_path), "val2017", True)


A = (1, "a.jpg", 40, 30)


@pytest.mark.parametrize(
  "images, annotations, match",
  [
    ([A], [(5, 99, 1, [0, 0, 1, 1], 0)], r"annotation 5 refers to unknown "
     r"image_id 99"),
    ([A], [("x", 1, 1, [0, 0, 1, 1], 0)], r"annotation 0 has a non-integer "
     r"id 'x'"),
    ([A], [(5, 1, 1, [0, 0, 1, True], 0)], r"annotation 5 \(image 1\) has a "
     r"bad bbox \[0, 0, 1, True\]"),
    ([A], [(5, 1, 1, [0, 0, 1, float("nan")], 0)], r"annotation 5 "
     r"\(image 1\) has a bad bbox \[0, 0, 1, nan\]"),
    ([A], [(5, 1, 12, [0, 0, 1, 1], 0)], r"annotation 5 \(image 1\) refers "
     r"to unknown category_id 12"),
    ([A], [(5, [1], 1, [0, 0, 1, 1], 0)], r"annotation 5 refers to unknown "
     r"image_id \[1\]"),
    ([A], [(5, 1, None, [0, 0, 1, 1], 0)], r"annotation 5 \(image 1\) "
     r"refers to unknown category_id None"),
    ([A], [(5, 1, 1, ["a", 0, 1, 1], 0)], r"annotation 5 \(image 1\) has a "
     r"bad bbox \['a', 0, 1, 1\]; need \[x, y, width, height\] numbers"),
    ([A], [(5, 1, 1, [0, 0, 1], 0)], r"annotation 5 \(image 1\) has a bad "
     r"bbox \[0, 0, 1\]"),
    ([A], [(5, 1, 1, None, 0)], r"annotation 5 \(image 1\) has a bad bbox "
     r"None"),
    ([{"id": 1, "file_name": "a.jpg", "width": 40}], [],
     r"image 1 \(a\.jpg\) has no valid width/height \(got width=40, "
     r"height=None\)"),
    ([(1, "a.jpg", 40, 0)], [], r"image 1 \(a\.jpg\) has no valid"),
    ([(1, "a.jpg", "40", 30)], [], r"image 1 \(a\.jpg\) has no valid"),
    ([A, (1, "b.jpg", 4, 4)], [], r"image id 1 appears twice"),
    ([{"file_name": "a.jpg", "width": 4, "height": 4}], [],
     r"image 0 has no integer 'id'"),
  ],
)  # fmt: skip
def test_bad_json_content_names_the_file(tmp_path, images, annotations, match):
  write_json(str(tmp_path), images, annotations)
  with pytest.raises(ValueError, match=r"instances_val2017\.json: " + match):
    coco_folder.index_coco_folder(str(tmp_path), "val2017", True)


def test_duplicate_category_id_names_the_file(tmp_path):
  path = write_json(
    str(tmp_path), [], [], categories=[{"id": 1, "name": "a"}] * 2
  )
  with pytest.raises(ValueError, match=r"json: category id 1 appears twice"):
    coco_folder.coco_class_names(path)


def test_missing_image_file_names_it(tmp_path):
  root = str(tmp_path)
  write_json(root, [A, (2, "b.jpg", 4, 4)], [])
  os.remove(os.path.join(root, "val2017", "b.jpg"))
  with pytest.raises(
    FileNotFoundError,
    match=r"1 image file\(s\) listed in .*instances_val2017\.json not found, "
    r"e\.g\. \['.*val2017/b\.jpg'\]",
  ):
    coco_folder.index_coco_folder(root, "val2017", True)


def test_records_have_the_voc_record_fields_plus_is_crowd():
  from ssd_jax.data import voc_folder

  voc_fields = set(voc_folder.VocRecord._fields)
  assert set(coco_folder.CocoRecord._fields) == voc_fields | {"is_crowd"}


def test_import_does_not_load_tensorflow():
  code = (
    "import sys, ssd_jax.data.coco_folder; "
    "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
  )
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
  "images, annotations, match",
  [
    ([(1, 123, 4, 4)], [], r"image 1 has no 'file_name' string \(got 123\)"),
    ([(1, "a.jpg", 2**40, 4)], [], r"image 1 \(a\.jpg\) has no valid"),
    ([A], [(2**64, 1, 1, [0, 0, 1, 1], 0)], r"annotation 0 has a "
     r"non-integer id 18446744073709551616"),
    ([A], [(5, True, 1, [0, 0, 1, 1], 0)], r"annotation 5 refers to unknown "
     r"image_id True"),
    ([A], [(5, 1, True, [0, 0, 1, 1], 0)], r"annotation 5 \(image 1\) refers "
     r"to unknown category_id True"),
    ([A], [(5, 1, 1, [0, 0, 1, 1], "0")], r"annotation 5 \(image 1\) has "
     r"iscrowd '0'; need 0 or 1"),
    ([A], [(5, 1, 1, [0, 0, 1, 1], 2)], r"annotation 5 \(image 1\) has "
     r"iscrowd 2"),
  ],
)  # fmt: skip
def test_mistyped_fields_name_the_file(tmp_path, images, annotations, match):
  # Found by tests/test_fuzz.py: a numeric file_name gave a TypeError, an id
  # or side beyond int64 an OverflowError (or a negative size), a True
  # image_id matched image 1, and iscrowd "0" made a crowd box.
  write_json(str(tmp_path), images, annotations)
  with pytest.raises(ValueError, match=r"instances_val2017\.json: " + match):
    coco_folder.index_coco_folder(str(tmp_path), "val2017", False)


def test_deeply_nested_json_names_the_file(tmp_path):
  # Found by tests/test_fuzz.py: json's parser raised RecursionError.
  root = str(tmp_path)
  path = write_json(root, [A], [])
  with open(path, "w") as f:
    f.write("[" * 100_000 + "]" * 100_000)
  with pytest.raises(ValueError, match=r"instances_val2017\.json: malformed"):
    coco_folder.index_coco_folder(root, "val2017", True)


def test_huge_finite_bbox_is_clipped_without_overflow(tmp_path):
  root = str(tmp_path)
  write_json(root, [A], [(5, 1, 1, [-1e308, 10, 1.5e308, 1e308], 0)])
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # No overflow in a float32 cast.
    (record,) = coco_folder.index_coco_folder(root, "val2017", True)
  np.testing.assert_allclose(record.boxes, [[0, 10 / 30, 1, 1]], rtol=1e-6)
