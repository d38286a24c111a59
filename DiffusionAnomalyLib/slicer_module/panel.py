"""What the Slicer panel does, without Qt: the testable half of ``DiffusionAnomaly/DiffusionAnomaly.py``.

Runs in Slicer's own process, so it imports only what Slicer ships (numpy, SimpleITK, vtk and ``slicer``,
the last two inside functions): the panel opens, lists bundles, checks inputs and enables Apply before the
worker's packages (torch, MONAI, scikit-image) are installed. The module's Logic owns a
:class:`PanelRunner` and polls it from a timer; every method returns at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.settings import (
    ORGANS,  # noqa: F401 (the module's organ choice)
    OVERRIDABLE,
    RunSettings,
    field_type,
    options,
    trajectory_every_for,
)
from DiffusionAnomalyLib.slicer_module.scene_run import (  # MASK_SOURCES: the module's mask-source choice
    BASELINE,
    MASK_SOURCES,  # noqa: F401
    RunRequest,
    SceneRun,
    cached_meta,
    run_name,
)
from DiffusionAnomalyLib.slicer_module.worker_run import worker_environment

MINIMUM_SLICER = (5, 10)
#: The bundle list's last entry: no model, the non-neural median baseline, run on Slicer's own Python.
BASELINE_LABEL = "No model: median baseline (non-neural, needs no PyTorch)"
BASELINE_SUMMARY = ("The non-neural median baseline: an organ-restricted median filter stands in for the healthy "
                    "reconstruction. Runs on Slicer's own Python in seconds, with nothing to install; it finds "
                    "well-contrasted focal lesions and marks many false positives. A yardstick, not a model.")
THRESHOLD_MODES = ("bundle", "otsu", "fixed")
#: Lesion-table columns: (key in the worker's lesion rows, header).
LESION_COLUMNS = (("id", "#"), ("side", "side"), ("volume_ml", "ml"), ("axial_diameter_mm", "diam mm"),
                  ("size_class", "size"), ("max_score", "max"))


def slicer_version_problem(major: int, minor: int) -> str:
    """Why this Slicer cannot run the module ("" when it can): 5.10 and later (Python 3.12)."""
    if (int(major), int(minor)) >= MINIMUM_SLICER:
        return ""
    return (f"Diffusion Anomaly needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or later; this is "
            f"{major}.{minor}. Install a current Slicer from download.slicer.org.")


def panel_settings(cls: type = RunSettings) -> list[tuple[str, Any]]:
    """The run settings the panel shows: ``(field name, settings.Option)`` for each with a parameter-node member."""
    return [(name, opt) for name, opt in options(cls) if opt.panel]


def run_setting_parameters(cls: type = RunSettings) -> type:
    """A class whose annotated members are the panel's run settings (from the fields' declarations in
    ``settings.RunSettings``: type, range or choices, initial value); the module's ``parameterNodeWrapper`` class
    derives from it, so a new setting reaches the panel from its declaration and a widget in the ``.ui``."""
    from typing import Annotated

    from slicer.parameterNodeWrapper import Choice, WithinRange

    annotations, values = {}, {}
    defaults = cls()
    for name, opt in panel_settings(cls):
        kind, values_of = opt.panel_limit()
        member = str if kind == "choice" else field_type(name, cls)[0]
        annotations[opt.panel] = Annotated[member, Choice(list(values_of)) if kind == "choice"
                                           else WithinRange(*values_of)]
        values[opt.panel] = member(getattr(defaults, name) if opt.bundle_value is None else opt.bundle_value)
    return type("RunSettingParameters", (), {"__annotations__": annotations, "__module__": __name__, **values})


def bundle_defaults(bundle_path: str) -> dict[str, Any]:
    """The panel values a bundle recommends (sampler, L, s, steps, map reference, samples, median filter),
    by parameter-node member."""
    if bundle_path == BASELINE:
        return {}  # no sampler and no recommendations: the panel's values stay (the baseline ignores them)
    meta = cached_meta(bundle_path)
    s = RunSettings.resolve(meta.recommended, meta.preset())
    return {opt.panel: getattr(s, name) for name, opt in panel_settings() if name in OVERRIDABLE}


def input_nodes(pn) -> list:
    """The chosen input volumes (first one, then MRI channels 2-4), skipping empty selectors."""
    return [n for n in (pn.inputVolume, pn.channel2Volume, pn.channel3Volume, pn.channel4Volume) if n]


def worker_python(pn) -> tuple[str, bool]:
    """The worker's interpreter and whether it is Slicer's own: for the median baseline always Slicer's own (it
    needs only what Slicer ships); for a model the panel's "Python for the worker", else ``DA_WORKER_PYTHON``, else
    Slicer's own (:func:`~DiffusionAnomalyLib.app.dependencies.slicer_python`). Another interpreter is started with
    Slicer's startup environment (:func:`~DiffusionAnomalyLib.slicer_module.worker_run.worker_environment`)."""
    from DiffusionAnomalyLib.app.dependencies import slicer_python

    other = _other_python(pn)
    return (other, False) if other else (slicer_python(), True)


