"""The typed contract every process boundary shares: records, events, job states and job parameters.

Why one module of ~560 lines: the contract is meant to be read in one place (every record, event and
parameter model the processes exchange); it is declarations only.

One set of pydantic v2 models, used by the HTTP service (request and response bodies, so they make up
``/openapi.json``), by the Python client (what it returns), by the CLI, the demo and the widgets (which
read attributes, never string keys), and by the job worker (which loads :data:`JobParams` from the JSON
stored with the job). The project store's own frozen dataclasses convert with ``from_attributes``.

States and kinds are ``Literal`` types defined here once; the tuples beside them are for loops and
messages. Light module: pydantic and the standard library only (no torch, no HTTP).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from .errors import ConfigError
from .presets import PRESETS, Preset
from .task import TaskKind

__all__ = [
    "ANNOTATION_KINDS",
    "EVENT_KINDS",
    "IMAGE_STATES",
    "JOB_KINDS",
    "JOB_STATES",
    "PRESET_NAMES",
    "RESUMABLE_JOB_STATES",
    "TERMINAL_JOB_STATES",
    "TRAINING_KINDS",
    "UNREVIEWED_STATES",
    "Annotation",
    "AnnotationKind",
    "CotrainParams",
    "Counts",
    "Error",
    "EventData",
    "EventKind",
    "EventsPage",
    "Health",
    "Image",
    "ImageState",
    "ImageStateIn",
    "ImageUpload",
    "Job",
    "JobCreate",
    "JobEventOut",
    "JobKind",
    "JobParams",
    "JobState",
    "Limits",
    "Model",
    "PresetName",
    "PretrainParams",
    "ProjectInfo",
    "Proposal",
    "ProposalsCreate",
    "ProposeParams",
    "SavedAnnotation",
    "TaskClass",
    "TaskKind",
    "parse_job_params",
]

# ------------------------------------------------------------------------------------------ states, kinds
ImageState = Literal["unlabeled", "proposed", "in_review", "corrected", "ground_truth", "excluded"]
IMAGE_STATES: tuple[ImageState, ...] = get_args(ImageState)
"""Every state an image can be in (docs/architecture.md, project folder)."""
UNREVIEWED_STATES: tuple[ImageState, ...] = ("unlabeled", "proposed")
"""States the "next image" choice picks from."""

AnnotationKind = Literal["ground_truth", "correction"]
ANNOTATION_KINDS: tuple[AnnotationKind, ...] = get_args(AnnotationKind)
"""Who produced an annotation version: imported ground truth or an annotator's correction."""

JobState = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
JOB_STATES: tuple[JobState, ...] = get_args(JobState)
"""Every state a job can be in."""
TERMINAL_JOB_STATES: tuple[JobState, ...] = ("done", "failed", "cancelled", "interrupted")
"""States in which a job is not running (``finished_at`` is set)."""
RESUMABLE_JOB_STATES: tuple[JobState, ...] = ("cancelled", "failed", "interrupted")
"""States from which a job can be queued again (resume)."""

JobKind = Literal["pretrain", "propose", "cotrain"]
JOB_KINDS: tuple[JobKind, ...] = get_args(JobKind)
"""Every job kind the backend runs."""
TRAINING_KINDS: tuple[JobKind, ...] = ("pretrain", "cotrain")
"""Kinds that train (at most one of them runs per project at a time)."""

EventKind = Literal["progress", "log", "metrics", "checkpoint", "error", "done"]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)
"""What a progress event reports (see :class:`napari_diffseg.base.events.Event`)."""

PresetName = Literal["tiny", "cpu", "gpu"]
PRESET_NAMES: tuple[PresetName, ...] = get_args(PresetName)
assert set(PRESET_NAMES) == set(PRESETS), "PresetName must list base.presets.PRESETS"

_MAX_INT = 2**53
_SEED_MAX = 2**31 - 1
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,2})?)$")


class _Out(BaseModel):
    """A record sent by the backend: built from a store record (``from_attributes``); a newer server's
    extra fields are ignored by an older client."""

    model_config = ConfigDict(from_attributes=True, extra="ignore")


class _In(BaseModel):
    """A request body: unknown fields are refused (a typo is a 422 naming it, not silently ignored)."""

    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------------ records
class Error(_Out):
    """Every error response: what went wrong and what to do."""

    detail: str = Field(description="What went wrong and what to do about it.")
    code: str = Field(
        description="Short machine-readable reason: invalid, not_found, no_proposal, stale_annotation, "
        "conflict, too_large, unsupported_media_type, unauthorized, bad_host, busy, storage, internal."
    )
    current: int | None = Field(
        default=None, description="For code stale_annotation: the image's latest annotation version now."
    )


