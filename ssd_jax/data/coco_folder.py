"""COCO-format folders on disk (the COCO 2017 release and custom datasets).

Layout (the release's, unzipped into one folder):

  root/annotations/instances_train2017.json
  root/annotations/instances_val2017.json
  root/train2017/<file_name>      (file names as the json lists them)
  root/val2017/<file_name>

A split is named by its alias in `COCO_SPLITS` ("train", "validation", as
tfds `coco/2017` calls them) or by its folder name ("train2017", or any
`<name>` with `root/annotations/instances_<name>.json` and images in
`root/<name>/`), so custom COCO-format datasets read the same way.

Box convention. COCO json boxes are continuous pixels `[x, y, w, h]` (the
top-left pixel covers [0, 1)), so, with the json's image width W and height
H, the codebase's normalised corners are

    (x / W, y / H, (x + w) / W, (y + h) / H)   (no +1, unlike VOC),

as tfds `coco` computes them (`sources.decode_coco`). Boxes partly outside
the image are clipped to [0, 1]; boxes with no area left are dropped; both
are counted in the one summary line logged per split.

Classes. The json's categories, sorted by id, are labels 1..C (COCO's 80
sparse ids 1..90 become 1..80, the order of tfds `coco/2017`). By default
their names must be `COCO_CLASSES`; for a custom dataset pass its names as
`class_names`, or read them from its json with `coco_class_names`:

    path = coco_annotation_path(root, "train")
    records = index_coco_folder(root, "train", True, coco_class_names(path))

Crowd boxes (`iscrowd` 1) are dropped for training; for evaluation they are
kept with `is_crowd` True and also `difficult` True, so that VOC-style AP
ignores detections on them, as COCO's evaluation does (the same rule as
`sources.decode_coco`). Images with no annotations are kept (they train as
all background), as tfds `coco/2017` keeps them. Records come sorted by
image id, tfds' order, with each image's boxes in annotation-id order.

Sizes come from the json (`width`, `height`): indexing does not open the
118,287 training images, it only checks that each file exists.

Bad input names the file: a missing or malformed json, a missing image
file, an id that is not an integer, an annotation that refers to an unknown
image or category, a bbox that is not four finite numbers, an `iscrowd`
other than 0/1, an image without a valid width/height or file name, or
category names that differ from the expected ones. (Huge but finite bbox
values are clipped like any other box outside the image.)
"""

import json
import logging
import math
import os
from typing import NamedTuple

import numpy as np

from ssd_jax.data import voc_folder

COCO_CLASSES = (
  "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
  "truck", "boat", "traffic light", "fire hydrant", "stop sign",
  "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
  "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
  "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
  "baseball bat", "baseball glove", "skateboard", "surfboard",
  "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
  "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
  "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
  "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
  "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
  "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
  "hair drier", "toothbrush",
)  # fmt: skip

# tfds coco/2017 split names -> the release's folder names.
COCO_SPLITS = {"train": "train2017", "validation": "val2017"}

_log = logging.getLogger(__name__)
_MAX_LOGGED_DROPS = 10  # Dropped boxes logged one by one; the rest counted.


class CocoRecord(NamedTuple):
  """One image of a COCO-format folder, boxes already converted.

  The fields of `voc_folder.VocRecord` plus `is_crowd`.

  Attributes:
    image_path: path of the image file.
    image_id: the json's image id, as a string (e.g. "139").
    boxes: [G, 4] float32 corners normalised to [0, 1].
    labels: [G] int32 in 1..C (C = 80 for COCO).
    difficult: [G] bool; True exactly for crowd boxes.
    is_crowd: [G] bool; all False for training records.
    original_size: (height, width) in pixels, from the json.
  """

  image_path: str
  image_id: str
  boxes: np.ndarray
  labels: np.ndarray
  difficult: np.ndarray
  is_crowd: np.ndarray
  original_size: tuple[int, int]


def split_folder(split: str) -> str:
  """The folder name of a split: `COCO_SPLITS[split]`, else `split` itself.

  Args:
    split: "train", "validation", "train2017", "val2017" or any `<name>`.
  """
  return COCO_SPLITS.get(split, split)


