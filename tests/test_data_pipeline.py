"""Tests for ssd_jax/data/pipeline.py (synthetic and VOC-folder sources; the
tfds sources are covered in test_data_sources.py)."""

import itertools

import jax
import numpy as np
import pytest
import tensorflow as tf
from test_data_voc_folder import write_voc_folder

from ssd_jax.data import image, pipeline, synthetic

SYN = {
  "source": "synthetic",
  "num_train": 12,
  "num_eval": 5,
  "synthetic_image_size": 32,
  "max_boxes": 6,
}


def _take(it, n):
  return list(itertools.islice(it, n))


def _equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_train_batch_contract():
  it = pipeline.create_train_iterator(
    SYN, image_size=24, global_batch_size=4, seed=0, num_devices=2
  )
  (b,) = _take(it, 1)
  assert set(b) == {"image", "boxes", "labels"}
  assert (
    b["image"].shape == (2, 2, 24, 24, 3) and b["image"].dtype == np.float32
  )
  assert b["boxes"].shape == (2, 2, 6, 4) and b["boxes"].dtype == np.float32
  assert b["labels"].shape == (2, 2, 6) and b["labels"].dtype == np.int32
  labels, boxes = b["labels"].reshape(4, 6), b["boxes"].reshape(4, 6, 4)
  for lab, box in zip(labels, boxes, strict=True):
    n = int((lab > 0).sum())
    assert (lab[:n] > 0).all() and (lab[n:] == 0).all()  # Padding last.
    assert (box[n:] == 0).all()
    assert (box[:n] >= 0).all() and (box[:n] <= 1).all()
    assert (box[:n, 2:] > box[:n, :2]).all()
  assert labels.max() <= len(synthetic.SHAPE_NAMES)
  # Normalised: pixel values minus the mean, not 0..255 or 0..1.
  assert b["image"].min() < -50 and b["image"].max() <= 255 - 104


def test_deterministic_and_resumable():
  def run(seed, start_step=0, n=4):
    it = pipeline.create_train_iterator(
      SYN, image_size=16, global_batch_size=4, seed=seed,
      start_step=start_step, num_devices=1,
    )  # fmt: skip
    return _take(it, n)

  full = run(0, n=6)  # 24 examples = 2 epochs of 12.
  again = run(0, n=6)
  assert all(_equal(a, b) for a, b in zip(full, again, strict=True))
  resumed = run(0, start_step=4, n=2)
  assert _equal(resumed[0], full[4]) and _equal(resumed[1], full[5])
  other = run(1, n=1)
  assert not _equal(other[0], full[0])


def test_each_epoch_is_a_permutation():
  cfg = dict(SYN, augment=False, num_train=8)
  train = _take(
    pipeline.create_train_iterator(
      cfg, image_size=32, global_batch_size=4, seed=3, num_devices=1
    ),
    4,
  )
  table = synthetic.synthetic_arrays(0, 8, "train", image_size=32)
  reference = image.normalize(table["image"])  # [8, 32, 32, 3]

  def indices(batch):
    out = []
    for img in batch["image"][0]:
      match = [i for i in range(8) if np.allclose(img, reference[i], atol=1e-3)]
      assert len(match) == 1
      out.append(match[0])
    return out

  epoch1 = indices(train[0]) + indices(train[1])
  epoch2 = indices(train[2]) + indices(train[3])
  assert sorted(epoch1) == sorted(epoch2) == list(range(8))
  assert epoch1 != epoch2  # Reshuffled per epoch.


def test_multi_host_shards_the_global_batch(monkeypatch):
  def run(index, count):
    monkeypatch.setattr(jax, "process_index", lambda: index)
    monkeypatch.setattr(jax, "process_count", lambda: count)
    it = pipeline.create_train_iterator(
      SYN, image_size=16, global_batch_size=4, seed=5, num_devices=1
    )
    return _take(it, 3)

  single = run(0, 1)
  hosts = [run(0, 2), run(1, 2)]
  for step in range(3):
    for key in ("image", "boxes", "labels"):
      joined = np.concatenate([h[step][key] for h in hosts], axis=1)
      np.testing.assert_array_equal(joined, single[step][key])


