"""The background worker: one detection in a child process, speaking line-oriented JSON on stdout (docs/worker.md).

    python -m DiffusionAnomalyLib.app.worker < request.json

It reads one JSON object from stdin, ``{"job": "detect", "request": {...},
"memory_limit_gb": null, "debug": false}``. ``job`` ``detect`` (the default): ``request`` is a
:class:`~DiffusionAnomalyLib.api.DetectRequest` (``to_json``), run by :func:`~DiffusionAnomalyLib.api.detect`;
``synthesize``: a :class:`~DiffusionAnomalyLib.synthesis.synthesize.SynthesisRequest`, run by
:func:`~DiffusionAnomalyLib.synthesis.synthesize.synthesize`. Each stdout line is one JSON object with an ``event``
key:

- ``ready`` (only with ``--preload``, before the request is read): ``pid``, ``preload_s``, ``preloaded`` (false when
  the model code could not be imported: the job then reports why, as without ``--preload``)
- ``started``: ``pid``, ``version``, ``command`` (run, baseline or synthesize)
- ``progress``: ``stage`` (extract, reconstruct, compose, postprocess, write; a synthesis: synthesize), ``step``,
  ``total``, ``fraction`` (0..1, never decreasing), ``eta_s``
- ``log`` / ``warning``: ``message``
- ``result``: ``outputs`` (name -> path), ``lesions`` (the lesion table rows), ``threshold``,
  ``timings_s``, ``device``; a synthesis: ``out`` and ``cases`` (per variant: ``folder``, ``images``
  (channel -> path), ``lesions`` (the lesion label file), ``record`` (its ``synthesis.json``))
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
4     out_of_memory                                any allocation failure, ``memory_limit_gb``
5     cancelled                                    SIGTERM (or SIGINT)
6     missing_dependency                           TotalSegmentator or its weights absent
1     internal_error                               a bug (traceback on stderr)
====  ===========================================  ==========================================

An ``error`` event always precedes a non-zero exit (an 8 MB reserve is freed and a pre-formatted
``out_of_memory`` line is written if even formatting the error fails); only a kill from outside
(SIGKILL; the client reports ``killed``) ends the worker without one. SIGTERM cancels: the staging
folder is removed, so the output folder never holds half results, and a later run removes the
staging folder a killed run left. ``--overwrite`` (as for ``run``) replaces an earlier result set in a
user folder. Human-readable output goes to stderr. ``memory_limit_gb``
caps the worker's address space: a run that needs more fails with ``out_of_memory`` (exit 4) instead
of the operating system killing it (which the client reports as "killed by signal 9 (out of memory?)").

Its only argument, ``--preload``, makes a *spare* worker (:class:`~DiffusionAnomalyLib.app.client.SpareWorker`):
it imports the model code (torch, MONAI, the networks and samplers: seconds) first, says ``ready``, and only then
waits for its request, so a client that starts it ahead of time pays none of that when the request comes. Still
one job per process: cancelling, the memory cap and every exit code are as above.
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
from DiffusionAnomalyLib.options import json_repr
from DiffusionAnomalyLib.progress import overall

#: The most a request on stdin may hold (it names files; it never holds data).
MAX_REQUEST_BYTES = 1 << 20
#: The largest address-space cap a request may ask for (GiB): more means no cap, and cannot be set as one.
MAX_MEMORY_LIMIT_GB = 1 << 20


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
        self.fraction = max(self.fraction, overall(stage, step, total))
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.fraction * (1 - self.fraction) if self.fraction > 0 else None
        self.emit("progress", stage=stage, step=step, total=total, fraction=round(self.fraction, 4),
                  eta_s=None if eta is None else round(eta, 1))


def limit_memory(gb: float) -> None:
    """Cap this process's address space at ``gb`` GiB, so an oversized run fails with ``out_of_memory``
    (exit 4) instead of being killed by the operating system (Linux/macOS; the request's ``memory_limit_gb``)."""
    import resource

    limit = int(gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _detect(request, events: EventWriter) -> dict:
    from DiffusionAnomalyLib.api import detect

    found = detect(request, progress=events.progress)
    if found.demo_bundle:
        events.emit("warning", message="DEMO bundle trained on synthetic phantoms: its findings on real scans "
                                       "mean nothing")
    for w in found.result.warnings:
        events.emit("warning", message=w)
    outputs = {p.name: str(p) for p in sorted(found.out.iterdir()) if not p.name.startswith(".")}
    return {"outputs": outputs, "lesions": [le.to_row() for le in found.result.table],
            "threshold": found.result.threshold, "device": found.device,
            "timings_s": {k: round(v, 3) for k, v in found.result.timings.items()}}


def _synthesize(request, events: EventWriter) -> dict:
    from DiffusionAnomalyLib.synthesis.synthesize import synthesize

    found = synthesize(request, progress=events.progress)
    channels = found.records[0]["channels"] if found.records else []
    cases = [{"folder": str(folder), "images": {ch: str(folder / f"{ch}.nii.gz") for ch in channels},
              "lesions": str(folder / "lesions.nii.gz"), "record": record}
             for folder, record in zip(found.cases, found.records, strict=True)]
    return {"out": str(found.out), "cases": cases}


#: The worker's jobs: the request type's module and class, and what runs it.
JOBS = {"detect": ("DiffusionAnomalyLib.api", "DetectRequest", _detect),
        "synthesize": ("DiffusionAnomalyLib.synthesis.synthesize", "SynthesisRequest", _synthesize)}


def read_message(stream) -> tuple[str, object, float | None, bool]:
    """The job, the request, the memory limit and the debug flag from the JSON object on ``stream`` (bytes),
    checked."""
    import importlib

    from DiffusionAnomalyLib.imaging.outputs import parse_json

    raw = stream.read(MAX_REQUEST_BYTES + 1)
    if len(raw) > MAX_REQUEST_BYTES:
        raise InputError(f"the worker's request on stdin is over {MAX_REQUEST_BYTES} bytes")
    if not raw.strip():
        raise InputError("the worker takes a JSON request on stdin (docs/worker.md) and got none")
    data = parse_json(raw, "the worker's request (stdin)")
    known = {"job", "request", "memory_limit_gb", "debug"}
    if not isinstance(data, dict) or set(data) - known or "request" not in data:
        raise InputError("the worker's request (stdin): expected {\"job\": ..., \"request\": {...}, "
                         "\"memory_limit_gb\": ..., \"debug\": ...}")
    job = data.get("job", "detect")
    if not isinstance(job, str) or job not in JOBS:
        raise InputError(f"the worker's request (stdin): unknown job {json_repr(job)}; choose one of {', '.join(JOBS)}")
    limit, debug = data.get("memory_limit_gb"), data.get("debug", False)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float) or
                              not 0 < limit <= MAX_MEMORY_LIMIT_GB):
        raise InputError(f"the worker's request (stdin): memory_limit_gb must be a number of GiB > 0 and <= "
                         f"{MAX_MEMORY_LIMIT_GB} (got {json_repr(limit)})")
    if not isinstance(debug, bool):
        raise InputError(f"the worker's request (stdin): debug must be true or false (got {debug!r})")
    module, name, _ = JOBS[job]
    request_type = getattr(importlib.import_module(module), name)
    return job, request_type.from_json(data["request"], "the worker's request (stdin)"), limit, debug


