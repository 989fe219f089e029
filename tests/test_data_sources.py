"""Tests for ssd_jax/data/sources.py with tfds.testing.mock_data (offline)."""

import itertools
import logging
import socket

import numpy as np
import pytest
import tensorflow as tf

from ssd_jax.data import image, pipeline, sources, voc_folder

# Hand-made VOC examples: (file name, (H, W), [(label0, (xmin, ymin, xmax,
# ymax) 1-based inclusive pixels, difficult)]).
VOC_EXAMPLES = [
  ("000007.jpg", (20, 30),
   [(11, (1, 1, 30, 20), False), (4, (5, 3, 9, 12), True)]),
  ("000009.jpg", (16, 24), [(14, (2, 2, 2, 2), False)]),
  ("000012.jpg", (18, 18), []),
]  # fmt: skip


def _encoded(h, w, value):
  image = np.full((h, w, 3), value, np.uint8)
  return tf.io.encode_png(image).numpy()


def _fake_voc(requests):
  def as_dataset(self, *args, decoders=None, **kwargs):
    del args, kwargs
    year = self.builder_config.name
    requests.append(year)

    def gen():
      for k, (name, (h, w), objects) in enumerate(VOC_EXAMPLES):
        bbox = [[y0 / h, x0 / w, y1 / h, x1 / w]  # tfds: no -1.
                for _, (x0, y0, x1, y1), _ in objects]  # fmt: skip
        # Pixel value tells the example: 30 k, + 100 for 2012.
        image = _encoded(h, w, 30 * k + (100 if year == "2012" else 0))
        if decoders is None:
          image = tf.io.decode_png(image).numpy()
        yield {
          "image": image,
          "image/filename": name,
          "objects": {
            "bbox": np.asarray(bbox, np.float32).reshape(-1, 4),
            "label": np.asarray([o[0] for o in objects], np.int64),
            "is_difficult": np.asarray([o[2] for o in objects], bool),
          },
        }

    image_spec = (
      tf.TensorSpec([], tf.string)
      if decoders is not None
      else tf.TensorSpec([None, None, 3], tf.uint8)
    )
    return tf.data.Dataset.from_generator(
      gen,
      output_signature={
        "image": image_spec,
        "image/filename": tf.TensorSpec([], tf.string),
        "objects": {
          "bbox": tf.TensorSpec([None, 4], tf.float32),
          "label": tf.TensorSpec([None], tf.int64),
          "is_difficult": tf.TensorSpec([None], tf.bool),
        },
      },
    )

  return as_dataset


def _voc_cfg(**kw):
  return dict({"source": "tfds_voc", "max_boxes": 4, "shuffle_buffer": 8}, **kw)


@pytest.mark.parametrize("skip_decoding", [True, False])
def test_voc_eval_converts_boxes_labels_and_ids(skip_decoding, mock_tfds):
  requests = []
  with mock_tfds(as_dataset_fn=_fake_voc(requests)):
    cfg = _voc_cfg(tfds_skip_decoding=skip_decoding)
    (b,) = list(pipeline.create_eval_iterator(cfg, image_size=16, batch_size=3))
  assert requests == ["2007"]  # "test07"
  assert b["image_id"].tolist() == ["000007", "000009", "000012"]
  for k, (_, size, objects) in enumerate(VOC_EXAMPLES):
    assert b["original_size"][k].tolist() == list(size)
    g = len(objects)
    want = voc_folder.voc_pixels_to_normalized(
      [o[1] for o in objects], size
    ).reshape(-1, 4)
    np.testing.assert_allclose(b["boxes"][k, :g], want, atol=1e-6)
    assert b["labels"][k, :g].tolist() == [o[0] + 1 for o in objects]
    assert b["difficult"][k, :g].tolist() == [o[2] for o in objects]
    assert not b["labels"][k, g:].any()
    # And back to the devkit's pixels for evaluate_voc.
    back = image.normalized_to_voc_pixels(b["boxes"][k, :g], size)
    px = np.asarray([o[1] for o in objects], np.float32).reshape(-1, 4)
    np.testing.assert_allclose(back, px, atol=1e-4)
  np.testing.assert_allclose(b["boxes"][0, 0], [0, 0, 1, 1], atol=1e-6)


