"""Synthetic cases: the project's own data, deterministic from a seed.

Three generators share one lesion model (``synthetic/base.py``; the brain generator is ``synthetic/brain.py``):
- ``abdomen_ct`` (kidney and liver cases): CT-like abdomen in HU with body wall and fat, spine,
  psoas, aorta and IVC, liver, spleen, bowel, and two kidneys with cortex, medullary pyramids,
  sinus fat and hilum; contrast phase (non-contrast / corticomedullary / nephrographic /
  portal-venous) changes the enhancement; CT-like correlated noise.
- ``brain_mr``: skull-stripped, co-registered t1n / t1c / t2w / t2f head with white and grey
  matter (folded cortex), deep grey nuclei, ventricles, sulcal CSF and cerebellum; bias field
  and noise; glioma-like tumours (necrotic core, enhancing rim, oedema) or metastases.

Lesions: count, diameter (0.5-8 cm, drawn across the TNM strata, or the ``incidental`` mix of small renal
masses), irregular shape, contrast
(hypo / hyper / iso / cystic) and position (inside, at the border, exophytic). Outputs follow
TotalSegmentator's conventions for organ masks (per-structure binary files in
``segmentations/`` and a multilabel ``segmentations.nii.gz`` with its label numbers), plus an
instance lesion labelmap, a per-structure healthy/unhealthy label and a short free-text report.
Everything here is synthetic; no finding on a phantom says anything about real patients.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.imaging.io import write_volume
from DiffusionAnomalyLib.imaging.masks import TOTALSEG_LABELS
from DiffusionAnomalyLib.imaging.outputs import atomic_output_dir
from DiffusionAnomalyLib.settings import LESION_SIZES
from DiffusionAnomalyLib.synthetic.base import (
    KINDS_CT,
    POSITIONS,
    LesionSpec,
    PhantomCase,
    _diameter,
    _Grid,
    _lesion_shape,
    _rotation,
    _varied_lesion_shape,
    _wave_field,
    _waves,
)
from DiffusionAnomalyLib.synthetic.brain import brain_mr

# ----------------------------------------------------------------------------------------------
# Abdomen CT
# ----------------------------------------------------------------------------------------------

#: Enhancement (HU) by contrast phase: kidney cortex / medulla, liver, spleen, aorta, veins.
PHASES = {
    "non-contrast": dict(cortex=35, medulla=30, liver=58, spleen=48, aorta=42, vein=40, pelvis=8),
    "corticomedullary": dict(cortex=185, medulla=85, liver=75, spleen=120, aorta=300, vein=110, pelvis=8),
    "nephrographic": dict(cortex=165, medulla=150, liver=105, spleen=115, aorta=160, vein=150, pelvis=10),
    "portal-venous": dict(cortex=170, medulla=125, liver=110, spleen=120, aorta=170, vein=165, pelvis=10),
}


@dataclass
class _Kidney:
    side: str
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    rotation: np.ndarray


def _kidney_fields(full: _Grid, k: _Kidney, rng: np.random.Generator, medulla_extent: float = 0.8,
                   lobulation: float = 0.0, vr: np.random.Generator | None = None):
    """Return (kidney mask, cortex, medulla, sinus) boolean arrays for one kidney (``medulla_extent``: the
    normalised radius the pyramids reach, so the cortex is thinner when it is larger; ``lobulation`` > 0: the
    surface is modulated by smooth waves drawn from ``vr``). The fields are computed on the kidney's box only."""
    n_waves = 4
    # the waves' field is at most sqrt(n_waves) in magnitude, so the lobulated surface stays within this reach
    bulge = lobulation * np.sqrt(n_waves) if vr is not None else 0.0
    box, grid = full.ellipsoid_crop(k.center, k.radii, k.rotation, 1.0 / (1.0 - bulge) if bulge < 0.9 else 1e6)
    u, v, w = grid.local(k.center, k.rotation)
    medial = 1.0 if k.side == "right" else -1.0  # local +u points towards the patient's midline
    r = np.sqrt((u / k.radii[0]) ** 2 + (v / k.radii[1]) ** 2 + (w / k.radii[2]) ** 2)
    if lobulation > 0 and vr is not None:
        kw, ph = _waves(vr, n_waves, (30, 70))
        r = r * (1.0 + lobulation * _wave_field(grid, kw, ph))
    # Hilum: a notch on the medial, slightly anterior side at mid height.
    hilum = (medial * u / k.radii[0] > 0.45) & (np.abs(w) / k.radii[2] < 0.3) & (v / k.radii[1] < 0.5)
    kidney = (r < 1.0) & ~hilum
    us = u - medial * 0.25 * k.radii[0]
    rs = np.sqrt((us / (0.5 * k.radii[0])) ** 2 + (v / (0.45 * k.radii[1])) ** 2 + (w / (0.62 * k.radii[2])) ** 2)
    sinus = (rs < 1.0) & kidney
    # Medullary pyramids: lobes around the sinus, separated by cortical columns.
    theta = np.arctan2(v, us)
    phi = np.arctan2(w, np.sqrt(us * us + v * v))
    n_lobes = int(rng.integers(6, 9))
    lobes = np.cos(n_lobes * phi + rng.uniform(0, 6.3)) + 0.6 * np.cos(3 * theta + rng.uniform(0, 6.3))
    medulla = kidney & ~sinus & (r < medulla_extent) & (lobes > -0.3)
    cortex = kidney & ~sinus & ~medulla
    return tuple(_pad(m, box, full.shape) for m in (kidney, cortex, medulla, sinus))


