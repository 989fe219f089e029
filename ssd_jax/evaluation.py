"""Detection metrics: PASCAL VOC AP (devkit-exact) and COCO AP (pycocotools).

Inputs, shared by `evaluate_voc` and `evaluate_coco` (host-side numpy):
- `detections`: one entry per image, a tuple `(boxes [K, 4], scores [K],
  labels [K])` (a `ssd_jax.postprocess.Detections` fits), K may be 0;
- `ground_truths`: one entry per image, a tuple `(boxes [G, 4], labels [G],
  difficult [G] bool)` (`difficult` may be None: none difficult), G may be 0.
Labels are dataset classes 1..C-1 (0 is background and must not occur).
Boxes are corners `(x_min, y_min, x_max, y_max)` in original-image pixels.

Box conventions (the two metrics differ, as their official tools do):
- VOC: the devkit's 1-based, inclusive pixel convention, exactly the numbers
  a VOC XML `bndbox` holds; width is `x_max - x_min + 1` and the IoU carries
  the devkit's "+1" in widths, heights and areas. The codebase's normalised
  corners are continuous (pixel k covers [k - 1, k), so XML `xmin` becomes
  `(xmin - 1) / W` and `xmax` becomes `xmax / W`, as `ssd_jax.data` loads
  them); map them back with `(x_min * W + 1, y_min * H + 1, x_max * W,
  y_max * H)` (`ssd_jax.data.image.normalized_to_voc_pixels`), for
  ground truths and detections alike. The devkit IoU of the mapped boxes is
  then the plain IoU of the continuous pixel boxes.
- COCO: continuous pixel corners (COCO's `[x, y, w, h]` is
  `(x_min, y_min, x_max - x_min, y_max - y_min)`, no "+1"); a tfds `coco` box
  times `(w, h, w, h)` is in this convention.

`precision_recall` is the VOC AP's own curve (one matching code), so a PR
plot and the AP next to it cannot disagree. One module (about 470 lines)
because both metrics share one input contract, validated once
(`_check_inputs`), and the curve is an intermediate of the VOC AP.
"""

import contextlib
import io
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssd_jax import boxes as box_lib

DetectionsInput = Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
GroundTruthsInput = Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]]


class VocResult(NamedTuple):
  """PASCAL VOC average precision.

  Attributes:
    per_class_ap: [C-1] float64, index = label - 1; NaN for a class with no
      non-difficult ground truth in the evaluated set.
    mAP: mean of `per_class_ap` over the classes that are not NaN (NaN if
      every class is).
  """

  per_class_ap: np.ndarray
  mAP: float


def voc_ap(
  recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True
) -> float:
  """Average precision from a precision/recall curve, as the devkit does.

  The 2007 metric averages, over the 11 recall thresholds
  `np.arange(0., 1.1, 0.1)` (these float values, as the devkit's
  `voc_eval.py`), the best precision at recall >= threshold (0 if none).
  Otherwise (VOC2010+ "area"), the area under the precision envelope (the
  running maximum of precision from the right) at every recall change.

  Args:
    recall: [N] cumulative recall per ranked detection, non-decreasing.
    precision: [N] cumulative precision per ranked detection. N may be 0
      (AP 0).
    use_07_metric: 11-point (True) or area (False).

  Returns:
    The AP as a Python float.

  Raises:
    ValueError: if recall and precision are not 1-D of the same length.
  """
  recall = np.asarray(recall, np.float64)
  precision = np.asarray(precision, np.float64)
  if recall.ndim != 1 or recall.shape != precision.shape:
    raise ValueError(
      "voc_ap: recall and precision must be 1-D of the same length, got "
      f"shapes {recall.shape} and {precision.shape}"
    )
  if use_07_metric:
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):  # the devkit's loop, same sum order
      reached = recall >= t
      p = np.max(precision[reached]) if reached.any() else 0.0
      ap = ap + p / 11.0
    return float(ap)
  mrec = np.concatenate(([0.0], recall, [1.0]))  # [N+2]
  mpre = np.concatenate(([0.0], precision, [0.0]))  # [N+2]
  mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
  change = np.flatnonzero(mrec[1:] != mrec[:-1])
  return float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))


