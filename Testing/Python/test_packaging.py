"""The wheel: built offline from this tree, what it holds, and an installed wheel running the shipped demo bundle.

The wheel is built with this environment's setuptools (``pip wheel --no-deps --no-build-isolation``, nothing
downloaded) from a copy of the files the build reads, so no ``build/`` or ``*.egg-info`` of the tree leaks in.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import SimpleITK as sitk

import DiffusionAnomalyLib
from DiffusionAnomalyLib.errors import EXIT_MISSING_MODEL

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "DiffusionAnomalyLib"
RES = ROOT / "Resources"
DIST_INFO = f"diffusion_anomaly-{DiffusionAnomalyLib.__version__}.dist-info"
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "DiffusionAnomalyLib", "Resources")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("wheel-src")
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-v", "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"the wheel did not build (make setup installs setuptools>=77):\n{r.stdout}\n{r.stderr}"
    assert "deprecat" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr  # -v shows setuptools' warnings
    wheels = list(dist.glob("*.whl"))
    assert [w.name for w in wheels] == [f"diffusion_anomaly-{DiffusionAnomalyLib.__version__}-py3-none-any.whl"]
    return wheels[0]


def _expected_resources() -> set[str]:
    """What the library reads from Resources/ at run time: the panel's .ui, the manifest and each listed bundle."""
    names = {f"UI/{p.name}" for p in (RES / "UI").glob("*.ui")} | {"Models/manifest.json"}
    for b in json.loads((RES / "Models" / "manifest.json").read_text())["bundles"]:
        names |= {f"Models/{b['name']}/{f.name}" for f in (RES / "Models" / b["name"]).iterdir() if f.is_file()}
    return names


def test_the_wheel_holds_the_library_the_schema_the_bundles_and_the_licence_and_nothing_else(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        lib = {str(p.relative_to(ROOT)) for p in LIB.rglob("*.py") if "__pycache__" not in p.parts}
        resources = {f"DiffusionAnomalyLib/_resources/{n}" for n in _expected_resources()}
        meta = {f"{DIST_INFO}/{n}" for n in ("METADATA", "WHEEL", "RECORD", "entry_points.txt", "top_level.txt",
                                             "licenses/LICENSE")}
        expected = lib | resources | meta | {"DiffusionAnomalyLib/models/model.schema.json"}
        assert sorted(names - expected) == [], "stray files in the wheel"
        assert sorted(expected - names) == [], "missing from the wheel"
        for n in resources | {"DiffusionAnomalyLib/models/model.schema.json"}:  # byte for byte the tree's files
            source = RES / n.split("/_resources/", 1)[1] if "/_resources/" in n else ROOT / n
            assert hashlib.sha256(z.read(n)).digest() == hashlib.sha256(source.read_bytes()).digest(), n
        manifest = json.loads(z.read("DiffusionAnomalyLib/_resources/Models/manifest.json"))
        assert {b["name"] for b in manifest["bundles"]} >= {"kidney-demo", "liver-demo", "brain-demo"}
        metadata = email.parser.Parser().parsestr(z.read(f"{DIST_INFO}/METADATA").decode())
        entry_points = z.read(f"{DIST_INFO}/entry_points.txt").decode()
        assert z.read(f"{DIST_INFO}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
    assert metadata["Metadata-Version"] >= "2.4"  # PEP 639
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["License"] is None and not [c for c in metadata.get_all("Classifier") if c.startswith("License")]
    assert metadata["Version"] == DiffusionAnomalyLib.__version__
    assert "diffusion-anomaly = DiffusionAnomalyLib.app.cli:main" in entry_points


def test_demo_without_a_demo_bundle_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """No shipped resources (as the wheel was before) and an empty models folder: an error naming both places,
    not the baseline under the demo's name; ``--baseline`` still runs the baseline."""
    from DiffusionAnomalyLib import resources
    from DiffusionAnomalyLib.app.cli import main

    monkeypatch.setattr(resources, "_LIB_DIR", tmp_path / "site-packages" / "DiffusionAnomalyLib")
    monkeypatch.delenv("DA_RESOURCES", raising=False)
    monkeypatch.setenv("DA_MODELS_DIR", str(tmp_path / "models"))
    out = tmp_path / "demo"
    assert main(["demo", "--organ", "kidney", "--out", str(out)]) == EXIT_MISSING_MODEL
    err = capsys.readouterr().err
    assert "no demo bundle for the kidney is installed" in err and str(tmp_path / "models") in err, err
    assert "no resources found" in err and "--baseline" in err, err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_the_installed_wheel_runs_the_shipped_kidney_demo_bundle(wheel, tmp_path):
    """``pip install --no-deps`` into a fresh venv that sees this environment's packages (no CUDA torch can be
    pulled, nothing is downloaded), then ``diffusion-anomaly demo`` from outside the source tree."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}  # a path line: its .pth not run
    (purelib / "deps-from-test-env.pth").write_text("\n".join(sorted(deps)) + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "deprecat" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DA_RESOURCES", "DA_BUNDLE_MANIFEST")}
    env.update(HOME=str(tmp_path), DA_MODELS_DIR=str(tmp_path / "no-user-models"))
    where = subprocess.run([str(py), "-c", "import DiffusionAnomalyLib.resources as r; print(r.resources_dir())"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, check=True).stdout.strip()
    assert Path(where) == purelib / "DiffusionAnomalyLib" / "_resources", where
    exe = venv / ("Scripts/diffusion-anomaly.exe" if os.name == "nt" else "bin/diffusion-anomaly")
    r = subprocess.run([str(exe), "demo", "--organ", "kidney", "--out", "demo"], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "detection with the shipped kidney-demo" in r.stdout and "baseline" not in r.stdout.lower(), r.stdout
    assert "against the known truth: Dice" in r.stdout and "F1" in r.stdout and "not a clinical result" in r.stdout
    out = tmp_path / "demo" / "result"  # (this test replaced test_cli's demo test: the same checks, one demo run)
    assert {"heatmap.nii.gz", "lesions.nii.gz", "reconstruction.nii.gz", "lesions.csv", "run.json"} <= {
        p.name for p in out.iterdir()}
    ct = sitk.ReadImage(str(tmp_path / "demo" / "case" / "ct.nii.gz"))
    heat = sitk.ReadImage(str(out / "heatmap.nii.gz"))
    assert heat.GetSize() == ct.GetSize() and heat.GetOrigin() == ct.GetOrigin()
    bundle = json.loads((out / "run.json").read_text())["inputs"]["bundle"]
    shipped = {b["name"]: b for b in json.loads((RES / "Models" / "manifest.json").read_text())["bundles"]}
    assert bundle["name"] == "kidney-demo" and bundle["sha256"] == shipped["kidney-demo"]["sha256"], bundle
    assert Path(bundle["path"]).resolve().is_relative_to(purelib.resolve()), bundle
