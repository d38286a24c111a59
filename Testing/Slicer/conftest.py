"""Slicer-side tests: install the Slicer-like runtime before any test imports ``slicer``/``qt``.

The whole folder is skipped (with the reason) when Slicer's Python layer (``$DA_SLICER_PYTHON``,
default ``../shared/slicer-python``), PyQt5 or slicer-core is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

RUNTIME_DIR = Path(__file__).resolve().parents[1] / "SlicerRuntime"
sys.path.insert(0, str(RUNTIME_DIR))

import slicer_runtime  # noqa: E402

# What the Slicer process must not import (the panel runs the heavy work in a worker process).
BLOCKED_IMPORTS = ("torch", "monai", "skimage", "matplotlib")

UNAVAILABLE = slicer_runtime.missing_requirements()
if UNAVAILABLE is None:
    slicer_runtime.install(block_imports=BLOCKED_IMPORTS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if UNAVAILABLE is None:
        return
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=f"no Slicer-like runtime: {UNAVAILABLE}"))


@pytest.fixture(autouse=True)
def _fresh_dialogs():
    """Each test starts with no recorded popups and no scripted answers."""
    slicer_runtime.dialogs.reset()
    slicer_runtime.pip_installs.clear()
    slicer_runtime.slot_errors.clear()
    yield
    assert not slicer_runtime.slot_errors, f"exceptions in Qt slots: {slicer_runtime.slot_errors}"
