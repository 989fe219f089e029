"""Training: restore or initialise, the loop, periodic evaluation, stops.

`train_and_evaluate(config, workdir)` is the whole run, in this order:
config validation -> default boxes fitted to the training boxes
(`fit_priors`, for `model.priors="fitted"`; kept in the workdir's
`default_boxes.json`, which `build` and `restore_params` read back) ->
model and class names -> restore the latest checkpoint
or initialise (from `config.init_from` when set) -> the tf.data iterator at
the restored step -> the step (`config.parallel`: `step.p_train_step` on
the local devices, or `step.s_train_step` over a mesh of all devices) ->
every N steps: metrics, `evaluator.Evaluator.run`, checkpoints -> a final
evaluation and checkpoint. Resumption is exact: the data iterator restarts
at the checkpoint's step and all randomness derives from `config.seed` and the
step, so an interrupted run ends with the same parameters as an
uninterrupted one. A non-finite loss stops the run (the last good checkpoint
is kept); SIGTERM saves a checkpoint and returns.

Multi-host: each process feeds its local devices after
`jax.distributed.initialize()` (`ssd_jax.runtime`), reading its own slice of
every global batch (`pipeline.create_train_iterator`), and evaluates its own
block of the eval split (`Evaluator.run` gathers the detections). SIGTERM
usually reaches one process (or some, at different steps): every
`STOP_AGREEMENT_EVERY` steps the processes share their stop flags (a tiny
all-gather), so all of them save the same step and return together. A
process that dies makes the others terminate within the heartbeat timeout
(`runtime.HEARTBEAT_TIMEOUT_S`); the restarted job resumes from the last
checkpoint, with any process count whose devices divide the batch.
"""

import json
import math
import os
import signal
import time
from collections.abc import Collection, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ssd_jax import box_stats, budget, models, optim, recipe
from ssd_jax import checkpoint as ckpt_lib
from ssd_jax import config as config_lib
from ssd_jax import default_boxes as db
from ssd_jax import evaluator as eval_lib
from ssd_jax import metrics_writer as metrics_lib
from ssd_jax import step as step_lib
from ssd_jax.data import dataset, pipeline


class NonFiniteLossError(FloatingPointError):
  """Raised when a training step produced a NaN or infinite loss."""


def check_finite(step: int, metrics: Mapping[str, Any]) -> None:
  """Raises NonFiniteLossError naming the step if the loss is not finite.

  Args:
    step: the 1-based number of the step that produced `metrics`.
    metrics: host metrics of that step (scalars).

  Raises:
    NonFiniteLossError: on a NaN or infinite "loss".
  """
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    raise NonFiniteLossError(
      f"Non-finite loss {loss} at step {step} (loc_loss="
      f"{float(metrics['loc_loss'])}, conf_loss="
      f"{float(metrics['conf_loss'])}); training stopped, the last good "
      "checkpoint is kept. Lower config.learning_rate, raise "
      "config.warmup_steps or set config.grad_clip_norm."
    )


# Multi-process: steps between two agreements on a SIGTERM (one tiny
# all-gather of a flag each time).
STOP_AGREEMENT_EVERY = 10


