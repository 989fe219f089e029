"""Tests for ssd_jax/checkpoint.py (resumption: tests/test_train.py).

Damaged checkpoints are made here from real ones written by `Checkpointer`
(tiny trees; the 64x64 random leaf is large enough for orbax to keep it in
an array file of its own rather than inline in the index).
"""

import glob
import json
import logging
import os
import shutil

import flax
import numpy as np
import pytest
from conftest import load_config

from ssd_jax import checkpoint as ckpt_lib
from ssd_jax import weights

# A failed orbax read of a damaged step can leave a tensorstore callback that
# fires after orbax's asyncio loop has closed ("Event loop is closed"),
# reported during whichever test runs then.
pytestmark = pytest.mark.filterwarnings(
  "ignore::pytest.PytestUnraisableExceptionWarning"
)


class _State(flax.struct.PyTreeNode):
  step: np.ndarray
  params: dict
  opt_state: tuple


def make_state(step, value):
  return _State(
    step=np.int32(step),
    params={
      "a": {"kernel": np.full((2, 3), value, np.float32)},
      "b": np.arange(3.0),
    },
    opt_state=(np.full((2,), value, np.float32), {}),
  )


def big_state(step):
  """A state whose params/w is an array file of its own on disk."""
  rng = np.random.default_rng(step)
  return _State(
    step=np.int32(step),
    params={"w": rng.normal(size=(64, 64)).astype(np.float32)},
    opt_state=(np.full((2,), float(step), np.float32), {}),
  )


def write_steps(directory, steps=(1, 2, 3), keep=5):
  ckpt = ckpt_lib.Checkpointer(str(directory), keep=keep)
  for step in steps:
    ckpt.save(step, big_state(step), {"mAP": 0.1 * step})
  ckpt.close()


def _largest_file(folder):
  files = [
    p for p in glob.glob(f"{folder}/**", recursive=True) if os.path.isfile(p)
  ]
  return max(files, key=os.path.getsize)


def _delete_array_file(step_dir):
  os.remove(_largest_file(step_dir))


def _truncate_array_file(step_dir):
  path = _largest_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _garbage_metadata(step_dir):
  with open(os.path.join(step_dir, "default", "_METADATA"), "w") as f:
    f.write("\x00 not json {")


def _empty_folder(step_dir):
  for entry in os.listdir(step_dir):
    path = os.path.join(step_dir, entry)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


CORRUPTIONS = {
  "deleted array file": _delete_array_file,
  "truncated array file": _truncate_array_file,
  "garbage metadata": _garbage_metadata,
  "emptied step folder": _empty_folder,
}


def _log_text(caplog):
  """The WARNING (and worse) messages logged, one per line."""
  return "\n".join(
    r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
  )


def test_save_restore_roundtrip(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
  ckpt.save(5, make_state(5, 1.5))
  restored = ckpt.restore(5, make_state(0, 0.0))
  ckpt.close()
  assert int(restored.step) == 5
  np.testing.assert_array_equal(restored.params["a"]["kernel"], 1.5)
  np.testing.assert_array_equal(restored.params["b"], np.arange(3.0))
  np.testing.assert_array_equal(restored.opt_state[0], 1.5)


def test_keeps_last_k_and_best(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
  maps = {1: 0.2, 2: 0.9, 3: None, 4: 0.3, 5: 0.1, 6: None}
  for step, m in maps.items():
    ckpt.save(step, make_state(step, step), None if m is None else {"mAP": m})
  assert ckpt.all_steps() == [2, 5, 6]  # Last two, plus the best (mAP 0.9).
  assert ckpt.best_step() == 2
  assert ckpt.latest_step() == 6
  ckpt.save(6, make_state(6, 99.0))  # An existing step is not rewritten.
  restored = ckpt.restore(6, make_state(0, 0.0))
  np.testing.assert_array_equal(restored.params["a"]["kernel"], 6.0)
  with pytest.raises(FileNotFoundError, match="step 3"):
    ckpt.restore(3, make_state(0, 0.0))
  ckpt.close()


def test_empty_folder_has_no_latest(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "new"), keep=1)
  assert ckpt.latest_step() is None
  assert ckpt.restore_latest(make_state(0, 0.0)) is None
  ckpt.close()
  with pytest.raises(FileNotFoundError, match="No checkpoint folder"):
    ckpt_lib.Checkpointer(str(tmp_path / "absent"), read_only=True)


def test_restore_latest_of_intact_steps(tmp_path):
  write_steps(tmp_path)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path))
  step, state = ckpt.restore_latest(big_state(0))
  np.testing.assert_array_equal(state.params["w"], big_state(3).params["w"])
  assert step == int(state.step) == 3
  step, raw = ckpt.restore_latest()  # No template: the saved tree.
  assert step == 3 and set(raw) == {"step", "params", "opt_state"}
  ckpt.close()
  assert sorted(os.listdir(tmp_path)) == ["1", "2", "3"]


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_damaged_latest_falls_back_and_is_set_aside(
  tmp_path, caplog, corruption
):
  write_steps(tmp_path)
  CORRUPTIONS[corruption](str(tmp_path / "3"))
  caplog.set_level(logging.WARNING)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
  assert ckpt.latest_step() == 3  # orbax itself still lists it.
  step, state = ckpt.restore_latest(big_state(0))
  assert step == int(state.step) == 2
  np.testing.assert_array_equal(state.params["w"], big_state(2).params["w"])
  text = _log_text(caplog)
  assert f"Checkpoint step 3 in {tmp_path / '3'} is unreadable: " in text
  assert "Resuming from checkpoint step 2" in text
  assert f"Moved damaged checkpoint step 3 to {tmp_path / '3.corrupt'}" in text
  if corruption == "emptied step folder":
    assert "'default' folder is missing" in text
  # Set aside, never deleted; orbax no longer sees it.
  assert os.path.isdir(tmp_path / "3.corrupt")
  assert ckpt.latest_step() == 2 and ckpt.all_steps() == [1, 2]
  # Training goes on: step 3 saves anew, retention runs past the bad folder.
  for later in (3, 4, 5):
    ckpt.save(later, big_state(later), {"mAP": 0.0})
  ckpt.close()
  assert sorted(os.listdir(tmp_path)) == ["2", "3.corrupt", "4", "5"]
  again = ckpt_lib.Checkpointer(str(tmp_path), keep=2)  # The next restart.
  step, state = again.restore_latest(big_state(0))
  again.close()
  assert step == 5
  np.testing.assert_array_equal(state.params["w"], big_state(5).params["w"])


