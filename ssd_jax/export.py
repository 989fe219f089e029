r"""Export a trained detector: a `jax.export` artefact or a TF SavedModel.

  python -m ssd_jax.export --config=configs/voc.py --workdir=/tmp/ssd_voc \
    --format=jax --output=/tmp/ssd_voc_jax
  ... --format=savedmodel --output=/tmp/ssd_voc_tf  # [--step=N] [--overwrite]

Both formats serve `ssd_jax.detect.detect` end to end (resize and normalise
as evaluation does, the network, decoding, per-class NMS on the device): one
call takes a batch of uint8 RGB images [N, H, W, 3] of one size and returns
padded detections, K = `eval.max_detections` rows per image of which the
first `num_detections` are valid (highest score first; padding rows are 0).
The batch size N and the image height H and width W are symbolic: one
artefact serves any batch of any image size (N, H, W >= 1).

The model's variables are arguments of the exported computation, not
constants baked into it: they are stored beside it (the jax artefact's
`variables.npz`, the SavedModel's own variables), so the computation is the
one `jax.jit(detect)` compiles, with the same detections, and XLA does not
constant-fold 100 MB of weights at every load.

What `--output=DIR` holds:
- `--format=jax`: `detector.jax` (the `jax.export.Exported`, serialised),
  `variables.npz` (its variable leaves in flattening order) and
  `detector.json`. `load_jax(DIR)` returns a callable `images -> dict` with
  the keys of `detect.DeviceDetections`: "boxes" [N, K, 4] float32
  (x_min, y_min, x_max, y_max) in pixels of the input images, "scores"
  [N, K] float32, "labels" [N, K] int32 (1..C-1; 0 in padding rows),
  "num_detections" [N] int32. Without this package, jax alone runs it:

    exported = jax.export.deserialize(bytearray(open(".../detector.jax",
                                                     "rb").read()))
    stored = np.load(".../variables.npz")
    leaves = [stored[k] for k in sorted(stored.files)]
    args, kwargs = jax.tree.unflatten(exported.in_tree, [*leaves, images])
    out = exported.call(*args, **kwargs)  # the dict above
- `--format=savedmodel`: a TF SavedModel (`jax2tf` with native
  serialisation: the XLA computation runs in TensorFlow's XlaCallModule
  op; TensorFlow alone loads and runs it, without jax) and
  `detector.json`. Its `serving_default` signature takes `images` uint8
  [None, None, None, 3] and returns, in TensorFlow's object-detection
  convention, `detection_boxes` [N, K, 4] float32 (y_min, x_min, y_max,
  x_max) normalised to [0, 1] of the input image, `detection_scores`
  [N, K] float32, `detection_classes` [N, K] int32 (1..C-1; 0 in padding
  rows) and `num_detections` [N] int32. A wrong dtype is refused by the
  signature; a rank other than 4, a channel count other than 3, an empty
  batch or an image without pixels fail with an InvalidArgumentError
  naming the problem. TensorFlow 2.21 reads StableHLO up to 1.13.7 and
  jax 0.10.2 writes `lax.top_k` in a form only 1.15 reads, so this export
  lowers `lax.top_k` as a stable sort (`tensorflow_compatible_lowering`:
  the same values and indices).

`detector.json` records what a caller needs without this package: class
names (label k is `class_names[k - 1]`), input dtype and layout, the
model's input size and normalisation (both applied inside), box order and
frame, the decoding settings, the checkpoint step, the platforms lowered
for and the jax (and TensorFlow) versions.

The output folder must not exist or be empty; `--overwrite` replaces an
earlier export (a folder holding `detector.json`) and nothing else. The
export is written to a temporary folder beside it and renamed into place,
so a failed export leaves no half-written output.
"""

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from jax import lax
from jax.interpreters import mlir
from ml_collections import config_flags

from ssd_jax import checkpoint as ckpt_lib
from ssd_jax import config as config_lib
from ssd_jax import detect as detect_lib
from ssd_jax import runtime, train
from ssd_jax.data import image as image_lib
from ssd_jax.models import variables as model_vars

FORMATS = ("jax", "savedmodel")
METADATA_FILE = "detector.json"
JAX_FILE = "detector.jax"
VARIABLES_FILE = "variables.npz"
SIGNATURE = "serving_default"
# Symbolic input shape of both formats: any batch, any image size.
INPUT_SHAPE = "n, h, w, 3"
# The SavedModel's outputs, in TensorFlow's object-detection names.
TF_OUTPUTS = (
  "detection_boxes",
  "detection_scores",
  "detection_classes",
  "num_detections",
)


