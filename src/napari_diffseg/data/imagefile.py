"""Reading image files with their axes: what every import, the upload endpoint and the napari reader use.

:func:`read_image_file` returns one :class:`ImageRead` per image the file holds (one per OME series), each
with its array in **storage order** and an axes string over T, Z, C, Y, X (OME letters; colour samples
stored last are ``"YXC"``). Axes come from the file's metadata where it has some (tifffile's series axes
for ImageJ and OME-TIFF). Where a file says nothing (a plain multi-page TIFF), a stated rule applies and
the read says what it assumed, so the caller can print it and the user can pass ``axes=`` instead:

- a plain stack of 2 to 4 pages is taken as channels (``"CYX"``), of more pages as a z-stack (``"ZYX"``);
- a trailing axis of 2 to 4 entries is colour (``"YXC"``) when the file says RGB, else channels;
- PNG / JPEG / BMP are read with Pillow: the EXIF orientation is applied, CMYK and palette images are
  converted to RGB, an RGBA image whose red, green and blue are equal and whose alpha is opaque is grey,
  and an alpha channel that carries nothing else is dropped.

Nothing is silently reduced to its first page or series, and a file whose axes cannot be mapped is
refused with a message saying how to pass ``--axes``. Every failure is a
:class:`~napari_diffseg.base.errors.DataError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_diffseg.base.errors import DataError
from napari_diffseg.base.formats import IMAGE_EXTENSIONS, TIFF_EXTENSIONS

__all__ = [
    "AXES_LETTERS",
    "ImageRead",
    "check_axes",
    "drop_alpha",
    "file_stem",
    "read_image_file",
    "split_frames",
    "to_chw",
    "to_zchw",
]

PathLike = str | os.PathLike[str]

AXES_LETTERS = "TZCYX"
"""The OME axis letters an axes string may hold (each at most once)."""
MAX_ELEMENTS_FACTOR = 16
"""A file may hold at most this many times the per-image pixel limit in all its planes together."""
_PLANES_AS_CHANNELS = 4
"""A plain stack without axis metadata of at most this many pages is taken as channels, else as Z."""
_TIFF_LETTERS = {"T": "T", "Z": "Z", "C": "C", "S": "C", "Y": "Y", "X": "X"}


@dataclass(frozen=True)
class ImageRead:
    """One image read from a file, in storage order.

    Attributes:
        path: The file.
        name: The image name: the file stem (``.ome.tif`` dropped), ``stem-sN`` for series N of a
            multi-series file, ``…-t000`` for a frame from :func:`split_frames`.
        data: The pixels in their stored dtype, axes in storage order.
        axes: One letter per dimension of ``data`` from ``TZCYX`` (e.g. ``"YX"``, ``"CYX"``, ``"YXC"``,
            ``"ZYX"``, ``"TYX"``).
        rgb: The C axis holds colour samples (red, green, blue), not fluorescence channels.
        channel_names: Names of the C entries from the metadata (empty when the file has none).
        pixel_size: (Y, X) size of a pixel in micrometres, where the metadata has it.
        z_spacing: Distance between Z planes in micrometres, where the metadata has it.
        notes: What the reading assumed or converted, in words (print them at import).
        ambiguous: The axes were assumed, not read: ``axes=`` (``--axes``) may be needed.
        series: The series index in a multi-series file (None for a file with one image).
    """

    path: Path
    name: str
    data: np.ndarray
    axes: str
    rgb: bool = False
    channel_names: tuple[str, ...] = ()
    pixel_size: tuple[float, float] | None = None
    z_spacing: float | None = None
    notes: tuple[str, ...] = ()
    ambiguous: bool = False
    series: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def channels(self) -> int:
        """Entries of the C axis (1 without one)."""
        return self.shape[self.axes.index("C")] if "C" in self.axes else 1

    def describe(self) -> str:
        """``name: axes ZYX, shape (3, 128, 160) uint16`` and the notes, for messages."""
        text = f"{self.name}: axes {self.axes}, shape {self.shape} {self.dtype}"
        return text + (f" ({'; '.join(self.notes)})" if self.notes else "")


# ------------------------------------------------------------------------------------------ axes strings


def check_axes(axes: object, what: str = "--axes") -> str:
    """Validate an axes string: letters from ``TZCYX`` (any case), each at most once, Y and X present.

    Returns:
        The axes in upper case.

    Raises:
        DataError: Another letter, a repeated letter, or no Y or X.
    """
    if not isinstance(axes, str) or not axes.strip():
        raise DataError(f"{what} must be a string of OME axis letters such as ZYX, CYX or TYX.")
    text = axes.strip().upper()
    bad = sorted({ch for ch in text if ch not in AXES_LETTERS})
    if bad or len(set(text)) != len(text) or "Y" not in text or "X" not in text:
        raise DataError(
            f"{what} {axes!r} is not a valid axes string: use the letters T (time), Z (planes), C (channels), "
            "Y and X, each at most once, with Y and X present, one letter per dimension in storage order "
            "(e.g. ZYX, CYX, TYX, YXC)."
        )
    return text


def file_stem(path: PathLike) -> str:
    """The file name without its extension; ``.ome.tif`` / ``.ome.tiff`` drop both suffixes."""
    name = Path(path).name
    lower = name.lower()
    for ext in (".ome.tiff", ".ome.tif"):
        if lower.endswith(ext):
            return name[: -len(ext)]
    return Path(path).stem


# ------------------------------------------------------------------------------------------ reading


def read_image_file(path: PathLike, *, axes: str | None = None, max_pixels: int = 2**28) -> list[ImageRead]:
    """Read every image a file holds, with its axes (see the module docstring for the rules).

    Args:
        path: A PNG, JPEG, BMP or TIFF file (OME-TIFF and ImageJ TIFF included).
        axes: Override the axes of every image in the file: one letter per dimension of what the file
            holds (singleton dimensions dropped), e.g. ``"ZYX"`` for a plain 6-page TIFF of planes.
        max_pixels: Refuse images with more than this many pixels in one plane (``Y * X``), and files with
            more than :data:`MAX_ELEMENTS_FACTOR` times that many values.

    Raises:
        DataError: A missing, empty, corrupt or truncated file; an unsupported extension; axes that cannot
            be mapped or an ``axes`` that does not fit the file; a file too large for the limits.
    """
    from napari_diffseg.data.io import _check_file

    p = _check_file(path, IMAGE_EXTENSIONS, "image")
    override = None if axes is None else check_axes(axes)
    try:
        if p.suffix.lower() in TIFF_EXTENSIONS:
            reads = _read_tiff(p, max_pixels, override)
        else:
            reads = [_read_pillow(p, max_pixels)]
    except DataError:
        raise
    except MemoryError as exc:
        raise DataError(
            f"Cannot read image {p}: not enough memory to decode it. Use a smaller image."
        ) from exc
    except Exception as exc:
        advice = "The file is corrupt, truncated or not really this format; re-export or copy it again."
        if "imagecodecs" in str(exc):
            advice = (
                "The TIFF uses a compression that needs the 'imagecodecs' package: `pip install imagecodecs`, "
                "or re-save it uncompressed or with zlib/deflate."
            )
        raise DataError(f"Cannot read image {p}: {advice} ({type(exc).__name__}: {exc})") from exc
    if override is not None:
        reads = [_override(r, override) for r in reads]
    for r in reads:
        _check_plane_size(r, max_pixels)
    return reads


def _override(read: ImageRead, axes: str) -> ImageRead:
    if len(axes) != read.data.ndim:
        how = "no axis metadata" if "?" in read.axes else f"read as {read.axes}"
        raise DataError(
            f"Cannot use --axes {axes} for {read.path}: {read.name} has {read.data.ndim} dimensions (shape "
            f"{read.shape}, {how}); give one letter per dimension, e.g. {_example_axes(read.data.ndim)}."
        )
    rgb = axes.endswith("C") and read.shape[-1] in (3, 4) and read.rgb
    names = (
        read.channel_names if "C" in axes and len(read.channel_names) == read.shape[axes.index("C")] else ()
    )
    return replace(
        read, axes=axes, rgb=rgb, channel_names=names, notes=(f"axes {axes} as given",), ambiguous=False
    )


def _example_axes(ndim: int) -> str:
    return {2: "YX", 3: "ZYX or CYX or TYX", 4: "TZYX or ZCYX"}.get(ndim, "TZCYX")


def _check_plane_size(read: ImageRead, max_pixels: int) -> None:
    from napari_diffseg.data.io import MIN_SIDE

    h, w = read.shape[read.axes.index("Y")], read.shape[read.axes.index("X")]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise DataError(
            f"Cannot use image {read.path}: {read.name} is {h}x{w} pixels (axes {read.axes}, shape "
            f"{read.shape}), smaller than the minimum of {MIN_SIDE} on a side. If the axes are wrong, pass "
            "--axes (e.g. --axes YXC or --axes CYX)."
        )
    if h * w > max_pixels:
        raise DataError(
            f"Cannot use image {read.path}: it has {h}x{w} = {h * w} pixels per plane, more than the limit of "
            f"{max_pixels}. Crop or downscale it, or split it into tiles."
        )


def _check_elements(path: Path, shape: tuple[int, ...], max_pixels: int) -> None:
    total = int(np.prod(shape, dtype=np.int64))
    limit = max_pixels * MAX_ELEMENTS_FACTOR
    if total > limit:
        raise DataError(
            f"Cannot use image {path}: it holds {total} values (shape {shape}), more than the limit of {limit} "
            f"({MAX_ELEMENTS_FACTOR} x {max_pixels} pixels). Split it into smaller files (fewer planes, "
            "frames or a crop)."
        )


# ------------------------------------------------------------------------------------------ TIFF


def _read_tiff(path: Path, max_pixels: int, override: str | None = None) -> list[ImageRead]:
    import tifffile

    stem = file_stem(path)
    with tifffile.TiffFile(path) as tif:
        series = list(tif.series)
        if not series:
            raise DataError(f"Cannot read image {path}: the TIFF holds no image. Re-export it.")
        ome = _ome_meta(tif) if tif.is_ome else []
        reads = []
        for i, s in enumerate(series):
            shape = tuple(int(n) for n in s.shape)
            _check_elements(path, shape, max_pixels)
            data = np.asarray(s.asarray())
            name = stem if len(series) == 1 else f"{stem}-s{i}"
            index = None if len(series) == 1 else i
            if tif.is_imagej or tif.is_ome:
                read = _with_axes(path, name, data, str(s.axes), photometric_rgb=_is_rgb(s), series=index)
                if tif.is_imagej:
                    read = replace(read, **_imagej_meta(tif, read))
                elif i < len(ome):
                    read = replace(read, **_ome_fields(ome[i], read))
            elif override is not None:  # the user's axes replace the plain-file rules
                while data.ndim > len(override) and 1 in data.shape:
                    data = data.reshape(tuple(np.delete(data.shape, data.shape.index(1))))
                read = ImageRead(path, name, data, "".join("?" * data.ndim), rgb=_is_rgb(s), series=index)
            else:
                read = _plain_tiff(path, name, data, str(s.axes), _is_rgb(s), index)
            reads.append(read)
    return reads


def _is_rgb(series: Any) -> bool:
    try:
        return int(series.keyframe.photometric) == 2  # RGB
    except Exception:
        return False


def _with_axes(
    path: Path, name: str, data: np.ndarray, raw_axes: str, *, photometric_rgb: bool, series: int | None
) -> ImageRead:
    """A read whose axes come from ImageJ / OME metadata (singleton axes other than Y, X dropped)."""
    if len(raw_axes) != data.ndim:
        raise DataError(
            f"Cannot use image {path}: its metadata names axes {raw_axes!r} for shape {data.shape}; pass "
            "--axes with one letter per dimension."
        )
    keep = [i for i, a in enumerate(raw_axes) if a in "YX" or data.shape[i] != 1]
    data = data.reshape(tuple(data.shape[i] for i in keep))
    letters = [raw_axes[i] for i in keep]
    unknown = [a for a in letters if a not in _TIFF_LETTERS]
    mapped = [_TIFF_LETTERS.get(a, a) for a in letters]
    if unknown or len(set(mapped)) != len(mapped):
        raise DataError(
            f"Cannot use image {path}: its axes {''.join(letters)} (shape {data.shape}) cannot be mapped to T, Z, "
            f"C, Y, X{' (' + ', '.join(unknown) + ' unknown)' if unknown else ' (two channel axes)'}. Re-export "
            "it from Fiji as a hyperstack, or pass --axes with one letter per dimension."
        )
    axes = "".join(mapped)
    rgb = "S" in letters and photometric_rgb and axes.endswith("C") and data.shape[-1] in (3, 4)
    read = ImageRead(path, name, data, axes, rgb=rgb, series=series)
    return drop_alpha(read) if rgb else read


def _plain_tiff(
    path: Path, name: str, data: np.ndarray, raw_axes: str, photometric_rgb: bool, series: int | None
) -> ImageRead:
    """A TIFF without axis metadata: the stated rules of the module docstring."""
    shape = data.shape
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim > 3:
        data = data.reshape(tuple(s for s in data.shape if s != 1))
    if data.ndim == 2:
        return ImageRead(path, name, data, "YX", series=series)
    if data.ndim != 3:
        raise DataError(
            f"Cannot use image {path}: shape {shape} has {len(shape)} dimensions and no axis metadata, so its "
            f"axes cannot be known. Pass --axes with one letter per dimension (e.g. TZYX), or re-export it "
            "as an ImageJ hyperstack or OME-TIFF."
        )
    first, last = data.shape[0], data.shape[2]
    if photometric_rgb and raw_axes.endswith("S") and last in (3, 4):
        return drop_alpha(ImageRead(path, name, data, "YXC", rgb=True, series=series))
    if photometric_rgb and raw_axes.startswith("S") and first in (3, 4):
        rgb = np.ascontiguousarray(np.moveaxis(data, 0, -1))
        note = "planar RGB, read as colour"
        return drop_alpha(ImageRead(path, name, rgb, "YXC", rgb=True, notes=(note,), series=series))
    if last <= _PLANES_AS_CHANNELS < first:
        note = f"{last} values per pixel without axis metadata, taken as channels (YXC); override with --axes"
        return ImageRead(path, name, data, "YXC", notes=(note,), ambiguous=True, series=series)
    if first <= _PLANES_AS_CHANNELS:
        note = (
            f"{first} pages without axis metadata, taken as {first} channels (CYX); if they are z-planes "
            "or time points pass --axes ZYX or --axes TYX"
        )
        return ImageRead(path, name, data, "CYX", notes=(note,), ambiguous=True, series=series)
    note = (
        f"{first} pages without axis metadata, taken as Z (ZYX); if they are time points or channels pass "
        "--axes TYX or --axes CYX"
    )
    return ImageRead(path, name, data, "ZYX", notes=(note,), ambiguous=True, series=series)


def drop_alpha(read: ImageRead) -> ImageRead:
    """RGBA (YXC, 4): grey when R = G = B and alpha is opaque; else alpha dropped."""
    data = read.data
    if data.shape[-1] != 4:
        return read
    rgb, alpha = data[..., :3], data[..., 3]
    opaque = np.all(alpha == alpha.flat[0])
    if opaque and np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        grey = np.ascontiguousarray(rgb[..., 0])
        note = "RGBA with equal red, green and blue and an opaque alpha: read as grey (1 channel)"
        return replace(read, data=grey, axes=read.axes[:-1], rgb=False, notes=(*read.notes, note))
    note = "alpha channel dropped" if opaque else "alpha channel dropped (it is not opaque everywhere)"
    return replace(read, data=np.ascontiguousarray(rgb), notes=(*read.notes, note))


def _imagej_meta(tif: Any, read: ImageRead) -> dict[str, Any]:
    meta = tif.imagej_metadata or {}
    out: dict[str, Any] = {}
    labels = meta.get("Labels")
    if "C" in read.axes and isinstance(labels, list | tuple) and len(labels) >= read.channels:
        out["channel_names"] = tuple(str(x) for x in labels[: read.channels])
    unit = str(meta.get("unit", "")).lower()
    scale = {"um": 1.0, "µm": 1.0, "micron": 1.0, "\\u00B5m": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit)
    size = _resolution_size(tif.pages[0])
    if scale is not None and size is not None:
        out["pixel_size"] = (size[0] * scale, size[1] * scale)
        spacing = meta.get("spacing")
        if "Z" in read.axes and isinstance(spacing, int | float) and spacing > 0:
            out["z_spacing"] = float(spacing) * scale
    return out


def _resolution_size(page: Any) -> tuple[float, float] | None:
    """(Y, X) pixel size in the file's unit from the resolution tags, None when absent or 1 px per unit."""
    try:
        xr, yr = page.tags["XResolution"].value, page.tags["YResolution"].value
        x = xr[1] / xr[0]
        y = yr[1] / yr[0]
    except Exception:
        return None
    if x <= 0 or y <= 0 or (x == 1 and y == 1):
        return None
    return float(y), float(x)


