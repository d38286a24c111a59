"""Client for the background worker: start it, poll its events without blocking, cancel, wait.

The Slicer module polls :meth:`WorkerClient.poll_events` from a timer, so the GUI never blocks. The worker's
stdout and stderr are pipes read **without threads**: they are non-blocking and drained in :meth:`poll_events`
(Slicer's PythonQt keeps the GIL while Qt processes events, so a reader thread would advance only while Python
code runs; a non-blocking read needs no hand-off). The worker runs in its own process group (no console window on
Windows). :meth:`request_cancel` asks it to stop without waiting (POSIX: SIGTERM to the group; the worker removes
its staging folder and exits with code 5; Windows: ``taskkill /T /F`` ends the worker and every process it started,
e.g. TotalSegmentator's, since a console-less child cannot get CTRL_BREAK); :meth:`kill` ends it at once;
:meth:`cancel` does both with a grace period, blocking (for scripts; the panel polls instead).

``env`` is the child's whole environment. Inside Slicer it must be chosen by the caller: Slicer's own interpreter
keeps Slicer's (launcher) environment, any other interpreter gets ``slicer.util.startupEnvironment()`` (without the
launcher's ``PYTHONHOME``/``PYTHONPATH``, which would make it load Slicer's standard library).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from DiffusionAnomalyLib.errors import (
    EXIT_BAD_INPUT,
    EXIT_CANCELLED,
    EXIT_MISSING_DEPENDENCY,
    EXIT_MISSING_MODEL,
    EXIT_OUT_OF_MEMORY,
    CancelledError,
    DiffusionAnomalyError,
    InputError,
    MissingDependencyError,
    OutOfMemoryError,
    WorkerKilledError,
)

_EXCEPTIONS = {EXIT_BAD_INPUT: InputError, EXIT_OUT_OF_MEMORY: OutOfMemoryError, EXIT_CANCELLED: CancelledError,
               EXIT_MISSING_DEPENDENCY: MissingDependencyError}


class WorkerClient:
    """One worker run of ``request`` (a :class:`~DiffusionAnomalyLib.api.DetectRequest`, or a
    :class:`~DiffusionAnomalyLib.synthesis.synthesize.SynthesisRequest`: the ``synthesize`` job), sent as JSON on the
    worker's stdin with ``memory_limit_gb`` (cap the worker's address space: an oversized run then fails with
    ``out_of_memory``) and ``debug`` (tracebacks on its stderr).

    ``python`` is the interpreter that has the dependencies (default: this one; Slicer users with a
    separate GPU environment point it there). ``preload``: :meth:`spawn` starts the worker with ``--preload``, so it
    imports the model code before the request is :meth:`assign`-ed (a spare, :class:`SpareWorker`; ``request`` may
    then be None until :meth:`assign`).
    """

    def __init__(self, request=None, python: str | None = None, env: dict | None = None,
                 memory_limit_gb: float | None = None, debug: bool = False, preload: bool = False) -> None:
        self.message: bytes | None = None
        self.preload = preload
        self.python = python or sys.executable
        self.env = dict(env if env is not None else os.environ)
        lib_parent = str(Path(__file__).resolve().parents[2])
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (lib_parent, self.env.get("PYTHONPATH", "")) if p)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.process: subprocess.Popen | None = None
        self._events: list[dict] = []
        self.stderr_lines: list[str] = []
        self.result: dict | None = None
        self.error: dict | None = None
        self._pending = {"stdout": b"", "stderr": b""}  # bytes after the last complete line
        self._open = {"stdout": False, "stderr": False}  # not yet read to the end
        self._ready = False
        if request is not None:
            self.assign(request, memory_limit_gb, debug)

    def assign(self, request, memory_limit_gb: float | None = None, debug: bool = False) -> None:
        """The job this worker will run (before :meth:`start`; a spare gets its request here)."""
        if self.process is not None and self.process.stdin.closed:
            raise RuntimeError("this worker already has its request; make a new WorkerClient for another run")
        job = "synthesize" if request.command == "synthesize" else "detect"
        self.message = json.dumps({"job": job, "request": request.to_json(), "memory_limit_gb": memory_limit_gb,
                                   "debug": debug}).encode()

    def spawn(self) -> None:
        """Start the worker process without sending the request (:meth:`start` sends it); with ``preload`` it
        imports the model code meanwhile and says ``ready``."""
        if self.process is not None:
            raise RuntimeError("this worker was already started; make a new WorkerClient for another run")
        kwargs = {"start_new_session": True} if os.name == "posix" else {  # pragma: no cover - Windows
            "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}  # type: ignore
        self.process = subprocess.Popen(
            [self.python, "-m", "DiffusionAnomalyLib.app.worker", *(["--preload"] if self.preload else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, shell=False,
            bufsize=0, **kwargs)
        for name in self._open:
            os.set_blocking(getattr(self.process, name).fileno(), False)  # Windows pipes too, from Python 3.12
            self._open[name] = True

    def start(self) -> None:
        """Send the request (spawning the worker first unless it is a spare already running)."""
        if self.message is None:
            raise RuntimeError("the worker has no request yet: assign() one first")
        if self.process is None:
            self.spawn()
        elif self.process.stdin.closed:
            raise RuntimeError("this worker was already started; make a new WorkerClient for another run")
        try:  # the request is small (file names and settings): it fits the pipe's buffer, so this never blocks
            self.process.stdin.write(self.message)
        except (BrokenPipeError, OSError):
            pass  # the worker is gone already: its exit code and stderr tell why
        finally:
            with contextlib.suppress(OSError):
                self.process.stdin.close()

    @property
    def ready(self) -> bool:
        """A spare that has imported its model code and waits for its request (reads what is there, never blocks)."""
        if self.process is None or not self.running or self.process.stdin.closed:
            return False
        self._drain()
        return self._ready

    def close(self) -> None:
        """End a worker that is no longer wanted (a spare never used): close its stdin, so it exits, and kill it."""
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        for name in self._open:
            if self._open[name]:
                getattr(self.process, name).close()
                self._open[name] = False

    def _drain(self) -> None:
        """Read what the worker has written so far, without blocking; complete lines become events."""
        for name, is_open in self._open.items():
            if not is_open:
                continue
            fd = getattr(self.process, name).fileno()
            chunks = [self._pending[name]]
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except (BlockingIOError, InterruptedError):
                    break
                if not chunk:  # end of file: the worker (and every process holding the pipe) has closed it
                    self._open[name] = False
                    getattr(self.process, name).close()
                    break
                chunks.append(chunk)
            data = b"".join(chunks)
            *lines, rest = data.split(b"\n")
            if not self._open[name] and rest:
                lines, rest = [*lines, rest], b""
            self._pending[name] = rest
            for raw in lines:
                line = raw.decode("utf-8", errors="replace")
                if name == "stdout":
                    self._line_out(line)
                else:
                    self.stderr_lines.append(line.rstrip("\r"))

    def _line_out(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = {"event": "log", "message": line}
        if not isinstance(event, dict):
            event = {"event": "log", "message": line}
        if event.get("event") == "ready":
            self._ready = True
        if event.get("event") == "result":
            self.result = event
        elif event.get("event") == "error":
            self.error = event
        self._events.append(event)

    def poll_events(self) -> list[dict]:
        """All events received since the last call (never blocks)."""
        if self.process is not None:
            self._drain()
        out, self._events = self._events, []
        return out

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def output_closed(self) -> bool:
        """True once the worker's stdout and stderr have been read to the end (reads what is there, never blocks)."""
        if self.process is not None:
            self._drain()
        return not any(self._open.values())

    def request_cancel(self) -> None:
        """Ask the worker to stop and return at once (POSIX: SIGTERM to its process group)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """End the worker and its process group at once (SIGKILL); returns without waiting."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        """``sig`` to the worker's process group (Windows: terminate or kill the process)."""
        if not self.running:
            return
        if os.name == "posix":
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
        else:  # pragma: no cover - Windows: the whole tree (TotalSegmentator's children too), then the worker
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["taskkill", "/PID", str(self.process.pid), "/T", "/F"], shell=False,
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
                               creationflags=subprocess.CREATE_NO_WINDOW)  # type: ignore[attr-defined]
            with contextlib.suppress(OSError):
                self.process.kill()

    def cancel(self, grace_s: float = 10.0) -> None:
        """Stop the worker, blocking: :meth:`request_cancel`, then :meth:`kill` if it has not exited after
        ``grace_s``."""
        if not self.running:
            return
        self.request_cancel()
        try:
            self.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.kill()
            self.wait()

    def wait(self, timeout: float | None = None, drain_s: float = 5.0) -> int:
        """Wait for the worker to exit and for its output to be read (at most ``drain_s`` more: a grandchild that
        keeps the pipes open cannot hold it up); returns the exit code. Events stay for :meth:`poll_events`."""
        t_end = None if timeout is None else time.monotonic() + timeout
        while self.process.poll() is None:  # reading while waiting: a full pipe would block the worker
            self._drain()
            if t_end is not None and time.monotonic() > t_end:
                raise subprocess.TimeoutExpired(self.process.args, timeout)
            time.sleep(0.02)
        t_drain = time.monotonic() + drain_s
        while not self.output_closed and time.monotonic() < t_drain:
            time.sleep(0.02)
        return self.process.returncode

    def raise_for_status(self) -> dict:
        """The result event on success; otherwise the matching exception with the worker's message."""
        code = self.process.returncode if self.process else None
        if code == 0 and self.result is not None:
            return self.result
        if code is not None and code < 0:
            raise WorkerKilledError(f"the worker was killed by signal {-code}"
                                    + (" (out of memory?)" if -code == signal.SIGKILL else ""))
        message = (self.error or {}).get("message") or "\n".join(self.stderr_lines[-5:]) or f"exit code {code}"
        if code == EXIT_MISSING_MODEL:
            from DiffusionAnomalyLib.models.bundle import BundleError

            raise BundleError(message)
        raise _EXCEPTIONS.get(code, DiffusionAnomalyError)(message)


