"""`deploy_best` (issue 14, arm `diffseg-Tbest`): when co-training ends, the teacher is what the model predicts
with where its best-validated weights scored the validation images above the students; a model folder keeps
that choice, `diffseg predict` and `diffseg experiment` use it, and the bioimage.io package says it holds the
students."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_diffseg.base.errors import CheckpointError, ConfigError
from napari_diffseg.base.presets import get_preset
from napari_diffseg.core.models import (
    ModelBundle,
    ModelSpec,
    deployed_probs,
    load_bundle,
    save_bundle,
)
from napari_diffseg.core.training import TrainData, cotrain, teacher_check_config, teacher_labels
from napari_diffseg.core.validation import ValSet

CPU = torch.device("cpu")


def _bundle(seed: int = 0) -> ModelBundle:
    pr = get_preset("tiny")
    spec = ModelSpec("diffseg", 1, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim)
    return ModelBundle(spec, seed=seed)


def _blobs(n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Bright squares on noise (1, 32, 32) and their masks."""
    g = torch.Generator().manual_seed(1)
    imgs, masks = [], []
    for i in range(n):
        m = torch.zeros(32, 32, dtype=torch.long)
        r, c = 4 + (3 * i) % 12, 6 + (5 * i) % 10
        m[r : r + 12, c : c + 12] = 1
        imgs.append((m.float() + 0.3 * torch.randn(32, 32, generator=g))[None])
        masks.append(m)
    return imgs, masks


def _run(
    monkeypatch, bundle: ModelBundle, teacher_score: float, mean_score: float | None = None, **overrides
):
    """One co-training round with ``deploy_best`` and a teacher whose every check scores ``teacher_score``
    (and, given ``mean_score``, ``deploy_mean`` with a teacher-student mean that scores it)."""
    monkeypatch.setattr("napari_diffseg.core.training.teacher_val_dice", lambda *a: teacher_score)
    if mean_score is not None:
        monkeypatch.setattr("napari_diffseg.core.training.teacher_mean_val_dice", lambda *a: mean_score)
        overrides = {"deploy_mean": True, **overrides}
    settings = {"teacher_keep_best": True, "deploy_best": True, **overrides}
    pr = get_preset("tiny").with_overrides(cotrain_steps=8, refresh_every=4, val_every=4, lr=3e-3, **settings)
    imgs, masks = _blobs(7)
    data = TrainData(imgs[:2], masks[:2], unlabeled_images=imgs[2:5], val=ValSet(imgs[5:], masks[5:]))
    events = list(cotrain(bundle, data, pr, generator=torch.Generator().manual_seed(0), seed=0, device=CPU))
    return pr, events, imgs


def _deploy_logs(events) -> list[str]:
    return [e.message for e in events if e.kind == "log" and e.message.startswith("deploys the")]


def test_a_teacher_that_validates_above_the_students_is_what_the_model_predicts_with(monkeypatch) -> None:
    b = _bundle()
    pr, events, imgs = _run(monkeypatch, b, 1.0)  # no student scores 1.0 on noisy squares after 8 steps
    assert b.teacher_sampler == teacher_check_config(pr)
    (msg,) = _deploy_logs(events)
    assert msg.startswith("deploys the teacher: validation Dice 1.000 against the students' 0.")
    done = [e for e in events if e.kind == "log" and "deploy_teacher" in e.losses]
    assert done[-1].losses["deploy_teacher"] == 1.0
    # the deployed prediction is the teacher's, sampled as its checks (and teacher_on_test) sample it
    own = teacher_labels(b, imgs, pr)
    for j, x in enumerate(imgs):
        probs = deployed_probs(b, x[None], roi=pr.roi_size, sw_batch=pr.sw_batch_size, index=j)
        assert probs.shape == (1, 2, 32, 32)
        assert torch.allclose(probs.sum(1), torch.ones(1, 32, 32), atol=1e-4)
        assert torch.equal(probs[0].argmax(0), own[j])
    # a batch is seeded image by image as a list is
    both = deployed_probs(b, torch.stack(imgs[:2]), roi=pr.roi_size, sw_batch=pr.sw_batch_size)
    assert torch.equal(both.argmax(1), torch.stack(own[:2]))


def test_a_teacher_below_the_students_leaves_them_deployed_and_each_round_chooses_again(monkeypatch) -> None:
    b = _bundle()
    _run(monkeypatch, b, 1.0)
    assert b.deploys_teacher
    pr, events, imgs = _run(monkeypatch, b, 0.0)  # the next round: a teacher below its students
    assert b.teacher_sampler is None
    (msg,) = _deploy_logs(events)
    assert msg.startswith("deploys the students: validation Dice ") and msg.endswith("the teacher's 0.000")
    students = deployed_probs(b, imgs[0][None], roi=pr.roi_size)
    from napari_diffseg.core.inference import predict_probs

    ref = predict_probs(b.deployed(), imgs[0][None], multiple=b.spec.multiple, roi=pr.roi_size)
    assert torch.equal(students, ref)


