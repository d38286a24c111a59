"""The Slicer self-test's case: a kidney phantom in the scene with its organ segmentation, the demo bundle chosen,
and the checks on what the run added. Torch-free (phantoms need numpy, scipy and SimpleITK, which Slicer ships),
so the self-test builds its case in Slicer's own process and only the run goes to the worker."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

#: Phantom seed of the self-test and of ``diffusion-anomaly demo``: a typical held-out case of the kidney demo
#: bundle (which was trained on seeds >= 100000).
SELF_TEST_SEED = 1000


@dataclass
class SelfTestCase:
    phantom: object  # phantoms.PhantomCase
    segmentation: object  # vtkMRMLSegmentationNode with kidney_left / kidney_right


def prepare(scene, pn, seed: int = SELF_TEST_SEED) -> SelfTestCase:
    """Add the phantom CT and its kidney segmentation to ``scene`` and set ``pn`` (the module's parameter node) to
    run the shipped kidney demo bundle on them (its recommended settings, on the CPU)."""
    import slicer

    from DiffusionAnomalyLib.models.bundle import available_bundles
    from DiffusionAnomalyLib.slicer_module import scene as adapter
    from DiffusionAnomalyLib.slicer_module.panel import bundle_defaults
    from DiffusionAnomalyLib.synthetic.phantoms import make_phantom

    case = make_phantom("kidney", seed=seed)
    ct = adapter.volume_node_from_image(scene, case.channels["ct"], "phantom CT")
    organs = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "organs")
    organs.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    with adapter.scratch_nodes(scene, keep=[organs]):
        for name in ("kidney_left", "kidney_right"):
            lab = adapter.volume_node_from_image(scene, case.organ_masks[name], name, "vtkMRMLLabelMapVolumeNode")
            slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lab, organs)
            seg = organs.GetSegmentation()
            seg.GetNthSegment(seg.GetNumberOfSegments() - 1).SetName(name)
    demo = [b for b in available_bundles("kidney") if b.meta.demo]
    if not demo:
        raise FileNotFoundError("the kidney demo bundle is missing from Resources/Models")
    with slicer.util.NodeModify(pn.parameterNode):
        pn.inputVolume, pn.organ, pn.maskSource, pn.maskSegmentation = ct, "kidney", "segmentation", organs
        pn.bundlePath, pn.device = str(demo[0].path), "cpu"
        for name, value in bundle_defaults(pn.bundlePath).items():
            setattr(pn, name, value)
    return SelfTestCase(case, organs)


def run(logic, pn, timeout_s: float = 600.0) -> list[str]:
    """The whole self-test through the module's Logic: prepare the case, install what the worker needs (running
    the self-test is the consent), run, check. Returns the problems (empty: passed)."""
    import slicer

    case = prepare(slicer.mrmlScene, pn)
    problems = logic.problems(pn)
    if problems:
        return [f"the panel refuses the self-test case: {problems}"]
    if not logic.ensureDependencies(pn, ask=False):
        return ["the worker's packages could not be installed"]
    finished = []
    logic.start(pn, lambda event: None, finished.append)
    logic.wait(timeout_s)
    if finished[0].error is not None:
        return [f"the run failed: {finished[0].error}"]
    return check(case, pn.inputVolume, finished[0].result_nodes)


def check(case: SelfTestCase, ct, result) -> list[str]:
    """What is wrong with a run's results (empty when all is well): on the input's grid, named lesion segments,
    at least one overlapping an inserted lesion."""
    import slicer

    from DiffusionAnomalyLib.slicer_module import scene as adapter

    if result is None:
        return ["the run added no results to the scene"]
    out = []
    for node in (result.reconstruction, result.heatmap):
        if node.GetImageData().GetDimensions() != ct.GetImageData().GetDimensions():
            out.append(f"{node.GetName()}: not the input's size")
        if not np.allclose(adapter._ijk_to_ras(node), adapter._ijk_to_ras(ct), atol=1e-6):
            out.append(f"{node.GetName()}: not on the input's grid")
    truth = sitk.GetArrayFromImage(case.phantom.lesion_labels) > 0
    segmentation = result.lesions.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        return out + ["no lesion segment"]
    hits = 0
    for i in range(segmentation.GetNumberOfSegments()):
        sid = segmentation.GetNthSegmentID(i)
        if not segmentation.GetSegment(sid).GetName().startswith("Lesion "):
            out.append(f"segment {segmentation.GetSegment(sid).GetName()!r} is not named 'Lesion ...'")
        voxels = slicer.util.arrayFromSegmentBinaryLabelmap(result.lesions, sid, ct) > 0
        hits += int((voxels & truth).any())
    if not hits:
        out.append("no lesion segment overlaps an inserted lesion")
    return out
