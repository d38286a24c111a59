import warnings

import numpy as np
import pytest
from conftest import make_image

from DiffusionAnomalyLib.evaluation.metrics import (
    bootstrap_ci,
    contrast_class,
    detection_by_size,
    dice,
    froc_points,
    iou_matrix,
    lesion_contrast,
    match_lesions,
    stratified_detection,
    voxel_auprc,
    voxel_auroc,
    wilcoxon_noninferiority,
)


def test_dice_by_hand():
    a = np.zeros(10, bool)
    b = np.zeros(10, bool)
    a[0:4] = True  # 4 voxels
    b[1:7] = True  # 6 voxels, 3 shared
    assert dice(a, b) == pytest.approx(0.6)
    assert dice(np.zeros(3), np.zeros(3)) == 1.0
    assert dice(a, np.zeros(10)) == 0.0


def test_lesion_matching_one_prediction_per_reference_highest_iou_wins():
    ref = np.zeros((1, 1, 60), np.int32)
    pred = np.zeros((1, 1, 60), np.int32)
    ref[..., 0:10] = 1  # R1: 10 voxels
    ref[..., 30:40] = 2  # R2: 10 voxels
    pred[..., 0:5] = 1  # P1 within R1: IoU 5/10 = 0.5
    pred[..., 8:10] = 2  # P2 within R1: IoU 2/10 = 0.2 (>= 0.2, but R1 is taken by P1)
    pred[..., 39:41] = 3  # P3 vs R2: IoU 1/11 < 0.2
    det = match_lesions(pred, ref)
    assert (det.tp, det.fp, det.fn) == (1, 2, 1)
    assert det.matches == [(1, 1, 0.5)]
    assert det.precision == pytest.approx(1 / 3) and det.recall == pytest.approx(0.5)
    assert det.f1 == pytest.approx(2 / 5)
    healthy = match_lesions(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
    assert np.isnan(healthy.precision) and np.isnan(healthy.f1)


def test_froc_points_by_hand():
    cases = [([0.9, 0.5], [True, False], 2), ([0.7], [False], 1)]
    pts = froc_points(cases)
    assert pts == [(0.9, 0.0, pytest.approx(1 / 3)), (0.7, 0.5, pytest.approx(1 / 3)),
                   (0.5, 1.0, pytest.approx(1 / 3))]


def test_size_stratified_detection_follows_the_thesis_rule():
    image = make_image(np.zeros((5, 60, 100), np.float32))  # 1 mm
    ref = np.zeros((5, 60, 100), np.int32)
    pred = np.zeros_like(ref)
    ref[0:3, 0:10, 0:10] = 1  # 10 mm
    ref[0:3, 20:50, 0:30] = 2  # 30 mm
    pred[0:3, 20:50, 0:30] = 1  # matches the 30 mm lesion
    pred[0:3, 0:5, 60:65] = 2  # unmatched, 5 mm: outside (20, 40] -> ignored
    pred[0:3, 30:55, 70:95] = 3  # unmatched, 25 mm: inside the range -> false positive
    det = stratified_detection(pred, ref, image, 20.0, 40.0)
    assert (det.tp, det.fp, det.fn) == (1, 1, 0)
    small = stratified_detection(pred, ref, image, 0.0, 20.0)
    assert (small.tp, small.fp, small.fn) == (0, 1, 1)
    assert stratified_detection(pred, ref, image, 70.0, np.inf) is None
    bounds = [(0.0, 20.0), (20.0, 40.0), (70.0, np.inf)]
    assert detection_by_size(pred, ref, image, bounds) == [stratified_detection(pred, ref, image, *b) for b in bounds]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64, np.float32])
def test_iou_matrix_by_hand_for_any_label_type_and_sparse_ids(dtype):
    ref = np.zeros((1, 1, 40), dtype)
    pred = np.zeros_like(ref)
    ref[..., 0:10] = 3  # ids need not be 1..n
    ref[..., 20:30] = 9
    pred[..., 5:15] = 7  # 5 shared with ref 3: IoU 5 / 15
    pred[..., 20:30] = 2  # equal to ref 9
    m, ref_ids, pred_ids = iou_matrix(pred, ref)
    assert ref_ids == [3, 9] and pred_ids == [2, 7]
    assert m == pytest.approx(np.array([[0.0, 1 / 3], [1.0, 0.0]]))


