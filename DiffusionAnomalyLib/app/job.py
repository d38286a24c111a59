"""One detection job from command-line arguments (``run`` with a bundle, or ``baseline``), shared by
the ``diffusion-anomaly`` command and the background worker."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from DiffusionAnomalyLib.detection.pipeline import CaseResult, detect, write_outputs
from DiffusionAnomalyLib.detection.presets import OrganPreset
from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.imaging.masks import MaskSet
from DiffusionAnomalyLib.settings import WEAK_CLASSIFIER_AUC

Progress = Callable[[str, int, int], None]


@dataclass
class JobOutcome:
    result: CaseResult
    out: Path
    device: str
    demo_bundle: bool
    settings: object | None  # SamplerSettings for `run`


def load_masks(args: argparse.Namespace, reference, preset: OrganPreset) -> MaskSet:
    """The organ masks the arguments ask for: --skull-stripped, --mask, --totalseg, or run TotalSegmentator."""
    from DiffusionAnomalyLib.imaging.masks import load_totalseg_masks, load_user_mask

    if getattr(args, "skull_stripped", False):
        from DiffusionAnomalyLib.imaging.io import read_channels
        from DiffusionAnomalyLib.imaging.masks import mask_from_skull_stripped

        return mask_from_skull_stripped(read_channels(args.input), preset)
    if args.mask:
        return load_user_mask(args.mask, reference, preset, args.mask_label)
    if args.totalseg:
        return load_totalseg_masks(args.totalseg, reference, preset)
    from DiffusionAnomalyLib.imaging.totalseg import check_available, run_totalsegmentator

    check_available(preset)
    tmp = Path(tempfile.mkdtemp(prefix="da-totalseg-"))
    try:  # the masks are read into memory; the folder never outlives the run
        return load_totalseg_masks(run_totalsegmentator(args.input[0], tmp, preset), reference, preset)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def input_paths(args: argparse.Namespace) -> list[str]:
    """Every file or folder a job reads: images, mask or TotalSegmentator output, and the bundle."""
    paths = [str(p) for p in args.input]
    for name in ("mask", "totalseg", "bundle", "settings"):
        if getattr(args, name, None):
            paths.append(str(getattr(args, name)))
    return paths


def check_job_arguments(args: argparse.Namespace) -> None:
    """What can be checked before any work: options that only make sense together, and the output folder."""
    from DiffusionAnomalyLib.imaging.outputs import check_output_dir

    if getattr(args, "mask_label", None) is not None and not args.mask:
        other = "--totalseg" if getattr(args, "totalseg", None) else (
            "--skull-stripped" if getattr(args, "skull_stripped", False) else "TotalSegmentator")
        raise InputError(f"--mask-label {args.mask_label} applies to --mask only; with {other} the organ's labels "
                         "are known by name. Give the organ mask with --mask FILE --mask-label N instead")
    for p in args.input:
        if not Path(p).exists():
            raise InputError(f"{p}: file not found")
    for name in ("mask", "totalseg"):
        value = getattr(args, name, None)
        if value and not Path(value).exists():
            raise InputError(f"{value}: file not found (--{name})")
    check_output_dir(args.out, input_paths(args), overwrite=bool(getattr(args, "overwrite", False)),
                     command=args.command)


def run_settings(args: argparse.Namespace, recommended: dict, preset: OrganPreset):
    """The run's :class:`~DiffusionAnomalyLib.settings.RunSettings`, resolved once: the bundle's recommendations,
    then ``--settings FILE`` on top (a ``run.json``, which gives every field, or a settings object with some of
    them; a run.json of another organ is refused), then the options given explicitly."""
    from DiffusionAnomalyLib.settings import RunSettings, options, read_settings_file

    given = {name: getattr(args, name, None) for name in RunSettings.__dataclass_fields__}
    for name, opt in options():  # an absent flag is "not given" (a settings file's True stays)
        if opt.kind == "flag" and not given.get(name):
            given[name] = None
    settings_file = getattr(args, "settings", None)
    if not settings_file:
        return RunSettings.resolve(recommended, preset, **given)
    values, organ = read_settings_file(settings_file)
    if organ is not None and organ != preset.name:
        raise InputError(f"{settings_file}: the run.json of a {organ} run; the bundle is for the {preset.name}: its "
                         "settings do not carry over (give a settings file of this organ, or the options)")
    from_file = {k: "otsu" if k == "threshold" and v is None else v for k, v in values.items()}
    try:
        return RunSettings.resolve(recommended, preset, **{**from_file, **{k: v for k, v in given.items()
                                                                           if v is not None}})
    except InputError as exc:
        raise InputError(f"{settings_file} (with the options given): {exc}") from None


def requested_device(args: argparse.Namespace) -> str:
    """``--device``, else the settings file's device, else auto (needed before the bundle is loaded)."""
    from DiffusionAnomalyLib.settings import read_settings_file

    if getattr(args, "device", None):
        return args.device
    return read_settings_file(args.settings)[0].get("device", "auto") if getattr(args, "settings", None) else "auto"


