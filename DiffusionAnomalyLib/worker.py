"""The background worker: one run in a child process, speaking line-oriented JSON on stdout (DESIGN.md §5).

    python -m DiffusionAnomalyLib.worker run --bundle B --input ct.nii.gz --totalseg seg/ --out OUT [...]
    python -m DiffusionAnomalyLib.worker baseline --organ kidney --input ct.nii.gz --mask m.nrrd --out OUT

Arguments are those of ``diffusion-anomaly run`` / ``baseline``. Each stdout line is one JSON object
with an ``event`` key:

- ``started``: ``pid``, ``version``, ``command``
- ``progress``: ``stage`` (extract, reconstruct, compose, postprocess, write), ``step``, ``total``,
  ``fraction`` (0..1, never decreasing), ``eta_s``
- ``log`` / ``warning``: ``message``
- ``result``: ``outputs`` (name -> path), ``lesions`` (the lesion table rows), ``threshold``,
  ``timings_s``, ``device``
- ``error``: ``code`` (stable: bad_input, organ_missing, bad_model, missing_dependency,
  out_of_memory, cancelled, internal_error), ``message``, ``exit_code``

Exit codes: 0 ok, 2 bad input, 3 missing or bad model, 4 out of memory, 5 cancelled,
6 missing dependency, 1 internal error. SIGTERM cancels: the staging folder is removed, so the
output folder never holds half results. Human-readable output goes to stderr. ``DA_MEMORY_LIMIT_GB``
caps the worker's address space: a run that needs more fails with ``out_of_memory`` (exit 4) instead
of the operating system killing it (which the client reports as "killed by signal 9 (out of memory?)").
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence

from . import __version__
from .errors import CancelledError, DiffusionAnomalyError, OutOfMemoryError

#: Share of the whole run each stage takes, for the overall fraction (reconstruction dominates).
STAGE_WEIGHTS = {"extract": 0.05, "reconstruct": 0.8, "compose": 0.05, "postprocess": 0.05, "write": 0.05}


class EventWriter:
    """Writes protocol events to the real stdout; keeps the overall fraction non-decreasing."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.t0 = time.perf_counter()
        self.fraction = 0.0

    def emit(self, event: str, **fields) -> None:
        self.stream.write(json.dumps({"event": event, **fields}, default=str) + "\n")
        self.stream.flush()

    def progress(self, stage: str, step: int, total: int) -> None:
        order = list(STAGE_WEIGHTS)
        start = sum(STAGE_WEIGHTS[s] for s in order[: order.index(stage)])
        f = min(1.0, start + STAGE_WEIGHTS[stage] * (step / max(total, 1)))
        self.fraction = max(self.fraction, f)
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.fraction * (1 - self.fraction) if self.fraction > 0 else None
        self.emit("progress", stage=stage, step=step, total=total, fraction=round(self.fraction, 4),
                  eta_s=None if eta is None else round(eta, 1))


#: Substrings of RuntimeError messages that mean an allocation failed (PyTorch CUDA/CPU, ITK, C++).
OOM_MARKERS = ("out of memory", "failed to allocate memory", "bad_alloc", "defaultcpuallocator: can't allocate")


def limit_memory(gb: float) -> None:
    """Cap this process's address space at ``gb`` GiB, so an oversized run fails with ``out_of_memory``
    (exit 4) instead of being killed by the operating system (Linux/macOS; ``DA_MEMORY_LIMIT_GB``)."""
    import resource

    limit = int(gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _on_sigterm(signum, frame) -> None:
    raise CancelledError("cancelled by the user (SIGTERM); no results were written")


def _run_job(args, events: EventWriter) -> dict:
    from .job import run_job

    outcome = run_job(args, progress=events.progress)
    if outcome.demo_bundle:
        events.emit("warning", message="DEMO bundle trained on synthetic phantoms: its findings on real scans "
                                       "mean nothing")
    for w in outcome.result.warnings:
        events.emit("warning", message=w)
    outputs = {p.name: str(p) for p in sorted(outcome.out.iterdir()) if not p.name.startswith(".")}
    return {"outputs": outputs, "lesions": [le.to_row() for le in outcome.result.table],
            "threshold": outcome.result.threshold, "device": outcome.device,
            "timings_s": {k: round(v, 3) for k, v in outcome.result.timings.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import build_parser

    events = EventWriter()
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # anything printed by libraries goes to stderr, not into the protocol
    events.stream = real_stdout
    signal.signal(signal.SIGTERM, _on_sigterm)
    if os.environ.get("DA_MEMORY_LIMIT_GB"):
        limit_memory(float(os.environ["DA_MEMORY_LIMIT_GB"]))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        events.emit("error", code="bad_input", message="invalid worker arguments (see stderr)", exit_code=2)
        return int(exc.code or 2)
    if args.command not in ("run", "baseline"):
        events.emit("error", code="bad_input", message=f"the worker runs 'run' or 'baseline', not {args.command!r}",
                    exit_code=2)
        return 2
    events.emit("started", pid=os.getpid(), version=__version__, command=args.command)
    try:
        try:
            result = _run_job(args, events)
        except MemoryError as exc:
            raise OutOfMemoryError(_oom_message(exc)) from exc
        except RuntimeError as exc:
            if any(k in str(exc).lower() for k in OOM_MARKERS):
                raise OutOfMemoryError(_oom_message(exc)) from exc
            raise
        events.emit("result", **result)
        return 0
    except DiffusionAnomalyError as exc:
        events.emit("error", code=exc.code, message=str(exc), exit_code=exc.exit_code)
        return exc.exit_code
    except Exception as exc:  # anything else is our bug: report it, with the traceback on stderr
        traceback.print_exc(file=sys.stderr)
        events.emit("error", code="internal_error", message=f"{type(exc).__name__}: {exc}", exit_code=1)
        return 1
    finally:
        sys.stdout = real_stdout


def _oom_message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return (f"out of memory ({type(exc).__name__}: {text}). Try --device cpu if the GPU is small, close other "
            "programs using the memory, raise DA_MEMORY_LIMIT_GB if it is set, or use a bundle with a smaller "
            "network, a coarser spacing or a smaller ROI")


if __name__ == "__main__":
    sys.exit(main())
