"""Weight files: state dicts in, orbax params checkpoints out and back.

- `load_state_dict`: a foreign state dict file as numpy arrays in the file's
  dtypes. `.npz` and `.safetensors` (when the `safetensors` package is
  installed) load without torch; `.pth`/`.pt` load only when torch is
  installed, always with `torch.load(weights_only=True)`. Both packages are
  optional, so they are imported only when such a file is read.
- `save_params` / `load_params`: `{"params": ...}` as an orbax checkpoint
  directory, what the command line writes and `config.init_from` reads.
- `merge_params` / `merge_params_report`: a loaded (possibly partial) tree
  into a model's fresh init, which is how `config.init_from` uses it.
- `check_array`: the one check of a loaded weight (dtype, shape, finite
  values), used by the merge and by the torchvision converters.

A file that cannot be read is an error naming the file; a weight that is
missing, unexpected, misshapen, not floating point or not finite is an error
naming its key (our '/'-joined path, or the state dict's own key).
"""

import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

Params = dict[str, Any]


class ShapeMismatchError(ValueError):
  """A loaded weight's shape differs from the one expected."""


def describe_error(error: BaseException, limit: int = 300) -> str:
  """A one-line reason for an error raised while reading a file.

  Args:
    error: the exception (orbax/tensorstore, numpy, zipfile, json, ...).
    limit: the most characters of its message kept.

  Returns:
    "Type: first line of the message", with tensorstore's long JSON spec
    cut off; just "Type" for an empty message.
  """
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else ""
  text = text.split(" [tensorstore_spec")[0].strip()
  if len(text) > limit:
    text = text[:limit] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_array(
  name: str, value: Any, shape: Sequence[int], dtype: Any = np.float32
) -> np.ndarray:
  """The one check of a loaded weight: dtype, shape, then finite values.

  Dtypes: a floating-point array (float16, bfloat16, float32, float64) is
  cast to `dtype`; for weights that is a safe cast (float64 -> float32
  rounds to the nearest float32; a value beyond `dtype`'s range becomes inf
  and is reported below). Integer, boolean, complex, string and object
  arrays are errors: a weight is never one, so such an array is another
  tensor (e.g. BatchNorm's `num_batches_tracked`) or a damaged file.

  Args:
    name: the key, named in every error (a '/'-joined path of a params
      tree, or a state dict's key).
    value: the loaded array (numpy, jax or array-like).
    shape: the shape it must have.
    dtype: the floating dtype returned (the model's parameter dtype).

  Returns:
    `value` as a numpy array [*shape] of `dtype`.

  Raises:
    TypeError: naming `name` when `value` is not floating point.
    ShapeMismatchError: (a ValueError) naming `name`, the shape got and the
      shape expected.
    ValueError: naming `name` and how many values are NaN or infinite
      (after the cast to `dtype`).
  """
  array, dtype = np.asarray(value), np.dtype(dtype)
  if not jnp.issubdtype(array.dtype, jnp.floating):
    raise TypeError(
      f"{name!r} has dtype {array.dtype}, expected floating point ({dtype}); "
      "a weight is never an integer, boolean or object array"
    )
  expected = tuple(int(n) for n in shape)
  if array.shape != expected:
    raise ShapeMismatchError(
      f"shape mismatch for {name!r}: got {array.shape}, expected {expected}"
    )
  # Overflow in the cast and inf - inf in the sum are what is looked for.
  with np.errstate(over="ignore", invalid="ignore"):
    out = array.astype(dtype, copy=False)
    # The float64 sum is non-finite iff a value is (cheap, no temporaries);
    # only then are the bad values counted.
    total = np.sum(out, dtype=np.float64)
  if not np.isfinite(total):
    bad = out.size - int(np.count_nonzero(np.isfinite(out)))
    if bad:
      cast = "" if out.dtype == array.dtype else f" after the cast to {dtype}"
      raise ValueError(
        f"{name!r} has {bad} non-finite (NaN or inf) value(s) of {out.size}"
        f"{cast}"
      )
  return out


