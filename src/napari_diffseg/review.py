"""The review workflow the widgets display, without Qt.

- Review session (the Annotate widget): what to show for an image under review (its latest annotation,
  the active model's cached proposal, or a ``propose`` job requested and followed for it), rejecting an
  image and opening the next one.
- Job follower and job history (the Train widget): :func:`follow_job` starts or follows a job through its
  event history and live stream; :class:`JobHistory` turns the events into what is drawn (losses, Dice per
  round, phase, ETA).

Every function here runs in a worker thread; the widgets only call them and display what they return.

Results are plain dicts (``{"kind": "annotation" | "proposal" | "blank" | "missing", "image_id", "model_id",
"mask", "edit", "uncertainty", "limits", "base_version", ...}``) whose arrays are already as the napari
layers take them; the records in them are the client's typed models (:mod:`napari_diffseg.base.contracts`).
``"task"`` is the project's :class:`ShownTask`: in an instance project ``"mask"`` holds the proposal as
objects (``part=instances``: one id per object, as napari's Labels layer paints them), in a multiclass
project class values with the classes' names and colours.
No Qt, no napari (tests/test_import_isolation.py checks it).

Why one module of ~870 lines: the two widgets' non-Qt halves share the client calls, the task and the
thread pools; the next split would move the job follower and :class:`JobHistory` (the Train widget's part)
into their own module.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_diffseg._layers import to_display
from napari_diffseg.backend.errors import BackendError
from napari_diffseg.base.contracts import TRAINING_KINDS, EventData, Image, Job, TaskClass
from napari_diffseg.base.cost import Plan, format_seconds
from napari_diffseg.base.uncertainty import DEFAULT_THRESHOLD, SCALE, summarize_map

__all__ = [
    "ANNOTATED",
    "FETCH_POOL",
    "LOSS_GROUPS",
    "PARTS",
    "JobHistory",
    "ShownTask",
    "active_model_id",
    "annotated_planes",
    "blank_canvas",
    "cost_text",
    "fetch_image",
    "first_proposal_plan",
    "load_for_image",
    "loss_name",
    "object_edits_text",
    "prepared",
    "project_task",
    "proposal_or_request",
    "proposal_parts",
    "reject_and_next",
    "stack_planes",
    "suggested_kind",
    "uncertainty_limits",
]

ANNOTATED = ("corrected", "ground_truth")  # image states shown from their latest annotation
FETCH_POOL = ThreadPoolExecutor(max_workers=6, thread_name_prefix="diffseg-fetch")
"""Threads for the HTTP requests a worker makes at the same time (an image's pixels and its proposal)."""
PARTS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="diffseg-parts")  # leaf requests only


@dataclass(frozen=True)
class ShownTask:
    """What the annotate widget needs of a project's task to draw its Labels layer: the kind (``binary``,
    ``multiclass``, ``instances``) and the classes as ``(value, name, colour)``, background (0) first, from
    ``GET /project``."""

    kind: str = "binary"
    classes: tuple[tuple[int, str, str], ...] = ()

    @classmethod
    def of(cls, kind: str, classes: Sequence[TaskClass]) -> ShownTask:
        return cls(kind, tuple((int(c.value), str(c.name), str(c.colour)) for c in classes))

    @property
    def mask_part(self) -> str:
        """The proposal part the Labels layer shows: ``instances`` (one id per object) in an instance
        project, else ``mask`` (class values)."""
        return "instances" if self.kind == "instances" else "mask"


_TASKS: weakref.WeakKeyDictionary[Any, ShownTask] = weakref.WeakKeyDictionary()


def project_task(client: Any) -> ShownTask:
    """Worker: the task of the project ``client`` talks to (asked once per client: a project's task is fixed
    when it is created). A client without ``project()`` (a stand-in in tests) or an older backend: binary."""
    try:
        return _TASKS[client]
    except (KeyError, TypeError):
        pass
    ask = getattr(client, "project", None)
    if ask is None:
        task = ShownTask()
    else:
        info = ask()
        task = ShownTask.of(info.task, info.classes)
    try:
        _TASKS[client] = task
    except TypeError:  # a client that cannot be weakly referenced: asked again next time
        pass
    return task


