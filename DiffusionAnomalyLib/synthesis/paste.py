"""Lesion insertion without a network (``synthesize --method paste``): a lesion shape placed in an organ, filled
with the phantom generator's intensity model, blended into the scan over a partial-volume margin.

The intensity model is the one the CT phantoms draw their lesions from (``synthetic/phantoms.py``): a lesion class
(``hypo``, ``hyper``, ``iso``, ``cyst``) sets the lesion's mean against the organ's own (the median of the organ
within :data:`RING_MM` of the lesion): hypo 55-100 HU below, hyper 50-90 above, iso 12-25 either way, a cyst 0-12
HU; on a scan without contrast enhancement (organ median under :data:`ENHANCED_HU`) the smaller non-contrast
differences (-12, +15, +6). A smooth texture (Gaussian-filtered noise, 18 HU, sigma 2 voxels; a cyst 3 HU) is added.
MRI (the brain) has one class, ``mass``: in each channel the lesion's mean is a percentile of the organ's own
intensities (:data:`MR_PERCENTILES`, a glioma-like pattern: dark in T1, enhancing in T1c, bright in T2 and FLAIR),
with a texture of 10 % of the organ's interquartile range.

Blending: the lesion's weight is its mask blurred by the partial-volume kernel (:func:`partial_volume_sigma`: a
voxel's own extent and a scanner point spread of :data:`PSF_MM`, about as the phantoms blur), cut to 0 below 1e-3.
The output is ``input + w * (lesion - smooth(input))`` with ``smooth`` a Gaussian of sigma 1 voxel, so inside the
lesion the scan keeps its own fine-grain noise and outside the blended region every voxel is the input's, exactly.
Values are clipped to the input's range and cast to its pixel type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.synthesis.options import SHAPES
from DiffusionAnomalyLib.synthetic.base import _Grid, _lesion_shape, _varied_lesion_shape

#: The organ's reference intensity is its median within this distance (mm) of the lesion.
RING_MM = 15.0
#: An organ median at or above this (HU) counts as contrast-enhanced.
ENHANCED_HU = 70.0
#: MRI ``mass``: the lesion mean per channel, as a percentile of the organ's intensities.
MR_PERCENTILES = {"t1n": 10.0, "t1c": 95.0, "t2w": 97.0, "t2f": 98.0}
#: The scanner's point spread (Gaussian sigma, mm) in the partial-volume kernel.
PSF_MM = 0.8
#: Voxels of at least this weight are the lesion's core (``core_mean``).
CORE_WEIGHT = 0.95


@dataclass
class PastedLesion:
    """What was drawn for one lesion (JSON-ready values), and how the scan changed inside it."""

    id: int
    kind: str
    voxels: int
    organ_level: list[float]  # per channel: the organ's reference intensity
    target_level: list[float]  # per channel: the lesion's intended mean
    before_mean: list[float]  # per channel: the input's mean inside the lesion
    after_mean: list[float]  # per channel: the output's mean inside the lesion
    core_mean: list[float]  # per channel: the output's mean over the lesion's core (weight >= CORE_WEIGHT)


def partial_volume_sigma(spacing_xyz: tuple[float, float, float]) -> tuple[float, float, float]:
    """The partial-volume kernel (z, y, x; voxels): a voxel's extent (a box: sd 1/sqrt(12) voxel) with a scanner
    point spread of :data:`PSF_MM`."""
    return tuple(float(np.sqrt(1.0 / 12.0 + (PSF_MM / s) ** 2)) for s in spacing_xyz[::-1])


def shape_mask(shape: str, size_zyx: tuple[int, int, int], spacing_xyz: tuple[float, float, float],
               center_index_xyz: np.ndarray, diameter_mm: float, rng: np.random.Generator) -> np.ndarray:
    """A lesion of ``shape`` (:data:`SHAPES`), about ``diameter_mm`` across, centred at a (continuous) voxel index,
    on a grid of ``size_zyx`` voxels. Shapes are drawn in the scan's index frame scaled by its spacing (their
    orientation is random, so the scan's direction does not matter)."""
    grid = _Grid(tuple(int(n) for n in size_zyx[::-1]), tuple(float(s) for s in spacing_xyz),
                 tuple(float((n - 1) / 2.0 * s) for n, s in zip(size_zyx[::-1], spacing_xyz, strict=True)))
    center = tuple(float(c * s) for c, s in zip(center_index_xyz, spacing_xyz, strict=True))
    if shape == "sphere":
        return grid.ellipsoid_r(center, (diameter_mm / 2.0,) * 3) < 1.0
    if shape == "ellipsoid":
        return _lesion_shape(grid, rng, center, diameter_mm)
    if shape not in SHAPES:
        raise InputError(f"unknown lesion shape {shape!r}; choose one of {', '.join(SHAPES)}")
    while True:  # the varied generator draws its shape; draw until it is the one asked for
        mask, kind = _varied_lesion_shape(grid, rng, center, diameter_mm)
        if kind == shape:
            return mask


