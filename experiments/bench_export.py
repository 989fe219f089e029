"""Images per second of the exported detectors on this CPU (not a test).

SSD300 (VGG16, random weights: no checkpoint needed; the NMS then sees the
most candidates, every class score of an untrained model being above the
0.01 threshold) end to end from uint8 images of `--input-size` to padded
detections, at each batch size of `--batches`, through:

- `detect`: `jax.jit(ssd_jax.detect.detect)` (on-device NMS);
- `host_nms`: the same preprocessing and network jitted, then the host
  numpy NMS (`postprocess.decode_detections_batch`, the default decoder);
- `jax_export`: the `--format=jax` artefact (`export.save_jax`, then
  `export.load_jax` in this process);
- `savedmodel`: the `--format=savedmodel` export run by TensorFlow
  (`tf.saved_model.load(...).signatures["serving_default"]`);
- `torchvision`: `ssd300_vgg16(weights=None, weights_backbone=None)` in eval
  mode, end to end (its own transform: float conversion, resize to 300,
  normalisation; its postprocess: score 0.01, top-400 per class, NMS 0.45,
  200 per image, the same settings), where torch imports (skipped where it
  does not).

Median of `--repeats` timed calls after a warm-up call (compilation), with
the XLA CPU flags of `python -m ssd_jax.main` (`runtime.apply_xla_cpu_flags`,
before JAX starts). The ratio column is torchvision's seconds per batch
over the row's (> 1: faster than torchvision). Results go to stdout and to
`--output` (default experiments/results/bench_export_cpu_<date>.txt).

  PYTHONPATH=DIR python experiments/bench_export.py  # torch installed in DIR
  python experiments/bench_export.py --width 0.125 --image-size 64 \
    --batches 1,2 --repeats 1 --no-torch --output /tmp/b.txt  # smoke
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

# torch before TensorFlow: torch's triton crashes (SIGSEGV) importing after
# it. When TensorFlow is loaded already (the script imported by a test),
# torchvision is skipped.
torch = torchvision = None
if "tensorflow" not in sys.modules:
  try:
    import torch
    import torchvision
  except ImportError:
    pass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_model  # noqa: E402 (a sibling script)

from ssd_jax import detect, export, models, postprocess, runtime  # noqa: E402
from ssd_jax.detect import predict  # noqa: E402
from ssd_jax.models import variables as model_vars  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PATHS = ("detect", "host_nms", "jax_export", "savedmodel", "torchvision")


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of `fn()` over `repeats` calls after one warm-up."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def host_nms_fn(model, settings):
  """Preprocess + network jitted, then the host NMS; boxes in pixels."""
  priors = np.asarray(model.priors(), np.float32)
  kind = model_vars.normalization_of(model)

  @jax.jit
  def network(variables, images):
    x = detect.preprocess(images, model.image_size, kind)
    return predict(model, variables, x)

  def run(variables, images):
    loc, probs = jax.device_get(network(variables, images))
    dets = postprocess.decode_detections_batch(
      loc,
      probs,
      priors,
      score_threshold=settings.score_threshold,
      nms_threshold=settings.nms_threshold,
      top_k_per_class=settings.top_k_per_class,
      max_detections=settings.max_detections,
      variances=settings.variances,
    )
    h, w = images.shape[1:3]
    return [d.boxes * np.float32([w, h, w, h]) for d in dets]

  return run


def ours(args, images: dict[int, np.ndarray], workdir: str) -> dict:
  """{path: {batch: seconds per batch}} of the ssd_jax paths."""
  model = models.SSD(
    args.num_classes,
    image_size=args.image_size,
    width=args.width,
    cpu_fast_ops=True,
  )
  side = args.image_size
  variables = jax.jit(model.init)(
    jax.random.key(0), np.zeros((1, side, side, 3), np.float32)
  )
  variables = {"params": variables["params"]}
  settings = detect.DetectSettings()
  detect_jit = jax.jit(detect.detect, static_argnums=(0, 3))
  host = host_nms_fn(model, settings)

  jax_dir = os.path.join(workdir, "jax")
  os.makedirs(jax_dir)
  start = time.perf_counter()
  export.save_jax(jax_dir, model, variables, settings)
  jax_export_s = time.perf_counter() - start
  names = [f"class_{i}" for i in range(1, args.num_classes)]
  meta = export.metadata(model, names, settings, 0, "jax", ("cpu",))
  with open(os.path.join(jax_dir, export.METADATA_FILE), "w") as f:
    json.dump(meta, f)
  artefact = export.load_jax(jax_dir)

  import tensorflow as tf

  tf_dir = os.path.join(workdir, "savedmodel")
  start = time.perf_counter()
  export.save_savedmodel(tf_dir, model, variables, settings)
  tf_export_s = time.perf_counter() - start
  serve = tf.saved_model.load(tf_dir).signatures[export.SIGNATURE]

  calls = {
    "detect": lambda x: jax.block_until_ready(
      detect_jit(model, variables, x, settings)
    ),
    "host_nms": lambda x: host(variables, x),
    "jax_export": lambda x: jax.block_until_ready(artefact(x)),
    "savedmodel": lambda x: serve(images=tf.constant(x)),
  }
  out = {path: {} for path in calls}
  for path, fn in calls.items():
    for b, x in images.items():
      out[path][b] = median_seconds(lambda fn=fn, x=x: fn(x), args.repeats)
  out["export_seconds"] = {"jax": jax_export_s, "savedmodel": tf_export_s}
  out["sizes_mb"] = {
    name: sum(
      os.path.getsize(os.path.join(root, f))
      for root, _, files in os.walk(folder)
      for f in files
    )
    / 1e6
    for name, folder in (("jax", jax_dir), ("savedmodel", tf_dir))
  }
  out["tensorflow"] = tf.__version__
  return out


def theirs(args, images: dict[int, np.ndarray]) -> dict | None:
  """{batch: seconds per batch} of torchvision's ssd300_vgg16, or None."""
  if torch is None:
    return None
  torch.set_num_threads(os.cpu_count() or 1)
  net = torchvision.models.detection.ssd300_vgg16(
    weights=None, weights_backbone=None, num_classes=args.num_classes
  ).eval()

  def run(x):  # uint8 [N, H, W, 3] -> its list of detections.
    batch = [
      torch.from_numpy(img).permute(2, 0, 1).float() / 255.0 for img in x
    ]
    with torch.no_grad():
      return net(batch)

  out = {
    b: median_seconds(lambda x=x: run(x), args.repeats)
    for b, x in images.items()
  }
  out["version"] = (
    f"torch {torch.__version__} torchvision {torchvision.__version__}"
  )
  return out


