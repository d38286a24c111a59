"""evaluate / sweep / batch / bench on small phantom datasets, through the real command line."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO
from scipy import ndimage

from DiffusionAnomalyLib.app.cli import main
from DiffusionAnomalyLib.detection.presets import get_preset
from DiffusionAnomalyLib.evaluation.datasets import discover_cases
from DiffusionAnomalyLib.evaluation.evaluate import score_dataset
from DiffusionAnomalyLib.evaluation.report import markdown_summary


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three kidney phantoms plus four problem cases (no labels, KiTS labels with a value 7, a label on
    another grid, a folder with no image)."""
    from DiffusionAnomalyLib.synthetic.phantoms import write_dataset

    root = tmp_path_factory.mktemp("eval") / "data"
    write_dataset("kidney", root, [11, 12, 13], n_lesions=2)
    shutil.copytree(root / "kidney-00011", root / "nolabels")
    (root / "nolabels" / "lesions.nii.gz").unlink()
    shutil.copytree(root / "kidney-00012", root / "othergrid")
    lab = sitk.ReadImage(str(root / "othergrid" / "lesions.nii.gz"))
    lab.SetSpacing([s * 2 for s in lab.GetSpacing()])
    sitk.WriteImage(lab, str(root / "othergrid" / "lesions.nii.gz"))
    kits = root / "kits-weird"
    kits.mkdir()
    shutil.copy(root / "kidney-00013" / "ct.nii.gz", kits / "imaging.nii.gz")
    seg = sitk.ReadImage(str(root / "kidney-00013" / "segmentations" / "kidney_left.nii.gz"))
    arr = sitk.GetArrayFromImage(seg).astype(np.uint8)
    arr[arr > 0] = 1
    arr[0, 0, 0] = 7
    weird = sitk.GetImageFromArray(arr)
    weird.CopyInformation(seg)
    sitk.WriteImage(weird, str(kits / "segmentation.nii.gz"))
    (root / "empty-folder").mkdir()
    return root


def test_cases_are_found_in_each_layout_and_problems_named(dataset):
    cases = {c.case_id: c for c in discover_cases(dataset, get_preset("kidney"))}
    assert cases["kidney-00011"].layout == "phantom" and not cases["kidney-00011"].problems
    assert cases["kits-weird"].layout == "kits" and cases["kits-weird"].organ_from_labels
    assert cases["nolabels"].problems == ["no reference labels"]
    assert "no image in a known layout" in cases["empty-folder"].problems[0]


