"""A broken model never goes live: the non-finite guard in depth.

Bounded preset values at every entry (typed job parameters, the HTTP body), training that stops at the
first non-finite loss or gradient, a store that refuses to register or activate NaN weights, and a
``check`` that reports every registered model whose weights do not load or are not finite.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_diffseg.backend.jobs import (
    JobFailed,
    _channels,
    _new_bundle,
    _save_model,
    execute_job,
    start_job,
)
from napari_diffseg.base.contracts import JobCreate, parse_job_params
from napari_diffseg.base.errors import ConfigError, DataError, TrainingDiverged
from napari_diffseg.base.presets import PRESET_RANGES, PRESETS, Preset, get_preset
from napari_diffseg.core import training
from napari_diffseg.core.models import ModelBundle, ModelSpec, save_bundle
from napari_diffseg.core.training import TrainData, cotrain, pretrain_teacher, train_baseline, train_teacher
from napari_diffseg.data.io import read_mask
from napari_diffseg.project import Project, check_project

CPU = torch.device("cpu")


def _unchecked(preset: Preset, **values: object) -> Preset:
    """``preset`` with values its ranges refuse (as a caller could build one around the checks)."""
    for k, v in values.items():
        object.__setattr__(preset, k, v)
    return preset


def _data(n_lab: int = 2, n_unl: int = 2, size: int = 40) -> TrainData:
    g = torch.Generator().manual_seed(0)
    imgs, masks = [], []
    for _ in range(n_lab + n_unl):
        y = torch.zeros(size, size, dtype=torch.long)
        y[10:26, 12:28] = 1
        imgs.append(y.float()[None].repeat(3, 1, 1) * 2 - 1 + 0.3 * torch.randn((3, size, size), generator=g))
        masks.append(y)
    return TrainData(imgs[:n_lab], masks[:n_lab], unlabeled_images=imgs[n_lab:])


def _bundle(method: str = "diffseg") -> ModelBundle:
    pr = get_preset("tiny")
    return ModelBundle(ModelSpec(method, 3, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim), seed=0)


def _loop(stage: str, preset: Preset, data: TrainData | None = None):
    data = data or _data()
    g = torch.Generator().manual_seed(0)
    if stage == "pretrain":
        return pretrain_teacher(_bundle(), data.all_images, preset, generator=g, device=CPU)
    if stage == "teacher":
        return train_teacher(_bundle(), data, preset, generator=g, device=CPU)
    if stage == "cotrain":
        return cotrain(_bundle(), data, preset, generator=g, seed=0, device=CPU)
    return train_baseline(_bundle(stage), data, preset, generator=g, device=CPU)


# ------------------------------------------------------------------------------------------ (a) training
@pytest.mark.parametrize("stage", ["pretrain", "teacher", "cotrain", "supervised", "mean-teacher", "cps"])
def test_a_huge_learning_rate_stops_training_at_the_first_non_finite_loss(stage: str) -> None:
    pr = _unchecked(
        get_preset("tiny").with_overrides(pretrain_steps=50, teacher_steps=50, cotrain_steps=50), lr=1e30
    )
    events = []
    with pytest.raises(TrainingDiverged) as err:
        for ev in _loop(stage, pr):
            events.append(ev)
    msg = str(err.value)
    # step 1 is finite; its 1e30 update makes step 2's loss NaN: the loop stops there, not at step 50
    assert f"stage {stage!r} at step 2/50" in msg, msg
    assert "loss=nan" in msg and "lower the learning rate" in msg.lower() and "lr is 1e+30" in msg
    assert not any(e.kind == "done" for e in events)
    assert max(e.step for e in events if e.kind == "progress" and e.phase == stage) == 1


def test_a_nan_input_stops_training_at_step_one() -> None:
    data = _data()
    for x in data.labeled_images:
        x[0, :, :8] = float("nan")  # every 32x32 patch of a 40x40 image meets it
    pr = get_preset("tiny").with_overrides(teacher_steps=20)
    with pytest.raises(TrainingDiverged, match=r"stage 'teacher' at step 1/20: the loss is not finite"):
        list(_loop("teacher", pr, data))


@pytest.mark.parametrize("stage", ["teacher", "cotrain"])
def test_a_non_finite_gradient_with_a_finite_loss_stops_before_the_step(monkeypatch, stage: str) -> None:
    hooked: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def adam(params, preset):  # type: ignore[no-untyped-def]
        params = list(params)
        hooked.append((params[0], params[0].detach().clone()))
        params[0].register_hook(lambda grad: torch.full_like(grad, float("inf")))  # the loss stays finite
        return torch.optim.AdamW(params, lr=preset.lr)

    monkeypatch.setattr(training, "_adam", adam)
    pr = get_preset("tiny").with_overrides(teacher_steps=20, cotrain_steps=20)
    with pytest.raises(TrainingDiverged) as err:
        list(_loop(stage, pr))
    msg = str(err.value)
    assert f"stage {stage!r} at step 1/20: the gradient is not finite" in msg, msg
    assert "loss=nan" not in msg and "loss=inf" not in msg  # the loss itself was finite
    param, before = hooked[-1]
    assert torch.equal(param.detach(), before)  # the optimiser never stepped with the infinite gradient


def test_an_overflowing_last_update_is_caught_when_the_stage_ends(monkeypatch) -> None:
    class Overflowing(torch.optim.AdamW):
        """The one update (finite loss and gradient) leaves an infinite weight behind."""

        def step(self, closure=None):  # type: ignore[no-untyped-def]
            out = super().step(closure)
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
            return out

    monkeypatch.setattr(training, "_adam", lambda params, preset: Overflowing(params, lr=preset.lr))
    pr = get_preset("tiny").with_overrides(teacher_steps=1)
    with pytest.raises(
        TrainingDiverged, match=r"stage 'teacher' \(step 1/1\): 1 weight tensor\(s\) hold NaN"
    ):
        list(_loop("teacher", pr))


def test_a_healthy_run_is_unchanged_by_the_guard() -> None:
    pr = get_preset("tiny")
    events = list(_loop("cotrain", pr))
    assert events[-1].kind == "done"


# ------------------------------------------------------------------------------------------ (b) registry
def _model_folder(folder: Path, *, nan: bool = False) -> Path:
    bundle = _bundle()
    if nan:
        with torch.no_grad():
            next(bundle.nets["student_a"].parameters()).view(-1)[0] = float("nan")
    save_bundle(bundle, folder, extra={"preset": get_preset("tiny").to_dict()})
    return folder


def _nan_weights(folder: Path) -> None:
    """Overwrite every floating tensor of ``folder``'s weights with NaN (same keys, shapes and size)."""
    path = folder / "weights.safetensors"
    tensors = load_file(str(path))
    save_file(
        {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors.items()},
        str(path),
        metadata={"format_version": "1"},
    )


