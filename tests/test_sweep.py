"""benchmarks/sweep.py, the evidence sweep of issue 14: its arms are the ablations the issue lists, and its
report (summary.md + dice.png) is made from the JSONs alone with sample std and paired t intervals."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import sweep  # noqa: E402


def test_arms_are_the_issue_ablations_and_valid_overrides() -> None:
    from napari_diffseg.base.presets import get_preset

    arms = sweep.ARMS
    # every diffseg arm but the fallback's and the three made after it runs without it: their runs were
    # made before it was the default
    fb_off = {"reference_fallback": False}
    with_fb = (
        "diffseg-fb",
        "diffseg-trust",
        "diffseg-T1000",
        "diffseg-Tval",
        "diffseg-Tval-long",
        "diffseg-Tkeep",
        "diffseg-Tbest",
        "diffseg-Tmean",
        "diffseg-As",
    )
    for name, (method, overrides) in arms.items():
        if method == "diffseg":
            assert overrides.get("reference_fallback") is (name in with_fb), name
    # the paper's recipe: Stage A as its JSONs measured it, without the split anchor
    assert arms["diffseg"] == (
        "diffseg",
        {"cold_start_pretrain": True, **fb_off, "pretrain_split_weight": 0.0, "pretrain_smooth_weight": 0.0},
    )
    assert arms["diffseg-noA"] == ("diffseg", {"pretrain_steps": 0, **fb_off})  # Stage A off, no fallback
    # the default with the anchored Stage A first (the anchor pinned on, whatever the default becomes)
    assert arms["diffseg-As"] == (
        "diffseg",
        {
            "cold_start_pretrain": True,
            "pretrain_split_weight": 1.0,
            "pretrain_smooth_weight": 0.0,
            "reference_fallback": True,
        },
    )
    assert sweep.ABLATES["diffseg-As"] == ("diffseg-fb", "diffseg")
    assert sweep.ABLATES["diffseg-noA"] == ("diffseg",)  # Stage A's contribution
    assert sweep.ABLATES["diffseg-nopseudo"] == ("diffseg-noA",)  # the other parts: of that arm
    assert sweep.ABLATES["diffseg-fb"] == ("diffseg-noA",)  # the fallback's contribution
    assert arms["diffseg-nopseudo"] == ("diffseg", {"unsup_weight": 0.0, **fb_off})  # pseudo-labels off
    # pseudo-labels off with the CPS baseline's weight: the `cps` students' loss through diffseg's path
    assert arms["diffseg-cpsonly"] == ("diffseg", {"unsup_weight": 0.0, "cps_weight": 1.0, **fb_off})
    assert arms["supervised-x2"] == ("cps", {"unsup_weight": 0.0})  # two students on labels only
    assert arms["diffseg-S1"][1]["ddim_steps"] == 1 and arms["diffseg-S1"][1]["refresh_ddim_steps"] == 1
    assert arms["diffseg-E1"][1] == {"samples": 1, "refresh_samples": 1, **fb_off}
    assert arms["diffseg-R1"][1] == {"rounds": 1, **fb_off} and arms["diffseg-R3"][1] == {
        "rounds": 3,
        **fb_off,
    }
    # the long budget is one rule for every method, and diffseg-Tval-long is diffseg-Tval under it
    long_rule = {"cotrain_steps": 1500, "val_patience": 10}
    for m in ("supervised", "cps", "mean-teacher"):
        assert arms[f"{m}-long"] == (m, long_rule)
    assert arms["diffseg-Tval-long"] == ("diffseg", {**arms["diffseg-Tval"][1], **long_rule})
    # diffseg-Tkeep is diffseg-Tval whose teacher keeps its best-validated weights in co-training
    assert arms["diffseg-Tkeep"] == ("diffseg", {**arms["diffseg-Tval"][1], "teacher_keep_best": True})
    assert sweep.ABLATES["diffseg-Tkeep"] == ("diffseg-Tval",)
    # diffseg-Tbest is diffseg-Tkeep deploying the teacher where it validates best
    assert arms["diffseg-Tbest"] == ("diffseg", {**arms["diffseg-Tkeep"][1], "deploy_best": True})
    assert sweep.ABLATES["diffseg-Tbest"] == ("diffseg-Tkeep",)
    assert sweep.ABLATES["diffseg-Tval-long"] == (
        "diffseg-Tval",
        "supervised-long",
        "cps-long",
        "mean-teacher-long",
    )
    # the fallback's arm is the product's default: the `cpu` preset with nothing changed
    assert get_preset("cpu").parse_overrides(arms["diffseg-fb"][1]) == get_preset("cpu")
    cpu = get_preset("cpu")
    for name, (_method, overrides) in arms.items():
        pr = cpu.parse_overrides(overrides)  # every override is a preset field in its range
        assert all(getattr(pr, k) == v for k, v in overrides.items()), name
    for arm, refs in sweep.ABLATES.items():
        assert arm in arms and all(r in arms for r in refs)


def _run(arm: str, f: float, seed: int, dice: float, **extra) -> dict:
    method = sweep.ARMS[arm][0]
    r = {
        "method": method,
        "labeled_fraction": f,
        "seed": seed,
        "preset": "cpu",
        "n_val": 3,
        "test": {"dice_mean": dice, "n": 5},
        "train_seconds": 10.0,
        "seconds": 12.0,
        "provenance": {"commit": "abcdef1234567", "dirty": False, "threads": 1, "machine": "x86_64"},
    }
    return {**r, **extra}


def _write(out: Path, arm: str, f: float, seed: int, r: dict) -> None:
    sweep.result_path(out, arm, f, seed).write_text(json.dumps(r))


def test_report_sample_std_paired_intervals_and_sections(tmp_path: Path) -> None:
    from scipy.stats import t

    out = tmp_path / "ds"
    out.mkdir()
    diff = {0: 0.80, 1: 0.82, 2: 0.78}
    sup = {0: 0.75, 1: 0.80, 2: 0.74}
    for s in range(3):
        teacher = {
            "ddim_steps": 10,
            "dice_per_round": [0.70 + 0.01 * s, 0.69, 0.68],
            "dice_s1": 0.72,
            "uncertainty_vs_error_spearman": {"E=4": 0.5, "E=1": 0.1 * s},
            "note": "the 3 validation images",
        }
        lf = {"teacher_dice": 0.3, "otsu_dice": 0.8, "all_foreground_dice": 0.2}
        _write(
            out,
            "diffseg",
            0.1,
            s,
            _run(
                "diffseg",
                0.1,
                s,
                diff[s],
                teacher=teacher,
                label_free=lf,
                test_one_student={"network": "student_a", "dice_mean": diff[s] - 0.01},
                validation=[
                    {"step": 50, "val_dice": 0.7, "val_best": 0.7, "val_teacher": 0.69, "gate": 1.0},
                    {"step": 100, "val_dice": 0.6, "val_best": 0.75, "val_teacher": 0.69, "gate": 0.0},
                ],
            ),
        )
        _write(out, "supervised", 0.1, s, _run("supervised", 0.1, s, sup[s]))
        _write(out, "diffseg-noA", 0.1, s, _run("diffseg-noA", 0.1, s, diff[s] - 0.02))
        _write(out, "diffseg-ref", 0.1, s, _run("diffseg-ref", 0.1, s, diff[s] + 0.01))
    _write(out, "supervised", 1.0, 0, _run("supervised", 1.0, 0, 0.90))
    _write(out, "supervised", 1.0, 1, _run("supervised", 1.0, 1, 0.86))
    text = sweep.write_report(out)
    assert (out / "summary.md").read_text() == text + "\n"
    assert (out / "dice.png").stat().st_size > 1000

    sd = math.sqrt(sum((v - 0.80) ** 2 for v in diff.values()) / 2)  # ddof 1, not the population std
    assert f"| diffseg ({sweep.ARM_NOTES['diffseg']}) | {0.80:.3f} ± {sd:.3f} (3) |" in text
    assert f"| diffseg-noA ({sweep.ARM_NOTES['diffseg-noA']}) | 0.780 ± {sd:.3f} (3) |" in text
    d = [diff[s] - sup[s] for s in range(3)]
    m = sum(d) / 3
    h = t.ppf(0.975, 2) * math.sqrt(sum((x - m) ** 2 for x in d) / 2) / math.sqrt(3)
    assert f"| diffseg | supervised | {m:+.3f} [{m - h:+.3f}, {m + h:+.3f}] (3) |" in text
    # an ablation against the arm it ablates: exactly -0.02 every seed, so a zero-width interval
    assert "| diffseg-noA | diffseg | -0.020 [-0.020, -0.020] (3) |" in text
    # the default (Stage A off) is compared with the references too
    assert (
        f"| diffseg-noA | supervised | {m - 0.02:+.3f} [{m - 0.02 - h:+.3f}, {m - 0.02 + h:+.3f}] (3) |"
        in text
    )
    # the reference gate, a candidate default, is held to the references and to the default it changes
    assert (
        f"| diffseg-ref | supervised | {m + 0.01:+.3f} [{m + 0.01 - h:+.3f}, {m + 0.01 + h:+.3f}] (3) |"
        in text
    )
    assert "| diffseg-ref | diffseg-noA | +0.030 [+0.030, +0.030] (3) |" in text
    # the pair against one student, the teacher on validation images, Stage A against the trivial masks
    assert "| diffseg | 10% | 0.800 ± 0.020 (3) | 0.790 ± 0.020 (3) | +0.010 [+0.010, +0.010] (3) |" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| diffseg | 10% | 10 |"))
    assert "0.720 ± 0.000 (3)" in row and "0.50 ± 0.00 (3) (E=4)" in row and row.endswith("| validation |")
    assert "| diffseg | 10% | 0 | 0.300 | 0.800 | 0.200 |" in text
    # the gate at the end: the students' last and best checks beside it
    assert "| diffseg | 10% | 2 | 0.690 | 0.600 | 0.750 | 0.00 |" in text
    # the share of full supervision uses the 100 % arm
    assert "diffseg as a share of supervised at 100 % labels (0.880, n = 2): 10%: 90.9%" in text


def test_report_flags_a_teacher_judged_on_test_images(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    teacher = {
        "ddim_steps": 10,
        "dice_per_round": [0.7, 0.7, 0.7],
        "dice_s1": 0.7,
        "note": "every 4th test image",
    }
    _write(out, "diffseg", 0.1, 0, _run("diffseg", 0.1, 0, 0.8, teacher=teacher))
    text = sweep.report(out)
    assert "TEST images (no validation split)" in text
    assert not any(ln.startswith("| diffseg | supervised") for ln in text.splitlines())  # nothing to pair


def test_split_view_links_the_dataset_and_uses_the_block_split(tmp_path: Path) -> None:
    from napari_diffseg.data.dataset import DatasetFolder
    from napari_diffseg.data.synthetic import make_sample_dataset

    ds = tmp_path / "isbi2012_em"
    make_sample_dataset(ds, n_train=30, n_test=0, size=(32, 32), seed=0)
    ids = sorted(p.stem for p in (ds / "images").iterdir())
    split = tmp_path / "isbi2012_em_blocks.csv"
    rows = [f"{i},{'train' if n < 16 else 'val' if n < 20 else 'test'}" for n, i in enumerate(ids)]
    split.write_text("id,split\n" + "\n".join(rows) + "\n")
    before = (ds / "split.csv").read_text()
    view = sweep.dataset_view(ds, split, tmp_path / "views")
    assert view.name == "isbi2012_em-blocks" and (view / "images").is_symlink()
    assert (ds / "split.csv").read_text() == before  # the dataset itself is untouched
    folder = DatasetFolder(view)
    assert folder.train_ids == ids[:16] and folder.val_ids == ids[16:20] and folder.test_ids == ids[20:]
    assert sweep.dataset_view(ds, split, tmp_path / "views") == view  # made again: the same view


def test_shipped_isbi_block_split_is_contiguous() -> None:
    rows = (BENCH / "splits" / "isbi2012_em_blocks.csv").read_text().split()[1:]
    split = dict(r.split(",") for r in rows)
    order = [split[f"train_{i:02d}"] for i in range(30)]
    assert order == ["train"] * 16 + ["val"] * 4 + ["test"] * 10


@pytest.mark.parametrize("df, q", [(1, 12.706), (2, 4.303), (9, 2.262), (30, 2.042)])
def test_t_quantile(df: int, q: float) -> None:
    assert sweep.t_quantile_975(df) == pytest.approx(q, abs=1e-3)


def test_instance_runs_are_ranked_and_paired_by_ap50(tmp_path: Path) -> None:
    """--task instances: the main table, the paired differences and the share of full supervision use the
    test AP@0.5 (not the pixel Dice), the other figures are listed beside it, and the twin-student section
    compares pixel Dice with pixel Dice (the one-student block holds no AP)."""

    def inst(arm: str, f: float, seed: int, ap: float, dice: float) -> dict:
        test = {"dice_mean": dice, "n": 5, "ap_50": ap, "ap_75": ap / 2, "f1_50": ap + 0.05}
        r = _run(arm, f, seed, dice, task="instances")
        r["test"] = test
        if arm == "diffseg":
            r["test_one_student"] = {"network": "student_a", "dice_mean": dice - 0.01}
        return r

    for s, (a_d, a_s) in enumerate([(0.60, 0.50), (0.64, 0.52), (0.62, 0.57)]):
        _write(tmp_path, "diffseg", 0.2, s, inst("diffseg", 0.2, s, a_d, 0.9))  # same Dice, better AP
        _write(tmp_path, "supervised", 0.2, s, inst("supervised", 0.2, s, a_s, 0.9))
        _write(tmp_path, "supervised", 1.0, s, inst("supervised", 1.0, s, 0.80, 0.95))
    text = sweep.report(tmp_path)
    assert "test AP@0.5" in text.splitlines()[0]
    assert f"| diffseg ({sweep.ARM_NOTES['diffseg']}) | 0.620 ± 0.020 (3) | — |" in text  # AP, not Dice 0.900
    assert "| diffseg | 20% | 0.310 ± 0.010 (3) | 0.670 ± 0.020 (3) | 0.900 ± 0.000 (3) |" in text
    diffs = [0.10, 0.12, 0.05]
    h = sweep.t_quantile_975(2) * sweep.mean_sd(diffs)[1] / math.sqrt(3)
    m = sum(diffs) / 3
    assert f"| diffseg | supervised | {m:+.3f} [{m - h:+.3f}, {m + h:+.3f}] (3) |" in text
    assert f"diffseg as a share of supervised at 100 % labels (0.800, n = 3): 20%: {0.62 / 0.8:.1%}" in text
    assert "| diffseg | 20% | 0.900 ± 0.000 (3) | 0.890 ± 0.000 (3) |" in text  # pixel Dice both sides


def test_experiment_command_passes_the_task(tmp_path: Path) -> None:
    cmd = sweep.experiment_command(
        tmp_path, tmp_path / "r.json", "cps", 0.2, 1, "cpu", 1, {"a": 1}, "instances"
    )
    assert cmd[cmd.index("--task") + 1] == "instances" and "--classes" not in cmd
    assert cmd[cmd.index("--set") + 1] == "a=1"
    cmd = sweep.experiment_command(
        tmp_path, tmp_path / "r.json", "cps", 0.2, 1, "cpu", 1, None, "multiclass", "bg,a"
    )
    assert cmd[cmd.index("--classes") + 1] == "bg,a"
    assert "--task" not in sweep.experiment_command(tmp_path, tmp_path / "r.json", "cps", 0.2, 1, "cpu", 1)


def test_teacher_test_reaches_diffseg_arms_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--teacher-test adds the experiment's flag to diffseg arms; a baseline's command (which would refuse
    it) is what it was."""
    calls: list[list[str]] = []
    monkeypatch.setattr(sweep.subprocess, "call", lambda cmd, **kw: calls.append(cmd) or 0)
    for arm in ("diffseg-Tval", "cps"):
        assert sweep.run_one(tmp_path, tmp_path, arm, 0.1, 0, "cpu", 1, teacher_test=True) == 0
    assert sweep.run_one(tmp_path, tmp_path, "diffseg-Tval", 0.1, 1, "cpu", 1) == 0
    assert ["--teacher-test" in c for c in calls] == [True, False, False]


