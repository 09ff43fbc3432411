"""The diffseg command: experiment / predict / evaluate, and clear one-line errors for bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_diffseg.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_dataset) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("exp")
    rc = main(
        [
            "experiment",
            str(synth_dataset),
            "--labeled-fraction",
            "0.2",
            "--method",
            "diffseg",
            "--preset",
            "tiny",
            "--seed",
            "1",
            "--json",
            str(tmp / "r.json"),
            "--model-out",
            str(tmp / "model"),
            "--teacher-test",
            "-q",
        ]
    )
    assert rc == 0
    return tmp, json.loads((tmp / "r.json").read_text())


def test_experiment_json_contract(trained, synth_dataset) -> None:
    _, r = trained
    assert (
        r["method"] == "diffseg" and r["labeled_fraction"] == 0.2 and r["seed"] == 1 and r["preset"] == "tiny"
    )
    # 12 train images: 3 carved into validation (ceil(0.2 × 12)), labeled ceil(0.2 × 9) of the other 9
    assert r["n_val"] == 3 and len(set(r["val_ids"]) & set(r["labeled_ids"])) == 0
    assert r["n_labeled"] == math.ceil(0.2 * 9) and r["n_unlabeled"] == 9 - r["n_labeled"]
    t = r["test"]
    for key in ("dice_mean", "dice_std", "iou_mean", "hd95_mean", "per_image"):
        assert key in t
    assert sorted(p["id"] for p in t["per_image"]) == [f"test_{i:03d}" for i in range(4)]
    assert all(0.0 <= p["dice"] <= 1.0 and 0.0 <= p["iou"] <= 1.0 for p in t["per_image"])
    assert abs(t["dice_mean"] - np.mean([p["dice"] for p in t["per_image"]])) < 1e-9
    assert isinstance(r["seconds"], float) and r["device"] == "cpu"
    assert len(r["teacher"]["dice_per_round"]) == 3
    assert 0.0 <= r["pretrain_best_perm_dice"] <= 1.0
    # Stage A against the trivial masks, on the train images every 4th of the 9 left after validation
    from napari_diffseg.data.dataset import DatasetFolder

    ds = DatasetFolder(synth_dataset)
    gt = [i for i in ds.train_ids if i not in r["val_ids"]][::4]
    lf = r["label_free"]
    assert lf["n_images"] == len(gt) == 3 and lf["teacher_dice"] == r["pretrain_best_perm_dice"]
    want = np.mean([2 * (y > 0).sum() / ((y > 0).sum() + y.size) for y in map(ds.load_mask, gt)])
    assert lf["all_foreground_dice"] == pytest.approx(want)
    assert 0.0 < lf["otsu_dice"] <= 1.0 and lf["otsu_dice"] != pytest.approx(want)
    assert lf["teacher_minus_best_trivial"] == pytest.approx(
        lf["teacher_dice"] - max(lf["otsu_dice"], lf["all_foreground_dice"])
    )
    prov = r["provenance"]
    from napari_diffseg.base.presets import get_preset

    assert prov["preset"] == get_preset("tiny").to_dict()  # the resolved preset, every field
    import torch

    assert prov["versions"]["torch"] == torch.__version__ and prov["device"] == "cpu" and prov["threads"] >= 1
    here = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).resolve().parent
    )
    if here.returncode == 0:  # a git checkout: the commit the code came from, and a dirty flag
        assert prov["commit"] == here.stdout.strip() and isinstance(prov["dirty"], bool)
    assert prov["wall_seconds"] == r["seconds"] and 0 < prov["train_seconds"] <= prov["wall_seconds"]
    checks = [v for v in r["validation"] if "val_dice" in v]
    assert checks and all(0.0 <= v["val_dice"] <= 1.0 and 0.0 <= v["gate"] <= 1.0 for v in checks)
    kept = r["validation"][-1]["message"]
    assert kept.startswith("kept the weights of step")
    # the first best validation check of co-training is the one kept
    best = max((v for v in checks if v["phase"] == "cotrain"), key=lambda v: v["val_dice"])
    assert f"step {best['step']} " in kept and f"{best['val_dice']:.3f}" in kept
    assert r["test_one_student"]["network"] == "student_a" and 0 <= r["test_one_student"]["dice_mean"] <= 1
    assert r["teacher"]["note"] == "the 3 validation images"  # the teacher is judged off the test split
    assert r["teacher"]["n_images"] == 3 and r["teacher"]["rounds"] == 1
    assert set(r["teacher"]["uncertainty_vs_error_spearman"]) == {"E=2", "E=1"}
    # --teacher-test: the teacher's own masks on the same test images, beside (not instead of) the deployed
    tt = r["test_teacher"]
    assert [p["id"] for p in tt["per_image"]] == [p["id"] for p in t["per_image"]]
    assert tt["dice_mean"] == pytest.approx(np.mean([p["dice"] for p in tt["per_image"]]))
    assert 0.0 <= tt["val_dice"] <= 1.0 and tt["sampler"]["rounds"] == 1
    assert [p["dice"] for p in tt["per_image"]] != [p["dice"] for p in t["per_image"]]
    ens = tt["ensemble"]  # the teacher-student mean, a third candidate, scored on the same images
    assert [p["id"] for p in ens["per_image"]] == [p["id"] for p in t["per_image"]]
    assert 0.0 <= ens["val_dice"] <= 1.0 and ens["dice_mean"] == pytest.approx(
        np.mean([p["dice"] for p in ens["per_image"]])
    )


def test_labeled_subset_is_seeded_and_saved(trained) -> None:
    from napari_diffseg.experiment import choose_labeled, choose_val

    _, r = trained
    ids = [f"train_{i:03d}" for i in range(12)]
    val = choose_val(ids, 0.2, 1)
    assert r["val_ids"] == val and choose_val(ids, 0.2, 1) == val and choose_val(ids, 0.2, 2) != val
    assert choose_val(ids, 0.0, 1) == [] and len(choose_val(ids, 0.9, 1)) == 6  # never more than half
    rest = [i for i in ids if i not in val]
    assert r["labeled_ids"] == choose_labeled(rest, 0.2, 1)
    assert choose_labeled(ids, 0.2, 1) == choose_labeled(list(reversed(ids)), 0.2, 1)
    assert choose_labeled(ids, 0.2, 1) != choose_labeled(ids, 0.2, 2)
    assert len(choose_labeled(ids, 0.05, 0)) == 1


@pytest.mark.parametrize("method", ["supervised", "mean-teacher", "cps"])
def test_baselines_run(capsys, synth_dataset, tmp_path, method) -> None:
    rc, out, _ = _run(
        capsys,
        "experiment",
        str(synth_dataset),
        "-f",
        "0.3",
        "--method",
        method,
        "--preset",
        "tiny",
        "--json",
        str(tmp_path / "r.json"),
        "-q",
    )
    assert rc == 0, out
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["method"] == method and len(r["test"]["per_image"]) == 4


def test_test_images_are_read_only_after_training(monkeypatch, synth_dataset) -> None:
    from napari_diffseg.data import dataset as ds_mod
    from napari_diffseg.experiment import run_experiment

    log: list[tuple[str, str]] = []
    orig = ds_mod.DatasetFolder.load_image

    def spy(self, image_id):
        log.append(("load", image_id))
        return orig(self, image_id)

    monkeypatch.setattr(ds_mod.DatasetFolder, "load_image", spy)
    run_experiment(
        synth_dataset,
        labeled_fraction=0.2,
        method="diffseg",
        preset="tiny",
        seed=0,
        report=lambda ev: log.append(("event", ev.phase)),
    )
    last_train_event = max(i for i, (k, _) in enumerate(log) if k == "event")
    first_test_load = min(i for i, (k, v) in enumerate(log) if k == "load" and v.startswith("test"))
    assert first_test_load > last_train_event


def test_predict_and_evaluate(capsys, trained, synth_dataset, tmp_path) -> None:
    tmp, r = trained
    imgs = sorted((synth_dataset / "images").glob("test_*.png"))[:2]
    rc, out, err = _run(
        capsys,
        "predict",
        str(tmp / "model"),
        *map(str, imgs),
        "--out",
        str(tmp_path / "pred"),
        "--probabilities",
    )
    assert rc == 0, err
    from napari_diffseg.data.io import read_mask

    m = read_mask(tmp_path / "pred" / f"{imgs[0].name}.tif", binary=False)
    assert m.shape == (64, 64) and set(np.unique(m)) <= {0, 1}
    assert (tmp_path / "pred" / f"{imgs[0].name}.prob.tif").exists()
    rc, out, err = _run(capsys, "evaluate", str(tmp / "model"), str(synth_dataset), "--json", "-")
    assert rc == 0, err
    ev = json.loads(out)
    assert ev["n"] == 4
    # evaluate reproduces the experiment's own test numbers
    assert ev["dice_mean"] == pytest.approx(r["test"]["dice_mean"], abs=1e-6)


def test_predict_large_image_is_tiled(trained, tmp_path) -> None:
    from napari_diffseg.data.io import read_mask
    from napari_diffseg.predict import predict_files

    tmp, _ = trained
    rng = np.random.default_rng(0)
    img = (rng.random((300, 333, 3)) * 255).astype(np.uint8)
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "big.png", img)
    out = predict_files(tmp / "model", [tmp_path / "big.png"], tmp_path / "o", device="cpu")
    assert out.written == [tmp_path / "o" / "big.png.tif"] and read_mask(out.written[0]).shape == (300, 333)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["experiment", "/nonexistent/ds", "-f", "0.1", "--preset", "tiny"], "does not exist"),
        (["experiment", "{ds}", "-f", "0.1", "--method", "magic", "--preset", "tiny"], "unknown method"),
        (["experiment", "{ds}", "-f", "1.5", "--preset", "tiny"], "labeled-fraction"),
        (["experiment", "{ds}", "-f", "0.1", "--preset", "huge"], "unknown preset"),
        (["predict", "/nonexistent/model", "{img}", "--out", "{tmp}/o"], "does not exist"),
        (["predict", "{model}", "{tmp}/corrupt.png", "--out", "{tmp}/o"], "corrupt.png"),
        (["predict", "{model}", "{tmp}/empty.tif", "--out", "{tmp}/o"], "empty.tif"),
        (["evaluate", "{model}", "{ds}", "--split", "val"], "no images with masks"),
        (["experiment", "{ds}", "-f", "0.1", "--device", "cuda", "--preset", "tiny"], "cuda"),
        (
            ["experiment", "{ds}", "-f", "0.1", "--method", "cps", "--preset", "tiny", "--teacher-test"],
            "diffseg",
        ),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, trained, synth_dataset, tmp_path, argv, needle) -> None:
    tmp, _ = trained
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (tmp_path / "empty.tif").write_bytes(b"")
    img = next((synth_dataset / "images").glob("*.png"))
    subs = {"ds": str(synth_dataset), "tmp": str(tmp_path), "model": str(tmp / "model"), "img": str(img)}
    if needle == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    rc, out, err = _run(capsys, *[a.format(**subs) for a in argv])
    assert rc == 2, (out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert needle in lines[0]
    assert "Traceback" not in err


def test_console_script_help() -> None:
    for args in ([], ["experiment"], ["predict"], ["evaluate"]):
        proc = subprocess.run(
            [sys.executable, "-m", "napari_diffseg.cli", *args, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert "Usage" in proc.stdout


def test_usage_error_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "napari_diffseg.cli", "experiment"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_evaluate_scores_inside_the_field_of_view(trained, synth_dataset, tmp_path) -> None:
    """With fov/<id>.png (DRIVE's layout) metrics ignore everything outside the field of view."""
    import shutil

    from napari_diffseg.data.io import write_mask
    from napari_diffseg.predict import evaluate_folder

    tmp, _ = trained
    ds = tmp_path / "ds"
    shutil.copytree(synth_dataset, ds)
    plain = evaluate_folder(tmp / "model", ds)
    (ds / "fov").mkdir()
    for p in (ds / "images").glob("test_*.png"):
        fov = np.zeros((64, 64), np.uint8)
        fov[:, :32] = 1  # the left half only
        write_mask(ds / "fov" / p.name, fov)
    half = evaluate_folder(tmp / "model", ds)
    assert half["scored_in_fov"] and not plain["scored_in_fov"]
    assert [p["dice"] for p in half["per_image"]] != [p["dice"] for p in plain["per_image"]]
    from napari_diffseg.data.dataset import DatasetFolder

    region = DatasetFolder(ds).load_region("test_000")
    assert region is not None and region.dtype == bool and region[:, :32].all() and not region[:, 32:].any()
    assert DatasetFolder(ds).load_region("train_000") is None


def test_experiment_scores_inside_the_field_of_view_and_a_trained_model_beats_trivial_masks(
    synth_dataset, tmp_path
) -> None:
    """`diffseg experiment` on a dataset with fov/ (DRIVE's layout): test Dice inside the field of view, the
    same figures `diffseg evaluate` gives; and a student trained for 150 steps is far above the
    all-foreground mask, which a broken pipeline (masks paired with the wrong images, inverted classes, the
    wrong weights restored) would not be."""
    import shutil

    from napari_diffseg.data.dataset import DatasetFolder
    from napari_diffseg.data.io import write_mask
    from napari_diffseg.predict import evaluate_folder

    ds = tmp_path / "ds"
    shutil.copytree(synth_dataset, ds)
    (ds / "fov").mkdir()
    for p in (ds / "images").glob("*.png"):
        fov = np.zeros((64, 64), np.uint8)
        fov[:, :40] = 1
        write_mask(ds / "fov" / p.name, fov)
    argv = ["experiment", str(ds), "-f", "0.2", "--method", "supervised", "--preset", "tiny", "--seed", "0"]
    for kv in ("cotrain_steps=150", "batch_size=4", "patch_size=48", "lr=0.003", "val_every=10"):
        argv += ["--set", kv]
    assert main([*argv, "--json", str(tmp_path / "r.json"), "--model-out", str(tmp_path / "m"), "-q"]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["scored_in_fov"] and r["overrides"]["cotrain_steps"] == 150
    assert r["provenance"]["preset"]["cotrain_steps"] == 150
    inside = evaluate_folder(tmp_path / "m", ds)
    whole = evaluate_folder(tmp_path / "m", synth_dataset)
    assert [p["dice"] for p in r["test"]["per_image"]] == pytest.approx(
        [p["dice"] for p in inside["per_image"]]
    )
    assert [p["dice"] for p in r["test"]["per_image"]] != pytest.approx(
        [p["dice"] for p in whole["per_image"]]
    )
    folder = DatasetFolder(ds)
    masks = [folder.load_mask(i)[:, :40] > 0 for i in folder.test_ids]
    all_foreground = np.mean([2 * m.sum() / (m.sum() + m.size) for m in masks])
    assert r["test"]["dice_mean"] > all_foreground + 0.2, (r["test"]["dice_mean"], all_foreground)
