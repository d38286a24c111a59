"""The ``diffusion-anomaly`` command line."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from DiffusionAnomalyLib import __version__
from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.settings import BENCH_SIZES, LESION_SIZES, ORGANS, PRECISIONS, options

PRECISION_HELP = dict(options())["precision"].help  # for demo, which is not a detection command


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


def request_from_argv(argv: Sequence[str]):
    """The request a ``run`` or ``baseline`` command line stands for (scripts and tests that start the worker)."""
    from DiffusionAnomalyLib.app.commands import detect_request

    args = build_parser().parse_args(list(map(str, argv)))
    if args.command not in ("run", "baseline"):
        raise InputError(f"only run and baseline make a detection request, not {args.command!r}")
    return detect_request(args)


def add_skip_modality_check(parser: argparse.ArgumentParser) -> None:
    """``--skip-modality-check`` of ``run`` and ``synthesize`` (declared once)."""
    parser.add_argument("--skip-modality-check", action="store_true",
                        help="go on even if the intensities do not look like the organ's modality (CT in HU vs MRI)")


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

def add_run_settings(parser: argparse.ArgumentParser, command: str, settings: type | None = None) -> None:
    """The run settings ``command`` takes, from their declarations in ``settings.RunSettings`` (help, metavar,
    choices, a parser that checks the declared range); every one defaults to None, "not given", which
    ``RunSettings.resolve`` turns into the bundle's value or the default."""
    from DiffusionAnomalyLib.options import add_arguments
    from DiffusionAnomalyLib.settings import RunSettings

    add_arguments(parser, settings or RunSettings, command, given_only=True)


def add_mask_sources(parser: argparse.ArgumentParser) -> None:
    """The organ-mask options of ``baseline`` and ``synthesize``: one of a mask file, TotalSegmentator's output or
    skull-stripped, and the mask file's label."""
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--mask", help="organ mask file (nonzero = organ, or --mask-label)")
    src.add_argument("--totalseg", help="TotalSegmentator output: multilabel file or folder of per-organ files")
    src.add_argument("--skull-stripped", action="store_true",
                     help="brain: the scan is skull-stripped; the brain mask is its nonzero voxels")
    parser.add_argument("--mask-label", type=int, default=None, help="label value of the organ in --mask")


def _training_config(part: str) -> type:
    """The config class of one training stage (its options are declared on its fields; torch-free)."""
    from DiffusionAnomalyLib.training import configs

    return getattr(configs, f"{part.capitalize()}Training")


