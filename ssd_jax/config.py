"""Configs: the shared defaults, `:small`, loading a config file, validation.

Every file in `configs/` imports this module alone: it needs only
`ml_collections` (no jax, flax, optax, orbax or TensorFlow), so reading a
config is cheap and cannot start an accelerator backend. A config file
defines `get_config(arg=None)`; `--config=configs/voc.py:small` passes
"small" as `arg`, which `is_small` checks.

  config = config_from_file("configs/voc.py", "small")
  validate_config(config, num_devices=jax.device_count())

`base_config()` is the schema: it holds every field a config may set (the
data fields as typed placeholders, None meaning "the source's default"), so
that `--config.data.shuffle_buffer=64` works for any config file, a typo is
an error naming the field and its section's fields (`check_fields`), and a
value of the wrong type is an error naming both types. ml_collections itself
refuses, on the command line, an unknown field ('Did you mean ...?') and a
value its field's type cannot parse.
"""

import difflib
import importlib.util
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

# config.eval.metric: VOC AP (07 11-point or area) or COCO AP.
EVAL_METRICS = ("voc", "coco")
# config.eval.nms: per-class NMS in numpy on the host (the release's
# DetectionOutput, `ssd_jax.postprocess`) or jitted on the device
# (`ssd_jax.device_postprocess`, the same rule).
EVAL_NMS = ("host", "device")
# config.parallel: the step's wrapper, `jax.pmap` or `jax.jit(jax.shard_map)`
# (`ssd_jax.step`; configs import only this module, so the names live here).
PARALLEL_MODES = ("pmap", "shard_map")
# config.recipe: "quick" adapts input size, schedule, augmentation and
# default boxes to the training boxes at the start (`ssd_jax.recipe`).
RECIPES = ("none", "quick")


def _data_fields() -> ml_collections.ConfigDict:
  """Every field of `config.data` (documented in `ssd_jax.data`), unset.

  Typed placeholders: a config file or `--config.data.X=...` sets them; the
  data code reads None as "the source's default" (`dataset.field`).
  """
  p = config_dict.placeholder
  return ml_collections.ConfigDict(
    {
      "source": p(str),
      "root": p(str),
      "class_names": p(object),  # A list, or "a,b,c".
      "train_split": p(str),
      "eval_split": p(str),
      "max_boxes": p(int),
      "eval_max_boxes": p(int),
      "train_difficult": p(bool),
      "augment": p(bool),
      "augment_config": p(object),  # {AugmentConfig field: value}.
      "data_dir": p(str),
      "tfds_manual_dir": p(str),
      "tfds_skip_decoding": p(bool),
      "shuffle_buffer": p(int),
      "count_boxes": p(bool),
      "num_train": p(int),
      "num_eval": p(int),
      "synthetic_image_size": p(int),
      "synthetic_seed": p(int),
      "max_objects": p(int),
      "min_object_size": p(float),
      "max_object_size": p(float),
      "num_parallel_calls": p(int),
      "num_threads": p(int),
      "prefetch": p(int),
      "autotune": p(bool),
    }
  )


