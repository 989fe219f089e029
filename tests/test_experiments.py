"""The scripts in experiments/: their arithmetic by hand and tiny runs.

One section per script (bench.py, gpu_forward_probe.py,
bench_alternatives.py, bench_model.py, bench_layers.py,
bench_postprocess.py, bench_input.py, bench_zoo.py, sweeps/sweep.py; the
torch reference torch_nvidia_ssd300.py is run by test_weights_nvidia.py where
torch is installed). The scripts are not
a package: the `load_experiment` fixture of conftest.py imports them by
path. Every run here uses tiny settings; the figures themselves are not
checked.
"""

import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import models

# --- bench.py -----------------------------------------------------------------


@pytest.fixture(scope="module")
def bench(load_experiment):
  return load_experiment("bench")


def test_throughput_hand_worked(bench):
  # sgemm: 2 * 2048^3 = 17.18 GFLOP; at 0.1 s -> 171.8 GFLOP/s, torch 0.2 s.
  # forward b2: 2 * 62.75 = 125.5 GFLOP in 1 s (jax) and 0.5 s (torch).
  rows = [
    ("sgemm_2048", [0.09, 0.1], [0.19, 0.2]),
    ("forward_b2_float32", [0.9, 1.0], [0.4, 0.5]),
    ("forward_b2_bfloat16", [0.9, 1.0], None),  # not float32: skipped
    ("train_b1_float32", [1.0, 2.0], None),  # 188.25 GFLOP in 2 s
    ("match_b32", [0.001, 0.002], [0.01, 0.02]),  # not a model row
  ]
  got = {name: (j, t) for name, j, t in bench.throughput(rows)}
  sgemm = 2 * 2048**3 / 1e9
  assert got["sgemm_2048"] == pytest.approx((sgemm / 0.1, sgemm / 0.2))
  assert got["forward_b2_float32"] == pytest.approx((125.5, 251.0))
  assert got["forward_b2_float32_share_of_sgemm"] == pytest.approx(
    (125.5 / (sgemm / 0.1), 251.0 / (sgemm / 0.2))
  )
  assert got["train_b1_float32"][0] == pytest.approx(188.25 / 2)
  assert got["train_b1_float32"][1] is None
  assert got["train_b1_float32_share_of_sgemm"][1] is None
  assert set(got) == {
    "sgemm_2048",
    "forward_b2_float32",
    "forward_b2_float32_share_of_sgemm",
    "train_b1_float32",
    "train_b1_float32_share_of_sgemm",
  }


def test_throughput_without_sgemm_row(bench):
  got = bench.throughput([("forward_b1_float32", [0.5, 0.5], None)])
  assert got == [("forward_b1_float32", pytest.approx(62.75 / 0.5), None)]


def test_bench_main_small(bench, tmp_path, capsys):
  out = tmp_path / "bench.json"
  bench.main(
    [
      "--only",
      "sgemm,match",
      "--repeats",
      "1",
      "--no-torch",
      "--json",
      str(out),
    ]
  )
  printed = capsys.readouterr().out
  assert "sgemm_2048" in printed and "match_b32" in printed
  result = json.loads(out.read_text())
  names = [row["name"] for row in result["rows"]]
  assert names == ["sgemm_2048", "match_b32"]
  assert all(
    row["median"] > 0 and row["torchvision_median"] is None
    for row in result["rows"]
  )
  (rate,) = result["throughput_GFLOP_per_s"]
  assert rate["name"] == "sgemm_2048" and rate["ssd_jax"] > 0


