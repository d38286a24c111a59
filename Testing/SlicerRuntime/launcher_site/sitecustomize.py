"""FAKE of what Slicer's own Python lacks, for the processes the Slicer-like runtime's "launcher" starts.

The runtime puts this folder first on the ``PYTHONPATH`` it gives Slicer's own interpreter (``play_launcher``), so a
child of the test process that keeps that environment (the worker on "Slicer's own Python") refuses the packages
named in ``DA_SLICER_BLOCKED_IMPORTS`` as a stock Slicer without them would. Another interpreter gets the startup
environment and never sees this file.
"""

import importlib.abc
import os
import sys


class _Blocked(importlib.abc.MetaPathFinder):
    def __init__(self, names: set) -> None:
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ImportError(f"'{fullname}' is not shipped with Slicer (blocked by the test runtime)", name=fullname)
        return None


_names = {n for n in os.environ.get("DA_SLICER_BLOCKED_IMPORTS", "").split(",") if n}
if _names:
    sys.meta_path.insert(0, _Blocked(_names))
