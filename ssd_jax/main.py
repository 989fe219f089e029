r"""Command line: train, evaluate or predict with an SSD config.

  python -m ssd_jax.main --config=configs/voc.py --workdir=/tmp/ssd_voc
  ... --config.batch_size=16                   # any config override
  ... --mode=eval [--step=N]                   # a checkpoint (latest)
  ... --mode=predict --images='photos/*.jpg' --output_dir=/tmp/preds

Predict exits with status 1 when any image could not be decoded (the
others are still predicted and written; the failures are named at the end
and in failures.json), so scripts and CI notice a bad input; `--nostrict`
exits 0 then, for runs over folders known to hold some bad files.

A dataset that is neither on disk nor downloadable stops the run at once
with exit status 2 and a message saying how to supply it
(`sources.DataNotFoundError`).

Multi-host: the same command on every host with `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I`, or `--distributed` where JAX detects the
cluster (Cloud TPU, SLURM); each host feeds its local devices.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from ssd_jax import config as config_lib
from ssd_jax import evaluator, predict, runtime, train
from ssd_jax.data.sources import DataNotFoundError

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
flags.DEFINE_bool(
  "strict",
  True,
  "predict: exit 1 when any image failed to decode (--nostrict: exit 0).",
)
flags.DEFINE_integer(
  "max_side",
  predict.MAX_SIDE,
  "predict: decode larger images at reduced size (0: never).",
)
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT.")
flags.DEFINE_integer("num_processes", None, "Multi-host: process count.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, mode: str = "train", **kwargs):
  """Runs `mode`; returns the train summary, EvalResult or PredictResult.

  `kwargs`: fixed (train: the config fields set on the command line, which
  the quick recipe keeps), step (eval/predict), images, output_dir,
  min_score, max_side (predict).
  """
  if mode == "train":
    return train.train_and_evaluate(
      config, workdir, fixed=kwargs.get("fixed", ())
    )
  config_lib.check_fields(config)  # Training validates it all itself.
  config = train.trained_config(config, workdir)
  model, variables, names, step = train.restore_params(
    config, workdir, kwargs.get("step")
  )
  ev = evaluator.Evaluator(model, config, names)
  if mode == "eval":
    return ev.run(variables, step, workdir)
  return predict.predict_images(
    ev,
    variables,
    predict.expand_images(kwargs.get("images") or []),
    kwargs.get("output_dir") or os.path.join(workdir, "predictions"),
    min_score=kwargs.get("min_score", 0.3),
    max_side=kwargs.get("max_side", predict.MAX_SIDE) or None,
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
  try:
    out = run(
      FLAGS.config,
      FLAGS.workdir,
      FLAGS.mode,
      fixed=set(config_flags.get_override_values(FLAGS["config"])),
      step=FLAGS.step,
      images=FLAGS.images,
      output_dir=FLAGS.output_dir,
      min_score=FLAGS.min_score,
      max_side=FLAGS.max_side,
    )
  except DataNotFoundError as e:  # Says what to do; a traceback would not.
    print(f"error: {e}", file=sys.stderr)
    return 2
  status = 0
  if FLAGS.mode == "eval":
    out = f"step {out.step}: mAP {out.mAP:.4f}"
  elif FLAGS.mode == "predict":
    status = 1 if out.failed and FLAGS.strict else 0
    out = predict.summary(out)
  print(f"{FLAGS.mode} finished: {out}")
  return status


if __name__ == "__main__":
  app.run(main)
