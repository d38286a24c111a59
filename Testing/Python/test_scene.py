"""The scene adapter and the GUI-independent run logic on a real ``vtkMRMLScene`` (the slicer-core wheel).

Nothing here is faked: volumes, segmentations, colour and legend nodes and the subject hierarchy are
Slicer's own classes, and runs go through the real worker process with a (tiny, untrained) bundle.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image, oblique_direction
from helpers import lesion_centre_ras, read_volume_sequence

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install -e .[test])")

from DiffusionAnomalyLib.errors import DiffusionAnomalyError, InputError  # noqa: E402
from DiffusionAnomalyLib.slicer_module import scene as adapter  # noqa: E402
from DiffusionAnomalyLib.slicer_module.scene_run import RunRequest, SceneRun  # noqa: E402


def _scene():
    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    return scene


def _node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _ijk_to_ras(node) -> np.ndarray:
    return adapter._ijk_to_ras(node)


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1), oblique_direction()],
                         ids=["lps", "ras", "oblique"])
def test_volume_round_trip_keeps_voxels_and_geometry(direction):
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1000, size=(7, 9, 11)).astype(np.int16)
    image = make_image(arr, spacing=(0.8, 1.1, 2.5), origin=(-12.5, 30.0, 7.0), direction=direction)
    scene = _scene()
    node = adapter.volume_node_from_image(scene, image, "ct")
    m = _ijk_to_ras(node)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    expected = lps_to_ras @ np.array(direction, dtype=float).reshape(3, 3) * np.array([0.8, 1.1, 2.5])
    np.testing.assert_allclose(m[:3, :3], expected, atol=1e-9)
    np.testing.assert_allclose(m[:3, 3], lps_to_ras @ np.array([-12.5, 30.0, 7.0]), atol=1e-9)
    # voxel (i, j, k) = (3, 4, 5) has the same world position in both worlds
    lps = np.array(image.TransformIndexToPhysicalPoint((3, 4, 5)))
    np.testing.assert_allclose((m @ [3, 4, 5, 1])[:3], lps_to_ras @ lps, atol=1e-9)
    back = adapter.image_from_volume_node(node)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing())
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-9)


def test_unusable_volumes_are_explained():
    scene = _scene()
    assert adapter.volume_node_problem(None) == "Select an input volume."
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    assert "holds no voxels" in adapter.volume_node_problem(empty)
    flat = adapter.volume_node_from_image(scene, make_image(np.zeros((1, 8, 8), np.int16)), "slice")
    assert "is 2D (8 x 8 x 1 voxels)" in adapter.volume_node_problem(flat)
    with pytest.raises(InputError, match="2D"):
        adapter.image_from_volume_node(flat)
    rgb = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
    import vtk

    data = vtk.vtkImageData()
    data.SetDimensions(4, 4, 4)
    data.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    rgb.SetAndObserveImageData(data)
    assert "3 components per voxel" in adapter.volume_node_problem(rgb)


def test_mri_channels_on_different_grids_are_refused():
    scene = _scene()
    a = adapter.volume_node_from_image(scene, make_image(np.zeros((8, 8, 8), np.float32)), "t1n")
    b = adapter.volume_node_from_image(scene, make_image(np.zeros((8, 8, 8), np.float32), spacing=(1, 1, 2)), "t2w")
    names = ["t1n", "t1c", "t2w", "t2f"]
    assert "wants 4 channel(s)" in adapter.channel_nodes_problem([a, b], names)
    assert "not on the grid of 't1n'" in adapter.channel_nodes_problem([a, b], ["t1n", "t2w"])
    assert adapter.channel_nodes_problem([a, a], ["t1n", "t2w"]) == ""


def test_the_channel_grid_check_copies_no_voxels(monkeypatch):
    # the panel runs it on every change of a setting: geometry only, never the volumes
    scene = _scene()
    a = adapter.volume_node_from_image(scene, make_image(np.zeros((8, 8, 8), np.float32)), "t1n")
    b = adapter.volume_node_from_image(scene, make_image(np.zeros((8, 8, 8), np.float32), origin=(0, 0, 1)), "t2w")
    c = adapter.volume_node_from_image(scene, make_image(np.zeros((8, 8, 9), np.float32)), "t2f")

    def copying(node):
        raise AssertionError("voxels copied")

    monkeypatch.setattr(adapter, "image_from_volume_node", copying)
    assert "spacing, origin or direction differ" in adapter.channel_nodes_problem([a, b], ["t1n", "t2w"])
    assert "size (8, 8, 8) vs (9, 8, 8)" in adapter.channel_nodes_problem([a, c], ["t1n", "t2f"])
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    b2 = adapter.volume_node_from_image(scene, make_image(np.zeros((8, 8, 8), np.float32)), "t2w moved")
    b2.SetAndObserveTransformNodeID(transform.GetID())
    assert "different parent transforms" in adapter.channel_nodes_problem([a, b2], ["t1n", "t2w"])


def _organ_segmentation(scene, case_dir, reference):
    """A segmentation node made from the phantom's TotalSegmentator-style files, as a user would have."""
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "organs")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    logic = slicer.vtkSlicerSegmentationsModuleLogic  # static methods
    for name in ("kidney_left", "kidney_right", "liver"):
        lab = adapter.volume_node_from_image(scene, sitk.ReadImage(str(case_dir / "segmentations" / f"{name}.nii.gz")),
                                             name, "vtkMRMLLabelMapVolumeNode")
        logic.ImportLabelmapToSegmentationNode(lab, seg)
        seg.GetSegmentation().GetNthSegment(seg.GetSegmentation().GetNumberOfSegments() - 1).SetName(name)
        scene.RemoveNode(lab)
    return seg


