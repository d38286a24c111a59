"""PythonQt's habits over PyQt5, installed on import: the base of the runtime's ``qt`` and ``ctk`` fakes.

Importing this module patches ``QObject`` so that Qt properties are attributes, ``obj.connect('signal(args)',
slot)`` / ``obj.disconnect(...)`` take C++ signatures, ``className()`` exists and every wrapped object is true
(``qt.py`` lists the habits). ``pyqt_native()`` switches the property habit off for code that expects plain
PyQt5. Both ``qt`` and ``ctk`` import it, so neither needs the other at import time (no import cycle).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PyQt5 import QtCore, QtGui, QtWidgets  # noqa: E402

_state = {"habits": True}
_orig_getattribute = QtCore.QObject.__getattribute__
_orig_setattr = QtCore.QObject.__setattr__
_metaObject = QtCore.QObject.metaObject


@contextlib.contextmanager
def pyqt_native() -> Iterator[None]:
    """Within this block QObjects behave like plain PyQt5 (no property-as-attribute habit)."""
    previous = _state["habits"]
    _state["habits"] = False
    try:
        yield
    finally:
        _state["habits"] = previous


def _pythonqt_getattribute(self: QtCore.QObject, name: str) -> Any:
    """PythonQt lookup: a Qt property of that name wins over methods; ``name`` is ``objectName``."""
    if _state["habits"] and name[0] != "_":
        meta = _metaObject(self)
        index = meta.indexOfProperty(name)
        if index >= 0:
            prop = meta.property(index)
            value = prop.read(self)
            if prop.typeName() == "QStringList" and isinstance(value, list):
                return tuple(value)
            return value
        if name == "name":
            return QtCore.QObject.objectName(self)
    return _orig_getattribute(self, name)


def _pythonqt_setattr(self: QtCore.QObject, name: str, value: Any) -> None:
    """PythonQt assignment: writing a Qt property calls its WRITE function."""
    if _state["habits"] and name[0] != "_":
        meta = _metaObject(self)
        index = meta.indexOfProperty(name)
        if index >= 0:
            prop = meta.property(index)
            if not prop.isWritable():
                raise AttributeError(f"Qt property '{name}' of {meta.className()} is read-only")
            if isinstance(value, tuple) and prop.typeName() == "QStringList":
                value = list(value)
            if not prop.write(self, value):
                # e.g. a Python subclass of QColor: PythonQt converts it; call the C++ setter instead
                setter = _orig_getattribute(self, "set" + name[0].upper() + name[1:])
                setter(value)
            return
        if name == "name":
            QtCore.QObject.setObjectName(self, value)
            return
    _orig_setattr(self, name, value)


# C++ argument types of signal signatures -> the Python types PyQt5 indexes overloads with.
_CPP_TYPES: dict[str, Any] = {
    "double": float, "float": float, "qreal": float,
    "int": int, "uint": int, "unsignedint": int, "long": int, "qlonglong": int, "qint64": int,
    "bool": bool, "QString": str, "QStringList": "QStringList", "QVariant": "QVariant",
    "PyQt_PyObject": object,
}


def _split_signature(signature: str) -> tuple[str, list[str]]:
    """``'valueChanged(const QString &)'`` -> ``('valueChanged', ['QString'])``."""
    match = re.fullmatch(r"\s*(\w+)\s*(?:\((.*)\))?\s*", signature)
    if not match:
        raise ValueError(f"not a Qt signal signature: {signature!r}")
    name, args = match.group(1), (match.group(2) or "").strip()
    types = []
    for arg in args.split(",") if args else []:
        arg = re.sub(r"\bconst\b|&", "", arg).replace(" ", "")
        types.append(arg)
    return name, types


def _python_type(cpp: str) -> Any:
    if cpp.startswith("vtk") and cpp.endswith("*"):
        return object
    if cpp in _CPP_TYPES:
        return _CPP_TYPES[cpp]
    for module in (QtCore, QtGui, QtWidgets):
        if hasattr(module, cpp):
            return getattr(module, cpp)
    return cpp.rstrip("*")


def _bound_signal(obj: QtCore.QObject, signature: str) -> tuple[Any, int]:
    name, cpp_types = _split_signature(signature)
    with pyqt_native():
        signal = getattr(obj, name, None)
    if not isinstance(signal, QtCore.pyqtBoundSignal):
        raise AttributeError(f"{type(obj).__name__} has no signal {signature!r}")
    if cpp_types:
        key = tuple(_python_type(t) for t in cpp_types)
        try:
            signal = signal[key[0] if len(key) == 1 else key]
        except (KeyError, TypeError):
            signal = signal[",".join(cpp_types)]  # e.g. a C++ type PyQt only knows by name
    return signal, len(cpp_types)


def _capacity(slot: Callable) -> int | None:
    """How many positional arguments ``slot`` accepts (None: any number)."""
    try:
        params = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return None
    count = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def _pythonqt_connect(self: QtCore.QObject, signature: str, slot: Callable) -> bool:
    """PythonQt's ``obj.connect('signal(args)', callable)``."""
    signal, nargs = _bound_signal(self, signature)
    capacity = _capacity(slot)

    def call(*args: Any) -> Any:
        args = args[:nargs]
        return slot(*(args if capacity is None else args[:capacity]))

    signal.connect(call)
    registry = self.__dict__.setdefault("_pythonqt_connections", {})
    registry.setdefault((re.sub(r"\s", "", signature), slot), []).append((signal, call))
    return True


def _pythonqt_disconnect(self: QtCore.QObject, *args: Any) -> bool:
    """PythonQt's ``obj.disconnect('signal(args)', callable)``; other forms go to PyQt5."""
    if not args or not isinstance(args[0], str):
        return _orig_disconnect(*args)
    signature, slot = args[0], args[1] if len(args) > 1 else None
    registry = self.__dict__.get("_pythonqt_connections", {})
    key_sig = re.sub(r"\s", "", signature)
    found = False
    for key in [k for k in registry if k[0] == key_sig and (slot is None or k[1] == slot)]:
        for signal, call in registry.pop(key):
            with contextlib.suppress(TypeError, RuntimeError):
                signal.disconnect(call)
            found = True
    return found


def _className(self: QtCore.QObject) -> str:
    """PythonQt's ``obj.className()``."""
    return _metaObject(self).className()


_orig_disconnect = QtCore.QObject.disconnect
QtCore.QObject.__getattribute__ = _pythonqt_getattribute
QtCore.QObject.__setattr__ = _pythonqt_setattr
QtCore.QObject.connect = _pythonqt_connect
QtCore.QObject.disconnect = _pythonqt_disconnect
QtCore.QObject.className = _className


def _truthy(self: QtCore.QObject) -> bool:
    """PythonQt: a wrapped object is true while it exists. PyQt5 gives QComboBox (and other classes with
    ``__len__``) the truth of their item count, so an empty combo box would be false, and Slicer's
    ``findChildren``/``childWidgetVariables`` (``if not p: continue``) would skip it."""
    return True


for _cls in (QtCore.QObject, QtWidgets.QComboBox, QtWidgets.QListWidget, QtWidgets.QTableWidget,
             QtWidgets.QTreeWidget, QtWidgets.QTabWidget, QtWidgets.QStackedWidget, QtWidgets.QToolBox):
    _cls.__bool__ = _truthy
