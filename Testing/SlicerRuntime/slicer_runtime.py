"""A Slicer-like runtime for testing a scripted module without the Slicer application.

``install()`` composes what a module sees inside Slicer 5.12.3, or 5.10.0 with ``DA_SLICER_LAYER=5.10.0``:

* ``qt`` / ``ctk``: PyQt5 with PythonQt's habits and FAKE CTK widgets (``qt.py``, ``ctk.py``);
* ``slicer``: the slicer-core wheel's real MRML/logic classes, plus that Slicer version's own Python layer
  loaded from the shared folder (``$DA_SLICER_PYTHON``, its ``v5.10.0/`` for 5.10.0): ``ScriptedLoadableModule``,
  ``parameterNodeWrapper``, ``util``, ``i18n``, ``testing``, ``logic``. ``slicer.util`` is
  **Slicer's** (what modules call inside the application: ``loadUI``, ``childWidgetVariables``,
  ``VTKObservationMixin``, ``tryWithErrorDisplay``...); slicer-core's own ``slicer.util`` (written
  for a plain interpreter) stays reachable as ``slicer_runtime.core_util``;
* FAKE qMRML widgets (``qmrml.py``) as ``slicer.qMRMLNodeComboBox``, ``slicer.qMRMLWidget``...;
* ``slicer.mrmlScene``: a real ``vtkMRMLScene`` with a real layout node and ``vtkMRMLLayoutLogic``
  (four-up layout: Red axial, Yellow sagittal, Green coronal slice nodes and their composite nodes,
  made by real ``vtkMRMLSliceLogic`` objects of a real ``vtkSlicerApplicationLogic``);
* ``slicer.app``: a FAKE application (``FakeSlicerApp``) and ``slicer.modules``: FAKE module
  entries whose ``logic()`` are the real logic classes (markups, segmentations, colors, volumes...);
* Slicer's popups (``errorDisplay``, ``confirmOkCancelDisplay``...) replaced by ``dialogs``, a
  recorder whose answers tests script; ``pip_install`` recorded in ``pip_installs``, not run.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import tempfile
import types
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHARED_ENV = "DA_SLICER_PYTHON"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Which of Slicer's Python layers the runtime loads (``$DA_SLICER_LAYER``), and where it lies in the shared folder.
LAYER_ENV = "DA_SLICER_LAYER"
LAYERS = {"5.12.3": ".", "5.10.0": "v5.10.0"}
LAYER = os.environ.get(LAYER_ENV) or "5.12.3"
SLICER_VERSION = tuple(int(part) for part in LAYER.split(".")) if LAYER in LAYERS else (5, 12, 3)
SHARED_MODULES = ("i18n", "util", "ScriptedLoadableModule", "parameterNodeWrapper", "testing", "logic")


def shared_slicer_python() -> Path | None:
    """The shared folder with Slicer's Python layer, or None when it is absent."""
    path = Path(os.environ.get(SHARED_ENV) or REPO_ROOT.parent / "shared" / "slicer-python")
    return path if (path / "slicer" / "ScriptedLoadableModule.py").is_file() else None


def slicer_layer() -> Path | None:
    """The folder of the chosen Slicer version's Python layer (``slicer/``, ``tests/``), or None when it is absent."""
    shared = shared_slicer_python()
    if shared is None or LAYER not in LAYERS:
        return None
    path = (shared / LAYERS[LAYER]).resolve()
    return path if (path / "slicer" / "ScriptedLoadableModule.py").is_file() else None


def missing_requirements() -> str | None:
    """Why the runtime cannot be installed here (None when it can)."""
    if LAYER not in LAYERS:
        raise RuntimeError(f"{LAYER_ENV}={LAYER!r}: the layers are {', '.join(LAYERS)}")
    if shared_slicer_python() is None:
        return f"Slicer's Python layer not found: set {SHARED_ENV} (default ../shared/slicer-python)"
    if slicer_layer() is None:
        return f"Slicer {LAYER}'s Python layer not found in {shared_slicer_python()}/{LAYERS[LAYER]}"
    for name, what in (("PyQt5.QtWidgets", "PyQt5"), ("vtk", "vtk (slicer-core)")):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            return f"{what} cannot be imported: {exc}"
    if importlib.util.find_spec("slicer") is None or importlib.util.find_spec("slicer.slicer_core") is None:
        return "the slicer-core wheel is not installed"
    return None


# --------------------------------------------------------------------------------------------------
# blocked imports