def test_glas_object_figures_per_test_part(tmp_path: Path) -> None:
    """GlaS runs get the challenge's per-part figures: object F1 from TP / FP / FN pooled over the part's
    images (not the mean of per-image F1s), object Dice and Hausdorff averaged over them."""

    def row(i: str, tp: int, fp: int, fn: int, dice: float, haus: float) -> dict:
        f1 = 2 * tp / (2 * tp + fp + fn)
        return {
            "id": i,
            "object_tp": tp,
            "object_fp": fp,
            "object_fn": fn,
            "object_f1": f1,
            "object_dice": dice,
            "object_hausdorff": haus,
        }

    per_image = [
        row("testA_1", 9, 1, 0, 0.8, 10.0),
        row("testA_2", 1, 0, 3, 0.6, 30.0),  # pooled over A: 2*10 / (20 + 1 + 3) = 0.833
        row("testB_1", 2, 2, 2, 0.5, 50.0),
    ]
    r = _run("supervised", 0.1, 0, 0.8, task="instances")
    r["test"] = {"dice_mean": 0.8, "n": 3, "ap_50": 0.5, "object_f1": 0.6, "per_image": per_image}
    _write(tmp_path, "supervised", 0.1, 0, r)
    text = sweep.report(tmp_path)
    assert "| supervised | 10% | testA (2) | 0.833 (1) | 0.700 (1) | 20.0 (1) |" in text
    assert "| supervised | 10% | testB (1) | 0.500 (1) | 0.500 (1) | 50.0 (1) |" in text
    # ids without test parts (DSB's) get no such section
    r2 = dict(r, test={**r["test"], "per_image": [dict(x, id=f"img{n}") for n, x in enumerate(per_image)]})
    _write(tmp_path, "supervised", 0.1, 0, r2)
    assert "per test part" not in sweep.report(tmp_path)


