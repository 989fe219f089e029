"""Tests for ssd_jax/detect.py: `preprocess` against the tf.data eval
preprocessing, `detect` against the host path (eval preprocessing, forward,
`postprocess.decode_detections`, pixel scaling), jit with static model and
settings, the settings from a config, and the input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from test_evaluator import tiny_ssd

from ssd_jax import config as config_lib
from ssd_jax import detect, device_postprocess, models, postprocess
from ssd_jax.data import image as image_lib
from ssd_jax.data import pipeline

preprocess_jit = jax.jit(detect.preprocess, static_argnums=(1, 2))
detect_jit = jax.jit(detect.detect, static_argnums=(0, 3))
SETTINGS = detect.DetectSettings(0.05, 0.45, 50, 30, (0.1, 0.2))


@pytest.mark.parametrize("kind", sorted(image_lib.NORMALIZATIONS))
def test_preprocess_equals_the_eval_pipeline(kind):
  pipeline.configure_tensorflow()
  rng = np.random.default_rng(0)
  scale, _ = image_lib.normalization(kind)
  # Down- and upsampling, non-square, one pixel, output side 1.
  for (h, w), size in (
    ((50, 70), 64),
    ((33, 90), 64),
    ((300, 200), 64),
    ((1, 1), 8),
    ((7, 3), 16),
    ((20, 10), 1),
  ):
    images = rng.integers(0, 256, (2, h, w, 3), np.uint8)
    want = np.stack(
      [pipeline.eval_inputs(tf.constant(x), size, kind).numpy() for x in images]
    )
    got = np.asarray(preprocess_jit(images, size, kind))
    assert got.shape == (2, size, size, 3) and got.dtype == np.float32
    # TF's crop_and_resize arithmetic term for term; XLA contracts the
    # lerps into fused multiply-adds: within 0.02 of a 0..255 pixel level.
    np.testing.assert_allclose(got, want, rtol=0, atol=0.02 * scale.max())


def test_detect_equals_the_host_path_in_input_pixels():
  model, params = tiny_ssd(4)
  settings = SETTINGS
  rng = np.random.default_rng(0)
  h, w = 48, 80
  images = rng.integers(0, 256, (3, h, w, 3), np.uint8)
  got = jax.device_get(detect_jit(model, params, images, settings))
  assert got.boxes.shape == (3, 30, 4) and got.labels.shape == (3, 30)
  assert got.num_detections.dtype == got.labels.dtype == np.int32
  # The host path: the tf.data eval preprocessing, the forward, the numpy
  # decoder, then continuous pixel corners of each input image.
  x = np.stack(
    [pipeline.eval_inputs(tf.constant(im), 64).numpy() for im in images]
  )
  loc, probs = jax.device_get(detect.predict_jit(model, params, x))
  priors = np.asarray(model.priors(), np.float32)
  for b in range(3):
    decoding = {k: v for k, v in settings._asdict().items() if k != "flip"}
    want = postprocess.decode_detections(loc[b], probs[b], priors, **decoding)
    n = int(got.num_detections[b])
    assert n == len(want.scores) > 0
    np.testing.assert_array_equal(got.labels[b, :n], want.labels)
    np.testing.assert_allclose(got.scores[b, :n], want.scores, atol=1e-5)
    want_px = image_lib.normalized_to_pixels(want.boxes, (h, w))
    np.testing.assert_allclose(got.boxes[b, :n], want_px, atol=1e-3)
    assert (got.boxes[b, :n] <= np.array([w, h, w, h])).all()
    assert not got.boxes[b, n:].any() and not got.labels[b, n:].any()


def test_detect_compiles_once_per_model_settings_and_shape():
  model, params = tiny_ssd(4)
  images = np.zeros((3, 48, 80, 3), np.uint8)
  detect_jit(model, params, images, SETTINGS)
  before = detect_jit._cache_size()
  # Equal (not identical) model and settings: no new compile.
  twin = models.from_config(
    {"name": "ssd", "image_size": 64, "width": 0.125}, 4
  )
  assert twin is not model and twin == model
  detect_jit(twin, params, images + 1, detect.DetectSettings(*SETTINGS))
  assert detect_jit._cache_size() == before


def test_settings_from_config_read_eval_and_variances():
  config = config_lib.base_config()
  config.eval.score_threshold = 0.2
  config.eval.max_detections = 7
  config.variances = [0.1, 0.25]
  settings = detect.DetectSettings.from_config(config)
  assert settings == detect.DetectSettings(0.2, 0.45, 400, 7, (0.1, 0.25))
  hash(settings)  # A static jit argument.


@pytest.mark.parametrize(
  "images, message",
  [
    (
      np.zeros((1, 8, 8, 3), np.float32),
      r"uint8.*\(1, 8, 8, 3\) dtype float32",
    ),
    (np.zeros((8, 8, 3), np.uint8), r"rank 4.*\(8, 8, 3\) dtype uint8"),
    (np.zeros((1, 8, 8, 4), np.uint8), r"3 RGB channels.*\(1, 8, 8, 4\)"),
    (np.zeros((0, 8, 8, 3), np.uint8), r"empty batch.*\(0, 8, 8, 3\)"),
    (np.zeros((2, 0, 8, 3), np.uint8), r"H or W = 0.*\(2, 0, 8, 3\)"),
    (np.zeros((2, 8, 0, 3), np.uint8), r"H or W = 0.*\(2, 8, 0, 3\)"),
  ],
)
def test_bad_images_are_named_eagerly_and_under_jit(images, message):
  model, params = tiny_ssd(3)
  settings = detect.DetectSettings()
  with pytest.raises(ValueError, match=message):
    detect.check_images(images)
  with pytest.raises(ValueError, match=message):  # At trace time.
    detect_jit(model, params, jnp.asarray(images), settings)
  with pytest.raises(ValueError, match=message):
    detect.preprocess(images, 64, "caffe")


def test_unknown_normalization_names_the_valid_ones():
  with pytest.raises(ValueError, match="unknown normalization 'bgr'"):
    detect.preprocess(np.zeros((1, 4, 4, 3), np.uint8), 8, "bgr")


def test_flip_averages_each_box_with_its_mirror():
  model, params = tiny_ssd(4)
  rng = np.random.default_rng(3)
  images = rng.normal(0, 50, (2, 64, 64, 3)).astype(np.float32)
  loc, probs = detect.predict(model, params, images, flip=True)
  loc1, probs1 = detect.predict(model, params, images)
  loc2, probs2 = detect.predict(model, params, images[:, :, ::-1])
  priors = np.asarray(model.priors())
  # A random model's outputs reach ~250: the dcx average of the two passes
  # cancels to ~0.2, and softmax turns the logits' rounding into ~1e-5 of
  # probability, so compare at float32's resolution of the terms (the batch
  # of 4 and the batches of 2 may sum in different orders). A wrong pairing
  # of mirrored boxes is off by ~0.1.
  loc_atol = 1e-6 * float(np.abs(loc1).max())
  for p, (cx, cy, w, h) in enumerate(priors):
    # The mirror of prior p, by a search over the boxes.
    d = np.abs(priors - [1 - cx, cy, w, h]).max(-1)
    q = int(np.argmin(d))
    assert d[q] < 1e-6
    np.testing.assert_allclose(
      probs[:, p], (probs1[:, p] + probs2[:, q]) / 2, rtol=1e-4, atol=1e-4
    )
    want = (loc1[:, p] + loc2[:, q] * np.array([-1, 1, 1, 1])) / 2
    np.testing.assert_allclose(loc[:, p], want, rtol=1e-4, atol=loc_atol)


def test_flip_detections_of_a_mirrored_image_are_mirrored():
  """With flip the outputs are exactly mirror-equivariant."""
  model, params = tiny_ssd(3)
  images = np.random.default_rng(4).normal(0, 50, (2, 64, 64, 3))
  images = images.astype(np.float32)
  loc, probs = detect.predict(model, params, images, flip=True)
  loc_m, probs_m = detect.predict(model, params, images[:, :, ::-1], True)
  perm = detect._mirror_permutation(model)
  np.testing.assert_allclose(probs_m, probs[:, perm], rtol=1e-5, atol=1e-6)
  turned = loc[:, perm] * np.array([-1, 1, 1, 1], np.float32)
  np.testing.assert_allclose(loc_m, turned, rtol=1e-4, atol=1e-5)
  # detect's settings.flip is predict's.
  settings = SETTINGS._replace(flip=True)
  got = jax.device_get(
    detect.detect_normalized(model, params, images, settings)
  )
  want = device_postprocess.decode_detections_device(
    loc, probs, jnp.asarray(model.priors()), score_threshold=0.05,
    nms_threshold=0.45, top_k_per_class=50, max_detections=30,
    variances=(0.1, 0.2),
  )  # fmt: skip
  np.testing.assert_array_equal(got.num_detections, want.num_detections)
  np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)


def test_flip_needs_mirror_symmetric_boxes_and_comes_from_the_config():
  config = config_lib.base_config()
  assert not detect.DetectSettings.from_config(config).flip
  config.eval.flip = True
  assert detect.DetectSettings.from_config(config).flip
  # The Caffe SSD300 grid overhangs the input: no mirror image.
  ssd300 = models.from_config({"name": "ssd", "image_size": 300}, 3)
  with pytest.raises(ValueError, match="not mirror-symmetric"):
    jax.eval_shape(
      lambda x: detect.predict(ssd300, {}, x, flip=True),
      jax.ShapeDtypeStruct((1, 300, 300, 3), jnp.float32),
    )
