"""Array helpers shared by the reader, the sample data and the widgets (numpy only: no Qt, no torch)."""

from __future__ import annotations

import numpy as np

__all__ = ["to_display"]


def to_display(pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    """Stored ``(C, H, W)`` pixels → what napari shows: ``(H, W)`` grey or ``(H, W, 3)`` RGB; and ``rgb``."""
    arr = np.asarray(pixels)
    if arr.ndim == 2:
        return arr, False
    if arr.ndim == 3 and arr.shape[0] == 1:
        return arr[0], False
    if arr.ndim == 3 and arr.shape[0] in (3, 4):
        return np.moveaxis(arr[:3], 0, -1), True
    return arr, False
