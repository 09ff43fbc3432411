"""Routes for teacher proposals: an image's latest proposal (record and pixels) and ``POST /proposals``."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import Query, Response

from napari_diffseg.backend import codec
from napari_diffseg.backend.handlers import ApiError
from napari_diffseg.backend.routes.common import (
    ModelIdQuery,
    RefPath,
    WatershedQuery,
    api_router,
    check_model_id,
    find_image,
    parse_watershed,
    submit,
)
from napari_diffseg.backend.schemas import JobOut, ProposalOut, ProposalsCreate
from napari_diffseg.backend.state import Ctx
from napari_diffseg.backend.uploads import npy, npy_response
from napari_diffseg.project import Project
from napari_diffseg.project.records import ImageRecord, ProposalRecord

__all__ = ["get_proposal", "proposal_pixels", "request_proposals", "router"]

router = api_router()


def _latest_proposal(project: Project, rec: ImageRecord, model_id: str | None) -> ProposalRecord:
    if model_id is not None:
        check_model_id(model_id)
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
    return ProposalOut(**_latest_proposal(project, find_image(project, ref), model_id).to_dict())


@router.get(
    "/images/{ref}/proposal/pixels",
    response_class=Response,
    tags=["proposals"],
    responses=npy_response(
        "probs (K, H, W) float32, uncertainty (H, W) float32, mask (H, W) uint8, or in an instance project "
        "instances (H, W) uint16: one id per object (a z-stack: Z first)"
    ),
)
def proposal_pixels(
    ctx: Ctx,
    ref: RefPath,
    part: Annotated[
        Literal["probs", "uncertainty", "mask", "instances", "classes"],
        Query(
            description="Which array. instances (an instance project only): the proposal as objects, each "
            "its own id, from the seeded watershed of its background / interior / boundary probabilities "
            "(what the annotator edits as an instance Labels layer); mask is then the 3-class argmax. classes "
            "(an instance project with several object classes): each proposed object's class as a class map."
        ),
    ] = "mask",
    model_id: ModelIdQuery = None,
    watershed: WatershedQuery = None,
) -> Response:
    """One part of the latest proposal as ``.npy``; after the first fetch it is a single file read. The
    objects (``instances``, ``classes``) come with ``X-Watershed``, the watershed that made them (JSON)."""
    project = ctx.project()
    prop = _latest_proposal(project, find_image(project, ref), model_id)
    headers = {"X-Proposal-Id": str(prop.id), "X-Model-Id": prop.model_id}
    overrides = parse_watershed(watershed)
    if overrides is not None and part not in ("instances", "classes"):
        raise ApiError(
            422,
            f"watershed re-splits a proposal's objects: ask for part=instances or classes, not {part}",
            "invalid",
        )
    if overrides is not None:  # the objects re-split: made now, not cached
        ids, cmap, used = project.proposal_objects(prop.id, overrides)
        if part == "classes" and cmap is None:
            raise ApiError(
                409, "part=classes is for an instance project with several object classes", "conflict"
            )
        arr = cmap if part == "classes" and cmap is not None else ids
        headers["X-Watershed"] = json.dumps(used.to_config())
        return npy(codec.to_npy(arr), headers)
    data = ctx.proposals.get(project, prop, part)
    if part in ("instances", "classes"):
        headers["X-Watershed"] = json.dumps(project.proposal_watershed(prop).to_config())
    return npy(data, headers)


@router.post("/proposals", status_code=202, response_model=JobOut, tags=["proposals"])
def request_proposals(ctx: Ctx, body: ProposalsCreate) -> JobOut:
    """Start a ``propose`` job (teacher pseudo-labels + uncertainty) for images; default: all unreviewed."""
    return submit(ctx, body.typed())
