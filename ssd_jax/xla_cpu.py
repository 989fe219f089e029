"""The XLA CPU setting under which SSD trains and infers fastest.

jax 0.10's XLA CPU hands convolutions, with the bias adds, ReLUs and pools
around them, to the YNNPACK library: a profile shows a few `ynn_fusion`
calls, the largest covering VGG16 from the image to conv4_3. For SSD300 in
float32 on a 2-core Zen 4 that is slower than XLA's own (Eigen)
convolutions, and it makes XLA's own convolution gradients slow enough that
a hand-written one paid off. With the library fusion off (same run, same
parameters; `experiments/bench.py`):

- forward, batch 1: 416 -> 330 ms; batch 8: 3.3 -> 2.6 s;
- forward, batch 8, bfloat16 compute: 3.1 -> 2.7 s;
- training step, batch 8: 12.5 -> 9.0 s (with `cpu_ops.max_pool`; XLA's own
  convolution gradients are then 1.2-1.4x faster than a custom one).

XLA reads `XLA_FLAGS` once, when the first backend starts, so `apply()` must
run before JAX's first computation. The entry points (`ssd_jax.main`,
`ssd_jax.demo`, `experiments/bench*.py`) call it first thing; a script that
imports ssd_jax as a library should call it too (or set the flag itself).
The flag only concerns the CPU backend, so GPU and TPU runs are unchanged.
"""

import os
from collections.abc import MutableMapping

from absl import logging

# Turns off YNNPACK fusions (an empty list of fusion kinds).
FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)


def _flag_name(flag: str) -> str:
  return flag.split("=", 1)[0]


def with_flags(xla_flags: str) -> str:
  """`xla_flags` with `FLAGS` appended, except those already set in it.

  A flag the user has set (to any value) is left as the user set it.

  Args:
    xla_flags: an `XLA_FLAGS` value, possibly empty.

  Returns:
    The new `XLA_FLAGS` value.
  """
  given = {_flag_name(f) for f in xla_flags.split()}
  added = [f for f in FLAGS if _flag_name(f) not in given]
  return " ".join([xla_flags.strip(), *added]).strip()


def apply(environ: MutableMapping[str, str] | None = None) -> bool:
  """Adds `FLAGS` to `XLA_FLAGS` for the backends JAX has yet to start.

  Args:
    environ: the environment to change (default `os.environ`).

  Returns:
    True if the flags will take effect: the JAX backends had not started
    yet. False (and a logged warning) if they had, since XLA has already
    read `XLA_FLAGS`; the environment is updated either way.
  """
  environ = os.environ if environ is None else environ
  environ["XLA_FLAGS"] = with_flags(environ.get("XLA_FLAGS", ""))
  from jax._src import xla_bridge  # noqa: PLC0415

  if xla_bridge.backends_are_initialized():
    logging.warning(
      "ssd_jax.xla_cpu.apply() after JAX started its backends: XLA_FLAGS "
      "is read only once, so %s has no effect in this process",
      " ".join(FLAGS),
    )
    return False
  return True
