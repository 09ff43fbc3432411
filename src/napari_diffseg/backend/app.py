"""The backend's HTTP API (FastAPI) over one project store; see DESIGN.md §2.4.

Everything lives under ``/api/v1``; ``/openapi.json`` describes every endpoint. JSON bodies are the
pydantic models of :mod:`.schemas`; pixels travel as ``.npy`` (``application/x-npy``; responses carry
``X-Shape`` and ``X-Dtype`` headers), uploads may also be TIFF (``image/tiff``) or PNG (``image/png``).

Endpoints (prefix ``/api/v1``)::

    GET  /health                                   liveness, running / queued job counts
    GET  /project                                  counts, schema version, active model, limits
    GET  /images?state=&split=                     images with state, uncertainty, split, last edit Dice
    POST /images?name=&split=                      upload an image (binary body); 201 new, 200 known pixels
    GET  /images/{ref}                             one image (ref = id or unique name)
    GET  /images/{ref}/pixels                      its pixels (C, H, W) as .npy
    POST /images/{ref}/state                       {"state": "excluded"} rejects an image (no training,
                                                   skipped by /next); {"state": "included"} undoes it
    GET  /images/{ref}/annotations                 every annotation version
    GET  /images/{ref}/annotations/{version}/pixels   one version's mask as .npy
    POST /images/{ref}/annotations?replaces=&kind=&proposal_id=&author=
                                                   save a new version (binary mask body); 201, or 409
                                                   {"detail", "current"} when `replaces` is stale. A
                                                   ground-truth mask for an uploaded image is saved here
                                                   with kind=ground_truth.
    GET  /images/{ref}/proposal?model_id=          the latest proposal's record (404 code no_proposal)
    GET  /images/{ref}/proposal/pixels?part=probs|uncertainty|mask&model_id=   .npy (cached file read)
    POST /proposals                                {ids, steps, samples, rounds, ...} → 202 propose job
    POST /jobs                                     {kind, params} → 202 job
    GET  /jobs?state=                              jobs, oldest first
    GET  /jobs/{id}                                one job
    GET  /jobs/{id}/events?since=N&limit=M         events after a cursor, with the job's state
    GET  /jobs/{id}/stream?since=N                 server-sent events: history after `since`, then live
                                                   events; ends (event "end") when the job ends
    POST /jobs/{id}/cancel                         202; a running job stops at its next step
    POST /jobs/{id}/resume                         202; queued again, continues from its checkpoints
    GET  /models                                   models with metrics
    GET  /models/{id}                              one model
    POST /models/{id}/activate                     make it the active model
    GET  /models/{id}/weights                      weights.safetensors
    GET  /next?split=&strategy=                    the image to review next (highest uncertainty, or a
                                                   draw weighted by it: strategy=power) or 204

Errors are always JSON ``{"detail": "...", "code": "..."}`` with a 4xx status for anything the request
got wrong (400 bad parameter, 401 token, 404 unknown resource, 409 stale save or job state, 413 body
too large, 415 content type, 422 unusable content) and 5xx only for server trouble.

Handlers that touch SQLite or files are plain ``def`` (FastAPI runs them in its thread pool), and the
asynchronous ones (reading an upload, streaming events) hand every store access to the thread pool, so
the event loop never blocks. Each pool thread opens its own :class:`~napari_diffseg.project.Project`
connection (WAL: readers never wait for a writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from napari_diffseg import __version__
from napari_diffseg.backend import codec
from napari_diffseg.backend.params import validate_params
from napari_diffseg.backend.runner import JobManager, JobStateError
from napari_diffseg.backend.schemas import (
    AnnotationOut,
    CountsOut,
    ErrorOut,
    EventsOut,
    HealthOut,
    ImageOut,
    ImageStateIn,
    ImageUploadOut,
    JobCreate,
    JobEventOut,
    JobOut,
    LimitsOut,
    ModelOut,
    ProjectOut,
    ProposalOut,
    ProposalsCreate,
    SaveAnnotationOut,
)
from napari_diffseg.base.errors import ConfigError, DataError, DiffsegError
from napari_diffseg.project import IMAGE_STATES, Project, StaleVersionError
from napari_diffseg.project.records import TERMINAL_JOB_STATES, ImageRecord, JobRecord, ProposalRecord

__all__ = [
    "API_PREFIX",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "ApiError",
    "create_app",
    "is_loopback",
    "serve",
]

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
DEFAULT_MAX_UPLOAD_BYTES = 256 * 2**20
DEFAULT_MAX_PIXELS = 2**26
MIN_TOKEN_LENGTH = 16
WEIGHTS_FILE = (
    "weights.safetensors"  # napari_diffseg.core.checkpoint.WEIGHTS_FILE (that module imports torch)
)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
STREAM_POLL_S = 0.1
STREAM_HEARTBEAT_S = 15.0
_MAX_ID = 2**62
_SAFE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # model ids, as the project store checks them
_MAX_DETAIL = 2000
_DRAIN_LIMIT = 16 * 2**20  # after a body passes the limit, read (and drop) this much more for a clean 413

# ------------------------------------------------------------------------------------------ errors


class ApiError(Exception):
    """An HTTP error with a status, a message (what went wrong and what to do) and a short code."""

    def __init__(self, status: int, detail: str, code: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.extra = extra


def _error(
    status: int, detail: str, code: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    if len(detail) > _MAX_DETAIL:
        detail = detail[: _MAX_DETAIL - 3] + "..."
    return JSONResponse({"detail": detail, "code": code, **extra}, status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
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


def _public(request: Request, message: str) -> str:
    """A store message without the server's folder names (clients need not know where the project lives)."""
    state = getattr(request.app.state, "diffseg", None)
    if state is None:
        return message
    root = str(state.settings.root)
    return message.replace(f"project {root}", "this project").replace(root, "<project>")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, _public(request, exc.detail), exc.code, **exc.extra)

    @app.exception_handler(StaleVersionError)
    async def _stale(request: Request, exc: StaleVersionError) -> JSONResponse:
        return _error(409, _public(request, str(exc)), "stale_annotation", current=exc.current)

    @app.exception_handler(JobStateError)
    async def _job_state(request: Request, exc: JobStateError) -> JSONResponse:
        return _error(409, _public(request, str(exc)), "conflict")

    @app.exception_handler(DataError)
    async def _data(request: Request, exc: DataError) -> JSONResponse:
        return _error(422, _public(request, str(exc)), "invalid")

    @app.exception_handler(ConfigError)
    async def _config(request: Request, exc: ConfigError) -> JSONResponse:
        return _error(400, _public(request, str(exc)), "invalid")

    @app.exception_handler(DiffsegError)
    async def _diffseg(request: Request, exc: DiffsegError) -> JSONResponse:
        return _error(503, _public(request, f"{exc} (try again)"), "busy")

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_detail(exc), "invalid")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            detail = f"no such endpoint: {request.method} {request.url.path}; see /openapi.json for the API."
            return _error(404, detail, "not_found")
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; see /openapi.json for the API."
            return _error(405, detail, "method_not_allowed", headers=dict(exc.headers or {}))
        return _error(exc.status_code, str(exc.detail), "http", headers=dict(exc.headers or {}))

    @app.exception_handler(OSError)
    async def _os(request: Request, exc: OSError) -> JSONResponse:
        log.error("file system error", exc_info=exc)
        detail = _public(request, f"the backend cannot read or write its files ({exc}); check its disk.")
        return _error(503, detail, "storage")

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        return _error(
            500, f"internal error ({type(exc).__name__}): the backend log has the details.", "internal"
        )


