"""Fuzz suite (GitHub issue 18, item 4): random and mutated inputs to every
reader, to the public box functions and to the writers.

One file for the whole suite (the one test file not named after a module).
Property-based tests (hypothesis) feed:

- the file readers, mutated copies of tiny valid files written here with
  `tests/minidata.py`: byte flips, truncations at random offsets, spliced,
  random and empty files, and structured mutations (deleted or duplicated
  XML tags, coordinates that are non-numeric, huge, negative, NaN or inf,
  unknown class names, other encodings; JSON fields replaced by values of
  every type, deleted keys, NaN/inf/negative/huge bboxes, duplicated ids).
  Readers: `voc_folder.index_voc_folder` / `read_voc_folder` /
  `index_voc_devkit` / `read_class_names` / `check_image_file`,
  `coco_folder.index_coco_folder`, `image.decode_image_file`,
  `weights.io.load_state_dict` / `load_params`. Property: a valid result
  (boxes float32, finite, in [0, 1], x_min < x_max and y_min < y_max;
  labels in 1..C; one flag per box; positive image sizes; one record per
  image) or a ValueError / OSError whose message names the file;
- the public box functions, random shapes, dtypes and values: `boxes`
  (format conversions, area, elementwise and pairwise IoU, encode/decode;
  numpy and jax.numpy), `default_boxes.default_boxes` / `paper_sizes`
  (valid and invalid configs), `matching.match` / `match_batch` (G = 0,
  padding only, zero-area and inverted boxes, boxes outside [0, 1]),
  `postprocess.nms` / `batched_nms` / `decode_detections` (tied scores,
  nothing above the threshold, P = 0), `evaluation.evaluate_voc` /
  `evaluate_coco` / `precision_recall` (empty images, zero-area and
  inverted boxes). Properties: documented shapes and dtypes, finite outputs
  for finite inputs, IoU in [0, 1], NMS output a subset with no same-class
  pair above the threshold (and every dropped box suppressed by a kept
  one), and a ValueError naming the function and argument for invalid
  shapes and values;
- the writers, an error in the middle of a write
  (`evaluator.write_eval_results`, `evaluator.write_json` (predict's),
  `weights.io.save_params`): no partial file at the destination.

Bugs the fuzz found were fixed where they were, each with a regression
test in its module's own test file (or here, for the readers' and writers'
contracts: `test_voc_xml_size_not_positive_names_the_xml`, ...); the fuzz
tests themselves still steer around inputs those tests cover (their
comments say where).

Settings (`_fuzz`): every test has a bounded `max_examples` and a
per-example `deadline` (a hang fails the example rather than stalling the
suite; deadlines are generous because the machine is shared), with
`derandomize=True` and no example database, so every run, CI included,
draws the same examples (conftest's "ci" profile says the same for the
other property tests). The jax
functions see shapes from small fixed sets and run jitted (`_box_fn`,
`_MATCH`), one compile per shape rather than one per operation and shape,
so compilation stays out of the loop. The whole file runs in 25-35 s on
two CPU cores.
"""

import contextlib
import datetime
import functools
import io as pyio
import json
import math
import os
import re
import shutil
import tempfile
from inspect import signature
from xml.sax.saxutils import escape

import jax
import jax.numpy as jnp
import minidata
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from ssd_jax import boxes as box_lib
from ssd_jax import default_boxes as db
from ssd_jax import evaluation, evaluator, matching, postprocess, predict
from ssd_jax.data import coco_folder, voc_folder
from ssd_jax.data import image as image_lib
from ssd_jax.weights import io as weights_io


def _fuzz(max_examples: int, deadline_s: float) -> settings:
  """The suite's settings: bounded, reproducible, no example database."""
  return settings(
    max_examples=max_examples,
    deadline=datetime.timedelta(seconds=deadline_s),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
  )


# --- expected failures ----------------------------------------------------


def _check_error(error: BaseException, *paths: str) -> None:
  """A reader's acceptable failure: ValueError / OSError naming a path."""
  assert isinstance(error, ValueError | OSError), (
    f"{type(error).__name__} escaped: {error}"
  )
  assert any(p in str(error) for p in paths), (
    f"{type(error).__name__} names none of {paths}: {error}"
  )


def _call(fn, *paths: str):
  """`fn()`, or None when it raised an error `_check_error` accepts."""
  try:
    return fn()
  except Exception as error:  # Sorted out by _check_error.
    _check_error(error, *paths)
    return None


def _call_error(fn) -> BaseException:
  """The exception `fn()` raises (fails the test when it returns)."""
  try:
    fn()
  except Exception as error:
    return error
  raise AssertionError("no exception")


def _check_records(records, num_classes: int) -> None:
  """The properties every VOC / COCO record must have."""
  for r in records:
    boxes = r.boxes
    assert boxes.dtype == np.float32 and boxes.shape[1:] == (4,)
    assert np.all(np.isfinite(boxes)) and np.all((0 <= boxes) & (boxes <= 1))
    assert np.all(boxes[:, 0] < boxes[:, 2])
    assert np.all(boxes[:, 1] < boxes[:, 3])
    g = len(boxes)
    assert r.labels.dtype == np.int32 and r.labels.shape == (g,)
    assert np.all((1 <= r.labels) & (r.labels <= num_classes))
    assert r.difficult.dtype == bool and r.difficult.shape == (g,)
    h, w = r.original_size
    assert type(h) is int and type(w) is int and h >= 1 and w >= 1
    assert os.path.isfile(r.image_path)


# --- mutations --------------------------------------------------------------


@st.composite
def _byte_mutation(draw, data: bytes, keep: int = 0) -> bytes:
  """`data` with bytes flipped, cut, spliced, replaced or removed.

  Args:
    data: the valid file.
    keep: leading bytes left intact (e.g. an image's header).
  """
  kind = draw(st.sampled_from(("flip", "truncate", "splice", "garbage")))
  head, body = data[:keep], data[keep:]
  if kind == "flip" and body:
    out = bytearray(body)
    for _ in range(draw(st.integers(1, 6))):
      out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
    return head + bytes(out)
  if kind == "truncate":
    return head + body[: draw(st.integers(0, max(len(body) - 1, 0)))]
  if kind == "splice":
    i = draw(st.integers(0, len(body)))
    j = draw(st.integers(i, min(len(body), i + 64)))
    return head + body[:i] + draw(st.binary(max_size=32)) + body[j:]
  return head + draw(st.binary(max_size=200 if keep else 64))


