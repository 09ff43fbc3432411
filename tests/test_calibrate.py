"""The backend measures its machine's speed at start, and the widgets' estimates use it (issue 17)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend_server import Server
from napari_diffseg.backend.calibrate import Calibration, measure
from napari_diffseg.base.cost import STEP_SECONDS
from napari_diffseg.project import Project


def test_measure_times_real_training_steps() -> None:
    out = measure("cpu", steps=3)
    assert out["device"] == "cpu" and out["threads"] >= 1 and out["steps"] == 3
    assert out["reference_step_seconds"] == STEP_SECONDS["cpu"]["pretrain"]
    assert out["step_seconds"] > 0.0
    assert out["speed"] == pytest.approx(out["step_seconds"] / out["reference_step_seconds"])
    # a step of the cpu preset takes tenths of a second on any CPU: not 0, not minutes
    assert 0.005 < out["speed"] < 200


def test_a_failed_measurement_leaves_the_speed_unknown(tmp_path: Path) -> None:
    bad = tmp_path / "python-that-fails"
    bad.write_text("#!/bin/sh\necho boom >&2\nexit 3\n")
    bad.chmod(0o755)
    cal = Calibration(python=str(bad), delay_s=0.0)
    cal.start()
    assert cal.wait(30) is None and not cal.running
    assert cal.detail == {"error": "boom"}


def test_health_reports_the_speed_measured_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Project.create(tmp_path / "p").close()
    monkeypatch.setenv("DIFFSEG_CALIBRATE", "1")
    monkeypatch.setenv("DIFFSEG_CALIBRATE_DELAY", "0.5")
    srv = Server(tmp_path / "p").start()
    try:
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen.append(httpx.get(srv.url + "/api/v1/health", timeout=5).json())
            if seen[-1]["speed"] is not None:
                break
            assert seen[-1]["calibrating"] is True  # null speed only while measuring
            time.sleep(0.5)
        assert seen[-1]["speed"] > 0 and seen[-1]["calibrating"] is False
    finally:
        srv.stop()


def test_skipped_while_a_job_runs() -> None:
    cal = Calibration(delay_s=0.0, busy=lambda: True)
    cal.start()
    assert cal.wait(30) is None and cal.detail == {"skipped": "a job was running"}


def test_switched_off_it_says_so_at_once(tmp_path: Path) -> None:
    Project.create(tmp_path / "p").close()
    srv = Server(tmp_path / "p").start()  # the test session sets DIFFSEG_CALIBRATE=0
    try:
        health = httpx.get(srv.url + "/api/v1/health", timeout=5).json()
        assert health["speed"] is None and health["calibrating"] is False
    finally:
        srv.stop()
