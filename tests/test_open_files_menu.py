"""*File → IO Utilities → Open image with its axes and channels*: the way in for the files napari-diffseg's
reader leaves to napari (an ImageJ channel composite, an ImageJ z-stack, an EXIF-rotated JPEG), through
napari's own menu machinery (Xvfb via pytest-xvfb)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("no display: install Xvfb and pytest-xvfb to run the GUI tests", allow_module_level=True)

pytestmark = pytest.mark.timeout(240)

_SHARED = os.environ.get("DIFFSEG_SHARED_DATA")
CASES = (
    Path(_SHARED) if _SHARED else Path(__file__).resolve().parents[2] / "shared" / "data"
).parent / "cases"
COMMAND = "napari-diffseg.open_with_axes"


def test_the_menu_item_opens_files_with_their_axes_channels_and_orientation(
    make_napari_viewer, monkeypatch, tmp_path: Path
) -> None:
    if not CASES.is_dir():
        pytest.skip(f"{CASES} not found (the shared cases folder)")
    from napari._app_model import get_app_model
    from qtpy.QtWidgets import QFileDialog

    from napari_diffseg._widgets import open_files

    viewer = make_napari_viewer()
    app = get_app_model()
    # napari put the command in File -> IO Utilities (the manifest's menu contribution)
    items = app.menus.get_menu("napari/file/io_utilities")
    assert any(getattr(getattr(i, "command", None), "id", None) == COMMAND for i in items)

    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00 this is not a TIFF")
    chosen = [
        str(CASES / "fluo_2ch" / "fluo_2ch.tif"),
        str(corrupt),
        str(CASES / "imagej_zstack_4" / "imagej_zstack_4.tif"),
        str(CASES / "exif_rotated" / "exif_rotated.jpg"),
    ]
    monkeypatch.setattr(QFileDialog, "getOpenFileNames", staticmethod(lambda *a, **k: (chosen, "")))
    errors: list[str] = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    app.commands.execute_command(COMMAND).result()  # napari injects the viewer, as from the menu

    names = [layer.name for layer in viewer.layers]
    assert names[:2] == ["H3342", "oblique"]  # two channel layers named from the ImageJ metadata
    assert all(viewer.layers[n].data.shape == (144, 176) for n in ("H3342", "oblique"))
    stack = viewer.layers[2]
    assert stack.data.shape == (4, 128, 160) and not stack.rgb  # Z as a slider, never RGBA
    photo = viewer.layers[3]
    assert photo.rgb and photo.data.shape == (160, 224, 3)  # upright, as its mask
    assert len(viewer.layers) == 4
    (error,) = errors  # the corrupt file is reported by name; the others were opened
    assert "corrupt.tif" in error
    # the same images dropped on napari's own reader are not claimed by napari-diffseg
    npe2 = pytest.importorskip("npe2")
    readers = npe2.PluginManager.instance().iter_compatible_readers([chosen[0]])
    assert not any(r.command.startswith("napari-diffseg.") for r in readers)
    # cancelling the dialog adds nothing
    monkeypatch.setattr(QFileDialog, "getOpenFileNames", staticmethod(lambda *a, **k: ([], "")))
    open_files.open_with_axes(viewer)
    assert len(viewer.layers) == 4
