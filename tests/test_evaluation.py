"""Tests for ssd_jax.evaluation: devkit reference, hand-worked cases, COCO."""

import math

import numpy as np
import pytest

from ssd_jax import evaluation


def _devkit_voc_ap(rec, prec, use_07_metric):
  """`voc_ap` from py-faster-rcnn's voc_eval.py, verbatim in substance."""
  if use_07_metric:
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
      if np.sum(rec >= t) == 0:
        p = 0
      else:
        p = np.max(prec[rec >= t])
      ap = ap + p / 11.0
    return ap
  mrec = np.concatenate(([0.0], rec, [1.0]))
  mpre = np.concatenate(([0.0], prec, [0.0]))
  for i in range(mpre.size - 1, 0, -1):
    mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
  i = np.where(mrec[1:] != mrec[:-1])[0]
  return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def _devkit_voc_eval(detections, ground_truths, classname, ovthresh, use_07):
  """voc_eval.py's per-class loop on in-memory inputs (stable score sort)."""
  class_recs = {}
  npos = 0
  for i, (boxes, labels, difficult) in enumerate(ground_truths):
    rows = [k for k in range(len(labels)) if labels[k] == classname]
    bbox = np.array([boxes[k] for k in rows], float).reshape(-1, 4)
    diff = np.array([bool(difficult[k]) for k in rows], bool)
    npos = npos + sum(~diff)
    class_recs[i] = {
      "bbox": bbox,
      "difficult": diff,
      "det": [False] * len(rows),
    }
  image_ids, confidence, bb_list = [], [], []
  for i, (boxes, scores, labels) in enumerate(detections):
    for k in range(len(labels)):
      if labels[k] == classname:
        image_ids.append(i)
        confidence.append(float(scores[k]))
        bb_list.append([float(v) for v in boxes[k]])
  if npos == 0:
    return float("nan")
  confidence = np.array(confidence)
  BB = np.array(bb_list).reshape(-1, 4)
  sorted_ind = np.argsort(-confidence, kind="stable")
  BB = BB[sorted_ind, :]
  image_ids = [image_ids[x] for x in sorted_ind]
  nd = len(image_ids)
  tp = np.zeros(nd)
  fp = np.zeros(nd)
  for d in range(nd):
    R = class_recs[image_ids[d]]
    bb = BB[d, :].astype(float)
    ovmax = -np.inf
    BBGT = R["bbox"].astype(float)
    if BBGT.size > 0:
      ixmin = np.maximum(BBGT[:, 0], bb[0])
      iymin = np.maximum(BBGT[:, 1], bb[1])
      ixmax = np.minimum(BBGT[:, 2], bb[2])
      iymax = np.minimum(BBGT[:, 3], bb[3])
      iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
      ih = np.maximum(iymax - iymin + 1.0, 0.0)
      inters = iw * ih
      uni = (
        (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
        + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0)
        - inters
      )
      overlaps = inters / uni
      ovmax = np.max(overlaps)
      jmax = np.argmax(overlaps)
    if ovmax >= ovthresh:  # VOCevaldet.m (voc_eval.py has >)
      if not R["difficult"][jmax]:
        if not R["det"][jmax]:
          tp[d] = 1.0
          R["det"][jmax] = 1
        else:
          fp[d] = 1.0
    else:
      fp[d] = 1.0
  fp = np.cumsum(fp)
  tp = np.cumsum(tp)
  rec = tp / float(npos)
  prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  return _devkit_voc_ap(rec, prec, use_07)