def test_organ_segments_are_found_by_name_and_exported_on_the_input_grid(kidney_case):
    _, folder = kidney_case
    scene = _scene()
    ct = adapter.volume_node_from_image(scene, sitk.ReadImage(str(folder / "ct.nii.gz")), "CT")
    seg = _organ_segmentation(scene, folder, ct)
    ids = adapter.organ_segment_ids(seg, "kidney")
    names = [seg.GetSegmentation().GetSegment(i).GetName() for i in ids]
    assert names == ["kidney_left", "kidney_right"]
    assert [seg.GetSegmentation().GetSegment(i).GetName() for i in adapter.organ_segment_ids(seg, "liver")] == ["liver"]
    before = _node_ids(scene)
    mask = adapter.mask_from_segments(scene, seg, ids, ct)
    assert _node_ids(scene) == before  # the temporary labelmap is gone
    ref = sitk.ReadImage(str(folder / "ct.nii.gz"))
    assert mask.GetSize() == ref.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), ref.GetOrigin(), atol=1e-6)
    truth = (sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "segmentations" / "kidney_left.nii.gz"))) > 0) | (
        sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "segmentations" / "kidney_right.nii.gz"))) > 0)
    got = sitk.GetArrayFromImage(mask)
    np.testing.assert_array_equal(got > 0, truth)
    assert set(np.unique(got)) == {0, 1, 2}
    with pytest.raises(InputError, match="No organ segment"):
        adapter.mask_from_segments(scene, seg, [], ct)


def _request(bundle, organ="kidney", mask_source="segmentation", threshold_mode="otsu", threshold=0.0,
             **settings) -> RunRequest:
    """A request as the panel makes one (threshold mode and value as its two widgets hold them)."""
    base = dict(sampler="ddim", noise_level=50, steps=5, guidance=0.0, device="cpu")
    chosen = {**base, **settings, "threshold": threshold_mode if threshold_mode != "fixed" else threshold}
    return RunRequest(organ=organ, bundle=str(bundle), settings=chosen, mask_source=mask_source)