def test_voc_train_07_12_epochs_deterministic_and_resumable(mock_tfds):
  requests = []
  with mock_tfds(as_dataset_fn=_fake_voc(requests)):

    def run(start_step, n, **kw):
      it = pipeline.create_train_iterator(
        _voc_cfg(**kw), image_size=16, global_batch_size=2, seed=0,
        start_step=start_step, num_devices=1,
      )  # fmt: skip
      return list(itertools.islice(it, n))

    full = run(0, 7)  # 2 parts x 3 examples = 3 steps per epoch.
    mid_epoch = run(2, 1)
    later = run(4, 3)
    plain = run(0, 6, augment=False)
  assert set(requests) == {"2007", "2012"}  # 07+12 trainval.
  for a, b in zip(full[2:3] + full[4:7], mid_epoch + later, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert full[0]["image"].shape == (1, 2, 16, 16, 3)
  assert full[0]["labels"].shape == (1, 2, 4)
  labels = np.concatenate([f["labels"].ravel() for f in full])
  assert labels.max() <= 20 and labels.min() >= 0
  # Each epoch shows every example of both years exactly once, reshuffled.
  values = [
    round(float(b["image"][0, i, 0, 0, 0]) + 123) for b in plain for i in (0, 1)
  ]
  everything = [0, 30, 60, 100, 130, 160]
  assert sorted(values[:6]) == sorted(values[6:]) == everything
  assert values[:6] != values[6:]


def test_default_random_mock_trains_without_crashing(mock_tfds):
  # tfds' random mock has inconsistent object lengths and inverted boxes;
  # they are cut and dropped, never passed on.
  with mock_tfds(num_examples=4):
    it = pipeline.create_train_iterator(
      _voc_cfg(tfds_skip_decoding=False, train_split="2007:train"),
      image_size=16, global_batch_size=2, seed=0, num_devices=1,
    )  # fmt: skip
    b = next(it)
  boxes, labels = b["boxes"].reshape(-1, 4), b["labels"].ravel()
  real = boxes[labels > 0]
  assert (real[:, 2:] > real[:, :2]).all()
  assert (real >= 0).all() and (real <= 1).all()


def _coco_raw(crowd):
  return {
    "image": tf.io.encode_png(np.zeros((10, 20, 3), np.uint8)),
    "image/id": tf.constant(139, tf.int64),
    "objects": {
      # tfds (ymin, xmin, ymax, xmax).
      "bbox": tf.constant([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]]),
      "label": tf.constant([0, 79], tf.int64),
      "is_crowd": tf.constant(crowd),
    },
  }


def test_coco_crowd_dropped_for_training_and_marked_for_eval():
  train = sources.decode_coco(_coco_raw([False, True]), training=True)
  np.testing.assert_allclose(train["boxes"], [[0.2, 0.1, 0.6, 0.5]])
  assert train["labels"].numpy().tolist() == [1]
  ev = sources.decode_coco(_coco_raw([False, True]), training=False)
  assert ev["labels"].numpy().tolist() == [1, 80]
  assert ev["is_crowd"].numpy().tolist() == [False, True]
  assert ev["difficult"].numpy().tolist() == [False, True]
  assert ev["image_id"].numpy() == b"139"
  assert ev["original_size"].numpy().tolist() == [10, 20]
  assert ev["image"].shape == (10, 20, 3)


def test_coco_pipeline_with_mock(mock_tfds):
  with mock_tfds(num_examples=3):
    cfg = {"source": "tfds_coco", "max_boxes": 8, "tfds_skip_decoding": False}
    batches = list(
      pipeline.create_eval_iterator(cfg, image_size=16, batch_size=2)
    )
  assert len(batches) == 2 and batches[1]["valid"].tolist() == [True, False]
  labels = np.concatenate([b["labels"].ravel() for b in batches])
  assert labels.max() <= 80


