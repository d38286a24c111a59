#!/usr/bin/env bash
# Issue 39, item 4: each shipped demo bundle recalibrated at STEPS DDPM steps (default 20) instead of 50. The same
# calibration recipe as scripts/demo_models.sh (scripts/_recipes.sh) on the same 30 validation phantoms (seeds
# 500-529), `sweep --steps STEPS --write-bundle`, then `evaluate --threshold bundle` of the recalibrated copy on the
# held-out sets its card reports (seeds 1000 on: kidney and liver the varied and the older generator, 20 each, and
# for the kidney the incidental size mix of docs/evaluation.md, 32 each; brain 20), the median baseline beside.
# Weights are not changed; the copy is written to W/<organ>/<organ>-demo (version +recalibrated), not installed.
# Usage: scripts/recalibrate_steps.sh [WORK_DIR] [STEPS] [ORGANS]   (defaults: build/recalibrate-steps, 20,
# "kidney liver brain"). Restartable: phantom keeps complete cases, a finished step leaves W/<organ>/done.<step>, sweep
# and evaluate cache maps.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
. scripts/_recipes.sh
W="${1:-build/recalibrate-steps}"
STEPS="${2:-20}"
for organ in ${3:-kidney liver brain}; do
  demo_recipe "$organ" || exit 2
  o="$W/$organ"
  mkdir -p "$o"
  sets=("$organ-varied:${variety[*]}:20" "$organ-default::20")
  case "$organ" in
    kidney) sets+=("kidney-incidental:--lesion-sizes incidental:32"
                   "kidney-varied-incidental:--variety --lesion-sizes incidental:32") ;;
    brain) sets=("brain-default::20") ;;
  esac
  if [ ! -e "$o/done.phantoms" ]; then
    da phantom --organ "$organ" "${variety[@]}" --seed 500 --cases 30 --out "$o/val"
    for s in "${sets[@]}"; do
      IFS=: read -r name flags n <<< "$s"
      # shellcheck disable=SC2086  # the generator flags are words
      da phantom --organ "$organ" $flags --seed 1000 --cases "$n" --out "$o/$name"
    done
    touch "$o/done.phantoms"
  fi
  if [ ! -e "$o/done.sweep" ]; then
    da sweep --data "$o/val" --bundle "Resources/Models/$organ-demo" --out "$o/sweep" --overwrite --sampler ddpm \
      "${recipe[@]}" --steps "$STEPS" --write-bundle "$o/$organ-demo"  # later flags win: STEPS, not the recipe's
    touch "$o/done.sweep"
  fi
  for s in "${sets[@]}"; do
    name="${s%%:*}"
    [ -e "$o/done.ev-$name" ] && continue
    da evaluate --data "$o/$name" --bundle "$o/$organ-demo" --threshold bundle --out "$o/ev-$name" --overwrite
    touch "$o/done.ev-$name"
  done
done
echo "done: $W/<organ>/sweep/sweep/report.md, $W/<organ>/ev-*/report/summary.md"