#: What ``--preload`` imports before the request comes: the model code every detection loads (torch and MONAI
#: with it). A lesion synthesis by ``paste`` needs none of it and just runs.
PRELOAD_MODULES = ("DiffusionAnomalyLib.api", "DiffusionAnomalyLib.models.reconstruction",
                   "DiffusionAnomalyLib.detection.pipeline")


def preload(events: EventWriter) -> None:
    """Import :data:`PRELOAD_MODULES` and emit ``ready``. An import that fails is left to the job (which names the
    missing dependency as it would without a preload)."""
    import importlib

    t0 = time.perf_counter()
    try:
        for name in PRELOAD_MODULES:
            importlib.import_module(name)
        ok = True
    except ImportError:
        ok = False
    events.emit("ready", pid=os.getpid(), preload_s=round(time.perf_counter() - t0, 3), preloaded=ok)


def main(argv: Sequence[str] | None = None, stdin=None) -> int:
    import contextlib

    events = EventWriter()
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # anything printed by libraries goes to stderr, not into the protocol
    events.stream = real_stdout
    signal.signal(signal.SIGTERM, raise_cancelled)
    # Written as it is if even formatting an error fails (e.g. at the memory cap): the client always gets one.
    fallback = (json.dumps({"event": "error", "code": "out_of_memory", "message": oom_message(MemoryError()),
                            "exit_code": EXIT_OUT_OF_MEMORY}) + "\n").encode()
    reserve = bytearray(8 << 20)  # freed on failure, so reporting has memory to work with
    debug = bool(os.environ.get("DA_DEBUG"))
    try:
        args = list(sys.argv[1:] if argv is None else argv)
        if args and args != ["--preload"]:
            raise InputError(f"the worker takes no arguments but --preload (got {' '.join(args)[:80]}); it reads a "
                             "JSON request on stdin (docs/worker.md)")
        if args:
            preload(events)
        job, request, limit, asked = read_message(stdin if stdin is not None else sys.stdin.buffer)
        debug = debug or asked
        if limit is not None:
            limit_memory(float(limit))
        events.emit("started", pid=os.getpid(), version=__version__, command=request.command)
        from DiffusionAnomalyLib import logs

        with logs.attached(logs.EventHandler(events.emit)):  # library log records become log/warning events
            result = JOBS[job][2](request, events)
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