# ------------------------------------------------------------------------------------------ guard


def is_loopback(host: str) -> bool:
    """True if ``host`` (an address or ``localhost``) only accepts connections from this machine."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_token(token: str | None) -> str | None:
    """Validate a bearer token: at least 16 printable ASCII characters without spaces.

    Raises:
        ConfigError: A short or unprintable token.
    """
    if token is None:
        return None
    if len(token) < MIN_TOKEN_LENGTH or not all(33 <= ord(c) <= 126 for c in token):
        raise ConfigError(
            f"the token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters without spaces; make "
            'one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    return token


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _Guard:
    """ASGI middleware: bearer token on every request (when set), else only loopback Host headers.

    The Host check (without a token) stops DNS-rebinding pages in a local browser from reaching the
    backend through a name of their own.
    """

    def __init__(self, app: Any, token: str | None, allowed_hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.token = token.encode() if token is not None else None
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        problem: tuple[int, str, str, dict[str, str]] | None = None
        if self.token is not None:
            auth = headers.get("authorization", b"")
            scheme, _, given = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not given.strip():
                problem = (
                    401,
                    "this backend needs a token: send the header 'Authorization: Bearer <token>' (the token "
                    "given to `diffseg serve --token`).",
                    "unauthorized",
                    {"WWW-Authenticate": "Bearer"},
                )
            elif not hmac.compare_digest(given.strip(), self.token):
                problem = (
                    401,
                    "wrong token: use the token the backend was started with (`diffseg serve --token`).",
                    "unauthorized",
                    {"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
        elif self.allowed_hosts is not None:
            host = headers.get("host", b"").decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.allowed_hosts:
                problem = (
                    400,
                    f"Host {host!r} is not allowed: a backend without a token only answers requests for "
                    "localhost / 127.0.0.1. Connect through one of them, or start it with --token.",
                    "bad_host",
                    {},
                )
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, detail, code, extra_headers = problem
        response = _error(status, detail, code, headers=extra_headers)
        await response(scope, receive, send)


# ------------------------------------------------------------------------------------------ state


@dataclass(frozen=True)
class Settings:
    """What a backend was created with."""

    root: Path
    token: str | None
    max_upload_bytes: int
    max_pixels: int


class _Projects:
    """One open :class:`Project` per thread (each with its own SQLite connection)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._local = threading.local()
        self._all: list[Project] = []
        self._lock = threading.Lock()

    def get(self) -> Project:
        project = getattr(self._local, "project", None)
        if project is None:
            project = Project.open(self.root)
            self._local.project = project
            with self._lock:
                self._all.append(project)
        return project

    def close_all(self) -> None:
        with self._lock:
            for project in self._all:
                project.close()
            self._all.clear()


