"""Checkpoints with orbax-checkpoint: save, keep last K and best, restore.

A checkpoint holds the train state's data (`step`, `params`, `opt_state`) as
a plain nested dict of numpy arrays (`flax.serialization.to_state_dict`), and
an optional metrics dict (`{"mAP": ...}`) that orbax uses to keep the best.
Retention: the last `keep` checkpoints plus the one with the highest mAP.

Damaged checkpoints (a file deleted or truncated, garbage over metadata, a
step folder emptied by hand): `Checkpointer.restore_latest` resumes from the
newest step that reads, with a WARNING naming each bad step, its folder and
why, and renames the bad newer ones `<step>.corrupt` (orbax ignores such
names, so the next save of that step and `latest_step` work as before);
only when no step reads is it an error, listing every step. A metrics file
that does not parse is set aside as `metrics.corrupt` when the folder is
opened for writing (its step stays, without a metric).

Multi-process runs: every process calls `save` with the same host tree (the
training loop's `step.Parallel.get`, under pmap or shard_map alike), and
orbax writes one copy from the primary process, the others waiting at its
barriers; renames of damaged steps happen on process 0 only. As the
checkpoint holds whole host arrays, not per-device shards, it restores on
any process and device count (two processes -> one: tests/test_multihost.py)
and under either `config.parallel`.
"""

import json
import os
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_manager as ocp_manager
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from ssd_jax import weights
from ssd_jax.weights.io import describe_error, merge_params_report

_BEST_METRIC = "mAP"
_CORRUPT_SUFFIX = ".corrupt"


class UnreadableCheckpointError(RuntimeError):
  """A saved checkpoint step (or every one of them) could not be read."""


def _best_metric(metrics: dict[str, float]) -> float:
  return float(metrics[_BEST_METRIC])


