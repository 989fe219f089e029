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

On-device NMS (issue 14): the jitted
`device_postprocess.decode_detections_device` on a batch of `--batch`
images (device_get of the padded result included) against the host's
`decode_detections_batch` and, where torch imports (e.g. installed aside
with `pip install --target DIR` and `PYTHONPATH=DIR`), torchvision's
postprocess of the same outputs (decode, per-class threshold and top-k,
`torchvision.ops.batched_nms`, the best `max_detections`; torchvision's
SSD `postprocess_detections` minus its clip), per image; and the bare NMS
on the realistic case's thresholded candidates: host `batched_nms`,
`device_postprocess.greedy_nms` (jitted), torchvision's `batched_nms`.
Ratios are to the host (< 1: faster).

`--detect` adds end-to-end rows: `ssd_jax.detect.detect` (jitted: resize
and normalise uint8 375x500 images, SSD300 VGG16 at `--detect-width`,
random weights, softmax, device NMS) against the same forward followed by
the host decoder, at batch 1 and `--batch`: images/s and detections/s.
Results: experiments/results/bench_postprocess_cpu_2026-12-01.txt.
"""

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import boxes as box_lib
from ssd_jax import device_postprocess, evaluation, models, postprocess, runtime
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


def _cpu_name() -> str:
  """The CPU model from /proc/cpuinfo, or platform.processor()."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def _time(fn, repeats):
  fn()  # warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * np.min(times), 1e3 * np.median(times)


def _torch():
  """(torch, torchvision) or None where they do not import."""
  try:
    import torch
    import torchvision
  except ImportError:
    return None
  # One thread: its NMS kernel is serial, and OpenMP's spinning threads made
  # the small ops of a postprocess 5-9x slower on this shared 2-core box.
  torch.set_num_threads(1)
  return torch, torchvision


def torch_decode(torch, torchvision, loc, scores, priors, top_k=400, k=200):
  """torchvision's SSD postprocess of one image's outputs (torch tensors).

  Decode (variances 0.1, 0.2, the same size clamp), per class: scores >
  0.01, the best `top_k`; `batched_nms` at 0.45; the best `k` kept.
  """
  cxcy = priors[:, :2] + loc[:, :2] * 0.1 * priors[:, 2:]
  wh = priors[:, 2:] * torch.exp(
    torch.clamp(loc[:, 2:] * 0.2, max=box_lib.MAX_LOG_SCALE)
  )
  boxes = torch.cat([cxcy - wh / 2, cxcy + wh / 2], 1)
  all_boxes, all_scores, all_labels = [], [], []
  for c in range(1, scores.shape[1]):
    s = scores[:, c]
    keep = torch.nonzero(s > 0.01).squeeze(1)
    s, idx = s[keep].topk(min(top_k, keep.numel()))
    all_boxes.append(boxes[keep[idx]])
    all_scores.append(s)
    all_labels.append(torch.full_like(idx, c))
  b, s, lab = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
  keep = torchvision.ops.batched_nms(b, s, lab, 0.45)[:k]
  return b[keep], s[keep], lab[keep]


def device_nms_rows(priors, cases, batch, repeats, torch_mods):
  """Device NMS vs host vs torchvision on a batch; prints ms per image."""
  decode = jax.jit(
    lambda loc, scores: device_postprocess.decode_detections_device(
      loc, scores, priors
    )
  )
  for name, make in cases:
    outputs = [make() for _ in range(batch)]
    loc = np.stack([o[0] for o in outputs])  # [B, P, 4]
    scores = np.stack([o[1] for o in outputs])  # [B, P, C]
    for b in (1, batch):
      lo, sc = loc[:b], scores[:b]
      host, _ = _time(
        lambda lo=lo, sc=sc: postprocess.decode_detections_batch(
          lo, sc, priors
        ),
        repeats,
      )
      dev, _ = _time(
        lambda lo=lo, sc=sc: jax.device_get(decode(lo, sc)), repeats
      )
      line = (
        f"decode {name} B={b:<2} ms per image: host {host / b:7.2f}  device "
        f"{dev / b:7.2f} (x{dev / host:.2f})"
      )
      if torch_mods:
        ref, _ = _time(
          lambda lo=lo, sc=sc: _torch_batch(torch_mods, lo, sc, priors),
          repeats,
        )
        line += f"  torchvision {ref / b:7.2f} (x{ref / host:.2f})"
      print(line, flush=True)


def _torch_batch(torch_mods, loc, scores, priors):
  """`torch_decode` of each image of a numpy batch."""
  torch, torchvision = torch_mods
  tl, ts = torch.from_numpy(loc), torch.from_numpy(scores)
  tp = torch.from_numpy(priors)
  return [
    torch_decode(torch, torchvision, tl[i], ts[i], tp) for i in range(len(tl))
  ]


