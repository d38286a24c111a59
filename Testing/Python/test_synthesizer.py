"""The lesion synthesizer (issue 38): trained into a bundle beside its networks, loaded only when asked for, and
``synthesize --method diffusion`` with it: the scan unchanged outside the blended region, the lesion generated
from the map, and the refusals. The networks here are trained for a few iterations (plumbing, not realism)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from DiffusionAnomalyLib.app.cli import main
from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.models.bundle import load_bundle, read_meta
from DiffusionAnomalyLib.models.nets.synthesizer import (
    build_synthesizer,
    condition_maps,
    guided_eps,
    synthesizer_config,
)
from DiffusionAnomalyLib.synthesis.options import SynthesisOptions
from DiffusionAnomalyLib.synthesis.synthesize import SynthesisRequest, synthesize
from DiffusionAnomalyLib.synthetic.phantoms import make_phantom, write_dataset, write_phantom
from DiffusionAnomalyLib.training.autoencoder import AutoencoderTraining, train_autoencoder
from DiffusionAnomalyLib.training.synthesizer import SynthesizerTraining, train_synthesizer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset("kidney", tmp_path_factory.mktemp("data") / "ds", list(range(6)))


@pytest.fixture(scope="module")
def bundle(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    train_autoencoder(AutoencoderTraining(str(dataset), "kidney", str(root / "ae"), iterations=4, val_every=2,
                                          preset_overrides={"spacing_mm": [4.0, 4.0, 4.0]}, device="cpu"))
    train_synthesizer(SynthesizerTraining(str(dataset), str(root / "ae"), str(root / "syn"), iterations=4,
                                          val_every=2, batch_size=4, device="cpu"))
    return root


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    return write_phantom(make_phantom("kidney", seed=5, n_lesions=0), tmp_path_factory.mktemp("h") / "case")


def test_the_map_channels_are_lesion_shares_on_the_latent_grid():
    lesion = torch.zeros(1, 8, 8, 8)
    lesion[0, :4, :4, :2] = 1  # a quarter of the first latent voxel's 4 x 4 x 4 block is lesion ... and more
    maps = condition_maps(lesion, (2, 2, 2))
    assert maps.shape == (1, 2, 2, 2, 2) and torch.allclose(maps.sum(1), torch.ones(1, 2, 2, 2))
    assert maps[0, 1, 0, 0, 0] == pytest.approx(0.5) and maps[0, 1, 1, 1, 1] == 0


def test_guidance_is_the_classifier_free_combination():
    torch.manual_seed(0)
    net = build_synthesizer(synthesizer_config("tiny")).eval()
    with torch.no_grad():  # MONAI starts the output convolutions at zero: give them weights, as training does
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    x, t = torch.randn(1, 4, 4, 4, 4), torch.tensor([300])
    maps = condition_maps(torch.ones(1, 8, 8, 8), (4, 4, 4))
    with torch.no_grad():
        cond, uncond = net(x, timesteps=t, seg=maps), net(x, timesteps=t, seg=torch.zeros_like(maps))
        assert torch.allclose(guided_eps(net, maps, 0.0)(x, t), cond)
        assert torch.allclose(guided_eps(net, maps, 2.0)(x, t), 3 * cond - 2 * uncond, atol=1e-5)
    assert not torch.allclose(cond, uncond)  # the map changes the estimate (SPADE)


def test_the_synthesizer_extends_the_bundle_and_loads_only_when_asked(bundle):
    meta = read_meta(bundle / "syn")
    assert set(meta.networks) >= {"autoencoder", "synthesizer"} and "synthesizer.safetensors" in meta.files
    training = meta.extra["synthesizer_training"]
    assert training["iterations"] == 4 and training["train_latents_with_lesions"] > 0
    assert "lesion synthesizer trained" in json.dumps(meta.changelog)
    assert "synthesizer" not in load_bundle(bundle / "syn").networks  # detection never builds it
    assert set(load_bundle(bundle / "syn", parts=("autoencoder", "synthesizer")).networks) == {"autoencoder",
                                                                                              "synthesizer"}
    assert (bundle / "syn" / "synthesizer_log.csv").is_file()


def test_diffusion_changes_only_the_lesion_and_records_the_synthesizer(bundle, healthy, tmp_path):
    found = synthesize(SynthesisRequest(
        images=(str(healthy / "ct.nii.gz"),), organ="kidney", out=str(tmp_path / "d"), bundle=str(bundle / "syn"),
        totalseg=str(healthy / "segmentations"),
        options=SynthesisOptions(method="diffusion", shape="sphere", diameter_mm=25, steps=3, resample_jumps=2,
                                 count=2)))
    x = sitk.GetArrayFromImage(sitk.ReadImage(str(healthy / "ct.nii.gz")))
    for case, record in zip(found.cases, found.records, strict=True):
        y = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "ct.nii.gz")))
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "lesions.nii.gz")))
        near = ndimage.binary_dilation(labels > 0, iterations=6)
        assert y.dtype == x.dtype and np.array_equal(y[~near], x[~near]) and (y != x).any()
        assert y.min() >= x.min() and y.max() <= x.max()
        le = record["lesions"][0]
        assert le["kind"] == "generated" and le["after_mean"] != le["before_mean"]
        assert record["method"] == "diffusion" and record["synthesizer"]["steps"] == 3
        assert record["command"][record["command"].index("--bundle") + 1] == str(bundle / "syn")
    again = synthesize(SynthesisRequest(
        images=(str(healthy / "ct.nii.gz"),), organ="kidney", out=str(tmp_path / "e"), bundle=str(bundle / "syn"),
        totalseg=str(healthy / "segmentations"),
        options=SynthesisOptions(method="diffusion", shape="sphere", diameter_mm=25, steps=3, resample_jumps=2)))
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(found.cases[0] / "ct.nii.gz")))
    assert np.array_equal(first, sitk.GetArrayFromImage(sitk.ReadImage(str(again.cases[0] / "ct.nii.gz"))))


@pytest.mark.parametrize("change,pattern", [
    ({"bundle": None}, "--method diffusion needs --bundle"),
    ({"kind": "hypo"}, "--kind is for --method paste"),
    ({"method": "paste"}, "--bundle is for --method diffusion"),
])
def test_meaningless_combinations_are_refused(bundle, healthy, tmp_path, change, pattern):
    options = {"method": "diffusion", **{k: v for k, v in change.items() if k != "bundle"}}
    with pytest.raises(InputError, match=pattern):
        SynthesisRequest(images=(str(healthy / "ct.nii.gz"),), organ="kidney", out=str(tmp_path / "o"),
                         bundle=change.get("bundle", str(bundle / "syn")), totalseg=str(healthy / "segmentations"),
                         options=SynthesisOptions(**options))


def test_a_bundle_without_a_synthesizer_exits_3_and_says_how_to_get_one(bundle, healthy, tmp_path, capsys):
    rc = main(["synthesize", "--organ", "kidney", "--input", str(healthy / "ct.nii.gz"), "--totalseg",
               str(healthy / "segmentations"), "--method", "diffusion", "--bundle", str(bundle / "ae"),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 3 and "has no lesion synthesizer" in err and "train synthesizer" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_bench_times_one_diffusion_lesion():
    from DiffusionAnomalyLib.evaluation.bench import synthesize_time

    row = synthesize_time(torch.device("cpu"), "fp32", steps=2, jumps=2)
    assert row["seconds"] > 0 and row["network_evaluations"] == 2 * 2 * 2  # steps x jumps x (map, no map)
    assert row["precision"] == "fp32"
