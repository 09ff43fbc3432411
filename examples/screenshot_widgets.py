"""The first hour in napari on real images, timed, with screenshots of the widgets (issue 17).

What a new user does, through the real widgets and a local backend, on images of a real dataset read from
``../shared/data`` (nothing is copied into the repository; the project lives in a temp folder):

1. *Project*: open a new folder (it becomes a project), import the images (files).
2. *Train*: the widget starts at ``pretrain`` and says what it will cost; Start (label-free pretraining).
3. *Next image*: the proposal and the uncertainty of the image appear by themselves (a propose job).
4. A few images are corrected (here: their ground truth is saved as the correction, as a person would after
   fixing the proposal), then *Train* suggests ``cotrain``: Start a round.
5. *Train*: ``propose`` on every unreviewed image (the table's uncertainty column fills).
6. *Next image* opens the most uncertain image, with the new model's proposal and uncertainty.

Every step's promised time (the Train widget's estimate) and measured time go to ``OUT/NAME_first_hour.json``;
screenshots to ``OUT/NAME_*.png``. Needs a display; headless::

    xvfb-run -a python examples/screenshot_widgets.py --dataset ../shared/data/dsb2018_nuclei --name dsb
    xvfb-run -a python examples/screenshot_widgets.py --dataset ../shared/data/glas --name glas

``--first-proposal-only`` stops after step 3 (what a new project's first minutes promise).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"


def wait_until(condition: Callable[[], bool], timeout: float = 3600.0) -> None:
    """Run the Qt event loop until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the widgets did not get there in time")
        QApplication.processEvents()
        time.sleep(0.02)
    settle()


def settle(seconds: float = 0.4) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # let the canvas and the docks draw
        QApplication.processEvents()
        time.sleep(0.01)


def pick(dataset: Path, n: int, seed: int) -> list[str]:
    """``n`` train ids of a dataset folder, seeded."""
    from napari_diffseg.data.dataset import DatasetFolder

    ids = sorted(DatasetFolder(dataset).ids_in_split("train"))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, size=min(n, len(ids)), replace=False).tolist())


