"""npe2 reader: a project folder (with ``project.db``) or a dataset folder (``images/``, optional ``masks/``).

Thin and light: the project store and the dataset reader are imported only when a folder is read, and
neither loads torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_diffseg._layers import to_display

__all__ = ["get_reader", "read_dataset", "read_project"]

LayerData = list[tuple[Any, dict[str, Any], str]]
MAX_IMAGES = 64
"""At most this many images of a folder are opened as layers (the project widget browses the rest)."""


def get_reader(path: str | list[str]) -> Callable[[Any], LayerData] | None:
    """Return a reader for a project or dataset folder, or None (napari then asks other readers)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    folder = Path(path)
    if not folder.is_dir():
        return None
    if (folder / "project.db").is_file():
        return read_project
    if (folder / "images").is_dir():
        return read_dataset
    return None


def _one(path: str | os.PathLike[str] | list[Any]) -> Path:
    return Path(path[0] if isinstance(path, list) else path)


def read_project(path: str | os.PathLike[str] | list[Any]) -> LayerData:
    """Each image (up to :data:`MAX_IMAGES`) as an Image layer, with its latest annotation as Labels."""
    from napari_diffseg.project import Project

    layers: LayerData = []
    with Project.open(_one(path)) as project:
        for rec in project.images()[:MAX_IMAGES]:
            data, rgb = to_display(project.load_image(rec.id))
            meta = {"diffseg_image_id": rec.id, "state": rec.state, "split": rec.split}
            layers.append((data, {"name": rec.name, "rgb": rgb, "metadata": meta}, "image"))
            mask = project.load_annotation(rec.id)
            if mask is not None:
                layers.append((mask, {"name": f"{rec.name} labels", "metadata": meta}, "labels"))
    return layers


def read_dataset(path: str | os.PathLike[str] | list[Any]) -> LayerData:
    """Each image (up to :data:`MAX_IMAGES`) of a dataset folder as an Image layer, its mask as Labels."""
    from napari_diffseg.data.dataset import DatasetFolder
    from napari_diffseg.data.io import read_image_raw

    ds = DatasetFolder(_one(path))
    layers: LayerData = []
    for image_id in sorted(ds.splits)[:MAX_IMAGES]:
        data, rgb = to_display(read_image_raw(ds.image_path(image_id)))
        meta = {"split": ds.split_of(image_id)}
        layers.append((data, {"name": image_id, "rgb": rgb, "metadata": meta}, "image"))
        if ds.has_mask(image_id):
            mask = ds.load_mask(image_id, binary=False)
            layers.append((mask.astype("int32"), {"name": f"{image_id} labels", "metadata": meta}, "labels"))
    return layers
