"""The widgets in instance and multiclass projects (issue 13), against a real backend on loopback (Xvfb via
pytest-xvfb): an instance project's proposal is an instance Labels layer (each object its own id and
colour, a fresh id selected), a new object painted and saved is stored as painted with one more object and
its cost in objects; a multiclass project's layer has the project's class colours and names; the Project
widget creates a project of the chosen task."""

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
from napari_diffseg.backend.client import DiffsegClient

pytestmark = pytest.mark.timeout(240)

WAIT_MS = 30_000
SIZE = (48, 48)


def _scene() -> np.ndarray:
    """Four separate objects."""
    a = np.zeros(SIZE, np.int64)
    a[2:12, 2:12] = 1
    a[20:30, 20:30] = 2
    a[2:10, 30:40] = 3
    a[36:46, 4:14] = 4
    return a


def _stand_in_model(root: Path) -> Path:
    model = root.parent / "teacher0"
    model.mkdir()
    (model / "config.json").write_text('{"format_version": 1}')
    (model / "weights.safetensors").write_bytes(b"\x00" * 64)
    return model


def make_project(root: Path, task: str, classes: str | None = None) -> Path:
    """One grey image ``img`` with a proposal of a registered stand-in model: for ``instances`` the 3-class
    target of :func:`_scene`, for ``multiclass`` classes 1 and 2 in two squares."""
    from napari_diffseg.base.task import make_task
    from napari_diffseg.core.instances import instances_to_target
    from napari_diffseg.project import Project

    model = _stand_in_model(root)
    with Project.create(root, task=make_task(task, classes)) as proj:
        proj.register_model(model, round=0, method="teacher")
        proj.import_array(np.random.default_rng(0).integers(0, 255, SIZE, dtype=np.uint8), "img")
        if task == "instances":
            target = instances_to_target(_scene())
            k = 3
        else:
            target = np.zeros(SIZE, np.int64)
            target[2:20, 2:20] = 1
            target[25:45, 25:45] = 2
            k = len(proj.task.classes)
        probs = np.stack([target == c for c in range(k)]).astype(np.float32)
        proj.save_proposal("teacher0", "img", probs, np.zeros(SIZE, np.float32))
    return root


def _open_proposal(make_napari_viewer, qtbot, url: str):
    viewer = make_napari_viewer()
    _w, project = viewer.window.add_plugin_dock_widget("napari-diffseg", "Project")
    _w, annotate = viewer.window.add_plugin_dock_widget("napari-diffseg", "Annotate")
    project.connect_to(url)
    qtbot.waitUntil(lambda: project.table.rowCount() == 1, timeout=WAIT_MS)
    project.next_button.click()
    qtbot.waitUntil(
        lambda: project.session.image is not None and annotate.image_id == project.session.image.id,
        timeout=WAIT_MS,
    )
    return viewer, project, annotate


def test_an_instance_proposal_is_an_instance_layer_and_a_new_object_saves_as_painted(
    make_napari_viewer, qtbot, tmp_path
) -> None:
    root = make_project(tmp_path / "proj", "instances")
    with Server(root) as server, DiffsegClient(server.url) as client:
        _viewer, project, annotate = _open_proposal(make_napari_viewer, qtbot, server.url)
        labels = annotate.labels
        data = np.asarray(labels.data)
        ids = sorted(int(v) for v in np.unique(data) if v)
        assert ids == [1, 2, 3, 4]  # each object its own id (the binary path would show one value)
        assert np.array_equal(data, client.proposal_pixels("img", "instances"))
        colours = {tuple(np.round(labels.get_color(i), 3)) for i in ids}
        assert len(colours) == len(ids)  # each object its own colour
        assert labels.selected_label == 5  # a fresh id: the first stroke paints a new object
        assert annotate.new_object_button.isVisibleTo(annotate)
        assert "Objects" in annotate.classes_legend.text()

        edited = data.copy()
        edited[40:46, 30:40] = labels.selected_label  # a new object, painted with the fresh id
        labels.data = edited
        annotate.save_button.click()
        qtbot.waitUntil(lambda: client.image("img").latest_version == 1, timeout=WAIT_MS)
        saved = client.annotation_pixels("img", 1)
        assert np.array_equal(saved, edited)  # stored as painted: the ids as they are
        assert len(np.unique(saved[saved > 0])) == len(ids) + 1
        ann = client.annotations("img")[-1]
        assert (ann.objects_added, ann.objects_removed, ann.objects_changed) == (1, 0, 0)
        qtbot.waitUntil(lambda: "objects: 1 added" in annotate.current.text(), timeout=WAIT_MS)
        assert "edit Dice" in annotate.current.text()
        assert labels.selected_label == 6  # the id just used is taken: the next stroke is a new object
        qtbot.waitUntil(lambda: "+1 −0 ~0 objects" in project.table.item(0, 3).text(), timeout=WAIT_MS)

        annotate.new_object_button.click()
        assert labels.selected_label == 6 and labels.mode == "paint"


