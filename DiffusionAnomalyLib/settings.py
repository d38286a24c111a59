"""Run settings: every setting of a detection run declared once, as a field of :class:`RunSettings` with its
:class:`Option` (type from the annotation; range, choices, default, help, where it is offered). Everything else is
derived from that declaration: the checks (:meth:`RunSettings.problems`), the JSON types a settings file may use
(:func:`check_values`), the command line's parsing (:func:`parse_text`, ``app/cli.py``), the Slicer panel's
parameters (``slicer_module/panel.py``), the ``recommended`` block of the bundle schema
(:func:`recommended_schema`) and the anomaly-map cache key (:func:`maps_key`).

Torch-free, so the Slicer panel can show a bundle's effective settings before the worker's packages are
installed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from DiffusionAnomalyLib import options as _options
from DiffusionAnomalyLib.detection.presets import OrganPreset
from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.options import MAX_SEED, Option, cast, json_repr, json_type, setting  # noqa: F401
from DiffusionAnomalyLib.options import options as declared

ORGANS = ("kidney", "liver", "brain")
#: ddpm, ddim and inpaint (docs/method.md, Samplers); dpmpp and dpmpp-sde: DPM-Solver++(2M) after the DDIM
#: inversion and SDE-DPM-Solver++(2M) after q(x_L | x_0) (models/diffusion/dpm_solver.py).
SAMPLERS = ("ddpm", "ddim", "inpaint", "dpmpp", "dpmpp-sde")
#: The samplers that encode by DDIM inversion and denoise deterministically: one reconstruction whatever the seed.
DETERMINISTIC_SAMPLERS = ("ddim", "dpmpp")
#: The fast default of the deterministic path: the fewest DPM-Solver++ steps whose heatmap agreed with DDIM-50's
#: (scripts/sampler_agreement.py, docs/performance.md), at the fast precision. ``bench --fast-default`` times it.
FAST_DEFAULT = {"sampler": "dpmpp", "steps": 20, "precision": "auto"}
DEVICES = ("auto", "cuda", "cpu")
REFERENCES = ("input", "autoencoder")
#: Network precision: auto = bfloat16 autocast where the hardware runs it faster than float32 (CUDA from Ampere on,
#: CPUs with AMX-BF16; docs/performance.md), else float32; fp32 turns the fast path off; bf16 forces it (CPU, CUDA).
PRECISIONS = ("auto", "fp32", "bf16")
#: The CT phantom generators' lesion diameter mixes (``phantom --lesion-sizes``; synthetic/base.py).
LESION_SIZES = ("strata", "incidental")
#: ``bench``'s model sizes (random weights; evaluation/bench.py SIZES): the demo bundles' latent, the 4 mm latent
#: of ``train all --preset tiny-fine`` and the kidney thesis's network.
BENCH_SIZES = ("demo", "tiny-fine", "thesis-kidney")
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


#: The commands that take an option: ``run`` only, or every command that makes anomaly maps.
RUN = ("run",)
MAPS = ("run", "evaluate", "sweep", "batch")



def floor_contrast_problem(value: float) -> str | None:
    """Why a contrast-dependent size floor ``value`` means nothing (None: it is 0, off, or >= 1): below 1 x the
    threshold every lesion would escape the floor, since every lesion's mean score is above the threshold."""
    if 0 < value < 1:
        return (f"floor contrast must be 0 (off) or >= 1, a multiple of the threshold (got {value:g}): every lesion's "
                "mean score is above the threshold already")
    return None

