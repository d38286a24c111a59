"""Would a hybrid of the model's anomaly map and the median baseline's win? (issue 37, item 3)

The hybrid map is the larger of the two maps, each divided by its own threshold: ``max(m / t_m, b / t_b)``,
thresholded at 1 (a voxel is abnormal when either method calls it abnormal at its threshold). ``t_m`` is the
model's calibrated threshold; ``t_b`` is the baseline's global Otsu threshold on the same cases times each
``--baseline-scales`` value (the baseline alone drowns in false positives at its Otsu threshold). Each point
is post-processed with each minimum lesion volume and growth and scored as ``sweep`` scores; the point is
chosen as ``train all`` chooses (the best mean of the size classes' recalls with at most ``--max-fp`` false
positives per organ) and put beside the model alone, chosen the same way, on the same cases.

    python scripts/hybrid_check.py --data VAL --model-maps OUT/maps/<key> --baseline-maps OUT/maps/baseline \
        --organ kidney --model-threshold T --out build/hybrid [--test TEST TEST_MODEL_MAPS TEST_BASELINE_MAPS]

Run it on the validation cases; ``--test`` then scores the point chosen there on held-out cases (whose maps
``evaluate`` cached). Prints one JSON object; writes the hybrid maps under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import SimpleITK as sitk

from DiffusionAnomalyLib.detection.anomaly import PostProcessing
from DiffusionAnomalyLib.detection.presets import get_preset
from DiffusionAnomalyLib.evaluation.datasets import discover_cases
from DiffusionAnomalyLib.evaluation.evaluate import global_threshold, score_dataset
from DiffusionAnomalyLib.evaluation.sweep import choose_operating_point


def hybrid_maps(cases, model_maps: Path, baseline_maps: Path, t_model: float, t_base: float, out: Path) -> None:
    """``out/<case>/``: heatmap = max(model / t_model, baseline / t_base), the model's organ and case.json."""
    for c in cases:
        if (out / c.case_id / "case.json").is_file():  # made by an earlier run with the same thresholds
            continue
        m = sitk.ReadImage(str(model_maps / c.case_id / "heatmap.nii.gz"), sitk.sitkFloat32)
        b = sitk.ReadImage(str(baseline_maps / c.case_id / "heatmap.nii.gz"), sitk.sitkFloat32)
        b.CopyInformation(m)
        dest = out / c.case_id
        dest.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.Maximum(m / t_model, b / t_base), str(dest / "heatmap.nii.gz"))
        for name in ("organ.nii.gz", "case.json"):
            shutil.copy2(model_maps / c.case_id / name, dest / name)


def score_points(cases, maps: Path, preset, threshold: float, volumes, growths, tag: dict) -> list[dict]:
    rows, cache = [], {}
    for ml in volumes:
        for grow in growths:
            pp = PostProcessing.for_preset(preset, ml, grow)
            _, s, _, _ = score_dataset(cases, maps, threshold, pp, n_boot=0, detail=False, cache=cache)
            d = s["lesion_detection"]
            rows.append({**tag, "threshold": threshold, "threshold_scale": 1.0, "min_lesion_ml": ml, "grow_to": grow,
                         "lesions": d["tp"] + d["fn"], "found": d["tp"], "fp": d["fp"],
                         "fp_per_organ": s["fp_per_organ"]["mean"], "f1": d["f1"], "dice": s["dice"]["mean"],
                         "size_balanced_recall": s["size_balanced_recall"],
                         "found_by_size": {k: f"{v['found']}/{v['lesions']}" for k, v in s["recall_by_size"].items()}})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--model-maps", required=True, type=Path)
    p.add_argument("--baseline-maps", required=True, type=Path)
    p.add_argument("--organ", required=True)
    p.add_argument("--model-threshold", required=True, type=float)
    p.add_argument("--model-scales", type=float, nargs="+", default=[0.7, 0.8, 0.9, 1.0, 1.15, 1.3])
    p.add_argument("--baseline-scales", type=float, nargs="+", default=[1.0, 1.25, 1.5, 2.0, 3.0])
    p.add_argument("--min-lesion-ml-values", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    p.add_argument("--grow-to-values", type=float, nargs="+", default=[1.0, 0.7])
    p.add_argument("--max-fp", type=float, default=1.0)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--test", nargs=3, metavar=("DATA", "MODEL_MAPS", "BASELINE_MAPS"))
    args = p.parse_args()
    preset = get_preset(args.organ)
    cases = [c for c in discover_cases(args.data, preset) if not c.problems]
    t_base = global_threshold(cases, args.baseline_maps)
    model_rows, hybrid_rows = [], []
    for ms in args.model_scales:
        t_m = args.model_threshold * ms
        model_rows += score_points(cases, args.model_maps, preset, t_m, args.min_lesion_ml_values,
                                   args.grow_to_values, {"model_scale": ms})
        for bs in args.baseline_scales:
            maps = args.out / "val" / f"m{ms:g}_b{bs:g}"
            hybrid_maps(cases, args.model_maps, args.baseline_maps, t_m, t_base * bs, maps)
            hybrid_rows += score_points(cases, maps, preset, 1.0, args.min_lesion_ml_values, args.grow_to_values,
                                        {"model_scale": ms, "baseline_scale": bs})
    model, why_m = choose_operating_point(model_rows, args.max_fp, "size-balanced")
    hybrid, why_h = choose_operating_point(hybrid_rows, args.max_fp, "size-balanced")
    result = {"cases": len(cases), "baseline_otsu": t_base, "model": {**model, "why": why_m},
              "hybrid": {**hybrid, "why": why_h}}
    if args.test:
        data, m_maps, b_maps = args.test
        test = [c for c in discover_cases(data, preset) if not c.problems]
        t_bt = global_threshold(test, Path(b_maps))  # the baseline's own Otsu on the cases scored, as evaluate does
        out = {}
        for name, row in (("model", model), ("hybrid", hybrid)):
            t_m = args.model_threshold * row["model_scale"]
            maps = Path(m_maps)
            threshold = t_m
            if name == "hybrid":
                maps = args.out / "test" / f"m{row['model_scale']:g}_b{row['baseline_scale']:g}"
                hybrid_maps(test, Path(m_maps), Path(b_maps), t_m, t_bt * row["baseline_scale"], maps)
                threshold = 1.0
            out[name] = score_points(test, maps, preset, threshold, [row["min_lesion_ml"]], [row["grow_to"]],
                                     {k: row[k] for k in ("model_scale", "baseline_scale") if k in row})[0]
        result["test"] = {"cases": len(test), **out}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
