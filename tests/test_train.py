"""Tests for ssd_jax/train.py: the loop, resumption, stops, multi-host."""

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap

import flax
import jax
import numpy as np
import pytest
from conftest import REPO, load_config
from PIL import Image

from ssd_jax import checkpoint as ckpt_lib
from ssd_jax import default_boxes as db
from ssd_jax import metrics_writer, models, optim, train
from ssd_jax import step as step_lib

DATA = os.path.join(REPO, "tests", "data")


def test_check_finite_names_the_step():
  train.check_finite(3, {"loss": 1.0, "loc_loss": 0.5, "conf_loss": 0.5})
  for bad in (float("nan"), float("inf")):
    with pytest.raises(train.NonFiniteLossError, match="at step 7"):
      train.check_finite(7, {"loss": bad, "loc_loss": bad, "conf_loss": 0.0})


class _Initialisers(flax.linen.Module):
  """Every initialiser kind the models use, in one small module."""

  image_size: int = 8

  @flax.linen.compact
  def __call__(self, x):
    nn = flax.linen
    he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    x = nn.Conv(4, (3, 3), kernel_init=nn.initializers.xavier_uniform())(x)
    x = nn.Conv(4, (3, 3), kernel_init=he_normal)(x)
    x = nn.BatchNorm(use_running_average=True)(x)
    x = x * self.param("scale", nn.initializers.constant(20.0), (4,))
    return nn.Dense(3, kernel_init=nn.initializers.normal(0.03))(x)


def test_init_variables_gives_jits_values_bit_for_bit():
  # Compiled with less optimisation (INIT_COMPILER_OPTIONS), the same bits
  # as a plain jit of model.init: uniform, normal and constant initialisers
  # (level 0 changed the last bit of a few normal draws).
  model = _Initialisers()
  x = np.zeros((1, 8, 8, 3), np.float32)
  for seed in range(3):
    key = jax.random.key(seed)
    got = train.init_variables(model, key)
    want = jax.jit(model.init)(key, x)
    assert set(got) == {"params", "batch_stats"}
    leaves = jax.tree.leaves(want)
    assert len(leaves) == len(jax.tree.leaves(got)) == 11
    for a, b in zip(jax.tree.leaves(got), leaves, strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  params = got["params"]
  kernels = [params[k]["kernel"] for k in ("Conv_0", "Conv_1", "Dense_0")]
  assert len({float(np.std(k)) for k in kernels}) == 3  # Not one draw.


def test_train_writes_metrics_results_pictures(shapes_run):
  workdir, stdout = shapes_run
  assert "step 3/3 loss" in stdout and "img/s" in stdout and "ETA" in stdout
  records = metrics_writer.read_metrics(workdir)
  losses = [r for r in records if "loss" in r]
  assert [r["step"] for r in losses] == [1, 2, 3]
  for key in ("loc_loss", "conf_loss", "num_positives", "lr", "grad_norm"):
    assert all(math.isfinite(r[key]) for r in losses), key
  assert [r["step"] for r in records if "mAP" in r] == [2, 3]
  with open(os.path.join(workdir, "eval_results.json")) as f:
    result = json.load(f)
  assert result["step"] == 3
  names = load_config("shapes", "small")
  assert set(result["per_class_ap"]) <= {
    "circle",
    "square",
    "triangle",
    "diamond",
    "cross",
    "ring",
  }
  assert result["mAP"] is None or 0.0 <= result["mAP"] <= 1.0
  del names
  for pic in ("pr_curves.png", "detections.png"):
    assert Image.open(os.path.join(workdir, "pictures", pic)).size[0] > 0
  events = os.listdir(os.path.join(workdir, "tensorboard"))
  assert any(e.startswith("events.out.tfevents") for e in events)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]


def test_bad_config_values_give_clear_messages(tmp_path):
  config = load_config("shapes", "small")
  config.data.source = "imagenet"
  with pytest.raises(ValueError, match="data.source"):
    train.train_and_evaluate(config, str(tmp_path / "a"))
  config = load_config("voc_folder", "small")
  config.data.root = str(tmp_path / "no_such_folder")
  with pytest.raises(FileNotFoundError, match="config.data.root"):
    train.train_and_evaluate(config, str(tmp_path / "b"))
  config = load_config("shapes", "small")
  config.batch_size = 0
  with pytest.raises(ValueError, match="config.batch_size"):
    train.train_and_evaluate(config, str(tmp_path / "c"))


