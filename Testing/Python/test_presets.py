import pytest

from DiffusionAnomalyLib.detection.presets import PRESETS, get_preset
from DiffusionAnomalyLib.errors import InputError


def test_kidney_preset_follows_seed_000():
    k = get_preset("Kidney")
    assert k.roi_size_mm == (96.0, 96.0, 128.0)  # 128 mm along the body axis (z)
    assert k.spacing_mm == (1.0, 1.0, 1.0)
    assert k.roi_size_voxels == (96, 96, 128)
    assert k.structures == {"right": "kidney_right", "left": "kidney_left"} and k.paired
    assert (k.min_component_voxels, k.min_axial_extent_mm) == (20, 3.0)
    assert k.modality == "CT" and k.normalization.kind == "ct_window"


def test_all_presets_have_whole_voxel_rois_and_valid_settings():
    assert set(PRESETS) == {"kidney", "liver", "brain"}
    for p in PRESETS.values():
        for size, spacing, vox in zip(p.roi_size_mm, p.spacing_mm, p.roi_size_voxels, strict=True):
            assert vox * spacing == pytest.approx(size)
            assert vox % 8 == 0  # divisible by the autoencoder's 4x and a U-Net level below
    brain = get_preset("brain")
    assert brain.channels == ("t1n", "t1c", "t2w", "t2f")
    assert brain.normalization.kind == "mr_percentile" and brain.totalseg_task == "total_mr"


def test_overrides_replace_fields_and_reject_unknown_ones():
    k = get_preset("kidney").with_overrides(
        {"spacing_mm": [2, 2, 2], "normalization": {"kind": "ct_window", "clip_min": -100, "clip_max": 300}}
    )
    assert k.spacing_mm == (2, 2, 2) and k.roi_size_voxels == (48, 48, 64)
    assert k.normalization.clip_max == 300
    with pytest.raises(InputError, match="unknown preset field"):
        get_preset("kidney").with_overrides({"roi_size": [1, 2, 3]})
    with pytest.raises(InputError, match="unknown organ"):
        get_preset("lung")
    with pytest.raises(InputError, match="clip_min < clip_max"):
        get_preset("kidney").with_overrides({"normalization": {"clip_min": 5, "clip_max": 1}})
