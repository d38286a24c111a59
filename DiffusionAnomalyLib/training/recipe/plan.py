"""``train all``'s plan: the network presets, :class:`TrainAllPlan` (every setting, resolved per stage),
the checks before training, and :class:`Stages` (``OUT.work/stages.json``: what is done)."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from DiffusionAnomalyLib.errors import InputError

STAGES = ("prepare", "autoencoder", "denoiser", "classifier", "calibrate", "bundle")

#: Network size presets: ``tiny`` trains on a CPU (the demo bundles' recipe), ``thesis`` has the thesis sizes
#: (kidney thesis App. A) for GPUs. Spacing in mm per organ; iterations and batch sizes per stage.
PRESETS = {
    "tiny": {"network": "tiny", "spacing": {"kidney": 2.0, "liver": 4.0, "brain": 4.0},
             "iterations": {"autoencoder": 3000, "denoiser": 3000, "classifier": 3000},
             "batch": {"autoencoder": 2, "denoiser": 8, "classifier": 16}, "adversarial_start": None,
             "classifier_lr": 3e-4, "noise_levels": [250], "guidance": [0.0, 100.0]},
    "thesis": {"network": "thesis-kidney", "spacing": {"kidney": 1.0, "liver": 2.0, "brain": 2.0},
               "iterations": {"autoencoder": 20000, "denoiser": 20000, "classifier": 10000},
               "batch": {"autoencoder": 2, "denoiser": 8, "classifier": 16}, "adversarial_start": 10000,
               "classifier_lr": 1e-4, "noise_levels": [100, 250, 500],
               "guidance": [float(s) for s in range(0, 2001, 200)]},
}


@dataclass
class TrainAllPlan:
    """Everything ``train all`` does, resolved from the command line (recorded in ``OUT.work/plan.json``)."""

    data: str
    organ: str
    out: str
    preset: str = "tiny"
    spacing: float | None = None  # None: the preset's for the organ
    iterations: dict = field(default_factory=dict)  # stage -> iterations (missing: the preset's)
    adversarial_start: int | None = None  # None: the preset's (tiny: never)
    val_fraction: float = 0.2
    cases: str | None = None  # a file listing the cases to use
    validation_cases: str | None = None  # a file listing the validation cases
    labels: str | None = None  # labels.csv (default DATA/labels.csv when present)
    totalseg: str | None = None  # TotalSegmentator folder: <totalseg>/<case>/ or <totalseg>/<case>.nii.gz
    sampler: str = "ddpm"
    steps: int = 50
    noise_levels: list | None = None
    guidance: list | None = None
    threshold_scales: list = field(default_factory=lambda: [0.8, 0.9, 1.0, 1.15, 1.3])
    min_lesion_ml_values: list = field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0])
    grow_to_values: list = field(default_factory=lambda: [1.0, 0.7])
    max_fp_per_organ: float | None = 1.0
    reference_values: list | None = None  # map options swept in calibration (None: the run setting's default)
    samples_values: list | None = None
    median_filter_values: list | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # the networks' training steps and the calibration (training_precision)
    name: str | None = None
    version: str = "0.1.0"
    demo: bool = False
    real_data: bool | None = None  # the user's word: real scans (True), synthetic (False), not said (None)
    install: str | None = None  # a models folder: the finished bundle is copied there and listed in its manifest

    def resolved(self) -> dict:
        """The settings each stage depends on (a change to one of them after the stage ran is refused)."""
        p = PRESETS[self.preset]
        its = {s: int(self.iterations.get(s) or p["iterations"][s]) for s in ("autoencoder", "denoiser", "classifier")}
        adv = self.adversarial_start if self.adversarial_start is not None else p["adversarial_start"]
        return {
            "prepare": {"data": str(Path(self.data).resolve()), "organ": self.organ, "val_fraction": self.val_fraction,
                        "cases": self.cases, "validation_cases": self.validation_cases, "labels": self.labels,
                        "totalseg": self.totalseg},
            "autoencoder": {"network": p["network"], "spacing": self.spacing or p["spacing"][self.organ],
                            "iterations": its["autoencoder"], "batch": p["batch"]["autoencoder"],
                            "adversarial_start": adv, "seed": self.seed},
            "denoiser": {"network": p["network"], "iterations": its["denoiser"], "batch": p["batch"]["denoiser"]},
            "classifier": {"iterations": its["classifier"], "batch": p["batch"]["classifier"],
                           "lr": p["classifier_lr"]},
            "calibrate": {"sampler": self.sampler, "steps": self.steps,
                          "noise_levels": [int(v) for v in (self.noise_levels or p["noise_levels"])],
                          "guidance": [float(v) for v in (self.guidance or p["guidance"])],
                          "threshold_scales": self.threshold_scales, "min_lesion_ml_values": self.min_lesion_ml_values,
                          "grow_to_values": self.grow_to_values, "max_fp_per_organ": self.max_fp_per_organ,
                          "reference_values": self.reference_values, "samples_values": self.samples_values,
                          "median_filter_values": self.median_filter_values},
            "bundle": {"name": self.name, "version": self.version, "demo": self.demo,
                       **({"real_data": self.real_data} if self.real_data is not None else {})},
        }


#: What a train all work folder holds (anything else there is a user's and refused).
WORK_ENTRIES = {*STAGES, *(f"{s}.work" for s in STAGES), "data", "cases", "sweep", "calibrated", "validation-latents",
                "stages.json", "prepared.json", ".stages.json.tmp"}


def _is_work_folder(folder: Path) -> bool:
    return all(e.name in WORK_ENTRIES or e.name.startswith(".run-") for e in folder.iterdir())


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
            for name in ("sweep", "calibrated", "validation-latents"):
                if (work / name).exists():
                    shutil.rmtree(work / name)
        self.path.write_text(json.dumps(self.done, indent=2) + "\n")