class ImportBlocker(importlib.abc.MetaPathFinder):
    """A meta-path finder that makes the "Slicer process" refuse some top-level packages."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = set(names)
        self.attempts: list[str] = []

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.split(".")[0] in self.names:
            self.attempts.append(fullname)
            raise ImportError(f"'{fullname}' is blocked in this Slicer-like test process", name=fullname)
        return None


# --------------------------------------------------------------------------------------------------
# dialogs


@dataclass
class Shown:
    """One popup the module asked for."""

    kind: str
    text: str
    windowTitle: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: The shape of the application's override cursor while it was up (e.g. ``Qt.WaitCursor``), None if none:
    #: a modal dialog under a wait cursor shows the wait cursor over the dialog.
    overrideCursor: int | None = None


class DialogRecorder:
    """FAKE of Slicer's popups: records them in ``shown`` and answers from ``answers``.

    Confirmations (``confirmOkCancelDisplay``, ``confirmYesNoDisplay``, ``confirmRetryCloseDisplay``)
    pop the next scripted answer from ``answers`` (``True`` when none is scripted, as Slicer
    does in testing mode, except RetryClose which defaults to ``False``).

    All are modal, as in Slicer (``slicer.util.messageBox`` ends in ``exec_()``): Qt's own modal dialogs
    (``exec_()``, ``QFileDialog.get...``, ``show()`` of a modal dialog) come here too (``qt.modal_hook``), and
    each record keeps the override cursor it was shown under. The static file dialogs answer a scripted
    path ("" when none: cancelled); ``exec_()`` a scripted code (``QDialog.Rejected`` when none).
    """

    def __init__(self) -> None:
        self.shown: list[Shown] = []
        self.answers: deque[Any] = deque()

    def reset(self) -> None:
        self.shown.clear()
        self.answers.clear()

    def texts(self, kind: str | None = None) -> list[str]:
        return [s.text for s in self.shown if kind is None or s.kind == kind]

    def under_override_cursor(self) -> list[Shown]:
        """The dialogs shown while an override cursor (a wait cursor...) was set."""
        return [s for s in self.shown if s.overrideCursor is not None]

    def _record(self, kind: str, text: Any, windowTitle: str | None, kwargs: dict[str, Any]) -> None:
        import logging

        from PyQt5 import QtWidgets

        cursor = QtWidgets.QApplication.overrideCursor()
        shape = int(cursor.shape()) if cursor is not None else None
        self.shown.append(Shown(kind, str(text), windowTitle, dict(kwargs), shape))
        logging.getLogger("slicer_runtime.dialogs").info("%s: %s", kind, text)

    def modal(self, kind: str, text: str, details: dict[str, Any]) -> Any:
        """``qt.modal_hook``: record a modal Qt dialog and answer it."""
        self._record(kind, text, details.get("windowTitle"), details)
        if kind == "modalShow":  # shown, not waited for
            return None
        return self._answer(0 if kind == "exec" else "")

    def _answer(self, default: Any) -> Any:
        return self.answers.popleft() if self.answers else default

    def functions(self) -> dict[str, Any]:
        """Replacements for the ``slicer.util`` popup functions."""
        def display(kind: str) -> Any:
            def show(text: Any, windowTitle: str | None = None, parent: Any = None, standardButtons: Any = None,
                     **kwargs: Any) -> None:
                self._record(kind, text, windowTitle, kwargs)
            show.__name__ = kind
            return show

        def confirm(kind: str, default: bool) -> Any:
            def ask(text: Any, windowTitle: str | None = None, parent: Any = None, **kwargs: Any) -> bool:
                self._record(kind, text, windowTitle, kwargs)
                return bool(self._answer(default))
            ask.__name__ = kind
            return ask

        def delayDisplay(message: Any, autoCloseMsec: int = 1000, parent: Any = None, **kwargs: Any) -> None:
            self._record("delayDisplay", message, None, kwargs)

        def messageBox(text: Any, parent: Any = None, **kwargs: Any) -> Any:
            import qt

            self._record("messageBox", text, kwargs.get("windowTitle"), kwargs)
            return self._answer(qt.QMessageBox.Ok)

        return {
            "errorDisplay": display("errorDisplay"),
            "warningDisplay": display("warningDisplay"),
            "infoDisplay": display("infoDisplay"),
            "confirmOkCancelDisplay": confirm("confirmOkCancelDisplay", True),
            "confirmYesNoDisplay": confirm("confirmYesNoDisplay", True),
            "confirmRetryCloseDisplay": confirm("confirmRetryCloseDisplay", False),
            "delayDisplay": delayDisplay,
            "messageBox": messageBox,
        }


dialogs = DialogRecorder()
pip_installs: list[Any] = []
#: Exceptions raised in Qt slots (button clicks, timers). PythonQt prints them to the Python console and goes on;
#: PyQt5 would abort the process. Recorded here (and printed) so tests can assert that none happened.
slot_errors: list[BaseException] = []


def _slot_excepthook(exc_type: type, exc: BaseException, tb: Any) -> None:
    import traceback

    slot_errors.append(exc)
    traceback.print_exception(exc_type, exc, tb)
blocker: ImportBlocker | None = None
core_util: types.ModuleType | None = None
_installed: dict[str, Any] = {}


#: How the FAKE ``pip_install`` ends: "record" (installs nothing, returns), "fail" (as pip failing: Slicer 5.12's
#: ``packaging.pip_install`` shows its error dialog, outside testing mode, then raises CalledProcessError) or
#: "offline" (raises at once, as a machine without network or a CI that refuses installs).
pip_mode = "record"


def _pip_install(requirements: Any, **kwargs: Any) -> None:
    """FAKE of ``slicer.util.pip_install``: records the request and the cursor over it, installs nothing; fails as
    Slicer 5.12 does when ``pip_mode`` says so (slicer/packaging.py ``pip_install`` -> ``_pip_install_with_dialog``:
    a modal progress dialog, then on failure ``errorDisplay`` with the log, then ``CalledProcessError``)."""
    import subprocess

    import slicer
    from PyQt5 import QtWidgets

    pip_installs.append(requirements)
    if pip_mode == "offline":
        raise subprocess.CalledProcessError(1, "pip install", "network and installs are refused in this test")
    progress_dialog = SLICER_VERSION >= (5, 12) and not slicer.app.testingEnabled()
    if progress_dialog:  # the modal progress dialog: Slicer's own, shown over whatever cursor is set
        dialogs._record("pipProgressDialog", str(requirements), "Installing Python packages",
                        {"overrideCursor": QtWidgets.QApplication.overrideCursor() is not None})
    if pip_mode == "fail":
        if progress_dialog:
            slicer.util.errorDisplay(f"Failed to install Python packages: {requirements}",
                                     detailedText="pip install exited with code 1")
        raise subprocess.CalledProcessError(1, "pip install")


def _pip_uninstall(requirements: Any, **kwargs: Any) -> None:
    """FAKE of ``slicer.util.pip_uninstall``: records the request, removes nothing."""
    pip_installs.append(("uninstall", requirements))


# --------------------------------------------------------------------------------------------------
# application, layout manager, modules (FAKES)


def _qt_classes() -> dict[str, Any]:
    from PyQt5 import QtCore
    from PyQt5.QtCore import pyqtProperty, pyqtSignal

    class FakeSliceView(QtCore.QObject):
        """FAKE of qMRMLSliceView: nothing is rendered."""

        def forceRender(self) -> None:
            """FAKE: nothing to render."""

        def scheduleRender(self) -> None:
            """FAKE: nothing to render."""

    class FakeSliceWidget(QtCore.QObject):
        """FAKE of qMRMLSliceWidget: gives the real slice node and slice logic, renders nothing."""

        def __init__(self, sliceLogic: Any) -> None:
            super().__init__()
            self._logic = sliceLogic
            self._view = FakeSliceView(self)

        def sliceLogic(self) -> Any:
            return self._logic

        def mrmlSliceNode(self) -> Any:
            return self._logic.GetSliceNode()

        def mrmlSliceCompositeNode(self) -> Any:
            return self._logic.GetSliceCompositeNode()

        def sliceView(self) -> FakeSliceView:
            return self._view

        def fitSliceToBackground(self) -> None:
            self._logic.FitSliceToBackground()

    class FakeLayoutManager(QtCore.QObject):
        """FAKE of qSlicerLayoutManager: ``layout`` reads/writes the real layout node's view
        arrangement (so the real vtkMRMLLayoutLogic creates the views' nodes); no views are drawn."""

        layoutChanged = pyqtSignal(int)

        def __init__(self, runtime: dict[str, Any]) -> None:
            super().__init__()
            self._runtime = runtime

        def _getLayout(self) -> int:
            return self._runtime["layoutLogic"].GetLayoutNode().GetViewArrangement()

        def setLayout(self, layout: int) -> None:
            node = self._runtime["layoutLogic"].GetLayoutNode()
            if node.GetViewArrangement() != int(layout):
                node.SetViewArrangement(int(layout))
                self.layoutChanged.emit(int(layout))

        layout = pyqtProperty(int, _getLayout, setLayout, notify=layoutChanged)

        def layoutLogic(self) -> Any:
            return self._runtime["layoutLogic"]

        def sliceViewNames(self) -> list[str]:
            return [w.mrmlSliceNode().GetLayoutName() for w in self._runtime["sliceWidgets"].values()]

        def sliceWidget(self, name: str) -> Any:
            return self._runtime["sliceWidgets"].get(name)

        def threeDViewCount(self) -> int:
            return 0

        def threeDWidget(self, index: int) -> None:
            return None

        def resetSliceViews(self) -> None:
            for widget in self._runtime["sliceWidgets"].values():
                widget.fitSliceToBackground()

    class FakeModuleManager(QtCore.QObject):
        """FAKE of qSlicerModuleManager: looks modules up in ``slicer.modules``."""

        moduleAboutToBeUnloaded = pyqtSignal(str)
        moduleLoaded = pyqtSignal(str)

        def module(self, name: str) -> Any:
            import slicer

            for module in vars(slicer.modules).values():
                if isinstance(module, FakeModule) and module.name == name:
                    return module
            return None

        def modulesNames(self) -> list[str]:
            import slicer

            return [m.name for m in vars(slicer.modules).values() if isinstance(m, FakeModule)]

    class FakeModule(QtCore.QObject):
        """FAKE of qSlicerAbstractCoreModule: a name, a title and the module's real ``logic()``."""

        def __init__(self, name: str, logic: Any = None, path: str = "") -> None:
            super().__init__()
            self._name, self._title, self._path, self._logic = name, name, path, logic

        def _getName(self) -> str:
            return self._name

        name = pyqtProperty(str, _getName)

        def _getTitle(self) -> str:
            return self._title

        def _setTitle(self, title: str) -> None:
            self._title = str(title)

        title = pyqtProperty(str, _getTitle, _setTitle)

        def _getPath(self) -> str:
            return self._path

        path = pyqtProperty(str, _getPath)

        def logic(self) -> Any:
            return self._logic

        def widgetRepresentation(self) -> Any:
            """FAKE: C++ modules have no panel here."""
            return None

        def createNewWidgetRepresentation(self) -> Any:
            return None

        def isHidden(self) -> bool:
            return False

    class FakeApp(QtCore.QObject):
        """FAKE of qSlicerApplication (``slicer.app``): versions, scene, layout manager,
        application logic, module manager, settings and the Qt event loop; no main window."""

        def __init__(self, runtime: dict[str, Any]) -> None:
            super().__init__()
            self._runtime = runtime
            self._layoutManager = FakeLayoutManager(runtime)
            self._moduleManager = FakeModuleManager()
            self.restartRequested = 0
            self._testingEnabled = False

        def _const(value: Any) -> pyqtProperty:  # noqa: N805 (class-body helper)
            return pyqtProperty(type(value), lambda self: value, constant=True)

        majorVersion = _const(SLICER_VERSION[0])
        minorVersion = _const(SLICER_VERSION[1])
        patchVersion = _const(SLICER_VERSION[2])
        revision = _const("33300")
        applicationVersion = _const(".".join(map(str, SLICER_VERSION)))
        applicationName = _const("Slicer")
        mainApplicationName = _const("Slicer")
        repositoryUrl = _const("https://github.com/Slicer/Slicer")
        documentationBaseUrl = _const(f"https://slicer.readthedocs.io/en/{SLICER_VERSION[0]}.{SLICER_VERSION[1]}")
        isInstalled = _const(False)
        platform = _const(sys.platform)
        del _const

        def _getTemporaryPath(self) -> str:
            return self._runtime["tempdir"]

        temporaryPath = pyqtProperty(str, _getTemporaryPath)

        def _getSlicerHome(self) -> str:
            return self._runtime["tempdir"]

        slicerHome = pyqtProperty(str, _getSlicerHome)

        def moduleDocumentationUrl(self, moduleName: str) -> str:
            return f"{self.documentationBaseUrl}/user_guide/modules/{moduleName.lower()}.html"

        def translate(self, context: str, text: str) -> str:
            from PyQt5 import QtCore

            return QtCore.QCoreApplication.translate(context, text)

        def processEvents(self, *args: Any) -> None:
            from PyQt5 import QtWidgets

            _check_threads("processEvents")
            QtWidgets.QApplication.processEvents(*args)

        def startupEnvironment(self) -> Any:
            """As qSlicerCoreApplication::startupEnvironment: the environment from before the launcher set its
            values (what ``slicer.util.startupEnvironment()`` reads), as a QProcessEnvironment."""
            from PyQt5 import QtCore

            env = QtCore.QProcessEnvironment()
            for key, value in self._runtime["startupEnvironment"].items():
                env.insert(key, value)
            return env

        def mrmlScene(self) -> Any:
            return self._runtime["scene"]

        def layoutManager(self) -> Any:
            return self._layoutManager

        def applicationLogic(self) -> Any:
            return self._runtime["appLogic"]

        def moduleManager(self) -> Any:
            return self._moduleManager

        def mainWindow(self) -> None:
            return None

        def testingEnabled(self) -> bool:
            return self._testingEnabled

        def setTestingEnabled(self, enabled: bool) -> None:
            self._testingEnabled = bool(enabled)

        def settings(self) -> Any:
            from PyQt5 import QtCore

            return QtCore.QSettings()

        userSettings = revisionUserSettings = settings

        def setOverrideCursor(self, cursor: Any) -> None:
            from PyQt5 import QtGui, QtWidgets

            QtWidgets.QApplication.setOverrideCursor(QtGui.QCursor(cursor))

        def restoreOverrideCursor(self) -> None:
            from PyQt5 import QtWidgets

            QtWidgets.QApplication.restoreOverrideCursor()

        def overrideCursor(self) -> Any:
            from PyQt5 import QtWidgets

            return QtWidgets.QApplication.overrideCursor()

        def clipboard(self) -> Any:
            from PyQt5 import QtWidgets

            return QtWidgets.QApplication.clipboard()

        def keyboardModifiers(self) -> Any:
            from PyQt5 import QtWidgets

            return QtWidgets.QApplication.keyboardModifiers()

        def restart(self) -> None:
            """FAKE: counts the request."""
            self.restartRequested += 1

        def exit(self, status: int = 0) -> None:
            """FAKE: does not quit the test process."""

        quit = exit

    class FakeSequencesModule(FakeModule):
        """FAKE of qSlicerSequencesModule (Slicer's ``qSlicerSequencesModule.h``): a new sequence browser node gets
        no toolbar unless the importer calls ``showSequenceBrowser``; that shows the toolbar with the browser active
        when ``autoShowToolBar`` is on (the default) and returns whether it did."""

        def __init__(self, name: str, logic: Any = None, path: str = "") -> None:
            super().__init__(name, logic, path)
            self._toolBarVisible, self._autoShow, self.activeBrowserNode = False, True, None

        def _getVisible(self) -> bool:
            return self._toolBarVisible

        def _setVisible(self, visible: bool) -> None:
            self._toolBarVisible = bool(visible)

        toolBarVisible = pyqtProperty(bool, _getVisible, _setVisible)

        def _getAutoShow(self) -> bool:
            return self._autoShow

        def _setAutoShow(self, on: bool) -> None:
            self._autoShow = bool(on)

        autoShowToolBar = pyqtProperty(bool, _getAutoShow, _setAutoShow)

        def isToolBarVisible(self) -> bool:
            return self._toolBarVisible

        def showSequenceBrowser(self, browserNode: Any) -> bool:
            if browserNode is None or not self._autoShow:
                return False
            self._toolBarVisible, self.activeBrowserNode = True, browserNode
            return True

    return {"FakeApp": FakeApp, "FakeModule": FakeModule, "FakeSliceWidget": FakeSliceWidget,
            "FakeSequencesModule": FakeSequencesModule}


# --------------------------------------------------------------------------------------------------
# scripted modules


class FakeModuleParent:
    """FAKE of qSlicerScriptedLoadableModule as the ``parent`` a ScriptedLoadableModule fills in."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.title = ""
        self.categories: list[str] = []
        self.dependencies: list[str] = []
        self.contributors: list[str] = []
        self.helpText = ""
        self.acknowledgementText = ""
        self.icon = None
        self.hidden = False


def load_module(path: str | os.PathLike[str]) -> types.ModuleType:
    """Import a scripted module file as Slicer does, build its ``<Name>`` class and register it
    as ``slicer.modules.<name>`` (``widgetRepresentation()`` builds its panel on first use)."""
    import slicer

    path = Path(path).resolve()
    name = path.stem
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    parent = FakeModuleParent(str(path))
    instance = getattr(module, name)(parent)
    entry = slicer.qSlicerScriptedLoadableModule(name, parent, instance, module)
    setattr(slicer.modules, name.lower(), entry)
    setattr(slicer.modules, f"{name}Instance", instance)
    setattr(slicer.moduleNames, name, name)
    return module


#: The module shown in the FAKE module panel (``show_module``), as ``{"name": ...}``.
_shown: dict[str, str] = {}


def show_module(name: str) -> Any:
    """Select module ``name`` as Slicer's module panel does (Slicer ``Base/QTGUI/qSlicerModulePanel.cxx``,
    v5.10.0 = v5.12.3: ``setModule`` l. 104-128, ``removeModule`` l. 203-240, ``addModule`` l. 131-200): nothing
    when it is already shown; otherwise the shown module's panel is exited and hidden, then this module's panel is
    built if needed (``widgetRepresentation()``: its ``setup()``), shown, and only then entered. Returns the
    Python ``<Name>Widget``."""
    import slicer

    module = getattr(slicer.modules, name.lower())
    panel = module.widgetRepresentation()
    if _shown.get("name") == module.name:
        return panel.self()
    hide_module()
    panel.setVisible(True)
    panel.enter()
    _shown["name"] = module.name
    return panel.self()


def hide_module() -> None:
    """Leave the shown module as selecting another one does: its panel's ``exit()``, then it is hidden."""
    import slicer

    name = _shown.pop("name", None)
    if name is None:
        return
    panel = getattr(slicer.modules, name.lower()).widgetRepresentation()
    panel.exit()
    panel.setVisible(False)


