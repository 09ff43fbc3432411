"""The human-in-the-loop benchmark script runs end to end (tiny preset, synthetic data) and its numbers
are consistent with the project it drove."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from napari_diffseg.project import Project

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "hitl.py"


def test_hitl_script_tiny(tmp_path: Path) -> None:
    from napari_diffseg.data.synthetic import make_sample_dataset

    make_sample_dataset(tmp_path / "data" / "synth", n_train=5, n_test=2, size=(48, 48))
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, str(SCRIPT), "--data", str(tmp_path / "data"), "--dataset", "synth"]
    cmd += ["--preset", "tiny", "--k", "1", "--b", "2", "--rounds", "2", "--threads", "1", "--keep"]
    cmd += ["--arms", "uncertainty", "power", "scratch", "--out", str(out), "--work", str(work)]
    run = subprocess.run(
        cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for arm in ("uncertainty", "power", "scratch"):
        assert f"{arm}: exit 0" in run.stdout

    u = json.loads((out / "synth_uncertainty_s0.json").read_text())
    s = json.loads((out / "synth_scratch_s0.json").read_text())
    assert [r["n_labeled"] for r in u["per_round"]] == [1, 3] == [r["n_labeled"] for r in s["per_round"]]
    assert all(0.0 <= r["test_dice"] <= 1.0 for r in u["per_round"] + s["per_round"])
    # the protocol: one of the 5 training images carved (seeded) into validation, never picked or counted
    from napari_diffseg.base.presets import get_preset
    from napari_diffseg.experiment import choose_val

    val = choose_val([f"train_{i:03d}" for i in range(5)], 0.2, 0)
    assert u["val_ids"] == s["val_ids"] == val and u["n_val"] == 1 and u["n_train"] == 4
    assert not set(val) & set(u["start_ids"])
    for run in (u, s):
        prov = run["provenance"]
        assert prov["preset"]["name"] == "tiny" and prov["device"] == "cpu" and prov["wall_seconds"] > 0
        assert "commit" in prov and prov["versions"]["torch"]
    assert u["provenance"]["preset"]["cotrain_steps"] == get_preset("tiny").cotrain_steps
    first = u["per_round"][0]
    assert len(first["corrections"]) == 2 and "corrections" not in u["per_round"][1]
    assert not {c["image"] for c in first["corrections"]} & set(val)
    assert first["pool"]["n"] == 3 and 0.0 <= first["pool"]["mean_edit_dice"] <= 1.0  # all 3 unlabeled
    # the corrected images were the two most uncertain, and the store recorded what the annotator changed
    with Project.open(work / "synth_uncertainty_s0") as project:
        assert [r.name for r in project.images(split="val")] == val  # annotated: the cotrain job's validation
        unc = {r.name: r.uncertainty for r in project.images(split="train")}
        start = set(u["start_ids"])
        candidates = sorted((n for n in unc if n not in start), key=lambda n: -(unc[n] or 0.0))
        corrected = [c["image"] for c in first["corrections"]]
        assert set(corrected) == set(candidates[:2])
        for c in first["corrections"]:
            ann = project.annotation(c["image"])
            assert ann is not None and ann.kind == "correction"
            assert ann.edit_dice == c["edit_dice"] and ann.pixels_changed == c["pixels_changed"]
            truth = project.load_annotation(c["image"])
            assert c["pixels_drawn_from_scratch"] == int(np.count_nonzero(truth))
        assert project.check()["ok"]
    # the power arm started from the uncertainty arm's round-1 snapshot: same first model, its own picks
    w = json.loads((out / "synth_power_s0.json").read_text())
    assert not u["round1_from_cache"] and w["round1_from_cache"] and w["check"]
    assert w["per_round"][0]["test_dice"] == first["test_dice"]
    assert w["per_round"][0]["seconds_train"] == first["seconds_train"]
    picked = [c["image"] for c in w["per_round"][0]["corrections"]]
    assert len(set(picked)) == 2 and not set(picked) & start
    with Project.open(work / "synth_uncertainty_s0") as project:
        models = [m.id for m in project.models()]
    with Project.open(work / "synth_power_s0") as project:
        assert [m.id for m in project.models()] == models and project.check()["ok"]
    summary = (out / "summary.md").read_text()
    assert "| 1 | 1 (25 %) |" in summary and "| 2 | 3 (75 %) |" in summary

    # the follow-up script scores the same round-1 proposals the benchmark pooled as the "average image"
    cost_cmd = [
        sys.executable,
        str(SCRIPT.parent / "hitl_proposal_cost.py"),
        str(work / "synth_uncertainty_s0"),
    ]
    cost_cmd += [first["model"], "--data", str(tmp_path / "data"), "--dataset", "synth", "--preset", "tiny"]
    cost = subprocess.run(
        cost_cmd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cost.returncode == 0, cost.stdout + cost.stderr
    assert "3 images with a proposal" in cost.stdout  # the 3 unlabeled training images, not the val image
    argmax = [line for line in cost.stdout.splitlines() if "proposal (argmax)" in line]
    assert float(argmax[0].split()[-1]) == round(first["pool"]["changed_over_drawn"], 3)

    # an arm stopped early (session time) is rebuilt from its log alone: the per-round lines carry the
    # corrections, so nothing is lost without its project and the pooled ratio stays exact (no "*")
    assert u["device"] == "cpu"
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "synth_uncertainty_s0.log").write_text((out / "synth_uncertainty_s0.log").read_text())
    salvage = [sys.executable, str(SCRIPT), "--report-only", "--salvage", "--arms", "uncertainty"]
    salvage += ["--dataset", "synth", "--k", "1", "--b", "2", "--rounds", "3", "--preset", "tiny"]
    salvage += ["--out", str(stopped), "--work", str(tmp_path / "no-work")]
    run = subprocess.run(salvage, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    rebuilt = json.loads((stopped / "synth_uncertainty_s0.json").read_text())
    assert rebuilt["incomplete"].startswith("stopped after 2 of 3 rounds")
    assert rebuilt["per_round"][0]["corrections"] == first["corrections"]
    assert [r["test_dice"] for r in rebuilt["per_round"]] == [r["test_dice"] for r in u["per_round"]]
    text = (stopped / "summary.md").read_text()
    assert re.search(r"k / \d\.\d\d \|", text) and not re.search(r"k / \d\.\d\d\*", text), text


def _report_of_stored(folder: str, tmp_path: Path) -> str:
    """``hitl.py --report-only`` over a copy of the stored arm JSONs of ``benchmarks/results/<folder>``."""
    import shutil

    for f in (SCRIPT.parent / "results" / folder).glob("glas_*_s*.json"):
        shutil.copy(f, tmp_path)
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--report-only", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return (tmp_path / "summary.md").read_text()


def test_hitl_correct_last_measures_the_last_rounds_corrections(tmp_path: Path) -> None:
    """``--correct-last``: the annotator's turn after the last round too (round 2's corrections at the cost of
    two rounds); without it the last round has no corrections (the test above)."""
    from napari_diffseg.data.synthetic import make_sample_dataset

    make_sample_dataset(tmp_path / "data" / "synth", n_train=5, n_test=2, size=(48, 48))
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--data", str(tmp_path / "data"), "--dataset", "synth"]
    cmd += ["--preset", "tiny", "--k", "1", "--b", "2", "--rounds", "1", "--threads", "1", "--correct-last"]
    cmd += ["--arms", "power", "--out", str(out), "--work", str(tmp_path / "work")]
    run = subprocess.run(
        cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert run.returncode == 0, run.stdout + run.stderr
    w = json.loads((out / "synth_power_s0.json").read_text())
    assert w["correct_last"] and [r["round"] for r in w["per_round"]] == [1]
    last = w["per_round"][-1]
    assert len(last["corrections"]) == 2 and last["pool"]["n"] == 3  # every unlabeled image proposed
    assert all(c["pixels_drawn_from_scratch"] > 0 for c in last["corrections"])


def test_hitl_report_pools_round2_over_seeds(tmp_path: Path) -> None:
    """The report's mean-over-seeds targets table pools round-2 corrections over seeds and lists each
    seed's own ratio (checked against the stored twice-the-budget GlaS results, recomputed here)."""
    summary = _report_of_stored("hitl_long", tmp_path)
    for arm, title in (("uncertainty", "most uncertain"), ("power", "uncertainty-weighted draw")):
        changed = drawn = 0
        per_seed = []
        for seed in (0, 1, 2):
            edits = json.loads((tmp_path / f"glas_{arm}_s{seed}.json").read_text())["per_round"][1][
                "corrections"
            ]
            c = sum(e["pixels_changed"] for e in edits)
            d = sum(e["pixels_drawn_from_scratch"] for e in edits)
            changed, drawn = changed + c, drawn + d
            per_seed.append(f"s{seed}: {c / d:.2f}")
        row = [line for line in summary.splitlines() if line.startswith(f"| {title} | s0:")]
        assert len(row) == 1, summary
        assert row[0].endswith(f"| {changed / drawn:.2f} ({'; '.join(per_seed)}) |")
    assert "#### Mean over seeds 0, 1, 2" in summary


