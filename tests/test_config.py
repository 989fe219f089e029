"""Tests for ssd_jax/config.py and every config in configs/.

Each config loads, with and without `:small`, validates and builds; reading
one imports nothing heavier than ml_collections.
"""

import glob
import os
import subprocess
import sys
import textwrap

import ml_collections
import pytest
from conftest import REPO, load_config

from ssd_jax import config as config_lib
from ssd_jax import models, optim
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
  assert float(schedule(config.num_steps)) > 0
  if arg == "small":
    assert config.model.image_size <= 96 and config.model.width <= 0.25


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