def test_run_request_problems_and_the_workers_request(tiny_bundle, tmp_path):
    from DiffusionAnomalyLib.api import DetectRequest

    req = _request(tiny_bundle)
    assert req.problems() == []
    request = req.detect_request(["a.nii"], tmp_path / "out", "m.nii")
    assert (request.bundle, request.images, request.mask, request.overview) == (str(tiny_bundle), ("a.nii",),
                                                                               "m.nii", False)
    assert request.settings == {**req.run_settings().to_dict(), "threshold": "otsu"}  # resolved once, every field
    assert DetectRequest.from_json(json.loads(json.dumps(request.to_json()))) == request  # what the worker reads
    # a bundle for another organ, nonsense settings, a mask-less kidney: each named
    liver = _request(tiny_bundle, organ="liver")
    assert any("is for the kidney, not the liver" in p for p in liver.problems())
    bad = _request(tiny_bundle, noise_level=0, steps=0, guidance=-1, threshold_mode="fixed", threshold=-0.5,
                   mask_source="none")
    text = " ".join(bad.problems())
    for part in ("Noise level L must be in 1..999", "Guidance strength must be a finite number >= 0",
                 "fixed threshold must be a finite number >= 0", "needs an organ mask"):
        assert part in text
    assert any("No model bundle" in p for p in _request("").problems())
    with pytest.raises(InputError, match="No organ mask"):
        req.detect_request(["a.nii"], tmp_path, None)


def test_run_request_resolves_the_panel_values_over_the_bundle(tiny_bundle):
    s = _request(tiny_bundle).run_settings()  # reference, samples, median filter: None = the bundle's
    assert (s.sampler, s.noise_level, s.steps, s.threshold) == ("ddim", 50, 5, None)
    s = _request(tiny_bundle, reference="autoencoder", samples=4, median_filter=5, threshold_mode="fixed",
                 threshold=0.2).run_settings()
    assert (s.reference, s.samples, s.median_filter, s.threshold) == ("autoencoder", 4, 5, 0.2)
    bad = " ".join(_request(tiny_bundle, reference="blur", samples=0, median_filter=-1).problems())
    for part in ("Unknown map reference 'blur'", "Samples must be in 1..64 (got 0)", "must be in 0..15 (got -1)"):
        assert part in bad


@pytest.fixture(scope="module")
def run_scene(kidney_case, tiny_bundle, tmp_path_factory):
    """A scene with the phantom CT in a patient folder and one finished run (real worker process)."""
    _, folder = kidney_case
    scene = _scene()
    sh = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    ct = adapter.volume_node_from_image(scene, sitk.ReadImage(str(folder / "ct.nii.gz")), "CT")
    ct.GetDisplayNode().SetAutoWindowLevel(False)
    ct.GetDisplayNode().SetWindowLevel(400, 40)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    sh.CreateItem(patient, ct)  # what Slicer's subject-hierarchy plugins do when a volume is loaded
    seg = _organ_segmentation(scene, folder, ct)
    events = []
    ct_before = sitk.GetArrayFromImage(adapter.image_from_volume_node(ct))
    out = tmp_path_factory.mktemp("scene-run") / "out"
    run = SceneRun(scene, _request(tiny_bundle), [ct], seg, adapter.organ_segment_ids(seg, "kidney"),
                   on_event=events.append, output_dir=out)
    run.start()
    tmp = run.tmp
    run.wait(300)
    return dict(scene=scene, sh=sh, ct=ct, seg=seg, run=run, events=events, patient=patient, tmp=tmp,
                ct_before=ct_before, folder=folder, out=out)


def test_a_run_adds_its_results_in_a_folder_next_to_the_input(run_scene):
    run, sh, ct = run_scene["run"], run_scene["sh"], run_scene["ct"]
    assert run.error is None, run.error
    assert run.finished and not run_scene["tmp"].exists()  # private inputs removed
    kinds = [e["event"] for e in run_scene["events"]]
    assert kinds[0] == "started" and kinds[-1] == "result"
    res = run.result_nodes
    assert sh.GetItemParent(res.folder_item) == run_scene["patient"]
    assert sh.GetItemName(res.folder_item) == run.name
    for node in (res.reconstruction, res.heatmap, res.lesions):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == res.folder_item
    # geometry of the pushed volumes = the input's (IJK-to-RAS, dimensions)
    for node in (res.reconstruction, res.heatmap):
        np.testing.assert_allclose(_ijk_to_ras(node), _ijk_to_ras(ct), atol=1e-6)
        assert node.GetImageData().GetDimensions() == ct.GetImageData().GetDimensions()
    # the reconstruction keeps the input's window/level; the heatmap has the colour table and a legend
    assert res.reconstruction.GetDisplayNode().GetWindow() == pytest.approx(400)
    hd = res.heatmap.GetDisplayNode()
    assert hd.GetColorNode().GetName() == adapter.HEATMAP_COLOR_NAME
    legends = [res.heatmap.GetNthDisplayNode(i) for i in range(res.heatmap.GetNumberOfDisplayNodes())]
    assert any(d.IsA("vtkMRMLColorLegendDisplayNode") for d in legends)
    # the input volume is untouched
    np.testing.assert_array_equal(sitk.GetArrayFromImage(adapter.image_from_volume_node(ct)), run_scene["ct_before"])