def _other_python(pn) -> str:
    """The worker's interpreter when it is not Slicer's own ("" when it is): no file-system look-up."""
    return "" if pn.bundlePath == BASELINE else pn.pythonExecutable or os.environ.get("DA_WORKER_PYTHON", "")


def wait_for(done: Callable[[], bool], process_events: Callable[[], None], timeout_s: float,
             on_timeout: Callable[[], None] | None = None) -> None:
    """Process GUI events until ``done()`` (scripts and the self-test); on timeout call ``on_timeout`` and raise."""
    import time

    t_end = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > t_end:
            if on_timeout:
                on_timeout()
            raise TimeoutError(f"the run did not finish within {timeout_s:.0f} s")
        process_events()
        time.sleep(0.05)


def request_from_parameters(pn, python: str) -> RunRequest:
    """The run request for the panel's parameter node: each run setting's member (its ``bundle_value``, e.g.
    ``"bundle"`` / ``0`` / ``-1``, leaves it to the bundle), the threshold from its mode and value, and the
    trajectory from its check box."""
    settings: dict[str, Any] = {}
    for name, opt in panel_settings():
        value = getattr(pn, opt.panel)
        settings[name] = None if opt.bundle_value is not None and value == opt.bundle_value else value
    settings["threshold"] = pn.thresholdMode if pn.thresholdMode != "fixed" else float(pn.threshold)
    # "Keep the denoising trajectory": about PANEL_TRAJECTORY_FRAMES frames of the run's steps
    settings["trajectory_every"] = trajectory_every_for(int(pn.steps)) if pn.keepTrajectory else 0
    return RunRequest(organ=pn.organ, bundle=pn.bundlePath, settings=settings, mask_source=pn.maskSource,
                      python=python, own_python=not _other_python(pn))


def parameter_problems(pn, python: str) -> list[str]:
    """Why Apply is disabled (empty when a run can start). Cheap: reads no voxels and starts no process."""
    from DiffusionAnomalyLib.slicer_module import scene

    first = scene.volume_node_problem(pn.inputVolume)
    out = [first] if first else []
    if not python:
        out.append("No Python interpreter for the worker was found; set 'Python for the worker'.")
    out += request_from_parameters(pn, python).problems()
    if not out and pn.bundlePath != BASELINE and os.path.isdir(pn.bundlePath):
        channels = cached_meta(pn.bundlePath).channels
        if len(channels) > 1 or len(input_nodes(pn)) > 1:
            problem = scene.channel_nodes_problem(input_nodes(pn), channels)
            out += [problem] if problem else []
    return out + mask_problems(pn)


def mask_problems(pn) -> list[str]:
    """What is wrong with the organ segmentation, when it is the mask source."""
    from DiffusionAnomalyLib.slicer_module import scene

    if pn.maskSource != "segmentation":
        return []
    if pn.maskSegmentation is None:
        return [f"Choose the segmentation that holds the {pn.organ} (or let TotalSegmentator make one)."]
    if not scene.organ_segment_ids(pn.maskSegmentation, pn.organ):
        return [f"'{pn.maskSegmentation.GetName()}' has no segment named like '{pn.organ}'."]
    return []


