"""Tests for ssd_jax/config.py and every config in configs/.

Each config loads, with and without `:small`, validates and builds; reading
one imports nothing heavier than ml_collections.
"""

import glob
import os
import re
import subprocess
import sys
import textwrap
import warnings

import ml_collections
import pytest
from absl import flags
from conftest import REPO, load_config
from ml_collections import config_flags

from ssd_jax import config as config_lib
from ssd_jax import default_boxes, models, optim
from ssd_jax.data import dataset

CONFIGS = sorted(
  os.path.splitext(os.path.basename(p))[0]
  for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
)


def test_all_expected_configs_exist():
  assert {"voc", "voc512", "coco", "shapes", "voc_folder"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "small"])
def test_config_loads_and_builds(name, arg, tmp_path):
  config = load_config(name, arg)
  assert isinstance(config, ml_collections.ConfigDict)
  base = config_lib.base_config()
  # Every field of the shared defaults is present (no typos in overrides).
  for key in base.keys():
    assert key in config, key
  for key in base.eval.keys():
    assert key in config.eval, key
  if config.data.source == "voc_folder":
    config.data.root = str(tmp_path)
    config.data.class_names = "cat,dog"
  config_lib.validate_config(config, num_devices=1)
  names = dataset.class_names(config.data)
  model = models.from_config(config.model, num_classes=len(names) + 1)
  assert model.priors().shape[1] == 4
  tx, schedule = optim.create_optimizer(config)
  assert float(schedule(int(0.99 * config.num_steps))) > 0  # Cosine ends at 0.
  if arg == "small":  # A CPU size (NVIDIA's model exists at 300 px only).
    side = 300 if config.model.backbone == "resnet50" else 96
    assert config.model.image_size <= side and config.model.width <= 0.25


def test_paper_recipe_in_voc_config():
  config = load_config("voc")
  assert (config.model.name, config.model.image_size) == ("ssd300", 300)
  assert config.optimizer == "sgd" and config.momentum == 0.9
  assert config.weight_decay == 5e-4 and config.batch_size == 32
  assert config.learning_rate == 1e-3 and config.num_steps == 120_000
  assert tuple(config.lr_boundaries) == (80_000, 100_000)
  assert config.eval.use_07_metric and config.eval.metric == "voc"
  assert load_config("voc512").model.image_size == 512
  assert load_config("coco").eval.metric == "coco"


def test_small_voc_folder_uses_the_shapes_model_and_schedule():
  small = load_config("voc_folder", "small")
  shapes = load_config("shapes")
  for key in (
    "model",
    "batch_size",
    "num_steps",
    "learning_rate",
    "lr_boundaries",
    "optimizer",
  ):
    assert small[key] == shapes[key], key


@pytest.mark.parametrize("name", CONFIGS)
def test_unknown_argument_is_rejected(name):
  with pytest.raises(ValueError, match="small"):
    load_config(name, "huge")


def test_reading_a_config_imports_no_heavy_package():
  # Every config file, loaded in a fresh interpreter: ssd_jax.config and
  # ml_collections only; no jax, flax, optax, orbax or TensorFlow.
  code = textwrap.dedent(
    f"""
    import glob, sys
    from ssd_jax import config
    for path in sorted(glob.glob({os.path.join(REPO, "configs", "*.py")!r})):
      config.config_from_file(path)
      config.config_from_file(path, "small")
    heavy = ("jax", "flax", "optax", "orbax", "tensorflow")
    print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
    """
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True
  )
  assert out.stdout.strip() == "[]", out.stdout


def test_config_from_file_names_a_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.py"):
    config_lib.config_from_file(str(tmp_path / "nope.py"))


def test_is_small():
  assert config_lib.is_small("small", "configs/x.py")
  assert not config_lib.is_small(None, "configs/x.py")
  assert not config_lib.is_small("", "configs/x.py")
  with pytest.raises(ValueError, match="configs/x.py takes no argument"):
    config_lib.is_small("big", "/somewhere/configs/x.py")