class Health(_Out):
    """Liveness of the backend."""

    status: Literal["ok"]
    version: str
    jobs_running: int
    jobs_queued: int
    speed: float | None = Field(
        default=None,
        description="How fast this backend runs jobs: wall seconds per predicted second of the cost model "
        "(1 = the reference machine; napari_diffseg.base.cost), measured by a few training steps when the "
        "backend started; null until measured, or when the measurement failed or was switched off.",
    )
    calibrating: bool = Field(
        default=False, description="The speed measurement is still running (speed is null until it ends)."
    )


class Counts(_Out):
    """How many rows each table of the project holds."""

    images: int
    annotations: int
    proposals: int
    models: int
    jobs: int


class Limits(_Out):
    """Upload limits of this backend."""

    max_upload_bytes: int
    max_pixels: int


class Model(_Out):
    """A registered model (``models/<id>/``)."""

    model_config = ConfigDict(from_attributes=True, extra="ignore", protected_namespaces=())

    id: str
    round: int
    method: str
    metrics: dict[str, Any]
    active: bool
    created_at: float


class TaskClass(_Out):
    """One class of a project's task: its value in a mask, its name and its display colour."""

    value: int
    name: str
    colour: str = Field(description="Display colour, #rrggbb.")


class ProjectInfo(_Out):
    """Project summary: counts, schema version, task, active model, images per state, limits."""

    name: str
    schema_version: int
    version: str = Field(description="napari-diffseg version of the backend.")
    counts: Counts
    states: dict[str, int] = Field(description="Number of images in each state.")
    active_model: Model | None
    limits: Limits
    task: TaskKind = Field(
        default="binary",
        description="What the project's masks hold: binary (0 = background, > 0 = foreground), multiclass "
        "(class values 0..K-1, named in classes) or instances (object ids, 0 = background, each object its "
        "own id). Chosen when the project was created; an older backend sends none (binary).",
    )
    classes: list[TaskClass] = Field(
        default_factory=list,
        description="The classes, value 0 (background) first: K for a multiclass project, 2 otherwise "
        "(background and the foreground / object class).",
    )
    num_classes: int = Field(
        default=2,
        description="Output classes of the project's networks: 2 (binary), K (multiclass), 3 (instances: "
        "background, object interior, object boundary).",
    )


class Image(_Out):
    """An image with its review state, uncertainty and latest annotation."""

    id: str
    name: str
    state: ImageState
    uncertainty: float | None
    split: str
    height: int
    width: int
    channels: int
    dtype: str
    source: str
    file_sha256: str
    created_at: float
    latest_version: int | None = Field(
        default=None, description="Latest annotation version (None: none yet)."
    )
    last_edit_dice: float | None = Field(
        default=None, description="Edit Dice of the latest annotation against the proposal it started from."
    )
    last_objects_added: int | None = Field(
        default=None,
        description="Instance projects: the latest annotation's objects added against its proposal (IoU 0.5 "
        "matching); None without a proposal or in other projects.",
    )
    last_objects_removed: int | None = Field(
        default=None, description="Instance projects: the latest annotation's proposed objects removed."
    )
    last_objects_changed: int | None = Field(
        default=None, description="Instance projects: the latest annotation's matched objects changed."
    )
    axes: str = Field(
        default="",
        description="The image's axes as read: letters from TZCYX in storage order (YX grey, YXC RGB, CYX "
        "fluorescence channels, ZYX / ZCYX a z-stack); the stored pixels are (C, H, W), a z-stack's "
        "(Z, C, H, W).",
    )
    shape: list[int] = Field(
        default_factory=list, description="The image's shape, one entry per axes letter."
    )
    channel_names: list[str] = Field(
        default_factory=list, description="Channel names from the file's metadata (empty: none)."
    )
    plane: int | None = Field(
        default=None,
        description="A z-stack's most uncertain plane in its latest proposal (the one to look at first); "
        "None for a 2D image or before any proposal.",
    )


class ImageStateIn(_In):
    """Reject an image or include it again (``POST /images/{ref}/state``)."""

    state: Literal["excluded", "included"] = Field(
        description="excluded: not used for training and skipped by /next (the proposal is useless for "
        "this image); included: back to the state its data implies (corrected or ground_truth after its "
        "latest annotation, proposed when it has a proposal, else unlabeled)."
    )


class ImageUpload(_Out):
    """Result of an upload: the image, and whether it was new (the same pixels are stored once)."""

    image: Image
    added: bool