def test_without_deploy_best_the_students_stay_whatever_the_teacher_scores(monkeypatch) -> None:
    b = _bundle()
    _, events, _ = _run(monkeypatch, b, 1.0, deploy_best=False)
    assert b.teacher_sampler is None and not _deploy_logs(events)


def test_without_validation_images_the_students_deploy_and_the_log_says_why(monkeypatch) -> None:
    monkeypatch.setattr("napari_diffseg.core.training.teacher_val_dice", lambda *a: pytest.fail("scored"))
    pr = get_preset("tiny").with_overrides(
        cotrain_steps=4, refresh_every=2, teacher_keep_best=True, deploy_best=True
    )
    imgs, masks = _blobs(5)
    b = _bundle()
    data = TrainData(imgs[:2], masks[:2], unlabeled_images=imgs[2:5])
    events = list(cotrain(b, data, pr, generator=torch.Generator().manual_seed(0), seed=0, device=CPU))
    assert b.teacher_sampler is None
    (msg,) = _deploy_logs(events)
    assert "this round has none" in msg


def test_deploy_best_needs_teacher_keep_best() -> None:
    with pytest.raises(ConfigError, match="set teacher_keep_best=true too"):
        get_preset("tiny").with_overrides(deploy_best=True)


def test_a_model_folder_keeps_the_choice_and_predict_uses_it(tmp_path: Path) -> None:
    from napari_diffseg.predict import load_model, predict_image

    pr = get_preset("tiny")
    b = _bundle(seed=2)
    b.teacher_sampler = teacher_check_config(pr)
    folder = save_bundle(b, tmp_path / "m", extra={"preset": pr.to_dict()})
    config = json.loads((folder / "config.json").read_text())["config"]
    assert config["deploy_teacher"] == {
        "ddim_steps": pr.refresh_ddim_steps,
        "samples": pr.refresh_samples,
        "rounds": 1,
        "weight": 1.0,
    }
    loaded, cfg = load_model(folder, "cpu")
    assert loaded.teacher_sampler == b.teacher_sampler
    image = (np.random.default_rng(0).random((1, 40, 56)) * 255).astype(np.uint8)
    got = predict_image(loaded, cfg, image)
    x = loaded.preprocess(image)
    want = teacher_labels(loaded, [x], pr)[0].numpy()
    np.testing.assert_array_equal(got.argmax(0), want)
    loaded.teacher_sampler = None  # the students predict something else from the same image
    assert not np.allclose(predict_image(loaded, cfg, image), got)


@pytest.mark.parametrize(
    ("entry", "method", "message"),
    [
        ({"ddim_steps": 0, "samples": 2, "rounds": 1}, "diffseg", "deploy_teacher must hold"),
        ({"samples": 2}, "diffseg", "deploy_teacher must hold"),
        ("teacher", "diffseg", "deploy_teacher must hold"),
        ({"ddim_steps": 2, "samples": 2, "rounds": 1}, "supervised", "has no teacher"),
        ({"ddim_steps": 2, "samples": 2, "rounds": 1, "weight": 0}, "diffseg", "optionally weight"),
        ({"ddim_steps": 2, "samples": 2, "rounds": 1, "weight": "half"}, "diffseg", "optionally weight"),
    ],
)
def test_a_bad_deploy_teacher_entry_is_a_clear_error(
    tmp_path: Path, entry, method: str, message: str
) -> None:
    pr = get_preset("tiny")
    spec = ModelSpec(method, 1, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim)
    folder = save_bundle(ModelBundle(spec), tmp_path / "m")
    path = folder / "config.json"
    saved = json.loads(path.read_text())
    saved["config"]["deploy_teacher"] = entry
    path.write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match=message):
        load_bundle(folder)


