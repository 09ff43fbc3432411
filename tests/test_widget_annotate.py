"""The annotate widget against a real backend on loopback (Xvfb via pytest-xvfb): the proposal shown by
itself when an image opens (the active model's), save with Shift-S, the last edit Dice in the project
table, Reject / Include again, and the unsaved-edit guard."""

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
from napari_diffseg.base.contracts import Annotation, Image, Job, Model, Proposal

pytestmark = pytest.mark.timeout(240)

WAIT_MS = 30_000
NAMES = ("a", "b", "c", "d")  # "a" is the most uncertain, then "b"...
SIZE = (48, 56)


def make_proposed_project(root: Path) -> Path:
    """Four RGB images, each with a proposal (a disc) from a registered stand-in model; no training."""
    from napari_diffseg.project import Project

    rng = np.random.default_rng(2)
    model = root.parent / "teacher0"
    model.mkdir()
    (model / "config.json").write_text('{"format_version": 1}')
    (model / "weights.safetensors").write_bytes(b"\x00" * 64)
    yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
    with Project.create(root) as proj:
        proj.register_model(model, round=0, method="teacher")
        for k, name in enumerate(NAMES):
            proj.import_array(rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8), name)
            disc = ((yy - 20 - k) ** 2 + (xx - 25) ** 2 < 100).astype(np.float32)
            fg = 0.1 + 0.8 * disc
            unc = (rng.random(SIZE) * (0.9 - 0.2 * k)).astype(np.float32)
            proj.save_proposal("teacher0", name, np.stack([1 - fg, fg]), unc)
    return root


@pytest.fixture
def server(tmp_path: Path):
    with Server(make_proposed_project(tmp_path / "proj")) as srv:
        yield srv


@pytest.fixture
def client(server: Server):
    with DiffsegClient(server.url) as c:
        yield c


@pytest.fixture
def docked(make_napari_viewer, qtbot, server: Server):
    """A viewer with the project and annotate widgets, connected, image "a" open and its proposal shown
    (it comes by itself: no click on "Load / request proposal")."""
    viewer = make_napari_viewer()
    _w, project = viewer.window.add_plugin_dock_widget("napari-diffseg", "Project")
    _w, annotate = viewer.window.add_plugin_dock_widget("napari-diffseg", "Annotate")
    project.connect_to(server.url)
    qtbot.waitUntil(lambda: project.table.rowCount() == len(NAMES), timeout=WAIT_MS)
    project.next_button.click()
    qtbot.waitUntil(lambda: project.session.image is not None, timeout=WAIT_MS)
    assert project.session.image.name == "a"
    _wait_proposal(qtbot, annotate, "a")
    return viewer, project, annotate


@pytest.fixture
def asked(monkeypatch):
    """Replace the Save / Discard / Cancel dialog: set ``asked.answer``; ``asked.names`` records calls."""
    from napari_diffseg._widgets import annotate as annotate_module

    class Ask:
        def __init__(self) -> None:
            self.answer = "cancel"
            self.names: list[str] = []

        def __call__(self, _parent, name: str) -> str:
            self.names.append(name)
            return self.answer

    ask = Ask()
    monkeypatch.setattr(annotate_module, "ask_unsaved", ask)
    return ask


def _edit(annotate) -> np.ndarray:
    edited = np.array(annotate.labels.data)
    edited[2:12, 30:50] = 1
    annotate.labels.data = edited
    return edited


def _row(project, name: str) -> dict[str, str]:
    headers = [project.table.horizontalHeaderItem(c).text() for c in range(project.table.columnCount())]
    for r in range(project.table.rowCount()):
        if project.table.item(r, 0).text() == name:
            return {h: project.table.item(r, c).text() for c, h in enumerate(headers)}
    raise AssertionError(f"{name} is not in the table")


def _image_layer(viewer):
    return next(layer for layer in viewer.layers if "diffseg_image" in layer.metadata)


def _wait_proposal(qtbot, annotate, name: str) -> None:
    """Wait until the proposal of the image under review, ``name``, is shown."""
    session = annotate.session

    def shown() -> bool:
        image = session.image
        return image is not None and image.name == name and annotate.image_id == image.id

    qtbot.waitUntil(shown, timeout=WAIT_MS)
    assert annotate.labels is not None and annotate.labels.name == f"{name} proposal"


