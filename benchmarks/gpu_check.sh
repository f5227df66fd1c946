#!/usr/bin/env bash
# The GPU check (docs/gpu-check.md): on a machine with a CUDA GPU, the suite's CUDA tests, a 1-GPU
# torchrun (NCCL) training run of the tiny pipeline, bench_seg's retraining step in bf16 against the
# authors' unfused float32 way, and a small demo; one summary table, and gpu_check.json (with
# gpu_check.log and gpu_check_bench_seg.json) in the output folder. Under 8 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]     default: $OUT if set, else benchmarks/results/gpu_check
#   WEAKTR_GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh DIR   the same steps on the CPU with tiny
#                                              sizes: a dry run of the script, its timings mean nothing
#
# It runs the source tree (src/ first on PYTHONPATH) with $PYTHON (default python3), whose packages
# must include torch, timm and the project's other dependencies; pydensecrf is optional (without it
# the demo runs with the CRFs off, and the JSON says so).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${WEAKTR_GPU_CHECK_DEVICE:-cuda}
DEST=${1:-${OUT:-benchmarks/results/gpu_check}}
mkdir -p "$DEST"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/weaktr-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# on the GPU the whole check gets 8 minutes; each step has its own, smaller limit (gpu_check.py)
LIMIT=$([ "$DEVICE" = cuda ] && echo 480 || echo 2400)
timeout "$LIMIT" "${PYTHON:-python3}" benchmarks/gpu_check.py --device "$DEVICE" --out "$DEST" --work "$WORK"
