"""Tests for ssd_jax/weights/io.py: state dict files, params checkpoints,
and the one check of a loaded weight (`check_array`)."""

import glob
import importlib.util
import os

import jax
import ml_dtypes
import numpy as np
import pytest

from ssd_jax import weights
from ssd_jax.weights import io

# A failed orbax read (damaged params checkpoints below) can leave a
# tensorstore callback that fires after orbax's asyncio loop has closed.
pytestmark = pytest.mark.filterwarnings(
  "ignore::pytest.PytestUnraisableExceptionWarning"
)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


# --- check_array --------------------------------------------------------------


@pytest.mark.parametrize(
  "dtype", [np.float16, np.float32, np.float64, ml_dtypes.bfloat16]
)
def test_check_array_casts_floating_dtypes(dtype):
  value = np.array([[0.5, -2.0, 3.25]], dtype)
  out = io.check_array("a/kernel", value, (1, 3))
  assert out.dtype == np.float32 and out.shape == (1, 3)
  np.testing.assert_array_equal(out, [[0.5, -2.0, 3.25]])
  to_bf16 = io.check_array("a/kernel", value, (1, 3), ml_dtypes.bfloat16)
  assert to_bf16.dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize(
  "value",
  [
    np.arange(6, dtype=np.int64).reshape(2, 3),
    np.ones((2, 3), np.uint8),
    np.ones((2, 3), bool),
    np.ones((2, 3), np.complex64),
    np.array([["a"] * 3] * 2),
  ],
)
def test_check_array_refuses_other_dtypes_naming_the_key(value):
  with pytest.raises(TypeError, match=r"^'vgg/conv1_1/kernel' has dtype "):
    io.check_array("vgg/conv1_1/kernel", value, (2, 3))


def test_check_array_shape_says_got_and_expected():
  with pytest.raises(
    io.ShapeMismatchError,
    match=r"^shape mismatch for 'b': got \(3, 2\), expected \(2, 3\)$",
  ):
    io.check_array("b", np.zeros((3, 2), np.float32), (2, 3))
  assert issubclass(io.ShapeMismatchError, ValueError)
  with pytest.raises(io.ShapeMismatchError, match=r"got \(\), expected \(1,\)"):
    io.check_array("b", np.float32(1.0), (1,))


def test_check_array_counts_non_finite_values():
  value = np.zeros((4, 5), np.float32)
  value.flat[[0, 7, 19]] = [np.nan, np.inf, -np.inf]
  want = int(np.sum(~np.isfinite(value)))  # Independent of the sum trick.
  assert want == 3
  with pytest.raises(
    ValueError,
    match=r"^'head/bias' has 3 non-finite \(NaN or inf\) value\(s\) "
    r"of 20$",
  ):
    io.check_array("head/bias", value, (4, 5))
  # inf + -inf cancels to NaN in the sum; still caught.
  with pytest.raises(ValueError, match="2 non-finite"):
    io.check_array("x", np.array([np.inf, -np.inf, 1.0]), (3,))
  # Finite in float64, infinite as float32: named with the cast.
  with pytest.raises(
    ValueError, match=r"1 non-finite .* of 2 after the cast to float32$"
  ):
    io.check_array("x", np.array([1e300, 1.0]), (2,))


def test_check_array_degenerate_shapes():
  assert io.check_array("s", np.float64(2.0), ()).shape == ()
  empty = io.check_array("e", np.zeros((0, 3)), (0, 3))
  assert empty.shape == (0, 3) and empty.dtype == np.float32
  with pytest.raises(TypeError, match="'e'"):
    io.check_array("e", np.zeros((0, 3), np.int32), (0, 3))


# --- merge_params -------------------------------------------------------------


