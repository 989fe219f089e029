"""Checkpoints with orbax-checkpoint: save, keep last K and best, restore.

A checkpoint holds the train state's data (`step`, `params`, `opt_state`) as
a plain nested dict of numpy arrays (`flax.serialization.to_state_dict`), and
an optional metrics dict (`{"mAP": ...}`) that orbax uses to keep the best.
Retention: the last `keep` checkpoints plus the one with the highest mAP.
"""

import os
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from ssd_jax import weights

_BEST_METRIC = "mAP"


def _best_metric(metrics: dict[str, float]) -> float:
  return float(metrics[_BEST_METRIC])


class Checkpointer:
  """A `CheckpointManager` keeping the last `keep` and the best by mAP.

  Args:
    directory: where step folders are written (created if missing).
    keep: number of most recent checkpoints kept (>= 1; 0 means 1 when
      saving); the best-mAP checkpoint is kept in addition.
    read_only: open without creating or deleting anything.
  """

  def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    policy = pp.AnyPreservationPolicy(
      policies=[
        pp.LatestN(n=max(int(keep), 1)),
        pp.BestN(
          get_metric_fn=_best_metric,
          n=1,
          keep_checkpoints_without_metrics=False,
        ),
      ]
    )
    options = ocp.CheckpointManagerOptions(
      create=not read_only,
      read_only=read_only,
      preservation_policy=None if read_only else policy,
      # best_fn makes orbax write each step's metrics next to it, so the
      # best checkpoint is still known after a restart.
      best_fn=_best_metric,
      best_mode="max",
      # Synchronous saves: a SIGTERM/SIGKILL right after save() returns
      # cannot lose the checkpoint, and tiny models save in milliseconds.
      enable_async_checkpointing=False,
    )
    if read_only and not os.path.isdir(self.directory):
      raise FileNotFoundError(f"No checkpoint folder {self.directory}")
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    """The newest saved step, or None when there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """All saved steps, ascending."""
    return sorted(self._manager.all_steps())

  def best_step(self) -> int | None:
    """The saved step with the highest mAP, or None without metrics."""
    best, best_map = None, None
    for step in self.all_steps():
      metrics = self._manager.metrics(step)
      if metrics and _BEST_METRIC in metrics:
        value = float(metrics[_BEST_METRIC])
        if best_map is None or value > best_map:
          best, best_map = step, value
    return best

  def save(
    self, step: int, state: Any, metrics: dict[str, float] | None = None
  ) -> None:
    """Saves `state` at `step` (overwrites nothing; skips an existing step).

    Args:
      step: the number of updates in `state`.
      state: a TrainState (or any flax-serialisable tree), host or device.
      metrics: optional {"mAP": float} used to keep the best checkpoint.
    """
    if step in self._manager.all_steps():
      logging.info("Checkpoint for step %d exists; not saved again.", step)
      return
    tree = _state_dict(state)
    if metrics is not None:
      metrics = {k: float(v) for k, v in metrics.items()}
    self._manager.save(
      step,
      args=ocp.args.StandardSave(tree),
      metrics=metrics,
      force=True,
    )
    self._manager.wait_until_finished()
    logging.info("Saved checkpoint for step %d in %s", step, self.directory)

  def restore(self, step: int, template: Any) -> Any:
    """Restores the state saved at `step` into the structure of `template`.

    Args:
      step: a saved step.
      template: a state with the same structure (values are ignored).

    Returns:
      `template` with its data replaced by the checkpoint's (numpy).

    Raises:
      FileNotFoundError: when `step` was not saved.
    """
    if step not in self._manager.all_steps():
      raise FileNotFoundError(
        f"No checkpoint for step {step} in {self.directory}; saved steps: "
        f"{self.all_steps()}"
      )
    target = _state_dict(template)
    raw = self._manager.restore(step, args=ocp.args.StandardRestore(target))
    raw = jax.tree.map(np.asarray, raw)
    return flax.serialization.from_state_dict(template, raw)

  def restore_raw(self, step: int) -> dict[str, Any]:
    """The saved tree at `step` as nested dicts of numpy arrays."""
    raw = self._manager.restore(step, args=ocp.args.StandardRestore())
    return jax.tree.map(np.asarray, raw)

  def close(self) -> None:
    """Waits for pending writes and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


def _state_dict(state: Any) -> Any:
  host = jax.device_get(flax.serialization.to_state_dict(state))
  return jax.tree.map(np.asarray, host)


def init_params_from(path: str, params: Any) -> tuple[Any, str]:
  """Initialises parameters from a training run or converted weights.

  `path` may be a training workdir or its `checkpoints/` folder (the latest
  step's params are used), or a weights checkpoint written by
  `ssd_jax.weights` (`python -m ssd_jax.weights ...`, read with
  `weights.load_params`; a VGG16 import holds only the trunk). Leaves whose
  shape differs (e.g. class heads for another class count) stay as
  initialised.

  Args:
    path: folder.
    params: the freshly initialised parameter tree.

  Returns:
    (params, one-line report of what was loaded).

  Raises:
    FileNotFoundError: when `path` does not exist or holds no checkpoint.
    KeyError: naming a loaded parameter the model does not have.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.init_from={path!r} does not exist")
  folder = path
  if os.path.isdir(os.path.join(path, "checkpoints")):
    folder = os.path.join(path, "checkpoints")
  is_manager = os.path.isdir(folder) and any(
    name.isdigit() for name in os.listdir(folder)
  )
  if is_manager:
    ckpt = Checkpointer(folder, read_only=True)
    try:
      step = ckpt.latest_step()
      source = ckpt.restore_raw(step)["params"]
    finally:
      ckpt.close()
  else:
    source = weights.load_params(path)
  merged = weights.merge_params(params, source, skip_mismatched=True)
  flat_new = flax.traverse_util.flatten_dict(source)
  flat_old = flax.traverse_util.flatten_dict(params)
  loaded = sum(
    1
    for k, v in flat_new.items()
    if k in flat_old and np.shape(v) == np.shape(flat_old[k])
  )
  summary = (
    f"{loaded} of {len(flat_old)} parameter arrays loaded from {path}"
    f" ({len(flat_new) - loaded} skipped for shape)"
  )
  return merged, summary
