r"""Command line: train, evaluate or predict with an SSD config.

  python -m ssd_jax.main --config=configs/voc.py --workdir=/tmp/ssd_voc
  ... --config.batch_size=16                   # any config override
  ... --mode=eval [--step=N]                   # a checkpoint (latest)
  ... --mode=predict --images='photos/*.jpg' --output_dir=/tmp/preds

Multi-host: the same command on every host with `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I`, or `--distributed` where JAX detects the
cluster (Cloud TPU, SLURM); each host feeds its local devices.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from ssd_jax import evaluator, predict, runtime, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", None, "Config file, e.g. configs/voc.py or configs/voc.py:small."
)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"], "What to do.")
flags.DEFINE_integer("step", None, "Checkpoint step for eval/predict.")
flags.DEFINE_list("images", [], "predict: image files or globs.")
flags.DEFINE_string("output_dir", None, "predict: default WORKDIR/predictions")
flags.DEFINE_float("min_score", 0.3, "predict: lowest score kept.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT.")
flags.DEFINE_integer("num_processes", None, "Multi-host: process count.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, mode: str = "train", **kwargs):
  """Runs `mode`; returns the train summary, the EvalResult or the records.

  `kwargs`: step (eval/predict), images, output_dir, min_score (predict).
  """
  if mode == "train":
    return train.train_and_evaluate(config, workdir)
  model, params, names, step = train.restore_params(
    config, workdir, kwargs.get("step")
  )
  ev = evaluator.Evaluator(model, config, names)
  if mode == "eval":
    return ev.run(params, step, workdir)
  return predict.predict_images(
    ev,
    params,
    predict.expand_images(kwargs.get("images") or []),
    kwargs.get("output_dir") or os.path.join(workdir, "predictions"),
    min_score=kwargs.get("min_score", 0.3),
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.setup(
    FLAGS.distributed,
    FLAGS.coordinator_address,
    FLAGS.num_processes,
    FLAGS.process_id,
  )
  out = run(
    FLAGS.config,
    FLAGS.workdir,
    FLAGS.mode,
    step=FLAGS.step,
    images=FLAGS.images,
    output_dir=FLAGS.output_dir,
    min_score=FLAGS.min_score,
  )
  if FLAGS.mode == "eval":
    out = f"step {out.step}: mAP {out.mAP:.4f}"
  elif FLAGS.mode == "predict":
    out = f"{len(out)} image(s) predicted"
  print(f"{FLAGS.mode} finished: {out}")


if __name__ == "__main__":
  app.run(main)
