"""FAKES of Slicer's qMRML widgets (``slicer.qMRMLWidget``, ``slicer.qMRMLNodeComboBox``...).

Built from ``qMRMLWidget.h`` and ``qMRMLNodeComboBox.h``; ``slicer_runtime.install()`` puts them
into the ``slicer`` namespace. They work on the real ``vtkMRMLScene`` from slicer-core.
"""

from __future__ import annotations

from typing import Any

import vtk
from ctk import NotFakedError, ctkDoubleSpinBox, ctkSliderWidget
from PyQt5 import QtWidgets, sip
from PyQt5.QtCore import pyqtProperty, pyqtSignal, pyqtSlot


class _SceneWidget(QtWidgets.QWidget):
    """A QWidget holding a scene; ``setMRMLScene`` emits ``mrmlSceneChanged`` (what qMRMLWidget and qSlicerWidget
    share; neither derives from the other in Slicer)."""

    mrmlSceneChanged = pyqtSignal(object)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._scene = None

    @pyqtSlot(object)
    def setMRMLScene(self, scene: Any) -> None:
        if scene is self._scene:
            return
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self) -> Any:
        return self._scene


class qMRMLWidget(_SceneWidget):
    """FAKE of qMRMLWidget: a QWidget holding a scene; ``setMRMLScene`` emits ``mrmlSceneChanged``."""

    @staticmethod
    def preInitializeApplication() -> None:
        """FAKE: nothing to initialise."""

    @staticmethod
    def postInitializeApplication() -> None:
        """FAKE: nothing to initialise."""


class qSlicerWidget(_SceneWidget):
    """FAKE of qSlicerWidget (a QWidget and a qSlicerObject, not a qMRMLWidget): holds a scene; ``setMRMLScene``
    emits ``mrmlSceneChanged``. Slicer's ``parameterNodeWrapper/guiCreation.py`` builds the GUI of a parameter
    pack or wrapper in one."""


_EXTRA = "extra"  # a "Create new / Delete current / Rename current" row at the end of the list


