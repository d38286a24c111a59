"""From an anomaly map to lesions (kidney thesis §4.1.1) and the lesion table.

Post-processing order, as in the thesis: threshold -> mask to the organ -> morphological opening
-> closing (6-connected unit structuring element) -> hole filling -> connected components
(26-connected) -> drop components < ``min_voxels`` -> drop lesions whose largest axial extent
(largest side of the axial bounding box, in mm, patient x/y axes) is < ``min_axial_mm``. Optionally
(not in the thesis; 0 = off) drop lesions smaller than ``min_volume_ml``, a size in millilitres that,
unlike a voxel count, means the same on every scan; ``diffusion-anomaly sweep`` calibrates it. With
``floor_contrast`` F > 0 that volume floor depends on the evidence: a lesion whose mean score reaches F x the
threshold is kept below it (a small, clear lesion is not dropped for its size; the thesis limits still apply).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from DiffusionAnomalyLib.detection.roi import voxel_centres_lps
from DiffusionAnomalyLib.errors import InputError

_STRUCT6 = ndimage.generate_binary_structure(3, 1)
_STRUCT26 = np.ones((3, 3, 3), dtype=bool)

#: Size strata by largest axial diameter (kidney thesis Table 5.2): name and upper bound in mm.
SIZE_CLASSES = (("<=2 cm", 20.0), ("2-4 cm", 40.0), ("4-7 cm", 70.0), (">7 cm", np.inf))
#: The renal-cell-carcinoma T stage of each size stratum (kidney thesis Table 5.2, T1a split into T1ai/T1aii): kidney
#: lesions only; the other organs' staging is not by these sizes.
KIDNEY_T_STAGES = ("T1ai", "T1aii", "T1b", "T2")


def anomaly_map(x: np.ndarray, x_hat: np.ndarray, channel_axis: int | None = None) -> np.ndarray:
    """Voxel-wise |x - x_hat|, summed over ``channel_axis`` for multi-channel input."""
    if x.shape != x_hat.shape:
        raise InputError(f"input shape {x.shape} and reconstruction shape {x_hat.shape} differ")
    diff = np.abs(np.asarray(x, np.float32) - np.asarray(x_hat, np.float32))
    return diff.sum(axis=channel_axis) if channel_axis is not None else diff


def organ_box(mask: np.ndarray, pad: int) -> tuple[slice, ...] | None:
    """The bounding box of ``mask``'s voxels widened by ``pad`` voxels (clipped to the array); None if empty."""
    box = ndimage.find_objects(np.asarray(mask > 0, np.uint8))
    if not box or box[0] is None:
        return None
    return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(box[0], mask.shape, strict=True))