def make_widget(name: str) -> Any:
    """The Python ``<Name>Widget`` of a module loaded with ``load_module``, shown in the module panel
    (``show_module``): set up when first shown, entered each time it is shown, as in Slicer."""
    return show_module(name)


def _scripted_classes(FakeModule: type, qMRMLWidget: type) -> dict[str, type]:
    from PyQt5.QtCore import pyqtProperty

    class qSlicerScriptedLoadableModuleWidget(qMRMLWidget):
        """FAKE of the C++ panel of a scripted module: holds the Python widget (``self()``).

        As Slicer (v5.10.0 = v5.12.3): the constructor gives it a vertical layout and the Python
        ``<Name>Widget(parent)`` is built and set as ``slicer.modules.<Name>Widget``
        (``qSlicerScriptedLoadableModuleWidget.cxx`` l. 80-85, 170-183); ``setup()``, ``enter()`` and ``exit()``
        call the Python methods of those names (l. 208-229) after the C++ base's: ``isEntered`` is true during
        the Python ``enter()`` and false during ``exit()``; entering an entered panel or leaving one that is not
        entered is a bug Slicer asserts against (``qSlicerAbstractModuleWidget.cxx`` l. 54-67): an error here.
        """

        def __init__(self, widget_class: type, name: str) -> None:
            import qt
            import slicer

            super().__init__()
            self.setLayout(qt.QVBoxLayout())
            self._entered = False
            self._python = widget_class(self)
            setattr(slicer.modules, f"{name}Widget", self._python)

        def self(self) -> Any:
            return self._python

        def setup(self) -> None:
            self._python.setup()

        def enter(self) -> None:
            """As Slicer does when the module is shown: ``isEntered`` becomes true, then the Python ``enter()``."""
            if self._entered:
                raise RuntimeError("enter() on a module panel that is entered (Slicer asserts: "
                                   "qSlicerAbstractModuleWidget.cxx l. 57)")
            self._entered = True
            if hasattr(self._python, "enter"):
                self._python.enter()

        def exit(self) -> None:
            """As Slicer does when another module is shown: ``isEntered`` becomes false, then the Python ``exit()``."""
            if not self._entered:
                raise RuntimeError("exit() on a module panel that is not entered (Slicer asserts: "
                                   "qSlicerAbstractModuleWidget.cxx l. 65)")
            self._entered = False
            if hasattr(self._python, "exit"):
                self._python.exit()

        def _isEntered(self) -> bool:
            return self._entered

        isEntered = pyqtProperty(bool, _isEntered)

    class qSlicerScriptedLoadableModule(FakeModule):
        """FAKE of qSlicerScriptedLoadableModule: the module's Python instance and lazy panel."""

        def __init__(self, name: str, parent: FakeModuleParent, instance: Any, module: types.ModuleType) -> None:
            super().__init__(name, None, parent.path)
            self.setObjectName(name)
            self._title = parent.title or name
            self._instance, self._pymodule, self._panel = instance, module, None

        def widgetRepresentation(self) -> Any:
            """The panel, built on first use (Slicer ``qSlicerAbstractCoreModule.cxx`` l. 233-243)."""
            if self._panel is None:
                self._panel = self.createNewWidgetRepresentation()
            return self._panel

        def createNewWidgetRepresentation(self) -> Any:
            """A new panel, set up, then given the scene; not entered (``qSlicerAbstractCoreModule.cxx``
            l. 246-281: ``setModule`` calls ``setup()``, ``qSlicerAbstractModuleRepresentation.cxx`` l. 79-85)."""
            import slicer

            panel = qSlicerScriptedLoadableModuleWidget(getattr(self._pymodule, f"{self.name}Widget"), self.name)
            panel.setObjectName(f"{self.name}ModuleWidget")
            panel.setup()
            panel.setMRMLScene(slicer.mrmlScene)
            return panel

        def logic(self) -> Any:
            panel = self._panel
            return getattr(panel.self(), "logic", None) if panel is not None else None

    return {"qSlicerScriptedLoadableModuleWidget": qSlicerScriptedLoadableModuleWidget,
            "qSlicerScriptedLoadableModule": qSlicerScriptedLoadableModule}


