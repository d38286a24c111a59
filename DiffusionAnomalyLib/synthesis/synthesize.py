"""``diffusion-anomaly synthesize``: a scan, its organ masks and a lesion (a map, or a shape drawn inside the organ)
-> case folders with the lesion inserted, its label, and a record that reproduces it.

Each variant is written as a case of the phantom layout (docs/evaluation.md), so the output folder is a dataset
``evaluate`` and ``run`` take as it is::

    OUT/synthesis.csv                 one row per variant and lesion
    OUT/<stem>-<method>-<seed>/       <channel>.nii.gz (the scan, changed only inside the blended region; the
                                      input's grid, pixel type and value range), lesions.nii.gz (lesion ids),
                                      segmentations/<structure>.nii.gz (the organ masks used), synthesis.json
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from DiffusionAnomalyLib import __version__
from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.options import MAX_SEED, scan_input_problems
from DiffusionAnomalyLib.options import problems as option_problems
from DiffusionAnomalyLib.progress import Progress
from DiffusionAnomalyLib.settings import ORGANS
from DiffusionAnomalyLib.synthesis.options import DIAMETER_RANGE_MM, KINDS, SHAPES, SynthesisOptions
from DiffusionAnomalyLib.synthesis.paste import (
    ENHANCED_HU,
    MR_PERCENTILES,
    PSF_MM,
    RING_MM,
    insert,
    paste_fill,
    place_lesion,
)


@dataclass(frozen=True)
class SynthesisRequest:
    """A scan (``images``: file(s) or a DICOM folder; brain t1n t1c t2w t2f) of ``organ``, its organ masks (``mask``
    with ``mask_label``, ``totalseg``, ``skull_stripped``, else TotalSegmentator runs), and either a ``lesion_map``
    (nonzero = lesion, on the scan's grid) or a shape drawn by ``options``; ``bundle``: the model bundle whose
    lesion synthesizer ``--method diffusion`` uses; ``out``: a new or empty folder."""

    images: tuple[str, ...]
    organ: str
    out: str
    lesion_map: str | None = None
    bundle: str | None = None
    mask: str | None = None
    mask_label: int | None = None
    totalseg: str | None = None
    skull_stripped: bool = False
    options: SynthesisOptions = field(default_factory=SynthesisOptions)
    overwrite: bool = False
    skip_modality_check: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", tuple(os.fspath(p) for p in self.images))
        for name in ("out", "lesion_map", "bundle", "mask", "totalseg"):
            if isinstance(getattr(self, name), os.PathLike):
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        if problems := self.problems():
            raise InputError("; ".join(problems))

    def problems(self) -> list[str]:
        """What makes this request meaningless, before any file is read."""
        from DiffusionAnomalyLib.detection.presets import get_preset

        o = self.options
        out = [] if self.images else ["no input image given"]
        if not self.out:
            out.append("no output folder given")
        out += scan_input_problems(self, {"out": "--out", "lesion_map": "--lesion-map", "bundle": "--bundle",
                                          "mask": "--mask", "totalseg": "--totalseg"})
        if self.organ not in ORGANS:
            return [*out, f"unknown organ {self.organ!r}; choose one of {', '.join(ORGANS)}"]
        out += option_problems(o)
        preset = get_preset(self.organ)
        if o.kind is not None and o.kind not in KINDS[preset.modality]:
            out.append(f"--kind {o.kind}: the {self.organ} ({preset.modality}) takes "
                       f"{', '.join(KINDS[preset.modality])}")
        if o.structure is not None and o.structure not in preset.structures.values():
            out.append(f"--structure {o.structure}: the {self.organ} has {', '.join(preset.structures.values())}")
        if o.method == "diffusion" and not self.bundle:
            out.append("--method diffusion needs --bundle (a bundle with a lesion synthesizer)")
        if o.method == "paste" and self.bundle:
            out.append("--bundle is for --method diffusion; paste uses no network")
        if o.method == "diffusion" and o.kind is not None:
            out.append("--kind is for --method paste; the synthesizer draws the lesion from its map")
        if self.lesion_map and any(v is not None for v in (o.shape, o.diameter_mm, o.structure)):
            out.append("--lesion-map gives the lesion: --shape, --diameter-mm and --structure are for a drawn lesion")
        if self.mask_label is not None and not self.mask:
            out.append("--mask-label applies to --mask only")
        if isinstance(o.seed, int) and isinstance(o.count, int) and o.seed + o.count - 1 > MAX_SEED:
            out.append(f"--seed {o.seed} with --count {o.count}: the seeds would pass 2^63-1")
        return out

    def input_paths(self) -> list[str]:
        return [*self.images, *(p for p in (self.lesion_map, self.mask, self.totalseg, self.bundle) if p)]

    @property
    def command(self) -> str:
        """What the command line calls this job (messages and the worker's ``started`` event name it)."""
        return "synthesize"

    def to_json(self) -> dict[str, Any]:
        """This request as a JSON object (what the worker reads with ``"job": "synthesize"``)."""
        return {**asdict(self), "images": list(self.images)}

    @classmethod
    def from_json(cls, data: Any, source: str = "request") -> SynthesisRequest:
        """A request from :meth:`to_json` output, every value checked against its field's JSON type (no coercion);
        an :class:`InputError` names ``source``, the field and the value."""
        from DiffusionAnomalyLib.options import typed_fields

        return cls(**typed_fields(cls, data, source))


@dataclass
class Synthesis:
    """What :func:`synthesize` wrote: the output folder and, per variant, its case folder and record."""

    out: Path
    cases: list[Path]
    records: list[dict[str, Any]]


def _sha256(path: str) -> str:
    """A file's SHA-256; a folder's (DICOM series, TotalSegmentator's masks): that of its files' relative names and
    SHA-256s, in order."""
    from DiffusionAnomalyLib.models.bundle import sha256_file as file_digest

    p = Path(path)
    if p.is_file():
        return file_digest(p)
    listing = "".join(f"{f.relative_to(p).as_posix()}\t{file_digest(f)}\n" for f in sorted(p.rglob("*")) if f.is_file())
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def _stem(path: str) -> str:
    name = re.sub(r"(\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd)$", "", Path(path.rstrip("/\\")).name, flags=re.I)
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "scan"


#: A lesion map's region may cover at most this share of the structure that holds it (a lesion is inserted into the
#: organ, not over it); the same region must have at least half of its voxels inside the organ, as a drawn shape.
MAX_ORGAN_SHARE = 0.5


def _map_labels(request: SynthesisRequest, reference: sitk.Image, organ: np.ndarray,
                structures: dict[str, np.ndarray]) -> np.ndarray:
    """The lesion map's connected components (26-connected) as lesion ids, each cut to the organ: each must lie at
    least half inside the organ and cover at most :data:`MAX_ORGAN_SHARE` of the structure that holds most of it."""
    from DiffusionAnomalyLib.imaging.io import read_volume, require_same_grid

    image = read_volume(request.lesion_map)
    require_same_grid(reference, image, "the image", request.lesion_map)
    lesion = sitk.GetArrayFromImage(image) != 0
    if not lesion.any():
        raise InputError(f"{request.lesion_map}: the lesion map is empty (no nonzero voxel)")
    labels, n = ndimage.label(lesion, structure=np.ones((3, 3, 3), bool))
    sizes = ndimage.sum_labels(np.ones(labels.shape), labels, index=np.arange(1, n + 1))
    inside = ndimage.sum_labels(organ, labels, index=np.arange(1, n + 1))
    outside = [i + 1 for i in range(n) if inside[i] == 0]
    if outside:
        raise InputError(f"{request.lesion_map}: {len(outside)} of its {n} lesion region(s) lie wholly outside the "
                         f"{request.organ} mask; a lesion is inserted into the organ")
    mostly = [f"region {i + 1} ({int(inside[i])} of {int(sizes[i])} voxels inside)" for i in range(n)
              if inside[i] < 0.5 * sizes[i]]
    if mostly:
        raise InputError(f"{request.lesion_map}: lesion {', '.join(mostly)} lies mostly outside the {request.organ} "
                         "mask; paint the lesion inside the organ")
    labels[~organ] = 0
    for i in range(1, n + 1):
        region = labels == i
        name, held = max(((s, int((m & region).sum())) for s, m in structures.items()), key=lambda t: t[1])
        share = held / max(int(structures[name].sum()), 1)
        if share > MAX_ORGAN_SHARE:
            raise InputError(f"{request.lesion_map}: lesion region {i} covers {100 * share:.0f} % of {name} (at most "
                             f"{100 * MAX_ORGAN_SHARE:.0f} %); a lesion is inserted into the organ, not over it (is "
                             "this the organ mask, or a probability map? nonzero means lesion)")
    return labels.astype(np.uint16)


def _variant(request: SynthesisRequest, seed: int, images: list[sitk.Image], arrays: list[np.ndarray], preset, masks,
             by_name: dict[str, np.ndarray], organ: np.ndarray, spacing: tuple[float, float, float],
             map_labels: np.ndarray | None, value_range, bundle=None,
             progress: Callable[[int, int], None] | None = None) -> tuple:
    """One variant: (output arrays, lesion labels, record). ``by_name``: each structure's mask, ``organ`` their
    union (computed once for all variants); ``progress(done, total)`` follows the sampler."""
    from DiffusionAnomalyLib.synthetic.base import _diameter

    o = request.options
    rng = np.random.default_rng(seed)
    drawn: dict[str, Any] = {}
    if map_labels is not None:
        labels = map_labels
    else:
        structure = o.structure or str(rng.choice(sorted(by_name)))
        if structure not in by_name:
            raise InputError(f"--structure {structure}: no mask of it was found ({'; '.join(masks.missing.values())})")
        diameter = o.diameter_mm if o.diameter_mm is not None else _diameter(rng, DIAMETER_RANGE_MM[1], "incidental")
        shape = o.shape or str(rng.choice(SHAPES))
        labels = place_lesion(by_name[structure], spacing, shape, diameter, rng).astype(np.uint16)
        drawn = {"structure": structure, "shape": shape, "diameter_mm": round(float(diameter), 2)}
    ids = [int(v) for v in np.unique(labels) if v > 0]
    channels = list(preset.channels)
    if o.method == "diffusion":
        from DiffusionAnomalyLib.synthesis.diffusion import diffusion_fill, generated_patches

        kinds = dict.fromkeys(ids, "generated")
        generated = generated_patches(bundle, images, masks, labels, seed, o.steps, o.resample_jumps, o.map_guidance,
                                      progress)
        fill = diffusion_fill(generated, images[0])
        drawn["synthesizer"] = {"bundle": f"{bundle.meta.name} {bundle.meta.version}", "steps": o.steps,
                                "resample_jumps": o.resample_jumps, "map_guidance": o.map_guidance}
    else:
        kinds = {i: o.kind or str(rng.choice(KINDS[preset.modality])) for i in ids}
        fill = paste_fill(channels, preset.modality, organ, kinds, rng)
    out, blended, pasted = insert(arrays, organ, labels, spacing, fill, kinds, value_range)
    reference = masks.masks[0].image
    voxel_ml = float(np.prod(spacing)) / 1000.0
    lesions = []
    for p in pasted:
        zyx = np.argwhere(labels == p.id).mean(axis=0)
        lps = reference.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]])
        inside = {s: int((m & (labels == p.id)).sum()) for s, m in by_name.items()}
        lesions.append({**asdict(p), "structure": max(inside, key=inside.get),
                        "volume_ml": round(p.voxels * voxel_ml, 3), "centroid_lps": [round(v, 2) for v in lps]})
    record = {"format_version": 1, "tool": f"diffusion-anomaly {__version__}", "method": o.method, "seed": seed,
              "organ": request.organ, "channels": channels, **drawn, "lesions": lesions,
              "blended_voxels": int(blended.sum()), "unchanged_outside_blended_region": True,
              "model": {"ring_mm": RING_MM, "enhanced_hu": ENHANCED_HU,
                        "psf_mm": PSF_MM,
                        **({"mr_percentiles": MR_PERCENTILES} if preset.modality == "MR" else {})}}
    return out, labels, record


