import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image, oblique_direction
from helpers import compose_patches

from DiffusionAnomalyLib.detection.presets import get_preset
from DiffusionAnomalyLib.detection.roi import (
    RoiPatch,
    check_roi_fits,
    extract_patch,
    organ_center,
    plan_patch,
)
from DiffusionAnomalyLib.errors import InputError

SMALL = get_preset("kidney").with_overrides({"spacing_mm": (2.0, 2.0, 2.0), "roi_size_mm": (48.0, 40.0, 64.0)})


def _world(image: sitk.Image):
    """World x, y, z (LPS) of every voxel centre, as (z, y, x) arrays."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    ijk = np.stack([i, j, k], -1).reshape(-1, 3).astype(float)
    d = np.array(image.GetDirection()).reshape(3, 3)
    pts = (ijk * np.array(image.GetSpacing())) @ d.T + np.array(image.GetOrigin())
    return [pts[:, a].reshape(size[::-1]) for a in range(3)]


def _smooth_scene(image: sitk.Image, organ_center_lps=(10.0, -20.0, 30.0)):
    """A smooth intensity field and an ellipsoid organ, defined in world space on ``image``'s grid."""
    x, y, z = _world(image)
    field = 100 * np.sin(x / 25.0) + 60 * np.cos(y / 30.0) + 0.8 * z
    cx, cy, cz = organ_center_lps
    organ = (((x - cx) / 18) ** 2 + ((y - cy) / 14) ** 2 + ((z - cz) / 25) ** 2) < 1
    img = sitk.GetImageFromArray(field.astype(np.float32))
    img.CopyInformation(image)
    mask = sitk.GetImageFromArray(organ.astype(np.uint8))
    mask.CopyInformation(image)
    return img, mask


def _grid(direction, spacing=(1.5, 1.5, 2.0), size=(80, 70, 60), center=(0.0, 0.0, 20.0)):
    d = np.array(direction, float).reshape(3, 3)
    origin = np.array(center) - d @ ((np.array(size) - 1) / 2.0 * np.array(spacing))
    return make_image(np.zeros(size[::-1], np.uint8), spacing, origin, direction)


LPS = (1, 0, 0, 0, 1, 0, 0, 0, 1)
RAS = (-1, 0, 0, 0, -1, 0, 0, 0, 1)  # how a RAS-stored NIfTI appears in ITK's LPS world


@pytest.mark.parametrize("direction", [LPS, RAS, oblique_direction(25)], ids=["LPS", "RAS", "oblique"])
def test_patch_centre_is_the_organ_centre_in_world_coordinates(direction):
    image, mask = _smooth_scene(_grid(direction))
    patch = plan_patch(mask, SMALL, "kidney_right", "right")
    ref = patch.reference_image()
    centre_voxel = [(n - 1) / 2.0 for n in patch.size_voxels]
    centre_world = ref.TransformContinuousIndexToPhysicalPoint(centre_voxel)
    np.testing.assert_allclose(centre_world, organ_center(mask), atol=1e-9)
    # the organ is centred in the patch up to one input voxel (its voxelised bounding box)
    np.testing.assert_allclose(centre_world, (10.0, -20.0, 30.0), atol=1.6 if direction != LPS else 1.0)
    assert ref.GetDirection() == LPS  # patches are always in patient axes


def test_lps_and_ras_storage_give_the_same_patch():
    a_img, a_mask = _smooth_scene(_grid(LPS))
    b_img, b_mask = _smooth_scene(_grid(RAS))
    pa = plan_patch(a_mask, SMALL, "k", "")
    pb = plan_patch(b_mask, SMALL, "k", "")
    np.testing.assert_allclose(pa.center_lps, pb.center_lps, atol=1e-9)
    np.testing.assert_allclose(extract_patch(a_img, pa), extract_patch(b_img, pb), atol=1e-3)


@pytest.mark.parametrize("direction", [LPS, RAS, oblique_direction(25)], ids=["LPS", "RAS", "oblique"])
def test_extract_identity_compose_round_trip(direction):
    image, mask = _smooth_scene(_grid(direction))
    patch = plan_patch(mask, SMALL, "k", "")
    values = extract_patch(image, patch, default=-1024)
    back, covered = compose_patches([(patch, values)], image, mode="mean", fill=np.nan)
    organ = sitk.GetArrayFromImage(mask) > 0
    original = sitk.GetArrayFromImage(image)
    assert covered[organ].all()
    err = np.abs(back[organ] - original[organ])
    span = np.ptp(original[organ])
    assert err.max() < 0.02 * span, (err.max(), span)  # two linear interpolations of a smooth field
    assert np.isnan(back[~covered]).all()


def test_patch_is_padded_with_background_outside_the_image():
    image, mask = _smooth_scene(_grid(LPS, size=(40, 40, 40), spacing=(1.5, 1.5, 2.0), center=(10, -20, 30)))
    big = SMALL.with_overrides({"roi_size_mm": (96.0, 96.0, 96.0)})
    patch = plan_patch(mask, big, "k", "")
    values = extract_patch(image, patch, default=-1024)
    assert values[0, 0, 0] == -1024 and values[values.shape[0] // 2, 24, 24] != -1024


def test_compose_overlaps_by_max_or_mean():
    ref = _grid(LPS, spacing=(1, 1, 1), size=(30, 20, 20), center=(0, 0, 0))
    p1 = RoiPatch("a", "", (-3.0, 0.0, 0.0), (10, 10, 10), (1.0, 1.0, 1.0))
    p2 = RoiPatch("b", "", (3.0, 0.0, 0.0), (10, 10, 10), (1.0, 1.0, 1.0))
    ones, threes = np.ones((10, 10, 10), np.float32), np.full((10, 10, 10), 3.0, np.float32)
    mx, cov = compose_patches([(p1, ones), (p2, threes)], ref, mode="max")
    mean, _ = compose_patches([(p1, ones), (p2, threes)], ref, mode="mean")
    centre = ref.TransformPhysicalPointToIndex((0.0, 0.0, 0.0))[::-1]
    left = ref.TransformPhysicalPointToIndex((-7.0, 0.0, 0.0))[::-1]
    assert mx[centre] == pytest.approx(3.0) and mean[centre] == pytest.approx(2.0)
    assert mx[left] == pytest.approx(1.0) and mean[left] == pytest.approx(1.0)
    assert mx[0, 0, 0] == 0.0 and not cov[0, 0, 0]
    with pytest.raises(InputError, match="composition mode"):
        compose_patches([(p1, ones)], ref, mode="median")
    with pytest.raises(InputError, match="does not match its grid"):
        compose_patches([(p1, ones[:5])], ref)


def test_roi_larger_than_the_image_is_an_error_naming_the_axis():
    image = _grid(LPS, spacing=(1, 1, 1), size=(120, 120, 40))
    with pytest.raises(InputError, match=r"the kidney ROI \(96 x 96 x 128 mm\) is larger than the image.*along z"):
        check_roi_fits(image, get_preset("kidney"), "scan.nii.gz")
    warnings = check_roi_fits(_grid(LPS, spacing=(1, 1, 1), size=(120, 120, 100)), get_preset("kidney"))
    assert len(warnings) == 1 and "along z" in warnings[0]
