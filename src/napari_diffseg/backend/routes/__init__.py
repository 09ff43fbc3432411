"""The backend's routes, one :class:`fastapi.APIRouter` per resource (all under ``/api/v1``).

- :mod:`.project`: ``/health``, ``/project``
- :mod:`.images`: ``/images`` (list, upload, pixels, exclude / include) and ``/next``
- :mod:`.annotations`: ``/images/{ref}/annotations`` (versions, pixels, save with ``replaces``)
- :mod:`.proposals`: ``/images/{ref}/proposal``, ``POST /proposals``
- :mod:`.jobs`: ``/jobs`` (queue, status, events, SSE stream, cancel, resume)
- :mod:`.models`: ``/models`` (list, activate, weights)
- :mod:`.common`: what they share (prefix, error responses, parameter types, lookups)
"""

from fastapi import APIRouter

from napari_diffseg.backend.routes import annotations as _annotations
from napari_diffseg.backend.routes import images as _images
from napari_diffseg.backend.routes import jobs as _jobs
from napari_diffseg.backend.routes import models as _models
from napari_diffseg.backend.routes import project as _project
from napari_diffseg.backend.routes import proposals as _proposals

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (
    _project.router,
    _images.router,
    _annotations.router,
    _proposals.router,
    _jobs.router,
    _models.router,
)
