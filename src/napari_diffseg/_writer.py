"""npe2 writer: a Labels layer as a mask file (``.tif`` / ``.tiff`` / ``.png``), written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_labels"]


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer; returns the written path (npe2 single-layer writer contract)."""
    from napari_diffseg.data.io import write_mask

    target = Path(path)
    if target.suffix.lower() not in (".tif", ".tiff", ".png"):
        target = target.with_suffix(".tif")
    write_mask(target, np.asarray(data))
    return [str(target)]
