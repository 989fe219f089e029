"""Synthetic shapes: a seeded, offline detection dataset with exact boxes.

Each image is a noisy two-colour gradient with 1..`max_objects` shapes
(circle/ellipse, square/rectangle, triangle, diamond, cross, ring) of
random colour, side log-uniform in [`min_size`, `max_size`] of the image
side and aspect in [3/4, 4/3], so that small and large objects appear
together and a detector needs several feature maps. Shapes do not overlap
(with a small gap), so every box is the exact extent of its drawn pixels:
each shape is rasterised into its own mask and its box is the mask's pixel
extent, `(x_min, y_min, x_max + 1, y_max + 1) / size` in the codebase's
normalised corner convention (pixel i covers [i, i + 1)).

Colour does not tell the class; shape does. Image k of a split is made from
`numpy.random.default_rng([seed, split_code, k])`, so it does not depend on
how many images are asked for, and the train (code 0) and eval (code 1)
splits never share a generator stream.
"""

import functools

import numpy as np
from PIL import Image, ImageDraw

SHAPE_NAMES = ("circle", "square", "triangle", "diamond", "cross", "ring")
_SPLIT_CODES = {"train": 0, "eval": 1}


def _shape_mask(name: str, size: int, box: tuple[int, int, int, int]):
  """Rasterises one shape filling the integer box (x0, y0, x1, y1) inclusive.

  Returns:
    [size, size] bool mask.
  """
  mask = Image.new("1", (size, size), 0)
  draw = ImageDraw.Draw(mask)
  x0, y0, x1, y1 = box
  w, h = x1 - x0, y1 - y0
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  if name == "circle":
    draw.ellipse(box, fill=1)
  elif name == "square":
    draw.rectangle(box, fill=1)
  elif name == "triangle":
    draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=1)
  elif name == "diamond":
    draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=1)
  elif name == "cross":
    tw, th = max(w / 3, 1), max(h / 3, 1)
    draw.rectangle((cx - tw / 2, y0, cx + tw / 2, y1), fill=1)
    draw.rectangle((x0, cy - th / 2, x1, cy + th / 2), fill=1)
  elif name == "ring":
    draw.ellipse(box, fill=1)
    rw, rh = w * 0.3, h * 0.3
    draw.ellipse((x0 + rw, y0 + rh, x1 - rw, y1 - rh), fill=0)
  else:
    raise ValueError(f"unknown shape {name!r}; known: {SHAPE_NAMES}")
  return np.asarray(mask, bool)


