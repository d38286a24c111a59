"""Volume input/output with SimpleITK: reading with clear errors, geometry checks, atomic writes.

Supported: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) and DICOM series
folders. Images are returned as they are stored (ITK/LPS physical space); nothing is reoriented,
so origin, spacing and direction survive a read/write round trip (NIfTI keeps them at float32
precision, NRRD and MHA at double).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import re
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from DiffusionAnomalyLib.errors import InputError, OutputError

#: Tolerances for "same grid": spacing/origin in mm, direction cosines unitless.
GEOMETRY_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4

_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd")



@contextlib.contextmanager
def quiet_itk() -> Iterator[None]:
    """ITK prints warnings (e.g. "Non-orthogonal direction matrix coerced") as raw blocks on stderr; every problem
    they describe is checked here and reported as one clear error instead, so they are off while we read."""
    before = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        with keep_locale():
            yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(before)


@contextlib.contextmanager
def keep_locale() -> Iterator[None]:
    """ITK's DICOM layer (GDCM) sets the process's C locale to "C"; in Python without UTF-8 mode that turns the
    default text encoding into ASCII for the rest of the process (a report with "≤" could then not be written).
    The locale is put back after each ITK call."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_ALL, saved)


#: Direction matrices whose columns are further from orthonormal than this are refused (the outputs could not
#: be written on exactly the input's grid).
ORTHOGONALITY_ATOL = 1e-3
#: Voxel spacings outside this range (mm) are refused: no CT or MR scan has them, and an organ ROI of fixed size in
#: mm would hold no voxel (a header in metres or micrometres, a corrupt one).
MIN_SPACING_MM = 1e-3
MAX_SPACING_MM = 100.0
#: DICOM slice positions may deviate from uniform spacing by this much (mm) before the series is refused.
SLICE_SPACING_ATOL_MM = 0.01


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
    if not p.is_dir():
        regular_file(p, "the image")  # a FIFO or device would block the reader for ever
    if p.is_file() and p.stat().st_size == 0:
        raise InputError(f"{p}: the file is empty (0 bytes)")
    if p.is_file() and p.name.lower().endswith((".nii", ".nii.gz")):
        check_nifti_file(p, allow_nan=allow_nan)
    if p.is_file() and p.name.lower().endswith(".mha"):
        check_metaimage_file(p)
    try:
        with quiet_itk():
            image = _read_dicom_series(p, series_uid) if p.is_dir() else sitk.ReadImage(itk_path(p))
    except InputError:
        raise
    except RuntimeError as exc:
        raise InputError(f"{p}: not a readable image ({itk_reason(exc)})") from None
    except UnicodeError:
        raise InputError(f"{p}: the path cannot be encoded for the image reader (non-ASCII characters under "
                         "a C/POSIX locale?); set LC_ALL=C.UTF-8 or rename the file") from None
    return check_volume(image, p, allow_nan=allow_nan)


