"""The diffseg store subcommands: init, import, correct, check, images (docs/architecture.md §2.3)."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_diffseg.cli import main
from napari_diffseg.project import Project


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _assert_one_line_error(rc: int, err: str) -> None:
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from napari_diffseg.data.synthetic import make_sample_dataset

    return make_sample_dataset(tmp_path_factory.mktemp("ds") / "ds", n_train=4, n_test=2, size=(64, 64))


def test_init_import_correct_check_images(capsys, dataset: Path, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    rc, out, err = _run(capsys, "init", str(proj), "--images", str(dataset))
    assert rc == 0, err
    assert "created project" in out and "6 new image(s)" in out and "6 mask(s)" in out

    rc, out, _ = _run(capsys, "images", str(proj), "--json")
    listed = json.loads(out)
    assert rc == 0 and len(listed) == 6
    assert set(listed[0]) == {
        "id",
        "name",
        "state",
        "uncertainty",
        "split",
        "axes",
        "shape",
        "channel_names",
        "plane",
    }
    assert {r["split"] for r in listed} == {"train", "test"}
    rc, out, _ = _run(capsys, "images", str(proj), "--split", "test")
    assert rc == 0 and "test_000" in out and "train_000" not in out

    # import: a new file, a file already in the project
    new_img = tmp_path / "extra.png"
    iio.imwrite(new_img, np.random.default_rng(0).integers(0, 255, (48, 56), dtype=np.uint8))
    rc, out, err = _run(
        capsys, "import", str(proj), str(new_img), str(dataset / "images" / "train_000.png"), "--json"
    )
    assert rc == 0, err
    result = json.loads(out)
    assert len(result["added"]) == 1 and len(result["existing"]) == 1

    # correct by name: replaces the current latest version by default
    mask = np.zeros((64, 64), np.uint8)
    mask[8:24, 8:24] = 255
    mask_file = tmp_path / "fix.png"
    iio.imwrite(mask_file, mask)
    rc, out, err = _run(capsys, "correct", str(proj), "train_000", str(mask_file))
    assert rc == 0, err
    assert "version 2" in out
    with Project.open(proj) as p:
        np.testing.assert_array_equal(p.load_annotation("train_000"), (mask > 0).astype(np.int64))
        assert p.image("train_000").state == "corrected"
        image_id = p.image("train_000").id
    rc, out, err = _run(capsys, "correct", str(proj), image_id, str(mask_file), "--replaces", "2", "--json")
    assert rc == 0, err
    assert json.loads(out)["version"] == 3 and json.loads(out)["replaces"] == 2

    rc, out, _ = _run(capsys, "check", str(proj), "--json")
    report = json.loads(out)
    assert rc == 0 and report == {"ok": True, "images": 7, "annotations": 8, "models": 0, "problems": []}
    rc, out, _ = _run(capsys, "check", str(proj))
    assert rc == 0 and "ok" in out


def test_check_exits_1_on_a_damaged_project(capsys, dataset: Path, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    assert _run(capsys, "init", str(proj), "--images", str(dataset))[0] == 0
    victim = next((proj / "images").glob("*.tif"))
    victim.write_bytes(victim.read_bytes() + b"tampered")
    rc, out, _ = _run(capsys, "check", str(proj), "--json")
    report = json.loads(out)
    assert rc == 1 and report["ok"] is False and len(report["problems"]) == 1
    assert victim.name in report["problems"][0]
    rc, out, _ = _run(capsys, "check", str(proj))
    assert rc == 1 and "NOT OK" in out


def test_init_with_images_and_masks_folders(capsys, dataset: Path, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    rc, _, err = _run(
        capsys, "init", str(proj), "--images", str(dataset / "images"), "--masks", str(dataset / "masks")
    )
    assert rc == 0, err
    with Project.open(proj) as p:
        assert len(p.images(state="ground_truth")) == 6
        assert {r.split for r in p.images()} == {"train"}  # a plain folder has no split.csv


def test_bad_input_exits_2_with_one_line_and_changes_nothing(capsys, dataset: Path, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    assert _run(capsys, "init", str(proj), "--images", str(dataset))[0] == 0
    db_files = sorted(p.name for p in (proj / "images").iterdir())

    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 64)
    _assert_one_line_error(*_run(capsys, "correct", str(proj), "train_000", str(corrupt))[::2])
    nan = np.ones((64, 64), np.float32)
    nan[0, 0] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    rc, _, err = _run(capsys, "import", str(proj), str(tmp_path / "nan.tif"))
    _assert_one_line_error(rc, err)
    assert "NaN" in err
    small = tmp_path / "small.png"
    iio.imwrite(small, np.zeros((32, 32), np.uint8))
    rc, _, err = _run(capsys, "correct", str(proj), "train_000", str(small))
    _assert_one_line_error(rc, err)
    rc, _, err = _run(capsys, "correct", str(proj), "no_such_image", str(small))
    _assert_one_line_error(rc, err)
    assert "diffseg images" in err
    good = tmp_path / "good.png"
    iio.imwrite(good, np.zeros((64, 64), np.uint8))
    rc, _, err = _run(capsys, "correct", str(proj), "train_000", str(good), "--replaces", "7")
    _assert_one_line_error(rc, err)
    assert "latest version is 1" in err
    rc, _, err = _run(capsys, "init", str(proj))
    _assert_one_line_error(rc, err)
    rc, _, err = _run(capsys, "images", str(tmp_path / "nowhere"))
    _assert_one_line_error(rc, err)
    rc, _, err = _run(capsys, "check", str(tmp_path))
    _assert_one_line_error(rc, err)
    rc, _, err = _run(capsys, "init", str(tmp_path / "p2"), "--masks", str(dataset / "masks"))
    _assert_one_line_error(rc, err)

    with Project.open(proj) as p:
        assert sorted(q.name for q in (proj / "images").iterdir()) == db_files
        assert all(len(p.annotation_versions(r.id)) == 1 for r in p.images())
        assert p.check()["ok"]


def test_init_with_a_bad_dataset_creates_nothing(capsys, dataset: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "images" / "a.png").write_bytes((dataset / "images" / "train_000.png").read_bytes())
    (bad / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    proj = tmp_path / "proj"
    rc, _, err = _run(capsys, "init", str(proj), "--images", str(bad))
    _assert_one_line_error(rc, err)
    assert "b.png" in err and not proj.exists()


def test_predict_and_evaluate_take_a_project_and_image_folders(capsys, dataset: Path, tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    assert _run(capsys, "init", str(proj), "--images", str(dataset))[0] == 0
    rc, _, err = _run(capsys, "predict", str(proj), str(dataset / "images"), "--out", str(tmp_path / "m"))
    assert rc == 2 and "no model yet" in err  # a project before any training: say what to do
    assert _run(capsys, "cotrain", str(proj), "--preset", "tiny")[0] == 0
    rc, out, err = _run(capsys, "predict", str(proj), str(dataset / "images"), "--out", str(tmp_path / "m"))
    assert rc == 0, err
    written = sorted(p.name for p in (tmp_path / "m").glob("*.tif"))  # label TIFFs named FILE.tif
    assert written == sorted(p.name + ".tif" for p in (dataset / "images").iterdir())
    overlays = sorted(p.name for p in (tmp_path / "m").glob("*.overlay.png"))  # one to look at per mask
    assert overlays == sorted(p.name + ".overlay.png" for p in (dataset / "images").iterdir())
    assert iio.imread(tmp_path / "m" / written[0]).shape == (64, 64)
    rc, out, err = _run(capsys, "evaluate", str(proj), str(dataset), "--json", "-")
    assert rc == 0, err
    result = json.loads(out)
    with Project.open(proj) as project:
        active = project.active_model()
        assert active is not None
        assert result["model"] == str(project.model_dir(active.id)) and result["n"] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = _run(capsys, "predict", str(proj), str(empty), "--out", str(tmp_path / "m2"))
    _assert_one_line_error(rc, err)
    assert "holds no images" in err
