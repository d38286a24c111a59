import os

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image, oblique_direction

from DiffusionAnomalyLib.errors import InputError, OutputError
from DiffusionAnomalyLib.imaging.io import read_channels, read_volume, same_grid, write_volume
from DiffusionAnomalyLib.imaging.outputs import atomic_output_dir


@pytest.mark.parametrize("ext,atol", [(".nii.gz", 1e-5), (".nrrd", 1e-12), (".mha", 1e-12)])
def test_oblique_geometry_survives_write_and_read(tmp_path, ext, atol):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(7, 9, 11)).astype(np.float32)
    im = make_image(arr, spacing=(0.7, 0.9, 2.5), origin=(-12.25, 40.5, -300.125), direction=oblique_direction())
    path = write_volume(im, tmp_path / f"vol{ext}")
    back = read_volume(path)
    assert back.GetSize() == im.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), im.GetSpacing(), atol=atol)
    np.testing.assert_allclose(back.GetOrigin(), im.GetOrigin(), atol=atol * 100)
    np.testing.assert_allclose(back.GetDirection(), im.GetDirection(), atol=atol)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    assert [p.name for p in tmp_path.iterdir()] == [f"vol{ext}"]  # no temporary file left


def test_bad_inputs_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(InputError, match=r"missing\.nii\.gz: file not found"):
        read_volume(tmp_path / "missing.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(InputError, match=r"junk\.nii\.gz: not a readable image"):
        read_volume(junk)
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.Image(10, 12, sitk.sitkInt16), str(flat))
    with pytest.raises(InputError, match=r"flat\.nrrd: the image is 2D"):
        read_volume(flat)
    four = tmp_path / "four.nii.gz"
    sitk.WriteImage(sitk.Image([4, 5, 6, 3], sitk.sitkFloat32), str(four))
    with pytest.raises(InputError, match=r"four\.nii\.gz: the image is 4D"):
        read_volume(four)
    vec = tmp_path / "vec.mha"
    sitk.WriteImage(sitk.Image([4, 5, 6], sitk.sitkVectorFloat32, 3), str(vec))
    with pytest.raises(InputError, match=r"vec\.mha: the image has 3 components"):
        read_volume(vec)
    arr = np.zeros((4, 5, 6), np.float32)
    arr[1, 2, 3] = np.nan
    arr[2, 2, 2] = np.inf
    nan = write_volume(make_image(arr), tmp_path / "nan.mha")
    with pytest.raises(InputError, match=r"nan\.mha: 2 voxels are NaN or infinite"):
        read_volume(nan)
    assert read_volume(nan, allow_nan=True).GetSize() == (6, 5, 4)
    with pytest.raises(InputError, match="no DICOM series"):
        read_volume(tmp_path)


def test_channels_must_share_one_grid(tmp_path):
    a = write_volume(make_image(np.zeros((4, 5, 6), np.float32)), tmp_path / "t1n.nii.gz")
    b = write_volume(make_image(np.zeros((4, 5, 6), np.float32), origin=(0, 0, 5)), tmp_path / "t2w.nii.gz")
    c = write_volume(make_image(np.zeros((4, 5, 7), np.float32)), tmp_path / "t2f.nii.gz")
    assert len(read_channels([a, a])) == 2
    with pytest.raises(InputError, match=r"t2w\.nii\.gz and .*t1n\.nii\.gz are on different grids: origin"):
        read_channels([a, b])
    with pytest.raises(InputError, match="size"):
        read_channels([a, c])
    with pytest.raises(InputError, match="2 input files for 4 channels"):
        read_channels([a, a], ["t1n", "t1c", "t2w", "t2f"])


def test_same_grid_tolerates_float_noise_only():
    a = make_image(np.zeros((3, 3, 3), np.uint8), spacing=(1, 1, 1))
    b = make_image(np.zeros((3, 3, 3), np.uint8), spacing=(1 + 1e-6, 1, 1))
    c = make_image(np.zeros((3, 3, 3), np.uint8), direction=oblique_direction())
    assert same_grid(a, b) == []
    assert any(d.startswith("direction") for d in same_grid(a, c))


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output_dir(out) as stage:
        (stage / "heatmap.nii.gz").write_text("half")
        raise RuntimeError("crash mid-run")
    assert not out.exists()  # a folder the failed run created is removed again
    out.mkdir()
    (out / "mine.txt").write_text("user file")
    with pytest.raises(RuntimeError), atomic_output_dir(out) as stage:
        (stage / "heatmap.nii.gz").write_text("half")
        raise RuntimeError("crash mid-run")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    (out / "mine.txt").unlink()
    with atomic_output_dir(out) as stage:
        (stage / "a.txt").write_text("done")
    assert [p.name for p in out.iterdir()] == ["a.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; permissions cannot be tested")
def test_unwritable_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"), atomic_output_dir(ro / "x"):
            pass
    finally:
        ro.chmod(0o700)


def test_output_folder_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="not writable"), atomic_output_dir(f):
        pass
