"""Inspecting a reconstruction: seamless composition at ROI borders, the uncertainty map of K draws, the denoising
trajectory as a volume sequence, and pictures in radiological orientation whatever the storage."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique_direction
from helpers import read_volume_sequence

from DiffusionAnomalyLib.detection import pipeline
from DiffusionAnomalyLib.detection.anomaly import lesion_sample_fractions, voxel_std
from DiffusionAnomalyLib.detection.baseline import MedianBaseline
from DiffusionAnomalyLib.detection.overview import axial_plane, axial_slice
from DiffusionAnomalyLib.detection.presets import get_preset
from DiffusionAnomalyLib.detection.roi import PatchComposer, blend_weights
from DiffusionAnomalyLib.imaging.masks import MaskSet, OrganMask
from DiffusionAnomalyLib.imaging.sequence import write_volume_sequence
from DiffusionAnomalyLib.synthetic.phantoms import make_phantom

KIDNEY = get_preset("kidney")


class ShiftEverything:
    """A reconstructor that changes every voxel of its ROIs (the worst case for seams): x_hat = x + 0.5."""

    name = "shift-everything"

    def reconstruct(self, x, mask, spacing_mm):
        return (x + 0.5).astype(np.float32)


class Draws:
    """The median baseline drawn K times: identical draws, or each with its own seeded noise (network units)."""

    name = "median-draws"

    def __init__(self, k: int, noise: float) -> None:
        self.k, self.noise, self.draws = k, noise, None

    def reconstruct(self, x, mask, spacing_mm):
        base = MedianBaseline.for_preset(KIDNEY).reconstruct(x, mask, spacing_mm)
        rng = np.random.default_rng(5)
        self.draws = np.stack([base + self.noise * rng.standard_normal(base.shape).astype(np.float32)
                               for _ in range(self.k)])
        return self.draws.mean(axis=0)


@pytest.fixture(scope="module")
def lesion_case():
    """A kidney phantom (one lesion) as image and masks."""
    case = make_phantom("kidney", 11, 1)
    masks = MaskSet([OrganMask(f"kidney_{s}", s, case.organ_masks[f"kidney_{s}"]) for s in ("right", "left")], {})
    return case.channels["ct"], masks


def _face_gradients(image: np.ndarray, recon: np.ndarray, result, ref: sitk.Image) -> list[tuple[float, float]]:
    """Mean |difference| between the two input voxels straddling each x face of each ROI, in the input and in the
    reconstruction (over the face's y, z extent)."""
    out = []
    for p in result.patches:
        o, n, s = np.array(p.origin_lps), np.array(p.size_voxels), np.array(p.spacing_mm)
        lo = np.array(ref.TransformPhysicalPointToContinuousIndex(o.tolist()))
        hi = np.array(ref.TransformPhysicalPointToContinuousIndex((o + (n - 1) * s).tolist()))
        ys = slice(max(int(np.ceil(lo[1])), 0), min(int(np.floor(hi[1])), image.shape[1] - 1) + 1)
        zs = slice(max(int(np.ceil(lo[2])), 0), min(int(np.floor(hi[2])), image.shape[0] - 1) + 1)
        for a in (int(np.ceil(lo[0])) - 1, int(np.floor(hi[0]))):  # the voxel outside, then the one inside
            if a >= 0 and a + 1 < image.shape[2]:
                out.append((float(np.abs(image[zs, ys, a + 1] - image[zs, ys, a]).mean()),
                            float(np.abs(recon[zs, ys, a + 1] - recon[zs, ys, a]).mean())))
    return out


def test_no_seam_at_the_roi_border(lesion_case):
    image, masks = lesion_case
    result = pipeline.detect([image], masks, KIDNEY, ShiftEverything())
    src = sitk.GetArrayFromImage(image).astype(np.float32)
    rec = sitk.GetArrayFromImage(result.reconstruction[0])
    faces = _face_gradients(src, rec, result, image)
    assert len(faces) == 4  # both x faces of both kidney ROIs lie inside the scan
    for g_input, g_recon in faces:
        assert g_recon <= g_input + 1e-3, faces
    # the same change pasted without blending leaves a step of ~150 HU at every face
    hard = PatchComposer(result.patches, image, margin=0)
    deltas = [np.full(p.shape_zyx, 150.0, np.float32) for p in result.patches]
    pasted = src + hard.compose(deltas)
    assert all(g_rec > g_in + 50 for g_in, g_rec in _face_gradients(src, pasted, result, image))
    # deep inside a ROI the change is the reconstructor's own (blending only touches the margin)
    centre = image.TransformPhysicalPointToIndex(result.patches[0].center_lps)[::-1]
    assert rec[centre] - src[centre] == pytest.approx(150.0, abs=0.5) or src[centre] >= 400 - 150


def test_blend_weights_fade_to_zero_at_the_faces():
    w = blend_weights((14, 12, 12), margin=4)
    assert w[7, 6, 6] == pytest.approx(1.0) and w.max() == pytest.approx(1.0)
    for face in (w[0], w[-1], w[:, 0], w[:, -1], w[:, :, 0], w[:, :, -1], w[1], w[:, :, 1]):
        assert np.all(face == 0)
    assert np.all(np.diff(w[1:7, 6, 6]) >= 0)  # rising from the face inwards
    assert np.all(blend_weights((4, 4, 4), margin=0) == 1)


def test_identical_draws_give_zero_uncertainty_and_lesions_in_every_draw(lesion_case):
    image, masks = lesion_case
    rec = Draws(3, noise=0.0)
    result = pipeline.detect([image], masks, KIDNEY, rec)
    unc = sitk.GetArrayFromImage(result.uncertainty[0])
    assert np.all(unc == 0.0)  # exactly
    assert result.table and all(le.sample_fraction == 1.0 and le.mean_uncertainty == 0.0 for le in result.table)
    assert result.parameters["uncertainty_samples"] == 3
    assert voxel_std([np.full((3, 3), 0.1, np.float32)] * 7).max() == 0.0


def test_uncertainty_is_numpys_std_of_the_composed_draws(lesion_case):
    image, masks = lesion_case
    rec = Draws(4, noise=0.05)
    result = pipeline.detect([image], masks, KIDNEY, rec)
    unc = sitk.GetArrayFromImage(result.uncertainty[0])
    # the saved draws, each composed back as a reconstruction in input units, then numpy's std
    prepared = pipeline.extract_case_patches([image], masks, KIDNEY)
    composer = PatchComposer(result.patches, image, pipeline.reconstruction_margin_voxels(KIDNEY))
    src = sitk.GetArrayFromImage(image).astype(np.float32)
    sc = prepared.scalings
    recs = np.stack([src + composer.compose([sc[i][0].inverse(d[i, 0]) - sc[i][0].inverse(prepared.x[i, 0])
                                             for i in range(len(result.patches))]) for d in rec.draws])
    np.testing.assert_allclose(unc, recs.std(axis=0), rtol=1e-4, atol=1e-3)
    # in input units (HU), zero outside the ROIs, positive inside them
    covered = composer.compose([np.ones(p.shape_zyx, np.float32) for p in result.patches]) > 0
    assert np.all(unc[~covered] == 0) and unc[covered].mean() > 1.0
    for le in result.table:
        labels = sitk.GetArrayFromImage(result.lesions) == le.id
        assert le.mean_uncertainty == pytest.approx(float(unc[labels].mean()), rel=1e-5)
        assert 0.0 <= le.sample_fraction <= 1.0


def test_lesion_sample_fractions_count_overlapping_draws():
    labels = np.zeros((1, 4, 8), np.uint16)
    labels[0, :, 0:2], labels[0, :, 5:7] = 1, 2
    hit_first = np.zeros_like(labels)
    hit_first[0, 1, 1] = 1
    both = (labels > 0).astype(np.uint16)
    assert lesion_sample_fractions(labels, [hit_first, both, np.zeros_like(labels), both], 4) == {1: 0.75, 2: 0.5}


def test_sequence_file_round_trip(tmp_path):
    ref = sitk.Image([6, 5, 4], sitk.sitkFloat32)
    ref.SetSpacing((1.5, 2.0, 2.5))
    ref.SetOrigin((10.0, -20.0, 30.0))
    ref.SetDirection(oblique_direction(15))
    frames = np.random.default_rng(0).standard_normal((3, 4, 5, 6)).astype(np.float32)
    path = write_volume_sequence(tmp_path / "t.seq.nrrd", iter(frames), ref, "step", [0, 5, 10],
                                 [{"DiffusionAnomaly.noise_level": str(t)} for t in (250, 200, 150)],
                                 {"DiffusionAnomaly.noise_levels": "250 200 150"})
    data, fields, grid = read_volume_sequence(path)
    assert np.array_equal(data, frames)
    assert fields["axis 3 index values"] == "0 5 10"
    assert fields["axis 3 item 0001 DiffusionAnomaly.noise_level"] == "200"
    np.testing.assert_allclose(grid.GetDirection(), ref.GetDirection(), atol=1e-12)
    np.testing.assert_allclose(grid.GetOrigin(), ref.GetOrigin())
    np.testing.assert_allclose(grid.GetSpacing(), ref.GetSpacing())
    with pytest.raises(Exception, match="frames written"):
        write_volume_sequence(tmp_path / "short.seq.nrrd", iter(frames[:2]), ref, "step", [0, 5, 10])
    assert not list(tmp_path.glob(".tmp-*")) and not (tmp_path / "short.seq.nrrd").exists()


def _stored(image: sitk.Image, storage: str) -> sitk.Image:
    """The same scan stored LPS (as given), RAS (the same voxels, i and j reversed) or obliquely (resampled)."""
    if storage == "LPS":
        return image
    if storage == "RAS":
        out = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[:, ::-1, ::-1].copy())
        out.SetSpacing(image.GetSpacing())
        out.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
        size = image.GetSize()
        out.SetOrigin(image.TransformIndexToPhysicalPoint([size[0] - 1, size[1] - 1, 0]))
        return out
    d = np.array(oblique_direction(20)).reshape(3, 3)
    size = np.array(image.GetSize())
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size]))
    ref = sitk.Image([int(v) for v in size], image.GetPixelID())
    ref.SetSpacing(image.GetSpacing())
    ref.SetDirection(tuple(d.ravel()))
    ref.SetOrigin(tuple(centre - d @ ((size - 1) / 2 * np.array(image.GetSpacing()))))
    return sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, -1024.0)


@pytest.mark.parametrize("storage", ["RAS", "oblique"])
def test_axial_slices_are_radiological_whatever_the_storage(storage):
    arr = np.full((20, 40, 50), -1000.0, np.float32)
    arr[8:12, 4:10, 4:12] = 500.0  # a marker at low LPS x (patient right) and low y (anterior)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetOrigin((-25.0, -20.0, 0.0))
    other = _stored(image, storage)
    a = axial_slice(image, axial_plane(image, 20.0), default=-1000)
    b = axial_slice(other, axial_plane(image, 20.0), default=-1000)
    if storage == "RAS":
        assert np.array_equal(a, b)
    # the marker is at the top (anterior) left (patient right) of the picture, in every storage
    for s in (a, b):
        rows, cols = np.nonzero(s > 0)
        assert rows.mean() < s.shape[0] / 3 and cols.mean() < s.shape[1] / 3
