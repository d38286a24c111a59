"""Run settings that do not need the networks: the defaults a run falls back to when neither the user nor the
bundle's ``recommended`` block gives a value, and the anomaly-map options.

Torch-free, so the Slicer panel can show a bundle's effective settings before the worker's packages are
installed. ``job.py`` (command line and worker) and ``panel.py`` (Slicer) both resolve through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from DiffusionAnomalyLib.detection.presets import OrganPreset
from DiffusionAnomalyLib.errors import InputError

ORGANS = ("kidney", "liver", "brain")
SAMPLERS = ("ddpm", "ddim", "inpaint")
DEVICES = ("auto", "cuda", "cpu")
REFERENCES = ("input", "autoencoder")
#: Network precision: auto = bfloat16 autocast where the hardware runs it natively (docs/performance.md), else
#: float32; fp32 turns the fast path off; bf16 forces it (CPU and CUDA).
PRECISIONS = ("auto", "fp32", "bf16")
#: Sampler settings used when the bundle recommends none.
SAMPLER_DEFAULTS: dict[str, Any] = {"sampler": "ddpm", "noise_level": 250, "steps": 50, "guidance": 0.0}
MAX_NOISE_LEVEL = 999
#: Upper bounds of the settings that multiply the work (one typo must not mean hours of CPU): averaged
#: reconstructions, RePaint resampling jumps, the median filter's size in voxels.
MAX_SAMPLES = 64
#: The environment variable that raises MAX_SAMPLES, for the GPU check's deliberately oversized run only.
MAX_SAMPLES_ENV = "DA_MAX_SAMPLES"
MAX_RESAMPLE_JUMPS = 20
MAX_MEDIAN_FILTER = 15
#: Below this validation AUC (at the level nearest the sampler's start) a classifier barely tells healthy from
#: unhealthy, so its gradients steer the sample toward noise rather than health.
WEAK_CLASSIFIER_AUC = 0.7
#: Frames of a trajectory the Slicer panel keeps ("Keep the denoising trajectory"): about this many.
PANEL_TRAJECTORY_FRAMES = 10


def max_samples() -> int:
    """:data:`MAX_SAMPLES`, or ``$DA_MAX_SAMPLES`` when set to a larger whole number (``bench --gpu-check``
    provokes an out-of-memory run with 200,000 samples)."""
    import os

    text = os.environ.get(MAX_SAMPLES_ENV, "")
    return max(MAX_SAMPLES, int(text)) if text.isdigit() and len(text) < 10 else MAX_SAMPLES


def trajectory_every_for(steps: int, frames: int = PANEL_TRAJECTORY_FRAMES) -> int:
    """The K (keep every K-th sampler step) that gives about ``frames`` frames of ``steps`` steps."""
    return max(1, int(steps) // max(1, int(frames)))


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


#: The commands that take an option: ``run`` only, or every command that makes anomaly maps.
RUN = ("run",)
MAPS = ("run", "evaluate", "sweep", "batch")


@dataclass(frozen=True)
class Option:
    """How a run setting is offered to users, written once beside the field.

    Command line: ``--<field-name>`` on ``commands``, its text parsed as ``kind`` (``app/cli.py``'s
    ``OPTION_KINDS``); an option left out means "the bundle's recommendation, else the default".
    Slicer panel: the parameter-node member ``panel`` (bound to a widget by ``SlicerParameterName`` in the
    ``.ui``), limited to ``panel_range`` or the kind's choices; ``bundle_value`` is the member value that means
    "the bundle's recommendation" (None: the panel always sends its value).
    """

    help: str
    kind: str
    commands: tuple[str, ...] = RUN
    metavar: str | None = None
    panel: str | None = None
    panel_range: tuple[float, float] | None = None
    bundle_value: Any = None


def _setting(default: Any, option: Option) -> Any:
    return field(default=default, metadata={"option": option})


@dataclass(frozen=True)
class RunSettings:
    """Every setting of one detection run with a bundle, resolved: what the sampler, the map and the
    post-processing use, and what ``run.json`` records so the run can be replayed.

    ``threshold`` None means Otsu over the case. Build it with :meth:`resolve` (bundle recommendations plus
    explicit overrides, once) or :meth:`from_dict` (a replay); both validate.
    """

    sampler: str = _setting(SAMPLER_DEFAULTS["sampler"], Option(
        "sampler (default: the bundle's recommendation)", "sampler", MAPS, panel="sampler"))
    noise_level: int = _setting(SAMPLER_DEFAULTS["noise_level"], Option(
        "noise level L the reconstruction starts from, in [1, T-1] (default: the bundle's)", "positive_int", MAPS,
        "L", panel="noiseLevel", panel_range=(1, MAX_NOISE_LEVEL)))
    steps: int = _setting(SAMPLER_DEFAULTS["steps"], Option(
        "denoising steps (default: the bundle's)", "positive_int", MAPS, "N", panel="steps",
        panel_range=(1, MAX_NOISE_LEVEL)))
    guidance: float = _setting(SAMPLER_DEFAULTS["guidance"], Option(
        "classifier-guidance strength s >= 0 (default: the bundle's)", "non_negative", MAPS, "S",
        panel="guidance", panel_range=(0, 3000)))
    seed: int = _setting(0, Option("random seed, 0..2^63-1 (default 0)", "seed", MAPS, panel="seed",
                                   panel_range=(0, 2**31 - 1)))
    resample_jumps: int = _setting(1, Option("inpaint: RePaint resampling jumps r (default 1)", "positive_int"))
    reference: str = _setting("input", Option(
        "anomaly map against the input or against the autoencoder's D(E(x)) (default: the bundle's "
        "recommendation, else input)", "reference", MAPS, panel="reference", bundle_value="bundle"))
    samples: int = _setting(1, Option(
        "average K stochastic reconstructions (ddpm, inpaint; K x the time; default: the bundle's, else 1)",
        "positive_int", MAPS, "K", panel="samples", panel_range=(0, 16), bundle_value=0))
    median_filter: int = _setting(0, Option(
        "median filter of the anomaly map, N voxels (0 = off; default: the bundle's, else the organ preset's)",
        "non_negative_int", MAPS, "N", panel="medianFilter", panel_range=(-1, 15), bundle_value=-1))
    threshold: float | None = _setting(None, Option(
        "a fixed threshold, or 'otsu' for Otsu over each case (default: the bundle's calibrated threshold, else "
        "Otsu)", "threshold", ("run", "batch")))  # the panel's threshold mode and value: see panel.py
    min_lesion_ml: float = _setting(0.0, Option(
        "drop lesions smaller than this many millilitres (default: the bundle's calibrated value, else 0 = only "
        "the thesis' 20-voxel and 3 mm limits)", "non_negative", MAPS, "ML"))
    grow_to: float = _setting(1.0, Option(
        "grow each lesion kept at the threshold over the connected organ voxels above F x threshold (hysteresis; "
        "1 = off; default: the bundle's calibrated value, else 1)", "grow_to", MAPS, "F"))
    device: str = _setting("auto", Option(
        "auto (CUDA > MPS > CPU; the default), cpu, cuda, cuda:1, mps (under torchrun: each rank its own GPU)",
        "device", MAPS, panel="device"))
    trajectory_every: int = _setting(0, Option(
        "also write the decoded x_0 prediction every K sampler steps, composed onto the input's grid, as one "
        "volume sequence (trajectory.seq.nrrd; 3D Slicer opens it as a sequence)", "non_negative_int",
        ("run", "batch"), "K"))  # the panel's "Keep the denoising trajectory": see panel.py
    trajectory_heatmap: bool = _setting(False, Option(
        "with --trajectory-every: also each kept step's anomaly map (trajectory_heatmap.seq.nrrd)", "flag",
        ("run", "batch")))
    deterministic: bool = _setting(False, Option(
        "deterministic algorithms (slower on GPU); the seed already fixes all noise", "flag"))
    precision: str = _setting("auto", Option(
        "network precision: auto (bfloat16 autocast on CPUs with native bfloat16 and on CUDA, else float32; the "
        "default), fp32 (the fast path off), bf16 (force it)", "precision", ("run", "evaluate", "sweep", "batch")))

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
        if not 1 <= self.resample_jumps <= MAX_RESAMPLE_JUMPS:
            out.append(f"resample jumps must be in 1..{MAX_RESAMPLE_JUMPS} (got {self.resample_jumps})")
        if self.reference not in REFERENCES:
            out.append(f"unknown map reference {self.reference!r}; choose one of {', '.join(REFERENCES)}")
        if not 1 <= self.samples <= max_samples():
            out.append(f"samples must be in 1..{max_samples()} (got {self.samples})")
        if not 0 <= self.median_filter <= MAX_MEDIAN_FILTER:
            out.append(f"the median filter must be 0..{MAX_MEDIAN_FILTER} voxels (got {self.median_filter})")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold >= 0):
            # >= 0, from every source (command line, settings file, bundle): a bundle calibrated on maps of zeros
            # records 0 (voxels scoring above 0 are candidates), and replaying its run.json must work
            out.append(f"a fixed threshold must be a finite number >= 0 (got {self.threshold})")
        if not (math.isfinite(self.min_lesion_ml) and self.min_lesion_ml >= 0):
            out.append(f"the minimum lesion volume must be >= 0 ml (got {self.min_lesion_ml})")
        if not 0.0 < self.grow_to <= 1.0:
            out.append(f"grow-to must be in (0, 1] (got {self.grow_to})")
        if self.trajectory_every < 0:
            out.append(f"trajectory-every must be >= 0 (got {self.trajectory_every})")
        if self.trajectory_heatmap and self.trajectory_every <= 0:
            out.append("the trajectory heatmap needs a trajectory (trajectory-every K > 0)")
        if self.precision not in PRECISIONS:
            out.append(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
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
        """The sampler's part (``SamplerSettings``; imports torch)."""
        from DiffusionAnomalyLib.models.diffusion.sampler import SamplerSettings

        return SamplerSettings(method=self.sampler, noise_level=self.noise_level, steps=self.steps,
                               guidance=self.guidance, seed=self.seed, resample_jumps=self.resample_jumps,
                               trajectory_every=self.trajectory_every)

    def map_options(self) -> MapOptions:
        return MapOptions(self.reference, self.samples, self.median_filter)

    def postprocessing(self, preset: OrganPreset):
        """The post-processing (``PostProcessing``; numpy and SciPy only)."""
        from DiffusionAnomalyLib.detection.anomaly import PostProcessing

        return PostProcessing.for_preset(preset, self.min_lesion_ml, self.grow_to)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> RunSettings:
        """Settings from :meth:`to_dict` output (e.g. ``run.json``'s ``settings``), every field given; each value
        must have its option's JSON type (:func:`check_values`: no coercion); unknown keys are refused."""
        values = check_values(data, source)
        try:
            return cls(**values)
        except (InputError, TypeError) as exc:
            raise InputError(f"{source}: {exc}") from None


