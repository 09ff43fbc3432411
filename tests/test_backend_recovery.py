"""``kill -9`` of the backend during a co-training job: nothing saved is lost, the job resumes to done."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from backend_server import SRC, Server, alive, make_project
from napari_diffseg.backend.client import DiffsegClient
from napari_diffseg.backend.jobs import start_job
from napari_diffseg.backend.runner import JobManager
from napari_diffseg.project import Project

pytestmark = pytest.mark.timeout(240)

# long enough to be killed in the middle (a few seconds), checkpointing often
COTRAIN = {"preset": "tiny", "seed": 2, "overrides": {"cotrain_steps": 60, "checkpoint_every": 5}}


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _diffseg_check(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "napari_diffseg.cli", "check", str(root), "--json"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_kill9_during_cotrain_then_restart_check_and_resume(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", n_train=4, annotate=1)
    rng = np.random.default_rng(7)
    saved: dict[tuple[str, int], np.ndarray] = {}
    server = Server(root).start()
    try:
        client = DiffsegClient(server.url)
        for ref in ("train_001", "train_002"):
            for replaces in (None, 1):
                mask = rng.integers(0, 2, (64, 64), dtype=np.uint8)
                version = client.save_annotation(ref, mask, replaces=replaces, author="before-kill").version
                saved[(ref, version)] = mask
        job = client.start_job("cotrain", COTRAIN)

        # kill the backend once co-training is under way and has checkpointed
        def checkpointed() -> bool:
            events = client.events(job.id).events
            return any(
                e.data.kind == "checkpoint" and e.data.phase == "cotrain" and e.data.step >= 10
                for e in events
            )  # by step 10 the checkpoint also holds refreshed pseudo-labels

        _wait_for(checkpointed, 120, "a co-training checkpoint")
        # a save while the job runs: the resumed job keeps training on the data it started with
        mask = rng.integers(0, 2, (64, 64), dtype=np.uint8)
        version = client.save_annotation("train_003", mask, replaces=None).version
        saved[("train_003", version)] = mask
        worker_pid = client.job(job.id).pid
        assert worker_pid and client.job(job.id).state == "running"
        last_ckpt = max(
            e.data.step
            for e in client.events(job.id).events
            if e.data.kind == "checkpoint" and e.data.phase == "cotrain"
        )
        client.close()
        server.kill()
        _wait_for(lambda: not alive(worker_pid), 10, "the orphaned worker to stop")

        # the store is intact, and every annotation saved before the kill is there byte for byte
        report = _diffseg_check(root)
        assert report.returncode == 0, report.stdout + report.stderr
        with Project.open(root) as project:
            assert project.job(job.id).state == "running"  # nobody has looked yet
            for (ref, version), mask in saved.items():
                assert np.array_equal(project.load_annotation(ref, version), mask)
            assert project.annotation("train_001", 2).author == "before-kill"

        # a new backend marks the job interrupted; resume finishes it from its checkpoint
        server = Server(root).start()
        client = DiffsegClient(server.url)
        assert client.job(job.id).state == "interrupted"
        for (ref, version), mask in saved.items():
            assert np.array_equal(client.annotation_pixels(ref, version), mask)
        seen = client.events(job.id).next
        assert client.resume_job(job.id).state == "queued"
        after = list(client.stream_events(job.id, since=seen))
        final = client.job(job.id)
        assert final.state == "done", final.error
        steps = [e.data.step for e in after if e.data.kind == "progress" and e.data.phase == "cotrain"]
        assert steps and steps[0] > last_ckpt >= 5  # continued from the checkpoint, not from step 0
        models = {m.id: m for m in client.models()}
        new = [m for m in models.values() if m.id.endswith(f"job{job.id}")]
        assert len(new) == 1 and new[0].active
        client.close()
    finally:
        server.stop()
    report = _diffseg_check(root)
    assert report.returncode == 0, report.stdout + report.stderr


def test_cancel_running_job_then_resume(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", n_train=3, annotate=1)
    with Server(root) as server, DiffsegClient(server.url) as client:
        job = client.start_job(
            "cotrain", {**COTRAIN, "overrides": {"cotrain_steps": 30, "checkpoint_every": 5}}
        )
        _wait_for(
            lambda: any(e.data.phase == "cotrain" for e in client.events(job.id).events),
            120,
            "co-training to start",
        )
        assert client.cancel_job(job.id).cancel_requested in (True, False)
        stopped = client.wait(job.id, timeout=60)
        assert stopped.state == "cancelled" and "checkpoint" in stopped.error
        assert client.resume_job(job.id).state == "queued"
        assert client.wait(job.id, timeout=120).state == "done"
        with pytest.raises(Exception, match="already done"):
            client.cancel_job(job.id)


def _manager(root: Path, **kwargs) -> JobManager:
    return JobManager(root, poll_interval=0.05, **kwargs)


def _wait_state(root: Path, job_id: int, states: tuple[str, ...], timeout: float) -> str:
    def reached() -> bool:
        with Project.open(root) as project:
            return project.job(job_id).state in states

    _wait_for(reached, timeout, f"job {job_id} to become one of {states}")
    with Project.open(root) as project:
        return project.job(job_id).state


def test_worker_killed_by_sigkill_reads_interrupted_and_resumes(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", n_train=3, annotate=1)
    with Project.open(root) as project:
        job_id = start_job(project, "cotrain", COTRAIN)
    manager = _manager(root)
    manager.start()
    try:
        manager.wake()

        def checkpointed() -> bool:
            with Project.open(root) as project:
                return any(e.data["kind"] == "checkpoint" for e in project.events(job_id))

        _wait_for(checkpointed, 120, "a checkpoint")
        with Project.open(root) as project:
            pid = project.job(job_id).pid
        assert pid is not None and alive(pid)
        os.kill(pid, signal.SIGKILL)  # the out-of-memory killer, or kill -9 by hand
        assert _wait_state(root, job_id, ("interrupted", "failed", "cancelled", "done"), 30) == "interrupted"
        with Project.open(root) as project:
            error = project.job(job_id).error or ""
        assert "SIGKILL" in error and "resume" in error
        manager.resume(job_id)
        assert _wait_state(root, job_id, ("done", "failed", "cancelled", "interrupted"), 120) == "done"
        with Project.open(root) as project:
            assert project.active_model().id == f"round1-job{job_id}"
    finally:
        manager.stop()


def test_cancel_during_worker_startup_stops_cleanly(tmp_path: Path) -> None:
    """Start-up (importing torch, loading data) takes longer than this grace period; it must not count."""
    root = make_project(tmp_path / "proj", n_train=3, annotate=1)
    with Project.open(root) as project:
        job_id = start_job(project, "cotrain", COTRAIN)
    manager = _manager(root, cancel_grace_s=0.3)
    manager.start()
    try:
        manager.wake()
        _wait_for(lambda: manager.running == 1, 30, "the worker to be launched")
        manager.cancel(job_id)
        assert _wait_state(root, job_id, ("cancelled", "failed", "interrupted", "done"), 120) == "cancelled"
        with Project.open(root) as project:
            job = project.job(job_id)
            messages = [e.data.get("message", "") for e in project.events(job_id)]
        error = job.error or ""
        assert "cancelled at step" in error and "checkpoint" in error and "force" not in error
        assert (root / "jobs" / str(job_id) / "ready").exists()  # it stopped itself, at its first look
        assert not any("force" in m for m in messages)
    finally:
        manager.stop()
