"""Detections on image files (`--mode=predict`), as evaluation sees them.

Each file is decoded on its own by the package's one decoder
(`data.image.decode_image_file`), so a file that cannot be read (missing,
truncated, corrupt, not an image) is reported by name with the reason and
every other file is still predicted and written. The EXIF orientation is
applied: boxes and pictures are in the orientation every viewer shows.
The pixels then go through the evaluation preprocessing
(`pipeline.eval_inputs`, run as a graph as the eval pipeline runs it), are
batched as evaluation batches (`eval.batch_size`, the last batch padded, so
the forward is the evaluator's compiled one) and decoded by
`Evaluator.detect`. An image of a file-based eval set (VOC or COCO folders)
therefore gets the evaluator's detections (their decoder,
`dataset.read_image_file`, gives the one decoder's pixels), unless it
carries an EXIF orientation tag or its long side is over `max_side`.

What `predict_images` writes to `output_dir`:
- `predictions.json`: one record per predicted image, in input order:
  {"image": absolute path, "width", "height": the original image's, in the
  orientation viewers show, "exif_transposed": whether its EXIF orientation
  tag flipped or rotated it, "picture": the drawn file's name,
  "detections": [{"box": [x_min, y_min, x_max, y_max] continuous pixel
  corners of that image, rounded to 0.01, "score", "label", "class"}]};
- `failures.json`: [{"image": absolute path, "error": the reason}], one
  per file that could not be decoded, `[]` when none. A file of its own, so
  `predictions.json` keeps its list-of-records format;
- `<stem>_detections.png` per predicted image: the decoded image with its
  boxes (at most `max_side` on the long side); `<stem>_2_detections.png`
  etc. when two inputs share a stem.

Both JSON files are written atomically (a temporary file, then
`os.replace`), and also when the run stops early (an error, Ctrl-C): they
then hold the images done so far, and no file is ever half written.
"""

import glob
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from absl import logging

from ssd_jax import visualize
from ssd_jax.data import image as image_lib
from ssd_jax.data import pipeline
from ssd_jax.evaluator import Evaluator, write_json
from ssd_jax.models import variables as model_vars

PREDICTIONS = "predictions.json"
FAILURES = "failures.json"
# Longer sides are decoded at reduced size (`decode_image_file(max_side=)`):
# above a 12-megapixel photo's 4032, so ordinary photos keep every pixel.
MAX_SIDE = 4096
SUMMARY_FAILURES = 10  # Failed files named by `summary`.


class PredictResult(NamedTuple):
  """What one prediction run wrote.

  Attributes:
    records: the `predictions.json` records, one per predicted image, in
      input order.
    failed: the `failures.json` entries, {"image": absolute path, "error":
      reason}, one per file that could not be decoded, in input order.
  """

  records: list[dict[str, Any]]
  failed: list[dict[str, str]]


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
  max_side: int | None = MAX_SIDE,
) -> PredictResult:
  """Detects objects in image files; writes JSON and pictures.

  See the module docstring for what is written. A file that cannot be
  decoded is logged, recorded in `failures.json` and skipped; it never
  stops the run.

  Args:
    evaluator: an Evaluator (model, config, class names); its `detect`
      decodes the network outputs with the config's eval settings.
    params: model parameters, or variables (`models.as_variables`).
    image_paths: image files, any format PIL reads (JPEG, PNG, GIF, BMP,
      TIFF, WEBP, ...); a missing one is a failure like an unreadable one.
    output_dir: created if missing.
    min_score: keep detections at or above this score.
    max_side: images whose long side is larger are decoded at reduced size
      (JPEG: in the decoder), to bound memory; boxes are still reported in
      original pixels. None decodes every image whole.

  Returns:
    The `PredictResult`: records written and files that failed.

  Raises:
    ValueError: when no image is given.
  """
  if not image_paths:
    raise ValueError("predict needs at least one image (--images)")
  os.makedirs(output_dir, exist_ok=True)
  pipeline.configure_tensorflow()
  size = int(evaluator.model.image_size)
  kind = model_vars.normalization_of(evaluator.model)
  preprocess = tf.function(
    lambda pixels: pipeline.eval_inputs(pixels, size, kind),
    input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)],
  )
  batch_size = int(evaluator.config.eval.batch_size)
  records, failed, batch, pictures = [], [], [], set()
  finished = False
  try:
    for path in image_paths:
      try:
        decoded = image_lib.decode_image_file(
          path, apply_exif=True, max_side=max_side
        )
      except image_lib.ImageDecodeError as e:
        logging.warning("predict: skipped %s", e)
        failed.append({"image": os.path.abspath(path), "error": e.reason})
        continue
      batch.append((path, decoded, preprocess(decoded.pixels).numpy()))
      if len(batch) == batch_size:
        records += _predict_batch(
          evaluator, params, batch, output_dir, min_score, pictures
        )
        batch = []
    if batch:
      records += _predict_batch(
        evaluator, params, batch, output_dir, min_score, pictures
      )
    finished = True
  finally:
    write_json(os.path.join(output_dir, PREDICTIONS), records)
    write_json(os.path.join(output_dir, FAILURES), failed)
    if not finished:
      logging.error(
        "predict stopped early: %s holds the %d image(s) predicted so far, "
        "%s the %d that failed",
        PREDICTIONS, len(records), FAILURES, len(failed),
      )  # fmt: skip
  return PredictResult(records, failed)


