"""``diffusion-anomaly evaluate``: metrics of the kidney thesis ch. 5 over a dataset, the way the thesis measures.

Three phases:

1. **Maps** (sharded over ``torchrun`` ranks, cached, resumable): for each case, the anomaly map and the
   organ mask on the image grid, written to ``OUT/maps/<case>/`` (atomically; a finished case is never
   recomputed, so an interrupted evaluation resumes where it stopped).
2. **Threshold**: one global Otsu threshold over the organ voxels of all maps (the kidney thesis §5.2), or a fixed one.
3. **Scores** (rank 0): post-processing (the kidney thesis §4.1.1, optional), then per case Dice, lesion matching at
   IoU >= 0.2 (precision, recall, F1, false positives per organ), TNM size strata, lesion scores for the
   FROC, voxel AUROC / AUPRC inside the organ, recall by each reference lesion's contrast against the tissue
   around it in the image (how visible it is, whatever the model); aggregates with 1000-resample bootstrap
   95 % CIs. Written as ``per_case.csv``, ``reference_lesions.csv`` (one row per reference lesion: volume,
   diameter, contrast, spread, CNR, found, the best IoU any prediction has with it),
   ``summary.json``, ``summary.md``, ``froc.png``, ``size_strata.png``, ``dice_hist.png`` (:mod:`.report`).

Cases with problems (no labels, unexpected label values, image and label on different grids, a run
that failed) are listed per case in the report; the rest is evaluated.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from DiffusionAnomalyLib.detection.anomaly import (
    SIZE_CLASSES,
    PostProcessing,
    dataset_otsu_threshold,
    organ_box,
    postprocess,
    size_class,
)
from DiffusionAnomalyLib.detection.hybrid import hybrid_map
from DiffusionAnomalyLib.detection.presets import OrganPreset
from DiffusionAnomalyLib.errors import CancelledError, DiffusionAnomalyError, InputError
from DiffusionAnomalyLib.evaluation.datasets import EvalCase, reference_lesions
from DiffusionAnomalyLib.evaluation.funnel import FUNNEL_PAD, crop_to, funnel_summary, kept_contrast, lesion_stages
from DiffusionAnomalyLib.evaluation.metrics import (
    CONTRAST_CLASSES,
    Detection,
    bootstrap_ci,
    components,
    contrast_class,
    detection_by_size,
    dice,
    froc_points,
    lesion_contrast,
    lesion_diameters,
    match_lesions,
    voxel_auprc,
    voxel_auroc,
)
from DiffusionAnomalyLib.imaging.io import read_channels, read_volume, write_volume
from DiffusionAnomalyLib.imaging.outputs import atomic_output_dir

SIZE_BOUNDS = [(0.0, 20.0), (20.0, 40.0), (40.0, 70.0), (70.0, math.inf)]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def case_masks(case: EvalCase, channels: list[sitk.Image], preset: OrganPreset, scratch: Path):
    """The organ MaskSet of a case (TotalSegmentator files, the KiTS labels, or the skull-stripped brain)."""
    from DiffusionAnomalyLib.imaging.masks import load_totalseg_masks, load_user_mask, mask_from_skull_stripped

    if case.skull_stripped:
        return mask_from_skull_stripped(channels, preset)
    if case.totalseg is not None:
        return load_totalseg_masks(case.totalseg, channels[0], preset)
    if case.organ_from_labels:
        _, organ = reference_lesions(case, channels[0])
        path = write_volume(sitk.Cast(_image(organ, channels[0]), sitk.sitkUInt8), scratch / "organ-from-labels.nii.gz")
        return load_user_mask(path, channels[0], preset)
    raise InputError(f"{case.case_id}: no organ masks (segmentations/ folder) for this case")


def _crop(image: sitk.Image, box: tuple[slice, ...] | None) -> sitk.Image:
    """``image`` cut to ``box`` (z, y, x slices; None: whole), its origin moved so voxels keep their positions."""
    if box is None:
        return image
    return sitk.RegionOfInterest(image, [int(sl.stop - sl.start) for sl in reversed(box)],
                                 [int(sl.start) for sl in reversed(box)])


def _image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    im = sitk.GetImageFromArray(array)
    im.CopyInformation(reference)
    return im


def compute_maps(cases: list[EvalCase], reconstructor, preset: OrganPreset, maps_dir: Path, rank: int = 0,
                 world: int = 1, progress: Callable[[str], None] = log, funnel: bool = True) -> None:
    """Phase 1 for this rank's shard (cases[rank::world]); cached cases are skipped. ``funnel``: also keep the
    healthy reconstruction and the autoencoder's D(E(x)) around the organ (:mod:`.funnel`; the sweep does not)."""
    from DiffusionAnomalyLib.detection.pipeline import detect

    todo = [c for c in cases[rank::world] if not c.problems and not (maps_dir / c.case_id / "heatmap.nii.gz").is_file()
            and not (maps_dir / f"{c.case_id}.error.json").is_file()]
    maps_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, case in enumerate(todo):
        try:
            channels = read_channels(case.inputs, preset.channels if len(case.inputs) > 1 else None)
            truth, _ = reference_lesions(case, channels[0])  # label problems are found before the expensive part
            with atomic_output_dir(maps_dir / case.case_id) as stage:
                mask_set = case_masks(case, channels, preset, stage)
                # an infinite threshold skips post-processing here; phase 3 thresholds the cached map
                result = detect(channels, mask_set, preset, reconstructor, threshold=math.inf, input_name=case.case_id,
                                uncertainty=False, autoencoded=funnel)  # only the maps are kept
                write_volume(result.heatmap, stage / "heatmap.nii.gz")
                write_volume(result.organ_mask, stage / "organ.nii.gz")
                if funnel:  # the reconstructions around the organ and the lesions, for the loss funnel
                    box = organ_box((sitk.GetArrayViewFromImage(result.organ_mask) > 0) | (truth > 0), FUNNEL_PAD)
                    for kind, images in (("reconstruction", result.reconstruction),
                                         ("autoencoded", result.autoencoded)):
                        for c, im in enumerate(images):
                            write_volume(_crop(im, box), stage / f"{kind}_{c}.nii.gz")
                (stage / "case.json").write_text(json.dumps({
                    "case": case.case_id, "structures": len(mask_set.masks), "warnings": result.warnings,
                    "timings_s": result.timings, "reference": getattr(reconstructor, "reference", "input"),
                    "funnel": funnel}) + "\n")
        except CancelledError:  # SIGTERM stops the whole run (this case's staging is gone); a rerun resumes here
            raise
        except DiffusionAnomalyError as exc:
            (maps_dir / f"{case.case_id}.error.json").write_text(json.dumps({"case": case.case_id,
                                                                             "problem": str(exc)}) + "\n")
        done = i + 1
        eta = (time.perf_counter() - t0) / done * (len(todo) - done)
        progress(f"[rank {rank}] maps {done}/{len(todo)} ({case.case_id}); ETA {eta:.0f} s")