def detector_fn(
  model: Any, settings: detect_lib.DetectSettings
) -> Callable[[Any, jax.Array], dict[str, jax.Array]]:
  """The exported computation of `--format=jax`: `detect` as a dict.

  Args:
    model: the SSD module (any of the zoo).
    settings: the decoding settings (`DetectSettings.from_config`).

  Returns:
    A pure function `(variables, images) -> dict` of the model's variables
    and uint8 [N, H, W, 3] RGB images, returning `detect`'s fields:
    "boxes" [N, K, 4] float32 (x_min, y_min, x_max, y_max) input pixels,
    "scores" [N, K] float32, "labels" [N, K] int32, "num_detections" [N]
    int32.
  """

  def detector(variables, images):
    return dict(detect_lib.detect(model, variables, images, settings)._asdict())

  return detector


def tf_detector_fn(
  model: Any, settings: detect_lib.DetectSettings
) -> Callable[[Any, jax.Array], dict[str, jax.Array]]:
  """The exported computation of `--format=savedmodel`, TF's convention.

  Args:
    model: the SSD module.
    settings: the decoding settings.

  Returns:
    A pure function `(variables, images) -> dict`: "detection_boxes"
    [N, K, 4] float32 (y_min, x_min, y_max, x_max) normalised to [0, 1] of
    the input image, "detection_scores" [N, K] float32,
    "detection_classes" [N, K] int32, "num_detections" [N] int32.
  """
  detector = detector_fn(model, settings)

  def tf_detector(variables, images):
    out = detector(variables, images)
    height, width = images.shape[1], images.shape[2]  # symbolic when exported
    size = jnp.array([width, height, width, height], jnp.float32)
    boxes = out["boxes"] / size  # [N, K, 4] (x_min, y_min, x_max, y_max)
    return {
      "detection_boxes": boxes[..., jnp.array([1, 0, 3, 2])],
      "detection_scores": out["scores"],
      "detection_classes": out["labels"],
      "num_detections": out["num_detections"],
    }

  return tf_detector


def export_jax(
  model: Any,
  variables: Any,
  settings: detect_lib.DetectSettings,
  platforms: Sequence[str] = ("cpu",),
) -> jax.export.Exported:
  """`detector_fn` exported for a symbolic batch and image size.

  Args:
    model: the SSD module.
    variables: its variables (or a bare parameter tree).
    settings: the decoding settings.
    platforms: the platforms to lower for ("cpu", "cuda", "rocm", "tpu").

  Returns:
    The `jax.export.Exported` of `(variables, images [n, h, w, 3] uint8)`.
  """
  variables = model_vars.as_variables(variables)
  specs = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), variables
  )
  images = jax.ShapeDtypeStruct(
    jax.export.symbolic_shape(INPUT_SHAPE), jnp.uint8
  )
  fn = jax.jit(detector_fn(model, settings))
  return jax.export.export(fn, platforms=tuple(platforms))(specs, images)


