"""Default boxes (priors): SSD's multi-scale anchor grid, as pure numpy.

Order, the contract with the model's heads: feature map by feature map, then
row-major over locations (row i, column j), then box kind at each location:
the `min_size` square, the `sqrt(min_size * max_size)` square, then for each
aspect ratio r the pair `(s sqrt(r), s / sqrt(r))` and its transpose.

Every prior rule and registry lives here: the grid (`default_boxes`), the
Caffe release's VOC and COCO configs, the paper's scale rule
(`paper_sizes`, `paper_prior_config`), torchvision's SSD300 boxes
(`TorchvisionPriorConfig`, `TORCHVISION_SSD300_PRIORS`) and the names a
config's `model.priors` may take (`NAMED_PRIORS`), and default boxes fitted
to a dataset's boxes (`box_coverage`, `fit_prior_config`). Which feature
maps a network has is the model's business (`ssd_jax.models.feature_sizes`).
"""

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ssd_jax import boxes as box_lib


class PriorConfig(NamedTuple):
  """Everything that defines a default-box grid (arguments of default_boxes).

  Sizes and steps are in input pixels; `aspect_ratios[k]` lists the ratios
  (> 1) of map k, each used with its reciprocal.
  """

  image_size: int
  feature_sizes: tuple[int, ...]
  steps: tuple[float, ...]
  min_sizes: tuple[float, ...]
  max_sizes: tuple[float, ...]
  aspect_ratios: tuple[tuple[float, ...], ...]
  clip: bool = True


# The Caffe release (weiliu89/caffe, examples/ssd/ssd_pascal.py): 8732 boxes.
SSD300_PRIORS = PriorConfig(
  image_size=300,
  feature_sizes=(38, 19, 10, 5, 3, 1),
  steps=(8, 16, 32, 64, 100, 300),
  min_sizes=(30, 60, 111, 162, 213, 264),
  max_sizes=(60, 111, 162, 213, 264, 315),
  aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
)

# The Caffe release (ssd_pascal_512.py): 24564 boxes.
SSD512_PRIORS = PriorConfig(
  image_size=512,
  feature_sizes=(64, 32, 16, 8, 4, 2, 1),
  steps=(8, 16, 32, 64, 128, 256, 512),
  min_sizes=(35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
  max_sizes=(76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6),
  aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)),
)


# The release's COCO models (ssd_coco.py, ssd_coco_512.py): smaller scales,
# s_min 0.15 (SSD512: 0.1) with conv4_3 at 0.07 (0.04), for COCO's small
# objects; same maps, steps and ratios as the VOC models.
SSD300_COCO_PRIORS = SSD300_PRIORS._replace(
  min_sizes=(21, 45, 99, 153, 207, 261),
  max_sizes=(45, 99, 153, 207, 261, 315),
)
SSD512_COCO_PRIORS = SSD512_PRIORS._replace(
  min_sizes=(20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8),
  max_sizes=(51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72),
)


def boxes_per_location(aspect_ratios: Sequence[float]) -> int:
  """Number of default boxes at each location of a map with these ratios."""
  return 2 + 2 * len(aspect_ratios)


def _check_positive(name: str, values: Sequence) -> None:
  """Raises unless every value is a real number, finite and > 0.

  Raises:
    ValueError: "NAME must be positive finite numbers, got ...".
  """
  for v in values:
    real = isinstance(v, numbers.Real) and not isinstance(v, bool)
    if not (real and math.isfinite(v) and v > 0):
      raise ValueError(
        f"{name} must be positive finite numbers, got {list(values)}"
      )


