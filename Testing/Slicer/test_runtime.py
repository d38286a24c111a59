"""Tests of the Slicer-like runtime itself: PythonQt habits, the .ui loader, the qMRML fakes,
the scene's layout, popups, blocked imports and scripted-module loading."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import slicer_runtime

if slicer_runtime.missing_requirements():
    pytest.skip(f"no Slicer-like runtime: {slicer_runtime.missing_requirements()}", allow_module_level=True)

import ctk  # noqa: E402
import qt  # noqa: E402
import slicer  # noqa: E402

UI_PATH = Path(__file__).resolve().parents[2] / "Resources" / "UI" / "DiffusionAnomaly.ui"


@pytest.fixture(autouse=True)
def _clear_scene() -> None:
    slicer.mrmlScene.Clear(0)


def test_qt_properties_are_attributes_and_win_over_methods() -> None:
    label = qt.QLabel("hello")
    assert label.text == "hello"
    label.text = "bye"
    assert qt.QLabel.text(label) == "bye"
    button = qt.QPushButton()
    button.enabled = False
    assert button.enabled is False and not button.isEnabled()
    button.toolTip = "x"
    assert button.toolTip == "x"
    box = qt.QCheckBox()
    box.checked = True
    assert box.checked and box.isChecked()
    spin = qt.QSpinBox()
    spin.value = 7
    assert spin.value == 7
    combo = qt.QComboBox()
    combo.addItems(["a", "b"])
    combo.currentIndex = 1
    assert combo.currentText == "b"
    with pytest.raises(AttributeError):
        combo.count = 3  # read-only Qt property
    bar = qt.QProgressBar()
    bar.visible = False
    assert bar.visible is False
    assert qt.Qt.AlignLeft == qt.QtCore.Qt.AlignLeft
    named = qt.QWidget()
    named.setObjectName("foo")
    assert named.name == "foo" and named.className() == "QWidget"


def test_string_signature_connect_and_disconnect() -> None:
    got = []
    slider = ctk.ctkSliderWidget()
    slider.maximum = 10
    slider.connect("valueChanged(double)", got.append)
    slider.value = 3.5
    assert got == [3.5]
    slider.disconnect("valueChanged(double)", got.append)
    slider.value = 4
    assert got == [3.5]

    clicks = []
    button = qt.QPushButton()
    button.connect("clicked(bool)", lambda: clicks.append("no-arg slot"))  # PythonQt drops extra args
    button.click()
    table = qt.QTableWidget(2, 2)
    table.connect("cellClicked(int,int)", lambda row, col: clicks.append((row, col)))
    table.cellClicked.emit(1, 0)
    assert clicks == ["no-arg slot", (1, 0)]

    nodes = []
    combo = slicer.qMRMLNodeComboBox()
    combo.connect("currentNodeChanged(vtkMRMLNode*)", nodes.append)
    combo.connect("currentNodeChanged(bool)", nodes.append)
    combo.nodeTypes = ["vtkMRMLScalarVolumeNode"]
    combo.setMRMLScene(slicer.mrmlScene)
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v")
    combo.setCurrentNode(volume)
    assert nodes[-2:] == [volume, True]


def test_loads_the_module_ui_with_its_custom_widgets() -> None:
    widget = slicer.util.loadUI(str(UI_PATH))
    ui = slicer.util.childWidgetVariables(widget)
    assert type(widget) is slicer.qMRMLWidget
    assert type(ui.inputVolumeSelector) is slicer.qMRMLNodeComboBox
    assert type(ui.inputsCollapsibleButton) is ctk.ctkCollapsibleButton
    assert type(ui.applyButton) is qt.QPushButton
    assert ui.inputVolumeSelector.nodeTypes == ("vtkMRMLScalarVolumeNode",)
    assert ui.inputVolumeSelector.property("SlicerParameterName") == "inputVolume"
    assert not hasattr(widget, "applyButton")  # as with Qt's QUiLoader: children are not attributes
    assert ui.logCollapsibleButton.collapsed is True
    sliders = [w for w in vars(ui).values() if type(w) is ctk.ctkSliderWidget]
    assert sliders and all(s.minimum <= s.value <= s.maximum for s in sliders)
    # the .ui's <connections>: mrmlSceneChanged(vtkMRMLScene*) -> setMRMLScene(vtkMRMLScene*)
    assert ui.inputVolumeSelector.mrmlScene() is None
    widget.setMRMLScene(slicer.mrmlScene)
    assert ui.inputVolumeSelector.mrmlScene() is slicer.mrmlScene
    assert ui.maskSegmentationSelector.mrmlScene() is slicer.mrmlScene


def test_collapsible_button_hides_its_contents() -> None:
    button = ctk.ctkCollapsibleButton()
    child = qt.QLabel("inside", button)
    button.show()
    states = []
    button.connect("contentsCollapsed(bool)", states.append)
    button.collapsed = True
    assert states == [True] and not child.visible and button.checked is False
    button.checked = True
    assert states == [True, False] and child.visible and button.collapsed is False


def test_node_combobox_follows_the_scene() -> None:
    combo = slicer.qMRMLNodeComboBox()
    combo.nodeTypes = ["vtkMRMLScalarVolumeNode"]
    combo.noneEnabled = False
    combo.addEnabled = False
    combo.removeEnabled = False
    combo.setMRMLScene(slicer.mrmlScene)
    assert combo.currentNode() is None and combo.nodeCount() == 0
    first = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "first")
    assert combo.currentNode() is first  # the first row of an empty list gets selected
    second = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "second")
    slicer.mrmlScene.AddNewNodeByClass("vtkMRMLModelNode", "not listed")
    assert combo.currentNode() is first and combo.nodeCount() == 2
    assert combo.nodeFromIndex(1) is second
    slicer.mrmlScene.RemoveNode(first)
    assert combo.currentNode() is second and combo.currentNodeID == second.GetID()
    slicer.mrmlScene.RemoveNode(second)
    assert combo.currentNode() is None and combo.nodeCount() == 0

    with_none = slicer.qMRMLNodeComboBox()
    with_none.nodeTypes = ["vtkMRMLScalarVolumeNode"]
    with_none.noneEnabled = True
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v")
    with_none.setMRMLScene(slicer.mrmlScene)
    assert with_none.currentNode() is None and with_none.nodeCount() == 1
    with_none.currentNodeID = volume.GetID()
    assert with_none.currentNode() is volume


def test_scene_has_slicer_layout_and_slice_views() -> None:
    scene = slicer.mrmlScene
    layoutNode = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layoutNode is not None
    assert slicer.app.layoutManager().layoutLogic().GetLayoutNode() is layoutNode
    orientations = {name: scene.GetNodeByID(f"vtkMRMLSliceNode{name}").GetOrientation()
                    for name in ("Red", "Yellow", "Green")}
    assert orientations == {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
    for name in ("Red", "Yellow", "Green"):
        composite = slicer.app.layoutManager().sliceWidget(name).sliceLogic().GetSliceCompositeNode()
        assert composite is not None and composite.GetLayoutName() == name
    manager = slicer.app.layoutManager()
    manager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView)
    assert layoutNode.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView
    manager.layout = slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView
    assert manager.layout == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView
    assert (slicer.app.majorVersion, slicer.app.minorVersion) == slicer_runtime.SLICER_VERSION[:2]


def test_jump_slices_moves_the_real_slice_nodes() -> None:
    slicer.modules.markups.logic().JumpSlicesToLocation(10.0, -20.0, 30.0, True)
    red = slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeRed").GetSliceToRAS()
    assert [red.GetElement(i, 3) for i in range(3)] == [10.0, -20.0, 30.0]


def test_popups_are_recorded_and_answered() -> None:
    slicer.util.errorDisplay("boom", windowTitle="T")
    slicer_runtime.dialogs.answers.append(False)
    assert slicer.util.confirmOkCancelDisplay("install?") is False
    assert slicer.util.confirmYesNoDisplay("sure?") is True  # unscripted: Slicer's testing-mode answer
    with pytest.raises(ValueError), slicer.util.tryWithErrorDisplay("Could not run.", waitCursor=True):
        raise ValueError("bad input")  # shown, then re-raised, as in Slicer
    kinds = [s.kind for s in slicer_runtime.dialogs.shown]
    assert kinds == ["errorDisplay", "confirmOkCancelDisplay", "confirmYesNoDisplay", "errorDisplay"]
    assert slicer_runtime.dialogs.texts("errorDisplay")[1].startswith("Could not run.\n\nbad input")
    slicer.util.pip_install("einops")
    assert slicer_runtime.pip_installs == ["einops"]


def test_blocked_imports_fail() -> None:
    with pytest.raises(ImportError, match="blocked"):
        import torch  # noqa: F401


def test_scripted_module_loads_and_builds_its_panel(tmp_path: Path) -> None:
    source = textwrap.dedent(f'''
        import qt, slicer
        from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
        from slicer.util import VTKObservationMixin

        class Probe(ScriptedLoadableModule):
            def __init__(self, parent):
                ScriptedLoadableModule.__init__(self, parent)
                parent.title = "Probe"

        class ProbeWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
            def __init__(self, parent=None):
                ScriptedLoadableModuleWidget.__init__(self, parent)
                VTKObservationMixin.__init__(self)
                self.clicks = 0

            def setup(self):
                ScriptedLoadableModuleWidget.setup(self)
                uiWidget = slicer.util.loadUI({str(UI_PATH)!r})
                self.layout.addWidget(uiWidget)
                self.ui = slicer.util.childWidgetVariables(uiWidget)
                uiWidget.setMRMLScene(slicer.mrmlScene)
                self.ui.applyButton.enabled = True
                self.ui.applyButton.connect("clicked(bool)", self.onApply)

            def onApply(self):
                self.clicks += 1
    ''')
    path = tmp_path / "Probe.py"
    path.write_text(source)
    slicer_runtime.load_module(path)
    widget = slicer_runtime.make_widget("Probe")
    assert slicer.modules.probe.title == "Probe" and slicer.util.getModuleWidget("Probe") is widget
    widget.ui.applyButton.click()
    assert widget.clicks == 1
    assert widget.ui.inputVolumeSelector.mrmlScene() is slicer.mrmlScene
