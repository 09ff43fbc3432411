"""The Python client of the backend (httpx): what the napari plugin and the CLI use.

::

    with DiffsegClient("http://127.0.0.1:8765", token=None) as client:
        upload = client.upload_image(array, name="cells-01")
        pixels = client.image_pixels(upload.image.id)
        saved = client.save_annotation(upload.image.id, mask, replaces=None)
        job = client.start_job("cotrain", {"preset": "tiny"})
        for event in client.stream_events(job.id):
            print(event.data.kind, event.data.step)

Records come back as the typed models of :mod:`napari_diffseg.base.contracts` (the same ones the server
answers with, see ``/openapi.json``), pixels as numpy arrays.
Failures raise :mod:`napari_diffseg.backend.errors` exceptions: :class:`BackendUnavailable` (not
reachable, after ``retries`` attempts with backoff), :class:`AuthError` (401, 403),
:class:`StaleAnnotation` (409 on a save, with ``.current``), :class:`BackendError` (anything else, with
``.status`` and the server's message). Requests that may have changed something (POST) are retried only
when the connection could not be made at all, so a save is never applied twice.

Why one module of ~540 lines: one class mirrors the HTTP API route by route (project, images,
annotations, proposals, jobs, models), all sharing its retry, error and array-decoding helpers; split by
resource, each part would be a few methods around the same private plumbing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import numpy as np
from httpx_sse import connect_sse
from pydantic import BaseModel
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from napari_diffseg.backend import codec
from napari_diffseg.backend.errors import AuthError, BackendError, BackendUnavailable, StaleAnnotation
from napari_diffseg.base.contracts import (
    Annotation,
    CotrainParams,
    EventsPage,
    Health,
    Image,
    ImageUpload,
    Job,
    JobEventOut,
    Model,
    PretrainParams,
    ProjectInfo,
    Proposal,
    ProposeParams,
    SavedAnnotation,
)

__all__ = ["DiffsegClient"]

_M = TypeVar("_M", bound=BaseModel)


def _backoff(retry: int) -> float:
    """Seconds to wait before retry ``retry`` (0, 1, 2...): 0.25, 0.5, 1, 2, 2..."""
    return min(2.0, 0.25 * 2**retry)


class _Busy(Exception):
    """A 503 answer to an idempotent request: retried, and returned as it is when retries run out."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__("503")
        self.response = response


ArrayOrPath = np.ndarray | str | os.PathLike[str]
_API = "/api/v1"
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
_IDEMPOTENT = ("GET", "HEAD")


