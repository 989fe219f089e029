"""The optimizer: learning-rate schedule, weight-decay mask, optax chain.

Caffe's update, which the paper's recipe uses, is `v = m v + lr (g + wd w);
w -= v`: L2 decay added to the gradient before momentum. `create_optimizer`
builds that from a config as an optax chain (optional global-norm clipping,
decoupled-by-mask L2 term, SGD with momentum or Adam).
"""

import functools
from typing import Any

import flax
import jax.numpy as jnp
import ml_collections
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
  if base_lr < 0 or warmup_steps < 0:
    raise ValueError(
      f"learning rate and warmup_steps must be >= 0, got {base_lr}, "
      f"{warmup_steps}"
    )
  boundaries = tuple(int(b) for b in boundaries)
  if list(boundaries) != sorted(boundaries):
    raise ValueError(f"lr boundaries must be increasing, got {boundaries}")
  if cosine_steps < 0 or (cosine_steps and boundaries):
    raise ValueError(
      "cosine_steps must be >= 0 and excludes lr boundaries; got "
      f"{cosine_steps} with boundaries {boundaries}"
    )

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    decay = jnp.ones([], jnp.float32)
    for b in boundaries:
      decay = decay * jnp.where(step >= b, decay_factor, 1.0)
    if cosine_steps:
      t = jnp.minimum(step / cosine_steps, 1.0)
      decay = 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    lr = base_lr * decay
    if warmup_steps > 0:
      frac = warmup_init_factor + (1.0 - warmup_init_factor) * (
        step / warmup_steps
      )
      lr = jnp.where(step < warmup_steps, lr * frac, lr)
    return lr

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


def create_optimizer(
  config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """SGD with momentum, coupled weight decay, warm-up + step decay, clipping.

  optax's momentum trace differs from Caffe's only in where lr enters the
  momentum buffer (identical at constant lr).

  Args:
    config: the training config (fields `optimizer` ("sgd" | "adam"; adam
      with the same L2 term, for small from-scratch models), `learning_rate`,
      `warmup_steps`, `warmup_init_factor`, `lr_boundaries`,
      `lr_decay_factor`, `lr_schedule` ("piecewise" at `lr_boundaries`, or
      "cosine" over `num_steps`), `momentum`, `weight_decay`,
      `grad_clip_norm` (0 disables)).

  Returns:
    (optax transformation, lr schedule). Equal configs give the very same
    objects, so the jitted step (which takes them as static arguments)
    compiles once per process.

  Raises:
    ValueError: naming config.optimizer when it is unknown.
  """
  return _optimizer(
    config.get("optimizer", "sgd"),
    float(config.learning_rate),
    int(config.warmup_steps),
    float(config.warmup_init_factor),
    tuple(int(b) for b in config.lr_boundaries),
    float(config.lr_decay_factor),
    float(config.momentum or 0.0),
    float(config.weight_decay or 0.0),
    float(config.grad_clip_norm or 0.0),
    _cosine_steps(config),
  )


def _cosine_steps(config: ml_collections.ConfigDict) -> int:
  kind = config.get("lr_schedule", "piecewise")
  if kind not in ("piecewise", "cosine"):
    raise ValueError(
      f"config.lr_schedule must be one of 'piecewise', 'cosine'; got {kind!r}"
    )
  return int(config.num_steps) if kind == "cosine" else 0


@functools.lru_cache(maxsize=16)
def _optimizer(
  name,
  learning_rate,
  warmup_steps,
  warmup_init_factor,
  boundaries,
  decay_factor,
  momentum,
  weight_decay,
  grad_clip_norm,
  cosine_steps,
):
  schedule = create_learning_rate_schedule(
    learning_rate,
    warmup_steps=warmup_steps,
    warmup_init_factor=warmup_init_factor,
    boundaries=boundaries,
    decay_factor=decay_factor,
    cosine_steps=cosine_steps,
  )
  parts = []
  if grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(grad_clip_norm))
  if weight_decay:
    parts.append(
      optax.add_decayed_weights(weight_decay, mask=weight_decay_mask)
    )
  if name == "sgd":
    parts.append(optax.sgd(schedule, momentum=momentum or None))
  elif name == "adam":
    parts.append(optax.adam(schedule))
  else:
    raise ValueError(f"config.optimizer must be 'sgd' or 'adam', got {name!r}")
  return optax.chain(*parts), schedule
