"""Shared fixtures: synthetic images with chosen geometry, phantom cases, and the real-data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    return Path(os.environ.get("DA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"real data folder {d} is absent (set DA_SHARED_DATA); real-data tests skipped")
    return d


def make_image(array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
               direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    """Image from a (z, y, x) array with the given geometry."""
    im = sitk.GetImageFromArray(array)
    im.SetSpacing([float(v) for v in spacing])
    im.SetOrigin([float(v) for v in origin])
    im.SetDirection([float(v) for v in direction])
    return im


def oblique_direction(deg: float = 20.0) -> tuple[float, ...]:
    """A rotation about z then x (a genuinely oblique, right-handed direction matrix)."""
    a, b = np.deg2rad(deg), np.deg2rad(deg / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx).ravel())


@pytest.fixture(scope="session")
def kidney_case(tmp_path_factory):
    """A written kidney phantom with 2 lesions (seed 3): (case object, folder)."""
    from DiffusionAnomalyLib.synthetic.phantoms import make_phantom, write_phantom

    case = make_phantom("kidney", seed=3, n_lesions=2)
    return case, write_phantom(case, tmp_path_factory.mktemp("kidney") / "case")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A kidney bundle at 4 mm with untrained tiny networks: for plumbing tests, not detection."""
    import torch

    from DiffusionAnomalyLib.models.bundle import BundleMeta, save_bundle
    from DiffusionAnomalyLib.models.nets.autoencoder import autoencoder_config, build_autoencoder
    from DiffusionAnomalyLib.models.nets.classifier import LatentClassifier
    from DiffusionAnomalyLib.models.nets.denoiser import build_denoiser, denoiser_config

    torch.manual_seed(0)
    ae_cfg, den_cfg = autoencoder_config("tiny"), denoiser_config("tiny")
    meta = BundleMeta(
        name="kidney-untrained", version="0.0", organ="kidney", modality="CT", channels=["ct"],
        networks={"autoencoder": ae_cfg.to_dict(), "denoiser": den_cfg.to_dict(),
                  "classifier": {"backbone": den_cfg.to_dict(), "head": [384, 192], "head_dropout": [0.6, 0.36],
                                 "backbone_dropout": 0.2, "num_classes": 2}},
        preset_overrides={"spacing_mm": [4.0, 4.0, 4.0]}, latent={"channels": 4, "scale_factor": 1.0},
        recommended={"sampler": "ddim", "noise_level": 50, "steps": 5, "guidance": 0.0}, demo=True,
    )
    nets = {"autoencoder": build_autoencoder(ae_cfg), "denoiser": build_denoiser(den_cfg),
            "classifier": LatentClassifier(den_cfg)}
    return save_bundle(tmp_path_factory.mktemp("bundle") / "b", meta, nets)


_START_LOCALE = __import__("locale").setlocale(__import__("locale").LC_ALL)


@pytest.fixture
def small_bench(monkeypatch):
    """``bench`` at test scale: the demo size on a 4 x 8^3 latent (a quarter of its values) and the convolution-rate
    probe on an 8^3 grid, so that its rows (emulated bfloat16 included) take seconds; the figures are not checked."""
    from DiffusionAnomalyLib.evaluation.bench import CONV_PROBE, SIZES

    monkeypatch.setitem(CONV_PROBE, "grid", 8)
    monkeypatch.setitem(SIZES, "demo", {**SIZES["demo"], "latent": (4, 8, 8, 8)})


@pytest.fixture(autouse=True)
def _keep_the_process_locale():
    """Each test starts in the locale the session started with: fixtures that write DICOM with ITK (GDCM sets the
    C locale to "C") must not change the text encoding of the tests that follow."""
    import locale

    locale.setlocale(locale.LC_ALL, _START_LOCALE)
    yield
    locale.setlocale(locale.LC_ALL, _START_LOCALE)
