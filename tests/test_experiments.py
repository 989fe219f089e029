"""The scripts in experiments/: their arithmetic by hand and tiny runs.

One section per script (bench.py, gpu_forward_probe.py,
bench_alternatives.py, bench_model.py, bench_layers.py,
bench_postprocess.py, bench_input.py, bench_zoo.py, sweeps/sweep.py,
own_data/make_sets.py and own_data/run_recipe.py; the torch reference
torch_nvidia_ssd300.py is run by test_weights_nvidia.py where torch is
installed). The scripts are not
a package: the `load_experiment` fixture of conftest.py imports them by
path. Every run here uses tiny settings; the figures themselves are not
checked.
"""

import json
import math
import os
import time
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


# --- own_data/make_sets.py and own_data/run_recipe.py -------------------------

# The class names each held-out set must carry, written out independently.
OWN_DATA_CLASSES = {
  "shapes10": [
    "star", "hexagon", "arrow", "half_disc", "l_shape", "heart", "crescent",
    "pentagon", "trapezoid", "hourglass",
  ],
  "shapes10_upright": [
    "star", "hexagon", "arrow", "half_disc", "l_shape", "heart", "crescent",
    "pentagon", "trapezoid", "hourglass",
  ],
  "small_crowded": ["heart", "hexagon", "arrow", "crescent", "t_shape"],
  "large_few": ["pentagon", "l_shape", "half_disc", "hourglass", "star"],
  "grey_similar": [
    "arrow_up", "arrow_right", "arrow_down", "arrow_left", "hexagon_filled",
    "hexagon_outline", "star_filled", "star_outline",
  ],
  "textures": ["stripes", "checker", "dots", "marble", "wood", "bricks"],
  "mixed_sizes": [
    "hexagon", "heart", "arrow", "crescent", "trapezoid", "t_shape",
  ],
}  # fmt: skip


@pytest.fixture(scope="module")
def make_sets(load_experiment):
  return load_experiment("own_data/make_sets")


@pytest.fixture(scope="module")
def tiny_sets(make_sets, tmp_path_factory):
  """Every set with 4 train and 2 test images: (folder, stats)."""
  out = tmp_path_factory.mktemp("own_data")
  stats = make_sets.main(
    ["--out", str(out), "--num_train", "4", "--num_test", "2"]
  )
  return out, stats


def test_make_sets_reads_back_through_voc_folder(make_sets, tiny_sets):
  from ssd_jax.data import voc_folder

  out, stats = tiny_sets
  assert list(stats) == list(OWN_DATA_CLASSES)
  for name, classes in OWN_DATA_CLASSES.items():
    root = str(out / name)
    assert voc_folder.folder_class_names(root) == classes
    for split, count in (("train", 4), ("test", 2)):
      examples = list(voc_folder.read_voc_folder(root, split))
      assert len(examples) == count == stats[name]["splits"][split]["images"]
      boxes_seen = 0
      for k, ex in enumerate(examples):
        assert ex["image_id"] == f"{split}_{k:05d}"
        assert ex["image"].shape[:2] == tuple(ex["original_size"])
        boxes = ex["boxes"]
        assert np.all((boxes >= 0) & (boxes <= 1))
        assert np.all(boxes[:, 2:] > boxes[:, :2])
        assert np.all((ex["labels"] >= 1) & (ex["labels"] <= len(classes)))
        # Round trip: the boxes written are the boxes drawn, exactly.
        scene = make_sets.generate(name, split, k)
        np.testing.assert_allclose(boxes, scene.boxes, atol=1e-6)
        np.testing.assert_array_equal(ex["labels"], scene.labels + 1)
        np.testing.assert_array_equal(ex["difficult"], scene.difficult)
        boxes_seen += len(boxes)
      assert boxes_seen == stats[name]["splits"][split]["objects"] > 0
  grey = next(voc_folder.read_voc_folder(str(out / "grey_similar"), "test"))
  assert np.array_equal(grey["image"][..., 0], grey["image"][..., 2])
  large = next(voc_folder.read_voc_folder(str(out / "large_few"), "train"))
  assert large["original_size"] == (128, 192)


def test_make_sets_voc_pixels_by_hand(make_sets, tiny_sets):
  # An object's VOC bndbox is its visible pixel extent, 1-based inclusive.
  import xml.etree.ElementTree as ET

  out, _ = tiny_sets
  scene = make_sets.generate("shapes10", "train", 0)
  h, w = scene.image.shape[:2]
  root = ET.parse(out / "shapes10" / "Annotations" / "train_00000.xml")
  assert root.findtext("size/width") == str(w)
  for obj, box in zip(root.findall("object"), scene.boxes, strict=True):
    x0, y0, x1, y1 = (int(obj.findtext(f"bndbox/{t}")) for t in
                      ("xmin", "ymin", "xmax", "ymax"))  # fmt: skip
    # Columns x0 - 1 .. x1 - 1 (0-based) are the extent [x0 - 1, x1).
    assert (x0 - 1, y0 - 1, x1, y1) == tuple(
      int(round(v)) for v in box * [w, h, w, h]
    )


