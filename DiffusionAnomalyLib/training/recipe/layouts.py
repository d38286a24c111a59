"""``train all``'s stage 1, prepare: the dataset layouts (phantom, KiTS, BraTS, LiTS; split folders), the labels
file, one case written in the phantom layout, the deterministic split, and :func:`prepare` (:class:`Prepared`)."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from DiffusionAnomalyLib.detection.presets import OrganPreset, get_preset
from DiffusionAnomalyLib.errors import DiffusionAnomalyError, InputError
from DiffusionAnomalyLib.training.recipe.plan import TrainAllPlan

logger = logging.getLogger(__name__)

LABEL_VALUES = ("healthy", "unhealthy", "excluded", "unknown")
#: Split folder names: the first group trains, the second validates (calibration), the third is left alone.
TRAIN_SPLITS = ("train", "training", "tr")
VALIDATION_SPLITS = ("val", "validation", "valid")
TEST_SPLITS = ("test", "testing", "ts", "holdout")
#: Below this many structures of a label in the training split, a warning says the classifier will be weak.
MIN_PER_LABEL = 50


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


def structure_info(masks: dict[str, sitk.Image], lesions: sitk.Image | None) -> dict:
    """Per structure: {"lesion_voxels": n, "lesion_diameters_mm": [largest axial diameter of each connected lesion
    in it]} (``None`` values without lesion labels)."""
    from DiffusionAnomalyLib.evaluation.metrics import components, lesion_diameters

    les = sitk.GetArrayViewFromImage(lesions) > 0 if lesions is not None else None
    info = {}
    for s, m in masks.items():
        if les is None:
            info[s] = {"lesion_voxels": None, "lesion_diameters_mm": None}
            continue
        inside = les & (sitk.GetArrayViewFromImage(m) > 0)
        info[s] = {"lesion_voxels": int(np.count_nonzero(inside)),
                   "lesion_diameters_mm": [round(d, 1) for d in lesion_diameters(components(inside), lesions).values()]}
    return info




def _check_lesion_needs(plan: TrainAllPlan, train_counts: dict[str, int], train_lesions: int | None) -> None:
    """``--synthetic-unhealthy`` and ``--synthesizer`` need lesion labels in the training split (padding: also healthy
    structures): refused here, before any training, and in ``--dry-run``."""
    needs = [flag for flag, on in (("--synthetic-unhealthy", plan.synthetic_unhealthy), ("--synthesizer",
                                                                                           plan.synthesizer)) if on]
    if needs and not train_lesions:
        raise InputError(f"{' and '.join(needs)} need(s) lesion labels (lesions.nii.gz, or the layout's lesion "
                         f"labels) in the training split; it has {train_lesions or 0} labelled lesion(s)")
    if plan.synthetic_unhealthy and not train_counts.get("healthy"):
        raise InputError("--synthetic-unhealthy pastes the training lesions into healthy training structures; the "
                         "training split has none")


def validation_sizes(members: list[str], infos: dict[str, dict], labels: dict[str, dict[str, str]]) -> dict | None:
    """Reference lesions of the given cases (the validation split's) per size class (None when no case has lesion
    labels)."""
    from DiffusionAnomalyLib.detection.anomaly import SIZE_CLASSES, size_class

    counts = dict.fromkeys((n for n, _ in SIZE_CLASSES), 0)
    measured = False
    for c in members:
        for structure in labels.get(c, {}):
            diameters = infos.get(c, {}).get(structure, {}).get("lesion_diameters_mm")
            if diameters is not None:
                measured = True
                for d in diameters:
                    counts[size_class(d)] += 1
    return counts if measured else None


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
    info = structure_info(masks, lesions)
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
    #: reference lesions of the validation split per size class (None: no lesion labels)
    validation_sizes: dict[str, int] | None = None


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
    infos: dict[str, dict] = {}
    t0 = time.perf_counter()
    for i, case in enumerate(cases):
        try:
            if dry_run:  # read the masks and lesions to count the labels; write nothing
                info = structure_info(*organ_and_lesions(case, preset, totalseg))
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
        infos[case.case_id] = info
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
    val_sizes = validation_sizes(split["validation"], infos, case_labels)
    train_lesions = validation_sizes(split["train"], infos, case_labels)
    _check_lesion_needs(plan, counts["train"], None if train_lesions is None else sum(train_lesions.values()))
    from DiffusionAnomalyLib.evaluation.evaluate import MIN_LESIONS_PER_SIZE

    few = {k: n for k, n in (val_sizes or {}).items() if n < MIN_LESIONS_PER_SIZE}
    if split["validation"] and few:
        from DiffusionAnomalyLib.detection.anomaly import size_class_name

        warnings.append(f"the validation split has fewer than {MIN_LESIONS_PER_SIZE} lesions in size class(es) "
                        + ", ".join(f"{size_class_name(k, plan.organ)}: {n}" for k, n in few.items())
                        + ": the calibration cannot tell how the operating point does on them, and its size-balanced "
                        "objective counts their recall at most half, the rest the pooled recall (add validation "
                        "cases with such lesions, e.g. phantom --lesion-sizes incidental for small ones)")
    if not split["validation"]:
        warnings.append("no validation case: the calibration has nothing to run on")
    elif min(counts["validation"]["healthy"], counts["validation"]["unhealthy"]) == 0:
        warnings.append("the validation split lacks healthy or unhealthy structures: the classifier's validation AUC "
                        "cannot be measured, so the bundle runs unguided")
    prepared = Prepared(work / "data" / "train", work / "data" / "validation", counts, split, left_out, unusable,
                        f"{labels_path.name}" if labels_path else "derived from the lesion labels (a structure with "
                        "lesion voxels is unhealthy)",
                        "TotalSegmentator folder" if totalseg else "the dataset's own masks and labels",
                        sorted({by_id[c].layout for c in case_labels}), rule, warnings, val_sizes)
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
