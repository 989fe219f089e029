"""The quick recipe: training choices adapted to a dataset's boxes.

`config.recipe = "quick"` (the default of `configs/voc_folder.py:small`)
asks training to choose, from the training split's boxes
(`box_stats.dataset_stats`), the settings that a short CPU run on a dataset
nobody tuned it for most depends on, and to log each choice with its reason
at start-up:

- `model.image_size`: the largest multiple of 32 that still trains
  `target_epochs` epochs (`TARGET_EPOCHS`, more above `TARGET_SIDE`) in
  the time (`budget.seconds_per_image` at this machine's speed,
  `budget.machine_speed`), but at least the side where the small objects
  (the 10th percentile of the boxes' sqrt(w h)) span `MIN_OBJECT_PIXELS`
  pixels (`MIN_OBJECT_PIXELS_STRIDE4` for a VGG model, which can take
  conv3_3's stride-4 map), within [`MIN_SIZE`, `MAX_SIZE`] and no larger
  than the images themselves (a 120 px image is not upsampled to 256);
  chosen again from the run's own timed steps when they clearly give
  another size (`rechoose`: the run then starts again at it);
- `num_steps`: `epochs` passes over the training split, where `epochs`
  falls with the dataset's size, the input size and conv3_3's map (as
  many as fit in `budget.TRAIN_SECONDS` at the cost per image measured on 2
  CPU cores, scaled by this machine's speed), with a linear warm-up and
  x0.1 decays at 75% and 92% of the steps, and checkpoints and evaluations
  spread over the run; after its first steps, and again at 40% of them,
  the run re-plans them from its own speed (`replan`, `train._Replan`);
- `data.augment_config`: the paper's photometric distortions and mirror,
  with zoom-out only as far as the small objects stay `MIN_ZOOMED_PIXELS`
  wide, and mild random patches instead of the IoU crops (on a 10-minute
  schedule those slowed learning far more than they helped: see
  `_augmentation`); no mirror when class names come in left/right pairs
  (`mirror_pairs`);
- `data.max_boxes`: the training images' most boxes (rounded up to
  `PAD_MULTIPLE`) rather than the config's padding, which matching pays
  for; evaluation keeps the config's (`data.eval_max_boxes`);
- `eval.flip`: evaluation, prediction and export average each default
  box's outputs with the mirrored image's (`detect.predict`) when training
  mirrors the images and the default boxes are mirror-symmetric;
- for the VGG models, `model.priors = "fitted"`: default boxes fitted to
  the boxes at the chosen input size (`train.fit_priors`);
  `model.conv3_3_map = True` when conv3_3's stride-4 map lets the fitted
  boxes cover at least `CONV3_3_MIN_GAIN` more of the training boxes (small
  objects that conv4_3's stride-8 grid cannot reach at the matching
  threshold); `model.batch_norm = True`: a BatchNorm after every
  convolution of the trunk and the extra blocks (from scratch it learns
  faster); `model.width = RECIPE_WIDTH` (3/16 of VGG16's channels:
  as much learnt per step as 1/4, in less time); and `model.stem =
  "space_to_depth"` (conv1 at half resolution on 2x2 pixel blocks: the
  same maps at `budget.SPACE_TO_DEPTH_COST` of the time, so more epochs
  fit).

A field set on the command line (`--config.model.image_size=128`) is the
user's choice and is kept; the recipe logs it as such. The augmentation is
kept field by field: `--config.data.augment_config="{'rotate90_prob': 0.5}"`
adds quarter turns to the recipe's zoom-out, patches and mirror. The choices are
written to `<workdir>/recipe.json` at the first start and read back from
there on a resume and by `--mode=eval`/`predict` and the exporter, so the
model is rebuilt as it was trained even if the data changed.
"""

import json
import math
import os
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from ssd_jax import box_stats, budget, models
from ssd_jax import default_boxes as db
from ssd_jax.data import augment as augment_lib
from ssd_jax.data import dataset

RECIPE_FILE = "recipe.json"