_BAD_NUMBERS = (
  "", "abc", "nan", "NaN", "inf", "-inf", "1e400", "-1e400", "1e30", "-5",
  "0", "0.5", "3.7e2", " 12 ", "0x10", "\u0661\u0662", "1,5", "12abc",
)  # fmt: skip
_XML_TAGS = (
  "annotation", "filename", "size", "width", "height", "object", "name",
  "difficult", "bndbox", "xmin", "ymin", "xmax", "ymax",
)  # fmt: skip


@st.composite
def _xml_mutation(draw, text: str, keep_size: bool = False) -> bytes:
  """A VOC XML with a tag deleted, duplicated or given another value, an
  object renamed, another encoding, or raw bytes mutated.

  Args:
    text: the valid XML.
    keep_size: leave `<size>` (and everything before it) intact.
  """
  start = text.index("</size>") + len("</size>") if keep_size else 0
  head, text = text[:start], text[start:]
  kind = draw(
    st.sampled_from(("delete", "duplicate", "value", "class", "bytes"))
  )
  tags = [t for t in _XML_TAGS if f"<{t}>" in text]
  if kind in ("delete", "duplicate", "value") and tags:
    tag = draw(st.sampled_from(tags))
    found = list(re.finditer(rf"<{tag}>.*?</{tag}>", text, re.S))
    m = draw(st.sampled_from(found))
    if kind == "delete":
      text = text[: m.start()] + text[m.end() :]
    elif kind == "duplicate":
      text = text[: m.end()] + m.group() + text[m.end() :]
    else:
      value = draw(st.sampled_from(_BAD_NUMBERS) | st.text(max_size=6))
      text = (
        f"{text[: m.start()]}<{tag}>{escape(value)}</{tag}>{text[m.end() :]}"
      )
    return (head + text).encode()
  if kind == "class":
    name = draw(st.sampled_from(("unicorn", "DOG", " cat ", "", "d\u00f6g")))
    text = re.sub(r"<name>.*?</name>", f"<name>{name}</name>", text, count=1)
    encoding = draw(st.sampled_from(("utf-8", "latin-1", "utf-16")))
    return (head + text).encode(encoding)
  return head.encode() + draw(_byte_mutation(text.encode()))


_JSON_LEAVES = (
  st.none()
  | st.booleans()
  | st.integers(-(2**70), 2**70)
  | st.sampled_from((0, 1, -1, 2**63, 10**30))
  | st.floats(allow_nan=True, allow_infinity=True)
  | st.text(max_size=6)
)
_JSON_VALUES = st.recursive(
  _JSON_LEAVES,
  lambda kids: (
    st.lists(kids, max_size=4)
    | st.dictionaries(st.text(max_size=4), kids, max_size=3)
  ),
  max_leaves=6,
)
_BBOX_NUMBERS = st.sampled_from(
  (math.nan, math.inf, -math.inf, -5.0, 0.0, 1e308, -1e308, 1e-300, 3)
) | st.floats(-100, 200)


@st.composite
def _json_mutation(draw, data: dict) -> bytes:
  """A COCO json with a field set to any value, deleted or a bad bbox; an
  element duplicated; a top-level list replaced; or raw bytes mutated."""
  data = json.loads(json.dumps(data))  # A deep copy.
  kind = draw(
    st.sampled_from(
      ("set", "delete", "bbox", "duplicate", "top", "bytes", "bytes")
    )
  )
  key = draw(st.sampled_from(("images", "annotations", "annotations")))
  items = data[key]
  if kind == "top":
    data[draw(st.sampled_from(("images", "annotations", "categories")))] = draw(
      _JSON_VALUES
    )
  elif kind == "duplicate" and items:
    items.append(dict(draw(st.sampled_from(items))))
  elif kind in ("set", "delete") and items:
    item = draw(st.sampled_from(items))
    field = draw(st.sampled_from(sorted(item) + ["id", "iscrowd"]))
    if kind == "set":
      item[field] = draw(_JSON_VALUES)
    else:
      item.pop(field, None)
  elif kind == "bbox" and data["annotations"]:
    item = draw(st.sampled_from(data["annotations"]))
    item["bbox"] = draw(st.lists(_BBOX_NUMBERS, min_size=3, max_size=5))
  text = json.dumps(data).encode()  # NaN and Infinity literals included.
  if kind == "bytes":
    return draw(_byte_mutation(text))
  return text


@contextlib.contextmanager
def _replaced(path: str, data: bytes):
  """`path` holds `data` inside the block, its own bytes again after it."""
  with open(path, "rb") as f:
    original = f.read()
  with open(path, "wb") as f:
    f.write(data)
  try:
    yield
  finally:
    with open(path, "wb") as f:
      f.write(original)


# --- VOC folders ------------------------------------------------------------


@pytest.fixture(scope="module")
def devkit(tmp_path_factory):
  """(VOCdevkit root, VOC2007 folder, one annotation's path and text)."""
  root = str(tmp_path_factory.mktemp("fuzz_voc") / "VOCdevkit")
  minidata.write_vocdevkit(root, years=("2007",), num_images=2, num_test=1)
  folder = os.path.join(root, "VOC2007")
  with open(os.path.join(folder, "ImageSets", "Main", "trainval.txt")) as f:
    first = f.read().split()[0]
  xml = os.path.join(folder, "Annotations", f"{first}.xml")
  with open(xml, encoding="utf-8") as f:
    return root, folder, xml, f.read()


_VOC_CLASSES = len(voc_folder.VOC_CLASSES)


@_fuzz(max_examples=100, deadline_s=10)
@given(data=st.data())
def test_voc_readers_on_mutated_annotations(devkit, data):
  root, folder, xml, text = devkit
  mutated = data.draw(_xml_mutation(text), label="xml")
  with _replaced(xml, mutated):
    records = _call(
      lambda: voc_folder.index_voc_folder(folder, "trainval"), folder
    )
    if records is not None:
      _check_records(records, _VOC_CLASSES)
      assert len(records) == 2
    examples = _call(
      lambda: list(voc_folder.read_voc_folder(folder, "trainval")), folder
    )
    assert (examples is None) == (records is None)
    for example, record in zip(examples or [], records or [], strict=True):
      assert example["image"].dtype == np.uint8
      assert example["image"].shape == (*record.original_size, 3)
      np.testing.assert_array_equal(example["boxes"], record.boxes)
    from_devkit = _call(
      lambda: voc_folder.index_voc_devkit(root, "2007:trainval"), folder
    )
    assert (from_devkit is None) == (records is None)


