"""The bad-input suite (issue 21): hostile inputs, parameters and faults against the real command line.

Every case asserts the exit code, that the one-line message names the file (or option) and the problem, that
the inputs' checksums are unchanged, and that nothing partial (``.staging-*``, ``.replaced-*``, ``.tmp-*``,
``/tmp/da-bundle-*``, ``/tmp/da-totalseg-*``) is left behind. Most cases fail before any computation; the few
full runs use the non-neural ``baseline`` on a small synthetic image, so the suite stays fast.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, make_image

from DiffusionAnomalyLib.app.cli import main
from DiffusionAnomalyLib.imaging.io import keep_locale, write_volume

DEMO = REPO / "Resources" / "Models" / "kidney-demo"
SHAPE = (64, 48, 48)  # z, y, x at 2.5 mm: 120 x 120 x 160 mm, enough for the kidney ROI (96 x 96 x 128 mm)
SPACING = (2.5, 2.5, 2.5)


def _kidneys() -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[20:44, 16:30, 8:18] = 1
    m[20:44, 16:30, 30:40] = 1
    return m


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Valid and broken input files, written once (read-only for the tests: checksums are compared)."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    ct = rng.normal(40, 10, SHAPE).astype(np.float32)
    f: dict[str, Path] = {"dir": d}
    f["ct"] = write_volume(make_image(ct, SPACING), d / "ct.nii.gz")
    f["mask"] = write_volume(make_image(_kidneys(), SPACING), d / "mask.nii.gz")
    multi = _kidneys().astype(np.int16)
    multi[0:10, 0:10, 0:10] = 5
    multi[50:60, 0:10, 0:10] = 7
    f["multilabel"] = write_volume(make_image(multi, SPACING), d / "multilabel.nii.gz")
    f["prob"] = write_volume(make_image(_kidneys().astype(np.float32) * 0.7, SPACING), d / "prob.nii.gz")
    nan_mask = _kidneys().astype(np.float32)
    nan_mask[0, 0, 0] = np.nan
    f["nan_mask"] = write_volume(make_image(nan_mask, SPACING), d / "nanmask.nrrd")
    f["grid_mask"] = write_volume(make_image(_kidneys(), (2.5, 2.5, 3.0)), d / "gridmask.nii.gz")
    # corrupt files
    data = f["ct"].read_bytes()
    (d / "trunc.nii.gz").write_bytes(data[: len(data) // 3])
    f["trunc"] = d / "trunc.nii.gz"
    sitk.WriteImage(make_image(ct, SPACING), str(d / "raw.nii"), False)
    raw = (d / "raw.nii").read_bytes()
    (d / "trunc_raw.nii").write_bytes(raw[: len(raw) // 2])
    f["trunc_raw"] = d / "trunc_raw.nii"
    flipped = bytearray(data)
    for i in range(len(flipped) // 2, len(flipped) // 2 + 64):
        flipped[i] ^= 0xFF
    (d / "flipped.nii.gz").write_bytes(bytes(flipped))
    f["flipped"] = d / "flipped.nii.gz"
    for name, ext in (("nan", "nii.gz"), ("nan_raw", "nii"), ("nan_nrrd", "nrrd"), ("nan_mha", "mha")):
        a = ct.copy()
        a[5, 5, 5] = np.nan
        f[name] = d / f"{name}.{ext}"
        sitk.WriteImage(make_image(a, SPACING), str(f[name]))
    a = ct.copy()
    a[6, 6, 6] = np.inf
    f["inf"] = d / "inf.nii.gz"
    sitk.WriteImage(make_image(a, SPACING), str(f["inf"]))
    for ext in ("nrrd", "mha"):
        p = d / f"whole.{ext}"
        sitk.WriteImage(make_image(ct, SPACING), str(p), True)
        b = p.read_bytes()
        f[f"trunc_{ext}"] = d / f"trunc.{ext}"
        f[f"trunc_{ext}"].write_bytes(b[: len(b) // 3])
        p.unlink()
    f["empty"] = d / "empty.nii.gz"
    f["empty"].write_bytes(b"")
    f["junk"] = d / "junk.nii.gz"
    f["junk"].write_bytes(b"not an image at all" * 10)
    f["header_only"] = d / "header.nii"
    f["header_only"].write_bytes(raw[:348])
    # geometry the outputs could not honour
    sheared = make_image(ct, SPACING)
    sheared.SetDirection((1, 0, 0, 0.3, 1, 0, 0, 0, 1))
    f["shear_nrrd"] = d / "sheared.nrrd"
    sitk.WriteImage(sheared, str(f["shear_nrrd"]))
    sheared_mask = make_image(_kidneys(), SPACING)
    sheared_mask.SetDirection((1, 0, 0, 0.3, 1, 0, 0, 0, 1))
    f["shear_mask"] = d / "shearedmask.nrrd"  # on the same (sheared) grid: only the shear is wrong
    sitk.WriteImage(sheared_mask, str(f["shear_mask"]))
    f["shear_nii"] = d / "sheared.nii.gz"  # ITK cannot write a sheared sform: patch one in, as other tools write
    head = bytearray(raw)
    head[252:256] = np.array([1, 1], "<i2").tobytes()  # a valid qform and a sheared sform: ITK would pick the qform
    head[280:328] = np.array([[2.5, 0.75, 0, 0], [0, 2.5, 0, 0], [0, 0, 2.5, 0]], "<f4").tobytes()
    import gzip

    f["shear_nii"].write_bytes(gzip.compress(bytes(head)))
    f["singular"] = d / "singular.nhdr"
    (d / "singular.raw").write_bytes(np.zeros(8 * 8 * 8, np.int16).tobytes())
    f["singular"].write_text("NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 8 8 8\n"
                             "space directions: (1,0,0) (0,1,0) (0,0,0)\nendian: little\nencoding: raw\n"
                             "space origin: (0,0,0)\ndata file: singular.raw\n")
    # DICOM: complete, a missing slice, a duplicated slice, two series
    f["dicom_gap"] = _dicom_series(d / "dicom_gap", skip=(5,))
    f["dicom_dup"] = _dicom_series(d / "dicom_dup", dup=(5,))
    f["dicom_two"] = _dicom_series(d / "dicom_two")
    _dicom_series(d / "dicom_two", uid="1.2.826.0.1.3680043.2.1125.2", prefix="t")
    # a TotalSegmentator-style folder of per-organ masks
    seg = d / "segmentations"
    seg.mkdir()
    from DiffusionAnomalyLib.imaging.masks import split_left_right

    sides = split_left_right(make_image(_kidneys(), SPACING))
    for side, img in sides.items():
        write_volume(img, seg / f"kidney_{side}.nii.gz")
    f["seg"] = seg
    return f


def _dicom_series(folder: Path, skip=(), dup=(), uid="1.2.826.0.1.3680043.2.1125.1", prefix="s", n=12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    k = 0
    for i in range(n):
        if i in skip:
            continue
        for rep in range(2 if i in dup else 1):
            sl = sitk.GetImageFromArray(np.full((16, 16), i * 10, np.int16))
            sl.SetSpacing((1.5, 1.5))
            for tag, val in {"0008|0060": "CT", "0020|000d": uid + ".0", "0020|000e": uid,
                             "0008|0018": f"{uid}.{i}.{rep}", "0020|0013": str(k + 1), "0020|0032": f"0\\0\\{i * 2.0}",
                             "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": "1.5\\1.5", "0018|0050": "2",
                             "0008|0016": "1.2.840.10008.5.1.4.1.1.2"}.items():
                sl.SetMetaData(tag, val)
            w.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
            with keep_locale():  # GDCM's writer sets the C locale to "C" (Python's text encoding would be ASCII)
                w.Execute(sl)
            k += 1
    return folder


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def _temp_leftovers() -> set[str]:
    t = Path(tempfile.gettempdir())
    return {p.name for p in t.glob("da-bundle-*")} | {p.name for p in t.glob("da-totalseg-*")}


@pytest.fixture(autouse=True)
def untouched(inputs, tmp_path):
    """Inputs unchanged and nothing partial left, after every case."""
    before, temps = _digest(inputs["dir"]), _temp_leftovers()
    yield
    assert _digest(inputs["dir"]) == before, "an input file was changed"
    partial = [p for p in tmp_path.rglob("*") if p.name.startswith((".staging-", ".replaced-", ".tmp-", ".probe-"))]
    assert not partial, partial
    assert _temp_leftovers() <= temps, _temp_leftovers() - temps


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # the parser refused an option (its declared range): exit 2 and the reason
        rc = exc.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _baseline(f, out, *more, image="ct", mask="mask") -> list:
    args = ["baseline", "--organ", "kidney", "--input", f.get(image, image), "--out", out]
    if mask:
        args += ["--mask", f.get(mask, mask)]
    return args + list(more)


def _expect(rc, err, code, pattern):
    assert rc == code, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error [")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]


# ---- 2. corrupt images (before any work) -----------------------------------------------------------------------

@pytest.mark.parametrize("name,pattern", [
    ("trunc", r"trunc\.nii\.gz: the (file|compressed file) is truncated"),
    ("trunc_raw", r"trunc_raw\.nii: the file is truncated: \d+ of \d+ bytes"),
    ("flipped", r"flipped\.nii\.gz: the compressed file is truncated or corrupt"),
    ("nan", r"nan\.nii\.gz: 1 voxels are NaN or infinite"),
    ("nan_raw", r"nan_raw\.nii: 1 voxels are NaN or infinite"),
    ("nan_nrrd", r"nan_nrrd\.nrrd: 1 voxels are NaN or infinite"),
    ("nan_mha", r"nan_mha\.mha: 1 voxels are NaN or infinite"),
    ("inf", r"inf\.nii\.gz: 1 voxels are NaN or infinite"),
    ("trunc_nrrd", r"trunc\.nrrd: not a readable image \(the file is truncated or corrupt"),
    ("trunc_mha", r"trunc\.mha: the file is truncated: \d+ of \d+ bytes"),
    ("empty", r"empty\.nii\.gz: the file is empty"),
    ("junk", r"junk\.nii\.gz: not a readable image"),
    ("header_only", r"header\.nii: the file is truncated: 0 of"),
    ("dicom_gap", r"dicom_gap: the DICOM slices are not evenly spaced .*a slice is missing"),
    ("dicom_dup", r"dicom_dup: 1 DICOM slice\(s\) share a position"),
    ("shear_nrrd", r"sheared\.nrrd: its direction matrix is not orthogonal"),
    ("shear_nii", r"sheared\.nii\.gz: its sform matrix is not orthogonal"),
    ("singular", r"singular\.nhdr: .*singular"),
])
def test_corrupt_or_unusable_image_is_refused(inputs, tmp_path, capsys, name, pattern):
    mask = {"shear_nrrd": "shear_mask", "shear_nii": "shear_nii"}.get(name, "mask")
    rc, _, err = _run(_baseline(inputs, tmp_path / "out", image=name, mask=mask), capsys)
    _expect(rc, err, 2, pattern)
    assert not (tmp_path / "out").exists()
    assert "WARNING: In" not in err and "(0 0 1)" not in err  # no raw ITK blocks, no matrix rows as reasons


@pytest.mark.parametrize("name,pattern", [
    ("nan_mask", r"nanmask\.nrrd: 1 voxels are NaN"),
    ("multilabel", r"multilabel\.nii\.gz: a multilabel file \(4 labels: 1, 5, 7, .*\) .*--mask-label"),
    ("prob", r"prob\.nii\.gz: the mask holds non-integer values"),
    ("grid_mask", r"gridmask\.nii\.gz and the image are on different grids: spacing \(2\.5, 2\.5, 3\) in "
                  r".*gridmask\.nii\.gz but \(2\.5, 2\.5, 2\.5\) in the image"),
])
def test_unusable_mask_is_refused(inputs, tmp_path, capsys, name, pattern):
    if name == "multilabel":  # 4 labels: add one so a paired organ's two labels are exceeded
        pattern = r"multilabel\.nii\.gz: a multilabel file \(3 labels: 1, 5, 7\) .*--mask-label"
    rc, _, err = _run(_baseline(inputs, tmp_path / "out", mask=name), capsys)
    _expect(rc, err, 2, pattern)
    assert not (tmp_path / "out").exists()


def test_mask_label_not_in_the_file_lists_its_labels(inputs, tmp_path, capsys):
    rc, _, err = _run(_baseline(inputs, tmp_path / "out", "--mask-label", "9", mask="multilabel"), capsys)
    _expect(rc, err, 2, r"multilabel\.nii\.gz: the mask is empty \(no label 9\); .*its labels 1, 5, 7")


def test_mask_label_with_totalseg_is_refused(inputs, tmp_path, capsys):
    args = _baseline(inputs, tmp_path / "out", "--totalseg", inputs["seg"], "--mask-label", "2", mask=None)
    rc, _, err = _run(args, capsys)
    _expect(rc, err, 2, r"--mask-label 2 applies to --mask only; with --totalseg")


def test_mask_label_without_a_mask_is_refused(inputs, tmp_path, capsys):
    rc, _, err = _run(_baseline(inputs, tmp_path / "out", "--mask-label", "2", mask=None), capsys)
    _expect(rc, err, 2, r"--mask-label 2 applies to --mask only")


@pytest.mark.parametrize("name,pattern", [("dicom_gap", "not evenly spaced"), ("dicom_dup", "share a position")])
def test_dicom_series_with_a_missing_or_duplicated_slice_is_not_averaged(inputs, name, pattern):
    from DiffusionAnomalyLib.errors import InputError
    from DiffusionAnomalyLib.imaging.io import read_volume

    with pytest.raises(InputError, match=rf"{name}: .*{pattern}"):
        read_volume(inputs[name])


def test_a_complete_dicom_series_is_read_with_its_spacing(inputs, tmp_path):
    from DiffusionAnomalyLib.imaging.io import read_volume

    image = read_volume(_dicom_series(tmp_path / "ok"))
    assert image.GetSize() == (16, 16, 12) and image.GetSpacing() == pytest.approx((1.5, 1.5, 2.0))


def test_a_non_ascii_path_under_the_c_locale(inputs, tmp_path):
    d = tmp_path / "donn\u00e9es"
    d.mkdir()
    shutil.copy(inputs["ct"], d / "sc\u00e4n.nii.gz")
    shutil.copy(inputs["mask"], d / "m\u00e4sk.nii.gz")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    args = [os.fsencode(a) for a in (sys.executable, "-m", "DiffusionAnomalyLib", "baseline", "--organ", "kidney",
                                     "--input", d / "sc\u00e4n.nii.gz", "--mask", d / "m\u00e4sk.nii.gz",
                                     "--out", d / "\u00f6ut")]
    p = subprocess.run(args, capture_output=True, env=env, cwd=tempfile.gettempdir(), timeout=120)
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-2000:]
    assert (d / "\u00f6ut" / "run.json").is_file() and b"logic_error" not in p.stderr


def test_several_dicom_series_message_gives_advice_the_cli_can_follow(inputs, tmp_path, capsys):
    rc, _, err = _run(_baseline(inputs, tmp_path / "out", image="dicom_two"), capsys)
    _expect(rc, err, 2, r"dicom_two: holds 2 DICOM series .*folder of their own")
    assert "series_uid" not in err


def test_a_missing_input_is_reported_before_anything_else(inputs, tmp_path, capsys):
    rc, _, err = _run(_baseline(inputs, tmp_path / "out", image=str(tmp_path / "nope.nii.gz")), capsys)
    _expect(rc, err, 2, r"nope\.nii\.gz: file not found")


# ---- 5. nonsense parameters --------------------------------------------------------------------------------------

@pytest.mark.parametrize("option,value", [
    ("--threshold", "nan"), ("--threshold", "inf"), ("--threshold", "-inf"), ("--threshold", "-1"),
    ("--threshold", "-0.5"), ("--min-lesion-ml", "-1"), ("--min-lesion-ml", "nan"),
])
def test_baseline_nonsense_parameter_is_refused(inputs, tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in _baseline(inputs, tmp_path / "out", f"{option}={value}")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument {option}" in err and value in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option,value", [
    ("--threshold", "nan"), ("--threshold", "-1"), ("--guidance", "-5"), ("--guidance", "nan"),
    ("--seed", str(2**64)), ("--seed", "-1"), ("--steps", "0"), ("--noise-level", "0"), ("--samples", "0"),
    ("--median-filter", "-1"), ("--grow-to", "0"), ("--grow-to", "1.5"), ("--grow-to", "nan"),
    ("--trajectory-every", "-2"), ("--resample-jumps", "0"), ("--hybrid", "-1"), ("--hybrid", "nan"),
    ("--hybrid", "inf"), ("--floor-contrast", "-1"), ("--floor-contrast", "nan"),
])
def test_run_nonsense_parameter_is_refused(inputs, tmp_path, capsys, option, value):
    argv = ["run", "--bundle", DEMO, "--input", inputs["ct"], "--mask", inputs["mask"], "--out", tmp_path / "out",
            f"{option}={value}"]
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument {option}" in err, err
    assert not (tmp_path / "out").exists()


def test_a_floor_contrast_below_one_means_nothing_and_exits_2(inputs, tmp_path, capsys):
    argv = ["run", "--bundle", DEMO, "--input", inputs["ct"], "--mask", inputs["mask"], "--out", tmp_path / "out",
            "--device", "cpu", "--floor-contrast", "0.5"]
    rc, _, err = _run(argv, capsys)
    _expect(rc, err, 2, r"floor contrast must be 0 \(off\) or >= 1")
    assert not (tmp_path / "out").exists()


def test_unknown_device_exits_2(inputs, tmp_path, capsys):
    argv = ["run", "--bundle", DEMO, "--input", inputs["ct"], "--mask", inputs["mask"], "--out", tmp_path / "out",
            "--device", "tpu"]
    rc, _, err = _run(argv, capsys)
    _expect(rc, err, 2, r"--device 'tpu': unknown device")


def test_noise_level_beyond_the_schedule_exits_2(inputs, tmp_path, capsys):
    argv = ["run", "--bundle", DEMO, "--input", inputs["ct"], "--mask", inputs["mask"], "--out", tmp_path / "out",
            "--device", "cpu", "--noise-level", "5000"]
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and "argument --noise-level: noise level L must be in 1..999 (got 5000)" in err, err
    assert not (tmp_path / "out").exists()


# ---- 1. inputs are sacred; results replaced whole ------------------------------------------------------------------

@pytest.fixture()
def case_dir(inputs, tmp_path) -> Path:
    """A private copy of a case folder (image, mask, ground truth) that the test may point --out at."""
    d = tmp_path / "case"
    d.mkdir()
    shutil.copy(inputs["ct"], d / "ct.nii.gz")
    shutil.copy(inputs["mask"], d / "mask.nii.gz")
    shutil.copy(inputs["mask"], d / "lesions.nii.gz")
    return d


def test_out_is_the_case_folder_of_the_input(case_dir, capsys):
    before = _digest(case_dir)
    rc, _, err = _run(["baseline", "--organ", "kidney", "--input", case_dir / "ct.nii.gz", "--mask",
                       case_dir / "mask.nii.gz", "--out", case_dir], capsys)
    _expect(rc, err, 2, r"case: --out contains the input .*ct\.nii\.gz")
    assert _digest(case_dir) == before


def test_out_is_the_case_folder_even_with_overwrite(case_dir, capsys):
    before = _digest(case_dir)
    rc, _, err = _run(["baseline", "--organ", "kidney", "--input", case_dir / "ct.nii.gz", "--mask",
                       case_dir / "mask.nii.gz", "--out", case_dir, "--overwrite"], capsys)
    _expect(rc, err, 2, r"--out contains the input")
    assert _digest(case_dir) == before


def test_an_input_named_like_an_output_inside_out(inputs, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    shutil.copy(inputs["ct"], out / "reconstruction.nii.gz")
    before = _digest(out)
    rc, _, err = _run(_baseline(inputs, out, "--overwrite", image=str(out / "reconstruction.nii.gz")), capsys)
    _expect(rc, err, 2, r"results: --out contains the input .*reconstruction\.nii\.gz")
    assert _digest(out) == before


def test_mask_inside_out(inputs, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    shutil.copy(inputs["mask"], out / "mask.nii.gz")
    rc, _, err = _run(_baseline(inputs, out, "--overwrite", mask=str(out / "mask.nii.gz")), capsys)
    _expect(rc, err, 2, r"--out contains the input .*mask\.nii\.gz")


def test_out_inside_an_input_folder(inputs, tmp_path, capsys):
    seg = tmp_path / "seg"
    shutil.copytree(inputs["seg"], seg)
    args = _baseline(inputs, seg / "out", "--totalseg", seg, mask=None)
    rc, _, err = _run(args, capsys)
    _expect(rc, err, 2, r"out: --out lies inside the input folder .*seg")
    assert not (seg / "out").exists()


def test_out_is_a_link_to_the_case_folder(case_dir, tmp_path, capsys):
    before = _digest(case_dir)
    link = tmp_path / "results-link"
    link.symlink_to(case_dir)
    rc, _, err = _run(["baseline", "--organ", "kidney", "--input", case_dir / "ct.nii.gz", "--mask",
                       case_dir / "mask.nii.gz", "--out", link, "--overwrite"], capsys)
    _expect(rc, err, 2, r"results-link: --out contains the input .*ct\.nii\.gz")
    assert _digest(case_dir) == before


def test_out_is_the_current_folder_holding_the_input(case_dir, capsys, monkeypatch):
    monkeypatch.chdir(case_dir)
    rc, _, err = _run(["baseline", "--organ", "kidney", "--input", "ct.nii.gz", "--mask", "mask.nii.gz", "--out",
                       "."], capsys)
    _expect(rc, err, 2, r"^error \[output_not_writable\]: \.: --out contains the input ct\.nii\.gz")


def test_a_header_claiming_more_voxels_than_the_file_holds(inputs, tmp_path, capsys):
    raw = bytearray((inputs["dir"] / "raw.nii").read_bytes())
    raw[42:48] = np.array([30000, 30000, 30000], "<i2").tobytes()
    (tmp_path / "huge.nii").write_bytes(bytes(raw))
    rc, _, err = _run(_baseline(inputs, tmp_path / "out", image=str(tmp_path / "huge.nii")), capsys)
    _expect(rc, err, 2, r"huge\.nii: the file is truncated: \d+ of \d+ bytes of voxel data \(0%\)")


def test_out_is_a_file(inputs, tmp_path, capsys):
    f = tmp_path / "out.txt"
    f.write_text("keep me")
    rc, _, err = _run(_baseline(inputs, f), capsys)
    _expect(rc, err, 2, r"out\.txt: --out is an existing file")
    assert f.read_text() == "keep me"


def test_out_under_a_file(inputs, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    rc, _, err = _run(_baseline(inputs, f / "sub" / "out"), capsys)
    _expect(rc, err, 2, r"afile/sub/out: --out cannot be created: .*afile is a file")


def test_read_only_out_is_reported_before_any_work(inputs, tmp_path, capsys, monkeypatch):
    import DiffusionAnomalyLib.imaging.io as dio

    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(dio.tempfile, "mkstemp", refuse)
    monkeypatch.setattr("DiffusionAnomalyLib.detection.baseline.MedianBaseline.reconstruct",
                        lambda *a, **k: pytest.fail("computed before checking the output folder"))
    rc, _, err = _run(_baseline(inputs, tmp_path / "ro"), capsys)
    _expect(rc, err, 2, r"ro: output folder is not writable \(Read-only file system")


@pytest.fixture(scope="module")
def first_result(inputs, tmp_path_factory) -> Path:
    """One real baseline result (the full run that the rerun cases start from)."""
    out = tmp_path_factory.mktemp("first") / "result"
    assert main([str(a) for a in _baseline(inputs, out)]) == 0
    return out


def _copy_result(first_result, tmp_path) -> Path:
    out = tmp_path / "result"
    shutil.copytree(first_result, out)
    return out


def test_rerun_into_a_result_needs_overwrite(inputs, first_result, tmp_path, capsys):
    out = _copy_result(first_result, tmp_path)
    before = _digest(out)
    rc, _, err = _run(_baseline(inputs, out), capsys)
    _expect(rc, err, 2, r"result: --out holds the results of an earlier run; pass --overwrite")
    assert _digest(out) == before


def test_overwrite_replaces_the_whole_result_set(inputs, first_result, tmp_path, capsys):
    out = _copy_result(first_result, tmp_path)
    (out / "trajectory_kidney_left.nii.gz").write_bytes(b"stale from an earlier run")
    (out / "reconstruction_ct.nii.gz").write_bytes(b"stale too")
    rc, _, err = _run(_baseline(inputs, out, "--overwrite", "--threshold", "0.05"), capsys)
    assert rc == 0, err
    run = json.loads((out / "run.json").read_text())
    assert run["parameters"]["threshold"] == 0.05
    assert sorted(p.name for p in out.iterdir()) == sorted(run["outputs"])


def test_a_foreign_non_empty_folder_is_refused(inputs, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    rc, _, err = _run(_baseline(inputs, out), capsys)
    _expect(rc, err, 2, r"mine: --out is not empty \(notes\.txt\) and is not a result of diffusion-anomaly")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_stale_staging_of_a_killed_run_is_cleaned(inputs, first_result, tmp_path, capsys):
    out = _copy_result(first_result, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".staging-{dead.pid}-abc"
    stale.mkdir()
    (stale / "heatmap.nii.gz").write_bytes(b"half")
    old_style = out / ".staging-k2j3h4"
    old_style.mkdir()
    rc, _, err = _run(_baseline(inputs, out, "--overwrite"), capsys)
    assert rc == 0, err
    assert not stale.exists() and not old_style.exists()


def test_full_disk_while_writing_leaves_nothing(inputs, tmp_path, capsys, monkeypatch):
    import DiffusionAnomalyLib.imaging.io as dio

    real = dio.sitk.WriteImage
    calls = []

    def full(image, path, *a):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(image, path, *a)

    monkeypatch.setattr(dio.sitk, "WriteImage", full)
    rc, _, err = _run(_baseline(inputs, tmp_path / "out"), capsys)
    _expect(rc, err, 2, r"could not write \(.*No space left on device")
    assert not (tmp_path / "out").exists()


def test_full_disk_while_writing_the_overview_leaves_nothing(inputs, tmp_path, capsys, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "overview.png"))

    monkeypatch.setattr("DiffusionAnomalyLib.detection.overview.write_overview", full)
    monkeypatch.setattr("DiffusionAnomalyLib.detection.pipeline.write_overview", full, raising=False)  # if imported
    rc, _, err = _run(_baseline(inputs, tmp_path / "out"), capsys)
    _expect(rc, err, 2, r"output_not_writable\]: cannot write \(.*overview\.png\): No space left on device")
    assert not (tmp_path / "out").exists()


# ---- 6. every failure has its documented exit code -----------------------------------------------------------------

@pytest.mark.parametrize("exc,code,pattern", [
    (MemoryError(), 4, r"^error \[out_of_memory\]: out of memory \(MemoryError"),
    (RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 GB"), 4,
     r"out_of_memory.*DefaultCPUAllocator"),
    (KeyboardInterrupt(), 5, r"^error \[cancelled\]: cancelled by the user"),
    (ZeroDivisionError("division by zero"), 1,
     r"^error \[internal_error\]: ZeroDivisionError: division by zero .*--debug"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), 2, r"output_not_writable.*Disk quota exceeded"),
])
def test_any_failure_maps_to_its_exit_code(inputs, tmp_path, capsys, monkeypatch, exc, code, pattern):
    def boom(*a, **k):
        raise exc

    monkeypatch.setattr("DiffusionAnomalyLib.detection.baseline.MedianBaseline.reconstruct", boom)
    rc, _, err = _run(_baseline(inputs, tmp_path / "out"), capsys)
    _expect(rc, err, code, pattern)
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("DiffusionAnomalyLib.detection.baseline.MedianBaseline.reconstruct", lambda *a, **k: 1 / 0)
    rc, _, err = _run(["--debug"] + _baseline(inputs, tmp_path / "out"), capsys)
    assert rc == 1 and "Traceback" in err and "ZeroDivisionError" in err


def _bundle_copy(tmp_path: Path) -> Path:
    b = tmp_path / "kidney-demo"
    shutil.copytree(DEMO, b)
    return b


def _rehash(bundle: Path) -> None:
    from DiffusionAnomalyLib.models.bundle import sha256_file

    meta = json.loads((bundle / "model.json").read_text())
    meta["files"] = {name: sha256_file(bundle / name) for name in meta["files"]}
    (bundle / "model.json").write_text(json.dumps(meta, indent=2))


def _run_bundle(inputs, bundle, tmp_path, capsys, *more):
    argv = ["run", "--bundle", bundle, "--input", inputs["ct"], "--mask", inputs["mask"], "--out", tmp_path / "out",
            "--device", "cpu", *more]
    return _run(argv, capsys)


def test_pickle_saved_as_safetensors_exits_3(inputs, tmp_path, capsys):
    import pickle

    b = _bundle_copy(tmp_path)
    (b / "denoiser.safetensors").write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=4))
    _rehash(b)
    meta = json.loads((b / "model.json").read_text())
    meta["version"] = "9.9-local"  # not the shipped one, so the manifest does not catch it first
    (b / "model.json").write_text(json.dumps(meta))
    rc, _, err = _run_bundle(inputs, b, tmp_path, capsys)
    _expect(rc, err, 3, r"denoiser\.safetensors: a pickle \(refused")


def test_garbage_safetensors_exits_3(inputs, tmp_path, capsys):
    b = _bundle_copy(tmp_path)
    (b / "classifier.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + b"0" * 100)
    _rehash(b)
    meta = json.loads((b / "model.json").read_text())
    meta["version"] = "9.9-local"
    (b / "model.json").write_text(json.dumps(meta))
    rc, _, err = _run_bundle(inputs, b, tmp_path, capsys)
    _expect(rc, err, 3, r"classifier\.safetensors: not a valid safetensors file")


# ---- 7. bundles: the manifest, links, temporary folders -------------------------------------------------------------

def test_a_shipped_bundle_with_changed_weights_and_hashes_is_refused(inputs, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    b = _bundle_copy(tmp_path)
    state = load_file(str(b / "denoiser.safetensors"))
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(b / "denoiser.safetensors"))
    _rehash(b)  # model.json's own checksums now agree with the tampered weights
    assert torch is not None
    rc, _, err = _run_bundle(inputs, b, tmp_path, capsys)
    _expect(rc, err, 3, r"kidney-demo: SHA-256 .* does not match the manifest entry for kidney-demo")


def test_a_weight_file_linking_out_of_the_bundle_is_refused(inputs, tmp_path, capsys):
    b = _bundle_copy(tmp_path)
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(b / "classifier.safetensors", outside)
    (b / "classifier.safetensors").symlink_to(outside)
    rc, _, err = _run_bundle(inputs, b, tmp_path, capsys)
    _expect(rc, err, 3, r"classifier\.safetensors: a link that leaves the bundle")


def test_model_json_linking_out_of_the_bundle_is_refused(inputs, tmp_path, capsys):
    b = _bundle_copy(tmp_path)
    shutil.move(b / "model.json", tmp_path / "model.json")
    (b / "model.json").symlink_to(tmp_path / "model.json")
    rc, _, err = _run_bundle(inputs, b, tmp_path, capsys)
    _expect(rc, err, 3, r"model\.json: a link that leaves the bundle")


def test_a_zip_with_a_symlink_is_refused(inputs, tmp_path, capsys):
    z = tmp_path / "b.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in DEMO.iterdir():
            zf.write(p, f"kidney-demo/{p.name}")
        info = zipfile.ZipInfo("kidney-demo/evil")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    rc, _, err = _run_bundle(inputs, z, tmp_path, capsys)
    _expect(rc, err, 3, r"b\.zip: the archive holds a symbolic link")


def test_model_json_given_as_the_bundle(inputs, tmp_path, capsys):
    rc, _, err = _run_bundle(inputs, DEMO / "model.json", tmp_path, capsys)
    _expect(rc, err, 3, r"model\.json: give the bundle folder .*kidney-demo\), not its model\.json")


def test_a_zip_bundle_leaves_no_temporary_folder(inputs, tmp_path, capsys):
    from DiffusionAnomalyLib.models.bundle import load_bundle

    z = tmp_path / "kidney.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in DEMO.iterdir():
            zf.write(p, f"kidney-demo/{p.name}")
    before = _temp_leftovers()
    bundle = load_bundle(z)
    assert bundle.path == z and bundle.networks and _temp_leftovers() <= before
    # and on a failing run after the bundle was read (the multilabel mask is refused)
    argv = ["run", "--bundle", z, "--input", inputs["ct"], "--mask", inputs["multilabel"], "--out",
            tmp_path / "out", "--device", "cpu", "--skip-modality-check"]
    rc, _, err = _run(argv, capsys)
    _expect(rc, err, 2, r"multilabel\.nii\.gz: a multilabel file")


def test_no_totalsegmentator_exits_6_without_a_temporary_folder(inputs, tmp_path, capsys):
    rc, _, err = _run(_baseline(inputs, tmp_path / "out", mask=None), capsys)
    _expect(rc, err, 6, r"missing_dependency.*--mask")


def test_totalsegmentator_output_folder_is_removed_after_the_run(inputs, tmp_path, capsys, monkeypatch):
    import DiffusionAnomalyLib.imaging.totalseg as ts

    def fake(image, out, preset, **k):
        shutil.copytree(inputs["seg"], out, dirs_exist_ok=True)
        return Path(out)

    monkeypatch.setattr(ts, "check_available", lambda preset: None)
    monkeypatch.setattr(ts, "run_totalsegmentator", fake)
    rc, _, err = _run(_baseline(inputs, tmp_path / "out", mask=None), capsys)
    assert rc == 0, err  # the autouse fixture checks that no da-totalseg-* folder is left


# ---- 4. an organ larger than the ROI ---------------------------------------------------------------------------------

def test_an_organ_larger_than_the_roi_is_reported_and_recorded(tmp_path, capsys):
    shape, spacing = (30, 24, 24), (10.0, 10.0, 10.0)
    rng = np.random.default_rng(1)
    ct = write_volume(make_image(rng.normal(40, 10, shape).astype(np.float32), spacing), tmp_path / "big.nii.gz")
    m = np.zeros(shape, np.uint8)
    m[3:26, 8:16, 4:10] = 1  # 230 mm along z: longer than the 128 mm ROI
    m[3:26, 8:16, 14:20] = 1
    mask = write_volume(make_image(m, spacing), tmp_path / "bigmask.nii.gz")
    rc, _, err = _run(["baseline", "--organ", "kidney", "--input", ct, "--mask", mask, "--out", tmp_path / "o"],
                      capsys)
    assert rc == 0, err
    assert re.search(r"big\.nii\.gz: \d+\.\d% of the kidney_(left|right) .*was NOT analysed", err), err
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    lesions = json.loads((tmp_path / "o" / "lesions.json").read_text())
    assert {o["structure"] for o in run["not_analysed"]} == {"kidney_left", "kidney_right"}
    assert lesions["not_analysed"] == run["not_analysed"] and run["not_analysed"][0]["fraction"] > 0.3


# ---- 8./1. dataset commands --------------------------------------------------------------------------------

def _dataset(tmp_path: Path, inputs) -> Path:
    data = tmp_path / "data"
    (data / "case1" / "segmentations").mkdir(parents=True)
    shutil.copy(inputs["ct"], data / "case1" / "ct.nii.gz")
    shutil.copy(inputs["mask"], data / "case1" / "lesions.nii.gz")
    for f in inputs["seg"].iterdir():
        shutil.copy(f, data / "case1" / "segmentations" / f.name)
    return data


@pytest.mark.parametrize("command", ["batch", "evaluate"])
def test_dataset_out_inside_the_data_is_refused(inputs, tmp_path, capsys, command):
    data = _dataset(tmp_path, inputs)
    before = _digest(data)
    rc, _, err = _run([command, "--data", data, "--baseline", "--organ", "kidney", "--out", data / "results"], capsys)
    _expect(rc, err, 2, r"results: --out lies inside the input folder .*data")
    rc, _, err = _run([command, "--data", data, "--baseline", "--organ", "kidney", "--out", data], capsys)
    _expect(rc, err, 2, r"data: --out contains the input .*data")
    assert _digest(data) == before


@pytest.mark.parametrize("command", ["batch", "evaluate", "sweep"])
def test_dataset_out_foreign_folder_is_refused(inputs, tmp_path, capsys, command):
    data = _dataset(tmp_path, inputs)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    argv = [command, "--data", data, "--out", out]
    argv += ["--bundle", DEMO] if command == "sweep" else ["--baseline", "--organ", "kidney"]
    rc, _, err = _run(argv, capsys)
    _expect(rc, err, 2, r"mine: --out is not empty \(thesis\.docx\)")
    assert [p.name for p in out.iterdir()] == ["thesis.docx"]


# ---- the worker ---------------------------------------------------------------------------------------------------

def _worker(args: list | str, memory_limit_gb: float | None = None, timeout: float = 120,
            argv: tuple = ()) -> tuple[int, list[dict], str]:
    """The worker run on the request a command line stands for (or ``args`` as the raw text on its stdin)."""
    from DiffusionAnomalyLib.app.cli import request_from_argv

    message = args if isinstance(args, str) else json.dumps(
        {"request": request_from_argv(args).to_json(), "memory_limit_gb": memory_limit_gb})
    p = subprocess.run([sys.executable, "-m", "DiffusionAnomalyLib.app.worker", *argv], capture_output=True,
                       text=True, timeout=timeout, cwd=tempfile.gettempdir(), input=message)
    events = [json.loads(ln) for ln in p.stdout.splitlines() if ln.strip()]
    return p.returncode, events, p.stderr


def test_worker_refuses_an_out_holding_the_input_with_an_error_event(case_dir):
    before = _digest(case_dir)
    rc, events, _ = _worker(["baseline", "--organ", "kidney", "--input", case_dir / "ct.nii.gz", "--mask",
                             case_dir / "mask.nii.gz", "--out", case_dir, "--overwrite"])
    assert rc == 2 and events[-1]["event"] == "error" and events[-1]["code"] == "output_not_writable"
    assert "contains the input" in events[-1]["message"] and events[-1]["exit_code"] == 2
    assert _digest(case_dir) == before


@pytest.mark.parametrize("message,says", [
    ('{"request": {"images": ["a.nii.gz"], "out": "o", "organ": "kidney", "baseline": true, "settings": '
     '{"threshold": -1}}}', "a fixed threshold must be a finite number >= 0"),
    ('{"request": {"images": "a.nii.gz", "out": "o"}}', "images must be a list of strings"),
    ('{"request": {"images": ["a"], "out": "o", "organ": "kidney", "baseline": true, "bundel": "x"}}',
     "unknown field(s) ['bundel']"),
    ('{"request": {"images": ["a"], "out": "o", "baseline": "yes"}}', "baseline must be true or false"),
    ('{"request": {"images": ["a"], "out": "o", "organ": "kidney", "baseline": true}, "memory_limit_gb": -1}',
     "memory_limit_gb must be a number of GiB > 0"),
    ('[1, 2]', "expected {"), ('', "takes a JSON request on stdin"), ('{"request": ', "not valid JSON"),
    ('{"job": "train", "request": {}}', 'unknown job "train"; choose one of detect, synthesize'),
    ('{"job": ["synthesize"], "request": {}}', 'unknown job ["synthesize"]'),
    ('{"request": {"images": ["a"], "out": "o", "organ": "kidney", "baseline": true}, "memory_limit_gb": 1e30}',
     "memory_limit_gb must be a number of GiB > 0 and <= 1048576 (got 1e+30)"),
    ('{"request": {"images": ["a"], "out": "o", "organ": "kidney", "baseline": true}, "memory_limit_gb": Infinity}',
     "memory_limit_gb must be a number of GiB > 0"),
    ('{"request": {"images": ["a"], "out": "o", "organ": "kidney", "baseline": true, "skull_stripped": true}}',
     "--skull-stripped is for a skull-stripped brain"),
    ('{"request": {"images": ["a"], "out": "o", "organ": "kidney", "baseline": true, "mask": ""}}',
     "--mask: an empty path"),
    ('{"job": "synthesize", "request": {"images": ["a"], "organ": "kidney", "out": "o", "options": {"count": 0}}}',
     "count must be in 1..1000 (got 0)"),
    ('{"job": "synthesize", "request": {"images": ["a"], "organ": "kidney", "out": "o", "options": {"seed": 1.5}}}',
     "options: seed must be a whole number (got 1.5)"),
    ('{"job": "synthesize", "request": {"images": ["a"], "organ": "kidney", "out": "o", "options": {"shap": "x"}}}',
     "options: unknown field(s) ['shap']"),
    ('{"job": "synthesize", "request": {"images": ["a"], "organ": "kidney", "out": "o", "bundle": "b"}}',
     "--bundle is for --method diffusion"),
])
def test_worker_bad_request_error_event_says_which(message, says):
    rc, events, _ = _worker(message)
    assert rc == 2 and events[-1]["event"] == "error" and events[-1]["code"] == "bad_input", events
    assert says in events[-1]["message"], events[-1]["message"]


def test_the_worker_takes_no_arguments():
    rc, events, _ = _worker("{}", argv=("run", "--bundle", "b"))
    assert rc == 2 and "takes no arguments" in events[-1]["message"] and "stdin" in events[-1]["message"]


def test_worker_under_a_tiny_memory_cap_still_emits_an_error_event(inputs, tmp_path):
    rc, events, err = _worker(_baseline(inputs, tmp_path / "out"), memory_limit_gb=0.35)
    assert rc == 4, (rc, events, err[-2000:])
    assert events and events[-1]["event"] == "error" and events[-1]["code"] == "out_of_memory"
    assert not (tmp_path / "out").exists()


# ---- signals: Ctrl-C and SIGTERM exit 5 after cleaning up --------------------------------------------------

_SLOW = """
import sys, time
from pathlib import Path
import DiffusionAnomalyLib.detection.baseline as b
def slow(self, x, mask, spacing):
    Path(sys.argv[1]).write_text("started")
    time.sleep(60)
