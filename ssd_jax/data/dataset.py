"""The dataset a data config names: its source, classes and examples.

`data_cfg.source` picks one of `SOURCES`; this module turns the config into
what the input pipelines (`pipeline.py`) read: the class names, the split,
and the examples as tf.data-ready pieces: a random-access table with a
lookup function, or the raw tfds datasets of each split part with their
decoder (`sources.py`). Every example comes out as the package's example
dict (see `ssd_jax.data`).

Where the examples come from (`route`):
- "synthetic": generated shapes, a table of pixels.
- "voc_folder": one VOC-format folder (`data.root`), a table of files.
- "voc_devkit": source "tfds_voc" with `data.root` set: the year folders of
  a `VOCdevkit/` (`voc_folder.index_voc_devkit`), a table of files.
- "coco_folder": source "tfds_coco" with `data.root` set: COCO's own
  layout (`coco_folder.index_coco_folder`), a table of files.
- "tfds": source "tfds_voc" / "tfds_coco" without a root: tfds, prepared
  on first use (`sources.prepare_tfds`).

Every route logs what it read once per process, in one format, so a run
can be checked against the published counts: "<what> <split>: N images
(K with boxes), B boxes (D difficult, C crowd)".
"""

import functools
import logging

import numpy as np
import tensorflow as tf

from ssd_jax import config as config_lib
from ssd_jax.data import coco_folder, sources, synthetic, voc_folder

SOURCES = ("synthetic", "tfds_voc", "tfds_coco", "voc_folder")
ROUTES = ("synthetic", "voc_folder", "voc_devkit", "coco_folder", "tfds")
DEFAULT_SPLITS = {
  # source: (train_split, eval_split)
  "synthetic": ("train", "eval"),
  "tfds_voc": ("07+12", "test07"),
  "tfds_coco": ("train", "validation"),
  "voc_folder": ("trainval", "test"),
}
_log = logging.getLogger(__name__)


def field(cfg, key, default=None):
  """`cfg[key]` of a ConfigDict or dict; `default` when missing or None."""
  value = cfg.get(key, default) if hasattr(cfg, "get") else default
  return default if value is None else value


def max_boxes(cfg, train: bool = True) -> int:
  """Padded ground-truth boxes per image: `max_boxes` (default 100) for
  training, `eval_max_boxes` (default `max_boxes`) for evaluation."""
  padding = int(field(cfg, "max_boxes", 100))
  return padding if train else int(field(cfg, "eval_max_boxes", padding))


def source(cfg) -> str:
  """The config's `source`, checked against `SOURCES`."""
  kind = field(cfg, "source")
  config_lib.check_choice("data.source", kind, SOURCES)
  return kind


def route(cfg) -> str:
  """Where the examples of a data config come from: one of `ROUTES`.

  A tfds source with `root` set reads the dataset's own release folders
  instead of tfds ("voc_devkit", "coco_folder"); see the module docstring.
  """
  kind, root = source(cfg), field(cfg, "root", "")
  if kind in ("synthetic", "voc_folder"):
    return kind
  if root:
    return "voc_devkit" if kind == "tfds_voc" else "coco_folder"
  return "tfds"


def is_table(cfg) -> bool:
  """Whether the route is a random-access table (`table`), not tfds."""
  return route(cfg) != "tfds"


def class_names(data_cfg) -> list[str]:
  """The dataset's class names, without background (num_classes = len + 1).

  Args:
    data_cfg: the data ConfigDict (see `ssd_jax.data`).

  Returns:
    `data_cfg.class_names` (list or comma-separated string) when set, else
    the source's own names: the synthetic shapes, the 20 VOC classes, the 80
    COCO classes, or a VOC folder's `classes.txt` (else the VOC classes).
  """
  name = source(data_cfg)
  explicit = field(data_cfg, "class_names")
  if explicit:
    return voc_folder.folder_class_names("", explicit)
  if name == "synthetic":
    return list(synthetic.SHAPE_NAMES)
  if name == "tfds_voc":
    return list(voc_folder.VOC_CLASSES)
  if name == "tfds_coco":
    return list(coco_folder.COCO_CLASSES)
  return voc_folder.folder_class_names(field(data_cfg, "root", ""))