class _Flat(NamedTuple):
  """All images' boxes of one kind, concatenated (input order kept)."""

  boxes: np.ndarray  # [N, 4] float64
  scores: np.ndarray  # [N] float64 (ground truth: zeros)
  labels: np.ndarray  # [N] int64
  flags: np.ndarray  # [N] bool (difficult; detections: False)
  image: np.ndarray  # [N] int64 image index


def _flatten(
  fn: str, name: str, items: Sequence, num_classes: int | None, is_gt: bool
) -> _Flat:
  """Validates per-image tuples and concatenates them.

  Labels must be integers in 1..num_classes-1 (num_classes None: >= 1);
  boxes and scores must be finite numbers.

  Raises:
    ValueError: naming the image index and field that is wrong.
  """
  boxes, scores, labels, flags, image = [], [], [], [], []
  fields = "(boxes, labels, difficult)" if is_gt else "(boxes, scores, labels)"
  for i, item in enumerate(items):
    where = f"{fn}: {name}[{i}]"
    try:
      got = f"length {len(item)}"
    except TypeError:  # Not a sequence at all.
      got = f"a {type(item).__name__}"
    if got != "length 3":
      raise ValueError(f"{where} must be a 3-tuple {fields}, got {got}")
    if is_gt:
      b, lab, difficult = item
      lab = np.asarray(lab).reshape(-1)
      if difficult is None:
        difficult = np.zeros(lab.shape, bool)
      flag = np.asarray(difficult, bool).reshape(-1)
      score = np.zeros(lab.shape, np.float64)
      checked = (("labels", lab), ("difficult", flag))
    else:
      b, score, lab = item
      score = _finite(where, "scores", score).reshape(-1)
      lab = np.asarray(lab).reshape(-1)
      flag = np.zeros(lab.shape, bool)
      checked = (("scores", score), ("labels", lab))
    b = _finite(where, "boxes", b)
    if b.size == 0:
      b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
      raise ValueError(f"{where} boxes must be [N, 4], got {b.shape}")
    n = b.shape[0]
    for field, arr in checked:
      if arr.shape != (n,):
        raise ValueError(
          f"{where} {field} must be [{n}] (one per box), got shape {arr.shape}"
        )
    top = np.inf if num_classes is None else num_classes - 1
    if n and (
      lab.dtype.kind not in "biuf"
      or not np.all(np.equal(np.mod(lab, 1), 0))
      or lab.min() < 1
      or lab.max() > top
    ):
      allowed = (
        ">= 1 (0 = background)"
        if num_classes is None
        else f"in 1..{top} (num_classes = {num_classes}, 0 = background)"
      )
      raise ValueError(
        f"{fn}: {name}[{i}] labels must be integers {allowed}, got {lab}"
      )
    boxes.append(b)
    scores.append(score)
    labels.append(lab.astype(np.int64))
    flags.append(flag)
    image.append(np.full((n,), i, np.int64))
  empty = (np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,), np.int64))
  empty += (np.zeros((0,), bool), np.zeros((0,), np.int64))
  parts = (boxes, scores, labels, flags, image)
  return _Flat(
    *(np.concatenate([e, *x]) for e, x in zip(empty, parts, strict=True))
  )


def _finite(where: str, field: str, value) -> np.ndarray:
  """`value` as a float64 array; raises unless all its numbers are finite.

  A NaN box would otherwise score as a miss (VOC) or as a hit
  (pycocotools), and a NaN score would rank anywhere.
  """
  try:
    array = np.asarray(value, np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where} {field} must be numbers ({e})") from None
  if not np.all(np.isfinite(array)):
    raise ValueError(
      f"{where} {field} must be finite, got {np.sum(~np.isfinite(array))} "
      "NaN or infinite value(s)"
    )
  return array


