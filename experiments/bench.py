"""ssd_jax's benchmark suite, side by side with torchvision when importable.

    .venv/bin/python experiments/bench.py                  # everything
    .venv/bin/python experiments/bench.py --only match,postprocess
    .venv/bin/python experiments/bench.py --json out.json --repeats 5

Each figure is the min and median of `--repeats` timed runs after warm-up
(compilation excluded). When torch and torchvision import (`pip install
torch==2.14.1 torchvision==0.29.1`, never required), the same run measures
torchvision's `ssd300_vgg16` on the same inputs and prints the ratios
ssd_jax / torchvision (< 1 means ssd_jax is faster). The machine is noisy:
compare ratios from one run, not figures from different runs.

Figures (all SSD300, 21 classes, 300x300, random weights):
  forward_bN_DTYPE  backbone + heads, batch N, compute dtype DTYPE
  train_b8_DTYPE    one SGD step at batch 8 (`ssd_jax.step.p_train_step`,
                    config.parallel "pmap"; the *_shard_map row:
                    `ssd_jax.step.s_train_step`, "shard_map"
                    with the training defaults): forward, vmapped on-device
                    match, MultiBox loss, backward, update, with the
                    training default cpu_fast_ops (on for the CPU: the
                    max-pool gradient of ssd_jax.models.cpu_ops; the
                    *_xla_pool_grads row has XLA's own)
                    (torchvision: model(images, targets), backward, step)
  match_b32         targets for 32 images x 10 boxes (torchvision: IoU +
                    SSDMatcher in a Python loop, as its training does)
  postprocess_*     decode_detections for one image: "realistic" score
                    maps (~3k candidates above 0.01) and an untrained
                    model's (every score above 0.01); torchvision:
                    postprocess_detections on the same tensors
  input_synthetic   training input pipeline images/s at 300x300
  sgemm_2048        a 2048^3 float32 matrix product (jnp.dot; torch: the
                    same with torch.matmul): the machine's practical peak.
                    A throughput block after the table gives each
                    library's GFLOP/s for it and for the forward and
                    training rows (62.75 GFLOP per image forward, 3x that
                    for a training step), and the forward's share of the
                    peak

The run first calls `ssd_jax.runtime.apply_xla_cpu_flags()` (XLA CPU's
YNNPACK fusion off, as the training and demo entry points do);
`--xla-defaults` leaves XLA's defaults, to measure what the setting buys.

On a GPU (`experiments/bench_gpu.sh`) `--gpu` adds training images/s at
batch 32 and 128, forward images/s and model FLOP utilisation; with
`--profile`, the top device ops of each training step.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

FORWARD_GFLOP = 62.75  # SSD300 forward, 300x300 (SSD_REFERENCE.md)
TRAIN_GFLOP = 3 * FORWARD_GFLOP  # forward + backward ~ 3x forward
NUM_CLASSES = 21


def timeit(fn: Callable[[], object], repeats: int, warmup: int = 1):
  """(min, median) seconds of `fn()` after `warmup` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times), statistics.median(times)


def _random_gt(rng, batch, num_boxes=10, max_boxes=None):
  max_boxes = max_boxes or num_boxes
  xy = rng.uniform(0.0, 0.7, (batch, max_boxes, 2))
  wh = rng.uniform(0.05, 0.3, (batch, max_boxes, 2))
  boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  labels = rng.integers(1, NUM_CLASSES, (batch, max_boxes)).astype(np.int32)
  labels[:, num_boxes:] = 0
  return boxes, labels


def _images(rng, batch, size=300):
  return rng.normal(0, 50, (batch, size, size, 3)).astype(np.float32)


def _score_maps(rng, num_priors, realistic):
  """Softmax scores [P, C]: realistic = background-dominated with a few
  confident priors; otherwise an untrained model's near-uniform scores."""
  if realistic:
    logits = rng.normal(0, 1, (num_priors, NUM_CLASSES))
    logits[:, 0] += rng.normal(4.5, 1.5, num_priors)
    hot = rng.choice(num_priors, 200, replace=False)
    logits[hot, rng.integers(1, NUM_CLASSES, 200)] += 8
  else:
    logits = rng.normal(0, 0.1, (num_priors, NUM_CLASSES))
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)


# --- ssd_jax ----------------------------------------------------------------


