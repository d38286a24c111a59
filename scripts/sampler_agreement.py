"""Do the DPM-Solver++ samplers give the reference heatmap in fewer steps? (issue 39, item 3)

On ``demo``'s kidney case (the phantom of ``--seed``, default 1000, with the shipped kidney-demo bundle and its
recommended settings: L, guidance, reference, samples, median filter, threshold, post-processing) it runs

- the deterministic pair: ``ddim`` at ``--reference-steps`` (default 50) against ``dpmpp`` at each ``--steps``;
- the stochastic pair: ``ddpm`` at ``--reference-steps`` against ``dpmpp-sde`` at each ``--steps``, both with the
  bundle's samples and the same seed (the same noise on the first step); beside them the reference at another seed
  (``--spread-seed``, default 1): how far the stochastic reference itself moves from seed to seed,

and, for comparison, the reference sampler itself at each ``--steps``. It prints per run: seconds (a shared
machine's wall time), the voxel AUROC of the heatmap in the organ against the truth, the largest absolute heatmap
difference to its pair's reference (in the organ and anywhere), the lesions found, and whether the lesions (the label
map) and the lesion table (every field) are identical to the reference's.
A run *agrees* when its AUROC is within 0.01 of the reference's and its lesions are identical (the issue's
criterion). No bundle is changed.

    python scripts/sampler_agreement.py [--seed 1000] [--steps 5 10 20] [--reference-steps 50] [--device cpu]
        [--precision auto] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from DiffusionAnomalyLib.api import DetectRequest, detect
from DiffusionAnomalyLib.evaluation.metrics import match_lesions, voxel_auroc
from DiffusionAnomalyLib.models.bundle import demo_bundle
from DiffusionAnomalyLib.synthetic.phantoms import make_phantom, write_phantom

PAIRS = (("ddim", "dpmpp"), ("ddpm", "dpmpp-sde"))


def run_case(case_dir: Path, bundle: Path, out: Path, sampler: str, steps: int, device: str, precision: str,
             seed: int = 0):
    """One detection with the bundle's recommendations but ``sampler``, ``steps`` and ``seed``: (result, seconds)."""
    request = DetectRequest(images=(str(case_dir / "ct.nii.gz"),), out=str(out), bundle=str(bundle),
                            totalseg=str(case_dir / "segmentations"), overview=False,
                            settings={"sampler": sampler, "steps": steps, "seed": seed, "device": device,
                                      "precision": precision})
    t0 = time.perf_counter()
    result = detect(request).result
    return result, time.perf_counter() - t0


def describe(result, seconds: float, truth: np.ndarray, reference=None) -> dict:
    """The figures of one run, against the truth and (when given) against its reference run."""
    heat = sitk.GetArrayFromImage(result.heatmap)
    organ = sitk.GetArrayFromImage(result.organ_mask) > 0
    labels = sitk.GetArrayFromImage(result.lesions)
    found = match_lesions(labels, truth)
    row = {"seconds": round(seconds, 1), "auroc": round(voxel_auroc(heat, truth > 0, organ), 4),
           "lesions": len(result.table), "found": f"{found.tp} of {found.tp + found.fn}", "false_positives": found.fp,
           "threshold": result.threshold}
    if reference is not None:
        ref_heat = sitk.GetArrayFromImage(reference.heatmap)
        diff = np.abs(heat - ref_heat)
        same_lesions = bool(np.array_equal(labels, sitk.GetArrayFromImage(reference.lesions)))
        row.update({"max_abs_diff_organ": float(diff[organ].max()), "max_abs_diff": float(diff.max()),
                    "heatmap_max_reference": float(ref_heat[organ].max()),
                    "lesions_identical": same_lesions,
                    "table_identical": [le.to_row() for le in result.table] == [le.to_row() for le in reference.table]})
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1000, help="the kidney phantom (demo's case: 1000)")
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--reference-steps", type=int, default=50)
    ap.add_argument("--spread-seed", type=int, default=1, help="the stochastic reference's second seed")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)

    bundle = demo_bundle("kidney")
    report: dict = {"case": f"kidney phantom seed {args.seed}", "bundle": bundle.label,
                    "recommended": bundle.meta.recommended, "device": args.device, "precision": args.precision,
                    "runs": {}}
    with tempfile.TemporaryDirectory(prefix="da-agreement-") as tmp:
        case = make_phantom("kidney", args.seed, None)
        case_dir = write_phantom(case, Path(tmp) / "case")
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "lesions.nii.gz")))
        print(f"{report['case']}, {len(case.lesions)} lesion(s); {bundle.label}; recommended {bundle.meta.recommended}")
        for ref_name, fast in PAIRS:
            ref, sec = run_case(case_dir, bundle.path, Path(tmp) / ref_name, ref_name, args.reference_steps,
                                args.device, args.precision)
            key = f"{ref_name}-{args.reference_steps}"
            report["runs"][key] = describe(ref, sec, truth)
            report["runs"][key]["resolved_precision"] = ref.parameters.get("precision")
            print(key, json.dumps(report["runs"][key]), flush=True)
            if ref_name == "ddpm":  # the reference's own seed-to-seed spread
                other, sec = run_case(case_dir, bundle.path, Path(tmp) / "spread", ref_name, args.reference_steps,
                                      args.device, args.precision, seed=args.spread_seed)
                row = {**describe(other, sec, truth, ref), "reference": key}
                report["runs"][f"{key}-seed{args.spread_seed}"] = row
                print(f"{key}-seed{args.spread_seed}", json.dumps(row), flush=True)
            for name in (fast, ref_name):
                for n in args.steps:
                    res, sec = run_case(case_dir, bundle.path, Path(tmp) / f"{name}-{n}", name, n, args.device,
                                        args.precision)
                    row = describe(res, sec, truth, ref)
                    row["agrees"] = bool(abs(row["auroc"] - report["runs"][key]["auroc"]) <= 0.01
                                         and row["lesions_identical"])
                    report["runs"][f"{name}-{n}"] = {**row, "reference": key}
                    print(f"{name}-{n}", json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
