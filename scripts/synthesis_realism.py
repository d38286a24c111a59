"""Realism of synthesised lesions against reference lesions (docs/synthesis.md#realism): the classifier AUROC and the
Fréchet distance on radiomic features of ``DiffusionAnomalyLib.evaluation.realism``, per method.

    python scripts/synthesis_realism.py --organ kidney --reference HELD_OUT --hosts HEALTHY \
        [--bundle BUNDLE_WITH_SYNTHESIZER] [--methods paste diffusion] [--work DIR] > realism.json

``HELD_OUT``: a phantom-layout dataset with lesions (the reference crops: every lesion of every case); ``HEALTHY``:
phantom-layout cases to insert into (one lesion per variant, the hosts in turn). Each synthesised lesion gets the
equivalent-sphere diameter of a reference lesion, in turn, so the sizes match; shape and position are drawn by the
variant's seed. A reference-against-reference split (half against half) gives the statistics' noise floor.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from DiffusionAnomalyLib.detection.presets import get_preset
from DiffusionAnomalyLib.evaluation.datasets import discover_cases
from DiffusionAnomalyLib.evaluation.realism import classifier_auroc, frechet_distance, lesion_sample
from DiffusionAnomalyLib.synthesis.options import SynthesisOptions
from DiffusionAnomalyLib.synthesis.synthesize import SynthesisRequest, synthesize


def samples(folder: Path, organ: str) -> tuple[list, list[float]]:
    """Every lesion of every case of ``folder`` (phantom layout): its sample and equivalent-sphere diameter (mm)."""
    out, diameters = [], []
    for case in discover_cases(folder, get_preset(organ)):
        if case.problems:
            continue
        image = sitk.ReadImage(str(case.inputs[0]))
        x = sitk.GetArrayFromImage(image)
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(case.labels)))
        organ_mask = np.zeros(x.shape, bool)
        for f in sorted((case.totalseg or Path("/nonexistent")).glob("*.nii.gz")):
            organ_mask |= sitk.GetArrayFromImage(sitk.ReadImage(str(f))) > 0
        for lid in (int(v) for v in np.unique(labels) if v > 0):
            lesion = labels == lid
            out.append(lesion_sample(x, lesion, organ_mask | lesion, image))
            ml = lesion.sum() * np.prod(image.GetSpacing()) / 1000.0
            diameters.append(float((6 * ml * 1000 / np.pi) ** (1 / 3)))
    return out, diameters


def stats(ref: list, syn: list) -> dict:
    fr = np.stack([s.features for s in ref])
    fs = np.stack([s.features for s in syn])
    return {"n_reference": len(ref), "n_synthesised": len(syn), "frechet": round(frechet_distance(fr, fs), 3),
            "classifier_auroc": round(classifier_auroc(np.stack([s.crop for s in ref]),
                                                       np.stack([s.crop for s in syn])), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--organ", default="kidney")
    p.add_argument("--reference", required=True)
    p.add_argument("--hosts", required=True)
    p.add_argument("--bundle", default=None)
    p.add_argument("--methods", nargs="+", default=["paste", "diffusion"])
    p.add_argument("--work", default="build/realism")
    p.add_argument("--max-synthesised", type=int, default=None,
                   help="synthesise only this many lesions per method (the first reference diameters in turn)")
    args = p.parse_args()
    ref, diameters = samples(Path(args.reference), args.organ)
    hosts = [c for c in discover_cases(args.hosts, get_preset(args.organ)) if c.inputs and c.totalseg]
    result = {"reference": args.reference, "hosts": args.hosts, "bundle": args.bundle}
    half = len(ref) // 2
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ref))
    result["reference_split"] = stats([ref[i] for i in order[:half]], [ref[i] for i in order[half:]])
    for method in args.methods:
        work = Path(args.work) / method
        syn, seconds = [], []
        for i, d in enumerate(diameters[:args.max_synthesised]):
            host = hosts[i % len(hosts)]
            out = work / f"{i:03d}"
            if not (out / "synthesis.csv").is_file():
                t0 = time.perf_counter()
                synthesize(SynthesisRequest(
                    images=tuple(str(x) for x in host.inputs), organ=args.organ, out=str(out),
                    totalseg=str(host.totalseg),
                    bundle=args.bundle if method == "diffusion" else None, overwrite=True,
                    options=SynthesisOptions(method=method, diameter_mm=float(np.clip(d, 5, 80)), seed=i)))
                seconds.append(time.perf_counter() - t0)
            got, _ = samples(out, args.organ)
            syn += got
            print(f"{method}: {i + 1}", file=sys.stderr)
        result[method] = {**stats(ref, syn), "seconds_per_lesion": round(float(np.mean(seconds)), 1) if seconds
                          else None}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
