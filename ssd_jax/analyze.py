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

The statistics (`ssd_jax.box_stats`) read a split's records only
(annotations, no pixels, no tf.data pipeline, no augmentation): the table
routes of `data.dataset` (synthetic, VOC folders, a VOCdevkit, a COCO
folder); tfds is not read.
"""

import fractions
import itertools
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from ssd_jax import box_stats, budget, recipe, runtime, visualize
from ssd_jax import config as config_lib
from ssd_jax import default_boxes as db
from ssd_jax.box_stats import SIZE_BUCKETS, SPLITS
from ssd_jax.data import dataset

# Histogram edges of box sizes (fractions of the input side) and of aspect
# ratios w / h in the input (the last bin of each is open).
SIZE_EDGES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8)
ASPECT_EDGES = (0.0, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 2, 2, 3, 4)
# Boxes per image: counts 0 .. this - 1, then one open bin.
_MAX_COUNT_BIN = 20


def _histogram(values: np.ndarray, edges: Sequence[float], names) -> dict:
  counts = np.histogram(values, np.append(edges, np.inf))[0]
  return {name: int(c) for name, c in zip(names, counts, strict=True)}


def _edge_names(edges: Sequence[float], fmt) -> list[str]:
  names = [f"{fmt(a)}-{fmt(b)}" for a, b in itertools.pairwise(edges)]
  return names + [f">={fmt(edges[-1])}"]


def _ratio_name(r: float) -> str:
  return str(fractions.Fraction(r).limit_denominator(10))


def _coverage_json(
  report: box_stats.CoverageReport, class_names: Sequence[str], priors_what: str
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
  stats = box_stats.dataset_stats(config.data, split)
  model = box_stats.model_for(config, stats)
  threshold = float(config.iou_threshold)
  names = stats.class_names
  sizes = box_stats.box_size(stats.boxes)
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
        box_stats.prior_coverage(
          stats.boxes,
          priors,
          threshold,
          stats.labels,
          box_stats.map_rows(model),
        ),
        names,
        what,
      ),
      "num_priors": len(priors),
    },
    "fitted": None,
  }
  if box_stats.can_fit(config.model):
    train = stats if split == "train" else box_stats.dataset_stats(config.data)
    fitted = box_stats.fitted_prior_config(config, train)
    fitted_priors = db.prior_boxes(fitted)
    result["fitted"] = {
      **_coverage_json(
        box_stats.prior_coverage(
          stats.boxes,
          fitted_priors,
          threshold,
          stats.labels,
          box_stats.map_rows(model, fitted),
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

  fixed = set(config_flags.get_override_values(flags.FLAGS["config"]))
  config_lib.validate_config(config, num_devices=1)
  stats = box_stats.dataset_stats(config.data, "train")
  choices = recipe.choose(stats, config, fixed, budget.machine_speed())
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
  # The recipe's speed probe runs under the flags training runs under.
  runtime.apply_xla_cpu_flags()
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