def coco_annotation_path(root: str, split: str) -> str:
  """`root/annotations/instances_<folder>.json` of a split.

  Raises:
    FileNotFoundError: naming the expected path and the expected layout, and
      listing the `instances_*.json` files that are there.
  """
  folder = split_folder(split)
  path = os.path.join(root, "annotations", f"instances_{folder}.json")
  if os.path.isfile(path):
    return path
  there = sorted(
    f
    for f in _listdir(os.path.join(root, "annotations"))
    if f.startswith("instances_") and f.endswith(".json")
  )
  raise FileNotFoundError(
    f"COCO annotations for split {split!r} not found: expected {path}. "
    "Expected layout: root/annotations/instances_<split>.json with the "
    "images in root/<split>/ (e.g. annotations/instances_val2017.json and "
    f"val2017/); instances files found: {there or 'none'}"
  )


def _listdir(path: str) -> list[str]:
  return os.listdir(path) if os.path.isdir(path) else []


def _load_json(path: str) -> dict:
  """The json's top-level dict, with the lists this module reads checked."""
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: malformed JSON ({e})") from e
  except RecursionError as e:  # json's parser recurses per nesting level.
    raise ValueError(f"{path}: malformed JSON (nested too deeply)") from e
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object at the top level")
  for key in ("images", "annotations", "categories"):
    if not isinstance(data.get(key), list):
      raise ValueError(
        f"{path}: no {key!r} list (is it a COCO instances_*.json?)"
      )
  return data


def _categories(path: str, data: dict) -> tuple[list[int], list[str]]:
  """The category ids, sorted, and their names."""
  by_id = {}
  for k, c in enumerate(data["categories"]):
    cid = c.get("id") if isinstance(c, dict) else None
    name = c.get("name") if isinstance(c, dict) else None
    if not _is_id(cid) or not name:
      raise ValueError(
        f"{path}: category {k} needs an integer 'id' and a 'name', got {c!r}"
      )
    if cid in by_id:
      raise ValueError(f"{path}: category id {cid} appears twice")
    by_id[cid] = str(name)
  ids = sorted(by_id)
  return ids, [by_id[i] for i in ids]


def coco_class_names(json_path: str) -> list[str]:
  """The class names a COCO-format json defines, in category-id order.

  Label i + 1 is name i. Use it for a custom dataset (pass the result as
  `index_coco_folder`'s `class_names`); for the COCO release it gives
  `COCO_CLASSES`.

  Args:
    json_path: an `instances_*.json` (see `coco_annotation_path`).

  Raises:
    FileNotFoundError: if the file does not exist.
    ValueError: naming the file, if it is malformed or has no categories.
  """
  names = _categories(json_path, _load_json(json_path))[1]
  if not names:
    raise ValueError(f"{json_path}: no categories in it")
  return names


def _check_names(path: str, names: list[str], expected, source: str) -> None:
  """Raises naming the json and the first difference of the name lists."""
  problems = [
    f"label {i + 1} is {got!r} in the json, {want!r} expected"
    for i, (got, want) in enumerate(zip(names, expected, strict=False))
    if got != want
  ][:1]
  if len(names) != len(expected):
    problems.append(
      f"the json has {len(names)} categories, {source} has {len(expected)}"
    )
  if problems:
    raise ValueError(
      f"{path}: category names (in id order) differ from {source}: "
      f"{'; '.join(problems)} (pass class_names=coco_class_names(json) for "
      "a custom dataset)"
    )


def _is_number(v) -> bool:
  return (
    isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
  )


def _is_integer(v) -> bool:
  return _is_number(v) and float(v).is_integer()


# Ids are stored as int64 and image sides must be sizes numpy can hold.
_MAX_ID = 2**63 - 1
_MAX_SIDE = 2**31 - 1


def _is_id(v) -> bool:
  """An integer id (not a bool, nor a float) that fits int64."""
  return isinstance(v, int) and not isinstance(v, bool) and abs(v) <= _MAX_ID


