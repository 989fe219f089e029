"""Miniature VOC and COCO datasets in the real release layouts, for tests.

Test-support module (tests import it as `import minidata`; pytest puts
tests/ on sys.path). Every writer is deterministic in its arguments and
seed, and writes small JPEGs (48-96 px a side, quality 90), each with one
to three disjoint filled rectangles, one colour per class, named with the
real VOC or COCO class names, so that a detector could in principle learn
them.

- `write_vocdevkit`: a `VOCdevkit` folder (`VOC2007/`, `VOC2012/`) with
  JPEGImages/, Annotations/ (real VOC XML) and ImageSets/Main/ split files.
- `write_coco_folder`: a COCO 2017 folder (`annotations/instances_*.json`,
  `train2017/`, `val2017/`).
- `write_voc_release_archives`, `write_coco_release_archives`: the same data
  as the release's tar and zip files, as tfds' `voc` and `coco` builders
  download them.
- `prepare_tfds_offline`: prepares `voc/2007`, `voc/2012` or `coco/2017`
  with tfds' real builder from those archives, offline.

The class lists here are written out independently of the package (the
real devkit order and COCO's real sparse category ids), so tests can check
the package's lists against them.
"""

import colorsys
import contextlib
import json
import os
import tarfile
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Mapping, Sequence
from unittest import mock

import numpy as np
from PIL import Image

