"""DiffusionAnomaly library: everything except the Slicer GUI.

Nothing here imports ``slicer``, ``qt``, ``ctk`` or ``vtk`` at import time; heavy
dependencies (torch, MONAI) are imported by the modules that need them. Modules log to
``logging.getLogger(__name__)``; the programs choose where records go (``DiffusionAnomalyLib.logs``).
"""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.3.0"