def object_edits_text(added: int | None, removed: int | None, changed: int | None) -> str:
    """``objects: 1 added, 0 removed, 2 changed`` (an instance project's edit cost in objects); "" when
    the annotation has none (no proposal, or a binary / multiclass project)."""
    if added is None and removed is None and changed is None:
        return ""
    return f"objects: {added or 0} added, {removed or 0} removed, {changed or 0} changed"


def active_model_id(client: Any) -> str | None:
    """Worker: the id of the backend's active model (None before there is one)."""
    return next((m.id for m in client.models() if m.active), None)


def proposal_parts(client: Any, image_id: str, model_id: str | None) -> dict[str, Any] | None:
    """Worker: the record, mask and uncertainty of the latest proposal of ``model_id`` (None: of any model)
    for ``image_id``, requested at the same time; None when there is none. In an instance project the mask
    is the proposal's objects (``part=instances``), each its own id."""
    if model_id is None:
        record = client.proposal(image_id)
        if record is None:
            return None
        model_id = record.model_id
    else:
        record = None
    task = project_task(client)
    parts = {
        part: PARTS.submit(client.proposal_pixels, image_id, part, model_id=model_id)
        for part in (task.mask_part, "uncertainty")
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
            "mask": pixels[task.mask_part],
            "uncertainty": pixels["uncertainty"],
            "task": task,
        }
    )


def prepared(result: dict[str, Any], threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Worker: the arrays as the layers take them (int32 mask and its editable copy, float32 uncertainty
    with its fixed contrast limits :data:`~napari_diffseg.base.uncertainty.SCALE` and its
    :class:`~napari_diffseg.base.uncertainty.MapSummary` at ``threshold``), so the main thread only swaps
    data."""
    mask = np.asarray(result["mask"]).astype(np.int32)
    result["mask"], result["edit"] = mask, mask.copy()
    if result.get("uncertainty") is not None:
        unc = np.ascontiguousarray(result["uncertainty"], dtype=np.float32)
        result["uncertainty"], result["limits"] = unc, uncertainty_limits(unc)
        result["summary"] = summarize_map(unc, threshold)
    return result


def blank_canvas(client: Any, record: Image) -> dict[str, Any]:
    """Worker: what the annotate widget shows on an image while the project has no model: an empty mask
    of the image's shape (a z-stack's ``(Z, H, W)``) to paint from scratch, in the project's task's
    colours; saved, it is an annotation like any other (no proposal: no edit Dice), so a first co-training
    round can start from a few masks drawn in napari."""
    task = project_task(client)
    planes = stack_planes(record)
    shape: tuple[int, ...] = (int(record.height), int(record.width))
    if planes is not None:
        shape = (planes, *shape)
    empty = np.zeros(shape, np.int32)
    return {
        "kind": "blank",
        "image_id": record.id,
        "base_version": None,
        "model_id": None,
        "mask": empty,
        "edit": empty.copy(),
        "classes": np.zeros(shape, np.int32),  # objects of several classes: none painted yet
        "uncertainty": None,
        "limits": None,
        "task": task,
    }


def stack_planes(record: Image) -> int | None:
    """A z-stack's number of planes (its ``Z`` in :attr:`Image.shape`); None for a 2D image."""
    axes = record.axes or ""
    if "Z" not in axes or len(record.shape) != len(axes):
        return None
    return int(record.shape[axes.index("Z")])


def annotated_planes(
    edit: np.ndarray,
    clean: np.ndarray | None,
    previous: Sequence[int] = (),
    on_show: int | None = None,
) -> list[int]:
    """The planes a save of a z-stack's ``(Z, H, W)`` Labels data ``edit`` annotates (the ``planes`` of
    ``POST /images/{ref}/annotations``), sorted:

    - the planes the annotator edited: those where ``edit`` differs from ``clean`` (what was loaded or last
      saved; None: every plane holding a label);
    - ``previous``: the planes of the version being replaced, when that version is what the layer was
      loaded from (or what this annotator saved before), so a second save keeps the first one's planes;
    - ``on_show``: the plane on screen when saving (a proposal plane the annotator looked at and accepts
      as it is; None when no single plane is on show, e.g. in the 3D view).

    The other planes still hold the proposal as it came, and are not counted as annotated: they train as
    unlabelled images. An empty list means nothing was annotated (the widget then says what to do).
    """
    data = np.asarray(edit)
    z = data.shape[0]
    if clean is not None and np.shape(clean) == data.shape:
        changed = (data != np.asarray(clean)).reshape(z, -1).any(axis=1)
    else:
        changed = (data != 0).reshape(z, -1).any(axis=1)
    planes = {int(k) for k in np.flatnonzero(changed)}
    planes.update(int(k) for k in previous if 0 <= int(k) < z)
    if on_show is not None and 0 <= int(on_show) < z:
        planes.add(int(on_show))
    return sorted(planes)