def _check_inputs(fn, detections, ground_truths, num_classes=None):
  if num_classes is not None and (
    not isinstance(num_classes, int | np.integer)
    or isinstance(num_classes, bool)
    or num_classes < 2
  ):
    raise ValueError(
      f"{fn}: num_classes must be >= 2 (background + classes), an integer, "
      f"got {num_classes!r}"
    )
  if len(detections) != len(ground_truths):
    raise ValueError(
      f"{fn}: detections and ground_truths must have one entry per image, got "
      f"{len(detections)} and {len(ground_truths)}"
    )
  dets = _flatten(fn, "detections", detections, num_classes, is_gt=False)
  gts = _flatten(fn, "ground_truths", ground_truths, num_classes, is_gt=True)
  return dets, gts


def _voc_class_curve(
  dets: _Flat, gts: _Flat, label: int, num_images: int, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, int]:
  """One class's precision/recall curve with the devkit's matching.

  The devkit visits detections by score and, for each, takes the ground truth
  of its image with the highest IoU (first one on ties), whether or not that
  one is already taken or difficult: above the threshold it is ignored if
  difficult, a true positive if not yet taken (and is taken), else a false
  positive (duplicate); otherwise a false positive. The best ground truth of
  a detection does not depend on the visiting order, so this computes all
  IoUs at once (`boxes.elementwise_iou`, devkit "+1 pixel" convention); the
  sequential part reduces to "the first-ranked detection whose best match is
  a given non-difficult ground truth is the true positive".

  Returns:
    (recall [T], precision [T], npos): float64 over the T detections that
    count (ignored ones left out; they repeat the previous point), score
    descending; npos = non-difficult ground truths (recall is 0 if none).
  """
  d, g = dets.labels == label, gts.labels == label  # [N], [M]
  npos = int(np.sum(~gts.flags[g]))
  order = np.argsort(-dets.scores[d], kind="stable")  # ties: input order
  det_boxes, det_image = dets.boxes[d][order], dets.image[d][order]
  num_dets = len(order)

  gt_order = np.argsort(gts.image[g], kind="stable")  # group by image
  gt_boxes, gt_difficult = gts.boxes[g][gt_order], gts.flags[g][gt_order]
  counts = np.bincount(gts.image[g], minlength=num_images)  # [images]
  starts = np.cumsum(counts) - counts  # [images]

  # Every (detection, ground truth of the same image) pair, detection-major.
  per_det = counts[det_image]  # [D]
  pair_det = np.repeat(np.arange(num_dets), per_det)  # [Q]
  seg_start = np.cumsum(per_det) - per_det  # [D] first pair of each det
  local = np.arange(len(pair_det)) - seg_start[pair_det]  # [Q] gt within image
  pair_gt = starts[det_image[pair_det]] + local  # [Q]
  overlaps = box_lib.elementwise_iou(
    det_boxes[pair_det], gt_boxes[pair_gt], inclusive=True, xp=np
  )  # [Q], the devkit's overlap term for term

  has_gt = per_det > 0  # [D]
  ovmax = np.full((num_dets,), -np.inf)
  jmax = np.zeros((num_dets,), np.int64)  # index into sorted gt arrays
  if len(pair_det):
    seg = seg_start[has_gt]
    ovmax[has_gt] = np.maximum.reduceat(overlaps, seg)
    is_best = overlaps == ovmax[pair_det]  # [Q]
    first_best = np.minimum.reduceat(
      np.where(is_best, local, np.iinfo(np.int64).max), seg
    )  # argmax, first on ties
    jmax[has_gt] = starts[det_image[has_gt]] + first_best

  matched = ovmax >= iou_threshold  # [D], VOCevaldet.m's >=
  difficult = gt_difficult[jmax] if len(gt_difficult) else matched  # [D]
  counted = ~(matched & difficult)  # [D] difficult: ignored
  candidate = np.flatnonzero(matched & ~difficult)  # rank order
  _, first = np.unique(jmax[candidate], return_index=True)
  tp = np.zeros((num_dets,))
  tp[candidate[first]] = 1.0
  tp = tp[counted]  # [T]
  tp, fp = np.cumsum(tp), np.cumsum(1.0 - tp)
  recall = tp / float(npos) if npos else np.zeros_like(tp)
  precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  return recall, precision, npos


