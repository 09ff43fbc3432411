"""Prediction on images that do not fit in memory: streamed statistics, then row bands of windows.

``diffseg predict`` on an in-memory image normalises it with the model's statistics (or, for a model saved
before they existed, with the image's own: per channel, clip to the 0.5 / 99.5 percentiles, standardise;
:func:`napari_diffseg.base.preprocessing.normalize_image`) and runs the students on overlapping windows
(:func:`napari_diffseg.core.inference.predict_probs`). :func:`predict_rows` computes the *same numbers*
for an image it reads band by band from a :class:`RowSource` (an OME-Zarr level):

1. with a model's statistics nothing is streamed (:meth:`ChannelStats.of_model`); without them
   :func:`image_stats` streams the image once and finds the clipping percentiles exactly from per-channel
   histograms (8- and 16-bit images, and the grey average of an RGB image, take integer codes; other
   dtypes fall back to an exact in-memory pass when small and to a 65,536-bin histogram otherwise), then
   the mean and standard deviation of the clipped values;
2. the windows are MONAI's grid over the whole (virtually padded) image, processed one row of windows at a
   time; each row's logits are blended into a band of ``roi`` rows, and the rows no later window touches
   are finished (softmax per student, mean over students) and handed to ``sink``.

Memory is a few bands of the image's width (about ``(channels + 2 K · students) · roi · width`` floats),
never the whole image. Tests check the result against ``predict_probs`` on the same image in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..base.preprocessing import Normalization, match_channels, normalize_image
from .deployed import window_profile, window_starts
from .device import autocast

__all__ = ["ChannelStats", "RowSource", "image_stats", "predict_rows"]

_PERCENTILES = (0.5, 99.5)
_STD_FLOOR = 1e-6
EXACT_FLOAT_VALUES = 2**25
"""Float (or 32/64-bit integer) images with at most this many values get exact statistics in memory."""
FLOAT_BINS = 2**16
_STAT_ROWS = 128


class RowSource(Protocol):
    """What :func:`predict_rows` reads: an image of ``height × width`` pixels, rows on request."""

    height: int
    width: int

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``[y0, y1)`` as raw ``(C, y1 - y0, width)``."""
        ...


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel normalisation of one image: clip to ``[lo, hi]``, subtract ``mean``, divide by ``std``;
    a channel with ``hi <= lo`` becomes 0 (``base.preprocessing.normalize_image``)."""

    lo: np.ndarray  # float64 (C,)
    hi: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    exact: bool = True

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Raw ``(C, h, w)`` (already channel-matched) → normalised float32."""
        x = raw.astype(np.float32, copy=True)
        for c in range(x.shape[0]):
            ch = x[c]
            if self.hi[c] <= self.lo[c]:
                ch[...] = 0.0
                continue
            np.clip(ch, self.lo[c], self.hi[c], out=ch)
            ch -= np.float32(self.mean[c])
            ch /= np.float32(self.std[c])
        return x

    @classmethod
    def of_model(cls, normalization: Normalization) -> ChannelStats:
        """A model's fixed statistics in this form: :meth:`apply` then gives the bits of
        :meth:`Normalization.apply` (clip, subtract, divide, in the same float32 steps)."""
        c_lo, c_hi, offset, scale = normalization.bounds()
        return cls(c_lo, c_hi, offset, scale)

    @classmethod
    def of(cls, image: np.ndarray) -> ChannelStats:
        """The statistics ``normalize_image`` uses for an in-memory ``(C, H, W)`` image."""
        x = np.asarray(image).astype(np.float32)
        flat = x.reshape(x.shape[0], -1)
        lo, hi = np.percentile(flat, _PERCENTILES, axis=1)
        means, stds = [], []
        for c in range(x.shape[0]):
            ch = np.clip(flat[c], lo[c], hi[c]).astype(np.float32)  # as normalize_image clips in place
            means.append(float(ch.mean(dtype=np.float64)))
            stds.append(max(float(ch.std(dtype=np.float64)), _STD_FLOOR))
        return cls(
            np.asarray(lo, np.float64), np.asarray(hi, np.float64), np.asarray(means), np.asarray(stds)
        )


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's linear-interpolation formula for percentiles (``numpy.lib._function_base_impl._lerp``)."""
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def _percentile_from_counts(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """The ``q``-th percentile (numpy's default 'linear' method) of the multiset ``values`` (sorted
    ascending) repeated ``counts`` times."""
    cum = np.cumsum(counts)
    n = int(cum[-1])
    pos = q / 100.0 * (n - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    a = float(values[np.searchsorted(cum, lo, side="right")])
    b = float(values[np.searchsorted(cum, hi, side="right")])
    return _lerp(a, b, pos - lo)


def _stats_from_counts(values: np.ndarray, counts: np.ndarray) -> tuple[float, float, float, float]:
    """(lo, hi, mean, std) of one channel given its distinct float32 values and their counts."""
    keep = counts > 0
    values, counts = values[keep], counts[keep]
    lo = _percentile_from_counts(values, counts, _PERCENTILES[0])
    hi = _percentile_from_counts(values, counts, _PERCENTILES[1])
    clipped = np.clip(values, lo, hi).astype(np.float32).astype(np.float64)
    n = float(counts.sum())
    mean = float((clipped * counts).sum() / n)
    var = float((((clipped - mean) ** 2) * counts).sum() / n)
    return lo, hi, mean, max(float(np.sqrt(var)), _STD_FLOOR)


def _integer_codes(dtype: np.dtype, c_in: int, c_out: int) -> tuple[int, int, float] | None:
    """For integer images of at most 16 bits: (offset, number of codes, divisor) so that a channel-matched
    value is ``float32((code + offset) / divisor)`` — or None when the exact histogram path does not apply."""
    if dtype == np.bool_:
        dtype = np.dtype(np.uint8)
    if not np.issubdtype(dtype, np.integer) or dtype.itemsize > 2:
        return None
    info = np.iinfo(dtype)
    span = int(info.max) - int(info.min) + 1
    if c_in == 3 and c_out == 1:
        return 3 * int(info.min), 3 * (span - 1) + 1, 3.0
    return int(info.min), span, 1.0


def image_stats(
    bands: Callable[[], Iterable[np.ndarray]], channels: int, dtype: np.dtype | type, in_channels: int
) -> ChannelStats:
    """The normalisation statistics of a whole image streamed as raw ``(in_channels, h, W)`` bands.

    Args:
        bands: Called for each pass over the image; yields its row bands in any order.
        channels: The model's input channels (the bands are channel-matched to this: 1 → 3 replicates,
            3 → 1 averages, as ``match_channels``).
        dtype: The image's dtype.
        in_channels: The image's own channel count.

    Returns:
        Exact statistics (the numbers ``normalize_image`` would use on the whole image) for 8/16-bit
        images and small float images; for large float images the percentiles come from a 65,536-bin
        histogram between each channel's min and max (``exact`` is False), the mean and standard deviation
        of the clipped values are then exact.
    """
    dt = np.dtype(dtype)
    codes = _integer_codes(dt, in_channels, channels)
    n_stat = 1 if (in_channels == 3 and channels == 1) else in_channels
    if codes is not None:
        offset, span, div = codes
        hist = np.zeros((n_stat, span), np.int64)
        for band in bands():
            b = np.asarray(band)
            for r in range(0, b.shape[1], _STAT_ROWS):  # a few rows at a time: small temporaries
                part = b[:, r : r + _STAT_ROWS]
                if in_channels == 3 and channels == 1:
                    summed = part.astype(np.int64).sum(axis=0) - offset
                    hist[0] += np.bincount(summed.ravel(), minlength=span)
                else:
                    for c in range(n_stat):
                        codes = part[c].astype(np.int64) - offset if offset else part[c].astype(np.intp)
                        hist[c] += np.bincount(codes.ravel(), minlength=span)
        values = (np.arange(span, dtype=np.float64) + offset) / div
        values = values.astype(np.float32).astype(np.float64)
        per = [_stats_from_counts(values, hist[c]) for c in range(n_stat)]
        lo, hi, mean, std = (np.asarray([p[i] for p in per]) for i in range(4))
        stats = ChannelStats(lo, hi, mean, std)
    else:
        stats = _float_stats(bands, channels, n_stat)
    if n_stat == 1 and channels == 3:  # a grey image fed to an RGB model: the same statistics thrice
        lo, hi, mean, std = (np.repeat(a, 3) for a in (stats.lo, stats.hi, stats.mean, stats.std))
        stats = ChannelStats(lo, hi, mean, std, exact=stats.exact)
    return stats


def _matched(band: np.ndarray, channels: int) -> np.ndarray:
    b = np.asarray(band)
    if b.shape[0] == 1 and channels == 3:
        return b  # statistics of the single channel, repeated afterwards
    return match_channels(b, channels)


def _float_stats(bands: Callable[[], Iterable[np.ndarray]], channels: int, n_stat: int) -> ChannelStats:
    total = 0
    lo = np.full(n_stat, np.inf)
    hi = np.full(n_stat, -np.inf)
    for band in bands():
        b = _matched(band, channels).astype(np.float32)
        total += b[0].size
        lo = np.minimum(lo, b.reshape(n_stat, -1).min(axis=1))
        hi = np.maximum(hi, b.reshape(n_stat, -1).max(axis=1))
    if total * n_stat <= EXACT_FLOAT_VALUES:
        whole = np.concatenate(
            [_matched(b, channels).astype(np.float32).reshape(n_stat, -1) for b in bands()], axis=1
        )
        return ChannelStats.of(whole[:, None, :])
    counts = np.zeros((n_stat, FLOAT_BINS), np.int64)
    for band in bands():
        b = _matched(band, channels).astype(np.float32).reshape(n_stat, -1)
        for c in range(n_stat):
            if hi[c] > lo[c]:
                counts[c] += np.histogram(b[c], bins=FLOAT_BINS, range=(lo[c], hi[c]))[0]
    plo, phi = np.zeros(n_stat), np.zeros(n_stat)
    for c in range(n_stat):
        if hi[c] <= lo[c]:
            plo[c] = phi[c] = lo[c]
            continue
        centres = lo[c] + (np.arange(FLOAT_BINS) + 0.5) * (hi[c] - lo[c]) / FLOAT_BINS
        plo[c] = _percentile_from_counts(centres, counts[c], _PERCENTILES[0])
        phi[c] = _percentile_from_counts(centres, counts[c], _PERCENTILES[1])
    sums, sq, n = np.zeros(n_stat), np.zeros(n_stat), 0
    for band in bands():
        b = _matched(band, channels).astype(np.float32).reshape(n_stat, -1).astype(np.float64)
        for c in range(n_stat):
            v = np.clip(b[c], plo[c], phi[c])
            sums[c] += v.sum()
            sq[c] += (v * v).sum()
        n += b.shape[1]
    mean = sums / n
    std = np.maximum(np.sqrt(np.maximum(sq / n - mean**2, 0.0)), _STD_FLOOR)
    return ChannelStats(plo, phi, mean, std, exact=False)


def check_stats_match(image: np.ndarray, stats: ChannelStats) -> float:
    """Largest difference between ``stats.apply`` and ``normalize_image`` on an in-memory image (tests)."""
    return float(np.abs(stats.apply(image) - normalize_image(image)).max())


# ------------------------------------------------------------------------------------------ the predictor


class _RowCache:
    """Raw rows of a source for requests whose rows never go back: read in blocks of ``block`` rows (whole
    chunk rows of an OME-Zarr), each block read once and dropped once the requests are past it."""

    def __init__(self, source: RowSource, block: int) -> None:
        self.source = source
        self.block = max(1, block)
        self.blocks: dict[int, np.ndarray] = {}

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Raw ``(C, len(rows), width)`` for ascending row indices ``rows``."""
        first, last = int(rows[0]) // self.block, int(rows[-1]) // self.block
        for b in [b for b in self.blocks if b < first]:
            del self.blocks[b]
        for b in range(first, last + 1):
            if b not in self.blocks:
                y0 = b * self.block
                self.blocks[b] = self.source.read_rows(y0, min(self.source.height, y0 + self.block))
        if first == last:
            return self.blocks[first][:, rows - first * self.block]
        parts = [
            self.blocks[b][:, rows[rows // self.block == b] - b * self.block] for b in range(first, last + 1)
        ]
        return np.concatenate(parts, axis=1)


def _ring(start: int, n: int, size: int) -> list[tuple[slice, slice]]:
    """(ring slots, rows of an n-row block) pairs that put virtual rows ``start .. start + n`` into a ring
    buffer of ``size`` rows (n <= size)."""
    s = start % size
    first = min(size - s, n)
    out = [(slice(s, s + first), slice(0, first))]
    if first < n:
        out.append((slice(0, n - first), slice(first, n)))
    return out


@torch.no_grad()
def predict_rows(
    nets: Sequence[nn.Module],
    source: RowSource,
    stats: ChannelStats,
    sink: Callable[[int, np.ndarray], None],
    *,
    channels: int,
    multiple: int,
    roi: int = 256,
    sw_batch: int = 4,
    overlap: float = 0.25,
    read_block: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Mean softmax of ``nets`` over a large image, streamed: ``sink(y0, probs)`` receives ``(K, n, width)``
    float32 bands, in order, that together cover every row once.

    The numbers are those of ``predict_probs(nets, preprocess(image), multiple=multiple, roi=roi, ...)``
    on the whole image (the same window grid and weights, per-student logit blending, softmax, mean), up
    to float rounding. The image must be larger than one window: each padded side plus the ``roi // 4``
    margins at least ``roi`` (callers predict smaller images in memory).

    Memory: the raw rows of one window row (and the chunk rows they come from), each student's logits
    for ``roi`` rows (a ring buffer), and one batch of normalised windows; all proportional to the
    image's width.
    """
    h, w = int(source.height), int(source.width)
    hp, wp = h + (-h) % multiple, w + (-w) % multiple
    m = roi // 4
    hv, wv = hp + 2 * m, wp + 2 * m
    if hv < roi or wv < roi or (hp <= roi and wp <= roi):
        raise ValueError("predict_rows needs an image larger than one window; predict it in memory")
    dev = next(nets[0].parameters()).device
    for net in nets:
        net.eval()
    ys = window_starts(hv, roi, overlap)
    xs = window_starts(wv, roi, overlap)
    prof = window_profile(roi, overlap).numpy()
    wmap = torch.from_numpy(np.outer(prof, prof).astype(np.float32))
    cy = np.zeros(hv, np.float32)
    for y0 in ys:
        cy[y0 : y0 + roi] += prof
    cx = np.zeros(wv, np.float32)
    for x0 in xs:
        cx[x0 : x0 + roi] += prof
    cols = np.clip(np.arange(wv) - m, 0, w - 1)
    cache = _RowCache(source, read_block)
    acc: list[torch.Tensor] = []  # per student: logits of virtual rows in flight, row v at slot v % roi
    done_rows = 0
    for i, y0 in enumerate(ys):
        # the window row's input: virtual rows y0 .. y0 + roi → image rows (clamped: replicate padding)
        rows = np.clip(np.arange(y0, y0 + roi) - m, 0, h - 1)
        raw = match_channels(cache.take(rows)[:, :, cols], channels)
        for j in range(0, len(xs), sw_batch):
            chunk = xs[j : j + sw_batch]
            batch = np.stack([stats.apply(raw[:, :, x0 : x0 + roi]) for x0 in chunk])
            wins = torch.from_numpy(batch).to(dev)
            for k, net in enumerate(nets):
                with autocast(dev):
                    logits = net(wins).float().cpu()
                if len(acc) <= k:
                    acc.append(torch.zeros((logits.shape[1], roi, wv), dtype=torch.float32))
                for b, x0 in enumerate(chunk):
                    weighted = logits[b] * wmap
                    for slots, part in _ring(y0, roi, roi):
                        acc[k][:, slots, x0 : x0 + roi] += weighted[:, part]
        # rows no later window touches are final: [y0, stop); the image's rows among them go to the sink
        stop = ys[i + 1] if i + 1 < len(ys) else hv
        lo_v, hi_v = max(y0, m), min(stop, m + h)
        if hi_v > lo_v:
            count = torch.from_numpy(cy[lo_v:hi_v, None] * cx[None, m : m + w])
            total = torch.zeros(0)
            for k in range(len(acc)):
                logits_rows = torch.cat(
                    [acc[k][:, slots, m : m + w] for slots, _ in _ring(lo_v, hi_v - lo_v, roi)], 1
                )
                p = torch.softmax(logits_rows.div_(count), dim=0)
                total = p if not total.numel() else total.add_(p)
            sink(lo_v - m, total.div_(len(acc)).numpy())
            done_rows = hi_v - m
            if progress is not None:
                progress(done_rows, h)
        for slots, _ in _ring(y0, stop - y0, roi):  # the slots of finished rows start over for later rows
            for a in acc:
                a[:, slots] = 0.0
    if done_rows != h:  # pragma: no cover - the grid always reaches the last row
        raise RuntimeError(f"tiled prediction covered {done_rows} of {h} rows")
