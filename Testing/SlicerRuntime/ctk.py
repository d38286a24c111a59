"""FAKES of the CTK C++ widgets (Slicer's PythonQt ``ctk`` module), for tests outside Slicer.

Each class stands in for the C++ widget of the same name with the Qt properties, signals and slots
of its header (``reference-headers/`` of the shared slicer-python folder) that a test needs.
They hold their state in Python and draw nothing useful. Widgets the module does not use are
placeholders that refuse to be built (``NotFakedError``), so a test needing them fails loudly.
"""

from __future__ import annotations

import sys
from typing import Any

from PyQt5 import QtCore, QtGui, QtWidgets
from PyQt5.QtCore import pyqtProperty, pyqtSignal, pyqtSlot
from pythonqt import pyqt_native


class NotFakedError(NotImplementedError):
    """Raised when a test builds a CTK/qMRML widget this runtime does not fake."""


class _NotFaked(QtWidgets.QWidget):
    """Placeholder: exists so ``type(w) in (ctk.X, ...)`` checks work, but cannot be built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotFakedError(f"{type(self).__name__} is not faked by the test runtime (the module does not use it)")


class ctkCollapsibleButton(QtWidgets.QAbstractButton):
    """FAKE of ctkCollapsibleButton: a checkable button whose unchecked state collapses its contents.

    Child visibility follows CTK (``Libs/Widgets/ctkCollapsibleButton.cpp`` at the CTK revision of Slicer
    5.10.0 and 5.12.3, the same file): children are hidden or shown only once the button exists on screen
    (``setChildVisibility``, l. 121-159: nothing happens before ``WA_WState_Created``), so a section collapsed
    in the ``.ui`` hides its children when the panel is first shown (``setVisible``, l. 708-734); a child
    added while collapsed is hidden (``childEvent``, l. 682-705); a child shown explicitly while collapsed
    stays hidden, and one hidden explicitly stays hidden on expanding (``eventFilter``, l. 737-769).
    """

    contentsCollapsed = pyqtSignal(bool)

    def __init__(self, *args: Any) -> None:
        text = args[0] if args and isinstance(args[0], str) else ""
        parent = args[-1] if args and isinstance(args[-1], QtWidgets.QWidget) else None
        self._collapsed = False  # CTK's d->Collapsed
        self._forcingVisibility = False  # d->ForcingVisibility: our own show/hide calls, ignored by eventFilter
        self._stateCreated = False  # d->IsStateCreated
        super().__init__(parent)
        self._collapsedHeight = 14
        self._flat = False
        self._contentsLineWidth = 1
        self._contentsMidLineWidth = 0
        self._contentsFrameShape = QtWidgets.QFrame.NoFrame
        self._contentsFrameShadow = QtWidgets.QFrame.Plain
        self._buttonTextAlignment = int(QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter)
        self._indicatorAlignment = int(QtCore.Qt.AlignLeft | QtCore.Qt.AlignVCenter)
        QtWidgets.QAbstractButton.setCheckable(self, True)
        QtWidgets.QAbstractButton.setChecked(self, True)
        QtWidgets.QAbstractButton.setText(self, text)
        self.toggled.connect(self._onToggled)

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:  # noqa: N802 (Qt name)
        painter = QtGui.QPainter(self)
        painter.drawText(4, 12, ("+ " if self._collapsed else "- ") + QtWidgets.QAbstractButton.text(self))

    def sizeHint(self) -> QtCore.QSize:  # noqa: N802
        return QtCore.QSize(100, 20)

    def _onToggled(self, checked: bool) -> None:
        if QtWidgets.QAbstractButton.isCheckable(self):
            self.collapse(not checked)

    def _childWidgets(self) -> list[QtWidgets.QWidget]:
        return [c for c in QtCore.QObject.children(self) if isinstance(c, QtWidgets.QWidget)]

    def _setChildVisibility(self, child: QtWidgets.QWidget) -> None:
        """Hide the child while collapsed, show it while expanded unless it was hidden explicitly;
        nothing before this button is created (CTK: the children would be shown at creation anyway)."""
        if not self.testAttribute(QtCore.Qt.WA_WState_Created):
            return
        self._forcingVisibility = True
        toParent = child.property("visibilityToParent")
        visible = not self._collapsed and toParent is not False
        if child.testAttribute(QtCore.Qt.WA_WState_Created) or not visible:
            child.setVisible(visible)
        if toParent is not False:  # not an explicit show/hide: the child may still be hidden explicitly later
            child.setAttribute(QtCore.Qt.WA_WState_ExplicitShowHide, False)
        self._forcingVisibility = False

    @pyqtSlot(bool)
    def collapse(self, collapsed: bool) -> None:
        if bool(collapsed) == self._collapsed:
            return
        self._collapsed = bool(collapsed)
        for child in self._childWidgets():
            self._setChildVisibility(child)
        self.contentsCollapsed.emit(self._collapsed)

    def childEvent(self, event: QtCore.QChildEvent) -> None:  # noqa: N802 (Qt name)
        child = event.child()
        if event.type() == QtCore.QEvent.ChildAdded and isinstance(child, QtWidgets.QWidget):
            explicit = child.testAttribute(QtCore.Qt.WA_WState_ExplicitShowHide)
            if explicit and child.testAttribute(QtCore.Qt.WA_WState_Hidden):
                child.setProperty("visibilityToParent", False)
            child.installEventFilter(self)
            self._setChildVisibility(child)
        super().childEvent(event)

    def setVisible(self, visible: bool) -> None:  # noqa: N802 (Qt name)
        self._forcingVisibility = True
        super().setVisible(visible)
        self._forcingVisibility = False
        if not self._stateCreated and self.testAttribute(QtCore.Qt.WA_WState_Created):
            self._stateCreated = True
            for child in self._childWidgets():
                self._setChildVisibility(child)

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:  # noqa: N802 (Qt name)
        if not self._forcingVisibility and isinstance(watched, QtWidgets.QWidget):
            if event.type() == QtCore.QEvent.ShowToParent:  # someone else showed it: hidden again while collapsed
                watched.setProperty("visibilityToParent", True)
                self._setChildVisibility(watched)
            elif event.type() == QtCore.QEvent.HideToParent:  # someone else hid it: stays hidden on expanding
                watched.setProperty("visibilityToParent", False)
        return super().eventFilter(watched, event)

    def isCollapsed(self) -> bool:
        return self._collapsed

    def setCollapsed(self, collapsed: bool) -> None:
        if not QtWidgets.QAbstractButton.isCheckable(self):
            self.collapse(collapsed)
            return
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


_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
#: CTK's qWarning messages (e.g. a refused singleStep), also printed as Qt warnings; tests assert none.
warnings: list[str] = []


def _warn(message: str) -> None:
    warnings.append(message)
    QtCore.qWarning(message)


def _qround(d: float) -> int:
    """Qt 5's ``qRound(double)`` (qglobal.h): halves go up; each C++ ``int()`` truncates toward zero."""
    if d >= 0.0:
        return int(d + 0.5)
    below = int(d - 1)
    return int(d - below + 0.5) + below


