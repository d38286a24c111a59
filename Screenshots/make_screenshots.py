"""Make the screenshots in this folder (listed by EXTENSION_SCREENSHOTURLS in the top-level CMakeLists.txt).

- ``kidney-demo-overview.png``, ``brain-demo-overview.png``: the ``overview.png`` that
  ``diffusion-anomaly demo --organ kidney|brain`` writes (the shipped demo bundles on the phantom of seed 1000),
  copied unchanged.
- ``panel-after-run.png``: the module's panel after Apply with the kidney demo bundle on the self-test's phantom
  (the same case), the run done by the real worker. The panel is rendered by the project's Slicer-like test
  runtime (Testing/SlicerRuntime: PyQt5, offscreen), **not by the 3D Slicer application**: Qt's default style,
  no Slicer window around it, and the runtime's fakes of the MRML node selectors and CTK sliders draw nothing
  (the empty rows). A band at the bottom of the picture says so.

Run from the repository root, in the Slicer-side environment, with the full environment as the worker:

    QT_QPA_PLATFORM=offscreen DA_WORKER_PYTHON=$PWD/.venv/bin/python \\
        .venv-slicer/bin/python Screenshots/make_screenshots.py

(about a minute on 2 CPU cores).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "Testing" / "SlicerRuntime"))
sys.path.insert(0, str(REPO))

import slicer_runtime  # noqa: E402

NOTE = ("Rendered by the project's PyQt5 test runtime, not by 3D Slicer: the empty rows are node selectors and "
        "sliders that its fakes do not draw. DEMO bundle, synthetic phantom.")


def demo_overviews(worker: str) -> None:
    """Run ``diffusion-anomaly demo`` for the kidney and the brain and copy each ``overview.png`` here."""
    with tempfile.TemporaryDirectory() as tmp:
        for organ in ("kidney", "brain"):
            out = Path(tmp) / organ
            subprocess.run([worker, "-m", "DiffusionAnomalyLib.app.cli", "demo", "--organ", organ, "--out", str(out)],
                           check=True, cwd=REPO)
            shutil.copyfile(out / "result" / "overview.png", HERE / f"{organ}-demo-overview.png")


def panel_after_run(worker: str, out: Path) -> None:
    """Apply the kidney demo bundle to the self-test's phantom from the panel and save the panel as a PNG."""
    slicer = slicer_runtime.install(block_imports=("torch", "monai", "skimage", "matplotlib"))
    slicer_runtime.load_module(REPO / "DiffusionAnomaly" / "DiffusionAnomaly.py")
    slicer.mrmlScene.Clear(0)
    widget = slicer_runtime.make_widget("DiffusionAnomaly")  # shown in the module panel: set up, entered

    from DiffusionAnomalyLib.slicer_module import selftest

    pn = widget._parameterNode
    selftest.prepare(slicer.mrmlScene, pn)  # the phantom CT, its kidney segmentation, the demo bundle's settings
    os.environ["DA_WORKER_PYTHON"] = worker  # the worker's Python, without showing a local path in the panel
    with slicer.util.NodeModify(pn.parameterNode):
        pn.device = "cpu"
    widget.ui.applyButton.click()
    widget.logic.wait(600)
    run = widget.logic.runner.run
    if run.error is not None:
        raise SystemExit(f"the run failed: {run.error}")
    for section in (widget.ui.advancedCollapsibleButton, widget.ui.logCollapsibleButton):
        section.collapsed = False  # open, so that every control drawn is one a user would see
    panel = widget.parent
    panel.resize(480, panel.sizeHint.height())  # (a PythonQt-style property in the runtime)
    panel.show()
    for _ in range(20):
        slicer.app.processEvents()

    from PyQt5 import QtCore, QtGui

    shot = panel.grab().toImage()
    band = 84
    image = QtGui.QImage(shot.width(), shot.height() + band, QtGui.QImage.Format_RGB32)
    image.fill(QtGui.QColor("white"))
    painter = QtGui.QPainter(image)
    painter.drawImage(0, 0, shot)
    painter.setPen(QtGui.QColor("black"))
    painter.drawText(QtCore.QRect(12, shot.height() + 6, shot.width() - 24, band - 12),
                     QtCore.Qt.TextWordWrap | QtCore.Qt.AlignVCenter, NOTE)
    painter.end()
    if not image.save(str(out), "PNG"):
        raise SystemExit(f"could not write {out}")


def main() -> None:
    worker = os.environ.get("DA_WORKER_PYTHON", str(REPO / ".venv" / "bin" / "python"))
    demo_overviews(worker)
    panel_after_run(worker, HERE / "panel-after-run.png")
    for png in sorted(HERE.glob("*.png")):
        print(f"{png.relative_to(REPO)}: {png.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
