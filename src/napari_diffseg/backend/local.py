"""A local backend: ``diffseg serve PROJECT`` as a child process on a free loopback port, and the creation
of a new project folder for it.

Used by the project dock widget ("Start local backend") and by ``diffseg demo``. No Qt.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from napari_diffseg.backend.errors import BackendUnavailable

__all__ = ["create_project", "start_local_backend", "stop_local_backend"]


def create_project(
    path: str | os.PathLike[str], task: str = "binary", classes: str | Sequence[str] | None = None
) -> Path:
    """Create a new, empty project in ``path`` (a new or empty folder) for a local backend to serve.

    Args:
        path: The project folder.
        task: ``binary`` (default), ``multiclass`` or ``instances`` (:mod:`napari_diffseg.base.task`).
        classes: The class names, background first (``"background,tumour,stroma"``; each may carry a
            colour, ``"tumour:#ff0000"``); required for multiclass.

    Raises:
        DataError: ``path`` is a file, a non-empty folder, or already a project.
        ConfigError: An unknown task or bad classes (nothing is created).
    """
    from napari_diffseg.base.task import make_task
    from napari_diffseg.project import Project

    Project.create(path, task=make_task(task, classes)).close()
    return Path(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_local_backend(
    project: Path,
    timeout: float = 60.0,
    *,
    log: Path | None = None,
    new_session: bool = False,
    threads: int | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``diffseg serve PROJECT`` on a free loopback port and wait for ``/health``.

    Blocks until the server answers (call it from a worker thread in a GUI).

    Args:
        project: The project folder.
        timeout: Seconds to wait for the server to answer.
        log: File for the server's output (default: ``diffseg-serve-<port>.log`` in the temp folder).
        new_session: Start the server in its own session, so a Ctrl-C in the terminal reaches only the
            caller, which then stops the server itself (:func:`stop_local_backend`).
        threads: CPU threads of the server's job processes (``OMP_NUM_THREADS``; default: torch's own
            choice, one per core).

    Returns:
        ``(process, url)``.

    Raises:
        BackendUnavailable: The server exited or did not answer within ``timeout`` (its log is quoted).
    """
    from napari_diffseg.backend.client import DiffsegClient
    from napari_diffseg.backend.errors import BackendError

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = log if log is not None else Path(tempfile.gettempdir()) / f"diffseg-serve-{port}.log"
    cmd = [sys.executable, "-m", "napari_diffseg.cli", "serve", str(project), "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "DIFFSEG_TOKEN"}  # loopback: no token
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(threads))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=new_session,
        )
    try:
        deadline = time.monotonic() + timeout
        with DiffsegClient(url, retries=0, timeout=2) as probe:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                try:
                    probe.health()
                    return proc, url
                except BackendError:
                    time.sleep(0.2)
    except BaseException:  # e.g. Ctrl-C while waiting: leave no server behind
        stop_local_backend(proc, timeout=5)
        raise
    stop_local_backend(proc, timeout=5)
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    raise BackendUnavailable(
        0, f"the local backend for {project} did not start: {' / '.join(tail) or 'no output'} (log: {log})"
    )


def stop_local_backend(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Stop a server started by :func:`start_local_backend`: SIGTERM (it cancels its running jobs and
    exits), then SIGKILL after ``timeout`` seconds. Its job workers stop when it is gone."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):  # a second Ctrl-C: do not wait any longer
        proc.kill()
        proc.wait(timeout=5)
