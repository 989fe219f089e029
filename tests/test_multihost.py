"""Multi-process integration tests: local processes joined by
`jax.distributed` (gloo CPU collectives), one CPU device each.

One file for the runs that need several processes at once, across modules:
disjoint training input and sharded evaluation (`ssd_jax.data.pipeline`,
`ssd_jax.evaluator`, `ssd_jax.runtime.gather_rows`), the SIGTERM agreement,
checkpoints written by two processes and resumed by one
(`ssd_jax.train`, `ssd_jax.checkpoint`), and the heartbeat that stops the
survivors of a killed process (`ssd_jax.runtime`). `launch` is also the
runnable example of the README's "Running on many hosts".
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import flax
import numpy as np
import pytest
from conftest import REPO, load_config

from ssd_jax import checkpoint as ckpt_lib
from ssd_jax import evaluator as eval_lib
from ssd_jax import models, postprocess, train
from ssd_jax.data import pipeline

TESTS = os.path.join(REPO, "tests")

# Every process: join the run, then the test's code. `{port}`, `{body}`.
_PROCESS = """
import os, sys
sys.path.insert(0, {tests!r})
PID = int(sys.argv[1])
from ssd_jax import runtime
runtime.apply_xla_cpu_flags()  # As the entry points do, first.
runtime.initialize_distributed(
    "localhost:{port}", {n}, PID, heartbeat_timeout_s={heartbeat})
import jax
assert jax.process_count() == {n} and jax.device_count() == {n}
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(body: str, n: int = 2, heartbeat: int = 30, **fmt) -> list:
  """Starts `n` local processes running `body` (formatted with `fmt`; the
  process index is `PID`) after `runtime.initialize_distributed`.

  Returns:
    The `subprocess.Popen`s (stdout and stderr piped, text).
  """
  code = _PROCESS.format(
    tests=TESTS, port=_free_port(), n=n, heartbeat=heartbeat
  ) + textwrap.dedent(body).format(**fmt)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return [
    subprocess.Popen(
      [sys.executable, "-c", code, str(i)],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(n)
  ]


def finish(procs, timeout: float = 600) -> list[tuple[int, str, str]]:
  """(returncode, stdout, stderr) of each process; kills all on timeout."""
  try:
    outs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return [(p.returncode, o, e) for p, (o, e) in zip(procs, outs, strict=True)]


def shards_config():
  """shapes:small with unaugmented training input (an image's pixels name
  it), and an eval split of 7 images: 3 + 4 over two processes, in
  batches of 2 (padded)."""
  config = load_config("shapes", "small")
  config.data.augment = False
  config.data.num_eval = 7
  config.eval.batch_size = 2
  return config


class MadeUpDetector(eval_lib.Evaluator):
  """An Evaluator whose detections are made up from each image's pixels
  (100 random boxes seeded by their hash): scores with no ties and a
  non-zero mAP without a trained network, the same in any process."""

  def detect(self, params, images, valid=None):
    del params
    valid = np.ones(len(images), bool) if valid is None else valid
    out = []
    for image in np.asarray(images)[np.asarray(valid, bool)]:
      seed = hashlib.sha1(image.tobytes()).digest()[:8]
      rng = np.random.default_rng(int.from_bytes(seed, "little"))
      centre = rng.uniform(0.2, 0.8, (100, 2))
      size = rng.uniform(0.1, 0.5, (100, 2))
      boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
      out.append(
        postprocess.Detections(
          np.clip(boxes, 0, 1).astype(np.float32),
          rng.uniform(0, 1, 100).astype(np.float32),
          rng.integers(1, len(self.class_names) + 1, 100).astype(np.int32),
        )
      )
    return out


def shards_report() -> dict:
  """What a process reads and evaluates under `shards_config`.

  Returns:
    {"train": per step, the sha1 of each of this process's images, over
    two epochs; "eval": its EvalResult fields (the whole set's)}.
  """
  config = shards_config()
  model, names = train.build(config)
  steps = 2 * config.data.num_train // config.batch_size
  stream = pipeline.create_train_iterator(
    config.data,
    image_size=model.image_size,
    global_batch_size=config.batch_size,
    seed=config.seed,
    normalization=models.normalization_of(model),
  )
  hashes = []
  for _ in range(steps):
    images = next(stream)["image"]  # [D, b, S, S, 3]
    images = images.reshape(-1, *images.shape[2:])
    hashes.append([hashlib.sha1(x.tobytes()).hexdigest() for x in images])
  result = MadeUpDetector(model, config, names).run(None, 0)
  return {
    "train": hashes,
    "eval": {
      "mAP": result.mAP,
      "per_class_ap": result.per_class_ap,
      "num_images": result.num_images,
    },
  }


_SHARDS = """
import json
import numpy as np
import test_multihost as t
# gather_rows: uneven rows, none on process 0, 64-bit values exact.
big = 2**40 + np.arange(6 * PID, dtype=np.int64).reshape(-1, 3)
rows = runtime.gather_rows({{"a": big, "b": np.full(PID, PID == 1)}})
assert rows["a"].dtype == np.int64 and rows["b"].dtype == bool
np.testing.assert_array_equal(rows["a"], 2**40 + np.arange(6).reshape(2, 3))
assert rows["b"].tolist() == [True]
print("REPORT", json.dumps(t.shards_report()))
"""


@pytest.mark.slow
def test_two_processes_read_disjoint_input_and_share_one_evaluation():
  outs = finish(launch(_SHARDS))
  reports = []
  for rc, out, err in outs:
    assert rc == 0, err[-4000:]
    (line,) = [x for x in out.splitlines() if x.startswith("REPORT ")]
    reports.append(json.loads(line[len("REPORT ") :]))
  one = shards_report()  # This process alone: the reference.
  config = shards_config()
  n, batch = config.data.num_train, config.batch_size
  # Training: at every step the two processes' rows, in process order, are
  # the single-process global batch; disjoint, and each epoch covers every
  # training image exactly once.
  steps = len(one["train"])
  for s in range(steps):
    first, second = reports[0]["train"][s], reports[1]["train"][s]
    assert len(first) == len(second) == batch // 2
    assert first + second == one["train"][s]
  for epoch in range(2):
    seen = {
      p: [h for x in r["train"][epoch * steps // 2 :][: steps // 2] for h in x]
      for p, r in enumerate(reports)
    }
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0] + seen[1])) == len(seen[0] + seen[1]) == n
  # Evaluation: both processes return the single-process result exactly;
  # 7 images, each counted once (3 + 4, the last batch padded).
  assert one["eval"]["num_images"] == 7
  assert pipeline.shard_range(7, (0, 2)) == (0, 3)
  assert pipeline.shard_range(7, (1, 2)) == (3, 7)
  assert one["eval"]["mAP"] > 0  # Made-up detections, a few of them hits.
  for r in reports:
    np.testing.assert_equal(r["eval"], one["eval"])  # NaN == NaN here.