@_fuzz(max_examples=40, deadline_s=10)
@given(data=st.data())
def test_voc_index_trusting_xml_size_on_mutated_annotations(devkit, data):
  # `<size>` itself is left intact: mutating it finds the bug of
  # test_voc_xml_size_not_positive_names_the_xml.
  _, folder, xml, text = devkit
  mutated = data.draw(_xml_mutation(text, keep_size=True), label="xml")
  with _replaced(xml, mutated):
    records = _call(
      lambda: voc_folder.index_voc_folder(
        folder, "trainval", check_images=False
      ),
      folder,
    )
  if records is not None:
    _check_records(records, _VOC_CLASSES)


@_fuzz(max_examples=30, deadline_s=10)
@given(data=st.data())
def test_voc_split_file_any_text(devkit, data):
  _, folder, _, _ = devkit
  split = os.path.join(folder, "ImageSets", "Main", "trainval.txt")
  with open(split, encoding="utf-8") as f:
    ids = f.read().split()
  tokens = data.draw(
    st.lists(st.sampled_from(ids) | st.text(max_size=8), max_size=4)
  )
  seps = st.sampled_from(("\n", "\r\n", "\r", " 1\n", "\t-1\n", "\n\n"))
  # UTF-8 text only: other bytes are test_voc_split_file_not_utf8_names_it.
  text = "".join(token + data.draw(seps) for token in tokens)
  with _replaced(split, text.encode()):
    records = _call(
      lambda: voc_folder.index_voc_folder(folder, "trainval"), folder
    )
  if records is not None:
    _check_records(records, _VOC_CLASSES)
    # The split file read as text: universal newlines, first token a line.
    lines = pyio.StringIO(text, newline=None)
    want = [line.split()[0] for line in lines if line.strip()]
    assert [r.image_id for r in records] == want


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> str:
  """A folder for the files one example writes (overwritten by the next)."""
  return str(tmp_path_factory.mktemp("fuzz_scratch"))


@_fuzz(max_examples=30, deadline_s=5)
@given(text=st.text(max_size=60))
def test_read_class_names_any_text(scratch, text):
  # UTF-8 text only: other bytes are test_class_names_not_utf8_names_the_file.
  path = os.path.join(scratch, "classes.txt")
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  names = _call(lambda: voc_folder.read_class_names(path), path)
  if names is not None:
    assert names and len(set(names)) == len(names)
    assert all(n and n == n.strip() for n in names)


@pytest.mark.parametrize("width", ["0", "-4"])
def test_voc_xml_size_not_positive_names_the_xml(devkit, width):
  _, folder, xml, text = devkit
  bad = re.sub(r"<width>\d+</width>", f"<width>{width}</width>", text)
  with _replaced(xml, bad.encode()):
    error = _call_error(
      lambda: voc_folder.index_voc_folder(
        folder, "trainval", check_images=False
      )
    )
  _check_error(error, xml)


def test_voc_split_file_not_utf8_names_it(devkit):
  _, folder, _, _ = devkit
  split = os.path.join(folder, "ImageSets", "Main", "trainval.txt")
  with _replaced(split, b"\xff\xfe000005\n"):
    error = _call_error(lambda: voc_folder.index_voc_folder(folder, "trainval"))
  _check_error(error, split)


def test_class_names_not_utf8_names_the_file(tmp_path):
  path = str(tmp_path / "classes.txt")
  with open(path, "wb") as f:
    f.write(b"dog\n\xe9l\xe9phant\n")
  _check_error(_call_error(lambda: voc_folder.read_class_names(path)), path)


# --- COCO folders -----------------------------------------------------------


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
  """(COCO root, the val2017 json's path, its content)."""
  root = str(tmp_path_factory.mktemp("fuzz_coco"))
  minidata.write_coco_folder(root, splits=("val2017",), num_images=3)
  path = coco_folder.coco_annotation_path(root, "val2017")
  with open(path, encoding="utf-8") as f:
    return root, path, json.load(f)


@_fuzz(max_examples=200, deadline_s=10)
@given(data=st.data(), training=st.booleans())
def test_coco_index_on_mutated_json(coco, data, training):
  root, path, content = coco
  mutated = data.draw(_json_mutation(content), label="json")
  with _replaced(path, mutated):
    records = _call(
      lambda: coco_folder.index_coco_folder(root, "val2017", training), path
    )
    if records is None:
      return
    parsed = json.loads(mutated)
  _check_records(records, len(coco_folder.COCO_CLASSES))
  assert len(records) == len(parsed["images"])  # One record per image.
  ids = [int(r.image_id) for r in records]
  assert ids == sorted(ids) and len(set(ids)) == len(ids)
  for r in records:
    assert r.is_crowd.dtype == bool and r.is_crowd.shape == r.labels.shape
    np.testing.assert_array_equal(r.difficult, r.is_crowd)
    assert not (training and r.is_crowd.any())


# --- image files ------------------------------------------------------------


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
  """{format: the bytes of a tiny valid file} and a scratch path."""
  tmp = tmp_path_factory.mktemp("fuzz_images")
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (12, 16, 3), np.uint8)
  files = {}
  for fmt, mode in (("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "L")):
    out = pyio.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, format=fmt)
    files[f"{fmt}-{mode}"] = out.getvalue()
  return files, str(tmp / "image")


@_fuzz(max_examples=150, deadline_s=10)
@given(data=st.data())
def test_image_decoder_on_mutated_files(image_files, data):
  files, path = image_files
  original = files[data.draw(st.sampled_from(sorted(files)), label="file")]
  # Keep the header (signature, sizes) intact some of the time: a valid
  # header with a garbage body.
  keep = data.draw(st.sampled_from((0, 0, 16, 64)), label="keep")
  mutated = data.draw(_byte_mutation(original, keep), label="bytes")
  with open(path, "wb") as f:
    f.write(mutated)
  decoded = _call(
    lambda: image_lib.decode_image_file(path, apply_exif=False), path
  )
  if decoded is not None:
    pixels = decoded.pixels
    assert pixels.dtype == np.uint8 and pixels.ndim == 3
    assert pixels.shape[2] == 3 and min(pixels.shape[:2]) >= 1
    assert pixels.shape[:2] == decoded.original_size
  small = _call(
    lambda: image_lib.decode_image_file(path, apply_exif=True, max_side=8),
    path,
  )
  if small is not None:
    assert small.pixels.dtype == np.uint8 and max(small.pixels.shape[:2]) <= 8
  header = _call(lambda: voc_folder.check_image_file(path), path)
  if header is not None:
    assert header.height >= 1 and header.width >= 1
    if decoded is not None:
      assert (header.height, header.width) == decoded.original_size


# --- weight files -----------------------------------------------------------


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
  """(a tiny .npz's bytes, a params checkpoint directory, scratch folder)."""
  tmp = tmp_path_factory.mktemp("fuzz_weights")
  out = pyio.BytesIO()
  np.savez(out, w=np.ones((3, 2), np.float32), b=np.arange(4))
  checkpoint = str(tmp / "params")
  weights_io.save_params(checkpoint, {"dense": {"kernel": np.ones((2, 3))}})
  return out.getvalue(), checkpoint, str(tmp)


@_fuzz(max_examples=40, deadline_s=10)
@given(data=st.data())
def test_load_state_dict_on_mutated_npz(weight_files, data):
  npz, _, tmp = weight_files
  path = os.path.join(tmp, "state.npz")
  with open(path, "wb") as f:
    f.write(data.draw(_byte_mutation(npz)))
  state = _call(lambda: weights_io.load_state_dict(path), path)
  if state is not None:
    assert all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()
    )


