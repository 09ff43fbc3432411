"""Objects of several classes (issue 13): the target with one interior per object class, each object's
class from the probabilities, the class map an annotator paints beside the ids, and how the store, the
import, the HTTP API and the training targets carry ``{object id: class}``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from fastapi.testclient import TestClient

from napari_diffseg.base.errors import ConfigError, DataError
from napari_diffseg.base.masks import MaskError, check_object_classes, object_classes_from_map
from napari_diffseg.base.task import make_task
from napari_diffseg.core.instances import (
    BOUNDARY,
    Watershed,
    class_map,
    classify_objects,
    instance_channels,
    instances_to_target,
    interior_channel,
    probs_to_instances,
    stack_instances,
)
from napari_diffseg.project import Project
from napari_diffseg.project.schema import apply_migrations, bootstrap


def _scene() -> np.ndarray:
    a = np.zeros((48, 48), np.int64)
    a[2:12, 2:12] = 1
    a[20:30, 20:30] = 2
    a[2:10, 30:40] = 7
    a[36:46, 4:14] = 9
    return a


CLASSES = {1: 1, 2: 2, 7: 2, 9: 3}  # three object classes


def _onehot(target: np.ndarray, k: int) -> np.ndarray:
    return np.stack([target == c for c in range(k)]).astype(np.float32)


# ------------------------------------------------------------------------------------------ the task


def test_an_instance_task_may_name_several_object_classes() -> None:
    one = make_task("instances")
    assert (one.num_classes, one.object_classes, one.classed) == (3, 1, False)
    three = make_task("instances", "background,nucleus,mitosis,apoptotic")
    assert (three.num_classes, three.object_classes, three.classed) == (5, 3, True)
    assert three.class_names[1:] == ["nucleus", "mitosis", "apoptotic"]
    with pytest.raises(ConfigError, match="at least one object class"):
        make_task("instances", "background")
    with pytest.raises(ConfigError, match="binary project has 2 classes"):
        make_task("binary", "background,a,b")


# ------------------------------------------------------------------------------------------ the target


def test_target_puts_each_class_interior_in_its_channel_and_keeps_one_class_unchanged() -> None:
    ids = _scene()
    plain = instances_to_target(ids)
    assert set(np.unique(plain)) == {0, 1, 2}
    classed = instances_to_target(ids, classes=CLASSES)
    # the boundary and the background do not move; each interior goes to its class's channel
    assert np.array_equal(classed == BOUNDARY, plain == BOUNDARY)
    assert np.array_equal(classed == 0, plain == 0)
    for obj, c in CLASSES.items():
        inner = (ids == obj) & (plain == 1)
        assert inner.any() and np.all(classed[inner] == interior_channel(c))
    assert [interior_channel(c) for c in (1, 2, 3)] == [1, 3, 4]
    assert instance_channels(3) == 5
    with pytest.raises(DataError, match="object 9 has no class"):
        instances_to_target(ids, classes={1: 1, 2: 2, 7: 2})


def test_post_processing_finds_every_object_and_gives_each_one_class() -> None:
    ids = _scene()
    probs = _onehot(instances_to_target(ids, classes=CLASSES), 5)
    found = probs_to_instances(probs)
    assert int(found.max()) == 4  # the interiors of all classes seed objects
    got = classify_objects(found, probs)
    for obj, c in CLASSES.items():
        match = np.bincount(found[ids == obj]).argmax()  # the found object over the true one
        assert got[int(match)] == c
    # a patchy object takes the class with the most interior probability over it, one class per object
    patchy = probs.copy()
    box = (slice(4, 7), slice(4, 10))  # a strip of object 1 (class 1) looks like class 3
    patchy[interior_channel(1)][box] = 0.0
    patchy[interior_channel(3)][box] = 1.0
    assert classify_objects(found, patchy)[int(found[5, 5])] == 1
    cmap = class_map(found, got)
    assert cmap.dtype == np.uint8 and set(np.unique(cmap)) == {0, 1, 2, 3}
    # a stack: (Z, K, H, W) with (Z, H, W) ids
    stack_probs = np.stack([probs, probs])
    stack_ids = stack_instances(stack_probs)
    assert set(classify_objects(stack_ids, stack_probs).values()) == {1, 2, 3}
    # one object class: every object is class 1
    three = _onehot(instances_to_target(ids), 3)
    assert set(classify_objects(probs_to_instances(three), three).values()) == {1}
    with pytest.raises(DataError, match="do not match"):
        classify_objects(found, probs[:, :10])


def test_class_map_to_object_classes_takes_the_majority_and_names_what_is_wrong() -> None:
    ids = _scene()
    painted = class_map(ids, CLASSES).astype(np.int64)
    assert object_classes_from_map(ids, painted, 3) == CLASSES
    # a few strokes of another class inside an object do not change it; background strokes are ignored
    stroke = painted.copy()
    stroke[3:5, 3:11] = 3
    stroke[15:18, 15:18] = 2
    assert object_classes_from_map(ids, stroke, 3) == CLASSES
    # repainting most of an object changes its class; an object needs only one class pixel
    sparse = np.zeros_like(painted)
    for obj, c in CLASSES.items():
        y, x = np.argwhere(ids == obj)[0]
        sparse[y, x] = c
    sparse[ids == 2] = 3
    assert object_classes_from_map(ids, sparse, 3) == {**CLASSES, 2: 3}
    missing = painted.copy()
    missing[ids == 7] = 0
    with pytest.raises(MaskError, match=r"img\.tif: object\(s\) 7 have no class"):
        object_classes_from_map(ids, missing, 3, source="img.tif")
    with pytest.raises(MaskError, match="values 0 \\(none\\) to 3"):
        object_classes_from_map(ids, painted * 2, 3)
    with pytest.raises(MaskError, match="shape"):
        object_classes_from_map(ids, painted[:10], 3)
    assert check_object_classes(ids, {"1": 1, "2": 2, "7": 2, "9": 3, "44": 1}, 3) == CLASSES
    with pytest.raises(MaskError, match="object 9 has class 4"):
        check_object_classes(ids, {**CLASSES, 9: 4}, 3)
    with pytest.raises(MaskError, match="9 have no class"):
        check_object_classes(ids, {1: 1, 2: 2, 7: 2}, 3)


# ------------------------------------------------------------------------------------------ the store


def _classed_project(root: Path) -> None:
    with Project.create(root, task=make_task("instances", "background,round,square,long")) as proj:
        proj.import_array(np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8), "img")


def test_a_correction_stores_each_objects_class(tmp_path: Path) -> None:
    root = tmp_path / "p"
    _classed_project(root)
    ids = _scene()
    with Project.open(root) as proj:
        # classes are required, and refused when wrong, before anything is written
        with pytest.raises(MaskError, match="objects are of 3 classes"):
            proj.save_annotation("img", ids, replaces=None)
        bad = class_map(ids, CLASSES).astype(np.int64)
        bad[ids == 9] = 0
        with pytest.raises(MaskError, match="9 have no class"):
            proj.save_annotation("img", ids, replaces=None, classes=bad)
        assert proj.latest_version("img") is None
        v1 = proj.save_annotation("img", ids, replaces=None, classes=class_map(ids, CLASSES))
        assert proj.load_object_classes("img", v1) == CLASSES
        # the same as a mapping; a new version, the first unchanged
        v2 = proj.save_annotation("img", ids, replaces=v1, object_classes={str(k): 1 for k in CLASSES})
        assert proj.load_object_classes("img", v2) == dict.fromkeys(CLASSES, 1)
        assert proj.load_object_classes("img", v1) == CLASSES
        with pytest.raises(DataError, match="not both"):
            proj.save_annotation(
                "img", ids, replaces=v2, classes=class_map(ids, CLASSES), object_classes=CLASSES
            )
        # an empty mask needs no classes
        v3 = proj.save_annotation("img", np.zeros_like(ids), replaces=v2)
        assert proj.load_object_classes("img", v3) == {}
    # a one-class instance project refuses classes (they would be dropped)
    with Project.create(tmp_path / "one", task=make_task("instances")) as one:
        one.import_array(np.zeros((48, 48), np.uint8), "img")
        with pytest.raises(MaskError, match="one object class"):
            one.save_annotation("img", ids, replaces=None, classes=class_map(ids, CLASSES))
        version = one.save_annotation("img", ids, replaces=None)
        assert one.load_object_classes("img", version) is None


def test_a_schema_v5_project_opens_with_its_annotations(tmp_path: Path) -> None:
    root = tmp_path / "old"
    root.mkdir()
    con = sqlite3.connect(root / "project.db", isolation_level=None)
    bootstrap(con, 0.0)
    apply_migrations(con, target=5)
    con.close()
    with Project.open(root) as proj:
        assert proj.schema_version == 6 and not proj.task.classed
        proj.import_array(np.zeros((16, 16), np.uint8), "img")
        v = proj.save_annotation("img", np.ones((16, 16), np.uint8), replaces=None)
        ann = proj.annotation("img", v)
        assert ann is not None and ann.object_classes is None


def _dataset(root: Path, class_maps: dict[str, np.ndarray]) -> Path:
    for sub in ("images", "masks", "instances"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = _scene().astype(np.uint16)
    for name, cmap in class_maps.items():
        tifffile.imwrite(root / "images" / f"{name}.tif", (ids > 0).astype(np.uint8) * 200)
        tifffile.imwrite(root / "instances" / f"{name}.tif", ids)
        tifffile.imwrite(root / "masks" / f"{name}.tif", cmap.astype(np.uint8))
    return root


def test_importing_a_dataset_folder_takes_each_objects_class_from_masks(tmp_path: Path) -> None:
    good = class_map(_scene(), CLASSES)
    folder = _dataset(tmp_path / "ds", {"a": good})
    root = tmp_path / "p"
    with Project.create(root, task=make_task("instances", "background,round,square,long")) as proj:
        proj.import_files([folder])
        assert proj.load_object_classes("a") == CLASSES
        assert np.array_equal(proj.load_annotation("a"), _scene())
    # an object without a class refuses the whole import before anything is written
    broken = good.copy()
    broken[_scene() == 2] = 0
    folder2 = _dataset(tmp_path / "ds2", {"b": good, "c": broken})
    with Project.create(tmp_path / "q", task=make_task("instances", "background,round,square,long")) as proj:
        with pytest.raises(MaskError, match=r"c\.tif: object\(s\) 2 have no class"):
            proj.import_files([folder2])
        assert proj.images() == []
    # a one-class project reads the same folder's instances and ignores the class map
    with Project.create(tmp_path / "r", task=make_task("instances")) as proj:
        proj.import_files([folder])
        assert proj.load_object_classes("a") is None and int(proj.load_annotation("a").max()) == 9


# ------------------------------------------------------------------------------------------ HTTP and jobs


def test_http_save_with_classes_and_the_proposals_classes(tmp_path: Path) -> None:
    from napari_diffseg.backend import jobs as jobs_mod
    from napari_diffseg.backend.app import create_app
    from napari_diffseg.backend.codec import to_npy
    from napari_diffseg.base.presets import get_preset

    root = tmp_path / "p"
    _classed_project(root)
    ids = _scene()
    target = instances_to_target(ids, classes=CLASSES)
    with Project.open(root) as proj:
        preset = get_preset("tiny")
        bundle = jobs_mod._new_bundle(proj, 1, preset, 0, torch.device("cpu"))
        assert bundle.spec.num_classes == 5
        mid = jobs_mod._save_model(proj, bundle, "m", round=0, preset=preset, metrics={})
        proj.save_proposal(mid, "img", _onehot(target, 5), np.zeros((48, 48), np.float32))
    npy = {"Content-Type": "application/x-npy"}
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as http:
        api = "/api/v1/images/img"
        shown = np.load(__import__("io").BytesIO(http.get(f"{api}/proposal/pixels?part=instances").content))
        classes = np.load(__import__("io").BytesIO(http.get(f"{api}/proposal/pixels?part=classes").content))
        assert np.array_equal(classes, class_map(shown, classify_objects(shown, _onehot(target, 5))))
        assert set(np.unique(classes)) == {0, 1, 2, 3}
        # without classes: 422 naming what to send; nothing saved
        r = http.post(f"{api}/annotations", content=to_npy(ids.astype(np.uint16)), headers=npy)
        assert r.status_code == 422 and "class map" in r.json()["detail"], r.text
        r = http.post(
            f"{api}/annotations?with_classes=true", content=to_npy(ids.astype(np.uint16)), headers=npy
        )
        assert r.status_code == 422 and "(2, H, W)" in r.json()["detail"], r.text
        assert http.get(f"{api}/annotations").json() == []
        both = np.stack([ids, class_map(ids, CLASSES)]).astype(np.uint16)
        r = http.post(f"{api}/annotations?with_classes=true&proposal_id=1", content=to_npy(both), headers=npy)
        assert r.status_code == 201, r.text
        saved = r.json()["annotation"]
        assert saved["object_classes"] == {str(k): v for k, v in CLASSES.items()}
        # compared with the proposal's objects, which are the same four: nothing added, removed or changed
        assert (saved["objects_added"], saved["objects_removed"], saved["objects_changed"]) == (0, 0, 0)
        # the same objects with one given another class: that object is changed
        recoloured = np.stack([ids, class_map(ids, {**CLASSES, 9: 1})]).astype(np.uint16)
        r = http.post(
            f"{api}/annotations?with_classes=true&proposal_id=1&replaces=1",
            content=to_npy(recoloured),
            headers=npy,
        )
        assert r.status_code == 201, r.text
        saved = r.json()["annotation"]
        assert (saved["objects_added"], saved["objects_removed"], saved["objects_changed"]) == (0, 0, 1)
        assert saved["pixels_changed"] == 0
    # the training target of the stored correction: each object's interior in its class's channel
    with Project.open(root) as proj:
        got = jobs_mod._targets(proj, proj.image("img").id, 1, [proj.load_annotation("img", 1)], None)[0]
    assert got is not None and np.array_equal(got, target)


def test_one_class_projects_have_no_classes_part(tmp_path: Path) -> None:
    from napari_diffseg.backend import jobs as jobs_mod
    from napari_diffseg.backend.app import create_app
    from napari_diffseg.base.presets import get_preset

    root = tmp_path / "one"
    with Project.create(root, task=make_task("instances")) as proj:
        proj.import_array(np.zeros((48, 48), np.uint8), "img")
        preset = get_preset("tiny")
        bundle = jobs_mod._new_bundle(proj, 1, preset, 0, torch.device("cpu"))
        mid = jobs_mod._save_model(proj, bundle, "m", round=0, preset=preset, metrics={})
        proj.save_proposal(
            mid, "img", _onehot(instances_to_target(_scene()), 3), np.zeros((48, 48), np.float32)
        )
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as http:
        r = http.get("/api/v1/images/img/proposal/pixels?part=classes")
        assert r.status_code == 409 and "part=instances" in r.json()["detail"]
        assert http.get("/api/v1/images/img/proposal/pixels?part=instances").status_code == 200


def test_a_classed_task_names_its_object_classes() -> None:
    assert str(make_task("instances", "background,benign,malignant")) == (
        "instances (2 object classes: benign, malignant)"
    )
    assert str(make_task("instances")) == "instances"


def test_validation_reports_the_share_of_matched_objects_with_the_right_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose prediction is the annotation's target with one object's class swapped: all four
    objects are found (AP@0.5 1) and 3 of 4 have the right class."""
    from napari_diffseg.backend import jobs as jobs_mod
    from napari_diffseg.base.presets import get_preset
    from napari_diffseg.cli import _val_line

    root = tmp_path / "p"
    _classed_project(root)
    ids = _scene()
    wrong = {**CLASSES, 2: 3}
    monkeypatch.setattr(
        jobs_mod,
        "deployed_probs",
        lambda *a, **k: torch.from_numpy(_onehot(instances_to_target(ids, classes=wrong), 5))[None],
    )
    with Project.open(root) as proj:
        proj.set_split("img", "val")
        proj.save_annotation("img", ids, replaces=None, classes=class_map(ids, CLASSES))
        preset = get_preset("tiny")
        bundle = jobs_mod._new_bundle(proj, 1, preset, 0, torch.device("cpu"))
        metrics, watershed = jobs_mod._val_metrics(proj, bundle, preset)
        task = proj.task
    assert watershed == Watershed()  # 4 validation objects: too few to tune on, the defaults stay
    assert metrics["val_ap_50"] == pytest.approx(1.0)
    assert metrics["val_class_accuracy"] == pytest.approx(0.75)
    assert "class right for 75.0% of the matched objects" in _val_line(metrics, task)


