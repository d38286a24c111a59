"""The dataset jobs as functions: :func:`evaluate`, :func:`sweep` and :func:`batch`, each taking one typed request
and returning a typed result (``diffusion-anomaly evaluate`` / ``sweep`` / ``batch`` print them; ``train all``
calibrates with :func:`sweep`). Under ``torchrun`` every rank calls the same function; rank 0 returns the result,
the others None.

>>> from DiffusionAnomalyLib.api import EvaluateRequest, evaluate
>>> request = EvaluateRequest(data="phantoms", out="eval", bundle="Resources/Models/kidney-demo",
...                           settings={"seed": 1}, threshold="bundle")
>>> report = evaluate(request)  # doctest: +SKIP
>>> print(report.markdown)  # doctest: +SKIP
>>> EvaluateRequest(data="phantoms", out="eval", baseline=True)
Traceback (most recent call last):
...
DiffusionAnomalyLib.errors.InputError: the baseline needs an organ, one of kidney, liver, brain (got None)
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.options import Option, problems, setting
from DiffusionAnomalyLib.settings import (
    MAX_MEDIAN_FILTER,
    MAX_NOISE_LEVEL,
    ORGANS,
    REFERENCES,
    RunSettings,
    floor_contrast_problem,
    max_samples,
)


@dataclass(frozen=True, kw_only=True)
class DatasetRequest:
    """What every dataset job takes: the dataset folder (one sub-folder per case), the output folder, the model
    (``bundle``, or ``baseline`` for ``organ``) and run settings by field name (None: the bundle's)."""

    data: str
    out: str
    bundle: str | None = None
    organ: str | None = None
    baseline: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.baseline == bool(self.bundle):
            problems.append("give a bundle, or the baseline with an organ")
        if self.baseline and self.settings.get("hybrid"):
            problems.append("the hybrid weight combines a bundle's map with the baseline's: the baseline alone takes "
                            "none")
        if self.baseline and self.organ not in ORGANS:
            problems.append(f"the baseline needs an organ, one of {', '.join(ORGANS)} (got {self.organ!r})")
        unknown = sorted(set(self.settings) - set(RunSettings.__dataclass_fields__))
        if unknown:
            problems.append(f"unknown run setting(s) {unknown}")
        if problems:
            raise InputError("; ".join(problems))


@dataclass(frozen=True, kw_only=True)
class EvaluateRequest(DatasetRequest):
    """``evaluate``: ``threshold`` None/'otsu' (one global Otsu threshold, as the thesis), a number, or 'bundle'
    (the calibrated operating point); ``postprocessing`` off: threshold and components only; ``baseline_beside``:
    the median baseline on the same cases with the paired test; ``bootstrap`` resamples for the 95 % CIs.
    ``insert`` N > 0: the cases are healthy hosts, and what is scored is N synthesised lesions in each
    (:mod:`.insertion`; ``insert_method`` paste or diffusion, whose synthesizer is ``insert_bundle``, else
    ``bundle``; seeds from ``insert_seed``)."""

    threshold: float | str | None = None
    postprocessing: bool = True
    bootstrap: int = 1000
    baseline_beside: bool = True
    insert: int = 0
    insert_method: str = "paste"
    insert_bundle: str | None = None
    insert_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        from DiffusionAnomalyLib.synthesis.options import MAX_COUNT, METHODS

        problems = []
        if not (isinstance(self.insert, int) and 0 <= self.insert <= MAX_COUNT):
            problems.append(f"--insert takes 0..{MAX_COUNT} lesions per case (got {self.insert!r})")
        if self.insert_method not in METHODS:
            problems.append(f"--insert-method takes {', '.join(METHODS)} (got {self.insert_method!r})")
        if self.insert and self.insert_method == "diffusion" and not (self.insert_bundle or self.bundle):
            problems.append("--insert-method diffusion needs --insert-bundle (a bundle with a lesion synthesizer)")
        if not self.insert and (self.insert_bundle or self.insert_method != "paste" or self.insert_seed):
            problems.append("--insert-method, --insert-bundle and --insert-seed apply with --insert N only")
        if not 0 <= self.insert_seed < 2**63:
            problems.append(f"--insert-seed takes 0..2^63-1 (got {self.insert_seed})")
        if problems:
            raise InputError("; ".join(problems))


#: The commands that take the calibration grid's options.
GRID = ("sweep", "all")
#: How ``--max-fp-per-organ`` picks the operating point (:func:`~.sweep.choose_operating_point`).
OBJECTIVES = ("size-balanced", "lesions")


@dataclass(frozen=True, kw_only=True)
class CalibrationGrid:
    """The calibration grid, declared once for ``sweep`` and ``train all`` (which keeps these options with other
    defaults): the sampler's L and s (the kidney thesis §5.2), the map variants (reference, K, median filter; empty:
    the run's own), then at the best point the operating point's thresholds (x the validation maps' Otsu), minimum
    lesion volumes and growth (empty: the run's ``grow_to``), chosen by pooled lesion F1 or, with
    ``max_fp_per_organ``, by ``objective`` among the points with at most that many false positives per organ."""

    noise_levels: tuple[int, ...] = setting((100, 250, 500), Option(
        "calibration grid: the L values", GRID, "L", label="noise level L", low=1, high=MAX_NOISE_LEVEL))
    guidance_values: tuple[float, ...] = setting(tuple(float(s) for s in range(0, 2001, 200)), Option(
        "calibration grid: the s values (s > 0 only when the classifier's validation AUC is >= 0.7, unless "
        "--allow-weak-classifier)", GRID, "S", label="guidance strength", low=0))
    reference_values: tuple[str, ...] = setting((), Option(
        "also try these anomaly-map references: input and/or autoencoder (default: the run's)", GRID, "REF",
        label="map reference", choices=REFERENCES))
    samples_values: tuple[int, ...] = setting((), Option(
        "also try these numbers of averaged reconstructions (DDPM; default: the run's)", GRID, "K", label="samples",
        low=1, high=max_samples))
    median_filter_values: tuple[int, ...] = setting((), Option(
        "also try these anomaly-map median filter sizes in voxels, 0 = none (default: the run's); the grid is L x s x "
        "every reference, K and N", GRID, "N", label="the median filter (voxels)", low=0, high=MAX_MEDIAN_FILTER))
    min_lesion_ml_values: tuple[float, ...] = setting((0.0, 0.25, 0.5, 1.0, 2.0), Option(
        "then, at the best L and s: the minimum lesion volumes tried (ml)", GRID, "ML",
        label="the minimum lesion volume (ml)", low=0))
    threshold_scales: tuple[float, ...] = setting((1.0,), Option(
        "the thresholds tried there, x the Otsu threshold", GRID, "X", label="threshold scale", low=0,
        low_open=True))
    grow_to_values: tuple[float, ...] = setting((), Option(
        "the lesion growths tried there, F x threshold (hysteresis; 1 = off; default: --grow-to, else 1)", GRID, "F",
        label="grow-to", low=0, high=1, low_open=True))
    floor_contrast_values: tuple[float, ...] = setting((), Option(
        "the contrast-dependent size floors tried there: a lesion below the minimum volume is kept when its mean "
        "score is >= F x threshold (0 = the fixed floor; default: --floor-contrast, else 0)", GRID, "F",
        label="floor contrast", low=0))
    hybrid_scales: tuple[float, ...] = setting((), Option(
        "also try the hybrid map max(model, W x median baseline) at each of these points, the baseline counting where "
        "its map exceeds C x its global Otsu threshold (W = threshold / (C x that Otsu); 0 = no hybrid); it is "
        "recommended only where it beats the model's map alone (docs/evaluation.md#the-hybrid-map)", GRID, "C",
        label="hybrid scale", low=0))
    max_fp_per_organ: float | None = setting(None, Option(
        "recommend the operating point that finds the most lesions with at most N false-positive components per "
        "organ (default: the best pooled lesion F1)", GRID, "N", label="max FP per organ", low=0))
    objective: str = setting("size-balanced", Option(
        "with --max-fp-per-organ, what the most is: size-balanced (the mean of the lesion size classes' recalls, "
        "each shrunk toward the pooled recall by 5 lesions, over every grid point's maps: no size class can be "
        "traded away) or lesions (the most lesions, at the "
        "grid point of best Dice: the thesis's order)", GRID, "OBJ", label="calibration objective",
        choices=OBJECTIVES))

    def __post_init__(self) -> None:
        found = problems(self)
        found += [p for f in self.floor_contrast_values if (p := floor_contrast_problem(f))]
        if found:
            raise InputError("; ".join(found))


@dataclass(frozen=True, kw_only=True)
class SweepRequest(DatasetRequest, CalibrationGrid):
    """``sweep``: the grid (:class:`CalibrationGrid`), then the post-processing stage at the best point;
    ``write_bundle``: a calibrated copy of the bundle there. ``baseline_beside``: the median baseline beside the
    recommended point; ``allow_weak_classifier``: sweep s > 0 even when the bundle's classifier is near chance.
    ``shipped_manifest`` False: the bundle is being made (``train all``), so no shipped manifest entry can name it."""

    baseline_beside: bool = True
    allow_weak_classifier: bool = False
    write_bundle: str | None = None
    shipped_manifest: bool = True

    def __post_init__(self) -> None:
        DatasetRequest.__post_init__(self)
        CalibrationGrid.__post_init__(self)


@dataclass(frozen=True, kw_only=True)
class BatchRequest(DatasetRequest):
    """``batch``: ``run``'s outputs for every case (finished cases are skipped unless ``overwrite``)."""


@dataclass
class EvaluateResult:
    """``evaluate``'s report: the summary (also ``out/report/summary.json``), its Markdown, the threshold used,
    and notes for the reader."""

    summary: dict
    markdown: str
    threshold: float
    notes: list[str]


@dataclass
class SweepResult:
    """``sweep``'s result: the grid rows, the best point and its operating point (``best``), the post-processing
    rows, the baseline beside (if run), the calibrated bundle (if written), and warnings."""

    grid: list[dict]
    best: dict
    postprocessing: list[dict]
    baseline: dict | None
    bundle: Path | None
    warnings: list[str]
    cases: int


@dataclass
class BatchResult:
    """``batch``'s result: the index CSV, the number of cases, and the rows of those that failed."""

    index: Path
    cases: int
    failed: list[dict]


def _setup(request: DatasetRequest, command: str):
    from DiffusionAnomalyLib.evaluation.batch import Ranks, load_model
    from DiffusionAnomalyLib.evaluation.datasets import discover_cases
    from DiffusionAnomalyLib.imaging.outputs import check_output_dir
    from DiffusionAnomalyLib.models.device import select_device

    if not Path(request.data).is_dir():
        raise InputError(f"{request.data}: --data is not a folder")
    check_output_dir(request.out, [request.data, request.bundle], overwrite=request.overwrite, resume=True,
                     command=command)
    device = select_device(request.settings.get("device") or "auto")  # auto/cuda -> cuda:LOCAL_RANK (torchrun)
    ranks = Ranks(device)
    given = {k: v for k, v in request.settings.items() if v is not None}
    model = load_model(request.bundle, request.organ, device,
                       lambda recommended, preset: RunSettings.resolve(recommended, preset, **given),
                       shipped=getattr(request, "shipped_manifest", True))
    cases = discover_cases(request.data, model.preset)
    if not cases:
        raise InputError(f"{request.data}: no case folders (a dataset folder holds one sub-folder per case; see "
                         "docs/evaluation.md)")
    return ranks, model, cases


def evaluate(request: EvaluateRequest) -> EvaluateResult | None:
    """Maps (cached in ``out/maps``, resumable), then Dice, lesion detection at IoU 0.2, size strata, FROC and
    voxel AUROC/AUPRC with bootstrap CIs in ``out/report``, the median baseline beside a bundle."""
    from DiffusionAnomalyLib.evaluation.evaluate import HybridMaps, baseline_beside, compute_maps, score_dataset
    from DiffusionAnomalyLib.evaluation.report import write_report

    out = Path(request.out)
    existed = out.exists()
    ranks, model, cases = _setup(request, "evaluate")
    if request.insert:  # the hosts' lesions are synthesised first; they are the dataset scored
        from DiffusionAnomalyLib.evaluation.datasets import discover_cases
        from DiffusionAnomalyLib.evaluation.insertion import inserted_dataset

        if ranks.rank == 0:
            inserted_dataset(cases, model.preset.name, out, request.insert, request.insert_method,
                             request.insert_bundle or request.bundle, request.insert_seed)
        ranks.barrier()
        cases = discover_cases(out / "inserted", model.preset)
    key = model.maps_key()
    maps = out / "maps" / key
    try:
        compute_maps(cases, model.make_reconstructor(model.settings), model.preset, maps, ranks.rank, ranks.world)
    except BaseException:  # a failure before any map leaves no empty folders (they would read as a result)
        for d in (maps, maps.parent, *(() if existed else (out,))):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    ranks.barrier()
    beside = None
    weight = 0.0 if model.baseline else model.run.hybrid  # the hybrid map needs the baseline's maps
    if not model.baseline and (request.baseline_beside or weight):
        beside = baseline_beside(cases, model.preset.name, out, ranks.rank, ranks.world, ranks.barrier,
                                 request.postprocessing, request.settings.get("min_lesion_ml"),
                                 request.settings.get("grow_to"), request.bootstrap, detail=True,
                                 floor_contrast=request.settings.get("floor_contrast"))
    result = None
    if ranks.rank == 0:
        # evaluate's default is one Otsu threshold over the whole dataset; 'bundle' is the calibrated one
        threshold = ("otsu" if request.threshold in (None, "otsu") else model.run.threshold
                     if request.threshold == "bundle" else float(request.threshold))
        threshold = "otsu" if threshold is None else threshold
        pp = model.run.postprocessing(model.preset) if request.postprocessing else None
        hybrid = HybridMaps(out / "maps" / "baseline", weight) if weight else None
        scores, summary, problems, thr = score_dataset(cases, maps, threshold, pp, n_boot=request.bootstrap,
                                                       hybrid=hybrid)
        alone = None
        if hybrid:  # the model's map alone at the same threshold and post-processing, beside the hybrid
            alone_scores, alone_summary, _, _ = score_dataset(cases, maps, thr, pp, n_boot=request.bootstrap)
            alone = (alone_scores, alone_summary)
        settings = {"model": model.description, "organ": model.preset.name, "data": str(request.data), "maps": key,
                    "threshold": f"{thr:.4f} ({'global Otsu' if threshold == 'otsu' else 'fixed'})",
                    "post-processing": "off" if pp is None else "on (as in the kidney thesis §4.1.1" + (
                        f"; lesions >= {pp.min_volume_ml:g} ml" if pp.min_volume_ml else "") + (
                        f" unless their mean score is >= {pp.floor_contrast:g} x threshold"
                        if pp.min_volume_ml and pp.floor_contrast else "") + (
                        f"; grown to {pp.grow_to:g} x threshold" if pp.grow_to < 1 else "") + ")", "IoU": 0.2,
                    "ranks": ranks.world, **({"hybrid": f"max(model, {weight:g} x median baseline)"} if weight else {}),
                    **({"inserted lesions": f"{request.insert} per healthy case of {request.data}, synthesize "
                        f"--method {request.insert_method}, seeds from {request.insert_seed} (OUT/inserted; "
                        "synthetic lesions are not real lesions)"} if request.insert else {}),
                    "baseline": "this is the baseline" if model.baseline else "off (--no-baseline)"
                    if not request.baseline_beside else "the median baseline beside (its global Otsu threshold)"}
        write_report(out, scores, summary, problems, settings, beside if request.baseline_beside else None, alone)
        notes = []
        if request.threshold is None and model.recommended.get("threshold") is not None:
            notes.append(f"scored at the dataset's global Otsu threshold {thr:.4f} (as in the kidney thesis §5.2), "
                         f"with the bundle's post-processing; its calibrated operating point has the threshold "
                         f"{model.recommended['threshold']:.4f}: add --threshold bundle to score that point")
        if model.demo:
            notes.append("a DEMO bundle trained on synthetic phantoms")
        result = EvaluateResult(summary, (out / "report" / "summary.md").read_text(encoding="utf-8"), thr, notes)
    ranks.close()
    return result


def map_variants(request: SweepRequest, run: RunSettings) -> list:
    """The map options the sweep tries: every combination of the reference, samples and median-filter values (each
    defaulting to the run's own value), checked before any map is made."""
    variants = []
    for ref, k, med in itertools.product(request.reference_values or [run.reference],
                                         request.samples_values or [run.samples],
                                         request.median_filter_values or [run.median_filter]):
        try:
            point = dataclasses.replace(run, reference=ref, samples=k, median_filter=med)  # checks the values
        except InputError as exc:
            raise InputError(f"sweep --reference-values / --samples-values / --median-filter-values: {exc}") from None
        if (options := point.map_options()) not in variants:
            variants.append(options)
    return variants


def sweep(request: SweepRequest) -> SweepResult | None:
    """The grid search over L and s (the kidney thesis §5.2) and the operating point at the best one; with
    ``write_bundle``, a calibrated copy of the bundle."""
    from DiffusionAnomalyLib.evaluation.sweep import run_sweep, weak_guidance, write_calibrated_bundle

    grow, floor = request.settings.get("grow_to"), request.settings.get("floor_contrast")
    grow_to_values = list(request.grow_to_values) or [1.0 if grow is None else grow]
    floors = list(request.floor_contrast_values) or [floor or 0.0]
    if request.write_bundle:
        if not request.bundle:
            raise InputError("--write-bundle needs --bundle (the baseline has no settings to calibrate)")
        from DiffusionAnomalyLib.imaging.outputs import check_output_dir

        check_output_dir(request.write_bundle, [request.data, request.bundle, request.out],
                         overwrite=request.overwrite, option="--write-bundle", command="write-bundle")
    ranks, model, cases = _setup(request, "sweep")
    if model.baseline:
        raise InputError("sweep needs --bundle (the baseline has no L or s)")
    guidance_values = list(request.guidance_values)
    warnings = []
    weak = weak_guidance(model.extra, request.noise_levels) if any(s > 0 for s in guidance_values) else None
    if weak and not request.allow_weak_classifier:
        guidance_values = [0.0]
        warnings.append(f"{weak}: the sweep tries s = 0 only (--allow-weak-classifier to sweep s > 0 anyway)")
    res = run_sweep(cases, model.make_reconstructor, model.preset, Path(request.out), model.settings,
                    request.noise_levels, guidance_values, ranks.rank, ranks.world, ranks.barrier,
                    min_lesion_ml_values=request.min_lesion_ml_values, maps_key=model.maps_key,
                    options=model.options, threshold_scales=request.threshold_scales or (1.0,),
                    max_fp_per_organ=request.max_fp_per_organ, grow_to_values=grow_to_values,
                    objective=request.objective, hybrid_scales=tuple(c for c in request.hybrid_scales if c > 0),
                    floor_contrast_values=floors,
                    baseline_organ=model.preset.name if request.baseline_beside else None,
                    map_variants=map_variants(request, model.run))
    result = None
    if res is not None:
        bundle = None
        if request.write_bundle:
            from DiffusionAnomalyLib.models.bundle import shipped_manifest

            bundle = write_calibrated_bundle(request.bundle, request.write_bundle, res["best"],
                                             note=f"sweep over {len(cases)} cases of {request.data}",
                                             manifest=shipped_manifest() if request.shipped_manifest else None)
        result = SweepResult(res["grid"], res["best"], res["postprocessing"], res.get("baseline"), bundle, warnings,
                             len(cases))
    ranks.close()
    return result


def batch(request: BatchRequest) -> BatchResult | None:
    """``run``'s outputs for every case of the dataset in ``out/<case>/`` and ``out/index.csv``; a failed case is
    listed in the result (and the index), the others are still done."""
    import csv

    from DiffusionAnomalyLib.evaluation.batch import run_batch, write_index

    ranks, model, cases = _setup(request, "batch")
    out = Path(request.out)
    out.mkdir(parents=True, exist_ok=True)
    run_batch(cases, model, out, ranks.rank, ranks.world, redo=request.overwrite)
    ranks.barrier()
    result = None
    if ranks.rank == 0:
        index = write_index(cases, out)
        with open(index, newline="") as f:
            result = BatchResult(index, len(cases), [r for r in csv.DictReader(f) if r["status"] != "ok"])
    ranks.close()
    return result