def test_hitl_report_shows_corrections_of_an_arm_stopped_after_them(tmp_path: Path) -> None:
    """Arms stopped right after their round-2 corrections (the stored four-times-the-budget CPU run) still
    get their round-2 row in the mean-over-seeds table of the annotator's work, recomputed here."""
    summary = _report_of_stored("hitl_4x", tmp_path)
    cells = []
    for arm in ("uncertainty", "power"):
        edits = [
            e
            for seed in (0, 1)
            for e in json.loads((tmp_path / f"glas_{arm}_s{seed}.json").read_text())["per_round"][1][
                "corrections"
            ]
        ]
        ratio = sum(e["pixels_changed"] for e in edits) / sum(e["pixels_drawn_from_scratch"] for e in edits)
        cells.append(f"{sum(e['edit_dice'] for e in edits) / len(edits):.3f} / {ratio:.2f}")
    assert f"| 2 | {cells[0]} | {cells[1]} | " in summary, summary
    assert "not reached (stopped early)" in summary


def test_hitl_script_instances_tiny(tmp_path: Path) -> None:
    """``--task instances``: an instance project; the corrections are the dataset's instances/, saved against
    their proposals, so the store's object edit cost is what the JSON and the report show."""
    from napari_diffseg.data.synthetic import make_sample_dataset

    make_sample_dataset(
        tmp_path / "data" / "nuc", n_train=6, n_test=2, size=(64, 64), kind="nuclei", seed=1, instances=True
    )
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, str(SCRIPT), "--data", str(tmp_path / "data"), "--dataset", "nuc", "--task"]
    cmd += ["instances", "--preset", "tiny", "--k", "1", "--b", "2", "--rounds", "2", "--threads", "1"]
    cmd += ["--keep", "--arms", "uncertainty", "scratch", "--out", str(out), "--work", str(work)]
    run = subprocess.run(
        cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert run.returncode == 0, run.stdout + run.stderr
    u = json.loads((out / "nuc_instances_uncertainty_s0.json").read_text())
    s = json.loads((out / "nuc_instances_scratch_s0.json").read_text())
    assert u["task"] == s["task"] == "instances"
    for row in u["per_round"] + s["per_round"]:
        assert all(0.0 <= row[k] <= 1.0 for k in ("test_ap_50", "test_f1_50", "test_dice"))
    first = u["per_round"][0]
    assert len(first["corrections"]) == 2 and first["pool"]["n"] == 3
    from napari_diffseg.data.dataset import DatasetFolder

    ds = DatasetFolder(tmp_path / "data" / "nuc")
    with Project.open(work / "nuc_instances_uncertainty_s0") as project:
        assert project.task.kind == "instances"
        for c in first["corrections"]:
            ann = project.annotation(c["image"])
            assert ann is not None and ann.kind == "correction" and ann.proposal_id is not None
            stored = (ann.objects_added, ann.objects_removed, ann.objects_changed)
            assert stored == (c["objects_added"], c["objects_removed"], c["objects_changed"])
            truth = ds.load_instances(c["image"])
            assert np.array_equal(project.load_annotation(c["image"]), truth)  # ids kept, not binarised
            assert c["objects_drawn_from_scratch"] == len(np.unique(truth)) - 1
            assert c["objects_fixed"] == sum(stored)
        assert project.check()["ok"]
    assert s["per_round"][1]["drawn_objects_per_image"] > 0
    summary = (out / "summary.md").read_text()
    assert "### nuc: objects fixed per image by round vs objects drawn from scratch" in summary
    n = len(first["corrections"])
    drawn = sum(c["objects_drawn_from_scratch"] for c in first["corrections"]) / n
    fixed = sum(c["objects_fixed"] for c in first["corrections"]) / n
    assert f"| 1 | most uncertain | 2 | {drawn:.1f} | {fixed:.1f} (" in summary, summary
    assert (out / "nuc_instances.png").exists() and not (out / "nuc.png").exists()