class Annotation(_Out):
    """One immutable annotation version."""

    image_id: str
    version: int
    kind: AnnotationKind
    replaces: int | None
    proposal_id: int | None
    author: str
    edit_dice: float | None
    pixels_changed: int | None
    labels: int
    file_sha256: str
    created_at: float
    planes: list[int] | None = Field(
        default=None,
        description="A z-stack's annotated planes (trained on as labelled); None for a 2D image.",
    )
    objects_added: int | None = Field(
        default=None,
        description="Instance projects: objects of the correction matching no proposed object (IoU >= 0.5): "
        "painted new or split off. None without a proposal, or in a binary / multiclass project.",
    )
    objects_removed: int | None = Field(
        default=None, description="Instance projects: proposed objects matching no corrected object (erased)."
    )
    objects_changed: int | None = Field(
        default=None, description="Instance projects: matched objects whose pixels the annotator changed."
    )
    object_classes: dict[int, int] | None = Field(
        default=None,
        description="Instance projects with several object classes: each object's class {id: class 1..n}; "
        "None in every other project.",
    )


class SavedAnnotation(_Out):
    """The version a save created."""

    version: int
    annotation: Annotation


class Proposal(_Out):
    """A model's cached proposal for an image."""

    model_config = ConfigDict(from_attributes=True, extra="ignore", protected_namespaces=())

    id: int
    image_id: str
    model_id: str
    classes: int
    uncertainty: float
    file_sha256: str
    created_at: float
    plane: int | None = Field(
        default=None,
        description="A z-stack's plane of highest mean uncertainty (None for a 2D image); the proposal's "
        "uncertainty is that plane's mean.",
    )


# ------------------------------------------------------------------------------------------ events
class EventData(_Out):
    """One progress report of a job, as persisted and streamed (a :class:`~.events.Event` as JSON)."""

    model_config = ConfigDict(from_attributes=True, extra="allow")

    kind: EventKind = Field(
        description="progress (a step finished), log (a message), metrics (an evaluation finished), "
        "checkpoint (state saved; message holds the path), error, done."
    )
    phase: str = ""
    step: int = 0
    total: int = 0
    losses: dict[str, float] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    message: str = ""
    elapsed: float = 0.0


class JobEventOut(_Out):
    """One persisted progress event; ``seq`` counts from 1."""

    job_id: int
    seq: int
    time: float
    data: EventData


# ------------------------------------------------------------------------------------------ job parameters
class _Params(_In):
    """Parameters every job kind takes (strict types: ``"3"`` or ``true`` is not a number; no NaN or
    infinity). ``overrides`` are checked against the preset's types and each field's documented range
    (:data:`~napari_diffseg.base.presets.PRESET_RANGES`, e.g. ``lr`` in ``(0, 1]``)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    preset: PresetName | None = Field(
        default=None,
        description="Compute budget: tiny | cpu | gpu. Default: cpu for training jobs; for propose, the "
        "preset the active model was trained with.",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Preset fields to change, e.g. {'cotrain_steps': 50}; checked against the preset's types "
        "and each field's range (e.g. lr in (0, 1], batch_size in [1, 1024], patch_size in [1, 4096]).",
    )
    seed: int = Field(default=0, ge=0, le=_SEED_MAX)
    device: str = Field(default="auto", max_length=16, description="auto | cpu | cuda | cuda:N | mps.")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N or mps")
        return value

    @field_validator("overrides")
    @classmethod
    def _valid_overrides(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            PRESETS["cpu"].parse_overrides(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    def resolve_preset(self, default: Preset | None = None) -> Preset:
        """The preset this job runs with: ``preset`` (without one: ``default``, else ``cpu``) with the
        ``overrides`` applied (parsed by :meth:`Preset.parse_overrides`, the one place that does)."""
        if self.preset is None and default is not None:
            base = default
        else:
            base = PRESETS[self.preset or "cpu"]
        return base.parse_overrides(self.overrides)

    def stored(self) -> dict[str, Any]:
        """The JSON stored with the job: what was given (no ``kind``, no defaults filled in)."""
        return self.model_dump(mode="json", exclude={"kind"}, exclude_unset=True)


class PretrainParams(_Params):
    """Unsupervised teacher pretraining (Stage A)."""

    kind: Literal["pretrain"] = "pretrain"


class ProposeParams(_Params):
    """Teacher proposals (pseudo-label + uncertainty) for images; None takes the preset's value."""

    kind: Literal["propose"] = "propose"
    ids: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, max_length=100_000, description="Image ids or names (default: every unreviewed image)."
    )
    steps: int | None = Field(default=None, ge=1, le=1000, description="DDIM steps S (preset: ddim_steps).")
    samples: int | None = Field(default=None, ge=1, le=256, description="Samples E per image.")
    rounds: int | None = Field(default=None, ge=1, le=100, description="Chained rounds R.")


