"""Where results go: the output-folder rule of every writing command (:func:`check_output_dir`,
:func:`check_output_file`), atomic writes (:func:`atomic_output_dir`, :func:`write_text_atomic`), names that become
paths (:func:`check_name`) and JSON inputs read with limits (:func:`read_json`). Standard library only."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from DiffusionAnomalyLib.errors import InputError, OutputError

#: File names a run writes (``run.json`` lists them too); with ``--overwrite`` these are what is replaced.
RESULT_PATTERNS = ("run.json", "heatmap.nii.gz", "lesions.nii.gz", "lesions.seg.nrrd", "lesions.csv", "lesions.json",
                   "overview.png", "reconstruction.nii.gz", "reconstruction_*.nii.gz", "trajectory_*.nii.gz",
                   "trajectory.seq.nrrd", "trajectory_heatmap.seq.nrrd", "uncertainty.nii.gz", "uncertainty_*.nii.gz")


def previous_result_files(folder: Path) -> list[Path] | None:
    """The files of an earlier result of this tool in ``folder`` (``run.json`` present), else None."""
    run = folder / "run.json"
    if not run.is_file():
        return None
    try:
        info = read_json(run, "run.json")
    except InputError:
        return None
    if not isinstance(info, dict) or "version" not in info or "inputs" not in info:
        return None
    names = set(info.get("outputs") or [])
    for pattern in RESULT_PATTERNS:
        names.update(f.name for f in folder.glob(pattern))
    return sorted(folder / n for n in names if "/" not in n and (folder / n).is_file())


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours
        return True
    return True


def clean_stale_staging(folder: Path) -> None:
    """Remove ``.staging-*`` / ``.replaced-*`` folders left by runs that were killed (their process is gone)."""
    if not folder.is_dir():
        return
    for d in folder.iterdir():
        m = re.match(r"\.(staging|replaced)-(\d+)-", d.name)
        stale = (m and not _pid_alive(int(m.group(2)))) or (
            not m and d.name.startswith((".staging-", ".replaced-")))
        if stale and d.is_dir() and not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


# -- names, JSON inputs and the output-folder rule: the one place each is decided ---------------------------------
#: A name that becomes one path component (bundle names and versions, case and output names): letters, digits and
#: ``._+-``, starting with a letter or digit, at most 100 characters. Checked wherever such a name is read.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def check_name(value: object, what: str, error: type[Exception] = InputError) -> str:
    """``value`` if it is one safe path component (:data:`NAME_PATTERN`), else ``error`` naming ``what`` and the
    value (an absolute path, ``..``, a separator or a control character would write outside its folder)."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or value in (".", ".."):
        raise error(f"{what}: {value!r} is not a valid name (one folder name of letters, digits and . _ + -, starting "
                    "with a letter or digit, at most 100 characters; no path separators, '..' or absolute paths)")
    return value


#: Limits on every JSON file read as input (settings, run.json, model.json, manifests): bytes and nesting depth.
JSON_MAX_BYTES = 16 << 20
JSON_MAX_DEPTH = 32


