#!/usr/bin/env bash
# The benchmark on one GPU: training images/s at batch 32 and 128, forward
# images/s and model FLOP utilisation (62.75 GFLOP per SSD300 forward, ~3x
# for a training step), plus torchvision on the same GPU when importable,
# then experiments/gpu_forward_probe.py (why the float32 forward is slow:
# six variants, their optimized HLO and cuDNN math types, in
# OUT/gpu_forward_probe/; PROBE=0 skips it).
#
#   experiments/bench_gpu.sh [OUT_DIR]
#
# Installs the CUDA JAX wheels (and requirements.txt minus TensorFlow, which
# the GPU figures do not use) only when the Python it is given lacks a GPU
# JAX. Offline hosts: WHEELS=dir installs from a folder of wheels instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-experiments/results}
mkdir -p "$OUT"

if [ -n "${WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/ssd_jax_site \
    "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/ssd_jax_site:${PYTHONPATH:-}
fi
if ! "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")'; then
  "$PY" -m pip install -q "jax[cuda12]==0.10.2"
  grep -v -e tensorflow -e '^jax' requirements.txt | "$PY" -m pip install -q -r /dev/stdin
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())' | tee -a "$OUT/gpu.txt"
"$PY" experiments/bench.py --gpu --repeats 5 --json "$OUT/bench_gpu.json" \
  2>&1 | tee "$OUT/bench_gpu.txt"
if [ "${PROBE:-1}" != 0 ]; then
  "$PY" experiments/gpu_forward_probe.py --out "$OUT/gpu_forward_probe" \
    2>&1 | tee "$OUT/gpu_forward_probe.txt"
fi
