"""Training metrics: TensorBoard events, a JSON-lines file, a console line.

Only process 0 writes (every process may call the methods). TensorFlow
writes the event files (CPU-only: GPUs are hidden from it).
"""

import json
import math
import os
import sys
import time
from collections.abc import Mapping

import jax
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
  """Writes scalar metrics to `workdir/metrics.jsonl` and TensorBoard.

  Args:
    workdir: output folder; event files go to `workdir/tensorboard`.
    tensorboard: also write TensorBoard event files.
  """

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a")  # noqa: SIM115
    if tensorboard:
      tf.config.set_visible_devices([], "GPU")
      self._scalar_metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
          plugin_name="scalars"
        )
      )
      self._tb = tf.summary.create_file_writer(
        os.path.join(workdir, "tensorboard")
      )

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    """Records scalars for `step` (non-numbers are skipped).

    Args:
      step: training step.
      metrics: name -> float.
    """
    if not self.enabled:
      return
    scalars = {}
    for k, v in metrics.items():
      try:
        scalars[k] = float(v)
      except (TypeError, ValueError):
        continue
    record = {"step": int(step), **scalars}
    self._jsonl.write(json.dumps(record, allow_nan=True) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      with self._tb.as_default():
        for k, v in scalars.items():
          # tf.summary.scalar needs the tensorboard package; write the same
          # record (scalars plugin metadata) with the core API instead.
          tf.summary.write(
            k,
            tf.constant(v, tf.float32),
            step=int(step),
            metadata=self._scalar_metadata,
          )
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes the files."""
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The records of `workdir/metrics.jsonl`, in order (empty if absent)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def format_duration(seconds: float) -> str:
  """Seconds as `H:MM:SS` (or `?` when not finite)."""
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  s = int(round(seconds))
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
  """Throughput and ETA over the steps run by this process.

  The first completed step (which includes compilation) starts the clock, so
  images/s measures steady-state steps.

  Args:
    num_steps: total steps of the run.
    global_batch_size: images per step over all hosts.
    clock: time source (for tests).
  """

  def __init__(self, num_steps: int, global_batch_size: int, clock=None):
    self.num_steps = num_steps
    self.batch = global_batch_size
    self._clock = clock or time.perf_counter
    self._t0 = None
    self._s0 = None
    self._t = None
    self._s = None

  def update(self, step: int) -> None:
    """Marks `step` as completed now."""
    now = self._clock()
    if self._t0 is None:
      self._t0, self._s0 = now, step
    self._t, self._s = now, step

  def images_per_sec(self) -> float:
    """Images per second since the first completed step (NaN before 2)."""
    if self._t0 is None or self._s == self._s0 or self._t <= self._t0:
      return float("nan")
    return (self._s - self._s0) * self.batch / (self._t - self._t0)

  def eta_seconds(self) -> float:
    """Seconds left at the current rate (NaN when unknown)."""
    rate = self.images_per_sec()
    if not math.isfinite(rate) or rate <= 0:
      return float("nan")
    return (self.num_steps - self._s) * self.batch / rate

  def line(self, step: int, metrics: Mapping[str, float]) -> str:
    """The console progress line for `step`."""
    ips = self.images_per_sec()
    ips_text = f"{ips:.1f}" if math.isfinite(ips) else "?"
    return (
      f"step {step}/{self.num_steps} loss {metrics['loss']:.4f} "
      f"(loc {metrics['loc_loss']:.4f} conf {metrics['conf_loss']:.4f}) "
      f"lr {metrics.get('lr', float('nan')):.2e} {ips_text} img/s "
      f"ETA {format_duration(self.eta_seconds())}"
    )

  def print_line(self, step: int, metrics: Mapping[str, float]) -> None:
    """Prints `line()` on process 0."""
    if jax.process_index() == 0:
      print(self.line(step, metrics), file=sys.stdout, flush=True)
