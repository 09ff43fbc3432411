"""Instance and multiclass projects end to end (issue 13), through the CLI and the HTTP API at the tiny
preset: corrections stored as napari paints them (instance ids, class values), converted to the training
target in the backend, 3-class (instances) or K-class (multiclass) teacher and students, proposals as
objects for the GUI, per-class Dice, predict's summary."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient

from napari_diffseg.base.task import make_task
from napari_diffseg.cli import main
from napari_diffseg.core.checkpoint import load_model_files
from napari_diffseg.core.instances import instances_to_target, proposal_instances
from napari_diffseg.data.synthetic import make_sample_dataset
from napari_diffseg.project import Project

TINY = ["--preset", "tiny", "--threads", "1", "--quiet"]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nuclei") / "ds"
    return make_sample_dataset(
        root, n_train=5, n_test=1, size=(64, 64), seed=4, kind="nuclei", instances=True
    )


def _fill(proj: Project, ds: Path, mask_of) -> None:  # type: ignore[no-untyped-def]
    """train_000, train_001 annotated (ground truth), train_002, train_003 unlabeled, train_004 annotated in val."""
    for k in range(5):
        name = f"train_{k:03d}"
        split = "val" if k == 4 else "train"
        proj.import_array(iio.imread(ds / "images" / f"{name}.png"), name, split=split)
        if k in (0, 1, 4):
            proj.save_annotation(name, mask_of(name), kind="ground_truth", replaces=None)


def test_an_instance_project_end_to_end(
    capsys: pytest.CaptureFixture[str], nuclei: Path, tmp_path: Path
) -> None:
    from napari_diffseg.backend import codec
    from napari_diffseg.backend.app import create_app

    root = tmp_path / "p"
    with Project.create(root, task=make_task("instances")) as proj:
        _fill(proj, nuclei, lambda n: tifffile.imread(nuclei / "instances" / f"{n}.tif"))
        stored = proj.load_annotation("train_000")
        assert int(stored.max()) > 2  # the object ids as painted, never the 3-class target
    rc, out, err = _run(capsys, "cotrain", str(root), *TINY)
    assert rc == 0, err
    assert "objects: AP@0.5" in out  # the validation line of an instance project
    with Project.open(root) as proj:
        active = proj.active_model()
        assert active is not None
        _, config, _ = load_model_files(proj.model_dir(active.id))
        assert config["task"] == "instances" and config["spec"]["num_classes"] == 3
        assert {"val_dice", "val_ap_50", "val_f1_50"} <= set(active.metrics)
    rc, _, err = _run(
        capsys, "propose", str(root), "--ids", "train_002", "--steps", "1", "--samples", "2", *TINY
    )
    assert rc == 0, err
    with Project.open(root) as proj:
        found = proj.proposal("train_002")
        assert found is not None
        prop, probs, _unc = found
        assert prop.classes == 3 and probs.shape == (3, 64, 64)
    # the API gives the proposal as objects (what the Annotate widget shows as an instance Labels layer)
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as http:
        r = http.get("/api/v1/images/train_002/proposal/pixels?part=instances")
        assert r.status_code == 200, r.text
        ids = codec.from_npy(r.content)
        assert ids.dtype == np.uint16 and np.array_equal(ids, proposal_instances(probs))
        # a correction in napari's natural form: erase one object, paint a new one with a new id
        edited = ids.astype(np.uint16).copy()
        if edited.max() > 0:
            edited[edited == edited.max()] = 0
        edited[2:10, 2:10] = 900
        r = http.post(
            f"/api/v1/images/train_002/annotations?kind=correction&proposal_id={prop.id}",
            content=codec.to_npy(edited),
            headers={"Content-Type": codec.NPY},
        )
        assert r.status_code == 201, r.text
        ann = r.json()["annotation"]
        fg_changed = int(np.count_nonzero((ids > 0) != (edited > 0)))
        assert ann["pixels_changed"] == fg_changed and 0.0 <= ann["edit_dice"] <= 1.0
    with Project.open(root) as proj:
        assert np.array_equal(proj.load_annotation("train_002"), edited)  # stored as painted
    # predict writes one id per object and says so
    img = nuclei / "images" / "test_000.png"
    rc, out, err = _run(capsys, "predict", str(root), str(img), "--out", str(tmp_path / "out"), "--quiet")
    assert rc == 0, err
    assert "one id per object, 0 = background" in out and "1 = foreground" not in out
    assert tifffile.imread(tmp_path / "out" / "test_000.png.tif").dtype == np.uint16


def test_the_job_trains_on_the_3_class_target(nuclei: Path, tmp_path: Path) -> None:
    from napari_diffseg.backend.jobs import _training_data
    from napari_diffseg.base.presets import get_preset

    with Project.create(tmp_path / "p", task=make_task("instances")) as proj:
        _fill(proj, nuclei, lambda n: tifffile.imread(nuclei / "instances" / f"{n}.tif"))
        data, counts = _training_data(proj, 3, get_preset("tiny"))
    assert counts == {"labeled": 2, "unlabeled": 2, "val": 1}
    ids = tifffile.imread(nuclei / "instances" / "train_000.tif")
    assert np.array_equal(data.labeled_masks[0].numpy(), instances_to_target(ids))
    assert data.val is not None and set(np.unique(data.val.masks[0].numpy())) <= {0, 1, 2}


def test_a_multiclass_project_trains_k_classes_and_reports_dice_per_class(
    capsys: pytest.CaptureFixture[str], nuclei: Path, tmp_path: Path
) -> None:
    root = tmp_path / "p"
    task = make_task("multiclass", "background,nucleus,rim")
    with Project.create(root, task=task) as proj:
        _fill(proj, nuclei, lambda n: instances_to_target(tifffile.imread(nuclei / "instances" / f"{n}.tif")))
    rc, out, err = _run(capsys, "cotrain", str(root), *TINY, "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert {"val_dice", "val_dice_class1", "val_dice_class2"} <= set(summary["metrics"])
    with Project.open(root) as proj:
        active = proj.active_model()
        assert active is not None
        _, config, _ = load_model_files(proj.model_dir(active.id))
    assert config["task"] == "multiclass" and config["spec"]["num_classes"] == 3
    assert [c["name"] for c in config["classes"]] == ["background", "nucleus", "rim"]
    # the validation line names the classes
    from napari_diffseg.cli import _val_line

    line = _val_line(summary["metrics"], task)
    assert "nucleus" in line and "rim" in line
    img = nuclei / "images" / "test_000.png"
    rc, out, err = _run(capsys, "predict", str(root), str(img), "--out", str(tmp_path / "out"), "--quiet")
    assert rc == 0 and "0 = background, 1 = nucleus, 2 = rim" in out, err


def test_dice_per_class_hand_computed() -> None:
    from napari_diffseg.core.metrics import dice_per_class, mean_per_class

    pred = np.array([[0, 1, 1], [2, 2, 0]])
    true = np.array([[0, 1, 2], [2, 2, 0]])
    d = dice_per_class(pred, true, 4)
    assert d[:2] == pytest.approx([2 * 1 / 3, 2 * 2 / 5]) and np.isnan(d[2])  # class 3 in neither map
    assert mean_per_class([d, [0.5, np.nan, 1.0]]) == pytest.approx([(2 / 3 + 0.5) / 2, 0.8, 1.0])


def test_instances_part_is_refused_outside_an_instance_project(tmp_path: Path) -> None:
    import torch

    from napari_diffseg.backend import jobs as jobs_mod
    from napari_diffseg.backend.app import create_app
    from napari_diffseg.base.presets import get_preset

    root = tmp_path / "p"
    with Project.create(root) as proj:
        proj.import_array(np.zeros((16, 16), np.uint8), "img")
        preset = get_preset("tiny")
        bundle = jobs_mod._new_bundle(proj, 1, preset, 0, torch.device("cpu"))
        mid = jobs_mod._save_model(proj, bundle, "m", round=0, preset=preset, metrics={})
        probs = np.full((2, 16, 16), 0.5, np.float32)
        proj.save_proposal(mid, "img", probs, np.zeros((16, 16), np.float32))
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as http:
        r = http.get("/api/v1/images/img/proposal/pixels?part=instances")
        assert r.status_code == 409 and "task is binary" in r.json()["detail"]
        assert http.get("/api/v1/images/img/proposal/pixels?part=mask").status_code == 200
