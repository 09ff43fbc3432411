"""OME-Zarr (OME-NGFF) images in and out, lazily: nothing here reads more pixels than it is asked for.

Reading (:func:`open_ome_zarr`): an OME-Zarr image group of NGFF version 0.1 to 0.5 (Zarr format 2 with
``.zattrs``, or Zarr format 3 with the metadata under ``zarr.json`` → ``attributes.ome``). The first
``multiscales`` entry is used; level 0 (its first dataset) is the full resolution. Axes come from the
metadata (0.3: a list of names; 0.4 / 0.5: dicts with types; 0.1 / 0.2: implicitly ``t c z y x``). Images
are 2D: a ``t`` or ``z`` axis must have one entry (a stack or a time series is refused, as for TIFF files);
the channel axis may hold 1 or 3 channels (4: the fourth is taken as alpha and dropped).

Writing is :mod:`napari_diffseg.data.ome_zarr_write`.

Every problem (not a Zarr folder, no ``multiscales``, an unknown version, axes that are not a 2D image)
is a :class:`~napari_diffseg.base.errors.DataError` that says what to do. ``zarr`` (version 3) is an
optional dependency (the ``zarr`` extra), imported only here and only when an OME-Zarr is opened.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_diffseg.base.errors import DataError

__all__ = [
    "SUPPORTED_VERSIONS",
    "OmeZarrImage",
    "describe",
    "image_stem",
    "is_ome_zarr",
    "open_ome_zarr",
    "read_ome_zarr",
]

PathLike = str | os.PathLike[str]

SUPPORTED_VERSIONS = ("0.1", "0.2", "0.3", "0.4", "0.5")
"""OME-NGFF versions this module reads."""
_IMPLICIT_AXES = ("t", "c", "z", "y", "x")  # NGFF 0.1 and 0.2
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def _zarr() -> Any:
    try:
        import zarr
    except ImportError as exc:  # pragma: no cover - the extra is part of the test set-up
        raise DataError(
            'reading and writing OME-Zarr needs the zarr package (version 3): pip install "napari-diffseg[zarr]"'
        ) from exc
    if int(zarr.__version__.split(".")[0]) < 3:
        raise DataError(f"OME-Zarr needs zarr >= 3 (found {zarr.__version__}): pip install -U zarr")
    return zarr


def is_ome_zarr(path: PathLike) -> bool:
    """Whether ``path`` looks like a Zarr group (a folder with ``.zgroup``, ``.zattrs`` or ``zarr.json``);
    :func:`open_ome_zarr` then checks its OME metadata. Cheap: looks at file names only."""
    p = Path(path)
    if not p.is_dir():
        return False
    return any((p / name).is_file() for name in (".zgroup", ".zattrs", "zarr.json"))


def _fail(path: Path, what: str) -> DataError:
    return DataError(f"Cannot read OME-Zarr {path}: {what}")


@dataclass(frozen=True)
class OmeZarrImage:
    """An opened OME-Zarr image group (metadata only; pixels are read on request).

    Attributes:
        path: The image group's folder.
        version: Its OME-NGFF version ("0.4", "0.5", ...).
        zarr_format: 2 or 3.
        axes: Axis names of every level, e.g. ``("c", "y", "x")``.
        levels: Dataset paths, full resolution first.
        shapes: Shape of each level.
        scales: Per level, the (y, x) scale of its ``coordinateTransformations`` (1.0 when absent).
        translation: The (y, x) translation of level 0 (0.0 when absent).
        dtype: Pixel dtype.
        name: The multiscale's ``name`` (or the folder's stem).
        labels: Names listed in the image's ``labels`` group.
        units: (y unit, x unit) or None.
    """

    path: Path
    version: str
    zarr_format: int
    axes: tuple[str, ...]
    levels: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    scales: tuple[tuple[float, float], ...]
    translation: tuple[float, float]
    dtype: np.dtype
    name: str
    labels: tuple[str, ...]
    units: tuple[str | None, str | None]

    # ------------------------------------------------------------------------------------------- geometry

    @property
    def height(self) -> int:
        return int(self.shapes[0][self.axes.index("y")])

    @property
    def width(self) -> int:
        return int(self.shapes[0][self.axes.index("x")])

    @property
    def channels(self) -> int:
        """Channels of the image as napari-diffseg reads it (alpha dropped)."""
        if "c" not in self.axes:
            return 1
        c = int(self.shapes[0][self.axes.index("c")])
        return 3 if c == 4 else c

    def level_shape(self, level: int = 0) -> tuple[int, int]:
        shape = self.shapes[self._level(level)]
        return int(shape[self.axes.index("y")]), int(shape[self.axes.index("x")])

    def _level(self, level: int) -> int:
        if not 0 <= level < len(self.levels):
            raise DataError(
                f"{self.path} has {len(self.levels)} resolution level(s) (0 = full resolution); there is no level "
                f"{level}"
            )
        return level

    def array(self, level: int = 0) -> Any:
        """The ``zarr.Array`` of a level (lazy)."""
        zarr = _zarr()
        return zarr.open_array(self.path / self.levels[self._level(level)], mode="r")

    def chunk_rows(self, level: int = 0) -> int:
        """Rows per chunk of a level (reading whole chunk rows is what is cheap)."""
        return int(self.array(level).chunks[self.axes.index("y")])

    def read(
        self, y0: int = 0, y1: int | None = None, x0: int = 0, x1: int | None = None, *, level: int = 0
    ) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` of a level as ``(C, h, w)`` in the stored dtype (alpha dropped)."""
        arr = self.array(level)
        h, w = self.level_shape(level)
        y1 = h if y1 is None else y1
        x1 = w if x1 is None else x1
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise DataError(f"region y {y0}:{y1}, x {x0}:{x1} lies outside {self.path} ({h} × {w} pixels)")
        index: list[Any] = []
        for a in self.axes:
            index.append(
                slice(y0, y1) if a == "y" else slice(x0, x1) if a == "x" else slice(None) if a == "c" else 0
            )
        block = np.asarray(arr[tuple(index)])
        if "c" not in self.axes:
            return block[np.newaxis]
        if block.shape[0] == 4:
            block = block[:3]
        return block

    def iter_rows(self, rows: int | None = None, *, level: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """``(y0, (C, rows, W) pixels)`` over a level, in bands of whole chunk rows."""
        h, _ = self.level_shape(level)
        step = rows or self.chunk_rows(level)
        for y0 in range(0, h, step):
            yield y0, self.read(y0, min(h, y0 + step), level=level)


# ------------------------------------------------------------------------------------------------ reading


def _attrs(group: Any, path: Path) -> tuple[dict[str, Any], int]:
    attrs = dict(group.attrs)
    fmt = int(group.metadata.zarr_format)
    if fmt == 3:
        ome = attrs.get("ome")
        if isinstance(ome, dict):
            return ome, fmt
        if "multiscales" in attrs:  # a 0.4-style layout written into a Zarr 3 store
            return attrs, fmt
        raise _fail(path, "its zarr.json has no 'ome' attributes (OME-NGFF 0.5 metadata)")
    return attrs, fmt


def _version(meta: dict[str, Any], ms: dict[str, Any], path: Path) -> str:
    version = meta.get("version", ms.get("version"))
    if version is None:
        if isinstance(ms.get("axes"), list) and ms["axes"] and isinstance(ms["axes"][0], dict):
            return "0.4"  # axes as objects: 0.4 semantics (some writers omit the version)
        raise _fail(
            path,
            "its multiscales metadata has no version; napari-diffseg reads OME-NGFF "
            f"{', '.join(SUPPORTED_VERSIONS)}. Re-save it with a current OME-Zarr writer.",
        )
    version = str(version)
    if version not in SUPPORTED_VERSIONS:
        raise _fail(
            path,
            f"OME-NGFF version {version!r} is not one this version of napari-diffseg reads "
            f"({', '.join(SUPPORTED_VERSIONS)}). Convert it (e.g. with ome-zarr-py or bioformats2raw) or "
            "update napari-diffseg.",
        )
    return version


def _axes(ms: dict[str, Any], version: str, ndim: int, path: Path) -> tuple[str, ...]:
    if version in ("0.1", "0.2"):
        if ndim != 5:
            raise _fail(
                path, f"OME-NGFF {version} images are 5D (t, c, z, y, x), but level 0 has {ndim} axes"
            )
        return _IMPLICIT_AXES
    raw = ms.get("axes")
    if not isinstance(raw, list) or not raw:
        raise _fail(path, "its multiscales entry has no 'axes'")
    names = []
    for a in raw:
        name = a.get("name") if isinstance(a, dict) else a
        if not isinstance(name, str):
            raise _fail(path, f"unreadable axis {a!r} in 'axes'")
        names.append(name.lower())
    if len(names) != ndim:
        raise _fail(path, f"'axes' names {len(names)} axes but level 0 has {ndim} dimensions")
    if len(set(names)) != len(names):
        raise _fail(path, f"duplicate axis names {names}")
    unknown = [n for n in names if n not in _AXIS_TYPES]
    if unknown or names[-2:] != ["y", "x"]:
        raise _fail(
            path,
            f"axes {names}: napari-diffseg reads 2D images whose last two axes are y and x (plus optional t, "
            "c, z of size 1 and c channels)",
        )
    return tuple(names)


def _scale_translation(
    ds: dict[str, Any], axes: tuple[str, ...]
) -> tuple[tuple[float, float], tuple[float, float]]:
    scale = [1.0] * len(axes)
    trans = [0.0] * len(axes)
    for t in ds.get("coordinateTransformations", []) or []:
        if t.get("type") == "scale" and isinstance(t.get("scale"), list) and len(t["scale"]) == len(axes):
            scale = [float(v) for v in t["scale"]]
        if (
            t.get("type") == "translation"
            and isinstance(t.get("translation"), list)
            and len(t["translation"]) == len(axes)
        ):
            trans = [float(v) for v in t["translation"]]
    iy, ix = axes.index("y"), axes.index("x")
    return (scale[iy], scale[ix]), (trans[iy], trans[ix])


def open_ome_zarr(path: PathLike) -> OmeZarrImage:
    """Open an OME-Zarr image group (its metadata; no pixels are read).

    Raises:
        DataError: Not a Zarr group, no ``multiscales``, an unknown NGFF version, axes that are not a 2D
            grey / RGB image (a z or t axis with more than one entry, 2 or > 4 channels), or a level whose
            array is missing.
    """
    p = Path(path)
    zarr = _zarr()
    if not p.exists():
        raise DataError(f"Cannot read OME-Zarr {p}: no such folder")
    try:
        group = zarr.open_group(p, mode="r")
    except Exception as exc:
        raise _fail(
            p,
            f"it is not a Zarr group ({type(exc).__name__}); an OME-Zarr image is a folder with .zattrs / zarr.json",
        ) from exc
    meta, fmt = _attrs(group, p)
    multiscales = meta.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        hint = " (it is a plate or well: open one of its images)" if "plate" in meta or "well" in meta else ""
        hint = hint or (" (it is a labels group: open the image it belongs to)" if "labels" in meta else "")
        raise _fail(p, f"it has no OME-NGFF 'multiscales' metadata{hint}; is it a plain Zarr array?")
    ms = multiscales[0]
    version = _version(meta, ms, p)
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise _fail(p, "its multiscales entry lists no datasets")
    levels, shapes, scales = [], [], []
    dtype = None
    axes: tuple[str, ...] = ()
    translation = (0.0, 0.0)
    for i, ds in enumerate(datasets):
        rel = ds.get("path") if isinstance(ds, dict) else None
        if not isinstance(rel, str):
            raise _fail(p, f"dataset {i} has no path")
        try:
            arr = zarr.open_array(p / rel, mode="r")
        except Exception as exc:
            raise _fail(p, f"level {i} (path {rel!r}) is missing or not a Zarr array") from exc
        if i == 0:
            axes = _axes(ms, version, arr.ndim, p)
            dtype = np.dtype(arr.dtype)
        elif arr.ndim != len(axes):
            raise _fail(p, f"level {i} has {arr.ndim} dimensions, level 0 has {len(axes)}")
        sc, tr = _scale_translation(ds, axes)
        if i == 0:
            translation = tr
        levels.append(rel)
        shapes.append(tuple(int(s) for s in arr.shape))
        scales.append(sc)
    assert dtype is not None
    shape0 = dict(zip(axes, shapes[0], strict=True))
    for a in ("t", "z"):
        if shape0.get(a, 1) != 1:
            kind = "planes (a z-stack)" if a == "z" else "time points"
            raise _fail(
                p,
                f"it has {shape0[a]} {kind}; napari-diffseg segments 2D images. Save one plane as its own "
                "OME-Zarr (or TIFF) and use that.",
            )
    c = shape0.get("c", 1)
    if c not in (1, 3, 4):
        raise _fail(p, f"it has {c} channels; napari-diffseg reads grey (1), RGB (3) or RGBA (4) images")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == np.bool_):
        raise _fail(p, f"pixel type {dtype} is not a number type")
    labels: tuple[str, ...] = ()
    if (p / "labels").is_dir():
        try:
            lmeta, _ = _attrs(zarr.open_group(p / "labels", mode="r"), p / "labels")
            labels = tuple(str(n) for n in lmeta.get("labels", []) or [])
        except DataError:
            labels = ()
        except Exception:
            labels = ()
    units: list[str | None] = [None, None]
    raw_axes = ms.get("axes") if version not in ("0.1", "0.2", "0.3") else None
    if isinstance(raw_axes, list):
        for a in raw_axes:
            if isinstance(a, dict) and a.get("name") in ("y", "x"):
                units[0 if a["name"] == "y" else 1] = a.get("unit")
    return OmeZarrImage(
        path=p,
        version=version,
        zarr_format=fmt,
        axes=axes,
        levels=tuple(levels),
        shapes=tuple(shapes),
        scales=tuple(scales),
        translation=translation,
        dtype=dtype,
        name=str(ms.get("name") or image_stem(p)),
        labels=labels,
        units=(units[0], units[1]),
    )


