"""What each ``diffusion-anomaly`` command does with its parsed arguments: build the library's typed request, call
the API, print the result. ``app/cli.py`` parses and dispatches here (``cmd_<command>``); nothing here parses."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from DiffusionAnomalyLib.errors import InputError


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


def cmd_phantom(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.imaging.outputs import check_output_dir
    from DiffusionAnomalyLib.synthetic.phantoms import make_phantom, write_dataset, write_phantom

    generator = {"variety": args.variety, "lesion_sizes": args.lesion_sizes}
    if args.seed + args.cases - 1 >= 2**63:
        raise InputError(f"--seed {args.seed} with --cases {args.cases}: the seeds would pass 2^63-1")
    if args.cases > 1:
        check_output_dir(args.out, overwrite=args.overwrite, resume=not args.overwrite, command="phantom --cases")
        seeds = list(range(args.seed, args.seed + args.cases))
        out = write_dataset(args.organ, args.out, seeds, args.lesions, skip_existing=not args.overwrite,
                            replace=args.overwrite, **generator)
        print(f"wrote {args.cases} synthetic {args.organ} cases to {out} (labels.csv, reports.csv; " + (
            "the earlier cases were replaced)" if args.overwrite else "complete cases already there are kept)"))
        return 0
    check_output_dir(args.out, overwrite=args.overwrite, command="phantom")
    case = make_phantom(args.organ, args.seed, args.lesions, **generator)
    out = write_phantom(case, args.out)
    print(f"wrote synthetic {args.organ} case {case.case_id} ({case.phase}) to {out}")
    for le in case.lesions:
        print(f"  lesion {le.id}: {le.structure} {le.kind} {le.position} {le.diameter_mm:.1f} mm")
    return 0


def _report(found) -> None:
    for w in found.result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if found.demo_bundle:
        print("note: this is a DEMO bundle trained on synthetic phantoms; its findings on real scans mean nothing")
    _print_table(found.result.table)
    st = found.settings
    what = f"{st.sampler} L={st.noise_level} steps={st.steps} s={st.guidance}; " if st else ""
    print(f"{what}threshold {found.result.threshold:.4f}; {sum(found.result.timings.values()):.1f} s on "
          f"{found.device}; outputs in {found.out}")


def cmd_synthesize(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.options import given
    from DiffusionAnomalyLib.synthesis.options import SynthesisOptions
    from DiffusionAnomalyLib.synthesis.synthesize import SynthesisRequest, synthesize

    found = synthesize(SynthesisRequest(
        images=tuple(args.input), organ=args.organ, out=args.out, lesion_map=args.lesion_map, bundle=args.bundle,
        mask=args.mask,
        mask_label=args.mask_label, totalseg=args.totalseg, skull_stripped=args.skull_stripped,
        options=SynthesisOptions(**given(args, SynthesisOptions, "synthesize")), overwrite=args.overwrite,
        skip_modality_check=args.skip_modality_check))
    for case, record in zip(found.cases, found.records, strict=True):
        for le in record["lesions"]:
            shift = ", ".join(f"{b:g} -> {a:g}" for b, a in zip(le["before_mean"], le["after_mean"], strict=True))
            print(f"{case.name}: lesion {le['id']} ({le['kind']}, {le['structure']}, {le['volume_ml']:g} ml): "
                  f"mean inside {shift} (target {', '.join(f'{t:g}' for t in le['target_level'])})")
    print(f"wrote {len(found.cases)} case(s) to {found.out} (synthesis.csv; each case: the scan, lesions.nii.gz, "
          "segmentations/, synthesis.json). Synthetic lesions are not real lesions.")
    return 0

def given_settings(args: argparse.Namespace) -> dict:
    """The run settings the command line gives explicitly (an option left out, or an absent flag, is not given)."""
    from DiffusionAnomalyLib.options import given
    from DiffusionAnomalyLib.settings import RunSettings

    return given(args, RunSettings, args.command)


def detect_request(args: argparse.Namespace):
    """The :class:`~DiffusionAnomalyLib.api.DetectRequest` of a ``run`` or ``baseline`` command line."""
    from DiffusionAnomalyLib.api import DetectRequest

    return DetectRequest(images=tuple(args.input), out=args.out, bundle=getattr(args, "bundle", None),
                         organ=args.organ, baseline=args.command == "baseline", mask=args.mask,
                         mask_label=args.mask_label, totalseg=args.totalseg, skull_stripped=args.skull_stripped,
                         settings=given_settings(args), settings_file=getattr(args, "settings", None),
                         overwrite=args.overwrite,
                         overview=not args.no_overview,
                         skip_modality_check=getattr(args, "skip_modality_check", False))


def cmd_job(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.api import detect

    request = detect_request(args)
    with _progress_bar(args.command) as progress:
        found = detect(request, progress=progress)
    _report(found)
    return 0


@contextlib.contextmanager
def _progress_bar(what: str):
    """A progress bar on stderr for a job's stages (only on a terminal: scripts and logs stay clean)."""
    from tqdm import tqdm

    from DiffusionAnomalyLib.progress import overall

    with tqdm(total=100, desc=what, file=sys.stderr, disable=None, leave=False,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}") as bar:
        def progress(stage: str, step: int, total: int) -> None:
            bar.set_description_str(f"{what}: {stage} {step}/{total}")
            bar.update(max(0.0, 100 * overall(stage, step, total) - bar.n))

        yield progress


