"""The MRML scene adapter: the only code in the library that touches 3D Slicer's scene.

It imports ``slicer`` and ``vtk`` inside its functions (DEVELOPERS.md, layers), so the rest of the library
stays importable without Slicer. It works on any ``vtkMRMLScene``: Slicer's own, or the real one
the ``slicer-core`` wheel provides (which the tests use).

Geometry: SimpleITK images are LPS; MRML volumes are RAS. A volume's IJK-to-RAS matrix is
``diag(-1, -1, 1) @ [direction * spacing | origin]`` of the LPS image, so oblique directions survive.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.slicer_module.compare import (  # noqa: F401  (the compare view, part of the adapter)
    COMPARE_LAYOUT_ID,
    CompareViewState,
    in_compare_layout,
    leave_compare,
    show_compare,
    to_world,
)

ATTRIBUTE_PREFIX = "DiffusionAnomaly."
HEATMAP_COLOR_NAME = "DiffusionAnomaly heatmap"
UNCERTAINTY_COLOR_NAME = "DiffusionAnomaly uncertainty"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
#: Words that identify an organ's segments in a segmentation (TotalSegmentator names and terminology).
ORGAN_SEGMENT_WORDS = {"kidney": ("kidney",), "liver": ("liver",), "brain": ("brain",)}


# --- volumes <-> SimpleITK ---------------------------------------------------------------------------------------

def _ijk_to_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def image_from_volume_node(node) -> sitk.Image:
    """A scalar volume node as a SimpleITK image (LPS) with the node's exact geometry; the node is not touched."""
    from vtk.util import numpy_support

    problem = volume_node_problem(node)
    if problem:
        raise InputError(problem)
    data = node.GetImageData()
    nx, ny, nz = data.GetDimensions()
    arr = numpy_support.vtk_to_numpy(data.GetPointData().GetScalars()).reshape(nz, ny, nx).copy()
    image = sitk.GetImageFromArray(arr)
    ijk_to_ras = _ijk_to_ras(node)
    spacing = np.array(node.GetSpacing(), dtype=float)
    direction_ras = ijk_to_ras[:3, :3] / spacing
    image.SetSpacing(tuple(spacing))
    image.SetDirection(tuple((_LPS_TO_RAS @ direction_ras).ravel()))
    image.SetOrigin(tuple(_LPS_TO_RAS @ ijk_to_ras[:3, 3]))
    return image


def _set_geometry(node, image: sitk.Image) -> None:
    import vtk

    spacing = np.array(image.GetSpacing())
    direction_ras = _LPS_TO_RAS @ np.array(image.GetDirection()).reshape(3, 3)
    m = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            m.SetElement(r, c, direction_ras[r, c] * spacing[c])
        m.SetElement(r, 3, (_LPS_TO_RAS @ np.array(image.GetOrigin()))[r])
    node.SetIJKToRASMatrix(m)


