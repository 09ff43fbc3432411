"""A project's task (issue 13): binary, multiclass with named classes, or instances; chosen at creation,
stored in the project (schema v5), returned by ``GET /project`` and written into every model's config."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from napari_diffseg.base.errors import ConfigError, DataError
from napari_diffseg.base.masks import Task
from napari_diffseg.base.task import INSTANCE_CLASSES, ClassInfo, ProjectTask, make_task
from napari_diffseg.cli import main
from napari_diffseg.project import Project
from napari_diffseg.project.schema import SCHEMA_VERSION, apply_migrations, bootstrap


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------ the task itself


def test_make_task_parses_names_and_colours() -> None:
    t = make_task("multiclass", "background, tumour:#FF0000 ,stroma")
    assert t.kind == "multiclass" and t.num_classes == 3 and t.labels == Task("multiclass", 3)
    assert t.classes[0] == ClassInfo("background", "#000000")
    assert t.classes[1] == ClassInfo("tumour", "#ff0000")
    assert t.classes[2].colour.startswith("#") and len(t.classes[2].colour) == 7
    assert ProjectTask.from_dict(t.to_dict()) == t
    assert make_task() == ProjectTask() and make_task().num_classes == 2
    inst = make_task("instances")
    assert inst.num_classes == INSTANCE_CLASSES == 3 and inst.class_names == ["background", "object"]
    assert make_task("instances", "background,nucleus").class_names == ["background", "nucleus"]
    assert ProjectTask.from_json(None) == ProjectTask.from_json('{"kind": "binary"}') == make_task()


def test_instance_classes_match_core() -> None:
    from napari_diffseg.core.instances import INSTANCE_CLASSES as CORE

    assert CORE == INSTANCE_CLASSES


@pytest.mark.parametrize(
    ("kind", "classes", "match"),
    [
        ("semantic", None, "unknown task"),
        ("multiclass", None, "needs its classes named"),
        ("multiclass", "background", "2 to 255 classes"),
        ("multiclass", "background,a,A", "given twice"),
        ("multiclass", "background,,b", "1 to 60 printable"),
        ("multiclass", "background,a:red", "#rrggbb"),
        ("binary", "background,a,b", "2 classes"),
        ("instances", "background", "at least one object class"),
    ],
)
def test_make_task_refuses_what_cannot_work(kind: str, classes: str | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_task(kind, classes)


# ------------------------------------------------------------------------------------------ the store


def test_the_task_is_stored_and_read_back(tmp_path: Path) -> None:
    task = make_task("multiclass", "background,tumour,stroma")
    with Project.create(tmp_path / "p", task=task) as proj:
        assert proj.task == task and proj.schema_version == SCHEMA_VERSION == 6
    with Project.open(tmp_path / "p") as proj:
        assert proj.task == task
    with Project.create(tmp_path / "b") as proj:
        assert proj.task == make_task("binary")
    # exist_ok opens a project of the same task, refuses another
    Project.create(tmp_path / "p", exist_ok=True, task=task).close()
    with pytest.raises(DataError, match="already a project of task multiclass"):
        Project.create(tmp_path / "p", exist_ok=True, task=make_task("instances"))


def test_a_schema_v4_project_opens_as_binary(tmp_path: Path) -> None:
    root = tmp_path / "old"
    root.mkdir()
    con = sqlite3.connect(root / "project.db", isolation_level=None)
    bootstrap(con, 0.0)
    apply_migrations(con, target=4)
    con.close()
    with Project.open(root) as proj:
        assert proj.schema_version == SCHEMA_VERSION and proj.task == make_task("binary")
    con = sqlite3.connect(root / "project.db")
    cols = {r[1] for r in con.execute("PRAGMA table_info(annotations)")}
    con.close()
    assert {"objects_added", "objects_removed", "objects_changed"} <= cols


# ------------------------------------------------------------------------------------------ the CLI


def test_init_task_and_classes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out, _ = _run(
        capsys, "init", str(tmp_path / "m"), "--task", "multiclass", "--classes", "background,tumour,stroma"
    )
    assert rc == 0 and "task: multiclass (3 classes: background, tumour, stroma)" in out
    with Project.open(tmp_path / "m") as proj:
        assert proj.task.class_names == ["background", "tumour", "stroma"]
    rc, out, _ = _run(capsys, "init", str(tmp_path / "i"), "--task", "instances", "--json")
    assert rc == 0 and json.loads(out)["task"]["kind"] == "instances"
    with Project.open(tmp_path / "i") as proj:
        assert proj.task.kind == "instances" and proj.task.num_classes == 3


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--task", "multiclass"], "needs its classes named"),
        (["--task", "semantic"], "unknown task"),
        (["--task", "multiclass", "--classes", "background"], "2 to 255 classes"),
        (["--multiclass", "--task", "instances"], "--multiclass means --task multiclass"),
    ],
)
def test_init_refuses_a_bad_task_and_creates_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], match: str
) -> None:
    rc, _, err = _run(capsys, "init", str(tmp_path / "p"), *argv)
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()


def test_init_multiclass_keeps_class_values(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import imageio.v3 as iio

    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        iio.imwrite(ds / "images" / f"a{i}.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
        m = np.zeros((32, 32), np.uint8)
        m[4:10, 4:10] = 1
        m[20:30, 20:30] = 2 + i  # classes 1, 2, 3 over the two masks
        iio.imwrite(ds / "masks" / f"a{i}.png", m)
    rc, _, err = _run(capsys, "init", str(tmp_path / "p"), "--images", str(ds), "--multiclass")
    assert rc == 2 and "needs its classes named" in err and not (tmp_path / "p").exists()
    rc, _, err = _run(
        capsys,
        "init",
        str(tmp_path / "p"),
        "--images",
        str(ds),
        "--multiclass",
        "--classes",
        "background,a,b",
    )
    assert (
        rc == 2
        and "a1.png holds 3 distinct values (0, 1, 3) but the project has 3 classes" in err
        and not (tmp_path / "p").exists()
    )
    rc, _out, err = _run(
        capsys,
        "init",
        str(tmp_path / "p"),
        "--images",
        str(ds),
        "--multiclass",
        "--classes",
        "background,a,b,c",
    )
    assert rc == 0, err
    with Project.open(tmp_path / "p") as proj:
        assert proj.task.num_classes == 4 and proj.task.class_names[0] == "background"
        assert int(proj.load_annotation("a1").max()) == 3  # class values kept


# ------------------------------------------------------------------------------------------ backend


def test_project_endpoint_returns_the_task(tmp_path: Path) -> None:
    from napari_diffseg.backend.app import create_app
    from napari_diffseg.backend.local import create_project

    root = create_project(tmp_path / "p", "multiclass", "background,tumour:#ff0000,stroma")
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as http:
        body = http.get("/api/v1/project").json()
    assert body["task"] == "multiclass" and body["num_classes"] == 3
    assert body["classes"][1] == {"value": 1, "name": "tumour", "colour": "#ff0000"}
    assert [c["name"] for c in body["classes"]] == ["background", "tumour", "stroma"]
    with pytest.raises(ConfigError, match="needs its classes named"):
        create_project(tmp_path / "q", "multiclass")
    assert not (tmp_path / "q").exists()
    root = create_project(tmp_path / "i", "instances")
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as http:
        body = http.get("/api/v1/project").json()
    assert body["task"] == "instances" and body["num_classes"] == 3
    assert [c["name"] for c in body["classes"]] == ["background", "object"]


# ------------------------------------------------------------------------------------------ models


def test_every_model_config_names_the_task(tmp_path: Path) -> None:
    from napari_diffseg.backend.jobs import execute_job, start_job
    from napari_diffseg.core.checkpoint import load_model_files

    task = make_task("multiclass", "background,gland,lumen")
    rng = np.random.default_rng(1)
    with Project.create(tmp_path / "p", task=task) as proj:
        for i in range(2):
            proj.import_array(rng.integers(0, 255, (32, 32), dtype=np.uint8), f"img{i}")
        job = start_job(proj, "pretrain", {"preset": "tiny", "overrides": {"pretrain_steps": 2}})
    assert execute_job(tmp_path / "p", job) == "done"
    with Project.open(tmp_path / "p") as proj:
        active = proj.active_model()
        assert active is not None
        _, config, _ = load_model_files(proj.model_dir(active.id))
    assert config["task"] == "multiclass"
    assert [c["name"] for c in config["classes"]] == ["background", "gland", "lumen"]