class DiffsegClient:
    """A connection to one backend.

    Args:
        base_url: e.g. ``http://127.0.0.1:8765`` (``/api/v1`` is added).
        token: The backend's token, sent as ``Authorization: Bearer``.
        timeout: Seconds to wait for a connection and for each read.
        retries: Extra attempts after a connection failure (backoff 0.25 s, 0.5 s, 1 s...).
    """

    def __init__(
        self, base_url: str, token: str | None = None, timeout: float = 30, retries: int = 3
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = max(0, int(retries))
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url + _API, headers=headers, timeout=timeout)

    # -------------------------------------------------------------------------------------- plumbing

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> DiffsegClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DiffsegClient({self.base_url!r})"

    @staticmethod
    def _raise_for(resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        message = str(body.get("detail") or resp.reason_phrase or "error")
        code = body.get("code")
        if resp.status_code in (401, 403):
            raise AuthError(resp.status_code, message, code)
        if resp.status_code == 409 and code == "stale_annotation":
            raise StaleAnnotation(resp.status_code, message, code, body.get("current"))
        raise BackendError(resp.status_code, message, code)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request, retrying (with backoff) connection failures and, for GET, dropped connections
        and 503 answers; a POST that may have reached the server is never sent twice.

        A request that may change something and has no body of its own is sent with the JSON body ``{}``:
        the backend refuses a state-changing request without a JSON or upload ``Content-Type`` (what a
        cross-site web page could send; docs/architecture.md §2.4)."""
        idempotent = method in _IDEMPOTENT
        if not idempotent and not any(k in kwargs for k in ("json", "content", "data", "files")):
            kwargs["json"] = {}

        def send() -> httpx.Response:
            resp = self._http.request(method, path, **kwargs)
            if resp.status_code == 503 and idempotent:
                raise _Busy(resp)
            return resp

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, _NOT_SENT) or (
                idempotent and isinstance(exc, httpx.TransportError | _Busy)
            )

        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=lambda state: _backoff(state.attempt_number - 1),
            retry=retry_if_exception(retryable),
            reraise=True,
        )
        try:
            resp = retrying(send)
        except _Busy as busy:
            resp = busy.response
        except httpx.TransportError as exc:
            raise BackendUnavailable(
                0,
                f"cannot reach the diffseg backend at {self.base_url} ({type(exc).__name__}: {exc}); "
                "is `diffseg serve` running there?",
            ) from exc
        self._raise_for(resp)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _one(self, model: type[_M], method: str, path: str, **kwargs: Any) -> _M:
        """One record of type ``model`` from the JSON answer."""
        return model.model_validate(self._json(method, path, **kwargs))

    def _many(self, model: type[_M], method: str, path: str, **kwargs: Any) -> list[_M]:
        """A list of records of type ``model`` from the JSON answer."""
        return [model.model_validate(item) for item in self._json(method, path, **kwargs)]

    @staticmethod
    def _array(resp: httpx.Response) -> np.ndarray:
        arr = codec.from_npy(resp.content, "the backend's response")
        shape = resp.headers.get("X-Shape")
        if shape is not None and shape != ",".join(str(s) for s in arr.shape):
            raise BackendError(resp.status_code, f"the response holds shape {arr.shape} but says {shape}")
        return arr

    @staticmethod
    def _body(data: ArrayOrPath) -> tuple[bytes, str]:
        if isinstance(data, np.ndarray):
            return codec.to_npy(data), codec.NPY
        path = Path(data)
        return path.read_bytes(), codec.media_type_for(path)

    # -------------------------------------------------------------------------------------- project

    def health(self) -> Health:
        """``{"status": "ok", "version", "jobs_running", "jobs_queued"}``."""
        return self._one(Health, "GET", "/health")

    def project(self) -> ProjectInfo:
        """Counts, schema version, images per state, active model, upload limits."""
        return self._one(ProjectInfo, "GET", "/project")

    # -------------------------------------------------------------------------------------- images

    def images(self, state: str | None = None, split: str | None = None) -> list[Image]:
        """Every image (optionally of one state / split) with state, uncertainty, last edit Dice."""
        params = {k: v for k, v in (("state", state), ("split", split)) if v is not None}
        return self._many(Image, "GET", "/images", params=params)

    def image(self, ref: str) -> Image:
        """One image by id or unique name."""
        return self._one(Image, "GET", f"/images/{_ref(ref)}")

    def upload_image(
        self, image: ArrayOrPath, name: str | None = None, split: str = "train", axes: str | None = None
    ) -> ImageUpload:
        """Upload an array or a .npy/.tif/.png file; returns the image and whether it was new (``added``).

        ``axes`` (OME letters over T, Z, C, Y, X in storage order, e.g. ``"CYX"``) overrides how the pixels
        are read, as ``diffseg import --axes``.
        """
        if name is None:
            if isinstance(image, np.ndarray):
                raise ValueError("pass a name for an uploaded array")
            name = Path(image).stem
        content, media = self._body(image)
        params = {"name": name, "split": split}
        if axes is not None:
            params["axes"] = axes
        return self._one(
            ImageUpload,
            "POST",
            "/images",
            params=params,
            content=content,
            headers={"Content-Type": media},
        )

    def image_pixels(self, ref: str) -> np.ndarray:
        """The stored pixels ``(C, H, W)`` in their original dtype."""
        return self._array(self._request("GET", f"/images/{_ref(ref)}/pixels"))

    def set_image_state(self, ref: str, state: str) -> Image:
        """``"excluded"``: reject an image (no training, skipped by :meth:`next_image`); ``"included"``:
        undo that (back to the state its annotations and proposals imply). Returns the updated image."""
        return self._one(Image, "POST", f"/images/{_ref(ref)}/state", json={"state": state})

    def next_image(self, split: str | None = None, strategy: str = "uncertainty") -> Image | None:
        """The image to review next (highest uncertainty; ``strategy="power"``: a draw weighted by it), or
        None when every image is reviewed."""
        params = {"split": split} if split else {}
        if strategy != "uncertainty":
            params["strategy"] = strategy
        resp = self._request("GET", "/next", params=params or None)
        return None if resp.status_code == 204 else Image.model_validate(resp.json())

    # -------------------------------------------------------------------------------------- annotations

    def annotations(self, ref: str) -> list[Annotation]:
        """Every annotation version of an image, oldest first."""
        return self._many(Annotation, "GET", f"/images/{_ref(ref)}/annotations")

    def annotation_pixels(self, ref: str, version: int | None = None) -> np.ndarray | None:
        """One version's label mask (default: the latest); None when the image has no annotation."""
        if version is None:
            versions = self.annotations(ref)
            if not versions:
                return None
            version = versions[-1].version
        return self._array(self._request("GET", f"/images/{_ref(ref)}/annotations/{int(version)}/pixels"))

    def save_annotation(
        self,
        ref: str,
        mask: ArrayOrPath,
        *,
        replaces: int | None,
        kind: str = "correction",
        proposal_id: int | None = None,
        author: str = "",
        planes: list[int] | None = None,
        binarize: bool = False,
        classes: np.ndarray | None = None,
        watershed: Mapping[str, Any] | None = None,
    ) -> SavedAnnotation:
        """Save a new annotation version; returns it (``.version``, ``.annotation``).

        A z-stack's mask is ``(Z, H, W)``; ``planes`` names the planes it annotates (None: those holding a
        labelled pixel). The mask must fit the project's task; ``binarize`` (a binary project) takes every
        value > 0 as foreground. ``classes`` (an instance project with several object classes): a class map
        of the mask's shape (0 = none, 1..n); each object takes the majority class under it. ``watershed``:
        the parameters the proposal's objects were re-split with (:meth:`proposal_objects`), so the edit
        cost in objects counts from what the annotator saw.

        Raises:
            StaleAnnotation: ``replaces`` is not the latest version any more (``.current`` says which is).
        """
        params: dict[str, Any] = {"kind": kind, "author": author}
        if classes is not None:
            ids = np.asarray(mask)
            cmap = np.asarray(classes)
            if cmap.shape != ids.shape:
                raise ValueError(
                    f"the class map has shape {cmap.shape} but the mask {ids.shape}; they must match"
                )
            content, media = self._body(
                np.stack([ids.astype(np.int64), cmap.astype(np.int64)]).astype(np.uint32)
            )
            params["with_classes"] = "true"
        else:
            content, media = self._body(mask)
        if replaces is not None:
            params["replaces"] = int(replaces)
        if proposal_id is not None:
            params["proposal_id"] = int(proposal_id)
        if planes is not None:
            params["planes"] = [int(z) for z in planes]
        if binarize:
            params["binarize"] = "true"
        if watershed:
            params["watershed"] = json.dumps(dict(watershed))
        return self._one(
            SavedAnnotation,
            "POST",
            f"/images/{_ref(ref)}/annotations",
            params=params,
            content=content,
            headers={"Content-Type": media},
        )

    # -------------------------------------------------------------------------------------- proposals

    def proposal(self, ref: str, model_id: str | None = None) -> Proposal | None:
        """The latest proposal's record for an image, or None when it has none."""
        try:
            return self._one(
                Proposal,
                "GET",
                f"/images/{_ref(ref)}/proposal",
                params={"model_id": model_id} if model_id else None,
            )
        except BackendError as exc:
            if exc.code == "no_proposal":
                return None
            raise

    def proposal_pixels(
        self,
        ref: str,
        part: str = "mask",
        model_id: str | None = None,
        watershed: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        """``probs`` (K, H, W) float32, ``uncertainty`` (H, W) float32, ``mask`` (H, W), or in an instance
        project ``instances`` (H, W): one id per object, and with several object classes ``classes``
        (H, W): each proposed object's class, of the latest proposal. ``watershed`` (``instances``,
        ``classes``): the objects re-split with these watershed parameters (some or all) in place of the
        proposing model's (:meth:`proposal_objects` also says which parameters made them)."""
        return self.proposal_objects(ref, part, model_id, watershed)[0]

    def proposal_objects(
        self,
        ref: str,
        part: str = "instances",
        model_id: str | None = None,
        watershed: Mapping[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """:meth:`proposal_pixels` and, for ``instances`` and ``classes``, the watershed parameters that
        made the objects (the proposing model's, with ``watershed`` in their place); ``{}`` for other
        parts or an older backend."""
        params: dict[str, str] = {"part": part}
        if model_id:
            params["model_id"] = model_id
        if watershed:
            params["watershed"] = json.dumps(dict(watershed))
        resp = self._request("GET", f"/images/{_ref(ref)}/proposal/pixels", params=params)
        try:
            used = json.loads(resp.headers.get("X-Watershed", "{}"))
        except ValueError:
            used = {}
        return self._array(resp), used if isinstance(used, dict) else {}

    def request_proposals(
        self,
        ids: list[str] | None = None,
        *,
        steps: int | None = None,
        samples: int | None = None,
        rounds: int | None = None,
        preset: str | None = None,
        seed: int | None = None,
        device: str | None = None,
    ) -> Job:
        """Start a ``propose`` job (default: every unreviewed image); returns the job."""
        body = {
            k: v
            for k, v in (
                ("ids", ids),
                ("steps", steps),
                ("samples", samples),
                ("rounds", rounds),
                ("preset", preset),
                ("seed", seed),
                ("device", device),
            )
            if v is not None
        }
        return self._one(Job, "POST", "/proposals", json=body)

    # -------------------------------------------------------------------------------------- jobs

    def start_job(
        self, kind: str, params: dict[str, Any] | PretrainParams | ProposeParams | CotrainParams | None = None
    ) -> Job:
        """Queue a ``pretrain`` / ``propose`` / ``cotrain`` job; returns it (state ``queued``).

        ``params`` is a JSON dict or the typed parameters (:data:`~napari_diffseg.base.contracts.JobParams`);
        the server validates them either way."""
        body = (
            params.stored() if isinstance(params, PretrainParams | ProposeParams | CotrainParams) else params
        )
        return self._one(Job, "POST", "/jobs", json={"kind": kind, "params": body or {}})

    def jobs(self, state: str | None = None) -> list[Job]:
        """Every job, oldest first."""
        return self._many(Job, "GET", "/jobs", params={"state": state} if state else None)

    def job(self, job_id: int) -> Job:
        """One job."""
        return self._one(Job, "GET", f"/jobs/{int(job_id)}")

    def events(self, job_id: int, since: int = 0, limit: int | None = None) -> EventsPage:
        """The job and its events after the cursor ``since``; poll again with ``since=page.next``."""
        params: dict[str, int] = {"since": int(since)}
        if limit is not None:
            params["limit"] = int(limit)
        return self._one(EventsPage, "GET", f"/jobs/{int(job_id)}/events", params=params)

    def stream_events(self, job_id: int, since: int = 0) -> Iterator[JobEventOut]:
        """Yield a job's events as they happen (server-sent events, read with httpx-sse), starting after
        ``since``; returns when the job has ended. A dropped stream is reopened where it stopped (after
        ``retries`` failed reopenings without a new event, :class:`BackendUnavailable`)."""
        cursor = int(since)
        failures = 0
        while True:
            try:
                with connect_sse(
                    self._http,
                    "GET",
                    f"/jobs/{int(job_id)}/stream",
                    params={"since": cursor},
                    timeout=httpx.Timeout(self.timeout, read=max(60.0, self.timeout)),
                ) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        self._raise_for(source.response)
                    for sse in source.iter_sse():
                        failures = 0
                        if sse.event == "end":
                            return
                        if sse.event == "job":
                            event = JobEventOut.model_validate_json(sse.data)
                            cursor = event.seq
                            yield event
                problem, cause = "the server closed the stream before the job ended", None
            except httpx.TransportError as exc:
                problem, cause = f"{type(exc).__name__}: {exc}", exc
            if failures >= self.retries:
                raise BackendUnavailable(
                    0, f"lost the event stream of job {job_id} from {self.base_url} ({problem})"
                ) from cause
            time.sleep(_backoff(failures))
            failures += 1

    def wait(self, job_id: int, timeout: float | None = None, poll: float = 0.5) -> Job:
        """Poll until a job has ended; returns its record.

        Raises:
            TimeoutError: It did not end within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.ended:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.state} after {timeout} s")
            time.sleep(poll)

    def cancel_job(self, job_id: int) -> Job:
        """Cancel a job (a running one stops at its next step); returns it."""
        return self._one(Job, "POST", f"/jobs/{int(job_id)}/cancel")

    def resume_job(self, job_id: int) -> Job:
        """Queue a cancelled, failed or interrupted job again; returns it."""
        return self._one(Job, "POST", f"/jobs/{int(job_id)}/resume")

    # -------------------------------------------------------------------------------------- models

    def models(self) -> list[Model]:
        """Every model with its metrics, oldest first."""
        return self._many(Model, "GET", "/models")

    def model(self, model_id: str) -> Model:
        """One model."""
        return self._one(Model, "GET", f"/models/{_ref(model_id)}")

    def activate_model(self, model_id: str) -> Model:
        """Make a model the active one; returns it."""
        return self._one(Model, "POST", f"/models/{_ref(model_id)}/activate")

    def download_weights(self, model_id: str, dest: str | os.PathLike[str]) -> Path:
        """Save a model's ``weights.safetensors`` to ``dest`` (a file, or a folder to put it in)."""
        target = Path(dest)
        if target.is_dir():
            target = target / "weights.safetensors"
        content = self._request("GET", f"/models/{_ref(model_id)}/weights").content
        from napari_diffseg.base.fileio import atomic_write_bytes

        return atomic_write_bytes(target, content)


def _ref(value: str) -> str:
    """A path segment: refuse separators and dot segments instead of letting them change the URL."""
    text = str(value)
    if not text or "/" in text or "\\" in text or text in (".", "..") or "?" in text or "#" in text:
        raise BackendError(0, f"invalid id or name {value!r}: it must not contain '/', '\\', '?' or '#'.")
    return quote(text, safe="")
