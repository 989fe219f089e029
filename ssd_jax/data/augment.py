"""SSD training augmentation (the Caffe release's) and evaluation resizing.

Everything here is TensorFlow ops meant to run inside a `tf.data` map, and
every random choice is a stateless op driven by an explicit `seed` (an int
`[2]` tensor), so the pipeline is deterministic and resumable.

The geometric steps of the Caffe release (`weiliu89/caffe`, branch `ssd`,
`examples/ssd/ssd_pascal.py`: expand/zoom-out, the min-IoU batch sampler crop,
mirror, resize) are each written as a transform of a *window*: the region of
the source image, `(x0, y0, x1, y1)` in source-normalised coordinates, that
the current virtual image shows. A window may reach outside the source (the
expand canvas) and may be mirrored (`x1 < x0`). The boxes always stay in the
normalised corner coordinates of the current virtual image, the codebase's
convention. Pixels are produced once, at the end, by `render`: a single
bilinear `crop_and_resize` of the source (pixel-centre exact, edges
replicated like `tf.image.resize`) into the output size, so an expand by 4x
never materialises a 4x canvas and the cost is set by the output size, not
by the zoom. Outside the source `render` yields exactly 0 after mean
subtraction, i.e. the release's mean-filled canvas. (The release picks a
random OpenCV interpolation per image; this is always bilinear.)

Photometric distortion is applied to the rendered output and the canvas is
then reset by the coverage mask, so the canvas stays the mean colour as in
the release (which distorts before expanding). Brightness and
contrast are affine, so they commute exactly with the bilinear resize up to
the [0, 255] clipping; saturation and hue are per-pixel, so they differ from
distort-then-resize only at interpolated edges.

The normalisation constant comes from the TF-free `image.py`; the crop
sampler's IoU is `ssd_jax.boxes.pairwise_iou` run with
`tf.experimental.numpy`. One module (about 480 lines) because the steps are
one seeded recipe: the geometric steps share the window algebra and
`render`, and `train_augment` draws every step's seed from one seed tree.
"""

from typing import NamedTuple

import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from ssd_jax import boxes as box_lib
from ssd_jax.data.image import MEAN_RGB


class AugmentConfig(NamedTuple):
  """The release's augmentation parameters (`ssd_pascal.py`).

  Attributes:
    brightness_prob: probability of a brightness shift.
    brightness_delta: shift drawn from U[-delta, delta], pixel units.
    contrast_prob: probability of a contrast scaling.
    contrast_range: scale factor range (the release multiplies pixels).
    saturation_prob: probability of a saturation scaling.
    saturation_range: HSV saturation factor range.
    hue_prob: probability of a hue shift.
    hue_delta: hue shift drawn from U[-delta, delta] as a fraction of the hue
      circle. The release adds +-18 to OpenCV's 8-bit hue channel, whose full
      circle is 180, so 18 / 180 = 0.1.
    expand_prob: probability of zooming out.
    max_expand_ratio: the canvas side is U[1, max] times the image side.
    min_ious: the crop samplers' minimum IoU constraints. Besides these, the
      candidates are always the whole image and a plain random patch
      (the release's `max_jaccard_overlap: 1.0` sampler).
    max_trials: trials per sampler.
    min_scale: smallest patch side, as a fraction of the image side (the
      release uses 0.3; the paper text says 0.1).
    max_scale: largest patch side fraction.
    min_aspect: smallest patch aspect ratio (w / h, relative to the image).
    max_aspect: largest patch aspect ratio.
    flip_prob: probability of a horizontal mirror.
    rotate90_prob: probability of turning the output by 90, 180 or 270
      degrees (one of the three, uniformly; `rotate90`): for classes that
      keep their names when turned (aerial or microscope images, symbols
      in any orientation), not for upright scenes. Square outputs only.
  """

  brightness_prob: float = 0.5
  brightness_delta: float = 32.0
  contrast_prob: float = 0.5
  contrast_range: tuple[float, float] = (0.5, 1.5)
  saturation_prob: float = 0.5
  saturation_range: tuple[float, float] = (0.5, 1.5)
  hue_prob: float = 0.5
  hue_delta: float = 18.0 / 180.0
  expand_prob: float = 0.5
  max_expand_ratio: float = 4.0
  min_ious: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
  max_trials: int = 50
  min_scale: float = 0.3
  max_scale: float = 1.0
  min_aspect: float = 0.5
  max_aspect: float = 2.0
  flip_prob: float = 0.5
  rotate90_prob: float = 0.0