class BundleList:
    """The bundles offered for one organ (metadata only; re-read when the organ changes or after an import)."""

    def __init__(self) -> None:
        self.organ: str | None = None
        self.paths: list[str] = []
        self.labels: list[str] = []
        self.summaries: list[str] = []  # each bundle's model-card summary, shown as the item's tooltip

    def refresh(self, organ: str) -> list[str] | None:
        """The new paths when the list changed (another organ, or :attr:`organ` reset to None), else None."""
        from DiffusionAnomalyLib.models.bundle import available_bundles

        if organ == self.organ:
            return None
        found = available_bundles(organ)
        self.organ = organ
        self.paths = [str(b.path) for b in found] + [BASELINE]
        self.labels = [b.label for b in found] + [BASELINE_LABEL]
        self.summaries = [b.summary for b in found] + [BASELINE_SUMMARY]
        return self.paths

    def fill(self, combo) -> None:
        """Put the labels into ``combo`` (a QComboBox), each with its model card's summary as tooltip."""
        import qt

        combo.clear()
        combo.addItems(self.labels)
        for i, summary in enumerate(self.summaries):
            combo.setItemData(i, summary, qt.Qt.ToolTipRole)

    def index(self, path: str) -> int:
        return self.paths.index(path) if path in self.paths else -1


def ask_bundle_path() -> str:
    """Ask for a bundle folder (or, when cancelled, a .zip); "" if none."""
    import qt

    path = qt.QFileDialog.getExistingDirectory(None, "Model bundle folder (cancel to pick a .zip)")
    return path or qt.QFileDialog.getOpenFileName(None, "Model bundle (.zip)", "", "Bundles (*.zip)")


def import_bundle(path: str) -> str:
    """Check a bundle folder or .zip and copy it into the models folder; returns where it went ("" when the user
    keeps an installed bundle of the same name and version: asked first, never replaced silently). Sets the wait
    cursor itself, never over the question."""
    import slicer

    from DiffusionAnomalyLib.errors import BundleExistsError
    from DiffusionAnomalyLib.models.bundle import default_models_dir, import_bundle

    try:
        with slicer.util.WaitCursor():
            return str(import_bundle(path, default_models_dir()))
    except BundleExistsError as exc:
        installed = getattr(exc, "installed", "")
    if not slicer.util.confirmOkCancelDisplay(
            f"A bundle of the same name and version is already installed in {installed}. Replace it with the one in "
            f"{path}? (Runs that used the installed one cannot be repeated exactly afterwards.)",
            windowTitle="Diffusion Anomaly"):
        return ""
    with slicer.util.WaitCursor():
        return str(import_bundle(path, default_models_dir(), overwrite=True))


def models_folder() -> str:
    """The user's models folder (created if missing)."""
    from DiffusionAnomalyLib.models.bundle import default_models_dir

    folder = default_models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def event_text(event: dict) -> tuple[int | None, str | None, str | None]:
    """What a worker event shows: (progress percent, status line, log line), each None when unchanged."""
    kind = event.get("event")
    if kind == "progress":
        eta = event.get("eta_s")
        status = f"{event.get('stage')} {event.get('step')}/{event.get('total')}" + (
            f" - about {eta:.0f} s left" if eta is not None else "")
        return int(100 * float(event.get("fraction", 0))), status, None
    if kind in ("log", "warning", "error"):
        return None, None, f"{kind}: {event.get('message', '')}"
    if kind == "started":
        return None, None, f"worker started (pid {event.get('pid')})"
    if kind == "ready":
        return None, None, (f"a worker started ahead of this run had imported the model code "
                            f"({event.get('preload_s')} s)" if event.get("preloaded") else None)
    return None, None, None


def show_event(ui, event: dict) -> None:
    """Show a worker event in the panel (``ui``: the module's widgets): progress bar, status line, log."""
    percent, status, line = event_text(event)
    if percent is not None:
        ui.progressBar.value = percent
    if status:
        ui.statusLabel.text = status
    if line:
        ui.logTextEdit.appendPlainText(line)


def outcome(run: SceneRun) -> tuple[str, str, list[dict]]:
    """A finished run as (status line, error to show in a dialog or "", lesion-table rows)."""
    if run.error is not None:
        shown = "" if getattr(run.error, "code", "") == "cancelled" else str(run.error)
        return f"Not completed: {run.error}", shown, []
    rows = run.client.result.get("lesions", [])
    return f"{len(rows)} candidate lesion(s) in '{run.name}'.", "", rows


