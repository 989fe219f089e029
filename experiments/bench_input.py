"""Images/second of the full SSD training input pipeline (not a test).

    .venv/bin/python experiments/bench_input.py                 # both sources
    .venv/bin/python experiments/bench_input.py --source voc_folder --steps 40
    .venv/bin/python experiments/bench_input.py --json out.json

Measures `ssd_jax.data.pipeline.create_train_iterator` end to end at
300x300 (decode, photometric distortion, expand, min-IoU crop, flip, resize,
normalise, box padding, batching, device reshape) for:
  synthetic    the in-memory shapes set rendered at 300x300;
  voc_folder   a VOC-format folder of JPEGs (VOC-sized, 500x375, with a few
               boxes each) that the benchmark writes to a temporary folder.
The first `--warmup` batches (graph tracing, autotuning) are not timed.
Target: >= 300 images/s on 2 CPU cores. On a shared machine images/s
depends on the other load (the load average is recorded); the CPU time per
image is steadier, and `*_idle_bound_images_per_s` = cores / CPU time per
image is what idle cores would give at perfect parallel scaling.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from ssd_jax import data
from ssd_jax.data import pipeline, synthetic


def write_voc_folder(root: str, num_images: int, size=(375, 500)) -> None:
  """Writes `num_images` VOC-style JPEGs + XML annotations under `root`.

  Images are synthetic scenes resized to `size` (h, w) with mild noise, so
  JPEG decoding costs about what a photo of that size costs.
  """
  h, w = size
  for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
  rng = np.random.default_rng(0)
  ids = []
  for k in range(num_images):
    ex = synthetic.generate_example(0, k, image_size=256)
    image = Image.fromarray(ex["image"]).resize((w, h), Image.BILINEAR)
    pixels = np.asarray(image, np.int16) + rng.integers(-6, 7, (h, w, 3))
    image_id = f"{k:06d}"
    ids.append(image_id)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
      os.path.join(root, "JPEGImages", image_id + ".jpg"), quality=90
    )
    objects = []
    for box, label in zip(ex["boxes"], ex["labels"], strict=True):
      x0, y0 = int(box[0] * w) + 1, int(box[1] * h) + 1
      x1, y1 = int(box[2] * w), int(box[3] * h)
      name = data.VOC_CLASSES[int(label) - 1]
      objects.append(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox>"
        f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object>"
      )
    with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
      f.write(
        f"<annotation><filename>{image_id}.jpg</filename><size><width>{w}"
        f"</width><height>{h}</height><depth>3</depth></size>"
        + "".join(objects)
        + "</annotation>"
      )
  with open(os.path.join(root, "ImageSets", "Main", "trainval.txt"), "w") as f:
    f.write("\n".join(ids) + "\n")


def measure(data_cfg, image_size: int, batch: int, steps: int, warmup: int):
  """Returns (images/s, CPU ms per image, seconds to the first batches).

  CPU ms per image is the process's CPU time (all threads) over the timed
  batches: on a shared machine it is a steadier figure than images/s, and
  `cores * 1000 / cpu_ms` bounds what idle cores would deliver.
  """
  start = time.perf_counter()
  it = pipeline.create_train_iterator(
    data_cfg, image_size=image_size, global_batch_size=batch, seed=0,
    num_devices=1,
  )  # fmt: skip
  for _ in range(warmup):
    next(it)
  first = time.perf_counter() - start
  start, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    b = next(it)
  elapsed = time.perf_counter() - start
  cpu_ms = 1000 * (time.process_time() - cpu) / (steps * batch)
  assert b["image"].shape == (1, batch, image_size, image_size, 3)
  return steps * batch / elapsed, cpu_ms, first


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source", default="both",
                      choices=("both", "synthetic", "voc_folder"))  # fmt: skip
  parser.add_argument("--image_size", type=int, default=300)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--num_images", type=int, default=256)
  parser.add_argument("--threads", type=int, default=0,
                      help="tf.data threads (0 = all cores)")  # fmt: skip
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  common = {"max_boxes": 64}
  if args.threads:
    common["num_threads"] = args.threads
  cores = args.threads or os.cpu_count()
  results = {
    "cpu_count": os.cpu_count(),
    "load_average": os.getloadavg(),
    "image_size": args.image_size,
    "batch": args.batch,
  }
  if args.source in ("both", "synthetic"):
    cfg = dict(common, source="synthetic", num_train=args.num_images,
               synthetic_image_size=args.image_size)  # fmt: skip
    t = time.perf_counter()
    synthetic.synthetic_arrays(0, args.num_images, "train", args.image_size)
    results["synthetic_generate_s"] = time.perf_counter() - t
    rate, cpu_ms, first = measure(
      cfg, args.image_size, args.batch, args.steps, args.warmup
    )
    results["synthetic_images_per_s"] = rate
    results["synthetic_cpu_ms_per_image"] = cpu_ms
    results["synthetic_idle_bound_images_per_s"] = cores * 1000 / cpu_ms
    results["synthetic_first_batches_s"] = first
  if args.source in ("both", "voc_folder"):
    with tempfile.TemporaryDirectory() as root:
      write_voc_folder(root, args.num_images)
      cfg = dict(common, source="voc_folder", root=root)
      rate, cpu_ms, first = measure(
        cfg, args.image_size, args.batch, args.steps, args.warmup
      )
    results["voc_folder_images_per_s"] = rate
    results["voc_folder_cpu_ms_per_image"] = cpu_ms
    results["voc_folder_idle_bound_images_per_s"] = cores * 1000 / cpu_ms
    results["voc_folder_first_batches_s"] = first
  print(json.dumps(results, indent=1))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
