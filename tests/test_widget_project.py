"""The project widget (Xvfb via pytest-xvfb): create a project from the widget (its local backend starts),
import selected layers and files, and the image table."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("no display: install Xvfb and pytest-xvfb to run the GUI tests", allow_module_level=True)

from napari_diffseg.backend.client import DiffsegClient
from napari_diffseg.base.contracts import Image

pytestmark = pytest.mark.timeout(240)

WAIT_MS = 60_000


@pytest.fixture
def messages(monkeypatch):
    """The project widget's notifications: ``{"info": [...], "warning": [...]}``."""
    from napari_diffseg._widgets import _session
    from napari_diffseg._widgets import project as project_module

    seen: dict[str, list[str]] = {"info": [], "warning": []}
    monkeypatch.setattr(project_module, "show_info", seen["info"].append)
    monkeypatch.setattr(project_module, "show_warning", seen["warning"].append)
    monkeypatch.setattr(_session, "show_warning", seen["warning"].append)
    return seen


@pytest.fixture
def widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-diffseg", "Project")
    yield widget
    widget.session.stop_server()


def _open(widget, qtbot, folder: Path, monkeypatch, create: bool = True) -> list[Path]:
    """Open ``folder`` through the widget's button; returns the folders ask_create was asked about."""
    from napari_diffseg._widgets import project as project_module

    asked: list[Path] = []
    monkeypatch.setattr(project_module, "ask_create", lambda _parent, path: asked.append(path) or create)
    widget.folder.setText(str(folder))
    widget.start_button.click()
    return asked


def _names(widget) -> dict[str, str]:
    return {
        widget.table.item(r, 0).text(): widget.table.item(r, 1).text() for r in range(widget.table.rowCount())
    }


def test_create_a_project_then_import_the_selected_image_layers(
    widget, qtbot, tmp_path, monkeypatch, messages
) -> None:
    folder = tmp_path / "new project"
    asked = _open(widget, qtbot, folder, monkeypatch)
    assert asked == [folder]
    qtbot.waitUntil(lambda: widget.session.client is not None, timeout=WAIT_MS)
    assert (folder / "project.db").is_file()
    assert widget.session.server is not None and widget.session.server.poll() is None
    assert "127.0.0.1" in widget.url.text() and widget.table.rowCount() == 0

    viewer = widget.viewer
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 60000, (40, 50), dtype=np.uint16)
    rgb = rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)
    layers = [
        viewer.add_image(grey, name="grey"),
        viewer.add_image(rgb, name="rgb", rgb=True),
        viewer.add_labels(np.zeros((40, 50), np.int32), name="mask"),
        viewer.add_image(rng.random((2, 3, 20, 20)), name="hyperstack"),
        viewer.add_image(rgb, name="not selected", rgb=True),
    ]
    viewer.layers.selection.clear()
    viewer.layers.selection.update(layers[:4])
    widget.import_layers_button.click()
    qtbot.waitUntil(lambda: widget.table.rowCount() == 2, timeout=WAIT_MS)
    assert _names(widget) == {"grey": "unlabeled", "rgb": "unlabeled"}
    headers = [widget.table.horizontalHeaderItem(c).text() for c in range(widget.table.columnCount())]
    assert headers == ["name", "state", "uncertainty", "last edit Dice", "split"]
    skipped = messages["warning"][-1]
    assert "mask (a Labels layer, not an image)" in skipped and "hyperstack (4D" in skipped
    assert "not selected" not in skipped
    qtbot.waitUntil(lambda: any("Imported 2" in m for m in messages["info"]), timeout=WAIT_MS)

    with DiffsegClient(widget.session.client.base_url) as client:
        assert np.array_equal(client.image_pixels("grey"), grey[None])
        assert np.array_equal(client.image_pixels("rgb"), np.moveaxis(rgb, -1, 0))

    # the same layers again: nothing new, the table stays as it is
    widget.import_selected_layers()
    qtbot.waitUntil(lambda: any("2 already in the project" in m for m in messages["info"]), timeout=WAIT_MS)
    assert widget.table.rowCount() == 2


