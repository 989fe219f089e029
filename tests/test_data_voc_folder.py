"""Tests for ssd_jax/data/voc_folder.py on small folders written here."""

import logging
import os

import numpy as np
import pytest
from PIL import Image

from ssd_jax.data import voc_folder


def _xml(filename, size, objects) -> str:
  h, w = size
  parts = [
    f"<annotation><filename>{filename}</filename>",
    f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>",
  ]
  for name, (x0, y0, x1, y1), difficult in objects:
    parts.append(
      f"<object><name>{name}</name><difficult>{int(difficult)}</difficult>"
      f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
      f"<ymax>{y1}</ymax></bndbox></object>"
    )
  return "".join(parts) + "</annotation>"


def write_voc_folder(root, images, split="trainval", classes=None):
  """Writes a VOC folder.

  Args:
    root: folder to create.
    images: list of (image_id, uint8 [H, W, 3] image, [(name, (xmin, ymin,
      xmax, ymax) 1-based inclusive, difficult)]).
    split: split file name.
    classes: if given, written to classes.txt.
  """
  for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
  for image_id, image, objects in images:
    Image.fromarray(image).save(
      os.path.join(root, "JPEGImages", image_id + ".jpg"), quality=95
    )
    with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
      f.write(_xml(image_id + ".jpg", image.shape[:2], objects))
  with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
    f.write("".join(i + "\n" for i, _, _ in images))
  if classes is not None:
    with open(os.path.join(root, "classes.txt"), "w") as f:
      f.write("\n".join(classes) + "\n")


def _image(h, w, value=90):
  return np.full((h, w, 3), value, np.uint8)


@pytest.fixture
def folder(tmp_path):
  root = str(tmp_path / "VOC")
  write_voc_folder(
    root,
    [
      ("b", _image(40, 60), [("dog", (1, 1, 60, 40), False)]),
      (
        "a",
        _image(30, 20),
        [("person", (5, 3, 14, 22), True), ("cat", (7, 7, 7, 7), False)],
      ),
      ("c", _image(16, 16), []),
    ],
  )
  return root


def test_reads_in_split_order_with_exact_conversion(folder):
  examples = list(voc_folder.read_voc_folder(folder, "trainval"))
  assert [e["image_id"] for e in examples] == ["b", "a", "c"]
  b, a, c = examples
  # Whole image in 1-based inclusive pixels is exactly [0, 1].
  np.testing.assert_allclose(b["boxes"], [[0, 0, 1, 1]], atol=1e-7)
  assert b["labels"].tolist() == [voc_folder.VOC_CLASSES.index("dog") + 1]
  assert b["original_size"] == (40, 60) and b["image"].shape == (40, 60, 3)
  assert b["image"].dtype == np.uint8
  # Hand-worked: W=20, H=30; (5,3,14,22) -> (4/20, 2/30, 14/20, 22/30).
  np.testing.assert_allclose(
    a["boxes"],
    [[4 / 20, 2 / 30, 14 / 20, 22 / 30], [6 / 20, 6 / 30, 7 / 20, 7 / 30]],
    rtol=1e-6,
  )
  assert a["difficult"].tolist() == [True, False]
  assert a["labels"].dtype == np.int32 and a["boxes"].dtype == np.float32
  # The devkit's width (xmax - xmin + 1) survives: a one-pixel box.
  w = (a["boxes"][1, 2] - a["boxes"][1, 0]) * 20
  assert w == pytest.approx(1.0)
  # An empty annotation is still an example, with no boxes.
  assert c["boxes"].shape == (0, 4) and c["labels"].shape == (0,)


def test_class_names_sources(tmp_path):
  root = str(tmp_path / "custom")
  write_voc_folder(
    root,
    [("x", _image(20, 20), [("widget", (2, 2, 10, 10), False)])],
    classes=["gadget", "widget"],
  )
  (ex,) = voc_folder.read_voc_folder(root, "trainval")
  assert ex["labels"].tolist() == [2]
  (ex,) = voc_folder.read_voc_folder(root, "trainval", "widget,gadget")
  assert ex["labels"].tolist() == [1]
  assert voc_folder.folder_class_names(str(tmp_path)) == list(
    voc_folder.VOC_CLASSES
  )
  with open(os.path.join(root, "classes.txt"), "w") as f:
    f.write("a\nb\na\n")
  with pytest.raises(ValueError, match=r"classes.txt: repeated class names"):
    voc_folder.folder_class_names(root)