class qMRMLNodeComboBox(QtWidgets.QWidget):
    """FAKE of qMRMLNodeComboBox: lists the scene's nodes of ``nodeTypes`` and follows the scene.

    Its rows are those of the real widget's model: an optional "None" row, the matching nodes
    (scene order; hidden nodes only with ``showHidden``; subclasses unless ``showChildNodeTypes``
    is off) and, when add/remove/edit/rename are enabled, action rows. The current row follows
    QComboBox's rules, which gives the real widget's behaviour: setting a scene selects the first
    row (the first node, or None when ``noneEnabled``); adding nodes selects nothing unless the list
    was empty; removing the current node selects the row that takes its place (None if that is an
    action row).
    """

    currentNodeChanged = pyqtSignal([object], [bool])
    currentNodeIDChanged = pyqtSignal(str)
    nodeActivated = pyqtSignal(object)
    nodeAdded = pyqtSignal(object)
    nodeAddedByUser = pyqtSignal(object)
    nodeAboutToBeRemoved = pyqtSignal(object)
    nodeAboutToBeEdited = pyqtSignal(object)
    currentNodeRenamed = pyqtSignal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._scene = None
        self._observations: list[int] = []
        self._nodeTypes: list[str] = []
        self._hideChildNodeTypes: list[str] = []
        self._attributes: dict[str, dict[str, Any]] = {}
        self._showHidden = False
        self._showChildNodeTypes = True
        self._noneEnabled = False
        self._addEnabled = True
        self._removeEnabled = True
        self._editEnabled = False
        self._renameEnabled = False
        self._selectNodeUponCreation = True
        self._baseName = ""
        self._noneDisplay = "None"
        self._interactionNodeSingletonTag = ""
        self._rows: list[Any] = []  # None (the None row), a node ID, or _EXTRA
        self._current: str | None = None
        self._index = -1
        self.destroyed.connect(_forget(self))

    # --- scene -----------------------------------------------------------------------------------
    @pyqtSlot(object)
    def setMRMLScene(self, scene: Any) -> None:
        self._unobserve()
        self._scene = scene
        if scene is not None:
            events = (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent,
                      scene.EndImportEvent, scene.EndBatchProcessEvent, scene.EndRestoreEvent)
            self._observations = [scene.AddObserver(e, self._onSceneEvent) for e in events]
        self._rows = []
        self._index = -1
        self._refresh()

    def mrmlScene(self) -> Any:
        return self._scene

    def _unobserve(self) -> None:
        if self._scene is not None:
            for tag in self._observations:
                self._scene.RemoveObserver(tag)
        self._observations = []

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onSceneEvent(self, scene: Any, event: str, node: Any = None) -> None:
        if sip.isdeleted(self):
            for tag in self._observations:
                scene.RemoveObserver(tag)
            return
        if event == "NodeAddedEvent" and node is not None and self._accepts(node):
            self._refresh()
            self.nodeAdded.emit(node)
        elif event == "NodeRemovedEvent" and node is not None:
            if node.GetID() in self._rows:
                self.nodeAboutToBeRemoved.emit(node)
            self._refresh()
        elif event != "NodeAddedEvent" and event != "NodeRemovedEvent":
            self._refresh()

    def _accepts(self, node: Any) -> bool:
        if not self._nodeTypes:
            return False
        if node.GetHideFromEditors() and not self._showHidden:
            return False
        cls = node.GetClassName()
        if self._showChildNodeTypes:
            ok = any(node.IsA(t) for t in self._nodeTypes)
            if any(node.IsA(t) for t in self._hideChildNodeTypes) and cls not in self._nodeTypes:
                ok = False
        else:
            ok = cls in self._nodeTypes
        if not ok:
            return False
        for nodeType, attributes in self._attributes.items():
            if node.IsA(nodeType):
                for name, value in attributes.items():
                    actual = node.GetAttribute(name)
                    if actual is None or (value is not None and str(actual) != str(value)):
                        return False
        return True

    def _matchingNodeIDs(self) -> list[str]:
        scene = self._scene
        if scene is None:
            return []
        ids = []
        for i in range(scene.GetNumberOfNodes()):
            node = scene.GetNthNode(i)
            if node is not None and self._accepts(node):
                ids.append(node.GetID())
        return ids

    def _refresh(self) -> None:
        """Rebuild the rows and move the current row as QComboBox would."""
        old_rows, old_index = self._rows, self._index
        old_row = old_rows[old_index] if 0 <= old_index < len(old_rows) else -1
        rows: list[Any] = [None] if self._noneEnabled else []
        rows += self._matchingNodeIDs()
        if self._scene is not None and (self._addEnabled or self._removeEnabled or self._editEnabled
                                        or self._renameEnabled):
            rows.append(_EXTRA)
        self._rows = rows
        if old_row != -1 and old_row in rows:  # the current row survives
            self._index = rows.index(old_row)
        elif old_row == -1:  # nothing selected: QComboBox selects the first row of an empty list filled
            self._index = 0 if (not old_rows and rows) else -1
        else:  # the current row went away: the row taking its place
            self._index = min(len(rows) - 1, old_index)
        row = rows[self._index] if self._index >= 0 else None
        self._setCurrentID(row if row is not _EXTRA else None)

    def _setCurrentID(self, node_id: str | None) -> None:
        if node_id == self._current:
            return
        self._current = node_id
        node = self.currentNode()
        self.currentNodeChanged[object].emit(node)
        self.currentNodeChanged[bool].emit(node is not None)
        self.currentNodeIDChanged.emit(node_id or "")

    # --- current node ----------------------------------------------------------------------------
    def currentNode(self) -> Any:
        if self._current is None or self._scene is None:
            return None
        return self._scene.GetNodeByID(self._current)

    @pyqtSlot(object)
    def setCurrentNode(self, node: Any) -> None:
        if isinstance(node, str):
            self.setCurrentNodeID(node)
            return
        node_id = node.GetID() if node is not None else None
        if node_id is not None and node_id not in self._rows:
            node_id = None
        self._index = self._rows.index(node_id) if node_id in self._rows else -1
        self._setCurrentID(node_id)

    @pyqtSlot(str)
    def setCurrentNodeID(self, node_id: str) -> None:
        node = self._scene.GetNodeByID(node_id) if (self._scene is not None and node_id) else None
        self.setCurrentNode(node)

    def _getCurrentNodeID(self) -> str:
        return self._current or ""

    currentNodeID = pyqtProperty(str, _getCurrentNodeID, setCurrentNodeID, notify=currentNodeIDChanged)

    @pyqtSlot(int)
    def setCurrentNodeIndex(self, index: int) -> None:
        nodes = [r for r in self._rows if r is not None and r is not _EXTRA]
        self.setCurrentNodeID(nodes[index] if 0 <= index < len(nodes) else "")

    def currentNodeIndex(self) -> int:
        nodes = [r for r in self._rows if r is not None and r is not _EXTRA]
        return nodes.index(self._current) if self._current in nodes else -1

    def nodeCount(self) -> int:
        return len([r for r in self._rows if r is not None and r is not _EXTRA])

    def nodeFromIndex(self, index: int) -> Any:
        nodes = [r for r in self._rows if r is not None and r is not _EXTRA]
        return self._scene.GetNodeByID(nodes[index]) if 0 <= index < len(nodes) else None

    def addNode(self, nodeType: str = "") -> Any:
        """Create a node of ``nodeType`` (default: the first node type), as "Create new" does."""
        if self._scene is None or not (nodeType or self._nodeTypes):
            return None
        nodeType = nodeType or self._nodeTypes[0]
        name = self._scene.GenerateUniqueName(self._baseName or self._scene.GetTagByClassName(nodeType) or nodeType)
        node = self._scene.AddNewNodeByClass(nodeType, name)
        if self._selectNodeUponCreation:
            self.setCurrentNode(node)
        self.nodeAddedByUser.emit(node)
        return node

    @pyqtSlot()
    def removeCurrentNode(self) -> None:
        node = self.currentNode()
        if node is not None:
            self._scene.RemoveNode(node)

    @pyqtSlot()
    def editCurrentNode(self) -> None:
        node = self.currentNode()
        if node is not None:
            self.nodeAboutToBeEdited.emit(node)

    @pyqtSlot()
    def renameCurrentNode(self) -> None:
        """FAKE: the real one asks for a name in a dialog; this one only emits the signal."""
        node = self.currentNode()
        if node is not None:
            self.currentNodeRenamed.emit(node.GetName())

    def addAttribute(self, nodeType: str, attributeName: str, attributeValue: Any = None) -> None:
        self._attributes.setdefault(nodeType, {})[attributeName] = attributeValue
        self._refresh()

    def removeAttribute(self, nodeType: str, attributeName: str) -> None:
        self._attributes.get(nodeType, {}).pop(attributeName, None)
        self._refresh()

    def setNodeTypeLabel(self, label: str, nodeType: str) -> None:
        """FAKE: labels are not shown."""

    # --- properties ------------------------------------------------------------------------------
    def _getNodeTypes(self) -> list[str]:
        return list(self._nodeTypes)

    def setNodeTypes(self, nodeTypes: Any) -> None:
        self._nodeTypes = [str(t) for t in nodeTypes]
        self._refresh()

    nodeTypes = pyqtProperty("QStringList", _getNodeTypes, setNodeTypes)

    def _getHideChildNodeTypes(self) -> list[str]:
        return list(self._hideChildNodeTypes)

    def setHideChildNodeTypes(self, nodeTypes: Any) -> None:
        self._hideChildNodeTypes = [str(t) for t in nodeTypes]
        self._refresh()

    hideChildNodeTypes = pyqtProperty("QStringList", _getHideChildNodeTypes, setHideChildNodeTypes)

    def _flag(name: str) -> pyqtProperty:  # noqa: N805 (class-body helper)
        attr = "_" + name

        def getter(self: qMRMLNodeComboBox) -> bool:
            return getattr(self, attr)

        def setter(self: qMRMLNodeComboBox, value: bool) -> None:
            setattr(self, attr, bool(value))
            self._refresh()

        return pyqtProperty(bool, getter, setter)

    showHidden = _flag("showHidden")
    showChildNodeTypes = _flag("showChildNodeTypes")
    noneEnabled = _flag("noneEnabled")
    addEnabled = _flag("addEnabled")
    removeEnabled = _flag("removeEnabled")
    editEnabled = _flag("editEnabled")
    renameEnabled = _flag("renameEnabled")
    selectNodeUponCreation = _flag("selectNodeUponCreation")
    del _flag

    def setShowHidden(self, value: bool) -> None:
        self._showHidden = bool(value)
        self._refresh()

    def setShowChildNodeTypes(self, value: bool) -> None:
        self._showChildNodeTypes = bool(value)
        self._refresh()

    def setNoneEnabled(self, value: bool) -> None:
        self._noneEnabled = bool(value)
        self._refresh()

    def setAddEnabled(self, value: bool) -> None:
        self._addEnabled = bool(value)
        self._refresh()

    def setRemoveEnabled(self, value: bool) -> None:
        self._removeEnabled = bool(value)
        self._refresh()

    def setEditEnabled(self, value: bool) -> None:
        self._editEnabled = bool(value)
        self._refresh()

    def setRenameEnabled(self, value: bool) -> None:
        self._renameEnabled = bool(value)
        self._refresh()

    def setSelectNodeUponCreation(self, value: bool) -> None:
        self._selectNodeUponCreation = bool(value)

    def _getBaseName(self) -> str:
        return self._baseName

    def setBaseName(self, baseName: str, nodeType: str = "") -> None:
        self._baseName = str(baseName)

    baseName = pyqtProperty(str, _getBaseName, setBaseName)

    def _getNoneDisplay(self) -> str:
        return self._noneDisplay

    def setNoneDisplay(self, name: str) -> None:
        self._noneDisplay = str(name)

    noneDisplay = pyqtProperty(str, _getNoneDisplay, setNoneDisplay)

    def _getInteractionTag(self) -> str:
        return self._interactionNodeSingletonTag

    def setInteractionNodeSingletonTag(self, tag: str) -> None:
        self._interactionNodeSingletonTag = str(tag)

    interactionNodeSingletonTag = pyqtProperty(str, _getInteractionTag, setInteractionNodeSingletonTag)