# Input sizes the quick recipe picks from (multiples of 32).
MIN_SIZE = 96
MAX_SIZE = 256
# The input side is the largest that still trains TARGET_EPOCHS epochs in
# budget.TRAIN_SECONDS at this machine's speed, and never one where the small
# objects (10th percentile of sqrt(w h)) span fewer than MIN_OBJECT_PIXELS input
# pixels (conv4_3's stride 8 is the zoo models' finest grid: smaller boxes are
# rarely within the matching IoU of a default box), MIN_OBJECT_PIXELS_STRIDE4
# for a VGG model, which can take conv3_3's stride-4 map. The epochs are planned
# ones (`budget.TRAIN_SECONDS` of steps); a run trains ~0.85 of them (start-up,
# evaluations, and, before 2026-12-02's traced schedule, the re-plans'
# recompilations). Whole 10-minute runs on days the machine ran 1.4-1.8x slower
# than the cost table's: 128 px beat 96 px from about 38 trained epochs on
# (mixed_sizes 0.894 at 128 px / 45 epochs against 0.843 at 96 / 73,
# shapes10_upright 0.950 at 128 / 42 against 0.909 at 96 / 74; shapes10 0.630 at
# 128 / 36 and 0.535 at 128 / 29 against 0.646 at 96 / 58), and more pixels stop
# paying below that (small_crowded 0.799 at 128 / 52, its small objects 5.4 px,
# against 0.778 at 160 / 38; at width 1/4, 0.44 at 192 / 15). 45 planned epochs
# are ~38 trained. Above TARGET_SIDE a side must plan more, in proportion to its
# pixels (`target_epochs`: 70 at 160 px): in four pairs of whole runs 160 px
# lost to 128 px at 38-62 epochs run, by less with more (small_crowded -0.021 at
# 38, -0.024 at 44, -0.019 at 40 of 300 images; mixed_sizes, 225 images, -0.011
# at 62; own_data_2026-12-02_160_vs_128.md).
TARGET_EPOCHS = 45
TARGET_SIDE = 128
MIN_OBJECT_PIXELS = 12.0
MIN_OBJECT_PIXELS_STRIDE4 = 5.0
# The VGG models' width (channel multiplier) for the quick run: 3/16 of
# VGG16's channels trains at 1.25-1.3x the images per second of
# `:small`'s 1/4 and learns as much per step, so more epochs fit
# (small_crowded at 160 px: mAP 0.77 after 38 epochs against 0.69 after
# 27 at 1/4; shapes10 at 96 px: 0.72 after 90 against 0.73 after 71); the
# width `budget`'s cost table was measured at.
RECIPE_WIDTH = budget.COST_WIDTH
MIN_EPOCHS, MAX_EPOCHS = 8, 100
# Zoom-out keeps the small objects at least this many pixels wide.
MIN_ZOOMED_PIXELS = 16.0
# The crops: random patches of at least this fraction of the image side,
# aspect ratios (w / h, relative to the image) in this range.
CROP_MIN_SCALE = 0.7
CROP_ASPECT = (0.8, 1.25)
# conv3_3 joins the source maps when it raises the fitted boxes' coverage
# (boxes whose best default box reaches the matching IoU) by this much.
CONV3_3_MIN_GAIN = 0.03
# `rechoose` starts a run again at another input size only when the size
# it runs at is not the rule's at its own steps' speed this fraction either
# side (starting again costs ~40 s of the ~9 minutes).
RECHOOSE_MARGIN = 0.1
# data.max_boxes: the training split's most boxes per image, rounded up to
# a multiple of this.
PAD_MULTIPLE = 8


class Choice(NamedTuple):
  """One recipe decision.

  Attributes:
    field: the config field, dotted below `config` ("model.image_size").
    value: its value.
    reason: why (the statistic it follows from), for the log.
    source: "recipe" (chosen now), "command line" (kept as set) or
      "workdir" (read back from `recipe.json`).
  """

  field: str
  value: Any
  reason: str
  source: str = "recipe"


def _round_to(x: float, multiple: int) -> int:
  return int(multiple * round(x / multiple))


