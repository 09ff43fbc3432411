"""Binary bodies of the HTTP API: ``.npy`` encoding/decoding and decoding of uploaded image/mask files.

Uploads are checked with the same rules as files on disk (:mod:`napari_diffseg.data.io`): corrupt,
truncated, 0-byte, NaN, wrong number of dimensions, too many pixels. A ``.npy`` header is read and
checked *before* any pixel memory is allocated, so a small body that claims a huge shape costs nothing.
No FastAPI here, so the client uses it too.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from napari_diffseg.base.errors import DataError

__all__ = [
    "MEDIA_TYPES",
    "NPY",
    "PNG",
    "TIFF",
    "decode_image",
    "decode_mask",
    "decode_upload",
    "from_npy",
    "media_type_for",
    "npy_header",
    "sniff",
    "to_npy",
]

NPY = "application/x-npy"
TIFF = "image/tiff"
PNG = "image/png"
MEDIA_TYPES: tuple[str, ...] = (NPY, TIFF, PNG)
"""Content types accepted for image and mask uploads."""
_SUFFIX = {TIFF: ".tif", PNG: ".png"}
_NAMES = {NPY: "a .npy array", TIFF: "a TIFF file", PNG: "a PNG file"}
_MAX_HEADER = 10_000
_MAX_CHANNELS = 4


def media_type_for(path: str | os.PathLike[str]) -> str:
    """The upload content type for a file name (``.npy``, ``.tif``/``.tiff``, ``.png``).

    Raises:
        DataError: Another extension.
    """
    suffix = Path(path).suffix.lower()
    for media, ext in ((NPY, (".npy",)), (TIFF, (".tif", ".tiff")), (PNG, (".png",))):
        if suffix in ext:
            return media
    raise DataError(f"cannot upload {path}: use a .npy, .tif/.tiff or .png file (or pass an array).")


# ------------------------------------------------------------------------------------------ .npy


def to_npy(arr: np.ndarray) -> bytes:
    """Encode an array as ``.npy`` bytes (no pickles)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def npy_header(
    data: bytes | memoryview, what: str = "the body"
) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """Parse a ``.npy`` header without touching the pixel data.

    Returns:
        (shape, dtype, fortran_order, offset of the data).

    Raises:
        DataError: Not a ``.npy`` file, an unsupported version, or an unreadable header.
    """
    bio = io.BytesIO(bytes(data[: _MAX_HEADER + 16]))
    try:
        version = np.lib.format.read_magic(bio)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(bio, max_header_size=_MAX_HEADER)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(bio, max_header_size=_MAX_HEADER)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, SyntaxError, TypeError, EOFError) as exc:
        raise DataError(
            f"{what} is not a valid .npy file ({exc}); send an array saved with numpy.save, or a TIFF/PNG "
            "with the matching Content-Type."
        ) from exc
    return tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran), bio.tell()


