"""``bench --profile`` (issue 39 item 1: one guided case split into op classes) and the convolution rate ``bench``
compares each configuration with (item 6). Figures are reported, never asserted: these tests check the shape of
the report only."""

from __future__ import annotations

import json

import torch

from DiffusionAnomalyLib.app.cli import main
from DiffusionAnomalyLib.evaluation.bench import CONV_PROBE, case_gflop, conv_rate, network_gflop
from DiffusionAnomalyLib.evaluation.profile import ROWS, op_class
from DiffusionAnomalyLib.models.diffusion.guidance import PROFILE_BACKWARD, PROFILE_FORWARD


def _table(text: str) -> dict[str, list[str]]:
    """The printed Markdown table: first cell -> the other cells."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ")]
    return {r[0]: r[1:] for r in rows}


def test_bench_profile_splits_a_demo_case_into_op_classes(tmp_path, capsys, small_bench):
    threads = torch.get_num_threads()
    out = tmp_path / "profile.json"
    rc = main(["bench", "--profile", "--sizes", "demo", "--samplers", "ddim", "--guidance-values", "0", "100",
               "--rois", "1", "--steps", "2", "--precisions", "fp32", "bf16", "--out", str(out)])
    assert rc == 0 and torch.get_num_threads() == threads
    table = _table(capsys.readouterr().out)
    assert table["op class"][:3] == ["fp32 self CPU s", "fp32 share", "fp32 calls"] and len(table["op class"]) == 6
    for column in (1, 4):  # the shares of each precision add up to 100 % (rounded to 0.1 % a row)
        shares = [float(table[row][column].rstrip(" %")) for row in ROWS]
        assert abs(sum(shares) - 100) < 0.1 * len(ROWS)
        assert float(table["convolutions"][column].rstrip(" %")) > 0
    doc = json.loads(out.read_text())
    assert doc["environment"]["torch"] and len(doc["results"]) == 2
    for r in doc["results"]:
        assert (r["guidance"], r["steps"], r["network_evaluations"]) == (100.0, 2, 4)  # the guided case, inverted
        rows = {x["row"]: x for x in r["rows"]}
        assert list(rows) == list(ROWS) and abs(sum(x["share"] for x in rows.values()) - 1) < 1e-3
        assert rows["convolutions"]["self_s"] > 0 and rows["convolutions"]["calls"] > 0
        assert rows["classifier forward"]["calls"] == rows["classifier backward"]["calls"] == 2  # one per guided step
        assert r["classifier_by_class"]["classifier forward"]["convolutions"] > 0
        assert abs(sum(x["self_s"] for x in rows.values()) - r["wall_s"]) < 0.01


def test_op_classes_and_the_profiler_labels():
    assert op_class("aten::mkldnn_convolution") == op_class("aten::convolution_backward") == "convolutions"
    assert op_class("aten::native_group_norm") == op_class("aten::silu") == "normalisation and activations"
    assert op_class("aten::copy_") == op_class("aten::_to_copy") == "layout reorders and casts"
    assert op_class("aten::upsample_nearest3d") == "resampling" and op_class("aten::bmm").startswith("attention")
    assert op_class("aten::empty") == "rest"
    from torch.profiler import ProfilerActivity, profile

    from DiffusionAnomalyLib.models.diffusion.guidance import ClassifierGuidance

    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 2))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ClassifierGuidance(lambda x, t: clf(x), 1.0).log_prob_gradient(torch.randn(2, 8), torch.zeros(2))
    names = {e.name for e in prof.events()}
    assert {PROFILE_FORWARD, PROFILE_BACKWARD} <= names


def test_the_convolution_rate_probe_and_the_flop_count(monkeypatch):
    cpu = torch.device("cpu")
    # an 8^3 grid, as in test_precision: bfloat16 is emulated (about 0.3 GFLOP/s) on CPUs without native support
    monkeypatch.setitem(CONV_PROBE, "grid", 8)
    assert conv_rate(cpu, "fp32", seconds=0.05) > 0 and conv_rate(cpu, "bf16", seconds=0.05) > 0
    den, grad = network_gflop("demo", 2)
    assert den > 0 and grad > 0  # FlopCounterMode on meta copies: nothing is computed
    assert case_gflop("demo", 2, 4, 2) == den * 4 + grad * 2