def test_object_class_view_gives_each_object_its_images_class(tmp_path: Path) -> None:
    import numpy as np
    import tifffile

    ds = tmp_path / "glas"
    for sub in ("images", "instances"):
        (ds / sub).mkdir(parents=True)
    ids = np.zeros((8, 8), np.uint16)
    ids[1:3, 1:3], ids[5:7, 5:7] = 1, 4
    for name in ("a", "b", "c"):
        tifffile.imwrite(ds / "images" / f"{name}.tif", np.zeros((8, 8), np.uint8))
        tifffile.imwrite(ds / "instances" / f"{name}.tif", ids)
    (ds / "split.csv").write_text("id,split,grade\na,train,malignant\nb,train,benign\nc,test,malignant\n")
    view, classes = sweep.object_class_view(ds, "grade", tmp_path / "views")
    assert classes == "background,benign,malignant"  # sorted values, background first
    assert view.name == "glas-grade" and (view / "instances").is_symlink()
    a = tifffile.imread(view / "masks" / "a.tif")
    b = tifffile.imread(view / "masks" / "b.tif")
    assert np.array_equal(a, (ids > 0) * 2) and np.array_equal(b, (ids > 0) * 1)
    with pytest.raises(SystemExit, match="no column 'nope'"):
        sweep.object_class_view(ds, "nope", tmp_path / "views")