def test_heatmap_values_and_segments_match_the_files(run_scene):
    res, scene, out = run_scene["run"].result_nodes, run_scene["scene"], run_scene["out"]
    heat_file = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "heatmap.nii.gz")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(adapter.image_from_volume_node(res.heatmap)), heat_file)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "lesions.nii.gz")))
    table = json.loads((out / "lesions.json").read_text())["lesions"]
    ids = [int(v) for v in np.unique(labels) if v]
    assert ids, "the untrained model should still flag something in a phantom with lesions"
    segmentation = res.lesions.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(ids) == len(table)
    tag_name = slicer.vtkSegment.GetTerminologyEntryTagName()
    for i, (label, row) in enumerate(zip(ids, table, strict=True)):
        segment = segmentation.GetNthSegment(i)
        assert segment.GetName() == f"Lesion {label} — {row['volume_ml']:.1f} ml"
        np.testing.assert_allclose(segment.GetColor(), adapter_palette(label))
        tag = adapter.segment_tag(segment, tag_name)
        assert "SCT^4147007^Mass" in tag and ("Right" in tag or "Left" in tag), tag
        assert adapter.segment_tag(segment, "DiffusionAnomaly.label") == str(label)
    # voxel counts per segment, exported back onto the input grid, equal the labelmap's
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    lab = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "check")
    logic.ExportAllSegmentsToLabelmapNode(res.lesions, lab, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    exported = sitk.GetArrayFromImage(adapter.image_from_volume_node(lab))
    scene.RemoveNode(lab)
    assert exported.shape == labels.shape
    assert [int(np.count_nonzero(exported == k + 1)) for k in range(len(ids))] == [
        int(np.count_nonzero(labels == v)) for v in ids]
    # DICOM SEG export needs the reference geometry of the input
    ref = res.lesions.GetNodeReference(res.lesions.GetReferenceImageGeometryReferenceRole())
    assert ref is not None and ref.GetID() == run_scene["ct"].GetID()


def adapter_palette(label: int):
    from DiffusionAnomalyLib.imaging.segfile import PALETTE

    return PALETTE[(label - 1) % len(PALETTE)]


def test_attributes_hold_the_run_parameters(run_scene):
    res = run_scene["run"].result_nodes
    for node in (res.reconstruction, res.heatmap, res.lesions):
        assert node.GetAttribute("DiffusionAnomaly.sampler") == "ddim"
        assert node.GetAttribute("DiffusionAnomaly.noise_level") == "50"
        assert node.GetAttribute("DiffusionAnomaly.organ") == "kidney"
        assert float(node.GetAttribute("DiffusionAnomaly.threshold")) > 0
        assert json.loads(node.GetAttribute("DiffusionAnomaly.timings_s"))["reconstruct"] >= 0
    assert run_scene["sh"].GetItemAttribute(res.folder_item, "DiffusionAnomaly.bundle").endswith("b")


def test_runs_sharing_a_spare_take_the_worker_started_after_the_one_before(run_scene, tiny_bundle):
    # what the panel does (PanelRunner.spare): each run that ends starts the next run's worker, which imports the
    # model code while the user reads the results; the next run takes it instead of starting a process
    from DiffusionAnomalyLib.app.client import SpareWorker

    scene, seg = run_scene["scene"], run_scene["seg"]
    spare = SpareWorker()
    pids = []
    try:
        for seed in (2, 3):
            events = []
            run = SceneRun(scene, _request(tiny_bundle, seed=seed), [run_scene["ct"]], seg,
                           adapter.organ_segment_ids(seg, "kidney"), on_event=events.append)
            run.spare = spare
            waiting = spare.client
            run.start()
            run.wait(300)
            assert run.error is None, run.error
            started = next(e for e in events if e["event"] == "started")
            pids.append(started["pid"])
            if waiting is None:  # the first run starts its own worker
                assert events[0]["event"] == "started"
            else:  # the second takes the spare the first left: it had imported before the run asked
                assert run.client is waiting and events[0]["event"] == "ready" and events[0]["preloaded"]
                assert started["pid"] == waiting.process.pid
            assert spare.client is not None and spare.client.running  # the next one is on its way
        assert pids[0] != pids[1]
    finally:
        left = spare.client
        spare.close()
    assert left.process.poll() is not None


def test_a_second_run_makes_a_new_folder_and_leaves_the_first_untouched(run_scene, tiny_bundle):
    scene, sh, first = run_scene["scene"], run_scene["sh"], run_scene["run"].result_nodes
    heat_before = sitk.GetArrayFromImage(adapter.image_from_volume_node(first.heatmap))
    n_segments = first.lesions.GetSegmentation().GetNumberOfSegments()
    seg = run_scene["seg"]
    run = SceneRun(scene, _request(tiny_bundle, seed=1, sampler="ddpm"), [run_scene["ct"]], seg,
                   adapter.organ_segment_ids(seg, "kidney"))
    run.start()
    run.wait(300)
    assert run.error is None, run.error
    second = run.result_nodes
    assert second.folder_item != first.folder_item
    assert sh.GetItemParent(second.folder_item) == sh.GetItemParent(first.folder_item)
    for node in (first.reconstruction, first.heatmap, first.lesions):
        assert scene.GetNodeByID(node.GetID()) is node
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == first.folder_item
    np.testing.assert_array_equal(sitk.GetArrayFromImage(adapter.image_from_volume_node(first.heatmap)), heat_before)
    assert first.lesions.GetSegmentation().GetNumberOfSegments() == n_segments
    assert second.heatmap.GetAttribute("DiffusionAnomaly.sampler") == "ddpm"
    assert first.heatmap.GetAttribute("DiffusionAnomaly.sampler") == "ddim"


def _fresh_scene_with_ct(folder):
    scene = _scene()
    ct = adapter.volume_node_from_image(scene, sitk.ReadImage(str(folder / "ct.nii.gz")), "CT")
    seg = _organ_segmentation(scene, folder, ct)
    return scene, ct, seg


def test_cancel_mid_run_leaves_the_scene_as_it_was(kidney_case, tiny_bundle, tmp_path):
    scene, ct, seg = _fresh_scene_with_ct(kidney_case[1])
    before = _node_ids(scene)
    events = []
    run = SceneRun(scene, _request(tiny_bundle, sampler="ddpm", noise_level=900, steps=900), [ct], seg,
                   adapter.organ_segment_ids(seg, "kidney"), on_event=events.append, output_dir=tmp_path / "out")
    run.start()
    tmp = run.tmp
    import time

    t_end = time.monotonic() + 120
    while not any(e.get("stage") == "reconstruct" for e in events) and time.monotonic() < t_end:
        assert run.poll()
        time.sleep(0.05)
    run.cancel()
    assert run.finished and run.result_nodes is None
    assert run.error is not None and run.error.code == "cancelled"
    assert _node_ids(scene) == before
    assert not tmp.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_input_and_worker_failure_leave_the_scene_as_it_was(kidney_case, tiny_bundle, tmp_path):
    import shutil

    scene, ct, seg = _fresh_scene_with_ct(kidney_case[1])
    before = _node_ids(scene)
    # no organ mask for a kidney
    with pytest.raises(InputError, match="No organ mask"):
        SceneRun(scene, _request(tiny_bundle), [ct], None).start()
    # a bundle for another organ
    with pytest.raises(InputError, match="is for the kidney, not the liver"):
        SceneRun(scene, _request(tiny_bundle, organ="liver"), [ct], seg, ["x"]).start()
    # no volume; a 2D volume
    with pytest.raises(InputError, match="Select an input volume"):
        SceneRun(scene, _request(tiny_bundle), [], seg, ["x"]).start()
    # the worker fails: a weight file does not match its checksum (exit code 3)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    with open(broken / "denoiser.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    run = SceneRun(scene, _request(broken), [ct], seg, adapter.organ_segment_ids(seg, "kidney"))
    run.start()
    run.wait(120)
    assert isinstance(run.error, DiffusionAnomalyError) and run.error.code == "bad_model", run.error
    assert run.result_nodes is None
    assert _node_ids(scene) == before


def test_results_missing_a_file_add_nothing(run_scene, tmp_path):
    scene = run_scene["scene"]
    before = _node_ids(scene)
    out = run_scene["out"]
    outputs = {p.name: str(p) for p in out.iterdir()}
    broken = tmp_path / "heatmap.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(RuntimeError):
        adapter.add_results(scene, run_scene["ct"], {**outputs, "heatmap.nii.gz": str(broken)}, [], "broken", {},
                            "kidney")
    with pytest.raises(InputError, match="lesions output is missing"):
        adapter.add_results(scene, run_scene["ct"], {k: v for k, v in outputs.items() if k != "lesions.nii.gz"}, [],
                            "missing", {}, "kidney")
    assert _node_ids(scene) == before


def test_compare_view_uses_the_scene_slice_views(run_scene):
    scene, res, ct = run_scene["scene"], run_scene["run"].result_nodes, run_scene["ct"]
    layout = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    comps = {}
    for name in ("Red", "Yellow", "Green"):
        comp = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        comp.SetLayoutName(name)
        comps[name] = comp
    adapter.show_compare(scene, ct, res)
    assert layout.GetViewArrangement() == adapter.COMPARE_LAYOUT_ID
    assert comps["Red"].GetBackgroundVolumeID() == ct.GetID()
    assert comps["Yellow"].GetBackgroundVolumeID() == res.reconstruction.GetID()
    assert comps["Green"].GetForegroundVolumeID() == res.heatmap.GetID()
    assert all(c.GetLinkedControl() for c in comps.values())
    centre = lesion_centre_ras(res.lesions, 0)
    assert len(centre) == 3 and all(np.isfinite(centre))


def test_missing_dependencies_and_the_install_command(monkeypatch):
    import importlib.util

    from DiffusionAnomalyLib.app import dependencies

    assert dependencies.missing_packages() == []  # the test environment has everything
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in ("monai", "einops") else real(n, *a))
    missing = dependencies.missing_packages()
    assert missing == ["monai>=1.4", "einops>=0.7"]
    assert dependencies.install_command(missing, "/opt/slicer/bin/PythonSlicer") == (
        "/opt/slicer/bin/PythonSlicer -m pip install 'monai>=1.4' 'einops>=0.7'")


