"""The job runner of the backend: queued jobs run one at a time in child processes.

:class:`JobManager` is owned by the HTTP app. A background thread wakes every ``poll_interval`` seconds
(or at once when a job is submitted) and

- reaps finished workers, recording a final state when a worker died without one (``interrupted``,
  resumable, when a signal killed it: ``kill -9``, the out-of-memory killer);
- kills the whole process group of a worker that has not stopped ``cancel_grace_s`` after a cancel; the
  grace period starts when the worker is ready (``jobs/<id>/ready``: its job has looked at its cancel
  token once), so start-up (importing torch, loading the data) does not count against it;
- starts the oldest queued job when nothing is running: training jobs (pretrain, cotrain) and proposals
  share one queue, so at most one training job runs per project and proposals wait behind it.

A worker is ``python -m napari_diffseg.backend.worker ROOT JOB_ID`` in its own session (so a cancel can
kill everything it started with :func:`os.killpg`); it writes its state and events into the project
store itself, which is how every client sees progress. Cancel = create ``jobs/<id>/cancel`` (the job
checkpoints and stops at its next step), then kill after the grace period. At start-up, workers left
over from a backend that was killed are stopped and their jobs marked ``interrupted``; ``resume`` queues
such a job again and it continues from its checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_diffseg.backend.worker import READY_FILE
from napari_diffseg.base.contracts import RESUMABLE_JOB_STATES, TERMINAL_JOB_STATES, EventKind
from napari_diffseg.base.errors import ConfigError
from napari_diffseg.base.events import Event
from napari_diffseg.project import Project
from napari_diffseg.project.records import JobRecord

__all__ = ["JobManager", "JobStateError"]

log = logging.getLogger(__name__)

WORKER_MODULE = "napari_diffseg.backend.worker"
RESUMABLE_STATES = RESUMABLE_JOB_STATES
"""States from which ``resume`` queues a job again."""


class JobStateError(ConfigError):
    """A cancel or resume that the job's current state does not allow (HTTP 409)."""


def _event(kind: EventKind, phase: str, message: str) -> dict[str, Any]:
    """A job event written by the runner itself (a :class:`~napari_diffseg.base.events.Event` as JSON)."""
    return Event(kind, phase, message=message).to_dict()


def _cmdline(pid: int) -> list[str] | None:
    """The command line of a process (Linux ``/proc``), or None where unknown."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _alive(pid: int) -> bool:
    """True if a process with this id exists (and is not a zombie, where that can be told)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return False
    return True


def _is_worker(pid: int, root: Path, job_id: int) -> bool:
    """True if ``pid`` is a live worker process of job ``job_id`` of the project at ``root``."""
    args = _cmdline(pid)
    if not args or not _alive(pid):
        return False
    return WORKER_MODULE in args and str(job_id) in args and any(Path(a) == root for a in args)


def _process_start(pid: int) -> float | None:
    """Unix time a process started (Linux ``/proc``), or None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _job_process_alive(job: JobRecord) -> bool:
    """True if the process recorded for a ``running`` job is still the one running it.

    A live process that started after the job's last update is another process that got the same id
    (after a reboot, say), not the job's.
    """
    if job.pid is None or not _alive(job.pid):
        return False
    started = _process_start(job.pid)
    return started is None or started <= job.updated_at + 1.0


def _kill_group(pid: int) -> None:
    """Kill the process group led by ``pid`` (workers are session leaders); ignore if it is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if hasattr(os, "killpg"):
            os.killpg(pid, signal.SIGKILL)
        else:  # Windows: no process groups to signal
            os.kill(pid, signal.SIGTERM)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass
class _Worker:
    job_id: int
    kind: str
    proc: subprocess.Popen[bytes]
    cancel_at: float | None = None
    ready_at: float | None = None
    killed: bool = False


def worker_command(python: str, root: Path, job: JobRecord) -> list[str]:
    """The command line of a job's worker: one process, or ``nproc`` ranks under torchrun (DDP)."""
    nproc = int(job.params.get("nproc", 1) or 1)
    worker = ["-m", WORKER_MODULE, str(root), str(job.id)]
    if nproc <= 1:
        return [python, *worker]
    with socket.socket() as s:  # a free port for the rendezvous, on loopback only
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        *worker,
    ]