class CotrainParams(_Params):
    """Co-training rounds (teacher + twin students)."""

    kind: Literal["cotrain"] = "cotrain"
    rounds: int = Field(default=1, ge=1, le=100, description="Co-training rounds to run.")
    nproc: int = Field(
        default=1, ge=1, le=64, description="Processes under torchrun (one per GPU, or gloo CPU processes)."
    )


JobParams = Annotated[PretrainParams | ProposeParams | CotrainParams, Field(discriminator="kind")]
"""What a job runs with: the body of ``POST /jobs`` (``{"kind", "params"}``), what the CLI builds, the
JSON stored with the job (:meth:`_Params.stored`) and what the worker loads (:func:`parse_job_params`)."""

_JOB_PARAMS: TypeAdapter[PretrainParams | ProposeParams | CotrainParams] = TypeAdapter(JobParams)


def _message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"][1:] if p not in JOB_KINDS) or "params"
        msg = str(err["msg"]).removeprefix("Value error, ").rstrip(".")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def parse_job_params(
    kind: str, params: Mapping[str, Any] | None = None
) -> PretrainParams | ProposeParams | CotrainParams:
    """Typed parameters of a ``kind`` job from a JSON dict (a request, the stored JSON, the CLI's).

    Raises:
        ConfigError: An unknown kind or parameter, or a value of the wrong type or out of range (the
            message names it and says what is allowed).
    """
    if kind not in JOB_KINDS:
        raise ConfigError(f"unknown job kind {kind!r}; choose one of {', '.join(JOB_KINDS)}.")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ConfigError("job parameters must be an object (a JSON dict).")
    if "kind" in params and params["kind"] != kind:
        raise ConfigError(f"job parameters say kind {params['kind']!r} for a {kind} job.")
    try:
        return _JOB_PARAMS.validate_python({**params, "kind": kind})
    except ValidationError as exc:
        raise ConfigError(f"invalid parameters for a {kind} job: {_message(exc)}.") from None


class JobCreate(_In):
    """Start a job: ``kind`` and its parameters (see :data:`JobParams` for each kind)."""

    kind: JobKind
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="preset (tiny|cpu|gpu), overrides (preset fields, e.g. {'cotrain_steps': 50}), seed, "
        "device (auto|cpu|cuda|cuda:N|mps); propose: ids, steps, samples, rounds; cotrain: rounds, nproc.",
    )

    def typed(self) -> PretrainParams | ProposeParams | CotrainParams:
        """The parameters validated for the kind (raises :class:`ConfigError`)."""
        return parse_job_params(self.kind, self.params)


class ProposalsCreate(_In):
    """Request teacher proposals (a ``propose`` job) for images (default: every unreviewed image)."""

    ids: list[str] | None = Field(default=None, max_length=100_000, description="Image ids or names.")
    steps: int | None = Field(default=None, ge=1, le=1000, description="DDIM steps S.")
    samples: int | None = Field(default=None, ge=1, le=256, description="Samples E per image.")
    rounds: int | None = Field(default=None, ge=1, le=100, description="Chained rounds R.")
    preset: PresetName | None = None
    seed: int | None = Field(default=None, ge=0, le=_SEED_MAX)
    device: str | None = Field(default=None, max_length=16)

    def typed(self) -> ProposeParams:
        """As the stored ``propose`` job's parameters (only what was given)."""
        params = parse_job_params("propose", self.model_dump(exclude_none=True))
        assert isinstance(params, ProposeParams)
        return params


class Job(_Out):
    """A background job."""

    id: int
    kind: JobKind
    params: dict[str, Any]
    state: JobState
    error: str | None
    pid: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    cancel_requested: bool = Field(
        default=False, description="A cancel was requested and the job has not stopped yet."
    )

    @property
    def ended(self) -> bool:
        """True in a terminal state (done, failed, cancelled, interrupted)."""
        return self.state in TERMINAL_JOB_STATES

    @property
    def resumable(self) -> bool:
        """True when it can be queued again (cancelled, failed, interrupted)."""
        return self.state in RESUMABLE_JOB_STATES


class EventsPage(_Out):
    """A page of events after a cursor, and the job's state when they were read."""

    job: Job
    events: list[JobEventOut]
    next: int = Field(description="Pass as `since` to get the events after these.")
