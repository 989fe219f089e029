"""Why is SSD300's float32 forward slow on a GPU? One variable per variant.

On an H100 (2026-11-27, jax 0.11.2, `experiments/results/gpu_h100_*.txt`)
the float32 forward at batch 128 ran at 219 img/s, 4x slower than the
float32 *training* step (forward + backward) and 35x slower than the
bfloat16 forward. Each variant below changes one thing against `jit`; for
each it prints images/s and TFLOP/s, dumps the optimized HLO to
`OUT/<variant>.hlo.txt` and summarises its library calls: how many
convolutions went to cuDNN (custom-call targets) and which math type the
autotuner picked (for float32, TENSOR_OP_MATH means TF32 tensor cores,
DEFAULT_MATH plain float32). The summary is also `OUT/probe.json`.

  python experiments/gpu_forward_probe.py --out DIR           # on a GPU
  python experiments/gpu_forward_probe.py --smoke --out DIR   # any backend

Variants:
  jit          jit(model.apply), default precision: the slow figure
  jit_tf32     the same under jax.default_matmul_precision("tensorfloat32")
  jit_highest  the same under jax.default_matmul_precision("highest")
  pmap         pmap over one device, as the training step runs
  jit_grad     jit of the gradient of the outputs' sum w.r.t. the parameters
               (forward + backward, training without the update), counted
               as 3 forwards of FLOPs
  jit_bf16     bfloat16 compute (the fast reference)

`--smoke` runs a tiny SSD (64 px, width 1/8) at batch 2: it checks that the
script works, it measures nothing.
"""

import argparse
import collections
import contextlib
import glob
import json
import os
import re
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

FORWARD_GFLOP = 62.75  # SSD300 forward, 300x300 (SSD_REFERENCE.md)
VARIANTS = ("jit", "jit_tf32", "jit_highest", "pmap", "jit_grad", "jit_bf16")


def library_calls(hlo_text: str) -> dict:
  """Counts of custom-call targets and of cuDNN math types in HLO text.

  Args:
    hlo_text: an optimized HLO module as text (`compiled.as_text()`).

  Returns:
    {"custom_calls": {target: count}, "math_types": {type: count}}; both
    empty when the backend calls no library (e.g. XLA CPU).
  """
  targets = re.findall(r'custom_call_target="([^"]+)"', hlo_text)
  math = re.findall(r'\\?"math_type\\?":\\?"(\w+)\\?"', hlo_text)
  return {
    "custom_calls": dict(collections.Counter(targets)),
    "math_types": dict(collections.Counter(math)),
  }


def top_ops(run, n: int = 10) -> dict:
  """Device time by op name over two traced calls of `run` (jax.profiler).

  Args:
    run: a callable of no arguments whose result can be blocked on.
    n: how many of the most expensive names to keep per kind.

  Returns:
    {kind: [(name, total ms over the two calls, count)]}, kinds being the
    device planes' line names with stream lines merged as "kernels" (GPU:
    "XLA Ops" are HLO ops, "kernels" the CUDA kernels); on a backend with no
    device plane, the host's XLA thread lines.
  """
  from jax.profiler import ProfileData  # noqa: PLC0415 (jax >= 0.4.30)

  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      for _ in range(2):
        jax.block_until_ready(run())
    path = sorted(glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True))[-1]
    data = ProfileData.from_file(path)
  planes = [p for p in data.planes if p.name.startswith("/device:")]
  if not planes:
    planes = [p for p in data.planes if p.name == "/host:CPU"]
  totals = collections.defaultdict(collections.Counter)
  counts = collections.defaultdict(collections.Counter)
  for plane in planes:
    for line in plane.lines:
      if line.name == "python":
        continue
      kind = "kernels" if line.name.startswith("Stream") else line.name
      if plane.name == "/host:CPU":
        kind = "host"
      for event in line.events:
        totals[kind][event.name] += event.duration_ns / 1e6
        counts[kind][event.name] += 1
  return {
    kind: [
      (name, round(ms, 3), counts[kind][name])
      for name, ms in total.most_common(n)
    ]
    for kind, total in totals.items()
    if kind not in ("XLA Modules", "Steps")
  }


