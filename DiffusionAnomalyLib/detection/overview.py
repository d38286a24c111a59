"""``overview.png``: axial slices through the largest lesions (or the organ centre when there are none): input,
healthy reconstruction, the heatmap over the input with lesion contours, and (with K >= 2 samples) the uncertainty.

Every panel is drawn in radiological orientation whatever the storage of the scan (LPS, RAS, oblique): each slice is
resampled from the patient axes (a plane of constant LPS z), anterior at the top and the patient's right on the
left of the picture. LPS-, RAS- and obliquely-stored copies of one scan give the same picture.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from DiffusionAnomalyLib.detection.anomaly import Lesion
from DiffusionAnomalyLib.detection.roi import voxel_centres_lps

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _window(array: np.ndarray, window: tuple[float, float] | None) -> tuple[float, float]:
    if window:
        level, width = window
        return level - width / 2, level + width / 2
    lo, hi = np.percentile(array[array != 0] if np.any(array) else array, [1, 99])
    return float(lo), float(hi)


def axial_plane(image: sitk.Image, z_lps: float) -> sitk.Image:
    """A one-slice grid in patient axes at height ``z_lps`` (mm) covering ``image``'s voxel centres in x and y, at its
    finest spacing. Its array's rows run anterior -> posterior and its columns patient right -> left (LPS x and y
    increase with the index), which is the radiological display."""
    size = np.array(image.GetSize())
    corners = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    pts = voxel_centres_lps(image, corners[:, ::-1])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    step = float(min(image.GetSpacing()))
    n = np.floor((hi[:2] - lo[:2]) / step + 1e-6).astype(int) + 1
    plane = sitk.Image([int(n[0]), int(n[1]), 1], sitk.sitkFloat32)
    plane.SetSpacing((step, step, 1.0))
    plane.SetDirection(_IDENTITY)
    plane.SetOrigin((float(lo[0]), float(lo[1]), float(z_lps)))
    return plane


def axial_slice(image: sitk.Image, plane: sitk.Image, labels: bool = False, default: float = 0.0) -> np.ndarray:
    """``image`` sampled on ``plane`` (:func:`axial_plane`): a (rows = anterior -> posterior, columns = right -> left)
    float32 array; ``labels`` samples the nearest voxel."""
    interp = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    out = sitk.Resample(image, plane, sitk.Transform(), interp, float(default), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)[0]


def body_crop(plane_values: np.ndarray, low: float, margin: int = 3) -> tuple[slice, slice]:
    """Rows and columns of an axial slice that hold the body (values above ``low``, the window's lower end), widened by
    ``margin`` pixels: the field of view then depends on the patient, not on how the scan's grid was stored."""
    rows, cols = np.nonzero(plane_values > low)
    if not len(rows):
        return slice(None), slice(None)
    return (slice(max(int(rows.min()) - margin, 0), int(rows.max()) + margin + 1),
            slice(max(int(cols.min()) - margin, 0), int(cols.max()) + margin + 1))


def overview_slices(image: sitk.Image, lesions: Sequence[Lesion], organ_mask: np.ndarray,
                    max_rows: int = 3) -> list[tuple[float, str]]:
    """The axial heights (LPS z, mm) shown and their captions: the largest lesions, else the organ's centre."""
    chosen = sorted(lesions, key=lambda le: -le.voxels)[:max_rows]
    if chosen:
        return [(float(le.centroid_lps[2]), f"lesion {le.id}: {le.volume_ml:.1f} ml, {le.axial_diameter_mm:.0f} mm")
                for le in chosen]
    idx = np.argwhere(organ_mask) if organ_mask.any() else np.array([[s // 2 for s in organ_mask.shape]])
    z = float(np.median(voxel_centres_lps(image, idx)[:, 2]))
    return [(z, "no lesion found: organ centre")]


def write_overview(image: sitk.Image, reconstruction: sitk.Image, heatmap: sitk.Image, labels: sitk.Image,
                   lesions: Sequence[Lesion], organ_mask: np.ndarray, path: str | os.PathLike,
                   window: tuple[float, float] | None = None, title: str = "", max_rows: int = 3,
                   uncertainty: sitk.Image | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = sitk.GetArrayViewFromImage(image)
    heat = sitk.GetArrayViewFromImage(heatmap)
    lo, hi = _window(img, window)
    background = float(img.min())
    vmax = float(np.percentile(heat[organ_mask], 99.5)) if organ_mask.any() else float(heat.max() or 1.0)
    umax = 1.0
    if uncertainty is not None:
        unc = sitk.GetArrayViewFromImage(uncertainty)
        umax = float(np.percentile(unc[organ_mask], 99.5)) if organ_mask.any() else float(unc.max())
    rows = overview_slices(image, lesions, organ_mask, max_rows)
    columns = ["input", "healthy reconstruction", "heatmap"] + (["uncertainty (SD)"] if uncertainty is not None else [])
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(3.7 * len(columns), 3.8 * len(rows)), squeeze=False)
    for row, (z, name) in enumerate(rows):
        plane = axial_plane(image, z)
        base = axial_slice(image, plane, default=background)
        crop = body_crop(base, lo)
        base = base[crop]
        shown = {"input": base,
                 "healthy reconstruction": axial_slice(reconstruction, plane, default=background)[crop]}
        for col, label in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(shown.get(label, base), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            if label == "heatmap":
                h = axial_slice(heatmap, plane)[crop]
                ax.imshow(np.ma.masked_where(h <= 0, h), cmap="inferno", vmin=0, vmax=max(vmax, 1e-6), alpha=0.6,
                          interpolation="nearest")
                lab = axial_slice(labels, plane, labels=True)[crop]
                if lab.any():
                    ax.contour(lab > 0, levels=[0.5], colors="cyan", linewidths=0.8)
            elif label.startswith("uncertainty"):
                u = axial_slice(uncertainty, plane)[crop]  # opacity follows the value: no box where it is low
                ax.imshow(u, cmap="viridis", vmin=0, vmax=max(umax, 1e-6), interpolation="nearest",
                          alpha=0.85 * np.clip(u / max(umax, 1e-6), 0.0, 1.0))
            ax.set_title(f"{label} (z = {z:.1f} mm)" + (f"\n{name}" if col == 0 else ""), fontsize=8)
            ax.text(0.01, 0.5, "R", transform=ax.transAxes, color="yellow", fontsize=8, va="center")
            ax.text(0.99, 0.5, "L", transform=ax.transAxes, color="yellow", fontsize=8, va="center", ha="right")
            ax.text(0.5, 0.99, "A", transform=ax.transAxes, color="yellow", fontsize=8, va="top", ha="center")
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
