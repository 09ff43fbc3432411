"""Routes ``/images/{ref}/annotations``: list an image's versions, fetch one's mask, save a new one.

A save names the version it replaces; a stale ``replaces`` is refused with 409 ``{"detail", "code",
"current"}`` (the store raises :class:`~napari_diffseg.project.StaleVersionError`), never lost silently.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from fastapi import Path as PathParam
from fastapi import Query, Response

from napari_diffseg.backend import codec
from napari_diffseg.backend.handlers import ApiError
from napari_diffseg.backend.routes.common import (
    MAX_ID,
    RefPath,
    WatershedQuery,
    api_router,
    find_image,
    parse_watershed,
)
from napari_diffseg.backend.schemas import AnnotationOut, SaveAnnotationOut
from napari_diffseg.backend.state import Ctx
from napari_diffseg.backend.uploads import UploadDep, binary_body, npy, npy_response
from napari_diffseg.base.errors import DataError

__all__ = ["annotation_pixels", "list_annotations", "router", "save_annotation"]

router = api_router()


@router.get("/images/{ref}/annotations", response_model=list[AnnotationOut], tags=["annotations"])
def list_annotations(ctx: Ctx, ref: RefPath) -> list[AnnotationOut]:
    """Every annotation version of an image, oldest first."""
    project = ctx.project()
    rec = find_image(project, ref)
    return [AnnotationOut(**a.to_dict()) for a in project.annotation_versions(rec.id)]


@router.get(
    "/images/{ref}/annotations/{version}/pixels",
    response_class=Response,
    tags=["annotations"],
    responses=npy_response("The (H, W) label mask (a z-stack's: (Z, H, W))"),
)
def annotation_pixels(
    ctx: Ctx, ref: RefPath, version: Annotated[int, PathParam(ge=1, le=MAX_ID, description="Version.")]
) -> Response:
    """One annotation version's label mask ``(H, W)`` (a z-stack's ``(Z, H, W)``) as ``.npy`` (the smallest
    unsigned dtype)."""
    project = ctx.project()
    rec = find_image(project, ref)
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
    return npy(codec.to_npy(mask.astype(dtype)), {"X-Image-Id": rec.id, "X-Version": str(version)})


@router.post(
    "/images/{ref}/annotations",
    status_code=201,
    response_model=SaveAnnotationOut,
    tags=["annotations"],
    openapi_extra=binary_body("label mask (H, W), 0 = background; a z-stack's: (Z, H, W) .npy"),
)
def save_annotation(
    ctx: Ctx,
    ref: RefPath,
    upload: UploadDep,
    replaces: Annotated[
        int | None,
        Query(
            ge=1, le=MAX_ID, description="The version this edit started from; omit for a first annotation."
        ),
    ] = None,
    kind: Annotated[Literal["correction", "ground_truth"], Query(description="Who made it.")] = "correction",
    proposal_id: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="The proposal the edit started from (records edit Dice)."),
    ] = None,
    author: Annotated[str, Query(max_length=200, description="Free text.")] = "",
    planes: Annotated[
        list[int] | None,
        Query(
            max_length=100_000,
            description="A z-stack only: the planes this version annotates (repeat the parameter); omitted: "
            "every plane holding a labelled pixel.",
        ),
    ] = None,
    binarize: Annotated[
        bool,
        Query(
            description="A binary project only: take every value > 0 as foreground (stored as 1), also in a "
            "mask painted with more than two labels, which is refused otherwise."
        ),
    ] = False,
    with_classes: Annotated[
        bool,
        Query(
            description="An instance project with several object classes: the body is one .npy of shape "
            "(2, H, W) (a z-stack's (2, Z, H, W)): the object ids, then each pixel's class (0 = none, 1..n); "
            "each object takes the majority class under it."
        ),
    ] = False,
    watershed: WatershedQuery = None,
) -> SaveAnnotationOut:
    """Save a new annotation version; 409 ``{"detail", "current"}`` if ``replaces`` is not the latest.

    A z-stack's mask is ``(Z, H, W)``; only its annotated planes (``planes``, else those holding a label)
    are trained on as labelled. The mask must fit the project's task (``GET /project``): class values
    below K (multiclass), object ids with each id one piece (instances: any ids, as napari paints them),
    one or two foreground values (binary, unless ``binarize``); else 422 and nothing is saved. An instance
    project with several object classes needs each object's class: ``with_classes``. An instance
    correction of a proposal whose objects the annotator re-split (``GET .../proposal/pixels?watershed=``)
    names the same ``watershed``, so its edit cost in objects counts from what they saw."""
    overrides = parse_watershed(watershed)
    classes = None
    if with_classes:
        mask, classes = codec.decode_mask_with_classes(
            upload.data, upload.media_type, max_pixels=ctx.settings.max_pixels
        )
    else:
        mask = codec.decode_mask(upload.data, upload.media_type, max_pixels=ctx.settings.max_pixels)
    project = ctx.project()
    rec = find_image(project, ref)
    version = project.save_annotation(
        rec.id,
        mask,
        kind=kind,
        replaces=replaces,
        proposal_id=proposal_id,
        author=author,
        planes=planes,
        binarize=binarize,
        classes=classes,
        watershed=overrides,
    )
    ann = project.annotation(rec.id, version)
    assert ann is not None
    return SaveAnnotationOut(version=version, annotation=AnnotationOut(**ann.to_dict()))