class Checkpointer:
  """A `CheckpointManager` keeping the last `keep` and the best by mAP.

  Args:
    directory: where step folders are written (created if missing).
    keep: number of most recent checkpoints kept (>= 1; 0 means 1 when
      saving); the best-mAP checkpoint is kept in addition.
    read_only: open without creating, renaming or deleting anything (and
      without reading each step's metrics up front).
  """

  def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
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
      # Reading only: no retention, so no need to read every step's
      # metrics when opening (an unparsable one would stop eval/predict).
      lightweight_initialize=read_only,
    )
    if read_only and not os.path.isdir(self.directory):
      raise FileNotFoundError(f"No checkpoint folder {self.directory}")
    if not read_only:
      # Opening for writing reads every step's metrics (for retention), and
      # one that does not parse would stop orbax here.
      self._set_aside_unreadable_metrics()
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      # One unnamed item, fixed now: left to orbax, the mode is guessed from
      # the first step read, and an emptied step folder would switch it.
      item_handlers=ocp.StandardCheckpointHandler(),
    )

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
      UnreadableCheckpointError: naming the step, its folder and why when
        its files cannot be read.
      ValueError: naming the step when it reads but does not fit
        `template` (another model or optimizer than the one saved).
    """
    self._check_saved(step)
    try:
      return self._read(step, template)
    except Exception as error:
      raise self._classify(step, template, error) from error

  def restore_raw(self, step: int) -> dict[str, Any]:
    """The saved tree at `step` as nested dicts of numpy arrays.

    Raises:
      FileNotFoundError: when `step` was not saved.
      UnreadableCheckpointError: naming the step, its folder and why.
    """
    return self.restore(step, None)

  def restore_latest(self, template: Any = None) -> tuple[int, Any] | None:
    """Restores the newest step that reads, setting unreadable ones aside.

    Saved steps are tried newest first. One whose files cannot be read
    (deleted or truncated array files, unparsable metadata, a folder emptied
    by hand) is logged as a WARNING naming the step, its folder and the
    reason, and the next older step is tried. When one reads, the failed
    newer steps are renamed `<step>.corrupt` (`.corrupt1`, ... if taken;
    never deleted; not in read-only mode) so that `latest_step` and the
    next save of those steps no longer trip over them. When none reads,
    nothing is renamed: the error lists every step, and a restart meets it
    again rather than training from scratch.

    Args:
      template: a state with the structure to restore into (as `restore`),
        or None for the saved tree as nested dicts (as `restore_raw`).

    Returns:
      (step, state), or None when no checkpoint was saved.

    Raises:
      UnreadableCheckpointError: when no saved step reads, listing each
        step, its folder and why.
      ValueError: naming the step when one reads but does not fit
        `template` (another model or optimizer): not damage, so no older
        step is tried.
    """
    failed = []
    for step in reversed(self.all_steps()):
      try:
        state = self._read(step, template)
      except Exception as error:
        problem = self._classify(step, template, error)
        if not isinstance(problem, UnreadableCheckpointError):
          raise problem from error
        logging.warning("%s; trying the previous step.", problem)
        failed.append(str(problem))
        continue
      for bad in self.all_steps():
        if bad > step:
          self._set_aside(bad)
      if failed:
        logging.warning("Resuming from checkpoint step %d instead.", step)
      return step, state
    if failed:
      raise UnreadableCheckpointError(
        f"No checkpoint in {self.directory} can be read:\n  "
        + "\n  ".join(failed)
        + "\nMove the damaged step folders aside (or delete them) to start "
        "again from the newest good one, or from scratch."
      )
    return None

  def close(self) -> None:
    """Waits for pending writes and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def _step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _check_saved(self, step: int) -> None:
    if step not in self._manager.all_steps():
      raise FileNotFoundError(
        f"No checkpoint for step {step} in {self.directory}; saved steps: "
        f"{self.all_steps()}"
      )

  def _read(self, step: int, template: Any) -> Any:
    if template is None:
      raw = self._manager.restore(step, args=ocp.args.StandardRestore())
      return jax.tree.map(np.asarray, raw)
    full = flax.serialization.to_state_dict(template)
    target = _state_dict(template)
    raw = self._manager.restore(step, args=ocp.args.StandardRestore(target))
    raw = jax.tree.map(np.asarray, raw)
    # Entries left out as empty (see `_state_dict`) come back empty.
    raw.update({k: v for k, v in full.items() if k not in raw})
    return flax.serialization.from_state_dict(template, raw)

  def _reads(self, step: int) -> bool:
    """Whether `step` reads back without a template (its files are whole)."""
    try:
      self._read(step, None)
    except Exception:  # Any failure: orbax and tensorstore raise many kinds.
      return False
    return True

  def _classify(self, step: int, template: Any, error: Exception) -> Exception:
    """The error to raise for a failed read of `step`: damage or misfit.

    A step that fails with `template` but reads without one is intact and
    does not fit the template (a ValueError); otherwise it is damaged.
    """
    path = self._step_path(step)
    reason = describe_error(error)
    if template is not None and self._reads(step):
      return ValueError(
        f"Checkpoint step {step} in {path} does not fit this model and "
        f"optimizer (was the config changed?): {reason}"
      )
    item = os.path.join(path, ocp_manager.DEFAULT_ITEM_NAME)
    if os.path.isdir(path) and not os.path.isdir(item):
      reason = (
        f"its {ocp_manager.DEFAULT_ITEM_NAME!r} folder is missing "
        f"(partially deleted?); {reason}"
      )
    return UnreadableCheckpointError(
      f"Checkpoint step {step} in {path} is unreadable: {reason}"
    )

  def _set_aside(self, step: int) -> None:
    """Renames the folder of `step` to `<step>.corrupt` (one process)."""
    path = self._step_path(step)
    if self.read_only:
      logging.warning("Left %s in place (read-only).", path)
      return
    if jax.process_index() == 0:
      target = _free_name(path + _CORRUPT_SUFFIX)
      os.rename(path, target)
      logging.warning("Moved damaged checkpoint step %d to %s", step, target)
    ocp.multihost.sync_global_processes(f"ssd_jax_set_aside_{step}")
    self._manager.reload()

  def _set_aside_unreadable_metrics(self) -> None:
    """Renames each step's unparsable metrics file to `metrics.corrupt`.

    orbax keeps the metrics of a step in `<step>/metrics/metrics` (JSON);
    without that file the step has no metric, which orbax accepts.
    """
    name = ocp_manager.METRIC_ITEM_NAME
    entries = (
      os.listdir(self.directory) if os.path.isdir(self.directory) else []
    )
    for entry in sorted(e for e in entries if e.isdigit()):
      path = os.path.join(self.directory, entry, name, name)
      if not os.path.isfile(path):
        continue
      try:
        with open(path) as f:
          json.load(f)
      except (ValueError, OSError) as error:
        target = _free_name(path + _CORRUPT_SUFFIX)
        if jax.process_index() == 0:
          os.rename(path, target)
        logging.warning(
          "Checkpoint step %s in %s has unreadable metrics (%s); moved them "
          "to %s: the step is kept, without its %s.",
          entry,
          os.path.join(self.directory, entry),
          describe_error(error),
          target,
          _BEST_METRIC,
        )
    # Every process opens the folder; none goes on before process 0 is done.
    ocp.multihost.sync_global_processes("ssd_jax_checkpointer_metrics")


