"""Validation of ids, names and arrays, content hashing and durable file helpers for the project store.

Private to :mod:`napari_diffseg.project`; every failure is a :class:`DataError` that says what to do.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import tifffile

from napari_diffseg.base.errors import DataError
from napari_diffseg.base.fileio import atomic_write_bytes, fsync_dir
from napari_diffseg.data.imagefile import ImageRead, check_axes, drop_alpha, to_chw
from napari_diffseg.data.io import DEFAULT_MAX_PIXELS, MIN_SIDE, read_image_raw

IMAGE_ID_RE = re.compile(r"^[0-9a-f]{16}$")
"""An image id: 16 lowercase hex digits."""
SAFE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
"""Model ids, job kinds and other ids used as file or folder names."""
MAX_NAME_LENGTH = 200
MAX_LABEL = 2**32 - 1
_PROB_TOLERANCE = 1e-3
_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------------ ids and names


def check_safe_id(value: object, what: str) -> str:
    """Return ``value`` if it is a safe id (``[A-Za-z0-9_-]``, 1-128 characters), else raise DataError."""
    if not isinstance(value, str) or not SAFE_ID_RE.match(value):
        raise DataError(
            f"invalid {what} {value!r}: use 1 to 128 letters, digits, '_' or '-' (no '/', '..', spaces or "
            "absolute paths)."
        )
    return value


def check_name(value: object, what: str = "image name") -> str:
    """Return a valid image name: non-empty, at most 200 characters, no path pieces or control characters.

    Raises:
        DataError: Empty, too long, contains ``/``, ``\\``, ``..``, a control character, or starts with ``.``.
    """
    if not isinstance(value, str):
        raise DataError(f"invalid {what} {value!r}: it must be a string.")
    bad = (
        not value.strip()
        or len(value) > MAX_NAME_LENGTH
        or "/" in value
        or "\\" in value
        or ".." in value
        or value.startswith(".")
        or value != value.strip()
        or any(ord(ch) < 32 or ord(ch) == 127 for ch in value)
    )
    if bad:
        raise DataError(
            f"invalid {what} {value!r}: a name must be 1 to {MAX_NAME_LENGTH} printable characters without "
            "'/', '\\', '..', a leading '.' or surrounding spaces. Rename the file or pass another name."
        )
    return value


# ------------------------------------------------------------------------------------------ hashing


def content_id(arr: np.ndarray) -> str:
    """Image id: first 16 hex digits of sha256 over dtype name, shape and the C-order bytes of ``arr``."""
    a = np.ascontiguousarray(arr)
    h = hashlib.sha256()
    h.update(f"{a.dtype.name}|{'x'.join(str(s) for s in a.shape)}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ TIFF files


def read_tiff(path: Path, what: str) -> np.ndarray:
    """Read a TIFF written by :func:`tiff_bytes`; a missing or unreadable file is a DataError."""
    try:
        return np.asarray(tifffile.imread(path))
    except FileNotFoundError as exc:
        raise DataError(
            f"the {what} file {path} is missing: the project is damaged; run `diffseg check` on it."
        ) from exc
    except Exception as exc:
        raise DataError(
            f"cannot read the {what} file {path} ({type(exc).__name__}: {exc}): the project is damaged; run "
            "`diffseg check` on it."
        ) from exc


# ------------------------------------------------------------------------------------------ arrays


def _native(arr: np.ndarray) -> np.ndarray:
    """C-contiguous, native byte order, bool → uint8."""
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


MAX_CHANNELS = 64
"""The most channels an image may have (a larger C axis is almost always a stack read the wrong way)."""


def _check_pixels(chw: np.ndarray, what: str, max_pixels: int) -> np.ndarray:
    """Final checks on a ``(C, H, W)`` image or a ``(Z, C, H, W)`` z-stack: dtype, channel count, size,
    finite values. A stack's voxels (``Z * H * W``) must fit in ``max_pixels`` too.

    The one pixel check of every way in: files (:func:`read_raw_image` and the importer: ``diffseg init`` /
    ``import``, dataset folders) and arrays (:func:`image_from_array`: the plugin, ``POST /images``
    uploads). Every channel is kept (an alpha channel of a colour image is dropped by the reader, never
    here). Values must stay finite in float32, the type every job converts the pixels to, so a float64
    image beyond ~3.4e38 is refused here rather than failing every later job.
    """
    if not (
        chw.dtype == np.bool_ or np.issubdtype(chw.dtype, np.integer) or np.issubdtype(chw.dtype, np.floating)
    ):
        raise DataError(
            f"{what}: pixel type {chw.dtype} is not supported; use integer or floating-point pixels."
        )
    c, h, w = chw.shape[-3:]
    z = int(chw.shape[0]) if chw.ndim == 4 else 1
    if c > MAX_CHANNELS:
        raise DataError(
            f"{what}: {c} channels (shape {chw.shape}) is more than {MAX_CHANNELS}; if the first axis holds "
            "z-planes or time points, pass --axes ZYX or --axes TYX."
        )
    if h < MIN_SIDE or w < MIN_SIDE:
        raise DataError(f"{what}: {h}x{w} pixels is smaller than the minimum of {MIN_SIDE} on a side.")
    if h * w > max_pixels:
        raise DataError(f"{what}: {h}x{w} pixels is more than the limit of {max_pixels}; crop or tile it.")
    if z * h * w > max_pixels:
        raise DataError(
            f"{what}: the z-stack has {z}x{h}x{w} = {z * h * w} voxels, more than the limit of {max_pixels}; "
            "crop it in Y and X, or import fewer planes (split the stack into substacks)."
        )
    if np.issubdtype(chw.dtype, np.floating):
        bad = int(chw.size - np.count_nonzero(np.isfinite(chw)))
        if bad:
            raise DataError(f"{what}: {bad} pixel(s) are NaN or infinite; replace them (e.g. with 0) first.")
        if chw.dtype.itemsize > 4:
            with np.errstate(over="ignore"):
                big = int(chw.size - np.count_nonzero(np.isfinite(chw.astype(np.float32))))
            if big:
                limit = float(np.finfo(np.float32).max)
                peak = float(np.max(np.abs(chw)))
                raise DataError(
                    f"{what}: {big} pixel value(s) lie beyond the 32-bit floating-point range (|value| > "
                    f"{limit:.3g}; this image's largest is {peak:.3g}) that training converts images to; "
                    "rescale the image (e.g. divide it by its maximum) first."
                )
    return _native(chw)


def read_raw_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as ``(C, H, W)`` in its stored dtype (bool → uint8, alpha dropped).

    Uses the same file checks and layout rules as :func:`napari_diffseg.data.io.read_image`, which converts
    to float32; the project keeps the original dtype. (Imports use :func:`napari_diffseg.data.io.
    read_image_file`, which reads axes; this is kept for callers that want one 2D grey or RGB image.)

    Raises:
        DataError: Everything :func:`~napari_diffseg.data.io.read_image` refuses.
    """
    chw = read_image_raw(path, max_pixels=max_pixels)
    if chw.shape[0] == 4:
        chw = chw[:3]
    return _check_pixels(chw, f"Cannot use image {path}", max_pixels)