def load_for_image(
    client: Any, record: Image, model_id: str | None, model_known: bool = True
) -> dict[str, Any]:
    """Worker (the session's companion, run while the image's pixels are fetched): what the annotate widget
    shows for a freshly opened image, as ``{"kind": ...}``:

    - ``"annotation"``: the image is corrected or ground truth: its latest annotation version (and the
      uncertainty of the active model's proposal, if it has one cached; without an active model, of the
      image's latest proposal). No proposal is requested. For a z-stack, ``"planes"``: the planes that
      version annotates.
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
        versions = PARTS.submit(client.annotations, image_id) if stack_planes(record) else None
        mask = client.annotation_pixels(image_id, int(latest))
        try:
            uncertainty = unc.result()
        except BackendError as exc:
            if exc.code != "no_proposal":
                raise
            uncertainty = None
        planes = None
        if versions is not None:
            planes = next((a.planes for a in versions.result() if a.version == int(latest)), None)
        return prepared(
            {
                "kind": "annotation",
                "image_id": image_id,
                "version": int(latest),
                "base_version": int(latest),
                "model_id": model_id,
                "mask": mask,
                "uncertainty": uncertainty,
                "planes": planes,
                "task": project_task(client),
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
                "this image has no proposal and the project has no model yet: pretrain a label-free model "
                "in the DiffSeg train widget (Job: pretrain) or, with annotated images, run a co-training "
                "round (Job: cotrain), then load the proposal again.",
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
        data, rgb = to_display(client.image_pixels(record.id), record.axes)
        data = np.ascontiguousarray(data)  # a (C, H, W) → (H, W, C) view uploads slower
    finally:
        if future is not None:
            try:
                extra = future.result()
            except Exception as exc:  # handed to the main thread, which reports it
                extra = exc
    return record, data, extra, rgb


def uncertainty_limits(uncertainty: np.ndarray | None = None) -> tuple[float, float]:
    """The uncertainty layer's contrast limits: always the fixed scale
    :data:`~napari_diffseg.base.uncertainty.SCALE` (0 to 1 bit), never stretched per image, so a colour
    means the same uncertainty on every image (a per-image stretch turned a flat, uninformative map into
    full-range noise)."""
    return SCALE


# ------------------------------------------------------------------------------------------ jobs
# reported with the losses but not losses: the ramp, the gates' weights and the students' agreement
NOT_LOSSES = frozenset({"ramp", "gate", "cps_gate", "reference_weight", "agree"})
VALIDATION_PREFIX = "val_"  # validation scores reported with the losses (drawn in the Dice plot)

LOSS_GROUPS = ("students", "teacher", "total")
"""The groups the loss plot offers, in that order."""
_LOSS_NAMES: dict[tuple[str, str], tuple[str, str]] = {
    ("pretrain", "loss"): ("total", "label-free pretraining"),
    ("pretrain", "reconstruction"): ("teacher", "label-free: image reconstruction"),
    ("pretrain", "marginal"): ("teacher", "label-free: class balance"),
    ("pretrain", "pixel_entropy"): ("teacher", "label-free: indecision"),
    ("pretrain", "class_variance"): ("teacher", "label-free: image within each class"),
    ("pretrain", "split"): ("teacher", "label-free: a threshold's split (fluorescence)"),
    ("pretrain", "smoothness"): ("teacher", "label-free: ragged mask (no split to follow)"),
    ("teacher", "loss"): ("teacher", "labelled masks"),
    ("cotrain", "loss"): ("total", "co-training"),
    ("cotrain", "sup"): ("students", "labelled images"),
    ("cotrain", "pseudo"): ("students", "teacher's pseudo-labels"),
    ("cotrain", "cps"): ("students", "agreement between the twins"),
    ("cotrain", "teacher_sup"): ("teacher", "labelled masks"),
    ("cotrain", "teacher_unsup"): ("teacher", "students' consensus"),
}
"""(phase, loss key of the training loop) → (group, plain name). Stage B's loss and co-training's
``teacher_sup`` are the same loss (the teacher denoising the labelled masks), so they share a curve."""


def loss_name(phase: str, key: str) -> tuple[str, str]:
    """The group and the plain name a loss is drawn under (:data:`LOSS_GROUPS`); a baseline's losses are
    the students', anything unknown keeps its key under "total"."""
    known = _LOSS_NAMES.get((phase, key))
    if known is not None:
        return known
    if phase in ("supervised", "mean-teacher", "cps"):
        return ("total", phase) if key == "loss" else ("students", key.replace("_", " "))
    return "total", f"{phase}: {key}" if key != "loss" else phase


