#!/usr/bin/env bash
# Issue 37: does a latent grid twice as fine keep the small kidney lesions that kidney-demo loses? The single stages
# of `train all --preset tiny-fine` on the phantoms of docs/evaluation.md's small-lesion section, then the same
# calibration grid as a default `train all` (size-balanced, <= 1 false positive per kidney, the hybrid beside) on
# the validation phantoms V, and `evaluate` at the calibrated point on the held-out sets A and B (funnel included).
#   training: 100 varied incidental phantoms, seeds 100000-100099 (--variety --lesion-sizes incidental)
#   V: 30 varied incidental, seeds 500-529; A: 32 default incidental, seeds 1000-1031; B: 32 varied, same seeds
# The autoencoder: tiny-2x at 2 mm patches (a 4 mm latent grid), AE_ITS iterations (default 1500); the denoiser:
# tiny-3level on 16-voxel latent windows, DEN_ITS (default 2000); no classifier (s = 0: a default train all's
# classifier stayed at chance on these phantoms). Also D(E(x))'s contrast kept per lesion size against kidney-demo
# (scripts/autoencoder_contrast.py). Then the quieter map: 4 averaged DDPM samples and a 3-voxel median filter,
# calibrated on V by the same grid and evaluated on A and B (evalk4A, evalk4B); then guidance by a lesion-weighted
# classifier on the 4 mm latent, swept on V (cls, sweepg); then the denoiser trained longer (den45, small45, sweep45,
# eval45A, eval45B), with --lesion-free-windows (denhw), and longer still (den62 ... eval62fcB). Hours on 2 CPU
# cores; restartable: each finished step leaves W/done.<step>, the phantoms and the trainings resume.
# Usage: scripts/fine_latent.sh [WORK_DIR]   (default build/fine-latent)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
W="${1:-build/fine-latent}"
ROOT="$PWD"
mkdir -p "$W"
step() { [ -e "$W/done.$1" ] && return 1; echo "== $1 $(date +%T)"; }
mark() { touch "$W/done.$1"; }
# the calibration grid of a default train all (one noise level, size-balanced, <= 1 false positive per kidney)
GRID=(--noise-levels 250 --threshold-scales 0.8 0.9 1.0 1.15 1.3 --min-lesion-ml-values 0 0.5 1 2
      --grow-to-values 1 0.7 --hybrid-scales 1.25 1.5 2 --max-fp-per-organ 1 --objective size-balanced)
# evaluate TAG BUNDLE: `evaluate` at the bundle's calibrated point on A and B (steps and folders eval<TAG>A, eval<TAG>B)
evaluate_ab() {
  for s in A B; do
    if step "eval$1$s"; then
      da evaluate --data "$W/$s" --bundle "$2" --threshold bundle --out "$W/eval$1$s" --overwrite
      mark "eval$1$s"
    fi
  done
}
if step phantoms; then
  da phantom --organ kidney --variety --lesion-sizes incidental --seed 100000 --cases 100 --out "$W/train"
  da phantom --organ kidney --variety --lesion-sizes incidental --seed 500 --cases 30 --out "$W/V"
  da phantom --organ kidney --lesion-sizes incidental --seed 1000 --cases 32 --out "$W/A"
  da phantom --organ kidney --variety --lesion-sizes incidental --seed 1000 --cases 32 --out "$W/B"
  mark phantoms
fi
if step ae; then
  r=(); [ -d "$W/ae2x.work" ] && r=(--resume)
  da train autoencoder --organ kidney --data "$W/train" --out "$W/ae2x" --network tiny-2x --spacing 2 \
    --iterations "${AE_ITS:-1500}" --val-every 100 "${r[@]}"
  mark ae
fi
if step contrast; then
  "$PY" scripts/autoencoder_contrast.py --bundle Resources/Models/kidney-demo "$W/ae2x" --data "$W/B" "$W/A" \
    > "$W/contrast.json"
  mark contrast
fi
if step den; then
  r=(); [ -d "$W/den2x.work" ] && r=(--resume)
  da train denoiser --data "$W/train" --bundle "$W/ae2x" --out "$W/den2x" --network tiny-3level \
    --latent-crop 16 16 16 --iterations "${DEN_ITS:-2000}" --val-every 250 "${r[@]}"
  mark den
fi
if step sweep; then
  da sweep --data "$W/V" --bundle "$W/den2x" --out "$W/sweepV" --overwrite --guidance-values 0 "${GRID[@]}" \
    --write-bundle "$W/cal2x"
  mark sweep
fi
evaluate_ab "" "$W/cal2x"
# the quieter map: 4 averaged DDPM samples and a 3-voxel median filter, same grid, the 1-sample run's maps kept
if step sweepk4; then
  da sweep --data "$W/V" --bundle "$W/den2x" --out "$W/sweepV" --overwrite --guidance-values 0 "${GRID[@]}" \
    --samples-values 4 --median-filter-values 3 --write-bundle "$W/cal2xk4"
  mark sweepk4
