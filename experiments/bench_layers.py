"""Layer-by-layer timing of SSD300 on XLA (CPU): where the time goes.

Times, at batch B and with SSD300's shapes:

- each distinct 3x3 convolution of the VGG16 trunk (conv1_1 .. conv5_1 and
  the dilated fc6; "xN" is how often the shape occurs in the network), with
  `jax.lax.conv_general_dilated`: the forward and the full vjp (input and
  kernel gradient), min and median in ms and GFLOP/s, and on a second line
  the input gradient alone ("dgrad") and the kernel gradient alone
  ("wgrad"). FLOPs are nominal (9 taps everywhere; oneDNN skips the taps
  of fc6's dilation-6 kernel that only meet padding, ~38% of them, which
  is much of torch's lead on fc6). Plain XLA only:
  `ssd_jax.models.cpu_ops` had a custom convolution gradient, removed since
  XLA's own is faster with `ssd_jax.runtime.XLA_CPU_FLAGS` (see cpu_ops'
  docstring);
- the 2x2 stride-2 max pools, `flax.linen.max_pool` (plain) vs
  `ssd_jax.models.cpu_ops.max_pool` (fast), interleaved run by run so that
  load from other processes hits both alike, with the fast/plain ratio of
  the minima (wall and process CPU time);
- when torch imports (optional, never needed by the tests), the same
  convolutions with `torch.nn.functional.conv2d` (NCHW, all cores) and the
  ssd_jax / torch ratio of the minima, to show which layers carry the gap
  to torchvision;
- with `--model`, the whole SSD300 training step (matching, multibox loss,
  gradient, SGD update; jit, one device) and the forward, with
  `SSD300(cpu_fast_ops=False / True)` (plain / fast: flax's or cpu_ops'
  max pool); parameters are identical.

`main()` first calls `ssd_jax.runtime.apply_xla_cpu_flags()` (XLA CPU's
YNNPACK fusion off, as the training entry points do) and prints whether it
took effect. It prints
the load average before and after.

  .venv/bin/python experiments/bench_layers.py --batch 8 --repeats 5
  .venv/bin/python experiments/bench_layers.py --batch 1 --json out.json
  .venv/bin/python experiments/bench_layers.py --layers conv2_1,pool1
  .venv/bin/python experiments/bench_layers.py --model --batch 8
"""

import argparse
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from ssd_jax import losses, matching
from ssd_jax.models import cpu_ops
from ssd_jax.models.ssd import SSD300

_DN = ("NHWC", "HWIO", "NHWC")

# (name, side, Cin, Cout, dilation, occurrences in SSD300) of the VGG16
# trunk's 3x3 stride-1 convolutions, padding = dilation (same size out);
# conv3_3, conv4_3 and conv5_2..3 repeat conv3_2, conv4_2 and conv5_1.
CONV_LAYERS = (
  ("conv1_1", 300, 3, 64, 1, 1),
  ("conv1_2", 300, 64, 64, 1, 1),
  ("conv2_1", 150, 64, 128, 1, 1),
  ("conv2_2", 150, 128, 128, 1, 1),
  ("conv3_1", 75, 128, 256, 1, 1),
  ("conv3_2", 75, 256, 256, 1, 2),
  ("conv4_1", 38, 256, 512, 1, 1),
  ("conv4_2", 38, 512, 512, 1, 2),
  ("conv5_1", 19, 512, 512, 1, 3),
  ("fc6", 19, 512, 1024, 6, 1),
)
# (name, side, C, ceil padding) of the 2x2 stride-2 pools.
POOL_LAYERS = (
  ("pool1", 300, 64, 0),
  ("pool2", 150, 128, 0),
  ("pool3", 75, 256, 1),
  ("pool4", 38, 512, 0),
)


def _conv_fns(dilation: int):
  def fwd(x, w):
    pad = ((dilation, dilation), (dilation, dilation))
    return lax.conv_general_dilated(
      x,
      w,
      (1, 1),
      pad,
      rhs_dilation=(dilation, dilation),
      dimension_numbers=_DN,
    )

  def grad(x, w, g):
    return jax.vjp(fwd, x, w)[1](g)

  def dgrad(x, w, g):
    return jax.vjp(lambda x: fwd(x, w), x)[1](g)

  def wgrad(x, w, g):
    return jax.vjp(lambda w: fwd(x, w), w)[1](g)

  return tuple(jax.jit(f) for f in (fwd, grad, dgrad, wgrad))


