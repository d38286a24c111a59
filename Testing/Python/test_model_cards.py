"""Every shipped bundle: model.json matches the schema, has a model card (README.md) naming its licence and
training data, carries no local paths in its card fields, and matches its manifest digest. The validator's
messages name the file and the field. Torch-free (what the Slicer panel runs)."""

import json
import re
import shutil
from pathlib import Path

import pytest

from DiffusionAnomalyLib.models.bundle import (
    AvailableBundle,
    BundleError,
    BundleMeta,
    available_bundles,
    bundle_digest,
    read_meta,
    verify_manifest,
)
from DiffusionAnomalyLib.models.schema import SCHEMA_PATH, model_schema, problems

MODELS = Path(__file__).resolve().parents[2] / "Resources" / "Models"
SHIPPED = sorted(p for p in MODELS.iterdir() if (p / "model.json").is_file())
CARD_FIELDS = ("summary", "training_data", "license", "intended_use", "out_of_scope_use", "evaluation", "limitations",
               "citation")
LOCAL_PATH = re.compile(r"(^|[\s'\"(])(/[A-Za-z]|~/|[A-Za-z]:\\|build/|\.\./)")


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_three_demo_bundles_ship():
    assert {p.name for p in SHIPPED} == {"kidney-demo", "liver-demo", "brain-demo"}


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_model_json_matches_the_schema(folder):
    data = json.loads((folder / "model.json").read_text())
    assert problems(data, model_schema()) == []
    assert set(model_schema()["properties"]) == set(BundleMeta.__dataclass_fields__) | {"licence"}  # the old key


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_card_fields_are_filled_without_local_paths(folder):
    meta = read_meta(folder)
    for name in CARD_FIELDS:
        assert getattr(meta, name), f"{folder.name}: model.json field {name} is empty"
    assert meta.license == "Apache-2.0"
    assert meta.demo and "DEMO" in meta.summary and "\n" not in meta.summary and len(meta.summary) <= 200
    for name in CARD_FIELDS:
        for text in _strings(getattr(meta, name)):
            assert not LOCAL_PATH.search(text), f"{folder.name}: {name} names a local path: {text!r}"
    assert isinstance(meta.training_data, dict) and meta.training_data["real_scans"] == 0
    assert meta.evaluation["real_scans"].startswith("not evaluated")


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_model_card_exists_and_names_licence_and_training_data(folder):
    card = folder / "README.md"
    assert card.is_file(), f"{folder.name} has no model card (README.md)"
    text = card.read_text()
    meta = read_meta(folder)
    hub = _front_matter(text)
    assert hub["license"] == "apache-2.0" and hub["library_name"] == "diffusion-anomaly", hub
    assert {meta.organ, "demo", "synthetic-data"} <= set(hub["tags"]) and hub["pipeline_tag"] == "image-segmentation"
    body = text.split("\n---\n", 1)[1].lstrip("\n")
    assert body.startswith(f"# {meta.name} {meta.version}"), "the card's title names the bundle and its version"
    for heading in ("Licence", "Training data", "Intended use", "Out of scope", "Evaluation", "Limitations",
                    "How to cite"):
        assert f"## {heading}" in text, f"{card}: no '## {heading}' section"
    assert meta.license in text and "synthetic" in text and str(meta.training_data["cases"]) in text
    assert "not for diagnosis" in text.lower() or "not a medical device" in text.lower()


def _front_matter(text: str) -> dict:
    """The card's YAML front matter: ``key: <JSON value>`` lines between ``---`` lines (JSON is YAML)."""
    assert text.startswith("---\n"), "the card opens with front matter"
    head = text[4:].split("\n---\n", 1)[0]
    return {k: json.loads(v) for k, v in (line.split(": ", 1) for line in head.splitlines())}


