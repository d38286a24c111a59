"""Slicer's own tests of its Python layer, run unmodified on the Slicer-like runtime.

They are loaded by path from the shared folder (``$DA_SLICER_PYTHON/tests``); tests of widgets
the module never uses are skipped by name with the reason.
"""

from __future__ import annotations

import importlib.util
import unittest
from types import ModuleType

import pytest
import slicer_runtime

if slicer_runtime.missing_requirements():
    pytest.skip(f"no Slicer-like runtime: {slicer_runtime.missing_requirements()}", allow_module_level=True)

_NOT_USED = "the module does not use {}: not faked by the runtime"
SKIPPED = {
    "test_ctkDoubleSliderToFloat": _NOT_USED.format("ctkDoubleSlider"),
    "test_CtkRangeWidgetToRange": _NOT_USED.format("ctkRangeWidget"),
    "test_CtkRangeWidgetToNegativeRange": _NOT_USED.format("ctkRangeWidget"),
    "test_CtkDoubleRangeSliderToRange": _NOT_USED.format("ctkDoubleRangeSlider"),
    "test_qMRMLRangeSliderToRange": _NOT_USED.format("qMRMLRangeWidget"),
    "test_ctkDirectoryButtonToPath": _NOT_USED.format("ctkDirectoryButton"),
    "test_qMRMLSubjectHierarchyTreeViewToNode": _NOT_USED.format("qMRMLSubjectHierarchyTreeView"),
    "test_qMRMLSubjectHierarchyComboBox": _NOT_USED.format("qMRMLSubjectHierarchyComboBox"),
}


def _load(filename: str) -> ModuleType:
    path = slicer_runtime.shared_slicer_python() / "tests" / filename
    spec = importlib.util.spec_from_file_location(f"slicer_own_tests.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _with_skips(case: type[unittest.TestCase]) -> type[unittest.TestCase]:
    """A subclass of Slicer's TestCase in which the SKIPPED tests are skipped by name."""
    overrides = {}
    for name, reason in SKIPPED.items():
        if hasattr(case, name):
            overrides[name] = unittest.skip(reason)(lambda self: None)
    return type(case.__name__, (case,), {**overrides, "__module__": __name__, "__qualname__": case.__name__})


ParameterNodeWrapperGuiTest = _with_skips(
    _load("test_slicer_parameter_node_wrapper_guis.py").ParameterNodeWrapperGuiTest)
SlicerUtilChildWidgetVariablesTests = _with_skips(
    _load("test_slicer_util_childWidgetVariables.py").SlicerUtilChildWidgetVariablesTests)