def test_scoring_a_perfect_map_gives_perfect_figures(dataset, tmp_path):
    # maps that are exactly the reference lesions: Dice 1, all found, no false positives, AUROC 1
    cases = [c for c in discover_cases(dataset, get_preset("kidney")) if c.case_id.startswith("kidney-")]
    maps = tmp_path / "maps"
    for c in cases:
        truth = sitk.ReadImage(str(c.labels))
        organ = sitk.ReadImage(str(c.totalseg / "kidney_left.nii.gz")) | sitk.ReadImage(
            str(c.totalseg / "kidney_right.nii.gz")) | sitk.Cast(truth > 0, sitk.sitkUInt8)  # exophytic parts too
        (maps / c.case_id).mkdir(parents=True)
        heat = sitk.Cast(truth > 0, sitk.sitkFloat32) * 0.8 + 0.1
        sitk.WriteImage(heat, str(maps / c.case_id / "heatmap.nii.gz"))
        sitk.WriteImage(sitk.Cast(organ, sitk.sitkUInt8), str(maps / c.case_id / "organ.nii.gz"))
        (maps / c.case_id / "case.json").write_text(json.dumps({"structures": 2}))
    scores, summary, problems, thr = score_dataset(cases, maps, "otsu", None, n_boot=50)
    assert 0.1 < thr < 0.9 and problems == {}
    assert summary["dice"]["mean"] == pytest.approx(1.0)
    assert summary["lesion_detection"] == {"tp": 6, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert summary["voxel_auroc"]["mean"] == pytest.approx(1.0)
    assert sum(s["lesions"] for s in summary["size_strata"].values()) == 6
    contrast = summary["lesion_contrast"]
    assert sum(v["lesions"] for v in contrast.values()) == 6 and all(v["recall"] == 1.0 for v in contrast.values())
    rows = [r for s in scores for r in s.reference_rows]
    assert len(rows) == 6 and all(r["found"] == 1 and r["cnr"] > 0 and r["volume_ml"] > 0 for r in rows)
    kinds = summary["lesion_kinds"]
    for attr in ("kind", "phase", "position"):
        rows = [v for k, v in kinds.items() if k.startswith(f"{attr}=")]
        assert sum(r["lesions"] for r in rows) == 6 and all(r["recall"] == 1.0 for r in rows)

    # only each case's lesion 1 in the map: the breakdown credits exactly those lesions' attributes
    expected: dict[str, int] = {}
    for c in cases:
        truth = sitk.ReadImage(str(c.labels))
        sitk.WriteImage(sitk.Cast(truth == 1, sitk.sitkFloat32) * 0.8 + 0.1, str(maps / c.case_id / "heatmap.nii.gz"))
        first = json.loads((c.labels.parent / "case.json").read_text())["lesions"][0]
        assert first["id"] == 1
        expected[f"kind={first['kind']}"] = expected.get(f"kind={first['kind']}", 0) + 1
    scores, summary, _, _ = score_dataset(cases, maps, 0.5, None, n_boot=20)
    _, brief, _, _ = score_dataset(cases, maps, 0.5, None, n_boot=0, detail=False)  # the sweep's: detection only
    assert brief["lesion_detection"] == summary["lesion_detection"] and brief["dice"]["mean"] == summary["dice"]["mean"]
    assert brief["fp_per_organ"]["mean"] == summary["fp_per_organ"]["mean"] and not brief["lesion_contrast"]
    found = {k: v["found"] for k, v in summary["lesion_kinds"].items() if k.startswith("kind=") and v["found"]}
    assert found == expected and summary["lesion_detection"]["tp"] == len(cases)
    rows = [r for s in scores for r in s.reference_rows]
    assert all(r["best_iou"] == pytest.approx(1.0) for r in rows if r["lesion"] == 1)
    assert all(r["best_iou"] == 0.0 and not r["found"] for r in rows if r["lesion"] != 1)
    assert summary["missed_overlapped"] == {"missed": 3, "overlapped": 0, "near": 0}


def test_the_sweeps_cached_cropped_scoring_equals_scoring_from_the_files(dataset, tmp_path):
    """The sweep reads each map once and scores its post-processing points on a crop around the organ and the
    lesions: every figure equals scoring from the files, for noisy maps, lesions partly outside the organ mask,
    minimum volumes and growing."""
    from DiffusionAnomalyLib.detection.anomaly import PostProcessing

    preset = get_preset("kidney")
    cases = [c for c in discover_cases(dataset, preset) if c.case_id.startswith("kidney-")]
    maps = tmp_path / "maps"
    rng = np.random.default_rng(0)
    for c in cases:
        truth = sitk.ReadImage(str(c.labels))
        organ = sitk.ReadImage(str(c.totalseg / "kidney_left.nii.gz")) | sitk.ReadImage(
            str(c.totalseg / "kidney_right.nii.gz"))  # without the lesions' exophytic parts
        noise = ndimage.gaussian_filter(rng.normal(0, 1, truth.GetSize()[::-1]), 1.5).astype(np.float32)
        heat = sitk.GetImageFromArray(0.5 * (sitk.GetArrayFromImage(truth) > 0) + 0.2 + noise)
        heat.CopyInformation(truth)
        (maps / c.case_id).mkdir(parents=True)
        sitk.WriteImage(sitk.Cast(heat, sitk.sitkFloat32), str(maps / c.case_id / "heatmap.nii.gz"))
        sitk.WriteImage(sitk.Cast(organ, sitk.sitkUInt8), str(maps / c.case_id / "organ.nii.gz"))
        (maps / c.case_id / "case.json").write_text(json.dumps({"structures": 2}))
    cache: dict = {}
    tp = fp = 0
    points = [(0.5, None), (0.4, PostProcessing.for_preset(preset, 0.0, 1.0)),
              (0.5, PostProcessing.for_preset(preset, 0.5, 0.55)), (0.6, PostProcessing.for_preset(preset, 2.0, 0.7))]
    for threshold, pp in points:
        plain, from_files, _, _ = score_dataset(cases, maps, threshold, pp, n_boot=0, detail=False)
        cached, from_cache, _, _ = score_dataset(cases, maps, threshold, pp, n_boot=0, detail=False, cache=cache)
        assert json.dumps(from_cache, sort_keys=True) == json.dumps(from_files, sort_keys=True)
        assert [(s.row(), s.lesion_scores) for s in cached] == [(s.row(), s.lesion_scores) for s in plain]
        tp, fp = tp + from_files["lesion_detection"]["tp"], fp + from_files["lesion_detection"]["fp"]
    assert set(cache) == {c.case_id for c in cases}
    assert all(v.heat.size < sitk.ReadImage(str(c.labels)).GetNumberOfPixels() for c, v in
               zip(cases, cache.values(), strict=True))  # cropped
    assert tp > 0 and fp > 0  # hits and false positives both scored


def test_a_missed_lesion_under_a_too_large_component_is_counted_as_overlapped(dataset, tmp_path):
    # each case's lesion 1 lies inside a predicted box several times its volume: IoU under 0.2, so missed,
    # but the report gives its best IoU and counts it among the missed lesions that a prediction overlaps
    cases = [c for c in discover_cases(dataset, get_preset("kidney")) if c.case_id.startswith("kidney-")]
    maps = tmp_path / "maps"
    for c in cases:
        truth_img = sitk.ReadImage(str(c.labels))
        truth = sitk.GetArrayFromImage(truth_img)
        zyx = np.argwhere(truth == 1)
        lo, hi = zyx.min(axis=0), zyx.max(axis=0) + 1
        span = hi - lo
        heat = np.full(truth.shape, 0.1, np.float32)
        box = tuple(slice(max(int(a - s), 0), int(b + s)) for a, b, s in zip(lo, hi, span, strict=True))
        heat[box] = 0.9
        heat_img = sitk.GetImageFromArray(heat)
        heat_img.CopyInformation(truth_img)
        (maps / c.case_id).mkdir(parents=True)
        sitk.WriteImage(heat_img, str(maps / c.case_id / "heatmap.nii.gz"))
        organ = sitk.GetImageFromArray(np.ones(truth.shape, np.uint8))
        organ.CopyInformation(truth_img)
        sitk.WriteImage(organ, str(maps / c.case_id / "organ.nii.gz"))
        (maps / c.case_id / "case.json").write_text(json.dumps({"structures": 2}))
    scores, summary, _, _ = score_dataset(cases, maps, 0.5, None, n_boot=20)
    first = [r for s in scores for r in s.reference_rows if r["lesion"] == 1]
    assert len(first) == 3 and all(0.0 < r["best_iou"] < 0.2 and not r["found"] for r in first)
    assert summary["missed_overlapped"]["overlapped"] >= 3
    assert summary["missed_overlapped"]["near"] == sum(r["best_iou"] >= 0.1 for r in first)
    assert "| missed lesions that a predicted component overlaps |" in markdown_summary(
        summary, {}, {"organ": "kidney"})


def test_evaluate_reports_metrics_lists_bad_cases_and_resumes(dataset, tmp_path, capsys):
    out = tmp_path / "ev"
    args = ["evaluate", "--data", str(dataset), "--baseline", "--organ", "kidney", "--out", str(out),
            "--bootstrap", "100"]
    assert main(args) == 0
    report = out / "report"
    for name in ("per_case.csv", "reference_lesions.csv", "summary.json", "summary.md", "froc.png",
                 "size_strata.png", "dice_hist.png"):
        assert (report / name).is_file(), name
    doc = json.loads((report / "summary.json").read_text())
    lesion_rows = (report / "reference_lesions.csv").read_text().splitlines()
    assert lesion_rows[0] == ("case,lesion,volume_ml,diameter_mm,contrast,spread,cnr,found,best_iou,ae_kept,rec_kept,"
                              "lost_at")
    assert len(lesion_rows) == 1 + 6
    assert doc["summary"]["cases"] == 3 and doc["summary"]["reference_lesions"] == 6
    strata_rows = [line for line in (report / "summary.md").read_text().splitlines() if " cm) |" in line]
    assert doc["settings"]["organ"] == "kidney" and strata_rows and all(r.startswith("| T") for r in strata_rows)
    as_liver = markdown_summary(doc["summary"], {}, {**doc["settings"], "organ": "liver"})  # no renal T stages
    assert "| <=2 cm |" in as_liver or "| 2-4 cm |" in as_liver
    assert not any(line.startswith("| T") for line in as_liver.splitlines())
    skipped = doc["skipped_cases"]
    assert skipped["nolabels"] == "no reference labels"
    assert "different grids" in skipped["othergrid"]
    assert "values [7]" in skipped["kits-weird"]
    assert "no image" in skipped["empty-folder"]
    md = (report / "summary.md").read_text()
    assert "Dice (cases with lesions)" in md and "- othergrid:" in md
    with open(report / "per_case.csv") as f:
        assert [r["case"] for r in csv.DictReader(f)] == ["kidney-00011", "kidney-00012", "kidney-00013"]
    # resumable: a second run reuses every cached map
    maps = next((out / "maps").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in maps.rglob("heatmap.nii.gz")}
    capsys.readouterr()
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in maps.rglob("heatmap.nii.gz")} == stamps
    assert "maps 1/" not in capsys.readouterr().err
    # --bootstrap 0: the same figures without confidence intervals
    assert main([*args[:-1], "0"]) == 0
    md0 = (report / "summary.md").read_text()
    assert "95% CI" not in md0 and "Dice (cases with lesions)" in md0
    again = json.loads((report / "summary.json").read_text())["summary"]
    assert again["dice"]["mean"] == doc["summary"]["dice"]["mean"]


