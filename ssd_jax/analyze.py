r"""Dataset analysis: what the boxes look like and how well the priors fit.

  python -m ssd_jax.analyze --config=configs/voc_folder.py:small \
    --config.data.root=/data/my_voc --workdir=/tmp/my_ssd

prints a summary and writes `WORKDIR/analysis.json` and pictures
`WORKDIR/analysis/*.png`: image count and sizes, boxes per image, box size
and aspect-ratio histograms relative to the network input, class counts and
**prior coverage**: the fraction of ground-truth boxes whose best default
box has IoU >= `config.iou_threshold` (so that matching gives them a prior
of their own shape), per class and per size bucket, and the mean number of
positives per box, for the config's default boxes and (VGG models) for
default boxes fitted to the training boxes (`default_boxes.
fit_prior_config`, what `model.priors="fitted"` trains with). For the VGG
models it also counts the boxes matched on each source map, and the fewest
of one class: each map has its own heads, and a map that few boxes reach
(the deep ones, when every object is small at the input size) has heads
that barely train.

Sizes are relative to the network input: the pipeline resizes every image
to the square input, so a box's normalised width and height are its
fractions of the input side, and its aspect ratio in the input is
`w / h` of the normalised box. A box's size is `sqrt(w h)`; the size
buckets (`SIZE_BUCKETS`) are < 0.1, 0.1-0.2, 0.2-0.4 and >= 0.4 of the
input side (at 300 px: below 30 px, 30-60, 60-120, 120 and more).

With `config.recipe = "quick"` (`configs/voc_folder.py:small`) the command
line first applies the recipe's choices as training would (the input size
above all), and prints them, so the analysis is of the run to come.

The statistics read a split's records only (annotations, no pixels, no
tf.data pipeline, no augmentation): the table routes of `data.dataset`
(synthetic, VOC folders, a VOCdevkit, a COCO folder); tfds is not read.
"""

import fractions
import functools
import itertools
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from ssd_jax import config as config_lib
from ssd_jax import default_boxes as db
from ssd_jax import models, visualize
from ssd_jax.data import dataset

# (name, lower, upper) of each size bucket: sqrt(w h) of a box as a
# fraction of the input side; lower <= size < upper.
SIZE_BUCKETS = (
  ("<0.1", 0.0, 0.1),
  ("0.1-0.2", 0.1, 0.2),
  ("0.2-0.4", 0.2, 0.4),
  (">=0.4", 0.4, np.inf),
)
# Histogram edges of box sizes (fractions of the input side) and of aspect
# ratios w / h in the input (the last bin of each is open).
SIZE_EDGES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8)
ASPECT_EDGES = (0.0, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 2, 2, 3, 4)
# Boxes per image: counts 0 .. this - 1, then one open bin.
_MAX_COUNT_BIN = 20
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
  model = _model(config, stats)
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


def _model(config: ml_collections.ConfigDict, stats: DatasetStats) -> Any:
  """The config's model; priors="fitted" without sizes: the model's rule."""
  model_cfg = dict(config.model)
  if model_cfg.get("priors") == "fitted" and not model_cfg.get(
    "prior_min_sizes"
  ):
    model_cfg.update(priors="default", prior_min_sizes=(), prior_max_sizes=())
  return models.from_config(model_cfg, len(stats.class_names) + 1)


def _histogram(values: np.ndarray, edges: Sequence[float], names) -> dict:
  counts = np.histogram(values, np.append(edges, np.inf))[0]
  return {name: int(c) for name, c in zip(names, counts, strict=True)}


def _edge_names(edges: Sequence[float], fmt) -> list[str]:
  names = [f"{fmt(a)}-{fmt(b)}" for a, b in itertools.pairwise(edges)]
  return names + [f">={fmt(edges[-1])}"]


def _ratio_name(r: float) -> str:
  return str(fractions.Fraction(r).limit_denominator(10))


def _coverage_json(
  report: CoverageReport, class_names: Sequence[str], priors_what: str
) -> dict[str, Any]:
  return {
    "priors": priors_what,
    "coverage": report.coverage,
    "mean_positives": report.mean_positives,
    "by_size": report.by_size,
    "by_class": {
      class_names[k - 1] if 0 < k <= len(class_names) else str(k): v
      for k, v in report.by_class.items()
    },
    "by_map": report.by_map,
  }