b.MedianBaseline.reconstruct = slow
from DiffusionAnomalyLib.app.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_cancels_with_exit_5_and_leaves_nothing(inputs, tmp_path, sig):
    marker = tmp_path / "started"
    out = tmp_path / "out"
    # the default SIGINT disposition in the child, as in a terminal: a suite started in the background (nohup, `&`)
    # passes SIGINT on ignored, and Python then rightly leaves it ignored
    p = subprocess.Popen([sys.executable, "-c", _SLOW, marker, *map(str, _baseline(inputs, out))],
                         cwd=tempfile.gettempdir(), stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    while not marker.exists() and time.time() - t0 < 60 and p.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), p.communicate()[1]
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 5, err
    assert re.search(r"^error \[cancelled\]: cancelled by the user", err, re.M) and "Traceback" not in err, err
    assert not out.exists()


# ---- issue 35, class 1: every writing command leaves a user's files as they are ------------------------------------

def _users_folder(path: Path, names=("ct.nii.gz", "notes.txt")) -> dict[str, str]:
    """A folder of a user's own files (named like outputs where that is the danger); their digests."""
    path.mkdir(parents=True, exist_ok=True)
    for n in names:
        (path / n).parent.mkdir(parents=True, exist_ok=True)
        (path / n).write_bytes(b"the user's own " + n.encode())
    return _digest(path)


