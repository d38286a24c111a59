"""The library's layers, read from its import statements (no imports are executed).

DiffusionAnomalyLib/
  settings, errors, logs, resources   the shared vocabulary (torch-free)
  imaging/      reading and writing volumes, masks, segmentation files, TotalSegmentator
  detection/    presets, ROI, intensity, anomaly maps, the pipeline, the non-neural baseline (torch-free)
  models/       bundles, networks, diffusion samplers, the reconstructor, devices
  training/     the trainers (nothing that runs a detection imports them)
  evaluation/   datasets, metrics, evaluate, sweep, batch, bench
  synthetic/    phantoms and pseudo-labels from reports
  api           the typed Python API (detect; evaluate, sweep, batch, train_all on first use)
  app/          the command line, the worker and its client, dependencies
  slicer_module/ the panel's logic and the Slicer scene code (Slicer's process: torch-free)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "DiffusionAnomalyLib"
PKG = "DiffusionAnomalyLib"
SHARED = {"settings", "options", "errors", "logs", "progress", "resources", "__init__", "__main__"}
LAYERS = {"imaging", "detection", "models", "training", "evaluation", "synthetic", "api", "app", "slicer_module"}
# which layers each layer may import (besides itself and the shared modules)
ALLOWED = {
    "imaging": {"detection"},  # masks and TotalSegmentator read the organ presets
    "detection": {"imaging"},
    "models": {"imaging", "detection"},
    "training": {"imaging", "detection", "models", "evaluation"},
    "evaluation": {"imaging", "detection", "models"},
    "synthetic": {"imaging", "detection"},
    "api": {"imaging", "detection", "models", "training", "evaluation", "synthetic"},
    "app": {"imaging", "detection", "models", "training", "evaluation", "synthetic", "api", "slicer_module"},
    "slicer_module": {"imaging", "models", "api", "app", "synthetic", "detection"},  # presets (the baseline's organ)
}
SHARED_ALLOWED = {"imaging", "detection", "models"}  # settings resolves presets, sampler and post-processing lazily


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "shared"


def _imports() -> dict[str, set[str]]:
    """Module (dotted) -> the DiffusionAnomalyLib modules it imports, lazily or not."""
    found: dict[str, set[str]] = {}
    for f in LIB.rglob("*.py"):
        module = ".".join(f.relative_to(LIB.parent).with_suffix("").parts)
        names: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith(PKG):
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level:
                names.add("relative")
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names if a.name.startswith(PKG))
        found[module] = names
    return found


IMPORTS = _imports()


def test_every_module_sits_in_a_layer_or_is_shared():
    loose = [m for m in IMPORTS if _layer(m) == "shared" and m.split(".")[-1] not in SHARED and m != PKG + ".__init__"]
    assert loose == []


def test_imports_are_absolute():
    assert [m for m, names in IMPORTS.items() if "relative" in names] == []


@pytest.mark.parametrize("module", sorted(IMPORTS))
def test_layers_import_only_what_they_may(module):
    layer = _layer(module)
    if module == f"{PKG}.__main__":  # `python -m DiffusionAnomalyLib` is the command line
        assert IMPORTS[module] <= {f"{PKG}.app.cli", f"{PKG}.app.cli.main"}
        return
    allowed = (ALLOWED[layer] if layer != "shared" else SHARED_ALLOWED) | {layer, "shared"}
    wrong = sorted(n for n in IMPORTS[module] if n.startswith(PKG + ".") and _layer(n) not in allowed)
    assert wrong == [], f"{module} ({layer}) imports {wrong}"


#: The command dispatcher imports each command's code inside that command (``train`` imports the trainers);
#: the worker reuses only its argument parser, so the walk below does not go through it.
DISPATCHER = f"{PKG}.app.cli"


def _reaches(start: str) -> set[str]:
    """Every library module reachable from start through imports (lazy ones included)."""
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen or m not in IMPORTS:
            continue
        seen.add(m)
        todo.extend(n for n in IMPORTS[m] if n != DISPATCHER)
    return seen


@pytest.mark.parametrize("entry", ["api", "app.worker", "evaluation.batch", "slicer_module.panel",
                                   "models.reconstruction"])
def test_a_detection_never_imports_training(entry):
    reached = _reaches(f"{PKG}.{entry}")
    assert not [m for m in reached if _layer(m) == "training"]


def test_the_layers_are_documented_here_and_in_developers_md():
    text = (LIB.parent / "DEVELOPERS.md").read_text(encoding="utf-8")
    assert all(f"{layer}/" in text or f"{layer}.py" in text for layer in LAYERS)
