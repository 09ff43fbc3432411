"""Tests for napari_diffseg.data: I/O, dataset folders, patches, jitter and synthetic samples."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from napari_diffseg.base.errors import ConfigError, DataError
from napari_diffseg.data.dataset import DatasetFolder
from napari_diffseg.data.io import (
    atomic_write_bytes,
    match_channels,
    normalize_image,
    read_image,
    read_image_shape,
    read_mask,
    write_mask,
    write_tiff,
)
from napari_diffseg.data.patches import intensity_jitter, sample_patches
from napari_diffseg.data.synthetic import make_sample, make_sample_dataset

RNG = np.random.default_rng(1234)


def _rgb(h: int = 20, w: int = 30) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_bytes(arr: np.ndarray) -> bytes:
    return iio.imwrite("<bytes>", arr, extension=".png")


def _write_png(path: Path, arr: np.ndarray) -> Path:
    path.write_bytes(_png_bytes(arr))
    return path


def _write_tif(path: Path, arr: np.ndarray) -> Path:
    tifffile.imwrite(path, arr, photometric="minisblack")
    return path


# --------------------------------------------------------------------------------------------------------
# read_image: bad files
# --------------------------------------------------------------------------------------------------------


def _missing(tmp: Path) -> Path:
    return tmp / "missing_image.png"


def _empty(tmp: Path) -> Path:
    p = tmp / "empty_image.png"
    p.write_bytes(b"")
    return p


def _truncated_png(tmp: Path) -> Path:
    p = tmp / "truncated_image.png"
    data = _png_bytes(_rgb(64, 64))
    p.write_bytes(data[: len(data) // 2])
    return p


def _garbage_png(tmp: Path) -> Path:
    p = tmp / "garbage_image.png"
    p.write_bytes(b"this is not a png at all" * 10)
    return p


def _truncated_tif(tmp: Path) -> Path:
    p = tmp / "truncated_image.tif"
    _write_tif(tmp / "whole.tif", _rgb(64, 64)[..., 0])
    data = (tmp / "whole.tif").read_bytes()
    p.write_bytes(data[:100])
    return p


def _truncated_tif_data(tmp: Path) -> Path:
    p = tmp / "cut_data_image.tif"
    _write_tif(tmp / "whole.tif", _rgb(64, 64)[..., 0])
    data = (tmp / "whole.tif").read_bytes()
    p.write_bytes(data[: int(len(data) * 0.9)])
    return p


def _truncated_jpeg(tmp: Path) -> Path:
    p = tmp / "truncated_image.jpg"
    data = iio.imwrite("<bytes>", _rgb(64, 64), extension=".jpg")
    p.write_bytes(data[: int(len(data) * 0.6)])
    return p


def _gif(tmp: Path) -> Path:
    p = tmp / "wrong_ext_image.gif"
    p.write_bytes(b"GIF89a....")
    return p


def _stack(tmp: Path) -> Path:
    return _write_tif(tmp / "stack_image.tif", np.zeros((10, 32, 32), np.uint8))


def _four_d(tmp: Path) -> Path:
    return _write_tif(tmp / "fourd_image.tif", np.zeros((2, 3, 32, 32), np.uint8))


def _nan(tmp: Path) -> Path:
    a = np.ones((16, 16), np.float32)
    a[3, 4] = np.nan
    return _write_tif(tmp / "nan_image.tif", a)


def _inf(tmp: Path) -> Path:
    a = np.ones((16, 16), np.float32)
    a[0, 0] = np.inf
    return _write_tif(tmp / "inf_image.tif", a)


def _tiny(tmp: Path) -> Path:
    return _write_png(tmp / "tiny_image.png", np.zeros((5, 40), np.uint8))


def _two_channel(tmp: Path) -> Path:
    return _write_png(tmp / "two_channel_image.png", np.zeros((16, 16, 2), np.uint8))


def _directory(tmp: Path) -> Path:
    p = tmp / "folder_image.png"
    p.mkdir()
    return p


BAD_IMAGES: dict[str, Callable[[Path], Path]] = {
    "missing": _missing,
    "empty": _empty,
    "truncated_png": _truncated_png,
    "garbage_png": _garbage_png,
    "truncated_tif": _truncated_tif,
    "truncated_tif_data": _truncated_tif_data,
    "truncated_jpeg": _truncated_jpeg,
    "unsupported_extension": _gif,
    "3d_stack": _stack,
    "4d": _four_d,
    "nan": _nan,
    "inf": _inf,
    "too_small": _tiny,
    "directory": _directory,
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_raises_data_error_naming_file(tmp_path: Path, case: str) -> None:
    path = BAD_IMAGES[case](tmp_path)
    with pytest.raises(DataError) as info:
        read_image(path)
    assert path.name in str(info.value)


def test_grey_alpha_png_is_one_channel(tmp_path: Path) -> None:
    """A two-channel PNG is grey + alpha (mode LA): the alpha is dropped (issue 12)."""
    assert read_image(_two_channel(tmp_path)).shape == (1, 16, 16)


def test_bad_file_errors_chain_the_reader_exception(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_image(_truncated_png(tmp_path))
    assert info.value.__cause__ is not None


def test_specific_messages(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_image(_missing(tmp_path))
    with pytest.raises(DataError, match="empty"):
        read_image(_empty(tmp_path))
    with pytest.raises(DataError, match="stack"):
        read_image(_stack(tmp_path))
    with pytest.raises(DataError, match="NaN"):
        read_image(_nan(tmp_path))
    with pytest.raises(DataError, match="extension"):
        read_image(_gif(tmp_path))


def test_max_pixels(tmp_path: Path) -> None:
    path = _write_png(tmp_path / "big_image.png", np.zeros((64, 64), np.uint8))
    assert read_image(path).shape == (1, 64, 64)
    with pytest.raises(DataError, match=r"big_image\.png") as info:
        read_image(path, max_pixels=64 * 64 - 1)
    assert "limit" in str(info.value)


# --------------------------------------------------------------------------------------------------------
# read_image: layouts and dtypes
# --------------------------------------------------------------------------------------------------------


def test_tiff_cyx_and_yxc_give_the_same_array(tmp_path: Path) -> None:
    yxc = _rgb(24, 40)
    a = read_image(_write_tif(tmp_path / "yxc.tif", yxc))
    b = read_image(_write_tif(tmp_path / "cyx.tif", np.moveaxis(yxc, -1, 0).copy()))
    assert a.shape == b.shape == (3, 24, 40)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, np.moveaxis(yxc, -1, 0).astype(np.float32))


def test_png_rgb_and_tiff_agree(tmp_path: Path) -> None:
    yxc = _rgb(24, 40)
    np.testing.assert_array_equal(
        read_image(_write_png(tmp_path / "a.png", yxc)), read_image(_write_tif(tmp_path / "a.tif", yxc))
    )


def test_grey_rgba_and_singleton_axes(tmp_path: Path) -> None:
    grey = _rgb(20, 30)[..., 0]
    assert read_image(_write_png(tmp_path / "g.png", grey)).shape == (1, 20, 30)
    rgba = np.concatenate([_rgb(20, 30), np.full((20, 30, 1), 255, np.uint8)], -1)
    out = read_image(_write_png(tmp_path / "rgba.png", rgba))
    np.testing.assert_array_equal(out, np.moveaxis(rgba[..., :3], -1, 0))
    rgba_tif = tmp_path / "rgba.tif"
    tifffile.imwrite(rgba_tif, rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(read_image(rgba_tif), out)  # a TIFF that says RGBA: alpha dropped
    # four planes without axis metadata are four channels, never RGB + alpha (issue 12)
    cyx4 = np.moveaxis(rgba, -1, 0).copy()
    np.testing.assert_array_equal(
        read_image(_write_tif(tmp_path / "cyx4.tif", cyx4)), cyx4.astype(np.float32)
    )
    # ImageJ-style leading singleton axes are dropped
    assert read_image(_write_tif(tmp_path / "tzc.tif", grey[None, None])).shape == (1, 20, 30)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_images_keep_their_values(tmp_path: Path, ext: str) -> None:
    a = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
    a[0, 0] = 65535
    path = tmp_path / f"img16{ext}"
    _write_png(path, a) if ext == ".png" else _write_tif(path, a)
    out = read_image(path)
    assert out.dtype == np.float32
    assert out.max() == 65535.0
    np.testing.assert_array_equal(out[0], a.astype(np.float32))


def test_float_tiff_and_jpeg_bmp(tmp_path: Path) -> None:
    f = RNG.normal(size=(3, 16, 16)).astype(np.float64)
    np.testing.assert_allclose(read_image(_write_tif(tmp_path / "f.tif", f)), f.astype(np.float32))
    rgb = _rgb(16, 24)
    iio.imwrite(tmp_path / "x.jpg", rgb)
    iio.imwrite(tmp_path / "x.bmp", rgb)
    assert read_image(tmp_path / "x.jpg").shape == (3, 16, 24)
    np.testing.assert_array_equal(read_image(tmp_path / "x.bmp"), np.moveaxis(rgb, -1, 0))
    assert read_image_shape(tmp_path / "x.bmp") == (16, 24)
    assert read_image_shape(_write_tif(tmp_path / "c.tif", np.zeros((3, 17, 19), np.uint8))) == (17, 19)


# --------------------------------------------------------------------------------------------------------
# read_mask / write_mask / write_tiff
# --------------------------------------------------------------------------------------------------------


def test_instance_masks_binarise(tmp_path: Path) -> None:
    inst = np.zeros((20, 30), np.uint16)
    inst[2:8, 2:8] = 1
    inst[10:15, 10:20] = 300
    for path in (_write_png(tmp_path / "inst.png", inst), _write_tif(tmp_path / "inst.tif", inst)):
        m = read_mask(path)
        assert m.dtype == np.int64 and m.shape == (20, 30)
        np.testing.assert_array_equal(m, (inst > 0).astype(np.int64))
        np.testing.assert_array_equal(read_mask(path, binary=False), inst.astype(np.int64))


def test_mask_channels_and_palette(tmp_path: Path) -> None:
    from PIL import Image

    m = np.zeros((16, 16), np.uint8)
    m[4:10, 4:10] = 2
    rgb = np.repeat(m[..., None], 3, -1)
    np.testing.assert_array_equal(read_mask(_write_png(tmp_path / "rgb.png", rgb), binary=False), m)
    rgba = np.concatenate([rgb, np.full((16, 16, 1), 255, np.uint8)], -1)
    np.testing.assert_array_equal(read_mask(_write_png(tmp_path / "rgba.png", rgba), binary=False), m)
    colour = rgb.copy()
    colour[5, 5, 1] = 7
    with pytest.raises(DataError, match=r"colour_mask\.png"):
        read_mask(_write_png(tmp_path / "colour_mask.png", colour))
    # a palette PNG gives its indices, not the palette colours
    im = Image.frombytes("P", (m.shape[1], m.shape[0]), m.tobytes())
    im.putpalette([0, 0, 0, 10, 200, 30, 250, 40, 90] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "palette.png", binary=False), m)


def test_bad_masks(tmp_path: Path) -> None:
    neg = np.zeros((16, 16), np.int16)
    neg[0, 0] = -1
    with pytest.raises(DataError, match=r"negative_mask\.tif"):
        read_mask(_write_tif(tmp_path / "negative_mask.tif", neg))
    frac = np.zeros((16, 16), np.float32)
    frac[1, 1] = 0.5
    with pytest.raises(DataError, match=r"float_mask\.tif"):
        read_mask(_write_tif(tmp_path / "float_mask.tif", frac))
    ok_float = np.zeros((16, 16), np.float32)
    ok_float[1:4, 1:4] = 3.0
    np.testing.assert_array_equal(read_mask(_write_tif(tmp_path / "f.tif", ok_float), binary=False), ok_float)
    iio.imwrite(tmp_path / "lossy_mask.jpg", np.zeros((16, 16), np.uint8))
    with pytest.raises(DataError, match=r"lossy_mask\.jpg"):
        read_mask(tmp_path / "lossy_mask.jpg")
    for case in ("missing", "empty", "truncated_png", "too_small"):
        sub = tmp_path / case
        sub.mkdir()
        path = BAD_IMAGES[case](sub)
        with pytest.raises(DataError, match=re.escape(path.name)):
            read_mask(path)


def test_write_mask_round_trip_and_dtypes(tmp_path: Path) -> None:
    small = np.zeros((16, 20), np.int64)
    small[3:9, 4:12] = 1
    write_mask(tmp_path / "small.png", small)
    assert iio.imread(tmp_path / "small.png").dtype == np.uint8
    big = small * 1000
    write_mask(tmp_path / "big.png", big)
    assert iio.imread(tmp_path / "big.png").dtype == np.uint16
    np.testing.assert_array_equal(read_mask(tmp_path / "big.png", binary=False), big)
    write_mask(tmp_path / "m.tif", big)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif", binary=False), big)
    write_mask(tmp_path / "bool.png", small.astype(bool))
    np.testing.assert_array_equal(read_mask(tmp_path / "bool.png"), small)
    with pytest.raises(DataError):
        write_mask(tmp_path / "huge.png", small * 70000)
    with pytest.raises(DataError):
        write_mask(tmp_path / "neg.png", -small)
    with pytest.raises(DataError):
        write_mask(tmp_path / "m.jpg", small)
    # overwrite in place, and no temporary files left behind
    write_mask(tmp_path / "small.png", 1 - small)
    np.testing.assert_array_equal(read_mask(tmp_path / "small.png"), 1 - small)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_write_tiff_and_atomic_write(tmp_path: Path) -> None:
    for arr in (RNG.normal(size=(3, 10, 12)).astype(np.float32), _rgb(10, 12), np.arange(20).reshape(4, 5)):
        write_tiff(tmp_path / "sub" / "a.tif", arr)
        back = tifffile.imread(tmp_path / "sub" / "a.tif")
        assert back.dtype == arr.dtype
        np.testing.assert_array_equal(back, arr)
    with pytest.raises(DataError):
        write_tiff(tmp_path / "a.png", np.zeros((4, 4)))
    target = atomic_write_bytes(tmp_path / "x.bin", b"abc")
    assert target.read_bytes() == b"abc"
    atomic_write_bytes(target, b"defg")
    assert target.read_bytes() == b"defg"
    assert sorted(os.listdir(tmp_path)) == ["sub", "x.bin"]


# --------------------------------------------------------------------------------------------------------
# normalisation and channels
# --------------------------------------------------------------------------------------------------------


def test_normalize_constant_image_gives_zeros() -> None:
    for value in (0.0, 1000.0, 0.1):
        out = normalize_image(np.full((3, 32, 32), value, np.float32))
        assert out.dtype == np.float32
        assert np.all(np.isfinite(out))
        np.testing.assert_array_equal(out, 0.0)


def test_normalize_statistics_and_clipping() -> None:
    img = RNG.normal(100, 20, (2, 64, 64)).astype(np.float32)
    img[1] *= 5
    img[0, 0, 0] = 1e6  # an outlier is clipped to the 99.5th percentile
    out = normalize_image(img)
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1, atol=1e-3)
    assert out[0].max() < 4
    # a channel that is constant apart from rare pixels still gives finite values
    mixed = np.zeros((1, 64, 64), np.float32)
    mixed[0, 0, :3] = 5
    assert np.all(np.isfinite(normalize_image(mixed)))


def test_match_channels() -> None:
    grey = RNG.random((1, 8, 9)).astype(np.float32)
    rgb = match_channels(grey, 3)
    assert rgb.shape == (3, 8, 9)
    np.testing.assert_array_equal(rgb[2], grey[0])
    back = match_channels(rgb, 1)
    np.testing.assert_allclose(back, grey, rtol=1e-6)
    assert match_channels(grey, 1) is grey
    with pytest.raises(DataError):
        match_channels(grey, 2)
    with pytest.raises(DataError):
        match_channels(np.zeros((4, 8, 8)), 3)


# --------------------------------------------------------------------------------------------------------
# DatasetFolder
# --------------------------------------------------------------------------------------------------------


def _make_folder(root: Path, ids: list[str], *, masks: bool = True, size: tuple[int, int] = (16, 20)) -> Path:
    (root / "images").mkdir(parents=True)
    if masks:
        (root / "masks").mkdir()
    for i in ids:
        _write_png(root / "images" / f"{i}.png", _rgb(*size))
        if masks:
            write_mask(root / "masks" / f"{i}.png", (RNG.random(size) > 0.5).astype(np.uint8) * 3)
    return root


def test_dataset_without_split_csv(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "ds", ["b", "a", "c"])
    (root / "images" / "notes.txt").write_text("ignored")
    ds = DatasetFolder(root)
    assert ds.ids == ["a", "b", "c"]
    assert ds.train_ids == ["a", "b", "c"] and ds.val_ids == [] and ds.test_ids == []
    assert ds.split_of("a") == "train"
    assert ds.load_image("a").shape == (3, 16, 20)
    m = ds.load_mask("a")
    assert m.dtype == np.int64 and set(np.unique(m)) <= {0, 1}
    assert ds.load_mask("a", binary=False).max() == 3
    assert ds.image_path("a").name == "a.png"
    assert ds.mask_path("a") == root / "masks" / "a.png"
    with pytest.raises(DataError, match="zzz"):
        ds.split_of("zzz")
    with pytest.raises(DataError, match="zzz"):
        ds.image_path("zzz")


def test_dataset_splits(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "ds", ["t1", "t2", "v1", "x1", "x2", "y1"])
    (root / "masks" / "y1.png").unlink()
    (root / "split.csv").write_text(
        "id,split,grade\nt1,train,a\nv1,val,b\nx2,testB,c\nx1,testA,d\ny1,test,e\n", encoding="utf-8"
    )
    ds = DatasetFolder(root)
    assert ds.train_ids == ["t1", "t2"]  # t2 is not listed: train
    assert ds.val_ids == ["v1"]
    assert ds.test_ids == ["x1", "x2", "y1"]
    assert ds.ids_in_split("testA") == ["x1"]
    assert ds.split_of("x2") == "testB"
    assert not ds.has_mask("y1") and ds.mask_path("y1") is None
    with pytest.raises(DataError, match="y1"):
        ds.load_mask("y1")


def test_dataset_mask_shape_mismatch(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "ds", ["a"])
    write_mask(root / "masks" / "a.png", np.zeros((16, 21), np.uint8))
    with pytest.raises(DataError) as info:
        DatasetFolder(root).load_mask("a")
    msg = str(info.value)
    assert "masks" in msg and "a.png" in msg and "16x21" in msg and "16x20" in msg


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("no_images", "images/"),
        ("no_root", "does not exist"),
        ("duplicate_image", "a.tif"),
        ("duplicate_mask", "a.tif"),
        ("bad_header", "split.csv"),
        ("unknown_id", "ghost"),
        ("bad_split", "training"),
        ("repeated_id", "again"),
        ("empty_images", "no image files"),
    ],
)
def test_dataset_folder_errors(tmp_path: Path, case: str, needle: str) -> None:
    root = tmp_path / "ds"
    if case == "no_images":
        root.mkdir()
        (root / "masks").mkdir()
    elif case == "empty_images":
        (root / "images").mkdir(parents=True)
    elif case != "no_root":
        _make_folder(root, ["a", "b"])
    if case == "duplicate_image":
        _write_tif(root / "images" / "a.tif", _rgb(16, 20))
    elif case == "duplicate_mask":
        _write_tif(root / "masks" / "a.tif", np.zeros((16, 20), np.uint8))
    elif case == "bad_header":
        (root / "split.csv").write_text("name,set\na,train\n")
    elif case == "unknown_id":
        (root / "split.csv").write_text("id,split\na,train\nghost,test\n")
    elif case == "bad_split":
        (root / "split.csv").write_text("id,split\na,training\n")
    elif case == "repeated_id":
        (root / "split.csv").write_text("id,split\na,train\na,test\n")
    with pytest.raises(DataError, match=needle):
        DatasetFolder(root)


# --------------------------------------------------------------------------------------------------------
# patches and jitter
# --------------------------------------------------------------------------------------------------------


def _position_fields(shapes: list[tuple[int, int]]) -> list[list[torch.Tensor]]:
    """Field 0: (1, H, W) float image whose value encodes the position; field 1: the same as a long mask;
    field 2: (2, H, W) probabilities (value, -value); field 3: (H, W) float confidence = value."""
    images, masks, probs, conf = [], [], [], []
    offset = 0
    for h, w in shapes:
        v = torch.arange(offset, offset + h * w, dtype=torch.float64).reshape(h, w)
        offset += h * w
        images.append(v[None].float())
        masks.append(v.long())
        probs.append(torch.stack([v, -v]).float())
        conf.append(v.float())
    return [images, masks, probs, conf]


def test_sample_patches_shapes_dtypes_and_alignment() -> None:
    fields = _position_fields([(40, 50), (64, 33), (48, 48)])
    gen = torch.Generator().manual_seed(0)
    out = sample_patches(fields, [0, 1, 2, 1, 0, 2, 0, 1], 24, gen, augment=True)
    assert [t.shape for t in out] == [(8, 1, 24, 24), (8, 24, 24), (8, 2, 24, 24), (8, 24, 24)]
    assert [t.dtype for t in out] == [torch.float32, torch.int64, torch.float32, torch.float32]
    img, mask, prob, conf = out
    assert torch.equal(img[:, 0].long(), mask)
    assert torch.equal(prob[:, 0], img[:, 0]) and torch.equal(prob[:, 1], -img[:, 0])
    assert torch.equal(conf, img[:, 0])
    # each patch is a (flipped / rotated) window: neighbouring values differ by 1 along one axis and by the
    # image width along the other
    for b in range(img.shape[0]):
        p = mask[b]
        steps = {abs(int(p[0, 1] - p[0, 0])), abs(int(p[1, 0] - p[0, 0]))}
        assert 1 in steps
        assert len(torch.unique(p)) == 24 * 24


def test_sample_patches_augmentation_happens() -> None:
    fields = _position_fields([(64, 64)])
    gen = torch.Generator().manual_seed(3)
    out = sample_patches(fields, [0] * 64, 16, gen)[1]
    orientations = set()
    for p in out:
        dx = int(p[0, 1] - p[0, 0])
        dy = int(p[1, 0] - p[0, 0])
        orientations.add((dx, dy))
    assert len(orientations) == 8  # all 8 flips/rotations of the square occur


def test_sample_patches_no_augment_is_a_plain_uniform_window() -> None:
    fields = _position_fields([(30, 40)])
    out = sample_patches(fields, [0] * 200, 10, torch.Generator().manual_seed(1), augment=False)[1]
    origins = set()
    for p in out:
        y0, x0 = divmod(int(p[0, 0]), 40)
        assert torch.equal(p, fields[1][0][y0 : y0 + 10, x0 : x0 + 10])
        origins.add((y0, x0))
    ys, xs = {o[0] for o in origins}, {o[1] for o in origins}
    assert min(ys) == 0 and max(ys) == 20 and len(ys) > 15  # every valid row origin is reachable
    assert min(xs) == 0 and max(xs) == 30 and len(xs) > 20


def test_sample_patches_deterministic() -> None:
    fields = _position_fields([(50, 60), (70, 45)])
    idx = [0, 1, 1, 0, 1]
    a = sample_patches(fields, idx, 20, torch.Generator().manual_seed(42))
    b = sample_patches(fields, idx, 20, torch.Generator().manual_seed(42))
    c = sample_patches(fields, idx, 20, torch.Generator().manual_seed(43))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_sample_patches_pads_small_images() -> None:
    fields = _position_fields([(10, 12), (5, 40)])
    labels = {0: set(fields[1][0].unique().tolist()), 1: set(fields[1][1].unique().tolist())}
    out = sample_patches(fields, [0, 1, 0, 1], 32, torch.Generator().manual_seed(0))
    img, mask = out[0], out[1]
    assert img.shape == (4, 1, 32, 32) and mask.shape == (4, 32, 32)
    assert torch.equal(img[:, 0].long(), mask)
    for b, i in enumerate([0, 1, 0, 1]):
        values = set(mask[b].unique().tolist())
        assert values <= labels[i]  # padding only repeats existing values
        assert values == labels[i] or i == 1  # image 0 fits entirely inside the patch
    # mirror padding (no edge repeat): neighbours always differ by one step of the source image
    plain = sample_patches(fields, [0, 1] * 4, 32, torch.Generator().manual_seed(5), augment=False)[1]
    for b, i in enumerate([0, 1] * 4):
        width = fields[1][i].shape[1]
        assert torch.all(plain[b].diff(dim=1).abs() == 1)
        assert torch.all(plain[b].diff(dim=0).abs() == width)


def test_sample_patches_errors() -> None:
    fields = _position_fields([(20, 20)])
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError):
        sample_patches(fields, [], 8, gen)
    with pytest.raises(ValueError):
        sample_patches(fields, [1], 8, gen)
    with pytest.raises(ValueError):
        sample_patches([fields[0], [torch.zeros(20, 21)]], [0], 8, gen)


def test_intensity_jitter() -> None:
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert intensity_jitter(x, torch.Generator().manual_seed(1), strength=0) is x
    a = intensity_jitter(x, torch.Generator().manual_seed(1))
    b = intensity_jitter(x, torch.Generator().manual_seed(1))
    c = intensity_jitter(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    assert (a - x).abs().mean() < 1.5  # a perturbation, not a different image
    weak = intensity_jitter(x, torch.Generator().manual_seed(1), strength=0.1)
    assert (weak - x).abs().mean() < (a - x).abs().mean()


# --------------------------------------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------------------------------------


def _best_threshold_dice(image: np.ndarray, mask: np.ndarray) -> float:
    best = 0.0
    fg = mask > 0
    for ch in [image.mean(-1), *(image[..., c] for c in range(3))]:
        for t in range(5, 255, 5):
            for pred in (ch < t, ch >= t):
                best = max(best, 2 * (pred & fg).sum() / (pred.sum() + fg.sum()))
    return best


@pytest.mark.parametrize("kind", ["glands", "nuclei"])
def test_make_sample(kind: str) -> None:
    image, mask = make_sample(7, kind=kind)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert mask.shape == (256, 256) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert 0.03 < mask.mean() < 0.8
    again, _ = make_sample(7, kind=kind)
    other, _ = make_sample(8, kind=kind)
    np.testing.assert_array_equal(image, again)
    assert not np.array_equal(image, other)
    assert _best_threshold_dice(image, mask) < 0.85  # not solvable by one global threshold
    small_image, small_mask = make_sample(1, size=(40, 72), kind=kind)
    assert small_image.shape == (40, 72, 3) and small_mask.shape == (40, 72)


def test_make_sample_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        make_sample(0, kind="cells")
    with pytest.raises(ConfigError):
        make_sample(0, size=(8, 8))


def test_make_sample_dataset_round_trip(tmp_path: Path) -> None:
    root = make_sample_dataset(tmp_path / "synth", n_train=3, n_test=2, size=(64, 80), seed=5)
    ds = DatasetFolder(root)
    assert ds.train_ids == ["train_000", "train_001", "train_002"]
    assert ds.test_ids == ["test_000", "test_001"]
    for i in ds.ids:
        image, mask = ds.load_image(i), ds.load_mask(i)
        assert image.shape == (3, 64, 80) and mask.shape == (64, 80)
        assert set(np.unique(mask)) <= {0, 1}
    assert not np.array_equal(ds.load_image("train_000"), ds.load_image("train_001"))
    with pytest.raises(DataError, match="synth"):
        make_sample_dataset(root, n_train=1, n_test=0)
    (tmp_path / "empty").mkdir()
    make_sample_dataset(tmp_path / "empty", n_train=1, n_test=1, size=(32, 32), kind="nuclei")
    assert DatasetFolder(tmp_path / "empty").ids == ["test_000", "train_000"]


# --------------------------------------------------------------------------------------------------------
# real data (GlaS), if present
# --------------------------------------------------------------------------------------------------------


def _shared_data() -> Path:
    env = os.environ.get("DIFFSEG_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def test_glas_dataset_folder() -> None:
    root = _shared_data() / "glas"
    if not (root / "images").is_dir():
        pytest.skip(f"GlaS data not found at {root}")
    ds = DatasetFolder(root)
    assert len(ds.train_ids) == 85
    assert len(ds.test_ids) == 80
    assert len(ds.ids_in_split("testA")) == 60 and len(ds.ids_in_split("testB")) == 20
    assert ds.val_ids == []
    for i in ds.ids:
        assert ds.has_mask(i)
        mask = ds.load_mask(i)  # checks the shape against the image
        assert set(np.unique(mask)) <= {0, 1}
    image = ds.load_image("train_1")
    assert image.shape[0] == 3 and image.shape[1:] == ds.load_mask("train_1").shape
    norm = normalize_image(image)
    assert np.all(np.isfinite(norm)) and abs(float(norm.mean())) < 1e-3
