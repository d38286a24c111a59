"""Issue 39, item 4: what a Slicer user waits for per Apply — a worker started for the run (as every run did before
the spare) against the spare the previous run left (``SpareWorker``: the model code already imported).

For each demo bundle, one held-out phantom (seed 1000), the bundle's recommended run (its sampler, L, s, samples;
``--steps`` overrides the step count), ROUNDS rounds interleaved: a cold worker (start to result, as the panel
starts one) and a spare one (started and ``ready`` before the clock starts, as after an earlier run). Prints per
bundle and steps the median wall clock of each, the run's own ``timings_s`` total, and writes WORK/times.json.

    python scripts/worker_times.py [--work build/worker-times] [--rounds 3] [--steps 50 20] [--organs kidney ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from DiffusionAnomalyLib.api import DetectRequest  # noqa: E402
from DiffusionAnomalyLib.app.client import WorkerClient  # noqa: E402
from DiffusionAnomalyLib.resources import resources_dir  # noqa: E402
from DiffusionAnomalyLib.synthetic.phantoms import make_phantom, write_phantom  # noqa: E402


def _request(organ: str, case: Path, out: Path, steps: int | None) -> DetectRequest:
    images = ([str(case / f"{c}.nii.gz") for c in ("t1n", "t1c", "t2w", "t2f")] if organ == "brain"
              else [str(case / "ct.nii.gz")])
    return DetectRequest(images=tuple(images), out=str(out), bundle=str(resources_dir() / "Models" / f"{organ}-demo"),
                         totalseg=str(case / "segmentations"), settings={"steps": steps, "device": "cpu"},
                         overview=False, overwrite=True)


def _timed(client: WorkerClient) -> tuple[float, float]:
    """Wall seconds from sending the request to the result, and the run's own timings total."""
    t0 = time.perf_counter()
    client.start()
    code = client.wait(900)
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"worker failed ({code}): {client.error or client.stderr_lines[-5:]}")
    return wall, sum(client.result["timings_s"].values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("build/worker-times"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, nargs="+", default=[50, 20])
    p.add_argument("--organs", nargs="+", default=["kidney", "liver", "brain"])
    args = p.parse_args(argv)
    rows: dict[str, dict] = {}
    for organ in args.organs:
        case = args.work / f"{organ}-case"
        if not (case / "case.json").is_file():
            write_phantom(make_phantom(organ, seed=1000), case)
        for r in range(args.rounds):
            for steps in args.steps:
                for how in ("cold", "spare"):
                    client = WorkerClient(preload=how == "spare")
                    if how == "spare":
                        client.spawn()
                        while not client.ready:  # the user is reading the previous result meanwhile
                            if not client.running:
                                raise SystemExit(f"the spare worker ended: {client.stderr_lines[-5:]}")
                            time.sleep(0.05)
                    client.assign(_request(organ, case, args.work / f"out-{organ}-{how}", steps))
                    wall, own = _timed(client)
                    row = rows.setdefault(f"{organ} {steps} {how}", {"wall_s": [], "timings_s": []})
                    row["wall_s"].append(round(wall, 2))
                    row["timings_s"].append(round(own, 2))
                    print(f"round {r + 1}: {organ}-demo, {steps} steps, {how}: {wall:.2f} s (run {own:.2f} s)",
                          flush=True)
    print(f"\nmedians of {args.rounds} rounds (s): bundle, steps, cold worker wall / its run's own time, "
          "spare worker wall / own")
    for organ in args.organs:
        for steps in args.steps:
            cold, spare = rows[f"{organ} {steps} cold"], rows[f"{organ} {steps} spare"]
            med = {k: {m: statistics.median(v[m]) for m in v} for k, v in (("cold", cold), ("spare", spare))}
            print(f"{organ}-demo {steps:>3} steps: cold {med['cold']['wall_s']:6.2f} / {med['cold']['timings_s']:6.2f}"
                  f"   spare {med['spare']['wall_s']:6.2f} / {med['spare']['timings_s']:6.2f}")
    (args.work / "times.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