@pytest.mark.slow
def test_one_step_train_and_eval_on_mock_tfds_voc(tmp_path, mock_tfds):
  config = load_config("voc", "small")
  config.model.image_size = 64
  config.model.width = 0.125
  config.batch_size = 2
  config.num_steps = 1
  config.checkpoint_every = 0
  config.eval.batch_size = 4
  config.eval.num_pictures = 2
  config.data.update(
    tfds_skip_decoding=False,
    train_split="2007:train",
    eval_split="2007:test",
    shuffle_buffer=8,
  )
  with mock_tfds(num_examples=4):
    summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == 1 and math.isfinite(summary["loss"])
  with open(os.path.join(tmp_path, "eval_results.json")) as f:
    result = json.load(f)
  assert result["step"] == 1 and result["num_images"] == 4
  assert (
    len(result["per_class_ap"]) == 20 and "aeroplane" in result["per_class_ap"]
  )


def tiny_config(steps):
  config = load_config("shapes", "small")
  config.num_steps = steps
  config.checkpoint_every = 2
  config.eval_every = 0
  config.keep_checkpoints = 5
  return config


def final_params(workdir):
  ckpt = ckpt_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"), read_only=True
  )
  step = ckpt.latest_step()
  params = ckpt.restore_raw(step)["params"]
  ckpt.close()
  return step, params


_KILLED_RUN = textwrap.dedent(
  """
  import os, signal, sys
  sys.path.insert(0, {tests!r})
  import test_train as t
  from ssd_jax import checkpoint, train
  save = checkpoint.Checkpointer.save
  def save_then_die(self, step, state, metrics=None):
    save(self, step, state, metrics)
    if step == 2:
      os.kill(os.getpid(), signal.SIGKILL)
  checkpoint.Checkpointer.save = save_then_die
  train.train_and_evaluate(t.tiny_config(4), {workdir!r})
  """
)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
  killed = str(tmp_path / "killed")
  code = _KILLED_RUN.format(tests=os.path.join(REPO, "tests"), workdir=killed)
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
  assert final_params(killed)[0] == 2
  summary = train.train_and_evaluate(tiny_config(4), killed)  # Resumes.
  assert summary["step"] == 4
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(tiny_config(4), straight)
  step_a, resumed = final_params(killed)
  step_b, uninterrupted = final_params(straight)
  assert step_a == step_b == 4
  flat_a = flax.traverse_util.flatten_dict(resumed)
  flat_b = flax.traverse_util.flatten_dict(uninterrupted)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:  # Same data, same order, same program: bit-identical.
    np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=str(k))
  # Metrics of the resumed run continue the log (steps 1, 2, then 3, 4).
  steps = [
    r["step"] for r in metrics_writer.read_metrics(killed) if "loss" in r
  ]
  assert steps == [1, 2, 3, 4]
  # A finished run started again only evaluates.
  again = train.train_and_evaluate(tiny_config(4), straight)
  assert again["step"] == 4 and again["loss"] is None
  assert final_params(straight)[0] == 4


def test_sigterm_saves_and_stops(tmp_path, monkeypatch):
  step_fn = step_lib.p_train_step

  def step_then_term(*args):
    out = step_fn(*args)
    if int(out[0].step[0]) == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    return out

  monkeypatch.setattr(step_lib, "p_train_step", step_then_term)
  config = tiny_config(10)
  config.checkpoint_every = 0
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary["step"] == 3
  assert final_params(str(tmp_path))[0] == 3
  assert signal.getsignal(signal.SIGTERM) is not None


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_run_on_localhost(tmp_path):
  # jax.distributed over 2 CPU processes (gloo collectives), 1 device each.
  workdir = str(tmp_path / "run")
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "ssd_jax.main",
        "--config=configs/shapes.py:small",
        f"--workdir={workdir}",
        f"--coordinator_address=localhost:{port}",
        "--num_processes=2",
        f"--process_id={i}",
        "--config.num_steps=2",
        "--config.checkpoint_every=0",
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err[-4000:]
  finished = [
    line
    for out, _ in outs
    for line in out.splitlines()
    if line.startswith("train finished: ")
  ]
  assert len(finished) == 2
  losses = {line.split("'loss': ")[1].split(",")[0] for line in finished}
  assert len(losses) == 1  # Both processes saw the same global loss.
  steps = [
    r["step"] for r in metrics_writer.read_metrics(workdir) if "loss" in r
  ]
  assert steps == [1, 2]  # Written once, by process 0.
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))


