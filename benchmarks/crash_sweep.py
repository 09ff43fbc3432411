"""Crash sweep: ``kill -9`` at random moments against a real ``diffseg serve``; is anything lost?

    python benchmarks/crash_sweep.py [--moments 12] [--seed 0] [--out benchmarks/results/crash_sweep.json]

One project (synthetic images, ``tiny`` preset) and a real backend (``python -m napari_diffseg.cli serve``
in its own process group). For each of ``--moments`` moments, taking the scenarios in turn:

- ``cotrain``: a co-training job runs (with a trickle of annotation saves beside it);
- ``propose``: a propose job runs over a fixed list of images (with the same trickle of saves);
- ``saves``: a burst of annotation saves, four clients POSTing as fast as the backend answers;

and at a random moment (seeded: a quarter of the job kills during the worker's start-up, the others
while the job works, drawn over the lengths an uninterrupted run measured; a burst within 1.5 s of its
first answered save) it sends SIGKILL to the backend's process group or, in a job scenario, to the
job's worker process (picked at random). Then:

1. when only the worker was killed, the live backend must say the job is ``interrupted``; the backend is
   then stopped;
2. offline: ``diffseg check`` is clean, SQLite's ``PRAGMA integrity_check`` says ok, every registered
   model loads, and every save that got a 2xx answer (in this moment or any earlier one) is in the
   store with identical pixels;
3. the backend starts again; the killed job must read ``interrupted`` (``done`` when the kill came
   after its end, ``queued`` when it came before the launch); it is resumed and must reach ``done``; a
   resumed propose job must not propose an image twice; the checks of step 2 run again.

It prints a table, per scenario: kills (of the backend, of the worker; in the worker's start-up, while
the job worked or, for a burst, after its first answered save), saves answered 2xx, losses (an
answered save missing or with other pixels), corruptions (a problem found by the checks), failed
resumes (a job that did not reach ``done``) and wrong states (a killed job reading anything but
``interrupted``). Every moment's record goes to ``--out`` (rewritten after each moment, so a stopped
sweep keeps what it measured; a new run starts from scratch). About 25 s a moment on a 2-core CPU, plus
a minute to build the project and time the jobs. Exit status 1 when anything was lost or broken.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from napari_diffseg.backend.client import DiffsegClient
from napari_diffseg.project import Project

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
OUT = REPO / "benchmarks" / "results" / "crash_sweep.json"
SCENARIOS = ("cotrain", "propose", "saves")
SIZE = (64, 64)
N_TRAIN, N_LABELED, N_PROPOSE, N_SAVE = 4, 2, 8, 8
COTRAIN = {"preset": "tiny", "overrides": {"cotrain_steps": 40, "checkpoint_every": 5}}
PROPOSE = {"preset": "tiny", "steps": 8, "samples": 8, "rounds": 2}
BURST_THREADS = 4
JOB_TIMEOUT_S = 300.0
SAVE_WINDOW_S = 1.5  # a burst is killed this long after its first answer, at most
STARTUP_SHARE = 0.25  # of the job kills aimed at the worker's start-up; the others at its work
WORK_EVENTS = {"progress", "checkpoint", "metrics"}


# ----------------------------------------------------------------------------------------------------------
# the backend process
# ----------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _worker_pids(parent: int) -> list[int]:
    """Job worker processes started by ``parent`` (Linux ``/proc``)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[-1].split()[1])
            cmd = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"napari_diffseg.backend.worker" in cmd:
            found.append(int(proc.name))
    return found


class Backend:
    """``diffseg serve ROOT`` in its own process group (session), so it can be killed as a group."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> Backend:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p),
        }
        for _attempt in range(3):
            self.port = _free_port()
            cmd = [
                sys.executable,
                "-m",
                "napari_diffseg.cli",
                "serve",
                str(self.root),
                "--port",
                str(self.port),
            ]
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if httpx.get(self.url + "/api/v1/health", timeout=2).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            self.kill_group()
        raise RuntimeError(f"the backend did not start; see {self.log}")

    def kill_group(self) -> None:
        """SIGKILL the backend's process group (its job workers run in their own sessions)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (graceful: running jobs are cancelled and checkpoint), SIGKILL after 60 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill_group()