def test_object_edits_count_a_class_change_as_a_changed_object() -> None:
    from napari_diffseg.base.labels import ObjectEdits, object_edits

    ids = _scene()
    renumbered = np.where(ids > 0, ids + 100, 0)  # the same objects under other ids
    moved = {k + 100: v for k, v in CLASSES.items()}
    assert object_edits(ids, renumbered, proposed_classes=CLASSES, corrected_classes=moved) == ObjectEdits(
        0, 0, 0
    )
    moved[102] = 1  # object 2 (class 2) is now class 1
    assert object_edits(ids, renumbered, proposed_classes=CLASSES, corrected_classes=moved) == ObjectEdits(
        0, 0, 1
    )
    assert object_edits(ids, renumbered) == ObjectEdits(0, 0, 0)  # without classes: pixels only
    stack = object_edits(
        np.stack([ids, ids]),
        np.stack([renumbered, renumbered]),
        proposed_classes=CLASSES,
        corrected_classes=moved,
    )
    assert stack == ObjectEdits(0, 0, 2)  # plane by plane


def test_a_z_stack_correction_carries_its_objects_classes_to_every_plane(tmp_path: Path) -> None:
    from napari_diffseg.backend import jobs as jobs_mod

    root = tmp_path / "p"
    ids = np.stack([_scene(), _scene(), np.zeros_like(_scene())])  # objects through planes 0 and 1
    with Project.create(root, task=make_task("instances", "background,round,square,long")) as proj:
        proj.import_array(np.zeros((3, 48, 48), np.uint8), "stack", axes="ZYX")
        version = proj.save_annotation(
            "stack", ids, replaces=None, classes=class_map(ids, CLASSES), planes=[0, 1, 2]
        )
        assert proj.load_object_classes("stack", version) == CLASSES
        ann = proj.annotation("stack", version)
        assert ann is not None and ann.planes == (0, 1, 2)
        planes = jobs_mod._label_planes(proj.load_annotation("stack"), ann.planes)
        targets = jobs_mod._targets(proj, proj.image("stack").id, version, planes, None)
    want = instances_to_target(_scene(), classes=CLASSES)
    assert np.array_equal(targets[0], want) and np.array_equal(targets[1], want)
    assert targets[2] is not None and not targets[2].any()
