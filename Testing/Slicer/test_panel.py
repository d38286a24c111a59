"""The module's panel and Logic driven as a user would, on the Slicer-like runtime (see conftest.py).

Real: the module file, Slicer 5.12.3's parameterNodeWrapper and ScriptedLoadableModule, the MRML scene,
layout logic and slice nodes (slicer-core), the worker process (the project's full environment,
``DA_WORKER_PYTHON``) and the shipped kidney demo bundle. Fakes: the CTK/qMRML widgets and ``slicer.app``
(Testing/SlicerRuntime). This process cannot import torch, MONAI, scikit-image or matplotlib.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import slicer_runtime

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "monai", "skimage", "matplotlib")
WORKER_PYTHON = os.environ.get("DA_WORKER_PYTHON", "")
needs_worker = pytest.mark.skipif(not WORKER_PYTHON or not Path(WORKER_PYTHON).is_file(),
                                  reason="DA_WORKER_PYTHON (the project's full environment) is not set; "
                                         "run through `make test-slicer`")


@pytest.fixture(scope="module")
def module():
    return slicer_runtime.load_module(REPO / "DiffusionAnomaly" / "DiffusionAnomaly.py")


@pytest.fixture
def widget(module):
    """The module's panel (one per session, as in Slicer), shown again on an emptied scene: the user left the
    module, the scene was closed, the user came back (``exit()``, then ``enter()``)."""
    import slicer

    w = slicer_runtime.make_widget("DiffusionAnomaly")
    assert isinstance(w, module.DiffusionAnomalyWidget) and isinstance(w.logic, module.DiffusionAnomalyLogic)
    if w.logic.running:
        w.logic.cancel()
        w.logic.wait(60)
    slicer_runtime.hide_module()
    slicer.mrmlScene.Clear(0)
    assert slicer_runtime.show_module("DiffusionAnomaly") is w
    yield w
    if w.logic.running:
        w.logic.cancel()
        w.logic.wait(60)


def _case(widget, **settings):
    """The self-test's kidney phantom and organ segmentation in the scene, the demo bundle chosen, then
    ``settings`` (parameter-node fields) applied; returns the parameter node."""
    import slicer

    from DiffusionAnomalyLib.slicer_module import selftest

    pn = widget._parameterNode
    case = selftest.prepare(slicer.mrmlScene, pn)
    with slicer.util.NodeModify(pn.parameterNode):
        for name, value in settings.items():
            setattr(pn, name, value)
    return pn, case


def _node_ids() -> set[str]:
    import slicer

    scene = slicer.mrmlScene
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _timed(function, durations: list[float]):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - t0)
    return wrapper


def _pump_until(condition, timeout_s: float = 120.0) -> None:
    import slicer

    t_end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < t_end, "timed out"
        slicer.app.processEvents()
        time.sleep(0.02)


FAST = {"samples": 1, "steps": 5, "noiseLevel": 100, "guidance": 0.0, "device": "cpu",
        "pythonExecutable": WORKER_PYTHON}


# --- opening the panel ---------------------------------------------------------------------------------------------

def test_the_panel_opens_without_the_heavy_packages_and_apply_offers_the_install(widget, monkeypatch):

    assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    monkeypatch.delenv("DA_WORKER_PYTHON", raising=False)
    pn, _ = _case(widget)  # the worker is Slicer's own Python: this one, without torch
    bundles = [widget.ui.bundleComboBox.itemText(i) for i in range(widget.ui.bundleComboBox.count)]
    assert any("kidney-demo" in b and "DEMO" in b for b in bundles)
    import qt

    demo = next(i for i, b in enumerate(bundles) if "kidney-demo" in b)
    card = widget.ui.bundleComboBox.itemData(demo, qt.Qt.ToolTipRole)
    assert card.startswith("DEMO: kidney CT") and "Not for real scans" in card  # the model card's summary
    assert widget.ui.applyButton.enabled, widget.ui.applyButton.toolTip
    before = _node_ids()
    slicer_runtime.dialogs.answers.append(False)  # the user declines the install
    widget.ui.applyButton.click()
    asked = slicer_runtime.dialogs.texts("confirmOkCancelDisplay")
    assert len(asked) == 1 and "torch" in asked[0] and sys.executable in asked[0]
    (error,) = slicer_runtime.dialogs.texts("errorDisplay")
    assert "-m pip install" in error and sys.executable in error and "monai" in error
    assert not widget.logic.running and _node_ids() == before
    # accepted: Slicer's own Python installs with slicer.util.pip_install (recorded here, not run)
    slicer_runtime.dialogs.reset()
    slicer_runtime.dialogs.answers.append(True)
    widget.ui.applyButton.click()
    assert any("torch>=2.3" in str(call) for call in slicer_runtime.pip_installs), slicer_runtime.pip_installs
    assert "Still missing" in slicer_runtime.dialogs.texts("errorDisplay")[0]  # the recorder installs nothing
    assert not widget.logic.running and _node_ids() == before
    assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]


def test_entering_again_keeps_every_setting(widget):
    pn, _ = _case(widget)
    chosen = {"organ": "liver", "sampler": "ddim", "noiseLevel": 321, "guidance": 250.0, "steps": 40, "seed": 7,
              "reference": "input", "samples": 3, "medianFilter": 2, "thresholdMode": "fixed", "threshold": 0.25,
              "device": "cpu", "maskSource": "segmentation"}
    for name, value in chosen.items():
        setattr(pn, name, value)
    bundle = pn.bundlePath
    assert "liver" in bundle  # a liver bundle was chosen for the liver
    for name, value in chosen.items():  # choosing that bundle did not overwrite what the user set afterwards
        setattr(pn, name, value)
    for _ in range(2):  # another module, then back, as Slicer does it
        widget.parent.exit()
        widget.parent.enter()
    for name, value in chosen.items():
        assert getattr(pn, name) == value, name
    assert pn.bundlePath == bundle
    assert widget.ui.organComboBox.currentText == "liver"
    assert widget.ui.samplerComboBox.currentText == "ddim"
    assert widget.ui.thresholdModeComboBox.currentText == "fixed"
    assert widget.ui.noiseLevelSlider.value == 321
    assert widget.ui.organComboBox.count == 3  # filled once, not once per entry


def test_setting_ranges_come_from_the_parameter_class(widget):
    assert (widget.ui.seedSpinBox.minimum, widget.ui.seedSpinBox.maximum) == (0, 2**31 - 1)
    assert (widget.ui.thresholdSpinBox.minimum, widget.ui.thresholdSpinBox.maximum) == (0, 10)
    assert widget.ui.thresholdSpinBox.decimals == 3


def test_each_bad_input_disables_apply_with_its_reason(widget):
    import slicer

    from DiffusionAnomalyLib.slicer_module import scene as adapter

    pn, case = _case(widget, pythonExecutable=WORKER_PYTHON or sys.executable)
    assert widget.ui.applyButton.enabled, widget.ui.applyButton.toolTip
    good = {"inputVolume": pn.inputVolume, "maskSegmentation": pn.maskSegmentation, "bundlePath": pn.bundlePath}
    flat = adapter.volume_node_from_image(slicer.mrmlScene, case.phantom.channels["ct"][:, :, 5:6], "one slice")
    empty_seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "no kidney here")
    cases = [
        ({"inputVolume": None}, "Select an input volume"),
        ({"inputVolume": flat}, "is 2D"),
        ({"maskSegmentation": None}, "Choose the segmentation"),
        ({"maskSegmentation": empty_seg}, "no segment named like 'kidney'"),
        ({"maskSource": "none"}, "needs an organ mask"),
        ({"steps": 300, "noiseLevel": 250}, "Steps must be between 1 and L"),
        ({"pythonExecutable": "/no/such/python"}, "does not exist"),
    ]
    for change, reason in cases:
        with slicer.util.NodeModify(pn.parameterNode):
            for name, value in change.items():
                setattr(pn, name, value)
        widget.updateGUI()
        assert not widget.ui.applyButton.enabled, change
        assert reason in widget.ui.applyButton.toolTip, (change, widget.ui.applyButton.toolTip)
        with slicer.util.NodeModify(pn.parameterNode):  # back to the good case
            for name, value in {**good, "maskSource": "segmentation", "steps": 5, "noiseLevel": 100,
                                "thresholdMode": "bundle", "pythonExecutable": WORKER_PYTHON or sys.executable}.items():
                setattr(pn, name, value)
        widget.updateGUI()
        assert widget.ui.applyButton.enabled, (change, widget.ui.applyButton.toolTip)


def test_a_slicer_older_than_5_10_gets_one_message(module, monkeypatch):
    import qt
    import slicer

    real = slicer.app

    class Slicer58:
        """Slicer 5.8 as far as the version check sees it."""
        majorVersion, minorVersion = 5, 8

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(slicer, "app", Slicer58())
    panel = slicer.modules.diffusionanomaly.createNewWidgetRepresentation()
    labels = [w.text for w in panel.findChildren(qt.QLabel)]
    assert any("needs 3D Slicer 5.10 or later; this is 5.8" in t for t in labels), labels
    assert panel.self().logic is None


def test_the_collapsed_sections_hide_their_settings_once_the_panel_is_shown(widget):
    """Advanced and Log are collapsed in the ``.ui``: in Slicer (CTK) their contents are hidden once the panel is
    shown, and come back when the user expands them (the old runtime left them visible)."""
    for name in ("advancedCollapsibleButton", "logCollapsibleButton"):
        section = getattr(widget.ui, name)
        contents = [c for c in section.children() if hasattr(c, "isHidden")]
        assert section.collapsed and contents and all(c.isHidden() for c in contents), name
        section.collapsed = False
        assert not any(c.isHidden() for c in contents), name
        section.collapsed = True
    assert widget.ui.noiseLevelSlider.singleStep == 1 and widget.ui.guidanceSlider.singleStep == 50  # as in the .ui


def test_importing_a_bundle_goes_through_the_file_dialogs_without_a_wait_cursor(widget, tmp_path, monkeypatch):
    """The folder dialog cancelled, then a .zip picked (PythonQt returns its path as a string, PyQt5 a tuple):
    the bundle is imported into the models folder; a broken archive gives one error, not under the wait cursor."""
    import shutil

    monkeypatch.setenv("DA_MODELS_DIR", str(tmp_path / "models"))
    archive = shutil.make_archive(str(tmp_path / "kidney"), "zip", REPO / "Resources" / "Models" / "kidney-demo")
    slicer_runtime.dialogs.answers.extend(["", archive])
    widget.ui.importBundleButton.click()
    assert [s.kind for s in slicer_runtime.dialogs.shown] == ["getExistingDirectory", "getOpenFileName"]
    (imported,) = (tmp_path / "models").iterdir()
    assert (imported / "model.json").is_file() and widget.ui.statusLabel.text == f"Imported {imported}"

    # the same bundle again: asked before the installed one is replaced; declined, it stays as it was
    (imported / "note.txt").write_text("the user's")  # a stale file a replacement removes
    for answer, kept in ((False, True), (True, False)):
        slicer_runtime.dialogs.reset()
        widget.ui.statusLabel.text = ""
        slicer_runtime.dialogs.answers.extend(["", archive, answer])
        widget.ui.importBundleButton.click()
        (asked,) = slicer_runtime.dialogs.texts("confirmOkCancelDisplay")
        assert "already installed" in asked and str(imported) in asked
        assert (imported / "note.txt").exists() == kept and not slicer_runtime.dialogs.texts("errorDisplay")
        assert not slicer_runtime.dialogs.under_override_cursor()
        assert widget.ui.statusLabel.text == ("" if kept else f"Imported {imported}")

    slicer_runtime.dialogs.reset()
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"not a zip")
    slicer_runtime.dialogs.answers.extend(["", str(broken)])
    widget.ui.importBundleButton.click()
    (error,) = slicer_runtime.dialogs.texts("errorDisplay")
    assert error.startswith("Could not import the model bundle.") and not slicer_runtime.dialogs.under_override_cursor()
    # re-raised by tryWithErrorDisplay, as Slicer's module template does: PythonQt prints it in the Python console
    assert [type(e).__name__ for e in slicer_runtime.slot_errors] == ["BundleError"]
    slicer_runtime.slot_errors.clear()

    slicer_runtime.dialogs.reset()
    slicer_runtime.dialogs.answers.extend(["", ""])  # both cancelled: nothing happens
    widget.ui.importBundleButton.click()
    assert not slicer_runtime.dialogs.texts("errorDisplay") and sorted((tmp_path / "models").iterdir()) == [imported]


# --- running ---------------------------------------------------------------------------------------------------------

@needs_worker
def test_apply_runs_the_worker_and_shows_the_results_in_three_axial_views(widget, tmp_path):
    import slicer
    import vtk

    pn, _ = _case(widget, thresholdMode="fixed", threshold=0.05, outputFolder=str(tmp_path), **FAST)
    # the input and its segmentation live under a translation: results must follow it
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(2, 3, 12.0)
    transform.SetMatrixTransformToParent(shift)
    pn.inputVolume.SetAndObserveTransformNodeID(transform.GetID())
    pn.maskSegmentation.SetAndObserveTransformNodeID(transform.GetID())
    scene = slicer.mrmlScene
    yellow = scene.GetNodeByID("vtkMRMLSliceNodeYellow")
    tilt = vtk.vtkTransform()  # an oblique (reformatted) Yellow view, to be given back as it was
    tilt.RotateX(20)
    tilt.Concatenate(yellow.GetSliceToRAS())
    yellow.GetSliceToRAS().DeepCopy(tilt.GetMatrix())
    yellow.UpdateMatrices()
    views_before = {n: slicer.util.arrayFromVTKMatrix(scene.GetNodeByID(f"vtkMRMLSliceNode{n}").GetSliceToRAS())
                    for n in ("Yellow", "Green")}
    events = []
    original = widget.onEvent
    widget.onEvent = lambda e: (events.append(e), original(e))
    try:
        widget.ui.applyButton.click()
        assert widget.ui.applyButton.text == "Cancel" and widget.ui.progressBar.isVisibleTo(widget.parent)
        widget.logic.wait(300)
    finally:
        del widget.onEvent
    assert not slicer_runtime.dialogs.texts("errorDisplay"), slicer_runtime.dialogs.shown
    progress = [e for e in events if e.get("event") == "progress"]
    assert progress and any(e.get("eta_s") is not None for e in progress)
    assert widget.ui.applyButton.text == "Apply" and not widget.ui.progressBar.isVisibleTo(widget.parent)
    run = widget.logic.runner.run
    res = run.result_nodes
    assert res is not None and run.error is None
    kept = [p for p in tmp_path.iterdir() if (p / "run.json").is_file()]  # "Keep outputs in": a new folder
    assert len(kept) == 1 and (kept[0] / "heatmap.nii.gz").is_file() and kept[0].name.startswith("phantom CT")
    for node in (res.reconstruction, res.heatmap, res.lesions):
        assert node.GetTransformNodeID() == transform.GetID()
    heat_display = res.heatmap.GetDisplayNode()
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(res.heatmap)
    assert legend is not None and legend.GetVisibility() and heat_display.GetColorNodeID()
    # the compare layout: three axial views showing input | reconstruction | input + heatmap
    objects = slicer_runtime.runtime_objects()
    layout = objects["layoutNode"]
    assert layout.GetViewArrangement() == 5761
    for name in ("Red", "Yellow", "Green"):
        assert scene.GetNodeByID(f"vtkMRMLSliceNode{name}").GetOrientation() == "Axial", name
    comp = {n: scene.GetNodeByID(f"vtkMRMLSliceCompositeNode{n}") for n in ("Red", "Yellow", "Green")}
    assert comp["Red"].GetBackgroundVolumeID() == pn.inputVolume.GetID()
    assert comp["Yellow"].GetBackgroundVolumeID() == res.reconstruction.GetID()
    assert comp["Green"].GetBackgroundVolumeID() == pn.inputVolume.GetID()
    assert comp["Green"].GetForegroundVolumeID() == res.heatmap.GetID()
    # the lesion table; a click moves the views to that lesion, in world coordinates
    rows = widget._lesionRows
    assert rows and widget.ui.lesionTable.rowCount == len(rows)
    widget.ui.lesionTable.cellClicked.emit(0, 0)
    expected = np.array([rows[0][f"centroid_ras_{a}"] for a in "xyz"]) + [0, 0, 12.0]
    red = scene.GetNodeByID("vtkMRMLSliceNodeRed")
    np.testing.assert_allclose(red.GetSliceToRAS().GetElement(2, 3), expected[2], atol=1.0)
    # leaving the compare layout gives the views back as they were
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    assert yellow.GetOrientation() == "Reformat"
    assert scene.GetNodeByID("vtkMRMLSliceNodeGreen").GetOrientation() == "Coronal"
    for name, before in views_before.items():
        after = slicer.util.arrayFromVTKMatrix(scene.GetNodeByID(f"vtkMRMLSliceNode{name}").GetSliceToRAS())
        np.testing.assert_allclose(after[:3, :3], before[:3, :3], atol=1e-9)  # orientation back, position kept
    assert not any(c.GetLinkedControl() for c in comp.values())


@needs_worker
def test_keeping_the_trajectory_puts_a_browsable_sequence_in_the_reconstruction_view(widget):
    import slicer

    pn, _ = _case(widget, **{**FAST, "samples": 2, "sampler": "ddpm", "steps": 4, "noiseLevel": 40,
                             "thresholdMode": "fixed", "threshold": 0.05})
    assert not pn.keepTrajectory  # off by default
    widget.ui.keepTrajectoryCheckBox.click()  # the user ticks "Keep the denoising trajectory"
    assert pn.keepTrajectory
    widget.ui.applyButton.click()
    widget.logic.wait(300)
    assert not slicer_runtime.dialogs.texts("errorDisplay"), slicer_runtime.dialogs.shown
    run = widget.logic.runner.run
    res = run.result_nodes
    assert run.error is None and res is not None
    seq, browser, proxy = res.trajectory, res.browser, res.trajectory_proxy
    assert seq.GetNumberOfDataNodes() == 4 and browser.GetNumberOfItems() == 4  # every step of 4 (about 10 frames)
    # the sequence browser toolbar shows this browser (a new browser node gets none unless the importer asks)
    assert slicer.modules.sequences.toolBarVisible and slicer.modules.sequences.activeBrowserNode is browser
    scene = slicer.mrmlScene
    assert scene.GetNodeByID("vtkMRMLSliceCompositeNodeYellow").GetBackgroundVolumeID() == proxy.GetID()
    assert scene.GetNodeByID("vtkMRMLSliceCompositeNodeRed").GetBackgroundVolumeID() == pn.inputVolume.GetID()
    first = slicer.util.arrayFromVolume(seq.GetNthDataNode(0))
    browser.SetSelectedItemNumber(0)  # scrolling the browser changes the reconstruction view's volume only
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(proxy), first)
    import vtk

    matrices = []
    for node in (proxy, pn.inputVolume):
        m = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        matrices.append(slicer.util.arrayFromVTKMatrix(m))
    np.testing.assert_allclose(matrices[0], matrices[1], atol=1e-6)  # each frame on the input's grid
    assert res.uncertainty is not None and res.uncertainty.GetDisplayNode().GetColorNode().GetName() == (
        "DiffusionAnomaly uncertainty")
    assert all("sample_fraction" in row for row in widget._lesionRows)


@needs_worker
def test_cancel_mid_run_leaves_the_scene_as_it_was_and_never_blocks_the_gui(widget):
    pn, _ = _case(widget, **{**FAST, "noiseLevel": 999, "steps": 999})
    durations: list[float] = []  # every call on the GUI thread from the moment the worker runs
    try:
        before = _node_ids()
        widget.onApply()  # starting writes the inputs for the worker (a fraction of a second; not timed here)
        runner = widget.logic.runner  # what each timer tick runs, and what ends the run
        runner.poll = _timed(runner.poll, durations)
        widget.logic._onFinished = _timed(widget.logic._onFinished, durations)
        widget.onApply = _timed(widget.onApply, durations)
        reconstructing = []
        original = widget.onEvent
        widget.logic.runner.run.on_event = lambda e: (reconstructing.append(e.get("stage") == "reconstruct"),
                                                      original(e))
        _pump_until(lambda: any(reconstructing))
        widget.onApply()  # the button is "Cancel" now
        _pump_until(lambda: not widget.logic.running, 60)
        _pump_until(lambda: not widget.logic.timer.isActive(), 10)
    finally:
        widget.logic.runner.__dict__.pop("poll", None)
        widget.__dict__.pop("onApply", None)
    run = widget.logic.runner.run
    assert run.error is not None and run.error.code == "cancelled"
    assert run.result_nodes is None and run.tmp is None
    assert _node_ids() == before
    assert len(durations) > 3 and max(durations) < 0.5, f"the GUI thread waited {max(durations):.2f} s"
    assert widget.ui.applyButton.text == "Apply" and "Not completed" in widget.ui.statusLabel.text
    assert not slicer_runtime.dialogs.texts("errorDisplay")  # a cancel is not an error


@needs_worker
def test_a_failure_while_starting_leaves_the_logic_ready_for_the_next_apply(widget):
    import slicer

    pn, case = _case(widget, **FAST)
    good = pn.maskSegmentation
    # a kidney segment that is empty inside the volume: found by name, refused when the mask is exported
    hollow = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "hollow")
    hollow.GetSegmentation().AddEmptySegment("kidney_left", "kidney_left")
    pn.maskSegmentation = hollow
    widget.ui.applyButton.click()
    (error,) = slicer_runtime.dialogs.texts("errorDisplay")
    assert "empty" in error
    assert not widget.logic.running and widget.ui.applyButton.text == "Apply"
    pn.maskSegmentation = good
    slicer_runtime.dialogs.reset()
    widget.ui.applyButton.click()
    assert widget.logic.running, slicer_runtime.dialogs.shown
    assert not slicer_runtime.dialogs.texts("errorDisplay")
    widget.logic.cancel()
    widget.logic.wait(60)


@needs_worker
def test_closing_the_scene_during_a_run_cancels_it(widget):
    import slicer

    _case(widget, **{**FAST, "noiseLevel": 999, "steps": 999})
    widget.ui.applyButton.click()
    assert widget.logic.running
    slicer.mrmlScene.Clear(0)
    widget.logic.wait(60)
    run = widget.logic.runner.run
    assert run.error is not None and run.error.code == "cancelled" and run.result_nodes is None
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


@needs_worker
def test_totalsegmentator_runs_in_the_worker_and_is_offered_for_install(widget):
    pn, _ = _case(widget, maskSource="totalsegmentator", **FAST)
    assert widget.ui.applyButton.enabled, widget.ui.applyButton.toolTip  # no segmentation needed
    assert not widget.ui.maskSegmentationSelector.enabled
    before = _node_ids()
    slicer_runtime.dialogs.answers.append(False)
    widget.ui.applyButton.click()
    (asked,) = slicer_runtime.dialogs.texts("confirmOkCancelDisplay")
    assert "TotalSegmentator" in asked and WORKER_PYTHON in asked
    assert _node_ids() == before  # no empty "organs" segmentation left behind


@needs_worker
def test_the_module_self_test_passes(module):
    import slicer

    slicer_runtime.make_widget("DiffusionAnomaly")  # an open panel must not disturb it
    module.DiffusionAnomalyTest().runTest()
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") >= 2


# --- Slicer's launcher, the baseline before PyTorch, the offline self-test -------------------------------------------

def _choose_baseline(widget) -> None:
    from DiffusionAnomalyLib.slicer_module import panel

    combo = widget.ui.bundleComboBox
    labels = [combo.itemText(i) for i in range(combo.count)]
    assert labels[-1] == panel.BASELINE_LABEL, labels
    combo.setCurrentIndex(combo.count - 1)  # as the user picks it
    assert widget._parameterNode.bundlePath == panel.BASELINE


def test_slicer_is_started_by_a_launcher_that_sets_pythonhome():
    """The runtime plays Slicer's launcher: this process carries the PYTHONHOME/PYTHONPATH a child inherits, and
    slicer.util.startupEnvironment() (Slicer's own function) gives the environment from before it."""
    import subprocess

    import slicer

    assert os.environ["PYTHONHOME"] == sys.base_prefix and os.environ["PYTHONNOUSERSITE"] == "1"
    # a child on Slicer's own Python keeps that environment and lacks what Slicer does not ship
    probe = subprocess.run([sys.executable, "-c", "import matplotlib"], capture_output=True, text=True)
    assert probe.returncode != 0 and "not shipped with Slicer" in probe.stderr
    startup = slicer.util.startupEnvironment()
    assert "PYTHONHOME" not in startup and startup.get("PATH") == os.environ.get("PATH")


@needs_worker
def test_a_worker_in_another_python_starts_in_slicers_startup_environment(widget, monkeypatch):
    """Defect 1 of issue 34: a 3.11 "Python for the worker" given the launcher's 3.12 PYTHONHOME dies at start (the
    package check then says everything is missing); with the startup environment it checks, runs and finishes."""
    import subprocess

    started = []
    real_popen = subprocess.Popen

    def spy(args, *a, **kw):
        started.append((list(args), dict(kw.get("env") or os.environ)))
        return real_popen(args, *a, **kw)

    monkeypatch.setattr(subprocess, "Popen", spy)
    pn, _ = _case(widget, thresholdMode="fixed", threshold=0.05, **FAST)
    assert widget.logic.ensureDependencies(pn, ask=False)  # the .venv has every package: nothing to install
    assert not slicer_runtime.pip_installs and not slicer_runtime.dialogs.shown
    widget.ui.applyButton.click()
    widget.logic.wait(300)
    run = widget.logic.runner.run
    assert run.error is None and run.result_nodes is not None, (run.error, run.client.stderr_lines[-5:])
    other = [env for args, env in started if args[0] == WORKER_PYTHON]
    assert len(other) >= 2  # the package check and the worker
    assert all("PYTHONHOME" not in env and env.get("PYTHONNOUSERSITE") != "1" for env in other)


def test_the_median_baseline_runs_from_the_panel_without_torch(widget, tmp_path, monkeypatch):
    """Works before anything is installed: the baseline on Slicer's own Python (this one, which cannot import torch,
    scikit-image or matplotlib), with heatmap, lesion segments, table and compare layout, each labelled."""
    import slicer

    monkeypatch.delenv("DA_WORKER_PYTHON", raising=False)
    pn, case = _case(widget, outputFolder=str(tmp_path))
    _choose_baseline(widget)
    assert widget.ui.applyButton.enabled, widget.ui.applyButton.toolTip
    t0 = time.monotonic()
    widget.ui.applyButton.click()
    widget.logic.wait(120)
    elapsed = time.monotonic() - t0
    assert not slicer_runtime.dialogs.shown and not slicer_runtime.pip_installs  # nothing asked, nothing installed
    run = widget.logic.runner.run
    assert run.error is None, run.error
    res = run.result_nodes
    assert "median baseline" in run.name and "median baseline" in widget.ui.statusLabel.text
    for node in (res.reconstruction, res.heatmap, res.lesions):
        assert "median baseline" in node.GetName()
        assert node.GetAttribute("DiffusionAnomaly.reconstruction").startswith("non-neural median baseline")
    assert widget._lesionRows and widget.ui.lesionTable.rowCount == len(widget._lesionRows)
    assert slicer_runtime.runtime_objects()["layoutNode"].GetViewArrangement() == 5761
    (kept,) = [p for p in tmp_path.iterdir() if (p / "run.json").is_file()]
    assert not (kept / "overview.png").exists()  # the scene is the picture (and there is no matplotlib)
    assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    assert elapsed < 60, f"{elapsed:.1f} s"
    from DiffusionAnomalyLib.slicer_module import selftest

    assert not selftest.check(case, pn.inputVolume, res)  # it finds the phantom's lesion
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 2


def test_a_second_apply_in_the_compare_layout_gives_the_users_views_back(widget, monkeypatch):
    """Defect 4 of issue 34: the second run's compare view must not save the first's (axial, linked) views."""
    import slicer
    import vtk

    monkeypatch.delenv("DA_WORKER_PYTHON", raising=False)
    pn, _ = _case(widget)
    _choose_baseline(widget)
    scene = slicer.mrmlScene
    yellow = scene.GetNodeByID("vtkMRMLSliceNodeYellow")
    tilt = vtk.vtkTransform()
    tilt.RotateX(20)
    tilt.Concatenate(yellow.GetSliceToRAS())
    yellow.GetSliceToRAS().DeepCopy(tilt.GetMatrix())
    yellow.UpdateMatrices()
    before = {n: slicer.util.arrayFromVTKMatrix(scene.GetNodeByID(f"vtkMRMLSliceNode{n}").GetSliceToRAS())[:3, :3]
              for n in ("Red", "Yellow", "Green")}
    layout = slicer_runtime.runtime_objects()["layoutNode"]
    for _ in range(2):
        widget.ui.applyButton.click()
        widget.logic.wait(120)
        assert widget.logic.runner.run.error is None and layout.GetViewArrangement() == 5761
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    assert yellow.GetOrientation() == "Reformat"
    assert scene.GetNodeByID("vtkMRMLSliceNodeGreen").GetOrientation() == "Coronal"
    for name, matrix in before.items():
        after = slicer.util.arrayFromVTKMatrix(scene.GetNodeByID(f"vtkMRMLSliceNode{name}").GetSliceToRAS())
        np.testing.assert_allclose(after[:3, :3], matrix, atol=1e-9, err_msg=name)
    comps = [scene.GetNodeByID(f"vtkMRMLSliceCompositeNode{n}") for n in ("Red", "Yellow", "Green")]
    assert not any(c.GetLinkedControl() for c in comps)


def test_a_failed_install_shows_one_dialog_and_no_wait_cursor_over_slicers(widget, monkeypatch):
    """Slicer 5.12's pip_install shows a modal progress dialog and its own error dialog before it raises: the panel
    adds no second dialog and keeps its wait cursor off Slicer's dialogs."""
    import slicer

    monkeypatch.delenv("DA_WORKER_PYTHON", raising=False)
    _case(widget)  # the demo bundle, on Slicer's own Python (no torch here)
    monkeypatch.setattr(slicer_runtime, "pip_mode", "fail")
    slicer_runtime.dialogs.answers.append(True)  # the user accepts the install
    widget.ui.applyButton.click()
    assert slicer_runtime.pip_installs
    errors = slicer_runtime.dialogs.texts("errorDisplay")
    progress = [d for d in slicer_runtime.dialogs.shown if d.kind == "pipProgressDialog"]
    if slicer_runtime.SLICER_VERSION >= (5, 12):
        assert len(errors) == 1 and errors[0].startswith("Failed to install"), errors  # Slicer's, not a second
        assert progress and not any(d.kwargs["overrideCursor"] for d in progress)
    else:  # 5.10's pip_install shows nothing: the panel's own dialog, with the command to run by hand
        assert len(errors) == 1 and "-m pip install" in errors[0], errors
    assert not widget.logic.running and slicer.app.overrideCursor() is None


def test_the_self_test_passes_offline_without_installing_anything(module, monkeypatch):
    """Slicer's extension CI runs self-tests offline: with installs and network refused and no worker packages, the
    self-test runs the baseline on Slicer's own Python in under 60 s and skips the model part with its reason."""
    import logging
    import socket

    import slicer

    def refuse(*args, **kwargs):
        raise OSError("network refused in this test")

    monkeypatch.delenv("DA_WORKER_PYTHON", raising=False)
    monkeypatch.setattr(slicer_runtime, "pip_mode", "offline")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    logged = []
    monkeypatch.setattr(logging, "info", lambda msg, *a, **k: logged.append(str(msg)))
    slicer_runtime.make_widget("DiffusionAnomaly")
    t0 = time.monotonic()
    module.DiffusionAnomalyTest().runTest()
    elapsed = time.monotonic() - t0
    assert elapsed < 60, f"the self-test took {elapsed:.1f} s"
    assert not slicer_runtime.pip_installs and not slicer_runtime.dialogs.texts("confirmOkCancelDisplay")
    assert any("model part skipped" in m and "torch" in m for m in logged), logged
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 2  # organs + baseline lesions


@needs_worker
def test_totalsegmentator_without_weights_offers_the_download_and_never_dead_ends(widget, monkeypatch, tmp_path):
    """The package is there but its weights are not: the panel asks before downloading them with the worker's
    interpreter (in its startup environment); declined, it names the exact command and the segmentation route.
    The download itself is stood in for (no network here): it records the command and makes the weights folder."""
    import slicer

    from DiffusionAnomalyLib.app import dependencies

    pn, _ = _case(widget, maskSource="totalsegmentator", **FAST)
    weights = tmp_path / "weights"
    monkeypatch.setitem(slicer.app._runtime["startupEnvironment"], "TOTALSEG_WEIGHTS_PATH", str(weights))
    monkeypatch.setattr(dependencies, "missing_packages", lambda *a, **k: [])  # TotalSegmentator "installed"
    slicer_runtime.dialogs.answers.append(False)
    assert not widget.logic.ensureDependencies(pn)
    (asked,) = slicer_runtime.dialogs.texts("confirmOkCancelDisplay")
    assert "weights" in asked and str(weights) in asked
    (error,) = slicer_runtime.dialogs.texts("errorDisplay")
    assert "totalseg_download_weights" in error and "-t total_fast" in error and WORKER_PYTHON in error
    assert "'segmentation'" in error
    ran = []

    def download(args, idle=None, env=None, what=""):
        ran.append((args, env))
        (weights / "Dataset297_TotalSegmentator_total_3mm_1559subj").mkdir(parents=True)

    monkeypatch.setattr(dependencies, "run_logged", download)
    slicer_runtime.dialogs.reset()
    slicer_runtime.dialogs.answers.append(True)
    assert widget.logic.ensureDependencies(pn)
    ((args, env),) = ran
    assert args[0] == WORKER_PYTHON and args[-2:] == ["-t", "total_fast"] and "PYTHONHOME" not in env
    assert widget.logic.ensureDependencies(pn, ask=False)  # present now: nothing asked, nothing downloaded
    assert len(ran) == 1
    assert len(slicer_runtime.dialogs.texts("confirmOkCancelDisplay")) == 1


def test_the_baseline_ignores_the_samplers_settings_but_not_its_threshold(widget, monkeypatch):
    monkeypatch.delenv("DA_WORKER_PYTHON", raising=False)
    pn, _ = _case(widget, steps=300, noiseLevel=250)  # steps above L: a model run is refused
    widget.updateGUI()
    assert not widget.ui.applyButton.enabled and "Steps must be" in widget.ui.applyButton.toolTip
    _choose_baseline(widget)
    widget.updateGUI()
    assert widget.ui.applyButton.enabled, widget.ui.applyButton.toolTip  # the baseline has no sampler
    widget._parameterNode.thresholdMode = "fixed"  # the baseline's threshold goes to the worker as it is set
    from DiffusionAnomalyLib.slicer_module.panel import request_from_parameters

    pn.threshold = 0.25
    assert request_from_parameters(pn, sys.executable).run_settings().threshold == 0.25


def test_a_new_option_reaches_the_panels_parameters():
    """Issue 36: a run option declared once (here a throwaway one on a subclass) becomes a parameter-node member
    with its type, range and default, on Slicer's own parameterNodeWrapper."""
    import dataclasses
    import typing

    from slicer.parameterNodeWrapper import Choice, WithinRange

    from DiffusionAnomalyLib.settings import MAPS, Option, RunSettings, setting
    from DiffusionAnomalyLib.slicer_module.panel import run_setting_parameters

    @dataclasses.dataclass(frozen=True)
    class Extended(RunSettings):
        wobble: int = setting(3, Option("wobble factor", MAPS, "W", label="wobble", low=0, high=9, panel="wobble"))

    members = run_setting_parameters(Extended)
    assert members.wobble == 3
    kind, limit = typing.get_args(members.__annotations__["wobble"])
    assert kind is int and isinstance(limit, WithinRange) and (limit.minimum, limit.maximum) == (0, 9)
    sampler = typing.get_args(members.__annotations__["sampler"])[1]
    assert isinstance(sampler, Choice) and "wobble" not in run_setting_parameters().__annotations__


# --- "Synthesize lesion" -------------------------------------------------------------------------------------------

def _paint_lesion(case, volume, radius_mm: float = 8.0, inside: bool = True):
    """A segmentation "painted lesion" holding one sphere, as Segment Editor would leave it: centred deep inside the
    phantom's left kidney (``inside``) or in a corner of the volume, far from both kidneys."""
    import SimpleITK as sitk
    import slicer
    from scipy import ndimage

    from DiffusionAnomalyLib.slicer_module import scene as adapter

    kidney = case.phantom.organ_masks["kidney_left"]
    spacing = np.array(kidney.GetSpacing())[::-1]
    organ = sitk.GetArrayFromImage(kidney) > 0
    if inside:
        centre = np.unravel_index(np.argmax(ndimage.distance_transform_edt(organ, sampling=spacing)), organ.shape)
    else:
        centre = tuple(int(r / s) + 1 for r, s in zip((radius_mm,) * 3, spacing, strict=True))
    zz, yy, xx = np.indices(organ.shape)
    sphere = ((zz - centre[0]) * spacing[0]) ** 2 + ((yy - centre[1]) * spacing[1]) ** 2 + \
        ((xx - centre[2]) * spacing[2]) ** 2 <= radius_mm ** 2
    image = sitk.GetImageFromArray(sphere.astype(np.uint8))
    image.CopyInformation(kidney)
    scene = slicer.mrmlScene
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "painted lesion")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    with adapter.scratch_nodes(scene, keep=[seg]):
        lab = adapter.volume_node_from_image(scene, image, "lesion", "vtkMRMLLabelMapVolumeNode")
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lab, seg)
    seg.GetSegmentation().GetNthSegment(0).SetName("my lesion")
    return seg, sphere