def test_the_experiment_scores_the_deployed_teacher_as_teacher_on_test_does(
    monkeypatch, synth_dataset
) -> None:
    """With deploy_best choosing the teacher, the run's test Dice is the teacher's, image by image: the
    figure `--teacher-test` reports for a run that keeps its students (so a diffseg-Tkeep run's teacher
    score is what the same run with deploy_best would have deployed)."""
    from napari_diffseg.experiment import run_experiment

    monkeypatch.setattr("napari_diffseg.core.training.teacher_val_dice", lambda *a: 1.0)
    overrides = {
        "cotrain_steps": 8,
        "refresh_every": 4,
        "val_every": 4,
        "teacher_keep_best": True,
        "deploy_best": True,
    }
    r = run_experiment(
        synth_dataset,
        labeled_fraction=0.5,
        method="diffseg",
        preset="tiny",
        overrides=overrides,
        teacher_test=True,
    )
    assert r["deployed"] == "teacher"
    assert [p["dice"] for p in r["test"]["per_image"]] == [p["dice"] for p in r["test_teacher"]["per_image"]]
    assert any(v.get("message", "").startswith("deploys the teacher") for v in r["validation"])
    monkeypatch.setattr("napari_diffseg.core.training.teacher_val_dice", lambda *a: 0.0)
    r0 = run_experiment(
        synth_dataset, labeled_fraction=0.5, method="diffseg", preset="tiny", overrides=overrides
    )
    assert r0["deployed"] == "students"
    # deploy_mean choosing the mean: the run's test Dice is --teacher-test's ensemble, image by image (the
    # figure diffseg-Tmean's derivation takes)
    monkeypatch.setattr("napari_diffseg.core.training.teacher_mean_val_dice", lambda *a: 1.0)
    rm = run_experiment(
        synth_dataset,
        labeled_fraction=0.5,
        method="diffseg",
        preset="tiny",
        overrides={**overrides, "deploy_mean": True},
        teacher_test=True,
    )
    assert rm["deployed"] == "teacher+students"
    ens = rm["test_teacher"]["ensemble"]["per_image"]
    assert [p["dice"] for p in rm["test"]["per_image"]] == [p["dice"] for p in ens]


def test_deploy_mean_deploys_the_teacher_student_mean_only_above_both(monkeypatch, tmp_path: Path) -> None:
    """``deploy_mean``: the mean of the teacher's probabilities and the students' is deployed where it
    validates above both; predictions are that mean, a model folder keeps it, and a mean that ties the
    teacher leaves the (cheaper) teacher deployed."""
    from napari_diffseg.core.inference import predict_probs
    from napari_diffseg.core.models import teacher_probs

    b = _bundle()
    pr, events, imgs = _run(monkeypatch, b, 0.9, mean_score=0.95)
    assert b.teacher_sampler == teacher_check_config(pr) and b.teacher_weight == 0.5
    assert b.deployed_name == "teacher+students"
    (msg,) = _deploy_logs(events)
    assert msg.startswith("deploys the mean of the teacher and the students: validation Dice 0.950 against ")
    done = [e for e in events if e.kind == "log" and "deploy_teacher" in e.losses]
    assert done[-1].losses["deploy_teacher"] == 0.5 and done[-1].losses["mean_val"] == 0.95
    for j, x in enumerate(imgs[:3]):
        got = deployed_probs(b, x[None], roi=pr.roi_size, sw_batch=pr.sw_batch_size, index=j)
        t = teacher_probs(b, x, b.teacher_sampler, roi=pr.roi_size, sw_batch=pr.sw_batch_size, index=j)
        s = predict_probs(b.deployed(), x[None], multiple=b.spec.multiple, roi=pr.roi_size)
        assert torch.allclose(got, 0.5 * t[None] + 0.5 * s, atol=1e-6)
    folder = save_bundle(b, tmp_path / "m")
    assert json.loads((folder / "config.json").read_text())["config"]["deploy_teacher"]["weight"] == 0.5
    loaded, _, _ = load_bundle(folder)
    assert loaded.teacher_weight == 0.5 and loaded.deployed_name == "teacher+students"
    again = deployed_probs(loaded, imgs[0][None], roi=pr.roi_size, sw_batch=pr.sw_batch_size)
    assert torch.allclose(again, deployed_probs(b, imgs[0][None], roi=pr.roi_size, sw_batch=pr.sw_batch_size))
    # the next round: a mean that only ties the teacher leaves the teacher alone deployed
    pr, events, _ = _run(monkeypatch, b, 0.9, mean_score=0.9)
    assert b.teacher_weight == 1.0 and b.deployed_name == "teacher"
    (msg,) = _deploy_logs(events)
    assert msg.startswith("deploys the teacher: validation Dice 0.900 against the students' ")
    assert "the mean of both 0.900" in msg
    # and one below the students leaves the students
    _run(monkeypatch, b, 0.0, mean_score=0.0)
    assert b.deployed_name == "students"


def test_deploy_mean_needs_deploy_best() -> None:
    with pytest.raises(ConfigError, match="set deploy_best=true and teacher_keep_best=true too"):
        get_preset("tiny").with_overrides(deploy_mean=True, teacher_keep_best=True)