def summary(result: PredictResult) -> str:
  """One line for the end of a run: counts, then the failed files.

  Args:
    result: what `predict_images` returned.

  Returns:
    E.g. "2 image(s) predicted, 1 failed: /p/c.jpg (truncated file ...)";
    past `SUMMARY_FAILURES` failed files, the rest are counted, not named
    (`failures.json` names them all).
  """
  line = (
    f"{len(result.records)} image(s) predicted, {len(result.failed)} failed"
  )
  named = result.failed[:SUMMARY_FAILURES]
  if named:
    line += ": " + "; ".join(f"{f['image']} ({f['error']})" for f in named)
  if len(result.failed) > len(named):
    line += f"; and {len(result.failed) - len(named)} more in {FAILURES}"
  return line


def _predict_batch(evaluator, params, batch, output_dir, min_score, pictures):
  """Detects a batch of decoded images; draws them; returns their records.

  Args:
    evaluator, params: as `predict_images`.
    batch: up to `eval.batch_size` (path, `DecodedImage`, float32 [S, S, 3]
      network input); padded to the full batch with zero images.
    output_dir, min_score: as `predict_images`.
    pictures: the picture names used so far (updated).

  Returns:
    One predictions.json record per image of the batch, in order.
  """
  batch_size = int(evaluator.config.eval.batch_size)
  images = np.stack([x for _, _, x in batch])  # [n, S, S, 3]
  pad = np.zeros((batch_size - len(batch),) + images.shape[1:], np.float32)
  valid = np.arange(batch_size) < len(batch)
  dets = evaluator.detect(params, np.concatenate([images, pad]), valid)
  return [
    _write_one(evaluator, path, decoded, det, output_dir, min_score, pictures)
    for (path, decoded, _), det in zip(batch, dets, strict=True)
  ]


def _write_one(evaluator, path, decoded, det, output_dir, min_score, used):
  """Draws one image's detections; returns its predictions.json record."""
  keep = det.scores >= min_score
  labels, scores = det.labels[keep], det.scores[keep]
  # Boxes are normalised to the decoded image: pixels of the picture, and
  # of the original (larger when decoded under max_side) for the record.
  boxes = image_lib.normalized_to_pixels(det.boxes[keep], decoded.original_size)
  drawn = image_lib.normalized_to_pixels(
    det.boxes[keep], decoded.pixels.shape[:2]
  )
  name = _picture_name(path, used)
  visualize.draw_detections(
    decoded.pixels, drawn, labels, scores, evaluator.class_names, min_score
  ).save(os.path.join(output_dir, name))
  h, w = decoded.original_size
  return {
    "image": os.path.abspath(path),
    "width": int(w),
    "height": int(h),
    "exif_transposed": bool(decoded.exif_transposed),
    "picture": name,
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


def _picture_name(path: str, used: set[str]) -> str:
  """`<stem>_detections.png`, or `<stem>_<k>_detections.png` (k = 2, 3,
  ...) when an earlier input of the run had the same stem; adds it to
  `used`."""
  stem = os.path.splitext(os.path.basename(path))[0]
  name, k = f"{stem}_detections.png", 1
  while name in used:
    k += 1
    name = f"{stem}_{k}_detections.png"
  used.add(name)
  return name
