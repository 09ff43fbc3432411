"""``diffseg demo``: the whole loop through a real backend child process, its report, and bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from backend_server import SRC, alive

FIGURES = (
    "dice_per_round.png",
    "loss_curves.png",
    "test_predictions.png",
    "overlays_round1.png",
    "overlays_round2.png",
)


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }


def _demo(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "napari_diffseg.cli", "demo", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)


def _backend_pid(stderr: str) -> int:
    found = re.search(r"backend: http://127\.0\.0\.1:\d+ \(pid (\d+)", stderr)
    assert found, stderr
    return int(found.group(1))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("demo") / "out"
    result = _demo("--out", str(out), "--preset", "tiny", "-q")
    assert result.returncode == 0, result.stderr
    return out, result


def test_demo_writes_a_report_with_dice_per_round_and_edit_dice(demo_run) -> None:
    from napari_diffseg.core.metrics import edit_dice
    from napari_diffseg.data.io import read_mask
    from napari_diffseg.demo import DEMO_PRESETS
    from napari_diffseg.project import Project

    out, result = demo_run
    s = DEMO_PRESETS["tiny"]
    report = out / "report"
    assert f"report: {report / 'report.html'}" in result.stdout
    page = (report / "report.html").read_text()
    for name in FIGURES:
        assert (report / name).stat().st_size > 1000, name
        assert f"src='{name}'" in page, name
    numbers = json.loads((report / "report.json").read_text())

    # test Dice of the students after each round, per test image and the mean
    assert [r["round"] for r in numbers["rounds"]] == [1, 2]
    test_ids = [f"test_{i:03d}" for i in range(s.n_test)]
    for r in numbers["rounds"]:
        assert sorted(r["test_dice_per_image"]) == test_ids
        assert 0.0 <= r["test_dice_mean"] <= 1.0
        assert r["test_dice_mean"] == pytest.approx(np.mean(list(r["test_dice_per_image"].values())))
        assert r["model_metrics"]["val_n"] == s.n_val  # the val images reached the co-training round
    assert numbers["rounds"][0]["model_id"] != numbers["rounds"][1]["model_id"]
    assert set(numbers["test_dice_per_round"]) == {"1", "2"}
    assert numbers["rounds"][1]["corrected"] == s.b
    # the supervised references: the k labeled images alone, then with the corrections
    assert [b["labeled"] for b in numbers["baselines"]] == [s.k, s.k + s.b]
    for b in numbers["baselines"]:
        assert sorted(b["test_dice_per_image"]) == test_ids and 0.0 <= b["test_dice_mean"] <= 1.0
        assert b["name"] in page

    # every correction: the edit Dice and pixels changed the project recorded, against the truth
    assert len(numbers["corrections"]) == s.b
    with Project.open(out / "project") as proj:
        for c in numbers["corrections"]:
            ann = proj.annotation(c["image_id"], c["version"])
            assert ann is not None and ann.kind == "correction" and ann.proposal_id == c["proposal_id"]
            assert c["edit_dice"] == pytest.approx(ann.edit_dice)
            assert c["pixels_changed"] == ann.pixels_changed
            found = proj.proposal(c["image_id"], c["proposal_model"])
            assert found is not None
            proposed = found[1].argmax(0)
            truth = read_mask(out / "data" / "masks" / f"{c['name']}.png", binary=True)
            assert np.array_equal(proj.load_annotation(c["image_id"], c["version"]), truth)
            assert c["pixels_changed"] == int((proposed != truth).sum())
            assert c["edit_dice"] == pytest.approx(edit_dice(proposed, truth), abs=1e-6)
            assert proj.image(c["image_id"]).state == "corrected"
        # the annotator took the most uncertain proposals
        left = [r.uncertainty for r in proj.images(state="proposed", split="train")]
        assert left and max(left) <= min(c["uncertainty"] for c in numbers["corrections"])
        assert len(proj.images(state="ground_truth", split="train")) == s.k
        assert not any(r.split.startswith("test") for r in proj.images())  # test images stay out
        jobs = proj.jobs()
    assert [j.kind for j in jobs] == ["cotrain", "propose", "cotrain", "propose"]  # no label-free stage
    assert all(j.state == "done" for j in jobs)
    assert numbers["mean_edit_dice"] == pytest.approx(
        np.mean([c["edit_dice"] for c in numbers["corrections"]])
    )

    # loss curves came from the jobs' persisted events; every step was timed
    assert numbers["events_with_losses"]["cotrain_round1"] > 0
    assert numbers["events_with_losses"]["cotrain_round2"] > 0
    steps = (
        "cotrain_round1",
        "propose",
        "correct",
        "cotrain_round2",
        "baselines",
        "report",
        "total",
    )
    for step in steps:
        assert numbers["seconds"][step] >= 0
    assert numbers["seconds"]["total"] >= numbers["seconds"]["cotrain_round1"]

    # what the uncertainty is worth, measured on the val images after each round (issue 17)
    assert list(numbers["uncertainty"]) == ["round 1", "round 2"]
    for d, r in zip(numbers["uncertainty"].values(), numbers["rounds"], strict=True):
        assert d["images"] == s.n_val and d["model_id"] == r["model_id"]
        assert d["pixels"] == s.n_val * s.size * s.size
        assert np.isnan(d["auroc"]) or 0.0 <= d["auroc"] <= 1.0
        coloured, found = d["at_threshold"]["0.5"]
        assert 0.0 <= coloured <= 1.0 and (np.isnan(found) or 0.0 <= found <= 1.0)
        assert d["curve"]["inspected"][0] == 0.0 and d["curve"]["inspected"][-1] == pytest.approx(1.0)
    assert "Does the uncertainty point at the errors?" in page
    assert "After round 2: the teacher on the same images" in page and "nobody corrected" in page


def test_demo_leaves_a_valid_project_and_no_process(demo_run) -> None:
    from napari_diffseg.project import Project, check_project

    out, result = demo_run
    assert check_project(out / "project")["ok"]
    assert not alive(_backend_pid(result.stderr))
    with Project.open(out / "project") as proj:
        pids = [j.pid for j in proj.jobs() if j.pid]
    assert pids and not any(alive(pid) for pid in pids)


def test_demo_refuses_a_file_or_a_foreign_folder(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("mine")
    result = _demo("--out", str(target), "--preset", "tiny", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "is a file" in result.stderr
    assert target.read_text() == "mine"

    folder = tmp_path / "foreign"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    result = _demo("--out", str(folder), "--preset", "tiny", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "other content" in result.stderr
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]

    result = _demo("--out", str(tmp_path / "new"), "--preset", "huge", timeout=60)
    assert result.returncode == 2 and "unknown --preset" in result.stderr
    assert not (tmp_path / "new").exists()


def test_prepare_out_reuses_only_a_demo_folder(tmp_path: Path) -> None:
    from napari_diffseg.base.errors import DataError
    from napari_diffseg.demo import MARKER, prepare_out

    empty = prepare_out(tmp_path / "fresh")
    assert (empty / MARKER).is_file()
    (empty / "project").mkdir()
    (empty / "project" / "project.db").write_text("old")
    (empty / "report").mkdir()
    (empty / "mine.txt").write_text("not the demo's")
    again = prepare_out(empty)
    assert sorted(p.name for p in again.iterdir()) == [MARKER, "mine.txt"]
    (again / MARKER).unlink()
    with pytest.raises(DataError, match="other content"):
        prepare_out(again)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_the_backend_and_its_jobs(tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "napari_diffseg.cli", "demo", "--out", str(out), "--preset", "tiny", "-q"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        # Ctrl-C in a terminal: SIGINT handled as Python does by default, even when this test runs in the
        # background of a shell without job control, which starts its children with SIGINT ignored
        preexec_fn=_default_sigint,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    while True:  # wait until the data is uploaded and round 1 starts
        line = proc.stderr.readline()
        lines.append(line)
        if "labeled at the start" in line or not line:
            break
    backend = _backend_pid("".join(lines))
    time.sleep(1.5)  # the backend launches the job's worker process
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("aborted: the backend and its jobs were stopped")
    assert not alive(backend)
    from napari_diffseg.project import Project

    with Project.open(out / "project") as proj:
        jobs = proj.jobs()
    assert jobs and not any(j.pid and alive(j.pid) for j in jobs)
    assert not (out / "report" / "report.json").exists()


def test_gui_launch_docks_the_widgets_and_connects(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """``--gui``: the three widgets docked, a local backend started for the project and connected."""
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        pytest.skip("no display: install Xvfb and pytest-xvfb to run the GUI tests")
    from napari_diffseg._widgets.launch import dock_widgets
    from napari_diffseg.data.synthetic import make_sample
    from napari_diffseg.project import Project

    with Project.create(tmp_path / "proj") as proj:
        proj.import_array(make_sample(0, (32, 32))[0], "only")
    viewer = request.getfixturevalue("make_napari_viewer")()
    qtbot = request.getfixturevalue("qtbot")
    project_widget, annotate_widget, train_widget = dock_widgets(viewer, tmp_path / "proj")
    assert project_widget.session is annotate_widget.session is train_widget.session
    qtbot.waitUntil(lambda: project_widget.table.rowCount() == 1, timeout=30_000)
    proc = project_widget.session.server
    assert proc is not None and proc.poll() is None
    project_widget.session.stop_server()
    assert proc.poll() is not None


def test_demo_modules_load_no_gui() -> None:
    code = (
        "import sys, napari_diffseg.demo, napari_diffseg.report, napari_diffseg.backend.local; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'matplotlib', 'torch')]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    assert out.stdout.strip() == ""
