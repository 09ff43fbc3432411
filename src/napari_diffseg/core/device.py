"""Device choice (cuda, mps, cpu) and the matching precision settings.

* **CUDA**: bf16 autocast, channels-last weights.
* **Apple GPUs (MPS)**: float32 throughout (no autocast: MPS's half-precision kernels are not what the
  method was measured with), and operations MPS lacks run on the CPU instead of failing:
  ``napari_diffseg/__init__.py`` sets ``PYTORCH_ENABLE_MPS_FALLBACK=1`` on macOS before torch loads (a value
  the user set is kept). Choosing MPS says so in the log (the job's log for backend jobs). Multi-process
  training (DDP, ``--nproc`` > 1) is CUDA or CPU only. **Untested on Apple hardware**: the selection logic
  is tested; the training and sampling code has not run on an MPS device yet.
* **CPU**: float32.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

from ..base.errors import ConfigError

__all__ = ["autocast", "choose_device", "device_notes", "mps_available", "prepare_module"]

log = logging.getLogger("napari_diffseg.device")
_NOTED: set[str] = set()


def mps_available() -> bool:
    """Whether torch can use an Apple GPU here (built with MPS, and macOS / the GPU support it)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _mps_built() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_built())


def device_notes(device: torch.device) -> list[str]:
    """What running on ``device`` means for precision and missing operations (logged when it is chosen)."""
    if device.type == "mps":
        fallback = os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK", "0") not in ("", "0")
        return [
            "Apple GPU (MPS): float32 throughout (no mixed precision).",
            "Operations MPS lacks run on the CPU (PYTORCH_ENABLE_MPS_FALLBACK=1)."
            if fallback
            else "PYTORCH_ENABLE_MPS_FALLBACK is not set: an operation MPS lacks stops the job; set it to 1 "
            "before starting napari-diffseg to run such operations on the CPU.",
            "napari-diffseg has not been tested on Apple hardware yet; please report problems.",
        ]
    if device.type == "cuda":
        return ["CUDA: bf16 autocast, channels-last weights."]
    return []


def _note(device: torch.device) -> None:
    """Log the device notes once per process and device type."""
    if device.type in _NOTED:
        return
    _NOTED.add(device.type)
    for line in device_notes(device):
        (log.warning if device.type == "mps" else log.info)(line)


def choose_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu. An explicit name must be available."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            dev = torch.device("cuda")
        elif mps_available():
            dev = torch.device("mps")
        else:
            dev = torch.device("cpu")
        _note(dev)
        return dev
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is visible; use --device auto or cpu")
    if name == "mps" and not mps_available():
        why = (
            "this macOS or Mac does not support it (MPS needs macOS 12.3+ and an Apple-silicon or AMD GPU)"
            if _mps_built()
            else "this torch build has no MPS support (install the macOS arm64 wheel of torch)"
        )
        raise ConfigError(f"device 'mps' was asked for but is not available: {why}; use --device auto or cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    _note(dev)
    return dev


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bf16 autocast on CUDA; full precision (float32) elsewhere, MPS included."""
    if device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def prepare_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move to ``device``; channels-last memory format on CUDA; float32 parameters on MPS."""
    module = module.to(device)
    if device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    elif device.type == "mps":
        module = module.float()  # MPS has no float64
    return module