def _pad(mask: np.ndarray, box: tuple[slice, ...], shape: tuple[int, int, int]) -> np.ndarray:
    """A mask computed on a box of the grid, as a whole-grid mask."""
    out = np.zeros(shape, bool)
    out[box] = mask
    return out


def _ellipsoid_mask(g: _Grid, center, radii, rotation=None, below: float = 1.0) -> np.ndarray:
    """``g.ellipsoid_r(center, radii, rotation) < below``, computed on the ellipsoid's box only."""
    box, sub = g.ellipsoid_crop(center, radii, rotation, below)
    return _pad(sub.ellipsoid_r(center, radii, rotation) < below, box, g.shape)


def abdomen_ct(
    organ: str, seed: int, n_lesions: int | None = None, *, max_diameter: float = 80.0,
    spacing: tuple[float, float, float] | None = None, variety: bool = False, lesion_sizes: str = "strata",
) -> PhantomCase:
    """A CT-like abdomen (HU) for ``organ`` "kidney" or "liver", lesions placed in that organ.

    ``variety``: the varied generator. On top of the default one (whose draws it leaves as they are, from a second
    random stream of the same seed) it varies kidney size and shape (lobulation), cortex thickness, parenchymal
    texture, the contrast phase (all four, with +-20 % enhancement), the noise level (5-30 HU), the slice
    thickness (1.5-5 mm) and in-plane spacing (1.2-1.8 mm), and draws lesion shapes from :data:`VARIED_SHAPES`.
    The draws are recorded in ``meta["variety"]``. The case id is ``<organ>-var-<seed>``.

    ``lesion_sizes``: the diameter mix, one of :data:`LESION_SIZES` (``incidental``: about half of the lesions
    2 cm or less; case ids ``<organ>[-var]-inc-<seed>``). The anatomy of a seed is the same under either mix.
    """
    if lesion_sizes not in LESION_SIZES:
        raise InputError(f"unknown lesion size mix {lesion_sizes!r}; choose one of {list(LESION_SIZES)}")
    rng = np.random.default_rng(seed)
    vr = np.random.default_rng([seed, 7919]) if variety else None
    var: dict = {}
    if spacing is None:
        spacing = (1.5, 1.5, 2.5)
        if vr is not None:
            xy = float(vr.choice([1.2, 1.5, 1.8]))
            spacing = (xy, xy, float(vr.choice([1.5, 2.5, 3.0, 5.0])))
    if organ == "kidney":
        fov_center, fov = (0.0, 10.0, 0.0), (330.0, 260.0, 210.0)
        phase = str(rng.choice(list(PHASES)[:3], p=[0.15, 0.35, 0.5]))
    else:
        fov_center, fov = (0.0, 10.0, 95.0), (330.0, 260.0, 250.0)
        phase = str(rng.choice(["portal-venous", "corticomedullary", "non-contrast"], p=[0.7, 0.15, 0.15]))
    hu = PHASES[phase]
    if vr is not None:
        phase = str(vr.choice(list(PHASES)))
        gain = float(vr.uniform(0.8, 1.2))
        hu = {k: (v if k == "pelvis" else round(v * gain)) for k, v in PHASES[phase].items()}
        var = {"spacing_mm": list(spacing), "enhancement_gain": round(gain, 3),
               "kidney_scale": [round(float(v), 3) for v in vr.uniform(0.8, 1.2, size=3)],
               "lobulation": round(float(vr.uniform(0.0, 0.12)), 3),
               "medulla_extent": round(float(vr.uniform(0.62, 0.86)), 3),
               "texture_hu": round(float(vr.uniform(0.0, 15.0)), 1), "noise_hu": round(float(vr.uniform(5, 30)), 1)}
    size = tuple(int(round(f / s)) for f, s in zip(fov, spacing, strict=True))
    g = _Grid(size, spacing, fov_center)
    img = np.full(g.shape, -1000.0, np.float32)

    # Body: skin/subcutaneous fat, muscle wall, visceral fat.
    a, b = 150 + rng.uniform(-12, 12), 112 + rng.uniform(-10, 10)
    body = ((g.x / a) ** 2 + ((g.y - 10) / b) ** 2 < 1.0) & np.ones(g.shape, bool)
    t_fat = rng.uniform(12, 28)
    wall = ((g.x / (a - t_fat)) ** 2 + ((g.y - 10) / (b - t_fat)) ** 2 < 1.0) & body
    visceral = ((g.x / (a - t_fat - 10)) ** 2 + ((g.y - 10) / (b - t_fat - 10)) ** 2 < 1.0) & body
    img[body] = -105
    img[wall] = 45
    img[visceral] = -92
    # Spine (posterior: +y in LPS), canal, psoas.
    vert = ((g.x / 20) ** 2 + ((g.y - 75) / 17) ** 2 < 1) & np.ones(g.shape, bool)
    disc = (np.mod(g.z + rng.uniform(0, 30), 30) < 6) & vert
    img[vert] = 260
    img[vert & ~(((g.x / 16) ** 2 + ((g.y - 75) / 13) ** 2) < 1)] = 750
    img[disc] = 90
    img[(((g.x / 9) ** 2 + ((g.y - 103) / 8) ** 2) < 1) & np.ones(g.shape, bool)] = 15
    for sx in (-1, 1):
        psoas_r = 12 + 10 * np.clip((60 - g.z) / 160, 0, 1)
        img[((((g.x - sx * 38) / psoas_r) ** 2 + ((g.y - 68) / 16) ** 2) < 1) & np.ones(g.shape, bool)] = 50
    # Vessels: aorta left of midline (+x), IVC right (-x).
    img[((((g.x - 14) / 11) ** 2 + ((g.y - 42) / 11) ** 2) < 1) & np.ones(g.shape, bool)] = hu["aorta"]
    img[((((g.x + 22) / 13) ** 2 + ((g.y - 40) / 10) ** 2) < 1) & np.ones(g.shape, bool)] = hu["vein"]
    # Bowel loops anteriorly: walls with fluid or gas content.
    for _ in range(int(rng.integers(6, 11))):
        c = (rng.uniform(-90, 90), rng.uniform(-70, -10), rng.uniform(g.z.min(), g.z.max()))
        rad = rng.uniform(12, 22, size=3)
        img[_ellipsoid_mask(g, c, rad) & visceral] = 40
        img[_ellipsoid_mask(g, c, rad, below=0.78) & visceral] = -850 if rng.random() < 0.5 else 12
    # Liver (patient's right = -x), spleen (left = +x).
    liver_c = (-62 + rng.uniform(-6, 6), -5 + rng.uniform(-6, 6), 105 + rng.uniform(-8, 8))
    liver_rad = (82 + rng.uniform(-8, 8), 88 + rng.uniform(-8, 8), 88 + rng.uniform(-8, 8))
    liver_rot = _rotation(0, rng.uniform(-10, 10), rng.uniform(-15, 15))
    k_liver, ph_liver = _waves(rng, 5, (90, 160))
    # the waves' field is at most sqrt(5): the liver lies within 1 + 0.06 sqrt(5) of its ellipsoid's radius
    lbox, lg = g.ellipsoid_crop(liver_c, liver_rad, liver_rot, 1.0 + 0.06 * np.sqrt(5))
    liver_r = lg.ellipsoid_r(liver_c, liver_rad, liver_rot) + 0.06 * _wave_field(lg, k_liver, ph_liver)
    liver = _pad((liver_r < 1.0) & (lg.x < 40), lbox, g.shape) & visceral
    spleen = _ellipsoid_mask(g, (92 + rng.uniform(-5, 5), 35, 85 + rng.uniform(-8, 8)), (30, 45, 55),
                             _rotation(0, 0, 30)) & visceral
    img[liver] = hu["liver"]
    img[spleen] = hu["spleen"]
    # Hepatic/portal vessels: tubes of enhancing blood inside the liver.
    k_v, ph_v = _waves(rng, 3, (40, 80))
    vessels = liver & _pad((np.abs(_wave_field(lg, k_v, ph_v)) < 0.07) & (liver_r < 0.85), lbox, g.shape)
    img[vessels] = hu["vein"] + 10

    # Kidneys.
    kidneys = {}
    for side, sx in (("right", -1.0), ("left", 1.0)):
        center = (sx * (70 + rng.uniform(-6, 6)), 55 + rng.uniform(-6, 6),
                  (-12.0 if side == "right" else 0.0) + rng.uniform(-10, 10))
        radii = (27 + rng.uniform(-3, 3), 22 + rng.uniform(-3, 3), 55 + rng.uniform(-6, 6))
        rot = _rotation(rng.uniform(-10, 10), sx * rng.uniform(5, 15), -sx * rng.uniform(15, 35))
        if var:
            radii = tuple(r * f * float(vr.uniform(0.95, 1.05)) for r, f in zip(radii, var["kidney_scale"],
                                                                                  strict=True))
        kd = _Kidney(side, center, radii, rot)
        kidney, cortex, medulla, sinus = _kidney_fields(g, kd, rng, var.get("medulla_extent", 0.8),
                                                        var.get("lobulation", 0.0), vr)
        img[sinus] = -80
        pelvis = sinus & _ellipsoid_mask(g, center, (0.3 * radii[0], 0.25 * radii[1], 0.4 * radii[2]), rot)
        img[pelvis] = hu["pelvis"]
        img[cortex] = hu["cortex"]
        img[medulla] = hu["medulla"]
        if var and var["texture_hu"] > 0:  # parenchymal texture: smooth, patchy enhancement
            tex = ndimage.gaussian_filter(vr.normal(size=g.shape).astype(np.float32), sigma=(1.5, 2.5, 2.5))
            parenchyma = cortex | medulla
            img[parenchyma] += (tex / (tex.std() + 1e-6) * var["texture_hu"])[parenchyma]
        kidneys[side] = (kd, kidney)

    organ_masks = {"spleen": spleen, "liver": liver, "kidney_right": kidneys["right"][1],
                   "kidney_left": kidneys["left"][1]}

    # Lesions.
    requested = n_lesions is not None
    if n_lesions is None:
        n_lesions = int(rng.integers(0, 4))
    labels = np.zeros(g.shape, np.uint16)
    lesions: list[LesionSpec] = []
    for lid in range(1, n_lesions + 1):
        for _attempt in range(30):
            if organ == "kidney":
                side = str(rng.choice(["right", "left"]))
                kd, kmask = kidneys[side]
                structure, host, ref_hu = f"kidney_{side}", kmask, hu["cortex"]
                d = _diameter(rng, min(max_diameter, 80.0), lesion_sizes)
                position = str(rng.choice(POSITIONS))
                depth = {"inside": rng.uniform(0.2, 0.55), "border": 1.0,
                         "exophytic": 1.0 + 0.5 * d / (2 * np.mean(kd.radii))}[position]
                dirn = rng.normal(size=3)
                dirn /= np.linalg.norm(dirn)
                local = dirn * np.array(kd.radii) * depth
                center = tuple(float(v) for v in np.array(kd.center) + kd.rotation @ local)
            else:
                side, structure, host, ref_hu = "", "liver", liver, hu["liver"]
                d = _diameter(rng, min(max_diameter, 80.0), lesion_sizes)
                position = str(rng.choice(["inside", "inside", "border"]))
                idx = np.argwhere(host)
                pick = idx[rng.integers(len(idx))]
                center = (float(g.x[0, 0, pick[2]]), float(g.y[0, pick[1], 0]), float(g.z[pick[0], 0, 0]))
            sl, sub = g.crop(center, 0.7 * d + 3)
            if vr is not None:
                shape, shape_kind = _varied_lesion_shape(sub, vr, center, d)
            else:
                shape, shape_kind = _lesion_shape(sub, rng, center, d), ""
            inside_host = np.count_nonzero(shape & host[sl])
            if inside_host < 0.3 * max(np.count_nonzero(shape), 1) or np.any(labels[sl][shape]) or not shape.any():
                continue
            kind = str(rng.choice(KINDS_CT))
            if kind == "cyst":
                values = rng.uniform(0, 12) + rng.normal(0, 3, size=sub.shape).astype(np.float32)
            else:
                delta = {"hypo": -rng.uniform(55, 100), "hyper": rng.uniform(50, 90),
                         "iso": rng.choice([-1, 1]) * rng.uniform(12, 25)}[kind]
                if phase == "non-contrast":
                    delta = {"hypo": -12, "hyper": 15, "iso": 6}[kind]
                texture = ndimage.gaussian_filter(rng.normal(0, 18, size=sub.shape).astype(np.float32), 2)
                values = ref_hu + delta + texture
            img[sl][shape] = values[shape]
            labels[sl][shape] = lid
            organ_masks[structure][sl] |= shape & visceral[sl]
            lesions.append(LesionSpec(lid, structure, side, kind, position, round(d, 1), center,
                                      int(np.count_nonzero(shape)), shape_kind))
            break
        else:
            if requested:
                raise InputError(f"phantom seed {seed}: could not place lesion {lid} without overlap; use fewer")
            break  # a random count: keep the lesions that fit

    # Partial-volume blur, then CT-like correlated noise.
    img = ndimage.gaussian_filter(img, sigma=(0.5, 0.7, 0.7))
    sigma = rng.uniform(8, 18)
    if var:
        sigma = var["noise_hu"]
    noise = ndimage.gaussian_filter(rng.normal(0, 1, size=g.shape).astype(np.float32), sigma=(0.4, 0.8, 0.8))
    img += noise / noise.std() * sigma
    img = np.round(img).astype(np.int16)

    structures = ("kidney_right", "kidney_left") if organ == "kidney" else ("liver",)
    status = {s: ("unhealthy" if any(le.structure == s for le in lesions) else "healthy") for s in structures}
    return PhantomCase(
        case_id=case_name(organ, seed, variety, lesion_sizes), organ=organ, seed=seed, channels={"ct": g.image(img)},
        organ_masks={k: g.image(v.astype(np.uint8)) for k, v in organ_masks.items()},
        lesion_labels=g.image(labels), lesions=lesions, structure_labels=status,
        report=_ct_report(organ, phase, lesions, rng), phase=phase,
        meta={"noise_hu": round(float(sigma), 1), **({"generator": "varied", "variety": var} if variety else {}),
              **({"lesion_sizes": lesion_sizes} if lesion_sizes != "strata" else {})},
    )


