"""Issue 17, "the first hour", in the GUI (Xvfb, real backend): what a new user sees.

* A new project's Train widget starts at ``pretrain`` and says what it will cost; an image opened before
  any model says so and opens on an empty mask to paint, which gives way to the proposal by itself once
  pretraining made a model; painted and saved, that mask is the image's first annotation, and the Train
  widget then offers ``cotrain``.
* The Train widget then suggests ``propose``; proposing on all images fills the table's uncertainty
  column, with progress over the whole job, and "Next image" opens the most uncertain image.
* The uncertainty layer is on a fixed 0-1 bit scale, transparent below the threshold, with a legend and
  a summary line; a flat map says that it means nothing; the proposal is yellow; after a save the layer
  and the status line say what they hold and name the image.
* A job the backend refuses says why in the Train widget's status line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("no display: install Xvfb and pytest-xvfb to run the GUI tests", allow_module_level=True)

from backend_server import Server
from napari_diffseg.backend.client import DiffsegClient

pytestmark = pytest.mark.timeout(300)

WAIT_MS = 30_000
JOB_MS = 120_000


def _dock(viewer, name: str):
    _w, widget = viewer.window.add_plugin_dock_widget("napari-diffseg", name)
    return widget


def _row(project, name: str) -> dict[str, str]:
    headers = [project.table.horizontalHeaderItem(c).text() for c in range(project.table.columnCount())]
    for r in range(project.table.rowCount()):
        if project.table.item(r, 0).text() == name:
            return {h: project.table.item(r, c).text() for c, h in enumerate(headers)}
    raise AssertionError(f"{name} is not in the table")


def _connected_docks(viewer, qtbot, url: str, images: int):
    """The Project, Annotate and Train widgets docked and connected to ``url``, its ``images`` listed."""
    project, annotate, train = _dock(viewer, "Project"), _dock(viewer, "Annotate"), _dock(viewer, "Train")
    project.connect_to(url)
    qtbot.waitUntil(lambda: project.table.rowCount() == images, timeout=WAIT_MS)
    return project, annotate, train


def _fresh_project(root: Path) -> Path:
    """Three unlabeled RGB images of two sizes (one larger than the tiny preset's 64-px tiles); no model."""
    from napari_diffseg.data.synthetic import make_sample
    from napari_diffseg.project import Project

    with Project.create(root) as proj:
        for k, size in enumerate(((64, 64), (64, 64), (96, 80))):
            image, _mask = make_sample(11 + k, size)
            proj.import_array(np.asarray(image), f"img{k}")
    return root


def test_a_new_project_from_pretrain_to_the_most_uncertain_proposal(
    make_napari_viewer, qtbot, tmp_path
) -> None:
    root = _fresh_project(tmp_path / "proj")
    with Server(root) as server, DiffsegClient(server.url) as client:
        project, annotate, train = _connected_docks(make_napari_viewer(), qtbot, server.url, images=3)

        # 1. nothing trained, nothing annotated: the Train widget starts at pretrain and prices it
        qtbot.waitUntil(lambda: "3 image(s)" in train.estimate.text(), timeout=WAIT_MS)
        assert train.kind.currentText() == "pretrain"
        assert not train.rounds.isEnabled() and not train.scope.isEnabled()
        train.preset.setCurrentText("tiny")  # a preset choice is not a job choice: the kind still follows
        assert re.search(r"about \d+(\.\d)? (s|min) for 3 image\(s\)", train.estimate.text()), (
            train.estimate.text()
        )

        # 2. an image opened before any model says so, naming it, and offers an empty mask to paint
        project.next_button.click()
        qtbot.waitUntil(lambda: "no model yet" in annotate.current.text(), timeout=WAIT_MS)
        opened = project.session.image.name
        assert annotate.current.text().startswith(f"{opened}: ") and "pretrain" in annotate.current.text()
        qtbot.waitUntil(
            lambda: annotate.labels is not None and annotate.image_id is not None, timeout=WAIT_MS
        )
        image = project.session.image
        assert annotate.labels.name == f"{opened} annotation" and annotate.labels.visible
        assert np.shape(annotate.labels.data) == (image.height, image.width)
        assert not np.any(annotate.labels.data) and "paint" in annotate.current.text()

        # 3. pretrain: progress and ETA over the whole job; then the proposal appears by itself
        etas: list[str] = []
        train.start()
        assert train.eta.text().startswith("starting · about ") and "whole job" in train.eta.text()
        qtbot.waitUntil(
            lambda: etas.append(train.eta.text()) or "done" in train.status.text(), timeout=JOB_MS
        )
        assert train.history.plan is not None and train.history.fraction() == 1.0
        assert train.progress.value() == train.progress.maximum() == 1000
        assert any("left in the whole job" in t for t in etas), etas
        # the untouched empty mask gives way to the first model's proposal by itself
        qtbot.waitUntil(lambda: annotate.labels.name == f"{opened} proposal", timeout=JOB_MS)
        assert "no model" not in annotate.current.text() and annotate.current.text().startswith(f"{opened}: ")
        assert "uncertainty" in annotate.unc_summary.text() and opened in annotate.unc_summary.text()
        assert train.session.speed is not None  # the next estimates use this backend's measured speed

        # 4. a model but no annotation: the widget suggests propose; all images get a proposal
        qtbot.waitUntil(lambda: train.kind.currentText() == "propose", timeout=WAIT_MS)
        assert train.scope.isEnabled() and not train.rounds.isEnabled()
        assert "at the speed this backend showed" in train.estimate.text()
        train.scope.setCurrentIndex(1)  # all images (here: the same three)
        assert sorted(train.params()["ids"]) == sorted(im.id for im in client.images())
        train.start()
        qtbot.waitUntil(
            lambda: "done" in train.status.text() and train.start_button.isEnabled(), timeout=JOB_MS
        )
        job = client.job(train.job_id)
        assert job.kind == "propose" and job.state == "done"
        model = client.project().active_model.id
        assert all(client.proposal(im.id, model_id=model) is not None for im in client.images())
        qtbot.waitUntil(
            lambda: all(_row(project, f"img{k}")["uncertainty"] for k in range(3)), timeout=WAIT_MS
        )

        # 5. Next image now opens the most uncertain one
        expected = client.next_image()
        highest = max((im for im in client.images() if im.state == "proposed"), key=lambda im: im.uncertainty)
        assert expected.id == highest.id
        if project.session.image.id != expected.id:
            project.next_button.click()
            qtbot.waitUntil(lambda: project.session.image.id == expected.id, timeout=WAIT_MS)
        qtbot.waitUntil(lambda: annotate.image_id == expected.id, timeout=WAIT_MS)
        project.session.stop_server()


def _stand_in_project(root: Path, kind: str) -> Path:
    """One RGB image "a" with a proposal (a disc) from a registered stand-in model (no training): its
    uncertainty is flat near 1 bit (``flat``, an untrained teacher), high over most of the image
    (``broad``) or high only around the disc's edge (``edges``)."""
    from napari_diffseg.project import Project

    size = (48, 56)
    model = root.parent / "teacher0"
    model.mkdir()
    (model / "config.json").write_text('{"format_version": 1}')
    (model / "weights.safetensors").write_bytes(b"\x00" * 64)
    yy, xx = np.mgrid[: size[0], : size[1]]
    r = np.sqrt((yy - 24) ** 2 + (xx - 28) ** 2)
    disc = (r < 10).astype(np.float32)
    rng = np.random.default_rng(0)
    if kind == "flat":
        unc = (0.97 + 0.03 * rng.random(size)).astype(np.float32)
    elif kind == "broad":
        unc = np.where(r > 16, 0.7, 0.1).astype(np.float32)  # 70 %: coloured at 0.5 bit, not at 0.8
    else:
        unc = np.where(np.abs(r - 10) < 2, 0.9, 0.05).astype(np.float32)
    with Project.create(root) as proj:
        proj.register_model(model, round=0, method="teacher")
        proj.import_array(rng.integers(0, 255, (*size, 3), dtype=np.uint8), "a")
        fg = 0.1 + 0.8 * disc
        proj.save_proposal("teacher0", "a", np.stack([1 - fg, fg]), unc)
    return root


@pytest.mark.parametrize("kind", ["edges", "flat", "broad"])
def test_the_uncertainty_layer_informs(make_napari_viewer, qtbot, tmp_path, kind: str) -> None:
    from napari_diffseg._widgets.annotate import PROPOSAL_COLOR

    with Server(_stand_in_project(tmp_path / "proj", kind)) as server, DiffsegClient(server.url) as client:
        viewer = make_napari_viewer()
        project, annotate = _dock(viewer, "Project"), _dock(viewer, "Annotate")
        project.connect_to(server.url)
        qtbot.waitUntil(lambda: project.table.rowCount() == 1, timeout=WAIT_MS)
        project.next_button.click()
        qtbot.waitUntil(lambda: annotate.image_id is not None, timeout=WAIT_MS)
        layer = viewer.layers["a uncertainty"]
        unc = client.proposal_pixels("a", "uncertainty")

        # the same fixed scale on every image, transparent below the threshold, a legend
        assert tuple(layer.contrast_limits) == (0.0, 1.0)
        assert layer.blending == "translucent"
        assert "bright = the teacher disagrees with itself" in annotate.legend.text()
        rgba = layer.colormap.map(np.array([0.0, 0.49, 0.5, 1.0]))
        assert rgba[0, 3] == rgba[1, 3] == 0.0 and rgba[2, 3] > 0.5 and rgba[3, 3] > 0.8
        # the proposal is yellow, whatever the image
        color = annotate.labels.colormap.map(np.array([1]))[0]
        assert np.allclose(color[:3], [int(PROPOSAL_COLOR[i : i + 2], 16) / 255 for i in (1, 3, 5)])

        text = annotate.unc_summary.text()
        if kind == "flat":  # it says so, and the layer is hidden: it would cover everything and say nothing
            assert "not trained enough for its uncertainty to mean anything" in text
            assert not layer.visible and "hidden" in text
        elif kind == "broad":  # hidden too, until a higher threshold colours less than half the image
            assert "cannot single out errors" in text and not layer.visible
            annotate.threshold.setValue(0.8)
            assert layer.visible and "cannot single out" not in annotate.unc_summary.text()
            annotate.threshold.setValue(0.5)
            assert not layer.visible
        else:
            assert layer.visible
            share = float(np.mean(unc >= 0.5))
            assert "not trained enough" not in text and f"{100 * share:.1f} %" in text

        # a higher threshold colours less, and the summary follows
        annotate.threshold.setValue(0.95)
        rgba = layer.colormap.map(np.array([0.9, 0.96]))
        assert rgba[0, 3] == 0.0 and rgba[1, 3] > 0.5
        assert (
            "0.95 bit" in annotate.unc_summary.text() or "not trained enough" in annotate.unc_summary.text()
        )

        # a save: the layer now holds an annotation, and the status line names the image
        edited = np.array(annotate.labels.data)
        edited[:5, :5] = 1
        annotate.labels.data = edited
        annotate.save()
        qtbot.waitUntil(lambda: annotate.base_version == 1, timeout=WAIT_MS)
        assert annotate.labels.name == "a annotation"
        text = annotate.current.text()
        assert text.startswith("a: saved as annotation version 1") and "edit Dice" in text
        project.session.stop_server()


def test_without_a_model_a_mask_is_painted_from_scratch_and_saved(
    make_napari_viewer, qtbot, tmp_path
) -> None:
    """No model yet: the image opens on an empty mask; painted and saved (Shift-S), it is the image's first
    annotation (no proposal, so no edit Dice), and then the Train widget offers a co-training round."""
    root = _fresh_project(tmp_path / "proj")
    with Server(root) as server, DiffsegClient(server.url) as client:
        project, annotate, train = _connected_docks(make_napari_viewer(), qtbot, server.url, images=3)
        qtbot.waitUntil(lambda: train.kind.currentText() == "pretrain", timeout=WAIT_MS)  # nothing annotated
        project.next_button.click()
        qtbot.waitUntil(
            lambda: annotate.labels is not None and annotate.image_id is not None, timeout=WAIT_MS
        )
        image = project.session.image
        assert not annotate.has_unsaved_edits()
        painted = np.zeros((image.height, image.width), np.int32)
        painted[10:30, 12:40] = 1
        annotate.labels.data = painted.copy()  # what the brush would leave
        assert annotate.has_unsaved_edits()
        annotate.save()
        qtbot.waitUntil(lambda: "saved as annotation version 1" in annotate.current.text(), timeout=WAIT_MS)
        assert "edit Dice" not in annotate.current.text()  # nothing was proposed to compare with
        assert client.image(image.id).state == "corrected"
        assert np.array_equal(client.annotation_pixels(image.id) > 0, painted > 0)
        assert annotate.labels.name == f"{image.name} annotation" and not annotate.has_unsaved_edits()
        train.refresh_images()
        qtbot.waitUntil(lambda: train.kind.currentText() == "cotrain", timeout=WAIT_MS)  # Stage A not needed
        project.session.stop_server()


def test_a_refused_job_says_why_in_the_status_line(make_napari_viewer, qtbot, tmp_path) -> None:
    from napari_diffseg._widgets import _session
    from napari_diffseg._widgets._session import session_for

    root = _fresh_project(tmp_path / "proj")
    with Server(root) as server:
        viewer = make_napari_viewer()
        session_for(viewer).set_client(DiffsegClient(server.url))
        train = _dock(viewer, "Train")
        qtbot.waitUntil(lambda: "3 image(s)" in train.estimate.text(), timeout=WAIT_MS)
        train.kind.setCurrentText("cotrain")  # nothing is annotated: the estimate warns before Start
        assert "nothing is annotated yet" in train.estimate.text()
        warned: list[str] = []
        _session.show_warning, original = warned.append, _session.show_warning
        try:
            train.start()
            qtbot.waitUntil(lambda: "did not start" in train.status.text(), timeout=WAIT_MS)
        finally:
            _session.show_warning = original
        assert "at least one annotated image" in train.status.text()
        assert warned and "at least one annotated image" in warned[0]
        # the worker's "errored" and "finished" signals come one after the other: Start comes back
        # with the second, a moment after the status line says why
        qtbot.waitUntil(train.start_button.isEnabled, timeout=WAIT_MS)


def test_a_folder_of_images_becomes_a_project_and_an_odd_import_is_warned_about(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
) -> None:
    import imageio.v3 as iio

    from napari_diffseg._widgets import project as project_module

    folder = tmp_path / "fundus photos"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for k in range(3):
        iio.imwrite(folder / f"eye{k}.png", rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    asked: list[tuple[Path, Path, int]] = []
    monkeypatch.setattr(
        project_module, "ask_create_from_images", lambda _p, f, t, n: asked.append((f, t, n)) or True
    )
    warnings: list[str] = []
    monkeypatch.setattr(project_module, "show_warning", warnings.append)
    viewer = make_napari_viewer()
    project = _dock(viewer, "Project")
    project.open_project(folder)
    target = tmp_path / "fundus photos-diffseg"
    assert asked == [(folder, target, 3)]
    try:
        qtbot.waitUntil(lambda: project.table.rowCount() == 3, timeout=60_000)
        assert (target / "project.db").is_file() and project.folder.text() == str(target)
        assert sorted(p.name for p in folder.iterdir()) == ["eye0.png", "eye1.png", "eye2.png"]
        assert warnings == []

        grey = tmp_path / "em.png"
        iio.imwrite(grey, rng.integers(0, 255, (40, 48), dtype=np.uint8))
        project.import_files([grey])
        qtbot.waitUntil(lambda: project.table.rowCount() == 4, timeout=WAIT_MS)
        qtbot.waitUntil(lambda: bool(warnings), timeout=WAIT_MS)
        assert "em is grey but the project's 3 image(s) are RGB" in warnings[0]
    finally:
        project.session.stop_server()

    # the same folder again: the project made of it opens (no second copy)
    again = _dock(make_napari_viewer(), "Project")
    again.open_project(folder)
    try:
        qtbot.waitUntil(lambda: again.table.rowCount() == 4, timeout=60_000)
        assert len(asked) == 1 and again.folder.text() == str(target)
    finally:
        again.session.stop_server()


def test_plot_ticks_differ_and_the_legend_sits_under_the_axes(qtbot) -> None:
    from qtpy.QtGui import QColor

    from napari_diffseg._widgets._plot import CurvePlot, nice_ticks, tick_labels

    # a loss that moves in the third decimal: every tick reads differently (it used to be "1.15" five times)
    labels = tick_labels(nice_ticks(1.148, 1.152, 5))
    assert len(set(labels)) == len(labels) == 5 and labels[0] == "1.148"
    assert tick_labels([0.0, 0.25, 0.5]) == ["0.00", "0.25", "0.50"]
    assert tick_labels([0.0, 2500.0, 5000.0]) == ["0", "2500", "5000"]

    plot = CurvePlot("students' losses", "step")
    qtbot.addWidget(plot)
    plot.resize(320, 240)
    names = ["labelled images", "teacher's pseudo-labels", "agreement between the twins"]
    plot.set_data({n: ([0, 1, 2], [1.150, 1.149 + 0.001 * i, 1.148]) for i, n in enumerate(names)})
    plot.show()
    qtbot.waitExposed(plot)
    rows = plot._legend_rows(plot.fontMetrics(), plot.width() - 8)
    assert sum(len(r) for r in rows) == 3 and len(rows) >= 2  # wrapped into rows under the axes
    image = plot.grab().toImage()
    # the bottom rows of the widget (the legend) hold each curve's colour (antialiased: nearly)
    legend_top = plot.height() - len(rows) * plot.fontMetrics().height() - 4
    seen = [
        image.pixelColor(x, y).getRgb()[:3]
        for x in range(plot.width())
        for y in range(legend_top, plot.height())
    ]
    for name in names:
        want = QColor(plot.colors[name]).getRgb()[:3]
        assert any(sum(abs(a - b) for a, b in zip(px, want, strict=True)) < 60 for px in seen), name