def volume_node_from_image(scene, image: sitk.Image, name: str,
                           node_class: str = "vtkMRMLScalarVolumeNode"):
    """A new volume node in ``scene`` holding ``image`` (its voxels, spacing, origin and direction)."""
    import vtk
    from vtk.util import numpy_support

    arr = np.ascontiguousarray(sitk.GetArrayFromImage(image))
    data = vtk.vtkImageData()
    nz, ny, nx = arr.shape
    data.SetDimensions(nx, ny, nz)
    scalars = numpy_support.numpy_to_vtk(arr.ravel(), deep=True)
    data.GetPointData().SetScalars(scalars)
    node = scene.AddNewNodeByClass(node_class, name)
    node.SetAndObserveImageData(data)
    _set_geometry(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def volume_node_problem(node) -> str:
    """Why ``node`` cannot be an input ("" when it can): none, no voxels, 2D, or not scalar."""
    if node is None:
        return "Select an input volume."
    data = node.GetImageData()
    if data is None or data.GetNumberOfPoints() == 0:
        return f"The volume '{node.GetName()}' holds no voxels."
    dims = data.GetDimensions()
    if min(dims) < 2:
        return (f"The volume '{node.GetName()}' is 2D ({dims[0]} x {dims[1]} x {dims[2]} voxels); "
                "detection needs a 3D volume.")
    if data.GetNumberOfScalarComponents() != 1:
        return (f"The volume '{node.GetName()}' has {data.GetNumberOfScalarComponents()} components per voxel "
                "(a colour or vector image); select a scalar CT or MRI volume.")
    return ""


def channel_nodes_problem(nodes: Sequence, channel_names: Sequence[str]) -> str:
    """Why a set of MRI channel volumes does not fit a bundle's channels ("" when they do)."""
    names = list(channel_names)
    chosen = [n for n in nodes if n is not None]
    if len(chosen) != len(names):
        return (f"The model wants {len(names)} channel(s) ({', '.join(names)}); {len(chosen)} volume(s) are "
                "selected.")
    for node in chosen:
        problem = volume_node_problem(node)
        if problem:
            return problem
    first = chosen[0]
    for name, node in zip(names[1:], chosen[1:], strict=True):
        diffs = node_grid_differences(first, node)
        if diffs:
            return (f"Channel '{name}' ('{node.GetName()}') is not on the grid of '{first.GetName()}' "
                    f"({'; '.join(diffs)}); resample the sequences to one grid (co-register them) first.")
    return ""


def node_grid_differences(a, b, tol: float = 1e-4) -> list[str]:
    """How two volume nodes' voxel grids differ (size, IJK-to-RAS, parent transform); read from the nodes' geometry,
    without copying voxels (the panel checks this on every change of a setting)."""
    out = []
    da, db = a.GetImageData().GetDimensions(), b.GetImageData().GetDimensions()
    if tuple(da) != tuple(db):
        out.append(f"size {tuple(da)} vs {tuple(db)}")
    ma, mb = _ijk_to_ras(a), _ijk_to_ras(b)
    if not np.allclose(ma, mb, atol=tol * max(1.0, float(np.abs(ma).max()))):
        out.append("spacing, origin or direction differ")
    if (a.GetTransformNodeID() or "") != (b.GetTransformNodeID() or ""):
        out.append("different parent transforms")
    return out


def _node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


@contextmanager
def scratch_nodes(scene, keep: list | None = None):
    """Remove every node added to ``scene`` inside the block (temporary labelmaps and the display and
    colour nodes Slicer's logic creates for them), except the nodes in ``keep``."""
    before = _node_ids(scene)
    try:
        yield
    finally:
        _remove_nodes_added_since(scene, before, keep={n.GetID() for n in keep or [] if n is not None})


def _remove_nodes_added_since(scene, before: set[str], keep: set[str] = frozenset()) -> None:
    for node_id in _node_ids(scene) - before - keep:
        node = scene.GetNodeByID(node_id)
        if node is not None:  # removing a node can remove its dependents too
            scene.RemoveNode(node)


# --- organ masks from segmentations --------------------------------------------------------------------------------

def organ_segment_ids(segmentation_node, organ: str) -> list[str]:
    """IDs of the segments whose name or terminology names the organ (e.g. TotalSegmentator's kidneys)."""
    words = ORGAN_SEGMENT_WORDS.get(organ, (organ,))
    seg = segmentation_node.GetSegmentation()
    found = []
    for i in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(i)
        segment = seg.GetSegment(sid)
        text = (segment.GetName() + " " + _segment_tag(segment)).lower()
        if any(w in text for w in words):
            found.append(sid)
    return found


def segment_tag(segment, name: str) -> str:
    """A segment's tag value ("" when absent)."""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


def _segment_tag(segment) -> str:
    import slicer

    return segment_tag(segment, slicer.vtkSegment.GetTerminologyEntryTagName())


def mask_from_segments(scene, segmentation_node, segment_ids: Sequence[str], reference_node,
                       what: str = "organ segment(s)") -> sitk.Image:
    """The chosen segments as one uint8 labelmap (1, 2, ... per segment) on ``reference_node``'s grid.

    Kidney masks keep one label per segment, so a left and a right kidney segment stay apart.
    Nothing is added to the scene (a temporary labelmap node is removed again).
    """
    import slicer
    import vtk

    if not segment_ids:
        raise InputError(f"No {what} selected in '{segmentation_node.GetName()}'.")
    logic = slicer.vtkSlicerSegmentationsModuleLogic  # static methods: no instance (it would re-register rules)
    with scratch_nodes(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "da-temporary-mask")
        ids = vtk.vtkStringArray()
        for sid in segment_ids:
            ids.InsertNextValue(sid)
        if not logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, reference_node):
            raise InputError(f"Could not export the segments {list(segment_ids)} of '{segmentation_node.GetName()}' "
                             f"onto the grid of '{reference_node.GetName()}'.")
        image = image_from_volume_node(labelmap)
    image = sitk.Cast(image, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(image).any():
        raise InputError(f"The {what} of '{segmentation_node.GetName()}' is empty inside the volume "
                         f"'{reference_node.GetName()}'.")
    return image


# --- results into the scene ----------------------------------------------------------------------------------------

@dataclass
class ResultNodes:
    """What one run added to the scene."""

    folder_item: int
    reconstruction: object
    heatmap: object
    lesions: object
    nodes: list = field(default_factory=list)  # everything created, for removal
    uncertainty: object = None  # the uncertainty volume (runs with K >= 2 samples)
    trajectory: object = None  # the trajectory's vtkMRMLSequenceNode (runs that kept it)
    browser: object = None  # its vtkMRMLSequenceBrowserNode
    trajectory_proxy: object = None  # the volume node the browser shows (the current frame)

    @property
    def reconstruction_view_volume(self):
        """What the compare layout's reconstruction view shows: the trajectory's current frame, else the
        reconstruction."""
        return self.trajectory_proxy or self.reconstruction


def _color_node(scene, name: str, ramp):
    """A shared colour table ``name`` with 256 colours ``ramp(t)`` -> (r, g, b), created once per scene; returns
    (node, created)."""
    import slicer

    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLColorTableNode")
        if node.GetName() == name:
            return node, False
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(name)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    for i in range(256):
        node.SetColor(i, f"{i}", *ramp(i / 255.0), 1.0)
    node.SetAttribute("Category", "DiffusionAnomaly")
    scene.AddNode(node)
    return node, True


def _heatmap_color_node(scene):
    """The heatmaps' colour table (black-red-yellow-white ramp)."""
    return _color_node(scene, HEATMAP_COLOR_NAME, lambda t: (min(1.0, 3 * t), min(1.0, max(0.0, 3 * t - 1)),
                                                             min(1.0, max(0.0, 3 * t - 2))))


def _uncertainty_color_node(scene):
    """The uncertainty maps' colour table (dark blue - teal - yellow, unlike the heatmap's)."""
    return _color_node(scene, UNCERTAINTY_COLOR_NAME, lambda t: (min(1.0, max(0.0, 2 * t - 1)) * 0.99,
                                                                 0.05 + 0.85 * t, 0.35 + 0.5 * t - 0.75 * t * t))


def add_color_legend(scene, displayable_node, title: str):
    """Slicer's default colour legend for ``displayable_node`` (``vtkSlicerColorLogic``, which also marks it
    modified so the views show it), titled ``title``. A bare MRML scene (slicer-core) lacks the legend class
    that Slicer's Colors module registers; it is registered first there."""
    import slicer

    if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(displayable_node)
    if legend is not None:
        legend.SetTitleText(title)
    return legend


def _copy_window_level(source, target) -> None:
    sd, td = source.GetDisplayNode(), target.GetDisplayNode()
    if sd is None or td is None:
        return
    td.SetAutoWindowLevel(False)
    td.SetWindowLevel(sd.GetWindow(), sd.GetLevel())
    if sd.GetColorNodeID():
        td.SetAndObserveColorNodeID(sd.GetColorNodeID())


def _set_attributes(node, attributes: dict[str, str]) -> None:
    for key, value in attributes.items():
        node.SetAttribute(ATTRIBUTE_PREFIX + key, value)


def _place_in_folder(sh, node, folder: int) -> None:
    """Put ``node`` under the subject-hierarchy ``folder`` (Slicer creates items for new nodes itself;
    a bare scene does not, so the item is created when missing)."""
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, folder)
    else:
        sh.CreateItem(folder, node)


