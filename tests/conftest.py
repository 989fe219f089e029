"""Test-session set-up: the XLA CPU setting that the entry points use, and a
loader for the scripts in experiments/.

The XLA setting is applied before any test starts JAX's backends, so the
suite runs the same XLA CPU configuration as `python -m ssd_jax.main` (see
ssd_jax/xla_cpu.py).
"""

import importlib.util
import pathlib

import pytest

from ssd_jax import xla_cpu

xla_cpu.apply()

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="session")
def load_experiment():
  """`load_experiment("bench")` imports experiments/bench.py as a module.

  The experiments are standalone scripts, not a package, so the tests load
  them by path.
  """

  def load(name: str):
    path = EXPERIMENTS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

  return load
