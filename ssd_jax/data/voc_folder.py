"""VOC-format folders on disk (VOCdevkit/VOC2007 and custom datasets).

Layout: `root/JPEGImages/<id>.jpg`, `root/Annotations/<id>.xml`,
`root/ImageSets/Main/<split>.txt` (one id per line), and optionally
`root/classes.txt` (one class name per line) for custom datasets.

Box convention. VOC XML boxes are 1-based, inclusive pixel indices: a box
with `xmin = 1, xmax = W` covers the whole width W, and `xmin == xmax` is
one pixel wide (the devkit's `+1` in widths and areas). Pixel k (1-based)
covers the continuous interval [k - 1, k), so the box covers
[xmin - 1, xmax) and, normalised to the codebase's [0, 1] corners,

    x_min = (xmin - 1) / W,  x_max = xmax / W   (the same for y with H).

The width is then (xmax - xmin + 1) / W, exactly the devkit's width; the
conversions both ways are `ssd_jax.data.image.voc_pixels_to_normalized` and
`normalized_to_voc_pixels`. (tfds `voc` divides the raw
values by W without the -1; `sources.py` corrects that the same way.)

Bad input. Every problem names the file: a missing split file, annotation
or image, malformed XML, an unknown class name, or an image that is not a
readable JPEG/PNG (bad header, truncated data) raises. Boxes partly outside
the image are clipped to it; boxes with no area left (xmax < xmin, or wholly
outside) are dropped with a warning naming the file, and a summary count is
logged per split. An annotation with no objects (or none left) gives an
example with no boxes, which trains as all background.
"""

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

from ssd_jax.data.image import voc_pixels_to_normalized

