"""Train widget → *Export → bioimage.io…*: a tested package from a local backend's project, the command to
run for a remote backend, a failed export as a notification (Xvfb, real backend)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
pytest.importorskip("bioimageio.core")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("no display: install Xvfb and pytest-xvfb to run the GUI tests", allow_module_level=True)

from backend_server import Server, make_project
from napari_diffseg._widgets import train as train_module
from napari_diffseg._widgets._bioimageio import local_project
from napari_diffseg._widgets.train import TrainWidget
from napari_diffseg.backend.client import DiffsegClient
from napari_diffseg.cli import main

EXPORT_MS = 300_000


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("wexport") / "proj", n_train=3, size=64, annotate=2)
    assert main(["cotrain", str(root), "--preset", "tiny", "-q", "--json", "--threads", "1"]) == 0
    return root


@pytest.fixture(scope="module")
def server(project: Path):
    with Server(project) as srv:
        yield srv


@pytest.fixture
def messages(monkeypatch) -> dict[str, list[str]]:
    from napari_diffseg._widgets import _session

    got: dict[str, list[str]] = {"info": [], "warning": [], "error": []}
    monkeypatch.setattr(train_module, "show_info", got["info"].append)
    monkeypatch.setattr(train_module, "show_warning", got["warning"].append)
    monkeypatch.setattr(_session, "show_warning", got["warning"].append)
    monkeypatch.setattr(_session, "show_error", got["error"].append)
    return got


def _widget(make_napari_viewer, server: Server, local: bool) -> TrainWidget:
    from napari_diffseg._widgets._session import session_for

    viewer = make_napari_viewer()
    session = session_for(viewer)
    session.set_client(DiffsegClient(server.url))
    if local:
        session.server = server.proc  # as if the Project widget had started this backend
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-diffseg", "Train")
    assert isinstance(widget, TrainWidget)
    return widget


def test_local_project_is_read_from_the_serve_process(server: Server, project: Path) -> None:
    assert local_project(server.proc) == project
    assert local_project(None) is None


@pytest.mark.slow
def test_export_button_writes_a_tested_package(
    make_napari_viewer, qtbot, server, messages, tmp_path, monkeypatch
) -> None:
    widget = _widget(make_napari_viewer, server, local=True)
    qtbot.waitUntil(lambda: widget.active_model() is not None, timeout=30_000)
    chosen = tmp_path / "from-napari.zip"
    monkeypatch.setattr(
        train_module.QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(chosen), ""))
    )
    widget.bioimageio_button.click()
    qtbot.waitUntil(lambda: any("Saved model" in m for m in messages["info"]), timeout=EXPORT_MS)
    assert chosen.is_file() and "rdf.yaml" in zipfile.ZipFile(chosen).namelist()
    assert any("test passed" in m for m in messages["info"]) and not messages["error"]

    widget.export_bioimageio(widget.active_model(), tmp_path / "bad.tar")  # refused by the export
    qtbot.waitUntil(lambda: bool(messages["error"]), timeout=EXPORT_MS)
    assert ".zip" in messages["error"][-1] and not (tmp_path / "bad.tar").exists()


def test_remote_backend_gets_the_command_to_run(make_napari_viewer, qtbot, server, messages) -> None:
    widget = _widget(make_napari_viewer, server, local=False)
    qtbot.waitUntil(lambda: widget.active_model() is not None, timeout=30_000)
    widget.export_bioimageio()
    assert "diffseg export PROJECT --model" in messages["warning"][-1]
