"""The backend's errors: :class:`ApiError` and the handlers that turn every exception into JSON.

Every error answer is ``{"detail": "...", "code": "...", ...}`` (extra keys such as ``current`` for a
stale annotation save): 4xx for anything the request got wrong, 5xx only for server trouble. Store
messages are cleaned of the server's folder names before they are sent (:func:`public_message`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from napari_diffseg.backend.runner import JobStateError
from napari_diffseg.base.errors import ConfigError, DataError, DiffsegError
from napari_diffseg.project import StaleVersionError

__all__ = ["MAX_DETAIL", "ApiError", "error_response", "install_error_handlers", "public_message"]

log = logging.getLogger(__name__)

MAX_DETAIL = 2000  # longer messages are cut (with "...")


class ApiError(Exception):
    """An HTTP error with a status, a message (what went wrong and what to do) and a short code."""

    def __init__(self, status: int, detail: str, code: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.extra = extra


def error_response(
    status: int, detail: str, code: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The JSON error answer ``{"detail", "code", **extra}`` (``detail`` cut to :data:`MAX_DETAIL`)."""
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 3] + "..."
    return JSONResponse({"detail": detail, "code": code, **extra}, status_code=status, headers=headers)


def validation_detail(exc: RequestValidationError) -> str:
    """One sentence naming every parameter FastAPI's validation refused, and why."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        where = loc[0] if loc else "request"
        name = ".".join(loc[1:])
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "json_invalid":
            parts.append("the body is not valid JSON: send a JSON object with Content-Type: application/json")
        elif where == "body" and not name:
            parts.append(f"body: {msg}")
        else:
            parts.append(f"{where} parameter {name!r}: {msg}" if name else f"{where}: {msg}")
    return "invalid request: " + "; ".join(parts) + ". See /openapi.json for what each endpoint takes."


def public_message(request: Request, message: str) -> str:
    """A store message without the server's folder names (clients need not know where the project lives)."""
    state = getattr(request.app.state, "diffseg", None)
    if state is None:
        return message
    root = str(state.settings.root)
    return message.replace(f"project {root}", "this project").replace(root, "<project>")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that map our exceptions (and FastAPI's own) to JSON error answers."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, public_message(request, exc.detail), exc.code, **exc.extra)

    @app.exception_handler(StaleVersionError)
    async def _stale(request: Request, exc: StaleVersionError) -> JSONResponse:
        return error_response(409, public_message(request, str(exc)), "stale_annotation", current=exc.current)

    @app.exception_handler(JobStateError)
    async def _job_state(request: Request, exc: JobStateError) -> JSONResponse:
        return error_response(409, public_message(request, str(exc)), "conflict")

    @app.exception_handler(DataError)
    async def _data(request: Request, exc: DataError) -> JSONResponse:
        return error_response(422, public_message(request, str(exc)), "invalid")

    @app.exception_handler(ConfigError)
    async def _config(request: Request, exc: ConfigError) -> JSONResponse:
        return error_response(400, public_message(request, str(exc)), "invalid")

    @app.exception_handler(DiffsegError)
    async def _diffseg(request: Request, exc: DiffsegError) -> JSONResponse:
        return error_response(503, public_message(request, f"{exc} (try again)"), "busy")

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_detail(exc), "invalid")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            detail = f"no such endpoint: {request.method} {request.url.path}; see /openapi.json for the API."
            return error_response(404, detail, "not_found")
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; see /openapi.json for the API."
            return error_response(405, detail, "method_not_allowed", headers=dict(exc.headers or {}))
        return error_response(exc.status_code, str(exc.detail), "http", headers=dict(exc.headers or {}))

    @app.exception_handler(OSError)
    async def _os(request: Request, exc: OSError) -> JSONResponse:
        log.error("file system error", exc_info=exc)
        detail = public_message(
            request, f"the backend cannot read or write its files ({exc}); check its disk."
        )
        return error_response(503, detail, "storage")

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        return error_response(
            500, f"internal error ({type(exc).__name__}): the backend log has the details.", "internal"
        )