@dataclass
class CaseScore:
    case: str
    lesions: int
    structures: int
    dice: float
    tp: int
    fp: int
    fn: int
    fp_per_organ: float
    auroc: float
    auprc: float
    lesion_scores: list[float] = field(default_factory=list)
    lesion_hits: list[bool] = field(default_factory=list)
    strata: dict[str, list[int]] = field(default_factory=dict)  # size class -> [tp, fn, fp]
    #: Phantom cases: "attribute=value" (kind, phase, position) -> [found, total] over reference lesions.
    kinds: dict[str, list[int]] = field(default_factory=dict)
    #: Contrast-to-noise stratum -> [found, total] over reference lesions (any dataset).
    contrast: dict[str, list[int]] = field(default_factory=dict)
    #: One row per reference lesion: id, volume, diameter, contrast, spread, CNR, found.
    reference_rows: list[dict] = field(default_factory=list)
    #: Size class -> [found, total] over reference lesions (what the size-balanced calibration objective needs).
    found_by_size: dict[str, list[int]] = field(default_factory=dict)

    @property
    def detection(self) -> Detection:
        return Detection(self.tp, self.fp, self.fn)

    @property
    def precision(self) -> float:
        return self.detection.precision

    @property
    def recall(self) -> float:
        return self.detection.recall

    @property
    def f1(self) -> float:
        return self.detection.f1

    def row(self) -> dict:
        return {"case": self.case, "lesions": self.lesions, "dice": _r(self.dice), "tp": self.tp, "fp": self.fp,
                "fn": self.fn, "precision": _r(self.precision), "recall": _r(self.recall), "f1": _r(self.f1),
                "fp_per_organ": _r(self.fp_per_organ), "voxel_auroc": _r(self.auroc), "voxel_auprc": _r(self.auprc)}