def run_attributes(result: dict, parameters: dict) -> dict[str, str]:
    """Node attributes for a run: every parameter, the bundle, threshold, device and timings, as strings."""
    attrs = {k: v if isinstance(v, str) else json.dumps(v) for k, v in parameters.items()}
    for key in ("threshold", "device"):
        if key in result:
            attrs[key] = str(result[key])
    if "timings_s" in result:
        attrs["timings_s"] = json.dumps(result["timings_s"])
    return attrs


def add_results(scene, input_node, outputs: dict[str, str], lesions: Sequence[dict], run_name: str,
                attributes: dict[str, str], organ: str,
                reconstruction_file: str = "reconstruction.nii.gz") -> ResultNodes:
    """Add one run's outputs to ``scene`` in a subject-hierarchy folder next to ``input_node``.

    ``outputs`` maps file names (``reconstruction_file``, ``heatmap.nii.gz``, ``lesions.nii.gz``; when the run made
    them ``uncertainty.nii.gz`` and ``trajectory.seq.nrrd``) to paths; ``lesions`` are the worker's lesion-table
    rows. The uncertainty map gets its own colour table; the trajectory becomes a sequence node with a sequence
    browser (at its last, healthiest frame). All or nothing: if anything fails, every node created here is removed
    again and the scene is as it was.
    """
    import slicer

    created: list = []
    folder = None
    sh = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    before = _node_ids(scene)
    try:
        recon_path = outputs.get(reconstruction_file)
        for key, path in (("reconstruction", recon_path), ("heatmap", outputs.get("heatmap.nii.gz")),
                          ("lesions", outputs.get("lesions.nii.gz"))):
            if not path or not Path(path).is_file():
                raise InputError(f"The run's {key} output is missing ({path}); nothing was added to the scene.")
        recon = volume_node_from_image(scene, sitk.ReadImage(str(recon_path)), f"{run_name} reconstruction")
        created.append(recon)
        _copy_window_level(input_node, recon)
        heat_image = sitk.Cast(sitk.ReadImage(str(outputs["heatmap.nii.gz"])), sitk.sitkFloat32)
        heat = volume_node_from_image(scene, heat_image, f"{run_name} heatmap")
        created.append(heat)
        color, new_color = _heatmap_color_node(scene)
        if new_color:
            created.append(color)
        hd = heat.GetDisplayNode()
        hd.SetAndObserveColorNodeID(color.GetID())
        hmax = float(sitk.GetArrayViewFromImage(heat_image).max()) or 1.0
        hd.SetAutoWindowLevel(False)
        hd.SetWindowLevelMinMax(0.0, hmax)
        hd.SetApplyThreshold(True)
        hd.SetLowerThreshold(float(attributes.get("threshold", "0") or 0) * 0.5)
        hd.SetUpperThreshold(hmax)
        legend = add_color_legend(scene, heat, "Anomaly score")
        if legend is not None:
            created.append(legend)
        seg = lesion_segmentation(scene, outputs["lesions.nii.gz"], lesions, organ, input_node, f"{run_name} lesions")
        created.append(seg)
        extra = {}
        unc_name = "uncertainty.nii.gz" if reconstruction_file == "reconstruction.nii.gz" else \
            reconstruction_file.replace("reconstruction_", "uncertainty_")
        if outputs.get(unc_name):
            extra["uncertainty"] = _uncertainty_volume(scene, outputs[unc_name], f"{run_name} uncertainty", created)
        if outputs.get("trajectory.seq.nrrd"):
            extra.update(_trajectory_sequence(scene, outputs["trajectory.seq.nrrd"], input_node,
                                              f"{run_name} trajectory", created))
        transform_id = input_node.GetTransformNodeID() if input_node is not None else None
        for node in (recon, heat, seg, *extra.values()):
            _set_attributes(node, attributes)
            if transform_id:  # same local grid as the input, so the same parent transform places it in the world
                node.SetAndObserveTransformNodeID(transform_id)
        parent = sh.GetItemParent(sh.GetItemByDataNode(input_node)) if input_node is not None else 0
        folder = sh.CreateFolderItem(parent or sh.GetSceneItemID(), run_name)
        for key, value in attributes.items():
            sh.SetItemAttribute(folder, ATTRIBUTE_PREFIX + key, value)
        for node in (recon, heat, seg, *extra.values()):
            _place_in_folder(sh, node, folder)
        return ResultNodes(folder, recon, heat, seg, created, **extra)
    except BaseException:
        if folder:
            sh.RemoveItem(folder, False, False)
        _remove_nodes_added_since(scene, before)  # created nodes and their display nodes
        raise


