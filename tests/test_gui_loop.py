"""The whole annotation loop through the three docked widgets, on a real local backend (Xvfb, tiny preset).

Create a project from the project widget (its local backend starts by itself), import sample images,
pretrain from the train widget and propose, "Next image" → the proposal shows by itself (Labels +
uncertainty) → paint on the Labels layer → Shift-S → the correction is recorded with its edit Dice → a
co-training round from the train widget → the model table shows the new version as active → "Next image"
→ the proposal shown is requested from, and made by, the new model.
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


def _sample_files(folder: Path) -> tuple[list[Path], list[np.ndarray]]:
    import imageio.v3 as iio

    from napari_diffseg.data.synthetic import make_sample

    folder.mkdir()
    paths, masks = [], []
    for k in range(N_TRAIN):
        image, mask = make_sample(10 + k, SIZE)
        path = folder / f"cells-{k:02d}.png"
        iio.imwrite(path, image)
        paths.append(path)
        masks.append(mask)
    return paths, masks


def test_the_whole_loop_through_the_docked_widgets(make_napari_viewer, qtbot, tmp_path, monkeypatch) -> None:
    from napari.layers import Image, Labels
    from qtpy.QtCore import Qt

    from napari_diffseg._widgets import project as project_module
    from napari_diffseg.data.synthetic import make_sample

    monkeypatch.setattr(project_module, "ask_create", lambda _parent, _folder: True)
    paths, masks = _sample_files(tmp_path / "images")
    viewer = make_napari_viewer()
    project, annotate, train = (_dock(viewer, name) for name in ("Project", "Annotate", "Train"))
    assert project.session is annotate.session is train.session
    annotate.propose_options = {"preset": "tiny"}  # the propose jobs it requests: quick ones
    try:
        # 1. a new project in an empty folder: created, its local backend started and connected
        project.folder.setText(str(tmp_path / "proj"))
        project.start_button.click()
        qtbot.waitUntil(lambda: project.session.client is not None, timeout=60_000)
        assert (tmp_path / "proj" / "project.db").is_file()
        assert project.session.server is not None and project.session.server.poll() is None
        client: DiffsegClient = project.session.client

        # 2. import the sample files; ground truth for one of them and for a validation image
        project.import_files(paths)
        qtbot.waitUntil(lambda: project.table.rowCount() == N_TRAIN, timeout=WAIT_MS)
        assert project.last_import is not None and not project.last_import.failed
        assert {r["state"] for r in _table(project)} == {"unlabeled"}
        client.save_annotation("cells-00", masks[0], replaces=None, kind="ground_truth")
        val_image, val_mask = make_sample(99, SIZE)
        client.upload_image(val_image, name="val-00", split="val")
        client.save_annotation("val-00", val_mask, replaces=None, kind="ground_truth")
        project.refresh_button.click()
        qtbot.waitUntil(lambda: project.table.rowCount() == N_TRAIN + 1, timeout=WAIT_MS)
        assert _row(project, "cells-00")["state"] == "ground_truth"

        # 3. pretrain from the train widget: one model, active; then proposals for every unreviewed image
        _run_job(qtbot, train, "pretrain")
        qtbot.waitUntil(lambda: train.models_table.rowCount() == 1, timeout=WAIT_MS)
        (pretrained,) = _table(train, train.models_table)
        assert pretrained["active"] == "●" and pretrained["round"] == "0"
        first_model = pretrained["model"]
        propose = client.request_proposals(preset="tiny")
        assert client.wait(propose.id, timeout=JOB_MS / 1000).state == "done"
        project.refresh_button.click()
        qtbot.waitUntil(lambda: _row(project, "cells-01")["state"] == "proposed", timeout=WAIT_MS)
        states = {r["name"]: r["state"] for r in _table(project)}
        assert states == {
            **{p.stem: "proposed" for p in paths[1:]},
            "cells-00": "ground_truth",
            "val-00": "ground_truth",
        }
        assert all(r["uncertainty"] for r in _table(project) if r["state"] == "proposed")

        # 4. Next image: the most uncertain unreviewed image opens with its proposal, no extra click
        expected = client.next_image()
        assert expected is not None and expected.state == "proposed"
        project.next_button.click()
        qtbot.waitUntil(lambda: annotate.image_id == expected.id, timeout=WAIT_MS)
        name = expected.name
        assert [layer.name for layer in viewer.layers] == [name, f"{name} uncertainty", f"{name} proposal"]
        assert isinstance(viewer.layers[name], Image) and isinstance(
            viewer.layers[f"{name} uncertainty"], Image
        )
        assert viewer.layers[f"{name} uncertainty"].colormap.name.startswith("uncertainty ≥ 0.50")
        assert tuple(viewer.layers[f"{name} uncertainty"].contrast_limits) == (0.0, 1.0)
        assert isinstance(annotate.labels, Labels) and annotate.labels.name == f"{name} proposal"
        assert annotate.model_id == first_model
        proposal = client.proposal_pixels(expected.id, "mask", model_id=first_model)
        assert np.array_equal(annotate.labels.data, proposal)
        assert len([j for j in client.jobs() if j.kind == "propose"]) == 1  # it was cached: no new job

        # 5. paint a block into the Labels layer and save with Shift-S in the canvas
        edited = np.array(annotate.labels.data)
        edited[4:28, 4:28] = 1
        edited[40:60, 40:60] = 0
        assert not np.array_equal(edited, proposal)
        annotate.labels.data = edited
        assert annotate.has_unsaved_edits()
        canvas = viewer.window._qt_viewer.canvas.native
        canvas.setFocus()
        qtbot.keyClick(canvas, Qt.Key.Key_S, Qt.KeyboardModifier.ShiftModifier)
        qtbot.waitUntil(lambda: _row(project, name)["state"] == "corrected", timeout=WAIT_MS)
        (version,) = client.annotations(expected.id)
        assert version.kind == "correction" and version.proposal_id == annotate.proposal_id
        assert np.array_equal(client.annotation_pixels(expected.id), edited)
        dice = client.image(expected.id).last_edit_dice
        assert dice is not None and 0.0 <= dice < 1.0  # the edit changed the proposal
        assert _row(project, name)["last edit Dice"] == f"{dice:.3f}"
        assert not annotate.has_unsaved_edits()

        # 6. a tiny co-training round from the train widget: the table shows the new version, active
        _run_job(qtbot, train, "cotrain")
        qtbot.waitUntil(lambda: train.models_table.rowCount() == 2, timeout=WAIT_MS)
        qtbot.waitUntil(lambda: train.active_model() != first_model, timeout=WAIT_MS)
        rows = {r["model"]: r for r in _table(train, train.models_table)}
        new_model = train.active_model()
        assert new_model is not None and new_model.startswith("round1-")
        assert rows[new_model]["active"] == "●" and rows[new_model]["round"] == "1"
        assert rows[first_model]["active"] == ""
        assert 0.0 <= float(rows[new_model]["val Dice"]) <= 1.0  # val-00 has ground truth
        assert [m.id for m in client.models() if m.active] == [new_model]

        # 7. Next image: the new model has no proposal for it yet, so one is requested, followed, shown
        second = client.next_image()
        assert second is not None and second.id != expected.id
        assert client.proposal(second.id, model_id=new_model) is None
        project.next_button.click()
        qtbot.waitUntil(lambda: "proposing" in annotate.current.text(), timeout=WAIT_MS)
        assert new_model in annotate.current.text()
        qtbot.waitUntil(lambda: annotate.image_id == second.id, timeout=JOB_MS)
        assert annotate.model_id == new_model
        assert client.proposal(second.id, model_id=new_model).id == annotate.proposal_id
        name2 = second.name
        assert [layer.name for layer in viewer.layers] == [name2, f"{name2} uncertainty", f"{name2} proposal"]
        assert np.array_equal(
            annotate.labels.data, client.proposal_pixels(second.id, "mask", model_id=new_model)
        )
        assert new_model in annotate.current.text()
    finally:
        project.session.stop_server()