def _argv(request: SynthesisRequest, seed: int) -> list[str]:
    """The command line that writes this variant again."""
    o = request.options
    argv = ["diffusion-anomaly", "synthesize", "--organ", request.organ, "--input", *request.images]
    for flag, value in (("--bundle", request.bundle), ("--mask", request.mask), ("--mask-label", request.mask_label),
                        ("--totalseg", request.totalseg), ("--lesion-map", request.lesion_map),
                        ("--method", o.method), ("--shape", o.shape), ("--diameter-mm", o.diameter_mm),
                        ("--kind", o.kind), ("--structure", o.structure),
                        *((("--steps", o.steps), ("--resample-jumps", o.resample_jumps),
                           ("--map-guidance", o.map_guidance)) if o.method == "diffusion" else ())):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--skull-stripped"] if request.skull_stripped else []) + (
        ["--skip-modality-check"] if request.skip_modality_check else []) + ["--seed", str(seed), "--out", "OUT"]


def synthesize(request: SynthesisRequest, progress: Progress | None = None) -> Synthesis:
    """Write ``request.options.count`` variants (seeds seed..seed+N-1) to ``request.out``, atomically (all or
    nothing). The inputs are read, never changed. Raises :class:`InputError` (exit 2) naming the file and problem.
    ``progress("synthesize", step, total)`` follows the variants (and, for ``diffusion``, the sampler's steps).

    >>> from DiffusionAnomalyLib.synthesis.synthesize import SynthesisOptions, SynthesisRequest, synthesize
    >>> found = synthesize(SynthesisRequest(images=("ct.nii.gz",), organ="kidney", out="syn",  # doctest: +SKIP
    ...                    totalseg="segmentations", options=SynthesisOptions(shape="sphere", diameter_mm=15)))
    """
    from DiffusionAnomalyLib.detection.presets import get_preset
    from DiffusionAnomalyLib.imaging.io import read_channels, write_volume
    from DiffusionAnomalyLib.imaging.masks import load_organ_masks
    from DiffusionAnomalyLib.imaging.outputs import atomic_output_dir, check_output_dir

    for p in request.input_paths():
        if not Path(p).exists():
            raise InputError(f"{p}: file not found")
    check_output_dir(request.out, request.input_paths(), overwrite=request.overwrite, command="synthesize")
    bundle = None
    if request.options.method == "diffusion":
        from DiffusionAnomalyLib.synthesis.diffusion import load_synthesizer

        bundle = load_synthesizer(request.bundle)
        if bundle.meta.organ != request.organ:
            raise InputError(f"{request.bundle}: a {bundle.meta.organ} bundle; --organ is {request.organ}")
    preset = bundle.preset if bundle is not None else get_preset(request.organ)
    images = read_channels(list(request.images), list(preset.channels))
    masks = load_organ_masks(request.images, images[0], preset, mask=request.mask, mask_label=request.mask_label,
                             totalseg=request.totalseg, skull_stripped=request.skull_stripped)
    arrays = [sitk.GetArrayFromImage(im) for im in images]
    value_range = [(float(a.min()), float(a.max())) for a in arrays]
    spacing = tuple(float(s) for s in images[0].GetSpacing())
    if not request.skip_modality_check:
        from DiffusionAnomalyLib.detection.intensity import check_modality

        check_modality(arrays[0], preset.modality, request.images[0])
    organ = masks.union()
    structures = {m.structure: sitk.GetArrayViewFromImage(m.image) > 0 for m in masks.masks}
    map_labels = _map_labels(request, images[0], organ, structures) if request.lesion_map else None
    o = request.options
    inputs = [{"path": str(Path(p).resolve()), "sha256": _sha256(p)} for p in request.input_paths()]
    stem, cases, records, rows = _stem(request.images[0]), [], [], []
    with atomic_output_dir(request.out, replace_previous=request.overwrite) as stage:
        per = o.steps * o.resample_jumps if o.method == "diffusion" else 1  # progress steps per variant
        for k, seed in enumerate(range(o.seed, o.seed + o.count)):
            def step(done: int, total: int, k: int = k) -> None:
                if progress:
                    progress("synthesize", k * per + min(done, per), o.count * per)

            out, labels, record = _variant(request, seed, images, arrays, preset, masks, structures, organ, spacing,
                                           map_labels, value_range, bundle, step)
            step(per, per)
            name = f"{stem}-{o.method}-{seed}"
            folder = stage / name
            (folder / "segmentations").mkdir(parents=True)
            for ch, a, im in zip(preset.channels, out, images, strict=True):
                new = sitk.GetImageFromArray(a)
                new.CopyInformation(im)
                write_volume(new, folder / f"{ch}.nii.gz")
            lesion_image = sitk.GetImageFromArray(labels)
            lesion_image.CopyInformation(images[0])
            write_volume(lesion_image, folder / "lesions.nii.gz")
            if request.skull_stripped:
                (folder / "segmentations").rmdir()  # the brain mask is the scan's nonzero voxels, as given
            else:
                for m in masks.masks:
                    write_volume(sitk.Cast(m.image, sitk.sitkUInt8), folder / "segmentations" / f"{m.structure}.nii.gz")
            record = {**record, "case": name, "inputs": inputs, "command": _argv(request, seed)}
            (folder / "synthesis.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            records.append(record)
            cases.append(Path(request.out) / name)
            rows += [{"case": name, "seed": seed, "lesion": le["id"], "structure": le["structure"],
                      "kind": le["kind"], "shape": record.get("shape", "map"),
                      "diameter_mm": record.get("diameter_mm", ""), "voxels": le["voxels"],
                      "volume_ml": le["volume_ml"]} for le in record["lesions"]]
        with open(stage / "synthesis.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if request.overwrite:  # an earlier synthesis' variants that this one did not write again
        for d in Path(request.out).iterdir():
            if d.is_dir() and (d / "synthesis.json").is_file() and Path(request.out) / d.name not in cases:
                shutil.rmtree(d)
    return Synthesis(Path(request.out), cases, records)
