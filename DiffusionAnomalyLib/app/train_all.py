"""``diffusion-anomaly train all``: from a dataset folder to a calibrated, documented bundle in one command.

Stages (each restartable; a finished stage is never redone, an interrupted one resumes from its checkpoint):

1. **prepare**: find the cases (phantom, KiTS, BraTS or LiTS layout; split folders ``DATA/<split>/<case>/``;
   ``--cases`` lists), their organ masks (from the dataset's labels, or ``--totalseg``), their lesions, and a
   label per structure (``labels.csv``, else derived from the lesion labels); a deterministic train / validation
   split by case; everything in the phantom layout under ``OUT.work/data/{train,validation}/``.
2. **autoencoder**, 3. **denoiser** (healthy structures), 4. **classifier**: the single ``train`` stages on the
   training split; then the classifier's AUC on the validation split.
5. **calibrate**: ``sweep`` on the validation split only (cases training never saw), the median baseline beside;
   guidance s > 0 only when the classifier's validation AUC is not near chance.
6. **bundle**: ``OUT`` with its model card (``README.md``) filled in from what was done, ``split.csv`` and
   ``training.md`` (the summary).

Work files live in ``OUT.work/``; ``stages.json`` there records each finished stage and its wall time.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from DiffusionAnomalyLib.detection.presets import OrganPreset, get_preset
from DiffusionAnomalyLib.errors import DiffusionAnomalyError, InputError

logger = logging.getLogger(__name__)

STAGES = ("prepare", "autoencoder", "denoiser", "classifier", "calibrate", "bundle")
LABEL_VALUES = ("healthy", "unhealthy", "excluded", "unknown")
#: Split folder names: the first group trains, the second validates (calibration), the third is left alone.
TRAIN_SPLITS = ("train", "training", "tr")
VALIDATION_SPLITS = ("val", "validation", "valid")
TEST_SPLITS = ("test", "testing", "ts", "holdout")
#: Below this many structures of a label in the training split, a warning says the classifier will be weak.
MIN_PER_LABEL = 50

#: Network size presets: ``tiny`` trains on a CPU (the demo bundles' recipe), ``thesis`` has the thesis sizes
#: (kidney thesis App. A) for GPUs. Spacing in mm per organ; iterations and batch sizes per stage.
PRESETS = {
    "tiny": {"network": "tiny", "spacing": {"kidney": 2.0, "liver": 4.0, "brain": 4.0},
             "iterations": {"autoencoder": 3000, "denoiser": 3000, "classifier": 3000},
             "batch": {"autoencoder": 2, "denoiser": 8, "classifier": 16}, "adversarial_start": None,
             "classifier_lr": 3e-4, "noise_levels": [250], "guidance": [0.0, 100.0]},
    "thesis": {"network": "thesis-kidney", "spacing": {"kidney": 1.0, "liver": 2.0, "brain": 2.0},
               "iterations": {"autoencoder": 20000, "denoiser": 20000, "classifier": 10000},
               "batch": {"autoencoder": 2, "denoiser": 8, "classifier": 16}, "adversarial_start": 10000,
               "classifier_lr": 1e-4, "noise_levels": [100, 250, 500],
               "guidance": [float(s) for s in range(0, 2001, 200)]},
}


@dataclass
class TrainAllPlan:
    """Everything ``train all`` does, resolved from the command line (recorded in ``OUT.work/plan.json``)."""

    data: str
    organ: str
    out: str
    preset: str = "tiny"
    spacing: float | None = None  # None: the preset's for the organ
    iterations: dict = field(default_factory=dict)  # stage -> iterations (missing: the preset's)
    adversarial_start: int | None = None  # None: the preset's (tiny: never)
    val_fraction: float = 0.2
    cases: str | None = None  # a file listing the cases to use
    validation_cases: str | None = None  # a file listing the validation cases
    labels: str | None = None  # labels.csv (default DATA/labels.csv when present)
    totalseg: str | None = None  # TotalSegmentator folder: <totalseg>/<case>/ or <totalseg>/<case>.nii.gz
    sampler: str = "ddpm"
    steps: int = 50
    noise_levels: list | None = None
    guidance: list | None = None
    threshold_scales: list = field(default_factory=lambda: [0.8, 0.9, 1.0, 1.15, 1.3])
    min_lesion_ml_values: list = field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0])
    grow_to_values: list = field(default_factory=lambda: [1.0, 0.7])
    max_fp_per_organ: float | None = 1.0
    reference_values: list | None = None  # map options swept in calibration (None: the run setting's default)
    samples_values: list | None = None
    median_filter_values: list | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # the networks' training steps and the calibration (training_precision)
    name: str | None = None
    version: str = "0.1.0"
    demo: bool = False
    install: str | None = None  # a models folder: the finished bundle is copied there and listed in its manifest

    def resolved(self) -> dict:
        """The settings each stage depends on (a change to one of them after the stage ran is refused)."""
        p = PRESETS[self.preset]
        its = {s: int(self.iterations.get(s) or p["iterations"][s]) for s in ("autoencoder", "denoiser", "classifier")}
        adv = self.adversarial_start if self.adversarial_start is not None else p["adversarial_start"]
        return {
            "prepare": {"data": str(Path(self.data).resolve()), "organ": self.organ, "val_fraction": self.val_fraction,
                        "cases": self.cases, "validation_cases": self.validation_cases, "labels": self.labels,
                        "totalseg": self.totalseg},
            "autoencoder": {"network": p["network"], "spacing": self.spacing or p["spacing"][self.organ],
                            "iterations": its["autoencoder"], "batch": p["batch"]["autoencoder"],
                            "adversarial_start": adv, "seed": self.seed},
            "denoiser": {"network": p["network"], "iterations": its["denoiser"], "batch": p["batch"]["denoiser"]},
            "classifier": {"iterations": its["classifier"], "batch": p["batch"]["classifier"],
                           "lr": p["classifier_lr"]},
            "calibrate": {"sampler": self.sampler, "steps": self.steps,
                          "noise_levels": [int(v) for v in (self.noise_levels or p["noise_levels"])],
                          "guidance": [float(v) for v in (self.guidance or p["guidance"])],
                          "threshold_scales": self.threshold_scales, "min_lesion_ml_values": self.min_lesion_ml_values,
                          "grow_to_values": self.grow_to_values, "max_fp_per_organ": self.max_fp_per_organ,
                          "reference_values": self.reference_values, "samples_values": self.samples_values,
                          "median_filter_values": self.median_filter_values},
            "bundle": {"name": self.name, "version": self.version, "demo": self.demo},
        }


# -- finding the cases -----------------------------------------------------------------------------
@dataclass
class RawCase:
    """One case of the dataset as found: its images, where its organ masks and lesions come from."""

    case_id: str
    layout: str  # phantom | kits | brats | lits
    channels: dict[str, Path]
    labels: Path | None  # lesion (and, for kits/lits, organ) labels
    segmentations: Path | None = None  # phantom: TotalSegmentator-style masks
    split: str = ""  # the split folder it came from ("" without split folders)
    folder: Path | None = None


def _case_in_folder(folder: Path, preset: OrganPreset) -> RawCase | None:
    name = folder.name
    chans = {c: folder / f"{c}.nii.gz" for c in preset.channels}
    if all(p.is_file() for p in chans.values()):
        seg = folder / "segmentations"
        seg = seg if seg.is_dir() else folder / "segmentations.nii.gz"
        les = folder / "lesions.nii.gz"
        return RawCase(name, "phantom", chans, les if les.is_file() else None, seg if seg.exists() else None,
                       folder=folder)
    if preset.name != "brain" and (folder / "imaging.nii.gz").is_file():
        seg = folder / "segmentation.nii.gz"
        return RawCase(name, "kits", {preset.channels[0]: folder / "imaging.nii.gz"}, seg if seg.is_file() else None,
                       folder=folder)
    brats = {c: folder / f"{name}-{c}.nii.gz" for c in preset.channels}
    if all(p.is_file() for p in brats.values()):
        seg = folder / f"{name}-seg.nii.gz"
        return RawCase(name, "brats", brats, seg if seg.is_file() else None, folder=folder)
    return None


def _lits_cases(folder: Path, preset: OrganPreset) -> list[RawCase]:
    """LiTS-style flat files: ``volume-N.nii[.gz]`` with ``segmentation-N.nii[.gz]`` (0 background, 1 liver,
    2 tumour); the case is ``volume-N``."""
    if len(preset.channels) != 1:
        return []
    out = []
    for vol in sorted(folder.glob("volume-*.nii*")):
        n = vol.name[len("volume-"):].split(".")[0]
        seg = next((p for p in (folder / f"segmentation-{n}.nii.gz", folder / f"segmentation-{n}.nii") if p.is_file()),
                   None)
        out.append(RawCase(f"volume-{n}", "lits", {preset.channels[0]: vol}, seg, folder=folder))
    return out


def _read_list(path: str | None) -> list[str] | None:
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: the case list does not exist")
    names = [line.split("#")[0].strip() for line in p.read_text().splitlines()]
    return [n.rstrip("/").split("/")[-1] for n in names if n]


def find_cases(data: Path, preset: OrganPreset) -> tuple[list[RawCase], list[str]]:
    """Every case of ``data`` (with its split folder, if any) and the folders that are no case, in words."""
    if not data.is_dir():
        raise InputError(f"{data}: --data is not a folder")
    known = {n for group in (TRAIN_SPLITS, VALIDATION_SPLITS, TEST_SPLITS) for n in group}
    folders = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    def holds_cases(folder: Path) -> bool:
        return bool(_lits_cases(folder, preset)) or any(
            _case_in_folder(sub, preset) is not None for sub in folder.iterdir() if sub.is_dir())

    splits = [f for f in folders if f.name.lower() in known and _case_in_folder(f, preset) is None
              and holds_cases(f)]
    roots = [(f, f.name.lower()) for f in splits] if splits else [(data, "")]
    cases, unusable = [], []
    for root, split in roots:
        for c in _lits_cases(root, preset):
            c.split = split
            cases.append(c)
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not split and splits and folder in splits:
                continue
            case = _case_in_folder(folder, preset)
            if case is None:
                if root == data and splits:
                    unusable.append(f"{folder.name}/: not a split folder ({', '.join(sorted(known))}) nor a case")
                elif not (split == "" and folder.name.lower() in known):
                    unusable.append(f"{folder.relative_to(data)}/: no image in a known layout (phantom: "
                                    f"{'/'.join(preset.channels)}.nii.gz; KiTS: imaging.nii.gz; BraTS: "
                                    f"<case>-<sequence>.nii.gz)")
                continue
            case.split = split
            cases.append(case)
    if splits:
        for folder in folders:
            if folder not in splits and _case_in_folder(folder, preset) is not None:
                unusable.append(f"{folder.name}/: a case beside split folders (put it in one of them)")
    seen: dict[str, RawCase] = {}
    for c in cases:
        if c.case_id in seen:
            raise InputError(f"{data}: the case {c.case_id!r} is in two places ({seen[c.case_id].split or '.'} and "
                             f"{c.split or '.'}); case names must be unique")
        seen[c.case_id] = c
    return cases, unusable


# -- labels ----------------------------------------------------------------------------------------
@dataclass
class LabelRows:
    """labels.csv read and checked: (case, structure) -> label, and the rows that cannot be used, in words."""

    labels: dict[tuple[str, str], str]
    unusable: list[str]
    other_organs: int = 0


def read_labels_file(path: Path, preset: OrganPreset, case_ids: set[str]) -> LabelRows:
    """The one labels format: CSV with a header holding ``case``, ``structure`` and ``label`` (other columns are
    ignored); ``structure`` is the segmentation file's name (``kidney_left``, ``kidney_right``, ``liver``,
    ``brain``); ``label`` one of healthy, unhealthy, excluded, unknown. Every unusable row is named."""
    from DiffusionAnomalyLib.detection.presets import PRESETS as ORGAN_PRESETS

    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot be read as CSV ({exc})") from None
    header = set(rows[0]) if rows else set()
    missing = {"case", "structure", "label"} - header
    if not rows or missing:
        raise InputError(f"{path}: needs a header with the columns case,structure,label"
                         + (f" (missing: {', '.join(sorted(missing))})" if rows else " and at least one row"))
    wanted = set(preset.structures.values())
    others = {s for p in ORGAN_PRESETS.values() for s in p.structures.values()} - wanted
    out, bad, other = {}, [], 0
    for i, r in enumerate(rows, start=2):
        case, structure, label = (str(r.get(k) or "").strip() for k in ("case", "structure", "label"))
        where = f"{path.name} line {i} ({case},{structure},{label})"
        if structure in others:
            other += 1
            continue
        if structure not in wanted:
            hint = (f"; a structure is the segmentation file's name: {' or '.join(sorted(wanted))}"
                    if structure.lower() in (*preset.structures, "l", "r", preset.name) else "")
            bad.append(f"{where}: unknown structure {structure!r} for the {preset.name}{hint}")
        elif label not in LABEL_VALUES:
            bad.append(f"{where}: unknown label {label!r} (use {', '.join(LABEL_VALUES)})")
        elif case not in case_ids:
            bad.append(f"{where}: no case {case!r} in the dataset")
        elif (case, structure) in out and out[(case, structure)] != label:
            bad.append(f"{where}: a second, different label for {case}/{structure}")
        else:
            out[(case, structure)] = label
    return LabelRows(out, bad, other)


# -- preparing one case ------------------------------------------------------------------------------
def _instances(lesion: np.ndarray) -> np.ndarray:
    labels, _ = ndimage.label(lesion, structure=np.ones((3, 3, 3), bool))
    return labels.astype(np.uint16)


def _image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    im = sitk.GetImageFromArray(array)
    im.CopyInformation(reference)
    return im


def _link_or_write(src: Path, dest: Path) -> None:
    """``dest`` (a .nii.gz name) as a link to ``src`` when it is a .nii.gz file, else a converted copy."""
    from DiffusionAnomalyLib.imaging.io import read_volume, write_volume

    if src.name.endswith(".nii.gz"):
        try:
            dest.symlink_to(src.resolve())
            return
        except OSError:
            pass
    write_volume(read_volume(src), dest)


def organ_and_lesions(case: RawCase, preset: OrganPreset, totalseg: Path | None
                      ) -> tuple[dict[str, sitk.Image], sitk.Image | None]:
    """The case's structure masks (segmentation file name -> binary image) and lesion instances (None: no lesion
    labels). Organ masks: ``totalseg`` when given, else the phantom's segmentations, the KiTS / LiTS labels (every
    nonzero label; the kidneys split left / right in patient coordinates) or the skull-stripped brain."""
    from DiffusionAnomalyLib.imaging.io import read_channels, read_volume, same_grid
    from DiffusionAnomalyLib.imaging.masks import load_totalseg_masks, mask_from_skull_stripped, split_left_right

    reference = read_volume(next(iter(case.channels.values())))
    lab_arr = None
    if case.labels is not None:
        lab = read_volume(case.labels)
        diffs = same_grid(reference, lab)
        if diffs:
            raise InputError(f"{case.labels}: the labels are not on the image's grid ({'; '.join(diffs)})")
        lab_arr = sitk.GetArrayFromImage(lab)
        if lab_arr.min() < 0 or not np.all(np.mod(lab_arr, 1) == 0):
            raise InputError(f"{case.labels}: labels are not non-negative integers")
        lab_arr = lab_arr.astype(np.int64)
    masks: dict[str, sitk.Image] = {}
    source = None
    if totalseg is not None:
        source = next((p for p in (totalseg / case.case_id, totalseg / f"{case.case_id}.nii.gz") if p.exists()), None)
        if source is None:
            raise InputError(f"{totalseg}: no TotalSegmentator output for {case.case_id} ({case.case_id}/ or "
                             f"{case.case_id}.nii.gz)")
    elif case.layout == "phantom" and case.segmentations is not None:
        source = case.segmentations
    if source is not None:
        ms = load_totalseg_masks(source, reference, preset)
        masks = {m.structure: m.image for m in ms.masks}
    elif case.layout in ("kits", "lits"):
        if lab_arr is None:
            raise InputError(f"{case.case_id}: no segmentation file, so no organ mask (or give --totalseg)")
        organ = _image((lab_arr > 0).astype(np.uint8), reference)
        if preset.paired:
            masks = {preset.structures[side]: img for side, img in split_left_right(organ).items()}
        else:
            masks = {next(iter(preset.structures.values())): organ}
    elif case.layout == "brats" or preset.name == "brain":
        ms = mask_from_skull_stripped(read_channels(list(case.channels.values())), preset)
        masks = {m.structure: m.image for m in ms.masks}
    else:
        raise InputError(f"{case.case_id}: no organ masks (segmentations/ folder, or give --totalseg)")
    lesions = None
    if lab_arr is not None:
        if case.layout == "phantom":
            lesions = _image(lab_arr.astype(np.uint16), reference)
        else:
            allowed = {"kits": {0, 1, 2, 3}, "brats": {0, 1, 2, 3, 4}, "lits": {0, 1, 2}}[case.layout]
            odd = sorted(set(np.unique(lab_arr).tolist()) - allowed)
            if odd:
                raise InputError(f"{case.labels}: label values {odd} that the {case.layout} layout does not define")
            lesion = lab_arr >= 2 if case.layout in ("kits", "lits") else lab_arr > 0
            lesions = _image(_instances(lesion), reference)
    return masks, lesions


def prepare_case(case: RawCase, preset: OrganPreset, dest: Path, totalseg: Path | None) -> dict:
    """Write ``dest`` in the phantom layout (images linked, masks and lesions written); returns per structure
    {"lesion_voxels": n} (``None`` values when the case has no lesion labels). ``dest/prepared.json`` marks it
    done (a rerun reads it back)."""
    from DiffusionAnomalyLib.imaging.io import write_volume
    from DiffusionAnomalyLib.imaging.outputs import atomic_output_dir

    done = dest / "prepared.json"
    if done.is_file():
        return json.loads(done.read_text())["structures"]
    masks, lesions = organ_and_lesions(case, preset, totalseg)
    les_arr = sitk.GetArrayViewFromImage(lesions) > 0 if lesions is not None else None
    info = {s: {"lesion_voxels": None if les_arr is None else int(np.count_nonzero(
        les_arr & (sitk.GetArrayViewFromImage(m) > 0)))} for s, m in masks.items()}
    with atomic_output_dir(dest) as stage:
        for channel, src in case.channels.items():
            _link_or_write(src, stage / f"{channel}.nii.gz")
        (stage / "segmentations").mkdir()
        for s, m in masks.items():
            write_volume(sitk.Cast(m > 0, sitk.sitkUInt8), stage / "segmentations" / f"{s}.nii.gz")
        if lesions is not None:
            write_volume(lesions, stage / "lesions.nii.gz")
        if case.folder is not None and (case.folder / "case.json").is_file() and case.layout == "phantom":
            shutil.copy2(case.folder / "case.json", stage / "case.json")  # the phantom's lesion attributes
        (stage / "prepared.json").write_text(json.dumps({"case": case.case_id, "layout": case.layout,
                                                         "split": case.split, "structures": info}) + "\n")
    return info


def _hash(case_id: str) -> float:
    return (zlib.crc32(case_id.encode()) % 100003) / 100003.0


def split_cases(case_labels: dict[str, dict[str, str]], val_fraction: float) -> set[str]:
    """Validation cases: stratified by whether a case has an unhealthy structure, in each group the
    ``val_fraction`` of cases with the smallest CRC-32 of their name (deterministic, independent of order); then, if
    the validation side lacks healthy or unhealthy structures and the training side has two cases or more with one,
    the first of those by the same order moves over."""
    val: set[str] = set()
    groups = {True: [], False: []}
    for case, labels in case_labels.items():
        groups["unhealthy" in labels.values()].append(case)
    for members in groups.values():
        n = int(round(val_fraction * len(members)))
        if val_fraction > 0 and len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)
        val |= set(sorted(members, key=lambda c: (_hash(c), c))[:n])
    if val_fraction > 0:  # each label on both sides when the training side can spare a case of it
        for label in ("healthy", "unhealthy"):
            if any(label in case_labels[c].values() for c in val):
                continue
            spare = sorted((c for c in case_labels if c not in val and label in case_labels[c].values()),
                           key=lambda c: (_hash(c), c))
            if len(spare) >= 2:
                val.add(spare[0])
    return val


@dataclass
class Prepared:
    """The prepared dataset: counts, the split, what could not be used, and the paths of the two splits."""

    train: Path
    validation: Path
    counts: dict  # split -> label -> structures
    cases: dict  # split -> [case ids]
    left_out: list[str]  # test split cases (never read)
    unusable: list[str]
    label_source: str
    mask_source: str
    layouts: list[str]
    split_rule: str
    warnings: list[str] = field(default_factory=list)


def prepare(plan: TrainAllPlan, work: Path, dry_run: bool = False, progress: Callable[[str], None] = logger.info
            ) -> Prepared:
    """Stage 1: find, check, label and split the cases; write them in the phantom layout (not in a dry run)."""
    preset = get_preset(plan.organ)
    data = Path(plan.data)
    cases, unusable = find_cases(data, preset)
    wanted = _read_list(plan.cases)
    if wanted is not None:
        ids = {c.case_id for c in cases}
        unusable += [f"{plan.cases}: {n}: no such case" for n in wanted if n not in ids]
        cases = [c for c in cases if c.case_id in set(wanted)]
    left_out = sorted(c.case_id for c in cases if c.split in TEST_SPLITS)
    cases = [c for c in cases if c.split not in TEST_SPLITS]
    if not cases:
        raise InputError(f"{data}: no usable case for the {plan.organ}" + (f" ({'; '.join(unusable[:5])})"
                                                                           if unusable else ""))
    labels_path = Path(plan.labels) if plan.labels else (data / "labels.csv" if (data / "labels.csv").is_file()
                                                        else None)
    rows = read_labels_file(labels_path, preset, {c.case_id for c in cases}) if labels_path else None
    if rows:
        unusable += rows.unusable
        if rows.unusable and not dry_run:  # before anything is read or written
            raise InputError(f"{labels_path}: {len(rows.unusable)} unusable row(s): " + "; ".join(rows.unusable[:10])
                             + (" ..." if len(rows.unusable) > 10 else "") + " (train all --dry-run lists them all)")
    totalseg = Path(plan.totalseg) if plan.totalseg else None
    if totalseg is not None and not totalseg.is_dir():
        raise InputError(f"{totalseg}: --totalseg is not a folder")
    case_labels: dict[str, dict[str, str]] = {}
    t0 = time.perf_counter()
    for i, case in enumerate(cases):
        try:
            if dry_run:  # read the masks and lesions to count the labels; write nothing
                masks, lesions = organ_and_lesions(case, preset, totalseg)
                les = sitk.GetArrayViewFromImage(lesions) > 0 if lesions is not None else None
                info = {s: {"lesion_voxels": None if les is None else int(np.count_nonzero(
                    les & (sitk.GetArrayViewFromImage(m) > 0)))} for s, m in masks.items()}
            else:
                info = prepare_case(case, preset, work / "cases" / case.case_id, totalseg)
        except DiffusionAnomalyError as exc:
            unusable.append(f"{case.case_id}: {exc}")
            continue
        labels = {}
        for structure, v in info.items():
            if rows is not None:
                label = rows.labels.get((case.case_id, structure))
                if label is None:
                    continue
            elif v["lesion_voxels"] is None:
                unusable.append(f"{case.case_id}/{structure}: no labels.csv row and no lesion labels to derive "
                                "one from")
                continue
            else:
                label = "unhealthy" if v["lesion_voxels"] > 0 else "healthy"
            labels[structure] = label
        usable = {s: lab for s, lab in labels.items() if lab in ("healthy", "unhealthy")}
        if usable:
            case_labels[case.case_id] = labels
        else:
            unusable.append(f"{case.case_id}: no healthy or unhealthy structure")
        if (i + 1) % 10 == 0 or i + 1 == len(cases):
            eta = (time.perf_counter() - t0) / (i + 1) * (len(cases) - i - 1)
            progress(f"prepare: {i + 1}/{len(cases)} cases read; ETA {eta:.0f} s")
    by_id = {c.case_id: c for c in cases}
    fixed_val = _read_list(plan.validation_cases)
    if fixed_val is not None:
        val = {c for c in fixed_val if c in case_labels}
        rule = f"the validation cases listed in {Path(plan.validation_cases).name}"
    elif any(by_id[c].split in VALIDATION_SPLITS for c in case_labels):
        val = {c for c in case_labels if by_id[c].split in VALIDATION_SPLITS}
        rule = "the validation split folder"
    else:
        val = split_cases(case_labels, plan.val_fraction)
        rule = (f"deterministic: {plan.val_fraction:g} of the cases with an unhealthy structure and of the others, "
                "those with the smallest CRC-32 of their name")
    split = {"train": sorted(c for c in case_labels if c not in val), "validation": sorted(val)}
    counts = {s: {lab: 0 for lab in LABEL_VALUES} for s in split}
    for s, members in split.items():
        for c in members:
            for lab in case_labels[c].values():
                counts[s][lab] += 1
    warnings = []
    for lab in ("healthy", "unhealthy"):
        n = counts["train"][lab]
        if n < MIN_PER_LABEL:
            warnings.append(f"only {n} {lab} {plan.organ} structure(s) in the training split: too few for a reliable "
                            f"{'classifier' if lab == 'unhealthy' else 'denoiser and classifier'} (aim for >= "
                            f"{MIN_PER_LABEL})")
    if not split["validation"]:
        warnings.append("no validation case: the calibration has nothing to run on")
    elif min(counts["validation"]["healthy"], counts["validation"]["unhealthy"]) == 0:
        warnings.append("the validation split lacks healthy or unhealthy structures: the classifier's validation AUC "
                        "cannot be measured, so the bundle runs unguided")
    prepared = Prepared(work / "data" / "train", work / "data" / "validation", counts, split, left_out, unusable,
                        f"{labels_path.name}" if labels_path else "derived from the lesion labels (a structure with "
                        "lesion voxels is unhealthy)",
                        "TotalSegmentator folder" if totalseg else "the dataset's own masks and labels",
                        sorted({by_id[c].layout for c in case_labels}), rule, warnings)
    if not dry_run:
        if not split["train"]:
            raise InputError(f"{data}: no training case with a healthy or unhealthy structure")
        for name, members in split.items():
            folder = work / "data" / name
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            with open(folder / "labels.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["case", "structure", "label"])
                for c in members:
                    (folder / c).symlink_to(Path("..", "..", "cases", c), target_is_directory=True)
                    for structure, lab in sorted(case_labels[c].items()):
                        w.writerow([c, structure, lab])
    return prepared


# -- time estimates ------------------------------------------------------------------------------
def _probe(step: Callable[[], None], repeats: int = 1) -> float:
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats


def seconds_per_iteration(resolved: dict, organ: str, device, precision: str = "auto") -> dict[str, float]:
    """Seconds per training iteration of each stage, timed on random tensors of the real shapes (one iteration
    after a warm-up) at each stage's training precision, and seconds per denoising step of one ROI (the sweep)."""
    import torch

    from DiffusionAnomalyLib.models.nets.autoencoder import autoencoder_config, build_autoencoder
    from DiffusionAnomalyLib.models.nets.classifier import LatentClassifier
    from DiffusionAnomalyLib.models.nets.denoiser import build_denoiser, denoiser_config
    from DiffusionAnomalyLib.models.precision import network_autocast
    from DiffusionAnomalyLib.training.common import training_precision

    def ctx(part: str):
        return network_autocast(device, training_precision(precision, device, part))

    ae_r, den_r, clf_r = resolved["autoencoder"], resolved["denoiser"], resolved["classifier"]
    preset = get_preset(organ).with_overrides({"spacing_mm": [ae_r["spacing"]] * 3})
    shape = tuple(preset.roi_size_voxels[::-1])
    ae_cfg = autoencoder_config(ae_r["network"], in_channels=len(preset.channels))
    torch.manual_seed(0)
    ae = build_autoencoder(ae_cfg).to(device)
    x = torch.randn(ae_r["batch"], len(preset.channels), *shape, device=device)
    opt = torch.optim.Adam(ae.parameters())

    def ae_step():
        with ctx("autoencoder"):
            recon, q = ae(x)
        loss = (recon.float() - x).abs().mean() + q
        opt.zero_grad()
        loss.backward()
        opt.step()

    out = {"autoencoder": _probe(ae_step)}
    latent = [s // ae_cfg.downsampling for s in shape]
    den_cfg = denoiser_config(den_r["network"], latent_channels=ae_cfg.embedding_dim)
    den = build_denoiser(den_cfg).to(device)
    z = torch.randn(den_r["batch"], ae_cfg.embedding_dim, *latent, device=device)
    t = torch.randint(1, 1000, (den_r["batch"],), device=device)
    dopt = torch.optim.Adam(den.parameters())

    def den_step():
        with ctx("denoiser"):
            loss = den(z, timesteps=t).float().abs().mean()
        dopt.zero_grad()
        loss.backward()
        dopt.step()

    out["denoiser"] = _probe(den_step)
    clf = LatentClassifier(den_cfg).to(device)
    zc = torch.randn(clf_r["batch"], ae_cfg.embedding_dim, *latent, device=device)
    tc = torch.randint(0, 1000, (clf_r["batch"],), device=device)
    copt = torch.optim.Adam([p for p in clf.parameters() if p.requires_grad])

    def clf_step():
        with ctx("classifier"):
            loss = clf(zc, tc).float().logsumexp(1).mean()
        copt.zero_grad()
        loss.backward()
        copt.step()

    out["classifier"] = _probe(clf_step)
    z1 = z[:1]
    with torch.no_grad():
        out["denoise_step"] = _probe(lambda: den(z1, timesteps=t[:1]))
    return out


def calibration_points(cal: dict) -> int:
    """How many map settings the calibration sweep computes: L x s x reference x samples x median filter."""
    return (len(cal["noise_levels"]) * len(cal["guidance"]) * len(cal.get("reference_values") or [0])
            * len(cal.get("samples_values") or [0]) * len(cal.get("median_filter_values") or [0]))


def postprocessing_points(cal: dict) -> int:
    """How many operating points the calibration sweep scores at its best map: thresholds x volumes x growths."""
    return len(cal["threshold_scales"]) * len(cal["min_lesion_ml_values"]) * len(cal["grow_to_values"])


#: Seconds per validation case and operating point the sweep's post-processing and scoring take (a 2-core CPU;
#: 0.07 s for the kidney, 0.2 s for the liver on the demo phantoms), and per case for the baseline's map.
POSTPROCESSING_S, BASELINE_S = 0.15, 3.0


def estimate(resolved: dict, prepared: Prepared, per_it: dict[str, float], structures_per_case: int,
             prepare_s_per_case: float) -> dict[str, float]:
    """Seconds each stage is expected to take (rough: iterations x the timed iteration, plus validation; the
    calibration's maps, the baseline's and its post-processing points)."""
    cal = resolved["calibrate"]
    n_val = len(prepared.cases["validation"])
    grid = calibration_points(cal)
    steps = [min(cal["steps"], L) for L in cal["noise_levels"]]
    guided = sum(1 for s in cal["guidance"] if s > 0) / max(len(cal["guidance"]), 1)
    samples = np.mean(cal.get("samples_values") or [1]) if cal["sampler"] != "ddim" else 1.0  # DDIM draws once
    per_map = structures_per_case * np.mean(steps) * per_it["denoise_step"] * (1 + 2 * guided) * samples
    n_cases = sum(len(v) for v in prepared.cases.values())
    return {"prepare": prepare_s_per_case * n_cases,
            "autoencoder": resolved["autoencoder"]["iterations"] * per_it["autoencoder"] * 1.1,
            "denoiser": resolved["denoiser"]["iterations"] * per_it["denoiser"] * 1.1,
            "classifier": resolved["classifier"]["iterations"] * per_it["classifier"] * 1.1,
            "calibrate": n_val * (grid * (per_map + 2.0) + 3.0 + BASELINE_S
                                  + postprocessing_points(cal) * POSTPROCESSING_S),
            "bundle": 1.0}


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


# -- the run ---------------------------------------------------------------------------------------
class Stages:
    """``OUT.work/stages.json``: each finished stage, its settings and wall time. Under torchrun only rank 0 writes it;
    the other ranks wait for rank 0 to record a stage before they go on (:meth:`wait_for`)."""

    def __init__(self, work: Path, main: bool = True) -> None:
        self.path = work / "stages.json"
        self.main = main
        self.done: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def finished(self, stage: str, settings: dict) -> bool:
        entry = self.done.get(stage)
        if entry is None:
            return False
        if entry["settings"] != json.loads(json.dumps(settings)):
            changed = sorted(k for k in set(entry["settings"]) | set(settings)
                             if entry["settings"].get(k) != settings.get(k))
            raise InputError(f"{self.path.parent}: the {stage} stage ran with other settings ({', '.join(changed)}); "
                             f"add --from-stage {stage} to redo it and the stages after it, or use another --out")
        return True

    def record(self, stage: str, settings: dict, seconds: float, **info) -> None:
        self.done[stage] = {"settings": settings, "seconds": round(seconds, 1), **info}
        if not self.main:
            return
        tmp = self.path.with_name(".stages.json.tmp")
        tmp.write_text(json.dumps(self.done, indent=2) + "\n")
        os.replace(tmp, self.path)

    def wait_for(self, stage: str, poll_s: float = 1.0) -> None:
        """(Ranks other than 0) block until rank 0 has recorded ``stage``, then read every record."""
        while True:
            if self.path.is_file():
                done = json.loads(self.path.read_text())
                if stage in done:
                    self.done = done
                    return
            time.sleep(poll_s)

    def forget_from(self, stage: str, work: Path) -> None:
        """Drop ``stage`` and every later one (their outputs too)."""
        for s in STAGES[STAGES.index(stage):]:
            self.done.pop(s, None)
            for name in (s, f"{s}.work"):
                if (work / name).exists():
                    shutil.rmtree(work / name)
        if stage == "prepare":
            for name in ("data", "cases", "sweep", "calibrated", "validation-latents"):
                if (work / name).exists():
                    shutil.rmtree(work / name)
        if STAGES.index(stage) <= STAGES.index("calibrate"):
            for name in ("sweep", "calibrated", "validation-latents"):
                if (work / name).exists():
                    shutil.rmtree(work / name)
        self.path.write_text(json.dumps(self.done, indent=2) + "\n")


def validation_auc(bundle_dir: Path, validation: Path, work: Path, device) -> dict[str, float | None]:
    """The classifier's AUC (healthy against unhealthy structures) on the validation split, at t = 0, 250, 500."""
    import torch

    from DiffusionAnomalyLib.models.bundle import load_bundle
    from DiffusionAnomalyLib.training.classifier import EVAL_LEVELS, auc_at_levels
    from DiffusionAnomalyLib.training.denoiser import latents_for

    bundle = load_bundle(bundle_dir, device=device, manifest=None)
    data, lat = latents_for(bundle, str(validation), work, device, ("healthy", "unhealthy"))
    if len(set(data.labels.tolist())) < 2:
        return {str(k): None for k in EVAL_LEVELS}
    from DiffusionAnomalyLib.models.diffusion.schedule import NoiseSchedule

    z = torch.from_numpy(lat * float(bundle.meta.latent.get("scale_factor", 1.0)))
    aucs = auc_at_levels(bundle.networks["classifier"], z, data.labels, NoiseSchedule(**bundle.meta.schedule), device)
    return {str(k): (round(float(v), 4) if math.isfinite(v) else None) for k, v in aucs.items()}


def _precision(meta, stage: str) -> str:
    """How a stage's training steps ran, in the model card's words."""
    name = {"bf16": "bfloat16 autocast", "fp32": "float32"}
    return name.get(meta.extra.get(f"{stage}_training", {}).get("precision"), "precision not recorded")


def _all_synthetic(prepared: Prepared) -> bool:
    """Every prepared case is a phantom of ``diffusion-anomaly phantom`` (its case.json says ``synthetic``)."""
    for split, folder in (("train", prepared.train), ("validation", prepared.validation)):
        for case in prepared.cases[split]:
            f = Path(folder) / case / "case.json"
            try:
                if not json.loads(f.read_text()).get("synthetic"):
                    return False
            except (OSError, ValueError):
                return False
    return True


def _card(plan: TrainAllPlan, resolved: dict, prepared: Prepared, meta, stages: Stages, sweep: dict | None,
          auc: dict) -> None:
    """Fill the model card fields of ``meta`` from what was done."""
    data_name = Path(plan.data).resolve().name
    counts = prepared.counts
    synthetic = _all_synthetic(prepared)
    n_cases = len(prepared.cases["train"]) + len(prepared.cases["validation"])
    ae_extra = meta.extra.get("autoencoder_training", {})
    kind = "DEMO model trained on synthetic phantoms" if plan.demo else "Model"
    meta.summary = (f"{kind}: {plan.organ} anomaly detection ({plan.preset} networks), trained by `diffusion-anomaly "
                    f"train all` on {len(prepared.cases['train'])} cases of {data_name!r}.")
    meta.training_data = {
        "description": f"dataset {data_name!r} ({', '.join(prepared.layouts)} layout); organ masks from "
                       f"{prepared.mask_source}; labels {prepared.label_source}",
        "cases": f"{len(prepared.cases['train'])} training, {len(prepared.cases['validation'])} validation (never "
                 "trained on)" + (f", {len(prepared.left_out)} test cases left untouched" if prepared.left_out
                                  else ""),
        "structures (training)": ", ".join(f"{n} {k}" for k, n in counts["train"].items() if n),
        "structures (validation)": ", ".join(f"{n} {k}" for k, n in counts["validation"].items() if n) or "none",
        "real_scans": 0 if synthetic else n_cases,
        "split": prepared.split_rule,
        "autoencoder": f"{resolved['autoencoder']['network']}, {resolved['autoencoder']['iterations']} iterations at "
                       f"{resolved['autoencoder']['spacing']:g} mm, healthy and unhealthy structures; GAN losses "
                       f"{ae_extra.get('gan', '?')}; {_precision(meta, 'autoencoder')}",
        "denoiser": f"{resolved['denoiser']['network']}, {resolved['denoiser']['iterations']} iterations on healthy "
                    f"structures; {_precision(meta, 'denoiser')}",
        "classifier": f"{resolved['classifier']['iterations']} iterations on healthy and unhealthy structures; "
                      f"{_precision(meta, 'classifier')}",
    }
    ev = {"data": f"the validation split: {len(prepared.cases['validation'])} cases training never saw; the operating "
                  "point was chosen on them, so these figures are optimistic: evaluate on held-out cases",
          "classifier_auc": ", ".join(f"t = {k}: {'n/a' if v is None else f'{v:.3f}'}" for k, v in auc.items()),
          "real_scans": ("not evaluated: synthetic phantoms only" if synthetic else
                         f"the {len(prepared.cases['validation'])} validation cases above")}
    if sweep:
        b = sweep["best"]
        pp = b["postprocessed"]
        ev["settings"] = (f"{b['sampler']} L = {b['noise_level']}, s = {b['guidance']:g}, {b['steps']} steps, "
                          f"threshold {b['threshold']:g}, lesions >= {b['min_lesion_ml']:g} ml, grow to "
                          f"{b['grow_to']:g} ({b['objective']})")
        ev["lesions_found"] = f"{pp['found']} of {pp['lesions']}"
        ev["fp_per_organ"] = pp["fp_per_organ"]
        ev["pooled_lesion_f1"] = pp["f1"]
        ev["dice"] = pp["dice"]
        if "baseline" in sweep:
            base = sweep["baseline"]["baseline"]
            paired = sweep["baseline"]["paired"]
            ev["median_baseline_same_cases"] = (f"{base['found']} of {base['lesions']} found, "
                                                f"{base['fp_per_organ']} FP per organ, pooled F1 {base['pooled_f1']}, "
                                                f"Dice {base['dice']}")
            ev["paired_wilcoxon"] = (f"Dice: {paired['dice']['verdict']}; lesion F1: {paired['f1']['verdict']} "
                                     f"({paired['f1']['n']} cases)")
    meta.evaluation = ev
    meta.intended_use = ("Research on unsupervised anomaly detection in the " + plan.organ + " on scans like the "
                         "training data (same modality, contrast and reconstruction); not for diagnosis.")
    meta.out_of_scope_use = ("Clinical decisions of any kind; scans unlike the training data (another modality, "
                             "organ, contrast phase, field of view or population).")
    limits = list(prepared.warnings)
    if ae_extra.get("gan", "").startswith("off"):
        limits.append("the autoencoder was trained without its GAN losses")
    if sweep and sweep["best"]["guidance"] == 0:
        limits.append("runs unguided (s = 0): the classifier did not separate the validation structures well enough "
                      "(AUC below 0.7) or guidance did not help on them")
    meta.limitations = ("Trained by train all; " + "; ".join(limits) + "." if limits else
                        "Trained by train all; see the evaluation for the validation figures.")
    if synthetic:  # the project's own phantoms: Apache-2.0 like the project, no dataset to cite
        licence = "Apache-2.0"
        citation = (f"DiffusionAnomaly developers. DiffusionAnomaly {meta.name} {meta.version} "
                    f"[{'DEMO ' if plan.demo else ''}model bundle], Apache-2.0 (see CITATION.cff in its repository).")
    else:
        licence = f"not set: the weights follow the terms of the training data ({data_name})"
        citation = f"Cite DiffusionAnomaly (CITATION.cff in its repository) and the dataset {data_name}."
    meta.licence = meta.licence or licence
    meta.citation = meta.citation or citation
    # the bundle travels: the data folder as given relative to the working folder, or by its name alone
    data = Path(resolved["prepare"]["data"])
    shown = data.relative_to(Path.cwd()) if data.is_relative_to(Path.cwd()) else Path(data.name)
    meta.extra = {**meta.extra, "train_all": {
        "plan": {**resolved, "prepare": {**resolved["prepare"], "data": str(shown)}},
        "split": prepared.cases, "left_out": prepared.left_out, "split_rule": prepared.split_rule,
        "counts": prepared.counts, "stage_seconds": {s: e["seconds"] for s, e in stages.done.items()}}}
    meta.demo = plan.demo


def summary_lines(prepared: Prepared, stages: Stages, auc: dict, sweep: dict | None, out: Path) -> list[str]:
    lines = [f"# train all: {out.name}", "", "| stage | wall time |", "|---|---|"]
    lines += [f"| {s} | {_fmt_s(stages.done[s]['seconds'])} |" for s in STAGES if s in stages.done]
    c = prepared.counts
    lines += ["", f"Cases: {len(prepared.cases['train'])} training, {len(prepared.cases['validation'])} validation "
                  f"({prepared.split_rule}); structures: training {c['train']['healthy']} healthy / "
                  f"{c['train']['unhealthy']} unhealthy, validation {c['validation']['healthy']} / "
                  f"{c['validation']['unhealthy']}.",
              "Classifier AUC on the validation split: " + ", ".join(
                  f"t = {k}: {'n/a' if v is None else f'{v:.3f}'}" for k, v in auc.items()) + "."]
    if sweep:
        b, pp = sweep["best"], sweep["best"]["postprocessed"]
        lines.append(f"Calibrated on the validation split: L = {b['noise_level']}, s = {b['guidance']:g}, threshold "
                     f"{b['threshold']:g}, >= {b['min_lesion_ml']:g} ml, grow to {b['grow_to']:g}: {pp['found']} of "
                     f"{pp['lesions']} lesions found, {pp['fp_per_organ']} false positives per organ, pooled F1 "
                     f"{pp['f1']}, Dice {pp['dice']}.")
        if "baseline" in sweep:
            bs, pr = sweep["baseline"]["baseline"], sweep["baseline"]["paired"]
            lines.append(f"Median baseline on the same cases: {bs['found']} of {bs['lesions']} found, "
                         f"{bs['fp_per_organ']} false positives per organ, pooled F1 {bs['pooled_f1']}, Dice "
                         f"{bs['dice']}; paired Wilcoxon per case: Dice {pr['dice']['verdict']}, lesion F1 "
                         f"{pr['f1']['verdict']}.")
    for w in prepared.warnings:
        lines.append(f"Warning: {w}.")
    return lines


#: What a train all work folder holds (anything else there is a user's and refused).
WORK_ENTRIES = {*STAGES, *(f"{s}.work" for s in STAGES), "data", "cases", "sweep", "calibrated", "validation-latents",
                "stages.json", "prepared.json", ".stages.json.tmp"}


def _is_work_folder(folder: Path) -> bool:
    return all(e.name in WORK_ENTRIES or e.name.startswith(".run-") for e in folder.iterdir())


def bundle_name(plan: TrainAllPlan) -> str:
    """The bundle's name: ``--name``, else ``<organ>-model`` (``<organ>-demo`` with ``--demo``)."""
    return plan.name or f"{plan.organ}-{'demo' if plan.demo else 'model'}"


def check_plan(plan: TrainAllPlan) -> None:
    """Everything that can be checked before hours of training: the bundle's name and version (one folder name
    each), ``--out`` and its work folder (new, empty or this command's own, never a user's folder or inside the
    data), and ``--install`` (a writable models folder, a valid manifest, ``<name>/`` absent or a bundle)."""
    from DiffusionAnomalyLib.imaging.outputs import check_name, check_output_dir
    from DiffusionAnomalyLib.models.bundle import check_install

    name = check_name(bundle_name(plan), "--name")
    check_name(str(plan.version), "--version")
    inputs = [plan.data, plan.labels, plan.cases, plan.validation_cases, plan.totalseg]
    check_output_dir(plan.out, inputs, resume=True, command="train all")
    work = Path(f"{plan.out}.work")
    check_output_dir(work, inputs, option="--out's work folder", resume=True, own=_is_work_folder)
    if plan.install:
        if Path(plan.install).resolve() in (Path(plan.out).resolve(), work.resolve()):
            raise InputError(f"{plan.install}: --install is --out or its work folder; give the models folder")
        check_install(plan.install, name)


def train_all(plan: TrainAllPlan, dry_run: bool = False, from_stage: str | None = None,
              progress: Callable[[str], None] = logger.info) -> Path | None:
    """Run (or, with ``dry_run``, check and estimate) every stage; returns the bundle folder."""
    from DiffusionAnomalyLib.imaging.outputs import atomic_output_dir
    from DiffusionAnomalyLib.models.bundle import read_meta
    from DiffusionAnomalyLib.models.modelcard import render
    from DiffusionAnomalyLib.training.common import select_device

    resolved = plan.resolved()
    out = Path(plan.out)
    work = Path(f"{plan.out}.work")
    check_plan(plan)
    if out.exists() and (out / "model.json").is_file() and not work.is_dir():
        raise InputError(f"{out}: a bundle is already there (not made by this train all: no {work.name}/); choose a "
                         "new --out")
    device = select_device(plan.device)
    if dry_run:
        t0 = time.perf_counter()
        prepared = prepare(plan, work, dry_run=True, progress=progress)
        per_case = (time.perf_counter() - t0) / max(sum(len(v) for v in prepared.cases.values()), 1)
        per_it = seconds_per_iteration(resolved, plan.organ, device, plan.precision)
        est = estimate(resolved, prepared, per_it, len(get_preset(plan.organ).structures), per_case * 1.5)
        _dry_run_report(plan, resolved, prepared, est, device)
        return None
    created = not work.exists()
    from DiffusionAnomalyLib.training.common import keep_process_group

    try:
        with keep_process_group(device):  # under torchrun: one process group for every stage
            return _run(plan, resolved, out, work, device, from_stage, progress, read_meta, atomic_output_dir,
                        render)
    except BaseException:
        if created and work.is_dir() and not any(p.is_file() for p in work.rglob("*")):
            shutil.rmtree(work, ignore_errors=True)
        raise


def _run(plan, resolved, out, work, device, from_stage, progress, read_meta, atomic_output_dir, render) -> Path | None:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    main = rank == 0
    if not main:  # under torchrun: rank 0 alone prepares, computes the validation AUC and writes; the rest wait
        progress = logger.debug
    work.mkdir(parents=True, exist_ok=True)
    one_node = os.environ.get("LOCAL_WORLD_SIZE", str(world)) == str(world)
    token = work / (f".run-{os.environ.get('TORCHELASTIC_RUN_ID', 'local')}-{os.environ.get('MASTER_PORT', '')}"
                    + (f"-{os.getppid()}" if one_node else ""))  # this launch's ranks share it
    stages = Stages(work, main)
    total_t0 = time.perf_counter()
    if main:
        if from_stage:
            stages.forget_from(from_stage, work)
        # 1. prepare
        t0 = time.perf_counter()
        if not stages.finished("prepare", resolved["prepare"]):
            progress("[1/6] prepare: reading, checking and splitting the cases")
            prepared = prepare(plan, work, progress=progress)
            (work / "prepared.json").write_text(json.dumps(asdict(prepared), default=str, indent=2) + "\n")
            stages.record("prepare", resolved["prepare"], time.perf_counter() - t0)
        if world > 1:
            token.write_text("ready\n")
    else:
        while not token.is_file():
            time.sleep(1.0)
        stages = Stages(work, main)

    def finish(stage: str, settings: dict, t0: float, **info) -> None:
        if main:
            stages.record(stage, settings, time.perf_counter() - t0, **info)
        else:
            stages.wait_for(stage)

    d = json.loads((work / "prepared.json").read_text())
    prepared = Prepared(**{**d, "train": Path(d["train"]), "validation": Path(d["validation"])})
    if main:
        for w in prepared.warnings:
            logger.warning(w)
        for u in prepared.unusable[:20]:
            logger.warning(f"not used: {u}")
    # time estimates, for the ETA
    todo = [s for s in STAGES[1:] if s not in stages.done]
    est = {}
    if todo:  # every rank times it: MONAI's quantizer all-reduces its statistics in training mode under torchrun
        per_it = seconds_per_iteration(resolved, plan.organ, device, plan.precision)
        est = estimate(resolved, prepared, per_it, len(get_preset(plan.organ).structures), 0.0)
        progress("estimated: " + ", ".join(f"{s} {_fmt_s(est[s])}" for s in todo)
                 + f"; all {_fmt_s(sum(est[s] for s in todo))}")

    def start(k: int, stage: str, what: str) -> float:
        left = sum(est.get(s, 0.0) for s in STAGES[k - 1:] if s not in stages.done)
        progress(f"[{k}/6] {stage}: {what} (estimate {_fmt_s(est.get(stage, float('nan')))}; all that remains "
                 f"{_fmt_s(left)})")
        return time.perf_counter()

    a, dn, cl, cal = (resolved[s] for s in ("autoencoder", "denoiser", "classifier", "calibrate"))
    train_dir = str(prepared.train)

    def every(n: int) -> int:
        return max(1, min(100, n // 4))

    # 2-4. the three networks (each resumes from its checkpoint)
    if not stages.finished("autoencoder", a):
        t0 = start(2, "autoencoder", f"{a['iterations']} iterations")
        from DiffusionAnomalyLib.training.autoencoder import AutoencoderTraining, train_autoencoder

        train_autoencoder(AutoencoderTraining(
            train_dir, plan.organ, str(work / "autoencoder"), network=a["network"],
            preset_overrides={"spacing_mm": [a["spacing"]] * 3}, iterations=a["iterations"], batch_size=a["batch"],
            val_every=every(a["iterations"]), seed=plan.seed, device=plan.device, precision=plan.precision, resume=True,
            adversarial_start=a["adversarial_start"] if a["adversarial_start"] is not None else a["iterations"],
            name=bundle_name(plan), version=plan.version,
            demo=plan.demo))
        finish("autoencoder", a, t0)
    if not stages.finished("denoiser", dn):
        t0 = start(3, "denoiser", f"{dn['iterations']} iterations on healthy structures")
        from DiffusionAnomalyLib.training.denoiser import DenoiserTraining, train_denoiser

        train_denoiser(DenoiserTraining(train_dir, str(work / "autoencoder"), str(work / "denoiser"),
                                        network=dn["network"], iterations=dn["iterations"], batch_size=dn["batch"],
                                        val_every=every(dn["iterations"]), seed=plan.seed, device=plan.device,
                                        precision=plan.precision, resume=True))
        finish("denoiser", dn, t0)
    if not stages.finished("classifier", cl):
        t0 = start(4, "classifier", f"{cl['iterations']} iterations")
        from DiffusionAnomalyLib.training.classifier import ClassifierTraining, train_classifier

        train_classifier(ClassifierTraining(train_dir, str(work / "denoiser"), str(work / "classifier"),
                                            iterations=cl["iterations"], batch_size=cl["batch"], lr=cl["lr"],
                                            val_every=every(cl["iterations"]), seed=plan.seed, device=plan.device,
                                            precision=plan.precision, resume=True))
        auc = {}
        if main:
            auc = validation_auc(work / "classifier", prepared.validation, work / "validation-latents", device) \
                if prepared.cases["validation"] else {}
            meta_path = work / "classifier" / "model.json"  # recorded where the sweep's guidance check reads it
            doc = json.loads(meta_path.read_text())
            doc["extra"] = {**doc.get("extra", {}), "validation": {"classifier_auc": auc,
                                                                   "cases": len(prepared.cases["validation"])}}
            meta_path.write_text(json.dumps(doc, indent=2) + "\n")
        finish("classifier", cl, t0, validation_auc=auc)
    auc = stages.done["classifier"].get("validation_auc", {})
    # 5. calibration on the validation split only
    sweep = None
    if prepared.cases["validation"]:
        if not stages.finished("calibrate", cal):
            t0 = start(5, "calibrate", f"sweep on the {len(prepared.cases['validation'])} validation cases")
            _calibrate(work, prepared, cal, plan.device, plan.precision, main)
            finish("calibrate", cal, t0)
        sweep = json.loads((work / "sweep" / "sweep" / "sweep.json").read_text())
        source = work / "calibrated"
    else:
        logger.warning("no validation cases: the bundle is not calibrated (the denoiser's default settings)")
        source = work / "classifier"
    if not main:
        return None
    # 6. the bundle with its model card
    if not stages.finished("bundle", resolved["bundle"]) or not (out / "model.json").is_file():
        t0 = start(6, "bundle", f"{out} with its model card")
        meta = read_meta(source)
        meta.name, meta.version, meta.demo = bundle_name(plan), plan.version, plan.demo  # --from-stage bundle
        stages.record("bundle", resolved["bundle"], 0.0)  # its own time is negligible; listed in the card
        _card(plan, resolved, prepared, meta, stages, sweep, auc)
        with atomic_output_dir(out, replace_previous=True) as stage:
            for f in source.iterdir():
                if f.is_file() and f.name not in ("model.json", "README.md"):
                    shutil.copy2(f, stage / f.name)
            (stage / "model.json").write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
            read_meta(stage)  # the schema check, before the bundle is in place
            (stage / "README.md").write_text(render(meta))
            with open(stage / "split.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["case", "split"])
                for s, members in prepared.cases.items():
                    w.writerows([c, s] for c in members)
                w.writerows([c, "test (left out)"] for c in prepared.left_out)
            (stage / "training.md").write_text("\n".join(summary_lines(prepared, stages, auc, sweep, out)) + "\n")
        stages.record("bundle", resolved["bundle"], time.perf_counter() - t0)
    else:
        progress(f"every stage is done; nothing to train ({work} holds the work files)")
    token.unlink(missing_ok=True)
    for line in summary_lines(prepared, stages, auc, sweep, out):
        progress(line)
    if plan.install:
        from DiffusionAnomalyLib.models.bundle import install_bundle

        progress(f"installed as {install_bundle(out, plan.install)}, listed in "
                 f"{Path(plan.install) / 'manifest.json'}")
    progress(f"bundle: {out} ({_fmt_s(time.perf_counter() - total_t0)} this run; the work files in {work} can be "
             "deleted once you are done with it)")
    return out


def _calibrate(work: Path, prepared: Prepared, cal: dict, device: str, precision: str = "auto",
               main: bool = True) -> None:
    """``sweep`` on the validation split with the median baseline beside; the calibrated copy in
    ``work/calibrated``. The classifier's validation AUC (in the bundle) limits the sweep to s = 0 when weak."""
    from DiffusionAnomalyLib.app.cli import build_parser

    argv = ["sweep", "--data", str(prepared.validation), "--bundle", str(work / "classifier"),
            "--out", str(work / "sweep"), "--sampler", cal["sampler"], "--steps", str(cal["steps"]),
            "--noise-levels", *map(str, cal["noise_levels"]), "--guidance-values", *map(str, cal["guidance"]),
            "--threshold-scales", *map(str, cal["threshold_scales"]),
            "--min-lesion-ml-values", *map(str, cal["min_lesion_ml_values"]),
            "--grow-to-values", *map(str, cal["grow_to_values"]), "--device", device, "--precision", precision,
            "--write-bundle", str(work / "calibrated")]
    if cal["max_fp_per_organ"] is not None:
        argv += ["--max-fp-per-organ", str(cal["max_fp_per_organ"])]
    for key in ("reference_values", "samples_values", "median_filter_values"):
        if cal.get(key):
            argv += ["--" + key.replace("_", "-"), *map(str, cal[key])]
    if main and (work / "calibrated").exists():
        shutil.rmtree(work / "calibrated")
    args = build_parser().parse_args(argv)
    previous = os.environ.get("DA_BUNDLE_MANIFEST")
    os.environ["DA_BUNDLE_MANIFEST"] = ""  # a new bundle: no shipped manifest entry can name it
    try:
        args.func(args)
    finally:
        if previous is None:
            os.environ.pop("DA_BUNDLE_MANIFEST", None)
        else:
            os.environ["DA_BUNDLE_MANIFEST"] = previous


def _dry_run_report(plan: TrainAllPlan, resolved: dict, prepared: Prepared, est: dict, device) -> None:
    c = prepared.counts
    print(f"train all --dry-run: {plan.organ}, preset {plan.preset}, on {device}")
    print(f"cases: {len(prepared.cases['train'])} training, {len(prepared.cases['validation'])} validation "
          f"({prepared.split_rule})" + (f"; {len(prepared.left_out)} test cases left untouched"
                                        if prepared.left_out else ""))
    print(f"layouts: {', '.join(prepared.layouts) or '-'}; organ masks: {prepared.mask_source}; labels: "
          f"{prepared.label_source}")
    print(f"{'structures':<12} " + " ".join(f"{lab:>10}" for lab in LABEL_VALUES))
    for s in ("train", "validation"):
        print(f"{s:<12} " + " ".join(f"{c[s][lab]:>10}" for lab in LABEL_VALUES))
    for u in prepared.unusable:
        print(f"not usable: {u}")
    for w in prepared.warnings:
        print(f"warning: {w}")
    print(f"{'stage':<12} {'estimate':>10}  what")
    what = {"prepare": "read, check and write the cases",
            "autoencoder": f"{resolved['autoencoder']['iterations']} iterations, {resolved['autoencoder']['network']}",
            "denoiser": f"{resolved['denoiser']['iterations']} iterations, {resolved['denoiser']['network']}",
            "classifier": f"{resolved['classifier']['iterations']} iterations",
            "calibrate": f"{calibration_points(resolved['calibrate'])} settings x "
                         f"{len(prepared.cases['validation'])} validation cases",
            "bundle": "the model card"}
    for s in STAGES:
        print(f"{s:<12} {_fmt_s(est[s]):>10}  {what[s]}")
    print(f"{'all':<12} {_fmt_s(sum(est.values())):>10}  (rough: timed iterations on random data)")
