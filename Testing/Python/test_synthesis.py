"""``synthesize`` (issue 38): lesions inserted with exact truth, the scan unchanged outside the blended region, the
lesion really there, reproducible from its record, and every bad input refused with exit 2 and nothing written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image
from scipy import ndimage

from DiffusionAnomalyLib.app.cli import main
from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.imaging.io import write_volume
from DiffusionAnomalyLib.synthesis.options import KINDS, SHAPES, SynthesisOptions
from DiffusionAnomalyLib.synthesis.paste import partial_volume_sigma
from DiffusionAnomalyLib.synthesis.synthesize import SynthesisRequest, synthesize
from DiffusionAnomalyLib.synthetic.base import KINDS_CT, VARIED_SHAPES


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Path:
    """A kidney phantom without lesions (the scan a lesion goes into)."""
    from DiffusionAnomalyLib.synthetic.phantoms import make_phantom, write_phantom

    return write_phantom(make_phantom("kidney", seed=5, n_lesions=0), tmp_path_factory.mktemp("healthy") / "case")


def _digests(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _arr(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _request(case: Path, out: Path, **options) -> SynthesisRequest:
    return SynthesisRequest(images=(str(case / "ct.nii.gz"),), organ="kidney", out=str(out),
                            totalseg=str(case / "segmentations"), options=SynthesisOptions(**options))


def _moved_half_way(le: dict) -> bool:
    """The stated margin: inside the map the mean moved at least half-way from the input's toward the target."""
    before, after, target = le["before_mean"][0], le["after_mean"][0], le["target_level"][0]
    return (after - before) / (target - before) >= 0.5


def test_the_constants_name_the_phantoms_shapes_and_classes():
    assert SHAPES[1:] == VARIED_SHAPES and KINDS["CT"] == KINDS_CT


def test_the_scan_changes_only_inside_the_blended_region_and_the_lesion_is_there(healthy, tmp_path):
    before = _digests(healthy)
    found = synthesize(_request(healthy, tmp_path / "syn", shape="sphere", diameter_mm=20, kind="hypo", count=2))
    assert _digests(healthy) == before  # the inputs are read, never written
    source = sitk.ReadImage(str(healthy / "ct.nii.gz"))
    x = sitk.GetArrayFromImage(source)
    assert len(found.cases) == 2 and {c.name for c in found.cases} == {"ct-paste-0", "ct-paste-1"}
    for case, record in zip(found.cases, found.records, strict=True):
        image = sitk.ReadImage(str(case / "ct.nii.gz"))
        assert image.GetPixelID() == source.GetPixelID() and image.GetSize() == source.GetSize()
        assert image.GetSpacing() == source.GetSpacing() and image.GetOrigin() == source.GetOrigin()
        assert image.GetDirection() == source.GetDirection()
        y = sitk.GetArrayFromImage(image)
        labels = _arr(case / "lesions.nii.gz")
        assert labels.shape == x.shape and set(np.unique(labels)) == {0, 1}
        # voxel by voxel: everything beyond the partial-volume kernel's reach of the lesion is the input's
        reach = [int(np.ceil(4 * max(*partial_volume_sigma(source.GetSpacing()), 1.0))) + 1] * 3
        near = ndimage.binary_dilation(labels > 0, np.ones([2 * r + 1 for r in reach], bool))
        assert np.array_equal(y[~near], x[~near])
        changed = int((y != x).sum())
        assert 0 < changed <= record["blended_voxels"]
        assert y.min() >= x.min() and y.max() <= x.max()
        le = record["lesions"][0]
        assert le["kind"] == "hypo" and record["shape"] == "sphere" and record["diameter_mm"] == 20
        assert le["target_level"][0] < le["organ_level"][0] - 50  # an enhanced phantom: hypo is 55-100 HU below
        assert _moved_half_way(le), le
        assert abs(le["core_mean"][0] - le["target_level"][0]) < 0.3 * abs(le["target_level"][0] - le["before_mean"][0])
        # 20 mm sphere: about (4/3) pi 10^3 mm^3, cut to the organ
        assert 1.5 < le["volume_ml"] <= 4.3 and le["structure"].startswith("kidney_")
        seg = case / "segmentations"
        assert {p.name for p in seg.iterdir()} == {"kidney_left.nii.gz", "kidney_right.nii.gz"}
        assert (labels > 0).sum() == (labels.astype(bool) & (_arr(seg / f"{le['structure']}.nii.gz") > 0)).sum()
        assert record["command"][:2] == ["diffusion-anomaly", "synthesize"] and "--seed" in record["command"]
        assert all(i["sha256"] for i in record["inputs"])
    rows = (tmp_path / "syn" / "synthesis.csv").read_text().splitlines()
    assert rows[0].startswith("case,seed,lesion,structure,kind,shape") and len(rows) == 3