def metadata(
  model: Any,
  class_names: Sequence[str],
  settings: detect_lib.DetectSettings,
  step: int,
  fmt: str,
  platforms: Sequence[str],
) -> dict[str, Any]:
  """The `detector.json` of an export (see the module docstring).

  Args:
    model: the SSD module.
    class_names: the dataset's class names, without background.
    settings: the decoding settings.
    step: the checkpoint step exported.
    fmt: "jax" or "savedmodel".
    platforms: the platforms lowered for.

  Returns:
    A JSON-serialisable dict.
  """
  kind = model_vars.normalization_of(model)
  scale, offset = image_lib.normalization(kind)
  if fmt == "jax":
    outputs = {
      "boxes": "[N, K, 4] float32 (x_min, y_min, x_max, y_max), pixels of "
      "the input image (continuous corners: pixel k covers [k, k + 1))",
      "scores": "[N, K] float32 class probability",
      "labels": "[N, K] int32 1..C-1 (class_names[label - 1]); 0 in padding",
      "num_detections": "[N] int32 valid rows, highest score first",
    }
    boxes = {"order": "x_min, y_min, x_max, y_max", "frame": "input pixels"}
    files = {"computation": JAX_FILE, "variables": VARIABLES_FILE}
  else:
    outputs = {
      "detection_boxes": "[N, K, 4] float32 (y_min, x_min, y_max, x_max) "
      "normalised to [0, 1] of the input image",
      "detection_scores": "[N, K] float32 class probability",
      "detection_classes": "[N, K] int32 1..C-1 (class_names[label - 1]); "
      "0 in padding",
      "num_detections": "[N] int32 valid rows, highest score first",
    }
    boxes = {
      "order": "y_min, x_min, y_max, x_max",
      "frame": "normalised [0, 1] of the input image",
    }
    files = {"savedmodel": ".", "signature": SIGNATURE}
  meta = {
    "format": fmt,
    "files": files,
    "class_names": list(class_names),
    "num_classes": len(class_names) + 1,
    "input": {
      "name": "images",
      "dtype": "uint8",
      "shape": ["N", "H", "W", 3],
      "layout": "NHWC RGB 0..255, one image size per batch; N, H, W >= 1",
      "preprocessing": "applied inside: bilinear resize to the model input, "
      "then x * scale + offset, as evaluation does",
    },
    "model_input_size": int(model.image_size),
    "normalization": {
      "kind": kind,
      "scale": [float(v) for v in scale],
      "offset": [float(v) for v in offset],
    },
    "outputs": outputs,
    "boxes": boxes,
    "max_detections": int(settings.max_detections),
    "detect_settings": {
      k: (list(v) if isinstance(v, tuple) else v)
      for k, v in settings._asdict().items()
    },
    "step": int(step),
    "platforms": list(platforms),
    "jax_version": jax.__version__,
  }
  if fmt == "savedmodel":
    import tensorflow as tf  # Only this format needs TensorFlow.

    meta["tensorflow_version"] = tf.__version__
  return meta


def save_jax(
  directory: str,
  model: Any,
  variables: Any,
  settings: detect_lib.DetectSettings,
  platforms: Sequence[str] = ("cpu",),
) -> None:
  """Writes `detector.jax` and `variables.npz` into `directory`.

  Args:
    directory: an existing folder.
    model, variables, settings, platforms: as `export_jax`.
  """
  variables = model_vars.as_variables(variables)
  exported = export_jax(model, variables, settings, platforms)
  with open(os.path.join(directory, JAX_FILE), "wb") as f:
    f.write(exported.serialize())
  leaves = jax.device_get(jax.tree.leaves(variables))
  np.savez(
    os.path.join(directory, VARIABLES_FILE),
    **{f"{i:05d}": np.asarray(x) for i, x in enumerate(leaves)},
  )


