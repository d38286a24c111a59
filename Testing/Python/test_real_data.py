"""Real CT/MRI volumes from ../shared/data (skipped when absent). Sources are credited in README."""

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import compose_patches

from DiffusionAnomalyLib.detection.anomaly import PostProcessing
from DiffusionAnomalyLib.detection.baseline import MedianBaseline
from DiffusionAnomalyLib.detection.pipeline import detect, write_outputs
from DiffusionAnomalyLib.detection.presets import get_preset
from DiffusionAnomalyLib.detection.roi import extract_patch, plan_patch
from DiffusionAnomalyLib.imaging.io import read_channels, read_volume, same_grid
from DiffusionAnomalyLib.imaging.masks import load_totalseg_masks, mask_from_skull_stripped

pytestmark = pytest.mark.shared_data


def test_read_real_ct_and_dicom_series(shared_data):
    ts = shared_data / "totalsegmentator_examples"
    ct = read_volume(ts / "example_ct.nii.gz")
    assert ct.GetSize() == (122, 101, 112) and ct.GetSpacing() == pytest.approx((3.0, 3.0, 3.0))
    assert ct.GetDirection() == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # stored RAS
    dicom = read_volume(ts / "example_ct_dicom")
    assert dicom.GetSize() == (512, 512, 20)
    assert dicom.GetSpacing() == pytest.approx((0.9765625, 0.9765625, 2.0), abs=1e-4)
    seg = read_volume(ts / "example_seg_dicom.nii.gz")
    assert seg.GetSize() == dicom.GetSize()
    # the segmentation is stored with y flipped (origin at the other end): same box in world space
    def centre(im):
        return im.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in im.GetSize()])

    assert seg.GetDirection()[4] == pytest.approx(-dicom.GetDirection()[4])
    np.testing.assert_allclose(centre(seg), centre(dicom), atol=0.01)


def test_kidney_rois_from_real_ct_and_compose_back(shared_data):
    ts = shared_data / "totalsegmentator_examples"
    ct = read_volume(ts / "example_ct_sm.nii.gz")
    kidney = get_preset("kidney")
    masks = load_totalseg_masks(ts / "example_seg.nii.gz", ct, kidney)
    assert {m.side for m in masks.masks} == {"left", "right"}
    patches = []
    for m in masks.masks:
        patch = plan_patch(m.image, kidney, m.structure, m.side)
        values = extract_patch(ct, patch, default=kidney.background)
        assert values.shape == (128, 96, 96)  # z, y, x at 1 mm: 128 mm along the body axis
        assert (values == kidney.background).any()  # the 90 mm-thick scan is padded along z
        patches.append((patch, values))
    # the two kidney centres lie on their own side of the patient (LPS x: left > right)
    centres = {p.side: p.center_lps for p, _ in patches}
    assert centres["left"][0] > centres["right"][0]
    back, covered = compose_patches(patches, ct, mode="mean", fill=np.nan)
    assert back.shape == sitk.GetArrayViewFromImage(ct).shape
    organ = masks.union()
    assert covered[organ].all()
    original = sitk.GetArrayFromImage(ct).astype(np.float32)
    err = np.abs(back[organ] - original[organ])
    # 3 mm -> 1 mm -> 3 mm linear resampling of real CT: exact at coinciding points, small elsewhere
    assert np.median(err) < 5.0 and np.percentile(err, 95) < 60.0, (np.median(err), np.percentile(err, 95))


def test_baseline_run_on_real_ct_keeps_the_input_geometry(shared_data, tmp_path):
    ts = shared_data / "totalsegmentator_examples"
    path = ts / "example_ct_sm.nii.gz"
    ct = read_volume(path)
    kidney = get_preset("kidney")
    masks = load_totalseg_masks(ts / "example_seg_fast_binary", ct, kidney)
    result = detect([ct], masks, kidney, MedianBaseline.for_preset(kidney), input_name=str(path),
                    postprocessing=PostProcessing())
    assert any("along z the image covers 90 mm" in w for w in result.warnings)
    out = write_outputs(result, tmp_path / "out", kidney, {"images": [str(path)]})
    for name in ("heatmap.nii.gz", "lesions.nii.gz", "reconstruction.nii.gz"):
        written = sitk.ReadImage(str(out / name))
        assert same_grid(ct, written) == []
        assert written.GetDirection() == ct.GetDirection() and written.GetSize() == ct.GetSize()


def test_real_brats_channels_and_skull_stripped_mask(shared_data):
    case = shared_data / "brats_3d" / "BraTS-GLI-00001-000"
    brain = get_preset("brain")
    channels = read_channels([case / f"BraTS-GLI-00001-000-{c}.nii.gz" for c in brain.channels], brain.channels)
    assert channels[0].GetSize() == (240, 240, 155)
    mask = mask_from_skull_stripped(channels, brain)
    frac = (sitk.GetArrayFromImage(mask.masks[0].image) > 0).mean()
    assert 0.1 < frac < 0.3  # a brain fills roughly a fifth of the BraTS box
    patch = plan_patch(mask.masks[0].image, brain, "brain", "")
    values = extract_patch(channels[3], patch)
    assert values.shape == (96, 96, 96) and values.max() > 0


