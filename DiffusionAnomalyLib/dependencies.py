"""The Python packages the worker needs, what is missing, and the exact command to install them.

Used by the Slicer module on first Apply: it asks before installing anything and, when the user
declines or the install fails, shows :func:`install_command` so it can be run by hand.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys

#: import name -> pip requirement (torch separately: Slicer's PyTorch extension picks the right build).
REQUIREMENTS = {
    "torch": "torch",
    "monai": "monai>=1.4",
    "SimpleITK": "SimpleITK>=2.3",
    "skimage": "scikit-image>=0.22",
    "scipy": "scipy>=1.11",
    "safetensors": "safetensors>=0.4",
    "einops": "einops>=0.7",
    "matplotlib": "matplotlib>=3.8",
}


def missing_packages() -> list[str]:
    """pip requirements of the packages that cannot be imported in this Python."""
    return [req for name, req in REQUIREMENTS.items() if importlib.util.find_spec(name) is None]


def install_command(requirements: list[str], python: str | None = None) -> str:
    """The shell command a user can run to install ``requirements`` into ``python`` (default: this one)."""
    return shlex.join([python or sys.executable, "-m", "pip", "install", *requirements])