def _r(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)


@dataclass(frozen=True)
class HybridMaps:
    """Score the hybrid map max(model, ``weight`` x baseline) (:mod:`~DiffusionAnomalyLib.detection.hybrid`): the
    median baseline's cached maps of the same cases (``OUT/maps/baseline``) and the weight (0: the model alone)."""

    baseline: Path
    weight: float


def _baseline_heat(case: EvalCase, folder: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(read_volume(folder / case.case_id / "heatmap.nii.gz"))


def load_maps(case: EvalCase, maps_dir: Path, hybrid: HybridMaps | None = None
              ) -> tuple[np.ndarray, np.ndarray, sitk.Image, dict]:
    """One case's cached map (with ``hybrid``: the hybrid map), organ mask, map image and case.json."""
    heat_img = read_volume(maps_dir / case.case_id / "heatmap.nii.gz")
    organ = sitk.GetArrayFromImage(read_volume(maps_dir / case.case_id / "organ.nii.gz")) > 0
    info = json.loads((maps_dir / case.case_id / "case.json").read_text())
    heat = sitk.GetArrayFromImage(heat_img)
    if hybrid is not None and hybrid.weight:
        heat = hybrid_map(heat, _baseline_heat(case, hybrid.baseline), hybrid.weight)
    return heat, organ, heat_img, info


def global_threshold(cases: list[EvalCase], maps_dir: Path, hybrid: HybridMaps | None = None) -> float:
    """One Otsu threshold over the organ voxels of every case's map (the kidney thesis §5.2)."""
    values = []
    for case in cases:
        heat, organ, _, _ = load_maps(case, maps_dir, hybrid)
        values.append(heat[organ])
    return dataset_otsu_threshold(values, [None] * len(values))


#: Missed lesions whose best IoU with a prediction reaches this are counted as near misses in the summary.
NEAR_MISS_IOU = 0.1


@dataclass
class ScoringInputs:
    """One case's map, organ mask and reference lesions cropped to the box that holds the organ and every lesion
    (plus 3 voxels), with its threshold-free voxel AUROC / AUPRC: what scoring many operating points of one map
    needs, read once. Scores on the crop equal those on the whole grid (predictions lie inside the organ)."""

    heat: np.ndarray
    organ: np.ndarray
    image: sitk.Image  # the crop's grid (origin moved, so indices map to the same physical points)
    info: dict
    truth: np.ndarray
    auroc: float
    auprc: float
    sizes: dict[int, str] = field(default_factory=dict)  # reference lesion id -> size class
    baseline: np.ndarray | None = None  # the median baseline's map on the same crop (hybrid scoring)


def reference_sizes(diameters: dict[int, float]) -> dict[int, str]:
    """The size class (:data:`SIZE_CLASSES`) of every reference lesion id, from its largest axial diameter."""
    return {lab: size_class(d) for lab, d in diameters.items()}


def scoring_inputs(case: EvalCase, maps_dir: Path, baseline: Path | None = None) -> ScoringInputs:
    """The case's :class:`ScoringInputs` (``baseline``: with the median baseline's cached map, for hybrids)."""
    heat, organ, image, info = load_maps(case, maps_dir)
    base = None if baseline is None else _baseline_heat(case, baseline)
    truth, _ = reference_lesions(case, image)
    box = organ_box(organ | (truth > 0), 3)
    if box is not None:
        image = _crop(image, box)
        heat, organ, truth = heat[box].copy(), organ[box].copy(), truth[box].copy()
        base = None if base is None else base[box].copy()
    # inside the organ, which the crop holds whole: the same values as on the whole grid
    return ScoringInputs(heat, organ, image, info, truth, voxel_auroc(heat, truth > 0, organ),
                         voxel_auprc(heat, truth > 0, organ), reference_sizes(lesion_diameters(truth, image)), base)


def score_case(case: EvalCase, maps_dir: Path, threshold: float, pp: PostProcessing | None,
               iou: float = 0.2, detail: bool = True, inputs: ScoringInputs | None = None,
               hybrid: HybridMaps | None = None, auroc: bool = True) -> CaseScore:
    """Phase 3 for one case (``pp`` None: threshold and connected components only, as in the sweep). ``detail``
    False skips what only the report shows (size strata, each reference lesion's contrast in the image, the phantom
    lesion attributes): the sweep scores many operating points and needs the detection figures only. ``inputs``
    (with ``detail`` False only): the case's cached :class:`ScoringInputs` instead of reading the maps (with
    ``hybrid``, inputs holding the baseline's map). ``hybrid``: score the hybrid map. ``auroc`` False: leave the
    voxel AUROC / AUPRC of a hybrid map out (NaN; the sweep's many operating points do not need them)."""
    weight = hybrid.weight if hybrid is not None else 0.0
    auc = None
    if inputs is not None:
        if detail:
            raise ValueError("cached scoring inputs are cropped: score with detail=False")
        heat, organ, image, info, truth = inputs.heat, inputs.organ, inputs.image, inputs.info, inputs.truth
        heat = hybrid_map(heat, inputs.baseline, weight)
        auc = (inputs.auroc, inputs.auprc) if not weight else None
    else:
        heat, organ, image, info = load_maps(case, maps_dir, hybrid)
        truth, _ = reference_lesions(case, image)
    pred = components((heat > threshold) & organ) if pp is None else postprocess(heat, threshold, organ, image, pp)
    det = match_lesions(pred, truth, iou)
    n_ref = len([v for v in np.unique(truth) if v])
    matched = {p for _, p, _ in det.matches}
    pred_ids = [int(v) for v in np.unique(pred) if v]
    scores = [float(heat[pred == p].max()) for p in pred_ids]
    strata = {}
    by_size = detection_by_size(pred, truth, image, SIZE_BOUNDS, iou, matched=det) if detail else [None] * len(
        SIZE_CLASSES)
    for (name, _), s in zip(SIZE_CLASSES, by_size, strict=True):
        if s is not None:
            strata[name] = [s.tp, s.fn, s.fp]
    found = {r for r, _, _ in det.matches}
    diameters = None if inputs is not None else lesion_diameters(truth, image)
    by_size: dict[str, list[int]] = {}
    for lab, name in (inputs.sizes if inputs is not None else reference_sizes(diameters)).items():
        row = by_size.setdefault(name, [0, 0])
        row[0] += lab in found
        row[1] += 1
    stages = FunnelInputs(heat, threshold, pred, det, *_reconstructions(maps_dir / case.case_id, image),
                          info.get("reference", "input")) if detail else None
    rows, contrast = reference_lesion_rows(case, truth, organ, image, found, det.best_iou, stages,
                                           diameters) if detail else ([], {})
    return CaseScore(
        case=case.case_id, lesions=n_ref, structures=int(info.get("structures", 1)),
        kinds=lesion_kinds(case, found) if detail else {}, contrast=contrast, reference_rows=rows,
        dice=dice(pred, truth) if n_ref else float("nan"), tp=det.tp, fp=det.fp, fn=det.fn,
        fp_per_organ=det.fp / max(int(info.get("structures", 1)), 1),
        auroc=auc[0] if auc else voxel_auroc(heat, truth > 0, organ) if auroc else math.nan,
        auprc=auc[1] if auc else voxel_auprc(heat, truth > 0, organ) if auroc else math.nan,
        lesion_scores=scores, lesion_hits=[p in matched for p in pred_ids], strata=strata, found_by_size=by_size)


@dataclass
class FunnelInputs:
    """What the loss funnel (:mod:`.funnel`) needs of one scored case beside the image and the reference."""

    heat: np.ndarray
    threshold: float
    pred: np.ndarray
    detection: Detection
    reconstruction: list[np.ndarray] | None  # per channel, on the scored grid (None: not kept with the map)
    autoencoded: list[np.ndarray] | None
    reference: str


def _reconstructions(folder: Path, image: sitk.Image) -> tuple[list[np.ndarray] | None, list[np.ndarray] | None]:
    """The reconstructions kept beside a cached map, on ``image``'s grid (None for a kind not kept)."""
    out = []
    for kind in ("reconstruction", "autoencoded"):
        files = sorted(folder.glob(f"{kind}_*.nii.gz"), key=lambda p: int(p.name.split("_")[1].split(".")[0]))
        out.append([crop_to(read_volume(f), image) for f in files] or None)
    return out[0], out[1]


def reference_lesion_rows(case: EvalCase, truth: np.ndarray, organ: np.ndarray, image: sitk.Image,
                          found: set[int], best_iou: dict[int, float] | None = None,
                          funnel: FunnelInputs | None = None, diameters: dict[int, float] | None = None
                          ) -> tuple[list[dict], dict[str, list[int]]]:
    """Per reference lesion: volume, diameter, contrast against the tissue around it in the input image(s)
    (see :func:`lesion_contrast`), whether it was found, and the highest IoU any predicted component has with
    it (``best_iou``: a missed lesion with a value above 0 was touched, but not delineated well enough to
    count); with ``funnel``, the share of its contrast that D(E(x)) and the healthy reconstruction keep and the
    step of the loss funnel where it is lost (:mod:`.funnel`); and [found, total] per contrast stratum.
    ``diameters``: the lesions' :func:`lesion_diameters` when the caller has them."""
    if not truth.any():
        return [], {}
    channels = [sitk.GetArrayFromImage(c).astype(np.float32) for c in read_channels(case.inputs)]
    spacing = image.GetSpacing()[::-1]
    measured = lesion_contrast(channels, truth, organ, spacing)
    lost_at, ae_kept, rec_kept = {}, {}, {}
    if funnel is not None:
        which = {lab: m.channel for lab, m in measured.items()}
        ae_kept = kept_contrast(channels, funnel.autoencoded, truth, organ, spacing, which)
        rec_kept = kept_contrast(channels, funnel.reconstruction, truth, organ, spacing, which)
        lost_at = lesion_stages(truth, organ, funnel.heat, funnel.threshold, funnel.pred, funnel.detection,
                                ae_kept, rec_kept, funnel.reference)
    diameters = lesion_diameters(truth, image) if diameters is None else diameters
    voxels = np.bincount(truth.ravel())
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    rows, strata = [], {}
    for lab, m in measured.items():
        rows.append({"case": case.case_id, "lesion": lab, "volume_ml": _r(voxels[lab] * voxel_ml),
                     "diameter_mm": _r(diameters.get(lab, float("nan"))), "contrast": _r(m.contrast),
                     "spread": _r(m.spread), "cnr": _r(m.cnr), "found": int(lab in found),
                     "best_iou": _r((best_iou or {}).get(lab, 0.0)), "ae_kept": _r(ae_kept.get(lab)),
                     "rec_kept": _r(rec_kept.get(lab)), "lost_at": lost_at.get(lab, "")})
        row = strata.setdefault(contrast_class(m.cnr), [0, 0])
        row[0] += lab in found
        row[1] += 1
    return rows, strata


#: Phantom lesion attributes that the report breaks recall down by (from the case's ``case.json``).
KIND_ATTRIBUTES = ("kind", "phase", "position")


def lesion_kinds(case: EvalCase, found: set[int]) -> dict[str, list[int]]:
    """[found, total] per phantom lesion attribute value; {} for cases without a phantom ``case.json``.

    The phantom's lesion ids are the values of its ``lesions.nii.gz``, so ``found`` (reference ids
    matched by a prediction) says which described lesions were detected.
    """
    meta_path = case.labels.parent / "case.json" if case.layout == "phantom" and case.labels else None
    if meta_path is None or not meta_path.is_file():
        return {}
    meta = json.loads(meta_path.read_text())
    out: dict[str, list[int]] = {}
    for lesion in meta.get("lesions", []):
        values = {"kind": lesion.get("kind"), "phase": meta.get("phase"), "position": lesion.get("position")}
        for attr in KIND_ATTRIBUTES:
            if values[attr]:
                row = out.setdefault(f"{attr}={values[attr]}", [0, 0])
                row[0] += int(lesion["id"]) in found
                row[1] += 1
    return out


def aggregate(scores: list[CaseScore], n_boot: int = 1000) -> dict:
    """Dataset figures: means with bootstrap CIs, pooled lesion detection, size strata, FROC."""
    tp, fp, fn = (sum(getattr(s, k) for s in scores) for k in ("tp", "fp", "fn"))
    out = {"cases": len(scores), "reference_lesions": tp + fn, "predicted_lesions": tp + fp}
    for key, values in (("dice", [s.dice for s in scores]), ("f1", [s.f1 for s in scores]),
                        ("fp_per_organ", [s.fp_per_organ for s in scores]),
                        ("voxel_auroc", [s.auroc for s in scores]), ("voxel_auprc", [s.auprc for s in scores])):
        v = np.array([x for x in values if not math.isnan(x)], float)
        mean, lo, hi = bootstrap_ci(v, n_boot) if v.size else (float("nan"),) * 3
        out[key] = {"mean": _r(mean), "sd": _r(float(v.std())) if v.size else None, "ci95": [_r(lo), _r(hi)],
                    "n": int(v.size)}
    out["lesion_detection"] = {"tp": tp, "fp": fp, "fn": fn, "precision": _r(tp / (tp + fp)) if tp + fp else None,
                               "recall": _r(tp / (tp + fn)) if tp + fn else None,
                               "f1": _r(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else None}
    strata = {}
    for name, _ in SIZE_CLASSES:
        rows = [s.strata[name] for s in scores if name in s.strata]
        if rows:
            t, n, f = (sum(r[i] for r in rows) for i in range(3))
            strata[name] = {"cases": len(rows), "lesions": t + n, "found": t, "recall": _r(t / (t + n)),
                            "fp": f}
    out["size_strata"] = strata
    by_size = _recall_table([s.found_by_size for s in scores])
    out["recall_by_size"] = {name: by_size[name] for name, _ in SIZE_CLASSES if name in by_size}
    out["size_balanced_recall"] = size_balanced_recall(out["recall_by_size"])
    out["lesion_kinds"] = _recall_table([s.kinds for s in scores])
    order = [name for name, _ in CONTRAST_CLASSES] + ["CNR n/a"]
    contrast = _recall_table([s.contrast for s in scores])
    out["lesion_contrast"] = {k: contrast[k] for k in order if k in contrast}
    missed = [r for s in scores for r in s.reference_rows if not r["found"]]
    rows = [r for s in scores for r in s.reference_rows]
    if any(r.get("lost_at") for r in rows):
        out["funnel"] = funnel_summary(rows)
    out["missed_overlapped"] = {"missed": len(missed),
                                "overlapped": sum(1 for r in missed if r["best_iou"] > 0),
                                "near": sum(1 for r in missed if r["best_iou"] >= NEAR_MISS_IOU)}
    out["froc"] = [{"threshold": _r(t), "fp_per_scan": _r(f), "sensitivity": _r(s)}
                   for t, f, s in froc_points([(s.lesion_scores, s.lesion_hits, s.lesions) for s in scores])]
    return out


#: Size classes with fewer validation lesions than this make ``train all`` warn: their recall is a coin toss, and
#: the size-balanced objective counts it at most half (:func:`size_balanced_recall`).
MIN_LESIONS_PER_SIZE = 5


def size_balanced_recall(by_size: dict[str, dict], prior_lesions: int = MIN_LESIONS_PER_SIZE) -> float | None:
    """The size-balanced objective: the mean over the size classes with lesions of each class's recall shrunk
    toward the pooled recall p, (found + k p) / (lesions + k) with k = ``prior_lesions`` (additive smoothing toward
    the pooled rate, an empirical-Bayes estimate); None without lesions.

    Every class counts the same, so the count of large lesions cannot buy a whole class of small ones away; the
    shrinkage keeps a class of a few lesions from outweighing a large one on one lesion's luck (a class of k lesions
    counts half its own recall, half the pooled one). Measured on validation phantoms (docs/evaluation.md): the raw
    mean over classes of >= 5 lesions chose a point that finds 5 of 53 lesions (3 of the 5 in 4-7 cm) over one that
    finds 12 of 53, 2 of them <= 2 cm.

    >>> size_balanced_recall({"<=2 cm": {"lesions": 20, "found": 0}, "2-4 cm": {"lesions": 10, "found": 10}})
    0.4222
    """
    rows = [v for v in by_size.values() if v["lesions"]]
    if not rows:
        return None
    pooled = sum(v["found"] for v in rows) / sum(v["lesions"] for v in rows)
    k = float(prior_lesions)
    return _r(float(np.mean([(v["found"] + k * pooled) / (v["lesions"] + k) for v in rows])))


def _recall_table(per_case: list[dict[str, list[int]]]) -> dict[str, dict]:
    """Sum [found, total] per key over cases: {key: {lesions, found, recall}}, keys sorted."""
    total: dict[str, list[int]] = {}
    for d in per_case:
        for key, (f, n) in d.items():
            row = total.setdefault(key, [0, 0])
            row[0] += f
            row[1] += n
    return {k: {"lesions": n, "found": f, "recall": _r(f / n) if n else None} for k, (f, n) in sorted(total.items())}


#: Significance level of the paired test that the reports name a winner by.


def collect_problems(cases: list[EvalCase], maps_dir: Path, *more: Path) -> dict[str, str]:
    """Why a case cannot be scored: its own problems, or a failed map in ``maps_dir`` (or in ``more``)."""
    problems = {c.case_id: "; ".join(c.problems) for c in cases if c.problems}
    for c in cases:
        for folder in (maps_dir, *more):
            err = folder / f"{c.case_id}.error.json"
            if err.is_file() and c.case_id not in problems:
                problems[c.case_id] = json.loads(err.read_text())["problem"]
    return problems


def score_dataset(cases: list[EvalCase], maps_dir: Path, threshold: float | str, pp: PostProcessing | None,
                  iou: float = 0.2, n_boot: int = 1000, detail: bool = True,
                  cache: dict[str, ScoringInputs] | None = None, hybrid: HybridMaps | None = None,
                  auroc: bool = True) -> tuple[list[CaseScore], dict, dict[str, str], float]:
    """Phases 2 and 3 over the cached maps: (per-case scores, summary, skipped cases, threshold used); ``detail``:
    see :func:`score_case`. ``cache`` (with ``detail`` False; one dict per ``maps_dir``): each case's
    :class:`ScoringInputs`, filled on first use, so that scoring many operating points reads each map once.
    ``hybrid``: score max(model, weight x baseline) (a case whose baseline map failed is skipped too); ``auroc``:
    see :func:`score_case`."""
    problems = collect_problems(cases, maps_dir, *([hybrid.baseline] if hybrid is not None else []))
    good = [c for c in cases if c.case_id not in problems]
    if not good:
        raise InputError("no case could be evaluated: " + "; ".join(f"{k}: {v}" for k, v in problems.items()))
    thr = global_threshold(good, maps_dir, hybrid) if threshold == "otsu" else float(threshold)
    if cache is None:
        scores = [score_case(c, maps_dir, thr, pp, iou, detail, hybrid=hybrid) for c in good]
    else:
        base = hybrid.baseline if hybrid is not None else None
        for c in good:
            if c.case_id not in cache or (base is not None and cache[c.case_id].baseline is None):
                cache[c.case_id] = scoring_inputs(c, maps_dir, base)
        scores = [score_case(c, maps_dir, thr, pp, iou, detail, cache[c.case_id], hybrid, auroc) for c in good]
    summary = aggregate(scores, n_boot)
    summary["threshold"] = thr
    return scores, summary, problems, thr


def baseline_beside(cases: list[EvalCase], organ: str, out: Path, rank: int = 0, world: int = 1,
                    barrier: Callable[[], None] = lambda: None, postprocessing: bool = True,
                    min_lesion_ml: float | None = None, grow_to: float | None = None, n_boot: int = 1000,
                    progress: Callable[[str], None] = log, detail: bool | None = None,
                    floor_contrast: float | None = None) -> tuple[list[CaseScore], dict] | None:
    """The non-neural median baseline (:class:`~.baseline.MedianBaseline`, the organ's own preset, as the
    ``baseline`` command runs it) on the same cases: maps cached in ``out/maps/baseline``, scored at its own global
    Otsu threshold with the thesis post-processing (``min_lesion_ml`` / ``grow_to`` / ``floor_contrast`` given by the
    user apply to
    both; a bundle's calibrated values are the model's only). ``detail`` (default: ``n_boot`` > 0): score the
    report's breakdowns and the loss funnel too. Returns (scores, summary) on rank 0, else None."""
    from DiffusionAnomalyLib.detection.baseline import MedianBaseline
    from DiffusionAnomalyLib.detection.presets import get_preset

    preset = get_preset(organ)
    maps = out / "maps" / "baseline"
    compute_maps(cases, MedianBaseline.for_preset(preset), preset, maps, rank, world,
                 lambda m: progress(m.replace("maps", "baseline maps", 1)))
    barrier()
    if rank != 0:
        return None
    pp = PostProcessing.for_preset(preset, min_lesion_ml, grow_to, floor_contrast) if postprocessing else None
    scores, summary, _, _ = score_dataset(cases, maps, "otsu", pp, n_boot=n_boot,
                                          detail=n_boot > 0 if detail is None else detail)
    return scores, summary