def _random_voc_set(rng, num_images, num_classes):
  """Integer 1-based GT boxes, jittered copies and clutter as detections."""
  detections, ground_truths = [], []
  for _ in range(num_images):
    g = rng.integers(0, 6)
    xy = rng.integers(1, 300, (g, 2))
    wh = rng.integers(1, 150, (g, 2))
    gt_boxes = np.concatenate([xy, xy + wh], -1).astype(np.float64)
    gt_labels = rng.integers(1, num_classes, g)
    difficult = rng.uniform(size=g) < 0.2
    ground_truths.append((gt_boxes, gt_labels, difficult))
    boxes, labels = [], []
    for k in range(g):
      for _ in range(rng.integers(0, 4)):  # 0..3 detections per object
        boxes.append(gt_boxes[k] + rng.normal(0, 0.15, 4) * (wh[k].max() + 1))
        labels.append(
          gt_labels[k] if rng.uniform() < 0.8 else rng.integers(1, num_classes)
        )
    for _ in range(rng.integers(0, 5)):  # clutter
      xy0 = rng.uniform(1, 300, 2)
      boxes.append(np.concatenate([xy0, xy0 + rng.uniform(1, 150, 2)]))
      labels.append(rng.integers(1, num_classes))
    boxes = np.array(boxes, np.float64).reshape(-1, 4)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
    detections.append(
      (boxes, rng.uniform(size=len(boxes)), np.array(labels, np.int64))
    )
  return detections, ground_truths


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("use_07", [True, False])
def test_evaluate_voc_matches_devkit(seed, use_07):
  rng = np.random.default_rng(seed)
  num_classes = 6
  dets, gts = _random_voc_set(rng, 25, num_classes)
  got = evaluation.evaluate_voc(dets, gts, num_classes, use_07_metric=use_07)
  want = np.array(
    [_devkit_voc_eval(dets, gts, c, 0.5, use_07) for c in range(1, num_classes)]
  )
  assert got.per_class_ap.shape == (num_classes - 1,)
  np.testing.assert_array_equal(np.isnan(got.per_class_ap), np.isnan(want))
  np.testing.assert_allclose(got.per_class_ap, want, rtol=0, atol=1e-12)
  assert got.mAP == pytest.approx(np.nanmean(want), abs=1e-12)
  # Another threshold exercises the matching again.
  got = evaluation.evaluate_voc(dets, gts, num_classes, iou_threshold=0.3)
  want = [_devkit_voc_eval(dets, gts, c, 0.3, True) for c in range(1, 6)]
  np.testing.assert_allclose(got.per_class_ap, want, rtol=0, atol=1e-12)


def test_voc_ap_hand_worked():
  rec = np.array([0.5, 0.5, 1.0])
  prec = np.array([1.0, 0.5, 2 / 3])
  # 11-point: t = 0..0.5 see precision 1 (6 points), t = 0.6..1 see 2/3.
  assert evaluation.voc_ap(rec, prec, True) == pytest.approx(28 / 33)
  # Area: envelope 1 on (0, 0.5], 2/3 on (0.5, 1].
  assert evaluation.voc_ap(rec, prec, False) == pytest.approx(0.5 + 1 / 3)
  # Recall stops at 0.25: 11-point counts t = 0, 0.1, 0.2.
  one = np.array([0.25]), np.array([1.0])
  assert evaluation.voc_ap(*one, True) == pytest.approx(3 / 11)
  assert evaluation.voc_ap(*one, False) == pytest.approx(0.25)
  perfect = np.array([0.5, 1.0]), np.array([1.0, 1.0])
  assert evaluation.voc_ap(*perfect, True) == pytest.approx(1.0)
  assert evaluation.voc_ap(*perfect, False) == pytest.approx(1.0)
  assert evaluation.voc_ap(np.zeros(0), np.zeros(0), True) == 0.0
  assert evaluation.voc_ap(np.zeros(0), np.zeros(0), False) == 0.0


def test_voc_ap_matches_devkit_random_curves():
  rng = np.random.default_rng(7)
  for _ in range(20):
    hits = rng.uniform(size=30) < 0.5
    tp = np.cumsum(hits)
    rec = tp / (hits.sum() + rng.integers(0, 5) + 1e-9)
    prec = tp / np.arange(1, 31)
    for use_07 in (True, False):
      assert evaluation.voc_ap(rec, prec, use_07) == _devkit_voc_ap(
        rec, prec, use_07
      )


def test_voc_ap_bad_shapes():
  with pytest.raises(ValueError, match="voc_ap: recall and precision"):
    evaluation.voc_ap(np.zeros(3), np.zeros(2))