@pytest.mark.parametrize("kind", ["cyst", "hyper"])
def test_each_class_moves_the_intensity_its_way(healthy, tmp_path, kind):
    found = synthesize(_request(healthy, tmp_path / "syn", shape="ellipsoid", diameter_mm=25, kind=kind, seed=3))
    le = found.records[0]["lesions"][0]
    assert _moved_half_way(le), le
    assert (le["after_mean"][0] > le["before_mean"][0]) == (kind == "hyper")


def test_the_same_seed_writes_the_same_case_and_another_seed_another(healthy, tmp_path):
    a = synthesize(_request(healthy, tmp_path / "a", seed=11))
    b = synthesize(_request(healthy, tmp_path / "b", seed=11))
    c = synthesize(_request(healthy, tmp_path / "c", seed=12))
    ya, yb, yc = (_arr(r.cases[0] / "ct.nii.gz") for r in (a, b, c))
    assert np.array_equal(ya, yb) and not np.array_equal(ya, yc)
    ra, rb = dict(a.records[0]), dict(b.records[0])
    assert ra.pop("inputs") == rb.pop("inputs") and ra == rb
    assert ra["shape"] in SHAPES and 5 <= ra["diameter_mm"] <= 80


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_of_the_library_is_placed_inside_the_organ(healthy, tmp_path, shape):
    found = synthesize(_request(healthy, tmp_path / "syn", shape=shape, diameter_mm=18, seed=1))
    labels = _arr(found.cases[0] / "lesions.nii.gz") > 0
    organ = np.zeros_like(labels)
    for f in (healthy / "segmentations").glob("kidney_*.nii.gz"):
        organ |= _arr(f) > 0
    assert labels.any() and not (labels & ~organ).any()
    assert found.records[0]["shape"] == shape


def test_a_lesion_map_is_inserted_where_it_is(healthy, tmp_path):
    kidney = _arr(healthy / "segmentations" / "kidney_left.nii.gz") > 0
    depth = ndimage.distance_transform_edt(kidney)
    z, y, x = np.unravel_index(np.argmax(depth), depth.shape)
    lesion = np.zeros(kidney.shape, np.uint8)
    lesion[z - 2:z + 3, y - 3:y + 4, x - 3:x + 4] = 7  # any nonzero value is lesion
    ref = sitk.ReadImage(str(healthy / "ct.nii.gz"))
    painted = write_volume(make_image(lesion, ref.GetSpacing(), ref.GetOrigin(), ref.GetDirection()),
                           tmp_path / "painted.nii.gz")
    found = synthesize(SynthesisRequest(images=(str(healthy / "ct.nii.gz"),), organ="kidney", out=str(tmp_path / "s"),
                                        totalseg=str(healthy / "segmentations"), lesion_map=str(painted),
                                        options=SynthesisOptions(kind="hypo", count=3)))
    for case in found.cases:
        assert np.array_equal(_arr(case / "lesions.nii.gz"), (lesion > 0).astype(np.uint16))
    record = found.records[0]
    assert "shape" not in record and record["lesions"][0]["structure"] == "kidney_left"
    assert record["lesions"][0]["voxels"] == int((lesion > 0).sum())


def test_the_output_is_a_dataset_that_evaluate_reads(healthy, tmp_path):
    from DiffusionAnomalyLib.detection.presets import get_preset
    from DiffusionAnomalyLib.evaluation.datasets import discover_cases, reference_lesions

    synthesize(_request(healthy, tmp_path / "syn", count=2, diameter_mm=15))
    cases = discover_cases(tmp_path / "syn", get_preset("kidney"))
    assert [c.layout for c in cases] == ["phantom", "phantom"] and not any(c.problems for c in cases)
    labels, _ = reference_lesions(cases[0], sitk.ReadImage(str(cases[0].inputs[0])))
    assert labels.max() == 1


def test_the_cli_writes_reruns_and_overwrites(healthy, tmp_path, capsys):
    argv = ["synthesize", "--organ", "kidney", "--input", str(healthy / "ct.nii.gz"), "--totalseg",
            str(healthy / "segmentations"), "--out", str(tmp_path / "o"), "--count", "2", "--kind", "cyst"]
    assert main(argv) == 0
    assert "Synthetic lesions are not real lesions" in capsys.readouterr().out
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*argv[:-4], "--count", "1", "--seed", "5", "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["ct-paste-5", "synthesis.csv"]


