"""The SSD training step: a pure per-device body, under pmap or shard_map.

`train_step(state, batch, priors, schedule, settings)` uses only named-axis
collectives
on `"batch"` (`lax.psum`, `lax.pmean`), so the same body runs under
`jax.pmap` (here, `p_train_step`) or under `jax.shard_map` over a device
mesh. `TrainState` holds state only (step, parameters, optimizer state,
a BatchNorm model's running statistics); what
the step needs besides state comes in as arguments: the default boxes
(`priors`, broadcast to every device), the lr schedule's step counts
(`schedule`, `optim.config_schedule_steps`: an input, so a re-planned run
keeps its compiled step) and `StepSettings` (static and hashable: the
model, the optimizer less those counts, and the matching and loss
settings), so equal settings share one compiled step.

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

Two wrappers, one body (`config.parallel`, `config.PARALLEL_MODES`):

- "pmap" (the default, as the design card asks): `p_train_step`, with the
  state copied to every local device (`replicate`, a leading device axis)
  and the host batch split `[D, B/D, ...]`; `unreplicate` reads device 0's
  copy back.
- "shard_map": `s_train_step`, `jax.jit(jax.shard_map(train_step))` over a
  1-D `Mesh` of all devices with the axis "batch" (`make_mesh`). The state
  is one global `jax.Array` per leaf, replicated (`P()`), the batch one
  global array `[B, ...]` sharded over "batch" (`P("batch")`), laid out by
  `jax.make_array_from_process_local_data` from each process's rows: no
  per-device copies made by hand, and `jax.device_get` of a replicated
  array reads it back on every process. The body runs with
  `check_vma=False`: it is the pmap body, whose gradients are per device
  and `pmean`'d by hand (with the varying-axis check on, shard_map's
  transpose would already sum the replicated parameters' gradients).

`Parallel` hides the difference from the loop: `put` / `put_batch` /
`step` / `get`. Both modes write the same host checkpoint (numpy trees),
so a run may resume under the other mode.

Beyond data parallelism (not built): the shard_map form extends to bigger
backbones with a second mesh axis, e.g. `Mesh(devices.reshape(d, m),
("batch", "model"))`. FSDP shards each parameter and its optimizer state
along "model" (in_specs `P("model")` on its largest dimension instead of
`P()`), and the body `lax.all_gather`s a layer's weights over "model"
before using them (their gradients come back `psum_scatter`'d over
"model" by the transpose); tensor (model) parallelism instead keeps a
convolution's output channels sharded over "model" and `psum`s partial
sums where a layer contracts over them. The batch stays sharded over
"batch" only, so the loss, positives and BatchNorm collectives here keep
their axis; the state's specs become a pytree of `PartitionSpec`s (from
the parameter shapes) rather than the single `P()`, and the checkpoint,
a host tree, would need orbax's sharded save for states too big for one
host.
"""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ssd_jax import config as config_lib
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
    optimizer: the optimizer less its schedule's step counts (the step
      builds it with them: `optim.build_optimizer`).
    iou_threshold: matching threshold.
    variances: SSD encoding variances (centre, size).
    neg_pos_ratio: hard negatives per positive.
    train_batch_norm: BatchNorm models: normalise with the (global) batch's
      statistics and update the running ones; False freezes them (running
      statistics, no updates: for small per-device batches).
  """

  model: Any
  optimizer: optim.OptimizerSpec
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
    StepSettings; equal configs and models give equal (same-hash) settings,
    and so do configs that differ only in the schedule's step counts (the
    step's `schedule` input: `optim.config_schedule_steps`).
  """
  return StepSettings(
    model=model,
    optimizer=optim.optimizer_spec(config),
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
  schedule: jax.Array,
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
    schedule: [2 + B] float32, the lr schedule's step counts
      (`optim.config_schedule_steps`; the same on every device).
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
  tx, lr_fn = optim.build_optimizer(settings.optimizer, schedule)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
    "loss": jax.lax.psum(parts["loss"], AXIS),
    "loc_loss": jax.lax.psum(parts["loc_loss"], AXIS),
    "conf_loss": jax.lax.psum(parts["conf_loss"], AXIS),
    "num_positives": num_pos,
    "grad_norm": optax.tree.norm(grads),
    "lr": lr_fn(state.step),
  }
  new_state = state.replace(
    step=state.step + 1,
    params=params,
    opt_state=opt_state,
    batch_stats=batch_stats,
  )
  return new_state, metrics