def test_run_with_a_bundle_on_real_ct_keeps_the_exact_geometry(shared_data, tiny_bundle, tmp_path, capsys):
    from DiffusionAnomalyLib.app.cli import main

    ts = shared_data / "totalsegmentator_examples"
    out = tmp_path / "out"
    rc = main(["run", "--bundle", str(tiny_bundle), "--input", str(ts / "example_ct_sm.nii.gz"), "--totalseg",
               str(ts / "example_seg.nii.gz"), "--out", str(out), "--device", "cpu", "--steps", "3",
               "--noise-level", "30"])
    assert rc == 0, capsys.readouterr().err
    ct = sitk.ReadImage(str(ts / "example_ct_sm.nii.gz"))
    for name in ("heatmap.nii.gz", "lesions.nii.gz", "reconstruction.nii.gz", "lesions.seg.nrrd"):
        written = sitk.ReadImage(str(out / name))
        assert written.GetSize() == ct.GetSize() and same_grid(ct, written) == []
        assert written.GetDirection() == pytest.approx(ct.GetDirection())


@pytest.mark.parametrize("organ", ["kidney", "brain"])
def test_demo_bundles_run_on_real_scans_in_the_exact_input_geometry(shared_data, organ, tmp_path, capsys):
    """example_ct with its real TotalSegmentator labels (kidney) and the 3D BraTS case (brain), with the
    shipped demo bundles; the findings mean nothing, the geometry must be exact."""
    from DiffusionAnomalyLib.app.cli import main
    from DiffusionAnomalyLib.models.bundle import available_bundles

    demo = [b for b in available_bundles(organ) if b.meta.demo]
    if not demo:
        pytest.skip(f"no {organ} demo bundle in Resources/Models (train it with `make demo-models`)")
    if organ == "kidney":
        # TotalSegmentator's real output is for example_ct_sm = slices 82..111 of example_ct (same origin, as
        # the data README says); its kidney labels (2, 3) are placed back onto the full CT's grid
        ts = shared_data / "totalsegmentator_examples"
        inputs = [ts / "example_ct.nii.gz"]
        full = sitk.ReadImage(str(inputs[0]))
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(ts / "example_seg.nii.gz")))
        assert np.array_equal(sitk.GetArrayFromImage(full)[82:112],
                              sitk.GetArrayFromImage(sitk.ReadImage(str(ts / "example_ct_sm.nii.gz"))))
        kidneys = np.zeros(sitk.GetArrayFromImage(full).shape, np.uint8)
        kidneys[82:112] = np.isin(seg, [2, 3])
        mask = sitk.GetImageFromArray(kidneys)
        mask.CopyInformation(full)
        sitk.WriteImage(mask, str(tmp_path / "kidneys.nii.gz"))
        masks = ["--mask", str(tmp_path / "kidneys.nii.gz")]
    else:
        case = shared_data / "brats_3d" / "BraTS-GLI-00001-000"
        inputs = [case / f"BraTS-GLI-00001-000-{c}.nii.gz" for c in ("t1n", "t1c", "t2w", "t2f")]
        masks = ["--skull-stripped"]
    out = tmp_path / "out"
    rc = main(["run", "--bundle", str(demo[0].path), "--input", *map(str, inputs), *masks, "--out", str(out),
               "--device", "cpu", "--steps", "5"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "DEMO bundle" in captured.out
    reference = sitk.ReadImage(str(inputs[0]))
    recon = (["reconstruction.nii.gz"] if organ == "kidney"
             else ["reconstruction_t1n.nii.gz", "reconstruction_t2f.nii.gz"])
    for name in ("heatmap.nii.gz", "lesions.nii.gz", "lesions.seg.nrrd", *recon):
        written = sitk.ReadImage(str(out / name))
        assert written.GetSize() == reference.GetSize() and same_grid(reference, written) == [], name
        assert written.GetDirection() == pytest.approx(reference.GetDirection())


def test_overview_slices_of_the_real_ct_are_the_right_way_up(shared_data):
    """TotalSegmentator's example CT is stored RAS: drawn from the patient axes, the spine is at the bottom
    (posterior), the liver on the picture's left (the patient's right) and the spleen on its right."""
    from DiffusionAnomalyLib.detection.overview import axial_plane, axial_slice

    ts = shared_data / "totalsegmentator_examples"
    ct = read_volume(ts / "example_ct_sm.nii.gz")
    seg = read_volume(ts / "example_seg.nii.gz")
    assert np.sign(np.diag(np.array(ct.GetDirection()).reshape(3, 3))[:2]).tolist() == [-1.0, -1.0]  # RAS storage
    z = ct.TransformIndexToPhysicalPoint([0, 0, ct.GetSize()[2] // 2])[2]
    plane = axial_plane(ct, z)
    image = axial_slice(ct, plane, default=-1024)
    labels = axial_slice(seg, plane, labels=True)
    rows, cols = np.indices(image.shape)
    body = image > -300
    bone = image > 300
    assert rows[bone].mean() > rows[body].mean() + 0.1 * image.shape[0]  # the spine lies posterior: low on the picture
    assert cols[labels == 5].mean() < cols[body].mean() < cols[labels == 1].mean()  # liver left, spleen right
