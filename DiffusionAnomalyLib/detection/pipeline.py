"""One case end to end: masks -> ROI patches -> normalise -> reconstruct -> anomaly map ->
compose into native geometry -> post-process -> lesion table -> output files.

The reconstructor is pluggable (``reconstruct(x, mask, spacing_mm)`` on (B, C, z, y, x) patches in
network units): the latent diffusion model or the non-neural :class:`~.baseline.MedianBaseline`.
A reconstructor may also offer ``draws`` (the K stochastic reconstructions it averaged, (K, B, C, ...)), which
give the uncertainty map, and ``trajectory`` (``(step, t, x0_hat)`` during denoising), composed on demand.
The anomaly map is |x - x_hat| in network units ([-1, 1] per channel, summed over channels), so
it is comparable across CT windows and MR sequences. The reconstruction is written in input units
as ``input + (x_hat - x)`` mapped back, so voxels the model leaves unchanged keep their exact value; each
ROI's change is blended into the input over a margin at its faces (:class:`~.roi.PatchComposer`),
so no patch edge shows.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import SimpleITK as sitk

from DiffusionAnomalyLib import __version__
from DiffusionAnomalyLib.detection.anomaly import (
    Lesion,
    PostProcessing,
    anomaly_map,
    lesion_sample_fractions,
    lesion_table,
    organ_map,
    otsu_threshold,
    postprocess,
    voxel_std,
)
from DiffusionAnomalyLib.detection.baseline import MedianBaseline
from DiffusionAnomalyLib.detection.hybrid import FORMULA as HYBRID_FORMULA
from DiffusionAnomalyLib.detection.hybrid import hybrid_map
from DiffusionAnomalyLib.detection.intensity import ChannelScaling, fit_scaling
from DiffusionAnomalyLib.detection.presets import OrganPreset, get_preset
from DiffusionAnomalyLib.detection.roi import (
    BLEND_MARGIN_VOXELS,
    PatchComposer,
    RoiPatch,
    check_roi_fits,
    extract_patch,
    outside_patch,
    plan_patch,
)
from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.imaging.io import array_to_image, geometry, require_same_grid, write_volume
from DiffusionAnomalyLib.imaging.masks import MaskSet
from DiffusionAnomalyLib.imaging.outputs import atomic_output_dir, check_output_dir
from DiffusionAnomalyLib.imaging.segfile import write_seg_nrrd

#: Width (mm) over which a ROI's change to the reconstruction fades into the input at its faces (at least
#: ``BLEND_MARGIN_VOXELS`` patch voxels). The anomaly map fades over ``BLEND_MARGIN_VOXELS`` only, so scores near a
#: ROI's face (where an organ's pole may lie) are barely touched.
RECONSTRUCTION_BLEND_MM = 10.0


def reconstruction_margin_voxels(preset: OrganPreset) -> int:
    """The reconstruction's blending margin in patch voxels: ``RECONSTRUCTION_BLEND_MM`` at the preset's spacing."""
    return max(BLEND_MARGIN_VOXELS, int(np.ceil(RECONSTRUCTION_BLEND_MM / min(preset.spacing_mm))))


class Reconstructor(Protocol):
    name: str

    def reconstruct(self, x: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
        ...


@dataclass
class CaseResult:
    """Everything one run produced, on the input's native grid."""

    reconstruction: list[sitk.Image]  # one per channel, input units
    heatmap: sitk.Image  # float32, network units
    lesions: sitk.Image  # uint16 labelmap, 1..n
    table: list[Lesion]
    threshold: float
    patches: list[RoiPatch]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    input_image: sitk.Image | None = None  # the first input channel (for the overview)
    organ_mask: sitk.Image | None = None  # union of the organ masks
    scalings: list = field(default_factory=list)  # per patch, per channel: network units <-> input units
    extra_images: dict[str, sitk.Image] = field(default_factory=dict)  # more files to write
    uncertainty: list[sitk.Image] = field(default_factory=list)  # per channel, input units (K >= 2 draws only)
    trajectory: TrajectoryFrames | None = None  # the denoising trajectory, composed when written
    #: per channel, input units: the autoencoder's own reconstruction D(E(x)) (``detect(autoencoded=True)`` with a
    #: reconstructor that has an autoencoder; what ``evaluate``'s loss funnel measures)
    autoencoded: list[sitk.Image] = field(default_factory=list)


