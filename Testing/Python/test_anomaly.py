from dataclasses import replace

import numpy as np
import pytest
from conftest import make_image
from helpers import median_filter_map
from scipy import ndimage

from DiffusionAnomalyLib.detection.anomaly import (
    PostProcessing,
    anomaly_map,
    axial_extent_mm,
    dataset_otsu_threshold,
    lesion_table,
    median_at,
    organ_box,
    organ_map,
    otsu_threshold,
    postprocess,
    size_class,
)
from DiffusionAnomalyLib.errors import InputError

RAW = PostProcessing(opening=False, closing=False, fill_holes=False, min_voxels=20, min_axial_mm=3.0)


def test_anomaly_map_is_abs_difference_summed_over_channels():
    x = np.array([[[[1.0, -1.0]]], [[[0.5, 0.0]]]], np.float32)  # (C=2, 1, 1, 2)
    x_hat = np.array([[[[0.0, 0.0]]], [[[0.0, 1.0]]]], np.float32)
    np.testing.assert_allclose(anomaly_map(x, x_hat, channel_axis=0), [[[1.5, 2.0]]])
    np.testing.assert_allclose(anomaly_map(x[0], x_hat[0]), [[[1.0, 1.0]]])
    with pytest.raises(InputError, match="differ"):
        anomaly_map(x, x_hat[:1])


def test_median_filter_removes_isolated_spikes():
    m = np.zeros((5, 5, 5), np.float32)
    m[2, 2, 2] = 9.0
    assert median_filter_map(m, 3).max() == 0.0
    assert median_filter_map(m, 0) is m


def _blobby_map(shape, seed):
    """A smooth random map with blobs of every size, and an organ mask that touches one face of the array."""
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    score = ndimage.gaussian_filter(rng.normal(size=shape), 1.5).astype(np.float32)
    zz, yy, xx = np.indices(shape)
    organ = ((zz - 8) / 9.0) ** 2 + ((yy - 20) / 12.0) ** 2 + ((xx - 18) / 10.0) ** 2 < 1  # reaches z = 0
    return score, organ


def test_organ_box_and_map_match_the_whole_volume_computation():
    score, organ = _blobby_map((30, 44, 40), 3)
    assert organ_box(organ, 2) == (slice(0, 19), slice(7, 34), slice(7, 30))
    assert organ_box(np.zeros_like(organ), 2) is None
    for size in (0, 3, 5):
        whole = np.where(organ, median_filter_map(score, size), 0.0).astype(np.float32)
        np.testing.assert_array_equal(organ_map(score, organ, size), whole)
    assert not organ_map(score, np.zeros_like(organ), 5).any()


@pytest.mark.parametrize("parts", [2, 12])
def test_organ_map_per_part_boxes_match_the_whole_volume(parts):
    """Two kidneys one voxel apart and a speckled mask: the median at the organ's voxels alone equals filtering
    the whole volume, for odd and even sizes (scipy's rank and footprint) and at the volume's border."""
    score, _ = _blobby_map((30, 44, 60), 5)
    zz, yy, xx = np.indices(score.shape)
    organ = np.zeros(score.shape, bool)
    for k in range(parts):
        cx = (18, 38)[k] if parts == 2 else 4 + k * 4.5  # the two kidneys one voxel apart
        organ |= ((zz - 15) / 8.0) ** 2 + ((yy - 22) / 9.0) ** 2 + ((xx - cx) / (10.0 if parts == 2 else 1.2)) ** 2 < 1
    assert ndimage.label(organ, np.ones((3, 3, 3)))[1] == parts
    organ[0, 20:25, 10:14] = organ[-1, -3:, -2:] = True  # on the volume's faces, edges and corner
    for size in (2, 3, 4, 5):
        whole = np.where(organ, median_filter_map(score, size), 0.0).astype(np.float32)
        np.testing.assert_array_equal(organ_map(score, organ, size), whole)
    np.testing.assert_array_equal(median_at(score, np.nonzero(organ), 3, chunk=7), median_filter_map(score, 3)[organ])


@pytest.mark.parametrize("grow", [1.0, 0.8])
def test_postprocess_in_the_organ_box_matches_the_whole_volume(grow):
    score, organ = _blobby_map((30, 44, 40), 4)
    image = make_image(np.zeros(score.shape, np.float32))
    pp = PostProcessing(min_voxels=5, min_axial_mm=2.0, grow_to=grow)
    thr = float(np.quantile(score[organ], 0.8))
    boxed = postprocess(score, thr, organ, image, pp)
    # the same map zeroed outside the organ, with no mask: the whole volume is processed (threshold > 0)
    whole = postprocess(np.where(organ, score, 0.0), thr, None, image, pp)
    assert boxed.max() >= 3
    np.testing.assert_array_equal(boxed, whole)
    assert not postprocess(score, thr, np.zeros_like(organ), image, pp).any()


