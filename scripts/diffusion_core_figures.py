"""Figures for a trained bundle on held-out phantoms: DDIM round-trip error vs steps, classifier AUC at
noise levels 0/250/500 (at t = 250 also by the unhealthy structures' lesions: size, kind, and contrast
against the tissue around them in the image), the effect of classifier guidance on log p(healthy), and how
much of each lesion's contrast the autoencoder's reconstruction D(E(x)) keeps, by lesion size.

    python scripts/diffusion_core_figures.py --bundle BUNDLE --data HELD_OUT_DATASET [MORE ...] [--level 500]

Prints one JSON object. Each dataset is a folder as written by `diffusion-anomaly phantom --cases N`
with seeds not used in training; several are pooled. The classifier AUC is the mean over ``--draws``
draws of the noise (with the lowest and highest), as one draw moves it by up to 0.02; at t = 250 also with a
95% bootstrap interval over the held-out structures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from DiffusionAnomalyLib.evaluation.metrics import contrast_kept, lesion_contrast, voxel_auroc
from DiffusionAnomalyLib.models.bundle import load_bundle
from DiffusionAnomalyLib.models.diffusion.sampler import LatentSampler, SamplerSettings
from DiffusionAnomalyLib.models.nets.autoencoder import LatentCodec
from DiffusionAnomalyLib.models.nets.denoiser import eps_function
from DiffusionAnomalyLib.training.classifier import p_unhealthy_at_levels
from DiffusionAnomalyLib.training.denoiser import latents_for

#: A lesion counts as visible in the image when it differs from the tissue around it by at least half that
#: tissue's spread (the lowest contrast stratum of ``evaluate``).
VISIBLE_CNR = 0.5


def _draws(clf, z, schedule, draws: int, levels=(0, 250, 500)) -> list[dict[int, np.ndarray]]:
    """p(unhealthy) of every latent at each level, for each of ``draws`` noise draws."""
    return [p_unhealthy_at_levels(clf, z, schedule, "cpu", seed=99 + k, levels=levels) for k in range(draws)]


def _aucs(probs: list[dict[int, np.ndarray]], labels) -> dict:
    """Per level: mean, min and max AUC over the noise draws of :func:`_draws`."""
    runs = [{level: voxel_auroc(p, labels) for level, p in draw.items()} for draw in probs]
    return {level: {"mean": float(np.mean([r[level] for r in runs])), "min": float(min(r[level] for r in runs)),
                    "max": float(max(r[level] for r in runs))} for level in runs[0]}


def _auc_ci(probs: list[dict[int, np.ndarray]], labels, level: int = 250, resamples: int = 1000) -> dict:
    """Mean AUC over the noise draws at ``level`` with a 95% percentile bootstrap interval over the held-out
    structures (healthy and unhealthy resampled separately; the same draws in every resample)."""
    p = np.stack([draw[level] for draw in probs])
    healthy, unhealthy = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    rng = np.random.default_rng(0)
    stats = []
    for _ in range(resamples):
        idx = np.concatenate([rng.choice(healthy, len(healthy)), rng.choice(unhealthy, len(unhealthy))])
        stats.append(np.mean([voxel_auroc(row[idx], labels[idx]) for row in p]))
    low, high = np.percentile(stats, [2.5, 97.5])
    return {"level": level, "mean": float(np.mean([voxel_auroc(row, labels) for row in p])), "ci95": [float(low),
            float(high)], "resamples": resamples}


def _auc_by_lesion(clf, z, labels, lesions, schedule, draws: int) -> dict:
    """AUC at t = 250 of healthy structures against unhealthy ones with a given kind of lesion (phantoms only)."""
    groups = {
        "all": lambda ls: True,
        "largest >= 20 mm": lambda ls: max(le["diameter_mm"] for le in ls) >= 20,
        "largest >= 20 mm, not iso-dense": lambda ls: any(le["diameter_mm"] >= 20 and le["kind"] != "iso" for le in ls),
        "every lesion < 20 mm": lambda ls: max(le["diameter_mm"] for le in ls) < 20,
        "only iso-dense or < 20 mm": lambda ls: all(le["diameter_mm"] < 20 or le["kind"] == "iso" for le in ls),
        f"some lesion with CNR >= {VISIBLE_CNR}": lambda ls: any(le["cnr"] >= VISIBLE_CNR for le in ls),
        f"every lesion CNR < {VISIBLE_CNR}": lambda ls: all(le["cnr"] < VISIBLE_CNR for le in ls),
    }
    out = {}
    for name, keep in groups.items():
        sel = np.array([y == 0 or keep(ls) for ls, y in zip(lesions, labels, strict=True)])
        auc = _aucs(_draws(clf, z[torch.from_numpy(sel)], schedule, draws, levels=(250,)), labels[sel])[250]
        out[name] = {"auc": auc, "unhealthy": int(labels[sel].sum()), "healthy": int((labels[sel] == 0).sum())}
    return out


def _case_lesions(folder: Path) -> list[dict]:
    """The phantom's lesions, each with its CNR against the organ tissue around it in the image
    (:func:`~DiffusionAnomalyLib.evaluation.metrics.lesion_contrast`; NaN counts as not visible)."""
    info = json.loads((folder / "case.json").read_text())
    if not info["lesions"]:
        return []
    channels = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{c}.nii.gz"))) for c in info["channels"]]
    truth = sitk.ReadImage(str(folder / "lesions.nii.gz"))
    organ = np.zeros(truth.GetSize()[::-1], bool)
    for structure in {le["structure"] for le in info["lesions"]}:
        organ |= sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "segmentations" / f"{structure}.nii.gz"))) > 0
    measured = lesion_contrast(channels, sitk.GetArrayFromImage(truth), organ, truth.GetSpacing()[::-1])
    return [{**le, "cnr": float(np.nan_to_num(measured[le["id"]].cnr)) if le["id"] in measured else 0.0}
            for le in info["lesions"]]


#: Lesion sizes (equivalent-sphere diameter, mm) for the autoencoder's contrast figure.
KEPT_SIZES = ((0, 10), (10, 20), (20, 40), (40, 1000))


def _contrast_kept(bundle, data, lat: np.ndarray) -> list[tuple[float, float]]:
    """(diameter, kept contrast) of every lesion in the unhealthy patches, through D(E(x)) (unscaled latents)."""
    codec = LatentCodec(bundle.networks["autoencoder"])
    spacing = bundle.preset.spacing_mm[::-1]
    rows = []
    for i in np.flatnonzero(data.labels == 1):
        rec = codec.decode(torch.from_numpy(lat[i:i + 1])).numpy()[0]
        for c in range(rec.shape[0]):  # every channel (one for CT)
            rows += contrast_kept(data.x[i, c], rec[c], data.lesions[i], spacing)
    return rows


def _kept_by_size(rows: list[tuple[float, float]]) -> dict:
    """Median and quartiles of the kept contrast per lesion size."""
    out = {}
    for low, high in KEPT_SIZES:
        r = np.array([k for d, k in rows if low <= d < high])
        if len(r):
            q1, med, q3 = np.percentile(r, [25, 50, 75])
            out[f"{low}-{high} mm"] = {"lesions": len(r), "median": float(med), "iqr": [float(q1), float(q3)]}
    return out


def _held_out(bundle, folders: list[str], work: Path) -> tuple[torch.Tensor, np.ndarray, list[list[dict]], list]:
    """Scaled latents, labels, each structure's lesions and the autoencoder's kept lesion contrast (see
    :func:`_contrast_kept`), pooled over the datasets."""
    zs, ys, lesions, kept = [], [], [], []
    for folder in folders:
        data, lat = latents_for(bundle, folder, work / Path(folder).name, torch.device("cpu"),
                                ("healthy", "unhealthy"), lesions=True)
        kept += _contrast_kept(bundle, data, lat)
        zs.append(torch.from_numpy(lat * bundle.meta.latent["scale_factor"]))
        ys.append(data.labels)
        per_case: dict[str, list[dict]] = {}
        for sid in data.ids:
            case, structure = sid.split("/")
            if case not in per_case:
                per_case[case] = _case_lesions(Path(folder) / case)
            lesions.append([le for le in per_case[case] if le["structure"] == structure])
    return torch.cat(zs), np.concatenate(ys), lesions, kept


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bundle", required=True)
    p.add_argument("--data", required=True, nargs="+", help="held-out dataset folder(s), pooled")
    p.add_argument("--draws", type=int, default=20, help="noise draws averaged in the classifier AUC")
    p.add_argument("--level", type=int, default=500)
    p.add_argument("--guidance", type=float, default=100.0)
    p.add_argument("--work", default=None, help="patch and latent caches (default build/figures/<bundle name>)")
    p.add_argument("--skip-round-trip", action="store_true", help="only the classifier and guidance figures")
    args = p.parse_args()
    torch.manual_seed(0)
    b = load_bundle(args.bundle)
    schedule = b.schedule()
    work = Path(args.work or Path("build") / "figures" / Path(args.bundle).name)
    work.mkdir(parents=True, exist_ok=True)
    z, labels, lesions, kept = _held_out(b, args.data, work)
    out: dict = {"held_out_structures": len(labels), "unhealthy": int(labels.sum()),
                 "autoencoder_contrast_kept_by_lesion_size": _kept_by_size(kept)}
    sampler = LatentSampler(eps_function(b.networks["denoiser"]), schedule, classifier=b.networks.get("classifier"))
    healthy = z[torch.from_numpy(labels == 0)][:8]
    errs = {}
    for steps in () if args.skip_round_trip else (10, 50, args.level):
        t0 = time.perf_counter()
        rec = sampler.reconstruct(healthy, SamplerSettings("ddim", args.level, steps)).latent
        errs[steps] = {"max_abs": float((rec - healthy).abs().max()), "mean_abs": float((rec - healthy).abs().mean()),
                       "seconds": round(time.perf_counter() - t0, 1)}
    if errs:
        out["ddim_round_trip_latent_std_units"] = {"L": args.level, "by_steps": errs}
    if "classifier" in b.networks:
        clf = b.networks["classifier"]
        probs = _draws(clf, z, schedule, args.draws)
        out["classifier_auc"] = {"draws": args.draws, **_aucs(probs, labels)}
        out["classifier_auc_t250_ci"] = _auc_ci(probs, labels)
        out["classifier_auc_t250_by_lesion"] = _auc_by_lesion(clf, z, labels, lesions, schedule, args.draws)
        sick = z[torch.from_numpy(labels == 1)][:8]

        def log_p_healthy(x):
            with torch.no_grad():
                t = torch.zeros(len(x), dtype=torch.long)
                return torch.log_softmax(clf(x, t), 1)[:, 0]

        for method in ("ddpm", "ddim"):
            s0 = sampler.reconstruct(sick, SamplerSettings(method, 250, 25, guidance=0.0, seed=3)).latent
            s1 = sampler.reconstruct(sick, SamplerSettings(method, 250, 25, guidance=args.guidance, seed=3)).latent
            a, c = log_p_healthy(s0), log_p_healthy(s1)
            out[f"guidance_{method}"] = {"s": args.guidance, "mean_log_p_healthy_s0": float(a.mean()),
                                         "mean_log_p_healthy_s": float(c.mean()),
                                         "fraction_improved": float((c > a).float().mean())}
    print(json.dumps(out, indent=2, default=lambda v: float(v) if isinstance(v, np.floating) else str(v)))


if __name__ == "__main__":
    main()
