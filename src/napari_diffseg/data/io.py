"""Reading and writing images and masks, normalisation and channel matching.

:func:`read_image_file` (in :mod:`napari_diffseg.data.imagefile`, re-exported here) reads every image a file
holds with its axes over T, Z, C, Y, X (:class:`ImageRead`); imports and the napari reader use it. The older
functions below keep their 2D contract for prediction and dataset folders.

Images come back as float32 ``(C, H, W)`` arrays of raw intensities with ``C`` in ``{1, 3}``; masks as int64
``(H, W)`` arrays. Every problem with a file is reported as a :class:`~napari_diffseg.base.errors.DataError`
whose message names the file, says what is wrong and what to do about it.

Writes are atomic: the bytes go to a temporary file in the destination folder, are flushed and fsynced, and
the temporary file is renamed over the destination with :func:`os.replace`, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from napari_diffseg.base.errors import DataError
from napari_diffseg.base.fileio import atomic_write_bytes, fsync_dir
from napari_diffseg.base.formats import IMAGE_EXTENSIONS, MASK_EXTENSIONS, TIFF_EXTENSIONS, tiff_bytes
from napari_diffseg.base.preprocessing import match_channels, normalize_image
from napari_diffseg.data.imagefile import (
    AXES_LETTERS,
    ImageRead,
    check_axes,
    file_stem,
    read_image_file,
    split_frames,
    to_chw,
    to_zchw,
)

__all__ = [
    "AXES_LETTERS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "MIN_SIDE",
    "TIFF_EXTENSIONS",
    "ImageRead",
    "atomic_write_bytes",
    "check_axes",
    "file_stem",
    "fsync_dir",
    "match_channels",
    "normalize_image",
    "read_image",
    "read_image_file",
    "read_image_shape",
    "read_mask",
    "read_mask_stack",
    "split_frames",
    "to_chw",
    "write_mask",
    "write_tiff",
]

PathLike = str | os.PathLike[str]

DEFAULT_MAX_PIXELS: int = 2**28
"""Default upper limit on ``H * W`` for one image (about 268 megapixels)."""
MIN_SIDE: int = 8
"""Smallest accepted image side, in pixels."""
_MAX_CHANNELS = 4
"""An axis of at most this size is taken to be the channel axis."""


# ----------------------------------------------------------------------------------------------------------
# file checks and decoding
# ----------------------------------------------------------------------------------------------------------


def _check_file(path: PathLike, allowed: Collection[str], what: str) -> Path:
    """Return ``path`` as a Path after checking it exists, is a non-empty file and has an allowed extension."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in allowed:
        hint = ""
        if what == "mask" and suffix in IMAGE_EXTENSIONS:
            hint = " Masks must be stored losslessly (JPEG changes label values): save it as PNG or TIFF."
        raise DataError(
            f"Cannot read {what} {p}: unsupported file extension {p.suffix or '(none)'!r}. "
            f"Supported {what} extensions are {', '.join(allowed)}.{hint or ' Convert the file to one of them.'}"
        )
    if not p.exists():
        raise DataError(f"Cannot read {what} {p}: the file does not exist. Check the path and the file name.")
    if not p.is_file():
        raise DataError(f"Cannot read {what} {p}: it is a directory or special file, not an image file.")
    if p.stat().st_size == 0:
        raise DataError(
            f"Cannot read {what} {p}: the file is empty (0 bytes). The copy or download probably failed; "
            "copy the file again."
        )
    return p


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in TIFF_EXTENSIONS


def _probe_shape(path: Path) -> tuple[int, ...] | None:
    """Shape of the pixel array from the file header, without decoding pixels; None if unknown."""
    try:
        if _is_tiff(path):
            with tifffile.TiffFile(path) as tif:
                return tuple(int(s) for s in tif.series[0].shape)
        return tuple(int(s) for s in iio.improps(path, plugin="pillow").shape)
    except Exception:
        # A broken header is reported (with its cause) by the full decode that follows.
        return None