def _layers(viewer) -> list[str]:
    return [layer.name for layer in viewer.layers]


def _visible_layers(viewer) -> list[str]:
    """The layers shown (a closed proposal's layers stay, hidden, to be reused for the next one)."""
    return [layer.name for layer in viewer.layers if layer.visible]


# ------------------------------------------------------------------------------------------ active model


def test_the_proposal_shown_is_the_active_models_and_a_missing_one_is_requested(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
) -> None:
    """A newer proposal of a model that is not active is not shown as current; the active model's is. An
    image the active model has no proposal for gets a propose job, followed in the status line (here it
    fails: the stand-in model has no real weights) and reported with a notification."""
    from napari_diffseg._widgets import _session
    from napari_diffseg.project import Project

    warnings: list[str] = []
    monkeypatch.setattr(_session, "show_warning", warnings.append)
    root = make_proposed_project(tmp_path / "proj")
    newer = tmp_path / "teacher1"
    newer.mkdir()
    # it says it is a diffseg model (so the backend's pre-flight lets a propose job start), but it has
    # no real weights: the job fails when it runs
    (newer / "config.json").write_text('{"format_version": 1, "spec": {"method": "diffseg"}}')
    (newer / "weights.safetensors").write_bytes(b"\x00" * 64)
    other = np.zeros(SIZE, np.float32)
    other[30:40, 5:15] = 1.0
    with Project.open(root) as proj:
        proj.register_model(newer, round=1, method="teacher")
        proj.save_proposal("teacher1", "a", np.stack([1 - other, other]), np.full(SIZE, 0.5, np.float32))
        proj.set_active_model("teacher0")
    with Server(root) as server, DiffsegClient(server.url) as client:
        assert client.proposal("a").model_id == "teacher1"  # without a model id: the newest of any
        viewer = make_napari_viewer()
        _w, project = viewer.window.add_plugin_dock_widget("napari-diffseg", "Project")
        _w, annotate = viewer.window.add_plugin_dock_widget("napari-diffseg", "Annotate")
        project.connect_to(server.url)
        qtbot.waitUntil(lambda: project.table.rowCount() == len(NAMES), timeout=WAIT_MS)
        project.next_button.click()
        _wait_proposal(qtbot, annotate, "a")
        assert annotate.model_id == "teacher0"
        assert np.array_equal(annotate.labels.data, client.proposal_pixels("a", "mask", model_id="teacher0"))
        assert "teacher0" in annotate.current.text()

        client.activate_model("teacher1")
        annotate.load_button.click()  # the explicit button: the same path, now teacher1's proposal
        qtbot.waitUntil(lambda: annotate.model_id == "teacher1", timeout=WAIT_MS)
        assert np.array_equal(annotate.labels.data, other.astype(np.int32))

        row = [project.table.item(r, 0).text() for r in range(project.table.rowCount())].index("b")
        project.table.cellDoubleClicked.emit(row, 0)  # teacher1 has no proposal for b: one is requested
        qtbot.waitUntil(lambda: "proposing" in annotate.current.text(), timeout=WAIT_MS)
        assert "teacher1" in annotate.current.text()
        assert _visible_layers(viewer) == ["b"]  # teacher0's older proposal is not shown as current
        jobs = [j for j in client.jobs() if j.kind == "propose"]
        assert len(jobs) == 1 and jobs[0].params["ids"] == [project.session.image.id]
        qtbot.waitUntil(lambda: "no proposal shown" in annotate.current.text(), timeout=60_000)
        assert client.job(jobs[0].id).state == "failed"
        assert any(f"job {jobs[0].id}" in w and "failed" in w for w in warnings), warnings
        assert _visible_layers(viewer) == ["b"] and annotate.image_id is None


# ------------------------------------------------------------------------------------------ save


def test_shift_s_in_the_canvas_saves_a_new_version(docked, qtbot, client) -> None:
    from qtpy.QtCore import Qt

    viewer, _project, annotate = docked
    assert client.annotations("a") == []
    edited = _edit(annotate)
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_S, Qt.KeyboardModifier.ShiftModifier)
    qtbot.waitUntil(lambda: len(client.annotations("a")) == 1, timeout=WAIT_MS)
    assert np.array_equal(client.annotation_pixels("a"), edited)
    qtbot.waitUntil(lambda: annotate.base_version == 1, timeout=WAIT_MS)
    assert not annotate.has_unsaved_edits()


