"""What the routers share: the API prefix and error responses, path/query parameter types, the lookups
that turn a reference into a record (or a 404 ``ApiError``), and the record → response conversions.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from napari_diffseg.backend.handlers import ApiError
from napari_diffseg.backend.preflight import PreflightError, check_job
from napari_diffseg.backend.schemas import ErrorOut, ImageOut, JobOut, ModelOut
from napari_diffseg.backend.state import BackendState
from napari_diffseg.base.contracts import CotrainParams, PretrainParams, ProposeParams
from napari_diffseg.base.errors import DataError
from napari_diffseg.project import Project
from napari_diffseg.project.records import ImageRecord, JobRecord

__all__ = [
    "API_PREFIX",
    "ERRORS",
    "MAX_ID",
    "JobIdPath",
    "ModelIdPath",
    "ModelIdQuery",
    "RefPath",
    "api_router",
    "check_model_id",
    "check_ref",
    "find_image",
    "find_job",
    "get_model_out",
    "image_out",
    "job_out",
    "submit",
]

API_PREFIX = "/api/v1"
MAX_ID = 2**62
_SAFE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")  # model ids, as the project store checks them

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in (
        (400, "Bad parameter."),
        (401, "Missing or wrong token."),
        (403, "Foreign Origin: a cross-site request is refused."),
        (404, "Unknown resource."),
        (409, "Stale annotation save or a job state that does not allow this."),
        (413, "Body too large."),
        (415, "Unsupported Content-Type."),
        (422, "The request or its content cannot be used."),
        (503, "The project is busy or its files cannot be read; try again."),
    )
}


def api_router() -> APIRouter:
    """A router under :data:`API_PREFIX` whose routes document the common :data:`ERRORS`."""
    return APIRouter(prefix=API_PREFIX, responses=ERRORS)


RefPath = Annotated[str, PathParam(min_length=1, max_length=200, description="Image id or unique name.")]
JobIdPath = Annotated[int, PathParam(ge=1, le=MAX_ID, description="Job id.")]
ModelIdPath = Annotated[str, PathParam(min_length=1, max_length=128, description="Model id.")]
ModelIdQuery = Annotated[
    str | None, Query(min_length=1, max_length=128, description="Model id (default: latest).")
]
WatershedQuery = Annotated[
    str | None,
    Query(
        min_length=2,
        max_length=1000,
        description="An instance project: some or all of the watershed's parameters as a JSON object "
        '(threshold, seed_threshold, seed_sigma, min_seed_size, min_size; e.g. {"seed_threshold": 0.8}) in '
        "place of the proposing model's: the proposal's objects re-split as the annotator chose.",
    ),
]


def parse_watershed(text: str | None) -> dict[str, Any] | None:
    """The watershed overrides of a ``watershed`` query parameter (None: none given), else 422."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ApiError(
            422, f'watershed must be a JSON object, e.g. {{"seed_threshold": 0.8}}: {exc}', "invalid"
        ) from exc
    if not isinstance(value, dict):
        raise ApiError(422, f"watershed must be a JSON object of parameters, got {text!r}", "invalid")
    return value


def check_ref(ref: str) -> str:
    """``ref`` if it can name an image (no path separators, ``..`` or control characters), else 400."""
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


def find_image(project: Project, ref: str) -> ImageRecord:
    """The image with id or unique name ``ref``, else 404."""
    check_ref(ref)
    try:
        return project.image(ref)
    except DataError as exc:
        raise ApiError(
            404, str(exc).replace(f"`diffseg images {project.root}`", "GET /images"), "not_found"
        ) from exc


def check_model_id(model_id: str) -> str:
    """``model_id`` if it is a well-formed model id, else 400."""
    if not _SAFE_ID_RE.match(model_id):
        raise ApiError(
            400,
            f"invalid model id {model_id!r}: use letters, digits, '_' or '-' (see GET /models).",
            "invalid",
        )
    return model_id


def get_model_out(project: Project, model_id: str) -> ModelOut:
    """The model ``model_id`` as a response, else 400 (malformed id) or 404."""
    check_model_id(model_id)
    try:
        return ModelOut(**project.model(model_id).to_dict())
    except DataError as exc:
        raise ApiError(
            404, f"no model {model_id!r} in this project; list them with GET /models.", "not_found"
        ) from exc


def find_job(project: Project, job_id: int) -> JobRecord:
    """The job ``job_id``, else 404."""
    try:
        return project.job(job_id)
    except DataError as exc:
        raise ApiError(
            404, f"no job {job_id} in this project; list them with GET /jobs.", "not_found"
        ) from exc


def image_out(project: Project, rec: ImageRecord) -> ImageOut:
    """An image record with its latest annotation version and edit Dice."""
    ann = project.annotation(rec.id)
    return ImageOut(
        **rec.to_dict(),
        latest_version=None if ann is None else ann.version,
        last_edit_dice=None if ann is None else ann.edit_dice,
        last_objects_added=None if ann is None else ann.objects_added,
        last_objects_removed=None if ann is None else ann.objects_removed,
        last_objects_changed=None if ann is None else ann.objects_changed,
    )


def job_out(ctx: BackendState, job: JobRecord) -> JobOut:
    """A job record with whether its cancellation was requested."""
    return JobOut(**job.to_dict(), cancel_requested=ctx.manager.cancel_requested(job))


def submit(ctx: BackendState, params: PretrainParams | ProposeParams | CotrainParams) -> JobOut:
    """Queue a job with its typed parameters (image refs → ids) and wake the job manager.

    The pre-flight (:func:`napari_diffseg.backend.preflight.check_job`) runs first: a job the project or
    this machine cannot run is refused (404 / 409 / 422 with what to do) and no job is created.
    """
    project = ctx.project()
    if isinstance(params, ProposeParams) and params.ids:
        params = params.model_copy(update={"ids": [find_image(project, ref).id for ref in params.ids]})
    try:
        check_job(project, params)
    except PreflightError as exc:
        raise ApiError(exc.status, str(exc), exc.code) from exc
    job_id = project.create_job(params.kind, params.stored())
    ctx.manager.wake()
    return job_out(ctx, project.job(job_id))