def jax_forward(batch, dtype, repeats):
  from ssd_jax import models

  model = models.SSD300(num_classes=NUM_CLASSES, dtype=dtype)
  images = jnp.asarray(_images(np.random.default_rng(0), batch))
  params = jax.jit(model.init)(jax.random.key(0), images[:1])["params"]
  fwd = jax.jit(lambda p, x: model.apply({"params": p}, x))
  return timeit(lambda: jax.block_until_ready(fwd(params, images)), repeats)


def _jax_train_setup(
  batch, dtype, max_boxes=10, cpu_fast_ops=None, parallel="pmap"
):
  """(step, placed state, placed batch) on all local devices.

  `step(state, batch)` is the training loop's step for `parallel`
  (`ssd_jax.step.Parallel`: "pmap" runs `p_train_step` on a replicated
  state and a [D, B/D, ...] batch; "shard_map" runs `s_train_step` on
  global arrays over the device mesh) with the model's default boxes and
  the training defaults' `StepSettings` bound. `cpu_fast_ops` None takes
  the training default (on for the CPU backend).
  """
  from ssd_jax import config as config_lib
  from ssd_jax import models, optim
  from ssd_jax import step as step_lib

  if cpu_fast_ops is None:
    cpu_fast_ops = jax.default_backend() == "cpu"
  model = models.SSD300(
    num_classes=NUM_CLASSES, dtype=dtype, cpu_fast_ops=cpu_fast_ops
  )
  config = config_lib.base_config()
  settings = step_lib.step_settings(model, config)
  size = model.image_size
  dummy = jnp.zeros([1, size, size, 3], jnp.float32)
  params = jax.jit(model.init)(jax.random.key(0), dummy)["params"]
  state = step_lib.create_train_state(params, optim.create_optimizer(config)[0])
  par = step_lib.Parallel.create(parallel)
  priors = par.put_broadcast(jnp.asarray(model.priors(), jnp.float32))
  schedule = par.put_broadcast(jnp.asarray(optim.config_schedule_steps(config)))
  d = jax.local_device_count()
  rng = np.random.default_rng(0)
  boxes, labels = _random_gt(rng, batch, max_boxes=max_boxes)
  host = {"image": _images(rng, batch), "boxes": boxes, "labels": labels}
  split = jax.tree.map(lambda x: x.reshape(d, -1, *x.shape[1:]), host)

  def step(p_state, p_batch):
    return par.step(p_state, p_batch, priors, schedule, settings)

  return step, par.put(state), par.put_batch(split)


def jax_train(batch, dtype, repeats, cpu_fast_ops=None, parallel="pmap"):
  step, state, sharded = _jax_train_setup(
    batch, dtype, cpu_fast_ops=cpu_fast_ops, parallel=parallel
  )
  holder = [state]

  def run():
    holder[0], metrics = step(holder[0], sharded)
    jax.block_until_ready(metrics)

  return timeit(run, repeats)


def jax_match(repeats):
  from ssd_jax import default_boxes, matching

  priors = jnp.asarray(
    default_boxes.default_boxes(*default_boxes.SSD300_PRIORS)
  )
  boxes, labels = _random_gt(np.random.default_rng(0), 32)
  fn = jax.jit(lambda b, lab: matching.match_batch(b, lab, priors))
  return timeit(lambda: jax.block_until_ready(fn(boxes, labels)), repeats)


SGEMM_N = 2048


def jax_sgemm(repeats):
  rng = np.random.default_rng(3)
  a, b = (
    jnp.asarray(rng.normal(size=(SGEMM_N, SGEMM_N)), jnp.float32)
    for _ in range(2)
  )
  fn = jax.jit(jnp.dot)
  return timeit(lambda: jax.block_until_ready(fn(a, b)), repeats)


def _untrained_outputs():
  """loc [P,4] and softmax scores [P,C] of a randomly initialised SSD300."""
  from ssd_jax import models

  model = models.SSD300(num_classes=NUM_CLASSES)
  x = jnp.asarray(_images(np.random.default_rng(1), 1))
  params = model.init(jax.random.key(1), x)["params"]
  loc, logits = model.apply({"params": params}, x)
  return np.asarray(loc[0]), np.asarray(jax.nn.softmax(logits[0], -1))


def postprocess_inputs():
  """{"realistic": (loc, scores), "untrained": (loc, scores)} numpy."""
  from ssd_jax import default_boxes

  priors = default_boxes.default_boxes(*default_boxes.SSD300_PRIORS)
  rng = np.random.default_rng(2)
  loc = rng.normal(0, 0.5, (len(priors), 4)).astype(np.float32)
  return priors, {
    "realistic": (loc, _score_maps(rng, len(priors), True)),
    "untrained": _untrained_outputs(),
  }


