#!/usr/bin/env bash
# GPU check (issue 25): on a machine with CUDA, in under 5 minutes on one GPU, measures DDIM 50 steps with
# classifier guidance, 2 ROIs, at the demo and thesis kidney sizes in bf16 autocast and fp32 (seconds per case,
# peak GPU memory), runs demo's case at fp32 and bf16 (heatmap difference, lesion table identical?) and provokes
# an out-of-memory run on purpose, which must end with the documented error (exit 4, out_of_memory).
# Without CUDA it prints a "skipped" report and exits 0. Usage: scripts/gpu_check.sh [OUT.json]
# PYTHON (default: .venv/bin/python if present, else python3) must have this package and a CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
OUT="${1:-gpu_check.json}"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec timeout 600 "$PY" -m DiffusionAnomalyLib bench --gpu-check --out "$OUT"
