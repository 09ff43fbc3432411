"""The train dock widget: live plot, progress with ETA, model table, failures (Xvfb, real backend).

The pure parts (:class:`JobHistory`, the plot's throttle) are tested without a backend; the rest against a
real ``diffseg serve`` on loopback with the ``tiny`` preset.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("no display: install Xvfb and pytest-xvfb to run the GUI tests", allow_module_level=True)

from backend_server import Server, free_port, make_project
from napari_diffseg._widgets import train as train_module
from napari_diffseg._widgets.train import JobHistory, TrainWidget, format_duration
from napari_diffseg.backend.client import DiffsegClient
from napari_diffseg.base.contracts import EventData, Model
from napari_diffseg.base.presets import get_preset
from napari_diffseg.review import LOSS_GROUPS, NOT_LOSSES

WAIT_MS = 30_000
JOB_MS = 120_000


def _progress(phase: str, step: int, total: int, elapsed: float, **losses: float) -> EventData:
    return EventData(kind="progress", phase=phase, step=step, total=total, losses=losses, elapsed=elapsed)


# ------------------------------------------------------------------------------------ no backend


def test_history_segments_losses_by_phase_and_skips_non_losses() -> None:
    h = JobHistory()
    h.add(_progress("teacher", 1, 4, 0.5, loss=2.0))
    h.add(_progress("teacher", 4, 4, 2.0, loss=1.0))
    h.add(EventData(kind="checkpoint", phase="teacher", step=4, total=4, elapsed=2.1))
    h.add(_progress("cotrain", 2, 10, 1.0, loss=0.8, sup=0.5, ramp=0.1))
    h.add(_progress("pseudo-labels", 1, 3, 0.2))  # no losses: the cotrain segment goes on
    h.add(_progress("cotrain", 6, 10, 3.0, loss=0.4, sup=0.3, ramp=0.5))
    xs, ys = h.losses["loss"]
    assert xs[:2] == [1, 4] and ys[:2] == [2.0, 1.0]
    assert math.isnan(ys[2]) and xs[2] == 4  # the break between the two phases
    assert xs[3:] == [6, 10] and ys[3:] == [0.8, 0.4]  # cotrain starts at x = 4, where teacher ended
    assert h.losses["sup"] == ([6, 10], [0.5, 0.3])
    assert "ramp" not in h.losses
    assert h.marks == [(0, "teacher"), (4, "cotrain")]
    assert (h.phase, h.step, h.total) == ("cotrain", 6, 10)


def test_history_eta_from_the_step_rate_of_the_current_phase() -> None:
    h = JobHistory()
    assert h.eta_seconds() is None and h.eta_text() == ""
    h.add(_progress("cotrain", 2, 10, 4.0, loss=1.0))  # one event: rate from the phase start (0.5 step/s)
    assert h.eta_seconds() == pytest.approx(16.0)
    h.add(_progress("cotrain", 6, 10, 6.0, loss=1.0))  # since the first event: 4 steps in 2 s
    assert h.eta_seconds() == pytest.approx(2.0)
    assert h.eta_text() == "cotrain 6/10 · 0:02 left in this phase"
    h.add(_progress("cotrain", 2, 10, 1.0, loss=1.0))  # the next round restarts the phase
    assert h.eta_seconds() == pytest.approx(4.0)
    h.add(_progress("cotrain", 10, 10, 9.0, loss=1.0))
    assert h.eta_seconds() == 0.0
    assert format_duration(3725.4) == "1:02:05" and format_duration(61) == "1:01"


def test_history_collects_validation_dice_per_round() -> None:
    h = JobHistory()
    h.add(EventData(kind="metrics", phase="cotrain", metrics={"round": 1.0, "labeled": 1.0}))  # no val set
    h.add(EventData(kind="metrics", phase="cotrain", metrics={"round": 2.0, "val_dice": 0.75}))
    assert h.val_dice == {2: 0.75}


def test_plot_repaints_at_most_a_few_times_however_fast_data_comes(qtbot) -> None:
    from napari_diffseg._widgets._plot import CurvePlot, nice_ticks

    plot = CurvePlot("loss", "step", interval_ms=200)
    qtbot.addWidget(plot)
    plot.resize(300, 200)
    plot.show()
    qtbot.waitExposed(plot)
    qtbot.wait(300)
    before = plot.paint_count
    start = time.perf_counter()
    for n in range(1, 101):  # new data with the event loop running in between, as while a job streams
        plot.set_series("loss", list(range(n)), [1.0 / (i + 1) for i in range(n)])
        qtbot.wait(5)
    qtbot.wait(450)
    allowed = (time.perf_counter() - start) / 0.2 + 1  # one repaint per 200 ms interval at most
    assert 1 <= plot.paint_count - before <= allowed < 50
    assert plot.point_count() == 100
    assert nice_ticks(0.0, 1.0, 5) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(1.0, 2.0, 5, min_step=1.0) == [1.0, 2.0]  # rounds: whole numbers only
    assert nice_ticks(3.0, 97.0, 4) == [25.0, 50.0, 75.0]
    with pytest.raises(ValueError, match="2 x values but 1"):
        plot.set_series("bad", [1, 2], [1])


# ------------------------------------------------------------------------------------ real backend


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 train images (1 corrected), 1 val image with a ground-truth mask; no model yet."""
    from napari_diffseg.data.synthetic import make_sample
    from napari_diffseg.project import Project

    root = make_project(tmp_path_factory.mktemp("train") / "proj", n_train=3, size=64, annotate=1)
    image, mask = make_sample(7, (64, 64))
    with Project.open(root) as proj:
        proj.import_array(image, "val_0", (np.asarray(mask) > 0).astype(np.uint8), split="val")
    return root


