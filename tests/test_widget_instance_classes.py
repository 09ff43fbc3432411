"""The widgets in an instance project whose objects are of several classes (issue 13), against a real
backend on loopback (Xvfb via pytest-xvfb): the Project widget creates one (``background,nucleus,
mitosis``); the Annotate widget shows the proposal's class map in a "<image> classes" Labels layer below the
objects, in the project's class colours, with a *Class* box; a dab of class paint recolours a whole object,
a new object takes the *Class* box's class (painted, or at save when it has no class pixel), and the save
stores each object's class; an annotation opens with its stored classes; one-class projects are unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("no display: install Xvfb and pytest-xvfb to run the GUI tests", allow_module_level=True)

from backend_server import Server
from gui_steps import WAIT_MS, dock, table
from napari_diffseg.backend.client import DiffsegClient

pytestmark = pytest.mark.timeout(240)

SIZE = (48, 48)
CLASSES = "background,nucleus:#00ff00,mitosis:#ff00ff"
#: each object of :func:`_scene` and its class (1 nucleus, 2 mitosis)
SCENE_CLASSES = {1: 1, 2: 2, 3: 1, 4: 2}


def _scene() -> np.ndarray:
    """Four separate objects."""
    a = np.zeros(SIZE, np.int64)
    a[2:12, 2:12] = 1
    a[20:30, 20:30] = 2
    a[2:10, 30:40] = 3
    a[36:46, 4:14] = 4
    return a


def make_classed_project(root: Path, classes: str | None = CLASSES, annotated: bool = False) -> Path:
    """Image ``img`` with a proposal of a registered stand-in model: the objects of :func:`_scene` with the
    classes :data:`SCENE_CLASSES` (one-hot probabilities of their target); with ``annotated`` also image
    ``gt`` whose annotation stores those objects, objects 1 and 4 swapped to the other class."""
    from napari_diffseg.base.task import make_task
    from napari_diffseg.core.instances import instances_to_target
    from napari_diffseg.project import Project

    model = root.parent / "teacher0"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"format_version": 1}')
    (model / "weights.safetensors").write_bytes(b"\x00" * 64)
    with Project.create(root, task=make_task("instances", classes)) as proj:
        proj.register_model(model, round=0, method="teacher")
        proj.import_array(np.random.default_rng(0).integers(0, 255, SIZE, dtype=np.uint8), "img")
        k = proj.task.num_classes
        target = instances_to_target(_scene(), classes=SCENE_CLASSES if proj.task.classed else None)
        probs = np.stack([target == c for c in range(k)]).astype(np.float32)
        proj.save_proposal("teacher0", "img", probs, np.zeros(SIZE, np.float32))
        if annotated:
            proj.import_array(np.random.default_rng(1).integers(0, 255, SIZE, dtype=np.uint8), "gt")
            swapped = {**SCENE_CLASSES, 1: 2, 4: 1}
            proj.save_annotation("gt", _scene(), replaces=None, object_classes=swapped)
    return root


def _open(make_napari_viewer, qtbot, url: str):
    viewer = make_napari_viewer()
    project = dock(viewer, "Project")
    annotate = dock(viewer, "Annotate")
    project.connect_to(url)
    qtbot.waitUntil(lambda: project.table.rowCount() >= 1, timeout=WAIT_MS)
    return viewer, project, annotate


def _classes_of(ids: np.ndarray, cmap: np.ndarray) -> dict[int, set[int]]:
    """Each object's class values under it (one value each when the class map is painted per object)."""
    return {int(i): {int(v) for v in np.unique(cmap[ids == i])} for i in np.unique(ids[ids > 0])}


