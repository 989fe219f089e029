"""Benchmark: hard negative mining, bisection against a sort (not a test).

`losses.hard_negatives` finds each image's threshold (the num_neg-th
largest background loss) by bisection on the floats' bits
(`losses.kth_largest`); before 2026-12-01 it sorted the [P] losses. This
times both, vmapped over a batch and jitted, on whatever device JAX uses,
checks they select the same priors, and prints ms per batch (min and median
of interleaved repeats).

  python experiments/bench_hard_negatives.py
  python experiments/bench_hard_negatives.py --sizes 16x3424 --repeats 3
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ssd_jax import losses, runtime


def sorted_threshold(background_loss, positive, ratio):
  """The sort-based selection hard_negatives replaced (same contract)."""
  num_pos = jnp.sum(positive)
  num_neg = jnp.minimum(
    jnp.floor(ratio * num_pos).astype(jnp.int32),
    background_loss.shape[0] - num_pos,
  )
  ranking = jnp.where(positive, -jnp.inf, background_loss)
  threshold = -jnp.sort(-ranking)[jnp.maximum(num_neg - 1, 0)]
  above = ranking > threshold
  tied = ranking == threshold
  keep = above | (tied & (jnp.cumsum(tied) <= num_neg - jnp.sum(above)))
  return keep & ~positive


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--sizes",
    default="16x3424,16x9600,32x8732",
    help="BxP pairs: images x default boxes (96 px recipe, 160 px, SSD300)",
  )
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  runtime.apply_xla_cpu_flags()
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
  for size in args.sizes.split(","):
    b, p = (int(v) for v in size.split("x"))
    rng = np.random.default_rng(0)
    loss = rng.exponential(1.0, [b, p]).astype(np.float32)
    loss[:, :50] = 0.0  # ties
    loss, positive = (
      jnp.asarray(loss),
      jnp.asarray(rng.uniform(size=[b, p]) < 0.01),
    )
    fns = {
      "sort": jax.jit(jax.vmap(lambda x, m: sorted_threshold(x, m, 3.0))),
      "bisection": jax.jit(
        jax.vmap(lambda x, m: losses.hard_negatives(x, m, 3.0))
      ),
    }
    outs = {k: np.asarray(f(loss, positive)) for k, f in fns.items()}
    assert (outs["sort"] == outs["bisection"]).all(), "selections differ"
    times = {k: [] for k in fns}
    for _ in range(args.repeats):
      for k, f in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(f(loss, positive))
        times[k].append((time.perf_counter() - start) * 1e3)
    row = "  ".join(
      f"{k} min {min(t):.2f} med {statistics.median(t):.2f} ms"
      for k, t in times.items()
    )
    print(f"{b} x {p}: {row}  (same selection)")


if __name__ == "__main__":
  main()
