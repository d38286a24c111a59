"""The background worker: one run in a child process, speaking line-oriented JSON on stdout (docs/worker.md).

    python -m DiffusionAnomalyLib.app.worker run --bundle B --input ct.nii.gz --totalseg seg/ --out OUT [...]
    python -m DiffusionAnomalyLib.app.worker baseline --organ kidney --input ct.nii.gz --mask m.nrrd --out OUT

Arguments are those of ``diffusion-anomaly run`` / ``baseline``. Each stdout line is one JSON object
with an ``event`` key:

- ``started``: ``pid``, ``version``, ``command``
- ``progress``: ``stage`` (extract, reconstruct, compose, postprocess, write), ``step``, ``total``,
  ``fraction`` (0..1, never decreasing), ``eta_s``
- ``log`` / ``warning``: ``message``
- ``result``: ``outputs`` (name -> path), ``lesions`` (the lesion table rows), ``threshold``,
  ``timings_s``, ``device``
- ``error``: ``code`` (stable: bad_input, organ_missing, output_not_writable, bad_model,
  missing_dependency, out_of_memory, cancelled, internal_error), ``message`` (one line naming the
  file or option and the problem), ``exit_code``

Exit codes (``errors.classify`` maps every exception, not only the project's own):

====  ===========================================  ==========================================
exit  code                                         when
====  ===========================================  ==========================================
0     (result event)                               success
2     bad_input, organ_missing, output_not_writable  bad input/arguments; ``--out`` refused
                                                   (holds an input, earlier result without
                                                   ``--overwrite``, not writable, disk full)
3     bad_model                                    bundle missing, corrupt, pickled, manifest
4     out_of_memory                                any allocation failure, ``DA_MEMORY_LIMIT_GB``
5     cancelled                                    SIGTERM (or SIGINT)
6     missing_dependency                           TotalSegmentator or its weights absent
1     internal_error                               a bug (traceback on stderr)
====  ===========================================  ==========================================

An ``error`` event always precedes a non-zero exit (an 8 MB reserve is freed and a pre-formatted
``out_of_memory`` line is written if even formatting the error fails); only a kill from outside
(SIGKILL; the client reports ``killed``) ends the worker without one. SIGTERM cancels: the staging
folder is removed, so the output folder never holds half results, and a later run removes the
staging folder a killed run left. ``--overwrite`` (as for ``run``) replaces an earlier result set in a
user folder. Human-readable output goes to stderr. ``DA_MEMORY_LIMIT_GB``
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

from DiffusionAnomalyLib import __version__
from DiffusionAnomalyLib.errors import EXIT_OUT_OF_MEMORY, InputError, classify, oom_message, raise_cancelled

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


def limit_memory(gb: float) -> None:
    """Cap this process's address space at ``gb`` GiB, so an oversized run fails with ``out_of_memory``
    (exit 4) instead of being killed by the operating system (Linux/macOS; ``DA_MEMORY_LIMIT_GB``)."""
    import resource

    limit = int(gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _run_job(args, events: EventWriter) -> dict:
    from DiffusionAnomalyLib.app.job import run_job

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
    import contextlib
    import io

    from DiffusionAnomalyLib.app.cli import build_parser

    events = EventWriter()
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # anything printed by libraries goes to stderr, not into the protocol
    events.stream = real_stdout
    signal.signal(signal.SIGTERM, raise_cancelled)
    # Written as it is if even formatting an error fails (e.g. at the memory cap): the client always gets one.
    fallback = (json.dumps({"event": "error", "code": "out_of_memory", "message": oom_message(MemoryError()),
                            "exit_code": EXIT_OUT_OF_MEMORY}) + "\n").encode()
    reserve = bytearray(8 << 20)  # freed on failure, so reporting has memory to work with
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or bool(os.environ.get("DA_DEBUG"))
    try:
        if os.environ.get("DA_MEMORY_LIMIT_GB"):
            try:
                limit_memory(float(os.environ["DA_MEMORY_LIMIT_GB"]))
            except ValueError:
                raise InputError(f"DA_MEMORY_LIMIT_GB={os.environ['DA_MEMORY_LIMIT_GB']!r}: expected a number of "
                                 "GiB") from None
        parser = build_parser()
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                args = parser.parse_args(argv)
        except SystemExit as exc:
            text = captured.getvalue()
            sys.stderr.write(text)
            if exc.code in (0, None):
                return 0
            last = [ln for ln in text.strip().splitlines() if ln.strip()]
            raise InputError("invalid worker arguments: " + (last[-1] if last else "see stderr")) from None
        if args.command not in ("run", "baseline"):
            raise InputError(f"the worker runs 'run' or 'baseline', not {args.command!r}")
        events.emit("started", pid=os.getpid(), version=__version__, command=args.command)
        from DiffusionAnomalyLib import logs

        with logs.attached(logs.EventHandler(events.emit)):  # library log records become log/warning events
            result = _run_job(args, events)
        events.emit("result", **result)
        return 0
    except BaseException as exc:  # noqa: BLE001 - the client always gets an error event and a documented code
        del reserve
        try:
            code, name, message = classify(exc)
            if debug or name == "internal_error":
                traceback.print_exception(exc, file=sys.stderr)
            events.emit("error", code=name, message=message, exit_code=code)
            return code
        except BaseException:  # noqa: BLE001
            with contextlib.suppress(BaseException):
                os.write(real_stdout.fileno(), fallback)
            return EXIT_OUT_OF_MEMORY
    finally:
        sys.stdout = real_stdout


if __name__ == "__main__":
    sys.exit(main())
