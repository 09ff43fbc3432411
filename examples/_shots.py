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


def train_and_propose(project: Path, preset: str, overrides: dict, threads: int) -> None:
    """One co-training round, then proposals, as jobs of a local backend started for ``project``."""
    from napari_diffseg.backend.client import DiffsegClient
    from napari_diffseg.backend.local import start_local_backend

    proc, url = start_local_backend(project, threads=threads)
    try:
        with DiffsegClient(url) as client:
            for kind, params in (
                ("cotrain", {"preset": preset, "overrides": overrides}),
                ("propose", {"preset": preset, "overrides": overrides}),
            ):
                t0 = time.monotonic()
                job = client.wait(client.start_job(kind, params).id)
                print(f"{kind} job {job.id}: {job.state} in {time.monotonic() - t0:.0f} s", flush=True)
                if job.state != "done":
                    raise SystemExit(f"the {kind} job ended {job.state}: {job.error}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
