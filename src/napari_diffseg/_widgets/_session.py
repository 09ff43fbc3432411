"""What the three dock widgets of one viewer share: the backend connection and the image under review.

Also the two helpers every widget uses: :func:`run_in_thread` (a backend call off the Qt thread, its result
delivered to a main-thread handler) and :func:`notify_error` (an exception → a napari notification that
says what to do).
"""

from __future__ import annotations

import subprocess
import weakref
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QObject, Signal

from napari_diffseg.backend.errors import AuthError, BackendError, BackendUnavailable

__all__ = ["Session", "notify_error", "run_in_thread", "session_for"]

_SESSIONS: dict[int, tuple[weakref.ref, Session]] = {}


class Session(QObject):
    """The connection of one viewer's widgets. Signals fire on the main thread.

    Attributes:
        client: The :class:`~napari_diffseg.backend.client.DiffsegClient`, or None before connecting.
        image: The record of the image under review (the last one opened), or None.
        server: The local ``diffseg serve`` child process this session started, if any.
    """

    connected = Signal(object)  # the client
    image_opened = Signal(object)  # the image record

    def __init__(self) -> None:
        super().__init__()
        self.client: Any = None
        self.image: dict[str, Any] | None = None
        self.server: subprocess.Popen[bytes] | None = None

    def set_client(self, client: Any) -> None:
        if self.client is not None and self.client is not client:
            self.client.close()
        self.client = client
        self.connected.emit(client)

    def set_image(self, record: dict[str, Any]) -> None:
        self.image = record
        self.image_opened.emit(record)

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
        entry[1].stop_server()


def describe(exc: BaseException) -> str:
    """One message for the user: what went wrong and what to do."""
    if isinstance(exc, BackendUnavailable):
        return f"{exc} Start it in the DiffSeg project widget, or check the URL."
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
