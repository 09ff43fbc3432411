"""An instance project's proposal in the Annotate widget, as a user sees it: a screenshot (issue 13).

On DSB 2018 nuclei (``../shared/data/dsb2018_nuclei``, expert instances), nothing copied into the
repository:

1. an instance project (``diffseg init --task instances``) in a work folder (a temp folder unless
   ``--workdir``) of ``--images`` training images, the first ``--labelled`` of them with their instance
   masks (``instances/<id>.tif``: one id per nucleus), the others unlabelled;
2. a ``cotrain`` job (label-free pretraining, the teacher, one co-training round on the 3-class
   background / interior / boundary target) and a ``propose`` job, in a local backend as the Train widget
   runs them (``--preset``, ``--overrides`` shorten them on a busy machine);
3. napari with the *Project* and *Annotate* widgets: open the project, *Next image*: the most uncertain
   image opens with its proposal as an **instance Labels layer** (``part=instances``: each nucleus its own
   id and colour, a fresh id selected for the next stroke) and its uncertainty; screenshot to
   ``OUT/NAME.png`` (256 colours).

Steps 1-2 are skipped when the work folder already holds a project with proposals. Needs a display;
headless::

    xvfb-run -a python examples/screenshot_instances.py --workdir /tmp/dsb-inst
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
sys.path.insert(0, str(HERE))
from _shots import diffseg, settle, shrink, train_and_propose, wait_until  # noqa: E402


def prepare(
    dataset: Path,
    work: Path,
    images: int,
    labelled: int,
    preset: str,
    threads: int,
    overrides: dict[str, Any],
) -> Path:
    """An instance project of ``images`` training images (``labelled`` of them with their instances),
    co-trained once, with proposals."""
    project = work / "project"
    if (project / "project.db").is_file():
        from napari_diffseg.project import Project

        with Project.open(project) as proj:
            if any(r.state == "proposed" for r in proj.images()):
                return project
        raise SystemExit(f"{project} exists but has no proposals: remove it or choose another --workdir")
    split = dict(
        line.split(",")[:2] for line in (dataset / "split.csv").read_text().splitlines()[1:] if line.strip()
    )
    files = {p.stem: p for p in (dataset / "images").iterdir()}
    ids = sorted(i for i, s in split.items() if s == "train" and i in files)[:images]
    ds = work / "dataset"  # links to the shared files: nothing copied
    (ds / "images").mkdir(parents=True, exist_ok=True)
    (ds / "instances").mkdir(exist_ok=True)
    for k, stem in enumerate(ids):
        link = ds / "images" / files[stem].name
        if not link.exists():
            link.symlink_to(files[stem].resolve())
        if k < labelled:
            inst = next((dataset / "instances").glob(f"{stem}.*"))
            link = ds / "instances" / inst.name
            if not link.exists():
                link.symlink_to(inst.resolve())
    diffseg("init", str(project), "--images", str(ds), "--task", "instances")

    train_and_propose(project, preset, overrides, threads)
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DATA / "dsb2018_nuclei")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the project here (default: temp)")
    parser.add_argument("--images", type=int, default=10, help="training images imported")
    parser.add_argument("--labelled", type=int, default=4, help="of them imported with their instances")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the jobs")
    parser.add_argument(
        "--overrides",
        type=json.loads,
        default={},
        help="preset fields to change, JSON (e.g. '{\"cotrain_steps\": 200}'); default: the preset as it is",
    )
    parser.add_argument("--name", default="instances_proposal")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["DIFFSEG_CALIBRATE"] = "0"  # no start-up speed measurement: the script ends right after

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        root = prepare(
            args.dataset, work, args.images, args.labelled, args.preset, args.threads, args.overrides
        )

        import napari
        import numpy as np

        viewer = napari.Viewer(title="napari-diffseg")
        viewer.window.resize(1600, 1000)
        _, project = viewer.window.add_plugin_dock_widget("napari-diffseg", "Project")
        _, annotate = viewer.window.add_plugin_dock_widget("napari-diffseg", "Annotate")
        session = project.session
        try:
            project.folder.setText(str(root))
            project.open_project(root)
            wait_until(lambda: session.client is not None and project.table.rowCount() > 0, 120)
            project.open_next()

            def shown() -> bool:
                image = session.image
                return (
                    image is not None
                    and annotate.image_id == image.id
                    and annotate.labels is not None
                    and annotate.labels.visible
                    and bool(annotate.unc_summary.text())
                )

            wait_until(shown, 300)
            image = session.image
            labels = annotate.labels
            labels.opacity = 0.6
            viewer.reset_view()
            settle(1.5)
            objects = len(np.unique(np.asarray(labels.data))) - 1
            print(
                f"{image.name}: {objects} objects in the proposal (ids up to {int(np.max(labels.data))}); "
                f"selected label {labels.selected_label}",
                flush=True,
            )
            print(annotate.current.text(), annotate.unc_summary.text(), sep="\n", flush=True)
            path = args.out / f"{args.name}.png"
            viewer.screenshot(str(path), canvas_only=False)
            shrink(path)
            print(f"screenshot {path} ({os.path.getsize(path) // 1024} KiB)", flush=True)
        finally:
            session.stop_server()
            viewer.close()


if __name__ == "__main__":
    main()
