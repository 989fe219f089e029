r"""SSD300 on COCO 2017 (paper schedule: 160k + 40k + 40k iterations).

lr 1e-3 with warm-up, decays x0.1 at 160k and 200k, 240k steps, batch 32;
COCO AP through pycocotools on val2017 (paper test-dev: 23.2 AP, 41.2 AP50).

  python -m ssd_jax.main --config=configs/coco.py --workdir=/tmp/ssd_coco
  python -m ssd_jax.main --config=configs/coco.py \
    --config.data.root=/data/coco --workdir=/tmp/ssd_coco

Data: tfds `coco/2017`, prepared on first use (from the release zips in
`<data_dir>/downloads/manual`, else downloaded), or with `--config.data.root`
the folder of COCO's own layout (`annotations/instances_{train,val}2017.json`,
`train2017/`, `val2017/`): crowd boxes are left out of training and, for
evaluation, ignored as the COCO metric does (README, "Data").
"""

from ssd_jax import config as config_lib


def get_config(arg: str | None = None):
  """Returns the config; arg "small" shrinks it for a CPU run."""
  config = config_lib.base_config()
  config.model.priors = "coco"  # The release's COCO box sizes (21..315 px).
  config.data.source = "tfds_coco"
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.max_boxes = 100
  # "" reads tfds coco/2017 from data_dir ("" = tfds' default), prepared on
  # first use from the zips in tfds_manual_dir ("" = <data_dir>/downloads/
  # manual) or by download; a folder with annotations/instances_*2017.json,
  # train2017/ and val2017/ reads those instead.
  config.data.root = ""
  config.data.data_dir = ""
  config.data.tfds_manual_dir = ""
  config.data.count_boxes = True  # Log the box counts (one pass) at start.
  config.num_steps = 240_000
  config.lr_boundaries = (160_000, 200_000)
  config.eval_every = 20_000
  config.eval.metric = "coco"
  config.eval.use_07_metric = False
  if config_lib.is_small(arg, __file__):
    config_lib.apply_small(config)
    config.model.priors = "default"  # The paper's rule at the small size.
  return config
