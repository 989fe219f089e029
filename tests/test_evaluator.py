"""Tests for ssd_jax/evaluator.py: the jitted forward, `Evaluator.detect`
against a hand-written forward + decode, `Evaluator.run` against
hand-computed APs on a VOC folder written by the test, and config.eval.nms
"device" against "host" (detections, and the mAP of the shapes run)."""

import dataclasses
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import load_config
from PIL import Image
from test_data_voc_folder import write_voc_folder

from ssd_jax import detect, evaluation, evaluator, models, postprocess, train

EVAL_DEFAULTS = {
  "metric": "voc",
  "use_07_metric": True,
  "score_threshold": 0.01,
  "nms_threshold": 0.45,
  "top_k_per_class": 100,
  "max_detections": 50,
  "batch_size": 2,
  "num_pictures": 4,
}


def eval_config(data: dict, **eval_fields) -> ml_collections.ConfigDict:
  """The config fields an Evaluator reads (`data`, `eval`, `variances`)."""
  return ml_collections.ConfigDict(
    {
      "data": data,
      "eval": {**EVAL_DEFAULTS, **eval_fields},
      "variances": (0.1, 0.2),
    }
  )


@functools.cache
def tiny_ssd(num_classes: int):
  """(model, params): a width-1/8 SSD on 64x64 inputs, random parameters.

  The parameters are drawn here in numpy (He-normal kernels, small random
  biases, L2Norm scale 20) from the shapes `model.init` would give: the
  same kind of untrained network, without compiling `model.init`, which
  costs more than everything these tests do with it.
  """
  model = models.from_config(
    {"name": "ssd", "image_size": 64, "width": 0.125}, num_classes
  )
  dummy = jnp.zeros([1, 64, 64, 3], jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), dummy)["params"]
  rng = np.random.default_rng(num_classes)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
      return rng.normal(0.0, std, leaf.shape).astype(np.float32)
    base = 20.0 if name == "scale" else 0.0
    return (base + rng.normal(0.0, 0.1, leaf.shape)).astype(np.float32)

  return model, jax.tree_util.tree_map_with_path(draw, shapes)


@dataclasses.dataclass(frozen=True)
class FixedOutputModel:
  """Stands in for the SSD: the same offsets and logits for every image.

  Hashable, as the jitted forward needs; `params` are {"loc": [P, 4],
  "logits": [P, C]}.
  """

  image_size: int
  prior_rows: tuple[tuple[float, float, float, float], ...]

  def priors(self) -> np.ndarray:
    return np.asarray(self.prior_rows, np.float32)

  def apply(self, variables, images):
    p = variables["params"]
    b = images.shape[0]
    loc = jnp.broadcast_to(p["loc"], (b, *p["loc"].shape))
    logits = jnp.broadcast_to(p["logits"], (b, *p["logits"].shape))
    return loc, logits


def _center(box):
  x0, y0, x1, y1 = box
  return ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)


@pytest.fixture
def one_image_folder(tmp_path):
  """A VOC folder with one 40x60 image: a cat and a dog (test split)."""
  root = str(tmp_path / "VOC")
  rng = np.random.default_rng(0)
  write_voc_folder(
    root,
    [
      (
        "only",
        rng.integers(0, 255, (40, 60, 3), np.uint8),
        [("cat", (13, 5, 42, 30), False), ("dog", (2, 2, 20, 20), False)],
      )
    ],
    split="test",
    classes=["cat", "dog"],
  )
  return root


def _oracle(h=40, w=60):
  """A model that finds the cat exactly and puts the dog somewhere empty.

  Priors: the cat's normalised box (scored 0.9 cat), a box far from the
  dog (scored 0.8 dog), and a background prior.
  """
  cat = ((13 - 1) / w, (5 - 1) / h, 42 / w, 30 / h)  # VOC 1-based -> [0, 1].
  nowhere = (0.8, 0.8, 1.0, 1.0)  # No overlap with the dog (or the cat).
  rows = (_center(cat), _center(nowhere), (0.5, 0.5, 0.2, 0.2))
  probs = np.array(
    [[0.05, 0.9, 0.05], [0.1, 0.1, 0.8], [0.996, 0.002, 0.002]], np.float32
  )
  params = {"loc": np.zeros((3, 4), np.float32), "logits": np.log(probs)}
  return FixedOutputModel(64, rows), params


def test_predict_is_forward_and_softmax():
  model, params = tiny_ssd(3)
  images = np.random.default_rng(0).normal(0, 50, (2, 64, 64, 3))
  loc, probs = detect.predict(model, params, images.astype(np.float32))
  want_loc, logits = model.apply({"params": params}, images)
  np.testing.assert_allclose(loc, want_loc, rtol=1e-5, atol=1e-5)
  want = np.exp(logits - logits.max(-1, keepdims=True))
  want /= want.sum(-1, keepdims=True)
  np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)
  assert loc.dtype == probs.dtype == jnp.float32


