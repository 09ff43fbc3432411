"""The review workflow of the annotate widget, without Qt: what to show for an image under review (its
latest annotation, the active model's cached proposal, or a ``propose`` job requested and followed for
it), rejecting an image and opening the next one. Every function here runs in a worker thread; the widget
(:mod:`napari_diffseg._widgets.annotate`) only calls them and displays what they return.

Results are plain dicts (``{"kind": "annotation" | "proposal" | "missing", "image_id", "model_id",
"mask", "edit", "uncertainty", "limits", "base_version", ...}``) whose arrays are already as the napari
layers take them; the records in them are the client's typed models (:mod:`napari_diffseg.base.contracts`).
No Qt, no napari (tests/test_import_isolation.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from napari_diffseg._layers import to_display
from napari_diffseg.backend.errors import BackendError
from napari_diffseg.base.contracts import Image

__all__ = [
    "ANNOTATED",
    "FETCH_POOL",
    "PARTS",
    "active_model_id",
    "fetch_image",
    "load_for_image",
    "prepared",
    "proposal_or_request",
    "proposal_parts",
    "reject_and_next",
    "uncertainty_limits",
]

ANNOTATED = ("corrected", "ground_truth")  # image states shown from their latest annotation
FETCH_POOL = ThreadPoolExecutor(max_workers=6, thread_name_prefix="diffseg-fetch")
"""Threads for the HTTP requests a worker makes at the same time (an image's pixels and its proposal)."""
PARTS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="diffseg-parts")  # leaf requests only


def active_model_id(client: Any) -> str | None:
    """Worker: the id of the backend's active model (None before there is one)."""
    return next((m.id for m in client.models() if m.active), None)


def proposal_parts(client: Any, image_id: str, model_id: str | None) -> dict[str, Any] | None:
    """Worker: the record, mask and uncertainty of the latest proposal of ``model_id`` (None: of any model)
    for ``image_id``, requested at the same time; None when there is none."""
    if model_id is None:
        record = client.proposal(image_id)
        if record is None:
            return None
        model_id = record.model_id
    else:
        record = None
    parts = {
        part: PARTS.submit(client.proposal_pixels, image_id, part, model_id=model_id)
        for part in ("mask", "uncertainty")
    }
    try:
        if record is None:
            record = client.proposal(image_id, model_id=model_id)
        pixels = {part: future.result() for part, future in parts.items()}
    except BackendError as exc:
        if exc.code == "no_proposal":
            return None
        raise
    finally:
        for future in parts.values():
            future.cancel()
    if record is None:
        return None
    return prepared(
        {
            "kind": "proposal",
            "image_id": image_id,
            "proposal": record,
            "model_id": record.model_id,
            "mask": pixels["mask"],
            "uncertainty": pixels["uncertainty"],
        }
    )


def prepared(result: dict[str, Any]) -> dict[str, Any]:
    """Worker: the arrays as the layers take them (int32 mask and its editable copy, float32 uncertainty
    and its contrast limits), so the main thread only swaps data."""
    mask = np.asarray(result["mask"]).astype(np.int32)
    result["mask"], result["edit"] = mask, mask.copy()
    if result.get("uncertainty") is not None:
        unc = np.ascontiguousarray(result["uncertainty"], dtype=np.float32)
        result["uncertainty"], result["limits"] = unc, uncertainty_limits(unc)
    return result


def load_for_image(
    client: Any, record: Image, model_id: str | None, model_known: bool = True
) -> dict[str, Any]:
    """Worker (the session's companion, run while the image's pixels are fetched): what the annotate widget
    shows for a freshly opened image, as ``{"kind": ...}``:

    - ``"annotation"``: the image is corrected or ground truth: its latest annotation version (and the
      uncertainty of the active model's proposal, if it has one cached; without an active model, of the
      image's latest proposal). No proposal is requested.
    - ``"proposal"``: the cached proposal of ``model_id`` (the session's active model).
    - ``"missing"``: that model has no proposal for the image yet (the widget then asks for one).

    ``model_known`` False: the session does not know the active model yet; it is asked for first and
    returned as ``"active_model"``.
    """
    if not model_known:
        model_id = active_model_id(client)
        result = load_for_image(client, record, model_id)
        result["active_model"] = model_id
        return result
    image_id = record.id
    latest = record.latest_version
    if record.state in ANNOTATED and latest is not None:
        # model None (no active model): the uncertainty of the image's latest proposal, as shown for it
        unc = PARTS.submit(client.proposal_pixels, image_id, "uncertainty", model_id=model_id)
        mask = client.annotation_pixels(image_id, int(latest))
        try:
            uncertainty = unc.result()
        except BackendError as exc:
            if exc.code != "no_proposal":
                raise
            uncertainty = None
        return prepared(
            {
                "kind": "annotation",
                "image_id": image_id,
                "version": int(latest),
                "base_version": int(latest),
                "model_id": model_id,
                "mask": mask,
                "uncertainty": uncertainty,
            }
        )
    found = proposal_parts(client, image_id, model_id)
    if found is None:
        return {"kind": "missing", "image_id": image_id, "model_id": model_id}
    found["base_version"] = None if latest is None else int(latest)
    return found


