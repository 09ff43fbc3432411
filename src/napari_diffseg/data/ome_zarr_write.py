"""Writing OME-Zarr (OME-NGFF 0.4 on Zarr format 2, or 0.5 on Zarr format 3), band by band.

:func:`write_ome_zarr` writes a whole (small) image; :class:`LabelsWriter` creates the ``labels`` group
of an image and writes a label image band by band (rows), then builds its lower-resolution levels from
level 0 band by band as well, so a 20,000 × 20,000 mask is never in memory; :class:`ImageWriter` writes
a new single-level image (probabilities) band by band; :func:`copy_image` copies an image group chunk row
by chunk row. New data are written in the input's own format; new images default to 0.4, which most
viewers read today. Metadata are written last, so an interrupted write is never a readable image or a
listed label image. Reading is :mod:`napari_diffseg.data.ome_zarr`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_diffseg.base.errors import DataError
from napari_diffseg.data.ome_zarr import _AXIS_TYPES, OmeZarrImage, _zarr, image_stem, open_ome_zarr

__all__ = ["DEFAULT_CHUNK", "ImageWriter", "LabelsWriter", "copy_image", "write_ome_zarr"]

PathLike = str | os.PathLike[str]

DEFAULT_CHUNK = 1024
"""Rows and columns per chunk of what is written."""
LABEL_COLORS = [(255, 200, 0), (0, 200, 255), (255, 0, 160), (80, 255, 80), (160, 80, 255)]


def _open_new_group(path: Path, zarr_format: int, overwrite: bool) -> Any:
    zarr = _zarr()
    if path.exists() and not overwrite:
        raise DataError(f"{path} already exists; choose another name or pass --overwrite")
    return zarr.open_group(path, mode="w" if overwrite else "w-", zarr_format=zarr_format)


def _create_array(
    group: Any, name: str, shape: Sequence[int], chunks: Sequence[int], dtype: Any, axes: Sequence[str]
) -> Any:
    kwargs: dict[str, Any] = {"shape": tuple(shape), "chunks": tuple(chunks), "dtype": dtype, "fill_value": 0}
    if group.metadata.zarr_format == 2:
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    else:
        kwargs["dimension_names"] = list(axes)
    return group.create_array(name, **kwargs)


def _axes_meta(axes: Sequence[str], units: Sequence[str | None] = (None, None)) -> list[dict[str, Any]]:
    out = []
    for a in axes:
        entry: dict[str, Any] = {"name": a, "type": _AXIS_TYPES[a]}
        unit = units[0] if a == "y" else units[1] if a == "x" else None
        if unit:
            entry["unit"] = unit
        out.append(entry)
    return out


def _multiscales(
    name: str,
    axes: Sequence[str],
    paths: Sequence[str],
    scales: Sequence[Sequence[float]],
    version: str,
    translation: Sequence[float] | None = None,
    units: Sequence[str | None] = (None, None),
) -> dict[str, Any]:
    datasets = []
    for rel, sc in zip(paths, scales, strict=True):
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": [float(v) for v in sc]}]
        if translation is not None and any(translation):
            transforms.append({"type": "translation", "translation": [float(v) for v in translation]})
        datasets.append({"path": rel, "coordinateTransformations": transforms})
    ms: dict[str, Any] = {"name": name, "axes": _axes_meta(axes, units), "datasets": datasets}
    if version == "0.4":
        ms["version"] = "0.4"
    return ms


def _set_meta(group: Any, version: str, meta: dict[str, Any]) -> None:
    if version == "0.5":
        group.attrs["ome"] = {"version": "0.5", **meta}
    else:
        group.attrs.update(meta)


def _full_scale(axes: Sequence[str], yx: tuple[float, float]) -> list[float]:
    return [yx[0] if a == "y" else yx[1] if a == "x" else 1.0 for a in axes]


def write_ome_zarr(
    path: PathLike,
    image: np.ndarray,
    *,
    levels: int = 1,
    chunk: int = DEFAULT_CHUNK,
    version: str = "0.4",
    name: str | None = None,
    pixel_size: tuple[float, float] = (1.0, 1.0),
    unit: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a ``(C, H, W)`` or ``(H, W)`` image as an OME-Zarr image group with ``levels`` resolution
    levels (each half the size of the last, by striding) and axes ``c, y, x`` (or ``y, x``).

    For images that fit in memory (tests, examples, exports of a crop); :class:`LabelsWriter` writes large
    label images band by band.
    """
    if version not in ("0.4", "0.5"):
        raise DataError(f"can write OME-NGFF 0.4 or 0.5, not {version!r}")
    p = Path(path)
    arr = np.asarray(image)
    axes = ("c", "y", "x") if arr.ndim == 3 else ("y", "x")
    if arr.ndim not in (2, 3):
        raise DataError(f"write_ome_zarr takes (C, H, W) or (H, W), got shape {arr.shape}")
    group = _open_new_group(p, 3 if version == "0.5" else 2, overwrite)
    paths, scales = [], []
    level = arr
    for i in range(levels):
        if i:
            level = level[..., ::2, ::2]
        chunks = (*level.shape[:-2], min(chunk, level.shape[-2]), min(chunk, level.shape[-1]))
        a = _create_array(group, str(i), level.shape, chunks, level.dtype, axes)
        a[...] = level
        paths.append(str(i))
        scales.append(_full_scale(axes, (pixel_size[0] * 2**i, pixel_size[1] * 2**i)))
    _set_meta(
        group,
        version,
        {
            "multiscales": [
                _multiscales(name or image_stem(p), axes, paths, scales, version, units=(unit, unit))
            ]
        },
    )
    return p


