r"""SSD512 on PASCAL VOC 07+12 (the release's ssd_pascal_512.py recipe).

configs/voc.py (data, schedule, evaluation; the same data options: tfds or
`--config.data.root=/path/to/VOCdevkit`) with 512x512 inputs (24564 default
boxes); paper: 76.8 VOC07 mAP trained on 07+12.

  python -m ssd_jax.main --config=configs/voc512.py --workdir=/tmp/ssd512_voc
  python -m ssd_jax.main --config=configs/voc512.py \
    --config.data.root=/data/VOCdevkit --workdir=/tmp/ssd512_voc
"""

import os

from ssd_jax import config as config_lib


def get_config(arg: str | None = None):
  """Returns the config; arg "small" shrinks it for a CPU run."""
  voc = os.path.join(os.path.dirname(os.path.abspath(__file__)), "voc.py")
  config = config_lib.config_from_file(voc)
  config.model.name = "ssd512"
  config.model.image_size = 512
  if config_lib.is_small(arg, __file__):
    config_lib.apply_small(config)
  return config