def _one_image(det_boxes, det_scores, gt_boxes, difficult, det_labels=None):
  det_labels = det_labels or [1] * len(det_scores)
  dets = [(np.array(det_boxes, float), np.array(det_scores), det_labels)]
  gts = [(np.array(gt_boxes, float), [1] * len(gt_boxes), difficult)]
  return dets, gts


def test_evaluate_voc_difficult_and_duplicates():
  gt_boxes = [[1, 1, 10, 10], [21, 21, 30, 30]]
  det_boxes = [
    [50, 50, 60, 60],  # 0.95: false positive (nothing there)
    [1, 1, 10, 10],  # 0.9: true positive on object 0
    [21, 21, 30, 30],  # 0.8: on object 1
    [1, 1, 10, 10],  # 0.7: duplicate of object 0: false positive
  ]
  scores = [0.95, 0.9, 0.8, 0.7]
  # Object 1 difficult: ranks FP, TP, ignored, FP; npos 1; precision
  # [0, .5, .5, 1/3] at recall [0, 1, 1, 1]: AP 0.5 both ways.
  dets, gts = _one_image(det_boxes, scores, gt_boxes, [False, True])
  for use_07 in (True, False):
    result = evaluation.evaluate_voc(dets, gts, 2, use_07_metric=use_07)
    assert result.per_class_ap.tolist() == pytest.approx([0.5])
    assert result.mAP == pytest.approx(0.5)
  # Object 1 not difficult: FP, TP, TP, FP; npos 2; precision
  # [0, 1/2, 2/3, 1/2] at recall [0, .5, 1, 1]: 11-point 2/3; area
  # 0.5 * 2/3 + 0.5 * 2/3.
  dets, gts = _one_image(det_boxes, scores, gt_boxes, [False, False])
  assert evaluation.evaluate_voc(dets, gts, 2).mAP == pytest.approx(2 / 3)
  result = evaluation.evaluate_voc(dets, gts, 2, use_07_metric=False)
  assert result.mAP == pytest.approx(2 / 3)


def test_evaluate_voc_uses_devkit_plus_one():
  # GT is 2x2 pixels in the devkit's inclusive convention; the detection is
  # 3x2: IoU 4/6 with the +1 (a true positive). Without it, it would be
  # 1/2, not above 0.5.
  dets, gts = _one_image([[1, 1, 3, 2]], [0.9], [[1, 1, 2, 2]], [False])
  assert evaluation.evaluate_voc(dets, gts, 2).mAP == pytest.approx(1.0)
  # Exactly 0.5 (2/4) is a match, as in the MATLAB devkit's >=; a hair
  # less is not.
  dets, gts = _one_image([[1, 1, 2, 1]], [0.9], [[1, 1, 2, 2]], [False])
  assert evaluation.evaluate_voc(dets, gts, 2).mAP == pytest.approx(1.0)
  dets, gts = _one_image([[1, 1, 2, 0.99]], [0.9], [[1, 1, 2, 2]], [False])
  assert evaluation.evaluate_voc(dets, gts, 2).mAP == 0.0


def test_evaluate_voc_continuous_boxes_mapped_to_devkit():
  # Continuous pixel boxes mapped as the module docstring says (+1 on the
  # min corners) are judged by their plain continuous IoU.
  to_devkit = lambda b: np.asarray(b, float) + [1, 1, 0, 0]
  gt = to_devkit([[0, 0, 10, 10]])
  for height, want in ((5.1, 1.0), (4.9, 0.0)):  # IoU 0.51 / 0.49
    det = to_devkit([[0, 0, 10, height]])
    dets, gts = _one_image(det, [0.9], gt, None)
    assert evaluation.evaluate_voc(dets, gts, 2).mAP == pytest.approx(want)


def test_evaluate_voc_best_match_taken_is_false_positive():
  # The devkit looks only at the best-overlap object: the second detection's
  # best object is already taken, so it is a false positive although it
  # overlaps the other object by more than 0.5.
  gt_boxes = [[1, 1, 100, 100], [11, 1, 110, 100]]
  det_boxes = [[1, 1, 100, 100], [4, 1, 103, 100]]
  dets, gts = _one_image(det_boxes, [0.9, 0.8], gt_boxes, None)
  # TP, FP; npos 2: precision [1, .5] at recall [.5, .5]: 11-point 6/11.
  assert evaluation.evaluate_voc(dets, gts, 2).mAP == pytest.approx(6 / 11)