def copy_image(src: OmeZarrImage, dest: PathLike, *, overwrite: bool = False) -> OmeZarrImage:
    """Copy an image group's metadata and every level, chunk row by chunk row, to ``dest`` (same Zarr and
    NGFF format; its labels are not copied). For writing labels into a copy of an image."""
    p = Path(dest)
    group = _open_new_group(p, src.zarr_format, overwrite)
    zarr = _zarr()
    source = zarr.open_group(src.path, mode="r")
    for rel in src.levels:
        a = zarr.open_array(src.path / rel, mode="r")
        out = _create_array(group, rel, a.shape, a.chunks, a.dtype, src.axes)
        iy = src.axes.index("y")
        step = int(a.chunks[iy])
        for y0 in range(0, int(a.shape[iy]), step):
            index = tuple(slice(y0, y0 + step) if i == iy else slice(None) for i in range(a.ndim))
            out[index] = a[index]
    if src.version in ("0.4", "0.5"):
        group.attrs.update(dict(source.attrs))
    else:  # an older version: the copy gets 0.4 metadata describing the same levels
        scales = [_full_scale(src.axes, sc) for sc in src.scales]
        meta = _multiscales(src.name, src.axes, src.levels, scales, "0.4", None, src.units)
        group.attrs.update({"multiscales": [meta]})
    return open_ome_zarr(p)


