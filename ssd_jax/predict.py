"""Detections on image files (`--mode=predict`), as evaluation sees them.

Each file is decoded and preprocessed exactly as the eval pipeline does
(`pipeline.create_image_file_iterator`: the file sources' decoder, then
`pipeline.eval_inputs`), batched as evaluation batches (`eval.batch_size`,
the last batch padded, so the forward is the evaluator's compiled one), and
decoded by `Evaluator.detect`. An image of the eval set therefore gets the
evaluator's detections; boxes are reported in continuous pixel corners of
the original image (`data.image.normalized_to_pixels`).
"""

import glob
import itertools
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ssd_jax import visualize
from ssd_jax.data import image as image_lib
from ssd_jax.data import pipeline
from ssd_jax.evaluator import Evaluator

PREDICTIONS = "predictions.json"


def expand_images(patterns: Sequence[str]) -> list[str]:
  """Files named by paths or globs, in order, without duplicates.

  Args:
    patterns: file paths or glob patterns (`--images`); the matches of a
      glob are sorted.

  Returns:
    The existing files, first occurrence first.

  Raises:
    FileNotFoundError: naming a pattern that matches nothing.
  """
  paths = []
  for pattern in patterns:
    matches = (
      sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    )
    matches = [m for m in matches if os.path.isfile(m)]
    if not matches:
      raise FileNotFoundError(f"--images: no file matches {pattern!r}")
    paths += [m for m in matches if m not in paths]
  return paths


def predict_images(
  evaluator: Evaluator,
  params: Any,
  image_paths: Sequence[str],
  output_dir: str,
  min_score: float = 0.3,
) -> list[dict[str, Any]]:
  """Detects objects in image files; writes JSON and pictures.

  Writes `output_dir/predictions.json` (a list of {"image", "width",
  "height", "detections": [{"box": [x_min, y_min, x_max, y_max] continuous
  pixel corners of the original image, rounded to 0.01, "score", "label",
  "class"}]}) with detections scoring >= min_score, and one
  `<name>_detections.png` per image (the decoded file with its boxes).

  Args:
    evaluator: an Evaluator (model, config, class names); its `detect`
      decodes the network outputs with the config's eval settings.
    params: model parameters.
    image_paths: image files (JPEG, PNG, BMP or GIF).
    output_dir: created if missing.
    min_score: keep detections at or above this score.

  Returns:
    The records written to predictions.json, one per image, in order.

  Raises:
    FileNotFoundError: when an image file is missing.
    ValueError: when no image is given.
  """
  if not image_paths:
    raise ValueError("predict needs at least one image (--images)")
  for path in image_paths:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"Image file not found: {path}")
  os.makedirs(output_dir, exist_ok=True)
  batch_size = int(evaluator.config.eval.batch_size)
  examples = pipeline.create_image_file_iterator(
    image_paths, image_size=evaluator.model.image_size
  )
  examples = zip(image_paths, examples, strict=True)
  records = []
  while chunk := list(itertools.islice(examples, batch_size)):
    images = np.stack([ex["image"] for _, ex in chunk])  # [n, S, S, 3]
    pad = np.zeros((batch_size - len(chunk),) + images.shape[1:], np.float32)
    valid = np.arange(batch_size) < len(chunk)
    dets = evaluator.detect(params, np.concatenate([images, pad]), valid)
    for (path, ex), det in zip(chunk, dets, strict=True):
      records.append(
        _write_one(evaluator, path, ex["original"], det, output_dir, min_score)
      )
  with open(os.path.join(output_dir, PREDICTIONS), "w") as f:
    json.dump(records, f, indent=2)
  return records


def _write_one(evaluator, path, original, det, output_dir, min_score):
  """Draws one image's detections; returns its predictions.json record."""
  h, w = original.shape[:2]
  keep = det.scores >= min_score
  boxes = image_lib.normalized_to_pixels(det.boxes[keep], (h, w))
  labels, scores = det.labels[keep], det.scores[keep]
  stem = os.path.splitext(os.path.basename(path))[0]
  visualize.draw_detections(
    original, boxes, labels, scores, evaluator.class_names, min_score
  ).save(os.path.join(output_dir, f"{stem}_detections.png"))
  return {
    "image": os.path.abspath(path),
    "width": int(w),
    "height": int(h),
    "detections": [
      {
        "box": [round(float(v), 2) for v in b],
        "score": float(s),
        "label": int(lab),
        "class": evaluator.class_names[int(lab) - 1],
      }
      for b, s, lab in zip(boxes, scores, labels, strict=True)
    ],
  }