def place_lesion(organ: np.ndarray, spacing_xyz: tuple[float, float, float], shape: str, diameter_mm: float,
                 rng: np.random.Generator, attempts: int = 30) -> np.ndarray:
    """A lesion mask (bool, the organ's shape) inside ``organ``: its centre drawn uniformly among the organ voxels
    at least half a diameter from the organ's surface (else among the deepest fifth), the shape cut to the organ.
    An :class:`InputError` when the organ cannot hold it."""
    return _place(organ, spacing_xyz, diameter_mm, rng, attempts, f"a {diameter_mm:g} mm {shape} lesion",
                  lambda size, centre_xyz: shape_mask(shape, size, spacing_xyz, centre_xyz, diameter_mm, rng))


def place_template(organ: np.ndarray, spacing_xyz: tuple[float, float, float], template: np.ndarray,
                   rng: np.random.Generator, attempts: int = 30) -> np.ndarray:
    """``template`` (bool, z y x, on the organ's voxel spacing; e.g. another case's lesion, moved and rotated) placed
    as :func:`place_lesion` places a shape: its centroid at a drawn point deep inside ``organ``, cut to the organ."""
    voxels = np.argwhere(template)
    if not len(voxels):
        raise InputError("the lesion template is empty")
    extent = (voxels.max(0) - voxels.min(0) + 1) * np.asarray(spacing_xyz[::-1])
    centroid = voxels.mean(0)

    def make(size: tuple[int, int, int], centre_xyz: np.ndarray) -> np.ndarray:
        out = np.zeros(size, bool)
        at = np.round(voxels - centroid + np.asarray(centre_xyz[::-1])).astype(int)
        keep = np.all((at >= 0) & (at < np.asarray(size)), axis=1)
        out[tuple(at[keep].T)] = True
        return out

    return _place(organ, spacing_xyz, float(extent.max()), rng, attempts, "the lesion template", make)


def _place(organ: np.ndarray, spacing_xyz: tuple[float, float, float], diameter_mm: float, rng: np.random.Generator,
           attempts: int, what: str, make: Callable[[tuple[int, int, int], np.ndarray], np.ndarray]) -> np.ndarray:
    """``make(box size zyx, centre xyz in the box)`` placed at a centre drawn deep inside ``organ``, cut to it."""
    depth = ndimage.distance_transform_edt(organ, sampling=spacing_xyz[::-1])
    candidates = np.argwhere(depth >= diameter_mm / 2.0)
    if not len(candidates):
        candidates = np.argwhere(depth >= 0.8 * depth.max())
    half = diameter_mm * 0.75 + 3 * max(spacing_xyz)
    for _ in range(attempts):
        c = candidates[rng.integers(len(candidates))]
        lo = [max(int(c[a] - half / spacing_xyz[2 - a]), 0) for a in range(3)]
        hi = [min(int(c[a] + half / spacing_xyz[2 - a]) + 1, organ.shape[a]) for a in range(3)]
        box = tuple(slice(lo[a], hi[a]) for a in range(3))
        local = make(tuple(h - low for low, h in zip(lo, hi, strict=True)),
                     np.array([c[2] - lo[2], c[1] - lo[1], c[0] - lo[0]], float))
        inside = local & organ[box]
        if inside.sum() >= max(0.5 * local.sum(), 1):
            out = np.zeros(organ.shape, bool)
            out[box] = inside
            return out
    raise InputError(f"{what} does not fit inside the organ mask (largest depth {depth.max():.1f} mm): choose a "
                     "smaller --diameter-mm")


