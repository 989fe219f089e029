"""Alternatives measured against what ssd_jax does, and not adopted.

The README's CPU speed section quotes these; this script reproduces them.
Each group checks that the alternative computes the same result before it
times the two, interleaved run by run; min and median ms.

  .venv/bin/python experiments/bench_alternatives.py            # all groups
  .venv/bin/python experiments/bench_alternatives.py --only fc6 --batch 1

Groups:
  fc6         the dilated 3x3 fc6 (512 -> 1024, dilation 6, 19x19) as one
              XLA convolution (what the model does) against a sum of nine
              per-tap matrix products over each tap's valid region, which
              skips the 38% of multiply-adds that only meet padding (as
              oneDNN does); forward and vjp.
  match       `matching.match_batch` (32 images x 10 boxes) against IoU
              reductions in other layouts: the IoU as [B, M, P] (ours),
              transposed to [P, B, M] for the reduction along the boxes,
              and that reduction chunked into 16 lanes; argmax results
              must agree exactly.
  transposes  the layout copies XLA CPU makes for the kernel gradients of
              SSD300's trunk in a batch-8 training step (activations
              NHWC -> HWNC and -> CHWN, counts read off the compiled
              step's HLO), timed alone.
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")
# (side, channels, HWNC copies, CHWN copies) of the activation transposes in
# the compiled batch-8 SSD300 training step (jax 0.10.2, XLA CPU with
# ssd_jax.runtime.XLA_CPU_FLAGS); the kernel transposes (< 0.2 GB) are left out.
STEP_TRANSPOSES = (
  (300, 64, 2, 1),
  (300, 3, 0, 1),
  (150, 128, 2, 1),
  (150, 64, 0, 1),
  (75, 256, 3, 2),
  (75, 128, 0, 1),
  (38, 512, 3, 3),
  (38, 256, 0, 1),
  (19, 512, 4, 4),
  (19, 1024, 2, 2),
)


def interleaved(fns: dict, args: tuple, repeats: int) -> dict:
  """name -> (min ms, median ms), the functions alternating run by run."""
  for fn in fns.values():
    jax.block_until_ready(fn(*args))
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(1e3 * (time.perf_counter() - start))
  return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def conv_dilated(x, w, dilation: int):
  """3x3 'same' convolution with kernel dilation, one XLA convolution."""
  pad = ((dilation, dilation), (dilation, dilation))
  return lax.conv_general_dilated(
    x, w, (1, 1), pad, rhs_dilation=(dilation, dilation), dimension_numbers=_DN
  )


def conv_dilated_taps(x, w, dilation: int):
  """The same as a sum over taps of matrix products on the valid regions.

  Args:
    x: [N, H, W, Cin].
    w: [KH, KW, Cin, Cout].
    dilation: kernel dilation; padding is `dilation * (K // 2)`.

  Returns:
    [N, H, W, Cout], equal to `conv_dilated(x, w, dilation)`.
  """
  _, h, wd, _ = x.shape
  kh, kw = w.shape[:2]
  out = None
  for a in range(kh):
    for b in range(kw):
      dy, dx = (a - kh // 2) * dilation, (b - kw // 2) * dilation
      r0, r1 = max(0, -dy), min(h, h - dy)
      c0, c1 = max(0, -dx), min(wd, wd - dx)
      if r0 >= r1 or c0 >= c1:
        continue  # The tap meets nothing but padding.
      part = jnp.einsum(
        "nhwc,co->nhwo", x[:, r0 + dy : r1 + dy, c0 + dx : c1 + dx], w[a, b]
      )
      part = jnp.pad(part, ((0, 0), (r0, h - r1), (c0, wd - c1), (0, 0)))
      out = part if out is None else out + part
  return out


def bench_fc6(batch: int, repeats: int, side: int = 19) -> dict:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, side, side, 512)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 512, 1024)) * 0.05, jnp.float32)
  g = jnp.asarray(rng.normal(size=(batch, side, side, 1024)), jnp.float32)
  out = {}
  for name, conv in (("xla", conv_dilated), ("taps", conv_dilated_taps)):
    out[name + "_fwd"] = jax.jit(lambda x, w, g, c=conv: c(x, w, 6))
    out[name + "_vjp"] = jax.jit(
      lambda x, w, g, c=conv: jax.vjp(lambda x, w: c(x, w, 6), x, w)[1](g)
    )
  ref, alt = out["xla_fwd"](x, w, g), out["taps_fwd"](x, w, g)
  err = float(jnp.abs(ref - alt).max() / jnp.abs(ref).max())
  if err > 1e-5:
    raise AssertionError(f"fc6 taps differ from the convolution: {err:.1e}")
  return interleaved(out, (x, w, g), repeats)


def _match_inputs(batch=32, boxes=10):
  from ssd_jax import boxes as box_lib  # noqa: PLC0415
  from ssd_jax import default_boxes  # noqa: PLC0415

  priors = jnp.asarray(
    default_boxes.default_boxes(*default_boxes.SSD300_PRIORS)
  )
  rng = np.random.default_rng(0)
  xy = rng.uniform(0.0, 0.7, (batch, boxes, 2))
  wh = rng.uniform(0.05, 0.3, (batch, boxes, 2))
  gt = jnp.asarray(np.concatenate([xy, xy + wh], -1), jnp.float32)
  labels = jnp.asarray(rng.integers(1, 21, (batch, boxes)), jnp.int32)
  return priors, box_lib.center_to_corners(priors), gt, labels


def bench_match(repeats: int) -> dict:
  from ssd_jax import boxes as box_lib  # noqa: PLC0415
  from ssd_jax import matching  # noqa: PLC0415

  priors, corners, gt, labels = _match_inputs()
  first_argmax = matching._first_argmax  # noqa: SLF001

  def iou(gt, labels):  # [B, M, P], padding -1 as in matching.match
    return jax.vmap(
      lambda b, lab: jnp.where(
        (lab > 0)[:, None], box_lib.pairwise_iou(b, corners), -1.0
      )
    )(gt, labels)

  def ours(gt, labels):
    x = iou(gt, labels)
    return first_argmax(x, 1)[0], first_argmax(x, 2)[0]

  def transposed(gt, labels):
    x = jnp.transpose(iou(gt, labels), (2, 0, 1))  # [P, B, M]
    return first_argmax(x, 2)[0].T, first_argmax(x, 0)[0]

  def chunked(gt, labels, lanes=16):
    x = iou(gt, labels)
    b, m, p = x.shape
    padded = -(-p // lanes) * lanes
    y = jnp.pad(x, ((0, 0), (0, 0), (0, padded - p)), constant_values=-2.0)
    y = y.reshape(b, m, padded // lanes, lanes)
    best = jnp.max(jnp.max(y, 2), 2)
    idx = lax.broadcasted_iota(jnp.int32, y.shape, 2) * lanes
    idx = idx + lax.broadcasted_iota(jnp.int32, y.shape, 3)
    hit = jnp.where(y == best[..., None, None], idx, padded)
    return first_argmax(x, 1)[0], jnp.min(jnp.min(hit, 2), 2)

  fns = {
    "match_batch": jax.jit(lambda g, lab: matching.match_batch(g, lab, priors)),
    "argmaxes_ours": jax.jit(ours),
    "argmaxes_transposed": jax.jit(transposed),
    "argmaxes_chunked16": jax.jit(chunked),
  }
  ref = fns["argmaxes_ours"](gt, labels)
  for name in ("argmaxes_transposed", "argmaxes_chunked16"):
    got = fns[name](gt, labels)
    same = all(bool((a == b).all()) for a, b in zip(got, ref, strict=True))
    print(f"{name}: argmax results identical to ours: {same}")
  return interleaved(fns, (gt, labels), repeats)


def bench_transposes(repeats: int, batch: int = 8) -> dict:
  """Total ms and GB of the step's activation transposes, timed alone."""
  total_ms, total_gb = 0.0, 0.0
  for side, channels, n_hwnc, n_chwn in STEP_TRANSPOSES:
    x = jnp.ones((batch, side, side, channels), jnp.float32)
    for perm, count in (((1, 2, 0, 3), n_hwnc), ((3, 1, 2, 0), n_chwn)):
      if count:
        fn = jax.jit(lambda x, perm=perm: jnp.transpose(x, perm) + 0)
        best, _ = interleaved({"t": fn}, (x,), repeats)["t"]
        total_ms += count * best
        total_gb += count * x.size * 4 / 1e9
  return {"activation_transposes_total": (total_ms, total_ms), "GB": total_gb}


def main(argv=None) -> dict:
  from ssd_jax import runtime  # noqa: PLC0415

  applied = runtime.apply_xla_cpu_flags()
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="fc6,match,transposes")
  parser.add_argument("--batch", type=int, default=8, help="fc6 batch")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  print(
    f"jax {jax.__version__} on {jax.devices()[0].platform}, "
    f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
    f"XLA CPU flags {'applied' if applied else 'NOT applied'}"
  )
  groups = {
    "fc6": lambda: bench_fc6(args.batch, args.repeats),
    "match": lambda: bench_match(args.repeats * 5),
    "transposes": lambda: bench_transposes(args.repeats),
  }
  results = {}
  for group in args.only.split(","):
    results[group] = groups[group]()
    for name, value in results[group].items():
      if isinstance(value, tuple):
        print(f"{group:11s} {name:30s} {value[0]:9.2f} ms [{value[1]:9.2f}]")
      else:
        print(f"{group:11s} {name:30s} {value:9.2f}")
  return results


if __name__ == "__main__":
  main()
