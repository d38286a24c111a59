"""DiffusionAnomaly library: everything except the Slicer GUI.

Nothing here imports ``slicer``, ``qt``, ``ctk`` or ``vtk`` at import time; heavy
dependencies (torch, MONAI) are imported by the modules that need them.
"""

__version__ = "0.1.0"