@pytest.fixture(scope="module")
def server(project: Path):
    with Server(project) as srv:
        yield srv


@pytest.fixture
def client(server: Server):
    with DiffsegClient(server.url) as c:
        yield c


@pytest.fixture
def messages(monkeypatch) -> dict[str, list[str]]:
    """Every notification the train widget (and the shared error helper) shows, by kind."""
    from napari_diffseg._widgets import _session

    got: dict[str, list[str]] = {"info": [], "warning": [], "error": []}
    monkeypatch.setattr(train_module, "show_info", got["info"].append)
    monkeypatch.setattr(train_module, "show_warning", got["warning"].append)
    monkeypatch.setattr(train_module, "show_error", got["error"].append)
    monkeypatch.setattr(_session, "show_warning", got["warning"].append)
    monkeypatch.setattr(_session, "show_error", got["error"].append)
    return got


@pytest.fixture
def bars(monkeypatch) -> list:
    """Every napari progress bar the widget makes, with the (n, total) values it was given."""
    made: list = []

    class Recording(train_module.cancelable_progress):
        def __init__(self, *args, **kwargs) -> None:
            self.seen: list[tuple[int, int]] = []
            self.descs: list[str] = []
            super().__init__(*args, **kwargs)
            made.append(self)

        def update(self, n: int = 1) -> None:
            super().update(n)
            self.seen.append((self.n, self.total))

        def set_description(self, desc: str) -> None:
            super().set_description(desc)
            self.descs.append(desc)

    monkeypatch.setattr(train_module, "cancelable_progress", Recording)
    return made


def _train_widget(make_napari_viewer, url: str, retries: int = 3) -> TrainWidget:
    from napari_diffseg._widgets._session import session_for

    viewer = make_napari_viewer()
    session_for(viewer).set_client(DiffsegClient(url, retries=retries))
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-diffseg", "Train")
    assert isinstance(widget, TrainWidget)
    assert not widget.activity_box.isChecked()  # off by default (it slows software-GL windows down)
    widget.activity_box.setChecked(True)  # these tests follow napari's activity dock too
    return widget


def _ensure_models(client: DiffsegClient, count: int) -> list[Model]:
    while len(client.models()) < count:
        job = client.start_job("pretrain", {"preset": "tiny"})
        assert client.wait(job.id, timeout=120).state == "done"
    return client.models()


