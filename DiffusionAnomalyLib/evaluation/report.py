"""``evaluate``'s report: the model beside the median baseline (paired Wilcoxon tests per case) and the files
written into ``OUT/report/``: ``per_case.csv``, ``reference_lesions.csv``, ``summary.json``, ``summary.md`` and
the plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from DiffusionAnomalyLib.detection.anomaly import size_class_name
from DiffusionAnomalyLib.evaluation.evaluate import NEAR_MISS_IOU, CaseScore, _r
from DiffusionAnomalyLib.evaluation.funnel import funnel_markdown
from DiffusionAnomalyLib.evaluation.metrics import wilcoxon_noninferiority
from DiffusionAnomalyLib.imaging.outputs import atomic_output_dir

PAIRED_ALPHA = 0.05


def _paired_test(model: list[float], baseline: list[float]) -> dict:
    """Paired per-case figures (pairs with a NaN dropped): means, wins, and the one-sided Wilcoxon signed-rank p-value
    of each direction (:func:`~.metrics.wilcoxon_noninferiority` with margin 0); p is None when every pair ties."""
    pairs = [(a, b) for a, b in zip(model, baseline, strict=True) if not (math.isnan(a) or math.isnan(b))]
    a = np.array([p[0] for p in pairs], float)
    b = np.array([p[1] for p in pairs], float)
    out = {"n": len(pairs), "model_mean": _r(float(a.mean())) if pairs else None,
           "baseline_mean": _r(float(b.mean())) if pairs else None,
           "mean_difference": _r(float((a - b).mean())) if pairs else None,
           "model_better": int((a > b).sum()), "baseline_better": int((a < b).sum()), "ties": int((a == b).sum()),
           "p_model_better": None, "p_baseline_better": None}
    if pairs and (a != b).any():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small samples: SciPy notes the normal approximation
            out["p_model_better"] = _r(wilcoxon_noninferiority(a, b)[1])
            out["p_baseline_better"] = _r(wilcoxon_noninferiority(b, a)[1])
    p_m, p_b = out["p_model_better"], out["p_baseline_better"]
    out["verdict"] = ("model better" if p_m is not None and p_m < PAIRED_ALPHA else
                      "baseline better" if p_b is not None and p_b < PAIRED_ALPHA else "no significant difference")
    return out


def compare_with_baseline(model: list[CaseScore], baseline: list[CaseScore], summary: dict,
                          baseline_summary: dict) -> dict:
    """The model beside the baseline on the cases both scored: both summaries' headline figures and the paired
    Wilcoxon signed-rank test on per-case Dice (cases with lesions) and per-case lesion F1."""
    by_case = {s.case: s for s in baseline}
    common = [s for s in model if s.case in by_case]
    other = [by_case[s.case] for s in common]

    def headline(summ: dict) -> dict:
        d = summ["lesion_detection"]
        return {"dice": summ["dice"]["mean"], "f1_per_case": summ["f1"]["mean"], "found": d["tp"],
                "lesions": d["tp"] + d["fn"], "recall": d["recall"], "false_positives": d["fp"],
                "fp_per_organ": summ["fp_per_organ"]["mean"], "pooled_f1": d["f1"],
                "voxel_auroc": summ["voxel_auroc"]["mean"], "threshold": summ.get("threshold"),
                "by_size": {k: [v["found"], v["lesions"]] for k, v in (summ.get("recall_by_size") or {}).items()}}

    return {"cases": len(common), "model": headline(summary), "baseline": headline(baseline_summary),
            "paired": {"dice": _paired_test([s.dice for s in common], [s.dice for s in other]),
                       "f1": _paired_test([s.f1 for s in common], [s.f1 for s in other])}}


def _by_size(comparison: dict) -> list[tuple[str, str, str | None]]:
    """Per size class of the model's: (class, "found of n" for the model, the same for the baseline or None)."""
    base = comparison["baseline"].get("by_size") or {}
    return [(name, f"{found} of {n}", f"{base[name][0]} of {base[name][1]}" if name in base else None)
            for name, (found, n) in (comparison["model"].get("by_size") or {}).items()]


def size_recall_text(comparison: dict) -> str:
    """Per size class, "<=2 cm: model 3 of 10, baseline 7 of 10" (the cards' and train all's line)."""
    return "; ".join(f"{name}: model {m}" + (f", baseline {b}" if b else "") for name, m, b in _by_size(comparison))


