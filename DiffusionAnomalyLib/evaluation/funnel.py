"""The loss funnel: for each reference lesion, the first step of the method where it is lost.

Per reference lesion, in the order the method works:

1. ``autoencoder``: the map is taken against the autoencoder's own reconstruction D(E(x)) (``--reference
   autoencoder``) and D(E(x)) keeps less than half of the lesion's contrast against the tissue around it, so the
   map cannot show it whatever the denoiser does. With the map against the input this step loses nothing (a
   lesion the autoencoder cannot represent is missing from the healthy reconstruction too) and is not counted.
2. ``left in``: the healthy reconstruction keeps at least half of the lesion's contrast (the denoiser, or the
   baseline's median filter, left it in).
3. ``below threshold``: no voxel of the lesion inside the organ has a map value above the threshold.
4. ``post-processing``: some do, but no predicted lesion overlaps it after the opening, the size floors
   (minimum voxels, axial extent, volume) and hole filling.
5. ``IoU < 0.2``: a predicted lesion overlaps it, but none matches it at IoU >= 0.2 (too large, too small, or
   matched to another lesion).
6. ``found``.

Contrast here is the median inside the lesion minus the median of the organ tissue within 4 mm around it (as
:func:`~.metrics.lesion_contrast`, in the channel where the lesion's CNR is largest); "kept" is that contrast in
a reconstruction divided by the same in the image. A missed lesion goes to the first step it fails; steps whose
images a cached map lacks (maps from before this funnel) are skipped and said so (``kept`` is then None).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from DiffusionAnomalyLib.detection.anomaly import SIZE_CLASSES, size_class, size_class_name
from DiffusionAnomalyLib.evaluation.metrics import CONTRAST_CLASSES, Detection, contrast_class, lesion_rings

#: The funnel's steps, in order (the module docstring defines each).
FUNNEL_STAGES = ("autoencoder", "left in", "below threshold", "post-processing", "IoU < 0.2", "found")
#: A reconstruction "keeps" a lesion when it holds at least this share of the lesion's contrast in the image.
KEPT_SHARE = 0.5
#: The funnel's row of small, plainly visible lesions (up to 2 cm, CNR above 2).
SMALL_VISIBLE = "up to 2 cm, CNR > 2"
#: Voxels around the organ and the lesions that ``evaluate`` keeps of the reconstructions for the funnel.
FUNNEL_PAD = 6


def kept_contrast(image: Sequence[np.ndarray], other: Sequence[np.ndarray] | None, truth: np.ndarray,
                  organ: np.ndarray, spacing_zyx: Sequence[float], channel: dict[int, int],
                  ring_mm: float = 4.0) -> dict[int, float | None]:
    """Per lesion id of ``truth``: (median inside - median of the ring) in ``other`` over the same in ``image``, in
    the lesion's ``channel`` (None where ``other`` is None, the ring is empty or the image shows no contrast)."""
    out: dict[int, float | None] = {}
    for lab, box, inside, ring in lesion_rings(truth, organ, spacing_zyx, ring_mm):
        if other is None or ring is None:
            out[lab] = None
            continue
        c = channel.get(lab, 0)
        a, b = image[c][box], other[c][box]
        c_image = float(np.median(a[inside]) - np.median(a[ring]))
        c_other = float(np.nanmedian(b[inside]) - np.nanmedian(b[ring]))
        out[lab] = None if abs(c_image) < 1e-6 or not np.isfinite(c_other) else c_other / c_image
    return out