@pytest.mark.parametrize("argv,names", [
    (["phantom", "--organ", "kidney"], ("ct.nii.gz", "lesions.nii.gz", "segmentations/kidney_left.nii.gz")),
    (["phantom", "--organ", "kidney", "--overwrite"], ("ct.nii.gz", "lesions.nii.gz")),
    (["phantom", "--organ", "kidney", "--cases", "2"], ("labels.csv", "reports.csv")),
    (["demo", "--baseline"], ("case/ct.nii.gz", "result/lesions.nii.gz")),
    (["pseudo-labels", "--organ", "kidney", "--reports", "REPORTS"], ()),
    (["bench", "--sizes", "demo"], ()),
])
def test_a_writing_command_never_replaces_a_users_files(inputs, tmp_path, capsys, argv, names):
    target = tmp_path / "target"
    if names:
        before = _users_folder(target, names)
    else:  # commands that write one file: the user's file at that path
        target.write_bytes(b"case,structure\nmine,1\n")
        before = {"file": hashlib.sha256(target.read_bytes()).hexdigest()}
    reports = tmp_path / "reports.csv"
    reports.write_text("case,report\nc1,The kidneys are normal.\n")
    argv = [reports if a == "REPORTS" else a for a in argv]
    rc, _, err = _run([*argv, "--out", target], capsys)
    _expect(rc, err, 2, r"target: --out (is not empty|exists) .*(never replaced)")
    after = _digest(target) if names else {"file": hashlib.sha256(target.read_bytes()).hexdigest()}
    assert after == before


