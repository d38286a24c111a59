"""`make demo-models` (scripts/train_demo_models.py) in smoke mode: the chain, the manifest, restartability."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

from DiffusionAnomalyLib.models.bundle import load_bundle

SCRIPT = REPO / "scripts" / "train_demo_models.py"


def _run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), "--organs", "kidney", "--work", str(tmp_path / "work"),
                           "--out", str(tmp_path / "models"), "--smoke"], capture_output=True, text=True, env=env,
                          timeout=600)


def test_smoke_chain_writes_a_demo_bundle_listed_in_the_manifest(tmp_path):
    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "training the classifier" in first.stdout
    manifest = tmp_path / "models" / "manifest.json"
    entry = json.loads(manifest.read_text())["bundles"][0]
    assert entry["name"] == "kidney-demo" and entry["demo"] is True and len(entry["sha256"]) == 64
    bundle = load_bundle(tmp_path / "models" / "kidney-demo", manifest=manifest)
    assert bundle.meta.demo and set(bundle.networks) == {"autoencoder", "denoiser", "classifier"}
    # the autoencoder and the denoiser trained on the first 3 cases, the classifier on all 4; the bundle
    # is calibrated by a sweep
    for subset in ("data-autoencoder", "data-denoiser"):
        labels = (tmp_path / "work" / "kidney" / subset / "labels.csv").read_text().splitlines()
        assert len({line.split(",")[0] for line in labels[1:]}) == 3
    extra = bundle.meta.extra
    assert Path(extra["denoiser_training"]["data"]).name == "data-denoiser"
    assert Path(extra["classifier_training"]["data"]).name == "data"
    assert "calibrating on 2 validation phantoms" in first.stdout
    rec = bundle.meta.recommended
    assert (rec["noise_level"], rec["reference"], rec["samples"], rec["median_filter"]) == (20, "autoencoder", 2, 3)
    assert "threshold" in rec and "min_lesion_ml" in rec and bundle.meta.version == "0.3.3"
    calibration = extra["calibration"]  # the plan's operating-point rule reached the sweep
    assert "false positives per organ" in calibration["objective"] and calibration["threshold"] == rec["threshold"]
    again = _run(tmp_path)  # restartable: nothing is generated or trained twice
    assert again.returncode == 0 and "training" not in again.stdout and "generating" not in again.stdout
    assert json.loads(manifest.read_text())["bundles"] == [entry]