def test_merge_params_errors_and_skip():
  fresh = {"a": {"kernel": np.ones((2, 3), np.float32)}, "b": np.zeros(2)}
  merged = weights.merge_params(fresh, {"a": {"kernel": np.full((2, 3), 5.0)}})
  assert merged["a"]["kernel"].dtype == np.float32
  np.testing.assert_array_equal(merged["a"]["kernel"], 5.0)
  np.testing.assert_array_equal(merged["b"], 0.0)
  with pytest.raises(
    KeyError, match=r"not in the model: \['c/bias', 'c/kernel'\]"
  ):
    weights.merge_params(
      fresh, {"c": {"kernel": np.ones(1), "bias": np.ones(1)}}
    )
  with pytest.raises(
    ValueError,
    match=r"shape mismatch for 'a/kernel': got \(3, 3\), expected \(2, 3\)",
  ):
    weights.merge_params(fresh, {"a": {"kernel": np.ones((3, 3))}})
  kept = weights.merge_params(
    fresh, {"a": {"kernel": np.ones((3, 3))}}, skip_mismatched=True
  )
  np.testing.assert_array_equal(kept["a"]["kernel"], 1.0)
  assert weights.merge_params(fresh, {})["b"].shape == (2,)


def test_merge_params_checks_dtype_and_values_naming_the_path():
  fresh = {"vgg": {"conv1_1": {"kernel": np.zeros((2, 2), np.float32)}}}
  with pytest.raises(TypeError, match=r"'vgg/conv1_1/kernel' has dtype int32"):
    weights.merge_params(
      fresh, {"vgg": {"conv1_1": {"kernel": np.ones((2, 2), np.int32)}}}
    )
  bad = np.array([[np.nan, 1.0], [2.0, np.nan]])
  for skip in (False, True):  # Non-finite is never skipped.
    with pytest.raises(
      ValueError, match=r"'vgg/conv1_1/kernel' has 2 non-finite"
    ):
      weights.merge_params(
        fresh, {"vgg": {"conv1_1": {"kernel": bad}}}, skip_mismatched=skip
      )


def test_merge_params_partial_by_module_not_within_one():
  fresh = {
    "vgg": {
      "conv1_1": {"kernel": np.zeros((2, 2)), "bias": np.zeros(2)},
      "fc6": {"kernel": np.zeros((3, 3)), "bias": np.zeros(3)},
    },
    "conf_0": {"kernel": np.zeros((1,)), "bias": np.zeros(1)},
  }
  trunk = {"vgg": {"conv1_1": {"kernel": np.ones((2, 2)), "bias": np.ones(2)}}}
  report = io.merge_params_report(fresh, trunk)  # Whole modules: fine.
  assert report.loaded == ("vgg/conv1_1/bias", "vgg/conv1_1/kernel")
  assert report.skipped == {}
  np.testing.assert_array_equal(report.params["vgg"]["fc6"]["bias"], 0.0)
  half = {"vgg": {"conv1_1": {"kernel": np.ones((2, 2))}}}
  with pytest.raises(KeyError, match=r"missing \['vgg/conv1_1/bias'\]"):
    weights.merge_params(fresh, half)


