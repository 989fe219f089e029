r"""Held-out VOC-format datasets that differ from the built-in shapes.

    .venv/bin/python experiments/own_data/make_sets.py --out /tmp/own_data
    .venv/bin/python experiments/own_data/make_sets.py --out /tmp/own_data \
      --sets shapes10,textures --num_train 40 --num_test 12 --seed 1

Writes one VOC-format folder per set, `OUT/<set>/`, as a user's own data
would look (what `ssd_jax.data.voc_folder` reads):

    JPEGImages/<id>.jpg          train_00000.jpg ... test_00119.jpg
    Annotations/<id>.xml         VOC XML: size, objects with name, pose,
                                 truncated, difficult, 1-based bndbox
    ImageSets/Main/train.txt     (and test.txt) one id per line
    classes.txt                  one class name per line
    stats.json                   the set's statistics (not part of VOC)

The sets (`SETS`), each made to differ from `ssd_jax.data.synthetic` (six
shapes, fixed orientation, 128 px, 1-5 objects of 10%-50%) in another way:

  shapes10      10 classes that differ only in shape (star, hexagon, arrow,
                half-disc, L, heart, crescent, pentagon, trapezoid,
                hourglass), turned by a random multiple of 90 degrees; 160
                px on a blotchy coloured background with noise and a few
                unannotated lines; 1-4 objects of 6%-37% of the side.
  shapes10_upright  shapes10 as the issue describes its held-out set: the
                same classes, sizes and backgrounds, upright and without
                the lines.
  small_crowded 5-12 small objects (4%-15% of a 200 px side) of 5 classes,
                boxes overlapping up to IoU 0.3; the later object hides
                the earlier.
  large_few     1-2 large objects (30%-80% of the height, aspect 0.6-1.8)
                on 192x128 images, partly outside the image at times
                (truncated).
  grey_similar  greyscale (JPEG mode L), 8 near-identical classes: an arrow
                in four orientations, and filled versus outlined hexagons
                and stars; 160 px.
  textures      the class is the texture (stripes, checker, dots, marble,
                wood, bricks), not the shape or colour: random blobs,
                ellipses and rounded boxes filled with a texture in random
                colours, on fractal-noise backgrounds; 192 px. The
                textures are synthesised: the environment's packages ship
                no photographs to cut them from (scipy's 2 KB
                `ndimage/tests/dots.png` is the only image installed).
  mixed_sizes   each image 100-300 px wide and high independently (aspect
                1:3 to 3:1), 1-6 objects of 6 classes, 8%-45% of the
                shorter side.

Boxes are exact: each object is rasterised into its own mask, objects
painted later hide earlier ones, and a box is the pixel extent of the
object's visible pixels, `(x_min, y_min, x_max + 1, y_max + 1) / (W, H)` in
the codebase's normalised corners (as `synthetic.py`), written as VOC
pixels with `ssd_jax.data.image.normalized_to_voc_pixels`. An object cut by
the image border is `truncated`; one with less than half of its pixels
visible (hidden or cut) is `difficult` (VOC evaluation ignores those); all
others are difficult-free.

Image k of a split is made from `numpy.random.default_rng([seed, set code,
split code, k])`, so a set does not depend on how many images are asked for
or which other sets are written, and train and test never share a stream.
"""

import argparse
import json
import os
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ssd_jax.data import image as image_lib
from ssd_jax.data import voc_folder

SPLITS = ("train", "test")
_SPLIT_CODES = {"train": 0, "test": 1}
_JPEG_QUALITY = 92

# --- shapes -------------------------------------------------------------------

