"""``train all`` through the real command line: 8 phantom cases, tiny networks, a few iterations, 4 mm patches.

The bundle loads, runs and has a filled model card; a rerun trains nothing; --dry-run counts labels per split,
names unusable labels rows, reads KiTS cases in split folders and derives labels from the lesions."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from DiffusionAnomalyLib.app.cli import main
from DiffusionAnomalyLib.synthetic.phantoms import write_dataset

FAST = ["--organ", "kidney", "--spacing", "4", "--iterations", "3", "--noise-levels", "20", "--steps", "2",
        "--sampler", "ddim", "--threshold-scales", "1", "--min-lesion-ml-values", "0", "--grow-to-values", "1",
        "--val-fraction", "0.25", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset("kidney", tmp_path_factory.mktemp("ta") / "data", list(range(8)))


def _stamps(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}


@pytest.mark.slow
def test_train_all_makes_a_calibrated_documented_bundle_and_a_rerun_trains_nothing(data, tmp_path, capsys):
    from DiffusionAnomalyLib.models.bundle import load_bundle, read_meta
    from DiffusionAnomalyLib.models.precision import cpu_fast_bf16

    out = tmp_path / "bundle"
    argv = ["train", "all", "--data", str(data), "--out", str(out), *FAST, "--median-filter-values", "0", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    bundle = load_bundle(out, manifest=None)
    assert set(bundle.networks) == {"autoencoder", "denoiser", "classifier"}
    meta = read_meta(out)
    # the split: deterministic, disjoint, every case once; recorded in model.json and split.csv
    split = meta.extra["train_all"]["split"]
    assert sorted(split["train"] + split["validation"]) == [f"kidney-{i:05d}" for i in range(8)]
    assert len(split["validation"]) == 2 and not set(split["train"]) & set(split["validation"])
    with open(out / "split.csv") as f:
        assert {r["case"]: r["split"] for r in csv.DictReader(f)} == {
            **{c: "train" for c in split["train"]}, **{c: "validation" for c in split["validation"]}}
    # calibrated on the validation split only, the baseline beside; the card filled from what was done
    rec = meta.recommended
    assert rec["noise_level"] == 20 and rec["sampler"] == "ddim" and rec["threshold"] > 0
    grid = meta.extra["calibration"]
    assert rec["median_filter"] == grid["median_filter"] in (0, 3)  # swept: L x s x median filter 0 and 3
    assert meta.extra["calibration"]["cases"] == 2
    assert set(meta.extra["validation"]["classifier_auc"]) == {"0", "250", "500"}
    card = (out / "README.md").read_text()
    for text in ("## Training data", "2 validation (never trained on)", "Median baseline (the same cases)",
                 "Classifier AUC (validation split)", "GAN losses off"):
        assert text in card, text
    # each stage's training precision, on this CPU (auto): the autoencoder always float32
    native = "bfloat16 autocast" if cpu_fast_bf16() else "float32"
    assert "quantisation losses only; float32 |" in card and card.count(f"structures; {native}") == 2
    assert "Not evaluated" not in card and meta.summary and meta.intended_use and meta.limitations
    # the project's own phantoms: the project's licence, no real scan in training or evaluation
    assert meta.licence == "Apache-2.0" and meta.training_data["real_scans"] == 0
    assert meta.evaluation["real_scans"].startswith("not evaluated")
    assert meta.extra["train_all"]["plan"]["prepare"]["data"] == data.name  # no absolute local path travels
    # the bundle's changelog: each stage, the calibration, then train all's own entry at the bundle's version
    changes = [e["change"].split(":")[0] for e in meta.changelog]
    assert changes[-2:] == ["calibrated by sweep", "train all"] and meta.changelog[-1]["version"] == "0.1.0"
    stage_seconds = meta.extra["train_all"]["stage_seconds"]
    assert set(stage_seconds) == {"prepare", "autoencoder", "denoiser", "classifier", "calibrate", "bundle"}
    assert "| autoencoder |" in (out / "training.md").read_text() and "Median baseline on the same cases" in printed
    # it runs
    case = data / split["validation"][0]
    assert main(["run", "--bundle", str(out), "--input", str(case / "ct.nii.gz"), "--totalseg",
                 str(case / "segmentations"), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 0
    assert (tmp_path / "run" / "heatmap.nii.gz").is_file()
    # a rerun: every stage done, nothing trained or rewritten
    before = _stamps(out)
    work = {p: p.stat().st_mtime_ns for p in (tmp_path / "bundle.work").glob("*/*.safetensors")}
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "nothing to train" in printed and "[2/6]" not in printed
    assert _stamps(out) == before
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "bundle.work").glob("*/*.safetensors")} == work
    # a changed stage setting is refused, naming the stage and how to redo it
    assert main([*argv, "--denoiser-iterations", "4"]) == 2
    assert "--from-stage denoiser" in capsys.readouterr().err
    # --from-stage bundle applies a new name and version (they were ignored: issue 35)
    assert main([*argv, "--from-stage", "bundle", "--name", "renamed", "--version", "9.9.9"]) == 0
    assert (read_meta(out).name, read_meta(out).version) == ("renamed", "9.9.9")
    # --synthesizer (issue 38) adds the lesion synthesizer to the same bundle: one more stage, the rest kept
    (out / "my notes.txt").write_text("mine")  # a user's file in --out: never removed
    capsys.readouterr()
    assert main([*argv, "--name", "renamed", "--version", "9.9.9", "--synthesizer", "--synthesizer-iterations",
                 "2"]) == 0
    printed = capsys.readouterr().out
    assert "[6/7] synthesizer" in printed and "[7/7] bundle" in printed and "[2/7]" not in printed
    meta = read_meta(out)
    assert set(load_bundle(out, manifest=None, parts=("synthesizer",)).networks) == {"synthesizer"}
    assert meta.recommended == rec and meta.extra["synthesizer_training"]["iterations"] == 2
    assert "## Lesion synthesizer" in (out / "README.md").read_text()  # its card section
    assert main([*argv, "--name", "renamed", "--version", "9.9.9"]) == 0  # without it: the bundle without it
    assert "synthesizer" not in read_meta(out).networks and not (out / "synthesizer.safetensors").exists()
    assert (out / "my notes.txt").read_text() == "mine"
    # --synthetic-unhealthy (issue 38): a changed classifier stage, refused until it is redone; then padded
    padded = [*argv, "--name", "renamed", "--version", "9.9.9", "--synthetic-unhealthy", "3"]
    assert main(padded) == 2 and "--from-stage classifier" in capsys.readouterr().err
    assert main([*padded, "--from-stage", "classifier"]) == 0
    labels = (tmp_path / "bundle.work" / "padded" / "labels.csv").read_text()
    assert labels.count("synthetic-") == 3 and "and 3 synthesised unhealthy ones" in (out / "README.md").read_text()


def _to_kits(case, dest):
    """A phantom case in the KiTS layout: imaging.nii.gz, segmentation.nii.gz (1 kidney, 2 tumour)."""
    dest.mkdir(parents=True)
    shutil.copy(case / "ct.nii.gz", dest / "imaging.nii.gz")
    kidney = sum(sitk.GetArrayFromImage(sitk.ReadImage(str(case / "segmentations" / f"kidney_{s}.nii.gz")))
                 for s in ("left", "right")) > 0
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "lesions.nii.gz"))) > 0
    seg = np.where(lesion, 2, np.where(kidney, 1, 0)).astype(np.uint8)
    img = sitk.GetImageFromArray(seg)
    img.CopyInformation(sitk.ReadImage(str(case / "lesions.nii.gz")))
    sitk.WriteImage(img, str(dest / "segmentation.nii.gz"))


@pytest.mark.slow
def test_dry_run_split_folders_kits_and_derived_labels(data, tmp_path, capsys):
    root = tmp_path / "split"
    for i in range(4):  # phantom cases without labels.csv: labels derived from the lesions
        shutil.copytree(data / f"kidney-{i:05d}", root / "train" / f"kidney-{i:05d}")
    for i in (4, 5):
        _to_kits(data / f"kidney-{i:05d}", root / "val" / f"case_{i:05d}")
    shutil.copytree(data / "kidney-00006", root / "test" / "kidney-00006")  # never read
    assert main(["train", "all", "--data", str(root), "--out", str(tmp_path / "b"), *FAST, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "4 training, 2 validation (the validation split folder); 1 test cases left untouched" in printed
    assert "layouts: kits, phantom" in printed and "derived from the lesion labels" in printed
    with open(data / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    expected = {split: {lab: sum(r["label"] == lab for r in rows if r["case"] in cases) for lab in
                        ("healthy", "unhealthy")}
                for split, cases in (("train", {f"kidney-{i:05d}" for i in range(4)}),
                                     ("validation", {"kidney-00004", "kidney-00005"}))}
    for split, counts in expected.items():
        line = next(line for line in printed.splitlines() if line.split()[:1] == [split] and len(line.split()) == 5)
        assert line.split()[1:3] == [str(counts["healthy"]), str(counts["unhealthy"])], (line, counts)
    assert "too few" in printed and "autoencoder" in printed and not (tmp_path / "b").exists()
    assert not (tmp_path / "b.work").exists()
    # two validation cases of two lesions each: every size class has fewer than 5, and train all says so
    sizes = next(line for line in printed.splitlines() if line.startswith("validation lesions by size: "))
    assert sum(int(part.split()[-1]) for part in sizes.split(": ", 1)[1].split(", ")) == 4
    assert "warning: the validation split has fewer than 5 lesions in size class(es) T1ai (<=2 cm): " in printed


def test_labels_rows_that_cannot_be_used_are_named_and_nothing_is_left_behind(data, tmp_path, capsys):
    from DiffusionAnomalyLib.detection.presets import get_preset
    from DiffusionAnomalyLib.training.recipe.layouts import read_labels_file

    root = tmp_path / "d"
    for i in range(3):
        shutil.copytree(data / f"kidney-{i:05d}", root / f"kidney-{i:05d}")
    (root / "labels.csv").write_text("case,structure,label\nkidney-00000,left,healthy\nkidney-00000,kidney_right,"
                                     "healthy\nkidney-00001,kidney_left,sick\nkidney-00009,kidney_left,healthy\n"
                                     "kidney-00002,liver,healthy\n")
    rows = read_labels_file(root / "labels.csv", get_preset("kidney"), {f"kidney-{i:05d}" for i in range(3)})
    assert rows.labels == {("kidney-00000", "kidney_right"): "healthy"} and rows.other_organs == 1  # liver ignored
    assert rows.unusable == [
        "labels.csv line 2 (kidney-00000,left,healthy): unknown structure 'left' for the kidney; a structure is the "
        "segmentation file's name: kidney_left or kidney_right",
        "labels.csv line 4 (kidney-00001,kidney_left,sick): unknown label 'sick' (use healthy, unhealthy, excluded, "
        "unknown)",
        "labels.csv line 5 (kidney-00009,kidney_left,healthy): no case 'kidney-00009' in the dataset"]
    # training stops before reading a case, names the rows, and leaves nothing behind
    assert main(["train", "all", "--data", str(root), "--out", str(tmp_path / "b"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "3 unusable row(s)" in err and "line 2" in err and "--dry-run lists them all" in err
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.work").exists()


def test_only_phantoms_that_say_synthetic_count_as_synthetic(tmp_path):
    """A folder in the phantom layout may hold real scans: the card says Apache-2.0 and 0 real scans only when
    every case's case.json comes from the phantom generator."""
    from DiffusionAnomalyLib.training.recipe.card import _all_synthetic
    from DiffusionAnomalyLib.training.recipe.layouts import Prepared

    for split, case in (("train", "a"), ("validation", "b")):
        (tmp_path / split / case).mkdir(parents=True)
        (tmp_path / split / case / "case.json").write_text(json.dumps({"synthetic": True}))
    prepared = Prepared(tmp_path / "train", tmp_path / "validation", {}, {"train": ["a"], "validation": ["b"]}, [],
                        [], "", "", ["phantom"], "")
    assert _all_synthetic(prepared)
    (tmp_path / "validation" / "b" / "case.json").unlink()  # a real scan in the same layout
    assert not _all_synthetic(prepared)