def test_otsu_per_case_and_over_a_dataset():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.normal(0, 0.05, 500), rng.normal(2, 0.05, 500)]).reshape(10, 10, 10)
    mask = np.ones_like(a, bool)
    t = otsu_threshold(a, mask)
    assert (a > t).sum() == 500  # separates the two modes exactly
    # outside-the-mask voxels do not count
    b = a.copy()
    b[0] = 100.0
    keep = np.ones_like(b, bool)
    keep[0] = False
    assert otsu_threshold(b, keep) == pytest.approx(otsu_threshold(a[1:], None), abs=1e-9)
    pooled = dataset_otsu_threshold([a, a], [mask, mask])
    assert pooled == pytest.approx(t, abs=(a.max() - a.min()) / 4096 * 2)
    with pytest.raises(InputError, match="no voxels inside"):
        otsu_threshold(a, np.zeros_like(a))


def test_postprocess_drops_small_and_thin_components_and_masks_to_the_organ():
    image = make_image(np.zeros((40, 40, 40), np.float32))  # 1 mm voxels
    score = np.zeros((40, 40, 40), np.float32)
    score[5:8, 5:8, 5:8] = 1.0  # 27 voxels, 3 mm axial: kept
    score[20:40, 20:21, 20:22] = 1.0  # 40 voxels along z, 1 x 2 mm axially: dropped (< 3 mm)
    score[30:32, 30:32, 30:32] = 1.0  # 8 voxels: dropped (< 20)
    score[10:14, 30:34, 10:14] = 1.0  # 64 voxels but outside the organ: dropped
    organ = np.ones_like(score, bool)
    organ[10:14, 30:34, 10:14] = False
    labels = postprocess(score, 0.5, organ, image, RAW)
    assert labels.max() == 1 and (labels == 1).sum() == 27
    # with an anisotropic grid the same 3-voxel-wide cube is 1.5 mm axially: dropped
    aniso = make_image(np.zeros((40, 40, 40), np.float32), spacing=(0.5, 0.5, 3.0))
    assert postprocess(score, 0.5, organ, aniso, RAW).max() == 0


def test_postprocess_minimum_volume_is_in_millilitres_whatever_the_grid():
    score = np.zeros((40, 40, 40), np.float32)
    score[2:12, 2:12, 2:12] = 1.0  # 1000 voxels
    score[20:25, 20:25, 20:25] = 1.0  # 125 voxels
    fine = make_image(np.zeros((40, 40, 40), np.float32))  # 1 mm: 1.0 ml and 0.125 ml
    coarse = make_image(np.zeros((40, 40, 40), np.float32), spacing=(2.0, 2.0, 2.0))  # 8.0 ml and 1.0 ml
    keep_ml = RAW.__class__(**{**RAW.__dict__, "min_volume_ml": 0.5})
    assert postprocess(score, 0.5, None, fine, keep_ml).max() == 1  # only the 1 ml lesion
    assert postprocess(score, 0.5, None, coarse, keep_ml).max() == 2  # both
    assert postprocess(score, 0.5, None, fine, RAW).max() == 2  # 0 = off


def test_a_contrast_dependent_floor_keeps_small_clear_lesions_and_drops_faint_ones():
    fine = make_image(np.zeros((40, 40, 40), np.float32))
    score = np.zeros((40, 40, 40), np.float32)
    score[2:12, 2:12, 2:12] = 0.6  # 1 ml, faint: above the 0.5 ml floor anyway
    score[20:25, 20:25, 20:25] = 1.2  # 0.125 ml, mean 2.4 x the threshold
    score[30:35, 30:35, 30:35] = 0.7  # 0.125 ml, mean 1.4 x the threshold
    floor = replace(RAW, min_volume_ml=0.5)
    kept = {int(v) for v in np.unique(postprocess(score, 0.5, None, fine, replace(floor, floor_contrast=2.0))) if v}
    assert len(kept) == 2 and postprocess(score, 0.5, None, fine, replace(floor, floor_contrast=2.0))[22, 22, 22]
    assert postprocess(score, 0.5, None, fine, replace(floor, floor_contrast=2.0))[32, 32, 32] == 0
    assert postprocess(score, 0.5, None, fine, floor).max() == 1  # the fixed floor: the large one only
    assert postprocess(score, 0.5, None, fine, replace(floor, floor_contrast=1.2)).max() == 3  # both escape
    # the thesis limits still apply: a 2-voxel speck with a huge score is not kept
    speck = np.zeros((40, 40, 40), np.float32)
    speck[20, 20, 20:22] = 50.0
    assert postprocess(speck, 0.5, None, fine, replace(floor, floor_contrast=2.0, opening=False)).max() == 0
    for bad in (0.5, -1.0):
        with pytest.raises(InputError, match="floor-contrast"):
            replace(floor, floor_contrast=bad)


