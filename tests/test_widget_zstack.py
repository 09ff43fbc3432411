"""Z-stacks in the GUI (issue 12, item 3; Xvfb via pytest-xvfb), against a real backend on loopback: *Next
image* shows a stack as 3D layers (image, proposal Labels, uncertainty) with the Z slider at its most
uncertain plane; a save names the planes the annotator edited or had on show (not every plane the
proposal labels); an annotated stack reopens with its planes; a switch between a 2D image and a stack
reuses the same layers; fluorescence channels are one layer each, named from the metadata."""

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

pytestmark = pytest.mark.timeout(240)

WAIT_MS = 30_000
Z, H, W = 5, 40, 48
WORST = 3  # the stack's most uncertain plane


def _model(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text('{"format_version": 1}')
    (folder / "weights.safetensors").write_bytes(b"\x00" * 64)
    return folder


def make_stack_project(root: Path) -> Path:
    """A grey z-stack "s" (5 planes, plane 3 the most uncertain) and a 2D image "g", each with a proposal
    from a stand-in model (a disc on every plane); "s" is the most uncertain image."""
    from napari_diffseg.project import Project

    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:H, :W]
    disc = ((yy - 20) ** 2 + (xx - 24) ** 2 < 81).astype(np.float32)
    fg = 0.1 + 0.8 * disc
    with Project.create(root) as proj:
        proj.register_model(_model(root.parent / "teacher0"), round=0, method="teacher")
        proj.import_array(rng.integers(0, 255, (Z, H, W), dtype=np.uint8), "s", axes="ZYX")
        proj.import_array(rng.integers(0, 255, (H, W), dtype=np.uint8), "g")
        unc = (rng.random((Z, H, W)) * 0.3).astype(np.float32)
        unc[WORST] += 0.6
        proj.save_proposal("teacher0", "s", np.stack([1 - fg, fg], axis=0)[None].repeat(Z, 0), unc)
        proj.save_proposal("teacher0", "g", np.stack([1 - fg, fg]), (rng.random((H, W)) * 0.2).astype("f4"))
    return root


@pytest.fixture
def server(tmp_path: Path):
    with Server(make_stack_project(tmp_path / "proj")) as srv:
        yield srv


@pytest.fixture
def client(server: Server):
    with DiffsegClient(server.url) as c:
        yield c


@pytest.fixture
def docked(make_napari_viewer, qtbot, server: Server):
    """A viewer with the project and annotate widgets, connected, Next image pressed: the stack is open."""
    viewer = make_napari_viewer()
    _w, project = viewer.window.add_plugin_dock_widget("napari-diffseg", "Project")
    _w, annotate = viewer.window.add_plugin_dock_widget("napari-diffseg", "Annotate")
    project.connect_to(server.url)
    qtbot.waitUntil(lambda: project.table.rowCount() == 2, timeout=WAIT_MS)
    project.next_button.click()
    _wait_shown(qtbot, annotate, "s")
    return viewer, project, annotate


def _wait_shown(qtbot, annotate, name: str) -> None:
    session = annotate.session

    def shown() -> bool:
        image = session.image
        return image is not None and image.name == name and annotate.image_id == image.id

    qtbot.waitUntil(shown, timeout=WAIT_MS)


def _image_layer(viewer):
    return next(layer for layer in viewer.layers if "diffseg_image" in layer.metadata)


def _edit_plane(viewer, annotate, plane: int, value: int = 1) -> None:
    """Go to ``plane`` with the Z slider and paint a square on it."""
    viewer.dims.set_point(0, plane)
    data = np.array(annotate.labels.data)
    data[plane, 2:8, 2:8] = value
    annotate.labels.data = data


def _save(qtbot, annotate, version: int) -> None:
    annotate.save()
    qtbot.waitUntil(lambda: annotate.base_version == version, timeout=WAIT_MS)


def _open(qtbot, project, annotate, name: str) -> None:
    row = [project.table.item(r, 0).text() for r in range(project.table.rowCount())].index(name)
    project.table.cellDoubleClicked.emit(row, 0)
    _wait_shown(qtbot, annotate, name)


