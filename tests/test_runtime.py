"""Tests for ssd_jax/runtime.py: the XLA CPU flags, logging, set-up."""

import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import logging as absl_logging

from ssd_jax import runtime

# Compiles a conv + ReLU and prints whether XLA handed it to YNNPACK.
_PROBE = """
import sys
import jax, jax.numpy as jnp
from ssd_jax import runtime
if sys.argv[1] == "apply":
  print("applied", runtime.apply_xla_cpu_flags())
f = lambda x, w: jax.nn.relu(jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = jax.jit(f).lower(jnp.ones((1, 32, 32, 64)), jnp.ones((3, 3, 64, 64))
                      ).compile().as_text()
print("ynn", "ynn" in hlo.lower())
"""


def test_with_flags_appends_and_keeps_users_choice():
  (flag,) = runtime.XLA_CPU_FLAGS
  assert runtime.with_xla_cpu_flags("") == flag
  assert runtime.with_xla_cpu_flags("--xla_foo=1") == f"--xla_foo=1 {flag}"
  assert runtime.with_xla_cpu_flags(flag) == flag  # idempotent
  users = "--xla_cpu_experimental_ynn_fusion_type=dot --xla_bar"
  assert runtime.with_xla_cpu_flags(users) == users  # the user's value stays


def test_apply_after_backends_started_warns_and_returns_false():
  jax.devices()  # the backends are running in this process
  env = {"XLA_FLAGS": "--xla_foo=1"}
  assert runtime.apply_xla_cpu_flags(env) is False
  assert env["XLA_FLAGS"] == runtime.with_xla_cpu_flags("--xla_foo=1")


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


def test_quiet_libraries_drops_only_orbax_info():
  quiet = runtime.QuietLibraries()

  def record(level, path):
    return logging.LogRecord("x", level, path, 1, "msg", (), None)

  assert not quiet.filter(record(logging.INFO, "/site/orbax/checkpoint/a.py"))
  assert quiet.filter(record(logging.WARNING, "/site/orbax/checkpoint/a.py"))
  assert quiet.filter(record(logging.INFO, "/site/ssd_jax/train.py"))


def test_setup_single_process(monkeypatch):
  calls = []
  monkeypatch.setattr(
    runtime, "initialize_distributed", lambda *a: calls.append(a)
  )
  runtime.setup()  # Backends already run here: flags only warn.
  assert calls == []
  runtime.setup(False, "localhost:1234", 2, 0)
  assert calls == [("localhost:1234", 2, 0, runtime.HEARTBEAT_TIMEOUT_S)]
  assert any(
    isinstance(f, runtime.QuietLibraries)
    for f in absl_logging.get_absl_handler().filters
  )


def test_heartbeat_and_shutdown_timeouts_reach_jax(monkeypatch):
  calls, updates = [], []
  monkeypatch.setattr(
    jax.distributed, "initialize", lambda **kw: calls.append(kw)
  )
  monkeypatch.setattr(jax.config, "update", lambda *a: updates.append(a))
  runtime.initialize_distributed("localhost:1", 2, 1, heartbeat_timeout_s=7)
  assert updates == [("jax_cpu_collectives_implementation", "gloo")]
  assert calls == [
    {
      "coordinator_address": "localhost:1",
      "num_processes": 2,
      "process_id": 1,
      "heartbeat_timeout_seconds": 7,
      "shutdown_timeout_seconds": runtime.SHUTDOWN_TIMEOUT_S,
    }
  ]
  # The default is bounded and shorter than JAX's own (100 s).
  assert 0 < runtime.HEARTBEAT_TIMEOUT_S < 100


def test_gather_rows_in_one_process_is_the_identity():
  # The two-process case: tests/test_multihost.py.
  arrays = {"a": np.arange(6.0).reshape(3, 2), "b": np.zeros(0, bool)}
  out = runtime.gather_rows(arrays)
  assert out.keys() == arrays.keys()
  for k in arrays:
    np.testing.assert_array_equal(out[k], arrays[k])
    assert out[k].dtype == arrays[k].dtype
  with pytest.raises(ValueError, match=r"gather_rows: 'x' has shape \(\)"):
    runtime.gather_rows({"x": np.float32(1)})