def test_voxel_auroc_and_auprc_by_hand():
    s = np.array([0.1, 0.4, 0.35, 0.8])
    y = np.array([0, 0, 1, 1])
    assert voxel_auroc(s, y) == pytest.approx(0.75)
    assert voxel_auprc(s, y) == pytest.approx((0.5 * 1.0) + (0.5 * 2 / 3))
    assert voxel_auroc(np.array([0.5, 0.5]), np.array([1, 0])) == pytest.approx(0.5)  # tie
    # the organ mask restricts the voxels considered
    mask = np.array([1, 1, 1, 0])
    assert voxel_auroc(s, y, mask) == pytest.approx(0.5)
    assert np.isnan(voxel_auroc(s, np.zeros(4)))


def test_bootstrap_ci():
    assert bootstrap_ci([0.3] * 10) == (pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3))
    v = np.random.default_rng(1).normal(0.5, 0.1, 40)
    mean, lo, hi = bootstrap_ci(v, seed=3)
    assert lo < mean < hi and hi - lo < 0.1
    assert bootstrap_ci(v, seed=3) == (mean, lo, hi)
    point, lo0, hi0 = bootstrap_ci(v, 0)  # `evaluate --bootstrap 0`: the value without a CI
    assert point == pytest.approx(v.mean()) and np.isnan(lo0) and np.isnan(hi0)