def demo_job_args(bundle: str | None, case_dir: Path, channels, organ: str, out: Path, device: str,
                  precision: str | None = None) -> argparse.Namespace:
    """The job ``demo`` runs on a written phantom (``case_dir``), as a ``run`` command line with ``bundle`` and
    its recommended settings (seed 0), or ``baseline`` when ``bundle`` is None, parsed by the command line's
    own parser; ``out`` is replaced if it exists (the demo's own folder)."""
    from DiffusionAnomalyLib.app.cli import build_parser

    common = ["--input", *[str(Path(case_dir) / f"{c}.nii.gz") for c in channels],
              *(["--totalseg", str(Path(case_dir) / "segmentations")] if organ != "brain" else ["--skull-stripped"]),
              "--out", str(out), "--overwrite"]
    if bundle is None:
        return build_parser().parse_args(["baseline", "--organ", organ, *common])
    return build_parser().parse_args(["run", "--bundle", str(bundle), "--seed", "0", "--device", str(device),
                                      *(["--precision", precision] if precision else []), *common])




def guidance_warnings(extra: dict, settings) -> list[str]:
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


def run_job(args: argparse.Namespace, progress: Progress | None = None) -> JobOutcome:
    """Read inputs, reconstruct, post-process and write the outputs of one case."""
    from DiffusionAnomalyLib.imaging.io import read_channels

    def report(stage: str, step: int, total: int) -> None:
        if progress:
            progress(stage, step, total)

    check_job_arguments(args)
    inputs: dict = {"images": [str(p) for p in args.input]}
    params: dict = {}
    settings = resolved = None
    warnings: list[str] = []
    demo = False
    if args.command == "run":
        from DiffusionAnomalyLib.models.bundle import load_bundle, shipped_manifest
        from DiffusionAnomalyLib.models.device import select_device
        from DiffusionAnomalyLib.models.reconstruction import DiffusionReconstructor

        device = select_device(requested_device(args))
        bundle = load_bundle(args.bundle, device=device, manifest=shipped_manifest())
        preset, rec, demo = bundle.preset, bundle.meta.recommended or {}, bundle.meta.demo
        resolved = run_settings(args, rec, preset)
        settings = resolved.sampler_settings()
        warnings = guidance_warnings(bundle.meta.extra, settings)
        if resolved.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            import torch

            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        opts = resolved.map_options()
        preset = opts.apply_to(preset)
        reconstructor = DiffusionReconstructor(bundle, settings, device, reference=opts.reference,
                                               samples=opts.samples, precision=resolved.precision,
                                               progress=lambda d, n: report("reconstruct", d, n))
        threshold = resolved.threshold
        inputs["bundle"] = {"path": str(bundle.path), "name": bundle.meta.name, "version": bundle.meta.version,
                            "sha256": bundle.digest, "demo": demo}
        params = {"settings": resolved.to_dict(), "sampler": dataclasses.asdict(settings),
                  "reference": opts.reference, "samples": reconstructor.effective_samples,
                  "median_filter": opts.median_filter, "deterministic": resolved.deterministic,
                  "precision": reconstructor.resolved_precision}
        postprocessing = resolved.postprocessing(preset)
    else:
        from DiffusionAnomalyLib.detection.baseline import MedianBaseline
        from DiffusionAnomalyLib.detection.presets import get_preset

        device, preset = "cpu", get_preset(args.organ)
        reconstructor = MedianBaseline.for_preset(preset)
        resolved = run_settings(args, {}, preset)  # threshold and post-processing; no sampler
        threshold, postprocessing = resolved.threshold, resolved.postprocessing(preset)
    channels = read_channels(args.input, preset.channels if len(args.input) > 1 else None)
    if args.command == "run" and not args.skip_modality_check:
        import SimpleITK as sitk

        from DiffusionAnomalyLib.detection.intensity import check_modality

        check_modality(sitk.GetArrayViewFromImage(channels[0]), preset.modality, str(args.input[0]))
    mask_set = load_masks(args, channels[0], preset)
    result = detect(channels, mask_set, preset, reconstructor, threshold=threshold,
                    postprocessing=postprocessing, trajectory_heatmaps=bool(resolved and resolved.trajectory_heatmap),
                    input_name=str(args.input[0]),
                    progress=lambda s, i, n: s != "reconstruct" and report(s, i, n))
    result.warnings += warnings
    result.parameters.update({**params, "device": str(device),
                              "network_evaluations": getattr(reconstructor, "network_evaluations", 0)})
    report("write", 0, 1)
    out = write_outputs(result, args.out, preset, inputs, overwrite=bool(getattr(args, "overwrite", False)),
                        input_paths=input_paths(args), overview=not getattr(args, "no_overview", False))
    report("write", 1, 1)
    return JobOutcome(result, out, str(device), demo, settings)
