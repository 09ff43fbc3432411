"""How fast this backend's machine runs our jobs, measured once when the backend starts.

The cost model (:mod:`napari_diffseg.base.cost`) predicts a job's seconds on a reference machine (one quiet
core of our development VM). Before any job has run on a backend, the Train widget could only promise that
reference time, which a busy laptop misses and a GPU beats by far. So the backend measures: a child process
(the same interpreter, environment and thread settings as the job workers, on the device a job would use)
times a few label-free training steps of the ``cpu`` preset on random patches and divides their median by
the reference cost. The result, *wall seconds here per reference second*, is the ``speed`` of ``GET /health``.

Run alone, ``python -m napari_diffseg.backend.calibrate [--device auto]`` prints one JSON line::

    {"speed": 1.37, "step_seconds": 0.62, "reference_step_seconds": 0.45, "device": "cpu", "threads": 1,
     "steps": 5, "seconds": 4.1}

The measurement takes about 3 s on the reference machine (plus importing torch), once per backend start.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Calibration", "main", "measure"]

log = logging.getLogger(__name__)

PRESET = "cpu"
STEPS = 5
"""Timed Stage A steps (after one untimed step that warms the allocator and MONAI's imports); their median
is the measurement."""


def measure(device: str = "auto", steps: int = STEPS) -> dict[str, Any]:
    """Time ``steps`` label-free training steps of the ``cpu`` preset here; see the module docstring."""
    import torch

    from napari_diffseg.base.cost import STEP_SECONDS
    from napari_diffseg.base.presets import get_preset
    from napari_diffseg.core.device import choose_device
    from napari_diffseg.core.models import ModelBundle, ModelSpec
    from napari_diffseg.core.training import pretrain_teacher

    t_start = time.perf_counter()
    dev = choose_device(device)
    pr = get_preset(PRESET)
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(3, 128, 128, generator=g) for _ in range(4)]
    spec = ModelSpec("diffseg", 3, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim)

    bundle = ModelBundle(spec, seed=0)
    stamps: list[float] = []
    for _event in pretrain_teacher(  # one progress event per step
        bundle, images, pr.with_overrides(pretrain_steps=steps + 1), generator=g, device=dev
    ):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        stamps.append(time.perf_counter())
    # the first step pays for the set-up (allocator, kernels, lazy imports): timed from its end; the median
    # step is what a job meets (a burst of other work during one step does not count)
    gaps = sorted(b - a for a, b in itertools.pairwise(stamps[: steps + 1]))
    step_s = max(gaps[len(gaps) // 2], 1e-6)
    reference = STEP_SECONDS[PRESET]["pretrain"]
    return {
        "speed": step_s / reference,
        "step_seconds": step_s,
        "reference_step_seconds": reference,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "steps": steps,
        "seconds": time.perf_counter() - t_start,
    }


@dataclass
class Calibration:
    """The backend's speed measurement, run once in a child process off the request path.

    Attributes:
        speed: Wall seconds here per reference second; None until measured (or when it failed).
        detail: What :func:`measure` printed (device, threads, step seconds), or ``{"error": ...}``.
    """

    python: str = sys.executable
    device: str = "auto"
    timeout_s: float = 300.0
    delay_s: float = 10.0
    """Seconds to wait before measuring: a backend's first seconds are its client's busiest (napari starting,
    images being imported), and a measurement then would promise a slower machine than the jobs meet."""
    busy: Callable[[], bool] | None = None
    """True while a job runs: the measurement is then skipped (it would measure the job's load and slow the
    job down; the job's own speed serves the next estimate)."""
    speed: float | None = None
    detail: dict[str, Any] | None = None
    _thread: threading.Thread | None = None
    _proc: subprocess.Popen[str] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Measure in the background (a daemon thread waits for the child)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="diffseg-calibrate", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        """Started and not ended yet."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> float | None:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.speed

    def stop(self) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def _run(self) -> None:
        if self._stop.wait(self.delay_s):
            return
        if self.busy is not None and self.busy():
            self.detail = {"skipped": "a job was running"}
            return
        cmd = [self.python, "-m", __name__, "--device", self.device]
        try:
            self._proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
            )
            if self._stop.is_set():
                self._proc.kill()
            out, err = self._proc.communicate(timeout=self.timeout_s)
            if self._proc.returncode != 0:
                raise RuntimeError(
                    err.strip().splitlines()[-1] if err.strip() else f"exit {self._proc.returncode}"
                )
            detail = json.loads(out.strip().splitlines()[-1])
            speed = float(detail["speed"])
            if not (speed > 0 and speed < 1e6):
                raise RuntimeError(f"implausible speed {speed!r}")
        except Exception as exc:
            self.stop()
            self.detail = {"error": str(exc) or type(exc).__name__}
            log.warning("could not measure this machine's speed (%s): estimates stay for the reference", exc)
            return
        self.detail, self.speed = detail, speed
        log.info("this machine runs jobs at %.2f× the reference time (%s)", speed, detail.get("device"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_diffseg.backend.calibrate", description=__doc__)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (as a job's)")
    parser.add_argument("--steps", type=int, default=STEPS, help="timed steps")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.device, max(1, args.steps))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
