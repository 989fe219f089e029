"""Tests for ssd_jax/demo.py (`make demo`), on its smoke-sized config."""

import json
import os

from ssd_jax import demo


def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
  workdir = str(tmp_path / "demo")
  assert demo.main([f"--workdir={workdir}", "--config_arg=small"]) == 0
  out = capsys.readouterr().out
  assert "SSD demo: synthetic shapes, 4 steps of batch 4 at 64px" in out
  assert "mAP@0.5 (VOC07 11-point) on the held-out shapes:" in out
  with open(os.path.join(workdir, "eval_results.json")) as f:
    assert json.load(f)["step"] == 4
  assert os.path.exists(os.path.join(workdir, "pictures", "detections.png"))
  # A finished demo is resumed: it only evaluates again.
  assert demo.main([f"--workdir={workdir}", "--config_arg=small"]) == 0
  assert "mAP@0.5" in capsys.readouterr().out