def analyze(
  config: ml_collections.ConfigDict, split: str = "train"
) -> dict[str, Any]:
  """The analysis of a config's split (JSON-able; see the module docstring).

  Args:
    config: the full config (validated as training validates it).
    split: "train" or "eval".

  Returns:
    A dict: "split", "num_images", "num_boxes", "image_size" (the input),
    "image_sizes" (min / median / max (h, w) and the most common),
    "boxes_per_image" (count -> images), "box_size" and "aspect_ratio"
    (histograms relative to the input), "class_counts", "iou_threshold",
    "coverage" (of the config's default boxes) and, for VGG models,
    "fitted" (coverage of default boxes fitted to the training split, with
    their "min_sizes" / "max_sizes" in input pixels), else None. Coverage
    entries hold "priors", "num_priors", "coverage", "mean_positives",
    "by_size", "by_class" and "by_map" (boxes matched on each source map;
    empty for a zoo model).

  Raises:
    FileNotFoundError, ValueError: naming the missing data or bad field.
  """
  config_lib.validate_config(config, num_devices=1)
  stats = dataset_stats(config.data, split)
  model = _model(config, stats)
  threshold = float(config.iou_threshold)
  names = stats.class_names
  sizes = box_size(stats.boxes)
  wh = stats.boxes[:, 2:] - stats.boxes[:, :2]  # [M, 2]
  aspect = wh[:, 0] / np.maximum(wh[:, 1], 1e-12)
  per_image = np.bincount(stats.image_index, minlength=stats.num_images)
  count_bins = np.minimum(per_image, _MAX_COUNT_BIN)
  hist = np.bincount(count_bins, minlength=_MAX_COUNT_BIN + 1)
  count_names = [str(k) for k in range(_MAX_COUNT_BIN)]
  count_names += [f">={_MAX_COUNT_BIN}"]
  hw = stats.image_sizes
  common, times = (
    np.unique(hw, axis=0, return_counts=True) if len(hw) else ([], [])
  )
  order = np.argsort(-np.asarray(times), kind="stable")[:5]
  priors = model.priors()
  what = str(config.model.get("priors", "default"))
  if what == "fitted" and not config.model.get("prior_min_sizes"):
    what = "default"  # Not fitted yet: the model's rule.
  result = {
    "split": split,
    "split_name": dataset.split(config.data, split == "train"),
    "num_images": stats.num_images,
    "num_boxes": len(stats.boxes),
    "image_size": int(model.image_size),
    "image_sizes": {
      "min": hw.min(0).tolist() if len(hw) else None,
      "median": np.median(hw, 0).tolist() if len(hw) else None,
      "max": hw.max(0).tolist() if len(hw) else None,
      "most_common": [
        [*map(int, common[i]), int(times[i])] for i in order
      ],  # [h, w, images]
    },
    "boxes_per_image": {
      name: int(c) for name, c in zip(count_names, hist, strict=True) if c
    },
    "box_size": _histogram(
      sizes, SIZE_EDGES, _edge_names(SIZE_EDGES, lambda v: f"{v:g}")
    ),
    "aspect_ratio": _histogram(
      aspect, ASPECT_EDGES, _edge_names(ASPECT_EDGES, _ratio_name)
    ),
    "class_counts": {
      name: int(np.sum(stats.labels == k + 1)) for k, name in enumerate(names)
    },
    "iou_threshold": threshold,
    "coverage": {
      **_coverage_json(
        prior_coverage(
          stats.boxes, priors, threshold, stats.labels, map_rows(model)
        ),
        names,
        what,
      ),
      "num_priors": len(priors),
    },
    "fitted": None,
  }
  if can_fit(config.model):
    train = stats if split == "train" else dataset_stats(config.data)
    fitted = fitted_prior_config(config, train)
    fitted_priors = db.prior_boxes(fitted)
    result["fitted"] = {
      **_coverage_json(
        prior_coverage(
          stats.boxes,
          fitted_priors,
          threshold,
          stats.labels,
          map_rows(model, fitted),
        ),
        names,
        "fitted",
      ),
      "num_priors": len(fitted_priors),
      "min_sizes": [round(s, 3) for s in fitted.min_sizes],
      "max_sizes": [round(s, 3) for s in fitted.max_sizes],
    }
  return result


