"""A non-neural "healthy" reconstruction: a coarse, organ-restricted median filter.

This is the pipeline's stand-in until a diffusion model is loaded, and a sanity baseline for
evaluation: focal lesions up to about the filter radius are replaced by the surrounding
tissue's median, so |x - x_hat| lights them up. Voxels darker than ``keep_below`` (CT: fat,
-30 HU, e.g. the renal sinus inside the kidney mask) are treated as healthy and kept, and do not
enter the median. Known limits: lesions larger than the filter are partly missed, fat-containing
lesions are missed, lesions differing only in texture are missed, and tissue boundaries inside
the organ (cortex / medulla) give false positives. It has no learned notion of healthy anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from DiffusionAnomalyLib.detection.intensity import ChannelScaling
from DiffusionAnomalyLib.detection.presets import OrganPreset

FAT_HU = -30.0


@dataclass
class MedianBaseline:
    """Median filter of ``radius_mm``, on a grid ``coarsen`` times coarser, inside the organ mask."""

    radius_mm: float = 12.0
    coarsen: int = 3
    keep_below: float | None = None  # in network units; voxels below are kept as they are
    name: str = "median-baseline"

    @classmethod
    def for_preset(cls, preset: OrganPreset, **kwargs) -> MedianBaseline:
        """CT presets keep fat (< -30 HU) as healthy; MR presets keep nothing."""
        keep = None
        if preset.normalization.kind == "ct_window":
            n = preset.normalization
            keep = float(ChannelScaling(n.clip_min, n.clip_max).forward(np.array(FAT_HU)))
        return cls(keep_below=keep, **kwargs)

    def reconstruct(self, x: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
        """``x``: (B, C, z, y, x) normalised patches; ``mask``: (B, z, y, x). Returns x_hat, same shape."""
        out = x.copy()
        zyx_spacing = np.array(spacing_mm[::-1]) * self.coarsen
        size = [max(3, 2 * int(round(self.radius_mm / s)) + 1) for s in zyx_spacing]
        for b in range(x.shape[0]):
            for c in range(x.shape[1]):
                ch = x[b, c]
                m = mask[b] > 0
                if self.keep_below is not None:
                    m &= ch >= self.keep_below
                if not m.any():
                    continue
                filled = np.where(m, ch, np.median(ch[m])).astype(np.float32)
                coarse = ndimage.zoom(filled, 1.0 / self.coarsen, order=1)
                smooth = ndimage.median_filter(coarse, size=size)
                back = ndimage.zoom(smooth, np.array(ch.shape) / np.array(smooth.shape), order=1)
                out[b, c] = np.where(m, back, ch)
        return out