def _ome_meta(tif: Any) -> list[dict[str, Any]]:
    """The OME ``Image`` elements of the file as dicts (empty when the XML cannot be read)."""
    import tifffile

    try:
        doc = tifffile.xml2dict(tif.ome_metadata)
        images = doc["OME"]["Image"]
    except Exception:
        return []
    return images if isinstance(images, list) else [images]


def _ome_fields(image: dict[str, Any], read: ImageRead) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pixels = image.get("Pixels", {}) if isinstance(image, dict) else {}
    channels = pixels.get("Channel", [])
    channels = channels if isinstance(channels, list) else [channels]
    names = [c.get("Name") for c in channels if isinstance(c, dict)]
    if "C" in read.axes and len(names) == read.channels and all(isinstance(n, str) and n for n in names):
        out["channel_names"] = tuple(str(n) for n in names)
    scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}
    ux = scale.get(str(pixels.get("PhysicalSizeXUnit", "µm")))
    uy = scale.get(str(pixels.get("PhysicalSizeYUnit", "µm")))
    sx, sy = pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")
    if isinstance(sx, int | float) and isinstance(sy, int | float) and ux and uy and sx > 0 and sy > 0:
        out["pixel_size"] = (float(sy) * uy, float(sx) * ux)
    sz, uz = pixels.get("PhysicalSizeZ"), scale.get(str(pixels.get("PhysicalSizeZUnit", "µm")))
    if "Z" in read.axes and isinstance(sz, int | float) and sz > 0 and uz:
        out["z_spacing"] = float(sz) * uz
    return out