DEFAULT_AUGMENT = AugmentConfig()
FULL_WINDOW = (0.0, 0.0, 1.0, 1.0)


def _seeds(seed: tf.Tensor, num: int) -> tf.Tensor:
  """Splits one stateless seed [2] into `num` independent seeds [num, 2]."""
  return tf.random.experimental.stateless_split(seed, num)


def _uniform(seed, shape=(), minval=0.0, maxval=1.0) -> tf.Tensor:
  return tf.random.stateless_uniform(
    shape, seed=seed, minval=minval, maxval=maxval, dtype=tf.float32
  )


def _coin(seed, prob: float) -> tf.Tensor:
  """A stateless Bernoulli(prob) draw, bool scalar."""
  return _uniform(seed) < prob


def _compose(window: tf.Tensor, rect: tf.Tensor) -> tf.Tensor:
  """Maps a rectangle in the current window's coordinates to source ones.

  Args:
    window: [4] float32 `(x0, y0, x1, y1)` in source-normalised coordinates
      (x1 < x0 when mirrored).
    rect: [4] float32 `(x0, y0, x1, y1)` in the window's normalised frame.

  Returns:
    [4] float32, the rectangle in source-normalised coordinates.
  """
  origin = tf.stack([window[0], window[1], window[0], window[1]])
  extent = tf.stack([window[2] - window[0], window[3] - window[1]] * 2)  # [4]
  return origin + extent * rect


