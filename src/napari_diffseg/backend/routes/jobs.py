"""Routes ``/jobs``: queue, list, one job, its events (a page after a cursor, or a server-sent event
stream), cancel and resume.

The stream is asynchronous and hands every store access to the thread pool, so the event loop never
blocks; it ends (event ``end``) when the job has reached a final state.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from napari_diffseg.backend.routes.common import MAX_ID, JobIdPath, api_router, find_job, job_out, submit
from napari_diffseg.backend.schemas import EventsOut, JobCreate, JobEventOut, JobOut
from napari_diffseg.backend.security import header_int
from napari_diffseg.backend.state import BackendState, Ctx
from napari_diffseg.base.contracts import TERMINAL_JOB_STATES, JobState

__all__ = [
    "STREAM_HEARTBEAT_S",
    "STREAM_POLL_S",
    "cancel_job",
    "create_job",
    "get_job",
    "job_events",
    "list_jobs",
    "resume_job",
    "router",
    "stream_job",
]

STREAM_POLL_S = 0.1
STREAM_HEARTBEAT_S = 15.0

router = api_router()


@router.post("/jobs", status_code=202, response_model=JobOut, tags=["jobs"])
def create_job(ctx: Ctx, body: JobCreate) -> JobOut:
    """Queue a ``pretrain``, ``propose`` or ``cotrain`` job; it runs in its own process."""
    return submit(ctx, body.typed())


@router.get("/jobs", response_model=list[JobOut], tags=["jobs"])
def list_jobs(
    ctx: Ctx,
    state: Annotated[
        JobState | None,
        Query(description="Only jobs in this state."),
    ] = None,
) -> list[JobOut]:
    """Every job, oldest first."""
    return [job_out(ctx, job) for job in ctx.project().jobs(state=state)]


@router.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"])
def get_job(ctx: Ctx, job_id: JobIdPath) -> JobOut:
    """One job."""
    return job_out(ctx, find_job(ctx.project(), job_id))


def _events_page(ctx: BackendState, job_id: int, since: int, limit: int | None) -> EventsOut:
    project = ctx.project()
    job = find_job(project, job_id)  # state first: every event before a final state is in the page
    events = project.events(job_id, since=since, limit=limit)
    return EventsOut(
        job=job_out(ctx, job),
        events=[JobEventOut(**e.to_dict()) for e in events],
        next=events[-1].seq if events else since,
    )


SinceQuery = Annotated[int, Query(ge=0, le=MAX_ID, description="Only events with seq > since.")]


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
    """Server-sent events: the history after ``since``, then live events; ends when the job ends.

    A reconnecting ``EventSource`` sends ``Last-Event-ID`` (the last ``id``, an event's seq); the stream
    then starts after the larger of it and ``since``. Like ``since`` it must be a whole number from 0 to
    ``MAX_ID`` (2**62): anything else (a sign, a fraction, other digits, a larger number) is refused with
    a 400 before the stream starts, never clamped; a blank one is ignored.
    """
    last_id = header_int(request.headers.get("last-event-id"), "Last-Event-ID", MAX_ID)
    if last_id is not None:
        since = max(since, last_id)
    await run_in_threadpool(lambda: find_job(ctx.project(), job_id))  # 404 before the stream starts

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
    find_job(ctx.project(), job_id)
    return job_out(ctx, ctx.manager.cancel(job_id))


@router.post("/jobs/{job_id}/resume", status_code=202, response_model=JobOut, tags=["jobs"])
def resume_job(ctx: Ctx, job_id: JobIdPath) -> JobOut:
    """Queue a cancelled, failed or interrupted job again; it continues from its checkpoints."""
    find_job(ctx.project(), job_id)
    return job_out(ctx, ctx.manager.resume(job_id))
