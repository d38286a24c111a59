import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import oblique_direction
from scipy import ndimage

from DiffusionAnomalyLib.detection import pipeline
from DiffusionAnomalyLib.detection.baseline import MedianBaseline
from DiffusionAnomalyLib.detection.presets import get_preset
from DiffusionAnomalyLib.errors import InputError, OutputError
from DiffusionAnomalyLib.evaluation.metrics import match_lesions
from DiffusionAnomalyLib.imaging.io import same_grid
from DiffusionAnomalyLib.imaging.masks import MaskSet, OrganMask, mask_from_skull_stripped
from DiffusionAnomalyLib.synthetic.phantoms import make_phantom

KIDNEY = get_preset("kidney")


def _masks(case):
    return MaskSet([OrganMask(f"kidney_{s}", s, case.organ_masks[f"kidney_{s}"]) for s in ("right", "left")], {})


def _restore(image, array):
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def _as_ras(image):
    """The same physical image stored RAS-style (x and y axes flipped; ITK direction diag(-1, -1, 1))."""
    arr = sitk.GetArrayFromImage(image)[:, ::-1, ::-1].copy()
    out = sitk.GetImageFromArray(arr)
    out.SetSpacing(image.GetSpacing())
    size = np.array(image.GetSize())
    out.SetOrigin(image.TransformIndexToPhysicalPoint([int(size[0] - 1), int(size[1] - 1), 0]))
    out.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    return out


def _as_oblique(image, interp):
    d = np.array(oblique_direction(12)).reshape(3, 3)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    size = np.array(image.GetSize())
    ref = sitk.Image([int(v) for v in size], image.GetPixelID())
    ref.SetSpacing(image.GetSpacing())
    ref.SetDirection(tuple(d.ravel()))
    ref.SetOrigin(tuple(centre - d @ ((size - 1) / 2 * np.array(image.GetSpacing()))))
    return sitk.Resample(image, ref, sitk.Transform(), interp, -1024.0 if interp == sitk.sitkLinear else 0)


