"""Cross-site writes and bounded requests (docs/architecture.md §2.4, Security).

A web page in the user's browser can send "simple" requests (no preflight) to the loopback backend:
a form POST or a body-less ``fetch`` with a foreign ``Origin``. Every state-changing request must carry
a JSON or binary upload ``Content-Type`` (415 otherwise) and any request with a foreign ``Origin`` is
refused (403 ``cross_origin``), with or without a token. Bodies are bounded (1 MiB of JSON, the upload
limit for pixels) while they are read; JSON with ``NaN`` / ``Infinity`` is refused; header integers
(``Content-Length``, ``Last-Event-ID``) are checked. The client sends what the rules need.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from backend_server import Server, make_project
from napari_diffseg.backend.client import DiffsegClient
from napari_diffseg.backend.security import MAX_JSON_BYTES
from napari_diffseg.project import Project

pytestmark = pytest.mark.timeout(240)

TOKEN = "security-token-0123456789abcdef"
EVIL = "http://evil.example"
JSON_CT = {"Content-Type": "application/json"}


def _fake_model(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text('{"format_version": 1}')
    (folder / "weights.safetensors").write_bytes(b"\x00" * 64)
    return folder


def _project(root: Path) -> Path:
    """Two images, two models (``teacher_a`` active, ``teacher_b``), no jobs."""
    make_project(root, n_train=2, annotate=0)
    with Project.open(root) as project:
        for name in ("teacher_a", "teacher_b"):
            project.register_model(_fake_model(root.parent, name), round=0, method="teacher")
        project.set_active_model("teacher_a")
    return root


def _new_job(root: Path) -> int:
    """A queued pretrain job recorded straight in the store (the server below runs no jobs)."""
    with Project.open(root) as project:
        job_id = project.create_job("pretrain", {"preset": "tiny"})
    return job_id


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    root = _project(tmp_path_factory.mktemp("sec") / "proj")
    with Server(root, "--no-jobs", "--max-upload-mb", "2") as srv:
        yield srv


def _active(root: Path) -> str | None:
    with Project.open(root) as project:
        model = project.active_model()
    return None if model is None else model.id


def _job_state(root: Path, job_id: int) -> str:
    with Project.open(root) as project:
        return project.job(job_id).state


def _job_count(root: Path) -> int:
    with Project.open(root) as project:
        return len(project.jobs())


def _post(server: Server, path: str, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    return httpx.post(server.url + "/api/v1" + path, headers={**server.headers, **(headers or {})}, **kw)


def _error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The JSON error body of ``resp``, after checking its status (and code)."""
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert isinstance(body["detail"], str) and len(body["detail"]) > 10
    if code is not None:
        assert body["code"] == code, body
    return body


# -------------------------------------------------------------------------------------- cross-site writes


@pytest.mark.parametrize("content_type", [None, "application/json", "text/plain"])
def test_foreign_origin_cannot_activate_cancel_or_resume(server: Server, content_type: str | None) -> None:
    root = server.root
    queued = _new_job(root)
    cancelled = _new_job(root)
    with DiffsegClient(server.url) as client:
        client.cancel_job(cancelled)
    headers = {"Origin": EVIL, **({"Content-Type": content_type} if content_type else {})}
    assert _active(root) == "teacher_a"
    for path in ("/models/teacher_b/activate", f"/jobs/{queued}/cancel", f"/jobs/{cancelled}/resume"):
        body = _error(_post(server, path, headers), 403, "cross_origin")
        assert "Origin" in body["detail"]
    assert _active(root) == "teacher_a"
    assert _job_state(root, queued) == "queued"
    assert _job_state(root, cancelled) == "cancelled"
    # a null origin (sandboxed frames, file: pages) and a look-alike are foreign too; so are reads
    for origin in ("null", "http://localhost.evil.example", "http://127.0.0.1.evil.example:1"):
        _error(
            _post(server, "/models/teacher_b/activate", {"Origin": origin, **JSON_CT}), 403, "cross_origin"
        )
    read = httpx.get(server.url + "/api/v1/project", headers={"Origin": EVIL})
    _error(read, 403, "cross_origin")
    assert _active(root) == "teacher_a"


def test_own_and_loopback_origins_are_allowed(server: Server) -> None:
    root = server.root
    for origin in (server.url, f"http://localhost:{server.port}", "http://localhost:5173", "http://[::1]:9"):
        resp = _post(server, "/models/teacher_b/activate", {"Origin": origin, **JSON_CT})
        assert resp.status_code == 200, (origin, resp.text)
        assert _active(root) == "teacher_b"
        assert _post(server, "/models/teacher_a/activate", JSON_CT).status_code == 200
    assert _active(root) == "teacher_a"


