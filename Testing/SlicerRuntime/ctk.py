"""FAKES of the CTK C++ widgets (Slicer's PythonQt ``ctk`` module), for tests outside Slicer.

Each class stands in for the C++ widget of the same name with the Qt properties, signals and slots
of its header (``reference-headers/`` of the shared slicer-python folder) that a test needs.
They hold their state in Python and draw nothing useful. Widgets the module does not use are
placeholders that refuse to be built (``NotFakedError``), so a test needing them fails loudly.
"""

from __future__ import annotations

from typing import Any

import qt
from PyQt5 import QtCore, QtGui, QtWidgets
from PyQt5.QtCore import pyqtProperty, pyqtSignal, pyqtSlot


class NotFakedError(NotImplementedError):
    """Raised when a test builds a CTK/qMRML widget this runtime does not fake."""


class _NotFaked(QtWidgets.QWidget):
    """Placeholder: exists so ``type(w) in (ctk.X, ...)`` checks work, but cannot be built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotFakedError(f"{type(self).__name__} is not faked by the test runtime (the module does not use it)")


def _round(value: float, decimals: int) -> float:
    return float(round(value, decimals)) if abs(value) != float("inf") else value


class ctkCollapsibleButton(QtWidgets.QAbstractButton):
    """FAKE of ctkCollapsibleButton: a checkable button whose unchecked state collapses its contents
    (child widgets are hidden while collapsed, as CTK does)."""

    contentsCollapsed = pyqtSignal(bool)

    def __init__(self, *args: Any) -> None:
        text = args[0] if args and isinstance(args[0], str) else ""
        parent = args[-1] if args and isinstance(args[-1], QtWidgets.QWidget) else None
        super().__init__(parent)
        self._collapsedHeight = 14
        self._flat = False
        self._contentsLineWidth = 1
        self._contentsMidLineWidth = 0
        self._contentsFrameShape = QtWidgets.QFrame.NoFrame
        self._contentsFrameShadow = QtWidgets.QFrame.Plain
        self._buttonTextAlignment = int(QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter)
        self._indicatorAlignment = int(QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter)
        self._hiddenByCollapse: list[QtWidgets.QWidget] = []
        QtWidgets.QAbstractButton.setCheckable(self, True)
        QtWidgets.QAbstractButton.setChecked(self, True)
        QtWidgets.QAbstractButton.setText(self, text)
        self.toggled.connect(self._onToggled)

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:  # noqa: N802 (Qt name)
        painter = QtGui.QPainter(self)
        painter.drawText(4, 12, ("+ " if self.collapsed else "- ") + QtWidgets.QAbstractButton.text(self))

    def sizeHint(self) -> QtCore.QSize:  # noqa: N802
        return QtCore.QSize(100, 20)

    def _onToggled(self, checked: bool) -> None:
        self.collapse(not checked)

    @pyqtSlot(bool)
    def collapse(self, collapsed: bool) -> None:
        if collapsed:
            children = self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly)
            self._hiddenByCollapse = [w for w in children if not w.isHidden()]
            for w in self._hiddenByCollapse:
                w.hide()
        else:
            for w in self._hiddenByCollapse:
                w.show()
            self._hiddenByCollapse = []
        self.contentsCollapsed.emit(collapsed)

    def isCollapsed(self) -> bool:
        return not QtWidgets.QAbstractButton.isChecked(self)

    def setCollapsed(self, collapsed: bool) -> None:
        QtWidgets.QAbstractButton.setChecked(self, not collapsed)

    collapsed = pyqtProperty(bool, isCollapsed, setCollapsed, notify=contentsCollapsed)

    def _getCollapsedHeight(self) -> int:
        return self._collapsedHeight

    def setCollapsedHeight(self, height: int) -> None:
        self._collapsedHeight = int(height)

    collapsedHeight = pyqtProperty(int, _getCollapsedHeight, setCollapsedHeight)

    def isFlat(self) -> bool:
        return self._flat

    def setFlat(self, flat: bool) -> None:
        self._flat = bool(flat)

    flat = pyqtProperty(bool, isFlat, setFlat)

    def _getShape(self) -> int:
        return int(self._contentsFrameShape)

    def setContentsFrameShape(self, shape: int) -> None:
        self._contentsFrameShape = shape

    contentsFrameShape = pyqtProperty(int, _getShape, setContentsFrameShape)

    def _getShadow(self) -> int:
        return int(self._contentsFrameShadow)

    def setContentsFrameShadow(self, shadow: int) -> None:
        self._contentsFrameShadow = shadow

    contentsFrameShadow = pyqtProperty(int, _getShadow, setContentsFrameShadow)

    def _getLineWidth(self) -> int:
        return self._contentsLineWidth

    def setContentsLineWidth(self, width: int) -> None:
        self._contentsLineWidth = int(width)

    contentsLineWidth = pyqtProperty(int, _getLineWidth, setContentsLineWidth)

    def _getMidLineWidth(self) -> int:
        return self._contentsMidLineWidth

    def setContentsMidLineWidth(self, width: int) -> None:
        self._contentsMidLineWidth = int(width)

    contentsMidLineWidth = pyqtProperty(int, _getMidLineWidth, setContentsMidLineWidth)

    def _getTextAlignment(self) -> int:
        return self._buttonTextAlignment

    def setButtonTextAlignment(self, alignment: int) -> None:
        self._buttonTextAlignment = int(alignment)

    buttonTextAlignment = pyqtProperty(int, _getTextAlignment, setButtonTextAlignment)

    def _getIndicatorAlignment(self) -> int:
        return self._indicatorAlignment

    def setIndicatorAlignment(self, alignment: int) -> None:
        self._indicatorAlignment = int(alignment)

    indicatorAlignment = pyqtProperty(int, _getIndicatorAlignment, setIndicatorAlignment)


class ctkSliderWidget(QtWidgets.QWidget):
    """FAKE of ctkSliderWidget (a slider plus spin box editing one double).

    As in CTK: the value is clamped to [minimum, maximum] and rounded to ``decimals``;
    ``valueChanged(double)`` and ``valueIsChanging(double)`` fire when it changes.
    ``tracking`` only matters for dragging the slider, which a test cannot do here.
    """

    valueChanged = pyqtSignal(float)
    valueIsChanging = pyqtSignal(float)
    decimalsChanged = pyqtSignal(int)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._value, self._minimum, self._maximum = 0.0, 0.0, 99.0
        self._singleStep, self._pageStep, self._decimals = 1.0, 10.0, 2
        self._prefix = self._suffix = ""
        self._tickInterval = 0.0
        self._tracking = self._spinBoxVisible = True
        self._popupSlider = self._invertedAppearance = self._invertedControls = False

    def _getValue(self) -> float:
        return self._value

    @pyqtSlot(float)
    def setValue(self, value: float) -> None:
        value = _round(min(max(float(value), self._minimum), self._maximum), self._decimals)
        if value != self._value:
            self._value = value
            self.valueIsChanging.emit(value)
            self.valueChanged.emit(value)

    value = pyqtProperty(float, _getValue, setValue)

    def _getMinimum(self) -> float:
        return self._minimum

    def setMinimum(self, minimum: float) -> None:
        self._minimum = float(minimum)
        self._maximum = max(self._maximum, self._minimum)
        self.setValue(self._value)

    minimum = pyqtProperty(float, _getMinimum, setMinimum)

    def _getMaximum(self) -> float:
        return self._maximum

    def setMaximum(self, maximum: float) -> None:
        self._maximum = float(maximum)
        self._minimum = min(self._minimum, self._maximum)
        self.setValue(self._value)

    maximum = pyqtProperty(float, _getMaximum, setMaximum)

    def setRange(self, minimum: float, maximum: float) -> None:
        self._minimum, self._maximum = float(minimum), max(float(minimum), float(maximum))
        self.setValue(self._value)

    def _getSingleStep(self) -> float:
        return self._singleStep

    def setSingleStep(self, step: float) -> None:
        self._singleStep = float(step)

    singleStep = pyqtProperty(float, _getSingleStep, setSingleStep)

    def _getPageStep(self) -> float:
        return self._pageStep

    def setPageStep(self, step: float) -> None:
        self._pageStep = float(step)

    pageStep = pyqtProperty(float, _getPageStep, setPageStep)

    def _getDecimals(self) -> int:
        return self._decimals

    @pyqtSlot(int)
    def setDecimals(self, decimals: int) -> None:
        if int(decimals) != self._decimals:
            self._decimals = int(decimals)
            self.decimalsChanged.emit(self._decimals)
            self.setValue(self._value)

    decimals = pyqtProperty(int, _getDecimals, setDecimals, notify=decimalsChanged)

    def _getPrefix(self) -> str:
        return self._prefix

    def setPrefix(self, prefix: str) -> None:
        self._prefix = str(prefix)

    prefix = pyqtProperty(str, _getPrefix, setPrefix)

    def _getSuffix(self) -> str:
        return self._suffix

    def setSuffix(self, suffix: str) -> None:
        self._suffix = str(suffix)

    suffix = pyqtProperty(str, _getSuffix, setSuffix)

    def _getTickInterval(self) -> float:
        return self._tickInterval

    def setTickInterval(self, tick: float) -> None:
        self._tickInterval = float(tick)

    tickInterval = pyqtProperty(float, _getTickInterval, setTickInterval)

    def hasTracking(self) -> bool:
        return self._tracking

    def setTracking(self, enable: bool) -> None:
        self._tracking = bool(enable)

    tracking = pyqtProperty(bool, hasTracking, setTracking)

    def isSpinBoxVisible(self) -> bool:
        return self._spinBoxVisible

    @pyqtSlot(bool)
    def setSpinBoxVisible(self, visible: bool) -> None:
        self._spinBoxVisible = bool(visible)

    spinBoxVisible = pyqtProperty(bool, isSpinBoxVisible, setSpinBoxVisible)

    def hasPopupSlider(self) -> bool:
        return self._popupSlider

    def setPopupSlider(self, popup: bool) -> None:
        self._popupSlider = bool(popup)

    popupSlider = pyqtProperty(bool, hasPopupSlider, setPopupSlider)

    def _getInvertedAppearance(self) -> bool:
        return self._invertedAppearance

    def setInvertedAppearance(self, inverted: bool) -> None:
        self._invertedAppearance = bool(inverted)

    invertedAppearance = pyqtProperty(bool, _getInvertedAppearance, setInvertedAppearance)

    def _getInvertedControls(self) -> bool:
        return self._invertedControls

    def setInvertedControls(self, inverted: bool) -> None:
        self._invertedControls = bool(inverted)

    invertedControls = pyqtProperty(bool, _getInvertedControls, setInvertedControls)

    @pyqtSlot()
    def reset(self) -> None:
        self.setValue(0.0)


class ctkPathLineEdit(QtWidgets.QWidget):
    """FAKE of ctkPathLineEdit: holds ``currentPath`` (no completer, history or browse dialog).

    ``browse()`` does nothing here: a test sets ``currentPath`` instead of picking a file.
    """

    # enum Filter (values from ctkPathLineEdit.h)
    Dirs, Files, Drives, NoSymLinks = 0x001, 0x002, 0x004, 0x008
    AllEntries, TypeMask = 0x007, 0x00F
    Readable, Writable, Executable, PermissionMask = 0x010, 0x020, 0x040, 0x070
    Modified, Hidden, System, AccessMask = 0x080, 0x100, 0x200, 0x3F0
    AllDirs, CaseSensitive, NoDotAndDotDot, NoDot, NoDotDot, NoFilter = 0x400, 0x800, 0x1000, 0x2000, 0x4000, -1

    currentPathChanged = pyqtSignal(str)
    validInputChanged = pyqtSignal(bool)

    def __init__(self, *args: Any) -> None:
        parent = args[-1] if args and isinstance(args[-1], QtWidgets.QWidget) else None
        super().__init__(parent)
        self._currentPath = ""
        self._label = ""
        self._filters = self.AllEntries | self.NoDotAndDotDot | self.Readable
        self._nameFilters: list[str] = []
        self._settingKey = ""
        self._showBrowseButton = True
        self._showHistoryButton = True
        self._minimumContentsLength = 0
        self._options = 0
        self._currentDirectory = ""

    def _getCurrentPath(self) -> str:
        return self._currentPath

    @pyqtSlot(str)
    def setCurrentPath(self, path: str) -> None:
        path = str(path)
        if path != self._currentPath:
            self._currentPath = path
            self.currentPathChanged.emit(path)

    currentPath = pyqtProperty(str, _getCurrentPath, setCurrentPath, user=True)

    def _getLabel(self) -> str:
        return self._label

    def setLabel(self, label: str) -> None:
        self._label = str(label)

    label = pyqtProperty(str, _getLabel, setLabel)

    def _getFilters(self) -> int:
        return self._filters

    def setFilters(self, filters: int) -> None:
        self._filters = int(filters)

    filters = pyqtProperty(int, _getFilters, setFilters)

    def _getNameFilters(self) -> list[str]:
        return list(self._nameFilters)

    def setNameFilters(self, filters: list[str]) -> None:
        self._nameFilters = list(filters)

    nameFilters = pyqtProperty("QStringList", _getNameFilters, setNameFilters)

    def _getOptions(self) -> int:
        return self._options

    def setOptions(self, options: int) -> None:
        self._options = int(options)

    options = pyqtProperty(int, _getOptions, setOptions)

    def _getSettingKey(self) -> str:
        return self._settingKey

    def setSettingKey(self, key: str) -> None:
        self._settingKey = str(key)

    settingKey = pyqtProperty(str, _getSettingKey, setSettingKey)

    def _getShowBrowseButton(self) -> bool:
        return self._showBrowseButton

    def setShowBrowseButton(self, visible: bool) -> None:
        self._showBrowseButton = bool(visible)

    showBrowseButton = pyqtProperty(bool, _getShowBrowseButton, setShowBrowseButton)

    def _getShowHistoryButton(self) -> bool:
        return self._showHistoryButton

    def setShowHistoryButton(self, visible: bool) -> None:
        self._showHistoryButton = bool(visible)

    showHistoryButton = pyqtProperty(bool, _getShowHistoryButton, setShowHistoryButton)

    def _getMinimumContentsLength(self) -> int:
        return self._minimumContentsLength

    def setMinimumContentsLength(self, length: int) -> None:
        self._minimumContentsLength = int(length)

    minimumContentsLength = pyqtProperty(int, _getMinimumContentsLength, setMinimumContentsLength)

    def setCurrentFileExtension(self, extension: str) -> None:
        stem = self._currentPath.rsplit(".", 1)[0] if "." in self._currentPath else self._currentPath
        self.setCurrentPath(f"{stem}.{extension.lstrip('.')}")

    @pyqtSlot(str)
    def setCurrentDirectory(self, directory: str) -> None:
        self._currentDirectory = str(directory)

    @pyqtSlot()
    def browse(self) -> None:
        """FAKE: no file dialog; tests set ``currentPath``."""

    @pyqtSlot()
    def retrieveHistory(self) -> None:
        """FAKE: no history."""

    @pyqtSlot()
    def addCurrentPathToHistory(self) -> None:
        """FAKE: no history."""

    @pyqtSlot()
    def updateHasValidInput(self) -> None:
        self.validInputChanged.emit(bool(self._currentPath))


class ctkCheckBox(QtWidgets.QCheckBox):
    """FAKE of ctkCheckBox: a QCheckBox (CTK adds an indicator icon only)."""


class ctkComboBox(QtWidgets.QComboBox):
    """FAKE of ctkComboBox: a QComboBox (CTK adds a default text and scroll options)."""


class ctkDoubleSpinBox(QtWidgets.QDoubleSpinBox):
    """FAKE of ctkDoubleSpinBox: a QDoubleSpinBox (CTK adds decimals options and value proxies)."""


class ctkColorPickerButton(QtWidgets.QPushButton):
    """FAKE of ctkColorPickerButton: a button holding ``color`` (no colour dialog)."""

    colorChanged = pyqtSignal(QtGui.QColor)

    def __init__(self, *args: Any) -> None:
        parent = args[-1] if args and isinstance(args[-1], QtWidgets.QWidget) else None
        super().__init__(parent)
        self._color = QtGui.QColor("#000000")

    def _getColor(self) -> QtGui.QColor:
        return QtGui.QColor(self._color)

    @pyqtSlot(QtGui.QColor)
    def setColor(self, color: QtGui.QColor) -> None:
        color = QtGui.QColor(color)
        if color != self._color:
            self._color = color
            self.colorChanged.emit(QtGui.QColor(color))

    color = pyqtProperty(QtGui.QColor, _getColor, setColor)


class ctkCheckablePushButton(_NotFaked):
    """Not faked: the module does not use ctkCheckablePushButton."""


class ctkDoubleSlider(_NotFaked):
    """Not faked: the module does not use ctkDoubleSlider."""


class ctkRangeWidget(_NotFaked):
    """Not faked: the module does not use ctkRangeWidget."""


class ctkDoubleRangeSlider(_NotFaked):
    """Not faked: the module does not use ctkDoubleRangeSlider."""


class ctkDirectoryButton(_NotFaked):
    """Not faked: the module does not use ctkDirectoryButton."""


class ctkWidgetsUtils:
    """FAKE of ctkWidgetsUtils: ``grabWidget`` renders the widget offscreen."""

    @staticmethod
    def grabWidget(widget: QtWidgets.QWidget, rectangle: QtCore.QRect | None = None) -> QtGui.QImage:
        with qt.pyqt_native():
            pixmap = widget.grab(rectangle) if rectangle is not None else widget.grab()
        return pixmap.toImage()
