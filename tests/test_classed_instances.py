"""Objects of several classes (issue 13) through the CLI: the synthetic two-class dataset (discs and rods),
``diffseg init --task instances --classes background,disc,rod`` importing its class maps, a tiny co-training
round and proposal on the K = 4 target, ``predict``'s class TIFF and object table, ``correct --classes``,
``experiment`` / ``evaluate`` with per-class AP@0.5 and class accuracy, and the refusals of bad class maps."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_diffseg.cli import main
from napari_diffseg.core.instance_metrics import class_matching, summarize_classes
from napari_diffseg.data.synthetic import make_sample_classed, make_sample_dataset
from napari_diffseg.project import Project

TINY = ["--preset", "tiny", "--threads", "1", "--quiet", "--device", "cpu"]
CLASSES = "background,disc,rod"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _classed_experiment(dataset: Path, out: Path, model: Path) -> list[str]:
    """``diffseg experiment`` of a tiny supervised model of two object classes on every training image."""
    argv = ["experiment", str(dataset), "-f", "1.0", "--val-fraction", "0", "--method", "supervised"]
    argv += ["--set", "cotrain_steps=150", "--set", "patch_size=64", "--set", "student_channels=[16,32]"]
    argv += ["--task", "instances", "--classes", CLASSES, "--json", str(out), "--model-out", str(model)]
    return [*argv, *TINY]


def _true_classes(ids: np.ndarray, cmap: np.ndarray) -> dict[int, int]:
    """Each object's class read straight off the synthetic class map (one class over each object)."""
    out = {}
    for obj in np.unique(ids[ids > 0]):
        values = np.unique(cmap[ids == obj])
        assert values.size == 1 and values[0] in (1, 2)
        out[int(obj)] = int(values[0])
    return out


@pytest.fixture(scope="module")
def classed_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("classed") / "ds"
    return make_sample_dataset(root, n_train=8, n_test=2, size=(64, 64), seed=3, object_classes=2)


# ------------------------------------------------------------------------------------------ metrics


def test_class_matching_hand_computed() -> None:
    # true: objects 1 (class 1), 2 (class 2), 3 (class 2); pred: 5 over 1 exactly (class 1), 6 over 2
    # exactly but called class 1, 7 over 3 with IoU 4/8 = 0.5 (class 2), 8 over nothing (class 2)
    true = np.zeros((8, 12), np.int64)
    pred = np.zeros((8, 12), np.int64)
    true[0:2, 0:2] = 1
    pred[0:2, 0:2] = 5
    true[4:6, 0:3] = 2
    pred[4:6, 0:3] = 6
    true[0:2, 6:10] = 3  # 8 pixels
    pred[0:2, 6:8] = 7  # 4 of them: IoU 4 / 8 = 0.5, a match at 0.5
    pred[6:8, 10:12] = 8
    out = class_matching(pred, true, {5: 1, 6: 1, 7: 2, 8: 2}, {1: 1, 2: 2, 3: 2}, 2)
    # class 1: pred {5, 6} vs true {1}: 5-1 matches, 6 is a FP; class 2: pred {7, 8} vs true {2, 3}: 7-3
    # matches, 8 is a FP, 2 a FN (found, but as class 1)
    assert out == {"tp": [1, 1], "fp": [1, 1], "fn": [0, 1], "matched": 3, "class_correct": 2}
    s = summarize_classes(
        [out, {"tp": [0, 2], "fp": [0, 0], "fn": [1, 0], "matched": 2, "class_correct": 2}], ["disc", "rod"]
    )
    # pooled: disc TP 1, FP 1, FN 1 → 1/3; rod TP 3, FP 1, FN 1 → 3/5; accuracy (2 + 2) / (3 + 2)
    assert s["ap_50_per_class"] == pytest.approx({"disc": 1 / 3, "rod": 3 / 5})
    assert s["class_accuracy"] == pytest.approx(4 / 5)
    assert s["objects_true_per_class"] == {"disc": 2, "rod": 4}
    assert s["objects_pred_per_class"] == {"disc": 2, "rod": 4}
    empty = summarize_classes(
        [{"tp": [0, 0], "fp": [0, 0], "fn": [0, 0], "matched": 0, "class_correct": 0}], ["a", "b"]
    )
    assert math.isnan(empty["class_accuracy"]) and math.isnan(empty["ap_50_per_class"]["a"])
    with pytest.raises(Exception, match="pred object 8 has class None"):
        class_matching(pred, true, {5: 1, 6: 1, 7: 2}, {1: 1, 2: 2, 3: 2}, 2)


