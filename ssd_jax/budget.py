"""A quick run's time: what its steps cost, this machine's speed, the re-plan.

The quick recipe (`ssd_jax.recipe`) plans a run to fit a fixed time on the
2-core CPU it was measured on. Three parts, all plain functions:

- `seconds_per_image`: the measured cost of a training image at an input
  side, conv3_3's map, width and stem (`COST_SIDES` / `COST_SECONDS`), on the
  machine as it ran the day the table was made (speed 1);
- `machine_speed`: how much slower this machine runs now than that day, from
  a short jitted probe (`probe_seconds`, ~1.5 s) timed before the model is
  built, so that the input size and the epochs are planned at this machine's
  speed (the same 2-core machine ran the same training 1.5-1.8x slower on
  one evening than on the table's day);
- `replan_steps`: once the run has timed its own steps, the number of steps
  that ends it `RUN_SECONDS` after it started; `follow_steps` gives what
  follows the number of steps (warm-up, decays, evaluations, checkpoints);
  `speed_from_steps` gives the machine's speed those steps measured (for
  choosing the input size again, `recipe.rechoose`).
"""

import functools
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# The quick run's training time: epochs are as many as fit in it at the
# measured cost per image below (8.5 minutes; with start-up and the two
# evaluations the held-out runs took 8.6-9.8 of the 10-minute target, the
# machine's speed moving by about 10% between runs).
TRAIN_SECONDS = 510.0
# The VGG models' width (channel multiplier) the cost table was measured
# at (`recipe.RECIPE_WIDTH`).
COST_WIDTH = 0.1875
# Seconds per training image at these input sides: the BatchNorm VGG at
# width `COST_WIDTH` with conv3_3's map (`cpu_ops.BatchNorm`), batch 16, on
# the 2-core CPU of the held-out table. The width-1/4 model's whole runs of
# `experiments/own_data/run_recipe.py` (less 30 s of start-up, their two
# evaluations and checkpoints included) took 18.0, 31.5, 47.9 and 71.2 ms;
# this model's took 0.79x, 0.83x and 0.685x of those at 96, 128 and 160 px
# (shapes10, shapes10, small_crowded), and the table is the old one times
# their mean, 0.77. Time grows about as the area; sizes between are
# interpolated and larger ones extrapolated on a log-log scale.
COST_SIDES = (96, 128, 160, 192)
COST_SECONDS = (0.0139, 0.0243, 0.0369, 0.0548)
# conv3_3's map makes each image this much dearer (its heads at stride 4,
# 4x the default boxes to match and rank): whole runs at 96 px, 18.0 ms per
# image with it (grey_similar, textures) against 16.0 without (large_few).
CONV3_3_COST = 1.13
# model.stem="space_to_depth" makes it this much cheaper than VGG16's stem
# (conv1_1 and conv1_2 at full resolution with 12 channels are about half
# the trunk's time on XLA CPU): the model's forward and gradient at batch
# 16, interleaved in one process, took 0.72-0.75x the time at 96-160 px,
# and they are ~80% of a training step (matching, the loss and the input
# are not cheaper).
SPACE_TO_DEPTH_COST = 0.80
# `probe_seconds` on the cost table's machine (speed 1): the median of
# the references implied by probes and quick-recipe runs' own timed steps
# (probe x the table's step / the measured step) over three sessions on
# which the machine ran 1.35-1.63x slower than the table's day: 12 runs,
# 58-83 ms, 66 ms the median (`experiments/own_data/calibrate_probe.py`,
# experiments/results/calibrate_probe_2026-12-02.json and
# calibrate_probe_2026-12-02_0730.json; the recipe runs of
# own_data_2026-12-02_probe.json and own_data_2026-12-02_recipe.json). It
# assumes the probe slows down with the machine as the training step does;
# between processes minutes apart the probe moved by +-13%, and the
# references of one session sat up to ~25% from another's, so the size it
# picks near a boundary can go either way (the re-plan then fits the
# steps).
PROBE_REFERENCE_SECONDS = 0.066
# `machine_speed` stays within this range: outside it the probe measures
# something other than a CPU like the table's (an accelerator's launch
# overheads, a machine swapping), and the re-plan corrects the steps anyway.
SPEED_RANGE = (0.25, 4.0)
# `replan_steps`: timing REPLAN_STEPS steps after the first
# REPLAN_WARMUP_STEPS (compilation and warm-up), the run sets its steps
# from its own speed to end RUN_SECONDS after training started (the
# held-out runs' 10 minutes less a margin for the machine's speed changing
# during the run, ~10%), reserving EVAL_SECONDS for each of the two
# evaluations (compiling the forward, AP; shapes10's 120 test images with
# the mirror took ~7 s); a change within REPLAN_TOLERANCE of the plan is
# left as planned.
REPLAN_WARMUP_STEPS = 10
REPLAN_STEPS = 30
RUN_SECONDS = 540.0
EVAL_SECONDS = 12.0
REPLAN_TOLERANCE = 0.03
# The machine's speed also moves during a run (a run whose steps 11-40
# took 409 ms ran ~490 ms per step from step 225 on, slower still while a
# test ran beside it, and was stopped at 10 minutes): at LATE_REPLAN_AT of
# the steps the run re-plans once more from its steps since the first
# re-plan (evaluations and checkpoints not counted), early enough that the
# decays at 75% still follow.
LATE_REPLAN_AT = 0.4