def test_object_class_runs_list_ap50_per_class_and_class_accuracy(tmp_path: Path) -> None:
    for s, (benign, malignant, acc) in enumerate([(0.5, 0.3, 0.8), (0.6, 0.5, 0.9), (0.7, 0.4, 0.7)]):
        r = _run("supervised", 0.2, s, 0.9, task="instances")
        r["test"] = {
            "dice_mean": 0.9,
            "n": 5,
            "ap_50": 0.5,
            "ap_50_per_class": {"benign": benign, "malignant": malignant},
            "class_accuracy": acc,
        }
        _write(tmp_path, "supervised", 0.2, s, r)
    text = sweep.report(tmp_path)
    assert "| AP@0.5 benign | AP@0.5 malignant | class accuracy |" in text
    assert "| 0.600 ± 0.100 (3) | 0.400 ± 0.100 (3) | 0.800 ± 0.100 (3) |" in text


def test_tuned_watershed_runs_report_tuned_minus_fixed_on_the_same_networks(tmp_path: Path) -> None:
    cmd = sweep.experiment_command(
        tmp_path,
        tmp_path / "r.json",
        "supervised",
        0.2,
        1,
        "cpu",
        1,
        None,
        "instances",
        None,
        "tuned",
        tmp_path / "m",
    )
    assert cmd[cmd.index("--watershed") + 1] == "tuned" and cmd[cmd.index("--model-out") + 1] == str(
        tmp_path / "m"
    )
    fixed = sweep.experiment_command(
        tmp_path, tmp_path / "r.json", "supervised", 0.2, 1, "cpu", 1, None, "instances"
    )
    assert fixed[fixed.index("--watershed") + 1] == "default" and "--model-out" not in fixed

    out = tmp_path / "ds-instances-tuned"
    out.mkdir()
    gains = [0.05, 0.03, 0.04]
    for seed, gain in enumerate(gains):
        test = {"dice_mean": 0.8, "n": 5, "ap_50": 0.5 + gain, "ap_50_default_watershed": 0.5}
        watershed = {
            "params": {
                "threshold": 0.5,
                "seed_threshold": 0.8,
                "seed_sigma": 1.0,
                "min_seed_size": 4,
                "min_size": 16,
            },
            "ap_50": 0.7,
            "ap_50_start": 0.65,
            "images": 3,
            "objects": 120,
            "runs": 30,
            "tuned": True,
        }
        _write(
            out,
            "supervised",
            0.2,
            seed,
            _run("supervised", 0.2, seed, 0.8, task="instances", test=test, watershed=watershed),
        )
    text = sweep.report(out)
    m, sd = sum(gains) / 3, math.sqrt(sum((g - sum(gains) / 3) ** 2 for g in gains) / 2)
    h = sweep.t_quantile_975(2) * sd / math.sqrt(3)
    assert "tuned − fixed" in text
    assert f"| supervised | {m:+.3f} [{m - h:+.3f}, {m + h:+.3f}] (3) |" in text
    assert (
        "| supervised | 20% | 0 | 120 | 0.650 → 0.700 | threshold 0.5, seed_threshold 0.8, seed_sigma 1"
        in text
    )
    assert "AP@0.5, fixed watershed" in text  # the extras table lists the defaults' figure