def _free_name(path: str) -> str:
  """`path`, or `path1`, `path2`, ... whichever does not exist yet."""
  candidate, n = path, 0
  while os.path.exists(candidate):
    n += 1
    candidate = f"{path}{n}"
  return candidate


def _state_dict(state: Any) -> Any:
  """The tree a checkpoint holds: numpy leaves; empty top-level entries
  (a VGG model's `batch_stats`, {}) are left out, so the checkpoints of
  models without them are as they were before the field existed."""
  host = jax.device_get(flax.serialization.to_state_dict(state))
  if isinstance(host, dict):
    host = {
      k: v for k, v in host.items() if not (isinstance(v, dict) and not v)
    }
  return jax.tree.map(np.asarray, host)


def init_params_from(path: str, params: Any) -> tuple[Any, str]:
  """`init_variables_from` for a parameter tree alone: (params, report)."""
  variables, report = init_variables_from(path, {"params": params})
  return variables["params"], report


def init_variables_from(
  path: str, variables: dict[str, Any]
) -> tuple[dict[str, Any], str]:
  """Initialises a model's variables from a training run or converted weights.

  `path` may be a training workdir or its `checkpoints/` folder (the
  variables of its newest readable step: `Checkpointer.restore_latest`,
  read-only), or a weights checkpoint written by `ssd_jax.weights` (`python
  -m ssd_jax.weights ...`, read with `weights.load_variables`; a VGG16 or
  ResNet-50 / MobileNetV3 ImageNet import holds only the trunk). Each
  collection ("params", and a BatchNorm model's "batch_stats") is checked
  and merged by `weights.io.merge_params_report`; leaves whose shape
  differs (e.g. class heads for another class count) stay as initialised.

  Args:
    path: folder.
    variables: the freshly initialised variables ({"params"} and, for a
      BatchNorm model, {"batch_stats"}).

  Returns:
    (variables, one-line report of what was loaded and what was kept).

  Raises:
    FileNotFoundError: when `path` does not exist or holds no checkpoint.
    UnreadableCheckpointError: when no step of a training run reads.
    KeyError: naming loaded parameters the model does not have, or leaves
      missing from a loaded module.
    TypeError: naming a loaded parameter that is not floating point.
    ValueError: naming a loaded parameter with NaN/inf values, or a
      weights file that cannot be read.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.init_from={path!r} does not exist")
  folder = path
  if os.path.isdir(os.path.join(path, "checkpoints")):
    folder = os.path.join(path, "checkpoints")
  is_manager = os.path.isdir(folder) and any(
    name.isdigit() for name in os.listdir(folder)
  )
  source_name = path
  if is_manager:
    ckpt = Checkpointer(folder, read_only=True)
    try:
      restored = ckpt.restore_latest()
    finally:
      ckpt.close()
    if restored is None:
      raise FileNotFoundError(f"config.init_from={path!r}: no checkpoint")
    step, source = restored
    source_name = f"{path} (step {step})"
  else:
    source = weights.load_variables(path)
  out, loaded, skipped = dict(variables), 0, {}
  for collection in variables:
    if not source.get(collection):
      continue
    merged = merge_params_report(
      variables[collection], source[collection], skip_mismatched=True
    )
    out[collection] = merged.params
    loaded += len(merged.loaded)
    skipped.update({f"{collection}/{k}": v for k, v in merged.skipped.items()})
  total = len(jax.tree.leaves(variables))
  summary = (
    f"{loaded} of {total} arrays loaded from {source_name} "
    f"({len(skipped)} kept as initialised for shape"
  )
  if skipped:
    summary += ": " + "; ".join(f"{k} {v}" for k, v in skipped.items())
  return out, summary + ")"
