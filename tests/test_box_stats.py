"""Tests for ssd_jax/box_stats.py: dataset statistics, prior coverage
(against a slow loop over boxes), fitted default boxes' starting rule."""

import math
import os

import numpy as np
import pytest
from conftest import load_config, ref_iou, voc_folder_config
from PIL import Image

from ssd_jax import box_stats, models
from ssd_jax import default_boxes as db


def _ref_report(gt, labels, priors, threshold):
  """Per box (best IoU, positives, bucket) and the summaries, by loops."""
  rows = []
  for g in gt:
    ious = [
      ref_iou(g, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
      for cx, cy, w, h in priors
    ]
    best = max(ious, default=0.0)
    above = sum(i >= threshold for i in ious)
    side = math.sqrt(max(g[2] - g[0], 0) * max(g[3] - g[1], 0))
    bucket = 0 if side < 0.1 else 1 if side < 0.2 else 2 if side < 0.4 else 3
    rows.append((best, above if above else int(best > 0), bucket))

  def summary(selected):
    if not selected:
      return {"boxes": 0, "coverage": None, "mean_positives": None}
    return {
      "boxes": len(selected),
      "coverage": sum(r[0] >= threshold for r in selected) / len(selected),
      "mean_positives": sum(r[1] for r in selected) / len(selected),
    }

  names = ["<0.1", "0.1-0.2", "0.2-0.4", ">=0.4"]
  by_size = {
    n: summary([r for r in rows if r[2] == k]) for k, n in enumerate(names)
  }
  by_class = {
    int(c): summary(
      [r for r, lab in zip(rows, labels, strict=True) if lab == c]
    )
    for c in sorted(set(labels))
  }
  return rows, summary(rows), by_size, by_class


def _assert_summary_equal(got, want):
  assert got["boxes"] == want["boxes"]
  for key in ("coverage", "mean_positives"):
    if want[key] is None:
      assert got[key] is None
    else:
      assert got[key] == pytest.approx(want[key], abs=1e-6), key


def test_prior_coverage_matches_a_slow_loop():
  rng = np.random.default_rng(0)
  side = np.exp(rng.uniform(np.log(0.03), np.log(0.8), 60))
  wh = np.stack([side, side * rng.uniform(0.5, 2.0, 60)], 1).clip(0, 1)
  xy = wh / 2 + rng.uniform(size=wh.shape) * (1 - wh)
  gt = np.concatenate([xy - wh / 2, xy + wh / 2], 1)
  labels = rng.integers(1, 4, 60)
  priors = models.default_prior_config(96)
  priors = db.prior_boxes(priors)
  report = box_stats.prior_coverage(gt, priors, 0.5, labels)
  rows, overall, by_size, by_class = _ref_report(gt, labels, priors, 0.5)
  np.testing.assert_allclose(report.best_iou, [r[0] for r in rows], atol=1e-5)
  np.testing.assert_array_equal(report.num_positives, [r[1] for r in rows])
  np.testing.assert_array_equal(report.size_bucket, [r[2] for r in rows])
  np.testing.assert_array_equal(report.covered, [r[0] >= 0.5 for r in rows])
  assert report.best_iou.shape == (60,) and report.covered.dtype == bool
  _assert_summary_equal(
    {
      "boxes": 60,
      "coverage": report.coverage,
      "mean_positives": report.mean_positives,
    },
    overall,
  )
  assert list(report.by_size) == list(by_size)
  for name in by_size:
    _assert_summary_equal(report.by_size[name], by_size[name])
  assert sorted(report.by_class) == sorted(by_class)
  for label in by_class:
    _assert_summary_equal(report.by_class[label], by_class[label])


def test_prior_coverage_by_map_counts_boxes_and_classes():
  config = models.default_prior_config(96)  # maps 12, 6, 3, 1
  priors = db.prior_boxes(config)
  maps = box_stats.map_rows(models.from_config({"image_size": 96}, 3))
  assert list(maps) == ["12x12", "6x6", "3x3", "1x1"]
  assert tuple(maps.values()) == db.rows_per_map(config)
  # Boxes of about each map's size: 0.1 (12x12), 0.5 and 0.9 (1x1).
  gt = np.array(
    [
      [0.1, 0.1, 0.2, 0.2],
      [0.6, 0.6, 0.7, 0.7],
      [0.25, 0.25, 0.75, 0.75],
      [0.05, 0.05, 0.95, 0.95],
    ]
  )
  labels = np.array([1, 2, 1, 2])
  report = box_stats.prior_coverage(gt, priors, 0.5, labels, maps)
  _, on_map = db.positives_by_map(gt, priors, tuple(maps.values()), 0.5)
  assert list(report.by_map) == list(maps)
  for k, name in enumerate(maps):
    reached = on_map[:, k] > 0
    assert report.by_map[name] == {
      "boxes": int(reached.sum()),
      "positives": int(on_map[:, k].sum()),
      "fewest_per_class": int(
        min(reached[labels == 1].sum(), reached[labels == 2].sum())
      ),
    }
  assert report.by_map["12x12"]["boxes"] >= 2  # the two small boxes
  assert report.by_map["1x1"]["boxes"] >= 1  # the whole-image one
  assert report.by_map["12x12"]["fewest_per_class"] == 1
  unlabelled = box_stats.prior_coverage(gt, priors, 0.5, None, maps)
  assert unlabelled.by_map["6x6"]["fewest_per_class"] is None
  assert box_stats.prior_coverage(gt, priors, 0.5).by_map == {}
  lite = models.from_config({"backbone": "mobilenet_v3_large"}, 3)
  assert box_stats.map_rows(lite) is None  # the zoo's own prior layout


def test_prior_coverage_of_no_boxes():
  priors = db.prior_boxes(models.default_prior_config(96))
  report = box_stats.prior_coverage(np.zeros((0, 4)), priors, 0.5, [])
  assert report.coverage is None and report.mean_positives is None
  assert report.best_iou.shape == (0,) and report.by_class == {}
  assert all(v["boxes"] == 0 for v in report.by_size.values())
  with pytest.raises(ValueError, match="labels must be"):
    box_stats.prior_coverage(np.zeros((2, 4)), priors, 0.5, [1])


def test_size_buckets_edges():
  got = box_stats.size_buckets(
    np.array([0.0, 0.0999, 0.1, 0.2, 0.39, 0.4, 1.0])
  )
  assert got.tolist() == [0, 0, 1, 2, 2, 3, 3]
  np.testing.assert_allclose(
    box_stats.box_size(np.array([[0.1, 0.1, 0.5, 0.2], [0.5, 0.5, 0.4, 0.6]])),
    [0.2, 0.0],
  )


def test_dataset_stats_of_a_voc_folder(mini_voc2007):
  root, counts = mini_voc2007
  stats = box_stats.dataset_stats(voc_folder_config(root).data, "train")
  want = counts[("2007", "trainval")]
  assert stats.num_images == want["images"]
  assert len(stats.boxes) == len(stats.labels) == want["boxes"]
  assert stats.difficult.sum() == want["difficult"]
  assert stats.image_sizes.shape == (want["images"], 2)
  assert stats.boxes.shape == (want["boxes"], 4)
  assert (stats.boxes >= 0).all() and (stats.boxes <= 1).all()
  assert (np.diff(stats.image_index) >= 0).all()
  assert stats.image_index.max() < stats.num_images
  assert len(stats.class_names) == 20 and stats.labels.min() >= 1
  # Image sizes are the stored pixels' (h, w).
  with open(os.path.join(root, "ImageSets", "Main", "trainval.txt")) as f:
    first = f.readline().split()[0]
  with Image.open(os.path.join(root, "JPEGImages", f"{first}.jpg")) as im:
    assert stats.image_sizes[0].tolist() == [im.height, im.width]
  test = box_stats.dataset_stats(voc_folder_config(root).data, "eval")
  assert test.num_images == counts[("2007", "test")]["images"]


def test_dataset_stats_errors():
  with pytest.raises(ValueError, match="analyze split"):
    box_stats.dataset_stats(load_config("shapes", "small").data, "val")
  with pytest.raises(ValueError, match="table route"):
    box_stats.dataset_stats(load_config("voc", "small").data)


def test_zoo_models_have_no_fit():
  config = load_config("shapes", "small")
  config.model.update(backbone="mobilenet_v3_large", name="ssd", image_size=0)
  assert not box_stats.can_fit(config.model)
  with pytest.raises(ValueError, match="brings its own default boxes"):
    box_stats.fitted_prior_config(config, box_stats.dataset_stats(config.data))


def test_fit_starts_from_the_rule_whatever_priors_name():
  """The fit's base is the model's own rule (with its conv3_3_map), not a
  named box set: SSD300 with the release's COCO boxes fits as "fitted"."""
  stats = box_stats.dataset_stats(load_config("shapes", "small").data)
  config = load_config("shapes", "small")
  config.model.update(name="ssd300", image_size=300)
  rule = box_stats.rule_prior_config(config, stats)
  assert rule == models.default_prior_config(300) == db.SSD300_PRIORS
  fits = {}
  for priors in ("fitted", "coco"):
    config.model.priors = priors
    assert box_stats.rule_prior_config(config, stats) == db.SSD300_PRIORS
    fits[priors] = box_stats.fitted_prior_config(config, stats)
  assert fits["coco"] == fits["fitted"]
  assert type(fits["coco"]) is db.PriorConfig
  config.model.update(
    name="ssd", image_size=96, priors="fitted", conv3_3_map=True
  )
  rule = box_stats.rule_prior_config(config, stats)
  assert rule == models.default_prior_config(96, conv3_3_map=True)
  assert (
    box_stats.fitted_prior_config(config, stats).feature_sizes
    == rule.feature_sizes
  )
