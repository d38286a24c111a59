import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, make_image

from DiffusionAnomalyLib import __version__
from DiffusionAnomalyLib.app.cli import main
from DiffusionAnomalyLib.imaging.io import write_volume

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "DiffusionAnomalyLib", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=300)


def test_help_and_version_from_a_real_process():
    r = _run("--help")
    assert r.returncode == 0
    for sub in ("phantom", "baseline", "demo"):
        assert sub in r.stdout
    v = _run("--version")
    assert v.returncode == 0 and __version__ in v.stdout


@pytest.mark.parametrize("organ", ["kidney", "liver", "brain"])
def test_phantom_command_writes_a_case_per_organ(tmp_path, organ, capsys):
    assert main(["phantom", "--organ", organ, "--out", str(tmp_path / organ), "--seed", "1", "--lesions", "1"]) == 0
    names = {p.name for p in (tmp_path / organ).iterdir()}
    images = {"ct.nii.gz"} if organ != "brain" else {"t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz", "t2f.nii.gz"}
    assert images | {"segmentations", "segmentations.nii.gz", "lesions.nii.gz", "report.txt", "case.json"} == names
    assert "lesion 1" in capsys.readouterr().out


def test_baseline_command_on_a_phantom_with_totalseg_folder(kidney_case, tmp_path, capsys):
    _, folder = kidney_case
    rc = main(["baseline", "--organ", "kidney", "--input", str(folder / "ct.nii.gz"),
               "--totalseg", str(folder / "segmentations"), "--out", str(tmp_path / "out")])
    assert rc == 0
    assert "threshold" in capsys.readouterr().out
    assert (tmp_path / "out" / "lesions.csv").read_text().startswith("id,organ,side,voxels,volume_ml")


@pytest.fixture()
def bad_inputs(tmp_path):
    """Files that are each wrong in one way, and a valid image/mask pair."""
    rng = np.random.default_rng(0)
    good = make_image(rng.normal(40, 10, (70, 60, 60)).astype(np.float32), spacing=(2, 2, 2))
    mask_arr = np.zeros((70, 60, 60), np.uint8)
    mask_arr[25:45, 20:35, 10:25] = 1
    mask_arr[25:45, 20:35, 35:50] = 1
    mask = make_image(mask_arr, spacing=(2, 2, 2))
    f = {"good": write_volume(good, tmp_path / "ct.nii.gz"), "mask": write_volume(mask, tmp_path / "mask.nii.gz")}
    f["missing"] = tmp_path / "nope.nii.gz"
    f["unreadable"] = tmp_path / "broken.nii.gz"
    f["unreadable"].write_bytes(b"\x00" * 100)
    f["2d"] = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image(64, 64, sitk.sitkInt16), str(f["2d"]))
    f["4d"] = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8, 8, 2], sitk.sitkInt16), str(f["4d"]))
    nan_arr = rng.normal(40, 10, (70, 60, 60)).astype(np.float32)
    nan_arr[3, 3, 3] = np.nan
    f["nan"] = write_volume(make_image(nan_arr, spacing=(2, 2, 2)), tmp_path / "nan.nrrd")
    f["empty_mask"] = write_volume(make_image(np.zeros((70, 60, 60), np.uint8), spacing=(2, 2, 2)),
                                   tmp_path / "empty.nii.gz")
    f["other_grid"] = write_volume(make_image(mask_arr, spacing=(2, 2, 2.5)), tmp_path / "othergrid.nii.gz")
    f["thin"] = write_volume(make_image(rng.normal(40, 10, (10, 60, 60)).astype(np.float32), spacing=(2, 2, 2)),
                             tmp_path / "thin.nii.gz")
    thin_mask = np.zeros((10, 60, 60), np.uint8)
    thin_mask[3:7, 20:35, 10:25] = 1
    f["thin_mask"] = write_volume(make_image(thin_mask, spacing=(2, 2, 2)), tmp_path / "thinmask.nii.gz")
    f["t2w_shifted"] = write_volume(make_image(rng.normal(size=(70, 60, 60)).astype(np.float32), spacing=(2, 2, 2),
                                               origin=(0, 0, 4)), tmp_path / "t2w.nii.gz")
    return f


@pytest.mark.parametrize("case,expected", [
    ("missing", r"nope\.nii\.gz: file not found"),
    ("unreadable", r"broken\.nii\.gz: not a readable image"),
    ("2d", r"slice\.nrrd: the image is 2D"),
    ("4d", r"series\.nii\.gz: the image is 4D"),
    ("nan", r"nan\.nrrd: 1 voxels are NaN"),
    ("empty_mask", r"empty\.nii\.gz: the mask is empty"),
    ("other_grid", r"othergrid\.nii\.gz and the image are on different grids: spacing"),
    ("thin", r"thin\.nii\.gz: the kidney ROI \(96 x 96 x 128 mm\) is larger than the image"),
    ("channels", r"t2w\.nii\.gz and .*ct\.nii\.gz are on different grids: origin"),
])
def test_bad_input_gives_a_specific_error_and_writes_nothing(bad_inputs, tmp_path, capsys, case, expected):
    f = bad_inputs
    args = ["baseline", "--organ", "kidney", "--out", str(tmp_path / "out")]
    if case in ("missing", "unreadable", "2d", "4d", "nan"):
        args += ["--input", str(f[case]), "--mask", str(f["mask"])]
    elif case in ("empty_mask", "other_grid"):
        args += ["--input", str(f["good"]), "--mask", str(f[case])]
    elif case == "thin":
        args += ["--input", str(f["thin"]), "--mask", str(f["thin_mask"])]
    else:  # brain channels on different grids
        args = ["baseline", "--organ", "brain", "--out", str(tmp_path / "out"), "--skull-stripped",
                "--input", str(f["good"]), str(f["t2w_shifted"]), str(f["good"]), str(f["good"])]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error [bad_input]: ") and __import__("re").search(expected, err), err
    assert not (tmp_path / "out").exists()


def test_roi_larger_than_image_message(bad_inputs, tmp_path, capsys):
    rc = main(["baseline", "--organ", "kidney", "--input", str(bad_inputs["thin"]), "--mask",
               str(bad_inputs["thin_mask"]), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "is larger than the image" in err and "along z" in err


def test_no_mask_and_no_totalsegmentator_explains_how_to_install(bad_inputs, tmp_path, capsys):
    rc = main(["baseline", "--organ", "kidney", "--input", str(bad_inputs["good"]), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 6 and "missing_dependency" in err and "--mask" in err
    assert not (tmp_path / "o").exists()