# --------------------------------------------------------------------------------------------------
# install


def _load_shared(name: str, shared: Path) -> types.ModuleType:
    """Load ``slicer/<name>(.py|/)`` from the shared folder as ``slicer.<name>`` (never via sys.path,
    which would make slicer-core's ``extend_path`` import every file there)."""
    import slicer

    base = shared / "slicer" / name
    if base.is_dir():
        spec = importlib.util.spec_from_file_location(f"slicer.{name}", base / "__init__.py",
                                                      submodule_search_locations=[str(base)])
    else:
        spec = importlib.util.spec_from_file_location(f"slicer.{name}", base.with_suffix(".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"slicer.{name}"] = module
    setattr(slicer, name, module)
    spec.loader.exec_module(module)
    return module


def _base_logic_module() -> types.ModuleType:
    """``SlicerBaseLogicPython`` (imported by Slicer's ``slicer/logic.py``): slicer-core's classes."""
    import slicer

    module = types.ModuleType("SlicerBaseLogicPython", "slicer-core's Slicer base logic classes")
    for name in dir(slicer):
        if name.startswith(("vtkSlicer", "vtkDataIOManagerLogic", "vtkMRMLRemoteIOLogic")):
            setattr(module, name, getattr(slicer, name))
    module.__all__ = [n for n in dir(module) if n.startswith("vtk")]
    return module


def _setup_scene(runtime: dict[str, Any], FakeSliceWidget: type) -> None:
    import slicer
    import vtk

    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetHomeDirectory(runtime["tempdir"])
    appLogic.SetTemporaryPath(runtime["tempdir"])
    appLogic.SetMRMLScene(scene)
    colorLogic = slicer.vtkSlicerColorLogic()
    colorLogic.SetMRMLApplicationLogic(appLogic)
    colorLogic.SetMRMLScene(scene)
    if hasattr(appLogic, "SetColorLogic"):
        appLogic.SetColorLogic(colorLogic)
    layoutNode = slicer.vtkMRMLLayoutNode()
    layoutNode.SetSingletonTag("vtkMRMLLayoutNode")  # as Slicer does: it survives scene.Clear(0)
    scene.AddNode(layoutNode)
    layoutLogic = slicer.vtkMRMLLayoutLogic()
    layoutLogic.SetMRMLScene(scene)
    layoutNode.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    sliceLogics = vtk.vtkCollection()
    widgets = {}
    for name in ("Red", "Yellow", "Green"):
        node = scene.GetNodeByID(f"vtkMRMLSliceNode{name}")
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(appLogic)
        logic.SetMRMLScene(scene)
        logic.SetSliceNode(node)
        sliceLogics.AddItem(logic)
        widgets[name] = FakeSliceWidget(logic)
    appLogic.SetSliceLogics(sliceLogics)
    runtime.update(scene=scene, appLogic=appLogic, colorLogic=colorLogic, layoutNode=layoutNode,
                   layoutLogic=layoutLogic, sliceLogics=sliceLogics, sliceWidgets=widgets)


def _module_logics(runtime: dict[str, Any]) -> dict[str, Any]:
    """Real logic objects for the C++ modules a scripted module commonly calls."""
    import slicer

    scene, appLogic = runtime["scene"], runtime["appLogic"]
    logics: dict[str, Any] = {"colors": runtime["colorLogic"]}
    for key, cls in (("markups", "vtkSlicerMarkupsLogic"), ("segmentations", "vtkSlicerSegmentationsModuleLogic"),
                     ("volumes", "vtkSlicerVolumesLogic"), ("models", "vtkSlicerModelsLogic"),
                     ("sequences", "vtkSlicerSequencesLogic"), ("tables", "vtkSlicerTablesLogic"),
                     ("transforms", "vtkSlicerTransformLogic")):
        if not hasattr(slicer, cls):
            continue
        logic = getattr(slicer, cls)()
        if hasattr(logic, "SetMRMLApplicationLogic"):
            logic.SetMRMLApplicationLogic(appLogic)
        logic.SetMRMLScene(scene)
        logics[key] = logic
    return logics


#: Python threads other than the main one seen while the GUI processed events (PythonQt keeps the GIL while Qt
#: processes events, so in Slicer such a thread would advance only while Python code runs): (where, thread names).
thread_violations: list[tuple[str, list[str]]] = []


def _check_threads(where: str) -> None:
    import threading

    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        thread_violations.append((where, others))


def play_launcher(environ: Any = None, blocked: tuple[str, ...] = ()) -> dict[str, str]:
    """Give this process the environment Slicer's launcher gives every process it starts, and return the one from
    before (``startupEnvironment``). From Slicer's ``SuperBuild/External_python.cmake`` and
    ``CMake/SlicerBlockCTKAppLauncherSettings.cmake``: ``PYTHONHOME`` = Slicer's Python, ``PYTHONNOUSERSITE=1``,
    ``PYTHONPATH`` = Slicer's own ``lib/Python`` folders (here: this interpreter's standard library and
    site-packages), and the library path. A child started with ``os.environ`` as it is then loads this Python's
    standard library and packages, as a child of Slicer loads Slicer's: another interpreter fails at start.
    ``blocked``: packages a child that keeps this environment refuses (``launcher_site/sitecustomize.py``), as a
    stock Slicer's own Python does not have them."""
    import sysconfig

    environ = os.environ if environ is None else environ
    startup = dict(environ)
    paths = sysconfig.get_paths()
    python_path = [paths["stdlib"], paths["platstdlib"], paths["purelib"], paths["platlib"]]
    environ["PYTHONHOME"] = sys.base_prefix
    environ["PYTHONNOUSERSITE"] = "1"
    site = str(Path(__file__).resolve().parent / "launcher_site")
    environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([site, *python_path,
                                                           *filter(None, [startup.get("PYTHONPATH")])]))
    environ["DA_SLICER_BLOCKED_IMPORTS"] = ",".join(blocked)
    library = "DYLD_LIBRARY_PATH" if sys.platform == "darwin" else "LD_LIBRARY_PATH"
    environ[library] = os.pathsep.join(filter(None, [os.path.join(sys.base_prefix, "lib"), startup.get(library)]))
    return startup


def install(block_imports: tuple[str, ...] = ()) -> types.ModuleType:
    """Make this process look like the Python of Slicer ``SLICER_VERSION`` (idempotent); returns ``slicer``.

    ``block_imports``: top-level packages the process must refuse (an ImportError on import),
    e.g. ``("torch", "monai", "skimage", "matplotlib")``; they must not be imported already.
    """
    global blocker, core_util
    if block_imports:
        loaded = [n for n in block_imports if n in sys.modules]
        if loaded:
            raise RuntimeError(f"cannot block already imported packages: {loaded}")
        if blocker is None:
            blocker = ImportBlocker(tuple(block_imports))
            sys.meta_path.insert(0, blocker)
        else:
            blocker.names.update(block_imports)
    if _installed:
        return _installed["slicer"]
    reason = missing_requirements()
    if reason:
        raise RuntimeError(reason)
    shared = slicer_layer()
    runtime_dir = str(Path(__file__).resolve().parent)
    if runtime_dir not in sys.path:
        sys.path.insert(0, runtime_dir)

    import qt  # our PythonQt-like qt (this folder)
    from PyQt5 import QtCore, QtWidgets

    sys.excepthook = _slot_excepthook

    tempdir = tempfile.mkdtemp(prefix="slicer-runtime-")
    QtCore.QCoreApplication.setOrganizationName("slicer-runtime-tests")
    QtCore.QCoreApplication.setApplicationName("Slicer")
    QtCore.QSettings.setDefaultFormat(QtCore.QSettings.IniFormat)
    QtCore.QSettings.setPath(QtCore.QSettings.IniFormat, QtCore.QSettings.UserScope, tempdir)
    qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication([sys.argv[0] if sys.argv else "slicer"])

    import ctk  # noqa: F401  (the fakes, this folder)
    import qmrml
    import slicer  # slicer-core's package: the real MRML and logic classes

    core_util = sys.modules.get("slicer.util")
    slicer.modules = types.ModuleType("slicer.modules", "FAKE registry of Slicer modules")
    slicer.moduleNames = types.ModuleType("slicer.moduleNames", "FAKE registry of Slicer module names")
    sys.modules["slicer.modules"], sys.modules["slicer.moduleNames"] = slicer.modules, slicer.moduleNames
    for name, cls in qmrml.FAKE_WIDGETS.items():
        setattr(slicer, name, cls)
    classes = _qt_classes()
    for name, cls in _scripted_classes(classes["FakeModule"], qmrml.qMRMLWidget).items():
        setattr(slicer, name, cls)

    runtime: dict[str, Any] = {"tempdir": tempdir, "qapp": qapp, "startupEnvironment": play_launcher(
        blocked=tuple(sorted(blocker.names)) if blocker else ())}
    _setup_scene(runtime, classes["FakeSliceWidget"])
    slicer.mrmlScene = runtime["scene"]
    slicer.app = classes["FakeApp"](runtime)

    sys.modules.setdefault("SlicerBaseLogicPython", _base_logic_module())
    # Slicer's VTK-wrapped MRML library under its name inside Slicer (Slicer's own tests import it)
    sys.modules.setdefault("MRMLCorePython", importlib.import_module("slicer_core.MRMLCore"))
    for name in SHARED_MODULES:
        _load_shared(name, shared)
    for name, function in dialogs.functions().items():
        setattr(slicer.util, name, function)
    qt.modal_hook = dialogs.modal
    slicer.util.pip_install = _pip_install
    slicer.util.pip_uninstall = _pip_uninstall
    slicer.util.mainWindow = lambda: None
    slicer.util.selectModule = lambda module: show_module(module if isinstance(module, str) else module.name)

    FakeModule = classes["FakeModule"]
    for key, logic in _module_logics(runtime).items():
        module = (classes["FakeSequencesModule"] if key == "sequences" else FakeModule)(key.capitalize(), logic)
        module.setObjectName(key.capitalize())
        setattr(slicer.modules, key, module)
        setattr(slicer.moduleNames, key.capitalize(), key.capitalize())

    _installed.update(runtime, slicer=slicer, qt=qt)
    return slicer


def runtime_objects() -> dict[str, Any]:
    """The objects ``install()`` made (scene, appLogic, layoutNode, layoutLogic, sliceWidgets...)."""
    return dict(_installed)
