"""The one run-settings object: resolved once from a bundle's recommendations plus overrides, validated, and
round-tripped through JSON."""

from __future__ import annotations

import json
import math

import pytest
from conftest import REPO

from DiffusionAnomalyLib.errors import InputError
from DiffusionAnomalyLib.models.bundle import read_meta
from DiffusionAnomalyLib.settings import RunSettings

KIDNEY = REPO / "Resources" / "Models" / "kidney-demo"


def _kidney():
    meta = read_meta(KIDNEY)
    return meta.recommended, meta.preset()


def test_the_bundle_recommendation_fills_what_is_not_given():
    rec, preset = _kidney()
    s = RunSettings.resolve(rec, preset)
    assert (s.sampler, s.noise_level, s.steps, s.guidance) == (rec["sampler"], rec["noise_level"], rec["steps"],
                                                               rec["guidance"])
    assert (s.reference, s.samples, s.median_filter) == (rec["reference"], rec["samples"], rec["median_filter"])
    assert (s.threshold, s.min_lesion_ml, s.grow_to) == (rec["threshold"], rec["min_lesion_ml"], rec["grow_to"])


def test_an_override_of_zero_stays_zero_and_none_means_not_given():
    rec, preset = _kidney()
    s = RunSettings.resolve(rec, preset, guidance=0.0, median_filter=0, min_lesion_ml=0.0, steps=None, seed=0)
    assert s.guidance == 0.0 and s.median_filter == 0 and s.min_lesion_ml == 0.0
    assert s.steps == rec["steps"]


def test_threshold_modes():
    rec, preset = _kidney()
    assert RunSettings.resolve(rec, preset, threshold="bundle").threshold == rec["threshold"]
    assert RunSettings.resolve(rec, preset, threshold="otsu").threshold is None
    assert RunSettings.resolve(rec, preset, threshold=0.3).threshold == 0.3
    assert RunSettings.resolve({}, preset).threshold is None  # no calibrated threshold: Otsu


def test_defaults_without_a_recommendation_come_from_one_place():
    _, preset = _kidney()
    s = RunSettings.resolve({}, preset)
    assert (s.sampler, s.noise_level, s.steps, s.guidance, s.reference, s.samples) == ("ddpm", 250, 50, 0.0,
                                                                                       "input", 1)
    assert s.median_filter == preset.median_filter_voxels


@pytest.mark.parametrize(("override", "message"), [
    ({"sampler": "euler"}, "unknown sampler"), ({"noise_level": 1000}, "in 1..999"),
    ({"steps": 300, "noise_level": 250}, "between 1 and L = 250"), ({"guidance": -1.0}, ">= 0"),
    ({"guidance": math.inf}, "finite"), ({"threshold": math.nan}, "finite number >= 0"),
    ({"threshold": -0.5}, "finite number >= 0"), ({"samples": 0}, "samples must be in 1..64"),
    ({"grow_to": 1.5}, "(0, 1]"),
    ({"seed": 2**64}, "0..2^63-1"), ({"reference": "mean"}, "unknown map reference"),
    ({"median_filter": -1}, "in 0..15"), ({"noise_level": 2.5}, "whole number"),
    ({"colour": "red"}, "unknown run setting"),
])
def test_bad_values_are_refused_with_what_is_wrong(override, message):
    rec, preset = _kidney()
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("^", r"\^")):
        RunSettings.resolve(rec, preset, **override)


def test_json_round_trip_and_unknown_keys():
    rec, preset = _kidney()
    s = RunSettings.resolve(rec, preset, seed=7, device="cpu", threshold="otsu")
    again = RunSettings.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s
    with pytest.raises(InputError, match="run.json: unknown run setting"):
        RunSettings.from_dict({**s.to_dict(), "extra": 1}, "run.json")
    with pytest.raises(InputError, match="must be a JSON object"):
        RunSettings.from_dict([1, 2], "run.json")


