"""Tests for ssd_jax/analyze.py: the report, its JSON and pictures, the CLI."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, load_config, voc_folder_config
from PIL import Image

from ssd_jax import analyze


def test_analysis_json_and_pictures(mini_voc2007, tmp_path):
  root, counts = mini_voc2007
  result = analyze.run(voc_folder_config(root), str(tmp_path))
  with open(tmp_path / "analysis.json") as f:
    assert json.load(f) == json.loads(json.dumps(result))
  boxes = counts[("2007", "trainval")]["boxes"]
  assert result["num_boxes"] == boxes and result["image_size"] == 96
  assert sum(result["box_size"].values()) == boxes
  assert sum(result["aspect_ratio"].values()) == boxes
  assert sum(result["class_counts"].values()) == boxes
  assert sum(result["boxes_per_image"].values()) == result["num_images"]
  before, after = result["coverage"], result["fitted"]
  assert before["priors"] == "default" and after["priors"] == "fitted"
  assert before["num_priors"] == after["num_priors"] == 832
  assert after["coverage"] >= before["coverage"]
  assert len(after["min_sizes"]) == 4
  for part in ("by_size", "by_class"):
    assert sum(v["boxes"] for v in before[part].values()) == boxes
  for run in (before, after):  # every box reaches at least one map
    assert list(run["by_map"]) == ["12x12", "6x6", "3x3", "1x1"]
    assert boxes <= sum(v["boxes"] for v in run["by_map"].values())
  names = sorted(os.listdir(tmp_path / "analysis"))
  assert names == [
    "aspect_ratio.png",
    "box_size.png",
    "boxes_per_image.png",
    "class_counts.png",
    "coverage_by_class.png",
    "coverage_by_size.png",
  ]
  for name in names:
    with Image.open(tmp_path / "analysis" / name) as im:
      assert im.size[0] > 100 and im.size[1] > 100
  text = analyze.format_summary(result)
  assert f"{boxes} boxes" in text and "prior coverage" in text
  assert "fitted min sizes" in text
  assert "fitted boxes matched per map (fewest of one class): 12x12" in text


def test_analysis_of_a_zoo_model_has_no_fit():
  config = load_config("shapes", "small")
  config.model.update(backbone="mobilenet_v3_large", name="ssd", image_size=0)
  result = analyze.analyze(config)
  assert result["fitted"] is None and result["coverage"]["coverage"] > 0


def test_missing_data_names_the_field(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.data.root"):
    analyze.run(
      voc_folder_config(str(tmp_path / "missing")), str(tmp_path / "w")
    )


def test_command_line(mini_voc2007, tmp_path):
  root, _ = mini_voc2007
  command = [
    sys.executable,
    "-m",
    "ssd_jax.analyze",
    "--config=configs/voc_folder.py:small",
    f"--workdir={tmp_path}",
  ]
  out = subprocess.run(
    [*command, f"--config.data.root={root}"],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "prior coverage" in out.stdout and "analysis.json" in out.stdout
  # :small runs the quick recipe: the analysis is at its input size.
  assert "quick recipe" in out.stdout and "model.image_size = " in out.stdout
  with open(tmp_path / "analysis.json") as f:
    size = json.load(f)["image_size"]
  assert f"model.image_size = {size} " in out.stdout
  assert os.path.isfile(tmp_path / "analysis" / "coverage_by_size.png")
  missing = subprocess.run(
    [*command, f"--config.data.root={tmp_path / 'none'}"],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert missing.returncode == 2
  assert "error: config.data.root=" in missing.stderr
