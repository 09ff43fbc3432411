"""The edit cost in objects of an instance project's correction (issue 13): objects added, removed and
changed against the proposal's objects (matched at IoU 0.5), stored with the annotation, returned by the
API and printed by ``diffseg correct``, beside the pixel cost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from fastapi.testclient import TestClient

from napari_diffseg.base.errors import DataError
from napari_diffseg.base.labels import ObjectEdits, object_edits
from napari_diffseg.base.task import make_task
from napari_diffseg.cli import main
from napari_diffseg.core.instances import instances_to_target, proposal_instances
from napari_diffseg.project import Project


def _scene() -> np.ndarray:
    a = np.zeros((48, 48), np.int64)
    a[2:12, 2:12] = 1
    a[20:30, 20:30] = 2
    a[2:10, 30:40] = 3
    a[36:46, 4:14] = 4
    return a


# ------------------------------------------------------------------------------------------ the count


def test_object_edits_hand_computed() -> None:
    a = _scene()
    assert object_edits(a, a) == ObjectEdits(0, 0, 0)
    assert object_edits(a, a * 7) == ObjectEdits(0, 0, 0)  # other ids, same objects
    b = a.copy()
    b[b == 3] = 0  # erased
    b[30, 20:30] = 2  # grown by a row: changed
    b[40:46, 30:40] = 99  # painted new
    assert object_edits(a, b) == ObjectEdits(added=1, removed=1, changed=1)
    split = a.copy()
    split[20:30, 24:30] = 50  # object 2 split 4 + 6 columns: the larger half matches (IoU 0.6)
    assert object_edits(a, split) == ObjectEdits(added=1, removed=0, changed=1)
    merged = a.copy()
    merged[12:20, 2:12] = 1
    merged[20:30, 2:12] = 1
    merged[merged == 2] = 1  # 1 and 2 joined (with the gap): neither matches at IoU 0.5 now
    assert object_edits(a, merged) == ObjectEdits(added=1, removed=2, changed=0)
    # a z-stack: plane by plane, summed
    assert object_edits(np.stack([a, a]), np.stack([b, split])) == ObjectEdits(2, 1, 2)
    with pytest.raises(ValueError, match="same shape"):
        object_edits(a, a[:10])


# ------------------------------------------------------------------------------------------ the store


def _instance_project(root: Path) -> tuple[int, np.ndarray]:
    """An instance project with one image and a proposal whose objects are :func:`_scene`."""
    from napari_diffseg.backend import jobs as jobs_mod
    from napari_diffseg.base.presets import get_preset

    with Project.create(root, task=make_task("instances")) as proj:
        proj.import_array(np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8), "img")
        preset = get_preset("tiny")
        bundle = jobs_mod._new_bundle(proj, 1, preset, 0, torch.device("cpu"))
        mid = jobs_mod._save_model(proj, bundle, "m", round=0, preset=preset, metrics={})
        target = instances_to_target(_scene())
        probs = np.stack([target == k for k in range(3)]).astype(np.float32)
        pid = proj.save_proposal(mid, "img", probs, np.zeros((48, 48), np.float32))
        shown = proposal_instances(probs)
    assert int(shown.max()) == 4  # the four objects come back from the 3-class proposal
    return pid, shown


def test_a_correction_records_its_cost_in_objects(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from napari_diffseg.backend.app import create_app

    root = tmp_path / "p"
    pid, shown = _instance_project(root)
    edited = shown.astype(np.int64).copy()
    edited[edited == 3] = 0
    edited[40:46, 30:40] = 99
    with Project.open(root) as proj:
        version = proj.save_annotation("img", edited, replaces=None, proposal_id=pid)
        ann = proj.annotation("img", version)
    assert ann is not None
    assert (ann.objects_added, ann.objects_removed, ann.objects_changed) == (1, 1, 0)
    assert ann.pixels_changed == int(np.count_nonzero((shown > 0) != (edited > 0)))
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as http:
        body = http.get("/api/v1/images/img/annotations").json()[0]
        assert (body["objects_added"], body["objects_removed"], body["objects_changed"]) == (1, 1, 0)
        image = http.get("/api/v1/images/img").json()
        assert (image["last_objects_added"], image["last_objects_removed"]) == (1, 1)
    # the CLI prints it beside the pixel cost
    again = edited.copy()
    again[again == 99] = 0
    tifffile.imwrite(tmp_path / "fix.tif", again.astype(np.uint16))
    rc = main(["correct", str(root), "img", str(tmp_path / "fix.tif"), "--proposal", str(pid)])
    out = capsys.readouterr().out
    assert rc == 0 and "pixels changed; objects: 0 added, 1 removed, 0 changed)" in out, out


def test_other_tasks_record_no_object_cost(tmp_path: Path) -> None:
    from napari_diffseg.backend import jobs as jobs_mod
    from napari_diffseg.base.presets import get_preset

    with Project.create(tmp_path / "b") as proj:
        proj.import_array(np.zeros((16, 16), np.uint8), "img")
        preset = get_preset("tiny")
        bundle = jobs_mod._new_bundle(proj, 1, preset, 0, torch.device("cpu"))
        mid = jobs_mod._save_model(proj, bundle, "m", round=0, preset=preset, metrics={})
        pid = proj.save_proposal(
            mid, "img", np.full((2, 16, 16), 0.5, np.float32), np.zeros((16, 16), np.float32)
        )
        version = proj.save_annotation("img", np.ones((16, 16), np.uint8), replaces=None, proposal_id=pid)
        ann = proj.annotation("img", version)
    assert ann is not None and ann.edit_dice is not None and ann.objects_changed is None


# ------------------------------------------------------------------------------ re-split objects


def _joined_pair_project(root: Path) -> tuple[int, np.ndarray]:
    """An instance project whose proposal holds two touching squares joined by a seam of interior
    probability 0.6: the default watershed (seeds > 0.5) makes one object of them, seeds > 0.7 two."""
    from napari_diffseg.backend import jobs as jobs_mod
    from napari_diffseg.base.presets import get_preset

    interior = np.zeros((40, 40), np.float32)
    interior[8:20, 5:35] = 0.9
    interior[21:33, 5:35] = 0.9
    interior[20, 5:35] = 0.6  # the seam
    boundary = np.zeros_like(interior)
    boundary[20, 5:35] = 0.3
    probs = np.stack([1.0 - interior - boundary, interior, boundary]).astype(np.float32)
    two = np.zeros((40, 40), np.int64)
    two[8:21, 5:35] = 1
    two[21:33, 5:35] = 2
    with Project.create(root, task=make_task("instances")) as proj:
        proj.import_array(np.zeros((40, 40), np.uint8), "img")
        preset = get_preset("tiny")
        bundle = jobs_mod._new_bundle(proj, 1, preset, 0, torch.device("cpu"))
        mid = jobs_mod._save_model(proj, bundle, "m", round=0, preset=preset, metrics={})
        pid = proj.save_proposal(mid, "img", probs, np.zeros((40, 40), np.float32))
    return pid, two


def test_objects_re_split_with_other_watershed_parameters(tmp_path: Path) -> None:
    """``GET .../proposal/pixels?part=instances&watershed=...`` re-splits the proposal's objects (and says
    with what, ``X-Watershed``); a correction saved with the same ``watershed`` counts its cost in objects
    from those, not from the model's split."""
    import json

    from napari_diffseg.backend.app import create_app
    from napari_diffseg.backend.client import DiffsegClient as Client

    root = tmp_path / "p"
    pid, two = _joined_pair_project(root)
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as http:
        client = Client("http://127.0.0.1")
        client._http = TestClient(http.app, base_url="http://127.0.0.1/api/v1")
        ids, used = client.proposal_objects("img")
        assert ids.max() == 1 and used["seed_threshold"] == 0.5  # the model's: one object
        ids2, used2 = client.proposal_objects("img", watershed={"seed_threshold": 0.7})
        assert ids2.max() == 2 and used2["seed_threshold"] == 0.7 and used2["min_size"] == used["min_size"]
        assert (ids2 > 0).sum() == (ids > 0).sum()  # the same foreground, split in two
        np.testing.assert_array_equal(client.proposal_pixels("img", "instances"), ids)  # cached, unchanged
        # bad parameters: a clear 422 naming the problem, nothing cached
        for bad, words in [
            ('{"seed_threshold": 2}', "seed_threshold must be a probability"),
            ('{"seeds": 1}', "unknown watershed parameter"),
            ("[0.7]", "JSON object"),
            ("seed=0.7", "JSON object"),
        ]:
            r = http.get("/api/v1/images/img/proposal/pixels", params={"part": "instances", "watershed": bad})
            assert r.status_code == 422 and words in r.json()["detail"], (bad, r.text)
        r = http.get(
            "/api/v1/images/img/proposal/pixels", params={"part": "mask", "watershed": '{"threshold": 0.4}'}
        )
        assert r.status_code == 422 and "part=instances" in r.json()["detail"]
        # the two objects saved as they were shown re-split: nothing changed, in objects
        saved = client.save_annotation(
            "img", ids2.astype(np.int64), replaces=None, proposal_id=pid, watershed={"seed_threshold": 0.7}
        )
        ann = saved.annotation
        assert (ann.objects_added, ann.objects_removed, ann.objects_changed) == (0, 0, 0)
        # the same mask against the model's split: the joined object became the larger half (IoU > 0.5,
        # changed) and the other half is a new object
        saved = client.save_annotation("img", ids2.astype(np.int64), replaces=1, proposal_id=pid)
        ann = saved.annotation
        assert (ann.objects_added, ann.objects_removed, ann.objects_changed) == (1, 0, 1)
        r = http.post(
            "/api/v1/images/img/annotations",
            params={"replaces": 2, "proposal_id": pid, "watershed": json.dumps({"min_size": 0})},
            content=_npy(two),
            headers={"Content-Type": "application/x-npy"},
        )
        assert r.status_code == 422 and "min_size" in r.json()["detail"]
    with Project.open(root) as proj:
        assert len(proj.annotation_versions("img")) == 2  # the refused save changed nothing
        with pytest.raises(DataError, match="proposal_id"):
            proj.save_annotation("img", two, replaces=2, watershed={"seed_threshold": 0.7})