def test_cotrain_round_is_plotted_with_progress_and_listed(
    make_napari_viewer, qtbot, server, client, messages, bars, monkeypatch
) -> None:
    from napari.utils import progress

    widget = _train_widget(make_napari_viewer, server.url)
    widget.kind.setCurrentText("cotrain")
    widget.preset.setCurrentText("tiny")
    form = widget.params()
    assert form == {"preset": "tiny", "rounds": 1}
    # long enough (a few seconds) that the widget sees the job running: a 7-step tiny round can end before
    # its first event is drawn, and a job seen only at its end gets no napari bar (nothing to follow)
    longer = {"teacher_steps": 30, "cotrain_steps": 60, "checkpoint_every": 20}
    monkeypatch.setattr(widget, "params", lambda: {**form, "overrides": longer})
    widget.start()
    etas: list[str] = []
    qtbot.waitUntil(lambda: etas.append(widget.eta.text()) or "done" in widget.status.text(), timeout=JOB_MS)
    job_id = widget.job_id
    assert client.job(job_id).state == "done"
    assert client.job(job_id).params["overrides"] == longer
    assert any(f"Job {job_id} (cotrain) finished" in m for m in messages["info"])

    # the plot's groups (students, teacher, total) hold every loss point the backend recorded, one
    # segment per phase; weights, fractions and validation scores are not losses
    recorded = [e.data for e in client.events(job_id).events]
    n_points = sum(
        len([k for k in d.losses if k not in NOT_LOSSES and not k.startswith("val_")])
        for d in recorded
        if d.kind == "progress"
    )

    def plotted() -> int:
        groups = [widget.loss_series(g) for g in LOSS_GROUPS]
        return sum(sum(1 for y in ys if math.isfinite(y)) for g in groups for _xs, ys in g.values())

    qtbot.waitUntil(lambda: plotted() == n_points > 0, timeout=WAIT_MS)
    assert widget.loss_plot.point_count() > 0
    assert widget.loss_group.currentText() == "students"  # the teacher's came first; the job is about these
    assert set(widget.loss_series("students")) == {
        "labelled images",
        "teacher's pseudo-labels",
        "agreement between the twins",
    }
    phases = [name for _x, name in widget.loss_plot.marks]
    assert {"teacher", "cotrain"} <= set(phases)

    # ETA text and napari's progress bar followed the events; the bar is closed at the end
    assert any(
        re.fullmatch(
            r"\S+ \d+/\d+ · about \d+:\d\d left in the whole job( \(estimated; measuring this machine's speed\))?",
            t,
        )
        for t in etas
    )
    assert widget.progress.value() == widget.progress.maximum() > 0
    # the final state reaches the status line before the stream's end closes napari's bar
    qtbot.waitUntil(lambda: not widget.following, timeout=WAIT_MS)
    assert bars and all(bar not in progress._all_instances for bar in bars)
    assert widget.napari_progress is None
    assert any(n == total > 0 for bar in bars for n, total in bar.seen)
    descs = [bar.desc for bar in bars] + [d for bar in bars for d in bar.descs]
    assert all(d.startswith(f"DiffSeg job {job_id}: ") for d in descs)

    # the model table lists the new model as active; the Dice plot shows its validation Dice
    newest = max(client.models(), key=lambda m: m.created_at)
    assert newest.active and newest.metrics["round"] == 1
    qtbot.waitUntil(lambda: widget.active_model() == newest.id, timeout=WAIT_MS)
    row = [widget.models_table.item(r, 1).text() for r in range(widget.models_table.rowCount())].index(
        newest.id
    )
    assert widget.models_table.item(row, 0).text() == "●"
    val_dice = newest.metrics["val_dice"]
    assert widget.models_table.item(row, 4).text() == f"{val_dice:.3f}"
    xs, ys = widget.dice_plot.series["val Dice"]
    assert dict(zip(xs, ys, strict=True))[1] == pytest.approx(val_dice)
    assert widget.start_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_set_active_and_export_weights(
    make_napari_viewer, qtbot, server, client, messages, tmp_path, monkeypatch
) -> None:
    from safetensors.numpy import load_file

    models = _ensure_models(client, 2)
    widget = _train_widget(make_napari_viewer, server.url)
    qtbot.waitUntil(lambda: widget.models_table.rowCount() == len(models), timeout=WAIT_MS)
    other = next(m for m in models if not m.active)
    row = [m.id for m in widget.models].index(other.id)
    widget.models_table.selectRow(row)
    assert widget.selected_model() == other.id

    widget.activate_button.click()
    qtbot.waitUntil(lambda: widget.active_model() == other.id, timeout=WAIT_MS)
    assert client.project().active_model.id == other.id
    assert widget.models_table.item(row, 0).text() == "●"
    assert sum(widget.models_table.item(r, 0).text() == "●" for r in range(len(models))) == 1
    assert any(other.id in m and "active" in m for m in messages["info"])

    widget.export_weights(other.id, tmp_path)  # a folder: weights.safetensors in it
    target = tmp_path / "weights.safetensors"
    qtbot.waitUntil(lambda: any(str(target) in m for m in messages["info"]), timeout=WAIT_MS)
    tensors = load_file(target)
    assert tensors and all(isinstance(v, np.ndarray) for v in tensors.values())

    chosen = tmp_path / "picked.safetensors"  # the button asks with a file dialog
    monkeypatch.setattr(
        train_module.QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(chosen), ""))
    )
    widget.export_button.click()
    qtbot.waitUntil(lambda: any(str(chosen) in m for m in messages["info"]), timeout=WAIT_MS)
    assert chosen.read_bytes() == target.read_bytes()