def test_two_damaged_steps_and_a_taken_corrupt_name(tmp_path, caplog):
  write_steps(tmp_path, steps=(1, 2, 3, 4))
  _truncate_array_file(str(tmp_path / "4"))
  _empty_folder(str(tmp_path / "3"))
  os.mkdir(tmp_path / "4.corrupt")  # Left by an earlier incident.
  caplog.set_level(logging.WARNING)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path))
  step, _ = ckpt.restore_latest(big_state(0))
  ckpt.close()
  assert step == 2
  text = _log_text(caplog)
  assert "step 4" in text and "step 3" in text
  assert sorted(os.listdir(tmp_path)) == [
    "1",
    "2",
    "3.corrupt",
    "4.corrupt",
    "4.corrupt1",
  ]


def test_every_step_damaged_is_an_error_listing_each(tmp_path):
  write_steps(tmp_path)
  _truncate_array_file(str(tmp_path / "1"))
  _garbage_metadata(str(tmp_path / "2"))
  _empty_folder(str(tmp_path / "3"))
  ckpt = ckpt_lib.Checkpointer(str(tmp_path))
  with pytest.raises(ckpt_lib.UnreadableCheckpointError) as info:
    ckpt.restore_latest(big_state(0))
  message = str(info.value)
  for step in (1, 2, 3):
    assert f"Checkpoint step {step} in {tmp_path / str(step)}" in message
  assert "No checkpoint in" in message
  # Nothing renamed: a restart meets the same error, not a fresh start.
  assert ckpt.latest_step() == 3
  ckpt.close()
  assert sorted(os.listdir(tmp_path)) == ["1", "2", "3"]


def test_read_only_falls_back_without_renaming(tmp_path, caplog):
  write_steps(tmp_path)
  _truncate_array_file(str(tmp_path / "3"))
  caplog.set_level(logging.WARNING)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), read_only=True)
  step, raw = ckpt.restore_latest()
  ckpt.close()
  assert step == 2
  np.testing.assert_array_equal(raw["params"]["w"], big_state(2).params["w"])
  assert "Left " in _log_text(caplog)
  assert sorted(os.listdir(tmp_path)) == ["1", "2", "3"]


def test_restore_of_a_damaged_step_names_it(tmp_path):
  write_steps(tmp_path)
  _garbage_metadata(str(tmp_path / "3"))
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), read_only=True)
  with pytest.raises(
    ckpt_lib.UnreadableCheckpointError, match=r"step 3 in .*3 is unreadable"
  ):
    ckpt.restore(3, big_state(0))
  with pytest.raises(ckpt_lib.UnreadableCheckpointError, match="step 3"):
    ckpt.restore_raw(3)
  ckpt.close()


def test_a_template_that_does_not_fit_is_not_damage(tmp_path):
  write_steps(tmp_path)
  other = _State(
    step=np.int32(0),
    params={"w": np.zeros((64, 64), np.float32), "extra": np.zeros(2)},
    opt_state=(np.zeros((2,), np.float32), {}),
  )
  ckpt = ckpt_lib.Checkpointer(str(tmp_path))
  with pytest.raises(ValueError, match="step 3 in .* does not fit"):
    ckpt.restore_latest(other)
  ckpt.close()
  assert sorted(os.listdir(tmp_path)) == ["1", "2", "3"]