def show_outcome(ui, run: SceneRun) -> list[dict]:
    """Show a finished run in the panel (status, error dialog, lesion table); returns the lesion rows."""
    import qt
    import slicer

    ui.progressBar.visible = False
    ui.statusLabel.text, error, rows = outcome(run)
    if error:
        slicer.util.errorDisplay(error, windowTitle="Diffusion Anomaly")
    ui.lesionTable.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, (key, _) in enumerate(LESION_COLUMNS):
            ui.lesionTable.setItem(r, c, qt.QTableWidgetItem(cell_text(row.get(key, ""))))
    return rows


def show_start_error(exc: BaseException, what: str = "run") -> None:
    """A run (or ``what``) that could not start: its reason in a dialog (with the traceback as details unless it is
    bad input)."""
    import traceback

    import slicer

    from DiffusionAnomalyLib.errors import DiffusionAnomalyError

    details = {} if isinstance(exc, DiffusionAnomalyError) else {"detailedText": "".join(
        traceback.format_exception(exc))}
    slicer.util.errorDisplay(f"Could not start the {what}: {exc}", windowTitle="Diffusion Anomaly", **details)


def show_apply_state(button, running: bool, problems: list[str]) -> None:
    """Apply turns into Cancel while a run goes; disabled with the reasons as its tooltip when a run cannot start."""
    button.text = "Cancel" if running else "Apply"
    button.enabled = running or not problems
    button.toolTip = "Stop the run; nothing is added to the scene." if running else (
        "\n".join(problems) if problems else "Reconstruct a healthy organ and show where the scan differs.")


def cell_text(value: Any) -> str:
    """A lesion-table cell."""
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def ensure_dependencies(pn, ask: bool = True) -> bool:
    """Everything the run of ``pn`` needs in its worker's interpreter (:func:`worker_python`): the model's packages
    (none for the median baseline), and with TotalSegmentator as the mask source its package and weights. Asks
    before installing or downloading anything (never, with ``ask`` False: then it only reports)."""
    python, own = worker_python(pn)
    totalsegmentator = pn.maskSource == "totalsegmentator"
    if not ensure_worker_packages(python, totalsegmentator, ask, own, model=pn.bundlePath != BASELINE):
        return False
    return not totalsegmentator or ensure_totalseg_weights(python, own, pn.organ, ask)


def ensure_totalseg_weights(python: str, own: bool, organ: str, ask: bool = True) -> bool:
    """TotalSegmentator's weights for ``organ`` in the worker's environment; if absent, offer to download them with
    that interpreter's ``totalseg_download_weights`` (the user's consent; never without ``ask``), else say exactly
    what to run or to give a segmentation instead. True when they are there."""
    import shlex

    import slicer

    from DiffusionAnomalyLib.app import dependencies
    from DiffusionAnomalyLib.detection.presets import get_preset
    from DiffusionAnomalyLib.imaging import totalseg

    env = worker_environment(own)
    if totalseg.weights_present(env):
        return True
    preset = get_preset(organ)
    by_hand = shlex.join(totalseg.download_command(dependencies.launcher_for(python) if own else python, preset))
    instead = (f"Or set the organ mask source to 'segmentation' and choose a segmentation that holds the {organ} "
               "(Segment Editor, or the TotalSegmentator extension's own module).")
    if not ask or not slicer.util.confirmOkCancelDisplay(
            f"TotalSegmentator makes the {organ} mask, but its weights (task {totalseg.weights_task(preset)}, a few "
            f"hundred MB, downloaded once from TotalSegmentator's authors) are not in {totalseg.weights_dir(env)}. "
            f"Download them now? {instead}", windowTitle="Diffusion Anomaly"):
        slicer.util.errorDisplay(f"TotalSegmentator's weights are not downloaded. To download them by hand, run:\n"
                                 f"{by_hand}\n{instead}")
        return False
    try:
        with slicer.util.WaitCursor():  # no Slicer dialog inside
            dependencies.run_logged(totalseg.download_command(python, preset), slicer.app.processEvents, env,
                                    "totalseg_download_weights")
    except Exception as exc:
        slicer.util.errorDisplay(f"The download failed ({exc}). To download by hand, run:\n{by_hand}\n{instead}")
        return False
    if totalseg.weights_present(env):
        return True
    slicer.util.errorDisplay(f"After the download there are still no weights in {totalseg.weights_dir(env)}. "
                             f"Run:\n{by_hand}\n{instead}")
    return False


