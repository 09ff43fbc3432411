"""The backend through its client, against a real ``diffseg serve`` on loopback (docs/architecture.md §2.4)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from backend_server import SRC, Server, make_project
from napari_diffseg.backend import codec
from napari_diffseg.backend.client import DiffsegClient
from napari_diffseg.backend.errors import AuthError, BackendError, StaleAnnotation
from napari_diffseg.base.contracts import SavedAnnotation

pytestmark = pytest.mark.timeout(240)

TOKEN = "t0ken-for-the-tests-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    root = make_project(tmp_path_factory.mktemp("api") / "proj", n_train=4, annotate=1)
    with Server(root) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> DiffsegClient:
    with DiffsegClient(server.url, timeout=30) as c:
        yield c


def test_images_upload_list_pixels_and_annotations(
    client: DiffsegClient, server: Server, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 60000, (72, 90), dtype=np.uint16)
    up = client.upload_image(grey16, name="grey16", split="val")
    assert up.added and up.image.name == "grey16" and up.image.split == "val"
    assert (up.image.height, up.image.width, up.image.dtype) == (72, 90, "uint16")
    assert client.upload_image(grey16, name="again").added is False  # same pixels: stored once

    rgb = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
    png = tmp_path / "rgb.png"
    iio.imwrite(png, rgb)
    tif = tmp_path / "float.tif"
    tifffile.imwrite(tif, rng.random((33, 35), dtype=np.float32))
    assert client.upload_image(png).image.channels == 3
    assert client.upload_image(tif).image.dtype == "float32"

    listed = {r.name: r for r in client.images()}
    assert {"grey16", "rgb", "float", "train_000"} <= set(listed)
    assert listed["train_000"].state == "corrected" and listed["grey16"].state == "unlabeled"
    assert [r.name for r in client.images(split="val")] == ["grey16"]

    # pixels come back byte-identical: the exact .npy of the stored (C, H, W) array
    img_id = up.image.id
    resp = httpx.get(f"{server.url}/api/v1/images/{img_id}/pixels")
    assert resp.status_code == 200 and resp.headers["content-type"] == codec.NPY
    assert resp.headers["X-Shape"] == "1,72,90" and resp.headers["X-Dtype"] == "uint16"
    assert resp.content == codec.to_npy(grey16[np.newaxis])
    back = client.image_pixels("grey16")
    assert back.dtype == np.uint16 and np.array_equal(back[0], grey16)
    assert np.array_equal(np.moveaxis(client.image_pixels("rgb"), 0, -1), rgb)

    # annotations: versions, pixels, stale saves refused with the current version
    first = (rng.random((72, 90)) > 0.5).astype(np.uint8)
    second = first.copy()
    second[:10] = 2
    saved = client.save_annotation("grey16", first, replaces=None, kind="ground_truth", author="me")
    assert saved.version == 1 and saved.annotation.kind == "ground_truth"
    png_mask = tmp_path / "mask.png"
    iio.imwrite(png_mask, second)
    assert client.save_annotation(img_id, png_mask, replaces=1).version == 2
    with pytest.raises(StaleAnnotation) as stale:
        client.save_annotation(img_id, first, replaces=1)
    assert stale.value.current == 2 and stale.value.status == 409
    versions = client.annotations("grey16")
    assert [v.version for v in versions] == [1, 2] and versions[1].replaces == 1
    assert np.array_equal(client.annotation_pixels("grey16", 1), first)
    assert np.array_equal(client.annotation_pixels("grey16"), second)
    image = client.image("grey16")
    assert image.state == "corrected" and image.latest_version == 2
    assert client.annotation_pixels("rgb") is None
    assert client.proposal("grey16") is None
    with pytest.raises(BackendError) as missing:
        client.image("no-such-image")
    assert missing.value.status == 404 and "GET /images" in missing.value.message


def test_cotrain_job_events_models_proposals_next(
    client: DiffsegClient, server: Server, tmp_path: Path
) -> None:
    models_before = {m.id for m in client.models()}
    job = client.start_job("cotrain", {"preset": "tiny", "seed": 1})
    assert job.state == "queued" and job.kind == "cotrain"

    streamed = list(client.stream_events(job.id))  # opened while queued: history + live, ends at the end
    final = client.job(job.id)
    assert final.state == "done", final.error
    seqs = [e.seq for e in streamed]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 5
    assert streamed[-1].data.kind == "done"
    assert any(e.data.kind == "progress" and e.data.phase == "cotrain" for e in streamed)

    # the cursor API gives the same events, page by page
    polled, cursor = [], 0
    while True:
        page = client.events(job.id, since=cursor, limit=4)
        if not page.events:
            break
        polled += page.events
        cursor = page.next
    assert [e.seq for e in polled] == seqs and page.job.state == "done"
    assert [e.seq for e in client.stream_events(job.id, since=3)] == seqs[3:]

    # the new model, active, with downloadable safetensors weights
    models = client.models()
    new = [m for m in models if m.id not in models_before]
    assert len(new) == 1 and new[0].active and new[0].round >= 1
    assert client.project().active_model.id == new[0].id
    weights = client.download_weights(new[0].id, tmp_path)
    raw = weights.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert json.loads(raw[8 : 8 + header_len])  # a safetensors header: tensor names → dtype/shape/offsets
    assert client.activate_model(new[0].id).active

    # proposals for two images through a propose job, then the cached pixels
    prop_job = client.request_proposals(
        ["train_001", "train_002"], steps=1, samples=2, rounds=1, preset="tiny"
    )
    assert client.wait(prop_job.id, timeout=120).state == "done"
    record = client.proposal("train_001")
    assert record is not None and record.model_id == new[0].id
    # a binary project (issue 13): the mask saved above with labels 1 and 2 is foreground, so 2 classes,
    # never one class per label value
    assert record.classes == 2
    probs = client.proposal_pixels("train_001", "probs")
    unc = client.proposal_pixels("train_001", "uncertainty")
    mask = client.proposal_pixels("train_001", "mask")
    assert probs.shape == (2, 64, 64) and probs.dtype == np.float32
    assert np.allclose(probs.sum(0), 1, atol=1e-3) and unc.shape == (64, 64)
    assert mask.dtype == np.uint8 and np.array_equal(mask, probs.argmax(0))
    assert np.array_equal(client.proposal_pixels("train_001", "mask"), mask)  # from the cache file now

    # next: the unreviewed image with the highest uncertainty; 204 (None) when a split has none
    nxt = client.next_image(split="train")
    candidates = [r for r in client.images(split="train") if r.state in ("unlabeled", "proposed")]
    best = max(candidates, key=lambda r: -1 if r.uncertainty is None else r.uncertainty)
    assert nxt is not None and nxt.id == best.id and nxt.uncertainty is not None
    assert client.next_image(split="test-none") is None
    drawn = client.next_image(split="train", strategy="power")  # a draw weighted by uncertainty
    assert drawn is not None and drawn.id in {r.id for r in candidates if r.uncertainty is not None}

    # a correction of a proposal records the edit Dice shown in the image list
    edited = mask.copy()
    edited[:8] = 1 - edited[:8]
    saved = client.save_annotation("train_001", edited, replaces=None, proposal_id=record.id)
    assert 0 <= saved.annotation.edit_dice < 1
    listed = {r.name: r for r in client.images()}
    assert listed["train_001"].last_edit_dice == pytest.approx(saved.annotation.edit_dice)
    assert client.health().jobs_running == 0


def test_two_clients_same_replaces_exactly_one_wins(server: Server) -> None:
    a, b = DiffsegClient(server.url), DiffsegClient(server.url)
    ref = "train_003"
    base = a.annotations(ref)
    current = base[-1].version if base else None
    masks = {name: np.full((64, 64), i, dtype=np.uint8) for i, name in enumerate(("a", "b"), start=1)}

    def save(
        name: str, client: DiffsegClient, replaces: int | None, barrier: threading.Barrier, results: dict
    ) -> None:
        barrier.wait()
        try:
            results[name] = client.save_annotation(ref, masks[name], replaces=replaces)
        except StaleAnnotation as exc:
            results[name] = exc

    for _round in range(4):
        barrier = threading.Barrier(2)
        results: dict[str, object] = {}
        threads = [
            threading.Thread(target=save, args=(n, c, current, barrier, results))
            for n, c in (("a", a), ("b", b))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        wins = {n: r for n, r in results.items() if isinstance(r, SavedAnnotation)}
        losses = {n: r for n, r in results.items() if isinstance(r, StaleAnnotation)}
        assert len(wins) == 1 and len(losses) == 1, results
        (winner, won), (_loser, lost) = next(iter(wins.items())), next(iter(losses.items()))
        assert lost.current == won.version == (current or 0) + 1
        assert np.array_equal(a.annotation_pixels(ref, won.version), masks[winner])
        current = won.version
    versions = [v.version for v in a.annotations(ref)]
    assert versions == list(range(1, current + 1))  # contiguous: nothing lost, nothing overwritten
    a.close()
    b.close()


def test_token_required_and_compared(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", n_train=1, annotate=0)
    with Server(root, token=TOKEN) as srv:
        url = srv.url + "/api/v1/project"
        none = httpx.get(url)
        assert none.status_code == 401 and "Bearer" in none.json()["detail"]
        assert none.headers["www-authenticate"].startswith("Bearer")
        wrong = httpx.get(url, headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
        assert wrong.status_code == 401 and "wrong token" in wrong.json()["detail"]
        assert httpx.get(url, headers={"Authorization": "Basic " + TOKEN}).status_code == 401
        assert httpx.get(srv.url + "/openapi.json").status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer " + TOKEN}).status_code == 200
        with pytest.raises(AuthError):
            DiffsegClient(srv.url, token="not-the-token-at-all").health()
        with DiffsegClient(srv.url, token=TOKEN) as ok:
            assert ok.project().counts.images == 1


def test_serve_refuses_public_host_without_token(tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", n_train=1, annotate=0)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("DIFFSEG_TOKEN", None)
    cmd = [sys.executable, "-m", "napari_diffseg.cli", "serve", str(root), "--host", "0.0.0.0"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2
    assert (
        out.stderr.startswith("error: refusing to listen on 0.0.0.0 without a token")
        and out.stderr.count("\n") == 1
    )
    short = subprocess.run([*cmd, "--token", "short"], capture_output=True, text=True, env=env, timeout=60)
    assert short.returncode == 2 and "at least 16" in short.stderr


def test_backend_package_imports_no_gui_and_client_no_server() -> None:
    code = (
        "import sys, napari_diffseg.backend, napari_diffseg.backend.client, napari_diffseg.backend.errors; "
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'fastapi', 'torch', 'uvicorn'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_codec_round_trip_and_safety() -> None:
    for arr in (np.arange(12, dtype=">u2").reshape(3, 4), np.asfortranarray(np.ones((5, 6), np.float32))):
        assert np.array_equal(codec.from_npy(codec.to_npy(arr)), arr)
    bomb = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        bomb, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)}
    )
    with pytest.raises(Exception, match=r"truncated|limit"):
        codec.from_npy(bomb.getvalue(), max_elements=10**6)


def test_sse_stream_handles_comments_multiline_data_and_names() -> None:
    lines = [
        ": stream of job 1",
        "",
        "id: 1",
        "event: job",
        'data: {"job_id": 1, "seq": 1, "time": 0.5,',
        'data:  "data": {"kind": "log", "phase": "cotrain", "message": "x"}}',
        "",
        ": ping",
        "",
    ]
    lines += ["event: end", 'data: {"state": "done"}', ""]
    body = ("\n".join(lines) + "\n").encode()

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/jobs/1/stream"
        return httpx.Response(200, content=body, headers={"Content-Type": "text/event-stream"})

    client = DiffsegClient("http://backend.test")
    client._http = httpx.Client(base_url="http://backend.test/api/v1", transport=httpx.MockTransport(handler))
    events = list(client.stream_events(1))
    assert [(e.job_id, e.seq, e.time) for e in events] == [(1, 1, 0.5)]
    assert (events[0].data.kind, events[0].data.phase, events[0].data.message) == ("log", "cotrain", "x")