# ------------------------------------------------------------------------------------------ synthetic data


def test_the_two_class_dataset(classed_ds: Path) -> None:
    sizes: dict[int, list[int]] = {1: [], 2: []}
    grey: dict[int, list[float]] = {1: [], 2: []}
    for name in ("train_000", "train_001", "test_000"):
        ids = tifffile.imread(classed_ds / "instances" / f"{name}.tif")
        cmap = iio.imread(classed_ds / "masks" / f"{name}.png")
        image = iio.imread(classed_ds / "images" / f"{name}.png").mean(-1)
        assert ids.dtype == np.uint16 and set(np.unique(cmap)) == {0, 1, 2}
        np.testing.assert_array_equal(cmap > 0, ids > 0)  # the class map covers exactly the objects
        for obj, c in _true_classes(ids, cmap).items():
            sizes[c].append(int((ids == obj).sum()))
            grey[c].append(float(image[ids == obj].mean()))
    # what tells the classes apart: discs are smaller and darker than rods
    assert np.median(sizes[1]) < np.median(sizes[2]) and np.mean(grey[1]) < np.mean(grey[2]) - 20
    # the same seed gives the same sample; the default dataset is unchanged (binary masks/, no classes)
    a, b = make_sample_classed(5, (64, 64)), make_sample_classed(5, (64, 64))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------ the project