def choose(
  stats: box_stats.DatasetStats,
  config: ml_collections.ConfigDict,
  fixed: Collection[str] = (),
  speed: budget.Speed | None = None,
) -> list[Choice]:
  """The quick recipe's choices for a training split.

  A field in `fixed` keeps the config's value (source "command line") and
  the choices that follow from it use that value: a fixed image size sets
  the epochs and the zoom-out, a fixed `num_steps` the warm-up and the
  evaluation and checkpoint periods.

  Args:
    stats: the training split's boxes (`box_stats.dataset_stats`); at least
      one box.
    config: the config being adapted (its `batch_size` and fixed fields).
    fixed: dotted fields set on the command line.
    speed: this machine's speed (`budget.machine_speed`); None: the cost
      table's machine (`budget.Speed()`).

  Returns:
    Choices for model.image_size, model.priors, model.conv3_3_map,
    model.batch_norm, model.width and model.stem (VGG models only: the
    zoo's other models bring their own maps, default boxes, BatchNorm,
    widths and stems),
    lr_schedule, num_steps, warmup_steps, lr_boundaries, eval_every,
    checkpoint_every, data.augment_config, data.max_boxes,
    data.eval_max_boxes and eval.flip, in that order.

  Raises:
    ValueError: when the split has no boxes (nothing to adapt to).
  """
  if len(stats.boxes) == 0:
    raise ValueError(
      "config.recipe='quick' adapts to the training boxes, but the training "
      "split has none; set config.recipe='none'"
    )
  speed = speed or budget.Speed()
  choices = []
  conv3_3 = False

  def pick(field: str, value: Any, reason: str) -> Any:
    if field in fixed:
      value, reason, source = _get(config, field), "set there", "command line"
    else:
      source = "recipe"
    choices.append(Choice(field, value, reason, source))
    return value

  small = _small_objects(stats)
  vgg = box_stats.can_fit(config.model)
  size = pick("model.image_size", *_image_size(stats, config, fixed, speed))
  if vgg:  # The zoo brings its own boxes, BatchNorm and widths.
    priors = pick(
      "model.priors",
      "fitted",
      "default-box scales fitted to the training boxes (train.fit_priors)",
    )
    field = "model.conv3_3_map"
    if field in fixed or priors not in models.CONV3_3_PRIORS:
      conv3_3 = pick(field, False, "the named default boxes have no conv3_3")
    else:
      cover = [_coverage(stats, config, size, priors, m) for m in (0, 1)]
      conv3_3 = pick(
        field,
        cover[1] - cover[0] >= CONV3_3_MIN_GAIN,
        f"with conv3_3's stride-4 map the default boxes ({priors}) cover "
        f"{cover[1]:.1%} of the training boxes, without {cover[0]:.1%} "
        f"(IoU >= {float(config.iou_threshold):g}; added for a gain >= "
        f"{CONV3_3_MIN_GAIN:.0%})",
      )
    pick(
      "model.batch_norm",
      True,
      "BatchNorm after every trunk and extra-block convolution: from "
      "scratch it learns faster (shapes10, 160 px: mAP 0.47 after 818 "
      "steps with it, 0.43 after 900 without)",
    )
    width = pick(
      "model.width",
      RECIPE_WIDTH,
      f"{RECIPE_WIDTH:g} of VGG16's channels: 1.25-1.3x the images per "
      "second of 1/4 and as much learnt per step, so more epochs fit",
    )
    stem = pick("model.stem", *_stem(size))
  else:  # The zoo: planned at the VGG's (unmeasured) cost.
    width, stem = RECIPE_WIDTH, "vgg"
  batch = int(config.batch_size)
  cost = budget.seconds_per_image(
    size, conv3_3, float(width), stem, speed.factor
  )
  epochs = budget.TRAIN_SECONDS / stats.num_images / cost
  epochs = int(np.clip(round(epochs), MIN_EPOCHS, MAX_EPOCHS))
  schedule = pick(
    "lr_schedule",
    "piecewise",
    "the full rate for 75% of the run (a cosine decay measured 0.37 mAP "
    "where this gave 0.55, shapes10, 160 px)",
  )
  steps = pick(
    "num_steps",
    max(1, math.ceil(epochs * stats.num_images / batch)),
    f"{epochs} epochs of {stats.num_images} images at batch {batch}: "
    f"{budget.TRAIN_SECONDS / 60:.1f} min at ~{cost * 1e3:.0f} ms per image "
    f"({size} px"
    + (", conv3_3's map" if conv3_3 else "")
    + (", space_to_depth stem" if stem == "space_to_depth" else "")
    + f", measured on 2 CPU cores, x{speed.factor:.2f} for this machine), "
    f"within {MIN_EPOCHS}..{MAX_EPOCHS} epochs",
  )
  for field, (value, reason) in budget.follow_steps(steps, schedule).items():
    pick(field, value, reason)
  field = "data.augment_config"
  augment, reason = _augmentation(small, size, stats.class_names)
  if field in fixed:  # The augmentation fields set there win, field by field.
    given = dict(_get(config, field) or {})
    augment = {**augment, **given}
    set_there = ", ".join(f"{k}={v}" for k, v in given.items())
    choices.append(
      Choice(field, augment, f"{set_there} set there; {reason}", "command line")
    )
  else:
    augment = pick(field, augment, reason)
  for field, value, reason in _padding(stats, config):
    pick(field, value, reason)
  pick("eval.flip", *_flip_test(stats, config, size, conv3_3, augment))
  return choices