PHASE_NAMES = {
    "start": "starting",
    "pretrain": "label-free pretraining",
    "teacher": "teacher",
    "pseudo-labels": "pseudo-labels",
    "cotrain": "co-training",
    "validation": "validation",
    "propose": "proposals",
}


def describe_event(data: EventData) -> str:
    """One status line for a progress event's ``data`` (phase, step, the main loss)."""
    phase = PHASE_NAMES.get(data.phase, data.phase)
    step = f"{data.step}/{data.total}" if data.total else ""
    losses = {
        k: v for k, v in data.losses.items() if k not in NOT_LOSSES and not k.startswith(VALIDATION_PREFIX)
    }
    loss = f"loss {losses['loss']:.3g}" if "loss" in losses else ""
    val = f"val Dice {data.losses['val_dice']:.3f}" if "val_dice" in data.losses else ""
    extra = data.message if data.phase in ("pseudo-labels", "propose") and data.message else ""
    text = " ".join(p for p in (phase, step, extra, loss, val) if p)
    return text or data.message


def format_duration(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class JobHistory:
    """What the widget shows of one job, built from its events (pure Python, no Qt).

    With a :class:`~napari_diffseg.base.cost.Plan` (:meth:`set_plan`) and event times, progress and ETA
    cover the **whole job**: each event is placed in its phase of the plan, the work done is the plan's
    predicted seconds of what is finished, and the time left is the predicted seconds still to do ×
    the speed measured so far (elapsed wall time ÷ predicted seconds done), or × ``factor`` (the speed of
    an earlier job) before there is enough to measure. Without a plan: the current phase only.

    Attributes:
        phase, step, total: The latest progress event's phase and position in it.
        losses: Loss name → (x, y); x counts steps over the whole job (each phase segment starts where
            the previous one ended) and a NaN separates segments. Names are the loop's keys; see
            :func:`loss_name` for what a person reads.
        by_phase: The same points keyed by (phase, loss key), each segment ended by a NaN.
        marks: (x, phase) where each loss segment starts.
        val_dice: Co-training round → validation Dice, from ``metrics`` events.
        last: The latest event's data.
        plan: The job's plan, or None.
        round: The co-training round under way (1-based; from the plan's point of view).
    """

    #: Predicted seconds (reference machine) that must be done before the measured speed is trusted.
    MIN_MEASURED = 3.0

    def __init__(self, plan: Plan | None = None, factor: float = 1.0) -> None:
        self.phase = ""
        self.step = 0
        self.total = 0
        self.losses: dict[str, tuple[list[float], list[float]]] = {}
        # the same points by (phase, loss key): one loop key means different losses in different phases
        # (Stage B's "loss" is the teacher's, co-training's "loss" the total)
        self.by_phase: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        self.marks: list[tuple[float, str]] = []
        self.val_dice: dict[int, float] = {}
        self.last: EventData | None = None
        self.count = 0
        self.plan = plan
        self.factor = factor
        self.round = 1
        self.started_at: float | None = None
        self.ended = False
        self._anchor: dict[str, tuple[int, float]] = {}  # phase → (step, elapsed) where its timing starts
        self._elapsed: dict[str, tuple[int, float]] = {}  # phase → latest (step, elapsed)
        self._segment: tuple[str, int] | None = None  # (phase, last step) of the current loss segment
        self._offset = 0.0
        self._end = 0.0
        self._done: dict[int, float] = {}  # plan phase index → units done
        self._reached = -1  # the furthest plan phase index an event belonged to
        self._last_time: float | None = None
        self._first: tuple[float, float] | None = None  # (time, predicted seconds done) at the first event
        self._base_done = 0.0  # predicted seconds already done before this run of the job started

    # ----------------------------------------------------------------------------------- input

    def set_plan(self, plan: Plan | None, factor: float | None = None) -> None:
        """Use ``plan`` for whole-job progress (``factor``: the expected speed, wall ÷ predicted)."""
        self.plan = plan
        if factor is not None:
            self.factor = factor

    def set_started(self, started_at: float | None) -> None:
        """The job's (latest) start time on the backend's clock; events before it are an earlier run."""
        self.started_at = started_at

    def add(self, data: EventData, time: float | None = None) -> None:
        """Take one event's ``data`` into account (``time``: when the backend recorded it)."""
        self.count += 1
        self.last = data
        if time is not None:
            self._last_time = time
        if data.kind == "progress" and data.total:
            self._progress(data)
        elif data.kind == "metrics":
            metrics = data.metrics
            if "val_dice" in metrics and "round" in metrics:
                self.val_dice[int(metrics["round"])] = float(metrics["val_dice"])
            if data.phase == "cotrain" and "round" in metrics and data.step:
                self._round_done(int(data.step))
        elif data.kind == "done" and data.message == "finished":  # the job's own last event
            self.ended = True
        if self.plan is not None and time is not None:
            if self.started_at is not None and time < self.started_at:
                self._base_done = self.done_seconds()  # history of an earlier run: not this run's speed
            elif self._first is None:
                self._first = (time, self.done_seconds())

    def _progress(self, data: EventData) -> None:
        phase, step, total = data.phase, data.step, data.total
        elapsed = data.elapsed
        previous = self._elapsed.get(phase)
        if previous is None or step < previous[0] or elapsed < previous[1]:  # (re)starts: new round, resumed
            self._anchor[phase] = (step, elapsed)
        self._elapsed[phase] = (step, elapsed)
        self.phase, self.step, self.total = phase, step, total
        self._place(data)
        losses = {
            k: v
            for k, v in data.losses.items()
            if k not in NOT_LOSSES and not k.startswith(VALIDATION_PREFIX)
        }
        if not losses:
            return
        if self._segment is None or self._segment[0] != phase or step < self._segment[1]:
            self._offset = self._end
            self.marks.append((self._offset, phase))
            for xs, ys in (*self.losses.values(), *self.by_phase.values()):
                if ys and math.isfinite(ys[-1]):
                    xs.append(self._offset)
                    ys.append(math.nan)
        self._segment = (phase, step)
        x = self._offset + step
        self._end = max(self._end, self._offset + total)
        for name, value in losses.items():
            for xs, ys in (
                self.losses.setdefault(name, ([], [])),
                self.by_phase.setdefault((phase, name), ([], [])),
            ):
                xs.append(x)
                ys.append(float(value))

    # ----------------------------------------------------------------------------------- the plan

    def _round_done(self, job_round: int) -> None:
        """The ``metrics`` event of co-training round ``job_round`` (1-based within the job)."""
        if self.plan is not None:
            for i, p in enumerate(self.plan.phases):
                if p.round and p.round <= job_round:
                    self._done[i] = p.units
                    self._reached = max(self._reached, i)
        self.round = job_round + 1

    def _place(self, data: EventData) -> None:
        """Count a progress event against its phase of the plan."""
        plan = self.plan
        if plan is None:
            return
        key = data.phase
        if key == "pseudo-labels" and "validation" in data.message:
            key = "val-pseudo-labels"  # the annotated validation images (the pseudo-label gate)
        index = next(
            (i for i, p in enumerate(plan.phases) if p.key == key and p.round in (self.round, 0)), None
        )
        if index is None:
            index = next((i for i, p in enumerate(plan.phases) if p.key == key), None)
        if index is None:
            return
        units = float(data.step)
        if key in ("pseudo-labels", "val-pseudo-labels"):
            refresh = _refresh_index(data.message)
            units = refresh * data.total + data.step
        phase = plan.phases[index]
        self._done[index] = min(float(phase.units), max(self._done.get(index, 0.0), units))
        if index > self._reached:
            for i in range(index):  # everything before it has finished (pseudo-labels and co-training
                p = plan.phases[i]  # of the same round interleave: each counts on its own)
                if p.round == phase.round and {p.key, key} <= _INTERLEAVED:
                    continue
                self._done[i] = p.units
            self._reached = index

    def done_seconds(self) -> float:
        """Predicted seconds (reference machine) of the plan's work done so far."""
        if self.plan is None:
            return 0.0
        done = 0.0
        for i, p in enumerate(self.plan.phases):
            units = self._done.get(i, 0.0)
            if p.key == "start" and self.count:
                units = p.units
            done += p.seconds * min(1.0, units / p.units) if p.units else (p.seconds if units else 0.0)
        return done

    def fraction(self) -> float | None:
        """Share of the whole job done (by predicted cost), or None without a plan."""
        if self.plan is None or self.plan.seconds <= 0:
            return None
        if self.ended:
            return 1.0
        return min(1.0, self.done_seconds() / self.plan.seconds)

    def overall_speed(self, job: Job) -> float | None:
        """Wall seconds from the job's creation to its end per predicted second of the whole plan
        (start-up included): the factor for the next estimate of a job that did not wait for another."""
        if self.plan is None or job.finished_at is None or self.plan.seconds <= 0:
            return None
        return max(0.0, job.finished_at - job.created_at) / self.plan.seconds

    def speed(self) -> float | None:
        """Measured wall seconds per predicted second in this run of the job (None: too early to say).

        From the job's start (:meth:`set_started`) when known, else from its first event."""
        if self.plan is None or self._last_time is None:
            return None
        if self.started_at is not None and self._last_time >= self.started_at:
            # the job's start time is set once its process has started: the start-up is not in it
            start = sum(p.seconds for p in self.plan.phases if p.key == "start")
            t0, done0 = self.started_at, max(self._base_done, start)
        elif self._first is not None:
            t0, done0 = self._first
        else:
            return None
        done = self.done_seconds() - done0
        wall = self._last_time - t0
        if done < self.MIN_MEASURED or wall <= 0:
            return None
        return wall / done

    def job_eta_seconds(self) -> float | None:
        """Seconds left in the whole job, or None without a plan."""
        if self.plan is None:
            return None
        if self.ended:
            return 0.0
        left = max(0.0, self.plan.seconds - self.done_seconds())
        speed = self.speed()
        return left * (speed if speed is not None else self.factor)

    # ----------------------------------------------------------------------------------- ETA

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
        """With a plan: ``round 1/2 · pseudo-labels 3/8 · about 2:40 left in the whole job``; without:
        ``phase step/total · m:ss left in this phase``; "" before the first progress event (with a plan:
        the predicted time of the whole job)."""
        if self.plan is not None:
            eta = self.job_eta_seconds()
            left = "" if eta is None else f"about {format_duration(eta)} left in the whole job"
            if not self.phase:
                return f"starting · {left}" if left else ""
            rounds = max((p.round for p in self.plan.phases), default=0)
            where = [f"round {min(self.round, rounds)}/{rounds}"] if rounds > 1 else []
            where.append(f"{self.phase} {self.step}/{self.total}")
            if self.speed() is None:
                left += " (estimated; measuring this machine's speed)"
            return " · ".join([*where, left])
        if not self.phase:
            return ""
        eta = self.eta_seconds()
        left = "estimating time left…" if eta is None else f"{format_duration(eta)} left in this phase"
        return f"{self.phase} {self.step}/{self.total} · {left}"


_INTERLEAVED = frozenset({"pseudo-labels", "val-pseudo-labels", "cotrain"})


def _refresh_index(message: str) -> int:
    """The pass number of a pseudo-label event (its message reads ``refresh K``)."""
    parts = message.split()
    if len(parts) >= 2 and parts[0] == "refresh" and parts[1].isdigit():
        return int(parts[1])
    return 0


def follow_job(
    client: Any, job_id: int | None, kind: str = "", params: dict[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """Worker (generator): start a job when ``job_id`` is None; yield ``{"job"}``, then its history and
    each new event as ``{"events": [...]}``, and at the end ``{"job", "final": True}``.

    A job started here is first yielded as ``{"job", "alone": bool}``: whether no other job was queued or
    running when it was created, so that its whole time, queue to end, measures this backend's speed
    (process start-up included) for the next estimate."""
    if job_id is None:
        alone = not any(not j.ended for j in client.jobs())
        job = client.start_job(kind, params or {})
        job_id = job.id
        yield {"job": job, "alone": alone}
    page = client.events(job_id, since=0)  # the history, in one batch
    yield {"job": page.job, "events": page.events}
    if not page.job.ended:
        for event in client.stream_events(job_id, since=page.next):
            yield {"events": [event]}
    yield {"job": client.job(job_id), "final": True}


def suggested_kind(images: Sequence[Image], models: Sequence[Any]) -> str:
    """The job a project is ready for: ``cotrain`` once a training image is annotated (with or without a
    model: a cold start trains the teacher on the annotations, and label-free pretraining first did not
    help the students in issue 14's ablation); without an annotation, ``pretrain`` (label-free: a first
    model whose proposals can be corrected) when there is no model, else ``propose``."""
    annotated = any(im.state in ANNOTATED and im.split == "train" for im in images)
    if annotated:
        return "cotrain"
    return "propose" if models else "pretrain"


def cost_text(
    plan: Plan | None,
    images: Sequence[Image],
    has_model: bool,
    speed: float | None,
    source: str = "job",
    first_proposal: Plan | None = None,
) -> str:
    """What a job will cost for this project, in words (the Train widget's *Cost* line).

    ``speed``: wall seconds per predicted second on this backend, shown by its last job (``source``
    ``"job"``) or measured when it started (``"start"``); None: not known, and the estimate is then for one
    quiet CPU core and says so. A job the backend would refuse says why instead of a time. For ``pretrain``,
    ``first_proposal`` (:func:`first_proposal_plan`) adds when a first proposal will be on screen."""
    if plan is None:
        return "connect to see what the job will cost for this project"
    kind = plan.kind
    if kind == "cotrain" and not any(im.state in ANNOTATED and im.split == "train" for im in images):
        return (
            "nothing is annotated yet, so co-training will be refused: start with pretrain, correct a "
            "proposal (Annotate, Shift-S) or import masks, then co-train."
        )
    if kind == "propose" and not has_model:
        return "there is no model to propose with yet: pretrain (or co-train) first."
    if plan.images == 0:
        what = "images" if kind != "propose" else "images to propose for"
        return f"there are no {what} yet: import some in the DiffSeg project widget."
    factor = speed if speed is not None else 1.0
    if speed is None:
        where = (
            "for one quiet CPU core; a busy machine is slower, a GPU faster (this backend's speed is used "
            "once it has measured it)"
        )
    elif source == "start":
        where = f"at the speed this backend measured when it started ({speed:.1f}× the reference)"
    else:
        where = f"at the speed this backend showed in its last job ({speed:.1f}× the reference)"
    sizes = f" of {plan.sizes}" if plan.sizes else ""
    text = (
        f"about {format_seconds(plan.seconds * factor)} for {plan.images} image(s){sizes}: "
        f"{plan.breakdown(factor)} — {where}."
    )
    for note in plan.notes:  # what the plan cannot know, e.g. whether the images give Stage A an anchor
        text += f" {note[:1].upper()}{note[1:]}."
    if kind == "pretrain" and first_proposal is not None and first_proposal.images:
        # what a person waits for is a proposal on screen: pretraining, then the first image's proposal
        text += (
            f" Then the first proposal ({first_proposal.sizes}) about {format_seconds(first_proposal.seconds * factor)}"
            f": one on screen about {format_seconds((plan.seconds + first_proposal.seconds) * factor)} after Start."
        )
    return text


def first_proposal_plan(preset: Any, images: Sequence[Any]) -> Plan | None:
    """The propose job that shows a first proposal after pretraining: one image, the largest unlabelled
    training image (the longest a person can wait), by the label-free model; None without one."""
    from napari_diffseg.base.cost import job_plan

    pool = [im for im in images if im.split == "train" and im.state not in ("excluded", *ANNOTATED)]
    if not pool:
        return None
    largest = max(pool, key=lambda im: int(im.height) * int(im.width))
    return job_plan("propose", preset, images, ids=[largest.id], label_free=True)


def latest_open_job(client: Any) -> Job | None:
    """Worker: the newest running (else queued) pretrain or co-training job, if any."""
    for state in ("running", "queued"):
        jobs = [j for j in client.jobs(state=state) if j.kind in TRAINING_KINDS]
        if jobs:
            return jobs[-1]
    return None