def test_bad_boxes_clipped_or_dropped_with_log(tmp_path, caplog):
  root = str(tmp_path / "v")
  objects = [
    ("dog", (-5, 3, 10, 50), False),  # Partly outside: clipped.
    ("dog", (10, 5, 4, 9), False),  # Negative width: dropped.
    ("dog", (10, 5, 9, 9), False),  # Zero width (xmax = xmin - 1): dropped.
    ("cat", (30, 30, 40, 40), False),  # Wholly outside 20x20: dropped.
  ]
  write_voc_folder(root, [("img", _image(20, 20), objects)])
  with caplog.at_level(logging.INFO, logger=voc_folder.__name__):
    (ex,) = voc_folder.read_voc_folder(root, "trainval")
  np.testing.assert_allclose(ex["boxes"], [[0, 0.1, 0.5, 1.0]], atol=1e-6)
  assert ex["labels"].tolist() == [voc_folder.VOC_CLASSES.index("dog") + 1]
  text = caplog.text
  assert "img.xml: dropped 3 box(es)" in text
  assert "1 clipped, 3 dropped" in text


def test_image_with_all_boxes_dropped_is_background(tmp_path):
  root = str(tmp_path / "v")
  write_voc_folder(root, [("i", _image(8, 8), [("cat", (5, 5, 2, 2), 0)])])
  (ex,) = voc_folder.read_voc_folder(root, "trainval")
  assert ex["boxes"].shape == (0, 4) and ex["difficult"].shape == (0,)


def _one(tmp_path, objects=(("dog", (1, 1, 4, 4), False),)):
  root = str(tmp_path / "v")
  write_voc_folder(root, [("img", _image(10, 10), list(objects))])
  return root


def test_missing_image_names_the_file(tmp_path):
  root = _one(tmp_path)
  os.remove(os.path.join(root, "JPEGImages", "img.jpg"))
  with pytest.raises(FileNotFoundError, match=r"JPEGImages/img\.jpg"):
    list(voc_folder.read_voc_folder(root, "trainval"))


def test_truncated_jpeg_names_the_file(tmp_path):
  root = _one(tmp_path)
  path = os.path.join(root, "JPEGImages", "img.jpg")
  noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
  Image.fromarray(noise).save(path)
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[: len(data) - 200])  # Header intact, data cut.
  with pytest.raises(ValueError, match=r"img\.jpg: truncated JPEG"):
    voc_folder.index_voc_folder(root, "trainval")


def test_unreadable_image_names_the_file(tmp_path):
  root = _one(tmp_path)
  with open(os.path.join(root, "JPEGImages", "img.jpg"), "wb") as f:
    f.write(b"this is not an image")
  with pytest.raises(ValueError, match=r"img\.jpg: not a readable image"):
    list(voc_folder.read_voc_folder(root, "trainval"))


def test_malformed_xml_names_the_file(tmp_path):
  root = _one(tmp_path)
  with open(os.path.join(root, "Annotations", "img.xml"), "w") as f:
    f.write("<annotation><object>")
  with pytest.raises(ValueError, match=r"img\.xml: malformed XML"):
    list(voc_folder.read_voc_folder(root, "trainval"))


def test_bad_bndbox_names_the_file(tmp_path):
  root = _one(tmp_path)
  with open(os.path.join(root, "Annotations", "img.xml"), "w") as f:
    f.write("<annotation><object><name>dog</name><bndbox><xmin>a</xmin>"
            "</bndbox></object></annotation>")  # fmt: skip
  with pytest.raises(ValueError, match=r"img\.xml: object 0 \(dog\)"):
    list(voc_folder.read_voc_folder(root, "trainval"))


