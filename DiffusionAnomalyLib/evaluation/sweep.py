"""``diffusion-anomaly sweep``: the L x s grid search of the kidney thesis §5.2, and bundle calibration.

For every noise level L and guidance strength s (and, when asked, every anomaly reference, number of averaged
samples and median filter size: the map options), the anomaly maps of the dataset are computed (cached
per setting and networks under ``OUT/maps/<maps_key>/``, so an interrupted sweep resumes), thresholded with one
global Otsu threshold and scored *without* post-processing, as in the thesis. The best setting is the
one with the highest mean Dice. Then, at that setting (with the ``size-balanced`` objective and a false-positive
budget: at every setting), the maps are thresholded at the Otsu threshold
times each ``threshold_scales`` value and post-processed (the kidney thesis §4.1.1) with each candidate minimum
lesion volume (small false-positive components are what post-processing can remove) and each ``grow_to_values``
fraction (hysteresis growth of the kept lesions, :class:`~.anomaly.PostProcessing`); the recommended
operating point is the one with the best pooled lesion F1, or, given ``max_fp_per_organ``, the one that
finds the most lesions (``objective`` "lesions"), or the best mean of the lesion size classes' recalls
("size-balanced", the default: a point that finds the large lesions and none of the small ones cannot win on the
count of large ones), with at most that many false-positive components per organ (ties: best F1) — the way a
detection target is stated ("recall at <= 1 false positive per kidney"). ``sweep.csv``,
``sweep.json`` and ``dice_vs_s.png`` (the kidney thesis Fig. 5.1: Dice against s, one line per L) are written to
``OUT/sweep``; :func:`write_calibrated_bundle` writes a copy of the bundle whose recommended sampler
settings, threshold, minimum lesion volume and growth are the chosen ones, which ``run``, ``evaluate``,
``batch`` and the Slicer panel then use as defaults.
"""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from DiffusionAnomalyLib.detection.anomaly import PostProcessing
from DiffusionAnomalyLib.detection.hybrid import hybrid_weight
from DiffusionAnomalyLib.evaluation.datasets import EvalCase
from DiffusionAnomalyLib.evaluation.evaluate import (
    HybridMaps,
    baseline_beside,
    compute_maps,
    global_threshold,
    log,
    score_dataset,
)
from DiffusionAnomalyLib.evaluation.report import compare_with_baseline, comparison_markdown
from DiffusionAnomalyLib.imaging.outputs import atomic_output_dir
from DiffusionAnomalyLib.settings import MapOptions

#: The thesis grid (the kidney thesis §5.2): L in {100, 250, 500}, s in {0, 200, ..., 2000}.
THESIS_NOISE_LEVELS = (100, 250, 500)
THESIS_GUIDANCE = tuple(range(0, 2001, 200))
#: What a calibration recommends beside the sampler's settings and the threshold, when it chose it.
CALIBRATED = ("min_lesion_ml", "grow_to", "floor_contrast", "reference", "samples", "median_filter", "hybrid")
#: Candidate minimum lesion volumes (ml) tried after the grid; 0 = the thesis post-processing alone.
MIN_LESION_ML = (0.0, 0.25, 0.5, 1.0, 2.0)


def _significant(value: float) -> float:
    """A threshold kept to 6 significant digits (a fixed number of decimals would turn the small thresholds of maps
    in small units into 0)."""
    return float(f"{value:.6g}")


def choose_operating_point(rows: list[dict], max_fp_per_organ: float | None = None,
                           objective: str = "lesions") -> tuple[dict, str]:
    """The recommended post-processing row and why. Without a budget: best pooled F1 (ties: the smaller minimum
    volume, then the scale nearest 1, then less growth). With one, among rows within the false-positive budget:
    ``objective`` "lesions": the most lesions found; "size-balanced": the best mean of the size classes' recalls
    (``size_balanced_recall``: each shrunk toward the pooled recall), then the most lesions (ties: best F1). When
    no row is within it, the row with the fewest false positives."""
    def f1(r):
        return -1.0 if r["f1"] is None else r["f1"]

    def plain(r):  # ties: the model's map alone before a hybrid, the fixed size floor before one by contrast
        return (f1(r), not r.get("hybrid"), not r.get("floor_contrast"), -r["min_lesion_ml"],
                -abs(r["threshold_scale"] - 1.0), r.get("grow_to", 1.0))

    if max_fp_per_organ is None:
        return max(rows, key=plain), "best pooled lesion F1"
    within = [r for r in rows if r["fp_per_organ"] is not None and r["fp_per_organ"] <= max_fp_per_organ]
    if within and objective == "size-balanced":
        return (max(within, key=lambda r: (r.get("size_balanced_recall") or 0.0, r["found"], *plain(r))),
                f"best mean recall over the lesion size classes with <= {max_fp_per_organ:g} false positives per "
                "organ")
    if within:
        return (max(within, key=lambda r: (r["found"], *plain(r))),
                f"most lesions found with <= {max_fp_per_organ:g} false positives per organ")
    return (min(rows, key=lambda r: (float("inf") if r["fp_per_organ"] is None else r["fp_per_organ"], -f1(r))),
            f"no setting had <= {max_fp_per_organ:g} false positives per organ: the fewest")