def precision_recall(
  detections: DetectionsInput,
  ground_truths: GroundTruthsInput,
  label: int,
  iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
  """One class's precision/recall curve, the one `evaluate_voc` scores.

  The same matching code as `evaluate_voc`'s per-class AP (devkit
  convention, difficult ground truths ignored), so
  `voc_ap(*precision_recall(...))` is that class's AP.

  Args:
    detections: per image `(boxes [K, 4], scores [K], labels [K])`, boxes in
      the devkit's 1-based inclusive pixel convention (module docstring).
    ground_truths: per image `(boxes [G, 4], labels [G], difficult [G] bool
      or None)`, same convention.
    label: the class (1..C-1).
    iou_threshold: the overlap a true positive must reach.

  Returns:
    (recall [T], precision [T]) float64 over the T detections of the class
    that count (a detection matching a difficult object is left out), score
    descending; empty when the class has no detection; recall is 0 (not
    NaN) when the class has no non-difficult ground truth.

  Raises:
    ValueError: as `evaluate_voc` (labels must be integers >= 1).
  """
  dets, gts = _check_inputs("precision_recall", detections, ground_truths)
  recall, precision, _ = _voc_class_curve(
    dets, gts, label, len(ground_truths), iou_threshold
  )
  return recall, precision


def evaluate_voc(
  detections: DetectionsInput,
  ground_truths: GroundTruthsInput,
  num_classes: int,
  iou_threshold: float = 0.5,
  use_07_metric: bool = True,
) -> VocResult:
  """PASCAL VOC per-class AP and mAP, the same numbers as the devkit.

  Reproduces `voc_eval.py` (py-faster-rcnn's port of the devkit's
  `VOCevaldet.m`) on the values given: detections of a class are ranked by
  score over all images (equal scores: image order, then order within the
  image, i.e. a stable sort as MATLAB's); a detection matches the ground
  truth of its image and class with the highest IoU if that IoU is at least
  `iou_threshold` (the official MATLAB devkit's `ovmax >= minoverlap`;
  py-faster-rcnn's `voc_eval.py` uses a strict >, which differs only on
  IoUs of exactly 0.5); a match to a difficult object is neither a true nor
  a false positive; a second match to an object already found is a false
  positive.
  Precision at recall r counts difficult objects nowhere.

  Differences from running the devkit on submission files, both negligible:
  those files round scores to 3 decimals and boxes to 0.1 px (here the exact
  values are used); degenerate boxes of negative size give IoU 0 here.

  Args:
    detections: per image `(boxes [K, 4], scores [K], labels [K])`, boxes in
      the devkit's 1-based inclusive pixel convention (module docstring).
    ground_truths: per image `(boxes [G, 4], labels [G], difficult [G] bool
      or None)`, same box convention.
    num_classes: C, including background; labels are 1..C-1.
    iou_threshold: the overlap a true positive must reach (VOC: 0.5).
    use_07_metric: VOC2007 11-point AP (True) or the VOC2010+ area (False).

  Returns:
    `VocResult(per_class_ap [C-1] float64, mAP float)`; a class with no
    non-difficult ground truth has AP NaN and is left out of the mAP; a class
    with ground truth but no detections has AP 0.

  Raises:
    ValueError: on mismatched lengths, malformed per-image tuples, boxes or
      scores that are not finite numbers (naming the image and field), or
      labels outside 1..C-1.
  """
  dets, gts = _check_inputs(
    "evaluate_voc", detections, ground_truths, num_classes
  )
  per_class = np.full((num_classes - 1,), np.nan)
  for c in range(1, num_classes):
    recall, precision, npos = _voc_class_curve(
      dets, gts, c, len(ground_truths), iou_threshold
    )
    if npos:
      per_class[c - 1] = voc_ap(recall, precision, use_07_metric)
  has_gt = ~np.isnan(per_class)
  mean = float(np.mean(per_class[has_gt])) if has_gt.any() else float("nan")
  return VocResult(per_class, mean)


COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def evaluate_coco(
  detections: DetectionsInput,
  ground_truths: GroundTruthsInput,
  num_classes: int,
  gt_areas: Sequence[np.ndarray] | None = None,
  verbose: bool = False,
) -> dict[str, float]:
  """COCO box AP through pycocotools, built in memory (no files).

  Category ids are the labels 1..C-1; image ids are the list positions plus
  1. `difficult` ground truths are passed as `iscrowd=1`, COCO's way to mark
  regions to ignore (detections on them are neither true nor false
  positives; pycocotools matches crowds by intersection over the detection's
  area and lets several detections match one). For COCO data, pass its
  `iscrowd` flags as `difficult`. pycocotools scores at most the 100 best
  detections per image and class (`maxDets`).

  Args:
    detections: per image `(boxes [K, 4], scores [K], labels [K])`, boxes in
      continuous pixel corners (module docstring).
    ground_truths: per image `(boxes [G, 4], labels [G], difficult [G] bool
      or None)`, same convention.
    num_classes: C, including background.
    gt_areas: optional per image [G] object areas for the small / medium /
      large split (COCO uses the segmentation area); default: box areas.
    verbose: print pycocotools' summary table.

  Returns:
    {"AP", "AP50", "AP75", "APs", "APm", "APl"}: Python floats in [0, 1]; NaN
    where undefined (no ground truth in that area range; pycocotools says -1).

  Raises:
    ValueError: as `evaluate_voc`, or if `gt_areas` does not fit.
  """
  dets, gts = _check_inputs(
    "evaluate_coco", detections, ground_truths, num_classes
  )
  if gt_areas is None:
    areas = (gts.boxes[:, 2] - gts.boxes[:, 0]) * (
      gts.boxes[:, 3] - gts.boxes[:, 1]
    )
  else:
    if len(gt_areas) != len(ground_truths):
      raise ValueError(
        f"evaluate_coco: gt_areas must have one entry per image "
        f"({len(ground_truths)}), got {len(gt_areas)}"
      )
    areas = [np.asarray(a, np.float64).reshape(-1) for a in gt_areas]
    for i, a in enumerate(areas):
      if a.shape != (len(np.asarray(ground_truths[i][1]).reshape(-1)),):
        raise ValueError(
          f"evaluate_coco: gt_areas[{i}] must have one area per ground "
          f"truth box, got shape {a.shape}"
        )
    areas = np.concatenate(areas) if areas else np.zeros((0,))

  def xywh(b):
    return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

  images = [{"id": i + 1} for i in range(len(ground_truths))]
  categories = [{"id": c, "name": str(c)} for c in range(1, num_classes)]
  gt_anns = [
    {
      "id": k + 1,  # pycocotools treats id 0 as "unmatched"
      "image_id": int(gts.image[k]) + 1,
      "category_id": int(gts.labels[k]),
      "bbox": xywh(gts.boxes[k]),
      "area": float(areas[k]),
      "iscrowd": int(gts.flags[k]),
    }
    for k in range(len(gts.labels))
  ]
  dt_anns = []
  for k in range(len(dets.labels)):
    box = xywh(dets.boxes[k])
    dt_anns.append(
      {
        "id": k + 1,
        "image_id": int(dets.image[k]) + 1,
        "category_id": int(dets.labels[k]),
        "bbox": box,
        "area": box[2] * box[3],  # as COCO.loadRes
        "score": float(dets.scores[k]),
        "iscrowd": 0,
      }
    )
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    coco_gt, coco_dt = COCO(), COCO()
    coco_gt.dataset = {
      "images": images,
      "categories": categories,
      "annotations": gt_anns,
    }
    coco_dt.dataset = {
      "images": list(images),
      "categories": list(categories),
      "annotations": dt_anns,
    }
    coco_gt.createIndex()
    coco_dt.createIndex()
    evaluator = COCOeval(coco_gt, coco_dt, "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  if verbose:
    print(
      "\n".join(line for line in out.getvalue().splitlines() if "IoU" in line)
    )
  stats = [float(s) if s >= 0 else float("nan") for s in evaluator.stats[:6]]
  return dict(zip(COCO_METRICS, stats, strict=True))