@dataclass
class TrajectoryFrames:
    """The decoded x0 predictions during denoising, on the patch grids, and what composes them onto the input grid
    exactly as the final reconstruction (and, with ``heatmaps``, the anomaly map) is composed."""

    frames: list[tuple[int, int, np.ndarray]]  # (sampler step, noise level t, x0_hat (B, C, z, y, x) network units)
    composer: PatchComposer  # the reconstruction's composition
    input_array: np.ndarray  # first channel, float32, input grid
    input_patches: list[np.ndarray]  # per patch: the first channel in input units (patch grid)
    scalings: list  # per patch: the first channel's ChannelScaling
    reference_x: np.ndarray  # what the anomaly map compares against, network units (B, C, ...)
    organ: np.ndarray
    median_filter: int
    heatmaps: bool = False
    heat_composer: PatchComposer | None = None  # the anomaly map's composition (default: ``composer``)

    def __len__(self) -> int:
        return len(self.frames)

    def reconstruction(self, index: int) -> np.ndarray:
        """Frame ``index`` as a reconstruction of the first channel on the input grid (input units, float32)."""
        x0 = self.frames[index][2]
        deltas = [self.scalings[i].inverse(x0[i, 0]) - self.input_patches[i] for i in range(len(self.input_patches))]
        return self.input_array + self.composer.compose(deltas, "mean")

    def heatmap(self, index: int) -> np.ndarray:
        """Frame ``index``'s anomaly map on the input grid (network units), made as the final heatmap."""
        x0 = self.frames[index][2]
        heat = (self.heat_composer or self.composer).compose([anomaly_map(self.reference_x[i], x0[i], channel_axis=0)
                                      for i in range(len(x0))], "max")
        return organ_map(heat, self.organ, self.median_filter)


@dataclass
class PreparedPatches:
    """ROI patches of one case in network units: ``x`` (B, C, z, y, x), ``masks`` (B, z, y, x)."""

    patches: list[RoiPatch]
    x: np.ndarray
    masks: np.ndarray
    scalings: list[list[ChannelScaling]]


def extract_case_patches(channels: list[sitk.Image], mask_set: MaskSet, preset: OrganPreset) -> PreparedPatches:
    """One patch per organ structure, resampled to the preset grid and normalised (inference and training)."""
    patches, xs, pmasks, scalings = [], [], [], []
    for m in mask_set.masks:
        patch = plan_patch(m.image, preset, m.structure, m.side)
        pmask = extract_patch(m.image, patch, interpolator="nearest")
        raw = [extract_patch(ch, patch, default=preset.background) for ch in channels]
        sc = [fit_scaling(preset.normalization, r, pmask, name) for r, name in zip(raw, preset.channels, strict=True)]
        patches.append(patch)
        xs.append(np.stack([s.forward(r) for s, r in zip(sc, raw, strict=True)]))
        pmasks.append(pmask)
        scalings.append(sc)
    return PreparedPatches(patches, np.stack(xs), np.stack(pmasks), scalings)


def check_not_blank(channels: list[sitk.Image], mask_set: MaskSet, preset: OrganPreset, input_name: str) -> None:
    """Refuse a channel that is constant inside the organ (a blank or zero-filled image): its anomaly map would be
    meaningless, yet post-processing could still report lesions."""
    organ = np.zeros(sitk.GetArrayViewFromImage(channels[0]).shape, bool)
    for m in mask_set.masks:
        organ |= sitk.GetArrayViewFromImage(m.image) > 0
    for name, ch in zip(preset.channels, channels, strict=False):
        values = sitk.GetArrayViewFromImage(ch)
        inside = values[organ] if organ.any() else values.ravel()
        if inside.size and inside.min() == inside.max():
            where = f"inside the {preset.name} mask" if organ.any() else "everywhere"
            raise InputError(f"{input_name}: the {name} image is constant {where} (every voxel "
                             f"{float(inside.min()):g}): a blank image cannot be analysed")


