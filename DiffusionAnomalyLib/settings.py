"""Run settings that do not need the networks: the defaults a run falls back to when neither the user nor the
bundle's ``recommended`` block gives a value, and the anomaly-map options.

Torch-free, so the Slicer panel can show a bundle's effective settings before the worker's packages are
installed. ``job.py`` (command line and worker) and ``panel.py`` (Slicer) both resolve through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from DiffusionAnomalyLib.detection.presets import OrganPreset
from DiffusionAnomalyLib.errors import InputError

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


def recommended_sampler(recommended: dict) -> dict[str, Any]:
    """Sampler, L, steps and s a bundle's ``recommended`` block asks for, defaults filled in."""
    return {"sampler": recommended.get("sampler", SAMPLER_DEFAULTS["sampler"]),
            "noise_level": int(recommended.get("noise_level", SAMPLER_DEFAULTS["noise_level"])),
            "steps": int(recommended.get("steps", SAMPLER_DEFAULTS["steps"])),
            "guidance": float(recommended.get("guidance", SAMPLER_DEFAULTS["guidance"]))}


#: Overrides a user can leave to the bundle: None (or absent) means "the bundle's recommendation".
OVERRIDABLE = ("sampler", "noise_level", "steps", "guidance", "reference", "samples", "median_filter", "threshold",
               "min_lesion_ml", "grow_to")