# Polygons in unit box coordinates (x, y in [0, 1]); other shapes are drawn
# from ellipses in `shape_mask`.
_STAR = tuple(
  (
    0.5 + (0.5 if k % 2 == 0 else 0.2) * np.sin(np.pi * k / 5),
    0.5 - (0.5 if k % 2 == 0 else 0.2) * np.cos(np.pi * k / 5),
  )
  for k in range(10)
)
_POLYGONS = {
  "star": _STAR,
  "hexagon": tuple(
    (0.5 + 0.5 * np.cos(np.pi * k / 3), 0.5 + 0.5 * np.sin(np.pi * k / 3))
    for k in range(6)
  ),
  "pentagon": tuple(
    (0.5 + 0.5 * np.sin(a), 0.5 - 0.5 * np.cos(a))
    for a in 2 * np.pi * np.arange(5) / 5
  ),
  "arrow": (
    (0, 0.33), (0.55, 0.33), (0.55, 0), (1, 0.5), (0.55, 1), (0.55, 0.67),
    (0, 0.67),
  ),
  "l_shape": ((0, 0), (0.4, 0), (0.4, 0.6), (1, 0.6), (1, 1), (0, 1)),
  "trapezoid": ((0.25, 0), (0.75, 0), (1, 1), (0, 1)),
  "hourglass": ((0, 0), (1, 0), (0.6, 0.5), (1, 1), (0, 1), (0.4, 0.5)),
  "t_shape": (
    (0, 0), (1, 0), (1, 0.3), (0.65, 0.3), (0.65, 1), (0.35, 1), (0.35, 0.3),
    (0, 0.3),
  ),
}  # fmt: skip
SHAPES = (*_POLYGONS, "half_disc", "heart", "crescent", "ellipse", "rounded")


def shape_mask(kind: str, width: int, height: int) -> np.ndarray:
  """Rasterises a shape filling a `width` x `height` pixel box.

  Args:
    kind: one of `SHAPES`.
    width, height: the box in pixels (>= 2).

  Returns:
    [height, width] bool mask.

  Raises:
    ValueError: for an unknown kind.
  """
  canvas = Image.new("1", (width, height), 0)
  draw = ImageDraw.Draw(canvas)
  sx, sy = width - 1, height - 1
  scaled = lambda pts: [(x * sx, y * sy) for x, y in pts]
  if kind in _POLYGONS:
    draw.polygon(scaled(_POLYGONS[kind]), fill=1)
  elif kind == "half_disc":  # The upper half of an ellipse twice as high.
    draw.pieslice((0, 0, sx, 2 * sy), 180, 360, fill=1)
  elif kind == "heart":
    draw.ellipse(scaled([(0, 0), (0.54, 0.56)]), fill=1)
    draw.ellipse(scaled([(0.46, 0), (1, 0.56)]), fill=1)
    draw.polygon(scaled([(0.02, 0.36), (0.98, 0.36), (0.5, 1)]), fill=1)
  elif kind == "crescent":
    draw.ellipse((0, 0, sx, sy), fill=1)
    draw.ellipse(scaled([(0.45, -0.05), (1.3, 1.05)]), fill=0)
  elif kind == "ellipse":
    draw.ellipse((0, 0, sx, sy), fill=1)
  elif kind == "rounded":
    draw.rounded_rectangle((0, 0, sx, sy), radius=min(sx, sy) // 4, fill=1)
  else:
    raise ValueError(f"unknown shape {kind!r}; known: {SHAPES}")
  return np.asarray(canvas, bool)


def outline(mask: np.ndarray) -> np.ndarray:
  """The rim of a filled mask, about 1/6 of its smaller side thick.

  Args:
    mask: [h, w] bool.

  Returns:
    [h, w] bool: `mask` minus its erosion.
  """
  thick = max(2, min(mask.shape) // 6)
  padded = Image.fromarray(np.pad(mask, thick).astype(np.uint8) * 255)
  eroded = padded.filter(ImageFilter.MinFilter(2 * thick + 1))
  inner = np.asarray(eroded)[thick:-thick, thick:-thick] > 0
  return mask & ~inner


def blob_mask(rng: np.random.Generator, width: int, height: int):
  """An irregular star-convex blob filling a `width` x `height` box.

  Returns:
    [height, width] bool mask.
  """
  angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
  radii = rng.uniform(0.6, 1.0, 9)
  pts = np.stack([np.cos(angles) * radii, np.sin(angles) * radii], -1)
  pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0))  # [9, 2] in [0, 1]
  canvas = Image.new("1", (width, height), 0)
  poly = [(x * (width - 1), y * (height - 1)) for x, y in pts]
  ImageDraw.Draw(canvas).polygon(poly, fill=1)
  return np.asarray(canvas, bool)


# --- backgrounds and textures -------------------------------------------------


def smooth_field(rng, height: int, width: int, cells: int) -> np.ndarray:
  """Smooth random field in [0, 1]: a `cells`-grid upsampled bicubically.

  Returns:
    [height, width] float32.
  """
  grid = rng.uniform(0.0, 1.0, (cells + 1, cells + 1)).astype(np.float32)
  up = Image.fromarray(grid, "F").resize((width, height), Image.BICUBIC)
  return np.clip(np.asarray(up), 0.0, 1.0)


