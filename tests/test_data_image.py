"""Tests for ssd_jax/data/image.py: normalisation, pixel conversions and
the one image decoder (on files written here)."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ssd_jax.data import image


def test_normalize_and_denormalize():
  x = np.arange(2 * 3, dtype=np.uint8).reshape(1, 2, 3)
  y = image.normalize(x)
  assert y.dtype == np.float32
  np.testing.assert_allclose(y, x - np.asarray([123.0, 117.0, 104.0]))
  np.testing.assert_array_equal(image.denormalize(y), x)
  assert image.MEAN_RGB == (123.0, 117.0, 104.0)
  with pytest.raises(ValueError, match="3 RGB channels"):
    image.normalize(np.zeros((4, 4)))


def test_denormalize_rounds_half_to_even_and_clips():
  mean = np.asarray(image.MEAN_RGB, np.float32)
  values = np.array([-300.0, 0.5, 1.5, 2.4, 2.6, 400.0], np.float32)
  got = image.denormalize(values[:, None] - mean)  # [6, 3]
  want = [[0] * 3, [0] * 3, [2] * 3, [2] * 3, [3] * 3, [255] * 3]
  np.testing.assert_array_equal(got, want)
  assert got.dtype == np.uint8


def test_pixel_conversion_round_trip_and_devkit_width():
  rng = np.random.default_rng(0)
  size = (37, 53)
  x0 = rng.integers(1, 53, 20)
  y0 = rng.integers(1, 37, 20)
  px = np.stack(
    [x0, y0, rng.integers(x0, 54), rng.integers(y0, 38)], -1
  ).astype(np.float32)
  norm = image.voc_pixels_to_normalized(px, size)
  back = image.normalized_to_voc_pixels(norm, size)
  np.testing.assert_allclose(back, px, atol=1e-4)
  for p, n in zip(px, norm, strict=True):  # Slow reference per box.
    assert (n[2] - n[0]) * 53 == pytest.approx(p[2] - p[0] + 1, abs=1e-4)
    assert (n[3] - n[1]) * 37 == pytest.approx(p[3] - p[1] + 1, abs=1e-4)
  # Per-image sizes broadcast over a batch [N, K, 4] with sizes [N, 2].
  batch = image.normalized_to_voc_pixels(
    np.stack([norm, norm]), np.array([size, (10, 10)])
  )
  np.testing.assert_allclose(batch[0], px, atol=1e-4)
  np.testing.assert_allclose(batch[1, :, 2], norm[:, 2] * 10, atol=1e-5)
  assert image.normalized_to_voc_pixels(np.zeros((0, 4)), size).shape == (
    0,
    4,
  )


def test_normalized_to_pixels_continuous_corners():
  rng = np.random.default_rng(1)
  boxes = rng.uniform(0, 1, (7, 4)).astype(np.float32)
  size = np.array([37, 53], np.int32)  # (h, w)
  got = image.normalized_to_pixels(boxes, size)
  # Reference: float32 products, as evaluate.to_pixels(voc=False) had.
  want = boxes * np.array([53, 37, 53, 37], np.float32)
  assert got.dtype == np.float32 and got.shape == (7, 4)
  np.testing.assert_array_equal(got, want)
  for b, p in zip(boxes, got, strict=True):  # Slow reference per box.
    assert p[0] == pytest.approx(float(b[0]) * 53, rel=1e-6)
    assert p[3] == pytest.approx(float(b[3]) * 37, rel=1e-6)
  # Continuous and devkit pixels differ by the 1-based shift of the minima.
  voc = image.normalized_to_voc_pixels(boxes, size)
  np.testing.assert_allclose(voc - got, [[1, 1, 0, 0]] * 7, atol=1e-4)
  # Per-image sizes broadcast; empty lists give [0, 4].
  batch = image.normalized_to_pixels(np.stack([boxes, boxes]), [size, (2, 4)])
  np.testing.assert_array_equal(batch[0], want)
  np.testing.assert_allclose(batch[1], boxes * [4, 2, 4, 2], rtol=1e-6)
  assert image.normalized_to_pixels([], size).shape == (0, 4)


@pytest.mark.parametrize("module", ["ssd_jax.data", "ssd_jax.data.image"])
def test_import_does_not_load_tensorflow(module):
  code = (
    f"import sys, {module}; "
    "heavy = [m for m in ('tensorflow', 'tensorflow_datasets') "
    "if m in sys.modules]; "
    "assert not heavy, heavy"
  )
  subprocess.run([sys.executable, "-c", code], check=True)


# The one decoder (`decode_image_file`): every case is a file written here,
# checked against a numpy reference of what the module docstring promises.

MEAN = np.asarray(image.MEAN_RGB)


def composite(rgb, alpha):
  """Reference alpha compositing over the mean colour, float64."""
  a = np.asarray(alpha, np.float64)[..., None] / 255
  return np.rint(np.asarray(rgb, np.float64) * a + MEAN * (1 - a))


def grey3(values):
  """[h, w] grey values -> [h, w, 3] uint8 (rounded, clipped)."""
  g = np.clip(np.rint(np.asarray(values, np.float64)), 0, 255)
  return np.repeat(g[..., None], 3, -1).astype(np.uint8)


def write_image_cases(folder) -> dict:
  """Writes one image file per decoder case; returns their references.

  Args:
    folder: an existing directory (pathlib.Path).

  Returns:
    {case name: (path, uint8 [H, W, 3] expected pixels of the stored grid,
    tolerance in levels)}; lossy formats have a tolerance > 0.
  """
  rng = np.random.default_rng(0)
  h, w = 5, 7
  rgb = rng.integers(0, 256, (h, w, 3), np.uint8)
  grey = rgb[..., 0]
  alpha = rng.integers(0, 256, (h, w), np.uint8)
  alpha[0, :3] = (0, 255, 128)  # Fully transparent, opaque, half.
  cases = {}

  def add(name, pil_image, want, atol=0, **save):
    path = str(folder / name)
    pil_image.save(path, **save)
    cases[name] = (path, np.asarray(want).astype(np.uint8), atol)

  add("rgb.png", Image.fromarray(rgb), rgb)
  add("grey.png", Image.fromarray(grey), grey3(grey))
  bits = grey > 127
  add("bilevel.png", Image.fromarray(bits), grey3(bits * 255.0))
  palette = rng.integers(0, 256, (4, 3), np.uint8)
  index = rng.integers(0, 4, (h, w), np.uint8)
  pal = Image.frombytes("P", (w, h), index.tobytes())
  pal.putpalette(palette.flatten().tolist())
  add("palette.png", pal, palette[index])
  keys = np.array([255, 0, 128, 40], np.uint8)  # Per-entry alpha (tRNS).
  add(
    "palette_alpha.png",
    pal,
    composite(palette[index], keys[index]),
    transparency=keys.tobytes(),
  )
  add(
    "grey_alpha.png",
    Image.fromarray(np.stack([grey, alpha], -1)),  # Mode "LA".
    composite(grey3(grey), alpha),
  )
  add(
    "rgba.png",
    Image.fromarray(np.dstack([rgb, alpha])),
    composite(rgb, alpha),
  )
  add(
    "rgba.webp",
    Image.fromarray(np.dstack([rgb, alpha])),
    composite(rgb, alpha),
    lossless=True,
  )
  wide = rng.integers(0, 65536, (h, w)).astype(np.uint16)
  wide[0, :2] = (0, 65535)
  add("grey16.png", Image.fromarray(wide), grey3(wide * 255.0 / 65535))  # I;16
  add(
    "grey16_big_endian.tif",
    Image.fromarray(wide.astype(">u2")),  # Mode "I;16B".
    grey3(wide * 255.0 / 65535),
  )
  ints = rng.integers(-70000, 300000, (h, w)).astype(np.int32)
  lo, hi = ints.min(), ints.max()
  add(
    "int32.tif", Image.fromarray(ints), grey3((ints - lo) * 255.0 / (hi - lo))
  )
  ints16 = (wide // 2 + 300).astype(np.int32)  # Mode "I", 16-bit values.
  add("int_16bit.tif", Image.fromarray(ints16), grey3(ints16 * 255.0 / 65535))
  ints8 = grey.astype(np.int32)  # Mode "I", 8-bit values.
  add("int_8bit.tif", Image.fromarray(ints8), grey3(ints8))
  unit = rng.uniform(0, 1, (h, w)).astype(np.float32)
  add("float_unit.tif", Image.fromarray(unit), grey3(unit * 255.0))
  hdr = rng.uniform(-2, 50, (h, w)).astype(np.float32)
  hdr[0, :4] = (-2, 50, np.nan, np.inf)
  stretched = (np.float64(hdr) + 2) * 255.0 / 52
  stretched[0, 2:4] = (0, 255)  # NaN -> 0, +inf -> 255.
  add("float_hdr.tif", Image.fromarray(hdr), grey3(stretched))
  cmyk = rng.integers(0, 256, (h, w, 4), np.uint8)
  naive = (255.0 - cmyk[..., :3]) * (255.0 - cmyk[..., 3:]) / 255
  add(
    "cmyk.tif", Image.frombytes("CMYK", (w, h), cmyk.tobytes()), np.rint(naive)
  )
  flat = np.broadcast_to(np.uint8([30, 200, 90, 40]), (16, 16, 4))
  flat_rgb = (255.0 - flat[..., :3]) * (255.0 - flat[..., 3:]) / 255
  add(
    "cmyk.jpg",  # PIL writes Adobe's inverted CMYK; one flat colour.
    Image.frombytes("CMYK", (16, 16), flat.tobytes()),
    np.rint(flat_rgb),
    atol=2,
    quality=95,
  )
  # CIELAB (PIL: L 0..255 for L* 0..100, a and b signed bytes) greys, and
  # sRGB red (L* 53.2, a* 80, b* 67).
  lab = np.zeros((1, 6, 3), np.uint8)
  lab[0, :5, 0] = (0, 64, 136, 200, 255)
  lab[0, 5] = (136, 80, 67)
  lightness = lab[0, :5, 0] / 255.0 * 100  # L*
  lum = np.where(
    lightness > 8, ((lightness + 16) / 116) ** 3, lightness / 903.3
  )
  srgb = np.where(
    lum <= 0.0031308, 12.92 * lum, 1.055 * lum ** (1 / 2.4) - 0.055
  )
  want_lab = np.concatenate([grey3(srgb[None] * 255)[0], [[255, 0, 0]]])
  add(
    "lab.tif",
    Image.frombytes("LAB", (6, 1), lab.tobytes()),
    want_lab[None],
    atol=12,
  )
  yy, xx = np.mgrid[0 : h * 4, 0 : w * 4]
  smooth = np.dstack([xx * 8, yy * 10, 200 - xx * 4]).astype(np.uint8)
  add(
    "rgb.jpg",
    Image.fromarray(smooth),
    smooth,
    atol=8,
    quality=98,
    subsampling=0,
  )
  add(
    "grey.jpg",
    Image.fromarray(smooth[..., 0]),
    grey3(smooth[..., 0]),
    atol=6,
    quality=98,
  )
  frames = [Image.new("RGB", (w, h), c) for c in ((250, 0, 0), (0, 0, 250))]
  add(
    "animated.gif",
    frames[0],
    np.broadcast_to(np.uint8([250, 0, 0]), (h, w, 3)),
    atol=8,  # GIF quantises colours.
    save_all=True,
    append_images=frames[1:],
  )
  add(
    "animated.webp",
    frames[0],
    np.broadcast_to(np.uint8([250, 0, 0]), (h, w, 3)),
    save_all=True,
    append_images=frames[1:],
    lossless=True,
  )
  return cases


def test_decode_image_file_modes(tmp_path):
  cases = write_image_cases(tmp_path)
  for name, (path, want, atol) in cases.items():
    got = image.decode_image_file(path, apply_exif=False)
    assert got.pixels.dtype == np.uint8, name
    assert got.pixels.shape == want.shape, name
    assert got.original_size == want.shape[:2], name
    assert (got.orientation, got.exif_transposed) == (1, False), name
    diff = np.abs(got.pixels.astype(int) - want).max()
    assert diff <= atol, f"{name}: off by {diff} > {atol}"
  # The cases really are the modes they are named after.
  modes = {n: Image.open(p).mode for n, (p, _, _) in cases.items()}
  assert modes["grey16.png"] == "I;16" and modes["bilevel.png"] == "1"
  assert modes["grey16_big_endian.tif"] == "I;16B"
  assert modes["palette_alpha.png"] == "P" and modes["grey_alpha.png"] == "LA"
  assert modes["int32.tif"] == "I" and modes["float_hdr.tif"] == "F"
  assert modes["cmyk.jpg"] == modes["cmyk.tif"] == "CMYK"
  assert modes["lab.tif"] == "LAB" and modes["rgba.webp"] == "RGBA"


def test_decode_constant_and_empty_wide_ranges(tmp_path):
  # A constant "HDR" image has no range to stretch: black; an all-NaN too.
  for name, values in [
    ("const.tif", np.full((3, 4), 7.5, np.float32)),
    ("nan.tif", np.full((3, 4), np.nan, np.float32)),
    ("const_int.tif", np.full((3, 4), 100000, np.int32)),
  ]:
    Image.fromarray(values).save(tmp_path / name)
    got = image.decode_image_file(str(tmp_path / name), apply_exif=False)
    np.testing.assert_array_equal(got.pixels, np.zeros((3, 4, 3), np.uint8))


# EXIF orientation -> the viewed image, as numpy operations on the stored
# [H, W, C] grid (EXIF 2.3, tag 0x0112).
VIEWED = {
  1: lambda a: a,
  2: lambda a: a[:, ::-1],
  3: lambda a: a[::-1, ::-1],
  4: lambda a: a[::-1],
  5: lambda a: a.transpose(1, 0, 2),
  6: lambda a: np.rot90(a, -1),  # Clockwise: a phone held upright.
  7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
  8: lambda a: np.rot90(a, 1),
}


def save_with_orientation(pil_image, path, orientation, **save):
  exif = Image.Exif()
  exif[image.ORIENTATION_TAG] = orientation
  pil_image.save(path, exif=exif, **save)


@pytest.mark.parametrize("orientation", sorted(VIEWED))
def test_exif_orientation_applied_only_when_asked(tmp_path, orientation):
  stored = np.random.default_rng(orientation).integers(0, 256, (4, 6, 3))
  stored = stored.astype(np.uint8)
  path = str(tmp_path / "o.png")  # PNG (eXIf chunk): lossless, exact.
  save_with_orientation(Image.fromarray(stored), path, orientation)
  viewed = image.decode_image_file(path, apply_exif=True)
  np.testing.assert_array_equal(viewed.pixels, VIEWED[orientation](stored))
  assert viewed.original_size == viewed.pixels.shape[:2]
  assert viewed.orientation == orientation
  assert viewed.exif_transposed == (orientation != 1)
  as_stored = image.decode_image_file(path, apply_exif=False)
  np.testing.assert_array_equal(as_stored.pixels, stored)
  assert as_stored.original_size == (4, 6) and not as_stored.exif_transposed
  assert image.read_image_header(path) == ("PNG", "RGB", 4, 6, orientation)


def test_phone_jpeg_rotated_90(tmp_path):
  stored = np.zeros((24, 40, 3), np.uint8)
  stored[:8, :8] = 255  # A white block in the stored top-left corner.
  path = str(tmp_path / "phone.jpg")
  save_with_orientation(Image.fromarray(stored), path, 6, quality=95)
  got = image.decode_image_file(path, apply_exif=True)
  assert got.pixels.shape == (40, 24, 3) and got.original_size == (40, 24)
  assert got.exif_transposed and got.orientation == 6
  assert got.pixels[:8, -8:].min() > 200  # Now at the top right.
  assert got.pixels[-8:, :8].max() < 50
  assert image.read_image_header(path).orientation == 6
  # Out-of-range tags are ignored, like viewers do.
  save_with_orientation(Image.fromarray(stored), path, 9)
  assert image.decode_image_file(path, apply_exif=True).pixels.shape[:2] == (
    24,
    40,
  )


def test_max_side_decodes_jpegs_reduced_and_keeps_the_original_size(
  tmp_path, monkeypatch
):
  from PIL import JpegImagePlugin

  yy, xx = np.mgrid[0:200, 0:400]
  smooth = np.dstack([xx * 255 // 400, yy * 255 // 200, xx * 0 + 90])
  smooth = smooth.astype(np.uint8)
  path = str(tmp_path / "big.jpg")
  Image.fromarray(smooth).save(path, quality=95)
  drafts = []
  draft = JpegImagePlugin.JpegImageFile.draft
  monkeypatch.setattr(
    JpegImagePlugin.JpegImageFile,
    "draft",
    lambda self, mode, size: drafts.append(size) or draft(self, mode, size),
  )
  got = image.decode_image_file(path, apply_exif=False, max_side=100)
  assert drafts == [(100, 50)]  # Decoded at 1/4 scale, then resized.
  assert got.pixels.shape == (50, 100, 3) and got.original_size == (200, 400)
  want = np.asarray(Image.fromarray(smooth).resize((100, 50), Image.BILINEAR))
  assert np.abs(got.pixels.astype(int) - want).mean() < 3
  # Other formats: decoded whole, then resized; EXIF size in view order.
  png = str(tmp_path / "big.png")
  save_with_orientation(Image.fromarray(smooth), png, 8)
  got = image.decode_image_file(png, apply_exif=True, max_side=100)
  assert got.pixels.shape == (100, 50, 3) and got.original_size == (400, 200)
  small = image.decode_image_file(png, apply_exif=False, max_side=400)
  np.testing.assert_array_equal(small.pixels, smooth)  # Not over: as is.
  with pytest.raises(ValueError, match="max_side must be >= 1"):
    image.decode_image_file(png, apply_exif=False, max_side=0)


def test_bad_files_raise_naming_the_file_and_reason(tmp_path, monkeypatch):
  noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
  Image.fromarray(noise).save(tmp_path / "cut.jpg")
  data = (tmp_path / "cut.jpg").read_bytes()
  (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
  (tmp_path / "notes.jpg").write_bytes(b"this is not an image")
  (tmp_path / "empty.png").write_bytes(b"")
  Image.fromarray(noise).save(tmp_path / "huge.png")
  cases = [
    ("cut.jpg", r"cut\.jpg: truncated file"),
    ("notes.jpg", r"notes\.jpg: not a readable image"),
    ("empty.png", r"empty\.png: not a readable image"),
    ("missing.png", r"missing\.png: file not found"),
    (".", r": is a directory"),
  ]
  for name, match in cases:
    with pytest.raises(image.ImageDecodeError, match=match) as e:
      image.decode_image_file(str(tmp_path / name), apply_exif=True)
    assert e.value.path == str(tmp_path / name)
    assert isinstance(e.value, ValueError)  # Callers may catch ValueError.
  with pytest.raises(image.ImageDecodeError, match=r"missing\.png: file not"):
    image.read_image_header(str(tmp_path / "missing.png"))
  # Over twice PIL's pixel limit: its decompression-bomb guard, named.
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
  with pytest.raises(image.ImageDecodeError, match=r"huge\.png: over PIL's"):
    image.decode_image_file(str(tmp_path / "huge.png"), apply_exif=False)
  # The error survives pickling (multiprocessing, tf.numpy_function).
  err = pickle.loads(pickle.dumps(image.ImageDecodeError("p.jpg", "bad")))
  assert (err.path, err.reason, str(err)) == ("p.jpg", "bad", "p.jpg: bad")


@pytest.mark.parametrize("kind", sorted(image.NORMALIZATIONS))
def test_normalizations_round_trip_and_match_their_definition(kind):
  pixels = np.arange(256 * 3, dtype=np.uint8).reshape(16, 16, 3)
  x = image.normalize(pixels, kind)
  want = {
    "caffe": pixels - np.asarray(image.MEAN_RGB),
    "imagenet": (pixels / 255.0 - np.asarray([0.485, 0.456, 0.406]))
    / np.asarray([0.229, 0.224, 0.225]),
    "minus_one_one": pixels / 127.5 - 1.0,
  }[kind]
  np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(image.denormalize(x, kind), pixels)
  # The pipelines' conversion of the augmentation's (caffe) output.
  caffe = image.normalize(pixels, "caffe")
  np.testing.assert_allclose(
    image.renormalize_from_caffe(caffe, kind), x, rtol=1e-5, atol=1e-5
  )
  with pytest.raises(ValueError, match="unknown normalization 'bgr'"):
    image.normalize(pixels, "bgr")
