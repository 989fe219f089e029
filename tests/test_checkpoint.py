"""Tests for ssd_jax/checkpoint.py and resumption in ssd_jax/train.py."""

import os
import signal
import subprocess
import sys
import textwrap

import flax
import numpy as np
import pytest

from ssd_jax import checkpoint as ckpt_lib
from ssd_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, arg=None):
  return train.config_from_file(
    os.path.join(REPO, "configs", f"{name}.py"), arg
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


def tiny_config(steps):
  config = load_config("shapes", "small")
  config.num_steps = steps
  config.checkpoint_every = 2
  config.eval_every = 0
  config.keep_checkpoints = 5
  return config


def final_params(workdir):
  ckpt = ckpt_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"), read_only=True
  )
  step = ckpt.latest_step()
  params = ckpt.restore_raw(step)["params"]
  ckpt.close()
  return step, params


_KILLED_RUN = textwrap.dedent(
  """
  import os, signal, sys
  sys.path.insert(0, {tests!r})
  import test_checkpoint as t
  from ssd_jax import checkpoint, train
  save = checkpoint.Checkpointer.save
  def save_then_die(self, step, state, metrics=None):
    save(self, step, state, metrics)
    if step == 2:
      os.kill(os.getpid(), signal.SIGKILL)
  checkpoint.Checkpointer.save = save_then_die
  train.train_and_evaluate(t.tiny_config(4), {workdir!r})
  """
)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
  killed = str(tmp_path / "killed")
  code = _KILLED_RUN.format(tests=os.path.join(REPO, "tests"), workdir=killed)
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
  assert final_params(killed)[0] == 2
  summary = train.train_and_evaluate(tiny_config(4), killed)  # Resumes.
  assert summary["step"] == 4
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(tiny_config(4), straight)
  step_a, resumed = final_params(killed)
  step_b, uninterrupted = final_params(straight)
  assert step_a == step_b == 4
  flat_a = flax.traverse_util.flatten_dict(resumed)
  flat_b = flax.traverse_util.flatten_dict(uninterrupted)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:  # Same data, same order, same program: bit-identical.
    np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=str(k))
  # Metrics of the resumed run continue the log (steps 1, 2, then 3, 4).
  from ssd_jax import metrics_writer

  steps = [
    r["step"] for r in metrics_writer.read_metrics(killed) if "loss" in r
  ]
  assert steps == [1, 2, 3, 4]
  # A finished run started again only evaluates.
  again = train.train_and_evaluate(tiny_config(4), straight)
  assert again["step"] == 4 and again["loss"] is None
  assert final_params(straight)[0] == 4


def test_sigterm_saves_and_stops(tmp_path, monkeypatch):
  step_fn = train.p_train_step

  def step_then_term(state, batch):
    out = step_fn(state, batch)
    if int(out[0].step[0]) == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    return out

  monkeypatch.setattr(train, "p_train_step", step_then_term)
  config = tiny_config(10)
  config.checkpoint_every = 0
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == 3
  assert final_params(str(tmp_path))[0] == 3
  assert signal.getsignal(signal.SIGTERM) is not None