# ----------------------------------------------------------------------------------------------------------
# the project and the saves
# ----------------------------------------------------------------------------------------------------------
def build_project(root: Path) -> dict[str, list[str]]:
    """Train images (some labeled), images to propose for (split val, no masks) and images to save
    annotations on (split test: they never change what a job trains on); then a pretrained model."""
    from napari_diffseg.backend.jobs import execute_job, start_job
    from napari_diffseg.data.synthetic import make_sample

    groups: dict[str, list[str]] = {"train": [], "propose": [], "save": []}
    seed = 100
    with Project.create(root) as project:
        for group, n, split in (
            ("train", N_TRAIN, "train"),
            ("propose", N_PROPOSE, "val"),
            ("save", N_SAVE, "test"),
        ):
            for i in range(n):
                image, mask = make_sample(seed, SIZE)
                seed += 1
                image_id = project.import_array(image, f"{group}_{i:03d}", split=split)
                groups[group].append(image_id)
                if group == "train" and i < N_LABELED:
                    project.save_annotation(image_id, mask, replaces=None, author="setup")
        job = start_job(project, "pretrain", {"preset": "tiny"})
    assert execute_job(root, job) == "done"
    return groups


@dataclass
class Saves:
    """Every save the backend acknowledged with a 2xx: (image id, version) -> the pixels sent."""

    acked: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: int = 0

    def record(self, image_id: str, version: int, mask: np.ndarray) -> None:
        with self.lock:
            self.acked[(image_id, version)] = mask


def _saver(url: str, images: list[str], saves: Saves, stop: threading.Event, seed: int, pause: float) -> None:
    """Save random masks on ``images`` in turn (each replacing the latest version) until ``stop`` is set
    or the backend stops answering."""
    rng = np.random.default_rng(seed)
    with DiffsegClient(url, retries=0, timeout=10) as client:
        try:
            latest = {ref: (client.annotations(ref) or [None])[-1] for ref in images}
        except Exception:
            return
        versions = {ref: (None if a is None else a.version) for ref, a in latest.items()}
        n = 0
        while not stop.is_set():
            ref = images[n % len(images)]
            n += 1
            mask = rng.integers(0, 2, SIZE, dtype=np.uint8)
            try:
                saved = client.save_annotation(ref, mask, replaces=versions[ref], author="crash-sweep")
            except Exception:  # killed mid-request: its outcome is unknown, so it is not counted
                with saves.lock:
                    saves.errors += 1
                return
            versions[ref] = saved.version
            saves.record(ref, saved.version, mask)
            if pause:
                time.sleep(pause)