def fractal_noise(rng, height: int, width: int, octaves: int = 4):
  """Sum of smooth fields at doubling frequencies, halving weights.

  Returns:
    [height, width] float32 in [0, 1].
  """
  total = np.zeros((height, width), np.float32)
  for k in range(octaves):
    total += 0.5**k * smooth_field(rng, height, width, 2 ** (k + 1))
  total -= total.min()
  return total / max(float(total.max()), 1e-6)


def colour_background(rng, height: int, width: int, noise: float = 9.0):
  """Blotchy colour background: a smooth field per channel plus noise.

  Returns:
    [height, width, 3] float64 in about 0..255.
  """
  cells = int(rng.integers(2, 6))
  lo, hi = np.sort(rng.uniform(30, 225, (2, 3)), axis=0)  # [3] each
  field = np.stack(
    [smooth_field(rng, height, width, cells) for _ in range(3)], -1
  )
  noise = noise * rng.standard_normal((height, width, 3), np.float32)
  return lo + (hi - lo) * field + noise


TEXTURES = ("stripes", "checker", "dots", "marble", "wood", "bricks")


def texture(rng, kind: str, height: int, width: int) -> np.ndarray:
  """A texture pattern in [0, 1], random scale, phase and orientation.

  Args:
    rng: the generator (advanced).
    kind: one of `TEXTURES`.
    height, width: pixels.

  Returns:
    [height, width] float32 in [0, 1] (0 and 1 are the two colours).

  Raises:
    ValueError: for an unknown kind.
  """
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  angle = rng.uniform(0, np.pi)
  u = x * np.cos(angle) + y * np.sin(angle)
  v = -x * np.sin(angle) + y * np.cos(angle)
  period = rng.uniform(5.0, 9.0)
  phase = rng.uniform(0, 2 * np.pi)
  if kind == "stripes":
    out = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + phase)
  elif kind == "checker":
    out = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(float)
  elif kind == "dots":
    cu = (u / period + phase) % 1.0 - 0.5
    cv = (v / period) % 1.0 - 0.5
    out = (cu**2 + cv**2 < 0.09).astype(float)
  elif kind == "marble":
    turb = fractal_noise(rng, height, width)
    out = 0.5 + 0.5 * np.sin(2 * np.pi * u / (2 * period) + 6.0 * turb)
  elif kind == "wood":
    cx, cy = rng.uniform(-0.5, 1.5) * width, rng.uniform(-0.5, 1.5) * height
    r = np.hypot(x - cx, (y - cy) * 0.6)
    turb = fractal_noise(rng, height, width)
    out = ((r / period + 1.5 * turb) % 1.0 > 0.45).astype(float)
  elif kind == "bricks":
    brick_h = period * 1.4
    row = np.floor(v / brick_h)
    shifted = u + (row % 2) * period * 1.5
    mortar_u = (shifted / (3 * period)) % 1.0 < 0.12
    mortar_v = (v / brick_h) % 1.0 < 0.16
    out = 1.0 - (mortar_u | mortar_v).astype(float)
  else:
    raise ValueError(f"unknown texture {kind!r}; known: {TEXTURES}")
  return out.astype(np.float32)


def contrasting_colour(rng, background: np.ndarray, min_gap: float = 70.0):
  """A random colour at least `min_gap` from `background` in one channel.

  Args:
    rng: the generator (advanced).
    background: [C] the mean colour under the object.
    min_gap: the smallest largest-channel difference (falls back to the
      best of 30 draws).

  Returns:
    [C] float64 in 0..255.
  """
  best, best_gap = None, -1.0
  for _ in range(30):
    colour = rng.uniform(0, 255, background.shape)
    gap = float(np.abs(colour - background).max())
    if gap >= min_gap:
      return colour
    if gap > best_gap:
      best, best_gap = colour, gap
  return best


# --- scenes -------------------------------------------------------------------


class Obj(NamedTuple):
  """One object of a scene before its box is known.

  Attributes:
    label: 0-based class index.
    mask: [H, W] bool, the object's pixels inside the image.
    full_area: pixel count of the whole rasterised object (inside the image
      or not), for the visible fraction.
  """

  label: int
  mask: np.ndarray
  full_area: int