def _small_objects(stats: box_stats.DatasetStats) -> float:
  """The small objects' size the recipe plans for: the 10th percentile of
  the training boxes' sqrt(w h), as a fraction of the image side."""
  return float(np.quantile(box_stats.box_size(stats.boxes), 0.1))


def _image_size(
  stats: box_stats.DatasetStats,
  config: ml_collections.ConfigDict,
  fixed: Collection[str],
  speed: budget.Speed,
) -> tuple[int, str]:
  """(model.image_size, reason): the size rule (see `TARGET_EPOCHS`,
  `target_epochs`)."""
  small = _small_objects(stats)
  image_side = float(np.median(stats.image_sizes.max(axis=1)))
  stride4 = _may_take_conv3_3(config, fixed)
  min_pixels = MIN_OBJECT_PIXELS_STRIDE4 if stride4 else MIN_OBJECT_PIXELS
  cap = max(MIN_SIZE, min(MAX_SIZE, _round_to(image_side, 32)))
  floor = int(np.clip(32 * math.ceil(min_pixels / max(small, 1e-3) / 32),
                      MIN_SIZE, cap))  # fmt: skip
  vgg = box_stats.can_fit(config.model)
  # The cost the schedule will be planned at: conv3_3's map if it may come.
  plan_width = (
    float(config.model.width)
    if vgg and "model.width" in fixed
    else RECIPE_WIDTH
  )

  def stem_at(side: int) -> str:
    if "model.stem" in fixed or not vgg:
      return config.model.get("stem", "vgg")
    return _stem(side)[0]

  def epochs_at(side: int) -> float:
    cost = budget.seconds_per_image(
      side, stride4, plan_width, stem_at(side), speed.factor
    )
    return budget.TRAIN_SECONDS / stats.num_images / cost

  enough = [
    s for s in range(floor, cap + 1, 32) if epochs_at(s) >= target_epochs(s)
  ]
  above = f"{target_epochs(TARGET_SIDE + 32):.0f} at {TARGET_SIDE + 32} px"
  return max(enough, default=floor), (
    f"the largest side that plans >= {TARGET_EPOCHS} epochs (more above "
    f"{TARGET_SIDE} px, in proportion to the pixels: {above}) in "
    f"{budget.TRAIN_SECONDS / 60:.1f} min of steps (at the measured cost"
    + (", counting conv3_3's map" if stride4 else "")
    + f", {speed.describe()}), at least {floor}, where the small objects "
    f"(10th percentile of sqrt(wh): {small:.3f} of the image) span >= "
    f"{min_pixels:g} px, and at most {cap} (the images' ~{image_side:.0f} px)"
    + (
      ""
      if enough
      else f"; even {floor} px trains only {epochs_at(floor):.0f} epochs"
    )  # fmt: skip
  )


def target_epochs(side: int) -> float:
  """The planned epochs the size rule asks of an input side.

  `TARGET_EPOCHS` up to `TARGET_SIDE`, in proportion to the pixels above
  it (70.3 at 160 px, 101 at 192, 180 at 256 for 45 at 128; more than
  `MAX_EPOCHS` only where few images leave time to spare).
  """
  return TARGET_EPOCHS * max(1.0, (side / TARGET_SIDE) ** 2)


def _stem(size: int) -> tuple[str, str]:
  """(model.stem, reason) for a VGG model at an input side: space_to_depth
  where the side is even."""
  if size % 2:
    return "vgg", f"VGG16's stem: space_to_depth needs an even side, not {size}"
  return "space_to_depth", (
    "conv1 at half resolution on 2x2 pixel blocks (VGG16's stem at full "
    "resolution is about half the trunk's time): "
    f"{budget.SPACE_TO_DEPTH_COST:g}x the time per image, the same maps and "
    "default boxes"
  )


