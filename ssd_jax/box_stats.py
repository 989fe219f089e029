"""The boxes of a split and how well default boxes cover them.

The statistics under `ssd_jax.analyze`'s report, the quick recipe's choices
(`ssd_jax.recipe`) and training's fitted default boxes (`train.fit_priors`):

- `dataset_stats`: a split's boxes, labels and image sizes, read from its
  records (annotations, no pixels, no tf.data pipeline, no augmentation):
  the table routes of `data.dataset` (synthetic, VOC folders, a VOCdevkit,
  a COCO folder); tfds is not read;
- `prior_coverage`: per box, the best IoU with any default box, whether it
  reaches the matching threshold, and the positives matching gives it, with
  summaries per class, size bucket (`SIZE_BUCKETS`) and source map;
- `fitted_prior_config` / `rule_prior_config`: a VGG model's default boxes
  fitted to the boxes (`default_boxes.fit_prior_config`), and the model's
  own rule they start from.

Sizes are relative to the network input: the pipeline resizes every image
to the square input, so a box's normalised width and height are its
fractions of the input side; a box's size is `sqrt(w h)`.
"""

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from ssd_jax import config as config_lib
from ssd_jax import default_boxes as db
from ssd_jax import models
from ssd_jax.data import dataset

# (name, lower, upper) of each size bucket: sqrt(w h) of a box as a
# fraction of the input side; lower <= size < upper.
SIZE_BUCKETS = (
  ("<0.1", 0.0, 0.1),
  ("0.1-0.2", 0.1, 0.2),
  ("0.2-0.4", 0.2, 0.4),
  (">=0.4", 0.4, np.inf),
)
SPLITS = ("train", "eval")


class DatasetStats(NamedTuple):
  """The boxes of a split, flat (image after image), without the pixels.

  Attributes:
    num_images: images in the split (with or without boxes).
    image_sizes: [N, 2] int32 (h, w) of the stored images.
    boxes: [M, 4] float32 corners normalised to [0, 1] of the image.
    labels: [M] int32 classes 1..C-1.
    image_index: [M] int32, the image of each box (0..N-1).
    class_names: the C-1 class names (label k is class_names[k - 1]).
    difficult: [M] bool, VOC's difficult flag.
  """

  num_images: int
  image_sizes: np.ndarray
  boxes: np.ndarray
  labels: np.ndarray
  image_index: np.ndarray
  class_names: tuple[str, ...]
  difficult: np.ndarray


def dataset_stats(data_config: Any, split: str = "train") -> DatasetStats:
  """The boxes of the config's train or eval split, read from its records.

  Crowd boxes (COCO) are left out, as training leaves them out.

  Args:
    data_config: the data ConfigDict (see `ssd_jax.data`); a table route
      (`dataset.is_table`).
    split: "train" (the config's `train_split`) or "eval" (`eval_split`).

  Returns:
    The split's DatasetStats.

  Raises:
    ValueError: on another split, or a tfds route (no table to read).
    FileNotFoundError, ValueError: the data layer's, naming the missing or
      bad file.
  """
  config_lib.check_choice("analyze split", split, SPLITS)
  if not dataset.is_table(data_config):
    raise ValueError(
      "dataset statistics (ssd_jax.analyze, fitted default boxes) read a "
      "table route (synthetic, voc_folder, a VOCdevkit or COCO folder as "
      "data.root); data.source="
      f"{dataset.source(data_config)!r} without data.root is read by tfds"
    )
  table = dataset.table(data_config, train=split == "train")
  n = len(table["num_boxes"])
  image_index = np.repeat(np.arange(n, dtype=np.int32), table["num_boxes"])
  keep = ~table["is_crowd"]  # [T]
  return DatasetStats(
    num_images=n,
    image_sizes=np.asarray(table["original_size"], np.int32).reshape(n, 2),
    boxes=np.asarray(table["boxes"], np.float32)[keep],
    labels=np.asarray(table["labels"], np.int32)[keep],
    image_index=image_index[keep],
    class_names=tuple(dataset.class_names(data_config)),
    difficult=np.asarray(table["difficult"], bool)[keep],
  )