def _torch_conv(shape, dilation: int, repeats: int) -> dict | None:
  """Min ms of torch's conv2d forward, input + weight gradient ("grad"),
  input gradient ("dgrad") and weight gradient ("wgrad"), or None.

  Args:
    shape: (batch, side, side, Cin, Cout) of a 3x3 convolution.
    dilation: kernel dilation (padding = dilation).
    repeats: timed runs after one warm-up run.
  """
  try:
    import torch  # noqa: PLC0415
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count() or 1)
  batch, side, _, cin, cout = shape
  x = torch.randn(batch, cin, side, side, requires_grad=True)
  w = (torch.randn(cout, cin, 3, 3) * 0.05).requires_grad_()
  g = torch.randn(batch, cout, side, side)

  def fwd():
    with torch.no_grad():
      torch.nn.functional.conv2d(x, w, None, 1, dilation, dilation)

  # The backward alone, as jax.vjp's (XLA drops the unused forward): the
  # graph is built once, outside the timed calls.
  y = torch.nn.functional.conv2d(x, w, None, 1, dilation, dilation)

  def grad():
    torch.autograd.grad(y, (x, w), g, retain_graph=True)

  def dgrad():
    torch.nn.grad.conv2d_input(x.shape, w, g, 1, dilation, dilation)

  def wgrad():
    torch.nn.grad.conv2d_weight(x, w.shape, g, 1, dilation, dilation)

  out = {}
  fns = {"fwd": fwd, "grad": grad, "dgrad": dgrad, "wgrad": wgrad}
  for name, fn in fns.items():
    fn()  # warm-up
    out[name] = 1e3 * min(_time(fn, ())[0] for _ in range(repeats))
  return out


def _pool_fns(pool, pad):
  def fwd(x):
    return pool(x, (2, 2), strides=(2, 2), padding=((0, pad), (0, pad)))

  def grad(x, g):
    return jax.vjp(fwd, x)[1](g)

  return jax.jit(fwd), jax.jit(grad)


def _time(fn, args) -> tuple[float, float]:
  """(wall seconds, process CPU seconds) of one call."""
  start, cpu = time.perf_counter(), time.process_time()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start, time.process_time() - cpu