def test_batch_split_errors():
  with pytest.raises(ValueError, match="not divisible by process_count"):
    pipeline.create_train_iterator(
      SYN, image_size=16, global_batch_size=6, seed=0, num_devices=4
    )
  with pytest.raises(ValueError, match="start_step"):
    pipeline.create_train_iterator(
      SYN, image_size=16, global_batch_size=4, seed=0, start_step=-1
    )
  assert pipeline.check_batch_split(32, 4, 2) == 16
  with pytest.raises(ValueError, match="data.source"):
    pipeline.create_train_iterator(
      {"source": "nope"}, image_size=16, global_batch_size=4, seed=0
    )
  with pytest.raises(ValueError, match="augment_config has an unknown"):
    pipeline.create_train_iterator(
      dict(SYN, augment_config={"zoom": 2}), image_size=16,
      global_batch_size=4, seed=0,
    )  # fmt: skip


def test_default_num_devices_is_local_device_count():
  it = pipeline.create_train_iterator(
    SYN, image_size=16, global_batch_size=jax.local_device_count(), seed=0
  )
  (b,) = _take(it, 1)
  assert b["image"].shape[:2] == (jax.local_device_count(), 1)


def test_eval_iterator_is_finite_ordered_and_padded():
  batches = list(
    pipeline.create_eval_iterator(SYN, image_size=32, batch_size=2)
  )
  assert len(batches) == 3
  last = batches[-1]
  assert last["valid"].tolist() == [True, False]
  assert last["image_id"][1] == "" and not last["labels"][1].any()
  ids = [i for b in batches for i in b["image_id"][b["valid"]]]
  assert ids == [f"eval_0_{k}" for k in range(5)]
  b = batches[0]
  assert b["image"].shape == (2, 32, 32, 3)
  pixels = image.denormalize(b["image"])
  assert pixels.dtype == np.uint8 and "raw_image" not in b
  assert b["original_size"].tolist() == [[32, 32], [32, 32]]
  for k in range(2):  # Same size: boxes, labels and pixels are the source's.
    ex = synthetic.generate_example(0, k, "eval", image_size=32)
    g = len(ex["labels"])
    np.testing.assert_allclose(b["boxes"][k, :g], ex["boxes"], atol=1e-7)
    assert b["labels"][k, :g].tolist() == ex["labels"].tolist()
    assert b["num_boxes"][k] == g
    np.testing.assert_array_equal(pixels[k], ex["image"])
    assert b["difficult"].shape == b["is_crowd"].shape == (2, 6)


def test_voc_folder_pipeline_with_an_empty_image(tmp_path):
  root = str(tmp_path / "voc")
  rng = np.random.default_rng(0)
  images = [
    (f"{k:03d}", rng.integers(0, 255, (24 + k, 30, 3), np.uint8),
     [("dog", (3, 4, 20, 18), k == 1)] if k != 2 else [])
    for k in range(5)
  ]  # fmt: skip
  write_voc_folder(root, images, split="trainval")
  write_voc_folder(root, images[:3], split="test")
  cfg = {"source": "voc_folder", "root": root, "max_boxes": 4}
  it = pipeline.create_train_iterator(
    cfg, image_size=32, global_batch_size=5, seed=0, num_devices=1
  )
  steps = _take(it, 2)
  assert steps[0]["image"].shape == (1, 5, 32, 32, 3)
  # Image 002 has no boxes, so its rows are all padding: still trains.
  assert np.isfinite(steps[0]["image"]).all()
  resumed = _take(
    pipeline.create_train_iterator(
      cfg, image_size=32, global_batch_size=5, seed=0, start_step=1,
      num_devices=1,
    ),
    1,
  )  # fmt: skip
  assert _equal(resumed[0], steps[1])
  ev = list(pipeline.create_eval_iterator(cfg, image_size=32, batch_size=3))
  (b,) = ev
  assert b["image_id"].tolist() == ["000", "001", "002"]
  assert b["difficult"][:, 0].tolist() == [False, True, False]
  assert b["original_size"].tolist() == [[24, 30], [25, 30], [26, 30]]
  np.testing.assert_allclose(
    b["boxes"][0, 0], [2 / 30, 3 / 24, 20 / 30, 18 / 24], atol=1e-6
  )
  assert b["labels"][2].tolist() == [0, 0, 0, 0]


