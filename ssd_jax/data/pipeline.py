"""The tf.data input pipelines: training (infinite, augmented, resumable) and
evaluation (finite, resize + normalise).

Determinism and resume. Every training example has a position `g` in the
stream, and everything random about it is a function of `(seed, g)`. For the
random-access sources g is the position in a single-host run with the global
batch (step s holds `s * global_batch ... (s + 1) * global_batch - 1`, and
host h of P takes the h-th slice of `global_batch / P`), so the hosts
together see exactly what one host would:

- random-access sources (synthetic, VOC folder): the example at position g
  is `index_shuffle(g mod N, seed=(seed, epoch))` with `epoch = g // N`,
  i.e. a fresh permutation per epoch computed without state, so
  `start_step=k` starts directly at position `k * global_batch`;
- tfds sources: each host reads its own even share of the split
  (`tfds.even_splits`). Epoch e interleaves the parts (e.g. 2007 and 2012)
  in a random order seeded by (seed, e) that uses every example once, then
  shuffles through a buffer of encoded records (`shuffle_buffer`, default
  2048) seeded by (seed, e). `start_step=k` starts at the right epoch and
  skips the rest (less than one epoch of encoded records, read but not
  decoded). Here g is the host's local count times the host count plus the
  host index;
- the augmentation seed is `fold_in((seed, 1), g)`.

So `start_step=k` yields exactly the batches an uninterrupted run yields
from step k, for any number of parallel map calls.
"""

import logging
import os
from collections.abc import Iterator

import jax
import numpy as np
import tensorflow as tf

from ssd_jax.data import augment, sources, synthetic, voc_folder

_log = logging.getLogger(__name__)

SOURCES = ("synthetic", "tfds_voc", "tfds_coco", "voc_folder")
DEFAULT_SPLITS = {
  # source: (train_split, eval_split)
  "synthetic": ("train", "eval"),
  "tfds_voc": ("07+12", "test07"),
  "tfds_coco": ("train", "validation"),
  "voc_folder": ("trainval", "test"),
}


