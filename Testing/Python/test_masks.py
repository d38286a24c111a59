import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image

from DiffusionAnomalyLib.detection.presets import get_preset
from DiffusionAnomalyLib.errors import InputError, MissingDependencyError, OrganMissingError
from DiffusionAnomalyLib.imaging.io import write_volume
from DiffusionAnomalyLib.imaging.masks import (
    load_totalseg_masks,
    load_user_mask,
    read_multilabel_class_map,
    split_left_right,
)
from DiffusionAnomalyLib.imaging.totalseg import check_available

KIDNEY = get_preset("kidney")
LPS = (1, 0, 0, 0, 1, 0, 0, 0, 1)
RAS = (-1, 0, 0, 0, -1, 0, 0, 0, 1)


def _two_kidneys(direction, value_right=2, value_left=3):
    """Blobs at world x = -50 (patient right) and +50 (patient left), whatever the storage order."""
    size = (60, 20, 20)
    d = np.array(direction, float).reshape(3, 3)
    spacing = np.array([2.0, 2.0, 2.0])
    origin = -d @ ((np.array(size) - 1) / 2.0 * spacing)
    img = make_image(np.zeros(size[::-1], np.uint8), spacing, origin, direction)
    arr = np.zeros(size[::-1], np.uint8)
    for x_world, v in ((-50.0, value_right), (50.0, value_left)):
        idx = img.TransformPhysicalPointToIndex((x_world, 0.0, 0.0))
        arr[idx[2] - 3: idx[2] + 4, idx[1] - 3: idx[1] + 4, idx[0] - 3: idx[0] + 4] = v
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    return out


@pytest.mark.parametrize("direction", [LPS, RAS], ids=["LPS", "RAS"])
def test_split_left_right_uses_patient_coordinates(direction):
    mask = _two_kidneys(direction, 1, 7)
    sides = split_left_right(mask)
    for side, x_expected in (("right", -50.0), ("left", 50.0)):
        arr = sitk.GetArrayFromImage(sides[side])
        idx = np.argwhere(arr).mean(axis=0)[::-1]
        x_world = sides[side].TransformContinuousIndexToPhysicalPoint(idx.tolist())[0]
        assert x_world == pytest.approx(x_expected, abs=2.0)


def test_user_mask_binary_and_label_value(tmp_path):
    mask = _two_kidneys(RAS)
    path = write_volume(mask, tmp_path / "mask.nrrd")
    both = load_user_mask(path, mask, KIDNEY)
    assert {m.side for m in both.masks} == {"left", "right"} and not both.missing
    only_left = load_user_mask(path, mask, KIDNEY, label=3)  # label 3 = the blob at patient-left
    assert [m.side for m in only_left.masks] == ["left"]
    assert "kidney_right" in only_left.missing
    with pytest.raises(InputError, match=r"mask\.nrrd: the mask is empty \(no label 9\)"):
        load_user_mask(path, mask, KIDNEY, label=9)


def test_mask_on_another_grid_is_rejected(tmp_path):
    mask = _two_kidneys(LPS)
    other = make_image(np.zeros((20, 20, 61), np.uint8), (2, 2, 2))
    path = write_volume(mask, tmp_path / "mask.nii.gz")
    with pytest.raises(InputError, match=r"mask\.nii\.gz and the image are on different grids: size"):
        load_user_mask(path, other, KIDNEY)


def test_missing_organ_gives_per_organ_message_and_all_missing_is_an_error(tmp_path):
    mask = _two_kidneys(LPS, value_right=2, value_left=0)  # left kidney removed
    path = write_volume(mask, tmp_path / "seg.nii.gz")
    result = load_totalseg_masks(path, mask, KIDNEY)  # no header table -> built-in 'total' labels
    assert [m.structure for m in result.masks] == ["kidney_right"]
    assert "no left kidney (kidney_left)" in result.missing["kidney_left"]
    assert "nephrectomy" in result.missing["kidney_left"]
    empty = write_volume(make_image(np.zeros((20, 20, 60), np.uint8), (2, 2, 2), mask.GetOrigin()),
                         tmp_path / "empty.nii.gz")
    with pytest.raises(OrganMissingError, match="none of"):
        load_totalseg_masks(empty, mask, KIDNEY)


def test_totalsegmentator_absent_says_how_to_install():
    with pytest.raises(MissingDependencyError) as info:
        check_available(KIDNEY)
    text = str(info.value)
    assert "pip install" in text and "TOTALSEG_WEIGHTS_PATH" in text and "--mask" in text


@pytest.mark.shared_data
def test_real_totalsegmentator_multilabel_and_per_organ_files(shared_data):
    ts = shared_data / "totalsegmentator_examples"
    table = read_multilabel_class_map(ts / "example_seg.nii.gz")
    assert table[2] == "kidney_right" and table[3] == "kidney_left" and table[5] == "liver" and len(table) == 117
    assert read_multilabel_class_map(ts / "example_seg_mr.nii.gz")[50] == "brain"
    ct = sitk.ReadImage(str(ts / "example_ct_sm.nii.gz"))
    multi = load_totalseg_masks(ts / "example_seg.nii.gz", ct, KIDNEY)
    folder = load_totalseg_masks(ts / "example_seg_fast_binary", ct, KIDNEY)
    assert {m.side for m in multi.masks} == {"left", "right"} == {m.side for m in folder.masks}
    for m in multi.masks:  # the label image and the per-organ files describe the same organ
        other = next(f for f in folder.masks if f.side == m.side)
        a, b = sitk.GetArrayFromImage(m.image) > 0, sitk.GetArrayFromImage(other.image) > 0
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.8
        # patient-left kidney lies at larger LPS x than the right one
    xs = {m.side: np.argwhere(sitk.GetArrayFromImage(m.image))[:, 2].mean() for m in multi.masks}
    cx = {s: ct.TransformContinuousIndexToPhysicalPoint([x, 50.0, 15.0])[0] for s, x in xs.items()}
    assert cx["left"] > cx["right"]
    liver = load_totalseg_masks(ts / "example_seg.nii.gz", ct, get_preset("liver"))
    assert liver.masks[0].voxels > 1000
