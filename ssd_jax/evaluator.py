"""The evaluator: jitted forward, host decoding, mAP, results file, pictures.

The device runs the network and the softmax (`predict`, jitted once per
model value and input shape); the host decodes and runs per-class NMS
(`postprocess.decode_detections_batch`), then scores with
`evaluation.evaluate_voc` / `evaluate_coco`. After each evaluation the workdir
holds `eval_results.json` ({"step", "mAP", "per_class_ap": {name: AP},
"num_images", and the COCO metrics for metric "coco"}), and `pictures/` holds
the per-class precision-recall plot (`pr_curves.png`, curves from
`evaluation.precision_recall`, the code that computes the AP) and detections
drawn on held-out images (`detections.png`).
"""

import json
import math
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from ssd_jax import config as config_lib
from ssd_jax import detect as detect_lib
from ssd_jax import evaluation, postprocess, runtime, visualize
from ssd_jax.data import image as image_lib
from ssd_jax.data import pipeline
from ssd_jax.models import variables as model_vars

EVAL_RESULTS = "eval_results.json"
PICTURES = "pictures"


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


class Evaluator:
  """Runs evaluation of parameters on the config's eval split.

  Args:
    model: the SSD module (`apply`, `priors()`, `image_size`); a flax module,
      hashed as the static argument of the jitted forward.
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
    # config.eval.nms: "host" decodes in numpy (`postprocess`), "device" in
    # the same jit as the forward (`detect.detect_normalized`, the rule of
    # `device_postprocess`); the same detections up to float rounding.
    self.nms = config.eval.get("nms", "host")
    config_lib.check_choice("eval.nms", self.nms, config_lib.EVAL_NMS)
    # The decoding settings, eval.flip among them, read once for both paths.
    self._settings = detect_lib.DetectSettings.from_config(config)
    self._device_detect = None
    if self.nms == "device":
      self._device_detect = detect_lib.detect_normalized_jit

  def detect(
    self, params: Any, images: np.ndarray, valid: np.ndarray | None = None
  ) -> list[postprocess.Detections]:
    """Detections for a batch of normalised images (boxes in [0, 1]).

    Args:
      params: model parameters.
      images: [B, H, W, 3] float32 normalised.
      valid: optional [B] bool; images with False (batch padding) get no
        entry in the output.

    Returns:
      One `Detections` per (valid) image, in batch order: boxes [K, 4]
      corners in [0, 1] of the network input, scores [K], labels [K] in
      1..C-1. With config.eval.nms "device" the forward and the NMS run in
      one jit; the padded [B, K] detections come back and are cut to each
      image's `num_detections` rows.
    """
    if self._device_detect is not None:
      dets = jax.device_get(
        self._device_detect(self.model, params, images, self._settings)
      )
      if valid is None:
        valid = np.ones(len(dets.num_detections), bool)
      return [
        postprocess.Detections(
          dets.boxes[b, :n], dets.scores[b, :n], dets.labels[b, :n]
        )
        for b, n in enumerate(dets.num_detections)
        if valid[b]
      ]
    ecfg = self.config.eval
    loc, probs = jax.device_get(
      detect_lib.predict_jit(self.model, params, images, self._settings.flip)
    )
    return postprocess.decode_detections_batch(
      loc,
      probs,
      self.priors,
      valid,
      score_threshold=ecfg.score_threshold,
      nms_threshold=ecfg.nms_threshold,
      top_k_per_class=ecfg.top_k_per_class,
      max_detections=ecfg.max_detections,
      variances=tuple(self.config.variances),
    )

  def run(
    self, params: Any, step: int, workdir: str | None = None
  ) -> EvalResult:
    """Evaluates on the eval split; writes results and pictures to workdir.

    Multi-process: a collective, every process calls it. Each evaluates its
    own contiguous block of the split (`pipeline.shard_range`), then all
    gather every image's detections and ground truth in the split's order
    (`runtime.gather_rows`), so each returns the mAP of one process's
    evaluation, every image counted once; the pictures are process 0's.

    Args:
      params: model parameters (host, or on this process's devices).
      step: the training step (recorded in the results).
      workdir: where to write `eval_results.json` and `pictures/` (process
        0 only); None writes nothing.

    Returns:
      The EvalResult.

    Raises:
      ValueError: when the eval split is empty.
    """
    ecfg = self.config.eval
    num_classes = len(self.class_names) + 1
    # "voc": the devkit's 1-based inclusive pixels; "coco": continuous ones.
    to_pixels = (
      image_lib.normalized_to_voc_pixels
      if ecfg.metric == "voc"
      else image_lib.normalized_to_pixels
    )
    dets, gts, pictures, positions = [], [], [], []
    kind = model_vars.normalization_of(self.model)
    batches = pipeline.create_eval_iterator(
      self.config.data,
      image_size=self.model.image_size,
      batch_size=ecfg.batch_size,
      normalization=kind,
      shard=(jax.process_index(), jax.process_count()),
    )
    for batch in batches:
      valid = np.asarray(batch.get("valid", np.ones(len(batch["image"]), bool)))
      index = np.flatnonzero(valid)
      batch_dets = self.detect(params, batch["image"], valid)
      side = np.array(batch["image"].shape[2:0:-1] * 2, np.float32)  # SSSS
      difficult = batch.get("difficult", np.zeros_like(batch["labels"]))
      for i, d in zip(index, batch_dets, strict=True):
        size = np.asarray(batch["original_size"][i])  # (h, w)
        keep = np.asarray(batch["labels"][i]) > 0
        gt_boxes = np.asarray(batch["boxes"][i], np.float32)[keep]
        positions.append(int(batch["index"][i]))
        dets.append(
          (to_pixels(d.boxes, size).reshape(-1, 4), d.scores, d.labels)
        )
        gts.append(
          (
            to_pixels(gt_boxes, size).reshape(-1, 4),
            np.asarray(batch["labels"][i])[keep],
            np.asarray(difficult[i], bool)[keep],
          )
        )
        if len(pictures) < ecfg.num_pictures:
          raw = image_lib.denormalize(batch["image"][i], kind)  # [S, S, 3]
          pictures.append((raw, d.boxes * side, d.labels, d.scores))
    # All processes' images, in the split's order (dtypes as documented by
    # `postprocess.Detections`; empty lists still give [0, ...] arrays).
    cat = lambda arrays, shape, dtype: np.concatenate(
      [np.zeros((0, *shape), dtype), *arrays]
    ).astype(dtype)
    rows = runtime.gather_rows(
      {
        "index": np.asarray(positions, np.int64),
        "num_dets": np.asarray([len(d[1]) for d in dets], np.int64),
        "num_gts": np.asarray([len(g[1]) for g in gts], np.int64),
        "det_boxes": cat([d[0] for d in dets], (4,), np.float32),
        "scores": cat([d[1] for d in dets], (), np.float32),
        "det_labels": cat([d[2] for d in dets], (), np.int32),
        "gt_boxes": cat([g[0] for g in gts], (4,), np.float32),
        "gt_labels": cat([g[1] for g in gts], (), np.int32),
        "difficult": cat([g[2] for g in gts], (), bool),
      }
    )
    split = lambda key, count: np.split(rows[key], np.cumsum(rows[count]))
    det_parts = [
      split(k, "num_dets") for k in ("det_boxes", "scores", "det_labels")
    ]
    gt_parts = [
      split(k, "num_gts") for k in ("gt_boxes", "gt_labels", "difficult")
    ]
    order = np.argsort(rows["index"], kind="stable")
    dets = [tuple(part[j] for part in det_parts) for j in order]
    gts = [tuple(part[j] for part in gt_parts) for j in order]
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
      }  # Continuous pixel boxes (`normalized_to_pixels` for "coco").
      headline = extra["AP"]
    result = EvalResult(step, headline, per_class, len(dets), extra)
    logging.info("%s", visualize.format_ap_table(step, headline, per_class))
    if workdir is not None and jax.process_index() == 0:
      self._write(result, dets, gts, pictures, workdir)
    return result

  def _write(self, result, dets, gts, pictures, workdir):
    """Writes the results file, the PR plot and the detections grid."""
    os.makedirs(os.path.join(workdir, PICTURES), exist_ok=True)
    write_eval_results(workdir, result)
    curves = {
      name: evaluation.precision_recall(dets, gts, i + 1)
      for i, name in enumerate(self.class_names)
      if not math.isnan(result.per_class_ap[name])
    }
    plot = visualize.plot_pr_curves(
      curves, result.per_class_ap, f"step {result.step}  mAP {result.mAP:.4f}"
    )
    plot.save(os.path.join(workdir, PICTURES, "pr_curves.png"))
    if pictures:
      grid = visualize.detections_grid(pictures, self.class_names)
      grid.save(os.path.join(workdir, PICTURES, "detections.png"))


def write_eval_results(workdir: str, result: EvalResult) -> str:
  """Writes `workdir/eval_results.json` atomically.

  NaN APs (classes without ground truth) are written as null.

  Args:
    workdir: an existing folder.
    result: the evaluation to record.

  Returns:
    The path written.
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
  write_json(path, record)
  return path


def write_json(path: str, value: Any) -> None:
  """Writes JSON atomically: a temporary file, then `os.replace`.

  The destination is either the old file or the whole new one, never a
  part; the temporary file is removed when the write fails.
  """
  tmp = path + ".tmp"
  try:
    with open(tmp, "w") as f:
      json.dump(value, f, indent=2)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