# ------------------------------------------------------------------------------------------ PNG, JPEG, BMP


def _read_pillow(path: Path, max_pixels: int) -> ImageRead:
    from PIL import Image, ImageOps

    name = file_stem(path)
    with Image.open(path) as im:
        frames = int(getattr(im, "n_frames", 1))
        if frames > 1:
            raise DataError(
                f"Cannot use image {path}: it holds {frames} frames (an animated {im.format}); napari-diffseg "
                "would read only the first. Save the frames as a multi-page TIFF (ImageJ hyperstack) instead."
            )
        w, h = im.size
        if h * w > max_pixels:
            raise DataError(
                f"Cannot use image {path}: it has {h}x{w} = {h * w} pixels, more than the limit of "
                f"{max_pixels}. Crop or downscale it, or split it into tiles."
            )
        notes: list[str] = []
        orientation = im.getexif().get(0x0112, 1)
        upright = ImageOps.exif_transpose(im)
        if orientation not in (None, 1):
            notes.append(f"EXIF orientation {orientation} applied")
        mode = upright.mode
        if mode == "CMYK":
            upright = upright.convert("RGB")
            notes.append("CMYK converted to RGB")
        elif mode == "P":
            upright = upright.convert("RGBA" if "transparency" in upright.info else "RGB")
        elif mode in ("LA", "La"):
            upright = upright.convert("L")
            notes.append("alpha channel dropped")
        elif mode in ("YCbCr", "LAB", "HSV", "RGBa", "PA"):
            upright = upright.convert("RGB")
            notes.append(f"{mode} converted to RGB")
        data = np.asarray(upright)
        mode = upright.mode
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if data.ndim == 2:
        return ImageRead(path, name, np.ascontiguousarray(data), "YX", notes=tuple(notes))
    read = ImageRead(path, name, np.ascontiguousarray(data), "YXC", rgb=True, notes=tuple(notes))
    return drop_alpha(read)


