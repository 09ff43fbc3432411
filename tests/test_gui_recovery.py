"""The dock widgets when a co-training round is cancelled, or the backend dies under it (Xvfb, pytest-xvfb).

A real ``diffseg serve`` on loopback runs a tiny round made long with ``overrides``. Cancel must bring the
widget back to idle with the job ``cancelled``; ``kill -9`` of the backend must end in a notification that
says what to do, with no exception reaching Qt and every widget still usable; a new backend on the same
project must then reconnect, list the images, report the ``interrupted`` job and resume it to ``done``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("no display: install Xvfb and pytest-xvfb to run the GUI tests", allow_module_level=True)

from backend_server import Server, make_project
from napari_diffseg.backend.client import DiffsegClient
from napari_diffseg.project import Project

pytestmark = pytest.mark.timeout(120)

WAIT_MS = 30_000
# ~40 ms a step on a laptop core: long enough to act in the middle, checkpointing often
NEVER_ENDS = {"preset": "tiny", "seed": 3, "overrides": {"cotrain_steps": 100_000, "checkpoint_every": 5}}
KILLABLE = {"preset": "tiny", "seed": 3, "overrides": {"cotrain_steps": 80, "checkpoint_every": 5}}


class Notes:
    """The napari notifications dispatched since creation (every widget module's show_* ends here)."""

    def __init__(self) -> None:
        from napari.utils.notifications import notification_manager

        self._manager = notification_manager
        self._start = len(notification_manager.records)

    @property
    def all(self) -> list[Any]:
        return list(self._manager.records[self._start :])

    def texts(self) -> list[str]:
        return [str(n.message) for n in self.all]

    def matching(self, *words: str) -> list[str]:
        return [t for t in self.texts() if all(w.lower() in t.lower() for w in words)]

    def tracebacks(self) -> list[str]:
        """Notifications made from an uncaught exception (napari's excepthook) rather than by our code."""
        return [str(n.message) for n in self.all if getattr(n, "exception", None) is not None]


def _dock(viewer, name: str):
    _dock_widget, widget = viewer.window.add_plugin_dock_widget("napari-diffseg", name)
    return widget


def _widgets(viewer, qtbot, url: str, n_images: int):
    project = _dock(viewer, "Project")
    annotate = _dock(viewer, "Annotate")
    train = _dock(viewer, "Train")
    project.connect_to(url)
    qtbot.waitUntil(lambda: project.table.rowCount() == n_images, timeout=WAIT_MS)
    return project, annotate, train


def _start_cotrain(train, params: dict[str, Any]) -> None:
    """Start a co-training job from the train widget with test parameters (the form has no overrides)."""
    train.kind.setCurrentText("cotrain")
    train.params = lambda: dict(params)  # instance attribute: what the widget sends to the backend
    train.start()


def _cotrain_step(client: DiffsegClient, job_id: int, kind: str = "progress") -> int:
    """The last co-training step the job reported (events of ``kind``), 0 before co-training started."""
    steps = [
        int(e.data.step)
        for e in client.events(job_id).events
        if e.data.phase == "cotrain" and e.data.kind == kind
    ]
    return max(steps, default=0)


def _table(project_widget) -> dict[str, str]:
    t = project_widget.table
    return {t.item(r, 0).text(): t.item(r, 1).text() for r in range(t.rowCount())}


def _idle(train) -> bool:
    return train.start_button.isEnabled() and not train.cancel_button.isEnabled()


@pytest.fixture
def project_root(tmp_path: Path) -> Path:
    return make_project(tmp_path / "proj", n_train=4, annotate=1)


def test_cancel_mid_round_from_the_train_widget(make_napari_viewer, qtbot, project_root: Path) -> None:
    notes = Notes()
    with Server(project_root) as server, DiffsegClient(server.url) as client:
        viewer = make_napari_viewer()
        _project, _annotate, train = _widgets(viewer, qtbot, server.url, 4)
        _start_cotrain(train, NEVER_ENDS)
        qtbot.waitUntil(lambda: train.job_id is not None, timeout=WAIT_MS)
        job_id = train.job_id
        qtbot.waitUntil(lambda: _cotrain_step(client, job_id) >= 5, timeout=60_000)
        qtbot.waitUntil(lambda: "cotrain" in train.status.text(), timeout=WAIT_MS)  # it draws progress
        assert train.cancel_button.isEnabled() and not train.start_button.isEnabled()

        train.cancel_button.click()
        qtbot.waitUntil(lambda: "cancelled" in train.status.text(), timeout=WAIT_MS)
        qtbot.waitUntil(lambda: _idle(train), timeout=WAIT_MS)
        job = client.job(job_id)
        assert job.state == "cancelled", job
        assert _cotrain_step(client, job_id) < NEVER_ENDS["overrides"]["cotrain_steps"]
        assert notes.matching(f"job {job_id}", "cancelled"), notes.texts()
        assert not notes.tracebacks()
        # the project is intact: the store checks out and the annotation is still there
        assert len(client.images()) == 4 and len(client.annotations("train_000")) == 1
    with Project.open(project_root) as proj:
        report = proj.check()
        assert report["ok"], report["problems"]
        assert proj.job(job_id).state == "cancelled"


def test_backend_killed_mid_round_then_reconnect_and_resume(
    make_napari_viewer, qtbot, project_root: Path
) -> None:
    notes = Notes()
    server = Server(project_root).start()
    new_server: Server | None = None
    try:
        viewer = make_napari_viewer()
        project, annotate, train = _widgets(viewer, qtbot, server.url, 4)
        with DiffsegClient(server.url) as client:
            before = {r.name: r.state for r in client.images()}
            _start_cotrain(train, KILLABLE)
            qtbot.waitUntil(lambda: train.job_id is not None, timeout=WAIT_MS)
            job_id = train.job_id
            qtbot.waitUntil(lambda: _cotrain_step(client, job_id, "checkpoint") >= 10, timeout=60_000)
            assert client.job(job_id).state == "running"
            assert not train.start_button.isEnabled()  # following the job

        count = len(notes.texts())
        server.kill()  # while the train widget streams the job's events

        # the follow loop ends with a notification that says the backend is gone and what to do
        qtbot.waitUntil(lambda: len(notes.texts()) > count, timeout=WAIT_MS)
        lost = notes.texts()[count]
        assert f"job {job_id}" in lost and server.url in lost and "backend" in lost, lost
        assert "Start it" in lost and "resume" in lost, lost
        qtbot.waitUntil(lambda: _idle(train), timeout=WAIT_MS)
        assert f"job {job_id}" in train.status.text().lower(), train.status.text()

        # every widget stays usable: each call answers with a notification, never a traceback
        count = len(notes.texts())
        project.refresh_button.click()
        qtbot.waitUntil(lambda: len(notes.texts()) > count, timeout=WAIT_MS)
        count = len(notes.texts())
        project.next_button.click()
        qtbot.waitUntil(lambda: len(notes.texts()) > count, timeout=WAIT_MS)
        count = len(notes.texts())
        train.start_button.click()
        qtbot.waitUntil(lambda: len(notes.texts()) > count, timeout=WAIT_MS)
        qtbot.waitUntil(lambda: _idle(train), timeout=WAIT_MS)
        count = len(notes.texts())
        annotate.load_button.click()
        qtbot.waitUntil(lambda: len(notes.texts()) > count, timeout=WAIT_MS)
        assert all(b.isEnabled() for b in (project.refresh_button, project.next_button, train.start_button))
        assert _table(project) == before  # the table still shows what it last knew
        assert not notes.tracebacks(), notes.tracebacks()

        # a new backend on the same project: connect, the table refreshes, the job is reported interrupted
        new_server = Server(project_root).start()
        project.table.setRowCount(0)
        count = len(notes.texts())
        project.connect_to(new_server.url)
        qtbot.waitUntil(lambda: project.table.rowCount() == 4, timeout=WAIT_MS)
        assert project.session.client.base_url == new_server.url
        with DiffsegClient(new_server.url) as client:
            assert _table(project) == {r.name: r.state for r in client.images()}
            assert client.job(job_id).state == "interrupted"
            qtbot.waitUntil(
                lambda: any(f"job {job_id}" in t.lower() for t in notes.texts()[count:]), timeout=WAIT_MS
            )
            note = [n for n in notes.all[count:] if f"job {job_id}" in str(n.message).lower()][-1]
            assert "interrupted" in str(note.message) and "resume" in str(note.message).lower(), note.message
            assert [j.id for j in project.session.interrupted_jobs] == [job_id]

            # its Resume button continues it from the checkpoint; the train widget follows it to done
            seen = client.events(job_id).next
            ((label, resume),) = note.actions
            assert label == "Resume"
            resume(None)
            qtbot.waitUntil(
                lambda: train.job_id == job_id and not train.start_button.isEnabled(), timeout=WAIT_MS
            )
            qtbot.waitUntil(lambda: "done" in train.status.text(), timeout=90_000)
            qtbot.waitUntil(lambda: _idle(train), timeout=WAIT_MS)
            assert client.job(job_id).state == "done"
            assert project.session.interrupted_jobs == []
            resumed = [
                e.data.step
                for e in client.events(job_id, since=seen).events
                if e.data.phase == "cotrain" and e.data.kind == "progress"
            ]
            assert resumed and resumed[0] > 10  # continued from a checkpoint, not from step 0
            assert any(m.id.endswith(f"job{job_id}") for m in client.models())
            assert notes.matching(f"job {job_id}", "finished")
        assert not notes.tracebacks(), notes.tracebacks()
    finally:
        server.stop()
        if new_server is not None:
            new_server.stop()
    with Project.open(project_root) as proj:
        report = proj.check()
        assert report["ok"], report["problems"]
