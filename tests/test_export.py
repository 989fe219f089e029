"""ssd_jax/export.py: both formats round-trip through a fresh process.

The reference is `jax.jit(detect.detect)` in this process on the same
images; the jax artefact must give it bit for bit (the same computation
with the variables as arguments), the SavedModel too up to the boxes'
conversion to TensorFlow's normalised (y_min, x_min, y_max, x_max), which
is recomputed here in numpy. The SavedModel is loaded by a process that
can import TensorFlow and nothing of jax (TensorFlow imports jax when it is
installed, so the process blocks it, as a serving machine without jax
would). Images of sizes other than the model's, and batch sizes 1 and 3,
check the symbolic batch and image size.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, load_config

from ssd_jax import detect, export, train

# Loads a jax export in a fresh process: argv = export dir, inputs .npz,
# outputs .npz.
JAX_LOADER = r"""
import sys
import numpy as np
from ssd_jax import export
detector = export.load_jax(sys.argv[1])
inputs = np.load(sys.argv[2])
np.savez(sys.argv[3], **{
  f"{name}/{key}": np.asarray(value)
  for name in inputs.files
  for key, value in detector(inputs[name]).items()
})
"""

# Loads a SavedModel in a process that cannot import jax, flax or ssd_jax:
# argv = SavedModel dir, inputs .npz, outputs .npz, errors .json.
TF_LOADER = r"""
import importlib.abc
import sys

BLOCKED = ("jax", "jaxlib", "flax", "ssd_jax")


