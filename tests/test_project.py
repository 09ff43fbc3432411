"""The project store: SQLite (WAL) + files, atomic writes, versions, dedup, concurrency, check (DESIGN §2.2)."""

from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_diffseg.base.errors import ConfigError, DataError, DiffsegError
from napari_diffseg.project import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ImageRecord,
    Project,
    StaleVersionError,
    check_project,
)
from napari_diffseg.project.schema import apply_migrations, bootstrap

SRC = Path(__file__).resolve().parents[1] / "src"


def _files(root: Path) -> dict[str, bytes]:
    """Every file of a project except the database files, by relative path."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("project.db")
    }


def _rng_image(seed: int, shape: tuple[int, ...] = (32, 40), dtype: type = np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, shape).astype(dtype)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from napari_diffseg.data.synthetic import make_sample_dataset

    return make_sample_dataset(tmp_path_factory.mktemp("ds") / "ds", n_train=4, n_test=2, size=(64, 64))


@pytest.fixture
def proj(tmp_path: Path):
    with Project.create(tmp_path / "proj") as p:
        yield p


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A stand-in model folder: its weights load (safetensors) and are finite, as `check` requires."""
    from safetensors.numpy import save_file

    d = tmp_path / "teacher0"
    d.mkdir()
    (d / "config.json").write_text('{"format_version": 1}')
    save_file({"net.weight": np.linspace(-1, 1, 16, dtype=np.float32)}, str(d / "weights.safetensors"))
    return d


# ------------------------------------------------------------------------------------------ lifecycle


