"""A z-stack in the Annotate widget, as a user sees it: a screenshot (issue 12, item 3).

On confocal z-stacks of CHO nuclei (``../shared/data/ctc_cho_3d``: 5 × 443 × 512 voxels; its labels are
algorithmic, fine for showing the loop, not for accuracy claims), nothing copied into the repository:

1. a project in a work folder (a temp folder unless ``--workdir``) with ``--stacks`` stacks, the first
   ``--masks`` of them with their masks (ground truth of every plane), the others unlabelled;
2. a ``cotrain`` job at the ``cpu`` preset (label-free pretraining, the teacher, one co-training round, on
   planes) and a ``propose`` job (a proposal and an uncertainty for every plane of the unlabelled stacks),
   in a local backend as the Train widget runs them (``--overrides`` shortens them on a busy machine);
3. napari with the *Project* and *Annotate* widgets: open the project, *Next image*: the most uncertain
   stack opens as a 3D image with its proposal as a 3D Labels layer and its uncertainty as a 3D image, the
   Z slider at its most uncertain plane; screenshot to ``OUT/NAME_annotate.png`` (256 colours).

Steps 1-2 are skipped when the work folder already holds a project with proposals. Needs a display;
headless::

    xvfb-run -a python examples/screenshot_zstack.py --dataset ../shared/data/ctc_cho_3d --workdir /tmp/cho

``docs/screenshots/cho_zstack_annotate.png`` was taken with ``--stacks 4 --masks 2 --overrides
'{"teacher_steps": 150, "cotrain_steps": 200, "refresh_every": 100, "rounds": 1}' --threshold 0.75`` (the
``cpu`` preset shortened: the co-training job took 73 min and the proposals 3.5 min on our 2-core VM, which
other jobs kept at a load average of 6-10; not a benchmark).
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
    dataset: Path, work: Path, stacks: int, masks: int, preset: str, threads: int, overrides: dict[str, Any]
) -> Path:
    """A project of ``stacks`` stacks (``masks`` of them with masks), co-trained once, with proposals.

    The jobs run in a local backend, as the Train widget runs them (``overrides``: preset fields to
    change, as the widget's API takes them)."""
    project = work / "project"
    if (project / "project.db").is_file():
        from napari_diffseg.project import Project

        with Project.open(project) as proj:
            if any(r.state == "proposed" for r in proj.images()):
                return project
        raise SystemExit(f"{project} exists but has no proposals: remove it or choose another --workdir")
    ids = sorted(p.stem for p in (dataset / "images").glob("*.tif"))[:stacks]
    ds = work / "dataset"  # links to the shared files: nothing copied
    (ds / "images").mkdir(parents=True, exist_ok=True)
    (ds / "masks").mkdir(exist_ok=True)
    for k, stem in enumerate(ids):
        for sub in ("images", "masks") if k < masks else ("images",):
            link = ds / sub / f"{stem}.tif"
            if not link.exists():
                link.symlink_to((dataset / sub / f"{stem}.tif").resolve())
    diffseg("init", str(project), "--images", str(ds))

    train_and_propose(project, preset, overrides, threads)
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DATA / "ctc_cho_3d")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the project here (default: temp)")
    parser.add_argument("--stacks", type=int, default=4, help="stacks imported")
    parser.add_argument("--masks", type=int, default=2, help="of them imported with their masks")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the jobs")
    parser.add_argument(
        "--overrides",
        type=json.loads,
        default={},
        help="preset fields to change, JSON (e.g. '{\"cotrain_steps\": 200}'); default: the preset as it is",
    )
    parser.add_argument("--name", default="cho_zstack")
    parser.add_argument(
        "--threshold", type=float, default=None, help="the uncertainty colour threshold, bit (default: 0.5)"
    )
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # the local backend skips its start-up speed measurement: the widgets would poll it until it ends,
    # and this script closes them (and the backend) right after the screenshot
    os.environ["DIFFSEG_CALIBRATE"] = "0"

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        root = prepare(args.dataset, work, args.stacks, args.masks, args.preset, args.threads, args.overrides)

        import napari

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
            if args.threshold is not None:  # what the annotator sets in the box under the legend
                annotate.threshold.setValue(args.threshold)
            image = session.image
            viewer.reset_view()
            settle(1.5)
            print(
                f"{image.name}: axes {image.axes}, shape {image.shape}, most uncertain plane {image.plane}; "
                f"Z slider at {viewer.dims.current_step[0]}; labels {annotate.labels.data.shape}",
                flush=True,
            )
            print(annotate.current.text(), annotate.unc_summary.text(), sep="\n", flush=True)
            path = args.out / f"{args.name}_annotate.png"
            viewer.screenshot(str(path), canvas_only=False)
            shrink(path)
            print(f"screenshot {path} ({os.path.getsize(path) // 1024} KiB)", flush=True)
        finally:
            session.stop_server()
            viewer.close()


if __name__ == "__main__":
    main()