class CoverageReport(NamedTuple):
  """How well a set of default boxes covers ground-truth boxes.

  Attributes:
    best_iou: [M] float32, each box's highest IoU with any prior.
    covered: [M] bool, best_iou >= the matching threshold.
    num_positives: [M] int32, priors matching makes positive for the box
      (`default_boxes.box_coverage`).
    size_bucket: [M] int32, index into `SIZE_BUCKETS`.
    coverage: fraction of boxes covered; None without boxes.
    mean_positives: mean of num_positives; None without boxes.
    by_size: bucket name -> {"boxes", "coverage", "mean_positives"}, every
      bucket (coverage and mean None when it holds no box).
    by_class: label -> the same, for the labels present (empty without
      labels).
    by_map: source map name ("20x20") -> {"boxes": boxes with a positive
      on that map, "positives": their positives there, "fewest_per_class":
      the smallest of those box counts over the labels present (None
      without labels)}, in map order; empty when the maps are not given.
      A map few boxes reach has a head that barely trains.
  """

  best_iou: np.ndarray
  covered: np.ndarray
  num_positives: np.ndarray
  size_bucket: np.ndarray
  coverage: float | None
  mean_positives: float | None
  by_size: dict[str, dict[str, Any]]
  by_class: dict[int, dict[str, Any]]
  by_map: dict[str, dict[str, Any]]


