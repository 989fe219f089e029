r"""SSD512 on PASCAL VOC 07+12 (the release's ssd_pascal_512.py recipe).

As configs/voc.py with 512x512 inputs (24564 default boxes); paper: 76.8
VOC07 mAP trained on 07+12.

  python -m ssd_jax.main --config=configs/voc512.py --workdir=/tmp/ssd512_voc
"""

from ssd_jax import config as config_lib


def get_config(arg: str | None = None):
  """Returns the config; arg "small" shrinks it for a CPU run."""
  config = config_lib.base_config()
  config.model.name = "ssd512"
  config.model.image_size = 512
  config.data.source = "tfds_voc"
  config.data.train_split = "07+12"  # VOC2007 + VOC2012 trainval.
  config.data.eval_split = "test07"  # VOC2007 test.
  config.data.max_boxes = 64
  config.data.data_dir = ""
  if config_lib.is_small(arg, __file__):
    config_lib.apply_small(config)
  return config