class _StopRequest:
  """Set by SIGTERM: the loop saves a checkpoint and returns.

  One process: the loop stops after the step in progress. Several: the
  flags are all-gathered every `every` steps, and all processes stop at the
  first such step after any of them was signalled (`requested`).
  """

  def __init__(self, every: int | None = None):
    self.signum = None
    self.every = int(every or STOP_AGREEMENT_EVERY)
    self._previous = None

  def requested(self, step: int) -> bool:
    """Whether every process stops after `step` (a collective when several
    processes run: all call it at every step)."""
    if jax.process_count() == 1:
      return self.signum is not None
    if step % self.every:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.signum is not None))
    return bool(np.any(flags))

  def install(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread.
      self._previous = None

  def _handle(self, signum, frame):
    del frame
    logging.warning(
      "Received signal %d: saving a checkpoint, then exiting.", signum
    )
    self.signum = signum

  def uninstall(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# The fitted default boxes of a run (`fit_priors`), beside its checkpoints.
DEFAULT_BOXES_FILE = "default_boxes.json"


def read_fitted_priors(workdir: str) -> db.PriorConfig | None:
  """The default boxes a run fitted (`<workdir>/default_boxes.json`).

  Args:
    workdir: a training workdir.

  Returns:
    The stored PriorConfig, or None when the workdir has no such file.

  Raises:
    ValueError: naming the file when it is not a default-box config.
  """
  path = os.path.join(workdir, DEFAULT_BOXES_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      stored = json.load(f)
    return db.PriorConfig(
      image_size=int(stored["image_size"]),
      feature_sizes=tuple(int(v) for v in stored["feature_sizes"]),
      steps=tuple(float(v) for v in stored["steps"]),
      min_sizes=tuple(float(v) for v in stored["min_sizes"]),
      max_sizes=tuple(float(v) for v in stored["max_sizes"]),
      aspect_ratios=tuple(
        tuple(float(r) for r in rs) for rs in stored["aspect_ratios"]
      ),
      clip=bool(stored.get("clip", True)),
    )
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: not a default-box config ({e!r})") from e


def _with_fitted_sizes(
  config: ml_collections.ConfigDict, fitted: db.PriorConfig
) -> ml_collections.ConfigDict:
  """A copy of `config` whose model uses these fitted sizes."""
  config = config.copy_and_resolve_references()
  config.model.priors = "fitted"
  config.model.prior_min_sizes = tuple(fitted.min_sizes)
  config.model.prior_max_sizes = tuple(fitted.max_sizes)
  return config


def build(
  config: ml_collections.ConfigDict, workdir: str | None = None
) -> tuple[Any, list[str]]:
  """The model and the dataset's class names from the config.

  A workdir holding fitted default boxes (`fit_priors`) decides the boxes:
  the model takes them whatever the config's `model.priors`, so that
  evaluation, prediction and export use the boxes the run trained with.

  Args:
    config: the full config.
    workdir: the training workdir, or None.

  Returns:
    (model, class_names) with `num_classes = len(class_names) + 1`.

  Raises:
    ValueError: naming the config field, or the workdir's
      default_boxes.json when its boxes do not fit the model.
  """
  fitted = read_fitted_priors(workdir) if workdir else None
  if fitted is not None:
    if config.model.get("priors", "default") != "fitted":
      logging.warning(
        "model.priors=%r, but %s holds the fitted default boxes this run "
        "trained with; using those.",
        config.model.get("priors"),
        os.path.join(workdir, DEFAULT_BOXES_FILE),
      )
    config = _with_fitted_sizes(config, fitted)
  names = list(dataset.class_names(config.data))
  model = models.from_config(config.model, num_classes=len(names) + 1)
  if fitted is not None and model.resolved_prior_config() != fitted:
    raise ValueError(
      f"{os.path.join(workdir, DEFAULT_BOXES_FILE)} holds default boxes for "
      f"image_size {fitted.image_size}, maps {fitted.feature_sizes}; the "
      f"config's model (image_size {model.image_size}) has others: "
      f"{model.resolved_prior_config()}"
    )
  return model, names


def fit_priors(
  config: ml_collections.ConfigDict, workdir: str
) -> ml_collections.ConfigDict:
  """Fits the default boxes to the training set once per run (priors="fitted").

  For `model.priors="fitted"`: the boxes stored in the workdir
  (`default_boxes.json`) when there are any (a resumed run keeps its boxes
  even if the data changed); else `model.prior_min_sizes` /
  `prior_max_sizes` when set; else boxes fitted to the training split
  (`box_stats.fitted_prior_config`), with the coverage before and after
  logged. New boxes are written to `<workdir>/default_boxes.json` (process
  0), where `build` reads them back for evaluation, prediction and export.

  Args:
    config: the full config.
    workdir: the training workdir.

  Returns:
    `config` itself when `model.priors` is not "fitted", else a copy whose
    `model.prior_min_sizes` / `prior_max_sizes` hold the boxes' sizes.

  Raises:
    ValueError: for a model outside the VGG family, a tfds source (no
      table to read the boxes from), or a bad stored file.
  """
  if config.model.get("priors", "default") != "fitted":
    return config
  stored = read_fitted_priors(workdir)
  path = os.path.join(workdir, DEFAULT_BOXES_FILE)
  if stored is not None:
    logging.info("Default boxes from %s: min sizes %s", path, stored.min_sizes)
    return _with_fitted_sizes(config, stored)
  record = {}
  if config.model.get("prior_min_sizes"):
    model, _ = build(config)
    fitted = model.resolved_prior_config()
    logging.info("Default boxes from model.prior_min_sizes / max_sizes.")
  else:
    stats = box_stats.dataset_stats(config.data, "train")
    fitted = box_stats.fitted_prior_config(config, stats)
    base = box_stats.rule_prior_config(config, stats)
    threshold = float(config.iou_threshold)
    before, after = (
      box_stats.prior_coverage(stats.boxes, db.prior_boxes(c), threshold)
      for c in (base, fitted)
    )
    record = {
      "fitted_to": f"{len(stats.boxes)} boxes of split "
      f"{dataset.split(config.data, True)!r}",
      "iou_threshold": threshold,
      "coverage_before": before.coverage,
      "coverage_after": after.coverage,
      "mean_positives_before": before.mean_positives,
      "mean_positives_after": after.mean_positives,
    }
    logging.info(
      "Default boxes fitted to %s: coverage (best prior IoU >= %g) %s -> %s, "
      "positives per box %s -> %s; min sizes (px) %s",
      record["fitted_to"],
      threshold,
      *(
        "-" if v is None else f"{v:.3f}"
        for v in (before.coverage, after.coverage)
      ),
      *(
        "-" if v is None else f"{v:.2f}"
        for v in (before.mean_positives, after.mean_positives)
      ),
      ", ".join(f"{s:.1f}" for s in fitted.min_sizes),
    )
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump({"priors": "fitted", **fitted._asdict(), **record}, f, indent=1)
    os.replace(path + ".tmp", path)
  return _with_fitted_sizes(config, fitted)


def _input(model: Any) -> jax.ShapeDtypeStruct:
  size = model.image_size
  return jax.ShapeDtypeStruct([1, size, size, 3], jnp.float32)


# The initialisation runs once, so XLA CPU compiles it with less of LLVM's
# optimisation: its ~20 threefry loops (one per random draw) took
# 14-17 s to compile at the default level 2 and 6 s at level 1 (the quick
# recipe's model at 128 px), for the same bits (level 0, 5 s, changes the
# last bit of normal initialisers' draws); `tests/test_train.py` checks it.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def init_variables(
  model: Any, rng: jax.Array, init_from: str = ""
) -> dict[str, Any]:
  """Fresh variables, overwritten from `init_from` when set.

  The same values as `jax.jit(model.init)(rng, zeros)`, compiled with
  `INIT_COMPILER_OPTIONS` on the CPU.

  Args:
    model: the SSD module (any of the zoo).
    rng: PRNG key of the initialisation.
    init_from: a training workdir or a weights checkpoint
      (`checkpoint.init_variables_from`); "" for none.

  Returns:
    {"params": tree} and, for a BatchNorm model, "batch_stats".
  """
  x = jnp.zeros(_input(model).shape)
  init = jax.jit(model.init).lower(rng, x)
  options = INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else {}
  variables = init.compile(compiler_options=options)(rng, x)
  variables = {
    k: variables[k] for k in ("params", "batch_stats") if k in variables
  }
  if init_from:
    variables, report = ckpt_lib.init_variables_from(init_from, variables)
    logging.info("init_from %s: %s", init_from, report)
  return variables


def abstract_state(model: Any, tx: Any) -> step_lib.TrainState:
  """A TrainState of zeros with the model's shapes (a restore template)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), _input(model))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), dict(shapes))
  return step_lib.create_train_state(
    zeros["params"], tx, zeros.get("batch_stats")
  )


def adapt(
  config: ml_collections.ConfigDict, workdir: str, fixed: Collection[str] = ()
) -> ml_collections.ConfigDict:
  """The config with its recipe's choices (`ssd_jax.recipe`), logged.

  A new run with `config.recipe = "quick"` chooses from the training boxes
  (keeping the `fixed` fields) and stores the choices in the workdir; a
  resumed run reads them back; a workdir holding checkpoints of a run
  without a recipe file keeps the config as it is.

  Args:
    config: the full config.
    workdir: the training workdir.
    fixed: dotted fields set on the command line.

  Returns:
    (the config the run uses, its recipe's choices: [] without a recipe,
    source "recipe" / "command line" when chosen now, "workdir" when read).
  """
  checkpoints = os.path.join(workdir, "checkpoints")
  has_run = os.path.isdir(checkpoints) and bool(os.listdir(checkpoints))
  config, choices = recipe.resolve(
    config,
    workdir,
    fixed,
    choose_new=not has_run,
    store=jax.process_index() == 0,
  )
  if choices:
    logging.info("%s", recipe.format_choices(choices))
  return config, choices


class _Replan:
  """Times a fresh quick-recipe run's steps and re-plans it, twice.

  First, once `budget.REPLAN_STEPS` steps are timed after the first
  `budget.REPLAN_WARMUP_STEPS` (compilation, then the input pipeline and
  allocator warming up: the steps right after the compilation ran ~8%
  slower than the run's average on shapes10): `recipe.rechoose` takes the
  measured speed to `recipe.choose` again; when that gives another input
  size, the run starts again at it (see `train_and_evaluate`). Otherwise
  `recipe.replan` turns the speed into the steps that fit the run's time
  (`budget.replan_steps`); the loop then gives the step the new schedule's
  steps (an input of the compiled step: nothing is compiled again).

  Then, at `budget.LATE_REPLAN_AT` of the steps, `recipe.replan` again at
  the speed of the steps since the first re-plan (the machine's speed
  moves within minutes), leaving out the time the loop spent evaluating
  and saving (it calls `resume` after them). A run started again at a new
  size (`first=False`) had its steps fitted to the time left when it
  started: the late re-plan only.

  Only for a run that chose its steps now, starts at step 0, runs on one
  process (every process would have to agree on the steps) and is planned
  at >= `10 * (budget.REPLAN_WARMUP_STEPS + budget.REPLAN_STEPS)` steps (no
  checkpoint or evaluation falls among the first timed steps; shorter runs
  take a minute or two).

  The loop calls `after_step(step)` once each step has been dispatched and
  the previous one has finished (the loop fetches its metrics), and
  `resume()` after an evaluation or a checkpoint; `done` once nothing is
  left to re-plan.
  """

  def __init__(self, choices, start, rechoose, setup_seconds, first=True):
    self.choices = choices
    self.start = start  # When training started (before reading the data).
    self.rechoose = rechoose  # None, or (config, fixed) for recipe.choose.
    self.setup_seconds = setup_seconds  # Fitting boxes, building, init.
    self.first = first  # The first re-plan is still to come.
    self.loop_start = time.monotonic()
    self.first_end = None  # When step REPLAN_WARMUP_STEPS had finished.
    # The late re-plan's clock: the steps after `late_from`, each from the
    # previous call (or `resume`) to its own.
    self.late_from = None if first else budget.REPLAN_WARMUP_STEPS
    self.late_step = None if first else self._late_step()
    self.late_seconds, self.late_steps = 0.0, 0
    self.last = None

  @classmethod
  def create(
    cls,
    choices: list,
    start_step: int,
    start: float,
    rechoose: tuple | None = None,
    setup_seconds: float = 0.0,
    first: bool = True,
  ) -> "_Replan | None":
    """The re-plan of a run, or None where there is none (see the class).

    Args:
      choices: the run's recipe choices.
      start_step: the step the run starts at.
      start: `time.monotonic()` when training started.
      rechoose: (the config `recipe.choose` adapted, the fields set on the
        command line) to choose the size again from the first timed steps;
        None: re-plan the steps only.
      setup_seconds: what the run took from its choices to its loop
        (fitting the default boxes, building, initialising), part of what
        starting again costs.
      first: False for a run started again: the late re-plan only.
    """
    planned = [
      c for c in choices if c.field == "num_steps" and c.source == "recipe"
    ]
    if (
      not planned
      or int(planned[0].value)
      < 10 * (budget.REPLAN_WARMUP_STEPS + budget.REPLAN_STEPS)
      or start_step != 0
      or jax.process_count() != 1
    ):
      return None
    return cls(list(choices), start, rechoose, setup_seconds, first)

  def _late_step(self) -> int | None:
    """The late re-plan's step for the current plan, if it leaves
    `budget.REPLAN_STEPS` timed steps after `late_from`."""
    steps = int({c.field: c for c in self.choices}["num_steps"].value)
    late = int(budget.LATE_REPLAN_AT * steps)
    return late if late - self.late_from >= budget.REPLAN_STEPS else None

  @property
  def done(self) -> bool:
    """Nothing is left to re-plan: the first re-plan is past and no late
    one is due (none fits, it happened, or the run starts again)."""
    return not self.first and self.late_step is None

  def resume(self) -> None:
    """The loop evaluated or saved since the last step: not a step's time."""
    self.last = time.monotonic()

  def after_step(
    self, step: int, can_restart: bool = True
  ) -> tuple[list, bool] | None:
    """When due: (the new choices, whether the run must start again at
    them), or None.

    Args:
      step: the steps dispatched.
      can_restart: False once the run holds a checkpoint (it would mix
        two models): then only the steps are re-planned.
    """
    now = time.monotonic()
    if (
      self.late_from is not None
      and self.last is not None
      and step > self.late_from
    ):
      self.late_seconds += now - self.last
      self.late_steps += 1
    self.last = now
    if self.first:
      return self._first(step, now, can_restart)
    if step != self.late_step:
      return None
    self.late_step = None  # Once.
    per_step = self.late_seconds / self.late_steps
    elapsed = now - self.start
    logging.info(
      "Timed steps %d-%d: %.1f ms per step (%.0f s since the start)",
      self.late_from,
      step - 1,
      per_step * 1e3,
      elapsed,
    )
    new = recipe.replan(self.choices, step, elapsed, per_step, 0.0)
    if new is None:
      return None
    self.choices = new
    return new, False

  def _first(self, step, now, can_restart):
    """The first re-plan (see the class), when due."""
    warm = budget.REPLAN_WARMUP_STEPS
    if step == warm + 1:  # Steps 1..warm have finished.
      self.first_end = now
    # At step warm + 1 + REPLAN_STEPS, steps warm + 1.. step - 1 are timed.
    if self.first_end is None or step != warm + 1 + budget.REPLAN_STEPS:
      return None
    self.first = False
    per_step = (now - self.first_end) / budget.REPLAN_STEPS
    # Step 1 compiled: what steps 1..warm took beyond steps is compilation.
    compile_seconds = max(
      0.0, self.first_end - self.loop_start - warm * per_step
    )
    logging.info(
      "Timed steps %d-%d: %.1f ms per step (%.1f s compiling, %.1f s since "
      "the start)",
      warm + 1,
      step - 1,
      per_step * 1e3,
      compile_seconds,
      now - self.start,
    )
    if self.rechoose is not None and can_restart:
      config, fixed = self.rechoose
      stats = box_stats.dataset_stats(config.data, "train")
      new = recipe.rechoose(stats, config, fixed, self.choices, step, per_step)
      if new is not None:
        # Its steps fitted to the time left: at the measured speed scaled
        # by the cost table from the old model to the new one, counting
        # what starting again costs (what this run took from its choices
        # to its first steps).
        batch = int(config.batch_size)
        new_step = (
          per_step
          * recipe.table_seconds_per_step(new, batch)
          / recipe.table_seconds_per_step(self.choices, batch)
        )
        fitted = recipe.replan(
          new,
          0,
          time.monotonic() - self.start,
          new_step,
          self.setup_seconds + compile_seconds,
        )
        return fitted or new, True
    elapsed = time.monotonic() - self.start
    # Only the schedule's steps change: the compiled step stays.
    new = recipe.replan(self.choices, step, elapsed, per_step, 0.0)
    self.late_from = step  # The late re-plan times the steps after this.
    if new is not None:
      self.choices = new
    self.late_step = self._late_step()
    return None if new is None else (new, False)


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  fixed: Collection[str] = (),
) -> dict[str, Any]:
  """Trains with periodic evaluation and checkpoints; resumes by itself.

  A fresh quick-recipe run (`config.recipe="quick"`) times its first steps
  and re-plans (`_Replan`): its steps to fit the time, or, when its own
  speed gives another input size than the probe's (`recipe.rechoose`), it
  starts again from step 0 at the new choices (new default boxes, model and
  steps; the first run's few steps are dropped: they trained another
  model); at 40% of the steps it re-plans them once more.

  Args:
    config: the full config (see configs/).
    workdir: output folder (checkpoints, metrics, eval results, pictures).
    fixed: dotted config fields set on the command line, which the quick
      recipe keeps (`adapt`).

  Returns:
    A summary dict: "step", "mAP" (last evaluation or None), "loss",
    "images_per_sec".

  Raises:
    NonFiniteLossError: when a step's loss is NaN or infinite.
    ValueError: on bad config values.
  """
  start = time.monotonic()
  config_lib.validate_config(config, jax.device_count(), jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  base = config
  config, choices = adapt(config, workdir, fixed)
  result = _train(config, choices, workdir, start, rechoose=(base, fixed))
  if isinstance(result, dict):
    return result
  # Started again at the size the run's own speed gives.
  choices = result
  if jax.process_index() == 0:  # Boxes first: a crash between keeps both old.
    boxes = os.path.join(workdir, DEFAULT_BOXES_FILE)
    if os.path.exists(boxes):  # Fitted again at the new size.
      os.remove(boxes)
    recipe.write(workdir, choices)
  logging.info(
    "Starting again at step 0 at the input size the timed steps give.\n%s",
    recipe.format_choices(choices),
  )
  config = recipe.apply(base, choices)
  return _train(config, choices, workdir, start, rechoose=None)


def _train(
  config: ml_collections.ConfigDict,
  choices: list,
  workdir: str,
  start: float,
  rechoose: tuple[ml_collections.ConfigDict, Collection[str]] | None,
) -> dict[str, Any] | list:
  """`train_and_evaluate` after the recipe: its summary, or the new choices
  to start again at. `rechoose`: the config `recipe.choose` adapted and the
  fields set on the command line; None for a run started again (its steps
  already fit the time left: the late re-plan only)."""
  config_lib.validate_config(config, jax.device_count(), jax.process_count())
  setup_start = time.monotonic()
  config = fit_priors(config, workdir)
  model, names = build(config, workdir)
  settings = step_lib.step_settings(model, config)
  tx, _ = optim.create_optimizer(config)  # The step's, for its state.
  priors = jnp.asarray(model.priors(), jnp.float32)
  checkpointer = ckpt_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints
  )
  writer = metrics_lib.MetricsWriter(workdir)
  start_step = 0
  if checkpointer.latest_step() is not None:  # Skips damaged newer steps.
    template = abstract_state(model, tx)
    start_step, state = checkpointer.restore_latest(template)
    logging.info("Resumed from step %d in %s", start_step, workdir)
  else:
    variables = init_variables(
      model, jax.random.key(config.seed), config.init_from
    )
    state = step_lib.create_train_state(
      variables["params"], tx, variables.get("batch_stats")
    )
  if int(state.step) != start_step:
    raise RuntimeError(
      f"checkpoint step {start_step} holds state.step={int(state.step)}"
    )

  evaluator = eval_lib.Evaluator(model, config, names)
  if start_step >= config.num_steps:  # Finished earlier: evaluate only.
    logging.info("Run already at step %d; evaluating.", start_step)
    checkpointer.close()
    writer.close()
    result = evaluator.run(state.variables(), start_step, workdir)
    return {
      "step": start_step,
      "mAP": result.mAP,
      "loss": None,
      "images_per_sec": float("nan"),
    }
  train_iter = pipeline.create_train_iterator(
    config.data,
    image_size=model.image_size,
    global_batch_size=config.batch_size,
    seed=config.seed,
    start_step=start_step,
    normalization=models.normalization_of(model),
  )
  parallel = step_lib.Parallel.create(config.parallel)
  p_state = parallel.put(state)
  del state
  priors = parallel.put_broadcast(priors)
  schedule = parallel.put_broadcast(
    jnp.asarray(optim.config_schedule_steps(config))
  )
  stop = _StopRequest()
  stop.install()
  progress = metrics_lib.Progress(config.num_steps, config.batch_size)
  # A run started again (`rechoose` None) has the late re-plan only.
  replan = _Replan.create(
    choices,
    start_step,
    start,
    rechoose,
    time.monotonic() - setup_start,
    first=rechoose is not None,
  )
  last_map = None
  last_metrics = {}
  pending = None  # (step, device metrics) of the previous step.
  step = start_step
  saved = False  # A checkpoint of this run (it started without one).
  try:
    while step < config.num_steps:
      batch = next(train_iter)
      batch = parallel.put_batch(
        {k: batch[k] for k in ("image", "boxes", "labels")}
      )
      p_state, p_metrics = parallel.step(
        p_state, batch, priors, schedule, settings
      )
      step += 1
      # Check the previous step's loss while this one runs (no stall).
      if pending is not None:
        last_metrics = _finish_step(pending, writer, progress, config)
      pending = (step, parallel.get, p_metrics)
      plan = None if replan is None else replan.after_step(step, not saved)
      if replan is not None and replan.done:
        replan = None
      if plan:
        choices, restart = plan
        if restart:
          _finish_step(pending, writer, progress, config)
          return choices
        if jax.process_index() == 0:
          recipe.write(workdir, choices)
        logging.info("%s", recipe.format_choices(choices))
        config = recipe.apply(config, choices)
        # The same settings: only the schedule's steps change (no compile).
        settings = step_lib.step_settings(model, config)
        schedule = parallel.put_broadcast(
          jnp.asarray(optim.config_schedule_steps(config))
        )
        progress.num_steps = config.num_steps
      stopping = stop.requested(step)
      is_last = step == config.num_steps
      do_eval = config.eval_every and (step % config.eval_every == 0)
      do_save = config.checkpoint_every and (
        step % config.checkpoint_every == 0
      )
      if do_eval or do_save or is_last or stopping:
        last_metrics = _finish_step(pending, writer, progress, config)
        pending = None
      eval_metrics = None
      if do_eval or is_last:
        variables = parallel.get(p_state.variables())
        result = evaluator.run(variables, step, workdir)
        last_map = result.mAP
        eval_metrics = {"mAP": float(result.mAP)}
        writer.write(step, eval_metrics)
      if do_save or is_last or stopping:
        checkpointer.save(step, parallel.get(p_state), metrics=eval_metrics)
        saved = True
      if replan is not None and (do_eval or do_save):
        replan.resume()  # Not a step's time.
      if stopping:
        logging.warning(
          "Stopped by signal at step %d (checkpoint saved).", step
        )
        break
    if pending is not None:
      last_metrics = _finish_step(pending, writer, progress, config)
  finally:
    stop.uninstall()
    checkpointer.close()
    writer.close()
  return {
    "step": step,
    "mAP": last_map,
    "loss": last_metrics.get("loss"),
    "images_per_sec": progress.images_per_sec(),
  }


def _finish_step(pending, writer, progress, config):
  """Fetches a step's metrics, checks the loss, logs/writes every N steps.

  `pending` is (step, the placement's `get`, the step's device metrics).
  """
  step, get, p_metrics = pending
  metrics = {k: float(v) for k, v in get(p_metrics).items()}
  check_finite(step, metrics)
  progress.update(step)
  if step % config.log_every == 0 or step == config.num_steps:
    metrics["images_per_sec"] = progress.images_per_sec()
    writer.write(step, metrics)
    progress.print_line(step, metrics)
  return metrics


def trained_config(
  config: ml_collections.ConfigDict, workdir: str
) -> ml_collections.ConfigDict:
  """The config a trained run used: its recipe's choices applied.

  Eval, predict and export start from the config file, not the run's
  choices: without them they would, for example, drop the test-time
  mirror (`eval.flip`) the recipe chose for the run's own evaluations.

  Args:
    config: the config given on the command line.
    workdir: the training workdir (`<workdir>/recipe.json`, if any).

  Returns:
    The config with the stored choices applied (as it is without them).
  """
  return recipe.resolve(config, workdir, choose_new=False)[0]


def restore_params(
  config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> tuple[Any, Any, list[str], int]:
  """Loads a checkpoint's parameters for eval / predict.

  Args:
    config: the full config.
    workdir: the training workdir.
    step: checkpoint step; default the latest that reads (a damaged newer
      one is skipped with a warning naming it, see
      `Checkpointer.restore_latest`).

  Returns:
    (model, variables ({"params"}, + "batch_stats" for a BatchNorm model),
    class_names, step).

  Raises:
    FileNotFoundError: when the workdir has no checkpoint.
    checkpoint.UnreadableCheckpointError: when the asked step, or every
      step, cannot be read.
  """
  config = trained_config(config, workdir)
  model, names = build(config, workdir)
  checkpointer = ckpt_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"), keep=0, read_only=True
  )
  try:
    if checkpointer.latest_step() is None:
      raise FileNotFoundError(
        f"No checkpoint in {os.path.join(workdir, 'checkpoints')}; train first "
        "(--mode=train) or pass the training --workdir."
      )
    tx, _ = optim.create_optimizer(config)
    template = abstract_state(model, tx)
    if step is None:  # The latest readable step (damaged ones are skipped).
      step, state = checkpointer.restore_latest(template)
    else:
      state = checkpointer.restore(step, template)
  finally:
    checkpointer.close()
  return model, state.variables(), names, step
