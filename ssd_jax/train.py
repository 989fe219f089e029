"""Training: train state, the pmapped SSD train step and the training loop.

The step is a module-level pure function `train_step(state, batch)` that uses
only named-axis collectives on `"batch"`; `train_and_evaluate` wraps it in
`jax.pmap` over the local devices (each host feeds its own devices when run
multi-host after `jax.distributed.initialize()`).

Data parallelism: every device matches its images' ground truth on the device
(`vmap(match)`), counts its positives, and the MultiBox loss is normalised by
the positives of the *global* batch (`lax.psum`). Each device's loss is then
its share of the global loss, so the global gradient is the sum over devices;
we scale each device's gradient by the device count and `pmean` it, which is
the same sum and keeps the usual "pmean the gradients" shape of the step. The
result does not depend on how the global batch is split over devices.
"""

import functools
import importlib.util
import math
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import struct

from ssd_jax import checkpoint as ckpt_lib
from ssd_jax import losses, matching
from ssd_jax import metrics_writer as metrics_lib

AXIS = "batch"


class TrainState(struct.PyTreeNode):
  """Replicable training state; only `step`, `params`, `opt_state` are data.

  Attributes:
    step: int32 scalar, number of updates applied.
    params: the model's parameter tree.
    opt_state: the optax state of `tx`.
    apply_fn: `model.apply`.
    tx: the optax transformation.
    match_fn: `(gt_boxes [M, 4], gt_labels [M]) -> (loc_t [P, 4], cls_t [P])`,
      matching against the model's priors (closed over, static).
    lr_fn: step -> learning rate (for logging).
    neg_pos_ratio: hard negatives per positive.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  apply_fn: Callable = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  match_fn: Callable = struct.field(pytree_node=False)
  lr_fn: Callable = struct.field(pytree_node=False)
  neg_pos_ratio: float = struct.field(pytree_node=False, default=3.0)


def create_learning_rate_schedule(
  base_lr: float,
  warmup_steps: int = 0,
  warmup_init_factor: float = 0.0,
  boundaries: tuple[int, ...] = (),
  decay_factor: float = 0.1,
) -> optax.Schedule:
  """Linear warm-up, then piecewise-constant decay at absolute steps.

  lr(t) = base_lr * (f0 + (1 - f0) t / W) for t < W (f0 the warm-up initial
  factor), then base_lr * decay_factor ** (number of boundaries <= t).

  Args:
    base_lr: the learning rate after warm-up.
    warmup_steps: W, length of the linear warm-up (0: none).
    warmup_init_factor: f0, fraction of base_lr at step 0.
    boundaries: absolute steps at which the lr is multiplied by decay_factor.
    decay_factor: multiplier applied at each boundary.

  Returns:
    An optax schedule (step -> lr float32).

  Raises:
    ValueError: on a negative base_lr / warm-up or unsorted boundaries.
  """
  if base_lr < 0 or warmup_steps < 0:
    raise ValueError(
      f"learning rate and warmup_steps must be >= 0, got {base_lr}, "
      f"{warmup_steps}"
    )
  boundaries = tuple(int(b) for b in boundaries)
  if list(boundaries) != sorted(boundaries):
    raise ValueError(f"lr boundaries must be increasing, got {boundaries}")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    decay = jnp.ones([], jnp.float32)
    for b in boundaries:
      decay = decay * jnp.where(step >= b, decay_factor, 1.0)
    lr = base_lr * decay
    if warmup_steps > 0:
      frac = warmup_init_factor + (1.0 - warmup_init_factor) * (
        step / warmup_steps
      )
      lr = jnp.where(step < warmup_steps, lr * frac, lr)
    return lr

  return schedule


def weight_decay_mask(params: Any) -> Any:
  """Which parameters take weight decay: everything except biases.

  The Caffe release (`ssd_pascal.py`) gives weights `decay_mult: 1` and biases
  `decay_mult: 0`; the conv4_3 L2Normalize scale has no param spec there, so
  it takes the default `decay_mult: 1` and is decayed too. We follow that:
  leaves named `bias` are not decayed, all others (kernels, the L2Norm scale)
  are.

  Args:
    params: a parameter tree (nested dicts).

  Returns:
    The same tree structure with bool leaves.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  mask = {k: k[-1] != "bias" for k in flat}
  return flax.traverse_util.unflatten_dict(mask)


