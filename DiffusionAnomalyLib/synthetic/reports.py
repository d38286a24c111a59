"""Pseudo-labels from free-text radiology reports (kidney thesis §4.2.3).

Per organ (per side for kidneys): a lesion, cyst or tumour mentioned and not negated -> unhealthy;
described as normal or not mentioned -> healthy; stones, calcification, necrosis, atrophy or prior
removal -> excluded (takes precedence); an empty report or one with fewer than ``min_sentences``
sentences -> unknown. Sentences are split into clauses (at ';', 'but', 'however', 'whereas',
'while'); a finding is negated when a negation cue ("no", "without", "negative for", "no evidence
of", "free of", ...) precedes it in its clause. Laterality comes from 'left' / 'right' in the
clause; 'bilateral', 'both' or an organ mentioned without a side applies to both sides.
English reports only; a rule-based labeller, so check a sample of its output on your reports.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from DiffusionAnomalyLib.errors import InputError

ORGAN_TERMS = {
    "kidney": r"kidneys?|renal|nephr\w*",
    "liver": r"liver|hepatic|hepat\w*",
    "brain": r"brain|cerebral|cerebell\w*|intracranial|hemispheres?|frontal|parietal|temporal|occipital",
}
UNHEALTHY = (r"lesions?|cysts?|cystic|tumou?rs?|mass(?:es)?|neoplasms?|carcinomas?|rcc|nodules?|metastas[ie]s|"
             r"angiomyolipomas?|hcc|gliomas?|glioblastomas?|enhancing|oedema|edema")
EXCLUDED = {
    "kidney": r"stones?|calculi|calculus|nephrolithiasis|calcifications?|calcified|necrosis|necrotic|atroph\w*|"
              r"nephrectomy|removed|resected|resection|absent",
    "liver": r"hepatectomy|resected|resection|removed|calcifications?|calcified|necrosis|atroph\w*",
    "brain": r"resection|resected|craniotomy|removed|calcifications?|calcified|atroph\w*",
}
NEGATIONS = r"\bno\b|\bnot\b|\bwithout\b|negative for|no evidence of|free of|absence of|\bnor\b|ruled out|rules out"
CLAUSE_BREAKS = r";|\bbut\b|\bhowever\b|\bwhereas\b|\bwhile\b|\balthough\b"
PAIRED = {"kidney": ("left", "right")}
STRUCTURES = {"kidney": {"left": "kidney_left", "right": "kidney_right"}, "liver": {"": "liver"},
              "brain": {"": "brain"}}


@dataclass
class PseudoLabel:
    case: str
    structure: str
    side: str
    label: str  # healthy | unhealthy | excluded | unknown
    evidence: str


def sentences(report: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", report.strip())
    return [p.strip() for p in parts if p.strip() and re.search(r"[A-Za-z]", p)]


def _finding(clause: str, pattern: str) -> bool:
    """True when ``pattern`` occurs in the clause without a negation cue before it."""
    matches = re.finditer(rf"\b(?:{pattern})\b", clause)
    return any(not re.search(NEGATIONS, clause[: m.start()]) for m in matches)


def label_report(case: str, report: str, organ: str, min_sentences: int = 10) -> list[PseudoLabel]:
    """Labels for each structure of ``organ`` from one report."""
    if organ not in ORGAN_TERMS:
        raise InputError(f"unknown organ {organ!r}; choose {sorted(ORGAN_TERMS)}")
    sides = PAIRED.get(organ, ("",))
    sents = sentences(report or "")
    if len(sents) < min_sentences:
        why = "empty report" if not sents else f"{len(sents)} sentences (< {min_sentences})"
        return [PseudoLabel(case, STRUCTURES[organ][s], s, "unknown", why) for s in sides]
    state = {s: ("healthy", "not mentioned") for s in sides}
    rank = {"healthy": 0, "unhealthy": 1, "excluded": 2}
    for sent in sents:
        for clause in re.split(CLAUSE_BREAKS, sent.lower()):
            if not re.search(rf"\b(?:{ORGAN_TERMS[organ]})\b", clause):
                continue
            if organ in PAIRED:
                named = [s for s in sides if re.search(rf"\b{s}\b", clause)]
                if re.search(r"\bbilateral\w*|\bboth\b", clause) or not named:
                    named = list(sides)
            else:
                named = [""]
            if _finding(clause, EXCLUDED[organ]):
                new = "excluded"
            elif _finding(clause, UNHEALTHY):
                new = "unhealthy"
            else:
                continue
            for s in named:
                if rank[new] > rank[state[s][0]]:
                    state[s] = (new, sent)
    return [PseudoLabel(case, STRUCTURES[organ][s], s, label, ev) for s, (label, ev) in state.items()]


def label_reports_csv(reports_csv: str | Path, organ: str, out_csv: str | Path, min_sentences: int = 10) -> dict:
    """Read ``case,report`` rows, write ``case,structure,side,label,evidence``; returns label counts."""
    path = Path(reports_csv)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    rows = list(csv.DictReader(path.read_text().splitlines()))
    if not rows or not {"case", "report"} <= set(rows[0]):
        raise InputError(f"{path}: needs columns 'case' and 'report'")
    labels = [pl for r in rows for pl in label_report(r["case"], r["report"], organ, min_sentences)]
    import io

    from DiffusionAnomalyLib.imaging.outputs import write_text_atomic

    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=["case", "structure", "side", "label", "evidence"])
    w.writeheader()
    w.writerows(pl.__dict__ for pl in labels)
    write_text_atomic(out_csv, text.getvalue())
    counts: dict[str, int] = {}
    for pl in labels:
        counts[pl.label] = counts.get(pl.label, 0) + 1
    return counts
