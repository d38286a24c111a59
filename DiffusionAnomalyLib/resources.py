"""Where the shared resources (UI, model manifest, colour/terminology files, demo bundles) are.

Source checkout: ``<repo>/Resources``. Slicer build or install: ``DiffusionAnomalyResources`` next to
the library (see the top-level CMakeLists.txt). Installed wheel: ``DiffusionAnomalyLib/_resources`` (the
shipped bundles and the panel's ``.ui``; ``setup.py``). ``DA_RESOURCES`` overrides all three.
"""

from __future__ import annotations

import os
from pathlib import Path

_LIB_DIR = Path(__file__).resolve().parent


def resources_dir() -> Path:
    """The resources folder; raises FileNotFoundError naming the places looked at."""
    candidates = [Path(os.environ["DA_RESOURCES"])] if os.environ.get("DA_RESOURCES") else []
    candidates += [_LIB_DIR.parent / "Resources", _LIB_DIR.parent / "DiffusionAnomalyResources",
                   _LIB_DIR / "_resources"]
    for c in candidates:
        if (c / "UI" / "DiffusionAnomaly.ui").is_file():
            return c
    raise FileNotFoundError(f"DiffusionAnomaly resources not found in {[str(c) for c in candidates]}")


def resource_path(*parts: str) -> Path:
    """Path of one resource file, e.g. ``resource_path("UI", "DiffusionAnomaly.ui")``."""
    return resources_dir().joinpath(*parts)