def split(cfg, train: bool) -> str:
  """The train or eval split name, or the source's default."""
  key = "train_split" if train else "eval_split"
  return field(cfg, key, DEFAULT_SPLITS[source(cfg)][0 if train else 1])


def log_counts(
  what: str,
  images: int,
  with_boxes: int,
  boxes: int,
  difficult: int,
  crowd: int,
) -> None:
  """Logs a split's counts in the one format of every route (INFO)."""
  _log.info(
    "%s: %d images (%d with boxes), %d boxes (%d difficult, %d crowd)",
    what, images, with_boxes, boxes, difficult, crowd,
  )  # fmt: skip


def records_table(records) -> dict:
  """File records (`VocRecord`, `CocoRecord`) as one flat table.

  Boxes are stored flat, not padded, so a large split (COCO: 118k images,
  up to ~90 boxes each) costs its box count, not images x most boxes.

  Args:
    records: sequence of records with image_path, image_id, boxes [G, 4],
      labels [G], difficult [G], original_size (h, w) and optionally
      is_crowd [G] (default all False).

  Returns:
    The table (see `table`), with "image_path" str [N] for the pixels.
  """
  counts = np.asarray([len(r.labels) for r in records], np.int32)
  out = {
    "image_path": np.asarray([r.image_path for r in records], object),
    "image_id": np.asarray([r.image_id for r in records], object),
    "original_size": np.asarray(
      [r.original_size for r in records], np.int32
    ).reshape(-1, 2),
    "num_boxes": counts,
    "box_start": (np.cumsum(counts, dtype=np.int64) - counts),
  }
  parts = {
    "boxes": ([r.boxes for r in records], np.float32, (0, 4)),
    "labels": ([r.labels for r in records], np.int32, (0,)),
    "difficult": ([r.difficult for r in records], bool, (0,)),
    "is_crowd": (
      [getattr(r, "is_crowd", np.zeros(len(r.labels), bool)) for r in records],
      bool,
      (0,),
    ),
  }
  for key, (arrays, dtype, empty) in parts.items():
    arrays = [np.asarray(a, dtype).reshape((-1,) + empty[1:]) for a in arrays]
    out[key] = np.concatenate(arrays) if arrays else np.zeros(empty, dtype)
  return out


def _flatten_padded(arrays: dict) -> dict:
  """A padded table (`synthetic.synthetic_arrays`) in the flat layout."""
  counts = arrays["num_boxes"]
  m = arrays["labels"].shape[1]
  mask = np.arange(m)[None, :] < counts[:, None]  # [N, M]
  out = {
    k: v
    for k, v in arrays.items()
    if k not in ("boxes", "labels", "difficult", "is_crowd")
  }
  for key in ("boxes", "labels", "difficult", "is_crowd"):
    out[key] = arrays[key][mask]  # Row-major: image after image.
  out["box_start"] = np.cumsum(counts, dtype=np.int64) - counts
  return out


def _log_table(what: str, t: dict) -> None:
  log_counts(
    what,
    len(t["num_boxes"]),
    int(np.count_nonzero(t["num_boxes"])),
    len(t["labels"]),
    int(t["difficult"].sum()),
    int(t["is_crowd"].sum()),
  )


@functools.lru_cache(maxsize=8)
def _synthetic_table(seed, num_images, split_name, size, objects, lo, hi):
  """The synthetic split as a flat table, generated once (cached)."""
  out = _flatten_padded(
    synthetic.synthetic_arrays(
      seed, num_images, split_name, size, objects, lo, hi
    )
  )
  _log_table(f"synthetic split {split_name!r} (seed {seed})", out)
  for value in out.values():
    value.flags.writeable = False
  return out


