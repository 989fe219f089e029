"""Tests for ssd_jax/step.py: the state, the settings, the pmapped step."""

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO, load_config

from ssd_jax import losses, matching, models, optim, step, train
from ssd_jax.models import layers


def tiny_setup(optimizer="sgd", clip=0.0, lr=0.05):
  config = load_config("shapes", "small")
  config.optimizer = optimizer
  config.grad_clip_norm = clip
  config.learning_rate = lr
  config.warmup_steps = 0
  model = models.SSD(num_classes=4, image_size=64, width=0.125)
  settings = step.step_settings(model, config)
  params = train.init_variables(model, jax.random.key(0))["params"]
  state = step.create_train_state(params, optim.create_optimizer(config)[0])
  return config, model, state, settings, optim.config_schedule_steps(config)


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


def reference_update(model, state, batch, tx):
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
  updates, _ = tx.update(grads, state.opt_state, state.params)
  return optax.apply_updates(state.params, updates), loss, parts


def run_on_four_devices(script: str) -> None:
  """Runs a script template (`{tests}`: this folder) in a fresh interpreter
  with 4 fake CPU devices (XLA_FLAGS must be set before jax starts); it must
  print "OK"."""
  code = script.format(tests=os.path.join(REPO, "tests"))
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


# Runs with 4 fake CPU devices (XLA_FLAGS must be set before jax starts).
_FOUR_DEVICES = textwrap.dedent(
  """
  import os, sys
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  sys.path.insert(0, {tests!r})
  import jax, numpy as np, pytest
  assert jax.local_device_count() == 4, jax.devices()
  import test_step as t
  from ssd_jax import config as config_lib, optim, step
  config, model, state, settings, sched = t.tiny_setup(clip=0.0)
  priors = np.asarray(model.priors())
  batch = t.tiny_batch(8, seed=1)
  def split(d):
    return jax.tree.map(lambda x: x.reshape(d, 8 // d, *x.shape[1:]), batch)
  s1, m1 = step.p_train_step(
      step.replicate(state, 1), split(1), priors, sched, settings)
  s4, m4 = step.p_train_step(
      step.replicate(state, 4), split(4), priors, sched, settings)
  m1, m4 = step.unreplicate(m1), jax.device_get(m4)
  # 1 device against the unsharded step written out by hand.
  tx = optim.create_optimizer(config)[0]
  want, loss, parts = t.reference_update(model, state, batch, tx)
  assert int(step.unreplicate(s1.step)) == 1
  np.testing.assert_allclose(m1["loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(m1["num_positives"], parts["num_positives"])
  assert m1["num_positives"] > 0
  np.testing.assert_allclose(m1["lr"], config.learning_rate, rtol=1e-6)
  got = step.unreplicate(s1.params)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for k in m1:  # Every device reports the same global metrics.
    np.testing.assert_allclose(m4[k], m1[k], rtol=1e-5, err_msg=k)
  p0 = jax.tree.leaves(state.params)
  p1 = jax.tree.leaves(step.unreplicate(s1.params))
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
    config_lib.validate_config(config, jax.device_count())
  print("OK", worst)
  """
)


@pytest.mark.slow
def test_pmapped_step_matches_reference_and_four_devices():
  # 1 device equals the hand-written unsharded step (same float ops up to
  # the pmean over one device: rtol 1e-5). The same global batch of 8 on 1
  # device and split 4 x 2: the updates agree to float32 summation-order
  # error (relative 1e-4 of the largest update of each array).
  run_on_four_devices(_FOUR_DEVICES)