def build_parser(settings: type | None = None) -> argparse.ArgumentParser:
    """The command line's parser; ``settings``: the run-settings class its run options come from (default
    ``settings.RunSettings``)."""
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
    ph.add_argument("--lesion-sizes", choices=list(LESION_SIZES), default="strata",
                    help="kidney, liver: the lesion diameter mix: strata (default: each TNM stratum equally often, "
                         "a quarter up to 2 cm) or incidental (the sizes of imaging-detected renal masses under "
                         "surveillance, median 2.0 cm: about half up to 2 cm; cases <organ>[-var]-inc-<seed>)")
    ph.set_defaults(func="phantom")

    bl = sub.add_parser("baseline", help="detect with the non-neural baseline reconstruction")
    bl.add_argument("--organ", required=True, choices=list(ORGANS))
    bl.add_argument("--input", required=True, nargs="+", help="image file(s) or DICOM folder; brain: t1n t1c t2w t2f")
    add_mask_sources(bl)
    add_run_settings(bl, "baseline", settings)
    bl.add_argument("--out", required=True, help="output folder (new or empty; see --overwrite)")
    bl.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    bl.add_argument("--no-overview", action="store_true", help=NO_OVERVIEW_HELP)
    bl.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    bl.set_defaults(func="job")

    from DiffusionAnomalyLib.options import add_arguments
    from DiffusionAnomalyLib.synthesis.options import SynthesisOptions

    sy = sub.add_parser("synthesize", help="insert a lesion into a scan, with its label (exact truth)",
                        description="Inserts a lesion (a lesion map, or a shape drawn inside the organ) into a scan "
                                    "and writes each variant as a case folder of the phantom layout (the scan, "
                                    "lesions.nii.gz, segmentations/, synthesis.json), which evaluate and run take as "
                                    "they are. Outside the blended region every voxel is the input's. Synthetic "
                                    "lesions are not real lesions. See docs/synthesis.md.")
    sy.add_argument("--organ", required=True, choices=list(ORGANS))
    sy.add_argument("--input", required=True, nargs="+", help="image file(s) or DICOM folder; brain: t1n t1c t2w t2f")
    add_mask_sources(sy)
    sy.add_argument("--lesion-map", default=None,
                    help="the lesion's region: a label file on the scan's grid (nonzero = lesion; each connected "
                         "region one lesion, inside the organ); instead of --shape")
    sy.add_argument("--bundle", default=None, help="--method diffusion: a model bundle with a lesion synthesizer "
                                                   "(train synthesizer)")
    add_arguments(sy, SynthesisOptions, "synthesize")
    add_skip_modality_check(sy)
    sy.add_argument("--out", required=True, help="output folder (new or empty; see --overwrite)")
    sy.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    sy.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    sy.set_defaults(func="synthesize")

    tr = sub.add_parser("train", help="train a bundle: every stage at once (all), or one part",
                        description="Train a model bundle on a dataset folder. `train all` goes from the dataset to a "
                                    "calibrated bundle with its model card in one restartable command; the single "
                                    "parts (autoencoder -> denoiser -> classifier, each extending the previous "
                                    "bundle) are its stages. Run under torchrun for several processes/GPUs "
                                    "(docs/training.md).")
    tparts = tr.add_subparsers(dest="part", metavar="PART", required=True)
    from DiffusionAnomalyLib.options import add_arguments

    for name, help_text in (("autoencoder", "the VQ-GAN autoencoder (first stage; writes a new bundle)"),
                            ("denoiser", "the latent denoiser on healthy structures (extends --bundle)"),
                            ("classifier", "the noisy-latent classifier for guidance (extends --bundle)"),
                            ("synthesizer", "the lesion synthesizer, conditioned on lesion maps, for synthesize "
                                            "--method diffusion (extends --bundle; optional)")):
        tp = tparts.add_parser(name, formatter_class=DefaultsFormatter, help=help_text)
        add_arguments(tp, _training_config(name), name)  # the stage's config: every option declared there
        tp.add_argument("--overwrite", action="store_true",
                        help="replace an earlier bundle in --out (a folder holding anything else is refused)")
        tp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)

    tall = tparts.add_parser(
        "all", formatter_class=DefaultsFormatter,
        help="dataset folder -> calibrated bundle with its model card, in one restartable command",
        description="From a dataset folder (phantom, KiTS, BraTS or LiTS layout; split folders DATA/<split>/<case>/; "
                    "docs/training.md) to a calibrated bundle: prepare (organ masks, labels, a deterministic train / "
                    "validation split), autoencoder, denoiser (healthy structures), classifier, calibration sweep on "
                    "the validation split only (the median baseline beside), the bundle with its model card. A "
                    "rerun resumes where it stopped and trains nothing when all is done.")
    from DiffusionAnomalyLib.training.recipe import STAGES, TrainAllPlan

    add_arguments(tall, TrainAllPlan, "all")  # the plan: every option declared on its fields
    tall.add_argument("--dry-run", action="store_true",
                      help="check the data (cases and structures per label and split, unusable rows and cases named) "
                           "and estimate each stage's time; train nothing")
    tall.add_argument("--from-stage", choices=list(STAGES), default=None,
                      help="redo this stage and the ones after it (default: resume; finished stages are kept)")
    tall.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    tr.set_defaults(func="train")

    pl = sub.add_parser("pseudo-labels", help="healthy/unhealthy/excluded/unknown labels from radiology reports")
    pl.add_argument("--reports", required=True, help="CSV with columns case,report")
    pl.add_argument("--organ", required=True, choices=list(ORGANS))
    pl.add_argument("--out", required=True, help="output labels CSV (case,structure,side,label,evidence)")
    pl.add_argument("--min-sentences", type=_int_in(0, 10_000, "--min-sentences"), default=10,
                    help="shorter reports are labelled unknown")
    pl.add_argument("--overwrite", action="store_true",
                    help="replace an earlier pseudo-labels CSV at --out (any other file there is refused)")
    pl.set_defaults(func="pseudo_labels")

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
    ib.set_defaults(func="import_bundle")

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
    add_run_settings(ru, "run", settings)
    add_skip_modality_check(ru)
    ru.add_argument("--settings", metavar="FILE", default=None,
                    help="take every run setting from FILE: the run.json of an earlier run (replays it) or a "
                         "settings JSON; options given explicitly override it")
    ru.add_argument("--out", required=True, help="output folder (new or empty; see --overwrite)")
    ru.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    ru.add_argument("--no-overview", action="store_true", help=NO_OVERVIEW_HELP)
    ru.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    ru.set_defaults(func="job")

    def dataset_parser(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_text, description=description)
        sp.add_argument("--data", required=True, help="dataset folder, one sub-folder per case (phantom, KiTS or "
                                                      "BraTS layout; see README)")
        model = sp.add_mutually_exclusive_group(required=True)
        model.add_argument("--bundle", help="model bundle folder or .zip")
        model.add_argument("--baseline", action="store_true", help="the non-neural median baseline (needs --organ)")
        sp.add_argument("--organ", choices=list(ORGANS), help="with --baseline")
        add_run_settings(sp, name, settings)
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
    ev.add_argument("--insert", type=_int_in(0, 1000, "--insert"), default=0, metavar="N",
                    help="the cases are healthy scans with organ masks: insert N synthetic lesions into each "
                         "(synthesize; OUT/inserted) and score those (docs/synthesis.md)")
    ev.add_argument("--insert-method", choices=["paste", "diffusion"], default="paste",
                    help="with --insert: how the lesions are made")
    ev.add_argument("--insert-bundle", default=None,
                    help="with --insert-method diffusion: the bundle with the lesion synthesizer (default: --bundle)")
    ev.add_argument("--insert-seed", type=seed_arg, default=0, help="with --insert: the first variant's seed")
    ev.set_defaults(func="evaluate")

    sw = dataset_parser("sweep", "grid search over L and s (as in the kidney thesis §5.2); can calibrate a copy of "
                        "the bundle",
                        "For each L and s: maps (cached), one global Otsu threshold, mean Dice without "
                        "post-processing. Best = highest mean Dice. Then, there, the operating point: threshold "
                        "(Otsu x --threshold-scales) and minimum lesion volume, by pooled lesion F1 or under "
                        "--max-fp-per-organ. Writes OUT/sweep/{sweep.csv,sweep.json,dice_vs_s.png}.")
    from DiffusionAnomalyLib.evaluation.commands import CalibrationGrid
    from DiffusionAnomalyLib.options import add_arguments

    add_arguments(sw, CalibrationGrid, "sweep")
    sw.add_argument("--no-baseline", action="store_true",
                    help="do not run the non-neural median baseline on the same cases (by default it runs and the "
                         "report puts it beside the recommended operating point, with a paired Wilcoxon test)")
    sw.add_argument("--allow-weak-classifier", action="store_true",
                    help="sweep s > 0 even when the bundle's recorded classifier AUC is near chance (below 0.7; by "
                         "default only s = 0 is tried then)")
    sw.add_argument("--write-bundle", help="write a copy of the bundle calibrated with the best L, s, threshold and "
                                           "minimum lesion volume")
    sw.set_defaults(func="sweep")

    ba = dataset_parser("batch", "run detection on every case of a dataset folder (full outputs per case)",
                        "Writes OUT/<case>/ as `run` does, plus OUT/index.csv; finished cases are skipped. Shard "
                        "with torchrun --nproc_per_node N -m DiffusionAnomalyLib.app.cli batch ...")
    ba.set_defaults(func="batch")

    be = sub.add_parser("bench", help="speed and memory of the samplers (JSON)",
                        description="Times the sampler with random weights at named model sizes (demo, the "
                                    "4 mm latent of tiny-fine, thesis kidney): DDPM and DDIM, with and without "
                                    "guidance, 1 and 2 ROIs per batch, on CPU and CUDA when present, against a "
                                    "plain loop on MONAI's DDIM scheduler.")
    be.add_argument("--sizes", nargs="+", default=["demo", "thesis-kidney"], choices=list(BENCH_SIZES),
                    help="demo: the demo bundles' tiny networks (latent 4 x 16 x 12 x 12); tiny-fine: train all "
                         "--preset tiny-fine's 4 mm latent (4 x 32 x 24 x 24, the tiny-3level denoiser); "
                         "thesis-kidney: the kidney thesis's networks (8 x 32 x 24 x 24)")
    be.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    be.add_argument("--steps", type=int, default=50)
    be.add_argument("--repeats", type=int, default=1)
    be.add_argument("--no-reference", action="store_true", help="skip the MONAI reference loop")
    be.add_argument("--samplers", nargs="+", default=["ddpm", "ddim"], choices=["ddpm", "ddim", "dpmpp", "dpmpp-sde"])
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
    be.add_argument("--fast-default", action="store_true",
                    help="per size, also time the fast default (DPM-Solver++ 20 steps, precision auto: the fewest "
                         "steps that agreed with DDIM-50, docs/performance.md) at the largest --guidance-values and "
                         "--rois, with its speedup over the first precision's DDIM row")
    be.add_argument("--synthesize", action="store_true",
                    help="also time one lesion of synthesize --method diffusion (one kidney ROI, tiny presets, 50 "
                         "steps, 2 resampling jumps, map guidance 1), per device and precision")
    be.add_argument("--profile", action="store_true",
                    help="instead of timing, split one guided case per size (the first of --samplers, the largest "
                         "--guidance-values and --rois, at --steps and each of --precisions) into op classes with "
                         "torch.profiler: prints a Markdown table (self CPU seconds, share, calls); the shares, not "
                         "the seconds, are the point, so a few --steps suffice")
    be.add_argument("--gpu-check", action="store_true",
                    help="the GPU check (scripts/gpu_check.sh): demo and thesis sizes in bf16 on CUDA, peak GPU "
                         "memory, a provoked out-of-memory run (exit 4) and the agreement check; exit 0 and a "
                         "'skipped' line without CUDA")
    be.add_argument("--out", help="also write the JSON here (a new file, or an earlier bench report with "
                                  "--overwrite)")
    be.add_argument("--overwrite", action="store_true", help="replace an earlier bench report at --out")
    be.set_defaults(func="bench")

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
    de.set_defaults(func="demo")
    for command in sub.choices.values():  # every command's --help shows its defaults
        command.formatter_class = DefaultsFormatter
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure ends with its documented exit code and one line on stderr (the traceback
    too with ``--debug``); SIGINT and SIGTERM cancel with exit 5 after the outputs' staging is cleaned up."""
    from DiffusionAnomalyLib import logs
    from DiffusionAnomalyLib.errors import classify, raise_cancelled

    parser = build_parser()
    args = parser.parse_args(argv)  # an option outside its declared range: SystemExit 2, the reason on stderr
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
            from DiffusionAnomalyLib.app import commands

            return getattr(commands, f"cmd_{args.func}")(args)
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
