"""``diffseg experiment --task multiclass`` (issue 13): a synthetic 3-class dataset (background, nucleus, a
ring of cytoplasm around it), its masks read as class maps; Dice per class and their mean in the JSON's
test block; a dataset whose masks hold more values than the classes named is refused before training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from napari_diffseg.base.errors import ConfigError
from napari_diffseg.cli import main
from napari_diffseg.data.dataset import DatasetFolder
from napari_diffseg.data.synthetic import make_sample_dataset

CLASSES = "background,nucleus,cytoplasm"


def _three_class(root: Path) -> Path:
    """Synthetic nuclei whose masks are rewritten as class maps: 1 the nucleus, 2 a 3-pixel ring around
    it, 0 the rest."""
    make_sample_dataset(root, n_train=6, n_test=2, size=(64, 64), kind="nuclei", seed=1, instances=True)
    ds = DatasetFolder(root)
    for i in ds.ids:
        nuclei = ds.load_instances(i) > 0
        ring = ndi.binary_dilation(nuclei, iterations=3) & ~nuclei
        classes = np.where(nuclei, 1, np.where(ring, 2, 0)).astype(np.uint8)
        for old in (root / "masks").glob(f"{i}.*"):
            old.unlink()
        tifffile.imwrite(root / "masks" / f"{i}.tif", classes)
    return root


@pytest.fixture(scope="module")
def three_class(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _three_class(tmp_path_factory.mktemp("mc") / "ds")


def test_experiment_multiclass_reports_dice_per_class(three_class: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    rc = main(
        [
            "experiment",
            str(three_class),
            "-f",
            "0.5",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--quiet",
            "--task",
            "multiclass",
            "--classes",
            CLASSES,
            "--json",
            str(out),
            "--model-out",
            str(tmp_path / "model"),
        ]
    )
    assert rc in (0, None)
    result = json.loads(out.read_text())
    assert result["task"] == "multiclass" and result["classes"] == CLASSES.split(",")
    test = result["test"]
    per_class = test["dice_per_class"]
    assert list(per_class) == ["nucleus", "cytoplasm"]  # the foreground classes, by name
    for value in per_class.values():
        assert 0.0 <= value <= 1.0  # both classes occur in every test image: a finite Dice each
    assert test["dice_class_mean"] == pytest.approx(np.mean(list(per_class.values())))
    assert all(set(row["dice_per_class"]) == set(per_class) for row in test["per_image"])
    config = json.loads((tmp_path / "model" / "config.json").read_text())["config"]
    assert config["spec"]["num_classes"] == 3 and config["task"] == "multiclass"
    assert [c["name"] for c in config["classes"]] == CLASSES.split(",")


def test_masks_beyond_the_classes_are_refused(
    three_class: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from napari_diffseg.experiment import run_experiment

    # two classes named, masks holding three: refused before training, naming a mask and the values
    with pytest.raises(ConfigError, match=r"holds the value 2 .*names 2 classes"):
        run_experiment(
            three_class,
            labeled_fraction=0.5,
            method="supervised",
            preset="tiny",
            device="cpu",
            task="multiclass",
            classes="background,nucleus",
        )
    rc = main(["experiment", str(three_class), "-f", "0.5", "--task", "multiclass", "--preset", "tiny"])
    assert rc == 2 and "--classes background" in capsys.readouterr().err  # no class names: what to give
    rc = main(
        [
            *("experiment", str(three_class), "-f", "0.5", "--preset", "tiny", "--device", "cpu"),
            *("--task", "multiclass", "--classes", "background,nucleus", "--quiet"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "--classes names 2 classes" in err and "map the mask values" in err
