"""Test-session set-up: the XLA CPU setting that the entry points use, a
loader for the scripts in experiments/, a config loader, a miniature VOC folder
(`mini_voc2007`) and a shared tiny training run (`shapes_run`).

The XLA setting is applied before any test starts JAX's backends, so the
suite runs the same XLA CPU configuration as `python -m ssd_jax.main` (see
ssd_jax/runtime.py).

Hypothesis runs derandomized with no example database (profile "ci"), so a
clean clone draws the same examples on every run: a property test fails in
CI only if it fails here. `HYPOTHESIS_PROFILE=explore pytest ...` draws new
random examples (and keeps a local database) when hunting for bugs.
"""

import contextlib
import importlib.util
import os
import pathlib
import subprocess
import sys
from unittest import mock

import minidata
import pytest
from hypothesis import settings

from ssd_jax import config as config_lib
from ssd_jax import runtime

runtime.apply_xla_cpu_flags()

settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="session")
def load_experiment():
  """`load_experiment("bench")` imports experiments/bench.py as a module
  (`load_experiment("sweeps/sweep")`: experiments/sweeps/sweep.py).

  The experiments are standalone scripts, not a package, so the tests load
  them by path.
  """

  def load(name: str):
    path = EXPERIMENTS / f"{name}.py"  # name may hold a folder: sweeps/sweep
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

  return load


REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mock_tfds():
  """`mock_tfds(**kwargs)`: `tfds.testing.mock_data(**kwargs)` for the
  package's tfds route.

  mock_data replaces tfds' reading and makes preparation a no-op, but its
  builders still say they are not prepared, so `sources.prepare_tfds`
  (which checks for the release archives first) is made a no-op too.
  """
  import tensorflow_datasets as tfds

  from ssd_jax.data import sources

  @contextlib.contextmanager
  def mocked(**kwargs):
    with (
      tfds.testing.mock_data(**kwargs),
      mock.patch.object(sources, "prepare_tfds", lambda *a, **k: None),
    ):
      yield

  return mocked


def ref_iou(a, b) -> float:
  """IoU of two corner boxes, written out (independent of ssd_jax.boxes):
  the slow reference of the coverage tests (test_box_stats, test_default_boxes).
  """
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def load_config(name: str, arg: str | None = None):
  """configs/NAME.py's `get_config(arg)`, as `--config=configs/NAME.py:arg`."""
  return config_lib.config_from_file(str(REPO / "configs" / f"{name}.py"), arg)


def voc_folder_config(root: str):
  """configs/voc_folder.py:small reading the VOC-format folder `root`."""
  config = load_config("voc_folder", "small")
  config.data.root = root
  return config


@pytest.fixture(scope="session")
def mini_voc2007(tmp_path_factory):
  """A miniature VOC-format folder (VOC2007 of a `minidata` devkit: 6
  trainval and 2 test images).

  Returns:
    (the folder, `minidata.write_vocdevkit`'s counts).
  """
  root = str(tmp_path_factory.mktemp("voc") / "VOCdevkit")
  counts = minidata.write_vocdevkit(
    root, years=("2007",), num_images=6, num_test=2
  )
  return os.path.join(root, "VOC2007"), counts


@pytest.fixture(scope="session")
def shapes_run(tmp_path_factory):
  """A tiny shapes run through the real command line (train mode).

  3 steps of configs/shapes.py:small with an evaluation at steps 2 and 3;
  shared by the loop, command-line and sweep tests (it costs ~30 s).

  Returns:
    (workdir, stdout of the run).
  """
  workdir = str(tmp_path_factory.mktemp("shapes"))
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "ssd_jax.main",
      "--config=configs/shapes.py:small",
      f"--workdir={workdir}",
      "--config.num_steps=3",
      "--config.eval_every=2",
    ],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert out.returncode == 0, out.stderr[-4000:]
  return workdir, out.stdout
