"""Run settings that do not need the networks: the defaults a run falls back to when neither the user nor the
bundle's ``recommended`` block gives a value, and the anomaly-map options.

Torch-free, so the Slicer panel can show a bundle's effective settings before the worker's packages are
installed. ``job.py`` (command line and worker) and ``panel.py`` (Slicer) both resolve through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InputError
from .presets import OrganPreset

ORGANS = ("kidney", "liver", "brain")
SAMPLERS = ("ddpm", "ddim", "inpaint")
DEVICES = ("auto", "cuda", "cpu")
REFERENCES = ("input", "autoencoder")
#: Sampler settings used when the bundle recommends none.
SAMPLER_DEFAULTS: dict[str, Any] = {"sampler": "ddpm", "noise_level": 250, "steps": 50, "guidance": 0.0}
MAX_NOISE_LEVEL = 999


@dataclass(frozen=True)
class MapOptions:
    """How the anomaly map is made: its reference (input or D(E(x))), the number of averaged
    reconstructions, and the median filter (voxels) applied to it."""

    reference: str = "input"
    samples: int = 1
    median_filter: int = 0

    def apply_to(self, preset: OrganPreset) -> OrganPreset:
        """``preset`` with this median filter."""
        return preset.with_overrides({"median_filter_voxels": self.median_filter})


def map_options(args: Any, recommended: dict, preset: OrganPreset) -> MapOptions:
    """``reference``, ``samples`` and ``median_filter`` from ``args`` (attributes; None = not given), each falling
    back to the bundle's recommendation (then input, 1 and the preset's median filter)."""
    def pick(name: str, default):
        value = getattr(args, name, None)
        return value if value is not None else recommended.get(name, default)

    opts = MapOptions(pick("reference", "input"), int(pick("samples", 1)),
                      int(pick("median_filter", preset.median_filter_voxels)))
    if opts.samples < 1:
        raise InputError(f"--samples must be >= 1 (got {opts.samples})")
    if opts.median_filter < 0:
        raise InputError(f"--median-filter must be >= 0 voxels (got {opts.median_filter})")
    return opts


def recommended_sampler(recommended: dict) -> dict[str, Any]:
    """Sampler, L, steps and s a bundle's ``recommended`` block asks for, defaults filled in."""
    return {"sampler": recommended.get("sampler", SAMPLER_DEFAULTS["sampler"]),
            "noise_level": int(recommended.get("noise_level", SAMPLER_DEFAULTS["noise_level"])),
            "steps": int(recommended.get("steps", SAMPLER_DEFAULTS["steps"])),
            "guidance": float(recommended.get("guidance", SAMPLER_DEFAULTS["guidance"]))}
