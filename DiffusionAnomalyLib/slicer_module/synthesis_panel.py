"""What the panel's "Synthesize lesion" section does, without Qt (the module file wires its widgets to these).

Runs in Slicer's own process (torch-free). ``paste`` runs on Slicer's own Python, like the median baseline: it needs
nothing installed; ``diffusion`` runs in the model's worker interpreter and needs a bundle with a lesion synthesizer.
"""

from __future__ import annotations

from typing import Any

from DiffusionAnomalyLib.slicer_module.scene_run import BASELINE
from DiffusionAnomalyLib.slicer_module.synthesis_run import (
    AUTO,
    LesionRequest,
    SceneSynthesis,
    lesion_segment_problem,
)

#: The lesion-class choices of the panel: :data:`AUTO`, then every class of every modality.
KIND_CHOICES = (AUTO, "hypo", "hyper", "iso", "cyst", "mass")
#: The synthesis methods (``synthesis.options.METHODS``, stdlib-only).
METHOD_CHOICES = ("paste", "diffusion")


def worker_python(pn) -> tuple[str, bool]:
    """The synthesis worker's interpreter and whether it is Slicer's own: ``paste`` needs only what Slicer ships, so
    Slicer's own; ``diffusion`` the model's (:func:`~DiffusionAnomalyLib.slicer_module.panel.worker_python`)."""
    from DiffusionAnomalyLib.app.dependencies import slicer_python
    from DiffusionAnomalyLib.slicer_module import panel

    if pn.synthesisMethod == "paste":
        return slicer_python(), True
    return panel.worker_python(pn)


def request_from_parameters(pn) -> LesionRequest:
    """The synthesis request of the panel's parameter node (the panel's bundle for ``diffusion``)."""
    python, own = worker_python(pn)
    return LesionRequest(organ=pn.organ, method=pn.synthesisMethod, bundle=pn.bundlePath, kind=pn.lesionKind,
                         seed=int(pn.synthesisSeed), mask_source=pn.maskSource, python=python, own_python=own)


def problems(pn) -> list[str]:
    """Why Synthesize is disabled (empty when it can start). Cheap: reads no voxels and starts no process."""
    from DiffusionAnomalyLib.slicer_module import panel, scene

    first = scene.volume_node_problem(pn.inputVolume)
    out = [first] if first else []
    request = request_from_parameters(pn)
    if not request.python:
        out.append("No Python interpreter for the worker was found; set 'Python for the worker'.")
    out += request.problems()
    segment = lesion_segment_problem(pn.lesionSegmentation, pn.lesionSegmentId)
    out += [segment] if segment else []
    if pn.maskSource == "totalsegmentator":
        out.append("Synthesis needs the organ mask as a segmentation (or a skull-stripped brain): run "
                   "TotalSegmentator's own module first and choose its segmentation.")
    out += panel.mask_problems(pn)
    nodes = panel.input_nodes(pn)
    if not out and len(nodes) > 1:
        from DiffusionAnomalyLib.detection.presets import get_preset

        problem = scene.channel_nodes_problem(nodes, list(get_preset(pn.organ).channels))
        out += [problem] if problem else []
    return out


def segment_choices(segmentation) -> list[tuple[str, str]]:
    """(segment ID, name) of every segment of ``segmentation`` (none: empty)."""
    if segmentation is None:
        return []
    seg = segmentation.GetSegmentation()
    return [(seg.GetNthSegmentID(i), seg.GetNthSegment(i).GetName()) for i in range(seg.GetNumberOfSegments())]


def fill_segments(combo, pn) -> None:
    """Put the lesion segmentation's segments into ``combo`` (a QComboBox) and select ``pn.lesionSegmentId``; when
    that is not among them, the last segment (the one painted most recently) becomes the choice."""
    choices = segment_choices(pn.lesionSegmentation)
    ids = [sid for sid, _ in choices]
    combo.blockSignals(True)
    try:
        if [combo.itemData(i) for i in range(combo.count)] != ids or \
                [combo.itemText(i) for i in range(combo.count)] != [n for _, n in choices]:
            combo.clear()
            for sid, name in choices:
                combo.addItem(name, sid)
        if ids and pn.lesionSegmentId not in ids:
            pn.lesionSegmentId = ids[-1]
        combo.setCurrentIndex(ids.index(pn.lesionSegmentId) if pn.lesionSegmentId in ids else -1)
    finally:
        combo.blockSignals(False)


def show_button_state(button, running: bool, other_running: bool, problems: list[str]) -> None:
    """Synthesize turns into Cancel while a synthesis goes; disabled (reasons as tooltip) when it cannot start."""
    button.text = "Cancel" if running else "Synthesize"
    reasons = ["A detection run is in progress."] if other_running else problems
    button.enabled = running or not reasons
    button.toolTip = "Stop the synthesis; nothing is added to the scene." if running else (
        "\n".join(reasons) if reasons else "Make a new volume with a lesion of the painted segment's shape.")


def outcome(run: SceneSynthesis) -> tuple[str, str]:
    """A finished synthesis as (status line, error to show in a dialog or "")."""
    if run.error is not None:
        shown = "" if getattr(run.error, "code", "") == "cancelled" else str(run.error)
        return f"Not completed: {run.error}", shown
    kinds = ", ".join(sorted({le["kind"] for le in run.record.get("lesions", [])}))
    return f"New volume '{run.volumes[0].GetName()}' with a synthetic lesion ({kinds}); its truth is in " \
           f"'{run.truth.GetName()}'. Synthetic lesions are not real lesions.", ""


