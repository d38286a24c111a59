"""A non-neural "healthy" reconstruction: a coarse, organ-restricted median filter.

This is the pipeline's stand-in until a diffusion model is loaded, and a sanity baseline for
evaluation: small focal lesions (up to about the filter radius) are replaced by the surrounding
tissue's median, so |x - x_hat| lights them up; larger lesions and lesions that differ only in
texture are partly missed, and tissue boundaries inside the organ (cortex / medulla) produce
false positives. It has no learned notion of healthy anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class MedianBaseline:
    """Median filter of ``radius_mm`` computed on a grid ``coarsen`` times coarser, inside the mask."""

    radius_mm: float = 12.0
    coarsen: int = 3
    name: str = "median-baseline"

    def reconstruct(self, x: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
        """``x``: (B, C, z, y, x) normalised patches; ``mask``: (B, z, y, x). Returns x_hat, same shape."""
        out = x.copy()
        zyx_spacing = np.array(spacing_mm[::-1]) * self.coarsen
        size = [max(3, 2 * int(round(self.radius_mm / s)) + 1) for s in zyx_spacing]
        for b in range(x.shape[0]):
            m = mask[b] > 0
            if not m.any():
                continue
            for c in range(x.shape[1]):
                ch = x[b, c]
                filled = np.where(m, ch, np.median(ch[m])).astype(np.float32)
                coarse = ndimage.zoom(filled, 1.0 / self.coarsen, order=1)
                smooth = ndimage.median_filter(coarse, size=size)
                back = ndimage.zoom(smooth, np.array(ch.shape) / np.array(smooth.shape), order=1)
                out[b, c] = np.where(m, back, ch)
        return out
