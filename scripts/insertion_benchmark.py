"""The insertion benchmark on real anatomy (README "How good is it"; docs/synthesis.md#the-insertion-benchmark):
lesions synthesised into the real scans of ``../shared/data`` and scored with ``evaluate --insert``.

    python scripts/insertion_benchmark.py [--shared ../shared/data] [--work build/insertion] [--insert 8] \
        [--kidney-synthesizer BUNDLE] > insertion.json

Hosts: TotalSegmentator's example CT crop (``example_ct_sm``: both kidneys and the liver, its real
``example_seg`` masks; organs cut by the crop are partial) and the example DICOM series' liver
(``example_seg_dicom``). Each organ is scored with its shipped demo bundle (the median baseline beside), with
``paste`` and, where a synthesizer bundle is given, ``diffusion``. The brain is left out: the MNI template is one
T1 volume and the brain bundles take four MR sequences.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.evaluation.commands import EvaluateRequest, evaluate
from DiffusionAnomalyLib.imaging.io import read_volume, write_volume

REPO = Path(__file__).resolve().parents[1]
LABELS = {"kidney_right": 2, "kidney_left": 3, "liver": 5}


def host(folder: Path, image: sitk.Image, seg: sitk.Image, structures: list[str]) -> Path:
    """A phantom-layout host case: ``ct.nii.gz`` and ``segmentations/<structure>.nii.gz`` from a multilabel file."""
    if (folder / "ct.nii.gz").is_file():
        return folder
    (folder / "segmentations").mkdir(parents=True, exist_ok=True)
    write_volume(image, folder / "ct.nii.gz")
    labels = sitk.GetArrayFromImage(seg)
    for s in structures:
        mask = sitk.GetImageFromArray((labels == LABELS[s]).astype(np.uint8))
        mask.CopyInformation(image)
        write_volume(mask, folder / "segmentations" / f"{s}.nii.gz")
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--work", default="build/insertion")
    p.add_argument("--insert", type=int, default=8)
    p.add_argument("--kidney-synthesizer", default=None)
    args = p.parse_args()
    ts = Path(args.shared) / "totalsegmentator_examples"
    work = Path(args.work)
    ct = read_volume(ts / "example_ct_sm.nii.gz")
    seg = sitk.ReadImage(str(ts / "example_seg.nii.gz"))
    host(work / "hosts-kidney" / "example_ct_sm", ct, seg, ["kidney_right", "kidney_left"])
    host(work / "hosts-liver" / "example_ct_sm", ct, seg, ["liver"])
    dicom = read_volume(ts / "example_ct_dicom")
    dseg = sitk.ReadImage(str(ts / "example_seg_dicom.nii.gz"))
    dseg = sitk.Resample(dseg, dicom, sitk.Transform(), sitk.sitkNearestNeighbor, 0)  # its own (flipped) axes
    host(work / "hosts-liver" / "example_ct_dicom", dicom, dseg, ["liver"])
    runs = [("kidney", "paste", None), ("liver", "paste", None)]
    if args.kidney_synthesizer:
        runs.insert(1, ("kidney", "diffusion", args.kidney_synthesizer))
    result = {}
    for organ, method, synthesizer in runs:
        print(f"{organ} {method} ...", file=sys.stderr)
        try:
            found = evaluate(EvaluateRequest(
                data=str(work / f"hosts-{organ}"), out=str(work / f"{organ}-{method}"),
                bundle=str(REPO / "Resources" / "Models" / f"{organ}-demo"), threshold="bundle", bootstrap=200,
                insert=args.insert, insert_method=method, insert_bundle=synthesizer, settings={"seed": 0}))
        except InputError as exc:  # e.g. a crop shorter than half the organ's ROI: detection refuses every case
            result[f"{organ} {method}"] = {"not scored": str(exc)[:400]}
            continue
        summary = json.loads((work / f"{organ}-{method}" / "report" / "summary.json").read_text())
        result[f"{organ} {method}"] = {
            "model": {k: summary["summary"].get(k) for k in ("reference_lesions", "size_strata", "fp_per_organ",
                                                           "lesion_detection")},
            "baseline": summary.get("baseline_beside") or summary.get("baseline"), "threshold": found.threshold}
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