def seconds_per_image(
  size: int,
  conv3_3_map: bool = False,
  width: float = COST_WIDTH,
  stem: str = "vgg",
  speed: float = 1.0,
) -> float:
  """Measured training seconds per image at an input side (`COST_SIDES`).

  Log-log interpolation between the measured sides, the end segments'
  slopes beyond them; `CONV3_3_COST` times less without conv3_3's map; in
  proportion to the width (1/4 took 1.25-1.3x `COST_WIDTH`'s time, about
  the ratio of the widths); `SPACE_TO_DEPTH_COST` times that with the
  space_to_depth stem; `speed` times all that (`machine_speed`: 2.0 on a
  machine that runs twice as slow as the table's).
  """
  x, y = np.log(COST_SIDES), np.log(COST_SECONDS)
  t = float(np.log(size))
  k = int(np.clip(np.searchsorted(x, t) - 1, 0, len(x) - 2))
  log_cost = y[k] + (t - x[k]) * (y[k + 1] - y[k]) / (x[k + 1] - x[k])
  scale = width / COST_WIDTH / (1.0 if conv3_3_map else CONV3_3_COST)
  if stem == "space_to_depth":
    scale *= SPACE_TO_DEPTH_COST
  return float(np.exp(log_cost)) * scale * float(speed)


def _probe_loss(kernels, x):
  """Three 3x3 convolutions, each normalised over the batch and ReLU'd:
  the kinds of work of a BatchNorm VGG's training step (convolutions and
  memory-bound elementwise passes over activations larger than the caches),
  on a fixed small problem."""
  for w in kernels:
    x = jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    mean = x.mean((0, 1, 2))
    var = ((x - mean) ** 2).mean((0, 1, 2))
    x = jax.nn.relu((x - mean) * jax.lax.rsqrt(var + 1e-5))
  return jnp.mean(x**2)


@functools.lru_cache(maxsize=1)
def _probe_fn():
  return jax.jit(jax.grad(_probe_loss))