def jax_postprocess(priors, loc, scores, repeats):
  from ssd_jax import postprocess

  return timeit(
    lambda: postprocess.decode_detections(loc, scores, priors), repeats
  )


def jax_input(repeats, num_batches=10, batch=32):
  import ml_collections

  from ssd_jax.data import pipeline

  cfg = ml_collections.ConfigDict(
    {
      "source": "synthetic",
      "max_boxes": 20,
      "class_names": None,
      "train_split": "train",
      "eval_split": "test",
    }
  )
  it = pipeline.create_train_iterator(
    cfg, image_size=300, global_batch_size=batch, seed=0, num_devices=1
  )

  def run():
    for _ in range(num_batches):
      next(it)

  lo, med = timeit(run, repeats)
  return lo / (num_batches * batch), med / (num_batches * batch)


# --- torchvision ------------------------------------------------------------


def torchvision_available() -> bool:
  try:
    import torch  # noqa: F401
    import torchvision  # noqa: F401
  except ImportError:
    return False
  return True


def _tv_model():
  import torch
  from torchvision.models.detection import ssd300_vgg16

  torch.manual_seed(0)
  return ssd300_vgg16(
    weights=None, weights_backbone=None, num_classes=NUM_CLASSES
  )


def _tv_sync(device):
  import torch

  if device != "cpu":
    torch.cuda.synchronize()


def tv_forward(batch, repeats, device="cpu"):
  import torch

  model = _tv_model().eval().to(device)
  x = torch.from_numpy(_images(np.random.default_rng(0), batch)).permute(
    0, 3, 1, 2
  )
  x = x.to(device)

  def run():
    with torch.no_grad():
      features = model.backbone(x)  # an OrderedDict of maps
      model.head(list(features.values()))
    _tv_sync(device)

  return timeit(run, repeats)


def torch_sgemm(repeats):
  import torch

  rng = np.random.default_rng(3)
  a, b = (
    torch.from_numpy(rng.normal(size=(SGEMM_N, SGEMM_N)).astype(np.float32))
    for _ in range(2)
  )
  return timeit(lambda: torch.matmul(a, b), repeats)


def throughput(rows) -> list[tuple[str, float, float | None]]:
  """(name, ssd_jax GFLOP/s, torch GFLOP/s | None) from the medians.

  For `sgemm_2048` and the float32 forward and training rows; the
  forward and training rows also as a share of each library's sgemm.
  """
  medians = {name: (j[1], t and t[1]) for name, j, t in rows}
  sgemm_gflop = 2 * SGEMM_N**3 / 1e9
  peak = medians.get("sgemm_2048")  # (jax s, torch s | None)
  out = []
  if peak:
    rate = (sgemm_gflop / peak[0], peak[1] and sgemm_gflop / peak[1])
    out.append(("sgemm_2048", *rate))
  for name, (j, t) in medians.items():
    model_row = name.startswith(("forward", "train"))
    if not (model_row and name.endswith("_float32")):
      continue
    batch = int(name.split("_")[1][1:])
    flop = batch * (TRAIN_GFLOP if name.startswith("train") else FORWARD_GFLOP)
    out.append((name, flop / j, t and flop / t))
    if peak:
      share_t = t and rate[1] and flop / t / rate[1]
      out.append((name + "_share_of_sgemm", flop / j / rate[0], share_t))
  return out


def tv_train(batch, repeats, device="cpu"):
  import torch

  model = _tv_model().train().to(device)
  opt = torch.optim.SGD(
    model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4
  )
  rng = np.random.default_rng(0)
  x = torch.from_numpy(_images(rng, batch) / 255.0 + 0.5).permute(0, 3, 1, 2)
  boxes, labels = _random_gt(rng, batch)
  targets = [
    {
      "boxes": torch.from_numpy(b * 300.0).to(device),
      "labels": torch.from_numpy(lab.astype(np.int64)).to(device),
    }
    for b, lab in zip(boxes, labels, strict=True)
  ]
  images = list(x.to(device))

  def run():
    opt.zero_grad()
    losses = model(images, targets)
    sum(losses.values()).backward()
    opt.step()
    _tv_sync(device)

  return timeit(run, repeats)


