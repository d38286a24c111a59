"""Training commands on a small phantom dataset (4 mm patches so that it runs in seconds)."""

import csv
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO

from DiffusionAnomalyLib.detection.presets import get_preset
from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.models.bundle import load_bundle
from DiffusionAnomalyLib.synthetic.phantoms import write_dataset
from DiffusionAnomalyLib.training.autoencoder import AutoencoderTraining, train_autoencoder
from DiffusionAnomalyLib.training.classifier import ClassifierTraining, train_classifier
from DiffusionAnomalyLib.training.data import load_patches, save_npz
from DiffusionAnomalyLib.training.denoiser import (
    DenoiserTraining,
    crops_at,
    lesion_free_starts,
    random_crops,
    train_denoiser,
)

COARSE = {"spacing_mm": [4.0, 4.0, 4.0]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset("kidney", tmp_path_factory.mktemp("data") / "ds", list(range(6)))


@pytest.fixture(scope="module")
def ae_bundle(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "ae"
    train_autoencoder(AutoencoderTraining(str(dataset), "kidney", str(out), preset_overrides=COARSE,
                                          iterations=6, val_every=3, adversarial_start=3, device="cpu"))
    return out


def test_autoencoder_bundle_logs_and_gan_phase(ae_bundle):
    b = load_bundle(ae_bundle)
    assert set(b.networks) == {"autoencoder"} and b.preset.spacing_mm == (4.0, 4.0, 4.0)
    log = (ae_bundle / "autoencoder_log.csv").read_text().splitlines()
    header = log[0].split(",")
    rows = [dict(zip(header, r.split(","), strict=True)) for r in log[1:]]
    assert [int(r["iteration"]) for r in rows] == [3, 6]
    assert float(rows[-1]["gan_d"]) > 0  # discriminators active after adversarial_start
    assert (ae_bundle / "autoencoder_loss.png").stat().st_size > 1000
    assert b.meta.latent["shape_zyx"] == [8, 6, 6]


def test_denoiser_and_classifier_extend_the_bundle(dataset, ae_bundle, tmp_path):
    den = tmp_path / "den"
    train_denoiser(DenoiserTraining(str(dataset), str(ae_bundle), str(den), iterations=4, val_every=2, device="cpu"))
    clf = tmp_path / "clf"
    train_classifier(ClassifierTraining(str(dataset), str(den), str(clf), iterations=4, val_every=2, batch_size=4,
                                        device="cpu"))
    b = load_bundle(clf)
    assert set(b.networks) == {"autoencoder", "denoiser", "classifier"}
    assert b.meta.latent["scale_factor"] > 0
    info = b.meta.extra["classifier_training"]["best_val_auc"]
    assert set(info) == {"0", "250", "500"}
    for name in ("autoencoder_log.csv", "denoiser_log.csv", "classifier_log.csv", "classifier_loss.png"):
        assert (clf / name).is_file()
    assert b.meta.extra["classifier_training"]["max_level"] == b.schedule().num_timesteps  # thesis: every level
    # self-contained: one changelog entry per stage, the preset the autoencoder was trained with, the versions
    assert [e["change"].split(":")[0] for e in b.meta.changelog] == [
        "autoencoder trained", "denoiser trained", "classifier trained"]
    assert b.meta.organ_preset == load_bundle(ae_bundle).meta.organ_preset != {}
    assert b.meta.preset() == load_bundle(ae_bundle).preset and {"torch", "monai", "numpy"} <= set(b.meta.software)
    low = tmp_path / "clf-low"
    train_classifier(ClassifierTraining(str(dataset), str(den), str(low), iterations=2, val_every=2, batch_size=4,
                                        max_level=300, device="cpu"))
    assert load_bundle(low).meta.extra["classifier_training"]["max_level"] == 300
    for bad, message in ((0, "outside"), (5000, "outside"), (100, "above --max-level")):
        with pytest.raises(InputError, match=message):
            train_classifier(ClassifierTraining(str(dataset), str(den), str(tmp_path / "bad"), iterations=2,
                                                max_level=bad, device="cpu"))


def test_training_precision_resolves_per_stage(caplog):
    import torch

    from DiffusionAnomalyLib.models.precision import cpu_fast_bf16
    from DiffusionAnomalyLib.training.common import training_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    native = "bf16" if cpu_fast_bf16() else "fp32"
    assert [training_precision("auto", cpu, p) for p in ("denoiser", "classifier")] == [native, native]
    assert training_precision("auto", cpu, "autoencoder") == "fp32"  # the CPU's autocast reaches MONAI's quantiser
    assert training_precision("fp32", cpu, "denoiser") == "fp32"
    assert training_precision("bf16", cpu, "classifier") == "bf16"
    assert training_precision("bf16", cuda, "autoencoder") == "bf16"  # MONAI keeps the quantiser float32 there
    with caplog.at_level(logging.WARNING):
        assert training_precision("bf16", cpu, "autoencoder") == "fp32"
    assert "trains in float32 on cpu" in caplog.text
    with pytest.raises(InputError, match="unknown precision 'fp16'"):
        training_precision("fp16", cpu, "denoiser")


def test_bf16_training_steps_are_recorded_and_keep_float32_weights(dataset, ae_bundle, tmp_path):
    import torch

    assert load_bundle(ae_bundle).meta.extra["autoencoder_training"]["precision"] == "fp32"
    weights = {}
    for precision in ("fp32", "bf16"):
        den, clf = tmp_path / f"den-{precision}", tmp_path / f"clf-{precision}"
        train_denoiser(DenoiserTraining(str(dataset), str(ae_bundle), str(den), iterations=2, val_every=2,
                                        device="cpu", precision=precision))
        train_classifier(ClassifierTraining(str(dataset), str(den), str(clf), iterations=2, val_every=2,
                                            batch_size=4, device="cpu", precision=precision))
        b = load_bundle(clf)
        assert b.meta.extra["denoiser_training"]["precision"] == precision
        assert b.meta.extra["classifier_training"]["precision"] == precision
        weights[precision] = {k: v.detach().clone() for k, v in b.networks["denoiser"].state_dict().items()}
        assert all(v.dtype == torch.float32 for v in weights[precision].values() if v.is_floating_point())
    # the same seed and batches: only the arithmetic of the steps differs, and it does
    assert any(not torch.equal(weights["fp32"][k], weights["bf16"][k]) for k in weights["fp32"])


def test_random_crops_are_windows_of_each_latent():
    import torch

    z = torch.arange(3 * 2 * 8 * 6 * 6, dtype=torch.float32).reshape(3, 2, 8, 6, 6)
    torch.manual_seed(0)
    crops = random_crops(z, (4, 2, 6))
    assert crops.shape == (3, 2, 4, 2, 6)
    for i in range(3):
        z0, y0 = divmod(int(crops[i, 0, 0, 0, 0]) - int(z[i, 0, 0, 0, 0]), 36)
        assert y0 % 6 == 0
        torch.testing.assert_close(crops[i], z[i, :, z0:z0 + 4, y0 // 6:y0 // 6 + 2, :])
    starts = {int(random_crops(z, (4, 2, 6))[0, 0, 0, 0, 0]) for _ in range(40)}
    assert len(starts) > 5  # the windows move


def test_denoiser_on_latent_crops(dataset, ae_bundle, tmp_path):
    out = tmp_path / "den-crop"
    train_denoiser(DenoiserTraining(str(dataset), str(ae_bundle), str(out), latent_crop=(4, 4, 4), iterations=2,
                                    val_every=2, device="cpu"))
    b = load_bundle(out)  # latent (8, 6, 6): trained on 4^3 windows, validated on whole latents
    assert b.meta.extra["denoiser_training"]["latent_crop"] == [4, 4, 4]
    for bad in ((4, 4), (10, 4, 4), (4, 3, 4)):  # wrong rank, larger than the latent, odd for 2x downsampling
        with pytest.raises(InputError, match="latent crop"):
            train_denoiser(DenoiserTraining(str(dataset), str(ae_bundle), str(tmp_path / "bad"), latent_crop=bad,
                                            iterations=1, device="cpu"))


def test_lesion_free_starts_match_a_brute_force_search():
    rng = np.random.default_rng(3)
    latent, crop = (6, 5, 4), (3, 2, 2)
    for margin in (0, 1, 0, 1):
        mask = np.zeros((12, 5, 8), np.uint8)  # the patch grid: 2x, 1x and 2x the latent
        for _ in range(2):
            z, y, x = rng.integers(0, 12), rng.integers(0, 5), rng.integers(0, 8)
            mask[z, y, x] = 1
        occupied = np.zeros(latent, bool)
        for z, y, x in np.argwhere(mask):
            occupied[z // 2, y, x // 2] = True
        grown = occupied.copy()
        if margin:
            for z, y, x in np.argwhere(occupied):
                grown[max(z - 1, 0):z + 2, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = True
        expected = [(a, b, c) for a in range(4) for b in range(4) for c in range(3)
                    if not grown[a:a + 3, b:b + 2, c:c + 2].any()]
        got = [tuple(int(v) for v in row) for row in lesion_free_starts(mask, latent, crop, margin)]
        assert got == expected
    assert len(lesion_free_starts(np.zeros((12, 5, 8), np.uint8), latent, crop)) == 4 * 4 * 3  # healthy: all
    assert len(lesion_free_starts(np.ones((12, 5, 8), np.uint8), latent, crop)) == 0
    with pytest.raises(InputError, match="whole multiple"):
        lesion_free_starts(np.zeros((13, 5, 8), np.uint8), latent, crop)


def test_crops_at_takes_the_windows_it_is_given():
    z = torch.arange(2 * 1 * 6 * 5 * 4, dtype=torch.float32).reshape(2, 1, 6, 5, 4)
    starts = [np.array([[3, 3, 2]]), np.array([[0, 0, 0], [1, 2, 1]])]
    seen = set()
    for _ in range(30):
        w = crops_at(z, (3, 2, 2), starts)
        torch.testing.assert_close(w[0], z[0, :, 3:6, 3:5, 2:4])
        seen.add(int(w[1, 0, 0, 0, 0]))
    assert seen == {int(z[1, 0, 0, 0, 0]), int(z[1, 0, 1, 2, 1])}


def test_denoiser_on_lesion_free_windows(dataset, ae_bundle, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="DiffusionAnomalyLib")
    out = tmp_path / "den-free"
    train_denoiser(DenoiserTraining(str(dataset), str(ae_bundle), str(out), latent_crop=(2, 2, 2),
                                    lesion_free_windows=True, iterations=2, val_every=2, device="cpu"))
    meta = load_bundle(out).meta
    info = meta.extra["denoiser_training"]
    free = info["lesion_free_windows"]
    assert 0 < free["used"] <= free["unhealthy_structures"] and free["empty_lesion_masks"] == 0
    plain = tmp_path / "den-plain"  # without the option: the same healthy split, hence the same scale factor
    train_denoiser(DenoiserTraining(str(dataset), str(ae_bundle), str(plain), latent_crop=(2, 2, 2), iterations=1,
                                    val_every=1, device="cpu"))
    before = load_bundle(plain).meta
    assert meta.latent["scale_factor"] == before.latent["scale_factor"]
    assert info["val_latents"] == before.extra["denoiser_training"]["val_latents"]
    assert info["train_latents"] == before.extra["denoiser_training"]["train_latents"] + free["used"]
    assert any(m.startswith("lesion-free windows:") for m in caplog.messages)
    broken = tmp_path / "broken"  # an unhealthy case without lesions.nii.gz: the option's error names it
    shutil.copytree(dataset, broken, symlinks=True)
    with open(broken / "labels.csv", newline="") as f:
        case = next(r["case"] for r in csv.DictReader(f) if r["label"] == "unhealthy")
    (broken / case / "lesions.nii.gz").unlink()
    with pytest.raises(InputError, match=f"--lesion-free-windows: .*{case}"):
        train_denoiser(DenoiserTraining(str(broken), str(ae_bundle), str(tmp_path / "bad"), latent_crop=(2, 2, 2),
                                        lesion_free_windows=True, iterations=1, device="cpu"))
    for bad in ({"latent_crop": None}, {"class_conditional": True}):
        with pytest.raises(InputError, match="lesion-free-windows"):
            train_denoiser(DenoiserTraining(str(dataset), str(ae_bundle), str(tmp_path / "bad"),
                                            **{"latent_crop": (2, 2, 2), **bad}, lesion_free_windows=True,
                                            iterations=1, device="cpu"))


def test_resume_continues_from_the_checkpoint(dataset, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="DiffusionAnomalyLib")
    out = tmp_path / "ae"
    cfg = AutoencoderTraining(str(dataset), "kidney", str(out), preset_overrides=COARSE, iterations=4, val_every=2,
                              device="cpu")
    train_autoencoder(cfg)
    shutil.rmtree(out)
    cfg.iterations, cfg.resume = 6, True
    train_autoencoder(cfg)
    assert "resumed at iteration 4" in caplog.messages
    rows = csv.DictReader((out / "autoencoder_log.csv").read_text().splitlines())
    assert [int(r["iteration"]) for r in rows] == [2, 4, 6]


def test_torchrun_two_cpu_processes_write_one_bundle(dataset, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29731",
         "-m", "DiffusionAnomalyLib", "train", "autoencoder", "--organ", "kidney", "--data", str(dataset),
         "--out", str(out), "--spacing", "4", "--iterations", "4", "--val-every", "2", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 processes" in r.stdout and r.stdout.count("wrote bundle") == 1
    assert set(load_bundle(out).networks) == {"autoencoder"}


def _write_cache_repeatedly(path: str, value: int, start: float) -> int:
    time.sleep(max(0.0, start - time.time()))  # both processes write at the same moment
    for _ in range(100):
        save_npz(Path(path), x=np.full(20000, value, dtype=np.float32))
    return value


def test_cache_writes_from_two_processes_never_collide(tmp_path):
    """Two torchrun ranks may write the same cache file: each write stays whole, neither fails."""
    path = tmp_path / "case.npz"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:  # no fork under torch
        start = time.time() + 15  # after both spawned workers have imported the library
        assert sorted(pool.map(_write_cache_repeatedly, [str(path)] * 2, [1, 2], [start] * 2)) == [1, 2]
    x = np.load(path)["x"]
    assert x.shape == (20000,) and len(set(x.tolist())) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["case.npz"]  # no temporary files left


def test_dataset_errors(dataset, tmp_path):
    preset = get_preset("kidney").with_overrides(COARSE)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "labels.csv").write_text("case,structure,label\nx,kidney_left,healthy\n")
    with pytest.raises(InputError, match="the dataset is empty"):
        load_patches(empty, preset)
    partial = tmp_path / "partial"
    shutil.copytree(dataset, partial)
    ghost = "ghost,kidney,kidney_left,left,healthy,0\n"
    (partial / "labels.csv").write_text((partial / "labels.csv").read_text() + ghost)
    with pytest.raises(InputError, match=r"lists case\(s\) with no folder: \['ghost'\]"):
        load_patches(partial, preset)
    lines = (dataset / "labels.csv").read_text().splitlines()
    (partial / "labels.csv").write_text("\n".join(line for line in lines if not line.startswith("kidney-00005")) + "\n")
    with pytest.raises(InputError, match=r"missing from labels.csv: \['kidney-00005'\]"):
        load_patches(partial, preset)
    shutil.rmtree(partial / "kidney-00005")
    for f in (partial / "kidney-00004" / "segmentations").glob("kidney_*.nii.gz"):
        f.unlink()  # this case's masks lack the organ
    (partial / "kidney-00004" / "segmentations.nii.gz").unlink()
    data = load_patches(partial, preset)
    assert not any(i.startswith("kidney-00004") for i in data.ids)
    assert any("kidney-00004: skipped" in w for w in data.warnings)


def test_lesion_cell_targets_count_lesion_volume_per_cell():
    from DiffusionAnomalyLib.training.classifier import lesion_cell_targets

    masks = np.zeros((2, 8, 4, 4), np.uint8)
    masks[0, 0:3, 0:2, 0] = 1  # 6 voxels in cell (0, 0, 0) (cells of 4 x 2 x 2 voxels)
    masks[0, 7, 3, 3] = 1  # 1 voxel in cell (1, 1, 1)
    masks[1, 4:8, 2:4, 0:2] = 1  # 16 voxels, all of cell (1, 1, 0)
    cells = lesion_cell_targets(masks, (2, 2, 2), voxel_ml=0.05, min_ml=0.3)
    assert cells.shape == (2, 2, 2, 2) and cells.dtype == np.float32
    assert np.argwhere(cells).tolist() == [[0, 0, 0, 0], [1, 1, 1, 0]]
    assert lesion_cell_targets(masks, (2, 2, 2), voxel_ml=0.05, min_ml=0.05).sum() == 3
    with pytest.raises(InputError, match="not a multiple"):
        lesion_cell_targets(masks, (3, 2, 2), voxel_ml=0.05, min_ml=0.3)


def test_balanced_bce_weighs_lesion_and_background_cells_equally():
    import torch

    from DiffusionAnomalyLib.training.classifier import balanced_bce

    target = torch.zeros(1, 10)
    target[0, 0] = 1.0
    logits = torch.zeros(1, 10)
    logits[0, 1:] = -20.0  # background right, the lesion cell undecided: log(2) / 2
    assert balanced_bce(logits, target).item() == pytest.approx(np.log(2) / 2, abs=1e-6)
    assert balanced_bce(torch.zeros(1, 10), torch.zeros(1, 10)).item() == pytest.approx(np.log(2), abs=1e-6)


def test_patches_with_lesion_masks(dataset, tmp_path):
    import SimpleITK as sitk

    preset = get_preset("kidney").with_overrides(COARSE)
    data = load_patches(dataset, preset, cache_dir=tmp_path / "cache", lesions=True)
    assert data.lesions is not None and data.lesions.shape == (len(data.ids), *data.x.shape[2:])
    assert set(np.unique(data.lesions)) <= {0, 1}
    sizes = data.lesions.reshape(len(data.ids), -1).sum(axis=1)
    assert (sizes[data.labels == 0] == 0).all() and (sizes[data.labels == 1] > 0).all()
    again = load_patches(dataset, preset, cache_dir=tmp_path / "cache", lesions=True)  # from the cache
    np.testing.assert_array_equal(again.lesions, data.lesions)
    # the largest: the lesion voxels inside that kidney's mask, resampled onto the 4 mm patch (same volume)
    case, structure = data.ids[int(np.argmax(sizes))].split("/")
    truth = sitk.ReadImage(str(dataset / case / "lesions.nii.gz"))
    organ = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / case / "segmentations" / f"{structure}.nii.gz")))
    native_ml = ((sitk.GetArrayFromImage(truth) > 0) & (organ > 0)).sum() * np.prod(truth.GetSpacing()) / 1000
    assert sizes.max() * 4.0 ** 3 / 1000 == pytest.approx(native_ml, rel=0.15)
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken, symlinks=True)
    (broken / case / "lesions.nii.gz").unlink()
    with pytest.raises(InputError, match=f"lesion supervision needs .*{case}"):
        load_patches(broken, preset, lesions=True)
    assert load_patches(broken, preset).lesions is None  # without lesion supervision the file is not needed
    # in_box: every lesion voxel of the patch box, a superset of those inside the structure; cached beside them
    box = load_patches(dataset, preset, cache_dir=tmp_path / "cache", lesions=True, lesions_in_box=True)
    assert (box.lesions >= data.lesions).all() and box.lesions.sum() >= data.lesions.sum()
    with np.load(next((tmp_path / "cache").rglob(f"{case}.npz"))) as z:
        assert {"lesions", "lesions_box"} <= set(z.files)


def test_classifier_with_lesion_supervision(dataset, ae_bundle, tmp_path):
    from safetensors import safe_open

    den = tmp_path / "den"
    train_denoiser(DenoiserTraining(str(dataset), str(ae_bundle), str(den), iterations=2, val_every=2, device="cpu"))
    out = tmp_path / "clf"
    train_classifier(ClassifierTraining(str(dataset), str(den), str(out), iterations=4, val_every=2, batch_size=4,
                                        lesion_weight=1.0, device="cpu"))
    b = load_bundle(out)
    info = b.meta.extra["classifier_training"]
    assert info["lesion_weight"] == 1.0 and info["lesion_cell_ml"] == 0.1
    with safe_open(str(out / "classifier.safetensors"), "pt") as f:  # the lesion head stays out of the bundle
        names = list(f.keys())
    assert names and not [k for k in names if "lesion" in k]
    rows = list(csv.DictReader((out / "classifier_log.csv").read_text().splitlines()))
    assert len(rows) == 2 and all(float(r["train_lesion_bce"]) > 0 for r in rows)
    with pytest.raises(InputError, match="trained with --lesion-weight 1"):  # resuming without the lesion head
        train_classifier(ClassifierTraining(str(dataset), str(den), str(out), iterations=6, resume=True, device="cpu"))
    for bad in ({"lesion_weight": -1.0}, {"lesion_weight": 1.0, "lesion_cell_ml": 0.0}):
        with pytest.raises(InputError, match="lesion"):
            train_classifier(ClassifierTraining(str(dataset), str(den), str(tmp_path / "bad"), iterations=2,
                                                device="cpu", **bad))