def interleaved(fns: dict, args_by_name: dict, repeats: int) -> dict:
  """Times each function `repeats` times, alternating between them.

  Args:
    fns: name -> jitted function.
    args_by_name: name -> argument tuple.
    repeats: timed runs per function (after one warm-up run each).

  Returns:
    name -> list of wall seconds; name + "_cpu" -> list of process CPU
    seconds (all threads; less sensitive to other processes' load).
  """
  for name, fn in fns.items():
    jax.block_until_ready(fn(*args_by_name[name]))  # compile + warm up
  times = {name: [] for name in fns} | {name + "_cpu": [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      wall, cpu = _time(fn, args_by_name[name])
      times[name].append(wall)
      times[name + "_cpu"].append(cpu)
  return times


def bench(batch: int, repeats: int, dtype, layers: set | None) -> list:
  """Runs the layer table; returns rows of dicts (convolutions, then pools).

  Args:
    batch: batch size.
    repeats: timed runs per function.
    dtype: input and kernel dtype.
    layers: names to run (e.g. {"conv2_1", "pool1"}); empty or None: all.
  """
  rows = []
  key = jax.random.key(0)
  for name, side, cin, cout, dilation, count in CONV_LAYERS:
    if layers and name not in layers:
      continue
    x = jax.random.normal(key, (batch, side, side, cin), dtype)
    w = (jax.random.normal(key, (3, 3, cin, cout)) * 0.05).astype(dtype)
    g = jax.random.normal(key, (batch, side, side, cout), dtype)
    fwd, grad, dgrad, wgrad = _conv_fns(dilation)
    fns = {"fwd": fwd, "grad": grad, "dgrad": dgrad, "wgrad": wgrad}
    args = {k: (x, w) if k == "fwd" else (x, w, g) for k in fns}
    shape = (batch, side, side, cin, cout)
    rows.append(_conv_row(name, shape, dilation, count, fns, args, repeats))
  for name, side, c, pad in POOL_LAYERS:
    if layers and name not in layers:
      continue
    x = jax.random.normal(key, (batch, side, side, c), dtype)
    pf, pg = _pool_fns(nn.max_pool, pad)
    ff, fg = _pool_fns(cpu_ops.max_pool, pad)
    g = jnp.ones(jax.eval_shape(pf, x).shape, dtype)
    fns = {"plain_fwd": pf, "fast_fwd": ff, "plain_grad": pg, "fast_grad": fg}
    args = {k: (x,) if k.endswith("fwd") else (x, g) for k in fns}
    rows.append(_row(name, (batch, side, side, c), fns, args, repeats))
  return rows


def _conv_row(name, shape, dilation, count, fns, args, repeats) -> dict:
  """Times one convolution's forward and vjp; prints and returns a row."""
  times = interleaved(fns, args, repeats)
  batch, side, _, cin, cout = shape
  gflop = 2 * batch * side * side * 9 * cin * cout / 1e9  # the forward
  row = {
    "layer": name,
    "shape": list(shape),
    "dilation": dilation,
    "count": count,
    "fwd_gflop": gflop,
  }
  for k, v in times.items():
    row[k + "_min_ms"] = 1e3 * min(v)
    row[k + "_median_ms"] = 1e3 * float(np.median(v))
  # The vjp computes the input and the kernel gradient: 2x the forward;
  # each of them alone costs what the forward does.
  for part, flop in (("fwd", 1), ("grad", 2), ("dgrad", 1), ("wgrad", 1)):
    row[part + "_gflops"] = flop * gflop / (row[part + "_min_ms"] / 1e3)
  torch_ms = _torch_conv(shape, dilation, repeats)
  vs_torch = dict.fromkeys(("fwd", "grad", "dgrad", "wgrad"), "")
  if torch_ms is not None:
    for part in vs_torch:
      row[f"torch_{part}_min_ms"] = torch_ms[part]
      row[f"{part}_ratio_to_torch"] = row[f"{part}_min_ms"] / torch_ms[part]
      vs_torch[part] = (
        f" torch {torch_ms[part]:.1f} (x{row[f'{part}_ratio_to_torch']:.2f})"
      )

  def part_text(part):
    return (
      f"{part} {row[part + '_min_ms']:8.1f} [{row[part + '_median_ms']:8.1f}]"
      f" ({row[part + '_gflops']:4.0f} GFLOP/s){vs_torch[part]}"
    )

  print(
    f"{name:8s} {str(shape):28s} x{count} {part_text('fwd')}  "
    f"{part_text('grad')}; cpu {row['grad_cpu_min_ms']:.0f}\n"
    f"{'':40s} {part_text('dgrad')}  {part_text('wgrad')}",
    flush=True,
  )
  return row


def _row(name, shape, fns, args, repeats) -> dict:
  times = interleaved(fns, args, repeats)
  row = {"layer": name, "shape": list(shape)}
  for k, v in times.items():
    row[k + "_min_ms"] = 1e3 * min(v)
    row[k + "_median_ms"] = 1e3 * float(np.median(v))
  for part in ("fwd", "grad"):
    row[part + "_ratio"] = (
      row[f"fast_{part}_min_ms"] / row[f"plain_{part}_min_ms"]
    )
    row[part + "_cpu_ratio"] = (
      row[f"fast_{part}_cpu_min_ms"] / row[f"plain_{part}_cpu_min_ms"]
    )
  print(
    f"{name:8s} {str(shape):28s} "
    f"fwd {row['plain_fwd_min_ms']:8.1f} / {row['fast_fwd_min_ms']:8.1f} "
    f"(x{row['fwd_ratio']:.2f})  grad {row['plain_grad_min_ms']:8.1f}"
    f" [{row['plain_grad_median_ms']:8.1f}] / {row['fast_grad_min_ms']:8.1f}"
    f" [{row['fast_grad_median_ms']:8.1f}] (x{row['grad_ratio']:.2f};"
    f" cpu {row['plain_grad_cpu_min_ms']:.0f}/{row['fast_grad_cpu_min_ms']:.0f}"
    f" x{row['grad_cpu_ratio']:.2f})",
    flush=True,
  )
  return row


def bench_model(batch: int, repeats: int, dtype) -> dict:
  """Whole SSD300 train step and forward, cpu_fast_ops False vs True.

  Interleaved run by run; "plain" is `cpu_fast_ops=False` (flax's max pool),
  "fast" `cpu_fast_ops=True` (`cpu_ops.max_pool`).
  """
  models = {
    variant: SSD300(num_classes=21, dtype=dtype, cpu_fast_ops=fast)
    for variant, fast in (("plain", False), ("fast", True))
  }
  model = models["plain"]
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(batch, 300, 300, 3)), jnp.float32)
  lo = rng.uniform(0, 0.5, size=(batch, 4, 2))
  boxes = np.concatenate([lo, lo + rng.uniform(0.1, 0.5, size=lo.shape)], -1)
  boxes = jnp.asarray(np.clip(boxes, 0, 1), jnp.float32)
  labels = jnp.asarray(rng.integers(1, 21, size=(batch, 4)), jnp.int32)
  priors = jnp.asarray(model.priors(), jnp.float32)
  params = jax.jit(model.init)(jax.random.key(0), images[:1])["params"]
  tx = optax.sgd(1e-3, momentum=0.9)
  opt_state = tx.init(params)

  def make_fns(model):
    def step(params, opt_state, images, boxes, labels):
      loc_t, cls_t = jax.vmap(lambda b, c: matching.match(b, c, priors))(
        boxes, labels
      )

      def loss_fn(p):
        loc, logits = model.apply({"params": p}, images)
        return losses.multibox_loss(loc, logits, loc_t, cls_t)[0]

      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss, grads

    def forward(params, images):
      return model.apply({"params": params}, images)

    return step, forward

  fns, results, custom_calls = {}, {}, {}
  for variant in ("plain", "fast"):
    step, forward = make_fns(models[variant])
    jaxpr = str(jax.make_jaxpr(step)(params, opt_state, images, boxes, labels))
    custom_calls[variant] = jaxpr.count("custom_vjp_call")
    fns[variant + "_step"] = (
      jax.jit(step).lower(params, opt_state, images, boxes, labels).compile()
    )
    fns[variant + "_fwd"] = jax.jit(forward).lower(params, images).compile()
    results[variant] = fns[variant + "_step"](
      params, opt_state, images, boxes, labels
    )
  # Same parameters, same data: the two gradients must agree.
  diffs = jax.tree.map(
    lambda a, b: float(jnp.abs(a - b).max() / (jnp.abs(b).max() + 1e-30)),
    results["fast"][3],
    results["plain"][3],
  )
  step_args = (params, opt_state, images, boxes, labels)
  args = {k: step_args if k.endswith("step") else (params, images) for k in fns}
  times = interleaved(fns, args, repeats)
  row = {"batch": batch, "dtype": jnp.dtype(dtype).name}
  for k, v in times.items():
    row[k + "_min_s"] = min(v)
    row[k + "_median_s"] = float(np.median(v))
    print(f"{k:12s} min {min(v):7.3f} s  median {np.median(v):7.3f} s")
  for part in ("step", "fwd", "step_cpu", "fwd_cpu"):
    row[part + "_ratio"] = (
      row[f"fast_{part}_min_s"] / row[f"plain_{part}_min_s"]
    )
  row["loss"] = [float(results[v][2]) for v in ("plain", "fast")]
  row["max_rel_grad_diff"] = max(jax.tree.leaves(diffs))
  row["custom_vjp_calls"] = custom_calls
  print(
    f"fast/plain minima: step x{row['step_ratio']:.2f} (cpu"
    f" x{row['step_cpu_ratio']:.2f}), fwd x{row['fwd_ratio']:.2f} (cpu"
    f" x{row['fwd_cpu_ratio']:.2f});"
    f" loss {row['loss']}; max over parameters of max|dg| / max|g|:"
    f" {row['max_rel_grad_diff']:.2e}; custom_vjp calls {custom_calls}"
  )
  return row