_SIGTERM_ONE = """
import os, signal
from ssd_jax import step, train
import test_multihost as t
train.STOP_AGREEMENT_EVERY = 2
one_step = step.Parallel.step
def step_then_term(self, *args):
  out = one_step(self, *args)
  if PID == 1 and int(jax.device_get(out[0].step)) == 1:
    os.kill(os.getpid(), signal.SIGTERM)  # Process 1 only, after step 1.
  return out
step.Parallel.step = step_then_term
summary = train.train_and_evaluate(t.resume_config("shard_map"), {workdir!r})
print("STOPPED AT", summary["step"])
"""

# One process, two devices: resume the two-process checkpoint under pmap to
# step 6; then the same 6 steps uninterrupted, the loop written out (the
# step's compilation is shared), saved to {straight}.
_RESUME = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, {tests!r})
import jax, numpy as np
assert jax.process_count() == 1 and jax.device_count() == 2
from ssd_jax import models, optim, step, train
from ssd_jax.data import pipeline
import test_multihost as t
config = t.resume_config("pmap")
print("STEP", train.train_and_evaluate(config, {workdir!r})["step"])
model, _ = train.build(config)
settings = step.step_settings(model, config)
params = train.init_variables(model, jax.random.key(config.seed))["params"]
par = step.Parallel.create("pmap")
tx = optim.create_optimizer(config)[0]
state = par.put(step.create_train_state(params, tx))
priors = par.put_broadcast(np.asarray(model.priors(), np.float32))
schedule = par.put_broadcast(optim.config_schedule_steps(config))
stream = pipeline.create_train_iterator(
    config.data, image_size=model.image_size,
    global_batch_size=config.batch_size, seed=config.seed,
    normalization=models.normalization_of(model))
