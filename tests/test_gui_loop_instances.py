"""The whole annotation loop of an **instance** project through the three docked widgets, on a real local
backend (Xvfb, tiny preset; issue 13).

Create an ``instances`` project from the Project widget (its local backend starts by itself), import
synthetic nuclei images (ground-truth object ids for one training and one validation image), pretrain and
propose from the Train widget, "Next image" → the proposal shows as an instance Labels layer (each object
its own id, a fresh id selected) → erase one object and paint a new one with the fresh id → Shift-S → the
correction is stored as painted with its cost in objects (1 added, 1 removed, 0 changed); one more object
with the next fresh id, saved again (2 added, 1 removed) → a co-training round from the Train widget learns from it (the backend turns the ids into its 3-class target) and its
model is active → "Next image" → the proposal shown is instances again, made by the new model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("no display: install Xvfb and pytest-xvfb to run the GUI tests", allow_module_level=True)

from gui_steps import JOB_MS, WAIT_MS
from gui_steps import dock as _dock
from gui_steps import row as _row
from gui_steps import run_job as _run_job
from gui_steps import table as _table
from napari_diffseg.backend.client import DiffsegClient

pytestmark = pytest.mark.timeout(300)

SIZE = (64, 64)
N_TRAIN = 5
NEW = 6  # the side of the square painted as a new object


def _sample_files(folder: Path) -> tuple[list[Path], list[np.ndarray]]:
    """Synthetic nuclei images as PNG files and their object ids (each nucleus its own id)."""
    import imageio.v3 as iio

    from napari_diffseg.data.synthetic import make_sample_instances

    folder.mkdir()
    paths, ids = [], []
    for k in range(N_TRAIN):
        image, objects = make_sample_instances(10 + k, SIZE)
        path = folder / f"nuclei-{k:02d}.png"
        iio.imwrite(path, image)
        paths.append(path)
        ids.append(objects)
    return paths, ids


def _object_ids(data: np.ndarray) -> list[int]:
    return sorted(int(v) for v in np.unique(data) if v)


def _background_square(objects: np.ndarray, side: int) -> tuple[slice, slice]:
    """The first ``side`` × ``side`` square one pixel clear of every object of ``objects``."""
    from scipy import ndimage as ndi

    near = ndi.binary_dilation(objects > 0, iterations=1)
    h, w = objects.shape
    for y in range(0, h - side + 1):
        for x in range(0, w - side + 1):
            if not near[y : y + side, x : x + side].any():
                return slice(y, y + side), slice(x, x + side)
    pytest.fail(f"no {side}x{side} background square beside the objects {_object_ids(objects)}")


def test_the_whole_instance_loop_through_the_docked_widgets(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
) -> None:
    from napari.layers import Image, Labels
    from qtpy.QtCore import Qt

    from napari_diffseg._widgets import project as project_module
    from napari_diffseg.base.labels import object_edits
    from napari_diffseg.core.instances import proposal_instances
    from napari_diffseg.data.synthetic import make_sample_instances

    monkeypatch.setattr(project_module, "ask_create", lambda _parent, _folder: True)
    paths, truths = _sample_files(tmp_path / "images")
    viewer = make_napari_viewer()
    project, annotate, train = (_dock(viewer, name) for name in ("Project", "Annotate", "Train"))
    annotate.propose_options = {"preset": "tiny"}  # the propose jobs it requests: quick ones
    try:
        # 1. a new instance project in an empty folder: created, its local backend started and connected
        project.set_task("instances")
        project.folder.setText(str(tmp_path / "proj"))
        project.start_button.click()
        qtbot.waitUntil(lambda: project.session.client is not None, timeout=60_000)
        client: DiffsegClient = project.session.client
        assert client.project().task == "instances"

        # 2. import the files; ground-truth object ids for one of them and for a validation image
        project.import_files(paths)
        qtbot.waitUntil(lambda: project.table.rowCount() == N_TRAIN, timeout=WAIT_MS)
        assert project.last_import is not None and not project.last_import.failed
        assert len(_object_ids(truths[0])) > 1
        client.save_annotation("nuclei-00", truths[0], replaces=None, kind="ground_truth")
        val_image, val_ids = make_sample_instances(99, SIZE)
        client.upload_image(val_image, name="val-00", split="val")
        client.save_annotation("val-00", val_ids, replaces=None, kind="ground_truth")
        assert np.array_equal(client.annotation_pixels("nuclei-00"), truths[0])  # the ids as they are
        project.refresh_button.click()
        qtbot.waitUntil(lambda: project.table.rowCount() == N_TRAIN + 1, timeout=WAIT_MS)
        assert _row(project, "nuclei-00")["state"] == "ground_truth"

        # 3. pretrain, then propose for the unreviewed images, both from the train widget
        _run_job(qtbot, train, "pretrain")
        qtbot.waitUntil(lambda: train.models_table.rowCount() == 1, timeout=WAIT_MS)
        (pretrained,) = _table(train, train.models_table)
        assert pretrained["active"] == "●" and pretrained["round"] == "0"
        first_model = pretrained["model"]
        _run_job(qtbot, train, "propose")
        project.refresh_button.click()  # (a refresh made while the job ran may still be on its way)
        states = {
            **{p.stem: "proposed" for p in paths[1:]},
            "nuclei-00": "ground_truth",
            "val-00": "ground_truth",
        }
        qtbot.waitUntil(lambda: {r["name"]: r["state"] for r in _table(project)} == states, timeout=WAIT_MS)
        assert all(r["uncertainty"] for r in _table(project) if r["state"] == "proposed")

        # 4. Next image: the proposal shows as an instance Labels layer, each object its own id
        expected = client.next_image()
        assert expected is not None and expected.state == "proposed"
        project.next_button.click()
        qtbot.waitUntil(lambda: annotate.image_id == expected.id, timeout=WAIT_MS)
        name = expected.name
        assert [layer.name for layer in viewer.layers] == [name, f"{name} uncertainty", f"{name} proposal"]
        assert isinstance(viewer.layers[name], Image)
        labels = annotate.labels
        assert isinstance(labels, Labels) and labels.name == f"{name} proposal"
        assert annotate.model_id == first_model
        shown = np.asarray(labels.data).copy()
        objects = client.proposal_pixels(expected.id, "instances", model_id=first_model)
        assert np.array_equal(shown, objects)  # the objects, not the binary mask
        probs = client.proposal_pixels(expected.id, "probs", model_id=first_model)
        assert probs.shape == (3, *SIZE)  # background, interior, boundary
        assert np.array_equal(shown, proposal_instances(probs))  # the backend's watershed of them
        ids = _object_ids(shown)
        assert ids == list(range(1, len(ids) + 1)), ids  # each object its own id, 1..N
        assert labels.selected_label == len(ids) + 1  # a fresh id: the first stroke paints a new object
        assert annotate.new_object_button.isVisibleTo(annotate)
        assert len([j for j in client.jobs() if j.kind == "propose"]) == 1  # shown from the store

        # 5. erase the largest object, paint a new one with the fresh id, save with Shift-S in the canvas
        # (a tiny-preset model's objects are whatever it makes of 3 steps, often one object over the whole
        # image; the edit is sized to them: the new square touches no remaining object and is under half the
        # erased one, so it matches no proposed object)
        sizes = {i: int((shown == i).sum()) for i in ids}
        erased = max(sizes, key=lambda i: sizes[i])
        assert sizes[erased] > 2 * NEW * NEW, sizes
        fresh = int(labels.selected_label)
        edited = shown.copy()
        edited[edited == erased] = 0
        square = _background_square(edited, NEW)
        edited[square] = fresh
        labels.data = edited
        assert annotate.has_unsaved_edits()
        after = _object_ids(edited)
        assert len(after) == len(ids) and erased not in after and fresh in after
        canvas = viewer.window._qt_viewer.canvas.native
        canvas.setFocus()
        qtbot.keyClick(canvas, Qt.Key.Key_S, Qt.KeyboardModifier.ShiftModifier)
        qtbot.waitUntil(lambda: _row(project, name)["state"] == "corrected", timeout=WAIT_MS)

        # the correction: stored as painted, with its cost in pixels and in objects
        (version,) = client.annotations(expected.id)
        assert version.kind == "correction" and version.proposal_id == annotate.proposal_id
        saved = client.annotation_pixels(expected.id)
        assert np.array_equal(saved, edited)
        assert _object_ids(saved) == after
        assert int((saved == fresh).sum()) == NEW * NEW and not np.any(saved == erased)
        assert (version.objects_added, version.objects_removed, version.objects_changed) == (1, 1, 0)
        e = object_edits(shown, edited)
        assert (e.added, e.removed, e.changed) == (1, 1, 0)
        record = client.image(expected.id)
        assert (record.last_objects_added, record.last_objects_removed, record.last_objects_changed) == (
            1,
            1,
            0,
        )
        assert version.pixels_changed == int(((shown > 0) != (edited > 0)).sum()) > 0
        assert record.last_edit_dice is not None and 0.0 < record.last_edit_dice < 1.0
        qtbot.waitUntil(lambda: "+1 −1 ~0 objects" in _row(project, name)["last edit Dice"], timeout=WAIT_MS)
        assert "objects: 1 added, 1 removed, 0 changed" in annotate.current.text()
        assert labels.selected_label == max(after) + 1  # the fresh id is taken now: the next one
        assert not annotate.has_unsaved_edits()

        # one more object with the next fresh id, saved over version 1: two objects of their own ids now
        second_fresh = int(labels.selected_label)
        edited2 = edited.copy()
        edited2[_background_square(edited2, NEW)] = second_fresh
        labels.data = edited2
        qtbot.keyClick(canvas, Qt.Key.Key_S, Qt.KeyboardModifier.ShiftModifier)
        qtbot.waitUntil(lambda: client.image(expected.id).latest_version == 2, timeout=WAIT_MS)
        saved2 = client.annotation_pixels(expected.id)
        assert np.array_equal(saved2, edited2)
        assert {fresh, second_fresh} <= set(_object_ids(saved2)) and second_fresh == fresh + 1
        assert len(_object_ids(saved2)) == len(ids) + 1
        assert np.array_equal(labels.data, edited2)  # the layer holds what was saved
        colour = {tuple(np.round(labels.get_color(i), 3)) for i in (fresh, second_fresh)}
        assert len(colour) == 2  # each object its own colour too
        latest = client.annotations(expected.id)[-1]
        assert latest.replaces == 1 and latest.proposal_id == annotate.proposal_id
        assert (latest.objects_added, latest.objects_removed, latest.objects_changed) == (2, 1, 0)
        qtbot.waitUntil(lambda: "+2 −1 ~0 objects" in _row(project, name)["last edit Dice"], timeout=WAIT_MS)

        # 6. a tiny co-training round from the train widget learns from the correction; its model active
        _run_job(qtbot, train, "cotrain")
        qtbot.waitUntil(lambda: train.models_table.rowCount() == 2, timeout=WAIT_MS)
        qtbot.waitUntil(lambda: train.active_model() != first_model, timeout=WAIT_MS)
        rows = {r["model"]: r for r in _table(train, train.models_table)}
        new_model = train.active_model()
        assert new_model is not None and new_model.startswith("round1-")
        assert rows[new_model]["active"] == "●" and rows[new_model]["round"] == "1"
        assert rows[first_model]["active"] == ""
        assert [m.id for m in client.models() if m.active] == [new_model]
        metrics = client.model(new_model).metrics
        assert metrics["labeled"] == 2  # the ground truth and the correction, both as 3-class targets
        assert metrics["val_n"] == 1 and 0.0 <= metrics["val_ap_50"] <= 1.0  # objects scored on val-00
        # the val Dice cell's tooltip lists the objects' figures
        row = [train.models_table.item(r, 1).text() for r in range(2)].index(new_model)
        tip = train.models_table.item(row, 4).toolTip()
        assert f"objects AP@0.5: {metrics['val_ap_50']:.3f}" in tip and "validation on 1 image(s)" in tip, tip

        # 7. Next image: the new model has no proposal for it yet, so one is requested; instances again
        second = client.next_image()
        assert second is not None and second.id != expected.id
        assert client.proposal(second.id, model_id=new_model) is None
        project.next_button.click()
        qtbot.waitUntil(lambda: annotate.image_id == second.id, timeout=JOB_MS)
        assert annotate.model_id == new_model
        assert client.proposal(second.id, model_id=new_model).id == annotate.proposal_id
        name2 = second.name
        assert [layer.name for layer in viewer.layers] == [name2, f"{name2} uncertainty", f"{name2} proposal"]
        shown2 = np.asarray(annotate.labels.data)
        assert np.array_equal(shown2, client.proposal_pixels(second.id, "instances", model_id=new_model))
        probs2 = client.proposal_pixels(second.id, "probs", model_id=new_model)
        assert probs2.shape == (3, *SIZE) and np.array_equal(shown2, proposal_instances(probs2))
        ids2 = _object_ids(shown2)
        assert ids2 == list(range(1, len(ids2) + 1)) and annotate.labels.selected_label == len(ids2) + 1
        assert new_model in annotate.current.text()
    finally:
        project.session.stop_server()