def base_config() -> ml_collections.ConfigDict:
  """Training defaults shared by configs/*.py: the paper's VOC recipe.

  SGD momentum 0.9, weight decay 5e-4 (not on biases, see
  `optim.weight_decay_mask`), lr 1e-3 after a linear warm-up, batch 32, 120k
  steps with x0.1 decays at 80k and 100k (the Caffe release, 07+12), VOC07
  11-point mAP evaluation with the release's inference settings.

  Returns:
    A ConfigDict; `model` and `data` must be filled in by the config file
    (`data.source` at least; the other data fields are optional).
  """
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(
    {
      "name": "ssd300",
      # "vgg16" (the paper's SSD: `name` ssd300 / ssd512 / ssd), "resnet50"
      # (NVIDIA's SSD300 v1.1) or "mobilenet_v3_large" (torchvision's
      # SSDLite); see `ssd_jax.models.from_config`.
      "backbone": "vgg16",
      # VGG models: a BatchNorm after every trunk and extra-block
      # convolution (trains from scratch far faster; `models.SSD`).
      "batch_norm": False,
      # VGG models: conv3_3 (stride 4) as a first source map, for objects
      # too small for conv4_3's stride-8 grid (`models.SSD`).
      "conv3_3_map": False,
      # VGG models: "space_to_depth" runs conv1 at half resolution on 2x2
      # pixel blocks instead of full resolution and pool1 (`models.VGG16`);
      # "vgg" is the paper's.
      "stem": "vgg",
      # BatchNorm models: use the running statistics in training, no
      # updates (for small per-device batches).
      "freeze_batch_norm": False,
      # mobilenet_v3_large: SSDLite's reduced tail (torchvision's default);
      # False takes ImageNet MobileNetV3 weights (full tail) for init_from.
      "reduced_tail": True,
      "image_size": 300,
      "width": 1.0,
      "dtype": "float32",
      "param_dtype": "float32",
      # "torchvision" for weights imported with `ssd_jax.weights --from
      # torchvision-ssd300` (trained with torchvision's default boxes);
      # "fitted": scales fitted to the training boxes at the start of
      # training (`train.fit_priors`, VGG models), kept in the workdir.
      "priors": "default",
      # priors="fitted": one size per map in input pixels (min: the square,
      # max: sqrt(min * max) the second square); () = fit them at training
      # start. Set from <workdir>/default_boxes.json for a fitted workdir.
      "prior_min_sizes": (),
      "prior_max_sizes": (),
      # Cheaper max-pool and BatchNorm gradients on XLA CPU (`cpu_ops`);
      # "auto" = on for the CPU.
      "cpu_fast_ops": "auto",
    }
  )
  c.data = _data_fields()
  c.seed = 0
  c.batch_size = 32
  c.num_steps = 120_000
  c.optimizer = "sgd"
  c.learning_rate = 1e-3
  c.warmup_steps = 1_000
  c.warmup_init_factor = 0.1
  c.lr_boundaries = (80_000, 100_000)
  c.lr_decay_factor = 0.1
  c.lr_schedule = "piecewise"  # Or "cosine" over num_steps (no boundaries).
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.grad_clip_norm = 0.0  # 0: no clipping.
  c.neg_pos_ratio = 3.0
  c.iou_threshold = 0.5
  c.variances = (0.1, 0.2)
  c.init_from = ""
  # RECIPES: "quick" chooses image size, schedule, augmentation and default
  # boxes from the training boxes (`ssd_jax.recipe`); fields set on the
  # command line are kept.
  c.recipe = "none"
  c.log_every = 50
  c.eval_every = 10_000
  c.checkpoint_every = 5_000
  c.keep_checkpoints = 3
  # The data-parallel step's wrapper (PARALLEL_MODES, `ssd_jax.step`): "pmap"
  # (the design card's) or "shard_map" (jit(shard_map) over a device mesh);
  # the same step body and checkpoints.
  c.parallel = "pmap"
  c.eval = ml_collections.ConfigDict(
    {
      "metric": "voc",
      "use_07_metric": True,
      "score_threshold": 0.01,
      "nms_threshold": 0.45,
      "top_k_per_class": 400,
      "max_detections": 200,
      "nms": "host",  # EVAL_NMS: "host" (numpy) or "device" (jitted).
      # Average each default box's outputs with the mirrored image's
      # (`detect.predict`): for a model trained with mirrored images and
      # mirror-symmetric default boxes (not the Caffe SSD300 grid).
      "flip": False,
      "batch_size": 8,
      "num_pictures": 8,
    }
  )
  return c


def apply_small(
  config: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """The small CPU model and schedule of configs/shapes.py (`:small`).

  A width-1/4 SSD on 96x96 inputs (832 default boxes), batch 16, a short
  schedule with a larger learning rate; suited to the synthetic shapes set
  or a quick local smoke run of another dataset.

  Args:
    config: a full config; modified in place.

  Returns:
    The same config.
  """
  config.model.name = "ssd"
  config.model.image_size = 96
  config.model.width = 0.25
  config.batch_size = 16
  config.num_steps = 1_200
  # A width-1/4 VGG without pre-training and without batch norm trains far
  # more reliably with Adam than with the paper's SGD (SGD at lr 0.02
  # diverged here); the L2 term stays as in the recipe.
  config.optimizer = "adam"
  config.learning_rate = 2e-3
  config.warmup_steps = 100
  config.warmup_init_factor = 0.1
  config.lr_boundaries = (900, 1_100)
  config.grad_clip_norm = 0.0
  config.log_every = 50
  config.eval_every = 400
  config.checkpoint_every = 200
  config.eval.batch_size = 32
  config.eval.top_k_per_class = 100
  config.eval.max_detections = 50
  return config


def is_small(arg: str | None, path: str) -> bool:
  """Whether a config file's argument asks for `:small`.

  Args:
    arg: the text after ":" in `--config=path:arg`, or None.
    path: the config file, named in the error.

  Returns:
    True for "small", False for None or "".

  Raises:
    ValueError: naming the file for any other argument.
  """
  if arg == "small":
    return True
  if arg:
    name = os.path.join("configs", os.path.basename(path))
    raise ValueError(f"{name} takes no argument or 'small', got {arg!r}")
  return False


def config_from_file(
  path: str, arg: str | None = None
) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file such as `configs/voc.py`.

  What `--config=path:arg` gives on the command line, for code and tests.

  Args:
    path: a Python file defining `get_config(arg=None)`.
    arg: the text after ":" (e.g. "small"), or None.

  Returns:
    The file's ConfigDict.

  Raises:
    FileNotFoundError: naming the path when it does not exist.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} not found")
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"ssd_jax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
  """Raises the one message for an enumerated field with a bad value.

  Args:
    name: the field's dotted path below `config`, e.g. "eval.metric".
    value: its value.
    choices: the valid values.

  Raises:
    ValueError: "config.<name> must be one of 'a', 'b'; got 'c'".
  """
  if value not in choices:
    valid = ", ".join(repr(c) for c in choices)
    raise ValueError(f"config.{name} must be one of {valid}; got {value!r}")