@pytest.fixture(scope="module")
def inserted_lesion_case():
    """A healthy phantom with a known 20 mm hyperdense lesion pasted into the left kidney."""
    case = make_phantom("kidney", 11, 0)
    ct = case.channels["ct"]
    arr = sitk.GetArrayFromImage(ct).astype(np.float32)
    kidney = sitk.GetArrayFromImage(case.organ_masks["kidney_left"]) > 0
    c = np.argwhere(kidney)[kidney.sum() // 3]
    zz, yy, xx = np.ogrid[: arr.shape[0], : arr.shape[1], : arr.shape[2]]
    sp = ct.GetSpacing()
    sphere = ((zz - c[0]) * sp[2]) ** 2 + ((yy - c[1]) * sp[1]) ** 2 + ((xx - c[2]) * sp[0]) ** 2 < 10.0**2
    arr[sphere] += 120.0
    return _restore(ct, arr), _masks(case), sphere.astype(np.uint8)


def test_baseline_finds_an_inserted_lesion(inserted_lesion_case):
    image, masks, truth = inserted_lesion_case
    result = pipeline.detect([image], masks, KIDNEY, MedianBaseline.for_preset(KIDNEY))
    det = match_lesions(sitk.GetArrayFromImage(result.lesions), truth)
    assert det.tp == 1, det
    lesion = next(le for le in result.table if le.id == det.matches[0][1])
    assert lesion.side == "left" and 10 < lesion.axial_diameter_mm < 40


def test_outputs_are_on_the_exact_input_grid_and_unchanged_voxels_keep_their_value(inserted_lesion_case):
    image, masks, _ = inserted_lesion_case
    result = pipeline.detect([image], masks, KIDNEY, MedianBaseline.for_preset(KIDNEY))
    for out in (result.heatmap, result.lesions, result.reconstruction[0]):
        assert same_grid(image, out) == [] and out.GetDirection() == image.GetDirection()
        assert out.GetOrigin() == image.GetOrigin() and out.GetSpacing() == image.GetSpacing()
    heat = sitk.GetArrayFromImage(result.heatmap)
    organ = masks.union()
    assert (heat[~organ] == 0).all() and heat[organ].max() > 0
    rec = sitk.GetArrayFromImage(result.reconstruction[0])
    src = sitk.GetArrayFromImage(image).astype(np.float32)
    near = ndimage.binary_dilation(organ, iterations=2)  # linear resampling reaches one voxel beyond
    assert np.array_equal(rec[~near], src[~near])  # the baseline changes only organ voxels
    assert not np.array_equal(rec[organ], src[organ])


@pytest.mark.parametrize("storage", ["RAS", "oblique"])
def test_same_findings_whatever_the_storage_orientation(inserted_lesion_case, storage):
    image, masks, _ = inserted_lesion_case
    if storage == "RAS":
        image2 = _as_ras(image)
        masks2 = MaskSet([OrganMask(m.structure, m.side, _as_ras(m.image)) for m in masks.masks], {})
    else:
        image2 = _as_oblique(image, sitk.sitkLinear)
        masks2 = MaskSet([OrganMask(m.structure, m.side, _as_oblique(m.image, sitk.sitkNearestNeighbor))
                          for m in masks.masks], {})
    a = pipeline.detect([image], masks, KIDNEY, MedianBaseline.for_preset(KIDNEY))
    b = pipeline.detect([image2], masks2, KIDNEY, MedianBaseline.for_preset(KIDNEY))
    assert same_grid(image2, b.heatmap) == [] and b.heatmap.GetDirection() == image2.GetDirection()
    biggest = max(a.table, key=lambda le: le.voxels)
    twin = min(b.table, key=lambda le: np.linalg.norm(np.subtract(le.centroid_lps, biggest.centroid_lps)))
    tol = 0.5 if storage == "RAS" else 4.0  # RAS storage is exact; oblique resampling moves edges
    assert np.linalg.norm(np.subtract(twin.centroid_lps, biggest.centroid_lps)) < tol
    assert twin.side == biggest.side



@pytest.mark.parametrize("storage", ["RAS", "oblique"])
def test_the_overview_is_the_same_whatever_the_storage_orientation(inserted_lesion_case, storage, tmp_path):
    """LPS-, RAS- and obliquely-stored copies of one case give the same overview.png (radiological orientation
    from the patient axes); the oblique copy is resampled, so its picture differs by interpolation only."""
    import matplotlib.image

    from DiffusionAnomalyLib.detection.overview import write_overview

    image, masks, _ = inserted_lesion_case
    store = (lambda im, nearest=False: _as_ras(im)) if storage == "RAS" else (lambda im, nearest=False: _as_oblique(
        im, sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear))
    a = pipeline.detect([image], masks, KIDNEY, MedianBaseline.for_preset(KIDNEY))
    pictures = {}
    for name, res, conv in (("LPS", a, lambda im, nearest=False: im), (storage, a, store)):
        organ = sitk.GetArrayFromImage(conv(a.organ_mask, True)) > 0
        write_overview(conv(image), conv(res.reconstruction[0]), conv(res.heatmap), conv(res.lesions, True), a.table,
                       organ, tmp_path / f"{name}.png", KIDNEY.display_window, "same case")
        pictures[name] = matplotlib.image.imread(tmp_path / f"{name}.png")
    diff = np.abs(pictures["LPS"] - pictures[storage])
    if storage == "RAS":
        assert diff.max() == 0  # the same voxels: the same picture, pixel for pixel
    else:
        assert pictures["LPS"].shape == pictures[storage].shape and diff.mean() < 0.02, diff.mean()


def test_brain_four_channels_with_skull_stripped_mask(tmp_path):
    case = make_phantom("brain", 2, 1)
    brain = get_preset("brain")
    channels = list(case.channels.values())
    masks = mask_from_skull_stripped(channels, brain)
    found = sitk.GetArrayFromImage(masks.masks[0].image) > 0
    assert (found == (sitk.GetArrayFromImage(case.organ_masks["brain"]) > 0)).mean() > 0.99
    result = pipeline.detect(channels, masks, brain, MedianBaseline.for_preset(brain))
    assert len(result.reconstruction) == 4
    out = pipeline.write_outputs(result, tmp_path / "out", brain, {"images": list(case.channels)})
    assert {p.name for p in out.iterdir()} == {
        "reconstruction_t1n.nii.gz", "reconstruction_t1c.nii.gz", "reconstruction_t2w.nii.gz",
        "reconstruction_t2f.nii.gz", "heatmap.nii.gz", "lesions.nii.gz", "lesions.csv", "lesions.json", "run.json",
        "lesions.seg.nrrd", "overview.png"}
    run = json.loads((out / "run.json").read_text())
    assert run["parameters"]["composition"] == {"heatmap": "max", "reconstruction": "mean",
                                                "blend_margin_voxels": {"reconstruction": 5, "heatmap": 4}}
    assert run["geometry"]["size"] == list(channels[0].GetSize())
    with pytest.raises(InputError, match="needs 4 channel"):
        pipeline.detect(channels[:2], masks, brain, MedianBaseline())


def test_a_write_failure_mid_run_leaves_no_partial_results(inserted_lesion_case, tmp_path, monkeypatch):
    image, masks, _ = inserted_lesion_case
    result = pipeline.detect([image], masks, KIDNEY, MedianBaseline.for_preset(KIDNEY))
    real_write = pipeline.write_volume
    calls = []

    def failing_write(img, path, **kw):  # injected fault: the disk fills after the first file
        calls.append(path)
        if len(calls) > 1:
            raise OutputError(f"{path}: could not write (No space left on device)")
        return real_write(img, path, **kw)

    monkeypatch.setattr(pipeline, "write_volume", failing_write)
    with pytest.raises(OutputError, match="No space left"):
        pipeline.write_outputs(result, tmp_path / "out", KIDNEY, {})
    assert len(calls) == 2 and not (tmp_path / "out").exists()
