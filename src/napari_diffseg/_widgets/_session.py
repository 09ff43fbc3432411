"""What the three dock widgets of one viewer share: the backend connection and the image under review.

Also the two helpers every widget uses: :func:`run_in_thread` (a backend call off the Qt thread, its result
delivered to a main-thread handler) and :func:`notify_error` (an exception → a napari notification that
says what to do). :data:`FETCH_POOL`, :func:`active_model_id` and :func:`fetch_image` live in the Qt-free
:mod:`napari_diffseg.review` and are re-exported here.
"""

from __future__ import annotations

import atexit
import subprocess
import time
import weakref
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

from napari.qt.threading import WorkerBase, create_worker
from napari.utils.notifications import (
    Notification,
    NotificationSeverity,
    notification_manager,
    show_error,
    show_info,
    show_warning,
)
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QHeaderView

from napari_diffseg.backend.errors import AuthError, BackendError, BackendUnavailable
from napari_diffseg.base.contracts import Image, Job
from napari_diffseg.review import FETCH_POOL, active_model_id, fetch_image

__all__ = [
    "FETCH_POOL",
    "Session",
    "active_model_id",
    "fetch_image",
    "notify_error",
    "run_in_thread",
    "session_for",
    "set_layer_data",
]

_SESSIONS: dict[int, tuple[weakref.ref, Session]] = {}