def test_readme_blocks_are_rewritten_from_the_jsons_and_the_rest_is_kept(tmp_path: Path) -> None:
    results = tmp_path / "results"
    out = results / "ds"
    out.mkdir(parents=True)
    for s, (d, sup) in enumerate([(0.80, 0.75), (0.82, 0.80), (0.78, 0.74)]):
        _write(out, "diffseg", 0.1, s, _run("diffseg", 0.1, s, d))
        _write(out, "supervised", 0.1, s, _run("supervised", 0.1, s, sup))
    _write(out, "supervised-converged", 1.0, 0, _run("supervised-converged", 1.0, 0, 0.9))
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nprose before\n", "\nprose after\n"
    readme.write_text(before + "<!-- evidence:ds -->\nstale table\n<!-- /evidence:ds -->" + after)
    assert sweep.update_readme(readme, results) == ["ds"]
    text = readme.read_text()
    assert text.startswith(
        before + "<!-- evidence:ds -->\n*Made from the 7 result JSONs of [`ds/`](results/ds/)"
    )
    assert text.endswith("<!-- /evidence:ds -->" + after) and "stale table" not in text
    assert f"| diffseg ({sweep.ARM_NOTES['diffseg']}) | 0.800 ± 0.020 (3) | — | 10 |" in text
    assert "| diffseg | supervised | +0.037 [" in text and "(3) |" in text
    # the share of converged full supervision (the goal's 95 % clause) is in the block too
    assert "diffseg as a share of supervised-converged at 100 % labels (0.900, n = 1): 10%: 88.9%" in text
    assert "](results/ds/dice.png)" in text
    assert sweep.update_readme(readme, results) == ["ds"] and readme.read_text() == text  # idempotent
    # a block naming a folder without results stops; the README is left as it was
    readme.write_text(text + "<!-- evidence:missing -->\n<!-- /evidence:missing -->\n")
    kept = readme.read_text()
    with pytest.raises(SystemExit, match="missing: no result JSONs"):
        sweep.update_readme(readme, results)
    assert readme.read_text() == kept


def _checks(students: list[float], teacher: list[float], rule: str) -> list[dict]:
    """Validation checks of a diffseg run whose gate was set by ``rule`` ("best" or "last")."""
    out, best = [], float("nan")
    for i, (d, t) in enumerate(zip(students, teacher, strict=True)):
        best = d if not best >= d else best
        ref = best if rule == "best" else d
        gate = sweep._gate_weight(t, ref, 0.05)
        out.append({"step": 50 * (i + 1), "val_dice": d, "val_best": best, "val_teacher": t, "gate": gate})
    return out


