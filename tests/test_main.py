"""End-to-end tests of ssd_jax/main.py, evaluate.py, metrics and sweeps."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ssd_jax import evaluate as eval_lib
from ssd_jax import evaluation, main, metrics_writer, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, arg=None):
  return train.config_from_file(
    os.path.join(REPO, "configs", f"{name}.py"), arg
  )


def load_sweep():
  path = os.path.join(REPO, "experiments", "sweeps", "sweep.py")
  spec = importlib.util.spec_from_file_location("sweep", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
  """A tiny shapes run through the real command line (train mode)."""
  workdir = str(tmp_path_factory.mktemp("shapes"))
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "ssd_jax.main",
      "--config=configs/shapes.py:small",
      f"--workdir={workdir}",
      "--config.num_steps=3",
      "--config.eval_every=2",
    ],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert out.returncode == 0, out.stderr[-4000:]
  return workdir, out.stdout


def test_train_writes_metrics_results_pictures(shapes_run):
  workdir, stdout = shapes_run
  assert "step 3/3 loss" in stdout and "img/s" in stdout and "ETA" in stdout
  records = metrics_writer.read_metrics(workdir)
  losses = [r for r in records if "loss" in r]
  assert [r["step"] for r in losses] == [1, 2, 3]
  for key in ("loc_loss", "conf_loss", "num_positives", "lr", "grad_norm"):
    assert all(math.isfinite(r[key]) for r in losses), key
  assert [r["step"] for r in records if "mAP" in r] == [2, 3]
  with open(os.path.join(workdir, "eval_results.json")) as f:
    result = json.load(f)
  assert result["step"] == 3
  names = load_config("shapes", "small")
  assert set(result["per_class_ap"]) <= {
    "circle",
    "square",
    "triangle",
    "diamond",
    "cross",
    "ring",
  }
  assert result["mAP"] is None or 0.0 <= result["mAP"] <= 1.0
  del names
  for pic in ("pr_curves.png", "detections.png"):
    assert Image.open(os.path.join(workdir, "pictures", pic)).size[0] > 0
  events = os.listdir(os.path.join(workdir, "tensorboard"))
  assert any(e.startswith("events.out.tfevents") for e in events)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]


def test_eval_and_predict_modes(shapes_run, tmp_path):
  workdir, _ = shapes_run
  config = load_config("shapes", "small")
  config.num_steps = 3
  result = main.run(config, workdir, "eval")
  with open(os.path.join(workdir, "eval_results.json")) as f:
    saved = json.load(f)
  assert saved["step"] == result.step == 3
  assert (saved["mAP"] is None and math.isnan(result.mAP)) or np.isclose(
    saved["mAP"], result.mAP
  )
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
  for r in records:
    assert (r["width"], r["height"]) == (70, 50)
    for d in r["detections"]:
      x0, y0, x1, y1 = d["box"]
      assert -1 <= x0 <= x1 <= 71 and -1 <= y0 <= y1 <= 51
  assert os.path.exists(os.path.join(out_dir, "a_detections.png"))
  with pytest.raises(FileNotFoundError, match="no file matches"):
    main.run(config, workdir, "predict", images=[str(tmp_path / "*.jpg")])
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    main.run(config, str(tmp_path / "empty"), "eval")


def test_bad_config_values_give_clear_messages(tmp_path):
  config = load_config("shapes", "small")
  config.data.source = "imagenet"
  with pytest.raises(ValueError, match="data.source"):
    train.train_and_evaluate(config, str(tmp_path / "a"))
  config = load_config("voc_folder", "small")
  config.data.root = str(tmp_path / "no_such_folder")
  with pytest.raises(FileNotFoundError, match="config.data.root"):
    train.train_and_evaluate(config, str(tmp_path / "b"))
  config = load_config("shapes", "small")
  config.batch_size = 0
  with pytest.raises(ValueError, match="config.batch_size"):
    train.train_and_evaluate(config, str(tmp_path / "c"))


def test_precision_recall_reproduces_evaluate_voc():
  rng = np.random.default_rng(3)
  dets, gts = [], []
  for _ in range(6):
    g = rng.integers(0, 4)
    xy = rng.uniform(0, 60, (g, 2))
    gt_boxes = np.concatenate([xy, xy + rng.uniform(10, 40, (g, 2))], 1)
    gt_labels = rng.integers(1, 3, g)
    gts.append((gt_boxes, gt_labels, rng.random(g) < 0.2))
    k = rng.integers(0, 6)
    src = gt_boxes[rng.integers(0, max(g, 1), k)] if g else np.zeros((k, 4))
    boxes = src + rng.normal(0, 4, (k, 4))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    dets.append((boxes, rng.random(k), rng.integers(1, 3, k)))
  want = evaluation.evaluate_voc(dets, gts, 3, use_07_metric=False)
  for label in (1, 2):
    rec, prec = eval_lib.precision_recall(dets, gts, label)
    if math.isnan(want.per_class_ap[label - 1]):
      continue
    ap = evaluation.voc_ap(rec, prec, use_07_metric=False) if len(rec) else 0.0
    np.testing.assert_allclose(ap, want.per_class_ap[label - 1], atol=1e-9)
  rec, prec = eval_lib.precision_recall([], [], 1)
  assert rec.shape == prec.shape == (0,)


def test_pictures_and_table():
  image = np.zeros((40, 60, 3), np.uint8)
  pic = eval_lib.draw_detections(
    image,
    np.array([[5.0, 5, 30, 30], [1, 1, 2, 2]]),
    np.array([1, 2]),
    np.array([0.9, 0.1]),
    ["cat", "dog"],
  )
  arr = np.asarray(pic)
  assert arr.shape == (40, 60, 3)
  assert (arr[29, 5:30] == eval_lib.class_color(1)).all()  # Bottom edge.
  assert (arr[1:3, 1:3] == 0).all()  # Below min_score: not drawn.
  plot = eval_lib.plot_pr_curves(
    {"cat": (np.array([0.5, 1.0]), np.array([1.0, 0.5]))}, {"cat": 0.75}, "t"
  )
  assert plot.size[1] > 0
  table = eval_lib.format_ap_table(7, 0.5, {"cat": 0.25, "dog": 0.75})
  assert table.splitlines()[-1].split() == ["mAP", "0.5000"]
  assert "dog" in table


def test_progress_line_and_metrics_file(tmp_path):
  now = [0.0]
  progress = metrics_writer.Progress(100, 8, clock=lambda: now[0])
  progress.update(1)
  assert math.isnan(progress.images_per_sec())
  now[0] = 2.0
  progress.update(5)  # 4 steps x 8 images in 2 s.
  assert progress.images_per_sec() == 16.0
  assert progress.eta_seconds() == 95 * 8 / 16.0
  line = progress.line(5, {"loss": 1.5, "loc_loss": 0.5, "conf_loss": 1.0})
  assert "step 5/100" in line and "16.0 img/s" in line and "0:00:48" in line
  writer = metrics_writer.MetricsWriter(str(tmp_path), tensorboard=False)
  writer.write(1, {"loss": 2.0, "name": "x"})
  writer.close()
  assert metrics_writer.read_metrics(str(tmp_path)) == [
    {"step": 1, "loss": 2.0}
  ]


def test_sweep_expands_runs_and_summarises(tmp_path, shapes_run):
  sweep = load_sweep()
  base, axes = sweep.SWEEPS["voc_lr_bs_size"]
  runs = sweep.expand(base, axes, str(tmp_path))
  assert len(runs) == 3 * 2 * 2
  assert len({r.workdir for r in runs}) == len(runs)
  assert "--config.model.image_size=512" in runs[-1].command
  with pytest.raises(ValueError, match="both set"):
    sweep.expand(base, [[{"a": 1}], [{"a": 2}]], str(tmp_path))
  # The tiny shapes sweep: summary rows from real workdirs.
  base, axes = sweep.SWEEPS["shapes_tiny"]
  runs = sweep.expand(base, axes, str(tmp_path))
  workdir, _ = shapes_run
  os.symlink(workdir, runs[0].workdir)
  rows = sweep.collect(runs)
  with open(os.path.join(workdir, "eval_results.json")) as f:
    saved = json.load(f)
  assert rows[0].step == 3
  assert rows[0].mAP == saved["mAP"] or math.isnan(rows[0].mAP)
  assert math.isnan(rows[1].mAP) and rows[1].step is None
  table = sweep.format_table(rows)
  assert len(table.splitlines()) == 4
  assert sweep.main(["--sweep=shapes_tiny", f"--root={tmp_path}"]) == 0


@pytest.mark.slow
def test_one_step_train_and_eval_on_mock_tfds_voc(tmp_path):
  import tensorflow_datasets as tfds

  config = load_config("voc", "small")
  config.model.image_size = 64
  config.model.width = 0.125
  config.batch_size = 2
  config.num_steps = 1
  config.checkpoint_every = 0
  config.eval.batch_size = 4
  config.eval.num_pictures = 2
  config.data.update(
    tfds_skip_decoding=False,
    train_split="2007:train",
    eval_split="2007:test",
    shuffle_buffer=8,
  )
  with tfds.testing.mock_data(num_examples=4):
    summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == 1 and math.isfinite(summary["loss"])
  with open(os.path.join(tmp_path, "eval_results.json")) as f:
    result = json.load(f)
  assert result["step"] == 1 and result["num_images"] == 4
  assert (
    len(result["per_class_ap"]) == 20 and "aeroplane" in result["per_class_ap"]
  )