class _ProposalCache:
    """Proposal parts as ready-to-send ``.npy`` files in ``PROJECT/cache/proposals/``.

    A file's name holds the proposal id, the sha256 of the stored proposal and the part, so a replaced
    proposal is never served from the cache; the first fetch decodes the proposal and writes all three
    parts, later fetches are one file read.
    """

    PARTS = ("probs", "uncertainty", "mask")

    def __init__(self, root: Path) -> None:
        self.folder = root / "cache" / "proposals"

    def _path(self, prop: ProposalRecord, part: str) -> Path:
        return self.folder / f"{prop.id}-{prop.file_sha256[:16]}-{part}.npy"

    def get(self, project: Project, prop: ProposalRecord, part: str) -> bytes:
        path = self._path(prop, part)
        with contextlib.suppress(FileNotFoundError):
            return path.read_bytes()
        from napari_diffseg.data.io import atomic_write_bytes

        found = project.proposal(prop.image_id, prop.model_id)
        if found is None:
            raise ApiError(404, "the proposal disappeared while it was read; fetch it again.", "no_proposal")
        prop, probs, unc = found  # the model may have proposed again since: cache what is there now
        if probs.shape[0] == 1:
            mask = probs[0] >= 0.5
        else:
            mask = np.argmax(probs, axis=0)
        labels = mask.astype(np.uint8 if probs.shape[0] <= 256 else np.uint16)
        arrays = {"probs": probs.astype(np.float32), "uncertainty": unc.astype(np.float32), "mask": labels}
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(f"{prop.id}-*.npy"):
            if not stale.name.startswith(f"{prop.id}-{prop.file_sha256[:16]}-"):
                with contextlib.suppress(OSError):
                    stale.unlink()
        out = b""
        for name, arr in arrays.items():
            data = codec.to_npy(arr)
            atomic_write_bytes(self._path(prop, name), data)
            if name == part:
                out = data
        return out


class BackendState:
    """Everything the handlers share: settings, per-thread projects, the job manager, the cache."""

    def __init__(self, settings: Settings, manager: JobManager) -> None:
        self.settings = settings
        self.projects = _Projects(settings.root)
        self.manager = manager
        self.proposals = _ProposalCache(settings.root)

    def project(self) -> Project:
        return self.projects.get()


async def _ctx(request: Request) -> BackendState:
    return request.app.state.diffseg  # type: ignore[no-any-return]


Ctx = Annotated[BackendState, Depends(_ctx)]


@dataclass(frozen=True)
class Upload:
    """A request body read within the size limit, with its media type."""

    data: bytes
    media_type: str


async def _upload(request: Request) -> Upload:
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
            if drained > _DRAIN_LIMIT:
                break
            continue
        buf += chunk
    if drained:
        raise too_large
    return Upload(bytes(buf), media_type)


UploadDep = Annotated[Upload, Depends(_upload)]


def _binary_body(what: str) -> dict[str, Any]:
    schema = {"type": "string", "format": "binary"}
    return {
        "requestBody": {
            "required": True,
            "description": f"The {what}: a .npy array, a TIFF or a PNG file (set the Content-Type).",
            "content": {media: {"schema": schema} for media in codec.MEDIA_TYPES},
        }
    }


def _npy_response(what: str) -> dict[int | str, dict[str, Any]]:
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


def _npy(data: bytes, extra: dict[str, str] | None = None) -> Response:
    shape, dtype, _f, _o = codec.npy_header(data)
    headers = {"X-Shape": ",".join(str(s) for s in shape), "X-Dtype": dtype.name, **(extra or {})}
    return Response(content=data, media_type=codec.NPY, headers=headers)


# ------------------------------------------------------------------------------------------ lookups