def paper_sizes(
  image_size: float,
  num_maps: int,
  s_min: float = 0.2,
  s_max: float = 0.9,
  first_scale: float | None = 0.1,
  caffe_rounding: bool = False,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Min and max box sizes from the paper's linear scale rule.

  The paper: `s_k = s_min + (s_max - s_min) (k - 1) / (m - 1)` for the m maps
  after conv4_3, and each map's extra square has size `sqrt(s_k s_{k+1})`, so
  map k's max size is `s_{k+1}` (the sequence continued by one step past the
  last map). The release puts conv4_3 apart at `first_scale` (0.1; SSD512
  uses 0.07) with max size `s_min`.

  With `caffe_rounding=True` the step is floored to whole percent as
  `ssd_pascal.py` does, which reproduces the release's exact sizes (SSD300:
  30, 60, 111, 162, 213, 264 / 60, ..., 315).

  Args:
    image_size: input side in pixels; sizes are returned in pixels.
    num_maps: total number of source maps, conv4_3 included when
      `first_scale` is not None.
    s_min: scale of the first map after conv4_3.
    s_max: scale of the last map.
    first_scale: scale of the separate first map (conv4_3), or None to spread
      all `num_maps` maps by the rule.
    caffe_rounding: floor the step to whole percent as the release does.

  Returns:
    (min_sizes, max_sizes), each a tuple of `num_maps` floats in pixels.

  Raises:
    ValueError: on fewer maps than the rule needs, scales out of order, or
      a size or scale that is not a positive finite number.
  """
  m = num_maps - (first_scale is not None)
  if m < 2:
    raise ValueError(f"paper_sizes needs at least 2 maps on the rule, got {m}")
  if not 0 < s_min < s_max < math.inf:
    raise ValueError(f"need 0 < s_min < s_max finite, got {s_min}, {s_max}")
  _check_positive("image_size", [image_size])
  if first_scale is not None:
    _check_positive("first_scale", [first_scale])
  if caffe_rounding:
    lo, hi = round(s_min * 100), round(s_max * 100)
    step = math.floor((hi - lo) / (m - 1)) / 100
  else:
    step = (s_max - s_min) / (m - 1)
  scales = [s_min + step * k for k in range(m + 1)]
  mins, maxs = scales[:-1], scales[1:]
  if first_scale is not None:
    mins, maxs = [first_scale, *mins], [s_min, *maxs]
  return (
    tuple(image_size * s for s in mins),
    tuple(image_size * s for s in maxs),
  )


def default_boxes(
  image_size: float,
  feature_sizes: Sequence[int],
  steps: Sequence[float],
  min_sizes: Sequence[float],
  max_sizes: Sequence[float],
  aspect_ratios: Sequence[Sequence[float]],
  clip: bool = True,
) -> np.ndarray:
  """SSD default boxes in centre form, normalised to the input size.

  Args:
    image_size: input side in pixels (square inputs).
    feature_sizes: side of each source feature map, e.g. (38, 19, ...).
    steps: stride of each map in input pixels; centres sit at
      `((j + 0.5) step, (i + 0.5) step) / image_size`.
    min_sizes: size of the small square of each map, in pixels.
    max_sizes: the second square of each map has size sqrt(min * max).
    aspect_ratios: per map, the ratios r > 0 used as `(s sqrt(r), s /
      sqrt(r))` and its transpose, s the min size.
    clip: clamp all four centre-form values to [0, 1], as ssd.pytorch and
      torchvision do (the Caffe release does not clip).

  Returns:
    [P, 4] float32 `(cx, cy, w, h)`, P = sum_k f_k^2 (2 + 2 len(ratios_k)).

  Raises:
    ValueError: naming the argument, when the per-map sequences differ in
      length, a feature size is not a positive integer, or a size, step or
      ratio is not a positive finite number.
  """
  per_map = (steps, min_sizes, max_sizes, aspect_ratios)
  if any(len(x) != len(feature_sizes) for x in per_map):
    raise ValueError(
      "feature_sizes, steps, min_sizes, max_sizes and aspect_ratios must have"
      f" one entry per map; got lengths {len(feature_sizes)}, "
      f"{[len(x) for x in per_map]}"
    )
  _check_positive("image_size", [image_size])
  for name, values in zip(
    ("steps", "min_sizes", "max_sizes"), per_map[:3], strict=True
  ):
    _check_positive(name, values)
  if not all(
    isinstance(f, numbers.Integral) and not isinstance(f, bool) and f > 0
    for f in feature_sizes
  ):
    raise ValueError(
      f"feature_sizes must be positive integers, got {feature_sizes}"
    )
  for rs in aspect_ratios:
    if isinstance(rs, str) or not isinstance(rs, Sequence):
      raise ValueError(
        "aspect_ratios must hold one sequence of ratios per map, got "
        f"{aspect_ratios}"
      )
    _check_positive("aspect ratios", rs)
  out = []
  for f, step, lo, hi, ratios in zip(
    feature_sizes, steps, min_sizes, max_sizes, aspect_ratios, strict=True
  ):
    s = lo / image_size
    s_prime = math.sqrt(lo * hi) / image_size
    wh = [(s, s), (s_prime, s_prime)]
    for r in ratios:
      sr = math.sqrt(r)
      wh += [(s * sr, s / sr), (s / sr, s * sr)]
    wh = np.asarray(wh, np.float64)  # [K, 2]
    centres = (np.arange(f, dtype=np.float64) + 0.5) * step / image_size
    cy, cx = np.meshgrid(centres, centres, indexing="ij")  # [f, f]
    xy = np.stack([cx, cy], -1).reshape(-1, 1, 2)  # [f*f, 1, 2]
    xy = np.broadcast_to(xy, (f * f, len(wh), 2))
    whs = np.broadcast_to(wh[None], (f * f, len(wh), 2))
    out.append(np.concatenate([xy, whs], -1).reshape(-1, 4))  # [f*f*K, 4]
  priors = np.concatenate(out, 0) if out else np.zeros((0, 4))
  if clip:
    priors = np.clip(priors, 0.0, 1.0)
  return priors.astype(np.float32)


def paper_prior_config(
  image_size: int, feature_sizes: Sequence[int]
) -> PriorConfig:
  """Default boxes for any map sizes by the paper's rule and release ratios.

  Steps `image_size / side`, the paper's scale rule (`paper_sizes`: the first
  map at 0.1, then 0.2 .. 0.9) and the release's ratio pattern: (2,) on the
  first and last two maps, (2, 3) in between.

  Args:
    image_size: input side in pixels.
    feature_sizes: side of each source map, at least 3 maps.

  Returns:
    A PriorConfig with these feature sizes.

  Raises:
    ValueError: on fewer than 3 maps or a side below 1.
  """
  sizes = tuple(int(f) for f in feature_sizes)
  n = len(sizes)
  if n < 3 or min(sizes) < 1:
    raise ValueError(
      f"paper_prior_config needs at least 3 maps of side >= 1; got {sizes}"
    )
  min_sizes, max_sizes = paper_sizes(image_size, n)
  return PriorConfig(
    image_size=image_size,
    feature_sizes=sizes,
    steps=tuple(image_size / f for f in sizes),
    min_sizes=min_sizes,
    max_sizes=max_sizes,
    aspect_ratios=((2.0,),) + ((2.0, 3.0),) * (n - 3) + ((2.0,), (2.0,)),
  )


class TorchvisionPriorConfig(PriorConfig):
  """A PriorConfig whose boxes clamp only (w, h) to [0, 1], not the centres.

  torchvision's `DefaultBoxGenerator(clip=True)` clamps the width/height
  pairs and leaves centres as they are (SSD300's 10x10 map with step 32 has
  its last centres at 9.5 * 32 / 300 = 1.013); `default_boxes(clip=True)`
  clamps all four values. `boxes()` reproduces torchvision.
  """

  __slots__ = ()

  def boxes(self) -> np.ndarray:
    """[P, 4] float32 (cx, cy, w, h), w and h clamped to [0, 1]."""
    boxes = default_boxes(**self._replace(clip=False)._asdict())
    if self.clip:
      boxes[:, 2:] = np.clip(boxes[:, 2:], 0.0, 1.0)
    return boxes


def prior_boxes(config: PriorConfig) -> np.ndarray:
  """Default boxes of a config: `default_boxes(**config)`, or `boxes()`.

  Args:
    config: a PriorConfig (or TorchvisionPriorConfig).

  Returns:
    [P, 4] float32 (cx, cy, w, h).
  """
  if isinstance(config, TorchvisionPriorConfig):
    return config.boxes()
  return default_boxes(**config._asdict())


# The default boxes of torchvision's `ssd300_vgg16` COCO model: scales
# (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05) of 300 (the release's COCO
# sizes 21, 45, 99, ...), the same grid, steps, ratios and box order as
# SSD300_PRIORS, torchvision's clamping. Use them with weights from
# `ssd_jax.weights.from_torchvision_ssd300`.
TORCHVISION_SSD300_PRIORS = TorchvisionPriorConfig(
  *SSD300_PRIORS._replace(
    min_sizes=(21.0, 45.0, 99.0, 153.0, 207.0, 261.0),
    max_sizes=(45.0, 99.0, 153.0, 207.0, 261.0, 315.0),
  )
)

# The values of a config's `model.priors`: name -> {image_size: PriorConfig}.
# "default" (None) is the model's own rule, `models.default_prior_config`:
# the release's VOC boxes at 300 and 512, `paper_prior_config` elsewhere.
# "fitted" (None) is that rule's grid with the sizes of `model.
# prior_min_sizes` / `prior_max_sizes`, which `fit_prior_config` chooses
# for a dataset (training fits and stores them: `train.fit_priors`).
NAMED_PRIORS: dict[str, dict[int, PriorConfig] | None] = {
  "default": None,
  "fitted": None,
  "coco": {300: SSD300_COCO_PRIORS, 512: SSD512_COCO_PRIORS},
  "torchvision": {300: TORCHVISION_SSD300_PRIORS},
}


def torchvision_prior_config(
  image_size: int,
  feature_sizes: Sequence[int],
  aspect_ratios: Sequence[Sequence[float]],
  min_ratio: float = 0.15,
  max_ratio: float = 0.9,
) -> TorchvisionPriorConfig:
  """torchvision's `DefaultBoxGenerator(aspect_ratios, min_ratio, max_ratio)`.

  The generator without explicit `scales` or `steps` (as SSDLite uses it),
  on square maps of these sides: scales `s_k = min_ratio + (max_ratio -
  min_ratio) k / (m - 1)` for the m maps, then 1.0 appended (one map:
  `[min_ratio, max_ratio]`); map k has min size `s_k`, max size `s_{k+1}`
  (its extra square `sqrt(s_k s_{k+1})`) and centres `(j + 0.5) / f_k`
  (step `image_size / f_k`); widths and heights clamped to [0, 1].

  Args:
    image_size: input side in pixels.
    feature_sizes: side of each map, as the network computes them.
    aspect_ratios: per map, the ratios r (each used as r and 1 / r).
    min_ratio: the first map's scale, a fraction of the input.
    max_ratio: the last map's scale.

  Returns:
    A TorchvisionPriorConfig; `prior_boxes` of it gives torchvision's boxes
    in its (and this module's) order.

  Raises:
    ValueError: on no maps, or ratios not given for every map.
  """
  sizes = tuple(int(f) for f in feature_sizes)
  if not sizes or len(aspect_ratios) != len(sizes):
    raise ValueError(
      "torchvision_prior_config needs one aspect_ratios entry per map; got "
      f"{len(aspect_ratios)} for feature_sizes {sizes}"
    )
  m = len(sizes)
  if m > 1:
    span = max_ratio - min_ratio  # torchvision's arithmetic, term by term
    scales = [min_ratio + span * k / (m - 1.0) for k in range(m)] + [1.0]
  else:
    scales = [min_ratio, max_ratio]
  return TorchvisionPriorConfig(
    image_size=image_size,
    feature_sizes=sizes,
    steps=tuple(image_size / f for f in sizes),
    min_sizes=tuple(image_size * s for s in scales[:-1]),
    max_sizes=tuple(image_size * s for s in scales[1:]),
    aspect_ratios=tuple(tuple(float(r) for r in rs) for rs in aspect_ratios),
  )


def box_coverage(
  gt_boxes: np.ndarray,
  priors: np.ndarray,
  iou_threshold: float = 0.5,
  chunk: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
  """How well default boxes cover ground-truth boxes, box by box (numpy).

  The per-box view of `matching.match`'s rule: a box's positives are the
  priors with IoU >= `iou_threshold`, or, when there is none, the one best
  prior the matcher forces (none when the box overlaps no prior at all).
  Each box is taken alone: priors that another box of the same image
  would take away (a higher IoU wins) still count.

  Args:
    gt_boxes: [M, 4] float corners in [0, 1]; M may be 0.
    priors: [P, 4] float centre form `(cx, cy, w, h)`.
    iou_threshold: the matching threshold (`config.iou_threshold`).
    chunk: boxes per IoU block ([chunk, P] floats at a time).

  Returns:
    best_iou: [M] float32, the highest IoU of each box with any prior.
    num_positives: [M] int32, priors the matcher makes positive for it.

  Raises:
    ValueError: if `gt_boxes` is not [M, 4] or `priors` not [P, 4].
  """
  best, by_map = positives_by_map(
    gt_boxes, priors, (np.shape(priors)[0],), iou_threshold, chunk
  )
  return best, by_map[:, 0]


def positives_by_map(
  gt_boxes: np.ndarray,
  priors: np.ndarray,
  map_rows: Sequence[int],
  iou_threshold: float = 0.5,
  chunk: int | None = None,
  grid_sides: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """`box_coverage`'s positives, split by the source map they lie on.

  Each map's head learns only from the boxes matched on it: a map that
  few boxes reach is a head that barely trains (the deep maps, when every
  object is small at the input size).

  Args:
    gt_boxes: [M, 4] float corners in [0, 1]; M may be 0.
    priors: [P, 4] float centre form, map after map (`prior_boxes`).
    map_rows: the priors of each map, in order, summing to P
      (`rows_per_map`).
    iou_threshold: the matching threshold.
    chunk: boxes per IoU block; None: 512 (128 on the grid, its blocks
      of boxes of similar area).
    grid_sides: each map's side f when the priors are `default_boxes`' grid
      (`config.feature_sizes`: map k holds f^2 cells of map_rows[k] / f^2
      boxes, each box's x corners the same on every row, its y corners
      the same on every column). Then only the cells whose boxes overlap a
      box are visited: the same numbers, bit for bit, several times
      faster on fine maps (what `fit_prior_config` scores hundreds of
      times). None: every box against every prior.

  Returns:
    best_iou: [M] float32, as `box_coverage`.
    num_positives: [M, K] int32, the box's positives on each of the K
      maps; the row sums are `box_coverage`'s positives (a forced prior
      counts on its own map).

  Raises:
    ValueError: if `gt_boxes` is not [M, 4], `priors` not [P, 4],
      `map_rows` does not sum to P, or the priors are not the grid
      `grid_sides` describes.
  """
  gt = np.asarray(gt_boxes, np.float32)
  if gt.ndim != 2 or gt.shape[1] != 4:
    raise ValueError(f"gt_boxes must be [M, 4], got {gt.shape}")
  if np.ndim(priors) != 2 or np.shape(priors)[1] != 4:
    raise ValueError(f"priors must be [P, 4], got {np.shape(priors)}")
  if sum(map_rows) != len(priors) or min(map_rows, default=0) < 0:
    raise ValueError(
      f"map_rows {tuple(map_rows)} must be >= 0 and sum to the "
      f"{len(priors)} priors"
    )
  corners = box_lib.center_to_corners(np.asarray(priors, np.float32), xp=np)
  edges = np.cumsum([0, *map_rows])
  if grid_sides is None or iou_threshold <= 0 or not len(corners):
    best, above, argbest = _dense_hits(
      gt, corners, edges, iou_threshold, chunk or 512
    )
  else:
    grids = _grids(corners, map_rows, grid_sides)
    best, above, argbest = _grid_hits(gt, grids, iou_threshold, chunk or 128)
  forced = (above.sum(1) == 0) & (best > 0)  # The matcher's rule 1.
  forced_map = np.searchsorted(edges, argbest, side="right") - 1
  above[np.flatnonzero(forced), forced_map[forced]] = 1
  return best, above


def _dense_hits(gt, corners, edges, iou_threshold, chunk):
  """Each box's best IoU [M], hits >= threshold per map [M, K] and first
  best prior [M]: every box against every prior, `chunk` boxes at a time."""
  best = np.zeros(len(gt), np.float32)
  above = np.zeros((len(gt), len(edges) - 1), np.int32)
  argbest = np.zeros(len(gt), np.int64)
  if len(corners):
    for start in range(0, len(gt), chunk):
      rows = slice(start, start + chunk)
      iou = box_lib.pairwise_iou(gt[rows], corners, xp=np)  # [chunk, P]
      best[rows] = iou.max(1)
      argbest[rows] = iou.argmax(1)
      hit = iou >= iou_threshold
      for k in range(len(edges) - 1):
        above[rows, k] = hit[:, edges[k] : edges[k + 1]].sum(1)
  return best, above, argbest


class _Grid(NamedTuple):
  """One map's priors as a grid: box q at cell (row y, column x) has x
  corners `x[q, x]` and y corners `y[q, y]`; prior index = offset +
  (y f + x) n + q for n boxes per cell."""

  x: np.ndarray  # [n, f, 2] float32 (x_min, x_max)
  y: np.ndarray  # [n, f, 2] float32 (y_min, y_max)
  offset: int


def _grids(corners, map_rows, sides) -> list[_Grid]:
  """`corners` [P, 4] split into each map's `_Grid`; ValueError if not."""
  if len(sides) != len(map_rows):
    raise ValueError(
      f"grid_sides {tuple(sides)} must have one side per map of map_rows "
      f"{tuple(map_rows)}"
    )
  grids, offset = [], 0
  for k, (f, rows) in enumerate(zip(sides, map_rows, strict=True)):
    f = int(f)
    if f < 1 or rows % (f * f):
      raise ValueError(
        f"map {k}: {rows} priors are not a {f}x{f} grid (grid_sides)"
      )
    n = rows // (f * f)
    block = corners[offset : offset + rows].reshape(f, f, n, 4)  # y, x, q
    x = block[0, :, :, 0::2].transpose(1, 0, 2)  # [n, f, 2]
    y = block[:, 0, :, 1::2].transpose(1, 0, 2)  # [n, f, 2]
    if not (
      np.array_equal(
        block[..., 0::2],
        np.broadcast_to(x.transpose(1, 0, 2)[None], block[..., 0::2].shape),
      )
      and np.array_equal(
        block[..., 1::2],
        np.broadcast_to(y.transpose(1, 0, 2)[:, None], block[..., 1::2].shape),
      )
    ):
      raise ValueError(
        f"map {k}: the priors are not a {f}x{f} grid of {n} boxes per cell "
        "(grid_sides)"
      )
    grids.append(_Grid(x, y, offset))
    offset += rows
  return grids