@_fuzz(max_examples=12, deadline_s=20)
@given(data=st.data())
def test_load_params_on_a_mutated_checkpoint_file(weight_files, data):
  _, checkpoint, tmp = weight_files
  files = sorted(
    os.path.relpath(os.path.join(d, f), checkpoint)
    for d, _, names in os.walk(checkpoint)
    for f in names
  )
  target = data.draw(st.sampled_from(files), label="file")
  with open(os.path.join(checkpoint, target), "rb") as f:
    original = f.read()
  copy = tempfile.mkdtemp(dir=tmp)
  try:
    path = os.path.join(copy, "params")
    shutil.copytree(checkpoint, path)
    with open(os.path.join(path, target), "wb") as f:
      f.write(data.draw(_byte_mutation(original), label="bytes"))
    params = _call(lambda: weights_io.load_params(path), path)
  finally:
    shutil.rmtree(copy)
  if params is not None:
    assert isinstance(params, dict)


# --- box functions ----------------------------------------------------------

_XPS = {"numpy": np, "jax.numpy": jnp}
_FLOATS = (np.float16, np.float32, np.float64)


def _out_dtype(xp, dtype) -> np.dtype:
  """The dtype a box function returns: numpy keeps it; jax without x64
  turns float64 into float32."""
  return np.dtype(dtype) if xp is np else jnp.asarray(np.zeros(1, dtype)).dtype


@functools.cache
def _box_fn(name: str, xp: str):
  """`boxes.<name>` on numpy, or on jax.numpy jitted: one compile per input
  shape, where eager jax.numpy compiles every operation for every shape."""
  fn = getattr(box_lib, name)
  if xp == "numpy":
    return functools.partial(fn, xp=np)
  static = [
    a for a in ("inclusive", "variances") if a in signature(fn).parameters
  ]
  return jax.jit(functools.partial(fn, xp=jnp), static_argnames=static)


@st.composite
def _box_arrays(draw, shape, dtype, low=-2.0, high=3.0):
  """Arrays of `shape` and `dtype`: random values plus ties and 0/1."""
  width = np.finfo(dtype).bits
  return draw(
    hnp.arrays(
      dtype,
      shape,
      elements=st.floats(low, high, width=width)
      | st.sampled_from((0.0, 0.5, 1.0)),
    )
  )


@_fuzz(max_examples=30, deadline_s=10)
@given(
  data=st.data(),
  xp=st.sampled_from(sorted(_XPS)),
  dtype=st.sampled_from(_FLOATS),
  shape=st.sampled_from(((4,), (0, 4), (1, 4), (5, 4), (2, 3, 4))),
)
def test_box_formats_and_area_shapes_dtypes_and_values(data, xp, dtype, shape):
  boxes = data.draw(_box_arrays(shape, dtype), label="boxes")
  out = _out_dtype(_XPS[xp], dtype)
  tol = {np.float16: 1e-2, np.float32: 1e-5, np.float64: 1e-12}[out.type]
  corners = np.asarray(_box_fn("center_to_corners", xp)(boxes))
  centre = np.asarray(_box_fn("corners_to_center", xp)(boxes))
  for got in (corners, centre):
    assert got.shape == shape and got.dtype == out
    assert np.all(np.isfinite(got))
  back = np.asarray(_box_fn("corners_to_center", xp)(corners))
  np.testing.assert_allclose(back, boxes.astype(out), atol=4 * tol)
  for inclusive in (False, True):
    area = np.asarray(_box_fn("box_area", xp)(boxes, inclusive=inclusive))
    assert area.shape == shape[:-1] and area.dtype == out
    assert np.all(np.isfinite(area)) and np.all(area >= 0)


@_fuzz(max_examples=30, deadline_s=10)
@given(
  data=st.data(),
  xp=st.sampled_from(sorted(_XPS)),
  dtype=st.sampled_from(_FLOATS),
  n=st.sampled_from((0, 1, 4)),
  m=st.sampled_from((0, 3)),
  inclusive=st.booleans(),
)
def test_iou_in_unit_interval_symmetric_and_one_on_itself(
  data, xp, dtype, n, m, inclusive
):
  # float16 pixel boxes overflow from 256 px (module docstring of boxes).
  high = 50.0 if dtype == np.float16 else 1e4
  a = data.draw(_box_arrays((n, 4), dtype, -high, high), label="a")
  b = data.draw(_box_arrays((m, 4), dtype, -high, high), label="b")
  iou = np.asarray(_box_fn("pairwise_iou", xp)(a, b, inclusive=inclusive))
  assert iou.shape == (n, m) and iou.dtype == _out_dtype(_XPS[xp], dtype)
  assert np.all(np.isfinite(iou)) and np.all((0 <= iou) & (iou <= 1))
  flipped = _box_fn("pairwise_iou", xp)(b, a, inclusive=inclusive)
  np.testing.assert_array_equal(iou, np.asarray(flipped).T)
  own = np.asarray(_box_fn("elementwise_iou", xp)(a, a, inclusive=inclusive))
  has_area = np.asarray(_box_fn("box_area", xp)(a, inclusive=inclusive)) > 0
  np.testing.assert_array_equal(own, np.where(has_area, 1.0, 0.0))
  if n and m:  # Broadcasting pairs [n, 1, 4] x [m, 4] is pairwise_iou.
    pairs = _box_fn("elementwise_iou", xp)(a[:, None], b, inclusive=inclusive)
    np.testing.assert_array_equal(np.asarray(pairs), iou)


