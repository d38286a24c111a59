#!/usr/bin/env bash
# make demo-models: the shipped demo bundles, each made by one `diffusion-anomaly train all` run on phantoms.
#
# Per organ: training phantoms in DATA/train/ (the varied generator for kidney and liver; seeds from 100000,
# 200000, 300000), 30 validation phantoms in DATA/val/ (seeds 500-529; held-out evaluations use 1000-1019),
# then `train all --preset tiny --demo` with the organ's calibration recipe below, which installs the bundle
# into the models folder (Resources/Models/<organ>-demo) and lists it with its SHA-256 in manifest.json.
# Restartable: complete phantoms are kept, and `train all` resumes at the stage it stopped in.
#
# Environment: ORGANS (default "kidney liver brain"), DEMO_WORK (default build/demo-models), MODELS_DIR
# (default Resources/Models), CASES (training phantoms per organ, default 800), SMOKE=1 (4 + 2 phantoms,
# 2 iterations, a tiny calibration grid: checks the chain in a few minutes; its bundles are not demo models).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
. scripts/_recipes.sh
WORK="${DEMO_WORK:-build/demo-models}"
MODELS="${MODELS_DIR:-Resources/Models}"
CASES="${CASES:-800}"
VAL=30

for organ in ${ORGANS:-kidney liver brain}; do
  demo_recipe "$organ" || exit 2
  n=$CASES; smoke=()
  if [ -n "${SMOKE:-}" ]; then
    n=4; VAL=2
    smoke=(--iterations 2 --spacing 4 --sampler ddpm --steps 2 --noise-levels 20 --guidance-values 0 --samples-values 2
           --threshold-scales 0.9 1.0 --min-lesion-ml-values 0 1 --grow-to-values 1)
  fi
  data="$WORK/$organ/data"
  echo "[$organ] phantoms: $n for training, $VAL for validation"
  da phantom --organ "$organ" "${variety[@]}" --seed "$seed" --cases "$n" --out "$data/train"
  da phantom --organ "$organ" "${variety[@]}" --seed 500 --cases "$VAL" --out "$data/val"
  # later flags win: the smoke settings replace the recipe's grid
  da train all --data "$data" --organ "$organ" --preset tiny --demo --version "$version" --device cpu \
    --out "$WORK/$organ/$organ-demo" --install "$MODELS" "${recipe[@]}" "${smoke[@]}"
done