class JobManager:
    """Runs a project's queued jobs in worker processes, one at a time (see the module docstring).

    Args:
        root: The project folder.
        poll_interval: Seconds between two looks at the queue and the workers.
        cancel_grace_s: Seconds a worker has to stop after a cancel before its process group is killed,
            counted from the cancel or from when the worker became ready, whichever is later.
        startup_grace_s: Seconds a worker that is not ready yet has to stop after a cancel (a worker hung
            in start-up is killed after this).
        run_jobs: False: accept and queue jobs but never start them (another backend or the CLI runs
            them); cancel and resume still work.
        python: The interpreter for workers.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        poll_interval: float = 0.2,
        cancel_grace_s: float = 10.0,
        startup_grace_s: float = 120.0,
        run_jobs: bool = True,
        python: str = sys.executable,
    ) -> None:
        self.root = Path(root).resolve()
        self.poll_interval = poll_interval
        self.cancel_grace_s = cancel_grace_s
        self.startup_grace_s = max(startup_grace_s, cancel_grace_s)
        self.run_jobs = run_jobs
        self.python = python
        self._workers: dict[int, _Worker] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._project: Project | None = None

    # -------------------------------------------------------------------------------------- lifecycle

    def start(self) -> list[int]:
        """Recover from a killed backend, then start the queue thread; returns the interrupted job ids."""
        self._stopping.clear()
        with self._lock:
            if self._project is None:
                self._project = Project.open(self.root)
            interrupted = self._recover()
        if self.run_jobs and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="diffseg-jobs", daemon=True)
            self._thread.start()
        return interrupted

    def stop(self) -> None:
        """Stop the queue thread and cancel running workers (killed after the grace period)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._lock:
            if self._project is None:
                return
            self._reap()  # workers that already ended need no cancel
            now = time.monotonic()
            for worker in self._workers.values():
                worker.cancel_at = now
                if self._project.job(worker.job_id).state in TERMINAL_JOB_STATES:
                    continue  # it has recorded its end and is exiting
                self._touch_cancel(worker.job_id)
                with contextlib.suppress(Exception):
                    self._project.append_event(
                        worker.job_id,
                        _event("log", worker.kind, "the backend is shutting down: cancelling the job"),
                    )
            deadline = now + self.cancel_grace_s
            while self._workers and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.05)
            for worker in list(self._workers.values()):
                _kill_group(worker.proc.pid)
                worker.killed = True
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.proc.wait(timeout=5)
            self._reap()
            self._project.close()
            self._project = None

    def wake(self) -> None:
        """Look at the queue now (after a job was submitted or resumed)."""
        self._wake.set()

    @property
    def project(self) -> Project:
        if self._project is None:
            raise ConfigError("the job manager is not started.")
        return self._project

    @property
    def running(self) -> int:
        """Number of worker processes running now."""
        return len(self._workers)

    def cancel_requested(self, job: JobRecord) -> bool:
        """True if a cancel is pending for a job that has not stopped yet."""
        if job.state in TERMINAL_JOB_STATES:
            return False
        return (self.root / "jobs" / str(job.id) / "cancel").exists()

    # -------------------------------------------------------------------------------------- requests

    def cancel(self, job_id: int) -> JobRecord:
        """Cancel a job: a queued one at once, a running one at its next step (killed after the grace).

        Raises:
            DataError: Unknown job.
            JobStateError: The job already ended.
        """
        with self._lock:
            job = self.project.job(job_id)
            if job.state in TERMINAL_JOB_STATES:
                raise JobStateError(
                    f"job {job_id} is already {job.state}; nothing to cancel"
                    + (" (resume it with POST /jobs/{id}/resume)." if job.state in RESUMABLE_STATES else ".")
                )
            worker = self._workers.get(job_id)
            if job.state == "queued" and worker is None:
                self.project.append_event(job_id, _event("log", job.kind, "cancelled before it started"))
                return self.project.set_job_state(job_id, "cancelled", error="cancelled before it started")
            self._touch_cancel(job_id)
            if worker is not None and worker.cancel_at is None:
                worker.cancel_at = time.monotonic()
            return self.project.job(job_id)

    def resume(self, job_id: int) -> JobRecord:
        """Queue a cancelled, failed or interrupted job again; it continues from its checkpoints.

        Raises:
            DataError: Unknown job.
            JobStateError: The job is queued, running or done.
        """
        with self._lock:
            job = self.project.job(job_id)
            if job.state not in RESUMABLE_STATES:
                raise JobStateError(
                    f"job {job_id} is {job.state}; only a cancelled, failed or interrupted job can be resumed."
                )
            worker = self._workers.get(job_id)
            if worker is not None:  # it has recorded its end and is exiting: give it a moment
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.proc.wait(timeout=5)
                self._reap()
                job = self.project.job(job_id)
            if job_id in self._workers or job.state not in RESUMABLE_STATES:
                raise JobStateError(f"job {job_id} is still stopping; try again in a few seconds.")
            self._clear_cancel(job_id)
            rec = self.project.set_job_state(job_id, "queued")
            self.project.append_event(job_id, _event("log", job.kind, "resumed: queued again"))
        self.wake()
        return rec

    # -------------------------------------------------------------------------------------- internals

    def _cancel_file(self, job_id: int) -> Path:
        return self.root / "jobs" / str(job_id) / "cancel"

    def _touch_cancel(self, job_id: int) -> None:
        path = self._cancel_file(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def _clear_cancel(self, job_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._cancel_file(job_id).unlink()

    def _ready_file(self, job_id: int) -> Path:
        return self.root / "jobs" / str(job_id) / READY_FILE

    def _recover(self) -> list[int]:
        """Stop workers orphaned by a killed backend and mark their jobs interrupted.

        A ``running`` job whose process is alive but is not one of our workers (``diffseg cotrain`` in a
        terminal) is left alone.
        """
        project = self.project
        foreign: list[int] = []
        for job in project.jobs(state="running"):
            if job.pid is None:
                continue
            if _is_worker(job.pid, self.root, job.id):
                log.warning("stopping worker %d of job %d left over from a stopped backend", job.pid, job.id)
                _kill_group(job.pid)
                deadline = time.monotonic() + 5
                while _alive(job.pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
            elif _job_process_alive(job):
                foreign.append(job.id)
        if not foreign:
            return project.mark_running_jobs_interrupted()
        ids = []
        for job in project.jobs(state="running"):
            if job.id not in foreign:
                project.set_job_state(
                    job.id, "interrupted", error="the backend stopped while the job was running"
                )
                ids.append(job.id)
        return ids

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick()
            except Exception:  # keep the queue alive whatever happens; the log says what
                log.exception("job queue error")
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def _tick(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self._reap()
            self._escalate()
            if not self._workers:
                self._launch_next()

    def _reap(self) -> None:
        """Forget finished workers; record a final state for a worker that died without one."""
        for job_id, worker in list(self._workers.items()):
            rc = worker.proc.poll()
            if rc is None:
                continue
            del self._workers[job_id]
            try:
                job = self.project.job(job_id)
                if job.state in TERMINAL_JOB_STATES:
                    continue
                if worker.cancel_at is not None:
                    how = "stopped by force" if worker.killed else f"stopped (exit code {rc})"
                    msg = f"{how} after the cancel request; its last checkpoint can be resumed"
                    state = "cancelled"
                elif rc < 0:  # killed by a signal (kill -9, the out-of-memory killer): nothing of its own
                    name = _signal_name(-rc)
                    msg = (
                        f"the job process was killed by {name} before it finished (out of memory, or "
                        "killed by hand?); resume it to continue from its last checkpoint"
                    )
                    state = "interrupted"
                else:
                    msg = (
                        f"the job process exited with code {rc} without finishing; see "
                        f"jobs/{job_id}/worker.log in the project, then resume it"
                    )
                    state = "failed"
                self.project.append_event(
                    job_id, _event("error" if state == "failed" else "log", job.kind, msg)
                )
                self.project.set_job_state(job_id, state, error=msg)
            except Exception:
                log.exception("cannot record the end of job %d", job_id)

    def _escalate(self) -> None:
        """Kill the process group of workers that ignored a cancel for longer than the grace period.

        The grace period counts from the cancel or from when the worker became ready, whichever is
        later; a worker that is still starting up gets ``startup_grace_s`` from the cancel.
        """
        now = time.monotonic()
        for worker in self._workers.values():
            if worker.cancel_at is None and self._cancel_file(worker.job_id).exists():
                worker.cancel_at = now  # cancelled through the file by someone else
            if worker.ready_at is None and self._ready_file(worker.job_id).exists():
                worker.ready_at = now
            if worker.cancel_at is None or worker.killed:
                continue
            if worker.ready_at is not None:
                waited, grace = now - max(worker.cancel_at, worker.ready_at), self.cancel_grace_s
            else:
                waited, grace = now - worker.cancel_at, self.startup_grace_s
            if waited > grace:
                log.warning(
                    "job %d ignored its cancel for %.0f s%s: killing it",
                    worker.job_id,
                    grace,
                    "" if worker.ready_at is not None else " (still starting up)",
                )
                _kill_group(worker.proc.pid)
                worker.killed = True

    def _launch_next(self) -> None:
        project = self.project
        running = project.jobs(state="running")
        for job in running:  # jobs of other processes (the CLI): wait for them, forget dead ones
            if not _job_process_alive(job):
                project.set_job_state(
                    job.id, "interrupted", error="the process running the job is gone; resume it to continue"
                )
        if any(job.state == "running" for job in project.jobs(state="running")):
            return
        queued = project.jobs(state="queued")
        if queued:
            self._launch(queued[0])

    def _launch(self, job: JobRecord) -> None:
        jd = self.project.job_dir(job.id)
        self._clear_cancel(job.id)
        with contextlib.suppress(FileNotFoundError):
            self._ready_file(job.id).unlink()  # left by an earlier run of the job
        env = os.environ.copy()
        package_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        try:
            with open(jd / "worker.log", "ab") as logfile:
                proc = subprocess.Popen(
                    worker_command(self.python, self.root, job),
                    stdin=subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
        except OSError as exc:
            msg = f"cannot start a worker process: {exc}"
            self.project.append_event(job.id, _event("error", job.kind, msg))
            self.project.set_job_state(job.id, "failed", error=msg)
            return
        self._workers[job.id] = _Worker(job.id, job.kind, proc)
        log.info("started job %d (%s) in process %d", job.id, job.kind, proc.pid)