def test_sweep_picks_the_best_setting_and_calibrates_a_bundle_copy(dataset, tiny_bundle, tmp_path, capsys):
    from DiffusionAnomalyLib.models.bundle import load_bundle, read_meta

    data = tmp_path / "two"
    data.mkdir()
    for c in ("kidney-00011", "kidney-00012"):
        shutil.copytree(dataset / c, data / c)
    out = tmp_path / "sw"
    calibrated = tmp_path / "calibrated"
    assert main(["sweep", "--data", str(data), "--bundle", str(tiny_bundle), "--sampler", "ddim", "--steps", "2",
                 "--noise-levels", "20", "50", "--guidance-values", "0", "10", "--device", "cpu", "--precision", "fp32",
                 "--out", str(out),
                 "--reference", "autoencoder", "--median-filter", "3", "--write-bundle", str(calibrated)]) == 0
    res = json.loads((out / "sweep" / "sweep.json").read_text())
    assert [(r["noise_level"], r["guidance"]) for r in res["grid"]] == [(20, 0.0), (20, 10.0), (50, 0.0), (50, 10.0)]
    assert res["best"]["dice"] == max(r["dice"] for r in res["grid"])
    assert (out / "sweep" / "dice_vs_s.png").is_file()
    # post-processing stage: one row per candidate volume at the best setting; the best pooled F1 is chosen
    pp = res["postprocessing"]
    assert [r["min_lesion_ml"] for r in pp] == [0.0, 0.25, 0.5, 1.0, 2.0]
    assert all(r["lesions"] == pp[0]["lesions"] for r in pp)  # the same reference lesions every time
    assert [r["fp"] for r in pp] == sorted((r["fp"] for r in pp), reverse=True)  # larger minimum, fewer FPs
    best_f1 = max(r["f1"] or 0 for r in pp)
    assert (res["best"]["postprocessed"]["f1"] or 0) == best_f1
    rec = read_meta(calibrated).recommended
    assert rec["noise_level"] == res["best"]["noise_level"] and rec["threshold"] == res["best"]["threshold"]
    assert rec["min_lesion_ml"] == res["best"]["min_lesion_ml"]
    # the map options are recommended too, and name the cached maps
    assert (rec["reference"], rec["samples"], rec["median_filter"]) == ("autoencoder", 1, 3)
    wid = read_meta(tiny_bundle).weights_id()
    assert read_meta(calibrated).weights_id() == wid  # recalibrating does not change the networks
    assert sorted(p.name for p in (out / "maps").iterdir()) == ["baseline"] + [
        f"ddim_L{L}_n2_s{s}_seed0_refautoencoder_med3_w{wid}" for L in (20, 50) for s in (0, 10)]
    load_bundle(calibrated)  # still a valid bundle (weights and checksums copied)
    printed = capsys.readouterr().out
    assert "best: L =" in printed and "recommended: threshold" in printed
    # the baseline beside the recommended point, on the same cases, with the paired test
    beside = res["baseline"]
    assert beside["cases"] == 2 and beside["baseline"]["lesions"] == beside["model"]["lesions"] == 4
    assert beside["model"]["found"] == res["best"]["postprocessed"]["found"]
    assert set(beside["paired"]) == {"dice", "f1"} and beside["paired"]["dice"]["n"] == 2
    assert (out / "maps" / "baseline").is_dir() and "paired Wilcoxon" in printed
    assert "| lesions found |" in (out / "sweep" / "report.md").read_text()
    # operating point under a false-positive budget, over thresholds x Otsu (the cached maps are reused)
    assert main(["sweep", "--data", str(data), "--bundle", str(tiny_bundle), "--sampler", "ddim", "--steps", "2",
                 "--noise-levels", "20", "--guidance-values", "0", "--device", "cpu", "--out", str(out),
                 "--reference", "autoencoder", "--median-filter", "3", "--threshold-scales", "0.8", "1", "1.25",
                 "--min-lesion-ml-values", "0", "1", "--max-fp-per-organ", "1", "--grow-to-values", "1", "0.7",
                 "--write-bundle", str(tmp_path / "calibrated2")]) == 0
    res2 = json.loads((out / "sweep" / "sweep.json").read_text())
    pp2, b2 = res2["postprocessing"], res2["best"]
    assert [(r["threshold_scale"], r["min_lesion_ml"], r["grow_to"]) for r in pp2] == [
        (x, ml, g) for x in (0.8, 1.0, 1.25) for ml in (0.0, 1.0) for g in (1.0, 0.7)]
    # growth only extends kept lesions or merges them: never more predicted lesions at the same threshold and volume
    assert all(g["found"] + g["fp"] <= p["found"] + p["fp"] for p, g in zip(pp2[::2], pp2[1::2], strict=True))
    assert read_meta(tmp_path / "calibrated2").recommended["grow_to"] == b2["grow_to"] == b2["postprocessed"]["grow_to"]
    assert all(r["threshold"] == pytest.approx(b2["otsu_threshold"] * r["threshold_scale"], abs=1e-5) for r in pp2)
    assert b2["threshold"] == b2["postprocessed"]["threshold"]
    assert "false positives per organ" in b2["objective"]
    # evaluating the calibrated bundle (its maps are the sweep's): the dataset's Otsu by default, with a note
    # naming the calibrated threshold; --threshold bundle scores the calibrated point itself
    capsys.readouterr()
    assert main(["evaluate", "--data", str(data), "--bundle", str(tmp_path / "calibrated2"), "--device", "cpu",
                 "--out", str(out), "--bootstrap", "10"]) == 0
    printed = capsys.readouterr().out
    assert "(global Otsu)" in printed and f"threshold {b2['threshold']:.4f}: add --threshold bundle" in printed
    assert main(["evaluate", "--data", str(data), "--bundle", str(tmp_path / "calibrated2"), "--device", "cpu",
                 "--out", str(out), "--bootstrap", "10", "--threshold", "bundle"]) == 0
    printed = capsys.readouterr().out
    assert "(fixed)" in printed and "add --threshold bundle" not in printed, printed[:400]
    report = json.loads((out / "report" / "summary.json").read_text())
    assert report["summary"]["threshold"] == pytest.approx(b2["threshold"])
    for bad in (["--threshold-scales", "0"], ["--max-fp-per-organ", "-1"]):  # the parser refuses them (exit 2)
        with pytest.raises(SystemExit) as exc:
            main(["sweep", "--data", str(data), "--bundle", str(tiny_bundle), "--out", str(out), *bad])
        assert exc.value.code == 2