def test_equal_models_share_one_compile():
  model, params = tiny_ssd(3)
  twin = models.from_config(
    {"name": "ssd", "image_size": 64, "width": 0.125}, 3
  )
  assert twin is not model and twin == model
  images = np.zeros((2, 64, 64, 3), np.float32)
  cfg = eval_config({"source": "synthetic"})
  evaluator.Evaluator(model, cfg, ["a", "b"]).detect(params, images)
  before = detect.predict_jit._cache_size()
  evaluator.Evaluator(twin, cfg, ["a", "b"]).detect(params, images)
  assert detect.predict_jit._cache_size() == before


def test_detect_equals_forward_then_decode_detections():
  model, params = tiny_ssd(3)
  cfg = eval_config({"source": "synthetic"}, score_threshold=0.3)
  ev = evaluator.Evaluator(model, cfg, ["a", "b"])
  rng = np.random.default_rng(1)
  images = rng.normal(0, 50, (3, 64, 64, 3)).astype(np.float32)
  loc, logits = model.apply({"params": params}, images)
  probs = np.asarray(jax.nn.softmax(logits, -1))
  priors = np.asarray(model.priors(), np.float32)
  for valid in (None, np.array([True, False, True])):
    got = ev.detect(params, images, valid)
    index = [0, 1, 2] if valid is None else [0, 2]
    assert len(got) == len(index)
    for i, det in zip(index, got, strict=True):
      want = postprocess.decode_detections(
        np.asarray(loc[i]),
        probs[i],
        priors,
        score_threshold=0.3,
        nms_threshold=0.45,
        top_k_per_class=100,
        max_detections=50,
        variances=(0.1, 0.2),
      )
      assert len(det.scores) == len(want.scores) > 0
      np.testing.assert_array_equal(det.labels, want.labels)
      np.testing.assert_allclose(det.scores, want.scores, atol=1e-5)
      np.testing.assert_allclose(det.boxes, want.boxes, atol=1e-5)


def test_run_scores_hand_computed_aps_and_writes_files(
  one_image_folder, tmp_path
):
  model, params = _oracle()
  data = {"source": "voc_folder", "root": one_image_folder}
  ev = evaluator.Evaluator(model, eval_config(data), ["cat", "dog"])
  workdir = str(tmp_path / "work")
  result = ev.run(params, 3, workdir)
  # Cat found exactly (AP 1); the dog's only detection misses it (AP 0).
  aps = {"cat": 1.0, "dog": 0.0}
  assert result.per_class_ap == pytest.approx(aps, abs=1e-12)
  assert result.mAP == pytest.approx(0.5, abs=1e-12)
  assert result.num_images == 1 and result.extra == {}
  with open(os.path.join(workdir, "eval_results.json")) as f:
    saved = json.load(f)
  assert saved.keys() == {"step", "mAP", "per_class_ap", "num_images"}
  assert (saved["step"], saved["num_images"]) == (3, 1)
  assert saved["mAP"] == pytest.approx(0.5, abs=1e-12)
  assert saved["per_class_ap"] == pytest.approx(aps, abs=1e-12)
  assert Image.open(os.path.join(workdir, "pictures", "pr_curves.png")).size
  # The 64x64 network input, enlarged 4x for readable labels.
  pic = Image.open(os.path.join(workdir, "pictures", "detections.png"))
  assert pic.size == (256, 256)
  coco = evaluator.Evaluator(
    model, eval_config(data, metric="coco"), ["cat", "dog"]
  ).run(params, 3, None)
  assert coco.mAP == pytest.approx(0.5) and coco.extra["AP"] == coco.mAP
  assert coco.extra["AP50"] == pytest.approx(0.5)
  assert coco.per_class_ap == result.per_class_ap


def test_run_pr_plot_uses_the_ap_code(one_image_folder, tmp_path, monkeypatch):
  model, params = _oracle()
  data = {"source": "voc_folder", "root": one_image_folder}
  calls = []
  real = evaluation.precision_recall

  def spy(dets, gts, label, *args, **kwargs):
    calls.append(label)
    return real(dets, gts, label, *args, **kwargs)

  monkeypatch.setattr(evaluation, "precision_recall", spy)
  ev = evaluator.Evaluator(model, eval_config(data), ["cat", "dog"])
  ev.run(params, 1, str(tmp_path))
  assert calls == [1, 2]


