"""Issue 37: does a higher noise level L remove the small kidney lesions from the healthy reconstruction, and does
the anomaly map then separate them better from the rest of the kidney?

For each case (a phantom folder: ct.nii.gz, lesions.nii.gz, segmentations/) and each L, one detection with the
bundle's other recommended settings (one DDPM sample unless the bundle says otherwise; seed 0), then per lesion of
at most --max-mm (equivalent-sphere diameter) inside the kidneys:

- kept: (mean over the lesion - mean over the organ tissue within 4 mm) in the reconstruction, divided by the same
  in the image (:func:`~DiffusionAnomalyLib.evaluation.metrics.contrast_kept`; 1 = left in, 0 = removed);
- AUC: the share of the kidneys' lesion-free voxels whose map value is below the lesion's, averaged over the
  lesion's voxels (0.5 = the map does not tell the lesion from the kidney, 1 = every lesion voxel above all).

    python scripts/noise_level_small.py --bundle BUNDLE --cases A/kidney-inc-01008 ... --levels 250 500 750 \
        --work build/noise-level-small [--settings '{"reference": "input"}']
Prints one line per L (median kept, median and mean AUC, lesions with AUC > 0.9) and writes work/summary.json.
Detections are kept in work/L<L>/<case>/ and reused on a rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from DiffusionAnomalyLib.api import DetectRequest, detect  # noqa: E402
from DiffusionAnomalyLib.evaluation.metrics import contrast_kept  # noqa: E402


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)


def read_case(case: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray, int, np.ndarray]:
    """The image, its spacing (z, y, x), the lesions' connected components and their count, and the kidneys."""
    ct = sitk.ReadImage(str(case / "ct.nii.gz"))
    labels, n = ndimage.label(_array(case / "lesions.nii.gz") > 0)
    organ = np.zeros(labels.shape, bool)
    for f in sorted((case / "segmentations").glob("kidney_*.nii.gz")):
        organ |= _array(f) > 0
    return sitk.GetArrayFromImage(ct).astype(np.float64), ct.GetSpacing()[::-1], labels, n, organ


def small_lesions(case: Path, arrays: tuple, out: Path, max_mm: float) -> list[dict]:
    """Per lesion up to ``max_mm`` inside the kidneys (``arrays``: :func:`read_case`): its diameter, the contrast
    the reconstruction in ``out`` keeps and the map AUC."""
    image, spacing_zyx, labels, n, organ = arrays
    heat, rec = _array(out / "heatmap.nii.gz"), _array(out / "reconstruction.nii.gz")
    healthy = np.sort(heat[organ & (labels == 0)])
    rows = []
    for i in range(1, n + 1):
        inside = (labels == i) & organ
        diameter = (6 * inside.sum() * float(np.prod(spacing_zyx)) / np.pi) ** (1 / 3)
        if inside.sum() < 3 or diameter > max_mm:
            continue
        kept = contrast_kept(image, rec, labels == i, spacing_zyx, min_contrast=0.0)
        rows.append({"case": case.name, "lesion": i, "diameter_mm": round(diameter, 1),
                     "kept": round(kept[0][1], 3) if kept else None,
                     "auc": round(float(np.searchsorted(healthy, heat[inside]).mean() / len(healthy)), 4)})
    return rows


def summarize(rows: list[dict]) -> dict:
    """The lesions' rows with their median contrast kept, median and mean map AUC and the count above 0.9."""
    kept = np.array([r["kept"] for r in rows if r["kept"] is not None])
    auc = np.array([r["auc"] for r in rows])
    return {"lesions": rows, "median_kept": float(np.median(kept)), "median_auc": float(np.median(auc)),
            "mean_auc": float(auc.mean()), "auc_over_0.9": int((auc > 0.9).sum())}


def describe(summary: dict) -> str:
    """One line of a :func:`summarize` result."""
    return (f"contrast kept median {summary['median_kept']:.2f}; map AUC median {summary['median_auc']:.3f}, "
            f"mean {summary['mean_auc']:.3f}, > 0.9: {summary['auc_over_0.9']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--cases", nargs="+", type=Path, required=True)
    p.add_argument("--levels", nargs="+", type=int, default=[250, 500, 750])
    p.add_argument("--max-mm", type=float, default=20.0)
    p.add_argument("--work", type=Path, default=Path("build/noise-level-small"))
    p.add_argument("--settings", type=json.loads, default={},
                   help="run settings over the bundle's recommended ones, as JSON (e.g. '{\"reference\": \"input\"}')")
    args = p.parse_args(argv)
    by_level: dict[int, list[dict]] = {level: [] for level in args.levels}
    for case in args.cases:  # each case read once, for every L
        arrays = read_case(case)
        for level in args.levels:
            out = args.work / f"L{level}" / case.name
            if not (out / "run.json").is_file():
                settings = {**args.settings, "noise_level": level}
                detect(DetectRequest(images=(str(case / "ct.nii.gz"),), out=str(out), bundle=args.bundle,
                                     totalseg=str(case / "segmentations"), settings=settings,
                                     overview=False, overwrite=True))
            by_level[level] += small_lesions(case, arrays, out, args.max_mm)
    summary = {}
    for level, rows in by_level.items():
        summary[level] = summarize(rows)
        print(f"L = {level}: {len(rows)} lesions <= {args.max_mm:g} mm, {describe(summary[level])}")
    (args.work / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
