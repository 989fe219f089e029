"""Tests for ssd_jax.default_boxes: counts, order, the release's sizes."""

import math

import numpy as np
import pytest
from conftest import ref_iou

from ssd_jax import default_boxes as db


def _ref_default_boxes(cfg):
  """Slow loop in the order documented by the module (ssd.pytorch style)."""
  out = []
  for k, f in enumerate(cfg.feature_sizes):
    for i in range(f):
      for j in range(f):
        cx = (j + 0.5) * cfg.steps[k] / cfg.image_size
        cy = (i + 0.5) * cfg.steps[k] / cfg.image_size
        s = cfg.min_sizes[k] / cfg.image_size
        out.append([cx, cy, s, s])
        sp = math.sqrt(cfg.min_sizes[k] * cfg.max_sizes[k]) / cfg.image_size
        out.append([cx, cy, sp, sp])
        for r in cfg.aspect_ratios[k]:
          out.append([cx, cy, s * math.sqrt(r), s / math.sqrt(r)])
          out.append([cx, cy, s / math.sqrt(r), s * math.sqrt(r)])
  out = np.array(out)
  return np.clip(out, 0, 1) if cfg.clip else out


@pytest.mark.parametrize(
  "cfg, count", [(db.SSD300_PRIORS, 8732), (db.SSD512_PRIORS, 24564)]
)
def test_release_counts_and_order(cfg, count):
  priors = db.default_boxes(*cfg)
  assert priors.shape == (count, 4)
  assert priors.dtype == np.float32
  np.testing.assert_allclose(priors, _ref_default_boxes(cfg), atol=1e-6)
  per_map = [
    f * f * db.boxes_per_location(r)
    for f, r in zip(cfg.feature_sizes, cfg.aspect_ratios, strict=True)
  ]
  assert sum(per_map) == count


def test_first_boxes_hand_worked():
  priors = db.default_boxes(*db.SSD300_PRIORS)
  # First location of conv4_3: centre (4/300, 4/300), sizes 30 and sqrt(1800).
  c = 4 / 300
  np.testing.assert_allclose(priors[0], [c, c, 0.1, 0.1], atol=1e-6)
  s2 = math.sqrt(30 * 60) / 300
  np.testing.assert_allclose(priors[1], [c, c, s2, s2], atol=1e-6)
  r = math.sqrt(2)
  np.testing.assert_allclose(priors[2], [c, c, 0.1 * r, 0.1 / r], atol=1e-6)
  np.testing.assert_allclose(priors[3], [c, c, 0.1 / r, 0.1 * r], atol=1e-6)
  # Second location is one step to the right (row-major).
  np.testing.assert_allclose(priors[4, :2], [12 / 300, c], atol=1e-6)
  # The last map: one location at the centre, clipped sizes.
  np.testing.assert_allclose(priors[-4, :2], [0.5, 0.5], atol=1e-6)
  assert priors.max() <= 1.0 and priors.min() >= 0.0


def test_no_clip_keeps_release_values():
  cfg = db.SSD300_PRIORS._replace(clip=False)
  priors = db.default_boxes(*cfg)
  assert priors.max() > 1.0  # sqrt(264 * 315) / 300 > 1
  np.testing.assert_allclose(priors, _ref_default_boxes(cfg), atol=1e-6)


def test_paper_sizes_reproduce_release():
  mins, maxs = db.paper_sizes(300, 6, caffe_rounding=True)
  np.testing.assert_allclose(mins, db.SSD300_PRIORS.min_sizes)
  np.testing.assert_allclose(maxs, db.SSD300_PRIORS.max_sizes)
  mins, maxs = db.paper_sizes(
    512, 7, s_min=0.15, s_max=0.9, first_scale=0.07, caffe_rounding=True
  )
  np.testing.assert_allclose(mins, db.SSD512_PRIORS.min_sizes, rtol=1e-6)
  np.testing.assert_allclose(maxs, db.SSD512_PRIORS.max_sizes, rtol=1e-6)


def test_paper_sizes_formula():
  # Without the separate conv4_3 scale: s_k = 0.2 + 0.7 (k - 1) / (m - 1).
  mins, maxs = db.paper_sizes(100, 5, first_scale=None)
  np.testing.assert_allclose(mins, [20, 37.5, 55, 72.5, 90])
  np.testing.assert_allclose(maxs, [37.5, 55, 72.5, 90, 107.5])


