"""Run TotalSegmentator for organ masks, or say exactly what is missing.

TotalSegmentator is an optional extra (``pip install 'diffusion-anomaly[totalseg]'``): it pulls a
CUDA build of torch and torchvision, so it is never part of the default or test install. Its
weights are downloaded only by the user (``totalseg_download_weights``); this module never
triggers a download - it refuses to run when the weights are absent.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from DiffusionAnomalyLib.detection.presets import OrganPreset
from DiffusionAnomalyLib.errors import MissingDependencyError


def weights_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where TotalSegmentator looks for its nnU-Net weights (its own environment variables, read from ``env``,
    default ``os.environ``)."""
    env = os.environ if env is None else env
    if env.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(env["TOTALSEG_WEIGHTS_PATH"])
    home = Path(env.get("TOTALSEG_HOME_DIR") or Path.home() / ".totalsegmentator")
    return home / "nnunet" / "results"


def weights_present(env: Mapping[str, str] | None = None) -> bool:
    """Whether TotalSegmentator's weights folder (:func:`weights_dir`) holds any of its models."""
    wdir = weights_dir(env)
    return wdir.is_dir() and any(wdir.glob("Dataset*"))


def weights_task(preset: OrganPreset, fast: bool = True) -> str:
    """The TotalSegmentator task whose weights a run needs (``--fast`` runs use the ``*_fast`` models)."""
    task = preset.totalseg_task
    return f"{task}_fast" if fast and task in ("total", "total_mr") else task


def download_command(python: str, preset: OrganPreset) -> list[str]:
    """The command (argument list) that downloads the weights a run needs with ``python``'s TotalSegmentator
    (its ``totalseg_download_weights``): for a user to run, or for the Slicer panel to run once the user agreed."""
    code = ("import sys; from totalsegmentator.bin.totalseg_download_weights import main; "
            "sys.argv[0] = 'totalseg_download_weights'; main()")
    return [python, "-c", code, "-t", weights_task(preset)]


def _install_help(preset: OrganPreset) -> str:
    return (
        "TotalSegmentator is not usable here. To install it: "
        "pip install 'diffusion-anomaly[totalseg]' (or pip install TotalSegmentator), then download its "
        f"weights once, as yourself: totalseg_download_weights -t {weights_task(preset)} "
        f"(they go to {weights_dir()}; set TOTALSEG_WEIGHTS_PATH or TOTALSEG_HOME_DIR to place them "
        "elsewhere, e.g. on an offline site copy that folder). Or skip TotalSegmentator and give an "
        "organ mask with --mask."
    )


def check_available(preset: OrganPreset) -> None:
    """Raise :class:`MissingDependencyError` with install instructions if TS or its weights are absent."""
    if importlib.util.find_spec("totalsegmentator") is None:
        raise MissingDependencyError("the totalsegmentator package is not installed. " + _install_help(preset))
    if not weights_present():
        raise MissingDependencyError(f"no TotalSegmentator weights in {weights_dir()}. " + _install_help(preset))


def run_totalsegmentator(
    image_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    preset: OrganPreset,
    *,
    fast: bool = True,
    device: str = "gpu",
    use_cli: bool = False,
) -> Path:
    """Segment ``preset``'s structures into ``out_dir`` (one binary file per structure).

    Uses the Python API in-process, or with ``use_cli`` the ``TotalSegmentator`` executable as a
    child process (argument list, no shell). Returns ``out_dir``; read it with
    :func:`DiffusionAnomalyLib.imaging.masks.load_totalseg_masks`.
    """
    check_available(preset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    roi = list(preset.structures.values())
    task = preset.totalseg_task
    if use_cli:
        exe = shutil.which("TotalSegmentator") or str(Path(sys.executable).with_name("TotalSegmentator"))
        args = [exe, "-i", str(image_path), "-o", str(out), "--task", task, "--device", device]
        if fast:
            args.append("--fast")
        if task == "total":
            args += ["--roi_subset", *roi]
        subprocess.run(args, check=True, shell=False)
    else:
        from totalsegmentator.python_api import totalsegmentator  # optional dependency

        totalsegmentator(
            str(image_path), str(out), task=task, fast=fast, device=device,
            roi_subset=roi if task == "total" else None,
        )
    return out
