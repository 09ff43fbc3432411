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