def comparison_markdown(comparison: dict, model_name: str = "model", other: str = "median baseline",
                        title: str = "Beside the non-neural baseline") -> list[str]:
    """The summary.md section that puts the model and the baseline (or ``other``) side by side, with the paired
    tests."""
    m, b = comparison["model"], comparison["baseline"]
    m_word, o_word = ("model", "baseline") if other == "median baseline" else (model_name, other)
    lines = ["", f"## {title} ({comparison['cases']} cases scored by both)", "",
             f"| metric | {model_name} | {other} |", "|---|---|---|"]
    for key, name in (("dice", "mean Dice (cases with lesions)"), ("f1_per_case", "mean lesion F1 per case"),
                      ("pooled_f1", "pooled lesion F1"), ("fp_per_organ", "false positives per organ"),
                      ("voxel_auroc", "voxel AUROC in the organ")):
        lines.append(f"| {name} | {_fmt(m[key])} | {_fmt(b[key])} |")
    lines.append(f"| lesions found | {m['found']} of {m['lesions']} | {b['found']} of {b['lesions']} |")
    lines += [f"| lesions found, {name} | {mf} | {bf or 'n/a'} |" for name, mf, bf in _by_size(comparison)]
    lines += ["", "Paired Wilcoxon signed-rank test per case (one-sided, each direction):", "",
              f"| per-case figure | pairs | mean difference ({m_word} - {o_word}) | {m_word} better / {o_word} "
              f"better / ties | p ({m_word} better) | p ({o_word} better) | verdict (p < 0.05) |",
              "|---|---|---|---|---|---|---|"]
    for key, name in (("dice", "Dice"), ("f1", "lesion F1")):
        t = comparison["paired"][key]
        verdict = t["verdict"] if other == "median baseline" else t["verdict"].replace(
            "model better", f"{model_name} better").replace("baseline better", f"{other} better")
        lines.append(f"| {name} | {t['n']} | {_fmt(t['mean_difference'])} | {t['model_better']} / "
                     f"{t['baseline_better']} / {t['ties']} | {_fmt(t['p_model_better'])} | "
                     f"{_fmt(t['p_baseline_better'])} | {verdict} |")
    return lines