def _window(inter):
  """First index and length of each [..., f] row's positive entries (the
  span from the first to the last; 0 long where none)."""
  hit = inter > 0
  f = hit.shape[-1]
  first = np.argmax(hit, -1)
  last = f - 1 - np.argmax(hit[..., ::-1], -1)
  return first, np.where(hit.any(-1), last - first + 1, 0)


def _grid_ious(g, g_area, grid):
  """IoUs [G, n, X, Y] of boxes g [G, 4] (areas g_area [G]) with the grid's
  cells in each box's overlap span (`boxes.iou_from_overlaps`: the numbers
  of `elementwise_iou`) and the cells' prior indices [G, n, X, Y] (as a
  callable: only the forced matches need them). Every prior outside the
  spans has IoU exactly 0."""
  n, f = grid.x.shape[:2]
  g = g[:, None, None]  # [G, 1, 1, 4] against the grid's [n, f].
  iw = box_lib.interval_overlap(
    g[..., 0], g[..., 2], grid.x[..., 0], grid.x[..., 1], xp=np
  )  # [G, n, f]
  ih = box_lib.interval_overlap(
    g[..., 1], g[..., 3], grid.y[..., 0], grid.y[..., 1], xp=np
  )  # [G, n, f]
  x0, wx = _window(iw)
  y0, wy = _window(ih)
  span_x, span_y = max(int(wx.max()), 1), max(int(wy.max()), 1)
  xs = np.minimum(x0[..., None] + np.arange(span_x), f - 1)  # [G, n, X]
  ys = np.minimum(y0[..., None] + np.arange(span_y), f - 1)  # [G, n, Y]
  # Cells past a span repeat its last one: their overlap is set to 0 (IoU
  # 0, never a hit), so nothing counts twice.
  iw = np.where(np.arange(span_x) < wx[..., None], _take(iw, xs), 0.0)
  ih = np.where(np.arange(span_y) < wy[..., None], _take(ih, ys), 0.0)
  pw = np.maximum(_take(grid.x[..., 1] - grid.x[..., 0], xs), 0.0)
  ph = np.maximum(_take(grid.y[..., 1] - grid.y[..., 0], ys), 0.0)
  iou = box_lib.iou_from_overlaps(
    iw[..., :, None],
    ih[..., None, :],
    g_area[:, None, None, None],
    pw[..., :, None] * ph[..., None, :],  # The priors' box_area.
    xp=np,
  )  # [G, n, X, Y]

  def index():
    q = np.arange(n)[:, None, None]
    return grid.offset + (ys[..., None, :] * f + xs[..., :, None]) * n + q

  return iou, index


