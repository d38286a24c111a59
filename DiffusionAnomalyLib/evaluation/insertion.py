"""``evaluate --insert N``: detection scored on lesions synthesised into healthy scans (docs/synthesis.md#the-insertion-
benchmark). Each host case of the dataset gets N variants (``synthesize``: a lesion drawn inside its organ, diameter
from the incidental small-renal-mass mix, seeds recorded in each ``synthesis.json``); the variants are the dataset
that is then scored, per size class, beside the median baseline. Synthetic lesions are not real lesions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.evaluation.datasets import EvalCase
from DiffusionAnomalyLib.synthesis.options import SynthesisOptions
from DiffusionAnomalyLib.synthesis.synthesize import SynthesisRequest, synthesize


def check_host(case: EvalCase) -> None:
    """A host is a healthy scan with its organ masks: no reference lesion, masks from ``segmentations/`` or the
    skull-stripped brain."""
    if case.layout not in ("phantom", "brats") or not (case.totalseg or case.skull_stripped):
        raise InputError(f"{case.case_id}: --insert needs each case's image with its organ masks (phantom layout: "
                         "<case>/<channel>.nii.gz and <case>/segmentations/; or skull-stripped BraTS)")
    if case.labels is not None and np.any(sitk.GetArrayFromImage(sitk.ReadImage(str(case.labels)))):
        raise InputError(f"{case.labels}: the case has reference lesions; --insert takes healthy scans (a lesion "
                         "that is there but not inserted would count as a false positive)")


def inserted_dataset(cases: list[EvalCase], organ: str, out: Path, count: int, method: str = "paste",
                     bundle: str | None = None, seed: int = 0) -> Path:
    """``count`` variants per host in ``out/inserted-hosts/<host>/`` (kept when complete: a rerun resumes), linked as
    one dataset ``out/inserted/<host>-<variant>/``; returns that folder. Host ``i`` uses the seeds
    ``seed + i * count`` onwards, so every variant of the benchmark has its own."""
    for case in cases:
        check_host(case)
    folder, work = out / "inserted", out / "inserted-hosts"
    folder.mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(cases):
        host = work / case.case_id
        if not (host / "synthesis.csv").is_file():
            synthesize(SynthesisRequest(
                images=tuple(str(p) for p in case.inputs), organ=organ, out=str(host), overwrite=True,
                totalseg=str(case.totalseg) if case.totalseg else None, skull_stripped=case.skull_stripped,
                bundle=bundle if method == "diffusion" else None,
                options=SynthesisOptions(method=method, count=count, seed=seed + i * count)))
        for variant in sorted(d for d in host.iterdir() if d.is_dir()):
            link = folder / f"{case.case_id}-{variant.name}"
            if not link.exists():
                os.symlink(os.path.relpath(variant, folder), link, target_is_directory=True)
    return folder
