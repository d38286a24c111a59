#!/usr/bin/env bash
# Issue 39's profile before and after, on one CPU in one session: `bench --profile` (one case split into op classes)
# of the reference case (thesis size, guidance 100, 2 ROIs) as DDIM-50 (profiled at 10 steps: every step does the same
# work) and as the fast default (DPM-Solver++ 20 steps), and of kidney-demo's recommended run (demo size, DDPM,
# guidance 100, 16 ROIs = 2 kidneys x 8 samples) at its old 50 and its new 20 steps; all at float32, which `auto` is
# on a CPU without AMX (docs/performance.md). Each profile's table goes to OUT/<name>.txt, its JSON to OUT/<name>.json;
# one that exists is not rerun. A few minutes on 2 cores.
# Usage: scripts/profile_cases.sh [OUT]   (default build/profile-cases)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
O="${1:-build/profile-cases}"
mkdir -p "$O"
run() {
  local n=$1; shift
  [ -e "$O/$n.json" ] || da bench --profile --no-reference --out "$O/$n.json" "$@" > "$O/$n.txt" 2>&1
}
run thesis-ddim10 --sizes thesis-kidney --samplers ddim --guidance-values 100 --rois 2 --steps 10 --precisions fp32
run thesis-dpmpp20 --sizes thesis-kidney --samplers dpmpp --guidance-values 100 --rois 2 --steps 20 --precisions fp32
run demo-ddpm50 --sizes demo --samplers ddpm --guidance-values 100 --rois 16 --steps 50 --precisions fp32
run demo-ddpm20 --sizes demo --samplers ddpm --guidance-values 100 --rois 16 --steps 20 --precisions fp32
echo "done: $O/*.txt"