def test_synthesize_pastes_a_lesion_into_a_new_volume_without_torch_then_detects_on_it(widget, monkeypatch):
    """Issue 38 item 6 on the median-baseline-only install: paint a segment, Synthesize (paste, on Slicer's own Python,
    which cannot import torch), get a new volume changed only around the segment, its truth segment, and detection on
    the new volume at once; the input volume and the user's segmentations are unchanged."""
    import slicer

    monkeypatch.delenv("DA_WORKER_PYTHON", raising=False)
    pn, case = _case(widget)
    _choose_baseline(widget)
    seg, sphere = _paint_lesion(case, pn.inputVolume)
    before = slicer.util.arrayFromVolume(pn.inputVolume).copy()
    with slicer.util.NodeModify(pn.parameterNode):
        pn.lesionSegmentation, pn.lesionKind, pn.detectSynthesized = seg, "hypo", True
    widget.updateGUI()
    combo = widget.ui.lesionSegmentComboBox
    assert [combo.itemText(i) for i in range(combo.count)] == ["my lesion"] and pn.lesionSegmentId
    button = widget.ui.synthesizeButton
    assert button.enabled, button.toolTip
    input_node = pn.inputVolume
    button.click()
    assert button.text == "Cancel" and not widget.ui.applyButton.enabled
    assert "synthesis is in progress" in widget.ui.applyButton.toolTip
    _pump_until(lambda: widget.logic.runner.run is not None and hasattr(widget.logic.runner.run, "result_nodes")
                and widget.logic.runner.run.finished, 180)  # the synthesis, then the detection it started
    assert not slicer_runtime.dialogs.shown and not slicer_runtime.pip_installs
    assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    new = pn.inputVolume  # the new volume became the detection's input
    assert new is not input_node and new.GetName() == "phantom CT + lesion (paste, seed 0)"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(input_node), before)  # the input: untouched
    after = slicer.util.arrayFromVolume(new)
    assert after.dtype == before.dtype and after.shape == before.shape
    changed = after != before
    from scipy import ndimage

    assert changed[sphere].mean() > 0.5 and not (changed & ~ndimage.binary_dilation(sphere, iterations=4)).any()
    assert after[sphere].mean() < before[sphere].mean() - 10  # hypo-attenuating
    truth = slicer.mrmlScene.GetFirstNodeByName("phantom CT + lesion (paste, seed 0) truth")
    assert truth is not None and truth.GetSegmentation().GetNumberOfSegments() == 1
    assert truth.GetSegmentation().GetNthSegment(0).GetName().startswith("Synthesised lesion 1 (hypo)")
    assert '"method": "paste"' in new.GetAttribute("DiffusionAnomaly.synthesis")
    run = widget.logic.runner.run  # the detection on the new volume
    assert run.error is None and run.input_nodes[0] is new and "median baseline" in run.name
    assert seg.GetSegmentation().GetNumberOfSegments() == 1  # the user's segmentation as it was