def test_cli_worker_batch_and_panel_resolve_the_same_settings(tiny_bundle, tmp_path):
    from DiffusionAnomalyLib.api import DetectRequest, resolve_settings
    from DiffusionAnomalyLib.app.cli import build_parser, request_from_argv
    from DiffusionAnomalyLib.slicer_module.scene_run import RunRequest

    meta = read_meta(tiny_bundle)
    b = str(tiny_bundle)
    flags = ["--sampler", "ddpm", "--noise-level", "40", "--steps", "4", "--guidance", "0", "--seed", "7",
             "--samples", "2", "--median-filter", "0", "--device", "cpu", "--trajectory-every", "1"]

    def resolved(argv):
        return resolve_settings(request_from_argv(argv), meta.recommended, meta.preset())

    cli = resolved(["run", "--bundle", b, "--input", "x", "--out", "o", *flags, "--threshold", "otsu"])
    from DiffusionAnomalyLib.settings import trajectory_every_for

    panel_request = RunRequest(organ="kidney", bundle=b, settings=dict(  # "Keep the trajectory": ~10 frames of 4
        sampler="ddpm", noise_level=40, steps=4, guidance=0.0, seed=7, device="cpu", threshold="otsu", samples=2,
        median_filter=0, trajectory_every=trajectory_every_for(4)))
    panel = panel_request.run_settings()
    sent = json.loads(json.dumps(panel_request.detect_request(["x"], "o", "m").to_json()))  # what the worker reads
    worker = resolve_settings(DetectRequest.from_json(sent), meta.recommended, meta.preset())
    settings_file = tmp_path / "settings.json"  # a replay from a settings file
    settings_file.write_text(json.dumps(panel.to_dict()))
    replayed = resolved(["run", "--bundle", b, "--input", "x", "--out", "o", "--settings", str(settings_file)])
    from DiffusionAnomalyLib.app.commands import dataset_request
    from DiffusionAnomalyLib.evaluation.commands import BatchRequest

    args = build_parser().parse_args(["batch", "--data", "d", "--bundle", b, "--out", "o", *flags])
    batch_request = dataset_request(args, BatchRequest)
    batch = RunSettings.resolve(meta.recommended, meta.preset(), **batch_request.settings)
    assert cli == panel == worker == replayed == batch
    assert (cli.sampler, cli.noise_level, cli.samples, cli.median_filter, cli.threshold) == ("ddpm", 40, 2, 0, None)
    assert cli.trajectory_every == 1 and not cli.trajectory_heatmap
    # the heatmap sequence: on run and batch, replayed from a settings file unless an option says otherwise
    heat = resolved(["run", "--bundle", b, "--input", "x", "--out", "o", *flags, "--trajectory-heatmap"])
    assert heat.trajectory_heatmap and heat.trajectory_every == 1
    settings_file.write_text(json.dumps(heat.to_dict()))
    replay = resolved(["run", "--bundle", b, "--input", "x", "--out", "o", "--settings", str(settings_file)])
    assert replay == heat
    with pytest.raises(InputError, match="trajectory heatmap needs a trajectory"):
        RunSettings.from_dict({**heat.to_dict(), "trajectory_every": 0})


@pytest.mark.slow
def test_run_json_replays_to_identical_outputs(tiny_bundle, kidney_case, tmp_path):
    import numpy as np
    import SimpleITK as sitk

    from DiffusionAnomalyLib.app.cli import main

    _, folder = kidney_case
    common = ["--bundle", str(tiny_bundle), "--input", str(folder / "ct.nii.gz"), "--totalseg",
              str(folder / "segmentations")]
    assert main(["run", *common, "--out", str(tmp_path / "first"), "--sampler", "ddpm", "--noise-level", "40",
                 "--steps", "4", "--seed", "11", "--samples", "2", "--device", "cpu"]) == 0
    assert main(["run", *common, "--out", str(tmp_path / "again"), "--settings",
                 str(tmp_path / "first" / "run.json")]) == 0
    first, again = (json.loads((tmp_path / n / "run.json").read_text()) for n in ("first", "again"))
    assert first["parameters"]["settings"] == again["parameters"]["settings"]
    assert first["parameters"]["settings"]["seed"] == 11
    for name in ("heatmap.nii.gz", "reconstruction.nii.gz", "lesions.nii.gz"):
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / n / name))) for n in ("first", "again"))
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "first" / "lesions.json").read_text() == (tmp_path / "again" / "lesions.json").read_text()
    # a changed option on top of the replayed settings
    assert main(["run", *common, "--out", str(tmp_path / "other"), "--settings",
                 str(tmp_path / "first" / "run.json"), "--seed", "12"]) == 0
    other = json.loads((tmp_path / "other" / "run.json").read_text())["parameters"]["settings"]
    assert other == {**first["parameters"]["settings"], "seed": 12}


def test_every_run_setting_is_declared_once_with_how_it_is_offered():
    """A field of RunSettings is the only place an option is written: the parsers and the panel follow."""
    import dataclasses
    import re
    from pathlib import Path

    from DiffusionAnomalyLib.app.cli import build_parser
    from DiffusionAnomalyLib.settings import Option, RunSettings, options

    names = [f.name for f in dataclasses.fields(RunSettings)]
    assert [n for n, _ in options()] == names
    assert all(isinstance(o, Option) and o.help for _, o in options())
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name, opt in options():
        flag = "--" + name.replace("_", "-")
        for command in opt.commands:
            assert flag in sub[command]._option_string_actions, (command, flag)
            action = sub[command]._option_string_actions[flag]
            assert action.default in (None, False) and action.help == opt.help
    ui = (Path(__file__).resolve().parents[2] / "Resources" / "UI" / "DiffusionAnomaly.ui").read_text()
    bound = set(re.findall(r'SlicerParameterName".*?<string>(\w+)</string>', ui, flags=re.S))
    panel_names = {o.panel for _, o in options() if o.panel}
    assert panel_names and panel_names <= bound


