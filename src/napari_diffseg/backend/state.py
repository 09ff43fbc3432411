"""What the request handlers share: the settings, one project connection per thread, the job manager,
the proposal cache, and the ``Ctx`` dependency that hands them to a handler.

Handlers that touch SQLite or files are plain ``def`` (FastAPI runs them in its thread pool); each pool
thread opens its own :class:`~napari_diffseg.project.Project` connection (WAL: readers never wait for a
writer).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, Request

from napari_diffseg.backend import codec
from napari_diffseg.backend.calibrate import Calibration
from napari_diffseg.backend.handlers import ApiError
from napari_diffseg.backend.runner import JobManager
from napari_diffseg.project import Project
from napari_diffseg.project.records import ProposalRecord

__all__ = ["BackendState", "Ctx", "ProjectPool", "ProposalCache", "Settings", "get_state"]


@dataclass(frozen=True)
class Settings:
    """What a backend was created with."""

    root: Path
    token: str | None
    max_upload_bytes: int
    max_pixels: int


class ProjectPool:
    """One open :class:`Project` per thread (each with its own SQLite connection)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._local = threading.local()
        self._all: list[Project] = []
        self._lock = threading.Lock()

    def get(self) -> Project:
        """This thread's project (opened on first use)."""
        project = getattr(self._local, "project", None)
        if project is None:
            project = Project.open(self.root)
            self._local.project = project
            with self._lock:
                self._all.append(project)
        return project

    def close_all(self) -> None:
        """Close every thread's project (at shutdown)."""
        with self._lock:
            for project in self._all:
                project.close()
            self._all.clear()


class ProposalCache:
    """Proposal parts as ready-to-send ``.npy`` files in ``PROJECT/cache/proposals/``.

    A file's name holds the proposal id, the sha256 of the stored proposal and the part, so a replaced
    proposal is never served from the cache; the first fetch decodes the proposal and writes all three
    parts, later fetches are one file read.
    """

    PARTS = ("probs", "uncertainty", "mask", "instances", "classes")

    def __init__(self, root: Path) -> None:
        self.folder = root / "cache" / "proposals"

    def _path(self, prop: ProposalRecord, part: str) -> Path:
        return self.folder / f"{prop.id}-{prop.file_sha256[:16]}-{part}.npy"

    def get(self, project: Project, prop: ProposalRecord, part: str) -> bytes:
        """The ``.npy`` bytes of one part (``probs``, ``uncertainty``, ``mask``, or in an instance project
        ``instances``: the objects of the seeded watershed, one id each) of a proposal.

        Raises:
            ApiError: 404 when the proposal disappeared in between; 409 for ``instances`` of a proposal
                that is not an instance project's 3-class proposal.
        """
        path = self._path(prop, part)
        with contextlib.suppress(FileNotFoundError):
            return path.read_bytes()
        from napari_diffseg.base.fileio import atomic_write_bytes

        found = project.proposal(prop.image_id, prop.model_id)
        if found is None:
            raise ApiError(404, "the proposal disappeared while it was read; fetch it again.", "no_proposal")
        prop, probs, unc = found  # the model may have proposed again since: cache what is there now
        k_axis = probs.ndim - 3  # a z-stack's probabilities are (Z, K, H, W)
        k = probs.shape[k_axis]
        if k == 1:
            mask = np.take(probs, 0, axis=k_axis) >= 0.5
        else:
            mask = np.argmax(probs, axis=k_axis)
        labels = mask.astype(np.uint8 if k <= 256 else np.uint16)
        arrays = {"probs": probs.astype(np.float32), "uncertainty": unc.astype(np.float32), "mask": labels}
        task = project.task
        if k >= 3 and task.kind == "instances":
            from napari_diffseg.core.instances import class_map, classify_objects, proposal_instances

            arrays["instances"] = proposal_instances(probs, project.model_watershed(prop.model_id))
            if task.classed:  # each proposed object's class, as a class map beside the ids
                arrays["classes"] = class_map(
                    arrays["instances"], classify_objects(arrays["instances"], probs)
                )
        if part == "classes" and "classes" not in arrays:
            raise ApiError(
                409,
                f"part=classes is the class of each proposed object in an instance project with several object "
                f"classes; this project's task is {task}: ask for part=instances or part=mask.",
                "conflict",
            )
        if part == "instances" and "instances" not in arrays:
            raise ApiError(
                409,
                f"part=instances is an instance project's proposal as objects; this project's task is "
                f"{project.task} (a {k}-class proposal): ask for part=mask.",
                "conflict",
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(f"{prop.id}-*.npy"):
            if not stale.name.startswith(f"{prop.id}-{prop.file_sha256[:16]}-"):
                with contextlib.suppress(OSError):
                    stale.unlink()
        out = b""
        for name, arr in arrays.items():
            data = codec.to_npy(arr)
            atomic_write_bytes(self._path(prop, name), data)
            if name == part:
                out = data
        return out


class BackendState:
    """Everything the handlers share: settings, per-thread projects, the job manager, the cache."""

    def __init__(
        self, settings: Settings, manager: JobManager, calibration: Calibration | None = None
    ) -> None:
        self.settings = settings
        self.calibration = calibration
        self.projects = ProjectPool(settings.root)
        self.manager = manager
        self.proposals = ProposalCache(settings.root)

    def project(self) -> Project:
        """This thread's project connection."""
        return self.projects.get()


async def get_state(request: Request) -> BackendState:
    """The app's :class:`BackendState` (a FastAPI dependency)."""
    return request.app.state.diffseg


Ctx = Annotated[BackendState, Depends(get_state)]
