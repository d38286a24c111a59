"""Evaluation metrics of kidney thesis ch. 5: Dice, lesion matching, FROC, size strata, AUROC/AUPRC,
bootstrap confidence intervals and a one-sided Wilcoxon (non-inferiority) test.

Conventions: labelmaps hold one integer id per lesion (0 = background). Undefined ratios (0/0)
are NaN and aggregated with ``nanmean``; Dice of two empty masks is 1.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage, stats

from DiffusionAnomalyLib.detection.anomaly import axial_extent_mm


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A|+|B|) of two binary masks (1.0 when both are empty)."""
    a, b = np.asarray(pred) > 0, np.asarray(ref) > 0
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(a, b).sum()) / denom


def components(mask_or_labels: np.ndarray) -> np.ndarray:
    """Connected components (26-connected) of a binary mask, as a labelmap."""
    labels, _ = ndimage.label(np.asarray(mask_or_labels) > 0, structure=np.ones((3, 3, 3)))
    return labels


def iou_matrix(pred_labels: np.ndarray, ref_labels: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """IoU of every (reference, prediction) pair; returns (matrix [n_ref, n_pred], ref ids, pred ids)."""
    r_size, p_size = _label_sizes(ref_labels), _label_sizes(pred_labels)
    ref_ids, pred_ids = sorted(r_size), sorted(p_size)
    m = np.zeros((len(ref_ids), len(pred_ids)))
    if not ref_ids or not pred_ids:
        return m, ref_ids, pred_ids
    r_index = {v: i for i, v in enumerate(ref_ids)}
    p_index = {v: j for j, v in enumerate(pred_ids)}
    both = (ref_labels != 0) & (pred_labels != 0)
    pairs, counts = np.unique(np.stack([ref_labels[both], pred_labels[both]]), axis=1, return_counts=True)
    for (r, p), inter in zip(pairs.T, counts, strict=True):
        r, p = int(r), int(p)
        m[r_index[r], p_index[p]] = inter / (r_size[r] + p_size[p] - inter)
    return m, ref_ids, pred_ids


def _label_sizes(labels: np.ndarray) -> dict[int, int]:
    """{label: voxel count} of the non-zero labels (one bincount pass for non-negative integer labels)."""
    flat = np.asarray(labels).ravel()
    if flat.dtype.kind in "ub" or (flat.dtype.kind == "i" and (flat.size == 0 or flat.min() >= 0)):
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=1)
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts) if v}
    values, counts = np.unique(flat, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True) if v != 0}


@dataclass
class Detection:
    """Lesion-level result of one case."""

    tp: int
    fp: int
    fn: int
    matches: list[tuple[int, int, float]] = field(default_factory=list)  # (ref id, pred id, IoU)
    unmatched_pred: list[int] = field(default_factory=list)
    #: Per reference id: the highest IoU any prediction has with it (matched or not; 0 when none overlaps).
    best_iou: dict[int, float] = field(default_factory=dict)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else float("nan")


def match_lesions(pred_labels: np.ndarray, ref_labels: np.ndarray, iou_threshold: float = 0.2) -> Detection:
    """Match predicted to reference lesions at IoU >= ``iou_threshold``, one to one.

    Pairs are taken greedily by decreasing IoU, so each reference keeps the prediction with the
    highest IoU; other predictions overlapping it count as false positives.
    """
    m, ref_ids, pred_ids = iou_matrix(pred_labels, ref_labels)
    pairs = sorted(((m[i, j], i, j) for i in range(len(ref_ids)) for j in range(len(pred_ids))
                    if m[i, j] >= iou_threshold), reverse=True)
    used_r, used_p, matches = set(), set(), []
    for iou, i, j in pairs:
        if i in used_r or j in used_p:
            continue
        used_r.add(i)
        used_p.add(j)
        matches.append((ref_ids[i], pred_ids[j], float(iou)))
    unmatched = [pred_ids[j] for j in range(len(pred_ids)) if j not in used_p]
    best = {r: float(m[i].max()) if len(pred_ids) else 0.0 for i, r in enumerate(ref_ids)}
    return Detection(len(matches), len(unmatched), len(ref_ids) - len(matches), matches, unmatched, best)


def froc_points(
    cases: Sequence[tuple[Sequence[float], Sequence[bool], int]], thresholds: Sequence[float] | None = None
) -> list[tuple[float, float, float]]:
    """FROC: (threshold, false positives per scan, sensitivity) at each lesion-score threshold.

    Each case is (scores of its predicted lesions, whether each matched a reference, number of
    reference lesions). A prediction counts at threshold t when its score >= t.
    """
    n_scans = len(cases)
    n_ref = sum(c[2] for c in cases)
    scores = np.concatenate([np.asarray(c[0], float) for c in cases]) if cases else np.zeros(0)
    hits = np.concatenate([np.asarray(c[1], bool) for c in cases]) if cases else np.zeros(0, bool)
    if thresholds is None:
        thresholds = np.unique(scores)[::-1]
    out = []
    for t in thresholds:
        keep = scores >= t
        out.append((float(t), float((keep & ~hits).sum()) / max(n_scans, 1),
                    float((keep & hits).sum()) / n_ref if n_ref else float("nan")))
    return out