def test_evaluate_puts_the_baseline_beside_a_bundle(dataset, tiny_bundle, tmp_path, capsys):
    data = tmp_path / "two"
    data.mkdir()
    for c in ("kidney-00011", "kidney-00012"):
        shutil.copytree(dataset / c, data / c)
    out = tmp_path / "ev"
    args = ["evaluate", "--data", str(data), "--bundle", str(tiny_bundle), "--sampler", "ddim", "--steps", "2",
            "--noise-level", "20", "--device", "cpu", "--out", str(out), "--bootstrap", "0"]
    assert main(args) == 0
    report = out / "report"
    doc = json.loads((report / "summary.json").read_text())
    comparison = doc["baseline"]["comparison"]
    with open(report / "baseline_per_case.csv") as f:
        base_rows = {r["case"]: r for r in csv.DictReader(f)}
    with open(report / "per_case.csv") as f:
        model_rows = {r["case"]: r for r in csv.DictReader(f)}
    assert sorted(base_rows) == sorted(model_rows) == ["kidney-00011", "kidney-00012"]
    # the paired figures are those of the two per-case tables
    diff = np.mean([float(model_rows[c]["dice"]) - float(base_rows[c]["dice"]) for c in model_rows])
    assert comparison["paired"]["dice"]["mean_difference"] == pytest.approx(diff, abs=1e-3)
    assert comparison["baseline"]["found"] == sum(int(r["tp"]) for r in base_rows.values())
    assert comparison["model"]["found"] == doc["summary"]["lesion_detection"]["tp"]
    md = (report / "summary.md").read_text()
    assert "## Beside the non-neural baseline (2 cases scored by both)" in md and "| lesion F1 |" in md
    # the loss funnel, model and baseline: every reference lesion in exactly one step; the model's D(E(x)) and
    # both healthy reconstructions were kept beside the maps, so every lesion's kept shares were measured
    from DiffusionAnomalyLib.evaluation.funnel import FUNNEL_STAGES

    n_lesions = comparison["model"]["lesions"]
    for summ in (doc["summary"], doc["baseline"]["summary"]):
        f = summ["funnel"]
        assert sum(sum(row.values()) for row in f["by_size"].values()) == n_lesions
        assert sum(row["found"] for row in f["by_size"].values()) == summ["lesion_detection"]["tp"]
        assert f["without_reconstruction"] == 0
    assert doc["baseline"]["summary"]["funnel"]["by_size"] and all(
        row["autoencoder"] == 0 for row in doc["baseline"]["summary"]["funnel"]["by_size"].values())
    model_maps = next(d for d in (out / "maps").iterdir() if d.name != "baseline")  # maps/<settings key>/
    for kind in ("heatmap.nii.gz", "reconstruction_0.nii.gz", "autoencoded_0.nii.gz"):
        assert (model_maps / "kidney-00011" / kind).is_file(), kind
    assert (out / "maps" / "baseline" / "kidney-00011" / "reconstruction_0.nii.gz").is_file()
    assert not (out / "maps" / "baseline" / "kidney-00011" / "autoencoded_0.nii.gz").exists()
    with open(report / "reference_lesions.csv") as f:
        lesions = list(csv.DictReader(f))
    assert lesions and all(r["lost_at"] in FUNNEL_STAGES and r["ae_kept"] and r["rec_kept"] for r in lesions)
    assert all((r["lost_at"] == "found") == (r["found"] == "1") for r in lesions)
    assert "## Where lesions are lost" in md and "| median baseline |" in md
    # the baseline's maps are cached too: a rerun computes no map
    capsys.readouterr()
    assert main(args) == 0
    assert "maps 1/" not in capsys.readouterr().err
    # --no-baseline: the model alone
    assert main([*args, "--no-baseline"]) == 0
    assert "baseline" not in json.loads((report / "summary.json").read_text())
    assert not (report / "baseline_per_case.csv").exists() and "Beside the" not in (report / "summary.md").read_text()


