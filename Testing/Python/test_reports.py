"""Pseudo-labels from reports (kidney thesis §4.2.3) on sentences written for the purpose."""

import pytest

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.synthetic.phantoms import make_phantom
from DiffusionAnomalyLib.synthetic.reports import label_report, label_reports_csv

FILLER = ("The liver is normal. The spleen is unremarkable. The pancreas is normal. No free fluid. "
          "No lymphadenopathy. The aorta is normal. The bowel is unremarkable. No osseous lesion. "
          "The lung bases are clear.")


def labels(text, organ="kidney"):
    return {pl.side: pl.label for pl in label_report("c1", f"{text} {FILLER}", organ)}


@pytest.mark.parametrize("text,expected", [
    ("No cyst or mass in the left kidney. There is a 3 cm solid lesion in the right kidney.",
     {"left": "healthy", "right": "unhealthy"}),
    ("Bilateral renal cysts.", {"left": "unhealthy", "right": "unhealthy"}),
    ("Status post left nephrectomy.", {"left": "excluded", "right": "healthy"}),
    ("Small non-obstructing stone in the right kidney.", {"left": "healthy", "right": "excluded"}),
    ("The kidneys are normal in size and enhancement.", {"left": "healthy", "right": "healthy"}),
    ("Right kidney: no evidence of tumour, but a simple cyst is present in the right kidney.",
     {"left": "healthy", "right": "unhealthy"}),
    ("The left kidney is atrophic. A cyst in the left kidney.", {"left": "excluded", "right": "healthy"}),
    ("Negative for renal lesions.", {"left": "healthy", "right": "healthy"}),
    ("Left renal mass; the right kidney is unremarkable.", {"left": "unhealthy", "right": "healthy"}),
    ("A hepatic cyst is noted.", {"left": "healthy", "right": "healthy"}),  # not a kidney finding
    ("Both kidneys contain small calcifications.", {"left": "excluded", "right": "excluded"}),
])
def test_kidney_rules_with_negation_and_laterality(text, expected):
    assert labels(text) == expected


def test_short_or_empty_reports_are_unknown():
    short = label_report("c", "Left renal cyst. Otherwise normal.", "kidney")
    assert {pl.label for pl in short} == {"unknown"} and "2 sentences" in short[0].evidence
    assert {pl.label for pl in label_report("c", "", "kidney")} == {"unknown"}


def test_liver_and_brain():
    assert labels("A 2 cm hypodense lesion is seen in the liver.", "liver") == {"": "unhealthy"}
    assert labels("No focal hepatic lesion.", "liver") == {"": "healthy"}
    assert labels("Enhancing mass in the left frontal lobe of the brain.", "brain") == {"": "unhealthy"}


def test_phantom_reports_agree_with_phantom_truth():
    for seed in range(6):
        case = make_phantom("kidney", seed)
        got = {pl.structure: pl.label for pl in label_report(case.case_id, case.report, "kidney")}
        assert got == case.structure_labels, (case.report, got)


def test_csv_round_trip(tmp_path):
    src = tmp_path / "reports.csv"
    src.write_text('case,report\nA,"There is a cyst in the left kidney. ' + FILLER + '"\nB,""\n')
    counts = label_reports_csv(src, "kidney", tmp_path / "labels.csv")
    assert counts == {"unhealthy": 1, "healthy": 1, "unknown": 2}
    assert (tmp_path / "labels.csv").read_text().startswith("case,structure,side,label,evidence")
    with pytest.raises(InputError, match="needs columns"):
        bad = tmp_path / "bad.csv"
        bad.write_text("id,text\n1,x\n")
        label_reports_csv(bad, "kidney", tmp_path / "x.csv")