def itk_path(path: str | os.PathLike) -> str:
    """``path`` as ITK can take it. Under a C/POSIX locale Python holds non-ASCII bytes of a file name as
    surrogates, which crash ITK's C++ layer (``std::logic_error``, the process aborts); such a name is decoded
    from its bytes as UTF-8, which is what ITK passes to the operating system."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(text).decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{text!r}: the file name is not valid UTF-8 and the image library cannot open it; "
                         "rename the file") from None


def itk_reason(exc: BaseException) -> str:
    """The informative part of an ITK exception message (one line, no source paths or matrix rows)."""
    text = str(exc)
    if "determinant is 0" in text or "singular" in text.lower() or "Zero-valued spacing" in text:
        return "its direction matrix is singular (an axis has zero length, or two axes are parallel)"
    if "data not read completely" in text or "expected" in text and "bytes but received" in text:
        m = re.search(r"expected (\d+) bytes but received (\d+)", text)
        extra = f": {m.group(2)} of {m.group(1)} bytes of voxel data" if m else ""
        return f"the file is truncated or corrupt{extra}"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in lines:
        if "ERROR:" in ln:
            return ln.split("ERROR:", 1)[1].strip().split("): ", 1)[-1] or ln
    for ln in reversed(lines):
        if not re.fullmatch(r"[-+0-9.eE ]+", ln) and not ln.startswith(("/", "File ")):
            return ln[:300]
    return "unknown reason"


_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
                 1280: "u8", 32: "c8", 128: "u1", 2304: "u1"}
_NIFTI_ITEMS = {32: 1, 128: 3, 2304: 4}  # complex64 counts as one 8-byte item; RGB24 / RGBA32 bytes per voxel


def check_nifti_file(path: str | os.PathLike, *, allow_nan: bool = False) -> None:
    """Read a single-file NIfTI through to its end before ITK does, raising :class:`InputError` for what ITK
    would hide: a truncated or corrupt file (ITK fills the missing voxels with 0), NaN/Inf voxels (ITK reads
    them as 0) and a sheared (non-orthogonal) sform, which ITK silently coerces to another grid."""
    p = Path(path)
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    try:
        with opener(p, "rb") as f:
            head = f.read(348)
            if len(head) < 348:
                raise InputError(f"{p}: not a NIfTI file (header is {len(head)} of 348 bytes; truncated?)")
            if struct.unpack("<i", head[:4])[0] == 348:
                e = "<"
            elif struct.unpack(">i", head[:4])[0] == 348:
                e = ">"
            else:
                return  # NIfTI-2 or not NIfTI at all: ITK decides
            dims = struct.unpack(e + "8h", head[40:56])
            pixdim = struct.unpack(e + "8f", head[76:108])
            datatype, bitpix = struct.unpack(e + "hh", head[70:74])
            vox_offset = int(struct.unpack(e + "f", head[108:112])[0])
            sform_code = struct.unpack(e + "h", head[254:256])[0]
            srow = np.array(struct.unpack(e + "12f", head[280:328]), dtype=np.float64).reshape(3, 4)
            if head[344:348] not in (b"n+1\0",):
                return  # a .hdr/.img pair or an Analyze file: ITK decides
            ndim = dims[0]
            if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1 : ndim + 1]):
                raise InputError(f"{p}: invalid NIfTI header (dimensions {list(dims[1 : max(1, ndim) + 1])})")
            bad = [(i, v) for i, v in enumerate(pixdim[1 : min(ndim, 3) + 1], 1) if not (np.isfinite(v) and v != 0)]
            if bad:  # ITK would read a spacing of 1 mm there, whatever the sform says
                raise InputError(f"{p}: invalid NIfTI header: voxel size pixdim[{bad[0][0]}] is {bad[0][1]:g}; the "
                                 "image reader would assume 1 mm. Fix the header (the voxel spacing) first")
            if sform_code > 0:
                _check_orthogonal(srow[:, :3], p, "sform")
            nbytes = int(np.prod([int(d) for d in dims[1 : ndim + 1]], dtype=np.int64)) * max(bitpix, 8) // 8
            f.read(max(0, vox_offset - 348))
            dtype = np.dtype(_NIFTI_DTYPES.get(datatype, "u1")).newbyteorder(e)
            floats = datatype in (16, 64) and not allow_nan
            item = dtype.itemsize
            chunk = (16 << 20) // item * item
            got, bad, rest = 0, 0, b""
            while got < nbytes:
                block = f.read(min(chunk, nbytes - got))
                if not block:
                    break
                got += len(block)
                if floats:
                    block = rest + block
                    usable = len(block) // item * item
                    values = np.frombuffer(block[:usable], dtype=dtype)
                    bad += int(np.count_nonzero(~np.isfinite(values)))
                    rest = block[usable:]
            if got < nbytes:
                raise InputError(f"{p}: the file is truncated: {got} of {nbytes} bytes of voxel data "
                                 f"({100 * got / nbytes:.0f}%); the rest would be read as 0")
            if opener is gzip.open:
                while f.read(chunk):  # to the end: the gzip trailer's CRC and length are checked
                    pass
    except InputError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        if "Not a gzipped file" in str(exc):
            raise InputError(f"{p}: not a readable image ({exc}; the name ends in .gz)") from None
        raise InputError(f"{p}: the compressed file is truncated or corrupt ({exc}); the image would be read "
                         "incompletely") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    if bad:
        raise InputError(f"{p}: {bad} voxels are NaN or infinite; fix or mask them before running")


_META_SIZES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4, "MET_INT": 4,
               "MET_ULONG": 8, "MET_LONG": 8, "MET_ULONG_LONG": 8, "MET_LONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def check_metaimage_file(path: str | os.PathLike) -> None:
    """A single-file MetaImage (.mha) must hold all its voxel data (ITK only says "cannot be read")."""
    p = Path(path)
    header: dict[str, str] = {}
    with open(p, "rb") as f:
        for _ in range(100):
            line = f.readline(4096)
            if not line or b"=" not in line:
                return
            key, _, value = line.decode("latin-1").partition("=")
            header[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
        if header.get("ElementDataFile") != "LOCAL":
            return
        have = p.stat().st_size - f.tell()
    try:
        if header.get("CompressedData", "False").lower() == "true":
            if "CompressedDataSize" not in header:
                return
            need = int(header["CompressedDataSize"])
        else:
            dims = [int(v) for v in header["DimSize"].split()]
            channels = int(header.get("ElementNumberOfChannels", "1"))
            need = int(np.prod(dims)) * channels * _META_SIZES[header["ElementType"]]
    except (KeyError, ValueError):
        return
    if have < need:
        raise InputError(f"{p}: the file is truncated: {have} of {need} bytes of voxel data "
                         f"({100 * have / max(need, 1):.0f}%)")


def _check_orthogonal(matrix: np.ndarray, name: str | os.PathLike, what: str = "direction") -> None:
    """Refuse a singular or sheared (non-orthogonal) axis matrix; columns are the voxel axes."""
    m = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(m, axis=0)
    if np.any(norms < 1e-12) or abs(np.linalg.det(m)) < 1e-12 * max(float(np.prod(norms)), 1e-300):
        raise InputError(f"{name}: its {what} matrix is singular (an axis is zero or two axes are parallel); the "
                         "image has no valid voxel grid")
    unit = m / norms
    gram = unit.T @ unit
    shear = float(np.max(np.abs(gram - np.eye(3))))
    if shear > ORTHOGONALITY_ATOL:
        angle = float(np.degrees(np.arccos(np.clip(np.max(np.abs(gram[~np.eye(3, dtype=bool)])), 0, 1))))
        raise InputError(f"{name}: its {what} matrix is not orthogonal (axes sheared: {angle:.2f} degrees between "
                         "two of them instead of 90); the outputs could not lie on the input's grid. Resample the "
                         "image onto an orthogonal grid first")


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
    if dim == 3:
        _check_orthogonal(np.array(image.GetDirection()).reshape(3, 3), name)
        if min(image.GetSpacing()) <= 0 or not np.all(np.isfinite(image.GetSpacing())):
            raise InputError(f"{name}: invalid voxel spacing {image.GetSpacing()}")
        if not MIN_SPACING_MM <= min(image.GetSpacing()) <= max(image.GetSpacing()) <= MAX_SPACING_MM:
            raise InputError(f"{name}: voxel spacing {tuple(float(f'{v:.4g}') for v in image.GetSpacing())} mm is "
                             f"outside {MIN_SPACING_MM:g}..{MAX_SPACING_MM:g} mm: not a CT or MR voxel (a header in "
                             "other units?); fix the spacing first")
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
    ids = list(reader.GetGDCMSeriesIDs(itk_path(folder)) or ())
    if not ids:
        raise InputError(f"{folder}: a folder with no DICOM series in it")
    if series_uid is None:
        if len(ids) > 1:
            raise InputError(f"{folder}: holds {len(ids)} DICOM series {ids}; put the files of the one to analyse "
                             "in a folder of their own")
        series_uid = ids[0]
    elif series_uid not in ids:
        raise InputError(f"{folder}: no DICOM series {series_uid!r}; found {ids}")
    files = list(reader.GetGDCMSeriesFileNames(itk_path(folder), series_uid))
    check_slice_spacing(files, folder)
    reader.SetFileNames(files)
    return reader.Execute()


def check_slice_spacing(files: Sequence[str], folder: str | os.PathLike) -> None:
    """Refuse a DICOM series whose slice positions are not evenly spaced (a missing or duplicated slice):
    ITK would give the volume one averaged spacing and misplace every slice after the gap."""
    positions, normal = [], None
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(f)
        r.LoadPrivateTagsOff()
        try:
            r.ReadImageInformation()
            pos = [float(v) for v in r.GetMetaData("0020|0032").replace(",", "\\").split("\\")]
            if normal is None:
                o = [float(v) for v in r.GetMetaData("0020|0037").split("\\")]
                normal = np.cross(o[:3], o[3:6])
        except (RuntimeError, ValueError, IndexError):
            return  # no usable position tags: ITK's own handling applies
        positions.append(float(np.dot(pos, normal)))
    if len(positions) < 3:
        return
    z = np.sort(np.array(positions))
    gaps = np.diff(z)
    if np.any(gaps < SLICE_SPACING_ATOL_MM):
        raise InputError(f"{folder}: {int(np.sum(gaps < SLICE_SPACING_ATOL_MM))} DICOM slice(s) share a position "
                         "with another (duplicated slices?); the series cannot be stacked into one volume")
    step = float(np.median(gaps))
    off = np.abs(gaps - step) > max(SLICE_SPACING_ATOL_MM, 0.01 * step)
    if np.any(off):
        where = ", ".join(f"{z[i]:.2f}..{z[i + 1]:.2f} mm ({gaps[i]:.2f} mm)" for i in np.flatnonzero(off)[:5])
        raise InputError(f"{folder}: the DICOM slices are not evenly spaced (usual spacing {step:.2f} mm; gaps at "
                         f"{where}): a slice is missing or the series mixes spacings. ITK would average the spacing "
                         "and misplace every slice; export the complete series or resample it")


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
    """Raise :class:`InputError` if ``other`` is not on ``reference``'s voxel grid; each value is printed
    under the name of the file it belongs to."""
    if not same_grid(reference, other):
        return
    parts = []
    for what, get, fmt in (("size", "GetSize", "{}"), ("spacing", "GetSpacing", "{:.4g}"),
                           ("origin", "GetOrigin", "{:.4g}"), ("direction", "GetDirection", "{:.4g}")):
        a, b = getattr(reference, get)(), getattr(other, get)()
        if what == "size":
            differs = a != b
        else:
            atol = DIRECTION_ATOL if what == "direction" else GEOMETRY_ATOL_MM
            differs = not np.allclose(a, b, atol=atol, rtol=0)
        if differs:
            sa, sb = ("(" + ", ".join(fmt.format(x) for x in v) + ")" for v in (a, b))
            parts.append(f"{what} {sb} in {other_name} but {sa} in {ref_name}")
    raise InputError(f"{other_name} and {ref_name} are on different grids: " + "; ".join(parts))


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
        with keep_locale(), c_stderr() as said:
            sitk.WriteImage(image, itk_path(tmp), compress)
        if "ERROR" in said.text:  # the NIfTI library reports a short write on stderr and returns as if done
            raise OSError(errno.EIO, said.text.strip().splitlines()[-1][:200])
        os.replace(tmp, p)
    except (RuntimeError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{p}: could not write ({write_reason(exc, p.parent)})") from None
    return p


class _Said:
    text = ""


@contextlib.contextmanager
def c_stderr() -> Iterator[_Said]:
    """Capture what C libraries (ITK, the NIfTI library) print on file descriptor 2 while the block runs, so a raw
    library line never reaches the user; ``.text`` holds it afterwards."""
    said = _Said()
    try:
        saved = os.dup(2)
    except OSError:
        yield said
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            said.text = capture.read(65536).decode("utf-8", "replace")


def write_reason(exc: BaseException, folder: Path) -> str:
    """Why a write failed, in one line: a full disk or a file-size limit named as such, not ITK's raw text."""
    if isinstance(exc, OSError) and exc.errno not in (None, errno.EIO):
        return exc.strerror or str(exc)
    text = str(exc).lower()
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < 1 << 20:
        return f"no space left on the device ({os.strerror(errno.ENOSPC)}; {free} bytes free)"
    if "file too large" in text or "size limit" in text:
        return os.strerror(errno.EFBIG) + " (a file-size limit)"
    if "wrote only" in text or "write" in text:
        return ("the image writer could not write the file (the disk is full, a file-size limit (ulimit -f) was "
                "reached, or the folder was removed)")
    return itk_reason(exc)