#: The JSON types each option kind accepts in a settings file or run.json (never coerced: "false" is not false).
_KIND_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "sampler": ((str,), "a string"), "reference": ((str,), "a string"), "device": ((str,), "a string"),
    "precision": ((str,), "a string"), "positive_int": ((int,), "a whole number"),
    "non_negative_int": ((int,), "a whole number"), "seed": ((int,), "a whole number"),
    "non_negative": ((int, float), "a number"), "grow_to": ((int, float), "a number"),
    "threshold": ((int, float, type(None)), "a number or null (Otsu)"), "flag": ((bool,), "true or false"),
}


def check_values(data: Any, source: str = "settings") -> dict[str, Any]:
    """``data`` (a JSON object of run settings, some or all of them) checked against each field's ``Option``:
    known names, the kind's JSON type (no coercion: ``"false"``, ``1`` for a flag, ``true`` for a number, ``2.5``
    for a whole number are refused), finite numbers; an :class:`InputError` names the file, the field and the
    value. Returns the values with numbers as the field's type."""
    import math

    if not isinstance(data, dict):
        raise InputError(f"{source}: run settings must be a JSON object (got {type(data).__name__})")
    kinds = dict((name, opt.kind) for name, opt in options())
    unknown = sorted(set(data) - set(kinds))
    if unknown:
        raise InputError(f"{source}: unknown run setting(s) {unknown}; known: {', '.join(kinds)}")
    out = {}
    for name, value in data.items():
        types, what = _KIND_TYPES[kinds[name]]
        bad = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if not bad and isinstance(value, float) and not math.isfinite(value):
            bad = True
        if bad:
            raise InputError(f"{source}: {name} must be {what} (got {json_repr(value)})")
        if isinstance(value, int) and not isinstance(value, bool) and float in types:
            value = float(value)
        out[name] = value
    return out