def test_the_card_says_real_only_when_the_user_declares_it(tmp_path, caplog):
    """Cases from another generator (no phantom case.json) were counted as real scans (issue 36): the card now
    says real only with --real-data, synthetic with --synthetic-data or for the phantom command's own cases, else
    unknown."""
    from DiffusionAnomalyLib.app.cli import build_parser
    from DiffusionAnomalyLib.models.bundle import BundleMeta
    from DiffusionAnomalyLib.models.modelcard import render
    from DiffusionAnomalyLib.training.recipe.card import _card
    from DiffusionAnomalyLib.training.recipe.layouts import Prepared
    from DiffusionAnomalyLib.training.recipe.plan import Stages, TrainAllPlan

    cases = {"train": [f"t{i}" for i in range(45)], "validation": [f"v{i}" for i in range(15)]}
    for split, members in cases.items():
        for c in members:
            (tmp_path / split / c).mkdir(parents=True)
    prepared = Prepared(tmp_path / "train", tmp_path / "validation", {s: {"healthy": 1} for s in cases}, cases, [],
                        [], "labels.csv", "masks", ["phantom"], "rule")

    def card(real_data):
        plan = TrainAllPlan(str(tmp_path), "kidney", str(tmp_path / "out"), real_data=real_data)
        meta = BundleMeta("m", "0.1.0", "kidney", "CT", ["ct"], {})
        _card(plan, plan.resolved(), prepared, meta, Stages(tmp_path), None, {})
        return meta

    unknown = card(None)
    assert unknown.training_data["real_scans"].startswith("unknown") and "--real-data" in unknown.training_data[
        "real_scans"]
    assert unknown.evaluation["real_scans"].startswith("unknown")
    assert "| Real scans | unknown" in render(unknown) and "| Real scans | 60 |" not in render(unknown)
    assert card(True).training_data["real_scans"] == 60
    assert card(True).evaluation["real_scans"] == "the 15 validation cases above"
    declared = card(False)
    assert declared.training_data["real_scans"] == 0 and declared.evaluation["real_scans"] == (
        "not evaluated: synthetic data only")
    assert declared.licence.startswith("not set")  # another generator's data: its terms, not the project's licence
    for split, members in cases.items():  # the phantom command's own cases: synthetic, whatever is declared
        for c in members:
            (tmp_path / split / c / "case.json").write_text(json.dumps({"synthetic": True}))
    assert card(None).training_data["real_scans"] == 0 and card(None).licence == "Apache-2.0"
    assert card(True).training_data["real_scans"] == 0 and "the card says synthetic" in caplog.text
    # the declaration on the command line
    base = ["train", "all", "--data", "d", "--organ", "kidney", "--out", "o"]
    assert build_parser().parse_args(base).real_data is None
    assert build_parser().parse_args([*base, "--real-data"]).real_data is True
    assert build_parser().parse_args([*base, "--synthetic-data"]).real_data is False
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--real-data", "--synthetic-data"])
    assert "real_data" not in TrainAllPlan("d", "kidney", "o").resolved()["bundle"]  # earlier work folders resume