def _percent(v: float | None) -> str:
  return "-" if v is None else f"{100 * v:.1f}%"


def _number(v: float | None) -> str:
  return "-" if v is None else f"{v:.2f}"


def format_summary(result: Mapping[str, Any]) -> str:
  """The readable summary `main` prints, from `analyze`'s result."""
  lines = [
    f"split {result['split']} ({result['split_name']}): "
    f"{result['num_images']} images, {result['num_boxes']} boxes; network "
    f"input {result['image_size']}x{result['image_size']}",
    f"image sizes (h, w): min {result['image_sizes']['min']}, median "
    f"{result['image_sizes']['median']}, max {result['image_sizes']['max']}",
    "boxes per image: "
    + ", ".join(f"{k}: {v}" for k, v in result["boxes_per_image"].items()),
    "box size sqrt(w h) / input side: "
    + ", ".join(f"{k}: {v}" for k, v in result["box_size"].items()),
    "aspect ratio w / h in the input: "
    + ", ".join(f"{k}: {v}" for k, v in result["aspect_ratio"].items()),
    "class counts: "
    + ", ".join(f"{k}: {v}" for k, v in result["class_counts"].items()),
    f"prior coverage (best prior IoU >= {result['iou_threshold']:g}):",
  ]
  runs = [result["coverage"]] + [result["fitted"]] * bool(result["fitted"])
  buckets = [name for name, _, _ in SIZE_BUCKETS]
  lines.append(
    f"  {'priors':<10}{'P':>8}{'all':>8}"
    + "".join(f"{b:>9}" for b in buckets)
    + f"{'pos/box':>9}"
  )
  for run in runs:
    lines.append(
      f"  {run['priors']:<10}{run['num_priors']:>8}"
      f"{_percent(run['coverage']):>8}"
      + "".join(
        f"{_percent(run['by_size'][b]['coverage']):>9}" for b in buckets
      )
      + f"{_number(run['mean_positives']):>9}"
    )
  if result["fitted"]:
    lines.append(
      "  fitted min sizes (px): "
      + ", ".join(f"{s:g}" for s in result["fitted"]["min_sizes"])
      + "; model.priors='fitted' trains with them"
    )
  for run in runs:
    if run["by_map"]:
      lines.append(
        f"  {run['priors']} boxes matched per map (fewest of one class): "
        + ", ".join(
          f"{k} {v['boxes']} ({v['fewest_per_class']})"
          for k, v in run["by_map"].items()
        )
      )
  for run in runs:
    lines.append(
      f"  {run['priors']} by class: "
      + ", ".join(
        f"{k} {_percent(v['coverage'])}" for k, v in run["by_class"].items()
      )
    )
  return "\n".join(lines)


def bar_chart(
  title: str,
  categories: Sequence[str],
  series: Mapping[str, Sequence[float]],
  value_format: str = "{:g}",
  size: tuple[int, int] = (560, 320),
) -> Image.Image:
  """A grouped bar chart (PIL), one bar per series in each category.

  Args:
    title: drawn at the top.
    categories: the x-axis labels, one group of bars each.
    series: name -> one value per category (None draws no bar); a legend
      names the series when there are several.
    value_format: format of the value written above each bar.
    size: (width, height) of the plot area in pixels.

  Returns:
    An RGB PIL image.
  """
  width, height = size
  margin, top, bottom = 40, 30, 46
  img = Image.new("RGB", (width + 2 * margin, height + top + bottom), "white")
  draw = ImageDraw.Draw(img)
  draw.text((margin, 8), title, fill=(0, 0, 0))
  x0, y1 = margin, top + height
  draw.line([x0, y1, x0 + width, y1], fill=(0, 0, 0))
  values = [v for vs in series.values() for v in vs if v is not None]
  peak = max(values + [1e-12])
  group = width / max(len(categories), 1)
  bar = group * 0.8 / max(len(series), 1)
  for s, (name, vs) in enumerate(series.items()):
    color = visualize.class_color(s + 1)
    for c, v in enumerate(vs):
      if v is None:
        continue
      left = x0 + c * group + group * 0.1 + s * bar
      h = (height - 14) * float(v) / peak
      draw.rectangle([left, y1 - h, left + bar - 1, y1], fill=color)
      draw.text((left, y1 - h - 11), value_format.format(v), fill=(0, 0, 0))
    if len(series) > 1:
      lx = x0 + width - 120
      draw.rectangle([lx, 8 + 12 * s, lx + 10, 16 + 12 * s], fill=color)
      draw.text((lx + 14, 6 + 12 * s), name, fill=(0, 0, 0))
  for c, name in enumerate(categories):
    draw.text((x0 + c * group + 2, y1 + 4 + 12 * (c % 2)), name, fill=(0, 0, 0))
  return img


