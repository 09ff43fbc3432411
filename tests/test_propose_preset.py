"""A propose job without a ``preset`` runs at the cost of the preset the active model was trained with."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_diffseg.backend import jobs
from napari_diffseg.backend.jobs import execute_job, start_job
from napari_diffseg.base.presets import Preset, get_preset
from napari_diffseg.project import Project


@pytest.fixture
def project(tmp_path: Path, synth_dataset: Path) -> Path:
    root = tmp_path / "proj"
    with Project.create(root) as p:
        for img in sorted((synth_dataset / "images").glob("train_*.png"))[:2]:
            p.import_files([img])
    return root


def _run(root: Path, kind: str, params: dict) -> str:
    with Project.open(root) as p:
        job = start_job(p, kind, params)
    return execute_job(root, job)


def test_propose_uses_the_active_models_preset(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run(project, "pretrain", {"preset": "tiny"}) == "done"
    seen: list[tuple] = []
    real = jobs.propose

    def spy(net, diff, x, cfg, gen, **kw):
        seen.append((cfg.steps, cfg.samples, cfg.rounds, kw["roi"], kw["sw_batch"]))
        return real(net, diff, x, cfg, gen, **kw)

    monkeypatch.setattr(jobs, "propose", spy)
    assert _run(project, "propose", {"ids": ["train_000"]}) == "done"  # no preset given
    tiny = get_preset("tiny")
    # the model is label-free (pretrained): one denoising step and one round, whatever its preset says
    # (test_jobs.py); samples and tiling follow its preset
    assert seen == [(1, tiny.samples, 1, tiny.roi_size, tiny.sw_batch_size)]

    seen.clear()  # an explicit preset (and overrides) still win
    assert _run(project, "propose", {"ids": ["train_000"], "overrides": {"samples": 3}}) == "done"
    assert seen[0][1] == 3 and seen[0][3] == tiny.roi_size
    seen.clear()
    cpu = get_preset("cpu")
    monkeypatch.setattr(jobs, "propose", lambda *a, **kw: seen.append(kw["roi"]) or real(*a, **kw))
    assert _run(project, "propose", {"ids": ["train_000"], "preset": "cpu", "steps": 1}) == "done"
    assert seen == [cpu.roi_size]


def test_model_preset_tolerates_old_or_odd_configs() -> None:
    assert Preset.from_config({}) is None
    assert Preset.from_config({"preset": "tiny"}) is None
    assert Preset.from_config({"preset": {"name": "x", "batch_size": 0}}) is None
    tiny = get_preset("tiny")
    assert Preset.from_config({"preset": tiny.to_dict()}) == tiny


def test_cli_propose_follows_the_active_models_preset(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `diffseg propose` used to send preset="cpu" always: a tiny model proposed at the cpu cost
    from napari_diffseg.cli import main

    assert main(["pretrain", str(project), "--preset", "tiny", "-q"]) == 0
    seen: list[tuple] = []
    real = jobs.propose
    monkeypatch.setattr(
        jobs, "propose", lambda *a, **kw: seen.append((a[3].steps, kw["roi"])) or real(*a, **kw)
    )
    assert main(["propose", str(project), "--ids", "train_000", "-q"]) == 0
    tiny = get_preset("tiny")
    assert seen == [(1, tiny.roi_size)]  # a label-free model proposes in one step; tiling from its preset
    with Project.open(project) as p:
        assert "preset" not in p.jobs()[-1].params  # stored as given: the model's preset is used at run time
    seen.clear()
    assert main(["propose", str(project), "--ids", "train_000", "--preset", "cpu", "--steps", "1", "-q"]) == 0
    assert seen == [(1, get_preset("cpu").roi_size)]
