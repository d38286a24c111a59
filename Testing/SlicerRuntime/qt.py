"""FAKE of Slicer's PythonQt ``qt`` module: PyQt5 with the PythonQt habits Slicer code relies on.

Slicer wraps Qt with PythonQt; outside Slicer this module stands PyQt5 in for it and (through ``pythonqt.py``) patches
``QObject`` so that code written for PythonQt runs unchanged:

* Qt properties are attributes and win over same-named methods (``label.text``,
  ``button.enabled = False``, ``spin.value``, ``combo.currentText``); read-only properties raise
  ``AttributeError`` when written; ``QStringList`` properties read as tuples; ``name`` is
  ``objectName``.
* ``obj.connect('valueChanged(double)', slot)`` / ``obj.disconnect(...)`` with C++ signatures;
  the slot gets as many signal arguments as it accepts (``clicked(bool)`` -> ``def onApply(self)``).
  ``vtkFoo*`` arguments map to Python ``object`` signals.
* ``QUiLoader().load(qfile)`` loads a Designer ``.ui`` through ``PyQt5.uic`` with ``ctk*`` custom
  widgets taken from the ``ctk`` fake and ``qMRML*`` ones from ``slicer`` (see ``slicer_runtime``).
* ``QFileDialog``'s static functions return what the C++ returns (a string; a tuple for a list), as
  PythonQt does, not PyQt5's ``(path, filter)`` tuples.
* Modal dialogs (``exec_()``, the static file dialogs, ``show()``/``open()`` of a modal dialog) go to
  ``modal_hook`` when one is set (``slicer_runtime`` sets its dialog recorder): recorded and answered
  instead of blocking the test in a nested event loop.

The property habit is switched off while PyQt5's own uic code runs (``pyqt_native()``), since uic
calls methods such as ``font()`` that are also property names.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PyQt5 import QtCore, QtGui, QtWidgets  # noqa: E402,F401  (qt.QtGui, as before)
from PyQt5.QtCore import *  # noqa: E402,F403
from PyQt5.QtGui import *  # noqa: E402,F403
from PyQt5.QtWidgets import *  # noqa: E402,F403
from pythonqt import pyqt_native  # noqa: E402  (PythonQt's habits, installed on import)

__all__ = [name for name in dir() if name.startswith("Q") or name == "Qt"] + ["QUiLoader", "pyqt_native"]

#: Where modal dialogs go instead of Qt's blocking event loop: ``hook(kind, text, details) -> answer``
#: (``slicer_runtime`` sets its dialog recorder); None: Qt's own dialogs.
modal_hook: Callable[[str, str, dict[str, Any]], Any] | None = None


# --------------------------------------------------------------------------------------------------
# .ui loading


def _custom_widget_module(class_name: str) -> str | None:
    if class_name.startswith("ctk"):
        return "ctk.h"
    if class_name.startswith(("qMRML", "qSlicer")):
        return "slicer.h"
    return None


def prepare_ui(xml: str) -> str:
    """Rewrite a Slicer .ui for PyQt5.uic: custom widget headers point at the fakes' modules
    (``ctk``/``slicer``) and ``vtkFoo*`` connection arguments become ``PyQt_PyObject``."""
    def header(match: re.Match) -> str:
        block = match.group(0)
        cls = re.search(r"<class>\s*(\w+)\s*</class>", block)
        module = _custom_widget_module(cls.group(1)) if cls else None
        if module is None:
            return block
        if "<header" in block:
            return re.sub(r"<header[^>]*>.*?</header>", f"<header>{module}</header>", block, flags=re.S)
        return block.replace("</customwidget>", f"<header>{module}</header></customwidget>")

    xml = re.sub(r"<customwidget>.*?</customwidget>", header, xml, flags=re.S)
    return re.sub(r"\bvtk\w+\s*\*", "PyQt_PyObject", xml)


class QUiLoader(QtCore.QObject):
    """FAKE of ``QUiLoader`` (QtUiTools), built on ``PyQt5.uic.loadUi``.

    Like Qt's loader (and unlike ``uic.loadUi``) children are not set as attributes of the
    top-level widget: reach them with ``slicer.util.childWidgetVariables`` or ``findChild``.
    """

    def __init__(self, parent: QtCore.QObject | None = None) -> None:
        super().__init__(parent)
        self._workingDirectory = QtCore.QDir.current()

    def setWorkingDirectory(self, directory: QtCore.QDir) -> None:
        self._workingDirectory = QtCore.QDir(directory)

    def workingDirectory(self) -> QtCore.QDir:
        return self._workingDirectory

    def load(self, device: QtCore.QIODevice | str, parentWidget: QtWidgets.QWidget | None = None) -> QtWidgets.QWidget:
        import ctk  # noqa: F401  (uic imports the custom widget modules by header name)
        import slicer  # noqa: F401
        from PyQt5 import uic

        if isinstance(device, str):
            with open(device, encoding="utf-8") as f:
                xml = f.read()
        else:
            with pyqt_native():
                if not device.isOpen():
                    device.open(QtCore.QIODevice.ReadOnly)
                xml = bytes(device.readAll()).decode("utf-8")
        with pyqt_native():
            widget = uic.loadUi(io.StringIO(prepare_ui(xml)))
            if parentWidget is not None:
                widget.setParent(parentWidget)
        for key, value in list(vars(widget).items()):
            if isinstance(value, QtCore.QObject) and not key.startswith("_"):
                delattr(widget, key)
        return widget


# --------------------------------------------------------------------------------------------------
# modal dialogs


def _static_file_dialog(kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    caption = args[1] if len(args) > 1 else kwargs.get("caption", "")
    if modal_hook is not None:
        answer = modal_hook(kind, str(caption), {"args": args[2:], **kwargs})
    else:
        answer = getattr(QtWidgets.QFileDialog, kind)(*args, **kwargs)
        if kind != "getExistingDirectory":
            answer = answer[0]  # PyQt5's (result, selected filter)
    if kind == "getOpenFileNames":
        return tuple(answer or ())
    return str(answer or "")


class QFileDialog(QtWidgets.QFileDialog):
    """PythonQt's ``QFileDialog``: the static functions return the C++ ``QString`` / ``QStringList`` (a str / a
    tuple), not PyQt5's ``(result, filter)`` tuple. From PythonQt's generated wrappers (MeVisLab/pythonqt,
    the base of CTK's PythonQt; ``generated_cpp_515/com_trolltech_qt_gui/com_trolltech_qt_gui1.h`` l. 2063-2067)
    and ``src/PythonQtConversion.cpp`` l. 1268-1280 (a QStringList becomes a tuple)."""

    @staticmethod
    def getOpenFileName(*args: Any, **kwargs: Any) -> str:  # noqa: N802 (Qt name)
        return _static_file_dialog("getOpenFileName", args, kwargs)

    @staticmethod
    def getOpenFileNames(*args: Any, **kwargs: Any) -> tuple[str, ...]:  # noqa: N802
        return _static_file_dialog("getOpenFileNames", args, kwargs)

    @staticmethod
    def getSaveFileName(*args: Any, **kwargs: Any) -> str:  # noqa: N802
        return _static_file_dialog("getSaveFileName", args, kwargs)

    @staticmethod
    def getExistingDirectory(*args: Any, **kwargs: Any) -> str:  # noqa: N802
        return _static_file_dialog("getExistingDirectory", args, kwargs)


def _dialog_text(dialog: QtWidgets.QDialog) -> str:
    with pyqt_native():
        if isinstance(dialog, QtWidgets.QMessageBox):
            return dialog.text()
        return dialog.windowTitle()


def _patch_modal(cls: type, shows: bool) -> None:
    """``exec_()``/``exec()`` (always modal) and, with ``shows``, ``show()``/``open()`` of a modal dialog go
    to ``modal_hook``."""
    original_exec, original_show, original_open = cls.exec_, cls.show, cls.open

    def exec_(self: QtWidgets.QDialog) -> Any:
        if modal_hook is None:
            return original_exec(self)
        with pyqt_native():
            title = self.windowTitle()
        return modal_hook("exec", _dialog_text(self), {"dialog": self, "windowTitle": title})

    def show(self: QtWidgets.QDialog) -> None:
        with pyqt_native():
            modal = self.isModal() or self.windowModality() != QtCore.Qt.NonModal
        if modal_hook is not None and modal:
            modal_hook("modalShow", _dialog_text(self), {"dialog": self})
        original_show(self)

    def open(self: QtWidgets.QDialog) -> None:  # always window-modal
        if modal_hook is not None:
            modal_hook("modalShow", _dialog_text(self), {"dialog": self})
        original_open(self)

    cls.exec_ = cls.exec = exec_
    if shows:
        cls.show, cls.open = show, open


_patch_modal(QtWidgets.QDialog, shows=True)
_patch_modal(QtWidgets.QMessageBox, shows=False)  # its show() is QDialog's
