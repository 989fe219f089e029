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

from ssd_jax.data.image import (
  ImageHeader,
  decode_image_file,
  read_image_header,
  voc_pixels_to_normalized,
)

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


def _read_lines(path: str) -> list[str]:
  """The lines of a UTF-8 text file; ValueError naming it if it is not."""
  try:
    with open(path, encoding="utf-8") as f:
      return f.readlines()
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text ({e})") from e


def read_class_names(path: str) -> list[str]:
  """Reads a `classes.txt`: one class name per line, blank lines ignored.

  Raises:
    ValueError: naming the file, if it is empty or repeats a name.
  """
  names = [line.strip() for line in _read_lines(path) if line.strip()]
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


def check_image_file(path: str) -> ImageHeader:
  """Cheap validity check of an image file; returns its header.

  Reads the header (`image.read_image_header`: format, mode, stored size,
  EXIF orientation) and, for JPEG, checks that the end-of-image marker is
  present, which catches truncated files without decoding them.

  Returns:
    The `ImageHeader`: `height`, `width` of the stored pixel grid (what the
    annotations refer to) and the EXIF `orientation` tag (not applied).

  Raises:
    ValueError: naming the file (`image.ImageDecodeError`), when it is not
      a readable JPEG or PNG in a mode the one decoder converts.
  """
  header = read_image_header(path)
  fmt = header.format
  if fmt not in ("JPEG", "PNG"):
    raise ValueError(f"{path}: unsupported image format {fmt}; use JPEG/PNG")
  if fmt == "JPEG":
    with open(path, "rb") as f:
      f.seek(0, os.SEEK_END)
      f.seek(max(0, f.tell() - 1024))
      if b"\xff\xd9" not in f.read():
        raise ValueError(f"{path}: truncated JPEG (no end-of-image marker)")
  return header


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
  """Per-split tallies for `index_voc_folder`'s summary log line.

  `oriented` counts images whose EXIF orientation tag is 2..8 (flipped or
  rotated in viewers; read as stored), known only with `check_images`.
  """

  def __init__(self):
    self.images = self.boxes = self.clipped = self.dropped = self.empty = 0
    self.oriented = 0


def _record(root, image_id, names, counts, check_images) -> VocRecord:
  xml_path = os.path.join(root, "Annotations", image_id + ".xml")
  if not os.path.isfile(xml_path):
    raise FileNotFoundError(f"annotation not found: {xml_path}")
  xml_root, objects = _parse_annotation(xml_path, names)
  image_path = _find_image(root, image_id, xml_root)
  if check_images:
    header = check_image_file(image_path)
    height, width = header.height, header.width
    counts.oriented += header.orientation != 1
  else:
    try:
      height = int(xml_root.findtext("size/height"))
      width = int(xml_root.findtext("size/width"))
      if height <= 0 or width <= 0:
        raise ValueError(f"size {height}x{width} (h x w) is not positive")
    except (TypeError, ValueError) as e:
      raise ValueError(f"{xml_path}: no valid <size> element ({e})") from e
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
    check_images: read each image's header (size, format, EXIF
      orientation) and check JPEGs for truncation; False trusts the XML
      `<size>`.

  Images are read as stored: an EXIF orientation tag is not applied, as
  VOC's boxes (and those of most annotation tools) refer to the stored
  pixel grid. Tools differ, so images tagged 2..8 (shown flipped or rotated
  by viewers) are counted in the summary log line, with one warning per
  split when there are any: check such boxes against the stored pixels.

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
  ids = [line.split()[0] for line in _read_lines(split_path) if line.strip()]
  if not ids:
    raise ValueError(f"{split_path}: no image ids in it")
  counts = _Counts()
  records = [_record(root, i, names, counts, check_images) for i in ids]
  level = logging.WARNING if counts.dropped else logging.INFO
  _log.log(
    level,
    "VOC folder %s split %s: %d images, %d boxes; %d clipped, %d dropped "
    "as unusable; %d images with no boxes; %d with an EXIF orientation "
    "tag (read as stored)",
    root, split, counts.images, counts.boxes, counts.clipped,
    counts.dropped, counts.empty, counts.oriented,
  )  # fmt: skip
  if counts.oriented:
    _log.warning(
      "VOC folder %s split %s: %d image(s) carry an EXIF orientation tag "
      "(viewers show them flipped or rotated); training reads the stored "
      "pixel grid, which VOC-style boxes refer to. If your annotation tool "
      "drew boxes on the rotated view, re-save those images upright.",
      root, split, counts.oriented,
    )  # fmt: skip
  return records