def test_follows_a_running_job_after_connecting(make_napari_viewer, qtbot, server, client, messages) -> None:
    job = client.start_job("pretrain", {"preset": "tiny"})
    widget = _train_widget(make_napari_viewer, server.url)  # connecting finds the running job
    qtbot.waitUntil(lambda: widget.job_id == job.id, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: "done" in widget.status.text(), timeout=JOB_MS)
    qtbot.waitUntil(lambda: widget.loss_plot.point_count() > 0, timeout=WAIT_MS)
    assert widget.history.phase == "pretrain" and widget.history.step == widget.history.total > 0

    # following a finished job replays its whole history from the backend
    again = _train_widget(make_napari_viewer, server.url)
    again.follow(job.id)
    qtbot.waitUntil(lambda: "done" in again.status.text() and again.start_button.isEnabled(), timeout=WAIT_MS)
    assert again.history.losses == widget.history.losses
    assert again.history.count == len(client.events(job.id).events)
    qtbot.waitUntil(lambda: again.loss_plot.point_count() == widget.loss_plot.point_count(), timeout=WAIT_MS)


def test_cancel_then_resume_continues_from_the_checkpoint(
    make_napari_viewer, qtbot, server, client, messages
) -> None:
    job = client.start_job("pretrain", {"preset": "tiny", "overrides": {"pretrain_steps": 5000}})
    widget = _train_widget(make_napari_viewer, server.url)
    qtbot.waitUntil(lambda: widget.job_id == job.id, timeout=WAIT_MS)  # found when connecting
    qtbot.waitUntil(lambda: widget.history.step >= 4, timeout=JOB_MS)
    qtbot.waitUntil(lambda: widget.napari_progress is not None, timeout=WAIT_MS)
    assert widget.eta.text().startswith("pretrain ") and widget.napari_progress.total == 5000
    widget.cancel()
    qtbot.waitUntil(lambda: "cancelled" in widget.status.text(), timeout=WAIT_MS)
    qtbot.waitUntil(widget.resume_button.isEnabled, timeout=WAIT_MS)
    assert any("Resume continues it" in m for m in messages["info"])
    stopped_at = widget.history.step
    seen = client.events(job.id).next

    widget.resume()
    qtbot.waitUntil(lambda: widget.history.step > stopped_at, timeout=JOB_MS)
    first = next(e.data for e in client.events(job.id, since=seen).events if e.data.kind == "progress")
    assert first.step > 1  # continued from the checkpoint, not from the start
    assert widget.cancel_button.isEnabled() and not widget.start_button.isEnabled()
    widget.cancel()
    qtbot.waitUntil(lambda: "cancelled" in widget.status.text(), timeout=WAIT_MS)
    assert client.job(job.id).state == "cancelled"


