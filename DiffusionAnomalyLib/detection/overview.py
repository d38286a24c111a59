"""``overview.png``: axial slices through the largest lesions (or the organ centre when there are
none): input, healthy reconstruction, and the heatmap over the input with lesion contours."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from DiffusionAnomalyLib.detection.anomaly import Lesion


def _window(array: np.ndarray, window: tuple[float, float] | None) -> tuple[float, float]:
    if window:
        level, width = window
        return level - width / 2, level + width / 2
    lo, hi = np.percentile(array[array != 0] if np.any(array) else array, [1, 99])
    return float(lo), float(hi)


def write_overview(image: sitk.Image, reconstruction: sitk.Image, heatmap: sitk.Image, labels: sitk.Image,
                   lesions: Sequence[Lesion], organ_mask: np.ndarray, path: str | os.PathLike,
                   window: tuple[float, float] | None = None, title: str = "", max_rows: int = 3) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = sitk.GetArrayViewFromImage(image)
    rec = sitk.GetArrayViewFromImage(reconstruction)
    heat = sitk.GetArrayViewFromImage(heatmap)
    lab = sitk.GetArrayViewFromImage(labels)
    chosen = sorted(lesions, key=lambda le: -le.voxels)[:max_rows]
    if chosen:
        slices = [int(round(image.TransformPhysicalPointToContinuousIndex(le.centroid_lps)[2])) for le in chosen]
        names = [f"lesion {le.id}: {le.volume_ml:.1f} ml, {le.axial_diameter_mm:.0f} mm" for le in chosen]
    else:
        zs = np.flatnonzero(organ_mask.any(axis=(1, 2))) if organ_mask.any() else [img.shape[0] // 2]
        slices, names = [int(np.median(zs))], ["no lesion found: organ centre"]
    lo, hi = _window(img, window)
    vmax = float(np.percentile(heat[organ_mask], 99.5)) if organ_mask.any() else float(heat.max() or 1.0)
    fig, axes = plt.subplots(len(slices), 3, figsize=(11, 3.8 * len(slices)), squeeze=False)
    for row, (z, name) in enumerate(zip(slices, names, strict=True)):
        z = int(np.clip(z, 0, img.shape[0] - 1))
        for col, (data, label) in enumerate(((img, "input"), (rec, "healthy reconstruction"), (img, "heatmap"))):
            ax = axes[row, col]
            ax.imshow(data[z], cmap="gray", vmin=lo, vmax=hi)
            if col == 2:
                shown = np.ma.masked_where(heat[z] <= 0, heat[z])
                ax.imshow(shown, cmap="inferno", vmin=0, vmax=max(vmax, 1e-6), alpha=0.6)
                if lab[z].any():
                    ax.contour(lab[z] > 0, levels=[0.5], colors="cyan", linewidths=0.8)
            ax.set_title(f"{label} (slice {z})" + (f"\n{name}" if col == 0 else ""), fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
