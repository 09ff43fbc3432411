"""Routes ``/health`` and ``/project``: liveness and what the project holds."""

from __future__ import annotations

from napari_diffseg import __version__
from napari_diffseg.backend.routes.common import api_router
from napari_diffseg.backend.schemas import CountsOut, HealthOut, LimitsOut, ModelOut, ProjectOut, TaskClassOut
from napari_diffseg.backend.state import Ctx
from napari_diffseg.project import IMAGE_STATES

__all__ = ["health", "project_info", "router"]

router = api_router()


@router.get("/health", response_model=HealthOut, tags=["project"])
def health(ctx: Ctx) -> HealthOut:
    """Liveness: ``ok``, the number of running and queued jobs, and this machine's ``speed`` (wall seconds
    per reference second of the cost model, measured at start; null until measured)."""
    # the store's job states are what every client sees (a finished worker may not be reaped yet)
    project = ctx.project()
    queued, running = len(project.jobs(state="queued")), len(project.jobs(state="running"))
    cal = ctx.calibration
    return HealthOut(
        status="ok",
        version=__version__,
        jobs_running=running,
        jobs_queued=queued,
        speed=None if cal is None else cal.speed,
        calibrating=cal is not None and cal.running,
    )


@router.get("/project", response_model=ProjectOut, tags=["project"])
def project_info(ctx: Ctx) -> ProjectOut:
    """Counts, schema version, the task and its classes, images per state, the active model and the upload
    limits."""
    project = ctx.project()
    task = project.task
    active = project.active_model()
    states: dict[str, int] = {s: 0 for s in IMAGE_STATES}
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
        task=task.kind,
        classes=[TaskClassOut(value=i, name=c.name, colour=c.colour) for i, c in enumerate(task.classes)],
        num_classes=task.num_classes,
    )
