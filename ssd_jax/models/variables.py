"""What callers need to know about any model of the zoo, whatever its kind.

The VGG16 SSD has parameters only; the BatchNorm models (ResNet-50 SSD300,
SSDLite320) also have running statistics (`batch_stats`). Callers that hold
a bare parameter tree (the VGG models, as always) or a full variables dict
pass either to `as_variables`; the input normalisation a model expects is
`normalization_of(model)` (a name of `ssd_jax.data.image.NORMALIZATIONS`).
"""

from collections.abc import Mapping
from typing import Any


def as_variables(tree: Any) -> dict[str, Any]:
  """A model's variables from a parameter tree or a variables dict.

  Args:
    tree: `{"params": ..., "batch_stats": ...}` (a BatchNorm model's
      variables; returned as they are) or a bare parameter tree (wrapped as
      `{"params": tree}`). No model has a top-level module named "params",
      so the two cannot be confused.

  Returns:
    The variables dict for `model.apply`.
  """
  if isinstance(tree, Mapping) and "params" in tree:
    return dict(tree)
  return {"params": tree}


def normalization_of(model: Any) -> str:
  """The input normalisation `model` expects ("caffe" unless it says)."""
  return getattr(model, "normalization", "caffe")