def test_a_failed_job_is_a_notification_and_the_widget_stays_usable(
    make_napari_viewer, qtbot, tmp_path, messages
) -> None:
    from napari_diffseg.project import Project

    root = make_project(tmp_path / "bare", n_train=2, size=32, annotate=0)
    with Server(root) as srv:
        widget = _train_widget(make_napari_viewer, srv.url)
        widget.preset.setCurrentText("tiny")
        # a job the backend's pre-flight refuses (nothing to co-train on) never starts: a notification
        # that says what to do, and no job
        widget.kind.setCurrentText("cotrain")
        widget.start()
        qtbot.waitUntil(lambda: bool(messages["warning"]), timeout=WAIT_MS)
        assert "at least one annotated image" in messages["warning"][0]
        qtbot.waitUntil(widget.start_button.isEnabled, timeout=WAIT_MS)
        assert "did not start" in widget.status.text()
        with DiffsegClient(srv.url) as c:
            assert c.jobs() == []

        # a job that fails while it runs (an image file lost behind the store's back): failed, Resume
        with Project.open(root) as p:
            lost = p.root / "images" / f"{p.images()[0].id}.tif"
        kept = lost.read_bytes()
        lost.unlink()
        widget.kind.setCurrentText("pretrain")
        widget.start()
        qtbot.waitUntil(lambda: bool(messages["error"]), timeout=JOB_MS)
        assert "failed" in messages["error"][0] and "Resume" in messages["error"][0]
        assert "failed" in widget.status.text()
        qtbot.waitUntil(widget.start_button.isEnabled, timeout=WAIT_MS)
        assert widget.napari_progress is None

        lost.write_bytes(kept)
        widget.start()  # still usable: the next job runs
        qtbot.waitUntil(lambda: "done" in widget.status.text(), timeout=JOB_MS)
        qtbot.waitUntil(lambda: widget.models_table.rowCount() == 1, timeout=WAIT_MS)
        assert len(messages["error"]) == 1


def test_an_unreachable_backend_is_a_notification(make_napari_viewer, qtbot, messages) -> None:
    widget = _train_widget(make_napari_viewer, f"http://127.0.0.1:{free_port()}", retries=0)
    qtbot.waitUntil(lambda: len(messages["warning"]) >= 1, timeout=WAIT_MS)  # the model list on connect
    assert "cannot reach the diffseg backend" in messages["warning"][0]
    widget.start()
    qtbot.waitUntil(lambda: len(messages["warning"]) >= 2, timeout=WAIT_MS)
    assert "Start it in the DiffSeg project widget" in messages["warning"][-1]
    qtbot.waitUntil(widget.start_button.isEnabled, timeout=WAIT_MS)
    assert widget.status.text() == "the job did not start" and widget.napari_progress is None
    widget.export_weights()  # nothing to export: says so instead of failing
    assert "no model to export" in messages["warning"][-1]


def test_activity_dock_is_opt_in(make_napari_viewer, qtbot, server, client, bars) -> None:
    """Without the box, a job shows in the widget only (bar, ETA, plots); ticking it mid-job adds napari's
    activity-dock bar, unticking removes it."""
    job = client.start_job("pretrain", {"preset": "tiny", "overrides": {"pretrain_steps": 5000}})
    widget = _train_widget(make_napari_viewer, server.url)
    widget.activity_box.setChecked(False)
    qtbot.waitUntil(lambda: widget.job_id == job.id and widget.history.step >= 3, timeout=JOB_MS)
    qtbot.wait(1500)
    assert widget.progress.value() >= 3 and widget.eta.text().startswith("pretrain ")
    assert bars == [] and widget.napari_progress is None
    widget.activity_box.setChecked(True)
    qtbot.waitUntil(lambda: widget.napari_progress is not None, timeout=WAIT_MS)
    widget.activity_box.setChecked(False)
    assert widget.napari_progress is None and len(bars) == 1
    widget.cancel()
    qtbot.waitUntil(lambda: "cancelled" in widget.status.text(), timeout=WAIT_MS)
    qtbot.waitUntil(widget.resume_button.isEnabled, timeout=WAIT_MS)  # the follow has ended
    assert client.job(job.id).state == "cancelled" and widget.napari_progress is None