def ensure_worker_packages(python: str, totalsegmentator: bool, ask: bool = True, own: bool = True,
                           model: bool = True) -> bool:
    """Check the worker's packages in ``python``; ask, then install what is missing (Slicer dialogs).

    ``own``: ``python`` is Slicer's own interpreter: torch comes from the PyTorch extension (the right CUDA build),
    the rest from ``slicer.util.pip_install``; otherwise that interpreter's own pip installs everything.
    ``model`` False (the median baseline): only TotalSegmentator, when it makes the masks.
    Returns True when nothing is missing any more.
    """
    import slicer

    from DiffusionAnomalyLib.app import dependencies

    extra = dependencies.TOTALSEGMENTATOR_REQUIREMENT if totalsegmentator else None
    env = worker_environment(own)
    missing = dependencies.missing_packages(python, extra, env, model)
    if not missing:
        return True
    command = dependencies.install_command(missing, dependencies.launcher_for(python) if own else python)
    if ask and not slicer.util.confirmOkCancelDisplay(
            f"Diffusion Anomaly needs these Python packages: {', '.join(missing)}. Install them now into {python}? "
            "(This may take several minutes.) Without them, choose 'No model: median baseline'.",
            windowTitle="Diffusion Anomaly"):
        slicer.util.errorDisplay(f"Not installed. To install by hand, run:\n{command}")
        return False
    try:
        _install(missing, python, own, env)
    except Exception as exc:
        import logging

        logging.error("Diffusion Anomaly: installing %s failed (%s). To install by hand, run: %s", missing, exc,
                      command)
        if not _slicer_showed_the_failure(own):  # Slicer 5.12's pip_install has shown its own dialog already
            slicer.util.errorDisplay(f"Installation failed ({exc}). To install by hand, run:\n{command}")
        return False
    still = dependencies.missing_packages(python, extra, env, model)
    if still:
        slicer.util.errorDisplay(f"Still missing after the install: {', '.join(still)}. Run:\n{command}")
    return not still


def _slicer_showed_the_failure(own: bool) -> bool:
    """Whether Slicer's own ``pip_install`` has shown its error dialog before raising (5.12 and later, outside
    testing mode: ``slicer/packaging.py``), so the panel must not show a second one."""
    import slicer

    return own and (int(slicer.app.majorVersion), int(slicer.app.minorVersion)) >= (5, 12) and \
        not slicer.app.testingEnabled()


def _install(missing: list[str], python: str, own: bool, env: dict[str, str]) -> None:
    """Install ``missing`` into ``python``. Slicer's own: torch through the PyTorch extension (its CUDA build),
    the rest with ``slicer.util.pip_install`` (5.12 shows its own progress dialog: no wait cursor over it);
    another interpreter: its own pip under a wait cursor, in that interpreter's startup environment."""
    import importlib.util

    import slicer

    from DiffusionAnomalyLib.app import dependencies

    if not own:
        with slicer.util.WaitCursor():  # no Slicer dialog in this branch
            dependencies.pip_install(missing, python, idle=slicer.app.processEvents, env=env)  # GUI keeps painting
        return
    torch = [m for m in missing if m.startswith("torch")]
    if torch and importlib.util.find_spec("PyTorchUtils"):
        import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS)

        PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                      torchVersionRequirement=dependencies.TORCH_REQUIREMENT)
        missing = [m for m in missing if m not in torch]
    if missing:
        slicer.util.pip_install(missing)


def run_output_folder(root: str, name: str) -> str:
    """A new folder under ``root`` for one run's files, named after the run (never an earlier run's folder)."""
    import re

    base = os.path.join(root, re.sub(r'[\\/:*?"<>|]+', "-", name).strip(" .") or "run")
    folder, n = base, 2
    while os.path.exists(folder):
        folder, n = f"{base} ({n})", n + 1
    return folder


