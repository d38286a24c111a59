"""The Slicer-like runtime is as strict as Slicer: Slicer's own tests of its Python layer, run unmodified on it,
and one test per leniency the runtime no longer has, each naming the Slicer / CTK / PythonQt source it follows.

Slicer's tests are loaded by path from the chosen layer (``$DA_SLICER_LAYER``: 5.12.3, the shared folder's
``tests/``, or 5.10.0, its ``v5.10.0/tests/``); tests of widgets the module never uses are skipped by name with
the reason. Sources: Slicer at the tags v5.10.0 and v5.12.3; CTK at the revisions those tags build
(``SuperBuild/External_CTK.cmake``: dd4caeae for 5.10.0, 5056664a for 5.12.3; line numbers are 5056664a's, and
the files named are the same or only shifted at dd4caeae); PythonQt as CTK builds it (MeVisLab/pythonqt 4.x).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
import textwrap
import unittest
from pathlib import Path
from types import ModuleType

import pytest
import slicer_runtime

if slicer_runtime.missing_requirements():
    pytest.skip(f"no Slicer-like runtime: {slicer_runtime.missing_requirements()}", allow_module_level=True)

import ctk  # noqa: E402
import qt  # noqa: E402
import slicer  # noqa: E402

UI_PATH = Path(__file__).resolve().parents[2] / "Resources" / "UI" / "DiffusionAnomaly.ui"

# --- Slicer's own tests ---------------------------------------------------------------------------------------------

SLICER_TEST_FILES = (
    "test_slicer_parameter_node_wrapper.py",
    "test_slicer_parameter_node_wrapper_gui_creation.py",
    "test_slicer_parameter_node_wrapper_guis.py",
    "test_slicer_parameter_pack.py",
    "test_slicer_util_VTKObservationMixin.py",
    "test_slicer_util_childWidgetVariables.py",
)
_NOT_USED = "the module does not use {}: not faked by the runtime"
SKIPPED = {
    "test_ctkDoubleSliderToFloat": _NOT_USED.format("ctkDoubleSlider"),
    "test_CtkRangeWidgetToRange": _NOT_USED.format("ctkRangeWidget"),
    "test_CtkRangeWidgetToNegativeRange": _NOT_USED.format("ctkRangeWidget"),
    "test_CtkDoubleRangeSliderToRange": _NOT_USED.format("ctkDoubleRangeSlider"),
    "test_qMRMLRangeSliderToRange": _NOT_USED.format("qMRMLRangeWidget"),
    "test_guiCreations_floatRange": _NOT_USED.format("ctkRangeWidget"),
    "test_ctkDirectoryButtonToPath": _NOT_USED.format("ctkDirectoryButton"),
    "test_qMRMLSubjectHierarchyTreeViewToNode": _NOT_USED.format("qMRMLSubjectHierarchyTreeView"),
    "test_qMRMLSubjectHierarchyComboBox": _NOT_USED.format("qMRMLSubjectHierarchyComboBox"),
}


def _load(filename: str) -> ModuleType:
    path = slicer_runtime.slicer_layer() / "tests" / filename
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # as in Slicer, where they run as modules of that name (pickled types)
    spec.loader.exec_module(module)
    return module


def _with_skips(case: type[unittest.TestCase], name: str) -> type[unittest.TestCase]:
    """A subclass of Slicer's TestCase in which the SKIPPED tests are skipped by name."""
    overrides = {}
    for test, reason in SKIPPED.items():
        if hasattr(case, test):
            overrides[test] = unittest.skip(reason)(lambda self: None)
    return type(name, (case,), {**overrides, "__module__": __name__, "__qualname__": name})


for _file in SLICER_TEST_FILES:
    _module = _load(_file)
    for _name, _case in inspect.getmembers(_module, inspect.isclass):
        if issubclass(_case, unittest.TestCase) and _case.__module__ == _module.__name__:
            _unique = _name if _name not in globals() else f"{_name}_{Path(_file).stem.removeprefix('test_slicer_')}"
            globals()[_unique] = _with_skips(_case, _unique)