def test_restores_a_checkpoint_written_before_the_redesign(tmp_path):
  # tests/data/pre_redesign_checkpoint was written by the code of commit
  # d8675ba (TrainState with apply_fn/tx/match_fn fields, models/vgg.py,
  # the old train.py); the leaf sums were recorded by that code too.
  with open(os.path.join(DATA, "pre_redesign_checkpoint.json")) as f:
    want = json.load(f)["leaf_sums"]
  config = load_config("shapes", "small")
  config.model.width = 0.0625
  config.optimizer = "sgd"
  model = models.from_config(config.model, num_classes=7)
  tx, _ = optim.create_optimizer(config)
  folder = os.path.join(DATA, "pre_redesign_checkpoint")
  ckpt = ckpt_lib.Checkpointer(folder, read_only=True)
  try:
    state = ckpt.restore(2, train.abstract_state(model, tx))
  finally:
    ckpt.close()
  got = flax.traverse_util.flatten_dict(
    flax.serialization.to_state_dict(state), sep="/"
  )
  assert sorted(got) == sorted(want)
  for key, total in want.items():
    np.testing.assert_allclose(
      np.asarray(got[key], np.float64).sum(), total, rtol=1e-6, err_msg=key
    )
  # And the restored parameters run in the new model.
  size = model.image_size
  loc, logits = model.apply(
    {"params": state.params}, np.zeros((1, size, size, 3), np.float32)
  )
  assert loc.shape == (1, model.priors().shape[0], 4)
  assert np.isfinite(np.asarray(logits)).all()
  # A workdir holding it resumes through train_and_evaluate.
  workdir = tmp_path / "old"
  workdir.mkdir()
  os.symlink(folder, workdir / "checkpoints")
  model2, variables, names, step = train.restore_params(config, str(workdir))
  params = variables["params"]
  assert model2 == model and step == 2 and len(names) + 1 == 7
  assert jax.tree.structure(params) == jax.tree.structure(state.params)


# --- Default boxes fitted at the start of training --------------------------


def _fitted_config():
  config = load_config("shapes", "small")  # 64 px: maps (8, 4, 2, 1).
  config.model.priors = "fitted"
  return config


def test_fit_priors_stores_the_boxes_and_restore_params_reads_them(tmp_path):
  workdir = str(tmp_path)
  config = _fitted_config()
  fitted = train.fit_priors(config, workdir)
  stored = train.read_fitted_priors(workdir)
  assert stored is not None and stored != models.default_prior_config(64)
  assert fitted.model.prior_min_sizes == stored.min_sizes
  assert fitted.model.prior_max_sizes == stored.max_sizes
  assert not config.model.prior_min_sizes  # The caller's config is kept.
  with open(os.path.join(workdir, train.DEFAULT_BOXES_FILE)) as f:
    record = json.load(f)
  assert record["coverage_after"] >= record["coverage_before"]
  assert record["fitted_to"].endswith("boxes of split 'train'")
  # A checkpoint of the fitted model, as training writes it.
  model, _ = train.build(fitted, workdir)
  tx, _ = optim.create_optimizer(config)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  ckpt.save(1, train.abstract_state(model, tx))
  ckpt.close()
  # Other data, or a config asking for other boxes: the stored boxes stay.
  config.data.min_object_size = 0.4
  assert train.fit_priors(config, workdir).model.prior_min_sizes == (
    stored.min_sizes
  )
  for priors in ("fitted", "default"):
    config.model.priors = priors
    restored, _, _, step = train.restore_params(config, workdir)
    assert step == 1
    np.testing.assert_array_equal(restored.priors(), db.prior_boxes(stored))
  # Without priors="fitted" nothing is fitted or written.
  plain = load_config("shapes", "small")
  assert train.fit_priors(plain, str(tmp_path / "plain")) is plain
  assert train.read_fitted_priors(str(tmp_path / "plain")) is None


def test_fitted_boxes_file_errors_name_the_file(tmp_path):
  path = tmp_path / train.DEFAULT_BOXES_FILE
  path.write_text('{"image_size": 64}')
  with pytest.raises(ValueError, match="default_boxes.json: not a default"):
    train.read_fitted_priors(str(tmp_path))
  config = load_config("shapes", "small")
  path.write_text(json.dumps(models.default_prior_config(96)._asdict()))
  with pytest.raises(ValueError, match="default_boxes.json holds default"):
    train.build(config, str(tmp_path))
  # Sizes given in the config are stored as they are, not fitted.
  config = _fitted_config()
  config.model.prior_min_sizes = (4.0, 8.0, 20.0, 40.0)
  config.model.prior_max_sizes = (8.0, 20.0, 40.0, 70.0)
  train.fit_priors(config, str(tmp_path / "given"))
  stored = train.read_fitted_priors(str(tmp_path / "given"))
  assert stored.min_sizes == (4.0, 8.0, 20.0, 40.0)


