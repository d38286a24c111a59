#!/usr/bin/env bash
# Issue 37: the contrast-dependent size floor (--floor-contrast) for a shipped demo bundle, on the maps that
# scripts/recalibrate_steps.sh cached: the same calibration recipe (scripts/_recipes.sh) plus --floor-contrast-values,
# then the held-out sets of its card scored at the new operating point. Weights are not changed; nothing is installed.
# Usage: scripts/floor_contrast.sh ORGAN [WORK_DIR] [SWEEP_FLAGS...]  (WORK_DIR: recalibrate_steps.sh's, default
# build/recalibrate-steps; SWEEP_FLAGS come after the recipe's and win, e.g. --threshold-scales 1.15 --grow-to-values
# 0.7 to keep the shipped point's threshold and growth and vary only the floors). Floors F: 0 1.5 2 3.
# Writes WORK_DIR/ORGAN/fc/; restartable (done.* files).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
. scripts/_recipes.sh
organ="${1:?usage: scripts/floor_contrast.sh ORGAN [WORK_DIR] [SWEEP_FLAGS...]}"
W="${2:-build/recalibrate-steps}"
shift $(( $# < 2 ? $# : 2 ))
demo_recipe "$organ" || exit 2
o="$W/$organ"; f="$o/fc"
[ -e "$o/done.sweep" ] || { echo "run scripts/recalibrate_steps.sh $W 20 $organ first" >&2; exit 2; }
mkdir -p "$f"
if [ ! -e "$f/done.sweep" ]; then
  [ -d "$f/sweep" ] || cp -r "$o/sweep" "$f/sweep"  # the cached maps: only post-processing is redone
  da sweep --data "$o/val" --bundle "Resources/Models/$organ-demo" --out "$f/sweep" --overwrite --sampler ddpm \
    "${recipe[@]}" "$@" --floor-contrast-values 0 1.5 2 3 --write-bundle "$f/$organ-demo"
  touch "$f/done.sweep"
fi
for ev in "$o"/ev-*; do
  name="${ev##*/ev-}"
  [ -e "$f/done.ev-$name" ] && continue
  [ -d "$f/ev-$name" ] || cp -r "$ev" "$f/ev-$name"
  da evaluate --data "$o/$name" --bundle "$f/$organ-demo" --threshold bundle --out "$f/ev-$name" --overwrite
  touch "$f/done.ev-$name"
done
echo "done: $f/sweep/sweep/report.md, $f/ev-*/report/summary.md"
