"""The dataset a data config names: its source, classes and examples.

`data_cfg.source` picks one of `SOURCES`; this module turns the config into
what the input pipelines (`pipeline.py`) read: the class names, the split,
and the examples as tf.data-ready pieces: a random-access table (synthetic
shapes, a VOC folder) with a lookup function, or the raw tfds datasets of
each split part with their decoder (`sources.py`). Every example comes out
as the package's example dict (see `ssd_jax.data`).
"""

import tensorflow as tf

from ssd_jax.data import sources, synthetic, voc_folder

SOURCES = ("synthetic", "tfds_voc", "tfds_coco", "voc_folder")
DEFAULT_SPLITS = {
  # source: (train_split, eval_split)
  "synthetic": ("train", "eval"),
  "tfds_voc": ("07+12", "test07"),
  "tfds_coco": ("train", "validation"),
  "voc_folder": ("trainval", "test"),
}


def field(cfg, key, default=None):
  """`cfg[key]` of a ConfigDict or dict; `default` when missing or None."""
  value = cfg.get(key, default) if hasattr(cfg, "get") else default
  return default if value is None else value


def source(cfg) -> str:
  """The config's `source`, checked against `SOURCES`."""
  kind = field(cfg, "source")
  if kind not in SOURCES:
    raise ValueError(f"data.source must be one of {SOURCES}, got {kind!r}")
  return kind


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
    return list(sources.COCO_CLASSES)
  return voc_folder.folder_class_names(field(data_cfg, "root", ""))


def split(cfg, train: bool) -> str:
  """The train or eval split name, or the source's default."""
  key = "train_split" if train else "eval_split"
  return field(cfg, key, DEFAULT_SPLITS[source(cfg)][0 if train else 1])


def table(cfg, train: bool) -> dict:
  """A random-access source as padded numpy arrays (see synthetic/voc)."""
  if source(cfg) == "synthetic":
    return synthetic.synthetic_arrays(
      seed=int(field(cfg, "synthetic_seed", 0)),
      num_images=int(
        field(cfg, "num_train" if train else "num_eval", 2000 if train else 200)
      ),  # fmt: skip
      split="train" if train else "eval",
      image_size=int(field(cfg, "synthetic_image_size", 128)),
      max_objects=int(field(cfg, "max_objects", 5)),
      min_size=float(field(cfg, "min_object_size", 0.1)),
      max_size=float(field(cfg, "max_object_size", 0.5)),
    )
  root = field(cfg, "root")
  if not root:
    raise ValueError("data.root must name the VOC folder for voc_folder")
  records = voc_folder.index_voc_folder(
    root, split(cfg, train), field(cfg, "class_names")
  )
  return voc_folder.records_to_arrays(records)


def read_image_file(path: tf.Tensor) -> tf.Tensor:
  """Reads and decodes an image file (`sources.decode_image`).

  Args:
    path: scalar tf.string, a JPEG/PNG/BMP/GIF file (first frame).

  Returns:
    uint8 [H, W, 3] RGB (grey images are expanded to three channels).
  """
  return sources.decode_image(tf.io.read_file(path))


def table_lookup(arrays: dict):
  """A table (`table`) as tf constants and a lookup of one example.

  Args:
    arrays: the padded numpy arrays of `table`.

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
    g = tensors["num_boxes"][i]
    if "image" in tensors:
      image = tensors["image"][i]
    else:
      image = read_image_file(tensors["image_path"][i])
    return {
      "image": image,
      "boxes": tensors["boxes"][i][:g],
      "labels": tensors["labels"][i][:g],
      "difficult": tensors["difficult"][i][:g],
      "is_crowd": tensors["is_crowd"][i][:g],
      "image_id": tensors["image_id"][i],
      "original_size": tensors["original_size"][i],
    }

  return n, lookup


def tfds_parts(cfg, train: bool, shard=(0, 1)):
  """Returns (raw tfds datasets, one per split part; decode fn)."""
  kind = source(cfg)
  name, default = ("voc", "2007") if kind == "tfds_voc" else ("coco", "2017")
  parts = sources.load_tfds_parts(
    name,
    split(cfg, train),
    default,
    data_dir=field(cfg, "data_dir") or None,  # "" = tfds default.
    shard=shard,
    skip_decoding=bool(field(cfg, "tfds_skip_decoding", True)),
  )
  if kind == "tfds_voc":
    return parts, sources.decode_voc
  return parts, lambda r: sources.decode_coco(r, training=train)