class SpareWorker:
    """At most one worker started ahead of time (``--preload``), so that the next run does not wait for the model
    code to import (seconds per run; docs/performance.md). Still one job per process: :meth:`take` hands the spare
    over to a run, and :meth:`refill` starts the next one, when the previous run has ended.

    A spare is tied to the interpreter and environment it was started with; :meth:`take` for others, or a spare
    that has died, gives None (the caller starts a worker as usual). :meth:`close` ends it (the panel's cleanup);
    a spare whose parent dies reads the end of its stdin and exits by itself.
    """

    def __init__(self) -> None:
        self.client: WorkerClient | None = None
        self._key: tuple | None = None

    @staticmethod
    def _key_of(python: str | None, env: dict | None) -> tuple:
        return python or sys.executable, tuple(sorted((env if env is not None else os.environ).items()))

    def refill(self, python: str | None = None, env: dict | None = None) -> None:
        """Start a spare for ``python`` and ``env`` unless a live one is waiting for them already."""
        key = self._key_of(python, env)
        if self.client is not None and self.client.running and self._key == key:
            return
        self.close()
        self.client = WorkerClient(python=python, env=env, preload=True)
        self.client.spawn()
        self._key = key

    def take(self, request, python: str | None = None, env: dict | None = None,
             memory_limit_gb: float | None = None, debug: bool = False) -> WorkerClient | None:
        """The spare, given ``request`` (not yet started: call its ``start``), if one is alive for ``python`` and
        ``env``; else None. Either way the caller owns what it gets, and no spare is left."""
        client, key = self.client, self._key
        self.client = self._key = None
        if client is None:
            return None
        if not client.running or key != self._key_of(python, env):
            client.close()
            return None
        client.assign(request, memory_limit_gb, debug)
        return client

    def close(self) -> None:
        """End the spare, if any."""
        if self.client is not None:
            self.client.close()
        self.client = self._key = None
