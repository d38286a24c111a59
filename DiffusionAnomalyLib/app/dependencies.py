"""The Python packages the worker needs, what is missing in a given interpreter, and how to install them.

Used by the Slicer module on first Apply: it asks before installing anything and, when the user
declines or the install fails, shows :func:`install_command` for the worker's interpreter (inside
Slicer: the ``PythonSlicer`` launcher, which sets up the environment a shell lacks) so it can be run
by hand.
Nothing here imports the packages it checks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

#: The torch releases the worker is known to work with: from 2.3 (the oldest with every op it uses) up to the
#: release the project is tested on (2.13, ``Makefile``); a newer minor release is refused until it is tested.
TORCH_REQUIREMENT = ">=2.3,<2.14"
#: import name -> pip requirement (torch separately: Slicer's PyTorch extension picks the right build).
REQUIREMENTS = {
    "torch": f"torch{TORCH_REQUIREMENT}",
    "monai": "monai>=1.4",
    "SimpleITK": "SimpleITK>=2.3",
    "skimage": "scikit-image>=0.22",
    "scipy": "scipy>=1.11",
    "safetensors": "safetensors>=0.4",
    "einops": "einops>=0.7",
    "matplotlib": "matplotlib>=3.8",
}
#: Needed only when the worker runs TotalSegmentator (organ masks made from the input).
TOTALSEGMENTATOR_REQUIREMENT = {"totalsegmentator": "TotalSegmentator>=2.4"}


def missing_packages(python: str | None = None, extra: dict[str, str] | None = None,
                     env: dict[str, str] | None = None, model: bool = True) -> list[str]:
    """pip requirements of the packages that cannot be imported in ``python`` (default: this interpreter).

    ``model``: the packages a model run needs (:data:`REQUIREMENTS`; the median baseline needs none of them), plus
    ``extra``. Another interpreter is asked in a child process (argument list, no shell; ``env``: its environment,
    see :func:`child_environment`); nothing is imported.
    """
    wanted = {**(REQUIREMENTS if model else {}), **(extra or {})}
    if not wanted:
        return []
    if not python or _same_interpreter(python):
        return [req for name, req in wanted.items() if not _importable(name)]
    code = ("import importlib.util, json, sys; "
            "print(json.dumps([n for n in sys.argv[1:] if importlib.util.find_spec(n) is None]))")
    try:
        out = subprocess.run([python, "-c", code, *wanted], capture_output=True, text=True, timeout=60,
                             shell=False, stdin=subprocess.DEVNULL, env=env, **_no_window())
        names = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else list(wanted)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        names = list(wanted)
    return [wanted[n] for n in names]


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or blocked package cannot be imported either
        return False


def _same_interpreter(python: str) -> bool:
    try:
        return Path(python).resolve() == Path(sys.executable).resolve()
    except OSError:
        return False


def _no_window() -> dict:
    """Popen keyword arguments that keep a console window from opening on Windows."""
    return {"creationflags": subprocess.CREATE_NO_WINDOW} if os.name == "nt" else {}  # type: ignore[attr-defined]


def install_command(requirements: list[str], python: str | None = None) -> str:
    """The shell command a user can run to install ``requirements`` into ``python`` (default: this one)."""
    return shlex.join([python or sys.executable, "-m", "pip", "install", *requirements])


def pip_install(requirements: list[str], python: str, idle: Callable[[], None] | None = None,
                env: dict[str, str] | None = None) -> None:
    """Install ``requirements`` into another interpreter (``python -m pip install``; argument list, no shell;
    ``env``: its environment, see :func:`child_environment`). Raises RuntimeError with pip's last lines when it
    fails."""
    run_logged([python, "-m", "pip", "install", *requirements], idle, env, "pip install")


def run_logged(args: list[str], idle: Callable[[], None] | None = None, env: dict[str, str] | None = None,
               what: str = "") -> None:
    """Run ``args`` (argument list, no shell) to the end; ``idle()`` is called for every line it prints (a GUI passes
    its event processing, so it keeps painting). Raises RuntimeError with its last lines when it fails."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                               errors="replace", shell=False, stdin=subprocess.DEVNULL, env=env, **_no_window())
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line.rstrip())
        if idle:
            idle()
    if process.wait() != 0:
        tail = "\n".join(lines[-5:])
        raise RuntimeError(f"{what or args[0]} failed (exit code {process.returncode}): {tail}")


def launcher_for(python: str) -> str:
    """The interpreter to name in a command a user runs from a shell: Slicer's ``PythonSlicer`` launcher beside a
    ``python-real`` (which needs the environment the launcher sets up), else ``python`` itself."""
    path = Path(python)
    if path.stem == "python-real":
        launcher = path.with_name("PythonSlicer" + path.suffix)
        if launcher.is_file():
            return str(launcher)
    return python


def child_environment(own: bool, startup: Callable[[], dict[str, str]] | None = None) -> dict[str, str]:
    """The environment for a child interpreter started from this process.

    ``own``: the child is this installation's own interpreter (inside Slicer: ``python-real``), which needs the
    environment Slicer's launcher set up (``PYTHONHOME``, ``PYTHONPATH``, library paths): ``os.environ`` as it is.
    Any other interpreter must not see those values (a Python 3.11 given Slicer's 3.12 ``PYTHONHOME`` dies at
    start): it gets ``startup()`` — inside Slicer ``slicer.util.startupEnvironment()``, the environment from before
    the launcher — or, outside Slicer, ``os.environ`` less the variables that steer an interpreter's own paths.
    """
    if own:
        return dict(os.environ)
    if startup is not None:
        return {str(k): str(v) for k, v in startup().items() if k}
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE",
                                                                "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__")}


def slicer_python(executable: str | None = None) -> str:
    """The plain Python interpreter of a 3D Slicer installation (Slicer's own), for running the worker.

    Inside Slicer ``sys.executable`` is the ``PythonSlicer`` launcher (which sets up the environment, then
    starts ``python-real`` beside it), or "" when it is not on PATH. Slicer's own process already has that
    environment, so the worker is started as ``python-real`` directly when it exists: cancelling then stops the
    real interpreter, not only a launcher (which could leave the child running on Windows).
    Returns "" when none is found. (``DA_WORKER_PYTHON`` and the panel's "Python for the worker" choose another
    interpreter: ``slicer_module.panel.worker_python``.)
    """
    executable = executable if executable is not None else sys.executable
    suffix = ".exe" if os.name == "nt" else ""
    candidates = []
    for start in (executable, shutil.which("PythonSlicer")):
        if start:
            candidates += [Path(start).with_name(name + suffix) for name in ("python-real", "PythonSlicer")]
    for c in candidates:
        if c.is_file():
            return str(c)
    return executable if executable and "python" in Path(executable).name.lower() else ""
