"""The napari dock widgets against a real backend on loopback (runs under Xvfb via pytest-xvfb).

Skipped when napari, pytest-qt or a display is missing, so a headless install without the ``gui`` extra
still passes the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("no display: install Xvfb and pytest-xvfb to run the GUI tests", allow_module_level=True)

from backend_server import SRC, Server
from napari_diffseg.backend.client import DiffsegClient
from napari_diffseg.backend.errors import StaleAnnotation
from napari_diffseg.base.contracts import Image

WAIT_MS = 30_000


def _cli(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    subprocess.run([sys.executable, "-m", "napari_diffseg.cli", *args, "-q"], check=True, env=env)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 unlabeled train images + 1 test image, a tiny pretrained teacher and its proposals."""
    import imageio.v3 as iio

    from napari_diffseg.data.synthetic import make_sample_dataset
    from napari_diffseg.project import Project

    tmp = tmp_path_factory.mktemp("gui")
    ds = make_sample_dataset(tmp / "ds", n_train=4, n_test=1, size=(64, 64), seed=1)
    root = tmp / "proj"
    with Project.create(root) as proj:
        for path in sorted((ds / "images").glob("*.png")):
            proj.import_array(iio.imread(path), path.stem)
    _cli("pretrain", str(root), "--preset", "tiny")
    _cli("propose", str(root), "--preset", "tiny")
    return root


@pytest.fixture(scope="module")
def server(project: Path):
    with Server(project) as srv:
        yield srv


@pytest.fixture
def client(server: Server):
    with DiffsegClient(server.url) as c:
        yield c


def _dock(viewer, name: str):
    _dock_widget, widget = viewer.window.add_plugin_dock_widget("napari-diffseg", name)
    return widget


def _connected(viewer, qtbot, server: Server):
    project = _dock(viewer, "Project")
    project.connect_to(server.url)
    qtbot.waitUntil(lambda: project.table.rowCount() == 5, timeout=WAIT_MS)
    return project


def test_every_widget_docks(make_napari_viewer) -> None:
    from napari_diffseg._widgets.annotate import AnnotateWidget
    from napari_diffseg._widgets.project import ProjectWidget
    from napari_diffseg._widgets.train import TrainWidget

    viewer = make_napari_viewer()
    widgets = [_dock(viewer, name) for name in ("Project", "Annotate", "Train")]
    assert [type(w) for w in widgets] == [ProjectWidget, AnnotateWidget, TrainWidget]
    assert widgets[0].session is widgets[1].session is widgets[2].session  # one connection per viewer


def test_project_widget_lists_images_and_opens_the_next(
    make_napari_viewer, qtbot, server, client, monkeypatch
) -> None:
    viewer = make_napari_viewer()
    widget = _connected(viewer, qtbot, server)
    table = {widget.table.item(r, 0).text(): widget.table.item(r, 1).text() for r in range(5)}
    assert table == {rec.name: rec.state for rec in client.images()}
    assert set(table.values()) == {"proposed"}
    expected = client.next_image()

    widget.open_next()
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=WAIT_MS)
    layer = viewer.layers[0]
    assert layer.name == expected.name and layer.rgb
    assert np.array_equal(layer.data, np.moveaxis(client.image_pixels(expected.id), 0, -1))
    assert widget.session.image.id == expected.id

    # the order box: an uncertainty-weighted draw goes through /next?strategy=power, for Reject → next too
    asked: list[str] = []
    given: list[Image | None] = []
    real = type(widget.session.client).next_image

    def spy(self, split=None, strategy="uncertainty"):
        asked.append(strategy)
        given.append(real(self, split, strategy))
        return given[-1]

    monkeypatch.setattr(type(widget.session.client), "next_image", spy)
    widget.next_order.setCurrentIndex(widget.next_order.findData("power"))
    assert widget.session.next_strategy == "power"
    widget.open_next()
    qtbot.waitUntil(lambda: asked == ["power"], timeout=WAIT_MS)
    qtbot.waitUntil(lambda: bool(given) and widget.session.image.id == given[0].id, timeout=WAIT_MS)
    assert viewer.layers[0].name == given[0].name


