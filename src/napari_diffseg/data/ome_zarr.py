"""OME-Zarr (OME-NGFF) images in and out, lazily: nothing here reads more pixels than it is asked for.

Reading (:func:`open_ome_zarr`): an OME-Zarr image group of NGFF version 0.1 to 0.5 (Zarr format 2 with
``.zattrs``, or Zarr format 3 with the metadata under ``zarr.json`` → ``attributes.ome``). The first
``multiscales`` entry is used; level 0 (its first dataset) is the full resolution. Axes come from the
metadata (0.3: a list of names; 0.4 / 0.5: dicts with types; 0.1 / 0.2: implicitly ``t c z y x``). Images
are 2D: a ``t`` or ``z`` axis must have one entry (a stack or a time series is refused, as for TIFF files);
the channel axis may hold 1 or 3 channels (4: the fourth is taken as alpha and dropped).

Writing: :func:`write_ome_zarr` writes a whole (small) image; :class:`LabelsWriter` creates the ``labels``
group of an image and writes a label image band by band (rows), then builds its lower-resolution levels
from level 0 band by band as well, so a 20,000 × 20,000 mask is never in memory; :func:`copy_image`
copies an image group chunk by chunk. New data are written in the input's own format (NGFF 0.4 on Zarr
format 2, or 0.5 on Zarr format 3); new images default to 0.4, which most viewers read today.

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
    "ImageWriter",
    "LabelsWriter",
    "OmeZarrImage",
    "copy_image",
    "describe",
    "image_stem",
    "is_ome_zarr",
    "open_ome_zarr",
    "read_ome_zarr",
    "write_ome_zarr",
]

PathLike = str | os.PathLike[str]

SUPPORTED_VERSIONS = ("0.1", "0.2", "0.3", "0.4", "0.5")
"""OME-NGFF versions this module reads."""
ZARR_SUFFIXES = (".zarr", ".ome.zarr")
_IMPLICIT_AXES = ("t", "c", "z", "y", "x")  # NGFF 0.1 and 0.2
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
DEFAULT_CHUNK = 1024
LABEL_COLORS = [(255, 200, 0), (0, 200, 255), (255, 0, 160), (80, 255, 80), (160, 80, 255)]


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


# ------------------------------------------------------------------------------------------------ writing


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
    """

    def __init__(self, image: OmeZarrImage, name: str, num_classes: int, *, overwrite: bool = False) -> None:
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
        self.dtype = np.uint8 if num_classes <= 256 else np.uint16
        root = zarr.open_group(image.path, mode="r+")
        fmt = image.zarr_format
        labels = root.require_group("labels")
        existing = self._listed(labels)
        if (image.path / "labels" / name).exists():
            if not overwrite:
                raise DataError(
                    f"{image.path} already has a label image {name!r}; pass --overwrite, or --labels-name another"
                )
            import shutil

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
        colors = [
            {"label-value": k, "rgba": [*LABEL_COLORS[(k - 1) % len(LABEL_COLORS)], 255]}
            for k in range(1, self.num_classes)
        ]
        image_label = {"colors": colors, "source": {"image": "../../"}}
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


def describe(img: OmeZarrImage) -> str:
    """One line: size, channels, dtype, levels, version (for messages)."""
    return (
        f"{img.height} × {img.width} px, {img.channels} channel(s), {img.dtype}, {len(img.levels)} level(s), "
        f"OME-NGFF {img.version}"
    )
