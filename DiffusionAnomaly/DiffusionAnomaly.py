"""DiffusionAnomaly: the 3D Slicer scripted module (thin; the logic lives in DiffusionAnomalyLib.slicer_module.panel).

Slicer 5.10 or later. Slicer's own process imports only what Slicer ships; the model work runs in a
background worker process (DiffusionAnomalyLib.app.worker) that the Logic polls from a timer, so the GUI
never blocks. Tested outside Slicer in Testing/Slicer against Slicer's own Python layer.
"""

import importlib.util
import os
import sys
import unittest
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# From a source checkout the library is beside this folder (a Slicer build copies it next to the module instead).
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not importlib.util.find_spec("DiffusionAnomalyLib") and os.path.isdir(f"{_REPO_ROOT}/DiffusionAnomalyLib"):
    sys.path.insert(0, _REPO_ROOT)

from DiffusionAnomalyLib.slicer_module import panel, synthesis_panel  # noqa: E402 (after the path fallback; torch-free)


class DiffusionAnomaly(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Diffusion Anomaly"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["DiffusionAnomaly developers"]
        self.parent.helpText = (
            "Finds candidate lesions in kidney CT, liver CT and brain MRI by reconstructing a healthy version of the "
            "organ with a latent diffusion model and showing where the scan differs. Needs 3D Slicer 5.10 or later. "
            "Research software, not a medical device. The shipped DEMO models are trained on synthetic phantoms: "
            "their findings on real scans mean nothing; import a bundle trained on real data for real use.")
        self.parent.acknowledgementText = "Method and credits: see the README. Built on MONAI, PyTorch and SimpleITK."


@parameterNodeWrapper
class DiffusionAnomalyParameterNode(panel.run_setting_parameters(), synthesis_panel.parameters()):
    """Every setting of the panel; stored in the scene so it survives save and reload. The run settings
    (sampler, noiseLevel, steps, guidance, seed, reference, samples, medianFilter, device) come from the
    library's one settings object (``panel.run_setting_parameters``); "bundle" / 0 / -1 there mean the chosen
    bundle's recommendation (choosing a bundle fills in its values)."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    channel2Volume: Optional[slicer.vtkMRMLScalarVolumeNode]  # noqa: UP045 (parameterNodeWrapper needs Optional)
    channel3Volume: Optional[slicer.vtkMRMLScalarVolumeNode]  # noqa: UP045
    channel4Volume: Optional[slicer.vtkMRMLScalarVolumeNode]  # noqa: UP045
    organ: Annotated[str, Choice(list(panel.ORGANS))] = "kidney"
    maskSource: Annotated[str, Choice(list(panel.MASK_SOURCES))] = "segmentation"
    maskSegmentation: Optional[slicer.vtkMRMLSegmentationNode]  # noqa: UP045
    bundlePath: str = ""
    thresholdMode: Annotated[str, Choice(list(panel.THRESHOLD_MODES))] = "bundle"
    threshold: Annotated[float, WithinRange(0, 10)] = 0.0  # 3 decimals: set in the .ui
    pythonExecutable: str = ""
    outputFolder: str = ""
    keepTrajectory: bool = False


class DiffusionAnomalyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self._parameterNode = self._parameterNodeGuiTag = None
        self._bundles, self._lesionRows = panel.BundleList(), []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        tooOld = panel.slicer_version_problem(slicer.app.majorVersion, slicer.app.minorVersion)
        if tooOld:
            self.layout.addWidget(qt.QLabel(tooOld))
            return
        from DiffusionAnomalyLib.resources import resource_path

        uiWidget = slicer.util.loadUI(str(resource_path("UI", "DiffusionAnomaly.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.lesionTable.setColumnCount(len(panel.LESION_COLUMNS))
        self.ui.lesionTable.setHorizontalHeaderLabels([header for _, header in panel.LESION_COLUMNS])
        self.ui.progressBar.visible = False
        self.logic = DiffusionAnomalyLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        layoutNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLayoutNode")
        if layoutNode:
            self.addObserver(layoutNode, vtk.vtkCommand.ModifiedEvent, lambda *args: self.logic.runner.layout_changed())
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.importBundleButton.connect("clicked(bool)", self.onImportBundle)
        self.ui.openModelsFolderButton.connect("clicked(bool)", self.onOpenModelsFolder)
        self.ui.bundleComboBox.connect("currentIndexChanged(int)", self.onBundleChosen)
        self.ui.lesionTable.connect("cellClicked(int,int)", self.onLesionClicked)
        self.synthesis = synthesis_panel.Section(self)  # "Synthesize lesion"
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic:
            self.logic.cleanup()

    def enter(self) -> None:
        if self.logic:  # None on a Slicer that is too old
            self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)  # (the Logic cancels a run itself: it never writes into the next scene)

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
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.updateGUI()

    def updateGUI(self, caller=None, event=None) -> None:
        """Refresh the bundle list for the organ and enable Apply only when a run can start (tooltip: why not)."""
        pn = self._parameterNode
        if pn is None:
            return
        paths = self._bundles.refresh(pn.organ)
        if paths is not None:  # another organ: another list
            self.ui.bundleComboBox.blockSignals(True)
            self._bundles.fill(self.ui.bundleComboBox)
        if pn.bundlePath not in self._bundles.paths:
            self.chooseBundle(self._bundles.paths[0] if self._bundles.paths else "")
        self.ui.bundleComboBox.setCurrentIndex(self._bundles.index(pn.bundlePath))
        self.ui.bundleComboBox.blockSignals(False)
        running = self.logic.running
        panel.show_apply_state(self.ui.applyButton, running, [] if running else self.logic.problems(pn))
        self.synthesis.update(pn)
        self.ui.thresholdSpinBox.enabled = pn.thresholdMode == "fixed"
        self.ui.maskSegmentationSelector.enabled = pn.maskSource == "segmentation"

    def onBundleChosen(self, index: int) -> None:
        if self._parameterNode and 0 <= index < len(self._bundles.paths):
            self.chooseBundle(self._bundles.paths[index])

    def chooseBundle(self, path: str) -> None:
        """Select a bundle; its recommended sampler, L, s, steps and map options become the panel's values."""
        pn = self._parameterNode
        if path == pn.bundlePath:  # keep the user's settings when nothing changed
            return
        with slicer.util.NodeModify(pn.parameterNode):
            pn.bundlePath = path
            for name, value in (panel.bundle_defaults(path) if path else {}).items():
                setattr(pn, name, value)

    def onImportBundle(self) -> None:
        path = panel.ask_bundle_path()  # the file dialogs: not under the wait cursor
        with slicer.util.tryWithErrorDisplay("Could not import the model bundle."):  # (the panel sets the cursor)
            dest = panel.import_bundle(path) if path else ""
            if dest:
                self._bundles.organ = None  # read the list again
                self.updateGUI()
                self.ui.statusLabel.text = f"Imported {dest}"

    def onOpenModelsFolder(self) -> None:
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(panel.models_folder()))

    def onApply(self) -> None:
        if self.logic.running:
            self.logic.cancel()
            self.ui.statusLabel.text = "Cancelling..."
            return
        if not self.logic.ensureDependencies(self._parameterNode):  # dialogs: not under the wait cursor
            return
        self.ui.logTextEdit.clear()
        self.ui.lesionTable.setRowCount(0)
        self.ui.progressBar.value = 0
        try:
            with slicer.util.WaitCursor():
                self.logic.start(self._parameterNode, self.onEvent, self.onFinished)
        except Exception as exc:  # bad input is reported, not raised into Qt (nothing was started)
            panel.show_start_error(exc)
        self.ui.progressBar.visible = self.logic.running
        self.updateGUI()

    def onEvent(self, event: dict) -> None:
        panel.show_event(self.ui, event)

    def onFinished(self, run) -> None:
        self._lesionRows = panel.show_outcome(self.ui, run)
        self.updateGUI()

    def onLesionClicked(self, row: int, column: int) -> None:
        x, y, z = self.logic.runner.lesion_position(self._lesionRows[row])
        slicer.modules.markups.logic().JumpSlicesToLocation(x, y, z, True)


