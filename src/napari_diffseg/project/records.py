"""Typed, immutable records returned by :class:`~napari_diffseg.project.store.Project` and the state names.

Every record has ``to_dict()`` giving a JSON-serialisable dict (what the HTTP layer and ``--json`` print).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

# States and kinds are defined once, in the shared contract; re-exported here for the store's callers.
from napari_diffseg.base.contracts import (
    ANNOTATION_KINDS,
    IMAGE_STATES,
    JOB_STATES,
    TERMINAL_JOB_STATES,
    UNREVIEWED_STATES,
)

__all__ = [
    "ANNOTATION_KINDS",
    "IMAGE_STATES",
    "JOB_STATES",
    "TERMINAL_JOB_STATES",
    "UNREVIEWED_STATES",
    "AnnotationRecord",
    "ImageRecord",
    "ImportResult",
    "JobEvent",
    "JobRecord",
    "ModelRecord",
    "ProposalRecord",
]


class _Record:
    """Mixin: ``to_dict()`` for the frozen dataclasses below (dict fields are deep-copied)."""

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-serialisable dict."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class ImageRecord(_Record):
    """One imported image.

    Attributes:
        id: First 16 hex digits of the sha256 of the pixel content (dtype, shape and bytes).
        name: Unique human-readable name (the file stem at import, suffixed ``-2``, ``-3``... on a clash).
        state: One of :data:`IMAGE_STATES`.
        uncertainty: Mean uncertainty of the latest proposal, or None before any proposal.
        split: ``train``, ``val`` or a name starting with ``test``.
        height, width, channels: Pixel size; the stored array is ``(channels, height, width)``.
        dtype: numpy dtype name of the stored pixels (``uint8``, ``uint16``, ``float32``...).
        source: Where it came from (a file path, or ``array:<name>`` for in-memory imports).
        file_sha256: sha256 of ``images/<id>.tif``.
        created_at: Unix time of the import.
        axes: The image's axes as read, letters from ``TZCYX`` in storage order (``"YX"`` grey, ``"YXC"``
            RGB, ``"CYX"`` fluorescence channels); ``shape`` has one entry per letter.
        shape: The image's shape in the order of ``axes``.
        channel_names: Channel names from the file's metadata (empty when it had none).
        plane: For a z-stack (``"Z"`` in ``axes``, stored ``(Z, C, H, W)``): the plane with the highest mean
            uncertainty in its latest proposal (the one to look at first); None for a 2D image or before
            any proposal.
    """

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
    axes: str = ""
    shape: tuple[int, ...] = ()
    channel_names: tuple[str, ...] = ()
    plane: int | None = None

    @property
    def planes(self) -> int:
        """The number of Z planes: 1 for a 2D image."""
        return int(self.shape[self.axes.index("Z")]) if "Z" in self.axes and self.shape else 1

    @property
    def is_stack(self) -> bool:
        """A z-stack: stored ``(Z, C, H, W)``, annotated with ``(Z, H, W)`` masks."""
        return "Z" in self.axes


@dataclass(frozen=True)
class AnnotationRecord(_Record):
    """One saved (immutable) annotation version of an image.

    Attributes:
        image_id: The image.
        version: 1, 2, 3... per image; file ``annotations/<image_id>/<version>.tif``.
        kind: ``ground_truth`` or ``correction``.
        replaces: The version this one replaced (None for the first).
        proposal_id: The proposal the annotator started from, if any.
        author: Free text (user name, ``import``...).
        edit_dice: Foreground Dice between the proposal's hard mask and this mask (None without a proposal).
        pixels_changed: Pixels whose label differs from the proposal's hard mask (None without a proposal).
        labels: Largest label value in the mask.
        file_sha256: sha256 of the file.
        created_at: Unix time of the save.
        planes: For a z-stack: the indices of the planes this version annotates (trained on as labelled;
            the others count as unlabelled); None for a 2D image.
        objects_added, objects_removed, objects_changed: An instance project's edit cost in objects
            against the proposal's objects (matched at IoU 0.5, :func:`napari_diffseg.base.labels.object_edits`);
            None without a proposal or in a binary / multiclass project.
        object_classes: An instance project with several object classes: ``{object id: class 1..n}`` for
            every object of the mask; None otherwise.
    """

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
    planes: tuple[int, ...] | None = None
    objects_added: int | None = None
    objects_removed: int | None = None
    objects_changed: int | None = None
    object_classes: dict[int, int] | None = None


@dataclass(frozen=True)
class ProposalRecord(_Record):
    """A model's cached proposal for an image: class probabilities ``(K, H, W)`` plus uncertainty ``(H, W)``.

    Attributes:
        id: Proposal id (stable for a (model, image) pair; a new proposal for the pair replaces the file).
        image_id, model_id: What it is for and who made it.
        classes: ``K``.
        uncertainty: Mean of the uncertainty map (a z-stack: the highest mean of one plane).
        file_sha256: sha256 of ``proposals/<model_id>/<image_id>.tif``.
        created_at: Unix time of the (latest) save.
        plane: For a z-stack (probabilities ``(Z, K, H, W)``): the plane of highest mean uncertainty; None
            for a 2D image.
    """

    id: int
    image_id: str
    model_id: str
    classes: int
    uncertainty: float
    file_sha256: str
    created_at: float
    plane: int | None = None


@dataclass(frozen=True)
class ModelRecord(_Record):
    """A registered model folder ``models/<id>/``.

    Attributes:
        id: Model id (``[A-Za-z0-9_-]+``).
        round: Co-training round (0 for a pretrained teacher).
        method: How it was trained (``diffseg``, ``supervised``, ``teacher``...).
        metrics: Whatever metrics were recorded at registration.
        active: True for the one model used for proposals / predictions.
        created_at: Unix time of the registration.
    """

    id: str
    round: int
    method: str
    metrics: dict[str, Any] = field(hash=False)
    active: bool
    created_at: float


@dataclass(frozen=True)
class JobRecord(_Record):
    """A background job (pretrain, propose, cotrain...).

    Attributes:
        id: Job id; its files live in ``jobs/<id>/``.
        kind: What it runs.
        params: Its JSON parameters.
        state: One of :data:`JOB_STATES`.
        error: The failure message, if any.
        pid: The process running it, if known.
        created_at, started_at, finished_at, updated_at: Unix times (None when not reached yet).
    """

    id: int
    kind: str
    params: dict[str, Any] = field(hash=False)
    state: str
    error: str | None
    pid: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float


@dataclass(frozen=True)
class JobEvent(_Record):
    """One persisted progress event of a job (``seq`` increases by 1 from 1)."""

    job_id: int
    seq: int
    time: float
    data: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class ImportResult(_Record):
    """What an import did.

    Attributes:
        ids: The image id of every imported item, in input order (existing ids for re-imports).
        added: Ids of images that were new to the project.
        existing: Ids of images whose pixels were already in the project (nothing about them changed).
        masks_saved: Ids whose mask was saved as a ``ground_truth`` annotation.
        masks_skipped: Ids whose mask was not saved because the image already has an annotation that differs
            (annotations are never replaced by an import; save a correction instead).
    """

    ids: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    existing: tuple[str, ...] = ()
    masks_saved: tuple[str, ...] = ()
    masks_skipped: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-serialisable dict (lists instead of tuples)."""
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self)}
