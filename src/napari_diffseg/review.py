"""The review workflow the widgets display, without Qt.

- Review session (the Annotate widget): what to show for an image under review (its latest annotation,
  the active model's cached proposal, or a ``propose`` job requested and followed for it), rejecting an
  image and opening the next one.
- Job follower and job history (the Train widget): :func:`follow_job` starts or follows a job through its
  event history and live stream; :class:`JobHistory` turns the events into what is drawn (losses, Dice per
  round, phase, ETA).

Every function here runs in a worker thread; the widgets only call them and display what they return.

Results are plain dicts (``{"kind": "annotation" | "proposal" | "missing", "image_id", "model_id",
"mask", "edit", "uncertainty", "limits", "base_version", ...}``) whose arrays are already as the napari
layers take them; the records in them are the client's typed models (:mod:`napari_diffseg.base.contracts`).
No Qt, no napari (tests/test_import_isolation.py checks it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from napari_diffseg._layers import to_display
from napari_diffseg.backend.errors import BackendError
from napari_diffseg.base.contracts import TRAINING_KINDS, EventData, Image, Job

__all__ = [
    "ANNOTATED",
    "FETCH_POOL",
    "PARTS",
    "active_model_id",
    "fetch_image",
    "load_for_image",
    "prepared",
    "proposal_or_request",
    "proposal_parts",
    "reject_and_next",
    "uncertainty_limits",
]

ANNOTATED = ("corrected", "ground_truth")  # image states shown from their latest annotation
FETCH_POOL = ThreadPoolExecutor(max_workers=6, thread_name_prefix="diffseg-fetch")
"""Threads for the HTTP requests a worker makes at the same time (an image's pixels and its proposal)."""
PARTS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="diffseg-parts")  # leaf requests only


def active_model_id(client: Any) -> str | None:
    """Worker: the id of the backend's active model (None before there is one)."""
    return next((m.id for m in client.models() if m.active), None)


def proposal_parts(client: Any, image_id: str, model_id: str | None) -> dict[str, Any] | None:
    """Worker: the record, mask and uncertainty of the latest proposal of ``model_id`` (None: of any model)
    for ``image_id``, requested at the same time; None when there is none."""
    if model_id is None:
        record = client.proposal(image_id)
        if record is None:
            return None
        model_id = record.model_id
    else:
        record = None
    parts = {
        part: PARTS.submit(client.proposal_pixels, image_id, part, model_id=model_id)
        for part in ("mask", "uncertainty")
    }
    try:
        if record is None:
            record = client.proposal(image_id, model_id=model_id)
        pixels = {part: future.result() for part, future in parts.items()}
    except BackendError as exc:
        if exc.code == "no_proposal":
            return None
        raise
    finally:
        for future in parts.values():
            future.cancel()
    if record is None:
        return None
    return prepared(
        {
            "kind": "proposal",
            "image_id": image_id,
            "proposal": record,
            "model_id": record.model_id,
            "mask": pixels["mask"],
            "uncertainty": pixels["uncertainty"],
        }
    )


def prepared(result: dict[str, Any]) -> dict[str, Any]:
    """Worker: the arrays as the layers take them (int32 mask and its editable copy, float32 uncertainty
    and its contrast limits), so the main thread only swaps data."""
    mask = np.asarray(result["mask"]).astype(np.int32)
    result["mask"], result["edit"] = mask, mask.copy()
    if result.get("uncertainty") is not None:
        unc = np.ascontiguousarray(result["uncertainty"], dtype=np.float32)
        result["uncertainty"], result["limits"] = unc, uncertainty_limits(unc)
    return result