def test_bad_arguments():
  with pytest.raises(ValueError, match="one entry per map"):
    db.default_boxes(300, (38, 19), (8,), (30,), (60,), ((2,),))
  with pytest.raises(ValueError, match="positive"):
    db.default_boxes(300, (2,), (8,), (0,), (60,), ((2,),))
  with pytest.raises(ValueError, match="s_min"):
    db.paper_sizes(300, 6, s_min=0.9, s_max=0.2)
  with pytest.raises(ValueError, match="at least 2"):
    db.paper_sizes(300, 2)


def test_empty_grid():
  assert db.default_boxes(300, (), (), (), (), ()).shape == (0, 4)


@pytest.mark.parametrize(
  "cfg, size, maps, s_min, first",
  [
    (db.SSD300_COCO_PRIORS, 300, 6, 0.15, 0.07),
    (db.SSD512_COCO_PRIORS, 512, 7, 0.1, 0.04),
  ],
)
def test_coco_priors_follow_the_release_rule(cfg, size, maps, s_min, first):
  mins, maxs = db.paper_sizes(
    size, maps, s_min=s_min, first_scale=first, caffe_rounding=True
  )
  np.testing.assert_allclose(cfg.min_sizes, mins, rtol=1e-6)
  np.testing.assert_allclose(cfg.max_sizes, maxs, rtol=1e-6)
  count = 8732 if size == 300 else 24564
  assert db.default_boxes(*cfg).shape == (count, 4)


def test_paper_prior_config_follows_paper_rule():
  cfg = db.paper_prior_config(128, (16, 8, 4, 2, 1))
  n = 5
  # Paper: first map at 0.1, then s_k = 0.2 + 0.7 (k - 1) / (m - 1).
  scales = [0.1] + [0.2 + 0.7 * k / (n - 2) for k in range(n)]
  np.testing.assert_allclose(cfg.min_sizes, np.array(scales[:n]) * 128)
  np.testing.assert_allclose(cfg.max_sizes, np.array(scales[1:]) * 128)
  np.testing.assert_allclose(cfg.steps, [8, 16, 32, 64, 128])
  assert cfg.aspect_ratios == ((2,), (2, 3), (2, 3), (2,), (2,))
  assert cfg.feature_sizes == (16, 8, 4, 2, 1) and cfg.clip
  three = db.paper_prior_config(50, (6, 3, 1))
  assert three.aspect_ratios == ((2,), (2,), (2,))
  with pytest.raises(ValueError, match="at least 3 maps"):
    db.paper_prior_config(32, (4, 2))
  with pytest.raises(ValueError, match="at least 3 maps"):
    db.paper_prior_config(32, (4, 2, 0))


def _torchvision_default_boxes():
  """torchvision DefaultBoxGenerator for ssd300_vgg16, as a numpy loop."""
  scales = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
  ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
  steps = [8, 16, 32, 64, 100, 300]
  out = []
  for k, f in enumerate([38, 19, 10, 5, 3, 1]):
    wh = [(scales[k], scales[k])]
    wh.append((math.sqrt(scales[k] * scales[k + 1]),) * 2)
    for r in ratios[k]:
      wh += [(scales[k] * math.sqrt(r), scales[k] / math.sqrt(r))]
      wh += [(scales[k] / math.sqrt(r), scales[k] * math.sqrt(r))]
    for y in range(f):
      for x in range(f):
        cx, cy = (x + 0.5) * steps[k] / 300, (y + 0.5) * steps[k] / 300
        out += [[cx, cy, min(w, 1.0), min(h, 1.0)] for w, h in wh]
  return np.array(out)


def test_torchvision_priors_equal_torchvision_generator():
  np.testing.assert_allclose(
    db.prior_boxes(db.TORCHVISION_SSD300_PRIORS),
    _torchvision_default_boxes(),
    atol=1e-6,
  )
  boxes = db.TORCHVISION_SSD300_PRIORS.boxes()
  assert boxes.dtype == np.float32 and boxes[:, :2].max() > 1.0  # centres
  unclipped = db.TORCHVISION_SSD300_PRIORS._replace(clip=False).boxes()
  assert unclipped[:, 2:].max() > 1.0