@pytest.mark.parametrize("command", ["baseline", "batch"])
def test_overwrite_does_not_open_a_users_folder(inputs, tmp_path, capsys, command):
    out = tmp_path / "mine"
    before = _users_folder(out, ("lesions.nii.gz", "heatmap.nii.gz"))
    if command == "baseline":
        argv = _baseline(inputs, out, "--overwrite")
    else:
        argv = ["batch", "--data", _dataset(tmp_path, inputs), "--baseline", "--organ", "kidney", "--out", out,
                "--overwrite"]
    rc, _, err = _run(argv, capsys)
    _expect(rc, err, 2, r"mine: --out is not empty .* never replaced")
    assert _digest(out) == before


def test_phantom_rerun_keeps_the_earlier_cases_in_labels_csv(tmp_path, capsys):
    out = tmp_path / "ds"
    assert _run(["phantom", "--organ", "brain", "--cases", "2", "--seed", "0", "--out", out], capsys)[0] == 0
    first = _digest(out / "brain-00000")
    assert _run(["phantom", "--organ", "brain", "--cases", "2", "--seed", "2", "--out", out], capsys)[0] == 0
    cases = {r.split(",")[0] for r in (out / "labels.csv").read_text().splitlines()[1:]}
    assert cases == {"brain-00000", "brain-00001", "brain-00002", "brain-00003"}
    assert len((out / "reports.csv").read_text().splitlines()) == 5
    assert _digest(out / "brain-00000") == first  # complete cases are resumed, not rewritten
    rc, _, err = _run(["phantom", "--organ", "kidney", "--cases", "2", "--out", out], capsys)
    _expect(rc, err, 2, r"ds: holds the brain phantom case .* one organ")


