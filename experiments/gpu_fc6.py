"""SSD300's fc6 alone, three ways: why the float32 forward was slow on a GPU.

fc6 is VGG16's dilated convolution as SSD uses it: 3x3, dilation 6, padding
6, 512 -> 1024 channels on the 19x19 map (at 300 px), then bias and ReLU.
Timed at batch B, float32 (TF32 where XLA picks it), jitted:

  dilated+bias+relu        the layer as `lax.conv_general_dilated` computes
                           it; XLA fuses conv, bias and ReLU into one cuDNN
                           call
  dilated+bias             the same without the ReLU (nothing to fuse it
                           into a conv-bias-activation call)
  phases+bias+relu         `ssd_jax.models.layers.dilated_conv_by_phases`:
                           an undilated convolution on the input's 6x6 phases

On an H200 (jax 0.11.2, cuDNN 9.19, batch 128, 2026-11-30) the first took
562 ms, the second 2.95 ms, the third 2.32 ms: the fused dilated call alone
was 96% of SSD300's float32 forward
(`experiments/results/gpu_h200_2026-11-30/fc6.txt`).

  python experiments/gpu_fc6.py --batch 128          # on a GPU
  python experiments/gpu_fc6.py --smoke              # any backend, tiny
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ssd_jax.models import layers


def variants():
  """name -> f(x [B, H, W, C], kernel [3, 3, C, O], bias [O]) -> [B, H, W, O]

  (fc6 with its bias, and with or without the ReLU).
  """
  nhwc = ("NHWC", "HWIO", "NHWC")
  pad = ((6, 6), (6, 6))

  def dilated(x, k, b):
    return (
      lax.conv_general_dilated(
        x, k, (1, 1), pad, rhs_dilation=(6, 6), dimension_numbers=nhwc
      )
      + b
    )

  return {
    "dilated+bias+relu": lambda x, k, b: jax.nn.relu(dilated(x, k, b)),
    "dilated+bias": dilated,
    "phases+bias+relu": lambda x, k, b: jax.nn.relu(
      layers.dilated_conv_by_phases(x, k, pad, 6) + b
    ),
  }


def run(batch: int, size: int, channels: int, features: int, repeats: int):
  """Times each variant; returns [(name, median s, max |diff| vs first)].

  The difference is taken after a ReLU (the variant without one included).
  """
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32)
  k = jnp.asarray(
    rng.normal(size=(3, 3, channels, features)) * 0.01, jnp.float32
  )
  b = jnp.zeros((features,), jnp.float32)
  rows, first = [], None
  for name, fn in variants().items():
    f = jax.jit(fn)
    y = np.maximum(np.asarray(f(x, k, b)), 0)  # compile, warm up; ReLU
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(f(x, k, b))
      times.append(time.perf_counter() - start)
    first = y if first is None else first
    rows.append(
      (name, statistics.median(times), float(np.abs(y - first).max()))
    )
    print(
      f"{name:20s} median {rows[-1][1] * 1e3:9.2f} ms  "
      f"max|diff| vs first {rows[-1][2]:.2e}",
      flush=True,
    )
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--smoke", action="store_true", help="tiny shapes")
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__} on {jax.devices()[0]}")
  if args.smoke:
    return run(2, 19, 8, 16, 1)
  return run(args.batch, 19, 512, 1024, args.repeats)


if __name__ == "__main__":
  main()
