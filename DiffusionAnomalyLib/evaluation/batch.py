"""Many cases at once: the model set-up shared by ``evaluate``, ``sweep`` and ``batch``, sharding over
``torchrun`` ranks, and ``diffusion-anomaly batch`` (full ``run`` outputs for every case of a dataset).

Under ``torchrun --nproc_per_node N`` each rank takes the cases ``rank, rank + N, ...`` (on its own GPU
when there are several); rank 0 waits for the others and merges (an index, a report). Without torchrun
everything runs in one process.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from DiffusionAnomalyLib.evaluation.datasets import EvalCase, discover_cases
from DiffusionAnomalyLib.evaluation.evaluate import case_masks, log
from DiffusionAnomalyLib.imaging.io import atomic_output_dir, read_channels


@dataclass
class Model:
    """What a dataset command needs: the preset, default sampler settings, and a reconstructor factory."""

    preset: object
    settings: object | None  # SamplerSettings (None for the baseline)
    make_reconstructor: Callable
    description: str
    recommended_threshold: float | None = None
    demo: bool = False
    recommended_min_lesion_ml: float | None = None
    options: object = None  # settings.MapOptions (None for the baseline)
    weights_id: str = ""  # BundleMeta.weights_id(): maps made by other networks are never reused
    recommended_grow_to: float | None = None
    extra: dict = field(default_factory=dict)  # the bundle's model.json "extra" (training records)

    def maps_key(self, settings=None) -> str:
        """Cache folder name of the anomaly maps made with ``settings`` (default: this model's) by these
        networks (``_w<weights id>``)."""
        st = settings or self.settings
        if st is None:
            return "baseline"
        key = f"{st.method}_L{st.noise_level}_s{st.guidance:g}_n{st.steps}_seed{st.seed}"
        from DiffusionAnomalyLib.models.reconstruction import samples_drawn

        o = self.options
        samples = samples_drawn(st.method, o.samples)
        return (key + ("_refae" if o.reference == "autoencoder" else "") + (f"_k{samples}" if samples > 1 else "")
                + (f"_med{o.median_filter}" if o.median_filter else "") + f"_w{self.weights_id}")


def load_model(args: argparse.Namespace, device) -> Model:
    """From ``--bundle`` (+ sampler options) or ``--baseline --organ``."""
    if getattr(args, "bundle", None):
        from DiffusionAnomalyLib.app.job import run_settings
        from DiffusionAnomalyLib.models.bundle import load_bundle, shipped_manifest
        from DiffusionAnomalyLib.models.reconstruction import DiffusionReconstructor

        bundle = load_bundle(args.bundle, device=device, manifest=shipped_manifest())
        rec = bundle.meta.recommended or {}
        resolved = run_settings(args, rec, bundle.preset)  # the same resolution as `run` and the worker
        settings, opts = resolved.sampler_settings(), resolved.map_options()
        return Model(opts.apply_to(bundle.preset), settings,
                     lambda st: DiffusionReconstructor(bundle, st, device, reference=opts.reference,
                                                       samples=opts.samples),
                     f"{bundle.meta.name} {bundle.meta.version} ({bundle.digest[:12]})"
                     + (" DEMO" if bundle.meta.demo else ""), rec.get("threshold"), bundle.meta.demo,
                     rec.get("min_lesion_ml"), opts, bundle.meta.weights_id(), rec.get("grow_to"),
                     dict(bundle.meta.extra or {}))
    from DiffusionAnomalyLib.detection.baseline import MedianBaseline
    from DiffusionAnomalyLib.detection.presets import get_preset

    preset = get_preset(args.organ)
    return Model(preset, None, lambda st: MedianBaseline.for_preset(preset), "non-neural median baseline")


class Ranks:
    """This process's place among ``torchrun`` ranks (one rank without torchrun)."""

    def __init__(self, device) -> None:
        from DiffusionAnomalyLib.training.common import init_distributed

        self.dist = init_distributed(device)
        self.rank, self.world = self.dist.rank, self.dist.world_size

    def barrier(self) -> None:
        from DiffusionAnomalyLib.training.common import barrier

        barrier(self.dist)

    def close(self) -> None:
        from DiffusionAnomalyLib.training.common import shutdown

        shutdown(self.dist)


def run_batch(cases: list[EvalCase], model: Model, out: Path, threshold, rank: int = 0, world: int = 1,
              progress: Callable[[str], None] = log, postprocessing=None, redo: bool = False) -> None:
    """Full outputs (as ``run``) for this rank's cases into ``out/<case>/``; finished cases are skipped unless
    ``redo`` (then each case's earlier result set is replaced as a whole)."""
    import time

    from DiffusionAnomalyLib.detection.pipeline import detect, write_outputs

    todo = [c for c in cases[rank::world] if c.inputs and (redo or not (out / c.case_id / "run.json").is_file())]
    t0 = time.perf_counter()
    for i, case in enumerate(todo):
        try:
            channels = read_channels(case.inputs, model.preset.channels if len(case.inputs) > 1 else None)
            with atomic_output_dir(out / f".{case.case_id}.masks") as scratch:
                mask_set = case_masks(case, channels, model.preset, scratch)
                result = detect(channels, mask_set, model.preset, model.make_reconstructor(model.settings),
                                threshold=threshold, postprocessing=postprocessing, input_name=case.case_id)
            write_outputs(result, out / case.case_id, model.preset,
                          {"images": [str(p) for p in case.inputs], "model": model.description,
                           "bundle": {"demo": model.demo}}, overwrite=True)
            (out / f"{case.case_id}.error.json").unlink(missing_ok=True)  # an earlier failure is stale now
        except Exception as exc:  # one bad case does not stop the batch; it is listed in the index
            (out / f"{case.case_id}.error.json").write_text(json.dumps({"case": case.case_id, "problem": str(exc)}))
        finally:
            import shutil

            shutil.rmtree(out / f".{case.case_id}.masks", ignore_errors=True)
        eta = (time.perf_counter() - t0) / (i + 1) * (len(todo) - i - 1)
        progress(f"[rank {rank}] batch {i + 1}/{len(todo)} ({case.case_id}); ETA {eta:.0f} s")


def write_index(cases: list[EvalCase], out: Path) -> Path:
    """``out/index.csv``: one row per case with its lesion count, threshold and outputs, or its problem."""
    rows = []
    for case in cases:
        run = out / case.case_id / "run.json"
        err = out / f"{case.case_id}.error.json"
        if run.is_file():
            info = json.loads(run.read_text())
            n = len((out / case.case_id / "lesions.csv").read_text().splitlines()) - 1
            rows.append({"case": case.case_id, "status": "ok", "lesions": n,
                         "threshold": info["parameters"].get("threshold"), "folder": str(out / case.case_id),
                         "problem": ""})
        else:
            problem = json.loads(err.read_text())["problem"] if err.is_file() else "; ".join(case.problems) or (
                "not run")
            rows.append({"case": case.case_id, "status": "failed", "lesions": "", "threshold": "", "folder": "",
                         "problem": problem})
    path = out / "index.csv"
    tmp = out / ".index.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case", "status", "lesions", "threshold", "folder", "problem"])
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
    return path


__all__ = ["Model", "Ranks", "discover_cases", "load_model", "run_batch", "write_index"]