@pytest.fixture
def proj(tmp_path: Path):
    with Project.create(tmp_path / "proj") as p:
        p.register_model(_model_folder(tmp_path / "good"), round=0, method="diffseg")
        p.set_active_model("good")
        yield p


def test_a_model_with_a_nan_weight_is_not_registered(proj: Project, tmp_path: Path) -> None:
    bad = _model_folder(tmp_path / "bad", nan=True)
    with pytest.raises(DataError, match=r"cannot register model 'bad': 1 weight tensor\(s\).*NaN"):
        proj.register_model(bad, round=1, method="diffseg")
    # in place (a folder already in models/): refused too
    _model_folder(proj.root / "models" / "inplace", nan=True)
    with pytest.raises(DataError, match="cannot register model 'inplace'"):
        proj.register_model("inplace", round=1, method="diffseg")
    assert [m.id for m in proj.models()] == ["good"]
    assert proj.active_model().id == "good"
    assert sorted(p.name for p in (proj.root / "models").iterdir()) == ["good", "inplace"]  # nothing copied


def test_a_model_whose_weights_turned_nan_is_not_activated(proj: Project, tmp_path: Path) -> None:
    proj.register_model(_model_folder(tmp_path / "later"), round=1, method="diffseg")
    _nan_weights(proj.model_dir("later"))
    with pytest.raises(DataError, match="cannot activate model 'later'"):
        proj.set_active_model("later")
    assert proj.active_model().id == "good"