def test_annotate_saves_a_version_and_refuses_a_stale_save(
    make_napari_viewer, qtbot, server, client, monkeypatch
) -> None:
    from napari_diffseg._widgets import annotate as annotate_module

    warnings: list[str] = []
    monkeypatch.setattr(annotate_module, "show_warning", warnings.append)
    viewer = make_napari_viewer()
    project = _connected(viewer, qtbot, server)
    annotate = _dock(viewer, "Annotate")
    project.open_next()
    qtbot.waitUntil(lambda: project.session.image is not None, timeout=WAIT_MS)
    image_id = project.session.image.id
    before = len(client.annotations(image_id))

    qtbot.waitUntil(lambda: annotate.labels is not None, timeout=WAIT_MS)  # shown on opening, no click
    assert annotate.image_id == image_id
    proposal = client.proposal_pixels(image_id, "mask")
    assert np.array_equal(annotate.labels.data, proposal)
    uncertainty = viewer.layers[f"{project.session.image.name} uncertainty"]
    # a fixed scale (0-1 bit, never stretched per image), transparent below the threshold
    assert tuple(uncertainty.contrast_limits) == (0.0, 1.0)
    assert uncertainty.colormap.map(np.array([0.2, 0.9]))[:, 3].tolist()[0] == 0.0
    assert uncertainty.colormap.map(np.array([0.9]))[0, 3] > 0.5

    edited = np.array(annotate.labels.data)
    edited[10:30, 10:30] = 1
    annotate.labels.data = edited
    annotate.save()
    qtbot.waitUntil(lambda: len(client.annotations(image_id)) == before + 1, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: annotate.base_version is not None, timeout=WAIT_MS)
    assert np.array_equal(client.annotation_pixels(image_id), edited)

    annotate.revert()
    assert np.array_equal(annotate.labels.data, proposal)

    # someone else saves first: the widget's next save is stale and must not overwrite it
    other = client.save_annotation(image_id, proposal, replaces=annotate.base_version)
    annotate.save()
    qtbot.waitUntil(lambda: any("Not saved" in w for w in warnings), timeout=WAIT_MS)
    versions = client.annotations(image_id)
    assert len(versions) == before + 2 and versions[-1].version == other.version
    assert str(other.version) in warnings[-1]
    with pytest.raises(StaleAnnotation):
        client.save_annotation(image_id, proposal, replaces=annotate.base_version)


def test_train_widget_runs_a_job_and_shows_progress(make_napari_viewer, qtbot, server, client) -> None:
    viewer = make_napari_viewer()
    _connected(viewer, qtbot, server)
    train = _dock(viewer, "Train")
    train.kind.setCurrentText("pretrain")
    train.preset.setCurrentText("tiny")
    assert train.params() == {"preset": "tiny"}
    train.start()
    qtbot.waitUntil(lambda: "done" in train.status.text(), timeout=60_000)
    assert train.progress.value() == train.progress.maximum() > 0
    assert client.job(train.job_id).state == "done"
    qtbot.waitUntil(train.start_button.isEnabled, timeout=WAIT_MS)


def test_train_widget_cancels_a_job(make_napari_viewer, qtbot, server, client) -> None:
    viewer = make_napari_viewer()
    _connected(viewer, qtbot, server)
    train = _dock(viewer, "Train")
    train.kind.setCurrentText("pretrain")
    train.preset.setCurrentText("cpu")  # long enough to be cancelled while queued or running
    train.start()
    qtbot.waitUntil(lambda: train.job_id is not None and train.cancel_button.isEnabled(), timeout=WAIT_MS)
    train.cancel()
    qtbot.waitUntil(lambda: "cancelled" in train.status.text(), timeout=WAIT_MS)
    assert client.job(train.job_id).state == "cancelled"
    qtbot.waitUntil(train.start_button.isEnabled, timeout=WAIT_MS)


def test_project_widget_starts_and_stops_a_local_backend(make_napari_viewer, qtbot, tmp_path) -> None:
    from napari_diffseg.data.synthetic import make_sample
    from napari_diffseg.project import Project

    with Project.create(tmp_path / "local") as proj:
        proj.import_array(make_sample(0, (32, 32))[0], "only")
    viewer = make_napari_viewer()
    widget = _dock(viewer, "Project")
    widget.start_local(tmp_path / "local")
    qtbot.waitUntil(lambda: widget.table.rowCount() == 1, timeout=WAIT_MS)
    proc = widget.session.server
    assert proc is not None and proc.poll() is None
    assert widget.table.item(0, 0).text() == "only" and widget.table.item(0, 1).text() == "unlabeled"
    widget.session.stop_server()
    assert proc.poll() is not None and widget.session.server is None


def test_connection_problems_become_notifications(make_napari_viewer, qtbot, tmp_path, monkeypatch) -> None:
    from backend_server import free_port
    from napari_diffseg._widgets import _session

    messages: list[str] = []
    monkeypatch.setattr(_session, "show_warning", messages.append)
    viewer = make_napari_viewer()
    widget = _dock(viewer, "Project")
    widget.start_local(tmp_path)  # not a project
    assert "not a diffseg project" in messages[-1] and "diffseg init" in messages[-1]
    widget.connect_to(f"http://127.0.0.1:{free_port()}")
    qtbot.waitUntil(lambda: len(messages) == 2, timeout=WAIT_MS)
    assert "cannot reach the diffseg backend" in messages[-1] and "Start it" in messages[-1]
    assert widget.session.client is None and widget.status.text() == "not connected"
