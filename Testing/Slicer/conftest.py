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
    if UNAVAILABLE is None:
        import ctk

        ctk.warnings.clear()
    slicer_runtime.thread_violations.clear()
    slicer_runtime.pip_mode = "record"
    yield
    assert not slicer_runtime.slot_errors, f"exceptions in Qt slots: {slicer_runtime.slot_errors}"
    if UNAVAILABLE is None:
        _strict_after_test()
    # PythonQt keeps the GIL while Qt processes events: nothing in Slicer's process may wait on a Python thread
    assert not slicer_runtime.thread_violations, f"Python threads alive: {slicer_runtime.thread_violations[:3]}"


def _strict_after_test() -> None:
    """What Slicer would get wrong after a test: an override cursor left set (Slicer keeps it for good), a modal
    dialog shown under a wait cursor (the user sees a busy cursor over a dialog waiting for them), a CTK warning
    (e.g. a refused ``singleStep``: the widget then behaves unlike its ``.ui``)."""
    import ctk
    from PyQt5 import QtWidgets

    left = 0
    while QtWidgets.QApplication.overrideCursor() is not None and left < 100:
        QtWidgets.QApplication.restoreOverrideCursor()
        left += 1
    assert not left, f"{left} override cursor(s) left set after the test"
    under = slicer_runtime.dialogs.under_override_cursor()
    assert not under, f"dialogs shown under an override cursor: {under}"
    assert not ctk.warnings, f"CTK warnings: {ctk.warnings}"
