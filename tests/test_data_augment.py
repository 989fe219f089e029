"""Tests for ssd_jax/data/augment.py: box bookkeeping of every step."""

import numpy as np
import pytest
import tensorflow as tf

from ssd_jax import boxes as box_lib
from ssd_jax.data import augment, image

MEAN = np.asarray(image.MEAN_RGB, np.float32)
OBJECT = np.asarray([250.0, 20.0, 200.0], np.float32)
NO_PHOTO = augment.AugmentConfig(
  brightness_prob=0.0, contrast_prob=0.0, saturation_prob=0.0, hue_prob=0.0
)


def _scene(h=48, w=64, box_px=(12, 8, 30, 20)):
  """A grey image with one solid object; returns (image, box normalised)."""
  image = np.full((h, w, 3), 60, np.uint8)
  x0, y0, x1, y1 = box_px  # Continuous pixel corners.
  image[y0:y1, x0:x1] = OBJECT.astype(np.uint8)
  box = np.asarray([x0 / w, y0 / h, x1 / w, y1 / h], np.float32)
  return image, box


def _assert_box_on_object(pixels, box, colour=OBJECT, margin=1.5):
  """Pixels well inside `box` have the object's colour; a ring just outside
  it (where inside the output) does not.

  Args:
    pixels: [H, W, 3] float, 0..255 (not normalised).
    box: [4] normalised corners in the output.
  """
  h, w = pixels.shape[:2]
  x0, y0, x1, y1 = box * np.asarray([w, h, w, h])
  ys, xs = np.mgrid[0:h, 0:w] + 0.5  # Pixel centres.
  dist = np.abs(pixels - colour).max(-1)  # [H, W]
  inner = (xs > x0 + margin) & (xs < x1 - margin)
  inner &= (ys > y0 + margin) & (ys < y1 - margin)
  assert inner.any(), "box too small to check"
  assert dist[inner].max() < 2.0
  grown = (xs > x0 - 2 * margin - 1) & (xs < x1 + 2 * margin + 1)
  grown &= (ys > y0 - 2 * margin - 1) & (ys < y1 + 2 * margin + 1)
  ring = grown & ~((xs > x0 - margin) & (xs < x1 + margin)
                   & (ys > y0 - margin) & (ys < y1 + margin))  # fmt: skip
  if ring.any():
    assert dist[ring].min() > 40.0


def _render(image, window, size):
  pixels, coverage = augment.render(image, tf.constant(window), size)
  return pixels.numpy() + MEAN, coverage.numpy()


def _seed(i):
  return tf.constant([i, 7], tf.int64)


def test_render_identity_and_mirror():
  image = np.random.default_rng(0).integers(0, 255, (9, 13, 3), np.uint8)
  pixels, coverage = _render(image, augment.FULL_WINDOW, (9, 13))
  np.testing.assert_allclose(pixels, image, atol=1e-3)
  assert coverage.all()
  mirrored, _ = _render(image, (1.0, 0.0, 0.0, 1.0), (9, 13))
  np.testing.assert_allclose(mirrored, image[:, ::-1], atol=1e-3)


def test_render_matches_half_pixel_resize():
  image = np.random.default_rng(1).uniform(0, 255, (16, 16, 3))
  image = image.astype(np.float32)
  # The whole image up 3x and down 2x: exactly tf.image.resize's bilinear
  # (half-pixel centres, edges replicated), borders included.
  for size in ((48, 40), (8, 8)):
    pixels, coverage = _render(image, augment.FULL_WINDOW, size)
    ref = tf.image.resize(image, size, "bilinear").numpy()
    np.testing.assert_allclose(pixels, ref, atol=1e-3)
    assert coverage.all()
  # Upscale the top-left quarter 4x: as resizing the cut, away from the
  # cut's far edges, where render reads the true neighbours.
  pixels, _ = _render(image, (0.0, 0.0, 0.5, 0.5), 32)
  ref = tf.image.resize(image[:8, :8], (32, 32), "bilinear").numpy()
  np.testing.assert_allclose(pixels[:-4, :-4], ref[:-4, :-4], atol=1e-3)


def test_render_outside_is_mean_canvas():
  image = np.full((10, 10, 3), 200, np.uint8)
  pixels, coverage = _render(image, (-2.0, -2.0, -1.0, -1.0), 8)
  np.testing.assert_allclose(pixels, np.broadcast_to(MEAN, pixels.shape))
  assert not coverage.any()