def _uncertainty_volume(scene, path: str, name: str, created: list):
    """The uncertainty map as a volume with its own colour table (0 .. its 99.5th percentile inside the ROIs)."""
    image = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
    node = volume_node_from_image(scene, image, name)
    created.append(node)
    color, new_color = _uncertainty_color_node(scene)
    if new_color:
        created.append(color)
    values = sitk.GetArrayViewFromImage(image)
    top = float(np.percentile(values[values > 0], 99.5)) if np.any(values > 0) else 1.0
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(color.GetID())
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, top)
    legend = add_color_legend(scene, node, "Uncertainty (SD)")
    if legend is not None:
        created.append(legend)
    return node


def sequences_logic(scene):
    """Slicer's Sequences module logic (in Slicer), else one made for ``scene`` (a bare MRML scene): it registers
    the sequence node classes and keeps a browser's proxy node up to date."""
    import slicer

    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "sequences"):
        return modules.sequences.logic()
    known = _SEQUENCE_LOGICS.get(id(scene))
    if known is None or known[0] is not scene:
        logic = slicer.vtkSlicerSequencesLogic()
        logic.SetMRMLScene(scene)
        known = _SEQUENCE_LOGICS[id(scene)] = (scene, logic)
    return known[1]


_SEQUENCE_LOGICS: dict[int, tuple] = {}


