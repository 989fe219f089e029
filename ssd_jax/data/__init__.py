"""Input data for SSD: sources, the paper's augmentation, tf.data pipelines.

Every source yields the same example dict:
`{"image": uint8 [H, W, 3], "boxes": float32 [G, 4] corners (x_min, y_min,
x_max, y_max) normalised to [0, 1], "labels": int32 [G] in 1..C-1,
"difficult": bool [G], "is_crowd": bool [G], "image_id": str,
"original_size": (h, w)}`.

Sources (`data_cfg.source`):
- "synthetic": seeded shapes (`synthetic.py`), the offline demo set.
- "tfds_voc": tfds `voc/2007` + `voc/2012` (`sources.py`), or with `root`
  the year folders of a `VOCdevkit/` (`voc_folder.index_voc_devkit`).
- "tfds_coco": tfds `coco/2017` (`sources.py`), or with `root` a folder of
  COCO's layout (`coco_folder.py`).
- "voc_folder": one VOC-format folder on disk (`voc_folder.py`).
(`dataset.route` says which of these a config reads.)

`data_cfg` fields (ml_collections ConfigDict or dict; all but `source` are
optional):
- source: one of the above.
- root: the folder: required for voc_folder; for tfds_voc a `VOCdevkit/`
  and for tfds_coco a COCO folder, read instead of tfds ("" = tfds).
- class_names: list or comma-separated string (overrides the source's).
- train_split / eval_split: voc_folder split-file names (default
  "trainval" / "test"); tfds split specs "cfg:split,cfg:split" or an alias:
  tfds_voc defaults "07+12" (2007 + 2012 trainval) / "test07" (2007 test);
  tfds_coco "train" / "validation". A VOCdevkit root reads the same specs
  ("YEAR:SPLITFILE", tfds' "train+validation" meaning "trainval"); a COCO
  root "train" / "validation" or a folder name ("val2017"). Unused for
  synthetic.
- max_boxes: padded ground-truth boxes per image (default 100).
- eval_max_boxes: padding for evaluation (default max_boxes).
- train_difficult: train on VOC "difficult" boxes (default True, as the
  Caffe release's `use_difficult_gt`).
- augment: the paper's augmentation for training (default True; False =
  resize + normalise only).
- augment_config: overrides of `augment.AugmentConfig` fields, e.g.
  {"max_expand_ratio": 2.0}.
- data_dir, tfds_manual_dir (the release archives; default
  `<data_dir>/downloads/manual`), count_boxes (True: log the box counts,
  one pass), shuffle_buffer (2048 encoded records), tfds_skip_decoding
  (True): tfds.
- synthetic: num_train (2000), num_eval (200), synthetic_image_size (128),
  max_objects (5), min_object_size (0.1), max_object_size (0.5),
  synthetic_seed (0).
- num_parallel_calls (AUTOTUNE), num_threads (CPU count), prefetch (2),
  autotune (False: tf.data's autotuning off, the AUTOTUNE maps as wide as
  the `num_threads` pool; see `pipeline._options`).

Importing this package does not import TensorFlow: it exports the TF-free
names only (the image constants and pixel helpers of `image.py`, the VOC
and COCO folder readers, the synthetic set). The tf.data pipeline and the
augmentation are modules of their own, imported where needed:
`from ssd_jax.data import pipeline` (`pipeline.create_train_iterator`,
`pipeline.create_eval_iterator`, ...), `from ssd_jax.data import dataset`
(`dataset.class_names`: what a config's source holds) and
`from ssd_jax.data import augment`.

Normalisation lives in one place: `image.MEAN_RGB` and `image.normalize`.
"""

from ssd_jax.data.coco_folder import COCO_CLASSES, index_coco_folder
from ssd_jax.data.image import (
  MEAN_RGB,
  denormalize,
  normalize,
  normalized_to_pixels,
  normalized_to_voc_pixels,
  voc_pixels_to_normalized,
)
from ssd_jax.data.synthetic import SHAPE_NAMES, generate_example, read_synthetic
from ssd_jax.data.voc_folder import (
  VOC_CLASSES,
  index_voc_folder,
  read_voc_folder,
)

__all__ = [
  "COCO_CLASSES",
  "MEAN_RGB",
  "SHAPE_NAMES",
  "VOC_CLASSES",
  "denormalize",
  "generate_example",
  "index_coco_folder",
  "index_voc_folder",
  "normalize",
  "normalized_to_pixels",
  "normalized_to_voc_pixels",
  "read_synthetic",
  "read_voc_folder",
  "voc_pixels_to_normalized",
]
