"""Weight files: state dicts in, orbax params checkpoints out and back.

- `load_state_dict`: a foreign state dict file as numpy arrays. `.npz` and
  `.safetensors` (when the `safetensors` package is installed) load without
  torch; `.pth`/`.pt` load only when torch is installed, always with
  `torch.load(weights_only=True)`. Both packages are optional, so they are
  imported only when such a file is read.
- `save_params` / `load_params`: `{"params": ...}` as an orbax checkpoint
  directory, what the command line writes and `config.init_from` reads.
- `merge_params`: a loaded (possibly partial) tree into a model's fresh
  init, which is how `config.init_from` uses it.
"""

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

Params = dict[str, Any]


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a state dict file as numpy arrays.

  Args:
    path: `.npz`, `.safetensors` (needs the safetensors package) or
      `.pth`/`.pt` (needs torch; read with `weights_only=True`).

  Returns:
    Key -> float32 numpy array.

  Raises:
    ValueError: on an unknown suffix or a file that is not a flat mapping
      of arrays.
    ImportError: when the package the format needs is missing.
  """
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".npz":
    with np.load(path, allow_pickle=False) as data:
      return {k: np.asarray(data[k], np.float32) for k in data.files}
  if suffix == ".safetensors":
    if importlib.util.find_spec("safetensors") is None:
      raise ImportError(f"{path}: reading .safetensors needs `safetensors`")
    from safetensors.numpy import load_file  # optional dependency

    return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}
  if suffix in (".pth", ".pt"):
    if importlib.util.find_spec("torch") is None:
      raise ImportError(
        f"{path}: reading .pth needs torch; convert it to .npz or "
        ".safetensors where torch is installed"
      )
    import torch  # optional dependency

    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, Mapping):
      raise ValueError(f"{path}: expected a state dict, got {type(data)}")
    return {k: v.detach().float().numpy() for k, v in data.items()}
  raise ValueError(
    f"{path}: unknown weight file type {suffix!r}; use .npz, .safetensors "
    "or .pth"
  )


def save_params(path: str, params: Params, source: str = "") -> None:
  """Writes `{"params": params}` as an orbax checkpoint directory.

  Args:
    path: new directory (made absolute; must not exist).
    params: a params tree of arrays.
    source: recorded in the checkpoint's custom metadata.

  Raises:
    FileExistsError: if `path` exists.
  """
  path = os.path.abspath(path)
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; choose a new checkpoint path")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(
    path, {"params": params}, custom_metadata={"source": source}
  )
  checkpointer.wait_until_finished()


def load_params(path: str) -> Params:
  """Reads the params of a checkpoint written by `save_params` / the CLI.

  For `config.init_from`: `merge_params(model.init(...)["params"],
  load_params(path))`; a torchvision-vgg16 import holds only `vgg` (the
  trunk), a torchvision-ssd300 import every parameter of its SSD300.

  Args:
    path: checkpoint directory.

  Returns:
    The params tree, numpy arrays.

  Raises:
    FileNotFoundError: if `path` does not exist.
    ValueError: if the checkpoint has no "params" entry.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no checkpoint directory at {path}")
  restored = ocp.StandardCheckpointer().restore(path)
  if not isinstance(restored, Mapping) or "params" not in restored:
    raise ValueError(f"{path}: checkpoint has no 'params' entry")
  return restored["params"]


def merge_params(
  params: Params, loaded: Params, skip_mismatched: bool = False
) -> Params:
  """Overwrites leaves of a fresh init with loaded (possibly partial) ones.

  Args:
    params: the model's full params tree (e.g. from `model.init`).
    loaded: a tree whose every path exists in `params` (e.g. the output of
      `from_torchvision_vgg16` or `load_params`).
    skip_mismatched: keep the fresh value where shapes differ (e.g. class
      heads of a model with another class count) instead of raising.

  Returns:
    A tree shaped like `params`: loaded leaves cast to the fresh leaf's
    dtype, the others unchanged.

  Raises:
    KeyError: naming a loaded path that the model does not have.
    ValueError: naming a path whose shapes differ (unless skip_mismatched).
  """
  flat = traverse_util.flatten_dict(params, sep="/")
  for path, value in traverse_util.flatten_dict(loaded, sep="/").items():
    if path not in flat:
      raise KeyError(f"loaded parameter {path!r} is not in the model")
    if np.shape(value) != np.shape(flat[path]):
      if skip_mismatched:
        continue
      raise ValueError(
        f"shape mismatch for {path!r}: loaded {np.shape(value)}, model "
        f"{np.shape(flat[path])}"
      )
    flat[path] = jnp.asarray(value, dtype=flat[path].dtype)
  return traverse_util.unflatten_dict(flat, sep="/")