def load_for_image(
    client: Any, record: Image, model_id: str | None, model_known: bool = True
) -> dict[str, Any]:
    """Worker (the session's companion, run while the image's pixels are fetched): what the annotate widget
    shows for a freshly opened image, as ``{"kind": ...}``:

    - ``"annotation"``: the image is corrected or ground truth: its latest annotation version (and the
      uncertainty of the active model's proposal, if it has one cached; without an active model, of the
      image's latest proposal). No proposal is requested.
    - ``"proposal"``: the cached proposal of ``model_id`` (the session's active model).
    - ``"missing"``: that model has no proposal for the image yet (the widget then asks for one).

    ``model_known`` False: the session does not know the active model yet; it is asked for first and
    returned as ``"active_model"``.
    """
    if not model_known:
        model_id = active_model_id(client)
        result = load_for_image(client, record, model_id)
        result["active_model"] = model_id
        return result
    image_id = record.id
    latest = record.latest_version
    if record.state in ANNOTATED and latest is not None:
        # model None (no active model): the uncertainty of the image's latest proposal, as shown for it
        unc = PARTS.submit(client.proposal_pixels, image_id, "uncertainty", model_id=model_id)
        mask = client.annotation_pixels(image_id, int(latest))
        try:
            uncertainty = unc.result()
        except BackendError as exc:
            if exc.code != "no_proposal":
                raise
            uncertainty = None
        return prepared(
            {
                "kind": "annotation",
                "image_id": image_id,
                "version": int(latest),
                "base_version": int(latest),
                "model_id": model_id,
                "mask": mask,
                "uncertainty": uncertainty,
            }
        )
    found = proposal_parts(client, image_id, model_id)
    if found is None:
        return {"kind": "missing", "image_id": image_id, "model_id": model_id}
    found["base_version"] = None if latest is None else int(latest)
    return found


def proposal_or_request(
    client: Any,
    image_id: str,
    options: dict[str, Any],
    job_id: int | None = None,
    model_id: str | None = None,
    model_known: bool = False,
) -> Generator[dict[str, Any], None, dict[str, Any]]:
    """Worker (generator): the proposal of the active model for ``image_id`` (see :func:`proposal_parts`)
    with the image's latest annotation version as ``base_version``.

    ``model_id``: the active model as the session knows it (``model_known``), else it is asked for. When
    that model has no proposal for the image, the backend is asked again which model is active (another
    may have been made active meanwhile: ``{"model_id": id}`` is yielded when it changed). When the active
    model has none (the image is new, or its proposals come from an older model), a ``propose`` job is
    requested for this image (``options``: more :meth:`request_proposals` arguments), or the job
    ``job_id`` requested earlier is followed (its event stream, until it ends); the job is yielded as
    ``{"job": record, "model_id": id}`` when requested and again once it runs, and the proposal is fetched
    once it is done. Without any model, the image's latest
    proposal is shown if it has one.
    """
    versions = PARTS.submit(client.annotations, image_id)
    if not model_known:
        model_id = active_model_id(client)
        yield {"model_id": model_id}
    found = proposal_parts(client, image_id, model_id) if model_id is not None else None
    if found is None and model_known:
        fresh = active_model_id(client)  # a 'not found': is the cached model still the active one?
        if fresh != model_id:
            model_id = fresh
            yield {"model_id": model_id}
            found = proposal_parts(client, image_id, model_id) if model_id is not None else None
    if found is None and model_id is None:
        found = proposal_parts(client, image_id, None)
        if found is None:
            raise BackendError(
                0,
                "this image has no proposal and the project has no model yet: pretrain one in the DiffSeg "
                "train widget (Job: pretrain), then load the proposal again.",
                "no_model",
            )
    if found is None:
        job = client.job(job_id) if job_id is not None else None
        if job is None or job.ended:
            job = client.request_proposals([image_id], **options)
        yield {"job": job, "model_id": model_id}
        if not job.ended:
            for _event in client.stream_events(job.id):  # returns when the job has ended
                if job.state == "queued":  # its first event: it has started (yielded once)
                    job = client.job(job.id)
                    if job.state != "queued":
                        yield {"job": job, "model_id": model_id}
            job = client.job(job.id)
        if job.state != "done":
            raise BackendError(
                0,
                f"the proposal job {job.id} for this image ended {job.state}"
                + (f": {job.error}" if job.error else "")
                + ". Fix what it says (or resume it in the train widget), then press 'Load / request "
                "proposal'.",
                "propose_failed",
            )
        found = proposal_parts(client, image_id, model_id)
        if found is None:
            raise BackendError(
                0,
                f"the proposal job {job.id} ended but left no proposal of model {model_id} (was another "
                "model made active meanwhile?): press 'Load / request proposal' again.",
                "no_proposal",
            )
    annotations = versions.result()
    found["base_version"] = annotations[-1].version if annotations else None
    return found


