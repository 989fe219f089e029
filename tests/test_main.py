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

import numpy as np
import pytest
from absl import app
from conftest import REPO, load_config
from PIL import Image

from ssd_jax import main


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
  )
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
