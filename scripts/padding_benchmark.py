"""Dataset padding, measured (issue 38; docs/evaluation.md#dataset-padding): the same small phantom training set
trained with and without ``train all --synthetic-unhealthy N``, both scored on the same held-out phantoms.

    python scripts/padding_benchmark.py --work build/padding [--cases 20] [--synthetic 40] [--iterations 800] \
        [--held-out DATA] > padding.json

One ``train all`` without padding (tiny preset, ``--iterations``); its work folder is copied and the copy redone
``--from-stage classifier`` with ``--synthetic-unhealthy N``, so both bundles share the autoencoder and denoiser and
differ only in the classifier's training set (the calibration runs again on the same, untouched validation split).
Both classifiers' AUC (healthy against unhealthy structures, t = 0, 250, 500) is measured on the held-out set
(default: 32 varied ``incidental`` phantoms, seeds 1000-1031): padding acts on detection only through classifier
guidance. When either calibration chose guidance (s > 0), both bundles are evaluated there, paired by case:
Wilcoxon signed-rank on per-case Dice and lesion F1, recall by size class at the calibrated operating point,
false positives per kidney, the median baseline beside; when both run unguided (s = 0: a classifier near chance
on validation is never used) their maps are identical and that is reported instead. Restartable: finished steps
are skipped. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRAIN_SEED, VAL_SEED, HELD_OUT_SEED = 400000, 500, 1000


def da(*args: object) -> None:
    """One ``diffusion-anomaly`` command (no shell), its output to stderr."""
    cmd = [sys.executable, "-m", "DiffusionAnomalyLib", *map(str, args)]
    print("+", " ".join(cmd[3:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def phantoms(out: Path, seed: int, cases: int) -> None:
    if not (out / "labels.csv").is_file():
        da("phantom", "--organ", "kidney", "--variety", "--lesion-sizes", "incidental", "--seed", seed, "--cases",
           cases, "--out", out, "--overwrite")


def per_case(folder: Path, name: str = "per_case.csv") -> dict[str, dict]:
    with open(folder / "report" / name) as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def paired(a: dict[str, dict], b: dict[str, dict], key: str) -> dict:
    """Wilcoxon signed-rank, b against a, on the cases both scored (zero differences dropped)."""
    from scipy.stats import wilcoxon

    cases = sorted(c for c in a if c in b and a[c][key] not in ("", None) and b[c][key] not in ("", None))
    diff = [float(b[c][key]) - float(a[c][key]) for c in cases]
    nonzero = [d for d in diff if d != 0]
    out = {"n": len(cases), "mean_difference": round(sum(diff) / max(len(diff), 1), 4),
           "better": sum(d > 0 for d in diff), "worse": sum(d < 0 for d in diff), "ties": len(diff) - len(nonzero)}
    if len(nonzero) >= 5:
        out["p_two_sided"] = round(float(wilcoxon(nonzero).pvalue), 4)
    return out


def held_out_scores(bundle: Path, data: Path, work: Path) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """p(unhealthy) of each held-out structure at t = 0, 250, 500 (the noise of the validation AUC), and the labels."""
    import torch

    from DiffusionAnomalyLib.models.bundle import load_bundle
    from DiffusionAnomalyLib.models.diffusion.schedule import NoiseSchedule
    from DiffusionAnomalyLib.training.classifier import p_unhealthy_at_levels
    from DiffusionAnomalyLib.training.denoiser import latents_for

    b = load_bundle(bundle, device="cpu", manifest=None)
    d, lat = latents_for(b, str(data), work, "cpu", ("healthy", "unhealthy"))
    z = torch.from_numpy(lat * float(b.meta.latent.get("scale_factor", 1.0)))
    return p_unhealthy_at_levels(b.networks["classifier"], z, NoiseSchedule(**b.meta.schedule), "cpu"), d.labels


def paired_auc_test(a: np.ndarray, b: np.ndarray, y: np.ndarray, permutations: int = 10000) -> dict:
    """AUC of b minus AUC of a on the same structures, with a two-sided paired permutation p-value (each
    structure's two scores swapped at random; ranks per classifier, so the scales need not match)."""
    from scipy.stats import rankdata

    from DiffusionAnomalyLib.evaluation.metrics import voxel_auroc

    ra, rb = rankdata(a) / len(a), rankdata(b) / len(b)
    observed = voxel_auroc(rb, y) - voxel_auroc(ra, y)
    rng = np.random.default_rng(0)
    count = 0
    for _ in range(permutations):
        swap = rng.random(len(y)) < 0.5
        diff = voxel_auroc(np.where(swap, ra, rb), y) - voxel_auroc(np.where(swap, rb, ra), y)
        count += abs(diff) >= abs(observed) - 1e-12
    return {"auc_a": round(voxel_auroc(a, y), 4), "auc_b": round(voxel_auroc(b, y), 4),
            "difference": round(float(observed), 4), "p_two_sided": round((count + 1) / (permutations + 1), 4),
            "structures": int(len(y)), "unhealthy": int(np.sum(y))}


def by_size(folder: Path) -> dict[str, str]:
    """Found / lesions per size class (reference_lesions.csv; the kidney thesis' strata by axial diameter)."""
    classes = {"<=2 cm": (0, 20), "2-4 cm": (20, 40), "4-7 cm": (40, 70), ">7 cm": (70, 1e9)}
    with open(folder / "report" / "reference_lesions.csv") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for name, (lo, hi) in classes.items():
        inside = [r for r in rows if lo < float(r["diameter_mm"]) <= hi or (lo == 0 and float(r["diameter_mm"]) <= hi)]
        out[name] = f"{sum(r['found'] in ('True', 'true', '1') for r in inside)} of {len(inside)}"
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--cases", type=int, default=20, help="training phantoms (about half of their kidneys unhealthy)")
    p.add_argument("--validation", type=int, default=10)
    p.add_argument("--synthetic", type=int, default=40)
    p.add_argument("--iterations", type=int, default=800)
    p.add_argument("--held-out", type=Path, default=None)
    a = p.parse_args()
    w = a.work
    phantoms(w / "data" / "train", TRAIN_SEED, a.cases)
    phantoms(w / "data" / "val", VAL_SEED, a.validation)
    held_out = a.held_out or w / "held-out"
    if a.held_out is None:
        phantoms(held_out, HELD_OUT_SEED, 32)
    common = ["--data", w / "data", "--organ", "kidney", "--preset", "tiny", "--iterations", a.iterations,
              "--device", "cpu", "--noise-levels", "250", "--guidance-values", "0", "100", "--synthetic-data"]
    if not (w / "plain" / "model.json").is_file():
        da("train", "all", "--out", w / "plain", *common)
    if not (w / "padded" / "model.json").is_file():
        if not (w / "padded.work").is_dir():
            shutil.copytree(w / "plain.work", w / "padded.work", symlinks=True)
        da("train", "all", "--out", w / "padded", *common, "--synthetic-unhealthy", a.synthetic,
           "--from-stage", "classifier")
    from DiffusionAnomalyLib.models.bundle import read_meta
    from DiffusionAnomalyLib.training.recipe.stages import validation_auc

    with open(w / "data" / "train" / "labels.csv") as f:
        labels = [r["label"] for r in csv.DictReader(f)]
    result = {
        "training": {"cases": a.cases, "unhealthy_structures": labels.count("unhealthy"),
                     "healthy_structures": labels.count("healthy"), "synthetic_unhealthy": a.synthetic,
                     "iterations": a.iterations, "validation_cases": a.validation},
        "held_out": str(held_out),
        "classifier_auc_held_out": {n: validation_auc(w / n, held_out, w / f"auc-{n}", "cpu")
                                    for n in ("plain", "padded")},
        "guidance": {n: read_meta(w / n).recommended.get("guidance") for n in ("plain", "padded")},
    }
    scores = {n: held_out_scores(w / n, held_out, w / f"auc-{n}") for n in ("plain", "padded")}
    y = scores["plain"][1]
    result["classifier_auc_padded_vs_plain"] = {
        str(t): paired_auc_test(scores["plain"][0][t], scores["padded"][0][t], y) for t in scores["plain"][0]}
    if not any(result["guidance"].values()):
        result["detection"] = "both bundles run unguided (s = 0): the same maps, the same detections"
        print(json.dumps(result, indent=2, default=str))
        return 0
    for name in ("plain", "padded"):
        if not (w / f"eval-{name}" / "report" / "summary.json").is_file():
            da("evaluate", "--data", held_out, "--bundle", w / name, "--out", w / f"eval-{name}", "--device", "cpu",
               "--overwrite")
    plain, padded = per_case(w / "eval-plain"), per_case(w / "eval-padded")
    summaries = {n: json.loads((w / f"eval-{n}" / "report" / "summary.json").read_text()) for n in ("plain", "padded")}
    result.update({
        "padded_vs_plain": {"dice": paired(plain, padded, "dice"), "lesion_f1": paired(plain, padded, "f1")},
        "found_by_size": {n: by_size(w / f"eval-{n}") for n in ("plain", "padded")},
        "summary": {n: {k: s.get(k) for k in ("model", "baseline") if k in s} for n, s in summaries.items()},
    })
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