@functools.lru_cache(maxsize=8)
def _file_table(kind, root, spec, names, train) -> dict:
  """The table of a file route, indexed once per process (cached)."""
  names = list(names) if names else None
  if kind == "voc_folder":
    records = voc_folder.index_voc_folder(root, spec, names)
  elif kind == "voc_devkit":
    records = voc_folder.index_voc_devkit(root, spec, names)
  else:
    records = coco_folder.index_coco_folder(
      root, spec, training=train, class_names=names
    )
  out = records_table(records)
  _log_table(f"{kind} {root} split {spec!r}", out)
  for value in out.values():
    value.flags.writeable = False
  return out


def table(cfg, train: bool) -> dict:
  """The examples of a table route (`is_table`) as flat numpy arrays.

  Args:
    cfg: the data config.
    train: the training split (else the evaluation split). For COCO the
      training table drops crowd boxes; the evaluation table keeps them
      marked `is_crowd` and `difficult` (see `coco_folder`).

  Returns:
    Dict: "image" uint8 [N, S, S, 3] (synthetic) or "image_path" str [N]
    (files); "image_id" str [N]; "original_size" int32 [N, 2] (h, w);
    "num_boxes" int32 [N]; "box_start" int64 [N]; and the T boxes of all
    images, image after image: "boxes" float32 [T, 4] normalised corners,
    "labels" int32 [T], "difficult" and "is_crowd" bool [T]. Image i's boxes
    are rows box_start[i] : box_start[i] + num_boxes[i].

  Raises:
    ValueError: for a tfds route, or a missing `root`.
  """
  kind = route(cfg)
  if kind == "synthetic":
    return _synthetic_table(
      int(field(cfg, "synthetic_seed", 0)),
      int(
        field(cfg, "num_train" if train else "num_eval", 2000 if train else 200)
      ),  # fmt: skip
      "train" if train else "eval",
      int(field(cfg, "synthetic_image_size", 128)),
      int(field(cfg, "max_objects", 5)),
      float(field(cfg, "min_object_size", 0.1)),
      float(field(cfg, "max_object_size", 0.5)),
    )
  if kind == "tfds":
    raise ValueError("table: the tfds route has no table (use tfds_parts)")
  root = field(cfg, "root")
  if not root:
    raise ValueError(f"data.root must name the folder for {kind}")
  explicit = field(cfg, "class_names")  # None: each reader's default.
  names = tuple(voc_folder.folder_class_names("", explicit)) if explicit else ()
  return _file_table(kind, root, split(cfg, train), names, train)


def read_image_file(path: tf.Tensor) -> tf.Tensor:
  """Reads and decodes an image file as the VOC-folder reader does.

  Pixel for pixel `voc_folder.load_image`, i.e.
  `ssd_jax.data.image.decode_image_file(path, apply_exif=False)`: the
  stored pixel grid, no EXIF orientation (annotations refer to it). Plain
  files, JPEGs with 1 or 3 components and 8-bit grey or RGB PNGs (nearly
  every training image), are decoded by TensorFlow in the graph, JPEGs with
  `dct_method="INTEGER_ACCURATE"`: libjpeg's and PIL's default IDCT (TF's
  default, the fast IDCT, differs by a few levels). The rest (CMYK JPEGs,
  16-bit, palette and alpha PNGs, other formats), where TensorFlow's
  decoders differ from PIL's or fail, goes through the one decoder in a
  `tf.numpy_function`. That is slower (Python, under the GIL) but such files
  are rare; TensorFlow's decoders for the common ones keep the training
  input fast and parallel.

  Args:
    path: scalar tf.string, an image file.

  Returns:
    uint8 [H, W, 3] RGB (grey replicated to three channels).

  Raises:
    tf.errors.OpError: when run, for a file that cannot be decoded (the
      one decoder's message names the file).
  """
  contents = tf.io.read_file(path)
  # The first 26 bytes, zero-padded: signatures, PNG bit depth and colour.
  head = tf.strings.join([tf.strings.substr(contents, 0, 26), b"\0" * 26])
  is_jpeg = tf.strings.substr(head, 0, 3) == b"\xff\xd8\xff"
  png_colour = tf.strings.substr(head, 25, 1)  # 0 grey, 2 RGB.
  plain_png = (
    (tf.strings.substr(head, 0, 8) == b"\x89PNG\r\n\x1a\n")
    & (tf.strings.substr(head, 24, 1) == b"\x08")  # 8 bits per sample.
    & ((png_colour == b"\x00") | (png_colour == b"\x02"))
  )

  def plain_jpeg():  # 1 (grey) or 3 (YCbCr/RGB) components, not CMYK.
    components = tf.io.extract_jpeg_shape(contents)[2]
    return (components == 1) | (components == 3)

  def tf_decode():
    return tf.cond(
      is_jpeg,
      lambda: tf.io.decode_jpeg(
        contents, channels=3, dct_method="INTEGER_ACCURATE"
      ),
      lambda: tf.io.decode_png(contents, channels=3),
    )

  def one_decoder():
    pixels = tf.numpy_function(
      lambda p: voc_folder.load_image(p.decode()), [path], tf.uint8, False
    )
    return tf.ensure_shape(pixels, [None, None, 3])

  plain = tf.cond(is_jpeg, plain_jpeg, lambda: plain_png)
  return tf.cond(plain, tf_decode, one_decoder)