def ensure_dependencies(pn, ask: bool = True) -> bool:
    """What the synthesis needs in its worker's interpreter: nothing for ``paste`` (Slicer's own Python), the
    model's packages for ``diffusion`` (asked before anything is installed, as for a detection run)."""
    from DiffusionAnomalyLib.slicer_module import panel

    if pn.synthesisMethod == "paste":
        return True
    python, own = worker_python(pn)
    return panel.ensure_worker_packages(python, False, ask, own, model=pn.bundlePath != BASELINE)


def detect_on(pn, run: SceneSynthesis) -> dict[str, Any]:
    """The parameter-node values that make the new volume(s) the next detection's input."""
    names = ("inputVolume", "channel2Volume", "channel3Volume", "channel4Volume")
    return dict(zip(names, run.volumes, strict=False))


def parameters() -> type:
    """A class whose annotated members are the section's settings; the module's ``parameterNodeWrapper`` class
    derives from it (beside :func:`~DiffusionAnomalyLib.slicer_module.panel.run_setting_parameters`)."""
    from typing import Annotated, Optional

    import slicer
    from slicer.parameterNodeWrapper import Choice, WithinRange

    annotations = {
        "lesionSegmentation": Optional[slicer.vtkMRMLSegmentationNode],  # noqa: UP045 (the wrapper needs Optional)
        "lesionSegmentId": str,
        "synthesisMethod": Annotated[str, Choice(list(METHOD_CHOICES))],
        "lesionKind": Annotated[str, Choice(list(KIND_CHOICES))],
        "synthesisSeed": Annotated[int, WithinRange(0, 2**31 - 1)],
        "detectSynthesized": bool,
    }
    values = {"lesionSegmentId": "", "synthesisMethod": "paste", "lesionKind": AUTO, "synthesisSeed": 0,
              "detectSynthesized": True}
    return type("SynthesisParameters", (), {"__annotations__": annotations, "__module__": __name__, **values})


class Section:
    """The "Synthesize lesion" section of the module's widget: connects its widgets, keeps its state current
    (:meth:`update`, from the widget's ``updateGUI``) and runs a synthesis through the widget's Logic."""

    def __init__(self, widget) -> None:
        self.widget = widget
        self.observed = None  # the lesion segmentation whose segment events refresh the segment choice
        ui = widget.ui
        ui.synthesizeButton.connect("clicked(bool)", self.on_synthesize)
        ui.lesionSegmentComboBox.connect("currentIndexChanged(int)", self.on_segment_chosen)

    def update(self, pn) -> None:
        """Segment choice, the Synthesize button's state (and Apply's while a synthesis goes)."""
        ui, runner = self.widget.ui, self.widget.logic.runner
        self._observe(pn.lesionSegmentation)
        fill_segments(ui.lesionSegmentComboBox, pn)
        synthesizing = runner.synthesizing
        if synthesizing:  # (the widget has set Apply for "a job is running")
            ui.applyButton.text, ui.applyButton.enabled = "Apply", False
            ui.applyButton.toolTip = "A lesion synthesis is in progress."
        detecting = runner.running and not synthesizing
        show_button_state(ui.synthesizeButton, synthesizing, detecting, [] if runner.running else problems(pn))
        ui.lesionKindComboBox.enabled = pn.synthesisMethod == "paste"

    def _observe(self, node) -> None:
        import slicer

        if node is self.observed:
            return
        for event in (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                      slicer.vtkSegmentation.SegmentModified):
            if self.observed is not None:
                self.widget.removeObserver(self.observed, event, self.widget.updateGUI)
            if node is not None:
                self.widget.addObserver(node, event, self.widget.updateGUI)
        self.observed = node

    def on_segment_chosen(self, index: int) -> None:
        pn = self.widget._parameterNode
        if pn is not None and index >= 0:
            pn.lesionSegmentId = self.widget.ui.lesionSegmentComboBox.itemData(index)

    def on_synthesize(self) -> None:
        """Synthesize turns into Cancel; the rest as Apply (dependencies asked first, errors in a dialog)."""
        import slicer

        from DiffusionAnomalyLib.slicer_module import panel

        w = self.widget
        if w.logic.runner.synthesizing:
            w.logic.cancel()
            w.ui.statusLabel.text = "Cancelling..."
            return
        if not ensure_dependencies(w._parameterNode):  # dialogs: not under the wait cursor
            return
        w.ui.logTextEdit.clear()
        w.ui.progressBar.value = 0
        try:
            with slicer.util.WaitCursor():
                w.logic.start(w._parameterNode, w.onEvent, self.on_finished, synthesize=True)
        except Exception as exc:  # bad input is reported, not raised into Qt (nothing was started)
            panel.show_start_error(exc, "synthesis")
        w.ui.progressBar.visible = w.logic.running
        w.updateGUI()

    def on_finished(self, run: SceneSynthesis) -> None:
        """Show the outcome; with "Run detection on the new volume at once", make it the input and Apply."""
        import slicer

        w, pn = self.widget, self.widget._parameterNode
        w.ui.progressBar.visible = False
        w.ui.statusLabel.text, error = outcome(run)
        if error:
            slicer.util.errorDisplay(error, windowTitle="Diffusion Anomaly")
        w.updateGUI()
        if run.error is None and pn is not None and pn.detectSynthesized:
            with slicer.util.NodeModify(pn.parameterNode):
                for name, node in detect_on(pn, run).items():
                    setattr(pn, name, node)
            w.onApply()


def start(runner, pn, on_event) -> SceneSynthesis:
    """Start the synthesis of the panel's parameter node on ``runner`` (a ``panel.PanelRunner``)."""
    import slicer

    from DiffusionAnomalyLib.slicer_module import panel

    return runner.start_synthesis(slicer.mrmlScene, request_from_parameters(pn), panel.input_nodes(pn),
                                  pn.maskSegmentation, pn.lesionSegmentation, pn.lesionSegmentId, on_event)