def load_jax(directory: str) -> Callable[[Any], dict[str, jax.Array]]:
  """The detector of a `--format=jax` export.

  Args:
    directory: the export's folder.

  Returns:
    A function of uint8 images [N, H, W, 3] (numpy or jax; any N, H, W >=
    1) returning {"boxes", "scores", "labels", "num_detections"} (see the
    module docstring); inputs are checked as `detect.check_images` does.

  Raises:
    FileNotFoundError: naming a missing file of the export.
    ValueError: when the folder holds another format's export.
  """
  meta = read_metadata(directory)
  if meta.get("format") != "jax":
    raise ValueError(
      f"{os.path.join(directory, METADATA_FILE)}: format is "
      f"{meta.get('format')!r}, load_jax reads a --format=jax export"
    )
  paths = [os.path.join(directory, f) for f in (JAX_FILE, VARIABLES_FILE)]
  for path in paths:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: missing; export again")
  with open(paths[0], "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  with np.load(paths[1]) as stored:
    leaves = [jnp.asarray(stored[k]) for k in sorted(stored.files)]
  call = jax.jit(exported.call)

  def detector(images):
    detect_lib.check_images(images)
    args, kwargs = jax.tree.unflatten(exported.in_tree, [*leaves, images])
    return call(*args, **kwargs)

  return detector


def read_metadata(directory: str) -> dict[str, Any]:
  """The `detector.json` of an export.

  Raises:
    FileNotFoundError: naming the file when it is missing.
  """
  path = os.path.join(directory, METADATA_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"{path}: missing; {directory} is not an ssd_jax export"
    )
  with open(path) as f:
    return json.load(f)


def _top_k_by_sort(operand: jax.Array, *, k: int, axis: int = -1):
  """`lax.top_k` as a stable sort: the same values and indices.

  Sorting the negated values ascending, stably, puts equal values in index
  order, which is `lax.top_k`'s order (the lower index first).

  Args:
    operand: [..., n, ...] float.
    k: how many to keep along `axis`.
    axis: the axis to select along.

  Returns:
    (values [..., k, ...] of operand's dtype, indices [..., k, ...] int32).
  """
  index = lax.broadcasted_iota(jnp.int32, operand.shape, axis)
  negated, index = lax.sort(
    (-operand, index), dimension=axis, is_stable=True, num_keys=1
  )
  take = lambda x: lax.slice_in_dim(x, 0, k, axis=axis)
  return -take(negated), take(index)


@contextlib.contextmanager
def tensorflow_compatible_lowering() -> Iterator[None]:
  """Lowers `lax.top_k` as a sort while the context is open.

  jax 0.10.2 serialises `lax.top_k` (the NMS's top-k steps) as a
  `chlo.top_k` composite in StableHLO 1.15 (`vhlo.composite_v2`), which
  TensorFlow 2.21's XlaCallModule (StableHLO 1.13.7) cannot deserialise
  ("unregistered operation 'vhlo.composite_v2'"); serialising for 1.13.7
  instead decomposes it into ops TensorFlow cannot refine for a symbolic
  batch size ("Module has dynamic shapes"). A stable sort gives the same
  values and indices and lowers to ops TensorFlow 2.21 runs. The previous
  rule is restored on exit (it is read from `mlir._lowerings`: jax has no
  public way to unregister a lowering).
  """
  previous = mlir._lowerings.get(lax.top_k_p)
  mlir.register_lowering(
    lax.top_k_p, mlir.lower_fun(_top_k_by_sort, multiple_results=True)
  )
  try:
    yield
  finally:
    mlir._lowerings[lax.top_k_p] = previous


def savedmodel_module(
  model: Any,
  variables: Any,
  settings: detect_lib.DetectSettings,
  platforms: Sequence[str] = ("cpu",),
):
  """A `tf.Module` whose `serve` is the SavedModel's `serving_default`.

  The variables become `tf.Variable`s of the module; `serve` checks its
  input (rank 4, 3 channels, a non-empty batch, pixels) with TensorFlow
  asserts, then calls `tf_detector_fn` converted by `jax2tf` (native
  serialisation, symbolic batch and image size, lowered under
  `tensorflow_compatible_lowering`).

  Args:
    model, variables, settings, platforms: as `export_jax`.

  Returns:
    The `tf.Module`; its attribute `serve` is a `tf.function` of `images`
    uint8 [None, None, None, 3], traced already.
  """
  import tensorflow as tf  # Only this format needs TensorFlow.
  from jax.experimental import jax2tf

  variables = jax.device_get(model_vars.as_variables(variables))
  module = tf.Module()
  module.variables_ = tf.nest.map_structure(
    lambda x: tf.Variable(np.asarray(x), trainable=False), variables
  )
  converted = jax2tf.convert(
    tf_detector_fn(model, settings),
    polymorphic_shapes=[None, f"({INPUT_SHAPE})"],
    with_gradient=False,
    native_serialization_platforms=tuple(platforms),
  )

  @tf.function(
    input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, "images")],
    autograph=False,
  )
  def serve(images):
    shape = tf.shape(images)
    # The static rank is 4 here, so tf.rank would be folded away; counting
    # the dimensions of the fed tensor checks the rank at run time.
    rank = tf.math.count_nonzero(shape >= 0, dtype=tf.int32)
    checks = [
      tf.debugging.assert_equal(
        rank, 4, message="images must be [N, H, W, 3] (rank 4)"
      ),
      tf.debugging.assert_equal(
        shape[-1], 3, message="images must have 3 (RGB) channels"
      ),
      tf.debugging.assert_positive(
        shape[0], message="images: empty batch (N = 0)"
      ),
      tf.debugging.assert_positive(
        tf.reduce_prod(shape[1:]), message="images have no pixels (H or W = 0)"
      ),
    ]
    with tf.control_dependencies(checks):
      images = tf.identity(images)
    return converted(module.variables_, images)

  with tensorflow_compatible_lowering():
    serve.get_concrete_function()  # Lowers the computation now.
  module.serve = serve
  return module


def save_savedmodel(
  directory: str,
  model: Any,
  variables: Any,
  settings: detect_lib.DetectSettings,
  platforms: Sequence[str] = ("cpu",),
) -> None:
  """Writes the SavedModel (`savedmodel_module`) into `directory`.

  Args:
    directory: the folder to write (it may exist, empty).
    model, variables, settings, platforms: as `export_jax`.
  """
  import tensorflow as tf  # Only this format needs TensorFlow.

  module = savedmodel_module(model, variables, settings, platforms)
  with tensorflow_compatible_lowering():
    tf.saved_model.save(module, directory, signatures={SIGNATURE: module.serve})


