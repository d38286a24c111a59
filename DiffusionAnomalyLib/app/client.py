"""Client for the background worker: start it, poll its events without blocking, cancel, wait.

The Slicer module polls :meth:`WorkerClient.poll_events` from a timer, so the GUI never blocks.
The worker runs in its own process group (no console window on Windows). :meth:`request_cancel`
asks it to stop without waiting (POSIX: SIGTERM to the group; the worker removes its staging folder
and exits with code 5; Windows: the process is terminated, since a console-less child cannot get
CTRL_BREAK); :meth:`kill` ends it at once; :meth:`cancel` does both with a grace period, blocking
(for scripts; the panel polls instead).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
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
    """One worker run. ``args`` are the worker's arguments, e.g. ``["run", "--bundle", ...]``.

    ``python`` is the interpreter that has the dependencies (default: this one; Slicer users with a
    separate GPU environment point it there).
    """

    def __init__(self, args: Sequence[str], python: str | None = None, env: dict | None = None) -> None:
        self.args = [str(a) for a in args]
        self.python = python or sys.executable
        self.env = dict(env if env is not None else os.environ)
        lib_parent = str(Path(__file__).resolve().parents[2])
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (lib_parent, self.env.get("PYTHONPATH", "")) if p)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.process: subprocess.Popen | None = None
        self._events: queue.Queue = queue.Queue()
        self.stderr_lines: list[str] = []
        self.result: dict | None = None
        self.error: dict | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.process is not None:
            raise RuntimeError("this worker was already started; make a new WorkerClient for another run")
        kwargs = {"start_new_session": True} if os.name == "posix" else {  # pragma: no cover - Windows
            "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}  # type: ignore
        self.process = subprocess.Popen(
            [self.python, "-m", "DiffusionAnomalyLib.app.worker", *self.args], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
            env=self.env, shell=False, **kwargs)
        for target, stream in ((self._read_stdout, self.process.stdout), (self._read_stderr, self.process.stderr)):
            t = threading.Thread(target=target, args=(stream,), daemon=True)
            t.start()
            self._threads.append(t)

    def _read_stdout(self, stream) -> None:
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "log", "message": line}
            if event.get("event") == "result":
                self.result = event
            elif event.get("event") == "error":
                self.error = event
            self._events.put(event)

    def _read_stderr(self, stream) -> None:
        for line in stream:
            self.stderr_lines.append(line.rstrip("\n"))

    def poll_events(self) -> list[dict]:
        """All events received since the last call (never blocks)."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def output_closed(self) -> bool:
        """True once the worker's stdout and stderr have been read to the end."""
        return all(not t.is_alive() for t in self._threads)

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
        elif sig == signal.SIGKILL:  # pragma: no cover - Windows
            self.process.kill()
        else:  # pragma: no cover - Windows
            self.process.terminate()

    def cancel(self, grace_s: float = 10.0) -> None:
        """Stop the worker, blocking: :meth:`request_cancel`, then :meth:`kill` if it has not exited after
        ``grace_s``."""
        if not self.running:
            return
        self.request_cancel()
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.kill()
            self.process.wait()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the worker to exit and for its output to be read; returns the exit code."""
        code = self.process.wait(timeout)
        for t in self._threads:
            t.join(5)
        return code

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