def test_gate_replay_tells_which_runs_the_current_rule_would_change(tmp_path: Path) -> None:
    prov = {"provenance": {"preset": {"pseudo_gate_margin": 0.05}}}
    # the students pass the teacher (0.70 > 0.60), then fall back below it (0.55): the rules part
    fall = [0.5, 0.7, 0.55, 0.6]
    teacher = [0.6, 0.6, 0.6, 0.6]
    old = {**prov, "validation": _checks(fall, teacher, "last")}
    new = {**prov, "validation": _checks(fall, teacher, "best")}
    assert sweep.gate_replay(old) == {"recorded_best": False, "recorded_last": True, "current": True}
    assert sweep.gate_replay(new) == {"recorded_best": True, "recorded_last": False, "current": False}
    # students that only improve: both rules give the same gate, so a best-rule run is a run of the last rule
    rise = {**prov, "validation": _checks([0.5, 0.6, 0.7, 0.8], teacher, "best")}
    assert sweep.gate_replay(rise)["current"]
    # a refresh (teacher 0.8 -> 0.66) after the students fell: the same gate at every check, but not on the
    # steps between the refresh and the next check (0.2 under the best-check rule, 1 under the last)
    refresh = {**prov, "validation": _checks([0.7, 0.5, 0.75], [0.8, 0.8, 0.66], "last")}
    assert sweep.gate_replay(refresh) == {"recorded_best": True, "recorded_last": True, "current": False}
    # a run with the reference gate: its recorded gate is the smaller of the two weights
    ref = {**prov, "validation": _checks([0.5, 0.7], [0.9, 0.9], "last")}
    ref["validation"][0] |= {"val_reference": 0.6, "gate": 0.0}  # 0.1 below labels alone: shut
    ref["validation"][1] |= {"val_reference": 0.68}  # above labels alone: the teacher's weight, 1
    assert sweep.gate_replay(ref)["recorded_last"]
    ref["validation"][0]["gate"] = 1.0  # the teacher gate alone: not what the reference rule gives
    assert not sweep.gate_replay(ref)["recorded_last"]
    # the fallback's labels-only student is scored at every check but gates nothing: the teacher gate alone
    fb_prov = {"provenance": {"preset": {"pseudo_gate_margin": 0.05, "pseudo_gate_reference": False}}}
    fb = {**ref, **fb_prov}
    assert sweep.gate_replay(fb) == {"recorded_best": True, "recorded_last": True, "current": True}
    assert not sweep.reference_gates(fb) and sweep.reference_gates(ref)
    # the report names the runs to run again
    out = tmp_path / "ds"
    out.mkdir()
    for seed, r, cpu in ((0, new, "AMD EPYC"), (1, rise, "Intel Xeon")):
        prov_cpu = {"provenance": {**r["provenance"], "processor": cpu, "threads": 1}}
        _write(out, "diffseg-noA", 0.1, seed, _run("diffseg-noA", 0.1, seed, 0.8, **{**r, **prov_cpu}))
    text = sweep.report(out)
    assert "(run again): diffseg-noA 10% seed 0." in text
    assert "AMD EPYC / Intel Xeon, 1 thread(s)." in text  # every machine the runs ran on
    _write(out, "diffseg-noA", 0.1, 0, _run("diffseg-noA", 0.1, 0, 0.8, **old))
    assert "every run's training got the gate the current rule gives" in sweep.report(out)
    assert "The reference gate" not in sweep.report(out)  # no run had one
    # runs with the reference gate: the mean weights of the teacher's pseudo-labels and of CPS
    for arm, cps in (("diffseg-ref", False), ("diffseg-refcps", True)):
        preset = {"pseudo_gate_margin": 0.05, "pseudo_gate_reference": True, "reference_gate_cps": cps}
        r = {"provenance": {"preset": preset}, "validation": [dict(v) for v in ref["validation"]]}
        r["validation"][0]["gate"] = 0.0
        _write(out, arm, 0.1, 0, _run(arm, 0.1, 0, 0.8, **r))
    text = sweep.report(out)
    # reference weights 0 (0.5 against 0.6) and 1 (0.7 against 0.68); gates 0 and 1
    assert "| diffseg-ref | 10% | 0 | 0.680 | 0.700 | 0.50 | 1.00 |" in text
    assert "| diffseg-refcps | 10% | 0 | 0.680 | 0.700 | 0.50 | 0.50 |" in text


def test_fallback_runs_say_what_they_deployed(tmp_path: Path) -> None:
    """The fallback table gives the twins' and the labels-only student's best validation Dice and what the
    run deployed, read from the run's checks and its closing log row; other runs get no table."""
    out = tmp_path / "ds"
    out.mkdir()
    preset = {"pseudo_gate_margin": 0.05, "reference_fallback": True, "pseudo_gate_reference": False}
    prov = {"provenance": {"preset": preset}}
    for seed, twins, alone in ((0, [0.6, 0.72], [0.7, 0.65]), (1, [0.6, 0.7], [0.74, 0.71])):
        checks = _checks(twins, [0.9, 0.9], "last")
        for c, a in zip(checks, alone, strict=True):
            c["val_reference"] = a
        deployed = float(max(alone) > max(twins))
        checks.append({"phase": "cotrain", "message": "kept the weights", "deployed_reference": deployed})
        _write(out, "diffseg-fb", 0.05, seed, _run("diffseg-fb", 0.05, seed, 0.8, **prov, validation=checks))
    _write(out, "diffseg-noA", 0.05, 0, _run("diffseg-noA", 0.05, 0, 0.8))
    text = sweep.report(out)
    assert "| diffseg-fb | 5% | 0 | 0.720 | 0.700 | twins |" in text
    assert "| diffseg-fb | 5% | 1 | 0.700 | 0.740 | labels-only student |" in text
    assert "| diffseg-noA | 5% | 0 |" not in text.split("The fallback to labels alone")[1]
    # its student gated nothing: not in the reference gate's table, and its gate is the current rule's
    assert "The reference gate (" not in text and "(run again)" not in text
    # the fallback is a candidate default: held to the references like the default
    assert ("diffseg-fb", "supervised") in [(a, r) for a in sweep.COMPARED for r in sweep.REFERENCES]


def test_validation_pick_deploys_the_run_that_validates_better(tmp_path: Path) -> None:
    """Per seed the pick is whichever of the default and supervised has the higher best validation Dice;
    its test Dice is paired with both runs."""
    out = tmp_path / "ds"
    out.mkdir()
    # (default best val, default test, supervised best val, supervised test) per seed
    cells = {0: (0.80, 0.82, 0.70, 0.75), 1: (0.60, 0.62, 0.66, 0.70), 2: (0.75, 0.70, 0.74, 0.72)}
    for s, (va, ta, vs, ts) in cells.items():
        checks = [{"step": 50, "val_dice": va - 0.1}, {"step": 100, "val_dice": va}]
        _write(out, "diffseg-noA", 0.1, s, _run("diffseg-noA", 0.1, s, ta, validation=checks))
        _write(out, "supervised", 0.1, s, _run("supervised", 0.1, s, ts, validation=[{"val_dice": vs}]))
    text = sweep.report(out)
    row = next(ln for ln in text.split("Deploying whichever")[1].splitlines() if ln.startswith("| 10% |"))
    # picks: the default (0.82), supervised (0.70), the default (0.70, the validation ranks it wrongly)
    picked = [0.82, 0.70, 0.70]
    m = sum(picked) / 3
    assert row.startswith(f"| 10% | {m:.3f} ± ") and "| 1 of 3 (seed 1) |" in row
    assert "| +0.027 [" in row  # picked − default: 0, +0.08, 0
    assert row.split(" | ")[-1].startswith("+0.017 [")  # picked − supervised: +0.07, 0, −0.02