@_fuzz(max_examples=40, deadline_s=10)
@given(
  data=st.data(),
  xp=st.sampled_from(sorted(_XPS)),
  dtype=st.sampled_from(_FLOATS),
  p=st.sampled_from((0, 1, 6)),
  variances=st.sampled_from(((0.1, 0.2), (1.0, 1.0), (0.5, 0.05))),
)
def test_encode_decode_finite_and_inverse(data, xp, dtype, p, variances):
  width = np.finfo(dtype).bits
  centres = data.draw(_box_arrays((p, 2), dtype, 0.0, 1.0), label="centres")
  sizes = data.draw(
    hnp.arrays(dtype, (p, 2), elements=st.floats(0.03125, 1.0, width=width)),
    label="sizes",
  )
  priors = np.concatenate([centres, sizes], -1)
  boxes = data.draw(_box_arrays((p, 4), dtype, -0.5, 1.5), label="boxes")
  deltas = np.asarray(_box_fn("encode", xp)(boxes, priors, variances=variances))
  assert deltas.shape == (p, 4) and deltas.dtype == _out_dtype(_XPS[xp], dtype)
  assert np.all(np.isfinite(deltas))
  decoded = np.asarray(
    _box_fn("decode", xp)(deltas, priors, variances=variances)
  )
  assert decoded.shape == (p, 4) and np.all(np.isfinite(decoded))
  # Exact inverse where the box has a size and is within the size clamp.
  wh = boxes[:, 2:] - boxes[:, :2]
  ratio = wh.astype(np.float64) / sizes
  ok = np.all((wh > 0.05) & (ratio < 50), -1)
  tol = 5e-2 if deltas.dtype == np.float16 else 1e-4
  np.testing.assert_allclose(decoded[ok], boxes[ok], atol=tol, rtol=tol)
  # Any finite offsets, huge ones included, decode to finite boxes.
  wild = data.draw(_box_arrays((p, 4), dtype, -1e4, 1e4), label="wild")
  assert np.all(np.isfinite(np.asarray(_box_fn("decode", xp)(wild, priors))))


def _shapes(valid):
  """Array shapes of rank 0..3 (sides 0..5) for which `valid` is False."""
  shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
  return shapes.filter(lambda shape: not valid(shape))


@_fuzz(max_examples=40, deadline_s=10)
@given(
  xp=st.sampled_from(sorted(_XPS)),
  shape=_shapes(lambda s: s[-1:] == (4,)),
)
def test_box_functions_name_a_bad_argument_shape(xp, shape):
  xp = _XPS[xp]
  bad, good = np.zeros(shape, np.float32), np.zeros((2, 4), np.float32)
  priors = np.full((2, 4), 0.5, np.float32)
  calls = (  # (error, function, arguments)
    (r"center_to_corners: boxes must be \[\.\.\.", "center_to_corners", (bad,)),
    ("corners_to_center: boxes must be", "corners_to_center", (bad,)),
    ("box_area: boxes must be", "box_area", (bad,)),
    ("elementwise_iou: boxes2 must be", "elementwise_iou", (good, bad)),
    (r"pairwise_iou: boxes1 must be \[N, 4\]", "pairwise_iou", (bad, good)),
    ("encode: boxes must be", "encode", (bad, priors)),
    (r"encode: priors must be \[P, 4\]", "encode", (good, bad)),
    ("decode: deltas must be", "decode", (bad, priors)),
    (r"decode: priors must be \[P, 4\]", "decode", (good, bad)),
  )  # fmt: skip
  for match, name, args in calls:
    with pytest.raises(ValueError, match=match):
      getattr(box_lib, name)(*args, xp=xp)


@_fuzz(max_examples=30, deadline_s=10)
@given(
  xp=st.sampled_from(sorted(_XPS)),
  lead=st.sampled_from(((2,), (2, 3), (1, 5))),
  p=st.sampled_from((3, 4)),
)
def test_box_functions_name_shapes_that_do_not_broadcast(xp, lead, p):
  xp = _XPS[xp]
  if lead[-1] == p:
    lead = (*lead[:-1], p + 1)
  boxes, priors = np.full((*lead, 4), 0.5), np.full((p, 4), 0.5)
  with pytest.raises(ValueError, match="elementwise_iou: the leading axes"):
    box_lib.elementwise_iou(boxes, priors, xp=xp)
  with pytest.raises(ValueError, match="encode: the leading axes of boxes"):
    box_lib.encode(boxes, priors, xp=xp)
  with pytest.raises(ValueError, match="decode: the leading axes of deltas"):
    box_lib.decode(boxes, priors, xp=xp)
  for variances in ((0.1,), (0.1, 0.2, 0.3), 0.1):
    for fn in (box_lib.encode, box_lib.decode):
      with pytest.raises(ValueError, match="variances must be two numbers"):
        fn(priors, priors, variances, xp=xp)


# --- default boxes ----------------------------------------------------------

_POSITIVE = st.floats(0.5, 600)


@st.composite
def _prior_configs(draw) -> dict:
  """Valid `default_boxes` keyword arguments with 0..3 small maps."""
  maps = draw(st.integers(0, 3))
  per_map = lambda s: draw(st.lists(s, min_size=maps, max_size=maps))
  return {
    "image_size": draw(st.sampled_from((32, 300.0, 512))),
    "feature_sizes": tuple(per_map(st.integers(1, 4))),
    "steps": tuple(per_map(_POSITIVE)),
    "min_sizes": tuple(per_map(_POSITIVE)),
    "max_sizes": tuple(per_map(_POSITIVE)),
    "aspect_ratios": tuple(
      tuple(r) for r in per_map(st.lists(st.floats(0.2, 5), max_size=2))
    ),
    "clip": draw(st.booleans()),
  }


@_fuzz(max_examples=60, deadline_s=5)
@given(config=_prior_configs())
def test_default_boxes_valid_configs(config):
  priors = db.default_boxes(**config)
  count = sum(
    f * f * db.boxes_per_location(r)
    for f, r in zip(
      config["feature_sizes"], config["aspect_ratios"], strict=True
    )
  )
  assert priors.shape == (count, 4) and priors.dtype == np.float32
  assert np.all(np.isfinite(priors))
  if config["clip"]:
    assert np.all((0 <= priors) & (priors <= 1))
  else:
    assert np.all(priors[:, 2:] > 0)