def test_prior_boxes_of_a_plain_config_is_default_boxes():
  np.testing.assert_array_equal(
    db.prior_boxes(db.SSD300_PRIORS), db.default_boxes(*db.SSD300_PRIORS)
  )


def test_named_priors():
  assert set(db.NAMED_PRIORS) == {"default", "fitted", "coco", "torchvision"}
  assert db.NAMED_PRIORS["default"] is None
  assert db.NAMED_PRIORS["fitted"] is None  # The rule's grid, fitted sizes.
  assert db.NAMED_PRIORS["coco"] == {
    300: db.SSD300_COCO_PRIORS,
    512: db.SSD512_COCO_PRIORS,
  }
  assert db.NAMED_PRIORS["torchvision"] == {300: db.TORCHVISION_SSD300_PRIORS}


@pytest.mark.parametrize(
  "field, value, match",
  [
    ("min_sizes", (math.nan,), "min_sizes must be positive finite"),
    ("max_sizes", (math.inf,), "max_sizes must be positive finite"),
    ("steps", ("8",), "steps must be positive finite"),
    ("image_size", math.nan, "image_size must be positive finite"),
    ("feature_sizes", (2.5,), "feature_sizes must be positive integers"),
    ("feature_sizes", (True,), "feature_sizes must be positive integers"),
    ("aspect_ratios", ((math.inf,),), "aspect ratios must be positive finite"),
    ("aspect_ratios", (2,), "one sequence of ratios per map"),
  ],
)
def test_non_finite_or_mistyped_config_names_the_field(field, value, match):
  # Found by tests/test_fuzz.py: NaN and inf sizes, steps and ratios gave
  # NaN priors; a float feature size or a bare ratio gave a TypeError.
  config = dict(
    image_size=300,
    feature_sizes=(2,),
    steps=(8,),
    min_sizes=(30,),
    max_sizes=(60,),
    aspect_ratios=((2,),),
  )
  config[field] = value
  with pytest.raises(ValueError, match=match):
    db.default_boxes(**config)


def test_paper_sizes_rejects_non_finite_scales_and_sizes():
  with pytest.raises(ValueError, match="s_max finite"):
    db.paper_sizes(300, 6, s_max=math.inf)
  with pytest.raises(ValueError, match="image_size must be positive finite"):
    db.paper_sizes(-300, 6)
  with pytest.raises(ValueError, match="first_scale must be positive finite"):
    db.paper_sizes(300, 6, first_scale=math.nan)
  with pytest.raises(ValueError, match="image_size must be positive finite"):
    db.paper_prior_config(-300, (3, 2, 1))


# --- Coverage of boxes and default boxes fitted to them ---------------------