def test_train_and_evaluate_fits_before_building(tmp_path, monkeypatch):
  seen = []

  class Built(Exception):
    pass

  def build(config, workdir=None):
    seen.append((config, workdir))
    raise Built

  monkeypatch.setattr(train, "build", build)
  with pytest.raises(Built):
    train.train_and_evaluate(_fitted_config(), str(tmp_path))
  ((config, workdir),) = seen
  assert workdir == str(tmp_path) and config.model.priors == "fitted"
  stored = train.read_fitted_priors(workdir)
  assert config.model.prior_min_sizes == stored.min_sizes


def test_stop_request_agrees_every_few_steps_across_processes(monkeypatch):
  # One process: a signal stops after the step in progress.
  stop = train._StopRequest(every=3)
  assert not stop.requested(1)
  stop._handle(signal.SIGTERM, None)
  assert stop.requested(1) and stop.requested(2)
  # Several: only every 3rd step, and then whenever any process was
  # signalled (the all-gathered flags; the real collective runs in
  # tests/test_multihost.py).
  gathered = []

  def allgather(flag):
    gathered.append(int(flag))
    return np.asarray([0, int(flag)])  # This process's flag, and another's.

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(train.multihost_utils, "process_allgather", allgather)
  quiet, signalled = train._StopRequest(every=3), stop
  assert [quiet.requested(s) for s in (1, 2, 3)] == [False] * 3
  assert [signalled.requested(s) for s in (4, 5, 6)] == [False, False, True]
  assert gathered == [0, 1]  # Steps 3 and 6 only.
  assert train._StopRequest().every == train.STOP_AGREEMENT_EVERY


def _by_field(choices):
  return {c.field: c for c in choices}


def _plan(steps):
  """A quick-recipe plan of `steps` steps: the fields a re-plan changes."""
  from ssd_jax import budget, recipe

  follow = budget.follow_steps(steps, "piecewise")
  return [
    recipe.Choice("lr_schedule", "piecewise", "", "recipe"),
    recipe.Choice("num_steps", steps, "the plan", "recipe"),
    *(recipe.Choice(f, v, r, "recipe") for f, (v, r) in follow.items()),
  ]


class _Clock:
  """time.monotonic, moved by hand."""

  def __init__(self, now):
    self.now = now

  def monotonic(self):
    return self.now


def _loop(replan, clock, seconds, until, pauses=None):
  """The training loop's calls to `replan` for steps 1..until, step k
  taking seconds(k) and followed by pauses[k] seconds of evaluating or
  saving; {step: what after_step returned} where it was not None."""
  plans = {}
  for step in range(1, until + 1):
    clock.now += seconds(step)
    if (plan := replan.after_step(step)) is not None:
      plans[step] = plan
    if step in (pauses or {}):
      clock.now += pauses[step]
      replan.resume()
  return plans


def test_replan_times_the_steps_twice_leaving_out_compiling_and_saving(
  monkeypatch,
):
  from ssd_jax import budget

  clock = _Clock(30.0)  # 30 s of start-up.
  monkeypatch.setattr(train, "time", clock)
  replan = train._Replan.create(_plan(1000), 0, start=0.0)
  assert replan is not None and not replan.done

  # Step 1 compiles (20 s), steps run 0.5 s; after the first re-plan (step
  # 41; the schedule's steps are an input of the compiled step: nothing
  # compiles again) the machine runs 1.5x slower; saving at the new plan's
  # first checkpoint takes 7 s.
  def seconds(step):
    return 20.5 if step == 1 else 0.5 if step <= 41 else 0.75

  plans = _loop(replan, clock, seconds, 700, pauses={186: 7.0})
  assert sorted(plans) == [41, 372] and replan.done
  # First: steps 11-40 at 0.5 s, 70.5 s gone (20 s of them compiling, in
  # the time gone but not to come): (540 - 70.5 - 2 * 12) / 0.5 = 891 more.
  first, restart = plans[41]
  assert not restart
  n1 = _by_field(first)["num_steps"]
  assert n1.value == 41 + 891 == 932
  assert n1.reason.startswith("re-planned at step 41") and "500 ms" in n1.reason
  assert _by_field(first)["checkpoint_every"].value == 186
  # Late, at 40% of 932: steps 42-372 at 0.75 s (the 7 s save left out),
  # 325.75 s gone: 253 more.
  assert 372 == int(budget.LATE_REPLAN_AT * 932)
  gone = 70.5 + 331 * 0.75 + 7.0
  assert gone == 325.75
  late, restart = plans[372]
  assert not restart
  n2 = _by_field(late)["num_steps"]
  assert n2.value == 372 + int((540 - gone - 2 * 12) / 0.75) == 625
  assert n2.reason.startswith("re-planned at step 372")
  assert "750 ms" in n2.reason
  assert n2.reason.count("re-planned") == 2  # the history, newest first
  assert _by_field(late)["lr_boundaries"].value == (468, 575)