def main() -> None:
  from ssd_jax import runtime

  # Before any JAX computation: XLA reads XLA_FLAGS when its backends start.
  applied = runtime.apply_xla_cpu_flags()
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument(
    "--layers", default="", help="comma list, e.g. conv2_1,pool1"
  )
  parser.add_argument("--json", default="")
  parser.add_argument(
    "--model", action="store_true", help="whole SSD300 train step instead"
  )
  args = parser.parse_args()
  layers = set(filter(None, args.layers.split(",")))
  print(
    "ssd_jax.runtime.apply_xla_cpu_flags(): "
    f"{'in effect' if applied else 'NOT in effect'}"
    f" (XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})"
  )
  print(f"load average before: {os.getloadavg()}")
  if args.model:
    print("s: plain = cpu_fast_ops=False, fast = True (cpu_ops.max_pool)")
    rows = [bench_model(args.batch, args.repeats, jnp.dtype(args.dtype))]
  else:
    print(
      "convolutions (XLA): ms min [median]; grad = vjp (input + kernel),\n"
      "  dgrad = input gradient alone, wgrad = kernel gradient alone\n"
      "pools: ms plain / fast (flax / cpu_ops.max_pool; fast/plain of minima)"
    )
    rows = bench(args.batch, args.repeats, jnp.dtype(args.dtype), layers)
  print(f"load average after: {os.getloadavg()}")
  if args.json:
    with open(args.json, "w") as f:
      meta = {"batch": args.batch, "dtype": args.dtype}
      meta |= {"xla_cpu_applied": applied, "load": os.getloadavg()}
      meta |= {"xla_flags": os.environ.get("XLA_FLAGS", "")}
      json.dump(meta | {"rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
