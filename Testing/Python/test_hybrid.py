"""The hybrid map max(model, W x median baseline): its rule, the same map from run and from evaluate's cached
maps, the sweep that offers it and recommends it only when it wins (docs/evaluation.md#the-hybrid-map)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from DiffusionAnomalyLib.app.cli import main
from DiffusionAnomalyLib.detection.hybrid import hybrid_map, hybrid_weight
from DiffusionAnomalyLib.errors import InputError


def _heat(folder) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "heatmap.nii.gz")))


def test_the_hybrid_calls_a_voxel_abnormal_where_either_method_does_at_its_own_threshold():
    rng = np.random.default_rng(0)
    model, base = rng.random((20, 20, 20), np.float32), rng.random((20, 20, 20), np.float32) * 3
    t, base_otsu = 0.6, 0.9
    for scale in (1.25, 2.0):
        w = hybrid_weight(t, base_otsu, scale)
        assert w == pytest.approx(t / (scale * base_otsu), rel=1e-6)
        clear = np.abs(base - scale * base_otsu) > 1e-3  # away from the 6-digit rounding of W
        h = hybrid_map(model, base, w)
        assert h.dtype == np.float32 and (h >= model).all()
        assert np.array_equal((h > t)[clear], ((model > t) | (base > scale * base_otsu))[clear])
    assert hybrid_map(model, None, 0.0) is model  # W = 0: the model's map itself
    with pytest.raises(ValueError):
        hybrid_map(model, None, 1.0)
    with pytest.raises(ValueError):
        hybrid_weight(t, 0.0, 1.5)


def test_run_makes_the_hybrid_of_the_runs_and_the_baseline_commands_maps(tiny_bundle, kidney_case, tmp_path, capsys):
    _, folder = kidney_case
    common = ["--input", str(folder / "ct.nii.gz"), "--totalseg", str(folder / "segmentations")]
    run = ["run", "--bundle", str(tiny_bundle), *common, "--device", "cpu", "--seed", "3"]
    assert main([*run, "--out", str(tmp_path / "model")]) == 0
    assert main([*run, "--hybrid", "0.5", "--out", str(tmp_path / "hybrid")]) == 0
    assert main(["baseline", "--organ", "kidney", *common, "--out", str(tmp_path / "base")]) == 0
    model, hybrid, base = (_heat(tmp_path / n) for n in ("model", "hybrid", "base"))
    assert np.allclose(hybrid, np.maximum(model, 0.5 * base), atol=1e-6)
    assert (hybrid > model + 1e-6).any()  # the baseline's part shows somewhere
    doc = json.loads((tmp_path / "hybrid" / "run.json").read_text())
    assert doc["parameters"]["hybrid"] == {"weight": 0.5, "map": "max(model, W x median baseline)"}
    assert doc["parameters"]["settings"]["hybrid"] == 0.5
    # replayed from its run.json, the same map
    assert main(["run", "--bundle", str(tiny_bundle), *common, "--settings", str(tmp_path / "hybrid" / "run.json"),
                 "--out", str(tmp_path / "replay")]) == 0
    assert np.array_equal(_heat(tmp_path / "replay"), hybrid)
    capsys.readouterr()
    # a negative weight and a hybrid without a bundle are refused with a message, not a traceback
    with pytest.raises(SystemExit) as exc:
        main([*run, "--hybrid", "-1", "--out", str(tmp_path / "bad")])
    assert exc.value.code == 2 and "hybrid weight" in capsys.readouterr().err
    from DiffusionAnomalyLib.api import DetectRequest

    with pytest.raises(InputError, match="the baseline alone takes none"):
        DetectRequest(images=(str(folder / "ct.nii.gz"),), out=str(tmp_path / "b2"), organ="kidney", baseline=True,
                      settings={"hybrid": 1.0})


def test_evaluate_scores_the_hybrid_beside_the_model_alone_and_the_baseline(tiny_bundle, tmp_path, capsys):
    from DiffusionAnomalyLib.detection.presets import get_preset
    from DiffusionAnomalyLib.evaluation.datasets import discover_cases
    from DiffusionAnomalyLib.evaluation.evaluate import score_dataset
    from DiffusionAnomalyLib.synthetic.phantoms import write_dataset

    data = tmp_path / "data"
    write_dataset("kidney", data, [21, 22], n_lesions=2)
    out = tmp_path / "ev"
    args = ["evaluate", "--data", str(data), "--bundle", str(tiny_bundle), "--device", "cpu", "--out", str(out),
            "--bootstrap", "0", "--threshold", "0.05"]
    assert main([*args, "--hybrid", "0.2"]) == 0
    doc = json.loads((out / "report" / "summary.json").read_text())
    assert doc["settings"]["hybrid"] == "max(model, 0.2 x median baseline)"
    alone, beside = doc["model_alone"], doc["baseline"]
    assert alone["comparison"]["cases"] == beside["comparison"]["cases"] == 2
    md = (out / "report" / "summary.md").read_text()
    assert "## Beside the model's map alone, at the same operating point" in md and "| hybrid | model alone |" in md
    assert (out / "report" / "model_alone_per_case.csv").is_file()
    # the hybrid figures are those of max(model, W x baseline) built from the two cached maps by hand
    maps = next(d for d in (out / "maps").iterdir() if d.name != "baseline")
    by_hand = tmp_path / "by-hand"
    for case in ("kidney-00021", "kidney-00022"):
        shutil.copytree(maps / case, by_hand / case)
        m = sitk.ReadImage(str(maps / case / "heatmap.nii.gz"))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "maps" / "baseline" / case / "heatmap.nii.gz")))
        h = sitk.GetImageFromArray(np.maximum(sitk.GetArrayFromImage(m), np.float32(0.2) * b))
        h.CopyInformation(m)
        sitk.WriteImage(h, str(by_hand / case / "heatmap.nii.gz"))
    cases = discover_cases(str(data), get_preset("kidney"))
    from DiffusionAnomalyLib.detection.anomaly import PostProcessing

    bundle_pp = PostProcessing.for_preset(get_preset("kidney"))  # the untrained bundle recommends none: the preset's
    _, summary, _, _ = score_dataset(cases, by_hand, 0.05, bundle_pp, n_boot=0, detail=False)
    assert summary["lesion_detection"] == doc["summary"]["lesion_detection"]
    assert summary["voxel_auroc"]["mean"] == pytest.approx(doc["summary"]["voxel_auroc"]["mean"])
    # without --hybrid: the model alone, no third table; a rerun computes no map (the hybrid reuses the caches)
    capsys.readouterr()
    assert main(args) == 0
    assert "maps 1/" not in capsys.readouterr().err
    assert "model_alone" not in json.loads((out / "report" / "summary.json").read_text())
    assert not (out / "report" / "model_alone_per_case.csv").exists()
    assert doc["model_alone"]["comparison"]["baseline"] == json.loads(
        (out / "report" / "summary.json").read_text())["baseline"]["comparison"]["model"]


def test_the_operating_point_prefers_the_model_alone_at_a_tie():
    from DiffusionAnomalyLib.evaluation.sweep import choose_operating_point

    row = {"f1": 0.5, "min_lesion_ml": 0.0, "threshold_scale": 1.0, "grow_to": 1.0, "fp_per_organ": 0.5, "found": 3,
           "size_balanced_recall": 0.4}
    hybrid = {**row, "hybrid": 0.7, "hybrid_scale": 1.5}
    for objective in ("lesions", "size-balanced"):
        assert choose_operating_point([hybrid, {**row, "hybrid": 0.0}], 1.0, objective)[0]["hybrid"] == 0.0
        better = {**hybrid, "found": 4, "size_balanced_recall": 0.5}
        assert choose_operating_point([better, {**row, "hybrid": 0.0}], 1.0, objective)[0]["hybrid"] == 0.7


def test_sweep_offers_hybrids_and_contrast_floors_and_the_calibrated_bundle_recommends_them(tiny_bundle, tmp_path,
                                                                                           monkeypatch):
    from DiffusionAnomalyLib.models.bundle import read_meta
    from DiffusionAnomalyLib.synthetic.phantoms import write_dataset

    data = tmp_path / "data"
    write_dataset("kidney", data, [31, 32], n_lesions=2)
    out = tmp_path / "sw"
    args = ["sweep", "--data", str(data), "--bundle", str(tiny_bundle), "--sampler", "ddim", "--steps", "2",
            "--noise-levels", "20", "--guidance-values", "0", "--device", "cpu", "--out", str(out),
            "--threshold-scales", "0.5", "1", "--min-lesion-ml-values", "0", "--max-fp-per-organ", "3"]
    assert main([*args, "--hybrid-scales", "1.5", "3", "--write-bundle", str(tmp_path / "cal")]) == 0
    res = json.loads((out / "sweep" / "sweep.json").read_text())
    rows, best = res["postprocessing"], res["best"]
    assert [(r["threshold_scale"], r["hybrid_scale"]) for r in rows] == [
        (x, c) for x in (0.5, 1.0) for c in (None, 1.5, 3.0)]
    otsu = best["baseline_otsu"]
    assert otsu > 0 and all(r["hybrid"] == pytest.approx(r["threshold"] / (r["hybrid_scale"] * otsu), rel=1e-5)
                            for r in rows if r["hybrid_scale"])
    chosen = best["postprocessed"]
    assert best["hybrid"] == chosen["hybrid"]
    rec = read_meta(tmp_path / "cal").recommended
    assert rec["hybrid"] == chosen["hybrid"]
    alone = [r for r in rows if not r["hybrid"]]
    if chosen["hybrid"]:  # recommended only when it beats every point of the model alone within the budget
        key = (chosen["size_balanced_recall"] or 0, chosen["found"], chosen["f1"] or 0)
        assert all((r["size_balanced_recall"] or 0, r["found"], r["f1"] or 0) < key for r in alone
                   if r["fp_per_organ"] is not None and r["fp_per_organ"] <= 3)
    # --hybrid-scales 0: no hybrid point, and nothing recorded about one; contrast-dependent floors are tried with
    # each minimum volume > 0 only (without a floor there is nothing to escape), and recommended as chosen
    # a recalibrated copy of a listed (shipped) bundle gets its own version: under the listed one its checksum
    # would fail, and evaluating it would be refused
    from DiffusionAnomalyLib.models.bundle import bundle_digest, load_bundle

    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format_version": 1, "bundles": [
        {"name": "kidney-untrained", "version": "0.0", "sha256": bundle_digest(tiny_bundle)}]}))
    monkeypatch.setenv("DA_BUNDLE_MANIFEST", str(manifest))
    assert main([*args, "--write-bundle", str(tmp_path / "cal-listed")]) == 0
    assert read_meta(tmp_path / "cal-listed").version == "0.0+recalibrated"
    load_bundle(tmp_path / "cal-listed", manifest=manifest)
    monkeypatch.delenv("DA_BUNDLE_MANIFEST")
    assert main([*args[:-4], "--min-lesion-ml-values", "0", "1", "--max-fp-per-organ", "3", "--hybrid-scales", "0",
                 "--floor-contrast-values", "0", "2", "--write-bundle", str(tmp_path / "cal2")]) == 0
    res = json.loads((out / "sweep" / "sweep.json").read_text())
    assert all(not r["hybrid"] for r in res["postprocessing"]) and "hybrid" not in res["best"]
    assert [(r["threshold_scale"], r["min_lesion_ml"], r["floor_contrast"]) for r in res["postprocessing"]] == [
        (x, ml, f) for x in (0.5, 1.0) for ml, f in ((0.0, 0.0), (1.0, 0.0), (1.0, 2.0))]
    assert read_meta(tmp_path / "cal2").recommended["floor_contrast"] == res["best"]["postprocessed"]["floor_contrast"]
    assert main([*args, "--floor-contrast-values", "0.5"]) == 2  # below 1 every lesion would escape: refused