def test_the_calibration_estimate_counts_the_post_processing_points(tmp_path):
    """The liver's demo calibration took 54 minutes against an estimate of 5: its 100 post-processing points on
    30 cases were not counted. They are now, per case and point."""
    from DiffusionAnomalyLib.training.recipe.estimate import POSTPROCESSING_S, estimate
    from DiffusionAnomalyLib.training.recipe.layouts import Prepared

    prepared = Prepared(tmp_path, tmp_path, {}, {"train": ["a"] * 8, "validation": ["v"] * 30}, [], [], "", "",
                        ["phantom"], "")
    cal = {"noise_levels": [250], "guidance": [0.0], "steps": 50, "sampler": "ddpm", "samples_values": [1],
           "threshold_scales": [1.0], "min_lesion_ml_values": [0.5], "grow_to_values": [1.0]}
    resolved = {"calibrate": cal, **{k: {"iterations": 10} for k in ("autoencoder", "denoiser", "classifier")}}
    per_it = {"autoencoder": 1.0, "denoiser": 1.0, "classifier": 1.0, "denoise_step": 0.01}
    one = estimate(resolved, prepared, per_it, 1, 0.1)["calibrate"]
    wide = {**cal, "threshold_scales": [0.8, 0.9, 1.0, 1.15, 1.3], "min_lesion_ml_values": [0.5, 1, 2, 4, 8],
            "grow_to_values": [1, 0.85, 0.7, 0.55]}
    assert estimate({**resolved, "calibrate": wide}, prepared, per_it, 1, 0.1)["calibrate"] - one == \
        pytest.approx(30 * 99 * POSTPROCESSING_S)