def test_saving_a_correction_fills_the_last_edit_dice_column(docked, qtbot, client) -> None:
    _viewer, project, annotate = docked
    assert _row(project, "a")["last edit Dice"] == ""
    _edit(annotate)
    annotate.save_button.click()
    qtbot.waitUntil(lambda: _row(project, "a")["state"] == "corrected", timeout=WAIT_MS)
    dice = client.image("a").last_edit_dice
    assert dice is not None and 0.0 < dice < 1.0  # the edit changed part of the proposal
    assert _row(project, "a")["last edit Dice"] == f"{dice:.3f}"
    assert _row(project, "b")["last edit Dice"] == ""


# ------------------------------------------------------------------------------------------ reject


def test_reject_excludes_the_image_opens_the_next_and_can_be_undone(
    docked, qtbot, client, asked, monkeypatch
) -> None:
    from napari_diffseg._widgets import annotate as annotate_module

    infos: list[str] = []
    monkeypatch.setattr(annotate_module, "show_info", infos.append)
    viewer, project, annotate = docked
    assert "excluded" in annotate.reject_button.toolTip() and "Next image" in annotate.reject_button.toolTip()
    assert not annotate.include_button.isEnabled()

    annotate.reject_button.click()
    qtbot.waitUntil(lambda: project.session.image.name == "b", timeout=WAIT_MS)
    assert asked.names == []  # nothing was edited: no question
    assert client.image("a").state == "excluded"
    assert client.next_image().name == "b"  # "a" is skipped from now on
    _wait_proposal(qtbot, annotate, "b")  # b's proposal comes by itself
    assert _layers(viewer) == ["b", "b uncertainty", "b proposal"]  # a's image and proposal layers are gone
    assert annotate.include_button.isEnabled()
    assert any("Rejected a" in m for m in infos)
    qtbot.waitUntil(lambda: _row(project, "a")["state"] == "excluded", timeout=WAIT_MS)

    annotate.include_button.click()
    qtbot.waitUntil(lambda: client.image("a").state == "proposed", timeout=WAIT_MS)
    qtbot.waitUntil(lambda: _row(project, "a")["state"] == "proposed", timeout=WAIT_MS)
    assert client.next_image().name == "a"
    assert not annotate.include_button.isEnabled()


def test_reject_with_unsaved_edits_asks_first(docked, qtbot, client, asked) -> None:
    _viewer, project, annotate = docked
    edited = _edit(annotate)
    asked.answer = "cancel"
    annotate.reject()
    assert asked.names == ["a proposal"]
    qtbot.wait(500)
    assert client.image("a").state == "proposed" and project.session.image.name == "a"
    assert np.array_equal(annotate.labels.data, edited)


# ------------------------------------------------------------------------------------------ unsaved edits


def test_unsaved_edits_cancel_keeps_them_and_stays(docked, qtbot, client, asked) -> None:
    viewer, project, annotate = docked
    image_layer = _image_layer(viewer)
    edited = _edit(annotate)
    asked.answer = "cancel"
    project.next_button.click()
    assert asked.names == ["a proposal"]
    qtbot.wait(1000)  # nothing may happen
    assert project.session.image.name == "a"
    assert _image_layer(viewer) is image_layer  # the image was not opened again
    assert annotate.labels in viewer.layers and np.array_equal(annotate.labels.data, edited)
    assert annotate.has_unsaved_edits()
    assert client.annotations("a") == []

    # a table double-click to another image and loading the proposal again ask too
    row = [project.table.item(r, 0).text() for r in range(project.table.rowCount())].index("c")
    project.table.cellDoubleClicked.emit(row, 0)
    annotate.load_proposal()
    assert asked.names == ["a proposal"] * 3
    qtbot.wait(500)
    assert project.session.image.name == "a" and np.array_equal(annotate.labels.data, edited)


def test_unsaved_edits_save_then_switch(docked, qtbot, client, asked) -> None:
    viewer, project, annotate = docked
    edited = _edit(annotate)
    asked.answer = "save"
    project.next_button.click()
    qtbot.waitUntil(lambda: project.session.image.name == "b", timeout=WAIT_MS)
    assert asked.names == ["a proposal"]
    versions = client.annotations("a")
    assert len(versions) == 1 and versions[0].kind == "correction"
    assert np.array_equal(client.annotation_pixels("a"), edited)
    _wait_proposal(qtbot, annotate, "b")
    assert _layers(viewer) == ["b", "b uncertainty", "b proposal"]  # a's saved proposal layers were closed