def _variant(name, model, params, images):
  """(compiled callable of no arguments, FLOPs in forwards, HLO text)."""
  precision = {"jit_tf32": "tensorfloat32", "jit_highest": "highest"}
  context = (
    jax.default_matmul_precision(precision[name])
    if name in precision
    else contextlib.nullcontext()
  )
  if name == "pmap":  # A leading device axis of size 1.
    rep = jax.tree.map(lambda a: a[None], params)
    x = images[None]
    fn = jax.pmap(lambda p, x: model.apply({"params": p}, x))
    with context:
      compiled = fn.lower(rep, x).compile()
    return (lambda: compiled(rep, x)), 1, compiled.as_text()
  if name == "jit_grad":

    def loss(p, x):
      loc, logits = model.apply({"params": p}, x)
      return loc.astype(jnp.float32).sum() + logits.astype(jnp.float32).sum()

    fn, multiplier = jax.jit(jax.grad(loss)), 3
  else:
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x))
    multiplier = 1
  with context:
    compiled = fn.lower(params, images).compile()
  return (lambda: compiled(params, images)), multiplier, compiled.as_text()


def probe(
  batch: int,
  repeats: int,
  out: str,
  smoke: bool = False,
  profile: bool = False,
  variants: tuple[str, ...] = VARIANTS,
  image_size: int = 300,
) -> list:
  """Runs every variant; returns and prints one dict per variant."""
  from ssd_jax import models  # noqa: PLC0415

  os.makedirs(out, exist_ok=True)
  if smoke:
    size, width, gflop = 64, 0.125, None
  else:  # FLOPs counted for SSD300 only.
    width = 1.0
    gflop = FORWARD_GFLOP if image_size == 300 else None
    size = image_size
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(0, 50, (batch, size, size, 3)), jnp.float32)
  model = models.SSD(num_classes=21, image_size=size, width=width)
  # float32 parameters for every variant (bfloat16 is compute only).
  params = jax.jit(model.init)(jax.random.key(0), images[:1])["params"]
  rows = []
  for name in variants:
    if name == "jit_bf16":
      model = model.clone(dtype=jnp.bfloat16)
    start = time.perf_counter()
    run, multiplier, hlo = _variant(name, model, params, images)
    compile_s = time.perf_counter() - start
    with open(os.path.join(out, f"{name}.hlo.txt"), "w") as f:
      f.write(hlo)
    jax.block_until_ready(run())  # warm-up
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(run())
      times.append(time.perf_counter() - start)
    median = statistics.median(times)
    row = {
      "variant": name,
      "batch": batch,
      "median_s": median,
      "min_s": min(times),
      "compile_s": compile_s,
      "img_per_s": batch / median,
      "tflop_per_s": gflop and multiplier * gflop * batch / median / 1e3,
    } | library_calls(hlo)
    if profile:
      row["top_ops"] = top_ops(run)
    rows.append(row)
    tflops = f"{row['tflop_per_s']:7.1f} TFLOP/s" if gflop else ""
    print(
      f"{name:12s} {row['img_per_s']:9.1f} img/s {tflops}  "
      f"compile {compile_s:5.1f} s  calls {row['custom_calls']}  "
      f"math {row['math_types']}",
      flush=True,
    )
    for kind, ops in row.get("top_ops", {}).items():
      print(f"  {kind}:")
      for op, ms, count in ops:
        print(f"    {ms / 2:9.3f} ms/call  x{count // 2:<4d} {op[:110]}")
  with open(os.path.join(out, "probe.json"), "w") as f:
    json.dump({"device": str(jax.devices()[0]), "rows": rows}, f, indent=1)
  return rows


def main(argv=None) -> list:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="/tmp/gpu_forward_probe")
  parser.add_argument("--smoke", action="store_true")
  parser.add_argument(
    "--profile", action="store_true", help="top device ops per variant"
  )
  parser.add_argument(
    "--variants", default=",".join(VARIANTS), help="comma list to run"
  )
  parser.add_argument(
    "--image-size", type=int, default=300, help="300: SSD300, 512: SSD512"
  )
  args = parser.parse_args(argv)
  batch = args.batch or (2 if args.smoke else 128)
  print(f"jax {jax.__version__} on {jax.devices()[0]}; batch {batch}")
  return probe(
    batch,
    args.repeats,
    args.out,
    args.smoke,
    args.profile,
    tuple(args.variants.split(",")),
    args.image_size,
  )


if __name__ == "__main__":
  main()