def cmd_demo(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from DiffusionAnomalyLib.api import DetectRequest, detect
    from DiffusionAnomalyLib.evaluation.metrics import dice, match_lesions
    from DiffusionAnomalyLib.imaging.io import read_volume
    from DiffusionAnomalyLib.imaging.outputs import check_output_dir
    from DiffusionAnomalyLib.synthetic.phantoms import make_phantom, write_phantom

    t0 = time.perf_counter()
    out = Path(args.out)
    check_output_dir(out, resume=True, command="demo")  # its own earlier result is replaced; anything else refused
    from DiffusionAnomalyLib.models.bundle import demo_bundle

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
    masks = {"totalseg": str(case_dir / "segmentations")} if args.organ != "brain" else {"skull_stripped": True}
    settings = {"seed": 0, "device": args.device, **({"precision": args.precision} if args.precision else {})}
    request = DetectRequest(images=tuple(str(case_dir / f"{c}.nii.gz") for c in case.channels), out=str(out / "result"),
                            organ=args.organ, bundle=str(shipped[0].path) if shipped else None, baseline=not shipped,
                            settings=settings if shipped else {}, overwrite=True, **masks)
    result = detect(request).result
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


def dataset_request(args: argparse.Namespace, kind: type, **more):
    """The request of a dataset command (evaluate, sweep, batch) from its arguments."""
    return kind(data=args.data, out=args.out, bundle=args.bundle, organ=args.organ, baseline=args.baseline,
                settings=given_settings(args), overwrite=args.overwrite, **more)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.evaluation.commands import EvaluateRequest, evaluate

    report = evaluate(dataset_request(args, EvaluateRequest, threshold=args.threshold,
                                       postprocessing=not args.no_postprocessing, bootstrap=args.bootstrap,
                                       baseline_beside=not args.no_baseline, insert=args.insert,
                                       insert_method=args.insert_method, insert_bundle=args.insert_bundle,
                                       insert_seed=args.insert_seed))
    if report is not None:
        print(report.markdown)
        for note in report.notes:
            print(f"note: {note}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.evaluation.commands import CalibrationGrid, SweepRequest, sweep
    from DiffusionAnomalyLib.options import given

    res = sweep(dataset_request(args, SweepRequest, **given(args, CalibrationGrid, "sweep"),
                                baseline_beside=not args.no_baseline, allow_weak_classifier=args.allow_weak_classifier,
                                write_bundle=args.write_bundle))
    if res is None:
        return 0
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{'L':>5} {'s':>7} {'reference':>11} {'k':>3} {'median':>6} {'threshold':>10} {'Dice':>7} {'F1':>7}")
    for r in res.grid:
        print(f"{r['noise_level']:>5} {r['guidance']:>7g} {r['reference']:>11} {r['samples']:>3} "
              f"{r['median_filter']:>6} {r['threshold']:>10.4f} {r['dice'] or 0:>7.3f} {r['f1'] or 0:>7.3f}")
    b = res.best
    print(f"best: L = {b['noise_level']}, s = {b['guidance']:g}, reference {b['reference']}, {b['samples']} "
          f"sample(s), median filter {b['median_filter']}, Otsu threshold {b['otsu_threshold']:.4f}, "
          f"mean Dice {b['dice']}; plot in {Path(args.out) / 'sweep' / 'dice_vs_s.png'}")
    print("post-processing at the best point, by threshold (x Otsu), minimum lesion volume (unless the mean score "
          "is >= F x threshold), growth and hybrid weight W (0: the model's map alone):")
    print(f"{'scale':>6} {'threshold':>10} {'ml':>6} {'F':>4} {'grow':>5} {'W':>8} {'found':>9} {'FP/organ':>9} "
          f"{'F1':>7} {'Dice':>7}")
    for r in res.postprocessing:
        print(f"{r['threshold_scale']:>6g} {r['threshold']:>10.4f} {r['min_lesion_ml']:>6g} "
              f"{r.get('floor_contrast', 0):>4g} {r['grow_to']:>5g} {r.get('hybrid', 0):>8.4g} "
              f"{r['found']:>4}/{r['lesions']:<4} {r['fp_per_organ'] or 0:>9.2f} {r['f1'] or 0:>7.3f} "
              f"{r['dice'] or 0:>7.3f}")
    print(f"recommended: threshold {b['threshold']:.4f}, minimum lesion volume {b['min_lesion_ml']:g} ml"
          + (f" unless the mean score is >= {b['floor_contrast']:g} x threshold" if b.get("floor_contrast") else "")
          + f", grow to {b['grow_to']:g} x threshold"
          + (f", hybrid max(model, {b['hybrid']:g} x median baseline)" if b.get("hybrid") else "")
          + f" ({b['objective']})")
    if res.baseline:
        _print_beside(res.baseline)
    if res.bundle:
        print(f"calibrated bundle written to {res.bundle}")
    return 0


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


def cmd_batch(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.errors import EXIT_BAD_INPUT
    from DiffusionAnomalyLib.evaluation.commands import BatchRequest, batch

    res = batch(dataset_request(args, BatchRequest))
    if res is None:
        return 0
    print(f"{res.cases} case(s), {res.cases - len(res.failed)} done; index in {res.index}")
    if res.failed:  # a batch with failed cases is not a complete result: a non-zero exit, naming them
        listed = "; ".join(f"{r['case']}: {r['problem']}" for r in res.failed[:5]) + (
            " ..." if len(res.failed) > 5 else "")
        print(f"error [bad_input]: {len(res.failed)} of {res.cases} case(s) failed ({listed}); the others' results "
              f"are in {args.out}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from DiffusionAnomalyLib.app.diagnostics import demo_case_agreement
    from DiffusionAnomalyLib.evaluation.bench import run_bench, summary_table
    from DiffusionAnomalyLib.imaging.outputs import check_output_file, write_text_atomic

    if args.out:
        check_output_file(args.out, overwrite=args.overwrite, command="bench")
    if args.gpu_check:
        from DiffusionAnomalyLib.app.diagnostics import gpu_check

        return gpu_check(args.out)
    if args.profile:
        from DiffusionAnomalyLib.evaluation.profile import profile_table, run_profile

        report = run_profile(sizes=args.sizes, devices=args.devices, steps=args.steps, methods=args.samplers,
                             guidance=args.guidance_values, rois=args.rois, precisions=tuple(args.precisions))
        if args.out:
            write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
        print(profile_table(report))
        return 0
    report = run_bench(sizes=args.sizes, devices=args.devices, steps=args.steps, repeats=args.repeats,
                       reference=not args.no_reference, methods=args.samplers, guidance=args.guidance_values,
                       rois=args.rois, precisions=tuple(args.precisions), network_time=not args.no_network_time,
                       agreement=demo_case_agreement if args.agreement else None, synthesize=args.synthesize,
                       fast_default=args.fast_default)
    text = json.dumps(report, indent=2)
    if args.out:
        write_text_atomic(args.out, text + "\n")
    print(text)
    print(summary_table(report), file=sys.stderr)  # stdout stays the JSON
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.imaging.outputs import check_name, check_output_dir
    from DiffusionAnomalyLib.options import given

    if args.part != "all":  # a single stage: its --out is new, empty or its own earlier bundle
        check_output_dir(args.out, [args.data, getattr(args, "bundle", None)], overwrite=args.overwrite,
                         resume=args.resume, command="train")
        if getattr(args, "name", None) is not None:
            check_name(args.name, "--name")
        if getattr(args, "version", None) is not None:
            check_name(args.version, "--version")
    if args.part == "all":
        from DiffusionAnomalyLib.training.recipe import TrainAllPlan, train_all

        plan = TrainAllPlan(**given(args, TrainAllPlan, "all"))
        train_all(plan, dry_run=args.dry_run, from_stage=args.from_stage)
        return 0
    import importlib

    module = importlib.import_module(f"DiffusionAnomalyLib.training.{args.part}")
    config = getattr(module, f"{args.part.capitalize()}Training")
    getattr(module, f"train_{args.part}")(config(**given(args, config, args.part)))
    return 0


def cmd_import_bundle(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.models.bundle import default_models_dir, import_bundle, read_meta

    dest = import_bundle(args.path, args.models_dir or default_models_dir(), overwrite=args.overwrite)
    meta = read_meta(dest)
    print(f"imported {meta.name} {meta.version} ({meta.organ}{', DEMO' if meta.demo else ''}) into {dest}")
    return 0


def cmd_pseudo_labels(args: argparse.Namespace) -> int:
    from DiffusionAnomalyLib.imaging.outputs import check_output_file
    from DiffusionAnomalyLib.synthetic.reports import label_reports_csv

    check_output_file(args.out, [args.reports], overwrite=args.overwrite, command="pseudo-labels")
    counts = label_reports_csv(args.reports, args.organ, args.out, args.min_sentences)
    print(f"wrote {args.out}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0