def test_create_open_reopen(tmp_path: Path) -> None:
    root = tmp_path / "p"
    with Project.create(root) as p:
        assert p.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
        image_id = p.import_array(_rng_image(0), "a")
    for sub in ("images", "annotations", "proposals", "models", "jobs"):
        assert (root / sub).is_dir()
    con = sqlite3.connect(root / "project.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    with Project.open(root) as p:
        assert [r.id for r in p.images()] == [image_id]
        assert p.image("a").id == image_id
    # a closed project refuses to work instead of crashing
    with pytest.raises(DiffsegError, match="closed"):
        p.images()
    # create refuses an existing project (unless exist_ok) and a non-empty non-project folder
    with pytest.raises(DataError, match="already a napari-diffseg project"):
        Project.create(root)
    with Project.create(root, exist_ok=True) as p:
        assert len(p.images()) == 1
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        Project.create(other)
    assert sorted(q.name for q in other.iterdir()) == ["notes.txt"]
    # open refuses a missing folder, a folder that is not a project, a database that is not ours
    with pytest.raises(DataError, match="does not exist"):
        Project.open(tmp_path / "missing")
    with pytest.raises(DataError, match="diffseg init"):
        Project.open(other)
    (other / "project.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DataError, match="damaged"):
        Project.open(other)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    sqlite3.connect(foreign / "project.db").execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(DataError, match="not a napari-diffseg project"):
        Project.open(foreign)


def test_migrations_stepwise_keep_data(tmp_path: Path) -> None:
    root = tmp_path / "old"
    for sub in ("images", "annotations", "proposals", "models", "jobs"):
        (root / sub).mkdir(parents=True)
    con = sqlite3.connect(root / "project.db", isolation_level=None)
    bootstrap(con, 0.0)
    assert apply_migrations(con, target=0) == 0
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"meta"}
    assert apply_migrations(con, target=1) == 1
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "images" in tables and "jobs" not in tables
    # a v1 project with data in it
    arr = _rng_image(1)[np.newaxis]
    from napari_diffseg.base.formats import tiff_bytes
    from napari_diffseg.project._util import content_id

    image_id = content_id(arr)
    data = tiff_bytes(arr)
    (root / "images" / f"{image_id}.tif").write_bytes(data)
    con.execute(
        "INSERT INTO images (id, name, height, width, channels, dtype, file_sha256, created_at) "
        "VALUES (?, 'old', 32, 40, 1, 'uint8', ?, 0)",
        (image_id, hashlib.sha256(data).hexdigest()),
    )
    con.close()
    with Project.open(root) as p:  # applies migration 2
        assert p.schema_version == SCHEMA_VERSION
        assert p.image("old").id == image_id
        np.testing.assert_array_equal(p.load_image("old"), arr)
        job = p.create_job("pretrain", {"steps": 3})
        assert p.job(job).state == "queued"
        assert p.check()["ok"]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "p"
    Project.create(root).close()
    con = sqlite3.connect(root / "project.db")
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(DataError, match="upgrade napari-diffseg"):
        Project.open(root)


def test_project_package_imports_no_gui_and_no_torch() -> None:
    code = (
        "import sys, napari_diffseg.project; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'fastapi', 'torch')]; "
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert out.stdout.strip() == ""


# ------------------------------------------------------------------------------------------ images


def test_same_pixels_stored_once_and_names_made_unique(proj: Project) -> None:
    a = _rng_image(0)
    first = proj.import_array(a, "cells")
    before = _files(proj.root)
    assert proj.import_array(a, "another-name") == first  # same pixels → same id, nothing changes
    assert proj.import_array(a[np.newaxis], "x") == first  # (1, H, W) is the same content
    assert _files(proj.root) == before
    assert [(r.id, r.name) for r in proj.images()] == [(first, "cells")]
    # the id is the content hash of (dtype, shape, bytes) as stored
    h = hashlib.sha256(b"uint8|1x32x40|" + np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
    assert first == h
    # same name, different pixels → suffixed names; other dtype → other content
    second = proj.import_array(_rng_image(1), "cells")
    third = proj.import_array(a.astype(np.uint16), "cells")
    assert len({first, second, third}) == 3
    assert [proj.image(i).name for i in (first, second, third)] == ["cells", "cells-2", "cells-3"]
    assert proj.load_image(third).dtype == np.uint16
    assert len(list((proj.root / "images").glob("*.tif"))) == 3
    with pytest.raises(DataError, match="diffseg images"):
        proj.image("no-such-image")


def test_import_dataset_with_masks_and_splits(proj: Project, dataset: Path) -> None:
    result = proj.import_dataset(dataset)
    assert len(result.added) == 6 and not result.existing and len(result.masks_saved) == 6
    names = {r.name: r for r in proj.images()}
    assert sorted(names) == [f"test_{i:03d}" for i in range(2)] + [f"train_{i:03d}" for i in range(4)]
    assert {r.split for r in proj.images(split="train")} == {"train"}
    assert len(proj.images(split="test")) == 2 and len(proj.images(split="train")) == 4
    assert all(r.state == "ground_truth" for r in names.values())
    rec = names["train_001"]
    pixels = iio.imread(dataset / "images" / "train_001.png")
    stored = proj.load_image(rec.id)
    assert stored.dtype == pixels.dtype and stored.shape == (rec.channels, 64, 64)
    np.testing.assert_array_equal(np.moveaxis(stored, 0, -1) if pixels.ndim == 3 else stored[0], pixels)
    [ann] = proj.annotation_versions("train_001")
    assert ann.version == 1 and ann.kind == "ground_truth" and ann.replaces is None
    expected = (iio.imread(dataset / "masks" / "train_001.png") > 0).astype(np.int64)
    np.testing.assert_array_equal(proj.load_annotation("train_001"), expected)
    # importing again changes nothing at all
    before = _files(proj.root)
    again = proj.import_dataset(dataset)
    assert not again.added and len(again.existing) == 6 and not again.masks_saved
    assert list(again.ids) == list(result.ids)
    assert _files(proj.root) == before
    assert proj.counts()["annotations"] == 6


def test_import_files_with_masks_folder(proj: Project, dataset: Path) -> None:
    files = [dataset / "images" / "train_000.png", dataset / "images" / "test_001.png"]
    result = proj.import_files(files, masks_dir=dataset / "masks", split="val")
    assert len(result.added) == 2 and len(result.masks_saved) == 2
    assert {r.name for r in proj.images(split="val")} == {"train_000", "test_001"}
    # a mask for an image that already has a different annotation is not applied
    proj.save_annotation("train_000", np.zeros((64, 64), np.uint8), replaces=1)
    again = proj.import_files(files, masks_dir=dataset / "masks")
    assert not again.added and again.masks_skipped == (proj.image("train_000").id,)
    assert proj.latest_version("train_000") == 2


def test_import_array_layouts_and_mask(proj: Project) -> None:
    rgb = _rng_image(3, (32, 40, 3))
    image_id = proj.import_array(rgb, "rgb", mask=(rgb[..., 0] > 100))
    rec = proj.image(image_id)
    assert (rec.channels, rec.height, rec.width, rec.dtype) == (3, 32, 40, "uint8")
    assert rec.state == "ground_truth" and rec.source == "array:rgb"
    np.testing.assert_array_equal(proj.load_image(image_id), np.moveaxis(rgb, -1, 0))
    assert proj.import_array(np.moveaxis(rgb, -1, 0), "chw") == image_id  # (C, H, W) of the same pixels
    rgba = np.concatenate([rgb, np.full((32, 40, 1), 255, np.uint8)], axis=-1)
    assert proj.import_array(rgba, "rgba") == image_id  # alpha dropped
    np.testing.assert_array_equal(proj.load_annotation(image_id), (rgb[..., 0] > 100).astype(np.int64))
    f = proj.import_array(np.linspace(0, 1, 32 * 40, dtype=np.float32).reshape(32, 40), "float", split="val")
    assert proj.image(f).dtype == "float32" and proj.image(f).split == "val"


def test_bad_input_is_refused_and_changes_nothing(proj: Project, dataset: Path, tmp_path: Path) -> None:
    proj.import_array(_rng_image(0), "keep", mask=np.ones((32, 40), np.uint8))
    before = _files(proj.root)
    counts = proj.counts()
    # a dataset with one corrupt TIFF: the good images are not imported either
    bad_ds = tmp_path / "bad_ds"
    (bad_ds / "images").mkdir(parents=True)
    for name in ("a", "b"):
        (bad_ds / "images" / f"{name}.png").write_bytes((dataset / "images" / "train_000.png").read_bytes())
    (bad_ds / "images" / "b.png").write_bytes((dataset / "images" / "train_001.png").read_bytes())
    (bad_ds / "images" / "c.tif").write_bytes(b"II*\x00" + b"\x13" * 200)
    with pytest.raises(DataError, match=r"c\.tif"):
        proj.import_dataset(bad_ds)
    nan = np.ones((32, 40), np.float32)
    nan[3, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    with pytest.raises(DataError, match="NaN"):
        proj.import_files([tmp_path / "nan.tif"])
    with pytest.raises(DataError, match="NaN"):
        proj.import_array(nan, "nan")
    with pytest.raises(DataError, match="height and width"):
        proj.import_array(_rng_image(5), "m", mask=np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError):
        proj.import_array(np.zeros((5, 32, 40), np.uint8), "stack")
    with pytest.raises(DataError, match="split"):
        proj.import_array(_rng_image(6), "s", split="holdout")
    for bad_name in ("../evil", "a/b", "/abs", "..", ".hidden", "", "a\\b"):
        with pytest.raises(DataError):
            proj.import_array(_rng_image(7), bad_name)
    assert _files(proj.root) == before and proj.counts() == counts


# ------------------------------------------------------------------------------------------ annotations


def test_annotation_versions_are_append_only(proj: Project) -> None:
    image_id = proj.import_array(_rng_image(0), "img")
    m1 = np.zeros((32, 40), np.int64)
    m1[5:10, 5:10] = 1
    m2 = m1.copy()
    m2[20:25, 20:30] = 2
    assert proj.save_annotation(image_id, m1, kind="ground_truth", replaces=None, author="ann") == 1
    assert proj.image(image_id).state == "ground_truth"
    v1_file = proj.root / "annotations" / image_id / "1.tif"
    v1_bytes = v1_file.read_bytes()
    assert proj.save_annotation("img", m2, replaces=1) == 2
    assert v1_file.read_bytes() == v1_bytes  # never rewritten
    np.testing.assert_array_equal(proj.load_annotation(image_id, version=1), m1)
    np.testing.assert_array_equal(proj.load_annotation(image_id), m2)
    versions = proj.annotation_versions(image_id)
    assert [(v.version, v.kind, v.replaces, v.author) for v in versions] == [
        (1, "ground_truth", None, "ann"),
        (2, "correction", 1, ""),
    ]
    assert versions[1].labels == 2 and proj.image(image_id).state == "corrected"
    with pytest.raises(DataError, match="no annotation version 7"):
        proj.load_annotation(image_id, version=7)
    # the database itself refuses to change or delete a version
    con = sqlite3.connect(proj.root / "project.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE annotations SET kind = 'correction' WHERE version = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM annotations")
    con.close()
    assert proj.load_annotation(proj.import_array(_rng_image(1), "fresh")) is None


def test_stale_write_raises_and_writes_nothing(proj: Project) -> None:
    image_id = proj.import_array(_rng_image(0), "img")
    mask = np.zeros((32, 40), np.uint8)
    with pytest.raises(StaleVersionError) as info:
        proj.save_annotation(image_id, mask, replaces=1)
    assert info.value.current is None
    proj.save_annotation(image_id, mask, replaces=None)
    before = _files(proj.root)
    for replaces in (None, 0, 2, 5):
        with pytest.raises(StaleVersionError) as info:
            proj.save_annotation(image_id, mask + 1, replaces=replaces)
        assert info.value.current == 1 and info.value.image_id == image_id
        assert "latest version is 1" in str(info.value)
    assert _files(proj.root) == before and len(proj.annotation_versions(image_id)) == 1
    assert isinstance(info.value, DiffsegError)
    clone = pickle.loads(pickle.dumps(info.value))
    assert clone.current == 1 and str(clone) == str(info.value)


def test_two_writers_with_the_same_base_exactly_one_wins(tmp_path: Path) -> None:
    root = tmp_path / "p"
    with Project.create(root) as p:
        image_id = p.import_array(_rng_image(0), "img")
    projects = [Project.open(root), Project.open(root)]  # one connection each, like two processes
    try:
        for base in (None, 1, 2):
            barrier = threading.Barrier(2)
            outcomes: list[object] = [None, None]

            def save(
                k: int,
                base: int | None = base,
                barrier: threading.Barrier = barrier,
                outcomes: list[object] = outcomes,
            ) -> None:
                mask = np.full((32, 40), k + 1, np.uint8)
                barrier.wait()
                try:
                    outcomes[k] = projects[k].save_annotation(image_id, mask, replaces=base)
                except StaleVersionError as exc:
                    outcomes[k] = exc

            threads = [threading.Thread(target=save, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            expected = (base or 0) + 1
            wins = [o for o in outcomes if o == expected]
            stale = [o for o in outcomes if isinstance(o, StaleVersionError)]
            assert len(wins) == 1 and len(stale) == 1, outcomes
            assert stale[0].current == expected
        assert [v.version for v in projects[0].annotation_versions(image_id)] == [1, 2, 3]
    finally:
        for p in projects:
            p.close()


def test_two_processes_with_the_same_base_exactly_one_wins(tmp_path: Path) -> None:
    root = tmp_path / "p"
    with Project.create(root) as p:
        image_id = p.import_array(_rng_image(0), "img")
    go = tmp_path / "go"
    script = textwrap.dedent(
        f"""
        import os, sys, time
        import numpy as np
        from napari_diffseg.project import Project, StaleVersionError
        k = int(sys.argv[1])
        with Project.open({str(root)!r}) as p:
            print("ready", flush=True)
            while not os.path.exists({str(go)!r}):
                time.sleep(0.005)
            try:
                print("won", p.save_annotation({image_id!r}, np.full((32, 40), k, np.uint8), replaces=None))
            except StaleVersionError as exc:
                print("stale", exc.current)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(k + 1)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(SRC)},
        )
        for k in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    go.touch()
    outs = sorted(proc.communicate(timeout=60)[0].strip() for proc in procs)
    assert outs == ["stale 1", "won 1"]
    with Project.open(root) as p:
        assert [v.version for v in p.annotation_versions(image_id)] == [1]
        assert p.check()["ok"]


def test_bad_masks_leave_nothing_behind(proj: Project) -> None:
    image_id = proj.import_array(_rng_image(0), "img")
    before = _files(proj.root)
    nan = np.zeros((32, 40), np.float32)
    nan[0, 0] = np.nan
    bad = {
        "wrong shape": np.zeros((40, 32), np.uint8),
        "NaN": nan,
        "negative": np.full((32, 40), -1, np.int32),
        "non-integer": np.full((32, 40), 0.5, np.float32),
        "3D": np.zeros((1, 32, 40), np.uint8),
    }
    for what, mask in bad.items():
        with pytest.raises(DataError):
            proj.save_annotation(image_id, mask, replaces=None)
        assert _files(proj.root) == before, what
    with pytest.raises(DataError, match="kind"):
        proj.save_annotation(image_id, np.zeros((32, 40), np.uint8), kind="guess", replaces=None)
    assert proj.annotation_versions(image_id) == [] and proj.image(image_id).state == "unlabeled"
    assert not any((proj.root / "annotations").rglob("*.tif"))


def test_failed_database_write_removes_the_new_file(proj: Project, model_dir: Path) -> None:
    image_id = proj.import_array(_rng_image(0), "img")
    proj.register_model(model_dir, round=0, method="teacher", metrics={})
    probs = np.full((2, 32, 40), 0.5, np.float32)
    proj.save_proposal("teacher0", image_id, probs, np.zeros((32, 40), np.float32))
    before = _files(proj.root)
    con = sqlite3.connect(proj.root / "project.db")
    con.execute("CREATE TRIGGER boom1 BEFORE INSERT ON annotations BEGIN SELECT RAISE(ABORT, 'boom'); END")
    con.execute("CREATE TRIGGER boom2 BEFORE UPDATE ON proposals BEGIN SELECT RAISE(ABORT, 'boom'); END")
    con.commit()
    with pytest.raises(sqlite3.DatabaseError, match="boom"):
        proj.save_annotation(image_id, np.ones((32, 40), np.uint8), replaces=None)
    with pytest.raises(sqlite3.DatabaseError, match="boom"):  # replacing a file: the old one comes back
        proj.save_proposal("teacher0", image_id, probs * 0.5, np.ones((32, 40), np.float32))
    assert _files(proj.root) == before
    assert proj.check()["ok"] and proj.annotation_versions(image_id) == []
    con.close()


def test_ids_and_path_pieces_are_validated(proj: Project, model_dir: Path) -> None:
    image_id = proj.import_array(_rng_image(0), "img")
    for bad in ("../teacher", "a/b", "/abs", "..", "a b", ""):
        with pytest.raises(DataError):
            proj.register_model(model_dir, round=0, method="t", model_id=bad)
        with pytest.raises(DataError):
            proj.save_proposal(bad, image_id, np.zeros((2, 32, 40)), np.zeros((32, 40)))
        with pytest.raises(DataError):
            proj.create_job(bad, {})
        with pytest.raises(DataError):
            proj.model(bad)
    for bad in ("../../etc/passwd", "/etc", f"../{image_id}"):
        with pytest.raises(DataError):
            proj.image(bad)
    assert not any((proj.root / "models").iterdir()) and proj.jobs() == []


# ------------------------------------------------------------------------------------------ proposals, models


def test_proposals_round_trip_and_next_image_order(proj: Project, model_dir: Path) -> None:
    ids = [proj.import_array(_rng_image(k), f"img{k}") for k in range(4)]
    assert proj.next_image().name == "img0"  # no uncertainty yet: by name
    with pytest.raises(DataError, match="not registered"):
        proj.save_proposal("teacher0", ids[0], np.zeros((2, 32, 40)), np.zeros((32, 40)))
    proj.register_model(model_dir, round=0, method="teacher", metrics={"dice": 0.5})
    rng = np.random.default_rng(0)
    saved = {}
    for image_id, u in zip(ids[:3], (0.1, 0.5, 0.3), strict=True):
        p1 = rng.random((32, 40)).astype(np.float32)
        probs = np.stack([1 - p1, p1])
        unc = np.full((32, 40), u, np.float32)
        saved[image_id] = (proj.save_proposal("teacher0", image_id, probs, unc), probs, unc)
    rec, probs, unc = proj.proposal(ids[1])
    np.testing.assert_array_equal(probs, saved[ids[1]][1])
    np.testing.assert_array_equal(unc, saved[ids[1]][2])
    assert rec.model_id == "teacher0" and rec.classes == 2 and rec.id == saved[ids[1]][0]
    assert proj.image(ids[1]).state == "proposed"
    assert proj.image(ids[1]).uncertainty == pytest.approx(0.5)
    assert proj.proposal(ids[3]) is None
    # a power draw only picks among images with an uncertainty, and is reproducible with a seed
    drawn = {proj.next_image(strategy="power", rng=np.random.default_rng(s)).name for s in range(40)}
    assert drawn == {"img0", "img1", "img2"}
    one = proj.next_image(strategy="power", rng=np.random.default_rng(3))
    assert one == proj.next_image(strategy="power", rng=np.random.default_rng(3))
    with pytest.raises(ConfigError, match="unknown acquisition strategy"):
        proj.next_image(strategy="random")
    order = []
    while (nxt := proj.next_image()) is not None:
        order.append(nxt.name)
        proj.save_annotation(nxt.id, np.zeros((32, 40), np.uint8), replaces=None)
    assert order == ["img1", "img2", "img0", "img3"]  # highest uncertainty first, none last
    # a correction that started from a proposal records how much was changed
    hard = np.argmax(saved[ids[1]][1], axis=0)
    edited = hard.copy()
    edited[:4] = 1 - edited[:4]
    proj.save_annotation(ids[1], edited, replaces=1, proposal_id=saved[ids[1]][0])
    ann = proj.annotation(ids[1])
    assert ann.proposal_id == saved[ids[1]][0] and ann.pixels_changed == 4 * 40
    inter = np.sum((hard == 1) & (edited == 1))
    assert ann.edit_dice == pytest.approx(2 * inter / (np.sum(hard == 1) + np.sum(edited == 1)))
    with pytest.raises(DataError, match="not"):
        proj.save_annotation(ids[0], edited, replaces=1, proposal_id=saved[ids[1]][0])
    # proposing again for the same (model, image) keeps the id and replaces the file
    pid = proj.save_proposal("teacher0", ids[1], np.full((2, 32, 40), 0.5), np.full((32, 40), 0.9))
    assert pid == saved[ids[1]][0] and proj.image(ids[1]).uncertainty == pytest.approx(0.9)
    assert proj.image(ids[1]).state == "corrected"  # proposals never downgrade a reviewed image
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        proj.save_proposal("teacher0", ids[0], np.full((2, 32, 40), 3.0), np.zeros((32, 40)))
    with pytest.raises(DataError, match="shape"):
        proj.save_proposal("teacher0", ids[0], np.zeros((2, 8, 8)), np.zeros((8, 8)))
    assert proj.check()["ok"]


def test_models_registry_and_active_flag(proj: Project, model_dir: Path) -> None:
    assert proj.active_model() is None
    mid = proj.register_model(model_dir, round=0, method="teacher", metrics={"dice": 0.4})
    assert mid == "teacher0"
    copied = proj.root / "models" / "teacher0"
    assert (copied / "weights.safetensors").read_bytes() == (model_dir / "weights.safetensors").read_bytes()
    with pytest.raises(DataError, match="already registered"):
        proj.register_model(model_dir, round=0, method="teacher")
    # a folder already in models/ is recorded in place, by id or by path
    (proj.root / "models" / "round1").mkdir()
    assert proj.register_model("round1", round=1, method="diffseg", metrics={"dice": 0.7}) == "round1"
    with pytest.raises(DataError, match="neither"):
        proj.register_model("round9", round=1, method="diffseg")
    with pytest.raises(DataError, match="JSON"):
        proj.register_model(model_dir, round=1, method="x", metrics={"bad": object()}, model_id="m2")
    assert not (proj.root / "models" / "m2").exists()
    assert [(m.id, m.round, m.metrics) for m in proj.models()] == [
        ("teacher0", 0, {"dice": 0.4}),
        ("round1", 1, {"dice": 0.7}),
    ]
    proj.set_active_model("teacher0")
    proj.set_active_model("round1")
    assert [m.id for m in proj.models() if m.active] == ["round1"]
    assert proj.active_model().id == "round1"
    with pytest.raises(DataError, match="no model"):
        proj.set_active_model("nope")
    assert proj.active_model().id == "round1"


# ------------------------------------------------------------------------------------------ jobs


def test_jobs_and_events(proj: Project) -> None:
    a = proj.create_job("pretrain", {"preset": "tiny"})
    b = proj.create_job("cotrain", {})
    assert (proj.root / "jobs" / str(a)).is_dir() and proj.job_dir(a) == proj.root / "jobs" / str(a)
    assert [j.state for j in proj.jobs()] == ["queued", "queued"] and proj.job(a).params == {"preset": "tiny"}
    job = proj.set_job_state(a, "running", pid=1234)
    assert job.state == "running" and job.pid == 1234 and job.started_at is not None
    seqs = [proj.append_event(a, {"kind": "progress", "step": s, "loss": 0.1 * s}) for s in range(1, 4)]
    assert seqs == [1, 2, 3]
    assert [e.data["step"] for e in proj.events(a, since=1)] == [2, 3]
    assert [e.seq for e in proj.events(a)] == [1, 2, 3] and proj.events(b) == []
    with pytest.raises(DataError, match="JSON"):
        proj.append_event(a, {"bad": object()})
    proj.set_job_state(b, "running")
    proj.set_job_state(b, "done")
    with pytest.raises(ConfigError, match="done"):
        proj.set_job_state(b, "running")
    with pytest.raises(DataError, match="state"):
        proj.set_job_state(a, "exploded")
    assert proj.mark_running_jobs_interrupted() == [a]
    job = proj.job(a)
    assert job.state == "interrupted" and job.finished_at is not None and "backend stopped" in job.error
    assert proj.mark_running_jobs_interrupted() == []
    assert proj.set_job_state(a, "running").finished_at is None  # resumed
    failed = proj.set_job_state(a, "failed", error="out of memory")
    assert failed.error == "out of memory" and [j.id for j in proj.jobs(state="failed")] == [a]
    with pytest.raises(DataError, match="no job"):
        proj.job(99)


# ------------------------------------------------------------------------------------------ check


def test_check_reports_missing_and_modified_files(proj: Project, dataset: Path) -> None:
    proj.import_dataset(dataset)
    report = proj.check()
    assert report == {"ok": True, "images": 6, "annotations": 6, "models": 0, "problems": []}
    victim = proj.image("train_000")
    (proj.root / "images" / f"{victim.id}.tif").unlink()
    ann_file = proj.root / "annotations" / proj.image("test_001").id / "1.tif"
    data = bytearray(ann_file.read_bytes())
    data[-1] ^= 0xFF
    ann_file.write_bytes(bytes(data))
    report = proj.check()
    assert not report["ok"] and len(report["problems"]) == 2
    text = "\n".join(report["problems"])
    assert f"images/{victim.id}.tif is missing" in text and "sha256 mismatch" in text
    assert check_project(proj.root)["problems"] == report["problems"]


def test_check_project_reports_a_damaged_database(tmp_path: Path) -> None:
    root = tmp_path / "p"
    Project.create(root).close()
    (root / "project.db").write_bytes(b"garbage" * 1000)
    for suffix in ("-wal", "-shm"):
        (root / f"project.db{suffix}").unlink(missing_ok=True)
    report = check_project(root)
    assert report["ok"] is False and report["problems"]
    with pytest.raises(DataError):
        check_project(tmp_path / "nowhere")


def test_records_serialise(proj: Project) -> None:
    image_id = proj.import_array(_rng_image(0), "img")
    rec = proj.image(image_id)
    assert isinstance(rec, ImageRecord)
    d = rec.to_dict()
    assert d["id"] == image_id and d["state"] == "unlabeled" and d["uncertainty"] is None
    with pytest.raises(AttributeError):
        rec.state = "excluded"  # type: ignore[misc]
    assert proj.set_state(image_id, "excluded").state == "excluded"
    assert proj.next_image() is None
    with pytest.raises(DataError, match="state"):
        proj.set_state(image_id, "done")


def test_final_event_and_state_are_one_write(proj: Project) -> None:
    """A job's last event goes in with its final state; a refused move writes neither."""
    from napari_diffseg.base.errors import ConfigError

    job = proj.create_job("pretrain", {})
    proj.set_job_state(job, "running")
    proj.set_job_state(job, "done", event={"kind": "done", "phase": "pretrain", "message": "finished"})
    assert proj.job(job).state == "done" and [e.data["kind"] for e in proj.events(job)] == ["done"]
    with pytest.raises(ConfigError):
        proj.set_job_state(job, "running", event={"kind": "log", "phase": "pretrain", "message": "again"})
    assert len(proj.events(job)) == 1 and proj.job(job).state == "done"
