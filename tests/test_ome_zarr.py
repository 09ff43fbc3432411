"""OME-Zarr in and out: reading NGFF 0.3–0.5 metadata (multiscales, axes, labels), clear messages for bad
metadata, label images written band by band, `diffseg predict` / `import` on OME-Zarr, the napari reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")

from napari_diffseg.base.errors import DataError  # noqa: E402
from napari_diffseg.cli import main  # noqa: E402
from napari_diffseg.data.ome_zarr import is_ome_zarr, open_ome_zarr, read_ome_zarr  # noqa: E402
from napari_diffseg.data.ome_zarr_write import LabelsWriter, write_ome_zarr  # noqa: E402


def _rgb(h: int = 200, w: int = 260, seed: int = 0) -> np.ndarray:
    from napari_diffseg.data.synthetic import make_sample

    image, _mask = make_sample(seed, (h, w))
    arr = np.asarray(image)
    return np.moveaxis(arr, -1, 0) if arr.shape[-1] == 3 else arr


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_write_and_read_multiscale(tmp_path: Path, version: str) -> None:
    img = _rgb()
    path = write_ome_zarr(
        tmp_path / "a.ome.zarr",
        img,
        levels=3,
        chunk=64,
        version=version,
        pixel_size=(0.5, 0.5),
        unit="micrometer",
    )
    assert is_ome_zarr(path)
    meta_file = path / ("zarr.json" if version == "0.5" else ".zattrs")
    assert meta_file.is_file()
    z = open_ome_zarr(path)
    assert (z.version, z.zarr_format, z.axes) == (version, 3 if version == "0.5" else 2, ("c", "y", "x"))
    assert z.shapes == ((3, 200, 260), (3, 100, 130), (3, 50, 65))
    assert z.scales == ((0.5, 0.5), (1.0, 1.0), (2.0, 2.0)) and z.units == ("micrometer", "micrometer")
    assert (z.height, z.width, z.channels, z.dtype) == (200, 260, 3, np.uint8)
    np.testing.assert_array_equal(z.read(), img)
    np.testing.assert_array_equal(z.read(10, 90, 20, 33), img[:, 10:90, 20:33])
    np.testing.assert_array_equal(read_ome_zarr(path, level=1), img[:, ::2, ::2])
    np.testing.assert_array_equal(read_ome_zarr(path, region=(5, 6, 7, 8)), img[:, 5:12, 6:14])
    assert [y for y, _ in z.iter_rows()] == [0, 64, 128, 192]
    with pytest.raises(DataError, match="no level 3"):
        z.read(level=3)
    with pytest.raises(DataError, match="outside"):
        z.read(0, 201)


def _handmade(path: Path, attrs: dict, arrays: dict[str, np.ndarray], fmt: int = 2) -> Path:
    """An OME-Zarr written with plain zarr calls and metadata as another tool would write it."""
    group = zarr.open_group(path, mode="w", zarr_format=fmt)
    for name, data in arrays.items():
        a = group.create_array(name, shape=data.shape, chunks=data.shape, dtype=data.dtype)
        a[...] = data
    group.attrs.update(attrs)
    return path


def test_reads_5d_04_with_units_and_singleton_axes(tmp_path: Path) -> None:
    img = (np.arange(30 * 40) % 251).astype(np.uint16).reshape(1, 1, 1, 30, 40)
    axes = [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    ms = {
        "version": "0.4",
        "name": "cells",
        "axes": axes,
        "datasets": [
            {
                "path": "s0",
                "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.5, 0.25, 0.25]}],
            },
            {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.5, 0.5, 0.5]}]},
        ],
    }
    path = _handmade(tmp_path / "cells.zarr", {"multiscales": [ms]}, {"s0": img, "s1": img[..., ::2, ::2]})
    z = open_ome_zarr(path)
    assert z.axes == ("t", "c", "z", "y", "x") and z.levels == ("s0", "s1") and z.name == "cells"
    assert z.scales[0] == (0.25, 0.25) and z.channels == 1
    out = z.read()
    assert out.shape == (1, 30, 40) and out.dtype == np.uint16
    np.testing.assert_array_equal(out[0], img[0, 0, 0])


def test_reads_03_axes_names_and_05_on_zarr3(tmp_path: Path) -> None:
    grey = np.arange(20 * 24, dtype=np.uint8).reshape(20, 24)
    p3 = _handmade(
        tmp_path / "v03.zarr",
        {"multiscales": [{"version": "0.3", "axes": ["y", "x"], "datasets": [{"path": "0"}]}]},
        {"0": grey},
    )
    z = open_ome_zarr(p3)
    assert z.version == "0.3" and z.axes == ("y", "x")
    np.testing.assert_array_equal(z.read()[0], grey)
    ms = {
        "axes": [
            {"name": "c", "type": "channel"},
            {"name": "y", "type": "space"},
            {"name": "x", "type": "space"},
        ],
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}
        ],
    }
    rgba = np.zeros((4, 20, 24), np.uint8)
    rgba[1] = 9
    p5 = _handmade(
        tmp_path / "v05.zarr", {"ome": {"version": "0.5", "multiscales": [ms]}}, {"0": rgba}, fmt=3
    )
    z5 = open_ome_zarr(p5)
    assert (z5.version, z5.zarr_format, z5.channels) == ("0.5", 3, 3)
    assert z5.read().shape == (3, 20, 24) and z5.read()[1].max() == 9  # alpha dropped


@pytest.mark.parametrize(
    ("attrs", "arrays", "message"),
    [
        ({}, {"0": np.zeros((8, 8), np.uint8)}, "no OME-NGFF 'multiscales'"),
        (
            {"multiscales": [{"version": "0.6", "axes": ["y", "x"], "datasets": [{"path": "0"}]}]},
            {"0": np.zeros((8, 8), np.uint8)},
            "version '0.6'",
        ),
        (
            {"multiscales": [{"axes": ["y", "x"], "datasets": [{"path": "0"}]}]},
            {"0": np.zeros((8, 8), np.uint8)},
            "has no version",
        ),
        (
            {"multiscales": [{"version": "0.4", "axes": [{"name": "y"}, {"name": "x"}], "datasets": []}]},
            {},
            "no datasets",
        ),
        (
            {
                "multiscales": [
                    {"version": "0.4", "axes": [{"name": "y"}, {"name": "x"}], "datasets": [{"path": "9"}]}
                ]
            },
            {"0": np.zeros((8, 8), np.uint8)},
            "missing",
        ),
        (
            {
                "multiscales": [
                    {
                        "version": "0.4",
                        "axes": [{"name": "z"}, {"name": "y"}, {"name": "x"}],
                        "datasets": [{"path": "0"}],
                    }
                ]
            },
            {"0": np.zeros((5, 8, 8), np.uint8)},
            "5 planes",
        ),
        (
            {
                "multiscales": [
                    {
                        "version": "0.4",
                        "axes": [{"name": "c"}, {"name": "y"}, {"name": "x"}],
                        "datasets": [{"path": "0"}],
                    }
                ]
            },
            {"0": np.zeros((2, 8, 8), np.uint8)},
            "2 channels",
        ),
        (
            {
                "multiscales": [
                    {"version": "0.4", "axes": [{"name": "x"}, {"name": "y"}], "datasets": [{"path": "0"}]}
                ]
            },
            {"0": np.zeros((8, 8), np.uint8)},
            "last two axes are y and x",
        ),
        ({"plate": {"rows": []}}, {}, "plate"),
    ],
)
def test_bad_metadata_gets_a_clear_message(tmp_path: Path, attrs, arrays, message) -> None:
    path = _handmade(tmp_path / "bad.zarr", attrs, arrays)
    with pytest.raises(DataError, match=message) as info:
        open_ome_zarr(path)
    assert str(path) in str(info.value)


def test_not_a_zarr_group(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "x.zarr"
    folder.mkdir()
    (folder / ".zattrs").write_text("not json")
    assert is_ome_zarr(folder)
    with pytest.raises(DataError, match="not a Zarr group"):
        open_ome_zarr(folder)
    v3 = _handmade(tmp_path / "plain3.zarr", {"written_by": "something"}, {}, fmt=3)
    with pytest.raises(DataError, match="'ome' attributes"):
        open_ome_zarr(v3)


# ------------------------------------------------------------------------------------------------ labels


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_labels_written_in_bands_with_a_pyramid(tmp_path: Path, version: str) -> None:
    img = _rgb(150, 210)
    path = write_ome_zarr(tmp_path / "a.zarr", img, levels=3, chunk=64, version=version)
    z = open_ome_zarr(path)
    labels = (np.arange(150)[:, None] + np.arange(210)[None, :]) % 3
    writer = LabelsWriter(z, "diffseg", num_classes=3)
    for y0 in range(0, 150, 64):
        writer.write(y0, labels[y0 : y0 + 64])
    assert open_ome_zarr(path).labels == ()  # not listed before close: never seen half written
    out = writer.close()
    assert out == path / "labels" / "diffseg"
    assert open_ome_zarr(path).labels == ("diffseg",)
    lab = open_ome_zarr(out)
    assert lab.version == version and lab.shapes == ((1, 150, 210), (1, 75, 105), (1, 38, 53))
    np.testing.assert_array_equal(lab.read()[0], labels)
    np.testing.assert_array_equal(lab.read(level=2)[0], labels[::4, ::4])
    attrs = dict(zarr.open_group(out, mode="r").attrs)
    meta = attrs["ome"] if version == "0.5" else attrs
    assert meta["image-label"]["source"] == {"image": "../../"}
    assert [c["label-value"] for c in meta["image-label"]["colors"]] == [1, 2]
    with pytest.raises(DataError, match="already has a label image 'diffseg'"):
        LabelsWriter(z, "diffseg", 3)
    again = LabelsWriter(open_ome_zarr(path), "diffseg", 2, overwrite=True)
    again.write(0, np.zeros((150, 210), np.uint8))
    again.close()
    assert open_ome_zarr(path).labels == ("diffseg",)
    assert not open_ome_zarr(out).read().any()


# ------------------------------------------------------------------------------------------------ predict


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny-preset model folder (predict's numbers do not depend on training)."""
    from napari_diffseg.base.presets import get_preset
    from napari_diffseg.core.models import ModelBundle, ModelSpec, save_bundle

    pr = get_preset("tiny")
    bundle = ModelBundle(
        ModelSpec("diffseg", 3, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim), seed=2
    )
    return save_bundle(bundle, tmp_path_factory.mktemp("m") / "model", extra={"preset": pr.to_dict()})


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_predict_ome_zarr_tile_by_tile_equals_in_memory(
    tmp_path: Path, model: Path, monkeypatch, capsys, version
) -> None:
    import napari_diffseg.core.tiled as tiled_mod
    import napari_diffseg.predict as predict_mod
    from napari_diffseg.predict import load_model, predict_image

    monkeypatch.setattr(predict_mod, "IN_MEMORY_PIXELS", 1000)  # force the tiled path on a small image
    tiled_calls: list[int] = []
    real_rows = tiled_mod.predict_rows

    def counting(*args, **kwargs):
        tiled_calls.append(1)
        return real_rows(*args, **kwargs)

    monkeypatch.setattr(tiled_mod, "predict_rows", counting)
    img = _rgb(230, 300, seed=4)
    src = write_ome_zarr(tmp_path / "slide.ome.zarr", img, levels=2, chunk=64, version=version)
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    rc, out, err = _run(
        capsys, "predict", str(model), str(src), "--out", str(tmp_path / "out"), "--probabilities", "-q"
    )
    assert rc == 0, err
    copy = tmp_path / "out" / "slide.ome.zarr"
    assert tiled_calls == [1]
    assert str(copy / "labels" / "diffseg") in out
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before  # the input is untouched
    bundle, config = load_model(model, "cpu")
    ref = predict_image(bundle, config, img)
    labels = open_ome_zarr(copy / "labels" / "diffseg")
    np.testing.assert_array_equal(labels.read()[0], ref.argmax(0))
    assert len(labels.levels) == 2 and labels.version == version
    probs = open_ome_zarr(tmp_path / "out" / "slide_probabilities.ome.zarr")
    np.testing.assert_allclose(probs.read()[0], ref[1], atol=1e-5)
    np.testing.assert_array_equal(open_ome_zarr(copy).read(), img)  # the copy holds the image

    # again: refused without --overwrite; --into-source writes beside the image in the input itself
    rc, _, err = _run(capsys, "predict", str(model), str(src), "--out", str(tmp_path / "out"), "-q")
    assert rc == 2 and "--overwrite" in err
    rc, out, err = _run(
        capsys,
        "predict",
        str(model),
        str(src),
        "--out",
        str(tmp_path / "o2"),
        "--into-source",
        "--labels-name",
        "cells",
        "-q",
    )
    assert rc == 0, err
    assert open_ome_zarr(src).labels == ("cells",)
    np.testing.assert_array_equal(open_ome_zarr(src / "labels" / "cells").read()[0], ref.argmax(0))


