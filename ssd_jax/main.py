r"""Command line: train, evaluate or predict with an SSD config.

  python -m ssd_jax.main --config=configs/voc.py --workdir=/tmp/ssd_voc
  python -m ssd_jax.main --config=configs/voc.py --workdir=/tmp/ssd_voc \
    --config.batch_size=16                      # any config override
  python -m ssd_jax.main --config=configs/voc.py --workdir=/tmp/ssd_voc \
    --mode=eval [--step=N]                       # a checkpoint (latest)
  python -m ssd_jax.main --config=configs/voc.py --workdir=/tmp/ssd_voc \
    --mode=predict --images='photos/*.jpg' --output_dir=/tmp/preds

Multi-host: run the same command on every host with
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (or with
none of them where JAX detects the cluster, e.g. Cloud TPU / SLURM: pass
`--distributed`); each host feeds its local devices.
"""

import glob
import logging as logging_std
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ssd_jax import evaluate as eval_lib
from ssd_jax import train, xla_cpu

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", None, "Config file, e.g. configs/voc.py or configs/voc.py:small."
)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"], "What to do.")
flags.DEFINE_integer("step", None, "Checkpoint step for eval/predict.")
flags.DEFINE_list("images", [], "predict: image files or globs.")
flags.DEFINE_string(
  "output_dir", None, "predict: output folder (default WORKDIR/predictions)."
)
flags.DEFINE_float("min_score", 0.3, "predict: lowest score kept.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT.")
flags.DEFINE_integer("num_processes", None, "Multi-host: process count.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process.")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
) -> None:
  """Joins a multi-process JAX run (CPU uses gloo collectives).

  Args:
    coordinator_address: "host:port" of process 0, or None to auto-detect.
    num_processes: total processes, or None to auto-detect.
    process_id: this process's index, or None to auto-detect.
  """
  # Only the CPU client reads this; must be set before any backend starts.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
  )


def expand_images(patterns: list[str]) -> list[str]:
  """Files named by paths or globs, in order, without duplicates.

  Raises:
    FileNotFoundError: naming a pattern that matches nothing.
  """
  paths = []
  for pattern in patterns:
    matches = (
      sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    )
    matches = [m for m in matches if os.path.isfile(m)]
    if not matches:
      raise FileNotFoundError(f"--images: no file matches {pattern!r}")
    paths += [m for m in matches if m not in paths]
  return paths


def run(config, workdir: str, mode: str = "train", **kwargs):
  """Runs one mode; returns its summary (train), EvalResult or records.

  Args:
    config: the full config.
    workdir: the run's folder.
    mode: "train", "eval" or "predict".
    **kwargs: step (eval/predict), images, output_dir, min_score (predict).
  """
  if mode == "train":
    return train.train_and_evaluate(config, workdir)
  model, params, names, step = train.restore_params(
    config, workdir, kwargs.get("step")
  )
  evaluator = eval_lib.Evaluator(model, config, names)
  if mode == "eval":
    return evaluator.run(params, step, workdir)
  output_dir = kwargs.get("output_dir") or os.path.join(workdir, "predictions")
  return eval_lib.predict_images(
    evaluator,
    params,
    expand_images(kwargs.get("images") or []),
    output_dir,
    min_score=kwargs.get("min_score", 0.3),
  )


class _QuietLibraries(logging_std.Filter):
  """Drops INFO chatter of orbax (several lines per checkpoint)."""

  def filter(self, record):
    return record.levelno > logging_std.INFO or "orbax" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  xla_cpu.apply()  # Before JAX starts its backends.
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if FLAGS.distributed or FLAGS.coordinator_address:
    initialize_distributed(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
  logging.info(
    "JAX process %d/%d, %d local / %d global devices (%s)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.default_backend(),
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
  if FLAGS.mode == "train":
    logging.info("Training finished: %s", out)
  elif FLAGS.mode == "eval":
    print(f"step {out.step}: mAP {out.mAP:.4f}")
  else:
    print(f"{len(out)} image(s) -> {FLAGS.output_dir or FLAGS.workdir}")


if __name__ == "__main__":
  app.run(main)
