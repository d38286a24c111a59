"""The worker protocol and its client, against real worker processes."""

import os
import signal
import time

import pytest

from DiffusionAnomalyLib.app.cli import request_from_argv
from DiffusionAnomalyLib.app.client import WorkerClient
from DiffusionAnomalyLib.errors import CancelledError, InputError, WorkerKilledError


def _client(argv: list, **kwargs) -> WorkerClient:
    """A worker client for the request a command line stands for."""
    return WorkerClient(request_from_argv(argv), **kwargs)


def _wait_for(client, predicate, timeout=120.0):
    seen = []
    t0 = time.time()
    while time.time() - t0 < timeout:
        for e in client.poll_events():
            seen.append(e)
            if predicate(e):
                return seen
        if not client.running:
            seen += client.poll_events()
            return seen
        time.sleep(0.05)
    raise AssertionError(f"timed out; events so far: {seen[-3:]}")


def test_events_arrive_in_order_and_end_with_the_result(kidney_case, tmp_path):
    _, folder = kidney_case
    out = tmp_path / "out"
    client = _client(["baseline", "--organ", "kidney", "--input", folder / "ct.nii.gz", "--totalseg",
                           folder / "segmentations", "--out", out])
    client.start()
    assert client.wait(300) == 0
    events = client.poll_events()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "result" and "error" not in kinds
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    stages = [e["stage"] for e in events if e["event"] == "progress"]
    assert stages[0] == "extract" and stages[-1] == "write" and "postprocess" in stages
    result = client.raise_for_status()
    assert os.path.isfile(result["outputs"]["heatmap.nii.gz"]) and isinstance(result["lesions"], list)


def _long_run(bundle, folder, out):
    return _client(["run", "--bundle", bundle, "--input", folder / "ct.nii.gz", "--totalseg",
                         folder / "segmentations", "--out", out, "--device", "cpu", "--sampler", "ddim",
                         "--noise-level", "990", "--steps", "990"])


def test_cancel_mid_run_leaves_no_results(tiny_bundle, kidney_case, tmp_path):
    _, folder = kidney_case
    out = tmp_path / "out"
    client = _long_run(tiny_bundle, folder, out)
    client.start()
    _wait_for(client, lambda e: e.get("stage") == "reconstruct" and e["step"] >= 5)
    assert client.running
    client.cancel()
    assert client.wait(60) == 5
    events = client.poll_events()
    assert client.error["code"] == "cancelled" and (not events or events[-1]["event"] == "error")
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(CancelledError, match="cancelled"):
        client.raise_for_status()


def test_a_killed_worker_is_reported_as_killed(tiny_bundle, kidney_case, tmp_path):
    _, folder = kidney_case
    client = _long_run(tiny_bundle, folder, tmp_path / "out")
    client.start()
    _wait_for(client, lambda e: e.get("stage") == "reconstruct")
    os.killpg(client.process.pid, signal.SIGKILL)
    assert client.wait(60) == -signal.SIGKILL
    with pytest.raises(WorkerKilledError, match="killed by signal 9"):
        client.raise_for_status()
    assert not (tmp_path / "out").exists() or not any(p for p in (tmp_path / "out").iterdir()
                                                      if not p.name.startswith(".staging"))


def test_bad_input_gives_the_documented_code(tmp_path):
    client = _client(["baseline", "--organ", "kidney", "--input", tmp_path / "missing.nii.gz", "--mask",
                           tmp_path / "m.nii.gz", "--out", tmp_path / "out"])
    client.start()
    assert client.wait(120) == 2
    assert client.error == {"event": "error", "code": "bad_input", "exit_code": 2,
                            "message": f"{tmp_path / 'missing.nii.gz'}: file not found"}
    with pytest.raises(InputError, match="missing.nii.gz: file not found"):
        client.raise_for_status()
    with pytest.raises(InputError, match="only run and baseline make a detection request"):
        request_from_argv(["phantom", "--organ", "kidney", "--out", tmp_path / "x"])


