"""Issue 37 diagnostic: does regenerating the first pass's candidate region from its context remove the small kidney
lesions that the healthy reconstruction leaves in, and does the map then separate them better?

The funnel puts most small lesions at step (b): at L = 250 the reconstruction keeps about half of their contrast,
because the sampler starts from the input noised to L and the lesion is still in that latent. Here each ROI is
reconstructed twice: the first pass as the bundle recommends; the candidate region is then the organ voxels whose
first-pass residual |x - reconstruction| is in the organ's top (1 - q) share, dilated by ``--dilate`` voxels; the
second pass is RePaint (the ``inpaint`` sampler) started at the higher level ``--inner-level`` inside that region
(on the latent grid), with the input noised to each step's level outside it. The result is scored per small lesion
as :mod:`noise_level_small` does (contrast kept, map AUC against the kidneys' lesion-free voxels).

    python scripts/two_pass_small.py --bundle B --cases A/kidney-inc-01008 ... --inner-levels 500 750 \
        --work build/two-pass-small [--quantile 0.9] [--dilate 1] [--jumps 1] [--settings '{...}']

With ``--cli`` the rest of the line is a ``diffusion-anomaly`` command run in this process with the two-pass
reconstruction at the first inner level (a ``sweep`` or ``evaluate`` whose maps are then two-pass maps; give it an
--out of its own, so that no one-pass map is reused from a cache):

    python scripts/two_pass_small.py --inner-levels 500 --cli sweep --data V --bundle B --out W/sweep2p ...

A diagnostic, not a product option: nothing in the library changes; detections are kept under work/ and reused.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from noise_level_small import describe, read_case, small_lesions, summarize  # noqa: E402

from DiffusionAnomalyLib.api import DetectRequest, detect  # noqa: E402
from DiffusionAnomalyLib.models import reconstruction  # noqa: E402

ONE_PASS = reconstruction.DiffusionReconstructor.reconstruct  # the library's; each two-pass patch wraps this one


def candidate_region(x: np.ndarray, first: np.ndarray, organ: np.ndarray, quantile: float, dilate: int) -> np.ndarray:
    """(B, ...) boolean: per ROI the organ voxels in the top (1 - quantile) of the first pass's residual, dilated."""
    residual = np.abs(x - first).max(axis=1)
    region = np.zeros(organ.shape, bool)
    for b in range(len(organ)):
        inside = organ[b] > 0
        if inside.any():
            top = (residual[b] > np.quantile(residual[b][inside], quantile)) & inside
            region[b] = (ndimage.binary_dilation(top, iterations=dilate) if dilate else top) & inside
    return region


def install_two_pass(inner_level: int, quantile: float, dilate: int, jumps: int) -> None:
    """Replace DiffusionReconstructor.reconstruct (in this process) by the two-pass version around the library's."""
    one_pass = ONE_PASS

    def two_pass(self, x, mask, spacing_mm):
        first = one_pass(self, x, mask, spacing_mm)
        region = torch.from_numpy(candidate_region(x, first, mask, quantile, dilate).astype(np.float32))[:, None]
        saved = self.settings
        self.settings = replace(saved, method="inpaint", noise_level=inner_level, resample_jumps=jumps)
        self._latent_mask = lambda _x, _m, z_shape: torch.nn.functional.adaptive_max_pool3d(
            region, tuple(z_shape[2:])).to(self.device)
        try:
            return one_pass(self, x, mask, spacing_mm)
        finally:
            self.settings = saved
            del self._latent_mask

    reconstruction.DiffusionReconstructor.reconstruct = two_pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle")
    p.add_argument("--cases", nargs="+", type=Path)
    p.add_argument("--inner-levels", nargs="+", type=int, default=[500, 750])
    p.add_argument("--quantile", type=float, default=0.9)
    p.add_argument("--dilate", type=int, default=1)
    p.add_argument("--jumps", type=int, default=1)
    p.add_argument("--max-mm", type=float, default=20.0)
    p.add_argument("--work", type=Path, default=Path("build/two-pass-small"))
    p.add_argument("--settings", type=json.loads, default={})
    p.add_argument("--cli", nargs=argparse.REMAINDER, help="a diffusion-anomaly command to run with the two passes")
    args = p.parse_args(argv)
    if args.cli:
        from DiffusionAnomalyLib.app.cli import main as cli_main

        install_two_pass(args.inner_levels[0], args.quantile, args.dilate, args.jumps)
        return cli_main(args.cli)
    if not args.bundle or not args.cases:
        p.error("--bundle and --cases are needed (or --cli)")
    arrays = {case: read_case(case) for case in args.cases}  # each case read once, for every level
    summary = {}
    for level in args.inner_levels:
        install_two_pass(level, args.quantile, args.dilate, args.jumps)
        rows = []
        for case in args.cases:
            out = args.work / f"inner{level}" / case.name
            if not (out / "run.json").is_file():
                detect(DetectRequest(images=(str(case / "ct.nii.gz"),), out=str(out), bundle=args.bundle,
                                     totalseg=str(case / "segmentations"), settings=args.settings,
                                     overview=False, overwrite=True))
            rows += small_lesions(case, arrays[case], out, args.max_mm)
        summary[level] = summarize(rows)
        print(f"inner L = {level} (q = {args.quantile}, dilate {args.dilate}, jumps {args.jumps}): {len(rows)} "
              f"lesions <= {args.max_mm:g} mm, {describe(summary[level])}")
    (args.work / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
