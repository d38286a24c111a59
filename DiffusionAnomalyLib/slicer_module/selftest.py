"""The Slicer self-test: a kidney phantom in the scene with its organ segmentation, run through the panel's Logic
and the worker, and the checks on what each run added.

Offline and install-free, as Slicer's extension CI runs it: first the non-neural median baseline on Slicer's own
Python (numpy, SciPy, SimpleITK: nothing to install, seconds); then the shipped kidney demo bundle, only where the
worker's interpreter already has its packages (else skipped, with the reason logged) — the self-test never installs
anything and opens no connection. Torch-free: the case is built in Slicer's own process, the runs go to the worker."""

from __future__ import annotations

from collections.abc import Callable
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


def prepare(scene, pn, seed: int = SELF_TEST_SEED, model: bool = True) -> SelfTestCase:
    """Add the phantom CT and its kidney segmentation to ``scene`` and set ``pn`` (the module's parameter node) to
    run the shipped kidney demo bundle on them (its recommended settings, on the CPU), or with ``model`` False the
    median baseline."""
    import slicer

    from DiffusionAnomalyLib.slicer_module import scene as adapter
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
    with slicer.util.NodeModify(pn.parameterNode):
        pn.inputVolume, pn.organ, pn.maskSource, pn.maskSegmentation = ct, "kidney", "segmentation", organs
        pn.device = "cpu"
    choose(pn, demo_bundle() if model else None)
    return SelfTestCase(case, organs)


def demo_bundle() -> str:
    """The shipped kidney demo bundle's folder (FileNotFoundError when it is missing)."""
    from DiffusionAnomalyLib.models.bundle import available_bundles

    demo = [b for b in available_bundles("kidney") if b.meta.demo]
    if not demo:
        raise FileNotFoundError("the kidney demo bundle is missing from Resources/Models")
    return str(demo[0].path)


def choose(pn, bundle: str | None) -> None:
    """Set ``pn`` to run ``bundle`` with its recommended settings and threshold, or (None) the median baseline."""
    import slicer

    from DiffusionAnomalyLib.slicer_module.panel import BASELINE, bundle_defaults

    with slicer.util.NodeModify(pn.parameterNode):
        pn.bundlePath, pn.thresholdMode = bundle or BASELINE, "bundle"
        for name, value in (bundle_defaults(bundle) if bundle else {}).items():
            setattr(pn, name, value)


def run(logic, pn, timeout_s: float = 600.0, log: Callable[[str], None] = print) -> list[str]:
    """The whole self-test through the module's Logic; returns the problems (empty: passed).

    1. The median baseline on Slicer's own Python: prepare the case, run, check.
    2. The kidney demo bundle, only if the worker's interpreter already has every package it needs; otherwise
       ``log`` says why it is skipped. Nothing is installed (``ensureDependencies`` is never called).
    """
    import slicer

    from DiffusionAnomalyLib.app.dependencies import missing_packages
    from DiffusionAnomalyLib.slicer_module.panel import worker_python
    from DiffusionAnomalyLib.slicer_module.worker_run import worker_environment

    case = prepare(slicer.mrmlScene, pn, model=False)
    problems = _run_and_check(logic, pn, case, timeout_s, "median baseline")
    try:
        choose(pn, demo_bundle())
    except FileNotFoundError as exc:
        log(f"DiffusionAnomaly self-test: model part skipped: {exc}")
        return problems
    python, own = worker_python(pn)
    missing = missing_packages(python, None, worker_environment(own)) if python else ["a Python interpreter"]
    if missing:
        log(f"DiffusionAnomaly self-test: model part skipped: the worker's Python ({python or 'none'}) lacks "
            f"{', '.join(missing)}; the self-test installs nothing (Apply offers the install)")
        return problems
    return problems + _run_and_check(logic, pn, case, timeout_s, "kidney demo bundle")


def _run_and_check(logic, pn, case: SelfTestCase, timeout_s: float, what: str) -> list[str]:
    problems = logic.problems(pn)
    if problems:
        return [f"{what}: the panel refuses the self-test case: {problems}"]
    finished = []
    logic.start(pn, lambda event: None, finished.append)
    logic.wait(timeout_s)
    if finished[0].error is not None:
        return [f"{what}: the run failed: {finished[0].error}"]
    return [f"{what}: {p}" for p in check(case, pn.inputVolume, finished[0].result_nodes)]


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
