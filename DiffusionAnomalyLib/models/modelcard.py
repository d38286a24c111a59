"""A bundle's model card (``README.md``) rendered from its ``model.json`` (``scripts/model_card.py`` and
``train all`` write it), so that the card never disagrees with the metadata."""

from __future__ import annotations

from DiffusionAnomalyLib.models.bundle import BundleMeta

LABELS = {
    "description": "What", "cases": "Cases", "seeds": "Phantom seeds", "real_scans": "Real scans",
    "autoencoder": "Autoencoder", "denoiser": "Denoiser", "classifier": "Classifier", "calibration": "Calibration",
    "data": "Data", "settings": "Settings", "dice": "Dice", "pooled_lesion_f1": "Pooled lesion F1",
    "voxel_auroc_in_organ": "Voxel AUROC in the organ", "classifier_auc_t250": "Classifier AUC at t = 250",
    "classifier_auc": "Classifier AUC (validation split)", "fp_per_organ": "False positives per organ",
    "lesions_found": "Lesions found", "median_baseline_same_cases": "Median baseline (the same cases)",
    "paired_wilcoxon": "Paired Wilcoxon test per case",
}


def _label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " ").capitalize())


def _table(d: dict) -> list[str]:
    rows = ["| | |", "|---|---|"]
    rows += [f"| {_label(k)} | {str(v).replace('|', '/')} |" for k, v in d.items()]
    return rows


def render(meta: BundleMeta) -> str:
    rec = meta.recommended
    status = ("**DEMO model, trained on synthetic phantoms only. Research software, not a medical device: not for "
              "diagnosis.**" if meta.demo else "**Research software, not a medical device: not for diagnosis.**")
    lines = [
        f"# {meta.name} {meta.version} — model card",
        "",
        "<!-- generated from model.json by scripts/model_card.py; edit model.json and run it again -->",
        "",
        meta.summary,
        "",
        status,
        "",
        "| | |",
        "|---|---|",
        f"| Organ, modality | {meta.organ}, {meta.modality} |",
        f"| Input channels | {', '.join(meta.channels)} |",
        f"| Spacing of the patches | {meta.preset_overrides.get('spacing_mm', 'the organ preset')} mm |",
        f"| Latent | {meta.latent.get('channels')} channels, {meta.latent.get('shape_zyx')} (z, y, x) |",
        f"| Networks | {', '.join(k for k, v in meta.networks.items() if v)} |",
        "| Recommended settings | " + ", ".join(f"{k} {v}" for k, v in rec.items()) + " |",
        "| Format | model.json format version "
        f"{meta.format_version}, safetensors weights (see docs/model-bundles.md) |",
        "",
        "## Intended use",
        "",
        meta.intended_use,
        "",
        "## Out of scope",
        "",
        meta.out_of_scope_use,
        "",
        "## Training data",
        "",
    ]
    lines += _table(meta.training_data) if isinstance(meta.training_data, dict) else [meta.training_data]
    lines += ["", "## Evaluation", ""]
    lines += _table(meta.evaluation) if meta.evaluation else ["Not evaluated."]
    lines += ["", "## Limitations", "", meta.limitations, "", "## Licence", "",
              f"{meta.licence} (the weights; the software is Apache-2.0, see LICENSE at the repository root).",
              "", "## How to cite", "", meta.citation, ""]
    return "\n".join(lines)