def create_optimizer(
  config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """SGD with momentum, coupled weight decay, warm-up + step decay, clipping.

  Caffe's update: `v = m v + lr (g + wd w); w -= v`, i.e. L2 decay added to
  the gradient before momentum; optax's trace differs only in where lr
  enters the momentum buffer (identical at constant lr).

  Args:
    config: the training config (fields `optimizer` ("sgd" | "adam"; adam
      with the same L2 term, for small from-scratch models), `learning_rate`,
      `warmup_steps`,
      `warmup_init_factor`, `lr_boundaries`, `lr_decay_factor`, `momentum`,
      `weight_decay`, `grad_clip_norm` (0 disables)).

  Returns:
    (optax transformation, lr schedule).
  """
  # Memoised on the values: equal configs give the very same (static) tx
  # and schedule, so a second run in one process reuses the compiled step.
  return _optimizer(
    config.get("optimizer", "sgd"),
    float(config.learning_rate),
    int(config.warmup_steps),
    float(config.warmup_init_factor),
    tuple(int(b) for b in config.lr_boundaries),
    float(config.lr_decay_factor),
    float(config.momentum or 0.0),
    float(config.weight_decay or 0.0),
    float(config.grad_clip_norm or 0.0),
  )


@functools.lru_cache(maxsize=16)
def _optimizer(
  name,
  learning_rate,
  warmup_steps,
  warmup_init_factor,
  boundaries,
  decay_factor,
  momentum,
  weight_decay,
  grad_clip_norm,
):
  schedule = create_learning_rate_schedule(
    learning_rate,
    warmup_steps=warmup_steps,
    warmup_init_factor=warmup_init_factor,
    boundaries=boundaries,
    decay_factor=decay_factor,
  )
  parts = []
  if grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(grad_clip_norm))
  if weight_decay:
    parts.append(
      optax.add_decayed_weights(weight_decay, mask=weight_decay_mask)
    )
  if name == "sgd":
    parts.append(optax.sgd(schedule, momentum=momentum or None))
  elif name == "adam":
    parts.append(optax.adam(schedule))
  else:
    raise ValueError(f"config.optimizer must be 'sgd' or 'adam', got {name!r}")
  return optax.chain(*parts), schedule


@functools.lru_cache(maxsize=16)
def apply_fn_of(model: Any) -> Callable:
  """`model.apply`, one object per equal model (modules compare by fields).

  Bound methods of equal modules are not equal, so jit/pmap would compile
  again for every new model object; this keeps one per model value.
  """
  return model.apply


@functools.lru_cache(maxsize=16)
def _match_fn(priors_bytes, num_priors, iou_threshold, variances):
  """`match` bound to priors; memoised so equal priors give one function."""
  priors = np.frombuffer(priors_bytes, np.float32).reshape(num_priors, 4)
  return functools.partial(
    matching.match,
    priors=jnp.asarray(priors),
    iou_threshold=iou_threshold,
    variances=variances,
  )


def create_train_state(
  model: Any,
  config: ml_collections.ConfigDict,
  rng: jax.Array,
  params: Any | None = None,
) -> TrainState:
  """Initialises parameters (unless given) and the optimizer state.

  Args:
    model: an `ssd_jax.models.SSD` (provides `apply`, `priors()`,
      `image_size`).
    config: the training config (optimizer fields, `iou_threshold`,
      `variances`, `neg_pos_ratio`).
    rng: PRNG key for parameter initialisation.
    params: optional parameters to start from instead of a fresh init.

  Returns:
    An unreplicated TrainState at step 0.
  """
  if params is None:
    size = model.image_size
    dummy = jnp.zeros([1, size, size, 3], jnp.float32)
    params = jax.jit(model.init)(rng, dummy)["params"]
  tx, schedule = create_optimizer(config)
  priors = np.ascontiguousarray(model.priors(), np.float32)
  match_fn = _match_fn(
    priors.tobytes(),
    priors.shape[0],
    float(config.iou_threshold),
    tuple(float(v) for v in config.variances),
  )
  return TrainState(
    step=jnp.zeros([], jnp.int32),
    params=params,
    opt_state=tx.init(params),
    apply_fn=apply_fn_of(model),
    tx=tx,
    match_fn=match_fn,
    lr_fn=schedule,
    neg_pos_ratio=float(config.neg_pos_ratio),
  )