def test_the_fine_preset_trains_a_finer_latent_on_windows_clipped_to_it(data, tmp_path, capsys):
    """--preset tiny-fine (issue 37): the tiny-2x autoencoder (one stride-2 level), the tiny-3level denoiser trained on
    16-voxel latent windows, each axis at most the latent grid; the dry run times those shapes and names them."""
    from DiffusionAnomalyLib.models.nets.autoencoder import autoencoder_config
    from DiffusionAnomalyLib.training.recipe.card import _windows
    from DiffusionAnomalyLib.training.recipe.plan import TrainAllPlan, latent_crop

    fine = TrainAllPlan("d", "kidney", "o", preset="tiny-fine").resolved()
    assert (fine["autoencoder"]["network"], fine["denoiser"]["network"]) == ("tiny-2x", "tiny-3level")
    assert autoencoder_config("tiny-2x", in_channels=1).downsampling == 2  # 2 mm patches: a 4 mm latent grid
    assert latent_crop(fine, "kidney") == (16, 16, 16)  # of 32 x 24 x 24
    assert (fine["autoencoder"]["iterations"], fine["denoiser"]["iterations"]) == (3000, 4500)  # issue 37: longer
    coarse = TrainAllPlan("d", "kidney", "o", preset="tiny-fine", spacing=4.0).resolved()
    assert latent_crop(coarse, "kidney") == (16, 12, 12)  # the 16 x 12 x 12 grid of 4 mm patches, whole in Y and X
    tiny = TrainAllPlan("d", "kidney", "o").resolved()
    assert latent_crop(tiny, "kidney") is None and "latent_crop" not in tiny["denoiser"]  # old work folders resume
    assert _windows(SimpleNamespace(extra={"denoiser_training": {"latent_crop": [16, 12, 12]}})) == \
        ", on 16 x 12 x 12 latent windows"  # the model card says so
    assert _windows(SimpleNamespace(extra={"denoiser_training": {"latent_crop": None}})) == ""
    assert main(["train", "all", "--data", str(data), "--out", str(tmp_path / "b"), *FAST, "--preset", "tiny-fine",
                 "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "preset tiny-fine" in printed and "tiny-2x" in printed and "tiny-3level" in printed
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.work").exists()


def test_split_is_deterministic_stratified_and_independent_of_order():
    from DiffusionAnomalyLib.training.recipe.layouts import split_cases

    labels = {f"c{i}": {"kidney_left": "unhealthy" if i % 3 == 0 else "healthy", "kidney_right": "healthy"}
              for i in range(30)}
    val = split_cases(labels, 0.2)
    assert val == split_cases(dict(reversed(list(labels.items()))), 0.2)
    unhealthy = {c for c, v in labels.items() if "unhealthy" in v.values()}
    assert len(val & unhealthy) == 2 and len(val - unhealthy) == 4
    assert split_cases(labels, 0.0) == set()


def test_a_failed_stage_leaves_no_empty_work_folder(tmp_path):
    from DiffusionAnomalyLib.errors import InputError
    from DiffusionAnomalyLib.training.autoencoder import AutoencoderTraining, train_autoencoder

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError):
        train_autoencoder(AutoencoderTraining(str(tmp_path / "empty"), "kidney", str(tmp_path / "ae"),
                                              iterations=1, device="cpu"))
    assert not (tmp_path / "ae.work").exists()


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "denoiser", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 2000)" in text and "(default: 8)" in text  # DenoiserTraining's own defaults
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 100 250 500)" in text


