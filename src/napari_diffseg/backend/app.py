"""The backend's HTTP API (FastAPI) over one project store; see docs/architecture.md (HTTP API).

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
got wrong (400 bad parameter, 401 token, 403 foreign ``Origin``, 404 unknown resource, 409 stale save or
job state, 413 body too large, 415 content type, 422 unusable content) and 5xx only for server trouble.
Every POST needs ``Content-Type: application/json`` (body-less ones too) or an upload type; see
:mod:`.security`.

Handlers that touch SQLite or files are plain ``def`` (FastAPI runs them in its thread pool), and the
asynchronous ones (reading an upload, streaming events) hand every store access to the thread pool, so
the event loop never blocks. Each pool thread opens its own :class:`~napari_diffseg.project.Project`
connection (WAL: readers never wait for a writer).

This module only builds the app (:func:`create_app`) and runs it (:func:`serve`). The parts:
:mod:`.handlers` (``ApiError``, JSON error answers), :mod:`.security` (loopback, token, host/token
guard, and the request guard: no cross-site writes, bounded bodies, standard JSON), :mod:`.state`
(settings, per-thread projects, proposal cache, the ``Ctx`` dependency), :mod:`.uploads` (binary
bodies in and ``.npy`` out) and :mod:`.routes` (one router per resource).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from napari_diffseg import __version__
from napari_diffseg.backend.calibrate import Calibration
from napari_diffseg.backend.handlers import ApiError, install_error_handlers
from napari_diffseg.backend.routes import ROUTERS
from napari_diffseg.backend.routes.common import API_PREFIX
from napari_diffseg.backend.runner import JobManager
from napari_diffseg.backend.security import (
    LOOPBACK_HOSTS,
    MAX_JSON_BYTES,
    MIN_TOKEN_LENGTH,
    HostTokenGuard,
    RequestGuard,
    check_token,
    is_loopback,
)
from napari_diffseg.backend.state import BackendState, Settings
from napari_diffseg.backend.uploads import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES
from napari_diffseg.base.errors import ConfigError
from napari_diffseg.project import Project

__all__ = [
    "API_PREFIX",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "LOOPBACK_HOSTS",
    "MAX_JSON_BYTES",
    "MIN_TOKEN_LENGTH",
    "ApiError",
    "BackendState",
    "Settings",
    "check_token",
    "create_app",
    "is_loopback",
    "serve",
]

log = logging.getLogger(__name__)


def create_app(
    root: str | os.PathLike[str],
    *,
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    run_jobs: bool = True,
    cancel_grace_s: float = 10.0,
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS,
    calibrate: bool | None = None,
) -> FastAPI:
    """The backend for the project at ``root``.

    Args:
        root: A project folder (``diffseg init``).
        token: When set, every request needs ``Authorization: Bearer <token>`` (at least 16 characters).
        max_upload_bytes: Largest accepted upload body (a JSON body: ``MAX_JSON_BYTES``, 1 MiB).
        max_pixels: Largest accepted ``H * W`` of an uploaded image or mask.
        run_jobs: False: queue jobs without running them (another process runs them).
        cancel_grace_s: Seconds a cancelled job has to stop before its process group is killed.
        allowed_hosts: Without a token, only requests whose Host header names one of these are served
            (DNS-rebinding protection); None allows any.
        calibrate: Measure this machine's speed at start (:mod:`~napari_diffseg.backend.calibrate`, a
            child process of a few seconds) for ``GET /health``'s ``speed``; None: unless the environment
            sets ``DIFFSEG_CALIBRATE=0``. Never when ``run_jobs`` is False (jobs run elsewhere). It starts
            ``DIFFSEG_CALIBRATE_DELAY`` seconds (default 10) after the backend, and is skipped while a job runs.

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
    if calibrate is None:
        calibrate = os.environ.get("DIFFSEG_CALIBRATE", "1") != "0"
    calibration = (
        Calibration(
            delay_s=float(os.environ.get("DIFFSEG_CALIBRATE_DELAY", "10")), busy=lambda: manager.running > 0
        )
        if calibrate and run_jobs
        else None
    )
    state = BackendState(settings, manager, calibration)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        interrupted = await run_in_threadpool(manager.start)
        if calibration is not None:
            calibration.start()
        if interrupted:
            log.warning("jobs %s were running when the backend stopped: marked interrupted", interrupted)
        try:
            yield
        finally:
            if calibration is not None:
                calibration.stop()
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
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    hosts = None if allowed_hosts is None else tuple(h.lower() for h in allowed_hosts)
    # The last one added runs first: host and token, then Origin, Content-Type and body limits.
    app.add_middleware(
        RequestGuard, max_json_bytes=MAX_JSON_BYTES, max_upload_bytes=settings.max_upload_bytes
    )
    app.add_middleware(HostTokenGuard, token=token, allowed_hosts=hosts)
    return app


def _json_400_protocol() -> Any:
    """uvicorn's HTTP protocol class, answering a request it cannot parse (a malformed ``Content-Length``,
    request line or header) with our JSON error instead of its plain-text 400."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    base: Any = AutoHTTPProtocol  # h11, or httptools where it is installed

    class JsonErrorProtocol(base):
        def send_400_response(self, msg: str) -> None:
            body = json.dumps(
                {
                    "detail": f"malformed HTTP request ({msg.rstrip('.')}): check the request line and the "
                    "headers (Content-Length must be the body's size in bytes).",
                    "code": "bad_request",
                }
            ).encode()
            head = (
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            )
            self.transport.write(head + body)
            self.transport.close()

    return JsonErrorProtocol


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
        http=_json_400_protocol(),
    )
    uvicorn.Server(config).run()
