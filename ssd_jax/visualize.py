"""Pictures and tables of detections: colours, drawn boxes, PR plots, grids.

PIL only (no matplotlib). Boxes here are corners `(x_min, y_min, x_max,
y_max)` in pixels of the picture they are drawn on; class labels are 1..C-1
and `class_names[label - 1]` names them.
"""

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

_PALETTE = (
  (230, 25, 75),
  (60, 180, 75),
  (0, 130, 200),
  (245, 130, 48),
  (145, 30, 180),
  (70, 240, 240),
  (240, 50, 230),
  (210, 245, 60),
  (250, 190, 212),
  (0, 128, 128),
  (170, 110, 40),
  (128, 0, 0),
  (128, 128, 0),
  (0, 0, 128),
)

# Detection tiles smaller than this (longest side, pixels) are enlarged by an
# integer factor so that their labels stay readable.
_TILE_SIDE = 256


def class_color(label: int) -> tuple[int, int, int]:
  """A stable RGB colour for a class label (1..C-1)."""
  return _PALETTE[(int(label) - 1) % len(_PALETTE)]


def draw_detections(
  image: np.ndarray,
  boxes: np.ndarray,
  labels: np.ndarray,
  scores: np.ndarray,
  class_names: Sequence[str],
  min_score: float = 0.3,
) -> Image.Image:
  """Draws labelled boxes on an image.

  Args:
    image: [H, W, 3] uint8 RGB.
    boxes: [K, 4] corners in pixels of `image`.
    labels: [K] int classes 1..C-1.
    scores: [K] float scores; boxes below `min_score` are not drawn.
    class_names: names of classes 1..C-1 (index label - 1).
    min_score: drawing threshold.

  Returns:
    A new RGB PIL image of size (W, H).
  """
  img = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
  draw = ImageDraw.Draw(img)
  for box, label, score in zip(boxes, labels, scores, strict=True):
    if score < min_score:
      continue
    color = class_color(label)
    x0, y0, x1, y1 = (float(v) for v in box)
    draw.rectangle([x0, y0, x1, y1], outline=color, width=2)
    text = f"{class_names[int(label) - 1]} {float(score):.2f}"
    tw = draw.textlength(text)
    ty = max(y0 - 11, 0)
    draw.rectangle([x0, ty, x0 + tw + 2, ty + 11], fill=color)
    draw.text((x0 + 1, ty), text, fill=(255, 255, 255))
  return img


def plot_pr_curves(
  curves: dict[str, tuple[np.ndarray, np.ndarray]],
  aps: dict[str, float],
  title: str,
  size: int = 480,
) -> Image.Image:
  """Precision-recall curves of several classes on one PIL plot.

  Args:
    curves: class name -> (recall [T], precision [T]).
    aps: class name -> AP (shown in the legend).
    title: drawn at the top.
    size: side of the square plot area in pixels.

  Returns:
    An RGB PIL image.
  """
  margin, legend_w = 40, 170
  img = Image.new(
    "RGB", (size + 2 * margin + legend_w, size + 2 * margin), "white"
  )
  draw = ImageDraw.Draw(img)
  x0, y0, x1, y1 = margin, margin, margin + size, margin + size
  draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
  for t in range(11):
    f = t / 10
    gx, gy = x0 + f * size, y1 - f * size
    draw.line([gx, y1, gx, y1 + 4], fill=(0, 0, 0))
    draw.line([x0 - 4, gy, x0, gy], fill=(0, 0, 0))
    if t % 2 == 0:
      draw.text((gx - 8, y1 + 6), f"{f:.1f}", fill=(0, 0, 0))
      draw.text((x0 - 30, gy - 5), f"{f:.1f}", fill=(0, 0, 0))
  draw.text((x0 + size // 2 - 20, y1 + 20), "recall", fill=(0, 0, 0))
  draw.text((x0, 10), title, fill=(0, 0, 0))
  draw.text((x0 - 38, y0 - 18), "precision", fill=(0, 0, 0))
  for n, (name, (rec, prec)) in enumerate(curves.items()):
    color = _PALETTE[n % len(_PALETTE)]
    if len(rec):
      pts = [(x0, y1 - float(prec[0]) * size)]
      pts += [
        (x0 + float(r) * size, y1 - float(p) * size)
        for r, p in zip(rec, prec, strict=True)
      ]
      draw.line(pts, fill=color, width=2)
    ap = aps.get(name, float("nan"))
    ly = y0 + 14 * n
    draw.line([x1 + 10, ly + 6, x1 + 30, ly + 6], fill=color, width=3)
    draw.text((x1 + 34, ly), f"{name} {ap:.3f}", fill=(0, 0, 0))
  return img


def format_ap_table(
  step: int, mAP: float, per_class_ap: dict[str, float]
) -> str:
  """A plain-text per-class AP table for the log.

  Args:
    step: the training step evaluated (the first line).
    mAP: the headline metric (the last line).
    per_class_ap: class name -> AP, one line each, in order.

  Returns:
    The table, lines joined by newlines.
  """
  width = max([len(n) for n in per_class_ap] + [5])
  lines = [f"Evaluation at step {step}", f"{'class':<{width}}  AP"]
  for name, ap in per_class_ap.items():
    lines.append(f"{name:<{width}}  {ap:.4f}")
  lines.append(f"{'mAP':<{width}}  {mAP:.4f}")
  return "\n".join(lines)


def grid_image(tiles: Sequence[Image.Image], columns: int = 4) -> Image.Image:
  """Pastes images into a grid (row-major), white background.

  Args:
    tiles: the images; each cell is as large as the largest tile.
    columns: cells per row (fewer when there are fewer tiles).

  Returns:
    An RGB PIL image.

  Raises:
    ValueError: when `tiles` is empty.
  """
  if not tiles:
    raise ValueError("grid_image needs at least one image")
  w = max(t.width for t in tiles)
  h = max(t.height for t in tiles)
  cols = min(columns, len(tiles))
  rows = -(-len(tiles) // cols)
  out = Image.new("RGB", (cols * w, rows * h), "white")
  for n, tile in enumerate(tiles):
    out.paste(tile, ((n % cols) * w, (n // cols) * h))
  return out


def detections_grid(
  pictures: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
  class_names: Sequence[str],
  columns: int = 4,
) -> Image.Image:
  """Detections drawn on several images, as one grid picture.

  A picture whose longest side is under 256 pixels is first enlarged by the
  largest integer factor that keeps it at most 256 (nearest neighbour), so
  that its labels stay readable.

  Args:
    pictures: per image (image [H, W, 3] uint8, boxes [K, 4] corners in
      pixels of that image, labels [K] in 1..C-1, scores [K]).
    class_names: names of classes 1..C-1.
    columns: cells per row.

  Returns:
    An RGB PIL image (`grid_image` of the drawn tiles; scores below
    `draw_detections`'s default threshold are not drawn).

  Raises:
    ValueError: when `pictures` is empty.
  """
  tiles = []
  for image, boxes, labels, scores in pictures:
    image = np.asarray(image, np.uint8)
    zoom = max(1, _TILE_SIDE // max(image.shape[:2]))
    big = Image.fromarray(image).resize(
      (image.shape[1] * zoom, image.shape[0] * zoom), Image.NEAREST
    )
    tiles.append(
      draw_detections(
        np.asarray(big), np.asarray(boxes) * zoom, labels, scores, class_names
      )
    )
  return grid_image(tiles, columns)