#: File names a run writes (``run.json`` lists them too); with ``--overwrite`` these are what is replaced.
RESULT_PATTERNS = ("run.json", "heatmap.nii.gz", "lesions.nii.gz", "lesions.seg.nrrd", "lesions.csv", "lesions.json",
                   "overview.png", "reconstruction.nii.gz", "reconstruction_*.nii.gz", "trajectory_*.nii.gz",
                   "trajectory.seq.nrrd", "trajectory_heatmap.seq.nrrd", "uncertainty.nii.gz", "uncertainty_*.nii.gz")


def previous_result_files(folder: Path) -> list[Path] | None:
    """The files of an earlier result of this tool in ``folder`` (``run.json`` present), else None."""
    run = folder / "run.json"
    if not run.is_file():
        return None
    try:
        info = read_json(run, "run.json")
    except InputError:
        return None
    if not isinstance(info, dict) or "version" not in info or "inputs" not in info:
        return None
    names = set(info.get("outputs") or [])
    for pattern in RESULT_PATTERNS:
        names.update(f.name for f in folder.glob(pattern))
    return sorted(folder / n for n in names if "/" not in n and (folder / n).is_file())


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours
        return True
    return True


def clean_stale_staging(folder: Path) -> None:
    """Remove ``.staging-*`` / ``.replaced-*`` folders left by runs that were killed (their process is gone)."""
    if not folder.is_dir():
        return
    for d in folder.iterdir():
        m = re.match(r"\.(staging|replaced)-(\d+)-", d.name)
        stale = (m and not _pid_alive(int(m.group(2)))) or (
            not m and d.name.startswith((".staging-", ".replaced-")))
        if stale and d.is_dir() and not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


