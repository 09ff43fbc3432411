"""Pydantic models of the HTTP API's JSON bodies (they make up ``/openapi.json``).

Response models mirror the project store's records (:mod:`napari_diffseg.project.records`); request
models forbid unknown fields so a typo is a 422 with a message rather than silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AnnotationOut",
    "CountsOut",
    "ErrorOut",
    "EventsOut",
    "HealthOut",
    "ImageOut",
    "ImageStateIn",
    "ImageUploadOut",
    "JobCreate",
    "JobEventOut",
    "JobOut",
    "LimitsOut",
    "ModelOut",
    "ProjectOut",
    "ProposalOut",
    "ProposalsCreate",
    "SaveAnnotationOut",
]

JobKind = Literal["pretrain", "propose", "cotrain"]
_MAX_INT = 2**53


class ErrorOut(BaseModel):
    """Every error response: what went wrong and what to do."""

    detail: str = Field(description="What went wrong and what to do about it.")
    code: str = Field(
        description="Short machine-readable reason: invalid, not_found, no_proposal, stale_annotation, "
        "conflict, too_large, unsupported_media_type, unauthorized, bad_host, busy, storage, internal."
    )
    current: int | None = Field(
        default=None, description="For code stale_annotation: the image's latest annotation version now."
    )


class HealthOut(BaseModel):
    """Liveness of the backend."""

    status: Literal["ok"]
    version: str
    jobs_running: int
    jobs_queued: int


class CountsOut(BaseModel):
    """How many rows each table of the project holds."""

    images: int
    annotations: int
    proposals: int
    models: int
    jobs: int


class LimitsOut(BaseModel):
    """Upload limits of this backend."""

    max_upload_bytes: int
    max_pixels: int


class ModelOut(BaseModel):
    """A registered model (``models/<id>/``)."""

    id: str
    round: int
    method: str
    metrics: dict[str, Any]
    active: bool
    created_at: float


class ProjectOut(BaseModel):
    """Project summary: counts, schema version, active model, images per state, limits."""

    name: str
    schema_version: int
    version: str = Field(description="napari-diffseg version of the backend.")
    counts: CountsOut
    states: dict[str, int] = Field(description="Number of images in each state.")
    active_model: ModelOut | None
    limits: LimitsOut


class ImageOut(BaseModel):
    """An image with its review state, uncertainty and latest annotation."""

    id: str
    name: str
    state: str
    uncertainty: float | None
    split: str
    height: int
    width: int
    channels: int
    dtype: str
    source: str
    file_sha256: str
    created_at: float
    latest_version: int | None = Field(description="Latest annotation version (None: none yet).")
    last_edit_dice: float | None = Field(
        description="Edit Dice of the latest annotation against the proposal it started from."
    )


class ImageStateIn(BaseModel):
    """Reject an image or include it again (``POST /images/{ref}/state``)."""

    model_config = ConfigDict(extra="forbid")

    state: Literal["excluded", "included"] = Field(
        description="excluded: not used for training and skipped by /next (the proposal is useless for "
        "this image); included: back to the state its data implies (corrected or ground_truth after its "
        "latest annotation, proposed when it has a proposal, else unlabeled)."
    )


class ImageUploadOut(BaseModel):
    """Result of an upload: the image, and whether it was new (the same pixels are stored once)."""

    image: ImageOut
    added: bool


class AnnotationOut(BaseModel):
    """One immutable annotation version."""

    image_id: str
    version: int
    kind: str
    replaces: int | None
    proposal_id: int | None
    author: str
    edit_dice: float | None
    pixels_changed: int | None
    labels: int
    file_sha256: str
    created_at: float


class SaveAnnotationOut(BaseModel):
    """The version a save created."""

    version: int
    annotation: AnnotationOut


class ProposalOut(BaseModel):
    """A model's cached proposal for an image."""

    id: int
    image_id: str
    model_id: str
    classes: int
    uncertainty: float
    file_sha256: str
    created_at: float


class JobOut(BaseModel):
    """A background job."""

    id: int
    kind: str
    params: dict[str, Any]
    state: Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
    error: str | None
    pid: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    cancel_requested: bool = Field(description="A cancel was requested and the job has not stopped yet.")


class JobEventOut(BaseModel):
    """One persisted progress event; ``seq`` counts from 1."""

    job_id: int
    seq: int
    time: float
    data: dict[str, Any] = Field(
        description="kind (progress, log, metrics, checkpoint, error, done), phase, step, total, losses, "
        "metrics, message, elapsed."
    )


class EventsOut(BaseModel):
    """A page of events after a cursor, and the job's state when they were read."""

    job: JobOut
    events: list[JobEventOut]
    next: int = Field(description="Pass as `since` to get the events after these.")


class JobCreate(BaseModel):
    """Start a job: ``kind`` and its parameters (see the ``params`` description)."""

    model_config = ConfigDict(extra="forbid")

    kind: JobKind
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="preset (tiny|cpu|gpu), overrides (preset fields, e.g. {'cotrain_steps': 50}), seed, "
        "device (auto|cpu|cuda|cuda:N|mps); propose: ids, steps, samples, rounds; cotrain: rounds.",
    )


class ProposalsCreate(BaseModel):
    """Request teacher proposals (a ``propose`` job) for images (default: every unreviewed image)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = Field(default=None, max_length=100_000, description="Image ids or names.")
    steps: int | None = Field(default=None, ge=1, le=1000, description="DDIM steps S.")
    samples: int | None = Field(default=None, ge=1, le=256, description="Samples E per image.")
    rounds: int | None = Field(default=None, ge=1, le=100, description="Chained rounds R.")
    preset: Literal["tiny", "cpu", "gpu"] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    device: str | None = Field(default=None, max_length=16)
