"""The npe2 manifest: it validates, every command it names imports, and none of them loads torch."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "monai")


def _manifest():
    npe2 = pytest.importorskip("npe2")
    return npe2.PluginManifest.from_file(ROOT / "napari.yaml")


def test_manifest_is_valid_and_shipped_in_the_package() -> None:
    manifest = _manifest()
    assert manifest.name == "napari-diffseg"
    ids = {c.id for c in manifest.contributions.commands}
    assert {
        "napari-diffseg.project_widget",
        "napari-diffseg.annotate_widget",
        "napari-diffseg.train_widget",
    } <= ids
    packaged = ROOT / "src" / "napari_diffseg" / "napari.yaml"
    assert packaged.resolve() == (ROOT / "napari.yaml").resolve()


def test_the_reader_claims_ome_tiff_and_folders_not_plain_files(tmp_path: Path) -> None:
    """npe2 offers readers for a path by its file name; when two plugins match, napari asks the user. So
    the reader claims OME-TIFF (which napari's own reader shows without its series, channel names and
    scale) and folders, never a plain TIFF, PNG, JPEG or any other file napari reads itself."""
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManager()
    pm.register(_manifest())

    def claimed(path: Path) -> bool:
        return any(r.command.startswith("napari-diffseg.") for r in pm.iter_compatible_readers([str(path)]))

    plain = ("a.tif", "a.tiff", "a.TIF", "a.png", "a.jpg", "a.jpeg", "a.bmp", "a.npy", "a.csv", "a.py", "a")
    assert [name for name in plain if claimed(tmp_path / name)] == []
    assert all(claimed(tmp_path / name) for name in ("a.ome.tif", "a.ome.tiff", "B.OME.TIF"))
    assert claimed(tmp_path)  # a folder: get_reader decides (project, dataset, OME-Zarr, else None)


def test_every_command_imports() -> None:
    pytest.importorskip("napari")
    pytest.importorskip("qtpy")
    for command in _manifest().contributions.commands:
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.id


@pytest.mark.parametrize(
    "module",
    [
        "napari_diffseg._reader",
        "napari_diffseg._writer",
        "napari_diffseg._sample_data",
        "napari_diffseg._widgets",
    ],
)
def test_manifest_modules_load_no_torch(module: str) -> None:
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        f"print(','.join(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imported {out.stdout.strip()}"


def test_widget_modules_load_no_torch() -> None:
    pytest.importorskip("napari")
    pytest.importorskip("qtpy")
    code = (
        "import sys, napari_diffseg._widgets.project, napari_diffseg._widgets.annotate, "
        "napari_diffseg._widgets.train; "
        f"print(','.join(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_sample_data_needs_no_network_and_has_masks() -> None:
    from napari_diffseg import _sample_data

    (image, image_meta, kind), (mask, _meta, mask_kind) = _sample_data.synthetic_glands()
    assert (kind, mask_kind) == ("image", "labels")
    assert image.shape == (256, 256, 3) and image_meta["rgb"]
    assert mask.shape == (256, 256) and set(np.unique(mask)) == {0, 1}
    assert len(_sample_data.synthetic_nuclei()) == 2
    ((ihc, meta, _),) = _sample_data.immunohistochemistry()
    assert ihc.shape == (512, 512, 3) and meta["rgb"]


def test_reader_opens_dataset_and_project_folders(tmp_path: Path) -> None:
    from napari_diffseg._reader import get_reader
    from napari_diffseg.data.synthetic import make_sample_dataset
    from napari_diffseg.project import Project

    ds = make_sample_dataset(tmp_path / "ds", n_train=2, n_test=1, size=(48, 40))
    layers = get_reader(str(ds))(str(ds))
    assert [kind for _, _, kind in layers] == ["image", "labels"] * 3
    assert layers[0][0].shape == (48, 40, 3) and layers[0][1]["rgb"]
    with Project.create(tmp_path / "proj") as project:
        project.import_dataset(ds)
    layers = get_reader([str(tmp_path / "proj")])(str(tmp_path / "proj"))
    assert sum(kind == "image" for _, _, kind in layers) == 3
    assert sum(kind == "labels" for _, _, kind in layers) == 3  # masks imported as ground truth
    assert get_reader(str(tmp_path)) is None
    assert get_reader(str(ds / "split.csv")) is None


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_writer_round_trips_labels(tmp_path: Path, suffix: str) -> None:
    from napari_diffseg._writer import write_labels
    from napari_diffseg.data.io import read_mask

    labels = np.zeros((20, 30), np.int32)
    labels[5:10, 3:20] = 2
    (written,) = write_labels(str(tmp_path / f"m{suffix}"), labels, {})
    assert np.array_equal(read_mask(written, binary=False), labels)


_LOADED_HEAVY = f"sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})"


def _run_fresh(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter; its last stdout line is returned (a failure shows its stderr)."""
    import os

    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_npe2_discovery_and_every_non_widget_contribution_load_no_torch(tmp_path: Path) -> None:
    """What napari does at start-up (discover the manifest) and when the reader, the writer or the sample
    data are used: none of it may load torch or MONAI."""
    pytest.importorskip("npe2")
    from napari_diffseg.data.synthetic import make_sample_dataset
    from napari_diffseg.project import Project

    ds = make_sample_dataset(tmp_path / "ds", n_train=2, n_test=1, size=(32, 32))
    with Project.create(tmp_path / "proj") as project:
        project.import_dataset(ds)
    code = f"""
import sys
import numpy as np
import npe2
pm = npe2.PluginManager.instance()
pm.discover()
assert pm.get_manifest("napari-diffseg").name == "napari-diffseg"
loaded = {{"discover": {_LOADED_HEAVY}}}
for key in ("sample_glands", "sample_nuclei", "sample_ihc"):
    assert pm.commands.execute("napari-diffseg." + key)
loaded["sample data"] = {_LOADED_HEAVY}
for folder in ({str(ds)!r}, {str(tmp_path / "proj")!r}):
    layers = npe2.read([folder], stack=False, plugin_name="napari-diffseg")
    assert any(kind == "labels" for *_, kind in layers), folder
loaded["reader"] = {_LOADED_HEAVY}
labels = np.zeros((8, 8), np.int32)
labels[2:5, 2:5] = 1
assert npe2.write({str(tmp_path / "mask.tif")!r}, [(labels, {{}}, "labels")], plugin_name="napari-diffseg")
loaded["writer"] = {_LOADED_HEAVY}
print(loaded)
"""
    loaded = _run_fresh(code)
    expected = {step: [] for step in ("discover", "sample data", "reader", "writer")}
    assert loaded == repr(expected), loaded
    assert (tmp_path / "mask.tif").is_file()