def test_postprocess_fills_holes_and_opening_removes_specks():
    image = make_image(np.zeros((20, 20, 20), np.float32))
    score = np.zeros((20, 20, 20), np.float32)
    score[5:12, 5:12, 5:12] = 1.0
    score[8, 8, 8] = 0.0  # a hole
    score[15, 15, 15] = 1.0  # a speck
    labels = postprocess(score, 0.5, None, image)
    assert labels.max() == 1 and labels[8, 8, 8] == 1 and labels[15, 15, 15] == 0


def test_postprocess_growth_extends_kept_lesions_only_and_merges_what_it_joins():
    image = make_image(np.zeros((40, 40, 40), np.float32))
    score = np.zeros((40, 40, 40), np.float32)
    score[5:15, 5:15, 5:15] = 0.6  # a shoulder above 0.5 x threshold ...
    score[8:12, 8:12, 8:12] = 1.0  # ... around a core above the threshold (64 voxels)
    score[25:35, 25:35, 25:35] = 0.6  # a weak region with no core: never a lesion
    score[5:15, 25:29, 5:9] = 1.0  # a second core (160 voxels), joined to the first by a weak bridge
    score[9:11, 15:25, 6:8] = 0.6
    organ = np.ones_like(score, bool)
    organ[5:15, 5:15, 14] = False  # growth stays in the organ
    plain = postprocess(score, 0.8, organ, image, RAW)
    assert plain.max() == 2 and sorted(np.bincount(plain.ravel())[1:]) == [64, 160]
    grown = postprocess(score, 0.8, organ, image, replace(RAW, grow_to=0.5))
    assert grown.max() == 1  # the bridge joins the two lesions
    assert (grown > 0).sum() == 10 * 10 * 9 + 160 + 2 * 10 * 2 and not grown[25:35, 25:35, 25:35].any()
    assert np.array_equal(postprocess(score, 0.8, organ, image, replace(RAW, grow_to=1.0)), plain)
    with pytest.raises(InputError, match=r"--grow-to must be in \(0, 1\]"):
        PostProcessing(grow_to=1.5)


def test_lesion_table_units_coordinates_and_side():
    image = make_image(np.zeros((10, 10, 10), np.float32), spacing=(0.5, 0.5, 2.0), origin=(10.0, 20.0, 30.0))
    labels = np.zeros((10, 10, 10), np.uint16)
    labels[2:6, 4:8, 1:5] = 1  # 4 x 4 x 4 voxels: z 2..5, y 4..7, x 1..4
    score = labels * 0.5
    score[3, 5, 2] = 2.0
    side = {"left": labels > 0, "right": np.zeros_like(labels, bool)}
    (le,) = lesion_table(labels, score, image, "kidney", side)
    assert le.voxels == 64 and le.volume_ml == pytest.approx(64 * 0.5 * 0.5 * 2.0 / 1000)
    assert le.axial_diameter_mm == pytest.approx(2.0)  # 4 voxels x 0.5 mm
    assert le.centroid_lps == pytest.approx((10 + 2.5 * 0.5, 20 + 5.5 * 0.5, 30 + 3.5 * 2.0))
    assert le.centroid_ras == pytest.approx((-le.centroid_lps[0], -le.centroid_lps[1], le.centroid_lps[2]))
    assert le.side == "left" and le.max_score == 2.0 and le.size_class.startswith("T1ai")
    row = le.to_row()
    assert row["centroid_ras_x"] == pytest.approx(-11.25) and "centroid_lps" not in row


def test_axial_extent_on_an_oblique_grid_covers_the_voxels():
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    image = make_image(np.zeros((3, 3, 3), np.float32), direction=(c, -s, 0, s, c, 0, 0, 0, 1))
    one_voxel = axial_extent_mm(image, np.array([[1, 1, 1]]))
    assert one_voxel == pytest.approx(np.sqrt(2), abs=1e-9)  # a 1 mm square rotated 45 degrees


@pytest.mark.parametrize("d,cls,size", [(5, "T1ai", "<=2 cm"), (20.0, "T1ai", "<=2 cm"), (20.01, "T1aii", "2-4 cm"),
                                        (40, "T1aii", "2-4 cm"), (55, "T1b", "4-7 cm"), (70, "T1b", "4-7 cm"),
                                        (70.5, "T2", ">7 cm"), (150, "T2", ">7 cm")])
def test_size_classes(d, cls, size):
    assert size_class(d, "kidney") == f"{cls} ({size})"
    assert size_class(d, "liver") == size_class(d, "brain") == size  # renal T stages are the kidney's only