def json_repr(value: Any) -> str:
    """A value as JSON shows it, shortened (for messages)."""
    import json

    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def options() -> list[tuple[str, Option]]:
    """Every run setting with how it is offered, in field order: ``(field name, Option)``."""
    return [(f.name, f.metadata["option"]) for f in fields(RunSettings)]


def read_settings_file(path) -> tuple[dict[str, Any], str | None]:
    """The run settings a JSON file gives, checked (:func:`check_values`), and the organ it was made for (a
    ``run.json`` records it; None for a plain settings object). The file is either the ``run.json`` of an earlier
    run (its ``parameters.settings``: every field) or a settings object with some or all of the fields of
    :meth:`RunSettings.to_dict`; the fields it leaves out stay the bundle's recommendations."""
    from DiffusionAnomalyLib.imaging.outputs import read_json

    data = read_json(path, "settings file")
    organ = None
    if isinstance(data, dict) and "parameters" in data:  # a run.json
        preset = data.get("preset")
        organ = preset.get("name") if isinstance(preset, dict) else None
        parameters = data.get("parameters")
        data = parameters.get("settings") if isinstance(parameters, dict) else None
        if data is None:
            raise InputError(f"{path}: this run.json records no run settings (written by an older version, or a "
                             "baseline run)")
    return check_values(data, str(path)), organ


def load_settings_file(path) -> RunSettings:
    """Run settings from a JSON file that gives every field (a ``run.json``, or :meth:`RunSettings.to_dict`)."""
    values, _ = read_settings_file(path)
    return RunSettings.from_dict(values, str(path))


_CASTS = {"noise_level": int, "steps": int, "seed": int, "resample_jumps": int, "samples": int,
          "median_filter": int, "trajectory_every": int, "guidance": float, "min_lesion_ml": float,
          "grow_to": float, "deterministic": bool, "trajectory_heatmap": bool}


def _cast(name: str, value: Any) -> Any:
    cast = _CASTS.get(name)
    if cast is None or value is None:
        return value
    if cast is int and isinstance(value, float) and not value.is_integer():
        raise InputError(f"{name} must be a whole number (got {value})")
    return cast(value)
