"""Every mask entering a project is checked against its task (issue 13): at import, at a saved correction
(store, HTTP API, CLI) and when a job loads it. A refused mask changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient

from napari_diffseg.base.masks import MaskError, check_task_mask
from napari_diffseg.base.task import make_task
from napari_diffseg.cli import main
from napari_diffseg.data.synthetic import make_sample_dataset
from napari_diffseg.project import Project

SIZE = 80


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _grey(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE), dtype=np.uint8)


def _many_ids() -> np.ndarray:
    """400 objects, ids 1..400, each a 4 x 4 block (an over-segmentation or instance export)."""
    return np.kron(np.arange(1, 401, dtype=np.uint16).reshape(20, 20), np.ones((4, 4), np.uint16))


def _blobs(ids: int = 3) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.uint16)
    for k in range(ids):
        m[5 + 25 * k : 20 + 25 * k, 10:30] = k + 1
    return m


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------ the rule


def test_binary_takes_one_or_two_foreground_values_and_refuses_more() -> None:
    one = _blobs(1)
    assert check_task_mask(one, "binary").notes == []
    assert not check_task_mask(one * 255, "binary").notes  # 0/255: nothing to say
    two = check_task_mask(_blobs(2), "binary")
    assert set(np.unique(two.mask)) == {0, 1} and "values 1, 2 all taken as foreground" in two.notes[0]
    with pytest.raises(MaskError, match=r"m\.tif holds 400 different labels .*binary project.*--binarize"):
        check_task_mask(_many_ids(), "binary", source="m.tif")
    assert set(np.unique(check_task_mask(_many_ids(), "binary", binarize=True).mask)) == {1}
    with pytest.raises(MaskError, match="400 distinct values"):
        check_task_mask(_many_ids(), "multiclass(3)")
    assert check_task_mask(_many_ids(), "instances").num_objects == 400


# ------------------------------------------------------------------------------------------ import


@pytest.fixture
def images_and_masks(tmp_path: Path) -> tuple[Path, Path]:
    images, masks = tmp_path / "images_in", tmp_path / "masks_in"
    images.mkdir()
    masks.mkdir()
    for name in ("a", "b"):
        iio.imwrite(images / f"{name}.png", _grey(ord(name)))
    tifffile.imwrite(masks / "a.tif", _blobs(1))
    tifffile.imwrite(masks / "b.tif", _many_ids())
    return images, masks


def test_import_refuses_a_mask_that_does_not_fit_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, images_and_masks: tuple[Path, Path]
) -> None:
    images, masks = images_and_masks
    for task in (["--task", "binary"], ["--task", "multiclass", "--classes", "background,a,b"]):
        root = tmp_path / f"p-{task[1]}"
        assert _run(capsys, "init", str(root), *task)[0] == 0
        before = _files(root)
        rc, _, err = _run(capsys, "import", str(root), str(images), "--masks", str(masks))
        assert rc == 2 and "b.tif holds 400" in err and len(err.strip().splitlines()) == 1, err
        assert _files(root) == before
        with Project.open(root) as proj:
            assert proj.counts()["images"] == 0 and proj.counts()["annotations"] == 0
    # --binarize: the 400 objects become foreground of a binary project
    root = tmp_path / "p-binary"
    rc, _out, err = _run(capsys, "import", str(root), str(images), "--masks", str(masks), "--binarize")
    assert rc == 0, err
    with Project.open(root) as proj:
        assert set(np.unique(proj.load_annotation("b"))) == {1}
        assert set(np.unique(proj.load_annotation("a"))) == {0, 1}
    # init checks every mask before creating the project
    rc, _, err = _run(capsys, "init", str(tmp_path / "new"), "--images", str(images), "--masks", str(masks))
    assert rc == 2 and "b.tif holds 400 different labels" in err and not (tmp_path / "new").exists()


def test_multiclass_mask_values_must_be_below_k(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = tmp_path / "p"
    with Project.create(root, task=make_task("multiclass", "background,a,b")) as proj:
        proj.import_array(_grey(0), "img", _blobs(2))
        assert int(proj.load_annotation("img").max()) == 2  # class values kept
        with pytest.raises(MaskError, match="the project has 3 classes"):
            proj.import_array(_grey(1), "img2", _blobs(3))
        assert [r.name for r in proj.images()] == ["img"]


def test_an_instance_project_imports_the_datasets_instances(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ds = make_sample_dataset(
        tmp_path / "ds", n_train=2, n_test=1, size=(64, 64), seed=2, kind="nuclei", instances=True
    )
    root = tmp_path / "p"
    rc, _out, err = _run(capsys, "init", str(root), "--images", str(ds), "--task", "instances")
    assert rc == 0, err
    with Project.open(root) as proj:
        for name in ("train_000", "train_001"):
            stored = proj.load_annotation(name)
            assert np.array_equal(stored, tifffile.imread(ds / "instances" / f"{name}.tif"))
            assert int(stored.max()) > 1  # one id per object, not the binary masks/
    # an id covering two separate pieces is refused, naming the id
    bad = _blobs(2)
    bad[bad == 2] = 1
    with Project.open(root) as proj, pytest.raises(MaskError, match="id 1 covers 2 separate parts"):
        proj.import_array(_grey(3), "two-pieces", bad)


# ------------------------------------------------------------------------------------------ corrections


def test_a_correction_is_checked_in_the_store(tmp_path: Path) -> None:
    with Project.create(tmp_path / "b") as proj:
        proj.import_array(_grey(0), "img")
        before = _files(proj.root)
        with pytest.raises(MaskError, match="the mask of image 'img' holds 400 different labels"):
            proj.save_annotation("img", _many_ids(), replaces=None)
        assert _files(proj.root) == before and proj.annotation("img") is None
        assert proj.image("img").state == "unlabeled"
        assert proj.save_annotation("img", _blobs(2), replaces=None) == 1  # two labels: kept as painted
        assert int(proj.load_annotation("img").max()) == 2
        assert proj.save_annotation("img", _many_ids(), replaces=1, binarize=True) == 2
        assert set(np.unique(proj.load_annotation("img"))) == {1}
    with Project.create(tmp_path / "m", task=make_task("multiclass", "background,a,b")) as proj:
        proj.import_array(_grey(0), "img")
        with pytest.raises(MaskError, match="holds 4 distinct values"):
            proj.save_annotation("img", _blobs(3), replaces=None)
        assert proj.annotation("img") is None
    with Project.create(tmp_path / "i", task=make_task("instances")) as proj:
        proj.import_array(_grey(0), "img")
        ids = _many_ids()
        ids[ids == 7] = 9000  # any ids, as napari paints them
        assert proj.save_annotation("img", ids, replaces=None) == 1
        assert np.array_equal(proj.load_annotation("img"), ids)


def test_a_correction_is_checked_by_the_api_and_the_cli(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from napari_diffseg.backend import codec
    from napari_diffseg.backend.app import create_app

    root = tmp_path / "p"
    with Project.create(root) as proj:
        proj.import_array(_grey(0), "img")
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as http:
        url = "/api/v1/images/img/annotations"
        headers = {"Content-Type": codec.NPY}
        r = http.post(url, content=codec.to_npy(_many_ids()), headers=headers)
        assert r.status_code == 422 and "400 different labels" in r.json()["detail"]
        assert http.get("/api/v1/images/img/annotations").json() == []
        r = http.post(url + "?binarize=true", content=codec.to_npy(_many_ids()), headers=headers)
        assert r.status_code == 201 and r.json()["annotation"]["labels"] == 1
    tifffile.imwrite(tmp_path / "many.tif", _many_ids())
    rc, _, err = _run(capsys, "correct", str(root), "img", str(tmp_path / "many.tif"))
    assert rc == 2 and "many.tif holds 400 different labels" in err
    rc, _, err = _run(capsys, "correct", str(root), "img", str(tmp_path / "many.tif"), "--binarize")
    assert rc == 0, err
    rc, _, err = _run(capsys, "correct", str(root), "img", str(tmp_path / "many.tif"), "--multiclass")
    assert rc == 2 and "--task multiclass" in err


# ------------------------------------------------------------------------------------------ jobs


def test_a_job_trains_a_binary_project_on_foreground_with_a_note(tmp_path: Path) -> None:
    """An older binary project's correction painted with labels 1 and 2 trains 2 classes, not 3."""
    from napari_diffseg.backend.jobs import _training_data
    from napari_diffseg.base.presets import get_preset

    root = tmp_path / "p"
    with Project.create(root) as proj:
        proj.import_array(_grey(0), "img")
        proj.save_annotation("img", _blobs(2), replaces=None)
        notes: list[str] = []
        data, counts = _training_data(proj, 1, get_preset("tiny"), notes=notes)
    assert counts["labeled"] == 1 and set(np.unique(data.labeled_masks[0].numpy())) == {0, 1}
    assert notes and "all taken as foreground" in notes[0]


def test_a_job_refuses_a_stored_mask_that_does_not_fit(tmp_path: Path) -> None:
    """A mask that no longer fits the task (here: the stored task was edited) fails the job with a
    message naming the image."""
    import sqlite3

    from napari_diffseg.backend.jobs import BadImage, _training_data
    from napari_diffseg.base.presets import get_preset

    root = tmp_path / "p"
    with Project.create(root, task=make_task("multiclass", "background,a,b")) as proj:
        proj.import_array(_grey(0), "img")
        proj.save_annotation("img", _blobs(2), replaces=None)
    con = sqlite3.connect(root / "project.db")
    con.execute(
        "UPDATE meta SET value = ? WHERE key = 'task'",
        (json.dumps(make_task("multiclass", "background,a").to_dict()),),
    )
    con.commit()
    con.close()
    with Project.open(root) as proj, pytest.raises(BadImage, match=r"'img'.*does not fit the project's task"):
        _training_data(proj, 1, get_preset("tiny"))