def test_declining_creation_creates_nothing(widget, qtbot, tmp_path, monkeypatch, messages) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _open(widget, qtbot, empty, monkeypatch, create=False) == [empty]
    qtbot.wait(300)
    assert list(empty.iterdir()) == [] and widget.session.server is None

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("not a project")
    assert _open(widget, qtbot, busy, monkeypatch) == []  # not offered: the folder is not empty
    assert "not a diffseg project and not empty" in messages["warning"][-1]
    assert not (busy / "project.db").exists() and widget.session.client is None


def test_import_files_reports_bad_files_and_imports_the_others(
    widget, qtbot, tmp_path, monkeypatch, messages
) -> None:
    import imageio.v3 as iio
    import tifffile

    from napari_diffseg._widgets import project as project_module
    from napari_diffseg.project import Project

    Project.create(tmp_path / "proj").close()
    _open(widget, qtbot, tmp_path / "proj", monkeypatch)
    qtbot.waitUntil(lambda: widget.session.client is not None, timeout=WAIT_MS)

    rng = np.random.default_rng(1)
    files = tmp_path / "files"
    files.mkdir()
    iio.imwrite(files / "cells.png", rng.integers(0, 255, (32, 40, 3), dtype=np.uint8))
    tifffile.imwrite(files / "nuclei.tif", rng.integers(0, 4000, (30, 30), dtype=np.uint16))
    iio.imwrite(files / "photo.jpg", rng.integers(0, 255, (24, 28, 3), dtype=np.uint8))
    good = (files / "cells.png").read_bytes()
    (files / "broken.png").write_bytes(good[: len(good) // 3])  # truncated
    (files / "notes.txt").write_text("not an image")
    picked = [str(files / n) for n in ("cells.png", "broken.png", "nuclei.tif", "notes.txt", "photo.jpg")]
    monkeypatch.setattr(
        project_module.QFileDialog, "getOpenFileNames", staticmethod(lambda *_a, **_k: (picked, ""))
    )

    widget.import_files_button.click()
    qtbot.waitUntil(lambda: widget.table.rowCount() == 3, timeout=WAIT_MS)
    assert _names(widget) == {"cells": "unlabeled", "nuclei": "unlabeled", "photo": "unlabeled"}
    qtbot.waitUntil(lambda: any("Not imported" in m for m in messages["warning"]), timeout=WAIT_MS)
    report = widget.last_import
    assert sorted(report.added) == ["cells", "nuclei", "photo"]
    assert [name for name, _why in report.failed] == ["broken.png", "notes.txt"]
    warning = next(m for m in messages["warning"] if "Not imported" in m)
    assert "broken.png" in warning and "notes.txt" in warning and "other images were imported" in warning
    assert any("Imported 3" in m for m in messages["info"])
    assert widget.import_files_button.isEnabled() and widget.import_layers_button.isEnabled()


def test_a_3d_layer_imports_as_a_z_stack_and_a_4d_one_or_channel_layers_are_refused(
    widget, qtbot, tmp_path, monkeypatch, messages
) -> None:
    """Issue 12: a z-stack opened with napari's own reader is imported as one image of axes ZYX (RGB
    planes: ZYXC), a 3D layer with one plane as a 2D image; a 4D layer, and the channel layers napari makes
    of one file with channel_axis, are refused with what to do instead."""
    import tifffile

    _open(widget, qtbot, tmp_path / "proj", monkeypatch)
    qtbot.waitUntil(lambda: widget.session.client is not None, timeout=WAIT_MS)
    viewer = widget.viewer
    rng = np.random.default_rng(2)
    stack = rng.integers(0, 4000, (6, 30, 40), dtype=np.uint16)
    colour = rng.integers(0, 255, (4, 24, 28, 3), dtype=np.uint8)
    plane = rng.integers(0, 4000, (1, 30, 40), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "zstack.tif", stack)
    opened = viewer.open(
        tmp_path / "zstack.tif", plugin="napari"
    )  # napari's own reader, as a biologist would
    assert [layer.data.shape for layer in opened] == [stack.shape]
    viewer.add_image(colour, name="colour stack", rgb=True)
    viewer.add_image(plane, name="one plane")
    viewer.add_image(rng.random((2, 6, 30, 40)), name="time-lapse stack")
    viewer.layers.selection.clear()
    viewer.layers.selection.update(list(viewer.layers))
    widget.import_layers_button.click()
    qtbot.waitUntil(lambda: widget.table.rowCount() == 3, timeout=WAIT_MS)
    assert set(_names(widget)) == {"zstack", "colour stack", "one plane"}
    refused = messages["warning"][-1]
    assert refused.startswith("Not imported: time-lapse stack (4D (shape (2, 6, 30, 40)); a layer imports")
    assert "'Import files'" in refused and "--axes" in refused
    qtbot.waitUntil(lambda: any("Imported 3" in m for m in messages["info"]), timeout=WAIT_MS)

    client = widget.session.client
    rec = client.image("zstack")
    assert rec.axes == "ZYX" and rec.shape == [6, 30, 40] and rec.channels == 1
    assert np.array_equal(client.image_pixels("zstack"), stack[:, None])  # (Z, C, H, W)
    rec = client.image("colour stack")
    assert rec.axes == "ZYXC" and rec.shape == [4, 24, 28, 3] and rec.channels == 3
    assert np.array_equal(client.image_pixels("colour stack"), np.moveaxis(colour, -1, 1))
    rec = client.image("one plane")
    assert rec.axes == "YX" and rec.shape == [30, 40]
    assert np.array_equal(client.image_pixels("one plane"), plane)

    # three channels of one file, opened with channel_axis: one layer each, none imported on its own
    tifffile.imwrite(tmp_path / "channels.tif", rng.integers(0, 4000, (3, 30, 40), dtype=np.uint16))
    layers = viewer.open(tmp_path / "channels.tif", plugin="napari", channel_axis=0)
    assert len(layers) == 3 and all(layer.data.shape == (30, 40) for layer in layers)
    viewer.layers.selection.clear()
    viewer.layers.selection.update(layers[:2])
    widget.import_selected_layers()
    refused = messages["warning"][-1]
    assert refused.count("one of 3 layers napari opened from channels.tif") == 2
    assert "Import the file itself with 'Import files'" in refused
    qtbot.wait(300)
    assert widget.table.rowCount() == 3 and len(client.images()) == 3


def test_a_time_lapse_layer_is_sent_one_time_point_each() -> None:
    from napari_diffseg._widgets.project import LayerPixels, _uploads

    frames = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    sent = _uploads("movie", LayerPixels(frames, "TYX"), None)
    assert [(name, axes) for name, _body, axes in sent] == [
        ("movie-t000", "YX"),
        ("movie-t001", "YX"),
        ("movie-t002", "YX"),
    ]
    assert all(np.array_equal(body, frames[t]) for t, (_n, body, _a) in enumerate(sent))
    ((name, body, axes),) = _uploads("stack", LayerPixels(frames, "ZYX"), None)
    assert (name, axes) == ("stack", "ZYX") and body is frames


def test_a_grey_3d_layer_in_a_project_of_channels_is_refused_unless_the_axes_say_cyx(
    widget, qtbot, tmp_path, monkeypatch, messages
) -> None:
    """A project of two-channel images takes no grey z-stack: the refusal names the CYX choice; with it
    the same layer is imported as one image of two channels."""
    _open(widget, qtbot, tmp_path / "proj", monkeypatch)
    qtbot.waitUntil(lambda: widget.session.client is not None, timeout=WAIT_MS)
    client = widget.session.client
    rng = np.random.default_rng(3)
    client.upload_image(rng.integers(0, 4000, (2, 30, 40), dtype=np.uint16), name="first", axes="CYX")
    widget.refresh()
    qtbot.waitUntil(lambda: widget.table.rowCount() == 1, timeout=WAIT_MS)
    viewer = widget.viewer
    layer = viewer.add_image(rng.integers(0, 4000, (2, 30, 40), dtype=np.uint16), name="two planes")
    viewer.layers.selection.clear()
    viewer.layers.selection.add(layer)

    widget.import_selected_layers()
    refused = messages["warning"][-1]
    assert "a single-channel z-stack of 2 planes, but this project's images have 2 channels" in refused
    assert "choose 'CYX (channels)'" in refused
    qtbot.wait(300)
    assert len(client.images()) == 1

    widget.axes.setCurrentIndex(widget.axes.findData("CYX"))
    widget.import_selected_layers()
    qtbot.waitUntil(lambda: widget.table.rowCount() == 2, timeout=WAIT_MS)
    rec = client.image("two planes")
    assert rec.axes == "CYX" and rec.shape == [2, 30, 40] and rec.channels == 2
    assert np.array_equal(client.image_pixels("two planes"), layer.data)


def test_a_late_listing_does_not_overwrite_a_newer_one(widget, qtbot) -> None:
    """Two refreshes in a row (a job's images_changed, then the Refresh button): the first listing, asked
    for before the proposals were saved, answers last; the table keeps the newer states."""
    import threading
    import time

    first_asked = threading.Event()

    class SlowThenFast:
        calls = 0

        def images(self) -> list[Image]:
            SlowThenFast.calls += 1
            if SlowThenFast.calls == 1:
                first_asked.set()
                time.sleep(0.8)  # answers after the second listing
                return [_image("a")]
            return [_image("a").model_copy(update={"state": "proposed"})]

    widget.session.client = SlowThenFast()
    try:
        widget.refresh()
        assert first_asked.wait(5)
        widget.refresh()
        qtbot.waitUntil(lambda: widget.table.rowCount() == 1, timeout=5000)
        qtbot.wait(1500)  # the slow, older listing has answered by now
        assert SlowThenFast.calls == 2
        assert _names(widget) == {"a": "proposed"}
    finally:
        widget.session.client = None


def test_import_without_a_backend_says_what_to_do(widget, qtbot, messages) -> None:
    widget.viewer.add_image(np.zeros((16, 16), np.uint8), name="x")
    widget.import_selected_layers()
    widget.import_files(["/nonexistent.png"])
    assert len(messages["warning"]) == 2
    assert all("open a project or connect first" in m for m in messages["warning"])


def _image(name: str) -> Image:
    """A record as the backend returns it (what :func:`show_image` is given)."""
    return Image(
        id=name,
        name=name,
        state="unlabeled",
        uncertainty=None,
        split="train",
        height=64,
        width=80,
        channels=1,
        dtype="float32",
        source="",
        file_sha256="0" * 64,
        created_at=0.0,
    )


def test_show_image_reuses_the_image_layer_and_adds_before_removing(make_napari_viewer, qtbot) -> None:
    """Opening images in a row keeps one Image layer (new data, name, contrast); grey ↔ RGB needs a new
    layer, added before the old one goes. The canvas paints after each (remove + add used to crash some
    OpenGL drivers)."""
    from napari_diffseg._widgets._session import Session
    from napari_diffseg._widgets.project import show_image

    viewer = make_napari_viewer()
    session = Session()
    rng = np.random.default_rng(0)
    opened: list[str] = []
    session.image_opened.connect(lambda rec: opened.append(rec.name))
    grey = [(rng.random((1, 64, 80)) * k).astype(np.float32) for k in (1, 50, 1000)]
    for k, pixels in enumerate(grey):
        show_image(viewer, session, (_image(f"g{k}"), pixels))
        viewer.window._qt_viewer.canvas.native.update()
        qtbot.wait(50)
    layer = viewer.layers[0]
    assert [la.name for la in viewer.layers] == ["g2"] and opened == ["g0", "g1", "g2"]
    assert np.array_equal(layer.data, grey[2][0]) and layer.metadata["diffseg_image"].id == "g2"
    assert layer.contrast_limits[1] > 100  # reset for the new data, not the first image's
    rgb = rng.integers(0, 255, (3, 64, 80), dtype=np.uint8)
    show_image(viewer, session, (_image("c"), rgb))
    qtbot.wait(50)
    assert [la.name for la in viewer.layers] == ["c"] and viewer.layers[0].rgb
    assert viewer.layers[0] is not layer and np.array_equal(viewer.layers[0].data, np.moveaxis(rgb, 0, -1))
    show_image(viewer, session, (_image("c2"), rgb[::-1]))
    qtbot.wait(50)
    assert [la.name for la in viewer.layers] == ["c2"] and session.image.id == "c2"
    # a review's proposal and uncertainty stay on top when an image of the other kind replaces the image
    # (RGB → grey needs a new layer; added last, it used to cover the proposal: DSB 2018 mixes both)
    viewer.add_image(
        np.zeros((64, 80), np.float32), name="c2 uncertainty", metadata={"diffseg_image_id": "c2"}
    )
    viewer.add_labels(np.zeros((64, 80), np.uint8), name="c2 proposal", metadata={"diffseg_image_id": "c2"})
    show_image(viewer, session, (_image("g9"), grey[0]))
    qtbot.wait(50)
    assert [la.name for la in viewer.layers] == ["g9", "c2 uncertainty", "c2 proposal"]