def test_docked_widgets_talk_to_a_backend_without_torch(tmp_path: Path) -> None:
    """The three widgets, built from the manifest and connected to a real backend (which runs the models
    in its own process), list the images and open one without loading torch or MONAI in napari's process."""
    pytest.importorskip("napari")
    pytest.importorskip("qtpy")
    from backend_server import Server, make_project

    root = make_project(tmp_path / "proj", n_train=3, annotate=1)
    with Server(root) as server:
        code = f"""
import sys, time
import npe2
from napari.components import ViewerModel
from napari.qt import get_qapp

app = get_qapp()
pm = npe2.PluginManager.instance()
pm.discover()
viewer = ViewerModel()
names = ("project_widget", "annotate_widget", "train_widget")
widgets = [pm.commands.get("napari-diffseg." + name)(viewer) for name in names]
loaded = {{"widgets": {_LOADED_HEAVY}}}
project = widgets[0]


def wait_for(condition, what):
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, what
        app.processEvents()
        time.sleep(0.01)


project.connect_to({server.url!r})
wait_for(lambda: project.table.rowCount() == 3, "the image table did not fill")
project.open_next()
wait_for(lambda: len(viewer.layers) >= 1, "the next image did not open")
# the annotate widget now looks for the image's proposal by itself: let those workers finish
from qtpy.QtCore import QThreadPool
for _ in range(3):
    QThreadPool.globalInstance().waitForDone(30000)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)
loaded["connected, image open"] = {_LOADED_HEAVY}
print(loaded)
"""
        loaded = _run_fresh(code, QT_QPA_PLATFORM="offscreen")
    assert loaded == repr({"widgets": [], "connected, image open": []}), loaded
