"""tfds sources: Pascal VOC (`voc/2007`, `voc/2012`) and COCO (`coco/2017`).

Both are read with the image left encoded (`tfds.decode.SkipDecoding`), so
shuffling and skipping (for resume) move bytes, not pixels; `decode_voc` and
`decode_coco` turn one raw tfds example into the package's example dict
inside the `tf.data` map. Conversions, done here once:

- tfds boxes are `(ymin, xmin, ymax, xmax)` normalised; ours are
  `(x_min, y_min, x_max, y_max)`.
- tfds `voc` divides the XML's 1-based inclusive pixel values by the image
  size without subtracting 1 (see `tensorflow_datasets/object_detection/
  voc.py`), so its `xmin / W` is `1 / W` too far right; `decode_voc`
  subtracts `1 / W` (and `1 / H`) from the minima, giving exactly
  `voc_folder.voc_pixels_to_normalized`'s `(xmin - 1) / W`.
- tfds labels are 0-based; ours are 1..C-1 (0 = background).
- COCO boxes are continuous `[x, y, w, h]` pixels in the json, which tfds
  normalises with no offset, so only the axis order changes. Crowd boxes
  (`is_crowd`) are dropped for training; for evaluation they are kept with
  `is_crowd` True and also marked `difficult`, so that `evaluate_voc`
  ignores detections on them, as COCO's evaluation does.

Boxes are clipped to [0, 1] and boxes with no area are dropped in graph (no
per-box log is possible there; tfds VOC and COCO have only a handful).
"""

from collections.abc import Sequence

import tensorflow as tf
import tensorflow_datasets as tfds

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

# The paper's "07+12": VOC2007 trainval + VOC2012 trainval.
VOC_07_12_TRAINVAL = "2007:train+validation,2012:train+validation"
VOC_07_TEST = "2007:test"
SPLIT_ALIASES = {
  "07+12": VOC_07_12_TRAINVAL,
  "07": "2007:train+validation",
  "12": "2012:train+validation",
  "test07": VOC_07_TEST,
}


def parse_split_spec(spec: str, default_config: str) -> list[tuple[str, str]]:
  """Parses "cfg:split,cfg:split" (or an alias, or a bare tfds split).

  Args:
    spec: e.g. "2007:train+validation,2012:train+validation", "07+12",
      "test07", or "train" (with `default_config`).
    default_config: the tfds config used for a part without "cfg:".

  Returns:
    [(config, tfds split string)].
  """
  spec = SPLIT_ALIASES.get(spec.strip(), spec)
  parts = []
  for part in spec.split(","):
    part = part.strip()
    if not part:
      continue
    cfg, sep, split = part.partition(":")
    if not sep or "[" in cfg:  # No config; a ":" here is a tfds slice.
      cfg, split = default_config, part
    parts.append((cfg.strip(), split.strip()))
  if not parts:
    raise ValueError(f"empty split spec {spec!r}")
  return parts


def load_tfds_parts(
  name: str,
  spec: str,
  default_config: str,
  *,
  data_dir: str | None = None,
  shard: tuple[int, int] = (0, 1),
  skip_decoding: bool = True,
) -> list[tf.data.Dataset]:
  """Raw tfds examples of each (config, split) part, each in file order.

  Args:
    name: "voc" or "coco".
    spec: see `parse_split_spec`.
    default_config: e.g. "2007" for voc, "2017" for coco.
    data_dir: tfds data directory (None = tfds default).
    shard: (index, count): this host's even share of every part (for
      multi-host training, `(jax.process_index(), jax.process_count())`).
    skip_decoding: leave "image" as encoded bytes (decoded later by
      `decode_voc` / `decode_coco`). tfds' default random mock cannot encode
      its own VOC examples, so tests with it pass False.

  Returns:
    One finite tf.data.Dataset of raw tfds example dicts per part, read
    deterministically (no file shuffling: order is the pipeline's job).
  """
  index, count = shard
  decoders = {"image": tfds.decode.SkipDecoding()} if skip_decoding else None
  parts = []
  for cfg, split in parse_split_spec(spec, default_config):
    if count > 1:
      split = tfds.even_splits(split, n=count, drop_remainder=True)[index]
    parts.append(
      tfds.load(
        f"{name}/{cfg}",
        split=split,
        data_dir=data_dir,
        shuffle_files=False,
        decoders=decoders,
        read_config=tfds.ReadConfig(try_autocache=False),
      )
    )
  return parts