RefPath = Annotated[str, PathParam(min_length=1, max_length=200, description="Image id or unique name.")]
JobIdPath = Annotated[int, PathParam(ge=1, le=_MAX_ID, description="Job id.")]
ModelIdPath = Annotated[str, PathParam(min_length=1, max_length=128, description="Model id.")]
ModelIdQuery = Annotated[
    str | None, Query(min_length=1, max_length=128, description="Model id (default: latest).")
]


def _check_ref(ref: str) -> str:
    bad = (
        ".." in ref
        or "/" in ref
        or "\\" in ref
        or ref.startswith(".")
        or ref != ref.strip()
        or any(ord(c) < 32 or ord(c) == 127 for c in ref)
    )
    if bad:
        raise ApiError(
            400,
            f"invalid image reference {ref!r}: use an image id or name (no '/', '\\', '..' or control "
            "characters).",
            "invalid",
        )
    return ref


def _get_image(project: Project, ref: str) -> ImageRecord:
    _check_ref(ref)
    try:
        return project.image(ref)
    except DataError as exc:
        raise ApiError(
            404, str(exc).replace(f"`diffseg images {project.root}`", "GET /images"), "not_found"
        ) from exc


def _check_model_id(model_id: str) -> str:
    if not _SAFE_ID_RE.match(model_id):
        raise ApiError(
            400,
            f"invalid model id {model_id!r}: use letters, digits, '_' or '-' (see GET /models).",
            "invalid",
        )
    return model_id


def _get_model_out(project: Project, model_id: str) -> ModelOut:
    _check_model_id(model_id)
    try:
        return ModelOut(**project.model(model_id).to_dict())
    except DataError as exc:
        raise ApiError(
            404, f"no model {model_id!r} in this project; list them with GET /models.", "not_found"
        ) from exc


def _get_job(project: Project, job_id: int) -> JobRecord:
    try:
        return project.job(job_id)
    except DataError as exc:
        raise ApiError(
            404, f"no job {job_id} in this project; list them with GET /jobs.", "not_found"
        ) from exc


def _image_out(project: Project, rec: ImageRecord) -> ImageOut:
    ann = project.annotation(rec.id)
    return ImageOut(
        **rec.to_dict(),
        latest_version=None if ann is None else ann.version,
        last_edit_dice=None if ann is None else ann.edit_dice,
    )


def _job_out(ctx: BackendState, job: JobRecord) -> JobOut:
    return JobOut(**job.to_dict(), cancel_requested=ctx.manager.cancel_requested(job))


def _submit(ctx: BackendState, kind: str, params: dict[str, Any]) -> JobOut:
    project = ctx.project()
    clean = validate_params(kind, params)
    if clean.get("ids"):
        clean["ids"] = [_get_image(project, ref).id for ref in clean["ids"]]
    job_id = project.create_job(kind, clean)
    ctx.manager.wake()
    return _job_out(ctx, project.job(job_id))


# ------------------------------------------------------------------------------------------ routes

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in (
        (400, "Bad parameter."),
        (401, "Missing or wrong token."),
        (404, "Unknown resource."),
        (409, "Stale annotation save or a job state that does not allow this."),
        (413, "Body too large."),
        (415, "Unsupported Content-Type."),
        (422, "The request or its content cannot be used."),
        (503, "The project is busy or its files cannot be read; try again."),
    )
}

router = APIRouter(prefix=API_PREFIX, responses=_ERRORS)


@router.get("/health", response_model=HealthOut, tags=["project"])
def health(ctx: Ctx) -> HealthOut:
    """Liveness: ``ok`` plus the number of running and queued jobs."""
    # the store's job states are what every client sees (a finished worker may not be reaped yet)
    project = ctx.project()
    queued, running = len(project.jobs(state="queued")), len(project.jobs(state="running"))
    return HealthOut(status="ok", version=__version__, jobs_running=running, jobs_queued=queued)


@router.get("/project", response_model=ProjectOut, tags=["project"])
def project_info(ctx: Ctx) -> ProjectOut:
    """Counts, schema version, images per state, the active model and the upload limits."""
    project = ctx.project()
    active = project.active_model()
    states = {s: 0 for s in IMAGE_STATES}
    for rec in project.images():
        states[rec.state] = states.get(rec.state, 0) + 1
    return ProjectOut(
        name=project.root.name,
        schema_version=project.schema_version,
        version=__version__,
        counts=CountsOut(**project.counts()),
        states=states,
        active_model=None if active is None else ModelOut(**active.to_dict()),
        limits=LimitsOut(max_upload_bytes=ctx.settings.max_upload_bytes, max_pixels=ctx.settings.max_pixels),
    )


# -------------------------------------------------------------------------------------- images


