"""Training data: a dataset folder -> ROI patches with healthy/unhealthy labels, cached on disk.

Layout (what ``diffusion-anomaly phantom --cases N`` writes; documented in the README):

    DATA/labels.csv             case,structure,label[, ...]   label: healthy | unhealthy | excluded | unknown
    DATA/<case>/<channel>.nii.gz  e.g. ct.nii.gz, or t1n/t1c/t2w/t2f.nii.gz
    DATA/<case>/segmentations/<structure>.nii.gz   (or segmentations.nii.gz, TotalSegmentator multilabel)
    DATA/<case>/lesions.nii.gz    optional lesion labelmap (0 background), read only for lesion supervision

Patches come from :func:`DiffusionAnomalyLib.detection.pipeline.extract_case_patches`, the same ROI
extraction and normalisation used at inference.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from DiffusionAnomalyLib.detection.presets import OrganPreset
from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.imaging.io import read_channels
from DiffusionAnomalyLib.imaging.masks import load_totalseg_masks

LABELS = {"healthy": 0, "unhealthy": 1}


@dataclass
class PatchSet:
    """Patches (N, C, z, y, x) float32 with labels (0 healthy, 1 unhealthy) and ids 'case/structure'.

    ``lesions``: when asked for, (N, z, y, x) uint8 masks of the lesion voxels inside each structure.
    """

    x: np.ndarray
    labels: np.ndarray
    ids: list[str]
    warnings: list[str]
    lesions: np.ndarray | None = None

    def subset(self, keep: np.ndarray) -> PatchSet:
        return PatchSet(self.x[keep], self.labels[keep], [i for i, k in zip(self.ids, keep, strict=True) if k],
                        self.warnings, None if self.lesions is None else self.lesions[keep])

    def split(self, val_fraction: float) -> tuple[PatchSet, PatchSet]:
        """Deterministic split by case (all structures of a case on one side)."""
        val = self.val_mask(val_fraction)
        return self.subset(~val), self.subset(val)

    def val_mask(self, val_fraction: float) -> np.ndarray:
        """Which items are validation items (bool per item); see :meth:`split`."""
        def is_val(case_id: str) -> bool:
            return (zlib.crc32(case_id.split("/")[0].encode()) % 1000) / 1000.0 < val_fraction

        val = np.array([is_val(i) for i in self.ids])
        if val_fraction > 0 and (val.all() or not val.any()) and len(self.ids) > 1:
            val = np.zeros(len(self.ids), bool)
            val[-max(1, int(round(val_fraction * len(self.ids)))):] = True
        if val_fraction > 0:  # both labels on both sides when there are enough of each
            for label in np.unique(self.labels):
                of_label = self.labels == label
                if of_label.sum() >= 2 and not (val & of_label).any():
                    val[np.flatnonzero(of_label)[-1]] = True
                if of_label.sum() >= 2 and not (~val & of_label).any():
                    val[np.flatnonzero(of_label)[0]] = False
        return val


def read_labels(data_dir: Path) -> list[dict]:
    path = data_dir / "labels.csv"
    if not path.is_file():
        raise InputError(f"{data_dir}: no labels.csv (columns case,structure,label)")
    rows = list(csv.DictReader(path.read_text().splitlines()))
    if not rows:
        raise InputError(f"{path}: the labels file is empty")
    missing_cols = {"case", "structure", "label"} - set(rows[0])
    if missing_cols:
        raise InputError(f"{path}: missing column(s) {sorted(missing_cols)}")
    return rows


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` through a temporary file and a rename: a crash never leaves a half-written cache.

    The temporary name is unique to the call, so several processes writing the same cache (torchrun
    ranks) never rename each other's file; the last complete write wins.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cache_key(preset: OrganPreset) -> str:
    return hashlib.sha256(json.dumps(preset.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _lesion_patches(folder: Path, prepared, in_box: bool = False) -> np.ndarray:
    """Each structure's lesion voxels (``<case>/lesions.nii.gz`` > 0 inside the structure's mask, or anywhere in its
    patch with ``in_box``) on its patch."""
    from DiffusionAnomalyLib.detection.roi import extract_patch
    from DiffusionAnomalyLib.imaging.io import read_volume

    path = folder / "lesions.nii.gz"
    if not path.is_file():
        return np.zeros(prepared.masks.shape, np.uint8)
    image = read_volume(path)  # resampled onto each patch in physical space, as the image is
    return np.stack([(extract_patch(image, p, interpolator="nearest") > 0) & (in_box or m > 0)
                     for p, m in zip(prepared.patches, prepared.masks, strict=True)]).astype(np.uint8)


def load_patches(data_dir: str | Path, preset: OrganPreset, *, cache_dir: str | Path | None = None,
                 labels: tuple[str, ...] = ("healthy", "unhealthy"), lesions: bool = False,
                 lesions_in_box: bool = False) -> PatchSet:
    """All labelled structures of ``preset``'s organ in the dataset, as normalised patches.

    ``lesions``: also return each structure's lesion mask from ``<case>/lesions.nii.gz``; every case
    with an unhealthy structure must have that file (a case without one has no lesion voxels).
    ``lesions_in_box``: those masks hold every lesion voxel of the patch, not only those inside the structure.
    Raises :class:`InputError` for an empty dataset, labels naming cases that do not exist and
    case folders that have no label; a case whose mask lacks the organ is skipped with a warning.
    """
    from DiffusionAnomalyLib.detection.pipeline import extract_case_patches

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: dataset folder not found")
    rows = read_labels(data_dir)
    case_dirs = {p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not case_dirs:
        raise InputError(f"{data_dir}: the dataset is empty (no case folders)")
    labelled = {r["case"] for r in rows}
    no_folder = sorted(labelled - case_dirs)
    if no_folder:
        raise InputError(f"{data_dir}/labels.csv lists case(s) with no folder: {no_folder[:10]}")
    unlabelled = sorted(case_dirs - labelled)
    if unlabelled:
        raise InputError(f"{data_dir}: case folder(s) missing from labels.csv: {unlabelled[:10]}")
    cache = Path(cache_dir) / _cache_key(preset) if cache_dir else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    wanted = {s for s in preset.structures.values()}
    by_case: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["structure"] in wanted and r["label"] in labels:
            by_case.setdefault(r["case"], {})[r["structure"]] = r["label"]
    if lesions:
        no_truth = sorted(c for c, st in by_case.items() if "unhealthy" in st.values()
                          and not (data_dir / c / "lesions.nii.gz").is_file())
        if no_truth:
            raise InputError(f"{data_dir}: lesion supervision needs <case>/lesions.nii.gz for every case with an "
                             f"unhealthy structure; missing in {len(no_truth)}: {no_truth[:10]}")
    key = "lesions_box" if lesions_in_box else "lesions"  # the cached lesion masks' name
    xs, ys, ids, masks, warnings = [], [], [], [], []
    for case, structures in sorted(by_case.items()):
        folder = data_dir / case
        cached = cache / f"{case}.npz" if cache else None
        lesion_arrays, other = None, {}
        if cached and cached.is_file():
            with np.load(cached) as z:
                arrays, names = z["x"], list(z["names"])
                if lesions and key in z:
                    lesion_arrays = z[key]
                other = {k: z[k] for k in ("lesions", "lesions_box") if k in z and k != key}  # kept on a rewrite
        if (lesions and lesion_arrays is None) or not (cached and cached.is_file()):
            channels = read_channels([folder / f"{c}.nii.gz" for c in preset.channels])
            seg = folder / "segmentations" if (folder / "segmentations").is_dir() else folder / "segmentations.nii.gz"
            try:
                mask_set = load_totalseg_masks(seg, channels[0], preset)
            except InputError as exc:
                warnings.append(f"{case}: skipped ({exc})")
                continue
            warnings += [f"{case}: {m}" for m in mask_set.missing.values()]
            prepared = extract_case_patches(channels, mask_set, preset)
            arrays, names = prepared.x, [p.structure for p in prepared.patches]
            extra = {}
            if lesions:
                lesion_arrays = extra[key] = _lesion_patches(folder, prepared, lesions_in_box)
            if cached:
                save_npz(cached, x=arrays, names=np.array(names), **other, **extra)
        for i, (arr, name) in enumerate(zip(arrays, names, strict=True)):
            if name in structures:
                xs.append(arr.astype(np.float32))
                ys.append(LABELS[structures[name]])
                ids.append(f"{case}/{name}")
                if lesions:
                    masks.append(lesion_arrays[i])
    if not xs:
        raise InputError(f"{data_dir}: no usable {preset.name} patches with labels {list(labels)}"
                         + (f" ({'; '.join(warnings[:3])})" if warnings else ""))
    return PatchSet(np.stack(xs), np.array(ys, dtype=np.int64), ids, warnings, np.stack(masks) if lesions else None)
