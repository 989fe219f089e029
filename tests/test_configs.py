"""Every config in configs/ loads, with and without `:small`, and builds."""

import glob
import os

import ml_collections
import pytest

from ssd_jax import data, models, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
  os.path.splitext(os.path.basename(p))[0]
  for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
)


def load_config(name, arg=None):
  return train.config_from_file(
    os.path.join(REPO, "configs", f"{name}.py"), arg
  )


def test_all_expected_configs_exist():
  assert {"voc", "voc512", "coco", "shapes", "voc_folder"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "small"])
def test_config_loads_and_builds(name, arg, tmp_path):
  config = load_config(name, arg)
  assert isinstance(config, ml_collections.ConfigDict)
  base = train.base_config()
  # Every field of the shared defaults is present (no typos in overrides).
  for key in base.keys():
    assert key in config, key
  for key in base.eval.keys():
    assert key in config.eval, key
  if config.data.source == "voc_folder":
    config.data.root = str(tmp_path)
    config.data.class_names = "cat,dog"
  train.validate_config(config)
  names = data.class_names(config.data)
  model = models.from_config(config.model, num_classes=len(names) + 1)
  assert model.priors().shape[1] == 4
  tx, schedule = train.create_optimizer(config)
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