def test_the_loss_funnel_puts_each_lesion_where_it_is_lost():
    from DiffusionAnomalyLib.evaluation.funnel import funnel_summary, kept_contrast, lesion_stages
    from DiffusionAnomalyLib.evaluation.metrics import match_lesions

    # six cubes of +100 in a flat organ of 0 with noise; each is lost at another step (or found)
    rng = np.random.default_rng(0)
    organ = np.ones((20, 20, 80), bool)
    truth = np.zeros(organ.shape, np.uint16)
    for i in range(6):
        truth[6:12, 6:12, 4 + 13 * i: 10 + 13 * i] = i + 1
    image = np.where(truth > 0, 100.0, 0.0) + rng.normal(0, 5, organ.shape)
    ae = image.copy()
    ae[truth == 1] = 30.0  # lesion 1: D(E(x)) keeps 30 % of it
    rec = np.where(truth == 2, image, 0.0)  # lesion 2 left in the healthy reconstruction; the rest removed
    heat = np.zeros(organ.shape)
    heat[truth == 4] = 0.3  # above the threshold, but post-processing dropped it
    heat[truth == 5] = 0.3
    heat[truth == 6] = 0.9
    pred = np.zeros(organ.shape, np.uint16)
    pred[2:18, 2:18, 4 + 13 * 4 - 3: 10 + 13 * 4 + 3] = 1  # lesion 5: touched by a far too large component
    pred[truth == 6] = 2
    det = match_lesions(pred, truth)
    which = {i: 0 for i in range(1, 7)}
    ae_kept = kept_contrast([image], [ae], truth, organ, (1.0, 1.0, 1.0), which)
    rec_kept = kept_contrast([image], [rec], truth, organ, (1.0, 1.0, 1.0), which)
    assert ae_kept[1] == pytest.approx(0.3, abs=0.05) and ae_kept[2] == pytest.approx(1.0, abs=1e-6)
    assert rec_kept[2] == pytest.approx(1.0, abs=0.05) and abs(rec_kept[3]) < 0.05
    stages = lesion_stages(truth, organ, heat, 0.2, pred, det, ae_kept, rec_kept, "autoencoder")
    assert stages == {1: "autoencoder", 2: "left in", 3: "below threshold", 4: "post-processing", 5: "IoU < 0.2",
                      6: "found"}
    # against the input, D(E(x)) loses nothing: lesion 1 goes on to the next step it fails
    assert lesion_stages(truth, organ, heat, 0.2, pred, det, ae_kept, rec_kept, "input")[1] == "below threshold"
    # without the reconstructions (maps cached before the funnel) the first two steps are skipped, and said so
    none = {i: None for i in range(1, 7)}
    assert lesion_stages(truth, organ, heat, 0.2, pred, det, none, none, "autoencoder")[2] == "below threshold"
    rows = [{"diameter_mm": 6.0 if i < 6 else 30.0, "cnr": 20.0, "lost_at": stages[i], "rec_kept": rec_kept[i]}
            for i in range(1, 7)]
    f = funnel_summary(rows)
    assert f["by_size"]["<=2 cm"]["autoencoder"] == 1 and f["by_size"]["2-4 cm"]["found"] == 1
    assert f["small_visible"]["IoU < 0.2"] == 1 and sum(f["small_visible"].values()) == 5
    assert f["without_reconstruction"] == 0