for _ in range(config.num_steps):
  batch = {{k: v for k, v in next(stream).items() if k != "valid"}}
  state, _ = par.step(
      state, par.put_batch(batch), priors, schedule, settings)
t.save_flat({straight!r}, par.get(state.params))
print("STRAIGHT")
"""


def save_flat(path: str, tree) -> None:
  """Writes a parameter tree as an .npz of "a/b/c" keys."""
  flat = flax.traverse_util.flatten_dict(tree, sep="/")
  np.savez(path, **{k: np.asarray(v) for k, v in flat.items()})


def resume_config(parallel: str):
  config = load_config("shapes", "small")
  config.update(num_steps=6, checkpoint_every=0, eval_every=0)
  config.parallel = parallel
  # SGD: the update is linear in the gradient, so summation-order rounding
  # stays rounding (Adam's m / sqrt(v) enlarges it where gradients vanish).
  config.optimizer = "sgd"
  config.eval.num_pictures = 0
  config.data.num_eval = 2  # The final evaluation: kept short.
  return config


def _params(workdir):
  ckpt = ckpt_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"), read_only=True
  )
  try:
    steps = ckpt.all_steps()
    tree = ckpt.restore_raw(steps[-1])
  finally:
    ckpt.close()
  return steps, flax.traverse_util.flatten_dict(tree)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_at_one_step_and_resumes(tmp_path):
  # SIGTERM reaches process 1 after step 1; the agreement at step 2 stops
  # both there, each saving the same step (one checkpoint, written by the
  # two processes through orbax). One process with two devices then
  # resumes it (2 -> 1 processes, shard_map -> pmap) to step 6 and ends
  # with the parameters of an uninterrupted 6-step run (to float32
  # summation order: the bit-exact resume of one process is
  # tests/test_train.py's).
  workdir = str(tmp_path / "stopped")
  straight = str(tmp_path / "straight.npz")
  outs = finish(launch(_SIGTERM_ONE, workdir=workdir))
  for rc, out, err in outs:
    assert rc == 0, err[-4000:]
    assert "STOPPED AT 2" in out, out[-2000:]
  assert "Received signal 15" in outs[1][2]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
  assert _params(workdir)[0] == [2]  # One copy, readable.
  code = _RESUME.format(tests=TESTS, workdir=workdir, straight=straight)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(
    [sys.executable, "-c", code],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-4000:]
  assert "STEP 6" in out.stdout and "STRAIGHT" in out.stdout
  steps, resumed = _params(workdir)
  assert steps == [2, 6]
  with np.load(straight) as f:
    uninterrupted = dict(f)
  resumed = {"/".join(k[1:]): v for k, v in resumed.items() if k[0] == "params"}
  assert resumed.keys() == uninterrupted.keys()
  for k in resumed:  # Same data; 2 x 1 and 1 x 2 devices sum in another
    # order: float32 rounding, relative to each array's largest value.
    a, b = resumed[k], uninterrupted[k]
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), k


_KILLED = """
import os, signal, time
import numpy as np
from jax.experimental import multihost_utils
for i in range(3):  # Both processes are up and talking.
  multihost_utils.process_allgather(np.int32(i))
print("READY", flush=True)
if PID == 1:
  os.kill(os.getpid(), signal.SIGKILL)
time.sleep(300)  # Process 0: busy, in no collective.
"""


@pytest.mark.slow
def test_a_killed_process_stops_the_others_within_the_heartbeat():
  # Process 1 is SIGKILLed while process 0 is busy outside any collective:
  # JAX's coordination service misses its heartbeats for
  # `heartbeat_timeout_s` (5 s here) and terminates process 0 with a
  # message naming the cause, instead of letting it wait forever.
  procs = launch(_KILLED, heartbeat=5)
  procs[1].wait(timeout=300)
  killed_at = time.monotonic()
  (rc0, out0, err0), (rc1, _, _) = finish(procs, timeout=120)
  waited = time.monotonic() - killed_at
  assert rc1 == -signal.SIGKILL
  assert "READY" in out0
  assert rc0 != 0 and waited < 60, (rc0, waited)
  assert "another task died" in err0 or "heartbeat" in err0, err0[-3000:]
