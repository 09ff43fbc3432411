"""The training backend: an HTTP service over the project store, its job runner and its Python client.

- :func:`create_app` / :func:`serve` (:mod:`.app`): the FastAPI service (``diffseg serve``).
- :class:`JobManager` (:mod:`.runner`): runs queued jobs in worker processes (:mod:`.worker`).
- :class:`DiffsegClient` (:mod:`.client`): what the napari plugin and the CLI use to talk to it.
- :mod:`.errors`: the client's exceptions.

Importing this package loads nothing heavy (no FastAPI, no torch, no Qt); each name is imported from its
module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AuthError",
    "BackendError",
    "BackendUnavailable",
    "DiffsegClient",
    "JobManager",
    "StaleAnnotation",
    "create_app",
    "serve",
]

_WHERE = {
    "AuthError": "errors",
    "BackendError": "errors",
    "BackendUnavailable": "errors",
    "StaleAnnotation": "errors",
    "DiffsegClient": "client",
    "JobManager": "runner",
    "create_app": "app",
    "serve": "app",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
