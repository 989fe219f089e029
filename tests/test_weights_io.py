"""Tests for ssd_jax/weights/io.py: state dict files, params checkpoints."""

import importlib.util

import jax
import numpy as np
import pytest

from ssd_jax import weights


def test_merge_params_errors_and_skip():
  fresh = {"a": {"kernel": np.ones((2, 3), np.float32)}, "b": np.zeros(2)}
  merged = weights.merge_params(fresh, {"a": {"kernel": np.full((2, 3), 5.0)}})
  assert merged["a"]["kernel"].dtype == np.float32
  np.testing.assert_array_equal(merged["a"]["kernel"], 5.0)
  np.testing.assert_array_equal(merged["b"], 0.0)
  with pytest.raises(KeyError, match="'c/kernel' is not in the model"):
    weights.merge_params(fresh, {"c": {"kernel": np.ones(1)}})
  with pytest.raises(ValueError, match=r"shape mismatch for 'a/kernel'"):
    weights.merge_params(fresh, {"a": {"kernel": np.ones((3, 3))}})
  kept = weights.merge_params(
    fresh, {"a": {"kernel": np.ones((3, 3))}}, skip_mismatched=True
  )
  np.testing.assert_array_equal(kept["a"]["kernel"], 1.0)
  assert weights.merge_params(fresh, {})["b"].shape == (2,)


def test_load_state_dict_formats(tmp_path):
  sd = {"features.0.weight": np.arange(6, dtype=np.float64).reshape(2, 3)}
  np.savez(tmp_path / "w.npz", **sd)
  loaded = weights.load_state_dict(str(tmp_path / "w.npz"))
  assert loaded["features.0.weight"].dtype == np.float32
  np.testing.assert_array_equal(
    loaded["features.0.weight"], sd["features.0.weight"]
  )
  with pytest.raises(ValueError, match=r"w\.bin: unknown weight file type"):
    weights.load_state_dict(str(tmp_path / "w.bin"))
  if importlib.util.find_spec("torch") is None:
    with pytest.raises(ImportError, match=r"w\.pth: reading \.pth needs torch"):
      weights.load_state_dict(str(tmp_path / "w.pth"))
  if importlib.util.find_spec("safetensors") is None:
    with pytest.raises(ImportError, match="safetensors"):
      weights.load_state_dict(str(tmp_path / "w.safetensors"))
  else:
    from safetensors.numpy import save_file

    save_file(
      {"x": np.ones((2, 2), np.float32)}, str(tmp_path / "w.safetensors")
    )
    assert weights.load_state_dict(str(tmp_path / "w.safetensors"))[
      "x"
    ].shape == (2, 2)


def test_save_and_load_params_round_trip(tmp_path):
  params = {
    "vgg": {"conv1_1": {"kernel": np.arange(24.0).reshape(2, 3, 4, 1)}},
    "conv4_3_norm": {"scale": np.full(3, 20.0, np.float32)},
  }
  weights.save_params(str(tmp_path / "ckpt"), params, source="test")
  loaded = weights.load_params(str(tmp_path / "ckpt"))
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  for a, b in zip(
    jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True
  ):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(FileExistsError, match="ckpt exists"):
    weights.save_params(str(tmp_path / "ckpt"), params)
  with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
    weights.load_params(str(tmp_path / "nothing"))