def test_a_failed_save_never_switches(docked, qtbot, client, asked, monkeypatch) -> None:
    from napari_diffseg._widgets import annotate as annotate_module

    warnings: list[str] = []
    monkeypatch.setattr(annotate_module, "show_warning", warnings.append)
    viewer, project, annotate = docked
    image_layer = _image_layer(viewer)
    edited = _edit(annotate)
    client.save_annotation("a", np.zeros(SIZE, np.uint8), replaces=None)  # someone else saves first
    asked.answer = "save"
    project.next_button.click()
    qtbot.waitUntil(lambda: any("Not saved" in w for w in warnings), timeout=WAIT_MS)
    qtbot.wait(500)
    assert project.session.image.name == "a" and _image_layer(viewer) is image_layer
    assert np.array_equal(annotate.labels.data, edited) and annotate.has_unsaved_edits()
    assert len(client.annotations("a")) == 1  # only the other save


def test_unsaved_edits_discard_switches_and_saves_nothing(docked, qtbot, client, asked) -> None:
    viewer, project, annotate = docked
    image_layer = _image_layer(viewer)
    _edit(annotate)
    asked.answer = "discard"
    project.next_button.click()
    assert asked.names == ["a proposal"]
    assert annotate.image_id is None and not annotate.labels.visible  # closed at once
    _wait_proposal(qtbot, annotate, "a")
    assert project.session.image.name == "a"  # still the most uncertain: opened again, fresh
    assert _image_layer(viewer) is image_layer  # reused: new data in the same layer
    assert _layers(viewer) == ["a", "a uncertainty", "a proposal"]
    assert np.array_equal(annotate.labels.data, client.proposal_pixels("a", "mask"))  # the edits are gone
    assert client.annotations("a") == []


def test_a_saved_layer_switches_without_asking(docked, qtbot, client, asked) -> None:
    _viewer, project, annotate = docked
    _edit(annotate)
    annotate.save()
    project.next_button.click()  # right away: the save in flight holds these edits
    qtbot.waitUntil(lambda: project.session.image.name == "b", timeout=WAIT_MS)
    assert asked.names == [] and len(client.annotations("a")) == 1


def test_the_real_dialog_returns_the_clicked_choice(qtbot) -> None:
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QMessageBox

    from napari_diffseg._widgets.annotate import ask_unsaved

    def click(button) -> None:
        box = QApplication.activeModalWidget()
        if box is None:
            QTimer.singleShot(50, lambda: click(button))
            return
        assert "x proposal" in box.text()
        box.button(button).click()

    buttons = QMessageBox.StandardButton
    for button, answer in ((buttons.Discard, "discard"), (buttons.Save, "save"), (buttons.Cancel, "cancel")):
        QTimer.singleShot(50, lambda b=button: click(b))
        assert ask_unsaved(None, "x proposal") == answer


# ------------------------------------------------------------------------------------------ layer reuse


def test_opening_images_in_a_row_reuses_the_layers(docked, qtbot, client, asked) -> None:
    """Next image three times: the image, uncertainty and Labels layers are the same objects with new
    data (removing and adding layers crashes some OpenGL drivers), the canvas paints, and Ctrl-Z on the
    Labels layer cannot bring back the previous image's mask."""
    viewer, project, annotate = docked
    image_layer, labels, uncertainty = _image_layer(viewer), annotate.labels, annotate.uncertainty
    canvas = viewer.window._qt_viewer.canvas
    for name in ("b", "c", "d"):
        previous = np.array(labels.data)
        labels.paint((5, 5), 7)  # an edit in the undo history of the previous image...
        assert labels.data[5, 5] == 7
        labels.undo()  # ...undone (so nothing is unsaved), but still in the redo history
        client.set_image_state(project.session.image.name, "excluded")  # Next goes on to `name`
        project.next_button.click()
        _wait_proposal(qtbot, annotate, name)
        assert _layers(viewer) == [name, f"{name} uncertainty", f"{name} proposal"]
        assert _image_layer(viewer) is image_layer and annotate.labels is labels
        assert annotate.uncertainty is uncertainty
        image_id = project.session.image.id
        assert image_layer.rgb and image_layer.metadata["diffseg_image"].id == image_id
        assert np.array_equal(image_layer.data, np.moveaxis(client.image_pixels(image_id), 0, -1))
        assert np.array_equal(labels.data, client.proposal_pixels(image_id, "mask"))
        assert np.allclose(uncertainty.data, client.proposal_pixels(image_id, "uncertainty"))
        assert labels.visible and uncertainty.visible and not np.array_equal(labels.data, previous)
        labels.undo()
        labels.redo()  # the history was reset: neither brings back the previous image's mask
        assert np.array_equal(labels.data, client.proposal_pixels(image_id, "mask"))
        canvas.native.update()
        qtbot.wait(100)  # a paint with the new data (this used to crash with Mesa's software GL)
    assert asked.names == []