def test_unknown_class_names_file_and_class(tmp_path):
  root = _one(tmp_path, [("unicorn", (1, 1, 4, 4), False)])
  with pytest.raises(ValueError, match=r"img\.xml: .*unknown class 'unicorn'"):
    list(voc_folder.read_voc_folder(root, "trainval"))


def test_missing_split_and_annotation(tmp_path):
  root = _one(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/test\.txt"):
    list(voc_folder.read_voc_folder(root, "test"))
  os.remove(os.path.join(root, "Annotations", "img.xml"))
  with pytest.raises(FileNotFoundError, match=r"Annotations/img\.xml"):
    list(voc_folder.read_voc_folder(root, "trainval"))


def test_devkit_parts_parse_aliases_and_tfds_names():
  assert voc_folder.devkit_parts("07+12") == [
    ("VOC2007", "trainval"),
    ("VOC2012", "trainval"),
  ]
  assert voc_folder.devkit_parts("test07") == [("VOC2007", "test")]
  assert voc_folder.devkit_parts(
    "2007:train+validation, VOC2012:validation"
  ) == [("VOC2007", "trainval"), ("VOC2012", "val")]
  with pytest.raises(ValueError, match="must be YEAR:SPLIT"):
    voc_folder.devkit_parts("trainval")
  with pytest.raises(ValueError, match="empty VOCdevkit split"):
    voc_folder.devkit_parts(" , ")


def test_index_voc_devkit_names_a_missing_year_folder(folder, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"VOC2012 \(data.root must"):
    voc_folder.index_voc_devkit(str(tmp_path), "2012:trainval")
  # Pointing at one year's folder instead of VOCdevkit gets a hint.
  with pytest.raises(FileNotFoundError, match="looks like one year's folder"):
    voc_folder.index_voc_devkit(folder, "07+12")
  os.makedirs(tmp_path / "devkit")
  os.symlink(folder, tmp_path / "devkit" / "VOC2007")
  records = voc_folder.index_voc_devkit(str(tmp_path / "devkit"), "07")
  assert [r.image_id for r in records] == [
    r.image_id for r in voc_folder.index_voc_folder(folder, "trainval")
  ]


def test_tf_table_decoder_gives_the_one_decoders_pixels(tmp_path):
  # The tf.data tables of VOC folders (`dataset.read_image_file`) and
  # `load_image` (read_voc_folder; the decoder prediction uses) agree pixel
  # for pixel on every case: TF decodes plain JPEGs/PNGs, PIL the rest.
  import tensorflow as tf  # Here: the rest of this file is TF-free.
  from test_data_image import save_with_orientation, write_image_cases

  from ssd_jax.data import dataset

  paths = [p for p, _, _ in write_image_cases(tmp_path).values()]
  noise = np.random.default_rng(3).integers(0, 256, (37, 53, 3), np.uint8)
  for name, image, save in [
    ("noise_420.jpg", noise, {"quality": 90}),
    ("noise_444.jpg", noise, {"quality": 90, "subsampling": 0}),
    ("noise_progressive.jpg", noise, {"progressive": True}),
    ("noise_grey.jpg", noise[..., 0], {}),
    ("noise_grey.png", noise[..., 0], {}),
  ]:
    Image.fromarray(image).save(tmp_path / name, **save)
    paths.append(str(tmp_path / name))
  paths.append(str(tmp_path / "rotated.jpg"))  # Read as stored.
  save_with_orientation(Image.fromarray(noise), paths[-1], 6)
  files = tf.data.Dataset.from_tensor_slices(paths)
  decoded = files.map(dataset.read_image_file).as_numpy_iterator()
  for path, got in zip(paths, decoded, strict=True):
    want = voc_folder.load_image(path)
    np.testing.assert_array_equal(got, want, err_msg=path)
  # Why it matters: TF's default JPEG decoding (fast IDCT) is off by a few
  # levels from PIL's.
  jpeg = str(tmp_path / "noise_420.jpg")
  fast = tf.io.decode_image(tf.io.read_file(jpeg)).numpy()
  assert np.any(fast != voc_folder.load_image(jpeg))


def test_exif_orientation_is_counted_not_applied(tmp_path, caplog):
  from test_data_image import save_with_orientation

  root = str(tmp_path / "v")
  write_voc_folder(root, [("img", _image(10, 16), [])])
  path = os.path.join(root, "JPEGImages", "img.jpg")
  save_with_orientation(Image.fromarray(_image(10, 16)), path, 6)
  header = voc_folder.check_image_file(path)
  assert (header.height, header.width, header.orientation) == (10, 16, 6)
  with caplog.at_level(logging.INFO, logger="ssd_jax.data.voc_folder"):
    (record,) = voc_folder.index_voc_folder(root, "trainval")
  assert record.original_size == (10, 16)  # The stored grid.
  assert "1 with an EXIF orientation tag" in caplog.text
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "EXIF orientation" in warnings[0].message
  (example,) = voc_folder.read_voc_folder(root, "trainval")
  assert example["image"].shape == (10, 16, 3)
  # An untagged folder: counted as 0, no warning.
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="ssd_jax.data.voc_folder"):
    voc_folder.index_voc_folder(_one(tmp_path), "trainval")
  assert "0 with an EXIF orientation tag" in caplog.text
  assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_check_image_file_rejects_unsupported_and_truncated_files(tmp_path):
  Image.new("RGB", (4, 4)).save(tmp_path / "x.gif")
  with pytest.raises(ValueError, match=r"x\.gif: unsupported image format"):
    voc_folder.check_image_file(str(tmp_path / "x.gif"))
  with pytest.raises(ValueError, match=r"none\.png: file not found"):
    voc_folder.check_image_file(str(tmp_path / "none.png"))
  with pytest.raises(ValueError, match=r"none\.png: file not found"):
    voc_folder.load_image(str(tmp_path / "none.png"))


