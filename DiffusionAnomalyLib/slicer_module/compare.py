"""The compare view: input | reconstruction | input + heatmap in three linked axial slice views, and undoing it.

Part of the scene adapter (:mod:`DiffusionAnomalyLib.slicer_module.scene` re-exports these names); imports
``vtk`` inside its functions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

COMPARE_LAYOUT_ID = 5761  # an unused custom layout number
COMPARE_LAYOUT_XML = """
<layout type="horizontal" split="true">
 <item><view class="vtkMRMLSliceNode" singletontag="Red">
  <property name="orientation" action="default">Axial</property>
  <property name="viewlabel" action="default">R</property>
  <property name="viewcolor" action="default">#F34A33</property></view></item>
 <item><view class="vtkMRMLSliceNode" singletontag="Yellow">
  <property name="orientation" action="default">Axial</property>
  <property name="viewlabel" action="default">Y</property>
  <property name="viewcolor" action="default">#EDD54C</property></view></item>
 <item><view class="vtkMRMLSliceNode" singletontag="Green">
  <property name="orientation" action="default">Axial</property>
  <property name="viewlabel" action="default">G</property>
  <property name="viewcolor" action="default">#6EB04B</property></view></item>
</layout>
"""


COMPARE_VIEWS = ("Red", "Yellow", "Green")


@dataclass
class CompareViewState:
    """What :func:`show_compare` changed, so :func:`leave_compare` can put it back: the layout before, and each
    slice view's orientation and linked control."""

    arrangement: int
    slice_to_ras: dict[str, object] = field(default_factory=dict)  # view -> vtkMatrix4x4 copy (oblique views too)
    linked: dict[str, bool] = field(default_factory=dict)


def _views(scene, class_name: str) -> dict:
    """The scene's nodes of ``class_name`` (slice or slice-composite nodes) by view name (Red, Yellow, ...)."""
    nodes = (scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name)))
    return {node.GetLayoutName() or node.GetSingletonTag(): node for node in nodes}


def show_compare(scene, input_node, result, heatmap_opacity: float = 0.5) -> CompareViewState:
    """Input | reconstruction | input + heatmap overlay (``result``: the run's :class:`scene.ResultNodes`), in three
    linked axial views. With a kept trajectory the
    reconstruction view shows the sequence browser's current frame, so scrolling the browser steps from noisy to
    healthy there while the input stays put.

    Registers the layout on the scene's layout node (if there is one), makes the Red, Yellow and Green
    slice views axial (Slicer's Yellow and Green views exist already as sagittal and coronal, and a layout
    description only sets the orientation of views it creates) and sets their composite nodes. Returns what
    was changed, for :func:`leave_compare`.
    """
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    state = CompareViewState(layout.GetViewArrangement() if layout is not None else -1)
    if layout is not None:
        if not layout.IsLayoutDescription(COMPARE_LAYOUT_ID):
            layout.AddLayoutDescription(COMPARE_LAYOUT_ID, COMPARE_LAYOUT_XML)
        layout.SetViewArrangement(COMPARE_LAYOUT_ID)
    import vtk

    for tag, node in _views(scene, "vtkMRMLSliceNode").items():
        if tag in COMPARE_VIEWS:
            saved = vtk.vtkMatrix4x4()
            saved.DeepCopy(node.GetSliceToRAS())
            state.slice_to_ras[tag] = saved
            node.SetOrientation("Axial")
    views = {"Red": (input_node, None), "Yellow": (result.reconstruction_view_volume, None),
             "Green": (input_node, result.heatmap)}
    for tag, comp in _views(scene, "vtkMRMLSliceCompositeNode").items():
        if tag not in views:
            continue
        background, foreground = views[tag]
        state.linked[tag] = bool(comp.GetLinkedControl())
        comp.SetBackgroundVolumeID(background.GetID() if background else None)
        comp.SetForegroundVolumeID(foreground.GetID() if foreground else None)
        comp.SetForegroundOpacity(heatmap_opacity if foreground else 0.0)
        comp.SetLinkedControl(True)
    display = result.lesions.GetDisplayNode()
    if display is not None:
        display.SetVisibility(True)
    return state


def leave_compare(scene, state: CompareViewState) -> None:
    """Undo :func:`show_compare`'s view settings (orientations, linked control) once the user has left the
    compare layout; the volumes shown stay."""
    for tag, node in _views(scene, "vtkMRMLSliceNode").items():
        if tag in state.slice_to_ras:  # the rotation, not the orientation name (an oblique view has none)
            current, saved = node.GetSliceToRAS(), state.slice_to_ras[tag]
            for r in range(3):  # the position the user went to stays
                for c in range(3):
                    current.SetElement(r, c, saved.GetElement(r, c))
            node.UpdateMatrices()
    for tag, comp in _views(scene, "vtkMRMLSliceCompositeNode").items():
        if tag in state.linked:
            comp.SetLinkedControl(state.linked[tag])


def in_compare_layout(scene) -> bool:
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    return layout is not None and layout.GetViewArrangement() == COMPARE_LAYOUT_ID


def to_world(node, ras: Sequence[float]) -> tuple[float, float, float]:
    """A point in ``node``'s local RAS (before its parent transforms) in world RAS."""
    import vtk

    transform = node.GetParentTransformNode() if node is not None else None
    if transform is None:
        return tuple(float(c) for c in ras)
    to_world_t = vtk.vtkGeneralTransform()
    transform.GetTransformToWorld(to_world_t)
    return tuple(float(c) for c in to_world_t.TransformPoint([float(c) for c in ras]))
