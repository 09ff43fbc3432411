"""Project jobs (pretrain / propose / cotrain) run on the store, persist events, cancel and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_diffseg.backend.jobs import JobFailed, execute_job, start_job
from napari_diffseg.base.errors import ConfigError
from napari_diffseg.base.events import CancelToken
from napari_diffseg.base.formats import tiff_bytes
from napari_diffseg.cli import main
from napari_diffseg.data.io import read_mask
from napari_diffseg.project import Project


@pytest.fixture
def project(tmp_path: Path, synth_dataset: Path) -> Path:
    root = tmp_path / "proj"
    with Project.create(root) as p:
        for img in sorted((synth_dataset / "images").glob("train_*.png"))[:6]:
            p.import_files([img])
        for name in ("train_000", "train_001"):
            mask = read_mask(synth_dataset / "masks" / f"{name}.png")
            p.save_annotation(name, mask, kind="correction", replaces=None)
        test_img = sorted((synth_dataset / "images").glob("test_*.png"))[0]
        p.import_files([test_img], split="test")
    return root


def _run(p: Path, kind: str, **params) -> tuple[int, str]:
    with Project.open(p) as proj:
        job = start_job(proj, kind, {"preset": "tiny", **params})
    return job, execute_job(p, job)


def test_pretrain_propose_cotrain_loop(project: Path) -> None:
    job, state = _run(project, "pretrain")
    assert state == "done"
    with Project.open(project) as p:
        assert p.active_model().round == 0
        events = p.events(job)
        assert events[-1].data["kind"] == "done"
        assert any(e.data["kind"] == "progress" and e.data["phase"] == "pretrain" for e in events)
    _, state = _run(project, "propose")
    assert state == "done"
    with Project.open(project) as p:
        proposed = [r for r in p.images() if r.state == "proposed"]
        assert len(proposed) == 4  # the unlabeled train images; never the test image
        assert all(r.split == "train" and 0.0 <= r.uncertainty <= 1.0 for r in proposed)
        nxt = p.next_image()
        assert nxt is not None and nxt.uncertainty == max(r.uncertainty for r in proposed)
    _, state = _run(project, "cotrain", rounds=2)
    assert state == "done"
    with Project.open(project) as p:
        active = p.active_model()
        assert active.round == 2 and active.metrics["labeled"] == 2 and active.metrics["unlabeled"] == 4
        assert p.check()["ok"]


def test_a_label_free_model_proposes_in_one_step_unless_asked(monkeypatch, project: Path) -> None:
    """Stage A trains the mask pathway at t = T - 1 only: a label-free model's proposals take one denoising
    step and one round (the preset's S and R would pass it through noise levels it never saw), and say
    so; steps and rounds asked for explicitly are kept."""
    from napari_diffseg.backend import jobs

    used = []
    real = jobs.propose

    def spy(*args, **kw):
        used.append(args[3])
        return real(*args, **kw)

    monkeypatch.setattr(jobs, "propose", spy)
    fitted = []

    def fit(bundle, images, **kw):  # the fit itself: tests/test_training.py
        fitted.append(len(images))
        return 0.3, 2

    monkeypatch.setattr(jobs, "fit_temperature", fit)
    monkeypatch.setattr(jobs, "is_dark_field", lambda x: True)  # as fluorescence: an anchor to fit to
    assert _run(project, "pretrain")[1] == "done"
    with Project.open(project) as p:
        metrics = p.active_model().metrics
    assert fitted == [6] and (metrics["temperature"], metrics["calibration_images"]) == (0.3, 2)
    job, state = _run(project, "propose", ids=["train_002"])
    assert state == "done" and (used[-1].steps, used[-1].rounds) == (1, 1)
    assert used[-1].temperature == 0.3  # its soft probabilities sharpened as the pretrain job fitted
    with Project.open(project) as p:
        messages = [e.data.get("message", "") for e in p.events(job)]
        assert any("one step and one round" in m and "temperature" in m for m in messages)
    assert _run(project, "propose", ids=["train_003"], steps=2, rounds=2)[1] == "done"
    assert (used[-1].steps, used[-1].rounds) == (2, 2)
    # a model trained on labels proposes with its own probabilities
    assert _run(project, "cotrain", rounds=1)[1] == "done"
    assert _run(project, "propose", ids=["train_004"])[1] == "done"
    assert used[-1].temperature == 1.0 and used[-1].steps > 1


def test_cancelled_cotrain_resumes_to_done(project: Path) -> None:
    with Project.open(project) as p:
        job = start_job(p, "cotrain", {"preset": "tiny", "overrides": {"cotrain_steps": 12}})
    token = CancelToken(Path(project) / "jobs" / str(job) / "cancel")

    def report(ev) -> None:
        # the first progress event of a loop is always emitted (later ones are throttled)
        if ev.phase == "cotrain" and ev.kind == "progress":
            token.cancel()

    assert execute_job(project, job, report=report, cancel=token) == "cancelled"
    with Project.open(project) as p:
        assert p.job(job).state == "cancelled"
        assert p.active_model() is None
    assert execute_job(project, job) == "done"  # resumes from its checkpoints
    with Project.open(project) as p:
        assert p.active_model().id == f"round1-job{job}"


def test_job_errors_are_recorded(project: Path) -> None:
    with Project.open(project) as p:
        job = start_job(p, "propose", {"preset": "tiny"})
    with pytest.raises(JobFailed, match="no model yet"):
        execute_job(project, job)
    with Project.open(project) as p:
        assert p.job(job).state == "failed"
        assert "no model" in (p.job(job).error or "")
        assert p.events(job)[-1].data["kind"] == "error"
    with Project.open(project) as p, pytest.raises(ConfigError):
        start_job(p, "dance", {})


def test_cli_job_commands(capsys, project: Path) -> None:
    assert main(["pretrain", str(project), "--preset", "tiny", "-q"]) == 0
    assert (
        main(["propose", str(project), "--preset", "tiny", "--ids", "train_002", "--steps", "2", "-q"]) == 0
    )
    capsys.readouterr()
    assert main(["cotrain", str(project), "--preset", "tiny", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["state"] == "done" and out["active_model"].startswith("round1")
    with Project.open(project) as p:
        rec, probs, unc = p.proposal("train_002")
        assert rec.model_id.startswith("pretrained")
        assert probs.shape[0] == 2 and np.isfinite(unc).all()


def test_cli_cotrain_without_labels_fails_cleanly(capsys, tmp_path: Path, synth_dataset: Path) -> None:
    root = tmp_path / "p"
    with Project.create(root) as p:
        p.import_files(sorted((synth_dataset / "images").glob("train_*.png"))[:2])
    rc = main(["cotrain", str(root), "--preset", "tiny", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "annotated image" in err and "Traceback" not in err


def test_cotrain_job_on_two_processes_under_torchrun(capsys, project: Path) -> None:
    """`--nproc 2`: the same worker the backend launches, two gloo ranks, DDP co-training."""
    rc = main(["cotrain", str(project), "--preset", "tiny", "--nproc", "2", "--device", "cpu", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["state"] == "done", out
    with Project.open(project) as p:
        job = p.job(out["job"])
        assert job.params["nproc"] == 2
        active = p.active_model()
        assert active.id == f"round1-job{job.id}" and active.round == 1
        steps = [
            e.data["step"]
            for e in p.events(job.id)
            if e.data["kind"] == "progress" and e.data["phase"] == "cotrain"
        ]
        # rank 0 alone records events (a second rank writing would repeat every step)
        assert steps and steps == sorted(set(steps))
        assert p.events(job.id)[-1].data["kind"] == "done"
        assert p.check()["ok"]
    log = (project / "jobs" / str(out["job"]) / "data.json").read_text()
    assert "images" in log


def _untrained_model(root: Path, mid: str = "untrained") -> str:
    """Register an untrained tiny diffseg model and make it active (no training: fast)."""
    from napari_diffseg.backend import jobs as jobs_mod
    from napari_diffseg.base.presets import get_preset

    preset = get_preset("tiny")
    with Project.open(root) as p:
        bundle = jobs_mod._new_bundle(p, 1, preset, 0, torch.device("cpu"))
        return jobs_mod._save_model(p, bundle, mid, round=0, preset=preset, metrics={})


def test_resumed_propose_computes_only_the_remaining_images(monkeypatch, project: Path) -> None:
    from napari_diffseg.backend import jobs as jobs_mod

    mid = _untrained_model(project)
    calls: list[int] = []
    real = jobs_mod.propose

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs_mod, "propose", counting)
    with Project.open(project) as p:
        job = start_job(p, "propose", {"preset": "tiny", "steps": 1, "samples": 1, "rounds": 1})
    token = CancelToken(Path(project) / "jobs" / str(job) / "cancel")
    done: list[str] = []

    def report(ev) -> None:
        if ev.kind == "progress":
            done.append(ev.message)
            if len(done) == 2:
                token.cancel()  # stops before the third image

    assert execute_job(project, job, report=report, cancel=token) == "cancelled"
    assert len(calls) == 2
    # another model made active in between: the resumed job keeps proposing with its own model
    _untrained_model(project, "other")
    resumed: list[str] = []
    assert execute_job(project, job, report=lambda ev: resumed.append(ev.message or "")) == "done"
    assert len(calls) == 4  # the two images left, not all four again
    with Project.open(project) as p:
        todo = [r.id for r in p.images() if r.split == "train" and p.annotation(r.id) is None]
        assert len(todo) == 4 and set(done) | set(resumed) >= set(todo)
        assert not set(done) & set(resumed)
        assert {q.image_id for q in p.proposals(model_id=mid)} == set(todo)
        assert p.proposals(model_id="other") == []
        assert any("2 of 4 images already proposed" in e.data.get("message", "") for e in p.events(job))


@pytest.mark.parametrize("kind", ["pretrain", "propose"])
@pytest.mark.parametrize("problem", ["nan", "beyond-float32"])
def test_a_bad_image_fails_the_job_with_its_name_and_the_fix(tmp_path: Path, kind: str, problem: str) -> None:
    root = tmp_path / "proj"
    rng = np.random.default_rng(0)
    with Project.create(root) as p:
        p.import_array(rng.integers(0, 255, (64, 64), dtype=np.uint8), "good")
        pixels = rng.random((1, 64, 64))  # float64, as such an image is stored
        bad_id = p.import_array(pixels, "overflowing")
    # the file changed behind the store's back (or was imported before imports checked): a NaN pixel, or
    # issue 16's float64 image whose values are finite but beyond float32 (infinite once converted)
    pixels[0, 3, 4] = np.nan if problem == "nan" else 1e300
    (root / "images" / f"{bad_id}.tif").write_bytes(tiff_bytes(pixels))
    params: dict[str, object] = {"preset": "tiny"}
    if kind == "propose":
        _untrained_model(root)
        params.update(steps=1, samples=1, rounds=1)
    with Project.open(root) as p:
        job = start_job(p, kind, params)
    with pytest.raises(JobFailed) as info:
        execute_job(root, job)
    msg = str(info.value)
    for text in (bad_id, "'overflowing'", "infinite", "Exclude it", "re-import"):
        assert text in msg, msg
    with Project.open(root) as p:
        assert p.job(job).state == "failed"
        assert bad_id in (p.job(job).error or "") and "overflowing" in (p.job(job).error or "")


def test_cotrain_validates_on_annotated_val_images(project: Path, synth_dataset: Path) -> None:
    """An annotated image marked `val` is the round's validation set: checkpoint choice and the gate."""
    with Project.open(project) as p:
        img = sorted((synth_dataset / "images").glob("train_*.png"))[10]
        p.import_files([img], split="val")
        p.save_annotation(
            img.stem, read_mask(synth_dataset / "masks" / img.name), kind="correction", replaces=None
        )
    job, state = _run(project, "cotrain")
    assert state == "done"
    with Project.open(project) as p:
        events = [e.data for e in p.events(job)]
        val_id = p.images(split="val")[0].id
    manifest = json.loads((Path(project) / "jobs" / str(job) / "data.json").read_text())
    assert [v[0] for v in manifest["val"]] == [val_id]
    assert val_id not in [i for i, _ in manifest["images"]]
    checks = [e["losses"] for e in events if e["kind"] == "progress" and "val_dice" in e.get("losses", {})]
    assert checks and all(0.0 <= c["val_dice"] <= 1.0 and 0.0 <= c["gate"] <= 1.0 for c in checks)
    assert any(e["kind"] == "log" and "kept the weights" in e.get("message", "") for e in events)


def test_the_pretrain_job_runs_the_presets_label_free_length(monkeypatch, project: Path) -> None:
    """With an image to anchor Stage A to (dark-field), the job trains `label_free_steps()` Stage A steps
    (`pretrain_job_steps` when set) and its model's config records them; without one, `pretrain_steps`
    (more steps bought nothing without an anchor), and its log says why."""
    from napari_diffseg.backend import jobs

    seen = []
    real = jobs.pretrain_teacher

    def spy(bundle, images, preset, **kw):
        seen.append(preset.pretrain_steps)
        return real(bundle, images, preset, **kw)

    monkeypatch.setattr(jobs, "pretrain_teacher", spy)
    for dark, steps in ((True, 5), (False, 3)):  # the tiny preset's pretrain_steps: 3
        monkeypatch.setattr(jobs, "is_dark_field", lambda x, dark=dark: dark)
        with Project.open(project) as p:
            job = start_job(p, "pretrain", {"preset": "tiny", "overrides": {"pretrain_job_steps": 5}})
        assert execute_job(project, job) == "done" and seen[-1] == steps
        with Project.open(project) as p:
            config = json.loads((project / "models" / p.active_model().id / "config.json").read_text())
            logs = [e.data.get("message", "") for e in p.events(job)]
        assert config["config"]["preset"]["pretrain_steps"] == steps
        assert any("no image to anchor Stage A to" in m for m in logs) == (not dark)
        assert any("annotate two or three images and co-train" in m for m in logs) == (not dark)
    # one length either way (the tiny preset's own): no word on steps, but the advice all the same
    monkeypatch.setattr(jobs, "is_dark_field", lambda x: False)
    with Project.open(project) as p:
        job = start_job(p, "pretrain", {"preset": "tiny"})
    assert execute_job(project, job) == "done" and seen[-1] == 3
    with Project.open(project) as p:
        said = [
            e.data.get("message", "")
            for e in p.events(job)
            if "no image to anchor" in e.data.get("message", "")
        ]
    assert len(said) == 1 and "steps, not" not in said[0] and "annotate two or three images" in said[0]
