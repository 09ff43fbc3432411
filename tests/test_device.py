"""Device choice, Apple GPUs (MPS) included: which device ``auto`` picks, what an unavailable one says, the
precision on each, and the MPS CPU fallback set before torch loads. (MPS itself cannot run here; this is
the logic that can be tested without one.)"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from napari_diffseg.base.errors import ConfigError
from napari_diffseg.core import device as device_mod
from napari_diffseg.core.device import autocast, choose_device, device_notes


@pytest.fixture
def machine(monkeypatch):
    """Pretend which accelerators exist: ``machine(cuda=..., mps=..., mps_built=...)``."""

    def set_(cuda: bool = False, mps: bool = False, mps_built: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(torch.backends.mps, "is_built", lambda: mps_built)
        monkeypatch.setattr(device_mod, "_NOTED", set())

    return set_


def test_auto_prefers_cuda_then_mps_then_cpu(machine) -> None:
    machine(cuda=True, mps=True)
    assert choose_device("auto").type == "cuda"
    machine(cuda=False, mps=True)
    assert choose_device("auto").type == "mps"
    assert choose_device("").type == "mps" and choose_device("AUTO").type == "mps"
    machine(cuda=False, mps=False)
    assert choose_device("auto").type == "cpu"


def test_explicit_mps(machine) -> None:
    machine(mps=True)
    assert choose_device("mps") == torch.device("mps")
    machine(mps=False, mps_built=True)
    with pytest.raises(ConfigError, match=r"macOS 12\.3"):
        choose_device("mps")
    machine(mps=False, mps_built=False)
    with pytest.raises(ConfigError, match="no MPS support"):
        choose_device("mps")
    machine(cuda=False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        choose_device("cuda:1")
    with pytest.raises(ConfigError, match="unknown device"):
        choose_device("tpu")


def test_choosing_mps_says_float32_fallback_and_untested_in_the_log(machine, caplog, monkeypatch) -> None:
    machine(mps=True)
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    with caplog.at_level(logging.INFO, logger="napari_diffseg.device"):
        choose_device("auto")
        choose_device("mps")  # said once per process
    text = [r.getMessage() for r in caplog.records]
    assert len(text) == 3 and all(r.levelno == logging.WARNING for r in caplog.records)
    assert "float32" in text[0] and "run on the CPU" in text[1] and "not been tested" in text[2]
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "0")
    assert "stops the job" in device_notes(torch.device("mps"))[1]
    assert device_notes(torch.device("cpu")) == []


def test_precision_per_device() -> None:
    for name in ("mps", "cpu"):
        with autocast(torch.device(name)):
            assert not torch.is_autocast_enabled("cuda") and not torch.is_autocast_enabled("mps")
    if torch.cuda.is_available():
        with autocast(torch.device("cuda")):
            assert torch.is_autocast_enabled("cuda")
            assert torch.get_autocast_dtype("cuda") == torch.bfloat16


@pytest.mark.parametrize(("preset", "expected"), [(None, "1"), ("0", "0")])
def test_mps_fallback_is_set_before_torch_on_macos(preset, expected) -> None:
    """Importing the package on macOS sets PYTORCH_ENABLE_MPS_FALLBACK=1 unless the user chose a value."""
    setup = (
        "os.environ.pop('PYTORCH_ENABLE_MPS_FALLBACK', None)"
        if preset is None
        else f"os.environ['PYTORCH_ENABLE_MPS_FALLBACK'] = {preset!r}"
    )
    code = "\n".join(
        [
            "import os, sys",
            setup,
            "sys.platform = 'darwin'",
            "import napari_diffseg",
            "assert 'torch' not in sys.modules",
            "print(os.environ['PYTORCH_ENABLE_MPS_FALLBACK'])",
        ]
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