def test_a_brain_mass_on_a_skull_stripped_scan(tmp_path):
    from DiffusionAnomalyLib.synthetic.phantoms import make_phantom, write_phantom

    case = write_phantom(make_phantom("brain", seed=2, n_lesions=0), tmp_path / "brain")
    images = tuple(str(case / f"{c}.nii.gz") for c in ("t1n", "t1c", "t2w", "t2f"))
    found = synthesize(SynthesisRequest(images=images, organ="brain", out=str(tmp_path / "s"), skull_stripped=True,
                                        options=SynthesisOptions(shape="sphere", diameter_mm=25)))
    le = found.records[0]["lesions"][0]
    assert le["kind"] == "mass" and len(le["target_level"]) == 4
    assert le["after_mean"][0] < le["before_mean"][0] and le["after_mean"][3] > le["before_mean"][3]  # T1 dark, FLAIR
    assert not (found.cases[0] / "segmentations").exists()  # skull-stripped: the mask is the nonzero voxels


def test_real_anatomy_totalsegmentators_example_ct(shared_data, tmp_path):
    ts = shared_data / "totalsegmentator_examples"
    for organ in ("kidney", "liver"):
        found = synthesize(SynthesisRequest(images=(str(ts / "example_ct_sm.nii.gz"),), organ=organ,
                                            out=str(tmp_path / organ), totalseg=str(ts / "example_seg.nii.gz"),
                                            options=SynthesisOptions(shape="sphere", diameter_mm=20, kind="hypo")))
        x, y = _arr(ts / "example_ct_sm.nii.gz"), _arr(found.cases[0] / "ct.nii.gz")
        labels = _arr(found.cases[0] / "lesions.nii.gz")
        near = ndimage.binary_dilation(labels > 0, iterations=6)
        assert np.array_equal(y[~near], x[~near]) and y.dtype == x.dtype
        le = found.records[0]["lesions"][0]
        # this crop's organs are barely enhanced (kidney median about 15 HU): the non-contrast difference, -12 HU
        assert le["target_level"][0] == pytest.approx(le["organ_level"][0] - 12.0)
        assert le["after_mean"][0] < le["before_mean"][0]


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: exit 2, one line naming the file or option and the problem, nothing written, inputs unchanged.
# ---------------------------------------------------------------------------------------------------------------

def _bad(healthy: Path, tmp_path: Path, capsys, more: list[str], pattern: str) -> None:
    before = _digests(healthy)
    out = tmp_path / "out"
    try:
        rc = main(["synthesize", "--organ", "kidney", "--input", str(healthy / "ct.nii.gz"), "--totalseg",
                   str(healthy / "segmentations"), "--out", str(out), *more])
    except SystemExit as exc:  # argparse: an option outside its declared range
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert pattern in err.strip().splitlines()[-1], err  # one line (after argparse's usage, for a parser error)
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
    assert _digests(healthy) == before


@pytest.mark.parametrize("more,pattern", [
    (["--diameter-mm", "0"], "--diameter-mm"), (["--diameter-mm", "nan"], "--diameter-mm"),
    (["--diameter-mm", "200"], "--diameter-mm"), (["--count", "0"], "--count"), (["--count", "1001"], "--count"),
    (["--seed", "-1"], "--seed"), (["--shape", "star"], "--shape"), (["--method", "diffusion"], "--method"),
    (["--kind", "mass"], "the kidney (CT) takes hypo, hyper, iso, cyst"),
    (["--structure", "liver"], "the kidney has kidney_right, kidney_left"),
    (["--seed", str(2**63 - 1), "--count", "2"], "would pass 2^63-1"),
    (["--diameter-mm", "80", "--shape", "sphere"], "does not fit inside the organ mask"),
])
def test_nonsense_options_are_refused(healthy, tmp_path, capsys, more, pattern):
    _bad(healthy, tmp_path, capsys, more, pattern)