def tv_match(repeats):
  import torch
  from torchvision.models.detection import _utils as det_utils
  from torchvision.ops import boxes as box_ops

  from ssd_jax import boxes as box_lib
  from ssd_jax import default_boxes

  priors = default_boxes.default_boxes(*default_boxes.SSD300_PRIORS)
  anchors = torch.from_numpy(np.array(box_lib.center_to_corners(priors)))
  boxes, _ = _random_gt(np.random.default_rng(0), 32)
  gts = [torch.from_numpy(b) for b in boxes]
  matcher = det_utils.SSDMatcher(0.5)

  def run():
    for gt in gts:
      matcher(box_ops.box_iou(gt, anchors))

  return timeit(run, repeats)


def tv_postprocess(priors, loc, scores, repeats):
  import torch

  from ssd_jax import boxes as box_lib

  model = _tv_model().eval()
  # torchvision decodes with weights (10, 10, 5, 5) in pixels: same maths
  # as variances (0.1, 0.2) on priors scaled to 300 pixels.
  anchors = torch.from_numpy(
    np.array(box_lib.center_to_corners(priors)) * 300.0
  )
  logits = torch.from_numpy(np.log(np.maximum(scores, 1e-30)))
  head = {
    "bbox_regression": torch.from_numpy(loc)[None],
    "cls_logits": logits[None],
  }

  def run():
    with torch.no_grad():
      model.postprocess_detections(head, [anchors], [(300, 300)])

  return timeit(run, repeats)


# --- GPU extras ---------------------------------------------------------------


def gpu_figures(repeats, batches=(32, 128), profile=False):
  """Training and forward images/s and model FLOP utilisation on one GPU.

  With `profile`, also prints the top device ops of each training step
  (`gpu_forward_probe.top_ops`, a jax.profiler trace of two steps).
  """
  out = {}
  big = max(batches)
  for dtype_name, dtype in (
    ("float32", jnp.float32),
    ("bfloat16", jnp.bfloat16),
  ):
    for batch, parallel in [
      (b, m) for b in batches for m in ("pmap", "shard_map")
    ]:
      if parallel == "shard_map" and dtype_name != "float32":
        continue  # One row per mode is enough to compare them.
      step, state, sharded = _jax_train_setup(
        batch, dtype, max_boxes=20, parallel=parallel
      )
      holder = [state]
      sharded = jax.device_put(sharded)

      def run(step=step, sharded=sharded, holder=holder):
        holder[0], metrics = step(holder[0], sharded)
        jax.block_until_ready(metrics)

      lo, med = timeit(run, repeats, warmup=2)
      suffix = "_shard_map" if parallel == "shard_map" else ""
      out[f"gpu_train_b{batch}_{dtype_name}{suffix}"] = (lo, med, batch)
      print(
        f"train b{batch} {dtype_name} {parallel}: {batch / med:.1f} img/s",
        file=sys.stderr,
        flush=True,
      )
      if profile and parallel == "pmap":
        from gpu_forward_probe import top_ops  # noqa: PLC0415 (sibling)

        for kind, ops in top_ops(lambda run=run: run()).items():
          print(f"  {kind}:", file=sys.stderr)
          for op, ms, count in ops:
            print(
              f"    {ms / 2:9.3f} ms/step x{count // 2:<4d} {op[:110]}",
              file=sys.stderr,
              flush=True,
            )
    lo, med = jax_forward(big, dtype, repeats)
    out[f"gpu_forward_b{big}_{dtype_name}"] = (lo, med, big)
  if torchvision_available():
    import torch

    if torch.cuda.is_available():
      for batch in batches:
        lo, med = tv_train(batch, repeats, device="cuda")
        out[f"torchvision_gpu_train_b{batch}_float32"] = (lo, med, batch)
      lo, med = tv_forward(big, repeats, device="cuda")
      out[f"torchvision_gpu_forward_b{big}_float32"] = (lo, med, big)
  return out