@pytest.mark.parametrize("seed", range(6))
def test_expand_keeps_box_on_object(seed):
  image, box = _scene()
  window, boxes = augment.expand(
    tf.constant(augment.FULL_WINDOW), tf.constant(box[None]), _seed(seed),
    max_ratio=3.0, prob=1.0,
  )  # fmt: skip
  side = (boxes[0, 2] - boxes[0, 0]).numpy()
  assert side <= (box[2] - box[0]) + 1e-6  # Zoomed out.
  pixels, coverage = _render(image, window.numpy(), 96)
  _assert_box_on_object(pixels, boxes.numpy()[0])
  # Outside the placed image the canvas is the mean colour.
  assert coverage.min() < 1e-6 or side > 0.99 * (box[2] - box[0])
  canvas = pixels[coverage[..., 0] == 0]  # [K, 3]
  np.testing.assert_allclose(canvas, np.broadcast_to(MEAN, canvas.shape))


def test_expand_with_prob_zero_is_identity():
  box = tf.constant([[0.1, 0.2, 0.3, 0.4]])
  window, boxes = augment.expand(
    tf.constant(augment.FULL_WINDOW), box, _seed(0), prob=0.0
  )
  np.testing.assert_allclose(window, augment.FULL_WINDOW)
  np.testing.assert_allclose(boxes, box)


def _crop_reference(boxes, patch):
  """Slow loop: keep boxes by centre, clip to patch, renormalise."""
  px0, py0, px1, py1 = patch
  out, keep = [], []
  for x0, y0, x1, y1 in boxes:
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    k = px0 <= cx < px1 and py0 <= cy < py1
    keep.append(k)
    if k:
      pw, ph = px1 - px0, py1 - py0
      out.append([
        min(max((x0 - px0) / pw, 0), 1), min(max((y0 - py0) / ph, 0), 1),
        min(max((x1 - px0) / pw, 0), 1), min(max((y1 - py0) / ph, 0), 1),
      ])  # fmt: skip
  return np.asarray(out, np.float32).reshape(-1, 4), keep


def test_crop_matches_reference():
  rng = np.random.default_rng(2)
  xy = rng.uniform(0, 0.8, (30, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(0.02, 0.2, (30, 2))], -1)
  patch = np.asarray([0.2, 0.1, 0.7, 0.9], np.float32)
  window, got, keep = augment.crop(
    tf.constant(augment.FULL_WINDOW),
    tf.constant(boxes, tf.float32),
    tf.constant(patch),
  )
  want, want_keep = _crop_reference(boxes, patch)
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert keep.numpy().tolist() == want_keep
  np.testing.assert_allclose(window, patch, atol=1e-7)
  # No boxes at all.
  _, none, _ = augment.crop(
    tf.constant(augment.FULL_WINDOW), tf.zeros([0, 4]), tf.constant(patch)
  )
  assert none.shape == (0, 4)


@pytest.mark.parametrize("seed", range(8))
def test_sampled_crop_keeps_box_on_object(seed):
  image, box = _scene(box_px=(10, 6, 40, 30))
  patch = augment.sample_crop(tf.constant(box[None]), _seed(seed))
  window, boxes, keep = augment.crop(
    tf.constant(augment.FULL_WINDOW), tf.constant(box[None]), patch
  )
  assert keep.numpy().all()  # The only box's centre is always kept.
  pixels, _ = _render(image, window.numpy(), (60, 80))
  _assert_box_on_object(pixels, boxes.numpy()[0])


def test_sample_crop_obeys_its_constraints():
  boxes = tf.constant([[0.1, 0.1, 0.6, 0.7], [0.7, 0.6, 0.9, 0.8]])
  config = augment.AugmentConfig(min_ious=(0.5,))
  whole = iou_ok = 0
  for s in range(40):
    p = augment.sample_crop(boxes, _seed(s), config).numpy()
    assert np.all(p >= -1e-6) and np.all(p <= 1 + 1e-6)
    if np.allclose(p, [0, 0, 1, 1]):
      whole += 1
      continue
    w, h = p[2] - p[0], p[3] - p[1]
    assert 0.3 - 1e-5 <= np.sqrt(w * h) <= 1 + 1e-5  # Scale.
    assert 0.5 - 1e-4 <= w / h <= 2 + 1e-4  # Aspect.
    centres = (boxes.numpy()[:, :2] + boxes.numpy()[:, 2:]) / 2
    inside = np.all((centres >= p[:2]) & (centres < p[2:]), -1)
    assert inside.any()  # Every patch keeps a box.
    iou = np.asarray(box_lib.pairwise_iou(p[None], boxes.numpy()))[0]
    iou_ok += bool((iou[inside] >= 0.5).any())
  assert whole > 0 and iou_ok > 0  # Both kinds of candidate get picked.