def generate_example(
  seed: int,
  index: int,
  split: str = "train",
  image_size: int = 128,
  max_objects: int = 5,
  min_size: float = 0.1,
  max_size: float = 0.5,
) -> dict:
  """One synthetic image with its exact boxes.

  Args:
    seed: dataset seed.
    index: image number within the split (>= 0).
    split: "train" or "eval"; the two never share a random stream.
    image_size: square image side in pixels.
    max_objects: objects per image are uniform in 1..max_objects.
    min_size: smallest object side as a fraction of the image side.
    max_size: largest object side fraction (<= 1).

  Returns:
    Example dict: "image" uint8 [S, S, 3], "boxes" float32 [G, 4] corners
    normalised, "labels" int32 [G] in 1..len(SHAPE_NAMES), "difficult" bool
    [G] (all False), "is_crowd" bool [G] (all False), "image_id" str,
    "original_size" (S, S).

  Raises:
    ValueError: for an unknown split or sizes out of range.
  """
  if split not in _SPLIT_CODES:
    raise ValueError(f"split must be one of {tuple(_SPLIT_CODES)}: {split!r}")
  if not 0 < min_size <= max_size <= 1:
    raise ValueError(
      f"need 0 < min_size <= max_size <= 1, got {min_size}, {max_size}"
    )
  if max_objects < 1:
    raise ValueError(f"max_objects must be >= 1, got {max_objects}")
  size = image_size
  rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
  # Background: vertical blend of two dull colours, plus pixel noise.
  top, bottom = rng.uniform(40, 215, (2, 3))
  t = np.linspace(0.0, 1.0, size)[:, None, None]  # [S, 1, 1]
  image = np.broadcast_to(top * (1 - t) + bottom * t, (size, size, 3))
  image = image + rng.normal(0.0, 8.0, (size, size, 3))
  background = (top + bottom) / 2
  boxes, labels, placed = [], [], []
  for _ in range(int(rng.integers(1, max_objects + 1))):
    for _ in range(20):  # Rejection-sample a free spot.
      side = size * np.exp(rng.uniform(np.log(min_size), np.log(max_size)))
      aspect = np.exp(rng.uniform(np.log(0.75), np.log(4 / 3)))
      w = int(np.clip(round(side * np.sqrt(aspect)), 4, size))
      h = int(np.clip(round(side / np.sqrt(aspect)), 4, size))
      x0 = int(rng.integers(0, size - w + 1))
      y0 = int(rng.integers(0, size - h + 1))
      gap = 2
      if all(
        x0 > q[2] + gap
        or q[0] > x0 + w + gap
        or y0 > q[3] + gap
        or q[1] > y0 + h + gap
        for q in placed
      ):
        break
    else:
      continue
    label = int(rng.integers(len(SHAPE_NAMES)))
    mask = _shape_mask(
      SHAPE_NAMES[label], size, (x0, y0, x0 + w - 1, y0 + h - 1)
    )
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
      continue
    colour = rng.uniform(0, 255, 3)
    while np.abs(colour - background).max() < 60:  # Keep it visible.
      colour = rng.uniform(0, 255, 3)
    image = np.where(mask[..., None], colour, image)
    placed.append((x0, y0, x0 + w - 1, y0 + h - 1))
    boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    labels.append(label + 1)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4) / size
  return {
    "image": np.clip(np.round(image), 0, 255).astype(np.uint8),
    "boxes": boxes,
    "labels": np.asarray(labels, np.int32),
    "difficult": np.zeros(len(labels), bool),
    "is_crowd": np.zeros(len(labels), bool),
    "image_id": f"{split}_{seed}_{index}",
    "original_size": (size, size),
  }


def read_synthetic(seed: int, num_images: int, split: str = "train", **kwargs):
  """Yields `num_images` synthetic example dicts (see `generate_example`).

  Args:
    seed: dataset seed.
    num_images: how many images.
    split: "train" or "eval".
    **kwargs: passed to `generate_example` (image_size, max_objects, ...).

  Yields:
    Example dicts, image 0 first.
  """
  for index in range(num_images):
    yield generate_example(seed, index, split, **kwargs)


@functools.lru_cache(maxsize=4)
def synthetic_arrays(
  seed: int,
  num_images: int,
  split: str = "train",
  image_size: int = 128,
  max_objects: int = 5,
  min_size: float = 0.1,
  max_size: float = 0.5,
) -> dict:
  """A whole synthetic split as padded numpy arrays (cached).

  Args:
    seed, num_images, split, image_size, max_objects, min_size, max_size:
      as `generate_example`.

  Returns:
    Dict of arrays with leading dimension N = num_images: "image" uint8
    [N, S, S, 3], "boxes" float32 [N, max_objects, 4], "labels" int32
    [N, max_objects] (0 = padding), "difficult" and "is_crowd" bool
    [N, max_objects], "num_boxes" int32 [N], "image_id" str [N],
    "original_size" int32 [N, 2].
  """
  if num_images < 1:
    raise ValueError(f"num_images must be >= 1, got {num_images}")
  n, m = num_images, max_objects
  out = {
    "image": np.zeros((n, image_size, image_size, 3), np.uint8),
    "boxes": np.zeros((n, m, 4), np.float32),
    "labels": np.zeros((n, m), np.int32),
    "difficult": np.zeros((n, m), bool),
    "is_crowd": np.zeros((n, m), bool),
    "num_boxes": np.zeros(n, np.int32),
    "image_id": np.empty(n, object),
    "original_size": np.full((n, 2), image_size, np.int32),
  }
  examples = read_synthetic(
    seed,
    n,
    split,
    image_size=image_size,
    max_objects=m,
    min_size=min_size,
    max_size=max_size,
  )
  for i, ex in enumerate(examples):
    g = len(ex["labels"])
    out["image"][i] = ex["image"]
    out["boxes"][i, :g] = ex["boxes"]
    out["labels"][i, :g] = ex["labels"]
    out["num_boxes"][i] = g
    out["image_id"][i] = ex["image_id"]
  for value in out.values():
    value.flags.writeable = False
  return out