# -- names, JSON inputs and the output-folder rule: the one place each is decided ---------------------------------
#: A name that becomes one path component (bundle names and versions, case and output names): letters, digits and
#: ``._+-``, starting with a letter or digit, at most 100 characters. Checked wherever such a name is read.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def check_name(value: object, what: str, error: type[Exception] = InputError) -> str:
    """``value`` if it is one safe path component (:data:`NAME_PATTERN`), else ``error`` naming ``what`` and the
    value (an absolute path, ``..``, a separator or a control character would write outside its folder)."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or value in (".", ".."):
        raise error(f"{what}: {value!r} is not a valid name (one folder name of letters, digits and . _ + -, starting "
                    "with a letter or digit, at most 100 characters; no path separators, '..' or absolute paths)")
    return value


#: Limits on every JSON file read as input (settings, run.json, model.json, manifests): bytes and nesting depth.
JSON_MAX_BYTES = 16 << 20
JSON_MAX_DEPTH = 32


def regular_file(path: str | os.PathLike, what: str, error: type[Exception] = InputError) -> Path:
    """``path`` if it is a regular file (never a FIFO, device or folder, which could block or never end)."""
    import stat

    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise error(f"{p}: {what} not found") from None
    except OSError as exc:
        raise error(f"{p}: {what} cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "not a file"
        raise error(f"{p}: {what} is {kind}; a regular file is needed")
    return p


def read_json(path: str | os.PathLike, what: str = "JSON file", error: type[Exception] = InputError,
              max_bytes: int = JSON_MAX_BYTES, max_depth: int = JSON_MAX_DEPTH) -> object:
    """Parse a JSON input file with limits: a regular file of at most ``max_bytes``, nesting at most ``max_depth``,
    integers of at most 4300 digits; any problem raises ``error`` naming the file."""
    p = regular_file(path, what, error)
    try:
        with open(p, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{p}: {what} cannot be read ({exc.strerror or exc})") from None
    if len(raw) > max_bytes:
        raise error(f"{p}: {what} is larger than {max_bytes >> 20} MB; refused")
    return parse_json(raw, f"{p}: {what}", error, max_depth)


def parse_json(raw: bytes | str, where: str, error: type[Exception] = InputError,
               max_depth: int = JSON_MAX_DEPTH) -> object:
    """``json.loads`` with the limits of :func:`read_json`; ``where`` starts the message."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise error(f"{where} is not valid JSON (not UTF-8: {exc})") from None
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:  # the nesting depth before parsing: json would recurse (RecursionError) on deep input
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                raise error(f"{where} is nested deeper than {max_depth} levels; refused")
        elif ch in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where} is not valid JSON ({exc})") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise error(f"{where} cannot be read ({' '.join(str(exc).split())[:200]})") from None