class NoJax(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.partition(".")[0] in BLOCKED:
      raise ImportError(f"{name}: blocked, TensorFlow only")


sys.meta_path.insert(0, NoJax())
import json
import numpy as np
import tensorflow as tf

model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
inputs = np.load(sys.argv[2])
np.savez(sys.argv[3], **{
  f"{name}/{key}": value.numpy()
  for name in inputs.files
  for key, value in serve(images=tf.constant(inputs[name])).items()
})
good = inputs[inputs.files[0]]
bad = {
  "dtype": good.astype(np.float32),
  "channels": good[..., :2],
  "rank": good[0],
  "empty": good[:0],
  "no_pixels": good[:, :0],
}
errors = {}
for name, images in bad.items():
  try:
    serve(images=tf.constant(images))
    errors[name] = "no error"
  except Exception as e:  # What TensorFlow raises is the test's subject.
    errors[name] = f"{type(e).__name__}: {e}"
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
errors["loaded"] = ", ".join(loaded)
errors["signature_inputs"] = str(serve.structured_input_signature)
with open(sys.argv[4], "w") as f:
  json.dump(errors, f)
"""

# (N, H, W): the model's own size, and a batch of another size and aspect.
SHAPES = {"square": (1, 64, 64), "wide": (3, 50, 90)}


def _run(*args, timeout=300):
  out = subprocess.run(
    [sys.executable, *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=REPO,
  )
  assert out.returncode == 0, out.stderr[-4000:]
  return out


@pytest.fixture(scope="module")
def run(shapes_run):
  """(config, workdir, model, variables, class names, step) of shapes_run."""
  workdir, _ = shapes_run
  config = load_config("shapes", "small")
  model, variables, names, step = train.restore_params(config, workdir)
  return config, workdir, model, variables, names, step


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """{name: uint8 [N, H, W, 3]} and the .npz file holding them."""
  rng = np.random.default_rng(0)
  batches = {
    name: rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    for name, (n, h, w) in SHAPES.items()
  }
  path = tmp_path_factory.mktemp("images") / "images.npz"
  np.savez(path, **batches)
  return batches, str(path)


@pytest.fixture(scope="module")
def reference(run, images):
  """{name: detect's outputs (numpy)}, jitted as the exports are."""
  config, _, model, variables, _, _ = run
  settings = detect.DetectSettings.from_config(config)
  fn = jax.jit(detect.detect, static_argnums=(0, 3))
  return {
    name: jax.device_get(fn(model, variables, x, settings)._asdict())
    for name, x in images[0].items()
  }


@pytest.fixture(scope="module")
def jax_export(run, tmp_path_factory):
  """A jax export written by the command line."""
  _, workdir, *_ = run
  output = str(tmp_path_factory.mktemp("exports") / "jax")
  out = _run(
    "-m",
    "ssd_jax.export",
    "--config=configs/shapes.py:small",
    f"--workdir={workdir}",
    "--format=jax",
    f"--output={output}",
  )
  assert "exported step 3 as jax" in out.stdout
  return output


@pytest.fixture(scope="module")
def tf_export(run, tmp_path_factory):
  """A SavedModel export written by the Python API."""
  config, workdir, *_ = run
  output = str(tmp_path_factory.mktemp("exports") / "savedmodel")
  export.export(config, workdir, output, "savedmodel")
  return output


def test_jax_export_files_and_metadata(jax_export, run):
  *_, names, step = run
  assert sorted(os.listdir(jax_export)) == [
    export.JAX_FILE,
    export.METADATA_FILE,
    export.VARIABLES_FILE,
  ]
  meta = export.read_metadata(jax_export)
  assert meta["format"] == "jax"
  assert meta["class_names"] == names
  assert meta["num_classes"] == len(names) + 1
  assert meta["step"] == step == 3
  assert meta["model_input_size"] == 64
  assert meta["normalization"]["kind"] == "caffe"
  assert meta["normalization"]["scale"] == [1.0, 1.0, 1.0]
  assert meta["boxes"] == {
    "order": "x_min, y_min, x_max, y_max",
    "frame": "input pixels",
  }
  assert meta["max_detections"] == 50  # configs/shapes.py:small
  assert meta["detect_settings"]["nms_threshold"] == 0.45
  assert meta["jax_version"] == jax.__version__
  assert meta["platforms"] == ["cpu"]


def test_jax_export_fresh_process_equals_detect(
  jax_export, images, reference, tmp_path
):
  outputs = tmp_path / "out.npz"
  _run("-c", JAX_LOADER, jax_export, images[1], str(outputs))
  got = np.load(outputs)
  for name, (n, _, _) in SHAPES.items():
    ref = reference[name]
    assert got[f"{name}/boxes"].shape == (n, 50, 4)
    assert got[f"{name}/labels"].dtype == np.int32
    for key, value in ref.items():
      np.testing.assert_array_equal(got[f"{name}/{key}"], value, err_msg=key)
    assert ref["num_detections"].min() > 0  # Something is compared.


def test_jax_export_in_process_equals_detect_and_checks_images(
  jax_export, images, reference
):
  detector = export.load_jax(jax_export)
  x = images[0]["wide"]
  out = jax.device_get(detector(x))
  for key, value in reference["wide"].items():
    np.testing.assert_array_equal(out[key], value, err_msg=key)
  bad = {
    "must be uint8": x.astype(np.float32),
    "rank 4": x[0],
    "3 RGB channels": x[..., :2],
    "empty batch": x[:0],
    "no pixels": x[:, :0],
  }
  for match, images_bad in bad.items():
    with pytest.raises(ValueError, match=match):
      detector(images_bad)


def test_jax_export_carries_the_test_time_mirror(run, images, tmp_path):
  """eval.flip is part of the exported detector (and its metadata)."""
  config, workdir, model, variables, *_ = run
  config = config.copy_and_resolve_references()
  config.eval.flip = True
  output = str(tmp_path / "flip")
  export.export(config, workdir, output, "jax")
  assert export.read_metadata(output)["detect_settings"]["flip"] is True
  settings = detect.DetectSettings.from_config(config)
  x = images[0]["wide"]
  want = jax.device_get(
    jax.jit(detect.detect, static_argnums=(0, 3))(model, variables, x, settings)
  )
  got = jax.device_get(export.load_jax(output)(x))
  for key, value in want._asdict().items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  assert want.num_detections.min() > 0


def test_savedmodel_tensorflow_only_process(
  tf_export, images, reference, tmp_path
):
  outputs, errors = tmp_path / "out.npz", tmp_path / "errors.json"
  _run("-c", TF_LOADER, tf_export, images[1], str(outputs), str(errors))
  got = np.load(outputs)
  for name, (n, h, w) in SHAPES.items():
    ref = reference[name]
    boxes = got[f"{name}/detection_boxes"]
    assert boxes.shape == (n, 50, 4) and boxes.dtype == np.float32
    # detect's pixel corners (x0, y0, x1, y1) -> normalised (y0, x0, y1, x1).
    expected = (ref["boxes"] / np.float32([w, h, w, h]))[..., [1, 0, 3, 2]]
    np.testing.assert_allclose(boxes, expected, rtol=1e-6, atol=1e-7)
    assert boxes.min() >= 0 and boxes.max() <= 1
    np.testing.assert_array_equal(
      got[f"{name}/detection_scores"], ref["scores"]
    )
    classes = got[f"{name}/detection_classes"]
    assert classes.dtype == np.int32
    np.testing.assert_array_equal(classes, ref["labels"])
    np.testing.assert_array_equal(
      got[f"{name}/num_detections"], ref["num_detections"]
    )
  err = json.loads(errors.read_text())
  assert err["loaded"] == ""  # Neither jax nor ssd_jax was imported.
  assert (
    "shape=(None, None, None, 3), dtype=tf.uint8" in (err["signature_inputs"])
  )
  # The signature refuses another dtype; TF asserts name the rest.
  assert "expected to be a uint8 tensor but is a float" in err["dtype"]
  assert "images must have 3 (RGB) channels" in err["channels"]
  assert "images must be [N, H, W, 3] (rank 4)" in err["rank"]
  assert "images: empty batch (N = 0)" in err["empty"]
  assert "images have no pixels (H or W = 0)" in err["no_pixels"]
  for name in ("dtype", "channels", "rank", "empty", "no_pixels"):
    assert err[name].startswith("InvalidArgumentError"), err[name]


def test_savedmodel_metadata(tf_export, run):
  *_, names, step = run
  assert os.path.isfile(os.path.join(tf_export, "saved_model.pb"))
  meta = export.read_metadata(tf_export)
  assert meta["format"] == "savedmodel"
  assert meta["class_names"] == names and meta["step"] == step
  assert meta["boxes"]["order"] == "y_min, x_min, y_max, x_max"
  assert sorted(meta["outputs"]) == sorted(export.TF_OUTPUTS)
  assert "tensorflow_version" in meta


def test_load_jax_refuses_other_folders(tf_export, tmp_path):
  with pytest.raises(ValueError, match="load_jax reads a --format=jax"):
    export.load_jax(tf_export)
  with pytest.raises(FileNotFoundError, match="detector.json: missing"):
    export.load_jax(str(tmp_path))
  (tmp_path / export.METADATA_FILE).write_text('{"format": "jax"}')
  with pytest.raises(FileNotFoundError, match="detector.jax: missing"):
    export.load_jax(str(tmp_path))


def test_export_errors(run, tmp_path):
  config, workdir, *_ = run
  with pytest.raises(ValueError, match="--format='onnx': unknown format"):
    export.export(config, workdir, str(tmp_path / "a"), "onnx")
  empty_workdir = tmp_path / "untrained"
  empty_workdir.mkdir()
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    export.export(config, str(empty_workdir), str(tmp_path / "b"), "jax")
  assert not (tmp_path / "b").exists()
  with pytest.raises(FileNotFoundError, match="step 99"):
    export.export(config, workdir, str(tmp_path / "c"), "jax", step=99)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["untrained"]
  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="is not empty; pass --overwrite"):
    export.export(config, workdir, str(busy), "jax")
  with pytest.raises(FileExistsError, match="holds no detector.json"):
    export.export(config, workdir, str(busy), "jax", overwrite=True)
  assert (busy / "notes.txt").read_text() == "mine"
  with pytest.raises(FileExistsError, match="is a file, not a folder"):
    export.export(config, workdir, str(busy / "notes.txt"), "jax")
  with pytest.raises(ValueError, match="unknown format"):
    export.export(config, workdir, str(busy), "onnx")


def test_overwrite_replaces_an_earlier_export(run, tmp_path):
  config, workdir, *_ = run
  output = tmp_path / "export"
  output.mkdir()  # An existing empty folder is fine.
  export.export(config, workdir, str(output), "jax", step=2)
  assert export.read_metadata(str(output))["step"] == 2
  with pytest.raises(FileExistsError, match="not empty"):
    export.export(config, workdir, str(output), "jax")
  meta = export.export(config, workdir, str(output), "jax", overwrite=True)
  assert meta["step"] == 3 == export.read_metadata(str(output))["step"]
  assert sorted(os.listdir(tmp_path)) == ["export"]  # No staging left.


def test_command_line_error_exit_status(run, jax_export):
  _, workdir, *_ = run
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "ssd_jax.export",
      "--config=configs/shapes.py:small",
      f"--workdir={workdir}",
      "--format=jax",
      f"--output={jax_export}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert out.returncode == 2
  assert "error: --output=" in out.stderr and "--overwrite" in out.stderr


def test_tensorflow_compatible_lowering_is_top_k_and_is_undone():
  # Ties (the lower index first), -inf padding, k = n, along a middle axis.
  x = np.array(
    [[[0.5, 0.9, 0.5, -np.inf, 0.9], [0.0, 0.0, 0.0, 0.0, 0.0]]],
    np.float32,
  )  # [1, 2, 5]
  top_k = jax.jit(lambda v, k: jax.lax.top_k(v, k), static_argnums=1)
  expected = {k: jax.device_get(top_k(x, k)) for k in (3, 5)}
  rule = jax.interpreters.mlir._lowerings[jax.lax.top_k_p]
  with export.tensorflow_compatible_lowering():
    sort = jax.jit(lambda v, k: jax.lax.top_k(v, k), static_argnums=1)
    text = sort.lower(x, 3).as_text()
    for k in (3, 5):
      values, index = jax.device_get(sort(x, k))
      np.testing.assert_array_equal(values, expected[k][0])
      np.testing.assert_array_equal(index, expected[k][1])
  assert "top_k" not in text and "sort" in text
  assert jax.interpreters.mlir._lowerings[jax.lax.top_k_p] is rule
  np.testing.assert_array_equal(expected[3][1], [[[1, 4, 0], [0, 1, 2]]])