# ----------------------------------------------------------------------------------------------------------
# the checks
# ----------------------------------------------------------------------------------------------------------
def check_store(root: Path, saves: Saves) -> dict[str, Any]:
    """Offline checks (no backend running): integrity, SQLite, models, acknowledged saves."""
    import torch

    from napari_diffseg.core.models import load_bundle

    problems: list[str] = []
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p),
    }
    run = subprocess.run(
        [sys.executable, "-m", "napari_diffseg.cli", "check", str(root), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    try:
        report = json.loads(run.stdout)
        problems += [f"diffseg check: {p}" for p in report.get("problems", [])]
        if run.returncode != 0 and not report.get("problems"):
            problems.append(f"diffseg check exited with {run.returncode}")
    except json.JSONDecodeError:
        problems.append(f"diffseg check gave no report (exit {run.returncode}): {run.stderr[-300:]}")
    conn = sqlite3.connect(f"file:{root / 'project.db'}?mode=ro", uri=True)
    try:
        verdict = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
    finally:
        conn.close()
    if verdict != ["ok"]:
        problems += [f"sqlite: {v}" for v in verdict]
    losses: list[str] = []
    models = 0
    with Project.open(root) as project:
        for model in project.models():
            models += 1
            try:
                load_bundle(project.model_dir(model.id), torch.device("cpu"))
            except Exception as exc:
                problems.append(f"model {model.id} does not load: {type(exc).__name__}: {exc}")
        with saves.lock:
            acked = dict(saves.acked)
        for (image_id, version), mask in acked.items():
            try:
                stored = project.load_annotation(image_id, version)
            except Exception as exc:
                stored, why = None, f"{type(exc).__name__}: {exc}"
            else:
                why = "missing"
            if stored is None:
                losses.append(f"{image_id} v{version}: {why}")
            elif stored.shape != mask.shape or not np.array_equal(stored, mask):
                losses.append(f"{image_id} v{version}: different pixels")
    return {"problems": problems, "losses": losses, "acked_saves": len(acked), "models": models}


def _wait_state(client: DiffsegClient, job_id: int, states: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    state = client.job(job_id).state
    while state not in states and time.monotonic() < deadline:
        time.sleep(0.2)
        state = client.job(job_id).state
    return state


def _propose_repeats(client: DiffsegClient, job_id: int) -> int:
    """Images a propose job reported more than once (a resumed job must not redo finished images)."""
    seen: dict[str, int] = {}
    for ev in client.events(job_id).events:
        if ev.data.kind == "progress" and ev.data.phase == "propose" and ev.data.message:
            seen[ev.data.message] = seen.get(ev.data.message, 0) + 1
    return sum(n - 1 for n in seen.values() if n > 1)


# ----------------------------------------------------------------------------------------------------------
# one moment
# ----------------------------------------------------------------------------------------------------------
def _job_params(scenario: str, groups: dict[str, list[str]], moment: int) -> dict[str, Any]:
    if scenario == "cotrain":
        return {**COTRAIN, "seed": moment}
    return {**PROPOSE, "ids": groups["propose"], "seed": moment}


def _phase_at(root: Path, job_id: int, when: float) -> str:
    """What job ``job_id`` was doing at Unix time ``when``: ``finished`` (its state was ``done``),
    ``working`` (it had reported work) or ``start-up``."""
    with Project.open(root) as project:
        job = project.job(job_id)
        kinds = {e.data.get("kind") for e in project.events(job_id) if e.time <= when}
    if job.state == "done" and job.finished_at is not None and job.finished_at <= when:
        return "finished"
    return "working" if kinds & WORK_EVENTS else "start-up"


def _wait_working(client: DiffsegClient, job_id: int, timeout: float) -> None:
    """Wait for the job's first work event (or its end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = client.events(job_id)
        if any(e.data.kind in WORK_EVENTS for e in page.events) or page.job.state not in (
            "queued",
            "running",
        ):
            return
        time.sleep(0.05)


def _kill_children(backend: Backend, client: DiffsegClient, job_id: int) -> list[int]:
    """SIGKILL the job's worker (waiting for it to be launched if it is not yet); returns the pids."""
    deadline = time.monotonic() + 60
    pids = _worker_pids(backend.pid)
    while not pids and time.monotonic() < deadline and client.job(job_id).state in ("queued", "running"):
        time.sleep(0.02)
        pids = _worker_pids(backend.pid)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def _wait_gone(pids: list[int], timeout: float) -> int:
    """Wait for processes to end; returns how many are still alive."""
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return sum(_alive(p) for p in pids)


def run_moment(
    root: Path,
    work: Path,
    groups: dict[str, list[str]],
    saves: Saves,
    moment: int,
    scenario: str,
    rng: np.random.Generator,
    windows: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Start the backend, start the scenario, kill at a random moment, check, restart, resume, check."""
    rec: dict[str, Any] = {"moment": moment, "scenario": scenario}
    t_start = time.monotonic()
    target = "server" if scenario == "saves" else str(rng.choice(["server", "child"]))
    if scenario == "saves":  # after the burst's first answered save
        aim, delay = "burst", float(rng.uniform(0.0, SAVE_WINDOW_S))
    elif rng.random() < STARTUP_SHARE:  # after POST /jobs, while the worker starts
        aim, delay = "start-up", float(rng.uniform(0.0, windows[scenario]["startup"]))
    else:  # after the job's first work event, while it works
        aim, delay = "working", float(rng.uniform(0.0, 0.9 * windows[scenario]["work"]))
    rec.update(target=target, aim=aim, delay_s=round(delay, 3))
    acked_before = len(saves.acked)
    job_id: int | None = None
    stop = threading.Event()
    threads: list[threading.Thread] = []
    backend = Backend(root, work / "server.log").start()
    client = DiffsegClient(backend.url, retries=0)
    try:
        if scenario == "saves":  # a burst: four clients saving as fast as they are answered
            for i in range(BURST_THREADS):
                images = groups["save"][i::BURST_THREADS]
                args = (backend.url, images, saves, stop, moment * 100 + i, 0.0)
                threads.append(threading.Thread(target=_saver, args=args, daemon=True))
        else:  # a job, and a trickle of saves beside it
            job_id = client.start_job(scenario, _job_params(scenario, groups, moment)).id
            rec["job"] = job_id
            args = (backend.url, groups["save"][:2], saves, stop, moment * 100, 0.05)
            threads.append(threading.Thread(target=_saver, args=args, daemon=True))
        t0 = time.monotonic()
        for t in threads:
            t.start()
        if aim == "burst":  # the window opens at the burst's first answer
            deadline = time.monotonic() + 20
            while len(saves.acked) == acked_before and time.monotonic() < deadline:
                time.sleep(0.005)
        elif aim == "working":
            assert job_id is not None
            _wait_working(client, job_id, JOB_TIMEOUT_S)
        time.sleep(delay)
        if target == "child":
            assert job_id is not None
            pids = _kill_children(backend, client, job_id)
        else:
            pids = _worker_pids(backend.pid)
            backend.kill_group()
        killed_at = time.time()
        rec["killed_at_s"] = round(time.monotonic() - t0, 3)
        rec["saves_in_burst"] = len(saves.acked) - acked_before
        rec["orphans_left"] = _wait_gone(pids, 15)  # after a backend kill, its worker stops by itself
        if job_id is not None:
            rec["phase"] = _phase_at(root, job_id, killed_at)
        if target == "child":
            assert job_id is not None
            # the live backend reaps the worker: the job must read interrupted (unless it had finished)
            state = _wait_state(client, job_id, {"interrupted", "failed", "cancelled", "done"}, 30)
            rec["state_after_kill"] = state
            rec["wrong_state"] = state not in ("interrupted", "done")  # done: it ended before the kill
            if state == "interrupted":
                rec["error_after_kill"] = client.job(job_id).error
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
        client.close()
        backend.stop()  # graceful after a worker kill; a no-op after a backend kill
    rec["saves_acked"] = len(saves.acked) - acked_before
    rec["landed"] = rec.get("phase", "working") == "working" and (
        scenario != "saves" or rec["saves_in_burst"] > 0
    )
    after_kill = check_store(root, saves)
    rec["after_kill"] = after_kill

    rec["failed_resume"] = False
    backend = Backend(root, work / "server.log").start()
    try:
        with DiffsegClient(backend.url) as client:
            if job_id is not None:
                state = client.job(job_id).state
                rec["state_at_restart"] = state
                if target == "server":  # running at the kill: interrupted; not launched yet: queued
                    rec["wrong_state"] = state not in ("interrupted", "queued", "done")
                if state in ("interrupted", "cancelled", "failed"):
                    client.resume_job(job_id)
                    rec["resumed"] = True
                final = _wait_state(
                    client, job_id, {"done", "failed", "cancelled", "interrupted"}, JOB_TIMEOUT_S
                )
                rec["final_state"] = final
                if final != "done":
                    rec["failed_resume"] = True
                    rec["final_error"] = client.job(job_id).error
                if scenario == "propose":
                    rec["propose_repeats"] = _propose_repeats(client, job_id)
    finally:
        backend.stop()
    after_resume = check_store(root, saves)
    rec["after_resume"] = after_resume
    rec["losses"] = sorted(set(after_kill["losses"]) | set(after_resume["losses"]))
    rec["corruptions"] = sorted(set(after_kill["problems"]) | set(after_resume["problems"]))
    rec["seconds"] = round(time.monotonic() - t_start, 1)
    return rec


def calibrate(root: Path, work: Path, groups: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """An uninterrupted cotrain and propose job: seconds from POST /jobs to the first work event
    (``startup``) and from there to the end (``work``); the kill windows."""
    out: dict[str, dict[str, float]] = {}
    backend = Backend(root, work / "server.log").start()
    try:
        with DiffsegClient(backend.url) as client:
            for scenario in ("cotrain", "propose"):
                posted = time.time()
                job = client.start_job(scenario, _job_params(scenario, groups, 0))
                final = _wait_state(
                    client, job.id, {"done", "failed", "cancelled", "interrupted"}, JOB_TIMEOUT_S
                )
                if final != "done":
                    raise RuntimeError(
                        f"the calibration {scenario} job ended {final}: {client.job(job.id).error}"
                    )
                events = client.events(job.id).events
                first = min(e.time for e in events if e.data.kind in WORK_EVENTS)
                end = max(e.time for e in events)
                out[scenario] = {"startup": round(first - posted, 2), "work": round(end - first, 2)}
    finally:
        backend.stop()
    return out


# ----------------------------------------------------------------------------------------------------------
# the sweep
# ----------------------------------------------------------------------------------------------------------
def summarize(moments: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for scenario in (*SCENARIOS, "total"):
        rows = [m for m in moments if scenario in ("total", m["scenario"])]
        table[scenario] = {
            "kills": len(rows),
            "server_kills": sum(m["target"] == "server" for m in rows),
            "child_kills": sum(m["target"] == "child" for m in rows),
            "startup": sum(m.get("phase") == "start-up" for m in rows),
            "landed": sum(bool(m.get("landed")) for m in rows),
            "saves_acked": sum(m["saves_acked"] for m in rows),
            "losses": sum(len(m["losses"]) for m in rows),
            "corruptions": sum(len(m["corruptions"]) for m in rows),
            "failed_resumes": sum(bool(m["failed_resume"]) for m in rows),
            "wrong_states": sum(bool(m.get("wrong_state")) for m in rows),
            "propose_repeats": sum(int(m.get("propose_repeats", 0)) for m in rows),
        }
    return table


COLUMNS = (
    ("kills", "kills"),
    ("server_kills", "backend"),
    ("child_kills", "worker"),
    ("startup", "in start-up"),
    ("landed", "mid-work"),
    ("saves_acked", "saves ok"),
    ("losses", "losses"),
    ("corruptions", "corruptions"),
    ("failed_resumes", "failed resumes"),
    ("wrong_states", "wrong states"),
)


def print_table(table: dict[str, dict[str, int]]) -> None:
    print(f"{'scenario':9s}" + "".join(f"{head:>15s}" for _, head in COLUMNS))
    for scenario, row in table.items():
        print(f"{scenario:9s}" + "".join(f"{row[key]:15d}" for key, _ in COLUMNS))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moments", type=int, default=12, help="kills in all (taken in turn by the scenarios)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed after")
    args = ap.parse_args(argv)
    if args.moments < 1:
        ap.error("--moments must be >= 1")

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="crash-sweep-")) if args.workdir is None else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    root = work / "project"
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(args.seed)
    saves = Saves()
    result: dict[str, Any] = {
        "config": {
            "moments": args.moments,
            "seed": args.seed,
            "image_size": list(SIZE),
            "images": {"train": N_TRAIN, "labeled": N_LABELED, "propose": N_PROPOSE, "save": N_SAVE},
            "cotrain": COTRAIN,
            "propose": PROPOSE,
            "burst_threads": BURST_THREADS,
        },
        "commit": _git_commit(),
        "platform": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
    }
    try:
        print(f"building the project in {root} ...", flush=True)
        groups = build_project(root)
        print("calibrating (one uninterrupted cotrain and propose job) ...", flush=True)
        windows = calibrate(root, work, groups)
        result["calibration_s"] = windows
        moments: list[dict[str, Any]] = []
        for i in range(args.moments):
            scenario = SCENARIOS[i % len(SCENARIOS)]
            rec = run_moment(root, work, groups, saves, i, scenario, rng, windows)
            moments.append(rec)
            state = rec.get("state_after_kill", rec.get("state_at_restart", "-"))
            print(
                f"moment {i + 1:2d}/{args.moments} {scenario:8s} kill {rec['target']:6s} at "
                f"{rec['killed_at_s']:6.2f} s ({rec.get('phase', 'burst'):9s}) saves ok {rec['saves_acked']:3d}  "
                f"state {state:11s} final {rec.get('final_state', '-'):5s} losses {len(rec['losses'])} "
                f"corruptions {len(rec['corruptions'])}  ({rec['seconds']:.0f} s)",
                flush=True,
            )
            result["moments"] = moments
            result["summary"] = summarize(moments)
            result["elapsed_s"] = round(time.monotonic() - started, 1)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(result["summary"])
    print(f"\n{result['elapsed_s']:.0f} s; results in {args.out}")
    total = result["summary"]["total"]
    print(f"images a resumed propose job proposed twice: {total['propose_repeats']}")
    bad = sum(
        total[k] for k in ("losses", "corruptions", "failed_resumes", "wrong_states", "propose_repeats")
    )
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
