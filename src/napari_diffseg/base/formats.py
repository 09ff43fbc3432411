"""File formats: the accepted image and mask extensions, and the one TIFF encoding every writer uses."""

from __future__ import annotations

import io

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "MASK_EXTENSIONS", "TIFF_EXTENSIONS", "tiff_bytes"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
"""File extensions accepted for images (compared case-insensitively)."""
MASK_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff")
"""File extensions accepted for masks: lossless formats only."""
TIFF_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff")
"""File extensions read and written with tifffile."""


def tiff_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` (any shape, numeric dtype) as a zlib-compressed (level 6) greyscale TIFF.

    Deterministic for equal input; :func:`tifffile.imread` gives back the same shape and dtype.
    """
    import tifffile  # only when encoding: the base stays cheap to import

    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        np.ascontiguousarray(array),
        photometric="minisblack",
        compression="zlib",
        compressionargs={"level": 6},
    )
    return buf.getvalue()
