"""The optimizer: learning-rate schedule, weight-decay mask, optax chain.

Caffe's update, which the paper's recipe uses, is `v = m v + lr (g + wd w);
w -= v`: L2 decay added to the gradient before momentum. `create_optimizer`
builds that from a config as an optax chain (optional global-norm clipping,
decoupled-by-mask L2 term, SGD with momentum or Adam).
"""

from typing import Any, NamedTuple

import flax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


def create_learning_rate_schedule(
  base_lr: float,
  warmup_steps: int = 0,
  warmup_init_factor: float = 0.0,
  boundaries: tuple[int, ...] = (),
  decay_factor: float = 0.1,
  cosine_steps: int = 0,
) -> optax.Schedule:
  """Linear warm-up, then piecewise-constant or cosine decay.

  lr(t) = base_lr * (f0 + (1 - f0) t / W) for t < W (f0 the warm-up initial
  factor), then base_lr * decay_factor ** (number of boundaries <= t); or,
  with `cosine_steps` T > 0 (torchvision's `CosineAnnealingLR` over the
  run, as its SSDLite recipe uses), base_lr * (1 + cos(pi t / T)) / 2 for
  t < T and 0 after, with the warm-up factor applied on top for t < W.

  Args:
    base_lr: the learning rate after warm-up.
    warmup_steps: W, length of the linear warm-up (0: none).
    warmup_init_factor: f0, fraction of base_lr at step 0.
    boundaries: absolute steps at which the lr is multiplied by decay_factor.
    decay_factor: multiplier applied at each boundary.
    cosine_steps: T, the cosine's length (0: piecewise-constant instead;
      then `boundaries` must be empty or the two are refused together).

  Returns:
    An optax schedule (step -> lr float32).

  Raises:
    ValueError: on a negative base_lr / warm-up or unsorted boundaries.
  """
  if base_lr < 0:
    raise ValueError(f"learning rate must be >= 0, got {base_lr}")
  steps = schedule_steps(warmup_steps, boundaries, cosine_steps)
  return _schedule(
    base_lr, warmup_init_factor, decay_factor, bool(cosine_steps), steps
  )


def schedule_steps(
  warmup_steps: int, boundaries: tuple[int, ...] = (), cosine_steps: int = 0
) -> np.ndarray:
  """The schedule's step counts as one array, the compiled step's input.

  A re-plan of a run (`recipe.replan`) changes only these, so they are an
  argument of the training step rather than part of it: the step is not
  compiled again.

  Args:
    warmup_steps: W (0: none).
    boundaries: the decay steps, increasing.
    cosine_steps: T (0: piecewise-constant).

  Returns:
    [2 + len(boundaries)] float32 `(W, T, *boundaries)` (exact below 2^24).

  Raises:
    ValueError: on a negative warm-up or cosine length, unsorted
      boundaries, or boundaries with a cosine.
  """
  boundaries = tuple(int(b) for b in boundaries)
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
  if list(boundaries) != sorted(boundaries):
    raise ValueError(f"lr boundaries must be increasing, got {boundaries}")
  if cosine_steps < 0 or (cosine_steps and boundaries):
    raise ValueError(
      "cosine_steps must be >= 0 and excludes lr boundaries; got "
      f"{cosine_steps} with boundaries {boundaries}"
    )
  return np.asarray([warmup_steps, cosine_steps, *boundaries], np.float32)


def _schedule(base_lr, warmup_init_factor, decay_factor, cosine, steps):
  """`create_learning_rate_schedule` with its step counts in `steps`
  (`schedule_steps`; a traced array inside the training step)."""

  # The warm-up's slope is (1 - f0) * (1 / W) and the cosine's t * (1 / T):
  # the floats XLA computed when W and T were constants of the step (its
  # simplifier multiplies by a constant's reciprocal and folds constant
  # products), so traced steps give the same learning rates as constant
  # ones (tests/test_optim.py) and a run the same numbers as before they
  # became an input. Written as (1 - f0) * (t / W), the rate differed in
  # the last bit at some warm-up steps, and `make demo` went from 0.9234 to
  # 0.9058 on the same machine.
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warmup, cosine_steps = steps[0], steps[1]
    decay = jnp.ones([], jnp.float32)
    for i in range(2, len(steps)):  # The boundaries.
      decay = decay * jnp.where(step >= steps[i], decay_factor, 1.0)
    if cosine:
      t = jnp.minimum(step * (1.0 / cosine_steps), 1.0)
      decay = 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    lr = base_lr * decay
    rise = (1.0 - warmup_init_factor) * (1.0 / jnp.maximum(warmup, 1.0))
    frac = warmup_init_factor + step * rise
    return jnp.where(step < warmup, lr * frac, lr)

  return schedule


