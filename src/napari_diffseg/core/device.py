"""Device choice (cuda, mps, cpu) and the matching precision settings."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..base.errors import ConfigError

__all__ = ["autocast", "choose_device", "prepare_module"]


def choose_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu. An explicit name must be available."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is visible; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' was asked for but is not available; use --device auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from exc


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bf16 autocast on CUDA; full precision elsewhere."""
    if device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def prepare_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move to ``device``; channels-last memory format on CUDA."""
    module = module.to(device)
    if device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return module