def test_a_job_never_saves_a_non_finite_bundle(proj: Project) -> None:
    bundle = _bundle()
    with torch.no_grad():
        next(bundle.nets["teacher_mask"].parameters()).view(-1)[0] = float("inf")
    with pytest.raises(TrainingDiverged, match=r"model 'round1-job9' was not saved: 1 weight tensor"):
        _save_model(proj, bundle, "round1-job9", round=1, preset=get_preset("tiny"), metrics={})
    assert not proj.model_dir("round1-job9").exists()
    assert [m.id for m in proj.models()] == ["good"] and proj.active_model().id == "good"


# ------------------------------------------------------------------------------------------ (c) check
def test_check_reports_each_model_whose_weights_are_nan_or_do_not_load(proj: Project, tmp_path: Path) -> None:
    from napari_diffseg.cli import main

    assert proj.check()["ok"], proj.check()["problems"]
    proj.register_model(_model_folder(tmp_path / "torn"), round=1, method="diffseg")
    _nan_weights(proj.model_dir("good"))
    weights = proj.model_dir("torn") / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    report = check_project(proj.root)
    assert not report["ok"] and len(report["problems"]) == 2, report
    nan, torn = report["problems"]
    assert nan.startswith("model 'good': ") and "NaN or infinite" in nan and "active model" in nan
    assert torn.startswith("model 'torn': ") and "does not load" in torn
    assert main(["check", str(proj.root), "--json"]) == 1  # `diffseg check` exits 1


# ------------------------------------------------------------------------------------------ (d) bounds
@pytest.mark.parametrize(
    ("field", "value", "bound"),
    [
        ("lr", 1e30, "(0, 1]"),
        ("lr", float("inf"), "(0, 1]"),
        ("lr", float("nan"), "(0, 1]"),
        ("lr", 0.0, "(0, 1]"),
        ("lr", -1e-3, "(0, 1]"),
        ("batch_size", 10**9, "[1, 1024]"),
        ("patch_size", 10**9, "[1, 4096]"),
        ("weight_decay", float("-inf"), "[0, 1]"),
        ("unsup_weight", -1.0, "[0, 1000]"),
        ("cotrain_steps", 10**12, "[0, 10000000]"),
        ("roi_size", 10**6, "[1, 4096]"),
        ("samples", 10**6, "[1, 256]"),
    ],
)
def test_typed_parameters_refuse_out_of_range_overrides(field: str, value: object, bound: str) -> None:
    for kind in ("pretrain", "propose", "cotrain"):
        with pytest.raises(ConfigError) as err:
            parse_job_params(kind, {"preset": "tiny", "overrides": {field: value}})
        msg = str(err.value)
        assert f"'{field}'" in msg and bound in msg and repr(value) in msg, msg
    with pytest.raises(ConfigError, match=field):  # the HTTP body (POST /jobs)
        JobCreate(kind="cotrain", params={"overrides": {field: value}}).typed()
    with pytest.raises(ConfigError, match=field):  # the Python API
        get_preset("tiny").with_overrides(**{field: value})