class Session(QObject):
    """The connection of one viewer's widgets. Signals fire on the main thread.

    Attributes:
        client: The :class:`~napari_diffseg.backend.client.DiffsegClient`, or None before connecting.
        image: The record of the image under review (the last one opened), or None.
        server: The local ``diffseg serve`` child process this session started, if any.
        interrupted_jobs: The jobs the backend reported ``interrupted`` when it was last connected to (a
            backend stopped while they ran); :meth:`resume_job` continues one from its last checkpoint.
        switch_guard: Called as ``switch_guard(proceed)`` before another image (or proposal) replaces the
            one under review; it calls ``proceed()`` once unsaved edits are saved or discarded, or never
            (the user cancelled). Set by the annotate widget; None: switch at once.
        model_id: The backend's active model as last seen (None: none, or not known yet; see
            :attr:`model_known`). Refreshed on connecting, when the train widget ends a job or sets a
            model active, and when a proposal of the cached model is missing.
        companion: Called in the image-opening worker as ``companion(client, record, model_id,
            model_known)`` (the session's :attr:`model_id` and :attr:`model_known`), at the
            same time as the image's pixels are fetched (so the proposal arrives with the image); what it
            returns (or raises) is handed over with the image (:attr:`prefetched`). Set by the annotate
            widget; None: nothing is fetched with the image.
        prefetched: ``(image id, what companion returned or raised)`` for the image last opened, or None.
        speed: Wall seconds per predicted second (:mod:`napari_diffseg.base.cost`) on this backend: what the
            last job this session followed took, else what the backend measured when it started
            (``GET /health``); the train widget's estimates use it. None: not known yet.
        speed_source: ``"job"`` or ``"start"`` (which of the two :attr:`speed` is); ``""`` when None.
    """

    connected = Signal(object)  # the client
    image_opened = Signal(object)  # the image record
    images_changed = Signal()  # images were imported, saved or rejected: listings are out of date
    jobs_interrupted = Signal(object)  # the interrupted jobs found on connecting (a list of job records)
    follow_job = Signal(int)  # a job id the train widget should follow (e.g. one just resumed)
    model_changed = Signal(object)  # the active model's id (or None) when it differs from the one known
    speed_changed = Signal()  # :attr:`speed` is known or changed

    def __init__(self) -> None:
        super().__init__()
        self.client: Any = None
        self.image: Image | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.switch_guard: Callable[[Callable[[], None]], None] | None = None
        self.interrupted_jobs: list[Job] = []
        self.model_id: str | None = None
        self.model_known = False
        self.companion: Callable[[Any, Image, str | None, bool], Any] | None = None
        self.prefetched: tuple[str, Any] | None = None
        # how "Next image" (and Reject → next) picks: "uncertainty" (the most uncertain) or "power"
        self.next_strategy = "uncertainty"
        self.speed: float | None = None
        self.speed_source = ""
        # the worker polling the backend while it measures its speed (a generator worker: quit() stops it)
        self._speed_worker: Any = None

    def set_model_id(self, model_id: str | None) -> None:
        """Remember the backend's active model (the proposals shown come from it); :attr:`model_changed`
        fires when it is not the one known before."""
        new = None if model_id is None else str(model_id)
        changed = self.model_known and new != self.model_id
        self.model_id = new
        self.model_known = True
        if changed:
            self.model_changed.emit(new)

    def refresh_model(self) -> None:
        """Ask the backend which model is active (in a worker) and remember it."""
        client = self.client
        if client is None:
            return
        run_in_thread(
            active_model_id,
            client,
            on_done=lambda mid: self.set_model_id(mid) if client is self.client else None,
            on_error=lambda _exc: None,  # the next image open asks again
        )

    def set_client(self, client: Any) -> None:
        """Use ``client`` from now on (the previous one is closed); then look for interrupted jobs."""
        if self.client is not None and self.client is not client:
            self.client.close()
        self.client = client
        self.interrupted_jobs = []
        self.model_id, self.model_known = None, False
        self.speed, self.speed_source = None, ""  # another backend, another machine
        self.connected.emit(client)
        self._stop_speed_poll()  # the previous backend's poll, if it was still measuring
        self._speed_worker = run_in_thread(
            _measured_speed,
            client,
            on_done=partial(self._on_measured_speed, client),
            on_error=lambda _exc: None,  # an estimate without it says it is for the reference machine
        )
        self.refresh_model()
        run_in_thread(
            _interrupted_jobs,
            client,
            on_done=partial(self._on_interrupted_jobs, client),
            on_error=lambda _exc: None,  # the widgets' own refresh on `connected` reports a dead backend
        )

    def _stop_speed_poll(self) -> None:
        worker, self._speed_worker = self._speed_worker, None
        if worker is not None:
            worker.quit()  # honoured at the poll's next yield (within about a second)

    def close(self) -> None:
        """The viewer is going: stop polling the backend, then stop the local backend this session started.

        Without this, a poll still waiting for a calibrating backend outlives the viewer and its worker's
        signals are emitted into deleted Qt objects at exit."""
        self._stop_speed_poll()
        self.stop_server()

    def set_speed(self, speed: float, source: str) -> None:
        """Use ``speed`` (from ``source``: ``"job"`` or ``"start"``) for estimates from now on."""
        self.speed, self.speed_source = float(speed), source
        self.speed_changed.emit()

    def _on_measured_speed(self, client: Any, speed: float | None) -> None:
        # a job's measured speed (this session's own) is better than the start-up one: never replaced by it
        if client is self.client and speed is not None and self.speed is None:
            self.set_speed(speed, "start")

    def _on_interrupted_jobs(self, client: Any, jobs: list[Job]) -> None:
        if client is not self.client or not jobs:
            return
        self.interrupted_jobs = jobs
        self.jobs_interrupted.emit(jobs)
        job = jobs[-1]
        more = f" ({len(jobs) - 1} older interrupted job(s) too)" if len(jobs) > 1 else ""
        notification_manager.dispatch(
            Notification(
                f"Job {job.id} ({job.kind}) was interrupted: the backend stopped while it ran{more}. "
                "Its last checkpoint is kept: press Resume to continue it from there.",
                severity=NotificationSeverity.WARNING,
                actions=[("Resume", lambda _toast: self.resume_job(job.id))],
            )
        )

    def resume_job(self, job_id: int) -> None:
        """Queue a cancelled, failed or interrupted job again (it continues from its last checkpoint); the
        train widget follows it (:attr:`follow_job`)."""
        if self.client is None:
            show_warning("Connect to a backend in the DiffSeg project widget first.")
            return
        run_in_thread(self.client.resume_job, int(job_id), on_done=self._on_resumed)

    def _on_resumed(self, job: Job) -> None:
        self.interrupted_jobs = [j for j in self.interrupted_jobs if j.id != job.id]
        show_info(f"Job {job.id} ({job.kind}) resumed: it continues from its last checkpoint.")
        self.follow_job.emit(job.id)

    def set_image(self, record: Image, prefetched: Any = None) -> None:
        """Make ``record`` the image under review; ``prefetched``: what :attr:`companion` fetched with it."""
        self.image = record
        self.prefetched = (record.id, prefetched) if prefetched is not None else None
        self.image_opened.emit(record)

    def before_switch(self, proceed: Callable[[], None]) -> None:
        """Run ``proceed`` once the image under review may be left (see :attr:`switch_guard`)."""
        if self.switch_guard is None:
            proceed()
        else:
            self.switch_guard(proceed)

    def stop_server(self) -> None:
        """Stop the local backend this session started (SIGTERM, then SIGKILL after 10 s)."""
        proc, self.server = self.server, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def session_for(viewer: Any) -> Session:
    """The session shared by the widgets docked in ``viewer`` (created on first use)."""
    viewer = getattr(viewer, "__wrapped__", viewer)  # napari hands plugins a fresh proxy each time
    key = id(viewer)
    entry = _SESSIONS.get(key)
    if entry is not None and entry[0]() is viewer:
        return entry[1]
    session = Session()
    _SESSIONS[key] = (weakref.ref(viewer, lambda _ref: _forget(key)), session)
    return session


