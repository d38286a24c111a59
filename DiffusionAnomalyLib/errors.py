"""Error types with stable codes and process exit codes (docs/worker.md; the README's exit-code table)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_MISSING_MODEL = 3
EXIT_OUT_OF_MEMORY = 4
EXIT_CANCELLED = 5
EXIT_MISSING_DEPENDENCY = 6


class DiffusionAnomalyError(Exception):
    """Base class: ``code`` is a stable machine-readable string, ``exit_code`` the process status."""

    code = "internal_error"
    exit_code = EXIT_INTERNAL


class InputError(DiffusionAnomalyError, ValueError):
    """The user's input (file, image, mask, parameter) cannot be used as given."""

    code = "bad_input"
    exit_code = EXIT_BAD_INPUT


class OrganMissingError(InputError):
    """An organ the run needs is absent from the mask (nephrectomy, out of field of view)."""

    code = "organ_missing"


class MissingDependencyError(DiffusionAnomalyError, RuntimeError):
    """An optional package or its weights are not installed; the message says how to install them."""

    code = "missing_dependency"
    exit_code = EXIT_MISSING_DEPENDENCY


class OutputError(DiffusionAnomalyError, OSError):
    """The output folder cannot be written."""

    code = "output_not_writable"
    exit_code = EXIT_BAD_INPUT


class BundleExistsError(OutputError):
    """An import would replace an installed bundle of the same name and version: ask the user, then pass
    ``overwrite=True`` (``import-bundle --overwrite``)."""

    code = "bundle_exists"


class BundleError(DiffusionAnomalyError):
    """A model bundle is missing, unreadable, corrupt or incompatible (``models/bundle.py``, ``models/schema.py``)."""

    code = "bad_model"
    exit_code = EXIT_MISSING_MODEL


class NoDemoBundleError(BundleError):
    """``demo`` found no demo bundle for the organ (the message names the folders looked in)."""


class OutOfMemoryError(DiffusionAnomalyError, MemoryError):
    """The device ran out of memory; the message says what to try."""

    code = "out_of_memory"
    exit_code = EXIT_OUT_OF_MEMORY


class CancelledError(DiffusionAnomalyError):
    """The run was cancelled (SIGTERM); nothing was written."""

    code = "cancelled"
    exit_code = EXIT_CANCELLED


class WorkerKilledError(DiffusionAnomalyError):
    """The worker process was killed from outside (e.g. SIGKILL, out-of-memory killer)."""

    code = "killed"
    exit_code = EXIT_INTERNAL


#: Substrings of RuntimeError messages that mean an allocation failed (PyTorch CUDA/CPU, ITK, C++).
OOM_MARKERS = ("out of memory", "failed to allocate memory", "bad_alloc", "defaultcpuallocator: can't allocate",
               "cannot allocate memory", "memoryerror", "failed to map segment from shared object")

#: OSError numbers that mean the output cannot be written (no space, quota, read-only, permission).
_OUTPUT_ERRNOS = {"ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG"}


def classify(exc: BaseException) -> tuple[int, str, str]:
    """(exit code, stable code, one-line message) for any exception a run can end with; the documented exit codes
    for everything, not only this project's own errors (KeyboardInterrupt -> cancelled, MemoryError and allocation
    failures -> out_of_memory, a full disk or read-only output -> output_not_writable, the rest -> internal_error)."""
    import errno

    def one_line(text: str) -> str:
        return " ".join(str(text).split()) or type(exc).__name__

    if isinstance(exc, DiffusionAnomalyError):
        return exc.exit_code, exc.code, one_line(str(exc))
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_CANCELLED, CancelledError.code, ("cancelled by the user (interrupt); the output being written "
                                                     "was discarded (results finished before are kept)")
    if isinstance(exc, MemoryError) or (isinstance(exc, (RuntimeError, ImportError, OSError)) and any(
            k in str(exc).lower() for k in OOM_MARKERS)) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
        return EXIT_OUT_OF_MEMORY, OutOfMemoryError.code, oom_message(exc)
    if isinstance(exc, OSError) and exc.errno is not None and errno.errorcode.get(exc.errno) in _OUTPUT_ERRNOS:
        where = f" ({exc.filename})" if exc.filename else " the output"
        hint = {errno.ENOSPC: "; free some space or choose a folder on another disk",
                errno.EFBIG: "; a file-size limit (ulimit -f) was reached",
                errno.EDQUOT: "; the disk quota is used up"}.get(exc.errno, "")
        return OutputError.exit_code, OutputError.code, one_line(f"cannot write{where}: {exc.strerror or exc}{hint}")
    return EXIT_INTERNAL, "internal_error", one_line(f"{type(exc).__name__}: {exc}") + (
        " (an internal error; run with --debug for the traceback and report it)")


def oom_message(exc: BaseException) -> str:
    """What ran out, and what to try."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return (f"out of memory ({type(exc).__name__}: {text}). Try --device cpu if the GPU is small, close other "
            "programs using the memory, raise the worker's memory limit if one is set, or use a bundle with a smaller "
            "network, a coarser spacing or a smaller ROI")


def raise_cancelled(signum, frame) -> None:
    """Signal handler: SIGTERM (and SIGINT where installed) cancel the run; cleanup runs as the exception unwinds."""
    import signal

    name = signal.Signals(signum).name
    raise CancelledError(f"cancelled by the user ({name}); the output being written was discarded (results finished "
                         "before, e.g. earlier cases of a batch or stages of train all, are kept)")