def _images(path: str, data: dict, folder: str):
  """Image ids (sorted), file paths and [N, 2] sizes (h, w) of the json."""
  seen = {}
  for k, im in enumerate(data["images"]):
    iid = im.get("id") if isinstance(im, dict) else None
    if not _is_id(iid):
      raise ValueError(f"{path}: image {k} has no integer 'id'")
    if iid in seen:
      raise ValueError(f"{path}: image id {iid} appears twice")
    w, h = im.get("width"), im.get("height")
    if not all(_is_integer(v) and 1 <= v <= _MAX_SIDE for v in (w, h)):
      raise ValueError(
        f"{path}: image {iid} ({im.get('file_name')}) has no valid "
        f"width/height (got width={w!r}, height={h!r})"
      )
    name = im.get("file_name")
    if not isinstance(name, str) or not name:
      raise ValueError(
        f"{path}: image {iid} has no 'file_name' string (got {name!r})"
      )
    seen[iid] = im
  ids = sorted(seen)
  paths = [os.path.join(folder, seen[i]["file_name"]) for i in ids]
  sizes = np.asarray(
    [(seen[i]["height"], seen[i]["width"]) for i in ids], np.int64
  ).reshape(-1, 2)
  return ids, paths, sizes


def _annotations(path: str, data: dict, image_index: dict, label_of: dict):
  """Validated annotation columns, in (image, annotation id) order.

  Returns:
    (image row int64 [A], annotation id int64 [A], label int32 [A],
     crowd bool [A], bbox float64 [A, 4] as [x, y, w, h] pixels).
  """
  rows, ann_ids, labels, crowd, bboxes = [], [], [], [], []
  for k, a in enumerate(data["annotations"]):
    if not isinstance(a, dict):
      raise ValueError(f"{path}: annotation {k} is not an object")
    aid = a.get("id", k)
    iid, cid = a.get("image_id"), a.get("category_id")
    if not _is_id(aid):
      raise ValueError(f"{path}: annotation {k} has a non-integer id {aid!r}")
    if not _is_id(iid) or iid not in image_index:
      raise ValueError(
        f"{path}: annotation {aid} refers to unknown image_id {iid!r}"
      )
    if not _is_id(cid) or cid not in label_of:
      raise ValueError(
        f"{path}: annotation {aid} (image {iid}) refers to unknown "
        f"category_id {cid!r}"
      )
    iscrowd = a.get("iscrowd", 0)
    if iscrowd not in (0, 1) or not isinstance(iscrowd, int):
      raise ValueError(
        f"{path}: annotation {aid} (image {iid}) has iscrowd {iscrowd!r}; "
        "need 0 or 1"
      )
    rows.append(image_index[iid])
    ann_ids.append(aid)
    labels.append(label_of[cid])
    crowd.append(bool(iscrowd))
    bboxes.append(a.get("bbox"))
  bbox = _bbox_array(bboxes)
  if bbox is None:  # Find the first bad one, for the message.
    for k, b in enumerate(bboxes):
      if not (
        isinstance(b, list | tuple)
        and len(b) == 4
        and all(_is_number(v) for v in b)
      ):
        raise ValueError(
          f"{path}: annotation {ann_ids[k]} (image "
          f"{data['annotations'][k]['image_id']}) has a bad bbox {b!r}; "
          "need [x, y, width, height] numbers"
        )
  rows, ann_ids = np.asarray(rows, np.int64), np.asarray(ann_ids, np.int64)
  # tfds orders an image's boxes by annotation id.
  rank = np.lexsort((ann_ids, rows))  # [A]
  return (
    rows[rank],
    ann_ids[rank],
    np.asarray(labels, np.int32)[rank],
    np.asarray(crowd, bool)[rank],
    bbox[rank],
  )


def _bbox_array(bboxes: list) -> np.ndarray | None:
  """[A, 4] float64 of the json's bboxes, None unless all are 4 numbers."""
  try:
    array = np.asarray(bboxes, np.float64).reshape(-1, 4)
    types = {type(v) for b in bboxes for v in b}
  except (TypeError, ValueError):
    return None
  if (
    array.shape[0] != len(bboxes)
    or not types <= {int, float}
    or not np.isfinite(array).all()
  ):
    return None
  return array


def _normalized_corners(bbox: np.ndarray, sizes: np.ndarray) -> np.ndarray:
  """[A, 4] `[x, y, w, h]` pixels with [A, 2] sizes (h, w) -> corners."""
  x, y, w, h = np.moveaxis(bbox, -1, 0)  # Each [A].
  height, width = sizes[:, 0], sizes[:, 1]  # [A]
  with np.errstate(over="ignore"):  # x + w may overflow to inf: clipped.
    return np.stack(
      [x / width, y / height, (x + w) / width, (y + h) / height], -1
    )  # [A, 4]