def _decode(path: Path, what: str, *, palette_indices: bool = False) -> np.ndarray:
    """Decode the pixels of ``path``, turning every reader failure into a DataError with the cause chained.

    With ``palette_indices`` a palette ("P" mode) PNG gives its palette indices instead of colours, which is
    what a label image saved with a colour palette means.
    """
    try:
        if _is_tiff(path):
            return np.asarray(tifffile.imread(path))
        if palette_indices:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode == "P":
                    return np.asarray(im)
        return np.asarray(iio.imread(path, plugin="pillow"))
    except MemoryError as exc:
        raise DataError(
            f"Cannot read {what} {path}: not enough memory to decode it. Use a smaller image or tile it."
        ) from exc
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
        if "imagecodecs" in str(exc):
            advice = (
                "The TIFF uses a compression that needs the 'imagecodecs' package: `pip install imagecodecs`, "
                "or re-save it uncompressed or with zlib/deflate."
            )
        elif type(exc).__name__ == "DecompressionBombError":
            advice = "The image is too large to decode safely; use a smaller image or tile it."
        else:
            advice = "The file is corrupt, truncated or not really this format; re-export or copy it again."
        raise DataError(f"Cannot read {what} {path}: {advice} ({detail})") from exc


def _layout(shape: tuple[int, ...], path: Path, what: str) -> tuple[tuple[int, ...], int | None]:
    """Interpret a raw array shape as a 2D image with an optional channel axis.

    Leading singleton axes beyond three dimensions are dropped (TIFF writers often add them). A 3D TIFF may be ``(C, Y, X)`` or
    ``(Y, X, C)``: the channel axis is the one of size at most 4 while the others are larger. Other formats
    are always channels-last.

    Returns:
        The squeezed shape and the index of its channel axis (None for a 2D array).
    """
    shp = tuple(shape)
    while len(shp) > 3 and shp[0] == 1:
        shp = shp[1:]
    if len(shp) > 3:
        shp = tuple(s for s in shp if s != 1)
    if len(shp) < 2 or len(shp) > 3:
        raise DataError(
            f"Cannot use {what} {path}: it has {len(shape)} dimensions (shape {tuple(shape)}), but a 2D image "
            "(Y, X), optionally with a colour axis of 1, 3 or 4 channels, is expected. Save a single 2D plane "
            "(for example one slice or a projection of a stack) as its own file."
        )
    if len(shp) == 2:
        return shp, None
    first_small = shp[0] <= _MAX_CHANNELS
    last_small = shp[2] <= _MAX_CHANNELS
    if not _is_tiff(path) or (last_small and not first_small):
        channel_axis = 2
    elif first_small and not last_small:
        channel_axis = 0
    elif first_small and last_small:
        raise DataError(
            f"Cannot use {what} {path}: shape {tuple(shape)} is too small to be an image "
            f"(each side must be at least {MIN_SIDE} pixels)."
        )
    elif shp[1] <= _MAX_CHANNELS:
        raise DataError(
            f"Cannot use {what} {path}: shape {tuple(shape)} has its channel axis in the middle. "
            "Save it as (Y, X), (C, Y, X) or (Y, X, C)."
        )
    else:
        raise DataError(
            f"Cannot use {what} {path}: shape {tuple(shape)} looks like a 3D stack or time series with "
            f"{shp[0]} planes, but napari-diffseg segments 2D images. Save each plane (or a projection) as "
            "its own 2D file."
        )
    channels = shp[channel_axis]
    if channels not in (1, 3, 4) and what == "image":
        raise DataError(
            f"Cannot use image {path}: it has {channels} channels (shape {tuple(shape)}); napari-diffseg "
            "needs greyscale (1 channel) or RGB (3 channels, optionally with alpha). Save it as grey or RGB."
        )
    return shp, channel_axis


def _spatial(shape: tuple[int, ...], channel_axis: int | None) -> tuple[int, int]:
    """(H, W) of a squeezed shape given its channel axis."""
    if channel_axis is None:
        return shape[0], shape[1]
    rest = [s for i, s in enumerate(shape) if i != channel_axis]
    return rest[0], rest[1]


def _check_size(hw: tuple[int, int], path: Path, what: str, max_pixels: int) -> None:
    h, w = hw
    if h < MIN_SIDE or w < MIN_SIDE:
        raise DataError(
            f"Cannot use {what} {path}: it is {h}x{w} pixels, smaller than the minimum of {MIN_SIDE} pixels "
            "on a side. Use a larger image."
        )
    if h * w > max_pixels:
        raise DataError(
            f"Cannot use {what} {path}: it has {h}x{w} = {h * w} pixels, more than the limit of {max_pixels}. "
            "Crop or downscale it, or split it into tiles."
        )


