"""Helpers the tests share that no production code calls (moved out of the library, issue 36): a whole-volume
median filter, patches composed back onto an image, a volume sequence read back, a segment's centre in a scene."""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from DiffusionAnomalyLib.detection.roi import RoiPatch, _covered_region, _region_grid
from DiffusionAnomalyLib.errors import InputError


def median_filter_map(score: np.ndarray, size: int) -> np.ndarray:
    """Median filter of the anomaly map (liver paper scores); ``size`` <= 1 returns it unchanged."""
    return ndimage.median_filter(score, size=size) if size > 1 else score


def compose_patches(
    patches: Sequence[tuple[RoiPatch, np.ndarray]],
    reference: sitk.Image,
    *,
    mode: str = "max",
    fill: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Put patch-space arrays back onto ``reference``'s grid.

    Returns ``(values, covered)``: a (z, y, x) float32 array and a bool array of voxels at least
    one patch covers. Overlaps combine by ``mode`` ("max" or "mean").
    """
    if mode not in ("max", "mean"):
        raise InputError(f"unknown composition mode {mode!r}; use 'max' or 'mean'")
    shape = tuple(reversed(reference.GetSize()))
    acc = np.full(shape, np.nan if mode == "max" else 0.0, dtype=np.float32)
    count = np.zeros(shape, dtype=np.int32)
    for patch, values in patches:
        if tuple(values.shape) != patch.shape_zyx:
            raise InputError(f"patch array shape {values.shape} does not match its grid {patch.shape_zyx}")
        region = _covered_region(patch, reference)
        if region is None:
            continue
        lo, hi = region
        sub = _region_grid(reference, lo, hi)
        resampled = sitk.Resample(patch.image(values), sub, sitk.Transform(), sitk.sitkLinear, float("nan"))
        res = sitk.GetArrayFromImage(resampled)
        sl = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo[::-1], hi[::-1], strict=True))
        valid = np.isfinite(res)
        if mode == "max":
            acc[sl] = np.where(valid, np.fmax(acc[sl], res), acc[sl])
        else:
            acc[sl] += np.where(valid, res, 0.0)
        count[sl] += valid
    covered = count > 0
    if mode == "mean":
        acc[covered] /= count[covered]
    acc[~covered] = fill
    return acc, covered


def read_volume_sequence(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, str], sitk.Image]:
    """A ``.seq.nrrd`` written by :func:`write_volume_sequence`: frames (T, z, y, x) float32, the header fields
    (``key: value`` and ``key:=value``), and a 3D image carrying the frames' grid (for checks and tools)."""
    p = Path(path)
    raw = p.read_bytes()
    end = raw.find(b"\n\n")
    if not raw.startswith(b"NRRD") or end < 0:
        raise InputError(f"{p}: not a NRRD file")
    fields: dict[str, str] = {}
    for line in raw[:end].decode("ascii").splitlines()[1:]:
        if line.startswith("#") or not line:
            continue
        key, sep, value = line.partition(":=")
        if not sep:
            key, _, value = line.partition(": ")
        fields[key] = value
    if fields.get("kinds") != "domain domain domain list" or fields.get("type") != "float":
        raise InputError(f"{p}: not a float volume sequence with the list axis last")
    nx, ny, nz, nt = (int(v) for v in fields["sizes"].split())
    data = np.frombuffer(gzip.decompress(raw[end + 2:]), dtype="<f4").reshape(nt, nz, ny, nx)
    cols = [np.array([float(v) for v in c.strip("()").split(",")]) for c in fields["space directions"].split()[:3]]
    spacing = [float(np.linalg.norm(c)) for c in cols]
    image = sitk.Image([nx, ny, nz], sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(np.column_stack([c / s for c, s in zip(cols, spacing, strict=True)]).ravel()))
    image.SetOrigin(tuple(float(v) for v in fields["space origin"].strip("()").split(",")))
    return data.astype(np.float32), fields, image


def lesion_centre_ras(segmentation_node, segment_index: int) -> tuple[float, float, float]:
    """The RAS centre of one segment (for centring the slice views on a clicked lesion row)."""
    seg = segmentation_node.GetSegmentation()
    sid = seg.GetNthSegmentID(segment_index)
    centre = segmentation_node.GetSegmentCenterRAS(sid)
    return tuple(float(c) for c in centre)