def test_apply_small_is_the_shapes_model():
  config = config_lib.apply_small(config_lib.base_config())
  assert (config.model.image_size, config.model.width) == (96, 0.25)
  assert config.optimizer == "adam" and config.num_steps == 1_200


def test_validate_config_names_bad_fields(tmp_path):
  config = load_config("shapes", "small")
  config.num_steps = 0
  with pytest.raises(ValueError, match="config.num_steps"):
    config_lib.validate_config(config, num_devices=1)
  config = load_config("shapes", "small")
  config.eval.metric = "f1"
  with pytest.raises(ValueError, match="config.eval.metric"):
    config_lib.validate_config(config, num_devices=1)
  config = load_config("voc_folder", "small")
  with pytest.raises(ValueError, match="config.data.root"):
    config_lib.validate_config(config, num_devices=1)
  config.data.root = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="missing"):
    config_lib.validate_config(config, num_devices=1)
  config = load_config("shapes", "small")
  config.batch_size = 6
  with pytest.raises(ValueError, match="multiple of the number of devices"):
    config_lib.validate_config(config, num_devices=4)
  with pytest.raises(ValueError, match="2 process"):
    config_lib.validate_config(config, num_devices=4, num_processes=2)


def parse_command_line(*overrides, config="configs/shapes.py:small"):
  """The config `python -m ssd_jax.main --config=... *overrides` gets.

  The flag is defined as ssd_jax/main.py defines it (ml_collections'
  defaults: the loaded config is locked, unknown fields are refused).
  """
  argv = ["main", f"--config={REPO / config}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config", None, "config file", flag_values=values, sys_argv=argv
  )
  with warnings.catch_warnings():  # ml_collections' importlib load_module.
    warnings.simplefilter("ignore", DeprecationWarning)
    values(argv)
  return values.config


def _fields(section):
  return ", ".join(sorted(config_lib.base_config()[section].keys()))


@pytest.mark.parametrize(
  "section, typo, meant",
  [("data", "sourse", "source"), ("eval", "metrc", "metric")],
)
def test_an_unknown_field_names_it_and_lists_its_section(section, typo, meant):
  config = load_config("shapes", "small")
  config[section][typo] = "x"  # A typo in a config file: not refused here.
  with pytest.raises(ValueError) as info:
    config_lib.validate_config(config, num_devices=1)
  assert str(info.value) == (
    f"config.{section}.{typo} is not a field (did you mean {meant!r}?); "
    f"config.{section} has: {_fields(section)}"
  )
  config = load_config("shapes", "small")
  config.num_step = 10
  with pytest.raises(ValueError, match=r"config\.num_step is not a field"):
    config_lib.validate_config(config, num_devices=1)
  config = load_config("shapes", "small")
  config.model.trunk = "resnet50"  # No such field (and no close one).
  with pytest.raises(
    ValueError, match=r"config\.model\.trunk is not a field; config\.model"
  ):
    config_lib.validate_config(config, num_devices=1)


def test_unknown_fields_on_the_command_line_are_refused_by_ml_collections():
  # ml_collections refuses them while parsing, naming the field and the
  # closest one; validate_config is not reached.
  with pytest.raises(AttributeError, match='Did you mean "source"'):
    parse_command_line("--config.data.sourse=synthetic")
  with pytest.raises(AttributeError, match='Did you mean "metric"'):
    parse_command_line("--config.eval.metrc=coco")
  with pytest.raises(AttributeError, match="zzz"):
    parse_command_line("--config.zzz=1")


def test_every_data_field_can_be_set_on_the_command_line():
  # configs/voc.py sets neither; base_config declares every data field.
  config = parse_command_line(
    "--config.data.shuffle_buffer=64",
    "--config.data.class_names=cat,dog",
    "--config.data.train_difficult=false",
    "--config.data.min_object_size=0.2",
    config="configs/voc.py:small",
  )
  assert config.data.shuffle_buffer == 64
  assert config.data.class_names == "cat,dog"
  assert config.data.train_difficult is False
  assert config.data.min_object_size == 0.2
  assert config.data.eval_max_boxes is None  # Unset: the source's default.
  config_lib.validate_config(config, num_devices=1)


