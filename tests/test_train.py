"""Tests for ssd_jax/train.py: schedule, optimizer, the pmapped step."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssd_jax import losses, matching, models, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, arg=None):
  return train.config_from_file(
    os.path.join(REPO, "configs", f"{name}.py"), arg
  )


def tiny_setup(optimizer="sgd", clip=0.0, lr=0.05):
  config = load_config("shapes", "small")
  config.optimizer = optimizer
  config.grad_clip_norm = clip
  config.learning_rate = lr
  config.warmup_steps = 0
  model = models.SSD(num_classes=4, image_size=64, width=0.125)
  state = train.create_train_state(model, config, jax.random.key(0))
  return config, model, state


def tiny_batch(n, seed=0, m=3):
  """n images [n, 64, 64, 3] with 1..m random boxes each (label 0 padding)."""
  rng = np.random.default_rng(seed)
  images = rng.normal(0, 50, (n, 64, 64, 3)).astype(np.float32)
  xy = rng.uniform(0, 0.6, (n, m, 2))
  wh = rng.uniform(0.15, 0.4, (n, m, 2))
  boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  labels = rng.integers(1, 4, (n, m)).astype(np.int32)
  count = rng.integers(1, m + 1, n)
  labels[np.arange(m)[None] >= count[:, None]] = 0
  boxes[labels == 0] = 0
  return {"image": images, "boxes": boxes, "labels": labels}


def reference_lr(step, base, warmup, f0, boundaries, factor):
  lr = base * factor ** sum(step >= b for b in boundaries)
  if step < warmup:
    lr *= f0 + (1 - f0) * step / warmup
  return lr


@pytest.mark.parametrize(
  "warmup,f0,boundaries", [(0, 0.0, ()), (10, 0.1, (20, 30)), (5, 0.0, (3,))]
)
def test_learning_rate_schedule_matches_reference(warmup, f0, boundaries):
  fn = train.create_learning_rate_schedule(
    0.01, warmup, f0, boundaries, decay_factor=0.1
  )
  for step in range(40):
    want = reference_lr(step, 0.01, warmup, f0, boundaries, 0.1)
    np.testing.assert_allclose(float(fn(step)), want, rtol=1e-6)


def test_learning_rate_schedule_rejects_bad_values():
  with pytest.raises(ValueError, match="increasing"):
    train.create_learning_rate_schedule(0.1, boundaries=(5, 3))
  with pytest.raises(ValueError, match="warmup_steps"):
    train.create_learning_rate_schedule(0.1, warmup_steps=-1)


def test_weight_decay_mask_skips_biases_only():
  params = {
    "conv": {"kernel": np.ones((3, 3, 2, 2)), "bias": np.ones(2)},
    "l2norm": {"scale": np.ones(2)},
  }
  mask = train.weight_decay_mask(params)
  assert mask == {
    "conv": {"kernel": True, "bias": False},
    "l2norm": {"scale": True},
  }


def test_optimizer_applies_caffe_weight_decay_and_momentum():
  config = load_config("shapes", "small")
  config.update(
    optimizer="sgd",
    warmup_steps=0,
    grad_clip_norm=0.0,
    learning_rate=0.1,
    weight_decay=0.01,
    momentum=0.9,
    lr_boundaries=(),
  )
  tx, _ = train.create_optimizer(config)
  params = {"c": {"kernel": jnp.full((2,), 2.0), "bias": jnp.full((2,), 3.0)}}
  grads = {"c": {"kernel": jnp.full((2,), 1.0), "bias": jnp.full((2,), 1.0)}}
  state = tx.init(params)
  # Step 1: v = g + wd w; w -= lr v. Step 2: v = m v + g + wd w.
  w_k, v_k, w_b, v_b = 2.0, 0.0, 3.0, 0.0
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    v_k = 0.9 * v_k + 1.0 + 0.01 * w_k
    w_k -= 0.1 * v_k
    v_b = 0.9 * v_b + 1.0
    w_b -= 0.1 * v_b
  np.testing.assert_allclose(params["c"]["kernel"], w_k, rtol=1e-6)
  np.testing.assert_allclose(params["c"]["bias"], w_b, rtol=1e-6)


def test_gradient_clipping_bounds_the_update():
  config = load_config("shapes", "small")
  config.update(
    optimizer="sgd",
    warmup_steps=0,
    grad_clip_norm=1.0,
    learning_rate=1.0,
    weight_decay=0.0,
    momentum=0.0,
    lr_boundaries=(),
  )
  tx, _ = train.create_optimizer(config)
  params = {"w": jnp.zeros((4,))}
  updates, _ = tx.update({"w": jnp.full((4,), 100.0)}, tx.init(params), params)
  np.testing.assert_allclose(np.linalg.norm(updates["w"]), 1.0, rtol=1e-5)


def test_unknown_optimizer_is_named():
  config = load_config("shapes", "small")
  config.optimizer = "lamb"
  with pytest.raises(ValueError, match="config.optimizer"):
    train.create_optimizer(config)


def reference_update(model, state, batch):
  """One unsharded step written out: vmap(match), loss, grad, optax."""
  priors = jnp.asarray(model.priors())

  def ref_loss(params):
    loc, logits = model.apply({"params": params}, batch["image"])
    loc_t, cls_t = jax.vmap(
      lambda b, lab: matching.match(b, lab, priors, 0.5, (0.1, 0.2))
    )(batch["boxes"], batch["labels"])
    return losses.multibox_loss(loc, logits, loc_t, cls_t, 3.0)

  (loss, parts), grads = jax.value_and_grad(ref_loss, has_aux=True)(
    state.params
  )
  updates, _ = state.tx.update(grads, state.opt_state, state.params)
  return optax.apply_updates(state.params, updates), loss, parts


def test_check_finite_names_the_step():
  train.check_finite(3, {"loss": 1.0, "loc_loss": 0.5, "conf_loss": 0.5})
  for bad in (float("nan"), float("inf")):
    with pytest.raises(train.NonFiniteLossError, match="at step 7"):
      train.check_finite(7, {"loss": bad, "loc_loss": bad, "conf_loss": 0.0})


def test_validate_config_names_bad_fields(tmp_path):
  config = load_config("shapes", "small")
  config.num_steps = 0
  with pytest.raises(ValueError, match="config.num_steps"):
    train.validate_config(config)
  config = load_config("shapes", "small")
  config.eval.metric = "f1"
  with pytest.raises(ValueError, match="config.eval.metric"):
    train.validate_config(config)
  config = load_config("voc_folder", "small")
  with pytest.raises(ValueError, match="config.data.root"):
    train.validate_config(config)
  config.data.root = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="missing"):
    train.validate_config(config)


# Runs with 4 fake CPU devices (XLA_FLAGS must be set before jax starts).
_FOUR_DEVICES = textwrap.dedent(
  """
  import os, sys
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  sys.path.insert(0, {tests!r})
  import jax, numpy as np, pytest
  assert jax.local_device_count() == 4, jax.devices()
  import test_train as t
  from ssd_jax import train
  config, model, state = t.tiny_setup(clip=0.0)
  batch = t.tiny_batch(8, seed=1)
  def split(d):
    return jax.tree.map(lambda x: x.reshape(d, 8 // d, *x.shape[1:]), batch)
  s1, m1 = train.p_train_step(train.replicate(state, 1), split(1))
  s4, m4 = train.p_train_step(train.replicate(state, 4), split(4))
  m1, m4 = train.unreplicate(m1), jax.device_get(m4)
  # 1 device against the unsharded step written out by hand.
  want, loss, parts = t.reference_update(model, state, batch)
  assert int(train.unreplicate(s1.step)) == 1
  np.testing.assert_allclose(m1["loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(m1["num_positives"], parts["num_positives"])
  assert m1["num_positives"] > 0
  np.testing.assert_allclose(m1["lr"], config.learning_rate, rtol=1e-6)
  got = train.unreplicate(s1.params)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for k in m1:  # Every device reports the same global metrics.
    np.testing.assert_allclose(m4[k], m1[k], rtol=1e-5, err_msg=k)
  p0 = jax.tree.leaves(state.params)
  p1 = jax.tree.leaves(train.unreplicate(s1.params))
  p4 = jax.device_get(jax.tree.leaves(s4.params))
  worst = 0.0
  for a, b, c in zip(p0, p1, p4):
    for dev in range(4):
      np.testing.assert_array_equal(c[dev], c[0])  # Replicas agree.
    d1, d4 = b - a, c[0] - a  # The updates.
    scale = np.abs(d1).max() + 1e-12
    worst = max(worst, np.abs(d1 - d4).max() / scale)
  assert worst < 1e-4, worst
  config.batch_size = 6
  with pytest.raises(ValueError, match="multiple of the number of devices"):
    train.validate_config(config)
  print("OK", worst)
  """
)


@pytest.mark.slow
def test_pmapped_step_matches_reference_and_four_devices():
  # 1 device equals the hand-written unsharded step (same float ops up to
  # the pmean over one device: rtol 1e-5). The same global batch of 8 on 1
  # device and split 4 x 2: the updates agree to float32 summation-order
  # error (relative 1e-4 of the largest update of each array).
  code = _FOUR_DEVICES.format(tests=os.path.join(REPO, "tests"))
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  out = subprocess.run(
    [sys.executable, "-c", code],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert out.returncode == 0, out.stderr[-4000:]
  assert "OK" in out.stdout


def _free_port():
  import socket

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
    for _, err in outs
    for line in err.splitlines()
    if "Training finished" in line
  ]
  assert len(finished) == 2
  losses = {line.split("'loss': ")[1].split(",")[0] for line in finished}
  assert len(losses) == 1  # Both processes saw the same global loss.
  from ssd_jax import metrics_writer

  steps = [
    r["step"] for r in metrics_writer.read_metrics(workdir) if "loss" in r
  ]
  assert steps == [1, 2]  # Written once, by process 0.
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))