def lesion_diameters(labels: np.ndarray, image: sitk.Image) -> dict[int, float]:
    """Largest axial diameter (mm) of every lesion id in ``labels``."""
    out = {}
    for lab, sl in enumerate(ndimage.find_objects(labels.astype(np.int64)), start=1):
        if sl is not None:
            idx = np.argwhere(labels[sl] == lab) + np.array([s.start for s in sl])
            out[lab] = axial_extent_mm(image, idx)
    return out


#: Contrast-to-noise strata of reference lesions, in order: (label, upper bound, exclusive); CNR as in
#: :func:`lesion_contrast`.
CONTRAST_CLASSES = (("CNR < 0.5", 0.5), ("CNR 0.5-1", 1.0), ("CNR 1-2", 2.0), ("CNR > 2", np.inf))


def contrast_class(cnr: float) -> str:
    """The :data:`CONTRAST_CLASSES` label of a CNR ("CNR n/a" for NaN)."""
    return next((name for name, hi in CONTRAST_CLASSES if cnr < hi), "CNR n/a")


@dataclass
class LesionContrast:
    """How a lesion stands out from the tissue around it, in the image itself (no model involved)."""

    contrast: float  # |median inside - median of the surroundings|, input units (HU for CT)
    spread: float  # robust SD of the surroundings (1.4826 MAD): noise plus the tissue's own texture
    channel: int

    @property
    def cnr(self) -> float:
        return self.contrast / max(self.spread, 1e-6)


def _lesion_surroundings(labels: np.ndarray, spacing_zyx: Sequence[float], ring_mm: float):
    """Per lesion id of ``labels``: (id, bounding box padded by ``ring_mm``, the lesion in the box, the voxels of
    the box within ``ring_mm`` of it that are in no lesion)."""
    spacing = np.asarray(spacing_zyx, float)
    pad = np.ceil(ring_mm / spacing).astype(int) + 1
    for lab, sl in enumerate(ndimage.find_objects(labels.astype(np.int64)), start=1):
        if sl is None:
            continue
        box = tuple(slice(max(s.start - p, 0), s.stop + p) for s, p in zip(sl, pad, strict=True))
        inside = labels[box] == lab
        near = (ndimage.distance_transform_edt(~inside, sampling=spacing) <= ring_mm) & (labels[box] == 0)
        yield lab, box, inside, near


def lesion_rings(labels: np.ndarray, organ: np.ndarray, spacing_zyx: Sequence[float], ring_mm: float = 4.0):
    """Per lesion id: (id, box, the lesion in the box, its surroundings in the box or None): the voxels within
    ``ring_mm`` that are in the organ and in no lesion, or in no lesion at all when fewer than 10 organ voxels touch
    it (e.g. an exophytic lesion); None when fewer than 2 remain."""
    for lab, box, inside, near in _lesion_surroundings(labels, spacing_zyx, ring_mm):
        ring = near & organ[box]
        if np.count_nonzero(ring) < 10:
            ring = near
        yield lab, box, inside, ring if np.count_nonzero(ring) >= 2 else None


def lesion_contrast(channels: Sequence[np.ndarray], labels: np.ndarray, organ: np.ndarray,
                    spacing_zyx: Sequence[float], ring_mm: float = 4.0) -> dict[int, LesionContrast]:
    """Contrast of every lesion id against its surroundings, in the channel where its CNR is largest.

    The surroundings are the voxels within ``ring_mm`` of the lesion that are in the organ and in no
    lesion (or in no lesion at all when fewer than 10 organ voxels touch it, e.g. an exophytic lesion).
    Medians and the MAD keep partial-volume edges and other tissue at the ring's rim from dominating.
    Lesions without surroundings get NaN.
    """
    out: dict[int, LesionContrast] = {}
    for lab, box, inside, ring in lesion_rings(labels, organ, spacing_zyx, ring_mm):
        if ring is None:
            out[lab] = LesionContrast(float("nan"), float("nan"), 0)
            continue
        best = None
        for i, ch in enumerate(channels):
            around = ch[box][ring].astype(float)
            centre = float(np.median(around))
            c = LesionContrast(abs(float(np.median(ch[box][inside])) - centre),
                               1.4826 * float(np.median(np.abs(around - centre))), i)
            best = c if best is None or c.cnr > best.cnr else best
        out[lab] = best
    return out