def expand(
  window: tf.Tensor,
  boxes: tf.Tensor,
  seed: tf.Tensor,
  max_ratio: float = 4.0,
  prob: float = 0.5,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Zoom out: place the image on a mean-filled canvas up to `max_ratio` x.

  As the release: with probability `prob`, ratio r ~ U[1, max_ratio], the
  canvas is r times the image in each side, and the image's top-left corner
  lands uniformly in the canvas so that the image fits.

  Args:
    window: [4] float32 current window (see module docstring).
    boxes: [G, 4] float32 corners in the current image, normalised.
    seed: [2] int stateless seed.
    max_ratio: largest canvas / image side ratio (>= 1).
    prob: probability of expanding at all.

  Returns:
    (window [4], boxes [G, 4]) of the expanded image.
  """
  s = _seeds(seed, 3)
  ratio = tf.where(_coin(s[0], prob), _uniform(s[1], (), 1.0, max_ratio), 1.0)
  offset = _uniform(s[2], (2,)) * (1.0 - 1.0 / ratio)  # [2] canvas frame
  offset4 = tf.tile(offset, [2])  # [4]
  boxes = offset4 + boxes / ratio  # [G, 4]
  canvas = (tf.constant([0.0, 0.0, 1.0, 1.0]) - offset4) * ratio  # [4]
  return _compose(window, canvas), boxes


def _centres_inside(patches: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
  """Whether each box centre lies in each patch: [N, 4], [M, 4] -> [N, M]."""
  centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [M, 2]
  lo = patches[:, None, :2] <= centres[None]  # [N, M, 2]
  hi = centres[None] < patches[:, None, 2:]  # [N, M, 2]
  return tf.reduce_all(lo & hi, -1)


def sample_crop(
  boxes: tf.Tensor, seed: tf.Tensor, config: AugmentConfig = DEFAULT_AUGMENT
) -> tf.Tensor:
  """The release's min-IoU batch sampler: picks one crop patch.

  Candidates are: the whole image; for each `config.min_ious` value, the
  first of `max_trials` random patches (side fraction U[min_scale,
  max_scale], aspect U[max(min_aspect, s^2), min(max_aspect, 1/s^2)] as the
  release clamps it) that has IoU >= the value with some ground-truth box
  whose centre it contains; and the first random patch that contains some
  box centre (any patch when there are no boxes). One of the successful
  candidates is chosen uniformly, as the release does. The release checks
  the IoU and keeps boxes by centre separately; requiring the satisfying box
  to be kept (as ssd.pytorch does) avoids patches that lose every box.

  Args:
    boxes: [G, 4] float32 corners in the current image, normalised; G may
      be 0.
    seed: [2] int stateless seed.
    config: sampler parameters.

  Returns:
    [4] float32 patch `(x0, y0, x1, y1)` in the current image, normalised.
  """
  num_samplers = len(config.min_ious) + 1  # + the plain random patch
  trials = config.max_trials
  s = _seeds(seed, 5)
  shape = (num_samplers, trials)
  scale = _uniform(s[0], shape, config.min_scale, config.max_scale)
  lo = tf.maximum(config.min_aspect, scale**2)
  hi = tf.minimum(config.max_aspect, 1.0 / scale**2)
  aspect = lo + (hi - lo) * _uniform(s[1], shape)
  w = scale * tf.sqrt(aspect)  # [K, T]
  h = scale / tf.sqrt(aspect)
  x0 = _uniform(s[2], shape) * (1.0 - w)
  y0 = _uniform(s[3], shape) * (1.0 - h)
  patches = tf.stack([x0, y0, x0 + w, y0 + h], -1)  # [K, T, 4]
  flat = tf.reshape(patches, [-1, 4])  # [K*T, 4]
  iou = box_lib.pairwise_iou(flat, boxes, xp=tnp)  # [K*T, G]
  iou = tf.reshape(iou, [num_samplers, trials, -1])
  inside = tf.reshape(_centres_inside(flat, boxes), [num_samplers, trials, -1])
  min_iou = tf.constant(list(config.min_ious) + [-1.0], tf.float32)  # [K]
  # [K, T]: some kept box meets the sampler's IoU bound.
  ok = tf.reduce_any(inside & (iou >= min_iou[:, None, None]), -1)
  no_boxes = tf.equal(tf.shape(boxes)[0], 0)
  ok = tf.concat(
    [
      ok[:-1] & tf.logical_not(no_boxes),  # IoU samplers need a box.
      ok[-1:] | no_boxes,  # The plain patch is free when there are none.
    ],
    0,
  )
  found = tf.reduce_any(ok, -1)  # [K]
  first = tf.argmax(tf.cast(ok, tf.int32), -1, output_type=tf.int32)  # [K]
  chosen = tf.gather(patches, first, batch_dims=1)  # [K, 4]
  whole = tf.constant([[0.0, 0.0, 1.0, 1.0]])
  candidates = tf.concat([whole, tf.boolean_mask(chosen, found)], 0)
  count = tf.shape(candidates)[0]
  pick = tf.random.stateless_uniform(
    (), seed=s[4], minval=0, maxval=count, dtype=tf.int32
  )
  return candidates[pick]


def crop(
  window: tf.Tensor, boxes: tf.Tensor, patch: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Crops to `patch`, keeping the boxes whose centre lies inside it.

  Kept boxes are clipped to the patch and re-normalised to it.

  Args:
    window: [4] float32 current window.
    boxes: [G, 4] float32 corners in the current image, normalised.
    patch: [4] float32 `(x0, y0, x1, y1)` in the current image, with
      positive width and height.

  Returns:
    (window [4], boxes [G', 4], keep [G] bool) where `keep` marks the input
    boxes that survive, in order.
  """
  keep = _centres_inside(patch[None], boxes)[0]  # [G]
  kept = tf.boolean_mask(boxes, keep)  # [G', 4]
  origin = tf.tile(patch[:2], [2])  # [4]
  size = tf.tile(patch[2:] - patch[:2], [2])  # [4]
  kept = tf.clip_by_value((kept - origin) / size, 0.0, 1.0)
  return _compose(window, patch), kept, keep


def flip(
  window: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor, prob: float = 0.5
) -> tuple[tf.Tensor, tf.Tensor]:
  """Horizontal mirror with probability `prob`.

  Args:
    window: [4] float32 current window.
    boxes: [G, 4] float32 corners, normalised.
    seed: [2] int stateless seed.
    prob: probability of mirroring.

  Returns:
    (window [4], boxes [G, 4]).
  """
  do = _coin(seed, prob)
  flipped_boxes = tf.stack(
    [1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], -1
  )
  flipped_window = tf.stack([window[2], window[1], window[0], window[3]])
  return (
    tf.where(do, flipped_window, window),
    tf.where(do, flipped_boxes, boxes),
  )


def rotate90(
  image: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor, prob: float
) -> tuple[tf.Tensor, tf.Tensor]:
  """Turns a square image counter-clockwise by k x 90 degrees, k in 1..3.

  With probability `prob`, k uniform (`np.rot90`'s and `tf.image.rot90`'s
  direction). One quarter turn moves a normalised point (x, y) to (y, 1 -
  x), so a box (x0, y0, x1, y1) becomes (y0, 1 - x1, y1, 1 - x0).

  Args:
    image: [S, S, C] (square: the turn keeps the shape).
    boxes: [G, 4] float32 corners, normalised.
    seed: [2] int stateless seed.
    prob: probability of a turn.

  Returns:
    (image [S, S, C], boxes [G, 4]).
  """
  s = _seeds(seed, 2)
  turns = tf.where(
    _coin(s[0], prob),
    tf.random.stateless_uniform((), s[1], minval=1, maxval=4, dtype=tf.int32),
    0,
  )

  def quarter(boxes):
    return tf.stack(
      [boxes[:, 1], 1.0 - boxes[:, 2], boxes[:, 3], 1.0 - boxes[:, 0]], -1
    )

  for k in range(1, 4):
    boxes = tf.where(turns >= k, quarter(boxes), boxes)
  return tf.image.rot90(image, turns), boxes


def _sample_points(lo, hi, source: tf.Tensor, out: int) -> tuple:
  """crop_and_resize end points for a window side, pixel-centre exact.

  Output pixel i (of `out`) has its centre at (i + 0.5) / out of the window;
  in source pixel-centre coordinates that is
  p_i = (lo + (hi - lo) * (i + 0.5) / out) * source - 0.5. The source is
  sampled with a one-pixel replicated border (`_render_raw`), where p is at
  p + 1 of `source + 2` pixels, and crop_and_resize samples
  c0 * (source + 1) + i * (c1 - c0) * (source + 1) / (out - 1); solve for c0
  and c1 (mirrored windows work too). A sample belongs to the image when
  -0.5 <= p_i <= source - 0.5 (inside its first/last pixel, where bilinear
  sampling of the padded source replicates the edge, as image resizers do);
  crop_and_resize only extrapolates beyond p < -1 or p > source, so the two
  never disagree through rounding.

  Returns:
    (c0, c1, inside [out] bool).
  """
  source = tf.cast(source, tf.float32)
  span = (hi - lo) * source
  first = lo * source + span * (0.5 / out) - 0.5
  last = lo * source + span * (1.0 - 0.5 / out) - 0.5
  if out == 1:
    last = first
  step = (last - first) / max(out - 1, 1)
  points = first + step * tf.range(out, dtype=tf.float32)  # [out]
  inside = (points >= -0.5) & (points <= source - 0.5)
  return (first + 1.0) / (source + 1.0), (last + 1.0) / (source + 1.0), inside


def _render_raw(image, window, size):
  """`render` before normalisation.

  Returns:
    (pixels [h, w, 3] float32 0..255, arbitrary where outside the source;
     coverage [h, w, 1] bool; covered: scalar bool, all pixels covered).
  """
  out_h, out_w = (size, size) if isinstance(size, int) else size
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  x0, x1, in_x = _sample_points(window[0], window[2], width, out_w)
  y0, y1, in_y = _sample_points(window[1], window[3], height, out_h)
  padded = tf.pad(image, [[1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
  pixels = tf.image.crop_and_resize(
    padded[None],
    tf.stack([y0, x0, y1, x1])[None],
    tf.zeros([1], tf.int32),
    [out_h, out_w],
    method="bilinear",
  )[0]  # [h, w, 3]
  coverage = (in_y[:, None] & in_x[None, :])[..., None]  # [h, w, 1]
  covered = tf.reduce_all(in_x) & tf.reduce_all(in_y)
  return pixels, coverage, covered


def _normalize_covered(pixels, coverage, covered) -> tf.Tensor:
  """Subtracts the mean; uncovered (canvas) pixels become exactly 0."""
  mean = tf.constant(MEAN_RGB, tf.float32)
  return tf.cond(
    covered,
    lambda: pixels - mean,
    lambda: tf.where(coverage, pixels - mean, 0.0),
  )


def render(
  image: tf.Tensor, window: tf.Tensor, size: int | tuple[int, int]
) -> tuple[tf.Tensor, tf.Tensor]:
  """Resamples `window` of `image` to `size`, normalised, canvas = 0.

  Bilinear interpolation with pixel-centre alignment: a box in the window's
  normalised frame covers the same content in the output. Where the window
  lies outside the source the output is 0 after normalisation, i.e. the mean
  colour.

  Args:
    image: [H, W, 3] uint8 or float, RGB 0..255.
    window: [4] float32 `(x0, y0, x1, y1)` in source-normalised
      coordinates; x1 < x0 mirrors.
    size: output side, or (height, width).

  Returns:
    (pixels [h, w, 3] float32 normalised (minus `MEAN_RGB`),
     coverage [h, w, 1] bool, whether the pixel comes from the source).
  """
  pixels, coverage, covered = _render_raw(image, window, size)
  return _normalize_covered(pixels, coverage, covered), coverage


def photometric_distort(
  image: tf.Tensor, seed: tf.Tensor, config: AugmentConfig = DEFAULT_AUGMENT
) -> tf.Tensor:
  """The release's photometric distortion, each part with its probability.

  Order as the release (`ApplyDistort`): brightness, then with probability
  0.5 contrast, saturation, hue; otherwise saturation, hue, contrast.
  Values are clipped to [0, 255] after each step, as the release's uint8
  images are. Contrast multiplies the pixels (the release's `convertTo`).

  Args:
    image: [H, W, 3] float32 RGB in 0..255.
    seed: [2] int stateless seed.
    config: the probabilities and ranges.

  Returns:
    [H, W, 3] float32 RGB in 0..255.
  """
  s = _seeds(seed, 9)

  def clip(x):
    return tf.clip_by_value(x, 0.0, 255.0)

  def maybe(x, coin_seed, prob, fn):
    return tf.cond(_coin(coin_seed, prob), lambda: clip(fn(x)), lambda: x)

  def brightness(x):
    d = config.brightness_delta
    return x + _uniform(s[1], (), -d, d)

  def contrast(x):
    return x * _uniform(s[3], (), *config.contrast_range)

  def saturation(x):
    factor = _uniform(s[5], (), *config.saturation_range)
    # HSV saturation and hue do not depend on the value scale: no / 255.
    return tf.image.adjust_saturation(x, factor)

  def hue(x):
    d = config.hue_delta
    return tf.image.adjust_hue(x, _uniform(s[7], (), -d, d))

  def with_contrast(x):
    return maybe(x, s[2], config.contrast_prob, contrast)

  def with_colour(x):
    x = maybe(x, s[4], config.saturation_prob, saturation)
    return maybe(x, s[6], config.hue_prob, hue)

  image = maybe(image, s[0], config.brightness_prob, brightness)
  return tf.cond(
    _coin(s[8], 0.5),
    lambda: with_colour(with_contrast(image)),
    lambda: with_contrast(with_colour(image)),
  )


def train_augment(
  image: tf.Tensor,
  boxes: tf.Tensor,
  labels: tf.Tensor,
  seed: tf.Tensor,
  size: int | tuple[int, int],
  config: AugmentConfig = DEFAULT_AUGMENT,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """The full training augmentation for one example.

  Photometric distortion, expand, min-IoU crop, mirror, resize, normalise
  (see the module docstring for how the steps are fused), then the
  optional quarter turns (`rotate90`).

  Args:
    image: [H, W, 3] uint8 RGB.
    boxes: [G, 4] float32 corners normalised to the image; G may be 0.
    labels: [G] int32.
    seed: [2] int stateless seed.
    size: output side, or (height, width).
    config: augmentation parameters.

  Returns:
    (image [h, w, 3] float32 normalised, boxes [G', 4] float32 corners in
    [0, 1], labels [G'] int32) where G' <= G.
  """
  s = _seeds(seed, 4)
  window = tf.constant(FULL_WINDOW, tf.float32)
  boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
  window, boxes = expand(
    window, boxes, s[0], config.max_expand_ratio, config.expand_prob
  )
  patch = sample_crop(boxes, s[1], config)
  window, boxes, keep = crop(window, boxes, patch)
  labels = tf.boolean_mask(labels, keep)
  window, boxes = flip(window, boxes, s[2], config.flip_prob)
  pixels, coverage, covered = _render_raw(image, window, size)
  distorted = photometric_distort(pixels, s[3], config)
  # Canvas pixels stay at the mean, i.e. 0 once normalised.
  out = _normalize_covered(distorted, coverage, covered)
  if config.rotate90_prob > 0:  # Its own seed: the others stay as they were.
    height, width = (size, size) if isinstance(size, int) else size
    if height != width:
      raise ValueError(
        f"augment_config.rotate90_prob needs a square output; got {size}"
      )
    turn_seed = tf.random.experimental.stateless_fold_in(seed, 4)
    out, boxes = rotate90(out, boxes, turn_seed, config.rotate90_prob)
  return out, boxes, labels


def eval_preprocess(image: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
  """Evaluation preprocessing: resize (bilinear) and normalise only.

  Boxes in normalised coordinates are unchanged by this.

  Args:
    image: [H, W, 3] uint8 RGB.
    size: output side, or (height, width).

  Returns:
    [h, w, 3] float32 normalised.
  """
  pixels, _ = render(image, tf.constant(FULL_WINDOW, tf.float32), size)
  return pixels