def test_bench_train_setup_runs_the_library_step(bench, monkeypatch):
  # The train_* rows' set-up, on a tiny SSD instead of SSD300 (same code
  # path: ssd_jax.step.p_train_step with the training defaults' settings).
  monkeypatch.setattr(
    models,
    "SSD300",
    lambda **kw: models.SSD(image_size=64, width=0.0625, **kw),
  )
  tiny_images = bench._images
  monkeypatch.setattr(bench, "_images", lambda rng, b: tiny_images(rng, b, 64))
  step, state, sharded = bench._jax_train_setup(2, jnp.float32)
  d = jax.local_device_count()
  assert sharded["image"].shape == (d, 2 // d, 64, 64, 3)
  assert sharded["boxes"].shape == (d, 2 // d, 10, 4)
  assert state.step.shape == (d,)
  before = jax.tree.map(lambda x: np.array(x[0]), state.params)
  state, metrics = step(state, sharded)
  assert np.all(np.asarray(state.step) == 1)
  assert np.all(np.isfinite(np.asarray(metrics["loss"])))
  assert np.all(np.asarray(metrics["num_positives"]) > 0)
  changed = jax.tree.map(
    lambda a, b: not np.array_equal(a, b[0]), before, state.params
  )
  assert any(jax.tree.leaves(changed))


# --- gpu_forward_probe.py -----------------------------------------------------


@pytest.fixture(scope="module")
def probe(load_experiment):
  return load_experiment("gpu_forward_probe")


def test_probe_library_calls_hand_written(probe):
  hlo = (
    "%a = (f32[1]{0}, u8[0]{0}) custom-call(%x), custom_call_target="
    '"__cudnn$convForward", backend_config={"cudnn_conv_backend_config":'
    '{"algorithm":{"algo_id":"28","math_type":"TENSOR_OP_MATH"}}}\n'
    "%b = (f32[1]{0}, u8[0]{0}) custom-call(%y), custom_call_target="
    '"__cudnn$convForward", backend_config={"cudnn_conv_backend_config":'
    '{"algorithm":{"algo_id":"1","math_type":"DEFAULT_MATH"}}}\n'
    '%c = f32[1]{0} custom-call(%z), custom_call_target="__cublas$gemm"\n'
  )
  assert probe.library_calls(hlo) == {
    "custom_calls": {"__cudnn$convForward": 2, "__cublas$gemm": 1},
    "math_types": {"TENSOR_OP_MATH": 1, "DEFAULT_MATH": 1},
  }
  assert probe.library_calls("%x = f32[] add(%a, %b)") == {
    "custom_calls": {},
    "math_types": {},
  }


def test_probe_smoke(probe, tmp_path):
  # With --profile, as bench_gpu.sh runs it (here: the CPU's host plane).
  rows = probe.main(
    ["--smoke", "--repeats", "1", "--out", str(tmp_path), "--profile"]
  )
  assert [r["variant"] for r in rows] == list(probe.VARIANTS)
  assert all(r["img_per_s"] > 0 and r["tflop_per_s"] is None for r in rows)
  saved = json.loads((tmp_path / "probe.json").read_text())
  assert [r["variant"] for r in saved["rows"]] == list(probe.VARIANTS)
  assert (tmp_path / "jit_grad.hlo.txt").read_text().startswith("HloModule")
  for row in rows:
    ops = row["top_ops"]["host"]
    assert 0 < len(ops) <= 10
    times = [ms for _, ms, _ in ops]
    assert times == sorted(times, reverse=True)
    assert all(isinstance(name, str) and n >= 1 for name, _, n in ops)
  assert saved["rows"][0]["top_ops"]["host"] == [
    list(op) for op in rows[0]["top_ops"]["host"]
  ]


# --- bench_alternatives.py ----------------------------------------------------


@pytest.fixture(scope="module")
def alternatives(load_experiment):
  return load_experiment("bench_alternatives")


@pytest.mark.parametrize("side,dilation", [(19, 6), (7, 1), (5, 6), (1, 2)])
def test_taps_equal_the_dilated_convolution(alternatives, side, dilation):
  # side 5 with dilation 6: only the centre tap meets the image.
  rng = np.random.default_rng(side)
  x = jnp.asarray(rng.normal(size=(2, side, side, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
  ref = alternatives.conv_dilated(x, w, dilation)
  np.testing.assert_allclose(
    alternatives.conv_dilated_taps(x, w, dilation), ref, rtol=1e-5, atol=1e-5
  )
  if side == 5:  # Against the centre tap alone, by hand.
    np.testing.assert_allclose(
      ref, jnp.einsum("nhwc,co->nhwo", x, w[1, 1]), rtol=1e-5, atol=1e-5
    )


def test_bench_alternatives_small(alternatives, capsys):
  results = alternatives.main(
    ["--only", "fc6,match", "--batch", "1", "--repeats", "1"]
  )
  assert set(results["fc6"]) == {"xla_fwd", "xla_vjp", "taps_fwd", "taps_vjp"}
  assert all(lo > 0 and med >= lo for lo, med in results["match"].values())
  out = capsys.readouterr().out
  assert "argmaxes_transposed: argmax results identical to ours: True" in out
  transposes = alternatives.bench_transposes(1, batch=1)
  # 1.39 GB at batch 8, linear in the batch.
  assert transposes["GB"] == pytest.approx(1.39 / 8, rel=0.01)


# --- bench_model.py -----------------------------------------------------------


def test_bench_model_smoke(capsys, load_experiment):
  """experiments/bench_model.py runs end to end on a tiny model."""
  bench = load_experiment("bench_model")
  bench.main(
    [
      "--image-size=64",
      "--width=0.0625",
      "--num-classes=3",
      "--batch-sizes=1",
      "--dtypes=float32",
      "--train-batch=1",
      "--repeats=1",
    ]
  )
  out = capsys.readouterr().out
  assert "forward float32" in out and "train step float32" in out


# --- bench_layers.py ----------------------------------------------------------


def test_bench_layers_smoke(capsys, load_experiment):
  bench_layers = load_experiment("bench_layers")
  rows = bench_layers.bench(1, 1, jnp.float32, {"conv5_1", "pool4"})
  assert [r["layer"] for r in rows] == ["conv5_1", "pool4"]
  conv, pool = rows
  assert conv["fwd_min_ms"] > 0 and conv["grad_gflops"] > 0
  assert conv["dgrad_min_ms"] > 0 and conv["wgrad_min_ms"] > 0
  # Each gradient alone costs one forward's FLOPs, the full vjp two.
  assert conv["wgrad_gflops"] == pytest.approx(
    conv["fwd_gflop"] / (conv["wgrad_min_ms"] / 1e3)
  )
  assert conv["count"] == 3
  assert pool["plain_grad_min_ms"] > 0 and pool["grad_ratio"] > 0
  out = capsys.readouterr().out
  assert "conv5_1" in out and "pool4" in out


# --- bench_postprocess.py -----------------------------------------------------


def test_bench_postprocess_smoke(capsys, load_experiment):
  """experiments/bench_postprocess.py runs (tiny settings)."""
  bench = load_experiment("bench_postprocess")
  bench.main(["--repeats", "1", "--eval-images", "5"])
  out = capsys.readouterr().out
  assert "decode_detections untrained" in out
  assert "evaluate_voc, 5 images" in out


# --- bench_input.py -----------------------------------------------------------


def test_bench_input_smoke(tmp_path, load_experiment):
  """experiments/bench_input.py runs (tiny settings) and writes its JSON."""
  bench = load_experiment("bench_input")
  out = str(tmp_path / "bench.json")
  results = bench.main(
    ["--steps", "1", "--warmup", "1", "--batch", "2", "--num_images", "3",
     "--image_size", "32", "--json", out]
  )  # fmt: skip
  assert results["synthetic_images_per_s"] > 0
  assert results["voc_folder_images_per_s"] > 0
  assert Path(out).exists()


def test_sweep_expands_runs_and_summarises(
  tmp_path, shapes_run, load_experiment
):
  sweep = load_experiment("sweeps/sweep")
  base, axes = sweep.SWEEPS["voc_lr_bs_size"]
  runs = sweep.expand(base, axes, str(tmp_path))
  assert len(runs) == 3 * 2 * 2
  assert len({r.workdir for r in runs}) == len(runs)
  assert "--config.model.image_size=512" in runs[-1].command
  with pytest.raises(ValueError, match="both set"):
    sweep.expand(base, [[{"a": 1}], [{"a": 2}]], str(tmp_path))
  # The tiny shapes sweep: summary rows from real workdirs.
  base, axes = sweep.SWEEPS["shapes_tiny"]
  runs = sweep.expand(base, axes, str(tmp_path))
  workdir, _ = shapes_run
  os.symlink(workdir, runs[0].workdir)
  rows = sweep.collect(runs)
  with open(os.path.join(workdir, "eval_results.json")) as f:
    saved = json.load(f)
  assert rows[0].step == 3
  assert rows[0].mAP == saved["mAP"] or math.isnan(rows[0].mAP)
  assert math.isnan(rows[1].mAP) and rows[1].step is None
  table = sweep.format_table(rows)
  assert len(table.splitlines()) == 4
  assert sweep.main(["--sweep=shapes_tiny", f"--root={tmp_path}"]) == 0


def test_gpu_fc6_smoke(load_experiment, capsys):
  # The three fc6 forms agree (the figures are for a GPU).
  rows = load_experiment("gpu_fc6").main(["--smoke"])
  assert [r[0] for r in rows] == [
    "dilated+bias+relu",
    "dilated+bias",
    "phases+bias+relu",
  ]
  assert all(r[2] < 1e-4 for r in rows)
  assert "phases+bias+relu" in capsys.readouterr().out


# --- bench_zoo.py ------------------------------------------------------------


def test_bench_zoo_smoke(capsys, load_experiment):
  """experiments/bench_zoo.py runs end to end on tiny zoo models."""
  bench = load_experiment("bench_zoo")
  bench.main(
    "--models ssdlite --repeats 1 --batch 2 --no-torch --width 0.125 "
    "--image-size 64".split()
  )
  out = capsys.readouterr().out
  assert "ssdlite   params" in out and "train_step" in out
