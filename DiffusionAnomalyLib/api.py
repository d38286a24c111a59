"""The library's Python API: one typed request in, one typed result out, for each job.

- :func:`detect` (:class:`DetectRequest` -> :class:`Detection`): one case, with a model bundle or the median
  baseline; what ``diffusion-anomaly run`` / ``baseline``, the worker and the Slicer panel run.
- :func:`evaluate`, :func:`sweep`, :func:`batch` (``evaluation.commands``): a dataset folder.
- :func:`train_all` (``training.recipe``): a dataset folder to a calibrated bundle.

The command line builds these requests from its arguments, the worker reads one from JSON, the panel builds one
from its parameter node; none of them passes arguments any other way. Importing this module is cheap and
torch-free (Slicer's process imports it); the dataset and training functions load on first use.

>>> from DiffusionAnomalyLib.api import DetectRequest
>>> request = DetectRequest(images=("ct.nii.gz",), out="result", organ="kidney", baseline=True,
...                         totalseg="segmentations", settings={"min_lesion_ml": 0.5})
>>> DetectRequest.from_json(request.to_json()) == request
True
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.options import scan_input_problems, typed_fields
from DiffusionAnomalyLib.progress import Progress
from DiffusionAnomalyLib.settings import ORGANS, WEAK_CLASSIFIER_AUC, RunSettings

if typing.TYPE_CHECKING:
    from DiffusionAnomalyLib.detection.pipeline import CaseResult
    from DiffusionAnomalyLib.detection.presets import OrganPreset
    from DiffusionAnomalyLib.imaging.masks import MaskSet


@dataclass(frozen=True)
class DetectRequest:
    """One case to detect in.

    ``images``: the image file(s) or a DICOM folder (brain: t1n t1c t2w t2f). ``out``: the output folder (new or
    empty; ``overwrite`` replaces an earlier result set; inputs are never replaced). The model: ``bundle`` (a
    folder or .zip; None with ``organ``: the best installed bundle for that organ), or ``baseline`` (the
    non-neural median baseline for ``organ``). The organ mask: ``mask`` (nonzero = organ, or ``mask_label``),
    ``totalseg`` (TotalSegmentator's output), ``skull_stripped`` (brain), else TotalSegmentator runs.
    ``settings``: run settings by :class:`~DiffusionAnomalyLib.settings.RunSettings` field name (absent or None:
    the bundle's recommendation; ``threshold`` also ``"otsu"`` or ``"bundle"``), on top of ``settings_file`` (a
    ``run.json`` or a settings JSON). ``overview``: also write ``overview.png`` (matplotlib).
    """

    images: tuple[str, ...]
    out: str
    bundle: str | None = None
    organ: str | None = None
    baseline: bool = False
    mask: str | None = None
    mask_label: int | None = None
    totalseg: str | None = None
    skull_stripped: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    settings_file: str | None = None
    overwrite: bool = False
    overview: bool = True
    skip_modality_check: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", tuple(str(p) for p in self.images))
        for name in ("out", "bundle", "mask", "totalseg", "settings_file"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        problems = self.problems()
        if problems:
            raise InputError("; ".join(problems))

    @property
    def command(self) -> str:
        """What the command line calls this job (``run`` or ``baseline``; messages name it)."""
        return "baseline" if self.baseline else "run"

    def problems(self) -> list[str]:
        """What makes this request meaningless, before any file is read (empty when none)."""
        out = []
        if not self.images:
            out.append("no input image given")
        if not self.out:
            out.append("no output folder given")
        if self.organ is not None and self.organ not in ORGANS:
            out.append(f"unknown organ {self.organ!r}; choose one of {', '.join(ORGANS)}")
        if self.baseline and (self.bundle or not self.organ):
            out.append("the baseline takes an organ and no bundle")
        if self.baseline and self.settings.get("hybrid"):
            out.append("the hybrid weight combines a bundle's map with the baseline's: the baseline alone takes none")
        if not self.baseline and not self.bundle and not self.organ:
            out.append("run needs --bundle, or --organ to use the best installed bundle for that organ")
        out += scan_input_problems(self, {"out": "--out", "bundle": "--bundle", "mask": "--mask",
                                          "totalseg": "--totalseg", "settings_file": "--settings"})
        if self.mask_label is not None and not self.mask:
            other = ("--totalseg" if self.totalseg else "--skull-stripped" if self.skull_stripped
                     else "TotalSegmentator")
            out.append(f"--mask-label {self.mask_label} applies to --mask only; with {other} the organ's labels are "
                       "known by name. Give the organ mask with --mask FILE --mask-label N instead")
        unknown = sorted(set(self.settings) - set(RunSettings.__dataclass_fields__))
        if unknown:
            out.append(f"unknown run setting(s) {unknown}")
        out += _settings_problems({k: v for k, v in self.settings.items() if k not in unknown})
        return out

    def input_paths(self) -> list[str]:
        """Every file or folder the job reads: images, mask or TotalSegmentator output, bundle, settings file."""
        return [*self.images, *(p for p in (self.mask, self.totalseg, self.bundle, self.settings_file) if p)]

    def to_json(self) -> dict[str, Any]:
        """This request as a JSON object (what the worker reads)."""
        return {**dataclasses.asdict(self), "images": list(self.images)}

    @classmethod
    def from_json(cls, data: Any, source: str = "request") -> DetectRequest:
        """A request from :meth:`to_json` output; every value must have its field's JSON type (no coercion),
        unknown keys are refused; an :class:`InputError` names ``source``, the field and the value."""
        return cls(**typed_fields(cls, data, source))


def _settings_problems(settings: dict[str, Any]) -> list[str]:
    """Each given run setting checked against its declaration (None: not given; ``threshold`` may be a word)."""
    from DiffusionAnomalyLib.settings import check_values, field_problem, floor_contrast_problem, options

    words = dict(options())
    out = []
    for name, value in settings.items():
        if value is None or value in words[name].words:
            continue
        try:
            value = check_values({name: value}, "run settings")[name]
        except InputError as exc:
            out.append(str(exc))
            continue
        if problem := field_problem(name, value) or (floor_contrast_problem(value) if name == "floor_contrast"
                                                     else None):
            out.append(problem)
    return out


@dataclass
class Detection:
    """What :func:`detect` found and wrote: the case result (heatmap, lesions, lesion table, threshold,
    warnings, timings), the output folder, the device, whether the bundle is a DEMO, and the resolved run
    settings (None for the baseline's sampler part)."""

    result: CaseResult
    out: Path
    device: str
    demo_bundle: bool
    settings: RunSettings | None


def resolve_settings(request: DetectRequest, recommended: dict, preset: OrganPreset) -> RunSettings:
    """The run's settings, resolved once: the bundle's recommendations, then ``settings_file`` on top (a run.json,
    which gives every field, or a settings object with some of them; a run.json of another organ is refused), then
    the request's own settings."""
    from DiffusionAnomalyLib.settings import read_settings_file

    given = {k: v for k, v in request.settings.items() if v is not None}
    if not request.settings_file:
        return RunSettings.resolve(recommended, preset, **given)
    values, organ = read_settings_file(request.settings_file)
    if organ is not None and organ != preset.name:
        raise InputError(f"{request.settings_file}: the run.json of a {organ} run; the bundle is for the "
                         f"{preset.name}: its settings do not carry over (give a settings file of this organ, or the "
                         "options)")
    from_file = {k: "otsu" if k == "threshold" and v is None else v for k, v in values.items()}
    try:
        return RunSettings.resolve(recommended, preset, **{**from_file, **given})
    except InputError as exc:
        raise InputError(f"{request.settings_file} (with the options given): {exc}") from None


def _requested_device(request: DetectRequest) -> str:
    """The request's device, else the settings file's, else auto (needed before the bundle is loaded)."""
    from DiffusionAnomalyLib.settings import read_settings_file

    if request.settings.get("device"):
        return request.settings["device"]
    return read_settings_file(request.settings_file)[0].get("device", "auto") if request.settings_file else "auto"


def best_bundle(organ: str) -> str:
    """The installed bundle for ``organ`` that a request without one uses: the user's models folder before the
    shipped ones, a real model before a DEMO (logged)."""
    import logging

    from DiffusionAnomalyLib.models.bundle import available_bundles, default_models_dir

    found = sorted(available_bundles(organ), key=lambda b: b.meta.demo)  # stable: user folder first within each
    if not found:
        raise InputError(f"no model bundle for the {organ} is installed (looked in {default_models_dir()} and the "
                         "shipped Resources/Models); give one with --bundle")
    best = found[0]
    note = " - a DEMO trained on synthetic phantoms: its findings on real scans mean nothing" if best.meta.demo else ""
    logging.getLogger(__name__).info(f"using the {best.label} bundle ({best.path}){note}")
    return str(best.path)


def load_masks(request: DetectRequest, reference, preset: OrganPreset) -> MaskSet:
    """The organ masks the request asks for (:func:`~DiffusionAnomalyLib.imaging.masks.load_organ_masks`)."""
    from DiffusionAnomalyLib.imaging.masks import load_organ_masks

    return load_organ_masks(request.images, reference, preset, mask=request.mask, mask_label=request.mask_label,
                            totalseg=request.totalseg, skull_stripped=request.skull_stripped)


def guidance_warnings(extra: dict, settings: RunSettings) -> list[str]:
    """Warnings for classifier guidance that the bundle's classifier cannot back: a start above the noise levels it
    was trained on, or a validation AUC near chance (``classifier_training`` in ``model.json``)."""
    if settings.guidance <= 0:
        return []
    training = extra.get("classifier_training") or {}
    out = []
    trained = training.get("max_level")
    if trained is not None and settings.noise_level > int(trained):
        out.append(f"guidance from noise level {settings.noise_level}: the bundle's classifier was trained on levels "
                   f"0..{trained} only, so its gradients above {trained} are untested")
    aucs = {int(k): float(v) for k, v in (training.get("best_val_auc") or {}).items()}
    if aucs:
        level = min(aucs, key=lambda k: (abs(k - settings.noise_level), k))
        if aucs[level] < WEAK_CLASSIFIER_AUC:
            out.append(f"guidance {settings.guidance:g}: the bundle's classifier separates healthy from unhealthy "
                       f"validation latents at t = {level} with AUC {aucs[level]:.2f} only (near chance: 0.5), so its "
                       f"gradients do not point toward a healthy organ; consider --guidance 0")
    return out


def _check_files(request: DetectRequest) -> None:
    """What can be checked before any work: the inputs exist, and the output folder may be written."""
    from DiffusionAnomalyLib.imaging.outputs import check_output_dir

    for p in request.images:
        if not Path(p).exists():
            raise InputError(f"{p}: file not found")
    for name in ("mask", "totalseg"):
        value = getattr(request, name)
        if value and not Path(value).exists():
            raise InputError(f"{value}: file not found (--{name})")
    check_output_dir(request.out, request.input_paths(), overwrite=request.overwrite, command=request.command)


def detect(request: DetectRequest, progress: Progress | None = None) -> Detection:
    """Read the inputs, reconstruct, post-process and write the outputs of one case (atomically: all or nothing).

    ``progress(stage, step, total)`` is called as the stages advance (``progress.STAGE_WEIGHTS``). Raises the
    project's errors (:mod:`DiffusionAnomalyLib.errors`): bad input, a bad bundle, out of memory, cancelled.

    >>> from DiffusionAnomalyLib.api import DetectRequest, detect  # doctest: +SKIP
    >>> found = detect(DetectRequest(images=("ct.nii.gz",), out="result", bundle="kidney-demo",  # doctest: +SKIP
    ...                              totalseg="segmentations", settings={"seed": 0}))
    >>> [lesion.volume_ml for lesion in found.result.table]  # doctest: +SKIP
    [4.1, 0.9]
    """
    from DiffusionAnomalyLib.detection.pipeline import detect as detect_case
    from DiffusionAnomalyLib.detection.pipeline import write_outputs
    from DiffusionAnomalyLib.imaging.io import read_channels

    def report(stage: str, step: int, total: int) -> None:
        if progress:
            progress(stage, step, total)

    if not request.baseline and not request.bundle:
        request = dataclasses.replace(request, bundle=best_bundle(request.organ))
    _check_files(request)
    inputs: dict = {"images": list(request.images)}
    params: dict = {}
    warnings: list[str] = []
    demo, resolved = False, None
    if not request.baseline:
        from DiffusionAnomalyLib.models.bundle import load_bundle, shipped_manifest
        from DiffusionAnomalyLib.models.device import select_device
        from DiffusionAnomalyLib.models.diffusion.sampler import SamplerSettings
        from DiffusionAnomalyLib.models.reconstruction import DiffusionReconstructor

        device = select_device(_requested_device(request))
        bundle = load_bundle(request.bundle, device=device, manifest=shipped_manifest())
        preset, rec, demo = bundle.preset, bundle.meta.recommended or {}, bundle.meta.demo
        if request.organ and request.organ != preset.name:
            raise InputError(f"{request.bundle}: the bundle is for the {preset.name}, not the {request.organ} "
                             "(--organ)")
        resolved = resolve_settings(request, rec, preset)
        sampler = SamplerSettings.from_run(resolved)
        warnings = guidance_warnings(bundle.meta.extra, resolved)
        if resolved.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            import torch

            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        opts = resolved.map_options()
        preset = opts.apply_to(preset)
        reconstructor = DiffusionReconstructor(bundle, sampler, device, reference=opts.reference,
                                               samples=opts.samples, precision=resolved.precision,
                                               progress=lambda d, n: report("reconstruct", d, n))
        inputs["bundle"] = {"path": str(bundle.path), "name": bundle.meta.name, "version": bundle.meta.version,
                            "sha256": bundle.digest, "demo": demo}
        params = {"settings": resolved.to_dict(), "sampler": dataclasses.asdict(sampler),
                  "reference": opts.reference, "samples": reconstructor.effective_samples,
                  "median_filter": opts.median_filter, "deterministic": resolved.deterministic,
                  "precision": reconstructor.resolved_precision}
        threshold, postprocessing = resolved.threshold, resolved.postprocessing(preset)
    else:
        from DiffusionAnomalyLib.detection.baseline import MedianBaseline
        from DiffusionAnomalyLib.detection.presets import get_preset

        device, preset = "cpu", get_preset(request.organ)
        reconstructor = MedianBaseline.for_preset(preset)
        base = resolve_settings(request, {}, preset)  # threshold and post-processing; no sampler
        threshold, postprocessing = base.threshold, base.postprocessing(preset)
    channels = read_channels(list(request.images), preset.channels if len(request.images) > 1 else None)
    if not request.baseline and not request.skip_modality_check:
        import SimpleITK as sitk

        from DiffusionAnomalyLib.detection.intensity import check_modality

        check_modality(sitk.GetArrayViewFromImage(channels[0]), preset.modality, request.images[0])
    mask_set = load_masks(request, channels[0], preset)
    result = detect_case(channels, mask_set, preset, reconstructor, threshold=threshold,
                         postprocessing=postprocessing, hybrid=resolved.hybrid if resolved else 0.0,
                         trajectory_heatmaps=bool(resolved and resolved.trajectory_heatmap),
                         input_name=request.images[0], progress=lambda s, i, n: s != "reconstruct" and report(s, i, n))
    result.warnings += warnings
    result.parameters.update({**params, "device": str(device),
                              "network_evaluations": getattr(reconstructor, "network_evaluations", 0)})
    report("write", 0, 1)
    out = write_outputs(result, request.out, preset, inputs, overwrite=request.overwrite,
                        input_paths=request.input_paths(), overview=request.overview)
    report("write", 1, 1)
    return Detection(result, out, str(device), demo, resolved)


_LAZY = {"evaluate": "evaluation.commands", "sweep": "evaluation.commands", "batch": "evaluation.commands",
         "EvaluateRequest": "evaluation.commands", "SweepRequest": "evaluation.commands",
         "BatchRequest": "evaluation.commands", "train_all": "training.recipe", "TrainAllPlan": "training.recipe"}


def __getattr__(name: str) -> Any:
    """The dataset and training API, imported on first use (they need torch, MONAI, scikit-image)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"DiffusionAnomalyLib.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DetectRequest", "Detection", "detect", "resolve_settings", "RunSettings", *_LAZY]
