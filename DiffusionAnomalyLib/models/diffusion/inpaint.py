"""RePaint-style inpainting in latent space and the adaptive liver mask (liver paper §II.B, §II.C)."""

from __future__ import annotations

import numpy as np


def adaptive_liver_mask(hu: np.ndarray, liver_mask: np.ndarray, offset_hu: float = 20.0) -> np.ndarray:
    """Liver voxels darker than (median liver HU - ``offset_hu``): the region to inpaint (liver paper §II.B).

    Tumours are usually hypodense, so voxels well below the liver's own median are the suspects;
    the threshold adapts to each case's enhancement.
    """
    liver = liver_mask > 0
    if not liver.any():
        return np.zeros(hu.shape, bool)
    threshold = float(np.median(hu[liver])) - offset_hu
    return liver & (hu < threshold)
