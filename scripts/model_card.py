"""Write a bundle's model card (``README.md``) from its ``model.json``.

    python scripts/model_card.py Resources/Models/kidney-demo [more bundles ...]   # writes <bundle>/README.md
    python scripts/model_card.py --check Resources/Models/*-demo                    # exit 1 if a card is stale

The card is generated so that it never disagrees with ``model.json``; edit the fields there (see
docs/model-bundles.md) and run this again. The card is not part of the bundle's SHA-256.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from DiffusionAnomalyLib.models.bundle import BundleMeta, read_meta  # noqa: E402

LABELS = {
    "description": "What", "cases": "Cases", "seeds": "Phantom seeds", "real_scans": "Real scans",
    "autoencoder": "Autoencoder", "denoiser": "Denoiser", "classifier": "Classifier", "calibration": "Calibration",
    "data": "Data", "settings": "Settings", "dice": "Dice", "pooled_lesion_f1": "Pooled lesion F1",
    "voxel_auroc_in_organ": "Voxel AUROC in the organ", "classifier_auc_t250": "Classifier AUC at t = 250",
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", nargs="+")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when a card differs")
    args = p.parse_args(argv)
    stale = []
    for b in map(Path, args.bundles):
        text = render(read_meta(b))
        card = b / "README.md"
        if args.check:
            if not card.is_file() or card.read_text() != text:
                stale.append(str(card))
        else:
            card.write_text(text)
            print(f"wrote {card}")
    for c in stale:
        print(f"stale or missing: {c} (run scripts/model_card.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
