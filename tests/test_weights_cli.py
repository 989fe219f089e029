"""Tests for ssd_jax/weights/cli.py: `python -m ssd_jax.weights`."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from test_weights_torchvision import (
  WIDTH,
  _oihw,
  random_state_dict,
  tv_ssd300_shapes,
  tv_vgg16_shapes,
)

from ssd_jax import weights


def test_command_line_writes_loadable_checkpoint(tmp_path):
  sd = random_state_dict(tv_ssd300_shapes(5, WIDTH))
  np.savez(tmp_path / "ssd.npz", **sd)
  out = tmp_path / "ckpt"
  weights.main(
    [
      "--from",
      "torchvision-ssd300",
      "--width",
      str(WIDTH),
      str(tmp_path / "ssd.npz"),
      str(out),
    ]
  )
  loaded = weights.load_params(str(out))
  expected = weights.from_torchvision_ssd300(sd, width=WIDTH)
  assert jax.tree.structure(loaded) == jax.tree.structure(expected)
  for a, b in zip(
    jax.tree.leaves(loaded), jax.tree.leaves(expected), strict=True
  ):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(FileExistsError, match="ckpt exists"):
    weights.main(
      [
        "--from",
        "torchvision-ssd300",
        "--width",
        str(WIDTH),
        str(tmp_path / "ssd.npz"),
        str(out),
      ]
    )
  with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
    weights.load_params(str(tmp_path / "nothing"))

  vgg_sd = random_state_dict(tv_vgg16_shapes(WIDTH))
  np.savez(tmp_path / "vgg.npz", **vgg_sd)
  weights.main(
    [
      "--from",
      "torchvision-vgg16",
      "--width",
      str(WIDTH),
      str(tmp_path / "vgg.npz"),
      str(tmp_path / "vgg"),
    ]
  )
  partial = weights.load_params(str(tmp_path / "vgg"))
  np.testing.assert_array_equal(
    _oihw(partial["vgg"]["conv3_2"]["kernel"]), vgg_sd["features.12.weight"]
  )


def test_python_dash_m_runs_the_command_line():
  """`python -m ssd_jax.weights` (the README's command) reaches `main`."""
  result = subprocess.run(
    [sys.executable, "-W", "error::RuntimeWarning", "-m", "ssd_jax.weights"]
    + ["in.npz", "out"],
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 2
  assert "--from is required" in result.stderr