@dataclass(frozen=True)
class RunSettings:
    """Every setting of one detection run with a bundle, resolved: what the sampler, the map and the
    post-processing use, and what ``run.json`` records so the run can be replayed.

    ``threshold`` None means Otsu over the case. Build it with :meth:`resolve` (bundle recommendations plus
    explicit overrides, once) or :meth:`from_dict` (a replay); both validate (:meth:`problems`, the one check).

    >>> RunSettings(noise_level=100, steps=20).sampler
    'ddpm'
    >>> RunSettings(steps=0)
    Traceback (most recent call last):
    ...
    DiffusionAnomalyLib.errors.InputError: steps must be in 1..999 (got 0)
    """

    sampler: str = setting("ddpm", Option(
        "sampler (default: the bundle's recommendation)", MAPS, label="sampler", choices=SAMPLERS, panel="sampler",
        recommend=True, maps=True, key="{}"))
    noise_level: int = setting(250, Option(
        "noise level L the reconstruction starts from, in [1, T-1] (default: the bundle's)", MAPS, "L",
        label="noise level L", low=1, high=MAX_NOISE_LEVEL, panel="noiseLevel", recommend=True, maps=True,
        key="L{}"))
    steps: int = setting(50, Option(
        "denoising steps (default: the bundle's)", MAPS, "N", label="steps", low=1, high=MAX_NOISE_LEVEL,
        panel="steps", recommend=True, maps=True, key="n{}"))
    guidance: float = setting(0.0, Option(
        "classifier-guidance strength s >= 0 (default: the bundle's)", MAPS, "S", label="guidance strength", low=0,
        panel="guidance", panel_range=(0, 3000), recommend=True, maps=True, key="s{:g}"))
    seed: int = setting(0, Option(
        "random seed, 0..2^63-1 (default 0)", MAPS, label="seed", low=0, high=MAX_SEED, panel="seed",
        panel_range=(0, 2**31 - 1), maps=True, key="seed{}"))
    resample_jumps: int = setting(1, Option(
        "inpaint: RePaint resampling jumps r (default 1)", label="resample jumps", low=1, high=MAX_RESAMPLE_JUMPS,
        maps=True, key="r{}", key_default=1))
    reference: str = setting("input", Option(
        "anomaly map against the input or against the autoencoder's D(E(x)) (default: the bundle's "
        "recommendation, else input)", MAPS, label="map reference", choices=REFERENCES, panel="reference",
        bundle_value="bundle", recommend=True, maps=True, key="ref{}", key_default="input"))
    samples: int = setting(1, Option(
        "average K stochastic reconstructions (ddpm, dpmpp-sde, inpaint; K x the time; default: the bundle's, else 1)",
        MAPS, "K", label="samples", low=1, high=max_samples, panel="samples", panel_range=(0, 16), bundle_value=0,
        recommend=True, maps=True, key="k{}", key_default=1))
    median_filter: int = setting(0, Option(
        "median filter of the anomaly map, N voxels (0 = off; default: the bundle's, else the organ preset's)",
        MAPS, "N", label="the median filter (voxels)", low=0, high=MAX_MEDIAN_FILTER, panel="medianFilter",
        panel_range=(-1, MAX_MEDIAN_FILTER), bundle_value=-1, recommend=True, maps=True, key="med{}",
        key_default=0))
    threshold: float | None = setting(None, Option(
        "a fixed threshold, or 'otsu' for Otsu over each case (default: the bundle's calibrated threshold, else "
        "Otsu)", ("run", "batch", "baseline"), label="a fixed threshold", low=0, words=("otsu", "bundle"),
        recommend=True))  # the panel's threshold mode and value: see panel.py
    min_lesion_ml: float = setting(0.0, Option(
        "drop lesions smaller than this many millilitres (default: the bundle's calibrated value, else 0 = only "
        "the thesis' 20-voxel and 3 mm limits)", (*MAPS, "baseline"), "ML",
        label="the minimum lesion volume (ml)", low=0, recommend=True))
    grow_to: float = setting(1.0, Option(
        "grow each lesion kept at the threshold over the connected organ voxels above F x threshold (hysteresis; "
        "1 = off; default: the bundle's calibrated value, else 1)", (*MAPS, "baseline"), "F", label="grow-to",
        low=0, high=1, low_open=True, recommend=True))
    floor_contrast: float = setting(0.0, Option(
        "keep a lesion smaller than --min-lesion-ml when its mean map score is at least F x the threshold: a size "
        "floor that depends on the evidence (0 = off, else >= 1; default: the bundle's calibrated value, else 0)",
        (*MAPS, "baseline"), "F", label="floor contrast", low=0, recommend=True))
    hybrid: float = setting(0.0, Option(
        "combine the model's anomaly map with the median baseline's as max(model, W x baseline), W > 0 (0 = the "
        "model's map alone; default: the bundle's calibrated weight, else 0; docs/evaluation.md#the-hybrid-map)",
        ("run", "evaluate", "batch"), "W", label="hybrid weight", low=0, recommend=True))
    device: str = setting("auto", Option(
        "auto (CUDA > MPS > CPU; the default), cpu, cuda, cuda:1, mps (under torchrun: each rank its own GPU)",
        MAPS, label="device", panel="device", panel_choices=DEVICES))
    trajectory_every: int = setting(0, Option(
        "also write the decoded x_0 prediction every K sampler steps, composed onto the input's grid, as one "
        "volume sequence (trajectory.seq.nrrd; 3D Slicer opens it as a sequence)", ("run", "batch"), "K",
        label="trajectory-every", low=0))  # the panel's "Keep the denoising trajectory": see panel.py
    trajectory_heatmap: bool = setting(False, Option(
        "with --trajectory-every: also each kept step's anomaly map (trajectory_heatmap.seq.nrrd)", ("run", "batch"),
        label="trajectory-heatmap"))
    deterministic: bool = setting(False, Option(
        "deterministic algorithms (slower on GPU); the seed already fixes all noise", label="deterministic"))
    precision: str = setting("auto", Option(
        "network precision: auto (bfloat16 autocast on CPUs with AMX-BF16 and on CUDA from Ampere on, else float32; "
        "the default), fp32 (the fast path off), bf16 (force it)", ("run", "evaluate", "sweep", "batch"),
        label="precision", choices=PRECISIONS))

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise InputError("; ".join(problems))

    def problems(self) -> list[str]:
        """What is wrong with these settings (empty when they can run): each field against its declaration, then
        the rules that join two fields."""
        out = _options.problems(self)
        if self.steps >= 1 and self.noise_level >= 1 and self.steps > self.noise_level:
            out.append(f"steps must be between 1 and L = {self.noise_level} (got {self.steps})")
        if self.trajectory_heatmap and self.trajectory_every <= 0:
            out.append("the trajectory heatmap needs a trajectory (trajectory-every K > 0)")
        if problem := floor_contrast_problem(self.floor_contrast):
            out.append(problem)
        return out

    @classmethod
    def resolve(cls, recommended: dict | None, preset: OrganPreset, **overrides: Any) -> RunSettings:
        """The bundle's ``recommended`` block with explicit ``overrides`` on top, resolved once.

        An override of None means "not given" (the bundle's value, then the default; the median filter's default
        is the organ preset's); 0 stays 0. ``threshold`` may be a number, ``"otsu"`` (Otsu per case) or
        ``"bundle"``/None (the bundle's calibrated threshold, else Otsu).
        """
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise InputError(f"unknown run setting(s) {unknown}")
        recommendable = {name for name, opt in options(cls) if opt.recommend}
        rec = {k: v for k, v in (recommended or {}).items() if k in recommendable and v is not None}
        given = {k: v for k, v in overrides.items() if v is not None}
        threshold = given.pop("threshold", "bundle")
        if threshold == "bundle":
            threshold = rec.get("threshold")
        elif threshold == "otsu":
            threshold = None
        values = {"median_filter": preset.median_filter_voxels, **rec, **given, "threshold": threshold}
        return cls(**{k: cast(k, v, cls) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def map_options(self) -> MapOptions:
        return MapOptions(self.reference, self.samples, self.median_filter)

    def postprocessing(self, preset: OrganPreset):
        """The post-processing (``PostProcessing``; numpy and SciPy only)."""
        from DiffusionAnomalyLib.detection.anomaly import PostProcessing

        return PostProcessing.for_preset(preset, self.min_lesion_ml, self.grow_to, self.floor_contrast)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> RunSettings:
        """Settings from :meth:`to_dict` output (e.g. ``run.json``'s ``settings``), every field given; each value
        must have its field's JSON type (:func:`check_values`: no coercion); unknown keys are refused."""
        values = check_values(data, source, cls)
        try:
            return cls(**values)
        except (InputError, TypeError) as exc:
            raise InputError(f"{source}: {exc}") from None


#: Defaults of the sampler's settings (the fields' own defaults), for trainers that write a first recommendation.
SAMPLER_DEFAULTS: dict[str, Any] = {k: RunSettings.__dataclass_fields__[k].default
                                    for k in ("sampler", "noise_level", "steps", "guidance")}
#: Settings a user can leave to the bundle (its ``recommended`` block): None (or absent) means "the bundle's".
OVERRIDABLE = tuple(f.name for f in fields(RunSettings) if f.metadata["option"].recommend)


def options(cls: type = RunSettings) -> list[tuple[str, Option]]:
    """Every run setting with how it is offered, in field order: ``(field name, Option)``."""
    return declared(cls)


def field_type(name: str, cls: type = RunSettings) -> tuple[type, bool]:
    """A run setting's value type (bool, int, float or str) and whether it may be None, from its annotation."""
    return _options.field_type(name, cls)


def field_problem(name: str, value: Any, cls: type = RunSettings) -> str | None:
    """What is wrong with ``value`` for the run setting ``name`` (None when it is fine), from its declaration."""
    return _options.field_problem(name, value, cls)


def parse_text(name: str, text: str, cls: type = RunSettings) -> Any:
    """A command-line text for the run setting ``name``, checked against its declaration (``ValueError``)."""
    return _options.parse_text(name, text, cls)


def check_values(data: Any, source: str = "settings", cls: type = RunSettings) -> dict[str, Any]:
    """``data`` (a JSON object of run settings, some or all of them) checked against each field's type (no
    coercion; :func:`DiffusionAnomalyLib.options.check_values`)."""
    return _options.check_values(data, source, cls)


def recommended_schema(cls: type = RunSettings) -> dict[str, Any]:
    """The JSON schema of a bundle's ``recommended`` block, from the declarations of the settings a bundle may
    recommend (null: no recommendation); ``models/model.schema.json`` holds a copy that a test compares."""
    props: dict[str, Any] = {}
    for name, opt in options(cls):
        if not opt.recommend:
            continue
        kind, _ = field_type(name, cls)
        prop: dict[str, Any] = {"type": [json_type(kind), "null"]}
        if opt.choices is not None:
            prop["enum"] = [*opt.choices, None]
        if opt.low is not None:
            prop["exclusiveMinimum" if opt.low_open else "minimum"] = opt.low
        high = MAX_SAMPLES if opt.high is max_samples else opt.high
        if high is not None:
            prop["maximum"] = high
        props[name] = prop
    return {"type": "object", "additionalProperties": False, "properties": props,
            "description": "Default run settings; each command-line option or panel setting overrides its own. "
                           "Generated from DiffusionAnomalyLib.settings.RunSettings (recommended_schema)."}


def maps_key(settings: RunSettings) -> str:
    """The part of the anomaly-map cache's name that the settings decide: each setting that changes the maps
    (``Option.maps``), by its ``key`` format, left out at its ``key_default``."""
    parts = [opt.key.format(getattr(settings, name)) for name, opt in options(type(settings))
             if opt.maps and getattr(settings, name) != opt.key_default]
    return "_".join(parts)


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
