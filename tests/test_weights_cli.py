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


def test_batch_norm_weights_keep_their_statistics_through_init_from(tmp_path):
  from test_weights_ssdlite import random_state_dict as random_sd
  from test_weights_ssdlite import tv_ssdlite_shapes

  from ssd_jax import train
  from ssd_jax.models import SSDLite320

  sd = random_sd(tv_ssdlite_shapes(4, 0.25))
  np.savez(tmp_path / "ssdlite.npz", **sd)
  out = str(tmp_path / "ckpt")
  argv = ["--from", "torchvision-ssdlite320", "--width", "0.25"]
  weights.main([*argv, str(tmp_path / "ssdlite.npz"), out])
  loaded = weights.load_variables(out)
  want = weights.from_torchvision_ssdlite320(sd, width=0.25)
  assert loaded.keys() == {"params", "batch_stats"}
  for part in ("params", "batch_stats"):
    for a, b in zip(
      jax.tree.leaves(loaded[part]), jax.tree.leaves(want[part]), strict=True
    ):
      np.testing.assert_array_equal(a, b)
  # config.init_from: the model starts from both collections.
  model = SSDLite320(num_classes=4, image_size=96, width=0.25)
  got = train.init_variables(model, jax.random.key(1), init_from=out)
  for part in ("params", "batch_stats"):
    for a, b in zip(
      jax.tree.leaves(got[part]), jax.tree.leaves(want[part]), strict=True
    ):
      np.testing.assert_array_equal(a, b)