def test_evaluate_voc_absent_class_no_detections_and_ties():
  gts = [
    (np.array([[1.0, 1, 10, 10]]), np.array([1]), np.array([False])),
    (np.array([[5.0, 5, 20, 20]]), np.array([3]), np.array([True])),
  ]
  dets = [
    (np.array([[1.0, 1, 10, 10], [1, 1, 10, 10]]), [0.5, 0.5], [1, 2]),
    (np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)),
  ]
  result = evaluation.evaluate_voc(dets, gts, 5)
  # Class 1 perfect; 2 has detections but no objects; 3 has only a
  # difficult object; 4 nothing at all.
  assert result.per_class_ap[0] == pytest.approx(1.0)
  assert np.isnan(result.per_class_ap[1:]).all()
  assert result.mAP == pytest.approx(1.0)
  # No detections at all: AP 0 where there are objects.
  none = [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))] * 2
  result = evaluation.evaluate_voc(none, gts, 5)
  assert result.per_class_ap[0] == 0.0 and result.mAP == 0.0
  # No images: everything undefined.
  result = evaluation.evaluate_voc([], [], 3)
  assert result.per_class_ap.shape == (2,)
  assert np.isnan(result.per_class_ap).all() and np.isnan(result.mAP)
  # Equal scores keep input order (image 0 first): FP then TP gives 0.5; the
  # other order would give 1.
  gts = [
    (np.zeros((0, 4)), np.zeros(0, int), None),
    (np.array([[1.0, 1, 10, 10]]), [1], None),
  ]
  dets = [
    (np.array([[1.0, 1, 10, 10]]), [0.5], [1]),
    (np.array([[1.0, 1, 10, 10]]), [0.5], [1]),
  ]
  assert evaluation.evaluate_voc(dets, gts, 2).mAP == pytest.approx(0.5)
  assert evaluation.evaluate_voc(dets[::-1], gts[::-1], 2).mAP == pytest.approx(
    1
  )


def test_evaluate_voc_bad_input():
  gts = [(np.zeros((1, 4)), [1], [False])]
  dets = [(np.zeros((1, 4)), [0.5], [1])]
  with pytest.raises(ValueError, match="one entry per image, got 1 and 2"):
    evaluation.evaluate_voc(dets, gts * 2, 2)
  with pytest.raises(ValueError, match=r"detections\[0\] labels must be"):
    evaluation.evaluate_voc([(np.zeros((1, 4)), [0.5], [0])], gts, 2)
  with pytest.raises(ValueError, match=r"ground_truths\[0\] labels must be"):
    evaluation.evaluate_voc(dets, [(np.zeros((1, 4)), [2], None)], 2)
  with pytest.raises(ValueError, match=r"ground_truths\[0\] difficult must"):
    evaluation.evaluate_voc(dets, [(np.zeros((1, 4)), [1], [1, 0])], 2)
  with pytest.raises(ValueError, match=r"detections\[0\] boxes must be"):
    evaluation.evaluate_voc([(np.zeros((1, 3)), [0.5], [1])], gts, 2)
  with pytest.raises(ValueError, match=r"detections\[0\] scores must be"):
    evaluation.evaluate_voc([(np.zeros((1, 4)), [0.5, 1], [1])], gts, 2)
  with pytest.raises(ValueError, match="num_classes must be >= 2"):
    evaluation.evaluate_coco(dets, gts, 1)


def _coco_case():
  # One object per COCO size range (area < 32^2, < 96^2, larger).
  gt_boxes = np.array(
    [[0, 0, 10, 10], [50, 50, 100, 100], [0, 100, 200, 300.0]]
  )
  return gt_boxes, np.array([1, 2, 1])


def test_evaluate_coco_perfect_detections():
  gt_boxes, labels = _coco_case()
  gts = [(gt_boxes, labels, None)]
  dets = [(gt_boxes, np.array([0.9, 0.8, 0.7]), labels)]
  result = evaluation.evaluate_coco(dets, gts, 3)
  assert set(result) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
  for key, value in result.items():
    assert value == pytest.approx(1.0), key