class Scene(NamedTuple):
  """A rendered image with exact boxes.

  Attributes:
    image: uint8 [H, W, 3], or [H, W] for a greyscale set.
    boxes: [G, 4] float32 normalised corners of the visible pixels.
    labels: [G] int32 0-based class indices.
    difficult: [G] bool, less than half of the object visible.
    truncated: [G] bool, cut by the image border.
  """

  image: np.ndarray
  boxes: np.ndarray
  labels: np.ndarray
  difficult: np.ndarray
  truncated: np.ndarray


def mask_box(mask: np.ndarray) -> np.ndarray:
  """Normalised corners of a mask's pixel extent (pixel i covers [i, i+1)).

  Args:
    mask: [H, W] bool with at least one pixel set.

  Returns:
    [4] float32 `(x_min, y_min, x_max + 1, y_max + 1) / (W, H, W, H)`.
  """
  h, w = mask.shape
  ys, xs = np.nonzero(mask)
  extent = np.asarray([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
  return (extent / np.asarray([w, h, w, h], np.float64)).astype(np.float32)


def box_iou(a, b) -> float:
  """IoU of two (x0, y0, x1, y1) boxes, exclusive upper corners."""
  iw = min(a[2], b[2]) - max(a[0], b[0])
  ih = min(a[3], b[3]) - max(a[1], b[1])
  if iw <= 0 or ih <= 0:
    return 0.0
  inter = iw * ih
  area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
  return inter / (area(a) + area(b) - inter)


def place(
  rng,
  image_hw: tuple[int, int],
  size_wh: tuple[int, int],
  placed: Sequence[tuple[int, int, int, int]],
  max_iou: float = 0.0,
  outside: float = 0.0,
  gap: int = 2,
  tries: int = 30,
):
  """Rejection-samples a free position for a `size_wh` object.

  Args:
    rng: the generator (advanced).
    image_hw: (H, W).
    size_wh: the object's (w, h) in pixels.
    placed: the boxes (x0, y0, x1, y1), exclusive upper corners, already
      taken.
    max_iou: 0 asks for disjoint boxes at least `gap` apart; above 0, the
      largest IoU allowed with each placed box.
    outside: the fraction of the object's width/height that may lie
      outside the image.
    gap: pixels between disjoint boxes.
    tries: draws before giving up.

  Returns:
    The box (x0, y0, x1, y1), possibly reaching outside the image, or None.
  """
  h, w = image_hw
  bw, bh = size_wh
  for _ in range(tries):
    mx, my = int(outside * bw), int(outside * bh)
    x0 = int(rng.integers(-mx, max(w - bw + mx, -mx) + 1))
    y0 = int(rng.integers(-my, max(h - bh + my, -my) + 1))
    box = (x0, y0, x0 + bw, y0 + bh)
    if max_iou > 0:
      free = all(box_iou(box, q) <= max_iou for q in placed)
    else:
      free = all(
        box[0] >= q[2] + gap
        or q[0] >= box[2] + gap
        or box[1] >= q[3] + gap
        or q[1] >= box[3] + gap
        for q in placed
      )
    if free:
      return box
  return None


def paste(local: np.ndarray, box, image_hw) -> np.ndarray:
  """An object's local mask placed at `box` in an image-sized mask.

  Args:
    local: [h, w] bool, the object's own mask.
    box: (x0, y0, x1, y1) where it goes (may reach outside the image).
    image_hw: (H, W).

  Returns:
    [H, W] bool, the part inside the image.
  """
  h, w = image_hw
  x0, y0 = box[0], box[1]
  out = np.zeros((h, w), bool)
  lh, lw = local.shape
  ix0, iy0 = max(x0, 0), max(y0, 0)
  ix1, iy1 = min(x0 + lw, w), min(y0 + lh, h)
  if ix1 > ix0 and iy1 > iy0:
    out[iy0:iy1, ix0:ix1] = local[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
  return out


def finish(image: np.ndarray, objects: Sequence[Obj]) -> Scene:
  """Boxes from the visible pixels of objects painted in order.

  An object's visible pixels are its mask minus those of every later
  object; one with none visible is left out.

  Args:
    image: float [H, W, C] or [H, W], painted.
    objects: in painting order.

  Returns:
    The `Scene` (image rounded and clipped to uint8).
  """
  h, w = image.shape[:2]
  covered = np.zeros((h, w), bool)
  rows = []
  for obj in reversed(objects):
    visible = obj.mask & ~covered
    covered |= obj.mask
    count = int(visible.sum())
    if count == 0:
      continue
    truncated = int(obj.mask.sum()) < obj.full_area
    box = mask_box(visible)
    # Mostly hidden or cut, or a sliver under 4 px: hard to recognise.
    sliver = min((box[2:] - box[:2]) * (w, h)) < 4
    difficult = count < 0.5 * obj.full_area or sliver
    rows.append((box, obj.label, difficult, truncated))
  rows.reverse()
  return Scene(
    image=np.clip(np.round(image), 0, 255).astype(np.uint8),
    boxes=np.asarray([r[0] for r in rows], np.float32).reshape(-1, 4),
    labels=np.asarray([r[1] for r in rows], np.int32),
    difficult=np.asarray([r[2] for r in rows], bool),
    truncated=np.asarray([r[3] for r in rows], bool),
  )


def _log_uniform(rng, lo: float, hi: float) -> float:
  return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _object_size(rng, side: float, aspect: tuple[float, float]):
  """(w, h) pixels of an object of geometric-mean side `side` px."""
  a = _log_uniform(rng, *aspect)
  return max(3, round(side * np.sqrt(a))), max(3, round(side / np.sqrt(a)))


def _paint(image, mask, fill) -> np.ndarray:
  """Sets `image` (float [H, W, C], changed in place) to `fill` where `mask`.

  Args:
    image: float [H, W, C].
    mask: [H, W] bool.
    fill: a colour [C], or anything broadcasting to [H, W, C].

  Returns:
    `image`.
  """
  image[mask] = np.broadcast_to(fill, image.shape)[mask]
  return image


def _shape_scene(
  rng,
  *,
  image_hw,
  shapes,
  count,
  side,
  aspect=(0.75, 4 / 3),
  max_iou=0.0,
  outside=0.0,
  rotate=False,
  lines=0,
) -> Scene:
  """Coloured shapes of classes `shapes` on a blotchy background.

  Args:
    rng: the generator (advanced).
    image_hw: (H, W).
    shapes: class i is `shapes[i]` (a `SHAPES` kind).
    count: (lo, hi) objects per image, inclusive.
    side: (lo, hi) object side (geometric mean of w and h) as a fraction of
      the shorter image side, log-uniform.
    aspect: (lo, hi) width / height, log-uniform.
    max_iou, outside: as `place`.
    rotate: turn each object by a random multiple of 90 degrees.
    lines: up to this many thin unannotated lines (clutter).

  Returns:
    The `Scene`.
  """
  h, w = image_hw
  image = colour_background(rng, h, w)
  draw_lines = int(rng.integers(0, lines + 1))
  if draw_lines:
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(draw_lines):
      pts = rng.uniform(0, 1, (3, 2)) * (w, h)
      draw.line([tuple(p) for p in pts], fill=255, width=1)
    image = _paint(image, np.asarray(canvas) > 0, rng.uniform(0, 255, 3))
  objects, placed = [], []
  for _ in range(int(rng.integers(count[0], count[1] + 1))):
    px = _log_uniform(rng, *side) * min(h, w)
    bw, bh = _object_size(rng, px, aspect)
    box = place(rng, (h, w), (bw, bh), placed, max_iou, outside)
    if box is None:
      continue
    label = int(rng.integers(len(shapes)))
    turns = int(rng.integers(4)) if rotate else 0
    local = shape_mask(shapes[label], *((bh, bw) if turns % 2 else (bw, bh)))
    local = np.rot90(local, turns)
    mask = paste(local, box, (h, w))
    if not mask.any():
      continue
    colour = contrasting_colour(rng, image[mask].mean(0))
    shade = np.linspace(rng.uniform(0.8, 1.0), rng.uniform(1.0, 1.2), w)
    fill = np.clip(colour * shade[None, :, None], 0, 255)  # [1, W, 3]
    image = _paint(image, mask, fill)
    objects.append(Obj(label, mask, int(local.sum())))
    placed.append(box)
  return finish(image, objects)


SHAPES10 = (
  "star", "hexagon", "arrow", "half_disc", "l_shape", "heart", "crescent",
  "pentagon", "trapezoid", "hourglass",
)  # fmt: skip
SMALL_CROWDED = ("heart", "hexagon", "arrow", "crescent", "t_shape")
LARGE_FEW = ("pentagon", "l_shape", "half_disc", "hourglass", "star")
MIXED_SIZES = ("hexagon", "heart", "arrow", "crescent", "trapezoid", "t_shape")
GREY_SIMILAR = (
  "arrow_up", "arrow_right", "arrow_down", "arrow_left", "hexagon_filled",
  "hexagon_outline", "star_filled", "star_outline",
)  # fmt: skip


def scene_shapes10(rng) -> Scene:
  """shapes10: 10 shape classes, 160 px, 1-4 objects of 6%-37%."""
  return _shape_scene(
    rng, image_hw=(160, 160), shapes=SHAPES10, count=(1, 4),
    side=(0.06, 0.37), rotate=True, lines=3,
  )  # fmt: skip


def scene_shapes10_upright(rng) -> Scene:
  """shapes10_upright: shapes10 as the issue describes its held-out set,
  upright (no 90-degree turns) and without clutter lines."""
  return _shape_scene(
    rng, image_hw=(160, 160), shapes=SHAPES10, count=(1, 4),
    side=(0.06, 0.37),
  )  # fmt: skip


def scene_small_crowded(rng) -> Scene:
  """small_crowded: 5-12 objects of 4%-15% of 200 px, IoU <= 0.3."""
  return _shape_scene(
    rng, image_hw=(200, 200), shapes=SMALL_CROWDED, count=(5, 12),
    side=(0.04, 0.15), max_iou=0.3, rotate=True,
  )  # fmt: skip


def scene_large_few(rng) -> Scene:
  """large_few: 1-2 objects of 30%-80% of the height, 192x128 images."""
  return _shape_scene(
    rng, image_hw=(128, 192), shapes=LARGE_FEW, count=(1, 2),
    side=(0.3, 0.8), aspect=(0.6, 1.8), max_iou=0.25, outside=0.2,
  )  # fmt: skip


def scene_mixed_sizes(rng) -> Scene:
  """mixed_sizes: 100-300 px each way, 1-6 objects of 8%-45%."""
  h, w = (int(v) for v in rng.integers(100, 301, 2))
  return _shape_scene(
    rng, image_hw=(h, w), shapes=MIXED_SIZES, count=(1, 6),
    side=(0.08, 0.45), rotate=True,
  )  # fmt: skip


def scene_grey_similar(rng) -> Scene:
  """grey_similar: greyscale 160 px, 8 near-identical classes, 1-5."""
  h = w = 160
  cells = int(rng.integers(2, 5))
  lo, hi = np.sort(rng.uniform(30, 225, 2))
  image = lo + (hi - lo) * smooth_field(rng, h, w, cells)
  image = image + rng.normal(0.0, 8.0, (h, w))
  objects, placed = [], []
  for _ in range(int(rng.integers(1, 6))):
    px = _log_uniform(rng, 0.08, 0.35) * h
    bw, bh = _object_size(rng, px, (0.85, 1 / 0.85))
    box = place(rng, (h, w), (bw, bh), placed)
    if box is None:
      continue
    label = int(rng.integers(len(GREY_SIMILAR)))
    kind, variant = GREY_SIMILAR[label].split("_")
    if kind == "arrow":  # right, then turned: up is a quarter turn left.
      turns = {"right": 0, "up": 1, "left": 2, "down": 3}[variant]
      size = (bh, bw) if turns % 2 else (bw, bh)
      local = np.rot90(shape_mask("arrow", *size), turns)
    else:
      local = shape_mask(kind, bw, bh)
      if variant == "outline":
        local = outline(local)
    mask = paste(local, box, (h, w))
    level = contrasting_colour(rng, image[mask].mean(keepdims=True), 60.0)
    image = np.where(mask, level[0], image)
    objects.append(Obj(label, mask, int(local.sum())))
    placed.append(box)
  return finish(image, objects)


def scene_textures(rng) -> Scene:
  """textures: the class is the texture; 192 px, 1-4 objects of 15%-45%."""
  h = w = 192
  c0, c1 = rng.uniform(20, 235, (2, 3))
  field = fractal_noise(rng, h, w, octaves=5)[..., None]
  image = c0 + (c1 - c0) * field + rng.normal(0.0, 6.0, (h, w, 3))
  objects, placed = [], []
  for _ in range(int(rng.integers(1, 5))):
    px = _log_uniform(rng, 0.15, 0.45) * h
    bw, bh = _object_size(rng, px, (0.6, 1 / 0.6))
    box = place(rng, (h, w), (bw, bh), placed, gap=3)
    if box is None:
      continue
    label = int(rng.integers(len(TEXTURES)))
    form = ("blob", "ellipse", "rounded")[int(rng.integers(3))]
    if form == "blob":
      local = blob_mask(rng, bw, bh)
    else:
      local = shape_mask(form, bw, bh)
    mask = paste(local, box, (h, w))
    pattern = texture(rng, TEXTURES[label], h, w)[..., None]  # [H, W, 1]
    a = contrasting_colour(rng, image[mask].mean(0), 40.0)
    b = contrasting_colour(rng, a, 90.0)
    image = _paint(image, mask, a + (b - a) * pattern)
    objects.append(Obj(label, mask, int(local.sum())))
    placed.append(box)
  return finish(image, objects)


class SetSpec(NamedTuple):
  """One held-out set: its class names and scene generator."""

  classes: tuple[str, ...]
  scene: Callable[[np.random.Generator], Scene]
  grey: bool = False


SETS = {
  "shapes10": SetSpec(SHAPES10, scene_shapes10),
  "shapes10_upright": SetSpec(SHAPES10, scene_shapes10_upright),
  "small_crowded": SetSpec(SMALL_CROWDED, scene_small_crowded),
  "large_few": SetSpec(LARGE_FEW, scene_large_few),
  "grey_similar": SetSpec(GREY_SIMILAR, scene_grey_similar, grey=True),
  "textures": SetSpec(TEXTURES, scene_textures),
  "mixed_sizes": SetSpec(MIXED_SIZES, scene_mixed_sizes),
}


def generate(name: str, split: str, index: int, seed: int = 0) -> Scene:
  """Image `index` of a set's split, from its own random stream.

  Args:
    name: a key of `SETS`.
    split: "train" or "test".
    index: image number (>= 0).
    seed: the data's seed.

  Returns:
    The `Scene`.

  Raises:
    ValueError: for an unknown set or split.
  """
  if name not in SETS:
    raise ValueError(f"unknown set {name!r}; known: {list(SETS)}")
  if split not in _SPLIT_CODES:
    raise ValueError(f"split must be one of {SPLITS}: {split!r}")
  code = zlib.crc32(name.encode())
  rng = np.random.default_rng([seed, code, _SPLIT_CODES[split], index])
  return SETS[name].scene(rng)


# --- VOC writing --------------------------------------------------------------


def voc_xml(image_id: str, size: tuple[int, int], depth: int, objects) -> str:
  """A VOC XML annotation (`voc_folder.annotation_xml`) of this generator.

  Args:
    image_id: the id; the file name is `<id>.jpg`.
    size: (height, width) in pixels.
    depth: 3 for colour, 1 for greyscale.
    objects: [(name, (xmin, ymin, xmax, ymax) 1-based inclusive ints,
      difficult, truncated)].

  Returns:
    The XML text.
  """
  return voc_folder.annotation_xml(
    image_id,
    size,
    objects,
    depth=depth,
    folder="own_data",
    source=(("database", "make_sets"),),
  )


def _write_text(path: str, text: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def _range(values) -> list[float]:
  """[min, max] rounded, or [] for no values."""
  values = np.asarray(values, np.float64)
  if values.size == 0:
    return []
  return [round(float(values.min()), 4), round(float(values.max()), 4)]


def write_set(
  root: str, name: str, num_train: int, num_test: int, seed: int = 0
) -> dict:
  """Writes one set as a VOC-format folder and returns its statistics.

  Args:
    root: the set's folder (created).
    name: a key of `SETS`.
    num_train, num_test: images per split (>= 1).
    seed: the data's seed.

  Returns:
    {"name", "classes", "seconds", "splits": {split: {"images", "objects",
     "objects_per_image" [min, mean, max], "box_side" [min, max] (box
     width and height over the image's width and height), "box_sqrt_area"
     [min, max] (sqrt of box area over image area), "image_sizes" [[min H,
     min W], [max H, max W]], "difficult", "truncated", "class_counts"
     {name: n}}}}; also written to `root/stats.json`.

  Raises:
    ValueError: for an unknown set or a split size below 1.
  """
  if name not in SETS:
    raise ValueError(f"unknown set {name!r}; known: {list(SETS)}")
  if min(num_train, num_test) < 1:
    raise ValueError(f"need >= 1 image per split: {num_train}, {num_test}")
  spec = SETS[name]
  start = time.perf_counter()
  for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
  _write_text(os.path.join(root, "classes.txt"), "\n".join(spec.classes) + "\n")
  stats = {"name": name, "classes": list(spec.classes), "splits": {}}
  for split, count in zip(SPLITS, (num_train, num_test), strict=True):
    ids, per_image, sides, roots, sizes = [], [], [], [], []
    difficult = truncated = 0
    class_counts = dict.fromkeys(spec.classes, 0)
    for k in range(count):
      scene = generate(name, split, k, seed)
      image_id = f"{split}_{k:05d}"
      ids.append(image_id)
      h, w = scene.image.shape[:2]
      Image.fromarray(scene.image).save(
        os.path.join(root, "JPEGImages", image_id + ".jpg"),
        format="JPEG",
        quality=_JPEG_QUALITY,
      )
      pixels = image_lib.normalized_to_voc_pixels(scene.boxes, (h, w))
      pixels = np.rint(pixels).astype(np.int64)  # Exact integers already.
      objects = [
        (spec.classes[label], tuple(px), bool(d), bool(t))
        for px, label, d, t in zip(
          pixels, scene.labels, scene.difficult, scene.truncated, strict=True
        )
      ]
      _write_text(
        os.path.join(root, "Annotations", image_id + ".xml"),
        voc_xml(image_id, (h, w), 1 if spec.grey else 3, objects),
      )
      wh = scene.boxes[:, 2:] - scene.boxes[:, :2]  # [G, 2]
      per_image.append(len(objects))
      sides.extend(wh.ravel().tolist())
      roots.extend(np.sqrt(wh.prod(-1)).tolist())
      sizes.append((h, w))
      difficult += int(scene.difficult.sum())
      truncated += int(scene.truncated.sum())
      for label in scene.labels:
        class_counts[spec.classes[label]] += 1
    _write_text(
      os.path.join(root, "ImageSets", "Main", split + ".txt"),
      "\n".join(ids) + "\n",
    )
    sizes = np.asarray(sizes)
    stats["splits"][split] = {
      "images": count,
      "objects": int(sum(per_image)),
      "objects_per_image": [
        min(per_image),
        round(float(np.mean(per_image)), 2),
        max(per_image),
      ],
      "box_side": _range(sides),
      "box_sqrt_area": _range(roots),
      "image_sizes": [sizes.min(0).tolist(), sizes.max(0).tolist()],
      "difficult": difficult,
      "truncated": truncated,
      "class_counts": class_counts,
    }
  stats["seconds"] = round(time.perf_counter() - start, 2)
  with open(os.path.join(root, "stats.json"), "w") as f:
    json.dump(stats, f, indent=1)
  return stats


def _summary(stats: dict) -> str:
  lines = []
  for split, s in stats["splits"].items():
    lo, mean, hi = s["objects_per_image"]
    lines.append(
      f"{stats['name']:<14} {split:<5} {s['images']:>4} images "
      f"{s['objects']:>5} objects ({lo}-{hi}, mean {mean}) "
      f"box side {s['box_side']} sqrt-area {s['box_sqrt_area']} "
      f"sizes {s['image_sizes']} difficult {s['difficult']} "
      f"truncated {s['truncated']}"
    )
  lines.append(
    f"{'':<14} {len(stats['classes'])} classes, {stats['seconds']} s"
  )
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
  """Writes the sets asked for; returns {set name: statistics}."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="parent folder of the sets")
  parser.add_argument(
    "--sets", default=",".join(SETS), help=f"comma list of {list(SETS)}"
  )
  parser.add_argument("--num_train", type=int, default=400)
  parser.add_argument("--num_test", type=int, default=120)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  names = [s.strip() for s in args.sets.split(",") if s.strip()]
  unknown = [n for n in names if n not in SETS]
  if unknown or not names:
    parser.error(f"--sets: unknown {unknown}; known: {list(SETS)}")
  results = {}
  for name in names:
    root = os.path.join(args.out, name)
    results[name] = write_set(
      root, name, args.num_train, args.num_test, args.seed
    )
    print(_summary(results[name]), flush=True)
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
