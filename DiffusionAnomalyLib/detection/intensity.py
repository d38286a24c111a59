"""Intensity normalisation to the network range [-1, 1] and back (per preset)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from DiffusionAnomalyLib.detection.presets import IntensityNormalization
from DiffusionAnomalyLib.errors import InputError


@dataclass(frozen=True)
class ChannelScaling:
    """Linear map of one channel: ``normalised = clip(2 * (x - low) / (high - low) - 1, -1, 1)``."""

    low: float
    high: float

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = 2.0 * (np.asarray(x, dtype=np.float32) - self.low) / (self.high - self.low) - 1.0
        return np.clip(y, -1.0, 1.0).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return ((np.asarray(y, dtype=np.float32) + 1.0) * 0.5 * (self.high - self.low) + self.low).astype(
            np.float32
        )


def fit_scaling(
    norm: IntensityNormalization, channel: np.ndarray, mask: np.ndarray | None, name: str = "channel"
) -> ChannelScaling:
    """Fit the scaling of one channel: the CT window, or MR percentiles inside ``mask``."""
    if norm.kind == "ct_window":
        return ChannelScaling(norm.clip_min, norm.clip_max)
    values = channel[mask > 0] if mask is not None else channel.ravel()
    if values.size == 0:
        raise InputError(f"{name}: the mask is empty, cannot fit MR intensity percentiles")
    low, high = np.percentile(values, norm.percentiles)
    if not high > low:
        raise InputError(f"{name}: constant intensity inside the mask ({low}); cannot normalise")
    return ChannelScaling(float(low), float(high))


def check_modality(image_array: np.ndarray, modality: str, name: str) -> None:
    """Refuse an image whose intensities do not fit the model's modality (CT in HU vs MRI).

    CT in Hounsfield units has air or fat well below -200; MRI intensities are (almost) never
    below -500. Override with ``--skip-modality-check`` when a scan is unusual but right.
    """
    values = np.asarray(image_array).ravel()[:: values_stride(image_array)]
    low = float(np.percentile(values, 0.1))
    if modality == "CT" and low > -200:
        raise InputError(f"{name}: does not look like CT in Hounsfield units (no voxel below {low:.0f}; air is about "
                         "-1000 HU) but the model is for CT. If it is CT, pass --skip-modality-check")
    if modality == "MR" and low < -500:
        raise InputError(f"{name}: looks like CT in Hounsfield units (values down to {low:.0f}) but the model is for "
                         "MRI. If it is MRI, pass --skip-modality-check")


def values_stride(array: np.ndarray, target: int = 2_000_000) -> int:
    """A sampling stride that keeps about ``target`` voxels (percentiles need no more)."""
    return max(1, int(np.asarray(array).size // target))