def write_report(out: Path, scores: list[CaseScore], summary: dict, problems: dict[str, str], settings: dict,
                 baseline: tuple[list[CaseScore], dict] | None = None,
                 alone: tuple[list[CaseScore], dict] | None = None) -> None:
    """per_case.csv, summary.json, summary.md and the PNG plots, written atomically into ``out/report``.

    ``baseline``: the baseline's (per-case scores, summary) on the same cases; then ``baseline_per_case.csv`` too,
    and summary.json / summary.md put the two side by side with the paired test (:func:`compare_with_baseline`).
    ``alone``: the scores are the hybrid map's, and these the model's map alone at the same operating point
    (``model_alone_per_case.csv``, summary.json ``model_alone``, a third side-by-side section)."""
    comparison = compare_with_baseline(scores, baseline[0], summary, baseline[1]) if baseline else None
    versus_alone = compare_with_baseline(scores, alone[0], summary, alone[1]) if alone else None
    with atomic_output_dir(out / "report") as stage:
        rows = [s.row() for s in scores]
        with open(stage / "per_case.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["case"])
            w.writeheader()
            w.writerows(rows)
        for other, name in ((baseline, "baseline_per_case.csv"), (alone, "model_alone_per_case.csv")):
            if other:
                rows = [s.row() for s in other[0]]
                with open(stage / name, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["case"])
                    w.writeheader()
                    w.writerows(rows)
        lesions = [r for s in scores for r in s.reference_rows]
        with open(stage / "reference_lesions.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["case", "lesion", "volume_ml", "diameter_mm", "contrast", "spread",
                                              "cnr", "found", "best_iou", "ae_kept", "rec_kept", "lost_at"])
            w.writeheader()
            w.writerows(lesions)
        doc = {"settings": settings, "summary": summary, "skipped_cases": problems}
        if comparison:
            doc["baseline"] = {"summary": baseline[1], "comparison": comparison}
        if versus_alone:
            doc["model_alone"] = {"summary": alone[1], "comparison": versus_alone}
        (stage / "summary.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
        (stage / "summary.md").write_text(markdown_summary(summary, problems, settings, comparison,
                                                                baseline[1] if baseline else None, versus_alone))
        _plots(stage, scores, summary)
    for other, name in ((baseline, "baseline_per_case.csv"), (alone, "model_alone_per_case.csv")):
        if not other:  # an earlier run's table is not this report's
            (out / "report" / name).unlink(missing_ok=True)


def markdown_summary(summary: dict, problems: dict[str, str], settings: dict, comparison: dict | None = None,
                     baseline_summary: dict | None = None, versus_alone: dict | None = None) -> str:
    def fmt(m: dict) -> str:
        if m.get("mean") is None:
            return "n/a"
        lo, hi = m["ci95"]
        if lo is None:  # --bootstrap 0, or a single case
            return f"{m['mean']:.3f} (n = {m['n']})"
        return f"{m['mean']:.3f} (95% CI {lo:.3f}-{hi:.3f}; n = {m['n']})"

    d = summary["lesion_detection"]
    lines = [
        f"# Evaluation: {settings.get('model', '')}", "",
        f"Settings: {', '.join(f'{k} = {v}' for k, v in settings.items() if k != 'model')}", "",
        "| metric | value |", "|---|---|",
        f"| cases evaluated | {summary['cases']} |",
        f"| Dice (cases with lesions) | {fmt(summary['dice'])} |",
        f"| lesion F1 per case | {fmt(summary['f1'])} |",
        f"| lesions found (IoU >= 0.2) | {d['tp']} of {d['tp'] + d['fn']} (recall {_fmt(d['recall'])}) |",
        *_overlap_row(summary),
        f"| false-positive components | {d['fp']} (precision {_fmt(d['precision'])}, pooled F1 {_fmt(d['f1'])}) |",
        f"| false positives per organ | {fmt(summary['fp_per_organ'])} |",
        f"| voxel AUROC in the organ | {fmt(summary['voxel_auroc'])} |",
        f"| voxel AUPRC in the organ | {fmt(summary['voxel_auprc'])} |", "",
        "| size stratum | cases | lesions | found | recall |", "|---|---|---|---|---|",
    ]
    for name, s in summary["size_strata"].items():
        shown = size_class_name(name, settings.get("organ", ""))
        lines.append(f"| {shown} | {s['cases']} | {s['lesions']} | {s['found']} | {_fmt(s['recall'])} |")
    if summary.get("lesion_contrast"):
        lines += ["", "| lesion contrast / spread of the tissue around it (image) | lesions | found | recall |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {v['lesions']} | {v['found']} | {_fmt(v['recall'])} |"
                  for k, v in summary["lesion_contrast"].items()]
    if summary.get("lesion_kinds"):
        lines += ["", "| phantom lesion attribute | lesions | found | recall |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['lesions']} | {v['found']} | {_fmt(v['recall'])} |"
                  for k, v in summary["lesion_kinds"].items()]
    if comparison:
        lines += comparison_markdown(comparison, "hybrid" if versus_alone else "model")
    if versus_alone:
        lines += comparison_markdown(versus_alone, "hybrid", "model alone",
                                     "Beside the model's map alone, at the same operating point")
    if summary.get("funnel"):
        lines += funnel_markdown(summary["funnel"], (baseline_summary or {}).get("funnel"),
                                 organ=settings.get("organ", ""))
    if problems:
        lines += ["", "Skipped cases:", ""] + [f"- {c}: {p}" for c, p in sorted(problems.items())]
    return "\n".join(lines) + "\n"


def _overlap_row(summary: dict) -> list[str]:
    """The markdown row on missed lesions that a predicted component touched: one too large or too small to match
    it, or matched to another lesion."""
    m = summary.get("missed_overlapped")
    if not m or not m["missed"]:
        return []
    return [f"| missed lesions that a predicted component overlaps | {m['overlapped']} of "
            f"{m['missed']} ({m['near']} at IoU >= {NEAR_MISS_IOU:g}) |"]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _plots(stage: Path, scores: list[CaseScore], summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    froc = summary["froc"]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    if froc:
        ax.step([p["fp_per_scan"] for p in froc], [p["sensitivity"] or 0 for p in froc], where="post")
    ax.set(xlabel="false positives per scan", ylabel="sensitivity", title="FROC", ylim=(0, 1.02))
    fig.tight_layout()
    fig.savefig(stage / "froc.png", dpi=100)
    plt.close(fig)
    strata = summary["size_strata"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = list(strata)
    ax.bar(range(len(names)), [strata[n]["recall"] or 0 for n in names])
    ax.set_xticks(range(len(names)), [f"{n}\n(n={strata[n]['lesions']})" for n in names], fontsize=7)
    ax.set(ylabel="recall", title="Detection by lesion size", ylim=(0, 1.02))
    fig.tight_layout()
    fig.savefig(stage / "size_strata.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.hist([s.dice for s in scores if not math.isnan(s.dice)], bins=np.linspace(0, 1, 11))
    ax.set(xlabel="Dice", ylabel="cases", title="Dice per case")
    fig.tight_layout()
    fig.savefig(stage / "dice_hist.png", dpi=100)
    plt.close(fig)
