"""Tests for ssd_jax/checkpoint.py (resumption: tests/test_train.py)."""

import flax
import numpy as np
import pytest

from ssd_jax import checkpoint as ckpt_lib


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
  ckpt.close()
  with pytest.raises(FileNotFoundError, match="No checkpoint folder"):
    ckpt_lib.Checkpointer(str(tmp_path / "absent"), read_only=True)


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
  assert "1 of 2" in report
  with pytest.raises(FileNotFoundError, match="init_from"):
    ckpt_lib.init_params_from(str(tmp_path / "nope"), fresh)
