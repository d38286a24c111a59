"""``train all``'s stage 6 in words: the model card fields and the summary (``training.md``), filled in from
what was done."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from DiffusionAnomalyLib.evaluation.report import size_recall_text
from DiffusionAnomalyLib.training.recipe.estimate import _fmt_s
from DiffusionAnomalyLib.training.recipe.layouts import Prepared
from DiffusionAnomalyLib.training.recipe.plan import STAGES, Stages, TrainAllPlan

logger = logging.getLogger(__name__)


def _windows(meta) -> str:
    """The card's note on the denoiser's latent training windows (``--preset tiny-fine``); empty for whole latents."""
    crop = meta.extra.get("denoiser_training", {}).get("latent_crop")
    return f", on {' x '.join(str(c) for c in crop)} latent windows" if crop else ""


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


def data_kind(plan: TrainAllPlan, prepared: Prepared) -> str:
    """What the card may say the training scans are: ``synthetic`` when every case is a phantom of
    ``diffusion-anomaly phantom`` or the user said so (``--synthetic-data``), ``real`` only when the user said so
    (``--real-data``), else ``unknown`` (a folder in the phantom layout may hold anything)."""
    if _all_synthetic(prepared):
        if plan.real_data:
            logger.warning("--real-data: every case is a phantom of diffusion-anomaly phantom; the card says synthetic")
        return "synthetic"
    return {None: "unknown", True: "real", False: "synthetic"}[plan.real_data]


def _card(plan: TrainAllPlan, resolved: dict, prepared: Prepared, meta, stages: Stages, sweep: dict | None,
          auc: dict) -> None:
    """Fill the model card fields of ``meta`` from what was done."""
    data_name = Path(plan.data).resolve().name
    counts = prepared.counts
    synthetic = _all_synthetic(prepared)  # the project's own phantoms
    kind_of_data = data_kind(plan, prepared)
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
        "real_scans": {"real": n_cases, "synthetic": 0}.get(
            kind_of_data, "unknown (not declared: train all --real-data or --synthetic-data)"),
        "split": prepared.split_rule,
        "autoencoder": f"{resolved['autoencoder']['network']}, {resolved['autoencoder']['iterations']} iterations at "
                       f"{resolved['autoencoder']['spacing']:g} mm, healthy and unhealthy structures; GAN losses "
                       f"{ae_extra.get('gan', '?')}; {_precision(meta, 'autoencoder')}",
        "denoiser": f"{resolved['denoiser']['network']}, {resolved['denoiser']['iterations']} iterations on healthy "
                    f"structures{_windows(meta)}; {_precision(meta, 'denoiser')}",
        "classifier": f"{resolved['classifier']['iterations']} iterations on healthy and unhealthy structures"
                      + (f" and {resolved['classifier']['synthetic_unhealthy']} synthesised unhealthy ones (the "
                         "training split's lesions pasted into its healthy structures)"
                         if resolved["classifier"].get("synthetic_unhealthy") else "")
                      + f"; {_precision(meta, 'classifier')}",
    }
    ev = {"data": f"the validation split: {len(prepared.cases['validation'])} cases training never saw; the operating "
                  "point was chosen on them, so these figures are optimistic: evaluate on held-out cases",
          "classifier_auc": ", ".join(f"t = {k}: {'n/a' if v is None else f'{v:.3f}'}" for k, v in auc.items()),
          "real_scans": {"real": f"the {len(prepared.cases['validation'])} validation cases above",
                         "synthetic": "not evaluated: synthetic " + ("phantoms" if synthetic else "data") + " only",
                         }.get(kind_of_data, "unknown: the data were not declared real or synthetic")}
    if sweep:
        b = sweep["best"]
        pp = b["postprocessed"]
        ev["settings"] = (f"{b['sampler']} L = {b['noise_level']}, s = {b['guidance']:g}, {b['steps']} steps, "
                          f"threshold {b['threshold']:g}, lesions >= {b['min_lesion_ml']:g} ml, grow to "
                          f"{b['grow_to']:g}{_hybrid_text(b)} ({b['objective']})")
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
            if by_size := size_recall_text(sweep["baseline"]):
                ev["found_by_size_beside_the_baseline"] = by_size
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
                     f"{b['threshold']:g}, >= {b['min_lesion_ml']:g} ml, grow to {b['grow_to']:g}{_hybrid_text(b)}: "
                     f"{pp['found']} of "
                     f"{pp['lesions']} lesions found, {pp['fp_per_organ']} false positives per organ, pooled F1 "
                     f"{pp['f1']}, Dice {pp['dice']}.")
        if "baseline" in sweep:
            bs, pr = sweep["baseline"]["baseline"], sweep["baseline"]["paired"]
            lines.append(f"Median baseline on the same cases: {bs['found']} of {bs['lesions']} found, "
                         f"{bs['fp_per_organ']} false positives per organ, pooled F1 {bs['pooled_f1']}, Dice "
                         f"{bs['dice']}; paired Wilcoxon per case: Dice {pr['dice']['verdict']}, lesion F1 "
                         f"{pr['f1']['verdict']}.")
            if by_size := size_recall_text(sweep["baseline"]):
                lines.append(f"Found by size: {by_size}.")
    for w in prepared.warnings:
        lines.append(f"Warning: {w}.")
    return lines


def _hybrid_text(best: dict) -> str:
    """", hybrid max(model, W x median baseline)" when the calibration chose the hybrid map, else ""."""
    return f", hybrid max(model, {best['hybrid']:g} x median baseline)" if best.get("hybrid") else ""