def _take(values, at):
  """values [n, f] or [G, n, f] at indices at [G, n, S] -> [G, n, S]."""
  if values.ndim == 2:
    return values[np.arange(len(values))[:, None], at]
  return np.take_along_axis(values, at, -1)


def _grid_hits(gt, grids, iou_threshold, chunk):
  """`_dense_hits`, bit for bit, visiting only the cells whose priors
  overlap each box: per map and box kind, the span of columns whose x
  sides overlap the box's times the span of rows whose y sides do (every
  other prior's IoU is exactly 0). Boxes go in chunks of similar area so
  the padded spans stay short; the first best prior is looked for only
  where the matcher would force it (no hit, best IoU > 0)."""
  m = len(gt)
  area = box_lib.box_area(gt, xp=np)  # [M]
  map_best = np.zeros((m, len(grids)), np.float32)
  above = np.zeros((m, len(grids)), np.int32)
  order = np.argsort(area, kind="stable")
  for start in range(0, m, chunk):
    rows = order[start : start + chunk]
    for k, grid in enumerate(grids):
      if len(grid.x):
        iou, _ = _grid_ious(gt[rows], area[rows], grid)
        above[rows, k] = (iou >= iou_threshold).sum((1, 2, 3))
        map_best[rows, k] = iou.max((1, 2, 3))
  best = map_best.max(1) if len(grids) else np.zeros(m, np.float32)
  argbest = np.zeros(m, np.int64)  # argmax's answer where best is 0.
  first = np.argmax(map_best == best[:, None], 1)  # Earlier maps: lower.
  forced = (above.sum(1) == 0) & (best > 0)
  for k, grid in enumerate(grids):
    rows = np.flatnonzero(forced & (first == k))
    for start in range(0, len(rows), chunk):
      part = rows[start : start + chunk]
      iou, index = _grid_ious(gt[part], area[part], grid)
      top = iou == best[part, None, None, None]
      argbest[part] = np.where(top, index(), np.iinfo(np.int64).max).min(
        (1, 2, 3)
      )  # The lowest index with the best IoU, as argmax.
  return best, above, argbest


