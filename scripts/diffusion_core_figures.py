"""Figures for a trained bundle on held-out phantoms: DDIM round-trip error vs steps, classifier AUC at
noise levels 0/250/500, and the effect of classifier guidance on log p(healthy).

    python scripts/diffusion_core_figures.py --bundle BUNDLE --data HELD_OUT_DATASET [--level 500]

Prints one JSON object. The dataset is a folder as written by `diffusion-anomaly phantom --cases N`
with seeds not used in training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from DiffusionAnomalyLib.bundle import load_bundle
from DiffusionAnomalyLib.diffusion.sampler import LatentSampler, SamplerSettings
from DiffusionAnomalyLib.nets.denoiser import eps_function
from DiffusionAnomalyLib.train.classifier import auc_at_levels
from DiffusionAnomalyLib.train.denoiser import latents_for


def _auc_by_lesion(clf, z, data, data_dir, schedule) -> dict:
    """AUC at t = 250 of healthy structures against unhealthy ones with a given kind of lesion (phantoms only)."""
    lesions = {}
    for sid in data.ids:
        case, structure = sid.split("/")
        info = json.loads((Path(data_dir) / case / "case.json").read_text())
        lesions[sid] = [le for le in info["lesions"] if le["structure"] == structure]
    groups = {
        "all": lambda ls: True,
        "largest >= 20 mm": lambda ls: max(le["diameter_mm"] for le in ls) >= 20,
        "largest >= 20 mm, not iso-dense": lambda ls: any(le["diameter_mm"] >= 20 and le["kind"] != "iso" for le in ls),
        "only iso-dense or < 20 mm": lambda ls: all(le["diameter_mm"] < 20 or le["kind"] == "iso" for le in ls),
    }
    out = {}
    for name, keep in groups.items():
        sel = np.array([y == 0 or keep(lesions[i]) for i, y in zip(data.ids, data.labels, strict=True)])
        auc = auc_at_levels(clf, z[torch.from_numpy(sel)], data.labels[sel], schedule, "cpu", levels=(250,))[250]
        labels = data.labels[sel]
        out[name] = {"auc": auc, "unhealthy": int(labels.sum()), "healthy": int((labels == 0).sum())}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bundle", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--level", type=int, default=500)
    p.add_argument("--guidance", type=float, default=100.0)
    p.add_argument("--work", default=None)
    p.add_argument("--skip-round-trip", action="store_true", help="only the classifier and guidance figures")
    args = p.parse_args()
    torch.manual_seed(0)
    b = load_bundle(args.bundle)
    schedule = b.schedule()
    work = Path(args.work or f"{args.bundle}.figures")
    work.mkdir(parents=True, exist_ok=True)
    data, lat = latents_for(b, args.data, work, torch.device("cpu"), ("healthy", "unhealthy"))
    z = torch.from_numpy(lat * b.meta.latent["scale_factor"])
    out: dict = {"held_out_structures": len(data.ids), "unhealthy": int(data.labels.sum())}
    sampler = LatentSampler(eps_function(b.networks["denoiser"]), schedule, classifier=b.networks.get("classifier"))
    healthy = z[torch.from_numpy(data.labels == 0)][:8]
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
        out["classifier_auc"] = auc_at_levels(clf, z, data.labels, schedule, "cpu")
        out["classifier_auc_t250_by_lesion"] = _auc_by_lesion(clf, z, data, args.data, schedule)
        sick = z[torch.from_numpy(data.labels == 1)][:8]

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