def test_state_changing_requests_need_a_json_or_upload_content_type(server: Server) -> None:
    root = server.root
    queued = _new_job(root)
    cancelled = _new_job(root)
    with DiffsegClient(server.url) as client:
        client.cancel_job(cancelled)
    jobs_before = _job_count(root)
    # body-less POSTs, as a page's fetch(url, {method: "POST", mode: "no-cors"}) sends them
    for path in ("/models/teacher_b/activate", f"/jobs/{queued}/cancel", f"/jobs/{cancelled}/resume"):
        _error(_post(server, path), 415, "unsupported_media_type")
    # what an HTML form can send, JSON inside or not
    job = json.dumps({"kind": "pretrain", "params": {"preset": "tiny"}})
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        _error(_post(server, "/jobs", {"Content-Type": ctype}, content=job), 415, "unsupported_media_type")
        _error(_post(server, "/models/teacher_b/activate", {"Content-Type": ctype}), 415)
    assert _active(root) == "teacher_a"
    assert _job_state(root, queued) == "queued" and _job_state(root, cancelled) == "cancelled"
    assert _job_count(root) == jobs_before
    # the header alone (no body) is enough
    assert _post(server, f"/jobs/{queued}/cancel", JSON_CT).status_code == 202
    assert (
        _post(
            server, f"/jobs/{queued}/resume", {"Content-Type": "application/json; charset=utf-8"}
        ).status_code
        == 202
    )


def test_the_client_still_activates_cancels_and_resumes_on_loopback(server: Server) -> None:
    root = server.root
    job_id = _new_job(root)
    with DiffsegClient(server.url) as client:
        assert client.activate_model("teacher_b").active
        assert _active(root) == "teacher_b"
        assert client.cancel_job(job_id).state == "cancelled"
        assert client.resume_job(job_id).state == "queued"
        assert client.activate_model("teacher_a").active
        assert client.set_image_state("train_000", "excluded").state == "excluded"
        assert client.set_image_state("train_000", "included").state == "unlabeled"
        up = client.upload_image(np.zeros((32, 32), np.uint8), name="sec-upload")
        assert client.save_annotation(up.image.id, np.ones((32, 32), np.uint8), replaces=None).version == 1
    assert _active(root) == "teacher_a"


def test_foreign_origin_is_refused_with_a_token_too(tmp_path: Path) -> None:
    root = _project(tmp_path / "proj")
    with Server(root, "--no-jobs", token=TOKEN) as srv:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        resp = httpx.post(
            srv.url + "/api/v1/models/teacher_b/activate", headers={**auth, **JSON_CT, "Origin": EVIL}
        )
        _error(resp, 403, "cross_origin")
        resp = httpx.post(srv.url + "/api/v1/models/teacher_b/activate", headers=auth)
        _error(resp, 415, "unsupported_media_type")
        assert _active(root) == "teacher_a"
        with DiffsegClient(srv.url, token=TOKEN) as client:
            assert client.activate_model("teacher_b").active
        assert _active(root) == "teacher_b"


# -------------------------------------------------------------------------------------- bounded bodies


def _raw(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (request line and headers, CRLF-separated, without the blank line) and ``body``."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_raw, _, payload = data.partition(b"\r\n\r\n")
    lines = head_raw.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, payload


@pytest.mark.parametrize("length", ["abc", "-5", "1e3", "0x10", "\xb2", "5, 6"])
def test_a_malformed_content_length_gets_a_json_400(server: Server, length: str) -> None:
    head = (
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}"
    )
    status, headers, payload = _raw(server.port, head, b"{}")
    assert status == 400, payload
    assert headers["content-type"].startswith("application/json")
    assert len(json.loads(payload)["detail"]) > 10
    assert server.alive()


def test_a_json_body_over_the_limit_is_refused_by_its_length(server: Server) -> None:
    jobs = _job_count(server.root)
    head = (
        f"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {200 * 2**20}"
    )
    status, headers, payload = _raw(server.port, head)  # refused before a byte of the body is read
    assert status == 413 and headers["content-type"].startswith("application/json")
    assert json.loads(payload)["code"] == "too_large"
    # chunked: no length to check first, the count while reading stops it
    body = b'{"kind": "pretrain", "params": {"preset": "tiny", "x": "' + b"a" * (MAX_JSON_BYTES + 10) + b'"}}'
    resp = _post(
        server, "/jobs", JSON_CT, content=iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
    )
    _error(resp, 413, "too_large")
    assert _job_count(server.root) == jobs
    # just under the limit is read (and refused for what it says, not for its size)
    small = (
        b'{"kind": "pretrain", "params": {"preset": "tiny", "x": "' + b"a" * (MAX_JSON_BYTES - 100) + b'"}}'
    )
    resp = _post(server, "/jobs", JSON_CT, content=small)
    assert resp.status_code in (400, 422) and resp.json()["code"] == "invalid", resp.text[:300]
    assert server.alive()