def array_read(array: object, name: str, *, axes: str | None = None) -> ImageRead:
    """An in-memory image as an :class:`ImageRead`, its axes given or taken by the stated rule.

    Without ``axes``: ``(H, W)`` is YX; ``(H, W, C)`` with C of 2 to 4 is YXC (3 or 4: colour, alpha
    dropped, as napari's RGB layers); ``(3, H, W)`` is RGB colour too (YXC, as it always was); ``(C, H, W)``
    with another C up to 4 is CYX; leading singleton axes are dropped. Anything else is ambiguous and refused with a message asking for ``axes``.

    Raises:
        DataError: Not a numeric array, an ambiguous shape without ``axes``, or ``axes`` that do not fit.
    """
    what = f"Cannot import array {name!r}"
    try:
        arr = np.asarray(array)
    except Exception as exc:
        raise DataError(f"{what}: it is not an array ({type(array).__name__}).") from exc
    if arr.dtype == object or arr.ndim == 0:
        raise DataError(f"{what}: it is not a numeric image array (dtype {arr.dtype}, shape {arr.shape}).")
    path = Path(name)
    if axes is not None:
        letters = check_axes(axes, "axes")
        while arr.ndim > len(letters) and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != len(letters):
            raise DataError(
                f"{what}: axes {letters} name {len(letters)} dimensions but the array has shape {arr.shape}; "
                "give one letter per dimension."
            )
        rgb = letters.endswith("C") and arr.shape[-1] in (3, 4)
        read = ImageRead(path, name, arr, letters, rgb=rgb, notes=(f"axes {letters} as given",))
        return drop_alpha(read) if rgb else read
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        return ImageRead(path, name, arr, "YX")
    if arr.ndim == 3:
        first_small, last_small = arr.shape[0] <= 4, arr.shape[2] <= 4
        if last_small and not first_small:
            read = ImageRead(path, name, arr, "YXC", rgb=arr.shape[2] in (3, 4))
            return drop_alpha(read) if read.rgb else read
        if first_small and not last_small:
            if arr.shape[0] == 3:  # as before: three values per pixel are colour (pass axes CYX for channels)
                colour = np.moveaxis(arr, 0, -1)
                return ImageRead(
                    path, name, colour, "YXC", rgb=True, notes=("(3, Y, X) taken as RGB colour",)
                )
            return ImageRead(path, name, arr, "CYX")
    raise DataError(
        f"{what}: shape {arr.shape} does not say which axis is which; pass its axes (OME letters T, Z, C, Y, "
        "X in storage order, e.g. CYX for channels, ZYX for a z-stack, TYX for a time-lapse)."
    )