def random_params(model, image_size, seed=0):
  """He-normal kernels, zero biases, L2Norm scale 20, drawn in numpy from
  the shapes `model.init` gives (compiling `model.init` took 44 s for the
  tiny smoke model on this box)."""
  x1 = jnp.zeros((1, image_size, image_size, 3))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x1)["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
      return rng.normal(0.0, std, leaf.shape).astype(np.float32)
    return np.full(leaf.shape, 20.0 if name == "scale" else 0.0, np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def detect_rows(batch, repeats, width, image_size):
  """End-to-end `detect` (device NMS) vs forward + host NMS."""
  # Imported here: they load TensorFlow, and torch's triton segfaults when
  # it loads after TensorFlow (torch is imported first, in `main`).
  from ssd_jax import detect

  model = models.from_config(
    {"name": "ssd", "image_size": image_size, "width": width}, NUM_CLASSES
  )
  params = random_params(model, image_size)
  settings = detect.DetectSettings()
  priors = np.asarray(model.priors(), np.float32)
  on_device = jax.jit(detect.detect, static_argnums=(0, 3))
  forward = jax.jit(
    lambda p, x: detect.predict(
      model, p, detect.preprocess(x, image_size, "caffe")
    )
  )
  h, w = 375, 500  # A typical VOC image.

  def on_host(images):
    loc, probs = jax.device_get(forward(params, images))
    dets = postprocess.decode_detections_batch(loc, probs, priors)
    return [d.boxes * np.float32([w, h, w, h]) for d in dets]

  rng = np.random.default_rng(0)
  for b in (1, batch):
    images = rng.integers(0, 256, (b, h, w, 3), np.uint8)
    dets = jax.device_get(on_device(model, params, images, settings))
    count = int(dets.num_detections.sum())
    for label, fn in (
      ("host NMS", lambda images=images: on_host(images)),
      (
        "device NMS",
        lambda images=images: jax.device_get(
          on_device(model, params, images, settings)
        ),
      ),
    ):
      lo, _ = _time(fn, repeats)
      print(
        f"detect SSD{image_size} width {width} B={b:<2} {label:<10} "
        f"{lo:9.1f} ms  {1e3 * b / lo:7.2f} images/s  "
        f"{1e3 * count / lo:8.1f} detections/s ({count} detections)",
        flush=True,
      )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--eval-images", type=int, default=4952)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--detect", action="store_true", help="end-to-end rows")
  parser.add_argument("--detect-width", type=float, default=1.0)
  parser.add_argument("--detect-image-size", type=int, default=300)
  args = parser.parse_args(argv)
  runtime.apply_xla_cpu_flags()  # As `python -m ssd_jax.main` runs.
  torch_mods = None if args.no_torch else _torch()
  versions = f"jax {jax.__version__}, numpy {np.__version__}"
  if torch_mods:
    versions += (
      f", torch {torch_mods[0].__version__} ({torch_mods[0].get_num_threads()}"
      f" threads), torchvision {torch_mods[1].__version__}"
    )
  print(
    f"# {_cpu_name()}, {os.cpu_count()} CPUs, python "
    f"{platform.python_version()}, {versions}",
    flush=True,
  )
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
  order = np.argsort(-cand_scores, kind="stable")
  greedy = jax.jit(device_postprocess.greedy_nms, static_argnums=(4,))
  sorted_args = (
    boxes[prior_idx][order],
    cls[order].astype(np.int32),
    np.ones(len(order), bool),
    0.45,
    len(order),
  )
  lo, med = _time(lambda: jax.device_get(greedy(*sorted_args)), args.repeats)
  label = f"device greedy_nms ({len(prior_idx)} candidates, jitted)"
  print(f"{label:<52} {lo:8.2f} {med:10.2f}")
  if torch_mods:
    torch, tv = torch_mods
    tb = torch.from_numpy(boxes[prior_idx])
    ts, tc = torch.from_numpy(cand_scores), torch.from_numpy(cls)
    lo, med = _time(lambda: tv.ops.batched_nms(tb, ts, tc, 0.45), args.repeats)
    label = f"torchvision batched_nms ({len(prior_idx)} candidates)"
    print(f"{label:<52} {lo:8.2f} {med:10.2f}")

  priors32 = priors.astype(np.float32)
  device_nms_rows(
    priors32,
    (
      ("realistic", lambda: realistic_case(priors, rng)),
      ("untrained", lambda: untrained_case(priors, rng)),
    ),
    args.batch,
    args.repeats,
    torch_mods,
  )
  if args.detect:
    detect_rows(
      args.batch, args.repeats, args.detect_width, args.detect_image_size
    )

  dets, gts = voc_sized_eval_set(rng, args.eval_images)
  lo, med = _time(lambda: evaluation.evaluate_voc(dets, gts, NUM_CLASSES), 3)
  label = f"evaluate_voc, {args.eval_images} images x 200 detections"
  print(f"{label:<52} {lo:8.2f} {med:10.2f}")


if __name__ == "__main__":
  main()
