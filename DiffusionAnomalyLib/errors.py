"""Error types with stable codes and process exit codes (DESIGN.md §5)."""

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
