"""The HTTP API's JSON bodies: the shared contract of :mod:`napari_diffseg.base.contracts`.

The service answers with the very models the client returns, so every field is defined once. The
``...Out`` names are the service's own spelling of them.
"""

from __future__ import annotations

from napari_diffseg.base import contracts as _c

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
    "TaskClassOut",
]

AnnotationOut = _c.Annotation
CountsOut = _c.Counts
ErrorOut = _c.Error
EventsOut = _c.EventsPage
HealthOut = _c.Health
ImageOut = _c.Image
ImageStateIn = _c.ImageStateIn
ImageUploadOut = _c.ImageUpload
JobCreate = _c.JobCreate
JobEventOut = _c.JobEventOut
JobOut = _c.Job
LimitsOut = _c.Limits
ModelOut = _c.Model
ProjectOut = _c.ProjectInfo
ProposalOut = _c.Proposal
ProposalsCreate = _c.ProposalsCreate
SaveAnnotationOut = _c.SavedAnnotation
TaskClassOut = _c.TaskClass