def test_sweep_write_bundle_into_a_users_folder_is_refused_before_any_map(inputs, tmp_path, capsys):
    data = _dataset(tmp_path, inputs)
    mine = tmp_path / "mine"
    before = _users_folder(mine, ("model.json",))
    rc, _, err = _run(["sweep", "--data", data, "--bundle", DEMO, "--out", tmp_path / "sw", "--write-bundle", mine],
                      capsys)
    _expect(rc, err, 2, r"mine: --write-bundle is not empty \(model\.json\)")
    assert _digest(mine) == before and not (tmp_path / "sw").exists()


def test_train_stage_out_holding_a_users_file_is_refused_before_training(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    mine = tmp_path / "mine"
    before = _users_folder(mine, ("model.json",))
    rc, _, err = _run(["train", "autoencoder", "--organ", "kidney", "--data", data, "--out", mine], capsys)
    _expect(rc, err, 2, r"mine: --out is not empty \(model\.json\)")
    assert _digest(mine) == before and not (tmp_path / "mine.work").exists()


def test_reimporting_a_bundle_asks_and_a_users_folder_is_never_replaced(tmp_path, capsys):
    from DiffusionAnomalyLib.errors import BundleExistsError
    from DiffusionAnomalyLib.models.bundle import import_bundle

    models = tmp_path / "models"
    dest = import_bundle(DEMO, models)
    with pytest.raises(BundleExistsError, match="already installed"):
        import_bundle(DEMO, models)
    (dest / "stale.txt").write_text("from the earlier copy")
    assert import_bundle(DEMO, models, overwrite=True) == dest and not (dest / "stale.txt").exists()
    other = tmp_path / "other"
    before = _users_folder(other / dest.name, ("notes.txt",))
    rc, _, err = _run(["import-bundle", DEMO, "--models-dir", other, "--overwrite"], capsys)
    _expect(rc, err, 2, r"kidney-demo-[0-9.]+: the models folder is not empty \(notes\.txt\)")
    assert _digest(other / dest.name) == before


def test_import_bundle_command(tmp_path, capsys):
    rc, out, err = _run(["import-bundle", DEMO, "--models-dir", tmp_path / "m"], capsys)
    assert rc == 0 and "imported kidney-demo" in out, err
    rc, _, err = _run(["import-bundle", DEMO, "--models-dir", tmp_path / "m"], capsys)
    _expect(rc, err, 2, r"\[bundle_exists\].*already installed; pass --overwrite")
    assert _run(["import-bundle", DEMO, "--models-dir", tmp_path / "m", "--overwrite"], capsys)[0] == 0


# ---- class 2: names that would escape their folder ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../escaped", "/tmp/da-escaped-abs", "a/b", "..", ".hidden", "x\ny"])
def test_a_bundle_name_that_is_not_one_folder_name_is_refused(tmp_path, capsys, name):
    b = _bundle_copy(tmp_path)
    meta = json.loads((b / "model.json").read_text())
    meta["name"] = name
    (b / "model.json").write_text(json.dumps(meta))
    models = tmp_path / "deep" / "er" / "models"
    rc, _, err = _run(["import-bundle", b, "--models-dir", models], capsys)
    _expect(rc, err, 3, r"model\.json: name: .* is not a valid name")
    version = meta["version"]
    assert not (tmp_path / "deep").exists() and not Path(f"/tmp/da-escaped-abs-{version}").exists()
    assert not (tmp_path / f"escaped-{version}").exists()


@pytest.mark.parametrize("option,value", [("--name", "../outside"), ("--name", "/tmp/da-abs"), ("--version", "1/2")])
def test_train_names_are_checked_before_any_work(tmp_path, capsys, option, value):
    data = tmp_path / "data"
    data.mkdir()
    rc, _, err = _run(["train", "all", "--organ", "kidney", "--data", data, "--out", tmp_path / "b", "--dry-run",
                       "--install", tmp_path / "models", option, value], capsys)
    _expect(rc, err, 2, rf"{option}: .* is not a valid name")
    rc, _, err = _run(["train", "autoencoder", "--organ", "kidney", "--data", data, "--out", tmp_path / "c", option,
                       value], capsys)
    _expect(rc, err, 2, rf"{option}: .* is not a valid name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# ---- class 3: accepted but silently wrong ---------------------------------------------------------------------------

def _settings_for(tmp_path: Path, content, inputs) -> object:
    from DiffusionAnomalyLib.api import resolve_settings
    from DiffusionAnomalyLib.app.cli import request_from_argv
    from DiffusionAnomalyLib.models.bundle import read_meta

    f = tmp_path / "settings.json"
    f.write_text(content if isinstance(content, str) else json.dumps(content))
    request = request_from_argv(["run", "--bundle", str(DEMO), "--input", str(inputs["ct"]), "--out",
                                 str(tmp_path / "o"), "--settings", str(f)])
    meta = read_meta(DEMO)
    return resolve_settings(request, meta.recommended, meta.preset()), meta.recommended


def test_a_partial_settings_file_keeps_the_bundles_recommendations(inputs, tmp_path):
    s, rec = _settings_for(tmp_path, {"steps": 3, "samples": 1}, inputs)
    assert (s.steps, s.samples) == (3, 1)
    assert (s.noise_level, s.guidance, s.threshold) == (rec["noise_level"], rec["guidance"], rec["threshold"])
    assert s.min_lesion_ml == rec.get("min_lesion_ml", 0.0) and s.grow_to == rec.get("grow_to", 1.0)


@pytest.mark.parametrize("content,pattern", [
    ({"deterministic": "false"}, r"deterministic must be true or false \(got \"false\"\)"),
    ({"samples": True}, r"samples must be a whole number \(got true\)"),
    ({"steps": 2.5}, r"steps must be a whole number \(got 2\.5\)"),
    ({"guidance": "100"}, r"guidance must be a number \(got \"100\"\)"),
    ({"sampler": 1}, r"sampler must be a string"),
    ({"stepz": 3}, r"unknown run setting\(s\) \['stepz'\]"),
])
def test_settings_file_values_are_never_coerced(inputs, tmp_path, content, pattern):
    from DiffusionAnomalyLib.errors import InputError

    with pytest.raises(InputError, match=r"settings\.json: " + pattern):
        _settings_for(tmp_path, content, inputs)


def test_a_run_json_of_another_organ_is_refused(inputs, tmp_path):
    from DiffusionAnomalyLib.errors import InputError

    run = {"version": "x", "inputs": {}, "preset": {"name": "liver"}, "parameters": {"settings": {"steps": 5}}}
    with pytest.raises(InputError, match=r"settings\.json: the run\.json of a liver run; the bundle is for the kidney"):
        _settings_for(tmp_path, run, inputs)


def test_threshold_zero_follows_one_rule_on_the_command_line_and_in_a_file(inputs, tmp_path):
    from DiffusionAnomalyLib.app.cli import build_parser

    s, _ = _settings_for(tmp_path, {"threshold": 0}, inputs)
    assert s.threshold == 0.0
    args = build_parser().parse_args(["run", "--input", "x", "--out", "y", "--threshold", "0"])
    assert args.threshold == 0.0


def _nifti_with(tmp_path: Path, name: str, spacing=SPACING, pixdim=None, value=None) -> Path:
    rng = np.random.default_rng(1)
    a = rng.normal(40, 10, SHAPE).astype(np.float32) if value is None else np.full(SHAPE, value, np.float32)
    p = tmp_path / name
    sitk.WriteImage(make_image(a, spacing), str(p), False)
    if pixdim is not None:
        b = bytearray(p.read_bytes())
        b[80:92] = np.array(pixdim, "<f4").tobytes()
        p.write_bytes(bytes(b))
    return p


def test_a_nifti_with_pixdim_zero_is_not_read_as_1_mm(inputs, tmp_path, capsys):
    ct = _nifti_with(tmp_path, "p0.nii", pixdim=(2.5, 0, 2.5))
    rc, _, err = _run(_baseline({**inputs, "ct": ct}, tmp_path / "out"), capsys)
    _expect(rc, err, 2, r"p0\.nii: invalid NIfTI header: voxel size pixdim\[2\] is 0")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spacing", [(1e30, 1e30, 1e30), (2.5, 2.5, 500.0), (1e-6, 1e-6, 1e-6)])
def test_an_implausible_spacing_is_refused(tmp_path, capsys, spacing):
    ct = tmp_path / "far.nrrd"
    sitk.WriteImage(make_image(np.random.default_rng(0).normal(40, 10, SHAPE).astype(np.float32), spacing), str(ct))
    mask = tmp_path / "farmask.nrrd"
    sitk.WriteImage(make_image(_kidneys(), spacing), str(mask))
    rc, out, err = _run(["baseline", "--organ", "kidney", "--input", ct, "--mask", mask, "--out", tmp_path / "o"],
                        capsys)
    _expect(rc, err, 2, r"far\.nrrd: voxel spacing .* mm is outside 0\.001\.\.100 mm")
    assert "No lesions found" not in out and not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", [0.0, 40.0])
def test_a_blank_image_is_refused_not_given_lesions(inputs, tmp_path, capsys, value):
    ct = _nifti_with(tmp_path, "blank.nii", value=value)
    rc, _, err = _run(_baseline({**inputs, "ct": ct}, tmp_path / "out"), capsys)
    _expect(rc, err, 2, rf"blank\.nii: the ct image is constant inside the kidney mask \(every voxel {value:g}\)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option,value", [("--cases", "0"), ("--cases", "-3"), ("--lesions", "-1"),
                                          ("--seed", "-1"), ("--cases", "1000000")])
def test_phantom_counts_out_of_range_are_refused(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exc:
        main(["phantom", "--organ", "kidney", "--out", str(tmp_path / "ph"), f"{option}={value}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument {option}" in err, err
    assert not (tmp_path / "ph").exists()


# ---- class 4: bad input is never an internal error (exit 1) ---------------------------------------------------------

@pytest.mark.parametrize("content,pattern", [
    ('{"seed": ' + "9" * 5000 + "}", r"settings file cannot be read \(Exceeds the limit"),
    ("[" * 5000 + "]" * 5000, r"settings file is nested deeper than 32 levels"),
    ('{"samples": 1e300}', r"samples must be a whole number \(got 1e\+300\)"),
    ('{"samples": 100000}', r"samples must be in 1\.\.64 \(got 100000\)"),
    ('{"seed": -5}', r"seed must be in 0\.\.2\^63-1 \(got -5\)"),
    ('{"noise_level": NaN}', r"noise_level must be a whole number \(got NaN\)"),
])
def test_hostile_settings_files_exit_2(inputs, tmp_path, capsys, content, pattern):
    f = tmp_path / "s.json"
    f.write_text(content)
    rc, _, err = _run_bundle(inputs, DEMO, tmp_path, capsys, "--settings", f)
    _expect(rc, err, 2, r"s\.json.*" + pattern)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ['[1, 2]', '{"bundles": {"name": 1}}', '{"bundles": [7]}', "{" * 100])
def test_a_malformed_manifest_from_the_environment_exits_3(inputs, tmp_path, capsys, monkeypatch, content):
    m = tmp_path / "manifest.json"
    m.write_text(content)
    monkeypatch.setenv("DA_BUNDLE_MANIFEST", str(m))
    rc, _, err = _run_bundle(inputs, DEMO, tmp_path, capsys)
    _expect(rc, err, 3, r"manifest\.json: (the )?bundle manifest is (not valid|nested deeper)")


@pytest.mark.parametrize("setup,pattern", [
    (lambda m: (m.mkdir(), (m / "manifest.json").write_text("{not json")), r"manifest\.json: bundle manifest is not"),
    (lambda m: (m.mkdir(), (m / "kidney-model").mkdir(), (m / "kidney-model" / "x.txt").write_text("mine")),
     r"kidney-model: --install \(kidney-model/\) is not empty \(x\.txt\)"),
    (lambda m: m.write_text("a file"), r"models: --install is a file"),
])
def test_train_all_checks_install_before_training(tmp_path, capsys, setup, pattern):
    data = tmp_path / "data"
    data.mkdir()
    setup(tmp_path / "models")
    rc, _, err = _run(["train", "all", "--organ", "kidney", "--data", data, "--out", tmp_path / "b", "--dry-run",
                       "--install", tmp_path / "models"], capsys)
    assert rc in (2, 3)
    _expect(rc, err, rc, pattern)
    assert not (tmp_path / "b.work").exists()


def test_batch_on_an_empty_folder_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = _run(["batch", "--data", tmp_path / "empty", "--baseline", "--organ", "kidney", "--out",
                       tmp_path / "o"], capsys)
    _expect(rc, err, 2, r"empty: no case folders")


def test_batch_with_a_failed_case_exits_2_and_names_it(inputs, tmp_path, capsys):
    data = _dataset(tmp_path, inputs)
    shutil.copytree(data / "case1", data / "case2")
    (data / "case2" / "ct.nii.gz").write_bytes(inputs["trunc"].read_bytes())
    rc, out, err = _run(["batch", "--data", data, "--baseline", "--organ", "kidney", "--out", tmp_path / "o"], capsys)
    _expect(rc, err, 2, r"1 of 2 case\(s\) failed \(case2: .*truncated")
    assert (tmp_path / "o" / "case1" / "run.json").is_file()


# ---- class 5: messages that say what happened ------------------------------------------------------------------------

def test_a_truncated_safetensors_file_is_not_called_a_pickle(tmp_path):
    import struct

    from DiffusionAnomalyLib.models.bundle import BundleError, load_weights

    f = tmp_path / "w.safetensors"
    f.write_bytes(struct.pack("<Q", 0x280) + b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}')
    with pytest.raises(BundleError, match=r"the safetensors file is truncated \(69 bytes; its header alone needs 648"):
        load_weights(None, f)
    f.write_bytes(b"\x80\x04" + b"\x95" * 40)
    with pytest.raises(BundleError, match="a pickle"):
        load_weights(None, f)


def test_the_shear_message_gives_the_angle_of_the_sheared_axes(inputs, tmp_path, capsys):
    rc, _, err = _run(_baseline(inputs, tmp_path / "out", image="shear_nrrd", mask="shear_mask"), capsys)
    _expect(rc, err, 2, r"axes sheared: 73\.30 degrees between two of them instead of 90")


def test_an_error_in_a_zipped_bundle_names_the_zip(inputs, tmp_path, capsys):
    b = _bundle_copy(tmp_path)
    meta = json.loads((b / "model.json").read_text())
    meta["name"] = "../bad"
    (b / "model.json").write_text(json.dumps(meta))
    z = tmp_path / "bundle.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in b.iterdir():
            zf.write(f, f"kidney-demo/{f.name}")
    rc, _, err = _run_bundle(inputs, z, tmp_path, capsys)
    _expect(rc, err, 3, r"bundle\.zip \(in the archive\)/kidney-demo/model\.json: name")
    assert "da-bundle-" not in err


_LIMITED = """
import resource, sys
kind, limit = sys.argv[1], sys.argv[2]
from DiffusionAnomalyLib.app.cli import main
import numpy, scipy.ndimage, skimage.measure, SimpleITK, matplotlib.pyplot  # loaded before the limit
numpy.ones((256, 256)) @ numpy.ones((256, 256))  # OpenBLAS allocates its buffers on first use and aborts the
# process (no MemoryError) when that fails: warm it up, as any earlier run of the process would have
if limit.startswith("+"):  # headroom above the address space in use now
    vm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmSize:")) * 1024
    limit = vm + int(limit[1:])
resource.setrlimit(getattr(resource, kind), (int(limit), int(limit)))
sys.exit(main(sys.argv[3:]))
"""


def test_a_full_disk_is_reported_in_one_clear_line(inputs, tmp_path):
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-c", _LIMITED, "RLIMIT_FSIZE", str(20_000),
                        *map(str, _baseline(inputs, out))], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert re.search(r"error \[output_not_writable\]: .*(could not write|cannot write).*(File too large|file-size)",
                     p.stderr), p.stderr[-2000:]
    assert ".cxx" not in p.stderr and "itk::" not in p.stderr and "Traceback" not in p.stderr
    assert not out.exists() or not any(out.iterdir())


def test_out_of_memory_on_the_command_line_exits_4(inputs, tmp_path):
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-c", _LIMITED, "RLIMIT_AS", "+" + str(2_000_000),
                        *map(str, _baseline(inputs, out))], capture_output=True, text=True, timeout=300)
    assert p.returncode == 4, p.stderr[-2000:]
    assert re.search(r"^error \[out_of_memory\]: out of memory \(", p.stderr, re.M) and "Traceback" not in p.stderr
    assert not out.exists() or not any(out.iterdir())


# ---- class 6: nothing blocks, nothing unbounded ----------------------------------------------------------------------

def test_a_fifo_as_settings_or_image_is_refused_not_waited_on(inputs, tmp_path):
    fifo = tmp_path / "settings.json"
    os.mkfifo(fifo)
    img = tmp_path / "ct.nii.gz"
    os.mkfifo(img)
    for argv, pattern in (
            (["run", "--bundle", DEMO, "--input", inputs["ct"], "--mask", inputs["mask"], "--settings", fifo],
             r"settings\.json: settings file is a named pipe \(FIFO\)"),
            (["baseline", "--organ", "kidney", "--input", img, "--mask", inputs["mask"]],
             r"ct\.nii\.gz: the image is a named pipe \(FIFO\)")):
        p = subprocess.run([sys.executable, "-m", "DiffusionAnomalyLib.app.cli", *map(str, argv), "--out",
                            str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and re.search(pattern, p.stderr), p.stderr[-2000:]


@pytest.mark.parametrize("option,value,pattern", [
    ("--resample-jumps", "100000", r"resample jumps must be in 1\.\.20 \(got 100000\)"),
    ("--median-filter", "999", r"the median filter \(voxels\) must be in 0\.\.15 \(got 999\)"),
    ("--samples", "1000", r"samples must be in 1\.\.64 \(got 1000\)"),
])
def test_work_multipliers_are_bounded(inputs, tmp_path, capsys, option, value, pattern):
    rc, _, err = _run_bundle(inputs, DEMO, tmp_path, capsys, "--sampler", "inpaint", option, value)
    assert rc == 2 and re.search(f"argument {option}: {pattern}", err) and "Traceback" not in err, err  # parser
    assert not (tmp_path / "out").exists()


# ---- class 7: nothing left behind ------------------------------------------------------------------------------------

def test_a_failed_evaluate_leaves_no_empty_maps_folder(inputs, tmp_path, capsys, monkeypatch):
    data = _dataset(tmp_path, inputs)

    def boom(self, x, mask, spacing):
        raise MemoryError("simulated")

    monkeypatch.setattr("DiffusionAnomalyLib.detection.baseline.MedianBaseline.reconstruct", boom)
    rc, _, err = _run(["evaluate", "--data", data, "--baseline", "--organ", "kidney", "--out", tmp_path / "ev"], capsys)
    _expect(rc, err, 4, r"out of memory \(MemoryError: simulated\)")
    assert not (tmp_path / "ev").exists()