def test_card_front_matter_for_a_model_hub(tmp_path):
    """Hugging Face model-card keys; a licence a hub does not know is 'other' with its name; the changelog and the
    software versions of a bundle that records them are in the card."""
    from DiffusionAnomalyLib.models.modelcard import render

    meta = read_meta(SHIPPED[0])
    meta.license, meta.demo = "not set: the weights follow the terms of the training data (KiTS23)", False
    meta.software = {"diffusion_anomaly": "0.3.0", "torch": "2.13.0"}
    meta.changelog = [{"version": "1.0", "date": "2026-12-05", "change": "classifier trained"}]
    text = render(meta)
    hub = _front_matter(text)
    assert hub["license"] == "other" and hub["license_name"].startswith("not-set-the-weights"), hub
    assert "demo" not in hub["tags"] and "synthetic-data" not in hub["tags"]
    assert "| 1.0 | 2026-12-05 | classifier trained |" in text and "diffusion_anomaly 0.3.0, torch 2.13.0" in text


def test_manifest_digests_match_and_describe_with_the_summary():
    manifest = MODELS / "manifest.json"
    entries = {e["name"]: e for e in json.loads(manifest.read_text())["bundles"]}
    assert set(entries) == {p.name for p in SHIPPED}
    for folder in SHIPPED:
        meta = read_meta(folder)
        entry = entries[folder.name]
        assert (entry["version"], entry["organ"]) == (meta.version, meta.organ)
        assert entry["sha256"] == bundle_digest(folder), f"update the manifest's SHA-256 of {folder.name}"
        assert entry["description"] == meta.summary
        verify_manifest(folder, meta, manifest)


def test_available_bundles_give_the_summary():
    found = {b.meta.name: b for b in available_bundles(folders=[MODELS])}
    assert found["kidney-demo"].summary == read_meta(MODELS / "kidney-demo").summary
    older = AvailableBundle(MODELS, BundleMeta("old", "0", "kidney", "CT", ["ct"], {}, intended_use="tests"))
    assert older.summary == "tests"  # bundles made before the card fields fall back to the intended use


def _copy_with(tmp_path, change):
    dest = tmp_path / "b"
    shutil.copytree(MODELS / "kidney-demo", dest)
    data = json.loads((dest / "model.json").read_text())
    change(data)
    (dest / "model.json").write_text(json.dumps(data))
    return dest


@pytest.mark.parametrize("change, field", [
    (lambda d: d.update(organ="lung"), "organ"),
    (lambda d: d.update(evaluation="good"), "evaluation"),
    (lambda d: d.update(training_data=800), "training_data"),
    (lambda d: d["recommended"].update(sampler="euler"), "recommended.sampler"),
    (lambda d: d["recommended"].update(samples=0), "recommended.samples"),
    (lambda d: d["networks"].pop("autoencoder"), "networks.autoencoder"),
    (lambda d: d["networks"].update(denoiser=[1]), "networks.denoiser"),
    (lambda d: d.update(channels=[]), "channels"),
    (lambda d: d["files"].update({"denoiser.safetensors": 5}), "files.denoiser.safetensors"),
])
def test_a_bad_field_is_named_with_the_file(tmp_path, change, field):
    folder = _copy_with(tmp_path, change)
    with pytest.raises(BundleError) as err:
        read_meta(folder)
    assert str(folder / "model.json") in str(err.value) and f"{field}:" in str(err.value)
    assert SCHEMA_PATH.name in str(err.value)


def test_older_bundles_without_card_fields_still_load(tmp_path):
    def strip(data):
        for name in (*CARD_FIELDS, "licence"):  # the shipped bundles say licence (the key before 0.3.0)
            data.pop(name, None)
        data.update(training_data="400 patches", licence="", intended_use="")

    folder = _copy_with(tmp_path, strip)
    meta = read_meta(folder)
    assert meta.summary == "" and meta.evaluation == {} and meta.training_data == "400 patches"


def test_schema_and_validator_stay_torch_free():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "from DiffusionAnomalyLib.models.bundle import available_bundles\n"
            f"assert len(available_bundles(folders=[{str(MODELS)!r}])) == 3")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=MODELS.parents[1])


def test_cards_are_generated_from_model_json():
    import importlib.util

    path = MODELS.parents[1] / "scripts" / "model_card.py"
    spec = importlib.util.spec_from_file_location("model_card", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check", *map(str, SHIPPED)]) == 0, "run scripts/model_card.py Resources/Models/*-demo"