class _Body:
    """An ASGI ``receive`` that makes the body lazily and counts what the app pulled."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.pending: bytes | None = next(chunks, None)
        self.pulled = 0

    async def __call__(self) -> dict[str, Any]:
        if self.pending is None:
            return {"type": "http.disconnect"}
        chunk, self.pending = self.pending, next(self.chunks, None)
        self.pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": self.pending is not None}


def _call(
    app: Any, method: str, path: str, headers: dict[str, str], body: _Body
) -> tuple[int, dict[str, Any]]:
    """One request straight into the ASGI app; returns (status, JSON body)."""
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8765),
    }
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, body, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(payload)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from napari_diffseg.backend.app import create_app

    root = _project(tmp_path_factory.mktemp("asgi") / "proj")
    return create_app(root, run_jobs=False, max_upload_bytes=2**20)


def test_a_streamed_json_body_over_the_limit_is_not_read_to_the_end_nor_parsed(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[int] = []
    real_loads = json.loads

    def counting_loads(s: Any, *args: Any, **kwargs: Any) -> Any:
        parsed.append(len(s))
        return real_loads(s, *args, **kwargs)

    monkeypatch.setattr(json, "loads", counting_loads)
    total = 256 * 2**20  # 256 MiB that are never made: the generator stops being pulled
    chunk = b" " * 65536
    body = _Body(
        iter([b'{"kind": "pretrain", "params": {"x": "', *(chunk for _ in range(total // len(chunk)))])
    )
    headers = {"host": "127.0.0.1:8765", "content-type": "application/json", "transfer-encoding": "chunked"}
    status, payload = _call(app, "POST", "/api/v1/jobs", headers, body)
    assert status == 413 and payload["code"] == "too_large", payload
    assert body.pulled < 32 * 2**20 < total  # stopped after the limit (and a bounded drain)
    assert not [n for n in parsed if n > MAX_JSON_BYTES]  # the big body never reached a JSON parser


def test_asgi_level_content_length_checks(app: Any) -> None:
    for length in ("abc", "-1", "", "1 2", "\xb2"):
        headers = {"host": "127.0.0.1:8765", "content-type": "application/json", "content-length": length}
        status, payload = _call(app, "POST", "/api/v1/jobs", headers, _Body(iter([b"{}"])))
        assert status == 400 and payload["code"] == "invalid", (length, payload)
    headers = {
        "host": "127.0.0.1:8765",
        "content-type": "application/x-npy",
        "content-length": str(2**20 + 1),
    }
    body = _Body(iter([b"\0" * 1024]))
    status, payload = _call(app, "POST", "/api/v1/images", headers, body)
    assert status == 413 and payload["code"] == "too_large" and body.pulled == 0
    headers["content-length"] = "9" * 40  # longer than any integer SQLite or a disk could hold
    assert _call(app, "POST", "/api/v1/images", headers, _Body(iter([b""])))[0] == 413
    # an upload without a length is counted as the route reads it
    del headers["content-length"]
    body = _Body(iter([b"\0" * 65536] * 4096))  # 256 MiB, made as it is pulled
    status, payload = _call(app, "POST", "/api/v1/images?name=big", headers, body)
    assert status == 413 and payload["code"] == "too_large" and body.pulled < 32 * 2**20


# -------------------------------------------------------------------------------------- JSON numbers


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
def test_non_standard_json_numbers_are_refused(server: Server, number: str) -> None:
    jobs = _job_count(server.root)
    body = '{"kind": "cotrain", "params": {"preset": "tiny", "overrides": {"lr": NUMBER}}}'.replace(
        "NUMBER", number
    )
    detail = _error(_post(server, "/jobs", JSON_CT, content=body), 422, "invalid")["detail"]
    assert "standard JSON" in detail
    # even where the route ignores the body
    resp = _post(server, "/models/teacher_b/activate", JSON_CT, content=f'{{"x": [{number}]}}')
    assert "standard JSON" in _error(resp, 422, "invalid")["detail"]
    assert _active(server.root) == "teacher_a"
    assert _job_count(server.root) == jobs


def test_deeply_nested_json_is_a_4xx(server: Server) -> None:
    body = b"[" * 200_000 + b"]" * 200_000
    _error(_post(server, "/models/teacher_b/activate", JSON_CT, content=body), 422, "invalid")
    assert server.alive()


# -------------------------------------------------------------------------------------- header integers


def test_last_event_id_is_bounded(server: Server) -> None:
    job_id = _new_job(server.root)
    with DiffsegClient(server.url) as client:
        client.cancel_job(job_id)  # ended: its stream sends the history and ends
    url = f"{server.url}/api/v1/jobs/{job_id}/stream"
    for value in ("99999999999999999999999", str(2**63), "-1", "abc", "\xb2", "1.5"):
        resp = httpx.get(url, headers={"Last-Event-ID": value.encode("latin-1")}, timeout=30)
        body = _error(resp, 400, "invalid")
        assert "Last-Event-ID" in body["detail"]
    ok = httpx.get(url, headers={"Last-Event-ID": "0"}, timeout=30)
    assert ok.status_code == 200 and "event: end" in ok.text
    later = httpx.get(url, headers={"Last-Event-ID": "4611686018427387904"}, timeout=30)  # MAX_ID
    assert later.status_code == 200 and "event: job" not in later.text and "event: end" in later.text
    assert server.alive()