def test_next_image_shows_the_stack_in_3d_at_its_most_uncertain_plane_and_saves_the_edited_planes(
    docked, qtbot, client
) -> None:
    viewer, project, annotate = docked
    image = project.session.image
    assert (image.axes, image.plane) == ("ZYX", WORST)
    layer, labels, unc = _image_layer(viewer), annotate.labels, annotate.uncertainty
    assert layer.data.shape == (Z, H, W) and not layer.rgb
    assert labels.data.shape == (Z, H, W) and unc.data.shape == (Z, H, W)
    assert np.array_equal(labels.data, client.proposal_pixels("s", "mask"))
    assert np.allclose(unc.data, client.proposal_pixels("s", "uncertainty"))
    assert viewer.dims.ndim == 3 and viewer.dims.current_step[0] == WORST  # the Z slider
    assert viewer.dims.axis_labels[0] == "Z"
    assert f"plane {WORST} is the most uncertain" in annotate.current.text()
    assert [la.name for la in viewer.layers] == ["s", "s uncertainty", "s proposal"]

    # in the 3D view no plane is on show: an unedited save is refused, nothing is sent
    viewer.dims.ndisplay = 3
    annotate.save()
    qtbot.wait(300)
    assert client.annotations("s") == []
    viewer.dims.ndisplay = 2

    # edit plane 1 (the proposal labels every plane): only plane 1 is annotated
    _edit_plane(viewer, annotate, 1)
    _save(qtbot, annotate, 1)
    saved = client.annotations("s")[-1]
    assert saved.planes == [1] and saved.proposal_id is not None
    assert np.array_equal(client.annotation_pixels("s"), labels.data)
    assert "annotated planes 1" in annotate.current.text()
    # then plane 2: the new version keeps plane 1; a plane on show unedited is accepted as it is
    _edit_plane(viewer, annotate, 2)
    _save(qtbot, annotate, 2)
    assert client.annotations("s")[-1].planes == [1, 2]
    viewer.dims.set_point(0, 4)
    _save(qtbot, annotate, 3)
    assert client.annotations("s")[-1].planes == [1, 2, 4]
    assert client.image("s").state == "corrected"

    # opened again (from the 2D image): its latest annotation, with its planes; a further edit adds one
    _open(qtbot, project, annotate, "g")
    _open(qtbot, project, annotate, "s")
    assert annotate.labels.name == "s annotation" and annotate.labels.data.shape == (Z, H, W)
    assert annotate._annotated == [1, 2, 4]
    _edit_plane(viewer, annotate, 0)
    _save(qtbot, annotate, 4)
    assert client.annotations("s")[-1].planes == [0, 1, 2, 4]


def test_switching_between_a_stack_and_a_2d_image_reuses_the_layers(docked, qtbot, client) -> None:
    viewer, project, annotate = docked
    layer, labels, unc = _image_layer(viewer), annotate.labels, annotate.uncertainty
    canvas = viewer.window._qt_viewer.canvas
    for name, shape in (("g", (H, W)), ("s", (Z, H, W)), ("g", (H, W))):
        _open(qtbot, project, annotate, name)
        assert _image_layer(viewer) is layer and annotate.labels is labels and annotate.uncertainty is unc
        assert layer.data.shape == labels.data.shape == unc.data.shape == shape
        assert viewer.dims.ndim == len(shape), [(la.name, la.ndim, la.data.shape) for la in viewer.layers]
        assert np.array_equal(labels.data, client.proposal_pixels(name, "mask"))
        assert [la.name for la in viewer.layers] == [name, f"{name} uncertainty", f"{name} proposal"]
        if name == "s":
            assert viewer.dims.current_step[0] == WORST
        canvas.native.update()
        qtbot.wait(100)  # a paint with the new data and dimensions
    # the stack, then a 2D image whose proposal is not there yet: while it loads, the hidden layers kept
    # for reuse already have its dimensions (no Z slider left over from the stack)
    from napari_diffseg._widgets.project import show_image

    _open(qtbot, project, annotate, "s")
    show_image(viewer, project.session, (client.image("g"), client.image_pixels("g")))
    assert not labels.visible and labels.data.ndim == 2 and unc.data.ndim == 2
    assert layer.data.shape == (H, W) and viewer.dims.ndim == 2
    _wait_shown(qtbot, annotate, "g")
    assert labels.visible and viewer.dims.ndim == 2


def test_a_multichannel_stack_is_one_layer_per_named_channel(make_napari_viewer, qtbot, tmp_path) -> None:
    import tifffile

    from napari_diffseg.project import Project

    path = tmp_path / "cells.ome.tif"
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, (3, 2, 32, 40), dtype=np.uint16)
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "ZCYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    with Project.create(tmp_path / "proj") as proj:
        proj.import_files([path])
    viewer = make_napari_viewer()
    _w, project = viewer.window.add_plugin_dock_widget("napari-diffseg", "Project")
    with Server(tmp_path / "proj") as server:
        project.connect_to(server.url)
        qtbot.waitUntil(lambda: project.table.rowCount() == 1, timeout=WAIT_MS)
        project.next_button.click()
        qtbot.waitUntil(lambda: project.session.image is not None, timeout=WAIT_MS)
        record = project.session.image
        assert (record.axes, record.channel_names) == ("ZCYX", ["DAPI", "GFP"])
        ours = [la for la in viewer.layers if "diffseg_image" in la.metadata]
        assert [la.name for la in ours] == ["cells DAPI", "cells GFP"]
        assert all(la.data.shape == (3, 32, 40) for la in ours)
        assert np.array_equal(ours[1].data, data[:, 1])
        assert ours[0].colormap.name != ours[1].colormap.name
        # the same image again: the channel layers are reused
        project.next_button.click()
        qtbot.wait(500)
        again = [la for la in viewer.layers if "diffseg_image" in la.metadata]
        assert len(again) == 2 and all(a is b for a, b in zip(again, ours, strict=True))