def _to_channels_first(arr: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """Return a ``(C, H, W)`` view of a squeezed 2D or 3D array."""
    if channel_axis is None:
        return arr[np.newaxis]
    return np.moveaxis(arr, channel_axis, 0)


def _load(
    path: PathLike, what: str, allowed: Collection[str], max_pixels: int, *, palette_indices: bool = False
) -> np.ndarray:
    """Check, probe, decode and lay out a file as ``(C, H, W)`` in its stored dtype (C not yet validated)."""
    p = _check_file(path, allowed, what)
    probed = _probe_shape(p)
    if probed is not None:
        shp, channel_axis = _layout(probed, p, what)
        _check_size(_spatial(shp, channel_axis), p, what, max_pixels)
    arr = _decode(p, what, palette_indices=palette_indices)
    shp, channel_axis = _layout(arr.shape, p, what)
    _check_size(_spatial(shp, channel_axis), p, what, max_pixels)
    return _to_channels_first(arr.reshape(shp), channel_axis)


def _check_dtype(arr: np.ndarray, path: Path, what: str) -> None:
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating):
        return
    raise DataError(
        f"Cannot use {what} {path}: pixel type {arr.dtype} is not supported. Save it with 8-bit, 16-bit, "
        "32-bit integer or floating-point pixels."
    )


def _count_nonfinite(arr: np.ndarray) -> int:
    if np.issubdtype(arr.dtype, np.floating):
        return int(arr.size - np.count_nonzero(np.isfinite(arr)))
    return 0


# ----------------------------------------------------------------------------------------------------------
# public reading API
# ----------------------------------------------------------------------------------------------------------


