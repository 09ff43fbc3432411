"""Z-stacks end to end (issue 12, item 3): one 3D image in the project, 3D annotations of some planes,
jobs that train on planes, a 3D proposal, ``/next`` pointing at a plane, and ``predict`` writing (Z, Y, X)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_diffseg.base.errors import DataError
from napari_diffseg.cli import main
from napari_diffseg.project import Project


def _stack(planes: int = 3, size: tuple[int, int] = (48, 56), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A grey uint8 z-stack of bright discs on noise, and its (Z, H, W) 0/1 truth."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    truth = np.zeros((planes, *size), np.uint8)
    for z in range(planes):
        for _ in range(4):
            cy, cx, r = rng.integers(8, size[0] - 8), rng.integers(8, size[1] - 8), rng.integers(4, 8)
            truth[z][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    image = np.clip(30 + 150 * truth + rng.normal(0, 12, truth.shape), 0, 255).astype(np.uint8)
    return image, truth


def _write_stack(path: Path, image: np.ndarray) -> Path:
    tifffile.imwrite(path, image, imagej=True, metadata={"axes": "ZYX"})
    return path


def test_stack_store_annotations_and_refusals(tmp_path: Path) -> None:
    image, truth = _stack()
    with Project.create(tmp_path / "p") as proj:
        sid = proj.import_array(image, "s", axes="ZYX")
        rec = proj.image(sid)
        assert (rec.axes, rec.shape, rec.planes, rec.is_stack) == ("ZYX", (3, 48, 56), 3, True)
        assert proj.load_image(sid).shape == (3, 1, 48, 56)
        np.testing.assert_array_equal(proj.load_planes(sid)[:, 0], image)
        # painting plane 1 only: that plane counts as annotated
        mask = np.zeros_like(truth)
        mask[1] = truth[1]
        v1 = proj.save_annotation(sid, mask, replaces=None)
        assert proj.annotation(sid).planes == (1,)
        # an empty plane whose truth is background is named explicitly
        v2 = proj.save_annotation(sid, mask, replaces=v1, planes=[0, 1])
        assert proj.annotation(sid, v2).planes == (0, 1)
        # a 2D mask for a stack, an unknown plane: refused with what to do, nothing saved
        with pytest.raises(DataError, match=r"z-stack of 3x48x56.*one plane per image plane"):
            proj.save_annotation(sid, mask[0], replaces=v2)
        with pytest.raises(DataError, match=r"plane\(s\) \[5\] do not exist"):
            proj.save_annotation(sid, mask, replaces=v2, planes=[5])
        with pytest.raises(DataError, match=r"annotates no plane.*name them"):
            proj.save_annotation(sid, np.zeros_like(mask), replaces=v2)
        assert proj.latest_version(sid) == v2
        # a stack over the size limit is refused, naming the limit and what to do
        with pytest.raises(DataError, match=r"voxels, more than the limit.*fewer planes"):
            proj.add_array(np.zeros((40, 48, 56), np.uint8), "big", axes="ZYX", max_pixels=50_000)
        assert [r.name for r in proj.images()] == ["s"]
        # a proposal of a stack is 3D; its image is ranked by (and points at) its most uncertain plane
        from safetensors.numpy import save_file

        model_dir = tmp_path / "m1"
        model_dir.mkdir()
        (model_dir / "config.json").write_text('{"format_version": 1}')
        save_file({"net.weight": np.zeros(4, np.float32)}, str(model_dir / "weights.safetensors"))
        proj.register_model(model_dir, round=0, method="teacher")
        probs = np.full((3, 2, 48, 56), 0.5, np.float32)
        unc = np.zeros((3, 48, 56), np.float32)
        unc[2] = 0.8
        pid = proj.save_proposal("m1", sid, probs, unc)
        prop, p_probs, p_unc = proj.proposal(sid)
        assert (prop.id, prop.plane, p_probs.shape, p_unc.shape) == (pid, 2, (3, 2, 48, 56), (3, 48, 56))
        assert prop.uncertainty == pytest.approx(0.8)
        assert proj.image(sid).plane == 2 and proj.image(sid).uncertainty == pytest.approx(0.8)
        with pytest.raises(DataError, match=r"probabilities must have shape \(3, K, 48, 56\)"):
            proj.save_proposal("m1", sid, probs[0], unc[0])


def test_stack_with_masks_imports_as_ground_truth_of_every_plane(tmp_path: Path) -> None:
    image, truth = _stack(seed=1)
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    _write_stack(ds / "images" / "a.tif", image)
    tifffile.imwrite(ds / "masks" / "a.tif", truth)
    with Project.create(tmp_path / "p") as proj:
        proj.import_dataset(ds)
        ann = proj.annotation("a")
        assert ann is not None and ann.kind == "ground_truth" and ann.planes == (0, 1, 2)
        np.testing.assert_array_equal(proj.load_annotation("a"), truth)
    tifffile.imwrite(ds / "masks" / "a.tif", truth[:2])  # a mask of the wrong shape: refused, clear
    with Project.create(tmp_path / "q") as proj:
        with pytest.raises(DataError, match=r"shape \(2, 48, 56\) but its z-stack is 3x48x56"):
            proj.import_dataset(ds)
        assert proj.counts()["images"] == 0


def test_zstack_loop_from_the_cli_and_the_api(tmp_path: Path, capsys) -> None:
    from fastapi.testclient import TestClient

    from napari_diffseg.backend.app import create_app

    image, truth = _stack(seed=2)
    files = tmp_path / "files"
    files.mkdir()
    _write_stack(files / "stack.tif", image)
    root = tmp_path / "p"
    assert main(["init", str(root)]) == 0
    assert main(["import", str(root), str(files / "stack.tif")]) == 0
    capsys.readouterr()
    assert main(["images", str(root), "--json"]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    assert (rec["axes"], rec["shape"]) == ("ZYX", [3, 48, 56])
    # annotate plane 0 only (a 3D mask, the other planes left empty)
    mask = np.zeros_like(truth)
    mask[0] = truth[0]
    tifffile.imwrite(tmp_path / "mask.tif", mask)
    assert main(["correct", str(root), "stack", str(tmp_path / "mask.tif")]) == 0
    with Project.open(root) as proj:
        assert proj.annotation("stack").planes == (0,)
    quick = ["--preset", "tiny", "--device", "cpu", "--threads", "1"]
    assert main(["pretrain", str(root), *quick]) == 0
    assert main(["cotrain", str(root), *quick]) == 0
    with Project.open(root) as proj:
        metrics = proj.active_model().metrics
        assert (metrics["labeled"], metrics["unlabeled"]) == (1, 2)  # plane 0 labelled, planes 1-2 not
    capsys.readouterr()
    assert main(["propose", str(root), "--ids", "stack", *quick]) == 0
    with Project.open(root) as proj:
        prop, probs, unc = proj.proposal("stack")
        assert probs.shape == (3, 2, 48, 56) and unc.shape == (3, 48, 56)
        per_plane = unc.reshape(3, -1).mean(axis=1)
        assert prop.plane == int(np.argmax(per_plane)) and prop.uncertainty == pytest.approx(per_plane.max())
        proj.set_state("stack", "proposed")  # /next picks unreviewed images
    with TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1") as http:
        nxt = http.get("/api/v1/next").json()
        assert (nxt["name"], nxt["axes"], nxt["plane"]) == ("stack", "ZYX", prop.plane)
        assert http.get("/api/v1/images/stack/proposal").json()["plane"] == prop.plane
        r = http.get("/api/v1/images/stack/proposal/pixels", params={"part": "mask"})
        assert np.load(io.BytesIO(r.content)).shape == (3, 48, 56)
        r = http.get("/api/v1/images/stack/pixels")
        assert np.load(io.BytesIO(r.content)).shape == (3, 1, 48, 56)
        # an upload of a z-stack (.npy with axes) and a 3D annotation naming its planes
        body = io.BytesIO()
        np.save(body, image[::-1].copy())
        npy = {"Content-Type": "application/x-npy"}
        r = http.post(
            "/api/v1/images", params={"name": "up", "axes": "ZYX"}, content=body.getvalue(), headers=npy
        )
        assert r.status_code == 201 and r.json()["image"]["shape"] == [3, 48, 56]
        body = io.BytesIO()
        np.save(body, np.zeros((3, 48, 56), np.uint8))
        r = http.post(
            "/api/v1/images/up/annotations", params={"planes": [1]}, content=body.getvalue(), headers=npy
        )
        assert r.status_code == 201 and r.json()["annotation"]["planes"] == [1]
    # predict of a (Z, Y, X) stack writes a TIFF of shape (Z, Y, X)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["predict", str(root), str(files / "stack.tif"), "--out", str(out), "--device", "cpu"]) == 0
    labels = tifffile.imread(out / "stack.tif.tif")
    assert labels.shape == (3, 48, 56) and labels.dtype == np.uint8
    said = capsys.readouterr().out  # a stack gets no PNG overlay, and the summary does not claim one
    assert not list(out.glob("*.png")) and "overlays for 0 of them (none for z-stacks" in said
    assert main(["check", str(root)]) == 0  # every stored stack, 3D mask and 3D proposal checks out


def test_experiment_trains_on_planes_and_scores_per_stack(tmp_path: Path) -> None:
    from napari_diffseg.experiment import run_experiment

    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    rows = ["id,split"]
    for n in range(5):
        image, truth = _stack(seed=10 + n)
        _write_stack(ds / "images" / f"s{n}.tif", image)
        tifffile.imwrite(ds / "masks" / f"s{n}.tif", truth)
        rows.append(f"s{n},{'test' if n == 4 else 'train'}")
    (ds / "split.csv").write_text("\n".join(rows) + "\n")
    result = run_experiment(
        ds, labeled_fraction=0.5, method="supervised", preset="tiny", device="cpu", model_out=tmp_path / "m"
    )
    assert (result["n_labeled"], result["n_val"]) == (2, 1)  # stacks are chosen, never planes of one
    assert result["z_stacks"]["labeled_planes"] == 6 and result["z_stacks"]["test_planes"] == 3
    (row,) = result["test"]["per_image"]
    assert (row["id"], row["planes"]) == ("s4", 3) and 0.0 <= row["dice"] <= 1.0
    assert len(result["test"]["per_plane"]["per_image"]) == 3
    assert result["test"]["dice_mean"] == pytest.approx(row["dice"])
    # diffseg evaluate of that model on the stacks: the same per-stack score
    from napari_diffseg.predict import evaluate_folder

    scored = evaluate_folder(tmp_path / "m", ds, device="cpu")
    assert [r["id"] for r in scored["per_image"]] == ["s4"]
    assert row["z_step"] is None  # the test stacks carry no pixel size
    assert scored["dice_mean"] == pytest.approx(row["dice"], abs=1e-6)


def test_a_stack_costs_its_planes() -> None:
    from types import SimpleNamespace

    from napari_diffseg.base.cost import job_plan

    flat = SimpleNamespace(id="a", name="a", height=443, width=512, state="unlabeled", split="train")
    stack = SimpleNamespace(**{**vars(flat), "axes": "ZYX", "shape": [5, 443, 512]})
    one = job_plan("propose", "cpu", [flat]).seconds - job_plan("propose", "cpu", []).seconds
    five = job_plan("propose", "cpu", [stack]).seconds - job_plan("propose", "cpu", []).seconds
    assert five == pytest.approx(5 * one)
    # the estimate's text says what the cost follows: "1 image(s) of 512×443 (5 planes)"
    assert job_plan("propose", "cpu", [stack]).sizes == "512×443 (5 planes)"
    assert job_plan("propose", "cpu", [flat]).sizes == "512×443"


def test_a_v3_project_opens_with_its_2d_records_as_they_were(tmp_path: Path) -> None:
    import hashlib
    import sqlite3

    from napari_diffseg.base.formats import tiff_bytes
    from napari_diffseg.project._util import content_id
    from napari_diffseg.project.schema import SCHEMA_VERSION, apply_migrations, bootstrap

    root = tmp_path / "old"
    for sub in ("images", "annotations", "proposals", "models", "jobs"):
        (root / sub).mkdir(parents=True)
    con = sqlite3.connect(root / "project.db", isolation_level=None)
    bootstrap(con, 0.0)
    assert apply_migrations(con, target=3) == 3
    image = _stack(planes=1)[0]  # a 2D image of an older project: (1, H, W)
    image_id = content_id(image)
    data = tiff_bytes(image)
    (root / "images" / f"{image_id}.tif").write_bytes(data)
    mask = np.zeros((48, 56), np.uint8)
    mask[4:9, 4:9] = 1
    (root / "annotations" / image_id).mkdir()
    mask_data = tiff_bytes(mask)
    (root / "annotations" / image_id / "1.tif").write_bytes(mask_data)
    con.execute(
        "INSERT INTO images (id, name, height, width, channels, dtype, file_sha256, created_at, axes, shape) "
        "VALUES (?, 'old', 48, 56, 1, 'uint8', ?, 0, 'YX', '[48, 56]')",
        (image_id, hashlib.sha256(data).hexdigest()),
    )
    con.execute(
        "INSERT INTO annotations (image_id, version, kind, labels, file_sha256, created_at) "
        "VALUES (?, 1, 'correction', 1, ?, 0)",
        (image_id, hashlib.sha256(mask_data).hexdigest()),
    )
    con.close()
    with Project.open(root) as proj:  # migration 4 adds the z-stack columns; 2D records are unchanged
        assert proj.schema_version == SCHEMA_VERSION  # migrated to the newest schema
        rec = proj.image("old")
        assert (rec.is_stack, rec.planes, rec.plane) == (False, 1, None)
        assert proj.annotation("old").planes is None
        np.testing.assert_array_equal(proj.load_annotation("old"), mask)
        assert proj.load_image("old").shape == (1, 48, 56)


def test_hd95_of_a_stack_counts_the_planes_real_distance(tmp_path: Path) -> None:
    # Planes 1 µm apart at 0.202 µm per pixel are 4.95 pixels apart: a mask one plane too deep is off by
    # 4.95 pixels, not 1.
    from napari_diffseg.core.metrics import segmentation_metrics
    from napari_diffseg.data.dataset import DatasetFolder

    truth = np.zeros((6, 20, 20), np.int64)
    truth[1:3, 5:15, 5:15] = 1
    deeper = np.roll(truth, 1, axis=0)
    assert segmentation_metrics(deeper, truth)["hd95"] == pytest.approx(1.0)
    step = (1.0 / 0.202, 1.0, 1.0)
    assert segmentation_metrics(deeper, truth, spacing=step)["hd95"] == pytest.approx(1.0 / 0.202, rel=1e-4)
    assert (
        segmentation_metrics(deeper, truth, spacing=step)["dice"]
        == segmentation_metrics(deeper, truth)["dice"]
    )

    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    image, _ = _stack()
    tifffile.imwrite(
        ds / "images" / "calibrated.tif",
        image,
        imagej=True,
        resolution=(1 / 0.202, 1 / 0.202),
        metadata={"axes": "ZYX", "spacing": 1.0, "unit": "um"},
    )
    _write_stack(ds / "images" / "bare.tif", image)
    folder = DatasetFolder(ds)
    assert folder.voxel_steps("calibrated") == pytest.approx((1.0 / 0.202, 1.0, 1.0), rel=1e-4)
    assert folder.voxel_steps("bare") is None  # no pixel size in the file: unit steps, said in the row


def test_the_planes_a_gui_save_annotates() -> None:
    """What the Annotate widget sends as ``planes`` for a stack (``review.annotated_planes``): the planes
    edited against what was loaded, the replaced version's planes, and the plane on show; never the planes
    that only hold the untouched proposal."""
    from napari_diffseg.review import annotated_planes

    proposal = np.zeros((5, 8, 8), np.int32)
    proposal[:, 2:6, 2:6] = 1  # the proposal labels every plane
    edit = proposal.copy()
    edit[1, 0, 0] = 1
    edit[3, 3, 3] = 0
    assert annotated_planes(edit, proposal) == [1, 3]
    assert annotated_planes(edit, proposal, previous=[0], on_show=4) == [0, 1, 3, 4]
    assert annotated_planes(proposal, proposal, on_show=2) == [2]  # a plane accepted as it is
    assert annotated_planes(proposal, proposal) == []  # nothing edited, nothing on show
    assert annotated_planes(proposal, proposal, previous=[9], on_show=7) == []  # out of range: dropped
    assert annotated_planes(edit, None) == [0, 1, 2, 3, 4]  # nothing to compare with: the labelled planes


def test_instance_experiment_on_stacks_scores_3d_objects(tmp_path: Path) -> None:
    """``experiment --task instances`` on a folder of z-stacks with (Z, H, W) ``instances/``: the 2D networks
    train on the planes' targets, and each test stack's objects are made from all its planes and scored
    in 3D (4 nuclei crossing 3 planes are 4 objects, not 12); ``evaluate`` of the model gives the same."""
    from napari_diffseg.experiment import evaluate_instances_folder, run_experiment

    ds = tmp_path / "ds"
    for sub in ("images", "instances"):
        (ds / sub).mkdir(parents=True)
    rows = ["id,split"]
    yy, xx = np.mgrid[:48, :56]
    for n in range(5):
        rng = np.random.default_rng(20 + n)
        ids = np.zeros((48, 56), np.uint16)
        for k, (cy, cx) in enumerate([(12, 12), (12, 42), (36, 14), (35, 40)]):
            cy, cx = cy + int(rng.integers(-2, 3)), cx + int(rng.integers(-2, 3))
            ids[(yy - cy) ** 2 + (xx - cx) ** 2 <= 7**2] = k + 1
        stack_ids = np.stack([ids] * 3)  # each nucleus crosses the three planes with one id
        image = np.clip(30 + 150 * (stack_ids > 0) + rng.normal(0, 10, stack_ids.shape), 0, 255).astype(
            np.uint8
        )
        _write_stack(ds / "images" / f"s{n}.tif", image)
        tifffile.imwrite(ds / "instances" / f"s{n}.tif", stack_ids)
        rows.append(f"s{n},{'test' if n == 4 else 'train'}")
    (ds / "split.csv").write_text("\n".join(rows) + "\n")
    result = run_experiment(
        ds,
        labeled_fraction=0.5,
        method="supervised",
        preset="tiny",
        device="cpu",
        task="instances",
        model_out=tmp_path / "m",
    )
    assert result["task"] == "instances" and result["z_stacks"]["test_planes"] == 3
    (row,) = result["test"]["per_image"]
    assert (row["id"], row["planes"], row["n_true"]) == ("s4", 3, 4)  # 3D objects
    assert result["test"]["objects_true"] == 4 and 0.0 <= result["test"]["ap_50"] <= 1.0
    scored = evaluate_instances_folder(tmp_path / "m", ds, device="cpu")
    assert [r["id"] for r in scored["per_image"]] == ["s4"] and scored["objects_true"] == 4
    assert scored["ap_50"] == pytest.approx(result["test"]["ap_50"], abs=1e-6)
    assert scored["objects_pred"] == result["test"]["objects_pred"]
    with pytest.raises(Exception, match="multiclass does not read stacks"):
        run_experiment(
            ds,
            labeled_fraction=0.5,
            method="supervised",
            preset="tiny",
            device="cpu",
            task="multiclass",
            classes="background,nucleus",
        )
