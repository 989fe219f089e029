r"""torchvision's SSDLite320 (MobileNetV3-Large) on COCO 2017, its recipe.

torchvision `references/detection` (`--model ssdlite320_mobilenet_v3_large
--epochs 660 --lr-scheduler cosineannealinglr --lr 0.15 --batch-size 24`
on 8 GPUs, `--weight-decay 0.00004 --data-augmentation ssdlite`): global
batch 192, SGD momentum 0.9, lr 0.15 with cosine annealing over the run
after the references' first-epoch warm-up (1000 steps from 0.001x), weight
decay 4e-5 on kernels only, the "ssdlite" augmentation (min-IoU crops and
flip: no colour jitter, no zoom-out), [-1, 1] inputs. torchvision reports
21.3 COCO AP on val2017. Data as configs/coco.py.

  python -m ssd_jax.main --config=configs/coco_ssdlite.py --workdir=/tmp/ssdlite
  python -m ssd_jax.main --config=configs/coco_ssdlite.py:small \
    --workdir=/tmp/ssdlite_small

`:small` is the small CPU schedule of `config.apply_small` at 96 px, width
1/4 (SSDLite's default boxes follow the map sizes at any input size).
"""

import os

from ssd_jax import config as config_lib

COCO_TRAIN_IMAGES = 118_287


def get_config(arg: str | None = None):
  """Returns the config; arg "small" shrinks it for a CPU run."""
  coco = os.path.join(os.path.dirname(os.path.abspath(__file__)), "coco.py")
  config = config_lib.config_from_file(coco)
  config.model.backbone = "mobilenet_v3_large"
  config.model.image_size = 320
  config.model.priors = "default"  # The model's own (torchvision's) boxes.
  config.batch_size = 192
  config.learning_rate = 0.15
  config.momentum = 0.9
  config.weight_decay = 4e-5
  config.num_steps = 660 * (COCO_TRAIN_IMAGES // config.batch_size)
  config.lr_schedule = "cosine"
  config.lr_boundaries = ()
  config.warmup_steps = 1_000
  config.warmup_init_factor = 0.001
  config.eval_every = 20 * (COCO_TRAIN_IMAGES // config.batch_size)
  config.data.augment_config = {
    "expand_prob": 0.0,
    "brightness_prob": 0.0,
    "contrast_prob": 0.0,
    "saturation_prob": 0.0,
    "hue_prob": 0.0,
  }
  if config_lib.is_small(arg, __file__):
    config_lib.apply_small(config)
    config.lr_schedule = "piecewise"
  return config