def _is_run_result(folder: Path) -> bool:
    return previous_result_files(folder) is not None


def _is_dataset_result(folder: Path) -> bool:
    """evaluate, sweep or batch output: they resume there."""
    if any((folder / n).exists() for n in ("maps", "report", "sweep", "index.csv")):
        return True
    return any((d / "run.json").is_file() for d in folder.iterdir() if d.is_dir()) or any(folder.glob("*.error.json"))


def _is_phantom_case(folder: Path) -> bool:
    try:
        info = json.loads((folder / "case.json").read_text()) if (folder / "case.json").is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("synthetic") is True


def _is_phantom_dataset(folder: Path) -> bool:
    """A phantom dataset: synthetic case folders plus ``labels.csv`` / ``reports.csv`` and nothing else."""
    entries = [e for e in folder.iterdir() if not e.name.startswith((".staging-", ".replaced-"))]
    cases = [e for e in entries if e.is_dir() and _is_phantom_case(e)]
    return bool(cases) and all(e in cases or e.name in ("labels.csv", "reports.csv") for e in entries)


def _is_demo_result(folder: Path) -> bool:
    entries = {e.name for e in folder.iterdir() if not e.name.startswith((".staging-", ".replaced-"))}
    return entries <= {"case", "result"} and _is_phantom_case(folder / "case") and (
        "result" not in entries or _is_run_result(folder / "result"))