def test_lesion_map_problems_are_refused(healthy, tmp_path, capsys):
    ref = sitk.ReadImage(str(healthy / "ct.nii.gz"))
    shape = sitk.GetArrayViewFromImage(ref).shape
    empty = write_volume(make_image(np.zeros(shape, np.uint8), ref.GetSpacing(), ref.GetOrigin()),
                         tmp_path / "empty.nii.gz")
    _bad(healthy, tmp_path, capsys, ["--lesion-map", str(empty)], f"{empty}: the lesion map is empty")
    other = write_volume(make_image(np.ones((4, 4, 4), np.uint8)), tmp_path / "other.nii.gz")
    _bad(healthy, tmp_path, capsys, ["--lesion-map", str(other)], str(other))
    outside = np.zeros(shape, np.uint8)
    outside[:3, :3, :3] = 1  # a corner of air
    corner = write_volume(make_image(outside, ref.GetSpacing(), ref.GetOrigin()), tmp_path / "corner.nii.gz")
    _bad(healthy, tmp_path, capsys, ["--lesion-map", str(corner)], "lie wholly outside the kidney mask")
    _bad(healthy, tmp_path, capsys, ["--lesion-map", str(corner), "--shape", "sphere"], "--shape")
    missing = str(tmp_path / "missing.nii.gz")
    _bad(healthy, tmp_path, capsys, ["--lesion-map", missing], "missing.nii.gz: file not found")
    # the hostile rerun of issue 38: a map that is the scan, the whole kidney, or mostly outside it
    _bad(healthy, tmp_path, capsys, ["--lesion-map", str(healthy / "ct.nii.gz")], "lies mostly outside the kidney")
    whole = healthy / "segmentations" / "kidney_left.nii.gz"
    _bad(healthy, tmp_path, capsys, ["--lesion-map", str(whole)], "covers 100 % of kidney_left (at most 50 %)")
    kidney = _arr(whole) > 0
    mostly = ndimage.binary_dilation(kidney & (ndimage.distance_transform_edt(kidney) < 2), iterations=4) & ~kidney
    mostly[tuple(np.argwhere(kidney)[0])] = True  # one voxel inside, touching the shell
    shell = write_volume(make_image(mostly.astype(np.uint8), ref.GetSpacing(), ref.GetOrigin()), tmp_path / "s.nii.gz")
    _bad(healthy, tmp_path, capsys, ["--lesion-map", str(shell)], "lies mostly outside the kidney mask")
    _bad(healthy, tmp_path, capsys, ["--lesion-map", ""], "--lesion-map: an empty path")


def test_a_map_partly_outside_the_organ_is_cut_to_it(healthy, tmp_path):
    """The truth never lies outside the organ mask detection uses: a painted region is cut to the organ."""
    kidney = _arr(healthy / "segmentations" / "kidney_left.nii.gz") > 0
    depth = ndimage.distance_transform_edt(kidney)
    edge = np.argwhere((depth > 2.5) & (depth <= 3.5))[0]
    ball = np.zeros(kidney.shape, bool)
    ball[tuple(slice(max(c - 4, 0), c + 5) for c in edge)] = True
    assert (ball & kidney).sum() >= 0.5 * ball.sum() and (ball & ~kidney).any()
    ref = sitk.ReadImage(str(healthy / "ct.nii.gz"))
    painted = write_volume(make_image(ball.astype(np.uint8), ref.GetSpacing(), ref.GetOrigin(), ref.GetDirection()),
                           tmp_path / "painted.nii.gz")
    found = synthesize(SynthesisRequest(images=(str(healthy / "ct.nii.gz"),), organ="kidney", out=str(tmp_path / "s"),
                                        totalseg=str(healthy / "segmentations"), lesion_map=str(painted)))
    truth = _arr(found.cases[0] / "lesions.nii.gz") > 0
    assert truth.any() and not (truth & ~kidney).any() and truth.sum() == (ball & kidney).sum()