def test_train_all_options_are_the_plans_fields_declared_once(capsys):
    """``train all``'s parser is generated from :class:`TrainAllPlan`: every option is a field, the grid shares
    ``sweep``'s declaration (same range, same message), the stage options the training stages', and the plan
    built from argv is the one built in Python."""
    from dataclasses import fields

    from DiffusionAnomalyLib.app.cli import build_parser
    from DiffusionAnomalyLib.options import given
    from DiffusionAnomalyLib.training.recipe import TrainAllPlan

    argv = ["train", "all", "--data", "d", "--organ", "liver", "--out", "o", "--denoiser-iterations", "7",
            "--guidance-values", "0", "50", "--synthetic-data", "--reference-values", "autoencoder"]
    plan = TrainAllPlan(**given(build_parser().parse_args(argv), TrainAllPlan, "all"))
    assert plan == TrainAllPlan("d", "liver", "o", denoiser_iterations=7, guidance_values=(0.0, 50.0),
                                real_data=False, reference_values=("autoencoder",))
    resolved = plan.resolved()
    assert resolved["denoiser"]["iterations"] == 7 and resolved["autoencoder"]["iterations"] == 3000
    assert resolved["calibrate"]["guidance"] == [0.0, 50.0] and resolved["bundle"]["real_data"] is False
    assert json.loads(json.dumps(resolved)) == resolved  # what stages.json stores compares equal on resume
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["train"]._subparsers
             ._group_actions[0].choices["all"]._actions} - {"help", "debug", "dry_run", "from_stage"}
    assert flags == {f.name for f in fields(TrainAllPlan)}
    for option, value in (("--grow-to-values", "0"), ("--samples-values", "0"), ("--noise-levels", "1000")):
        messages = []
        for command in (["sweep", "--data", "d", "--bundle", "b", "--out", "o"],
                        ["train", "all", "--data", "d", "--organ", "kidney", "--out", "o"]):
            with pytest.raises(SystemExit) as exc:
                main([*command, option, value])
            assert exc.value.code == 2
            messages.append(capsys.readouterr().err.splitlines()[-1].split(": ", 2)[-1])
        assert messages[0] == messages[1], (option, messages)
    with pytest.raises(SystemExit):
        main(["train", "all", "--data", "d", "--organ", "kidney", "--out", "o", "--real-data", "--synthetic-data"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_gan_schedule_is_reported():
    from DiffusionAnomalyLib.training.autoencoder import gan_schedule

    assert gan_schedule(10_000, 3000).startswith("off") and "3000" in gan_schedule(10_000, 3000)
    assert gan_schedule(3, 6) == "on from iteration 4 of 6"
    assert json.dumps(gan_schedule(0, 1))


@pytest.mark.slow
def test_train_all_under_torchrun_with_two_processes(data, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO

    from DiffusionAnomalyLib.models.bundle import load_bundle

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571",
         "-m", "DiffusionAnomalyLib", "train", "all", "--data", str(data), "--out", str(out), *FAST],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout + proc.stderr
    assert "[rank 1] maps" in printed and printed.count("[6/6] bundle") == 1  # the sweep sharded, one writer
    bundle = load_bundle(out, manifest=None)
    assert set(bundle.networks) == {"autoencoder", "denoiser", "classifier"} and (out / "README.md").is_file()
    assert not list((tmp_path / "dist.work").glob(".run-*"))


def _write_like(values, like: Path, dest: Path) -> None:
    img = sitk.GetImageFromArray(values)
    img.CopyInformation(sitk.ReadImage(str(like)))
    sitk.WriteImage(img, str(dest))


@pytest.mark.slow
def test_dry_run_reads_the_lits_layout_with_derived_labels(tmp_path, capsys):
    """LiTS: flat volume-N.nii.gz / segmentation-N.nii.gz (1 liver, 2 tumour); the organ mask and the labels come
    from the segmentation; a label value LiTS does not define is named."""
    phantoms = write_dataset("liver", tmp_path / "ph", [0, 1, 2, 3])
    root = tmp_path / "lits"
    root.mkdir()
    unhealthy = 0
    for n, case in enumerate(sorted(p for p in phantoms.iterdir() if p.is_dir())):
        shutil.copy(case / "ct.nii.gz", root / f"volume-{n}.nii.gz")
        liver = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "segmentations" / "liver.nii.gz"))) > 0
        lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "lesions.nii.gz"))) > 0
        unhealthy += bool((lesion & liver).any())
        _write_like(np.where(lesion & liver, 2, np.where(liver, 1, 0)).astype(np.uint8), case / "lesions.nii.gz",
                    root / f"segmentation-{n}.nii.gz")
    assert main(["train", "all", "--data", str(root), "--organ", "liver", "--out", str(tmp_path / "b"),
                 "--val-fraction", "0.25", "--device", "cpu", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "layouts: lits" in printed and "derived from the lesion labels" in printed
    counts = [line.split() for line in printed.splitlines() if line.split()[:1] in (["train"], ["validation"])
              and len(line.split()) == 5]
    assert sum(int(c[1]) for c in counts) == 4 - unhealthy and sum(int(c[2]) for c in counts) == unhealthy
    # a value LiTS does not define (3) makes that case unusable, named with the file
    seg = root / "segmentation-0.nii.gz"
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(seg)))
    arr.flat[np.flatnonzero(arr == 1)[0]] = 3
    _write_like(arr, seg, seg)
    assert main(["train", "all", "--data", str(root), "--organ", "liver", "--out", str(tmp_path / "b"),
                 "--val-fraction", "0.25", "--device", "cpu", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "not usable: " in printed and "segmentation-0.nii.gz: label values [3]" in printed


@pytest.mark.slow
def test_dry_run_reads_the_brats_layout(tmp_path, capsys):
    """BraTS: <case>/<case>-t1n.nii.gz ... -t2f and <case>-seg.nii.gz; the brain mask is the skull-stripped scans'
    nonzero voxels, every nonzero label a lesion."""
    phantoms = write_dataset("brain", tmp_path / "ph", [0, 1, 2])
    root = tmp_path / "brats" / "train"
    unhealthy = 0
    for case in sorted(p for p in phantoms.iterdir() if p.is_dir()):
        name = f"BraTS-{case.name}"
        (root / name).mkdir(parents=True)
        for ch in ("t1n", "t1c", "t2w", "t2f"):
            shutil.copy(case / f"{ch}.nii.gz", root / name / f"{name}-{ch}.nii.gz")
        lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "lesions.nii.gz"))) > 0
        unhealthy += bool(lesion.any())
        _write_like(np.where(lesion, 2, 0).astype(np.uint8), case / "lesions.nii.gz",
                    root / name / f"{name}-seg.nii.gz")
    assert main(["train", "all", "--data", str(root.parent), "--organ", "brain", "--out", str(tmp_path / "b"),
                 "--val-fraction", "0.34", "--device", "cpu", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "layouts: brats" in printed and "not usable" not in printed
    counts = [line.split() for line in printed.splitlines() if line.split()[:1] in (["train"], ["validation"])
              and len(line.split()) == 5]
    assert sum(int(c[1]) for c in counts) == 3 - unhealthy and sum(int(c[2]) for c in counts) == unhealthy


def test_padding_moves_the_training_splits_own_lesions_into_its_healthy_structures(data, tmp_path):
    """--synthetic-unhealthy's set: the training cases as they are, plus synthetic cases each with one unhealthy
    structure whose lesion is a training lesion moved (its volume kept within the resampling and the cut), pasted
    (the host's scan changed only near it); the cases left out (validation) are never read; reruns keep it."""
    from scipy import ndimage

    from DiffusionAnomalyLib.training.recipe.padding import padded_training_set, training_lesions

    train = tmp_path / "train"
    train.mkdir()
    with open(data / "labels.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["case"] < "kidney-00005"]
    for case in sorted({r["case"] for r in rows}):
        shutil.copytree(data / case, train / case)
    with open(train / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    donors = training_lesions(train, rows)
    assert donors and {d.case for d in donors} <= {r["case"] for r in rows}
    volumes = sorted(int(d.mask.sum()) for d in donors)
    out = padded_training_set(train, tmp_path / "padded", "kidney", 3, seed=5, progress=lambda s: None)
    with open(out / "labels.csv") as f:
        padded_rows = list(csv.DictReader(f))
    synthetic = [r for r in padded_rows if r["case"].startswith("synthetic-")]
    assert len(synthetic) == 3 and {r["label"] for r in synthetic} == {"unhealthy"}
    assert len(padded_rows) == len(rows) + 3 and not (out / "kidney-00005").exists()
    for r in synthetic:
        case = out / r["case"]
        record = json.loads((case / "synthesis.json").read_text())
        host = Path(record["inputs"][0]["path"]).parent
        assert host.parent == train and host.name < "kidney-00005"
        lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "lesions.nii.gz"))) > 0
        organ = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "segmentations" / f"{r['structure']}.nii.gz"))) > 0
        assert lesion.any() and not (lesion & ~organ).any()
        assert 0.3 * volumes[0] <= lesion.sum() <= 1.5 * volumes[-1]
        before = sitk.GetArrayFromImage(sitk.ReadImage(str(host / "ct.nii.gz")))
        after = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "ct.nii.gz")))
        changed = after != before
        assert changed[lesion].mean() > 0.5 and not (changed & ~ndimage.binary_dilation(lesion, iterations=4)).any()
    assert all(json.loads((out / r["case"] / "synthesis.json").read_text())["padding"]["donor_case"] <
               "kidney-00005" for r in synthetic)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("synthetic-*/ct.nii.gz")}
    padded_training_set(train, out, "kidney", 3, seed=5, progress=lambda s: None)
    assert {p: p.stat().st_mtime_ns for p in out.glob("synthetic-*/ct.nii.gz")} == stamps


