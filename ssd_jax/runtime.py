"""Process set-up for the entry points: XLA CPU flags, multi-host, logging.

`setup(...)` is what `ssd_jax.main` calls first: it applies the XLA CPU
setting below, joins a multi-process run when asked
(`initialize_distributed`), and quiets orbax's INFO chatter.

The XLA CPU setting under which SSD trains and infers fastest:

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

XLA reads `XLA_FLAGS` once, when the first backend starts, so
`apply_xla_cpu_flags()` must run before JAX's first computation. The entry
points (`ssd_jax.main`, `ssd_jax.demo`, `experiments/bench*.py`) call it
first thing; a script that imports ssd_jax as a library should call it too
(or set the flag itself).
The flag only concerns the CPU backend, so GPU and TPU runs are unchanged.
"""

import logging as logging_std
import os
from collections.abc import MutableMapping

import jax
from absl import logging
from jax._src import xla_bridge

# Turns off YNNPACK fusions (an empty list of fusion kinds).
XLA_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)


def _flag_name(flag: str) -> str:
  return flag.split("=", 1)[0]


def with_xla_cpu_flags(xla_flags: str) -> str:
  """`xla_flags` plus those of `XLA_CPU_FLAGS` it does not set already.

  A flag the user has set (to any value) is left as the user set it.

  Args:
    xla_flags: an `XLA_FLAGS` value, possibly empty.

  Returns:
    The new `XLA_FLAGS` value.
  """
  given = {_flag_name(f) for f in xla_flags.split()}
  added = [f for f in XLA_CPU_FLAGS if _flag_name(f) not in given]
  return " ".join([xla_flags.strip(), *added]).strip()


def apply_xla_cpu_flags(
  environ: MutableMapping[str, str] | None = None,
) -> bool:
  """Adds `XLA_CPU_FLAGS` to `XLA_FLAGS` for backends JAX has yet to start.

  Args:
    environ: the environment to change (default `os.environ`).

  Returns:
    True if the flags will take effect: the JAX backends had not started
    yet. False (and a logged warning) if they had, since XLA has already
    read `XLA_FLAGS`; the environment is updated either way.
  """
  environ = os.environ if environ is None else environ
  environ["XLA_FLAGS"] = with_xla_cpu_flags(environ.get("XLA_FLAGS", ""))
  if xla_bridge.backends_are_initialized():
    logging.warning(
      "ssd_jax.runtime.apply_xla_cpu_flags() after JAX started its "
      "backends: XLA_FLAGS "
      "is read only once, so %s has no effect in this process",
      " ".join(XLA_CPU_FLAGS),
    )
    return False
  return True


def initialize_distributed(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
) -> None:
  """Joins a multi-process JAX run (CPU uses gloo collectives).

  Args:
    coordinator_address: "host:port" of process 0, or None to auto-detect.
    num_processes: total processes, or None to auto-detect.
    process_id: this process's index, or None to auto-detect.
  """
  # Only the CPU client reads this; must be set before any backend starts.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
  )


class QuietLibraries(logging_std.Filter):
  """Drops INFO chatter of orbax (several lines per checkpoint)."""

  def filter(self, record):
    return record.levelno > logging_std.INFO or "orbax" not in record.pathname


def setup(
  distributed: bool = False,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Everything an entry point does before its first JAX computation.

  Applies `XLA_CPU_FLAGS`, quiets orbax's INFO lines in absl's log, and
  joins a multi-process run when `distributed` or `coordinator_address` is
  given; then logs the process and device counts.

  Args:
    distributed: call `jax.distributed.initialize()` (auto-detected
      cluster, e.g. Cloud TPU or SLURM, when the other arguments are None).
    coordinator_address: "host:port" of process 0.
    num_processes: total processes.
    process_id: this process's index.
  """
  apply_xla_cpu_flags()
  logging.get_absl_handler().addFilter(QuietLibraries())
  if distributed or coordinator_address:
    initialize_distributed(coordinator_address, num_processes, process_id)
  logging.info(
    "JAX process %d/%d, %d local / %d global devices (%s)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.default_backend(),
  )