def replan(
  choices: Sequence[Choice],
  step: int,
  elapsed: float,
  seconds_per_step: float,
  recompile_seconds: float,
) -> list[Choice] | None:
  """The choices re-planned to the steps that fit at the run's own speed.

  The plan's steps come from a cost per image measured on one 2-core
  machine, scaled by a short probe of this machine's speed
  (`budget.machine_speed`); the run's own steps are the better measure.
  After a few of them the number of steps becomes `budget.replan_steps`
  (the run ends `budget.RUN_SECONDS` after it started) and the warm-up,
  decays, evaluations and checkpoints follow (`budget.follow_steps`).

  Args:
    choices: the run's choices (`choose`).
    step: the steps done.
    elapsed: seconds since training started (start-up, reading the data,
      the first step's compilation and the steps done).
    seconds_per_step: the measured seconds per step, compilation excluded.
    recompile_seconds: what compiling a new step will cost (a run started
      again: the first steps' time beyond the measured speed); 0 for a
      re-plan of the same run (the schedule's steps are the step's input).

  Returns:
    The choices with num_steps and those following it re-planned (source
    "recipe", the measurement and the plan's steps in the reason), or None
    when `num_steps` was set on the command line or the plan is within
    `budget.REPLAN_TOLERANCE`.
  """
  by = {c.field: c for c in choices}
  planned = by.get("num_steps")
  if planned is None or planned.source != "recipe":
    return None
  planned_steps = int(planned.value)
  steps = budget.replan_steps(
    planned_steps, step, elapsed, seconds_per_step, recompile_seconds
  )
  if steps is None:
    return None
  reason = (
    f"re-planned at step {step} from the run's own speed: "
    f"{seconds_per_step * 1e3:.0f} ms per step, {elapsed:.0f} s gone, to end "
    f"{budget.RUN_SECONDS / 60:.1f} min after the start; planned "
    f"{planned_steps}: {planned.reason}"
  )
  schedule = by["lr_schedule"].value if "lr_schedule" in by else "piecewise"
  follow = budget.follow_steps(steps, schedule)
  new = []
  for c in choices:
    if c.field == "num_steps":
      c = Choice(c.field, steps, reason, "recipe")
    elif c.field in follow and c.source == "recipe":
      c = Choice(c.field, *follow[c.field], "recipe")
    new.append(c)
  return new


def table_seconds_per_step(choices: Sequence[Choice], batch_size: int) -> float:
  """The cost table's seconds per training step (speed 1) for the model the
  choices describe: `budget.seconds_per_image` at their input size, conv3_3
  map, width and stem (VGG16's stem, `budget.COST_WIDTH` and no conv3_3 map
  where they have none, as `choose` plans the zoo), times the batch."""
  by = {c.field: c.value for c in choices}
  return batch_size * budget.seconds_per_image(
    int(by["model.image_size"]),
    bool(by.get("model.conv3_3_map", False)),
    float(by.get("model.width", budget.COST_WIDTH)),
    str(by.get("model.stem", "vgg")),
  )


