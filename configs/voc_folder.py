r"""SSD300 on a VOC-format folder (a custom dataset).

The folder holds `JPEGImages/`, `Annotations/` (VOC XML) and
`ImageSets/Main/<split>.txt`; class names come from
`--config.data.class_names=a,b,c` or `classes.txt` in the folder.

  python -m ssd_jax.main --config=configs/voc_folder.py \
    --config.data.root=/data/my_voc --config.data.class_names=cat,dog \
    --workdir=/tmp/my_ssd
  python -m ssd_jax.main --config=configs/voc_folder.py:small \
    --config.data.root=/data/my_voc --workdir=/tmp/my_ssd_small

`:small` uses the small CPU model of configs/shapes.py with the quick
recipe (`config.recipe = "quick"`, `ssd_jax.recipe`): input size, schedule
in epochs, augmentation and default boxes chosen from the training boxes,
each logged at start-up; a field set on the command line is kept.
"""

from ssd_jax import config as config_lib


def get_config(arg: str | None = None):
  """Returns the config; arg "small" shrinks it for a CPU run."""
  config = config_lib.base_config()
  config.data.source = "voc_folder"
  config.data.root = ""  # Required: --config.data.root=PATH.
  config.data.class_names = ""  # "a,b,c"; "" reads root/classes.txt.
  config.data.train_split = "trainval"
  config.data.eval_split = "test"
  config.data.max_boxes = 64
  if config_lib.is_small(arg, __file__):
    config_lib.apply_small(config)
    config.recipe = "quick"
  return config