def detect(
    channels: list[sitk.Image],
    mask_set: MaskSet,
    preset: OrganPreset,
    reconstructor: Reconstructor,
    *,
    threshold: float | None = None,
    postprocessing: PostProcessing | None = None,
    input_name: str = "the image",
    progress: Callable[[str, int, int], None] | None = None,
    trajectory_heatmaps: bool = False,
    uncertainty: bool = True,
    autoencoded: bool = False,
    hybrid: float = 0.0,
) -> CaseResult:
    """Run one case. ``threshold`` None = Otsu over this case's organ voxels, else a fixed value.

    ``input_name`` (e.g. the file name) is used in error messages and warnings. ``progress(stage,
    step, total)`` is called as stages start and end (stages: extract, reconstruct, compose,
    postprocess); the reconstructor reports its own sampler steps. With a reconstructor that drew K >= 2 samples
    (``draws``), the result has the uncertainty map and each lesion its mean uncertainty and sample fraction; with
    its ``trajectory``, the frames to compose (and, with ``trajectory_heatmaps``, each frame's anomaly map).
    ``uncertainty=False`` skips the uncertainty map and the per-draw lesions (callers that keep only the map).
    ``autoencoded``: also compose the autoencoder's own reconstruction D(E(x)) (reconstructors with ``autoencode``).
    ``hybrid`` W > 0: the map is max(model, W x the median baseline's map) (:mod:`.hybrid`), before the threshold.
    """
    def report(stage: str, step: int, total: int) -> None:
        if progress:
            progress(stage, step, total)

    if len(channels) != len(preset.channels):
        raise InputError(f"the {preset.name} preset needs {len(preset.channels)} channel(s) {list(preset.channels)}, "
                         f"got {len(channels)}")
    ref = channels[0]
    for m in mask_set.masks:
        require_same_grid(ref, m.image, input_name, f"the {m.structure} mask")
    check_not_blank(channels, mask_set, preset, input_name)
    timings: dict[str, float] = {}
    report("extract", 0, 1)
    t0 = time.perf_counter()
    warnings = check_roi_fits(ref, preset, input_name) + list(mask_set.missing.values())
    prepared = extract_case_patches(channels, mask_set, preset)
    patches, scalings = prepared.patches, prepared.scalings
    not_analysed = [o for m, p in zip(mask_set.masks, patches, strict=True) if (o := outside_patch(m.image, p))]
    for o in not_analysed:
        roi = " x ".join(f"{v:g}" for v in preset.roi_size_mm)
        warnings.append(f"{input_name}: {o['fraction']:.1%} of the {o['structure']} ({o['volume_ml']:g} ml, LPS "
                        f"{o['bbox_lps_min']}..{o['bbox_lps_max']} mm) lies outside the {roi} mm ROI and was NOT "
                        "analysed; lesions there cannot be found (see not_analysed in run.json)")
    if mask_set.masks and len(not_analysed) == len(mask_set.masks) and all(o["fraction"] >= 1 for o in not_analysed):
        raise InputError(f"{input_name}: no voxel of the {preset.name} lies in its ROI, so nothing could be analysed "
                         f"(image spacing {tuple(round(v, 4) for v in ref.GetSpacing())} mm, size {ref.GetSize()}; "
                         "is the header's spacing wrong?)")
    timings["extract"] = time.perf_counter() - t0
    report("extract", 1, 1)

    t0 = time.perf_counter()
    x = prepared.x
    x_hat = reconstructor.reconstruct(x, prepared.masks, preset.spacing_mm)
    timings["reconstruct"] = time.perf_counter() - t0
    report("compose", 0, 1)

    t0 = time.perf_counter()
    composer = PatchComposer(patches, ref, reconstruction_margin_voxels(preset))
    heat_composer = PatchComposer(patches, ref)
    ref_x = reconstructor.reference_image(x) if hasattr(reconstructor, "reference_image") else x
    heat = heat_composer.compose([anomaly_map(ref_x[i], x_hat[i], channel_axis=0) for i in range(len(patches))], "max")
    inputs = [sitk.GetArrayViewFromImage(ch).astype(np.float32) for ch in channels]
    raw = [[scalings[i][c].inverse(x[i, c]) for i in range(len(patches))] for c in range(len(channels))]
    recon = []
    for c, ch in enumerate(channels):
        delta = composer.compose([scalings[i][c].inverse(x_hat[i, c]) - raw[c][i] for i in range(len(patches))])
        recon.append(array_to_image(inputs[c] + delta, ch))
    ae_images = []
    if autoencoded and hasattr(reconstructor, "autoencode"):
        ae_x = ref_x if ref_x is not x else reconstructor.autoencode(x)
        ae_images = [array_to_image(inputs[c] + composer.compose([scalings[i][c].inverse(ae_x[i, c]) - raw[c][i]
                                                                  for i in range(len(patches))]), ch)
                     for c, ch in enumerate(channels)]
    draws = getattr(reconstructor, "draws", None)
    draws = draws if uncertainty and draws is not None and len(draws) >= 2 else None
    uncertainty_maps = []
    if draws is not None:
        for c, ch in enumerate(channels):
            recs = (inputs[c] + composer.compose([scalings[i][c].inverse(d[i, c]) - raw[c][i]
                                                  for i in range(len(patches))]) for d in draws)
            uncertainty_maps.append(array_to_image(voxel_std(recs), ch))
    timings["compose"] = time.perf_counter() - t0
    report("postprocess", 0, 1)

    t0 = time.perf_counter()
    organ = mask_set.union()
    heat = organ_map(heat, organ, preset.median_filter_voxels)
    base = baseline_map(channels, mask_set, preset, input_name) if hybrid else None
    heat = hybrid_map(heat, base, hybrid)
    thr = otsu_threshold(heat, organ) if threshold is None else float(threshold)
    pp = postprocessing or PostProcessing.for_preset(preset)
    labels = postprocess(heat, thr, organ, ref, pp)
    side_masks = {m.side: sitk.GetArrayViewFromImage(m.image) > 0 for m in mask_set.masks if m.side}
    table = lesion_table(labels, heat, ref, preset.name, side_masks or None)
    if draws is not None:
        unc = sitk.GetArrayViewFromImage(uncertainty_maps[0])
        sample_maps = (hybrid_map(organ_map(heat_composer.compose([anomaly_map(ref_x[i], d[i], channel_axis=0)
                                                              for i in range(len(patches))], "max"),
                                            organ, preset.median_filter_voxels), base, hybrid) for d in draws)
        fractions = lesion_sample_fractions(labels, (postprocess(m, thr, organ, ref, pp) for m in sample_maps),
                                            len(draws))
        for le in table:
            le.mean_uncertainty = float(unc[labels == le.id].mean())
            le.sample_fraction = fractions[le.id]
    timings["postprocess"] = time.perf_counter() - t0
    report("postprocess", 1, 1)
    frames = getattr(reconstructor, "trajectory", None) or []
    trajectory = TrajectoryFrames(list(frames), composer, inputs[0], raw[0], [sc[0] for sc in scalings], ref_x,
                                  organ, preset.median_filter_voxels, trajectory_heatmaps,
                                  heat_composer) if frames else None
    return CaseResult(
        reconstruction=recon, heatmap=array_to_image(heat, ref), lesions=array_to_image(labels, ref), table=table,
        threshold=thr, patches=patches, warnings=warnings, timings=timings, input_image=ref,
        organ_mask=array_to_image(organ.astype(np.uint8), ref), scalings=scalings, uncertainty=uncertainty_maps,
        trajectory=trajectory, autoencoded=ae_images,
        parameters={"organ": preset.name, "reconstructor": reconstructor.name,
                    "threshold_mode": "otsu-case" if threshold is None else "fixed", "threshold": thr,
                    "postprocessing": pp.__dict__, "composition": {"heatmap": "max", "reconstruction": "mean",
                                                    "blend_margin_voxels": {"reconstruction": composer.margin,
                                                                            "heatmap": heat_composer.margin}},
                    "uncertainty_samples": 0 if draws is None else len(draws),
                    **({"hybrid": {"weight": hybrid, "map": HYBRID_FORMULA}} if hybrid else {}),
                    "not_analysed": not_analysed},
    )


