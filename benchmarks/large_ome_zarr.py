"""A whole slide as OME-Zarr: `diffseg predict` on a 20,000 × 20,000 RGB image, and a 2,048² field-of-view
proposal from the backend. Prints seconds and peak resident memory (goal for predict: < 2 GiB).

    python benchmarks/large_ome_zarr.py [--size 20000] [--fov 2048] [--threads 2] [--cache DIR]
                                        [--skip-predict] [--skip-fov] [--json OUT]

1. The slide: an OME-Zarr (NGFF 0.4) RGB uint8 image of --size² pixels in 1024² chunks with a pyramid
   down to < 1024 pixels, tiled from synthetic H&E-like patches (flipped, rotated and re-lit, so no two
   neighbouring chunks are equal). Written once into --cache and reused.
2. `diffseg predict MODEL slide.ome.zarr --out OUT` in a child process (the default: the image is copied to
   OUT chunk by chunk and the labels are written into the copy tile by tile), then `--into-source`
   (labels written into the slide itself). Seconds wall clock and the child's peak RSS (``wait4``).
3. The field of view through the real backend (`diffseg serve` on loopback): the --fov² region at the
   slide's centre is read lazily from the OME-Zarr, uploaded (``POST /images``), a proposal requested
   (``POST /proposals``: the teacher's DDIM sampler with the model's preset) and fetched (probabilities,
   uncertainty, mask). Seconds per step; peak RSS of this process, the server and the job's worker
   (polled from /proc).

The model is a randomly initialised `cpu`-preset diffseg model (students and teacher; the cost does not
depend on the weights), registered as the active model of a fresh project for step 3.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from napari_diffseg.data.ome_zarr import open_ome_zarr
from napari_diffseg.data.ome_zarr_write import DEFAULT_CHUNK

GIB = 2**30


def _mib(kib: float) -> float:
    return kib / 1024


def make_slide(path: Path, size: int, seed: int = 0) -> Path:
    """Write the synthetic slide chunk by chunk (never whole in memory), with its pyramid."""
    import zarr

    from napari_diffseg.data.synthetic import make_sample

    if (path / ".zattrs").is_file():
        img = open_ome_zarr(path)
        if img.height == size and img.width == size:
            return path
    rng = np.random.default_rng(seed)
    tiles = []
    for i in range(6):
        image, _mask = make_sample(seed + i, (DEFAULT_CHUNK, DEFAULT_CHUNK))
        arr = np.asarray(image)
        tiles.append(np.moveaxis(arr, -1, 0) if arr.shape[-1] == 3 else arr)
    group = zarr.open_group(path, mode="w", zarr_format=2)
    levels, shape, n = [], (3, size, size), 0
    while True:
        chunks = (3, min(DEFAULT_CHUNK, shape[1]), min(DEFAULT_CHUNK, shape[2]))
        group.create_array(
            str(n),
            shape=shape,
            chunks=chunks,
            dtype="uint8",
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        levels.append(str(n))
        if max(shape[1:]) <= DEFAULT_CHUNK:
            break
        shape = (3, (shape[1] + 1) // 2, (shape[2] + 1) // 2)
        n += 1
    level0 = group["0"]
    for y0 in range(0, size, DEFAULT_CHUNK):
        h = min(DEFAULT_CHUNK, size - y0)
        band = np.empty((3, h, size), np.uint8)
        for x0 in range(0, size, DEFAULT_CHUNK):
            w = min(DEFAULT_CHUNK, size - x0)
            t = tiles[int(rng.integers(len(tiles)))]
            t = np.rot90(t, int(rng.integers(4)), axes=(1, 2))
            if rng.random() < 0.5:
                t = t[:, :, ::-1]
            gain = rng.uniform(0.85, 1.1)
            band[:, :, x0 : x0 + w] = np.clip(t[:, :h, :w] * gain, 0, 255).astype(np.uint8)
        level0[:, y0 : y0 + h, :] = band
    for i in range(1, len(levels)):  # each level: 2×2 means of the last, one band at a time
        prev, cur = group[str(i - 1)], group[str(i)]
        for y0 in range(0, cur.shape[1], DEFAULT_CHUNK):
            y1 = min(cur.shape[1], y0 + DEFAULT_CHUNK)
            src = np.asarray(prev[:, 2 * y0 : 2 * y1, :]).astype(np.float32)
            if src.shape[1] % 2:
                src = np.concatenate([src, src[:, -1:]], axis=1)
            if src.shape[2] % 2:
                src = np.concatenate([src, src[:, :, -1:]], axis=2)
            cur[:, y0:y1, :] = (
                src.reshape(3, src.shape[1] // 2, 2, src.shape[2] // 2, 2).mean((2, 4)) + 0.5
            ).astype(np.uint8)[:, : y1 - y0, : cur.shape[2]]
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": path.stem,
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {
                    "path": p,
                    "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.5 * 2**i, 0.5 * 2**i]}],
                }
                for i, p in enumerate(levels)
            ],
        }
    ]
    return path


def make_model(folder: Path) -> Path:
    from napari_diffseg.base.presets import get_preset
    from napari_diffseg.core.models import ModelBundle, ModelSpec, save_bundle

    if (folder / "weights.safetensors").is_file():
        return folder
    pr = get_preset("cpu")
    bundle = ModelBundle(
        ModelSpec("diffseg", 3, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim), seed=0
    )
    return save_bundle(bundle, folder, extra={"preset": pr.to_dict(), "round": 1})


def run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds (user + system), peak RSS in MiB, exit status) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return time.perf_counter() - t0, cpu, _mib(usage.ru_maxrss), proc.returncode


def bench_predict(slide: Path, model: Path, out: Path, threads: int, modes: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    base = [
        sys.executable,
        "-m",
        "napari_diffseg.cli",
        "predict",
        str(model),
        str(slide),
        "--threads",
        str(threads),
        "-q",
    ]
    results = {}
    options = {
        "copy": ["--out", str(out), "--overwrite"],
        "into_source": ["--out", str(out), "--into-source", "--overwrite"],
    }
    for mode in modes:
        extra = options[mode]
        secs, cpu, peak, rc = run_child([*base, *extra], env)
        if rc != 0:
            raise SystemExit(f"predict ({mode}) failed with exit status {rc}")
        labels = open_ome_zarr((slide if mode == "into_source" else out / slide.name) / "labels" / "diffseg")
        results[mode] = {
            "seconds": round(secs, 1),
            "cpu_seconds": round(cpu, 1),
            "peak_rss_mib": round(peak),
            "label_levels": len(labels.levels),
        }
        print(
            f"predict {slide.name} ({mode}): {secs:.0f} s ({cpu:.0f} CPU s), peak RSS {peak:.0f} MiB ({peak / 1024:.2f} GiB), "
            f"labels {labels.height} × {labels.width} in {len(labels.levels)} levels",
            flush=True,
        )
    return results


class _PeakPoller:
    """Peak resident memory (VmHWM) of a process and all its descendants, polled from /proc."""

    def __init__(self, pid: int, worker_of: Path | None = None) -> None:
        self.pid = pid
        self.worker_of = None if worker_of is None else str(worker_of).encode()
        self.peaks: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list[int]:
        # the project's job worker, wherever it hangs in the process tree, is recognised by its command line
        workers = []
        for status in Path("/proc").glob("[0-9]*/cmdline") if self.worker_of else []:
            try:
                cmd = status.read_bytes()
                if b"napari_diffseg.backend.worker" in cmd and self.worker_of in cmd:
                    workers.append(int(status.parent.name))
            except (OSError, ValueError):
                pass
        out, todo = workers, [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    todo.extend(int(c) for c in (task / "children").read_text().split())
                except OSError:
                    pass
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self._tree():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
                except OSError:
                    continue
                hwm = next(
                    (float(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")), 0.0
                )
                role = "worker" if "backend.worker" in cmd else "server" if " serve " in cmd else cmd[:40]
                self.peaks[pid] = (role, max(hwm, self.peaks.get(pid, ("", 0.0))[1]))
            time.sleep(0.2)

    def __enter__(self) -> _PeakPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, role: str) -> float:
        return max((_mib(kib) for r, kib in self.peaks.values() if r == role), default=float("nan"))


def bench_fov(
    slide: Path, model: Path, root: Path, fov: int, threads: int, steps: int | None, timeout: float
) -> dict:
    import shutil

    from napari_diffseg.backend.client import DiffsegClient
    from napari_diffseg.backend.local import start_local_backend, stop_local_backend
    from napari_diffseg.project import Project

    proj = root / "fov-project"
    shutil.rmtree(proj, ignore_errors=True)
    with Project.create(proj) as p:
        p.register_model(model, round=1, method="diffseg", model_id="random-cpu")
        p.set_active_model("random-cpu")
    img = open_ome_zarr(slide)
    y0, x0 = (img.height - fov) // 2, (img.width - fov) // 2
    proc, url = start_local_backend(proj, threads=threads)
    out: dict = {"fov": fov, "at": [y0, x0]}
    try:
        with _PeakPoller(proc.pid, worker_of=proj) as poller, DiffsegClient(url, timeout=600) as client:
            t0 = time.perf_counter()
            region = img.read(y0, y0 + fov, x0, x0 + fov)
            out["read_s"] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            up = client.upload_image(region, name=f"{slide.stem}_y{y0}_x{x0}_{fov}x{fov}")
            out["upload_s"] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            job = client.request_proposals([up.image.id], steps=steps)
            done = client.wait(job.id, timeout=timeout)
            out["propose_s"] = round(time.perf_counter() - t0, 1)
            if done.state != "done":
                raise SystemExit(f"the propose job ended {done.state}: {done.error}")
            t0 = time.perf_counter()
            probs = client.proposal_pixels(up.image.id, part="probs")
            unc = client.proposal_pixels(up.image.id, part="uncertainty")
            mask = client.proposal_pixels(up.image.id, part="mask")
            out["fetch_s"] = round(time.perf_counter() - t0, 2)
            assert (
                probs.shape[-2:] == (fov, fov)
                and unc.shape[-2:] == (fov, fov)
                and mask.shape[-2:] == (fov, fov)
            )
            out["params"] = client.job(job.id).params
        out["peak_rss_mib"] = {
            "benchmark (client)": round(_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)),
            "server": round(poller.peak("server")),
            "worker": round(poller.peak("worker")),
        }
    finally:
        stop_local_backend(proc)
    print(
        f"FOV {fov}² at {tuple(out['at'])}: read {out['read_s']} s, upload {out['upload_s']} s, proposal "
        f"{out['propose_s']} s, fetch {out['fetch_s']} s; peak RSS {out['peak_rss_mib']} MiB",
        flush=True,
    )
    return out


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--fov", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--steps", type=int, default=None, help="DDIM steps of the proposal (default: the preset's)"
    )
    ap.add_argument(
        "--timeout", type=float, default=4 * 3600, help="seconds to wait for the proposal job (default 4 h)"
    )
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "diffseg-large-ome-zarr")
    ap.add_argument("--modes", default="copy,into_source", help="predict runs: copy, into_source or both")
    ap.add_argument("--skip-predict", action="store_true")
    ap.add_argument("--skip-fov", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    slide = make_slide(args.cache / f"slide{args.size}.ome.zarr", args.size)
    img = open_ome_zarr(slide)
    print(
        f"slide: {slide} ({img.height} × {img.width} RGB uint8, {len(img.levels)} levels; "
        f"{time.perf_counter() - t0:.0f} s to make or open)",
        flush=True,
    )
    model = make_model(args.cache / "model-cpu-random")
    result: dict = {
        "size": args.size,
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d"),
        "commit": _commit(),
    }
    if not args.skip_predict:
        result["predict"] = bench_predict(
            slide, model, args.cache / "out", args.threads, args.modes.split(",")
        )
    if not args.skip_fov:
        result["fov_proposal"] = bench_fov(
            slide, model, args.cache, args.fov, args.threads, args.steps, args.timeout
        )
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