def _trajectory_sequence(scene, path: str, input_node, name: str, created: list) -> dict:
    """``trajectory.seq.nrrd`` read by Slicer's own volume-sequence reader into a sequence node, with a sequence
    browser (at the last frame) whose proxy volume has the input's window/level."""
    logic = sequences_logic(scene)
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    created.append(sequence)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeSequenceStorageNode")
    try:
        storage.SetFileName(str(path))
        if not storage.ReadData(sequence) or sequence.GetNumberOfDataNodes() == 0:
            raise InputError(f"{path}: could not read the trajectory as a volume sequence")
    finally:  # the file lives in the run's folder, which may be temporary: the scene keeps the frames themselves
        scene.RemoveNode(storage)
    sequence.SetName(name)
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
    created.append(browser)
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    browser.SetSelectedItemNumber(sequence.GetNumberOfDataNodes() - 1)
    logic.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(sequence)
    if proxy is None:
        raise InputError(f"{path}: the sequence browser made no volume for the trajectory")
    created.append(proxy)
    proxy.SetName(f"{name} (current step)")
    if proxy.GetDisplayNode() is None:
        proxy.CreateDefaultDisplayNodes()
    _copy_window_level(input_node, proxy)
    show_sequence_browser(browser)
    return {"trajectory": sequence, "browser": browser, "trajectory_proxy": proxy}


def show_sequence_browser(browser) -> bool:
    """Show ``browser`` in Slicer's sequence browser toolbar: a new browser node gets no toolbar unless the importer
    asks (``qSlicerSequencesModule::showSequenceBrowser``, Slicer's ``qSlicerSequencesModule.h``). False outside
    Slicer (no Sequences module) or when the user turned the toolbar's auto-show off."""
    import slicer

    module = getattr(getattr(slicer, "modules", None), "sequences", None)
    show = getattr(module, "showSequenceBrowser", None)
    return bool(show(browser)) if show is not None else False