def regular_file(path: str | os.PathLike, what: str, error: type[Exception] = InputError) -> Path:
    """``path`` if it is a regular file (never a FIFO, device or folder, which could block or never end)."""
    import stat

    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise error(f"{p}: {what} not found") from None
    except OSError as exc:
        raise error(f"{p}: {what} cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "not a file"
        raise error(f"{p}: {what} is {kind}; a regular file is needed")
    return p


def read_json(path: str | os.PathLike, what: str = "JSON file", error: type[Exception] = InputError,
              max_bytes: int = JSON_MAX_BYTES, max_depth: int = JSON_MAX_DEPTH) -> object:
    """Parse a JSON input file with limits: a regular file of at most ``max_bytes``, nesting at most ``max_depth``,
    integers of at most 4300 digits; any problem raises ``error`` naming the file."""
    p = regular_file(path, what, error)
    try:
        with open(p, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{p}: {what} cannot be read ({exc.strerror or exc})") from None
    if len(raw) > max_bytes:
        raise error(f"{p}: {what} is larger than {max_bytes >> 20} MB; refused")
    return parse_json(raw, f"{p}: {what}", error, max_depth)


def parse_json(raw: bytes | str, where: str, error: type[Exception] = InputError,
               max_depth: int = JSON_MAX_DEPTH) -> object:
    """``json.loads`` with the limits of :func:`read_json`; ``where`` starts the message."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise error(f"{where} is not valid JSON (not UTF-8: {exc})") from None
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:  # the nesting depth before parsing: json would recurse (RecursionError) on deep input
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                raise error(f"{where} is nested deeper than {max_depth} levels; refused")
        elif ch in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where} is not valid JSON ({exc})") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise error(f"{where} cannot be read ({' '.join(str(exc).split())[:200]})") from None


def _is_run_result(folder: Path) -> bool:
    return previous_result_files(folder) is not None


def _is_dataset_result(folder: Path) -> bool:
    """evaluate, sweep or batch output: they resume there."""
    if any((folder / n).exists() for n in ("maps", "report", "sweep", "index.csv")):
        return True
    return any((d / "run.json").is_file() for d in folder.iterdir() if d.is_dir()) or any(folder.glob("*.error.json"))


def _is_phantom_case(folder: Path) -> bool:
    try:
        info = json.loads((folder / "case.json").read_text()) if (folder / "case.json").is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("synthetic") is True


def _is_phantom_dataset(folder: Path) -> bool:
    """A phantom dataset: synthetic case folders plus ``labels.csv`` / ``reports.csv`` and nothing else."""
    entries = [e for e in folder.iterdir() if not e.name.startswith((".staging-", ".replaced-"))]
    cases = [e for e in entries if e.is_dir() and _is_phantom_case(e)]
    return bool(cases) and all(e in cases or e.name in ("labels.csv", "reports.csv") for e in entries)


def _is_demo_result(folder: Path) -> bool:
    entries = {e.name for e in folder.iterdir() if not e.name.startswith((".staging-", ".replaced-"))}
    return entries <= {"case", "result"} and _is_phantom_case(folder / "case") and (
        "result" not in entries or _is_run_result(folder / "result"))


def _is_synthesis(folder: Path) -> bool:
    """``synthesize`` output: ``synthesis.csv`` and case folders, each with its ``synthesis.json``."""
    entries = [e for e in folder.iterdir() if not e.name.startswith((".staging-", ".replaced-"))]
    return (folder / "synthesis.csv").is_file() and all(
        e.name == "synthesis.csv" or (e.is_dir() and (e / "synthesis.json").is_file()) for e in entries)


def _is_bundle(folder: Path) -> bool:
    """A model bundle (``model.json`` with a ``format_version``), as ``train``, ``sweep --write-bundle`` and
    ``import-bundle`` write it."""
    try:
        info = json.loads((folder / "model.json").read_text()) if (folder / "model.json").is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "format_version" in info


def _is_bench_report(file: Path) -> bool:
    try:
        info = read_json(file, "bench report")
    except InputError:
        return False
    return isinstance(info, dict) and ({"environment", "results"} <= set(info) or "gpu_check" in info)


def _is_pseudo_labels(file: Path) -> bool:
    try:
        with open(file, encoding="utf-8") as f:
            return f.readline().strip() == "case,structure,side,label,evidence"
    except (OSError, UnicodeDecodeError):
        return False


#: What an earlier result of each writing command looks like: the one output-folder rule. A folder holding
#: anything else is foreign and refused (even with ``--overwrite``: a user's files are never replaced); an
#: earlier result is resumed (commands that continue where they stopped) or replaced with ``--overwrite``.
RESULT_KINDS: dict[str, Callable[[Path], bool]] = {
    "run": _is_run_result, "baseline": _is_run_result, "worker": _is_run_result,
    "evaluate": _is_dataset_result, "sweep": _is_dataset_result, "batch": _is_dataset_result,
    "phantom": _is_phantom_case, "phantom --cases": _is_phantom_dataset, "demo": _is_demo_result,
    "train": _is_bundle, "train all": _is_bundle, "write-bundle": _is_bundle, "import-bundle": _is_bundle,
    "synthesize": _is_synthesis,
    "bench": _is_bench_report, "pseudo-labels": _is_pseudo_labels,  # one file each (check_output_file)
}


def check_output_dir(out: str | os.PathLike, inputs: Sequence[str | os.PathLike | None] = (), *,
                     overwrite: bool = False, option: str = "--out",
                     own: Callable[[Path], bool] | None = None, resume: bool = False, command: str = "run") -> Path:
    """The output-folder rule of every writing command, checked before any work; raises :class:`OutputError`
    naming the folder and the problem.

    Refused: a path that is a file or lies under one; a folder that cannot be written; a folder that holds (or
    lies inside) any of ``inputs``; a non-empty folder that is not an earlier result of ``command``
    (:data:`RESULT_KINDS`, or ``own(folder)``), even with ``overwrite``: a user's files are never replaced; an
    earlier result unless ``overwrite`` (replace it) or ``resume`` (commands that continue where they stopped).
    Stale staging folders of killed runs are removed.
    """
    o = Path(out)
    if o.exists() and not o.is_dir():
        raise OutputError(f"{o}: {option} is an existing file, not a folder")
    resolved = o.resolve()
    for inp in inputs:
        if inp is None:
            continue
        ip = Path(inp).resolve()
        if _inside(ip, resolved):
            raise OutputError(f"{o}: {option} contains the input {inp}; outputs never go where inputs are (they "
                              "could replace them): choose another folder")
        if ip.is_dir() and _inside(resolved, ip):
            raise OutputError(f"{o}: {option} lies inside the input folder {inp}; choose a folder outside it")
    _check_writable(o, option)
    if o.is_dir():
        clean_stale_staging(o)
        entries = [e for e in o.iterdir() if not e.name.startswith((".staging-", ".replaced-"))]
        if entries:
            if not (own or RESULT_KINDS[command])(o):
                names = ", ".join(sorted(e.name for e in entries)[:5]) + (" ..." if len(entries) > 5 else "")
                raise OutputError(f"{o}: {option} is not empty ({names}) and is not a result of diffusion-anomaly "
                                  f"{command}; its files are never replaced: choose a new or empty folder")
            if not (overwrite or resume):
                raise OutputError(f"{o}: {option} holds the results of an earlier run; pass --overwrite to replace "
                                  f"them (all of them: nothing of the earlier {command} is kept), or choose another "
                                  "folder")
    return o


def _check_writable(o: Path, option: str) -> None:
    anchor = o
    while not anchor.exists():
        if anchor.parent == anchor:
            break
        anchor = anchor.parent
    if not anchor.is_dir():
        raise OutputError(f"{o}: {option} cannot be created: {anchor} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".probe-{os.getpid()}-", dir=anchor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{o}: output folder is not writable ({exc.strerror or exc} in {anchor}; {option})") from None


def check_output_file(out: str | os.PathLike, inputs: Sequence[str | os.PathLike | None] = (), *,
                      overwrite: bool = False, option: str = "--out", own: Callable[[Path], bool] | None = None,
                      command: str = "") -> Path:
    """The output-folder rule for commands that write one file (``bench --out``, ``pseudo-labels --out``): not an
    input, its folder writable; an existing file is replaced only if ``own(file)`` says this command wrote it, and
    only with ``overwrite``."""
    o = Path(out)
    for inp in inputs:
        if inp is not None and Path(inp).resolve() == o.resolve():
            raise OutputError(f"{o}: {option} is the input {inp}; outputs never replace inputs")
    if o.is_dir():
        raise OutputError(f"{o}: {option} is a folder; give a file name")
    own = own or RESULT_KINDS.get(command)
    if o.exists() or o.is_symlink():
        if not o.is_file() or o.is_symlink() or own is None or not own(o):
            raise OutputError(f"{o}: {option} exists and was not written by diffusion-anomaly {command}; it is never "
                              "replaced: choose a new file name")
        if not overwrite:
            raise OutputError(f"{o}: {option} holds an earlier {command} result; pass --overwrite to replace it, or "
                              "choose a new file name")
    _check_writable(o.parent, option)
    return o


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (a temporary name in the same folder, then a rename)."""
    p = Path(path)
    tmp = p.with_name(f".tmp-{os.getpid()}-{p.name}")
    try:
        tmp.write_text(text, encoding="utf-8", newline="")  # as given (a CSV's \r\n stays \r\n everywhere)
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{p}: could not write ({exc.strerror or exc})") from None
    return p


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, *, replace_previous: bool = False) -> Iterator[Path]:
    """Stage outputs in a hidden folder inside ``out_dir`` and move them in only on success.

    On any exception the staging folder is removed and ``out_dir`` holds nothing new, so a crash
    or cancel never leaves half-written results. Existing files of the same name are replaced; with
    ``replace_previous`` every file of an earlier result (:func:`previous_result_files`) is removed too, so
    the folder holds exactly the new result set. Stale staging folders of killed runs are removed.
    """
    out = Path(out_dir)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(out)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-", dir=out))
    except OSError as exc:
        raise OutputError(f"{out}: output folder is not writable ({exc.strerror or exc})") from None
    ok = False
    try:
        yield staging
        old = Path(tempfile.mkdtemp(prefix=f".replaced-{os.getpid()}-", dir=out))
        moved: list[tuple[Path, Path]] = []
        try:
            stale = (previous_result_files(out) or []) if replace_previous else []
            new_names = {item.name for item in staging.iterdir()}
            for f in stale:
                if f.name not in new_names:
                    os.replace(f, old / f.name)
                    moved.append((old / f.name, f))
            for item in sorted(staging.iterdir()):
                dest = out / item.name
                if dest.exists() or dest.is_symlink():
                    os.replace(dest, old / item.name)  # a folder cannot be replaced in one step when non-empty
                    moved.append((old / item.name, dest))
                os.replace(item, dest)
        except OSError as exc:
            for src, dest in reversed(moved):  # put the earlier files back
                with contextlib.suppress(OSError):
                    if not dest.exists():
                        os.replace(src, dest)
            raise OutputError(f"{out}: could not move the results into place ({exc.strerror or exc})") from None
        finally:
            shutil.rmtree(old, ignore_errors=True)
        ok = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not ok and created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: never removes anything of the user's
