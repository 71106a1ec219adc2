#!/usr/bin/env bash
# Benchmarks on a lent GPU machine: `python -m bench --quick --json --gpu` -> $OUT/bench-gpu.json.
#
# Run from the repository root (the device tool does). Python environment, first that works:
#   1. a carried/prepared .venv whose TensorFlow sees a GPU;
#   2. a fresh .venv with `pip install -e .[gpu,dask]` (needs a package index: set PIP_INDEX_URL /
#      PIP_FIND_LINKS to a wheelhouse where the machine has no network).
# Extra arguments go to the benchmark, e.g. `bench/gpu.sh --data /data/chest_xray`.
set -euo pipefail

OUT="${OUT:-$PWD/bench-out}"
mkdir -p "$OUT"
PYTHON=.venv/bin/python

sees_gpu() {
    "$1" - <<'PY' 2>/dev/null
import sys
import tensorflow as tf
sys.exit(0 if tf.config.list_physical_devices("GPU") else 1)
PY
}

if [ ! -x "$PYTHON" ] || ! sees_gpu "$PYTHON"; then
    echo "[gpu.sh] no usable .venv: installing .[gpu,dask] into a new one" >&2
    python3.11 -m venv .venv || python3 -m venv .venv
    "$PYTHON" -m pip install --quiet --upgrade pip
    "$PYTHON" -m pip install --quiet -e ".[gpu,dask]"
fi
sees_gpu "$PYTHON" || { echo "[gpu.sh] TensorFlow sees no GPU" >&2; nvidia-smi >&2 || true; exit 1; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/nvidia-smi.csv" || true
# Larger sizes than the CPU's --quick preset: a GPU finishes those in seconds, leaving only noise.
"$PYTHON" -m bench --quick --json --gpu --ingest-images 2000 --train-images 1000 --default-image-size 224 \
    --out "$OUT/bench-gpu.json" "$@" 2>"$OUT/bench-gpu.log"
echo "[gpu.sh] wrote $OUT/bench-gpu.json" >&2