def test_all_of_slicers_tests_of_the_layer_are_loaded() -> None:
    """The six files of the chosen layer, each with its TestCase (a file that stops loading would drop its tests)."""
    files = sorted(p.name for p in (slicer_runtime.slicer_layer() / "tests").glob("test_*.py"))
    assert files == sorted(SLICER_TEST_FILES)
    loaded = [c for c in globals().values() if isinstance(c, type) and issubclass(c, unittest.TestCase)]
    assert len(loaded) >= len(SLICER_TEST_FILES)


# --- the layer ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer,folder", [("5.12.3", "."), ("5.10.0", "v5.10.0")])
def test_the_layer_follows_DA_SLICER_LAYER(layer: str, folder: str) -> None:  # noqa: N802
    """``DA_SLICER_LAYER`` picks Slicer's Python layer and ``SLICER_VERSION`` (the fake app's version) with it."""
    probe = ("import slicer_runtime as r; print(r.SLICER_VERSION, r.slicer_layer())")
    env = {**os.environ, slicer_runtime.LAYER_ENV: layer}
    out = subprocess.run([sys.executable, "-c", probe], cwd=Path(slicer_runtime.__file__).parent, env=env,
                         capture_output=True, text=True, check=True).stdout.split(") ", 1)
    assert out[0] + ")" == str(tuple(int(p) for p in layer.split(".")))
    assert Path(out[1].strip()) == (slicer_runtime.shared_slicer_python() / folder).resolve()
    # and this process runs the layer it was given
    assert (slicer.app.majorVersion, slicer.app.minorVersion, slicer.app.patchVersion) == slicer_runtime.SLICER_VERSION
    assert Path(slicer.util.__file__).resolve().parent == slicer_runtime.slicer_layer() / "slicer"
    bad = subprocess.run([sys.executable, "-c", "import slicer_runtime as r; r.missing_requirements()"],
                         cwd=Path(slicer_runtime.__file__).parent, env={**env, slicer_runtime.LAYER_ENV: "5.8.0"},
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "the layers are 5.12.3, 5.10.0" in bad.stderr


# --- ctkCollapsibleButton -------------------------------------------------------------------------------------------

def test_a_section_collapsed_in_the_ui_hides_its_children_when_the_panel_is_shown() -> None:
    """CTK ``Libs/Widgets/ctkCollapsibleButton.cpp``: children are hidden/shown only once the button is created
    (``setChildVisibility`` l. 130-133), so at load nothing is hidden yet, and the first ``setVisible`` hides the
    children of a collapsed button (l. 708-734); a child shown by someone else while collapsed is hidden again and
    one hidden by someone else stays hidden on expanding (``eventFilter`` l. 737-769); a child added while
    collapsed is hidden (``childEvent`` l. 682-705)."""
    widget = slicer.util.loadUI(str(UI_PATH))
    ui = slicer.util.childWidgetVariables(widget)
    section = ui.advancedCollapsibleButton
    children = [c for c in section.children() if isinstance(c, qt.QWidget)]
    assert section.collapsed and children
    assert not any(c.isHidden() for c in children)  # not created yet: CTK leaves them alone
    widget.show()
    assert all(c.isHidden() for c in children)
    assert not any(c.isHidden() for c in ui.inputsCollapsibleButton.children() if isinstance(c, qt.QWidget))
    first, *rest = children
    first.show()  # e.g. a module's ``visible = True`` while the section is collapsed
    assert first.isHidden()
    if rest:
        rest[0].hide()  # hidden by the module: stays hidden when the user expands the section
    section.collapsed = False
    assert first.isVisible() and all(c.isVisible() for c in rest[1:])
    assert not rest or rest[0].isHidden()
    section.collapsed = True
    added = qt.QLabel("added while collapsed", section)
    assert added.isHidden()
    widget.hide()
    widget.deleteLater()


# --- ctkSliderWidget ------------------------------------------------------------------------------------------------

def test_slider_refuses_a_single_step_larger_than_its_range() -> None:
    """CTK ``ctkSliderWidget.cpp`` l. 417-431 (``setSingleStep``: "is out of bounds", then nothing) with
    ``ctkDoubleSlider.cpp`` l. 395-407 (``isValidStep``: up to maximum - minimum); the range is the spin box's
    [0, 99.99] until set (l. 185-186). Slicer's ``guiConnectors.py`` sets ``SingleStep`` before the range."""
    slider = ctk.ctkSliderWidget()
    assert (slider.minimum, slider.maximum, slider.singleStep, slider.decimals) == (0.0, 99.99, 1.0, 2)
    slider.singleStep = 150
    assert slider.singleStep == 1.0 and ctk.warnings == [
        "ctkSliderWidget::setSingleStep() 150 is out of bounds. 0 99.99 0"]
    slider.singleStep = -1
    assert slider.singleStep == 1.0 and len(ctk.warnings) == 2
    slider.maximum = 3000
    slider.singleStep = 150
    assert slider.singleStep == 150.0
    ctk.warnings.clear()


def test_slider_keeps_the_value_as_given_not_rounded_to_its_decimals() -> None:
    """CTK keeps the input value (``ctkDoubleSpinBox.cpp`` l. 887-926: ``InputValue``, only the text is rounded)
    and ``ctkSliderWidget::value()`` is the slider's (``ctkSliderWidget.cpp`` l. 295-302), whose offset keeps a
    value between steps (``ctkDoubleSlider.cpp`` l. 167-170, 335-363): the old fake rounded to ``decimals`` with
    Python's half-to-even ``round``. ``setDecimals`` emits ``valueChanged`` even for the same value (l. 455-475,
    through ``setSpinBoxValue`` l. 362-380); a value out of range is clamped."""
    slider = ctk.ctkSliderWidget()
    changed: list[float] = []
    slider.connect("valueChanged(double)", changed.append)
    slider.value = 0.123456
    assert slider.value == 0.123456 and changed == [0.123456]
    slider.decimals = 0
    assert slider.value == 0.123456 and changed == [0.123456, 0.123456]
    slider.maximum = 10
    slider.singleStep = 0.1
    for value in (2.5, 0.25, 9.5, 4.2):
        slider.value = value
        assert slider.value == value
    slider.value = 50
    assert slider.value == 10.0
    slider.value = -3
    assert slider.value == 0.0
    slider.value = 0.0  # unchanged: no signal (ctkDoubleSpinBox::setValueIfDifferent)
    assert changed[-2:] == [10.0, 0.0] and len(changed) == 8


# --- module panel: setup on first show, enter each time -------------------------------------------------------------

def test_setup_runs_when_the_panel_is_first_built_and_enter_each_time_it_is_shown(tmp_path: Path) -> None:
    """Slicer: the panel is built (and ``setup()`` runs, then it gets the scene) on the first
    ``widgetRepresentation()`` (``qSlicerAbstractCoreModule.cxx`` l. 233-281, ``setModule`` ->
    ``setup()`` in ``qSlicerAbstractModuleRepresentation.cxx`` l. 79-85), which showing the module does; showing
    makes the panel visible, then calls ``enter()`` (``qSlicerModulePanel.cxx`` l. 164, 197); showing another
    module calls ``exit()`` (l. 220); selecting the shown module again does nothing (l. 108-111); entering twice
    is asserted against (``qSlicerAbstractModuleWidget.cxx`` l. 57)."""
    source = textwrap.dedent('''
        import slicer
        from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget

        CALLS = []

        class Strict(ScriptedLoadableModule):
            pass

        class StrictWidget(ScriptedLoadableModuleWidget):
            def setup(self):
                ScriptedLoadableModuleWidget.setup(self)
                CALLS.append(("setup", self.parent.isEntered, slicer.modules.StrictWidget is self))

            def enter(self):
                CALLS.append(("enter", self.parent.isEntered, self.parent.isVisible()))

            def exit(self):
                CALLS.append(("exit", self.parent.isEntered))
    ''')
    (tmp_path / "Strict.py").write_text(source)
    module = slicer_runtime.load_module(tmp_path / "Strict.py")
    assert module.CALLS == []  # loading the module builds no panel
    widget = slicer.util.getModuleWidget("Strict")  # built and set up, not entered
    assert module.CALLS == [("setup", False, True)] and not widget.parent.isEntered
    assert widget.parent.mrmlScene() is slicer.mrmlScene
    assert slicer_runtime.show_module("Strict") is widget
    assert module.CALLS[1:] == [("enter", True, True)]
    slicer_runtime.show_module("Strict")  # already shown: nothing
    slicer.util.selectModule("Strict")
    assert len(module.CALLS) == 2
    with pytest.raises(RuntimeError, match="entered"):
        widget.parent.enter()
    slicer_runtime.hide_module()
    slicer.util.selectModule("Strict")
    assert module.CALLS[2:] == [("exit", False), ("enter", True, True)]
    slicer_runtime.hide_module()
    with pytest.raises(RuntimeError, match="not entered"):
        widget.parent.exit()


# --- dialogs --------------------------------------------------------------------------------------------------------

def test_dialogs_are_modal_and_record_the_cursor_they_are_shown_under() -> None:
    """Slicer's popups end in a modal ``exec_()`` (``slicer/util.py`` ``messageBox``: l. 3379 in 5.12.3, l. 3199
    in 5.10.0), shown under whatever override cursor is set: a wait cursor then shows over a dialog waiting for the
    user. ``tryWithErrorDisplay(waitCursor=True)`` restores the cursor before its ``errorDisplay`` (l. 3574-3588;
    l. 3394-3408 in 5.10.0). Qt's own modal dialogs are recorded and answered instead of blocking."""
    recorder = slicer_runtime.dialogs
    slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
    slicer.util.errorDisplay("under the wait cursor")
    slicer.app.restoreOverrideCursor()
    with pytest.raises(ValueError), slicer.util.tryWithErrorDisplay("Could not.", waitCursor=True):
        raise ValueError("bad")
    assert [(s.kind, s.overrideCursor) for s in recorder.shown] == [
        ("errorDisplay", int(qt.Qt.WaitCursor)), ("errorDisplay", None)]
    assert recorder.under_override_cursor() == recorder.shown[:1]

    recorder.reset()
    box = qt.QMessageBox()
    box.text = "Continue?"
    recorder.answers.append(qt.QMessageBox.Yes)
    assert box.exec_() == qt.QMessageBox.Yes  # answered, not blocking
    dialog = qt.QDialog()
    dialog.setWindowTitle("Progress")
    dialog.setModal(True)
    dialog.show()
    assert qt.QDialog().exec_() == qt.QDialog.Rejected  # nothing scripted: closed by the user
    assert [(s.kind, s.text) for s in recorder.shown] == [("exec", "Continue?"), ("modalShow", "Progress"),
                                                            ("exec", "")]
    dialog.close()
    recorder.reset()


def test_get_open_file_name_returns_a_string_as_pythonqt_does() -> None:
    """PythonQt wraps the static ``QFileDialog`` functions with their C++ return types (MeVisLab/pythonqt
    ``generated_cpp_515/com_trolltech_qt_gui/com_trolltech_qt_gui1.h`` l. 2063-2067: ``QString``, ``QStringList``;
    a QStringList becomes a tuple, ``src/PythonQtConversion.cpp`` l. 1268-1280); PyQt5 returns (path, filter).
    The dialog is modal: recorded, answered from the script ("" when nothing is scripted: cancelled)."""
    recorder = slicer_runtime.dialogs
    assert qt.QFileDialog.getOpenFileName(None, "Model bundle (.zip)", "", "Bundles (*.zip)") == ""
    recorder.answers.extend(["/data/bundle.zip", "/data/out.nrrd", ["/a.nii", "/b.nii"], "/data"])
    assert qt.QFileDialog.getOpenFileName(None, "Model bundle (.zip)", "", "Bundles (*.zip)") == "/data/bundle.zip"
    assert qt.QFileDialog.getSaveFileName(None, "Save") == "/data/out.nrrd"
    assert qt.QFileDialog.getOpenFileNames(None, "Volumes") == ("/a.nii", "/b.nii")
    assert qt.QFileDialog.getExistingDirectory(None, "Folder") == "/data"
    assert [s.kind for s in recorder.shown] == ["getOpenFileName", "getOpenFileName", "getSaveFileName",
                                                "getOpenFileNames", "getExistingDirectory"]
    assert recorder.shown[0].text == "Model bundle (.zip)"