class DiffusionAnomalyLogic(ScriptedLoadableModuleLogic):
    """Drives a panel.PanelRunner from a timer; ``client_factory`` is injectable (tests)."""

    def __init__(self, client_factory=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.runner = panel.PanelRunner(client_factory)
        self.timer = qt.QTimer()  # one timer, started and stopped (never deleted inside its own timeout)
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self._poll)
        self._onFinished = None
        self._closeTag = slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartCloseEvent, lambda *a: self.cancel())

    def cleanup(self) -> None:
        self.runner.close()  # asks a running job to stop, ends the spare worker
        slicer.mrmlScene.RemoveObserver(self._closeTag)

    def getParameterNode(self):
        return DiffusionAnomalyParameterNode(super().getParameterNode())

    @property
    def running(self) -> bool:
        return self.runner.running

    def problems(self, pn) -> list:
        """Why Apply is disabled (empty when a run can start)."""
        return panel.parameter_problems(pn, panel.worker_python(pn)[0])

    def ensureDependencies(self, pn, ask: bool = True) -> bool:
        """Check what the worker needs; offer to install or download what is missing (with ``ask`` False: never)."""
        return panel.ensure_dependencies(pn, ask)

    def start(self, pn, on_event, on_finished, synthesize: bool = False) -> None:
        """Start a run (or a lesion synthesis); raises on bad input and then leaves the Logic ready for the next."""
        if synthesize:
            synthesis_panel.start(self.runner, pn, on_event)
        else:
            request = panel.request_from_parameters(pn, panel.worker_python(pn)[0])
            self.runner.start(slicer.mrmlScene, request, panel.input_nodes(pn), pn.maskSegmentation, on_event,
                              pn.outputFolder)
        self._onFinished = on_finished
        self.timer.start()

    def _poll(self) -> None:
        if not self.runner.poll() and self.timer.isActive():
            self.timer.stop()
            self._onFinished(self.runner.run)

    def cancel(self) -> None:
        """Ask the run to stop; returns at once (the timer finishes it)."""
        self.runner.cancel()

    def wait(self, timeout_s: float = 600.0) -> None:
        """Process events until the run ends (self-test and scripts)."""
        panel.wait_for(lambda: not self.timer.isActive(), slicer.app.processEvents, timeout_s, on_timeout=self.cancel)


class DiffusionAnomalyTest(ScriptedLoadableModuleTest):
    """Self-test run by Slicer's CI, offline, installing nothing: a kidney phantom through the median baseline on
    Slicer's own Python, then the demo bundle where the worker's packages are present (``selftest.run``)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_demo_bundle_finds_the_phantom_lesion()  # (the baseline first; the model where installed)

    def test_demo_bundle_finds_the_phantom_lesion(self):
        import logging

        from DiffusionAnomalyLib.slicer_module import selftest

        logic = DiffusionAnomalyLogic()
        # not the singleton: an open panel must not apply its bundle's defaults over the test's settings
        pn = DiffusionAnomalyParameterNode(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
        for problem in selftest.run(logic, pn, log=logging.info):
            self.fail(problem)
        self.delayDisplay("DiffusionAnomaly self-test passed")


if __name__ == "__main__":
    unittest.main()
