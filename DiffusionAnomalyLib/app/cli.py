"""The ``diffusion-anomaly`` command line."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from DiffusionAnomalyLib import __version__
from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.settings import ORGANS, PRECISIONS, REFERENCES, SAMPLER_DEFAULTS, SAMPLERS, options

PRECISION_HELP = dict(options())["precision"].help  # for demo, which is not a detection command


def _print_table(table) -> None:
    if not table:
        print("No lesions found.")
        return
    print(f"{'id':>3} {'side':>6} {'voxels':>7} {'ml':>8} {'diam mm':>8} {'class':<16} "
          f"{'centroid RAS (mm)':<26} {'max':>6}")
    for le in table:
        ras = ", ".join(f"{v:.1f}" for v in le.centroid_ras)
        print(f"{le.id:>3} {le.side or '-':>6} {le.voxels:>7} {le.volume_ml:>8.2f} {le.axial_diameter_mm:>8.1f} "
              f"{le.size_class:<16} {ras:<26} {le.max_score:>6.3f}")


def _cmd_phantom(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.imaging.outputs import check_output_dir
    from DiffusionAnomalyLib.synthetic.phantoms import make_phantom, write_dataset, write_phantom

    variety = {"variety": True} if args.variety else {}
    if args.seed + args.cases - 1 >= 2**63:
        raise InputError(f"--seed {args.seed} with --cases {args.cases}: the seeds would pass 2^63-1")
    if args.cases > 1:
        check_output_dir(args.out, overwrite=args.overwrite, resume=not args.overwrite, command="phantom --cases")
        seeds = list(range(args.seed, args.seed + args.cases))
        out = write_dataset(args.organ, args.out, seeds, args.lesions, skip_existing=not args.overwrite,
                            replace=args.overwrite, **variety)
        print(f"wrote {args.cases} synthetic {args.organ} cases to {out} (labels.csv, reports.csv; " + (
            "the earlier cases were replaced)" if args.overwrite else "complete cases already there are kept)"))
        return 0
    check_output_dir(args.out, overwrite=args.overwrite, command="phantom")
    case = make_phantom(args.organ, args.seed, args.lesions, **variety)
    out = write_phantom(case, args.out)
    print(f"wrote synthetic {args.organ} case {case.case_id} ({case.phase}) to {out}")
    for le in case.lesions:
        print(f"  lesion {le.id}: {le.structure} {le.kind} {le.position} {le.diameter_mm:.1f} mm")
    return 0


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def threshold_arg(text: str) -> float | str:
    """``--threshold``: a finite number >= 0 (voxels scoring above it are candidates; the one rule of
    ``RunSettings``, as settings files and bundles give it), ``otsu``, or ``bundle`` (the calibrated value)."""
    if text.strip().lower() in ("otsu", "bundle"):
        return text.strip().lower()
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, 'otsu' or 'bundle', got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (anomaly scores are >= 0, so {text!r} would "
                                         "mark the whole organ), 'otsu' or 'bundle'")
    return value


def baseline_threshold(text: str) -> float:
    """``baseline --threshold``: a finite number >= 0."""
    value = threshold_arg(text)
    if isinstance(value, str):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r} (omit it for Otsu)")
    return value


def non_negative(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def grow_to_arg(text: str) -> float:
    value = _finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (1 = no growth), got {text!r}")
    return value


def _int_in(low: int, high: int | None, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}" if high is None else
                                             f"{what} must be in [{low}, {high}], got {text}")
        return value
    parse.__name__ = "int"
    return parse


seed_arg = _int_in(0, 2**63 - 1, "the seed")
#: Bounds of the phantom command (one typo must not start hours of generation).
MAX_PHANTOM_CASES = 10_000
MAX_PHANTOM_LESIONS = 10
positive_int = _int_in(1, None, "the value")
non_negative_int = _int_in(0, None, "the value")


def _report(outcome) -> None:
    for w in outcome.result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if outcome.demo_bundle:
        print("note: this is a DEMO bundle trained on synthetic phantoms; its findings on real scans mean nothing")
    _print_table(outcome.result.table)
    st = outcome.settings
    what = f"{st.method} L={st.noise_level} steps={st.steps} s={st.guidance}; " if st else ""
    print(f"{what}threshold {outcome.result.threshold:.4f}; {sum(outcome.result.timings.values()):.1f} s on "
          f"{outcome.device}; outputs in {outcome.out}")


def _cmd_job(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.app.job import run_job

    if args.command == "run" and not args.bundle:
        args.bundle = _best_bundle(args.organ)
    elif args.command == "run" and args.organ:
        from DiffusionAnomalyLib.slicer_module.scene_run import cached_meta

        organ = cached_meta(args.bundle).organ if Path(args.bundle).exists() else args.organ
        if organ != args.organ:
            raise InputError(f"{args.bundle}: the bundle is for the {organ}, not the {args.organ} (--organ)")
    with _progress_bar(args.command) as progress:
        outcome = run_job(args, progress=progress)
    _report(outcome)
    return 0


@contextlib.contextmanager
def _progress_bar(what: str):
    """A progress bar on stderr for a job's stages (only on a terminal: scripts and logs stay clean)."""
    from tqdm import tqdm

    from DiffusionAnomalyLib.app.worker import STAGE_WEIGHTS

    order = list(STAGE_WEIGHTS)
    with tqdm(total=100, desc=what, file=sys.stderr, disable=None, leave=False,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}") as bar:
        def progress(stage: str, step: int, total: int) -> None:
            before = sum(STAGE_WEIGHTS[s] for s in order[: order.index(stage)])
            done = before + STAGE_WEIGHTS[stage] * step / max(total, 1)
            bar.set_description_str(f"{what}: {stage} {step}/{total}")
            bar.update(max(0.0, 100 * done - bar.n))

        yield progress


def _best_bundle(organ: str | None) -> str:
    """The installed bundle ``run`` uses without ``--bundle``: the user's models folder before the shipped ones, a
    real model before a DEMO; says which."""
    from DiffusionAnomalyLib.models.bundle import available_bundles, default_models_dir

    if not organ:
        raise InputError("run needs --bundle, or --organ to use the best installed bundle for that organ")
    found = sorted(available_bundles(organ), key=lambda b: b.meta.demo)  # stable: user folder first within each
    if not found:
        raise InputError(f"no model bundle for the {organ} is installed (looked in {default_models_dir()} and the "
                         "shipped Resources/Models); give one with --bundle")
    best = found[0]
    note = " - a DEMO trained on synthetic phantoms: its findings on real scans mean nothing" if best.meta.demo else ""
    print(f"using the {best.label} bundle ({best.path}){note}")
    return str(best.path)