def test_wrong_types_on_the_command_line_name_the_flag():
  for flag in (
    "--config.batch_size=abc",
    "--config.batch_size=1.5",
    "--config.data.max_boxes=many",
    "--config.eval.use_07_metric=maybe",
  ):
    with pytest.raises(flags.IllegalFlagValueError, match=re.escape(flag)):
      parse_command_line(flag)


def test_a_wrong_type_names_the_field_and_both_types():
  config = load_config("shapes", "small")
  # ml_collections refuses most at assignment, naming the field and types.
  with pytest.raises(TypeError, match="'batch_size'.*str.*int"):
    config.batch_size = "16"
  config.batch_size = True  # ... but not a bool for an int (bool is an int).
  with pytest.raises(
    TypeError, match=r"^config\.batch_size is bool True, expected int$"
  ):
    config_lib.validate_config(config, num_devices=1)
  config = load_config("shapes", "small")
  config.num_steps = None
  with pytest.raises(TypeError, match=r"config\.num_steps is None, expected"):
    config_lib.validate_config(config, num_devices=1)
  config = load_config("shapes", "small")
  # A section written as a fresh ConfigDict escapes the field types.
  config.data = ml_collections.ConfigDict(
    {"source": "synthetic", "max_boxes": "8"}
  )
  with pytest.raises(
    TypeError, match=r"^config\.data\.max_boxes is str '8', expected int$"
  ):
    config_lib.validate_config(config, num_devices=1)
  config = load_config("shapes", "small")
  config.model.width = 1  # An int for a float is fine.
  config.data.class_names = ["a", "b"]  # A list or a string.
  config_lib.validate_config(config, num_devices=1)


def _build(config):
  """What train.train_and_evaluate checks, in its order."""
  config_lib.validate_config(config, num_devices=1)
  names = dataset.class_names(config.data)
  models.from_config(config.model, num_classes=len(names) + 1)
  optim.create_optimizer(config)


@pytest.mark.parametrize(
  "field, valid",
  [
    ("data.source", dataset.SOURCES),
    ("model.name", ("ssd300", "ssd512", "ssd")),
    ("model.priors", tuple(default_boxes.NAMED_PRIORS)),
    ("model.dtype", ("float32", "bfloat16")),
    ("model.param_dtype", ("float32", "bfloat16")),
    ("model.cpu_fast_ops", ("auto", "true", "false")),
    ("optimizer", ("sgd", "adam")),
    ("eval.metric", config_lib.EVAL_METRICS),
  ],
)
def test_an_enumerated_field_lists_its_valid_values(field, valid):
  config = parse_command_line(f"--config.{field}=bogus")
  with pytest.raises(ValueError) as info:
    _build(config)
  message = str(info.value)
  assert field in message and "'bogus'" in message, message
  for value in valid:
    assert value in message, (value, message)


def test_the_data_fields_are_those_the_data_code_reads():
  # Every `field(cfg, "name")` read in ssd_jax/data is a field of
  # base_config().data, so that validate_config does not refuse it.
  names = set()
  for path in glob.glob(os.path.join(REPO, "ssd_jax", "data", "*.py")):
    with open(path) as f:
      names |= set(re.findall(r"field\(\w+, \"(\w+)\"", f.read()))
  assert names, "no data field reads found"
  assert names <= set(config_lib.base_config().data.keys()), sorted(
    names - set(config_lib.base_config().data.keys())
  )
  # The split fields are read through a variable key.
  assert {"train_split", "eval_split"} <= set(config_lib.base_config().data)


def test_check_choice():
  config_lib.check_choice("eval.metric", "coco", config_lib.EVAL_METRICS)
  with pytest.raises(
    ValueError, match=r"^config\.x must be one of 'a', 'b'; got 'c'$"
  ):
    config_lib.check_choice("x", "c", ("a", "b"))