def baseline_map(channels: list[sitk.Image], mask_set: MaskSet, preset: OrganPreset, input_name: str) -> np.ndarray:
    """The median baseline's anomaly map of this case on the input grid (network units, 0 outside the organ), made
    as ``diffusion-anomaly baseline`` makes it: the organ's own preset (``preset.name``), not a bundle's."""
    own = get_preset(preset.name)
    result = detect(channels, mask_set, own, MedianBaseline.for_preset(own), threshold=math.inf,
                    input_name=input_name, uncertainty=False)
    return sitk.GetArrayFromImage(result.heatmap)


LESION_COLUMNS = ["id", "organ", "side", "voxels", "volume_ml", "axial_diameter_mm", "size_class",
                  "centroid_lps_x", "centroid_lps_y", "centroid_lps_z", "centroid_ras_x", "centroid_ras_y",
                  "centroid_ras_z", "mean_score", "max_score", "mean_uncertainty", "sample_fraction"]


def write_trajectory(trajectory: TrajectoryFrames, reference: sitk.Image, folder: Path) -> list[str]:
    """``trajectory.seq.nrrd`` (and ``trajectory_heatmap.seq.nrrd`` when asked) in ``folder``: one frame per kept
    sampler step, composed onto ``reference``'s grid one at a time. The frames' index is the sampler step (0 = the
    noisiest); each frame records its step and noise level t."""
    from DiffusionAnomalyLib.imaging.sequence import write_volume_sequence

    steps = [int(step) for step, _, _ in trajectory.frames]
    levels = [int(t) for _, t, _ in trajectory.frames]
    items = [{"DiffusionAnomaly.step": str(s), "DiffusionAnomaly.noise_level": str(t)}
             for s, t in zip(steps, levels, strict=True)]
    attrs = {"DiffusionAnomaly.steps": " ".join(map(str, steps)),
             "DiffusionAnomaly.noise_levels": " ".join(map(str, levels))}
    n = len(trajectory)
    write_volume_sequence(folder / "trajectory.seq.nrrd", (trajectory.reconstruction(i) for i in range(n)), reference,
                          "step", steps, items, {**attrs, "DiffusionAnomaly.content": "reconstruction (input units)"})
    names = ["trajectory.seq.nrrd"]
    if trajectory.heatmaps:
        write_volume_sequence(folder / "trajectory_heatmap.seq.nrrd", (trajectory.heatmap(i) for i in range(n)),
                              reference, "step", steps, items,
                              {**attrs, "DiffusionAnomaly.content": "anomaly map (network units)"})
        names.append("trajectory_heatmap.seq.nrrd")
    return names


