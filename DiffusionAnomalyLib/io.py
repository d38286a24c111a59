"""Volume input/output with SimpleITK: reading with clear errors, geometry checks, atomic writes.

Supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) and DICOM series
folders. Images are returned as they are stored (ITK/LPS physical space); nothing is reoriented,
so origin, spacing and direction survive a read/write round trip (NIfTI keeps them at float32
precision, NRRD and MHA at double).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError, OutputError

#: Tolerances for "same grid": spacing/origin in mm, direction cosines unitless.
GEOMETRY_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4

_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd")


def _describe(image: sitk.Image) -> str:
    return f"size {image.GetSize()}, spacing {tuple(round(s, 4) for s in image.GetSpacing())}"


def read_volume(path: str | os.PathLike, *, allow_nan: bool = False, series_uid: str | None = None) -> sitk.Image:
    """Read one scalar 3D volume from a file or a DICOM series folder.

    Raises :class:`InputError` naming the file for: a missing path, an unreadable file, a 2D or
    4D image, a multi-component (vector) image, and NaN voxels (unless ``allow_nan``).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    try:
        image = _read_dicom_series(p, series_uid) if p.is_dir() else sitk.ReadImage(str(p))
    except InputError:
        raise
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise InputError(f"{p}: not a readable image ({first})") from None
    return check_volume(image, p, allow_nan=allow_nan)


def check_volume(image: sitk.Image, name: str | os.PathLike, *, allow_nan: bool = False) -> sitk.Image:
    """Validate that ``image`` is a scalar 3D volume with finite voxels; return it unchanged."""
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 2 or (dim == 3 and min(size) == 1):
        raise InputError(f"{name}: the image is 2D ({_describe(image)}); a 3D volume is needed")
    if dim == 4:
        raise InputError(
            f"{name}: the image is 4D ({_describe(image)}); give each channel/time point as its own 3D file"
        )
    if dim != 3:
        raise InputError(f"{name}: the image has {dim} dimensions; a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name}: the image has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "give each channel as its own scalar 3D file"
        )
    if not allow_nan and image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        n_bad = int(np.count_nonzero(~np.isfinite(sitk.GetArrayViewFromImage(image))))
        if n_bad:
            raise InputError(f"{name}: {n_bad} voxels are NaN or infinite; fix or mask them before running")
    return image


def _read_dicom_series(folder: Path, series_uid: str | None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    ids = list(reader.GetGDCMSeriesIDs(str(folder)) or ())
    if not ids:
        raise InputError(f"{folder}: a folder with no DICOM series in it")
    if series_uid is None:
        if len(ids) > 1:
            raise InputError(f"{folder}: holds {len(ids)} DICOM series {ids}; choose one with series_uid")
        series_uid = ids[0]
    elif series_uid not in ids:
        raise InputError(f"{folder}: no DICOM series {series_uid!r}; found {ids}")
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series_uid))
    return reader.Execute()


def same_grid(a: sitk.Image, b: sitk.Image) -> list[str]:
    """Return the geometry properties in which ``a`` and ``b`` differ (empty list = same grid)."""
    diffs = []
    if a.GetSize() != b.GetSize():
        diffs.append(f"size {a.GetSize()} vs {b.GetSize()}")
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), atol=GEOMETRY_ATOL_MM, rtol=0):
        diffs.append(f"spacing {a.GetSpacing()} vs {b.GetSpacing()}")
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), atol=GEOMETRY_ATOL_MM, rtol=0):
        diffs.append(f"origin {a.GetOrigin()} vs {b.GetOrigin()}")
    if not np.allclose(a.GetDirection(), b.GetDirection(), atol=DIRECTION_ATOL, rtol=0):
        diffs.append(f"direction {a.GetDirection()} vs {b.GetDirection()}")
    return diffs


def require_same_grid(reference: sitk.Image, other: sitk.Image, ref_name: str, other_name: str) -> None:
    """Raise :class:`InputError` if ``other`` is not on ``reference``'s voxel grid."""
    diffs = same_grid(reference, other)
    if diffs:
        raise InputError(f"{other_name} and {ref_name} are on different grids: " + "; ".join(diffs))


def read_channels(paths: Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> list[sitk.Image]:
    """Read co-registered channel volumes (e.g. brain t1n/t1c/t2w/t2f); all must share one grid."""
    if not paths:
        raise InputError("no input volume given")
    if names is not None and len(names) != len(paths):
        raise InputError(f"{len(paths)} input files for {len(names)} channels {list(names)}")
    images = [read_volume(p) for p in paths]
    for p, image in zip(paths[1:], images[1:], strict=True):
        require_same_grid(images[0], image, str(paths[0]), str(p))
    return images


def geometry(image: sitk.Image) -> dict[str, list[float] | list[int]]:
    """The grid of ``image`` as plain lists (for JSON): size, spacing, origin, direction."""
    return {
        "size": list(image.GetSize()),
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
    }


def array_to_image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Wrap a (z, y, x) array as an image on ``reference``'s grid."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _split_name(name: str) -> tuple[str, str]:
    for ext in sorted(_EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)], name[-len(ext):]
    return Path(name).stem, Path(name).suffix


def write_volume(image: sitk.Image, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write ``image`` atomically: to a temporary name in the same folder, then rename."""
    p = Path(path)
    stem, ext = _split_name(p.name)
    if not ext:
        raise OutputError(f"{p}: no image file extension (use .nii.gz, .nrrd or .mha)")
    tmp = p.with_name(f".tmp-{os.getpid()}-{stem}{ext}")
    try:
        sitk.WriteImage(image, str(tmp), compress)
        os.replace(tmp, p)
    except (RuntimeError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{p}: could not write ({exc})") from None
    return p


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Stage outputs in a hidden folder inside ``out_dir`` and move them in only on success.

    On any exception the staging folder is removed and ``out_dir`` holds nothing new, so a crash
    or cancel never leaves half-written results. Existing files of the same name are replaced.
    """
    out = Path(out_dir)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    except OSError as exc:
        raise OutputError(f"{out}: output folder is not writable ({exc.strerror or exc})") from None
    ok = False
    try:
        yield staging
        for item in sorted(staging.iterdir()):
            dest = out / item.name
            if item.is_dir() and dest.is_dir():  # os.replace cannot replace a non-empty folder
                old = Path(tempfile.mkdtemp(prefix=".replaced-", dir=out))
                os.replace(dest, old / item.name)
                os.replace(item, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(item, dest)
        ok = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not ok and created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: never removes anything of the user's
