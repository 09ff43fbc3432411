"""``diffseg experiment --task instances`` and the evaluation of an instance model, on a small synthetic
nuclei dataset with ``instances/`` (tiny preset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_diffseg.base.errors import ConfigError
from napari_diffseg.data.dataset import DatasetFolder
from napari_diffseg.data.synthetic import make_sample_dataset, make_sample_instances

KEYS = ("ap_50", "ap_75", "f1_50", "dice_mean", "iou_mean", "ap_mean")


@pytest.fixture(scope="module")
def nuclei_instances(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inst") / "ds"
    make_sample_dataset(root, n_train=6, n_test=2, size=(64, 64), kind="nuclei", seed=1, instances=True)
    return root


def test_sample_dataset_instances(nuclei_instances: Path) -> None:
    ds = DatasetFolder(nuclei_instances)
    ids = ds.load_instances("train_000")
    assert ids.dtype == np.int64 and ids.max() >= 2
    # the masks are exactly the objects' union; the stored file is uint16
    np.testing.assert_array_equal(ds.load_mask("train_000"), (ids > 0).astype(np.int64))
    assert tifffile.imread(nuclei_instances / "instances" / "train_000.tif").dtype == np.uint16
    _, glands = make_sample_instances(3, (96, 96), "glands")
    assert glands.dtype == np.uint16 and glands.max() >= 1


@pytest.fixture(scope="module")
def instance_run(nuclei_instances: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    from napari_diffseg.experiment import run_experiment

    model = tmp_path_factory.mktemp("inst_model") / "model"
    result = run_experiment(
        nuclei_instances,
        labeled_fraction=0.5,
        method="diffseg",
        preset="tiny",
        seed=0,
        device="cpu",
        task="instances",
        model_out=model,
    )
    return result, model


def test_experiment_instances(instance_run: tuple[dict, Path]) -> None:
    result, model = instance_run
    assert result["task"] == "instances"
    test = result["test"]
    for key in KEYS:
        assert 0.0 <= test[key] <= 1.0, (key, test[key])
    assert test["n"] == 2 and len(test["per_image"]) == 2
    assert {"ap_50", "f1_50", "dice", "n_pred", "n_true"} <= set(test["per_image"][0])
    assert test["objects_true"] > 0
    assert "object_f1" not in test  # the GlaS figures only for GlaS (or when asked)
    # the diffseg path ran with K = 3: teacher report, students, pseudo-labels
    assert len(result["teacher"]["dice_per_round"]) == 3
    config = json.loads((model / "config.json").read_text())["config"]
    assert config["task"] == "instances" and config["spec"]["num_classes"] == 3


def test_evaluate_instance_model(instance_run: tuple[dict, Path], nuclei_instances: Path) -> None:
    from napari_diffseg.experiment import evaluate_instances_folder

    result, model = instance_run
    ev = evaluate_instances_folder(model, nuclei_instances, device="cpu", object_metrics=True)
    assert ev["task"] == "instances" and ev["n"] == 2
    # the same model on the same images: the same figures as the experiment's test object
    for key in ("ap_50", "ap_75", "f1_50", "dice_mean"):
        assert ev[key] == pytest.approx(result["test"][key], abs=1e-6)
    assert 0.0 <= ev["object_f1"] <= 1.0 and 0.0 <= ev["object_dice"] <= 1.0


def test_experiment_instances_needs_instances(synth_dataset: Path) -> None:
    from napari_diffseg.experiment import run_experiment

    with pytest.raises(ConfigError, match="instances/"):
        run_experiment(
            synth_dataset, labeled_fraction=0.5, method="supervised", preset="tiny", task="instances"
        )
    with pytest.raises(ConfigError, match="unknown task"):
        run_experiment(
            synth_dataset, labeled_fraction=0.5, method="supervised", preset="tiny", task="semantic"
        )


@pytest.mark.parametrize("method", ["cps", "mean-teacher", "diffseg"])
def test_a_semi_supervised_method_with_every_image_labeled_is_refused_before_training(
    nuclei_instances: Path, method: str
) -> None:
    from napari_diffseg.experiment import run_experiment

    with pytest.raises(ConfigError, match="every training image is labeled; use --method supervised"):
        run_experiment(nuclei_instances, labeled_fraction=1.0, method=method, preset="tiny", task="instances")


def test_cli_sample_data_experiment_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`diffseg sample-data --instances`, `diffseg experiment --task instances --json`, `diffseg evaluate`."""
    from napari_diffseg.cli import main

    ds = tmp_path / "ds"
    args = ["sample-data", str(ds), "--kind", "nuclei", "--n-train", "5", "--n-test", "2", "--size", "64"]
    assert main([*args, "--instances"]) == 0
    assert len(list((ds / "instances").glob("*.tif"))) == 7
    out = tmp_path / "run.json"
    model = tmp_path / "model"
    argv = ["experiment", str(ds), "-f", "0.5", "--method", "supervised", "--preset", "tiny", "--task"]
    code = main([*argv, "instances", "--json", str(out), "--model-out", str(model), "-q", "--device", "cpu"])
    assert code == 0
    assert "AP@0.5" in capsys.readouterr().out
    test = json.loads(out.read_text())["test"]
    assert {"ap_50", "ap_75", "f1_50", "dice_mean"} <= set(test)
    assert main(["evaluate", str(model), str(ds), "--json", "-", "--device", "cpu"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["task"] == "instances" and ev["ap_50"] == pytest.approx(test["ap_50"])
    # predict writes one id per object (uint16), the ids the evaluation scored
    image = ds / "images" / "test_000.png"
    assert (
        main(["predict", str(model), str(image), "--out", str(tmp_path / "pred"), "--device", "cpu", "-q"])
        == 0
    )
    ids = tifffile.imread(tmp_path / "pred" / "test_000.png.tif")
    assert ids.dtype == np.uint16 and ids.shape == (64, 64)
    row = next(r for r in ev["per_image"] if r["id"] == "test_000")
    assert int(ids.max()) == len(np.unique(ids)) - 1 == row["n_pred"]


@pytest.mark.parametrize("method", ["cps", "mean-teacher"])
def test_baselines_train_the_three_class_target(nuclei_instances: Path, method: str) -> None:
    from napari_diffseg.experiment import run_experiment

    result = run_experiment(
        nuclei_instances, labeled_fraction=0.5, method=method, preset="tiny", device="cpu", task="instances"
    )
    assert result["task"] == "instances" and 0.0 <= result["test"]["ap_50"] <= 1.0
