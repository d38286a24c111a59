"""Fixed-physical-size ROI patches around organs, and composition of patch results back.

A patch is a grid in patient space (LPS, identity direction) at the preset spacing, centred on
the centre of the organ's bounding box in world coordinates, so the network always sees the same
anatomical orientation whatever the input's storage orientation (LPS, RAS, oblique). Where the
patch leaves the image it is padded with the modality's background value.

Composition resamples each patch onto the native grid (linear interpolation) and combines
overlapping patches by ``max`` (the default for anomaly maps: a lesion seen by one patch is not
diluted by another) or ``mean`` (for reconstructions). Voxels no patch covers get ``fill``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from DiffusionAnomalyLib.detection.presets import OrganPreset
from DiffusionAnomalyLib.errors import InputError

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class RoiPatch:
    """One patch grid: ``size_voxels`` and ``spacing_mm`` are (x, y, z); axes are LPS."""

    structure: str
    side: str
    center_lps: tuple[float, float, float]
    size_voxels: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]

    @property
    def origin_lps(self) -> tuple[float, float, float]:
        """World position of voxel (0, 0, 0), chosen so the grid's centre is ``center_lps``."""
        return tuple(
            c - (n - 1) / 2.0 * s
            for c, n, s in zip(self.center_lps, self.size_voxels, self.spacing_mm, strict=True)
        )

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(reversed(self.size_voxels))

    def reference_image(self, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
        """An empty image carrying the patch grid (for resampling onto it)."""
        image = sitk.Image([int(v) for v in self.size_voxels], pixel_type)
        image.SetSpacing(self.spacing_mm)
        image.SetOrigin(self.origin_lps)
        image.SetDirection(_IDENTITY)
        return image

    def image(self, values: np.ndarray) -> sitk.Image:
        """A (z, y, x) array on this patch's grid, as a float32 image."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(values, dtype=np.float32))
        image.SetSpacing(self.spacing_mm)
        image.SetOrigin(self.origin_lps)
        image.SetDirection(_IDENTITY)
        return image

    def to_dict(self) -> dict:
        return {
            "structure": self.structure,
            "side": self.side,
            "center_lps": list(self.center_lps),
            "size_voxels": list(self.size_voxels),
            "spacing_mm": list(self.spacing_mm),
            "origin_lps": list(self.origin_lps),
        }


def voxel_centres_lps(image: sitk.Image, zyx_indices: np.ndarray) -> np.ndarray:
    """World (LPS) coordinates of voxel indices given as an (N, 3) array in (z, y, x) order."""
    ijk = np.asarray(zyx_indices, dtype=np.float64)[:, ::-1]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return (ijk * np.array(image.GetSpacing())) @ direction.T + np.array(image.GetOrigin())


def organ_center(mask: sitk.Image) -> tuple[float, float, float]:
    """Centre of the world-axis bounding box of the mask's voxel centres (LPS, mm)."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if idx.size == 0:
        raise InputError("the organ mask is empty")
    pts = voxel_centres_lps(mask, idx)
    return tuple(float(v) for v in (pts.min(axis=0) + pts.max(axis=0)) / 2.0)


def image_extent_lps(image: sitk.Image) -> np.ndarray:
    """Physical extent (mm) of the image's voxel footprint along the world x, y, z axes."""
    size = np.array(image.GetSize(), dtype=float)
    corners = np.array([[i, j, k] for i in (-0.5, size[0] - 0.5) for j in (-0.5, size[1] - 0.5)
                        for k in (-0.5, size[2] - 0.5)])
    pts = np.array([image.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    return pts.max(axis=0) - pts.min(axis=0)


def check_roi_fits(image: sitk.Image, preset: OrganPreset, name: str = "the image") -> list[str]:
    """Fail if the image spans less than ``preset.min_image_extent_fraction`` of the ROI on any axis.

    Returns warnings for axes where the image is smaller than the ROI but above that fraction
    (the patch is then padded with background).
    """
    extent = image_extent_lps(image)
    roi = np.array(preset.roi_size_mm)
    warnings = []
    for axis, e, r in zip("xyz", extent, roi, strict=True):
        if e < preset.min_image_extent_fraction * r:
            raise InputError(
                f"{name}: the {preset.name} ROI ({' x '.join(f'{v:g}' for v in roi)} mm) is larger than the "
                f"image ({' x '.join(f'{v:.0f}' for v in extent)} mm): along {axis} the image covers "
                f"{e:.0f} mm, less than {preset.min_image_extent_fraction:.0%} of the ROI's {r:g} mm"
            )
        if e < r:
            warnings.append(f"{name}: along {axis} the image covers {e:.0f} mm of the {r:g} mm ROI; padding")
    return warnings


def outside_patch(mask: sitk.Image, patch: RoiPatch) -> dict | None:
    """The part of ``mask``'s organ that ``patch`` does not cover (None when it covers all of it): voxel count,
    fraction, volume (ml) and the LPS bounding box of the uncovered voxels."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if not len(idx):
        return None
    lps = voxel_centres_lps(mask, idx)
    lo = np.array(patch.origin_lps) - np.array(patch.spacing_mm) / 2
    hi = lo + np.array(patch.size_voxels) * np.array(patch.spacing_mm)
    out = np.any((lps < lo) | (lps > hi), axis=1)
    n = int(np.count_nonzero(out))
    if n == 0:
        return None
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
    return {"structure": patch.structure, "side": patch.side, "voxels": n, "fraction": round(n / len(idx), 4),
            "volume_ml": round(n * voxel_ml, 2), "bbox_lps_min": [round(float(v), 1) for v in lps[out].min(axis=0)],
            "bbox_lps_max": [round(float(v), 1) for v in lps[out].max(axis=0)],
            "roi_lps_min": [round(float(v), 1) for v in lo], "roi_lps_max": [round(float(v), 1) for v in hi]}


def plan_patch(mask: sitk.Image, preset: OrganPreset, structure: str, side: str) -> RoiPatch:
    """The ROI patch of ``preset`` centred on ``mask``'s organ."""
    return RoiPatch(structure, side, organ_center(mask), preset.roi_size_voxels, tuple(preset.spacing_mm))


def extract_patch(
    image: sitk.Image, patch: RoiPatch, *, default: float = 0.0, interpolator: str = "linear"
) -> np.ndarray:
    """Resample ``image`` onto ``patch``'s grid; returns a (z, y, x) float32 array.

    ``interpolator``: "linear" for intensities, "nearest" for masks and labels. Points outside
    the image get ``default`` (the modality's background).
    """
    interp = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}[interpolator]
    out = sitk.Resample(image, patch.reference_image(), sitk.Transform(), interp, float(default),
                        sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _region_grid(reference: sitk.Image, lo, hi) -> sitk.Image:
    """An empty float32 image on ``reference``'s grid covering the index box ``lo``..``hi`` (x, y, z; inclusive)."""
    sub = sitk.Image([int(v) for v in hi - lo + 1], sitk.sitkFloat32)
    sub.SetSpacing(reference.GetSpacing())
    sub.SetDirection(reference.GetDirection())
    sub.SetOrigin(reference.TransformIndexToPhysicalPoint([int(v) for v in lo]))
    return sub


def _covered_region(patch: RoiPatch, reference: sitk.Image) -> tuple[np.ndarray, np.ndarray] | None:
    size = np.array(patch.size_voxels, dtype=float)
    origin = np.array(patch.origin_lps)
    spacing = np.array(patch.spacing_mm)
    lo_idx, hi_idx = np.full(3, np.inf), np.full(3, -np.inf)
    for c in np.array([[i, j, k] for i in (-0.5, size[0] - 0.5) for j in (-0.5, size[1] - 0.5)
                       for k in (-0.5, size[2] - 0.5)]):
        ci = np.array(reference.TransformPhysicalPointToContinuousIndex((origin + c * spacing).tolist()))
        lo_idx, hi_idx = np.minimum(lo_idx, ci), np.maximum(hi_idx, ci)
    ref_size = np.array(reference.GetSize())
    lo = np.clip(np.floor(lo_idx).astype(int) - 1, 0, ref_size - 1)
    hi = np.clip(np.ceil(hi_idx).astype(int) + 1, 0, ref_size - 1)
    if np.any(hi_idx < -0.5) or np.any(lo_idx > ref_size - 0.5):
        return None
    return lo, hi


#: Width (patch voxels) of the band at each patch face over which a patch's change fades out into the input.
BLEND_MARGIN_VOXELS = 4


def blend_weights(shape_zyx: Sequence[int], margin: int = BLEND_MARGIN_VOXELS) -> np.ndarray:
    """A patch's blending weight (z, y, x): 0 on the outermost voxel layer (where decoders are least reliable), then a
    raised-cosine ramp ``margin`` voxels wide up to 1 inside, at every face (the product of one ramp per axis). So
    between the patch's face and one voxel inside it the input is left exactly as it is. All ones when ``margin``
    is 0 (no blending)."""
    w = np.ones(tuple(int(n) for n in shape_zyx), np.float32)
    if margin <= 0:
        return w
    for axis, n in enumerate(w.shape):
        j = np.arange(n, dtype=np.float64)
        d = np.minimum(j, n - 1 - j)
        ramp = (0.5 - 0.5 * np.cos(np.pi * np.clip((d - 1.0) / margin, 0.0, 1.0))).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = n
        w *= ramp.reshape(shape)
    return w


class PatchComposer:
    """Puts patch-grid arrays back onto ``reference``'s grid, blending each patch's border into what lies around it.

    Each patch carries :func:`blend_weights` (resampled onto the native grid once, so composing many frames or
    samples of one case costs one resampling per patch and frame). ``mean`` composition (changes: a
    reconstruction's difference from the input) gives ``sum(w_i v_i) / max(sum(w_i), 1)``: a patch's change fades to
    0 at its faces, and where patches overlap they cross-fade, so no patch edge shows. ``max`` composition (anomaly
    maps) gives ``max_i(w_i v_i)``: a lesion seen by one patch is not diluted by another, and a patch's scores fade
    out at its faces. Inside every patch, beyond ``margin`` voxels from its faces, the result is the plain mean / max.
    """

    def __init__(self, patches: Sequence[RoiPatch], reference: sitk.Image, margin: int = BLEND_MARGIN_VOXELS) -> None:
        self.patches = list(patches)
        self.reference = reference
        self.margin = int(margin)
        self.shape = tuple(reversed(reference.GetSize()))
        self._boxes: list[tuple[sitk.Image, tuple[slice, ...]] | None] = []
        self._weights: list[np.ndarray | None] = []
        for patch in self.patches:
            region = _covered_region(patch, reference)
            if region is None:
                self._boxes.append(None)
                self._weights.append(None)
                continue
            lo, hi = region
            sub = _region_grid(reference, lo, hi)
            sl = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo[::-1], hi[::-1], strict=True))
            self._boxes.append((sub, sl))
            w = self._resample(patch, blend_weights(patch.shape_zyx, margin), sub)
            self._weights.append(np.where(np.isfinite(w), w, 0.0).astype(np.float32))

    @staticmethod
    def _resample(patch: RoiPatch, values: np.ndarray, sub: sitk.Image) -> np.ndarray:
        out = sitk.Resample(patch.image(values), sub, sitk.Transform(), sitk.sitkLinear, float("nan"))
        return sitk.GetArrayFromImage(out)

    def compose(self, values: Sequence[np.ndarray], mode: str = "mean", fill: float = 0.0) -> np.ndarray:
        """One (z, y, x) float32 array on the reference grid from one array per patch (in the patches' order)."""
        if mode not in ("max", "mean"):
            raise InputError(f"unknown composition mode {mode!r}; use 'max' or 'mean'")
        if len(values) != len(self.patches):
            raise InputError(f"{len(values)} patch arrays for {len(self.patches)} patches")
        acc = np.zeros(self.shape, np.float32)
        wsum = np.zeros(self.shape, np.float32)
        for patch, v, box, w in zip(self.patches, values, self._boxes, self._weights, strict=True):
            if tuple(v.shape) != patch.shape_zyx:
                raise InputError(f"patch array shape {v.shape} does not match its grid {patch.shape_zyx}")
            if box is None:
                continue
            sub, sl = box
            res = self._resample(patch, v, sub)
            weighted = np.where(np.isfinite(res), res, 0.0) * w
            if mode == "max":
                acc[sl] = np.where(w > 0, np.maximum(np.where(wsum[sl] > 0, acc[sl], -np.inf), weighted), acc[sl])
            else:
                acc[sl] += weighted
            wsum[sl] += w
        covered = wsum > 0
        if mode == "mean":
            np.divide(acc, np.maximum(wsum, 1.0), out=acc)
        acc[~covered] = fill
        return acc
