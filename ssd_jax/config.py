"""Configs: the shared defaults, `:small`, loading a config file, validation.

Every file in `configs/` imports this module alone: it needs only
`ml_collections` (no jax, flax, optax, orbax or TensorFlow), so reading a
config is cheap and cannot start an accelerator backend. A config file
defines `get_config(arg=None)`; `--config=configs/voc.py:small` passes
"small" as `arg`, which `is_small` checks.

  config = config_from_file("configs/voc.py", "small")
  validate_config(config, num_devices=jax.device_count())
"""

import importlib.util
import os

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Training defaults shared by configs/*.py: the paper's VOC recipe.

  SGD momentum 0.9, weight decay 5e-4 (not on biases, see
  `optim.weight_decay_mask`), lr 1e-3 after a linear warm-up, batch 32, 120k
  steps with x0.1 decays at 80k and 100k (the Caffe release, 07+12), VOC07
  11-point mAP evaluation with the release's inference settings.

  Returns:
    A ConfigDict; `model` and `data` must be filled in by the config file.
  """
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(
    {
      "name": "ssd300",
      "image_size": 300,
      "width": 1.0,
      "dtype": "float32",
      "param_dtype": "float32",
      # "torchvision" for weights imported with `ssd_jax.weights --from
      # torchvision-ssd300` (trained with torchvision's default boxes).
      "priors": "default",
      # Cheaper max-pool gradient on XLA CPU; "auto" = on for the CPU.
      "cpu_fast_ops": "auto",
    }
  )
  c.data = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 32
  c.num_steps = 120_000
  c.optimizer = "sgd"
  c.learning_rate = 1e-3
  c.warmup_steps = 1_000
  c.warmup_init_factor = 0.1
  c.lr_boundaries = (80_000, 100_000)
  c.lr_decay_factor = 0.1
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.grad_clip_norm = 0.0  # 0: no clipping.
  c.neg_pos_ratio = 3.0
  c.iou_threshold = 0.5
  c.variances = (0.1, 0.2)
  c.init_from = ""
  c.log_every = 50
  c.eval_every = 10_000
  c.checkpoint_every = 5_000
  c.keep_checkpoints = 3
  c.eval = ml_collections.ConfigDict(
    {
      "metric": "voc",
      "use_07_metric": True,
      "score_threshold": 0.01,
      "nms_threshold": 0.45,
      "top_k_per_class": 400,
      "max_detections": 200,
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


def validate_config(
  config: ml_collections.ConfigDict,
  num_devices: int,
  num_processes: int = 1,
) -> None:
  """Checks the training fields that would otherwise fail obscurely.

  Args:
    config: the training config.
    num_devices: devices over all processes (`jax.device_count()`); the
      global batch must split evenly over them.
    num_processes: processes of the run (`jax.process_count()`), for the
      message.

  Raises:
    ValueError: naming the bad field.
    FileNotFoundError: when config.data.root is not a folder.
  """
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
  if config.eval.metric not in ("voc", "coco"):
    raise ValueError(
      f"config.eval.metric must be 'voc' or 'coco', got {config.eval.metric!r}"
    )