def report(args, mine: dict, ref: dict | None, load: tuple) -> str:
  """The results as text (a header, one line per path and batch)."""
  h, w = args.input_size
  lines = [
    f"# experiments/bench_export.py {datetime.date.today().isoformat()}",
    f"# {bench_model.cpu_name()}, {os.cpu_count()} CPUs, python "
    f"{platform.python_version()}, jax {jax.__version__}, tensorflow "
    f"{mine['tensorflow']}" + (f", {ref['version']}" if ref else ""),
    f"# SSD{args.image_size} VGG16 width {args.width}, {args.num_classes} "
    f"classes, random weights; uint8 input {h}x{w}; median of "
    f"{args.repeats} after a warm-up",
    f"# load average (1 min) at start and end: {load[0]:.1f}, {load[1]:.1f} "
    "(other processes share these CPUs when above 0)",
    f"# export seconds: jax {mine['export_seconds']['jax']:.1f}, savedmodel "
    f"{mine['export_seconds']['savedmodel']:.1f}; sizes MB: jax "
    f"{mine['sizes_mb']['jax']:.1f}, savedmodel "
    f"{mine['sizes_mb']['savedmodel']:.1f}",
    f"{'path':<12} {'batch':>5} {'ms/batch':>10} {'images/s':>9} "
    f"{'vs torchvision':>14}",
  ]
  for path in PATHS:
    rows = ref if path == "torchvision" else mine.get(path)
    if rows is None:
      lines.append(
        f"{path:<12} skipped (no torch, or TensorFlow imported before it)"
      )
      continue
    for b in args.batches:
      sec = rows[b]
      ratio = f"{ref[b] / sec:14.2f}" if ref else f"{'-':>14}"
      lines.append(
        f"{path:<12} {b:>5} {sec * 1e3:10.1f} {b / sec:9.2f} {ratio}"
      )
  return "\n".join(lines) + "\n"


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--input-size", default="375,500", help="H,W of input")
  parser.add_argument("--image-size", type=int, default=300)
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--num-classes", type=int, default=21)
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--output", default=None)
  args = parser.parse_args(argv)
  # The XLA CPU flags `python -m ssd_jax.main` uses (before JAX starts).
  runtime.apply_xla_cpu_flags()
  args.batches = [int(b) for b in args.batches.split(",")]
  args.input_size = tuple(int(v) for v in args.input_size.split(","))
  rng = np.random.default_rng(0)
  images = {
    b: rng.integers(0, 256, (b, *args.input_size, 3), dtype=np.uint8)
    for b in args.batches
  }
  load_start = os.getloadavg()[0]
  with tempfile.TemporaryDirectory() as workdir:
    mine = ours(args, images, workdir)
  ref = None if args.no_torch else theirs(args, images)
  text = report(args, mine, ref, (load_start, os.getloadavg()[0]))
  print(text, end="", flush=True)
  output = args.output or os.path.join(
    RESULTS, f"bench_export_cpu_{datetime.date.today().isoformat()}.txt"
  )
  with open(output, "w") as f:
    f.write(text)
  return text


if __name__ == "__main__":
  main()
