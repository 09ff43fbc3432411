"""npe2 reader: a project folder (with ``project.db``), a dataset folder (``images/``, optional ``masks/``),
an OME-Zarr image, or an image file (TIFF, OME-TIFF, ImageJ TIFF, PNG, JPEG, BMP).

An image file is read with its axes (:func:`napari_diffseg.data.imagefile.read_image_file`): every OME
series as its own layer, fluorescence channels split with ``channel_axis`` (named from the metadata),
RGB as an ``rgb`` layer, z-stacks and time-lapses as their Z / T sliders, and ``scale`` in micrometres
where the metadata gives the pixel size (and, for a z-stack, the plane spacing).

Which files napari hands to it: npe2 picks the readers for a path by its name alone (the manifest's
``filename_patterns``; ``get_reader`` is asked only afterwards), and when more than one plugin matches, napari
asks the user which to use. So the manifest claims only OME-TIFF (``*.ome.tif``, ``*.ome.tiff``: every
series, channel names and pixel size, where napari's own reader shows the first series as one array) and
folders (a project, a dataset folder, an OME-Zarr image; other folders get None). Plain TIFF, ImageJ
hyperstacks, PNG, JPEG and the rest open with napari's own reader without a question; the Project widget's
*Import files* reads them with their axes, and :func:`read_image_files` gives their layers as this reader
would (``viewer.add_layer(Layer.create(*t))`` for each ``t``).

Thin and light: the project store, the dataset reader and zarr are imported only when a folder is read,
and none of them loads torch. An OME-Zarr image opens lazily as a multiscale Image layer (dask arrays over
its resolution levels: napari reads only the tiles it shows), with each of its label images (for example
the ``diffseg`` labels `diffseg predict` wrote) as a multiscale Labels layer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_diffseg._layers import to_display

__all__ = ["get_reader", "read_dataset", "read_image_files", "read_ome_zarr", "read_project"]

LayerData = list[tuple[Any, dict[str, Any], str]]
MAX_IMAGES = 64
"""At most this many images of a folder are opened as layers (the project widget browses the rest)."""


def get_reader(path: str | list[str]) -> Callable[[Any], LayerData] | None:
    """Return a reader for a project, dataset or OME-Zarr folder or an image file (napari hands it only
    OME-TIFF files: module docstring), or None (napari then asks other readers)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    folder = Path(path)
    if folder.is_file():
        from napari_diffseg.base.formats import IMAGE_EXTENSIONS

        return read_image_files if folder.suffix.lower() in IMAGE_EXTENSIONS else None
    if not folder.is_dir():
        return None
    if (folder / "project.db").is_file():
        return read_project
    if (folder / "images").is_dir():
        return read_dataset
    from napari_diffseg.data.ome_zarr import is_ome_zarr

    if is_ome_zarr(folder):
        return read_ome_zarr
    return None


def _one(path: str | os.PathLike[str] | list[Any]) -> Path:
    return Path(path[0] if isinstance(path, list) else path)


def read_project(path: str | os.PathLike[str] | list[Any]) -> LayerData:
    """Each image (up to :data:`MAX_IMAGES`) as an Image layer, with its latest annotation as Labels."""
    from napari_diffseg.project import Project

    layers: LayerData = []
    with Project.open(_one(path)) as project:
        for rec in project.images()[:MAX_IMAGES]:
            data, rgb = to_display(project.load_image(rec.id), rec.axes)
            meta = {"diffseg_image_id": rec.id, "state": rec.state, "split": rec.split}
            layers.append((data, {"name": rec.name, "rgb": rgb, "metadata": meta}, "image"))
            mask = project.load_annotation(rec.id)
            if mask is not None:
                layers.append((mask, {"name": f"{rec.name} labels", "metadata": meta}, "labels"))
    return layers


def read_image_files(path: str | os.PathLike[str] | list[Any]) -> LayerData:
    """Every image of an image file as an Image layer, laid out as napari expects (module docstring)."""
    from napari_diffseg.data.imagefile import read_image_file

    paths = path if isinstance(path, list) else [path]
    layers: LayerData = []
    for p in paths:
        for read in read_image_file(p):
            layers.append(_image_layer(read))
    return layers


def _image_layer(read: Any) -> tuple[Any, dict[str, Any], str]:
    """One :class:`~napari_diffseg.data.imagefile.ImageRead` as napari layer data."""
    meta = {"source": str(read.path), "axes": read.axes, "notes": list(read.notes)}
    kwargs: dict[str, Any] = {"name": read.name, "metadata": meta}
    spatial = [a for a in read.axes if a != "C"]
    if read.pixel_size is not None and ("Z" not in spatial or read.z_spacing is not None):
        sizes = {"T": 1.0, "Z": read.z_spacing, "Y": read.pixel_size[0], "X": read.pixel_size[1]}
        kwargs["scale"] = tuple(sizes[a] for a in spatial)
    if read.rgb:
        kwargs["rgb"] = True
    elif "C" in read.axes and read.channels > 1:
        kwargs["channel_axis"] = read.axes.index("C")
        names = list(read.channel_names) or [f"{read.name} [{i}]" for i in range(read.channels)]
        kwargs["name"] = names
        kwargs["metadata"] = meta  # napari gives each channel layer a copy
    elif "C" in read.axes:
        return _image_layer(_without_c(read))
    else:
        kwargs["rgb"] = False
    return read.data, kwargs, "image"


def _without_c(read: Any) -> Any:
    from dataclasses import replace

    c = read.axes.index("C")
    return replace(read, data=read.data.take(0, axis=c), axes=read.axes.replace("C", ""))


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


def _lazy_levels(image: Any, labels: bool) -> tuple[list[Any], bool]:
    """An opened OME-Zarr's levels as dask arrays napari can show: (Y, X), or (Y, X, 3) for RGB."""
    import dask.array as da

    out = []
    rgb = False
    for level in range(len(image.levels)):
        arr = da.from_zarr(image.array(level))
        arr = arr[tuple(slice(None) if a in ("c", "y", "x") else 0 for a in image.axes)]
        if "c" in image.axes:
            c = arr.shape[0]
            if labels or c == 1:
                arr = arr[0]
            elif c in (3, 4):
                arr, rgb = da.moveaxis(arr[:3], 0, -1), True
        out.append(arr)
    return out, rgb


def read_ome_zarr(path: str | os.PathLike[str] | list[Any]) -> LayerData:
    """An OME-Zarr image as a lazy multiscale Image layer, and its label images as lazy Labels layers."""
    from napari_diffseg.data.ome_zarr import open_ome_zarr

    image = open_ome_zarr(_one(path))
    levels, rgb = _lazy_levels(image, labels=False)
    geometry = {"scale": image.scales[0], "translate": image.translation}
    meta = {"ome_zarr": str(image.path), "ome_ngff_version": image.version}
    layers: LayerData = [
        (
            levels if len(levels) > 1 else levels[0],
            {"name": image.name, "rgb": rgb, "multiscale": len(levels) > 1, "metadata": meta, **geometry},
            "image",
        )
    ]
    for name in image.labels:
        lab = open_ome_zarr(image.path / "labels" / name)
        data, _ = _lazy_levels(lab, labels=True)
        layers.append(
            (
                data if len(data) > 1 else data[0],
                {
                    "name": f"{image.name} {name}",
                    "multiscale": len(data) > 1,
                    "metadata": {**meta, "labels": name},
                    "scale": lab.scales[0],
                    "translate": lab.translation,
                },
                "labels",
            )
        )
    return layers