# pmap over the local devices: state and batch carry a leading device axis,
# the priors and schedule are broadcast, the settings static; the state is
# donated (its buffers are reused for the new state).
p_train_step = jax.pmap(
  train_step,
  axis_name=AXIS,
  in_axes=(0, 0, None, None),
  static_broadcasted_argnums=(4,),
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


def make_mesh(devices: Any = None) -> Mesh:
  """The 1-D data-parallel mesh: every device of every process on "batch".

  Args:
    devices: the devices, in order; default `jax.devices()` (process by
      process, so the global batch is laid out as under pmap).

  Returns:
    Mesh with the single axis `AXIS`.
  """
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


@functools.partial(jax.jit, static_argnums=(4, 5), donate_argnums=(0,))
def s_train_step(
  state: TrainState,
  batch: Mapping[str, jax.Array],
  priors: jax.Array,
  schedule: jax.Array,
  settings: StepSettings,
  mesh: Mesh,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """`train_step` under `jax.shard_map` over `mesh` (axis "batch").

  Args:
    state: the TrainState, each leaf a global array replicated over `mesh`.
    batch: the global batch: "image" [B, H, W, 3], "boxes" [B, M, 4],
      "labels" [B, M], sharded over "batch" (`Parallel.put_batch`).
    priors: [P, 4] float32, replicated.
    schedule: [2 + B] float32, replicated.
    settings: the static StepSettings.
    mesh: the static 1-D mesh (`make_mesh`).

  Returns:
    (new state, metrics), replicated: the same values as `p_train_step`'s
    (one copy instead of one per device).
  """
  body = functools.partial(train_step, settings=settings)
  return jax.shard_map(
    body,
    mesh=mesh,
    in_specs=(P(), P(AXIS), P(), P()),
    out_specs=(P(), P()),
    check_vma=False,  # The pmap body: per-device gradients, pmean'd by hand.
  )(state, batch, priors, schedule)


@dataclasses.dataclass(frozen=True)
class Parallel:
  """How the loop places state and batches and runs the step, by mode.

  Attributes:
    mode: "pmap" or "shard_map" (`config.PARALLEL_MODES`).
    mesh: the 1-D mesh of mode "shard_map" (None for "pmap").
    num_devices: "pmap": the number D of local devices it maps over (the
      first D); "shard_map": the mesh's size.
  """

  mode: str
  mesh: Mesh | None = None
  num_devices: int = 1

  @classmethod
  def create(cls, mode: str, devices: Any = None) -> "Parallel":
    """The placement for `mode` over `devices`.

    Args:
      mode: "pmap" or "shard_map".
      devices: "shard_map": the mesh's devices (default all, of every
        process); "pmap": only their count D matters, the step maps over
        the first D local devices (default all local ones).

    Raises:
      ValueError: naming config.parallel and the valid modes.
    """
    config_lib.check_choice("parallel", mode, config_lib.PARALLEL_MODES)
    if mode == "pmap":
      count = jax.local_device_count() if devices is None else len(devices)
      return cls(mode, None, count)
    mesh = make_mesh(devices)
    return cls(mode, mesh, mesh.devices.size)

  def put(self, tree: Any) -> Any:
    """A host tree (the same on every process) on the devices, replicated.

    Returns:
      "pmap": `replicate(tree)` (leading local-device axis); "shard_map":
      global arrays replicated over the mesh.
    """
    if self.mesh is None:
      return replicate(tree, self.num_devices)
    sharding = NamedSharding(self.mesh, P())
    return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      jax.device_get(tree),
    )

  def put_broadcast(self, x: Any) -> Any:
    """An argument each device sees whole (the priors, the schedule's
    steps): as given for "pmap" (broadcast by `in_axes=None`), replicated
    for "shard_map"."""
    return x if self.mesh is None else self.put(x)

  def put_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """This process's rows of the global batch, laid out for `step`.

    Args:
      batch: host arrays [D, b, ...] (D local devices, as
        `pipeline.create_train_iterator` yields them).

    Returns:
      "pmap": the arrays as given; "shard_map": global arrays [B, ...]
      sharded over "batch" (B = b x all devices), this process's D x b
      rows on its devices in order.
    """
    if self.mesh is None:
      return dict(batch)
    sharding = NamedSharding(self.mesh, P(AXIS))
    return {
      k: jax.make_array_from_process_local_data(
        sharding, np.reshape(v, (-1, *np.shape(v)[2:]))
      )
      for k, v in batch.items()
    }

  def step(
    self,
    state: Any,
    batch: Mapping[str, Any],
    priors: Any,
    schedule: Any,
    settings: StepSettings,
  ) -> tuple[Any, dict[str, Any]]:
    """One update (`p_train_step` or `s_train_step`); `state` is donated."""
    if self.mesh is None:
      return p_train_step(state, batch, priors, schedule, settings)
    return s_train_step(state, batch, priors, schedule, settings, self.mesh)

  def get(self, tree: Any) -> Any:
    """One copy of a placed tree (state or metrics) on the host (numpy)."""
    if self.mesh is None:
      return unreplicate(tree)
    return jax.device_get(tree)