def test_an_annotated_image_opens_its_latest_annotation(docked, qtbot, client, asked) -> None:
    """A corrected image shows its latest annotation version (no proposal is requested); saving replaces
    that version, and a stale save is still refused."""
    viewer, project, annotate = docked
    edited = _edit(annotate)
    annotate.save()
    qtbot.waitUntil(lambda: annotate.base_version == 1, timeout=WAIT_MS)
    project.next_button.click()
    _wait_proposal(qtbot, annotate, "b")
    jobs_before = len(client.jobs())

    row = [project.table.item(r, 0).text() for r in range(project.table.rowCount())].index("a")
    project.table.cellDoubleClicked.emit(row, 0)
    qtbot.waitUntil(
        lambda: project.session.image.name == "a" and annotate.image_id is not None, timeout=WAIT_MS
    )
    assert annotate.labels.name == "a annotation" and "annotation version 1" in annotate.current.text()
    assert np.array_equal(annotate.labels.data, edited)
    assert annotate.base_version == 1 and annotate.proposal_id is None
    assert _layers(viewer) == ["a", "a uncertainty", "a annotation"]
    assert len(client.jobs()) == jobs_before  # nothing was proposed

    again = np.array(annotate.labels.data)
    again[40:44, 0:10] = 2
    annotate.labels.data = again
    annotate.save()
    qtbot.waitUntil(lambda: annotate.base_version == 2, timeout=WAIT_MS)
    versions = client.annotations("a")
    assert [v.version for v in versions] == [1, 2] and versions[-1].replaces == 1
    assert versions[-1].proposal_id is None
    assert np.array_equal(client.annotation_pixels("a"), again)


# ------------------------------------------------------------------------------------------ requests


def _model(model_id: str, active: bool) -> Model:
    return Model(id=model_id, round=0, method="pretrain", metrics={}, active=active, created_at=0.0)


def _proposal(proposal_id: int, image_id: str, model_id: str) -> Proposal:
    return Proposal(
        id=proposal_id,
        image_id=image_id,
        model_id=model_id,
        classes=2,
        uncertainty=0.5,
        file_sha256="0" * 64,
        created_at=0.0,
    )


def _annotation(image_id: str, version: int) -> Annotation:
    return Annotation(
        image_id=image_id,
        version=version,
        kind="correction",
        replaces=None,
        proposal_id=None,
        author="",
        edit_dice=None,
        pixels_changed=None,
        labels=1,
        file_sha256="0" * 64,
        created_at=0.0,
    )


def _image(image_id: str, state: str, latest_version: int | None) -> Image:
    return Image(
        id=image_id,
        name=image_id,
        state=state,
        uncertainty=None,
        split="train",
        height=4,
        width=4,
        channels=1,
        dtype="uint8",
        source="",
        file_sha256="0" * 64,
        created_at=0.0,
        latest_version=latest_version,
    )


