"""DiffusionAnomaly: the 3D Slicer scripted module (thin; all logic lives in DiffusionAnomalyLib).

Skeleton stage: the panel selects a volume and an organ and reports whether the library and its
dependencies are usable. The detection run (background worker, progress, Cancel, results in the
scene) arrives with the Slicer-panel issue.
"""

import importlib
import os
import sys
import unittest
from typing import Annotated

import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _ensure_library_importable() -> None:
    """Put the repository root on sys.path when the module runs from a source checkout."""
    try:
        importlib.import_module("DiffusionAnomalyLib")
    except ImportError:
        repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.isdir(os.path.join(repo_root, "DiffusionAnomalyLib")) and repo_root not in sys.path:
            sys.path.insert(0, repo_root)


_ensure_library_importable()

ORGANS = ("kidney", "liver", "brain")


class DiffusionAnomaly(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Diffusion Anomaly"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["DiffusionAnomaly developers"]
        self.parent.helpText = (
            "Finds candidate lesions in kidney CT, liver CT and brain MRI by reconstructing a healthy version "
            "of the organ with a latent diffusion model and showing where the scan differs. "
            "Research software, not a medical device: it misses lesions that look like healthy tissue and "
            "marks healthy structures as anomalous; demo models are trained on synthetic phantoms and their "
            "findings on real scans mean nothing."
        )
        self.parent.acknowledgementText = (
            "Method from: a 3D latent diffusion MSc thesis and paper on kidney anomaly detection (classifier-"
            "guided DDPM/DDIM), a PhD thesis on weakly supervised brain-tumour detection with 3D latent "
            "diffusion, semantic diffusion for CT synthesis, and diffusion-prior inpainting for liver tumours "
            "(see README). Built on MONAI, PyTorch, SimpleITK and 3D Slicer."
        )


@parameterNodeWrapper
class DiffusionAnomalyParameterNode:
    """Every setting of the panel; stored in the scene so it survives save and reload."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    organ: Annotated[str, Choice(list(ORGANS))] = "kidney"


class DiffusionAnomalyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from DiffusionAnomalyLib.resources import resource_path

        uiWidget = slicer.util.loadUI(str(resource_path("UI", "DiffusionAnomaly.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        for organ in ORGANS:
            self.ui.organComboBox.addItem(organ)
        self.logic = DiffusionAnomalyLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.setToolTip("Detection runs arrive with the Slicer-panel issue; see README.")
        self.ui.statusLabel.text = self.logic.statusText()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)


class DiffusionAnomalyLogic(ScriptedLoadableModuleLogic):
    """GUI-independent logic; it calls the library and never blocks on heavy work itself."""

    def getParameterNode(self):
        return DiffusionAnomalyParameterNode(super().getParameterNode())

    @staticmethod
    def statusText() -> str:
        try:
            import DiffusionAnomalyLib

            return f"DiffusionAnomalyLib {DiffusionAnomalyLib.__version__} loaded."
        except ImportError as exc:
            return f"DiffusionAnomalyLib could not be imported: {exc}"


class DiffusionAnomalyTest(ScriptedLoadableModuleTest):
    """Self-test run by Slicer's CI (registered in CMakeLists.txt)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_library_and_phantom()

    def test_library_and_phantom(self):
        from DiffusionAnomalyLib.phantoms import make_phantom
        from DiffusionAnomalyLib.presets import PRESETS

        self.assertEqual(set(PRESETS), set(ORGANS))
        case = make_phantom("kidney", seed=1, n_lesions=1)
        self.assertEqual(len(case.lesions), 1)
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom")
        self.assertIsInstance(node, vtk.vtkObject)
        self.delayDisplay("DiffusionAnomaly skeleton test passed")


if __name__ == "__main__":
    unittest.main()