def test_evaluate_coco_hand_worked():
  gt = np.array([[0.0, 0.0, 100.0, 100.0]])
  # IoU 0.62: a match at IoU thresholds 0.5, 0.55, 0.6 out of 0.5..0.95.
  dets = [(np.array([[0.0, 0.0, 100.0, 62.0]]), [0.9], [1])]
  result = evaluation.evaluate_coco(dets, [(gt, [1], None)], 2)
  assert result["AP"] == pytest.approx(0.3)
  assert result["AP50"] == pytest.approx(1.0)
  assert result["AP75"] == pytest.approx(0.0)
  assert result["APl"] == pytest.approx(0.3)
  assert np.isnan(result["APs"]) and np.isnan(result["APm"])  # no such GT
  # Two objects, one found: precision 1 up to recall 0.5, so 51 of the 101
  # recall points.
  gt2 = np.array([[0.0, 0.0, 100.0, 100.0], [200, 200, 300, 300]])
  dets = [(gt[:1], [0.9], [1])]
  result = evaluation.evaluate_coco(dets, [(gt2, [1, 1], None)], 2)
  assert result["AP"] == pytest.approx(51 / 101)
  # The missed object marked difficult is ignored (iscrowd): AP 1.
  result = evaluation.evaluate_coco(dets, [(gt2, [1, 1], [False, True])], 2)
  assert result["AP"] == pytest.approx(1.0)
  # No detections: AP 0.
  none = [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))]
  assert evaluation.evaluate_coco(none, [(gt2, [1, 1], None)], 2)["AP"] == 0.0


def test_evaluate_coco_gt_areas_decide_size_ranges():
  gt_boxes, labels = _coco_case()
  gts = [(gt_boxes, labels, None)]
  dets = [(gt_boxes, np.array([0.9, 0.8, 0.7]), labels)]
  # Call every object small: only APs is defined.
  result = evaluation.evaluate_coco(dets, gts, 3, gt_areas=[np.full(3, 100.0)])
  assert result["APs"] == pytest.approx(1.0)
  assert np.isnan(result["APm"]) and np.isnan(result["APl"])
  with pytest.raises(ValueError, match=r"gt_areas\[0\] must have one area"):
    evaluation.evaluate_coco(dets, gts, 3, gt_areas=[np.ones(2)])


def test_evaluate_coco_no_ground_truth_is_nan(capsys):
  dets = [(np.array([[0.0, 0, 10, 10]]), [0.9], [1])]
  result = evaluation.evaluate_coco(
    dets, [(np.zeros((0, 4)), np.zeros(0, int), None)], 2
  )
  assert all(np.isnan(v) for v in result.values())
  assert capsys.readouterr().out == ""  # pycocotools kept quiet


def test_precision_recall_reproduces_evaluate_voc():
  rng = np.random.default_rng(3)
  dets, gts = [], []
  for _ in range(6):
    g = rng.integers(0, 4)
    xy = rng.uniform(0, 60, (g, 2))
    gt_boxes = np.concatenate([xy, xy + rng.uniform(10, 40, (g, 2))], 1)
    gt_labels = rng.integers(1, 3, g)
    gts.append((gt_boxes, gt_labels, rng.random(g) < 0.2))
    k = rng.integers(0, 6)
    src = gt_boxes[rng.integers(0, max(g, 1), k)] if g else np.zeros((k, 4))
    boxes = src + rng.normal(0, 4, (k, 4))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    dets.append((boxes, rng.random(k), rng.integers(1, 3, k)))
  want = evaluation.evaluate_voc(dets, gts, 3, use_07_metric=False)
  for label in (1, 2):
    rec, prec = evaluation.precision_recall(dets, gts, label)
    if math.isnan(want.per_class_ap[label - 1]):
      continue
    ap = evaluation.voc_ap(rec, prec, use_07_metric=False) if len(rec) else 0.0
    np.testing.assert_allclose(ap, want.per_class_ap[label - 1], atol=1e-9)
  rec, prec = evaluation.precision_recall([], [], 1)
  assert rec.shape == prec.shape == (0,)