def rows_per_map(config: PriorConfig) -> tuple[int, ...]:
  """Priors of each source map, in `prior_boxes` order: side^2 x boxes."""
  return tuple(
    int(size) ** 2 * boxes_per_location(ratios)
    for size, ratios in zip(
      config.feature_sizes, config.aspect_ratios, strict=True
    )
  )


def mirror_permutation(priors: np.ndarray, tol: float = 1e-4) -> np.ndarray:
  """Each default box's horizontal mirror image among the default boxes.

  Row p of a mirrored image's outputs describes, in the original image, the
  mirror of prior p: the prior with centre (1 - cx, cy) and the same size.
  A grid whose cells tile the input exactly (steps = image size / map size,
  the paper's rule) is mirror-symmetric; the Caffe release's SSD300 grid is
  not (38 cells of 8 px overhang the 300 px input: centres 4..300 px).

  Args:
    priors: [P, 4] (cx, cy, w, h).
    tol: largest centre difference accepted as the same box (box sizes must
      be equal: the grid repeats the same floats at every cell).

  Returns:
    [P] int permutation m with priors[m[p]] = mirror(priors[p]); m[m] is
    the identity.

  Raises:
    ValueError: when some prior has no mirror image among the priors.
  """
  priors = np.asarray(priors, np.float64).reshape(-1, 4)
  perm = np.full(len(priors), -1, np.int64)
  sizes, group = np.unique(priors[:, 2:], axis=0, return_inverse=True)
  for g in range(len(sizes)):
    rows = np.flatnonzero(group.reshape(-1) == g)
    centres = priors[rows, :2]
    mirrored = np.stack([1.0 - centres[:, 0], centres[:, 1]], axis=-1)
    nearest = np.empty(len(rows), np.int64)
    gap = np.empty(len(rows))
    for start in range(0, len(rows), 512):  # [512, n] at a time, not [n, n]
      part = mirrored[start : start + 512]
      dist = np.abs(part[:, None, :] - centres[None, :, :]).max(-1)
      nearest[start : start + 512] = dist.argmin(axis=1)
      gap[start : start + 512] = dist.min(axis=1)
    bad = gap > tol
    if bad.any():
      cx, cy, w, h = priors[rows[np.argmax(bad)]]
      raise ValueError(
        f"the default boxes are not mirror-symmetric: ({cx:.4f}, {cy:.4f}, "
        f"{w:.4f}, {h:.4f}) (cx, cy, w, h) has no mirror image (1 - cx, cy) "
        "among them; a grid is symmetric when each map's step is the input "
        "size over the map size"
      )
    perm[rows] = rows[nearest]
  if not np.array_equal(perm[perm], np.arange(len(perm))):
    raise ValueError("the default boxes' mirror images are not one-to-one")
  return perm


