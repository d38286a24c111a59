"""Many cases at once: the model set-up shared by ``evaluate``, ``sweep`` and ``batch``, sharding over
``torchrun`` ranks, and ``diffusion-anomaly batch`` (full ``run`` outputs for every case of a dataset).

Under ``torchrun --nproc_per_node N`` each rank takes the cases ``rank, rank + N, ...`` (on its own GPU
when there are several); rank 0 waits for the others and merges (an index, a report). Without torchrun
everything runs in one process.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from DiffusionAnomalyLib.detection.presets import OrganPreset
from DiffusionAnomalyLib.errors import CancelledError
from DiffusionAnomalyLib.evaluation.datasets import EvalCase, discover_cases
from DiffusionAnomalyLib.evaluation.evaluate import case_masks, log
from DiffusionAnomalyLib.imaging.io import read_channels
from DiffusionAnomalyLib.imaging.outputs import atomic_output_dir
from DiffusionAnomalyLib.settings import MapOptions, RunSettings


@dataclass
class Model:
    """What a dataset command needs: the organ preset (with the map's median filter), the resolved run
    settings, and a reconstructor factory (sampler settings[, map options] -> reconstructor)."""

    preset: OrganPreset
    run: RunSettings  # resolved once: the bundle's recommendations with the command line's options on top
    make_reconstructor: Callable
    description: str
    baseline: bool = False
    demo: bool = False
    weights_id: str = ""  # BundleMeta.weights_id(): maps made by other networks are never reused
    recommended: dict = field(default_factory=dict)  # the bundle's ``recommended`` block, as calibrated
    precision: str = "fp32"  # the networks' resolved precision (fp32 or bf16; models/precision.py)
    extra: dict = field(default_factory=dict)  # the bundle's model.json "extra" (training records)

    @property
    def settings(self):
        """The sampler settings (None for the baseline)."""
        if self.baseline:
            return None
        from DiffusionAnomalyLib.models.diffusion.sampler import SamplerSettings

        return SamplerSettings.from_run(self.run)

    @property
    def options(self) -> MapOptions:
        return self.run.map_options()

    def maps_key(self, settings=None, options: MapOptions | None = None) -> str:
        """Cache folder name of the anomaly maps made with ``settings`` and map ``options`` (default: this
        model's) by these networks (``_w<weights id>``)."""
        st = settings or self.settings
        if st is None:
            return "baseline"
        import dataclasses

        from DiffusionAnomalyLib.models.reconstruction import samples_drawn
        from DiffusionAnomalyLib.settings import maps_key

        o = options or self.options
        run = dataclasses.replace(self.run, **st.run_fields(), reference=o.reference, median_filter=o.median_filter,
                                  samples=samples_drawn(st.method, o.samples))
        return maps_key(run) + f"_w{self.weights_id}" + ("_bf16" if self.precision == "bf16" else "")


#: Builds the run settings from a bundle's ``recommended`` block and preset (the command line's options on top).
Resolve = Callable[[dict, OrganPreset], RunSettings]


def load_model(bundle_path: str | None, organ: str | None, device, resolve: Resolve, shipped: bool = True) -> Model:
    """A bundle (``bundle_path``) or, without one, the non-neural baseline for ``organ``; ``resolve`` turns
    the bundle's recommendations into the run settings (once, as for ``run``). ``shipped`` False: the bundle is
    being made, so the shipped manifest (which may list a bundle of the same name and version) is not consulted."""
    if bundle_path:
        from DiffusionAnomalyLib.models.bundle import load_bundle, shipped_manifest
        from DiffusionAnomalyLib.models.reconstruction import DiffusionReconstructor

        bundle = load_bundle(bundle_path, device=device, manifest=shipped_manifest() if shipped else None)
        rec = dict(bundle.meta.recommended or {})
        run = resolve(rec, bundle.preset)
        opts = run.map_options()
        from DiffusionAnomalyLib.models.precision import resolve_precision

        precision = resolve_precision(run.precision, device)
        return Model(opts.apply_to(bundle.preset), run,
                     lambda st, o=opts: DiffusionReconstructor(bundle, st, device, reference=o.reference,
                                                               samples=o.samples, precision=precision),
                     f"{bundle.meta.name} {bundle.meta.version} ({bundle.digest[:12]})"
                     + (" DEMO" if bundle.meta.demo else "") + (" bf16" if precision == "bf16" else ""),
                     demo=bundle.meta.demo, weights_id=bundle.meta.weights_id(), recommended=rec,
                     precision=precision, extra=dict(bundle.meta.extra or {}))
    from DiffusionAnomalyLib.detection.baseline import MedianBaseline
    from DiffusionAnomalyLib.detection.presets import get_preset

    preset = get_preset(organ)
    return Model(preset, resolve({}, preset), lambda st, o=None: MedianBaseline.for_preset(preset),
                 "non-neural median baseline", baseline=True)


class Ranks:
    """This process's place among ``torchrun`` ranks (one rank without torchrun)."""

    def __init__(self, device) -> None:
        from DiffusionAnomalyLib.models.device import init_distributed

        self.dist = init_distributed(device)
        self.rank, self.world = self.dist.rank, self.dist.world_size

    def barrier(self) -> None:
        from DiffusionAnomalyLib.models.device import barrier

        barrier(self.dist)

    def close(self) -> None:
        from DiffusionAnomalyLib.models.device import shutdown

        shutdown(self.dist)


def run_batch(cases: list[EvalCase], model: Model, out: Path, rank: int = 0, world: int = 1,
              progress: Callable[[str], None] = log, redo: bool = False) -> None:
    """Full outputs (as ``run``, with ``model.run``'s threshold and post-processing) for this rank's cases into
    ``out/<case>/``; finished cases are skipped unless ``redo`` (then each case's earlier result set is replaced
    as a whole)."""
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
                                threshold=model.run.threshold, postprocessing=model.run.postprocessing(model.preset),
                                hybrid=0.0 if model.baseline else model.run.hybrid, input_name=case.case_id,
                                trajectory_heatmaps=model.run.trajectory_heatmap)
            if not model.baseline:
                result.parameters["settings"] = model.run.to_dict()  # replayable with run --settings
            write_outputs(result, out / case.case_id, model.preset,
                          {"images": [str(p) for p in case.inputs], "model": model.description,
                           "bundle": {"demo": model.demo}}, overwrite=True)
            (out / f"{case.case_id}.error.json").unlink(missing_ok=True)  # an earlier failure is stale now
        except CancelledError:  # SIGTERM stops the whole batch; the case's partial output is not kept
            raise
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
