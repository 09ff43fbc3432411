"""The Annotate widget in an instance project whose objects are of two classes (issue 13): a screenshot.

A synthetic image of discs and rods (:func:`napari_diffseg.data.synthetic.make_sample_classed`) in a project
created with ``--task instances --classes background,disc,rod``. No model is trained: the proposal is the
image's true objects and classes, stored as a stand-in model's proposal with **one rod proposed as a disc**
(what a correction fixes), so the screenshot shows the layers and the widget, not a model's accuracy. The
image opens with its objects as outlines, the "… classes" layer filling each object with its class, and
the *Class* box; the script then chooses *rod* and dabs it on the wrong object (the whole object turns rod),
and saves the screenshot ``docs/screenshots/classed_instances_annotate.png`` (256 colours). Headless::

    xvfb-run -a python examples/screenshot_instance_classes.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _shots import settle, shrink, wait_until  # noqa: E402


def make_project(root: Path) -> tuple[int, int]:
    """The project with its one image and the stand-in proposal; returns a pixel ``(y, x)`` of the object
    proposed in the wrong class (the largest rod)."""
    import numpy as np

    from napari_diffseg.base.task import make_task
    from napari_diffseg.core.instances import instances_to_target
    from napari_diffseg.data.synthetic import make_sample_classed
    from napari_diffseg.project import Project

    image, ids, classes = make_sample_classed(seed=4, size=(256, 256))
    mapping = {int(i): int(np.bincount(classes[ids == i]).argmax()) for i in np.unique(ids[ids > 0])}
    rods = [i for i, c in mapping.items() if c == 2]
    wrong = max(rods, key=lambda i: int((ids == i).sum()))
    proposed = {**mapping, wrong: 1}
    model = root.parent / "stand-in-model"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"format_version": 1}')
    (model / "weights.safetensors").write_bytes(b"\x00" * 64)
    with Project.create(root, task=make_task("instances", "background,disc,rod")) as proj:
        proj.register_model(model, round=0, method="teacher")
        proj.import_array(image, "discs_and_rods")
        target = instances_to_target(ids.astype(np.int64), classes=proposed)
        probs = np.stack([target == c for c in range(proj.task.num_classes)]).astype(np.float32)
        proj.save_proposal(model.name, "discs_and_rods", probs, np.zeros(ids.shape, np.float32))
    ys, xs = np.nonzero(ids == wrong)
    return int(ys[len(ys) // 2]), int(xs[len(xs) // 2])


def main() -> None:
    os.environ["DIFFSEG_CALIBRATE"] = "0"
    import napari
    import numpy as np

    from napari_diffseg.backend.local import start_local_backend

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        y, x = make_project(root)
        proc, url = start_local_backend(root)
        viewer = napari.Viewer(title="napari-diffseg")
        viewer.window.resize(1500, 950)
        _, project = viewer.window.add_plugin_dock_widget("napari-diffseg", "Project")
        _, annotate = viewer.window.add_plugin_dock_widget("napari-diffseg", "Annotate")
        session = project.session
        session.server = proc
        try:
            project.connect_to(url)
            wait_until(lambda: session.client is not None and project.table.rowCount() > 0, 120)
            project.open_next()
            wait_until(lambda: annotate.class_layer is not None and annotate.class_layer.visible, 120)
            layer = annotate.class_layer
            before = int(np.asarray(layer.data)[y, x])
            annotate.choose_class(2)  # rod
            layer.brush_size = 6
            layer.paint((y, x), 2)  # a dab on the object proposed as a disc
            wait_until(lambda: int(np.asarray(layer.data)[y, x]) == 2, 30)
            viewer.reset_view()
            settle(1.5)
            print(f"object at ({y}, {x}): class {before} → {int(np.asarray(layer.data)[y, x])}", flush=True)
            print(annotate.current.text(), flush=True)
            path = HERE.parent / "docs" / "screenshots" / "classed_instances_annotate.png"
            viewer.screenshot(str(path), canvas_only=False)
            shrink(path)
            print(f"screenshot {path} ({os.path.getsize(path) // 1024} KiB)", flush=True)
        finally:
            session.stop_server()
            viewer.close()


if __name__ == "__main__":
    main()