def test_tf_table_decoder_leaves_plain_files_to_tensorflow(
  tmp_path, monkeypatch
):
  # Plain JPEGs and 8-bit grey/RGB PNGs never enter Python (fast, parallel
  # training input); the unusual ones go through the one decoder.
  import tensorflow as tf
  from test_data_image import write_image_cases

  from ssd_jax.data import dataset

  cases = write_image_cases(tmp_path)
  load, calls = voc_folder.load_image, []
  monkeypatch.setattr(
    voc_folder, "load_image", lambda p: calls.append(p) or load(p)
  )
  plain = ["rgb.png", "grey.png", "rgb.jpg", "grey.jpg"]
  unusual = ["grey16.png", "palette.png", "rgba.png", "cmyk.jpg", "lab.tif"]
  for names, want in [(plain, []), (unusual, unusual)]:
    paths = [cases[n][0] for n in names]
    decoded = tf.data.Dataset.from_tensor_slices(paths).map(
      dataset.read_image_file
    )
    assert len(list(decoded.as_numpy_iterator())) == len(names)
    assert sorted(os.path.basename(p) for p in calls) == sorted(want)
    calls.clear()


def test_annotation_xml_reads_back(tmp_path):
  # The writer of generated datasets against the reader: boxes (1-based
  # inclusive pixels), flags, size and depth survive the round trip.
  root = tmp_path / "own"
  for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
    (root / sub).mkdir(parents=True)
  Image.new("L", (40, 30), 128).save(root / "JPEGImages" / "a.jpg")
  objects = [
    ("cat", (1, 1, 40, 30), False, True),
    ("dog", (5, 6, 20, 16), True, False),
  ]
  (root / "Annotations" / "a.xml").write_text(
    voc_folder.annotation_xml("a", (30, 40), objects, depth=1)
  )
  (root / "ImageSets" / "Main" / "test.txt").write_text("a\n")
  (record,) = list(
    voc_folder.read_voc_folder(str(root), "test", ["cat", "dog"])
  )
  np.testing.assert_allclose(
    record["boxes"],
    [[0, 0, 1, 1], [4 / 40, 5 / 30, 20 / 40, 16 / 30]],
    atol=1e-6,
  )
  assert list(record["labels"]) == [1, 2]
  assert list(record["difficult"]) == [False, True]
  assert tuple(record["original_size"]) == (30, 40)
