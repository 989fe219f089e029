"""experiments/bench.py: its throughput arithmetic and a tiny end-to-end run."""

import importlib.util
import json
import pathlib

import pytest

PATH = pathlib.Path(__file__).parents[1] / "experiments" / "bench.py"


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("bench", PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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
