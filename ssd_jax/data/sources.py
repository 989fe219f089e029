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

Preparation (`prepare_tfds`, called by `load_tfds_parts`): a dataset not yet
prepared in the data_dir is prepared by tfds' own builder from the release
archives (`TFDS_ARCHIVES`) in the manual folder, offline, else downloaded;
when neither can work, `DataNotFoundError` says at once what was looked for
and the two ways to supply the data (the archives, or `data.root`).
"""

import logging
import os
import socket
import urllib.parse
from collections.abc import Sequence

import tensorflow as tf
import tensorflow_datasets as tfds

_log = logging.getLogger(__name__)

# The release archives tfds prepares each config from (the file names of its
# builder's url_infos), and the folder route that reads them extracted.
TFDS_ARCHIVES = {
  "voc/2007": ("VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar"),
  "voc/2012": ("VOCtrainval_11-May-2012.tar", "VOC2012test.tar"),
  "coco/2017": (
    "annotations_trainval2017.zip",
    "image_info_test2017.zip",
    "train2017.zip",
    "val2017.zip",
    "test2017.zip",
  ),
}
FOLDER_ROUTES = {
  "voc": "--config.data.root=/path/to/VOCdevkit (holding VOC2007/ and "
  "VOC2012/, as the tars extract)",
  "coco": "--config.data.root=/path/to/coco (holding annotations/"
  "instances_{train,val}2017.json, train2017/ and val2017/)",
}


class DataNotFoundError(FileNotFoundError):
  """A tfds dataset is not prepared, and cannot be prepared here."""


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
  manual_dir: str | None = None,
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
    manual_dir: where `prepare_tfds` looks for the release archives (None:
      tfds' `<data_dir>/downloads/manual`).

  Returns:
    One finite tf.data.Dataset of raw tfds example dicts per part, read
    deterministically (no file shuffling: order is the pipeline's job).

  Raises:
    DataNotFoundError: naming every tfds config of the spec that cannot be
      prepared (`prepare_tfds`), all in one message.
  """
  index, count = shard
  decoders = {"image": tfds.decode.SkipDecoding()} if skip_decoding else None
  parts = []
  specs = parse_split_spec(spec, default_config)
  missing = []  # Every config that cannot be prepared, said at once.
  for cfg in dict.fromkeys(cfg for cfg, _ in specs):
    try:
      prepare_tfds(f"{name}/{cfg}", data_dir, manual_dir)
    except DataNotFoundError as e:
      missing.append(e)
  if missing:
    raise DataNotFoundError("\n\n".join(str(e) for e in missing))
  for cfg, split in specs:
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
        download=False,  # prepare_tfds did it, or said why it could not.
      )
    )
  return parts


def _reachable(url: str, timeout: float = 5.0) -> bool:
  """Whether a TCP connection to the url's host opens within `timeout`."""
  parts = urllib.parse.urlsplit(url)
  port = parts.port or (443 if parts.scheme == "https" else 80)
  try:
    socket.create_connection((parts.hostname, port), timeout).close()
  except OSError:
    return False
  return True


def prepare_tfds(
  name: str, data_dir: str | None = None, manual_dir: str | None = None
):
  """Makes sure a tfds dataset is prepared; returns its builder.

  A prepared dataset is used as it is. Otherwise tfds prepares it from the
  release archives (`TFDS_ARCHIVES`) found in `manual_dir`, with no
  network; else it downloads them. When neither can work (archives missing
  and the download host unreachable, or a failed download or preparation),
  this raises at once with what was looked for and the two ways to supply
  the data, instead of tfds' minutes of retries and a traceback.

  Args:
    name: "voc/2007", "voc/2012" or "coco/2017" (another tfds name is
      prepared as tfds does, without the archive check).
    data_dir: tfds data directory (None: tfds' default).
    manual_dir: the archives' folder (None: `<data_dir>/downloads/manual`).

  Returns:
    The prepared `tfds.core.DatasetBuilder`.

  Raises:
    DataNotFoundError: the dataset cannot be prepared here; the message
      names the archives, the folder searched and the folder route.
  """
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  root = os.fspath(builder.data_dir_root)
  manual_dir = manual_dir or os.path.join(root, "downloads", "manual")
  archives = TFDS_ARCHIVES.get(name, ())
  missing = [a for a in archives if not os.path.isfile(f"{manual_dir}/{a}")]
  urls = {i.filename: u for u, i in (builder.url_infos or {}).items()}
  family = name.split("/")[0]

  def fail(reason: str, cause: BaseException | None = None):
    folder = FOLDER_ROUTES.get(family)
    lines = [
      f"tfds dataset {name} is not prepared in {root} and cannot be "
      f"prepared here: {reason}.",
      "Supply the data in one of two ways:",
      f"  1. put the release archives {list(archives)} in {manual_dir} "
      "(or run once with network access, or set data.tfds_manual_dir); "
      "tfds then prepares the dataset from them offline;",
    ]
    if folder:
      lines.append(f"  2. read the extracted folders instead: {folder}.")
    raise DataNotFoundError("\n".join(lines)) from cause

  if archives and missing:
    url = urls.get(missing[0], "")
    if url and not _reachable(url):
      fail(f"{missing} not in {manual_dir} and {url} is unreachable")
  _log.info(
    "preparing tfds %s in %s (archives from %s%s)",
    name, root, manual_dir, ", downloading the missing" if missing else "",
  )  # fmt: skip
  try:
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False
      )
    )
  except Exception as e:  # noqa: BLE001 (network, checksum, archive errors)
    fail(f"{type(e).__name__}: {e}", e)
  return builder


def count_objects(ds: tf.data.Dataset) -> tuple[int, int, int, int, int]:
  """Counts one tfds part's images and boxes in one pass over its records.

  Args:
    ds: raw tfds `voc` or `coco` examples (images left encoded is fastest).

  Returns:
    (images, images with boxes, boxes, difficult boxes, crowd boxes), as
    `dataset.log_counts` logs them. COCO has no difficult flag and VOC no
    crowd one: those count 0.
  """

  def counts(raw):
    objects = raw["objects"]
    n = tf.shape(objects["label"], out_type=tf.int64)[0]
    flags = [
      tf.reduce_sum(tf.cast(objects[k], tf.int64)) if k in objects else 0
      for k in ("is_difficult", "is_crowd")
    ]
    return tf.stack(
      [tf.constant(1, tf.int64), tf.cast(n > 0, tf.int64), n]
      + [tf.cast(f, tf.int64) for f in flags]
    )

  total = ds.map(counts, num_parallel_calls=tf.data.AUTOTUNE).reduce(
    tf.zeros([5], tf.int64), lambda a, b: a + b
  )
  return tuple(int(v) for v in total.numpy())


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
    # JPEGs (every tfds VOC and COCO image) with libjpeg's accurate IDCT, as
    # PIL decodes them (`image.decode_image_file`, used by prediction); TF's
    # default fast IDCT differs by a few levels.
    is_jpeg = tf.strings.substr(image, 0, 3) == b"\xff\xd8\xff"
    image = tf.cond(
      is_jpeg,
      lambda: tf.io.decode_jpeg(
        image, channels=3, dct_method="INTEGER_ACCURATE"
      ),
      lambda: tf.io.decode_image(image, channels=3, expand_animations=False),
    )
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
