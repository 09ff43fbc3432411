"""Large images: streamed normalisation statistics and the row-band predictor give the in-memory numbers,
and the predictor reads each part of the image about once, a few bands at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_diffseg.base.preprocessing import match_channels, normalize_image
from napari_diffseg.core import tiled
from napari_diffseg.core.inference import predict_probs
from napari_diffseg.core.models import ModelBundle, ModelSpec, preprocess
from napari_diffseg.core.tiled import ChannelStats, image_stats, predict_rows


def _image(dtype, channels: int, shape=(130, 170), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        img = rng.integers(info.min, info.max, (channels, *shape), endpoint=True).astype(dtype)
        img[:, :20] //= 8  # a skewed histogram: the percentiles are not at the ends
    else:
        img = rng.gamma(2.0, 3.0, (channels, *shape)).astype(dtype)
    return img


def _bands(img: np.ndarray, rows: int):
    return lambda: (img[:, y : y + rows] for y in range(0, img.shape[1], rows))


@pytest.mark.parametrize(
    ("dtype", "c_in", "c_out"),
    [
        (np.uint8, 3, 3),
        (np.uint16, 1, 1),
        (np.int16, 1, 1),
        (np.uint8, 3, 1),  # the grey average of RGB: exact integer codes (sums of three channels)
        (np.uint16, 1, 3),  # grey fed to an RGB model
        (np.float32, 3, 3),  # small float: exact in memory
        (np.bool_, 1, 1),
    ],
)
def test_streamed_statistics_are_exact(dtype, c_in, c_out) -> None:
    img = _image(np.uint8, c_in) > 100 if dtype is np.bool_ else _image(dtype, c_in)
    stats = image_stats(_bands(img, 37), c_out, img.dtype, c_in)
    matched = match_channels(img, c_out)
    assert stats.exact
    assert np.array_equal(stats.apply(matched), normalize_image(matched))


def test_large_float_images_use_a_histogram_close_to_the_exact_values(monkeypatch) -> None:
    monkeypatch.setattr(tiled, "EXACT_FLOAT_VALUES", 1000)
    img = _image(np.float32, 3, (300, 400))
    stats = image_stats(_bands(img, 64), 3, img.dtype, 3)
    exact = ChannelStats.of(img)
    assert not stats.exact
    span = img.max() - img.min()
    assert np.all(np.abs(stats.lo - exact.lo) <= span / tiled.FLOAT_BINS)
    assert np.all(np.abs(stats.hi - exact.hi) <= span / tiled.FLOAT_BINS)
    assert np.abs(stats.apply(img) - normalize_image(img)).max() < 1e-3


def test_constant_channel_becomes_zero() -> None:
    img = np.full((1, 50, 60), 7, np.uint8)
    stats = image_stats(_bands(img, 16), 1, img.dtype, 1)
    assert not stats.apply(img).any() and not normalize_image(img).any()


class _Spy:
    """A RowSource that records what was read."""

    def __init__(self, img: np.ndarray) -> None:
        self.img = img
        self.height, self.width = img.shape[1:]
        self.reads: list[tuple[int, int]] = []

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        assert 0 <= y0 < y1 <= self.height
        self.reads.append((y0, y1))
        return self.img[:, y0:y1]


def _students(k: int = 2, channels: int = 3, method: str = "diffseg") -> ModelBundle:
    spec = ModelSpec(method, channels, k, (8, 16), (8, 16), 16)
    bundle = ModelBundle(spec, seed=1)
    for net in bundle.nets.values():
        net.eval()
    return bundle


@pytest.mark.parametrize(
    ("shape", "k", "method", "block"),
    [
        ((3, 300, 410), 2, "diffseg", 50),
        ((3, 129, 700), 3, "diffseg", 64),
        ((1, 70, 1001), 2, "supervised", 16),
    ],
)
def test_row_bands_equal_the_in_memory_prediction(shape, k, method, block) -> None:
    torch.manual_seed(0)
    bundle = _students(k, shape[0], method)
    img = _image(np.uint8, shape[0], shape[1:], seed=3)
    roi = 64
    ref = predict_probs(
        bundle.deployed(), preprocess(img, shape[0])[None], multiple=bundle.spec.multiple, roi=roi, sw_batch=2
    )[0].numpy()
    stats = image_stats(_bands(img, block), shape[0], img.dtype, shape[0])
    out = np.full_like(ref, np.nan)
    covered: list[tuple[int, int]] = []

    def sink(y0: int, probs: np.ndarray) -> None:
        assert probs.shape[0] == k and probs.shape[2] == shape[2]
        covered.append((y0, probs.shape[1]))
        out[:, y0 : y0 + probs.shape[1]] = probs

    spy = _Spy(img)
    predict_rows(
        bundle.deployed(),
        spy,
        stats,
        sink,
        channels=shape[0],
        multiple=bundle.spec.multiple,
        roi=roi,
        sw_batch=2,
        read_block=block,
    )
    # in order, each row once, equal to predict_probs on the whole image
    assert [y for y, _ in covered] == sorted(y for y, _ in covered)
    assert sum(n for _, n in covered) == shape[1] and covered[0][0] == 0
    np.testing.assert_allclose(out, ref, atol=2e-6)
    # the image is read in bands: no read is much larger than a window plus a block, and each row is
    # read at most twice (a block is re-read only when the cache had already dropped it: never here)
    assert max(y1 - y0 for y0, y1 in spy.reads) <= roi + block
    rows_read = sum(y1 - y0 for y0, y1 in spy.reads)
    assert rows_read <= shape[1] + block


def test_predict_rows_refuses_an_image_of_one_window() -> None:
    bundle = _students()
    img = _image(np.uint8, 3, (40, 50))
    stats = image_stats(_bands(img, 40), 3, img.dtype, 3)
    with pytest.raises(ValueError, match="larger than one window"):
        predict_rows(bundle.deployed(), _Spy(img), stats, lambda *_: None, channels=3, multiple=4, roi=64)