def test_two_sweeps_share_the_runs_through_claims(tmp_path: Path) -> None:
    """A run claimed by a live process is not taken; one left by a dead process is; release frees it."""
    import os
    import subprocess

    target = sweep.result_path(tmp_path, "cps", 0.1, 0)
    assert sweep.claim(target)
    lock = target.with_suffix(".running")
    assert lock.read_text() == str(os.getpid())
    # another live process holds it: not ours to take
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock.write_text(str(other.pid))
        assert not sweep.claim(target)
        assert lock.read_text() == str(other.pid)
    finally:
        other.kill()
        other.wait()
    # its sweep died: the claim is stale and taken over
    assert sweep.claim(target)
    assert lock.read_text() == str(os.getpid())
    sweep.release(target)
    assert not lock.exists()
    sweep.release(target)  # releasing twice is harmless


def test_the_sweep_skips_a_run_another_sweep_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    ran: list[tuple[str, float, int]] = []

    def fake_run_one(dataset: Path, out: Path, arm: str, fraction: float, seed: int, *rest: object) -> int:
        ran.append((arm, fraction, seed))
        assert sweep.result_path(out, arm, fraction, seed).with_suffix(".running").exists()
        sweep.result_path(out, arm, fraction, seed).write_text("{}")
        return 0

    monkeypatch.setattr(sweep, "run_one", fake_run_one)
    monkeypatch.setattr(sweep, "write_report", lambda out: "report")
    real_claim = sweep.claim

    def claim_after_another_sweep_finished(target: Path) -> bool:
        if target.name.startswith("mean-teacher"):  # finished between the list and its turn
            target.write_text("{}")
        return real_claim(target)

    monkeypatch.setattr(sweep, "claim", claim_after_another_sweep_finished)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sweep.result_path(tmp_path, "cps", 0.1, 0).with_suffix(".running").write_text(str(other.pid))
        argv = ["sweep.py", "--dataset", str(tmp_path / "ds"), "--arms", "cps", "supervised", "mean-teacher"]
        argv += ["--fractions", "0.1", "--seeds", "0", "--out", str(tmp_path)]
        monkeypatch.setattr(sys, "argv", argv)
        sweep.main()
    finally:
        other.kill()
        other.wait()
    assert ran == [("supervised", 0.1, 0)]
    assert not sweep.result_path(tmp_path, "cps", 0.1, 0).exists()
    assert not sweep.result_path(tmp_path, "supervised", 0.1, 0).with_suffix(".running").exists()
    assert not sweep.result_path(tmp_path, "mean-teacher", 0.1, 0).with_suffix(".running").exists()


def test_teacher_test_section_applies_the_rule_on_validation_only() -> None:
    """The teacher replaces the deployed figure only where its validation Dice beats the deployed networks'
    best check (the labels-only student's when the fallback deployed it), never by its test Dice."""

    def run(
        dep: float, teacher: float, t_val: float, twins: list[float], ref: list[float] | None = None
    ) -> dict:
        checks = [{"phase": "cotrain", "step": 50 * (i + 1), "val_dice": v} for i, v in enumerate(twins)]
        for c, v in zip(checks, ref or [], strict=False):
            c["val_reference"] = v
        return {
            "test": {"dice_mean": dep},
            "test_teacher": {"dice_mean": teacher, "val_dice": t_val},
            "validation": checks,
        }

    by = {
        ("diffseg-Tval", 0.1): {
            0: run(0.70, 0.78, 0.74, [0.60, 0.72]),  # teacher validates above the twins: taken
            1: run(0.75, 0.60, 0.70, [0.71, 0.69]),  # below: the deployed figure stays
            2: run(0.72, 0.90, 0.73, [0.70, 0.71], ref=[0.74, 0.66]),  # below the labels-only student
        },
        ("cps", 0.1): {s: {"test": {"dice_mean": 0.71}} for s in range(3)},
    }
    lines = sweep._teacher_test_section(by)
    rows = {ln.split(" | ")[2]: ln for ln in lines if ln.startswith("| diffseg-Tval")}
    assert rows["0"].endswith("| 0.780 (teacher) |") and rows["1"].endswith("| 0.750 |")
    assert rows["2"].endswith("| 0.720 |") and "| 0.740 |" in rows["2"]  # deployed's best: the reference
    # rule − deployed: +0.08, 0, 0 over three seeds; rule − cps: 0.78 − 0.71, 0.75 − 0.71, 0.72 − 0.71
    assert "rule − deployed +0.027 [" in rows["paired (n)"] and "rule − cps +0.040 [" in rows["paired (n)"]
    assert "teacher − deployed +0.037 [" in rows["paired (n)"]
    assert sweep._teacher_test_section({("cps", 0.1): by[("cps", 0.1)]}) == []