def test_the_first_estimate_uses_the_speed_the_backend_measured_at_start(
    make_napari_viewer, qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before any job has run, the cost line is at the backend's own measured speed, and says so."""
    root = make_project(tmp_path / "proj", n_train=2, size=64, annotate=0)
    monkeypatch.setenv("DIFFSEG_CALIBRATE", "1")
    monkeypatch.setenv("DIFFSEG_CALIBRATE_DELAY", "0.5")
    with Server(root) as srv:
        widget = _train_widget(make_napari_viewer, srv.url)
        assert widget.kind.currentText() == "pretrain"
        qtbot.waitUntil(lambda: widget.session.speed is not None, timeout=120_000)
        assert widget.session.speed_source == "start"
        speed = DiffsegClient(srv.url).health().speed
        assert speed is not None and widget.session.speed == pytest.approx(speed)
        text = widget.estimate.text()
        assert f"measured when it started ({speed:.1f}× the reference)" in text, text
        assert format_seconds_of(widget.plan, speed) in text


def format_seconds_of(plan, speed: float) -> str:
    from napari_diffseg.base.cost import format_seconds

    return f"about {format_seconds(plan.seconds * speed)}"


def test_closing_the_session_stops_the_speed_poll_of_a_calibrating_backend(qtbot) -> None:
    """A backend that measures its speed forever: closing the session ends the poll's worker at its next
    poll (no thread left sleeping past the viewer), and no speed from it is taken afterwards."""
    import threading
    from types import SimpleNamespace

    from napari_diffseg._widgets._session import Session

    polls = threading.Semaphore(0)

    class Calibrating:
        def health(self):
            polls.release()
            return SimpleNamespace(speed=None, calibrating=True)

        def models(self):
            return []

        def jobs(self, state=None):
            return []

        def close(self) -> None:
            pass

    session = Session()
    session.set_client(Calibrating())
    worker = session._speed_worker
    assert worker is not None
    assert polls.acquire(timeout=10) and polls.acquire(timeout=10)  # it polls while the backend measures
    finished: list[bool] = []
    worker.finished.connect(lambda: finished.append(True))
    session.close()
    qtbot.waitUntil(lambda: finished == [True], timeout=10_000)
    assert session._speed_worker is None and session.speed is None


CLOSE_WHILE_CALIBRATING = """
import sys, time
sys.path.insert(0, {tests!r})
import napari
from qtpy.QtWidgets import QApplication
from backend_server import Server
from napari_diffseg._widgets._session import session_for
from napari_diffseg.backend.client import DiffsegClient

srv = Server({root!r}).start()
viewer = napari.Viewer(show=False)
session = session_for(viewer)
session.set_client(DiffsegClient(srv.url))
end = time.monotonic() + 3
while time.monotonic() < end:  # the speed poll runs: the backend waits 60 s before it measures
    QApplication.processEvents()
    time.sleep(0.05)
assert session._speed_worker is not None
viewer.close()  # a script's end: the viewer closed, the Qt application never quit, the backend stopped
srv.stop()
print("script done")
"""


def test_a_script_that_closes_napari_while_the_backend_calibrates_exits_cleanly(tmp_path: Path) -> None:
    """The speed poll is still waiting when the viewer closes and the backend stops: the process must
    end with 0, not abort in Qt's teardown (a worker emitting into deleted signal objects)."""
    import subprocess
    import sys

    root = make_project(tmp_path / "proj", n_train=1, size=32, annotate=0)
    script = tmp_path / "close.py"
    script.write_text(CLOSE_WHILE_CALIBRATING.format(tests=str(Path(__file__).parent), root=str(root)))
    env = {**os.environ, "DIFFSEG_CALIBRATE": "1", "DIFFSEG_CALIBRATE_DELAY": "60", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "script done" in done.stdout and "has been deleted" not in done.stderr


def test_the_propose_cost_of_a_label_free_model_counts_one_step(
    make_napari_viewer, qtbot, tmp_path: Path
) -> None:
    """A label-free active model proposes in one DDIM step and one round (``backend/jobs.py``): the cost
    line's plan counts that, and the preset's steps for a model trained on labels."""
    root = make_project(tmp_path / "proj", n_train=3, size=64, annotate=0)
    with Server(root) as srv:
        widget = _train_widget(make_napari_viewer, srv.url)
        qtbot.waitUntil(lambda: len(widget.images) == 3, timeout=WAIT_MS)
        widget.kind.setCurrentText("propose")
        base = {"id": "m", "round": 0, "method": "diffseg", "active": True, "created_at": 0.0}
        steps = {}
        for name, metrics in (("label-free", {"stage": "pretrain"}), ("trained", {"val_dice": 0.8})):
            widget.models = [Model(**base, metrics=metrics)]
            plan = widget.current_plan()
            assert plan is not None and plan.kind == "propose"
            steps[name] = re.search(r"S=(\d+)", plan.phases[-1].label).group(1)
        assert steps == {
            "label-free": "1",
            "trained": str(get_preset(widget.preset.currentText()).ddim_steps),
        }