def _ct_report(organ: str, phase: str, lesions: list[LesionSpec], rng: np.random.Generator) -> str:
    words = {"cyst": "simple cyst", "hypo": "hypodense solid lesion", "hyper": "hyperdense enhancing mass",
             "iso": "subtle isodense lesion"}
    lines = [f"CT of the abdomen, {phase} phase.", "Comparison: none."]
    sides = ("right", "left") if organ == "kidney" else ()
    for side in sides:
        found = [le for le in lesions if le.side == side]
        if not found:
            lines.append(str(rng.choice([f"The {side} kidney is normal in size without focal lesion.",
                                         f"No cyst or mass in the {side} kidney.",
                                         f"The {side} kidney enhances normally."])))
        for le in found:
            where = {"inside": "intraparenchymal", "border": "cortical", "exophytic": "exophytic"}[le.position]
            lines.append(f"There is a {le.diameter_mm / 10:.1f} cm {where} {words[le.kind]} in the {side} kidney.")
    if organ == "liver":
        if not lesions:
            lines.append("The liver is normal in size and attenuation without focal lesion.")
        for le in lesions:
            lines.append(f"A {le.diameter_mm / 10:.1f} cm {words[le.kind]} is seen in the liver.")
    else:
        lines.append("The liver is normal in size and attenuation.")
    fillers = ["The spleen is unremarkable.", "The pancreas is unremarkable.", "The adrenal glands are normal.",
               "No free fluid.", "No lymphadenopathy.", "The aorta is of normal calibre.",
               "The bowel loops are unremarkable.", "No suspicious osseous lesion.", "The lung bases are clear.",
               "The urinary bladder is unremarkable."]
    lines += list(rng.permutation(fillers)[: int(rng.integers(7, 11))])
    lines.append("Impression: " + ("findings as described above." if lesions else "no acute abnormality."))
    return " ".join(lines)


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