def test_make_sets_mask_box_and_occlusion_by_hand(make_sets):
  mask = np.zeros((8, 10), bool)
  mask[2:5, 3:7] = True  # rows 2..4, columns 3..6
  np.testing.assert_allclose(
    make_sets.mask_box(mask), [3 / 10, 2 / 8, 7 / 10, 5 / 8]
  )
  # Four objects painted in order: b hides the right half of a, c hides
  # all of d (so d is dropped); a keeps 20 of 40 pixels: not difficult; c
  # is 2x2 pixels, a sliver under 4 px: difficult.
  a = np.zeros((8, 10), bool)
  a[0:4, 0:10] = True
  b = np.zeros((8, 10), bool)
  b[0:8, 5:10] = True
  d = np.zeros((8, 10), bool)
  d[6:8, 0:2] = True
  c = d.copy()
  Obj = make_sets.Obj
  scene = make_sets.finish(
    np.zeros((8, 10, 3)),
    [Obj(0, a, 40), Obj(1, b, 40), Obj(2, d, 4), Obj(3, c, 4)],
  )
  np.testing.assert_array_equal(scene.labels, [0, 1, 3])
  np.testing.assert_allclose(
    scene.boxes,
    [[0, 0, 0.5, 0.5], [0.5, 0, 1, 1], [0, 0.75, 0.2, 1]],
    atol=1e-7,
  )
  np.testing.assert_array_equal(scene.difficult, [False, False, True])
  # A truncated object: 4 of its 8 pixels inside the image.
  cut = make_sets.finish(np.zeros((8, 10)), [Obj(0, c, 8)])
  assert cut.truncated.tolist() == [True] and cut.difficult.tolist() == [True]
  empty = make_sets.finish(np.zeros((8, 10, 3)), [])
  assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)


def test_make_sets_deterministic_and_checked(make_sets):
  one = make_sets.generate("textures", "train", 3, seed=1)
  again = make_sets.generate("textures", "train", 3, seed=1)
  np.testing.assert_array_equal(one.image, again.image)
  np.testing.assert_array_equal(one.boxes, again.boxes)
  other = make_sets.generate("textures", "test", 3, seed=1)
  assert not np.array_equal(one.image, other.image)
  with pytest.raises(ValueError, match="unknown set 'nope'"):
    make_sets.generate("nope", "train", 0)
  with pytest.raises(ValueError, match="split must be one of"):
    make_sets.generate("shapes10", "val", 0)
  with pytest.raises(ValueError, match="need >= 1 image per split"):
    make_sets.write_set("/nonexistent", "shapes10", 0, 1)
  with pytest.raises(SystemExit):
    make_sets.main(["--out", "/nonexistent", "--sets", "shapes10,nope"])


def _fake_python(tmp_path, body: str) -> str:
  """An executable standing in for `python -m ssd_jax.main ...`."""
  path = tmp_path / "fake_python"
  path.write_text(
    "#!/bin/sh\n"
    'for a in "$@"; do case "$a" in --workdir=*) w="${a#--workdir=}";; '
    "esac; done\n" + body
  )
  path.chmod(0o755)
  return str(path)