def check_output(output: str, overwrite: bool = False) -> None:
  """Refuses an output folder an export must not write.

  Args:
    output: the export's folder.
    overwrite: allow replacing an earlier export there.

  Raises:
    FileExistsError: when `output` is a file, or a non-empty folder and not
      (`overwrite` and an earlier export: a folder holding detector.json).
  """
  if os.path.exists(output) and not os.path.isdir(output):
    raise FileExistsError(f"--output={output} is a file, not a folder")
  if not os.path.isdir(output) or not os.listdir(output):
    return
  if not overwrite:
    raise FileExistsError(
      f"--output={output} is not empty; pass --overwrite to replace an "
      "earlier export, or choose another folder"
    )
  if not os.path.isfile(os.path.join(output, METADATA_FILE)):
    raise FileExistsError(
      f"--output={output} is not empty and holds no {METADATA_FILE}: "
      "--overwrite replaces only an earlier export"
    )


def export(
  config: ml_collections.ConfigDict,
  workdir: str,
  output: str,
  fmt: str,
  step: int | None = None,
  overwrite: bool = False,
  platforms: Sequence[str] = ("cpu",),
) -> dict[str, Any]:
  """Exports a training run's checkpoint (see the module docstring).

  Args:
    config: the run's config.
    workdir: the training workdir (its checkpoints).
    output: the folder to write.
    fmt: "jax" or "savedmodel".
    step: the checkpoint step; None for the latest.
    overwrite: replace an earlier export in `output`.
    platforms: the platforms to lower for.

  Returns:
    The metadata written to `output/detector.json`.

  Raises:
    ValueError: for an unknown format or config field.
    FileExistsError: for an output folder it must not write
      (`check_output`).
    FileNotFoundError: when the workdir has no checkpoint (or none of
      `step`).
    checkpoint.UnreadableCheckpointError: when it cannot be read.
  """
  if fmt not in FORMATS:
    raise ValueError(f"--format={fmt!r}: unknown format; one of {FORMATS}")
  check_output(output, overwrite)
  config_lib.check_fields(config)
  config = train.trained_config(config, workdir)
  model, variables, names, step = train.restore_params(config, workdir, step)
  settings = detect_lib.DetectSettings.from_config(config)
  output = os.path.abspath(output)
  staging = f"{output}.tmp-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  try:
    if fmt == "jax":
      save_jax(staging, model, variables, settings, platforms)
    else:
      save_savedmodel(staging, model, variables, settings, platforms)
    meta = metadata(model, names, settings, step, fmt, platforms)
    with open(os.path.join(staging, METADATA_FILE), "w") as f:
      json.dump(meta, f, indent=2)
    if os.path.isdir(output):  # Empty, or an earlier export (checked).
      shutil.rmtree(output)
    os.replace(staging, output)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return meta


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command line's flags.

  Only `python -m ssd_jax.export` calls it: a process that imports this
  module beside `ssd_jax.main` (a test session) defines no flag twice.
  """
  config_flags.DEFINE_config_file(
    "config", None, "The run's config, e.g. configs/voc.py."
  )
  flags.DEFINE_string("workdir", None, "The training workdir (checkpoints).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_enum("format", None, list(FORMATS), "What to write.")
  flags.DEFINE_string("output", None, "The export's folder.")
  flags.DEFINE_bool(
    "overwrite", False, "Replace an earlier export in --output."
  )
  flags.DEFINE_list(
    "platforms", ["cpu"], "Platforms to lower for: cpu, cuda, rocm, tpu."
  )
  flags.mark_flags_as_required(["config", "workdir", "format", "output"])


def main(argv):
  """`python -m ssd_jax.export`: exit status 0, or 2 with a one-line error
  for a missing checkpoint or an output folder it must not write."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.setup()
  try:
    meta = export(
      FLAGS.config,
      FLAGS.workdir,
      FLAGS.output,
      FLAGS.format,
      step=FLAGS.step,
      overwrite=FLAGS.overwrite,
      platforms=FLAGS.platforms,
    )
  except (
    FileNotFoundError,
    FileExistsError,
    ckpt_lib.UnreadableCheckpointError,
  ) as e:  # Each says what to do; a traceback would not.
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(
    f"exported step {meta['step']} as {FLAGS.format} to "
    f"{os.path.abspath(FLAGS.output)}"
  )
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
