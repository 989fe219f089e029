"""Evaluation and prediction: jitted forward, host NMS, mAP, pictures.

The device runs the network and the softmax (`predict`); the host decodes and
runs per-class NMS (`postprocess.decode_detections`), then scores with
`evaluation.evaluate_voc` / `evaluate_coco`. After each evaluation the workdir
holds `eval_results.json` ({"step", "mAP", "per_class_ap": {name: AP}}), and
`pictures/` holds a per-class precision-recall plot and detections drawn on
held-out images (PIL only; no matplotlib).
"""

import json
import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image, ImageDraw

from ssd_jax import evaluation, postprocess, train

EVAL_RESULTS = "eval_results.json"
PICTURES = "pictures"


def predict(
  apply_fn: Any, params: Any, images: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Network forward and softmax (jit with `apply_fn` static).

  Args:
    apply_fn: `model.apply`.
    params: model parameters.
    images: [B, H, W, 3] float32 normalised images.

  Returns:
    loc: [B, P, 4] float32 offsets; probs: [B, P, C] float32 class
    probabilities (column 0 background).
  """
  loc, logits = apply_fn({"params": params}, images)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return loc.astype(jnp.float32), probs


# One compiled predict per (model, input shape), shared by all Evaluators.
_predict_jit = jax.jit(predict, static_argnums=0)


class EvalResult(NamedTuple):
  """One evaluation.

  Attributes:
    step: training step evaluated.
    mAP: the headline metric (VOC mAP@0.5, or COCO AP for metric "coco").
    per_class_ap: class name -> AP@0.5 (NaN for classes without GT).
    num_images: number of evaluated images.
    extra: other metrics (COCO AP50, AP75, ... when metric is "coco").
  """

  step: int
  mAP: float
  per_class_ap: dict[str, float]
  num_images: int
  extra: dict[str, float]


def precision_recall(
  detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
  ground_truths: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
  label: int,
  iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
  """VOC-style precision/recall curve of one class (difficult GT ignored).

  Detections are taken by decreasing score; each matches the unmatched
  ground truth of its image with the highest IoU >= threshold (a difficult
  match is neither TP nor FP).

  Args:
    detections: per image (boxes [K, 4], scores [K], labels [K]), pixels.
    ground_truths: per image (boxes [G, 4], labels [G], difficult [G]).
    label: the class (1..C-1).
    iou_threshold: IoU for a true positive.

  Returns:
    (recall [T], precision [T]) float64 over the T counted detections; empty
    arrays when the class has no detection; recall is NaN-free (0 when the
    class has no non-difficult GT).
  """
  entries = []
  for i, (boxes, scores, labels) in enumerate(detections):
    for j in np.flatnonzero(np.asarray(labels) == label):
      entries.append((float(scores[j]), i, np.asarray(boxes[j], np.float64)))
  entries.sort(key=lambda e: -e[0])
  gts, n_pos = [], 0
  for boxes, labels, difficult in ground_truths:
    sel = np.asarray(labels) == label
    diff = np.asarray(difficult, bool)[sel]
    gts.append(
      [np.asarray(boxes, np.float64)[sel], diff, np.zeros(len(diff), bool)]
    )
    n_pos += int(np.sum(~diff))
  tp, fp = [], []
  for _, i, box in entries:
    gt_boxes, diff, used = gts[i]
    best, best_iou = -1, iou_threshold
    if len(gt_boxes):
      lt = np.maximum(gt_boxes[:, :2], box[:2])
      rb = np.minimum(gt_boxes[:, 2:], box[2:])
      inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
      area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
      union = area(gt_boxes) + area(box) - inter
      iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
      k = int(np.argmax(iou))
      if iou[k] >= best_iou:
        best = k
    if best >= 0 and diff[best]:
      continue
    if best >= 0 and not used[best]:
      used[best] = True
      tp.append(1.0)
      fp.append(0.0)
    else:
      tp.append(0.0)
      fp.append(1.0)
  tp, fp = np.cumsum(tp), np.cumsum(fp)
  recall = tp / n_pos if n_pos else np.zeros_like(tp)
  precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  return recall, precision


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


def class_color(label: int) -> tuple[int, int, int]:
  """A stable RGB colour for a class label."""
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
    A new RGB PIL image.
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
  """A plain-text per-class AP table for the log."""
  width = max([len(n) for n in per_class_ap] + [5])
  lines = [f"Evaluation at step {step}", f"{'class':<{width}}  AP"]
  for name, ap in per_class_ap.items():
    lines.append(f"{name:<{width}}  {ap:.4f}")
  lines.append(f"{'mAP':<{width}}  {mAP:.4f}")
  return "\n".join(lines)


def to_pixels(boxes: np.ndarray, size: np.ndarray, voc: bool) -> np.ndarray:
  """Normalised corners [K, 4] to original-image pixels.

  Args:
    boxes: [K, 4] float32 corners in [0, 1] (0-based continuous, as the
      data pipeline stores every source).
    size: (h, w) of the original image.
    voc: the VOC devkit's 1-based inclusive convention
      (`data.normalized_to_voc_pixels`) for `evaluate_voc`; else continuous
      pixel corners (COCO).

  Returns:
    [K, 4] float32 pixel boxes.
  """
  if voc:
    from ssd_jax import data as data_lib  # noqa: PLC0415

    return data_lib.normalized_to_voc_pixels(boxes, size).reshape(-1, 4)
  h, w = (float(v) for v in size)
  return (
    np.asarray(boxes, np.float32) * np.array([w, h, w, h], np.float32)
  ).reshape(-1, 4)


def _raw_images(batch: dict[str, np.ndarray]) -> np.ndarray:
  """uint8 pictures of a batch ("raw_image", else un-normalised "image")."""
  if "raw_image" in batch:
    return np.asarray(batch["raw_image"], np.uint8)
  from ssd_jax import data as data_lib  # noqa: PLC0415

  mean = np.asarray(data_lib.MEAN_RGB, np.float32)
  return np.clip(np.asarray(batch["image"]) + mean, 0, 255).astype(np.uint8)


class Evaluator:
  """Runs evaluation of parameters on the config's eval split.

  Args:
    model: the SSD module (`apply`, `priors()`, `image_size`).
    config: the full config (`data`, `eval`, `variances`).
    class_names: names of classes 1..C-1.
  """

  def __init__(
    self, model: Any, config: ml_collections.ConfigDict, class_names
  ):
    self.model = model
    self.config = config
    self.class_names = list(class_names)
    self.priors = np.asarray(model.priors(), np.float32)
    self._apply = train.apply_fn_of(model)

  def detect(
    self, params: Any, images: np.ndarray
  ) -> list[postprocess.Detections]:
    """Detections for a batch of normalised images (boxes in [0, 1]).

    Args:
      params: model parameters.
      images: [B, H, W, 3] float32 normalised.

    Returns:
      B `Detections` (boxes corners in [0, 1], scores, labels 1..C-1).
    """
    ecfg = self.config.eval
    loc, probs = jax.device_get(_predict_jit(self._apply, params, images))
    return [
      postprocess.decode_detections(
        loc[i],
        probs[i],
        self.priors,
        score_threshold=ecfg.score_threshold,
        nms_threshold=ecfg.nms_threshold,
        top_k_per_class=ecfg.top_k_per_class,
        max_detections=ecfg.max_detections,
        variances=tuple(self.config.variances),
      )
      for i in range(loc.shape[0])
    ]

  def run(
    self, params: Any, step: int, workdir: str | None = None
  ) -> EvalResult:
    """Evaluates on the eval split; writes results and pictures to workdir.

    Args:
      params: model parameters (host or device).
      step: the training step (recorded in the results).
      workdir: where to write `eval_results.json` and `pictures/` (process
        0 only); None writes nothing.

    Returns:
      The EvalResult.

    Raises:
      ValueError: when the eval split is empty.
    """
    from ssd_jax import data as data_lib  # noqa: PLC0415

    ecfg = self.config.eval
    num_classes = len(self.class_names) + 1
    dets, gts, pictures = [], [], []
    it = data_lib.create_eval_iterator(
      self.config.data,
      image_size=self.model.image_size,
      batch_size=ecfg.batch_size,
    )
    voc_px = ecfg.metric == "voc"
    for batch in it:
      valid = np.asarray(batch.get("valid", np.ones(len(batch["image"]), bool)))
      batch_dets = self.detect(params, batch["image"])
      raw = None
      for i in np.flatnonzero(valid):
        size = np.asarray(batch["original_size"][i])  # (h, w)
        d = batch_dets[i]
        keep = np.asarray(batch["labels"][i]) > 0
        gt_boxes = np.asarray(batch["boxes"][i], np.float32)[keep]
        difficult = np.asarray(
          batch.get("difficult", np.zeros_like(batch["labels"]))[i], bool
        )
        dets.append((to_pixels(d.boxes, size, voc_px), d.scores, d.labels))
        gts.append(
          (
            to_pixels(gt_boxes, size, voc_px),
            np.asarray(batch["labels"][i])[keep],
            difficult[keep],
          )
        )
        if len(pictures) < ecfg.num_pictures:
          raw = _raw_images(batch) if raw is None else raw
          side = raw.shape[1:3][::-1]
          pix = np.array([*side, *side], np.float32)
          pictures.append((raw[i], d.boxes * pix, d.labels, d.scores))
    if not dets:
      raise ValueError(
        f"The eval split {self.config.data.get('eval_split')!r} of "
        f"config.data (source {self.config.data.source!r}) is empty"
      )
    voc = evaluation.evaluate_voc(
      dets,
      gts,
      num_classes,
      iou_threshold=0.5,
      use_07_metric=bool(ecfg.use_07_metric),
    )
    per_class = {
      name: float(voc.per_class_ap[i])
      for i, name in enumerate(self.class_names)
    }
    extra = {}
    headline = float(voc.mAP)
    if ecfg.metric == "coco":
      extra = {
        k: float(v)
        for k, v in evaluation.evaluate_coco(dets, gts, num_classes).items()
      }  # Continuous pixel boxes (voc_px is False for "coco").
      headline = extra["AP"]
    result = EvalResult(step, headline, per_class, len(dets), extra)
    logging.info("%s", format_ap_table(step, headline, per_class))
    if workdir is not None and jax.process_index() == 0:
      self._write(result, dets, gts, pictures, workdir)
    return result

  def _write(self, result, dets, gts, pictures, workdir):
    os.makedirs(os.path.join(workdir, PICTURES), exist_ok=True)
    write_eval_results(workdir, result)
    curves = {
      name: precision_recall(dets, gts, i + 1)
      for i, name in enumerate(self.class_names)
      if not math.isnan(result.per_class_ap[name])
    }
    plot = plot_pr_curves(
      curves, result.per_class_ap, f"step {result.step}  mAP {result.mAP:.4f}"
    )
    plot.save(os.path.join(workdir, PICTURES, "pr_curves.png"))
    if pictures:
      tiles = []
      for img, b, lab, s in pictures:
        zoom = max(1, 256 // max(img.shape[:2]))  # Readable labels.
        big = np.asarray(
          Image.fromarray(img).resize(
            (img.shape[1] * zoom, img.shape[0] * zoom), Image.NEAREST
          )
        )
        tiles.append(draw_detections(big, b * zoom, lab, s, self.class_names))
      grid_image(tiles).save(os.path.join(workdir, PICTURES, "detections.png"))


def write_eval_results(workdir: str, result: EvalResult) -> str:
  """Writes `workdir/eval_results.json`; returns its path.

  NaN APs (classes without ground truth) are written as null.
  """
  clean = lambda v: None if v is None or math.isnan(v) else float(v)
  record = {
    "step": int(result.step),
    "mAP": clean(result.mAP),
    "per_class_ap": {k: clean(v) for k, v in result.per_class_ap.items()},
    "num_images": int(result.num_images),
    **{k: clean(v) for k, v in result.extra.items()},
  }
  path = os.path.join(workdir, EVAL_RESULTS)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2)
  os.replace(tmp, path)
  return path


def grid_image(tiles: Sequence[Image.Image], columns: int = 4) -> Image.Image:
  """Pastes images into a grid (row-major), white background."""
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


def predict_images(
  evaluator: Evaluator,
  params: Any,
  image_paths: Sequence[str],
  output_dir: str,
  min_score: float = 0.3,
) -> list[dict[str, Any]]:
  """Detects objects in image files; writes JSON and pictures.

  Writes `output_dir/predictions.json` (a list of {"image", "width",
  "height", "detections": [{"box": [x_min, y_min, x_max, y_max] pixels of the
  original image, "score", "label", "class"}]}) with detections scoring
  >= min_score, and one `<name>_detections.png` per image.

  Args:
    evaluator: an Evaluator (model, config, class names).
    params: model parameters.
    image_paths: image files readable by PIL.
    output_dir: created if missing.
    min_score: keep detections at or above this score.

  Returns:
    The records written to predictions.json.

  Raises:
    FileNotFoundError: when an image file is missing.
    ValueError: when no image is given.
  """
  from ssd_jax import data as data_lib  # noqa: PLC0415

  if not image_paths:
    raise ValueError("predict needs at least one image (--images)")
  os.makedirs(output_dir, exist_ok=True)
  size = evaluator.model.image_size
  records = []
  for path in image_paths:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"Image file not found: {path}")
    original = Image.open(path).convert("RGB")
    w, h = original.size
    resized = np.asarray(original.resize((size, size), Image.BILINEAR))
    images = data_lib.normalize(resized[None])
    det = evaluator.detect(params, images)[0]
    keep = det.scores >= min_score
    boxes = det.boxes[keep] * np.array([w, h, w, h], np.float32)
    labels, scores = det.labels[keep], det.scores[keep]
    records.append(
      {
        "image": os.path.abspath(path),
        "width": w,
        "height": h,
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
    )
    stem = os.path.splitext(os.path.basename(path))[0]
    draw_detections(
      np.asarray(original),
      boxes,
      labels,
      scores,
      evaluator.class_names,
      min_score,
    ).save(os.path.join(output_dir, f"{stem}_detections.png"))
  with open(os.path.join(output_dir, "predictions.json"), "w") as f:
    json.dump(records, f, indent=2)
  return records