def test_sample_crop_without_boxes():
  for s in range(5):
    p = augment.sample_crop(tf.zeros([0, 4]), _seed(s)).numpy()
    assert p.shape == (4,) and np.all(p[2:] > p[:2])


@pytest.mark.parametrize("seed", range(4))
def test_flip_keeps_box_on_object(seed):
  image, box = _scene()
  window, boxes = augment.flip(
    tf.constant(augment.FULL_WINDOW), tf.constant(box[None]), _seed(seed), 1.0
  )
  np.testing.assert_allclose(
    boxes[0], [1 - box[2], box[1], 1 - box[0], box[3]], atol=1e-7
  )
  pixels, _ = _render(image, window.numpy(), (48, 64))
  np.testing.assert_allclose(pixels, image[:, ::-1], atol=1e-3)
  _assert_box_on_object(pixels, boxes.numpy()[0])


@pytest.mark.parametrize("seed", range(12))
def test_train_augment_keeps_boxes_on_objects(seed):
  image, box = _scene(h=60, w=80, box_px=(20, 15, 50, 45))
  out, boxes, labels = augment.train_augment(
    image, box[None], tf.constant([3]), _seed(seed), 96, NO_PHOTO
  )
  assert out.shape == (96, 96, 3) and out.dtype == tf.float32
  assert boxes.shape[0] == labels.shape[0] == 1  # Its centre is kept.
  assert labels.numpy().tolist() == [3]
  b = boxes.numpy()[0]
  assert np.all(b >= 0) and np.all(b <= 1) and np.all(b[2:] > b[:2])
  pixels = out.numpy() + MEAN
  if (b[2] - b[0]) * 96 > 6 and (b[3] - b[1]) * 96 > 6:
    _assert_box_on_object(pixels, b)


def test_train_augment_is_deterministic_and_handles_no_boxes():
  image, box = _scene()
  a = augment.train_augment(image, box[None], [1], _seed(3), 32)
  b = augment.train_augment(image, box[None], [1], _seed(3), 32)
  c = augment.train_augment(image, box[None], [1], _seed(4), 32)
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], c[0])
  out, boxes, labels = augment.train_augment(
    image, np.zeros((0, 4), np.float32), tf.zeros([0], tf.int32), _seed(0), 32
  )
  assert out.shape == (32, 32, 3) and boxes.shape == (0, 4)
  assert labels.shape == (0,)


def test_photometric_distort_parts():
  rng = np.random.default_rng(3)
  image = tf.constant(rng.uniform(20, 230, (8, 8, 3)), tf.float32)
  off = NO_PHOTO
  np.testing.assert_allclose(
    augment.photometric_distort(image, _seed(0), off), image
  )
  only_brightness = off._replace(brightness_prob=1.0)
  for s in range(5):
    out = augment.photometric_distort(image, _seed(s), only_brightness)
    shift = (out - image).numpy()
    inside = (out.numpy() > 0) & (out.numpy() < 255)
    assert np.ptp(shift[inside]) < 1e-3 and abs(shift[inside][0]) <= 32
  only_contrast = off._replace(contrast_prob=1.0)
  out = augment.photometric_distort(image, _seed(1), only_contrast).numpy()
  ratio = out / image.numpy()
  inside = out < 255
  assert np.ptp(ratio[inside]) < 1e-4 and 0.5 <= ratio[inside][0] <= 1.5
  everything = augment.AugmentConfig(
    brightness_prob=1, contrast_prob=1, saturation_prob=1, hue_prob=1
  )
  for s in range(4):
    out = augment.photometric_distort(image, _seed(s), everything).numpy()
    assert out.min() >= 0 and out.max() <= 255
    assert not np.allclose(out, image)
  # Grey pixels have no saturation or hue to change.
  grey = tf.fill([4, 4, 3], 100.0)
  colour_only = off._replace(saturation_prob=1.0, hue_prob=1.0)
  out = augment.photometric_distort(grey, _seed(2), colour_only)
  np.testing.assert_allclose(out, grey, atol=1e-3)


def test_distortion_leaves_the_expand_canvas_at_the_mean():
  image = np.full((20, 20, 3), 200, np.uint8)
  config = augment.AugmentConfig(
    expand_prob=1.0, brightness_prob=1.0, contrast_prob=1.0, min_ious=()
  )
  for s in range(6):
    out, _, _ = augment.train_augment(
      image, np.zeros((0, 4), np.float32), tf.zeros([0], tf.int32),
      _seed(s), 40, config,
    )  # fmt: skip
    out = out.numpy()
    assert np.abs(out).max() > 1  # The image is somewhere, distorted.
    assert (np.abs(out).max(-1) < 1e-4).any()  # Canvas = mean = 0.