def _forget(widget: qMRMLNodeComboBox) -> Any:
    """A ``destroyed`` handler that drops the widget's scene observers without touching the widget."""
    observations = widget.__dict__
    def forget(*_: Any) -> None:
        scene = observations.get("_scene")
        for tag in observations.get("_observations", []):
            if scene is not None:
                scene.RemoveObserver(tag)
        observations["_observations"] = []
    return forget


class qMRMLSliderWidget(ctkSliderWidget):
    """FAKE of qMRMLSliderWidget: a ctkSliderWidget (the real one adds MRML unit quantities)."""

    def setMRMLScene(self, scene: Any) -> None:
        self._scene = scene

    def mrmlScene(self) -> Any:
        return getattr(self, "_scene", None)


class qMRMLSpinBox(ctkDoubleSpinBox):
    """FAKE of qMRMLSpinBox: a ctkDoubleSpinBox (the real one adds MRML unit quantities)."""

    def setMRMLScene(self, scene: Any) -> None:
        self._scene = scene

    def mrmlScene(self) -> Any:
        return getattr(self, "_scene", None)


class _NotFaked(QtWidgets.QWidget):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotFakedError(f"{type(self).__name__} is not faked by the test runtime (the module does not use it)")


class qMRMLRangeWidget(_NotFaked):
    """Not faked: the module does not use qMRMLRangeWidget."""


class qMRMLSubjectHierarchyComboBox(_NotFaked):
    """Not faked: the module does not use qMRMLSubjectHierarchyComboBox."""


class qMRMLSubjectHierarchyTreeView(_NotFaked):
    """Not faked: the module does not use qMRMLSubjectHierarchyTreeView."""


FAKE_WIDGETS = {name: obj for name, obj in list(globals().items()) if name.startswith(("qMRML", "qSlicerWidget"))}