def _levels(kind: str, modality: str, channels: list[str], arrays: list[np.ndarray], ring: np.ndarray,
            organ: np.ndarray, rng: np.random.Generator) -> tuple[list[float], list[float], list[float]]:
    """(organ level, lesion target, texture sd) per channel, drawn as the module docstring says."""
    organ_level, target, texture = [], [], []
    for name, a in zip(channels, arrays, strict=True):
        ref = float(np.median(a[ring])) if ring.any() else float(np.median(a[organ]))
        organ_level.append(ref)
        if modality == "MR":
            values = a[organ]
            target.append(float(np.percentile(values, MR_PERCENTILES.get(name, 90.0))))
            q1, q3 = np.percentile(values, [25, 75])
            texture.append(0.1 * float(q3 - q1))
            continue
        if kind == "cyst":
            target.append(float(rng.uniform(0, 12)))
            texture.append(3.0)
            continue
        delta = {"hypo": -rng.uniform(55, 100), "hyper": rng.uniform(50, 90),
                 "iso": rng.choice([-1, 1]) * rng.uniform(12, 25)}[kind]
        if ref < ENHANCED_HU:
            delta = {"hypo": -12.0, "hyper": 15.0, "iso": 6.0}[kind]
        target.append(ref + float(delta))
        texture.append(18.0)
    return organ_level, target, texture


#: ``fill(lesion_id, box, mask, ring, source)`` -> (organ level, target level, lesion values) per channel: what a
#: method puts inside one lesion (``box``: its slices of the scan; ``mask``, ``ring``: bool on the box; ``source``:
#: the box's channels as float32).
Fill = Callable[[int, tuple, np.ndarray, np.ndarray, list[np.ndarray]], tuple[list[float], list[float],
                                                                              list[np.ndarray]]]


def insert(arrays: list[np.ndarray], organ: np.ndarray, labels: np.ndarray, spacing_xyz: tuple[float, float, float],
           fill: Fill, kinds: dict[int, str],
           value_range: list[tuple[float, float]]) -> tuple[list[np.ndarray], np.ndarray, list[PastedLesion]]:
    """The channels with each lesion of ``labels`` (instance ids > 0) filled by ``fill`` and blended in (the module
    docstring's blending, whatever the method); the blended region (bool); what was done per lesion. ``arrays``
    (z, y, x), any dtype, are not modified; the outputs keep their dtypes."""
    out = [a.copy() for a in arrays]
    blended = np.zeros(organ.shape, bool)
    records = []
    sigma = partial_volume_sigma(spacing_xyz)
    pad = int(np.ceil(4 * max(*sigma, 1.0))) + 1
    ring_vox = [RING_MM / s for s in spacing_xyz[::-1]]
    for lid in [int(v) for v in np.unique(labels) if v > 0]:
        idx = np.argwhere(labels == lid)
        margin = [int(np.ceil(r)) + pad for r in ring_vox]
        box = tuple(slice(max(int(idx[:, a].min()) - margin[a], 0), min(int(idx[:, a].max()) + margin[a] + 1,
                                                                          organ.shape[a])) for a in range(3))
        mask = labels[box] == lid
        near = ndimage.distance_transform_edt(~mask, sampling=spacing_xyz[::-1]) <= RING_MM
        ring = near & ~(labels[box] > 0) & organ[box]
        source = [o[box].astype(np.float32) for o in out]  # earlier lesions' margins included
        organ_level, target, lesions = fill(lid, box, mask, ring, source)
        weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
        weight[weight < 1e-3] = 0.0
        region = weight > 0
        before, after, core = [], [], []
        inner = weight >= CORE_WEIGHT
        for c, a in enumerate(source):
            new = np.clip(a + weight * (lesions[c] - ndimage.gaussian_filter(a, 1.0)), *value_range[c])
            dtype = arrays[c].dtype
            if np.issubdtype(dtype, np.integer):
                new = np.rint(new)
            view = out[c][box]
            view[region] = new[region].astype(dtype)
            before.append(round(float(arrays[c][box][mask].astype(np.float64).mean()), 2))
            after.append(round(float(view[mask].astype(np.float64).mean()), 2))
            core.append(round(float(view[inner].astype(np.float64).mean()), 2) if inner.any() else float("nan"))
        blended[box] |= region
        records.append(PastedLesion(lid, kinds[lid], int(mask.sum()), [round(v, 2) for v in organ_level],
                                    [round(v, 2) for v in target], before, after, core))
    return out, blended, records


def paste_fill(channels: list[str], modality: str, organ: np.ndarray, kinds: dict[int, str],
               rng: np.random.Generator) -> Fill:
    """The ``paste`` method: the phantoms' intensity model (:func:`_levels`) with its smooth texture."""

    def fill(lid: int, box: tuple, mask: np.ndarray, ring: np.ndarray, source: list[np.ndarray]):
        organ_level, target, texture = _levels(kinds[lid], modality, channels, source, ring, organ[box], rng)
        values = []
        for c, a in enumerate(source):
            noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, size=a.shape).astype(np.float32), 2.0)
            values.append(target[c] + noise / (noise.std() + 1e-6) * texture[c])
        return organ_level, target, values

    return fill
