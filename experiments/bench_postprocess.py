"""Benchmark host-side postprocessing per image (SSD300: P = 8732, C = 21).

Run: `.venv/bin/python experiments/bench_postprocess.py [--repeats N]`

Cases:
- realistic: a few objects; priors overlapping an object score high on its
  class, everything else is confidently background (like a trained model).
- untrained: near-uniform softmax (every class score ~1/21 > 0.01), random
  small offsets: the worst case the per-class cap must bound.
Also times the box decode alone, `ssd_jax.boxes.decode` with numpy versus
jnp plus the device-to-host copy, and `batched_nms` on the
realistic case's thresholded candidates (the peer figure in PERF_NOTES.md is
torchvision's batched_nms on ~2,900 candidates), and `evaluate_voc` on a
synthetic set the size of VOC2007 test (4,952 images, 200 detections each).

Recorded 2026-11-30 on the 2-core dev box (shared and loaded, so medians
are noisy; min of 30 runs, ms), before -> after the one-IoU / one-NMS-engine
change (issue 11): decode_detections realistic (1,771 scores > 0.01) 3.7 ->
2.3, untrained (174,640 > 0.01, capped at 400 per class) 6.8 -> 4.3; numpy
decode (`postprocess.decode_boxes` -> `boxes.decode(xp=np)`) 0.32 -> 0.31;
jitted jnp decode + device_get 0.07 -> 0.09 (XLA CPU; eager jnp from numpy
1.0 -> 0.7); batched_nms on 2,082 candidates 6.3 -> 4.5; evaluate_voc at
VOC07-test size 678 -> 674. Peer (PERF_NOTES.md, torchvision): postprocess
5.1 per image, batched_nms on ~2,900 candidates 2.5.
"""

import argparse
import time

import jax
import numpy as np

from ssd_jax import boxes as box_lib
from ssd_jax import evaluation, postprocess
from ssd_jax.default_boxes import SSD300_PRIORS, default_boxes

NUM_CLASSES = 21


def _softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def realistic_case(priors, rng, num_objects=4):
  """Scores and offsets resembling a trained detector's output."""
  num_priors = len(priors)
  centres = rng.uniform(0.2, 0.8, (num_objects, 2))
  sizes = rng.uniform(0.1, 0.5, (num_objects, 2))
  objects = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1)
  labels = rng.integers(1, NUM_CLASSES, num_objects)
  corners = np.asarray(box_lib.center_to_corners(priors))
  iou = np.asarray(box_lib.pairwise_iou(corners, objects))  # [P, O]
  logits = rng.normal(0, 1, (num_priors, NUM_CLASSES))
  logits[:, 0] += 8.0
  best = iou.argmax(1)
  best_iou = iou.max(1)
  logits[np.arange(num_priors), labels[best]] += 12.0 * best_iou
  loc = rng.normal(0, 0.5, (num_priors, 4)).astype(np.float32)
  return loc, _softmax(logits)


def untrained_case(priors, rng):
  num_priors = len(priors)
  logits = rng.normal(0, 0.1, (num_priors, NUM_CLASSES))
  loc = rng.normal(0, 0.1, (num_priors, 4)).astype(np.float32)
  return loc, _softmax(logits)


def voc_sized_eval_set(rng, num_images=4952, per_image=200):
  """Detections and ground truths shaped like a VOC2007-test evaluation."""
  detections, ground_truths = [], []
  for _ in range(num_images):
    g = rng.integers(1, 5)
    xy = rng.integers(1, 300, (g, 2))
    gt = np.concatenate([xy, xy + rng.integers(5, 200, (g, 2))], -1)
    gt_labels = rng.integers(1, NUM_CLASSES, g)
    ground_truths.append((gt, gt_labels, rng.uniform(size=g) < 0.1))
    xy = rng.uniform(1, 400, (per_image, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 200, (per_image, 2))], -1)
    boxes[:g] = gt + rng.normal(0, 3, (g, 4))
    labels = rng.integers(1, NUM_CLASSES, per_image)
    labels[:g] = gt_labels
    detections.append((boxes, rng.uniform(size=per_image), labels))
  return detections, ground_truths


def _time(fn, repeats):
  fn()  # warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * np.min(times), 1e3 * np.median(times)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--eval-images", type=int, default=4952)
  args = parser.parse_args(argv)
  priors = default_boxes(*SSD300_PRIORS)
  rng = np.random.default_rng(0)
  print(f"P = {len(priors)}, C = {NUM_CLASSES}, repeats = {args.repeats}")
  print(f"{'case':<52} {'min ms':>8} {'median ms':>10}")

  for name, (loc, scores) in (
    ("realistic", realistic_case(priors, rng)),
    ("untrained", untrained_case(priors, rng)),
  ):
    above = int((scores[:, 1:] > 0.01).sum())
    dets = postprocess.decode_detections(loc, scores, priors)
    label = f"decode_detections {name} ({above} > 0.01, K={len(dets.scores)})"
    lo, med = _time(
      lambda loc=loc, scores=scores: postprocess.decode_detections(
        loc, scores, priors
      ),
      args.repeats,
    )
    print(f"{label:<52} {lo:8.2f} {med:10.2f}")

  loc, scores = realistic_case(priors, rng, num_objects=8)
  lo, med = _time(
    lambda: box_lib.decode(loc, priors.astype(np.float32), xp=np), args.repeats
  )
  print(f"{'boxes.decode numpy':<52} {lo:8.2f} {med:10.2f}")
  loc_dev = jax.device_put(loc)
  priors_dev = jax.device_put(priors)
  jnp_decode = jax.jit(box_lib.decode)
  lo, med = _time(
    lambda: jax.device_get(jnp_decode(loc_dev, priors_dev)), args.repeats
  )
  print(f"{'boxes.decode jitted + device_get':<52} {lo:8.2f} {med:10.2f}")
  lo, med = _time(lambda: np.asarray(box_lib.decode(loc, priors)), args.repeats)
  print(f"{'boxes.decode eager from numpy':<52} {lo:8.2f} {med:10.2f}")

  boxes = box_lib.decode(loc, priors.astype(np.float32), xp=np)
  prior_idx, cls = np.nonzero(scores[:, 1:] > 0.01)
  cand_scores = scores[prior_idx, cls + 1]
  label = f"batched_nms ({len(prior_idx)} candidates)"
  lo, med = _time(
    lambda: postprocess.batched_nms(boxes[prior_idx], cand_scores, cls, 0.45),
    args.repeats,
  )
  print(f"{label:<52} {lo:8.2f} {med:10.2f}")

  dets, gts = voc_sized_eval_set(rng, args.eval_images)
  lo, med = _time(lambda: evaluation.evaluate_voc(dets, gts, NUM_CLASSES), 3)
  label = f"evaluate_voc, {args.eval_images} images x 200 detections"
  print(f"{label:<52} {lo:8.2f} {med:10.2f}")


if __name__ == "__main__":
  main()
