"""Routes ``/images`` (list, upload, one image, its pixels, exclude / include) and ``/next``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Query, Response

from napari_diffseg.backend import codec
from napari_diffseg.backend.handlers import ApiError
from napari_diffseg.backend.routes.common import RefPath, api_router, find_image, image_out
from napari_diffseg.backend.schemas import ImageOut, ImageStateIn, ImageUploadOut
from napari_diffseg.backend.state import Ctx
from napari_diffseg.backend.uploads import UploadDep, binary_body, npy, npy_response
from napari_diffseg.data.imagefile import ImageRead, check_axes
from napari_diffseg.project import IMAGE_STATES, Project
from napari_diffseg.project.records import ImageRecord

__all__ = [
    "get_image",
    "image_pixels",
    "list_images",
    "next_image",
    "router",
    "set_image_state",
    "upload_image",
]

router = api_router()


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
    return [image_out(project, rec) for rec in project.images(state=state, split=split)]


@router.post(
    "/images",
    status_code=201,
    response_model=ImageUploadOut,
    tags=["images"],
    openapi_extra=binary_body("image"),
    responses={200: {"model": ImageUploadOut, "description": "These pixels were already in the project."}},
)
def upload_image(
    ctx: Ctx,
    upload: UploadDep,
    response: Response,
    name: Annotated[str, Query(min_length=1, max_length=200, description="Image name (made unique).")],
    split: Annotated[str, Query(min_length=1, max_length=64, description="train, val or test...")] = "train",
    axes: Annotated[
        str | None,
        Query(
            min_length=2,
            max_length=5,
            description="The image's axes, overriding what the file says (OME letters T, Z, C, Y, X in "
            "storage order, e.g. CYX), as `diffseg import --axes`; a .npy array without it is read by its "
            "shape ((Y, X), (Y, X, C) or (C, Y, X) with C up to 4).",
        ),
    ] = None,
) -> ImageUploadOut:
    """Upload an image (``.npy``, TIFF or PNG body): 201 when new, 200 when the same pixels are known.

    An upload is an import: the pixels pass exactly the checks ``diffseg import`` applies to a file
    (axes from the file's metadata or ``axes``, size, NaN / infinite values, values finite in float32,
    the project's channel count; :meth:`Project.add_array`), and a refusal is a 422 that says what to
    change. One upload is one image: a 2D image or a z-stack (axes with Z, e.g. ``ZYX``: stored
    ``(Z, C, H, W)``, its voxels within the pixel limit); a time-lapse or a file of several series is
    refused with a message saying how to send it. Of several
    concurrent uploads of the same pixels exactly one answers 201 (the store's insert decides); the others
    answer 200 with the same image.

    To attach a ground-truth mask, POST it to ``/images/{ref}/annotations?kind=ground_truth``.
    """
    max_pixels = ctx.settings.max_pixels
    letters = None if axes is None else check_axes(axes, "axes")
    pixels = codec.decode_upload(upload.data, upload.media_type, max_pixels=max_pixels, axes=letters)
    if isinstance(pixels, ImageRead):
        pixels, letters = replace(pixels, path=Path(name)), None
    project = ctx.project()
    image_id, added = project.add_array(
        pixels, name, split=split, source=f"upload:{name}", max_pixels=max_pixels, axes=letters
    )
    if not added:
        response.status_code = 200
    return ImageUploadOut(image=image_out(project, project.image(image_id)), added=added)


@router.get("/images/{ref}", response_model=ImageOut, tags=["images"])
def get_image(ctx: Ctx, ref: RefPath) -> ImageOut:
    """One image by id or unique name."""
    project = ctx.project()
    return image_out(project, find_image(project, ref))


@router.get(
    "/images/{ref}/pixels",
    response_class=Response,
    tags=["images"],
    responses=npy_response("(C, H, W) pixels; a z-stack's (Z, C, H, W)"),
)
def image_pixels(ctx: Ctx, ref: RefPath) -> Response:
    """The stored pixels ``(C, H, W)`` (a z-stack's ``(Z, C, H, W)``) in their original dtype, as ``.npy``."""
    project = ctx.project()
    rec = find_image(project, ref)
    return npy(codec.to_npy(project.load_image(rec.id)), {"X-Image-Id": rec.id})


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
    rec = find_image(project, ref)
    state = "excluded" if body.state == "excluded" else _implied_state(project, rec)
    return image_out(project, project.set_state(rec.id, state))


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
    without one come last), or 204. For a z-stack, ``plane`` is its most uncertain plane (a stack is ranked
    by that plane's mean uncertainty)."""
    project = ctx.project()
    rec = project.next_image(split=split, strategy=strategy)
    if rec is None:
        return Response(status_code=204)
    return image_out(project, rec)