def case_name(organ: str, seed: int, variety: bool = False, lesion_sizes: str = "strata") -> str:
    """A phantom's case id: ``<organ>-<seed>``, ``<organ>-var-<seed>`` from the varied generator, with ``-inc``
    before the seed for the ``incidental`` lesion size mix."""
    return f"{organ}{'-var' if variety else ''}{'-inc' if lesion_sizes == 'incidental' else ''}-{seed:05d}"


def make_phantom(organ: str, seed: int = 0, n_lesions: int | None = None, **kwargs) -> PhantomCase:
    """Generate one case for ``organ`` ("kidney", "liver" or "brain"); ``variety=True`` (kidney, liver): the varied
    generator (:func:`abdomen_ct`)."""
    if n_lesions is not None and n_lesions < 0:
        raise InputError(f"number of lesions must be >= 0, got {n_lesions}")
    if organ in ("kidney", "liver"):
        return abdomen_ct(organ, seed, n_lesions, **kwargs)
    if organ == "brain":
        if kwargs.pop("variety", False):
            raise InputError("the varied phantom generator is for the kidney and the liver (CT) only")
        if kwargs.pop("lesion_sizes", "strata") != "strata":
            raise InputError("the incidental lesion size mix is for the kidney and the liver (CT) only")
        return brain_mr(seed, n_lesions, **kwargs)
    raise InputError(f"unknown organ {organ!r}; choose kidney, liver or brain")


