"""The pure-numpy half of input preprocessing: per-image normalisation and channel matching.

:func:`napari_diffseg.core.models.preprocess` (and ``ModelBundle.preprocess``) turns their result into the
tensor every network sees; training, proposals, prediction, the demo and the benchmarks all go through it.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError

__all__ = ["match_channels", "normalize_image"]

_PERCENTILES = (0.5, 99.5)
_STD_FLOOR = 1e-6


def normalize_image(img: np.ndarray) -> np.ndarray:
    """Per-image, per-channel normalisation of a ``(C, H, W)`` image to float32.

    Each channel is clipped to its 0.5 / 99.5 percentiles, then standardised: minus its mean, divided by its
    standard deviation (floored at 1e-6). A constant channel becomes all zeros, never NaN.

    Raises:
        DataError: The array is not 3D or holds NaN / infinite values.
    """
    arr = np.asarray(img)
    if arr.ndim != 3:
        raise DataError(f"normalize_image expects a (C, H, W) array, got shape {arr.shape}.")
    x = arr.astype(np.float32, copy=True)
    if x.size == 0:
        return x
    flat = x.reshape(x.shape[0], -1)
    if not np.all(np.isfinite(flat)):
        raise DataError("normalize_image: the image holds NaN or infinite values; clean it first.")
    lo, hi = np.percentile(flat, _PERCENTILES, axis=1)
    for c in range(x.shape[0]):
        ch = x[c]
        if hi[c] <= lo[c]:  # constant after clipping: exactly zero, no rounding noise amplified by the floor
            ch[...] = 0.0
            continue
        np.clip(ch, lo[c], hi[c], out=ch)
        mean = float(ch.mean(dtype=np.float64))
        std = max(float(ch.std(dtype=np.float64)), _STD_FLOOR)
        ch -= np.float32(mean)
        ch /= np.float32(std)
    return x


def match_channels(img: np.ndarray, n: int) -> np.ndarray:
    """Convert a ``(C, H, W)`` image to ``n`` channels: 1 → 3 replicates, 3 → 1 averages, C == n unchanged.

    Floating-point inputs keep their dtype; the average of an integer image is float32.

    Raises:
        DataError: Any other conversion (the message says which channel counts are possible).
    """
    arr = np.asarray(img)
    if arr.ndim != 3:
        raise DataError(f"match_channels expects a (C, H, W) array, got shape {arr.shape}.")
    c = arr.shape[0]
    if c == n:
        return arr
    if c == 1 and n == 3:
        return np.repeat(arr, 3, axis=0)
    if c == 3 and n == 1:
        out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float32
        return arr.mean(axis=0, keepdims=True, dtype=np.float64).astype(out_dtype)
    raise DataError(
        f"Cannot convert an image with {c} channel(s) to {n}: only 1 → 3, 3 → 1 and unchanged are supported. "
        "Use a model trained for this number of channels, or convert the image to grey or RGB."
    )