VOC_NAMES = (
  "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
  "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
  "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# (id, name, supercategory) of the 80 categories of instances_*2017.json.
COCO_CATEGORIES = (
  (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
  (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"),
  (6, "bus", "vehicle"), (7, "train", "vehicle"), (8, "truck", "vehicle"),
  (9, "boat", "vehicle"), (10, "traffic light", "outdoor"),
  (11, "fire hydrant", "outdoor"), (13, "stop sign", "outdoor"),
  (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
  (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"),
  (19, "horse", "animal"), (20, "sheep", "animal"), (21, "cow", "animal"),
  (22, "elephant", "animal"), (23, "bear", "animal"), (24, "zebra", "animal"),
  (25, "giraffe", "animal"), (27, "backpack", "accessory"),
  (28, "umbrella", "accessory"), (31, "handbag", "accessory"),
  (32, "tie", "accessory"), (33, "suitcase", "accessory"),
  (34, "frisbee", "sports"), (35, "skis", "sports"),
  (36, "snowboard", "sports"), (37, "sports ball", "sports"),
  (38, "kite", "sports"), (39, "baseball bat", "sports"),
  (40, "baseball glove", "sports"), (41, "skateboard", "sports"),
  (42, "surfboard", "sports"), (43, "tennis racket", "sports"),
  (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"),
  (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"),
  (50, "spoon", "kitchen"), (51, "bowl", "kitchen"), (52, "banana", "food"),
  (53, "apple", "food"), (54, "sandwich", "food"), (55, "orange", "food"),
  (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"),
  (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"),
  (62, "chair", "furniture"), (63, "couch", "furniture"),
  (64, "potted plant", "furniture"), (65, "bed", "furniture"),
  (67, "dining table", "furniture"), (70, "toilet", "furniture"),
  (72, "tv", "electronic"), (73, "laptop", "electronic"),
  (74, "mouse", "electronic"), (75, "remote", "electronic"),
  (76, "keyboard", "electronic"), (77, "cell phone", "electronic"),
  (78, "microwave", "appliance"), (79, "oven", "appliance"),
  (80, "toaster", "appliance"), (81, "sink", "appliance"),
  (82, "refrigerator", "appliance"), (84, "book", "indoor"),
  (85, "clock", "indoor"), (86, "vase", "indoor"), (87, "scissors", "indoor"),
  (88, "teddy bear", "indoor"), (89, "hair drier", "indoor"),
  (90, "toothbrush", "indoor"),
)  # fmt: skip

# The release files tfds' `voc` builder downloads: (trainval, test).
VOC_ARCHIVES = {
  "2007": ("VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar"),
  "2012": ("VOCtrainval_11-May-2012.tar", "VOC2012test.tar"),
}
# The release files tfds' `coco/2017` builder downloads.
COCO_ARCHIVES = (
  "train2017.zip",
  "val2017.zip",
  "test2017.zip",
  "annotations_trainval2017.zip",
  "image_info_test2017.zip",
)

_JPEG_QUALITY = 90
_ARCHIVE_TIME = (2017, 9, 1, 0, 0, 0)  # Fixed archive dates: same bytes.


# --- images -----------------------------------------------------------------


def class_color(index: int) -> np.ndarray:
  """The colour objects of class `index` (0-based) are painted in.

  Returns:
    [3] float64 RGB in 0..255, saturated; hues spread by the golden ratio.
  """
  r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.9, 0.95)
  return 255.0 * np.asarray([r, g, b])


def _disjoint(a, b) -> bool:
  return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def _scene(rng: np.random.Generator, num_classes: int, num_objects: int):
  """A small image with up to `num_objects` disjoint filled rectangles.

  Args:
    rng: the generator (advanced).
    num_classes: classes are drawn from 0..num_classes-1.
    num_objects: rectangles to place (fewer if they do not fit).

  Returns:
    (uint8 [H, W, 3] with H, W in 48..96, [(class index, (x0, y0, x1, y1))])
    with integer pixel corners: the rectangle covers columns x0..x1-1 and
    rows y0..y1-1 (0-based), i.e. the continuous box [x0, x1) x [y0, y1).
  """
  h, w = (int(v) for v in rng.integers(48, 97, size=2))
  background = rng.integers(70, 186, size=3).astype(np.float64)
  image = background + rng.normal(0.0, 6.0, (h, w, 3))  # [H, W, 3]
  objects = []
  for _ in range(num_objects):
    for _ in range(30):
      bw = int(rng.integers(w // 5, int(w * 0.6) + 1))
      bh = int(rng.integers(h // 5, int(h * 0.6) + 1))
      x0, y0 = (
        int(rng.integers(0, w - bw + 1)),
        int(rng.integers(0, h - bh + 1)),
      )
      box = (x0, y0, x0 + bw, y0 + bh)
      if all(_disjoint(box, b) for _, b in objects):
        cls = int(rng.integers(num_classes))
        image[y0 : y0 + bh, x0 : x0 + bw] = class_color(cls)
        objects.append((cls, box))
        break
  return np.clip(np.round(image), 0, 255).astype(np.uint8), objects


def _save_jpeg(path: str, image: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path, format="JPEG", quality=_JPEG_QUALITY)


# --- VOC --------------------------------------------------------------------


def _voc_ids(rng, year: str, count: int) -> list[str]:
  """`count` distinct ids like the release's, in a random order."""
  numbers = rng.choice(np.arange(1, 10000), size=count, replace=False)
  if year == "2007":
    return [f"{n:06d}" for n in numbers]
  return [f"{2008 + n % 4}_{n:06d}" for n in numbers]


def _voc_xml(year: str, image_id: str, size, objects) -> str:
  """A VOC XML annotation as the devkit writes it (tab-indented).

  Written here, not with `voc_folder.annotation_xml`, so the reader's tests
  read files that the code under test did not write.

  Args:
    year: "2007" or "2012".
    image_id: the id; the file name is `<id>.jpg`.
    size: (height, width).
    objects: [(name, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult,
      truncated)].
  """
  h, w = size
  root = ET.Element("annotation")
  ET.SubElement(root, "folder").text = f"VOC{year}"
  ET.SubElement(root, "filename").text = f"{image_id}.jpg"
  source = ET.SubElement(root, "source")
  ET.SubElement(source, "database").text = f"The VOC{year} Database"
  ET.SubElement(source, "annotation").text = f"PASCAL VOC{year}"
  ET.SubElement(source, "image").text = "flickr"
  size_el = ET.SubElement(root, "size")
  for tag, value in (("width", w), ("height", h), ("depth", 3)):
    ET.SubElement(size_el, tag).text = str(value)
  ET.SubElement(root, "segmented").text = "0"
  for name, bbox, difficult, truncated in objects:
    obj = ET.SubElement(root, "object")
    ET.SubElement(obj, "name").text = name
    ET.SubElement(obj, "pose").text = "Unspecified"
    ET.SubElement(obj, "truncated").text = str(int(truncated))
    ET.SubElement(obj, "difficult").text = str(int(difficult))
    bndbox = ET.SubElement(obj, "bndbox")
    for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), bbox, strict=True):
      ET.SubElement(bndbox, tag).text = str(int(value))
  ET.indent(root, space="\t")
  return ET.tostring(root, encoding="unicode") + "\n"


def _write_lines(path: str, lines: Sequence[str]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))


def _write_voc_year(devkit: str, year: str, num_images, num_test, seed):
  """One `VOC<year>` folder; returns {split: {"images", "boxes",
  "difficult"}}."""
  rng = np.random.default_rng([seed, int(year)])
  folder = os.path.join(devkit, f"VOC{year}")
  ids = _voc_ids(rng, year, num_images + num_test)
  trainval, test = sorted(ids[:num_images]), sorted(ids[num_images:])
  in_train = np.zeros(len(trainval), bool)
  in_train[rng.permutation(len(trainval))[: (len(trainval) + 1) // 2]] = True
  splits = {
    "trainval": trainval,
    "train": [i for i, t in zip(trainval, in_train, strict=True) if t],
    "val": [i for i, t in zip(trainval, in_train, strict=True) if not t],
    "test": test,
  }
  # The VOC2012 test release has images but no annotations.
  annotated = set(trainval) | (set(test) if year == "2007" else set())
  objects_of, size_of = {}, {}
  for image_id in sorted(ids):
    image, scene = _scene(rng, len(VOC_NAMES), int(rng.integers(1, 4)))
    h, w = image.shape[:2]
    _save_jpeg(os.path.join(folder, "JPEGImages", f"{image_id}.jpg"), image)
    objects = []
    for cls, (x0, y0, x1, y1) in scene:
      # 1-based inclusive pixels: columns x0..x1-1 are xmin = x0 + 1,
      # xmax = x1.
      truncated = x0 == 0 or y0 == 0 or x1 == w or y1 == h
      difficult = bool(rng.random() < 0.15)
      objects.append(
        [VOC_NAMES[cls], (x0 + 1, y0 + 1, x1, y1), difficult, truncated]
      )
    objects_of[image_id], size_of[image_id] = objects, (h, w)
  # At least one difficult object in each annotated split (its first image).
  for split in ("trainval", "test"):
    if splits[split] and splits[split][0] in annotated:
      objects_of[splits[split][0]][0][2] = True
  for image_id in sorted(annotated):
    path = os.path.join(folder, "Annotations", f"{image_id}.xml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      f.write(_voc_xml(year, image_id, size_of[image_id], objects_of[image_id]))
  main = os.path.join(folder, "ImageSets", "Main")
  counts = {}
  for split, split_ids in splits.items():
    _write_lines(os.path.join(main, f"{split}.txt"), split_ids)
    objects = [o for i in split_ids if i in annotated for o in objects_of[i]]
    counts[split] = {
      "images": len(split_ids),
      "boxes": len(objects),
      "difficult": sum(bool(o[2]) for o in objects),
    }
    if not all(i in annotated for i in split_ids):
      continue
    for name in VOC_NAMES:  # The per-class files: 1, 0 (difficult only), -1.
      lines = []
      for i in split_ids:
        flags = [o[2] for o in objects_of[i] if o[0] == name]
        flag = -1 if not flags else (0 if all(flags) else 1)
        lines.append(f"{i} {flag:>2}")
      _write_lines(os.path.join(main, f"{name}_{split}.txt"), lines)
  return counts


def write_vocdevkit(
  root: str,
  *,
  years: Sequence[str] = ("2007", "2012"),
  num_images: int = 6,
  num_test: int = 4,
  seed: int = 0,
) -> dict:
  """Writes a miniature `VOCdevkit` folder in the release layout.

  For each year, `root/VOC<year>/` holds `JPEGImages/<id>.jpg`,
  `Annotations/<id>.xml` (the devkit's XML: filename, size, objects with
  name, pose "Unspecified", truncated, difficult and a 1-based inclusive
  bndbox) and `ImageSets/Main/{trainval,train,val,test}.txt` plus the
  per-class `<class>_<split>.txt` files. Ids look like the release's
  ("000005" for 2007, "2008_000002" for 2012). VOC2007's test images are
  annotated; VOC2012's, as in its release, are not (no Annotations/ files,
  no per-class test files). Each annotated split has at least one difficult
  object.

  Args:
    root: the VOCdevkit folder to write into.
    years: any of "2007", "2012".
    num_images: trainval images per year (split about evenly into train and
      val); at least 2.
    num_test: test images per year; at least 1.
    seed: the data's seed.

  Returns:
    {(year, split): {"images": int, "boxes": int (difficult included),
     "difficult": int}} for split in trainval, train, val, test.
  """
  if num_images < 2 or num_test < 1:
    raise ValueError("write_vocdevkit needs num_images >= 2, num_test >= 1")
  counts = {}
  for year in years:
    if year not in VOC_ARCHIVES:
      raise ValueError(f"unknown VOC year {year!r}; use {list(VOC_ARCHIVES)}")
    per_split = _write_voc_year(root, year, num_images, num_test, seed)
    counts.update({(year, s): c for s, c in per_split.items()})
  return counts


def _split_ids(folder: str, split: str) -> list[str]:
  with open(os.path.join(folder, "ImageSets", "Main", f"{split}.txt")) as f:
    return [line.split()[0] for line in f if line.strip()]


def _tar(path: str, base: str, members: Sequence[str]) -> None:
  """A tar of the files `base/<member>`, stored as `<member>`.

  The folders above each member are added before it; dates and owners are
  fixed, so that equal inputs give equal bytes.
  """
  entries = set()
  for member in members:
    parts = member.split("/")
    entries.update("/".join(parts[:k]) for k in range(1, len(parts) + 1))

  def fixed(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info

  with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
    for entry in sorted(entries):
      tar.add(os.path.join(base, entry), entry, recursive=False, filter=fixed)


def write_voc_release_archives(
  download_dir: str,
  *,
  years: Sequence[str] = ("2007", "2012"),
  num_images: int = 6,
  num_test: int = 4,
  seed: int = 0,
) -> list[str]:
  """Writes the VOC release tars, as tfds' `voc` builder expects them.

  Per year, `VOC_ARCHIVES[year]`: VOCtrainval_06-Nov-2007.tar and
  VOCtest_06-Nov-2007.tar, VOCtrainval_11-May-2012.tar and VOC2012test.tar,
  each holding `VOCdevkit/VOC<year>/...` with the images, annotations and
  split files of its part. Their content is what `write_vocdevkit` writes
  with the same arguments (so its counts describe the archives).

  Args:
    download_dir: folder to write the tars into (created if missing).
    years, num_images, num_test, seed: as `write_vocdevkit`.

  Returns:
    The paths of the tars written.
  """
  os.makedirs(download_dir, exist_ok=True)
  paths = []
  with tempfile.TemporaryDirectory() as tmp:
    devkit = os.path.join(tmp, "VOCdevkit")
    write_vocdevkit(
      devkit, years=years, num_images=num_images, num_test=num_test, seed=seed
    )
    for year in years:
      top = f"VOCdevkit/VOC{year}"
      folder = os.path.join(tmp, top)
      lists = sorted(os.listdir(os.path.join(folder, "ImageSets", "Main")))
      for part, name in zip(
        ("trainval", "test"), VOC_ARCHIVES[year], strict=True
      ):
        is_test = part == "test"
        members = [
          f"{top}/ImageSets/Main/{f}"
          for f in lists
          if (f == "test.txt" or f.endswith("_test.txt")) == is_test
        ]
        for image_id in _split_ids(folder, part):
          members.append(f"{top}/JPEGImages/{image_id}.jpg")
          xml = f"{top}/Annotations/{image_id}.xml"
          if os.path.isfile(os.path.join(tmp, xml)):
            members.append(xml)
        paths.append(os.path.join(download_dir, name))
        _tar(paths[-1], tmp, members)
  return paths


# --- COCO -------------------------------------------------------------------

_COCO_INFO = {
  "description": "COCO 2017 Dataset",
  "url": "http://cocodataset.org",
  "version": "1.0",
  "year": 2017,
  "contributor": "COCO Consortium",
  "date_created": "2017/09/01",
}
_COCO_LICENSES = [
  {
    "url": "http://creativecommons.org/licenses/by-nc-sa/2.0/",
    "id": 1,
    "name": "Attribution-NonCommercial-ShareAlike License",
  },
  {
    "url": "http://creativecommons.org/licenses/by/2.0/",
    "id": 4,
    "name": "Attribution License",
  },
]


def _crowd_rle(box, size) -> dict:
  """Uncompressed RLE (column-major runs, zeros first) of a box's mask."""
  x0, y0, x1, y1 = box
  h, w = size
  mask = np.zeros((h, w), np.uint8)
  mask[y0:y1, x0:x1] = 1
  flat = mask.flatten(order="F")
  change = np.flatnonzero(np.diff(flat)) + 1
  bounds = np.concatenate([[0], change, [flat.size]])
  runs = np.diff(bounds).tolist()
  if flat[0] == 1:
    runs = [0, *runs]
  return {"counts": runs, "size": [h, w]}


def _coco_split(root, split, image_ids, next_ann_id, rng):
  """Writes one split's images and json; returns (counts, next_ann_id)."""
  is_test = split.startswith("test")
  images, annotations = [], []
  counts = {
    "images": len(image_ids),
    "images_with_annotations": 0,
    "images_with_boxes": 0,
    "boxes": 0,
    "crowd": 0,
  }
  # In id order: the first image has no annotations, the second one crowd.
  for k, image_id in enumerate(sorted(image_ids)):
    num_objects = 0 if k == 0 else int(rng.integers(1, 4))
    image, scene = _scene(rng, len(COCO_CATEGORIES), num_objects)
    h, w = image.shape[:2]
    if k == 1:  # The crowd is a "person": repaint it in that class's colour.
      x0, y0, x1, y1 = scene[0][1]
      image[y0:y1, x0:x1] = np.round(class_color(0)).astype(np.uint8)
    file_name = f"{image_id:012d}.jpg"
    _save_jpeg(os.path.join(root, split, file_name), image)
    images.append(
      {
        "license": int(rng.choice([1, 4])),
        "file_name": file_name,
        "coco_url": f"http://images.cocodataset.org/{split}/{file_name}",
        "height": h,
        "width": w,
        "date_captured": "2013-11-14 11:18:45",
        "flickr_url": f"http://farm4.staticflickr.com/{file_name}",
        "id": image_id,
      }
    )
    for j, (cls, (x0, y0, x1, y1)) in enumerate(scene):
      crowd = k == 1 and j == 0
      cat_id = COCO_CATEGORIES[0 if crowd else cls][0]
      bw, bh = x1 - x0, y1 - y0
      polygon = [x0, y0, x1, y0, x1, y1, x0, y1]
      annotations.append(
        {
          "segmentation": _crowd_rle((x0, y0, x1, y1), (h, w))
          if crowd
          else [[float(v) for v in polygon]],
          "area": float(bw * bh),
          "iscrowd": int(crowd),
          "image_id": image_id,
          "bbox": [float(x0), float(y0), float(bw), float(bh)],
          "category_id": cat_id,
          "id": next_ann_id,
        }
      )
      next_ann_id += int(rng.integers(1, 50))
      counts["crowd" if crowd else "boxes"] += 1
    if scene:
      counts["images_with_annotations"] += 1
      counts["images_with_boxes"] += int(k != 1 or len(scene) > 1)
  categories = [
    {"supercategory": s, "id": i, "name": n} for i, n, s in COCO_CATEGORIES
  ]
  # The release's lists are not sorted by image id.
  order = rng.permutation(len(images))
  data = {
    "info": _COCO_INFO,
    "licenses": _COCO_LICENSES,
    "images": [images[i] for i in order],
  }
  if is_test:
    name = f"image_info_{split}.json"
    counts = {"images": len(images)}
  else:
    name = f"instances_{split}.json"
    data["annotations"] = [
      annotations[i] for i in rng.permutation(len(annotations))
    ]
  data["categories"] = categories
  os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
  with open(os.path.join(root, "annotations", name), "w") as f:
    json.dump(data, f)
  return counts, next_ann_id


def write_coco_folder(
  root: str,
  *,
  splits: Sequence[str] = ("train2017", "val2017"),
  num_images: int | Mapping[str, int] = 6,
  seed: int = 0,
) -> dict:
  """Writes a miniature COCO 2017 folder in the release layout.

  `root/<split>/<12-digit id>.jpg` and `root/annotations/instances_<split>
  .json` with the release's structure: info, licenses, images (id,
  file_name, width, height, ...), annotations (id, image_id, category_id,
  bbox [x, y, w, h] continuous pixels, area, iscrowd, segmentation: a
  polygon, or uncompressed RLE for crowds) and all 80 categories with their
  real sparse ids 1..90, names and supercategories. Images and annotations
  are listed in a shuffled order, as in the release. In each annotated split
  the lowest image id has no annotations and the next one has a crowd
  "person" annotation. A split named "test*" gets images and
  `annotations/image_info_<split>.json` (no annotations), as the release's
  test2017.

  Args:
    root: the folder to write into.
    splits: folder names, e.g. "train2017", "val2017", "test2017".
    num_images: images per split (int, or {split: int}); at least 2.
    seed: the data's seed.

  Returns:
    {split: {"images", "images_with_annotations", "images_with_boxes"
     (non-crowd), "boxes" (non-crowd), "crowd"}} (ints); test splits have
    "images" only.
  """
  sizes = {
    s: int(num_images[s] if isinstance(num_images, Mapping) else num_images)
    for s in splits
  }
  if min(sizes.values(), default=2) < 2:
    raise ValueError(f"write_coco_folder needs 2+ images per split: {sizes}")
  rng = np.random.default_rng(seed)
  ids = rng.choice(np.arange(1, 581930), sum(sizes.values()), replace=False)
  next_ann_id, counts, start = int(rng.integers(1000, 900000)), {}, 0
  for split in splits:
    split_ids = [int(i) for i in ids[start : start + sizes[split]]]
    start += sizes[split]
    counts[split], next_ann_id = _coco_split(
      root, split, split_ids, next_ann_id, rng
    )
  return counts


def _zip(path: str, base: str, members: Sequence[str]) -> None:
  """A zip of `base/<member>` files (and their folders), fixed dates."""
  folders = sorted(
    {"/".join(m.split("/")[:k]) + "/" for m in members
     for k in range(1, m.count("/") + 1)}
  )  # fmt: skip
  with zipfile.ZipFile(path, "w") as z:
    for folder in folders:
      z.writestr(zipfile.ZipInfo(folder, _ARCHIVE_TIME), b"")
    for member in sorted(members):
      info = zipfile.ZipInfo(member, _ARCHIVE_TIME)
      info.compress_type = (
        zipfile.ZIP_DEFLATED if member.endswith(".json") else zipfile.ZIP_STORED
      )
      with open(os.path.join(base, member), "rb") as f:
        z.writestr(info, f.read())


def write_coco_release_archives(
  download_dir: str,
  *,
  num_images: int = 6,
  num_test: int = 2,
  seed: int = 0,
) -> list[str]:
  """Writes the COCO 2017 release zips, as tfds' `coco/2017` expects them.

  `COCO_ARCHIVES`: train2017.zip, val2017.zip and test2017.zip (each holds
  `<split>/<file_name>` images), annotations_trainval2017.zip
  (`annotations/instances_{train,val}2017.json`) and
  image_info_test2017.zip (`annotations/image_info_test2017.json`). The
  content is what `write_coco_folder(root, splits=("train2017", "val2017",
  "test2017"), num_images={...: num_images, "test2017": num_test},
  seed=seed)` writes.

  Args:
    download_dir: folder to write the zips into (created if missing).
    num_images: train and val images each; at least 2.
    num_test: test images; at least 2.
    seed: the data's seed.

  Returns:
    The paths of the zips written.
  """
  os.makedirs(download_dir, exist_ok=True)
  splits = ("train2017", "val2017", "test2017")
  sizes = {"train2017": num_images, "val2017": num_images, "test2017": num_test}
  with tempfile.TemporaryDirectory() as tmp:
    write_coco_folder(tmp, splits=splits, num_images=sizes, seed=seed)
    contents = {
      f"{s}.zip": [f"{s}/{f}" for f in os.listdir(os.path.join(tmp, s))]
      for s in splits
    }
    contents["annotations_trainval2017.zip"] = [
      "annotations/instances_train2017.json",
      "annotations/instances_val2017.json",
    ]
    contents["image_info_test2017.zip"] = [
      "annotations/image_info_test2017.json"
    ]
    paths = []
    for name in COCO_ARCHIVES:
      paths.append(os.path.join(download_dir, name))
      _zip(paths[-1], tmp, contents[name])
  return paths


# --- tfds -------------------------------------------------------------------


@contextlib.contextmanager
def local_archives(builder_cls, archive_dir: str):
  """Makes a tfds builder class take its downloads from `archive_dir` only.

  tfds checks a manually downloaded file against the size and sha256 it has
  registered for the url (the builder's checksums file); this registers the
  files in `archive_dir` instead, for every registered url whose file name
  is there (`checksums.compute_url_info`), and makes any other download
  raise, so that nothing is fetched from the network.

  Args:
    builder_cls: e.g. `type(tfds.builder("voc/2007"))`.
    archive_dir: the folder holding the release files.

  Raises (inside the block):
    FileNotFoundError: naming the file tfds wanted and did not find.
  """
  from tensorflow_datasets.core.download import checksums, download_manager

  registered = dict(builder_cls.url_infos or {})
  local = {
    url: checksums.compute_url_info(os.path.join(archive_dir, info.filename))
    for url, info in registered.items()
    if info.filename
    and os.path.isfile(os.path.join(archive_dir, info.filename))
  }

  def no_download(self, resource):
    name = registered.get(resource.url)
    raise FileNotFoundError(
      f"{builder_cls.name}: {resource.url} is not in {archive_dir} (expected "
      f"{name.filename if name else 'its release file'} there)"
    )

  with (
    mock.patch.object(builder_cls, "url_infos", {**registered, **local}),
    mock.patch.object(
      download_manager.DownloadManager, "_download", no_download
    ),
  ):
    yield


def prepare_tfds_offline(name: str, data_dir: str, archive_dir: str):
  """Prepares a tfds dataset with its real builder from local archives.

  Args:
    name: "voc/2007", "voc/2012" or "coco/2017" (any builder whose release
      files are in `archive_dir`).
    data_dir: the tfds data_dir to prepare into (downloads/ and extracted/
      go under it).
    archive_dir: folder with the release files, e.g. from
      `write_voc_release_archives` or `write_coco_release_archives`.

  Returns:
    The prepared builder (`builder.as_dataset(split=...)`,
    `builder.info.splits[...].num_examples`); `tfds.load(name,
    data_dir=data_dir)` reads it too.
  """
  import tensorflow_datasets as tfds

  builder = tfds.builder(name, data_dir=data_dir)
  with local_archives(type(builder), archive_dir):
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        manual_dir=archive_dir, try_download_gcs=False
      )
    )
  return builder