def _ref_coverage(gt, priors, threshold):
  """Per box: best IoU and the matcher's positives, by a slow loop."""
  best, positives = [], []
  for g in gt:
    ious = [
      ref_iou(g, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
      for cx, cy, w, h in priors
    ]
    above = sum(i >= threshold for i in ious)
    top = max(ious, default=0.0)
    best.append(top)
    positives.append(above if above else int(top > 0))
  return np.array(best), np.array(positives)


def _random_boxes(rng, n, lo, hi):
  """n boxes of side sqrt(w h) log-uniform in [lo, hi], ratios 1/2..2."""
  side = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
  ratio = np.exp(rng.uniform(np.log(0.5), np.log(2.0), n))
  wh = np.minimum(np.stack([side * ratio**0.5, side / ratio**0.5], 1), 1.0)
  xy = wh / 2 + rng.uniform(size=wh.shape) * (1 - wh)
  return np.concatenate([xy - wh / 2, xy + wh / 2], 1), wh, xy


SMALL_GRID = db.paper_prior_config(96, (12, 6, 3, 1))  # The :small model's.


def test_box_coverage_matches_a_slow_loop():
  rng = np.random.default_rng(0)
  gt, _, _ = _random_boxes(rng, 40, 0.02, 0.9)
  gt = np.concatenate([gt, [[0.3, 0.3, 0.3, 0.5]]])  # Zero area: no prior.
  priors = db.prior_boxes(SMALL_GRID)
  for threshold in (0.5, 0.35):
    best, positives = db.box_coverage(gt, priors, threshold, chunk=7)
    want_best, want_positives = _ref_coverage(gt, priors, threshold)
    assert best.shape == (41,) and best.dtype == np.float32
    assert positives.shape == (41,) and positives.dtype == np.int32
    np.testing.assert_allclose(best, want_best, atol=1e-5)
    np.testing.assert_array_equal(positives, want_positives)
  assert positives[-1] == 0 and best[-1] == 0
  # A box below the threshold everywhere still gets its forced prior.
  assert ((best < 0.35) & (positives == 1)).any()


def test_box_coverage_empty_and_bad_shapes():
  best, positives = db.box_coverage(
    np.zeros((0, 4)), db.prior_boxes(SMALL_GRID)
  )
  assert best.shape == positives.shape == (0,)
  best, positives = db.box_coverage([[0.1, 0.1, 0.5, 0.5]], np.zeros((0, 4)))
  assert best.tolist() == [0.0] and positives.tolist() == [0]
  with pytest.raises(ValueError, match="gt_boxes must be"):
    db.box_coverage(np.zeros((3, 2)), np.zeros((1, 4)))
  with pytest.raises(ValueError, match="priors must be"):
    db.box_coverage(np.zeros((3, 4)), np.zeros((4,)))


@pytest.mark.parametrize("on_grid", [False, True], ids=["all", "grid"])
def test_positives_by_map_splits_the_positives_map_by_map(on_grid):
  rng = np.random.default_rng(1)
  gt, _, _ = _random_boxes(rng, 30, 0.02, 0.9)
  gt = np.concatenate([gt, [[0.3, 0.3, 0.3, 0.5]]])  # Zero area: no prior.
  priors = db.prior_boxes(SMALL_GRID)
  rows = db.rows_per_map(SMALL_GRID)
  # The :small grid: 12x12, 6x6, 3x3 and 1x1 maps of 4, 6, 4 and 4 boxes.
  assert rows == (144 * 4, 36 * 6, 9 * 4, 1 * 4) and sum(rows) == len(priors)
  edges = np.cumsum([0, *rows])
  sides = SMALL_GRID.feature_sizes if on_grid else None
  best, by_map = db.positives_by_map(gt, priors, rows, 0.5, 4, sides)
  assert by_map.shape == (31, 4) and by_map.dtype == np.int32
  for i, g in enumerate(gt):  # The slow loop, map by map.
    ious = [
      ref_iou(g, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
      for cx, cy, w, h in priors
    ]
    want = [
      sum(v >= 0.5 for v in ious[edges[k] : edges[k + 1]]) for k in range(4)
    ]
    if not sum(want) and max(ious) > 0:  # The forced best prior's map.
      want[int(np.searchsorted(edges, int(np.argmax(ious)), "right")) - 1] = 1
    assert by_map[i].tolist() == want, i
    assert best[i] == pytest.approx(max(ious), abs=1e-5)
  _, positives = db.box_coverage(gt, priors, 0.5)
  np.testing.assert_array_equal(by_map.sum(1), positives)
  assert by_map[-1].tolist() == [0, 0, 0, 0]
  with pytest.raises(ValueError, match="must be >= 0 and sum to"):
    db.positives_by_map(gt, priors, rows[:-1], 0.5)
  empty = db.positives_by_map(np.zeros((0, 4)), priors, rows)
  assert empty[0].shape == (0,) and empty[1].shape == (0, 4)


def _grid_cases(rng):
  """Boxes that stress the grid's count: random (tiny to larger than the
  image, some hanging out of it), the priors themselves (IoU exactly 1,
  ties between kinds), corners on a coarse lattice (many equal IoUs), a
  zero-area box and a box outside the image (overlapping nothing)."""
  side = np.exp(rng.uniform(np.log(0.005), np.log(1.2), 120))
  wh = np.stack([side * rng.uniform(0.5, 2.0, 120), side], 1)
  xy = rng.uniform(-0.1, 1.1, wh.shape)
  lattice = np.sort(rng.integers(-1, 10, (120, 2, 2)), 1) / 8  # [n, lo/hi, xy]
  return np.concatenate(
    [
      np.concatenate([xy - wh / 2, xy + wh / 2], 1),
      lattice.reshape(120, 4),
      [[0.3, 0.3, 0.3, 0.5], [1.2, 1.2, 1.5, 1.5]],
    ]
  )


@pytest.mark.parametrize(
  "config",
  [
    SMALL_GRID,
    db.SSD300_PRIORS,  # 38 cells of 8 px overhang 300 px: clipped centres.
    db.TORCHVISION_SSD300_PRIORS,  # Centres past 1, unclipped.
    db.paper_prior_config(64, (8, 4, 2, 1))._replace(clip=False),
    # Two equal maps: every best IoU ties across them; argmax takes map 0.
    db.PriorConfig(
      64,
      (4, 4, 2),
      (16, 16, 32),
      (16, 16, 32),
      (32, 32, 64),
      ((2,), (2,), (2,)),
    ),
  ],
  ids=["small", "ssd300", "torchvision", "unclipped", "twin_maps"],
)
def test_positives_by_map_on_the_grid_is_the_full_count_bit_for_bit(config):
  rng = np.random.default_rng(2)
  priors = db.prior_boxes(config)
  rows = db.rows_per_map(config)
  picked = priors[rng.choice(len(priors), 60)]
  gt = np.concatenate(
    [
      _grid_cases(rng),
      np.concatenate(
        [picked[:, :2] - picked[:, 2:] / 2, picked[:, :2] + picked[:, 2:] / 2],
        1,
      ),
    ]
  )
  forced = 0
  for threshold in (0.5, 0.35, 1.0):
    want_best, want = db.positives_by_map(gt, priors, rows, threshold)
    for chunk in (None, 16):
      best, by_map = db.positives_by_map(
        gt, priors, rows, threshold, chunk, config.feature_sizes
      )
      np.testing.assert_array_equal(best, want_best)
      np.testing.assert_array_equal(by_map, want)
    # Boxes whose only positive is the forced best prior: the grid must
    # name the same first best prior (its map) as argmax over them all.
    forced += int(np.sum((want.sum(1) == 1) & (want_best < threshold)))
  assert forced >= 20
  assert want_best[-60:].min() == np.float32(1.0)  # The priors themselves.


def test_positives_by_map_on_the_grid_checks_the_grid():
  priors = db.prior_boxes(SMALL_GRID)
  rows = db.rows_per_map(SMALL_GRID)
  gt = np.array([[0.1, 0.1, 0.4, 0.4]])
  with pytest.raises(ValueError, match="one side per map"):
    db.positives_by_map(gt, priors, rows, grid_sides=(12, 6, 3))
  with pytest.raises(ValueError, match="not a 5x5 grid"):
    db.positives_by_map(gt, priors, rows, grid_sides=(5, 6, 3, 1))
  swapped = priors.copy()  # Cell 0's first box with cell 1's second.
  swapped[[0, 5]] = swapped[[5, 0]]
  with pytest.raises(ValueError, match="not a 12x12 grid of 4 boxes"):
    db.positives_by_map(gt, swapped, rows, grid_sides=(12, 6, 3, 1))
  empty = db.positives_by_map(
    np.zeros((0, 4)), priors, rows, 0.5, None, SMALL_GRID.feature_sizes
  )
  assert empty[0].shape == (0,) and empty[1].shape == (0, 4)


def _coverage(boxes, config):
  best, _ = db.box_coverage(boxes, db.prior_boxes(config))
  return float(np.mean(best >= 0.5))


@pytest.mark.parametrize(
  "lo, hi, min_gain",
  [(0.05, 0.15, 0.02), (0.5, 1.0, 0.05), (0.05, 0.9, 0.0)],
  ids=["all_small", "all_large", "mixed"],
)
def test_fit_prior_config_keeps_structure_and_raises_coverage(lo, hi, min_gain):
  rng = np.random.default_rng(1)
  boxes, wh, xy = _random_boxes(rng, 300, lo, hi)
  fitted = db.fit_prior_config(SMALL_GRID, wh, 0.5, centers=xy)
  # Structure: same maps, steps and box kinds, so the heads do not change.
  for field in ("image_size", "feature_sizes", "steps", "aspect_ratios"):
    assert getattr(fitted, field) == getattr(SMALL_GRID, field), field
  assert db.prior_boxes(fitted).shape == db.prior_boxes(SMALL_GRID).shape
  mins = np.array(fitted.min_sizes)
  assert (np.diff(mins) > 0).all() and 0 < mins[0] and mins[-1] <= 96
  assert (np.array(fitted.max_sizes) >= mins).all()
  # Coverage of these boxes never falls; on skewed sizes it rises (small
  # boxes only a little: the 8 px stride of the first map at 96 px limits
  # the IoU of boxes of 5-14 px whatever their scale).
  before, after = _coverage(boxes, SMALL_GRID), _coverage(boxes, fitted)
  assert after >= before + min_gain, (before, after)
  # Without centres (random positions) the fit lands near the same scales.
  free = db.fit_prior_config(SMALL_GRID, wh, 0.5)
  assert _coverage(boxes, free) >= before


def test_fit_prior_config_degenerate_inputs():
  assert db.fit_prior_config(SMALL_GRID, np.zeros((0, 2))) == SMALL_GRID
  assert db.fit_prior_config(SMALL_GRID, np.zeros((5, 2))) == SMALL_GRID
  with pytest.raises(ValueError, match="box_sizes must be"):
    db.fit_prior_config(SMALL_GRID, np.zeros((5, 4)))
  with pytest.raises(ValueError, match="centers must be"):
    db.fit_prior_config(
      SMALL_GRID, np.ones((5, 2)) / 2, centers=np.ones((4, 2))
    )
  two_maps = SMALL_GRID._replace(
    **{k: getattr(SMALL_GRID, k)[:2] for k in PER_MAP}
  )
  with pytest.raises(ValueError, match="at least 3 maps"):
    db.fit_prior_config(two_maps, np.ones((5, 2)) / 2)


PER_MAP = ("feature_sizes", "steps", "min_sizes", "max_sizes", "aspect_ratios")


def _slow_mirror(priors):
  """For each prior, the index of the prior closest to its mirror (loop)."""
  out = []
  for cx, cy, w, h in priors:
    d = [
      max(abs(1 - cx - a), abs(cy - b), abs(w - c), abs(h - e))
      for a, b, c, e in priors
    ]
    out.append((int(np.argmin(d)), min(d)))
  return out


@pytest.mark.parametrize(
  "config",
  [
    db.paper_prior_config(96, (24, 12, 6, 3, 1)),
    db.paper_prior_config(160, (20, 10, 5, 3, 1)),
    db.SSD512_PRIORS,  # steps 512 / side: symmetric
  ],
)
def test_mirror_permutation_maps_each_box_to_its_mirror(config):
  priors = db.prior_boxes(config)
  perm = db.mirror_permutation(priors)
  assert perm.shape == (len(priors),) and perm.dtype == np.int64
  np.testing.assert_array_equal(perm[perm], np.arange(len(priors)))
  mirrored = priors.copy()
  mirrored[:, 0] = 1 - mirrored[:, 0]
  np.testing.assert_allclose(priors[perm], mirrored, rtol=0, atol=1e-6)
  if len(priors) < 600:  # the loop is quadratic
    for p, (q, d) in enumerate(_slow_mirror(priors)):
      assert perm[p] == q and d < 1e-6


def test_mirror_permutation_hand_worked_and_degenerate():
  priors = np.array(
    [[0.25, 0.5, 0.1, 0.2], [0.5, 0.5, 0.3, 0.3], [0.75, 0.5, 0.1, 0.2]],
    np.float32,
  )
  np.testing.assert_array_equal(db.mirror_permutation(priors), [2, 1, 0])
  assert db.mirror_permutation(np.zeros((0, 4))).shape == (0,)
  # The Caffe SSD300 grid overhangs the input (38 x 8 px > 300): no mirror.
  with pytest.raises(ValueError, match="not mirror-symmetric: .* step"):
    db.mirror_permutation(db.prior_boxes(db.SSD300_PRIORS))
  # A box whose mirror has another size is no mirror.
  with pytest.raises(ValueError, match=r"\(0.2500, 0.5000, 0.1000, 0.2000\)"):
    db.mirror_permutation(priors[[0, 1]].tolist() + [[0.75, 0.5, 0.2, 0.1]])
