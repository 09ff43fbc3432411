"""Array helpers shared by the reader, the sample data and the widgets (numpy only: no Qt, no torch)."""

from __future__ import annotations

import numpy as np

__all__ = ["layer_axes", "to_display"]


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


def layer_axes(
    shape: tuple[int, ...],
    rgb: bool,
    name: str,
    choice: str | None = None,
    project_channels: int | None = None,
) -> str:
    """The axes an Image layer's pixels are uploaded with by the Project widget's "Import selected layers"
    (``shape``: the layer's data shape; ``rgb``: napari shows its last axis as colour).

    A 2D layer is ``YX`` (grey) or ``YXC`` (RGB); a 3D one a z-stack, ``ZYX`` (``ZYXC`` for RGB planes).
    ``choice`` (the widget's axes box, for grey layers; None: as above) names the axes instead, e.g. ``CYX``
    for a layer whose first axis holds channels, ``TYX`` for a time-lapse. ``project_channels``: the
    fluorescence channel count of the project's images (None: grey or RGB images, or none yet); a grey
    z-stack does not fit a project of several fluorescence channels. Leading axes of length 1 are ignored
    (the backend drops them).

    Raises:
        ValueError: The layer cannot be imported this way; the message says why and what to do instead.
    """
    dims = list(shape)
    least = 3 if rgb else 2
    while len(dims) > least and dims[0] == 1:
        dims.pop(0)
    spatial = len(dims) - (1 if rgb else 0)  # the layer's dimensions without the colour axis
    by_file = (
        "import the file with 'Import files' and the axes choice beside it (or `diffseg import FILE --axes "
        "...`, e.g. CZYX or TZYX), which reads every axis"
    )
    if rgb:
        if spatial > 3:
            raise ValueError(
                f"{spatial}D RGB (shape {tuple(shape)}); a layer imports as one RGB image or z-stack: {by_file}"
            )
        return "YXC" if spatial == 2 else "ZYXC"
    if choice is not None:
        if len(choice) != len(dims):
            raise ValueError(
                f"{len(dims)}D (shape {tuple(shape)}), but the axes choice {choice} names {len(choice)} axes: "
                "choose 'axes: auto' or axes with one letter per dimension of the layer"
            )
        return choice
    if len(dims) == 2:
        return "YX"
    if len(dims) > 3:
        raise ValueError(
            f"{len(dims)}D (shape {tuple(shape)}); a layer imports as a 2D image (grey or RGB) or a 3D z-stack "
            f"(Z, Y, X): {by_file}"
        )
    if project_channels is not None and project_channels > 1:
        guess = (
            f"if its first axis holds the {project_channels} channels, choose 'CYX (channels)' beside the "
            "import buttons and import it again; otherwise "
            if dims[0] == project_channels
            else ""
        )
        raise ValueError(
            f"a single-channel z-stack of {dims[0]} planes, but this project's images have {project_channels} "
            f"channels (its networks take {project_channels}-channel input): {guess}import {name!r} into a "
            "project of single-channel images"
        )
    return "ZYX"