def image_stem(p: Path) -> str:
    name = p.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def read_ome_zarr(
    path: PathLike, *, level: int = 0, region: Sequence[int] | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """Read one level (default: full resolution) or a region ``(y, x, height, width)`` of it into memory as
    ``(C, H, W)`` in its stored dtype.

    Raises:
        DataError: See :func:`open_ome_zarr`; a region outside the image; more than ``max_pixels`` pixels
            (the message says how to read less).
    """
    img = open_ome_zarr(path)
    h, w = img.level_shape(level)
    y0, x0, rh, rw = (0, 0, h, w) if region is None else (int(v) for v in region)
    if rh < 1 or rw < 1:
        raise DataError(f"region {tuple(region or ())} of {path}: height and width must be positive")
    if max_pixels is not None and rh * rw > max_pixels:
        raise DataError(
            f"{path}: level {level} is {rh} × {rw} = {rh * rw / 1e6:.0f} M pixels, more than the {max_pixels / 1e6:.0f} "
            "M a project image may have. Import a region (--region Y,X,HEIGHT,WIDTH) or a lower-resolution "
            "level (--level N); `diffseg predict` segments the whole image tile by tile."
        )
    return img.read(y0, y0 + rh, x0, x0 + rw, level=level)


def describe(img: OmeZarrImage) -> str:
    """One line: size, channels, dtype, levels, version (for messages)."""
    return (
        f"{img.height} × {img.width} px, {img.channels} channel(s), {img.dtype}, {len(img.levels)} level(s), "
        f"OME-NGFF {img.version}"
    )
