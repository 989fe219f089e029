"""Benchmark of the model zoo on this machine, beside torch (not a test).

For each model (the paper's VGG16 SSD300, NVIDIA's ResNet-50 SSD300,
torchvision's SSDLite320): parameters, GFLOP per image of the forward
(XLA's cost analysis), forward time at batch 1 and 8 (network only:
`model.apply`, evaluation mode) and a training step at batch 8 (forward in
training mode with BatchNorm statistics, on-device matching of random
ground truth, MultiBox loss with 3:1 hard negatives, backward, SGD). Where
torch and torchvision import, the torch counterparts are timed in the same
run: torchvision's `ssd300_vgg16` and `ssdlite320_mobilenet_v3_large`
(`head(backbone(x))`; training: its own loss with matching, the model's
`forward(images, targets)`) and NVIDIA's SSD300 re-created in
`torch_nvidia_ssd300.py` (training: forward, a MultiBox loss with 3:1
hard negatives on pre-matched random targets, as NVIDIA's data loader
matches on the host, backward, SGD). Ratio = ssd_jax / torch (< 1: ssd_jax
faster). Median of `--repeats` timed calls after warm-up, with the XLA CPU
flags and CPU ops of `python -m ssd_jax.main` (`runtime.apply_xla_cpu_flags`,
`cpu_fast_ops`; `--plain-ops` for flax's max pool and BatchNorm).

  python experiments/bench_zoo.py                 # all three, full size
  python experiments/bench_zoo.py --models ssdlite --repeats 1 --batch 2
"""

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_model  # noqa: E402 (a sibling script)

from ssd_jax import losses, matching, models, runtime  # noqa: E402

MODELS = {
  # name: (ssd_jax constructor(width, side, cpu_fast_ops), default side)
  "vgg16": (
    lambda w, s, f: models.SSD(81, image_size=s, width=w, cpu_fast_ops=f),
    300,
  ),
  "resnet50": (
    lambda w, s, f: models.SSD300ResNet50(81, width=w, cpu_fast_ops=f),
    300,
  ),
  "ssdlite": (
    lambda w, s, f: models.SSDLite320(
      91, image_size=s, width=w, cpu_fast_ops=f
    ),
    320,
  ),
}


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of `fn()` over `repeats` calls after one warm-up."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def ours(
  name: str,
  batch: int,
  repeats: int,
  width: float = 1.0,
  side: int = 0,
  cpu_fast_ops: bool = True,
) -> dict:
  """Parameters, GFLOP/image, forward b1/b batch and train-step seconds."""
  build, default_side = MODELS[name]
  side = side if side and name != "resnet50" else default_side
  model = build(width, side, cpu_fast_ops)
  x1 = jnp.zeros((1, side, side, 3))
  variables = jax.jit(model.init)(jax.random.key(0), x1)
  params = variables["params"]
  count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
  fwd = jax.jit(model.apply)
  cost = fwd.lower(variables, x1).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  out = {"params": count, "gflop": float(cost.get("flops", np.nan)) / 1e9}
  for b in (1, batch):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(b, side, side, 3)))
    out[f"forward_b{b}"] = median_seconds(
      lambda x=x: jax.block_until_ready(fwd(variables, x)), repeats
    )
  priors = jnp.asarray(model.priors())
  tx = optax.sgd(1e-3, momentum=0.9)
  stats = variables.get("batch_stats", {})

  @jax.jit
  def step(params, opt_state, stats, images, boxes, labels):
    loc_t, cls_t = matching.match_batch(boxes, labels, priors)

    def loss_fn(p):
      if stats:
        (loc, logits), new = model.apply(
          {"params": p, "batch_stats": stats},
          images,
          train=True,
          mutable=["batch_stats"],
        )
        new_stats = new["batch_stats"]
      else:
        loc, logits = model.apply({"params": p}, images)
        new_stats = stats
      return losses.multibox_loss(loc, logits, loc_t, cls_t)[0], new_stats

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, new_stats, loss

  images = jnp.asarray(
    np.random.default_rng(1).normal(size=(batch, side, side, 3)), jnp.float32
  )
  boxes, labels = bench_model.random_targets(batch, 16, model.num_classes, 2)
  opt_state = tx.init(params)
  out["train_step"] = median_seconds(
    lambda: jax.block_until_ready(
      step(params, opt_state, stats, images, boxes, labels)
    ),
    repeats,
  )
  return out


