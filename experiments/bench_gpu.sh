#!/usr/bin/env bash
# The benchmark on one GPU: training images/s at batch 32 and 128, forward
# images/s and model FLOP utilisation (62.75 GFLOP per SSD300 forward, ~3x
# for a training step), plus torchvision on the same GPU when importable,
# then experiments/gpu_forward_probe.py (why the float32 forward is slow:
# six variants, their optimized HLO and cuDNN math types, in
# OUT/gpu_forward_probe/; PROBE=0 skips it). Both run with --profile: the top
# device ops of each training step and of each probe variant (a
# jax.profiler trace); PROFILE=0 leaves it out.
#
#   experiments/bench_gpu.sh [OUT_DIR]
#   PYTHON=/path/to/python WHEELS=/dir/of/wheels experiments/bench_gpu.sh
#
# Needs, in $PYTHON (default python3): a JAX that sees the GPU, flax, optax,
# ml_collections, numpy and absl (not TensorFlow: the GPU figures do not
# read data). What is there already is used as it is, so a host with no
# network and a GPU JAX runs the benchmark without installing anything.
# WHEELS=dir first installs every wheel in dir (offline, no dependency
# resolution) into /tmp/ssd_jax_site, put in front on PYTHONPATH: the way
# to bring a missing package (e.g. ml-collections) to an offline host. What
# is still missing after that is installed with pip from the network
# (`jax[cuda12]` at requirements.txt's version for a JAX without a GPU, the
# other packages at their requirements.txt pins); INSTALL=0 stops with the
# list of missing packages instead.
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

# The pip names of what $PY lacks; "jax" also when its JAX sees no GPU.
missing() {
  "$PY" - <<'EOF'
import importlib.util

modules = {
  "jax": "jax",
  "flax": "flax",
  "optax": "optax",
  "ml_collections": "ml-collections",
  "numpy": "numpy",
  "absl": "absl-py",
}
lacking = [p for m, p in modules.items() if importlib.util.find_spec(m) is None]
if "jax" not in lacking:
  import jax

  if jax.default_backend() != "gpu":
    lacking.insert(0, "jax")
print(" ".join(lacking))
EOF
}

pin() {  # requirements.txt's line for a pip name, else the bare name
  grep -i -m1 "^$1==" requirements.txt || echo "$1"
}

MISSING=$(missing)
if [ -n "$MISSING" ]; then
  echo "bench_gpu.sh: $PY lacks: $MISSING" >&2
  if [ "${INSTALL:-1}" = 0 ]; then
    echo "INSTALL=0: bring them as wheels with WHEELS=dir" >&2
    exit 1
  fi
  specs=()
  for name in $MISSING; do
    if [ "$name" = jax ]; then
      specs+=("jax[cuda12]==$(pin jax | sed 's/^jax==//')")
    else
      specs+=("$(pin "$name")")
    fi
  done
  "$PY" -m pip install -q "${specs[@]}" || {
    echo "bench_gpu.sh: pip install ${specs[*]} failed (no network?);" \
      "bring them as wheels with WHEELS=dir" >&2
    exit 1
  }
fi

PROFILE_FLAG=()
if [ "${PROFILE:-1}" != 0 ]; then
  PROFILE_FLAG=(--profile)
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  | tee "$OUT/gpu.txt" || true
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())' \
  | tee -a "$OUT/gpu.txt"
"$PY" experiments/bench.py --gpu --repeats 5 --json "$OUT/bench_gpu.json" \
  "${PROFILE_FLAG[@]}" 2>&1 | tee "$OUT/bench_gpu.txt"
if [ "${PROBE:-1}" != 0 ]; then
  "$PY" experiments/gpu_forward_probe.py --out "$OUT/gpu_forward_probe" \
    "${PROFILE_FLAG[@]}" 2>&1 | tee "$OUT/gpu_forward_probe.txt"
fi
