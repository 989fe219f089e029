"""The SSD training step: a pure per-device function and its pmap wrapper.

`train_step(state, batch, priors, settings)` uses only named-axis collectives
on `"batch"` (`lax.psum`, `lax.pmean`), so the same body runs under
`jax.pmap` (here, `p_train_step`) or under `jax.shard_map` over a device
mesh. `TrainState` holds state only (step, parameters, optimizer state,
a BatchNorm model's running statistics); what
the step needs besides state comes in as arguments: the default boxes
(`priors`, broadcast to every device) and `StepSettings` (static and
hashable: the model, the optax transformation, the lr schedule, and the
matching and loss settings), so equal settings share one compiled step.

Data parallelism: every device matches its images' ground truth on the device
(`vmap(match)`), counts its positives, and the MultiBox loss is normalised by
the positives of the *global* batch (`lax.psum`). Each device's loss is then
its share of the global loss, so the global gradient is the sum over devices;
we scale each device's gradient by the device count and `pmean` it, which is
the same sum and keeps the usual "pmean the gradients" shape of the step.
BatchNorm models normalise with the global batch's statistics
(`layers.batch_norm_axis`), as flax's `BatchNorm(axis_name=...)` computes
them. The result does not depend on how the global batch is split over
devices.
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from ssd_jax import losses, matching, optim
from ssd_jax.models import layers

AXIS = "batch"


class TrainState(struct.PyTreeNode):
  """The training state: what a checkpoint holds.

  Attributes:
    step: int32 scalar, number of updates applied.
    params: the model's parameter tree.
    opt_state: the optax state of the step's transformation.
    batch_stats: a BatchNorm model's running statistics ({} for the VGG
      models, which have none; an empty dict holds no leaves, so their
      checkpoints are as before).
  """

  step: jax.Array
  params: Any
  opt_state: Any
  batch_stats: Any = struct.field(default_factory=dict)

  def variables(self) -> dict[str, Any]:
    """The model's variables: {"params"} (+ {"batch_stats"} when any)."""
    if self.batch_stats:
      return {"params": self.params, "batch_stats": self.batch_stats}
    return {"params": self.params}


class StepSettings(NamedTuple):
  """Everything static the step needs (hashable: a jit/pmap static argument).

  Attributes:
    model: the flax SSD module (`model.apply`).
    tx: the optax transformation.
    lr_fn: step -> learning rate (reported in the metrics).
    iou_threshold: matching threshold.
    variances: SSD encoding variances (centre, size).
    neg_pos_ratio: hard negatives per positive.
    train_batch_norm: BatchNorm models: normalise with the (global) batch's
      statistics and update the running ones; False freezes them (running
      statistics, no updates: for small per-device batches).
  """

  model: Any
  tx: optax.GradientTransformation
  lr_fn: optax.Schedule
  iou_threshold: float = 0.5
  variances: tuple[float, float] = (0.1, 0.2)
  neg_pos_ratio: float = 3.0
  train_batch_norm: bool = True


def step_settings(
  model: Any, config: ml_collections.ConfigDict
) -> StepSettings:
  """The step's settings from a training config.

  Args:
    model: the SSD module.
    config: the training config (optimizer fields, `iou_threshold`,
      `variances`, `neg_pos_ratio`, `model.freeze_batch_norm`).

  Returns:
    StepSettings; equal configs and models give equal (same-hash) settings.
  """
  tx, schedule = optim.create_optimizer(config)
  return StepSettings(
    model=model,
    tx=tx,
    lr_fn=schedule,
    iou_threshold=float(config.iou_threshold),
    variances=tuple(float(v) for v in config.variances),
    neg_pos_ratio=float(config.neg_pos_ratio),
    train_batch_norm=not bool(config.model.get("freeze_batch_norm", False)),
  )


def create_train_state(
  params: Any, tx: optax.GradientTransformation, batch_stats: Any = None
) -> TrainState:
  """A state at step 0: `params`, `tx.init(params)` and the statistics."""
  return TrainState(
    step=jnp.zeros([], jnp.int32),
    params=params,
    opt_state=tx.init(params),
    batch_stats=batch_stats or {},
  )