def test_a_model_that_deploys_its_teacher_says_so_when_a_slide_is_predicted_tile_by_tile(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """deploy_best's teacher samples whole images; a slide too large for memory goes row by row through the
    students, and the outcome says so (in memory, the teacher predicts as ``predict_image`` does)."""
    import napari_diffseg.predict as predict_mod
    from napari_diffseg.base.presets import get_preset
    from napari_diffseg.core.models import ModelBundle, ModelSpec, save_bundle
    from napari_diffseg.core.training import teacher_check_config
    from napari_diffseg.predict import load_model, predict_image

    pr = get_preset("tiny")
    bundle = ModelBundle(
        ModelSpec("diffseg", 3, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim), seed=2
    )
    bundle.teacher_sampler = teacher_check_config(pr)
    model = save_bundle(bundle, tmp_path / "model", extra={"preset": pr.to_dict()})
    img = _rgb(100, 140, seed=5)
    src = write_ome_zarr(tmp_path / "slide.ome.zarr", img, levels=1, chunk=64)
    rc, _, err = _run(capsys, "predict", str(model), str(src), "--out", str(tmp_path / "mem"), "-q")
    assert rc == 0, err
    assert "deploys its teacher" not in err
    b, config = load_model(model, "cpu")
    got = open_ome_zarr(tmp_path / "mem" / "slide.ome.zarr" / "labels" / "diffseg").read()[0]
    np.testing.assert_array_equal(got, predict_image(b, config, img).argmax(0))  # the teacher's labels
    monkeypatch.setattr(predict_mod, "IN_MEMORY_PIXELS", 1000)  # force the tiled path
    rc, _, err = _run(capsys, "predict", str(model), str(src), "--out", str(tmp_path / "rows"), "-q")
    assert rc == 0, err
    assert "this model deploys its teacher" in err and "row by row with its students" in err
    b.teacher_sampler = None
    rows = open_ome_zarr(tmp_path / "rows" / "slide.ome.zarr" / "labels" / "diffseg").read()[0]
    np.testing.assert_array_equal(rows, predict_image(b, config, img).argmax(0))  # the students' labels


def test_predict_refuses_bad_ome_zarr_with_one_line(tmp_path: Path, model: Path, capsys) -> None:
    bad = _handmade(
        tmp_path / "bad.zarr",
        {"multiscales": [{"version": "9.9", "axes": ["y", "x"], "datasets": [{"path": "0"}]}]},
        {"0": np.zeros((8, 8), np.uint8)},
    )
    rc, _, err = _run(capsys, "predict", str(model), str(bad), "--out", str(tmp_path / "o"))
    assert rc == 2 and "version '9.9'" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------------------------ import


def test_import_level_and_region(tmp_path: Path, capsys, monkeypatch) -> None:
    from napari_diffseg.project import Project

    img = _rgb(200, 260, seed=1)
    src = write_ome_zarr(tmp_path / "slide.zarr", img, levels=2, chunk=64)
    proj = tmp_path / "proj"
    assert main(["init", str(proj)]) == 0
    rc, out, err = _run(capsys, "import", str(proj), str(src), "--region", "10,20,64,80", "--json")
    assert rc == 0, err
    rc, out, err = _run(capsys, "import", str(proj), str(src), "--level", "1", "--split", "val", "--json")
    assert rc == 0, err and len(json.loads(out)["added"]) == 1
    with Project.open(proj) as p:
        recs = {r.name: r for r in p.images()}
        assert set(recs) == {"slide_y10_x20_64x80", "slide_L1"}
        np.testing.assert_array_equal(p.load_image(recs["slide_y10_x20_64x80"].id), img[:, 10:74, 20:100])
        np.testing.assert_array_equal(p.load_image(recs["slide_L1"].id), img[:, ::2, ::2])
        assert recs["slide_L1"].split == "val" and recs["slide_L1"].source.startswith("ome-zarr:")
    import napari_diffseg.data.io as io_mod

    monkeypatch.setattr(io_mod, "DEFAULT_MAX_PIXELS", 5000)
    rc, _, err = _run(capsys, "import", str(proj), str(src))
    assert rc == 2 and "--region" in err and "--level" in err and "diffseg predict" in err
    rc, _, err = _run(capsys, "import", str(proj), str(src), "--region", "1,2,3")
    assert rc == 2 and "Y,X,HEIGHT,WIDTH" in err


# ------------------------------------------------------------------------------------------------ reader


def test_napari_reader_opens_ome_zarr_lazily_with_labels(tmp_path: Path) -> None:
    import dask.array as da

    from napari_diffseg._reader import get_reader, read_ome_zarr

    img = _rgb(128, 192)
    path = write_ome_zarr(tmp_path / "s.ome.zarr", img, levels=3, chunk=64, pixel_size=(0.5, 0.5))
    w = LabelsWriter(open_ome_zarr(path), "diffseg", 2)
    w.write(0, (img[0] > 128).astype(np.uint8))
    w.close()
    assert get_reader(str(path)) is read_ome_zarr
    layers = get_reader([str(path)])(str(path))
    (data, meta, kind), (ldata, lmeta, lkind) = layers
    assert kind == "image" and lkind == "labels" and meta["rgb"] and meta["multiscale"]
    assert [d.shape for d in data] == [(128, 192, 3), (64, 96, 3), (32, 48, 3)]
    assert all(isinstance(d, da.Array) for d in data + ldata)
    assert [d.shape for d in ldata] == [(128, 192), (64, 96), (32, 48)]
    assert tuple(meta["scale"]) == (0.5, 0.5) and lmeta["metadata"]["labels"] == "diffseg"
    np.testing.assert_array_equal(np.asarray(data[1]), np.moveaxis(img[:, ::2, ::2], 0, -1))
    assert get_reader(str(tmp_path)) is None


def test_reading_an_ome_zarr_in_napari_loads_no_torch(tmp_path: Path) -> None:
    """napari's process must stay free of torch: the reader opens an OME-Zarr with zarr and dask only."""
    import subprocess
    import sys

    path = write_ome_zarr(tmp_path / "s.zarr", _rgb(64, 64), levels=2, chunk=32)
    code = (
        "import sys\n"
        "from napari_diffseg._reader import get_reader\n"
        f"layers = get_reader({str(path)!r})({str(path)!r})\n"
        "assert layers and layers[0][2] == 'image'\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'monai')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def test_predict_never_replaces_its_source(tmp_path: Path, model: Path, capsys) -> None:
    src = write_ome_zarr(tmp_path / "slide.ome.zarr", _rgb(40, 50), levels=1)
    rc, _, err = _run(capsys, "predict", str(model), str(src), "--out", str(tmp_path), "--overwrite", "-q")
    assert rc == 2 and "would replace it" in err
    assert open_ome_zarr(src).labels == () and open_ome_zarr(src).read().shape == (3, 40, 50)
    old = _handmade(
        tmp_path / "v03.zarr",
        {"multiscales": [{"version": "0.3", "axes": ["c", "y", "x"], "datasets": [{"path": "0"}]}]},
        {"0": _rgb(40, 50)},
    )
    rc, _, err = _run(
        capsys, "predict", str(model), str(old), "--out", str(tmp_path / "o"), "--into-source", "-q"
    )
    assert rc == 2 and "into a copy" in err
    rc, _out, err = _run(capsys, "predict", str(model), str(old), "--out", str(tmp_path / "o"), "-q")
    assert rc == 0, err
    copy = open_ome_zarr(tmp_path / "o" / "v03.ome.zarr")
    assert copy.version == "0.4" and copy.labels == ("diffseg",)