def test_a_classed_proposal_shows_its_classes_and_a_class_painted_or_new_object_is_stored(
    make_napari_viewer, qtbot, tmp_path
) -> None:
    from napari_diffseg.core.instances import class_map

    root = make_classed_project(tmp_path / "proj")
    with Server(root) as server, DiffsegClient(server.url) as client:
        _viewer, project, annotate = _open(make_napari_viewer, qtbot, server.url)
        project.next_button.click()
        qtbot.waitUntil(
            lambda: annotate.class_layer is not None and annotate.class_layer.name == "img classes",
            timeout=WAIT_MS,
        )
        labels, layer = annotate.labels, annotate.class_layer
        ids = np.asarray(labels.data).copy()
        cmap = np.array(layer.data, copy=True)
        # the classes layer: the proposal's class map, each object one class, below the objects
        assert layer.name == "img classes" and layer.visible
        assert np.array_equal(cmap, client.proposal_pixels("img", "classes"))
        by_object = _classes_of(ids, cmap)
        assert len(by_object) == 4 and all(len(v) == 1 for v in by_object.values())
        scene = _scene()
        for obj, (value,) in by_object.items():
            original = int(np.bincount(scene[ids == obj]).argmax())
            assert value == SCENE_CLASSES[original]
        viewer_layers = list(annotate.viewer.layers)
        assert viewer_layers.index(layer) == viewer_layers.index(labels) - 1
        # the class colours, 0 transparent; the objects as outlines
        assert np.allclose(layer.get_color(1)[:3], [0, 1, 0]) and np.allclose(
            layer.get_color(2)[:3], [1, 0, 1]
        )
        assert layer.get_color(0) is None or layer.get_color(0)[3] == 0
        assert labels.contour > 0
        box = annotate.class_box
        assert annotate.class_row.isVisibleTo(annotate)
        assert [box.itemText(i) for i in range(box.count())] == ["1 nucleus", "2 mitosis"]
        assert "1 nucleus" in annotate.classes_legend.text() and "2 mitosis" in annotate.classes_legend.text()
        assert not annotate.has_unsaved_edits()

        # change object A's class: choose mitosis, dab it on A (a few pixels): the whole object takes it
        a = int(ids[6, 6])
        assert by_object[a] == {1}
        annotate.choose_class(2)
        assert annotate.viewer.layers.selection.active.name == layer.name
        assert layer.selected_label == 2 and layer.mode == "paint"
        layer.brush_size = 2
        layer.paint((6, 6), 2)
        qtbot.waitUntil(  # a dab recolours the whole object
            lambda: set(np.unique(np.asarray(layer.data)[ids == a])) == {2}, timeout=WAIT_MS
        )
        assert annotate.has_unsaved_edits()  # a class change alone is an edit

        # a new object painted with a stroke takes the Class box's class (mitosis) at once
        annotate.new_object_button.click()
        assert annotate.viewer.layers.selection.active.name == labels.name
        fresh = labels.selected_label
        labels.brush_size = 5
        labels.paint((42, 36), fresh)
        painted = np.asarray(labels.data) == fresh
        assert painted.any()
        qtbot.waitUntil(lambda: set(np.unique(np.asarray(layer.data)[painted])) == {2}, timeout=WAIT_MS)

        # a new object put in without a stroke (no class pixel under it) gets the Class box's class at save
        box.setCurrentIndex(box.findData(1))
        box.activated.emit(box.currentIndex())
        assert layer.selected_label == 1
        edited = np.array(labels.data)
        edited[14:18, 40:46] = fresh + 1
        labels.data = edited
        annotate.save_button.click()
        qtbot.waitUntil(lambda: client.image("img").latest_version == 1, timeout=WAIT_MS)
        ann = client.annotations("img")[-1]
        saved = client.annotation_pixels("img", 1)
        assert np.array_equal(saved, edited)
        stored = {int(k): int(v) for k, v in (ann.object_classes or {}).items()}
        expected = {int(i): next(iter(by_object[int(i)])) for i in by_object}
        expected.update({a: 2, fresh: 2, fresh + 1: 1})
        assert stored == expected
        qtbot.waitUntil(lambda: "objects by class" in annotate.current.text(), timeout=WAIT_MS)
        text = annotate.current.text()
        # nucleus: 2 proposed - A + the new one put in; mitosis: 2 proposed + A + the new one painted
        assert "objects by class: 2 nucleus, 4 mitosis" in text
        assert "1 object without a class given class nucleus" in text
        # what is on screen is what was stored, and nothing is left unsaved
        shown = np.asarray(layer.data)
        assert np.array_equal(shown[edited > 0], class_map(edited, stored)[edited > 0])
        assert not annotate.has_unsaved_edits() and layer.name == "img classes"

        # Revert brings the proposal's class map back beside its objects
        annotate.revert()
        assert np.array_equal(np.asarray(layer.data), cmap) and np.array_equal(np.asarray(labels.data), ids)


def test_an_annotation_opens_with_its_stored_classes_and_one_class_projects_keep_their_look(
    make_napari_viewer, qtbot, tmp_path
) -> None:
    from napari_diffseg.core.instances import class_map

    root = make_classed_project(tmp_path / "proj", annotated=True)
    with Server(root) as server, DiffsegClient(server.url) as client:
        _viewer, project, annotate = _open(make_napari_viewer, qtbot, server.url)
        qtbot.waitUntil(lambda: project.table.rowCount() == 2, timeout=WAIT_MS)
        project.table.cellDoubleClicked.emit([r["name"] for r in table(project)].index("gt"), 0)
        qtbot.waitUntil(
            lambda: (
                annotate.image_id is not None
                and annotate.class_layer is not None
                and annotate.class_layer.name == "gt classes"
            ),
            timeout=WAIT_MS,
        )
        ann = client.annotations("gt")[-1]
        assert ann.object_classes == {1: 2, 2: 2, 3: 1, 4: 1}
        ids = np.asarray(annotate.labels.data)
        assert np.array_equal(ids, _scene())
        assert np.array_equal(np.asarray(annotate.class_layer.data), class_map(ids, ann.object_classes))

    # a one-class instance project: no classes layer, no Class box, objects filled as before
    root = make_classed_project(tmp_path / "one" / "proj", classes=None)
    with Server(root) as server:
        _viewer, project, annotate = _open(make_napari_viewer, qtbot, server.url)
        project.next_button.click()
        qtbot.waitUntil(
            lambda: annotate.labels is not None and annotate.labels.name == "img proposal", timeout=WAIT_MS
        )
        assert annotate.class_layer is None and not annotate.class_row.isVisibleTo(annotate)
        assert annotate.labels.contour == 0 and annotate.labels.opacity == 0.5
        assert sorted(int(v) for v in np.unique(annotate.labels.data) if v) == [1, 2, 3, 4]


def test_the_project_widget_creates_an_instance_project_with_object_classes(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
) -> None:
    from napari_diffseg._widgets import project as project_module

    viewer = make_napari_viewer()
    widget = dock(viewer, "Project")
    try:
        monkeypatch.setattr(project_module, "ask_create", lambda *_a: True)
        widget.set_task("instances", "background,nucleus,mitosis")
        assert widget.classes.isEnabled() and "nucleus" in widget.classes.placeholderText()
        widget.folder.setText(str(tmp_path / "new"))
        widget.start_button.click()
        qtbot.waitUntil(lambda: widget.session.client is not None, timeout=60_000)
        info = widget.session.client.project()
        assert info.task == "instances"
        assert [c.name for c in info.classes] == ["background", "nucleus", "mitosis"]
    finally:
        widget.session.stop_server()