def box_size(boxes: np.ndarray) -> np.ndarray:
  """sqrt(w h) of corner boxes: [M, 4] -> [M] float32 (0 for empty ones)."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  wh = np.maximum(boxes[:, 2:] - boxes[:, :2], 0.0)  # [M, 2]
  return np.sqrt(wh[:, 0] * wh[:, 1])


def size_buckets(sizes: np.ndarray) -> np.ndarray:
  """Index into `SIZE_BUCKETS` of each size: [M] -> [M] int32."""
  uppers = np.asarray([b[2] for b in SIZE_BUCKETS[:-1]])
  return np.searchsorted(uppers, np.asarray(sizes), side="right").astype(
    np.int32
  )


def _summary(covered: np.ndarray, positives: np.ndarray) -> dict[str, Any]:
  n = len(covered)
  return {
    "boxes": n,
    "coverage": float(covered.mean()) if n else None,
    "mean_positives": float(positives.mean()) if n else None,
  }


def prior_coverage(
  gt_boxes: np.ndarray,
  priors: np.ndarray,
  iou_threshold: float = 0.5,
  labels: np.ndarray | None = None,
  maps: Mapping[str, int] | None = None,
) -> CoverageReport:
  """Prior coverage of ground-truth boxes, per box, class, size and map.

  Args:
    gt_boxes: [M, 4] float corners in [0, 1] of the input; M may be 0.
    priors: [P, 4] float centre form (`model.priors()`).
    iou_threshold: the matching threshold (`config.iou_threshold`).
    labels: [M] int classes for `by_class`; None for no class summary.
    maps: source map name -> its number of priors, in prior order, summing
      to P (`map_rows`), for `by_map`; None for no map summary.

  Returns:
    A CoverageReport.

  Raises:
    ValueError: on boxes not [M, 4], priors not [P, 4] or labels not [M].
  """
  gt_boxes = np.asarray(gt_boxes, np.float32)
  rows = tuple(maps.values()) if maps else (np.shape(priors)[0],)
  best, on_map = db.positives_by_map(gt_boxes, priors, rows, iou_threshold)
  positives = on_map.sum(1)
  covered = best >= iou_threshold
  bucket = size_buckets(box_size(gt_boxes))
  by_size = {
    name: _summary(covered[bucket == k], positives[bucket == k])
    for k, (name, _, _) in enumerate(SIZE_BUCKETS)
  }
  by_class = {}
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != best.shape:
      raise ValueError(
        f"labels must be [M] = {best.shape}, one per box; got {labels.shape}"
      )
    for label in np.unique(labels):
      rows = labels == label
      by_class[int(label)] = _summary(covered[rows], positives[rows])
  by_map = {}
  for k, name in enumerate(maps or {}):
    reached = on_map[:, k] > 0
    fewest = None
    if labels is not None and len(labels):
      fewest = min(
        int(np.sum(reached[labels == label])) for label in np.unique(labels)
      )
    by_map[name] = {
      "boxes": int(reached.sum()),
      "positives": int(on_map[:, k].sum()),
      "fewest_per_class": fewest,
    }
  overall = _summary(covered, positives)
  return CoverageReport(
    best_iou=best,
    covered=covered,
    num_positives=positives,
    size_bucket=bucket,
    coverage=overall["coverage"],
    mean_positives=overall["mean_positives"],
    by_size=by_size,
    by_class=by_class,
    by_map=by_map,
  )


def map_rows(model: Any, prior_config: db.PriorConfig | None = None):
  """Source map name ("20x20") -> its priors, for a VGG model's priors.

  Args:
    model: the model (`models.from_config`).
    prior_config: the default boxes; None takes the model's own.

  Returns:
    An ordered dict, or None for a zoo model (its own prior layout).
  """
  if prior_config is None:
    if not hasattr(model, "resolved_prior_config"):
      return None
    prior_config = model.resolved_prior_config()
  return {
    f"{size}x{size}": rows
    for size, rows in zip(
      prior_config.feature_sizes, db.rows_per_map(prior_config), strict=True
    )
  }


def can_fit(model_config: Any) -> bool:
  """Whether fitted default boxes apply: the VGG family (model.backbone)."""
  return model_config.get("backbone", "vgg16") == "vgg16"


def fitted_prior_config(
  config: ml_collections.ConfigDict, stats: DatasetStats
) -> db.PriorConfig:
  """Default boxes fitted to a split's boxes for the config's model.

  `default_boxes.fit_prior_config` of the model's own rule
  (`models.default_prior_config`, with its `conv3_3_map`) with the boxes'
  sizes and centres and `config.iou_threshold`.

  Args:
    config: the full config; a VGG model (`can_fit`).
    stats: the training split's boxes (`dataset_stats`).

  Returns:
    The fitted PriorConfig.

  Raises:
    ValueError: for a zoo model (`model.backbone` other than vgg16).
  """
  if not can_fit(config.model):
    raise ValueError(
      f"model.backbone={config.model.backbone!r} brings its own default "
      "boxes; fitted default boxes apply to the VGG models (vgg16)"
    )
  boxes = np.asarray(stats.boxes, np.float32)
  return _fit(
    rule_prior_config(config, stats),
    boxes.tobytes(),
    float(config.iou_threshold),
  )


def rule_prior_config(
  config: ml_collections.ConfigDict, stats: DatasetStats
) -> db.PriorConfig:
  """The config's VGG model's default boxes by the model's own rule.

  `models.default_prior_config` at the model's input size, with its
  `conv3_3_map`, whatever `model.priors` names: the boxes
  `fitted_prior_config` starts from and is compared with.
  """
  model = model_for(config, stats)
  return models.default_prior_config(model.image_size, model.conv3_3_map)


@functools.lru_cache(maxsize=8)
def _fit(base: db.PriorConfig, boxes: bytes, threshold: float):
  """`fit_prior_config` for [M, 4] float32 corners given as bytes; cached:
  the quick recipe fits the boxes to decide on conv3_3's map, and training
  then asks for the same fit (seconds each with conv3_3's 4x more boxes)."""
  corners = np.frombuffer(boxes, np.float32).reshape(-1, 4)
  wh = corners[:, 2:] - corners[:, :2]  # [M, 2]
  centers = (corners[:, 2:] + corners[:, :2]) / 2  # [M, 2]
  return db.fit_prior_config(base, wh, threshold, centers=centers)


def model_for(config: ml_collections.ConfigDict, stats: DatasetStats) -> Any:
  """The config's model; priors="fitted" without sizes: the model's rule."""
  model_cfg = dict(config.model)
  if model_cfg.get("priors") == "fitted" and not model_cfg.get(
    "prior_min_sizes"
  ):
    model_cfg.update(priors="default", prior_min_sizes=(), prior_max_sizes=())
  return models.from_config(model_cfg, len(stats.class_names) + 1)