def _forget(key: int) -> None:
    entry = _SESSIONS.pop(key, None)
    if entry is not None:
        entry[1].close()


@atexit.register
def _close_sessions_at_exit(wait_ms: int = 10_000) -> None:
    """At interpreter exit: close every session (its speed poll, its local backend), then give the workers
    still in flight (a request to a backend that just stopped fails within its ~2 s of retries) up to
    ``wait_ms`` to end. Registered after Qt is imported, so it runs before Qt's own teardown: a worker
    that ended after it would emit its signals into deleted Qt objects and abort the process. A script
    that closes the viewer without quitting the Qt application (no ``aboutToQuit``, where napari waits for
    its workers) reaches this."""
    for _ref, session in list(_SESSIONS.values()):
        session.close()
    try:
        WorkerBase.await_workers(msecs=wait_ms)
    except RuntimeError:  # a worker still busy after wait_ms: nothing more can be done without killing it
        pass


def _measured_speed(
    client: Any, interval_s: float = 1.0, timeout_s: float = 300.0
) -> Generator[None, None, float | None]:
    """Worker: the backend's speed measured at its start (``GET /health``), waiting while it measures.

    A generator that yields between polls, so that ``worker.quit()`` (:meth:`Session.close`, a new
    client) stops it there instead of leaving a thread sleeping past the viewer's end."""
    deadline = time.monotonic() + timeout_s
    while True:
        health = client.health()
        if health.speed is not None or not health.calibrating or time.monotonic() > deadline:
            return health.speed
        yield None
        time.sleep(interval_s)


def _interrupted_jobs(client: Any) -> list[Job]:
    """Worker: the backend's interrupted jobs, oldest first."""
    return list(client.jobs(state="interrupted"))


def describe(exc: BaseException) -> str:
    """One message for the user: what went wrong and what to do."""
    if isinstance(exc, BackendUnavailable):
        return (
            f"{exc} Start it in the DiffSeg project widget (Start local backend), or run `diffseg serve "
            "PROJECT` and Connect (check the URL). Nothing saved is lost; a job the backend was running "
            "shows as interrupted once it is back and can be resumed from its last checkpoint."
        )
    if isinstance(exc, AuthError):
        return f"The backend refused the token: {exc.message}. Enter the token `diffseg serve` was given."
    if isinstance(exc, BackendError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def notify_error(exc: BaseException) -> None:
    """Show an exception from a worker as a napari notification (never a traceback dialog)."""
    if isinstance(exc, BackendError):
        show_warning(describe(exc))
    else:
        show_error(describe(exc))


def run_in_thread(
    func: Callable[..., Any],
    *args: Any,
    on_done: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] = notify_error,
    on_yield: Callable[[Any], None] | None = None,
    on_finish: Callable[[], None] | None = None,
    **kwargs: Any,
) -> Any:
    """Run ``func(*args, **kwargs)`` (a function or a generator function) in a napari worker thread.

    ``on_done`` receives the return value, ``on_yield`` each yielded value, ``on_error`` an exception; all
    run on the main thread, so they may touch layers. Returns the started worker.
    """
    connect: dict[str, Any] = {"errored": on_error}  # our handler replaces superqt's re-raise
    if on_done is not None:
        connect["returned"] = on_done
    if on_yield is not None:
        connect["yielded"] = on_yield
    if on_finish is not None:
        connect["finished"] = on_finish
    return create_worker(func, *args, _connect=connect, _start_thread=True, **kwargs)


def set_layer_data(layer: Any, data: Any) -> None:
    """``layer.data = data``, the viewer's dimensions following it even when the layer is hidden.

    napari does not refresh a hidden layer's extent when its data changes, so the viewer would keep the old
    data's dimensions (a z-stack's Z slider over a 2D image, or no slider for a stack): a hidden layer is
    shown while its data changes, then hidden again (nothing is drawn in between)."""
    if layer.visible:
        layer.data = data
        return
    layer.visible = True
    try:
        layer.data = data
    finally:
        layer.visible = False


def header(view: QHeaderView | None) -> QHeaderView:
    """A table's header view (Qt's stubs allow None; a QTableWidget always has both)."""
    if view is None:
        raise RuntimeError("a table without its header view")
    return view
