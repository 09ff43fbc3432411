"""Transitional: job parameters are :data:`napari_diffseg.base.contracts.JobParams` now.

Kept only until the HTTP routes call :func:`~napari_diffseg.base.contracts.parse_job_params` directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from napari_diffseg.base.contracts import JOB_KINDS, TRAINING_KINDS, parse_job_params

__all__ = ["JOB_KINDS", "TRAINING_KINDS", "validate_params"]


def validate_params(kind: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The stored JSON of a ``kind`` job's parameters (raises ``ConfigError`` when they are invalid)."""
    return parse_job_params(kind, params).stored()