@router.get("/images", response_model=list[ImageOut], tags=["images"])
def list_images(
    ctx: Ctx,
    state: Annotated[str | None, Query(max_length=32, description="Only images in this state.")] = None,
    split: Annotated[str | None, Query(max_length=64, description="Only images in this split.")] = None,
) -> list[ImageOut]:
    """Every image (sorted by name) with its state, uncertainty, split and last edit Dice."""
    project = ctx.project()
    if state is not None and state not in IMAGE_STATES:
        raise ApiError(
            400, f"unknown image state {state!r}: use one of {', '.join(IMAGE_STATES)}.", "invalid"
        )
    return [_image_out(project, rec) for rec in project.images(state=state, split=split)]


@router.post(
    "/images",
    status_code=201,
    response_model=ImageUploadOut,
    tags=["images"],
    openapi_extra=_binary_body("image"),
    responses={200: {"model": ImageUploadOut, "description": "These pixels were already in the project."}},
)
def upload_image(
    ctx: Ctx,
    upload: UploadDep,
    response: Response,
    name: Annotated[str, Query(min_length=1, max_length=200, description="Image name (made unique).")],
    split: Annotated[str, Query(min_length=1, max_length=64, description="train, val or test...")] = "train",
) -> ImageUploadOut:
    """Upload an image (``.npy``, TIFF or PNG body): 201 when new, 200 when the same pixels are known.

    To attach a ground-truth mask, POST it to ``/images/{ref}/annotations?kind=ground_truth``.
    """
    pixels = codec.decode_image(upload.data, upload.media_type, max_pixels=ctx.settings.max_pixels)
    project = ctx.project()
    started = time.time()
    image_id = project.import_array(pixels, name, split=split, source=f"upload:{name}")
    rec = project.image(image_id)
    added = rec.created_at >= started
    if not added:
        response.status_code = 200
    return ImageUploadOut(image=_image_out(project, rec), added=added)


@router.get("/images/{ref}", response_model=ImageOut, tags=["images"])
def get_image(ctx: Ctx, ref: RefPath) -> ImageOut:
    """One image by id or unique name."""
    project = ctx.project()
    return _image_out(project, _get_image(project, ref))


@router.get(
    "/images/{ref}/pixels",
    response_class=Response,
    tags=["images"],
    responses=_npy_response("(C, H, W) pixels"),
)
def image_pixels(ctx: Ctx, ref: RefPath) -> Response:
    """The stored pixels ``(C, H, W)`` in their original dtype, as ``.npy``."""
    project = ctx.project()
    rec = _get_image(project, ref)
    return _npy(codec.to_npy(project.load_image(rec.id)), {"X-Image-Id": rec.id})


def _implied_state(project: Project, rec: ImageRecord) -> str:
    """The state an image's data gives it: its latest annotation's kind, else proposed or unlabeled."""
    ann = project.annotation(rec.id)
    if ann is not None:
        return "ground_truth" if ann.kind == "ground_truth" else "corrected"
    return "proposed" if project.proposals(rec.id) else "unlabeled"


@router.post("/images/{ref}/state", response_model=ImageOut, tags=["images"])
def set_image_state(ctx: Ctx, ref: RefPath, body: ImageStateIn) -> ImageOut:
    """Reject an image or include it again; nothing is deleted either way.

    ``excluded``: the annotator found the proposal useless for this image; it is left out of every
    training job and ``/next`` skips it. ``included``: it gets back the state its data implies (corrected
    or ground_truth after its latest annotation, proposed when it has a proposal, else unlabeled).
    Saving an annotation also includes an excluded image again.
    """
    project = ctx.project()
    rec = _get_image(project, ref)
    state = "excluded" if body.state == "excluded" else _implied_state(project, rec)
    return _image_out(project, project.set_state(rec.id, state))


# -------------------------------------------------------------------------------------- annotations


@router.get("/images/{ref}/annotations", response_model=list[AnnotationOut], tags=["annotations"])
def list_annotations(ctx: Ctx, ref: RefPath) -> list[AnnotationOut]:
    """Every annotation version of an image, oldest first."""
    project = ctx.project()
    rec = _get_image(project, ref)
    return [AnnotationOut(**a.to_dict()) for a in project.annotation_versions(rec.id)]


@router.get(
    "/images/{ref}/annotations/{version}/pixels",
    response_class=Response,
    tags=["annotations"],
    responses=_npy_response("The (H, W) label mask"),
)
def annotation_pixels(
    ctx: Ctx, ref: RefPath, version: Annotated[int, PathParam(ge=1, le=_MAX_ID, description="Version.")]
) -> Response:
    """One annotation version's label mask ``(H, W)`` as ``.npy`` (the smallest unsigned dtype)."""
    project = ctx.project()
    rec = _get_image(project, ref)
    try:
        ann = project.annotation(rec.id, version)
    except DataError as exc:
        raise ApiError(
            404, str(exc).replace("annotation_versions()", "GET .../annotations"), "not_found"
        ) from exc
    mask = project.load_annotation(rec.id, version)
    if ann is None or mask is None:
        raise ApiError(404, f"image {rec.name!r} has no annotation version {version}.", "not_found")
    dtype = np.uint8 if ann.labels < 2**8 else np.uint16 if ann.labels < 2**16 else np.uint32
    return _npy(codec.to_npy(mask.astype(dtype)), {"X-Image-Id": rec.id, "X-Version": str(version)})