def test_a_scan_of_the_wrong_modality_or_a_kidney_without_its_mask_is_refused(healthy, tmp_path, capsys):
    rc = main(["synthesize", "--organ", "kidney", "--input", str(healthy / "ct.nii.gz"), "--skull-stripped", "--out",
               str(tmp_path / "o")])
    assert rc == 2 and "--skull-stripped is for a skull-stripped brain" in capsys.readouterr().err
    mr = sitk.Cast(sitk.ReadImage(str(healthy / "ct.nii.gz")), sitk.sitkFloat32) + 1100.0  # no voxel below -200
    scan = write_volume(mr, tmp_path / "mr.nii.gz")
    rc = main(["synthesize", "--organ", "kidney", "--input", str(scan), "--totalseg", str(healthy / "segmentations"),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "does not look like CT in Hounsfield units" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_out_inside_the_input_folder_is_refused(healthy, capsys):
    rc = main(["synthesize", "--organ", "kidney", "--input", str(healthy / "ct.nii.gz"), "--totalseg",
               str(healthy / "segmentations"), "--out", str(healthy / "segmentations" / "syn")])
    assert rc == 2 and "inside the input folder" in capsys.readouterr().err
    assert not (healthy / "segmentations" / "syn").exists()


# ---------------------------------------------------------------------------------------------------------------
# Realism statistics (evaluation/realism.py)
# ---------------------------------------------------------------------------------------------------------------

def test_lesion_features_and_crop_of_a_dark_lesion():
    from DiffusionAnomalyLib.evaluation.realism import CROP_VOXELS, FEATURES, SCALE, lesion_sample

    rng = np.random.default_rng(0)
    image = rng.normal(150, 10, (40, 40, 40)).astype(np.float32)
    zz, yy, xx = np.mgrid[:40, :40, :40]
    lesion = (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 < 36
    image[lesion] -= 80
    sample = lesion_sample(image, lesion, np.ones_like(lesion), make_image(image, (1.5, 1.5, 2.0)))
    f = dict(zip(FEATURES, sample.features, strict=True))
    assert f["contrast"] == pytest.approx(-80 / SCALE, abs=0.05) and f["edge"] > 0
    assert sample.crop.shape == (CROP_VOXELS,) * 3
    assert sample.crop[CROP_VOXELS // 2, CROP_VOXELS // 2, CROP_VOXELS // 2] < -0.5  # the dark centre, in SCALE units


def test_frechet_distance_is_zero_for_one_distribution_and_grows_with_a_shift():
    from DiffusionAnomalyLib.evaluation.realism import frechet_distance

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(400, 5)), rng.normal(size=(400, 5))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) < 0.2 < 2.0 < frechet_distance(a, b + 1.0)


def test_the_classifier_tells_different_crops_apart_and_not_identical_ones():
    from DiffusionAnomalyLib.evaluation.realism import classifier_auroc

    rng = np.random.default_rng(2)
    ref = rng.normal(size=(40, 12, 12, 12)).astype(np.float32)
    same = rng.normal(size=(40, 12, 12, 12)).astype(np.float32)
    bright = same.copy()
    bright[:, 4:8, 4:8, 4:8] += 1.5
    import torch

    threads = torch.get_num_threads()
    assert classifier_auroc(ref, bright, iterations=80) > 0.9
    assert 0.25 < classifier_auroc(ref, same, iterations=80) < 0.75
    assert torch.get_num_threads() == threads  # it trains on one thread and gives the caller's count back


# ---------------------------------------------------------------------------------------------------------------
# evaluate --insert N (evaluation/insertion.py)
# ---------------------------------------------------------------------------------------------------------------

def test_evaluate_scores_lesions_inserted_into_healthy_cases(healthy, tmp_path, capsys):
    import json

    hosts = tmp_path / "hosts"
    hosts.mkdir()
    (hosts / "a").symlink_to(healthy, target_is_directory=True)
    before = _digests(healthy)
    argv = ["evaluate", "--data", str(hosts), "--baseline", "--organ", "kidney", "--insert", "2", "--insert-seed",
            "40", "--bootstrap", "20", "--out", str(tmp_path / "ev")]
    assert main(argv) == 0
    assert _digests(healthy) == before
    inserted = sorted(p.name for p in (tmp_path / "ev" / "inserted").iterdir())
    assert inserted == ["a-ct-paste-40", "a-ct-paste-41"]
    summary = json.loads((tmp_path / "ev" / "report" / "summary.json").read_text())
    assert summary["summary"]["reference_lesions"] == 2 and summary["summary"]["cases"] == 2
    assert "inserted lesions" in (tmp_path / "ev" / "report" / "summary.md").read_text()
    assert main(argv) == 0  # a rerun resumes: the variants are kept, not drawn again
    assert sorted(p.name for p in (tmp_path / "ev" / "inserted").iterdir()) == inserted


def test_evaluate_insert_refuses_a_host_with_lesions_and_meaningless_options(tmp_path, capsys):
    from DiffusionAnomalyLib.evaluation.commands import EvaluateRequest
    from DiffusionAnomalyLib.synthetic.phantoms import make_phantom, write_phantom

    sick = tmp_path / "sick"
    write_phantom(make_phantom("kidney", seed=3, n_lesions=1), sick / "c")
    rc = main(["evaluate", "--data", str(sick), "--baseline", "--organ", "kidney", "--insert", "1", "--out",
               str(tmp_path / "ev")])
    assert rc == 2 and "--insert takes healthy scans" in capsys.readouterr().err
    with pytest.raises(InputError, match="needs --insert-bundle"):
        EvaluateRequest(data="d", out="o", baseline=True, organ="kidney", insert=1, insert_method="diffusion")
    with pytest.raises(InputError, match="apply with --insert N only"):
        EvaluateRequest(data="d", out="o", baseline=True, organ="kidney", insert_seed=3)
