"""lesions.seg.nrrd read back by Slicer's own segmentation storage node (slicer-core, a real MRML scene)."""

import numpy as np
import pytest
import SimpleITK as sitk

from DiffusionAnomalyLib.anomaly import lesion_table
from DiffusionAnomalyLib.segfile import segment_name, write_seg_nrrd

slicer = pytest.importorskip("slicer", reason="slicer-core is part of the test extra")


def _read_segmentation(path):
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node.GetSegmentation()


def test_slicer_reads_one_named_coloured_tagged_segment_per_lesion(tmp_path):
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    arr = np.zeros((20, 30, 40), np.uint16)
    arr[2:6, 3:9, 4:10] = 1
    arr[10:15, 10:20, 20:30] = 2
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.9, 2.0))
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    sides = {"left": np.zeros(arr.shape, bool), "right": np.zeros(arr.shape, bool)}
    sides["left"][arr == 1] = True
    sides["right"][arr == 2] = True
    table = lesion_table(arr, arr.astype(float), img, "kidney", sides)
    seg = _read_segmentation(write_seg_nrrd(img, table, tmp_path / "lesions.seg.nrrd"))
    assert seg.GetNumberOfSegments() == 2
    for i, le in enumerate(table):
        s = seg.GetNthSegment(i)
        assert s.GetName() == segment_name(le) == f"Lesion {le.id} — {le.volume_ml:.1f} ml"
        assert s.GetLabelValue() == le.id
        tag = vtk.mutable("")
        assert s.GetTag("TerminologyEntry", tag)
        assert "Mass" in str(tag) and "Kidney" in str(tag) and le.side.capitalize() in str(tag)
        rep = s.GetRepresentation("Binary labelmap")
        values = vtk_to_numpy(rep.GetPointData().GetScalars())
        assert int((values == le.id).sum()) == le.voxels
    assert seg.GetNthSegment(0).GetColor() != seg.GetNthSegment(1).GetColor()
    # geometry: the labelmap's IJK-to-RAS equals the image's (LPS -> RAS flips x and y)
    rep = seg.GetNthSegment(0).GetRepresentation("Binary labelmap")
    m = vtk.vtkMatrix4x4()
    rep.GetImageToWorldMatrix(m)
    origin_ras = [m.GetElement(r, 3) for r in range(3)]
    assert origin_ras == pytest.approx([-10.0, 20.0, 30.0])


def test_no_lesions_gives_an_empty_segmentation(tmp_path):
    img = sitk.Image([4, 4, 4], sitk.sitkUInt16)
    seg = _read_segmentation(write_seg_nrrd(img, [], tmp_path / "empty.seg.nrrd"))
    assert seg.GetNumberOfSegments() == 0
