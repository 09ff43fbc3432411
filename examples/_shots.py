"""Helpers shared by the screenshot examples: drive napari's Qt event loop until the widgets get somewhere,
run ``diffseg`` commands, and shrink a screenshot to 256 colours."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def wait_until(condition: Callable[[], bool], timeout: float = 600.0) -> None:
    """Run the Qt event loop until ``condition()`` holds."""
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the widgets did not get there in time")
        QApplication.processEvents()
        time.sleep(0.02)
    settle()


def settle(seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:  # let the canvas and the docks draw
        QApplication.processEvents()
        time.sleep(0.01)


def diffseg(*args: str) -> None:
    """Run a ``diffseg`` command (this interpreter's), echoing it."""
    cmd = [sys.executable, "-m", "napari_diffseg.cli", *args]
    print("$ diffseg " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def shrink(path: Path) -> None:
    """The screenshot in 256 colours (a napari window has few): a third of the size, same look."""
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=PILImage.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
