"""Evaluation datasets: find the cases of a folder, their images, reference lesions and organ masks.

Layouts (one sub-folder per case; the first that fits a folder is used):

- **phantom** (what ``diffusion-anomaly phantom --cases N`` writes): ``<case>/<channel>.nii.gz``
  (``ct``; brain ``t1n t1c t2w t2f``), ``<case>/lesions.nii.gz`` (0 background, 1..K lesion
  instances), ``<case>/segmentations/`` (TotalSegmentator-style organ masks).
- **KiTS** (kidney): ``<case>/imaging.nii.gz`` and ``<case>/segmentation.nii.gz`` with 0 background,
  1 kidney, 2 tumour, 3 cyst; lesions = tumour and cyst, organ = every nonzero label.
- **BraTS** (brain): ``<case>/<case>-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f`` and ``<case>-seg.nii.gz``
  (0 background, 1 necrosis, 2 oedema, 3 enhancing tumour); lesion = every nonzero label; the
  scans are skull-stripped, so the brain mask is their nonzero voxels.

Problems (no reference labels, labels with values the layout does not define, image and label on
different grids) are recorded per case; such cases are listed in the report and skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from DiffusionAnomalyLib.detection.presets import OrganPreset
from DiffusionAnomalyLib.errors import DiffusionAnomalyError, InputError
from DiffusionAnomalyLib.imaging.io import read_volume, same_grid

#: Allowed reference label values per layout (None: any non-negative integer, e.g. lesion instances).
LABEL_VALUES = {"phantom": None, "kits": {0, 1, 2, 3}, "brats": {0, 1, 2, 3}}


@dataclass
class EvalCase:
    """One case: its inputs, reference labels and how to get its organ masks."""

    case_id: str
    layout: str
    inputs: list[Path]
    labels: Path | None
    totalseg: Path | None = None  # TotalSegmentator-style masks (phantom layout)
    organ_from_labels: bool = False  # KiTS: organ = nonzero reference labels
    skull_stripped: bool = False  # BraTS: brain = nonzero voxels
    problems: list[str] = field(default_factory=list)


def _phantom_case(folder: Path, preset: OrganPreset) -> EvalCase | None:
    inputs = [folder / f"{c}.nii.gz" for c in preset.channels]
    if not all(p.is_file() for p in inputs):
        return None
    labels = folder / "lesions.nii.gz"
    seg = folder / "segmentations"
    return EvalCase(folder.name, "phantom", inputs, labels if labels.is_file() else None,
                    totalseg=seg if seg.is_dir() else None, skull_stripped=preset.name == "brain" and not seg.is_dir())


def _kits_case(folder: Path, preset: OrganPreset) -> EvalCase | None:
    image = folder / "imaging.nii.gz"
    if not image.is_file():
        return None
    labels = folder / "segmentation.nii.gz"
    return EvalCase(folder.name, "kits", [image], labels if labels.is_file() else None, organ_from_labels=True)


def _brats_case(folder: Path, preset: OrganPreset) -> EvalCase | None:
    inputs = [folder / f"{folder.name}-{c}.nii.gz" for c in preset.channels]
    if not all(p.is_file() for p in inputs):
        return None
    labels = folder / f"{folder.name}-seg.nii.gz"
    return EvalCase(folder.name, "brats", inputs, labels if labels.is_file() else None, skull_stripped=True)


def discover_cases(data: str | os.PathLike, preset: OrganPreset) -> list[EvalCase]:
    """Every case folder of ``data`` in one of the layouts, sorted by name; folders that fit none are listed
    as cases with a problem."""
    root = Path(data)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for finder in (_phantom_case, _kits_case, _brats_case):
            case = finder(folder, preset)
            if case is not None:
                break
        else:
            case = EvalCase(folder.name, "unknown", [], None, problems=[
                f"no image in a known layout (phantom: {'/'.join(preset.channels)}.nii.gz; KiTS: imaging.nii.gz; "
                f"BraTS: {folder.name}-<sequence>.nii.gz)"])
        if case.labels is None and not case.problems:
            case.problems.append("no reference labels")
        cases.append(case)
    return cases


def reference_lesions(case: EvalCase, reference: sitk.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(lesion instance labels (z, y, x), organ mask from the labels or None) on the image grid.

    Raises :class:`DiffusionAnomalyError` with the reason when the labels cannot be used.
    """
    labels = read_volume(case.labels)
    diffs = same_grid(reference, labels)
    if diffs:
        raise DiffusionAnomalyError(f"image and label are on different grids ({'; '.join(diffs)})")
    arr = sitk.GetArrayFromImage(labels)
    if not np.all(np.equal(np.mod(arr, 1), 0)) or arr.min() < 0:
        raise DiffusionAnomalyError("labels are not non-negative integers")
    arr = arr.astype(np.int64)
    allowed = LABEL_VALUES[case.layout]
    if allowed is not None:
        unexpected = sorted(set(np.unique(arr).tolist()) - allowed)
        if unexpected:
            raise DiffusionAnomalyError(f"labels with values {unexpected} that the {case.layout} layout does not "
                                        f"define (expected {sorted(allowed)})")
    organ = None
    if case.layout == "kits":
        organ = (arr > 0).astype(np.uint8)
        lesion = arr >= 2
    elif case.layout == "brats":
        lesion = arr > 0
    else:
        return arr.astype(np.int32), organ
    instances, _ = ndimage.label(lesion, structure=np.ones((3, 3, 3), bool))
    return instances.astype(np.int32), organ
