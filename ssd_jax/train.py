"""Training: restore or initialise, the loop, periodic evaluation, stops.

`train_and_evaluate(config, workdir)` is the whole run, in this order:
config validation -> model and class names -> restore the latest checkpoint
or initialise (from `config.init_from` when set) -> the tf.data iterator at
the restored step -> `step.p_train_step` on the local devices -> every N
steps: metrics, `evaluator.Evaluator.run`, checkpoints -> a final evaluation
and checkpoint. Resumption is exact: the data iterator restarts at the
checkpoint's step and all randomness derives from `config.seed` and the
step, so an interrupted run ends with the same parameters as an
uninterrupted one. A non-finite loss stops the run (the last good checkpoint
is kept); SIGTERM saves a checkpoint and returns (single process).

Multi-host: each process feeds its local devices after
`jax.distributed.initialize()` (`ssd_jax.runtime`).
"""

import math
import os
import signal
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ssd_jax import checkpoint as ckpt_lib
from ssd_jax import config as config_lib
from ssd_jax import evaluator as eval_lib
from ssd_jax import metrics_writer as metrics_lib
from ssd_jax import models, optim
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


class _StopRequest:
  """Set by SIGTERM: the loop saves a checkpoint and returns."""

  def __init__(self):
    self.signum = None
    self._previous = None

  def install(self):
    if jax.process_count() > 1:
      return  # Multi-host preemption needs a global agreement; not here.
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


def build(config: ml_collections.ConfigDict) -> tuple[Any, list[str]]:
  """The model and the dataset's class names from the config.

  Args:
    config: the full config.

  Returns:
    (model, class_names) with `num_classes = len(class_names) + 1`.
  """
  names = list(dataset.class_names(config.data))
  model = models.from_config(config.model, num_classes=len(names) + 1)
  return model, names


def _input(model: Any) -> jax.ShapeDtypeStruct:
  size = model.image_size
  return jax.ShapeDtypeStruct([1, size, size, 3], jnp.float32)


def init_variables(
  model: Any, rng: jax.Array, init_from: str = ""
) -> dict[str, Any]:
  """Fresh variables, overwritten from `init_from` when set.

  Args:
    model: the SSD module (any of the zoo).
    rng: PRNG key of the initialisation.
    init_from: a training workdir or a weights checkpoint
      (`checkpoint.init_variables_from`); "" for none.

  Returns:
    {"params": tree} and, for a BatchNorm model, "batch_stats".
  """
  variables = jax.jit(model.init)(rng, jnp.zeros(_input(model).shape))
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


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Trains with periodic evaluation and checkpoints; resumes by itself.

  Args:
    config: the full config (see configs/).
    workdir: output folder (checkpoints, metrics, eval results, pictures).

  Returns:
    A summary dict: "step", "mAP" (last evaluation or None), "loss",
    "images_per_sec".

  Raises:
    NonFiniteLossError: when a step's loss is NaN or infinite.
    ValueError: on bad config values.
  """
  config_lib.validate_config(config, jax.device_count(), jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  model, names = build(config)
  settings = step_lib.step_settings(model, config)
  priors = jnp.asarray(model.priors(), jnp.float32)
  checkpointer = ckpt_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints
  )
  writer = metrics_lib.MetricsWriter(workdir)
  start_step = 0
  if checkpointer.latest_step() is not None:  # Skips damaged newer steps.
    template = abstract_state(model, settings.tx)
    start_step, state = checkpointer.restore_latest(template)
    logging.info("Resumed from step %d in %s", start_step, workdir)
  else:
    variables = init_variables(
      model, jax.random.key(config.seed), config.init_from
    )
    state = step_lib.create_train_state(
      variables["params"], settings.tx, variables.get("batch_stats")
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
  p_state = step_lib.replicate(state)
  del state
  stop = _StopRequest()
  stop.install()
  progress = metrics_lib.Progress(config.num_steps, config.batch_size)
  last_map = None
  last_metrics = {}
  pending = None  # (step, device metrics) of the previous step.
  step = start_step
  try:
    while step < config.num_steps:
      batch = next(train_iter)
      batch = {k: batch[k] for k in ("image", "boxes", "labels")}
      p_state, p_metrics = step_lib.p_train_step(
        p_state, batch, priors, settings
      )
      step += 1
      # Check the previous step's loss while this one runs (no stall).
      if pending is not None:
        last_metrics = _finish_step(pending, writer, progress, config)
      pending = (step, p_metrics)
      is_last = step == config.num_steps
      do_eval = config.eval_every and (step % config.eval_every == 0)
      do_save = config.checkpoint_every and (
        step % config.checkpoint_every == 0
      )
      if do_eval or do_save or is_last or stop.signum is not None:
        last_metrics = _finish_step(pending, writer, progress, config)
        pending = None
      eval_metrics = None
      if do_eval or is_last:
        variables = step_lib.unreplicate(p_state.variables())
        result = evaluator.run(variables, step, workdir)
        last_map = result.mAP
        eval_metrics = {"mAP": float(result.mAP)}
        writer.write(step, eval_metrics)
      if do_save or is_last or stop.signum is not None:
        checkpointer.save(
          step, step_lib.unreplicate(p_state), metrics=eval_metrics
        )
      if stop.signum is not None:
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
  """Fetches a step's metrics, checks the loss, logs/writes every N steps."""
  step, p_metrics = pending
  metrics = {k: float(v) for k, v in step_lib.unreplicate(p_metrics).items()}
  check_finite(step, metrics)
  progress.update(step)
  if step % config.log_every == 0 or step == config.num_steps:
    metrics["images_per_sec"] = progress.images_per_sec()
    writer.write(step, metrics)
    progress.print_line(step, metrics)
  return metrics


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
  model, names = build(config)
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