def configure_tensorflow() -> None:
  """Keeps TensorFlow off any GPU (it is only the input pipeline here)."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # Already initialised; nothing to hide any more.
    pass


def _plain(fn):
  """Marks a tf.data map function as plain graph code (no AutoGraph): they
  use explicit `tf.cond`, and AutoGraph cannot read their closures."""
  return tf.autograph.experimental.do_not_convert(fn)


def _get(cfg, key, default=None):
  value = cfg.get(key, default) if hasattr(cfg, "get") else default
  return default if value is None else value


def _source(cfg) -> str:
  source = _get(cfg, "source")
  if source not in SOURCES:
    raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")
  return source


def class_names(data_cfg) -> list[str]:
  """The dataset's class names, without background (num_classes = len + 1).

  Args:
    data_cfg: the data ConfigDict (see `ssd_jax.data`).

  Returns:
    `data_cfg.class_names` (list or comma-separated string) when set, else
    the source's own names: the synthetic shapes, the 20 VOC classes, the 80
    COCO classes, or a VOC folder's `classes.txt` (else the VOC classes).
  """
  source = _source(data_cfg)
  explicit = _get(data_cfg, "class_names")
  if explicit:
    return voc_folder.folder_class_names("", explicit)
  if source == "synthetic":
    return list(synthetic.SHAPE_NAMES)
  if source == "tfds_voc":
    return list(voc_folder.VOC_CLASSES)
  if source == "tfds_coco":
    return list(sources.COCO_CLASSES)
  return voc_folder.folder_class_names(_get(data_cfg, "root", ""))


def _split(cfg, train: bool) -> str:
  key = "train_split" if train else "eval_split"
  return _get(cfg, key, DEFAULT_SPLITS[_source(cfg)][0 if train else 1])


def _table(cfg, train: bool) -> dict:
  """A random-access source as padded numpy arrays (see synthetic/voc)."""
  source = _source(cfg)
  if source == "synthetic":
    return synthetic.synthetic_arrays(
      seed=int(_get(cfg, "synthetic_seed", 0)),
      num_images=int(
        _get(cfg, "num_train" if train else "num_eval", 2000 if train else 200)
      ),  # fmt: skip
      split="train" if train else "eval",
      image_size=int(_get(cfg, "synthetic_image_size", 128)),
      max_objects=int(_get(cfg, "max_objects", 5)),
      min_size=float(_get(cfg, "min_object_size", 0.1)),
      max_size=float(_get(cfg, "max_object_size", 0.5)),
    )
  root = _get(cfg, "root")
  if not root:
    raise ValueError("data.root must name the VOC folder for voc_folder")
  records = voc_folder.index_voc_folder(
    root, _split(cfg, train), _get(cfg, "class_names")
  )
  return voc_folder.records_to_arrays(records)


def _table_lookup(table: dict):
  """Returns (N, fn(index) -> example dict of tf tensors)."""
  tensors = {
    k: tf.constant(v.astype(bytes) if v.dtype == object else v)
    for k, v in table.items()
  }
  n = len(table["num_boxes"])

  def lookup(i):
    g = tensors["num_boxes"][i]
    if "image" in tensors:
      image = tensors["image"][i]
    else:
      data = tf.io.read_file(tensors["image_path"][i])
      image = tf.io.decode_image(data, channels=3, expand_animations=False)
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


def _tfds_parts(cfg, train: bool, shard=(0, 1)):
  """Returns (raw tfds datasets, one per split part; decode fn)."""
  source = _source(cfg)
  name, default = ("voc", "2007") if source == "tfds_voc" else ("coco", "2017")
  parts = sources.load_tfds_parts(
    name,
    _split(cfg, train),
    default,
    data_dir=_get(cfg, "data_dir") or None,  # "" = tfds default.
    shard=shard,
    skip_decoding=bool(_get(cfg, "tfds_skip_decoding", True)),
  )
  if source == "tfds_voc":
    return parts, sources.decode_voc
  return parts, lambda r: sources.decode_coco(r, training=train)


def _tfds_epochs(parts, seed: int, buffer: int, start: int):
  """Infinite stream of shuffled epochs of the parts, from element `start`.

  Epoch e interleaves the parts in a random order that uses each part's
  every example once (part choices are a stateless permutation seeded by
  (seed, e)), then shuffles through a buffer seeded by (seed, e). Epochs are
  independent of each other, so a resume skips whole epochs for free.

  Returns:
    The dataset, starting at element `start` of the stream.
  """
  sizes = [sources.dataset_size(p) for p in parts]
  total = sum(sizes)
  if total == 0:
    raise ValueError("the training split is empty")
  bounds = tf.constant(np.cumsum(sizes), tf.int64)  # [parts]

  def epoch(e):
    epoch_seed = tf.stack([tf.constant(seed, tf.int64), e])
    if len(parts) == 1:
      ds = parts[0]
    else:

      def choose(i):
        slot = tf.random.experimental.index_shuffle(
          i, epoch_seed, tf.constant(total - 1, tf.int64)
        )
        part = tf.searchsorted(bounds, slot[None], side="right")[0]
        return tf.cast(part, tf.int64)

      choice = tf.data.Dataset.range(total).map(_plain(choose))
      ds = tf.data.Dataset.choose_from_datasets(parts, choice)
    shuffle_seed = tf.random.experimental.stateless_fold_in(epoch_seed, 2)
    return ds.shuffle(buffer, seed=tf.cast(shuffle_seed[0], tf.int64))

  first_epoch = start // total
  ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
  return ds.flat_map(_plain(epoch)).skip(start - first_epoch * total)


def _pad(x: tf.Tensor, size: int) -> tf.Tensor:
  """Cuts or zero-pads the leading dimension of x to `size`."""
  x = x[:size]
  pad = [[0, size - tf.shape(x)[0]]] + [[0, 0]] * (len(x.shape) - 1)
  out = tf.pad(x, pad)
  return tf.ensure_shape(out, [size] + x.shape[1:].as_list())


def _options(cfg) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  threads = int(_get(cfg, "num_threads", os.cpu_count() or 1))
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = True
  return options


def _augment_config(cfg) -> augment.AugmentConfig:
  overrides = _get(cfg, "augment_config", {})
  overrides = dict(overrides.to_dict() if hasattr(overrides, "to_dict")
                   else overrides)  # fmt: skip
  for key in ("contrast_range", "saturation_range", "min_ious"):
    if key in overrides:
      overrides[key] = tuple(overrides[key])
  try:
    return augment.AugmentConfig(**overrides)
  except TypeError as e:
    raise ValueError(
      f"data.augment_config has an unknown field: {e}; fields are "
      f"{augment.AugmentConfig._fields}"
    ) from e


def check_batch_split(
  global_batch_size: int, num_devices: int, process_count: int
) -> int:
  """Per-host batch size, after checking the batch divides evenly.

  Raises:
    ValueError: if global_batch_size is not divisible by
      process_count * num_devices.
  """
  if global_batch_size <= 0 or num_devices <= 0:
    raise ValueError(
      f"global_batch_size ({global_batch_size}) and num_devices "
      f"({num_devices}) must be positive"
    )
  if global_batch_size % (process_count * num_devices):
    raise ValueError(
      f"global_batch_size {global_batch_size} is not divisible by "
      f"process_count * local devices = {process_count} * {num_devices}"
    )
  return global_batch_size // process_count


def create_train_iterator(
  data_cfg,
  *,
  image_size: int,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  num_devices: int | None = None,
) -> Iterator[dict]:
  """The infinite, augmented, deterministic and resumable training stream.

  Args:
    data_cfg: the data ConfigDict (fields documented in `ssd_jax.data`).
    image_size: model input side (square).
    global_batch_size: images per step over all hosts.
    seed: the stream's seed (order and augmentation).
    start_step: first step to yield; the batches equal an uninterrupted
      run's from that step on.
    num_devices: local devices D (default `jax.local_device_count()`).

  Returns:
    Iterator of numpy dicts: "image" float32 [D, B/D, H, W, 3] normalised,
    "boxes" float32 [D, B/D, max_boxes, 4] corners in [0, 1], "labels"
    int32 [D, B/D, max_boxes] (0 = padding), with B the per-host batch.

  Raises:
    ValueError: for an unknown source, missing fields, or a batch that does
      not split evenly over hosts and devices.
  """
  configure_tensorflow()
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  devices = num_devices or jax.local_device_count()
  host, hosts = jax.process_index(), jax.process_count()
  batch = check_batch_split(global_batch_size, devices, hosts)
  max_boxes = int(_get(data_cfg, "max_boxes", 100))
  train_difficult = bool(_get(data_cfg, "train_difficult", True))
  use_augment = bool(_get(data_cfg, "augment", True))
  aug_cfg = _augment_config(data_cfg)
  base = tf.constant([seed, 1], tf.int64)

  def process(g, ex):
    boxes, labels = ex["boxes"], ex["labels"]
    if not train_difficult:
      keep = tf.logical_not(ex["difficult"])
      boxes, labels = (
        tf.boolean_mask(boxes, keep),
        tf.boolean_mask(labels, keep),
      )
    if use_augment:
      aug_seed = tf.random.experimental.stateless_fold_in(base, g)
      image, boxes, labels = augment.train_augment(
        ex["image"], boxes, labels, aug_seed, image_size, aug_cfg
      )
    else:
      image = augment.eval_preprocess(ex["image"], image_size)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    return {
      "image": image,
      "boxes": _pad(tf.reshape(boxes, [-1, 4]), max_boxes),
      "labels": _pad(tf.cast(labels, tf.int32), max_boxes),
    }

  parallel = _get(data_cfg, "num_parallel_calls", tf.data.AUTOTUNE)
  if _source(data_cfg) in ("synthetic", "voc_folder"):
    n, lookup = _table_lookup(_table(data_cfg, train=True))

    def position(local):  # Local counter -> global position g and index.
      step, j = local // batch, local % batch
      g = step * global_batch_size + host * batch + j
      epoch_seed = tf.stack([tf.constant(seed, tf.int64), g // n])
      index = tf.random.experimental.index_shuffle(
        g % n, epoch_seed, tf.constant(n - 1, tf.int64)
      )
      return process(g, lookup(index))

    ds = tf.data.Dataset.range(start_step * batch, np.iinfo(np.int64).max)
    ds = ds.map(
      _plain(position), num_parallel_calls=parallel, deterministic=True
    )
  else:
    parts, decode = _tfds_parts(data_cfg, True, (host, hosts))
    buffer = int(_get(data_cfg, "shuffle_buffer", 2048))
    start = start_step * batch
    ds = _tfds_epochs(parts, seed, buffer, start).enumerate(start)
    ds = ds.map(
      _plain(lambda local, r: process(local * hosts + host, decode(r))),
      num_parallel_calls=parallel,
      deterministic=True,
    )

  def to_devices(b):
    return {
      k: tf.reshape(v, [devices, batch // devices] + v.shape[1:].as_list())
      for k, v in b.items()
    }

  ds = ds.batch(batch, drop_remainder=True).map(_plain(to_devices))
  ds = ds.prefetch(int(_get(data_cfg, "prefetch", 2)))
  return ds.with_options(_options(data_cfg)).as_numpy_iterator()


def create_eval_iterator(
  data_cfg, *, image_size: int, batch_size: int
) -> Iterator[dict]:
  """The finite evaluation stream: every example once, in order.

  Not sharded over hosts or devices. The last batch is padded with zero
  examples marked invalid. Boxes keep their normalised coordinates (a
  resize does not change them); `original_size` maps them back to pixels
  (`ssd_jax.data.normalized_to_voc_pixels` for `evaluate_voc`).

  Args:
    data_cfg: the data ConfigDict. `eval_max_boxes` (default `max_boxes`)
      sets the padding; an image with more boxes is logged, as its extra
      boxes are cut.
    image_size: model input side.
    batch_size: images per batch.

  Returns:
    Iterator of numpy dicts: "image" float32 [B, H, W, 3] normalised,
    "raw_image" uint8 [B, H, W, 3] (resized), "boxes" float32 [B, M, 4],
    "labels" int32 [B, M] (0 = padding), "difficult" and "is_crowd" bool
    [B, M], "num_boxes" int32 [B] (before cutting to M), "image_id" str [B]
    ("" for padding), "original_size" int32 [B, 2] (h, w), "valid" bool [B].
  """
  configure_tensorflow()
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  max_boxes = int(
    _get(data_cfg, "eval_max_boxes", _get(data_cfg, "max_boxes", 100))
  )
  mean = tf.constant(augment.MEAN_RGB, tf.float32)

  def process(ex):
    image = augment.eval_preprocess(ex["image"], image_size)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    raw = tf.cast(tf.clip_by_value(tf.round(image + mean), 0, 255), tf.uint8)
    return {
      "image": image,
      "raw_image": raw,
      "boxes": _pad(tf.reshape(ex["boxes"], [-1, 4]), max_boxes),
      "labels": _pad(tf.cast(ex["labels"], tf.int32), max_boxes),
      "difficult": _pad(ex["difficult"], max_boxes),
      "is_crowd": _pad(ex["is_crowd"], max_boxes),
      "num_boxes": tf.shape(ex["labels"])[0],
      "image_id": ex["image_id"],
      "original_size": tf.cast(ex["original_size"], tf.int32),
    }

  parallel = _get(data_cfg, "num_parallel_calls", tf.data.AUTOTUNE)
  if _source(data_cfg) in ("synthetic", "voc_folder"):
    n, lookup = _table_lookup(_table(data_cfg, train=False))
    ds = tf.data.Dataset.range(n).map(
      _plain(lambda i: process(lookup(i))), num_parallel_calls=parallel
    )
  else:
    parts, decode = _tfds_parts(data_cfg, train=False)
    raw = parts[0]
    for other in parts[1:]:
      raw = raw.concatenate(other)
    ds = raw.map(
      _plain(lambda r: process(decode(r))), num_parallel_calls=parallel
    )
  ds = ds.batch(batch_size).prefetch(2).with_options(_options(data_cfg))
  return _padded_batches(ds.as_numpy_iterator(), batch_size, max_boxes)


def _padded_batches(batches, batch_size: int, max_boxes: int):
  warned = False
  for b in batches:
    b["image_id"] = np.asarray([s.decode() for s in b["image_id"]])
    if not warned and (b["num_boxes"] > max_boxes).any():
      _log.warning(
        "eval images with more than %d boxes (e.g. %s with %d); the extra "
        "boxes are cut, raise data.eval_max_boxes",
        max_boxes, b["image_id"][b["num_boxes"].argmax()],
        b["num_boxes"].max(),
      )  # fmt: skip
      warned = True
    n = len(b["valid"]) if "valid" in b else len(b["image_id"])
    b["valid"] = np.ones(n, bool)
    if n < batch_size:
      b = {
        k: np.concatenate(
          [v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)]
        )
        for k, v in b.items()
      }
    yield b
