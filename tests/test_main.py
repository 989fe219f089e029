"""Tests for ssd_jax/main.py: the command line and its dispatch to modes.

What each mode computes is tested with its module (test_train.py,
test_evaluator.py, test_predict.py); here: the flags reach the right mode
with the right arguments, through the real command line where it matters.
"""

import json
import math
import os
import subprocess
import sys

import minidata
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import app
from conftest import REPO, load_config
from PIL import Image

from ssd_jax import main
from ssd_jax.data import sources
from ssd_jax.data.voc_folder import VOC_CLASSES

YEARS = ("2007", "2012")


def test_train_mode_through_the_command_line(shapes_run):
  _, stdout = shapes_run
  assert "step 3/3 loss" in stdout
  assert "train finished: {'step': 3" in stdout


def test_eval_and_predict_dispatch(shapes_run, tmp_path):
  workdir, _ = shapes_run
  config = load_config("shapes", "small")
  result = main.run(config, workdir, "eval")
  with open(os.path.join(workdir, "eval_results.json")) as f:
    saved = json.load(f)
  assert saved["step"] == result.step == 3
  assert (saved["mAP"] is None and math.isnan(result.mAP)) or np.isclose(
    saved["mAP"], result.mAP
  )
  assert main.run(config, workdir, "eval", step=2).step == 2
  rng = np.random.default_rng(0)
  for name in ("a", "b"):
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), np.uint8)).save(
      tmp_path / f"{name}.png"
    )
  out_dir = str(tmp_path / "out")
  records = main.run(
    config,
    workdir,
    "predict",
    images=[str(tmp_path / "*.png")],
    output_dir=out_dir,
    min_score=0.0,
  ).records
  assert [os.path.basename(r["image"]) for r in records] == ["a.png", "b.png"]
  with open(os.path.join(out_dir, "predictions.json")) as f:
    assert json.load(f) == records
  with pytest.raises(FileNotFoundError, match="no file matches"):
    main.run(config, workdir, "predict", images=[str(tmp_path / "*.jpg")])
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    main.run(config, str(tmp_path / "empty"), "eval")


def test_eval_mode_prints_the_map(shapes_run):
  workdir, _ = shapes_run
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "ssd_jax.main",
      "--config=configs/shapes.py:small",
      f"--workdir={workdir}",
      "--mode=eval",
      "--step=3",
    ],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "eval finished: step 3: mAP" in out.stdout


def test_stray_arguments_are_refused():
  with pytest.raises(app.UsageError, match="Unexpected arguments"):
    main.main(["ssd_jax.main", "extra"])


# The headline configs on the real data layouts, generated in miniature: a
# few steps of training, an evaluation and eval_results.json, through the
# command line a user types.
E2E_FLAGS = (
  "--config.num_steps=2",
  "--config.eval_every=2",
  "--config.batch_size=4",
  "--config.eval.batch_size=8",
  "--config.eval.num_pictures=2",
  "--config.log_every=1",
)


def _main(config, workdir, *flags, prelude=""):
  """`python -m ssd_jax.main` (or, with a prelude, the same main after it)."""
  if prelude:
    command = [sys.executable, "-c", prelude + "\nmain.app.run(main.main)"]
  else:
    command = [sys.executable, "-m", "ssd_jax.main"]
  command += [f"--config={config}", f"--workdir={workdir}", *flags]
  return subprocess.run(
    command, capture_output=True, text=True, timeout=900, cwd=REPO
  )


def _results(workdir, out):
  assert out.returncode == 0, out.stderr[-4000:]
  assert "train finished: {'step': 2" in out.stdout
  with open(os.path.join(workdir, "eval_results.json")) as f:
    return json.load(f)


def _count_line(stderr, start):
  lines = [line for line in stderr.splitlines() if start in line]
  assert lines, f"no log line with {start!r}:\n{stderr[-3000:]}"
  return lines[0]


@pytest.mark.slow
def test_voc_config_on_a_vocdevkit_folder(tmp_path):
  root = str(tmp_path / "VOCdevkit")
  counts = minidata.write_vocdevkit(root, num_images=6, num_test=5)
  workdir = str(tmp_path / "run")
  out = _main(
    "configs/voc.py:small", workdir, f"--config.data.root={root}", *E2E_FLAGS
  )
  result = _results(workdir, out)
  test = counts[("2007", "test")]
  assert result["num_images"] == test["images"]
  assert list(result["per_class_ap"]) == list(VOC_CLASSES)
  train_images = sum(counts[(y, "trainval")]["images"] for y in YEARS)
  train_boxes = sum(counts[(y, "trainval")]["boxes"] for y in YEARS)
  line = _count_line(out.stderr, f"voc_devkit {root} split '07+12'")
  assert f": {train_images} images" in line
  assert f"{train_boxes} boxes" in line
  line = _count_line(out.stderr, f"voc_devkit {root} split 'test07'")
  assert f"{test['boxes']} boxes ({test['difficult']} difficult" in line


