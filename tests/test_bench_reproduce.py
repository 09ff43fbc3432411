"""benchmarks/reproduce.py (are the evidence JSONs what the current code makes?) and the label-free
references of benchmarks/stage_a.py (how far any split without labels goes; issue 14)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import reproduce  # noqa: E402
import stage_a  # noqa: E402


def _run(dice: list[float], val: list[float], commit: str = "a" * 40, processor: str = "AMD EPYC") -> dict:
    return {
        "task": "binary",
        "provenance": {"commit": commit, "dirty": False, "processor": processor},
        "test": {
            "dice_mean": float(np.mean(dice)),
            "per_image": [{"id": f"t{i}", "dice": d} for i, d in enumerate(dice)],
        },
        "validation": [
            {"phase": "cotrain", "step": 50 * (i + 1), "loss": 0.5, "val_dice": v} for i, v in enumerate(val)
        ]
        + [{"phase": "cotrain", "step": 999, "loss": 0.1}],  # a progress entry without a check
    }


def test_compare_tells_identical_runs_from_drifted_ones() -> None:
    a = _run([0.8, 0.6, 0.7], [0.5, 0.6])
    same = reproduce.compare(a, copy.deepcopy(a) | {"provenance": {"commit": "b" * 40, "dirty": True}})
    assert same["max_image_diff"] == 0.0 and same["same_checks"] and same["n_checks"] == 2
    assert same["commit"] == "aaaaaaa" and same["commit_again"] == "bbbbbbb+dirty"
    assert same["deployed"] == same["deployed_again"] == ""  # no fallback in these runs

    drifted = _run([0.8, 0.61, 0.7], [0.5, 0.6000001])
    c = reproduce.compare(a, drifted)
    assert c["max_image_diff"] == pytest.approx(0.01) and not c["same_checks"]
    assert c["dice_again"] == pytest.approx(np.mean([0.8, 0.61, 0.7]))

    fb, fb_again = copy.deepcopy(a), copy.deepcopy(a)
    fb["validation"].append({"phase": "cotrain", "step": 100, "deployed_reference": True})
    fb_again["validation"].append({"phase": "cotrain", "step": 100, "deployed_reference": False})
    c = reproduce.compare(fb, fb_again)
    assert (c["deployed"], c["deployed_again"]) == ("labels-only", "twins")

    with pytest.raises(ValueError, match="different test images"):
        reproduce.compare(a, _run([0.8, 0.6], [0.5, 0.6]))


def test_teacher_test_runs_are_re_run_with_it_and_compared_on_the_teacher_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result scored with --teacher-test (the diffseg-Tkeep runs diffseg-Tbest and diffseg-Tmean derive
    from) is re-run with it, and the report shows the teacher's and the mean's test Dice and what each run
    deployed; a run without it is re-run without it."""
    import json

    calls: list[bool] = []

    def fake_run_one(ds, out, arm, fraction, seed, preset, threads, teacher_test=False):
        calls.append(teacher_test)
        return 1  # fails: rerun must say so, having passed the flag

    monkeypatch.setattr(reproduce.sweep, "run_one", fake_run_one)
    monkeypatch.setattr(reproduce, "dataset_for", lambda folder, data, views: tmp_path)
    for spec in ("glas/diffseg-Tkeep_f0.05_s0", "glas/supervised_f0.05_s0"):
        with pytest.raises(SystemExit, match="re-run failed"):
            reproduce.rerun(spec, tmp_path, tmp_path, 1, tmp_path / "out")
    assert calls == [True, False]

    a = _run([0.8, 0.6], [0.5, 0.6]) | {
        "deployed": "teacher",
        "test_teacher": {"dice_mean": 0.75, "ensemble": {"dice_mean": 0.77}},
    }
    b = copy.deepcopy(a)
    b["test_teacher"]["dice_mean"], b["deployed"] = 0.7, "students"
    c = reproduce.compare(a, b)
    assert c["teacher"] == "0.750000 / 0.770000 / teacher"
    assert c["teacher_again"] == "0.700000 / 0.770000 / students"
    assert reproduce.compare(_run([0.8], [0.5]), _run([0.8], [0.5]))["teacher"] == ""
    assert json.dumps(c)  # the figures stay plain JSON