def test_train_state_holds_state_only():
  config, model, state, settings, _ = tiny_setup()
  assert set(step.TrainState.__dataclass_fields__) == {
    "step",
    "params",
    "opt_state",
    "batch_stats",
  }
  # Every field is data; the VGG model has no statistics (an empty dict: no
  # leaves, so a checkpoint holds step, params and optimizer state).
  assert state.batch_stats == {} and state.variables().keys() == {"params"}
  leaves = jax.tree.leaves(state)
  assert len(leaves) == 1 + len(jax.tree.leaves(state.params)) + len(
    jax.tree.leaves(state.opt_state)
  )
  assert int(state.step) == 0
  # The settings are static and hashable: equal configs, equal settings.
  again = step.step_settings(model, load_config("shapes", "small"))
  config.update(warmup_steps=0)
  assert hash(settings) == hash(step.step_settings(model, config))
  assert again.iou_threshold == 0.5 and again.variances == (0.1, 0.2)
  assert again.neg_pos_ratio == 3.0


def test_replicated_state_compiles_the_step_once(caplog):
  # replicate() lays the copies out as pmap lays out its outputs, so the
  # second call (with the first call's output state) reuses the first
  # compilation; numpy copies used to compile the whole step twice. A
  # re-planned schedule (other warm-up and decay steps) is an input: the
  # same compiled step follows it from the next step on.
  config, model, state, settings, _ = tiny_setup(lr=0.01)
  config.update(warmup_steps=3, warmup_init_factor=0.5)  # A step of its own.
  settings = step.step_settings(model, config)
  schedule = optim.config_schedule_steps(config)
  batch = jax.tree.map(lambda x: x[None], tiny_batch(2, seed=5))
  priors = np.asarray(model.priors())
  p_state = step.replicate(state, 1)
  lrs = []
  with jax.log_compiles(True), caplog.at_level("WARNING"):
    for i in range(5):
      if i == 3:  # Re-planned: 4 warm-up steps, the decay at 4.
        config.update(num_steps=8, warmup_steps=4, lr_boundaries=(4,))
        assert step.step_settings(model, config) == settings
        schedule = optim.config_schedule_steps(config)
      p_state, metrics = step.p_train_step(
        p_state, batch, priors, schedule, settings
      )
      lrs.append(metrics["lr"])
    jax.block_until_ready(lrs)
  lrs = [float(np.asarray(lr)[0]) for lr in lrs]
  compiles = [
    r.getMessage()
    for r in caplog.records
    if r.getMessage().startswith("Finished XLA compilation")
  ]
  assert len(compiles) == 1, compiles
  assert int(step.unreplicate(p_state.step)) == 5
  # Steps 0-2 warm up over 3 steps from 0.5; step 3 warms up over 4 (its
  # lr: 0.5 + 0.5 * 3 / 4 of 0.01); step 4 is past the first decay.
  np.testing.assert_allclose(
    lrs,
    [0.005, 0.01 * (0.5 + 0.5 / 3), 0.01 * (0.5 + 1 / 3), 0.00875, 0.001],
    rtol=1e-6,
  )


class TinyBNDetector(nn.Module):
  """A detector with BatchNorm for the step's tests: 64 px in, 16x16 priors."""

  num_classes: int = 4
  image_size: int = 64

  @nn.nowrap
  def priors(self):
    c = (np.arange(16) + 0.5) / 16
    cx, cy = np.meshgrid(c, c)
    wh = np.full(cx.size, 0.25)
    return np.stack([cx.ravel(), cy.ravel(), wh, wh], -1).astype(np.float32)

  @nn.compact
  def __call__(self, x, train=False):
    x = layers.ConvBN(8, 3, stride=2, padding=1)(x, train)  # [b, 32, 32, 8]
    x = layers.ConvBN(8, 3, stride=2, padding=1)(x, train)  # [b, 16, 16, 8]
    loc = nn.Conv(4, (3, 3))(x).reshape(x.shape[0], -1, 4)
    logits = nn.Conv(self.num_classes, (3, 3))(x)
    return loc, logits.reshape(x.shape[0], -1, self.num_classes)


