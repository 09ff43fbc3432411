"""Latency of the backend as the plugin sees it, against a real ``diffseg serve`` on loopback.

    python benchmarks/backend_latency.py [--n 200] [--size 1024] [--json OUT]

Measures, through :class:`~napari_diffseg.backend.client.DiffsegClient`:

- saving a ``size`` x ``size`` correction (``.npy`` upload, validation, TIFF encoding, fsync, SQLite commit),
  without and with ``proposal_id`` (which also computes the edit Dice against the proposal);
- fetching a cached proposal (``mask``, ``uncertainty`` and ``probs``; the first fetch fills the cache);
- the delay between an event being appended to a job (by another process, as a worker does) and a
  client streaming ``/jobs/{id}/stream`` seeing it;
- the server's resident memory when idle after start-up, and after the benchmark.

Targets: save p99 < 100 ms, cached proposal fetch p99 < 50 ms. The server runs with ``--no-jobs``: the
benchmark writes the model, proposal and events itself, so no training is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from napari_diffseg.backend.client import DiffsegClient
from napari_diffseg.project import Project

TARGETS_MS = {"save": 100.0, "fetch": 50.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _stats(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def _line(name: str, st: dict[str, float], target: float | None = None) -> str:
    verdict = ""
    if target is not None:
        verdict = f"  target p99 < {target:.0f} ms: {'ok' if st['p99_ms'] < target else 'MISSED'}"
    return f"{name:38s} p50 {st['p50_ms']:7.1f} ms   p99 {st['p99_ms']:7.1f} ms   (n={st['n']}){verdict}"


def _make_project(root: Path, size: int) -> tuple[str, str]:
    """A project with one size x size image, one (dummy) model and its proposal for the image."""
    rng = np.random.default_rng(0)
    with Project.create(root) as project:
        image_id = project.import_array(rng.integers(0, 255, (size, size), dtype=np.uint8), "big")
        model_src = root.parent / "bench-model"
        model_src.mkdir(exist_ok=True)
        (model_src / "config.json").write_text("{}")
        model_id = project.register_model(model_src, round=0, method="bench", model_id="bench")
        project.set_active_model(model_id)
        fg = rng.random((size, size), dtype=np.float32)
        probs = np.stack([1 - fg, fg])
        project.save_proposal(model_id, image_id, probs, rng.random((size, size), dtype=np.float32))
    return image_id, model_id


def _start_server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "napari_diffseg.cli", "serve", str(root), "--port", str(port), "--no-jobs"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"the server did not start: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            if httpx.get(url + "/api/v1/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not answer within 60 s")


def _masks(size: int, noise: bool, count: int = 4) -> list[np.ndarray]:
    """Label masks like an annotator's: a few dozen filled ellipses (or, with ``noise``, random pixels,
    the worst case for the store's zlib-compressed TIFFs)."""
    rng = np.random.default_rng(1)
    if noise:
        return [rng.integers(0, 2, (size, size), dtype=np.uint8) for _ in range(count)]
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(count):
        mask = np.zeros((size, size), np.uint8)
        for _ in range(40):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(size / 60, size / 12, 2)
            mask[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
        out.append(mask)
    return out


def bench_saves(
    client: DiffsegClient, ref: str, masks: list[np.ndarray], n: int, proposal_id: int | None
) -> list[float]:
    versions = client.annotations(ref)
    latest = versions[-1].version if versions else None
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        mask = masks[i % len(masks)]
        latest = client.save_annotation(ref, mask, replaces=latest, proposal_id=proposal_id).version
        times.append(time.perf_counter() - t0)
    return times


def bench_fetch(client: DiffsegClient, ref: str, part: str, n: int) -> list[float]:
    client.proposal_pixels(ref, part)  # fills the cache
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.proposal_pixels(ref, part)
        times.append(time.perf_counter() - t0)
    return times


def bench_stream(url: str, root: Path, n: int) -> list[float]:
    """Append events from this process (as a worker would) and time when a streaming client sees them."""
    with Project.open(root) as project:
        job_id = project.create_job("pretrain", {"preset": "tiny"})
        project.set_job_state(job_id, "running", pid=os.getpid())
        seen: dict[int, float] = {}
        ready = threading.Event()

        def reader() -> None:
            with DiffsegClient(url) as client:
                ready.set()
                for ev in client.stream_events(job_id):
                    seen[ev.seq] = time.time()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        ready.wait()
        time.sleep(0.5)  # the stream is open
        sent: dict[int, float] = {}
        for i in range(n):
            t = time.time()
            seq = project.append_event(job_id, {"kind": "progress", "phase": "bench", "step": i + 1})
            sent[seq] = t
            time.sleep(0.05 + 0.05 * (i % 3))  # not in step with the server's polling
        project.set_job_state(job_id, "done")
        thread.join(30)
    return [seen[s] - sent[s] for s in sent if s in seen]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="requests per measurement")
    ap.add_argument("--size", type=int, default=1024, help="image side")
    ap.add_argument(
        "--noise", action="store_true", help="save random-pixel masks (worst case) instead of blobs"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="diffseg-bench-"))
    root = tmp / "project"
    image_id, _model = _make_project(root, args.size)
    proc, url = _start_server(root)
    results: dict[str, object] = {"size": args.size, "masks": "noise" if args.noise else "blobs"}
    try:
        time.sleep(1.0)
        results["idle_rss_mib"] = _rss_mib(proc.pid)
        with DiffsegClient(url) as client:
            prop = client.proposal(image_id)
            assert prop is not None
            client.image(image_id)  # warm the connection
            masks = _masks(args.size, args.noise)
            saves = bench_saves(client, image_id, masks, args.n, None)
            bench_saves(client, image_id, masks, 2, prop.id)  # warm-up: the first use loads the metrics code
            saves_edit = bench_saves(client, image_id, masks, args.n, prop.id)
            fetch = {
                part: bench_fetch(client, image_id, part, args.n) for part in ("mask", "uncertainty", "probs")
            }
        delays = bench_stream(url, root, max(10, args.n // 4))
        results["rss_after_mib"] = _rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    s = args.size
    results["save"] = _stats(saves)
    results["save_with_proposal"] = _stats(saves_edit)
    results["fetch"] = {part: _stats(t) for part, t in fetch.items()}
    results["stream_delay"] = _stats(delays)
    print(f"napari-diffseg backend latency ({s}x{s}, loopback, {os.cpu_count()} CPUs)")
    kind = "noise" if args.noise else "blob"
    print(_line(f"save {s}x{s} {kind} correction (.npy)", results["save"], TARGETS_MS["save"]))  # type: ignore[arg-type]
    print(_line("save correction + edit Dice", results["save_with_proposal"], TARGETS_MS["save"]))  # type: ignore[arg-type]
    for part, st in results["fetch"].items():  # type: ignore[union-attr]
        print(_line(f"fetch cached proposal {part}", st, TARGETS_MS["fetch"]))
    print(_line("event appended -> seen by stream", results["stream_delay"]))  # type: ignore[arg-type]
    print(
        f"server RSS: idle after start-up {results['idle_rss_mib']:.0f} MiB, after the run {results['rss_after_mib']:.0f} MiB"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
