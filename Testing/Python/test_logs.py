"""Library logging: plain lines for the command line, events for the worker, stdout when nothing is configured."""

import io
import json
import logging

from DiffusionAnomalyLib import logs
from DiffusionAnomalyLib.app.worker import EventWriter

log = logging.getLogger("DiffusionAnomalyLib.training.example")


def _unconfigure(monkeypatch):
    """Logging as a program that configured nothing sees it: pytest's capture handlers, which it puts on the root
    logger for each test's call, are taken off for the rest of the test."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])


def test_console_writes_plain_lines_and_prefixes_warnings():
    stream = io.StringIO()
    with logs.console(stream):
        log.info("wrote bundle %s", "B")
        log.warning("3 patches skipped")
        log.debug("not shown")
    log.info("after the block: not shown")
    assert stream.getvalue() == "wrote bundle B\nwarning: 3 patches skipped\n"
    assert logging.getLogger("DiffusionAnomalyLib").level == logging.NOTSET


def test_records_become_worker_events():
    stream = io.StringIO()
    with logs.attached(logs.EventHandler(EventWriter(stream).emit)):
        log.info("[2/10] train_l1 0.1000 | ETA 4 s")
        log.warning("DEMO bundle")
        log.error("bad %s", "thing")
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert events == [{"event": "log", "message": "[2/10] train_l1 0.1000 | ETA 4 s"},
                      {"event": "warning", "message": "DEMO bundle"},
                      {"event": "warning", "message": "bad thing"}]


def test_a_failing_event_sink_never_breaks_the_caller(capsys):
    def broken(kind, **fields):
        raise OSError("pipe closed")

    with logs.attached(logs.EventHandler(broken)):
        log.info("still fine")  # reported on stderr by logging, not raised
    assert "pipe closed" in capsys.readouterr().err


def test_training_talks_on_stdout_only_when_logging_is_not_configured(monkeypatch, capsys):
    _unconfigure(monkeypatch)

    @logs.stdout_unless_configured
    def train():
        log.info("[1/1] loss 0.5000 | ETA 0 s")
        log.warning("a data warning")
        return 7

    assert not logs.is_configured()
    assert train() == 7
    assert capsys.readouterr().out == "[1/1] loss 0.5000 | ETA 0 s\nwarning: a data warning\n"
    assert not logs.is_configured()  # the handler was removed again
    stream = io.StringIO()
    with logs.console(stream):  # a program that routes records itself gets them there, not twice on stdout
        assert logs.is_configured() and train() == 7
    assert capsys.readouterr().out == "" and stream.getvalue().count("loss 0.5000") == 1


def test_the_package_logger_is_silent_by_default(monkeypatch, capsys):
    _unconfigure(monkeypatch)
    log.warning("nobody listens")  # NullHandler: no "No handlers could be found" and no lastResort line
    assert capsys.readouterr() == ("", "")