def median_at(score: np.ndarray, points: tuple[np.ndarray, ...], size: int, chunk: int = 1 << 16) -> np.ndarray:
    """The ``size``-cube median filter of ``score`` evaluated only at ``points`` (index arrays, as from
    ``np.nonzero``): exactly ``scipy.ndimage.median_filter(score, size)[points]`` (same footprint, same rank,
    the same "reflect" border), at the cost of the points alone instead of the whole volume."""
    lo = -(size // 2)
    flat = score.ravel()
    strides = (score.shape[1] * score.shape[2], score.shape[2], 1)
    out = np.empty(len(points[0]), score.dtype)
    for start in range(0, len(out), chunk):
        # per axis, the neighbours' indices under scipy's "reflect" border (d c b a | a b c d), times the stride
        axes = []
        for p, n, stride in zip(points, score.shape, strides, strict=True):
            c = np.asarray(p[start:start + chunk], np.int64)
            axes.append([np.where(i < 0, -i - 1, np.where(i >= n, 2 * n - i - 1, i)) * stride
                         for i in (c + d for d in range(lo, lo + size))])
        gathered = np.empty((size ** 3, len(axes[0][0])), score.dtype)
        for k, (z, y) in enumerate(itertools.product(axes[0], axes[1])):
            zy = z + y
            for j, x in enumerate(axes[2]):
                gathered[k * size + j] = flat[zy + x]
        out[start:start + chunk] = np.partition(gathered, size ** 3 // 2, axis=0)[size ** 3 // 2]
    return out


def organ_map(score: np.ndarray, organ_mask: np.ndarray, median_size: int) -> np.ndarray:
    """The map median-filtered (``median_size``, 0 = none) and set to 0 outside the organ (float32).

    The median is evaluated at the organ's voxels only (:func:`median_at`): the same values as filtering the
    whole volume, at a fraction of the cost (the organ is a small part of a scan, and of its own bounding box).
    """
    out = np.zeros(score.shape, np.float32)
    inside = np.nonzero(organ_mask > 0)
    out[inside] = median_at(score, inside, int(median_size)) if median_size > 1 else score[inside]
    return out


def otsu_threshold(score: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Otsu threshold over one map's voxels inside ``mask`` (per-case mode)."""
    values = score[mask > 0] if mask is not None else score.ravel()
    if values.size == 0:
        raise InputError("cannot compute an Otsu threshold: no voxels inside the organ mask")
    if np.ptp(values) == 0:
        return float(values[0])
    counts, edges = np.histogram(values.astype(np.result_type(values.dtype, np.float32), copy=False), bins=256)
    return _otsu(counts, (edges[:-1] + edges[1:]) / 2.0)


def _otsu(counts: np.ndarray, centres: np.ndarray) -> float:
    """Otsu's threshold from a histogram: the bin centre that maximises the between-class variance
    w1 w2 (mu1 - mu2)^2 (Otsu 1979), evaluated as scikit-image's ``threshold_otsu`` does (256 bins over the
    values' range, float32 counts, empty end bins trimmed), so results match it; numpy only, so the median
    baseline runs on Slicer's own Python."""
    counts = np.asarray(counts)
    if counts[0] == 0 or counts[-1] == 0:
        keep = np.flatnonzero(counts > 0)
        counts, centres = counts[keep[0]:keep[-1] + 1], centres[keep[0]:keep[-1] + 1]
    counts = counts.astype(np.float32, copy=False)
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centres) / weight1
    mean2 = (np.cumsum((counts * centres)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centres[int(np.argmax(variance12))])


def dataset_otsu_threshold(
    scores: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], bins: int = 4096
) -> float:
    """Global Otsu over many maps (kidney thesis: one threshold for a whole test set).

    Uses a pooled histogram with ``bins`` bins so memory does not grow with the dataset.
    """
    selected = [s[m > 0] if m is not None else s.ravel() for s, m in zip(scores, masks, strict=True)]
    lo = min((float(v.min()) for v in selected if v.size), default=None)
    hi = max((float(v.max()) for v in selected if v.size), default=None)
    if lo is None:
        raise InputError("cannot compute a dataset Otsu threshold: no voxels inside any organ mask")
    if hi == lo:
        return lo
    edges = np.linspace(lo, hi, bins + 1)
    hist = sum(np.histogram(v, bins=edges)[0] for v in selected)
    centres = (edges[:-1] + edges[1:]) / 2.0
    return _otsu(hist, centres)


def axial_extent_mm(image: sitk.Image, zyx_indices: np.ndarray) -> float:
    """Largest side of the axis-aligned bounding box in the axial (patient x-y) plane, in mm.

    The box covers the voxels' footprints: the spread of voxel centres plus one voxel's extent
    along each world axis (exact for axis-aligned grids, a tight cover for oblique ones).
    """
    pts = voxel_centres_lps(image, zyx_indices)
    direction = np.abs(np.array(image.GetDirection()).reshape(3, 3))
    voxel_extent = direction @ np.array(image.GetSpacing())
    sides = pts.max(axis=0) - pts.min(axis=0) + voxel_extent
    return float(max(sides[0], sides[1]))


def size_class_name(name: str, organ: str) -> str:
    """A size stratum's name as shown for ``organ``: with its T stage for the kidney ("T1ai (<=2 cm)")."""
    if organ != "kidney":
        return name
    return f"{KIDNEY_T_STAGES[[n for n, _ in SIZE_CLASSES].index(name)]} ({name})"


def size_class(diameter_mm: float, organ: str = "") -> str:
    """Size stratum of a lesion's largest axial diameter (named with the T stage for the kidney)."""
    for name, upper in SIZE_CLASSES:
        if diameter_mm <= upper:
            return size_class_name(name, organ)
    return size_class_name(SIZE_CLASSES[-1][0], organ)


@dataclass(frozen=True)
class PostProcessing:
    """Settings of :func:`postprocess`; defaults are kidney thesis §4.1.1.

    ``grow_to`` < 1 adds hysteresis (not in the thesis): each lesion kept at the threshold is grown over the
    connected organ voxels whose score exceeds ``grow_to`` x threshold, so its extent is not cut at the
    detection threshold; regions that never reach the threshold are not added. 1 = off.
    """

    opening: bool = True
    closing: bool = True
    fill_holes: bool = True
    min_voxels: int = 20
    min_axial_mm: float = 3.0
    min_volume_ml: float = 0.0
    grow_to: float = 1.0
    floor_contrast: float = 0.0  # > 0: a lesion whose mean score is >= this x threshold escapes min_volume_ml

    def __post_init__(self) -> None:
        if not 0.0 < self.grow_to <= 1.0:
            raise InputError(f"--grow-to must be in (0, 1] (a fraction of the threshold; got {self.grow_to:g})")
        if not (self.floor_contrast == 0.0 or self.floor_contrast >= 1.0):
            raise InputError(f"--floor-contrast must be 0 (off) or >= 1 (a multiple of the threshold; got "
                             f"{self.floor_contrast:g})")

    @classmethod
    def for_preset(cls, preset, min_volume_ml: float | None = None, grow_to: float | None = None,
                   floor_contrast: float | None = None) -> PostProcessing:
        """The thesis defaults with the preset's size limits (and an optional volume limit in ml, growth and
        contrast-dependent floor)."""
        return cls(min_voxels=preset.min_component_voxels, min_axial_mm=preset.min_axial_extent_mm,
                   min_volume_ml=float(min_volume_ml or 0.0), grow_to=1.0 if grow_to is None else float(grow_to),
                   floor_contrast=float(floor_contrast or 0.0))


def postprocess(
    score: np.ndarray, threshold: float, organ_mask: np.ndarray | None, image: sitk.Image,
    settings: PostProcessing = PostProcessing(),
) -> np.ndarray:
    """Turn an anomaly map on ``image``'s grid into a labelmap of lesions (1..n, uint16).

    With an organ mask, only the organ's bounding box (widened by 2 voxels, so that closing and hole filling
    see the same empty border) is processed: lesions cannot lie outside the organ.
    """
    if organ_mask is None:
        return _postprocess_box(score, threshold, None, image, settings, (0, 0, 0))
    out = np.zeros(score.shape, np.uint16)
    box = organ_box(organ_mask, 2)
    if box is not None:
        out[box] = _postprocess_box(score[box], threshold, organ_mask[box], image, settings,
                                    tuple(s.start for s in box))
    return out


def _postprocess_box(score: np.ndarray, threshold: float, organ_mask: np.ndarray | None, image: sitk.Image,
                     settings: PostProcessing, offset: tuple[int, int, int]) -> np.ndarray:
    """:func:`postprocess` on a box of ``image``'s grid whose first voxel is at index ``offset`` (z, y, x)."""
    binary = score > threshold
    if organ_mask is not None:
        binary &= organ_mask > 0
    if settings.opening:
        binary = ndimage.binary_opening(binary, structure=_STRUCT6)
    if settings.closing:
        binary = ndimage.binary_closing(binary, structure=_STRUCT6)
    if settings.fill_holes:
        binary = ndimage.binary_fill_holes(binary)
    labels, n = ndimage.label(binary, structure=_STRUCT26)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    out = np.zeros(labels.shape, dtype=np.uint16)
    next_id = 1
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        comp = labels[sl] == lab
        if comp.sum() < settings.min_voxels:
            continue
        if comp.sum() * voxel_ml < settings.min_volume_ml and not (
                settings.floor_contrast and score[sl][comp].mean() >= settings.floor_contrast * threshold):
            continue
        idx = np.argwhere(comp) + np.array([s.start + o for s, o in zip(sl, offset, strict=True)])
        if axial_extent_mm(image, idx) < settings.min_axial_mm:
            continue
        out[sl][comp] = next_id
        next_id += 1
    if settings.grow_to < 1.0 and next_id > 1:
        out = grow_lesions(out, score, settings.grow_to * threshold, organ_mask)
    return out


def grow_lesions(lesions: np.ndarray, score: np.ndarray, low: float, organ_mask: np.ndarray | None) -> np.ndarray:
    """Hysteresis: ``lesions`` (labelmap) joined by the connected regions of ``score > low`` (inside the organ)
    that touch them, holes filled, relabelled 1..n in scan order (lesions joined by such a region merge)."""
    weak = score > low
    if organ_mask is not None:
        weak &= organ_mask > 0
    regions, _ = ndimage.label(weak, structure=_STRUCT26)
    touched = np.unique(regions[lesions > 0])
    grown = ndimage.binary_fill_holes(np.isin(regions, touched[touched > 0])) | (lesions > 0)
    out, _ = ndimage.label(grown, structure=_STRUCT26)
    return out.astype(np.uint16)


@dataclass
class Lesion:
    """One row of the lesion table. Centroids are given in both LPS (ITK/DICOM) and RAS (Slicer)."""

    id: int
    organ: str
    side: str
    voxels: int
    volume_ml: float
    axial_diameter_mm: float
    size_class: str
    centroid_lps: tuple[float, float, float]
    centroid_ras: tuple[float, float, float]
    mean_score: float
    max_score: float
    mean_uncertainty: float | None = None  # mean of the uncertainty map over the lesion (K >= 2 samples only)
    sample_fraction: float | None = None  # fraction of the K samples whose own lesions overlap this one

    def to_row(self) -> dict:
        row = asdict(self)
        for key in ("centroid_lps", "centroid_ras"):
            for axis, value in zip("xyz", row.pop(key), strict=True):
                row[f"{key}_{axis}"] = round(value, 2)
        return row


def lesion_table(
    labels: np.ndarray, score: np.ndarray, image: sitk.Image, organ: str,
    side_masks: dict[str, np.ndarray] | None = None,
) -> list[Lesion]:
    """Describe each lesion of a labelmap; ``side_masks`` ({side: mask}) attributes lesions to a side."""
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    lesions = []
    for lab, sl in enumerate(ndimage.find_objects(labels.astype(np.int64)), start=1):
        if sl is None:
            continue
        comp = labels[sl] == lab
        idx = np.argwhere(comp) + np.array([s.start for s in sl])
        centroid = voxel_centres_lps(image, idx.mean(axis=0, keepdims=True))[0]
        side = ""
        if side_masks:
            overlaps = {s: int(np.count_nonzero(m[sl][comp])) for s, m in side_masks.items()}
            side = max(overlaps, key=overlaps.get) if max(overlaps.values()) > 0 else ""
        values = score[sl][comp]
        diameter = axial_extent_mm(image, idx)
        lps = tuple(float(v) for v in centroid)
        lesions.append(Lesion(
            id=lab, organ=organ, side=side, voxels=int(comp.sum()), volume_ml=round(comp.sum() * voxel_ml, 3),
            axial_diameter_mm=round(diameter, 2), size_class=size_class(diameter, organ), centroid_lps=lps,
            centroid_ras=(-lps[0], -lps[1], lps[2]), mean_score=float(values.mean()), max_score=float(values.max()),
        ))
    return lesions


def voxel_std(samples: Iterable[np.ndarray]) -> np.ndarray:
    """Voxel-wise population standard deviation (numpy's ``std``, ddof 0) of a stream of equally shaped arrays,
    in one pass (Welford), holding two arrays instead of all of them (float32 result, float64 sums). Identical
    samples give exactly 0."""
    mean = m2 = None
    n = 0
    for a in samples:
        a = np.asarray(a, np.float64)
        n += 1
        if mean is None:
            mean, m2 = a.copy(), np.zeros_like(a)
            continue
        delta = a - mean
        mean += delta / n
        m2 += delta * (a - mean)
    if mean is None:
        raise InputError("no samples for a standard deviation")
    return np.sqrt(m2 / n).astype(np.float32)


def lesion_sample_fractions(labels: np.ndarray, sample_labels: Iterable[np.ndarray], k: int) -> dict[int, float]:
    """For each lesion of ``labels``: the fraction of the ``k`` samples whose own lesion labelmap (each sample's map
    thresholded and post-processed alone) overlaps it."""
    ids = [int(v) for v in np.unique(labels) if v]
    hits = dict.fromkeys(ids, 0)
    for sample in sample_labels:
        found = np.unique(labels[(sample > 0) & (labels > 0)])
        for lab in found:
            hits[int(lab)] += 1
    return {lab: hits[lab] / k for lab in ids}
