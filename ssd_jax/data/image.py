"""Image constants, pixel helpers and the one image-file decoder (no TF).

The one place for the input normalisation, for the conversions between
the codebase's normalised boxes and pixel boxes, and for decoding image
files (`decode_image_file`, PIL and numpy), importable by host code
(evaluation, prediction, pictures, the VOC-folder reader) without loading
the tf.data pipeline.

Normalisation: each model names its own (`NORMALIZATIONS`: "caffe" for the
VGG16 SSD, 0..255 RGB pixels minus `MEAN_RGB`, std 1; "imagenet" and
"minus_one_one" for the torchvision-derived models). The augmentation
(`augment.py`) works in the caffe form (its zoom-out fill is the mean, 0
after normalisation); the pipelines convert its output with
`renormalize_from_caffe` for the model at hand.

Box conventions. The codebase's boxes are continuous corners normalised to
[0, 1]: pixel k (0-based) covers [k, k + 1). Two pixel conventions exist:
- continuous pixel corners, `normalized * (W, H, W, H)`
  (`normalized_to_pixels`; COCO's convention);
- the VOC devkit's 1-based inclusive pixel indices (what a VOC XML `bndbox`
  holds): pixel k (1-based) covers [k - 1, k), so XML `xmin` is
  `x_min * W + 1` and XML `xmax` is `x_max * W`, and the devkit's widths
  `xmax - xmin + 1` are the continuous widths (`voc_pixels_to_normalized`,
  `normalized_to_voc_pixels`).

Decoding. `decode_image_file` turns any image file PIL reads into uint8 RGB
[H, W, 3], the same way for prediction, the VOC-folder reader and (through
`ssd_jax.data.dataset.read_image_file`) the tf.data tables:
- "1", "L" (grey, replicated), "P" (palette looked up), "RGB", "RGBX",
  "CMYK" (PIL's `(255 - c) * (255 - k) / 255`; PIL reads Adobe's inverted
  CMYK JPEGs as such), "YCbCr", "LAB" (PIL's CIELAB to sRGB), "HSV";
- alpha ("LA", "La", "PA", "RGBA", "RGBa", and "P" with a transparent
  palette entry) is composited over `MEAN_RGB`: transparent areas become
  the colour the network sees where a zoomed-out training image has no
  content (0 after normalisation), rather than whatever colour the file
  keeps under them. A colour key on a grey or RGB PNG (a tRNS chunk without
  an alpha channel) is ignored, as TensorFlow's PNG decoder ignores it;
- 16-bit grey ("I;16", "I;16B", ...): `v * 255 / 65535`, rounded (PIL's own
  conversion clips at 255, which turns most pixels white). 16-bit RGB(A)
  PNGs PIL itself reduces to the high byte of each sample;
- 32-bit "I": values within 0..255 are taken as they are, within 0..65535
  as 16-bit; "F" (float) within [0, 1] is `v * 255`. Anything else
  ("HDR-like" data) is stretched from its finite minimum to its finite
  maximum onto 0..255 (NaN and -inf give 0, +inf 255; a constant image is
  black);
- multi-frame files (GIF, WEBP, TIFF, APNG): the first frame;
- ICC profiles are ignored, as TensorFlow's decoders ignore them;
- EXIF orientation is applied only when the caller asks (`apply_exif`).
  Prediction does: its boxes and pictures are then in the orientation every
  viewer shows. Training and evaluation data do not: VOC's annotations, and
  those of most annotation tools, refer to the stored pixel grid (tools
  differ; `voc_folder.index_voc_folder` counts and reports tagged images).
"""

import math
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# SSD/Caffe mean, RGB order (the Caffe release lists it as BGR (104, 117,
# 123)).
MEAN_RGB = (123.0, 117.0, 104.0)