def rechoose(
  stats: box_stats.DatasetStats,
  config: ml_collections.ConfigDict,
  fixed: Collection[str],
  choices: Sequence[Choice],
  step: int,
  seconds_per_step: float,
) -> list[Choice] | None:
  """New choices when the run's own speed clearly gives another input size.

  The plan's input size follows from the speed probe
  (`budget.machine_speed`), a coarse measure (it read 1.30x where the run's
  steps then ran 1.55x the cost table's time). Once the run has timed its
  steps, the size rule runs again at the speed they give
  (`budget.speed_from_steps`). When the run's size lies outside the sizes
  it picks at speeds `RECHOOSE_MARGIN` either side (starting again costs
  about a tenth of the time: not worth it near the rule's boundary),
  `choose` gives the new choices at the measured speed; the caller starts
  the run again with them and fits their steps to the time left (`replan`
  at step 0).

  Args:
    stats: the training split's boxes, as `choose` took them.
    config: the config `choose` adapted (before its choices were applied).
    fixed: the fields set on the command line, as `choose` kept them.
    choices: the run's choices.
    step: the steps done (for the reason).
    seconds_per_step: the measured seconds per step, compilation excluded.

  Returns:
    `choose`'s choices at the measured speed (the size's reason says it
    was re-chosen, and from what), or None when the size stays or was not
    the recipe's to choose.
  """
  by = {c.field: c for c in choices}
  size = by.get("model.image_size")
  if size is None or size.source != "recipe" or not seconds_per_step > 0:
    return None
  table = table_seconds_per_step(choices, int(config.batch_size))
  speed = budget.speed_from_steps(seconds_per_step, table)
  # The sizes speeds RECHOOSE_MARGIN faster and slower give (the rule takes
  # smaller sizes at slower speeds): the run's size is clearly wrong only
  # outside them.
  largest, smallest = (
    _image_size(stats, config, fixed, speed._replace(factor=f))[0]
    for f in (
      speed.factor * (1 - RECHOOSE_MARGIN),
      speed.factor * (1 + RECHOOSE_MARGIN),
    )
  )
  if smallest <= size.value <= largest:
    return None
  out = []
  for c in choose(stats, config, fixed, speed):
    if c.field == "model.image_size":
      c = c._replace(
        reason=f"re-chosen at step {step} from the run's own speed (the "
        f"probe's had given {size.value} px): {c.reason}"
      )
    out.append(c)
  return out


def _flip_test(
  stats: box_stats.DatasetStats,
  config: ml_collections.ConfigDict,
  size: int,
  conv3_3_map: bool,
  augment: dict[str, Any],
) -> tuple[bool, str]:
  """(eval.flip, reason): test-time mirroring (`detect.predict`) when
  training mirrors the images and the default boxes are mirror-symmetric.

  Measured on the held-out sets' trained models (the same weights, mirrored
  or not): +0.007 shapes10 96 px, +0.017 shapes10 128 px, +0.008
  small_crowded, +0.007 mixed_sizes (mAP@0.5).
  """
  merged = {**dict(config.data.get("augment_config") or {}), **dict(augment)}
  flip_prob = float(
    merged.get("flip_prob", augment_lib.AugmentConfig().flip_prob)
  )
  if flip_prob <= 0:
    return False, "training does not mirror the images"
  cfg = _at_size(config, size, conv3_3_map)
  try:
    db.mirror_permutation(box_stats.model_for(cfg, stats).priors())
  except ValueError as e:
    return False, f"no test-time mirror: {e}"
  return True, (
    "each default box's outputs averaged with the mirrored image's (the "
    "model trains on mirrored images): +0.007 to +0.017 mAP on four "
    "trained models of three held-out sets, twice the evaluation's forward"
  )


