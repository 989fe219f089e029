"""Image constants and pixel helpers, numpy only (no TensorFlow).

The one place for the input normalisation and for the conversions between
the codebase's normalised boxes and pixel boxes, importable by host code
(evaluation, prediction, pictures) without loading the tf.data pipeline.

Normalisation (SSD/Caffe and torchvision convention): 0..255 RGB pixels
minus `MEAN_RGB`, std 1. The tf.data pipeline (`augment.py`) subtracts the
same constant inside its graphs.

Box conventions. The codebase's boxes are continuous corners normalised to
[0, 1]: pixel k (0-based) covers [k, k + 1). Two pixel conventions exist:
- continuous pixel corners, `normalized * (W, H, W, H)`
  (`normalized_to_pixels`; COCO's convention);
- the VOC devkit's 1-based inclusive pixel indices (what a VOC XML `bndbox`
  holds): pixel k (1-based) covers [k - 1, k), so XML `xmin` is
  `x_min * W + 1` and XML `xmax` is `x_max * W`, and the devkit's widths
  `xmax - xmin + 1` are the continuous widths (`voc_pixels_to_normalized`,
  `normalized_to_voc_pixels`).
"""

import numpy as np

# SSD/Caffe mean, RGB order (the Caffe release lists it as BGR (104, 117,
# 123)).
MEAN_RGB = (123.0, 117.0, 104.0)


def normalize(images) -> np.ndarray:
  """Normalise uint8 RGB pixels for the model (numpy, host side).

  Args:
    images: [..., H, W, 3] uint8 (or any real dtype) RGB, values 0..255.

  Returns:
    [..., H, W, 3] float32, `images - MEAN_RGB`.

  Raises:
    ValueError: if the last axis is not 3 channels.
  """
  images = np.asarray(images)
  if images.shape[-1:] != (3,):
    raise ValueError(
      f"images must end in 3 RGB channels, got shape {images.shape}"
    )
  return images.astype(np.float32) - np.asarray(MEAN_RGB, np.float32)


def denormalize(images) -> np.ndarray:
  """Invert `normalize` to displayable uint8 pixels.

  Args:
    images: [..., H, W, 3] float, normalised.

  Returns:
    [..., H, W, 3] uint8, rounded (half to even) and clipped to 0..255.
  """
  images = np.asarray(images, np.float32) + np.asarray(MEAN_RGB, np.float32)
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


def _to_pixels(boxes: np.ndarray, size, shift) -> np.ndarray:
  """`boxes * (W, H, W, H) + shift` in float64, returned as float32.

  Args:
    boxes: [..., 4] float normalised corners; an empty list gives [0, 4].
    size: (height, width), or [..., 2] broadcasting against the leading
      dimensions of `boxes` ([N, 2] with boxes [N, K, 4]).
    shift: [4] added after scaling.

  Returns:
    [..., 4] float32.
  """
  size = np.asarray(size, np.float64)
  h, w = size[..., 0:1], size[..., 1:2]  # [..., 1]
  if size.ndim > 1:  # [N, 2] with boxes [N, K, 4]: broadcast over K.
    h, w = h[..., None, :], w[..., None, :]
  scale = np.concatenate([w, h, w, h], -1)  # [..., 4]
  boxes = np.asarray(boxes, np.float64)
  if boxes.size == 0 and boxes.shape[-1:] != (4,):
    boxes = boxes.reshape(0, 4)  # An empty list of boxes.
  return (boxes * scale + np.asarray(shift, np.float64)).astype(np.float32)


def normalized_to_pixels(boxes, size) -> np.ndarray:
  """Normalised corners to continuous pixel corners (COCO's convention).

  Boxes and size are first rounded to float32; their products are then
  exact in float64, so the result is float32 `boxes * (W, H, W, H)`.

  Args:
    boxes: [..., 4] float corners normalised to [0, 1].
    size: (height, width) of the image, or [..., 2] broadcasting against the
      leading dimensions of `boxes`.

  Returns:
    [..., 4] float32 `(x_min * W, y_min * H, x_max * W, y_max * H)`.
  """
  boxes = np.asarray(boxes, np.float32)
  return _to_pixels(boxes, np.asarray(size, np.float32), (0.0, 0.0, 0.0, 0.0))


def normalized_to_voc_pixels(boxes, original_size) -> np.ndarray:
  """Normalised corners to VOC 1-based inclusive pixel boxes.

  The inverse of `voc_pixels_to_normalized`: the boxes `evaluate_voc` (VOC
  devkit convention, widths `xmax - xmin + 1`) expects, from the model's
  normalised detections and an image's `original_size`. Values are not
  rounded, so widths and IoUs are preserved exactly.

  Args:
    boxes: [..., 4] float corners normalised to [0, 1].
    original_size: (height, width), or [..., 2] broadcasting against the
      leading dimensions of `boxes`.

  Returns:
    [..., 4] float32 `(x_min * W + 1, y_min * H + 1, x_max * W, y_max * H)`.
  """
  return _to_pixels(boxes, original_size, (1.0, 1.0, 0.0, 0.0))


def voc_pixels_to_normalized(boxes_px, original_size) -> np.ndarray:
  """VOC 1-based inclusive pixel boxes to normalised corners.

  Args:
    boxes_px: [..., 4] (xmin, ymin, xmax, ymax), 1-based inclusive pixels;
      an empty list gives [0, 4].
    original_size: (height, width) of the image in pixels.

  Returns:
    [..., 4] float32 `((xmin - 1) / W, (ymin - 1) / H, xmax / W, ymax / H)`.
  """
  h, w = original_size
  b = np.asarray(boxes_px, np.float64)
  if b.size == 0 and b.shape[-1:] != (4,):
    b = b.reshape(0, 4)  # An empty list of boxes.
  scale = np.asarray([w, h, w, h], np.float64)
  shift = np.asarray([1.0, 1.0, 0.0, 0.0])
  return ((b - shift) / scale).astype(np.float32)