# The models' input normalisations, each `pixels * scale + offset` per RGB
# channel on 0..255 pixels: "caffe" (VGG16 SSD, the Caffe release: minus
# `MEAN_RGB`), "imagenet" (torchvision's ResNet-50, NVIDIA's SSD300: ImageNet
# mean and std on [0, 1]), "minus_one_one" (torchvision's SSDLite: [-1, 1]).
_IMAGENET_MEAN = np.asarray((0.485, 0.456, 0.406))
_IMAGENET_STD = np.asarray((0.229, 0.224, 0.225))
NORMALIZATIONS = {
  "caffe": (np.ones(3), -np.asarray(MEAN_RGB)),
  "imagenet": (1.0 / (255.0 * _IMAGENET_STD), -_IMAGENET_MEAN / _IMAGENET_STD),
  "minus_one_one": (np.full(3, 1.0 / 127.5), -np.ones(3)),
}


def normalization(kind: str) -> tuple[np.ndarray, np.ndarray]:
  """(scale [3], offset [3]) float32 of a normalisation: `p * scale + off`.

  Raises:
    ValueError: naming the valid kinds for an unknown one.
  """
  if kind not in NORMALIZATIONS:
    raise ValueError(
      f"unknown normalization {kind!r}; one of {sorted(NORMALIZATIONS)}"
    )
  scale, offset = NORMALIZATIONS[kind]
  return scale.astype(np.float32), offset.astype(np.float32)


def normalize(images, kind: str = "caffe") -> np.ndarray:
  """Normalise uint8 RGB pixels for the model (numpy, host side).

  Args:
    images: [..., H, W, 3] uint8 (or any real dtype) RGB, values 0..255.
    kind: the model's normalisation (`NORMALIZATIONS`; the model class's
      `normalization`). "caffe" is `images - MEAN_RGB`.

  Returns:
    [..., H, W, 3] float32, `images * scale + offset`.

  Raises:
    ValueError: if the last axis is not 3 channels, or for an unknown kind.
  """
  images = np.asarray(images)
  if images.shape[-1:] != (3,):
    raise ValueError(
      f"images must end in 3 RGB channels, got shape {images.shape}"
    )
  scale, offset = normalization(kind)
  if kind == "caffe":  # Exact: no multiply.
    return images.astype(np.float32) + offset
  return images.astype(np.float32) * scale + offset


def denormalize(images, kind: str = "caffe") -> np.ndarray:
  """Invert `normalize` to displayable uint8 pixels.

  Args:
    images: [..., H, W, 3] float, normalised with `kind`.
    kind: see `normalize`.

  Returns:
    [..., H, W, 3] uint8, rounded (half to even) and clipped to 0..255.
  """
  scale, offset = normalization(kind)
  images = (np.asarray(images, np.float32) - offset) / scale
  return np.clip(np.round(images), 0, 255).astype(np.uint8)


def renormalize_from_caffe(images, kind: str):
  """Caffe-normalised images (the augmentation's output) -> `kind`'s.

  Works on numpy, jax and tf arrays alike (elementwise arithmetic with
  numpy constants). "caffe" returns the input unchanged.

  Args:
    images: [..., 3] float32, `pixels - MEAN_RGB`.
    kind: see `normalize`.

  Returns:
    [..., 3] float32, `normalize(pixels, kind)`.
  """
  if kind == "caffe":
    return images
  scale, offset = normalization(kind)
  mean = np.asarray(MEAN_RGB, np.float32)
  return images * scale + (mean * scale + offset)


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


# EXIF tag 0x0112: how to turn the stored grid into the viewed image (1 =
# as stored, 2..8 = flips and rotations; `ImageOps.exif_transpose`).
ORIENTATION_TAG = 0x0112

# The PIL modes `decode_image_file` converts (see the module docstring).
MODES = frozenset({
  "1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK",
  "YCbCr", "LAB", "HSV", "I", "F", "I;16", "I;16L", "I;16B", "I;16N",
})  # fmt: skip
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


class ImageDecodeError(ValueError):
  """An image file that cannot be decoded; the message names the file.

  Raised for a missing, unreadable, truncated or corrupt file, a format PIL
  does not know, an unsupported mode, or a file over PIL's decompression-bomb
  limit.

  Attributes:
    path: the file.
    reason: what is wrong with it, in words (without the path).
  """

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = path
    self.reason = reason

  def __reduce__(self):  # Pickles with both fields (multiprocessing).
    return type(self), (self.path, self.reason)