def image_from_array(array: object, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Validate an in-memory 2D image and return it as ``(C, H, W)`` (the rules of :func:`array_read`).

    Raises:
        DataError: Not a numeric array, not 2D, ambiguous channels, too small or large, NaN / infinite values.
    """
    read = array_read(array, name)
    return _check_pixels(to_chw(read), f"Cannot import array {name!r}", max_pixels)


def check_mask(mask: object, hw: tuple[int, ...], what: str) -> np.ndarray:
    """Validate a label mask for an image of size ``hw`` and return it in the smallest unsigned dtype.

    ``hw`` is ``(H, W)`` for a 2D image and ``(Z, H, W)`` for a z-stack, whose mask is 3D.

    Raises:
        DataError: Not of ``hw``'s dimensions, a different size, non-integer / NaN / infinite values,
            negative labels, or labels above 2**32 - 1.
    """
    try:
        m = np.asarray(mask)
    except Exception as exc:
        raise DataError(f"{what}: the mask is not an array ({type(mask).__name__}).") from exc
    if len(hw) == 3:
        size = "x".join(str(n) for n in hw)
        if m.ndim != 3 or tuple(m.shape) != tuple(hw):
            raise DataError(
                f"{what}: the image is a z-stack of {size} (Z x H x W) but the mask has shape {m.shape}; a "
                "z-stack's mask is 3D with one plane per image plane (leave the planes you did not annotate "
                "empty)."
            )
    elif m.ndim != 2:
        raise DataError(f"{what}: a mask must be 2D (H, W), got shape {m.shape}.")
    elif tuple(m.shape) != tuple(hw):
        raise DataError(
            f"{what}: the mask is {m.shape[0]}x{m.shape[1]} but the image is {hw[0]}x{hw[1]} (H x W); a mask "
            "must have the image's height and width."
        )
    if m.dtype == np.bool_:
        return np.ascontiguousarray(m, dtype=np.uint8)
    if np.issubdtype(m.dtype, np.floating):
        if not np.all(np.isfinite(m)):
            raise DataError(f"{what}: the mask holds NaN or infinite values; labels must be integers.")
        if not np.all(m == np.round(m)):
            raise DataError(
                f"{what}: the mask holds non-integer values (a probability map?); threshold it to integer "
                "labels (0 = background) first."
            )
    elif not np.issubdtype(m.dtype, np.integer):
        raise DataError(f"{what}: mask dtype {m.dtype} is not supported; use integer labels.")
    lo = m.min() if m.size else 0
    hi = m.max() if m.size else 0
    if lo < 0:
        raise DataError(f"{what}: the mask holds negative labels (min {lo}); labels must be >= 0.")
    if hi > MAX_LABEL:
        raise DataError(f"{what}: label {hi} is too large (at most {MAX_LABEL}).")
    dtype = np.uint8 if hi < 2**8 else np.uint16 if hi < 2**16 else np.uint32
    return np.ascontiguousarray(m, dtype=dtype)


def check_proposal(probs: object, uncertainty: object, hw: tuple[int, ...], what: str) -> np.ndarray:
    """Validate class probabilities ``(K, H, W)`` and an uncertainty map ``(H, W)``; return them stacked.

    For a z-stack ``hw`` is ``(Z, H, W)``, the probabilities ``(Z, K, H, W)`` and the uncertainty
    ``(Z, H, W)``.

    Returns:
        float32 ``(K + 1, H, W)``: the K probability maps, then the uncertainty (a stack: ``(Z, K + 1, H, W)``).

    Raises:
        DataError: Wrong shapes, non-float or non-finite values, probabilities outside [0, 1].
    """
    p = np.asarray(probs)
    u = np.asarray(uncertainty)
    if len(hw) == 3:
        z, h, w = hw
        if p.ndim != 4 or p.shape[0] != z or p.shape[1] < 1 or tuple(p.shape[2:]) != (h, w):
            raise DataError(f"{what}: probabilities must have shape ({z}, K, {h}, {w}), got {p.shape}.")
    elif p.ndim != 3 or p.shape[0] < 1 or tuple(p.shape[1:]) != tuple(hw):
        raise DataError(f"{what}: probabilities must have shape (K, {hw[0]}, {hw[1]}), got {p.shape}.")
    if tuple(u.shape) != tuple(hw):
        raise DataError(f"{what}: the uncertainty map must have shape {tuple(hw)}, got {u.shape}.")
    for arr, label in ((p, "probabilities"), (u, "uncertainty")):
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise DataError(f"{what}: {label} must be floating point, got {arr.dtype}.")
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{what}: {label} hold NaN or infinite values.")
    if p.size and (p.min() < -_PROB_TOLERANCE or p.max() > 1 + _PROB_TOLERANCE):
        raise DataError(f"{what}: probabilities must lie in [0, 1], found [{p.min():.3g}, {p.max():.3g}].")
    k_axis = p.ndim - 3
    stacked = np.concatenate([p, np.expand_dims(u, k_axis)], axis=k_axis)
    return np.ascontiguousarray(stacked, dtype=np.float32)


def hard_mask(probs: np.ndarray) -> np.ndarray:
    """The label map of class probabilities ``(K, H, W)``: argmax, or ``p >= 0.5`` when ``K == 1``.

    A z-stack's ``(Z, K, H, W)`` gives a ``(Z, H, W)`` label map.
    """
    k_axis = probs.ndim - 3
    if probs.shape[k_axis] == 1:
        return (np.take(probs, 0, axis=k_axis) >= 0.5).astype(np.int64)
    return np.argmax(probs, axis=k_axis).astype(np.int64)


# ------------------------------------------------------------------------------------------ durable files


def ensure_dir(folder: Path) -> Path:
    """Create ``folder`` (and parents) if missing, making the new entry durable."""
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        fsync_dir(folder.parent)
    return folder


def write_file(path: Path, data: bytes) -> None:
    """Atomic, durable write: temporary file in the same folder, fsync, os.replace, fsync the folder."""
    ensure_dir(path.parent)
    atomic_write_bytes(path, data)


def copy_tree_durable(src: Path, dst: Path) -> None:
    """Copy a folder tree to ``dst`` (which must not exist) and fsync every copied file and folder."""
    shutil.copytree(src, dst, symlinks=False)
    for root, _dirs, files in os.walk(dst):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))