def test_paired_test_figures_and_ties():
    from scipy import stats

    from DiffusionAnomalyLib.evaluation.report import _paired_test

    model = [0.5, 0.6, 0.7, 0.2, float("nan"), 0.9]
    base = [0.4, 0.4, 0.3, 0.3, 0.8, 0.1]
    t = _paired_test(model, base)
    d = np.array([0.1, 0.2, 0.4, -0.1, 0.8])
    assert t["n"] == 5 and (t["model_better"], t["baseline_better"], t["ties"]) == (4, 1, 0)  # the NaN pair dropped
    assert t["mean_difference"] == pytest.approx(d.mean(), abs=1e-4)
    assert t["p_model_better"] == pytest.approx(stats.wilcoxon(d, alternative="greater").pvalue, abs=1e-4)
    assert t["p_baseline_better"] == pytest.approx(stats.wilcoxon(-d, alternative="greater").pvalue, abs=1e-4)
    assert t["verdict"] == "no significant difference"  # 5 pairs cannot reach p < 0.05 with one loss
    better = _paired_test([v + 0.1 for v in base] * 2, base * 2)
    assert better["verdict"] == "model better" and better["p_model_better"] < 0.05
    tied = _paired_test([0.3, 0.4], [0.3, 0.4])
    assert tied["p_model_better"] is None and tied["ties"] == 2 and tied["verdict"] == "no significant difference"


def test_sweep_varies_the_map_options_and_recommends_the_best(dataset, tiny_bundle, tmp_path, capsys):
    """The grid is L x s x reference x samples x median filter; each point has its own cached maps; the chosen
    point's map options go into the calibrated bundle."""
    from DiffusionAnomalyLib.models.bundle import read_meta

    data = tmp_path / "one"
    data.mkdir()
    shutil.copytree(dataset / "kidney-00011", data / "kidney-00011")
    out = tmp_path / "sw"
    assert main(["sweep", "--data", str(data), "--bundle", str(tiny_bundle), "--sampler", "ddim", "--steps", "2",
                 "--noise-levels", "20", "--guidance-values", "0", "--device", "cpu", "--precision", "fp32",
                 "--reference-values", "input", "autoencoder", "--median-filter-values", "0", "3",
                 "--min-lesion-ml-values", "0", "--no-baseline", "--out", str(out),
                 "--write-bundle", str(tmp_path / "cal")]) == 0
    res = json.loads((out / "sweep" / "sweep.json").read_text())
    grid = [(r["reference"], r["samples"], r["median_filter"]) for r in res["grid"]]
    assert grid == [("input", 1, 0), ("input", 1, 3), ("autoencoder", 1, 0), ("autoencoder", 1, 3)]
    assert len({r["maps"] for r in res["grid"]}) == 4 and all((out / "maps" / r["maps"]).is_dir() for r in res["grid"])
    # the median filter changes the map; the reference changes the map
    dice = {g: r["dice"] for g, r in zip(grid, res["grid"], strict=True)}
    assert len(set(dice.values())) > 1
    best = res["best"]
    assert best["dice"] == max(dice.values())
    rec = read_meta(tmp_path / "cal").recommended
    assert (rec["reference"], rec["samples"], rec["median_filter"]) == (best["reference"], 1, best["median_filter"])
    assert "median" in capsys.readouterr().out
    # with a false-positive budget the size-balanced objective scores the operating points on every grid point's
    # (cached) maps and may pick another map than the best Dice; --objective lesions keeps the thesis's order
    common = ["sweep", "--data", str(data), "--bundle", str(tiny_bundle), "--sampler", "ddim", "--steps", "2",
              "--noise-levels", "20", "--guidance-values", "0", "--device", "cpu", "--precision", "fp32",
              "--reference-values", "input", "autoencoder", "--median-filter-values", "0", "3",
              "--min-lesion-ml-values", "0", "--no-baseline", "--out", str(out), "--max-fp-per-organ", "1"]
    assert main(common) == 0
    res = json.loads((out / "sweep" / "sweep.json").read_text())
    assert sorted({r["maps"] for r in res["postprocessing"]}) == sorted(r["maps"] for r in res["grid"])
    chosen = res["best"]["postprocessed"]
    within = [r for r in res["postprocessing"] if r["fp_per_organ"] <= 1]
    if within:
        assert chosen["size_balanced_recall"] == max(r["size_balanced_recall"] for r in within)
        assert "size classes" in res["best"]["objective"] and res["best"]["maps"] == chosen["maps"]
    assert main([*common, "--objective", "lesions"]) == 0
    res = json.loads((out / "sweep" / "sweep.json").read_text())
    assert {r["maps"] for r in res["postprocessing"]} == {res["best"]["maps"]}
    assert res["best"]["dice"] == max(dice.values())
    # a bad value is refused before any map is made, naming the option
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--data", str(data), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "sw2"),
              "--samples-values", "4", "0", "--device", "cpu"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--samples-values" in err and "samples must be in 1..64 (got 0)" in err
    assert not (tmp_path / "sw2" / "maps").exists()