def _cmd_demo(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from DiffusionAnomalyLib.app.job import demo_job_args, run_job
    from DiffusionAnomalyLib.evaluation.metrics import dice, match_lesions
    from DiffusionAnomalyLib.imaging.io import read_volume
    from DiffusionAnomalyLib.imaging.outputs import check_output_dir
    from DiffusionAnomalyLib.models.bundle import demo_bundle
    from DiffusionAnomalyLib.synthetic.phantoms import make_phantom, write_phantom

    t0 = time.perf_counter()
    out = Path(args.out)
    check_output_dir(out, resume=True, command="demo")  # its own earlier result is replaced; anything else refused
    shipped = [] if args.baseline else [demo_bundle(args.organ)]  # none installed: an error naming where it looked
    case = make_phantom(args.organ, args.seed, args.lesions)
    case_dir = write_phantom(case, out / "case")
    print(f"[1/3] synthetic {args.organ} case {case.case_id} ({case.phase}) with {len(case.lesions)} lesion(s) "
          f"-> {case_dir}")
    if shipped:
        print(f"[2/3] detection with the shipped {shipped[0].label} bundle on {args.device} "
              "(trained on synthetic phantoms only) ...")
    else:
        print("[2/3] non-neural baseline (organ median filter) ...")
    job = demo_job_args(str(shipped[0].path) if shipped else None, case_dir, case.channels, args.organ,
                        out / "result", args.device, args.precision)
    result = run_job(job).result
    _print_table(result.table)
    pred = sitk.GetArrayFromImage(result.lesions)
    truth = sitk.GetArrayFromImage(read_volume(case_dir / "lesions.nii.gz"))
    det = match_lesions(pred, truth)
    print(f"[3/3] against the known truth: Dice {dice(pred, truth):.3f}; lesions: {det.tp} of {det.tp + det.fn} "
          f"found, {det.fp} false positive(s); recall {det.recall:.2f}, precision {det.precision:.2f}, "
          f"F1 {det.f1:.2f}")
    prec = result.parameters.get("precision")
    print(f"outputs in {out / 'result'} (heatmap, lesions, segmentation, reconstruction, overview.png, run.json); "
          f"{time.perf_counter() - t0:.1f} s{f' (networks in {prec})' if prec else ''}. "
          "Synthetic data and a demo model: not a clinical result.")
    return 0


def _dataset_setup(args: argparse.Namespace):
    from DiffusionAnomalyLib.evaluation.batch import Ranks, load_model
    from DiffusionAnomalyLib.evaluation.datasets import discover_cases
    from DiffusionAnomalyLib.imaging.outputs import check_output_dir
    from DiffusionAnomalyLib.models.device import select_device

    if not Path(args.data).is_dir():
        raise InputError(f"{args.data}: --data is not a folder")
    check_output_dir(args.out, [args.data, getattr(args, "bundle", None)], overwrite=args.overwrite, resume=True,
                     command=args.command)
    device = select_device(args.device or "auto")  # auto/cuda -> cuda:LOCAL_RANK under torchrun
    ranks = Ranks(device)
    from DiffusionAnomalyLib.app.job import run_settings

    model = load_model(getattr(args, "bundle", None), getattr(args, "organ", None), device,
                       lambda recommended, preset: run_settings(args, recommended, preset))
    cases = discover_cases(args.data, model.preset)
    if not cases:
        raise InputError(f"{args.data}: no case folders (a dataset folder holds one sub-folder per case; see "
                         "docs/evaluation.md)")
    return ranks, model, cases


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.evaluation.evaluate import baseline_beside, compute_maps, score_dataset, write_report

    out = Path(args.out)
    existed = out.exists()
    ranks, model, cases = _dataset_setup(args)
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
    if model.settings is not None and not args.no_baseline:  # a bundle: the baseline on the same cases
        beside = baseline_beside(cases, model.preset.name, out, ranks.rank, ranks.world, ranks.barrier,
                                 not args.no_postprocessing, args.min_lesion_ml, args.grow_to, args.bootstrap)
    if ranks.rank == 0:
        # evaluate's default is one Otsu threshold over the whole dataset; 'bundle' is the calibrated one
        threshold = "otsu" if args.threshold in (None, "otsu") or model.run.threshold is None else model.run.threshold
        pp = None if args.no_postprocessing else model.run.postprocessing(model.preset)
        scores, summary, problems, thr = score_dataset(cases, maps, threshold, pp, n_boot=args.bootstrap)
        settings = {"model": model.description, "organ": model.preset.name, "data": str(args.data), "maps": key,
                    "threshold": f"{thr:.4f} ({'global Otsu' if threshold == 'otsu' else 'fixed'})",
                    "post-processing": "off" if pp is None else "on (as in the kidney thesis §4.1.1" + (
                        f"; lesions >= {pp.min_volume_ml:g} ml" if pp.min_volume_ml else "") + (
                        f"; grown to {pp.grow_to:g} x threshold" if pp.grow_to < 1 else "") + ")", "IoU": 0.2,
                    "ranks": ranks.world,
                    "baseline": "this is the baseline" if model.settings is None else "off (--no-baseline)"
                    if args.no_baseline else "the median baseline beside (its global Otsu threshold)"}
        write_report(out, scores, summary, problems, settings, beside)
        print((out / "report" / "summary.md").read_text())
        if args.threshold is None and model.recommended.get("threshold") is not None:
            print(f"note: scored at the dataset's global Otsu threshold {thr:.4f} (as in the kidney thesis §5.2), "
                  f"with the bundle's "
                  f"post-processing; its calibrated operating point has the threshold "
                  f"{model.recommended['threshold']:.4f}: add --threshold bundle to score that point")
        if model.demo:
            print("note: a DEMO bundle trained on synthetic phantoms")
    ranks.close()
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.detection.anomaly import PostProcessing
    from DiffusionAnomalyLib.evaluation.sweep import run_sweep, weak_guidance, write_calibrated_bundle

    if min(args.threshold_scales) <= 0:
        raise InputError(f"--threshold-scales must be > 0 (got {min(args.threshold_scales):g})")
    if args.max_fp_per_organ is not None and args.max_fp_per_organ < 0:
        raise InputError(f"--max-fp-per-organ must be >= 0 (got {args.max_fp_per_organ:g})")
    grow_to_values = args.grow_to_values or [1.0 if args.grow_to is None else args.grow_to]
    for grow in grow_to_values:
        PostProcessing(grow_to=grow)  # checks the range before any map is computed
    if args.write_bundle:
        if not args.bundle:
            raise InputError("--write-bundle needs --bundle (the baseline has no settings to calibrate)")
        from DiffusionAnomalyLib.imaging.outputs import check_output_dir

        check_output_dir(args.write_bundle, [args.data, args.bundle, args.out], overwrite=args.overwrite,
                         option="--write-bundle", command="write-bundle")
    ranks, model, cases = _dataset_setup(args)
    if model.settings is None:
        raise InputError("sweep needs --bundle (the baseline has no L or s)")
    guidance_values = args.guidance_values
    weak = weak_guidance(model.extra, args.noise_levels) if any(s > 0 for s in guidance_values) else None
    if weak and not args.allow_weak_classifier:
        guidance_values = [0.0]
        if ranks.rank == 0:
            print(f"warning: {weak}: the sweep tries s = 0 only (--allow-weak-classifier to sweep s > 0 anyway)",
                  file=sys.stderr)
    res = run_sweep(cases, model.make_reconstructor, model.preset, Path(args.out), model.settings,
                    args.noise_levels, guidance_values, ranks.rank, ranks.world, ranks.barrier,
                    min_lesion_ml_values=args.min_lesion_ml_values, maps_key=model.maps_key,
                    options=model.options, threshold_scales=args.threshold_scales,
                    max_fp_per_organ=args.max_fp_per_organ, grow_to_values=grow_to_values,
                    baseline_organ=None if args.no_baseline else model.preset.name,
                    map_variants=_map_variants(args, model.run))
    if res is not None:
        print(f"{'L':>5} {'s':>7} {'reference':>11} {'k':>3} {'median':>6} {'threshold':>10} {'Dice':>7} {'F1':>7}")
        for r in res["grid"]:
            print(f"{r['noise_level']:>5} {r['guidance']:>7g} {r['reference']:>11} {r['samples']:>3} "
                  f"{r['median_filter']:>6} {r['threshold']:>10.4f} {r['dice'] or 0:>7.3f} {r['f1'] or 0:>7.3f}")
        b = res["best"]
        print(f"best: L = {b['noise_level']}, s = {b['guidance']:g}, reference {b['reference']}, {b['samples']} "
              f"sample(s), median filter {b['median_filter']}, Otsu threshold {b['otsu_threshold']:.4f}, "
              f"mean Dice {b['dice']}; plot in {Path(args.out) / 'sweep' / 'dice_vs_s.png'}")
        print("post-processing at the best point, by threshold (x Otsu), minimum lesion volume and growth:")
        print(f"{'scale':>6} {'threshold':>10} {'ml':>6} {'grow':>5} {'found':>9} {'FP/organ':>9} {'F1':>7} "
              f"{'Dice':>7}")
        for r in res["postprocessing"]:
            print(f"{r['threshold_scale']:>6g} {r['threshold']:>10.4f} {r['min_lesion_ml']:>6g} {r['grow_to']:>5g} "
                  f"{r['found']:>4}/{r['lesions']:<4} {r['fp_per_organ'] or 0:>9.2f} {r['f1'] or 0:>7.3f} "
                  f"{r['dice'] or 0:>7.3f}")
        print(f"recommended: threshold {b['threshold']:.4f}, minimum lesion volume {b['min_lesion_ml']:g} ml, "
              f"grow to {b['grow_to']:g} x threshold ({b['objective']})")
        if "baseline" in res:
            _print_beside(res["baseline"])
        if args.write_bundle:
            dest = write_calibrated_bundle(args.bundle, args.write_bundle, b,
                                           note=f"sweep over {len(cases)} cases of {args.data}")
            print(f"calibrated bundle written to {dest}")
    ranks.close()
    return 0


def _map_variants(args: argparse.Namespace, run) -> list:
    """The map options the sweep tries: every combination of --reference-values, --samples-values and
    --median-filter-values (each defaulting to the run's own value), checked before any map is made."""
    import dataclasses
    import itertools

    variants = []
    for ref, k, med in itertools.product(args.reference_values or [run.reference], args.samples_values or [run.samples],
                                         args.median_filter_values or [run.median_filter]):
        try:
            point = dataclasses.replace(run, reference=ref, samples=k, median_filter=med)  # checks the values
        except InputError as exc:
            raise InputError(f"sweep --reference-values / --samples-values / --median-filter-values: {exc}") from None
        if (options := point.map_options()) not in variants:
            variants.append(options)
    return variants


def _print_beside(comparison: dict) -> None:
    """The model beside the baseline, as sweep prints it (evaluate prints summary.md, which holds the same)."""
    m, b = comparison["model"], comparison["baseline"]

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    print(f"beside the non-neural median baseline ({comparison['cases']} cases): found {m['found']}/{m['lesions']} "
          f"vs {b['found']}/{b['lesions']}; FP per organ {f(m['fp_per_organ'])} vs {f(b['fp_per_organ'])}; "
          f"pooled F1 {f(m['pooled_f1'])} vs {f(b['pooled_f1'])}; Dice {f(m['dice'])} vs {f(b['dice'])}")
    for key, name in (("dice", "Dice"), ("f1", "lesion F1")):
        t = comparison["paired"][key]
        print(f"  paired Wilcoxon on per-case {name} ({t['n']} pairs): {t['verdict']} (p model better "
              f"{f(t['p_model_better'])}, p baseline better {f(t['p_baseline_better'])})")


def _cmd_batch(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.evaluation.batch import run_batch, write_index

    ranks, model, cases = _dataset_setup(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_batch(cases, model, out, ranks.rank, ranks.world, redo=args.overwrite)
    ranks.barrier()
    failed = []
    if ranks.rank == 0:
        import csv

        index = write_index(cases, out)
        with open(index, newline="") as f:
            failed = [r for r in csv.DictReader(f) if r["status"] != "ok"]
        print(f"{len(cases)} case(s), {len(cases) - len(failed)} done; index in {index}")
    ranks.close()
    if failed:  # a batch with failed cases is not a complete result: a non-zero exit, naming them
        from DiffusionAnomalyLib.errors import EXIT_BAD_INPUT

        listed = "; ".join(f"{r['case']}: {r['problem']}" for r in failed[:5]) + (" ..." if len(failed) > 5 else "")
        print(f"error [bad_input]: {len(failed)} of {len(cases)} case(s) failed ({listed}); the others' results are "
              f"in {out}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from DiffusionAnomalyLib.app.diagnostics import demo_case_agreement
    from DiffusionAnomalyLib.evaluation.bench import run_bench
    from DiffusionAnomalyLib.imaging.outputs import check_output_file, write_text_atomic

    if args.out:
        check_output_file(args.out, overwrite=args.overwrite, command="bench")
    if args.gpu_check:
        from DiffusionAnomalyLib.app.diagnostics import gpu_check

        return gpu_check(args.out)
    report = run_bench(sizes=args.sizes, devices=args.devices, steps=args.steps, repeats=args.repeats,
                       reference=not args.no_reference, methods=args.samplers, guidance=args.guidance_values,
                       rois=args.rois, precisions=tuple(args.precisions), network_time=not args.no_network_time,
                       agreement=demo_case_agreement if args.agreement else None)
    text = json.dumps(report, indent=2)
    if args.out:
        write_text_atomic(args.out, text + "\n")
    print(text)
    return 0


def _overrides(args: argparse.Namespace) -> dict:
    out = {}
    if getattr(args, "spacing", None):
        out["spacing_mm"] = [args.spacing] * 3
    if getattr(args, "roi_size", None):
        out["roi_size_mm"] = args.roi_size
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.imaging.outputs import check_name, check_output_dir

    if args.part != "all":  # a single stage: its --out is new, empty or its own earlier bundle
        check_output_dir(args.out, [args.data, getattr(args, "bundle", None)], overwrite=args.overwrite,
                         resume=args.resume, command="train")
        if getattr(args, "name", None) is not None:
            check_name(args.name, "--name")
        if getattr(args, "version", None) is not None:
            check_name(args.version, "--version")
    if args.part == "all":
        from DiffusionAnomalyLib.app.train_all import TrainAllPlan, train_all

        iterations = {s: getattr(args, f"{s}_iterations") or args.iterations
                      for s in ("autoencoder", "denoiser", "classifier")}
        if not 0 <= args.val_fraction < 1:
            raise InputError(f"--val-fraction must be in [0, 1) (got {args.val_fraction:g})")
        plan = TrainAllPlan(
            data=args.data, organ=args.organ, out=args.out, preset=args.preset, spacing=args.spacing,
            iterations={k: v for k, v in iterations.items() if v}, adversarial_start=args.adversarial_start,
            val_fraction=args.val_fraction, cases=args.cases, validation_cases=args.validation_cases,
            labels=args.labels, totalseg=args.totalseg, sampler=args.sampler, steps=args.steps,
            noise_levels=args.noise_levels, guidance=args.guidance_values, threshold_scales=args.threshold_scales,
            min_lesion_ml_values=args.min_lesion_ml_values, grow_to_values=args.grow_to_values,
            max_fp_per_organ=args.max_fp_per_organ, reference_values=args.reference_values,
            samples_values=args.samples_values, median_filter_values=args.median_filter_values, seed=args.seed,
            device=args.device, precision=args.precision, name=args.name, version=args.version, demo=args.demo,
            install=args.install)
        train_all(plan, dry_run=args.dry_run, from_stage=args.from_stage)
        return 0
    if args.part == "autoencoder":
        from DiffusionAnomalyLib.training.autoencoder import AutoencoderTraining, train_autoencoder

        train_autoencoder(AutoencoderTraining(
            data=args.data, organ=args.organ, out=args.out, network=args.network, preset_overrides=_overrides(args),
            iterations=args.iterations, batch_size=args.batch_size, val_every=args.val_every,
            adversarial_start=args.adversarial_start, perceptual_weights=args.perceptual_weights, seed=args.seed,
            device=args.device, precision=args.precision, resume=args.resume, name=args.name, version=args.version,
            demo=args.demo, **({"lr": args.lr} if args.lr else {})))
    elif args.part == "denoiser":
        from DiffusionAnomalyLib.training.denoiser import DenoiserTraining, train_denoiser

        train_denoiser(DenoiserTraining(
            data=args.data, bundle=args.bundle, out=args.out, network=args.network, iterations=args.iterations,
            batch_size=args.batch_size, val_every=args.val_every, class_conditional=args.class_conditional,
            latent_crop=tuple(args.latent_crop) if args.latent_crop else None,
            seed=args.seed, device=args.device, precision=args.precision, resume=args.resume,
            **({"lr": args.lr} if args.lr else {})))
    else:
        from DiffusionAnomalyLib.training.classifier import ClassifierTraining, train_classifier

        train_classifier(ClassifierTraining(
            data=args.data, bundle=args.bundle, out=args.out, iterations=args.iterations,
            batch_size=args.batch_size, val_every=args.val_every, seed=args.seed, device=args.device,
            precision=args.precision, resume=args.resume, frozen_levels=args.frozen_levels, max_level=args.max_level,
            lesion_weight=args.lesion_weight, lesion_cell_ml=args.lesion_cell_ml,
            **({"lr": args.lr} if args.lr else {})))
    return 0


def _cmd_import_bundle(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.models.bundle import default_models_dir, import_bundle, read_meta

    dest = import_bundle(args.path, args.models_dir or default_models_dir(), overwrite=args.overwrite)
    meta = read_meta(dest)
    print(f"imported {meta.name} {meta.version} ({meta.organ}{', DEMO' if meta.demo else ''}) into {dest}")
    return 0


def _cmd_pseudo_labels(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.imaging.outputs import check_output_file
    from DiffusionAnomalyLib.synthetic.reports import label_reports_csv

    check_output_file(args.out, [args.reports], overwrite=args.overwrite, command="pseudo-labels")
    counts = label_reports_csv(args.reports, args.organ, args.out, args.min_sentences)
    print(f"wrote {args.out}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, except where the help text already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or not action.option_strings or "%(default)" in text):
            return text
        value = " ".join(map(str, action.default)) if isinstance(action.default, list | tuple) else action.default
        return f"{text} (default: {str(value).replace('%', '%%')})"


NO_OVERVIEW_HELP = ("write no overview.png (needs matplotlib); Slicer's panel passes it: the scene shows the "
                    "results")
OVERWRITE_HELP = ("replace an earlier result in --out (the whole result set: nothing of the earlier run is kept), or "
                  "write into a non-empty folder; without it such a folder is refused. Inputs are never replaced")
DEBUG_HELP = "on an error, also print the traceback"

#: How the command line parses each kind of run setting (``settings.Option.kind``).
OPTION_KINDS = {"sampler": {"choices": list(SAMPLERS)}, "reference": {"choices": list(REFERENCES)}, "device": {},
                "precision": {"choices": list(PRECISIONS)},
                "positive_int": {"type": positive_int}, "non_negative_int": {"type": non_negative_int},
                "non_negative": {"type": non_negative}, "seed": {"type": seed_arg},
                "threshold": {"type": threshold_arg}, "grow_to": {"type": grow_to_arg}}


def add_run_settings(parser: argparse.ArgumentParser, command: str) -> None:
    """The run settings ``command`` takes, from ``settings.RunSettings`` (each field's ``Option``); every one
    defaults to None, "not given", which ``RunSettings.resolve`` turns into the bundle's value or the default."""
    from DiffusionAnomalyLib.settings import options

    for name, opt in options():
        if command not in opt.commands:
            continue
        flag = "--" + name.replace("_", "-")
        if opt.kind == "flag":
            parser.add_argument(flag, action="store_true", help=opt.help)
        else:
            parser.add_argument(flag, default=None, metavar=opt.metavar, help=opt.help, **OPTION_KINDS[opt.kind])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffusion-anomaly",
        description="Find anomalies in 3D CT/MRI by comparing a scan with a healthy reconstruction. "
                    "Research software; not a medical device.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    ph = sub.add_parser("phantom", help="write synthetic case(s) with known lesions")
    ph.add_argument("--organ", required=True, choices=list(ORGANS))
    ph.add_argument("--out", required=True, help="output folder")
    ph.add_argument("--seed", type=seed_arg, default=0, help="random seed, 0..2^63-1 (default 0)")
    ph.add_argument("--lesions", type=_int_in(0, MAX_PHANTOM_LESIONS, "--lesions"), default=None,
                    help=f"number of lesions, 0..{MAX_PHANTOM_LESIONS} (default: random 0-3)")
    ph.add_argument("--cases", type=_int_in(1, MAX_PHANTOM_CASES, "--cases"), default=1,
                    help=f"write N cases (1..{MAX_PHANTOM_CASES}; seeds seed..seed+N-1) as a dataset; complete cases "
                         "already in OUT are kept (a rerun resumes)")
    ph.add_argument("--overwrite", action="store_true",
                    help="replace an earlier phantom result in --out (a folder holding anything else is refused)")
    ph.add_argument("--variety", action="store_true",
                    help="kidney, liver: the varied generator (kidney size, shape and cortex, texture, all contrast "
                         "phases, noise 5-30 HU, slices 1.5-5 mm, lesion shapes beyond ellipsoids; cases "
                         "<organ>-var-<seed>)")
    ph.set_defaults(func=_cmd_phantom)

    bl = sub.add_parser("baseline", help="detect with the non-neural baseline reconstruction")
    bl.add_argument("--organ", required=True, choices=list(ORGANS))
    bl.add_argument("--input", required=True, nargs="+", help="image file(s) or DICOM folder; brain: t1n t1c t2w t2f")
    src = bl.add_mutually_exclusive_group()
    src.add_argument("--mask", help="organ mask file (nonzero = organ, or --mask-label)")
    src.add_argument("--totalseg", help="TotalSegmentator output: multilabel file or folder of per-organ files")
    src.add_argument("--skull-stripped", action="store_true",
                     help="brain: the scan is skull-stripped; the brain mask is its nonzero voxels")
    bl.add_argument("--mask-label", type=int, default=None, help="label value of the organ in --mask")
    bl.add_argument("--threshold", type=baseline_threshold, default=None,
                    help="fixed threshold >= 0 (default: Otsu in the organ)")
    bl.add_argument("--min-lesion-ml", type=non_negative, default=None, metavar="ML",
                    help="drop lesions smaller than this many millilitres (default 0)")
    bl.add_argument("--out", required=True, help="output folder (new or empty; see --overwrite)")
    bl.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    bl.add_argument("--no-overview", action="store_true", help=NO_OVERVIEW_HELP)
    bl.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    bl.set_defaults(func=_cmd_job)

    tr = sub.add_parser("train", help="train a bundle: every stage at once (all), or one part",
                        description="Train a model bundle on a dataset folder. `train all` goes from the dataset to a "
                                    "calibrated bundle with its model card in one restartable command; the single "
                                    "parts (autoencoder -> denoiser -> classifier, each extending the previous "
                                    "bundle) are its stages. Run under torchrun for several processes/GPUs "
                                    "(docs/training.md).")
    tparts = tr.add_subparsers(dest="part", metavar="PART", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", required=True, help="dataset folder (DATA/labels.csv, DATA/<case>/<channel>.nii.gz, "
                                                      "DATA/<case>/segmentations/)")
    common.add_argument("--out", required=True, help="output bundle folder (work files go to OUT.work)")
    common.add_argument("--seed", type=seed_arg, default=0, help="random seed, 0..2^63-1")
    common.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    common.add_argument("--precision", choices=list(PRECISIONS), default="auto",
                        help="the networks' training steps: auto is bfloat16 autocast where the hardware has it "
                             "natively (CUDA from Ampere on; CPUs with AVX-512 BF16 or AMX; the autoencoder on CUDA "
                             "only), else float32; weights, optimiser and losses stay float32")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    part = argparse.ArgumentParser(add_help=False, parents=[common])
    part.add_argument("--iterations", type=positive_int, default=1000, help="training iterations")
    part.add_argument("--lr", type=float, default=None,
                      help="learning rate (defaults: autoencoder 3e-4, denoiser 1e-4, classifier 1e-4)")
    part.add_argument("--val-every", type=positive_int, default=50, help="validate every N iterations")
    part.add_argument("--resume", action="store_true", help="continue from OUT.work/checkpoint")
    part.add_argument("--overwrite", action="store_true",
                      help="replace an earlier bundle in --out (a folder holding anything else is refused)")
    network_help = ("network preset: tiny, thesis-kidney, or (autoencoder) tiny-8ch (8 latent channels, 1,024 codes) "
                    "or tiny-2x (one stride-2 level: a 2x finer latent grid), or (denoiser) tiny-3level (a third "
                    "level, for the finer grid)")

    ta = tparts.add_parser("autoencoder", parents=[part], formatter_class=DefaultsFormatter,
                           help="the VQ-GAN autoencoder (first stage; writes a new bundle)")
    ta.add_argument("--organ", required=True, choices=list(ORGANS), help="organ preset")
    ta.add_argument("--network", default="tiny", help=network_help)
    ta.add_argument("--spacing", type=float, help="override the preset spacing (mm, isotropic; default: the organ "
                                                  "preset's)")
    ta.add_argument("--roi-size", type=float, nargs=3, metavar=("X", "Y", "Z"), help="ROI size in mm (default: the "
                                                                                      "organ preset's)")
    ta.add_argument("--batch-size", type=positive_int, default=2, help="patches per batch")
    ta.add_argument("--adversarial-start", type=int, default=10_000,
                    help="the GAN losses start after this iteration (never, when >= --iterations: it says so)")
    ta.add_argument("--perceptual-weights", help="local .safetensors of a 3D resnet10 (optional; default: no "
                                                 "perceptual loss)")
    ta.add_argument("--name", help="bundle name (default: <organ>-model, or <organ>-demo with --demo)")
    ta.add_argument("--version", default="0.1.0", help="bundle version (later stages keep it)")
    ta.add_argument("--demo", action="store_true", help="mark the bundle as a demo / synthetic-data model")

    td = tparts.add_parser("denoiser", parents=[part], formatter_class=DefaultsFormatter,
                           help="the latent denoiser on healthy structures (extends --bundle)")
    td.add_argument("--bundle", required=True, help="the autoencoder bundle to extend")
    td.add_argument("--network", default="tiny", help=network_help)
    td.add_argument("--batch-size", type=positive_int, default=8, help="latents per batch")
    td.add_argument("--class-conditional", action="store_true", help="train with labels for CFG")
    td.add_argument("--latent-crop", type=int, nargs=3, metavar=("Z", "Y", "X"),
                    help="train on random crops of this many latent voxels (validation and use: whole latents); "
                         "makes fine latent grids trainable on a CPU")

    tc = tparts.add_parser("classifier", parents=[part], formatter_class=DefaultsFormatter,
                           help="the noisy-latent classifier for guidance (extends --bundle)")
    tc.add_argument("--bundle", required=True, help="the denoiser bundle to extend")
    tc.add_argument("--batch-size", type=positive_int, default=16, help="latents per batch")
    tc.add_argument("--frozen-levels", type=int, default=None,
                    help="backbone levels to freeze (default: half of them)")
    tc.add_argument("--max-level", type=int, default=None,
                    help="train on noise levels 0..N only (default: all, 0..T); guidance from a start level L above N "
                         "is then outside what the classifier saw")
    tc.add_argument("--lesion-weight", type=float, default=0.0,
                    help="> 0 also trains a per-cell lesion loss with this weight from each case's lesions.nii.gz "
                         "(0: image labels only, as in the thesis)")
    tc.add_argument("--lesion-cell-ml", type=float, default=0.1,
                    help="lesion volume (ml) that makes a feature cell a lesion cell")

    tall = tparts.add_parser(
        "all", parents=[common], formatter_class=DefaultsFormatter,
        help="dataset folder -> calibrated bundle with its model card, in one restartable command",
        description="From a dataset folder (phantom, KiTS, BraTS or LiTS layout; split folders DATA/<split>/<case>/; "
                    "docs/training.md) to a calibrated bundle: prepare (organ masks, labels, a deterministic train / "
                    "validation split), autoencoder, denoiser (healthy structures), classifier, calibration sweep on "
                    "the validation split only (the median baseline beside), the bundle with its model card. A "
                    "rerun resumes where it stopped and trains nothing when all is done.")
    tall.add_argument("--organ", required=True, choices=list(ORGANS), help="organ preset")
    tall.add_argument("--preset", choices=["tiny", "thesis"], default="tiny",
                      help="network sizes and stage defaults: tiny (a CPU, the demo recipe: 3000 iterations per stage, "
                           "2 mm kidney / 4 mm liver and brain patches, no GAN) or thesis (GPUs: the thesis networks "
                           "at 1 mm kidney / 2 mm, 20000/20000/10000 iterations, GAN after 10000)")
    tall.add_argument("--spacing", type=float, default=None, help="patch spacing in mm (default: the preset's)")
    tall.add_argument("--iterations", type=positive_int, default=None,
                      help="iterations of each of the three networks (default: the preset's)")
    for stage in ("autoencoder", "denoiser", "classifier"):
        tall.add_argument(f"--{stage}-iterations", type=positive_int, default=None,
                          help=f"{stage} iterations (default: --iterations, else the preset's)")
    tall.add_argument("--adversarial-start", type=int, default=None,
                      help="autoencoder GAN losses after this iteration (default: the preset's; tiny: off)")
    tall.add_argument("--val-fraction", type=float, default=0.2,
                      help="share of cases held out for validation and calibration (deterministic, by case name)")
    tall.add_argument("--validation-cases", metavar="FILE", help="the validation cases, one name per line (default: "
                                                                 "a val/ split folder, else --val-fraction)")
    tall.add_argument("--cases", metavar="FILE", help="use only the cases listed, one name (or split/name) per line")
    tall.add_argument("--labels", metavar="CSV", help="labels file: case,structure,label with structure the "
                                                      "segmentation file's name (default: DATA/labels.csv, else "
                                                      "derived from the lesion labels)")
    tall.add_argument("--totalseg", metavar="DIR", help="organ masks from TotalSegmentator: DIR/<case>/ or "
                                                        "DIR/<case>.nii.gz (default: the dataset's own)")
    tall.add_argument("--sampler", choices=list(SAMPLERS), default=SAMPLER_DEFAULTS["sampler"],
                      help="calibration: sampler")
    tall.add_argument("--steps", type=positive_int, default=SAMPLER_DEFAULTS["steps"],
                      help="calibration: denoising steps")
    tall.add_argument("--noise-levels", type=positive_int, nargs="+", default=None,
                      help="calibration: L values (default: the preset's: tiny 250, thesis 100 250 500)")
    tall.add_argument("--guidance-values", type=non_negative, nargs="+", default=None,
                      help="calibration: s values (default: tiny 0 100, thesis 0..2000 by 200; s > 0 only when "
                           "the classifier's validation AUC is >= 0.7)")
    tall.add_argument("--threshold-scales", type=float, nargs="+", default=[0.8, 0.9, 1.0, 1.15, 1.3],
                      help="calibration: thresholds tried, x the validation maps' Otsu")
    tall.add_argument("--min-lesion-ml-values", type=non_negative, nargs="+", default=[0.0, 0.5, 1.0, 2.0],
                      help="calibration: minimum lesion volumes tried")
    tall.add_argument("--grow-to-values", type=grow_to_arg, nargs="+", default=[1.0, 0.7],
                      help="calibration: lesion growth tried (1 = off)")
    tall.add_argument("--max-fp-per-organ", type=non_negative, default=1.0,
                      help="calibration: the operating point finds the most lesions with at most this many false "
                           "positives per organ")
    tall.add_argument("--reference-values", nargs="+", choices=list(REFERENCES), default=None, metavar="REF",
                      help="calibration: anomaly map references tried, input and/or autoencoder (default: input)")
    tall.add_argument("--samples-values", type=positive_int, nargs="+", default=None, metavar="K",
                      help="calibration: numbers of averaged reconstructions tried (DDPM; default: 1)")
    tall.add_argument("--median-filter-values", type=non_negative_int, nargs="+", default=None, metavar="N",
                      help="calibration: anomaly map median filter sizes tried, in voxels (default: the organ's)")
    tall.add_argument("--name", help="bundle name (default: <organ>-model, or <organ>-demo with --demo)")
    tall.add_argument("--version", default="0.1.0", help="bundle version")
    tall.add_argument("--demo", action="store_true", help="mark the bundle as a demo / synthetic-data model")
    tall.add_argument("--install", metavar="MODELS_DIR",
                      help="when done, copy the bundle into this models folder as MODELS_DIR/<name>/ and list it with "
                           "its SHA-256 in MODELS_DIR/manifest.json (make demo-models: Resources/Models)")
    tall.add_argument("--dry-run", action="store_true",
                      help="check the data (cases and structures per label and split, unusable rows and cases named) "
                           "and estimate each stage's time; train nothing")
    tall.add_argument("--from-stage", choices=["prepare", "autoencoder", "denoiser", "classifier", "calibrate",
                                               "bundle"], default=None,
                      help="redo this stage and the ones after it (default: resume; finished stages are kept)")
    tr.set_defaults(func=_cmd_train)

    pl = sub.add_parser("pseudo-labels", help="healthy/unhealthy/excluded/unknown labels from radiology reports")
    pl.add_argument("--reports", required=True, help="CSV with columns case,report")
    pl.add_argument("--organ", required=True, choices=list(ORGANS))
    pl.add_argument("--out", required=True, help="output labels CSV (case,structure,side,label,evidence)")
    pl.add_argument("--min-sentences", type=_int_in(0, 10_000, "--min-sentences"), default=10,
                    help="shorter reports are labelled unknown")
    pl.add_argument("--overwrite", action="store_true",
                    help="replace an earlier pseudo-labels CSV at --out (any other file there is refused)")
    pl.set_defaults(func=_cmd_pseudo_labels)

    ib = sub.add_parser("import-bundle", help="install a model bundle (folder or .zip) into the models folder, as "
                                              "Slicer's Import bundle... does",
                        description="Checks the bundle (model.json, its name and version, every weight file's "
                                    "SHA-256) and copies it to MODELS_DIR/<name>-<version>/, where run --organ and "
                                    "the Slicer panel find it.")
    ib.add_argument("path", help="the bundle folder or .zip")
    ib.add_argument("--models-dir", default=None,
                    help="models folder (default: $DA_MODELS_DIR, else ~/.diffusion-anomaly/models)")
    ib.add_argument("--overwrite", action="store_true",
                    help="replace an installed bundle of the same name and version (without it that is refused)")
    ib.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    ib.set_defaults(func=_cmd_import_bundle)

    ru = sub.add_parser("run", help="detect with a latent-diffusion model bundle")
    ru.add_argument("--bundle", help="model bundle folder or .zip (default: the best installed bundle for --organ)")
    ru.add_argument("--organ", choices=list(ORGANS), help="without --bundle: use the best installed bundle for this "
                                                         "organ (a real one before a DEMO)")
    ru.add_argument("--input", required=True, nargs="+", help="image file(s) or DICOM folder; brain: t1n t1c t2w t2f")
    src = ru.add_mutually_exclusive_group()
    src.add_argument("--mask", help="organ mask file (nonzero = organ, or --mask-label)")
    src.add_argument("--totalseg", help="TotalSegmentator output: multilabel file or folder of per-organ files")
    src.add_argument("--skull-stripped", action="store_true", help="brain: the mask is the scan's nonzero voxels")
    ru.add_argument("--mask-label", type=int, default=None, help="label value of the organ in --mask")
    add_run_settings(ru, "run")
    ru.add_argument("--skip-modality-check", action="store_true",
                    help="run even if the intensities do not look like the bundle's modality (CT vs MRI)")
    ru.add_argument("--settings", metavar="FILE", default=None,
                    help="take every run setting from FILE: the run.json of an earlier run (replays it) or a "
                         "settings JSON; options given explicitly override it")
    ru.add_argument("--out", required=True, help="output folder (new or empty; see --overwrite)")
    ru.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    ru.add_argument("--no-overview", action="store_true", help=NO_OVERVIEW_HELP)
    ru.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    ru.set_defaults(func=_cmd_job)

    def dataset_parser(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=description)
        sp.add_argument("--data", required=True, help="dataset folder, one sub-folder per case (phantom, KiTS or "
                                                      "BraTS layout; see README)")
        model = sp.add_mutually_exclusive_group(required=True)
        model.add_argument("--bundle", help="model bundle folder or .zip")
        model.add_argument("--baseline", action="store_true", help="the non-neural median baseline (needs --organ)")
        sp.add_argument("--organ", choices=list(ORGANS), help="with --baseline")
        add_run_settings(sp, name)
        sp.add_argument("--out", required=True)
        sp.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty folder that is not an earlier result of this command")
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        return sp

    ev = dataset_parser("evaluate", "metrics over a dataset (as in the kidney thesis, ch. 5; docs/evaluation.md), "
                        "resumable and shardable",
                        "Dice, lesion precision/recall/F1 at IoU 0.2, size strata, FROC, voxel AUROC/AUPRC with "
                        "bootstrap CIs; CSV, JSON, Markdown and PNG plots in OUT/report. Maps are cached in OUT/maps "
                        "(an interrupted run resumes). Shard with: torchrun --nproc_per_node N -m "
                        "DiffusionAnomalyLib.app.cli evaluate ...")
    ev.add_argument("--threshold", type=threshold_arg, default=None,
                    help="'otsu' (global over the dataset, default, as the thesis), a number, or 'bundle' (the "
                         "bundle's calibrated operating point)")
    ev.add_argument("--no-postprocessing", action="store_true", help="threshold + components only")
    ev.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    ev.add_argument("--no-baseline", action="store_true",
                    help="with --bundle: do not run the non-neural median baseline on the same cases (by default it "
                         "runs, and summary.md puts the two side by side with a paired Wilcoxon test per case)")
    ev.set_defaults(func=_cmd_evaluate)

    sw = dataset_parser("sweep", "grid search over L and s (as in the kidney thesis §5.2); can calibrate a copy of "
                        "the bundle",
                        "For each L and s: maps (cached), one global Otsu threshold, mean Dice without "
                        "post-processing. Best = highest mean Dice. Then, there, the operating point: threshold "
                        "(Otsu x --threshold-scales) and minimum lesion volume, by pooled lesion F1 or under "
                        "--max-fp-per-organ. Writes OUT/sweep/{sweep.csv,sweep.json,dice_vs_s.png}.")
    sw.add_argument("--noise-levels", type=int, nargs="+", default=[100, 250, 500], help="the L values of the grid")
    sw.add_argument("--guidance-values", type=float, nargs="+", default=[float(s) for s in range(0, 2001, 200)],
                    help="the s values of the grid")
    sw.add_argument("--reference-values", nargs="+", choices=list(REFERENCES), default=None, metavar="REF",
                    help="also sweep the anomaly map's reference: input and/or autoencoder (default: --reference)")
    sw.add_argument("--samples-values", type=int, nargs="+", default=None, metavar="K",
                    help="also sweep the number of averaged reconstructions (default: --samples)")
    sw.add_argument("--median-filter-values", type=int, nargs="+", default=None, metavar="N",
                    help="also sweep the anomaly map's median filter size in voxels, 0 = none (default: "
                         "--median-filter); the grid is L x s x every reference, K and N")
    sw.add_argument("--min-lesion-ml-values", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0, 2.0],
                    metavar="ML", help="then, at the best L and s: post-processing with each minimum lesion volume "
                                       "(see --max-fp-per-organ for which one is recommended)")
    sw.add_argument("--threshold-scales", type=float, nargs="+", default=[1.0], metavar="X",
                    help="also try the Otsu threshold times each X in the post-processing stage (default 1)")
    sw.add_argument("--grow-to-values", type=float, nargs="+", default=None, metavar="F",
                    help="also try growing the lesions to each F x threshold in the post-processing stage (hysteresis; "
                         "default: --grow-to, else 1 = off)")
    sw.add_argument("--max-fp-per-organ", type=float, default=None, metavar="N",
                    help="recommend the operating point that finds the most lesions with at most N false-positive "
                         "components per organ (default: the best pooled lesion F1)")
    sw.add_argument("--no-baseline", action="store_true",
                    help="do not run the non-neural median baseline on the same cases (by default it runs and the "
                         "report puts it beside the recommended operating point, with a paired Wilcoxon test)")
    sw.add_argument("--allow-weak-classifier", action="store_true",
                    help="sweep s > 0 even when the bundle's recorded classifier AUC is near chance (below 0.7; by "
                         "default only s = 0 is tried then)")
    sw.add_argument("--write-bundle", help="write a copy of the bundle calibrated with the best L, s, threshold and "
                                           "minimum lesion volume")
    sw.set_defaults(func=_cmd_sweep)

    ba = dataset_parser("batch", "run detection on every case of a dataset folder (full outputs per case)",
                        "Writes OUT/<case>/ as `run` does, plus OUT/index.csv; finished cases are skipped. Shard "
                        "with torchrun --nproc_per_node N -m DiffusionAnomalyLib.app.cli batch ...")
    ba.set_defaults(func=_cmd_batch)

    be = sub.add_parser("bench", help="speed and memory of the samplers (JSON)",
                        description="Times the sampler with random weights at named model sizes (demo, thesis "
                                    "kidney): DDPM and DDIM, with and without guidance, 1 and 2 ROIs per batch, on "
                                    "CPU and CUDA when present, against a plain loop on MONAI's DDIM scheduler.")
    be.add_argument("--sizes", nargs="+", default=["demo", "thesis-kidney"], choices=["demo", "thesis-kidney"])
    be.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    be.add_argument("--steps", type=int, default=50)
    be.add_argument("--repeats", type=int, default=1)
    be.add_argument("--no-reference", action="store_true", help="skip the MONAI reference loop")
    be.add_argument("--samplers", nargs="+", default=["ddpm", "ddim"], choices=["ddpm", "ddim"])
    be.add_argument("--guidance-values", type=float, nargs="+", default=[0.0, 100.0], help="0 = unguided")
    be.add_argument("--rois", type=int, nargs="+", default=[1, 2], help="ROIs per batch")
    be.add_argument("--precisions", nargs="+", default=["fp32", "auto"], choices=list(PRECISIONS),
                    help="network precisions to run side by side (default: fp32 and auto, the fast path; the first "
                         "is the baseline of the speedups and MONAI's reference loop)")
    be.add_argument("--no-network-time", action="store_true",
                    help="skip the bare network loop (network_s, network_share, overhead): half the time")
    be.add_argument("--agreement", action="store_true",
                    help="also run demo's case (kidney phantom 1000, the shipped kidney-demo bundle) at fp32 and at "
                         "the other precisions: heatmap differences and whether the lesion tables are identical")
    be.add_argument("--gpu-check", action="store_true",
                    help="the GPU check (scripts/gpu_check.sh): demo and thesis sizes in bf16 on CUDA, peak GPU "
                         "memory, a provoked out-of-memory run (exit 4) and the agreement check; exit 0 and a "
                         "'skipped' line without CUDA")
    be.add_argument("--out", help="also write the JSON here (a new file, or an earlier bench report with "
                                  "--overwrite)")
    be.add_argument("--overwrite", action="store_true", help="replace an earlier bench report at --out")
    be.set_defaults(func=_cmd_bench)

    de = sub.add_parser("demo", help="generate a phantom and run detection on it, with scores against the truth")
    de.add_argument("--organ", default="kidney", choices=list(ORGANS))
    de.add_argument("--seed", type=seed_arg, default=1000,
                    help="phantom seed (default 1000: a typical case of the kidney demo bundle's held-out evaluation, "
                         "Dice next to the median)")
    de.add_argument("--lesions", type=_int_in(0, MAX_PHANTOM_LESIONS, "--lesions"), default=None,
                    help="number of lesions (default: the phantom's own, 0-3)")
    de.add_argument("--out", default="demo-output", help="output folder: new, empty or an earlier demo's (which is "
                                                         "replaced); a folder holding anything else is refused")
    de.add_argument("--device", default="auto", help="auto (CUDA > MPS > CPU), cpu, cuda")
    de.add_argument("--precision", choices=list(PRECISIONS), default=None, help=PRECISION_HELP)
    de.add_argument("--baseline", action="store_true", help="use the non-neural baseline instead of the demo bundle")
    de.set_defaults(func=_cmd_demo)
    for command in sub.choices.values():  # every command's --help shows its defaults
        command.formatter_class = DefaultsFormatter
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure ends with its documented exit code and one line on stderr (the traceback
    too with ``--debug``); SIGINT and SIGTERM cancel with exit 5 after the outputs' staging is cleaned up."""
    from DiffusionAnomalyLib import logs
    from DiffusionAnomalyLib.errors import classify, raise_cancelled

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if getattr(args, "baseline", False) and not args.organ:
        parser.error("--baseline needs --organ")
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread (e.g. a test thread): leave signals alone
        previous = signal.signal(signal.SIGTERM, raise_cancelled)
    try:
        with logs.console():  # the library logs; the command line shows it as plain lines
            return args.func(args)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure maps to a documented exit code
        code, name, message = classify(exc)
        if getattr(args, "debug", False) or os.environ.get("DA_DEBUG"):
            traceback.print_exception(exc, file=sys.stderr)
        print(f"error [{name}]: {message}", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