def test_a_tkeep_run_with_the_teacher_test_gives_the_tbest_result_and_a_real_run_wins(tmp_path: Path) -> None:
    """load(): a diffseg-Tkeep run made with --teacher-test also gives diffseg-Tbest's result at its fraction
    and seed (the same training; the rule on its validation figures), unless a diffseg-Tbest JSON exists."""

    def run(seed: int, dep: float, teacher: float, t_val: float, twins: list[float], **extra) -> dict:
        checks = [{"phase": "cotrain", "step": 50 * (i + 1), "val_dice": v} for i, v in enumerate(twins)]
        return {
            "labeled_fraction": 0.1,
            "seed": seed,
            "overrides": {"teacher_keep_best": True},
            "test": {"dice_mean": dep, "per_image": [{"id": "a", "dice": dep}]},
            "test_teacher": {
                "dice_mean": teacher,
                "per_image": [{"id": "a", "dice": teacher}],
                "val_dice": t_val,
                "sampler": {},
                "note": "",
            },
            "validation": checks,
            **extra,
        }

    runs = {
        "diffseg-Tkeep_f0.1_s0.json": run(0, 0.70, 0.78, 0.74, [0.60, 0.72]),  # the teacher validates above
        "diffseg-Tkeep_f0.1_s1.json": run(1, 0.75, 0.60, 0.70, [0.71, 0.69]),  # below: the students stay
        "diffseg-Tkeep_f0.1_s2.json": run(2, 0.72, 0.90, 0.80, [0.70]),
        "diffseg-Tbest_f0.1_s2.json": {**run(2, 0.66, 0.90, 0.80, [0.70]), "deployed": "students"},
    }
    del runs["diffseg-Tbest_f0.1_s2.json"]["test_teacher"]
    for name, r in runs.items():
        (tmp_path / name).write_text(json.dumps(r))
    by = sweep.load(tmp_path)
    best = by[("diffseg-Tbest", 0.1)]
    assert best[0]["deployed"] == "teacher" and sweep.score(best[0]) == 0.78
    assert best[0]["test"]["per_image"] == [{"id": "a", "dice": 0.78}]
    assert best[0]["derived_from"] == "diffseg-Tkeep_f0.1_s0.json"
    assert best[0]["overrides"] == {"teacher_keep_best": True, "deploy_best": True}
    assert best[1]["deployed"] == "students" and sweep.score(best[1]) == 0.75
    assert sweep.score(best[2]) == 0.66 and "derived_from" not in best[2]  # its own run, not the derivation
    assert sweep.score(by[("diffseg-Tkeep", 0.1)][0]) == 0.70  # the source run is unchanged
    assert ("diffseg-Tmean", 0.1) not in by  # no run scored the teacher-student mean
    # the teacher-test section lists the Tkeep runs, not the derived ones
    rows = [ln for ln in sweep._teacher_test_section(by) if ln.startswith("| diffseg-")]
    assert {ln.split(" | ")[0] for ln in rows} == {"| diffseg-Tkeep"}


def test_a_tkeep_run_that_scored_the_mean_gives_the_tmean_result(tmp_path: Path) -> None:
    """diffseg-Tmean's rule on a diffseg-Tkeep run's --teacher-test figures: the teacher-student mean only
    where it validates above both the students and the teacher, else diffseg-Tbest's choice."""

    def run(seed: int, twins: float, t_val: float, m_val: float) -> dict:
        return {
            "labeled_fraction": 0.05,
            "seed": seed,
            "overrides": {"teacher_keep_best": True},
            "test": {"dice_mean": 0.70},
            "test_teacher": {
                "dice_mean": 0.72,
                "val_dice": t_val,
                "ensemble": {"dice_mean": 0.74, "per_image": [{"id": "a", "dice": 0.74}], "val_dice": m_val},
            },
            "validation": [{"phase": "cotrain", "step": 50, "val_dice": twins}],
        }

    cases = {
        0: run(0, 0.80, 0.81, 0.82),  # the mean validates best: deployed
        1: run(1, 0.80, 0.81, 0.81),  # the mean ties the teacher: the cheaper teacher
        2: run(2, 0.80, 0.79, 0.80),  # the mean ties the students: the students
        3: run(3, 0.80, 0.79, 0.83),  # the mean above both, the teacher below the students
    }
    for s, r in cases.items():
        (tmp_path / f"diffseg-Tkeep_f0.05_s{s}.json").write_text(json.dumps(r))
    by = sweep.load(tmp_path)
    mean, best = by[("diffseg-Tmean", 0.05)], by[("diffseg-Tbest", 0.05)]
    assert [mean[s]["deployed"] for s in range(4)] == [
        "teacher+students",
        "teacher",
        "students",
        "teacher+students",
    ]
    assert [sweep.score(mean[s]) for s in range(4)] == [0.74, 0.72, 0.70, 0.74]
    assert mean[0]["test"] == {"dice_mean": 0.74, "per_image": [{"id": "a", "dice": 0.74}]}
    assert mean[0]["overrides"] == {"teacher_keep_best": True, "deploy_best": True, "deploy_mean": True}
    assert [best[s]["deployed"] for s in range(4)] == ["teacher", "teacher", "students", "students"]
    assert "ensemble" not in best[1]["test"]
    # the teacher-test section shows the mean and its validation Dice beside the teacher's
    rows = {
        ln.split(" | ")[2]: ln for ln in sweep._teacher_test_section(by) if ln.startswith("| diffseg-Tkeep")
    }
    assert "| 0.720 | 0.810 | 0.740 | 0.820 | 0.800 |" in rows["0"]
    assert "mean − deployed +0.040 [" in rows["paired (n)"]
