"""Tests for ssd_jax/optim.py: schedule, weight-decay mask, optimizer."""

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config

from ssd_jax import optim
from ssd_jax.models import layers


def reference_lr(step, base, warmup, f0, boundaries, factor):
  lr = base * factor ** sum(step >= b for b in boundaries)
  if step < warmup:
    lr *= f0 + (1 - f0) * step / warmup
  return lr


@pytest.mark.parametrize(
  "warmup,f0,boundaries", [(0, 0.0, ()), (10, 0.1, (20, 30)), (5, 0.0, (3,))]
)
def test_learning_rate_schedule_matches_reference(warmup, f0, boundaries):
  fn = optim.create_learning_rate_schedule(
    0.01, warmup, f0, boundaries, decay_factor=0.1
  )
  for step in range(40):
    want = reference_lr(step, 0.01, warmup, f0, boundaries, 0.1)
    np.testing.assert_allclose(float(fn(step)), want, rtol=1e-6)


def test_learning_rate_schedule_rejects_bad_values():
  with pytest.raises(ValueError, match="increasing"):
    optim.create_learning_rate_schedule(0.1, boundaries=(5, 3))
  with pytest.raises(ValueError, match="warmup_steps"):
    optim.create_learning_rate_schedule(0.1, warmup_steps=-1)


def test_weight_decay_mask_skips_biases_and_batch_norm():
  params = {
    "conv": {"kernel": np.ones((3, 3, 2, 2)), "bias": np.ones(2)},
    "l2norm": {"scale": np.ones(2)},
    "block": {
      "conv": {"kernel": np.ones((1, 1, 2, 2))},  # ConvBN: no bias.
      "bn": {"scale": np.ones(2), "bias": np.ones(2)},
    },
  }
  mask = optim.weight_decay_mask(params)
  assert mask == {
    "conv": {"kernel": True, "bias": False},
    "l2norm": {"scale": True},  # The Caffe release decays it.
    "block": {
      "conv": {"kernel": True},
      "bn": {"scale": False, "bias": False},  # NVIDIA's recipe.
    },
  }
  # On a real BatchNorm model's tree: exactly the conv kernels decay.
  v = layers.ConvBN(4, 3).init(jax.random.key(0), np.ones((1, 5, 5, 2)))
  flat = flax.traverse_util.flatten_dict(optim.weight_decay_mask(v["params"]))
  assert {"/".join(k) for k, on in flat.items() if on} == {"conv/kernel"}


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
  tx, _ = optim.create_optimizer(config)
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
  tx, _ = optim.create_optimizer(config)
  params = {"w": jnp.zeros((4,))}
  updates, _ = tx.update({"w": jnp.full((4,), 100.0)}, tx.init(params), params)
  np.testing.assert_allclose(np.linalg.norm(updates["w"]), 1.0, rtol=1e-5)


def test_unknown_optimizer_is_named():
  config = load_config("shapes", "small")
  config.optimizer = "lamb"
  with pytest.raises(ValueError, match="config.optimizer"):
    optim.create_optimizer(config)


def test_the_steps_optimizer_takes_its_schedule_steps_as_an_input():
  # The step's static part (the spec) is the same for configs that differ
  # only in the schedule's steps (a re-plan), and the steps, traced, give
  # the schedule create_learning_rate_schedule gives with Python numbers.
  config = load_config("shapes", "small")
  replanned = load_config("shapes", "small")
  assert len(config.lr_boundaries) >= 1
  scale = 700 / config.num_steps  # Re-planned to 700 steps.
  replanned.update(
    num_steps=700,
    warmup_steps=60,
    lr_boundaries=tuple(int(b * scale) for b in config.lr_boundaries),
  )
  spec = optim.optimizer_spec(config)
  assert spec == optim.optimizer_spec(replanned)
  assert hash(spec) == hash(optim.optimizer_spec(replanned))
  lr_at = jax.jit(lambda steps, t: optim.build_optimizer(spec, steps)[1](t))
  for c in (config, replanned):
    steps = optim.config_schedule_steps(c)
    want = optim.create_learning_rate_schedule(
      c.learning_rate,
      c.warmup_steps,
      c.warmup_init_factor,
      tuple(c.lr_boundaries),
      c.lr_decay_factor,
    )
    around = [b + d for b in c.lr_boundaries for d in (-1, 0, 1)]
    for t in (0, 1, 30, 59, 60, c.warmup_steps, *around, 3000):
      got = float(lr_at(steps, t))
      np.testing.assert_allclose(got, float(want(t)), rtol=1e-6)
      ref = reference_lr(
        t,
        c.learning_rate,
        c.warmup_steps,
        c.warmup_init_factor,
        tuple(c.lr_boundaries),
        c.lr_decay_factor,
      )
      np.testing.assert_allclose(got, ref, rtol=1e-6)
  # Traced steps give the very floats of constant ones (what XLA compiled
  # before the steps were an input: a run's numbers do not change).
  for name, arg in (("shapes", None), ("voc_folder", "small")):
    c = load_config(name, arg)
    for warmup, f0 in ((c.warmup_steps, c.warmup_init_factor), (88, 0.1)):
      c.update(warmup_steps=warmup, warmup_init_factor=f0)
      spec_c, steps = optim.optimizer_spec(c), optim.config_schedule_steps(c)
      traced = jax.jit(
        lambda t, s, spec_c=spec_c: optim.build_optimizer(spec_c, s)[1](t)
      )
      const = jax.jit(optim.build_optimizer(spec_c, steps)[1])
      for t in range(warmup + 2):
        got, want = traced(np.int32(t), steps), const(np.int32(t))
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes(), t
  # The state does not depend on the steps: one checkpoint layout.
  params = {"w": jnp.ones((3,))}
  a = optim.build_optimizer(spec, optim.config_schedule_steps(config))[0]
  b = optim.build_optimizer(spec, optim.config_schedule_steps(replanned))[0]
  assert jax.tree.structure(a.init(params)) == jax.tree.structure(
    b.init(params)
  )
  n = 2 + len(config.lr_boundaries)
  with pytest.raises(ValueError, match=rf"schedule steps must be \[{n}\]"):
    optim.build_optimizer(spec, np.zeros(n + 1, np.float32))


def test_cosine_schedule_is_torchvisions_cosine_annealing():
  fn = optim.create_learning_rate_schedule(
    0.15, warmup_steps=10, warmup_init_factor=0.001, cosine_steps=100
  )
  for t in (10, 25, 50, 99, 100, 150):
    want = 0.15 * (1 + math.cos(math.pi * min(t, 100) / 100)) / 2
    np.testing.assert_allclose(float(fn(t)), want, rtol=1e-5, atol=1e-7)
  cos0 = 0.15 * (1 + math.cos(0)) / 2
  np.testing.assert_allclose(float(fn(0)), 0.001 * cos0, rtol=1e-5)
  with pytest.raises(ValueError, match="excludes lr boundaries"):
    optim.create_learning_rate_schedule(0.1, boundaries=(5,), cosine_steps=9)
  config = load_config("shapes", "small")
  config.update(lr_schedule="cosine", lr_boundaries=(), warmup_steps=0)
  _, schedule = optim.create_optimizer(config)
  np.testing.assert_allclose(
    float(schedule(config.num_steps // 2)), config.learning_rate / 2, rtol=1e-5
  )
  config.lr_schedule = "linear"
  with pytest.raises(ValueError, match="config.lr_schedule must be one of"):
    optim.create_optimizer(config)