def _read_npz(path: str) -> dict[str, np.ndarray]:
  try:
    data = np.load(path, allow_pickle=False)
  except Exception as error:
    raise ValueError(
      f"{path}: not a readable .npz file ({describe_error(error)})"
    ) from error
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise ValueError(
      f"{path}: holds a single array, not a state dict of named arrays"
    )
  with data:
    out = {}
    for key in data.files:
      try:
        out[key] = np.asarray(data[key])
      except Exception as error:
        raise ValueError(
          f"{path}: array {key!r} is unreadable ({describe_error(error)})"
        ) from error
  return out


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  if importlib.util.find_spec("safetensors") is None:
    raise ImportError(f"{path}: reading .safetensors needs `safetensors`")
  from safetensors.numpy import load_file  # optional dependency

  try:
    return dict(load_file(path))
  except Exception as error:
    raise ValueError(
      f"{path}: not a readable .safetensors file ({describe_error(error)})"
    ) from error


def _read_torch(path: str) -> dict[str, np.ndarray]:
  if importlib.util.find_spec("torch") is None:
    raise ImportError(
      f"{path}: reading .pth needs torch; convert it to .npz or "
      ".safetensors where torch is installed"
    )
  import torch  # optional dependency

  try:
    data = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:
    raise ValueError(
      f"{path}: not a readable torch file ({describe_error(error)})"
    ) from error
  if not isinstance(data, Mapping):
    raise ValueError(f"{path}: expected a state dict, got {type(data)}")
  out = {}
  for key, value in data.items():
    if not torch.is_tensor(value):
      raise ValueError(
        f"{path}: {key!r} is a {type(value).__name__}, not a tensor"
      )
    value = value.detach()
    # numpy has no bfloat16: floating tensors come out as float32; others
    # keep their dtype so that `check_array` can name them.
    out[key] = (value.float() if value.is_floating_point() else value).numpy()
  return out


