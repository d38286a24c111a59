"""The brain MRI phantom: a skull-stripped, co-registered t1n / t1c / t2w / t2f head with glioma-like tumours
or metastases (see :mod:`DiffusionAnomalyLib.synthetic.phantoms`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from DiffusionAnomalyLib.synthetic.base import (
    LesionSpec,
    PhantomCase,
    _Grid,
    _lesion_shape,
    _rotation,
    _wave_field,
    _waves,
)

#: Tissue intensities (arbitrary MR units) per sequence.
BRAIN_TISSUE = {
    "t1n": dict(wm=800, gm=560, csf=200, necrosis=300, rim=520, edema=600),
    "t1c": dict(wm=790, gm=570, csf=190, necrosis=280, rim=1150, edema=610),
    "t2w": dict(wm=450, gm=650, csf=1200, necrosis=1050, rim=800, edema=920),
    "t2f": dict(wm=470, gm=620, csf=110, necrosis=520, rim=820, edema=960),
}


def brain_mr(seed: int, n_lesions: int | None = None, *, max_diameter: float = 60.0,
             spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)) -> PhantomCase:
    """A skull-stripped 4-sequence brain MRI with glioma-like tumours or metastases."""
    rng = np.random.default_rng(seed)
    size = tuple(int(round(f / s)) for f, s in zip((180.0, 216.0, 162.0), spacing, strict=True))
    g = _Grid(size, spacing, (0.0, 0.0, 0.0))
    radii = (66 + rng.uniform(-4, 4), 84 + rng.uniform(-5, 5), 60 + rng.uniform(-4, 4))
    k_b, ph_b = _waves(rng, 4, (60, 120))
    rb = g.ellipsoid_r((0, 0, 8), radii) + 0.03 * _wave_field(g, k_b, ph_b)
    cerebellum_r = g.ellipsoid_r((0, 52, -40), (48, 28, 22))
    brain = (rb < 1.0) | (cerebellum_r < 1.0)
    k_f, ph_f = _waves(rng, 16, (10, 20))
    folds = _wave_field(g, k_f, ph_f)
    tissue = np.zeros(g.shape, np.uint8)  # 1 csf, 2 gm, 3 wm
    tissue[brain] = 2
    wm = (rb < 0.88 + 0.07 * folds) & brain
    tissue[wm] = 3
    tissue[brain & (rb > 0.86) & (folds > 0.9)] = 1  # sulci
    tissue[brain & (np.abs(g.x) < 1.5) & (g.z > -5)] = 1  # interhemispheric fissure
    tissue[(cerebellum_r < 0.7) & (np.abs(folds) < 0.5)] = 3
    for sx in (-1, 1):
        tissue[g.ellipsoid_r((sx * 13, 5, 2), (10, 15, 10)) < 1] = 2  # thalami
        tissue[g.ellipsoid_r((sx * 9, -6, 14), (5, 27, 9), _rotation(0, 0, sx * 8)) < 1] = 1  # lateral ventricles
    tissue[g.ellipsoid_r((0, 5, 2), (2, 12, 8)) < 1] = 1  # third ventricle

    labels = np.zeros(g.shape, np.uint16)
    core = np.zeros(g.shape, np.uint8)  # 0 none, 1 oedema, 2 rim, 3 necrosis
    lesions: list[LesionSpec] = []
    if n_lesions is None:
        n_lesions = int(rng.integers(0, 3))
    for lid in range(1, n_lesions + 1):
        for _attempt in range(30):
            kind = str(rng.choice(["glioma", "non-enhancing", "metastasis"]))
            d = float(rng.uniform(8, 20) if kind == "metastasis" else rng.uniform(15, max_diameter))
            idx = np.argwhere(wm)
            pick = idx[rng.integers(len(idx))]
            center = (float(g.x[0, 0, pick[2]]), float(g.y[0, pick[1], 0]), float(g.z[pick[0], 0, 0]))
            margin = rng.uniform(10, 30)
            sl, sub = g.crop(center, 0.7 * (d + margin) + 3)
            tumour = _lesion_shape(sub, rng, center, d) & brain[sl]
            edema = _lesion_shape(sub, rng, center, d + margin) & brain[sl] & (tissue[sl] != 1)
            whole = tumour | edema
            if not tumour.any() or np.any(labels[sl][whole]):
                continue
            c = core[sl]
            c[edema] = np.maximum(c[edema], 1)
            if kind == "non-enhancing":
                c[tumour] = 1
            else:
                c[tumour] = 2
                c[_lesion_shape(sub, rng, center, d * rng.uniform(0.4, 0.7)) & tumour] = 3
            labels[sl][whole] = lid
            position = "border" if np.any(whole & (rb[sl] > 0.9)) else "inside"
            lesions.append(LesionSpec(lid, "brain", "", kind, position, round(d, 1), center,
                                      int(np.count_nonzero(whole))))
            break

    bias_k, bias_ph = _waves(rng, 3, (200, 400))
    channels = {}
    for name, t in BRAIN_TISSUE.items():
        vol = np.zeros(g.shape, np.float32)
        vol[tissue == 1] = t["csf"]
        vol[tissue == 2] = t["gm"]
        vol[tissue == 3] = t["wm"]
        vol[core == 1] = t["edema"]
        vol[core == 2] = t["rim"]
        vol[core == 3] = t["necrosis"]
        vol = ndimage.gaussian_filter(vol, 0.6)
        vol *= 1.0 + 0.06 * _wave_field(g, bias_k, bias_ph)
        vol += rng.normal(0, 18, size=g.shape).astype(np.float32)
        vol[~brain] = 0.0
        channels[name] = g.image(np.clip(vol, 0, None).astype(np.float32))
    status = {"brain": "unhealthy" if lesions else "healthy"}
    report = _brain_report(lesions, rng)
    return PhantomCase(
        case_id=f"brain-{seed:05d}", organ="brain", seed=seed, channels=channels,
        organ_masks={"brain": g.image(brain.astype(np.uint8))}, lesion_labels=g.image(labels), lesions=lesions,
        structure_labels=status, report=report, phase="pre/post gadolinium",
    )


def _brain_report(lesions: list[LesionSpec], rng: np.random.Generator) -> str:
    lines = ["MRI of the brain with and without gadolinium.", "Comparison: none."]
    desc = {"glioma": "heterogeneously enhancing mass with central necrosis and surrounding oedema",
            "non-enhancing": "non-enhancing T2/FLAIR hyperintense mass", "metastasis": "small enhancing nodule"}
    for le in lesions:
        side = "left" if le.center_lps[0] > 0 else "right"
        lines.append(f"There is a {le.diameter_mm / 10:.1f} cm {desc[le.kind]} in the {side} hemisphere.")
    if not lesions:
        lines.append("No intracranial mass or abnormal enhancement.")
    fillers = ["The ventricles are normal in size.", "No midline shift.", "No acute infarct.",
               "No intracranial haemorrhage.", "The basal cisterns are patent.", "The orbits are unremarkable.",
               "The paranasal sinuses are clear.", "Normal flow voids.", "The cerebellum is unremarkable."]
    lines += list(rng.permutation(fillers)[: int(rng.integers(7, 10))])
    lines.append("Impression: " + ("intracranial lesion as described." if lesions else "normal study."))
    return " ".join(lines)