class _FakeClient:
    """Records the calls; ``teacher1`` is active, only it has a proposal; image "done" is annotated."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def models(self):
        self.calls.append("models")
        return [_model("teacher0", active=False), _model("teacher1", active=True)]

    def proposal(self, image_id, model_id=None):
        self.calls.append(f"proposal {model_id}")
        return _proposal(9, image_id, "teacher1") if model_id in (None, "teacher1") else None

    def proposal_pixels(self, image_id, part, model_id=None):
        from napari_diffseg.backend.errors import BackendError

        self.calls.append(f"pixels {part} {model_id}")
        if model_id not in (None, "teacher1"):
            raise BackendError(404, "no proposal", "no_proposal")
        return np.ones((4, 4), np.uint8 if part == "mask" else np.float32)

    def annotations(self, image_id):
        self.calls.append("annotations")
        return [_annotation("x", 3)]

    def annotation_pixels(self, image_id, version):
        self.calls.append(f"annotation {version}")
        return np.full((4, 4), 2, np.uint8)

    def request_proposals(self, ids, **options):  # pragma: no cover - must not be reached
        raise AssertionError("no propose job may be requested")


def test_the_companion_fetch_makes_only_the_needed_requests() -> None:
    from napari_diffseg.review import load_for_image

    client = _FakeClient()
    out = load_for_image(client, _image("x", "proposed", None), "teacher1")
    assert out["kind"] == "proposal" and out["proposal"].id == 9 and out["base_version"] is None
    assert out["mask"].dtype == np.int32 and out["edit"] is not out["mask"] and out["limits"][1] > 0
    assert sorted(client.calls) == [
        "pixels mask teacher1",
        "pixels uncertainty teacher1",
        "proposal teacher1",
    ]

    client.calls.clear()  # a stale cached model: "missing" (the widget then takes the full path)
    out = load_for_image(client, _image("x", "proposed", None), "teacher0")
    assert out["kind"] == "missing" and "models" not in client.calls

    client.calls.clear()  # an annotated image: its latest version, never a proposal request
    out = load_for_image(client, _image("x", "corrected", 3), "teacher0")
    assert out["kind"] == "annotation" and out["base_version"] == 3 and out["uncertainty"] is None
    assert np.array_equal(out["edit"], np.full((4, 4), 2)) and "proposal teacher0" not in client.calls

    client.calls.clear()  # the model not known yet: asked first
    out = load_for_image(client, _image("x", "proposed", None), None, False)
    assert out["active_model"] == "teacher1" and out["kind"] == "proposal" and client.calls[0] == "models"


def test_a_stale_cached_model_is_refreshed_before_proposing() -> None:
    """The cached model has no proposal ('not found'): the active model is asked for again; it changed, so
    its proposal is shown and no propose job is requested."""
    from napari_diffseg.review import proposal_or_request

    client = _FakeClient()
    gen = proposal_or_request(client, "x", {}, None, "teacher0", True)
    yielded = []
    try:
        while True:
            yielded.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    assert yielded == [{"model_id": "teacher1"}]
    assert result["model_id"] == "teacher1" and result["base_version"] == 3


def _job(state: str) -> Job:
    return Job(
        id=5,
        kind="propose",
        params={},
        state=state,
        error=None,
        pid=None,
        created_at=0.0,
        started_at=None,
        finished_at=None,
        updated_at=0.0,
    )


class _ProposingClient(_FakeClient):
    """No proposal until the propose job it is asked for has ended (followed by its event stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.state = "queued"

    def proposal(self, image_id, model_id=None):
        return super().proposal(image_id, model_id) if self.state == "done" else None

    def proposal_pixels(self, image_id, part, model_id=None):
        from napari_diffseg.backend.errors import BackendError

        if self.state != "done":
            raise BackendError(404, "no proposal", "no_proposal")
        return super().proposal_pixels(image_id, part, model_id)

    def request_proposals(self, ids, **options):
        self.calls.append(f"request {ids}")
        return _job("queued")

    def job(self, job_id):
        self.calls.append(f"job {job_id}")
        return _job(self.state)

    def stream_events(self, job_id, since=0):
        self.calls.append(f"stream {job_id}")
        self.state = "running"
        yield None
        yield None
        self.state = "done"


def test_a_missing_proposal_is_requested_and_its_job_followed_by_its_events() -> None:
    from napari_diffseg.review import proposal_or_request

    client = _ProposingClient()
    gen = proposal_or_request(client, "x", {"preset": "tiny"}, None, "teacher1", True)
    yielded = []
    try:
        while True:
            yielded.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    assert [item["job"].state for item in yielded] == ["queued", "running"]
    assert "request ['x']" in client.calls and "stream 5" in client.calls
    assert result["kind"] == "proposal" and result["proposal"].id == 9 and result["base_version"] == 3