def bn_setup(freeze=False):
  config = load_config("shapes", "small")
  config.optimizer, config.warmup_steps, config.learning_rate = "sgd", 0, 0.05
  config.model.freeze_batch_norm = freeze
  model = TinyBNDetector()
  settings = step.step_settings(model, config)
  variables = train.init_variables(model, jax.random.key(0))
  state = step.create_train_state(
    variables["params"],
    optim.create_optimizer(config)[0],
    variables["batch_stats"],
  )
  return model, state, settings, optim.config_schedule_steps(config)


def test_batch_norm_statistics_train_and_freeze():
  model, state, settings, sched = bn_setup()
  assert state.variables().keys() == {"params", "batch_stats"}
  batch = tiny_batch(4, seed=2)
  priors = np.asarray(model.priors())
  new, _ = step.p_train_step(
    step.replicate(state, 1),
    jax.tree.map(lambda x: x[None], batch),
    priors,
    sched,
    settings,
  )
  stats = step.unreplicate(new.batch_stats)
  # One update of the running mean with flax's momentum 0.9, from 0, by the
  # batch mean of the first BatchNorm's input (the convolution's output).
  first = model.apply(
    state.variables(), batch["image"], train=True, mutable=["batch_stats"]
  )[1]["batch_stats"]
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(first), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert not np.allclose(stats["ConvBN_0"]["bn"]["mean"], 0)
  # Frozen: running statistics in the forward, none updated.
  model, state, settings, sched = bn_setup(freeze=True)
  assert not settings.train_batch_norm
  new, _ = step.p_train_step(
    step.replicate(state, 1),
    jax.tree.map(lambda x: x[None], batch),
    priors,
    sched,
    settings,
  )
  for a, b in zip(
    jax.tree.leaves(step.unreplicate(new.batch_stats)),
    jax.tree.leaves(state.batch_stats),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)


_BN_FOUR_DEVICES = textwrap.dedent(
  """
  import os, sys
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  sys.path.insert(0, {tests!r})
  import jax, numpy as np
  assert jax.local_device_count() == 4, jax.devices()
  import test_step as t
  from ssd_jax import step
  model, state, settings, sched = t.bn_setup()
  priors = np.asarray(model.priors())
  batch = t.tiny_batch(8, seed=1)
  def split(d):
    return jax.tree.map(lambda x: x.reshape(d, 8 // d, *x.shape[1:]), batch)
  s1, m1 = step.p_train_step(
      step.replicate(state, 1), split(1), priors, sched, settings)
  s4, m4 = step.p_train_step(
      step.replicate(state, 4), split(4), priors, sched, settings)
  np.testing.assert_allclose(
    step.unreplicate(m1)["loss"], jax.device_get(m4)["loss"][0], rtol=1e-5)
  for part in ("params", "batch_stats"):
    one = jax.tree.leaves(step.unreplicate(getattr(s1, part)))
    four = jax.device_get(jax.tree.leaves(getattr(s4, part)))
    for a, c in zip(one, four):
      for dev in range(4):
        np.testing.assert_array_equal(c[dev], c[0])  # Replicas agree.
      np.testing.assert_allclose(c[0], a, rtol=2e-4, atol=1e-5, err_msg=part)
  print("OK")
  """
)


@pytest.mark.slow
def test_batch_norm_step_is_the_same_on_one_and_four_devices():
  # Synchronised BatchNorm: the 4 x 2 split normalises with the statistics
  # of all 8 images, as 1 x 8 does; parameters and running statistics agree
  # to float32 summation-order error.
  run_on_four_devices(_BN_FOUR_DEVICES)


