"""Tests for ssd_jax.budget: the cost table, the speed probe, the re-plan."""

import numpy as np
import pytest

from ssd_jax import budget


def test_seconds_per_image_is_the_measured_table_between_and_beyond():
  for side, seconds in zip(budget.COST_SIDES, budget.COST_SECONDS, strict=True):
    assert budget.seconds_per_image(side, True) == pytest.approx(seconds)
  # Between two measured sides: a power law through both.
  lo, hi = budget.COST_SIDES[1:3]
  c_lo, c_hi = budget.COST_SECONDS[1:3]
  mid = 144
  power = np.log(c_hi / c_lo) / np.log(hi / lo)
  want = c_lo * (mid / lo) ** power
  assert budget.seconds_per_image(mid, True) == pytest.approx(want)
  # Beyond the table: the last segment's power law, still increasing.
  lo, hi = budget.COST_SIDES[-2:]
  c_lo, c_hi = budget.COST_SECONDS[-2:]
  power = np.log(c_hi / c_lo) / np.log(hi / lo)
  assert budget.seconds_per_image(256, True) == pytest.approx(
    c_hi * (256 / hi) ** power
  )
  sides = np.arange(64, 320, 16)
  costs = [budget.seconds_per_image(int(s), True) for s in sides]
  assert np.all(np.diff(costs) > 0)
  assert budget.seconds_per_image(160) == pytest.approx(
    budget.COST_SECONDS[2] / budget.CONV3_3_COST
  )
  assert budget.seconds_per_image(160, True, stem="space_to_depth") == (
    pytest.approx(budget.COST_SECONDS[2] * budget.SPACE_TO_DEPTH_COST)
  )
  # Width and machine speed scale it in proportion.
  assert budget.seconds_per_image(160, True, 2 * budget.COST_WIDTH) == (
    pytest.approx(2 * budget.COST_SECONDS[2])
  )
  assert budget.seconds_per_image(160, True, speed=1.7) == pytest.approx(
    1.7 * budget.COST_SECONDS[2]
  )


def test_speed_from_probe_is_the_ratio_to_the_reference_within_range():
  ref = budget.PROBE_REFERENCE_SECONDS
  speed = budget.speed_from_probe(1.5 * ref)
  assert speed.factor == pytest.approx(1.5)
  assert speed.probe_seconds == pytest.approx(1.5 * ref)
  assert "1.50x the cost table's time" in speed.describe()
  lo, hi = budget.SPEED_RANGE
  assert budget.speed_from_probe(1e-6 * ref).factor == lo  # an accelerator
  assert budget.speed_from_probe(1e3 * ref).factor == hi
  assert budget.Speed().factor == 1.0
  assert "not probed" in budget.Speed().describe()
  for bad in (0.0, -1.0, float("nan")):
    with pytest.raises(ValueError, match="probe seconds"):
      budget.speed_from_probe(bad)


def test_speed_from_steps_is_the_measured_over_the_table_step():
  speed = budget.speed_from_steps(0.482, 0.311)
  assert speed.factor == pytest.approx(0.482 / 0.311)
  assert speed.step_seconds == (0.482, 0.311) and speed.probe_seconds is None
  text = speed.describe()
  assert "1.55x the cost table's time" in text
  assert "own steps 482 ms against the table's 311" in text
  lo, hi = budget.SPEED_RANGE
  assert budget.speed_from_steps(1e-6, 1.0).factor == lo
  assert budget.speed_from_steps(1e3, 1.0).factor == hi
  for bad in ((0.0, 1.0), (1.0, 0.0), (float("nan"), 1.0), (1.0, -1.0)):
    with pytest.raises(ValueError, match="step seconds"):
      budget.speed_from_steps(*bad)


def test_probe_times_a_fixed_gradient():
  with pytest.raises(ValueError, match="repeats"):
    budget.probe_seconds(0)
  seconds = budget.probe_seconds(repeats=3)
  assert 0 < seconds < 60
  speed = budget.machine_speed()
  lo, hi = budget.SPEED_RANGE
  assert lo <= speed.factor <= hi
  assert speed.probe_seconds > 0
  # The probe's function is a real gradient of the normalised conv stack:
  # compare with finite differences along one direction.
  import jax
  import jax.numpy as jnp

  keys = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(keys[0], (2, 8, 8, 4), jnp.float32)
  kernels = [0.3 * jax.random.normal(keys[1], (3, 3, 4, 4))]
  direction = jax.random.normal(keys[2], (3, 3, 4, 4))
  grad = budget._probe_fn()(kernels, x)[0]
  eps = 1e-3
  plus = budget._probe_loss([kernels[0] + eps * direction], x)
  minus = budget._probe_loss([kernels[0] - eps * direction], x)
  numeric = (plus - minus) / (2 * eps)
  assert float(jnp.sum(grad * direction)) == pytest.approx(
    float(numeric), rel=2e-2, abs=1e-4
  )


def test_follow_steps_hand_worked():
  got = budget.follow_steps(1000, "piecewise")
  assert got["warmup_steps"][0] == 50
  assert got["lr_boundaries"][0] == (750, 920)
  assert got["eval_every"][0] == 500
  assert got["checkpoint_every"][0] == 200
  assert budget.follow_steps(1001, "piecewise")["eval_every"][0] == 501
  assert budget.follow_steps(1000, "cosine")["lr_boundaries"][0] == ()
  tiny = budget.follow_steps(1, "piecewise")
  assert tiny["warmup_steps"][0] == tiny["eval_every"][0] == 1
  assert tiny["checkpoint_every"][0] == 1


def test_replan_steps_hand_worked():
  # 100 s gone, 0.5 s per step, 20 s to recompile: the time left is
  # RUN_SECONDS - 100 - 20 - 2 * EVAL_SECONDS, at 2 steps per second.
  left = budget.RUN_SECONDS - 100 - 20 - 2 * budget.EVAL_SECONDS
  want = 32 + int(left / 0.5)
  assert budget.replan_steps(1500, 32, 100.0, 0.5, 20.0) == want
  # Within REPLAN_TOLERANCE of the plan: None (no recompilation).
  assert budget.replan_steps(want, 32, 100.0, 0.5, 20.0) is None
  near = int(want * (1 + budget.REPLAN_TOLERANCE / 2))
  assert budget.replan_steps(near, 32, 100.0, 0.5, 20.0) is None
  # Clipped to a third and twice the plan.
  assert budget.replan_steps(1500, 32, 100.0, 50.0, 20.0) == 500
  assert budget.replan_steps(100, 32, 10.0, 0.001, 0.0) == 200
  # Out of time: one more step than done, never fewer.
  assert budget.replan_steps(1500, 900, 1e4, 0.5, 20.0) == 901
  # No speed measured: nothing to re-plan.
  assert budget.replan_steps(1500, 32, 100.0, 0.0, 20.0) is None
