"""Tests for ssd_jax.recipe: the quick recipe's choices, kept and stored."""

import json
import os

import numpy as np
import pytest

from ssd_jax import box_stats, budget, models, recipe
from ssd_jax import config as config_lib
from ssd_jax import default_boxes as db


def _stats(sizes, image_hw=(160, 160), num_images=None, seed=0):
  """DatasetStats of square boxes with these sqrt(w h) sizes."""
  rng = np.random.default_rng(seed)
  sizes = np.asarray(sizes, np.float32)
  x0 = rng.uniform(0, 1 - sizes)
  y0 = rng.uniform(0, 1 - sizes)
  boxes = np.stack([x0, y0, x0 + sizes, y0 + sizes], 1).astype(np.float32)
  n = num_images or max(1, len(sizes) // 2)
  return box_stats.DatasetStats(
    num_images=n,
    image_sizes=np.tile(np.asarray(image_hw, np.int32), (n, 1)),
    boxes=boxes,
    labels=np.ones(len(sizes), np.int32),
    image_index=(np.arange(len(sizes)) % n).astype(np.int32),
    class_names=("a",),
    difficult=np.zeros(len(sizes), bool),
  )


def _config():
  config = config_lib.config_from_file("configs/voc_folder.py", "small")
  config.data.root = "/nonexistent"
  return config


def _by_field(choices):
  return {c.field: c for c in choices}


def _size_rule(
  stats,
  stride4=True,
  width=recipe.RECIPE_WIDTH,
  stem="space_to_depth",
  speed=1.0,
):
  """The rule by hand: the largest side that plans its epochs (TARGET_EPOCHS,
  x (side / 128)^2 above 128 px), >= the floor."""
  w, h = (stats.boxes[:, 2:] - stats.boxes[:, :2]).T
  small = np.quantile(np.sqrt(w * h), 0.1)
  pixels = recipe.MIN_OBJECT_PIXELS_STRIDE4 if stride4 else 12.0
  cap = min(256, 32 * round(np.median(stats.image_sizes.max(1)) / 32))
  floor = min(max(96, 32 * int(np.ceil(pixels / small / 32))), cap)
  ok = [
    side
    for side in range(floor, cap + 1, 32)
    if budget.TRAIN_SECONDS
    / stats.num_images
    / budget.seconds_per_image(side, stride4, width, stem, speed)
    >= recipe.TARGET_EPOCHS * max(1, (side / 128) ** 2)
  ]
  return max(ok, default=floor), floor


def test_sides_above_128_px_must_plan_more_epochs():
  # In proportion to the pixels above 128 px: (160 / 128)^2 = 1.5625.
  target = recipe.TARGET_EPOCHS
  assert recipe.target_epochs(96) == recipe.target_epochs(128) == target
  assert recipe.target_epochs(160) == pytest.approx(1.5625 * target)
  assert recipe.target_epochs(256) == pytest.approx(4 * target)
  config = _config()
  stats = _stats(np.full(100, 0.2), image_hw=(200, 200), num_images=400)

  def epochs(side, factor):
    cost = budget.seconds_per_image(side, True, stem="space_to_depth")
    return budget.TRAIN_SECONDS / 400 / (cost * factor)

  # 400 images of 200 px, 0.85x the table's time: 160 px plans ~51
  # epochs, enough for 128 px's target but not for its own: 128 px.
  assert recipe.TARGET_EPOCHS < epochs(160, 0.85) < recipe.target_epochs(160)
  size, reason = recipe._image_size(stats, config, (), budget.Speed(0.85))
  assert size == 128 == _size_rule(stats, speed=0.85)[0]
  assert "more above 128 px, in proportion to the pixels: 70 at 160 px" in (
    reason
  )
  # Where 160 px plans its 70.3 (just faster) it is taken, and 192 px
  # (101 epochs) is not.
  fast = 0.99 * epochs(160, 1.0) / recipe.target_epochs(160)
  assert epochs(192, fast) < recipe.target_epochs(192)
  for factor, want in ((fast, 160), (fast / 0.97, 128)):
    speed = budget.Speed(factor)
    assert recipe._image_size(stats, config, (), speed)[0] == want


def test_image_size_trains_enough_epochs_above_the_small_objects():
  config = _config()
  rng = np.random.default_rng(1)
  boxes = rng.uniform(0.06, 0.3, 400)  # 10th percentile 0.084: floor 96
  got = {}
  for n in (50, 400, 1600):
    stats = _stats(boxes, image_hw=(480, 640), num_images=n)
    choice = _by_field(recipe.choose(stats, config))["model.image_size"]
    want, floor = _size_rule(stats)
    assert choice.value == want and floor == 96, n
    got[n] = choice.value
    assert choice.value % 32 == 0
    assert recipe.MIN_SIZE <= choice.value <= recipe.MAX_SIZE
  # Fewer images, more pixels: 50 images take 224 px (167 epochs, its
  # target 138; 256 px would plan 125 of its 180), 400 take 128 (66
  # epochs; 160 would give 43), 1600 the floor (29 epochs).
  assert (got[50], got[400], got[1600]) == (224, 128, 96)
  assert (
    "even 96 px trains only 29 epochs"
    in _by_field(recipe.choose(_stats(boxes, (480, 640), 1600), config))[
      "model.image_size"
    ].reason
  )
  # Small objects set the floor whatever the epochs: U(0.01, 0.3)'s 10th
  # percentile 0.039 wants 5 / 0.039 = 128.
  smaller = _stats(rng.uniform(0.01, 0.3, 400), (480, 640), num_images=1600)
  assert _size_rule(smaller)[1] == 128
  assert (
    _by_field(recipe.choose(smaller, config))["model.image_size"].value == 128
  )
  # 120 px images are not upsampled beyond their own size (rounded to 32).
  tiny_images = _stats(boxes, image_hw=(120, 100), num_images=50)
  assert (
    _by_field(recipe.choose(tiny_images, config))["model.image_size"].value
    == 128
  )
  # No conv3_3 map (the zoo, or set so): small objects need 12 px, a
  # stride-8 grid's: 12 / 0.084 = 143 -> 160, and no conv3_3 cost.
  stats = _stats(boxes, image_hw=(480, 640), num_images=1600)
  stride8 = [
    ("model.backbone", "mobilenet_v3_large", set()),
    ("model.conv3_3_map", False, {"model.conv3_3_map"}),
    ("model.priors", "coco", {"model.priors"}),
  ]
  for field, value, fixed in stride8:
    config = _config()
    config.model[field.split(".")[1]] = value
    by = _by_field(recipe.choose(stats, config, fixed))
    assert by["model.image_size"].value == _size_rule(stats, False)[0] == 160
    assert "conv3_3" not in by["model.image_size"].reason
  # A width set on the command line changes the cost, so the side.
  config = _config()
  config.model.width = 0.75  # 4x the cost per image
  stats = _stats(boxes, image_hw=(480, 640), num_images=50)
  wide = _by_field(recipe.choose(stats, config, {"model.width"}))
  assert wide["model.image_size"].value == _size_rule(stats, True, 0.75)[0]
  assert wide["model.image_size"].value < got[50]


def test_schedule_is_in_epochs_and_bounded():
  config = _config()
  sizes = np.full(800, 0.3)
  few = _by_field(recipe.choose(_stats(sizes, num_images=100), config))
  many = _by_field(recipe.choose(_stats(sizes, num_images=8000), config))
  most = recipe.MAX_EPOCHS
  assert f"{most} epochs" in few["num_steps"].reason
  assert few["num_steps"].value == -(-most * 100 // config.batch_size)  # ceil
  assert "8 epochs" in many["num_steps"].reason  # MIN_EPOCHS
  assert many["num_steps"].value == 8 * 8000 // config.batch_size
  for c in (few, many):
    steps = c["num_steps"].value
    assert 1 <= c["warmup_steps"].value < steps
    assert c["lr_schedule"].value == "piecewise"
    assert c["lr_boundaries"].value == (int(0.75 * steps), int(0.92 * steps))
    # Halfway and at the end, not again one step before the end.
    assert steps <= 2 * c["eval_every"].value < steps + 2


def test_augmentation_scales_with_object_size():
  config = _config()
  small = _by_field(recipe.choose(_stats(np.full(100, 0.06)), config))
  big = _by_field(recipe.choose(_stats(np.full(100, 0.6)), config))
  aug_small = small["data.augment_config"].value
  aug_big = big["data.augment_config"].value
  size = small["model.image_size"].value
  # Small objects: no zoom-out (it would take them below 16 px).
  assert aug_small["expand_prob"] == 0.0
  assert (
    0.06 * size / aug_small["max_expand_ratio"]
    >= (recipe.MIN_ZOOMED_PIXELS - 1e-6)
    or aug_small["max_expand_ratio"] == 1.0
  )
  # Large ones: zoom-out, never below MIN_ZOOMED_PIXELS, at most 4x.
  big_size = big["model.image_size"].value
  ratio = aug_big["max_expand_ratio"]
  assert aug_big["expand_prob"] == 0.5 and 1.25 <= ratio <= 4.0
  assert 0.6 * big_size / ratio >= recipe.MIN_ZOOMED_PIXELS
  for aug in (aug_small, aug_big):  # Mild patches, no IoU crops.
    assert aug["min_ious"] == () and aug["min_scale"] == recipe.CROP_MIN_SCALE
    assert (aug["min_aspect"], aug["max_aspect"]) == recipe.CROP_ASPECT


def test_no_boxes_is_an_error():
  stats = _stats([], num_images=3)
  with pytest.raises(ValueError, match="config.recipe='none'"):
    recipe.choose(stats, _config())


def test_resolve_keeps_command_line_fields_and_stores_choices(tmp_path):
  config = _config()
  config.model.image_size = 128  # As --config.model.image_size=128 sets it.
  stats = _stats(np.full(100, 0.06))
  workdir = str(tmp_path)
  resolved, choices = recipe.resolve(
    config, workdir, fixed={"model.image_size"}, stats=stats
  )
  by = _by_field(choices)
  assert by["model.image_size"].source == "command line"
  assert resolved.model.image_size == 128
  assert resolved.model.priors == "fitted"
  assert resolved.num_steps == by["num_steps"].value
  # Merged into the config's own augmentation settings.
  assert resolved.data.augment_config["min_scale"] == recipe.CROP_MIN_SCALE
  assert "flip_prob" not in resolved.data.augment_config  # The default.
  stored = json.load(open(os.path.join(workdir, recipe.RECIPE_FILE)))
  assert [c["field"] for c in stored["choices"]] == [c.field for c in choices]
  # A resume (or eval) reads the workdir's choices, not the data.
  again, read_back = recipe.resolve(_config(), workdir, stats=None)
  assert {c.source for c in read_back} == {"workdir"}
  assert again.model.image_size == 128
  assert again.data.augment_config == resolved.data.augment_config
  assert again.num_steps == resolved.num_steps
  text = recipe.format_choices(choices)
  for c in choices:
    assert c.field in text


def test_resolve_without_recipe_is_the_config(tmp_path):
  config = config_lib.config_from_file("configs/shapes.py")
  assert config.recipe == "none"
  resolved, choices = recipe.resolve(config, str(tmp_path))
  assert resolved is config and choices == []
  assert not os.listdir(tmp_path)


def test_unreadable_recipe_file_names_it(tmp_path):
  (tmp_path / recipe.RECIPE_FILE).write_text("{not json")
  with pytest.raises(ValueError, match="recipe.json"):
    recipe.read(str(tmp_path))


def test_eval_of_a_workdir_without_recipe_file_chooses_nothing(tmp_path):
  # A run trained with recipe "none", evaluated with a quick-recipe config:
  # the model is rebuilt as it was trained, and the workdir is not written.
  config = _config()
  resolved, choices = recipe.resolve(
    config, str(tmp_path), stats=_stats(np.full(10, 0.1)), choose_new=False
  )
  assert resolved is config and choices == []
  assert not os.listdir(tmp_path)


def test_fixed_fields_feed_the_derived_choices():
  config = _config()
  config.model.image_size = 192
  config.num_steps = 90
  stats = _stats(np.full(100, 0.2), num_images=400)
  by = _by_field(
    recipe.choose(stats, config, fixed={"model.image_size", "num_steps"})
  )
  assert by["num_steps"].value == 90 and by["num_steps"].source != "recipe"
  assert by["warmup_steps"].value == 4  # 5% of 90
  assert by["eval_every"].value == 45
  # Zoom-out follows the fixed size: 0.2 * 192 / 16 = 2.4 -> 2.25 (0.25s).
  assert by["data.augment_config"].value["max_expand_ratio"] == 2.25


def test_backbone_choices_for_the_vgg_model_only():
  stats = _stats(np.full(100, 0.2))
  vgg = _by_field(recipe.choose(stats, _config()))
  assert vgg["model.priors"].value == "fitted"
  assert vgg["model.batch_norm"].value is True
  assert vgg["model.width"].value == recipe.RECIPE_WIDTH
  assert vgg["model.stem"].value == "space_to_depth"
  config = _config()
  config.model.backbone = "mobilenet_v3_large"  # brings its own boxes, BN
  lite = _by_field(recipe.choose(stats, config))
  for field in ("model.priors", "model.batch_norm", "model.width"):
    assert field not in lite
  assert "model.stem" not in lite
  resolved = recipe.apply(config, list(lite.values()))
  assert resolved.model.priors == "default" and not resolved.model.batch_norm
  assert resolved.model.stem == "vgg"
  models.from_config(resolved.model, 3)  # the zoo takes the config as it is
  kept = _by_field(recipe.choose(stats, _config(), fixed={"model.batch_norm"}))
  assert kept["model.batch_norm"].value is False  # the config's, as set
  assert kept["model.batch_norm"].source == "command line"


def test_a_width_set_on_the_command_line_is_kept_and_costed():
  stats = _stats(np.full(100, 0.2), num_images=2000)
  config = _config()
  config.model.width = 0.375  # 2x RECIPE_WIDTH: 2x the time per image.
  own = _by_field(recipe.choose(stats, _config()))
  kept = _by_field(recipe.choose(stats, config, fixed={"model.width"}))
  assert kept["model.width"].value == 0.375
  assert kept["model.width"].source == "command line"
  size = own["model.image_size"].value
  assert kept["model.image_size"].value == size
  conv3_3 = own["model.conv3_3_map"].value
  assert budget.seconds_per_image(size, conv3_3, 0.375) == pytest.approx(
    2 * budget.seconds_per_image(size, conv3_3)
  )
  epochs = []
  for by, width in ((own, recipe.RECIPE_WIDTH), (kept, 0.375)):
    cost = budget.seconds_per_image(size, conv3_3, width, "space_to_depth")
    epochs.append(int(round(budget.TRAIN_SECONDS / 2000 / cost)))
    assert f"{epochs[-1]} epochs of 2000 images" in by["num_steps"].reason
  assert epochs[1] < epochs[0]


def test_no_mirror_when_classes_are_mirror_images():
  assert recipe.mirror_pairs(["arrow_up", "arrow_left", "arrow_right"]) == [
    ("arrow_left", "arrow_right")
  ]
  assert recipe.mirror_pairs(["LeftHand", "RightHand", "face"]) == [
    ("LeftHand", "RightHand")
  ]
  assert recipe.mirror_pairs(["left_lane", "car"]) == []  # no twin
  assert recipe.mirror_pairs([]) == []
  stats = _stats(np.full(100, 0.2))
  plain = _by_field(recipe.choose(stats, _config()))["data.augment_config"]
  assert "flip_prob" not in plain.value and "and mirror" in plain.reason
  stats = stats._replace(class_names=("arrow_left", "arrow_right", "disc"))
  guarded = _by_field(recipe.choose(stats, _config()))["data.augment_config"]
  assert guarded.value["flip_prob"] == 0.0
  assert "no mirror: it turns arrow_left into arrow_right" in guarded.reason


def test_augmentation_set_on_the_command_line_wins_field_by_field():
  stats = _stats(np.full(100, 0.2))
  own = _by_field(recipe.choose(stats, _config()))["data.augment_config"]
  config = _config()
  config.data.augment_config = {"rotate90_prob": 0.5, "min_scale": 0.3}
  fixed = {"data.augment_config"}
  got = _by_field(recipe.choose(stats, config, fixed))["data.augment_config"]
  assert got.value == {**own.value, "rotate90_prob": 0.5, "min_scale": 0.3}
  assert got.source == "command line"
  assert got.reason.startswith("rotate90_prob=0.5, min_scale=0.3 set there; ")
  resolved = recipe.apply(config, [got])
  assert resolved.data.augment_config["rotate90_prob"] == 0.5
  assert (
    resolved.data.augment_config["max_expand_ratio"]
    == (own.value["max_expand_ratio"])
  )


def test_flip_test_when_training_mirrors_and_the_boxes_allow():
  stats = _stats(np.full(100, 0.2))
  plain = _by_field(recipe.choose(stats, _config()))["eval.flip"]
  assert plain.value is True and "mirrored image" in plain.reason
  paired = stats._replace(class_names=("arrow_left", "arrow_right", "disc"))
  guarded = _by_field(recipe.choose(paired, _config()))["eval.flip"]
  assert guarded.value is False
  assert guarded.reason == "training does not mirror the images"
  config = _config()  # Mirroring switched off in the config, kept.
  config.data.augment_config = {"flip_prob": 0.0}
  fixed = _by_field(recipe.choose(stats, config, fixed={"data.augment_config"}))
  assert fixed["eval.flip"].value is False
  config = _config()  # The zoo's ResNet-50 SSD300: NVIDIA's 300 px grid.
  config.model.update(backbone="resnet50", image_size=300)
  resnet = _by_field(recipe.choose(stats, config, fixed={"model.image_size"}))[
    "eval.flip"
  ]
  assert resnet.value is False and "not mirror-symmetric" in resnet.reason
  config = _config()
  config.eval.flip = False
  kept = _by_field(recipe.choose(stats, config, fixed={"eval.flip"}))
  assert kept["eval.flip"].value is False
  assert kept["eval.flip"].source == "command line"


def _fitted_coverage(stats, size, conv3_3_map):
  """Coverage of the fitted boxes, by default_boxes' own per-box loop."""
  config = _config()
  config.model.update(image_size=size, conv3_3_map=conv3_3_map, priors="fitted")
  fitted = box_stats.fitted_prior_config(config, stats)
  best, _ = db.box_coverage(stats.boxes, db.prior_boxes(fitted), 0.5)
  return float(np.mean(best >= 0.5))


def test_conv3_3_map_when_it_covers_the_small_boxes():
  rng = np.random.default_rng(3)
  small = _stats(
    np.concatenate([rng.uniform(0.04, 0.07, 60), rng.uniform(0.1, 0.4, 140)])
  )
  large = _stats(rng.uniform(0.25, 0.6, 200))
  for stats, want in [(small, True), (large, False)]:
    by = _by_field(recipe.choose(stats, _config()))
    size = by["model.image_size"].value
    plain, with_c33 = (_fitted_coverage(stats, size, m) for m in (False, True))
    assert (with_c33 - plain >= recipe.CONV3_3_MIN_GAIN) is want
    assert by["model.conv3_3_map"].value is want
    assert f"{with_c33:.1%}" in by["model.conv3_3_map"].reason
    assert f"{plain:.1%}" in by["model.conv3_3_map"].reason
  assert (
    _fitted_coverage(small, 160, True)
    > 0.95
    > _fitted_coverage(small, 160, False) + 0.1
  )
  kept = _by_field(recipe.choose(small, _config(), fixed={"model.conv3_3_map"}))
  assert kept["model.conv3_3_map"].value is False
  assert kept["model.conv3_3_map"].source == "command line"
  named = _by_field(recipe.choose(small, _config(), fixed={"model.priors"}))
  assert named["model.priors"].value == "default"  # the config's
  assert "default boxes (default)" in named["model.conv3_3_map"].reason


def test_the_stem_is_space_to_depth_unless_set_or_the_side_is_odd():
  stats = _stats(np.full(100, 0.2), num_images=400)
  own = _by_field(recipe.choose(stats, _config()))
  assert own["model.stem"].value == "space_to_depth"
  assert "space_to_depth stem" in own["num_steps"].reason
  config = _config()
  config.model.stem = "vgg"
  kept = _by_field(recipe.choose(stats, config, fixed={"model.stem"}))
  assert kept["model.stem"].value == "vgg"
  assert kept["model.stem"].source == "command line"
  assert "space_to_depth" not in kept["num_steps"].reason
  # VGG16's stem is dearer: the size rule and the epochs see it.
  want, _ = _size_rule(stats, stem="vgg")
  assert kept["model.image_size"].value == want
  assert kept["num_steps"].value < own["num_steps"].value
  config = _config()
  config.model.image_size = 129
  odd = _by_field(recipe.choose(stats, config, fixed={"model.image_size"}))
  assert odd["model.stem"].value == "vgg"
  assert "even side" in odd["model.stem"].reason


def test_epochs_fill_the_training_time_at_the_measured_cost():
  config = _config()
  rng = np.random.default_rng(4)
  seen = set()
  for n in (200, 400):
    stats = _stats(rng.uniform(0.02, 0.3, 300), num_images=n)
    by = _by_field(recipe.choose(stats, config))
    cost = budget.seconds_per_image(
      by["model.image_size"].value,
      by["model.conv3_3_map"].value,
      stem="space_to_depth",
    )
    epochs = int(round(budget.TRAIN_SECONDS / n / cost))
    assert recipe.MIN_EPOCHS < epochs < recipe.MAX_EPOCHS
    assert by["num_steps"].value == -(-epochs * n // config.batch_size)
    assert f"{epochs} epochs of {n} images" in by["num_steps"].reason
    seen.add(by["model.image_size"].value)
  assert seen == {128, 160}


def test_padding_follows_the_most_boxes_per_image_and_eval_keeps_its_own():
  config = _config()  # data.max_boxes = 64, no eval_max_boxes
  sizes = np.full(40, 0.2)
  stats = _stats(sizes, num_images=10)  # 4 boxes per image
  by = _by_field(recipe.choose(stats, config))
  assert by["data.max_boxes"].value == recipe.PAD_MULTIPLE
  assert "most boxes in one training image: 4" in by["data.max_boxes"].reason
  assert by["data.eval_max_boxes"].value == 64
  # One crowded image sets it: 13 boxes -> 16.
  crowded = stats._replace(
    boxes=np.concatenate([stats.boxes, stats.boxes[:9]]),
    labels=np.concatenate([stats.labels, stats.labels[:9]]),
    image_index=np.concatenate([stats.image_index, np.full(9, 3, np.int32)]),
    difficult=np.zeros(49, bool),
  )
  by = _by_field(recipe.choose(crowded, config))
  assert by["data.max_boxes"].value == 16
  # Never above the config's padding; a set field is kept.
  config.data.max_boxes = 12
  by = _by_field(recipe.choose(crowded, config))
  assert by["data.max_boxes"].value == 12
  assert by["data.eval_max_boxes"].value == 12
  config.data.eval_max_boxes = 200
  by = _by_field(recipe.choose(crowded, config, fixed={"data.max_boxes"}))
  assert by["data.max_boxes"].source == "command line"
  assert by["data.eval_max_boxes"].value == 200
  # The resolved config pads training to the choice, evaluation as before.
  fresh = _config()
  resolved = recipe.apply(fresh, recipe.choose(stats, fresh))
  assert resolved.data.max_boxes == recipe.PAD_MULTIPLE
  assert resolved.data.eval_max_boxes == 64


def test_a_slower_machine_plans_a_smaller_input_and_fewer_steps():
  stats = _stats(np.full(100, 0.2), num_images=400)
  table = _by_field(recipe.choose(stats, _config()))
  assert table["model.image_size"].value == _size_rule(stats)[0] == 128
  assert "not probed" in table["model.image_size"].reason
  slow = budget.speed_from_probe(2 * budget.PROBE_REFERENCE_SECONDS)
  assert slow.factor == pytest.approx(2.0)
  by = _by_field(recipe.choose(stats, _config(), speed=slow))
  # At twice the table's time 128 px trains 33 epochs: 96 px (57) is taken.
  assert by["model.image_size"].value == _size_rule(stats, speed=2.0)[0] == 96
  assert "2.00x the cost table's time" in by["model.image_size"].reason
  # The epochs at the chosen model's cost (these large boxes need no
  # conv3_3 map: 65 epochs where the size rule counted it and saw 57).
  assert by["model.conv3_3_map"].value is False
  cost = budget.seconds_per_image(96, False, stem="space_to_depth", speed=2.0)
  epochs = int(round(budget.TRAIN_SECONDS / 400 / cost))
  assert epochs == 65
  assert by["num_steps"].value == -(-epochs * 400 // 16)  # batch 16
  assert "x2.00 for this machine" in by["num_steps"].reason
  # A fixed size keeps it; the epochs still see the speed.
  config = _config()
  config.model.image_size = 128
  fixed = _by_field(recipe.choose(stats, config, {"model.image_size"}, slow))
  assert fixed["model.image_size"].value == 128
  assert fixed["num_steps"].value < table["num_steps"].value


def test_replan_fits_the_steps_to_the_measured_speed():
  stats = _stats(np.full(100, 0.2), num_images=400)
  choices = recipe.choose(stats, _config())
  planned = _by_field(choices)["num_steps"].value
  # Hand-worked: 100 s gone, 0.5 s per step, 20 s to recompile: the time
  # left is RUN_SECONDS - 100 - 20 - 2 * EVAL_SECONDS.
  left = budget.RUN_SECONDS - 100 - 20 - 2 * budget.EVAL_SECONDS
  want = 32 + int(left / 0.5)
  assert planned / 3 < want < planned  # a slower machine than the table's
  new = _by_field(recipe.replan(choices, 32, 100.0, 0.5, 20.0))
  assert new["num_steps"].value == want
  assert new["num_steps"].source == "recipe"
  assert "re-planned at step 32" in new["num_steps"].reason
  assert "500 ms per step" in new["num_steps"].reason
  # The plan's reason once, after its steps.
  plan_reason = _by_field(choices)["num_steps"].reason
  assert new["num_steps"].reason.endswith(f"planned {planned}: {plan_reason}")
  assert new["num_steps"].reason.count("re-planned") == 1
  assert new["warmup_steps"].value == want // 20
  assert new["lr_boundaries"].value == (int(0.75 * want), int(0.92 * want))
  assert new["eval_every"].value == -(-want // 2)
  assert new["checkpoint_every"].value == want // 5
  # Everything else is as chosen, in the same order.
  old = _by_field(choices)
  assert list(new) == list(old)
  follow = {"num_steps", "warmup_steps", "lr_boundaries", "eval_every"}
  for field in set(old) - follow - {"checkpoint_every"}:
    assert new[field] == old[field], field
  # Within REPLAN_TOLERANCE of the plan: kept. Far off: a third to twice.
  exact = (budget.RUN_SECONDS - 120 - 2 * budget.EVAL_SECONDS) / planned
  assert recipe.replan(choices, 0, 100.0, exact, 20.0) is None
  slow = _by_field(recipe.replan(choices, 32, 100.0, 50.0, 20.0))
  assert slow["num_steps"].value == -(-planned // 3)
  fast = _by_field(recipe.replan(choices, 32, 10.0, 0.001, 0.0))
  assert fast["num_steps"].value == 2 * planned
  # Out of time halfway: one more step, never fewer than are done.
  late = _by_field(recipe.replan(choices, planned // 2, 1e4, 0.5, 20.0))
  assert late["num_steps"].value == planned // 2 + 1


def test_replan_keeps_what_the_command_line_set():
  stats = _stats(np.full(100, 0.2), num_images=400)
  config = _config()
  config.num_steps = 500
  fixed_steps = recipe.choose(stats, config, {"num_steps"})
  assert recipe.replan(fixed_steps, 32, 100.0, 0.5, 20.0) is None
  config.warmup_steps, config.eval_every = 7, 0
  fixed = recipe.choose(stats, config, {"warmup_steps", "eval_every"})
  new = _by_field(recipe.replan(fixed, 32, 100.0, 0.5, 20.0))
  assert new["warmup_steps"].value == 7 and new["eval_every"].value == 0
  assert new["warmup_steps"].source == "command line"
  assert new["checkpoint_every"].value == new["num_steps"].value // 5


def test_table_seconds_per_step_is_the_cost_table_times_the_batch():
  stats = _stats(np.full(100, 0.2), num_images=400)
  choices = recipe.choose(stats, _config())
  by = _by_field(choices)
  assert by["model.image_size"].value == 128
  assert by["model.conv3_3_map"].value is False  # large boxes
  # By hand: 24.3 ms at 128 px with conv3_3's map, / 1.13 without, x 0.8
  # with the space-to-depth stem, at the table's width; batch 16.
  want = 16 * 0.0243 / budget.CONV3_3_COST * budget.SPACE_TO_DEPTH_COST
  assert recipe.table_seconds_per_step(choices, 16) == pytest.approx(want)
  # The zoo's choices name no width, stem or map: VGG16's stem, the
  # table's width, no conv3_3 (as `choose` plans them).
  zoo = [recipe.Choice("model.image_size", 96, "")]
  assert recipe.table_seconds_per_step(zoo, 8) == pytest.approx(
    8 * 0.0139 / budget.CONV3_3_COST
  )


def test_rechoose_takes_the_size_the_runs_own_speed_clearly_gives():
  stats = _stats(np.full(100, 0.2), num_images=400)
  config = _config()
  choices = recipe.choose(stats, config)  # the table's speed: 128 px
  assert _by_field(choices)["model.image_size"].value == 128
  table = recipe.table_seconds_per_step(choices, 16)
  # The steps ran at 2x the table's time: 96 px at 1.8x, 2x and 2.2x.
  new = recipe.rechoose(stats, config, (), choices, 41, 2.0 * table)
  by = _by_field(new)
  assert by["model.image_size"].value == 96
  reason = by["model.image_size"].reason
  assert reason.startswith("re-chosen at step 41 from the run's own speed")
  assert "the probe's had given 128 px" in reason
  assert "2.00x the cost table's time" in reason and "own steps" in reason
  # Every other choice is `choose`'s at that speed, in the same order.
  speed = budget.speed_from_steps(2.0 * table, table)
  want = _by_field(recipe.choose(stats, config, (), speed))
  assert list(by) == list(want)
  for field in set(want) - {"model.image_size"}:
    assert by[field] == want[field], field
  assert by["num_steps"].value < _by_field(choices)["num_steps"].value
  # As fast as the plan: the size stays (the caller re-plans the steps).
  assert recipe.rechoose(stats, config, (), choices, 41, table) is None
  # Just past the rule's boundary (5%): within RECHOOSE_MARGIN, kept.
  cost = budget.seconds_per_image(128, True, stem="space_to_depth")
  boundary = budget.TRAIN_SECONDS / 400 / cost / recipe.TARGET_EPOCHS
  near = 1.05 * boundary * table
  assert recipe.rechoose(stats, config, (), choices, 41, near) is None
  assert (
    recipe._image_size(stats, config, (), budget.Speed(1.05 * boundary))[0]
    == 96
  )
  # Clearly wrong even where the new size is not clear: planned at 96 px
  # (a probe 3x slow) on 240 px images whose steps run just past 160 px's
  # boundary, where 10% faster gives 160 and 10% slower 128: 128.
  wide = _stats(np.full(100, 0.2), image_hw=(240, 240), num_images=400)
  planned = recipe.choose(wide, config, (), budget.Speed(3.0))
  assert _by_field(planned)["model.image_size"].value == 96
  cost = budget.seconds_per_image(160, True, stem="space_to_depth")
  f160 = budget.TRAIN_SECONDS / 400 / cost / recipe.target_epochs(160)
  sizes = [
    recipe._image_size(wide, config, (), budget.Speed(f * 1.02 * f160))[0]
    for f in (0.9, 1.0, 1.1)
  ]
  assert sizes == [160, 128, 128]
  table = recipe.table_seconds_per_step(planned, 16)
  got = recipe.rechoose(wide, config, (), planned, 41, 1.02 * f160 * table)
  assert _by_field(got)["model.image_size"].value == 128
  # A size set on the command line, or no measurement: nothing to choose.
  config.model.image_size = 128
  fixed = recipe.choose(stats, config, {"model.image_size"})
  slow = 4 * recipe.table_seconds_per_step(fixed, 16)
  assert (
    recipe.rechoose(stats, config, {"model.image_size"}, fixed, 41, slow)
    is None
  )
  assert recipe.rechoose(stats, _config(), (), choices, 41, 0.0) is None
