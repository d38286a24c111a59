"""One worker job started from a Slicer scene: the shared engine of a detection run (:mod:`.scene_run`) and a lesion
synthesis (:mod:`.synthesis_run`).

A :class:`WorkerRun` writes its inputs to a private temporary folder, starts the worker through
:class:`~DiffusionAnomalyLib.app.client.WorkerClient`, is polled (the panel polls from a timer, so the GUI never
blocks), and on success adds its results to the scene. Cancel, failure or a crash leave the scene as it was; the
temporary folder is always removed. Torch-free: it runs in Slicer's own process.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from DiffusionAnomalyLib.errors import CancelledError, DiffusionAnomalyError


def worker_environment(own: bool) -> dict[str, str]:
    """The environment of a child interpreter started from Slicer's process: Slicer's own (``own``) keeps the
    launcher's environment; any other gets ``slicer.util.startupEnvironment()``, the environment without the
    launcher's ``PYTHONHOME``/``PYTHONPATH``/library paths (outside Slicer: ``os.environ`` less those)."""
    from DiffusionAnomalyLib.app.dependencies import child_environment

    startup = None
    try:
        import slicer

        if hasattr(slicer, "app") and hasattr(slicer.app, "startupEnvironment"):
            startup = slicer.util.startupEnvironment
    except ImportError:
        pass
    return child_environment(own, startup)