class ImageHeader(NamedTuple):
  """What an image file's header says (no pixel decoding).

  Attributes:
    format: PIL's format name, e.g. "JPEG", "PNG".
    mode: PIL's mode of the stored pixels, one of `MODES`.
    height: stored rows.
    width: stored columns.
    orientation: the EXIF orientation tag, 1..8; 1 when absent, unreadable
      or out of range.
  """

  format: str
  mode: str
  height: int
  width: int
  orientation: int


class DecodedImage(NamedTuple):
  """One decoded image file.

  Attributes:
    pixels: uint8 [h, w, 3] RGB; smaller than `original_size` when the file
      was decoded under a `max_side`.
    original_size: (H, W) of the full-resolution image, in the orientation
      of `pixels` (after an EXIF transposition). Boxes normalised to
      `pixels` map to original pixels with it (`normalized_to_pixels`).
    orientation: the file's EXIF orientation tag (1..8, 1 when absent).
    exif_transposed: whether `pixels` were flipped or rotated by it.
  """

  pixels: np.ndarray
  original_size: tuple[int, int]
  orientation: int
  exif_transposed: bool


def read_image_header(path: str) -> ImageHeader:
  """Reads an image file's header: format, mode, size, EXIF orientation.

  Cheap: no pixel data is decoded, so truncated pixel data goes unnoticed
  here. For a PNG only an eXIf chunk before the pixel data is seen (PIL
  writes it there); a later one reads as orientation 1.

  Args:
    path: an image file.

  Returns:
    The `ImageHeader`; `height`, `width` are the stored grid's.

  Raises:
    ImageDecodeError: naming the file, when it is missing or unreadable,
      not an image PIL identifies, in a mode outside `MODES`, or over PIL's
      decompression-bomb limit.
  """
  try:
    with Image.open(path) as im:
      return _header(path, im, loaded=False)
  except ImageDecodeError:
    raise
  except Exception as e:  # PIL raises many types on bad files; see _reason.
    raise ImageDecodeError(path, _reason(e)) from e


def decode_image_file(
  path: str, *, apply_exif: bool, max_side: int | None = None
) -> DecodedImage:
  """Decodes an image file to uint8 RGB, the package's one image decoder.

  Mode conversions, alpha and orientation are described in the module
  docstring. The whole file is decoded (a truncated file is an error, never
  a partly grey image).

  Args:
    path: an image file in any format PIL reads (JPEG, PNG, GIF, BMP, TIFF,
      WEBP, ...).
    apply_exif: whether to flip/rotate the pixels as the EXIF orientation
      tag says (True for prediction, False for training data; required, so
      every caller states its choice).
    max_side: when set and the image's long side is larger, the result is
      shrunk (bilinear, antialiased) so its long side is `max_side`. JPEGs
      are first decoded at the smallest of 1/2, 1/4 or 1/8 scale that still
      covers `max_side` (`Image.draft`, in libjpeg), so memory stays
      bounded; other formats are decoded whole, up to PIL's
      decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`; an error above
      twice that). None keeps the full resolution.

  Returns:
    `DecodedImage`: pixels uint8 [h, w, 3], `original_size` (H, W) of the
    full-resolution image in the same orientation, the orientation tag and
    whether it was applied.

  Raises:
    ImageDecodeError: naming the file and the reason, for a missing,
      unreadable, truncated or corrupt file, an unknown format, a mode
      outside `MODES`, or a decompression bomb.
    ValueError: for `max_side` < 1.
  """
  if max_side is not None and max_side < 1:
    raise ValueError(f"max_side must be >= 1 or None, got {max_side}")
  try:
    with Image.open(path) as im:
      _header(path, im, loaded=False)  # Checks the mode.
      width, height = im.size
      if max_side and im.format == "JPEG" and max(width, height) > max_side:
        f = max_side / max(width, height)
        wanted = (max(1, math.ceil(width * f)), max(1, math.ceil(height * f)))
        im.draft(im.mode, wanted)  # Scale 1/s with size >= wanted.
      im.load()
      orientation = _orientation(im, loaded=True)
      transposed = apply_exif and orientation != 1
      if transposed:
        ImageOps.exif_transpose(im, in_place=True)
        if orientation >= 5:  # Transpositions and quarter turns.
          height, width = width, height
  except ImageDecodeError:
    raise
  except Exception as e:  # PIL raises many types on bad files; see _reason.
    raise ImageDecodeError(path, _reason(e)) from e
  pixels = _to_rgb(im)  # [h, w, 3]
  if max_side and max(pixels.shape[:2]) > max_side:
    pixels = _shrink(pixels, max_side)
  return DecodedImage(pixels, (height, width), orientation, transposed)