def train_step(
  state: TrainState,
  batch: Mapping[str, jax.Array],
  priors: jax.Array,
  settings: StepSettings,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on this device's shard; run under axis "batch".

  Args:
    state: this device's (replicated) TrainState.
    batch: this device's shard: "image" [b, H, W, 3] float32 normalised,
      "boxes" [b, M, 4] float32 corners in [0, 1], "labels" [b, M] int32
      (0 = padding).
    priors: [P, 4] float32 default boxes, centre form (the same on every
      device).
    settings: the static StepSettings.

  Returns:
    (new state, metrics): metrics are global-batch scalars, identical on all
    devices: "loss", "loc_loss", "conf_loss" (normalised by the global
    positives), "num_positives" (global), "grad_norm", "lr".
  """
  loc_t, cls_t = matching.match_batch(
    batch["boxes"],
    batch["labels"],
    priors,
    iou_threshold=settings.iou_threshold,
    variances=settings.variances,
  )
  num_pos = jax.lax.psum(jnp.sum(cls_t > 0).astype(jnp.float32), AXIS)
  num_devices = jax.lax.psum(1, AXIS)

  bn = bool(state.batch_stats) and settings.train_batch_norm

  def loss_fn(params):
    variables = state.replace(params=params).variables()
    if bn:  # Global-batch statistics (synchronised BatchNorm), updated.
      with layers.batch_norm_axis(AXIS):
        (loc, logits), updated = settings.model.apply(
          variables, batch["image"], train=True, mutable=["batch_stats"]
        )
    else:  # No BatchNorm, or frozen: running statistics.
      loc, logits = settings.model.apply(variables, batch["image"])
      updated = {"batch_stats": state.batch_stats}
    loss, parts = losses.multibox_loss(
      loc,
      logits,
      loc_t,
      cls_t,
      neg_pos_ratio=settings.neg_pos_ratio,
      num_positives=num_pos,
    )
    # This device's share of the global loss; times D so pmean == psum.
    return loss * num_devices, (parts, updated["batch_stats"])

  grads, (parts, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  # Equal on every device already (synchronised statistics); the pmean
  # keeps the replicas bit-identical.
  batch_stats = jax.lax.pmean(batch_stats, AXIS)
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = settings.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
    "loss": jax.lax.psum(parts["loss"], AXIS),
    "loc_loss": jax.lax.psum(parts["loc_loss"], AXIS),
    "conf_loss": jax.lax.psum(parts["conf_loss"], AXIS),
    "num_positives": num_pos,
    "grad_norm": optax.tree.norm(grads),
    "lr": settings.lr_fn(state.step),
  }
  new_state = state.replace(
    step=state.step + 1,
    params=params,
    opt_state=opt_state,
    batch_stats=batch_stats,
  )
  return new_state, metrics


# pmap over the local devices: state and batch carry a leading device axis,
# the priors are broadcast, the settings static; the state is donated (its
# buffers are reused for the new state).
p_train_step = jax.pmap(
  train_step,
  axis_name=AXIS,
  in_axes=(0, 0, None),
  static_broadcasted_argnums=(3,),
  donate_argnums=(0,),
)


def replicate(tree: Any, num_devices: int | None = None) -> Any:
  """A copy of `tree` on each of D local devices, as pmap lays out arrays.

  The copies are made by a pmapped identity, so they carry exactly the
  layout `p_train_step` gives its outputs: the step's second call reuses
  the first call's compilation (numpy input would compile it twice).

  Args:
    tree: a pytree of arrays (host or device).
    num_devices: D; default `jax.local_device_count()`.

  Returns:
    The tree with each leaf broadcast to a leading axis of size D, on the
    first D local devices.
  """
  d = num_devices or jax.local_device_count()
  host = jax.device_get(tree)
  stacked = jax.tree.map(lambda x: np.stack([np.asarray(x)] * d), host)
  copy = jax.pmap(lambda t: t, axis_name=AXIS, devices=jax.local_devices()[:d])
  return copy(stacked)


def unreplicate(tree: Any) -> Any:
  """The first device's copy of a replicated tree, on the host (numpy)."""
  return jax.device_get(jax.tree.map(lambda x: x[0], tree))