def reject_and_next(
    client: Any,
    image_id: str,
    companion: Any = None,
    model: tuple[str | None, bool] = (None, False),
    strategy: str = "uncertainty",
) -> tuple[Image, Any]:
    """Worker: mark the image excluded, then fetch the next one to review (and its proposal)."""
    rejected = client.set_image_state(image_id, "excluded")
    return rejected, fetch_image(client, None, companion, model, strategy)


def fetch_image(
    client: Any,
    record: Image | None,
    companion: Callable[[Any, Image, str | None, bool], Any] | None = None,
    model: tuple[str | None, bool] = (None, False),
    strategy: str = "uncertainty",
) -> tuple[Image, np.ndarray, Any, bool] | None:
    """Worker: the fresh record (``None`` → ``/next`` with ``strategy``), the pixels of the image to open
    (as napari shows them) and what ``companion(client, record, *model)`` fetched at the same time (the
    exception it raised, if it failed: the image is still shown), and whether the pixels are RGB.
    ``model``: the session's ``(model_id, model_known)``."""
    if record is None:
        record = client.next_image(strategy=strategy)
    else:
        record = client.image(record.id)
    if record is None:
        return None
    extra = None
    future = FETCH_POOL.submit(companion, client, record, *model) if companion is not None else None
    try:
        data, rgb = to_display(client.image_pixels(record.id))
        data = np.ascontiguousarray(data)  # a (C, H, W) → (H, W, C) view uploads slower
    finally:
        if future is not None:
            try:
                extra = future.result()
            except Exception as exc:  # handed to the main thread, which reports it
                extra = exc
    return record, data, extra, rgb


def uncertainty_limits(uncertainty: np.ndarray) -> tuple[float, float]:
    """Contrast limits that make this image's most uncertain regions stand out: its median to its 99.5th
    percentile, so (with additive blending) the typical half of the image stays black and only the more
    uncertain regions glow (a span of at least 1e-3, so a flat map stays dark instead of amplifying
    noise)."""
    if not uncertainty.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(uncertainty, [50, 99.5]))
    return low, max(high, low + 1e-3)


# ------------------------------------------------------------------------------------------ jobs
NOT_LOSSES = frozenset({"ramp"})  # reported with the losses, but a schedule weight, not a loss


def describe_event(data: EventData) -> str:
    """One status line for a progress event's ``data`` (phase, step, losses)."""
    losses = ", ".join(f"{k} {v:.3g}" for k, v in data.losses.items())
    step = f"{data.step}/{data.total}" if data.total else ""
    text = " ".join(p for p in (data.phase, step, losses) if p)
    return text or data.message


