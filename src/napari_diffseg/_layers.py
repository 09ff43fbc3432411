"""Array helpers shared by the reader, the sample data and the widgets (numpy only: no Qt, no torch)."""

from __future__ import annotations

import numpy as np

__all__ = ["to_display"]


def to_display(pixels: np.ndarray, axes: str | None = None) -> tuple[np.ndarray, bool]:
    """Stored ``(C, H, W)`` pixels → what napari shows, and ``rgb``: ``(H, W)`` grey, ``(H, W, 3)`` RGB, or
    the ``(C, H, W)`` stack of fluorescence channels (a channel slider).

    ``axes`` is the image's axes as read (``Image.axes``): 3 channels are RGB unless they were read as
    ``CYX`` fluorescence channels. Stored images never hold alpha, so 4 channels are fluorescence.
    """
    arr = np.asarray(pixels)
    if arr.ndim == 4 and arr.shape[1] == 1:  # a grey z-stack (Z, 1, H, W): a Z slider
        return arr[:, 0], False
    if arr.ndim == 2:
        return arr, False
    if arr.ndim == 3 and arr.shape[0] == 1:
        return arr[0], False
    if arr.ndim == 3 and arr.shape[0] == 3 and not (axes or "").startswith("C"):
        return np.moveaxis(arr, 0, -1), True
    return arr, False
