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
   (**synthesizer**, only with ``--synthesizer``: ``train synthesizer`` on the training split's healthy and
   unhealthy structures with their lesion maps, into a copy of the calibrated bundle.)
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
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from DiffusionAnomalyLib.detection.presets import get_preset
from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.training.recipe.card import _card, summary_lines
from DiffusionAnomalyLib.training.recipe.estimate import (
    _dry_run_report,
    _fmt_s,
    dry_run_seconds_per_iteration,
    estimate,
    seconds_per_iteration,
)
from DiffusionAnomalyLib.training.recipe.layouts import Prepared, prepare
from DiffusionAnomalyLib.training.recipe.plan import (
    Stages,
    TrainAllPlan,
    active_stages,
    bundle_name,
    check_plan,
    latent_crop,
)

logger = logging.getLogger(__name__)

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
        per_it = dry_run_seconds_per_iteration(resolved, plan.organ, device, plan.precision)
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
            progress(f"[1/{len(active_stages(resolved))}] prepare: reading, checking and splitting the cases")
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
    active = active_stages(resolved)
    todo = [s for s in active[1:] if s not in stages.done]
    est = {}
    if todo:  # every rank times it: MONAI's quantizer all-reduces its statistics in training mode under torchrun
        per_it = seconds_per_iteration(resolved, plan.organ, device, plan.precision)
        est = estimate(resolved, prepared, per_it, len(get_preset(plan.organ).structures), 0.0)
        progress("estimated: " + ", ".join(f"{s} {_fmt_s(est[s])}" for s in todo)
                 + f"; all {_fmt_s(sum(est[s] for s in todo))}")

    def start(stage: str, what: str) -> float:
        k = active.index(stage) + 1
        left = sum(est.get(s, 0.0) for s in active[k - 1:] if s not in stages.done)
        progress(f"[{k}/{len(active)}] {stage}: {what} (estimate {_fmt_s(est.get(stage, float('nan')))}; all that "
                 f"remains {_fmt_s(left)})")
        return time.perf_counter()

    a, dn, cl, cal = (resolved[s] for s in ("autoencoder", "denoiser", "classifier", "calibrate"))
    train_dir = str(prepared.train)

    def every(n: int) -> int:
        return max(1, min(100, n // 4))

    # 2-4. the three networks (each resumes from its checkpoint)
    if not stages.finished("autoencoder", a):
        t0 = start("autoencoder", f"{a['iterations']} iterations")
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
        t0 = start("denoiser", f"{dn['iterations']} iterations on healthy structures")
        from DiffusionAnomalyLib.training.denoiser import DenoiserTraining, train_denoiser

        train_denoiser(DenoiserTraining(train_dir, str(work / "autoencoder"), str(work / "denoiser"),
                                        network=dn["network"], iterations=dn["iterations"], batch_size=dn["batch"],
                                        val_every=every(dn["iterations"]), seed=plan.seed, device=plan.device,
                                        precision=plan.precision, resume=True,
                                        latent_crop=latent_crop(resolved, plan.organ)))
        finish("denoiser", dn, t0)
    if not stages.finished("classifier", cl):
        t0 = start("classifier", f"{cl['iterations']} iterations")
        from DiffusionAnomalyLib.training.classifier import ClassifierTraining, train_classifier

        classifier_data = train_dir
        if cl.get("synthetic_unhealthy"):  # dataset padding: the training split plus synthesised unhealthy structures
            from DiffusionAnomalyLib.training.recipe.padding import padded_training_set

            padded = work / "padded"
            if main:
                padded_training_set(prepared.train, padded, plan.organ, cl["synthetic_unhealthy"], plan.seed + 77_000,
                                    progress)
            while not (padded / "labels.csv").is_file():  # (other ranks wait for rank 0's)
                time.sleep(1.0)
            classifier_data = str(padded)
        train_classifier(ClassifierTraining(classifier_data, str(work / "denoiser"), str(work / "classifier"),
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
            t0 = start("calibrate", f"sweep on the {len(prepared.cases['validation'])} validation cases")
            _calibrate(work, prepared, cal, plan.device, plan.precision, main)
            finish("calibrate", cal, t0)
        sweep = json.loads((work / "sweep" / "sweep" / "sweep.json").read_text())
        source = work / "calibrated"
    else:
        logger.warning("no validation cases: the bundle is not calibrated (the denoiser's default settings)")
        source = work / "classifier"
    if "synthesizer" in resolved and not stages.finished("synthesizer", resolved["synthesizer"]):
        syn = resolved["synthesizer"]
        t0 = start("synthesizer", f"{syn['iterations']} iterations on the training split's lesion maps")
        from DiffusionAnomalyLib.training.configs import SynthesizerTraining
        from DiffusionAnomalyLib.training.synthesizer import train_synthesizer

        train_synthesizer(SynthesizerTraining(train_dir, str(source), str(work / "synthesizer"),
                                              network=syn["network"], iterations=syn["iterations"],
                                              batch_size=syn["batch"], val_every=every(syn["iterations"]),
                                              seed=plan.seed, device=plan.device, precision=plan.precision,
                                              resume=True))
        finish("synthesizer", syn, t0)
    if "synthesizer" in resolved:
        source = work / "synthesizer"  # the calibrated bundle with the synthesizer beside its networks
    if not main:
        return None
    # 6. the bundle with its model card
    with_synthesizer = "synthesizer" in resolved
    if not stages.finished("bundle", resolved["bundle"]) or not (out / "model.json").is_file() or \
            stages.done["bundle"].get("synthesizer", False) != with_synthesizer:
        t0 = start("bundle", f"{out} with its model card")
        meta = read_meta(source)
        meta.name, meta.version, meta.demo = bundle_name(plan), plan.version, plan.demo  # --from-stage bundle
        meta.record(f"train all: {meta.name} {meta.version} ({'calibrated' if sweep else 'not calibrated'}, "
                    f"{plan.preset} preset) with its model card")
        earlier = (stages.done.get("bundle") or {}).get("files", [])  # the files of the bundle this one replaces
        # for the card's table (its time is negligible); "synthesizer" unknown until written, so a crash redoes it
        stages.record("bundle", resolved["bundle"], 0.0, synthesizer=None, files=earlier)
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
            written = sorted(f.name for f in stage.iterdir())
        for name in set(earlier) - set(written):  # the earlier bundle's own files this one has not (e.g. a
            (out / name).unlink(missing_ok=True)  # synthesizer no longer asked for); nothing else in --out
        stages.record("bundle", resolved["bundle"], time.perf_counter() - t0, synthesizer=with_synthesizer,
                      files=written)
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
    from DiffusionAnomalyLib.evaluation.commands import SweepRequest, sweep

    if main and (work / "calibrated").exists():
        shutil.rmtree(work / "calibrated")
    sweep(SweepRequest(
        data=str(prepared.validation), out=str(work / "sweep"), bundle=str(work / "classifier"),
        settings={"sampler": cal["sampler"], "steps": cal["steps"], "device": device, "precision": precision},
        noise_levels=tuple(cal["noise_levels"]), guidance_values=tuple(cal["guidance"]),
        threshold_scales=tuple(cal["threshold_scales"]), min_lesion_ml_values=tuple(cal["min_lesion_ml_values"]),
        grow_to_values=tuple(cal["grow_to_values"]), max_fp_per_organ=cal["max_fp_per_organ"],
        objective=cal.get("objective", "lesions"), hybrid_scales=tuple(cal.get("hybrid_scales") or ()),
        floor_contrast_values=tuple(cal.get("floor_contrast_values") or ()),
        **{key: tuple(cal.get(key) or ()) for key in ("reference_values", "samples_values", "median_filter_values")},
        write_bundle=str(work / "calibrated"), shipped_manifest=False))