def test_merge_params_report_lists_skipped_shapes_and_casts_to_the_model():
  fresh = {
    "conf_0": {"kernel": np.zeros((3, 8), ml_dtypes.bfloat16)},
    "loc_0": {"kernel": np.zeros((3, 4), np.float32)},
  }
  loaded = {
    "conf_0": {"kernel": np.ones((3, 12))},  # Another class count.
    "loc_0": {"kernel": np.full((3, 4), 2.0)},
  }
  report = io.merge_params_report(fresh, loaded, skip_mismatched=True)
  assert report.loaded == ("loc_0/kernel",)
  assert report.skipped == {"conf_0/kernel": "got (3, 12), model (3, 8)"}
  assert report.params["conf_0"]["kernel"].dtype == ml_dtypes.bfloat16
  loaded["conf_0"]["kernel"] = np.ones((3, 8))
  merged = weights.merge_params(fresh, loaded)
  assert merged["conf_0"]["kernel"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(np.float32(merged["conf_0"]["kernel"]), 1.0)


# --- state dict files ---------------------------------------------------------


def test_load_state_dict_formats(tmp_path):
  sd = {
    "features.0.weight": np.arange(6, dtype=np.float64).reshape(2, 3),
    "bn.num_batches_tracked": np.array(7, np.int64),
  }
  np.savez(tmp_path / "w.npz", **sd)
  loaded = weights.load_state_dict(str(tmp_path / "w.npz"))
  # The file's dtypes: the converters check and cast (check_array).
  assert loaded["features.0.weight"].dtype == np.float64
  assert loaded["bn.num_batches_tracked"].dtype == np.int64
  np.testing.assert_array_equal(
    loaded["features.0.weight"], sd["features.0.weight"]
  )
  with pytest.raises(ValueError, match=r"w\.bin: unknown weight file type"):
    weights.load_state_dict(str(tmp_path / "w.bin"))
  if importlib.util.find_spec("torch") is None:
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(ImportError, match=r"w\.pth: reading \.pth needs torch"):
      weights.load_state_dict(str(tmp_path / "w.pth"))
  if importlib.util.find_spec("safetensors") is None:
    (tmp_path / "w.safetensors").write_bytes(b"")
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


def test_unreadable_state_dict_files_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"no weight file at .*gone\.npz"):
    weights.load_state_dict(str(tmp_path / "gone.npz"))
  rng = np.random.default_rng(0)
  np.savez_compressed(tmp_path / "cut.npz", w=rng.normal(size=(64, 64)))
  _truncate(tmp_path / "cut.npz")
  with pytest.raises(ValueError, match=r"cut\.npz: not a readable \.npz file"):
    weights.load_state_dict(str(tmp_path / "cut.npz"))
  (tmp_path / "text.npz").write_text("features.0.weight = [1, 2, 3]\n")
  with pytest.raises(ValueError, match=r"text\.npz: not a readable \.npz"):
    weights.load_state_dict(str(tmp_path / "text.npz"))
  np.save(tmp_path / "one.npy", np.ones(3))
  os.rename(tmp_path / "one.npy", tmp_path / "one.npz")
  with pytest.raises(ValueError, match=r"one\.npz: holds a single array"):
    weights.load_state_dict(str(tmp_path / "one.npz"))
  np.savez(tmp_path / "obj.npz", meta=np.array([{"a": 1}], dtype=object))
  with pytest.raises(ValueError, match=r"obj\.npz: array 'meta' is unreadable"):
    weights.load_state_dict(str(tmp_path / "obj.npz"))
  if importlib.util.find_spec("safetensors") is not None:
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00 not safetensors")
    with pytest.raises(ValueError, match=r"bad\.safetensors: not a readable"):
      weights.load_state_dict(str(tmp_path / "bad.safetensors"))


# --- params checkpoints -------------------------------------------------------


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


def test_unreadable_params_checkpoints_name_the_path(tmp_path):
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(64, 64)).astype(np.float32)}
  for name in ("cut", "garbage", "empty"):
    weights.save_params(str(tmp_path / name), params)
  files = glob.glob(str(tmp_path / "cut" / "**"), recursive=True)
  _truncate(max((f for f in files if os.path.isfile(f)), key=os.path.getsize))
  (tmp_path / "garbage" / "_METADATA").write_text("{{{")
  for entry in os.listdir(tmp_path / "empty"):
    path = tmp_path / "empty" / entry
    if path.is_file():
      path.unlink()
  for name in ("cut", "garbage", "empty"):
    with pytest.raises(
      ValueError, match=rf"{name}: unreadable params checkpoint \(\w+"
    ):
      weights.load_params(str(tmp_path / name))
  np.savez(tmp_path / "w.npz", w=params["w"])
  with pytest.raises(ValueError, match=r"w\.npz is a file, not a params"):
    weights.load_params(str(tmp_path / "w.npz"))


def test_describe_error_is_one_short_line():
  long = ValueError("NOT_FOUND: bad thing [tensorstore_spec='{...}']\nmore")
  assert io.describe_error(long) == "ValueError: NOT_FOUND: bad thing"
  assert io.describe_error(KeyError()) == "KeyError"
  assert len(io.describe_error(OSError("x" * 1000))) < 320
