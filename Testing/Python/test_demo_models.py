"""`make demo-models` (scripts/demo_models.sh: phantoms, then `train all --install`) in smoke mode: the chain, the
installed bundle and its manifest entry, and a rerun that generates and trains nothing."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from DiffusionAnomalyLib.models.bundle import load_bundle

SCRIPT = REPO / "scripts" / "demo_models.sh"


def _run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "SMOKE": "1", "ORGANS": "kidney",
           "DEMO_WORK": str(tmp_path / "work"), "MODELS_DIR": str(tmp_path / "models")}
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_smoke_chain_installs_a_demo_bundle_listed_in_the_manifest(tmp_path):
    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = tmp_path / "models" / "manifest.json"
    (entry,) = json.loads(manifest.read_text())["bundles"]
    assert (entry["name"], entry["version"], entry["demo"]) == ("kidney-demo", "0.5.0", True)
    assert len(entry["sha256"]) == 64
    bundle = load_bundle(tmp_path / "models" / "kidney-demo", manifest=manifest)  # the digest matches the entry
    assert bundle.meta.demo and set(bundle.networks) == {"autoencoder", "denoiser", "classifier"}
    # the varied generator's phantoms, split into train / val folders; calibrated on val only
    data = tmp_path / "work" / "kidney" / "data"
    assert sorted(p.name for p in (data / "train").iterdir() if p.is_dir()) == [
        f"kidney-var-{s:05d}" for s in range(100000, 100004)]
    split = bundle.meta.extra["train_all"]["split"]
    assert sorted(split["validation"]) == ["kidney-var-00500", "kidney-var-00501"]
    rec = bundle.meta.recommended
    # the recipe's map options, the smoke grid (later flags win)
    assert (rec["noise_level"], rec["reference"], rec["samples"], rec["median_filter"]) == (20, "autoencoder", 2, 5)
    assert "false positives per organ" in bundle.meta.extra["calibration"]["objective"]
    again = _run(tmp_path)  # restartable: nothing generated or trained twice, the same bundle and entry
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to train" in again.stdout + again.stderr
    assert json.loads(manifest.read_text())["bundles"] == [entry]
