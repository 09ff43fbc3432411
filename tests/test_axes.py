"""Axes, channels and time-lapses (issue 12): the reader's rules, --axes, a project's fixed channel count,
the schema migration that gives old images their axes, and training on a 2-channel project."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_diffseg.base.errors import DataError
from napari_diffseg.base.formats import tiff_bytes
from napari_diffseg.cli import main
from napari_diffseg.data.imagefile import to_zchw
from napari_diffseg.data.io import check_axes, read_image_file, split_frames, to_chw
from napari_diffseg.project import Project
from napari_diffseg.project._util import content_id
from napari_diffseg.project.schema import SCHEMA_VERSION, apply_migrations, bootstrap


def _blobs(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, (n, *shape), dtype=np.uint16)


# ------------------------------------------------------------------------------------------ reading


def test_check_axes_accepts_ome_letters_only() -> None:
    assert check_axes("zyx") == "ZYX"
    for bad in ("ZZYX", "QYX", "ZY", "", "CYXS"):
        with pytest.raises(DataError, match="axes"):
            check_axes(bad)


def test_plain_tiff_rules_and_override(tmp_path: Path) -> None:
    two = tmp_path / "two.tif"
    tifffile.imwrite(two, _blobs(2, (32, 40)), photometric="minisblack", metadata=None)
    (read,) = read_image_file(two)
    assert (read.axes, read.shape, read.ambiguous) == ("CYX", (2, 32, 40), True)
    assert "taken as 2 channels (CYX)" in read.notes[0]
    (z,) = read_image_file(two, axes="ZYX")
    assert (z.axes, z.ambiguous, z.notes) == ("ZYX", False, ("axes ZYX as given",))
    with pytest.raises(DataError, match=r"one letter per dimension"):
        read_image_file(two, axes="TZYX")
    with pytest.raises(DataError, match=r"z-stack \(axes ZYX"):
        to_chw(z)
    assert to_zchw(z).shape == (2, 1, 32, 40)  # a z-stack is (Z, C, Y, X), planes kept in order
    frames = split_frames(read_image_file(two, axes="TYX")[0])
    assert [f.name for f in frames] == ["two-t000", "two-t001"] and frames[1].axes == "YX"
    # ImageJ hyperstack TCYX: axes from the metadata, never guessed
    hyper = tmp_path / "hyper.tif"
    tifffile.imwrite(hyper, _blobs(6, (32, 40)).reshape(3, 2, 32, 40), imagej=True, metadata={"axes": "TCYX"})
    (h,) = read_image_file(hyper)
    assert (h.axes, h.shape) == ("TCYX", (3, 2, 32, 40))
    assert [f.axes for f in split_frames(h)] == ["CYX"] * 3
    # four channels stored last without photometric RGB: channels, never alpha-dropped
    last = tmp_path / "last.tif"
    tifffile.imwrite(last, _blobs(1, (32, 40, 4))[0], photometric="minisblack", planarconfig="contig")
    (c4,) = read_image_file(last)
    assert c4.channels == 4 and to_chw(c4).shape == (4, 32, 40)


def test_rgba_png_with_colour_keeps_rgb_and_drops_alpha(tmp_path: Path) -> None:
    from PIL import Image

    rgba = np.zeros((16, 20, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    (read,) = read_image_file(tmp_path / "c.png")
    assert (read.axes, read.shape, read.rgb) == ("YXC", (16, 20, 3), True)


# ------------------------------------------------------------------------------------------ import


def test_axes_override_on_cli_import_and_init(tmp_path: Path, capsys) -> None:
    stack = tmp_path / "files" / "stack.tif"
    stack.parent.mkdir()
    tifffile.imwrite(stack, _blobs(6, (32, 40)), photometric="minisblack", metadata=None)
    root = tmp_path / "p"
    assert main(["init", str(root), "--images", str(stack.parent), "--axes", "CYX"]) == 0
    assert "axes CYX as given" in capsys.readouterr().err
    assert main(["images", str(root), "--json"]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    assert (rec["axes"], rec["shape"]) == ("CYX", [6, 32, 40])
    # a different channel count is refused, naming both counts; nothing changes
    before = sorted(p.name for p in (root / "images").iterdir())
    assert main(["import", str(root), str(stack), "--axes", "TYX"]) == 2
    err = capsys.readouterr().err
    assert "1 channel(s)" in err and "have 6" in err
    assert sorted(p.name for p in (root / "images").iterdir()) == before
    assert main(["import", str(root), str(stack), "--axes", "QYX"]) == 2
    assert "not a valid axes string" in capsys.readouterr().err
    # a z-stack is one 3D image, its axes and shape as read; --axes TYX makes it six images instead
    fresh = tmp_path / "q"
    assert main(["init", str(fresh)]) == 0
    assert main(["import", str(fresh), str(stack)]) == 0
    assert "taken as Z (ZYX)" in capsys.readouterr().err
    assert main(["images", str(fresh), "--json"]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    assert (rec["axes"], rec["shape"], rec["plane"]) == ("ZYX", [6, 32, 40], None)
    fresh = tmp_path / "r"
    assert main(["init", str(fresh)]) == 0
    assert main(["import", str(fresh), str(stack), "--axes", "TYX"]) == 0
    capsys.readouterr()
    assert main(["images", str(fresh), "--json"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert names == [f"stack-t00{i}" for i in range(6)]


def test_channel_count_fixed_at_first_import(tmp_path: Path) -> None:
    with Project.create(tmp_path / "p") as proj:
        assert proj.channel_count() is None
        proj.import_array(_blobs(2, (32, 40)), "two", axes="CYX")
        assert proj.channel_count() == 2
        with pytest.raises(DataError, match=r"4 channel\(s\) but this project's images have 2"):
            proj.import_array(_blobs(4, (32, 40), seed=1), "four")
        with pytest.raises(DataError, match=r"1 channel\(s\) but this project's images have 2"):
            proj.import_array(_blobs(1, (32, 40), seed=1)[0], "grey")
        assert [r.name for r in proj.images()] == ["two"]
        rec = proj.image("two")
        assert (rec.axes, rec.shape, rec.channels) == ("CYX", (2, 32, 40), 2)
    # grey and RGB keep mixing as before
    with Project.create(tmp_path / "g") as proj:
        proj.import_array(np.zeros((32, 40), np.uint8), "grey")
        proj.import_array(np.full((32, 40, 3), 7, np.uint8), "rgb")
        assert proj.channel_count() == 3
        assert proj.image("rgb").axes == "YXC" and proj.image("rgb").shape == (32, 40, 3)
        chw = proj.import_array(np.full((3, 32, 40), 9, np.uint8), "chw")  # (3, Y, X) is colour, as before
        assert proj.image(chw).axes == "YXC"
        cyx = proj.import_array(np.full((3, 32, 40), 8, np.uint8), "cyx", axes="CYX")
        assert (proj.image(cyx).axes, proj.image(cyx).shape) == ("CYX", (3, 32, 40))
        with pytest.raises(DataError, match="time points"):
            proj.import_array(_blobs(3, (32, 40)), "movie", axes="TYX")


def test_migration_gives_old_images_axes_and_shape(tmp_path: Path) -> None:
    root = tmp_path / "old"
    for sub in ("images", "annotations", "proposals", "models", "jobs"):
        (root / sub).mkdir(parents=True)
    con = sqlite3.connect(root / "project.db", isolation_level=None)
    bootstrap(con, 0.0)
    assert apply_migrations(con, target=2) == 2
    rows = []
    for name, arr in (
        ("grey", np.zeros((1, 32, 40), np.uint8)),
        ("rgb", np.ones((3, 32, 40), np.uint8)),
        ("four", np.full((4, 32, 40), 2, np.uint16)),
    ):
        data = tiff_bytes(arr)
        image_id = content_id(arr)
        (root / "images" / f"{image_id}.tif").write_bytes(data)
        import hashlib

        con.execute(
            "INSERT INTO images (id, name, height, width, channels, dtype, file_sha256, created_at) "
            "VALUES (?, ?, 32, 40, ?, ?, ?, 0)",
            (image_id, name, arr.shape[0], arr.dtype.name, hashlib.sha256(data).hexdigest()),
        )
        rows.append(image_id)
    con.close()
    with Project.open(root) as proj:
        assert proj.schema_version == SCHEMA_VERSION
        got = {r.name: (r.axes, r.shape, r.channel_names) for r in proj.images()}
        assert got == {
            "grey": ("YX", (32, 40), ()),
            "rgb": ("YXC", (32, 40, 3), ()),
            "four": ("CYX", (4, 32, 40), ()),
        }
        assert proj.check()["ok"]


# ------------------------------------------------------------------------------------------ training


def test_two_channel_project_pretrains_cotrains_proposes_and_predicts(tmp_path: Path) -> None:
    from napari_diffseg.backend.jobs import execute_job, start_job
    from napari_diffseg.core.models import load_bundle
    from napari_diffseg.data.synthetic import make_sample
    from napari_diffseg.predict import predict_image

    root = tmp_path / "p2"
    with Project.create(root) as proj:
        for i in range(4):
            img, mask = make_sample(i, (32, 32))
            grey = np.asarray(img, np.float32).mean(axis=-1) if np.ndim(img) == 3 else np.asarray(img)
            two = np.stack([grey, grey[::-1]]).astype(np.float32)
            proj.import_array(two, f"im{i}", mask=mask if i < 2 else None, axes="CYX")
        assert proj.channel_count() == 2
    for kind, params in (("pretrain", {}), ("cotrain", {}), ("propose", {})):
        with Project.open(root) as proj:
            job = start_job(proj, kind, {"preset": "tiny", **params})
        assert execute_job(root, job) == "done", kind
    with Project.open(root) as proj:
        model = proj.active_model()
        assert model is not None
        bundle, config, _ = load_bundle(proj.model_dir(model.id))
        assert bundle.spec.in_channels == 2
        assert any(r.state == "proposed" for r in proj.images())
        pixels = proj.load_image("im0")
        probs = predict_image(bundle, config, pixels)
    assert probs.shape == (2, 32, 32) and np.allclose(probs.sum(axis=0), 1, atol=1e-4)
    # diffseg predict on a 2-channel ImageJ TIFF
    tif = tmp_path / "two.tif"
    tifffile.imwrite(tif, pixels, imagej=True, metadata={"axes": "CYX"})
    assert main(["predict", str(root), str(tif), "--out", str(tmp_path / "out")]) == 0
    from napari_diffseg.data.io import read_mask

    (mask,) = [read_mask(p) for p in (tmp_path / "out").iterdir() if "overlay" not in p.name]
    assert mask.shape == (32, 32)


# ------------------------------------------------------------------------------------------ upload


def test_upload_takes_axes_with_the_rules_and_limits_of_import(tmp_path: Path) -> None:
    import io

    from fastapi.testclient import TestClient

    from napari_diffseg.backend.app import create_app
    from napari_diffseg.backend.client import DiffsegClient

    Project.create(tmp_path / "p").close()
    plain = io.BytesIO()
    tifffile.imwrite(plain, _blobs(2, (32, 40)), photometric="minisblack", metadata=None)
    tiff = {"Content-Type": "image/tiff"}
    with TestClient(create_app(tmp_path / "p", run_jobs=False), base_url="http://127.0.0.1") as http:
        url = "/api/v1/images"
        # (an upload with axes ZYX is a z-stack, accepted: tests/test_zstack.py)
        r = http.post(url, params={"name": "t", "axes": "TYX"}, content=plain.getvalue(), headers=tiff)
        assert r.status_code == 422 and "2 time points" in r.json()["detail"]
        r = http.post(url, params={"name": "q", "axes": "QYX"}, content=plain.getvalue(), headers=tiff)
        assert r.status_code == 422 and "not a valid axes string" in r.json()["detail"]
        huge = io.BytesIO()
        np.save(huge, np.full((32, 40), 2.35e300))
        npy = {"Content-Type": "application/x-npy"}
        r = http.post(url, params={"name": "huge"}, content=huge.getvalue(), headers=npy)
        assert r.status_code == 422 and "2.35e+300" in r.json()["detail"]
        assert http.get(url).json() == []  # nothing saved by any refusal
        r = http.post(url, params={"name": "two"}, content=plain.getvalue(), headers=tiff)
        assert r.status_code == 201
        image = r.json()["image"]
        assert (image["axes"], image["shape"], image["channels"]) == ("CYX", [2, 32, 40], 2)
        # the client sends axes too; a 5-channel array is refused in this 2-channel project, naming both
        client = DiffsegClient("http://127.0.0.1")
        client._http = TestClient(http.app, base_url="http://127.0.0.1/api/v1")
        with pytest.raises(Exception, match=r"5 channel\(s\) but this project's images have 2"):
            client.upload_image(_blobs(5, (32, 40)), name="five", axes="CYX")
        up = client.upload_image(_blobs(2, (32, 40), seed=3), name="two-b", axes="CYX")
        assert up.added and up.image.axes == "CYX" and up.image.shape == [2, 32, 40]


def test_unmappable_and_too_large_files_get_one_clear_message(tmp_path: Path, capsys) -> None:
    five = tmp_path / "five.tif"
    tifffile.imwrite(five, _blobs(12, (32, 40)).reshape(2, 3, 2, 32, 40), photometric="minisblack")
    with pytest.raises(DataError, match=r"5 dimensions and no axis metadata.*--axes"):
        read_image_file(five)
    (read,) = read_image_file(five, axes="TZCYX")
    assert read.axes == "TZCYX" and [f.axes for f in split_frames(read)] == ["ZCYX", "ZCYX"]
    big = tmp_path / "big.tif"
    tifffile.imwrite(big, _blobs(20, (32, 40)), photometric="minisblack", metadata=None)
    with pytest.raises(DataError, match=r"more than the limit"):
        read_image_file(big, max_pixels=64)
    root = tmp_path / "p"
    assert main(["init", str(root)]) == 0
    assert main(["import", str(root), str(five)]) == 2
    assert "--axes" in capsys.readouterr().err


def test_experiment_on_a_two_channel_dataset(tmp_path: Path) -> None:
    from napari_diffseg.data.synthetic import make_sample

    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    (ds / "split.csv").write_text(
        "id,split\n" + "".join(f"n{i},{'test' if i >= 4 else 'train'}\n" for i in range(6))
    )
    for i in range(6):
        img, mask = make_sample(i, (32, 32), kind="nuclei")
        grey = img.mean(axis=-1).astype(np.uint8)
        tifffile.imwrite(
            ds / "images" / f"n{i}.tif", np.stack([grey, 255 - grey]), imagej=True, metadata={"axes": "CYX"}
        )
        tifffile.imwrite(ds / "masks" / f"n{i}.tif", mask)
    out = tmp_path / "r.json"
    args = ["experiment", str(ds), "--labeled-fraction", "0.5", "--method", "supervised", "--preset", "tiny"]
    assert main([*args, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["test"]["n"] == 2


# ------------------------------------------------------------------------------------------ napari layers


@pytest.mark.parametrize(
    ("shape", "rgb", "choice", "channels", "axes"),
    [
        ((30, 40), False, None, None, "YX"),
        ((30, 40, 3), True, None, None, "YXC"),
        ((6, 30, 40), False, None, None, "ZYX"),
        ((6, 30, 40), False, None, 3, None),  # a grey stack in a project of 3 fluorescence channels
        ((1, 30, 40), False, None, None, "YX"),  # a leading axis of one: a 2D image
        ((1, 6, 30, 40), False, None, None, "ZYX"),
        ((4, 24, 28, 3), True, None, None, "ZYXC"),
        ((2, 30, 40), False, "CYX", 2, "CYX"),
        ((5, 30, 40), False, "TYX", None, "TYX"),
        ((2, 6, 30, 40), False, None, None, None),
        ((2, 4, 24, 28, 3), True, None, None, None),
        ((6, 30, 40), False, "YX", None, None),  # the axes choice names 2 axes, the layer has 3
    ],
)
def test_layer_axes(shape, rgb, choice, channels, axes) -> None:
    """The axes "Import selected layers" uploads a layer with (issue 12): 2D grey or RGB, 3D a z-stack
    unless the axes box says otherwise; 4D refused with what to do instead."""
    from napari_diffseg._layers import layer_axes

    if axes is not None:
        assert layer_axes(shape, rgb, "x", choice, channels) == axes
        return
    with pytest.raises(ValueError, match=r"Import files|CYX|axes choice|single-channel") as info:
        layer_axes(shape, rgb, "x", choice, channels)
    if len(shape) - rgb >= 4:
        assert "a layer imports as" in str(info.value) and "--axes" in str(info.value)
