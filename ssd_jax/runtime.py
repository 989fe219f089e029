"""Process set-up for the entry points: XLA CPU flags, multi-host, logging.

`setup(...)` is what `ssd_jax.main` calls first: it applies the XLA CPU
setting below, joins a multi-process run when asked
(`initialize_distributed`), and quiets orbax's INFO chatter.

Multi-process failures are bounded in time: `initialize_distributed` sets
JAX's distributed heartbeat (`HEARTBEAT_TIMEOUT_S`): when a process dies
(SIGKILL, a lost host), the coordination service marks it unhealthy after
that many seconds without a heartbeat and every other process terminates
with "Terminating process because the JAX distributed service detected
fatal errors ... another task died" (exit status 134), instead of waiting
forever in its next collective; a collective whose peer's connection drops
fails at once ("Gloo AllGather failed ... Connection reset by peer" on CPU).
`gather_rows` is the one host-side all-gather of variable-length arrays
(the sharded evaluation's detections).

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
from collections.abc import Mapping, MutableMapping

import jax
import numpy as np
from absl import logging
from jax._src import xla_bridge
from jax.experimental import multihost_utils

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


# A process that sent no heartbeat for this long is dead: the others stop
# (JAX's default is 100 s). Long enough for a stalled filesystem or a busy
# host, short enough that a lost host costs a minute, not the job's life.
HEARTBEAT_TIMEOUT_S = 60
# How long a finishing process waits at exit for the others to finish.
SHUTDOWN_TIMEOUT_S = 300


def initialize_distributed(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
  shutdown_timeout_s: int = SHUTDOWN_TIMEOUT_S,
) -> None:
  """Joins a multi-process JAX run (CPU uses gloo collectives).

  With all three of the first arguments None, JAX detects the cluster
  (SLURM, Open MPI, Cloud TPU).

  Args:
    coordinator_address: "host:port" of process 0, or None to auto-detect.
    num_processes: total processes, or None to auto-detect.
    process_id: this process's index, or None to auto-detect.
    heartbeat_timeout_s: seconds without a heartbeat after which a process
      counts as dead and every other process terminates (see above).
    shutdown_timeout_s: seconds a finished process waits for the others.
  """
  # Only the CPU client reads this; must be set before any backend starts.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    heartbeat_timeout_seconds=int(heartbeat_timeout_s),
    shutdown_timeout_seconds=int(shutdown_timeout_s),
  )


def gather_rows(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Every process's rows of each array, on every process, in process order.

  A collective: every process calls it with the same keys, dtypes and
  trailing shapes; the leading (row) counts may differ, zero included. One
  process: the arrays as given.

  Args:
    arrays: name -> host array [n_p, ...] of this process p.

  Returns:
    name -> [sum over p of n_p, ...]: process 0's rows, then process 1's...

  Raises:
    ValueError: naming an array that is not at least 1-D.
  """
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  for k, v in arrays.items():
    if v.ndim < 1:
      raise ValueError(f"gather_rows: {k!r} has shape {v.shape}, not [n, ...]")
  if jax.process_count() == 1:
    return arrays
  # Rows travel as bytes: exact for every dtype (JAX would turn 64-bit
  # values into 32-bit ones without jax_enable_x64).
  raw = {
    k: np.ascontiguousarray(v)
    .reshape(len(v), int(np.prod(v.shape[1:])))
    .view(np.uint8)
    for k, v in arrays.items()
  }  # [n_p, row bytes]
  counts = np.asarray([len(v) for v in raw.values()], np.int32)
  counts = multihost_utils.process_allgather(counts)  # [P, arrays]
  longest = np.maximum(counts.max(axis=0), 1)
  padded = {
    k: np.concatenate([v, np.zeros((longest[i] - len(v), v.shape[1]), v.dtype)])
    for i, (k, v) in enumerate(raw.items())
  }
  gathered = multihost_utils.process_allgather(padded)  # [P, longest, bytes]
  out = {}
  for i, (k, v) in enumerate(arrays.items()):
    rows = np.concatenate(
      [gathered[k][p, : counts[p, i]] for p in range(len(counts))]
    )
    out[k] = rows.view(v.dtype).reshape(-1, *v.shape[1:])
  return out


class QuietLibraries(logging_std.Filter):
  """Drops INFO chatter of orbax (several lines per checkpoint)."""

  def filter(self, record):
    return record.levelno > logging_std.INFO or "orbax" not in record.pathname


def setup(
  distributed: bool = False,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
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
    heartbeat_timeout_s: see `initialize_distributed`.
  """
  apply_xla_cpu_flags()
  logging.get_absl_handler().addFilter(QuietLibraries())
  if distributed or coordinator_address:
    initialize_distributed(
      coordinator_address, num_processes, process_id, heartbeat_timeout_s
    )
  logging.info(
    "JAX process %d/%d, %d local / %d global devices (%s)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.default_backend(),
  )