def test_teacher_on_test_scores_the_teacher_and_its_mean_with_the_students() -> None:
    """`--teacher-test` scores two candidates a deploy rule could weigh against the students: the teacher
    (its labels exactly teacher_labels', so a deploying run's test Dice equals them) and the mean of its
    probabilities and the students', on the test images and on the validation images. A region restricts
    the scoring (DRIVE's field of view)."""
    from napari_diffseg.core.inference import predict_probs
    from napari_diffseg.core.metrics import segmentation_metrics
    from napari_diffseg.core.models import teacher_probs
    from napari_diffseg.core.validation import mean_dice
    from napari_diffseg.experiment import teacher_on_test

    b, pr = _bundle(3), get_preset("tiny")
    imgs, masks = _blobs(5)
    region = np.zeros((32, 32), dtype=bool)
    region[:, :20] = True
    test_x, test_y, regions = imgs[:3], [m.numpy() for m in masks[:3]], [None, region, None]
    val = ValSet(imgs[3:], masks[3:])
    r = teacher_on_test(b, val, test_x, test_y, ["a", "b", "c"], regions, pr)
    cfg = teacher_check_config(pr)

    def means(xs):
        out = []
        for i, x in enumerate(xs):
            t = teacher_probs(b, x, cfg, roi=pr.roi_size, sw_batch=pr.sw_batch_size, index=i)
            s = predict_probs(b.deployed(), x[None], multiple=b.spec.multiple, roi=pr.roi_size)[0]
            out.append(((t + s) / 2).argmax(0))
        return out

    own = teacher_labels(b, test_x, pr)
    for j, (label, y, reg) in enumerate(zip(own, test_y, regions, strict=True)):
        pred = label.numpy() if reg is None else label.numpy() * reg
        assert r["per_image"][j]["dice"] == segmentation_metrics(pred, y if reg is None else y * reg)["dice"]
    for j, (label, y, reg) in enumerate(zip(means(test_x), test_y, regions, strict=True)):
        pred = label.numpy() if reg is None else label.numpy() * reg
        expect = segmentation_metrics(pred, y if reg is None else y * reg)["dice"]
        assert r["ensemble"]["per_image"][j]["dice"] == pytest.approx(expect)
    assert r["val_dice"] == mean_dice(teacher_labels(b, val.images, pr), val, 2)
    assert r["ensemble"]["val_dice"] == pytest.approx(mean_dice(means(val.images), val, 2))
    # an untrained teacher and untrained students disagree: the mean is a candidate of its own
    assert [p["dice"] for p in r["ensemble"]["per_image"]] != [p["dice"] for p in r["per_image"]]
    assert (
        teacher_on_test(b, None, test_x, test_y, ["a", "b", "c"], regions, pr)["ensemble"]["val_dice"] is None
    )


def test_a_project_round_takes_the_keys_from_the_command_line(monkeypatch, tmp_path: Path, capsys) -> None:
    """`diffseg cotrain --set teacher_keep_best=true --set deploy_best=true`: the round's model deploys its
    teacher where it validates above the students (here: a teacher scored 1.0), `diffseg predict` runs it,
    and `--set deploy_best=true` alone is refused in one line before any job is recorded."""
    from napari_diffseg.cli import main
    from napari_diffseg.data.synthetic import make_sample_dataset
    from napari_diffseg.project import Project
    from sample_data import move_to_val

    ds = move_to_val(make_sample_dataset(tmp_path / "ds", n_train=5, n_test=1, size=(48, 48), seed=2))
    proj = tmp_path / "proj"
    assert main(["init", str(proj), "--images", str(ds), "--json"]) == 0
    capsys.readouterr()
    assert main(["cotrain", str(proj), "--preset", "tiny", "-q", "--set", "deploy_best=true"]) == 2
    err = capsys.readouterr().err
    assert "set teacher_keep_best=true too" in err and err.count("\n") == 1
    with Project.open(proj) as p:
        assert p.active_model() is None and not p.jobs()
    monkeypatch.setattr("napari_diffseg.core.training.teacher_val_dice", lambda *a: 1.0)
    argv = ["cotrain", str(proj), "--preset", "tiny", "-q", "--json", "--threads", "1"]
    assert main([*argv, "--set", "teacher_keep_best=true", "--set", "deploy_best=true"]) == 0
    with Project.open(proj) as p:
        model = p.model_dir(p.active_model().id)
    config = json.loads((model / "config.json").read_text())["config"]
    assert config["deploy_teacher"]["samples"] == get_preset("tiny").refresh_samples
    assert config["preset"]["deploy_best"] is True
    capsys.readouterr()
    assert main(["predict", str(proj), str(ds / "images"), "--out", str(tmp_path / "out"), "-q"]) == 0
    assert len(list((tmp_path / "out").glob("*.tif"))) == 6