def write_pictures(result: Mapping[str, Any], folder: str) -> list[str]:
  """Bar charts of `analyze`'s histograms and coverage, as PNG files.

  Args:
    result: `analyze`'s dict.
    folder: created if needed.

  Returns:
    The paths written: boxes_per_image, box_size, aspect_ratio,
    class_counts, coverage_by_size and coverage_by_class (.png).
  """
  os.makedirs(folder, exist_ok=True)
  runs = [result["coverage"]] + [result["fitted"]] * bool(result["fitted"])
  charts = {
    "boxes_per_image": ("images by boxes per image", "boxes_per_image"),
    "box_size": ("boxes by sqrt(w h) / input side", "box_size"),
    "aspect_ratio": ("boxes by aspect ratio w / h (input)", "aspect_ratio"),
    "class_counts": ("boxes per class", "class_counts"),
  }
  pictures = {
    name: bar_chart(title, list(result[key]), {key: list(result[key].values())})
    for name, (title, key) in charts.items()
  }
  for part, title in (("size", "size bucket"), ("class", "class")):
    keys = list(runs[0][f"by_{part}"])
    pictures[f"coverage_by_{part}"] = bar_chart(
      f"prior coverage by {title} (IoU >= {result['iou_threshold']:g})",
      keys,
      {
        run["priors"]: [run[f"by_{part}"][k]["coverage"] for k in keys]
        for run in runs
      },
      value_format="{:.2f}",
    )
  paths = []
  for name, img in pictures.items():
    path = os.path.join(folder, f"{name}.png")
    img.save(path)
    paths.append(path)
  return paths


def run(
  config: ml_collections.ConfigDict, workdir: str, split: str = "train"
) -> dict[str, Any]:
  """`analyze`, then `WORKDIR/analysis.json` and `WORKDIR/analysis/*.png`.

  Returns:
    The analysis dict.
  """
  result = analyze(config, split)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "analysis.json"), "w") as f:
    json.dump(result, f, indent=1)
  write_pictures(result, os.path.join(workdir, "analysis"))
  return result


def _with_recipe(
  config: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """The command line's config with its quick recipe applied, as training
  would apply it (`ssd_jax.recipe`; fields set on the command line kept),
  so the analysis is of the input size and boxes the run will train with."""
  if config.get("recipe", "none") == "none":
    return config
  from absl import flags
  from ml_collections import config_flags

  from ssd_jax import recipe  # Imports this module: not at the top.

  fixed = set(config_flags.get_override_values(flags.FLAGS["config"]))
  config_lib.validate_config(config, num_devices=1)
  choices = recipe.choose(dataset_stats(config.data, "train"), config, fixed)
  print(recipe.format_choices(choices))
  return recipe.apply(config, choices)


def main(argv: Sequence[str]) -> int:
  """The command line (see the module docstring); exit 2 on missing data."""
  from absl import flags

  from ssd_jax.data.sources import DataNotFoundError

  if len(argv) > 1:
    print(f"error: unexpected arguments {list(argv[1:])}", file=sys.stderr)
    return 2
  FLAGS = flags.FLAGS
  try:
    config = _with_recipe(FLAGS.config)
    result = run(config, FLAGS.workdir, FLAGS.split)
  except (DataNotFoundError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_summary(result))
  print(
    f"wrote {os.path.join(FLAGS.workdir, 'analysis.json')} and "
    f"{os.path.join(FLAGS.workdir, 'analysis')}/*.png"
  )
  return 0


if __name__ == "__main__":
  # The flags exist only when this module is the program: `ssd_jax.main`
  # defines flags of the same names, and train imports this module.
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/voc_folder.py:small."
  )
  flags.DEFINE_string("workdir", None, "Writes analysis.json, analysis/.")
  flags.DEFINE_enum("split", "train", list(SPLITS), "The split to analyse.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