# Where `fit_prior_config` looks: the first map's scale as a fraction of
# s_min (the paper: 0.1 / 0.2), and the grid of scales (fractions of the
# input side) between the smallest boxes and the whole image.
_FIRST_FRACTIONS = (0.35, 0.5, 0.7, 0.85)
_GRID_POINTS = 14
# Candidates whose coverage is within this of the best compete on positives.
_COVERAGE_SLACK = 0.01


def _scaled(base: PriorConfig, first: float, s_min: float, s_max: float):
  """`base` with the paper's scale rule for these scales (fractions)."""
  mins, maxs = paper_sizes(
    base.image_size, len(base.feature_sizes), s_min, s_max, first
  )
  return base._replace(min_sizes=mins, max_sizes=maxs)


def fit_prior_config(
  base: PriorConfig,
  box_sizes: np.ndarray,
  iou_threshold: float = 0.5,
  centers: np.ndarray | None = None,
  max_boxes: int = 1000,
  seed: int = 0,
) -> PriorConfig:
  """Default-box scales chosen for a dataset's boxes, SSD's structure kept.

  The fitted config has `base`'s maps, steps and aspect ratios (so the
  heads' shapes do not change) and the paper's scale rule (`paper_sizes`):
  the first map at its own scale `first`, the others spread linearly from
  `s_min` to `s_max`. A search picks `(first, s_min, s_max)`: a grid of
  scales from half the smallest boxes' size (`sqrt(w h)`, 1st percentile)
  to the whole image for `s_min < s_max` with `first = s_min / 2` (the
  paper's proportion), then other proportions for `first`, then a finer
  step around the best. Each candidate is scored by `box_coverage` of the
  boxes: the fraction whose best prior has IoU >= `iou_threshold`; among
  candidates within 0.01 of the best fraction, the one with the most
  positives per box (capped at 10) wins. `base` itself competes, so the
  coverage of the boxes used never falls below `base`'s.

  Args:
    base: the model's own config (e.g. `models.default_prior_config`), with
      at least 3 maps.
    box_sizes: [M, 2] float `(w, h)` of the training boxes, fractions of the
      input side (normalised corners' differences).
    iou_threshold: the matching threshold.
    centers: [M, 2] float `(cx, cy)` of the same boxes; None places each box
      at a random position (seeded) where it fits in the image.
    max_boxes: at most this many boxes (a seeded random subset) are scored.
    seed: seed of the subset and the random positions.

  Returns:
    A PriorConfig like `base` with new `min_sizes` / `max_sizes` (pixels),
    min sizes increasing and within (0, image_size]; `base` unchanged when
    there are no boxes of positive size or nothing covers more.

  Raises:
    ValueError: on `box_sizes` (or `centers`) not [M, 2], or fewer than 3
      maps in `base`.
  """
  sizes = np.asarray(box_sizes, np.float64)
  if sizes.ndim != 2 or sizes.shape[1] != 2:
    raise ValueError(f"box_sizes must be [M, 2] (w, h), got {sizes.shape}")
  if centers is not None and np.shape(centers) != sizes.shape:
    raise ValueError(
      f"centers must be [M, 2] like box_sizes {sizes.shape}, got "
      f"{np.shape(centers)}"
    )
  if len(base.feature_sizes) < 3:
    raise ValueError(
      "fit_prior_config needs at least 3 maps, got feature_sizes "
      f"{tuple(base.feature_sizes)}"
    )
  rng = np.random.default_rng(seed)
  keep = np.flatnonzero((sizes > 0).all(1))
  if len(keep) > max_boxes:
    keep = np.sort(rng.choice(keep, max_boxes, replace=False))
  if not len(keep):
    return base
  sizes = np.minimum(sizes[keep], 1.0)  # [K, 2]
  if centers is None:
    xy = sizes / 2 + rng.uniform(size=sizes.shape) * (1 - sizes)  # [K, 2]
  else:
    xy = np.asarray(centers, np.float64)[keep]
  boxes = np.concatenate([xy - sizes / 2, xy + sizes / 2], 1)  # [K, 4]

  def score(config: PriorConfig) -> tuple[float, float]:
    best, by_map = positives_by_map(  # = box_coverage, on the grid.
      boxes,
      prior_boxes(config),
      rows_per_map(config),
      iou_threshold,
      grid_sides=config.feature_sizes,
    )
    positives = by_map.sum(1)
    return float(np.mean(best >= iou_threshold)), float(
      np.mean(np.minimum(positives, 10))
    )

  scored = {}  # (first, s_min, s_max) -> (coverage, positives)

  def consider(first, s_min, s_max):
    key = tuple(round(float(s), 6) for s in (first, s_min, s_max))
    if key not in scored and 0 < key[0] < key[1] < key[2] <= 1:
      scored[key] = score(_scaled(base, *key))

  base_score = score(base)

  def winner():
    top = max(c for c, _ in scored.values())
    floor = max(top - _COVERAGE_SLACK, base_score[0])
    near = {k: v for k, v in scored.items() if v[0] >= floor} or scored
    return max(near, key=lambda k: (near[k][1], near[k][0]))

  side = np.sqrt(sizes.prod(1))  # [K]
  lo = max(float(np.quantile(side, 0.01)) / 2, 2.0 / base.image_size)
  grid = np.geomspace(min(lo, 0.5), 1.0, _GRID_POINTS)
  for i, s_min in enumerate(grid):
    for s_max in grid[i + 1 :]:
      consider(s_min / 2, s_min, s_max)
  _, s_min, s_max = winner()
  for fraction in _FIRST_FRACTIONS:
    consider(s_min * fraction, s_min, s_max)
  first, s_min, s_max = winner()
  step = (grid[1] / grid[0]) ** 0.5  # Half a grid step, as a factor.
  for a in (1 / step, 1.0, step):
    for b in (1 / step, 1.0, step):
      consider(first * a, s_min * a, min(s_max * b, 1.0))
  key = winner()
  if scored[key] <= base_score:  # (coverage, positives), in this order.
    return base
  return _scaled(base, *key)