class WorkerRun(ABC):
    """One worker job from scene nodes to results in the scene. Poll it until :attr:`finished`.

    Subclasses say what is wrong before anything is written (:meth:`_check`), write the inputs and build the
    worker's request (:meth:`_prepare`) and add a successful result to the scene (:meth:`_add_to_scene`).
    ``client_factory(request, python)`` makes the worker client (default: the real
    :class:`~DiffusionAnomalyLib.app.client.WorkerClient` on ``python`` (empty: this interpreter) in
    :func:`worker_environment` of ``own_python``). ``on_event(event)`` receives every worker event.
    :attr:`spare` (a :class:`~DiffusionAnomalyLib.app.client.SpareWorker`, used with the real worker only): the run
    takes its pre-started worker when it has one and starts the next spare when it has ended.
    """

    #: Pre-started workers to take from and refill (None: start a worker per run only).
    spare = None

    #: Seconds a cancelled worker gets to clean up before it is killed.
    CANCEL_GRACE_S = 10.0
    #: The temporary folder's name prefix.
    PREFIX = "da-slicer-run-"

    def __init__(self, scene, python: str = "", own_python: bool = True, client_factory: Callable | None = None,
                 on_event: Callable[[dict], None] | None = None) -> None:
        self.scene = scene
        self.python = python
        self.own_python = own_python
        self.client_factory = client_factory
        self.on_event = on_event or (lambda e: None)
        self.client = None
        self.tmp: Path | None = None
        self.error: DiffusionAnomalyError | None = None
        self.finished = False
        self.cancel_requested_at: float | None = None
        self._exited_at: float | None = None  # when poll first saw the worker gone
        self._env: dict[str, str] | None = None  # the real worker's environment (for the next spare)
        #: temporary file -> what the user knows it as, for the worker's messages (they name the files it read)
        self.aliases: dict[str, str] = {}

    # -- what a job defines ------------------------------------------------------------------------------------------
    @abstractmethod
    def _check(self) -> None:
        """Raise :class:`~DiffusionAnomalyLib.errors.InputError` when the job cannot start (nothing written yet)."""

    @abstractmethod
    def _prepare(self, tmp: Path):
        """Write the inputs into ``tmp``; return the worker's request."""

    @abstractmethod
    def _add_to_scene(self, result: dict) -> None:
        """Add a successful result to the scene; on failure undo what was added and raise."""

    def _write_inputs(self, tmp: Path, nodes: list, mask_segmentation, mask_segment_ids: list[str]
                      ) -> tuple[list[Path], Path | None]:
        """The volume nodes as ``tmp/input<i>.nii.gz`` and, when ``mask_segmentation`` is given, its organ segments as
        one label ``tmp/mask.nii.gz`` on the first volume's grid (the worker splits paired organs itself)."""
        from DiffusionAnomalyLib.imaging.io import write_volume
        from DiffusionAnomalyLib.slicer_module import scene as adapter

        images = [write_volume(adapter.image_from_volume_node(node), tmp / f"input{i}.nii.gz", compress=False)
                  for i, node in enumerate(nodes)]
        if mask_segmentation is None:
            return images, None
        organ = adapter.mask_from_segments(self.scene, mask_segmentation, mask_segment_ids, nodes[0])
        return images, write_volume(organ > 0, tmp / "mask.nii.gz", compress=False)

    # -- the engine --------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Check the inputs, write them to a private temporary folder and start the worker.

        Raises :class:`~DiffusionAnomalyLib.errors.InputError` (nothing started, nothing in the scene) on bad input.
        """
        from DiffusionAnomalyLib.app.client import WorkerClient

        self._check()
        self.tmp = Path(tempfile.mkdtemp(prefix=self.PREFIX))
        try:
            request = self._prepare(self.tmp)
            env = worker_environment(self.own_python)
            if self.client_factory is not None:
                self.client = self.client_factory(request, self.python)
            else:
                self._env = env
                taken = self.spare.take(request, self.python or None, env) if self.spare is not None else None
                self.client = taken or WorkerClient(request, python=self.python or None, env=env)
            self.client.start()
        except BaseException:
            self._cleanup()
            raise

    def poll(self) -> bool:
        """Forward new events; when the worker has exited and its output is read, finish the job. Never blocks.
        Returns True while running."""
        if self.finished or self.client is None:
            return False
        self._forward_events()
        if self.client.running:
            asked = self.cancel_requested_at
            if asked is not None and time.monotonic() - asked > self.CANCEL_GRACE_S:
                self.client.kill()
            return True
        if self._exited_at is None:
            self._exited_at = time.monotonic()
        if not self.client.output_closed and time.monotonic() - self._exited_at < 5.0:
            return True  # the pipes are still being drained
        self.client.wait(timeout=1.0)
        self._forward_events()
        if self.cancel_requested_at is not None:
            self._finish_cancelled()
        else:
            self._finish()
        return False

    def wait(self, timeout_s: float = 600.0, interval_s: float = 0.1) -> None:
        """Poll until the job ends (for scripts and tests; the panel polls from a timer instead)."""
        t_end = time.monotonic() + timeout_s
        while self.poll():
            if time.monotonic() > t_end:
                self.cancel()
                raise TimeoutError(f"the run did not finish within {timeout_s:.0f} s; it was cancelled")
            time.sleep(interval_s)

    def request_cancel(self) -> None:
        """Ask the worker to stop and return at once; keep polling until :attr:`finished` (nothing is added to the
        scene; the worker is killed if it has not stopped within :attr:`CANCEL_GRACE_S`)."""
        if self.client is not None and not self.finished and self.cancel_requested_at is None:
            self.cancel_requested_at = time.monotonic()
            self.client.request_cancel()

    def cancel(self, timeout_s: float = 30.0) -> None:
        """Stop the worker and wait until it has (scripts and tests; the panel uses :meth:`request_cancel`)."""
        self.request_cancel()
        t_end = time.monotonic() + timeout_s
        while self.poll() and time.monotonic() < t_end:
            time.sleep(0.02)

    def _finish_cancelled(self) -> None:
        try:
            self.client.raise_for_status()
            self.error = CancelledError("cancelled by the user; nothing was added to the scene")
        except CancelledError as exc:
            self.error = exc
        except DiffusionAnomalyError:  # killed after the grace period, or it failed while stopping
            self.error = CancelledError("cancelled by the user; nothing was added to the scene")
        finally:
            self.finished = True
            self._cleanup()

    def _forward_events(self) -> None:
        for event in self.client.poll_events():
            self.on_event(event)

    def _finish(self) -> None:
        try:
            self._add_to_scene(self.client.raise_for_status())
        except DiffusionAnomalyError as exc:
            text = str(exc)
            for path, name in self.aliases.items():
                text = text.replace(path, name)
            if text != str(exc):
                exc.args = (text, *exc.args[1:])
            self.error = exc
        except Exception as exc:  # adding to the scene failed: _add_to_scene has already undone its changes
            self.error = DiffusionAnomalyError(f"adding the results to the scene failed: {type(exc).__name__}: {exc}")
        finally:
            self.finished = True
            self._cleanup()

    def _cleanup(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        if self.finished and self.spare is not None and self._env is not None:
            self.spare.refill(self.python or None, self._env)  # the next run's worker imports while the user reads
            self._env = None