def test_unreadable_metrics_are_set_aside_and_the_step_kept(tmp_path, caplog):
  write_steps(tmp_path)
  metrics = tmp_path / "2" / "metrics" / "metrics"
  metrics.write_text("{not json")
  caplog.set_level(logging.WARNING)
  # Read-only opening does not read metrics: eval/predict are unaffected.
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), read_only=True)
  assert ckpt.all_steps() == [1, 2, 3]
  ckpt.close()
  assert metrics.exists()
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=5)
  assert ckpt.all_steps() == [1, 2, 3]
  assert ckpt.best_step() == 3
  state = ckpt.restore(2, big_state(0))
  np.testing.assert_array_equal(state.params["w"], big_state(2).params["w"])
  ckpt.save(4, big_state(4), {"mAP": 0.0})
  ckpt.close()
  assert not metrics.exists()
  assert json.loads((tmp_path / "3" / "metrics" / "metrics").read_text())
  assert (tmp_path / "2" / "metrics" / "metrics.corrupt").exists()
  text = _log_text(caplog)
  assert f"Checkpoint step 2 in {tmp_path / '2'} has unreadable metrics" in text


def test_init_params_from_a_workdir_keeps_mismatched_shapes(tmp_path):
  source = {
    "conv": {"kernel": np.full((3, 3), 2.0, np.float32)},
    "head": {"kernel": np.ones((4,), np.float32)},
  }
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "run" / "checkpoints"), keep=1)
  ckpt.save(7, {"step": np.int32(7), "params": source, "opt_state": {}})
  ckpt.close()
  fresh = {
    "conv": {"kernel": np.zeros((3, 3), np.float32)},
    "head": {"kernel": np.zeros((5,), np.float32)},
  }
  merged, report = ckpt_lib.init_params_from(str(tmp_path / "run"), fresh)
  np.testing.assert_array_equal(merged["conv"]["kernel"], 2.0)
  np.testing.assert_array_equal(merged["head"]["kernel"], 0.0)
  assert report.startswith("1 of 2 arrays loaded from")
  assert "(step 7)" in report
  assert "head/kernel got (4,), model (5,)" in report
  with pytest.raises(FileNotFoundError, match="init_from"):
    ckpt_lib.init_params_from(str(tmp_path / "nope"), fresh)


def test_init_params_from_a_workdir_with_a_damaged_latest(tmp_path, caplog):
  folder = tmp_path / "run" / "checkpoints"
  write_steps(folder, steps=(1, 2))
  _truncate_array_file(str(folder / "2"))
  caplog.set_level(logging.WARNING)
  fresh = {"w": np.zeros((64, 64), np.float32)}
  merged, report = ckpt_lib.init_params_from(str(tmp_path / "run"), fresh)
  np.testing.assert_array_equal(merged["w"], big_state(1).params["w"])
  assert "(step 1)" in report
  assert "step 2" in _log_text(caplog)
  assert sorted(os.listdir(folder)) == ["1", "2"]  # Read-only: untouched.


def test_init_params_from_checks_every_leaf(tmp_path):
  fresh = {
    "conv": {"kernel": np.zeros((3, 3), np.float32), "bias": np.zeros(3)},
  }
  bad = np.ones((3, 3), np.float32)
  bad[0, 0], bad[1, 2] = np.nan, np.inf
  weights.save_params(
    str(tmp_path / "nan"), {"conv": {"kernel": bad, "bias": np.zeros(3)}}
  )
  with pytest.raises(
    ValueError, match=r"'conv/kernel' has 2 non-finite \(NaN or inf\) value"
  ):
    ckpt_lib.init_params_from(str(tmp_path / "nan"), fresh)
  weights.save_params(
    str(tmp_path / "int"),
    {"conv": {"kernel": np.ones((3, 3), np.int32), "bias": np.zeros(3)}},
  )
  with pytest.raises(TypeError, match=r"'conv/kernel' has dtype int32"):
    ckpt_lib.init_params_from(str(tmp_path / "int"), fresh)
  weights.save_params(
    str(tmp_path / "part"), {"conv": {"kernel": np.ones((3, 3))}}
  )
  with pytest.raises(KeyError, match=r"missing \['conv/bias'\]"):
    ckpt_lib.init_params_from(str(tmp_path / "part"), fresh)
  np.savez(tmp_path / "w.npz", x=np.ones(2))
  with pytest.raises(ValueError, match=r"w\.npz is a file, not a params"):
    ckpt_lib.init_params_from(str(tmp_path / "w.npz"), fresh)


@pytest.mark.slow
def test_training_resumes_past_a_damaged_checkpoint(tmp_path, caplog):
  from ssd_jax import train  # Heavy (TensorFlow): only this test needs it.

  config = load_config("shapes", "small")
  config.num_steps = 2
  config.checkpoint_every = 1
  config.keep_checkpoints = 5
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  folder = tmp_path / "checkpoints"
  assert sorted(os.listdir(folder)) == ["1", "2"]
  _truncate_array_file(str(folder / "2"))
  caplog.set_level(logging.WARNING)
  config.num_steps = 3
  summary = train.train_and_evaluate(config, workdir)
  assert summary["step"] == 3
  text = _log_text(caplog)
  assert f"Checkpoint step 2 in {folder / '2'} is unreadable" in text
  assert "Resuming from checkpoint step 1 instead." in text
  assert sorted(os.listdir(folder)) == ["1", "2", "2.corrupt", "3"]