class _DoubleSliderModel:
    """FAKE of ctkDoubleSlider's arithmetic (CTK ``Libs/Widgets/ctkDoubleSlider.cpp``, Slicer 5.12.3's revision
    5056664a): the value is an int position of a QSlider plus an offset in single steps, so a value in range is
    kept as given, not snapped to the step (``toInt`` l. 129-150, ``fromInt`` l. 153-158, ``updateOffset``
    l. 167-170, ``updateIntegerSliderRange`` l. 173-187). The setters return the value the slider emits in
    ``valueChanged(double)``, or None when it emits nothing."""

    def __init__(self) -> None:
        self.minimum, self.maximum, self.step, self.offset, self.value = 0.0, 99.0, 1.0, 0.0, 0.0
        self.int_min, self.int_max, self.int_value = 0, 99, 0  # QSlider's defaults

    def to_int(self, value: float) -> int:
        return _qround(min(max(value / self.step, float(_INT_MIN)), float(_INT_MAX)))

    def from_int(self, position: int) -> float:
        return self.step * (self.offset + position)

    def safe_from_int(self, position: int) -> float:
        return min(max(self.from_int(position), self.minimum), self.maximum)

    def update_offset(self, value: float) -> None:
        self.offset = value / self.step - self.to_int(value)

    def _set_int_range(self, signals: bool) -> float | None:
        low = self.to_int(self.minimum)
        if self.from_int(low) > self.minimum and low > _INT_MIN:
            low -= 1
        high = self.to_int(self.maximum)
        if self.from_int(high) < self.maximum and high < _INT_MAX:
            high += 1
        self.int_min, self.int_max = low, max(low, high)
        clamped = min(max(self.int_value, self.int_min), self.int_max)  # QAbstractSlider::setRange
        if clamped != self.int_value:
            self.int_value = clamped
            return self._on_int_value_changed(clamped) if signals else None
        return None

    def _on_int_value_changed(self, position: int) -> float | None:  # l. 546-561
        value = self.safe_from_int(position)
        if value == self.value:
            return None
        self.value = value
        return value

    def set_value(self, value: float) -> float | None:  # l. 335-363
        value = min(max(value, self.minimum), self.maximum)
        self.update_offset(value)
        position = self.to_int(value)
        if position != self.int_value:
            self.int_value = position
            return self._on_int_value_changed(position)
        old, self.value = self.value, value
        return value if abs(value - old) > self.step * 1e-9 else None

    def set_range(self, minimum: float, maximum: float) -> float | None:  # l. 228-266
        minimum, maximum = min(minimum, maximum), max(minimum, maximum)
        self.minimum, self.maximum = minimum, maximum
        if self.minimum >= self.value:
            self.update_offset(self.minimum)
        if self.maximum <= self.value:
            self.update_offset(self.maximum)
        emitted = self._set_int_range(signals=True)
        again = self.set_value(self.value)
        return again if again is not None else emitted

    def is_valid_step(self, step: float) -> bool:  # l. 395-407
        if self.minimum == self.maximum:
            return True
        smallest = max(self.maximum / sys.float_info.max, sys.float_info.epsilon)
        largest = min(self.maximum - self.minimum, float(_INT_MAX))
        return smallest <= step <= largest

    def set_single_step(self, step: float) -> None:  # l. 374-392 (the QSlider's signals blocked)
        self.step = step
        self.update_offset(self.value)
        self._set_int_range(signals=False)
        self.int_value = min(max(self.to_int(self.value), self.int_min), self.int_max)


