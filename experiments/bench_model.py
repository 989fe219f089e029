"""Benchmark: SSD forward latency and a training step (not a test).

Times `model.apply` (backbone + extra layers + heads, jitted) at the given
batch sizes in float32 and bfloat16 compute, and one SGD training step
(forward, matching of random ground truth, multibox loss, backward, optax
update) at the training batch size, on whatever device JAX uses. Prints
ms per batch (min and median over repeats), ms per image and GFLOP/s. The
FLOP count is the paper architecture's 62.75 GFLOP per 300x300 forward for
SSD300 (31.4 GMAC, SSD_REFERENCE.md), XLA's cost-analysis count otherwise
(on GPU that count leaves out convolutions run as cuDNN custom calls, so it
is only meaningful on CPU); a training step is counted as 3 forwards.

  python experiments/bench_model.py                       # SSD300 on CPU
  python experiments/bench_model.py --batch-sizes 1,8,32 --train-batch 32
  python experiments/bench_model.py --image-size 64 --width 0.0625 \
    --repeats 1                                           # smoke run
"""

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssd_jax import losses, matching, models

SSD300_GFLOP = 62.75  # per 300x300 forward, backbone and heads


def cpu_name() -> str:
  """The CPU model from /proc/cpuinfo, or platform.processor()."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def time_fn(fn, args, repeats: int) -> tuple[float, list[float]]:
  """Compile time and per-call wall times (seconds) of a jitted fn."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return compile_s, times


def xla_forward_gflop(model, params, batch: int = 1) -> float:
  """GFLOP per image of one forward as XLA's cost analysis counts them."""
  x = jnp.zeros((batch, model.image_size, model.image_size, 3))
  compiled = jax.jit(model.apply).lower({"params": params}, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  return float(cost.get("flops", float("nan"))) / batch / 1e9


def report(name, batch, compile_s, times, gflop_per_image) -> None:
  best, median = min(times), statistics.median(times)
  print(
    f"{name:<24} batch {batch:>3}  compile {compile_s:6.1f} s  "
    f"min {best * 1e3:9.1f} ms  median {median * 1e3:9.1f} ms  "
    f"{best * 1e3 / batch:8.1f} ms/image  "
    f"{gflop_per_image * batch / best:7.1f} GFLOP/s",
    flush=True,
  )


def random_targets(batch: int, max_boxes: int, num_classes: int, seed: int):
  """Random ground truth: [B, M, 4] corners and [B, M] labels, half padded."""
  rng = np.random.default_rng(seed)
  centre = rng.uniform(0.2, 0.8, (batch, max_boxes, 2))
  size = rng.uniform(0.05, 0.4, (batch, max_boxes, 2))
  boxes = np.concatenate([centre - size / 2, centre + size / 2], -1)
  labels = rng.integers(1, num_classes, (batch, max_boxes))
  labels[:, max_boxes // 2 :] = 0
  return jnp.asarray(boxes, jnp.float32), jnp.asarray(labels, jnp.int32)


def make_train_step(model, optimizer, priors):
  """A jitted SGD step: match, multibox loss, backward, update."""

  def step(params, opt_state, images, boxes, labels):
    loc_t, cls_t = matching.match_batch(boxes, labels, priors)

    def loss_fn(p):
      loc, logits = model.apply({"params": p}, images)
      return losses.multibox_loss(loc, logits, loc_t, cls_t)[0]

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--image-size", type=int, default=300)
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--num-classes", type=int, default=21)
  parser.add_argument("--batch-sizes", default="1,8")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--train-batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip-train", action="store_true")
  args = parser.parse_args(argv)
  from ssd_jax import runtime

  # As the training entry points; before JAX's first use.
  runtime.apply_xla_cpu_flags()
  device = jax.devices()[0]
  print(
    f"jax {jax.__version__}, device {device.device_kind} "
    f"({jax.device_count()}x {device.platform}), CPU {cpu_name()}"
  )
  base = models.SSD(
    num_classes=args.num_classes, image_size=args.image_size, width=args.width
  )
  size = args.image_size
  # unsafe_rbg: the init only needs random numbers, and its kernels compile
  # far faster on CPU than threefry's.
  key = jax.random.key(0, impl="unsafe_rbg")
  params = jax.jit(base.init)(key, jnp.zeros((1, size, size, 3)))["params"]
  count = sum(np.size(x) for x in jax.tree.leaves(params))
  print(f"SSD image {size} width {args.width}: {count:,} parameters")
  xla_gflop = xla_forward_gflop(base, params)
  nominal = size == 300 and args.width == 1.0
  gflop = SSD300_GFLOP if nominal else xla_gflop
  print(
    f"forward GFLOP per image: {gflop:.2f} used"
    f" ({'nominal SSD300' if nominal else 'XLA count'}); XLA counts"
    f" {xla_gflop:.2f}"
  )
  rng = np.random.default_rng(0)

  for dtype_name in args.dtypes.split(","):
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
    model = base.clone(dtype=dtype)
    apply = jax.jit(model.apply)
    for batch in (int(b) for b in args.batch_sizes.split(",")):
      images = jnp.asarray(
        rng.normal(0, 50, (batch, size, size, 3)), jnp.float32
      )
      compile_s, times = time_fn(
        apply, ({"params": params}, images), args.repeats
      )
      report(f"forward {dtype_name}", batch, compile_s, times, gflop)

  if not args.skip_train:
    batch = args.train_batch
    optimizer = optax.chain(
      optax.add_decayed_weights(5e-4), optax.sgd(1e-3, momentum=0.9)
    )
    step = make_train_step(base, optimizer, jnp.asarray(base.priors()))
    images = jnp.asarray(rng.normal(0, 50, (batch, size, size, 3)), jnp.float32)
    boxes, labels = random_targets(batch, 8, args.num_classes, seed=1)
    state = [jax.tree.map(jnp.array, params), None]
    state[1] = optimizer.init(state[0])

    def run():
      state[0], state[1], loss = step(state[0], state[1], images, boxes, labels)
      return loss

    compile_s, times = time_fn(run, (), args.repeats)
    report("train step float32", batch, compile_s, times, 3 * gflop)


if __name__ == "__main__":
  main()
