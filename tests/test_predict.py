"""Tests for ssd_jax/predict.py: `--mode=predict` on files gives what the
evaluator measured; output files; `expand_images`."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from test_data_voc_folder import write_voc_folder
from test_evaluator import eval_config, tiny_ssd

from ssd_jax import evaluator, predict
from ssd_jax.data import pipeline

SHAPES = ["circle", "square", "triangle", "diamond", "cross", "ring"]


def test_predict_on_eval_images_gives_the_evaluators_detections(tmp_path):
  root = str(tmp_path / "VOC")
  rng = np.random.default_rng(0)
  sizes = [(50, 70), (64, 64), (33, 90)]  # (h, w): not the input size.
  write_voc_folder(
    root,
    [
      (f"im{n}", rng.integers(0, 255, (h, w, 3), np.uint8), [])
      for n, (h, w) in enumerate(sizes)
    ],
    split="test",
    classes=["cat", "dog"],
  )
  model, params = tiny_ssd(3)
  config = eval_config({"source": "voc_folder", "root": root}, batch_size=2)
  ev = evaluator.Evaluator(model, config, ["cat", "dog"])
  # What the evaluator measures: its eval batches, detections in continuous
  # pixel corners of each original image.
  want = []
  for batch in pipeline.create_eval_iterator(
    config.data, image_size=64, batch_size=2
  ):
    dets = ev.detect(params, batch["image"], batch["valid"])
    sizes_hw = batch["original_size"][batch["valid"]]
    for det, (h, w) in zip(dets, sizes_hw, strict=True):
      want.append((det, (int(w), int(h))))
  paths = [os.path.join(root, "JPEGImages", f"im{n}.jpg") for n in range(3)]
  records = predict.predict_images(
    ev, params, paths, str(tmp_path / "out"), min_score=0.0
  )
  assert len(records) == len(want) == 3
  for record, (det, (w, h)) in zip(records, want, strict=True):
    assert (record["width"], record["height"]) == (w, h)
    got = record["detections"]
    assert len(got) == len(det.scores) > 0
    np.testing.assert_array_equal([d["score"] for d in got], det.scores)
    np.testing.assert_array_equal([d["label"] for d in got], det.labels)
    boxes = det.boxes * np.array([w, h, w, h], np.float32)
    np.testing.assert_allclose([d["box"] for d in got], boxes, atol=0.0051)


def test_predict_images_writes_records_and_pictures(tmp_path):
  # Moved from test_main.py's test_eval_and_predict_modes (predict half).
  model, params = tiny_ssd(len(SHAPES) + 1)
  config = eval_config({"source": "synthetic"}, batch_size=8)
  ev = evaluator.Evaluator(model, config, SHAPES)
  rng = np.random.default_rng(0)
  for name in ("a", "b"):
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), np.uint8)).save(
      tmp_path / f"{name}.png"
    )
  out_dir = str(tmp_path / "out")
  records = predict.predict_images(
    ev,
    params,
    predict.expand_images([str(tmp_path / "*.png")]),
    out_dir,
    min_score=0.0,
  )
  assert [os.path.basename(r["image"]) for r in records] == ["a.png", "b.png"]
  with open(os.path.join(out_dir, "predictions.json")) as f:
    assert json.load(f) == records
  for r in records:
    assert (r["width"], r["height"]) == (70, 50)
    assert r["detections"]  # min_score 0: an untrained net finds plenty.
    for d in r["detections"]:
      x0, y0, x1, y1 = d["box"]
      assert -1 <= x0 <= x1 <= 71 and -1 <= y0 <= y1 <= 51
      assert d["class"] == SHAPES[d["label"] - 1] and d["score"] >= 0.0
  assert os.path.exists(os.path.join(out_dir, "a_detections.png"))
  pic = Image.open(os.path.join(out_dir, "b_detections.png"))
  assert pic.size == (70, 50)  # Drawn on the original image.
  with pytest.raises(FileNotFoundError, match="no file matches"):
    predict.expand_images([str(tmp_path / "*.jpg")])


def test_min_score_filters_detections(tmp_path):
  model, params = tiny_ssd(3)
  ev = evaluator.Evaluator(model, eval_config({"source": "synthetic"}), "ab")
  path = str(tmp_path / "x.png")
  Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(path)
  (all_dets,) = predict.predict_images(ev, params, [path], str(tmp_path / "a"))
  (everything,) = predict.predict_images(
    ev, params, [path], str(tmp_path / "b"), min_score=0.0
  )
  scores = [d["score"] for d in everything["detections"]]
  assert [d["score"] for d in all_dets["detections"]] == [
    s for s in scores if s >= 0.3
  ]


def test_predict_images_errors(tmp_path):
  model, params = tiny_ssd(3)
  ev = evaluator.Evaluator(model, eval_config({"source": "synthetic"}), "ab")
  with pytest.raises(ValueError, match="at least one image"):
    predict.predict_images(ev, params, [], str(tmp_path))
  with pytest.raises(FileNotFoundError, match="Image file not found"):
    predict.predict_images(ev, params, [str(tmp_path / "no.png")], "out")


def test_expand_images_keeps_order_and_drops_repeats(tmp_path):
  for name in ("b.png", "a.png", "c.jpg"):
    (tmp_path / name).write_bytes(b"x")
  got = predict.expand_images(
    [str(tmp_path / "c.jpg"), str(tmp_path / "*.png"), str(tmp_path / "a.png")]
  )
  assert got == [str(tmp_path / n) for n in ("c.jpg", "a.png", "b.png")]
  with pytest.raises(FileNotFoundError, match="no file matches"):
    predict.expand_images([str(tmp_path / "missing.png")])
  assert predict.expand_images([]) == []