# --- driver -------------------------------------------------------------------


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="", help="comma list of groups")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json", default="", help="also write results here")
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument("--gpu", action="store_true", help="GPU figures only")
  parser.add_argument("--gpu-batches", default="32,128")
  parser.add_argument(
    "--profile", action="store_true", help="--gpu: top ops per train step"
  )
  parser.add_argument(
    "--xla-defaults",
    action="store_true",
    help="do not apply ssd_jax.runtime's XLA CPU flags (XLA's defaults)",
  )
  args = parser.parse_args(argv)
  from ssd_jax import runtime

  xla_applied = False if args.xla_defaults else runtime.apply_xla_cpu_flags()
  groups = (
    set(args.only.split(","))
    if args.only
    else {"sgemm", "forward", "train", "match", "postprocess", "input"}
  )
  use_tv = torchvision_available() and not args.no_torch
  if use_tv:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
  r = args.repeats
  rows = []  # (name, jax (min, med), torchvision (min, med) | None, unit)

  def add(name, jax_fn, tv_fn=None, per=1):
    print(f"measuring {name} ...", file=sys.stderr, flush=True)
    j = jax_fn()
    t = tv_fn() if (tv_fn and use_tv) else None
    rows.append((name, [v / per for v in j], t and [v / per for v in t]))

  if args.gpu:
    batches = tuple(int(b) for b in args.gpu_batches.split(","))
    figures = gpu_figures(r, batches, profile=args.profile)
    for name, (lo, med, batch) in figures.items():
      rows.append((name, [lo, med], None))
      flop = TRAIN_GFLOP if "train" in name else FORWARD_GFLOP
      rows.append((name + "_img_per_s", [batch / med, batch / lo], None))
      rows.append((name + "_TFLOP_per_s", [flop * batch / med / 1e3] * 2, None))
    groups = set()
  if "sgemm" in groups:
    add("sgemm_2048", lambda: jax_sgemm(r * 5), lambda: torch_sgemm(r * 5))
  if "forward" in groups:
    for batch in (1, 8):
      for dn, dt in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        add(
          f"forward_b{batch}_{dn}",
          lambda b=batch, d=dt: jax_forward(b, d, r),
          (lambda b=batch: tv_forward(b, r)) if dn == "float32" else None,
        )
  if "train" in groups:
    for dn, dt in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
      add(
        f"train_b8_{dn}",
        lambda d=dt: jax_train(8, d, r),
        (lambda: tv_train(8, r)) if dn == "float32" else None,
      )
    add(  # The same step under jit(shard_map): the same speed expected.
      "train_b8_float32_shard_map",
      lambda: jax_train(8, jnp.float32, r, parallel="shard_map"),
    )
    if jax.default_backend() == "cpu":  # what cpu_ops.max_pool buys
      add(
        "train_b8_float32_xla_pool_grads",
        lambda: jax_train(8, jnp.float32, r, cpu_fast_ops=False),
      )
  if "match" in groups:
    add("match_b32", lambda: jax_match(r * 5), lambda: tv_match(r * 5))
  if "postprocess" in groups:
    priors, inputs = postprocess_inputs()
    for kind, (loc, scores) in inputs.items():
      add(
        f"postprocess_{kind}",
        lambda lo=loc, s=scores: jax_postprocess(priors, lo, s, r * 5),
        lambda lo=loc, s=scores: tv_postprocess(priors, lo, s, r * 5),
      )
  if "input" in groups:
    add("input_synthetic_s_per_image", lambda: jax_input(r))

  device = jax.devices()[0]
  header = (
    f"ssd_jax benchmark: jax {jax.__version__} on {device.platform} "
    f"({device.device_kind}), {platform.processor() or platform.machine()},"
    f" {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    f"{'' if xla_applied else ' (ssd_jax.runtime XLA CPU flags not applied)'}"
  )
  print(header)
  print(
    f"{'figure':40s} {'min':>10s} {'median':>10s} {'tv median':>10s} "
    f"{'ratio':>7s}"
  )
  for name, j, t in rows:
    ratio = f"{j[1] / t[1]:7.2f}" if t else ""
    tv = f"{t[1]:10.4g}" if t else ""
    print(f"{name:40s} {j[0]:10.4g} {j[1]:10.4g} {tv:>10s} {ratio:>7s}")
  rates = throughput(rows)
  if rates:
    print(
      f"\n{'throughput (medians), GFLOP/s':40s} {'ssd_jax':>10s} {'torch':>10s}"
    )
    for name, j, t in rates:
      if name.endswith("_share_of_sgemm"):
        tv = f"{t:10.0%}" if t else ""
        print(f"{name:40s} {j:10.0%} {tv:>10s}")
      else:
        tv = f"{t:10.0f}" if t else ""
        print(f"{name:40s} {j:10.0f} {tv:>10s}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        {
          "header": header,
          "rows": [
            {
              "name": n,
              "min": j[0],
              "median": j[1],
              "torchvision_median": t and t[1],
              "ratio": t and j[1] / t[1],
            }
            for n, j, t in rows
          ],
          "throughput_GFLOP_per_s": [
            {"name": n, "ssd_jax": j, "torch": t} for n, j, t in rates
          ],
        },
        f,
        indent=1,
      )


if __name__ == "__main__":
  main()