def format_duration(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class JobHistory:
    """What the widget shows of one job, built from its events (pure Python, no Qt).

    Attributes:
        phase, step, total: The latest progress event's phase and position in it.
        losses: Loss name → (x, y); x counts steps over the whole job (each phase segment starts where
            the previous one ended) and a NaN separates segments.
        marks: (x, phase) where each loss segment starts.
        val_dice: Co-training round → validation Dice, from ``metrics`` events.
        last: The latest event's data.
    """

    def __init__(self) -> None:
        self.phase = ""
        self.step = 0
        self.total = 0
        self.losses: dict[str, tuple[list[float], list[float]]] = {}
        self.marks: list[tuple[float, str]] = []
        self.val_dice: dict[int, float] = {}
        self.last: EventData | None = None
        self.count = 0
        self._anchor: dict[str, tuple[int, float]] = {}  # phase → (step, elapsed) where its timing starts
        self._elapsed: dict[str, tuple[int, float]] = {}  # phase → latest (step, elapsed)
        self._segment: tuple[str, int] | None = None  # (phase, last step) of the current loss segment
        self._offset = 0.0
        self._end = 0.0

    def add(self, data: EventData) -> None:
        """Take one event's ``data`` into account."""
        self.count += 1
        self.last = data
        if data.kind == "progress" and data.total:
            self._progress(data)
        elif data.kind == "metrics":
            metrics = data.metrics
            if "val_dice" in metrics and "round" in metrics:
                self.val_dice[int(metrics["round"])] = float(metrics["val_dice"])

    def _progress(self, data: EventData) -> None:
        phase, step, total = data.phase, data.step, data.total
        elapsed = data.elapsed
        previous = self._elapsed.get(phase)
        if previous is None or step < previous[0] or elapsed < previous[1]:  # (re)starts: new round, resumed
            self._anchor[phase] = (step, elapsed)
        self._elapsed[phase] = (step, elapsed)
        self.phase, self.step, self.total = phase, step, total
        losses = {k: v for k, v in data.losses.items() if k not in NOT_LOSSES}
        if not losses:
            return
        if self._segment is None or self._segment[0] != phase or step < self._segment[1]:
            self._offset = self._end
            self.marks.append((self._offset, phase))
            for xs, ys in self.losses.values():
                if ys and math.isfinite(ys[-1]):
                    xs.append(self._offset)
                    ys.append(math.nan)
        self._segment = (phase, step)
        x = self._offset + step
        self._end = max(self._end, self._offset + total)
        for name, value in losses.items():
            xs, ys = self.losses.setdefault(name, ([], []))
            xs.append(x)
            ys.append(float(value))

    def eta_seconds(self) -> float | None:
        """Seconds left in the current phase at its step rate so far; None before a rate is known."""
        if not self.phase or self.total <= 0:
            return None
        if self.step >= self.total:
            return 0.0
        step0, t0 = self._anchor.get(self.phase, (0, 0.0))
        step, t = self._elapsed[self.phase]
        if step <= step0 or t <= t0:  # one event of this phase so far: time from its start
            step0, t0 = 0, 0.0
        if step <= step0 or t <= t0:
            return None
        rate = (step - step0) / (t - t0)
        return (self.total - step) / rate

    def eta_text(self) -> str:
        """``phase step/total · m:ss left``, or "" before the first progress event."""
        if not self.phase:
            return ""
        eta = self.eta_seconds()
        left = "estimating time left…" if eta is None else f"{format_duration(eta)} left in this phase"
        return f"{self.phase} {self.step}/{self.total} · {left}"


def follow_job(
    client: Any, job_id: int | None, kind: str = "", params: dict[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """Worker (generator): start a job when ``job_id`` is None; yield ``{"job"}``, then its history and
    each new event as ``{"events": [...]}``, and at the end ``{"job", "final": True}``."""
    if job_id is None:
        job = client.start_job(kind, params or {})
        job_id = job.id
        yield {"job": job}
    page = client.events(job_id, since=0)  # the history, in one batch
    yield {"job": page.job, "events": page.events}
    if not page.job.ended:
        for event in client.stream_events(job_id, since=page.next):
            yield {"events": [event]}
    yield {"job": client.job(job_id), "final": True}


def latest_open_job(client: Any) -> Job | None:
    """Worker: the newest running (else queued) pretrain or co-training job, if any."""
    for state in ("running", "queued"):
        jobs = [j for j in client.jobs(state=state) if j.kind in TRAINING_KINDS]
        if jobs:
            return jobs[-1]
    return None