_MODES_ONE_TWO_FOUR = textwrap.dedent(
  """
  import os, sys
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  sys.path.insert(0, {tests!r})
  import jax, numpy as np
  assert jax.local_device_count() == 4, jax.devices()
  import test_step as t
  from ssd_jax import step
  model, state, settings, sched = t.bn_setup()
  priors = np.asarray(model.priors())

  def run(mode, d, steps=3):
    par = step.Parallel.create(mode, jax.devices()[:d])
    p_state, p_priors = par.put(state), par.put_broadcast(priors)
    p_sched = par.put_broadcast(sched)
    if mode == "shard_map":  # One global array per leaf, no device axis.
      leaf = jax.tree.leaves(p_state.params)[0]
      assert leaf.shape == jax.tree.leaves(state.params)[0].shape
      assert leaf.sharding.is_fully_replicated
      assert len(leaf.sharding.device_set) == d
    for i in range(steps):
      batch = jax.tree.map(
        lambda x: x.reshape(d, 8 // d, *x.shape[1:]), t.tiny_batch(8, seed=i)
      )
      batch = par.put_batch(batch)
      if mode == "shard_map":
        assert batch["image"].shape == (8, 64, 64, 3)
        assert len(batch["image"].addressable_shards) == d
      p_state, metrics = par.step(p_state, batch, p_priors, p_sched, settings)
    return par.get(p_state), par.get(metrics)

  ref, ref_metrics = run("pmap", 1)
  assert int(ref.step) == 3
  for d in (1, 2, 4):
    s_pmap, m_pmap = run("pmap", d)
    s_shard, m_shard = run("shard_map", d)
    # The same body, the same collectives: bit-identical.
    for a, b in zip(jax.tree.leaves(s_pmap), jax.tree.leaves(s_shard),
                    strict=True):
      np.testing.assert_array_equal(a, b)
    for k in m_pmap:
      np.testing.assert_array_equal(m_pmap[k], m_shard[k], err_msg=k)
    # Against one device: float32 summation order only.
    for a, b in zip(jax.tree.leaves(s_shard.params),
                    jax.tree.leaves(ref.params), strict=True):
      scale = np.abs(b).max() + 1e-6
      assert np.abs(a - b).max() / scale < 1e-4, (d, np.abs(a - b).max())
    np.testing.assert_allclose(m_shard["loss"], ref_metrics["loss"], rtol=1e-5)
  print("OK")
  """
)


@pytest.mark.slow
def test_shard_map_step_equals_pmap_step_on_one_two_four_devices():
  # The BatchNorm detector (synchronised statistics, the most collectives):
  # 3 steps of the same global batches of 8 under both wrappers on 1, 2 and
  # 4 fake CPU devices. pmap and shard_map agree bit for bit at each device
  # count; every count agrees with 1 device to summation-order error.
  run_on_four_devices(_MODES_ONE_TWO_FOUR)


def test_parallel_modes_and_their_layouts():
  with pytest.raises(ValueError, match=r"config.parallel must be one of"):
    step.Parallel.create("pjit")
  _, state, _, _ = bn_setup()  # Params and BatchNorm statistics.
  batch = jax.tree.map(lambda x: x[None], tiny_batch(2))  # [1, 2, ...]
  pmap = step.Parallel.create("pmap")
  assert pmap.mesh is None and pmap.put_batch(batch).keys() == batch.keys()
  assert pmap.put(state).step.shape == (1,)  # A leading device axis.
  shard = step.Parallel.create("shard_map")
  assert shard.mesh.axis_names == (step.AXIS,)
  assert shard.mesh.devices.size == jax.device_count()
  placed = shard.put(state)
  assert placed.step.shape == () and placed.step.sharding.is_fully_replicated
  images = shard.put_batch(batch)["image"]
  assert images.shape == (2, 64, 64, 3)  # [D, b] -> one global batch axis.
  np.testing.assert_array_equal(shard.get(images), batch["image"][0])
  host = shard.get(placed)
  assert isinstance(host.step, np.ndarray) and int(host.step) == 0
  # Both read back the same host tree: what a checkpoint holds, so a run
  # resumes under either mode (tests/test_multihost.py resumes one).
  other = pmap.get(pmap.put(state))
  assert jax.tree.structure(other) == jax.tree.structure(host)
  for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(host), strict=True):
    assert type(a) is type(b) and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
