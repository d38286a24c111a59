"""DiffusionAnomaly: the 3D Slicer scripted module (thin; the logic lives in DiffusionAnomalyLib).

The heavy work runs in a background worker process (DiffusionAnomalyLib.worker) that the Logic polls
from a timer, so the GUI never blocks; DiffusionAnomalyLib.scene_run and DiffusionAnomalyLib.scene
do the scene work and are tested outside Slicer on a real MRML scene.
"""

import importlib
import os
import shutil
import sys
import unittest
from typing import Annotated, Optional

import qt
import slicer
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
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
LESION_COLUMNS = ("id", "side", "volume_ml", "axial_diameter_mm", "size_class", "max_score")


class DiffusionAnomaly(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Diffusion Anomaly"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["DiffusionAnomaly developers"]
        self.parent.helpText = (
            "Finds candidate lesions in kidney CT, liver CT and brain MRI by reconstructing a healthy version of "
            "the organ with a latent diffusion model and showing where the scan differs. Research software, not a "
            "medical device: it misses lesions that look like healthy tissue and marks healthy structures as "
            "anomalous. The shipped DEMO models are trained on synthetic phantoms: their findings on real scans "
            "mean nothing. Import a bundle trained on real data for real use."
        )
        self.parent.acknowledgementText = (
            "Method from a 3D latent-diffusion MSc thesis and paper on kidney anomaly detection (classifier-guided "
            "DDPM/DDIM), a PhD thesis on weakly supervised brain-tumour detection with 3D latent diffusion, semantic "
            "diffusion for CT synthesis, and diffusion-prior inpainting for liver tumours (GDPI); see the README. "
            "Built on MONAI, PyTorch, SimpleITK and 3D Slicer."
        )


@parameterNodeWrapper
class DiffusionAnomalyParameterNode:
    """Every setting of the panel; stored in the scene so it survives save and reload."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    channel2Volume: Optional[slicer.vtkMRMLScalarVolumeNode]  # noqa: UP045 (parameterNodeWrapper needs Optional)
    channel3Volume: Optional[slicer.vtkMRMLScalarVolumeNode]  # noqa: UP045
    channel4Volume: Optional[slicer.vtkMRMLScalarVolumeNode]  # noqa: UP045
    organ: Annotated[str, Choice(list(ORGANS))] = "kidney"
    maskSource: Annotated[str, Choice(["segmentation", "totalsegmentator", "none"])] = "segmentation"
    maskSegmentation: Optional[slicer.vtkMRMLSegmentationNode]  # noqa: UP045
    bundlePath: str = ""
    sampler: Annotated[str, Choice(["ddpm", "ddim", "inpaint"])] = "ddpm"
    noiseLevel: Annotated[float, WithinRange(1, 999)] = 250
    guidance: Annotated[float, WithinRange(0, 3000)] = 0
    steps: Annotated[int, WithinRange(1, 999)] = 50
    seed: int = 0
    # anomaly-map options; "bundle" / 0 / -1: the bundle's recommendation (a bundle chosen in the panel fills in
    # its values)
    reference: Annotated[str, Choice(["bundle", "input", "autoencoder"])] = "bundle"
    samples: Annotated[int, WithinRange(0, 16)] = 0
    medianFilter: Annotated[int, WithinRange(-1, 15)] = -1
    thresholdMode: Annotated[str, Choice(["bundle", "otsu", "fixed"])] = "bundle"
    threshold: float = 0.0
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    pythonExecutable: str = ""
    outputFolder: str = ""


class DiffusionAnomalyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._bundles = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from DiffusionAnomalyLib.resources import resource_path

        uiWidget = slicer.util.loadUI(str(resource_path("UI", "DiffusionAnomaly.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        for combo, items in ((self.ui.organComboBox, ORGANS), (self.ui.samplerComboBox, ("ddpm", "ddim", "inpaint")),
                             (self.ui.maskSourceComboBox, ("segmentation", "totalsegmentator", "none")),
                             (self.ui.thresholdModeComboBox, ("bundle", "otsu", "fixed")),
                             (self.ui.referenceComboBox, ("bundle", "input", "autoencoder")),
                             (self.ui.deviceComboBox, ("auto", "cuda", "cpu"))):
            for item in items:
                combo.addItem(item)
        self.ui.lesionTable.setColumnCount(len(LESION_COLUMNS))
        self.ui.lesionTable.setHorizontalHeaderLabels(["#", "side", "ml", "diam mm", "size", "max"])
        self.logic = DiffusionAnomalyLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.importBundleButton.connect("clicked(bool)", self.onImportBundle)
        self.ui.openModelsFolderButton.connect("clicked(bool)", self.onOpenModelsFolder)
        self.ui.bundleComboBox.connect("currentIndexChanged(int)", self.onBundleChosen)
        self.ui.lesionTable.connect("cellClicked(int,int)", self.onLesionClicked)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic:
            self.logic.cancel()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk_modified(), self.updateGUI)

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
            self.removeObserver(self._parameterNode, vtk_modified(), self.updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk_modified(), self.updateGUI)
            self.updateGUI()

    def updateGUI(self, caller=None, event=None) -> None:
        """Refresh the bundle list for the organ and enable Apply only when a run can start (tooltip: why not)."""
        from DiffusionAnomalyLib.bundle import available_bundles

        pn = self._parameterNode
        if pn is None:
            return
        bundles = available_bundles(pn.organ)
        if [b.path for b in bundles] != [b.path for b in self._bundles]:
            self._bundles = bundles
            with slicer.util.NodeModify(pn.parameterNode):
                self.ui.bundleComboBox.blockSignals(True)
                self.ui.bundleComboBox.clear()
                for b in bundles:
                    self.ui.bundleComboBox.addItem(b.label)
                self.ui.bundleComboBox.blockSignals(False)
        paths = [str(b.path) for b in self._bundles]
        if pn.bundlePath not in paths:
            pn.bundlePath = paths[0] if paths else ""
            self.applyBundleDefaults()
        self.ui.bundleComboBox.setCurrentIndex(paths.index(pn.bundlePath) if pn.bundlePath in paths else -1)
        running = self.logic.running
        problems = [] if running else self.logic.problems(pn)
        self.ui.applyButton.text = "Cancel" if running else "Apply"
        self.ui.applyButton.enabled = running or not problems
        self.ui.applyButton.toolTip = "Stop the run; nothing is added to the scene." if running else (
            "\n".join(problems) if problems else "Reconstruct a healthy organ and show where the scan differs.")
        self.ui.thresholdSpinBox.enabled = pn.thresholdMode == "fixed"
        self.ui.maskSegmentationSelector.enabled = pn.maskSource == "segmentation"

    def onBundleChosen(self, index: int) -> None:
        if self._parameterNode and 0 <= index < len(self._bundles):
            path = str(self._bundles[index].path)
            if path != self._parameterNode.bundlePath:  # keep the user's settings when nothing changed
                self._parameterNode.bundlePath = path
                self.applyBundleDefaults()

    def applyBundleDefaults(self) -> None:
        """The chosen bundle's recommended sampler, L, s, steps and anomaly-map options become the panel's values."""
        from types import SimpleNamespace

        from DiffusionAnomalyLib.bundle import read_meta
        from DiffusionAnomalyLib.job import map_options

        pn = self._parameterNode
        if not pn.bundlePath:
            return
        meta = read_meta(pn.bundlePath)
        rec = meta.recommended or {}
        opts = map_options(SimpleNamespace(), rec, meta.preset())  # what a run with no map options would use
        with slicer.util.NodeModify(pn.parameterNode):
            pn.sampler = rec.get("sampler", pn.sampler)
            pn.noiseLevel = float(rec.get("noise_level", pn.noiseLevel))
            pn.guidance = float(rec.get("guidance", pn.guidance))
            pn.steps = int(rec.get("steps", pn.steps))
            pn.reference, pn.samples, pn.medianFilter = opts.reference, opts.samples, opts.median_filter

    def onImportBundle(self) -> None:
        from DiffusionAnomalyLib.bundle import default_models_dir, import_bundle

        path = qt.QFileDialog.getExistingDirectory(None, "Model bundle folder (cancel to pick a .zip)")
        if not path:
            path = qt.QFileDialog.getOpenFileName(None, "Model bundle (.zip)", "", "Bundles (*.zip)")
        if path:
            with slicer.util.tryWithErrorDisplay("Could not import the model bundle.", waitCursor=True):
                dest = import_bundle(path, default_models_dir())
                self._bundles = []
                self.updateGUI()
                self.ui.statusLabel.text = f"Imported {dest}"

    def onOpenModelsFolder(self) -> None:
        from DiffusionAnomalyLib.bundle import default_models_dir

        folder = default_models_dir()
        folder.mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    def onApply(self) -> None:
        if self.logic.running:
            self.logic.cancel()
            return
        with slicer.util.tryWithErrorDisplay("Could not start the run.", waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            self.ui.logTextEdit.clear()
            self.ui.lesionTable.setRowCount(0)
            self.ui.progressBar.value = 0
            self.ui.progressBar.visible = True
            self.logic.start(self._parameterNode, self.onEvent, self.onFinished)
            self.updateGUI()

    def onEvent(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "progress":
            self.ui.progressBar.value = int(100 * event.get("fraction", 0))
            eta = event.get("eta_s")
            self.ui.statusLabel.text = f"{event['stage']} {event['step']}/{event['total']}" + (
                f" - about {eta:.0f} s left" if eta is not None else "")
        elif kind in ("log", "warning", "error"):
            self.ui.logTextEdit.appendPlainText(f"{kind}: {event.get('message', '')}")
        elif kind == "started":
            self.ui.logTextEdit.appendPlainText(f"worker started (pid {event.get('pid')})")

    def onFinished(self, run) -> None:
        self.ui.progressBar.visible = False
        if run.error is not None:
            self.ui.statusLabel.text = f"Not completed: {run.error}"
            if getattr(run.error, "code", "") != "cancelled":
                slicer.util.errorDisplay(str(run.error), windowTitle="Diffusion Anomaly")
        else:
            lesions = run.client.result.get("lesions", [])
            self.ui.statusLabel.text = f"{len(lesions)} candidate lesion(s) in '{run.name}'."
            self.ui.lesionTable.setRowCount(len(lesions))
            for r, row in enumerate(lesions):
                for c, key in enumerate(LESION_COLUMNS):
                    value = row.get(key, "")
                    self.ui.lesionTable.setItem(r, c, qt.QTableWidgetItem(
                        f"{value:.2f}" if isinstance(value, float) else str(value)))
            self._lesionRows = lesions
        self.updateGUI()

    def onLesionClicked(self, row: int, column: int) -> None:
        lesion = getattr(self, "_lesionRows", [])[row]
        x, y, z = (lesion[f"centroid_ras_{a}"] for a in "xyz")
        slicer.modules.markups.logic().JumpSlicesToLocation(x, y, z, True)


def vtk_modified():
    import vtk

    return vtk.vtkCommand.ModifiedEvent


class DiffusionAnomalyLogic(ScriptedLoadableModuleLogic):
    """Builds the run request from the parameter node and drives a DiffusionAnomalyLib.scene_run.SceneRun
    from a timer; ``client_factory`` is injectable (tests)."""

    def __init__(self, client_factory=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.client_factory = client_factory
        self.run = None
        self.timer = None

    def getParameterNode(self):
        return DiffusionAnomalyParameterNode(super().getParameterNode())

    @property
    def running(self) -> bool:
        return self.run is not None and not self.run.finished

    def request(self, pn):
        from DiffusionAnomalyLib.scene_run import RunRequest

        return RunRequest(organ=pn.organ, bundle=pn.bundlePath, sampler=pn.sampler, noise_level=int(pn.noiseLevel),
                          guidance=float(pn.guidance), steps=int(pn.steps), seed=int(pn.seed), device=pn.device,
                          threshold_mode=pn.thresholdMode, threshold=float(pn.threshold), mask_source=pn.maskSource,
                          python=pn.pythonExecutable or self.defaultPython(),
                          reference=None if pn.reference == "bundle" else pn.reference,
                          samples=int(pn.samples) or None,
                          median_filter=None if int(pn.medianFilter) < 0 else int(pn.medianFilter))

    def inputNodes(self, pn) -> list:
        return [n for n in (pn.inputVolume, pn.channel2Volume, pn.channel3Volume, pn.channel4Volume) if n]

    def problems(self, pn) -> list:
        """Why Apply is disabled (empty when a run can start)."""
        from DiffusionAnomalyLib import scene
        from DiffusionAnomalyLib.bundle import read_meta

        out = scene.volume_node_problem(pn.inputVolume)
        out = [out] if out else []
        req = self.request(pn)
        out += req.problems()
        if not out and os.path.isdir(pn.bundlePath):
            channels = read_meta(pn.bundlePath).channels
            if len(channels) > 1 or len(self.inputNodes(pn)) > 1:
                problem = scene.channel_nodes_problem(self.inputNodes(pn), channels)
                out += [problem] if problem else []
        if pn.maskSource == "segmentation":
            if pn.maskSegmentation is None:
                out.append(f"Choose the segmentation that holds the {pn.organ} (or use TotalSegmentator).")
            elif not scene.organ_segment_ids(pn.maskSegmentation, pn.organ):
                out.append(f"'{pn.maskSegmentation.GetName()}' has no segment named like '{pn.organ}'.")
        elif pn.maskSource == "totalsegmentator" and not hasattr(slicer.modules, "totalsegmentator"):
            out.append("The TotalSegmentator extension is not installed; install it from the Extensions Manager, or "
                       "choose an existing segmentation.")
        return out

    @staticmethod
    def defaultPython() -> str:
        """Slicer's own Python (PythonSlicer) for the worker."""
        return shutil.which("PythonSlicer") or ""

    def ensureDependencies(self) -> bool:
        """Check the worker's packages; offer to install what is missing (never silently)."""
        from DiffusionAnomalyLib.dependencies import install_command, missing_packages

        missing = missing_packages()
        if not missing:
            return True
        command = install_command(missing)
        if not slicer.util.confirmOkCancelDisplay(
                f"DiffusionAnomaly needs these Python packages: {', '.join(missing)}. Install them now into "
                f"Slicer's Python? (This may take several minutes.)", windowTitle="Diffusion Anomaly"):
            slicer.util.errorDisplay(f"Not installed. To install by hand, run:\n{command}")
            return False
        try:
            if "torch" in missing and hasattr(slicer.modules, "pytorchutils"):
                torch_logic = slicer.modules.pytorchutils.widgetRepresentation().self().logic
                torch_logic.installTorch(askConfirmation=False)
                missing = [m for m in missing if m != "torch"]
            if missing:
                slicer.util.pip_install(missing)
        except Exception as exc:
            slicer.util.errorDisplay(f"Installation failed ({exc}). To install by hand, run:\n{command}")
            return False
        return not missing_packages()

    def organSegmentation(self, pn):
        """The segmentation holding the organ; runs the TotalSegmentator extension when that is the source."""
        if pn.maskSource == "none":
            return None, []
        from DiffusionAnomalyLib import scene

        if pn.maskSource == "totalsegmentator":
            seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{pn.inputVolume.GetName()} organs")
            ts_logic = slicer.modules.totalsegmentator.widgetRepresentation().self().logic
            ts_logic.process(pn.inputVolume, seg, fast=True, task="total_mr" if pn.organ == "brain" else "total")
            pn.maskSegmentation = seg
            pn.maskSource = "segmentation"
        return pn.maskSegmentation, scene.organ_segment_ids(pn.maskSegmentation, pn.organ)

    def start(self, pn, on_event, on_finished) -> None:
        from DiffusionAnomalyLib import scene
        from DiffusionAnomalyLib.scene_run import SceneRun

        if self.running:
            raise RuntimeError("A run is in progress; cancel it first.")
        seg, ids = self.organSegmentation(pn)
        output = None
        if pn.outputFolder:
            output = os.path.join(pn.outputFolder, pn.inputVolume.GetName().replace(os.sep, "_"))
        self.run = SceneRun(slicer.mrmlScene, self.request(pn), self.inputNodes(pn), seg, ids,
                            client_factory=self.client_factory, on_event=on_event, output_dir=output)
        self.run.start()
        self._onFinished = on_finished
        self._inputNode = pn.inputVolume
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self._poll)
        self.timer.start()
        self._scene = scene

    def _poll(self) -> None:
        if self.run is not None and not self.run.poll():
            self.timer.stop()
            if self.run.result_nodes is not None:
                self._scene.show_compare(slicer.mrmlScene, self._inputNode, self.run.result_nodes)
            self._onFinished(self.run)

    def cancel(self) -> None:
        if self.running:
            self.run.cancel()
            self._poll()

    def wait(self, timeout_s: float = 600.0) -> None:
        """Process events until the run ends (self-test and scripts)."""
        import time

        t_end = time.monotonic() + timeout_s
        while self.running and time.monotonic() < t_end:
            slicer.app.processEvents()
            time.sleep(0.05)
        if self.running:
            self.cancel()
            raise TimeoutError(f"the run did not finish within {timeout_s:.0f} s")