# What no size, step or ratio may be; a feature size may not be 2.5 either.
_NOT_POSITIVE = (0, -1, -2.5, math.nan, math.inf, "3", None)
_ERRORS = {
  "image_size": "image_size must be positive finite",
  "feature_sizes": "feature_sizes must be positive integers",
  "steps": "steps must be positive finite",
  "min_sizes": "min_sizes must be positive finite",
  "max_sizes": "max_sizes must be positive finite",
  "aspect_ratios": "aspect ratios must be positive finite",
  "length": "one entry per map",
}


@_fuzz(max_examples=60, deadline_s=5)
@given(
  config=_prior_configs().filter(lambda c: c["steps"]),
  field=st.sampled_from(sorted(_ERRORS)),
  data=st.data(),
)
def test_default_boxes_invalid_configs_name_the_field(config, field, data):
  extra = (2.5,) if field == "feature_sizes" else ()
  value = data.draw(st.sampled_from(_NOT_POSITIVE + extra), label="value")
  k = data.draw(st.integers(0, len(config["steps"]) - 1), label="map")
  if field == "image_size":
    config[field] = value
  elif field == "length":
    config["steps"] += (8.0,)
  else:
    entry = (value,) if field == "aspect_ratios" else value
    config[field] = config[field][:k] + (entry,) + config[field][k + 1 :]
  with pytest.raises(ValueError, match=_ERRORS[field]):
    db.default_boxes(**config)


@_fuzz(max_examples=60, deadline_s=5)
@given(
  image_size=st.sampled_from((300, 0, -1, math.nan, math.inf, 1e-3)),
  num_maps=st.integers(0, 8),
  s_min=st.sampled_from((0.2, 0.0, -0.1, 0.95, math.nan, math.inf)),
  s_max=st.sampled_from((0.9, 0.1, math.nan, math.inf, 2.0)),
  first=st.sampled_from((0.1, None, 0.0, -0.1, math.nan)),
  caffe=st.booleans(),
)
def test_paper_sizes_positive_finite_or_value_error(
  image_size, num_maps, s_min, s_max, first, caffe
):
  try:
    mins, maxs = db.paper_sizes(
      image_size, num_maps, s_min, s_max, first, caffe
    )
  except ValueError:
    return
  assert len(mins) == len(maxs) == num_maps
  assert all(math.isfinite(v) and v > 0 for v in mins + maxs)


# --- matching ---------------------------------------------------------------

_PRIORS = db.default_boxes(
  64, (4, 2), (16, 32), (10, 30), (30, 50), ((2,), (2, 3))
)
_MATCH = jax.jit(matching.match)  # One compile per number of boxes M.
_MATCH_BATCH = jax.jit(matching.match_batch)


@st.composite
def _ground_truth(draw, num_boxes: int):
  """[M, 4] float32 corners in [-0.5, 1.5] (zero-area and inverted boxes
  included) and [M] int32 labels 0..5 (0 = padding)."""
  coords = st.floats(-0.5, 1.5, width=32) | st.sampled_from((0.0, 0.5, 1.0))
  boxes = draw(hnp.arrays(np.float32, (num_boxes, 4), elements=coords))
  labels = draw(hnp.arrays(np.int32, (num_boxes,), elements=st.integers(0, 5)))
  return boxes, labels


