"""Jobs and their events: records, allowed state moves, the event log, interrupted jobs."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from napari_diffseg.base.errors import ConfigError, DataError
from napari_diffseg.project._db import _JOB_COLS, _job, _StoreBase, _to_json
from napari_diffseg.project._util import check_safe_id, ensure_dir
from napari_diffseg.project.records import JOB_STATES, TERMINAL_JOB_STATES, JobEvent, JobRecord

_JOB_TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed", "interrupted"}),
    "running": frozenset({"done", "failed", "cancelled", "interrupted"}),
    "interrupted": frozenset({"queued", "running", "cancelled", "failed"}),
    "cancelled": frozenset({"queued", "running"}),
    "failed": frozenset({"queued", "running"}),
    "done": frozenset(),
}


class _JobsMixin(_StoreBase):
    """The job and event methods of :class:`~napari_diffseg.project.store.Project`."""

    def job_dir(self, job_id: int) -> Path:
        """The folder ``jobs/<job_id>/`` for a job's logs and checkpoints, created if missing."""
        job = self.job(job_id)
        return ensure_dir(self._root / "jobs" / str(job.id))

    def create_job(self, kind: str, params: Mapping[str, Any] | None = None) -> int:
        """Record a new queued job and create ``jobs/<id>/``; returns the job id."""
        check_safe_id(kind, "job kind")
        params_json = _to_json(dict(params or {}), "job parameters")
        now = time.time()
        with self._write() as tx:
            cur = tx.execute(
                "INSERT INTO jobs (kind, params, state, created_at, updated_at) VALUES (?, ?, 'queued', ?, ?)",
                (kind, params_json, now, now),
            )
            job_id = int(cur.lastrowid or 0)
        ensure_dir(self._root / "jobs" / str(job_id))
        return job_id

    def job(self, job_id: int) -> JobRecord:
        """One job's record.

        Raises:
            DataError: Unknown job id.
        """
        if isinstance(job_id, bool) or not isinstance(job_id, int):
            raise DataError(f"a job id is an integer, got {job_id!r}.")
        with self._read() as conn:
            row = conn.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise DataError(f"project {self._root} has no job {job_id}: list the jobs with jobs().")
        return _job(row)

    def jobs(self, state: str | None = None) -> list[JobRecord]:
        """Every job (optionally only those in ``state``), oldest first."""
        sql = f"SELECT {_JOB_COLS} FROM jobs"
        params: tuple[str, ...] = ()
        if state is not None:
            if state not in JOB_STATES:
                raise DataError(f"unknown job state {state!r}: use one of {', '.join(JOB_STATES)}.")
            sql, params = sql + " WHERE state = ?", (state,)
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY id", params).fetchall()
        return [_job(r) for r in rows]

    def set_job_state(
        self,
        job_id: int,
        state: str,
        error: str | None = None,
        pid: int | None = None,
        event: Mapping[str, Any] | None = None,
    ) -> JobRecord:
        """Move a job to ``state``, recording an error message and/or the process id.

        ``event`` (a final ``done`` / ``error`` / ``log`` event) is appended in the same transaction, so a
        kill can never leave the event without the state or the state without the event.

        Allowed moves: queued → running/cancelled/failed/interrupted; running → done/failed/cancelled/
        interrupted; interrupted → queued/running/cancelled/failed; cancelled or failed → queued/running
        (resume); done is final. Setting the current state again only updates ``error`` / ``pid``.

        Raises:
            DataError: Unknown job or state.
            ConfigError: A move the table above does not allow.
        """
        if state not in JOB_STATES:
            raise DataError(f"unknown job state {state!r}: use one of {', '.join(JOB_STATES)}.")
        if error is not None and not isinstance(error, str):
            raise DataError("a job error must be a string.")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
            raise DataError(f"a pid must be an integer, got {pid!r}.")
        self.job(job_id)
        data = None if event is None else _to_json(dict(event), "a job event")
        now = time.time()
        with self._write() as tx:
            old = tx.execute("SELECT state, started_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            current, started = old[0], old[1]
            if state != current and state not in _JOB_TRANSITIONS[current]:
                raise ConfigError(f"job {job_id} is {current}; it cannot become {state}.")
            sets = ["state = ?", "updated_at = ?"]
            params: list[Any] = [state, now]
            if error is not None or state in ("queued", "running"):
                sets.append("error = ?")
                params.append(error)
            if pid is not None:
                sets.append("pid = ?")
                params.append(pid)
            if state == "running" and started is None:
                sets.append("started_at = ?")
                params.append(now)
            if state in TERMINAL_JOB_STATES and state != current:
                sets.append("finished_at = ?")
                params.append(now)
            elif state in ("queued", "running"):
                sets.append("finished_at = NULL")
            tx.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", [*params, job_id])
            if data is not None:
                self._insert_event(tx, job_id, data, now)
        return self.job(job_id)

    def append_event(self, job_id: int, event: Mapping[str, Any]) -> int:
        """Persist one JSON event of a job; returns its sequence number (1, 2, 3...)."""
        data = _to_json(dict(event), "a job event")
        self.job(job_id)
        now = time.time()
        with self._write() as tx:
            seq = self._insert_event(tx, job_id, data, now)
            tx.execute("UPDATE jobs SET updated_at = ? WHERE id = ?", (now, job_id))
        return seq

    @staticmethod
    def _insert_event(tx: Any, job_id: int, data: str, now: float) -> int:
        seq = int(
            tx.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job_id = ?", (job_id,)
            ).fetchone()[0]
        )
        tx.execute(
            "INSERT INTO job_events (job_id, seq, time, data) VALUES (?, ?, ?, ?)", (job_id, seq, now, data)
        )
        return seq

    def events(self, job_id: int, since: int = 0, limit: int | None = None) -> list[JobEvent]:
        """A job's events with ``seq > since``, in order (at most ``limit``)."""
        self.job(job_id)
        sql = "SELECT job_id, seq, time, data FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq"
        params: list[Any] = [job_id, int(since)]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._read() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [JobEvent(job_id=r[0], seq=r[1], time=r[2], data=json.loads(r[3])) for r in rows]

    def mark_running_jobs_interrupted(self) -> list[int]:
        """Mark every ``running`` job ``interrupted`` (the backend calls this at start-up); returns their ids."""
        now = time.time()
        with self._write() as tx:
            ids = [int(r[0]) for r in tx.execute("SELECT id FROM jobs WHERE state = 'running'").fetchall()]
            tx.execute(
                "UPDATE jobs SET state = 'interrupted', finished_at = ?, updated_at = ?, "
                "error = COALESCE(error, 'the backend stopped while the job was running') WHERE state = 'running'",
                (now, now),
            )
        return ids
