"""The pure-numpy half of input preprocessing: normalisation and channel matching.

Two normalisations exist:

* **dataset** (every model trained since issue 12): a :class:`Normalization` computed once over the
  model's training images (:func:`dataset_statistics`: per channel, the 1 / 99.8 percentiles of the pooled
  pixels), stored with the model (``config.json`` key ``normalization``) and applied unchanged to every
  image the model ever sees. A dark, empty or sparse field stays dark: its camera noise is a few grey
  levels of a range set by the training images, not stretched to the full range.
* **per image** (models saved before, whose config has no statistics): each image clipped to its own
  0.5 / 99.5 percentiles and standardised, exactly as before, so old models predict what they always did.

:func:`napari_diffseg.core.models.preprocess` (and ``ModelBundle.preprocess``) turns their result into the
tensor every network sees; training, proposals, prediction, the demo and the benchmarks all go through it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError, DataError

__all__ = [
    "DATASET_PERCENTILES",
    "NORM_CLIP",
    "PER_IMAGE_CONFIG",
    "PIXELS_PER_IMAGE",
    "Normalization",
    "dataset_statistics",
    "match_channels",
    "normalize_image",
]

_PERCENTILES = (0.5, 99.5)
_STD_FLOOR = 1e-6
DATASET_PERCENTILES = (1.0, 99.8)
"""The pooled percentiles of a dataset normalisation: they map to 0 and 1."""
NORM_CLIP = (-1.0, 3.0)
"""Normalised values are clipped to this range (a saturated or out-of-range pixel stays bounded)."""
PIXELS_PER_IMAGE = 65536
"""At most this many pixels of each training image (a seeded sample) enter the pooled percentiles, so
every image weighs about the same and the statistics of a large project stay cheap."""


@dataclass(frozen=True)
class Normalization:
    """A fixed per-channel intensity mapping, computed over a model's training images and stored with it.

    Channel ``c`` maps ``low[c] → 0`` and ``high[c] → 1`` (``x' = (x − low) / (high − low)``), clipped to
    :data:`NORM_CLIP`; a channel with ``high <= low`` (constant in training) becomes 0. In float32 the
    steps are: clip ``x`` to ``[low − 1·r, high + 2·r]`` (``r = high − low``), subtract ``low``, divide by
    ``r`` — the order ``core.deployed`` and ``core.tiled`` repeat, so all three give the same bits.

    Attributes:
        low, high: Per model input channel, the pooled ``percentiles`` of the training images.
        percentiles: Which percentiles ``low`` and ``high`` are.
        n_images: How many images they were computed over.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    percentiles: tuple[float, float] = DATASET_PERCENTILES
    n_images: int = 0

    def __post_init__(self) -> None:
        if len(self.low) != len(self.high) or not self.low:
            raise ConfigError(f"a normalisation needs one low and one high per channel, got {self}")
        if not all(np.isfinite(v) for v in (*self.low, *self.high)):
            raise ConfigError(f"a normalisation's statistics must be finite, got {self}")

    @property
    def channels(self) -> int:
        return len(self.low)

    def bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per channel (float64): clip low, clip high, offset (``low``) and scale (``high − low``)."""
        low = np.asarray(self.low, np.float64)
        r = np.asarray(self.high, np.float64) - low
        return low + NORM_CLIP[0] * r, low + NORM_CLIP[1] * r, low, r

    def apply(self, img: np.ndarray) -> np.ndarray:
        """A raw ``(C, H, W)`` image with ``C == channels`` → normalised float32 (a new array).

        Raises:
            DataError: Another channel count, or NaN / infinite values.
        """
        arr = np.asarray(img)
        if arr.ndim != 3 or arr.shape[0] != self.channels:
            raise DataError(
                f"this model's normalisation expects a ({self.channels}, H, W) image, got shape {arr.shape}."
            )
        x = arr.astype(np.float32, copy=True)
        if not np.all(np.isfinite(x)):
            raise DataError("normalize_image: the image holds NaN or infinite values; clean it first.")
        c_lo, c_hi, offset, scale = self.bounds()
        for c in range(x.shape[0]):
            ch = x[c]
            if scale[c] <= 0:
                ch[...] = 0.0
                continue
            np.clip(ch, c_lo[c], c_hi[c], out=ch)
            ch -= np.float32(offset[c])
            ch /= np.float32(scale[c])
        return x

    def to_dict(self) -> dict[str, Any]:
        """What ``config.json`` stores under ``normalization``."""
        return {
            "mode": "dataset",
            "percentiles": list(self.percentiles),
            "low": [float(v) for v in self.low],
            "high": [float(v) for v in self.high],
            "clip": list(NORM_CLIP),
            "n_images": int(self.n_images),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Normalization | None:
        """A model config's normalisation; None for a model without statistics (saved before they existed,
        or ``mode: per_image``), which is normalised per image.

        Raises:
            ConfigError: A ``normalization`` entry that is neither.
        """
        norm = config.get("normalization")
        if (
            norm is None
            or norm == "per_image"
            or (isinstance(norm, Mapping) and norm.get("mode") == "per_image")
        ):
            return None
        if not isinstance(norm, Mapping) or norm.get("mode") != "dataset":
            raise ConfigError(
                f"the model's config.json names the normalisation {norm!r}; this version knows 'dataset' and "
                "'per_image'"
            )
        try:
            return cls(
                tuple(float(v) for v in norm["low"]),
                tuple(float(v) for v in norm["high"]),
                tuple(float(v) for v in norm.get("percentiles", DATASET_PERCENTILES)),  # type: ignore[arg-type]
                int(norm.get("n_images", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the model's normalisation {norm!r} is malformed ({exc})") from exc


PER_IMAGE_CONFIG: dict[str, Any] = {
    "mode": "per_image",
    "percentiles": list(_PERCENTILES),
    "std_floor": _STD_FLOOR,
}
"""What ``config.json`` records for a model without statistics."""


def dataset_statistics(
    images: Iterable[np.ndarray],
    channels: int,
    *,
    percentiles: tuple[float, float] = DATASET_PERCENTILES,
    pixels_per_image: int = PIXELS_PER_IMAGE,
    seed: int = 0,
) -> Normalization:
    """The :class:`Normalization` of a set of training images: per channel (after matching each raw
    ``(C, H, W)`` image to ``channels``), the ``percentiles`` of their pooled pixels, at most
    ``pixels_per_image`` of each (a sample seeded by ``seed`` and the image's position).

    Raises:
        DataError: No image, an image that is not ``(C, H, W)``, NaN / infinite values, or channels that
            cannot be matched.
    """
    pooled: list[np.ndarray] = []
    for k, img in enumerate(images):
        arr = match_channels(np.asarray(img), channels)
        flat = arr.reshape(arr.shape[0], -1)
        if flat.shape[1] > pixels_per_image:
            idx = np.random.default_rng([seed, k]).integers(0, flat.shape[1], pixels_per_image)
            flat = flat[:, idx]
        flat = flat.astype(np.float64)
        if not np.all(np.isfinite(flat)):
            raise DataError(f"training image {k} holds NaN or infinite values; clean it first.")
        pooled.append(flat)
    if not pooled:
        raise DataError("normalisation statistics need at least one training image")
    allpix = np.concatenate(pooled, axis=1)
    lo, hi = np.percentile(allpix, percentiles, axis=1)
    return Normalization(
        tuple(float(v) for v in lo),
        tuple(float(v) for v in hi),
        (float(percentiles[0]), float(percentiles[1])),
        len(pooled),
    )


def normalize_image(img: np.ndarray, normalization: Normalization | None = None) -> np.ndarray:
    """Normalise a ``(C, H, W)`` image to float32.

    With ``normalization`` (a model's statistics): :meth:`Normalization.apply`. Without (a model saved
    before statistics existed): per image and per channel, clipped to its 0.5 / 99.5 percentiles, then
    standardised: minus its mean, divided by its standard deviation (floored at 1e-6); a constant channel
    becomes all zeros, never NaN.

    Raises:
        DataError: The array is not 3D or holds NaN / infinite values.
    """
    if normalization is not None:
        return normalization.apply(img)
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