# ------------------------------------------------------------------------------------------ shaping


def split_frames(read: ImageRead) -> list[ImageRead]:
    """A time-lapse as one image per time point, named ``name-t000``, ``name-t001``... (no T: ``[read]``)."""
    if "T" not in read.axes:
        return [read]
    t = read.axes.index("T")
    axes = read.axes.replace("T", "")
    width = max(3, len(str(read.shape[t] - 1)))
    return [
        replace(
            read,
            name=f"{read.name}-t{i:0{width}d}",
            data=np.ascontiguousarray(np.take(read.data, i, axis=t)),
            axes=axes,
        )
        for i in range(read.shape[t])
    ]


def to_chw(read: ImageRead) -> np.ndarray:
    """The pixels of a 2D image (axes YX, CYX, YXC or another order of C, Y, X) as ``(C, Y, X)``.

    Raises:
        DataError: The image has a Z or T axis (the message names its axes and what to do).
    """
    extra = [a for a in read.axes if a not in "CYX"]
    if extra:
        kind = "a z-stack" if "Z" in extra else "a time-lapse"
        raise DataError(
            f"Cannot use image {read.path}: {read.name} is {kind} (axes {read.axes}, shape {read.shape}) "
            "where one 2D image is expected: read it as a stack (to_zchw; `diffseg import` and `predict` do) "
            "or split it into planes. If the planes are really channels or time points, pass --axes "
            f"{read.axes.replace('Z', 'C')} or --axes {read.axes.replace('Z', 'T')}."
        )
    order = [read.axes.index(a) for a in "CYX" if a in read.axes]
    arr = np.transpose(read.data, order)
    if "C" not in read.axes:
        arr = arr[np.newaxis]
    return np.ascontiguousarray(arr)


def to_zchw(read: ImageRead) -> np.ndarray:
    """The pixels of a z-stack (axes ZYX, ZCYX or another order of Z, C, Y, X) as ``(Z, C, Y, X)``.

    Raises:
        DataError: The image has no Z axis, or a T axis (split time points first: :func:`split_frames`).
    """
    if "Z" not in read.axes or "T" in read.axes:
        raise DataError(
            f"Cannot use image {read.path}: {read.name} (axes {read.axes}) is not a z-stack of one time point."
        )
    order = [read.axes.index(a) for a in "ZCYX" if a in read.axes]
    arr = np.transpose(read.data, order)
    if "C" not in read.axes:
        arr = arr[:, np.newaxis]
    return np.ascontiguousarray(arr)
