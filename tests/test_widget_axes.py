"""Axes in the GUI (Xvfb via pytest-xvfb): the Project widget's axes choice for 'Import files', and image
files opened with the napari reader (channels as ``channel_axis`` layers named from the metadata, RGB as
``rgb``, scale from the pixel size, every OME series), and plain files left to napari's own reader."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("no display: install Xvfb and pytest-xvfb to run the GUI tests", allow_module_level=True)

pytestmark = pytest.mark.timeout(240)

WAIT_MS = 60_000
_SHARED = os.environ.get("DIFFSEG_SHARED_DATA")
CASES = (
    Path(_SHARED) if _SHARED else Path(__file__).resolve().parents[2] / "shared" / "data"
).parent / "cases"


@pytest.fixture
def messages(monkeypatch):
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


def test_import_files_with_the_axes_choice(widget, qtbot, tmp_path, monkeypatch, messages) -> None:
    import tifffile

    from napari_diffseg._widgets import project as project_module
    from napari_diffseg.backend.client import DiffsegClient
    from napari_diffseg.project import Project

    Project.create(tmp_path / "proj").close()
    monkeypatch.setattr(project_module, "ask_create", lambda *_a: True)
    widget.folder.setText(str(tmp_path / "proj"))
    widget.start_button.click()
    qtbot.waitUntil(lambda: widget.session.client is not None, timeout=WAIT_MS)

    assert widget.axes.currentText() == "axes: auto" and widget.axes.currentData() is None
    stack = tmp_path / "movie.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(stack, rng.integers(0, 4000, (6, 32, 40), dtype=np.uint16), metadata=None)
    # auto: six plain pages are a z-stack: one 3D image (ZYX)
    widget.import_files([str(stack)])
    qtbot.waitUntil(lambda: widget.table.rowCount() == 1, timeout=WAIT_MS)
    # TYX: one image per time point
    widget.axes.setCurrentIndex(widget.axes.findData("TYX"))
    widget.import_files([str(stack)])
    qtbot.waitUntil(lambda: widget.table.rowCount() == 7, timeout=WAIT_MS)
    with DiffsegClient(widget.session.client.base_url) as client:
        images = client.images()
    assert [i.name for i in images] == ["movie", *(f"movie-t00{k}" for k in range(6))]
    assert (images[0].axes, images[0].shape) == ("ZYX", [6, 32, 40])
    assert all(i.axes == "YX" and i.shape == [32, 40] for i in images[1:])


@pytest.mark.skipif(not (CASES / "README.md").is_file(), reason="../shared/cases is absent")
def test_reader_opens_image_files_as_napari_expects(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open(str(CASES / "fluo_4ch" / "fluo_4ch.ome.tif"), plugin="napari-diffseg")
    assert [la.name for la in layers] == ["AF647", "AF568", "AF488", "DAPI"]
    assert all(la.data.shape == (176, 160) and np.allclose(la.scale, (0.1241, 0.1241)) for la in layers)
    # napari hands the reader only OME-TIFF files (and folders); plain files read the same way through
    # read_image_files, layer by layer
    from napari.layers import Layer

    from napari_diffseg._reader import read_image_files

    (rgb,) = (Layer.create(*t) for t in read_image_files(str(CASES / "exif_rotated" / "exif_rotated.jpg")))
    assert rgb.rgb and rgb.data.shape == (160, 224, 3)
    (stack,) = (
        Layer.create(*t) for t in read_image_files(str(CASES / "imagej_zstack_3" / "imagej_zstack_3.tif"))
    )
    assert (
        stack.data.shape == (3, 128, 160) and not stack.rgb and np.allclose(stack.scale, (0.29, 0.26, 0.26))
    )
    series = viewer.open(str(CASES / "ome_two_series" / "ome_two_series.ome.tif"), plugin="napari-diffseg")
    assert [la.name for la in series] == ["ome_two_series-s0", "ome_two_series-s1"]


def test_plain_files_open_with_the_builtin_reader_without_a_choice(make_napari_viewer, tmp_path) -> None:
    """A plain TIFF, PNG or JPEG is not claimed by napari-diffseg, so napari opens it with its own reader
    and asks nothing (two matching plugins make ``viewer.open`` without ``plugin=`` raise, and the GUI
    ask which reader to use); an OME-TIFF and a folder are offered to napari-diffseg as well."""
    import imageio.v3 as iio
    import tifffile
    from napari.plugins import _npe2

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (24, 32), dtype=np.uint8)
    files = {"plain.tif": grey, "plain.png": grey, "photo.jpg": np.dstack([grey] * 3)}
    viewer = make_napari_viewer()
    for name, data in files.items():
        path = tmp_path / name
        if name.endswith(".tif"):
            tifffile.imwrite(path, data)
        else:
            iio.imwrite(path, data)
        assert "napari-diffseg" not in _npe2.get_readers(str(path))
        (layer,) = viewer.open(str(path))  # no MultipleReaderError: one reader matches
        assert layer.data.shape == data.shape
    ome = tmp_path / "cells.ome.tif"
    tifffile.imwrite(ome, np.stack([grey, grey]), ome=True, metadata={"axes": "CYX"})
    assert "napari-diffseg" in _npe2.get_readers(str(ome))
    assert "napari-diffseg" in _npe2.get_readers(str(tmp_path))