def test_run_recipe_runs_reads_and_writes(load_experiment, tiny_sets, tmp_path):
  run_recipe = load_experiment("own_data/run_recipe")
  out, _ = tiny_sets
  command = run_recipe.recipe_command(
    "/d/shapes10", "/w", ["--config.num_steps=50"], python="py"
  )
  assert command == [
    "py", "-m", "ssd_jax.main", "--config=configs/voc_folder.py:small",
    "--config.data.root=/d/shapes10", "--config.data.train_split=train",
    "--config.data.eval_split=test", "--workdir=/w", "--config.num_steps=50",
  ]  # fmt: skip
  python = _fake_python(
    tmp_path,
    'echo \'{"step": 50, "mAP": 0.25}\' > "$w/eval_results.json"\n'
    'echo \'{"choices": [{"field": "num_steps", "value": 50, "reason": '
    '"re-planned", "source": "recipe"}]}\' > "$w/recipe.json"\n',
  )
  results = tmp_path / "results"
  rows = run_recipe.main(
    ["--data", str(out), "--sets", "shapes10,grey_similar",
     "--workdir_root", str(tmp_path / "runs"), "--out_dir", str(results),
     "--date", "2026-01-02", "--python", python, "--config.num_steps=50"]
  )  # fmt: skip
  assert [(r.set, r.train_images, r.test_images, r.classes) for r in rows] == [
    ("shapes10", 4, 2, 10),
    ("grey_similar", 4, 2, 8),
  ]
  assert all(r.steps == 50 and r.mAP == 0.25 and r.status == "ok" for r in rows)
  table = (results / "own_data_2026-01-02.md").read_text()
  assert "| shapes10 | 4/2 | 10 | 50 |" in table and "| 0.250 | ok |" in table
  saved = json.loads((results / "own_data_2026-01-02.json").read_text())
  assert saved["overrides"] == ["--config.num_steps=50"]
  assert saved["runs"][1]["command"][-1] == "--config.num_steps=50"
  # No path of this machine in the record: placeholders instead.
  assert saved["data"] == "DATA"
  assert saved["runs"][0]["workdir"] == "RUNS/shapes10"
  assert saved["runs"][0]["command"][0] == "python"
  # The run's recipe choices and reasons (its speeds) are kept.
  assert saved["runs"][0]["recipe"] == [
    {"field": "num_steps", "reason": "re-planned"}
  ]
  assert "--config.data.root=DATA/shapes10" in saved["runs"][0]["command"]
  assert str(tmp_path) not in json.dumps(saved)
  with pytest.raises(FileExistsError, match="exists"):
    run_recipe.run_set("shapes10", str(out / "shapes10"),
                       str(tmp_path / "runs" / "shapes10"), 60)  # fmt: skip
  with pytest.raises(SystemExit):
    run_recipe.main(["--data", str(out), "--bogus"])


def test_run_recipe_budget_and_failure(load_experiment, tiny_sets, tmp_path):
  run_recipe = load_experiment("own_data/run_recipe")
  out, _ = tiny_sets
  root = str(out / "large_few")
  slow = _fake_python(tmp_path, "sleep 30\n")
  row, _ = run_recipe.run_set(
    "large_few", root, str(tmp_path / "slow"), 0.5, python=slow
  )
  assert row.status == "stopped" and row.minutes < 0.1
  assert row.steps is None and math.isnan(row.mAP)
  failing = tmp_path / "failing"
  failing.mkdir()
  bad = _fake_python(failing, "exit 3\n")
  row, _ = run_recipe.run_set(
    "large_few", root, str(tmp_path / "bad"), 60, python=bad
  )
  assert row.status == "failed (exit 3)"
  assert "| - | failed (exit 3) |" in run_recipe.format_table([row])


def test_calibrate_probe_times_runs_and_implies_the_reference(
  load_experiment, tiny_sets, tmp_path
):
  from ssd_jax import budget

  calibrate = load_experiment("own_data/calibrate_probe")
  table = 16 * 0.0243 * budget.SPACE_TO_DEPTH_COST  # 128 px, conv3_3, stem
  # A machine twice as slow as the table's, whose probe took 80 ms: the
  # table's machine would have taken 40.
  assert calibrate.implied_reference(0.08, 2 * table, table) == (
    pytest.approx(0.04)
  )
  out, _ = tiny_sets
  python = _fake_python(
    tmp_path,
    'mkdir -p "$w"\n'
    'echo \'{"choices": [{"field": "model.image_size", "value": 96, '
    '"reason": "r", "source": "command line"}, {"field": '
    '"model.conv3_3_map", "value": false, "reason": "r", "source": '
    '"recipe"}]}\' > "$w/recipe.json"\n'
    'echo "I1202 train.py] Timed steps 11-40: 250.0 ms per step (1 s)"\n'
    "sleep 60\n",  # stopped once the line is seen
  )
  start = time.monotonic()
  record = calibrate.main(
    ["--data", str(out), "--sets", "shapes10", "--sizes", "96",
     "--out_dir", str(tmp_path / "results"), "--date", "2026-01-02",
     "--python", python]
  )  # fmt: skip
  assert time.monotonic() - start < 50
  (run,) = record["runs"]
  assert run["measured_ms_per_step"] == pytest.approx(250.0)
  want_table = 16 * budget.seconds_per_image(96, False, stem="vgg")
  assert run["table_ms_per_step"] == pytest.approx(want_table * 1e3)
  assert run["implied_reference_ms"] == pytest.approx(
    run["probe_ms"] * want_table / 0.25
  )
  saved = json.loads(
    (tmp_path / "results" / "calibrate_probe_2026-01-02.json").read_text()
  )
  assert saved["median_implied_reference_ms"] == run["implied_reference_ms"]
  # A run that ends without the line is an error naming its log.
  quiet = _fake_python(tmp_path, "exit 0\n")
  with pytest.raises(RuntimeError, match="Timed steps"):
    calibrate.time_steps([quiet], str(tmp_path / "q.log"), 30)