class LabelsWriter:
    """A label image in an OME-Zarr image's ``labels`` group, written band by band.

    ``write(y0, rows)`` stores rows ``(h, W)`` of the full-resolution labels starting at row ``y0``; bands
    must together cover the image, and a band should start at a multiple of :attr:`chunk` rows (other
    offsets work but rewrite chunks). :meth:`close` then builds the lower-resolution levels (nearest
    neighbour at the image's own level scales, when those are integer factors) band by band, and writes the
    metadata last: until then the label image is not listed in ``labels``, so a reader never sees a half
    written one.

    Args:
        image: The (already opened) image the labels belong to; written into its own folder.
        name: The label image's name (its folder under ``labels/``).
        num_classes: Label values 0 .. num_classes - 1 (picks the dtype and the colours).
        overwrite: Replace an existing label image of that name.
        instances: Object ids instead of classes (``num_classes`` is not used): uint32, and no colour per
            value in the metadata (a viewer colours each object on its own).
    """

    def __init__(
        self,
        image: OmeZarrImage,
        name: str,
        num_classes: int,
        *,
        overwrite: bool = False,
        instances: bool = False,
    ) -> None:
        if not name or "/" in name or name.startswith("."):
            raise DataError(f"invalid labels name {name!r}")
        if image.version not in ("0.4", "0.5"):
            raise DataError(
                f"{image.path} is OME-NGFF {image.version}; labels are written into 0.4 or 0.5 images only: "
                "write them into a copy (the default of `diffseg predict`), which is saved as 0.4"
            )
        zarr = _zarr()
        self.image = image
        self.name = name
        self.num_classes = int(num_classes)
        self.instances = instances
        self.dtype = np.uint32 if instances else np.uint8 if num_classes <= 256 else np.uint16
        root = zarr.open_group(image.path, mode="r+")
        fmt = image.zarr_format
        labels = root.require_group("labels")
        existing = self._listed(labels)
        if (image.path / "labels" / name).exists():
            if not overwrite:
                raise DataError(
                    f"{image.path} already has a label image {name!r}; pass --overwrite, or --labels-name another"
                )
            shutil.rmtree(image.path / "labels" / name)
            existing = [n for n in existing if n != name]
            self._set_listed(labels, existing)
        self._labels_group = labels
        self._existing = existing
        self.group = labels.create_group(name)
        self.axes = tuple(a for a in image.axes)
        shape0 = [1 if a == "c" else s for a, s in zip(self.axes, image.shapes[0], strict=True)]
        self.chunk = min(DEFAULT_CHUNK, image.height)
        chunks = [1] * len(self.axes)
        chunks[self.axes.index("y")] = self.chunk
        chunks[self.axes.index("x")] = min(DEFAULT_CHUNK, image.width)
        self.level0 = _create_array(self.group, "0", shape0, chunks, self.dtype, self.axes)
        self._fmt = fmt

    @staticmethod
    def _listed(labels_group: Any) -> list[str]:
        attrs = dict(labels_group.attrs)
        meta = attrs.get("ome", attrs) if isinstance(attrs.get("ome"), dict) else attrs
        return [str(n) for n in meta.get("labels", []) or []]

    def _set_listed(self, labels_group: Any, names: list[str]) -> None:
        if self.image.version == "0.5":
            labels_group.attrs["ome"] = {"version": "0.5", "labels": names}
        else:
            labels_group.attrs["labels"] = names

    def _index(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> tuple[Any, ...]:
        return tuple(slice(y0, y1) if a == "y" else slice(x0, x1) if a == "x" else 0 for a in self.axes)

    def write(self, y0: int, rows: np.ndarray) -> None:
        """Store full-resolution label rows ``(h, W)`` starting at row ``y0``."""
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.image.width:
            raise DataError(f"labels band of shape {rows.shape}; expected (rows, {self.image.width})")
        self.level0[self._index(y0, y0 + rows.shape[0])] = rows.astype(self.dtype, copy=False)

    def close(self) -> Path:
        """Build the lower levels, write the metadata, list the label image in ``labels``; returns its path."""
        base_scale = self.image.scales[0]
        paths, scales = ["0"], [_full_scale(self.axes, base_scale)]
        prev_factor = (1, 1)
        prev = self.level0
        for i in range(1, len(self.image.levels)):
            sy = self.image.scales[i][0] / base_scale[0]
            sx = self.image.scales[i][1] / base_scale[1]
            fy, fx = round(sy), round(sx)
            if abs(sy - fy) > 1e-6 or abs(sx - fx) > 1e-6 or fy < 1 or fx < 1:
                break  # not an integer factor of level 0: stop the pyramid here
            if fy % prev_factor[0] or fx % prev_factor[1]:
                break
            step_y, step_x = fy // prev_factor[0], fx // prev_factor[1]
            h, w = self.image.level_shape(i)
            shape = [1 if a == "c" else s for a, s in zip(self.axes, self.image.shapes[i], strict=True)]
            chunks = [1] * len(self.axes)
            chunks[self.axes.index("y")] = min(DEFAULT_CHUNK, h)
            chunks[self.axes.index("x")] = min(DEFAULT_CHUNK, w)
            arr = _create_array(self.group, str(i), shape, chunks, self.dtype, self.axes)
            band = chunks[self.axes.index("y")]
            for y0 in range(0, h, band):
                y1 = min(h, y0 + band)
                src = np.asarray(prev[self._index(y0 * step_y, y1 * step_y)])  # (rows, W): other axes indexed
                sub = src[::step_y, ::step_x][: y1 - y0, :w]
                if sub.shape[1] < w:  # a level rounded up: repeat the last column
                    sub = np.pad(sub, ((0, 0), (0, w - sub.shape[1])), mode="edge")
                if sub.shape[0] < y1 - y0:
                    sub = np.pad(sub, ((0, y1 - y0 - sub.shape[0]), (0, 0)), mode="edge")
                arr[self._index(y0, y1)] = sub
            paths.append(str(i))
            scales.append(_full_scale(self.axes, self.image.scales[i]))
            prev, prev_factor = arr, (fy, fx)
        ty, tx = self.image.translation
        translation = [ty if a == "y" else tx if a == "x" else 0.0 for a in self.axes]
        ms = _multiscales(
            self.name, self.axes, paths, scales, self.image.version, translation, self.image.units
        )
        image_label: dict[str, Any] = {"source": {"image": "../../"}}
        if not self.instances:
            image_label["colors"] = [
                {"label-value": k, "rgba": [*LABEL_COLORS[(k - 1) % len(LABEL_COLORS)], 255]}
                for k in range(1, self.num_classes)
            ]
        if self.image.version == "0.5":
            self.group.attrs["ome"] = {"version": "0.5", "multiscales": [ms], "image-label": image_label}
        else:
            self.group.attrs.update({"multiscales": [ms], "image-label": {"version": "0.4", **image_label}})
        self._set_listed(self._labels_group, [*self._existing, self.name])
        return self.image.path / "labels" / self.name


class ImageWriter:
    """A new single-level OME-Zarr image with axes ``c, y, x``, written band by band (e.g. probabilities).
    Its metadata is written by :meth:`close`, so an interrupted write is not a readable image."""

    def __init__(
        self,
        path: PathLike,
        channels: int,
        height: int,
        width: int,
        dtype: Any,
        *,
        version: str = "0.4",
        name: str | None = None,
        scale: tuple[float, float] = (1.0, 1.0),
        translation: tuple[float, float] = (0.0, 0.0),
        units: tuple[str | None, str | None] = (None, None),
        overwrite: bool = False,
    ) -> None:
        if version not in ("0.4", "0.5"):
            version = "0.4"
        self.path = Path(path)
        self.version = version
        self.axes = ("c", "y", "x")
        self.group = _open_new_group(self.path, 3 if version == "0.5" else 2, overwrite)
        chunks = (1, min(DEFAULT_CHUNK, height), min(DEFAULT_CHUNK, width))
        self.array = _create_array(self.group, "0", (channels, height, width), chunks, dtype, self.axes)
        self.chunk = chunks[1]
        self._meta = (name or image_stem(self.path), scale, translation, units)

    def write(self, y0: int, block: np.ndarray) -> None:
        """Store ``(C, h, W)`` starting at row ``y0``."""
        self.array[:, y0 : y0 + block.shape[1], :] = block

    def close(self) -> Path:
        name, scale, translation, units = self._meta
        ms = _multiscales(
            name,
            self.axes,
            ["0"],
            [_full_scale(self.axes, scale)],
            self.version,
            [0.0, translation[0], translation[1]],
            units,
        )
        _set_meta(self.group, self.version, {"multiscales": [ms]})
        return self.path