def test_replan_of_a_run_started_again_is_the_late_one_only(monkeypatch):
  clock = _Clock(100.0)
  monkeypatch.setattr(train, "time", clock)
  # Steps at the speed its plan assumed: the late re-plan keeps them.
  replan = train._Replan.create(_plan(832), 0, start=0.0, first=False)
  assert replan.late_from == 10 and replan.late_step == 332
  assert _loop(replan, clock, lambda k: 0.5, 832) == {} and replan.done
  # Slower: re-planned at 40% from steps 11-400 (after step 1's compiling
  # and the warm-up), nothing to compile after it.
  clock = _Clock(100.0)
  monkeypatch.setattr(train, "time", clock)
  replan = train._Replan.create(_plan(1000), 0, start=0.0, first=False)
  plans = _loop(replan, clock, lambda k: 20.5 if k == 1 else 0.75, 400)
  ((step, (late, restart)),) = plans.items()
  gone = 100.0 + 20.5 + 399 * 0.75
  left = 540 - gone - 2 * 12
  assert step == 400 and not restart
  assert _by_field(late)["num_steps"].value == 400 + int(left / 0.75) == 528
  # Too short a run for both: none (see _Replan).
  assert train._Replan.create(_plan(399), 0, start=0.0) is None


def _mini_quick_folder(tmp_path, num_pictures):
  """Writes a mini VOC2007 folder (8 trainval, 4 test images) under
  tmp_path; returns a function giving a fresh `voc_folder:small` config
  (the quick recipe) on it, at width 1/8 and batch 4 (a fast test)."""
  import minidata

  minidata.write_vocdevkit(
    str(tmp_path / "devkit"), years=("2007",), num_images=8, num_test=4
  )

  def config_for_folder():
    config = load_config("voc_folder", "small")
    assert config.recipe == "quick"
    config.data.root = str(tmp_path / "devkit" / "VOC2007")
    config.data.train_split, config.data.eval_split = "trainval", "test"
    config.model.width = 0.125
    config.batch_size = 4
    config.eval.batch_size = 4
    config.eval.num_pictures = num_pictures
    return config

  return config_for_folder


