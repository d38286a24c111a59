#!/usr/bin/env bash
# Issue 39, item 4: what a user waits for. Each shipped demo bundle's recommended `run` (DDPM, 50 steps; a process
# per case, as the command line and the Slicer worker start one) against the same run at STEPS (default 20), on one
# phantom per organ (seed 1000, held out): the process's wall clock, detect()'s own time (run.json's timings_s) and
# the rest (interpreter and imports, the bundle, reading and writing files, overview.png). REPEATS rounds, the
# configurations interleaved. Usage: scripts/run_times.sh [WORK_DIR] [STEPS] [REPEATS]  (defaults: build/run-times,
# 20, 2). Precision auto; the machine should be idle.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
W="${1:-build/run-times}"
STEPS="${2:-20}"
REPEATS="${3:-2}"
mkdir -p "$W"
for organ in kidney liver brain; do
  [ -d "$W/$organ" ] || da phantom --organ "$organ" --seed 1000 --cases 1 --out "$W/$organ" > /dev/null
done
inputs() {
  case "$1" in
    brain) echo "$W/brain/t1n.nii.gz $W/brain/t1c.nii.gz $W/brain/t2w.nii.gz $W/brain/t2f.nii.gz" ;;
    *) echo "$W/$1/ct.nii.gz" ;;
  esac
}
printf '%-12s %5s %6s %9s %9s %9s\n' bundle steps round "wall s" "detect s" "rest s"
for round in $(seq "$REPEATS"); do
  for steps in 50 "$STEPS"; do
    for organ in kidney liver brain; do
      out="$W/out-$organ-$steps"
      rm -rf "$out"
      t0=$EPOCHREALTIME
      # shellcheck disable=SC2046  # the channel files, split on purpose
      da run --bundle "Resources/Models/$organ-demo" --organ "$organ" --input $(inputs "$organ") \
        --totalseg "$W/$organ/segmentations" --steps "$steps" --out "$out" > /dev/null 2>&1
      t1=$EPOCHREALTIME
      "$PY" - "$out/run.json" "$t0" "$t1" "$organ-demo" "$steps" "$round" <<'PYEOF'
import json, sys
t = json.load(open(sys.argv[1]))["timings_s"]
wall, detect = float(sys.argv[3]) - float(sys.argv[2]), sum(t.values())
print(f"{sys.argv[4]:<12} {sys.argv[5]:>5} {sys.argv[6]:>6} {wall:9.2f} {detect:9.2f} {wall - detect:9.2f}")
PYEOF
    done
  done
done