class DiffusionAnomalyTest(ScriptedLoadableModuleTest):
    """Self-test run by Slicer's CI (registered in CMakeLists.txt): a phantom through the demo bundle."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_demo_bundle_finds_the_phantom_lesion()

    def test_demo_bundle_finds_the_phantom_lesion(self):
        import numpy as np
        import SimpleITK as sitk

        from DiffusionAnomalyLib import scene
        from DiffusionAnomalyLib.bundle import available_bundles
        from DiffusionAnomalyLib.phantoms import make_phantom

        case = make_phantom("kidney", seed=SELF_TEST_SEED)
        ct = scene.volume_node_from_image(slicer.mrmlScene, case.channels["ct"], "phantom CT")
        organs = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "organs")
        organs.SetReferenceImageGeometryParameterFromVolumeNode(ct)
        for name in ("kidney_left", "kidney_right"):
            lab = scene.volume_node_from_image(slicer.mrmlScene, case.organ_masks[name], name,
                                               "vtkMRMLLabelMapVolumeNode")
            slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(lab, organs)
            organs.GetSegmentation().GetNthSegment(organs.GetSegmentation().GetNumberOfSegments() - 1).SetName(name)
            slicer.mrmlScene.RemoveNode(lab)
        demo = [b for b in available_bundles("kidney") if b.meta.demo]
        self.assertTrue(demo, "the kidney demo bundle is missing from Resources/Models")
        logic = DiffusionAnomalyLogic()
        pn = logic.getParameterNode()
        pn.inputVolume, pn.organ, pn.maskSource, pn.maskSegmentation = ct, "kidney", "segmentation", organs
        pn.bundlePath, pn.device = str(demo[0].path), "cpu"
        self.assertEqual(logic.problems(pn), [])
        finished = []
        logic.start(pn, lambda e: None, finished.append)
        logic.wait(600)
        run = finished[0]
        self.assertIsNone(run.error, str(run.error))
        res = run.result_nodes
        for node in (res.reconstruction, res.heatmap):
            self.assertEqual(node.GetImageData().GetDimensions(), ct.GetImageData().GetDimensions())
            self.assertTrue(np.allclose(scene._ijk_to_ras(node), scene._ijk_to_ras(ct), atol=1e-6))
        truth = sitk.GetArrayFromImage(case.lesion_labels) > 0
        segmentation = res.lesions.GetSegmentation()
        self.assertGreater(segmentation.GetNumberOfSegments(), 0)
        hits = 0
        for i in range(segmentation.GetNumberOfSegments()):
            sid = segmentation.GetNthSegmentID(i)
            self.assertTrue(segmentation.GetSegment(sid).GetName().startswith("Lesion "))
            voxels = slicer.util.arrayFromSegmentBinaryLabelmap(res.lesions, sid, ct) > 0
            hits += int((voxels & truth).any())
        self.assertGreater(hits, 0, "no lesion segment overlaps an inserted lesion")
        self.delayDisplay("DiffusionAnomaly self-test passed")


#: Phantom seed of the self-test: a typical case (Dice next to the median) of the kidney demo bundle's held-out
#: evaluation (it was trained on seeds >= 100000); the demo command uses it too.
SELF_TEST_SEED = 1000


if __name__ == "__main__":
    unittest.main()