def test_every_numeric_preset_field_has_a_documented_range() -> None:
    numeric = [f.name for f in dataclasses.fields(Preset) if f.type in ("int", "float")]
    assert numeric and not [n for n in numeric if n not in PRESET_RANGES]
    for preset in PRESETS.values():  # the named presets lie inside them
        assert Preset(**{f.name: getattr(preset, f.name) for f in dataclasses.fields(Preset)}) == preset
    assert (
        parse_job_params("cotrain", {"overrides": {"lr": 1, "batch_size": 1024}}).resolve_preset().lr == 1.0
    )


def test_post_jobs_refuses_an_out_of_range_lr(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from napari_diffseg.backend.app import create_app

    with Project.create(tmp_path / "proj"):
        pass
    app = create_app(tmp_path / "proj", run_jobs=False, allowed_hosts=None)
    with TestClient(app) as client:
        resp = client.post("/api/v1/jobs", json={"kind": "cotrain", "params": {"overrides": {"lr": 1e30}}})
        assert resp.status_code == 400 and resp.json()["code"] == "invalid", resp.text
        assert "'lr' must lie in (0, 1]" in resp.json()["detail"] and "1e+30" in resp.json()["detail"]
        assert client.get("/api/v1/jobs").json() == []


# ------------------------------------------------------------------------------------------ (e) a job
@pytest.fixture
def project(tmp_path: Path, synth_dataset: Path) -> Path:
    root = tmp_path / "proj"
    with Project.create(root) as p:
        for img in sorted((synth_dataset / "images").glob("train_*.png"))[:4]:
            p.import_files([img])
        mask = read_mask(synth_dataset / "masks" / "train_000.png")
        p.save_annotation("train_000", mask, kind="correction", replaces=None)
        bundle = _new_bundle(p, _channels(p), get_preset("tiny"), 0, CPU)
        _save_model(p, bundle, "start", round=0, preset=get_preset("tiny"), metrics={})
    return root


def test_a_diverging_job_fails_with_the_reason_and_activates_nothing(monkeypatch, project: Path) -> None:
    # valid parameters; the optimiser alone runs away (what the lr bounds cannot foresee)
    monkeypatch.setattr(
        training, "_adam", lambda params, preset: torch.optim.AdamW(params, lr=1e30, weight_decay=0.0)
    )
    with Project.open(project) as p:
        job = start_job(p, "cotrain", {"preset": "tiny"})
    with pytest.raises(JobFailed, match="training diverged"):
        execute_job(project, job)
    with Project.open(project) as p:
        rec = p.job(job)
        assert rec.state == "failed"
        assert "training diverged in stage 'teacher' at step 2/3" in (rec.error or ""), rec.error
        last = p.events(job)[-1].data
        assert last["kind"] == "error" and "training diverged" in last["message"]
        assert [m.id for m in p.models()] == ["start"] and p.active_model().id == "start"
        assert sorted(d.name for d in (project / "models").iterdir()) == ["start"]
        assert p.check()["ok"]


def test_a_stored_job_with_an_out_of_range_lr_fails_before_training(project: Path) -> None:
    with Project.open(project) as p:  # e.g. queued by an older version that did not bound lr
        job = p.create_job("pretrain", {"preset": "tiny", "overrides": {"lr": 1e30}})
    with pytest.raises(JobFailed, match=r"'lr' must lie in \(0, 1\]"):
        execute_job(project, job)
    with Project.open(project) as p:
        assert p.job(job).state == "failed" and "lr" in (p.job(job).error or "")
        assert [m.id for m in p.models()] == ["start"] and p.active_model().id == "start"


def test_the_check_leaves_the_gradients_alone() -> None:
    # the gradient norm reads the gradients in place: the check changes no gradient
    net = torch.nn.Linear(4, 3)
    net(torch.ones(2, 4)).sum().backward()
    before = [p.grad.clone() for p in net.parameters()]
    training._check_step("x", 1, 1, get_preset("tiny"), {"loss": torch.tensor(1.0)}, net.parameters())
    assert all(torch.equal(a, p.grad) for a, p in zip(before, net.parameters(), strict=True))
