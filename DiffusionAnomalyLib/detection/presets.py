"""Organ presets: everything organ-specific that the pipeline needs, with defaults from the source works
(docs/method.md).

Axes follow ITK/DICOM patient coordinates (LPS): x runs right->left, y anterior->posterior,
z inferior->superior. Sizes are given as (x, y, z); numpy arrays of the same grids are (z, y, x).
A model bundle may override any field with :meth:`OrganPreset.with_overrides`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from DiffusionAnomalyLib.errors import InputError


@dataclass(frozen=True)
class IntensityNormalization:
    """How raw intensities map to the network range [-1, 1].

    ``kind="ct_window"``: clip to [clip_min, clip_max] (HU) and scale linearly to [-1, 1].
    ``kind="mr_percentile"``: per channel, the ``percentiles`` (low, high) of the voxels inside the
    organ mask map to -1 and 1 (values beyond are clipped).
    """

    kind: str = "ct_window"
    clip_min: float = -200.0
    clip_max: float = 400.0
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if self.kind not in ("ct_window", "mr_percentile"):
            raise InputError(f"unknown intensity normalisation kind {self.kind!r}")
        if self.kind == "ct_window" and not self.clip_min < self.clip_max:
            raise InputError(f"CT window needs clip_min < clip_max, got {self.clip_min}, {self.clip_max}")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")


@dataclass(frozen=True)
class OrganPreset:
    """Organ-specific settings.

    ``structures`` maps a side ("left", "right", or "" for unpaired organs) to the
    TotalSegmentator class name of that structure; one ROI patch is taken per structure.
    ``roi_size_mm`` and ``spacing_mm`` are (x, y, z); kidney defaults follow the kidney thesis, §4.1.1
    (1 mm isotropic, 96 x 96 x 128 mm with 128 mm along the body axis).
    """

    name: str
    modality: str  # "CT" or "MR"
    channels: tuple[str, ...]
    structures: dict[str, str]
    totalseg_task: str
    spacing_mm: tuple[float, float, float]
    roi_size_mm: tuple[float, float, float]
    normalization: IntensityNormalization
    background: float  # value outside the body in input units (air for CT, 0 for skull-stripped MRI)
    display_window: tuple[float, float] | None  # (level, width) in input units; None = auto
    median_filter_voxels: int = 0  # anomaly-map median filter size (0 = off; the liver paper uses one)
    min_component_voxels: int = 20  # kidney thesis §4.1.1
    min_axial_extent_mm: float = 3.0  # kidney thesis §4.1.1
    #: Fraction of the ROI size that the image must span along each axis (see roi.py).
    min_image_extent_fraction: float = 0.5
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def roi_size_voxels(self) -> tuple[int, int, int]:
        """Patch size in voxels (x, y, z) at the preset spacing."""
        return tuple(int(round(s / d)) for s, d in zip(self.roi_size_mm, self.spacing_mm, strict=True))

    @property
    def paired(self) -> bool:
        return set(self.structures) == {"left", "right"}

    def with_overrides(self, overrides: dict[str, Any]) -> OrganPreset:
        """Return a copy with fields replaced (as a bundle's ``model.json`` does); unknown keys fail."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InputError(f"unknown preset field(s) {unknown}; known: {sorted(names)}")
        values = dict(overrides)
        if isinstance(values.get("normalization"), dict):
            values["normalization"] = IntensityNormalization(**{  # JSON lists back to the tuples the code uses
                k: tuple(v) if isinstance(v, list) else v for k, v in values["normalization"].items()})
        for key in ("spacing_mm", "roi_size_mm", "channels", "display_window"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return dataclasses.replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


KIDNEY = OrganPreset(
    name="kidney",
    modality="CT",
    channels=("ct",),
    structures={"right": "kidney_right", "left": "kidney_left"},
    totalseg_task="total",
    spacing_mm=(1.0, 1.0, 1.0),
    roi_size_mm=(96.0, 96.0, 128.0),
    normalization=IntensityNormalization("ct_window", -200.0, 400.0),
    background=-1024.0,
    display_window=(40.0, 400.0),
    description="Kidney lesions in contrast-enhanced abdominal CT (Dusseljee's kidney thesis and paper): "
                "one ROI per kidney.",
)

LIVER = OrganPreset(
    name="liver",
    modality="CT",
    channels=("ct",),
    structures={"": "liver"},
    totalseg_task="total",
    spacing_mm=(2.0, 2.0, 2.0),
    roi_size_mm=(256.0, 192.0, 256.0),
    normalization=IntensityNormalization("ct_window", -200.0, 400.0),
    background=-1024.0,
    display_window=(60.0, 200.0),
    median_filter_voxels=3,
    description="Liver lesions in portal-venous CT (Shi et al., diffusion-prior inpainting, 'GDPI'): "
                "one ROI over the liver.",
)

BRAIN = OrganPreset(
    name="brain",
    modality="MR",
    channels=("t1n", "t1c", "t2w", "t2f"),
    structures={"": "brain"},
    totalseg_task="total_mr",
    spacing_mm=(2.0, 2.0, 2.0),
    roi_size_mm=(192.0, 192.0, 192.0),
    normalization=IntensityNormalization("mr_percentile", percentiles=(0.5, 99.5)),
    background=0.0,
    display_window=None,
    description="Brain tumours in skull-stripped, co-registered multi-sequence MRI (Loesch's PhD thesis).",
)

PRESETS: dict[str, OrganPreset] = {p.name: p for p in (KIDNEY, LIVER, BRAIN)}


def get_preset(name: str) -> OrganPreset:
    """Look up a preset by organ name (case-insensitive)."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise InputError(f"unknown organ {name!r}; choose one of {sorted(PRESETS)}") from None