@pytest.fixture(scope="module")
def project(classed_ds: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("proj") / "p"
    rc = main(["init", str(root), "--images", str(classed_ds), "--task", "instances", "--classes", CLASSES])
    assert rc == 0
    return root


def test_init_stores_each_objects_class_from_the_class_map(project: Path, classed_ds: Path) -> None:
    with Project.open(project) as proj:
        task = proj.task
        assert task.classed and task.object_classes == 2 and task.num_classes == 4
        records = proj.images()
        assert len(records) == 10
        for rec in records:
            ann = proj.annotation(rec.id)
            assert ann is not None and ann.kind == "ground_truth"
            ids = tifffile.imread(classed_ds / "instances" / f"{rec.name}.tif")
            cmap = iio.imread(classed_ds / "masks" / f"{rec.name}.png")
            assert ann.object_classes == _true_classes(ids, cmap), rec.name
            np.testing.assert_array_equal(proj.load_annotation(rec.id), ids)  # the ids, as given


def test_cotrain_propose_predict_and_correct_with_classes(
    project: Path, classed_ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from napari_diffseg.core.checkpoint import load_model_files

    rc, _, err = _run(capsys, "cotrain", str(project), *TINY)
    assert rc == 0, err
    with Project.open(project) as proj:
        active = proj.active_model()
        assert active is not None
        _, config, _ = load_model_files(proj.model_dir(active.id))
    assert config["task"] == "instances" and config["spec"]["num_classes"] == 4
    assert [c["name"] for c in config["classes"]] == ["background", "disc", "rod"]
    rc, _, err = _run(
        capsys, "propose", str(project), "--ids", "test_000", "--steps", "1", "--samples", "2", *TINY
    )
    assert rc == 0, err
    with Project.open(project) as proj:
        found = proj.proposal("test_000")
        assert found is not None and found[1].shape == (4, 64, 64)

    # predict: the ids as before, plus each object's class and a table of the objects
    out = tmp_path / "out"
    img = classed_ds / "images" / "test_000.png"
    rc, text, err = _run(capsys, "predict", str(project), str(img), "--out", str(out), "--quiet")
    assert rc == 0, err
    assert "1 = disc, 2 = rod" in text and "objects.csv" in text
    ids = tifffile.imread(out / "test_000.png.tif")
    classes = tifffile.imread(out / "test_000.png.classes.tif")
    assert classes.dtype == np.uint8 and classes.shape == ids.shape
    np.testing.assert_array_equal(classes > 0, ids > 0)
    with open(out / "test_000.png.objects.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["id"]) for r in rows] == [int(i) for i in np.unique(ids[ids > 0])]
    for r in rows:
        obj = ids == int(r["id"])
        assert int(r["area"]) == int(obj.sum())
        assert set(np.unique(classes[obj])) == {int(r["class"])}  # one class over the whole object
        assert r["class_name"] == {1: "disc", 2: "rod"}[int(r["class"])]
    for name in ("test_000.png.tif", "test_000.png.overlay.png", "test_000.png.objects.csv"):
        (out / name).unlink()
    rc, _, err = _run(capsys, "predict", str(project), str(img), "--out", str(out), "--quiet")
    assert rc == 2 and "test_000.png.classes.tif already exists" in err  # never replaced silently either

    # a z-stack (an ImageJ hyperstack of 3 planes): objects linked across planes, one class per object
    rgb = iio.imread(img)[..., :3]
    tifffile.imwrite(
        tmp_path / "stack.tif", np.stack([rgb] * 3), imagej=True, photometric="rgb", metadata={"axes": "ZYXS"}
    )
    rc, _, err = _run(
        capsys, "predict", str(project), str(tmp_path / "stack.tif"), "--out", str(out), "--quiet"
    )
    assert rc == 0, err
    sids = tifffile.imread(out / "stack.tif.tif")
    scls = tifffile.imread(out / "stack.tif.classes.tif")
    assert sids.shape == scls.shape == (3, *ids.shape)
    np.testing.assert_array_equal(scls > 0, sids > 0)
    with open(out / "stack.tif.objects.csv", newline="") as f:
        srows = list(csv.DictReader(f))
    # three identical planes: every object is linked through all three, the same pixels in each (sizes are
    # counted in voxels, so pieces too small to keep in 2D may stay)
    assert len(srows) >= len(rows)
    for r in srows:
        obj = sids == int(r["id"])
        assert obj[0].any() and np.array_equal(obj[0], obj[1]) and np.array_equal(obj[0], obj[2])
    for r in srows:  # each object's voxels across the planes, one class
        obj = sids == int(r["id"])
        assert int(r["area"]) == int(obj.sum()) and set(np.unique(scls[obj])) == {int(r["class"])}

    # correct: the ids with their class map; a mask without one, or with a bad one, saves nothing
    ids_file = classed_ds / "instances" / "train_000.tif"
    truth = tifffile.imread(ids_file)
    cmap = iio.imread(classed_ds / "masks" / "train_000.png")
    flipped = np.where(cmap > 0, 3 - cmap, 0).astype(np.uint8)  # every disc a rod and every rod a disc
    cmap_file = tmp_path / "flipped.png"
    iio.imwrite(cmap_file, flipped)
    with Project.open(project) as proj:
        before = proj.latest_version("train_000")
    rc, _, err = _run(capsys, "correct", str(project), "train_000", str(ids_file))
    assert rc == 2 and "--classes" in err and "1 = disc, 2 = rod" in err
    bad = flipped.copy()
    bad[truth == truth.max()] = 3
    iio.imwrite(tmp_path / "bad.png", bad)
    rc, _, err = _run(
        capsys, "correct", str(project), "train_000", str(ids_file), "--classes", str(tmp_path / "bad.png")
    )
    assert rc == 2 and "3" in err and "0 (none) to 2" in err, err
    with Project.open(project) as proj:
        assert proj.latest_version("train_000") == before
    rc, out_text, err = _run(
        capsys, "correct", str(project), "train_000", str(ids_file), "--classes", str(cmap_file), "--json"
    )
    assert rc == 0, err
    assert json.loads(out_text)["version"] == before + 1
    with Project.open(project) as proj:
        ann = proj.annotation("train_000")
        assert ann is not None and ann.version == before + 1
        assert ann.object_classes == {k: 3 - v for k, v in _true_classes(truth, cmap).items()}


def test_init_refuses_a_class_map_with_an_object_without_class(
    classed_ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(classed_ds, ds)
    ids = tifffile.imread(ds / "instances" / "train_003.tif")
    cmap = iio.imread(ds / "masks" / "train_003.png")
    lost = int(ids.max())
    cmap[ids == lost] = 0  # this object gets no class
    iio.imwrite(ds / "masks" / "train_003.png", cmap)
    root = tmp_path / "p"
    rc, _, err = _run(
        capsys, "init", str(root), "--images", str(ds), "--task", "instances", "--classes", CLASSES
    )
    assert rc == 2 and "train_003" in err and f"object(s) {lost} have no class" in err, err
    assert not (root / "project.db").exists()  # nothing saved
    # a class value beyond the classes named
    cmap[ids == lost] = 3
    iio.imwrite(ds / "masks" / "train_003.png", cmap)
    rc, _, err = _run(
        capsys, "init", str(root), "--images", str(ds), "--task", "instances", "--classes", CLASSES
    )
    assert rc == 2 and "train_003" in err and "holds 3" in err and "0 (none) to 2" in err, err
    assert not (root / "project.db").exists()
    # the same through the experiment: named before anything trains
    rc, _, err = _run(
        capsys,
        "experiment",
        str(ds),
        "-f",
        "1",
        "--method",
        "supervised",
        "--task",
        "instances",
        "--classes",
        CLASSES,
        *TINY,
    )
    assert rc == 2 and "train_003" in err and "holds 3" in err, err


# ------------------------------------------------------------------------------------------ experiment


def test_experiment_and_evaluate_report_per_class_figures(
    classed_ds: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, model = tmp_path / "r.json", tmp_path / "model"
    rc, text, err = _run(capsys, *_classed_experiment(classed_ds, out, model))
    assert rc == 0, err
    assert "AP@0.5 per class: disc" in text
    result = json.loads(out.read_text())
    assert result["task"] == "instances" and result["classes"] == ["background", "disc", "rod"]
    test = result["test"]
    for key in ("ap_50", "ap_75", "f1_50", "dice_mean"):  # the class-agnostic figures stay
        assert 0.0 <= test[key] <= 1.0
    # the true objects per class are the dataset's
    counts = {"disc": 0, "rod": 0}
    for name in ("test_000", "test_001"):
        ids = tifffile.imread(classed_ds / "instances" / f"{name}.tif")
        cmap = iio.imread(classed_ds / "masks" / f"{name}.png")
        for c in _true_classes(ids, cmap).values():
            counts[("disc", "rod")[c - 1]] += 1
    assert test["objects_true_per_class"] == counts
    assert sum(test["objects_pred_per_class"].values()) == test["objects_pred"]
    # the figures are the pooled per-image counts
    rows = [r["classes_50"] for r in test["per_image"]]
    assert (
        test["objects_matched_50"]
        == sum(r["matched"] for r in rows)
        == sum(r["tp_50"] for r in test["per_image"])
    )
    for k, name in enumerate(("disc", "rod")):
        tp, fp, fn = (sum(r[key][k] for r in rows) for key in ("tp", "fp", "fn"))
        assert test["ap_50_per_class"][name] == pytest.approx(tp / (tp + fp + fn))
    assert test["class_accuracy"] == pytest.approx(
        sum(r["class_correct"] for r in rows) / test["objects_matched_50"]
    )
    # discs and rods are easy to tell apart: the objects found are mostly named right
    assert test["objects_matched_50"] >= 6 and test["class_accuracy"] >= 0.75
    config = json.loads((model / "config.json").read_text())["config"]
    assert config["spec"]["num_classes"] == 4 and [c["name"] for c in config["classes"]] == CLASSES.split(",")

    # evaluate scores the saved model exactly as the experiment did
    rc, text, err = _run(capsys, "evaluate", str(model), str(classed_ds), "--json", "-", "--device", "cpu")
    assert rc == 0, err
    ev = json.loads(text)
    for key in ("ap_50", "class_accuracy", "objects_matched_50"):
        assert ev[key] == pytest.approx(test[key])
    assert ev["ap_50_per_class"] == pytest.approx(test["ap_50_per_class"])

    # a one-class run keeps its keys: nothing per class
    one = tmp_path / "one.json"
    argv = ["experiment", str(classed_ds), "-f", "1.0", "--val-fraction", "0", "--method", "supervised"]
    argv += ["--task", "instances", "--json", str(one), *TINY]
    rc, _, err = _run(capsys, *argv)
    assert rc == 0, err
    plain = json.loads(one.read_text())
    assert "classes" not in plain and not {"ap_50_per_class", "class_accuracy"} & set(plain["test"])
    assert "classes_50" not in plain["test"]["per_image"][0]


def test_export_names_each_object_class_channel() -> None:
    from napari_diffseg.base.errors import ConfigError
    from napari_diffseg.export._source import class_names, task_of

    assert task_of({"task": "instances"}, 3) == "instances"  # one object class: exported as before
    assert task_of({"task": "instances"}, 4) == "instances"
    with pytest.raises(ConfigError, match="at least 3 classes"):
        task_of({"task": "instances"}, 2)
    config = {"task": "instances", "classes": [{"name": n} for n in ("background", "disc", "rod")]}
    assert class_names(config, 4) == ["background", "interior of disc", "boundary", "interior of rod"]
    assert class_names({"task": "instances"}, 3) == ["background", "interior", "boundary"]


def test_experiment_and_evaluate_on_z_stacks_of_classed_objects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder of z-stacks whose objects are of two classes (``instances/`` and ``masks/`` both
    ``(Z, H, W)``): the planes train the K = 4 target with their stack's classes, each test stack's objects
    are made from all its planes and classed over all their voxels, and the per-class figures count 3D
    objects; an object crossing planes takes the class under most of its voxels."""
    from napari_diffseg.data.dataset import DatasetFolder
    from napari_diffseg.experiment import dataset_object_classes

    ds = tmp_path / "stacks"
    for sub in ("images", "instances", "masks"):
        (ds / sub).mkdir(parents=True)
    rows, truth = ["id,split"], {}
    for n in range(6):
        rgb, ids, cmap = make_sample_classed(40 + n, (64, 64))
        grey = rgb.mean(-1).astype(np.uint8)
        stack_ids, stack_cls = np.stack([ids] * 3), np.stack([cmap] * 3)  # each object crosses 3 planes
        name = f"s{n}"
        if n == 5:  # one plane paints its first object with the other class: the majority still wins
            first = int(ids[ids > 0].min())
            stack_cls[0][ids == first] = 3 - int(cmap[ids == first][0])
        tifffile.imwrite(
            ds / "images" / f"{name}.tif", np.stack([grey] * 3), imagej=True, metadata={"axes": "ZYX"}
        )
        tifffile.imwrite(ds / "instances" / f"{name}.tif", stack_ids, photometric="minisblack")
        tifffile.imwrite(ds / "masks" / f"{name}.tif", stack_cls, photometric="minisblack")
        truth[name] = _true_classes(ids, cmap)
        rows.append(f"{name},{'test' if n == 5 else 'train'}")
    (ds / "split.csv").write_text("\n".join(rows) + "\n")
    folder = DatasetFolder(ds)
    stack = tifffile.imread(ds / "instances" / "s5.tif").astype(np.int64)
    assert dataset_object_classes(folder, "s5", stack, 2) == truth["s5"]

    out, model = tmp_path / "r.json", tmp_path / "model"
    rc, text, err = _run(capsys, *_classed_experiment(ds, out, model))
    assert rc == 0, err
    test = json.loads(out.read_text())["test"]
    (row,) = test["per_image"]
    assert (row["id"], row["planes"]) == ("s5", 3)
    counts = {"disc": 0, "rod": 0}  # 3D objects, not one per plane
    for c in truth["s5"].values():
        counts[("disc", "rod")[c - 1]] += 1
    assert test["objects_true_per_class"] == counts and test["objects_true"] == len(truth["s5"])
    assert sum(test["objects_pred_per_class"].values()) == test["objects_pred"]
    assert set(test["ap_50_per_class"]) == {"disc", "rod"} and 0.0 <= test["class_accuracy"] <= 1.0
    assert test["objects_matched_50"] >= 1

    rc, text, err = _run(capsys, "evaluate", str(model), str(ds), "--json", "-", "--device", "cpu")
    assert rc == 0, err
    ev = json.loads(text)
    for key in ("ap_50", "class_accuracy", "objects_matched_50", "objects_pred"):
        assert ev[key] == pytest.approx(test[key])
    assert ev["ap_50_per_class"] == pytest.approx(test["ap_50_per_class"])
