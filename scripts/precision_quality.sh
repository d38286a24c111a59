#!/usr/bin/env bash
# Issue 25, item 4: does the fast path (--precision auto = bf16 on a CPU with native bfloat16) find the same
# lesions, with the same false positives per kidney, as fp32, within the sampler's run-to-run noise?
# Runs `evaluate` with the shipped kidney-demo bundle at its calibrated operating point on the 30 validation
# (seeds 500-529) and 20 held-out (seeds 1000-1019) kidney phantoms: fp32 seed 0, fp32 seed 1 (the noise)
# and the fast path seed 0 (the fast path first); then prints lesions found and FP per kidney side by side.
# Usage: scripts/precision_quality.sh [WORK_DIR]   (default build/precision-quality; resumable: evaluate
# caches its maps). Costs about 3 x 50 demo cases (on an idle 2-core CPU ~30 s each at fp32).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
W="${1:-build/precision-quality}"
BUNDLE=Resources/Models/kidney-demo
mkdir -p "$W"
[ -d "$W/kidney-val" ] || da phantom --organ kidney --seed 500 --cases 30 --out "$W/kidney-val"
[ -d "$W/kidney-test" ] || da phantom --organ kidney --seed 1000 --cases 20 --out "$W/kidney-test"
for data in kidney-test kidney-val; do
  for run in "auto 0" "fp32 0" "fp32 1"; do
    set -- $run
    da evaluate --data "$W/$data" --bundle "$BUNDLE" --threshold bundle --precision "$1" --seed "$2" \
      --device cpu --out "$W/ev-$data-$1-seed$2"
  done
done
"$PY" - "$W" <<'PYEOF'
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
for data in ("kidney-test", "kidney-val"):
    for run in ("auto-seed0", "fp32-seed0", "fp32-seed1"):
        if not (w / f"ev-{data}-{run}" / "report" / "summary.json").is_file():
            continue
        s = json.loads((w / f"ev-{data}-{run}" / "report" / "summary.json").read_text())["summary"]
        d = s["lesion_detection"]
        print(f"{data:12} {run:11} found {d['tp']}/{d['tp'] + d['fn']}  FP {d['fp']}  "
              f"FP/kidney {s['fp_per_organ']['mean']}  Dice {s['dice']['mean']}")
PYEOF
