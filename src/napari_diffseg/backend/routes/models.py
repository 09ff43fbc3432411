"""Routes ``/models``: list with metrics, one model, make it active, download its weights."""

from __future__ import annotations

from fastapi.responses import FileResponse

from napari_diffseg.backend.handlers import ApiError
from napari_diffseg.backend.routes.common import ModelIdPath, api_router, get_model_out
from napari_diffseg.backend.schemas import ModelOut
from napari_diffseg.backend.state import Ctx

__all__ = ["WEIGHTS_FILE", "activate_model", "get_model", "list_models", "model_weights", "router"]

WEIGHTS_FILE = (
    "weights.safetensors"  # napari_diffseg.core.checkpoint.WEIGHTS_FILE (that module imports torch)
)

router = api_router()


@router.get("/models", response_model=list[ModelOut], tags=["models"])
def list_models(ctx: Ctx) -> list[ModelOut]:
    """Every registered model with its metrics, oldest first."""
    return [ModelOut(**m.to_dict()) for m in ctx.project().models()]


@router.get("/models/{model_id}", response_model=ModelOut, tags=["models"])
def get_model(ctx: Ctx, model_id: ModelIdPath) -> ModelOut:
    """One model."""
    return get_model_out(ctx.project(), model_id)


@router.post("/models/{model_id}/activate", response_model=ModelOut, tags=["models"])
def activate_model(ctx: Ctx, model_id: ModelIdPath) -> ModelOut:
    """Make a model the active one (used for proposals)."""
    project = ctx.project()
    get_model_out(project, model_id)
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
    get_model_out(project, model_id)
    folder = project.model_dir(model_id)
    path = folder / WEIGHTS_FILE
    if path.is_symlink() or not path.is_file() or path.resolve().parent != folder.resolve():
        raise ApiError(
            404, f"model {model_id!r} has no {WEIGHTS_FILE}; its folder is incomplete.", "not_found"
        )
    return FileResponse(path, media_type="application/octet-stream", filename=f"{model_id}.safetensors")
