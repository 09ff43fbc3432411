"""One test per real-world input case in ``../shared/cases/`` (its README gives the right outcome of each).

The labels cases belong to the classes-and-instances issue and ``sparse_field`` to the normalisation work;
``same_stem``'s predict outcome is tested with ``diffseg predict``. Skipped cleanly where the shared
folder is absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_diffseg.base.errors import DataError
from napari_diffseg.cli import main
from napari_diffseg.data.io import read_image, read_image_file
from napari_diffseg.project import Project

_SHARED = os.environ.get("DIFFSEG_SHARED_DATA")
CASES = (
    Path(_SHARED) if _SHARED else Path(__file__).resolve().parents[2] / "shared" / "data"
).parent / "cases"
pytestmark = pytest.mark.skipif(not (CASES / "README.md").is_file(), reason="../shared/cases is absent")


def _one(path: Path, **kwargs):
    reads = read_image_file(path, **kwargs)
    assert len(reads) == 1
    return reads[0]


def _images_json(capsys, root: Path) -> dict[str, dict]:
    capsys.readouterr()
    assert main(["images", str(root), "--json"]) == 0
    return {r["name"]: r for r in json.loads(capsys.readouterr().out)}


def _import(capsys, root: Path, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["import", str(root), *args])
    return rc, capsys.readouterr().err


@pytest.fixture
def root(tmp_path: Path) -> Path:
    Project.create(tmp_path / "p").close()
    return tmp_path / "p"


@pytest.mark.parametrize("planes", [3, 4])
def test_imagej_zstack_is_zyx_never_colour(planes: int, root: Path, capsys) -> None:
    path = CASES / f"imagej_zstack_{planes}" / f"imagej_zstack_{planes}.tif"
    read = _one(path)
    assert (read.axes, read.shape, read.dtype, read.rgb) == ("ZYX", (planes, 128, 160), np.uint16, False)
    assert read.pixel_size == pytest.approx((0.26, 0.26)) and read.z_spacing == pytest.approx(0.29)
    assert _import(capsys, root, str(path))[0] == 0  # one 3D image, Z kept as is
    (image,) = _images_json(capsys, root).values()
    assert (image["axes"], image["shape"]) == ("ZYX", [planes, 128, 160])
    with Project.open(root) as proj:
        np.testing.assert_array_equal(proj.load_image(image["id"]), read.data[:, np.newaxis])


def test_imagej_timelapse_is_tyx_and_imports_one_image_per_frame(root: Path, capsys) -> None:
    path = CASES / "imagej_timelapse_3" / "imagej_timelapse_3.tif"
    read = _one(path)
    assert (read.axes, read.shape, read.dtype, read.rgb) == ("TYX", (3, 128, 192), np.uint16, False)
    assert _import(capsys, root, str(path))[0] == 0
    images = _images_json(capsys, root)
    assert sorted(images) == [f"imagej_timelapse_3-t00{i}" for i in range(3)]
    assert all(r["axes"] == "YX" and r["shape"] == [128, 192] for r in images.values())
    with Project.open(root) as proj:
        np.testing.assert_array_equal(proj.load_image("imagej_timelapse_3-t002")[0], read.data[2])


def test_multipage_plain_reads_every_page_and_states_its_assumption(
    root: Path, tmp_path: Path, capsys
) -> None:
    path = CASES / "multipage_plain" / "multipage_plain.tif"
    read = _one(path)
    assert (read.axes, read.shape) == ("ZYX", (6, 128, 160)) and read.ambiguous
    assert "6 pages without axis metadata, taken as Z" in read.notes[0] and "--axes" in read.notes[0]
    assert _one(path, axes="TYX").axes == "TYX" and _one(path, axes="cyx").axes == "CYX"
    rc, err = _import(capsys, root, str(path), "--axes", "TYX")
    assert rc == 0 and "axes TYX as given" in err
    assert len(_images_json(capsys, root)) == 6
    Project.create(tmp_path / "z").close()  # as read: one z-stack of every page, the assumption said
    rc, err = _import(capsys, tmp_path / "z", str(path))
    assert rc == 0 and "taken as Z (ZYX)" in err
    (image,) = _images_json(capsys, tmp_path / "z").values()
    assert (image["axes"], image["shape"]) == ("ZYX", [6, 128, 160])


def test_ome_two_series_gives_two_images(root: Path, capsys) -> None:
    path = CASES / "ome_two_series" / "ome_two_series.ome.tif"
    reads = read_image_file(path)
    assert [(r.name, r.axes, r.shape, r.dtype) for r in reads] == [
        ("ome_two_series-s0", "YX", (128, 160), np.uint16),
        ("ome_two_series-s1", "YX", (96, 112), np.uint16),
    ]
    assert _import(capsys, root, str(path))[0] == 0
    images = _images_json(capsys, root)
    assert images["ome_two_series-s0"]["shape"] == [128, 160]
    assert images["ome_two_series-s1"]["shape"] == [96, 112]


@pytest.mark.parametrize(
    ("case", "file", "shape", "names"),
    [
        ("fluo_2ch", "fluo_2ch.tif", (2, 144, 176), ["H3342", "oblique"]),
        ("fluo_4ch", "fluo_4ch.ome.tif", (4, 176, 160), ["AF647", "AF568", "AF488", "DAPI"]),
        ("fluo_5ch", "fluo_5ch.tif", (5, 128, 160), ["AF647", "AF568", "AF488", "DAPI", "CTIP2"]),
    ],
)
def test_fluorescence_channels_kept_whole_with_names(
    case: str, file: str, shape: tuple, names: list, root: Path, capsys
) -> None:
    read = _one(CASES / case / file)
    assert (read.axes, read.shape, read.dtype, read.rgb) == ("CYX", shape, np.uint16, False)
    assert list(read.channel_names) == names
    assert _import(capsys, root, str(CASES / case / file))[0] == 0
    (record,) = _images_json(capsys, root).values()
    assert (record["axes"], record["shape"], record["channel_names"]) == ("CYX", list(shape), names)
    with Project.open(root) as proj:
        np.testing.assert_array_equal(proj.load_image(record["id"]), read.data)
    if case == "fluo_4ch":
        assert read.pixel_size == pytest.approx((0.1241, 0.1241))


def test_plain_3yx_states_its_assumption_and_is_overridable(root: Path, capsys) -> None:
    path = CASES / "plain_3yx" / "plain_3yx.tif"
    read = _one(path)
    assert read.shape == (3, 192, 128) and read.axes in ("CYX", "ZYX") and read.ambiguous
    assert "3 pages without axis metadata" in read.notes[0] and "--axes ZYX" in read.notes[0]
    assert _one(path, axes="ZYX").axes == "ZYX"
    assert (_one(path, axes="CYX").axes, _one(path, axes="CYX").rgb) == ("CYX", False)
    rc, err = _import(capsys, root, str(path))
    assert rc == 0 and "taken as 3 channels (CYX)" in err
    rc, err = _import(capsys, root, str(path), "--axes", "ZYX")  # the same pages as a z-stack: one 3D image
    assert rc == 0 and "axes ZYX as given" in err
    shapes = sorted((r["axes"], r["shape"]) for r in _images_json(capsys, root).values())
    assert shapes == [("CYX", [3, 192, 128]), ("ZYX", [3, 192, 128])]
    rc, err = _import(capsys, root, str(path), "--axes", "YXZ")  # wrong letters for this file: refused
    assert rc == 2 and "pixels" in err


def test_exif_rotated_jpeg_is_read_upright(root: Path, capsys) -> None:
    folder = CASES / "exif_rotated"
    read = _one(folder / "exif_rotated.jpg")
    mask = np.asarray(Image.open(folder / "upright_mask.png"))
    assert (read.axes, read.shape, read.rgb) == ("YXC", (160, 224, 3), True)
    assert read.shape[:2] == mask.shape
    reference = np.asarray(Image.open(folder / "upright_reference.png")).astype(np.float64)
    assert np.abs(read.data.astype(np.float64) - reference).mean() < 6
    assert read_image(folder / "exif_rotated.jpg").shape == (3, 160, 224)  # what predict reads, upright too
    masks = root.parent / "masks"
    masks.mkdir()
    (masks / "exif_rotated.png").write_bytes((folder / "upright_mask.png").read_bytes())
    assert _import(capsys, root, str(folder / "exif_rotated.jpg"), "--masks", str(masks))[0] == 0


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    folder = CASES / "cmyk_jpeg"
    read = _one(folder / "cmyk.jpg")
    assert (read.axes, read.shape, read.rgb) == ("YXC", (160, 224, 3), True)
    assert any("CMYK converted to RGB" in n for n in read.notes)
    reference = np.asarray(Image.open(folder / "rgb_reference.png")).astype(np.float64)
    assert np.abs(read.data.astype(np.float64) - reference).mean() < 4


def test_same_stem_files_both_read_and_broken_one_named(root: Path, capsys) -> None:
    folder = CASES / "same_stem"
    png, tif = _one(folder / "a.png"), _one(folder / "a.tif")
    assert (png.dtype, tif.dtype) == (np.uint8, np.uint16) and png.shape == tif.shape == (128, 128)
    with pytest.raises(DataError, match=r"broken\.tif.*truncated"):
        read_image_file(folder / "broken.tif")
    assert _import(capsys, root, str(folder / "a.png"), str(folder / "a.tif"))[0] == 0
    assert sorted(_images_json(capsys, root)) == ["a", "a-2"]  # neither replaces the other


def test_float64_beyond_float32_is_refused_naming_file_and_max(root: Path, capsys) -> None:
    folder = CASES / "float64_huge"
    rc, err = _import(capsys, root, str(folder / "huge.tif"))
    assert rc == 2 and "huge.tif" in err and "2.35e+300" in err and "32-bit" in err
    with Project.open(root) as proj, pytest.raises(DataError, match=r"2\.35e\+300"):
        proj.add_array(np.load(folder / "huge.npy"), "huge")
    with Project.open(root) as proj:
        assert proj.counts()["images"] == 0
    assert not any((root / "images").iterdir())


def test_rgba_grey_png_is_one_channel(root: Path, capsys) -> None:
    path = CASES / "rgba_grey_png" / "rgba_grey.png"
    read = _one(path)
    assert (read.axes, read.shape, read.dtype, read.rgb) == ("YX", (128, 160), np.uint8, False)
    np.testing.assert_array_equal(read.data, np.asarray(Image.open(path))[..., 0])
    assert _import(capsys, root, str(path))[0] == 0
    (record,) = _images_json(capsys, root).values()
    assert (record["axes"], record["shape"]) == ("YX", [128, 160])
