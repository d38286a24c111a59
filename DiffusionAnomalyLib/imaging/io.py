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
import os
import re
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from DiffusionAnomalyLib.errors import InputError, OutputError
from DiffusionAnomalyLib.imaging.outputs import regular_file

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