@pytest.mark.slow
def test_coco_config_on_a_coco_folder(tmp_path):
  root = str(tmp_path / "coco")
  counts = minidata.write_coco_folder(root, num_images=6)
  workdir = str(tmp_path / "run")
  out = _main(
    "configs/coco.py:small", workdir, f"--config.data.root={root}", *E2E_FLAGS
  )
  result = _results(workdir, out)
  val = counts["val2017"]
  assert result["num_images"] == val["images"]
  assert "AP50" in result and len(result["per_class_ap"]) == 80
  train = counts["train2017"]
  line = _count_line(out.stderr, f"coco_folder {root} split 'train'")
  assert f": {train['images']} images ({train['images_with_boxes']}" in line
  assert f"{train['boxes']} boxes (0 difficult, 0 crowd)" in line
  line = _count_line(out.stderr, f"coco_folder {root} split 'validation'")
  assert f"{val['crowd']} crowd)" in line  # Kept, marked, for the metric.


def _prepared(tmp_path, names, write):
  """tfds data prepared by sources.prepare_tfds from generated archives."""
  archives, data_dir = str(tmp_path / "archives"), str(tmp_path / "tfds")
  counts = write(archives)
  for name in names:
    builder_cls = type(tfds.builder(name, data_dir=data_dir))
    with minidata.local_archives(builder_cls, archives):
      sources.prepare_tfds(name, data_dir, manual_dir=archives)
  return data_dir, counts


@pytest.mark.slow
def test_voc_config_through_tfds_prepared_from_the_release_tars(tmp_path):
  data_dir, _ = _prepared(
    tmp_path,
    ["voc/2007", "voc/2012"],
    lambda d: minidata.write_voc_release_archives(d, num_images=4),
  )
  counts = minidata.write_vocdevkit(str(tmp_path / "same"), num_images=4)
  workdir = str(tmp_path / "run")
  out = _main(
    "configs/voc.py:small",
    workdir,
    f"--config.data.data_dir={data_dir}",
    *E2E_FLAGS,
  )
  result = _results(workdir, out)
  test = counts[("2007", "test")]
  assert result["num_images"] == test["images"]
  line = _count_line(out.stderr, "tfds voc/2007 split 'test'")
  assert f": {test['images']} images" in line
  assert f"{test['boxes']} boxes ({test['difficult']} difficult" in line
  _count_line(out.stderr, "tfds voc/2012 split 'train+validation'")


@pytest.mark.slow
def test_coco_config_through_tfds_prepared_from_the_release_zips(tmp_path):
  data_dir, _ = _prepared(
    tmp_path,
    ["coco/2017"],
    lambda d: minidata.write_coco_release_archives(d, num_images=4),
  )
  counts = minidata.write_coco_folder(str(tmp_path / "same"), num_images=4)
  workdir = str(tmp_path / "run")
  out = _main(
    "configs/coco.py:small",
    workdir,
    f"--config.data.data_dir={data_dir}",
    *E2E_FLAGS,
  )
  result = _results(workdir, out)
  assert result["num_images"] == counts["val2017"]["images"]
  line = _count_line(out.stderr, "tfds coco/2017 split 'validation'")
  assert f"{counts['val2017']['crowd']} crowd)" in line


def test_headline_command_without_data_says_how_to_supply_it(tmp_path):
  # As on a machine with no network: the download host is unreachable.
  prelude = (
    "from ssd_jax import main\n"
    "from ssd_jax.data import sources\n"
    "sources._reachable = lambda url, timeout=5.0: False"
  )
  data_dir = str(tmp_path / "tfds")
  out = _main(
    "configs/voc.py",
    str(tmp_path / "run"),
    f"--config.data.data_dir={data_dir}",
    prelude=prelude,
  )
  assert out.returncode == 2, out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  err = out.stderr
  assert f"tfds dataset voc/2007 is not prepared in {data_dir}" in err
  assert "VOCtrainval_06-Nov-2007.tar" in err
  assert "--config.data.root=/path/to/VOCdevkit" in err
