"""Organ masks: TotalSegmentator outputs (multilabel file or per-organ folder) and user masks.

TotalSegmentator writes its multilabel file with the class table inside the NIfTI header (a
Caret XML extension); :func:`read_multilabel_class_map` reads it, and a built-in table for the
``total`` and ``total_mr`` tasks is the fallback when a file has none. Running TotalSegmentator
itself is in :mod:`DiffusionAnomalyLib.imaging.totalseg`.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from DiffusionAnomalyLib.detection.presets import OrganPreset
from DiffusionAnomalyLib.errors import InputError, OrganMissingError
from DiffusionAnomalyLib.imaging.io import read_volume, require_same_grid

#: Label values of the structures we use, per TotalSegmentator v2 task (fallback only).
TOTALSEG_LABELS: dict[str, dict[str, int]] = {
    "total": {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5, "brain": 90},
    "total_mr": {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5, "brain": 50},
}


@dataclass
class OrganMask:
    """A binary mask (uint8 image on the input grid) of one structure, e.g. the right kidney."""

    structure: str
    side: str
    image: sitk.Image

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(sitk.GetArrayViewFromImage(self.image)))


@dataclass
class MaskSet:
    """The masks found for one organ preset, and a message for each structure that is missing."""

    masks: list[OrganMask]
    missing: dict[str, str]

    def union(self) -> np.ndarray:
        """Union of all masks as a (z, y, x) bool array."""
        arrays = [sitk.GetArrayViewFromImage(m.image) > 0 for m in self.masks]
        return np.logical_or.reduce(arrays) if arrays else np.zeros((0,), bool)


def read_multilabel_class_map(path: str | os.PathLike) -> dict[int, str]:
    """Read the label table TotalSegmentator stores in a NIfTI header extension ({} if none)."""
    p = Path(path)
    if not p.name.endswith((".nii", ".nii.gz")):
        return {}
    opener = gzip.open if p.name.endswith(".gz") else open
    with opener(p, "rb") as f:
        head = f.read(352)
        if len(head) < 352:
            return {}
        endian = "<" if struct.unpack("<i", head[:4])[0] in (348, 540) else ">"
        if struct.unpack(endian + "i", head[:4])[0] != 348 or head[348] == 0:
            return {}
        vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
        extensions = f.read(max(0, vox_offset - 352))
    labels: dict[int, str] = {}
    pos = 0
    while pos + 8 <= len(extensions):
        esize, _ecode = struct.unpack(endian + "ii", extensions[pos : pos + 8])
        if esize < 8:
            break
        text = extensions[pos + 8 : pos + esize].decode("utf-8", "replace")
        for key, name in re.findall(r'<Label Key="(\d+)"[^>]*>\s*<!\[CDATA\[([^\]]*)\]\]>', text):
            labels[int(key)] = name.strip()
        pos += esize
    return labels


def _binary(image: sitk.Image, label: int | None = None) -> sitk.Image:
    array = sitk.GetArrayViewFromImage(image)
    out = sitk.GetImageFromArray((array == label if label is not None else array > 0).astype(np.uint8))
    out.CopyInformation(image)
    return out


def split_left_right(mask: sitk.Image) -> dict[str, sitk.Image]:
    """Split a two-kidney binary mask into "left" and "right" by its two largest components.

    Sides are decided in patient coordinates (LPS: +x is the patient's left): with two components
    the one at larger x is the left; a single component is sided against the image's centre.
    """
    array = sitk.GetArrayViewFromImage(mask) > 0
    labels, n = ndimage.label(array, structure=np.ones((3, 3, 3)))
    if n == 0:
        return {}
    sizes = ndimage.sum(array, labels, index=range(1, n + 1))
    keep = (np.argsort(sizes)[::-1][:2] + 1).tolist()

    def centre_x(zyx: np.ndarray) -> float:
        return mask.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]])[0]

    xs = [centre_x(np.argwhere(labels == lab).mean(axis=0)) for lab in keep]
    if len(keep) == 2:
        sides = ("right", "left") if xs[0] < xs[1] else ("left", "right")
    else:
        mid = centre_x((np.array(array.shape) - 1) / 2.0)
        sides = ("left",) if xs[0] > mid else ("right",)
    out: dict[str, sitk.Image] = {}
    for side, lab in zip(sides, keep, strict=True):
        comp = sitk.GetImageFromArray((labels == lab).astype(np.uint8))
        comp.CopyInformation(mask)
        out[side] = comp
    return out


def _collect(preset: OrganPreset, found: dict[str, sitk.Image], source: str) -> MaskSet:
    masks, missing = [], {}
    for side, structure in preset.structures.items():
        image = found.get(structure)
        if image is None or not np.any(sitk.GetArrayViewFromImage(image)):
            what = f"{side} {preset.name}".strip()
            missing[structure] = (
                f"{source}: no {what} ({structure}) in the mask - removed (nephrectomy) or outside the field "
                "of view; it is skipped"
            )
            continue
        masks.append(OrganMask(structure, side, image))
    if not masks:
        raise OrganMissingError(
            f"{source}: none of {sorted(preset.structures.values())} is present in the mask; nothing to process"
        )
    return MaskSet(masks, missing)


def load_totalseg_masks(
    source: str | os.PathLike,
    reference: sitk.Image,
    preset: OrganPreset,
    class_map: dict[int, str] | None = None,
) -> MaskSet:
    """Read TotalSegmentator output for ``preset``'s structures.

    ``source`` is either a multilabel file (class table from its header, else ``class_map``, else
    the built-in table of ``preset.totalseg_task``) or a folder of per-structure binary files
    ``<structure>.nii.gz`` as TotalSegmentator writes without ``--ml``.
    """
    src = Path(source)
    found: dict[str, sitk.Image] = {}
    if src.is_dir():
        for structure in preset.structures.values():
            for ext in (".nii.gz", ".nii", ".nrrd", ".mha"):
                f = src / f"{structure}{ext}"
                if f.exists():
                    image = read_volume(f)
                    require_same_grid(reference, image, "the image", str(f))
                    found[structure] = _binary(image)
                    break
        if not found:
            raise InputError(
                f"{src}: no per-organ mask files {[s + '.nii.gz' for s in preset.structures.values()]} found"
            )
        return _collect(preset, found, str(src))
    image = read_volume(src)
    require_same_grid(reference, image, "the image", str(src))
    table = read_multilabel_class_map(src) or class_map or {}
    by_name = {v: k for k, v in table.items()} or TOTALSEG_LABELS.get(preset.totalseg_task, {})
    for structure in preset.structures.values():
        if structure in by_name:
            found[structure] = _binary(image, by_name[structure])
    return _collect(preset, found, str(src))


def load_user_mask(
    path: str | os.PathLike, reference: sitk.Image, preset: OrganPreset, label: int | None = None
) -> MaskSet:
    """Read a user-supplied organ mask: nonzero voxels, or voxels equal to ``label``.

    For a paired organ (kidneys) the mask is split into left and right by its two largest
    connected components, sided in patient coordinates.
    """
    image = read_volume(path)
    require_same_grid(reference, image, "the image", str(path))
    check_mask_labels(image, path, preset, label)
    binary = _binary(image, label)
    if not np.any(sitk.GetArrayViewFromImage(binary)):
        what = f"label {label}" if label is not None else "nonzero voxels"
        raise InputError(f"{path}: the mask is empty (no {what})")
    if preset.paired:
        sides = split_left_right(binary)
        found = {preset.structures[side]: img for side, img in sides.items()}
    else:
        found = {next(iter(preset.structures.values())): binary}
    return _collect(preset, found, str(path))


def _label_list(values: np.ndarray, names: dict[int, str]) -> str:
    shown = [f"{int(v)} ({names[int(v)]})" if int(v) in names else f"{int(v)}" for v in values[:20]]
    return ", ".join(shown) + (f" ... ({len(values)} labels)" if len(values) > 20 else "")


def check_mask_labels(image: sitk.Image, path: str | os.PathLike, preset: OrganPreset, label: int | None) -> None:
    """Refuse a mask whose values do not say which voxels are the organ: a multilabel file (more than one label;
    two for a paired organ) without ``label``, non-integer values, or a ``label`` the file does not hold. The
    message lists the file's labels (with TotalSegmentator's names when its header has them)."""
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f":
        finite = array[np.isfinite(array)]
        if finite.size and not np.array_equal(finite, np.round(finite)):
            raise InputError(f"{path}: the mask holds non-integer values ({float(finite.min()):g} to "
                             f"{float(finite.max()):g}; a probability map?); give a label or binary mask")
    if array.dtype.kind in "iu" and array.dtype.itemsize <= 2:
        offset = int(array.min())
        counts = np.bincount((np.asarray(array, dtype=np.int64) - offset).ravel())
        values = np.flatnonzero(counts) + offset
    else:
        values = np.unique(array)
    values = values[values != 0]
    names = read_multilabel_class_map(path) if Path(path).is_file() else {}
    if label is None:
        allowed = 2 if preset.paired else 1
        if len(values) > allowed:
            raise InputError(f"{path}: a multilabel file ({len(values)} labels: {_label_list(values, names)}) given "
                             f"as the {preset.name} mask; say which label is the {preset.name} with --mask-label N "
                             "(or give TotalSegmentator output with --totalseg)")
    elif label not in {int(v) for v in values}:
        raise InputError(f"{path}: the mask is empty (no label {label}); --mask-label {label} is not among its labels "
                         f"{_label_list(values, names) or 'none (the mask is empty)'}")


def mask_from_skull_stripped(channels: list[sitk.Image], preset: OrganPreset) -> MaskSet:
    """Brain mask of a skull-stripped scan: voxels nonzero in any channel, largest component, holes filled."""
    arrays = [sitk.GetArrayViewFromImage(c) for c in channels]
    nonzero = np.logical_or.reduce([a != 0 for a in arrays])
    labels, n = ndimage.label(nonzero)
    if n == 0:
        raise InputError("the image is zero everywhere; it cannot be a skull-stripped scan")
    largest = np.argmax(ndimage.sum(nonzero, labels, index=range(1, n + 1))) + 1
    brain = ndimage.binary_fill_holes(labels == largest).astype(np.uint8)
    image = sitk.GetImageFromArray(brain)
    image.CopyInformation(channels[0])
    structure = next(iter(preset.structures.values()))
    return MaskSet([OrganMask(structure, "", image)], {})


def load_organ_masks(images: Sequence[str], reference: sitk.Image, preset: OrganPreset, *, mask: str | None = None,
                     mask_label: int | None = None, totalseg: str | None = None,
                     skull_stripped: bool = False) -> MaskSet:
    """The organ masks of a scan (``images``, read as ``reference``) from one source: skull-stripped (the brain is
    the scan's nonzero voxels), a mask file (``mask_label``: its organ's value), TotalSegmentator's output, or, with
    none given, TotalSegmentator run into a temporary folder that never outlives the call."""
    if skull_stripped:
        from DiffusionAnomalyLib.imaging.io import read_channels

        return mask_from_skull_stripped(read_channels(list(images)), preset)
    if mask:
        return load_user_mask(mask, reference, preset, mask_label)
    if totalseg:
        return load_totalseg_masks(totalseg, reference, preset)
    from DiffusionAnomalyLib.imaging.totalseg import check_available, run_totalsegmentator

    check_available(preset)
    tmp = Path(tempfile.mkdtemp(prefix="da-totalseg-"))
    try:
        return load_totalseg_masks(run_totalsegmentator(images[0], tmp, preset), reference, preset)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
