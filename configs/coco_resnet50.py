r"""NVIDIA's SSD300 v1.1 (ResNet-50) on COCO 2017, NVIDIA's recipe.

DeepLearningExamples `PyTorch/Detection/SSD`: SGD momentum 0.9, lr 2.6e-3
per 32 images (here batch 32), a one-epoch linear warm-up, 65 epochs with
x0.1 at epochs 43 and 54, weight decay 5e-4 on kernels only (not on
BatchNorm or biases: `optim.weight_decay_mask`), their augmentation (SSD
min-IoU crops, colour jitter, flip; no zoom-out), ImageNet-normalised
inputs. NVIDIA reports 0.25-0.27 COCO AP on val2017. Data as
configs/coco.py (tfds or `--config.data.root=/path/to/coco`). Start from
ImageNet weights as NVIDIA does:

  python -m ssd_jax.weights --from torchvision-resnet50 resnet50.pth /tmp/r50
  python -m ssd_jax.main --config=configs/coco_resnet50.py \
    --config.init_from=/tmp/r50 --workdir=/tmp/ssd_r50
  python -m ssd_jax.main --config=configs/coco_resnet50.py:small \
    --workdir=/tmp/ssd_r50_small

`:small` keeps the 300 px input (the model's only size) at width 1/8 with
the small schedule of `config.apply_small`.
"""

import os

from ssd_jax import config as config_lib

COCO_TRAIN_IMAGES = 118_287  # tfds coco/2017 train (images w/o boxes too).


def get_config(arg: str | None = None):
  """Returns the config; arg "small" shrinks it for a CPU run."""
  coco = os.path.join(os.path.dirname(os.path.abspath(__file__)), "coco.py")
  config = config_lib.config_from_file(coco)
  config.model.backbone = "resnet50"
  config.model.priors = "default"  # The model's own (NVIDIA's) boxes.
  config.batch_size = 32
  epoch = COCO_TRAIN_IMAGES // config.batch_size  # Steps per epoch.
  config.learning_rate = 2.6e-3 * config.batch_size / 32
  config.warmup_steps = epoch
  config.warmup_init_factor = 0.0
  config.num_steps = 65 * epoch
  config.lr_boundaries = (43 * epoch, 54 * epoch)
  config.eval_every = 5 * epoch
  config.data.augment_config = {
    "expand_prob": 0.0,  # No zoom-out in NVIDIA's pipeline.
    # torchvision ColorJitter(0.125, 0.5, 0.5, 0.05), applied every time.
    "brightness_prob": 1.0,
    "brightness_delta": 0.125 * 255,
    "contrast_prob": 1.0,
    "saturation_prob": 1.0,
    "hue_prob": 1.0,
    "hue_delta": 0.05,
  }
  if config_lib.is_small(arg, __file__):
    config_lib.apply_small(config)
    config.model.image_size = 300
    config.model.width = 0.125
    config.batch_size = 8
  return config
