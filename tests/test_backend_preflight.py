"""Upload = import, duplicate uploads, and the job pre-flight (docs/architecture.md §2.4, §3).

An upload passes exactly the checks ``diffseg import`` applies to a file; concurrent uploads of the same
pixels store one image and answer 201 once; a job the project or this machine cannot run is refused
before it is created, the same way by ``POST /jobs`` and by the CLI.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient

from napari_diffseg.backend import codec, preflight
from napari_diffseg.backend.app import create_app
from napari_diffseg.backend.preflight import Machine, PreflightError, check_job, memory_estimate
from napari_diffseg.base.contracts import parse_job_params
from napari_diffseg.base.presets import get_preset
from napari_diffseg.cli import main
from napari_diffseg.project import Project

pytestmark = pytest.mark.timeout(240)

NPY = {"Content-Type": codec.NPY}


def _grey(seed: int, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)


def _project(root: Path, *, annotate: bool = True, grey: bool = True) -> Path:
    """Two train images (grey, or RGB), the first one annotated when ``annotate``."""
    with Project.create(root) as p:
        for i in range(2):
            img = _grey(i) if grey else np.stack([_grey(i), _grey(i + 10), _grey(i + 20)], -1)
            p.import_array(img, f"img{i}")
        if annotate:
            p.save_annotation("img0", (_grey(0) > 128).astype(np.uint8), replaces=None, author="test")
    return root


def _fake_model(project: Project, tmp: Path, *, in_channels: int, method: str = "diffseg") -> str:
    """A registered, active model folder whose config.json says what it takes (no weights needed here)."""
    folder = tmp / f"model-{in_channels}-{method}"
    folder.mkdir()
    spec = {
        "method": method,
        "in_channels": in_channels,
        "num_classes": 2,
        "student_channels": [8, 16],
        "teacher_channels": [8, 16],
        "emb_dim": 16,
    }
    (folder / "config.json").write_text(json.dumps({"spec": spec}))
    mid = project.register_model(folder, round=0, method=method)
    project.set_active_model(mid)
    return mid


def _client(root: Path) -> TestClient:
    return TestClient(create_app(root, run_jobs=False), base_url="http://127.0.0.1")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return _project(tmp_path / "p")


@pytest.fixture
def client(root: Path) -> Iterator[TestClient]:
    with _client(root) as c:
        yield c


def _counts(root: Path) -> tuple[int, list[int]]:
    with Project.open(root) as p:
        return p.counts()["images"], [j.id for j in p.jobs()]


def _assert_error(resp, status: int, *needles: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) >= {"detail", "code"} and isinstance(body["detail"], str)
    for needle in needles:
        assert needle in body["detail"], body["detail"]
    return body["detail"]


# ------------------------------------------------------------------------------------------ upload = import


def test_float64_beyond_float32_is_refused_by_upload_and_import_alike(
    client: TestClient, root: Path, tmp_path: Path, capsys
) -> None:
    huge = np.full((40, 40), 1e300)
    huge[0, 0] = 1.0
    before = _counts(root)
    resp = client.post("/api/v1/images?name=huge", content=codec.to_npy(huge), headers=NPY)
    detail = _assert_error(resp, 422, "32-bit floating-point range", "rescale")
    assert _counts(root) == before  # nothing stored

    # the same pixels as a file for `diffseg import`: the same check, the same words, exit 2
    tif = tmp_path / "huge.tif"
    tifffile.imwrite(tif, huge)
    assert main(["import", str(root), str(tif)]) == 2
    err = capsys.readouterr().err
    assert "32-bit floating-point range" in err and "Traceback" not in err
    assert detail.split(": ", 1)[1] in err  # the message past the name of the input is the same
    assert _counts(root) == before


def test_nan_upload_is_refused_and_nothing_stored(client: TestClient, root: Path) -> None:
    before = _counts(root)
    img = np.zeros((40, 40), np.float32)
    img[3, 4] = np.nan
    for body, media in (
        (codec.to_npy(img), codec.NPY),
        (iio.imwrite("<bytes>", img, extension=".tif"), codec.TIFF),
    ):
        resp = client.post("/api/v1/images?name=nan", content=body, headers={"Content-Type": media})
        _assert_error(resp, 422, "NaN")
    assert _counts(root) == before


def test_channel_mismatch_upload_is_refused_naming_both_counts(
    client: TestClient, root: Path, tmp_path: Path, capsys
) -> None:
    rgb = np.stack([_grey(5), _grey(6), _grey(7)], -1)
    with Project.open(root) as p:
        _fake_model(p, tmp_path, in_channels=1)
    before = _counts(root)
    resp = client.post("/api/v1/images?name=rgb", content=codec.to_npy(rgb), headers=NPY)
    _assert_error(resp, 422, "3 channels", "takes 1")
    assert _counts(root) == before

    png = tmp_path / "rgb.png"
    iio.imwrite(png, rgb)
    assert main(["import", str(root), str(png)]) == 2
    err = capsys.readouterr().err
    assert "3 channels" in err and "takes 1" in err
    assert _counts(root) == before

    # fewer channels than the model takes are fine (grey is repeated to RGB), and so is any mix before a
    # project has a model
    grey = client.post("/api/v1/images?name=grey", content=codec.to_npy(_grey(8)), headers=NPY)
    assert grey.status_code == 201


def test_rgb_into_a_grey_project_without_a_model_is_accepted(tmp_path: Path) -> None:
    root = _project(tmp_path / "p", annotate=False)
    rgb = np.stack([_grey(5), _grey(6), _grey(7)], -1)
    with _client(root) as c:
        assert c.post("/api/v1/images?name=rgb", content=codec.to_npy(rgb), headers=NPY).status_code == 201


def test_eight_concurrent_identical_uploads_store_one_image_and_answer_201_once(
    client: TestClient, root: Path
) -> None:
    pixels = np.random.default_rng(1).random((384, 384), dtype=np.float32)
    body = codec.to_npy(pixels)
    before, _ = _counts(root)
    gate = threading.Barrier(8)
    answers: list[tuple[int, bool, str]] = []
    lock = threading.Lock()

    def upload(i: int) -> None:
        gate.wait()
        resp = client.post(f"/api/v1/images?name=same{i}", content=body, headers=NPY)
        out = resp.json()
        with lock:
            answers.append((resp.status_code, out["added"], out["image"]["id"]))

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted((status, added) for status, added, _ in answers) == [(200, False)] * 7 + [(201, True)]
    assert len({image_id for _, _, image_id in answers}) == 1
    assert _counts(root)[0] == before + 1


def test_store_decides_new_pixels_atomically_across_connections(tmp_path: Path) -> None:
    root = tmp_path / "p"
    Project.create(root).close()
    pixels = np.random.default_rng(2).random((256, 256), dtype=np.float32)
    gate = threading.Barrier(8)
    results: list[tuple[str, bool]] = []

    def add(i: int) -> None:
        with Project.open(root) as p:  # one connection per thread, as the backend has
            gate.wait()
            results.append(p.add_array(pixels, f"same{i}"))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(added for _, added in results) == [False] * 7 + [True]
    assert len({i for i, _ in results}) == 1
    with Project.open(root) as p:
        assert p.counts()["images"] == 1


# ------------------------------------------------------------------------------------------ the pre-flight


def test_nproc_beyond_the_cpus_is_refused_before_a_job_exists(
    client: TestClient, root: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(preflight.os, "cpu_count", lambda: 4)
    _, jobs = _counts(root)
    params = {"preset": "tiny", "device": "cpu", "nproc": 64}
    resp = client.post("/api/v1/jobs", json={"kind": "cotrain", "params": params})
    _assert_error(resp, 422, "nproc 64", "4 CPU(s)", "nproc 4 or less")
    assert _counts(root)[1] == jobs

    assert main(["cotrain", str(root), "--preset", "tiny", "--device", "cpu", "--nproc", "64", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nproc 4 or less" in err and err.count("\n") == 1
    assert _counts(root)[1] == jobs

    # two gloo processes on a CPU machine (what the DDP tests run) pass
    with Project.open(root) as p:
        check_job(p, parse_job_params("cotrain", {"preset": "tiny", "device": "cpu", "nproc": 2}))


def test_nproc_and_devices_against_the_gpus(root: Path) -> None:
    gpu = Machine(cpus=16, ram_available=2**40, cuda_free=(2**37,), mps=False)
    cpu_only = Machine(cpus=16, ram_available=2**40, cuda_free=(), mps=False)
    cotrain = {"preset": "gpu"}
    with Project.open(root) as p:
        check_job(p, parse_job_params("cotrain", {**cotrain, "device": "cuda"}), gpu)
        check_job(p, parse_job_params("cotrain", {**cotrain, "device": "auto", "nproc": 1}), gpu)
        with pytest.raises(PreflightError, match="1 visible CUDA GPU"):
            check_job(p, parse_job_params("cotrain", {**cotrain, "device": "cuda", "nproc": 2}), gpu)
        with pytest.raises(PreflightError, match="cuda:0 to cuda:0"):
            check_job(p, parse_job_params("cotrain", {**cotrain, "device": "cuda:3"}), gpu)
        with pytest.raises(PreflightError, match="no visible CUDA GPU") as exc:
            check_job(p, parse_job_params("pretrain", {"device": "cuda"}), cpu_only)
        assert exc.value.status == 422
        small_gpu = Machine(cpus=16, ram_available=2**40, cuda_free=(2**20,), mps=False)
        with pytest.raises(PreflightError, match="GPU memory"):
            check_job(p, parse_job_params("cotrain", {**cotrain, "device": "cuda"}), small_gpu)


def test_a_job_whose_memory_estimate_exceeds_the_limit_is_refused(
    client: TestClient, root: Path, monkeypatch, capsys
) -> None:
    tiny = get_preset("tiny")
    limit = 2 * memory_estimate(tiny)
    monkeypatch.setattr(preflight, "available_ram", lambda: limit)
    _, jobs = _counts(root)
    big = {"preset": "tiny", "device": "cpu", "overrides": {"batch_size": 64, "patch_size": 256}}
    assert memory_estimate(tiny.with_overrides(batch_size=64, patch_size=256)) > limit
    resp = client.post("/api/v1/jobs", json={"kind": "cotrain", "params": big})
    _assert_error(resp, 422, "batch_size 64", "patch_size 256", "lower batch_size or patch_size")
    resp = client.post("/api/v1/jobs", json={"kind": "pretrain", "params": big})
    _assert_error(resp, 422, "memory")
    # two processes need twice the memory
    two = {"preset": "tiny", "device": "cpu", "nproc": 2, "overrides": {"batch_size": 2, "patch_size": 32}}
    monkeypatch.setattr(preflight, "available_ram", lambda: int(1.5 * memory_estimate(tiny)))
    _assert_error(
        client.post("/api/v1/jobs", json={"kind": "cotrain", "params": two}), 422, "2 processes", "nproc"
    )
    assert _counts(root)[1] == jobs

    rc = main(["pretrain", str(root), "--preset", "gpu", "--device", "cpu", "-q"])
    assert rc == 2 and "memory" in capsys.readouterr().err
    assert _counts(root)[1] == jobs

    # a job that fits is created
    monkeypatch.setattr(preflight, "available_ram", lambda: limit)
    resp = client.post(
        "/api/v1/jobs", json={"kind": "cotrain", "params": {"preset": "tiny", "device": "cpu"}}
    )
    assert resp.status_code == 202, resp.text
    assert len(_counts(root)[1]) == len(jobs) + 1


def test_memory_estimate_grows_with_batch_patch_and_width() -> None:
    tiny = get_preset("tiny")
    base = memory_estimate(tiny)
    assert memory_estimate(tiny.with_overrides(batch_size=4)) > base
    assert memory_estimate(tiny.with_overrides(patch_size=64)) > base
    assert memory_estimate(tiny.with_overrides(student_channels=(16, 32))) > base
    # the cpu preset (batch 8, 128^2, widths 16 + 16): measured ~0.69 GB in benchmarks/training_memory.py
    assert 0.69e9 < memory_estimate(get_preset("cpu")) < 1.2e9


def test_cotrain_without_annotations_is_refused_api_and_cli(tmp_path: Path, capsys) -> None:
    root = _project(tmp_path / "p", annotate=False)
    with _client(root) as c:
        resp = c.post("/api/v1/jobs", json={"kind": "cotrain", "params": {"preset": "tiny"}})
        _assert_error(resp, 409, "annotated image", "ground_truth")
    assert _counts(root)[1] == []
    rc = main(["cotrain", str(root), "--preset", "tiny", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "annotated image" in err and "Traceback" not in err and err.count("\n") == 1
    assert _counts(root)[1] == []


def test_propose_needs_a_model_and_known_images(
    tmp_path: Path, root: Path, client: TestClient, capsys
) -> None:
    _, jobs = _counts(root)
    resp = client.post("/api/v1/proposals", json={"preset": "tiny"})
    _assert_error(resp, 409, "has none yet", "pretraining")
    resp = client.post("/api/v1/jobs", json={"kind": "propose", "params": {"ids": ["no-such-image"]}})
    _assert_error(resp, 404, "no-such-image")
    assert main(["propose", str(root), "--ids", "no-such-image", "-q"]) == 2
    assert "no-such-image" in capsys.readouterr().err
    assert main(["propose", str(root), "--preset", "tiny", "-q"]) == 2
    assert "pretraining" in capsys.readouterr().err
    with Project.open(root) as p:  # a model without a diffusion teacher cannot propose or be co-trained on
        _fake_model(p, tmp_path, in_channels=1, method="supervised")
    _assert_error(client.post("/api/v1/proposals", json={}), 409, "no diffusion teacher")
    resp = client.post("/api/v1/jobs", json={"kind": "cotrain", "params": {"preset": "tiny"}})
    _assert_error(resp, 409, "no diffusion teacher")
    assert _counts(root)[1] == jobs


def test_pretrain_without_training_images_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    Project.create(root).close()
    with _client(root) as c:
        resp = c.post("/api/v1/jobs", json={"kind": "pretrain", "params": {"preset": "tiny"}})
        _assert_error(resp, 409, "training images")
    assert _counts(root)[1] == []


def test_device_probe_runs_outside_the_server_process() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from napari_diffseg.backend.preflight import current_machine\n"
        "m = current_machine('auto')\n"
        "assert 'torch' not in sys.modules, 'the probe loaded torch in this process'\n"
        "assert m.cuda_free is not None and m.cpus >= 1\n"
        "print(len(m.cuda_free))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