@_fuzz(max_examples=24, deadline_s=20)
@given(
  data=st.data(),
  num_boxes=st.sampled_from((0, 1, 6)),
  threshold=st.sampled_from((0.0, 0.5, 0.9)),
)
def test_match_targets_finite_and_from_real_boxes(data, num_boxes, threshold):
  boxes, labels = data.draw(_ground_truth(num_boxes), label="gt")
  loc, cls = jax.device_get(_MATCH(boxes, labels, _PRIORS, threshold))
  p = len(_PRIORS)
  assert loc.shape == (p, 4) and loc.dtype == np.float32
  assert cls.shape == (p,) and cls.dtype == np.int32
  assert np.all(np.isfinite(loc))
  assert set(np.unique(cls)) <= {0} | set(labels[labels > 0].tolist())
  np.testing.assert_array_equal(loc[cls == 0], 0.0)
  real = labels > 0
  if not real.any():
    assert not cls.any()
  else:  # Rule 2: a prior with a real box at IoU >= threshold is positive.
    corners = box_lib.center_to_corners(_PRIORS, xp=np)
    iou = box_lib.pairwise_iou(boxes[real], corners, xp=np)  # [G, P]
    # (A margin: XLA may round the IoU differently from numpy.)
    assert np.all(cls[iou.max(0) >= max(threshold + 1e-5, 1e-5)] > 0)
  # match_batch of a batch of two copies is match, row by row.
  both = _MATCH_BATCH(
    np.stack([boxes, boxes]), np.stack([labels, labels]), _PRIORS
  )
  loc05, cls05 = jax.device_get(_MATCH(boxes, labels, _PRIORS, 0.5))
  for b in range(2):
    np.testing.assert_allclose(
      np.asarray(both[0][b]), loc05, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(np.asarray(both[1][b]), cls05)


@_fuzz(max_examples=40, deadline_s=10)
@given(
  batch=st.booleans(),
  which=st.sampled_from(("gt_boxes", "gt_labels", "priors")),
  data=st.data(),
)
def test_match_names_a_bad_argument_shape(batch, which, data):
  lead = (2, 3) if batch else (3,)
  args = {
    "gt_boxes": np.zeros((*lead, 4)),
    "gt_labels": np.ones(lead, np.int32),
    "priors": _PRIORS,
  }
  valid = {
    # (Boxes of another M fit their own shape: gt_labels is then wrong.)
    "gt_boxes": lambda s: len(s) == len(lead) + 1 and s[-1] == 4,
    "gt_labels": lambda s: s == lead,
    "priors": lambda s: len(s) == 2 and s[1] == 4,
  }[which]
  args[which] = np.zeros(data.draw(_shapes(valid), label="shape"))
  fn = matching.match_batch if batch else matching.match
  with pytest.raises(ValueError, match=f"{fn.__name__}: {which} must"):
    fn(**args)


# --- postprocessing ---------------------------------------------------------


@st.composite
def _detections_input(draw, max_k: int = 24):
  """[K, 4] float64 boxes (valid, zero-area and inverted), [K] scores with
  ties, [K] classes 0..2."""
  k = draw(st.integers(0, max_k))
  coords = st.floats(0, 1) | st.sampled_from((0.0, 0.25, 0.5))
  boxes = draw(hnp.arrays(np.float64, (k, 4), elements=coords))
  valid = draw(st.booleans())
  if valid:  # Mostly proper boxes, so that suppression happens.
    boxes = np.concatenate(
      [
        np.minimum(boxes[:, :2], boxes[:, 2:]),
        np.maximum(boxes[:, :2], boxes[:, 2:]),
      ],
      -1,
    )
  scores = draw(
    hnp.arrays(
      np.float64,
      (k,),
      elements=st.floats(0, 1) | st.sampled_from((0.2, 0.5)),
    )
  )
  classes = draw(hnp.arrays(np.int64, (k,), elements=st.integers(0, 2)))
  return boxes, scores, classes


def _check_greedy_nms(keep, boxes, scores, classes, threshold) -> None:
  """`keep` is greedy NMS in (score desc, index) order, class by class."""
  k = len(boxes)
  assert keep.dtype == np.int64 and len(set(keep.tolist())) == len(keep)
  assert np.all((0 <= keep) & (keep < max(k, 1)))
  order = np.argsort(-scores, kind="stable")
  rank = np.empty(k, np.int64)
  rank[order] = np.arange(k)
  assert np.all(np.diff(rank[keep]) > 0)  # Score order, ties by index.
  iou = box_lib.pairwise_iou(boxes, boxes, xp=np)  # [K, K]
  same = classes[:, None] == classes[None, :]
  hit = (iou > threshold) & same
  kept = np.zeros(k, bool)
  kept[keep] = True
  assert not np.any(np.triu(hit[np.ix_(keep, keep)], 1))  # Nothing overlaps.
  for j in np.flatnonzero(~kept):  # Each dropped box: a kept one beat it.
    assert np.any(hit[keep, j] & (rank[keep] < rank[j]))


@_fuzz(max_examples=80, deadline_s=10)
@given(data=_detections_input(), threshold=st.floats(0, 1))
def test_nms_and_batched_nms_are_greedy(data, threshold):
  boxes, scores, classes = data
  keep = postprocess.nms(boxes, scores, threshold)
  _check_greedy_nms(keep, boxes, scores, np.zeros_like(classes), threshold)
  keep = postprocess.batched_nms(boxes, scores, classes, threshold)
  _check_greedy_nms(keep, boxes, scores, classes, threshold)


@_fuzz(max_examples=60, deadline_s=10)
@given(
  data=st.data(),
  p=st.sampled_from((0, 5, 30)),
  c=st.sampled_from((2, 4)),
  score_threshold=st.sampled_from((0.0, 0.3, 0.99, 1.0)),
  top_k=st.sampled_from((None, 1, 3)),
  max_detections=st.sampled_from((None, 1, 5)),
)
def test_decode_detections_bounded_sorted_and_in_range(
  data, p, c, score_threshold, top_k, max_detections
):
  priors = np.concatenate(
    [
      data.draw(
        hnp.arrays(np.float32, (p, 2), elements=st.floats(0, 1, width=32))
      ),
      data.draw(
        hnp.arrays(np.float32, (p, 2), elements=st.floats(0.0625, 1, width=32))
      ),
    ],
    -1,
  )
  loc = data.draw(
    hnp.arrays(
      np.float32,
      (p, 4),
      elements=st.floats(-5, 5, width=32) | st.sampled_from((1e4, -1e4)),
    )
  )
  scores = data.draw(
    hnp.arrays(
      np.float32,
      (p, c),
      elements=st.floats(0, 1, width=32) | st.sampled_from((0.5, 1.0)),
    )
  )
  det = postprocess.decode_detections(
    loc,
    scores,
    priors,
    score_threshold=score_threshold,
    top_k_per_class=top_k,
    max_detections=max_detections,
  )
  k = len(det.scores)
  assert det.boxes.shape == (k, 4) and det.boxes.dtype == np.float32
  assert det.scores.dtype == np.float32 and det.labels.dtype == np.int32
  assert det.labels.shape == (k,)
  assert k <= (max_detections or p * (c - 1))
  assert np.all(np.isfinite(det.boxes))
  assert np.all((0 <= det.boxes) & (det.boxes <= 1))
  assert np.all((1 <= det.labels) & (det.labels < c))
  assert np.all(det.scores > score_threshold)
  assert np.all(np.diff(det.scores) <= 0)
  if top_k is not None:
    assert np.all(np.bincount(det.labels, minlength=c) <= top_k)
  for s, label in zip(det.scores, det.labels, strict=True):
    assert s in scores[:, label]


@pytest.mark.parametrize(
  "bad, match",
  [
    ({"loc": np.zeros((5, 3))}, r"loc must be \[P, 4\] with P = 5"),
    ({"scores": np.zeros(5)}, r"scores must be \[P, C\]"),
    ({"scores": np.zeros((5, 1))}, r"scores must be \[P, C\]"),
    ({"priors": np.zeros((5, 3))}, r"priors must be \[P, 4\]"),
    ({"top_k_per_class": 1.5}, "top_k_per_class must be >= 1"),
    ({"max_detections": 0}, "max_detections must be >= 1"),
    ({"variances": (0.1,)}, "decode: variances must be two numbers"),
  ],
)
def test_decode_detections_names_a_bad_argument(bad, match):
  args = {
    "loc": np.zeros((5, 4)),
    "scores": np.full((5, 3), 0.5),
    "priors": np.full((5, 4), 0.5),
  }
  with pytest.raises(ValueError, match=match):
    postprocess.decode_detections(**{**args, **bad})


# --- evaluation -------------------------------------------------------------

_NUM_CLASSES = 3


@st.composite
def _eval_inputs(draw, max_images: int = 3, max_boxes: int = 4):
  """Per-image detections and ground truths in 1-based pixels 1..20
  (zero-area and inverted boxes included), labels 1..2."""
  pixel = st.integers(1, 20).map(float)
  box = lambda n: draw(hnp.arrays(np.float64, (n, 4), elements=pixel))
  label = lambda n: draw(
    hnp.arrays(np.int64, (n,), elements=st.integers(1, _NUM_CLASSES - 1))
  )
  score = st.sampled_from((0.5, 0.9)) | st.floats(0, 1)
  dets, gts = [], []
  for _ in range(draw(st.integers(0, max_images))):
    k, g = draw(st.integers(0, max_boxes)), draw(st.integers(0, max_boxes))
    scores = draw(hnp.arrays(np.float64, (k,), elements=score))
    dets.append((box(k), scores, label(k)))
    difficult = draw(st.none() | hnp.arrays(bool, (g,)))
    gts.append((box(g), label(g), difficult))
  return dets, gts


@_fuzz(max_examples=50, deadline_s=10)
@given(inputs=_eval_inputs(), use_07=st.booleans())
def test_evaluate_voc_ap_in_range_nan_only_without_ground_truth(inputs, use_07):
  dets, gts = inputs
  result = evaluation.evaluate_voc(
    dets, gts, _NUM_CLASSES, use_07_metric=use_07
  )
  ap = result.per_class_ap
  assert ap.shape == (_NUM_CLASSES - 1,) and ap.dtype == np.float64
  for c in range(1, _NUM_CLASSES):
    counted = sum(  # Class c's ground truths that are not difficult.
      int(np.sum((lab == c) & ~np.asarray(False if d is None else d)))
      for _, lab, d in gts
    )
    assert math.isnan(ap[c - 1]) == (counted == 0)
    # The 11-point sum of eleven 1/11 can exceed 1 by an ulp (the devkit's).
    assert counted == 0 or 0 <= ap[c - 1] <= 1 + 1e-12
    recall, precision = evaluation.precision_recall(dets, gts, c)
    assert recall.shape == precision.shape
    assert np.all((0 <= recall) & (recall <= 1) & (precision >= 0))
    assert np.all(np.diff(recall) >= 0) and np.all(precision <= 1)
  has_gt = ~np.isnan(ap)
  if has_gt.any():
    assert result.mAP == pytest.approx(float(np.mean(ap[has_gt])))
  else:
    assert math.isnan(result.mAP)


@_fuzz(max_examples=20, deadline_s=10)
@given(inputs=_eval_inputs(max_images=2, max_boxes=3))
def test_evaluate_coco_metrics_in_range_or_nan(inputs):
  dets, gts = inputs
  metrics = evaluation.evaluate_coco(dets, gts, _NUM_CLASSES)
  assert set(metrics) == set(evaluation.COCO_METRICS)
  for value in metrics.values():
    assert isinstance(value, float)
    assert math.isnan(value) or 0 <= value <= 1


_BOXES, _SCORES, _LABELS = np.zeros((1, 4)), np.ones(1), np.ones(1, int)
# (entry, what the error says about detections[i]); one field bad in each.
_BAD_ENTRIES = (
  (None, r"must be a 3-tuple"),
  ((_BOXES, _SCORES), r"must be a 3-tuple"),
  ((_BOXES[:, :3], _SCORES, _LABELS), r"boxes must be \[N, 4\]"),
  ((_BOXES + np.nan, _SCORES, _LABELS), "boxes must be finite"),
  ((_BOXES, np.ones(2), _LABELS), r"scores must be \[1\]"),
  ((_BOXES, [np.inf], _LABELS), "scores must be finite"),
  ((_BOXES, ["x"], _LABELS), "scores must be numbers"),
  ((_BOXES, _SCORES, _LABELS - 1), "labels must be integers"),
  ((_BOXES, _SCORES, np.array(["a"])), "labels must be integers"),
  ((_BOXES, _SCORES, _LABELS + 0.5), "labels must be integers"),
)


@_fuzz(max_examples=40, deadline_s=10)
@given(
  inputs=_eval_inputs(max_images=2),
  bad=st.sampled_from(_BAD_ENTRIES),
  where=st.integers(0, 2),
  fn=st.sampled_from(("evaluate_voc", "evaluate_coco")),
)
def test_evaluation_names_a_bad_entry(inputs, bad, where, fn):
  dets, gts = (list(x) for x in inputs)
  entry, match = bad
  index = min(where, len(dets))
  if index == len(dets):  # One more image.
    dets.append(None)
    gts.append((np.zeros((0, 4)), np.zeros(0, int), None))
  dets[index] = entry
  with pytest.raises(ValueError, match=rf"{fn}: detections\[{index}\] {match}"):
    getattr(evaluation, fn)(dets, gts, _NUM_CLASSES)


# --- writers: no partial files ----------------------------------------------


def _failing_dump(value, f, **kwargs):
  """json.dump that writes half a document and then fails, as a full disk."""
  f.write(json.dumps(value, **kwargs)[:10])
  f.flush()
  raise OSError(28, "No space left on device")


def _eval_result():
  return evaluator.EvalResult(3, 0.5, {"dog": 0.5, "cat": math.nan}, 2, {})


@pytest.mark.parametrize("existing", [False, True])
def test_write_eval_results_failing_midway_keeps_the_destination(
  tmp_path, monkeypatch, existing
):
  dest = tmp_path / evaluator.EVAL_RESULTS
  if existing:
    dest.write_text('{"step": 1}')
  monkeypatch.setattr(json, "dump", _failing_dump)
  with pytest.raises(OSError, match="No space left"):
    evaluator.write_eval_results(str(tmp_path), _eval_result())
  if existing:
    assert dest.read_text() == '{"step": 1}'
  else:
    assert not dest.exists()


def test_write_eval_results_failing_leaves_no_temporary_file(
  tmp_path, monkeypatch
):
  monkeypatch.setattr(json, "dump", _failing_dump)
  with pytest.raises(OSError):
    evaluator.write_eval_results(str(tmp_path), _eval_result())
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("existing", [False, True])
def test_predict_json_failing_midway_keeps_the_destination(
  tmp_path, monkeypatch, existing
):
  # predict_images writes predictions.json and failures.json with this.
  dest = tmp_path / predict.PREDICTIONS
  if existing:
    dest.write_text("[]")
  monkeypatch.setattr(json, "dump", _failing_dump)
  with pytest.raises(OSError, match="No space left"):
    evaluator.write_json(str(dest), [{"image": "a.jpg", "detections": []}])
  if existing:
    assert dest.read_text() == "[]"
  else:
    assert not dest.exists()


# orbax's writer thread reports the failed save on an event loop that the
# failed call has closed ("Event loop is closed"): noise, not a failure.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_save_params_failing_midway_leaves_no_checkpoint(tmp_path):
  dest = str(tmp_path / "params")
  # A string array fails inside orbax's array write, after it has begun.
  with pytest.raises(ValueError):
    weights_io.save_params(dest, {"a": np.ones(3), "b": np.array(["x"])})
  assert not os.path.exists(dest)