def test_a_donor_lesion_holds_only_its_own_region(tmp_path):
    """Another lesion inside a lesion's bounding box is not part of it (the hostile rerun's L-shape)."""
    from DiffusionAnomalyLib.training.recipe.padding import training_lesions

    labels = np.zeros((12, 12, 12), np.uint8)
    labels[2, 2:10, 2] = 1
    labels[2, 9, 2:10] = 1  # an L
    labels[6:8, 4:6, 4:6] = 1  # a separate blob inside the L's box (not touching it)
    (tmp_path / "c").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(tmp_path / "c" / "lesions.nii.gz"))
    donors = training_lesions(tmp_path, [{"case": "c", "structure": "kidney_left", "label": "unhealthy"}])
    assert sorted(int(d.mask.sum()) for d in donors) == [8, 15]


def test_padding_or_a_synthesizer_without_lesion_labels_is_refused_before_training(data, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(data, bare)
    for f in bare.glob("*/lesions.nii.gz"):
        f.unlink()
    (bare / "labels.csv").unlink()  # labels derived: every structure healthy, no lesion labelled
    for flag in (["--synthetic-unhealthy", "2"], ["--synthesizer"]):
        assert main(["train", "all", "--data", str(bare), "--out", str(tmp_path / "b"), *FAST, *flag,
                     "--dry-run"]) == 2
        assert f"{flag[0]} need(s) lesion labels" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_dry_run_times_the_networks_once_per_process_and_training_times_them_afresh():
    """A dry run repeated from Python (e.g. while a dataset is edited) reuses the first timing of the same networks,
    whatever the data and iteration counts; the figures are measured ones (a second measurement would not repeat
    them to the last digit). The earlier dry-run tests of this file have usually timed this configuration already."""
    import torch

    from DiffusionAnomalyLib.training.recipe import estimate
    from DiffusionAnomalyLib.training.recipe.plan import TrainAllPlan

    cpu = torch.device("cpu")
    first = estimate.dry_run_seconds_per_iteration(TrainAllPlan("d", "kidney", "o").resolved(), "kidney", cpu)
    assert set(first) == {"autoencoder", "denoiser", "classifier", "denoise_step"} and min(first.values()) > 0
    first["denoiser"] = -1.0  # a copy: the caller cannot change what the next dry run reads
    other_data = TrainAllPlan("elsewhere", "kidney", "o2", iterations=10).resolved()
    again = estimate.dry_run_seconds_per_iteration(other_data, "kidney", cpu)
    assert again["denoiser"] > 0 and again == {**first, "denoiser": again["denoiser"]}