def contrast_kept(image: np.ndarray, reconstruction: np.ndarray, lesions: np.ndarray, spacing_zyx: Sequence[float],
                  ring_mm: float = 4.0, min_contrast: float = 0.05) -> list[tuple[float, float]]:
    """How much of each lesion's contrast a reconstruction keeps (e.g. an autoencoder's D(E(x))).

    Per connected component of ``lesions``: (equivalent-sphere diameter in mm, (mean over the lesion - mean
    over the non-lesion voxels within ``ring_mm``) in ``reconstruction`` divided by the same in ``image``).
    1 = kept, 0 = erased. Lesions whose contrast in ``image`` is below ``min_contrast`` are skipped.
    """
    labels, _ = ndimage.label(lesions > 0)
    voxel_mm3 = float(np.prod(spacing_zyx))
    out = []
    for _, box, inside, ring in _lesion_surroundings(labels, spacing_zyx, ring_mm):
        if not ring.any():
            continue
        c_image = image[box][inside].mean() - image[box][ring].mean()
        if abs(c_image) < min_contrast:
            continue
        c_rec = reconstruction[box][inside].mean() - reconstruction[box][ring].mean()
        volume_mm3 = inside.sum() * voxel_mm3
        out.append((float(2 * (3 * volume_mm3 / (4 * np.pi)) ** (1 / 3)), float(c_rec / c_image)))
    return out


def stratified_detection(
    pred_labels: np.ndarray, ref_labels: np.ndarray, image: sitk.Image, low_mm: float, high_mm: float,
    iou_threshold: float = 0.2,
) -> Detection | None:
    """Detection restricted to references with diameter in (low, high] mm (kidney thesis §5.3.3).

    Unmatched predictions outside the size range are dropped; returns None when the case has no
    reference lesion in the range (such cases are excluded).
    """
    return detection_by_size(pred_labels, ref_labels, image, [(low_mm, high_mm)], iou_threshold)[0]


def detection_by_size(
    pred_labels: np.ndarray, ref_labels: np.ndarray, image: sitk.Image, bounds: Sequence[tuple[float, float]],
    iou_threshold: float = 0.2, matched: Detection | None = None,
) -> list[Detection | None]:
    """:func:`stratified_detection` for each (low, high] mm range of ``bounds``, matching and measuring once
    (``matched``: the case's :func:`match_lesions` at ``iou_threshold`` when the caller already has it)."""
    full = matched if matched is not None else match_lesions(pred_labels, ref_labels, iou_threshold)
    ref_d = lesion_diameters(ref_labels, image)
    pred_d = lesion_diameters(pred_labels, image)
    out: list[Detection | None] = []
    for low_mm, high_mm in bounds:
        in_range = {r for r, d in ref_d.items() if low_mm < d <= high_mm}
        if not in_range:
            out.append(None)
            continue
        matches = [m for m in full.matches if m[0] in in_range]
        fps = [p for p in full.unmatched_pred if low_mm < pred_d.get(p, 0.0) <= high_mm]
        out.append(Detection(len(matches), len(fps), len(in_range) - len(matches), matches, fps))
    return out


def voxel_auroc(score: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Area under the ROC curve of voxel scores (Mann-Whitney U with average ranks for ties)."""
    s, y = _select(score, truth, mask)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def voxel_auprc(score: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Average precision: sum over distinct thresholds of (R_k - R_{k-1}) * P_k."""
    s, y = _select(score, truth, mask)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _select(score: np.ndarray, truth: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    sel = np.ones(score.shape, bool) if mask is None else np.asarray(mask) > 0
    return np.asarray(score, float)[sel], np.asarray(truth)[sel] > 0


def bootstrap_ci(
    values: Sequence[float], n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0,
    statistic: Callable[[np.ndarray], float] = np.nanmean,
) -> tuple[float, float, float]:
    """(statistic, low, high): percentile bootstrap CI over cases by ``scipy.stats.bootstrap``, ``n_resamples``
    resamples drawn from ``numpy.random.default_rng(seed)`` (0: no CI, low and high are NaN).

    Resamples whose statistic is NaN are left out of the percentiles. SciPy draws the resamples as the earlier
    hand-written loop did (same generator, same index matrix), so the figures are unchanged to rounding with
    SciPy 1.17; another SciPy may resample differently, which moves the bounds slightly: that is acceptable.
    """
    v = np.asarray(values, float)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN resample
        point = float(statistic(v))
        if n_resamples < 1:
            return point, float("nan"), float("nan")
        if v.size == 1:  # every resample is the sample itself (SciPy needs two observations)
            return point, point, point
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((v,), statistic, n_resamples=n_resamples, confidence_level=1 - alpha,
                              method="percentile", rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    if np.isnan(lo) or np.isnan(hi):
        lo, hi = np.nanpercentile(res.bootstrap_distribution, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(lo), float(hi)


def wilcoxon_noninferiority(a: Sequence[float], b: Sequence[float], margin: float = 0.0) -> tuple[float, float]:
    """One-sided Wilcoxon signed-rank test of H1: a is better than b - margin (paired, per case).

    ``margin = 0`` tests superiority of a over b; ``margin > 0`` tests non-inferiority of a to b
    within ``margin``. Returns (statistic, p-value).
    """
    d = np.asarray(a, float) - np.asarray(b, float) + margin
    res = stats.wilcoxon(d, alternative="greater", zero_method="wilcox")
    return float(res.statistic), float(res.pvalue)
