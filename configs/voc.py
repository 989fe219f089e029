r"""SSD300 on PASCAL VOC 07+12, the paper's recipe (Caffe release schedule).

SGD momentum 0.9, weight decay 5e-4, lr 1e-3 with a 1k-step warm-up, batch
32, 120k iterations with x0.1 decays at 80k and 100k; evaluated with VOC07
11-point mAP on VOC2007 test (paper: 74.3 for SSD300 trained on 07+12).

  python -m ssd_jax.main --config=configs/voc.py --workdir=/tmp/ssd_voc
  python -m ssd_jax.main --config=configs/voc.py \
    --config.data.root=/data/VOCdevkit --workdir=/tmp/ssd_voc
  python -m ssd_jax.main --config=configs/voc.py:small --workdir=/tmp/voc_small

Data: tfds `voc/2007` + `voc/2012`, prepared on first use (from the release
tars in `<data_dir>/downloads/manual`, else downloaded), or with
`--config.data.root` a `VOCdevkit/` folder as the tars extract: 07+12
trainval for training, 2007 test for evaluation, `difficult` objects kept
and ignored by the metric as the devkit does (README, "Data").

`:small` keeps the data and swaps in the small CPU model and schedule of
configs/shapes.py (a local smoke run, not a result).
"""

from ssd_jax import config as config_lib


def get_config(arg: str | None = None):
  """Returns the config; arg "small" shrinks it for a CPU run."""
  config = config_lib.base_config()
  config.data.source = "tfds_voc"
  config.data.train_split = "07+12"  # VOC2007 + VOC2012 trainval.
  config.data.eval_split = "test07"  # VOC2007 test.
  config.data.max_boxes = 64
  # "" reads tfds voc/2007 + voc/2012 from data_dir ("" = tfds' default),
  # prepared on first use from the tars in tfds_manual_dir ("" = <data_dir>/
  # downloads/manual) or by download; a VOCdevkit folder (VOC2007/ and
  # VOC2012/, as the tars extract) reads the year folders instead.
  config.data.root = ""
  config.data.data_dir = ""
  config.data.tfds_manual_dir = ""
  config.data.count_boxes = True  # Log the box counts (one pass) at start.
  if config_lib.is_small(arg, __file__):
    config_lib.apply_small(config)
  return config
