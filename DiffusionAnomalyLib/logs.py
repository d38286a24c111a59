"""Logging for the library: modules log to ``logging.getLogger(__name__)`` (children of ``DiffusionAnomalyLib``);
the programs decide where records go.

- :func:`console`: records as plain lines on a stream (warnings prefixed "warning: "), for the command line.
- :class:`EventHandler`: records as the worker's ``log`` / ``warning`` events (docs/worker.md).
- :func:`stdout_unless_configured`: keeps a long library call (training) talking on stdout, as its ``print``
  calls did, when nobody has configured logging.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, TypeVar

PACKAGE = "DiffusionAnomalyLib"
F = TypeVar("F", bound=Callable[..., Any])


class PlainFormatter(logging.Formatter):
    """The message alone; "warning: " / "error: " in front from WARNING up (the command line's old prints)."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return f"{record.levelname.lower()}: {message}" if record.levelno >= logging.WARNING else message


class EventHandler(logging.Handler):
    """Turns records into events: ``emit(kind, message=...)`` with kind "warning" from WARNING up, else "log"."""

    def __init__(self, emit: Callable[..., None], level: int = logging.INFO) -> None:
        super().__init__(level)
        self._emit_event = emit
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit_event("warning" if record.levelno >= logging.WARNING else "log", message=self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the run; logging reports it on stderr
            self.handleError(record)


@contextmanager
def attached(handler: logging.Handler, level: int = logging.INFO) -> Iterator[logging.Handler]:
    """``handler`` on the package logger, which passes records from ``level`` up, while the block runs."""
    logger = logging.getLogger(PACKAGE)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def console(stream: IO[str] | None = None, level: int = logging.INFO):
    """Context manager: the package's records as plain lines on ``stream`` (default: the current stdout)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(PlainFormatter())
    return attached(handler, level)


def is_configured() -> bool:
    """Whether some handler would receive the package's records (on its loggers or the root logger)."""
    logger: logging.Logger | None = logging.getLogger(PACKAGE)
    while logger is not None:
        if any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
            return True
        logger = logger.parent if logger.propagate else None
    return False


def stdout_unless_configured(func: F) -> F:
    """Decorator: while ``func`` runs, INFO records go to stdout as plain lines if logging is not configured."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if is_configured():
            return func(*args, **kwargs)
        with console():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