@dataclass(frozen=True)
class RunSettings:
    """Every setting of one detection run with a bundle, resolved: what the sampler, the map and the
    post-processing use, and what ``run.json`` records so the run can be replayed.

    ``threshold`` None means Otsu over the case. Build it with :meth:`resolve` (bundle recommendations plus
    explicit overrides, once) or :meth:`from_dict` (a replay); both validate.
    """

    sampler: str = SAMPLER_DEFAULTS["sampler"]
    noise_level: int = SAMPLER_DEFAULTS["noise_level"]
    steps: int = SAMPLER_DEFAULTS["steps"]
    guidance: float = SAMPLER_DEFAULTS["guidance"]
    seed: int = 0
    resample_jumps: int = 1
    reference: str = "input"
    samples: int = 1
    median_filter: int = 0
    threshold: float | None = None
    min_lesion_ml: float = 0.0
    grow_to: float = 1.0
    device: str = "auto"
    trajectory_every: int = 0
    deterministic: bool = False

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise InputError("; ".join(problems))

    def problems(self) -> list[str]:
        """What is wrong with these settings (empty when they can run)."""
        import math

        out = []
        if self.sampler not in SAMPLERS:
            out.append(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if not 1 <= self.noise_level <= MAX_NOISE_LEVEL:
            out.append(f"noise level L must be between 1 and {MAX_NOISE_LEVEL} (got {self.noise_level})")
        if not 1 <= self.steps <= max(self.noise_level, 1):
            out.append(f"steps must be between 1 and L = {self.noise_level} (got {self.steps})")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            out.append(f"guidance strength must be a finite number >= 0 (got {self.guidance})")
        if not 0 <= self.seed < 2**63:
            out.append(f"seed must be in 0..2^63-1 (got {self.seed})")
        if self.resample_jumps < 1:
            out.append(f"resample jumps must be >= 1 (got {self.resample_jumps})")
        if self.reference not in REFERENCES:
            out.append(f"unknown map reference {self.reference!r}; choose one of {', '.join(REFERENCES)}")
        if self.samples < 1:
            out.append(f"samples must be >= 1 (got {self.samples})")
        if self.median_filter < 0:
            out.append(f"the median filter must be >= 0 voxels (got {self.median_filter})")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold >= 0):
            # >= 0: a bundle calibrated on maps of zeros records 0; the command line refuses 0 from users
            out.append(f"a fixed threshold must be a finite number >= 0 (got {self.threshold})")
        if not (math.isfinite(self.min_lesion_ml) and self.min_lesion_ml >= 0):
            out.append(f"the minimum lesion volume must be >= 0 ml (got {self.min_lesion_ml})")
        if not 0.0 < self.grow_to <= 1.0:
            out.append(f"grow-to must be in (0, 1] (got {self.grow_to})")
        if self.trajectory_every < 0:
            out.append(f"trajectory-every must be >= 0 (got {self.trajectory_every})")
        return out

    @classmethod
    def resolve(cls, recommended: dict | None, preset: OrganPreset, **overrides: Any) -> RunSettings:
        """The bundle's ``recommended`` block with explicit ``overrides`` on top, resolved once.

        An override of None means "not given" (the bundle's value, then the default); 0 stays 0. ``threshold``
        may be a number, ``"otsu"`` (Otsu per case) or ``"bundle"``/None (the bundle's calibrated threshold, else
        Otsu). Other keyword arguments (seed, device, ...) are set as given.
        """
        rec = dict(recommended or {})
        unknown = sorted(set(overrides) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"unknown run setting(s) {unknown}")
        given = {k: v for k, v in overrides.items() if v is not None}
        threshold = given.pop("threshold", "bundle")
        if threshold == "bundle":
            threshold = rec.get("threshold")
        elif threshold == "otsu":
            threshold = None
        base = {**recommended_sampler(rec), "reference": rec.get("reference", "input"),
                "samples": int(rec.get("samples", 1)),
                "median_filter": int(rec.get("median_filter", preset.median_filter_voxels)),
                "min_lesion_ml": float(rec.get("min_lesion_ml") or 0.0),
                "grow_to": float(rec.get("grow_to") or 1.0)}
        values = {**base, **given, "threshold": None if threshold is None else float(threshold)}
        return cls(**{k: _cast(k, v) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def sampler_settings(self):
        """The sampler's part (:class:`~DiffusionAnomalyLib.models.diffusion.sampler.SamplerSettings`; imports torch)."""
        from DiffusionAnomalyLib.models.diffusion.sampler import SamplerSettings

        return SamplerSettings(method=self.sampler, noise_level=self.noise_level, steps=self.steps,
                               guidance=self.guidance, seed=self.seed, resample_jumps=self.resample_jumps,
                               trajectory_every=self.trajectory_every)

    def map_options(self) -> MapOptions:
        return MapOptions(self.reference, self.samples, self.median_filter)

    def postprocessing(self, preset: OrganPreset):
        """The post-processing (:class:`~DiffusionAnomalyLib.detection.anomaly.PostProcessing`; imports scikit-image)."""
        from DiffusionAnomalyLib.detection.anomaly import PostProcessing

        return PostProcessing.for_preset(preset, self.min_lesion_ml, self.grow_to)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> RunSettings:
        """Settings from :meth:`to_dict` output (e.g. ``run.json``'s ``settings``); unknown keys are refused."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: run settings must be a JSON object")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"{source}: unknown run setting(s) {unknown}")
        try:
            return cls(**{k: _cast(k, v) for k, v in data.items()})
        except (TypeError, ValueError) as exc:
            raise InputError(f"{source}: {exc}") from None


def load_settings_file(path) -> RunSettings:
    """Run settings from a JSON file: a ``run.json`` of an earlier run (its ``parameters.settings``) or a
    settings object as :meth:`RunSettings.to_dict` writes it."""
    import json
    from pathlib import Path

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{p}: settings file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{p}: not a readable JSON settings file ({exc})") from None
    if isinstance(data, dict) and "parameters" in data:  # a run.json
        data = (data.get("parameters") or {}).get("settings")
        if data is None:
            raise InputError(f"{p}: this run.json records no run settings (written by an older version, or a "
                             "baseline run)")
    return RunSettings.from_dict(data, str(p))


_CASTS = {"noise_level": int, "steps": int, "seed": int, "resample_jumps": int, "samples": int,
          "median_filter": int, "trajectory_every": int, "guidance": float, "min_lesion_ml": float,
          "grow_to": float, "deterministic": bool}


def _cast(name: str, value: Any) -> Any:
    cast = _CASTS.get(name)
    if cast is None or value is None:
        return value
    if cast is int and isinstance(value, float) and not value.is_integer():
        raise InputError(f"{name} must be a whole number (got {value})")
    return cast(value)