def proposal_or_request(
    client: Any,
    image_id: str,
    options: dict[str, Any],
    job_id: int | None = None,
    model_id: str | None = None,
    model_known: bool = False,
) -> Generator[dict[str, Any], None, dict[str, Any]]:
    """Worker (generator): the proposal of the active model for ``image_id`` (see :func:`proposal_parts`)
    with the image's latest annotation version as ``base_version``.

    ``model_id``: the active model as the session knows it (``model_known``), else it is asked for. When
    that model has no proposal for the image, the backend is asked again which model is active (another
    may have been made active meanwhile: ``{"model_id": id}`` is yielded when it changed). When the active
    model has none (the image is new, or its proposals come from an older model), a ``propose`` job is
    requested for this image (``options``: more :meth:`request_proposals` arguments), or the job
    ``job_id`` requested earlier is followed (its event stream, until it ends); the job is yielded as
    ``{"job": record, "model_id": id}`` when requested and again once it runs, and the proposal is fetched
    once it is done. Without any model, the image's latest
    proposal is shown if it has one.
    """
    versions = PARTS.submit(client.annotations, image_id)
    if not model_known:
        model_id = active_model_id(client)
        yield {"model_id": model_id}
    found = proposal_parts(client, image_id, model_id) if model_id is not None else None
    if found is None and model_known:
        fresh = active_model_id(client)  # a 'not found': is the cached model still the active one?
        if fresh != model_id:
            model_id = fresh
            yield {"model_id": model_id}
            found = proposal_parts(client, image_id, model_id) if model_id is not None else None
    if found is None and model_id is None:
        found = proposal_parts(client, image_id, None)
        if found is None:
            raise BackendError(
                0,
                "this image has no proposal and the project has no model yet: pretrain one in the DiffSeg "
                "train widget (Job: pretrain), then load the proposal again.",
                "no_model",
            )
    if found is None:
        job = client.job(job_id) if job_id is not None else None
        if job is None or job.ended:
            job = client.request_proposals([image_id], **options)
        yield {"job": job, "model_id": model_id}
        if not job.ended:
            for _event in client.stream_events(job.id):  # returns when the job has ended
                if job.state == "queued":  # its first event: it has started (yielded once)
                    job = client.job(job.id)
                    if job.state != "queued":
                        yield {"job": job, "model_id": model_id}
            job = client.job(job.id)
        if job.state != "done":
            raise BackendError(
                0,
                f"the proposal job {job.id} for this image ended {job.state}"
                + (f": {job.error}" if job.error else "")
                + ". Fix what it says (or resume it in the train widget), then press 'Load / request "
                "proposal'.",
                "propose_failed",
            )
        found = proposal_parts(client, image_id, model_id)
        if found is None:
            raise BackendError(
                0,
                f"the proposal job {job.id} ended but left no proposal of model {model_id} (was another "
                "model made active meanwhile?): press 'Load / request proposal' again.",
                "no_proposal",
            )
    annotations = versions.result()
    found["base_version"] = annotations[-1].version if annotations else None
    return found


def reject_and_next(
    client: Any,
    image_id: str,
    companion: Any = None,
    model: tuple[str | None, bool] = (None, False),
    strategy: str = "uncertainty",
) -> tuple[Image, Any]:
    """Worker: mark the image excluded, then fetch the next one to review (and its proposal)."""
    rejected = client.set_image_state(image_id, "excluded")
    return rejected, fetch_image(client, None, companion, model, strategy)


def fetch_image(
    client: Any,
    record: Image | None,
    companion: Callable[[Any, Image, str | None, bool], Any] | None = None,
    model: tuple[str | None, bool] = (None, False),
    strategy: str = "uncertainty",
) -> tuple[Image, np.ndarray, Any, bool] | None:
    """Worker: the fresh record (``None`` → ``/next`` with ``strategy``), the pixels of the image to open
    (as napari shows them) and what ``companion(client, record, *model)`` fetched at the same time (the
    exception it raised, if it failed: the image is still shown), and whether the pixels are RGB.
    ``model``: the session's ``(model_id, model_known)``."""
    if record is None:
        record = client.next_image(strategy=strategy)
    else:
        record = client.image(record.id)
    if record is None:
        return None
    extra = None
    future = FETCH_POOL.submit(companion, client, record, *model) if companion is not None else None
    try:
        data, rgb = to_display(client.image_pixels(record.id))
        data = np.ascontiguousarray(data)  # a (C, H, W) → (H, W, C) view uploads slower
    finally:
        if future is not None:
            try:
                extra = future.result()
            except Exception as exc:  # handed to the main thread, which reports it
                extra = exc
    return record, data, extra, rgb


def uncertainty_limits(uncertainty: np.ndarray) -> tuple[float, float]:
    """Contrast limits that make this image's most uncertain regions stand out: its median to its 99.5th
    percentile, so (with additive blending) the typical half of the image stays black and only the more
    uncertain regions glow (a span of at least 1e-3, so a flat map stays dark instead of amplifying
    noise)."""
    if not uncertainty.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(uncertainty, [50, 99.5]))
    return low, max(high, low + 1e-3)