def probe_seconds(repeats: int = 10) -> float:
  """Fastest seconds of one gradient of a fixed small conv net (`_probe_loss`:
  batch 8, 64x64, 32 channels, 3 layers) on the default device, compiled
  and warmed up first; ~1.5 s in all on 2 CPU cores. Repeated in one
  process the fastest call varied by +-3% (the median by +-6%, and on a
  problem a third of the size by +-15%); between processes on one day, by
  +-13%. Run it under the entry points' XLA flags
  (`runtime.apply_xla_cpu_flags`), as training runs: without them XLA CPU
  takes ~1.7x longer.

  Args:
    repeats: timed calls (the fastest is returned); >= 1.

  Returns:
    Seconds per call.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], (8, 64, 64, 32))
  kernels = [0.06 * jax.random.normal(k, (3, 3, 32, 32)) for k in keys[1:]]
  grad = _probe_fn()
  for _ in range(2):  # Compile, then one call with warm caches.
    jax.block_until_ready(grad(kernels, x))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(grad(kernels, x))
    times.append(time.perf_counter() - t0)
  return float(min(times))


class Speed(NamedTuple):
  """This machine's speed for the plan.

  Attributes:
    factor: its time per training image relative to the cost table's
      machine (> 1: slower); `seconds_per_image`'s `speed`.
    probe_seconds: the probe's time it follows from (`probe_seconds`), or
      None.
    step_seconds: (the run's measured seconds per training step, the cost
      table's for the same model) it follows from (`speed_from_steps`), or
      None.
  """

  factor: float = 1.0
  probe_seconds: float | None = None
  step_seconds: tuple[float, float] | None = None

  def describe(self) -> str:
    """For the recipe's log: the factor and what it was measured by."""
    if self.step_seconds is not None:
      measured, table = self.step_seconds
      return (
        f"this machine at {self.factor:.2f}x the cost table's time per image "
        f"(the run's own steps {measured * 1e3:.0f} ms against the table's "
        f"{table * 1e3:.0f})"
      )
    if self.probe_seconds is None:
      return "the cost table's machine speed (not probed)"
    return (
      f"this machine at {self.factor:.2f}x the cost table's time per image "
      f"(probe {self.probe_seconds * 1e3:.1f} ms against "
      f"{PROBE_REFERENCE_SECONDS * 1e3:.1f})"
    )


def speed_from_probe(seconds: float) -> Speed:
  """The Speed a probe time gives: factor `seconds /
  PROBE_REFERENCE_SECONDS` within `SPEED_RANGE`.

  Raises:
    ValueError: for seconds not > 0.
  """
  if not seconds > 0:
    raise ValueError(f"probe seconds must be > 0, got {seconds}")
  factor = float(np.clip(seconds / PROBE_REFERENCE_SECONDS, *SPEED_RANGE))
  return Speed(factor, float(seconds))


def speed_from_steps(measured: float, table: float) -> Speed:
  """The Speed a run's own training steps give: factor `measured / table`
  within `SPEED_RANGE`.

  Args:
    measured: the run's seconds per step (timed after its warm-up).
    table: the cost table's seconds per step for the same model and batch
      (`seconds_per_image` times the batch).

  Raises:
    ValueError: for either not > 0.
  """
  if not (measured > 0 and table > 0):
    raise ValueError(
      f"step seconds must be > 0, got measured={measured}, table={table}"
    )
  factor = float(np.clip(measured / table, *SPEED_RANGE))
  return Speed(factor, step_seconds=(float(measured), float(table)))


def machine_speed() -> Speed:
  """`speed_from_probe(probe_seconds())`; on a multi-process run process 0's
  measurement on every process (they must plan the same run)."""
  seconds = probe_seconds()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    seconds = float(multihost_utils.broadcast_one_to_all(np.float32(seconds)))
  return speed_from_probe(seconds)


def follow_steps(steps: int, schedule: str) -> dict[str, tuple[Any, str]]:
  """What follows the number of steps: field -> (value, reason).

  A 5% warm-up; for the piecewise schedule x0.1 at 75% and 92% of the steps
  (none with the cosine schedule); evaluations halfway and at the end; 5
  checkpoints.
  """
  if schedule == "cosine":
    boundaries = ((), "none with the cosine schedule")
  else:
    boundaries = (
      (int(0.75 * steps), int(0.92 * steps)),
      "x0.1 at 75% and 92% of the steps",
    )
  return {
    "warmup_steps": (max(1, steps // 20), "5% of the steps"),
    "lr_boundaries": boundaries,
    "eval_every": (max(1, math.ceil(steps / 2)), "halfway and at the end"),
    "checkpoint_every": (max(1, steps // 5), "5 checkpoints per run"),
  }


def replan_steps(
  planned_steps: int,
  step: int,
  elapsed: float,
  seconds_per_step: float,
  recompile_seconds: float,
) -> int | None:
  """The steps that end the run `RUN_SECONDS` after it started.

  Counts `recompile_seconds` (a run started again compiles its new model;
  a re-plan of the steps alone compiles nothing: the schedule's steps are
  an input of the step) and `EVAL_SECONDS` for each of the two
  evaluations; within a third and twice the plan, and at least one more
  step than done.

  Args:
    planned_steps: the plan's steps (>= 1).
    step: the steps done.
    elapsed: seconds since training started (start-up, reading the data,
      the first step's compilation and the steps done).
    seconds_per_step: the measured seconds per step, compilation excluded.
    recompile_seconds: what compiling a new step will cost (0 when the
      step stays).

  Returns:
    The new number of steps, or None when it is within `REPLAN_TOLERANCE`
    of the plan or the speed is not a positive number.
  """
  if not seconds_per_step > 0:
    return None
  left = RUN_SECONDS - elapsed - recompile_seconds - 2 * EVAL_SECONDS
  steps = step + max(0, int(left / seconds_per_step))
  lo = max(step + 1, math.ceil(planned_steps / 3))
  steps = int(np.clip(steps, lo, max(lo, 2 * planned_steps)))
  if abs(steps - planned_steps) <= REPLAN_TOLERANCE * planned_steps:
    return None
  return steps