def lesion_stages(truth: np.ndarray, organ: np.ndarray, heat: np.ndarray, threshold: float, pred: np.ndarray,
                  det: Detection, ae_kept: dict[int, float | None], rec_kept: dict[int, float | None],
                  reference: str) -> dict[int, str]:
    """The :data:`FUNNEL_STAGES` entry of every lesion id of ``truth``: ``found`` when ``det`` matched it, else the
    first step it fails (``reference``: what the map was taken against, "input" or "autoencoder")."""
    found = {r for r, _, _ in det.matches}
    out = {}
    for lab, sl in enumerate(ndimage.find_objects(truth.astype(np.int64)), start=1):
        if sl is None:
            continue
        inside = truth[sl] == lab
        ae, rec = ae_kept.get(lab), rec_kept.get(lab)
        if lab in found:
            out[lab] = "found"
        elif reference == "autoencoder" and ae is not None and ae < KEPT_SHARE:
            out[lab] = "autoencoder"
        elif rec is not None and rec >= KEPT_SHARE:
            out[lab] = "left in"
        elif not np.any(heat[sl][inside & organ[sl]] > threshold):
            out[lab] = "below threshold"
        elif not np.any(pred[sl][inside]):
            out[lab] = "post-processing"
        else:
            out[lab] = "IoU < 0.2"
    return out


def funnel_summary(rows: Sequence[dict]) -> dict:
    """{"by_size": {size class: {stage: n}}, "by_contrast": {...}, "small_visible": {...}} from the reference-lesion
    rows (``diameter_mm``, ``cnr`` and ``lost_at`` of each); ``small_visible`` is the lesions up to 2 cm with a
    CNR above 2 (what a reader would call small and visible)."""
    def table(key) -> dict:
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            k = key(r)
            if k is None or not r.get("lost_at"):
                continue
            out.setdefault(k, dict.fromkeys(FUNNEL_STAGES, 0))[r["lost_at"]] += 1
        return out

    by_size = table(lambda r: None if r.get("diameter_mm") is None else size_class(r["diameter_mm"]))
    small = table(lambda r: SMALL_VISIBLE if r.get("diameter_mm") is not None and r["diameter_mm"] <= SIZE_CLASSES[0][1]
                  and r.get("cnr") is not None and r["cnr"] > 2.0 else None)
    order = [name for name, _ in SIZE_CLASSES]
    c_order = [name for name, _ in CONTRAST_CLASSES] + ["CNR n/a"]
    by_contrast = table(lambda r: contrast_class(float("nan") if r.get("cnr") is None else r["cnr"]))
    return {"by_size": {k: by_size[k] for k in order if k in by_size},
            "by_contrast": {k: by_contrast[k] for k in c_order if k in by_contrast},
            "small_visible": small.get(SMALL_VISIBLE, dict.fromkeys(FUNNEL_STAGES, 0)),
            "without_reconstruction": sum(1 for r in rows if r.get("lost_at") and r.get("rec_kept") is None)}


def funnel_markdown(funnel: dict, baseline: dict | None = None, model_name: str = "model",
                    organ: str = "") -> list[str]:
    """The summary.md section: one row per size class (and the small, visible lesions), the model's and the
    baseline's counts per step."""
    lines = ["", "## Where lesions are lost (the loss funnel; docs/evaluation.md)", "",
             "| size class | method | lesions | " + " | ".join(FUNNEL_STAGES) + " |",
             "|---|---|---|" + "---|" * len(FUNNEL_STAGES)]
    groups = list(funnel["by_size"]) + [SMALL_VISIBLE]
    for g in groups:
        for name, f in ((model_name, funnel), ("median baseline", baseline)):
            if f is None:
                continue
            row = f["small_visible"] if g == SMALL_VISIBLE else f["by_size"].get(g)
            if row is None:
                continue
            cells = [("n/a" if s == "autoencoder" and name == "median baseline" else str(row[s]))
                     for s in FUNNEL_STAGES]
            shown = g if g == SMALL_VISIBLE else size_class_name(g, organ)
            lines.append(f"| {shown} | {name} | {sum(row.values())} | " + " | ".join(cells) + " |")
    for name, f in ((model_name, funnel), ("median baseline", baseline)):
        if f is not None and f.get("without_reconstruction"):
            lines += ["", f"{name}: {f['without_reconstruction']} lesion(s) lie in cached maps made without "
                          "reconstructions (before the funnel): they skip the first two steps."]
    return lines


def crop_to(image: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """``image``'s values on ``reference``'s grid (same spacing and direction, voxel-aligned origins; NaN where
    ``image`` does not reach)."""
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor,
                                                float("nan"), sitk.sitkFloat32))