def lesion_segmentation(scene, labelmap_path: str | os.PathLike, lesions: Sequence[dict], organ: str,
                        reference_node, name: str):
    """A segmentation node with one segment per lesion: "Lesion k — x ml", coloured, terminology-tagged.

    The reference image geometry is the input volume's, so DICOM SEG export works.
    """
    import slicer

    from DiffusionAnomalyLib.imaging.segfile import PALETTE, terminology_tag

    image = sitk.ReadImage(str(labelmap_path))
    labels = sitk.GetArrayViewFromImage(image)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    try:
        seg.CreateDefaultDisplayNodes()
        if reference_node is not None:
            seg.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
        by_id = {int(row["id"]): row for row in lesions}
        present = sorted(int(v) for v in np.unique(labels) if v)
        if present:
            logic = slicer.vtkSlicerSegmentationsModuleLogic  # static methods
            with scratch_nodes(scene):
                labelmap = volume_node_from_image(scene, sitk.Cast(image, sitk.sitkInt16), "da-temporary-lesions",
                                                  "vtkMRMLLabelMapVolumeNode")
                if not logic.ImportLabelmapToSegmentationNode(labelmap, seg):
                    raise InputError(f"Could not import the lesion labelmap {labelmap_path}")
        segmentation = seg.GetSegmentation()
        if segmentation.GetNumberOfSegments() != len(present):
            raise InputError(f"{labelmap_path}: {len(present)} lesion labels became "
                             f"{segmentation.GetNumberOfSegments()} segments")
        for i, label in enumerate(present):
            segment = segmentation.GetNthSegment(i)
            row = by_id.get(label, {})
            ml = float(row.get("volume_ml", np.count_nonzero(labels == label) * np.prod(image.GetSpacing()) / 1000))
            segment.SetName(f"Lesion {label} — {ml:.1f} ml")
            segment.SetColor(*PALETTE[(label - 1) % len(PALETTE)])
            segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(),
                           terminology_tag(organ, str(row.get("side", ""))))
            segment.SetTag("DiffusionAnomaly.label", str(label))
            for key in ("max_score", "axial_diameter_mm", "size_class"):
                if key in row:
                    segment.SetTag(f"DiffusionAnomaly.{key}", str(row[key]))
        return seg
    except BaseException:
        for node in [seg.GetDisplayNode(), seg]:
            if node is not None:
                scene.RemoveNode(node)
        raise


def add_synthesis(scene, input_nodes: Sequence, case: dict, name: str, organ: str) -> tuple[list, object]:
    """Add a synthesised case (the worker's ``synthesize`` result: ``images`` channel -> path, ``lesions``, ``record``)
    next to ``input_nodes``: one new volume per channel (the input's window/level and parent transform) and a
    segmentation of the synthesised lesions, tagged with the record. All or nothing. Returns (volumes, truth)."""
    import slicer

    record, before, volumes = case["record"], _node_ids(scene), []
    try:
        channels = list(case["images"])
        for channel, source in zip(channels, input_nodes, strict=True):
            node = volume_node_from_image(scene, sitk.ReadImage(case["images"][channel]),
                                          name if len(channels) == 1 else f"{name} {channel}")
            _copy_window_level(source, node)
            volumes.append(node)
        rows = [{"id": le["id"], "volume_ml": le["volume_ml"]} for le in record["lesions"]]
        truth = lesion_segmentation(scene, case["lesions"], rows, organ, volumes[0], f"{name} truth")
        for k, le in enumerate(record["lesions"]):
            truth.GetSegmentation().GetNthSegment(k).SetName(
                f"Synthesised lesion {le['id']} ({le['kind']}) — {le['volume_ml']:.1f} ml")
        attributes = {"synthesis": json.dumps({k: record[k] for k in ("method", "seed", "lesions") if k in record}),
                      "synthesized_from": input_nodes[0].GetID()}
        transform_id = input_nodes[0].GetTransformNodeID()
        sh = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
        parent = sh.GetItemParent(sh.GetItemByDataNode(input_nodes[0])) or sh.GetSceneItemID()
        for node in (*volumes, truth):
            _set_attributes(node, attributes)
            if transform_id:  # the input's local grid: the same parent transform places it in the world
                node.SetAndObserveTransformNodeID(transform_id)
            _place_in_folder(sh, node, parent)
        return volumes, truth
    except BaseException:
        _remove_nodes_added_since(scene, before)
        raise