def _multilabel(case: PhantomCase) -> sitk.Image:
    table = TOTALSEG_LABELS["total_mr" if case.organ == "brain" else "total"]
    ref = next(iter(case.organ_masks.values()))
    out = np.zeros(sitk.GetArrayViewFromImage(ref).shape, np.uint8)
    for name, mask in case.organ_masks.items():
        out[sitk.GetArrayViewFromImage(mask) > 0] = table[name]
    im = sitk.GetImageFromArray(out)
    im.CopyInformation(ref)
    return im


def write_phantom(case: PhantomCase, out_dir: str | os.PathLike) -> Path:
    """Write a case folder atomically; returns it. Layout documented in the module docstring."""
    out = Path(out_dir)
    with atomic_output_dir(out) as stage:
        for name, image in case.channels.items():
            write_volume(image, stage / f"{name}.nii.gz")
        (stage / "segmentations").mkdir()
        for name, mask in case.organ_masks.items():
            write_volume(mask, stage / "segmentations" / f"{name}.nii.gz")
        write_volume(_multilabel(case), stage / "segmentations.nii.gz")
        write_volume(case.lesion_labels, stage / "lesions.nii.gz")
        (stage / "report.txt").write_text(case.report + "\n")
        info = {
            "case_id": case.case_id, "organ": case.organ, "seed": case.seed, "phase": case.phase,
            "synthetic": True, "channels": list(case.channels), "structure_labels": case.structure_labels,
            "lesions": [asdict(le) for le in case.lesions], "meta": case.meta,
        }
        (stage / "case.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def write_dataset(organ: str, out_dir: str | os.PathLike, seeds: list[int], n_lesions: int | None = None,
                  skip_existing: bool = False, variety: bool = False, replace: bool = False,
                  lesion_sizes: str = "strata") -> Path:
    """Write many cases (``<out>/<case_id>/``) plus ``labels.csv`` and ``reports.csv``.

    ``skip_existing`` keeps case folders that are already complete (restartable generation); ``labels.csv`` and
    ``reports.csv`` then list every complete case in the folder, those of earlier runs too. ``replace`` removes
    the phantom cases of an earlier run that this one does not write (``phantom --cases N --overwrite``).
    """
    out = Path(out_dir)
    earlier = sorted(d for d in out.iterdir() if d.is_dir() and (d / "case.json").is_file()) if out.is_dir() else []
    infos = {d.name: json.loads((d / "case.json").read_text()) for d in earlier}
    for d in earlier:
        info = infos[d.name]
        if info.get("organ") != organ:
            raise InputError(f"{out}: holds the {info.get('organ')} phantom case {d.name}; a dataset has one organ: "
                             f"write the {organ} cases to another folder")
    ids = []
    for seed in seeds:
        done = out / case_name(organ, seed, variety, lesion_sizes) / "case.json"
        if not (skip_existing and done.is_file()):
            case = make_phantom(organ, seed, n_lesions, variety=variety, lesion_sizes=lesion_sizes)
            write_phantom(case, out / case.case_id)
            infos.pop(case.case_id, None)  # written anew: read below
        ids.append(case_name(organ, seed, variety, lesion_sizes))
    if replace:
        for d in earlier:
            if d.name not in ids:
                shutil.rmtree(d)
    else:
        ids += [d.name for d in earlier if d.name not in ids]
    rows, reports = [], []
    for case_id in ids:
        info = infos.get(case_id) or json.loads((out / case_id / "case.json").read_text())
        labels, lesions = info["structure_labels"], info["lesions"]
        for structure, label in labels.items():
            side = structure.split("_")[-1] if structure.startswith("kidney_") else ""
            n = sum(le["structure"] == structure for le in lesions)
            rows.append({"case": case_id, "organ": organ, "structure": structure, "side": side,
                         "label": label, "lesions": n})
        reports.append({"case": case_id, "report": (out / case_id / "report.txt").read_text().strip()})
    with atomic_output_dir(out) as stage:
        for name, table in (("labels.csv", rows), ("reports.csv", reports)):
            with open(stage / name, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(table[0]))
                writer.writeheader()
                writer.writerows(table)
    return out