@router.post(
    "/images/{ref}/annotations",
    status_code=201,
    response_model=SaveAnnotationOut,
    tags=["annotations"],
    openapi_extra=_binary_body("label mask (H, W), 0 = background"),
)
def save_annotation(
    ctx: Ctx,
    ref: RefPath,
    upload: UploadDep,
    replaces: Annotated[
        int | None,
        Query(
            ge=1, le=_MAX_ID, description="The version this edit started from; omit for a first annotation."
        ),
    ] = None,
    kind: Annotated[Literal["correction", "ground_truth"], Query(description="Who made it.")] = "correction",
    proposal_id: Annotated[
        int | None,
        Query(ge=1, le=_MAX_ID, description="The proposal the edit started from (records edit Dice)."),
    ] = None,
    author: Annotated[str, Query(max_length=200, description="Free text.")] = "",
) -> SaveAnnotationOut:
    """Save a new annotation version; 409 ``{"detail", "current"}`` if ``replaces`` is not the latest."""
    mask = codec.decode_mask(upload.data, upload.media_type, max_pixels=ctx.settings.max_pixels)
    project = ctx.project()
    rec = _get_image(project, ref)
    version = project.save_annotation(
        rec.id, mask, kind=kind, replaces=replaces, proposal_id=proposal_id, author=author
    )
    ann = project.annotation(rec.id, version)
    assert ann is not None
    return SaveAnnotationOut(version=version, annotation=AnnotationOut(**ann.to_dict()))


# -------------------------------------------------------------------------------------- proposals


def _latest_proposal(project: Project, rec: ImageRecord, model_id: str | None) -> ProposalRecord:
    if model_id is not None:
        _check_model_id(model_id)
    found = project.proposals(rec.id, model_id)
    if not found:
        of = f" of model {model_id!r}" if model_id else ""
        raise ApiError(
            404,
            f"image {rec.name!r} ({rec.id}) has no proposal{of} yet; request one with POST /proposals.",
            "no_proposal",
        )
    return found[-1]


@router.get("/images/{ref}/proposal", response_model=ProposalOut, tags=["proposals"])
def get_proposal(ctx: Ctx, ref: RefPath, model_id: ModelIdQuery = None) -> ProposalOut:
    """The latest proposal's record for an image (404 with code ``no_proposal`` when there is none)."""
    project = ctx.project()
    return ProposalOut(**_latest_proposal(project, _get_image(project, ref), model_id).to_dict())


@router.get(
    "/images/{ref}/proposal/pixels",
    response_class=Response,
    tags=["proposals"],
    responses=_npy_response("probs (K, H, W) float32, uncertainty (H, W) float32 or mask (H, W) uint8"),
)
def proposal_pixels(
    ctx: Ctx,
    ref: RefPath,
    part: Annotated[Literal["probs", "uncertainty", "mask"], Query(description="Which array.")] = "mask",
    model_id: ModelIdQuery = None,
) -> Response:
    """One part of the latest proposal as ``.npy``; after the first fetch it is a single file read."""
    project = ctx.project()
    prop = _latest_proposal(project, _get_image(project, ref), model_id)
    data = ctx.proposals.get(project, prop, part)
    return _npy(data, {"X-Proposal-Id": str(prop.id), "X-Model-Id": prop.model_id})


@router.post("/proposals", status_code=202, response_model=JobOut, tags=["proposals"])
def request_proposals(ctx: Ctx, body: ProposalsCreate) -> JobOut:
    """Start a ``propose`` job (teacher pseudo-labels + uncertainty) for images; default: all unreviewed."""
    return _submit(ctx, "propose", body.model_dump(exclude_none=True))


# -------------------------------------------------------------------------------------- jobs


@router.post("/jobs", status_code=202, response_model=JobOut, tags=["jobs"])
def create_job(ctx: Ctx, body: JobCreate) -> JobOut:
    """Queue a ``pretrain``, ``propose`` or ``cotrain`` job; it runs in its own process."""
    return _submit(ctx, body.kind, body.params)


@router.get("/jobs", response_model=list[JobOut], tags=["jobs"])
def list_jobs(
    ctx: Ctx,
    state: Annotated[
        Literal["queued", "running", "done", "failed", "cancelled", "interrupted"] | None,
        Query(description="Only jobs in this state."),
    ] = None,
) -> list[JobOut]:
    """Every job, oldest first."""
    return [_job_out(ctx, job) for job in ctx.project().jobs(state=state)]