_READERS = {
  ".npz": _read_npz,
  ".safetensors": _read_safetensors,
  ".pth": _read_torch,
  ".pt": _read_torch,
}


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a state dict file as numpy arrays.

  Dtypes are kept as in the file (torch floating tensors, bfloat16
  included, come out as float32, numpy having no bfloat16); the converters
  check and cast each array they use with `check_array`.

  Args:
    path: `.npz`, `.safetensors` (needs the safetensors package) or
      `.pth`/`.pt` (needs torch; read with `weights_only=True`).

  Returns:
    Key -> numpy array.

  Raises:
    FileNotFoundError: naming `path` when it is not a file.
    ValueError: naming `path` on an unknown suffix, or a file that is
      truncated, of another format, or not a flat mapping of arrays.
    ImportError: when the package the format needs is missing.
  """
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in _READERS:
    raise ValueError(
      f"{path}: unknown weight file type {suffix!r}; use .npz, .safetensors "
      "or .pth"
    )
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no weight file at {path}")
  return _READERS[suffix](path)


def save_params(
  path: str, params: Params, source: str = "", batch_stats: Params = None
) -> None:
  """Writes `{"params": params}` as an orbax checkpoint directory.

  Args:
    path: new directory (made absolute; must not exist).
    params: a params tree of arrays.
    source: recorded in the checkpoint's custom metadata.
    batch_stats: a BatchNorm model's running statistics, saved beside the
      params when given (`load_variables` reads both).

  Raises:
    FileExistsError: if `path` exists.
  """
  path = os.path.abspath(path)
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; choose a new checkpoint path")
  with ocp.StandardCheckpointer() as checkpointer:
    tree = {"params": params}
    if batch_stats:
      tree["batch_stats"] = batch_stats
    checkpointer.save(path, tree, custom_metadata={"source": source})
    checkpointer.wait_until_finished()


def load_params(path: str) -> Params:
  """The params of a checkpoint written by `save_params` / the CLI.

  `load_variables(path)["params"]`; see there.
  """
  return load_variables(path)["params"]


def load_variables(path: str) -> dict[str, Params]:
  """Reads a checkpoint written by `save_params` / the CLI.

  For `config.init_from`: `merge_params(model.init(...)["params"],
  load_params(path))`; a torchvision-vgg16 import holds only `vgg` (the
  trunk), a torchvision-ssd300 import every parameter of its SSD300. The
  values are checked where they meet a model, by `merge_params`.

  Args:
    path: checkpoint directory.

  Returns:
    {"params": tree} and, for a BatchNorm model's weights,
    "batch_stats"; numpy arrays.

  Raises:
    FileNotFoundError: if `path` does not exist.
    ValueError: naming `path` when it is a file (a state dict to convert
      first, a msgpack, ...), when the checkpoint cannot be read (missing
      or truncated files, unreadable metadata) or has no "params" entry.
  """
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no checkpoint directory at {path}")
  if not os.path.isdir(path):
    raise ValueError(
      f"{path} is a file, not a params checkpoint directory; convert a "
      "state dict with `python -m ssd_jax.weights --from ... FILE OUT_DIR`"
    )
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      restored = checkpointer.restore(path)
  except Exception as error:
    raise ValueError(
      f"{path}: unreadable params checkpoint ({describe_error(error)})"
    ) from error
  if not isinstance(restored, Mapping) or "params" not in restored:
    raise ValueError(f"{path}: checkpoint has no 'params' entry")
  return {k: restored[k] for k in ("params", "batch_stats") if k in restored}


class MergedParams(NamedTuple):
  """What `merge_params_report` did.

  Attributes:
    params: a tree shaped like the model's params.
    loaded: '/'-joined paths taken from the loaded tree, sorted.
    skipped: path -> "got (shape), model (shape)" for the loaded leaves
      kept as initialised because their shapes differ (skip_mismatched).
  """

  params: Params
  loaded: tuple[str, ...]
  skipped: dict[str, str]


def merge_params_report(
  params: Params, loaded: Params, skip_mismatched: bool = False
) -> MergedParams:
  """Overwrites leaves of a fresh init with loaded ones, and says which.

  `loaded` may be partial by whole modules (a VGG16 import holds only the
  trunk), never within one: a module present in `loaded` with some of its
  model leaves absent is a damaged or foreign file. Every loaded leaf goes
  through `check_array` against the fresh leaf's shape and dtype.

  Args:
    params: the model's full params tree (e.g. from `model.init`).
    loaded: a tree whose every path exists in `params` (e.g. the output of
      `from_torchvision_vgg16` or `load_params`).
    skip_mismatched: keep the fresh value where shapes differ (e.g. class
      heads of a model with another class count) instead of raising.

  Returns:
    A MergedParams: the tree (loaded leaves cast to the fresh leaf's dtype,
    the others unchanged), the loaded paths and the skipped ones.

  Raises:
    KeyError: naming every loaded path the model does not have, or every
      leaf missing from a module that `loaded` holds.
    TypeError: naming a path whose loaded array is not floating point.
    ShapeMismatchError: (a ValueError) naming a path whose shapes differ
      (unless skip_mismatched).
    ValueError: naming a path with NaN or infinite values, and the count.
  """
  flat = traverse_util.flatten_dict(params, sep="/")
  new = traverse_util.flatten_dict(loaded, sep="/")
  extra = sorted(set(new) - set(flat))
  if extra:
    raise KeyError(f"loaded parameters not in the model: {extra}")
  modules = {path.rpartition("/")[0] for path in new} - {""}
  missing = sorted(
    path
    for path in flat
    if path.rpartition("/")[0] in modules and path not in new
  )
  if missing:
    raise KeyError(
      f"loaded parameters are missing {missing} (their modules are loaded, "
      "so the file is damaged or for another model)"
    )
  loaded_paths, skipped = [], {}
  for path, value in sorted(new.items()):
    fresh = flat[path]
    try:
      checked = check_array(path, value, np.shape(fresh), fresh.dtype)
    except ShapeMismatchError:
      if not skip_mismatched:
        raise
      skipped[path] = f"got {np.shape(value)}, model {np.shape(fresh)}"
      continue
    flat[path] = jnp.asarray(checked)
    loaded_paths.append(path)
  return MergedParams(
    traverse_util.unflatten_dict(flat, sep="/"), tuple(loaded_paths), skipped
  )


def merge_params(
  params: Params, loaded: Params, skip_mismatched: bool = False
) -> Params:
  """Overwrites leaves of a fresh init with loaded (possibly partial) ones.

  The tree of `merge_params_report` (see there for the checks).

  Args:
    params: the model's full params tree (e.g. from `model.init`).
    loaded: a tree whose every path exists in `params`.
    skip_mismatched: keep the fresh value where shapes differ.

  Returns:
    A tree shaped like `params`: loaded leaves cast to the fresh leaf's
    dtype, the others unchanged.

  Raises:
    As `merge_params_report`.
  """
  return merge_params_report(params, loaded, skip_mismatched).params