class PanelRunner:
    """At most one :class:`SceneRun` at a time, with the compare view it shows afterwards.

    ``client_factory`` is passed to :class:`SceneRun` (tests can inject one; default: the real worker, then with a
    :class:`~DiffusionAnomalyLib.app.client.SpareWorker`: after each run the next run's worker is started and
    imports the model code while the user reads the results; :meth:`close` ends it).
    A failure in :meth:`start` leaves the runner ready for the next start. :meth:`cancel` never waits:
    the run finishes (cancelled, nothing added) on a later :meth:`poll`.
    """

    def __init__(self, client_factory: Callable | None = None) -> None:
        from DiffusionAnomalyLib.app.client import SpareWorker

        self.client_factory = client_factory
        self.spare = SpareWorker() if client_factory is None else None
        self.run: SceneRun | None = None
        self.compare_state = None
        self._scene = None
        self._input = None

    @property
    def running(self) -> bool:
        return self.run is not None and not self.run.finished

    @property
    def synthesizing(self) -> bool:
        """The job going is a lesion synthesis."""
        from DiffusionAnomalyLib.slicer_module.synthesis_run import SceneSynthesis

        return self.running and isinstance(self.run, SceneSynthesis)

    def start(self, scene, request: RunRequest, nodes: Sequence, segmentation=None,
              on_event: Callable[[dict], None] | None = None, output_root: str = "") -> SceneRun:
        """Check, write the inputs and start the worker; raises InputError (nothing started) on bad input."""
        from DiffusionAnomalyLib.slicer_module import scene as adapter

        if self.running:
            raise InputError("A run is in progress; cancel it first.")
        ids = adapter.organ_segment_ids(segmentation, request.organ) if segmentation is not None else []
        output = None
        if output_root and nodes:
            output = run_output_folder(output_root, run_name(request, nodes[0].GetName()))
        run = SceneRun(scene, request, nodes, segmentation if request.mask_source == "segmentation" else None, ids,
                       client_factory=self.client_factory, on_event=on_event, output_dir=output)
        run.spare = self.spare
        run.start()  # raises before self.run is set: a failed start leaves the runner idle
        self.run, self._scene, self._input = run, scene, nodes[0]
        return run

    def start_synthesis(self, scene, request, nodes: Sequence, segmentation, lesion_segmentation, segment_id: str,
                        on_event: Callable[[dict], None] | None = None):
        """Start a lesion synthesis (:class:`~.synthesis_run.SceneSynthesis`) into a new volume; raises InputError
        (nothing started) on bad input. At most one worker job at a time: detection or synthesis."""
        from DiffusionAnomalyLib.slicer_module import scene as adapter
        from DiffusionAnomalyLib.slicer_module.synthesis_run import SceneSynthesis

        if self.running:
            raise InputError("A run is in progress; cancel it first.")
        use_mask = request.mask_source == "segmentation" and segmentation is not None
        ids = adapter.organ_segment_ids(segmentation, request.organ) if use_mask else []
        run = SceneSynthesis(scene, request, nodes, segmentation if use_mask else None, ids, lesion_segmentation,
                             segment_id, client_factory=self.client_factory, on_event=on_event)
        run.spare = self.spare
        run.start()
        self.run = run
        return run

    def poll(self) -> bool:
        """Forward events; when a detection run ends, show the compare view if it succeeded. True while running."""
        if self.run is None or self.run.finished:
            return False
        if self.run.poll():
            return True
        if getattr(self.run, "result_nodes", None) is not None:
            from DiffusionAnomalyLib.slicer_module import scene as adapter

            # Still in the compare layout from an earlier run: the views were saved before that run changed them;
            # saving them again would save the compare views and lose the user's.
            earlier = self.compare_state if adapter.in_compare_layout(self._scene) else None
            state = adapter.show_compare(self._scene, self._input, self.run.result_nodes)
            self.compare_state = earlier or state
        return False

    def cancel(self) -> None:
        """Ask the worker to stop (returns at once; keep polling until :attr:`running` is False)."""
        if self.running:
            self.run.request_cancel()

    def close(self) -> None:
        """The module's cleanup: ask a running job to stop (as :meth:`cancel`) and end the spare worker."""
        self.cancel()
        if self.spare is not None:
            self.spare.close()

    def layout_changed(self) -> None:
        """Call when the view layout changed: leaving the compare layout restores the views' settings."""
        from DiffusionAnomalyLib.slicer_module import scene as adapter

        if self.compare_state is not None and self._scene is not None and not adapter.in_compare_layout(self._scene):
            adapter.leave_compare(self._scene, self.compare_state)
            self.compare_state = None

    def lesion_position(self, row: dict) -> tuple[float, float, float]:
        """World RAS of a lesion-table row's centroid (through the input's parent transforms)."""
        from DiffusionAnomalyLib.slicer_module import scene as adapter

        local = [float(row[f"centroid_ras_{a}"]) for a in "xyz"]
        return adapter.to_world(self._input, local)
