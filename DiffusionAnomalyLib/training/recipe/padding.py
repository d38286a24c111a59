"""``train all --synthetic-unhealthy N``: the classifier's training set padded with synthesised unhealthy structures.

Each synthetic structure is a healthy structure of the **training** split with a lesion pasted in
(:func:`~DiffusionAnomalyLib.synthesis.synthesize.synthesize`, ``paste``): the lesion's map is one of the training
split's own lesions (a connected component of a training case's ``lesions.nii.gz``), rotated about the axial axis
by a drawn angle, mirrored at random, resampled onto the host's voxel spacing and placed with its centroid at a
drawn point deep inside the host structure (:func:`~DiffusionAnomalyLib.synthesis.paste.place_template`). Nothing of
the validation split is read, so the calibration on it stays untouched. Seeds: ``seed + i`` for the i-th structure.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from DiffusionAnomalyLib.errors import InputError

#: The most synthetic structures one ``train all`` adds.
MAX_SYNTHETIC = 10000


@dataclass
class Donor:
    """One training lesion: its mask cropped to its box (z y x) and the voxel spacing (x y z, mm)."""

    case: str
    mask: np.ndarray
    spacing_xyz: tuple[float, float, float]


def training_lesions(train: Path, rows: list[dict]) -> list[Donor]:
    """Every connected lesion (26-connected) of the training cases that have an unhealthy structure."""
    donors = []
    for case in sorted({r["case"] for r in rows if r["label"] == "unhealthy"}):
        path = train / case / "lesions.nii.gz"
        if not path.is_file():
            continue
        image = sitk.ReadImage(str(path))
        labels, n = ndimage.label(sitk.GetArrayViewFromImage(image) > 0, structure=np.ones((3, 3, 3), bool))
        for k, box in enumerate(ndimage.find_objects(labels), start=1):
            part = labels[box] == k  # its own region only, not another one inside its box
            donors.append(Donor(case, part, tuple(float(s) for s in image.GetSpacing())))
    return donors


def moved(donor: Donor, spacing_xyz: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """The donor's mask rotated about the axial (z) axis by a drawn angle, mirrored at random, on ``spacing_xyz``."""
    mask = ndimage.rotate(donor.mask.astype(np.float32), float(rng.uniform(0, 360)), axes=(1, 2), order=1,
                          reshape=True) > 0.5
    for axis in (1, 2):
        if rng.random() < 0.5:
            mask = np.flip(mask, axis)
    zoom = [d / s for d, s in zip(donor.spacing_xyz[::-1], spacing_xyz[::-1], strict=True)]
    return ndimage.zoom(mask.astype(np.float32), zoom, order=1) > 0.5 if not np.allclose(zoom, 1) else mask


def padded_training_set(train: Path, out: Path, organ: str, n: int, seed: int,
                        progress: Callable[[str], None] = print) -> Path:
    """``out``: the training split's cases (links) and ``n`` synthetic cases ``synthetic-<i>``, each with one
    unhealthy structure (the only row of its ``labels.csv`` entries). Restartable: synthetic cases already there
    are kept. Raises :class:`InputError` when the split has no healthy structure or no lesion to move."""
    from DiffusionAnomalyLib.training.data import read_labels

    rows = read_labels(train)
    healthy = [(r["case"], r["structure"]) for r in rows if r["label"] == "healthy"]
    donors = training_lesions(train, rows)
    if not healthy or not donors:
        raise InputError(f"--synthetic-unhealthy {n}: the training split has {len(healthy)} healthy structure(s) and "
                         f"{len(donors)} lesion(s) in its lesions.nii.gz files; padding needs both")
    out.mkdir(parents=True, exist_ok=True)
    for case in sorted({r["case"] for r in rows}):
        if not (out / case).exists():
            (out / case).symlink_to((train / case).resolve(), target_is_directory=True)
    added = []
    for i in range(n):
        name = f"synthetic-{i:05d}"
        rng = np.random.default_rng(seed + i)
        host, structure = healthy[rng.integers(len(healthy))]
        if not (out / name / "synthesis.json").is_file():
            _synthesise(train / host, structure, donors, organ, seed + i, rng, out / name)
        added.append((name, structure))
        if (i + 1) % max(1, n // 10) == 0:
            progress(f"padding: {i + 1} of {n} synthetic unhealthy structures")
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "structure", "label"])
        w.writerows([r["case"], r["structure"], r["label"]] for r in rows)
        w.writerows([name, structure, "unhealthy"] for name, structure in added)
    return out


def _synthesise(host: Path, structure: str, donors: list[Donor], organ: str, seed: int, rng: np.random.Generator,
                dest: Path) -> None:
    """One synthetic case: a drawn donor lesion moved into ``structure`` of ``host``, pasted, written to ``dest``."""
    from DiffusionAnomalyLib.detection.presets import get_preset
    from DiffusionAnomalyLib.synthesis.options import SynthesisOptions
    from DiffusionAnomalyLib.synthesis.paste import place_template
    from DiffusionAnomalyLib.synthesis.synthesize import SynthesisRequest, synthesize

    mask_image = sitk.ReadImage(str(host / "segmentations" / f"{structure}.nii.gz"))
    organ_mask = sitk.GetArrayFromImage(mask_image) > 0
    spacing = tuple(float(s) for s in mask_image.GetSpacing())
    for _ in range(10):
        donor = donors[rng.integers(len(donors))]
        try:
            lesion = place_template(organ_mask, spacing, moved(donor, spacing, rng), rng)
            break
        except InputError:  # too large for this structure: draw another lesion
            continue
    else:
        raise InputError(f"{host.name}/{structure}: none of 10 drawn training lesions fits inside it")
    images = [host / f"{channel}.nii.gz" for channel in get_preset(organ).channels]
    with tempfile.TemporaryDirectory(prefix="da-padding-") as tmp:
        lesion_image = sitk.GetImageFromArray(lesion.astype(np.uint8))
        lesion_image.CopyInformation(mask_image)
        sitk.WriteImage(lesion_image, str(Path(tmp) / "lesion.nii.gz"))
        found = synthesize(SynthesisRequest(
            images=tuple(str(p) for p in images), organ=organ, out=str(Path(tmp) / "out"),
            lesion_map=str(Path(tmp) / "lesion.nii.gz"), totalseg=str(host / "segmentations"),
            options=SynthesisOptions(method="paste", seed=seed)))
        record = json.loads((found.cases[0] / "synthesis.json").read_text())
        record["padding"] = {"host": host.name, "structure": structure, "donor_case": donor.case,
                             "note": "train all --synthetic-unhealthy: the lesion map was a moved training lesion "
                                     "(not kept); the command below cannot be rerun as it is"}
        (found.cases[0] / "synthesis.json").write_text(json.dumps(record, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(found.cases[0]), dest)