fi
evaluate_ab k4 "$W/cal2xk4"
# guidance: a classifier on the 4 mm latent with the per-cell lesion loss, trained on noise levels up to 500 (the
# bundle keeps its best validation checkpoint), then the same grid at s = 0, 100, 300 with one sample; its s = 0 maps
# are the one-sample sweep's (the classifier is not called at s = 0), copied under the new bundle's weights id
if step cls; then
  r=(); [ -d "$W/cls2x.work" ] && r=(--resume)
  da train classifier --data "$W/train" --bundle "$W/den2x" --out "$W/cls2x" --iterations "${CLS_ITS:-1500}" \
    --val-every 100 --lesion-weight 1 --max-level 500 "${r[@]}"
  mark cls
fi
if step sweepg; then
  wid() { "$PY" -c 'import sys; from DiffusionAnomalyLib.models.bundle import load_bundle
print(load_bundle(sys.argv[1]).meta.weights_id())' "$1"; }
  s0="$W/sweepV/maps/ddpm_L250_n50_s0_seed0_w$(wid "$W/den2x")"
  if [ -d "$s0" ] && [ ! -d "$W/sweepG/maps" ]; then
    mkdir -p "$W/sweepG/maps"
    cp -r "$W/sweepV/maps/baseline" "$W/sweepG/maps/"
    cp -r "$s0" "$W/sweepG/maps/ddpm_L250_n50_s0_seed0_w$(wid "$W/cls2x")"
  fi
  da sweep --data "$W/V" --bundle "$W/cls2x" --out "$W/sweepG" --overwrite --guidance-values 0 100 300 "${GRID[@]}" \
    --allow-weak-classifier --write-bundle "$W/cal2xg"
  mark sweepg
fi
# the denoiser trained longer: resumed from den2x's checkpoint to 4500 iterations (its validation L1 was still
# falling at 2000), the small lesions' contrast kept and map AUC (scripts/noise_level_small.py, the cases of its
# docstring), the same grid on V and evaluate on A and B; then the same resumption with --lesion-free-windows to 3000
# iterations, to compare validation L1 at equal iterations (den45.work/log.jsonl against denhw.work/log.jsonl)
# Later still: den45 resumed to 6250 iterations (den62: the constant learning rate makes it one longer run), the
# same steps (small62, sweep62, eval62A/B), then its sweep's cached maps with contrast-dependent size floors added to
# the grid (sweep62fc, eval62fcA/B).
for n in den45 denhw den62; do
  if step "$n"; then
    from=den2x.work; [ "$n" = den62 ] && from=den45.work
    [ -d "$W/$n.work" ] || cp -r "$W/$from" "$W/$n.work"
    case $n in
      den45) extra=(--iterations 4500) ;;
      denhw) extra=(--iterations 3000 --lesion-free-windows) ;;
      den62) extra=(--iterations 6250) ;;
    esac
    da train denoiser --data "$W/train" --bundle "$W/ae2x" --out "$W/$n" --network tiny-3level \
      --latent-crop 16 16 16 --val-every 250 --resume "${extra[@]}"
    mark "$n"
  fi
  [ "$n" = denhw ] && continue
  tag=${n#den}
  if step "small$tag"; then
    "$PY" scripts/noise_level_small.py --bundle "$W/$n" --levels 250 --work "$W/small$tag" \
      --settings '{"reference": "input", "samples": 1, "median_filter": 0}' --cases \
      "$W"/A/kidney-inc-010{08,12,30,31,01,21} "$W"/B/kidney-var-inc-010{05,09}
    mark "small$tag"
  fi
  if step "sweep$tag"; then
    da sweep --data "$W/V" --bundle "$W/$n" --out "$W/sweep$tag" --overwrite --guidance-values 0 "${GRID[@]}" \
      --write-bundle "$W/cal$tag"
    mark "sweep$tag"
  fi
  evaluate_ab "$tag" "$W/cal$tag"
done
if step sweep62fc; then
  [ -d "$W/sweep62fc" ] || cp -r "$W/sweep62" "$W/sweep62fc"  # the maps are cached there: post-processing only
  da sweep --data "$W/V" --bundle "$W/den62" --out "$W/sweep62fc" --overwrite --guidance-values 0 "${GRID[@]}" \
    --floor-contrast-values 0 1.5 2 3 --write-bundle "$W/cal62fc"
  mark sweep62fc
fi
for s in A B; do [ -d "$W/eval62fc$s" ] || cp -r "$W/eval62$s" "$W/eval62fc$s"; done
evaluate_ab 62fc "$W/cal62fc"
echo "done: $ROOT/$W/eval{A,B,k4A,k4B,45A,45B,62A,62B,62fcA,62fcB}/report/summary.md,"
echo "      $W/contrast.json, $W/sweepG/sweep/report.md"