def _header(path: str, im: Image.Image, loaded: bool) -> ImageHeader:
  if im.mode not in MODES:
    raise ImageDecodeError(
      path, f"unsupported image mode {im.mode!r} ({im.format})"
    )
  return ImageHeader(
    im.format or "", im.mode, im.height, im.width, _orientation(im, loaded)
  )


def _orientation(im: Image.Image, loaded: bool) -> int:
  """The EXIF orientation tag, 1 when absent, unreadable or invalid."""
  if not loaded and im.format == "PNG" and "exif" not in im.info:
    return 1  # PIL would decode the whole PNG to look for a late eXIf.
  try:
    value = im.getexif().get(ORIENTATION_TAG, 1)
  except Exception:  # A corrupt EXIF block does not spoil the pixels.
    return 1
  return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _reason(e: Exception) -> str:
  """Why PIL failed on a file, in words (for `ImageDecodeError`)."""
  if isinstance(e, FileNotFoundError):
    return "file not found"
  if isinstance(e, IsADirectoryError):
    return "is a directory, not an image file"
  if isinstance(e, PermissionError):
    return "permission denied"
  if isinstance(e, UnidentifiedImageError):
    return "not a readable image (PIL does not recognise the format)"
  if isinstance(e, Image.DecompressionBombError):
    return (
      f"over PIL's decompression-bomb limit ({e}); raise "
      "PIL.Image.MAX_IMAGE_PIXELS to read a file you trust"
    )
  if "truncated" in str(e).lower():
    return f"truncated file ({e})"
  return f"cannot decode ({type(e).__name__}: {e})"


def _to_rgb(im: Image.Image) -> np.ndarray:
  """uint8 [h, w, 3] RGB of a loaded image in one of `MODES`."""
  mode = im.mode
  if mode == "P" and im.has_transparency_data:
    mode = "PA"
  if mode in _ALPHA_MODES:
    if mode == "La":  # PIL converts premultiplied grey only to "LA".
      im = im.convert("LA")
    rgba = np.asarray(im.convert("RGBA"), np.float32)  # [h, w, 4]
    alpha = rgba[..., 3:] / 255.0  # [h, w, 1]
    mean = np.asarray(MEAN_RGB, np.float32)
    out = rgba[..., :3] * alpha + mean * (1.0 - alpha)
    return np.rint(out).astype(np.uint8)
  if mode.startswith("I;16"):
    grey = np.asarray(im).astype(np.float64) * (255.0 / 65535.0)
  elif mode in ("I", "F"):
    grey = _wide_to_255(np.asarray(im).astype(np.float64), mode)
  else:
    return np.array(im.convert("RGB"), np.uint8)
  grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)  # [h, w]
  return np.repeat(grey[..., None], 3, axis=-1)


def _wide_to_255(values: np.ndarray, mode: str) -> np.ndarray:
  """Mode "I" or "F" values [h, w] float64 to 0..255 (module docstring)."""
  finite = values[np.isfinite(values)]
  lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
  if mode == "F" and lo >= 0 and hi <= 1:
    lo, hi = 0.0, 1.0
  elif mode == "I" and lo >= 0 and hi <= 255:
    lo, hi = 0.0, 255.0
  elif mode == "I" and lo >= 0 and hi <= 65535:
    lo, hi = 0.0, 65535.0
  if hi <= lo:  # Constant "HDR" data: nothing to stretch.
    return np.zeros_like(values)
  values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
  return (values - lo) * (255.0 / (hi - lo))


def _shrink(pixels: np.ndarray, max_side: int) -> np.ndarray:
  """Resizes uint8 [h, w, 3] so the long side is max_side (bilinear)."""
  h, w = pixels.shape[:2]
  f = max_side / max(h, w)
  size = (max(1, round(w * f)), max(1, round(h * f)))  # PIL's (w, h).
  image = Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR)
  return np.array(image, np.uint8)
