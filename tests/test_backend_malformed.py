"""Malformed requests: each gets a 4xx with a ``detail`` message, the server stays up, nothing changes.

Requests go through a raw socket, so paths like ``/images/../x`` and ``%2e%2e`` reach the server exactly
as written (HTTP clients normalise them) and bodies can lie about their length.
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from backend_server import Server, make_project
from napari_diffseg.backend import codec
from napari_diffseg.project import Project

pytestmark = pytest.mark.timeout(180)

MAX_UPLOAD = 2**20  # the server below is started with --max-upload-mb 1
MAX_PIXELS = 200 * 200


def _raw(
    port: int,
    method: str,
    target: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    send_body: bool = True,
    chunked: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request over a fresh connection; returns (status, headers, body)."""
    hdrs = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
    if chunked:
        hdrs["Transfer-Encoding"] = "chunked"
    elif "Content-Length" not in hdrs and (body or method in ("POST", "PUT")):
        hdrs["Content-Length"] = str(len(body))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1"))
        if send_body and body:
            if chunked:
                for i in range(0, len(body), 65536):
                    piece = body[i : i + 65536]
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sock.sendall(b"0\r\n\r\n")
            else:
                sock.sendall(body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_raw, _, payload = data.partition(b"\r\n\r\n")
    lines = head_raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    resp_headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, resp_headers, payload


def _npy(arr: np.ndarray) -> bytes:
    return codec.to_npy(arr)


def _npy_header_only(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 64


def _png(arr: np.ndarray) -> bytes:
    return iio.imwrite("<bytes>", arr, extension=".png")


def _tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    return buf.getvalue()


NPY = {"Content-Type": "application/x-npy"}
PNG = {"Content-Type": "image/png"}
TIF = {"Content-Type": "image/tiff"}
JSON = {"Content-Type": "application/json"}
GOOD = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
MASK = np.zeros((64, 64), np.uint8)
OBJ = io.BytesIO()
np.save(OBJ, np.array([{"a": 1}], dtype=object), allow_pickle=True)


def _cases(img: str) -> Iterator[tuple[str, str, str, bytes, dict[str, str], dict]]:
    """(label, method, target, body, headers, options); ``img`` is an image id without annotations."""
    up = "/api/v1/images?name=x"
    ann = f"/api/v1/images/{img}/annotations"
    # --- image uploads: bad files
    yield "zero-byte npy", "POST", up, b"", NPY, {}
    yield "truncated npy", "POST", up, _npy(GOOD)[:-100], NPY, {}
    yield "padded npy", "POST", up, _npy(GOOD) + b"x" * 10, NPY, {}
    yield "npy claims huge shape", "POST", up, _npy_header_only((100_000, 100_000)), NPY, {}
    yield "npy NaN", "POST", up, _npy(np.full((64, 64), np.nan, np.float32)), NPY, {}
    yield "npy inf", "POST", up, _npy(np.full((64, 64), np.inf, np.float64)), NPY, {}
    yield "npy pickled objects", "POST", up, OBJ.getvalue(), NPY, {}
    yield "npy structured", "POST", up, _npy(np.zeros((64, 64), dtype=[("a", "u1"), ("b", "f4")])), NPY, {}
    yield "npy complex", "POST", up, _npy(np.zeros((64, 64), np.complex64)), NPY, {}
    yield "npy 4D", "POST", up, _npy(np.zeros((2, 3, 64, 64), np.uint8)), NPY, {}
    yield "npy 1D", "POST", up, _npy(np.zeros(4096, np.uint8)), NPY, {}
    yield "npy 5 channels", "POST", up, _npy(np.zeros((5, 64, 64), np.uint8)), NPY, {}
    yield "npy 4x4", "POST", up, _npy(np.zeros((4, 4), np.uint8)), NPY, {}
    yield "npy too many pixels", "POST", up, _npy(np.zeros((300, 300), np.uint8)), NPY, {}
    yield "garbage as npy", "POST", up, b"\x93NUMPY garbage" * 10, NPY, {}
    yield "zero-byte png", "POST", up, b"", PNG, {}
    yield "truncated png", "POST", up, _png(GOOD)[:200], PNG, {}
    yield "garbage png", "POST", up, b"not a png at all" * 20, PNG, {}
    yield "png too many pixels", "POST", up, _png(np.zeros((300, 300), np.uint8)), PNG, {}
    yield "png is really a tiff", "POST", up, _tiff(GOOD), PNG, {}
    yield "truncated tiff", "POST", up, _tiff(GOOD)[:300], TIF, {}
    yield "tiff NaN", "POST", up, _tiff(np.full((64, 64), np.nan, np.float32)), TIF, {}
    yield "tiff 3D stack", "POST", up, _tiff(np.zeros((10, 64, 64), np.uint8)), TIF, {}
    # --- image uploads: bad requests
    yield "content-type text/plain", "POST", up, _npy(GOOD), {"Content-Type": "text/plain"}, {}
    yield "no content-type", "POST", up, _npy(GOOD), {}, {}
    yield "content-type json", "POST", up, _npy(GOOD), JSON, {}
    yield (
        "content-length over limit",
        "POST",
        up,
        _npy(GOOD),
        {**NPY, "Content-Length": str(MAX_UPLOAD * 4)},
        {"send_body": False},
    )
    yield "chunked body over limit", "POST", up, b"\0" * (MAX_UPLOAD + 300_000), NPY, {"chunked": True}
    yield "npy sent as tiff", "POST", up, _npy(GOOD), TIF, {}
    yield "missing name", "POST", "/api/v1/images", _npy(GOOD), NPY, {}
    yield "name with ../", "POST", "/api/v1/images?name=../../etc", _npy(GOOD), NPY, {}
    yield "name with slash", "POST", "/api/v1/images?name=a/b", _npy(GOOD), NPY, {}
    yield "empty name", "POST", "/api/v1/images?name=", _npy(GOOD), NPY, {}
    yield "name too long", "POST", "/api/v1/images?name=" + "n" * 300, _npy(GOOD), NPY, {}
    yield "unknown split", "POST", "/api/v1/images?name=ok&split=holdout", _npy(GOOD), NPY, {}
    # --- image references and path traversal
    yield "ref %2e%2e", "GET", "/api/v1/images/%2e%2e", b"", {}, {}
    yield "ref %2e%2e pixels", "GET", "/api/v1/images/%2e%2e/pixels", b"", {}, {}
    yield "ref ../ raw", "GET", "/api/v1/images/../../project.db", b"", {}, {}
    yield "ref ..%2f", "GET", "/api/v1/images/..%2f..%2fproject.db/pixels", b"", {}, {}
    yield "ref %2e%2e%2f", "GET", "/api/v1/images/%2e%2e%2f%2e%2e%2fproject.db", b"", {}, {}
    yield "ref leading dot", "GET", "/api/v1/images/.hidden", b"", {}, {}
    yield "ref NUL", "GET", "/api/v1/images/a%00b", b"", {}, {}
    yield "ref backslash", "GET", "/api/v1/images/..%5c..%5cx", b"", {}, {}
    yield "unknown image", "GET", "/api/v1/images/no-such-image", b"", {}, {}
    yield "version 0", "GET", f"/api/v1/images/{img}/annotations/0/pixels", b"", {}, {}
    yield "version -1", "GET", f"/api/v1/images/{img}/annotations/-1/pixels", b"", {}, {}
    yield "version missing", "GET", f"/api/v1/images/{img}/annotations/99/pixels", b"", {}, {}
    yield "version text", "GET", f"/api/v1/images/{img}/annotations/abc/pixels", b"", {}, {}
    yield "version huge", "GET", f"/api/v1/images/{img}/annotations/{10**30}/pixels", b"", {}, {}
    # --- annotation saves
    yield "mask wrong shape", "POST", ann, _npy(np.zeros((32, 64), np.uint8)), NPY, {}
    yield "mask negative", "POST", ann, _npy(np.full((64, 64), -1, np.int16)), NPY, {}
    yield "mask fractional", "POST", ann, _npy(np.full((64, 64), 0.5, np.float32)), NPY, {}
    yield "mask NaN", "POST", ann, _npy(np.full((64, 64), np.nan, np.float32)), NPY, {}
    yield "mask 3D", "POST", ann, _npy(np.zeros((2, 64, 64), np.uint8)), NPY, {}
    yield "mask png RGB differing", "POST", ann, _png(np.dstack([MASK, MASK + 1, MASK])), PNG, {}
    yield "mask zero bytes", "POST", ann, b"", NPY, {}
    yield "replaces -1", "POST", ann + "?replaces=-1", _npy(MASK), NPY, {}
    yield "replaces 0", "POST", ann + "?replaces=0", _npy(MASK), NPY, {}
    yield "replaces text", "POST", ann + "?replaces=abc", _npy(MASK), NPY, {}
    yield "replaces huge", "POST", ann + f"?replaces={10**30}", _npy(MASK), NPY, {}
    yield "replaces stale", "POST", ann + "?replaces=5", _npy(MASK), NPY, {}
    yield "kind bogus", "POST", ann + "?kind=bogus", _npy(MASK), NPY, {}
    yield "proposal unknown", "POST", ann + "?proposal_id=999", _npy(MASK), NPY, {}
    yield "author too long", "POST", ann + "?author=" + "a" * 300, _npy(MASK), NPY, {}
    yield "mask for unknown image", "POST", "/api/v1/images/nope/annotations", _npy(MASK), NPY, {}
    # --- proposals
    yield "no proposal yet", "GET", f"/api/v1/images/{img}/proposal", b"", {}, {}
    yield "proposal part bogus", "GET", f"/api/v1/images/{img}/proposal/pixels?part=bogus", b"", {}, {}
    yield "proposal model ../", "GET", f"/api/v1/images/{img}/proposal?model_id=..%2Fx", b"", {}, {}
    yield "proposals bad json", "POST", "/api/v1/proposals", b"{not json", JSON, {}
    yield "proposals steps -1", "POST", "/api/v1/proposals", b'{"steps": -1}', JSON, {}
    yield "proposals unknown id", "POST", "/api/v1/proposals", b'{"ids": ["nope"]}', JSON, {}
    yield "proposals unknown field", "POST", "/api/v1/proposals", b'{"evil": 1}', JSON, {}
    yield "proposals ids not a list", "POST", "/api/v1/proposals", b'{"ids": "abc"}', JSON, {}
    # --- jobs
    yield "job kind unknown", "POST", "/api/v1/jobs", b'{"kind": "rm -rf"}', JSON, {}
    yield (
        "job preset unknown",
        "POST",
        "/api/v1/jobs",
        b'{"kind": "cotrain", "params": {"preset": "huge"}}',
        JSON,
        {},
    )
    yield (
        "job override type",
        "POST",
        "/api/v1/jobs",
        b'{"kind": "cotrain", "params": {"overrides": {"lr": "x"}}}',
        JSON,
        {},
    )
    yield (
        "job override name",
        "POST",
        "/api/v1/jobs",
        b'{"kind": "cotrain", "params": {"overrides": {"no": 1}}}',
        JSON,
        {},
    )
    yield (
        "job override huge",
        "POST",
        "/api/v1/jobs",
        b'{"kind": "cotrain", "params": {"overrides": {"cotrain_steps": 1e12}}}',
        JSON,
        {},
    )
    yield "job rounds 0", "POST", "/api/v1/jobs", b'{"kind": "cotrain", "params": {"rounds": 0}}', JSON, {}
    yield (
        "job seed negative",
        "POST",
        "/api/v1/jobs",
        b'{"kind": "cotrain", "params": {"seed": -5}}',
        JSON,
        {},
    )
    yield (
        "job unknown param",
        "POST",
        "/api/v1/jobs",
        b'{"kind": "pretrain", "params": {"evil": 1}}',
        JSON,
        {},
    )
    yield (
        "job device injection",
        "POST",
        "/api/v1/jobs",
        b'{"kind": "pretrain", "params": {"device": "cuda; rm"}}',
        JSON,
        {},
    )
    yield "job params not a dict", "POST", "/api/v1/jobs", b'{"kind": "pretrain", "params": [1]}', JSON, {}
    yield "job body not json", "POST", "/api/v1/jobs", b"kind=cotrain", JSON, {}
    yield "job body a list", "POST", "/api/v1/jobs", b"[]", JSON, {}
    yield "job body empty", "POST", "/api/v1/jobs", b"", JSON, {}
    yield "job id 0", "GET", "/api/v1/jobs/0", b"", {}, {}
    yield "job id negative", "GET", "/api/v1/jobs/-3", b"", {}, {}
    yield "job id text", "GET", "/api/v1/jobs/abc", b"", {}, {}
    yield "job id huge", "GET", f"/api/v1/jobs/{10**30}", b"", {}, {}
    yield "job unknown", "GET", "/api/v1/jobs/999999", b"", {}, {}
    yield "job events since -1", "GET", "/api/v1/jobs/1/events?since=-1", b"", {}, {}
    yield "job stream unknown", "GET", "/api/v1/jobs/999999/stream", b"", {}, {}
    yield "jobs state bogus", "GET", "/api/v1/jobs?state=bogus", b"", {}, {}
    yield "cancel unknown job", "POST", "/api/v1/jobs/999999/cancel", b"", JSON, {}
    yield "resume unknown job", "POST", "/api/v1/jobs/999999/resume", b"", JSON, {}
    # --- models, routing, host
    yield "weights traversal", "GET", "/api/v1/models/..%2F..%2Fproject.db/weights", b"", {}, {}
    yield "weights %2e%2e", "GET", "/api/v1/models/%2e%2e/weights", b"", {}, {}
    yield "model with dot", "GET", "/api/v1/models/a.b", b"", {}, {}
    yield "model unknown", "GET", "/api/v1/models/nope", b"", {}, {}
    yield "activate unknown", "POST", "/api/v1/models/nope/activate", b"", JSON, {}
    yield "unknown endpoint", "GET", "/api/v1/nothing-here", b"", {}, {}
    yield "wrong method", "DELETE", "/api/v1/images", b"", {}, {}
    yield "foreign Host header", "GET", "/api/v1/project", b"", {"Host": "evil.example"}, {}
    yield "next bad split length", "GET", "/api/v1/next?split=" + "s" * 100, b"", {}, {}
    yield "next unknown strategy", "GET", "/api/v1/next?strategy=bald", b"", {}, {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    root = make_project(tmp_path_factory.mktemp("bad") / "proj", n_train=2, annotate=1)
    with Server(root, "--max-upload-mb", "1", "--max-pixels", str(MAX_PIXELS), "--no-jobs") as srv:
        yield srv


def test_malformed_requests_get_4xx_with_detail_and_change_nothing(server: Server) -> None:
    with Project.open(server.root) as project:
        before = project.counts()
        img = project.image("train_001").id
    cases = list(_cases(img))
    assert len(cases) >= 50
    failures = []
    for label, method, target, body, headers, options in cases:
        status, resp_headers, payload = _raw(server.port, method, target, body, headers, **options)
        try:
            detail = json.loads(payload)["detail"]
        except (ValueError, KeyError, TypeError):
            detail = None
        if not (400 <= status < 500 and isinstance(detail, str) and len(detail) > 10):
            failures.append(f"{label}: {status} {payload[:200]!r}")
        elif "application/json" not in resp_headers.get("content-type", ""):
            failures.append(f"{label}: content type {resp_headers.get('content-type')}")
    assert not failures, "\n".join(failures)
    assert server.alive()
    with Project.open(server.root) as project:
        assert project.counts() == before  # nothing was written
        report = project.check()
    assert report["ok"], report["problems"]


def test_specific_statuses(server: Server) -> None:
    port = server.port
    assert _raw(port, "POST", "/api/v1/images?name=x", _npy(GOOD), {"Content-Type": "text/plain"})[0] == 415
    big = {**NPY, "Content-Length": str(MAX_UPLOAD + 1)}
    assert _raw(port, "POST", "/api/v1/images?name=x", b"", big, send_body=False)[0] == 413
    assert _raw(port, "POST", "/api/v1/images?name=x", b"\0" * (MAX_UPLOAD + 10), NPY, chunked=True)[0] == 413
    status, _, payload = _raw(port, "GET", "/api/v1/images/%2e%2e/pixels")
    assert status == 400 and "invalid image reference" in json.loads(payload)["detail"]
    status, _, payload = _raw(
        port, "POST", "/api/v1/images/train_000/annotations?replaces=7", _npy(MASK), NPY
    )
    body = json.loads(payload)
    assert status == 409 and body["code"] == "stale_annotation" and body["current"] == 1
    assert _raw(port, "GET", "/api/v1/images/no-such-image")[0] == 404
    assert _raw(port, "POST", "/api/v1/jobs", b'{"kind": "nope"}', JSON)[0] == 422
    assert (
        _raw(port, "POST", "/api/v1/jobs", b'{"kind": "cotrain", "params": {"preset": "x"}}', JSON)[0] == 400
    )
    # a valid upload still works after all that (the limits are not too tight)
    status, _, payload = _raw(port, "POST", "/api/v1/images?name=fine", _npy(GOOD), NPY)
    assert status == 201 and json.loads(payload)["added"] is True


def test_job_state_conflicts(server: Server) -> None:
    port = server.port
    status, _, payload = _raw(
        port, "POST", "/api/v1/jobs", b'{"kind": "pretrain", "params": {"preset": "tiny"}}', JSON
    )
    assert status == 202
    job = json.loads(payload)
    assert job["state"] == "queued"  # --no-jobs: it waits
    resume = f"/api/v1/jobs/{job['id']}/resume"
    assert _raw(port, "POST", resume, b"", JSON)[0] == 409  # queued: nothing to resume
    status, _, payload = _raw(port, "POST", f"/api/v1/jobs/{job['id']}/cancel", b"", JSON)
    assert status == 202 and json.loads(payload)["state"] == "cancelled"
    status, _, payload = _raw(port, "POST", f"/api/v1/jobs/{job['id']}/cancel", b"", JSON)
    assert status == 409 and "already cancelled" in json.loads(payload)["detail"]
    status, _, payload = _raw(port, "POST", f"/api/v1/jobs/{job['id']}/resume", b"", JSON)
    assert status == 202 and json.loads(payload)["state"] == "queued"
    _raw(port, "POST", f"/api/v1/jobs/{job['id']}/cancel", b"", JSON)