def theirs(name: str, batch: int, repeats: int) -> dict | None:
  """The torch counterpart's forward and train-step seconds, or None."""
  try:
    import torch
    import torchvision
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count() or 1)
  _, side = MODELS[name]
  det = torchvision.models.detection
  if name == "resnet50":
    import torch_nvidia_ssd300

    net = torch_nvidia_ssd300.nvidia_ssd300(torch, torchvision, 81)
    forward = net
  else:
    build = det.ssd300_vgg16 if name == "vgg16" else (
      det.ssdlite320_mobilenet_v3_large
    )  # fmt: skip
    kwargs = {"num_classes": 81 if name == "vgg16" else 91}
    net = build(weights=None, weights_backbone=None, **kwargs)

    def forward(x):
      features = list(net.backbone(x).values())
      return net.head(features)

  out = {}
  net.eval()
  with torch.no_grad():
    for b in (1, batch):
      x = torch.randn(b, 3, side, side)
      out[f"forward_b{b}"] = median_seconds(lambda x=x: forward(x), repeats)
  net.train()
  opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
  images = torch.randn(batch, 3, side, side)
  if name == "resnet50":
    net.eval()
    with torch.no_grad():
      priors = net(images[:1])[0].shape[-1]
    net.train()
    gen = torch.Generator().manual_seed(0)
    cls_t = (torch.rand(batch, priors, generator=gen) < 0.02).long() * 3
    loc_t = torch.randn(batch, 4, priors, generator=gen)

    def step():
      opt.zero_grad()
      loc, conf = net(images)
      pos = cls_t > 0
      loc_loss = torch.nn.functional.smooth_l1_loss(
        loc.transpose(1, 2)[pos], loc_t.transpose(1, 2)[pos], reduction="sum"
      )
      ce = torch.nn.functional.cross_entropy(conf, cls_t, reduction="none")
      neg = ce.detach().masked_fill(pos, 0)
      rank = neg.argsort(1, descending=True).argsort(1)
      hard = rank < 3 * pos.sum(1, keepdim=True)
      loss = (loc_loss + (ce * (pos | hard)).sum()) / pos.sum().clamp(min=1)
      loss.backward()
      opt.step()

  else:
    gen = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(batch):
      xy = torch.rand(8, 2, generator=gen) * side * 0.6
      wh = torch.rand(8, 2, generator=gen) * side * 0.3 + 10
      targets.append(
        {
          "boxes": torch.cat([xy, xy + wh], 1),
          "labels": torch.randint(1, 20, (8,), generator=gen),
        }
      )
    batch_images = list(images)

    def step():
      opt.zero_grad()
      loss = sum(net(batch_images, targets).values())
      loss.backward()
      opt.step()

  out["train_step"] = median_seconds(step, repeats)
  out["torch"] = (
    f"torch {torch.__version__} torchvision {torchvision.__version__}"
  )
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="vgg16,resnet50,ssdlite")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no-torch", action="store_true")
  parser.add_argument(
    "--width", type=float, default=1.0, help="ssd_jax only (smoke runs)"
  )
  parser.add_argument(
    "--image-size", type=int, default=0, help="ssd_jax vgg16/ssdlite only"
  )
  parser.add_argument(
    "--plain-ops",
    action="store_true",
    help="flax's max pool and BatchNorm, not cpu_ops' (model.cpu_fast_ops)",
  )
  args = parser.parse_args(argv)
  # The XLA CPU flags `python -m ssd_jax.main` uses (before JAX starts).
  runtime.apply_xla_cpu_flags()
  print(
    f"# {bench_model.cpu_name()}, {os.cpu_count()} CPUs, jax {jax.__version__},"
    f" python {platform.python_version()}",
    flush=True,
  )
  for name in args.models.split(","):
    mine = ours(
      name,
      args.batch,
      args.repeats,
      args.width,
      args.image_size,
      cpu_fast_ops=not args.plain_ops,
    )
    ref = None if args.no_torch else theirs(name, args.batch, args.repeats)
    print(
      f"{name:<9} params {mine['params']:,}  {mine['gflop']:.2f} GFLOP/image"
      + (f"  [{ref['torch']}]" if ref else ""),
      flush=True,
    )
    for key in ("forward_b1", f"forward_b{args.batch}", "train_step"):
      line = f"  {key:<12} ssd_jax {mine[key] * 1e3:9.1f} ms"
      if ref:
        line += (
          f"  torch {ref[key] * 1e3:9.1f} ms  ratio {mine[key] / ref[key]:.2f}"
        )
      print(line, flush=True)


if __name__ == "__main__":
  main()