def weight_decay_mask(params: Any) -> Any:
  """Which parameters take weight decay: all but biases and BatchNorm's.

  The Caffe release (`ssd_pascal.py`) gives weights `decay_mult: 1` and biases
  `decay_mult: 0`; the conv4_3 L2Normalize scale has no param spec there, so
  it takes the default `decay_mult: 1` and is decayed too. NVIDIA's SSD300
  and torchvision's references decay neither biases nor BatchNorm's scales
  and offsets. So: leaves named `bias` are not decayed, nor the `scale` of a
  normalisation layer (a module whose parameters are exactly `scale` and
  `bias`: BatchNorm, LayerNorm); all others (kernels, the L2Norm scale,
  which has no bias) are.

  Args:
    params: a parameter tree (nested dicts).

  Returns:
    The same tree structure with bool leaves.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  leaves_of = {}
  for k in flat:
    leaves_of.setdefault(k[:-1], set()).add(k[-1])
  norm = {m for m, names in leaves_of.items() if names == {"scale", "bias"}}
  mask = {k: k[-1] != "bias" and k[:-1] not in norm for k in flat}
  return flax.traverse_util.unflatten_dict(mask)


class OptimizerSpec(NamedTuple):
  """The optimizer but for its schedule's step counts: static and hashable
  (part of the step's `StepSettings`); `build_optimizer` adds the counts."""

  name: str
  learning_rate: float
  warmup_init_factor: float
  decay_factor: float
  momentum: float
  weight_decay: float
  grad_clip_norm: float
  cosine: bool
  num_boundaries: int


def optimizer_spec(config: ml_collections.ConfigDict) -> OptimizerSpec:
  """The config's optimizer, less its schedule's step counts.

  Args:
    config: the training config (see `create_optimizer`).

  Raises:
    ValueError: naming config.optimizer or config.lr_schedule when unknown.
  """
  name = config.get("optimizer", "sgd")
  if name not in ("sgd", "adam"):
    raise ValueError(f"config.optimizer must be 'sgd' or 'adam', got {name!r}")
  return OptimizerSpec(
    name,
    float(config.learning_rate),
    float(config.warmup_init_factor),
    float(config.lr_decay_factor),
    float(config.momentum or 0.0),
    float(config.weight_decay or 0.0),
    float(config.grad_clip_norm or 0.0),
    _cosine_steps(config) > 0,
    len(config.lr_boundaries),
  )


def config_schedule_steps(config: ml_collections.ConfigDict) -> np.ndarray:
  """`schedule_steps` of a config: its warm-up, `lr_boundaries` and, for
  `lr_schedule="cosine"`, `num_steps`."""
  return schedule_steps(
    int(config.warmup_steps),
    tuple(int(b) for b in config.lr_boundaries),
    _cosine_steps(config),
  )


def build_optimizer(
  spec: OptimizerSpec, steps: Any
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax chain and lr schedule of `spec` with step counts `steps`.

  The transformation's state does not depend on `steps`, so the training
  step builds it inside its trace with `steps` as an input, and one
  compiled step serves every re-plan of a run.

  Args:
    spec: `optimizer_spec(config)`.
    steps: `config_schedule_steps(config)`, numpy or traced.

  Returns:
    (optax transformation, lr schedule).

  Raises:
    ValueError: when `steps` does not hold `spec`'s boundaries.
  """
  if np.shape(steps) != (2 + spec.num_boundaries,):
    raise ValueError(
      f"schedule steps must be [{2 + spec.num_boundaries}] (warm-up, cosine "
      f"and {spec.num_boundaries} boundaries), got shape {np.shape(steps)}"
    )
  if spec.learning_rate < 0:
    raise ValueError(f"learning rate must be >= 0, got {spec.learning_rate}")
  schedule = _schedule(
    spec.learning_rate,
    spec.warmup_init_factor,
    spec.decay_factor,
    spec.cosine,
    steps,
  )
  parts = []
  if spec.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(spec.grad_clip_norm))
  if spec.weight_decay:
    parts.append(
      optax.add_decayed_weights(spec.weight_decay, mask=weight_decay_mask)
    )
  if spec.name == "sgd":
    parts.append(optax.sgd(schedule, momentum=spec.momentum or None))
  else:
    parts.append(optax.adam(schedule))
  return optax.chain(*parts), schedule


def create_optimizer(
  config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """SGD with momentum, coupled weight decay, warm-up + step decay, clipping.

  optax's momentum trace differs from Caffe's only in where lr enters the
  momentum buffer (identical at constant lr). `build_optimizer` of the
  config's `optimizer_spec` and `config_schedule_steps`: the same
  transformation (and state) the training step builds.

  Args:
    config: the training config (fields `optimizer` ("sgd" | "adam"; adam
      with the same L2 term, for small from-scratch models), `learning_rate`,
      `warmup_steps`, `warmup_init_factor`, `lr_boundaries`,
      `lr_decay_factor`, `lr_schedule` ("piecewise" at `lr_boundaries`, or
      "cosine" over `num_steps`), `momentum`, `weight_decay`,
      `grad_clip_norm` (0 disables)).

  Returns:
    (optax transformation, lr schedule).

  Raises:
    ValueError: naming config.optimizer when it is unknown, or on a bad
      schedule (`schedule_steps`).
  """
  return build_optimizer(optimizer_spec(config), config_schedule_steps(config))


def _cosine_steps(config: ml_collections.ConfigDict) -> int:
  kind = config.get("lr_schedule", "piecewise")
  if kind not in ("piecewise", "cosine"):
    raise ValueError(
      f"config.lr_schedule must be one of 'piecewise', 'cosine'; got {kind!r}"
    )
  return int(config.num_steps) if kind == "cosine" else 0