@router.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"])
def get_job(ctx: Ctx, job_id: JobIdPath) -> JobOut:
    """One job."""
    return _job_out(ctx, _get_job(ctx.project(), job_id))


def _events_page(ctx: BackendState, job_id: int, since: int, limit: int | None) -> EventsOut:
    project = ctx.project()
    job = _get_job(project, job_id)  # state first: every event before a final state is in the page
    events = project.events(job_id, since=since, limit=limit)
    return EventsOut(
        job=_job_out(ctx, job),
        events=[JobEventOut(**e.to_dict()) for e in events],
        next=events[-1].seq if events else since,
    )


SinceQuery = Annotated[int, Query(ge=0, le=_MAX_ID, description="Only events with seq > since.")]


@router.get("/jobs/{job_id}/events", response_model=EventsOut, tags=["jobs"])
def job_events(
    ctx: Ctx,
    job_id: JobIdPath,
    since: SinceQuery = 0,
    limit: Annotated[int | None, Query(ge=1, le=100_000, description="At most this many.")] = None,
) -> EventsOut:
    """Events after the cursor ``since`` and the job's state; poll with ``since=next``."""
    return _events_page(ctx, job_id, since, limit)


def _sse(event: str | None, data: Any, event_id: int | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


@router.get(
    "/jobs/{job_id}/stream",
    response_class=StreamingResponse,
    tags=["jobs"],
    responses={
        200: {
            "description": "Server-sent events: `event: job` (a JobEventOut, `id` = seq) for each event, "
            "then `event: end` (a JobOut) when the job has ended. Reconnect with since= (or "
            "Last-Event-ID).",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def stream_job(
    ctx: Ctx, request: Request, job_id: JobIdPath, since: SinceQuery = 0
) -> StreamingResponse:
    """Server-sent events: the history after ``since``, then live events; ends when the job ends."""
    last_id = request.headers.get("last-event-id", "")
    if last_id.strip().isdigit():
        since = max(since, int(last_id))
    await run_in_threadpool(lambda: _get_job(ctx.project(), job_id))  # 404 before the stream starts

    async def events() -> AsyncIterator[bytes]:
        cursor = since
        idle = 0.0
        yield b": stream of job %d\n\n" % job_id
        while True:
            page = await run_in_threadpool(_events_page, ctx, job_id, cursor, 500)
            for ev in page.events:
                yield _sse("job", ev.model_dump(), ev.seq)
                cursor = ev.seq
            if page.events:
                idle = 0.0
                continue  # there may be more right away
            if page.job.state in TERMINAL_JOB_STATES:
                yield _sse("end", page.job.model_dump())
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(STREAM_POLL_S)
            idle += STREAM_POLL_S
            if idle >= STREAM_HEARTBEAT_S:
                idle = 0.0
                yield b": keep-alive\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobOut, tags=["jobs"])
def cancel_job(ctx: Ctx, job_id: JobIdPath) -> JobOut:
    """Cancel: a queued job at once; a running one checkpoints and stops at its next step (killed after
    a grace period if it does not)."""
    _get_job(ctx.project(), job_id)
    return _job_out(ctx, ctx.manager.cancel(job_id))


@router.post("/jobs/{job_id}/resume", status_code=202, response_model=JobOut, tags=["jobs"])
def resume_job(ctx: Ctx, job_id: JobIdPath) -> JobOut:
    """Queue a cancelled, failed or interrupted job again; it continues from its checkpoints."""
    _get_job(ctx.project(), job_id)
    return _job_out(ctx, ctx.manager.resume(job_id))


# -------------------------------------------------------------------------------------- models


@router.get("/models", response_model=list[ModelOut], tags=["models"])
def list_models(ctx: Ctx) -> list[ModelOut]:
    """Every registered model with its metrics, oldest first."""
    return [ModelOut(**m.to_dict()) for m in ctx.project().models()]


@router.get("/models/{model_id}", response_model=ModelOut, tags=["models"])
def get_model(ctx: Ctx, model_id: ModelIdPath) -> ModelOut:
    """One model."""
    return _get_model_out(ctx.project(), model_id)


@router.post("/models/{model_id}/activate", response_model=ModelOut, tags=["models"])
def activate_model(ctx: Ctx, model_id: ModelIdPath) -> ModelOut:
    """Make a model the active one (used for proposals)."""
    project = ctx.project()
    _get_model_out(project, model_id)
    return ModelOut(**project.set_active_model(model_id).to_dict())


@router.get(
    "/models/{model_id}/weights",
    response_class=FileResponse,
    tags=["models"],
    responses={
        200: {
            "description": "The model's weights.safetensors.",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
def model_weights(ctx: Ctx, model_id: ModelIdPath) -> FileResponse:
    """Download a model's ``weights.safetensors`` (only that file; never pickles)."""
    project = ctx.project()
    _get_model_out(project, model_id)
    folder = project.model_dir(model_id)
    path = folder / WEIGHTS_FILE
    if path.is_symlink() or not path.is_file() or path.resolve().parent != folder.resolve():
        raise ApiError(
            404, f"model {model_id!r} has no {WEIGHTS_FILE}; its folder is incomplete.", "not_found"
        )
    return FileResponse(path, media_type="application/octet-stream", filename=f"{model_id}.safetensors")


# -------------------------------------------------------------------------------------- next


@router.get(
    "/next",
    response_model=ImageOut,
    tags=["images"],
    responses={204: {"description": "Every image has been reviewed."}},
)
def next_image(
    ctx: Ctx,
    split: Annotated[str | None, Query(max_length=64, description="Only this split.")] = None,
    strategy: Annotated[
        Literal["uncertainty", "power"],
        Query(
            description="uncertainty: the most uncertain image; power: a draw with probability "
            "proportional to the uncertainty (fewer atypical, hard-to-correct images in a row)."
        ),
    ] = "uncertainty",
) -> Any:
    """The unreviewed image to review next (by default the one with the highest uncertainty; images
    without one come last), or 204."""
    project = ctx.project()
    rec = project.next_image(split=split, strategy=strategy)
    if rec is None:
        return Response(status_code=204)
    return _image_out(project, rec)


# ------------------------------------------------------------------------------------------ the app


def create_app(
    root: str | os.PathLike[str],
    *,
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    run_jobs: bool = True,
    cancel_grace_s: float = 10.0,
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS,
) -> FastAPI:
    """The backend for the project at ``root``.

    Args:
        root: A project folder (``diffseg init``).
        token: When set, every request needs ``Authorization: Bearer <token>`` (at least 16 characters).
        max_upload_bytes: Largest accepted request body.
        max_pixels: Largest accepted ``H * W`` of an uploaded image or mask.
        run_jobs: False: queue jobs without running them (another process runs them).
        cancel_grace_s: Seconds a cancelled job has to stop before its process group is killed.
        allowed_hosts: Without a token, only requests whose Host header names one of these are served
            (DNS-rebinding protection); None allows any.

    Raises:
        DataError: ``root`` is not a project.
        ConfigError: A bad token or limit.
    """
    check_token(token)
    if max_upload_bytes < 1 or max_pixels < 64:
        raise ConfigError("max_upload_bytes must be positive and max_pixels at least 64.")
    path = Path(root).resolve()
    with Project.open(path):
        pass
    settings = Settings(path, token, int(max_upload_bytes), int(max_pixels))
    manager = JobManager(path, cancel_grace_s=cancel_grace_s, run_jobs=run_jobs)
    state = BackendState(settings, manager)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        interrupted = await run_in_threadpool(manager.start)
        if interrupted:
            log.warning("jobs %s were running when the backend stopped: marked interrupted", interrupted)
        try:
            yield
        finally:
            await run_in_threadpool(manager.stop)
            state.projects.close_all()

    app = FastAPI(
        title="napari-diffseg backend",
        version=__version__,
        description="The training backend of napari-diffseg: images, annotations, proposals, jobs, models.",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.diffseg = state
    _install_error_handlers(app)
    app.include_router(router)
    hosts = None if allowed_hosts is None else tuple(h.lower() for h in allowed_hosts)
    app.add_middleware(_Guard, token=token, allowed_hosts=hosts)  # type: ignore[arg-type]
    return app


def serve(
    root: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    run_jobs: bool = True,
    log_level: str = "warning",
) -> None:
    """Run the backend with uvicorn until interrupted (what ``diffseg serve`` does).

    Raises:
        ConfigError: A non-loopback ``host`` without a token, a bad token, or a port that is taken.
        DataError: ``root`` is not a project.
    """
    import socket

    import uvicorn

    if token is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host} without a token: anyone who can reach it could read and change "
            "the project. Pass --token (or set DIFFSEG_TOKEN), or listen on 127.0.0.1."
        )
    if not 0 <= port <= 65535:
        raise ConfigError(f"invalid port {port}: use 1 to 65535.")
    allowed = LOOPBACK_HOSTS if token is None else None
    app = create_app(
        root,
        token=token,
        max_upload_bytes=max_upload_bytes,
        max_pixels=max_pixels,
        run_jobs=run_jobs,
        allowed_hosts=allowed,
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port."
            ) from exc
    config = uvicorn.Config(
        app,
        host=host.strip("[]"),
        port=port,
        log_level=log_level,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    uvicorn.Server(config).run()