def table_lookup(arrays: dict):
  """A table (`table`) as tf constants and a lookup of one example.

  Args:
    arrays: the flat numpy arrays of `table`.

  Returns:
    (N, fn(index) -> example dict of tf tensors); images stored as paths are
    read with `read_image_file`.
  """
  tensors = {
    k: tf.constant(v.astype(bytes) if v.dtype == object else v)
    for k, v in arrays.items()
  }
  n = len(arrays["num_boxes"])

  def lookup(i):
    start = tensors["box_start"][i]
    end = start + tf.cast(tensors["num_boxes"][i], tf.int64)
    if "image" in tensors:
      image = tensors["image"][i]
    else:
      image = read_image_file(tensors["image_path"][i])
    return {
      "image": image,
      "boxes": tensors["boxes"][start:end],
      "labels": tensors["labels"][start:end],
      "difficult": tensors["difficult"][start:end],
      "is_crowd": tensors["is_crowd"][start:end],
      "image_id": tensors["image_id"][i],
      "original_size": tensors["original_size"][i],
    }

  return n, lookup


_COUNTED = set()


def tfds_parts(cfg, train: bool, shard=(0, 1)):
  """Returns (raw tfds datasets, one per split part; decode fn).

  Prepares the tfds datasets on first use (`sources.prepare_tfds`: from the
  release archives in tfds' manual folder, else by download, else a clear
  `sources.DataNotFoundError`), and logs each part's counts once per process
  (`data.count_boxes`, default True, counts the boxes in one pass over the
  part's records, images left encoded; False logs the image count only).
  """
  kind = source(cfg)
  name, default = ("voc", "2007") if kind == "tfds_voc" else ("coco", "2017")
  spec = split(cfg, train)
  data_dir = field(cfg, "data_dir") or None  # "" = tfds default.
  parts = sources.load_tfds_parts(
    name,
    spec,
    default,
    data_dir=data_dir,
    shard=shard,
    skip_decoding=bool(field(cfg, "tfds_skip_decoding", True)),
    manual_dir=field(cfg, "tfds_manual_dir") or None,
  )
  key = (name, spec, data_dir, tuple(shard))
  if key not in _COUNTED:
    _COUNTED.add(key)
    count_boxes = bool(field(cfg, "count_boxes", True))
    for (config, part_split), ds in zip(
      sources.parse_split_spec(spec, default), parts, strict=True
    ):
      what = f"tfds {name}/{config} split {part_split!r}"
      if shard[1] > 1:
        what += f" (host {shard[0]} of {shard[1]})"
      if count_boxes:
        log_counts(what, *sources.count_objects(ds))
      else:
        _log.info("%s: %d images", what, sources.dataset_size(ds))
  if kind == "tfds_voc":
    return parts, sources.decode_voc
  return parts, lambda r: sources.decode_coco(r, training=train)