def _continuous_iou(a, b):
  """IoU without the devkit's +1 (the old PR curve's convention)."""
  iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
  ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
  area = lambda x: (x[2] - x[0]) * (x[3] - x[1])
  return iw * ih / (area(a) + area(b) - iw * ih)


def test_precision_recall_agrees_with_ap_where_conventions_differ():
  """Small boxes: the devkit's +1 IoU matches where the continuous one would
  not, so a curve with the continuous IoU would disagree with the AP."""
  gt = np.array([[1.0, 1, 4, 4], [20, 20, 23, 23]])  # 1-based inclusive px
  det = np.array(
    [
      [1.0, 1, 3, 3],  # devkit IoU 9/16 >= 0.5; continuous 4/9 < 0.5
      [20, 20, 21, 21],  # devkit 4/16 < 0.5: a false positive either way
      [21, 21, 23, 23],  # devkit 9/16 >= 0.5; continuous 4/9 < 0.5
    ]
  )
  # With the continuous IoU no detection would be a true positive.
  assert all(_continuous_iou(d, g) < 0.5 for d in det for g in gt)
  dets = [(det, np.array([0.9, 0.8, 0.7]), np.array([1, 1, 1]))]
  gts = [(gt, np.array([1, 1]), None)]
  rec, prec = evaluation.precision_recall(dets, gts, 1)
  np.testing.assert_allclose(rec, [0.5, 0.5, 1.0])  # TP, FP, TP
  np.testing.assert_allclose(prec, [1.0, 0.5, 2 / 3])
  for use_07 in (True, False):
    ap = evaluation.evaluate_voc(dets, gts, 2, use_07_metric=use_07)
    assert ap.mAP > 0.5
    assert evaluation.voc_ap(rec, prec, use_07) == ap.per_class_ap[0]


def test_precision_recall_difficult_and_no_ground_truth():
  gts = [(np.array([[1.0, 1, 10, 10]]), np.array([1]), np.array([True]))]
  dets = [(np.array([[1.0, 1, 10, 10], [30, 30, 40, 40]]), [0.9, 0.8], [1, 1])]
  rec, prec = evaluation.precision_recall(dets, gts, 1)
  # The match to the difficult object is left out; no object counts.
  np.testing.assert_array_equal(rec, [0.0])
  np.testing.assert_array_equal(prec, [0.0])
  with pytest.raises(ValueError, match="labels must be integers >= 1"):
    evaluation.precision_recall([(np.zeros((1, 4)), [0.5], [0])], [gts[0]], 1)


@pytest.mark.parametrize("fn", ["evaluate_voc", "evaluate_coco"])
def test_non_finite_and_malformed_entries_name_image_and_field(fn):
  # Found by tests/test_fuzz.py: a NaN box scored AP 1 in evaluate_coco (a
  # miss in evaluate_voc); a non-tuple entry or string labels gave a
  # TypeError.
  box, gt = np.array([[1.0, 1, 5, 5]]), (np.array([[1.0, 1, 5, 5]]), [1], None)
  bad = [
    ((box + np.nan, [0.9], [1]), r"detections\[0\] boxes must be finite"),
    ((box, [np.nan], [1]), r"detections\[0\] scores must be finite"),
    ((box, ["x"], [1]), r"detections\[0\] scores must be numbers"),
    ((box, [0.9], ["a"]), r"detections\[0\] labels must be integers"),
    (None, r"detections\[0\] must be a 3-tuple .* got a NoneType"),
  ]
  for det, match in bad:
    with pytest.raises(ValueError, match=rf"{fn}: {match}"):
      getattr(evaluation, fn)([det], [gt], 3)
  with pytest.raises(ValueError, match=r"ground_truths\[0\] boxes must be"):
    getattr(evaluation, fn)([(box, [0.9], [1])], [(box * np.inf, [1], None)], 3)
  with pytest.raises(ValueError, match="num_classes must be >= 2 .* got 3.0"):
    getattr(evaluation, fn)([(box, [0.9], [1])], [gt], 3.0)