def test_the_worker_python_inside_slicer_is_python_real_not_the_application(tmp_path, monkeypatch):
    from DiffusionAnomalyLib.app import dependencies

    monkeypatch.delenv("DA_WORKER_PYTHON", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    bin_dir = tmp_path / "Slicer-5.12" / "bin"
    bin_dir.mkdir(parents=True)
    launcher = bin_dir / "PythonSlicer"  # sys.executable inside Slicer (Slicer sets it so)
    for name in ("SlicerApp-real", "PythonSlicer", "python-real"):
        (bin_dir / name).write_text("")
    real = str(bin_dir / "python-real")
    assert dependencies.slicer_python(str(launcher)) == real
    assert dependencies.slicer_python("") == ""  # PythonSlicer not on PATH: Slicer sets sys.executable to ""
    # a command typed in a shell goes through the launcher, which sets up the environment python-real needs
    assert dependencies.launcher_for(real) == str(launcher)
    (bin_dir / "python-real").unlink()
    assert dependencies.slicer_python(str(launcher)) == str(launcher)
    (bin_dir / "PythonSlicer").unlink()
    assert dependencies.slicer_python(str(bin_dir / "SlicerApp-real")) == ""  # never the Slicer application
    own = dependencies.slicer_python(str(launcher))
    monkeypatch.setenv("DA_WORKER_PYTHON", "/opt/gpu-env/bin/python")  # chooses another worker, not Slicer's own
    assert dependencies.slicer_python(str(launcher)) == own
    # the manual install hint names that interpreter
    assert dependencies.install_command(["monai>=1.4"], "/opt/gpu-env/bin/python") == (
        "/opt/gpu-env/bin/python -m pip install 'monai>=1.4'")


def test_missing_packages_are_asked_of_the_worker_interpreter_in_a_child_process(tmp_path):
    import sys

    from DiffusionAnomalyLib.app import dependencies

    assert dependencies.missing_packages(sys.executable) == []
    # a Python without the packages: an interpreter started with -S and no site-packages would do, but the
    # simplest real one is a venv without pip packages
    import subprocess
    import venv

    venv.create(tmp_path / "bare", with_pip=False)
    bare = tmp_path / "bare" / "bin" / "python"
    assert subprocess.run([str(bare), "-c", "import sys"]).returncode == 0
    missing = dependencies.missing_packages(str(bare), dependencies.TOTALSEGMENTATOR_REQUIREMENT)
    assert "torch>=2.3,<2.14" in missing and "monai>=1.4" in missing and "TotalSegmentator>=2.4" in missing
    # the median baseline needs none of the model's packages: only TotalSegmentator, when it makes the masks
    assert dependencies.missing_packages(str(bare), model=False) == []
    assert dependencies.missing_packages(str(bare), dependencies.TOTALSEGMENTATOR_REQUIREMENT, model=False) == [
        "TotalSegmentator>=2.4"]
    assert dependencies.missing_packages(str(tmp_path / "no-python")) == list(dependencies.REQUIREMENTS.values())


def test_the_segmentations_logic_is_used_through_its_static_methods(kidney_case, monkeypatch):
    # An instance with a scene re-registers the converter rules in a global list ("already registered" warnings)
    real = slicer.vtkSlicerSegmentationsModuleLogic
    made = []

    class CountingLogic:
        """The real class's static methods; counts instances."""

        ExportSegmentsToLabelmapNode = staticmethod(real.ExportSegmentsToLabelmapNode)
        ImportLabelmapToSegmentationNode = staticmethod(real.ImportLabelmapToSegmentationNode)

        def __new__(cls):
            made.append(cls)
            return real()

    scene, ct, seg = _fresh_scene_with_ct(kidney_case[1])
    monkeypatch.setattr(slicer, "vtkSlicerSegmentationsModuleLogic", CountingLogic)
    mask = adapter.mask_from_segments(scene, seg, adapter.organ_segment_ids(seg, "kidney"), ct)
    lesions = adapter.lesion_segmentation(scene, kidney_case[1] / "lesions.nii.gz", [], "kidney", ct, "lesions")
    assert sitk.GetArrayViewFromImage(mask).any() and lesions.GetSegmentation().GetNumberOfSegments() == 2
    assert made == []


def test_each_kept_run_gets_a_new_folder(tmp_path):
    from DiffusionAnomalyLib.slicer_module.panel import run_output_folder

    name = "CT: kidney/left ddpm L250 s100 14:02:31"
    first = run_output_folder(str(tmp_path), name)
    assert first == str(tmp_path / "CT- kidney-left ddpm L250 s100 14-02-31")  # no separators or colons
    (tmp_path / first).mkdir()
    assert run_output_folder(str(tmp_path), name) == first + " (2)"  # an earlier run's folder is never reused


@pytest.fixture(scope="module")
def trajectory_scene(kidney_case, tiny_bundle, tmp_path_factory):
    """A run that kept its trajectory and drew 2 samples (DDPM, 4 steps: one frame per step), real worker."""
    _, folder = kidney_case
    scene = _scene()
    ct = adapter.volume_node_from_image(scene, sitk.ReadImage(str(folder / "ct.nii.gz")), "CT")
    ct.GetDisplayNode().SetAutoWindowLevel(False)
    ct.GetDisplayNode().SetWindowLevel(400, 40)
    seg = _organ_segmentation(scene, folder, ct)
    out = tmp_path_factory.mktemp("trajectory-run") / "out"
    from DiffusionAnomalyLib.settings import trajectory_every_for

    # as the panel's "Keep the denoising trajectory" asks: about 10 frames, so every step of 4
    request = _request(tiny_bundle, sampler="ddpm", noise_level=40, steps=4, samples=2,
                       trajectory_every=trajectory_every_for(4))
    assert request.run_settings().trajectory_every == 1
    run = SceneRun(scene, request, [ct], seg, adapter.organ_segment_ids(seg, "kidney"), output_dir=out)
    run.start()
    run.wait(300)
    assert run.error is None, run.error
    return dict(scene=scene, ct=ct, run=run, out=out)


def test_the_trajectory_is_a_sequence_on_the_input_grid_with_a_browser(trajectory_scene):
    scene, ct, res = trajectory_scene["scene"], trajectory_scene["ct"], trajectory_scene["run"].result_nodes
    frames, fields, _ = read_volume_sequence(trajectory_scene["out"] / "trajectory.seq.nrrd")
    seq = res.trajectory
    assert seq.IsA("vtkMRMLSequenceNode") and seq.GetNumberOfDataNodes() == 4 == len(frames)
    assert seq.GetIndexName() == "step" and [seq.GetNthIndexValue(i) for i in range(4)] == ["0", "1", "2", "3"]
    levels = fields["DiffusionAnomaly.noise_levels"].split()
    assert levels[0] == "40" and len(levels) == 4 and levels == sorted(levels, key=int, reverse=True)
    for i in range(4):
        frame = seq.GetNthDataNode(i)
        np.testing.assert_allclose(_ijk_to_ras(frame), _ijk_to_ras(ct), atol=1e-6)
        assert frame.GetImageData().GetDimensions() == ct.GetImageData().GetDimensions()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(adapter.image_from_volume_node(frame)), frames[i])
        assert frame.GetAttribute("DiffusionAnomaly.noise_level") == levels[i]
    # the browser starts at the last (healthiest) frame; moving it changes what the proxy volume shows
    browser, proxy = res.browser, res.trajectory_proxy
    assert browser.IsA("vtkMRMLSequenceBrowserNode") and browser.GetNumberOfItems() == 4
    assert browser.GetSelectedItemNumber() == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(adapter.image_from_volume_node(proxy)), frames[3])
    browser.SetSelectedItemNumber(0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(adapter.image_from_volume_node(proxy)), frames[0])
    assert proxy.GetDisplayNode().GetWindow() == pytest.approx(400)
    # the compare layout shows the moving frame in the reconstruction view, the input stays in the others
    layout = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    comps = {}
    for name in ("Red", "Yellow", "Green"):
        comps[name] = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        comps[name].SetLayoutName(name)
    adapter.show_compare(scene, ct, res)
    assert layout.GetViewArrangement() == adapter.COMPARE_LAYOUT_ID
    assert comps["Yellow"].GetBackgroundVolumeID() == proxy.GetID()
    assert comps["Red"].GetBackgroundVolumeID() == ct.GetID() and all(c.GetLinkedControl() for c in comps.values())
    sh = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    for node in (seq, browser, proxy, res.uncertainty):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == res.folder_item


def test_the_uncertainty_map_lands_with_its_own_colour_table(trajectory_scene):
    ct, run, out = trajectory_scene["ct"], trajectory_scene["run"], trajectory_scene["out"]
    res = run.result_nodes
    unc_file = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "uncertainty.nii.gz")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(adapter.image_from_volume_node(res.uncertainty)), unc_file)
    np.testing.assert_allclose(_ijk_to_ras(res.uncertainty), _ijk_to_ras(ct), atol=1e-6)
    assert res.uncertainty.GetDisplayNode().GetColorNode().GetName() == adapter.UNCERTAINTY_COLOR_NAME
    assert unc_file.max() > 0
    rows = run.client.result["lesions"]
    assert all(0 <= r["sample_fraction"] <= 1 and r["mean_uncertainty"] >= 0 for r in rows)