def test_eval_preprocess_is_resize_and_normalise():
  image = np.random.default_rng(4).integers(0, 255, (30, 40, 3), np.uint8)
  out = augment.eval_preprocess(image, (30, 40)).numpy()
  np.testing.assert_allclose(out, image - MEAN, atol=1e-3)
  small = augment.eval_preprocess(image, 15).numpy()
  assert small.shape == (15, 15, 3)


def test_render_coverage_agrees_with_the_resampler():
  # A constant image: every covered pixel must be that constant (a sample
  # the resampler extrapolated would read 0) and every other the mean.
  # Up-scaled borders (samples between the edge pixel's centre and the
  # image's edge) belong to the image.
  image = np.full((37, 53, 3), 200, np.uint8)
  rng = np.random.default_rng(5)
  for _ in range(20):
    lo = rng.uniform(-1.5, 0.5, 2)
    window = np.concatenate([lo, lo + rng.uniform(0.3, 2.5, 2)])
    if rng.uniform() < 0.5:
      window = window[[2, 1, 0, 3]]  # Mirrored.
    size = (int(rng.integers(5, 60)), int(rng.integers(5, 60)))
    pixels, coverage = _render(image, window.astype(np.float32), size)
    inside = coverage[..., 0]
    np.testing.assert_allclose(pixels[inside], 200.0, atol=1e-3)
    outside = pixels[~inside]
    np.testing.assert_allclose(outside, np.broadcast_to(MEAN, outside.shape))
  # Window edges exactly on the image edges: everything is covered.
  for size in (7, 37, 100):
    _, coverage = _render(image, augment.FULL_WINDOW, size)
    assert coverage.all()


def _turned_boxes(boxes, k):
  """k counter-clockwise quarter turns of normalised corners, by hand."""
  for _ in range(k):
    x0, y0, x1, y1 = np.moveaxis(boxes, -1, 0)
    boxes = np.stack([y0, 1 - x1, y1, 1 - x0], -1)
  return boxes


def _which_turn(turned, image):
  """k with np.rot90(image, k) == turned (None if no k)."""
  ks = [k for k in range(4) if np.array_equal(np.rot90(image, k), turned)]
  return ks[0] if len(ks) == 1 else None


def test_rotate90_turns_image_and_boxes_together():
  image, box = _scene(h=64, w=64, box_px=(12, 8, 40, 20))
  turns = set()
  for seed in range(24):
    out, boxes = augment.rotate90(
      tf.constant(image), tf.constant(box[None]), _seed(seed), 1.0
    )
    k = _which_turn(out.numpy(), image)
    assert k in (1, 2, 3), seed  # prob 1: always a turn
    turns.add(k)
    np.testing.assert_allclose(boxes[0], _turned_boxes(box, k), atol=1e-7)
    _assert_box_on_object(out.numpy().astype(np.float32), boxes.numpy()[0])
  assert turns == {1, 2, 3}
  out, boxes = augment.rotate90(
    tf.constant(image), tf.constant(box[None]), _seed(0), 0.0
  )
  np.testing.assert_array_equal(out, image)
  np.testing.assert_array_equal(boxes, box[None])
  # No boxes.
  _, empty = augment.rotate90(
    tf.constant(image), tf.zeros([0, 4]), _seed(1), 1.0
  )
  assert empty.shape == (0, 4)


def test_train_augment_rotate90_only_adds_the_turn():
  """The other steps draw the same numbers with and without the turn."""
  image, box = _scene(h=60, w=80, box_px=(20, 15, 50, 45))
  turned_config = NO_PHOTO._replace(rotate90_prob=0.5)
  kinds = set()
  for seed in range(10):
    args = (image, box[None], tf.constant([3]), _seed(seed), 96)
    plain, plain_boxes, _ = augment.train_augment(*args, NO_PHOTO)
    out, boxes, labels = augment.train_augment(*args, turned_config)
    k = _which_turn(out.numpy(), plain.numpy())
    assert k is not None and labels.numpy().tolist() == [3]
    np.testing.assert_allclose(
      boxes, _turned_boxes(plain_boxes.numpy(), k), atol=1e-6
    )
    kinds.add(k > 0)
  assert kinds == {True, False}
  with pytest.raises(ValueError, match="rotate90_prob needs a square"):
    augment.train_augment(*args[:4], (96, 64), turned_config)
