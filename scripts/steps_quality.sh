#!/usr/bin/env bash
# Issue 39, item 4: do the demo bundles' recommended stochastic runs (DDPM, 50 steps) find the same lesions, with
# the same false positives per organ, at fewer steps, within the sampler's run-to-run noise?
# Runs `evaluate` with each shipped demo bundle at its calibrated operating point (its threshold, samples, L,
# guidance) on held-out phantoms (seeds 1000 on; the demo bundles were trained on seeds >= 100000 and calibrated on
# 500-529): DDPM at 50 steps with seeds 0 and 1 (the reference and its noise) and at STEPS (default 20) with seed 0;
# then prints lesions found, false positives per organ and Dice side by side.
# Usage: scripts/steps_quality.sh [WORK_DIR] [ORGANS] [CASES] [STEPS]   (defaults: build/steps-quality,
# "kidney liver brain", 20, 20; resumable: evaluate caches its maps). Precision auto.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
W="${1:-build/steps-quality}"
ORGANS="${2:-kidney liver brain}"
CASES="${3:-20}"
STEPS="${4:-20}"
mkdir -p "$W"
for organ in $ORGANS; do
  [ -d "$W/$organ-test" ] || da phantom --organ "$organ" --seed 1000 --cases "$CASES" --out "$W/$organ-test"
  for run in "50 0" "$STEPS 0" "50 1"; do
    set -- $run
    [ -f "$W/ev-$organ-ddpm$1-seed$2/report/summary.json" ] || \
      da evaluate --data "$W/$organ-test" --bundle "Resources/Models/$organ-demo" --threshold bundle \
        --sampler ddpm --steps "$1" --seed "$2" --device cpu --out "$W/ev-$organ-ddpm$1-seed$2"
  done
done
"$PY" - "$W" <<'PYEOF'
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
for ev in sorted(w.glob("ev-*")):
    f = ev / "report" / "summary.json"
    if not f.is_file():
        continue
    s = json.loads(f.read_text())["summary"]
    d = s["lesion_detection"]
    print(f"{ev.name[3:]:24} found {d['tp']}/{d['tp'] + d['fn']}  FP {d['fp']}  "
          f"FP/organ {s['fp_per_organ']['mean']}  Dice {s['dice']['mean']}")
PYEOF