def test_parse_split_spec_and_sanitize():
  assert sources.parse_split_spec("07+12", "2007") == [
    ("2007", "train+validation"),
    ("2012", "train+validation"),
  ]
  assert sources.parse_split_spec("train[:10]", "2017") == [
    ("2017", "train[:10]")
  ]
  with pytest.raises(ValueError, match="empty split"):
    sources.parse_split_spec(" , ", "2007")
  boxes, labels = sources.sanitize_boxes(
    tf.constant([[-0.1, 0.2, 0.5, 1.3], [0.5, 0.5, 0.4, 0.9], [2, 2, 3, 3]]),
    tf.constant([1, 2, 3]),
  )
  np.testing.assert_allclose(boxes, [[0.0, 0.2, 0.5, 1.0]])
  assert labels.numpy().tolist() == [1]


def test_count_objects_counts_images_boxes_and_difficult(mock_tfds):
  with mock_tfds(as_dataset_fn=_fake_voc([])):
    (part,) = sources.load_tfds_parts("voc", "test07", "2007")
    counts = sources.count_objects(part)
  # VOC_EXAMPLES: 3 images, 2 with boxes, 3 boxes, 1 difficult, no crowd.
  assert counts == (3, 2, 3, 1, 0)


def test_the_eval_stream_logs_the_tfds_counts_once(mock_tfds, caplog):
  cfg = _voc_cfg(eval_split="2007:test[:2]")
  with (
    mock_tfds(as_dataset_fn=_fake_voc([])),
    caplog.at_level(logging.INFO, logger="ssd_jax.data.dataset"),
  ):
    for _ in range(2):
      list(pipeline.create_eval_iterator(cfg, image_size=16, batch_size=3))
  lines = [m for m in caplog.messages if m.startswith("tfds voc/2007")]
  assert lines == [
    "tfds voc/2007 split 'test[:2]': 3 images (2 with boxes), 3 boxes "
    "(1 difficult, 0 crowd)"
  ]  # The fake ignores the slice; once per process, not per evaluation.


def test_prepare_without_archives_or_network_says_how_to_get_the_data(
  tmp_path, monkeypatch
):
  monkeypatch.setattr(sources, "_reachable", lambda url, timeout=5.0: False)
  for name, route in (("voc/2007", "VOCdevkit"), ("coco/2017", "coco")):
    with pytest.raises(sources.DataNotFoundError) as e:
      sources.prepare_tfds(name, str(tmp_path))
    msg = str(e.value)
    assert f"tfds dataset {name} is not prepared in {tmp_path}" in msg
    assert str(tmp_path / "downloads" / "manual") in msg
    assert all(a in msg for a in sources.TFDS_ARCHIVES[name])
    assert f"--config.data.root=/path/to/{route}" in msg
  # 07+12 needs both years: one message names both releases' archives.
  with pytest.raises(sources.DataNotFoundError) as e:
    sources.load_tfds_parts("voc", "07+12", "2007", data_dir=str(tmp_path))
  assert "VOCtrainval_06-Nov-2007.tar" in str(e.value)
  assert "VOCtrainval_11-May-2012.tar" in str(e.value)
  # Only some archives present: still refused at once, naming the missing.
  manual = tmp_path / "elsewhere"
  manual.mkdir()
  (manual / "VOCtest_06-Nov-2007.tar").write_bytes(b"")
  with pytest.raises(sources.DataNotFoundError, match="VOCtrainval_06-Nov"):
    sources.prepare_tfds("voc/2007", str(tmp_path), str(manual))


def test_reachable_is_false_for_a_closed_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  assert not sources._reachable(f"http://127.0.0.1:{port}/x.tar", 1.0)


@pytest.mark.parametrize("name", sorted(sources.TFDS_ARCHIVES))
def test_archive_names_are_the_builders(name):
  import tensorflow_datasets as tfds

  builder = tfds.builder(name, data_dir="/nonexistent")
  names = {info.filename for info in builder.url_infos.values()}
  assert set(sources.TFDS_ARCHIVES[name]) <= names
