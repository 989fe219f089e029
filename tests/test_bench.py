"""experiments/bench.py, gpu_forward_probe.py and bench_alternatives.py:
their arithmetic by hand and tiny end-to-end runs."""

import json

import jax.numpy as jnp
import numpy as np
import pytest


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
  rows = probe.main(["--smoke", "--repeats", "1", "--out", str(tmp_path)])
  assert [r["variant"] for r in rows] == list(probe.VARIANTS)
  assert all(r["img_per_s"] > 0 and r["tflop_per_s"] is None for r in rows)
  saved = json.loads((tmp_path / "probe.json").read_text())
  assert [r["variant"] for r in saved["rows"]] == list(probe.VARIANTS)
  assert (tmp_path / "jit_grad.hlo.txt").read_text().startswith("HloModule")


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