def test_sweep_leaves_out_guidance_of_a_classifier_near_chance(dataset, tiny_bundle, tmp_path, capsys):
    weak = tmp_path / "weak"
    shutil.copytree(tiny_bundle, weak)
    meta = json.loads((weak / "model.json").read_text())
    meta["extra"] = {**meta.get("extra", {}), "classifier_training": {"best_val_auc": {"0": 0.9, "250": 0.61}}}
    (weak / "model.json").write_text(json.dumps(meta))
    data = tmp_path / "one"
    data.mkdir()
    shutil.copytree(dataset / "kidney-00011", data / "kidney-00011")
    out = tmp_path / "sw"
    common = ["sweep", "--data", str(data), "--bundle", str(weak), "--sampler", "ddim", "--steps", "2",
              "--noise-levels", "250", "--guidance-values", "0", "100", "--device", "cpu",
              "--min-lesion-ml-values", "0", "--no-baseline"]
    assert main([*common, "--out", str(out), "--write-bundle", str(tmp_path / "cal")]) == 0
    assert "AUC 0.61 at t = 250" in capsys.readouterr().err
    res = json.loads((out / "sweep" / "sweep.json").read_text())
    assert [r["guidance"] for r in res["grid"]] == [0.0] and "baseline" not in res
    assert json.loads((tmp_path / "cal" / "model.json").read_text())["recommended"]["guidance"] == 0.0
    assert main([*common, "--out", str(out), "--allow-weak-classifier"]) == 0
    assert [r["guidance"] for r in json.loads((out / "sweep" / "sweep.json").read_text())["grid"]] == [0.0, 100.0]


def test_operating_point_under_a_false_positive_budget():
    from DiffusionAnomalyLib.evaluation.sweep import choose_operating_point

    def row(scale, ml, found, fp, f1):
        return {"threshold_scale": scale, "threshold": scale * 0.1, "min_lesion_ml": ml, "found": found,
                "fp_per_organ": fp, "f1": f1}

    rows = [row(1.0, 2.0, 8, 0.35, 0.48), row(0.8, 2.0, 9, 0.80, 0.42), row(0.8, 0.5, 10, 2.75, 0.24),
            row(1.0, 1.0, 8, 0.65, 0.41)]
    assert choose_operating_point(rows)[0] is rows[0]  # best F1
    best, why = choose_operating_point(rows, 1.0)
    assert best is rows[1] and "most lesions found" in why  # 10 found is over budget
    assert choose_operating_point(rows, 0.5)[0] is rows[0]
    best, why = choose_operating_point(rows, 0.1)
    assert best is rows[0] and "no setting" in why  # none within: the fewest false positives
    # size-balanced: a point that finds one more large lesion cannot win over one that finds the small ones
    rows[0]["size_balanced_recall"], rows[1]["size_balanced_recall"], rows[3]["size_balanced_recall"] = 0.3, 0.25, 0.5
    best, why = choose_operating_point(rows, 1.0, "size-balanced")
    assert best is rows[3] and "mean recall over the lesion size classes" in why
    assert choose_operating_point(rows, 1.0, "lesions")[0] is rows[1]
    # thresholds keep 6 significant digits: a map in small units does not get a threshold of 0
    from DiffusionAnomalyLib.evaluation.sweep import _significant

    assert _significant(3.14159265e-7) == 3.14159e-7 and _significant(0.1498137) == 0.149814


def test_the_size_balanced_recall_does_not_let_a_class_of_five_outweigh_the_rest():
    from DiffusionAnomalyLib.evaluation.evaluate import size_balanced_recall

    def classes(*found):  # the validation phantoms' classes: 23 lesions <= 2 cm, 24 of 2-4, 5 of 4-7, 1 over 7 cm
        return {name: {"lesions": n, "found": f}
                for name, n, f in zip(("<=2 cm", "2-4 cm", "4-7 cm", ">7 cm"), (23, 24, 5, 1), found, strict=True)}

    # measured on them (docs/evaluation.md): the raw mean over the classes of >= 5 lesions preferred the first point,
    # 5 found of 53 (0.21 against 0.17), through 3 of the 4-7 cm class's 5 lesions; shrunk toward the pooled recall
    # (k = 5 lesions), the point that finds 12, 2 of them small, wins
    few, more = classes(0, 1, 3, 1), classes(2, 10, 0, 0)
    assert size_balanced_recall(more) > size_balanced_recall(few)
    # the formula: each class (found + k p) / (lesions + k), p the pooled recall, averaged over the classes
    p = 12 / 53
    expected = np.mean([(2 + 5 * p) / 28, (10 + 5 * p) / 29, 5 * p / 10, 5 * p / 6])
    assert size_balanced_recall(more) == pytest.approx(expected, abs=1e-4)
    # a whole class traded away still loses against the same count spread over the classes
    assert size_balanced_recall(classes(0, 12, 0, 0)) < size_balanced_recall(more)
    # k = 0 is the raw mean; classes without lesions do not count; no lesion at all: None
    assert size_balanced_recall(classes(2, 10, 0, 0), prior_lesions=0) == pytest.approx(
        np.mean([2 / 23, 10 / 24, 0, 0]), abs=1e-4)
    assert size_balanced_recall({**more, "other": {"lesions": 0, "found": 0}}) == size_balanced_recall(more)
    assert size_balanced_recall({"<=2 cm": {"lesions": 0, "found": 0}}) is None