def test_dataset_for_finds_the_dataset_or_makes_the_split_view(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "glas" / "images").mkdir(parents=True)
    (data / "isbi2012_em" / "images").mkdir(parents=True)
    views = tmp_path / "views"
    assert reproduce.dataset_for("glas", data, views) == data / "glas"
    view = reproduce.dataset_for("isbi2012_em-isbi2012_em_blocks", data, views)
    assert view.parent == views and (view / "images").resolve() == (data / "isbi2012_em" / "images").resolve()
    assert (view / "split.csv").read_text() == (BENCH / "splits" / "isbi2012_em_blocks.csv").read_text()
    with pytest.raises(SystemExit, match="--data"):
        reproduce.dataset_for("drive", data, views)


def test_rerun_refuses_what_is_not_an_evidence_result(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not a result"):
        reproduce.rerun("glas/no-such-arm_f0.05_s0", tmp_path, tmp_path, 1)
    with pytest.raises(SystemExit, match="not a result"):
        reproduce.rerun("glas/supervised", tmp_path, tmp_path, 1)


def test_report_reads_the_round_of_re_runs_it_is_given(tmp_path: Path) -> None:
    """--out keeps a later round of re-runs apart; its report pairs each with the evidence JSON it re-ran."""
    import json

    original = reproduce.sweep.RESULTS / "glas" / "supervised_f0.05_s0.json"
    run = json.loads(original.read_text())
    again = copy.deepcopy(run)
    again["provenance"] = dict(run["provenance"], commit="c" * 40, dirty=False)
    again["test"]["per_image"][0]["dice"] += 0.25
    (tmp_path / "glas").mkdir()
    (tmp_path / "glas" / original.name).write_text(json.dumps(again))
    text = reproduce.report(tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| glas/")]
    assert len(rows) == 1 and rows[0].startswith("| glas/supervised_f0.05_s0 |")
    assert "| ccccccc |" in rows[0] and "| 2.5e-01 |" in rows[0] and "| yes (" in rows[0]
    assert reproduce.report(tmp_path / "empty").count("\n| ") == 1  # header rule only: nothing re-run there


def _perm_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    from napari_diffseg.experiment import _perm_dice

    return _perm_dice(pred, truth, 2, None)


def test_label_free_references_find_what_a_threshold_cannot() -> None:
    rng = np.random.default_rng(0)
    truth = np.zeros((64, 64), dtype=np.int64)
    truth[:, 32:] = 1
    # a noisy step: smoothing before Otsu's threshold recovers the halves that the raw threshold cannot
    step = torch.from_numpy((truth + rng.normal(0, 0.8, truth.shape)).astype(np.float32))[None]
    raw, smooth = (
        _perm_dice(stage_a.smoothed_otsu(step, 0), truth),
        _perm_dice(stage_a.smoothed_otsu(step, 4), truth),
    )
    assert raw < 0.8 and smooth > 0.95
    # two textures of the same mean brightness: no threshold of the (smoothed) image separates them, the
    # local standard deviation does
    texture = rng.normal(0.5, np.where(truth == 1, 0.3, 0.02)).astype(np.float32)
    x = torch.from_numpy(texture)[None].repeat(3, 1, 1)
    assert _perm_dice(stage_a.smoothed_otsu(x, 4), truth) < 0.8
    assert _perm_dice(stage_a.kmeans2(x, (2.0,)), truth) > 0.9
    assert stage_a.smoothed_otsu(torch.zeros(1, 8, 8), 1).sum() == 0  # a flat image: no foreground


def test_global_thresholds_differ_where_the_histogram_is_skewed() -> None:
    """A few bright nuclei on a wide dim background: the triangle threshold (made for one dominant peak)
    finds them, the mean threshold cuts through the background; each is a real split (not all one class),
    and a flat image has no foreground."""
    rng = np.random.default_rng(1)
    truth = np.zeros((64, 64), dtype=np.int64)
    truth[10:18, 10:18] = truth[40:46, 30:38] = 1
    img = torch.from_numpy((0.2 * truth + rng.normal(0.1, 0.03, truth.shape)).astype(np.float32))[None]
    masks = {m: stage_a.global_threshold(img, m) for m in stage_a.THRESHOLDS}
    assert all(0 < m.sum() < m.size for m in masks.values())
    assert _perm_dice(masks["triangle"], truth) > 0.8 and _perm_dice(masks["mean"], truth) < 0.3
    assert stage_a.global_threshold(torch.ones(1, 8, 8), "yen").sum() == 0


def test_three_class_otsu_keeps_dim_nuclei_that_one_bright_object_hides() -> None:
    """Two dim nuclei and one very bright one: Otsu's one threshold lands between the dim and the bright
    nucleus and loses the dim ones; the lower threshold of a 3-class Otsu keeps all three."""
    rng = np.random.default_rng(2)
    truth = np.zeros((64, 64), dtype=np.int64)
    truth[8:20, 8:20] = truth[40:52, 10:22] = truth[30:42, 40:52] = 1
    img = rng.normal(0.05, 0.01, truth.shape)
    img[8:20, 8:20] += 0.2
    img[40:52, 10:22] += 0.2
    img[30:42, 40:52] += 1.0
    x = torch.from_numpy(img.astype(np.float32))[None]
    assert _perm_dice(stage_a.smoothed_otsu(x, 0), truth) < 0.6
    assert _perm_dice(stage_a.multiotsu_low(x), truth) > 0.95
    assert stage_a.multiotsu_low(torch.zeros(1, 8, 8)).sum() == 0


def test_stain_ratio_splits_haematoxylin_rich_from_eosin_rich_tissue() -> None:
    """A synthetic H&E patch: a purple (haematoxylin-rich) disc with a white lumen, in pink (eosin-rich)
    stroma. The stain ratio finds the disc, lumen included (holes filled); a grey image is not colour and
    gets no stain split."""
    yy, xx = np.mgrid[:96, :96]
    r = np.hypot(yy - 48, xx - 48)
    truth = (r < 30).astype(np.int64)
    purple, pink, white = np.array([90, 60, 150]), np.array([235, 150, 200]), np.array([245, 245, 245])
    rgb = np.where((r < 12)[..., None], white, np.where((r < 30)[..., None], purple, pink)).astype(np.float64)
    rgb += np.random.default_rng(3).normal(0, 4, rgb.shape)
    raw = np.clip(np.moveaxis(rgb, -1, 0), 0, 255).astype(np.uint8)
    split = stage_a.stain_ratio(raw, 2.0)
    assert split is not None and _perm_dice(split, truth) > 0.9
    assert stage_a.stain_ratio(np.repeat(raw[:1], 3, 0), 2.0) is None


def test_references_score_every_split_on_both_splits(synth_dataset: Path, tmp_path: Path) -> None:
    """The whole ``--references`` pass on a small colour dataset: one Dice per rule on the train and the test
    images (the stain ratio included, since the synthetic glands are colour), each a Dice, and the
    per-image ceiling at or above every rule."""
    r = stage_a.references(synth_dataset, tmp_path)
    assert set(r) == {"dataset", "normalization", "train", "test"} and r["normalization"] == "per_image"
    for split in ("train", "test"):
        dice = r[split]["dice"]
        assert "3-class Otsu, lower threshold" in dice and any(k.startswith("H&E stain ratio") for k in dice)
        assert all(0.0 <= v <= 1.0 for v in dice.values())
        assert dice[stage_a.ORACLE] >= max(v for k, v in dice.items() if k != stage_a.ORACLE) - 1e-9
    assert (tmp_path / "references.json").exists()


def test_label_free_pickers_choose_the_agreed_split_and_the_one_on_the_edges() -> None:
    """Three splits of a bright square: two agree (and follow the square's edge), one is shifted off it.
    Both pickers choose one of the two; an unknown picker is refused."""
    truth = np.zeros((48, 48), dtype=np.int64)
    truth[12:36, 12:36] = 1
    x = torch.from_numpy(truth.astype(np.float32))[None]
    shifted = np.roll(truth, 9, axis=1)
    splits = {"a": truth.copy(), "b": truth.copy(), "off": shifted}
    assert stage_a.pick(splits, x, "consensus") in {"a", "b"}
    assert stage_a.pick(splits, x, "edges") in {"a", "b"}
    assert stage_a.pick({"off": shifted, "a": truth}, x, "edges") == "a"
    with pytest.raises(ValueError, match="unknown pick"):
        stage_a.pick(splits, x, "vote")


def test_distill_trains_a_student_on_a_label_free_split_and_reports_both(
    synth_dataset: Path, tmp_path: Path
) -> None:
    """``--distill``: a student trained (a few steps) on the stain-ratio split of every train image, scored
    beside the split on the train and the test images; the report shows it."""
    d = stage_a.distill(synth_dataset, "stain16", 0, 3, tmp_path)
    for k in ("split_train", "student_train", "split_test", "student_test"):
        assert 0.0 <= d[k] <= 1.0
    assert d["split_train"] > 0.0 and d["provenance"]["preset"]["cotrain_steps"] == 3
    assert (tmp_path / "distill_stain16_steps3_s0.json").exists()
    assert "| stain16 | 3 | 0 |" in stage_a.report(tmp_path)
    assert stage_a.distill_name("otsu", 1, None) == "distill_otsu_s1.json"
    assert stage_a.distill_name("otsu", 1, 1500) == "distill_otsu_steps1500_s1.json"


def test_stage_a_runs_on_the_datasets_statistics_when_asked(synth_dataset: Path, tmp_path: Path) -> None:
    """``--normalization dataset``: Stage A trains and is scored on the images as a project's first model
    sees them (pooled statistics, stored with the model), not each image clipped to its own percentiles;
    the file name, the JSON and the table say which."""
    from napari_diffseg.data.dataset import DatasetFolder
    from napari_diffseg.experiment import dataset_channels, load_images

    r = stage_a.run(synth_dataset, "split", 0, 2, tmp_path, "dataset")
    assert r["normalization"] == "dataset" and (tmp_path / "split_steps2_dsnorm_s0.json").exists()
    assert stage_a.variant_name("split", 0, None) == "split_s0.json"  # the first runs keep their names
    assert "| split | 2 | dataset | 0 |" in stage_a.report(tmp_path)
    ds = DatasetFolder(synth_dataset)
    ch = dataset_channels(ds, ds.train_ids)
    norm = stage_a._normalization(ds, ds.train_ids, ch, "dataset")
    assert norm is not None and stage_a._normalization(ds, ds.train_ids, ch, "per_image") is None
    one = ds.train_ids[0]
    assert not torch.equal(load_images(ds, [one], ch, norm)[0], load_images(ds, [one], ch)[0])
    refs = stage_a.references(synth_dataset, tmp_path, "dataset")
    assert refs["normalization"] == "dataset" and (tmp_path / "references_dsnorm.json").exists()
    assert "normalised with the dataset's pooled statistics" in stage_a.report(tmp_path)


def test_stage_a_reads_a_folder_of_z_stacks_as_its_planes(tmp_path: Path) -> None:
    """CTC CHO-like data: 3-plane stacks of bright discs. Stage A trains on, and is scored on, their planes
    (as ``diffseg experiment`` trains the 2D networks), not on stacks read as 3-channel images."""
    import tifffile

    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :56]
    rows = ["id,split"]
    for n in range(4):
        truth = np.zeros((3, 48, 56), np.uint8)
        for z in range(3):
            cy, cx = rng.integers(12, 36), rng.integers(12, 44)
            truth[z][(yy - cy) ** 2 + (xx - cx) ** 2 <= 49] = 1
        image = np.clip(30 + 150 * truth + rng.normal(0, 12, truth.shape), 0, 255).astype(np.uint8)
        tifffile.imwrite(ds / "images" / f"s{n}.tif", image, imagej=True, metadata={"axes": "ZYX"})
        tifffile.imwrite(ds / "masks" / f"s{n}.tif", truth)
        rows.append(f"s{n},{'test' if n == 3 else 'train'}")
    (ds / "split.csv").write_text("\n".join(rows) + "\n")
    view, train, test = stage_a._view(ds)
    assert len(train) == 9 and len(test) == 3 and all("@z" in i for i in train + test)
    assert view.load_image(train[0]).shape == (1, 48, 56)
    r = stage_a.run(ds, "split", 0, 2, tmp_path, "dataset")
    assert r["label_free"]["n_images"] == 5  # every 2nd of the 9 train planes
    assert r["label_free"]["otsu_dice"] > 0.9  # bright discs: a threshold finds them plane by plane
