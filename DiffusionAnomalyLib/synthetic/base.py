"""The phantoms' shared lesion model: the lesion and case records, the world-coordinate grid, and the lesion
shapes (the default generator's irregular ellipsoid, the varied generator's shapes) and diameters."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

KINDS_CT = ("hypo", "hyper", "iso", "cyst")
POSITIONS = ("inside", "border", "exophytic")
#: Diameter strata (mm) lesions are drawn from, one stratum chosen uniformly per lesion.
DIAMETER_STRATA = ((5.0, 20.0), (20.0, 40.0), (40.0, 70.0), (70.0, 80.0))


@dataclass
class LesionSpec:
    """One synthetic lesion (world coordinates LPS, mm)."""

    id: int
    structure: str
    side: str
    kind: str
    position: str
    diameter_mm: float
    center_lps: tuple[float, float, float]
    voxels: int = 0
    shape: str = ""  # the varied generator's lesion shape (VARIED_SHAPES); "" for the default generator


@dataclass
class PhantomCase:
    """A generated case: channel images, organ masks, lesion instance labels and metadata."""

    case_id: str
    organ: str
    seed: int
    channels: dict[str, sitk.Image]
    organ_masks: dict[str, sitk.Image]  # TotalSegmentator structure name -> binary mask
    lesion_labels: sitk.Image  # 0 background, 1..K lesion ids
    lesions: list[LesionSpec]
    structure_labels: dict[str, str]  # structure -> "healthy" | "unhealthy"
    report: str
    phase: str
    meta: dict = field(default_factory=dict)


class _Grid:
    """World coordinates (LPS) of an axis-aligned grid, as broadcastable (z, y, x) arrays."""

    def __init__(self, size_xyz: tuple[int, int, int], spacing: tuple[float, float, float],
                 center: tuple[float, float, float]):
        self.size = size_xyz
        self.spacing = spacing
        self.origin = tuple(c - (n - 1) / 2.0 * s for c, n, s in zip(center, size_xyz, spacing, strict=True))
        nx, ny, nz = size_xyz
        self.x = (self.origin[0] + np.arange(nx, dtype=np.float32) * spacing[0])[None, None, :]
        self.y = (self.origin[1] + np.arange(ny, dtype=np.float32) * spacing[1])[None, :, None]
        self.z = (self.origin[2] + np.arange(nz, dtype=np.float32) * spacing[2])[:, None, None]
        self.shape = (nz, ny, nx)

    def image(self, array: np.ndarray) -> sitk.Image:
        im = sitk.GetImageFromArray(array)
        im.SetSpacing(self.spacing)
        im.SetOrigin(self.origin)
        return im

    def local(self, center, rotation: np.ndarray | None = None):
        """Coordinates relative to ``center``, optionally in a rotated frame (columns = local axes)."""
        dx, dy, dz = self.x - center[0], self.y - center[1], self.z - center[2]
        if rotation is None:
            return dx, dy, dz
        r = rotation
        return (r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz,
                r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz,
                r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz)

    def crop(self, center, half_mm) -> tuple[tuple[slice, slice, slice], _Grid]:
        """The sub-grid within ``half_mm`` of ``center`` (for work local to a structure): one distance, or one per
        axis (x, y, z)."""
        half = (half_mm,) * 3 if np.isscalar(half_mm) else tuple(half_mm)
        slices = []
        for axis, c, h in ((self.z, center[2], half[2]), (self.y, center[1], half[1]), (self.x, center[0], half[0])):
            a = axis.ravel()
            lo, hi = np.searchsorted(a, c - h), np.searchsorted(a, c + h)
            slices.append(slice(int(lo), int(max(hi, lo + 1))))
        sub = object.__new__(_Grid)
        sub.spacing, sub.size, sub.origin = self.spacing, self.size, self.origin
        sub.z, sub.y, sub.x = self.z[slices[0]], self.y[:, slices[1]], self.x[:, :, slices[2]]
        sub.shape = (sub.z.shape[0], sub.y.shape[1], sub.x.shape[2])
        return tuple(slices), sub

    def ellipsoid_crop(self, center, radii, rotation=None, reach: float = 1.0) -> tuple[tuple[slice, ...], _Grid]:
        """The sub-grid holding every point whose :meth:`ellipsoid_r` is below ``reach`` (plus a voxel), so that
        work on one structure need not touch the whole volume; values computed on it equal the whole grid's."""
        r = np.eye(3) if rotation is None else np.asarray(rotation, float)
        half = reach * np.sqrt(((r * np.asarray(radii, float)[None, :]) ** 2).sum(axis=1)) + max(self.spacing)
        return self.crop(center, tuple(float(h) for h in half))

    def ellipsoid_r(self, center, radii, rotation=None) -> np.ndarray:
        """Normalised ellipsoid radius: < 1 inside, 1 on the surface."""
        u, v, w = self.local(center, rotation)
        return np.sqrt((u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (w / radii[2]) ** 2)


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation matrix from angles in degrees about x, then y, then z."""
    a, b, c = np.deg2rad([rx, ry, rz])
    mx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    my = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    mz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return mz @ my @ mx


def _waves(rng: np.random.Generator, n: int, wavelength: tuple[float, float]):
    """Random plane waves (k vectors in rad/mm, phases) for smooth folding/irregularity fields."""
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = dirs * (2 * np.pi / rng.uniform(*wavelength, size=(n, 1)))
    return k, rng.uniform(0, 2 * np.pi, size=n)


def _wave_field(grid: _Grid, k: np.ndarray, phase: np.ndarray) -> np.ndarray:
    out = np.zeros(grid.shape, np.float32)
    for kv, ph in zip(k, phase, strict=True):
        out += np.cos(kv[0] * grid.x + kv[1] * grid.y + kv[2] * grid.z + ph)
    return out / np.sqrt(len(phase))


def _lesion_shape(grid: _Grid, rng: np.random.Generator, center, diameter: float) -> np.ndarray:
    """Irregular lesion: an ellipsoid whose surface is modulated by smooth directional harmonics."""
    radii = diameter / 2.0 * rng.uniform(0.85, 1.15, size=3)
    rot = _rotation(*rng.uniform(0, 180, size=3))
    u, v, w = grid.local(center, rot)
    r = np.sqrt((u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (w / radii[2]) ** 2)
    norm = np.sqrt(u * u + v * v + w * w) + 1e-3
    bump = np.zeros(grid.shape, np.float32)
    for _ in range(4):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        bump += np.cos(rng.integers(1, 4) * np.pi * (d[0] * u + d[1] * v + d[2] * w) / norm + rng.uniform(0, 6.3))
    return r * (1.0 + 0.08 * bump) < 1.0


#: Lesion shapes of the varied generator (``variety=True``): the default generator's harmonically modulated
#: ellipsoid, a strongly lobulated one, several merged blobs, and a thresholded random field inside a sphere.
VARIED_SHAPES = ("ellipsoid", "lobulated", "multifocal", "irregular")


def _varied_lesion_shape(grid: _Grid, rng: np.random.Generator, center, diameter: float) -> tuple[np.ndarray, str]:
    """A lesion of one of :data:`VARIED_SHAPES` (drawn from ``rng``), about ``diameter`` across."""
    kind = str(rng.choice(VARIED_SHAPES))
    if kind == "ellipsoid":
        return _lesion_shape(grid, rng, center, diameter), kind
    if kind == "lobulated":
        radii = diameter / 2.0 * rng.uniform(0.7, 1.3, size=3)
        rot = _rotation(*rng.uniform(0, 180, size=3))
        u, v, w = grid.local(center, rot)
        r = np.sqrt((u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (w / radii[2]) ** 2)
        norm = np.sqrt(u * u + v * v + w * w) + 1e-3
        bump = np.zeros(grid.shape, np.float32)
        for _ in range(6):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            bump += np.cos(rng.integers(2, 6) * np.pi * (d[0] * u + d[1] * v + d[2] * w) / norm + rng.uniform(0, 6.3))
        return r * (1.0 + 0.1 * bump) < 1.0, kind
    if kind == "multifocal":
        out = np.zeros(grid.shape, bool)
        n = int(rng.integers(2, 5))
        for _ in range(n):
            offset = rng.normal(size=3)
            offset *= rng.uniform(0.1, 0.3) * diameter / np.linalg.norm(offset)
            sub_d = diameter * rng.uniform(0.45, 0.7)
            out |= grid.ellipsoid_r(tuple(np.array(center) + offset), sub_d / 2.0 * rng.uniform(0.8, 1.2, size=3),
                                    _rotation(*rng.uniform(0, 180, size=3))) < 1.0
        return out, kind
    # irregular: a smooth random field thresholded inside a sphere, so that the lesion is one ragged mass
    r = grid.ellipsoid_r(center, (diameter / 2.0,) * 3)
    field = ndimage.gaussian_filter(rng.normal(size=grid.shape).astype(np.float32),
                                    sigma=max(diameter / 8.0 / min(grid.spacing), 1.0))
    field /= field.std() + 1e-6
    return (r < 1.0) & (field + 2.5 * (1.0 - r) > 0.9) | (r < 0.45), kind


#: Lesion size mixes of the CT generators (``lesion_sizes``, ``settings.LESION_SIZES``): ``strata`` (the default) draws
#: a TNM stratum of :data:`DIAMETER_STRATA` uniformly, then a diameter uniformly inside it (25 % of lesions up to 2 cm);
#: ``incidental`` draws the diameter from a log-normal with the median (2.0 cm) and mean (2.5 cm) of the enhancing
#: renal masses found on imaging and kept under surveillance by Crispen et al., Cancer 2009;115:2844-52 (172
#: masses, 0.4-12 cm), limited to 5 mm .. ``max_diameter``: about half of its lesions are 2 cm or less.
#: The ``incidental`` mix's log-normal: median 20 mm; sigma from mean / median = exp(sigma^2 / 2) = 2.5 / 2.0.
INCIDENTAL_MEDIAN_MM = 20.0
INCIDENTAL_SIGMA = float(np.sqrt(2.0 * np.log(2.5 / 2.0)))


def _diameter(rng: np.random.Generator, max_diameter: float, sizes: str = "strata") -> float:
    if sizes == "incidental":
        for _ in range(100):
            d = float(rng.lognormal(np.log(INCIDENTAL_MEDIAN_MM), INCIDENTAL_SIGMA))
            if 5.0 <= d <= max_diameter:
                return d
        return float(min(INCIDENTAL_MEDIAN_MM, max_diameter))
    strata = [s for s in DIAMETER_STRATA if s[0] < max_diameter]
    lo, hi = strata[rng.integers(len(strata))]
    return float(rng.uniform(lo, min(hi, max_diameter)))

