"""Routes for teacher proposals: an image's latest proposal (record and pixels) and ``POST /proposals``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query, Response

from napari_diffseg.backend.handlers import ApiError
from napari_diffseg.backend.routes.common import (
    ModelIdQuery,
    RefPath,
    api_router,
    check_model_id,
    find_image,
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
) -> Response:
    """One part of the latest proposal as ``.npy``; after the first fetch it is a single file read."""
    project = ctx.project()
    prop = _latest_proposal(project, find_image(project, ref), model_id)
    data = ctx.proposals.get(project, prop, part)
    return npy(data, {"X-Proposal-Id": str(prop.id), "X-Model-Id": prop.model_id})


@router.post("/proposals", status_code=202, response_model=JobOut, tags=["proposals"])
def request_proposals(ctx: Ctx, body: ProposalsCreate) -> JobOut:
    """Start a ``propose`` job (teacher pseudo-labels + uncertainty) for images; default: all unreviewed."""
    return submit(ctx, body.typed())