def write_outputs(result: CaseResult, out_dir: str | Path, preset: OrganPreset, inputs: dict, *,
                  overwrite: bool = False, input_paths: list[str] | None = None, overview: bool = True) -> Path:
    """Write the result files atomically into ``out_dir`` (all or nothing); ``overview``: also ``overview.png``
    (matplotlib; Slicer's panel asks for none, the scene is its picture).

    ``out_dir`` must not hold any of ``input_paths`` (default: ``inputs["images"]``); an earlier result or other
    files there are refused unless ``overwrite``, which replaces the whole earlier result set
    (:func:`~DiffusionAnomalyLib.imaging.outputs.check_output_dir`).
    """
    check_output_dir(out_dir, input_paths if input_paths is not None else inputs.get("images", []),
                     overwrite=overwrite)
    with atomic_output_dir(out_dir, replace_previous=True) as stage:
        names = preset.channels
        for name, image in zip(names, result.reconstruction, strict=True):
            fname = "reconstruction.nii.gz" if len(names) == 1 else f"reconstruction_{name}.nii.gz"
            write_volume(image, stage / fname)
        write_volume(result.heatmap, stage / "heatmap.nii.gz")
        write_volume(result.lesions, stage / "lesions.nii.gz")
        write_seg_nrrd(result.lesions, result.table, stage / "lesions.seg.nrrd")
        for name, image in zip(names, result.uncertainty, strict=False):
            write_volume(image, stage / ("uncertainty.nii.gz" if len(names) == 1 else f"uncertainty_{name}.nii.gz"))
        for name, image in result.extra_images.items():
            write_volume(image, stage / name)
        if result.trajectory is not None:
            write_trajectory(result.trajectory, result.input_image, stage)
        if overview:
            from DiffusionAnomalyLib.detection.overview import write_overview

            organ = sitk.GetArrayViewFromImage(result.organ_mask) > 0
            note = "DEMO / synthetic-data model - " if inputs.get("bundle", {}).get("demo") else ""
            write_overview(result.input_image, result.reconstruction[0], result.heatmap, result.lesions,
                           result.table, organ, stage / "overview.png", preset.display_window,
                           uncertainty=result.uncertainty[0] if result.uncertainty else None,
                           title=f"{note}{preset.name}: {len(result.table)} candidate lesion(s); research software, "
                                 "not for diagnosis")
        rows = [le.to_row() for le in result.table]
        with open(stage / "lesions.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LESION_COLUMNS)
            w.writeheader()
            w.writerows(rows)
        (stage / "lesions.json").write_text(json.dumps(
            {"coordinates": "centroid_lps: ITK/DICOM patient LPS (mm); centroid_ras: Slicer RAS (mm)",
             "lesions": rows, "not_analysed": result.parameters.get("not_analysed", [])}, indent=2) + "\n")
        outputs = sorted(f.name for f in stage.iterdir()) + ["run.json"]
        run = {"version": __version__, "python": platform.python_version(), "inputs": inputs, "outputs": outputs,
               "parameters": result.parameters, "preset": preset.to_dict(),
               "patches": [p.to_dict() for p in result.patches], "warnings": result.warnings,
               "not_analysed": result.parameters.get("not_analysed", []),
               "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
               "geometry": geometry(result.heatmap)}
        (stage / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n")
    return Path(out_dir)