def _npy(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_re_split_objects_of_several_classes_keep_their_classes(tmp_path: Path) -> None:
    from napari_diffseg.backend import jobs as jobs_mod
    from napari_diffseg.backend.app import create_app
    from napari_diffseg.base.presets import get_preset
    from napari_diffseg.core.instances import interior_channel

    interior = np.zeros((40, 40), np.float32)
    interior[8:20, 5:35] = 0.9
    interior[21:33, 5:35] = 0.9
    interior[20, 5:35] = 0.6
    boundary = np.zeros_like(interior)
    boundary[20, 5:35] = 0.3
    probs = np.zeros((4, 40, 40), np.float32)  # background, round's interior, boundary, long's interior
    probs[interior_channel(1), :20] = interior[:20]  # the upper square is a "round"
    probs[interior_channel(2), 20:] = interior[20:]  # the lower one a "long"
    probs[2] = boundary
    probs[0] = 1.0 - probs[1:].sum(0)
    root = tmp_path / "p"
    with Project.create(root, task=make_task("instances", "background,round,long")) as proj:
        proj.import_array(np.zeros((40, 40), np.uint8), "img")
        preset = get_preset("tiny")
        bundle = jobs_mod._new_bundle(proj, 1, preset, 0, torch.device("cpu"))
        mid = jobs_mod._save_model(proj, bundle, "m", round=0, preset=preset, metrics={})
        pid = proj.save_proposal(mid, "img", probs, np.zeros((40, 40), np.float32))
        ids, cmap, used = proj.proposal_objects(pid, {"seed_threshold": 0.7})
    assert ids.max() == 2 and used.seed_threshold == 0.7 and cmap is not None
    assert set(np.unique(cmap[ids > 0])) == {1, 2}
    assert (cmap[ids == ids[10, 10]] == 1).all() and (cmap[ids == ids[30, 10]] == 2).all()
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as http:
        r = http.get(
            "/api/v1/images/img/proposal/pixels",
            params={"part": "classes", "watershed": '{"seed_threshold": 0.7}'},
        )
        assert r.status_code == 200 and '"seed_threshold": 0.7' in r.headers["X-Watershed"]
