"""Tests for ssd_jax/xla_cpu.py."""

import os
import subprocess
import sys

import jax
import pytest

from ssd_jax import xla_cpu

# Compiles a conv + ReLU and prints whether XLA handed it to YNNPACK.
_PROBE = """
import sys
import jax, jax.numpy as jnp
from ssd_jax import xla_cpu
if sys.argv[1] == "apply":
  print("applied", xla_cpu.apply())
f = lambda x, w: jax.nn.relu(jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = jax.jit(f).lower(jnp.ones((1, 32, 32, 64)), jnp.ones((3, 3, 64, 64))
                      ).compile().as_text()
print("ynn", "ynn" in hlo.lower())
"""


def test_with_flags_appends_and_keeps_users_choice():
  (flag,) = xla_cpu.FLAGS
  assert xla_cpu.with_flags("") == flag
  assert xla_cpu.with_flags("--xla_foo=1") == f"--xla_foo=1 {flag}"
  assert xla_cpu.with_flags(flag) == flag  # idempotent
  users = "--xla_cpu_experimental_ynn_fusion_type=dot --xla_bar"
  assert xla_cpu.with_flags(users) == users  # the user's value stays


def test_apply_after_backends_started_warns_and_returns_false():
  jax.devices()  # the backends are running in this process
  env = {"XLA_FLAGS": "--xla_foo=1"}
  assert xla_cpu.apply(env) is False
  assert env["XLA_FLAGS"] == xla_cpu.with_flags("--xla_foo=1")


def _probe(mode: str) -> str:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run(
    [sys.executable, "-c", _PROBE, mode],
    env=env,
    capture_output=True,
    text=True,
    check=True,
    timeout=300,
  ).stdout


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU flag")
def test_flag_takes_effect_in_a_fresh_process():
  # Without the flag jax 0.10's XLA CPU fuses the conv into YNNPACK; if a
  # JAX upgrade renames or drops the flag, this shows it.
  assert "ynn True" in _probe("default")
  out = _probe("apply")
  assert "applied True" in out
  assert "ynn False" in out
