"""Model bundles: save/load, validation, checksums, manifest, mismatch reports; network shapes."""

import json
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from DiffusionAnomalyLib.models.bundle import (
    BundleError,
    BundleMeta,
    bundle_digest,
    import_bundle,
    load_bundle,
    save_bundle,
)
from DiffusionAnomalyLib.models.nets.autoencoder import LatentCodec, autoencoder_config, build_autoencoder
from DiffusionAnomalyLib.models.nets.classifier import LatentClassifier
from DiffusionAnomalyLib.models.nets.denoiser import build_denoiser, denoiser_config


def _meta(ae_cfg, den_cfg, with_classifier=True):
    return BundleMeta(
        name="test", version="1.0", organ="kidney", modality="CT", channels=["ct"],
        networks={"autoencoder": ae_cfg.to_dict(), "denoiser": den_cfg.to_dict(),
                  "classifier": {"backbone": den_cfg.to_dict(), "head": [384, 192], "head_dropout": [0.6, 0.36],
                                 "backbone_dropout": 0.2, "num_classes": 2} if with_classifier else None},
        preset_overrides={"spacing_mm": [4.0, 4.0, 4.0]}, latent={"channels": 4, "scale_factor": 1.0},
        demo=True, intended_use="tests",
    )


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    ae_cfg, den_cfg = autoencoder_config("tiny"), denoiser_config("tiny")
    return ae_cfg, den_cfg, {"autoencoder": build_autoencoder(ae_cfg), "denoiser": build_denoiser(den_cfg),
                             "classifier": LatentClassifier(den_cfg)}


@pytest.fixture()
def bundle_dir(tmp_path, nets):
    ae_cfg, den_cfg, n = nets
    return save_bundle(tmp_path / "b", _meta(ae_cfg, den_cfg), n)


def test_round_trip_gives_identical_networks(bundle_dir, nets):
    _, _, n = nets
    b = load_bundle(bundle_dir)
    assert set(b.networks) == {"autoencoder", "denoiser", "classifier"}
    z = torch.randn(1, 4, 6, 6, 8)
    t = torch.tensor([10])
    torch.testing.assert_close(b.networks["denoiser"](z, t), n["denoiser"].eval()(z, t))
    torch.testing.assert_close(b.networks["classifier"](z, t), n["classifier"].eval()(z, t))
    assert b.preset.spacing_mm == (4.0, 4.0, 4.0) and b.preset.roi_size_voxels == (24, 24, 32)
    assert b.meta.demo and len(b.digest) == 64
    b64 = load_bundle(bundle_dir, dtype=torch.float64)
    assert next(b64.networks["denoiser"].parameters()).dtype == torch.float64


