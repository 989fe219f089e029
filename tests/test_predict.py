"""Tests for ssd_jax/predict.py: `--mode=predict` on files gives what the
evaluator measured (with either config.eval.nms); output files; bad files
reported, never fatal; EXIF orientation and large images; `expand_images`;
the command line's exit status."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl.testing import flagsaver
from conftest import REPO
from PIL import Image
from test_data_image import save_with_orientation
from test_data_voc_folder import write_voc_folder
from test_evaluator import eval_config, tiny_ssd

from ssd_jax import evaluator, main, predict
from ssd_jax.data import image as image_lib
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
  records, failed = predict.predict_images(
    ev, params, paths, str(tmp_path / "out"), min_score=0.0
  )
  assert len(records) == len(want) == 3 and failed == []
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
  records, failed = predict.predict_images(
    ev,
    params,
    predict.expand_images([str(tmp_path / "*.png")]),
    out_dir,
    min_score=0.0,
  )
  assert [os.path.basename(r["image"]) for r in records] == ["a.png", "b.png"]
  assert [r["picture"] for r in records] == [
    "a_detections.png",
    "b_detections.png",
  ]
  assert failed == read_json(out_dir, "failures.json") == []
  assert read_json(out_dir, "predictions.json") == records
  assert sorted(os.listdir(out_dir)) == [
    "a_detections.png",
    "b_detections.png",
    "failures.json",
    "predictions.json",
  ]  # No temporary file left behind.
  for r in records:
    assert (r["width"], r["height"]) == (70, 50)
    assert r["exif_transposed"] is False
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


def test_device_nms_predicts_the_host_records(tmp_path):
  # Prediction decodes through `Evaluator.detect`: config.eval.nms "device"
  # gives the records "host" gives (boxes to float rounding).
  model, params = tiny_ssd(3)
  paths = write_three_files(str(tmp_path / "in"))
  records = {}
  for nms in ("host", "device"):
    config = eval_config({"source": "synthetic"}, batch_size=2, nms=nms)
    ev = evaluator.Evaluator(model, config, ["cat", "dog"])
    records[nms] = predict.predict_images(
      ev, params, paths, str(tmp_path / nms), min_score=0.0
    ).records
  host, device = records["host"], records["device"]
  assert len(device) == len(host) == 2  # b.jpg is truncated.
  for d, h in zip(device, host, strict=True):
    assert d["detections"] and len(d["detections"]) == len(h["detections"])
    for a, b in zip(d["detections"], h["detections"], strict=True):
      assert (a["label"], a["class"]) == (b["label"], b["class"])
      assert a["score"] == pytest.approx(b["score"], abs=1e-6)
      np.testing.assert_allclose(a["box"], b["box"], atol=0.0101)


def test_min_score_filters_detections(tmp_path):
  model, params = tiny_ssd(3)
  ev = evaluator.Evaluator(model, eval_config({"source": "synthetic"}), "ab")
  path = str(tmp_path / "x.png")
  Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(path)
  (all_dets,) = predict.predict_images(
    ev, params, [path], str(tmp_path / "a")
  ).records
  (everything,) = predict.predict_images(
    ev, params, [path], str(tmp_path / "b"), min_score=0.0
  ).records
  scores = [d["score"] for d in everything["detections"]]
  assert [d["score"] for d in all_dets["detections"]] == [
    s for s in scores if s >= 0.3
  ]


def test_predict_images_needs_an_image(tmp_path):
  model, params = tiny_ssd(3)
  ev = evaluator.Evaluator(model, eval_config({"source": "synthetic"}), "ab")
  with pytest.raises(ValueError, match="at least one image"):
    predict.predict_images(ev, params, [], str(tmp_path))


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


def read_json(folder, name):
  with open(os.path.join(folder, name)) as f:
    return json.load(f)


def write_three_files(folder):
  """a.png, b.jpg (cut in half: truncated), c.png in `folder`; their paths."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  for name in ("a.png", "b.jpg", "c.png"):
    pixels = rng.integers(0, 255, (40, 56, 3), np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, name))
  with open(os.path.join(folder, "b.jpg"), "rb") as f:
    data = f.read()
  with open(os.path.join(folder, "b.jpg"), "wb") as f:
    f.write(data[: len(data) // 2])
  return [os.path.join(folder, n) for n in ("a.png", "b.jpg", "c.png")]


def tiny_evaluator(batch_size=2):
  model, params = tiny_ssd(3)
  config = eval_config({"source": "synthetic"}, batch_size=batch_size)
  return evaluator.Evaluator(model, config, ["cat", "dog"]), params


def test_bad_files_are_reported_and_the_others_written(tmp_path):
  ev, params = tiny_evaluator()
  paths = write_three_files(str(tmp_path / "in"))
  paths.append(str(tmp_path / "in" / "gone.png"))  # Missing: a failure too.
  out_dir = str(tmp_path / "out")
  result = predict.predict_images(ev, params, paths, out_dir, min_score=0.0)
  assert [os.path.basename(r["image"]) for r in result.records] == [
    "a.png",
    "c.png",
  ]
  assert [f["image"] for f in result.failed] == [
    os.path.abspath(paths[1]),
    os.path.abspath(paths[3]),
  ]
  assert result.failed[0]["error"].startswith("truncated file")
  assert result.failed[1]["error"] == "file not found"
  assert read_json(out_dir, "predictions.json") == result.records
  assert read_json(out_dir, "failures.json") == result.failed
  assert sorted(f for f in os.listdir(out_dir) if f.endswith(".png")) == [
    "a_detections.png",
    "c_detections.png",
  ]
  line = predict.summary(result)
  assert line.startswith("2 image(s) predicted, 2 failed: ")
  assert f"{os.path.abspath(paths[1])} (truncated file" in line
  # The good images get the detections they get on their own.
  (alone,) = predict.predict_images(
    ev, params, [paths[2]], str(tmp_path / "alone"), min_score=0.0
  ).records
  got = result.records[1]["detections"]
  assert [d["label"] for d in alone["detections"]] == [d["label"] for d in got]
  np.testing.assert_allclose(
    [d["score"] for d in alone["detections"]], [d["score"] for d in got], 1e-5
  )
  assert predict.summary(predict.PredictResult([{}], [])) == (
    "1 image(s) predicted, 0 failed"
  )
  many = [{"image": f"/{k}.jpg", "error": "bad"} for k in range(12)]
  assert predict.summary(predict.PredictResult([], many)) == (
    "0 image(s) predicted, 12 failed: "
    + "; ".join(f"/{k}.jpg (bad)" for k in range(10))
    + "; and 2 more in failures.json"
  )


def test_exif_orientation_and_large_images(tmp_path):
  ev, params = tiny_evaluator()
  rng = np.random.default_rng(1)
  phone = str(tmp_path / "phone.jpg")  # Stored 40 x 64, viewed 64 x 40.
  stored = rng.integers(0, 255, (40, 64, 3), np.uint8)
  save_with_orientation(Image.fromarray(stored), phone, 6, quality=95)
  big = str(tmp_path / "big.png")
  Image.fromarray(rng.integers(0, 255, (300, 500, 3), np.uint8)).save(big)
  out_dir = str(tmp_path / "out")
  (rotated, large), _ = predict.predict_images(
    ev, params, [phone, big], out_dir, min_score=0.0, max_side=100
  )
  assert (rotated["width"], rotated["height"]) == (40, 64)
  assert rotated["exif_transposed"] is True
  assert Image.open(os.path.join(out_dir, rotated["picture"])).size == (40, 64)
  assert (large["width"], large["height"]) == (500, 300)  # The original.
  assert large["exif_transposed"] is False
  assert Image.open(os.path.join(out_dir, large["picture"])).size == (100, 60)
  # References: the pixels the network should have seen, saved losslessly
  # (the viewed phone image; the big image at 100 x 60) and predicted.
  for name, path, side in [("upright", phone, None), ("small", big, 100)]:
    pixels = image_lib.decode_image_file(path, apply_exif=True, max_side=side)
    Image.fromarray(pixels.pixels).save(tmp_path / f"{name}.png")
  upright, small = predict.predict_images(
    ev,
    params,
    [str(tmp_path / "upright.png"), str(tmp_path / "small.png")],
    str(tmp_path / "ref"),
    min_score=0.0,
  ).records
  assert rotated["detections"] == upright["detections"]
  assert len(large["detections"]) == len(small["detections"]) > 0
  for got, ref in zip(large["detections"], small["detections"], strict=True):
    assert got["score"] == ref["score"]
    np.testing.assert_allclose(got["box"], np.array(ref["box"]) * 5, atol=0.06)


def test_pictures_of_inputs_with_one_stem_do_not_overwrite(tmp_path):
  ev, params = tiny_evaluator()
  paths = []
  for sub in ("x", "y"):
    os.makedirs(tmp_path / sub)
    paths.append(str(tmp_path / sub / "a.png"))
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(paths[-1])
  records, _ = predict.predict_images(ev, params, paths, str(tmp_path / "o"))
  assert [r["picture"] for r in records] == [
    "a_detections.png",
    "a_2_detections.png",
  ]


def test_an_interrupted_run_keeps_the_finished_images(tmp_path, monkeypatch):
  ev, params = tiny_evaluator(batch_size=1)
  paths = write_three_files(str(tmp_path / "in"))
  detect, calls = ev.detect, []

  def interrupted_on_the_second_batch(*args):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return detect(*args)

  monkeypatch.setattr(ev, "detect", interrupted_on_the_second_batch)
  out_dir = str(tmp_path / "out")
  with pytest.raises(KeyboardInterrupt):
    predict.predict_images(ev, params, paths, out_dir)
  saved = read_json(out_dir, "predictions.json")
  assert [os.path.basename(r["image"]) for r in saved] == ["a.png"]
  failed = read_json(out_dir, "failures.json")  # b.jpg was decoded before.
  assert [os.path.basename(f["image"]) for f in failed] == ["b.jpg"]
  assert not [f for f in os.listdir(out_dir) if f.endswith(".tmp")]


def test_command_line_exits_nonzero_when_an_image_failed(shapes_run, tmp_path):
  workdir, _ = shapes_run
  write_three_files(str(tmp_path / "in"))
  args = [
    f"--config={REPO}/configs/shapes.py:small",
    f"--workdir={workdir}",
    "--mode=predict",
    f"--images={tmp_path / 'in' / '*'}",
  ]
  out = subprocess.run(
    [sys.executable, "-m", "ssd_jax.main", *args, f"--output_dir={tmp_path}/o"],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert out.returncode == 1, out.stderr[-3000:]
  assert "predict finished: 2 image(s) predicted, 1 failed: " in out.stdout
  assert "b.jpg (truncated file" in out.stdout
  assert len(read_json(str(tmp_path / "o"), "predictions.json")) == 2
  # --nostrict: the same run, exit status 0 (main's return value is the
  # exit status `app.run` gives).
  with flagsaver.flagsaver():
    main.FLAGS(
      ["ssd_jax.main", *args, "--nostrict", f"--output_dir={tmp_path}/n"]
    )
    assert main.main(["ssd_jax.main"]) == 0
  assert len(read_json(str(tmp_path / "n"), "predictions.json")) == 2