def test_eval_inputs_at_the_input_size_is_mean_subtraction():
  pixels = np.random.default_rng(1).integers(0, 255, (16, 16, 3), np.uint8)
  out = pipeline.eval_inputs(tf.constant(pixels), 16).numpy()
  # Resizing to the same size samples the pixel centres: no change.
  np.testing.assert_allclose(
    out, pixels - np.float32(image.MEAN_RGB), atol=1e-4
  )
  np.testing.assert_array_equal(image.denormalize(out), pixels)
  smaller = pipeline.eval_inputs(tf.constant(pixels), 8)
  assert smaller.shape == (8, 8, 3)


@pytest.mark.parametrize("kind", ["imagenet", "minus_one_one"])
def test_pipelines_normalise_for_the_model(kind):
  caffe = next(pipeline.create_eval_iterator(SYN, image_size=32, batch_size=2))
  other = next(
    pipeline.create_eval_iterator(
      SYN, image_size=32, batch_size=2, normalization=kind
    )
  )
  np.testing.assert_allclose(
    other["image"],
    image.renormalize_from_caffe(caffe["image"], kind),
    rtol=1e-5,
    atol=1e-5,
  )
  np.testing.assert_array_equal(
    image.denormalize(other["image"], kind), image.denormalize(caffe["image"])
  )
  train = dict(image_size=32, global_batch_size=2, seed=0, num_devices=1)
  a = next(pipeline.create_train_iterator(SYN, **train))
  b = next(pipeline.create_train_iterator(SYN, **train, normalization=kind))
  np.testing.assert_allclose(
    b["image"], image.renormalize_from_caffe(a["image"], kind), atol=1e-5
  )


def test_shard_range_covers_each_example_once():
  for n in (0, 1, 7, 16):
    for k in (1, 2, 3):
      blocks = [pipeline.shard_range(n, (i, k)) for i in range(k)]
      assert [i for lo, hi in blocks for i in range(lo, hi)] == list(range(n))
      sizes = [hi - lo for lo, hi in blocks]
      assert max(sizes) - min(sizes) <= 1  # Balanced.
  with pytest.raises(ValueError, match="0 <= index < count"):
    pipeline.shard_range(4, (2, 2))
  with pytest.raises(ValueError, match="0 <= index < count"):
    pipeline.shard_range(4, (0, 0))


def test_options_autotune_off_unless_asked_and_thread_pool_from_config():
  default = pipeline._options(SYN)
  assert default.autotune.enabled is False
  assert default.deterministic is True
  assert default.threading.max_intra_op_parallelism == 1
  tuned = pipeline._options({**SYN, "autotune": True, "num_threads": 3})
  assert tuned.autotune.enabled is True
  assert tuned.threading.private_threadpool_size == 3
  # Both iterators give the same batches: the option changes speed only.
  a = pipeline.create_train_iterator(
    SYN, image_size=32, global_batch_size=4, seed=0, num_devices=1
  )
  b = pipeline.create_train_iterator(
    {**SYN, "autotune": True}, image_size=32, global_batch_size=4, seed=0,
    num_devices=1,
  )  # fmt: skip
  pairs = zip(_take(a, 3), _take(b, 3), strict=True)
  assert all(_equal(x, y) for x, y in pairs)
