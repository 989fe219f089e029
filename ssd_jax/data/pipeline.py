"""The tf.data input pipelines: training (infinite, augmented, resumable)
and evaluation (finite, resize + normalise: `eval_inputs`, which prediction
also applies to each image file, see `ssd_jax.predict`).

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

from ssd_jax.data import augment, dataset, sources
from ssd_jax.data import image as image_lib

_log = logging.getLogger(__name__)


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


def eval_inputs(
  image: tf.Tensor, image_size: int, normalization: str = "caffe"
) -> tf.Tensor:
  """The evaluation preprocessing of one decoded image (resize, normalise).

  The one definition of what the network sees at evaluation: the eval
  pipeline and prediction on image files (`ssd_jax.predict`, one image at a
  time) both call it. Boxes in normalised coordinates are unchanged by it.

  Args:
    image: uint8 [H, W, 3] RGB.
    image_size: model input side.
    normalization: the model's (`ssd_jax.data.image.NORMALIZATIONS`).

  Returns:
    float32 [S, S, 3] normalised (`augment.eval_preprocess`, then the
    model's normalisation), S = image_size;
    `ssd_jax.data.image.denormalize(x, normalization)` gives back its pixels.
  """
  pixels = augment.eval_preprocess(image, image_size)
  pixels = image_lib.renormalize_from_caffe(pixels, normalization)
  return tf.ensure_shape(pixels, [image_size, image_size, 3])


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
  """The pipelines' tf.data options: deterministic, `num_threads` threads.

  tf.data's autotuning is off unless `data.autotune` is True: its model
  thread kept a finished training iterator alive for up to a minute before
  the process could return (0-52 s, uniformly spread, in the 10-minute CPU
  runs of `experiments/own_data/run_recipe.py`; TF 2.21), and without it
  the AUTOTUNE maps run as wide as the thread pool, which fed the 2-core
  training as fast (300 steps at 96 px, two pairs of runs: 58.0 and 57.0
  images/s without, 59.1 and 51.0 with; 115-118 s in all without, 163-165
  s with).
  """
  options = tf.data.Options()
  options.deterministic = True
  threads = int(dataset.field(cfg, "num_threads", os.cpu_count() or 1))
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = bool(dataset.field(cfg, "autotune", False))
  return options


def _augment_config(cfg) -> augment.AugmentConfig:
  overrides = dataset.field(cfg, "augment_config", {})
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
  normalization: str = "caffe",
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
    normalization: the model's input normalisation
      (`ssd_jax.data.image.NORMALIZATIONS`).

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
  max_boxes = dataset.max_boxes(data_cfg)
  train_difficult = bool(dataset.field(data_cfg, "train_difficult", True))
  use_augment = bool(dataset.field(data_cfg, "augment", True))
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
    image = image_lib.renormalize_from_caffe(image, normalization)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    return {
      "image": image,
      "boxes": _pad(tf.reshape(boxes, [-1, 4]), max_boxes),
      "labels": _pad(tf.cast(labels, tf.int32), max_boxes),
    }

  parallel = dataset.field(data_cfg, "num_parallel_calls", tf.data.AUTOTUNE)
  if dataset.is_table(data_cfg):
    n, lookup = dataset.table_lookup(dataset.table(data_cfg, train=True))

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
    parts, decode = dataset.tfds_parts(data_cfg, True, (host, hosts))
    buffer = int(dataset.field(data_cfg, "shuffle_buffer", 2048))
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
  ds = ds.prefetch(int(dataset.field(data_cfg, "prefetch", 2)))
  return ds.with_options(_options(data_cfg)).as_numpy_iterator()


def shard_range(n: int, shard: tuple[int, int]) -> tuple[int, int]:
  """The contiguous block [lo, hi) of n examples that shard (i, k) reads.

  Blocks are balanced (sizes differ by at most one), in order, disjoint, and
  together cover 0..n-1 exactly once, also when k does not divide n (a shard
  may be empty when n < k).

  Args:
    n: number of examples.
    shard: (index i, count k), 0 <= i < k.

  Returns:
    (lo, hi) with lo = i * n // k, hi = (i + 1) * n // k.

  Raises:
    ValueError: for a count < 1 or an index outside 0..count-1.
  """
  index, count = shard
  if count < 1 or not 0 <= index < count:
    raise ValueError(
      f"shard {shard}: expected (index, count), 0 <= index < count"
    )
  return index * n // count, (index + 1) * n // count


def create_eval_iterator(
  data_cfg,
  *,
  image_size: int,
  batch_size: int,
  normalization: str = "caffe",
  shard: tuple[int, int] = (0, 1),
) -> Iterator[dict]:
  """The finite evaluation stream: every example of a shard once, in order.

  Shard (i, k) reads the i-th of k contiguous blocks of the split
  (`shard_range`): for multi-host evaluation, `(jax.process_index(),
  jax.process_count())` gives each host its own images, every image on
  exactly one host. The default (0, 1) reads the whole split. Batches are
  not split over devices. The last batch is padded with zero
  examples marked invalid. Each image goes through `eval_inputs`. Boxes keep
  their normalised coordinates (a resize does not change them);
  `original_size` maps them back to pixels
  (`ssd_jax.data.image.normalized_to_voc_pixels` for `evaluate_voc`).

  Args:
    data_cfg: the data ConfigDict. `eval_max_boxes` (default `max_boxes`)
      sets the padding; an image with more boxes is logged, as its extra
      boxes are cut.
    image_size: model input side.
    batch_size: images per batch.
    normalization: the model's input normalisation (see `eval_inputs`).
    shard: (index, count) of the block to read (see above).

  Returns:
    Iterator of numpy dicts: "image" float32 [B, H, W, 3] normalised,
    "boxes" float32 [B, M, 4],
    "labels" int32 [B, M] (0 = padding), "difficult" and "is_crowd" bool
    [B, M], "num_boxes" int32 [B] (before cutting to M), "image_id" str [B]
    ("" for padding), "original_size" int32 [B, 2] (h, w), "index" int64
    [B] (position in the whole split; 0 for padding), "valid" bool [B].

  Raises:
    ValueError: for a batch size < 1 or a bad shard.
  """
  configure_tensorflow()
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  max_boxes = dataset.max_boxes(data_cfg, train=False)

  def process(index, ex):
    return {
      "index": index,
      "image": eval_inputs(ex["image"], image_size, normalization),
      "boxes": _pad(tf.reshape(ex["boxes"], [-1, 4]), max_boxes),
      "labels": _pad(tf.cast(ex["labels"], tf.int32), max_boxes),
      "difficult": _pad(ex["difficult"], max_boxes),
      "is_crowd": _pad(ex["is_crowd"], max_boxes),
      "num_boxes": tf.shape(ex["labels"])[0],
      "image_id": ex["image_id"],
      "original_size": tf.cast(ex["original_size"], tf.int32),
    }

  parallel = dataset.field(data_cfg, "num_parallel_calls", tf.data.AUTOTUNE)
  if dataset.is_table(data_cfg):
    n, lookup = dataset.table_lookup(dataset.table(data_cfg, train=False))
    lo, hi = shard_range(n, shard)
    ds = tf.data.Dataset.range(lo, hi).map(
      _plain(lambda i: process(i, lookup(i))), num_parallel_calls=parallel
    )
  else:
    parts, decode = dataset.tfds_parts(data_cfg, train=False)
    raw = parts[0]
    for other in parts[1:]:
      raw = raw.concatenate(other)
    raw = raw.enumerate()
    if shard[1] > 1:  # Skipped records are read, not decoded.
      lo, hi = shard_range(sources.dataset_size(raw), shard)
      raw = raw.skip(lo).take(hi - lo)
    ds = raw.map(
      _plain(lambda i, r: process(i, decode(r))), num_parallel_calls=parallel
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