def _previous_bootstrap_ci(v, n_resamples=1000, alpha=0.05, seed=0):
    """The hand-written percentile bootstrap that ``bootstrap_ci`` had before it used ``scipy.stats.bootstrap``."""
    idx = np.random.default_rng(seed).integers(0, v.size, size=(n_resamples, v.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN resample
        boot = np.array([np.nanmean(v[i]) for i in idx])
    lo, hi = np.nanpercentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(np.nanmean(v)), float(lo), float(hi)


@pytest.mark.parametrize("n,seed,n_resamples", [(40, 3, 1000), (7, 0, 200), (300, 5, 2000)])
def test_bootstrap_ci_with_scipy_keeps_the_previous_figures(n, seed, n_resamples):
    """The bounds may move slightly when SciPy resamples differently; they must stay within a tenth of the CI's
    width of the previous ones. (With SciPy 1.17 they are equal to rounding: it draws the same index matrix.)"""
    v = np.random.default_rng(n).normal(0.5, 0.1, n)
    mean, lo, hi = bootstrap_ci(v, n_resamples, seed=seed)
    p_mean, p_lo, p_hi = _previous_bootstrap_ci(v, n_resamples, seed=seed)
    assert mean == p_mean
    assert lo == pytest.approx(p_lo, abs=0.1 * (p_hi - p_lo)) and hi == pytest.approx(p_hi, abs=0.1 * (p_hi - p_lo))
    assert 0.5 < (hi - lo) / (p_hi - p_lo) < 2


def test_bootstrap_ci_edge_cases():
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)  # one case: every resample is that case
    assert bootstrap_ci([0.7], 0)[0] == 0.7 and np.isnan(bootstrap_ci([0.7], 0)[1])
    assert all(np.isnan(x) for x in bootstrap_ci([]))
    # mostly NaN: resamples with no value give NaN and are left out of the percentiles, as before
    v = np.array([np.nan] * 8 + [0.2, 0.4])
    mean, lo, hi = bootstrap_ci(v, 500, seed=1)
    assert mean == pytest.approx(0.3) and 0.2 - 1e-12 <= lo < hi <= 0.4 + 1e-12
    assert (lo, hi) == pytest.approx(_previous_bootstrap_ci(v, 500, seed=1)[1:], abs=0.02)
    med, lo, hi = bootstrap_ci(np.arange(10.0), 300, statistic=np.median)  # a statistic of any shape rule
    assert med == 4.5 and lo < med < hi


def test_wilcoxon_superiority_and_non_inferiority():
    b = np.linspace(0.2, 0.8, 10)
    _, p = wilcoxon_noninferiority(b + np.linspace(0.05, 0.14, 10), b)
    assert p == pytest.approx(1 / 1024)  # all 10 differences positive: exact one-sided p = 2^-10
    worse = b - np.linspace(0.01, 0.05, 10)
    assert wilcoxon_noninferiority(worse, b)[1] > 0.99
    assert wilcoxon_noninferiority(worse, b, margin=0.1)[1] == pytest.approx(1 / 1024)


def test_lesion_contrast_is_the_contrast_over_the_local_spread():
    rng = np.random.default_rng(0)
    shape, spacing = (40, 40, 60), (2.0, 1.0, 1.0)
    image = 100 + rng.normal(0, 10, shape)
    organ = np.zeros(shape, bool)
    organ[5:35, 5:35, 5:40] = True
    zz, yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    labels[((zz - 12) * 2) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 <= 36] = 1  # +30 HU: CNR ~ 3
    labels[((zz - 25) * 2) ** 2 + (yy - 25) ** 2 + (xx - 25) ** 2 <= 36] = 2  # +0 HU: CNR ~ 0
    labels[((zz - 20) * 2) ** 2 + (yy - 20) ** 2 + (xx - 50) ** 2 <= 36] = 3  # outside the organ, -50 HU
    image[labels == 1] += 30
    image[labels == 3] -= 50
    image[~organ & (labels == 0)] = -100 + rng.normal(0, 10, np.count_nonzero(~organ & (labels == 0)))
    m = lesion_contrast([image], labels, organ, spacing)
    assert m[1].contrast == pytest.approx(30, abs=3) and m[1].spread == pytest.approx(10, abs=1)
    assert m[1].cnr == pytest.approx(3.0, abs=0.4) and m[2].cnr < 0.5
    assert m[3].contrast == pytest.approx(150, abs=5)  # against the -100 HU fat around it (no organ ring)
    edge = image.copy()  # a few very dark voxels in lesion 1's ring (an edge) barely move its median and MAD
    ring1 = np.argwhere((labels == 0) & organ & (np.abs(zz - 12) <= 4) & (np.abs(yy - 12) <= 8) & (xx == 20))
    edge[tuple(ring1.T)] = -500
    assert lesion_contrast([edge], labels, organ, spacing)[1].cnr == pytest.approx(m[1].cnr, rel=0.2)
    both = lesion_contrast([image, 100 + 20 * (labels > 0) + rng.normal(0, 1, shape)], labels, organ, spacing)
    assert both[2].channel == 1 and both[2].cnr > 10  # the channel where the lesion stands out most
    assert [contrast_class(v) for v in (0.0, 0.5, 0.9, 1.5, 7.0, float("nan"))] == [
        "CNR < 0.5", "CNR 0.5-1", "CNR 0.5-1", "CNR 1-2", "CNR > 2", "CNR n/a"]


def test_contrast_kept_by_a_reconstruction():
    from scipy import ndimage

    from DiffusionAnomalyLib.evaluation.metrics import contrast_kept

    zz, yy, xx = np.mgrid[:40, :40, :40]
    small = (zz - 10) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2 <= 2 ** 2  # 33 voxels of 2 mm: ~10 mm across
    large = (zz - 26) ** 2 + (yy - 26) ** 2 + (xx - 26) ** 2 <= 7 ** 2
    image = np.zeros((40, 40, 40), np.float32)
    image[small] = 1.0
    image[large] = -0.5
    lesions = (small | large).astype(np.uint8)
    kept = contrast_kept(image, image, lesions, (2.0, 2.0, 2.0))
    assert [round(r, 6) for _, r in kept] == [1.0, 1.0]  # identical: all contrast kept
    assert kept[0][0] == pytest.approx(2 * (3 * small.sum() * 8 / (4 * np.pi)) ** (1 / 3))
    assert [r for _, r in contrast_kept(np.zeros_like(image) + 3, image, lesions, (2, 2, 2))] == []  # no contrast
    blurred = ndimage.uniform_filter(image, 5)  # a blur erases the small lesion more than the large one
    (d_small, r_small), (d_large, r_large) = contrast_kept(image, blurred, lesions, (2.0, 2.0, 2.0))
    assert d_small < 12 < d_large and 0 < r_small < 0.25 < 0.45 < r_large < 1.0
    flat = image.copy()
    flat[small] = 0.5
    assert contrast_kept(image, flat, lesions, (2.0, 2.0, 2.0))[0][1] == pytest.approx(0.5)