def read_image_raw(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image as ``(C, H, W)`` in its *stored* dtype (no conversion, channels not yet validated).

    The same file checks as :func:`read_image` (missing, empty, corrupt, too large, unsupported pixel
    type); used by the project store, which keeps each image's original dtype.
    """
    arr = _load(path, "image", IMAGE_EXTENSIONS, max_pixels)
    _check_dtype(arr, Path(path), "image")
    return arr


def read_image(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, stacks: bool = False) -> np.ndarray:
    """Read a 2D image as raw float32 intensities of shape ``(C, H, W)``.

    With ``stacks``, a z-stack (axes with Z, no T) is read too, as ``(Z, C, H, W)`` (its voxels within
    ``max_pixels``); without, it is refused with what to do.

    Read with its axes by :func:`read_image_file`: grey, RGB (EXIF orientation applied, CMYK converted,
    alpha dropped, grey RGBA as one channel) or any number of fluorescence channels, kept whole; a z-stack,
    a time-lapse or a file of several series is refused with what to do. 8-bit, 16-bit, 32-bit
    integer and floating-point pixels are accepted; values are not rescaled.

    Args:
        path: The image file.
        max_pixels: Refuse images with more than this many pixels (``H * W``).

    Raises:
        DataError: Missing, empty, corrupt or truncated file; unsupported extension; not a 2D image (a stack,
            4D data, two channels); NaN or infinite pixels; a side under 8 pixels; too many pixels.
    """
    p = Path(path)
    reads = read_image_file(p, max_pixels=max_pixels)  # axes, EXIF orientation, CMYK, grey RGBA
    if len(reads) != 1:
        raise DataError(
            f"Cannot use image {p}: it holds {len(reads)} images (series); import it into a project "
            "(`diffseg import` takes every series) or save each series as its own file."
        )
    read = reads[0]
    if stacks and "Z" in read.axes and "T" not in read.axes:
        chw = to_zchw(read)
        z, _c, h, w = chw.shape
        if z * h * w > max_pixels:
            raise DataError(
                f"Cannot use image {p}: the z-stack has {z}x{h}x{w} = {z * h * w} voxels, more than the limit "
                f"of {max_pixels}; crop it in Y and X or split it into substacks."
            )
    else:
        chw = to_chw(read)
    _check_dtype(chw, p, "image")
    bad = _count_nonfinite(chw)
    if bad:
        raise DataError(
            f"Cannot use image {p}: {bad} pixel(s) are NaN or infinite. Replace them (for example with 0) "
            "before importing."
        )
    out = np.ascontiguousarray(chw, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise DataError(
            f"Cannot use image {p}: some pixel values are too large for 32-bit floating point. Rescale it."
        )
    return out


def read_image_shape(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Return the ``(H, W)`` of an image, from the file header when possible (no pixel decoding).

    Falls back to :func:`read_image` when the header cannot be read.

    Raises:
        DataError: For the same file problems as :func:`read_image` that the header reveals.
    """
    p = _check_file(path, IMAGE_EXTENSIONS, "image")
    probed = None if _is_tiff(p) else _probe_shape(p)  # a TIFF's axes need its metadata: read_image
    if probed is None:
        _, h, w = read_image(p, max_pixels=max_pixels).shape
        return h, w
    shp, channel_axis = _layout(probed, p, "image")
    hw = _spatial(shp, channel_axis)
    _check_size(hw, p, "image", max_pixels)
    return hw


def read_mask(path: PathLike, *, binary: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a mask as an int64 ``(H, W)`` array.

    A multi-channel mask is accepted when all its channels are equal (a grey mask saved as RGB); a constant
    last channel of a 2- or 4-channel mask is taken to be alpha and ignored. A palette PNG gives its palette
    indices. Float masks must hold non-negative whole numbers.

    Args:
        path: The mask file (PNG or TIFF).
        binary: Map every value > 0 (class index or instance id) to 1.
        max_pixels: Refuse masks with more than this many pixels.

    Raises:
        DataError: For the file problems listed in :func:`read_image`, channels that differ, and negative,
            non-integer, NaN or infinite values.
    """
    p = Path(path)
    chw = _load(p, "mask", MASK_EXTENSIONS, max_pixels, palette_indices=True)
    _check_dtype(chw, p, "mask")
    if chw.shape[0] > 1 and not np.all(chw == chw[:1]):
        if chw.shape[0] in (2, 4) and np.all(chw[-1] == chw[-1].flat[0]):
            chw = chw[:-1]  # a constant alpha channel carries no label information
        if chw.shape[0] > 1 and not np.all(chw == chw[:1]):
            raise DataError(
                f"Cannot use mask {p}: it has {chw.shape[0]} channels with different values, so it is not a "
                "label image. Save the mask as a single-channel (greyscale) PNG or TIFF with 0 = background."
            )
    mask = chw[0]
    if np.issubdtype(mask.dtype, np.floating):
        bad = _count_nonfinite(mask)
        if bad:
            raise DataError(
                f"Cannot use mask {p}: {bad} pixel(s) are NaN or infinite. Masks must be integers."
            )
        if not np.all(mask == np.round(mask)):
            raise DataError(
                f"Cannot use mask {p}: it holds non-integer values (it looks like a probability or intensity "
                "image). Save integer labels: 0 = background, 1.. = foreground classes or instances."
            )
    if mask.size and mask.min() < 0:
        raise DataError(
            f"Cannot use mask {p}: it holds negative values (min {mask.min()}). Labels must be >= 0 "
            "(0 = background)."
        )
    if binary:
        return (mask > 0).astype(np.int64)
    return np.ascontiguousarray(mask, dtype=np.int64)


def read_mask_stack(
    path: PathLike, shape: tuple[int, ...], *, binary: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Read the mask of a z-stack as an int64 ``(Z, H, W)`` array of the stack's ``shape``.

    The mask must be a TIFF holding one label plane per image plane (singleton axes are dropped); values are
    checked as in :func:`read_mask`.

    Raises:
        DataError: Not a TIFF, unreadable, another shape, negative, non-integer, NaN or infinite values.
    """
    p = Path(path)
    want = "x".join(str(n) for n in shape)
    if p.suffix.lower() not in TIFF_EXTENSIONS:
        raise DataError(
            f"Cannot use mask {p}: the image is a z-stack ({want}, Z x H x W), so its mask must be a TIFF with "
            "one label plane per image plane (e.g. saved by napari's Labels layer or tifffile)."
        )
    if int(np.prod(shape)) > max_pixels:
        raise DataError(f"Cannot use mask {p}: {want} voxels is more than the limit of {max_pixels}.")
    try:
        arr = np.asarray(tifffile.imread(p))
    except Exception as exc:
        raise DataError(
            f"Cannot read mask {p} ({type(exc).__name__}: {exc}); save it again as a TIFF."
        ) from exc
    arr = np.squeeze(arr) if arr.ndim > 3 else arr
    if tuple(arr.shape) != tuple(shape):
        raise DataError(
            f"Cannot use mask {p}: it has shape {arr.shape} but its z-stack is {want} (Z x H x W); a z-stack's "
            "mask has one label plane per image plane, of the image's height and width."
        )
    _check_dtype(arr, p, "mask")
    if np.issubdtype(arr.dtype, np.floating):
        if _count_nonfinite(arr) or not np.all(arr == np.round(arr)):
            raise DataError(
                f"Cannot use mask {p}: it holds NaN, infinite or non-integer values. Save integer labels: 0 = "
                "background, 1.. = foreground classes or instances."
            )
    if arr.size and arr.min() < 0:
        raise DataError(
            f"Cannot use mask {p}: it holds negative values (min {arr.min()}); labels must be >= 0."
        )
    if binary:
        return (arr > 0).astype(np.int64)
    return np.ascontiguousarray(arr, dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------


def write_tiff(path: PathLike, array: np.ndarray) -> Path:
    """Write ``array`` (any shape and numeric dtype) as a zlib-compressed TIFF, atomically.

    :func:`tifffile.imread` gives back the same shape and dtype.

    Raises:
        DataError: The extension is not ``.tif``/``.tiff``.
    """
    dest = Path(path)
    if dest.suffix.lower() not in TIFF_EXTENSIONS:
        raise DataError(f"Cannot write {dest}: a TIFF file name must end in .tif or .tiff.")
    return atomic_write_bytes(dest, tiff_bytes(np.ascontiguousarray(array)))


def write_mask(path: PathLike, mask: np.ndarray) -> Path:
    """Write a 2D label mask atomically: PNG (uint8 if max < 256 else uint16) or TIFF by extension.

    Raises:
        DataError: Unsupported extension, not 2D, negative / non-integer values, or labels too large for the
            format (PNG holds at most 65535).
    """
    dest = Path(path)
    suffix = dest.suffix.lower()
    if suffix not in MASK_EXTENSIONS:
        raise DataError(
            f"Cannot write mask {dest}: unsupported extension {dest.suffix or '(none)'!r}; "
            f"use one of {', '.join(MASK_EXTENSIONS)}."
        )
    m = np.asarray(mask)
    if m.ndim != 2:
        raise DataError(f"Cannot write mask {dest}: a mask must be 2D (H, W), got shape {m.shape}.")
    if np.issubdtype(m.dtype, np.floating):
        if not np.all(np.isfinite(m)) or not np.all(m == np.round(m)):
            raise DataError(f"Cannot write mask {dest}: it holds non-integer, NaN or infinite values.")
    elif m.dtype != np.bool_ and not np.issubdtype(m.dtype, np.integer):
        raise DataError(f"Cannot write mask {dest}: unsupported dtype {m.dtype}; use integer labels.")
    lo = m.min() if m.size else 0
    hi = int(m.max()) if m.size else 0
    if lo < 0:
        raise DataError(f"Cannot write mask {dest}: labels must be >= 0, found {lo}.")
    if hi < 2**8:
        dtype: type[np.unsignedinteger] = np.uint8
    elif hi < 2**16:
        dtype = np.uint16
    elif hi < 2**32 and suffix in TIFF_EXTENSIONS:
        dtype = np.uint32
    else:
        raise DataError(
            f"Cannot write mask {dest}: label {hi} is too large for {suffix.lstrip('.').upper()}"
            f"{' (max 65535); use .tif' if suffix == '.png' else ''}."
        )
    data = np.ascontiguousarray(m, dtype=dtype)
    if suffix in TIFF_EXTENSIONS:
        payload = tiff_bytes(data)
    else:
        payload = iio.imwrite("<bytes>", data, extension=".png")
    return atomic_write_bytes(dest, payload)