def _is_bundle(folder: Path) -> bool:
    """A model bundle (``model.json`` with a ``format_version``), as ``train``, ``sweep --write-bundle`` and
    ``import-bundle`` write it."""
    try:
        info = json.loads((folder / "model.json").read_text()) if (folder / "model.json").is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "format_version" in info


def _is_bench_report(file: Path) -> bool:
    try:
        info = read_json(file, "bench report")
    except InputError:
        return False
    return isinstance(info, dict) and ({"environment", "results"} <= set(info) or "gpu_check" in info)


def _is_pseudo_labels(file: Path) -> bool:
    try:
        with open(file, encoding="utf-8") as f:
            return f.readline().strip() == "case,structure,side,label,evidence"
    except (OSError, UnicodeDecodeError):
        return False


#: What an earlier result of each writing command looks like: the one output-folder rule. A folder holding
#: anything else is foreign and refused (even with ``--overwrite``: a user's files are never replaced); an
#: earlier result is resumed (commands that continue where they stopped) or replaced with ``--overwrite``.
RESULT_KINDS: dict[str, Callable[[Path], bool]] = {
    "run": _is_run_result, "baseline": _is_run_result, "worker": _is_run_result,
    "evaluate": _is_dataset_result, "sweep": _is_dataset_result, "batch": _is_dataset_result,
    "phantom": _is_phantom_case, "phantom --cases": _is_phantom_dataset, "demo": _is_demo_result,
    "train": _is_bundle, "train all": _is_bundle, "write-bundle": _is_bundle, "import-bundle": _is_bundle,
    "bench": _is_bench_report, "pseudo-labels": _is_pseudo_labels,  # one file each (check_output_file)
}


def check_output_dir(out: str | os.PathLike, inputs: Sequence[str | os.PathLike | None] = (), *,
                     overwrite: bool = False, option: str = "--out",
                     own: Callable[[Path], bool] | None = None, resume: bool = False, command: str = "run") -> Path:
    """The output-folder rule of every writing command, checked before any work; raises :class:`OutputError`
    naming the folder and the problem.

    Refused: a path that is a file or lies under one; a folder that cannot be written; a folder that holds (or
    lies inside) any of ``inputs``; a non-empty folder that is not an earlier result of ``command``
    (:data:`RESULT_KINDS`, or ``own(folder)``), even with ``overwrite``: a user's files are never replaced; an
    earlier result unless ``overwrite`` (replace it) or ``resume`` (commands that continue where they stopped).
    Stale staging folders of killed runs are removed.
    """
    o = Path(out)
    if o.exists() and not o.is_dir():
        raise OutputError(f"{o}: {option} is an existing file, not a folder")
    resolved = o.resolve()
    for inp in inputs:
        if inp is None:
            continue
        ip = Path(inp).resolve()
        if _inside(ip, resolved):
            raise OutputError(f"{o}: {option} contains the input {inp}; outputs never go where inputs are (they "
                              "could replace them): choose another folder")
        if ip.is_dir() and _inside(resolved, ip):
            raise OutputError(f"{o}: {option} lies inside the input folder {inp}; choose a folder outside it")
    _check_writable(o, option)
    if o.is_dir():
        clean_stale_staging(o)
        entries = [e for e in o.iterdir() if not e.name.startswith((".staging-", ".replaced-"))]
        if entries:
            if not (own or RESULT_KINDS[command])(o):
                names = ", ".join(sorted(e.name for e in entries)[:5]) + (" ..." if len(entries) > 5 else "")
                raise OutputError(f"{o}: {option} is not empty ({names}) and is not a result of diffusion-anomaly "
                                  f"{command}; its files are never replaced: choose a new or empty folder")
            if not (overwrite or resume):
                raise OutputError(f"{o}: {option} holds the results of an earlier run; pass --overwrite to replace "
                                  f"them (all of them: nothing of the earlier {command} is kept), or choose another "
                                  "folder")
    return o