def test_a_panel_request_resolves_like_the_command_line(tiny_bundle):
    """The panel's sentinels (reference 'bundle', samples 0, median filter -1) leave a value to the bundle."""
    from types import SimpleNamespace

    from DiffusionAnomalyLib.api import resolve_settings
    from DiffusionAnomalyLib.app.cli import request_from_argv
    from DiffusionAnomalyLib.models.bundle import read_meta
    from DiffusionAnomalyLib.slicer_module.panel import request_from_parameters

    pn = SimpleNamespace(organ="kidney", bundlePath=str(tiny_bundle), maskSource="segmentation", sampler="ddim",
                         noiseLevel=40, steps=4, guidance=0.0, seed=3, reference="bundle", samples=0,
                         medianFilter=-1, device="cpu", thresholdMode="fixed", threshold=0.2, keepTrajectory=False,
                         pythonExecutable="")
    panel = request_from_parameters(pn, "").run_settings()
    meta = read_meta(tiny_bundle)
    cli = resolve_settings(request_from_argv(
        ["run", "--bundle", str(tiny_bundle), "--input", "x", "--out", "o", "--sampler", "ddim", "--noise-level",
         "40", "--steps", "4", "--guidance", "0", "--seed", "3", "--device", "cpu", "--threshold", "0.2"]),
        meta.recommended, meta.preset())
    assert panel == cli and panel.threshold == 0.2


def test_the_bundle_schemas_recommended_block_is_generated_from_the_settings():
    """model.schema.json is JSON and cannot import: its copy of the recommended block must be the generated one
    (regenerate it with ``make schema``), and the shipped bundles must conform to it."""
    from DiffusionAnomalyLib.models.schema import model_schema, problems
    from DiffusionAnomalyLib.settings import ORGANS, recommended_schema

    schema = model_schema()
    assert tuple(schema["properties"]["organ"]["enum"]) == ORGANS
    assert schema["properties"]["recommended"] == recommended_schema()
    for bundle in ("kidney", "liver", "brain"):
        rec = json.loads((REPO / "Resources" / "Models" / f"{bundle}-demo" / "model.json").read_text())["recommended"]
        assert problems(rec, recommended_schema()) == []
    found = problems({"noise_level": 0, "grow_to": 0, "samples": 65, "sampler": "euler", "colour": 1},
                     recommended_schema(), "recommended")
    assert sorted(p.split(":")[0] for p in found) == [f"recommended.{k}" for k in (
        "colour", "grow_to", "noise_level", "sampler", "samples")]


def test_a_new_option_is_declared_in_one_place_and_reaches_every_front_end():
    """Issue 36: adding a run option is its declaration (plus its .ui widget and docs). A throwaway option, declared
    on a subclass only, shows up in the command line (parsed and range-checked), the panel's parameters, the bundle
    schema's recommended block, the map cache key, the checks and the JSON reader (the panel's parameters:
    Testing/Slicer/test_panel.py, test_a_new_option_reaches_the_panels_parameters)."""
    import argparse
    import dataclasses

    from DiffusionAnomalyLib.app.cli import build_parser
    from DiffusionAnomalyLib.settings import MAPS, Option, check_values, maps_key, recommended_schema, setting

    @dataclasses.dataclass(frozen=True)
    class Extended(RunSettings):
        wobble: int = setting(3, Option("wobble factor", MAPS, "W", label="wobble", low=0, high=9, panel="wobble",
                                        recommend=True, maps=True, key="wob{}", key_default=3))

    sub = next(a for a in build_parser(Extended)._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command in MAPS:
        assert "--wobble" in sub[command]._option_string_actions
    assert sub["run"].parse_args(["--input", "x", "--out", "o", "--wobble", "7"]).wobble == 7
    with pytest.raises(SystemExit):
        sub["run"].parse_args(["--input", "x", "--out", "o", "--wobble", "12"])
    assert "--wobble" not in next(a for a in build_parser()._actions
                                  if isinstance(a, argparse._SubParsersAction)).choices["run"]._option_string_actions
    # the panel's parameters: Testing/Slicer/test_panel.py (on Slicer's own parameterNodeWrapper)
    assert recommended_schema(Extended)["properties"]["wobble"] == {"type": ["integer", "null"], "minimum": 0,
                                                                    "maximum": 9}
    assert maps_key(Extended()) == maps_key(RunSettings()) and maps_key(Extended(wobble=5)).endswith("_wob5")
    with pytest.raises(InputError, match=r"wobble must be in 0..9 \(got 10\)"):
        Extended(wobble=10)
    assert Extended.resolve({"wobble": 4}, _kidney()[1]).wobble == 4  # a bundle may recommend it
    with pytest.raises(InputError, match=r"wobble must be a whole number"):
        check_values({"wobble": 2.5}, "settings", Extended)
