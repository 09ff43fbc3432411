"""Binary bodies in and out: reading an upload within the size limit, and ``.npy`` responses.

Uploads are ``.npy`` (``application/x-npy``), TIFF (``image/tiff``) or PNG (``image/png``); the content
type is checked first, then the size (``Content-Length``, then while reading). Pixels are sent back as
``.npy`` with ``X-Shape`` and ``X-Dtype`` headers. The OpenAPI fragments for both live here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Response

from napari_diffseg.backend import codec
from napari_diffseg.backend.handlers import ApiError
from napari_diffseg.backend.state import Settings

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "Upload",
    "UploadDep",
    "binary_body",
    "npy",
    "npy_response",
    "read_upload",
]

DEFAULT_MAX_UPLOAD_BYTES = 256 * 2**20
DEFAULT_MAX_PIXELS = 2**26
DRAIN_LIMIT = 16 * 2**20  # after a body passes the limit, read (and drop) this much more for a clean 413


@dataclass(frozen=True)
class Upload:
    """A request body read within the size limit, with its media type."""

    data: bytes
    media_type: str


async def read_upload(request: Request) -> Upload:
    """Read a binary body: check the content type first, then the size (Content-Length, then while reading)."""
    settings: Settings = request.app.state.diffseg.settings
    raw_type = request.headers.get("content-type", "")
    media_type = raw_type.split(";", 1)[0].strip().lower()
    if media_type not in codec.MEDIA_TYPES:
        raise ApiError(
            415,
            f"unsupported Content-Type {raw_type or '(none)'!r}: send the pixels as "
            f"{', '.join(codec.MEDIA_TYPES)}.",
            "unsupported_media_type",
        )
    limit = settings.max_upload_bytes
    too_large = ApiError(
        413,
        f"the body is larger than this backend's upload limit of {limit} bytes; crop or tile the image, or "
        "start the backend with a larger --max-upload-mb.",
        "too_large",
    )
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise ApiError(400, f"invalid Content-Length {length!r}.", "invalid")
        if int(length) > limit:
            raise too_large
    buf = bytearray()
    drained = 0
    async for chunk in request.stream():
        if drained or len(buf) + len(chunk) > limit:
            drained += len(chunk)  # keep reading (and dropping) a little so the client sees the 413
            if drained > DRAIN_LIMIT:
                break
            continue
        buf += chunk
    if drained:
        raise too_large
    return Upload(bytes(buf), media_type)


UploadDep = Annotated[Upload, Depends(read_upload)]


def binary_body(what: str) -> dict[str, Any]:
    """``openapi_extra`` for a route whose body is an image or mask file."""
    schema = {"type": "string", "format": "binary"}
    return {
        "requestBody": {
            "required": True,
            "description": f"The {what}: a .npy array, a TIFF or a PNG file (set the Content-Type).",
            "content": {media: {"schema": schema} for media in codec.MEDIA_TYPES},
        }
    }


def npy_response(what: str) -> dict[int | str, dict[str, Any]]:
    """``responses`` for a route that answers with a ``.npy`` array."""
    return {
        200: {
            "description": f"{what} as a .npy array.",
            "content": {codec.NPY: {"schema": {"type": "string", "format": "binary"}}},
            "headers": {
                "X-Shape": {"description": "Array shape, comma-separated.", "schema": {"type": "string"}},
                "X-Dtype": {"description": "numpy dtype name.", "schema": {"type": "string"}},
            },
        }
    }


def npy(data: bytes, extra: dict[str, str] | None = None) -> Response:
    """A ``.npy`` response with ``X-Shape``, ``X-Dtype`` and the ``extra`` headers."""
    shape, dtype, _f, _o = codec.npy_header(data)
    headers = {"X-Shape": ",".join(str(s) for s in shape), "X-Dtype": dtype.name, **(extra or {})}
    return Response(content=data, media_type=codec.NPY, headers=headers)