def proposal_dice(labels: np.ndarray, ds, name: str) -> float | None:
    """Dice of a proposal's foreground (label > 0) against the dataset's mask of that image, where it has
    one: how much of it the person would keep."""
    from napari_diffseg.core.metrics import dice_per_class

    if not ds.has_mask(name):
        return None
    truth = np.asarray(ds.load_mask(name)) > 0
    (dice,) = dice_per_class((labels.reshape(truth.shape) > 0).astype(np.int64), truth.astype(np.int64), 2)
    return 1.0 if np.isnan(dice) else dice


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DATA / "dsb2018_nuclei")
    parser.add_argument("--name", default="dsb")
    parser.add_argument("--images", type=int, default=12, help="training images imported")
    parser.add_argument(
        "--correct", type=int, default=3, help="images corrected before the co-training round"
    )
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "screenshots")
    parser.add_argument(
        "--first-proposal-only",
        action="store_true",
        help="stop once the first proposal is on screen (the promise of a new project's first minutes)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from napari_diffseg._widgets import project as project_module
    from napari_diffseg.data.dataset import DatasetFolder

    ds = DatasetFolder(args.dataset)
    ids = pick(args.dataset, args.images, args.seed)
    files = [ds.image_path(i) for i in ids]
    record: dict = {
        "dataset": str(args.dataset.name),
        "images": len(files),
        "preset": args.preset,
        "machine": f"{_cpu()}, {os.cpu_count()} cores",
        "load_average_at_start": os.getloadavg()[0],
        "steps": [],
    }
    shot = 0

    def screenshot(viewer: napari.Viewer, what: str) -> None:
        nonlocal shot
        shot += 1
        path = args.out / f"{args.name}_{what}.png"
        viewer.screenshot(str(path), canvas_only=False)
        print(f"screenshot {path}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / f"{args.name}-project"
        project_module.ask_create = lambda _parent, _folder: True  # the "create a project?" dialog: Yes
        viewer = napari.Viewer(title="napari-diffseg")
        viewer.window.resize(1600, 1000)
        _, project = viewer.window.add_plugin_dock_widget("napari-diffseg", "Project")
        _, annotate = viewer.window.add_plugin_dock_widget("napari-diffseg", "Annotate")
        _, train = viewer.window.add_plugin_dock_widget("napari-diffseg", "Train")
        session = project.session
        try:
            t_open = time.monotonic()
            project.folder.setText(str(root))
            project.open_project(root)
            wait_until(lambda: session.client is not None)
            project.import_files([str(f) for f in files])
            wait_until(lambda: project.table.rowCount() == len(files))
            record["steps"].append(
                {"step": "open a new folder, import", "seconds": time.monotonic() - t_open}
            )

            def run_job(what: str, kind: str, scope: str | None = None, suggested: bool = True) -> None:
                if suggested:  # the widget offers this job by itself
                    wait_until(lambda: train.kind.currentText() == kind and bool(train.estimate.text()), 120)
                else:  # the user picks it
                    train.kind.setCurrentText(kind)
                train.preset.setCurrentText(args.preset)
                if scope is not None:
                    train.scope.setCurrentIndex(
                        [train.scope.itemData(i) for i in range(train.scope.count())].index(scope)
                    )
                settle()
                promised = train.estimate.text()
                predicted = train.plan.seconds * (session.speed or 1.0) if train.plan else None
                t0 = time.monotonic()
                train.start()
                mid = {"done": False}

                def halfway() -> bool:
                    frac = train.history.fraction()
                    if not mid["done"] and frac is not None and frac >= 0.5 and kind != "propose":
                        mid["done"] = True
                        screenshot(viewer, f"train_{kind}")
                    return "done" in train.status.text() or "failed" in train.status.text()

                wait_until(halfway)
                if "failed" in train.status.text():
                    raise RuntimeError(train.status.text())
                record["steps"].append(
                    {
                        "step": what,
                        "kind": kind,
                        "promised": promised,
                        "predicted_seconds": predicted,
                        "seconds": time.monotonic() - t0,
                        "speed_after": session.speed,
                    }
                )
                print(record["steps"][-1], flush=True)

            def open_next(what: str) -> None:
                t0 = time.monotonic()
                project.open_next()

                def shown() -> bool:
                    image = session.image
                    return (
                        image is not None
                        and annotate.image_id == image.id
                        and annotate.labels is not None
                        and annotate.labels.visible
                        and annotate.uncertainty is not None  # shown, or hidden as a flat map
                        and bool(annotate.unc_summary.text())
                    )

                wait_until(shown)
                viewer.reset_view()  # the image fills the canvas
                settle(1.0)
                name = session.image.name
                record["steps"].append(
                    {
                        "step": what,
                        "image": name,
                        "seconds": time.monotonic() - t0,
                        # what the person is shown, against the expert's mask (never shown to the model)
                        "proposal_dice": proposal_dice(np.asarray(annotate.labels.data), ds, name),
                        "annotate_status": annotate.current.text(),
                        "uncertainty_summary": annotate.unc_summary.text(),
                    }
                )
                print(record["steps"][-1], flush=True)

            # the local backend measures this machine's speed when it starts (a few seconds); the first
            # estimate uses it
            t_speed = time.monotonic()
            wait_until(lambda: session.speed is not None, 180)
            record["speed_measured_at_start"] = session.speed
            record["speed_wait_seconds"] = time.monotonic() - t_speed
            t_first = time.monotonic()
            run_job("label-free pretraining", "pretrain")
            open_next("Next image after pretraining: proposal and uncertainty shown")
            record["first_proposal_seconds"] = time.monotonic() - t_first
            screenshot(viewer, "annotate_round0")

            if not args.first_proposal_only:  # the rest of the hour
                # a person corrects a few proposals (here: saves the ground truth as the correction)
                client = session.client
                for name in ids[: args.correct]:
                    rec = client.image(name)
                    proposal = client.proposal(rec.id)
                    client.save_annotation(
                        rec.id,
                        ds.load_mask(name),
                        replaces=rec.latest_version,
                        kind="correction",
                        proposal_id=None if proposal is None else proposal.id,
                        author="first-hour script (ground truth)",
                    )
                session.images_changed.emit()
                run_job("co-training round 1", "cotrain")
                run_job("propose on every unreviewed image", "propose", "unreviewed", suggested=False)
                screenshot(viewer, "project")
                open_next("Next image (the most uncertain) after round 1")
                screenshot(viewer, "annotate")
        finally:
            session.stop_server()
            viewer.close()
    record["load_average_at_end"] = os.getloadavg()[0]
    path = args.out / f"{args.name}_first_hour.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"timings in {path}")


if __name__ == "__main__":
    main()