def _type_ok(value: Any, expected: type) -> bool:
  if expected is object:
    return True
  if expected is bool:
    return isinstance(value, bool)
  if isinstance(value, bool):  # bool is an int, but never a number here.
    return False
  if expected is int:
    return isinstance(value, numbers.Integral)
  if expected is float:
    return isinstance(value, numbers.Real)
  if expected is tuple:
    return isinstance(value, (tuple, list))
  return isinstance(value, expected)


def _check_section(section: Any, schema: Any, path: str) -> None:
  if not isinstance(section, Mapping | ml_collections.ConfigDict):
    raise TypeError(
      f"{path} is {type(section).__name__} {section!r}, expected a section "
      "(ConfigDict)"
    )
  valid = sorted(schema.keys())
  for key in section.keys():
    if key not in schema:
      close = difflib.get_close_matches(key, valid, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise ValueError(
        f"{path}.{key} is not a field{hint}; {path} has: {', '.join(valid)}"
      )
    value, want = section[key], schema[key]
    if isinstance(want, ml_collections.ConfigDict):
      _check_section(value, want, f"{path}.{key}")
      continue
    if value is None:
      if want is None:  # A placeholder: None is the source's default.
        continue
      raise TypeError(f"{path}.{key} is None, expected {type(want).__name__}")
    expected = schema.get_ref(key).get_type()
    if not _type_ok(value, expected):
      raise TypeError(
        f"{path}.{key} is {type(value).__name__} {value!r}, expected "
        f"{expected.__name__}"
      )


def check_fields(config: ml_collections.ConfigDict) -> None:
  """Checks every field name and type against `base_config()`.

  Args:
    config: a config (from a config file, with command-line overrides).

  Raises:
    ValueError: naming a field that `base_config()` does not have, and
      listing the fields of its section.
    TypeError: naming a field whose value has another type than its
      default's, with both types (an int where a float is expected is
      fine; a bool is not an int; None only for the data placeholders).
  """
  _check_section(config, base_config(), "config")


def validate_config(
  config: ml_collections.ConfigDict,
  num_devices: int,
  num_processes: int = 1,
) -> None:
  """Checks the training fields that would otherwise fail obscurely.

  Field names and types first (`check_fields`), then values.

  Args:
    config: the training config.
    num_devices: devices over all processes (`jax.device_count()`); the
      global batch must split evenly over them.
    num_processes: processes of the run (`jax.process_count()`), for the
      message.

  Raises:
    ValueError: naming the bad field (an unknown one with its section's
      fields; an enumerated one with its valid values).
    TypeError: naming a field of the wrong type, with both types.
    FileNotFoundError: when config.data.root is not a folder.
  """
  check_fields(config)
  if config.batch_size <= 0 or config.batch_size % num_devices:
    raise ValueError(
      f"config.batch_size={config.batch_size} must be a positive multiple of "
      f"the number of devices ({num_devices}: {num_processes} process(es) x "
      f"{num_devices // max(num_processes, 1)} local device(s))"
    )
  for field in ("num_steps", "log_every"):
    if config[field] <= 0:
      raise ValueError(f"config.{field} must be > 0, got {config[field]}")
  for field in ("eval_every", "checkpoint_every", "keep_checkpoints"):
    if config[field] < 0:
      raise ValueError(f"config.{field} must be >= 0, got {config[field]}")
  data = config.data
  if data.get("source") == "voc_folder":
    root = data.get("root") or ""
    if not root:
      raise ValueError(
        "config.data.root must name the VOC-format folder (holding "
        "JPEGImages/, Annotations/, ImageSets/Main/) for source 'voc_folder'"
      )
    if not os.path.isdir(root):
      raise FileNotFoundError(
        f"config.data.root={root!r} is not a folder (source 'voc_folder')"
      )
  check_choice("eval.metric", config.eval.metric, EVAL_METRICS)
  check_choice("recipe", config.recipe, RECIPES)
  check_choice("parallel", config.parallel, PARALLEL_MODES)
  check_choice("eval.nms", config.eval.nms, EVAL_NMS)
