"""Dock the napari-diffseg widgets in a real napari window and save screenshots of them.

Builds a small synthetic project in a temporary folder, pretrains a ``tiny`` teacher and makes proposals
(CLI, ~20 s on a CPU), starts a local backend from the Project widget, opens the next image (the Annotate
widget shows its proposal and uncertainty by itself) and runs a tiny pretraining job from the Train widget. Needs a display; headless::

    xvfb-run -a python examples/screenshot_widgets.py [--out examples/screenshots]

The README's screenshots come from a trained project instead, so that proposals and plots look like real
use: run the demo first, then point the script at a copy of its project (the copy is what it opens; the
Train widget replays the demo's last co-training round from its persisted events)::

    diffseg demo --out /tmp/demo
    xvfb-run -a python examples/screenshot_widgets.py --project /tmp/demo/project
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import napari
from qtpy.QtWidgets import QApplication

from napari_diffseg.data.synthetic import make_sample_dataset
from napari_diffseg.project import Project


def wait_until(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    """Run the Qt event loop until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the widgets did not get there in time")
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):  # let the canvas draw
        QApplication.processEvents()
        time.sleep(0.01)


def build_project(folder: Path) -> Path:
    ds = make_sample_dataset(folder / "ds", n_train=6, n_test=1, size=(128, 128), seed=2)
    root = folder / "project"
    with Project.create(root) as project:
        for path in sorted((ds / "images").glob("*.png")):
            project.import_array(iio.imread(path), path.stem)
    for step in ("pretrain", "propose"):
        cli = [sys.executable, "-m", "napari_diffseg.cli", step, str(root), "--preset", "tiny", "-q"]
        subprocess.run(cli, check=True)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "screenshots")
    parser.add_argument("--project", type=Path, help="a trained project to show (a copy of it is opened)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        if args.project is not None:
            root = Path(tmp) / "project"
            shutil.copytree(args.project, root)
        else:
            root = build_project(Path(tmp))
        with Project.open(root) as p:
            n_images = len(p.images())
            cotrain_jobs = [j.id for j in p.jobs() if j.kind == "cotrain" and j.state == "done"]
        viewer = napari.Viewer(title="napari-diffseg")
        viewer.window.resize(1400, 1000)
        _, project = viewer.window.add_plugin_dock_widget("napari-diffseg", "Project")
        _, annotate = viewer.window.add_plugin_dock_widget("napari-diffseg", "Annotate")
        _, train = viewer.window.add_plugin_dock_widget("napari-diffseg", "Train")
        try:
            project.folder.setText(str(root))
            project.start_local(root)
            wait_until(lambda: project.table.rowCount() == n_images)
            viewer.screenshot(str(args.out / "project_widget.png"), canvas_only=False)
            project.open_next()  # the annotate widget shows the image's proposal by itself

            def proposal_shown() -> bool:
                image = project.session.image
                return (
                    image is not None
                    and annotate.image_id == image["id"]
                    and annotate.labels is not None
                    and annotate.labels.visible
                    and annotate.uncertainty is not None
                )

            wait_until(proposal_shown)
            viewer.screenshot(str(args.out / "annotate_widget.png"), canvas_only=False)

            if cotrain_jobs:  # a trained project: replay its last round's history
                train.follow(cotrain_jobs[-1])
                wait_until(lambda: "done" in train.status.text() and train.models_table.rowCount() > 0)
                time.sleep(0.5)
                wait_until(lambda: True)
            else:
                train.kind.setCurrentText("pretrain")
                train.start()
                wait_until(lambda: "done" in train.status.text())
            viewer.screenshot(str(args.out / "train_widget.png"), canvas_only=False)
        finally:
            project.session.stop_server()
            viewer.close()
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