def train_step(
  state: TrainState, batch: Mapping[str, jax.Array]
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on this device's shard; call under pmap(axis_name="batch").

  Args:
    state: this device's (replicated) TrainState.
    batch: this device's shard: "image" [b, H, W, 3] float32 normalised,
      "boxes" [b, M, 4] float32 corners in [0, 1], "labels" [b, M] int32
      (0 = padding).

  Returns:
    (new state, metrics): metrics are global-batch scalars, identical on all
    devices: "loss", "loc_loss", "conf_loss" (normalised by the global
    positives), "num_positives" (global), "grad_norm", "lr".
  """
  loc_t, cls_t = jax.vmap(state.match_fn)(batch["boxes"], batch["labels"])
  num_pos = jax.lax.psum(jnp.sum(cls_t > 0).astype(jnp.float32), AXIS)
  num_devices = jax.lax.psum(1, AXIS)

  def loss_fn(params):
    loc, logits = state.apply_fn({"params": params}, batch["image"])
    loss, parts = losses.multibox_loss(
      loc,
      logits,
      loc_t,
      cls_t,
      neg_pos_ratio=state.neg_pos_ratio,
      num_positives=num_pos,
    )
    # This device's share of the global loss; times D so pmean == psum.
    return loss * num_devices, parts

  grads, parts = jax.grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
    "loss": jax.lax.psum(parts["loss"], AXIS),
    "loc_loss": jax.lax.psum(parts["loc_loss"], AXIS),
    "conf_loss": jax.lax.psum(parts["conf_loss"], AXIS),
    "num_positives": num_pos,
    "grad_norm": optax.tree.norm(grads),
    "lr": state.lr_fn(state.step),
  }
  new_state = state.replace(
    step=state.step + 1, params=params, opt_state=opt_state
  )
  return new_state, metrics


# pmap wrapper, state donated (its buffers are reused for the new state).
p_train_step = jax.pmap(train_step, axis_name=AXIS, donate_argnums=(0,))


def replicate(tree: Any, num_devices: int | None = None) -> Any:
  """Host tree -> stacked [D, ...] numpy copies for a pmapped function.

  Args:
    tree: a pytree of arrays (host or device).
    num_devices: D; default `jax.local_device_count()`.

  Returns:
    The tree with each leaf broadcast to a leading axis of size D (numpy).
  """
  d = num_devices or jax.local_device_count()
  host = jax.device_get(tree)
  return jax.tree.map(lambda x: np.stack([np.asarray(x)] * d), host)


def unreplicate(tree: Any) -> Any:
  """The first device's copy of a replicated tree, on the host (numpy)."""
  return jax.device_get(jax.tree.map(lambda x: x[0], tree))


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


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the training fields that would otherwise fail obscurely.

  Args:
    config: the training config.

  Raises:
    ValueError: naming the bad field.
    FileNotFoundError: when config.data.root is not a folder.
  """
  n_dev = jax.device_count()
  if config.batch_size <= 0 or config.batch_size % n_dev:
    raise ValueError(
      f"config.batch_size={config.batch_size} must be a positive multiple of "
      f"the number of devices ({n_dev}: {jax.process_count()} process(es) x "
      f"{jax.local_device_count()} local device(s))"
    )
  for field in ("num_steps", "log_every"):
    if config[field] <= 0:
      raise ValueError(f"config.{field} must be > 0, got {config[field]}")
  for field in ("eval_every", "checkpoint_every", "keep_checkpoints"):
    if config[field] < 0:
      raise ValueError(f"config.{field} must be >= 0, got {config[field]}")
  data = config.data
  if data.get("source") == "voc_folder":
    root = data.get("root") or ""
    if not root:
      raise ValueError(
        "config.data.root must name the VOC-format folder (holding "
        "JPEGImages/, Annotations/, ImageSets/Main/) for source 'voc_folder'"
      )
    if not os.path.isdir(root):
      raise FileNotFoundError(
        f"config.data.root={root!r} is not a folder (source 'voc_folder')"
      )
  if config.eval.metric not in ("voc", "coco"):
    raise ValueError(
      f"config.eval.metric must be 'voc' or 'coco', got {config.eval.metric!r}"
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


def _init_params(config, model, rng):
  """Fresh parameters, overwritten from config.init_from when set."""
  size = model.image_size
  params = jax.jit(model.init)(rng, jnp.zeros([1, size, size, 3], jnp.float32))[
    "params"
  ]
  if config.init_from:
    params, report = ckpt_lib.init_params_from(config.init_from, params)
    logging.info("init_from %s: %s", config.init_from, report)
  return params


def build(config: ml_collections.ConfigDict):
  """Model, class names and eval settings from the config.

  Args:
    config: the full config.

  Returns:
    (model, class_names).
  """
  from ssd_jax import data as data_lib  # noqa: PLC0415 (heavy import: tf)
  from ssd_jax import models  # noqa: PLC0415

  names = list(data_lib.class_names(config.data))
  model = models.from_config(config.model, num_classes=len(names) + 1)
  return model, names


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Trains with periodic evaluation and checkpoints; resumes by itself.

  Resumption: the latest checkpoint in `workdir/checkpoints` is restored and
  the data iterator restarts at that step (`start_step`), and all randomness
  derives from `config.seed` and the step, so an interrupted run ends with the
  same parameters as an uninterrupted one.

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
  from ssd_jax import data as data_lib  # noqa: PLC0415
  from ssd_jax import evaluate as eval_lib  # noqa: PLC0415

  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  model, names = build(config)
  rng = jax.random.key(config.seed)
  checkpointer = ckpt_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    keep=config.keep_checkpoints,
  )
  writer = metrics_lib.MetricsWriter(workdir)
  start_step = checkpointer.latest_step() or 0
  if start_step:
    template = create_train_state(model, config, rng, params=_abstract(model))
    state = checkpointer.restore(start_step, template)
    logging.info("Resumed from step %d in %s", start_step, workdir)
  else:
    params = _init_params(config, model, rng)
    state = create_train_state(model, config, rng, params=params)
  if int(state.step) != start_step:
    raise RuntimeError(
      f"checkpoint step {start_step} holds state.step={int(state.step)}"
    )

  evaluator = eval_lib.Evaluator(model, config, names)
  if start_step >= config.num_steps:  # Finished earlier: evaluate only.
    logging.info("Run already at step %d; evaluating.", start_step)
    checkpointer.close()
    writer.close()
    result = evaluator.run(state.params, start_step, workdir)
    return {
      "step": start_step,
      "mAP": result.mAP,
      "loss": None,
      "images_per_sec": float("nan"),
    }
  train_iter = data_lib.create_train_iterator(
    config.data,
    image_size=model.image_size,
    global_batch_size=config.batch_size,
    seed=config.seed,
    start_step=start_step,
  )
  p_state = replicate(state)
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
      p_state, p_metrics = p_train_step(p_state, batch)
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
        params = unreplicate(p_state.params)
        result = evaluator.run(params, step, workdir)
        last_map = result.mAP
        eval_metrics = {"mAP": float(result.mAP)}
        writer.write(step, eval_metrics)
      if do_save or is_last or stop.signum is not None:
        checkpointer.save(step, unreplicate(p_state), metrics=eval_metrics)
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
  metrics = {k: float(v) for k, v in unreplicate(p_metrics).items()}
  check_finite(step, metrics)
  progress.update(step)
  if step % config.log_every == 0 or step == config.num_steps:
    metrics["images_per_sec"] = progress.images_per_sec()
    writer.write(step, metrics)
    progress.print_line(step, metrics)
  return metrics


def _abstract(model):
  """Parameter shapes without computing them (for restore templates)."""
  size = model.image_size
  shapes = jax.eval_shape(
    model.init,
    jax.random.key(0),
    jax.ShapeDtypeStruct([1, size, size, 3], jnp.float32),
  )["params"]
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def restore_params(
  config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> tuple[Any, Any, list[str], int]:
  """Loads a checkpoint's parameters for eval / predict.

  Args:
    config: the full config.
    workdir: the training workdir.
    step: checkpoint step; default the latest.

  Returns:
    (model, params, class_names, step).

  Raises:
    FileNotFoundError: when the workdir has no checkpoint.
  """
  model, names = build(config)
  checkpointer = ckpt_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"), keep=0, read_only=True
  )
  try:
    step = step if step is not None else checkpointer.latest_step()
    if step is None:
      raise FileNotFoundError(
        f"No checkpoint in {os.path.join(workdir, 'checkpoints')}; train first "
        "(--mode=train) or pass the training --workdir."
      )
    template = create_train_state(
      model, config, jax.random.key(0), params=_abstract(model)
    )
    state = checkpointer.restore(step, template)
  finally:
    checkpointer.close()
  return model, state.params, names, step


def config_from_file(
  path: str, arg: str | None = None
) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file such as `configs/voc.py`.

  What `--config=path:arg` gives on the command line, for code and tests.

  Args:
    path: a Python file defining `get_config(arg=None)`.
    arg: the text after ":" (e.g. "small"), or None.

  Returns:
    The file's ConfigDict.

  Raises:
    FileNotFoundError: naming the path when it does not exist.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} not found")
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"ssd_jax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def base_config() -> ml_collections.ConfigDict:
  """Training defaults shared by configs/*.py: the paper's VOC recipe.

  SGD momentum 0.9, weight decay 5e-4 (not on biases, see
  `weight_decay_mask`), lr 1e-3 after a linear warm-up, batch 32, 120k steps
  with x0.1 decays at 80k and 100k (the Caffe release, 07+12), VOC07
  11-point mAP evaluation with the release's inference settings.

  Returns:
    A ConfigDict; `model` and `data` must be filled in by the config file.
  """
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(
    {
      "name": "ssd300",
      "image_size": 300,
      "width": 1.0,
      "dtype": "float32",
      "param_dtype": "float32",
      # "torchvision" for weights imported with `ssd_jax.weights --from
      # torchvision-ssd300` (trained with torchvision's default boxes).
      "priors": "default",
      # Cheaper max-pool gradient on XLA CPU; "auto" = on for the CPU.
      "cpu_fast_ops": "auto",
    }
  )
  c.data = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 32
  c.num_steps = 120_000
  c.optimizer = "sgd"
  c.learning_rate = 1e-3
  c.warmup_steps = 1_000
  c.warmup_init_factor = 0.1
  c.lr_boundaries = (80_000, 100_000)
  c.lr_decay_factor = 0.1
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.grad_clip_norm = 0.0  # 0: no clipping.
  c.neg_pos_ratio = 3.0
  c.iou_threshold = 0.5
  c.variances = (0.1, 0.2)
  c.init_from = ""
  c.log_every = 50
  c.eval_every = 10_000
  c.checkpoint_every = 5_000
  c.keep_checkpoints = 3
  c.eval = ml_collections.ConfigDict(
    {
      "metric": "voc",
      "use_07_metric": True,
      "score_threshold": 0.01,
      "nms_threshold": 0.45,
      "top_k_per_class": 400,
      "max_detections": 200,
      "batch_size": 8,
      "num_pictures": 8,
    }
  )
  return c


def apply_small(
  config: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """The small CPU model and schedule of configs/shapes.py (`:small`).

  A width-1/4 SSD on 96x96 inputs (832 default boxes), batch 16, a short
  schedule with a larger learning rate; suited to the synthetic shapes set
  or a quick local smoke run of another dataset.

  Args:
    config: a full config; modified in place.

  Returns:
    The same config.
  """
  config.model.name = "ssd"
  config.model.image_size = 96
  config.model.width = 0.25
  config.batch_size = 16
  config.num_steps = 1_200
  # A width-1/4 VGG without pre-training and without batch norm trains far
  # more reliably with Adam than with the paper's SGD (SGD at lr 0.02
  # diverged here); the L2 term stays as in the recipe.
  config.optimizer = "adam"
  config.learning_rate = 2e-3
  config.warmup_steps = 100
  config.warmup_init_factor = 0.1
  config.lr_boundaries = (900, 1_100)
  config.grad_clip_norm = 0.0
  config.log_every = 50
  config.eval_every = 400
  config.checkpoint_every = 200
  config.eval.batch_size = 32
  config.eval.top_k_per_class = 100
  config.eval.max_detections = 50
  return config