def _padding(
  stats: box_stats.DatasetStats, config: ml_collections.ConfigDict
) -> list[tuple[str, int, str]]:
  """(field, value, reason) of data.max_boxes, the most boxes in one
  training image rather than the config's padding, and of
  data.eval_max_boxes, the config's evaluation padding, kept.

  Matching builds an [M, P] IoU per image over the M padded boxes, so
  padding to 64 boxes what holds at most 4 makes it 16x dearer for nothing.
  Training never sees more boxes than an image holds (the crops only drop
  some), so the targets are the same.
  """
  configured = dataset.max_boxes(config.data)
  most = int(np.bincount(stats.image_index).max())  # choose: >= 1 box
  return [
    (
      "data.max_boxes",
      min(
        configured, max(PAD_MULTIPLE, -(-most // PAD_MULTIPLE) * PAD_MULTIPLE)
      ),
      f"the most boxes in one training image: {most} (padded to a multiple "
      f"of {PAD_MULTIPLE}, at most the config's {configured}); matching's "
      "cost grows with the padded boxes",
    ),
    (
      "data.eval_max_boxes",
      dataset.max_boxes(config.data, train=False),
      "the config's evaluation padding (test images may hold more boxes)",
    ),
  ]


def _may_take_conv3_3(
  config: ml_collections.ConfigDict, fixed: Collection[str]
) -> bool:
  """Whether the model can get conv3_3's map: a VGG model whose
  conv3_3_map is on or left to the recipe, with default boxes by the rule
  (not a named set)."""
  model = config.model
  if not box_stats.can_fit(model):
    return False
  if "model.conv3_3_map" in fixed:
    return bool(model.get("conv3_3_map", False))
  return (
    "model.priors" not in fixed or model.get("priors") in models.CONV3_3_PRIORS
  )


def _at_size(
  config: ml_collections.ConfigDict,
  size: int,
  conv3_3_map: bool,
  **model_fields: Any,
) -> ml_collections.ConfigDict:
  """A copy of the config whose model has this input size and conv3_3 map."""
  model_cfg = {
    **config.model.to_dict(),
    "image_size": size,
    "conv3_3_map": bool(conv3_3_map),
    **model_fields,
  }
  return ml_collections.ConfigDict({**config.to_dict(), "model": model_cfg})


def _coverage(
  stats: box_stats.DatasetStats,
  config: ml_collections.ConfigDict,
  size: int,
  priors: str,
  conv3_3_map: bool,
) -> float:
  """Coverage of the training boxes by a VGG SSD's default boxes at `size`.

  `priors` "fitted": boxes fitted to `stats` (`box_stats.fitted_prior_config`);
  "default": the model's own rule.
  """
  cfg = _at_size(config, size, conv3_3_map, priors=priors)
  prior_config = (
    box_stats.fitted_prior_config(cfg, stats)
    if priors == "fitted"
    else box_stats.rule_prior_config(cfg, stats)
  )
  return box_stats.prior_coverage(
    stats.boxes, db.prior_boxes(prior_config), float(config.iou_threshold)
  ).coverage


def mirror_pairs(class_names: Sequence[str]) -> list[tuple[str, str]]:
  """Classes that a horizontal mirror turns into each other, by name.

  A name with "left" whose "right" counterpart is also a class
  ("arrow_left" and "arrow_right", "LeftHand" and "RightHand"): the mirror
  would show one class's object under the other's label.

  Returns:
    The (left, right) name pairs, in class order.
  """
  lower = {name.lower(): name for name in class_names}
  pairs = []
  for name in class_names:
    twin = name.lower().replace("left", "right")
    if "left" in name.lower() and twin in lower:
      pairs.append((name, lower[twin]))
  return pairs


def _augmentation(
  small: float, size: int, class_names: Sequence[str] = ()
) -> tuple[dict[str, Any], str]:
  """Zoom-out scaled to the objects' sizes at the input size, mild crops;
  no mirror when two classes are each other's mirror image (`mirror_pairs`).

  The crops are the release's plain random patch (no IoU samplers), at
  least `CROP_MIN_SCALE` of the image side with an aspect ratio within
  `CROP_ASPECT`: a zoom-in of up to 1.4x and a shift, which moves every
  object onto other cells and sizes without the paper's 3x zoom-ins that
  a short schedule cannot afford.

  Returns:
    (augment_config fields, the reason).
  """
  # Zoom-out by r shrinks every object r times: stop where the small ones
  # would fall below MIN_ZOOMED_PIXELS.
  ratio = float(np.clip(small * size / MIN_ZOOMED_PIXELS, 1.0, 4.0))
  ratio = math.floor(ratio * 4) / 4  # 0.25 steps, for a readable log
  config = {
    "expand_prob": 0.5 if ratio >= 1.25 else 0.0,
    "max_expand_ratio": ratio,
    # IoU crops off: on a quick schedule they cost more than they give.
    "min_ious": (),
    "min_scale": CROP_MIN_SCALE,
    "min_aspect": CROP_ASPECT[0],
    "max_aspect": CROP_ASPECT[1],
  }
  pairs = mirror_pairs(class_names)
  if pairs:
    config["flip_prob"] = 0.0
  small_px = small * size
  zoom = (
    f"zoom-out up to {ratio:.2f}x keeps the small objects ({small_px:.0f} px "
    f"at {size}) >= {MIN_ZOOMED_PIXELS:.0f} px"
    if ratio >= 1.25
    else f"no zoom-out: the small objects ({small_px:.0f} px at {size}) "
    f"would fall below {MIN_ZOOMED_PIXELS:.0f} px"
  )
  return (
    config,
    f"{zoom}; random patches of >= {CROP_MIN_SCALE:.0%} of the side, "
    "without the paper's IoU crops (shapes10, 160 px, BatchNorm, 900 "
    "steps: 0.49 with these patches, 0.21 with the paper's crops); the "
    "paper's photometric distortions"
    + (
      "; no mirror: it turns "
      + ", ".join(f"{a} into {b}" for a, b in pairs)
      + " (and back)"
      if pairs
      else " and mirror"
    ),
  )


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  node = config
  for key in field.split("."):
    node = node[key]
  return node


def _set(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
  *parents, key = field.split(".")
  node = config
  for p in parents:
    node = node[p]
  if isinstance(value, list):
    value = tuple(value)
  node[key] = value


def _from_json(value: Any) -> Any:
  """JSON lists back to the config's tuples (also inside augment_config)."""
  if isinstance(value, dict):
    return {k: _from_json(v) for k, v in value.items()}
  return (
    tuple(_from_json(v) for v in value) if isinstance(value, list) else value
  )


def read(workdir: str) -> list[Choice] | None:
  """The choices stored in `<workdir>/recipe.json`, or None if absent."""
  path = os.path.join(workdir, RECIPE_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      stored = json.load(f)
      return [
        Choice(c["field"], _from_json(c["value"]), c["reason"], "workdir")
        for c in stored["choices"]
      ]
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{path} is not a recipe file: {e}") from e


def write(workdir: str, choices: Sequence[Choice]) -> str:
  """Writes the choices to `<workdir>/recipe.json`; returns the path."""
  path = os.path.join(workdir, RECIPE_FILE)
  os.makedirs(workdir, exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(
      {
        "choices": [
          {
            "field": c.field,
            "value": c.value,
            "reason": c.reason,
            "source": c.source,
          }
          for c in choices
        ]
      },
      f,
      indent=2,
    )
  os.replace(tmp, path)
  return path


def apply(
  config: ml_collections.ConfigDict, choices: Sequence[Choice]
) -> ml_collections.ConfigDict:
  """A copy of the config with the choices set (augment_config merged)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for c in choices:
    value = c.value
    if c.field == "data.augment_config":
      value = {**dict(_get(config, c.field) or {}), **dict(value)}
    _set(config, c.field, value)
  return config


def resolve(
  config: ml_collections.ConfigDict,
  workdir: str,
  fixed: Collection[str] = (),
  stats: box_stats.DatasetStats | None = None,
  *,
  choose_new: bool = True,
  store: bool = True,
  speed: budget.Speed | None = None,
) -> tuple[ml_collections.ConfigDict, list[Choice]]:
  """The config a run uses: its recipe's choices applied.

  The choices stored in the workdir win when there are (a resume, or
  eval/predict/export of a trained run): they describe the trained model.
  Otherwise, with `config.recipe == "quick"` and `choose_new`, new choices
  from the training split (`choose`, keeping the `fixed` fields) are
  written to the workdir. Otherwise the config is returned as it is.

  Args:
    config: the run's config.
    workdir: the training workdir.
    fixed: dotted fields set on the command line; kept as they are.
    stats: the training split's statistics (read when None and needed).
    choose_new: False for a workdir that already holds a run (its
      checkpoints were trained without a recipe file) and for eval,
      predict and export: never choose, only read.
    store: write new choices to the workdir (False on the processes of a
      multi-host run other than process 0).
    speed: this machine's speed for new choices; None probes it
      (`budget.machine_speed`, ~1 s, every process of a multi-host run).

  Returns:
    (the config with the choices applied, the choices with their source).
  """
  stored = read(workdir)
  if stored is not None:
    return apply(config, stored), stored
  if config.get("recipe", "none") == "none" or not choose_new:
    return config, []
  if stats is None:
    stats = box_stats.dataset_stats(config.data, "train")
  if speed is None:
    speed = budget.machine_speed()
  choices = choose(stats, config, fixed, speed)
  if store:
    write(workdir, choices)
  return apply(config, choices), choices


def format_choices(choices: Sequence[Choice]) -> str:
  """The start-up log block: one line per choice."""
  lines = ["quick recipe (config.recipe='quick'):"]
  for c in choices:
    value = c.value
    if isinstance(value, dict):
      value = ", ".join(f"{k}={v}" for k, v in value.items())
    lines.append(f"  {c.field} = {value}  [{c.source}: {c.reason}]")
  return "\n".join(lines)