@pytest.mark.slow
def test_quick_recipe_chooses_once_replans_and_eval_rebuilds_the_model(
  tmp_path, monkeypatch
):
  from ssd_jax import budget, recipe

  config_for_folder = _mini_quick_folder(tmp_path, num_pictures=2)

  config = config_for_folder()
  config.eval_every = 0  # As --config.eval_every=0 would: kept.
  config.model.image_size = 64  # Kept too (small: a fast test).
  fixed = {"eval_every", "model.image_size"}
  # The steps are the recipe's: re-planned after 1 + 2 timed steps, for a
  # run with no time left, to the floor of a third of the plan, and again
  # at 40% of those (still no time: one more step, or a third).
  monkeypatch.setattr(budget, "REPLAN_WARMUP_STEPS", 1)
  monkeypatch.setattr(budget, "REPLAN_STEPS", 2)
  monkeypatch.setattr(budget, "RUN_SECONDS", 0.0)
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(config, workdir, fixed=fixed)
  choices = {c.field: c for c in recipe.read(workdir)}
  # The plan (at the probed machine speed) is quoted in the re-plans'
  # reason, the latest first.
  reason = choices["num_steps"].reason
  late_at, first_at = map(int, re.findall(r"re-planned at step (\d+)", reason))
  replanned, planned = map(int, re.findall(r"planned (\d+): ", reason))
  assert "for this machine" in reason  # the plan's reason, with its speed
  assert first_at == 4 and planned >= 30 and replanned == -(-planned // 3)
  assert late_at == int(budget.LATE_REPLAN_AT * replanned) >= 5 + 2
  want = max(late_at + 1, -(-replanned // 3))
  assert want > 4 and want != replanned
  assert summary["step"] == want
  assert choices["num_steps"].value == want
  assert choices["warmup_steps"].value == max(1, want // 20)
  assert choices["lr_boundaries"].value == (int(0.75 * want), int(0.92 * want))
  assert choices["checkpoint_every"].value == want // 5
  assert choices["eval_every"].value == 0
  assert choices["model.priors"].value == "fitted"
  assert choices["model.batch_norm"].value is True
  size = choices["model.image_size"].value
  assert size == 64  # Read back (source "workdir"); the file says why:
  with open(os.path.join(workdir, recipe.RECIPE_FILE)) as f:
    sources = {c["field"]: c["source"] for c in json.load(f)["choices"]}
  assert sources["model.image_size"] == "command line"
  assert sources["data.augment_config"] == sources["num_steps"] == "recipe"
  assert os.path.exists(os.path.join(workdir, train.DEFAULT_BOXES_FILE))
  # Eval / predict / export: the file config (96 px) is rebuilt at the size
  # and with the boxes the run trained with.
  model, variables, _, step = train.restore_params(config_for_folder(), workdir)
  assert step == want and model.image_size == size and model.batch_norm
  # The BatchNorm VGG's running statistics were trained and restored.
  stats = variables["batch_stats"]["vgg"]["conv1_1_bn"]
  assert float(np.abs(np.asarray(stats["mean"])).max()) > 0
  fitted = train.read_fitted_priors(workdir)
  np.testing.assert_allclose(
    model.resolved_prior_config().min_sizes, fitted.min_sizes
  )
  # Eval, predict and export take the run's choices (the test-time mirror
  # among them), and --mode=eval scores the run's last evaluation again.
  trained = train.trained_config(config_for_folder(), workdir)
  assert trained.eval.flip == choices["eval.flip"].value
  assert trained.num_steps == want and trained.model.stem == "space_to_depth"
  from ssd_jax import main

  result = main.run(config_for_folder(), workdir, mode="eval")
  assert result.step == want
  assert result.mAP == pytest.approx(summary["mAP"], abs=1e-6)


@pytest.mark.slow
def test_quick_recipe_starts_again_at_the_size_its_own_steps_give(
  tmp_path, monkeypatch
):
  from ssd_jax import budget, recipe

  config_for_folder = _mini_quick_folder(tmp_path, num_pictures=0)

  # The size rule as the probe sees this machine (64 px) and as the run's
  # own steps do (96 px); the rule itself is tested in test_recipe.py.
  rule = recipe._image_size

  def image_size(stats, config, fixed, speed):
    reason = rule(stats, config, fixed, speed)[1]
    return (64 if speed.step_seconds is None else 96), reason

  monkeypatch.setattr(recipe, "_image_size", image_size)
  monkeypatch.setattr(budget, "REPLAN_WARMUP_STEPS", 1)
  monkeypatch.setattr(budget, "REPLAN_STEPS", 2)
  monkeypatch.setattr(budget, "RUN_SECONDS", 0.0)  # No time left: a third.
  config = config_for_folder()
  config.eval_every = 0
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(config, workdir, fixed={"eval_every"})
  choices = _by_field(recipe.read(workdir))
  size = choices["model.image_size"]
  assert size.value == 96
  assert size.reason.startswith("re-chosen at step 4 from the run's own")
  assert "the probe's had given 64 px" in size.reason
  # Started again at step 0, its steps fitted to the time left.
  # Then re-planned at 40% of those (no time left: one more step).
  steps = choices["num_steps"]
  late_at, at = map(int, re.findall(r"re-planned at step (\d+)", steps.reason))
  fitted, planned = map(int, re.findall(r"planned (\d+): ", steps.reason))
  assert at == 0 and fitted == -(-planned // 3)
  assert late_at == int(budget.LATE_REPLAN_AT * fitted) >= 1 + 2
  want = max(late_at + 1, -(-fitted // 3))
  assert want > 4 and summary["step"] == steps.value == want
  assert choices["warmup_steps"].value == max(1, want // 20)
  assert choices["checkpoint_every"].value == want // 5
  # The default boxes were fitted again, at 96 px, and the run's model,
  # checkpoint and evaluation are at 96 px.
  assert train.read_fitted_priors(workdir).image_size == 96
  model, _, _, step = train.restore_params(config_for_folder(), workdir)
  assert model.image_size == 96 and step == want
  assert summary["mAP"] is not None