def test_batch_writes_every_case_and_an_index(dataset, tmp_path):
    out = tmp_path / "batch"
    # a case failed: exit 2 (issue 35), the others' results and the index written
    assert main(["batch", "--data", str(dataset), "--baseline", "--organ", "kidney", "--out", str(out)]) == 2
    with open(out / "index.csv") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    for c in ("kidney-00011", "kidney-00012", "kidney-00013", "nolabels", "othergrid"):
        assert rows[c]["status"] == "ok" and (out / c / "lesions.seg.nrrd").is_file()
    assert rows["empty-folder"]["status"] == "failed" and "no image" in rows["empty-folder"]["problem"]


def test_evaluate_shards_over_two_torchrun_processes(dataset, tmp_path):
    data = tmp_path / "four"
    data.mkdir()
    for c in ("kidney-00011", "kidney-00012", "kidney-00013", "nolabels"):
        shutil.copytree(dataset / c, data / c)
    out = tmp_path / "dist"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "DiffusionAnomalyLib.app.cli", "evaluate", "--data", str(data), "--baseline", "--organ", "kidney",
         "--out", str(out), "--bootstrap", "50", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[rank 0] maps" in proc.stderr and "[rank 1] maps" in proc.stderr
    doc = json.loads((out / "report" / "summary.json").read_text())
    assert doc["summary"]["cases"] == 3 and doc["settings"]["ranks"] == 2
    assert list(doc["skipped_cases"]) == ["nolabels"]


def test_bench_reports_the_figures_it_promises(small_bench):
    from DiffusionAnomalyLib.evaluation.bench import run_bench, summary_table

    report = run_bench(sizes=["demo"], devices=["cpu"], steps=2, methods=("ddim",), guidance=(0.0, 50.0),
                       precisions=("fp32",))
    rows = report["results"]
    assert len(rows) == 4
    for r in rows:
        assert r["seconds"] > 0 and r["network_s"] > 0 and r["network_evaluations"] == 4
        assert r["reference_s"] > 0 and r["peak_rss_mb"] > 0
    assert all("batch_speedup" in r for r in rows if r["rois"] == 2)
    assert report["environment"]["torch"]
    assert report["environment"]["conv_rate_gflop_per_s"]["cpu"]["fp32"] > 0  # issue 39 item 6
    for r in rows:
        assert r["gflop"] > 0 and r["gflop_per_s"] > 0 and r["conv_rate_fraction"] > 0
    assert all("fp32_conv_rate_fraction" in c for c in report["comparison"])
    table = summary_table(report).splitlines()
    assert "of conv" in table[1] and len(table) == 2 + len(rows) and all(line.endswith("%") for line in table[2:])


def test_bench_times_the_fine_latent_that_tiny_fine_trains():
    """Issue 37's fix has its cost in bench: the tiny-fine size is the 4 mm latent with the tiny-3level denoiser."""
    from DiffusionAnomalyLib.evaluation.bench import SIZES, network_gflop, run_bench
    from DiffusionAnomalyLib.settings import BENCH_SIZES
    from DiffusionAnomalyLib.training.recipe.plan import PRESETS

    assert tuple(SIZES) == BENCH_SIZES
    assert SIZES["tiny-fine"]["denoiser"] == PRESETS["tiny-fine"]["denoiser_network"]
    assert network_gflop("tiny-fine", 1)[0] > 4 * network_gflop("demo", 1)[0]  # 8x the latent values
    report = run_bench(sizes=["tiny-fine"], devices=["cpu"], steps=2, methods=("ddpm",), guidance=(100.0,),
                       rois=(2,), precisions=("fp32",), reference=False, network_time=False)
    (row,) = report["results"]
    assert row["size"] == "tiny-fine" and row["network_evaluations"] == 2 and row["seconds"] > 0
    den, grad = network_gflop("tiny-fine", 2)
    assert row["gflop"] == round(den * 2 + grad * 2, 1)


def test_a_cancelled_evaluate_stops_at_once_and_a_rerun_redoes_the_case(dataset, tmp_path):
    """SIGTERM (CancelledError) during a case stops the run; it is not recorded as that case's problem."""
    from DiffusionAnomalyLib.detection.baseline import MedianBaseline
    from DiffusionAnomalyLib.errors import CancelledError
    from DiffusionAnomalyLib.evaluation.evaluate import compute_maps

    preset = get_preset("kidney")
    cases = [c for c in discover_cases(dataset, preset) if c.case_id.startswith("kidney-")]
    base = MedianBaseline.for_preset(preset)

    class CancelledOnSecondCase:
        name = base.name
        calls = 0

        def reconstruct(self, x, mask, spacing_mm):
            self.calls += 1
            if self.calls == 2:
                raise CancelledError("cancelled by the user (SIGTERM); no results were written")
            return base.reconstruct(x, mask, spacing_mm)

    maps = tmp_path / "maps"
    with pytest.raises(CancelledError):
        compute_maps(cases, CancelledOnSecondCase(), preset, maps)
    assert [p.name for p in maps.iterdir()] == [cases[0].case_id]  # no error.json, no half-written case
    compute_maps(cases, base, preset, maps)
    assert sorted(p.name for p in maps.iterdir()) == sorted(c.case_id for c in cases)