def test_running_out_of_memory_is_reported_with_what_to_try(tiny_bundle, kidney_case, tmp_path):
    """A bundle whose ROI grid needs tens of GB, under a 5 GiB memory cap: exit 4, code out_of_memory."""
    import json
    import shutil

    from DiffusionAnomalyLib.errors import OutOfMemoryError

    _, folder = kidney_case
    huge = tmp_path / "huge"
    shutil.copytree(tiny_bundle, huge)
    meta = json.loads((huge / "model.json").read_text())
    meta["preset_overrides"]["spacing_mm"] = [0.08, 0.08, 0.08]  # 1200 x 1200 x 1600 voxels per ROI
    (huge / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    client = _client(["run", "--bundle", str(huge), "--input", str(folder / "ct.nii.gz"), "--totalseg",
                      str(folder / "segmentations"), "--out", str(out), "--device", "cpu"],
                     memory_limit_gb=5)
    client.start()
    assert client.wait(300) == 4
    assert client.error["code"] == "out_of_memory"
    with pytest.raises(OutOfMemoryError, match="out of memory .*Try --device cpu.*smaller ROI"):
        client.raise_for_status()
    assert not out.exists() or not any(p for p in out.iterdir() if not p.name.startswith(".staging"))


def test_the_client_reads_the_worker_without_threads_and_keeps_partial_lines(kidney_case, tmp_path):
    """Slicer's PythonQt keeps the GIL while Qt processes events: the client must not need a reader thread. Its
    pipes are non-blocking and drained by poll_events; events arrive whole however the bytes are split."""
    import threading

    _, folder = kidney_case
    client = _client(["baseline", "--organ", "kidney", "--input", folder / "ct.nii.gz", "--totalseg",
                           folder / "segmentations", "--out", tmp_path / "out", "--no-overview"])
    before = set(threading.enumerate())  # (an earlier test may have left e.g. tqdm's monitor thread)
    client.start()
    events = []
    while client.running or not client.output_closed:
        assert set(threading.enumerate()) <= before, threading.enumerate()
        events += client.poll_events()
        time.sleep(0.01)
    assert client.wait(10) == 0
    events += client.poll_events()
    assert events[0]["event"] == "started" and events[-1]["event"] == "result"
    assert not (tmp_path / "out" / "overview.png").exists() and (tmp_path / "out" / "heatmap.nii.gz").is_file()
    # a line split across reads is kept until its end arrives
    split = _client(["baseline", "--organ", "kidney", "--input", "x", "--out", "y"])
    split._line_out('{"event": "log", "message": "one"}')
    assert split.poll_events() == [{"event": "log", "message": "one"}]


def test_another_interpreter_gets_the_environment_without_the_launchers_python_values(monkeypatch):
    from DiffusionAnomalyLib.app.dependencies import child_environment

    monkeypatch.setenv("PYTHONHOME", "/opt/Slicer/lib/Python")
    monkeypatch.setenv("PYTHONPATH", "/opt/Slicer/lib/Python/site-packages")
    monkeypatch.setenv("PYTHONNOUSERSITE", "1")
    assert child_environment(True)["PYTHONHOME"] == "/opt/Slicer/lib/Python"  # Slicer's own keeps them
    other = child_environment(False)
    assert not {"PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE"} & set(other) and other["PATH"] == os.environ["PATH"]
    startup = {"PATH": "/usr/bin", "HOME": "/home/u", "": "ignored"}
    assert child_environment(False, lambda: startup) == {"PATH": "/usr/bin", "HOME": "/home/u"}


def test_the_synthesize_job_writes_the_variant_and_reports_its_files(kidney_case, tmp_path):
    """The worker's second job (the panel's "Synthesize lesion"): a lesion pasted into the phantom, progress to 1, and
    a result naming the new scan, its lesion labels and the record; the input is unchanged."""
    import hashlib

    from DiffusionAnomalyLib.synthesis.options import SynthesisOptions
    from DiffusionAnomalyLib.synthesis.synthesize import SynthesisRequest

    _, folder = kidney_case
    before = hashlib.sha256((folder / "ct.nii.gz").read_bytes()).hexdigest()
    request = SynthesisRequest(images=(str(folder / "ct.nii.gz"),), organ="kidney", out=str(tmp_path / "syn"),
                               totalseg=str(folder / "segmentations"),
                               options=SynthesisOptions(shape="sphere", diameter_mm=15.0, seed=4, count=2))
    assert SynthesisRequest.from_json(request.to_json()) == request  # what the worker reads back
    client = WorkerClient(request)
    client.start()
    assert client.wait(300) == 0, client.stderr_lines[-5:]
    events = client.poll_events()
    assert events[0]["event"] == "started" and events[0]["command"] == "synthesize"
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 2
    result = client.raise_for_status()
    assert [c["record"]["seed"] for c in result["cases"]] == [4, 5]
    for case in result["cases"]:
        assert os.path.isfile(case["images"]["ct"]) and os.path.isfile(case["lesions"])
        assert case["record"]["method"] == "paste" and case["record"]["diameter_mm"] == 15.0
    assert hashlib.sha256((folder / "ct.nii.gz").read_bytes()).hexdigest() == before


def _until_ready(client, timeout=180.0):
    t_end = time.time() + timeout
    while not client.ready:
        assert client.running, client.stderr_lines[-5:]
        assert time.time() < t_end, "the spare did not say ready"
        time.sleep(0.05)


def test_a_spare_worker_imports_ahead_and_runs_the_request_it_gets_later(tiny_bundle, kidney_case, tmp_path):
    from DiffusionAnomalyLib.app.client import SpareWorker

    _, folder = kidney_case
    spare = SpareWorker()
    spare.refill()
    waiting = spare.client
    _until_ready(waiting)
    spare.refill()  # a live spare for the same interpreter and environment is kept, not replaced
    assert spare.client is waiting
    out = tmp_path / "out"
    client = spare.take(request_from_argv(["run", "--bundle", tiny_bundle, "--input", folder / "ct.nii.gz",
                                           "--totalseg", folder / "segmentations", "--out", out, "--device", "cpu"]))
    assert client is waiting and spare.client is None  # handed over: the caller owns it
    client.start()
    assert client.wait(300) == 0, client.stderr_lines[-5:]
    events = client.poll_events()
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["ready", "started"] and kinds[-1] == "result", kinds
    ready = events[0]
    assert ready["preloaded"] is True and ready["preload_s"] > 0 and ready["pid"] == client.process.pid
    assert (out / "heatmap.nii.gz").is_file() and client.raise_for_status()["lesions"] is not None
    with pytest.raises(RuntimeError, match="already"):
        client.assign(request_from_argv(["baseline", "--organ", "kidney", "--input", folder / "ct.nii.gz",
                                         "--out", tmp_path / "again"]))


def test_a_spare_is_not_handed_to_another_environment_nor_when_dead(kidney_case, tmp_path):
    from DiffusionAnomalyLib.app.client import SpareWorker

    _, folder = kidney_case
    request = request_from_argv(["baseline", "--organ", "kidney", "--input", folder / "ct.nii.gz", "--totalseg",
                                 folder / "segmentations", "--out", tmp_path / "out"])
    spare = SpareWorker()
    spare.refill(env={**os.environ, "DA_TEST_SPARE": "a"})
    first = spare.client
    assert spare.take(request, env={**os.environ, "DA_TEST_SPARE": "b"}) is None  # another environment: ended
    assert first.process.wait(30) is not None and spare.client is None
    spare.refill()
    os.killpg(spare.client.process.pid, signal.SIGKILL)
    spare.client.process.wait(30)
    assert spare.take(request) is None and spare.client is None  # a dead spare is never handed out
    spare.refill()
    ended = spare.client
    spare.close()
    assert ended.process.poll() is not None and spare.client is None


def test_a_spare_that_never_gets_a_request_exits_on_its_own(tmp_path):
    # its parent closes the pipe (quits) before sending a request: the spare reads the end of stdin and exits with
    # the documented bad-input code, an error event first; a SIGTERM while it waits is a cancel, as in a run
    for how, code in (("eof", 2), ("term", 5)):
        client = WorkerClient(preload=True)
        client.spawn()
        _until_ready(client)
        if how == "eof":
            client.process.stdin.close()
        else:
            client.request_cancel()
        assert client.wait(60) == code
        events = client.poll_events()
        assert events[-1]["event"] == "error" and events[-1]["exit_code"] == code, events
    with pytest.raises(RuntimeError, match="no request"):
        WorkerClient(preload=True).start()