def annotation_xml(
  image_id: str,
  size: tuple[int, int],
  objects: Sequence[tuple],
  *,
  depth: int = 3,
  folder: str = "VOC",
  source: Sequence[tuple[str, str]] = (),
) -> str:
  """A VOC XML annotation as the devkit writes it (tab-indented): the
  writing side of `_parse_annotation`, for tests and generated datasets.

  Args:
    image_id: the id; the file name is `<id>.jpg`.
    size: (height, width) in pixels.
    objects: [(name, (xmin, ymin, xmax, ymax) 1-based inclusive pixels,
      difficult, truncated)].
    depth: 3 for colour, 1 for greyscale.
    folder: the `<folder>` text (the devkit's `VOC2007`).
    source: (tag, text) pairs of the `<source>` element, in order.

  Returns:
    The XML text, newline-terminated.
  """
  h, w = size
  root = ET.Element("annotation")
  ET.SubElement(root, "folder").text = folder
  ET.SubElement(root, "filename").text = f"{image_id}.jpg"
  source_el = ET.SubElement(root, "source")
  for tag, text in source:
    ET.SubElement(source_el, tag).text = text
  size_el = ET.SubElement(root, "size")
  for tag, value in (("width", w), ("height", h), ("depth", depth)):
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


def load_image(path: str) -> np.ndarray:
  """Decodes a training/evaluation image file to uint8 RGB [H, W, 3].

  The one decoder (`image.decode_image_file`) without the EXIF orientation:
  the stored pixel grid, which the annotations refer to.

  Raises:
    ValueError: naming the file (`image.ImageDecodeError`), when it cannot
      be decoded completely.
  """
  return decode_image_file(path, apply_exif=False).pixels


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


# Split names of the tfds `voc` builder -> the devkit's split files, so one
# split spec (e.g. "2007:train+validation") reads the same images both ways.
_TFDS_SPLIT_FILES = {"train+validation": "trainval", "validation": "val"}
DEVKIT_ALIASES = {
  "07+12": "2007:trainval,2012:trainval",  # The paper's "07+12".
  "07": "2007:trainval",
  "12": "2012:trainval",
  "test07": "2007:test",
}


def devkit_parts(spec: str) -> list[tuple[str, str]]:
  """Parses a VOCdevkit split spec into [(year folder, split file)].

  Args:
    spec: "YEAR:SPLIT[,YEAR:SPLIT...]" (e.g. "2007:trainval,2012:trainval";
      YEAR may be written "VOC2007"), or an alias of `DEVKIT_ALIASES`
      ("07+12", "07", "12", "test07"). The tfds split names
      "train+validation" and "validation" are accepted for "trainval" and
      "val", so the configs' tfds specs read the same images from folders.

  Returns:
    [("VOC2007", "trainval"), ...], in the order given.

  Raises:
    ValueError: for an empty spec or a part without "YEAR:".
  """
  spec = DEVKIT_ALIASES.get(spec.strip(), spec)
  parts = []
  for part in filter(None, (p.strip() for p in spec.split(","))):
    year, sep, name = part.partition(":")
    if not sep or not year.strip() or not name.strip():
      raise ValueError(
        f"VOCdevkit split {part!r} must be YEAR:SPLIT (e.g. 2007:trainval) "
        f"or one of {sorted(DEVKIT_ALIASES)}"
      )
    year, name = year.strip(), name.strip()
    folder = year if year.upper().startswith("VOC") else f"VOC{year}"
    parts.append((folder, _TFDS_SPLIT_FILES.get(name, name)))
  if not parts:
    raise ValueError(f"empty VOCdevkit split spec {spec!r}")
  return parts


def index_voc_devkit(
  root: str, spec: str, class_names=None, check_images: bool = True
) -> list[VocRecord]:
  """Indexes the year folders of a `VOCdevkit/` (e.g. 07+12 trainval).

  Args:
    root: the `VOCdevkit` folder, holding `VOC2007/` and/or `VOC2012/`, each
      a VOC folder (see `index_voc_folder`).
    spec: see `devkit_parts`.
    class_names: see `folder_class_names` (default: the 20 VOC classes).
    check_images: see `index_voc_folder`.

  Returns:
    The records of every part, part after part, each in split-file order.
    Image ids stay the devkit's (2007 "000005", 2012 "2008_000002": they
    cannot collide).

  Raises:
    FileNotFoundError: naming the missing year folder (with a hint when
      `root` is itself a year folder), or what `index_voc_folder` raises.
  """
  parts, records = devkit_parts(spec), []
  for folder, split in parts:
    path = os.path.join(root, folder)
    if not os.path.isdir(path):
      hint = ""
      if os.path.isdir(os.path.join(root, "ImageSets")):
        hint = (
          f"; {root} looks like one year's folder: point data.root at the "
          "VOCdevkit folder above it"
        )
      raise FileNotFoundError(
        f"VOCdevkit year folder not found: {path} (data.root must be the "
        f"VOCdevkit folder holding VOC2007/ and VOC2012/){hint}"
      )
    records += index_voc_folder(path, split, class_names, check_images)
  if len(parts) > 1:
    _log.info(
      "VOCdevkit %s split %s: %d images, %d boxes in all",
      root, spec, len(records), sum(len(r.labels) for r in records),
    )  # fmt: skip
  return records