def test_eval_results_file_round_trip(tmp_path):
  # Moved from test_main.py's test_eval_and_predict_modes (eval half): the
  # file agrees with the returned result, NaN written as null.
  model, params = tiny_ssd(7)
  data = {"source": "synthetic", "num_eval": 3, "synthetic_image_size": 32}
  names = ["circle", "square", "triangle", "diamond", "cross", "ring"]
  result = evaluator.Evaluator(model, eval_config(data), names).run(
    params, 3, str(tmp_path)
  )
  with open(os.path.join(tmp_path, "eval_results.json")) as f:
    saved = json.load(f)
  assert saved["step"] == result.step == 3
  assert (saved["mAP"] is None and math.isnan(result.mAP)) or np.isclose(
    saved["mAP"], result.mAP
  )
  assert result.num_images == saved["num_images"] == 3
  for name, ap in result.per_class_ap.items():
    assert (saved["per_class_ap"][name] is None) == math.isnan(ap)
  for pic in ("pr_curves.png", "detections.png"):
    assert Image.open(os.path.join(tmp_path, "pictures", pic)).size[0] > 0


def test_write_eval_results_writes_nan_as_null(tmp_path):
  result = evaluator.EvalResult(
    5, 0.25, {"a": 0.5, "b": float("nan")}, 2, {"AP75": float("nan")}
  )
  path = evaluator.write_eval_results(str(tmp_path), result)
  assert path == os.path.join(tmp_path, "eval_results.json")
  with open(path) as f:
    assert json.load(f) == {
      "step": 5,
      "mAP": 0.25,
      "per_class_ap": {"a": 0.5, "b": None},
      "num_images": 2,
      "AP75": None,
    }
  assert os.listdir(tmp_path) == ["eval_results.json"]  # No temp file left.


def test_run_on_an_empty_split_names_it(monkeypatch):
  # No source yields an empty split (each refuses one earlier), so the
  # iterator is replaced by an empty one.
  monkeypatch.setattr(
    evaluator.pipeline, "create_eval_iterator", lambda *a, **k: iter(())
  )
  model, params = _oracle()
  data = {"source": "synthetic", "eval_split": "eval"}
  ev = evaluator.Evaluator(model, eval_config(data), ["cat", "dog"])
  with pytest.raises(ValueError, match="'eval' of config.data .* is empty"):
    ev.run(params, 0, None)


@pytest.mark.parametrize("flip", [False, True])
def test_device_nms_gives_the_host_detections(flip):
  model, params = tiny_ssd(3)
  rng = np.random.default_rng(2)
  images = rng.normal(0, 50, (3, 64, 64, 3)).astype(np.float32)
  data = {"source": "synthetic"}
  host = evaluator.Evaluator(model, eval_config(data, flip=flip), ["a", "b"])
  device = evaluator.Evaluator(
    model, eval_config(data, nms="device", flip=flip), ["a", "b"]
  )
  if flip:  # The host path's forward is predict's with the mirror.
    loc, probs = detect.predict(model, params, images, flip=True)
    want = postprocess.decode_detections_batch(
      np.asarray(loc), np.asarray(probs), np.asarray(model.priors()), None,
      score_threshold=0.01, nms_threshold=0.45, top_k_per_class=100,
      max_detections=50, variances=(0.1, 0.2),
    )  # fmt: skip
    for g, w in zip(host.detect(params, images), want, strict=True):
      np.testing.assert_array_equal(g.scores, w.scores)
  for valid in (None, np.array([True, False, True])):
    want = host.detect(params, images, valid)
    got = device.detect(params, images, valid)
    assert len(got) == len(want) == (3 if valid is None else 2)
    for g, w in zip(got, want, strict=True):
      assert len(g.scores) == len(w.scores) > 0
      assert g.boxes.shape == (len(w.scores), 4) and g.boxes.dtype == np.float32
      np.testing.assert_array_equal(g.labels, w.labels)
      np.testing.assert_array_equal(g.scores, w.scores)
      np.testing.assert_allclose(g.boxes, w.boxes, rtol=0, atol=1e-6)


def test_unknown_nms_names_the_choices():
  model, _ = tiny_ssd(3)
  cfg = eval_config({"source": "synthetic"}, nms="gpu")
  with pytest.raises(ValueError, match="config.eval.nms must be one of 'host'"):
    evaluator.Evaluator(model, cfg, ["a", "b"])


def test_map_with_device_nms_equals_host_nms(shapes_run):
  # The tiny trained shapes model on its eval split: the same mAP and
  # per-class APs with either decoder (the kept sets are the same).
  workdir, _ = shapes_run
  config = load_config("shapes", "small")
  model, variables, names, step = train.restore_params(config, workdir)
  results = {}
  for nms in ("host", "device"):
    config.eval.nms = nms
    results[nms] = evaluator.Evaluator(model, config, names).run(
      variables, step, None
    )
  host, device = results["host"], results["device"]
  assert device.num_images == host.num_images == config.data.num_eval
  assert device.mAP == pytest.approx(host.mAP, abs=1e-6)
  assert device.per_class_ap == pytest.approx(
    host.per_class_ap, abs=1e-6, nan_ok=True
  )
