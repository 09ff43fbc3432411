"""Annotations: append-only versions of an image's label mask, with the stale-version check.

A z-stack's annotation is a ``(Z, H, W)`` mask plus the list of planes it annotates (``planes``): only those
are trained on as labelled, the others count as unlabelled. A save without ``planes`` annotates the planes
holding any labelled pixel, which is what a napari user painting slice by slice has done; a plane whose truth
is all background (or a proposal accepted unchanged) must be named in ``planes``. An imported mask file
annotates every plane.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from napari_diffseg.base.errors import DataError
from napari_diffseg.base.formats import tiff_bytes
from napari_diffseg.base.labels import edit_stats, object_edits
from napari_diffseg.base.masks import (
    MaskError,
    check_object_classes,
    check_task_mask,
    object_classes_from_map,
)
from napari_diffseg.project._db import _ANN_COLS, ImageRef, _annotation, _StoreBase, _Tx
from napari_diffseg.project._util import check_mask, read_tiff
from napari_diffseg.project.errors import StaleVersionError
from napari_diffseg.project.records import ANNOTATION_KINDS, AnnotationRecord


class _AnnotationsMixin(_StoreBase):
    """The annotation methods of :class:`~napari_diffseg.project.store.Project`."""

    @staticmethod
    def _latest(conn: sqlite3.Connection, image_id: str) -> int | None:
        row = conn.execute("SELECT MAX(version) FROM annotations WHERE image_id = ?", (image_id,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def latest_version(self, image: ImageRef) -> int | None:
        """The image's latest annotation version, or None when it has none."""
        rec = self.image(image)
        with self._read() as conn:
            return self._latest(conn, rec.id)

    def _insert_annotation(
        self,
        tx: _Tx,
        image_id: str,
        version: int,
        kind: str,
        replaces: int | None,
        proposal_id: int | None,
        author: str,
        edit: float | None,
        changed: int | None,
        mask: np.ndarray,
        data: bytes,
        planes: list[int] | None = None,
        objects: tuple[int, int, int] | None = None,
        object_classes: dict[int, int] | None = None,
    ) -> None:
        sha = tx.write(self._annotation_path(image_id, version), data)
        tx.execute(
            f"INSERT INTO annotations ({_ANN_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                image_id,
                version,
                kind,
                replaces,
                proposal_id,
                author,
                edit,
                changed,
                int(mask.max()) if mask.size else 0,
                sha,
                time.time(),
                None if planes is None else json.dumps([int(z) for z in planes]),
                *((None, None, None) if objects is None else (int(n) for n in objects)),
                None
                if object_classes is None
                else json.dumps({str(k): int(v) for k, v in object_classes.items()}),
            ),
        )
        state = "ground_truth" if kind == "ground_truth" else "corrected"
        tx.execute("UPDATE images SET state = ? WHERE id = ?", (state, image_id))

    def save_annotation(
        self,
        image: ImageRef,
        mask: object,
        *,
        kind: str = "correction",
        replaces: int | None,
        proposal_id: int | None = None,
        author: str = "",
        planes: Iterable[int] | None = None,
        binarize: bool = False,
        classes: object | None = None,
        object_classes: Mapping[Any, Any] | None = None,
        watershed: Mapping[str, Any] | None = None,
    ) -> int:
        """Append a new annotation version of an image; earlier versions are never changed.

        The mask is checked against the project's task (:func:`~napari_diffseg.base.masks.check_task_mask`)
        before anything is written: class values below K in a multiclass project, object ids each covering
        one piece in an instance project (any ids: napari's natural form), one or two foreground values in
        a binary project (``binarize``: any values, stored as 0/1).

        Args:
            image: Id or name.
            mask: Integer label mask ``(H, W)`` of the image's size (0 = background); labels are kept. A
                z-stack's mask is ``(Z, H, W)``.
            kind: ``correction`` (image state → corrected) or ``ground_truth`` (→ ground_truth).
            replaces: The version this edit started from: must be the current latest version, or None when
                the image has no annotation yet. Anything else means someone saved in between.
            proposal_id: The proposal the annotator started from; records edit Dice and pixels changed
                against its hard mask.
            author: Free text recorded with the version.
            planes: A z-stack only: the plane indices this version annotates. None: every plane that holds
                a labelled pixel (what was painted). Edit Dice is computed over these planes.
            binarize: A binary project only: take every value > 0 as foreground (stored as 1).
            classes: An instance project with several object classes: a class map of the mask's shape
                (0 = none, 1..n) from which each object takes its majority class
                (:func:`~napari_diffseg.base.masks.object_classes_from_map`) — a "classes" layer painted
                beside the objects, a dataset folder's ``masks/`` beside ``instances/``.
            object_classes: The same as ``{object id: class}`` (instead of ``classes``).
            watershed: An instance project: the watershed parameters the annotator re-split the proposal's
                objects with (some or all; the proposing model's for the rest), so that the edit cost in
                objects is counted against the objects they saw.

        Returns:
            The new version number.

        Raises:
            StaleVersionError: ``replaces`` is not the current latest version (nothing is written).
            DataError: A bad mask (shape, NaN, non-integer, negative), kind, author or proposal.
            MaskError: The mask does not fit the project's task (the message says what to do).
        """
        rec = self.image(image)
        if kind not in ANNOTATION_KINDS:
            raise DataError(f"unknown annotation kind {kind!r}: use one of {', '.join(ANNOTATION_KINDS)}.")
        if replaces is not None and (isinstance(replaces, bool) or not isinstance(replaces, int)):
            raise DataError(f"replaces must be a version number or None, got {replaces!r}.")
        if not isinstance(author, str) or len(author) > 200:
            raise DataError("author must be a string of at most 200 characters.")
        what = f"Cannot save the annotation of image {rec.name!r}"
        shape = (rec.planes, rec.height, rec.width) if rec.is_stack else (rec.height, rec.width)
        m = check_mask(mask, shape, what)
        task = self.task
        checked = check_task_mask(m, task.labels, source=f"the mask of image {rec.name!r}", binarize=binarize)
        if binarize and task.kind == "binary":
            m = checked.mask.astype(np.uint8)
        per_object = self._object_classes(m, classes, object_classes, f"the mask of image {rec.name!r}")
        annotated = _annotated_planes(m, planes, what) if rec.is_stack else None
        if planes is not None and not rec.is_stack:
            raise DataError(
                f"{what}: planes apply to a z-stack only; {rec.name!r} is a 2D image (axes {rec.axes})."
            )
        if watershed and (task.kind != "instances" or proposal_id is None):
            raise DataError(
                f"{what}: watershed parameters re-split an instance project's proposal; "
                + (
                    "pass the proposal_id they re-split"
                    if task.kind == "instances"
                    else f"this is a {task.kind} project"
                )
                + "."
            )
        edit: float | None = None
        changed: int | None = None
        objects: tuple[int, int, int] | None = None
        if proposal_id is not None:
            if isinstance(proposal_id, bool) or not isinstance(proposal_id, int):
                raise DataError(f"proposal_id must be an integer, got {proposal_id!r}.")
            shown: np.ndarray | None = None
            if task.kind == "instances":  # the objects shown; the pixel cost is over the foreground
                prop, shown = self._proposal_instances(proposal_id, watershed)
                proposed = (shown > 0).astype(np.int64)
            else:
                prop, proposed = self._proposal_hard_mask(proposal_id)
            if prop.image_id != rec.id:
                raise DataError(
                    f"proposal {proposal_id} is for image {prop.image_id}, not {rec.name!r} ({rec.id}): pass "
                    "the proposal the correction started from."
                )
            corrected = (m > 0).astype(np.int64) if task.kind == "instances" else m
            if annotated is not None:
                edit, changed = edit_stats(proposed[annotated], corrected[annotated])
            else:
                edit, changed = edit_stats(proposed, corrected)
            if shown is not None:  # and in objects: added, removed, changed (matched at IoU 0.5)
                sel = slice(None) if annotated is None else annotated
                # objects of several classes: a matched object given another class is changed too
                shown_classes = (
                    self._proposal_object_classes(proposal_id, watershed) if per_object is not None else None
                )
                e = object_edits(
                    shown[sel], m[sel], proposed_classes=shown_classes, corrected_classes=per_object
                )
                objects = (e.added, e.removed, e.changed)
        data = tiff_bytes(m)
        with self._write() as tx:
            latest = self._latest(tx.conn, rec.id)
            if replaces != latest:
                if latest is None:
                    detail = "it has no annotation yet: save with replaces=None"
                else:
                    detail = f"its latest version is {latest}"
                edits = "a first annotation" if replaces is None else f"an edit of version {replaces}"
                raise StaleVersionError(
                    f"image {rec.name!r} ({rec.id}): this save is {edits} but {detail}. "
                    "Reload the latest annotation, re-apply your edits and save again.",
                    current=latest,
                    image_id=rec.id,
                )
            version = (latest or 0) + 1
            self._insert_annotation(
                tx,
                rec.id,
                version,
                kind,
                replaces,
                proposal_id,
                author,
                edit,
                changed,
                m,
                data,
                annotated,
                objects,
                per_object,
            )
        return version

    def _object_classes(
        self, mask: np.ndarray, classes: object | None, object_classes: Mapping[Any, Any] | None, source: str
    ) -> dict[int, int] | None:
        """Each object's class of a save (a classed instance project), checked; None for other projects."""
        task = self.task
        given = classes is not None or object_classes is not None
        if not task.classed:
            if given:
                raise MaskError(
                    f"{source}: object classes were given but this {task} project has one object class; "
                    "objects of several classes need a project created with them (diffseg init --task "
                    "instances --classes background,a,b)"
                )
            return None
        if classes is not None and object_classes is not None:
            raise DataError(f"{source}: give the objects' classes once: a class map or a mapping, not both.")
        names = ", ".join(f"{i} {c.name}" for i, c in enumerate(task.classes) if i)
        if classes is not None:
            cmap = check_mask(classes, mask.shape, f"{source}: the class map")
            return object_classes_from_map(mask, cmap, task.object_classes, source=source)
        if object_classes is not None:
            return check_object_classes(mask, dict(object_classes), task.object_classes, source=source)
        if not mask.any():
            return {}
        raise MaskError(
            f"{source}: this project's objects are of {task.object_classes} classes ({names}); send each "
            "object's class with the mask: a class map (classes=...) or {object id: class} (object_classes=...)"
        )

    def load_object_classes(self, image: ImageRef, version: int | None = None) -> dict[int, int] | None:
        """Each object's class ``{id: class}`` of an annotation version (latest by default) of a classed
        instance project; None elsewhere or without an annotation."""
        ann = self.annotation(image, version)
        return None if ann is None else ann.object_classes

    def annotation_versions(self, image: ImageRef) -> list[AnnotationRecord]:
        """Every annotation version of an image, oldest first."""
        rec = self.image(image)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_ANN_COLS} FROM annotations WHERE image_id = ? ORDER BY version", (rec.id,)
            ).fetchall()
        return [_annotation(r) for r in rows]

    def annotation(self, image: ImageRef, version: int | None = None) -> AnnotationRecord | None:
        """The record of one annotation version (latest by default); None when the image has none.

        Raises:
            DataError: A specific ``version`` that does not exist.
        """
        rec = self.image(image)
        with self._read() as conn:
            if version is None:
                row = conn.execute(
                    f"SELECT {_ANN_COLS} FROM annotations WHERE image_id = ? ORDER BY version DESC LIMIT 1",
                    (rec.id,),
                ).fetchone()
                return None if row is None else _annotation(row)
            row = conn.execute(
                f"SELECT {_ANN_COLS} FROM annotations WHERE image_id = ? AND version = ?", (rec.id, version)
            ).fetchone()
        if row is None:
            raise DataError(
                f"image {rec.name!r} ({rec.id}) has no annotation version {version}: list them with "
                "annotation_versions()."
            )
        return _annotation(row)

    def _read_annotation(self, image_id: str, version: int) -> np.ndarray:
        arr = read_tiff(self._annotation_path(image_id, version), f"annotation {image_id} v{version}")
        return arr.astype(np.int64)

    def load_annotation(self, image: ImageRef, version: int | None = None) -> np.ndarray | None:
        """The int64 ``(H, W)`` mask (a z-stack's ``(Z, H, W)``) of an annotation version (latest by default);
        None when there is none.

        Raises:
            DataError: A specific ``version`` that does not exist.
        """
        ann = self.annotation(image, version)
        if ann is None:
            return None
        return self._read_annotation(ann.image_id, ann.version)


def _annotated_planes(mask: np.ndarray, planes: Iterable[int] | None, what: str) -> list[int]:
    """The planes a z-stack's ``(Z, H, W)`` mask annotates: ``planes`` checked, or those with a label."""
    z = int(mask.shape[0])
    if planes is None:
        chosen = [int(i) for i in np.flatnonzero(mask.reshape(z, -1).any(axis=1))]
    else:
        try:
            chosen = sorted({int(p) for p in planes if not isinstance(p, bool)})
        except (TypeError, ValueError) as exc:
            raise DataError(f"{what}: planes must be plane indices (integers), got {planes!r}.") from exc
        bad = [p for p in chosen if not 0 <= p < z]
        if bad:
            raise DataError(f"{what}: plane(s) {bad} do not exist; the stack has planes 0 to {z - 1}.")
    if not chosen:
        raise DataError(
            f"{what}: the mask annotates no plane of the stack (no labelled pixel, no planes named). Paint "
            "the planes you annotated, or name them (planes=, --planes) when their truth is all background."
        )
    return chosen
