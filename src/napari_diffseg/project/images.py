"""Images: lookup, listing, pixels, state and split, the next image to review, counts, and import.

Why one module of ~560 lines: lookup, listing and import all read and write the ``images`` table and the
image files under one transaction discipline; import is the larger half, and it needs the same checks
(channels, task masks, object classes) as the rest of the mixin.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from napari_diffseg.base.errors import DataError
from napari_diffseg.base.formats import tiff_bytes
from napari_diffseg.base.masks import MaskError, check_task_mask, object_classes_from_map
from napari_diffseg.data.dataset import DEFAULT_SPLIT, is_valid_split
from napari_diffseg.data.imagefile import ImageRead
from napari_diffseg.data.io import DEFAULT_MAX_PIXELS
from napari_diffseg.project._db import _IMAGE_COLS, ImageRef, PathLike, _image, _StoreBase, _Tx
from napari_diffseg.project._util import (
    array_read,
    check_mask,
    check_name,
    content_id,
    read_tiff,
    sha256_bytes,
)
from napari_diffseg.project.importing import (
    ImportItem,
    LoadedImage,
    collect_dataset,
    collect_paths,
    load_images,
    prepare,
)
from napari_diffseg.project.records import IMAGE_STATES, UNREVIEWED_STATES, ImageRecord, ImportResult

_PRELOAD_BYTES = 256 * 2**20
"""Imports keep up to this many decoded bytes from the validation pass instead of decoding twice."""


class _ImagesMixin(_StoreBase):
    """The image methods of :class:`~napari_diffseg.project.store.Project`."""

    def image(self, image: ImageRef) -> ImageRecord:
        """The record of an image given its id or its unique name.

        Raises:
            DataError: No such image (the message says how to list them).
        """
        key = image.id if isinstance(image, ImageRecord) else image
        if not isinstance(key, str) or not key:
            raise DataError(f"an image id or name must be a non-empty string, got {key!r}.")
        with self._read() as conn:
            row = conn.execute(f"SELECT {_IMAGE_COLS} FROM images WHERE id = ?", (key,)).fetchone()
            if row is None:
                row = conn.execute(f"SELECT {_IMAGE_COLS} FROM images WHERE name = ?", (key,)).fetchone()
        if row is None:
            raise DataError(
                f"project {self._root} has no image with id or name {key!r}: list the ids and names with "
                f"`diffseg images {self._root}`."
            )
        return _image(row)

    def images(self, state: str | None = None, split: str | None = None) -> list[ImageRecord]:
        """Every image (optionally only those in ``state`` and/or ``split``), sorted by name.

        Raises:
            DataError: An unknown state.
        """
        where, params = [], []
        if state is not None:
            self._check_state(state)
            where.append("state = ?")
            params.append(state)
        if split is not None:
            where.append("split = ?")
            params.append(split)
        sql = f"SELECT {_IMAGE_COLS} FROM images"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY name", params).fetchall()
        return [_image(r) for r in rows]

    def load_image(self, image: ImageRef) -> np.ndarray:
        """The stored pixels ``(C, H, W)`` in their original dtype; a z-stack's ``(Z, C, H, W)``."""
        rec = self.image(image)
        arr = read_tiff(self._image_path(rec.id), f"image {rec.name!r}")
        shape: tuple[int, ...] = (rec.channels, rec.height, rec.width)
        if rec.is_stack:
            shape = (rec.planes, *shape)
        if arr.size != math.prod(shape) or arr.dtype.name != rec.dtype:
            raise DataError(
                f"the file of image {rec.name!r} ({rec.id}) holds {arr.dtype} {arr.shape}, not the recorded "
                f"{rec.dtype} {shape}: the project is damaged; run `diffseg check`."
            )
        return arr.reshape(shape)

    def load_planes(self, image: ImageRef) -> np.ndarray:
        """The stored pixels as planes, ``(Z, C, H, W)``: a 2D image is one plane (Z = 1)."""
        arr = self.load_image(image)
        return arr if arr.ndim == 4 else arr[np.newaxis]

    @staticmethod
    def _check_state(state: str) -> None:
        if state not in IMAGE_STATES:
            raise DataError(f"unknown image state {state!r}: use one of {', '.join(IMAGE_STATES)}.")

    def set_state(self, image: ImageRef, state: str) -> ImageRecord:
        """Set an image's state (one of :data:`IMAGE_STATES`); returns the updated record."""
        self._check_state(state)
        rec = self.image(image)
        with self._write() as tx:
            tx.execute("UPDATE images SET state = ? WHERE id = ?", (state, rec.id))
        return self.image(rec.id)

    def set_split(self, image: ImageRef, split: str) -> ImageRecord:
        """Set an image's split (``train``, ``val`` or ``test…``); returns the updated record."""
        if not isinstance(split, str) or not is_valid_split(split):
            raise DataError(f"unknown split {split!r}: use 'train', 'val' or a name starting with 'test'.")
        rec = self.image(image)
        with self._write() as tx:
            tx.execute("UPDATE images SET split = ? WHERE id = ?", (split, rec.id))
        return self.image(rec.id)

    def next_image(
        self,
        split: str | None = None,
        strategy: str = "uncertainty",
        rng: np.random.Generator | None = None,
    ) -> ImageRecord | None:
        """The unreviewed image (state unlabeled or proposed) to review next; None when done.

        ``strategy="uncertainty"`` (default): the one with the highest uncertainty; images without an
        uncertainty come after all the others; ties are broken by name. ``"power"``: a draw with
        probability proportional to the uncertainty (:func:`napari_diffseg.core.acquisition.acquire`);
        images without one only once every image has one. Unknown strategy → ConfigError.
        """
        from napari_diffseg.core.acquisition import acquire, check_strategy

        check_strategy(strategy)
        placeholders = ", ".join("?" for _ in UNREVIEWED_STATES)
        sql = f"SELECT {_IMAGE_COLS} FROM images WHERE state IN ({placeholders})"
        params: list[Any] = list(UNREVIEWED_STATES)
        if split is not None:
            sql += " AND split = ?"
            params.append(split)
        sql += " ORDER BY uncertainty IS NULL, uncertainty DESC, name"
        with self._read() as conn:
            if strategy == "uncertainty":
                row = conn.execute(sql + " LIMIT 1", params).fetchone()
                return None if row is None else _image(row)
            records = [_image(r) for r in conn.execute(sql, params).fetchall()]
        picked = acquire([r.uncertainty for r in records], 1, strategy, rng=rng)
        return records[picked[0]] if picked else None

    def counts(self) -> dict[str, int]:
        """Number of images, annotation versions, proposals, models and jobs."""
        with self._snapshot() as conn:
            return {
                table: int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                for table in ("images", "annotations", "proposals", "models", "jobs")
            }

    # -------------------------------------------------------------------------------------- import

    def import_array(
        self,
        array: object,
        name: str,
        mask: object | None = None,
        *,
        split: str = DEFAULT_SPLIT,
        source: str | None = None,
        axes: str | None = None,
    ) -> str:
        """Import an in-memory image (what the plugin sends), optionally with a ground-truth mask.

        Args:
            array: ``(H, W)``, ``(H, W, C)`` (C of 2 to 4; 3 or 4 is colour, alpha dropped) or ``(C, H, W)``
                with C up to 4, or any layout named by ``axes``; any integer or float dtype (kept as is).
            name: Its name (made unique with ``-2``, ``-3``... when another image has it).
            mask: Optional integer label mask ``(H, W)`` (a z-stack's: ``(Z, H, W)``), saved as a
                ``ground_truth`` annotation of every plane (labels kept).
            split: ``train``, ``val`` or ``test…``.
            source: Recorded provenance (default ``array:<name>``).
            axes: The array's axes (OME letters over T, Z, C, Y, X in storage order, e.g. ``"CYX"``); None:
                taken from the shape as above.

        Returns:
            The image id; the existing id when the same pixels are already in the project.

        Raises:
            DataError: A bad array, mask, name, split or axes; a time-lapse (send each time point).
        """
        return self.add_array(array, name, mask, split=split, source=source, axes=axes)[0]

    def add_array(
        self,
        array: object,
        name: str,
        mask: object | None = None,
        *,
        split: str = DEFAULT_SPLIT,
        source: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        axes: str | None = None,
    ) -> tuple[str, bool]:
        """:meth:`import_array`, also saying whether the image is new (what ``POST /images`` answers).

        The array passes the same checks as a file given to ``diffseg import`` (:func:`array_read`,
        :func:`~napari_diffseg.project.importing.prepare` and :meth:`check_fits_project`); ``array`` may also
        be an :class:`ImageRead` (an uploaded file read with its axes and channel names). Whether the pixels are new is decided by the database itself
        (the insert of the content id, inside the write transaction), so of several concurrent imports
        of the same pixels exactly one gets ``True``.

        Returns:
            (image id, whether it was added: False when the same pixels were already in the project).
        """
        check_name(name)
        self._check_split(split)
        what = f"Cannot import array {name!r}"
        if isinstance(array, ImageRead):  # an uploaded file, already read with its axes
            read = replace(array, name=name)
        else:
            read = array_read(array, name, axes=axes)
        loaded = prepare([read], what, max_pixels=max_pixels)
        if len(loaded) != 1:
            raise DataError(
                f"{what}: it holds {len(loaded)} time points ({loaded[0].axes} each, axes "
                f"T{loaded[0].axes}); send each time point as its own image (named {name}-t000, ...), or "
                "import the file with `diffseg import`, which splits it."
            )
        image = loaded[0]
        chw = image.chw
        self.check_fits_project(chw, what)
        m = None
        if mask is not None:
            m = check_mask(mask, image.mask_shape, f"Cannot import the mask of {name!r}")
            check_task_mask(
                m, self.task.labels, source=f"the mask of {name!r}"
            )  # labels kept (as corrections)
        image_id, added, _mask = self._store_image(image, source or f"array:{name}", split, m)
        return image_id, added

    def model_input_channels(self) -> int | None:
        """The number of input channels of the active model (its ``config.json``), None without one.

        A model folder whose config cannot be read counts as none here (``diffseg check`` reports it).
        """
        with self._read() as conn:
            row = conn.execute("SELECT id FROM models WHERE active = 1").fetchone()
        if row is None:
            return None
        try:
            config = json.loads((self._root / "models" / str(row[0]) / "config.json").read_text())
            channels = config["spec"]["in_channels"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return int(channels) if isinstance(channels, int) and not isinstance(channels, bool) else None

    def channel_count(self) -> int | None:
        """The project's channel count: what its active model takes, else what its images have; None if empty.

        Fixed by the first import: fluorescence images (any count but 1 and 3) must all have the same
        count. Grey and RGB images mix as they always have (3 once any image is RGB: grey images are
        repeated to RGB).
        """
        takes = self.model_input_channels()
        if takes is not None:
            return takes
        with self._read() as conn:
            counts = {int(r[0]) for r in conn.execute("SELECT DISTINCT channels FROM images")}
        return _combined_channels(counts)

    def check_fits_project(self, chw: np.ndarray, what: str) -> None:
        """Refuse an image whose channel count does not fit the project's (every import calls this).

        A project's channel count is fixed at its first import (:meth:`channel_count`) and its networks take
        that many input channels; an image with another count is refused, naming both. Grey and RGB keep
        their old rule: a grey image is repeated to RGB in a colour project, and before a project has a
        model grey and RGB images mix freely; once a model is trained on grey images, RGB is refused
        (co-training warm-starts from that model). Pixels already in the project pass.

        Raises:
            DataError: Naming both channel counts and what to do.
        """
        self._check_channels(chw, what, self.channel_count(), self.model_input_channels() is not None)

    def _check_channels(self, chw: np.ndarray, what: str, expected: int | None, has_model: bool) -> None:
        """:meth:`check_fits_project` with the project's channel count already looked up (``expected``)."""
        c = int(chw.shape[-3])
        if expected is None or c == expected:
            return
        if c in (1, 3) and expected in (1, 3) and (c < expected or not has_model):
            return
        with self._read() as conn:
            known = conn.execute("SELECT 1 FROM images WHERE id = ?", (content_id(chw),)).fetchone()
        if known is not None:
            return
        if has_model and c in (1, 3) and expected in (1, 3):
            raise DataError(
                f"{what}: it has {c} channels but this project's model takes {expected} "
                f"({'grey' if expected == 1 else 'RGB'} images); co-training from that model could not use "
                f"it. Convert the image to {expected} channel(s) first, or put {c}-channel images in a new "
                "project."
            )
        raise DataError(
            f"{what}: it has {c} channel(s) but this project's images have {expected} (a project's channel "
            f"count is fixed at its first import, and its networks take that many input channels). Import it "
            f"into a project of {c}-channel images, or convert it to {expected} channel(s); if its axes were "
            "read wrongly, pass --axes."
        )

    def import_dataset(self, folder: PathLike, *, binarize: bool = False) -> ImportResult:
        """Import a dataset folder: every image, its mask as a ``ground_truth`` annotation, its split.

        Every file is decoded and checked before anything is written, so a bad file changes nothing. An
        instance project takes the folder's ``instances/`` masks where it has them.

        Args:
            folder: ``images/``, optional ``masks/``, ``instances/`` and ``split.csv`` (docs/architecture.md).
            binarize: A binary project: take every mask value > 0 as foreground (:meth:`import_items`).
        """
        items = collect_dataset(folder, instances=self.task.kind == "instances", classed=self.task.classed)
        return self.import_items(items, binarize=binarize)

    def import_files(
        self,
        paths: Iterable[PathLike],
        masks_dir: PathLike | None = None,
        *,
        split: str = DEFAULT_SPLIT,
        binarize: bool = False,
        axes: str | None = None,
        notes: list[str] | None = None,
    ) -> ImportResult:
        """Import image files, plain folders of images and dataset folders (see :func:`.collect_paths`).

        Masks in ``masks_dir`` are matched to images by file stem (an instance project takes a dataset
        folder's ``instances/``). Every file is decoded and checked before anything is written. ``axes``
        overrides the axes of every file (``--axes``); what the reading assumed is appended to ``notes``
        (:meth:`import_items`).
        """
        instances = self.task.kind == "instances"
        items = collect_paths(
            paths, masks_dir, split=split, axes=axes, instances=instances, classed=self.task.classed
        )
        return self.import_items(items, binarize=binarize, notes=notes)

    def _task_mask(
        self, mask: np.ndarray, source: str, binarize: bool, notes: list[str] | None
    ) -> np.ndarray:
        """An imported mask checked against the project's task: a binary project's as 0/1 (what a binary
        mask file has always been stored as), class values and object ids as they are."""
        task = self.task
        checked = check_task_mask(mask, task.labels, source=source, binarize=binarize)
        if notes is not None:
            notes.extend(checked.notes)
        return checked.mask if task.kind == "binary" else mask

    def import_items(
        self,
        items: Sequence[ImportItem],
        *,
        binarize: bool = False,
        validate: bool = True,
        notes: list[str] | None = None,
    ) -> ImportResult:
        """Import collected items; with ``validate`` (default) every item is decoded and checked first.

        Every mask is checked against the project's task (:func:`~napari_diffseg.base.masks.check_task_mask`;
        ``binarize``: a binary project takes masks painted with any number of values as foreground), so a
        mask that does not fit refuses the import before anything is written (with ``validate``).

        Each image (with its mask) is committed in its own short transaction, so a later I/O failure keeps
        the images stored before it (importing again skips them). What the reading assumed (ambiguous
        axes, conversions; see :mod:`napari_diffseg.data.imagefile`) is appended to ``notes``, one line per
        image, for the caller to print.
        """
        for item in items:
            self._check_split(item.split)
        has_model = self.model_input_channels() is not None
        expected = self.channel_count()
        preloaded: list[list[LoadedImage] | None] = [None] * len(items)
        if validate:
            budget = _PRELOAD_BYTES
            counts: set[int] = set()
            for i, item in enumerate(items):
                loaded = load_images(item, binary_masks=False)
                for image in loaded:
                    if image.mask is not None:
                        checked = self._task_mask(image.mask, f"mask {item.mask}", binarize, None)
                        self._import_classes(checked, image, item)
                    # the first image of a new project fixes the count for the rest of this import too
                    here = expected if expected is not None else _combined_channels(counts)
                    self._check_channels(
                        image.chw, f"Cannot use image {item.image} ({image.name})", here, has_model
                    )
                    counts.add(int(image.chw.shape[-3]))
                size = sum(x.chw.nbytes + (0 if x.mask is None else x.mask.nbytes) for x in loaded)
                if size <= budget:
                    preloaded[i] = loaded
                    budget -= size
        ids: list[str] = []
        added: list[str] = []
        existing: list[str] = []
        saved: list[str] = []
        skipped: list[str] = []
        for item, pre in zip(items, preloaded, strict=True):
            loaded = pre if pre is not None else load_images(item, binary_masks=False)
            said = list(dict.fromkeys(n for image in loaded for n in image.notes))
            if notes is not None and said:
                names = loaded[0].name + (f" ... {loaded[-1].name}" if len(loaded) > 1 else "")
                notes.append(f"{item.image} ({len(loaded)} image(s): {names}): {'; '.join(said)}")
            for image in loaded:
                if pre is None:
                    what = f"Cannot use image {item.image} ({image.name})"
                    self._check_channels(image.chw, what, self.channel_count(), has_model)
                m = None
                per_object = None
                if image.mask is not None:
                    task_mask = self._task_mask(image.mask, f"mask {item.mask}", binarize, notes)
                    m = check_mask(task_mask, image.mask_shape, f"mask {item.mask}")
                    per_object = self._import_classes(m, image, item)
                image_id, is_new, mask_outcome = self._store_image(
                    image, str(item.image.resolve()), item.split, m, per_object
                )
                ids.append(image_id)
                (added if is_new else existing).append(image_id)
                if mask_outcome == "saved":
                    saved.append(image_id)
                elif mask_outcome == "skipped":
                    skipped.append(image_id)
        return ImportResult(tuple(ids), tuple(added), tuple(existing), tuple(saved), tuple(skipped))

    def _import_classes(
        self, mask: np.ndarray, image: LoadedImage, item: ImportItem
    ) -> dict[int, int] | None:
        """Each object's class of an imported instance mask (a project of several object classes): the
        majority class of the item's class map under it; None for other projects.

        Raises:
            MaskError: No class map for a mask with objects, or an object without a class under it.
        """
        task = self.task
        if not task.classed:
            return None
        source = f"mask {item.mask}"
        if image.classes is None:
            if not np.asarray(mask).any():
                return {}
            raise MaskError(
                f"{source}: this project's objects are of {task.object_classes} classes, but the mask comes "
                "without a class map. Import a dataset folder whose masks/ hold each pixel's class (1.."
                f"{task.object_classes}) beside its instances/ object ids"
            )
        return object_classes_from_map(mask, image.classes, task.object_classes, source=source)

    @staticmethod
    def _check_split(split: str) -> None:
        if not isinstance(split, str) or not is_valid_split(split):
            raise DataError(f"unknown split {split!r}: use 'train', 'val' or a name starting with 'test'.")

    def _unique_name(self, tx: _Tx, name: str) -> str:
        candidate, n = name, 1
        while tx.execute("SELECT 1 FROM images WHERE name = ?", (candidate,)).fetchone() is not None:
            n += 1
            suffix = f"-{n}"
            candidate = name[: 200 - len(suffix)] + suffix
        return candidate

    def _store_image(
        self,
        image: LoadedImage,
        source: str,
        split: str,
        mask: np.ndarray | None,
        object_classes: dict[int, int] | None = None,
    ) -> tuple[str, bool, str | None]:
        """Store pixels (deduplicated by content) and an optional ground-truth mask in one transaction.

        Whether the image is new is the outcome of the row's insert (``ON CONFLICT (id) DO NOTHING``: the
        id is the content hash, the table's primary key) inside the write transaction, not of an earlier
        look-up, so concurrent imports of the same pixels store it once and exactly one of them reports it
        new. The file is written after the insert but before the commit, so no reader sees the row first.

        Returns:
            (image id, whether the image is new, what happened to the mask: "saved", "same", "skipped", None).
        """
        chw, name = image.chw, image.name
        image_id = content_id(chw)
        with self._read() as conn:
            known = conn.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() is not None
        data = None if known else tiff_bytes(chw)
        mask_data = None if mask is None else tiff_bytes(mask)
        with self._write() as tx:
            is_new = False
            if data is not None:  # known pixels stay known: the store never deletes an image
                inserted = tx.execute(
                    f"INSERT INTO images ({_IMAGE_COLS}) VALUES "
                    "(?, ?, 'unlabeled', NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (id) DO NOTHING",
                    (
                        image_id,
                        self._unique_name(tx, name),
                        split,
                        int(chw.shape[-2]),
                        int(chw.shape[-1]),
                        int(chw.shape[-3]),
                        chw.dtype.name,
                        source,
                        sha256_bytes(data),
                        time.time(),
                        image.axes,
                        json.dumps([int(n) for n in image.shape]),
                        json.dumps(list(image.channel_names)),
                    ),
                )
                is_new = inserted.rowcount == 1
                if is_new:
                    tx.write(self._image_path(image_id), data)
            outcome: str | None = None
            if mask is not None and mask_data is not None:
                latest = self._latest(tx.conn, image_id)
                if latest is None:
                    planes = (
                        list(range(mask.shape[0])) if mask.ndim == 3 else None
                    )  # a mask file: every plane
                    self._insert_annotation(
                        tx,
                        image_id,
                        1,
                        "ground_truth",
                        None,
                        None,
                        "import",
                        None,
                        None,
                        mask,
                        mask_data,
                        planes,
                        None,
                        object_classes,
                    )
                    outcome = "saved"
                else:
                    current = self._read_annotation(image_id, latest)
                    outcome = "same" if np.array_equal(current, mask) else "skipped"
        return image_id, is_new, outcome


def _combined_channels(counts: set[int]) -> int | None:
    """The channel count of images with these counts: a fluorescence count, else 3 if any RGB, else 1."""
    if not counts:
        return None
    odd = counts - {1, 3}
    if odd:
        return max(odd)
    return 3 if 3 in counts else 1
