"""One job in its own process: ``python -m napari_diffseg.backend.worker ROOT JOB_ID``.

Runs :func:`napari_diffseg.backend.jobs.execute_job`, which records the job's state and events in the
project store. Exit status: 0 done, 1 failed, 2 bad arguments (unknown project or job), 3 cancelled,
4 stopped because the backend that started it went away (the job stays ``running`` until the backend
starts again and marks it ``interrupted``).

Cancel: create ``jobs/<id>/cancel`` (what the backend does) or send SIGTERM; the job checkpoints and
stops at its next step. Unlike a plain :class:`~napari_diffseg.base.events.CancelToken` file, a cancel
file that appears before the job has started is honoured (the backend clears stale ones itself).
``jobs/<id>/ready`` appears when the job first looks at its cancel token (start-up is over); the backend's
cancel grace period starts there.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from napari_diffseg.base.errors import DiffsegError
from napari_diffseg.base.events import CancelToken

__all__ = ["READY_FILE", "CancelFile", "main"]

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED, EXIT_ORPHANED = 0, 1, 2, 3, 4
_WATCH_INTERVAL_S = 0.2


READY_FILE = "ready"
"""``jobs/<id>/ready``: written by the worker at the job's first look at its cancel token."""


class CancelFile(CancelToken):
    """Cancelled when ``path`` exists (checked on every look) or when :meth:`cancel` is called.

    ``execute_job`` deletes the file of a token that has a ``path`` when it starts; this one keeps the
    path to itself, so a cancel requested between the launch and the start is not lost.

    The first look also writes ``ready`` beside ``path``: from then on the job honours a cancel at its
    next step, so the backend starts the cancel grace period there, not at the launch (importing torch
    and loading the data can take longer than the grace period).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(None)
        self.file = Path(path)
        self.ready_file = self.file.with_name(READY_FILE)
        self._ready = False

    @property
    def cancelled(self) -> bool:
        if not self._ready:
            self._ready = True
            try:
                self.ready_file.write_text(str(os.getpid()))
            except OSError as exc:  # the backend then waits longer before a kill; the job goes on
                sys.stderr.write(f"cannot write {self.ready_file}: {exc}\n")
        return super().cancelled or self.file.exists()


def _watch_parent(parent: int) -> None:
    """Exit at once when the process that started us dies (a backend killed with ``kill -9``).

    Nothing is written: the job stays ``running`` and the next backend start marks it ``interrupted``;
    checkpoints and store writes are atomic, so stopping here loses nothing that was saved.
    """
    while True:
        time.sleep(_WATCH_INTERVAL_S)
        if os.getppid() != parent:
            sys.stderr.write("the backend that started this job is gone: stopping\n")
            sys.stderr.flush()
            os._exit(EXIT_ORPHANED)


def main(argv: list[str] | None = None) -> int:
    """Run one job; returns the exit status (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m napari_diffseg.backend.worker", description=__doc__)
    parser.add_argument("root", help="project folder")
    parser.add_argument("job_id", type=int, help="job id")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--no-watch-parent", action="store_true", help="keep running when the starting process dies"
    )
    args = parser.parse_args(argv)

    if not args.no_watch_parent and os.getppid() > 1:
        threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()

    from napari_diffseg.backend.jobs import JobFailed, execute_job
    from napari_diffseg.project import Project

    try:
        with Project.open(args.root) as project:
            job_dir = project.job_dir(args.job_id)
            device = str(project.job(args.job_id).params.get("device", "auto"))
    except DiffsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    token = CancelFile(job_dir / "cancel")
    signal.signal(signal.SIGTERM, lambda _sig, _frame: token.cancel())
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    # launched by torchrun (a cotrain job with nproc > 1): join the process group, one rank per process
    from napari_diffseg.core.distributed import cleanup, setup_from_env

    dist_info = setup_from_env(device) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    try:
        state = execute_job(args.root, args.job_id, cancel=token, dist_info=dist_info)
        if dist_info is not None:
            cleanup()
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except DiffsegError as exc:  # the job could not even start (e.g. an unknown kind)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"job {args.job_id}: {state}")
    return {"done": EXIT_DONE, "cancelled": EXIT_CANCELLED}.get(state, EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
