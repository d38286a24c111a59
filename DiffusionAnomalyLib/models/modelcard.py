"""A bundle's model card (``README.md``) rendered from its ``model.json`` (``scripts/model_card.py`` and
``train all`` write it), so that the card never disagrees with the metadata. It opens with YAML front matter
in the keys of Hugging Face model cards (``license``, ``library_name``, ``tags``, ``pipeline_tag``), so that a
model hub lists the bundle correctly; the values are JSON, which YAML reads as they are."""

from __future__ import annotations

import json
import re

from DiffusionAnomalyLib.models.bundle import BundleMeta

#: Licence identifiers a model hub knows (Hugging Face's, lower-case SPDX); any other licence is "other".
HUB_LICENSES = ("apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0",
                "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-nd-4.0", "gpl-3.0", "lgpl-3.0", "mpl-2.0", "openrail")


def front_matter(meta: BundleMeta) -> dict[str, object]:
    """The card's metadata for a model hub (Hugging Face model-card keys)."""
    licence = meta.license.strip().lower()
    found: dict[str, object] = {"license": licence if licence in HUB_LICENSES else "other"}
    if found["license"] == "other":
        found["license_name"] = re.sub(r"[^a-z0-9]+", "-", licence).strip("-")[:48] or "unspecified"
    found["library_name"] = "diffusion-anomaly"
    found["pipeline_tag"] = "image-segmentation"
    found["tags"] = ["medical-imaging", "anomaly-detection", "latent-diffusion", "3d", meta.organ,
                     {"CT": "ct", "MR": "mri"}.get(meta.modality, meta.modality.lower()),
                     *(["demo", "synthetic-data"] if meta.demo else [])]
    return found

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


def _synthesizer_section(meta: BundleMeta) -> list[str]:
    """The lesion synthesizer's section (bundles that have one: ``train synthesizer``, ``train all --synthesizer``)."""
    if not (meta.networks or {}).get("synthesizer"):
        return []
    st = (meta.extra or {}).get("synthesizer_training", {})
    best, first = st.get("best_val_l1"), st.get("first_val_l1")
    rows = {"use": "synthesize --method diffusion only (lesions inpainted from a lesion map); detection never loads it",
            "network": f"SPADE latent denoiser ({json.dumps(meta.networks['synthesizer'])}), conditioned on the "
                       f"lesion share per latent voxel; map dropout {st.get('map_dropout')} (classifier-free guidance)",
            "training": f"{st.get('iterations')} iterations on {st.get('train_latents')} latents "
                        f"({st.get('train_latents_with_lesions')} with lesions), {st.get('val_latents')} validating",
            "validation L1 on the noise": f"{'n/a' if first is None else f'{first:.4f}'} first, "
                                          f"{'n/a' if best is None else f'{best:.4f}'} best",
            "realism": "not part of this card: see docs/evaluation.md (classifier AUROC, Frechet distance)"}
    return ["", "## Lesion synthesizer", "", *_table(rows)]


def render(meta: BundleMeta) -> str:
    rec = meta.recommended
    status = ("**DEMO model, trained on synthetic phantoms only. Research software, not a medical device: not for "
              "diagnosis.**" if meta.demo else "**Research software, not a medical device: not for diagnosis.**")
    spacing = meta.organ_preset.get("spacing_mm") or meta.preset_overrides.get("spacing_mm", "the organ preset")
    lines = ["---", *(f"{k}: {json.dumps(v)}" for k, v in front_matter(meta).items()), "---", "",
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
        f"| Spacing of the patches | {spacing} mm |",
        f"| Latent | {meta.latent.get('channels')} channels, {meta.latent.get('shape_zyx')} (z, y, x) |",
        f"| Networks | {', '.join(k for k, v in meta.networks.items() if v)} |",
        "| Recommended settings | " + ", ".join(f"{k} {v}" for k, v in rec.items()) + " |",
        "| Format | model.json format version "
        f"{meta.format_version}, safetensors weights (see docs/model-bundles.md) |",
        *([f"| Written by | {', '.join(f'{k} {v}' for k, v in meta.software.items())} |"] if meta.software else []),
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
    lines += _synthesizer_section(meta)
    if meta.changelog:
        lines += ["", "## Changelog", "", "| version | date | change |", "|---|---|---|"]
        lines += [f"| {e['version']} | {e['date']} | {e['change'].replace('|', '/')} |" for e in meta.changelog]
    lines += ["", "## Limitations", "", meta.limitations, "", "## Licence", "",
              f"{meta.license} (the weights; the software is Apache-2.0, see LICENSE at the repository root).",
              "", "## How to cite", "", meta.citation, ""]
    return "\n".join(lines)