def _check_writable(o: Path, option: str) -> None:
    anchor = o
    while not anchor.exists():
        if anchor.parent == anchor:
            break
        anchor = anchor.parent
    if not anchor.is_dir():
        raise OutputError(f"{o}: {option} cannot be created: {anchor} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".probe-{os.getpid()}-", dir=anchor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{o}: output folder is not writable ({exc.strerror or exc} in {anchor}; {option})") from None


def check_output_file(out: str | os.PathLike, inputs: Sequence[str | os.PathLike | None] = (), *,
                      overwrite: bool = False, option: str = "--out", own: Callable[[Path], bool] | None = None,
                      command: str = "") -> Path:
    """The output-folder rule for commands that write one file (``bench --out``, ``pseudo-labels --out``): not an
    input, its folder writable; an existing file is replaced only if ``own(file)`` says this command wrote it, and
    only with ``overwrite``."""
    o = Path(out)
    for inp in inputs:
        if inp is not None and Path(inp).resolve() == o.resolve():
            raise OutputError(f"{o}: {option} is the input {inp}; outputs never replace inputs")
    if o.is_dir():
        raise OutputError(f"{o}: {option} is a folder; give a file name")
    own = own or RESULT_KINDS.get(command)
    if o.exists() or o.is_symlink():
        if not o.is_file() or o.is_symlink() or own is None or not own(o):
            raise OutputError(f"{o}: {option} exists and was not written by diffusion-anomaly {command}; it is never "
                              "replaced: choose a new file name")
        if not overwrite:
            raise OutputError(f"{o}: {option} holds an earlier {command} result; pass --overwrite to replace it, or "
                              "choose a new file name")
    _check_writable(o.parent, option)
    return o


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (a temporary name in the same folder, then a rename)."""
    p = Path(path)
    tmp = p.with_name(f".tmp-{os.getpid()}-{p.name}")
    try:
        tmp.write_text(text, encoding="utf-8", newline="")  # as given (a CSV's \r\n stays \r\n everywhere)
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{p}: could not write ({exc.strerror or exc})") from None
    return p


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, *, replace_previous: bool = False) -> Iterator[Path]:
    """Stage outputs in a hidden folder inside ``out_dir`` and move them in only on success.

    On any exception the staging folder is removed and ``out_dir`` holds nothing new, so a crash
    or cancel never leaves half-written results. Existing files of the same name are replaced; with
    ``replace_previous`` every file of an earlier result (:func:`previous_result_files`) is removed too, so
    the folder holds exactly the new result set. Stale staging folders of killed runs are removed.
    """
    out = Path(out_dir)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(out)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-", dir=out))
    except OSError as exc:
        raise OutputError(f"{out}: output folder is not writable ({exc.strerror or exc})") from None
    ok = False
    try:
        yield staging
        old = Path(tempfile.mkdtemp(prefix=f".replaced-{os.getpid()}-", dir=out))
        moved: list[tuple[Path, Path]] = []
        try:
            stale = (previous_result_files(out) or []) if replace_previous else []
            new_names = {item.name for item in staging.iterdir()}
            for f in stale:
                if f.name not in new_names:
                    os.replace(f, old / f.name)
                    moved.append((old / f.name, f))
            for item in sorted(staging.iterdir()):
                dest = out / item.name
                if dest.exists() or dest.is_symlink():
                    os.replace(dest, old / item.name)  # a folder cannot be replaced in one step when non-empty
                    moved.append((old / item.name, dest))
                os.replace(item, dest)
        except OSError as exc:
            for src, dest in reversed(moved):  # put the earlier files back
                with contextlib.suppress(OSError):
                    if not dest.exists():
                        os.replace(src, dest)
            raise OutputError(f"{out}: could not move the results into place ({exc.strerror or exc})") from None
        finally:
            shutil.rmtree(old, ignore_errors=True)
        ok = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not ok and created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: never removes anything of the user's