def test_synthesize_explains_why_it_is_disabled(widget):
    """Diffusion needs a bundle with a lesion synthesizer (the demo bundles have none; the baseline is no model);
    no painted segment, no synthesis."""
    import slicer

    pn, case = _case(widget)
    button = widget.ui.synthesizeButton
    widget.updateGUI()
    assert not button.enabled and "paint it with Segment Editor" in button.toolTip
    seg, _ = _paint_lesion(case, pn.inputVolume)
    with slicer.util.NodeModify(pn.parameterNode):
        pn.lesionSegmentation, pn.synthesisMethod = seg, "diffusion"
    widget.updateGUI()
    assert not button.enabled and "has no lesion synthesizer" in button.toolTip, button.toolTip
    assert not widget.ui.lesionKindComboBox.enabled  # the synthesizer draws the class from the map
    _choose_baseline(widget)
    widget.updateGUI()
    assert not button.enabled and "needs a model bundle with a lesion synthesizer" in button.toolTip
    pn.synthesisMethod = "paste"
    widget.updateGUI()
    assert button.enabled, button.toolTip
    # the hostile rerun: a class of another modality, a kidney without its mask, a leftover second channel
    for name, value, says in (("lesionKind", "mass", "The lesion class 'mass' is not one of the kidney's (CT)"),
                              ("maskSource", "none", "The kidney needs an organ mask"),
                              ("channel2Volume", pn.inputVolume, "The model wants 1 channel(s) (ct); 2 volume(s)")):
        before = getattr(pn, name)
        setattr(pn, name, value)
        widget.updateGUI()
        assert not button.enabled and says in button.toolTip and "--" not in button.toolTip, button.toolTip
        setattr(pn, name, before)
    widget.updateGUI()
    assert button.enabled, button.toolTip


