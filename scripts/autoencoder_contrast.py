"""How much of each lesion's contrast an autoencoder's own reconstruction D(E(x)) keeps, by lesion size: the first
step of the loss funnel (docs/evaluation.md), for comparing autoencoders (e.g. ``tiny`` against ``tiny-2x``)
before training a denoiser on one.

    python scripts/autoencoder_contrast.py --bundle AE_BUNDLE [AE_BUNDLE ...] --data HELD_OUT [HELD_OUT ...]

Each bundle needs only its autoencoder (``train autoencoder --out`` writes one). The lesions are those of the
unhealthy structures' ROI patches at the bundle's spacing (phantom layout, lesions.nii.gz); size is the
equivalent-sphere diameter; "kept" is (mean inside - mean of the 4 mm ring) in D(E(x)) over the same in the
patch (:func:`~DiffusionAnomalyLib.evaluation.metrics.contrast_kept`). Prints one JSON object: per bundle and
size class the number of lesions, the median kept share with its quartiles, and the share below one half
(lost at the funnel's first step when the map is taken against D(E(x))); and the seconds per patch of one
encode and decode. Sizes are those of ``scripts/diffusion_core_figures.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusion_core_figures import KEPT_SIZES, _kept_by_size  # this folder is on sys.path when run as a script

from DiffusionAnomalyLib.evaluation.funnel import KEPT_SHARE
from DiffusionAnomalyLib.evaluation.metrics import contrast_kept
from DiffusionAnomalyLib.models.bundle import load_bundle
from DiffusionAnomalyLib.models.nets.autoencoder import LatentCodec
from DiffusionAnomalyLib.training.data import load_patches


def kept_rows(bundle, folders: list[str], work: Path) -> tuple[list[tuple[float, float]], float]:
    """(diameter, kept share) of every lesion in the unhealthy patches of ``folders``; seconds per patch."""
    codec = LatentCodec(bundle.networks["autoencoder"])
    spacing = bundle.preset.spacing_mm[::-1]
    rows, seconds, patches = [], 0.0, 0
    for folder in folders:
        data = load_patches(folder, bundle.preset, cache_dir=work / Path(folder).name, labels=("unhealthy",),
                            lesions=True)
        for i in range(len(data.x)):
            t0 = time.perf_counter()
            with torch.no_grad():
                x = torch.from_numpy(data.x[i:i + 1])
                rec = codec.decode(codec.encode(x)).float().numpy()[0]
            seconds += time.perf_counter() - t0
            patches += 1
            for c in range(rec.shape[0]):
                rows += contrast_kept(data.x[i, c], rec[c], data.lesions[i], spacing)
    return rows, seconds / max(patches, 1)


def by_size(rows: list[tuple[float, float]]) -> dict:
    """The figures script's median and quartiles per size, with the share below one half."""
    out = _kept_by_size(rows)
    for low, high in KEPT_SIZES:
        r = np.array([k for d, k in rows if low <= d < high])
        if len(r):
            out[f"{low}-{high} mm"]["below_half"] = round(float(np.mean(r < KEPT_SHARE)), 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, nargs="+")
    p.add_argument("--data", required=True, nargs="+", help="held-out dataset folder(s), pooled")
    p.add_argument("--work", default="build/autoencoder-contrast", help="patch caches")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    result = {}
    for b in args.bundle:
        bundle = load_bundle(b, parts=("autoencoder",))
        rows, per_patch = kept_rows(bundle, args.data, Path(args.work) / f"{bundle.preset.spacing_mm[0]:g}mm")
        meta = bundle.meta
        result[b] = {"network": meta.networks["autoencoder"].get("channels"), "latent": meta.latent,
                     "spacing_mm": list(bundle.preset.spacing_mm), "seconds_per_patch": round(per_patch, 3),
                     "by_size": by_size(rows)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
