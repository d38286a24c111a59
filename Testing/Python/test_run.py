"""`diffusion-anomaly run` with a model bundle: a small bundle with untrained weights checks the
plumbing (geometry, outputs, settings, errors), not detection quality."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DiffusionAnomalyLib.app.cli import main
from DiffusionAnomalyLib.imaging.io import same_grid


@pytest.mark.parametrize("extra", [[], ["--sampler", "ddpm", "--guidance", "5"],
                                   ["--sampler", "inpaint", "--resample-jumps", "2"],
                                   ["--reference", "autoencoder"]],
                         ids=["ddim-defaults", "ddpm-guided", "inpaint", "ae-reference"])
def test_run_writes_outputs_on_the_input_grid(tiny_bundle, kidney_case, tmp_path, capsys, extra):
    _, folder = kidney_case
    out = tmp_path / "out"
    rc = main(["run", "--bundle", str(tiny_bundle), "--input", str(folder / "ct.nii.gz"), "--totalseg",
               str(folder / "segmentations"), "--out", str(out), "--device", "cpu", *extra])
    stdout = capsys.readouterr().out
    assert rc == 0 and "DEMO bundle" in stdout
    ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
    for name in ("heatmap.nii.gz", "lesions.nii.gz", "reconstruction.nii.gz"):
        assert same_grid(ct, sitk.ReadImage(str(out / name))) == []
    run = json.loads((out / "run.json").read_text())
    assert run["inputs"]["bundle"]["name"] == "kidney-untrained" and len(run["inputs"]["bundle"]["sha256"]) == 64
    sampler = run["parameters"]["sampler"]
    assert sampler["method"] == (extra[1] if extra and extra[0] == "--sampler" else "ddim")
    assert sampler["noise_level"] == 50 and sampler["steps"] == 5
    assert run["parameters"]["reconstructor"] == "latent-diffusion" and run["parameters"]["network_evaluations"] > 0
    assert run["preset"]["spacing_mm"] == [4.0, 4.0, 4.0]


@pytest.mark.parametrize("extra,code,match", [
    (["--noise-level", "1000"], 2, r"--noise-level: noise level L must be in 1..999 \(got 1000\)"),
    (["--guidance=-1"], 2, r"--guidance: guidance strength must be a finite number >= 0 \(got -1.0\)"),
    (["--min-lesion-ml=-1"], 2, r"--min-lesion-ml: the minimum lesion volume \(ml\) must be a finite number >= 0"),
    (["--grow-to", "0"], 2, r"--grow-to: grow-to must be in \(0, 1\]"),
    (["--samples", "0"], 2, r"--samples: samples must be in 1..64 \(got 0\)"),
    (["--median-filter=-1"], 2, r"--median-filter: the median filter \(voxels\) must be in 0..15"),
    (["--device", "cuda"], 2, "CUDA was asked for") if not torch.cuda.is_available() else
    (["--steps", "0"], 2, r"--steps: steps must be in 1..999 \(got 0\)"),
])
def test_run_bad_settings(tiny_bundle, kidney_case, tmp_path, capsys, extra, code, match):
    _, folder = kidney_case
    try:  # options out of range are refused by the parser (SystemExit 2), the rest by the run
        rc = main(["run", "--bundle", str(tiny_bundle), "--input", str(folder / "ct.nii.gz"), "--totalseg",
                   str(folder / "segmentations"), "--out", str(tmp_path / "out"), *extra])
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == code and __import__("re").search(match, err), err
    assert not (tmp_path / "out").exists()


def test_run_with_a_bundle_for_another_modality(tiny_bundle, tmp_path, capsys):
    from DiffusionAnomalyLib.synthetic.phantoms import make_phantom, write_phantom

    case = write_phantom(make_phantom("brain", 1, 0), tmp_path / "brain")
    inputs = [str(case / f"{c}.nii.gz") for c in ("t1n", "t1c", "t2w", "t2f")]
    rc = main(["run", "--bundle", str(tiny_bundle), "--input", *inputs, "--skull-stripped",
               "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "4 input files for 1 channels" in err
    assert not (tmp_path / "out").exists()


def test_missing_bundle_has_its_own_exit_code(kidney_case, tmp_path, capsys):
    _, folder = kidney_case
    rc = main(["run", "--bundle", str(tmp_path / "nope"), "--input", str(folder / "ct.nii.gz"), "--out",
               str(tmp_path / "o")])
    assert rc == 3 and "model bundle not found" in capsys.readouterr().err


def test_modality_that_does_not_fit_the_bundle_is_refused_unless_overridden(tiny_bundle, tmp_path, capsys):
    from DiffusionAnomalyLib.synthetic.phantoms import make_phantom, write_phantom

    case = write_phantom(make_phantom("brain", 2, 0), tmp_path / "brain")
    mask = case / "segmentations" / "brain.nii.gz"
    args = ["run", "--bundle", str(tiny_bundle), "--input", str(case / "t1n.nii.gz"), "--mask", str(mask),
            "--device", "cpu"]
    rc = main([*args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "t1n.nii.gz: does not look like CT in Hounsfield units" in err
    assert not (tmp_path / "out").exists()
    # the override runs it (one "kidney" from the whole-brain mask); meaningless, but the user asked
    assert main([*args, "--out", str(tmp_path / "forced"), "--skip-modality-check"]) == 0


def test_trajectory_output_and_deterministic_flag(tiny_bundle, kidney_case, tmp_path, capsys):
    import torch

    _, folder = kidney_case
    out = tmp_path / "out"
    try:
        rc = main(["run", "--bundle", str(tiny_bundle), "--input", str(folder / "ct.nii.gz"), "--totalseg",
                   str(folder / "segmentations"), "--out", str(out), "--device", "cpu", "--sampler", "ddpm",
                   "--noise-level", "40", "--steps", "8", "--trajectory-every", "2", "--trajectory-heatmap",
                   "--samples", "2", "--deterministic"])
    finally:
        torch.use_deterministic_algorithms(False)  # process-wide state: do not leak into other tests
    assert rc == 0, capsys.readouterr().err
    from helpers import read_volume_sequence

    ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
    recon = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "reconstruction.nii.gz")))
    frames, fields, grid = read_volume_sequence(out / "trajectory.seq.nrrd")
    assert frames.shape == (4, *recon.shape)  # 8 steps, every 2nd, on the input's grid
    assert grid.GetOrigin() == ct.GetOrigin() and grid.GetSpacing() == ct.GetSpacing()
    assert fields["axis 3 index values"] == "0 2 4 6" and fields["DiffusionAnomaly.noise_levels"] == "40 30 20 10"
    assert fields["axis 3 item 0002 DiffusionAnomaly.noise_level"] == "20"
    heat_frames, _, _ = read_volume_sequence(out / "trajectory_heatmap.seq.nrrd")
    assert heat_frames.shape == frames.shape and heat_frames.min() >= 0
    src = sitk.GetArrayFromImage(ct).astype(np.float32)
    roi_free = np.all(frames == src, axis=0)  # voxels no ROI reaches keep the input's value in every frame
    assert roi_free.mean() > 0.3 and np.all(recon[roi_free] == src[roi_free])
    unc = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "uncertainty.nii.gz")))
    assert np.all(unc[roi_free] == 0) and unc.max() > 0
    run = json.loads((out / "run.json").read_text())
    assert run["parameters"]["deterministic"] is True and run["parameters"]["sampler"]["trajectory_every"] == 2
    assert run["parameters"]["settings"]["trajectory_heatmap"] is True and run["parameters"]["uncertainty_samples"] == 2
    assert {"trajectory.seq.nrrd", "trajectory_heatmap.seq.nrrd", "uncertainty.nii.gz"} <= set(run["outputs"])
    rows = json.loads((out / "lesions.json").read_text())["lesions"]
    assert all(0 <= r["sample_fraction"] <= 1 and r["mean_uncertainty"] >= 0 for r in rows)


def test_run_takes_the_minimum_lesion_volume_from_the_bundle_unless_given(tiny_bundle, kidney_case, tmp_path):
    from DiffusionAnomalyLib.evaluation.sweep import write_calibrated_bundle

    _, folder = kidney_case
    calibrated = write_calibrated_bundle(tiny_bundle, tmp_path / "cal", {
        "sampler": "ddim", "noise_level": 50, "guidance": 0.0, "steps": 5, "threshold": 1e-9, "min_lesion_ml": 1e6})
    common = ["--input", str(folder / "ct.nii.gz"), "--totalseg", str(folder / "segmentations"), "--device", "cpu"]
    runs = {}
    for name, extra in (("bundle", []), ("given", ["--min-lesion-ml", "0"])):
        assert main(["run", "--bundle", str(calibrated), *common, "--out", str(tmp_path / name), *extra]) == 0
        runs[name] = json.loads((tmp_path / name / "run.json").read_text())
        lesions = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name / "lesions.nii.gz")))
        runs[name]["max_label"] = int(lesions.max())
    # threshold ~0: the whole organ is anomalous; a 1e6 ml minimum leaves no lesion, 0 leaves some
    assert runs["bundle"]["parameters"]["postprocessing"]["min_volume_ml"] == 1e6 and runs["bundle"]["max_label"] == 0
    assert runs["given"]["parameters"]["postprocessing"]["min_volume_ml"] == 0 and runs["given"]["max_label"] >= 1


def _reconstructions(bundle, method: str, samples: int, seeds) -> "list":
    import numpy as np

    from DiffusionAnomalyLib.models.bundle import load_bundle
    from DiffusionAnomalyLib.models.diffusion.sampler import SamplerSettings
    from DiffusionAnomalyLib.models.reconstruction import DiffusionReconstructor

    b = load_bundle(bundle)
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 1, 16, 16, 16)).astype(np.float32)
    mask = np.ones((2, 16, 16, 16), np.float32)
    out = []
    for seed in seeds:
        rec = DiffusionReconstructor(b, SamplerSettings(method=method, noise_level=50, steps=5, seed=seed),
                                     samples=samples)
        out.append(rec.reconstruct(x, mask, (4.0, 4.0, 4.0)))
        assert out[-1].shape == x.shape and rec.effective_samples == (1 if method == "ddim" else samples)
    return out


def test_averaging_samples_shrinks_the_spread_of_ddpm_reconstructions(tiny_bundle):
    import numpy as np

    seeds = range(4)
    spread = {k: np.stack(_reconstructions(tiny_bundle, "ddpm", k, seeds)).std(axis=0).mean() for k in (1, 4)}
    # independent draws averaged: the seed-to-seed spread falls about as 1/sqrt(K) (0.5 for K = 4)
    assert 0.3 < spread[4] / spread[1] < 0.7, spread


def test_ddim_is_deterministic_so_it_draws_one_sample(tiny_bundle):
    import numpy as np

    one, four = _reconstructions(tiny_bundle, "ddim", 1, [0])[0], _reconstructions(tiny_bundle, "ddim", 4, [0])[0]
    np.testing.assert_array_equal(one, four)


def test_run_takes_reference_and_samples_from_the_bundle_unless_given(tiny_bundle, kidney_case, tmp_path):
    from DiffusionAnomalyLib.evaluation.sweep import write_calibrated_bundle

    _, folder = kidney_case
    calibrated = write_calibrated_bundle(tiny_bundle, tmp_path / "cal", {
        "sampler": "ddpm", "noise_level": 50, "guidance": 0.0, "steps": 5, "threshold": 0.1,
        "reference": "autoencoder", "samples": 2, "median_filter": 3})
    common = ["--input", str(folder / "ct.nii.gz"), "--totalseg", str(folder / "segmentations"), "--device", "cpu"]
    params, presets = {}, {}
    for name, extra in (("bundle", []), ("given", ["--reference", "input", "--samples", "1", "--median-filter", "0"])):
        assert main(["run", "--bundle", str(calibrated), *common, "--out", str(tmp_path / name), *extra]) == 0
        run = json.loads((tmp_path / name / "run.json").read_text())
        params[name], presets[name] = run["parameters"], run["preset"]
    assert [params["bundle"][k] for k in ("reference", "samples", "median_filter")] == ["autoencoder", 2, 3]
    assert [params["given"][k] for k in ("reference", "samples", "median_filter")] == ["input", 1, 0]
    assert [presets[n]["median_filter_voxels"] for n in ("bundle", "given")] == [3, 0]
    # the K draws of each ROI go through the networks in one batch: no extra network evaluations
    assert params["bundle"]["network_evaluations"] == params["given"]["network_evaluations"]


def test_guidance_above_the_classifiers_training_levels_is_warned_about():
    from DiffusionAnomalyLib.api import guidance_warnings
    from DiffusionAnomalyLib.settings import RunSettings

    trained = {"classifier_training": {"max_level": 300}}
    assert guidance_warnings(trained, RunSettings(noise_level=300, guidance=10.0)) == []
    assert guidance_warnings(trained, RunSettings(noise_level=500, guidance=0.0)) == []  # no classifier used
    assert guidance_warnings({}, RunSettings(noise_level=500, guidance=10.0)) == []  # thesis: every level
    (warning,) = guidance_warnings(trained, RunSettings(noise_level=500, guidance=10.0))
    assert "levels 0..300 only" in warning


def test_guidance_with_a_classifier_near_chance_is_warned_about():
    from DiffusionAnomalyLib.api import guidance_warnings
    from DiffusionAnomalyLib.settings import RunSettings

    weak = {"classifier_training": {"max_level": 1000, "best_val_auc": {"0": 0.59, "250": 0.57, "500": 0.53}}}
    good = {"classifier_training": {"max_level": 1000, "best_val_auc": {"0": 0.92, "250": 0.88, "500": 0.83}}}
    assert guidance_warnings(good, RunSettings(noise_level=250, guidance=100.0)) == []
    assert guidance_warnings(weak, RunSettings(noise_level=250, guidance=0.0)) == []  # unguided: not used
    (warning,) = guidance_warnings(weak, RunSettings(noise_level=300, guidance=100.0))
    assert "t = 250 with AUC 0.57" in warning and "--guidance 0" in warning
    (warning,) = guidance_warnings(weak, RunSettings(noise_level=450, guidance=100.0))  # nearest level: 500
    assert "t = 500 with AUC 0.53" in warning


def test_run_without_a_bundle_uses_the_best_installed_one_for_the_organ(kidney_case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DA_MODELS_DIR", str(tmp_path / "no-user-models"))
    _, folder = kidney_case
    common = ["--input", str(folder / "ct.nii.gz"), "--totalseg", str(folder / "segmentations"), "--device", "cpu"]
    assert main(["run", *common, "--out", str(tmp_path / "x")]) == 2
    assert "run needs --bundle, or --organ" in capsys.readouterr().err
    assert main(["run", "--organ", "kidney", *common, "--out", str(tmp_path / "out"), "--noise-level", "10",
                 "--steps", "2", "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "using the kidney-demo" in out and "a DEMO trained on synthetic phantoms" in out
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["inputs"]["bundle"]["name"] == "kidney-demo"
    from conftest import REPO

    assert main(["run", "--organ", "liver", "--bundle", str(REPO / "Resources" / "Models" / "kidney-demo"), *common,
                 "--out", str(tmp_path / "y")]) == 2
    assert "is for the kidney, not the liver (--organ)" in capsys.readouterr().err
