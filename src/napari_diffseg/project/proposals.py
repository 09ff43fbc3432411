"""Proposals: a model's class probabilities and uncertainty for an image, and a cache of hard masks."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_diffseg.base.errors import DataError
from napari_diffseg.base.formats import tiff_bytes
from napari_diffseg.project._db import _PROP_COLS, ImageRef, _proposal, _StoreBase
from napari_diffseg.project._util import check_proposal, check_safe_id, hard_mask, read_tiff
from napari_diffseg.project.models import read_model_watershed
from napari_diffseg.project.records import ProposalRecord

if TYPE_CHECKING:
    from napari_diffseg.core.instances import Watershed

# Hard masks of recently read proposals, shared by every Project of this process and keyed by
# (project, proposal id, file hash): scoring a correction against the proposal it started from then
# needs no TIFF decode, since the annotator has just fetched that proposal through the same server.
_MASK_CACHE: OrderedDict[tuple[str, int, str], np.ndarray] = OrderedDict()
_MASK_CACHE_LOCK = threading.Lock()


class _ProposalsMixin(_StoreBase):
    """The proposal methods of :class:`~napari_diffseg.project.store.Project`."""

    def save_proposal(self, model_id: str, image: ImageRef, probs: object, uncertainty: object) -> int:
        """Store a model's proposal for an image; replaces that model's earlier proposal for the image.

        Also sets the image's uncertainty to the mean of ``uncertainty`` and moves it from unlabeled to
        proposed (other states are kept). For a z-stack, the uncertainty is that of its most uncertain plane
        (the highest mean over one plane), and that plane is recorded (``plane`` of the proposal and the
        image), so ``/next`` ranks a stack by its worst plane and can point at it.

        Args:
            model_id: A registered model.
            image: Id or name.
            probs: Class probabilities ``(K, H, W)`` in [0, 1]; a z-stack's ``(Z, K, H, W)``.
            uncertainty: Per-pixel uncertainty ``(H, W)``; a z-stack's ``(Z, H, W)``.

        Returns:
            The proposal id (the same id when the model proposes for the image again).

        Raises:
            DataError: Unknown model or image, bad shapes or values.
        """
        check_safe_id(model_id, "model id")
        rec = self.image(image)
        hw = (rec.planes, rec.height, rec.width) if rec.is_stack else (rec.height, rec.width)
        stacked = check_proposal(probs, uncertainty, hw, f"proposal for {rec.name!r}")
        plane: int | None = None
        if rec.is_stack:
            per_plane = stacked[:, -1].reshape(rec.planes, -1).mean(axis=1, dtype=np.float64)
            plane = int(np.argmax(per_plane))
            mean_u = float(per_plane[plane])
        else:
            mean_u = float(stacked[-1].mean(dtype=np.float64))
        classes = int(stacked.shape[-3] - 1)
        data = tiff_bytes(stacked)
        with self._write() as tx:
            if tx.execute("SELECT 1 FROM models WHERE id = ?", (model_id,)).fetchone() is None:
                raise DataError(
                    f"model {model_id!r} is not registered: register it with register_model first."
                )
            sha = tx.write(self._proposal_path(model_id, rec.id), data)
            now = time.time()
            row = tx.execute(
                "SELECT id FROM proposals WHERE model_id = ? AND image_id = ?", (model_id, rec.id)
            ).fetchone()
            if row is None:
                cur = tx.execute(
                    f"INSERT INTO proposals ({_PROP_COLS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?)",
                    (rec.id, model_id, classes, mean_u, sha, now, plane),
                )
                proposal_id = int(cur.lastrowid or 0)
            else:
                proposal_id = int(row[0])
                tx.execute(
                    "UPDATE proposals SET classes = ?, uncertainty = ?, file_sha256 = ?, created_at = ?, "
                    "plane = ? WHERE id = ?",
                    (classes, mean_u, sha, now, plane, proposal_id),
                )
            tx.execute(
                "UPDATE images SET uncertainty = ?, plane = ?, "
                "state = CASE WHEN state = 'unlabeled' THEN 'proposed' ELSE state END WHERE id = ?",
                (mean_u, plane, rec.id),
            )
        return proposal_id

    def proposals(self, image: ImageRef | None = None, model_id: str | None = None) -> list[ProposalRecord]:
        """Proposal records, optionally for one image and/or one model, oldest first."""
        where, params = [], []
        if image is not None:
            where.append("image_id = ?")
            params.append(self.image(image).id)
        if model_id is not None:
            where.append("model_id = ?")
            params.append(check_safe_id(model_id, "model id"))
        sql = f"SELECT {_PROP_COLS} FROM proposals"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY created_at, id", params).fetchall()
        return [_proposal(r) for r in rows]

    def _load_proposal_file(self, prop: ProposalRecord) -> tuple[np.ndarray, np.ndarray]:
        arr = read_tiff(self._proposal_path(prop.model_id, prop.image_id), f"proposal {prop.id}")
        if prop.plane is not None:  # a z-stack: (Z, K + 1, H, W)
            if arr.ndim != 4 or arr.shape[1] != prop.classes + 1:
                raise DataError(
                    f"the file of proposal {prop.id} has shape {arr.shape}, not (Z, {prop.classes + 1}, H, W): "
                    "the project is damaged; run `diffseg check`."
                )
            return arr[:, :-1].astype(np.float32), arr[:, -1].astype(np.float32)
        if arr.ndim == 2:
            arr = arr[np.newaxis]
        if arr.ndim != 3 or arr.shape[0] != prop.classes + 1:
            raise DataError(
                f"the file of proposal {prop.id} has shape {arr.shape}, not ({prop.classes + 1}, H, W): the "
                "project is damaged; run `diffseg check`."
            )
        return arr[:-1].astype(np.float32), arr[-1].astype(np.float32)

    def _mask_key(self, prop: ProposalRecord) -> tuple[str, int, str]:
        return (str(self._root), prop.id, prop.file_sha256)

    def _remember_mask(self, prop: ProposalRecord, probs: np.ndarray) -> np.ndarray:
        mask = hard_mask(probs)
        with _MASK_CACHE_LOCK:
            _MASK_CACHE[self._mask_key(prop)] = mask
            while len(_MASK_CACHE) > 16:
                _MASK_CACHE.popitem(last=False)
        return mask

    def _proposal_hard_mask(self, proposal_id: int) -> tuple[ProposalRecord, np.ndarray]:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_PROP_COLS} FROM proposals WHERE id = ?", (proposal_id,)).fetchone()
        if row is None:
            raise DataError(f"there is no proposal {proposal_id} in project {self._root}.")
        prop = _proposal(row)
        with _MASK_CACHE_LOCK:
            cached = _MASK_CACHE.get(self._mask_key(prop))
        if cached is not None:
            return prop, cached
        probs, _ = self._load_proposal_file(prop)
        return prop, self._remember_mask(prop, probs)

    def _proposal_instances(
        self, proposal_id: int, watershed: Mapping[str, Any] | None = None
    ) -> tuple[ProposalRecord, np.ndarray]:
        """An instance project's proposal as objects (``core/instances.py``: the seeded watershed of its
        3-class probabilities), what the annotator edited; cached like the hard masks. ``watershed``: some
        of the watershed's parameters in place of the proposing model's (the annotator re-split the
        objects: :meth:`proposal_watershed`); not cached."""
        from napari_diffseg.core.instances import proposal_instances

        prop, _mask = self._proposal_hard_mask(proposal_id)
        key = (str(self._root), -prop.id, prop.file_sha256)  # negative id: the objects, not the hard mask
        if not watershed:
            with _MASK_CACHE_LOCK:
                cached = _MASK_CACHE.get(key)
            if cached is not None:
                return prop, cached
        probs, _ = self._load_proposal_file(prop)
        k = self.task.num_classes  # 3 (background, interior, boundary); n + 2 with n object classes
        if probs.shape[-3] != k:
            raise DataError(
                f"proposal {proposal_id} has {probs.shape[-3]} classes, not the {k} (background, interior(s), "
                "boundary) of this project's instance model: propose again with the project's active model."
            )
        ids = proposal_instances(probs, self.proposal_watershed(prop, watershed)).astype(np.int64)
        if not watershed:
            with _MASK_CACHE_LOCK:
                _MASK_CACHE[key] = ids
                while len(_MASK_CACHE) > 16:
                    _MASK_CACHE.popitem(last=False)
        return prop, ids

    def proposal_watershed(
        self, prop: ProposalRecord, watershed: Mapping[str, Any] | None = None
    ) -> Watershed:
        """The watershed that makes proposal ``prop``'s objects: its model's (``config.json``), with the
        parameters of ``watershed`` in their place.

        Raises:
            DataError: Unknown parameters or values out of range.
        """
        model = read_model_watershed(self._root / "models" / check_safe_id(prop.model_id, "model id"))
        return model.with_overrides(watershed)

    def proposal_objects(
        self, proposal_id: int, watershed: Mapping[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray | None, Watershed]:
        """An instance project's proposal as objects (uint16, uint32 beyond 65,535), their class map (int32;
        a project of several object classes, else None) and the watershed that made them: the proposing
        model's, with the parameters of ``watershed`` in their place (the annotator re-splitting them).

        Raises:
            DataError: Not an instance project, no such proposal, bad watershed parameters.
        """
        from napari_diffseg.core.instances import class_map, classify_objects

        if self.task.kind != "instances":
            raise DataError(
                f"proposal objects are an instance project's; this project's task is {self.task}."
            )
        prop, ids = self._proposal_instances(proposal_id, watershed)
        cmap = None
        if self.task.classed:
            probs, _ = self._load_proposal_file(prop)
            cmap = class_map(ids, classify_objects(ids, probs)).astype(np.int32)
        out = ids.astype(np.uint16 if ids.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32)
        return out, cmap, self.proposal_watershed(prop, watershed)

    def _proposal_object_classes(
        self, proposal_id: int, watershed: Mapping[str, Any] | None = None
    ) -> dict[int, int]:
        """Each object's class ``{id: class}`` of a classed instance project's proposal (the objects of
        :meth:`_proposal_instances`, classed by ``core.instances.classify_objects``): what the annotator saw."""
        from napari_diffseg.core.instances import classify_objects

        prop, ids = self._proposal_instances(proposal_id, watershed)
        probs, _ = self._load_proposal_file(prop)
        return classify_objects(ids, probs)

    def proposal(
        self, image: ImageRef, model_id: str | None = None
    ) -> tuple[ProposalRecord, np.ndarray, np.ndarray] | None:
        """The latest proposal for an image (of ``model_id`` if given): record, probs ``(K, H, W)``,
        uncertainty ``(H, W)`` (float32; a z-stack's ``(Z, K, H, W)`` and ``(Z, H, W)``); None when there is
        none."""
        found = self.proposals(image, model_id)
        if not found:
            return None
        prop = found[-1]
        probs, unc = self._load_proposal_file(prop)
        self._remember_mask(prop, probs)
        return prop, probs, unc