def test_a_multiclass_layer_has_the_class_colours_and_names(make_napari_viewer, qtbot, tmp_path) -> None:
    root = make_project(tmp_path / "proj", "multiclass", "background,tumour:#ff0000,stroma:#00ff00")
    with Server(root) as server:
        _viewer, _project, annotate = _open_proposal(make_napari_viewer, qtbot, server.url)
        labels = annotate.labels
        assert sorted(int(v) for v in np.unique(labels.data)) == [0, 1, 2]
        assert np.allclose(labels.get_color(1)[:3], [1, 0, 0])
        assert np.allclose(labels.get_color(2)[:3], [0, 1, 0])
        legend = annotate.classes_legend.text()
        assert "1 tumour" in legend and "2 stroma" in legend and annotate.classes_legend.isVisibleTo(annotate)
        assert not annotate.new_object_button.isVisibleTo(annotate)


@pytest.mark.parametrize(("task", "classes"), [("instances", ""), ("multiclass", "background,gland,lumen")])
def test_the_project_widget_creates_a_project_of_the_chosen_task(
    make_napari_viewer, qtbot, tmp_path, monkeypatch, task: str, classes: str
) -> None:
    from napari_diffseg._widgets import project as project_module

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-diffseg", "Project")
    try:
        monkeypatch.setattr(project_module, "ask_create", lambda *_a: True)
        widget.set_task(task, classes)
        assert widget.classes.isEnabled()  # multiclass: required; instances: optional object classes
        folder = tmp_path / "new"
        widget.folder.setText(str(folder))
        widget.start_button.click()
        qtbot.waitUntil(lambda: widget.session.client is not None, timeout=60_000)
        info = widget.session.client.project()
        assert info.task == task
        if classes:
            assert [c.name for c in info.classes] == classes.split(",")
    finally:
        widget.session.stop_server()


def test_a_multiclass_project_without_class_names_is_not_created(
    make_napari_viewer, tmp_path, monkeypatch
) -> None:
    from napari_diffseg._widgets import project as project_module

    warnings: list[str] = []
    monkeypatch.setattr(project_module, "show_warning", warnings.append)
    monkeypatch.setattr(project_module, "ask_create", lambda *_a: True)
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-diffseg", "Project")
    widget.set_task("multiclass")
    widget.folder.setText(str(tmp_path / "new"))
    widget.start_button.click()
    assert not (tmp_path / "new" / "project.db").exists() and widget.session.server is None
    assert any("class names" in w for w in warnings)


def test_split_objects_re_splits_the_proposal_and_the_save_counts_from_it(
    make_napari_viewer, qtbot, tmp_path
) -> None:
    """Two touching squares joined by a seam: the model's watershed shows one object; *Split objects* with
    seeds above 0.7 shows two (made by the backend); saved untouched, the correction changed no object."""
    from napari_diffseg.base.task import make_task
    from napari_diffseg.project import Project

    root = tmp_path / "proj"
    model = _stand_in_model(root)
    interior = np.zeros(SIZE, np.float32)
    interior[8:20, 5:35] = 0.9
    interior[21:33, 5:35] = 0.9
    interior[20, 5:35] = 0.6  # a seam the default seeds (> 0.5) cross
    boundary = np.zeros_like(interior)
    boundary[20, 5:35] = 0.3
    probs = np.stack([1.0 - interior - boundary, interior, boundary]).astype(np.float32)
    with Project.create(root, task=make_task("instances")) as proj:
        proj.register_model(model, round=0, method="teacher")
        proj.import_array(np.zeros(SIZE, np.uint8), "img")
        proj.save_proposal("teacher0", "img", probs, np.zeros(SIZE, np.float32))
    with Server(root) as server, DiffsegClient(server.url) as client:
        _viewer, _project, annotate = _open_proposal(make_napari_viewer, qtbot, server.url)
        labels = annotate.labels
        assert int(np.asarray(labels.data).max()) == 1  # joined
        assert annotate.objects_button.isVisibleTo(annotate)
        annotate.objects_button.click()
        panel = annotate.objects_panel
        assert panel.isVisibleTo(annotate)
        qtbot.waitUntil(lambda: annotate._watershed_used is not None, timeout=WAIT_MS)
        assert panel.values()["seed_threshold"] == 0.5  # the model's own, from the backend

        # an edit blocks re-splitting (it would replace the edit)
        edited = np.asarray(labels.data).copy()
        edited[40:44, 40:44] = 7
        labels.data = edited
        panel.apply_button.click()
        assert "splitting" not in annotate.current.text()
        annotate.revert_button.click()

        panel.boxes["seed_threshold"].setValue(0.7)
        panel.apply_button.click()
        qtbot.waitUntil(lambda: int(np.asarray(labels.data).max()) == 2, timeout=WAIT_MS)
        assert "re-split (seeds > 0.7" in annotate.current.text()
        assert annotate._watershed == {**panel.values(), "seed_threshold": 0.7}
        annotate.save_button.click()
        qtbot.waitUntil(lambda: client.image("img").latest_version == 1, timeout=WAIT_MS)
        ann = client.annotations("img")[-1]
        assert (ann.objects_added, ann.objects_removed, ann.objects_changed) == (0, 0, 0)

        # Model's: the joined object again
        panel.model_button.click()
        qtbot.waitUntil(lambda: int(np.asarray(labels.data).max()) == 1, timeout=WAIT_MS)
        assert annotate._watershed is None and panel.values()["seed_threshold"] == 0.5