def index_coco_folder(
  root: str, split: str, training: bool, class_names=None
) -> list[CocoRecord]:
  """Reads and validates a split's json and checks its image files exist.

  Args:
    root: the COCO folder (holding `annotations/` and the image folders).
    split: "train", "validation" (`COCO_SPLITS`) or a folder name such as
      "val2017" or a custom `<name>`.
    training: drop crowd boxes (True) or keep them with `is_crowd` and
      `difficult` True (False, for evaluation).
    class_names: the expected category names in id order (list, or a
      comma-separated string); None expects `COCO_CLASSES`. For a custom
      dataset pass `coco_class_names(coco_annotation_path(root, split))`.

  Returns:
    One `CocoRecord` per image of the json, sorted by image id, including
    images with no (usable) boxes.

  Raises:
    FileNotFoundError: naming the missing json (with the expected layout)
      or the missing image files.
    ValueError: naming the json, for malformed JSON, categories that differ
      from the expected names, a non-integer id, an annotation with an
      unknown image or category, a bad bbox or iscrowd, or an image without
      a valid width/height or file name.
  """
  path = coco_annotation_path(root, split)
  data = _load_json(path)
  cat_ids, names = _categories(path, data)
  if class_names:
    expected = voc_folder.folder_class_names("", class_names)
    _check_names(path, names, expected, "class_names")
  else:
    _check_names(path, names, COCO_CLASSES, "COCO_CLASSES")
  label_of = {cid: i + 1 for i, cid in enumerate(cat_ids)}
  folder = os.path.join(root, split_folder(split))
  image_ids, image_paths, sizes = _images(path, data, folder)
  missing = [p for p in image_paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(
      f"{len(missing)} image file(s) listed in {path} not found, e.g. "
      f"{missing[:3]}"
    )
  image_index = {iid: i for i, iid in enumerate(image_ids)}
  rows, ann_ids, labels, crowd, bbox = _annotations(
    path, data, image_index, label_of
  )
  annotated = np.zeros(len(image_ids), bool)
  annotated[rows] = True
  num_crowd = int(crowd.sum())
  if training:
    keep = ~crowd
    rows, ann_ids, labels, crowd, bbox = (
      t[keep] for t in (rows, ann_ids, labels, crowd, bbox)
    )
  raw = _normalized_corners(bbox, sizes[rows])  # [A, 4] float64
  # Clipped before the cast: a huge finite bbox would overflow float32.
  boxes = np.clip(raw, 0.0, 1.0).astype(np.float32)  # [A, 4]
  usable = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  outside = np.any((raw < 0.0) | (raw > 1.0), -1)  # [A]
  num_clipped = int((outside & usable).sum())
  dropped = np.flatnonzero(~usable)
  for i in dropped[:_MAX_LOGGED_DROPS]:
    _log.warning(
      "%s: dropped annotation %s of image %s: bbox %s has no area inside "
      "the %dx%d image",
      path, ann_ids[i], image_ids[rows[i]], bbox[i].tolist(),
      sizes[rows[i], 1], sizes[rows[i], 0],
    )  # fmt: skip
  rows, labels, crowd, boxes = (t[usable] for t in (rows, labels, crowd, boxes))
  starts = np.searchsorted(rows, np.arange(len(image_ids) + 1))  # [N + 1]
  records = [
    CocoRecord(
      image_path=image_paths[i],
      image_id=str(image_ids[i]),
      boxes=boxes[starts[i] : starts[i + 1]],
      labels=labels[starts[i] : starts[i + 1]],
      difficult=crowd[starts[i] : starts[i + 1]].copy(),
      is_crowd=crowd[starts[i] : starts[i + 1]],
      original_size=(int(sizes[i, 0]), int(sizes[i, 1])),
    )
    for i in range(len(image_ids))
  ]
  with_boxes = np.zeros(len(image_ids), bool)
  with_boxes[rows[~crowd]] = True
  _log.log(
    logging.WARNING if len(dropped) else logging.INFO,
    "COCO folder %s split %s: %d images, %d with annotations, %d with "
    "non-crowd boxes; %d non-crowd boxes, %d crowd boxes (%s); %d clipped, "
    "%d dropped as unusable",
    root, split, len(image_ids), int(annotated.sum()), int(with_boxes.sum()),
    int((~crowd).sum()), num_crowd,
    "dropped for training" if training else "kept as difficult",
    num_clipped, len(dropped),
  )  # fmt: skip
  return records
