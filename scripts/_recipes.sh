# Sourced by scripts/demo_models.sh and scripts/recalibrate_steps.sh: demo_recipe ORGAN sets, for that shipped demo
# bundle, seed (its first training phantom), variety (the generator flag), version and recipe (its calibration
# grid, as train all / sweep arguments; docs/training.md#the-demo-bundles).
# The shipped bundles were calibrated with the objective of their time (--objective lesions), kept here so that
# the scripts still make them; train all's default is now size-balanced (docs/evaluation.md). Since kidney-demo
# 0.5.0, liver-demo 0.4.0 and brain-demo 0.4.0 they are calibrated, and recommend, DDPM at 20 steps (before: 50;
# scripts/recalibrate_steps.sh recalibrated the earlier weights, docs/performance.md).
demo_recipe() {
  case "$1" in
    # kidney-demo 0.3.3's recipe: autoencoder reference, 8 averaged DDPM samples, median filter 5, guidance s = 100
    kidney) seed=100000; variety=(--variety); version=0.5.0
            recipe=(--steps 20 --noise-levels 250 --guidance-values 100 --reference-values autoencoder
                    --samples-values 8 --median-filter-values 5 --threshold-scales 0.7 0.8 0.9 1.0 1.15
                    --min-lesion-ml-values 0.25 0.5 1 2 --grow-to-values 1 0.85 0.7 0.55 --max-fp-per-organ 1
                    --objective lesions) ;;
    liver)  seed=200000; variety=(--variety); version=0.4.0
            recipe=(--steps 20 --noise-levels 250 --guidance-values 0 --reference-values input
                    --samples-values 1 --median-filter-values 3 --threshold-scales 0.8 0.9 1.0 1.15 1.3
                    --min-lesion-ml-values 0.5 1 2 4 8 --grow-to-values 1 0.85 0.7 0.55 --max-fp-per-organ 1
                    --objective lesions) ;;
    brain)  seed=300000; variety=(); version=0.4.0  # the brain phantoms have no varied generator
            recipe=(--steps 20 --noise-levels 250 --guidance-values 0 --reference-values input
                    --samples-values 1 --median-filter-values 0 --threshold-scales 0.8 0.9 1.0 1.15 1.3
                    --min-lesion-ml-values 0.5 1 2 4 8 --grow-to-values 1 0.85 0.7 0.55 --max-fp-per-organ 1
                    --objective lesions) ;;
    *) echo "unknown organ '$1' (kidney, liver, brain)" >&2; return 2 ;;
  esac
}