def run_sweep(cases: list[EvalCase], make_reconstructor: Callable, preset, out: Path, settings,
              noise_levels: Sequence[int] = THESIS_NOISE_LEVELS, guidance: Sequence[float] = THESIS_GUIDANCE,
              rank: int = 0, world: int = 1, barrier: Callable[[], None] = lambda: None,
              progress: Callable[[str], None] = log,
              min_lesion_ml_values: Sequence[float] = MIN_LESION_ML,
              maps_key: Callable | None = None, options: MapOptions | None = None,
              threshold_scales: Sequence[float] = (1.0,), max_fp_per_organ: float | None = None,
              grow_to_values: Sequence[float] = (1.0,), baseline_organ: str | None = None,
              map_variants: Sequence[MapOptions] | None = None, objective: str = "lesions",
              hybrid_scales: Sequence[float] = (), floor_contrast_values: Sequence[float] = (0.0,)) -> dict | None:
    """Run the grid; returns (on rank 0) {"grid": rows, "best": row, "postprocessing": rows}; ``best`` also
    holds the recommended ``threshold`` (Otsu x the chosen scale), ``min_lesion_ml``, the ``objective`` and the
    map options it was made with (anomaly reference, averaged samples, median filter), which the calibrated
    bundle then recommends too. ``settings`` gives sampler, steps, seed. The grid is L x s x ``map_variants``
    (each a :class:`~DiffusionAnomalyLib.settings.MapOptions`; default: ``options`` alone);
    ``make_reconstructor(settings, options)`` builds a reconstructor for one point and ``maps_key(settings,
    options)`` names its map cache folder (default ``L<L>_s<s>``, with the options when several are swept).
    ``baseline_organ``: also run the non-neural median baseline on the same cases and put it beside the
    recommended operating point (``baseline`` in the result and sweep.json, ``OUT/sweep/report.md``), with the
    paired Wilcoxon test on per-case Dice and lesion F1. ``objective`` "size-balanced" with ``max_fp_per_organ``:
    the post-processing points are scored on every grid point's maps, not only the best-Dice one, and the
    operating point is chosen by the mean of the size classes' recalls (:func:`choose_operating_point`).
    ``hybrid_scales``: each operating point is also scored on the hybrid map max(model, W x baseline)
    (:mod:`~DiffusionAnomalyLib.detection.hybrid`) with W = threshold / (C x the baseline's global Otsu threshold)
    for each C; the baseline's maps are computed for it (even without ``baseline_organ``), and ties go to the model's
    map alone. ``floor_contrast_values``: the contrast-dependent size floors tried with each minimum volume > 0
    (:class:`~.anomaly.PostProcessing`)."""
    variants = list(map_variants or [options or MapOptions()])
    rows = []

    def default_key(st, o):
        return f"L{st.noise_level}_s{st.guidance:g}" + (
            f"_{o.reference}_k{o.samples}_med{o.median_filter}" if len(variants) > 1 else "")

    key = maps_key or default_key
    for L in noise_levels:
        for s in guidance:
            for o in variants:
                st = replace(settings, noise_level=int(L), guidance=float(s), steps=min(settings.steps, int(L)))
                maps = out / "maps" / key(st, o)
                progress(f"sweep: L = {L}, s = {s:g}" + (f", reference {o.reference}, {o.samples} sample(s), median "
                                                        f"filter {o.median_filter}" if len(variants) > 1 else ""))
                compute_maps(cases, make_reconstructor(st, o), o.apply_to(preset), maps, rank, world, progress,
                             funnel=False)
                barrier()
                if rank == 0:
                    _, summary, problems, thr = score_dataset(cases, maps, "otsu", None, n_boot=200, detail=False)
                    rows.append({"noise_level": int(L), "guidance": float(s), **asdict(o), "sampler": st.method,
                                 "steps": st.steps, "maps": key(st, o),
                                 "threshold": _significant(thr), "dice": summary["dice"]["mean"],
                                 "f1": summary["lesion_detection"]["f1"], "cases": summary["cases"],
                                 "skipped": len(problems)})
    beside = baseline_beside(cases, baseline_organ or preset.name, out, rank, world, barrier, n_boot=0,
                             progress=progress) if baseline_organ or hybrid_scales else None
    if rank != 0:
        return None
    base_maps = out / "maps" / "baseline"
    base_otsu = _significant(global_threshold([c for c in cases if not c.problems], base_maps)) \
        if hybrid_scales else None
    hybrids = [0.0, *sorted(float(c) for c in hybrid_scales)]  # 0: the model's map alone
    by_dice = max(rows, key=lambda r: -1.0 if r["dice"] is None else r["dice"])
    every = objective == "size-balanced" and max_fp_per_organ is not None
    candidates = [r for r in rows if r["threshold"] is not None] if every else [by_dice]
    pp_rows = []
    caches: dict[str, dict] = {}  # per map folder: each case's map, masks and reference read once for all points
    grid = [(x, ml, f, g, c) for x, ml, f, g, c in itertools.product(
        sorted(float(v) for v in threshold_scales), sorted(float(v) for v in min_lesion_ml_values),
        sorted({float(v) for v in floor_contrast_values}), sorted((float(v) for v in grow_to_values), reverse=True),
        hybrids) if ml > 0 or f == 0]  # without a volume floor there is nothing to escape
    points = len(candidates) * len(grid)
    for row in candidates:
        cache = caches.setdefault(row["maps"], {})
        for scale, ml, floor, grow, c in grid:
            threshold = _significant(row["threshold"] * scale)
            weight = hybrid_weight(threshold, base_otsu, c) if c else 0.0
            pp = PostProcessing.for_preset(preset, ml, grow, floor)
            _, summary, _, _ = score_dataset(cases, out / "maps" / row["maps"], threshold, pp, n_boot=0,
                                             detail=False, cache=cache, auroc=False,
                                             hybrid=HybridMaps(base_maps, weight) if weight else None)
            d = summary["lesion_detection"]
            progress(f"sweep: post-processing {len(pp_rows) + 1}/{points}"
                     + (f" ({row['maps']})" if every else "") + f": {scale:g} x Otsu, {ml:g} ml"
                     + (f" unless >= {floor:g} x threshold" if floor else "") + f", grow to {grow:g}"
                     + (f", hybrid C = {c:g} (W = {weight:g})" if c else "") + f": {d['tp']}/{d['tp'] + d['fn']} "
                     f"found, {summary['fp_per_organ']['mean'] or 0:.2f} FP per organ")
            pp_rows.append({"maps": row["maps"], "threshold_scale": scale, "threshold": threshold,
                            "min_lesion_ml": ml, "floor_contrast": floor, "grow_to": grow,
                            "hybrid_scale": c or None, "hybrid": weight,
                            "lesions": d["tp"] + d["fn"], "found": d["tp"], "fp": d["fp"],
                            "fp_per_organ": summary["fp_per_organ"]["mean"], "f1": d["f1"],
                            "dice": summary["dice"]["mean"], "size_balanced_recall": summary["size_balanced_recall"],
                            "recall_by_size": {k: v["recall"] for k, v in summary["recall_by_size"].items()}})
    chosen, why = choose_operating_point(pp_rows, max_fp_per_organ, objective)
    best = next(r for r in candidates if r["maps"] == chosen["maps"])
    cache = caches[best["maps"]]
    maps = out / "maps" / best["maps"]
    best = {**best, "otsu_threshold": best["threshold"], "threshold": chosen["threshold"],
            "min_lesion_ml": chosen["min_lesion_ml"], "grow_to": chosen["grow_to"],
            "floor_contrast": chosen["floor_contrast"], "objective": why,
            "postprocessed": chosen, **({"hybrid": chosen["hybrid"], "hybrid_scale": chosen["hybrid_scale"],
                                        "baseline_otsu": base_otsu} if hybrid_scales else {})}
    result = {"grid": rows, "best": best, "postprocessing": pp_rows}
    if beside is not None and baseline_organ:
        pp = PostProcessing.for_preset(preset, chosen["min_lesion_ml"], chosen["grow_to"], chosen["floor_contrast"])
        scores, summary, _, _ = score_dataset(cases, maps, chosen["threshold"], pp, n_boot=0, detail=False,
                                              cache=cache, hybrid=HybridMaps(base_maps, chosen["hybrid"])
                                              if chosen.get("hybrid") else None)
        result["baseline"] = compare_with_baseline(scores, beside[0], summary, beside[1])
    with atomic_output_dir(out / "sweep") as stage:
        with open(stage / "sweep.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        (stage / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
        if "baseline" in result:
            (stage / "report.md").write_text("\n".join([
                "# Sweep: the recommended operating point beside the baseline", "",
                f"Model at L = {best['noise_level']}, s = {best['guidance']:g}, threshold {best['threshold']:g}, "
                f"minimum lesion {best['min_lesion_ml']:g} ml, grow to {best['grow_to']:g}"
                + (f", hybrid max(model, {best['hybrid']:g} x median baseline)" if best.get("hybrid") else "")
                + f" ({why}); the baseline at its own global Otsu threshold.",
                *comparison_markdown(result["baseline"], "model (recommended point)")]) + "\n")
        _plot(rows, stage / "dice_vs_s.png")
    if "baseline" not in result:  # an earlier run's comparison is not this sweep's
        (out / "sweep" / "report.md").unlink(missing_ok=True)
    return result


def classifier_auc(extra: dict) -> tuple[dict[int, float], str]:
    """The bundle's classifier AUCs by noise level and where they come from: the validation split of ``train all``
    (cases training never saw) when recorded, else the classifier training's own validation latents."""
    held = (extra.get("validation") or {}).get("classifier_auc")
    if held:
        return {int(k): float(v) for k, v in held.items() if v is not None}, "the validation split"
    aucs = (extra.get("classifier_training") or {}).get("best_val_auc") or {}
    return {int(k): float(v) for k, v in aucs.items() if v is not None}, "its training's validation latents"


def weak_guidance(extra: dict, noise_levels: Sequence[int]) -> str | None:
    """Why the sweep must not choose guidance s > 0 for this bundle (None: it may): a recorded classifier AUC, at the
    level nearest some swept L, below :data:`~DiffusionAnomalyLib.settings.WEAK_CLASSIFIER_AUC` (near chance)."""
    from DiffusionAnomalyLib.settings import WEAK_CLASSIFIER_AUC

    aucs, source = classifier_auc(extra)
    if not aucs:
        return None
    for L in noise_levels:
        level = min(aucs, key=lambda k: (abs(k - L), k))
        if not aucs[level] >= WEAK_CLASSIFIER_AUC:  # NaN counts as weak
            return (f"the bundle's classifier has AUC {aucs[level]:.2f} at t = {level} on {source} (below "
                    f"{WEAK_CLASSIFIER_AUC}: near chance, 0.5), so its guidance steers toward noise, not health")
    return None


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def variant(r: dict) -> tuple:
        return r["reference"], r["samples"], r["median_filter"]

    several = len({variant(r) for r in rows}) > 1
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for line in sorted({(r["noise_level"], *variant(r)) for r in rows}):
        pts = sorted((r["guidance"], r["dice"] or 0.0) for r in rows if (r["noise_level"], *variant(r)) == line)
        label = f"L = {line[0]}" + (f", {line[1]}, k = {line[2]}, median {line[3]}" if several else "")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set(xlabel="guidance strength s", ylabel="mean Dice (global Otsu, no post-processing)",
           title="Dice vs guidance")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_calibrated_bundle(bundle: str | Path, out: str | Path, best: dict, note: str = "",
                            manifest: str | Path | None = None) -> Path:
    """A copy of ``bundle`` whose recommended sampler / L / s / steps / threshold / minimum lesion volume
    (and anomaly reference, averaged samples and median filter, when ``best`` has them) are ``best``'s. When
    ``manifest`` lists the bundle (a shipped one), the copy's version gains ``+recalibrated``: it is not the
    listed bundle any more, and would fail the listed checksum under the same version."""
    from DiffusionAnomalyLib.models.bundle import BundleMeta, manifest_entry, read_meta

    meta: BundleMeta = read_meta(bundle)
    if manifest_entry(meta, manifest) is not None:
        meta.version = f"{meta.version}+recalibrated"
    meta.recommended = {**(meta.recommended or {}), "sampler": best["sampler"], "noise_level": best["noise_level"],
                        "guidance": best["guidance"], "steps": best["steps"], "threshold": best["threshold"],
                        **{k: best[k] for k in CALIBRATED if k in best}}
    meta.extra = {**(meta.extra or {}), "calibration": {**best, "note": note}}
    rec = meta.recommended
    meta.record(f"calibrated by sweep: {rec['sampler']} L = {rec['noise_level']}, s = {rec['guidance']:g}, "
                f"{rec['steps']} steps, threshold {rec['threshold']}" +
                "".join(f", {k} {rec[k]}" for k in CALIBRATED if k in best) + (f" ({note})" if note else ""))
    with atomic_output_dir(out) as stage:
        for f in Path(bundle).iterdir():
            if f.is_file() and f.name != "model.json":
                shutil.copy2(f, stage / f.name)
        (stage / "model.json").write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
    return Path(out)
