"""``train all``'s plan: the network presets, :class:`TrainAllPlan` (every setting, resolved per stage),
the checks before training, and :class:`Stages` (``OUT.work/stages.json``: what is done)."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import MISSING, dataclass
from pathlib import Path

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.evaluation.commands import CalibrationGrid
from DiffusionAnomalyLib.options import Option, problems, redeclared, required, setting
from DiffusionAnomalyLib.settings import SAMPLER_DEFAULTS, RunSettings
from DiffusionAnomalyLib.training.configs import DATA, OUT, AutoencoderTraining, TrainingRun

#: The stages in order; ``synthesizer`` runs only with ``--synthesizer`` (opt-in: the default bundle has none).
STAGES = ("prepare", "autoencoder", "denoiser", "classifier", "calibrate", "synthesizer", "bundle")

#: Network size presets: ``tiny`` trains on a CPU (the demo bundles' recipe), ``tiny-fine`` is ``tiny`` on a latent
#: grid twice as fine (the ``tiny-2x`` autoencoder, the ``tiny-3level`` denoiser trained on latent windows of at most
#: ``latent_crop`` voxels: issue 37, docs/evaluation.md), ``thesis`` has the thesis sizes (kidney thesis App. A) for
#: GPUs. Spacing in mm per organ; iterations and batch sizes per stage; ``network`` unless a stage names its own.
_TINY = {"network": "tiny", "spacing": {"kidney": 2.0, "liver": 4.0, "brain": 4.0},
         "iterations": {"autoencoder": 3000, "denoiser": 3000, "classifier": 3000, "synthesizer": 3000},
         "batch": {"autoencoder": 2, "denoiser": 8, "classifier": 16}, "adversarial_start": None,
         "classifier_lr": 3e-4, "noise_levels": [250], "guidance": [0.0, 100.0]}
PRESETS = {
    "tiny": _TINY,
    # the denoiser 4500 iterations: on the kidney phantoms its validation L1 still fell from 2000 (0.112) to 4500
    # (0.091), and the held-out small lesions with it (docs/evaluation.md)
    "tiny-fine": {**_TINY, "autoencoder_network": "tiny-2x", "denoiser_network": "tiny-3level",
                  "latent_crop": [16, 16, 16], "iterations": {**_TINY["iterations"], "denoiser": 4500}},
    "thesis": {"network": "thesis-kidney", "spacing": {"kidney": 1.0, "liver": 2.0, "brain": 2.0},
               "iterations": {"autoencoder": 20000, "denoiser": 20000, "classifier": 10000, "synthesizer": 20000},
               "batch": {"autoencoder": 2, "denoiser": 8, "classifier": 16}, "adversarial_start": 10000,
               "classifier_lr": 1e-4, "noise_levels": [100, 250, 500],
               "guidance": [float(s) for s in range(0, 2001, 200)]},
}


ALL = ("all",)
#: The real-data flag's negative: ``--synthetic-data``.
_SYNTHETIC = ("--synthetic-data", "the cases are synthetic (from any generator)")


#: ``train all``'s hybrid scales (``--hybrid-scales``): the baseline counts where its map exceeds C x its global Otsu
#: threshold on the validation cases; at 1 x Otsu the baseline alone makes about 2 false positives per kidney on the
#: phantoms (docs/evaluation.md), so the grid starts above it. Each scale adds the post-processing grid once more.
HYBRID_SCALES = (1.25, 1.5, 2.0)


@dataclass
class TrainAllPlan:
    """Everything ``train all`` does (its stages' settings: :meth:`resolved`, recorded in ``OUT.work/stages.json``).

    Each option is declared once, on its field: the dataset, output, seed, device and precision are the training
    stages' (:class:`~DiffusionAnomalyLib.training.common.TrainingRun`), the calibration grid is ``sweep``'s
    (:class:`~DiffusionAnomalyLib.evaluation.commands.CalibrationGrid`) with other defaults, the calibration's
    sampler and steps are the run settings'; the ``train all`` parser is generated from these fields.
    None: the ``preset``'s value (network sizes, spacing, iterations, GAN start, L and s grids).

    >>> TrainAllPlan("data", "kidney", "out").resolved()["calibrate"]["noise_levels"]
    [250]
    >>> TrainAllPlan("data", "kidney", "out", val_fraction=1.0)
    Traceback (most recent call last):
    ...
    DiffusionAnomalyLib.errors.InputError: validation fraction must be in [0, 1) (got 1.0)
    """

    data: str = required(DATA)
    organ: str = redeclared(AutoencoderTraining, "organ", MISSING)
    out: str = required(OUT)
    preset: str = setting("tiny", Option(
        "network sizes and stage defaults: tiny (a CPU, the demo recipe: 3000 iterations per stage, 2 mm kidney / "
        "4 mm liver and brain patches, no GAN), tiny-fine (tiny on a latent grid twice as fine: the tiny-2x "
        "autoencoder, the tiny-3level denoiser on 16-voxel latent windows for 4500 iterations) or thesis (GPUs: the "
        "thesis networks at 1 mm kidney / 2 mm, 20000/20000/10000 iterations, GAN after 10000)", ALL, label="preset",
        choices=tuple(PRESETS)))
    spacing: float | None = setting(None, Option("patch spacing in mm (default: the preset's)", ALL, "MM",
                                                 label="spacing", low=0, low_open=True, high=100))
    iterations: int | None = setting(None, Option("iterations of each of the three networks (default: the preset's)",
                                                  ALL, "N", label="iterations", low=1))
    autoencoder_iterations: int | None = setting(None, Option(
        "autoencoder iterations (default: --iterations, else the preset's)", ALL, "N", label="autoencoder iterations",
        low=1))
    denoiser_iterations: int | None = setting(None, Option(
        "denoiser iterations (default: --iterations, else the preset's)", ALL, "N", label="denoiser iterations",
        low=1))
    classifier_iterations: int | None = setting(None, Option(
        "classifier iterations (default: --iterations, else the preset's)", ALL, "N", label="classifier iterations",
        low=1))
    adversarial_start: int | None = redeclared(AutoencoderTraining, "adversarial_start", None)
    synthetic_unhealthy: int = setting(0, Option(
        "pad the classifier's training with N synthesised unhealthy structures: the training split's own lesions, "
        "rotated and moved into its healthy structures (synthesize --method paste); never from the validation "
        "split, which calibrates as before", ALL, "N", label="synthetic unhealthy", low=0, high=10000))
    synthesizer: bool = setting(False, Option(
        "also train the lesion synthesizer into the bundle (train synthesizer, after the calibration, on the "
        "training split), for synthesize --method diffusion; detection never loads it", ALL, label="synthesizer"))
    synthesizer_iterations: int | None = setting(None, Option(
        "lesion synthesizer iterations, with --synthesizer (default: the preset's, tiny 3000, thesis 20000)", ALL, "N",
        label="synthesizer iterations", low=1))
    val_fraction: float = setting(0.2, Option(
        "share of cases held out for validation and calibration (deterministic, by case name)", ALL, "F",
        label="validation fraction", low=0, high=1, high_open=True))
    cases: str | None = setting(None, Option(
        "use only the cases listed, one name (or split/name) per line", ALL, "FILE", label="cases"))
    validation_cases: str | None = setting(None, Option(
        "the validation cases, one name per line (default: a val/ split folder, else --val-fraction)", ALL, "FILE",
        label="validation cases"))
    labels: str | None = setting(None, Option(
        "labels file: case,structure,label with structure the segmentation file's name (default: DATA/labels.csv, "
        "else derived from the lesion labels)", ALL, "CSV", label="labels"))
    totalseg: str | None = setting(None, Option(
        "organ masks from TotalSegmentator: DIR/<case>/ or DIR/<case>.nii.gz (default: the dataset's own)", ALL,
        "DIR", label="totalseg"))
    sampler: str = redeclared(RunSettings, "sampler", SAMPLER_DEFAULTS["sampler"], commands=ALL,
                              help="calibration: sampler")
    steps: int = redeclared(RunSettings, "steps", SAMPLER_DEFAULTS["steps"], commands=ALL,
                            help="calibration: denoising steps")
    noise_levels: tuple[int, ...] | None = redeclared(
        CalibrationGrid, "noise_levels", None, help="calibration: L values (default: the preset's: tiny 250, thesis "
        "100 250 500)")
    guidance_values: tuple[float, ...] | None = redeclared(
        CalibrationGrid, "guidance_values", None, help="calibration: s values (default: tiny 0 100, thesis 0..2000 "
        "by 200; s > 0 only when the classifier's validation AUC is >= 0.7)")
    threshold_scales: tuple[float, ...] = redeclared(CalibrationGrid, "threshold_scales", (0.8, 0.9, 1.0, 1.15, 1.3))
    min_lesion_ml_values: tuple[float, ...] = redeclared(CalibrationGrid, "min_lesion_ml_values", (0.0, 0.5, 1.0, 2.0))
    grow_to_values: tuple[float, ...] = redeclared(CalibrationGrid, "grow_to_values", (1.0, 0.7))
    max_fp_per_organ: float | None = redeclared(CalibrationGrid, "max_fp_per_organ", 1.0)
    hybrid_scales: tuple[float, ...] = redeclared(CalibrationGrid, "hybrid_scales", HYBRID_SCALES)
    floor_contrast_values: tuple[float, ...] = redeclared(CalibrationGrid, "floor_contrast_values", ())
    objective: str = redeclared(CalibrationGrid, "objective", "size-balanced")
    reference_values: tuple[str, ...] | None = redeclared(CalibrationGrid, "reference_values", None)
    samples_values: tuple[int, ...] | None = redeclared(CalibrationGrid, "samples_values", None)
    median_filter_values: tuple[int, ...] | None = redeclared(CalibrationGrid, "median_filter_values", None)
    seed: int = redeclared(TrainingRun, "seed", 0)
    device: str = redeclared(TrainingRun, "device", "auto")
    precision: str = redeclared(TrainingRun, "precision", "auto")  # the networks' training steps and calibration
    name: str | None = redeclared(AutoencoderTraining, "name", None, kw_only=True)
    version: str = redeclared(AutoencoderTraining, "version", "0.1.0", kw_only=True)
    demo: bool = redeclared(AutoencoderTraining, "demo", False, kw_only=True)
    real_data: bool | None = setting(None, Option(
        "the cases are real scans (the model card says so; default: unknown, or synthetic for phantoms of the "
        "phantom command)", ALL, label="real data", negative=_SYNTHETIC), kw_only=True)
    install: str | None = setting(None, Option(
        "when done, copy the bundle into this models folder as MODELS_DIR/<name>/ and list it with its SHA-256 in "
        "MODELS_DIR/manifest.json (make demo-models: Resources/Models)", ALL, "MODELS_DIR", label="install"),
        kw_only=True)

    def __post_init__(self) -> None:
        found = problems(self)
        if self.synthesizer_iterations is not None and not self.synthesizer:
            found.append("--synthesizer-iterations applies with --synthesizer")
        if found:
            raise InputError("; ".join(found))

    def resolved(self) -> dict:
        """The settings each stage depends on (a change to one of them after the stage ran is refused)."""
        p = PRESETS[self.preset]
        its = {s: int(getattr(self, f"{s}_iterations") or self.iterations or p["iterations"][s])
               for s in ("autoencoder", "denoiser", "classifier")}
        adv = self.adversarial_start if self.adversarial_start is not None else p["adversarial_start"]
        return {
            "prepare": {"data": str(Path(self.data).resolve()), "organ": self.organ, "val_fraction": self.val_fraction,
                        "cases": self.cases, "validation_cases": self.validation_cases, "labels": self.labels,
                        "totalseg": self.totalseg},
            "autoencoder": {"network": p.get("autoencoder_network", p["network"]),
                            "spacing": self.spacing or p["spacing"][self.organ],
                            "iterations": its["autoencoder"], "batch": p["batch"]["autoencoder"],
                            "adversarial_start": adv, "seed": self.seed},
            "denoiser": {"network": p.get("denoiser_network", p["network"]), "iterations": its["denoiser"],
                         "batch": p["batch"]["denoiser"],
                         **({"latent_crop": p["latent_crop"]} if "latent_crop" in p else {})},
            "classifier": {"iterations": its["classifier"], "batch": p["batch"]["classifier"],
                           "lr": p["classifier_lr"],
                           **({"synthetic_unhealthy": self.synthetic_unhealthy} if self.synthetic_unhealthy else {})},
            **({"synthesizer": {"network": p["network"], "batch": p["batch"]["denoiser"],
                                "iterations": int(self.synthesizer_iterations or p["iterations"]["synthesizer"])}}
               if self.synthesizer else {}),
            "calibrate": {"sampler": self.sampler, "steps": self.steps,
                          "noise_levels": [int(v) for v in (self.noise_levels or p["noise_levels"])],
                          "guidance": [float(v) for v in (self.guidance_values or p["guidance"])],
                          **{k: _listed(getattr(self, k)) for k in (
                              "threshold_scales", "min_lesion_ml_values", "grow_to_values")},
                          "max_fp_per_organ": self.max_fp_per_organ, "objective": self.objective,
                          "hybrid_scales": [float(c) for c in self.hybrid_scales if c > 0],
                          "floor_contrast_values": [float(f) for f in self.floor_contrast_values],
                          **{k: _listed(getattr(self, k)) for k in (
                              "reference_values", "samples_values", "median_filter_values")}},
            "bundle": {"name": self.name, "version": self.version, "demo": self.demo,
                       **({"real_data": self.real_data} if self.real_data is not None else {})},
        }


def latent_shape(resolved: dict, organ: str) -> list[int]:
    """The latent grid (Z Y X) of one ROI: the organ's ROI at the autoencoder stage's spacing, over its downsampling."""
    from DiffusionAnomalyLib.detection.presets import get_preset
    from DiffusionAnomalyLib.models.nets.autoencoder import autoencoder_config

    ae = resolved["autoencoder"]
    preset = get_preset(organ).with_overrides({"spacing_mm": [ae["spacing"]] * 3})
    down = autoencoder_config(ae["network"], in_channels=len(preset.channels)).downsampling
    return [s // down for s in preset.roi_size_voxels[::-1]]


def latent_crop(resolved: dict, organ: str) -> tuple[int, ...] | None:
    """The denoiser's training window (Z Y X latent voxels): the preset's ``latent_crop`` clipped to
    :func:`latent_shape` (an axis shorter than the window is taken whole); None: whole latents."""
    crop = resolved["denoiser"].get("latent_crop")
    if not crop:
        return None
    return tuple(min(int(c), s) for c, s in zip(crop, latent_shape(resolved, organ), strict=True))


def _listed(values: tuple | None) -> list | None:
    """A grid as the stages record stores it (a JSON list; None stays None)."""
    return None if values is None else list(values)


#: What a train all work folder holds (anything else there is a user's and refused).
WORK_ENTRIES = {*STAGES, *(f"{s}.work" for s in STAGES), "data", "cases", "sweep", "calibrated", "validation-latents",
                "padded",
                "stages.json", "prepared.json", ".stages.json.tmp"}


def _is_work_folder(folder: Path) -> bool:
    return all(e.name in WORK_ENTRIES or e.name.startswith(".run-") for e in folder.iterdir())


def active_stages(resolved: dict) -> list[str]:
    """The stages this plan runs (``synthesizer`` only when asked for), for the ``[k/n]`` progress lines."""
    return [s for s in STAGES if s in resolved]


def bundle_name(plan: TrainAllPlan) -> str:
    """The bundle's name: ``--name``, else ``<organ>-model`` (``<organ>-demo`` with ``--demo``)."""
    return plan.name or f"{plan.organ}-{'demo' if plan.demo else 'model'}"


def check_plan(plan: TrainAllPlan) -> None:
    """Everything that can be checked before hours of training: the bundle's name and version (one folder name
    each), ``--out`` and its work folder (new, empty or this command's own, never a user's folder or inside the
    data), and ``--install`` (a writable models folder, a valid manifest, ``<name>/`` absent or a bundle)."""
    from DiffusionAnomalyLib.imaging.outputs import check_name, check_output_dir
    from DiffusionAnomalyLib.models.bundle import check_install

    name = check_name(bundle_name(plan), "--name")
    check_name(str(plan.version), "--version")
    inputs = [plan.data, plan.labels, plan.cases, plan.validation_cases, plan.totalseg]
    check_output_dir(plan.out, inputs, resume=True, command="train all")
    work = Path(f"{plan.out}.work")
    check_output_dir(work, inputs, option="--out's work folder", resume=True, own=_is_work_folder)
    if plan.install:
        if Path(plan.install).resolve() in (Path(plan.out).resolve(), work.resolve()):
            raise InputError(f"{plan.install}: --install is --out or its work folder; give the models folder")
        check_install(plan.install, name)


# -- the record -------------------------------------------------------------------------------------
class Stages:
    """``OUT.work/stages.json``: each finished stage, its settings and wall time. Under torchrun only rank 0 writes it;
    the other ranks wait for rank 0 to record a stage before they go on (:meth:`wait_for`)."""

    def __init__(self, work: Path, main: bool = True) -> None:
        self.path = work / "stages.json"
        self.main = main
        self.done: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def finished(self, stage: str, settings: dict) -> bool:
        entry = self.done.get(stage)
        if entry is None:
            return False
        if entry["settings"] != json.loads(json.dumps(settings)):
            changed = sorted(k for k in set(entry["settings"]) | set(settings)
                             if entry["settings"].get(k) != settings.get(k))
            raise InputError(f"{self.path.parent}: the {stage} stage ran with other settings ({', '.join(changed)}); "
                             f"add --from-stage {stage} to redo it and the stages after it, or use another --out")
        return True

    def record(self, stage: str, settings: dict, seconds: float, **info) -> None:
        self.done[stage] = {"settings": settings, "seconds": round(seconds, 1), **info}
        if not self.main:
            return
        tmp = self.path.with_name(".stages.json.tmp")
        tmp.write_text(json.dumps(self.done, indent=2) + "\n")
        os.replace(tmp, self.path)

    def wait_for(self, stage: str, poll_s: float = 1.0) -> None:
        """(Ranks other than 0) block until rank 0 has recorded ``stage``, then read every record."""
        while True:
            if self.path.is_file():
                done = json.loads(self.path.read_text())
                if stage in done:
                    self.done = done
                    return
            time.sleep(poll_s)

    def forget_from(self, stage: str, work: Path) -> None:
        """Drop ``stage`` and every later one (their outputs too)."""
        for s in STAGES[STAGES.index(stage):]:
            self.done.pop(s, None)
            for name in (s, f"{s}.work"):
                if (work / name).exists():
                    shutil.rmtree(work / name)
        if stage == "prepare":
            for name in ("data", "cases", "sweep", "calibrated", "validation-latents"):
                if (work / name).exists():
                    shutil.rmtree(work / name)
        if STAGES.index(stage) <= STAGES.index("calibrate"):
            for name in ("sweep", "calibrated", "validation-latents", *(
                    ("padded",) if STAGES.index(stage) <= STAGES.index("classifier") else ())):
                if (work / name).exists():
                    shutil.rmtree(work / name)
        self.path.write_text(json.dumps(self.done, indent=2) + "\n")
