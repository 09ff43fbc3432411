from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# backends started by tests skip the start-up speed measurement (seconds of CPU each); tests/test_calibrate.py
# switches it on where it is the subject
os.environ.setdefault("DIFFSEG_CALIBRATE", "0")

import torch

torch.set_num_threads(1)


def shared_data_dir() -> Path:
    env = os.environ.get("DIFFSEG_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic gland dataset (12 train, 4 test, 64×64)."""
    from napari_diffseg.data.synthetic import make_sample_dataset

    root = tmp_path_factory.mktemp("synth") / "ds"
    make_sample_dataset(root, n_train=12, n_test=4, size=(64, 64), seed=3)
    return root


@pytest.fixture
def tiny_preset():
    from napari_diffseg.base.presets import get_preset

    return get_preset("tiny")