def test_model_json_is_validated(bundle_dir):
    meta = json.loads((bundle_dir / "model.json").read_text())
    (bundle_dir / "model.json").write_text(json.dumps({**meta, "format_version": 7}))
    with pytest.raises(BundleError, match="unknown bundle format version 7.*reads format 1"):
        load_bundle(bundle_dir)
    (bundle_dir / "model.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "organ"}))
    with pytest.raises(BundleError, match=r"required field\(s\) missing: \['organ'\]"):
        load_bundle(bundle_dir)
    (bundle_dir / "model.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(bundle_dir / "nope")


def test_corrupt_weights_fail_the_checksum(bundle_dir):
    f = bundle_dir / "denoiser.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"denoiser\.safetensors: checksum mismatch"):
        load_bundle(bundle_dir)


def test_missing_tensor_and_shape_mismatch_are_listed(bundle_dir, nets):
    import hashlib

    _, den_cfg, n = nets
    state = {k: v.contiguous() for k, v in n["denoiser"].state_dict().items() if k != "out.2.conv.bias"}
    save_file(state, str(bundle_dir / "denoiser.safetensors"))
    meta = json.loads((bundle_dir / "model.json").read_text())
    digest = hashlib.sha256((bundle_dir / "denoiser.safetensors").read_bytes()).hexdigest()
    meta["files"]["denoiser.safetensors"] = digest
    (bundle_dir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"tensors do not match.*missing \['out.2.conv.bias'\]"):
        load_bundle(bundle_dir)
    meta["networks"]["denoiser"]["base_channels"] = 8  # config no longer matches the stored tensors
    (bundle_dir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="shape mismatch"):
        load_bundle(bundle_dir, parts=("denoiser",))


def test_manifest_sha256_and_pickles(bundle_dir, tmp_path):
    manifest = tmp_path / "manifest.json"
    entry = {"name": "test", "version": "1.0", "sha256": bundle_digest(bundle_dir)}
    manifest.write_text(json.dumps({"bundles": [entry]}))
    assert load_bundle(bundle_dir, manifest=manifest).meta.name == "test"
    manifest.write_text(json.dumps({"bundles": [{"name": "test", "version": "1.0", "sha256": "0" * 64}]}))
    with pytest.raises(BundleError, match="does not match the manifest"):
        load_bundle(bundle_dir, manifest=manifest)
    (bundle_dir / "weights.pt").write_bytes(b"pickle")
    with pytest.raises(BundleError, match="pickled weights are never loaded"):
        load_bundle(bundle_dir)


def test_zip_import_into_models_folder(bundle_dir, tmp_path):
    z = tmp_path / "b.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in bundle_dir.iterdir():
            zf.write(f, f"test-bundle/{f.name}")
    assert load_bundle(z).meta.version == "1.0"
    dest = import_bundle(z, tmp_path / "models")
    assert dest.name == "test-1.0" and (dest / "model.json").is_file()
    assert bundle_digest(dest) == bundle_digest(bundle_dir)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape/model.json", "{}")
    with pytest.raises(BundleError, match="unsafe path"):
        load_bundle(evil)


def test_codec_latent_shape_and_no_requantisation(nets):
    _, _, n = nets
    codec = LatentCodec(n["autoencoder"].eval(), scale_factor=2.0)
    x = torch.randn(1, 1, 32, 24, 24)
    z = codec.encode(x)
    assert z.shape == (1, 4, 8, 6, 6)
    off = z + 0.3 * torch.randn_like(z)  # a denoised latent is off the codebook
    assert not torch.allclose(codec.decode(off), codec.decode(off, requantize=True))


def test_tiny_8ch_keeps_the_tiny_grid_with_a_finer_code():
    cfg = autoencoder_config("tiny-8ch")
    assert (cfg.embedding_dim, cfg.num_embeddings, cfg.downsampling) == (8, 1024, 4)
    codec = LatentCodec(build_autoencoder(cfg).eval())
    z = codec.encode(torch.randn(1, 1, 32, 24, 24))
    assert z.shape == (1, 8, 8, 6, 6)
    den = build_denoiser(denoiser_config("tiny", latent_channels=8)).eval()
    assert den(z, torch.tensor([10])).shape == z.shape


def test_tiny_2x_halves_the_latent_cell():
    cfg = autoencoder_config("tiny-2x")
    assert cfg.downsampling == 2
    z = LatentCodec(build_autoencoder(cfg).eval()).encode(torch.randn(1, 1, 32, 24, 24))
    assert z.shape == (1, 4, 16, 12, 12)
    den = build_denoiser(denoiser_config("tiny")).eval()
    assert den(z, torch.tensor([10])).shape == z.shape
    deep = denoiser_config("tiny-3level")  # attention one level coarser on the finer grid
    assert deep.downsampling == 4 and deep.attention_levels == (False, False, True)
    assert build_denoiser(deep).eval()(z, torch.tensor([10])).shape == z.shape


def test_classifier_backbone_from_denoiser_and_frozen_levels(nets):
    _, den_cfg, n = nets
    clf = LatentClassifier(den_cfg)
    clf.load_backbone(n["denoiser"].state_dict(), frozen_levels=1)
    torch.testing.assert_close(clf.conv_in.conv.weight, n["denoiser"].conv_in.conv.weight)
    assert not any(p.requires_grad for p in clf.down_blocks[0].parameters())  # explicit 1 level
    assert all(p.requires_grad for p in clf.down_blocks[1].parameters())
    assert clf(torch.randn(3, 4, 6, 6, 8), torch.tensor([0, 5, 999])).shape == (3, 2)


def test_available_bundles_lists_shipped_and_user_bundles_by_organ(tiny_bundle, tmp_path, monkeypatch):
    import shutil

    from DiffusionAnomalyLib.models.bundle import available_bundles, default_models_dir

    monkeypatch.setenv("DA_MODELS_DIR", str(tmp_path / "models"))
    assert default_models_dir() == tmp_path / "models"
    shutil.copytree(tiny_bundle, tmp_path / "models" / "kidney-untrained-0.0")
    (tmp_path / "models" / "not-a-bundle").mkdir()
    kidney = available_bundles("kidney")
    assert kidney[0].path == tmp_path / "models" / "kidney-untrained-0.0"
    assert kidney[0].label == "kidney-untrained 0.0 [DEMO, synthetic data]"
    assert any(b.meta.name == "kidney-demo" for b in kidney)  # shipped in Resources/Models
    assert all(b.meta.organ == "kidney" for b in kidney)
    assert available_bundles("liver", [tmp_path / "models"]) == []


def test_weights_id_names_the_networks_not_the_calibration(bundle_dir, nets, tmp_path):
    from DiffusionAnomalyLib.models.bundle import read_meta

    meta = read_meta(bundle_dir)
    recalibrated = BundleMeta.from_dict({**meta.to_dict(), "recommended": {"threshold": 0.3}, "version": "1.1"})
    assert recalibrated.weights_id() == meta.weights_id() and len(meta.weights_id()) == 8
    ae_cfg, den_cfg, n = nets
    torch.manual_seed(1)
    other = save_bundle(tmp_path / "other", _meta(ae_cfg, den_cfg), {**n, "denoiser": build_denoiser(den_cfg)})
    assert read_meta(other).weights_id() != meta.weights_id()  # new denoiser weights: maps are not reused


def test_a_new_bundle_stores_its_preset_software_and_changelog(nets, tmp_path, monkeypatch):
    """A changed preset default in the code changes no bundle that stores its preset; an older bundle (no
    ``organ_preset``) still follows the code's preset with its overrides, as before."""
    import dataclasses
    import datetime

    import DiffusionAnomalyLib
    from DiffusionAnomalyLib.detection import presets
    from DiffusionAnomalyLib.models.bundle import read_meta

    ae_cfg, den_cfg, n = nets
    made = save_bundle(tmp_path / "new", _meta(ae_cfg, den_cfg), n, change="trained for the test")
    data = json.loads((made / "model.json").read_text())
    assert data["organ_preset"] == json.loads(json.dumps(presets.KIDNEY.with_overrides(
        {"spacing_mm": [4.0, 4.0, 4.0]}).to_dict()))
    assert data["software"]["diffusion_anomaly"] == DiffusionAnomalyLib.__version__
    assert {"python", "torch", "monai", "numpy"} <= set(data["software"])
    assert data["changelog"] == [{"version": "1.0", "date": datetime.date.today().isoformat(),
                                  "change": "trained for the test"}]
    assert "license" in data and "licence" not in data
    old = tmp_path / "old"
    old.mkdir()
    for f in made.iterdir():
        (old / f.name).write_bytes(f.read_bytes())
    (old / "model.json").write_text(json.dumps({k: v for k, v in data.items() if k not in (
        "organ_preset", "software", "changelog")}))
    before = read_meta(made).preset()
    assert read_meta(old).preset() == before and read_meta(old).weights_id() == read_meta(made).weights_id()
    ids = read_meta(made).weights_id(), read_meta(old).weights_id()
    monkeypatch.setitem(presets.PRESETS, "kidney", dataclasses.replace(
        presets.KIDNEY, min_component_voxels=99, roi_size_mm=(80.0, 80.0, 100.0)))
    assert read_meta(made).preset() == before  # stored: the code's new defaults do not reach it
    changed = read_meta(old).preset()
    assert changed.min_component_voxels == 99 and changed.spacing_mm == (4.0, 4.0, 4.0)  # code + overrides
    assert read_meta(made).weights_id() == ids[0] and read_meta(old).weights_id() != ids[1]  # its maps changed
    assert load_bundle(made).preset == before


def test_licence_is_read_as_license_and_written_as_license(bundle_dir):
    from DiffusionAnomalyLib.models.bundle import read_meta

    data = json.loads((bundle_dir / "model.json").read_text())
    data.pop("license")
    (bundle_dir / "model.json").write_text(json.dumps({**data, "licence": "CC-BY-4.0"}))
    meta = read_meta(bundle_dir)
    assert meta.license == meta.licence == "CC-BY-4.0"
    assert meta.to_dict()["license"] == "CC-BY-4.0" and "licence" not in meta.to_dict()
    assert "organ_preset" not in meta.to_dict()  # an older bundle keeps its form when written back
    (bundle_dir / "model.json").write_text(json.dumps({**data, "licence": "MIT", "license": "MIT"}))
    with pytest.raises(BundleError, match="both 'licence' and 'license'"):
        read_meta(bundle_dir)


def test_a_stored_preset_that_does_not_fit_is_a_bundle_error(bundle_dir):
    from DiffusionAnomalyLib.models.bundle import read_meta

    meta = read_meta(bundle_dir)
    meta.organ_preset = {**meta.preset().to_dict(), "no_such_field": 1}
    with pytest.raises(BundleError, match="organ_preset does not fit"):
        meta.preset()


def test_calibration_appends_to_the_bundle_changelog(nets, tmp_path):
    from DiffusionAnomalyLib.evaluation.sweep import write_calibrated_bundle
    from DiffusionAnomalyLib.models.bundle import read_meta

    ae_cfg, den_cfg, n = nets
    made = save_bundle(tmp_path / "new", _meta(ae_cfg, den_cfg), n, change="trained")
    best = {"sampler": "ddpm", "noise_level": 250, "guidance": 0.0, "steps": 250, "threshold": 0.15,
            "min_lesion_ml": 0.5, "grow_to": 0.7}
    calibrated = read_meta(write_calibrated_bundle(made, tmp_path / "cal", best, note="on 3 cases"))
    assert [e["change"] for e in calibrated.changelog] == [
        "trained", "calibrated by sweep: ddpm L = 250, s = 0, 250 steps, threshold 0.15, min_lesion_ml 0.5, "
        "grow_to 0.7 (on 3 cases)"]
    assert calibrated.organ_preset == read_meta(made).organ_preset
    assert calibrated.weights_id() == read_meta(made).weights_id()  # recalibration keeps the maps
