"""The project store: SQLite (WAL) + files on disk, the single source of truth (docs/architecture.md).

No Qt, no HTTP, no torch at import time. Start with :meth:`Project.create` / :meth:`Project.open`.
"""

from __future__ import annotations

from napari_diffseg.project.errors import StaleVersionError
from napari_diffseg.project.importing import ImportItem, collect_dataset, collect_paths
from napari_diffseg.project.records import (
    ANNOTATION_KINDS,
    IMAGE_STATES,
    JOB_STATES,
    AnnotationRecord,
    ImageRecord,
    ImportResult,
    JobEvent,
    JobRecord,
    ModelRecord,
    ProposalRecord,
)
from napari_diffseg.project.schema import MIGRATIONS, SCHEMA_VERSION
from napari_diffseg.project.store import DB_NAME, Project, check_project

__all__ = [
    "ANNOTATION_KINDS",
    "DB_NAME",
    "IMAGE_STATES",
    "JOB_STATES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AnnotationRecord",
    "ImageRecord",
    "ImportItem",
    "ImportResult",
    "JobEvent",
    "JobRecord",
    "ModelRecord",
    "Project",
    "ProposalRecord",
    "StaleVersionError",
    "check_project",
    "collect_dataset",
    "collect_paths",
]