def test_a_lesion_painted_outside_the_organ_is_refused_and_nothing_is_added(widget, monkeypatch):
    import slicer

    monkeypatch.delenv("DA_WORKER_PYTHON", raising=False)
    pn, case = _case(widget)
    _choose_baseline(widget)
    seg, _ = _paint_lesion(case, pn.inputVolume, inside=False)
    with slicer.util.NodeModify(pn.parameterNode):
        pn.lesionSegmentation, pn.detectSynthesized = seg, True
    before = _node_ids()
    widget.ui.synthesizeButton.click()
    _pump_until(lambda: not widget.logic.running and not widget.logic.timer.isActive(), 120)
    errors = slicer_runtime.dialogs.texts("errorDisplay")
    assert len(errors) == 1 and "wholly outside the kidney mask" in errors[0], errors
    assert "the segment 'my lesion' of 'painted lesion'" in errors[0] and "/tmp" not in errors[0]  # the user's names
    assert _node_ids() == before and pn.inputVolume.GetName() == "phantom CT"  # no detection started either
    assert widget.ui.synthesizeButton.text == "Synthesize"


def test_cancelling_a_synthesis_adds_nothing(widget, monkeypatch):
    import slicer

    monkeypatch.delenv("DA_WORKER_PYTHON", raising=False)
    pn, case = _case(widget)
    _choose_baseline(widget)
    seg, _ = _paint_lesion(case, pn.inputVolume)
    pn.lesionSegmentation = seg
    before = _node_ids()
    widget.ui.synthesizeButton.click()
    widget.ui.synthesizeButton.click()  # now "Cancel"
    _pump_until(lambda: not widget.logic.running and not widget.logic.timer.isActive(), 60)
    run = widget.logic.runner.run
    assert run.error is not None and run.error.code == "cancelled" and run.tmp is None
    assert _node_ids() == before and not slicer_runtime.dialogs.texts("errorDisplay")
    assert pn.inputVolume.GetName() == "phantom CT" and slicer.mrmlScene.GetFirstNodeByName("painted lesion")