class ctkSliderWidget(QtWidgets.QWidget):
    """FAKE of ctkSliderWidget: a ctkDoubleSlider and a ctkDoubleSpinBox editing one double.

    As CTK at Slicer 5.10.0's and 5.12.3's revisions (``Libs/Widgets/ctkSliderWidget.cpp``, and
    ``ctkDoubleSpinBox.cpp``): the range is [0, 99.99] until set (the spin box's, l. 185-186); the value is
    clamped to the range but **not** rounded to ``decimals`` (the spin box keeps its input value, l. 887-925;
    ``value()`` is the slider's, l. 295-302, with its offset arithmetic: ``_DoubleSliderModel``); a
    ``singleStep`` outside (0, maximum - minimum] is refused with a warning (l. 417-431, the slider's
    ``isValidStep``); ``setDecimals`` emits ``valueChanged`` even when the value is unchanged (l. 455-475);
    ``valueIsChanging`` fires only while ``tracking`` is off (l. 362-380). Dragging cannot happen here.
    """

    valueChanged = pyqtSignal(float)
    valueIsChanging = pyqtSignal(float)
    decimalsChanged = pyqtSignal(int)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        # the spin box: input value and range as given (ctkDoubleSpinBox's InputValue / InputRange)
        self._spinValue, self._spinMinimum, self._spinMaximum = 0.0, 0.0, 99.99
        self._slider = _DoubleSliderModel()
        self._slider.set_range(self._spinMinimum, self._spinMaximum)
        self._pageStep, self._decimals = 10.0, 2
        self._prefix = self._suffix = ""
        self._tickInterval = 0.0
        self._tracking = self._spinBoxVisible = True
        self._popupSlider = self._invertedAppearance = self._invertedControls = False

    def _getValue(self) -> float:
        return self._slider.value

    def _setSpinBoxValue(self, sliderValue: float) -> None:
        """The slider moved: the spin box follows, then the widget's signals (ctkSliderWidget.cpp l. 362-380)."""
        self._spinValue = min(max(sliderValue, self._spinMinimum), self._spinMaximum)
        if not self._tracking:
            self.valueIsChanging.emit(sliderValue)
        self.valueChanged.emit(sliderValue)

    @pyqtSlot(float)
    def setValue(self, value: float) -> None:
        value = float(value)
        if value == self._spinValue:  # ctkDoubleSpinBox::setValueIfDifferent
            return
        value = min(max(value, self._spinMinimum), self._spinMaximum)
        if value == self._spinValue:
            return
        self._spinValue = value
        emitted = self._slider.set_value(value)
        if emitted is not None:
            self._setSpinBoxValue(emitted)

    value = pyqtProperty(float, _getValue, setValue)

    def _getMinimum(self) -> float:
        return self._slider.minimum

    def setMinimum(self, minimum: float) -> None:
        self.setRange(float(minimum), max(float(minimum), self._spinMaximum))

    minimum = pyqtProperty(float, _getMinimum, setMinimum)

    def _getMaximum(self) -> float:
        return self._slider.maximum

    def setMaximum(self, maximum: float) -> None:
        self.setRange(min(float(maximum), self._spinMinimum), float(maximum))

    maximum = pyqtProperty(float, _getMaximum, setMaximum)

    def setRange(self, minimum: float, maximum: float) -> None:
        minimum, maximum = float(minimum), float(maximum)
        self._spinMinimum, self._spinMaximum = min(minimum, maximum), max(minimum, maximum)
        self._spinValue = min(max(self._spinValue, self._spinMinimum), self._spinMaximum)
        emitted = self._slider.set_range(self._spinMinimum, self._spinMaximum)
        if emitted is not None:
            self._setSpinBoxValue(emitted)

    def _getSingleStep(self) -> float:
        return self._slider.step

    def setSingleStep(self, step: float) -> None:
        step = float(step)
        if not self._slider.is_valid_step(step):
            _warn(f"ctkSliderWidget::setSingleStep() {step:g} is out of bounds. "
                  f"{self.minimum:g} {self.maximum:g} {self.value:g}")
            return
        self._slider.set_single_step(step)

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
        self._decimals = min(max(int(decimals), 0), 323)  # QDoubleSpinBox's bounds
        self._setSpinBoxValue(self._slider.value)
        self.decimalsChanged.emit(self._decimals)

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
        with pyqt_native():
            pixmap = widget.grab(rectangle) if rectangle is not None else widget.grab()
        return pixmap.toImage()