VOC_CLASSES = (
  "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
  "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
  "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

_log = logging.getLogger(__name__)
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


class VocRecord(NamedTuple):
  """One annotated image of a VOC folder, boxes already converted.

  Attributes:
    image_path: path of the image file.
    image_id: the id from the split file.
    boxes: [G, 4] float32 corners normalised to [0, 1].
    labels: [G] int32 in 1..len(class_names).
    difficult: [G] bool.
    original_size: (height, width) in pixels.
  """

  image_path: str
  image_id: str
  boxes: np.ndarray
  labels: np.ndarray
  difficult: np.ndarray
  original_size: tuple[int, int]


def read_class_names(path: str) -> list[str]:
  """Reads a `classes.txt`: one class name per line, blank lines ignored.

  Raises:
    ValueError: naming the file, if it is empty or repeats a name.
  """
  with open(path, encoding="utf-8") as f:
    names = [line.strip() for line in f if line.strip()]
  if not names:
    raise ValueError(f"{path}: no class names in it")
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise ValueError(f"{path}: repeated class names {dupes}")
  return names


def folder_class_names(root: str, class_names=None) -> list[str]:
  """The class list of a VOC folder (without background).

  Args:
    root: the VOC folder.
    class_names: explicit names (list, or comma-separated string); wins.

  Returns:
    The names: `class_names`, else `root/classes.txt` if present, else the
    20 VOC classes.
  """
  if class_names:
    if isinstance(class_names, str):
      class_names = [c.strip() for c in class_names.split(",") if c.strip()]
    return list(class_names)
  path = os.path.join(root, "classes.txt")
  if os.path.exists(path):
    return read_class_names(path)
  return list(VOC_CLASSES)


def _find_image(root: str, image_id: str, xml_root) -> str:
  folder = os.path.join(root, "JPEGImages")
  candidates = [os.path.join(folder, image_id + e) for e in _IMAGE_EXTENSIONS]
  filename = xml_root.findtext("filename")
  if filename:
    candidates.insert(0, os.path.join(folder, filename.strip()))
  for path in candidates:
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(
    f"image for {image_id!r} not found: expected "
    f"{os.path.join(folder, image_id + '.jpg')}"
  )


def check_image_file(path: str) -> tuple[int, int]:
  """Cheap validity check of an image file; returns (height, width).

  Reads the header (PIL) and, for JPEG, checks that the end-of-image marker
  is present, which catches truncated files without decoding them.

  Raises:
    ValueError: naming the file, when it is not a readable JPEG or PNG.
  """
  try:
    with Image.open(path) as im:
      fmt, (width, height) = im.format, im.size
  except (OSError, SyntaxError) as e:
    raise ValueError(f"{path}: not a readable image ({e})") from e
  if fmt not in ("JPEG", "PNG"):
    raise ValueError(f"{path}: unsupported image format {fmt}; use JPEG/PNG")
  if fmt == "JPEG":
    with open(path, "rb") as f:
      f.seek(0, os.SEEK_END)
      f.seek(max(0, f.tell() - 1024))
      if b"\xff\xd9" not in f.read():
        raise ValueError(f"{path}: truncated JPEG (no end-of-image marker)")
  return height, width


def _parse_annotation(
  xml_path: str, names: Sequence[str]
) -> tuple[ET.Element, list[tuple]]:
  """Parses one VOC XML into its root and [(name, bbox, difficult)]."""
  try:
    root = ET.parse(xml_path).getroot()
  except ET.ParseError as e:
    raise ValueError(f"{xml_path}: malformed XML ({e})") from e
  objects = []
  for k, obj in enumerate(root.findall("object")):
    name = (obj.findtext("name") or "").strip()
    if name not in names and name.lower() in names:
      name = name.lower()
    if name not in names:
      raise ValueError(
        f"{xml_path}: object {k} has unknown class {name!r}; known classes "
        f"are {list(names)} (pass class_names or write classes.txt)"
      )
    bndbox = obj.find("bndbox")
    try:
      bbox = [
        float(bndbox.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")
      ]
    except (AttributeError, TypeError, ValueError) as e:
      raise ValueError(
        f"{xml_path}: object {k} ({name}) has a missing or non-numeric "
        "bndbox (need xmin, ymin, xmax, ymax)"
      ) from e
    difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true")
    objects.append((name, bbox, difficult))
  return root, objects


class _Counts:
  def __init__(self):
    self.images = self.boxes = self.clipped = self.dropped = self.empty = 0


def _record(root, image_id, names, counts, check_images) -> VocRecord:
  xml_path = os.path.join(root, "Annotations", image_id + ".xml")
  if not os.path.isfile(xml_path):
    raise FileNotFoundError(f"annotation not found: {xml_path}")
  xml_root, objects = _parse_annotation(xml_path, names)
  image_path = _find_image(root, image_id, xml_root)
  if check_images:
    height, width = check_image_file(image_path)
  else:
    try:
      height = int(xml_root.findtext("size/height"))
      width = int(xml_root.findtext("size/width"))
    except (TypeError, ValueError) as e:
      raise ValueError(f"{xml_path}: no valid <size> element") from e
  xml_size = (xml_root.findtext("size/height"), xml_root.findtext("size/width"))
  if check_images and all(xml_size) and xml_size != (str(height), str(width)):
    _log.warning(
      "%s: <size> says %sx%s but %s is %dx%d (h x w); using the image",
      xml_path, *xml_size, image_path, height, width,
    )  # fmt: skip
  px = np.asarray([b for _, b, _ in objects], np.float64).reshape(-1, 4)
  boxes = voc_pixels_to_normalized(px, (height, width))
  clipped = np.clip(boxes, 0.0, 1.0)
  usable = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
  changed = np.any(clipped != boxes, -1) & usable
  if changed.any():
    counts.clipped += int(changed.sum())
    _log.info("%s: clipped %d box(es) to the image", xml_path, changed.sum())
  if not usable.all():
    bad = [objects[i][1] for i in np.flatnonzero(~usable)]
    counts.dropped += len(bad)
    _log.warning(
      "%s: dropped %d box(es) with no area inside the %dx%d image: %s",
      xml_path, len(bad), width, height, bad,
    )  # fmt: skip
  labels = np.asarray(
    [names.index(n) + 1 for n, _, _ in objects], np.int32
  ).reshape(-1)
  difficult = np.asarray([d for _, _, d in objects], bool).reshape(-1)
  if not usable.any():
    counts.empty += 1
  counts.images += 1
  counts.boxes += int(usable.sum())
  return VocRecord(
    image_path=image_path,
    image_id=image_id,
    boxes=clipped[usable].astype(np.float32),
    labels=labels[usable],
    difficult=difficult[usable],
    original_size=(int(height), int(width)),
  )


def index_voc_folder(
  root: str, split: str, class_names=None, check_images: bool = True
) -> list[VocRecord]:
  """Reads and validates every annotation of a split (no pixel decoding).

  Args:
    root: the VOC folder (e.g. `VOCdevkit/VOC2007`).
    split: name of `ImageSets/Main/<split>.txt`.
    class_names: see `folder_class_names`.
    check_images: read each image's header (size, format) and check JPEGs
      for truncation; False trusts the XML `<size>`.

  Returns:
    One `VocRecord` per id, in the order of the split file.

  Raises:
    FileNotFoundError: naming a missing split file, annotation or image.
    ValueError: naming the file, for malformed XML, an unknown class, a
      bad bndbox, or an unreadable image.
  """
  names = folder_class_names(root, class_names)
  split_path = os.path.join(root, "ImageSets", "Main", split + ".txt")
  if not os.path.isfile(split_path):
    raise FileNotFoundError(f"split file not found: {split_path}")
  with open(split_path, encoding="utf-8") as f:
    ids = [line.split()[0] for line in f if line.strip()]
  if not ids:
    raise ValueError(f"{split_path}: no image ids in it")
  counts = _Counts()
  records = [_record(root, i, names, counts, check_images) for i in ids]
  level = logging.WARNING if counts.dropped else logging.INFO
  _log.log(
    level,
    "VOC folder %s split %s: %d images, %d boxes; %d clipped, %d dropped "
    "as unusable; %d images with no boxes",
    root, split, counts.images, counts.boxes, counts.clipped,
    counts.dropped, counts.empty,
  )  # fmt: skip
  return records


def load_image(path: str) -> np.ndarray:
  """Decodes an image file to uint8 RGB [H, W, 3].

  Raises:
    ValueError: naming the file, when it cannot be decoded completely.
  """
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except (OSError, SyntaxError) as e:
    raise ValueError(f"{path}: cannot decode image ({e})") from e


def read_voc_folder(root: str, split: str, class_names=None) -> Iterator[dict]:
  """Yields the example dicts of a VOC-format folder, in split-file order.

  The whole split is indexed and validated before the first example is
  yielded, so bad annotations fail fast.

  Args:
    root: folder holding JPEGImages/, Annotations/, ImageSets/Main/.
    split: the split file's name, e.g. "trainval" or "test".
    class_names: list or comma-separated string; else `root/classes.txt`;
      else the 20 VOC classes. Label i + 1 is `class_names[i]`.

  Yields:
    {"image": uint8 [H, W, 3], "boxes": float32 [G, 4] normalised corners,
     "labels": int32 [G] in 1..C-1, "difficult": bool [G], "is_crowd": bool
     [G] (all False), "image_id": str, "original_size": (H, W)}.

  Raises:
    FileNotFoundError, ValueError: see `index_voc_folder`; ValueError naming
    the file for an image that fails to decode.
  """
  for rec in index_voc_folder(root, split, class_names):
    image = load_image(rec.image_path)
    if image.shape[:2] != rec.original_size:
      raise ValueError(
        f"{rec.image_path}: decoded size {image.shape[:2]} differs from the "
        f"header's {rec.original_size}"
      )
    yield {
      "image": image,
      "boxes": rec.boxes,
      "labels": rec.labels,
      "difficult": rec.difficult,
      "is_crowd": np.zeros(len(rec.labels), bool),
      "image_id": rec.image_id,
      "original_size": rec.original_size,
    }


def records_to_arrays(records: Sequence[VocRecord]) -> dict:
  """Stacks records into padded arrays for random access in tf.data.

  Returns:
    Dict with leading dimension N: "image_path" str [N], "boxes" float32
    [N, M, 4], "labels" int32 [N, M] (0 = padding), "difficult" and
    "is_crowd" bool [N, M], "num_boxes" int32 [N], "image_id" str [N],
    "original_size" int32 [N, 2], where M = max(1, most boxes in an image).
  """
  n = len(records)
  m = max([1] + [len(r.labels) for r in records])
  out = {
    "image_path": np.asarray([r.image_path for r in records], object),
    "boxes": np.zeros((n, m, 4), np.float32),
    "labels": np.zeros((n, m), np.int32),
    "difficult": np.zeros((n, m), bool),
    "is_crowd": np.zeros((n, m), bool),
    "num_boxes": np.asarray([len(r.labels) for r in records], np.int32),
    "image_id": np.asarray([r.image_id for r in records], object),
    "original_size": np.asarray(
      [r.original_size for r in records], np.int32
    ).reshape(n, 2),
  }
  for i, r in enumerate(records):
    g = len(r.labels)
    out["boxes"][i, :g] = r.boxes
    out["labels"][i, :g] = r.labels
    out["difficult"][i, :g] = r.difficult
  return out
