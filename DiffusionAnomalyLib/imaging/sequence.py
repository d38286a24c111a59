"""Volume sequences as 3D Slicer reads them: a 4D ``.seq.nrrd`` (three space axes and a ``list`` axis).

The file is a plain NRRD (``kinds: domain domain domain list``, the list axis last, so every frame is one
contiguous block) with the key/value fields Slicer's Sequences module reads (docs of the ``.seq.nrrd`` format in
Slicer's developer guide): ``axis 3 index type`` / ``axis 3 index values`` (the frames' index values),
``DataNodeClassName`` (the node each frame becomes) and ``axis 3 item NNNN <name>`` (per-frame attributes, which
Slicer 5.10 and later put on each frame's volume node). Other fields become attributes of the sequence node.

Frames are written one at a time into a gzip stream, so a sequence never has to be held in memory whole.
Torch-free (the Slicer process imports it).
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from DiffusionAnomalyLib.errors import InputError, OutputError

LIST_AXIS = 3
_SAFE_VALUE = re.compile(r"^[^\n\r]*$")


def _fmt(v: float) -> str:
    return repr(float(v))


def sequence_header(reference: sitk.Image, n_frames: int, index_name: str, index_values: Sequence,
                    item_attributes: Sequence[dict[str, str]] = (), attributes: dict[str, str] | None = None,
                    index_unit: str = "") -> str:
    """The NRRD header of a float32 volume sequence on ``reference``'s grid (LPS geometry)."""
    if len(index_values) != n_frames:
        raise InputError(f"{len(index_values)} index values for {n_frames} frames")
    nx, ny, nz = reference.GetSize()
    spacing = np.array(reference.GetSpacing())
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    dirs = " ".join("(" + ",".join(_fmt(v) for v in direction[:, j] * spacing[j]) + ")" for j in range(3))
    lines = ["NRRD0005", "# a volume sequence (3D Slicer .seq.nrrd)", "type: float", "dimension: 4",
             "space: left-posterior-superior", f"sizes: {nx} {ny} {nz} {n_frames}", f"space directions: {dirs} none",
             "kinds: domain domain domain list", f'labels: "" "" "" "{index_name}"',
             f'units: "" "" "" "{index_unit}"', "endian: little", "encoding: gzip",
             "space origin: (" + ",".join(_fmt(v) for v in reference.GetOrigin()) + ")",
             f"axis {LIST_AXIS} index type:=numeric",
             f"axis {LIST_AXIS} index values:=" + " ".join(str(v) for v in index_values),
             "DataNodeClassName:=vtkMRMLScalarVolumeNode"]
    for key, value in (attributes or {}).items():
        lines.append(f"{key}:={value}")
    for i, attrs in enumerate(item_attributes):
        for key, value in attrs.items():
            lines.append(f"axis {LIST_AXIS} item {i:04d} {key}:={value}")
    for line in lines:
        if not _SAFE_VALUE.match(line):
            raise InputError(f"a sequence header field holds a line break: {line!r}")
    return "\n".join(lines) + "\n\n"


def write_volume_sequence(path: str | os.PathLike, frames: Iterable[np.ndarray], reference: sitk.Image,
                          index_name: str, index_values: Sequence, item_attributes: Sequence[dict[str, str]] = (),
                          attributes: dict[str, str] | None = None, index_unit: str = "") -> Path:
    """Write ``frames`` ((z, y, x) arrays on ``reference``'s grid, one at a time) as a ``.seq.nrrd``, atomically.

    ``index_values`` (numbers) name the frames in Slicer's sequence browser; ``item_attributes`` become each
    frame's node attributes, ``attributes`` the sequence node's.
    """
    p = Path(path)
    shape = tuple(reversed(reference.GetSize()))
    header = sequence_header(reference, len(index_values), index_name, index_values, item_attributes, attributes,
                             index_unit)
    tmp = p.with_name(f".tmp-{os.getpid()}-{p.name}")
    n = 0
    try:
        with open(tmp, "wb") as f:
            f.write(header.encode("ascii"))
            z = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip stream, as NRRD's gzip encoding wants
            for frame in frames:
                if tuple(frame.shape) != shape:
                    raise InputError(f"{p.name}: frame {n} has shape {frame.shape}, not the grid's {shape}")
                f.write(z.compress(np.ascontiguousarray(frame, dtype="<f4").tobytes()))
                n += 1
            f.write(z.flush())
        if n != len(index_values):
            raise InputError(f"{p.name}: {n} frames written for {len(index_values)} index values")
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{p}: could not write ({exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p