def dataset_size(ds: tf.data.Dataset) -> int:
  """Number of elements of a finite dataset (counted if not known)."""
  n = int(ds.cardinality())
  if n >= 0:
    return n
  return int(ds.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1))


def decode_image(image: tf.Tensor) -> tf.Tensor:
  """The one image decoder of the package's sources.

  Args:
    image: encoded bytes (scalar tf.string: JPEG, PNG, BMP, GIF (first
      frame)) or an already decoded uint8 image [H, W, 1 or 3].

  Returns:
    uint8 [H, W, 3] RGB (grey expanded to three channels).
  """
  if image.dtype == tf.string:
    image = tf.io.decode_image(image, channels=3, expand_animations=False)
  image = tf.cast(image, tf.uint8)
  return tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image


def _objects(objects: dict, keys: Sequence[str]) -> list[tf.Tensor]:
  """The object fields cut to a common length (defensive against mocks)."""
  n = tf.reduce_min([tf.shape(objects[k])[0] for k in keys])
  return [objects[k][:n] for k in keys]


def sanitize_boxes(boxes: tf.Tensor, *fields: tf.Tensor) -> list[tf.Tensor]:
  """Clips boxes to [0, 1] and drops those with no area, in graph.

  Args:
    boxes: [G, 4] float32 corners, normalised.
    *fields: [G, ...] tensors to filter alongside.

  Returns:
    [boxes [G', 4], *fields [G', ...]].
  """
  boxes = tf.clip_by_value(tf.reshape(boxes, [-1, 4]), 0.0, 1.0)
  keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  return [tf.boolean_mask(boxes, keep)] + [
    tf.boolean_mask(f, keep) for f in fields
  ]


def decode_voc(raw: dict) -> dict:
  """One raw tfds `voc` example -> the package's example dict (tf tensors).

  Args:
    raw: tfds example ("image" encoded or decoded, "image/filename",
      "objects" with "bbox", "label", "is_difficult").

  Returns:
    {"image" uint8 [H, W, 3], "boxes" float32 [G, 4], "labels" int32 [G] in
    1..20, "difficult" bool [G], "is_crowd" bool [G] (False), "image_id"
    string (file name without extension), "original_size" int32 [2]}.
  """
  image = decode_image(raw["image"])
  size = tf.shape(image)[:2]
  h, w = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
  bbox, label, difficult = _objects(
    raw["objects"], ("bbox", "label", "is_difficult")
  )
  bbox = tf.reshape(tf.cast(bbox, tf.float32), [-1, 4])
  ymin, xmin, ymax, xmax = tf.unstack(bbox, 4, axis=-1)
  boxes = tf.stack([xmin - 1.0 / w, ymin - 1.0 / h, xmax, ymax], -1)
  boxes, labels, difficult = sanitize_boxes(
    boxes, tf.cast(label, tf.int32) + 1, tf.cast(difficult, tf.bool)
  )
  image_id = tf.strings.regex_replace(raw["image/filename"], r"\.[^.]*$", "")
  return {
    "image": image,
    "boxes": boxes,
    "labels": labels,
    "difficult": difficult,
    "is_crowd": tf.zeros_like(difficult),
    "image_id": image_id,
    "original_size": size,
  }


def decode_coco(raw: dict, *, training: bool) -> dict:
  """One raw tfds `coco` example -> the package's example dict (tf tensors).

  Args:
    raw: tfds example ("image", "image/id", "objects" with "bbox", "label",
      "is_crowd").
    training: drop crowd boxes (True) or keep them marked (False).

  Returns:
    As `decode_voc`, labels in 1..80; for evaluation `is_crowd` marks the
    crowd boxes, which are also `difficult`.
  """
  image = decode_image(raw["image"])
  bbox, label, crowd = _objects(raw["objects"], ("bbox", "label", "is_crowd"))
  bbox = tf.reshape(tf.cast(bbox, tf.float32), [-1, 4])
  boxes = tf.gather(bbox, [1, 0, 3, 2], axis=-1)
  crowd = tf.cast(crowd, tf.bool)
  labels = tf.cast(label, tf.int32) + 1
  if training:
    keep = tf.logical_not(crowd)
    boxes, labels, crowd = (
      tf.boolean_mask(t, keep) for t in (boxes, labels, crowd)
    )
  boxes, labels, crowd = sanitize_boxes(boxes, labels, crowd)
  return {
    "image": image,
    "boxes": boxes,
    "labels": labels,
    "difficult": crowd,
    "is_crowd": crowd,
    "image_id": tf.strings.as_string(raw["image/id"]),
    "original_size": tf.shape(image)[:2],
  }
