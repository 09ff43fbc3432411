"""Pre-flight: refuse a job that cannot run here before it is created, with a message saying what to do.

:func:`check_job` is called by the one place the API creates jobs (``routes.common.submit``: ``POST
/jobs`` and ``POST /proposals``) and by the CLI's job commands, always *before*
:meth:`~napari_diffseg.project.Project.create_job`, so a refused job leaves no row, no folder and no
failed job behind. The static bounds of each parameter are the typed contract's
(:mod:`napari_diffseg.base.contracts`, :mod:`napari_diffseg.base.presets`); this module checks what
depends on the project and on this machine:

* **The project** (:class:`PreflightError` with status 409): a ``pretrain`` needs training images, a
  ``cotrain`` at least one annotated training image, a ``propose`` an active model with a diffusion
  teacher (a ``cotrain`` warm-starts from the active model, so that one must have a teacher too), and
  the images a ``propose`` names must exist (404).
* **The machine** (status 422): the device must be there (``cuda``, ``cuda:N``, ``mps``); ``nproc`` of
  a ``cotrain`` is at most the visible CUDA devices on CUDA (one rank per GPU, NCCL) and at most
  ``os.cpu_count()`` on CPU (gloo); and the job's memory estimate (:func:`memory_estimate`) must fit
  the memory free on the machine when it is submitted: RAM (``/proc/meminfo`` MemAvailable, else
  ``os.sysconf``) on CPU and MPS, the free memory of each rank's GPU (``torch.cuda.mem_get_info``) on
  CUDA.

Device facts need torch, which the HTTP server does not load: they come from a short child process
(:func:`probe_devices`), cached for :data:`PROBE_TTL_S` seconds, so the server never creates a CUDA
context of its own. A job for ``device: cpu`` needs no probe at all.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from napari_diffseg.base.contracts import CotrainParams, PretrainParams, ProposeParams
from napari_diffseg.base.errors import DataError, DiffsegError
from napari_diffseg.base.presets import Preset
from napari_diffseg.project import Project

__all__ = [
    "BYTES_PER_PIXEL",
    "BYTES_PER_PIXEL_PER_WIDTH",
    "FIXED_BYTES",
    "Machine",
    "PreflightError",
    "available_ram",
    "check_job",
    "current_machine",
    "memory_estimate",
    "probe_devices",
]

log = logging.getLogger(__name__)

JobParamsT = PretrainParams | ProposeParams | CotrainParams

# The memory a training job needs, measured by benchmarks/training_memory.py (results in
# benchmarks/results/training_memory.json): every stage of run_stages (pretrain, teacher, co-training, a
# pseudo-label refresh) on CPU, torch 2.13, a diffseg bundle with 3 input channels, 2 classes and widths
# (w, 2w, 4w, 8w), over batch {2, 8} x patch {64, 128} x w {8, 16}; peak RSS above the RSS after the
# imports and the data, fitted as FIXED + batch * patch**2 * (PER_PIXEL + PER_WIDTH * (student w + teacher
# w)). The fit gave 115 MB, 976 B and 107 B, within 6 % of every run; the constants are those plus ~12 %
# (rounded up) so that no measured run is under-estimated. On CUDA (bf16 autocast) the same bytes are an
# upper bound.
FIXED_BYTES = 128 * 2**20
"""Memory of a training job apart from its batches (torch's buffers, small networks)."""
BYTES_PER_PIXEL = 1100
"""Bytes per pixel of a training batch (batch * patch**2) that do not grow with the network width."""
BYTES_PER_PIXEL_PER_WIDTH = 120
"""Bytes per pixel of a training batch per channel of the networks' first level (student + teacher)."""
BYTES_PER_PARAMETER = 20
"""Weights, gradients, two Adam moments and a spare copy (EMA, checkpoints), float32."""
_PARAMS_PER_SQUARED_WIDTH = {"teacher": 40, "student": 10}
"""Parameters of one network per sum of its squared level widths (counted on the tiny/cpu/gpu presets:
37-44 for each teacher pathway, 7-10 for each student)."""

PROBE_TTL_S = 30.0
"""How long the device facts of :func:`probe_devices` are reused."""
_PROBE_TIMEOUT_S = 120.0
_PROBE = (
    "import json, torch\n"
    "n = torch.cuda.device_count() if torch.cuda.is_available() else 0\n"
    "free = [int(torch.cuda.mem_get_info(i)[0]) for i in range(n)]\n"
    "mps = getattr(torch.backends, 'mps', None)\n"
    "print(json.dumps({'cuda': n, 'free': free, 'mps': bool(mps is not None and mps.is_available())}))\n"
)


class PreflightError(DiffsegError):
    """A job that cannot run (the project lacks what it needs, or the machine cannot hold it).

    Attributes:
        status: The HTTP status the API answers with (409 project state, 422 parameters vs this machine,
            404 an unknown image).
        code: The short error code of the JSON answer.
    """

    def __init__(self, message: str, status: int = 422, code: str = "preflight") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Machine:
    """What a job can use here.

    Attributes:
        cpus: ``os.cpu_count()``.
        ram_available: Bytes of RAM free for a new process, None when unknown (no memory check then).
        cuda_free: Free bytes of each visible CUDA device (its length is the device count); None when
            unknown (the probe failed or was not needed: no device checks then).
        mps: Whether Apple's MPS device is available (None when unknown).
    """

    cpus: int
    ram_available: int | None
    cuda_free: tuple[int, ...] | None = None
    mps: bool | None = None


# ------------------------------------------------------------------------------------------ the machine


def available_ram() -> int | None:
    """Bytes of RAM available to a new process: Linux's MemAvailable, else free pages; None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


_cache: tuple[float, tuple[int, ...], bool] | None = None
_cache_lock = threading.Lock()


def probe_devices() -> tuple[tuple[int, ...], bool] | None:
    """(free bytes of each visible CUDA device, MPS available), from a child process; None on failure.

    Cached for :data:`PROBE_TTL_S`. In a child process so that the caller (the HTTP server) loads no
    torch and holds no CUDA context.
    """
    global _cache
    with _cache_lock:
        now = time.monotonic()
        if _cache is not None and now - _cache[0] < PROBE_TTL_S:
            return _cache[1], _cache[2]
        try:
            out = subprocess.run(
                [sys.executable, "-c", _PROBE],
                capture_output=True,
                text=True,
                timeout=_PROBE_TIMEOUT_S,
                check=True,
            )
            facts = json.loads(out.stdout.strip().splitlines()[-1])
            free = tuple(int(f) for f in facts["free"])
            mps = bool(facts["mps"])
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError, TypeError) as exc:
            log.warning("pre-flight: cannot probe the devices (%s); device checks skipped", exc)
            return None
        _cache = (now, free, mps)
        return free, mps


def current_machine(device: str) -> Machine:
    """The machine facts a job on ``device`` needs (no device probe for ``cpu``)."""
    cpus = os.cpu_count() or 1
    ram = available_ram()
    if device == "cpu":
        return Machine(cpus, ram)
    probed = probe_devices()
    if probed is None:
        return Machine(cpus, ram)
    return Machine(cpus, ram, probed[0], probed[1])


# ------------------------------------------------------------------------------------------ memory


def _params(channels: tuple[int, ...], per_squared_width: int) -> int:
    return per_squared_width * sum(c * c for c in channels)


def memory_estimate(preset: Preset) -> int:
    """Bytes one process of a training job (pretrain or cotrain) with ``preset`` needs, an upper estimate.

    ``FIXED_BYTES + batch * patch**2 * (BYTES_PER_PIXEL + BYTES_PER_PIXEL_PER_WIDTH * (first student width
    + first teacher width)) + BYTES_PER_PARAMETER * parameters`` (two teacher pathways, two students);
    see the constants for how they were measured.
    """
    pixels = preset.batch_size * preset.patch_size**2
    width = preset.student_channels[0] + preset.teacher_channels[0]
    params = 2 * _params(preset.teacher_channels, _PARAMS_PER_SQUARED_WIDTH["teacher"]) + 2 * _params(
        preset.student_channels, _PARAMS_PER_SQUARED_WIDTH["student"]
    )
    return (
        FIXED_BYTES
        + pixels * (BYTES_PER_PIXEL + BYTES_PER_PIXEL_PER_WIDTH * width)
        + (BYTES_PER_PARAMETER * params)
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**28 else f"{n / 2**20:.3g} MiB"


# ------------------------------------------------------------------------------------------ the checks


def _refuse_project(message: str) -> PreflightError:
    return PreflightError(message, 409, "not_ready")


def _active_method(project: Project) -> tuple[str, str] | None:
    """(id, method) of the active model (the method from its config.json when readable), or None."""
    active = project.active_model()
    if active is None:
        return None
    method = active.method
    try:
        spec = json.loads((project.model_dir(active.id) / "config.json").read_text()).get("spec", {})
        method = str(spec.get("method", method))
    except (OSError, ValueError, AttributeError):
        pass
    return active.id, method


def _check_project(project: Project, params: JobParamsT) -> None:
    if isinstance(params, PretrainParams):
        if not any(r.state != "excluded" for r in project.images(split="train")):
            raise _refuse_project(
                "pretraining needs training images, and this project has none (or all are excluded): "
                "import images (split 'train') first."
            )
        return
    active = _active_method(project)
    if isinstance(params, ProposeParams):
        for ref in params.ids or ():
            try:
                project.image(ref)
            except DataError as exc:
                raise PreflightError(str(exc), 404, "not_found") from exc
        if active is None:
            raise _refuse_project(
                "proposals need a trained model and this project has none yet: run pretraining or a "
                "co-training round first."
            )
        if active[1] != "diffseg":
            raise _refuse_project(
                f"the active model {active[0]!r} ({active[1]}) has no diffusion teacher to propose with: "
                "activate a diffseg model, or run pretraining or a co-training round first."
            )
        return
    labeled = sum(
        1
        for r in project.images(split="train")
        if r.state != "excluded" and project.annotation(r.id) is not None
    )
    if labeled == 0:
        raise _refuse_project(
            "co-training needs at least one annotated image in the train split (not excluded) and this "
            "project has none: save a correction of a proposal, or import ground-truth masks (diffseg "
            "import --masks, or POST /images/{ref}/annotations?kind=ground_truth), then start it again."
        )
    if active is not None and active[1] != "diffseg":
        raise _refuse_project(
            f"co-training continues from the active model {active[0]!r}, a {active[1]} model with no "
            "diffusion teacher: activate a diffseg model first."
        )


def _resolve_device(device: str, machine: Machine) -> tuple[str, int | None]:
    """(kind, CUDA index or None) the job will use: ``cuda``, ``mps`` or ``cpu`` as choose_device picks."""
    cuda = machine.cuda_free
    if device == "auto":
        if cuda:
            return "cuda", None
        return ("mps", None) if machine.mps else ("cpu", None)
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else None
        if cuda is not None and not cuda:
            raise PreflightError(
                f"device {device!r} was asked for but this machine has no visible CUDA GPU: use device "
                "'auto' or 'cpu'."
            )
        if cuda is not None and index is not None and index >= len(cuda):
            raise PreflightError(
                f"device {device!r} was asked for but this machine has {len(cuda)} CUDA GPU(s) "
                f"(cuda:0 to cuda:{len(cuda) - 1}): pick one of them, or 'cuda'."
            )
        return "cuda", index
    if device == "mps" and machine.mps is False:
        raise PreflightError("device 'mps' was asked for but is not available here: use 'auto' or 'cpu'.")
    return device, None


def _check_machine(params: JobParamsT, preset: Preset, machine: Machine) -> None:
    kind, index = _resolve_device(params.device, machine)
    nproc = params.nproc if isinstance(params, CotrainParams) else 1
    cuda = machine.cuda_free
    if kind == "cuda" and cuda is not None and nproc > len(cuda):
        raise PreflightError(
            f"nproc {nproc} asks for one process per GPU but this machine has {len(cuda)} visible CUDA "
            f"GPU(s): use nproc {len(cuda)} or less."
        )
    if kind != "cuda" and nproc > machine.cpus:
        raise PreflightError(
            f"nproc {nproc} asks for {nproc} processes on the CPU (gloo, device {kind}) but this machine has "
            f"{machine.cpus} CPU(s): use nproc {machine.cpus} or less."
        )
    if isinstance(params, ProposeParams):
        return  # proposals hold whole images, not batches: their cost is the image size, not the preset's
    need = memory_estimate(preset)
    shape = (
        f"batch_size {preset.batch_size} x patch_size {preset.patch_size}^2 with first-level widths "
        f"{preset.student_channels[0]} + {preset.teacher_channels[0]}"
    )
    fix = (
        "lower batch_size or patch_size (preset overrides), pick a smaller preset"
        + (" or fewer processes (nproc)" if nproc > 1 else "")
        + "."
    )
    if kind == "cuda" and cuda:
        ranks = range(nproc) if nproc > 1 else [index or 0]
        free = min(cuda[i] for i in ranks if i < len(cuda))
        if need > free:
            raise PreflightError(
                f"this {params.kind} job needs about {_gib(need)} of GPU memory per process ({shape}) but "
                f"only {_gib(free)} is free on its GPU: {fix}"
            )
        return
    if kind == "cuda" or machine.ram_available is None:
        return  # unknown: nothing to compare with
    total = need * nproc
    if total > machine.ram_available:
        each = f" ({nproc} processes of {_gib(need)})" if nproc > 1 else ""
        raise PreflightError(
            f"this {params.kind} job needs about {_gib(total)} of memory{each} ({shape}) but only "
            f"{_gib(machine.ram_available)} is available on this machine: {fix}"
        )


def check_job(project: Project, params: JobParamsT, machine: Machine | None = None) -> None:
    """Refuse a job that cannot run: first what the project lacks, then what this machine lacks.

    Args:
        project: The open project the job would be created in.
        params: Its typed parameters (already validated against the contract's static bounds).
        machine: The machine facts (default :func:`current_machine` for the job's device).

    Raises:
        PreflightError: With the HTTP status to answer and a message that says what to do.
        ConfigError: Preset overrides that do not combine into a preset (e.g. a patch size the networks
            cannot divide).
    """
    _check_project(project, params)
    preset = params.resolve_preset()
    _check_machine(params, preset, machine if machine is not None else current_machine(params.device))