def from_npy(data: bytes, what: str = "the body", *, max_elements: int | None = None) -> np.ndarray:
    """Decode ``.npy`` bytes safely: numeric dtypes only, size checked against the data, no pickles.

    Raises:
        DataError: A bad header, an object/structured dtype, more than ``max_elements`` values, or a
            body shorter or longer than its header says.
    """
    shape, dtype, fortran, offset = npy_header(data, what)
    if dtype.hasobject or dtype.kind not in "biuf":
        raise DataError(
            f"{what} holds {dtype} values; send integer, floating-point or boolean pixels (no objects, "
            "strings or records)."
        )
    if any(s < 0 for s in shape):
        raise DataError(f"{what} has an invalid shape {shape}.")
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise DataError(
            f"{what} has shape {shape} ({count} values), more than the limit of {max_elements}; crop or tile it."
        )
    expected = count * dtype.itemsize
    actual = len(data) - offset
    if actual != expected:
        raise DataError(
            f"{what} is truncated or padded: its header says {shape} {dtype} ({expected} bytes) but "
            f"{actual} bytes follow; send the whole file again."
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return arr.reshape(shape, order="F" if fortran else "C")


# ------------------------------------------------------------------------------------------ uploads


def sniff(data: bytes) -> str | None:
    """The media type the first bytes of a body show (``.npy``, TIFF, PNG), or None."""
    if data.startswith(b"\x93NUMPY"):
        return NPY
    if data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return TIFF
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    return None


def _check_kind(data: bytes, media_type: str, what: str) -> None:
    found = sniff(data)
    if found is not None and found != media_type:
        raise DataError(
            f"{what} is {_NAMES[found]} but its Content-Type says {media_type}; send Content-Type: {found}."
        )


def _with_file(data: bytes, media_type: str, what: str, read: object) -> np.ndarray:
    """Write the upload to a temporary file with the right suffix and read it with a data.io reader."""
    fd, name = tempfile.mkstemp(prefix="diffseg-upload-", suffix=_SUFFIX[media_type])
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            return read(Path(name))  # type: ignore[operator]
        except DataError as exc:
            message = str(exc)
            for noun in ("image", "mask"):
                message = message.replace(f"{noun} {name}", what)
            raise DataError(message.replace(name, what)) from exc
    finally:
        try:
            os.unlink(name)
        except OSError:
            pass


def _spatial_limit(shape: tuple[int, ...], what: str, max_pixels: int) -> None:
    spatial = math.prod(sorted(shape)[-2:])  # the two largest axes are the image plane
    if spatial > max_pixels:
        raise DataError(
            f"{what} has shape {shape}: more than the limit of {max_pixels} pixels; crop or tile it."
        )


def decode_image(
    data: bytes, media_type: str, *, max_pixels: int, what: str = "the uploaded image"
) -> np.ndarray:
    """Decode an uploaded image (``.npy``, TIFF or PNG) in its stored dtype.

    ``.npy`` arrays are returned as sent (the project store checks the layout, NaN and size); TIFF and PNG
    come back as ``(C, H, W)`` from :func:`napari_diffseg.data.io.read_image_raw`.

    Raises:
        DataError: An empty, corrupt or truncated body, an unsupported dtype, or more than ``max_pixels``.
    """
    if not data:
        raise DataError(f"{what} is empty (0 bytes); send the image file in the request body.")
    _check_kind(data, media_type, what)
    if media_type == NPY:
        shape, _dtype, _f, _o = npy_header(data, what)
        _spatial_limit(shape, what, max_pixels)
        return from_npy(data, what, max_elements=max_pixels * _MAX_CHANNELS)
    from napari_diffseg.data.io import read_image_raw

    return _with_file(data, media_type, what, lambda p: read_image_raw(p, max_pixels=max_pixels))


def decode_upload(
    data: bytes,
    media_type: str,
    *,
    max_pixels: int,
    axes: str | None = None,
    what: str = "the uploaded image",
) -> Any:
    """Decode an uploaded image for an import: a ``.npy`` array as sent, or a TIFF / PNG as the one
    :class:`~napari_diffseg.data.imagefile.ImageRead` it holds (axes from its metadata, or ``axes``).

    The same reading and limits as ``diffseg import``: every plane at most ``max_pixels``, the whole array
    at most :data:`~napari_diffseg.data.imagefile.MAX_ELEMENTS_FACTOR` times that.

    Raises:
        DataError: An empty, corrupt or truncated body, an unsupported dtype, too many pixels, ``axes`` that
            do not fit, or a file holding several images (series).
    """
    from napari_diffseg.data.imagefile import MAX_ELEMENTS_FACTOR, read_image_file

    if not data:
        raise DataError(f"{what} is empty (0 bytes); send the image file in the request body.")
    _check_kind(data, media_type, what)
    if media_type == NPY:
        shape, _dtype, _f, _o = npy_header(data, what)
        _spatial_limit(shape, what, max_pixels)
        return from_npy(data, what, max_elements=max_pixels * MAX_ELEMENTS_FACTOR)

    def read(path: Path) -> Any:
        reads = read_image_file(path, axes=axes, max_pixels=max_pixels)
        if len(reads) != 1:
            raise DataError(
                f"{what} holds {len(reads)} images (series); upload each as its own file, or import the file "
                "with `diffseg import`, which imports every series."
            )
        return reads[0]

    return _with_file(data, media_type, what, read)


def decode_mask(
    data: bytes, media_type: str, *, max_pixels: int, what: str = "the uploaded mask"
) -> np.ndarray:
    """Decode an uploaded label mask (``.npy``, TIFF or PNG); labels are kept (not binarised).

    Raises:
        DataError: An empty, corrupt or truncated body, not 2D (a z-stack's ``.npy``: 3D), negative /
            non-integer / NaN values, or more than ``max_pixels``.
    """
    if not data:
        raise DataError(f"{what} is empty (0 bytes); send the mask in the request body.")
    _check_kind(data, media_type, what)
    if media_type == NPY:
        shape, _dtype, _f, _o = npy_header(data, what)
        if len(shape) not in (2, 3):
            raise DataError(f"{what} must be 2D (H, W), or a z-stack's 3D (Z, H, W), got shape {shape}.")
        return from_npy(data, what, max_elements=max_pixels)
    from napari_diffseg.data.io import read_mask

    return _with_file(data, media_type, what, lambda p: read_mask(p, binary=False, max_pixels=max_pixels))


def decode_mask_with_classes(
    data: bytes, media_type: str, *, max_pixels: int, what: str = "the uploaded mask"
) -> tuple[np.ndarray, np.ndarray]:
    """Decode an instance mask sent with its class map as one ``.npy`` of shape ``(2, H, W)`` (a z-stack's
    ``(2, Z, H, W)``): ``[0]`` the object ids, ``[1]`` each pixel's class (0 = none, 1..n).

    Raises:
        DataError: Not ``.npy``, not of that shape, bad values, or more than ``max_pixels`` per array.
    """
    if not data:
        raise DataError(f"{what} is empty (0 bytes); send the mask and its class map in the request body.")
    if media_type != NPY:
        raise DataError(
            f"{what}: a mask with its class map (with_classes=true) is one .npy of shape (2, H, W) "
            f"(ids, classes); got {media_type}."
        )
    _check_kind(data, media_type, what)
    shape, _dtype, _f, _o = npy_header(data, what)
    if len(shape) not in (3, 4) or shape[0] != 2:
        raise DataError(
            f"{what}: with_classes=true needs a .npy of shape (2, H, W) (a z-stack's (2, Z, H, W)): the object "
            f"ids, then each pixel's class; got shape {shape}."
        )
    both = from_npy(data, what, max_elements=2 * max_pixels)
    return both[0], both[1]
