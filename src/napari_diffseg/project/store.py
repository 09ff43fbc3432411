"""The embedded project store: one SQLite database (WAL mode) plus files, no server (DESIGN.md §2.2).

::

    PROJECT/
      project.db                          SQLite, WAL; schema version in ``meta``; see :mod:`.schema`
      images/<image_id>.tif               imported pixels, original dtype, (C, H, W), stored once
      annotations/<image_id>/<n>.tif      annotation version n; never overwritten or deleted
      proposals/<model_id>/<image_id>.tif class probabilities (K, H, W) + uncertainty, stacked (K + 1, H, W)
      models/<model_id>/                  registered model folders
      jobs/<job_id>/                      job logs and checkpoints

Write protocol. Every write runs inside ``BEGIN IMMEDIATE`` (the database's single write lock, so writers
in every process are serialised), writes its files atomically (temporary file in the same folder, fsync,
``os.replace``, fsync of the folder) *before* the rows that point at them, then commits. If anything fails
before the commit, the transaction is rolled back, the new files are removed and replaced files are
restored, so nothing that was saved before is lost or changed. Readers never see a row whose file is not in
place. Each :class:`Project` holds one connection guarded by a lock: one instance may be shared by threads,
and every process opens its own.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from napari_diffseg.base.errors import ConfigError, DataError, DiffsegError
from napari_diffseg.data.dataset import DEFAULT_SPLIT, is_valid_split
from napari_diffseg.project._util import (
    IMAGE_ID_RE,
    SAFE_ID_RE,
    check_mask,
    check_name,
    check_proposal,
    check_safe_id,
    content_id,
    copy_tree_durable,
    edit_stats,
    ensure_dir,
    hard_mask,
    image_from_array,
    read_tiff,
    sha256_bytes,
    sha256_file,
    tiff_bytes,
    write_file,
)
from napari_diffseg.project.errors import StaleVersionError
from napari_diffseg.project.importing import ImportItem, collect_dataset, collect_paths, load_item
from napari_diffseg.project.records import (
    ANNOTATION_KINDS,
    IMAGE_STATES,
    JOB_STATES,
    TERMINAL_JOB_STATES,
    UNREVIEWED_STATES,
    AnnotationRecord,
    ImageRecord,
    ImportResult,
    JobEvent,
    JobRecord,
    ModelRecord,
    ProposalRecord,
)
from napari_diffseg.project.schema import (
    SCHEMA_VERSION,
    apply_migrations,
    bootstrap,
    read_schema_version,
    rollback,
)

__all__ = ["DB_NAME", "SUBDIRS", "Project", "check_project"]

# Hard masks of recently read proposals, shared by every Project of this process and keyed by
# (project, proposal id, file hash): scoring a correction against the proposal it started from then
# needs no TIFF decode, since the annotator has just fetched that proposal through the same server.
_MASK_CACHE: OrderedDict[tuple[str, int, str], np.ndarray] = OrderedDict()
_MASK_CACHE_LOCK = threading.Lock()

PathLike = str | os.PathLike[str]
ImageRef = str | ImageRecord

DB_NAME = "project.db"
"""The database file inside a project folder."""
SUBDIRS: tuple[str, ...] = ("images", "annotations", "proposals", "models", "jobs")
"""The file folders of a project."""
BUSY_TIMEOUT_S = 30.0
"""How long a writer waits for another process's write transaction before giving up."""
_PRELOAD_BYTES = 256 * 2**20
"""Imports keep up to this many decoded bytes from the validation pass instead of decoding twice."""

_JOB_TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed", "interrupted"}),
    "running": frozenset({"done", "failed", "cancelled", "interrupted"}),
    "interrupted": frozenset({"queued", "running", "cancelled", "failed"}),
    "cancelled": frozenset({"queued", "running"}),
    "failed": frozenset({"queued", "running"}),
    "done": frozenset(),
}

_IMAGE_COLS = (
    "id, name, state, uncertainty, split, height, width, channels, dtype, source, file_sha256, created_at"
)
_ANN_COLS = (
    "image_id, version, kind, replaces, proposal_id, author, edit_dice, pixels_changed, labels, file_sha256, "
    "created_at"
)
_PROP_COLS = "id, image_id, model_id, classes, uncertainty, file_sha256, created_at"
_MODEL_COLS = "id, round, method, metrics, active, created_at"
_JOB_COLS = "id, kind, params, state, error, pid, created_at, started_at, finished_at, updated_at"


# ------------------------------------------------------------------------------------------ rows → records


def _image(row: Sequence[Any]) -> ImageRecord:
    return ImageRecord(*row)


def _annotation(row: Sequence[Any]) -> AnnotationRecord:
    return AnnotationRecord(*row)


def _proposal(row: Sequence[Any]) -> ProposalRecord:
    return ProposalRecord(*row)


def _model(row: Sequence[Any]) -> ModelRecord:
    return ModelRecord(
        id=row[0],
        round=row[1],
        method=row[2],
        metrics=json.loads(row[3]),
        active=bool(row[4]),
        created_at=row[5],
    )


def _job(row: Sequence[Any]) -> JobRecord:
    return JobRecord(
        id=row[0],
        kind=row[1],
        params=json.loads(row[2]),
        state=row[3],
        error=row[4],
        pid=row[5],
        created_at=row[6],
        started_at=row[7],
        finished_at=row[8],
        updated_at=row[9],
    )


def _to_json(value: object, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} must be JSON-serialisable (numbers, strings, lists, dicts): {exc}.") from exc


# ------------------------------------------------------------------------------------------ connections


def _connect(db: Path, *, create: bool) -> sqlite3.Connection:
    """Open ``db`` in autocommit mode with WAL, foreign keys, a busy timeout and full fsync on commit."""
    uri = db.resolve().as_uri() + ("?mode=rwc" if create else "?mode=rw")
    try:
        conn = sqlite3.connect(
            uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise DataError(f"cannot open the project database {db}: {exc}.") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise DataError(
                f"the project database {db} cannot use WAL mode (got {mode!r}); put the project on a local "
                "disk (not a network share)."
            )
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise DataError(
            f"{db} is not a readable SQLite database ({exc}): the project is damaged; restore it from a backup."
        ) from exc
    except BaseException:
        conn.close()
        raise
    return conn


class _Tx:
    """One write transaction: files written through it are undone if the transaction does not commit."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._created: list[Path] = []
        self._backups: list[tuple[Path, Path]] = []
        self._undo: list[Callable[[], None]] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def write(self, path: Path, data: bytes) -> str:
        """Atomically write ``data`` to ``path`` (keeping a backup of a file it replaces); return its sha256."""
        if path.exists():
            backup = path.with_name(f".{path.name}.{secrets.token_hex(4)}.bak")
            try:
                os.link(path, backup)
            except OSError:
                shutil.copy2(path, backup)
            self._backups.append((path, backup))
        else:
            self._created.append(path)
        write_file(path, data)
        return sha256_bytes(data)

    def on_rollback(self, action: Callable[[], None]) -> None:
        """Run ``action`` if the transaction does not commit (after the files are undone)."""
        self._undo.append(action)

    def undo(self) -> None:
        for path in reversed(self._created):
            with contextlib.suppress(OSError):
                path.unlink()
        for path, backup in reversed(self._backups):
            with contextlib.suppress(OSError):
                os.replace(backup, path)
        for action in reversed(self._undo):
            with contextlib.suppress(Exception):
                action()

    def discard_backups(self) -> None:
        for _path, backup in self._backups:
            with contextlib.suppress(OSError):
                backup.unlink()


# ------------------------------------------------------------------------------------------ the store


class Project:
    """A project folder: images, annotation versions, proposals, models and jobs (see the module docstring).

    Create one with :meth:`create` or :meth:`open`; use it as a context manager or call :meth:`close`.
    Wherever an image is taken, its id, its unique name or an :class:`ImageRecord` is accepted.
    """

    def __init__(self, root: Path, conn: sqlite3.Connection) -> None:
        """Use :meth:`create` or :meth:`open` instead."""
        self._root = root
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.RLock()

    # -------------------------------------------------------------------------------------- lifecycle

    @staticmethod
    def is_project(path: PathLike) -> bool:
        """True if ``path`` is a folder holding a ``project.db``."""
        return (Path(path) / DB_NAME).is_file()

    @classmethod
    def create(cls, path: PathLike, *, exist_ok: bool = False) -> Project:
        """Create a new project in ``path`` (a new or empty folder) and open it.

        Args:
            path: The project folder.
            exist_ok: Open ``path`` instead of failing when it already is a project.

        Raises:
            DataError: ``path`` is a file, a non-empty folder that is not a project, or (unless ``exist_ok``)
                already a project.
        """
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise DataError(f"cannot create a project at {root}: it is a file. Choose a folder.")
        if cls.is_project(root):
            if exist_ok:
                return cls.open(root)
            raise DataError(
                f"{root} is already a napari-diffseg project: add images with `diffseg import {root} ...`."
            )
        if root.is_dir() and any(root.iterdir()):
            raise DataError(
                f"cannot create a project in {root}: the folder is not empty and is not a project. Choose a "
                "new or empty folder."
            )
        made = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
            for sub in SUBDIRS:
                ensure_dir(root / sub)
            conn = _connect(root / DB_NAME, create=True)
        except OSError as exc:
            raise DataError(f"cannot create a project at {root}: {exc}.") from exc
        try:
            bootstrap(conn, time.time())
            apply_migrations(conn)
        except BaseException:
            conn.close()
            if made:
                shutil.rmtree(root, ignore_errors=True)
            raise
        return cls(root, conn)

    @classmethod
    def open(cls, path: PathLike) -> Project:
        """Open an existing project, applying any pending schema migrations.

        Raises:
            DataError: ``path`` is not a project, its database is damaged, or its schema is newer than this
                version of napari-diffseg supports.
        """
        root = Path(path)
        if not root.is_dir():
            raise DataError(
                f"project {root} does not exist: create it with `diffseg init {root}` or check the path."
            )
        if not cls.is_project(root):
            raise DataError(
                f"{root} is not a napari-diffseg project (it has no {DB_NAME}): create one with "
                f"`diffseg init {root}` in a new or empty folder."
            )
        conn = _connect(root / DB_NAME, create=False)
        try:
            try:
                version = read_schema_version(conn)
            except sqlite3.DatabaseError as exc:
                raise DataError(f"cannot read {root / DB_NAME}: {exc}. The project is damaged.") from exc
            if version is None:
                raise DataError(
                    f"{root / DB_NAME} is not a napari-diffseg project database (no schema version): "
                    "open the right folder."
                )
            if version > SCHEMA_VERSION:
                raise DataError(
                    f"project {root} has schema version {version} but this napari-diffseg supports at most "
                    f"{SCHEMA_VERSION}: upgrade napari-diffseg to open it."
                )
            if version < SCHEMA_VERSION:
                try:
                    apply_migrations(conn)
                except sqlite3.Error as exc:
                    raise DataError(
                        f"cannot upgrade project {root} to schema {SCHEMA_VERSION}: {exc}."
                    ) from exc
            for sub in SUBDIRS:
                ensure_dir(root / sub)
        except BaseException:
            conn.close()
            raise
        return cls(root, conn)

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Project:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Project({str(self._root)!r})"

    @property
    def root(self) -> Path:
        """The project folder."""
        return self._root

    @property
    def schema_version(self) -> int:
        """The database's schema version (equal to :data:`~napari_diffseg.project.schema.SCHEMA_VERSION`)."""
        with self._read() as conn:
            version = read_schema_version(conn)
        return -1 if version is None else version

    # -------------------------------------------------------------------------------------- transactions

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise DiffsegError(f"project {self._root} is closed; open it again with Project.open.")
            yield self._conn

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state."""
        with self._read() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                rollback(conn)

    @contextlib.contextmanager
    def _write(self) -> Iterator[_Tx]:
        """``BEGIN IMMEDIATE`` … commit; on any error: rollback and undo this transaction's files."""
        with self._read() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise DiffsegError(
                    f"project {self._root} is busy (another process held its write lock for more than "
                    f"{BUSY_TIMEOUT_S:.0f} s): try again ({exc})."
                ) from exc
            tx = _Tx(conn)
            try:
                yield tx
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                tx.undo()
                raise
            tx.discard_backups()

    # -------------------------------------------------------------------------------------- paths

    def _image_path(self, image_id: str) -> Path:
        return self._root / "images" / f"{image_id}.tif"

    def _annotation_path(self, image_id: str, version: int) -> Path:
        return self._root / "annotations" / image_id / f"{int(version)}.tif"

    def _proposal_path(self, model_id: str, image_id: str) -> Path:
        return self._root / "proposals" / check_safe_id(model_id, "model id") / f"{image_id}.tif"

    def model_dir(self, model_id: str) -> Path:
        """The folder ``models/<model_id>/`` (the id is validated, the folder need not exist)."""
        return self._root / "models" / check_safe_id(model_id, "model id")

    def job_dir(self, job_id: int) -> Path:
        """The folder ``jobs/<job_id>/`` for a job's logs and checkpoints, created if missing."""
        job = self.job(job_id)
        return ensure_dir(self._root / "jobs" / str(job.id))

    # -------------------------------------------------------------------------------------- images

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
        """The stored pixels ``(C, H, W)`` in their original dtype."""
        rec = self.image(image)
        arr = read_tiff(self._image_path(rec.id), f"image {rec.name!r}")
        shape = (rec.channels, rec.height, rec.width)
        if arr.size != math.prod(shape) or arr.dtype.name != rec.dtype:
            raise DataError(
                f"the file of image {rec.name!r} ({rec.id}) holds {arr.dtype} {arr.shape}, not the recorded "
                f"{rec.dtype} {shape}: the project is damaged; run `diffseg check`."
            )
        return arr.reshape(shape)

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
    ) -> str:
        """Import an in-memory image (what the plugin sends), optionally with a ground-truth mask.

        Args:
            array: ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with ``C`` in {1, 3, 4}; any integer or float
                dtype (kept as is).
            name: Its name (made unique with ``-2``, ``-3``... when another image has it).
            mask: Optional integer label mask ``(H, W)``, saved as a ``ground_truth`` annotation (labels kept).
            split: ``train``, ``val`` or ``test…``.
            source: Recorded provenance (default ``array:<name>``).

        Returns:
            The image id; the existing id when the same pixels are already in the project.

        Raises:
            DataError: A bad array, mask, name or split.
        """
        check_name(name)
        self._check_split(split)
        chw = image_from_array(array, name)
        m = None
        if mask is not None:
            m = check_mask(mask, (chw.shape[1], chw.shape[2]), f"Cannot import the mask of {name!r}")
        image_id, _added, _mask = self._store_image(chw, name, source or f"array:{name}", split, m)
        return image_id

    def import_dataset(self, folder: PathLike, *, binary_masks: bool = True) -> ImportResult:
        """Import a dataset folder: every image, its mask as a ``ground_truth`` annotation, its split.

        Every file is decoded and checked before anything is written, so a bad file changes nothing.

        Args:
            folder: ``images/``, optional ``masks/`` and ``split.csv`` (DESIGN.md §2.1).
            binary_masks: Map every mask value > 0 to 1.
        """
        return self.import_items(collect_dataset(folder), binary_masks=binary_masks)

    def import_files(
        self,
        paths: Iterable[PathLike],
        masks_dir: PathLike | None = None,
        *,
        split: str = DEFAULT_SPLIT,
        binary_masks: bool = True,
    ) -> ImportResult:
        """Import image files, plain folders of images and dataset folders (see :func:`.collect_paths`).

        Masks in ``masks_dir`` are matched to images by file stem. Every file is decoded and checked before
        anything is written.
        """
        return self.import_items(collect_paths(paths, masks_dir, split=split), binary_masks=binary_masks)

    def import_items(
        self, items: Sequence[ImportItem], *, binary_masks: bool = True, validate: bool = True
    ) -> ImportResult:
        """Import collected items; with ``validate`` (default) every item is decoded and checked first.

        Each image (with its mask) is committed in its own short transaction, so a later I/O failure keeps
        the images stored before it (importing again skips them).
        """
        for item in items:
            self._check_split(item.split)
        preloaded: list[tuple[np.ndarray, np.ndarray | None] | None] = [None] * len(items)
        if validate:
            budget = _PRELOAD_BYTES
            for i, item in enumerate(items):
                chw, mask = load_item(item, binary_masks=binary_masks)
                size = chw.nbytes + (0 if mask is None else mask.nbytes)
                if size <= budget:
                    preloaded[i] = (chw, mask)
                    budget -= size
        ids: list[str] = []
        added: list[str] = []
        existing: list[str] = []
        saved: list[str] = []
        skipped: list[str] = []
        for item, pre in zip(items, preloaded, strict=True):
            chw, mask = pre if pre is not None else load_item(item, binary_masks=binary_masks)
            m = None if mask is None else check_mask(mask, (chw.shape[1], chw.shape[2]), f"mask {item.mask}")
            image_id, is_new, mask_outcome = self._store_image(
                chw, item.name, str(item.image.resolve()), item.split, m
            )
            ids.append(image_id)
            (added if is_new else existing).append(image_id)
            if mask_outcome == "saved":
                saved.append(image_id)
            elif mask_outcome == "skipped":
                skipped.append(image_id)
        return ImportResult(tuple(ids), tuple(added), tuple(existing), tuple(saved), tuple(skipped))

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
        self, chw: np.ndarray, name: str, source: str, split: str, mask: np.ndarray | None
    ) -> tuple[str, bool, str | None]:
        """Store pixels (deduplicated by content) and an optional ground-truth mask in one transaction.

        Returns:
            (image id, whether the image is new, what happened to the mask: "saved", "same", "skipped", None).
        """
        image_id = content_id(chw)
        with self._read() as conn:
            known = conn.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() is not None
        data = None if known else tiff_bytes(chw)
        mask_data = None if mask is None else tiff_bytes(mask)
        with self._write() as tx:
            is_new = tx.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone() is None
            if is_new:
                if data is None:  # removed in between: impossible today (no deletes), but stay correct
                    data = tiff_bytes(chw)
                unique = self._unique_name(tx, name)
                sha = tx.write(self._image_path(image_id), data)
                tx.execute(
                    f"INSERT INTO images ({_IMAGE_COLS}) VALUES (?, ?, 'unlabeled', NULL, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        image_id,
                        unique,
                        split,
                        int(chw.shape[1]),
                        int(chw.shape[2]),
                        int(chw.shape[0]),
                        chw.dtype.name,
                        source,
                        sha,
                        time.time(),
                    ),
                )
            outcome: str | None = None
            if mask is not None and mask_data is not None:
                latest = self._latest(tx.conn, image_id)
                if latest is None:
                    self._insert_annotation(
                        tx, image_id, 1, "ground_truth", None, None, "import", None, None, mask, mask_data
                    )
                    outcome = "saved"
                else:
                    current = self._read_annotation(image_id, latest)
                    outcome = "same" if np.array_equal(current, mask) else "skipped"
        return image_id, is_new, outcome

    # -------------------------------------------------------------------------------------- annotations

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
    ) -> None:
        sha = tx.write(self._annotation_path(image_id, version), data)
        tx.execute(
            f"INSERT INTO annotations ({_ANN_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    ) -> int:
        """Append a new annotation version of an image; earlier versions are never changed.

        Args:
            image: Id or name.
            mask: Integer label mask ``(H, W)`` of the image's size (0 = background); labels are kept.
            kind: ``correction`` (image state → corrected) or ``ground_truth`` (→ ground_truth).
            replaces: The version this edit started from: must be the current latest version, or None when
                the image has no annotation yet. Anything else means someone saved in between.
            proposal_id: The proposal the annotator started from; records edit Dice and pixels changed
                against its hard mask.
            author: Free text recorded with the version.

        Returns:
            The new version number.

        Raises:
            StaleVersionError: ``replaces`` is not the current latest version (nothing is written).
            DataError: A bad mask (shape, NaN, non-integer, negative), kind, author or proposal.
        """
        rec = self.image(image)
        if kind not in ANNOTATION_KINDS:
            raise DataError(f"unknown annotation kind {kind!r}: use one of {', '.join(ANNOTATION_KINDS)}.")
        if replaces is not None and (isinstance(replaces, bool) or not isinstance(replaces, int)):
            raise DataError(f"replaces must be a version number or None, got {replaces!r}.")
        if not isinstance(author, str) or len(author) > 200:
            raise DataError("author must be a string of at most 200 characters.")
        m = check_mask(mask, (rec.height, rec.width), f"Cannot save the annotation of image {rec.name!r}")
        edit: float | None = None
        changed: int | None = None
        if proposal_id is not None:
            if isinstance(proposal_id, bool) or not isinstance(proposal_id, int):
                raise DataError(f"proposal_id must be an integer, got {proposal_id!r}.")
            prop, proposed = self._proposal_hard_mask(proposal_id)
            if prop.image_id != rec.id:
                raise DataError(
                    f"proposal {proposal_id} is for image {prop.image_id}, not {rec.name!r} ({rec.id}): pass "
                    "the proposal the correction started from."
                )
            edit, changed = edit_stats(proposed, m)
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
                tx, rec.id, version, kind, replaces, proposal_id, author, edit, changed, m, data
            )
        return version

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
        """The int64 ``(H, W)`` mask of an annotation version (latest by default); None when there is none.

        Raises:
            DataError: A specific ``version`` that does not exist.
        """
        ann = self.annotation(image, version)
        if ann is None:
            return None
        return self._read_annotation(ann.image_id, ann.version)

    # -------------------------------------------------------------------------------------- proposals

    def save_proposal(self, model_id: str, image: ImageRef, probs: object, uncertainty: object) -> int:
        """Store a model's proposal for an image; replaces that model's earlier proposal for the image.

        Also sets the image's uncertainty to the mean of ``uncertainty`` and moves it from unlabeled to
        proposed (other states are kept).

        Args:
            model_id: A registered model.
            image: Id or name.
            probs: Class probabilities ``(K, H, W)`` in [0, 1].
            uncertainty: Per-pixel uncertainty ``(H, W)``.

        Returns:
            The proposal id (the same id when the model proposes for the image again).

        Raises:
            DataError: Unknown model or image, bad shapes or values.
        """
        check_safe_id(model_id, "model id")
        rec = self.image(image)
        stacked = check_proposal(probs, uncertainty, (rec.height, rec.width), f"proposal for {rec.name!r}")
        mean_u = float(stacked[-1].mean(dtype=np.float64))
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
                    f"INSERT INTO proposals ({_PROP_COLS}) VALUES (NULL, ?, ?, ?, ?, ?, ?)",
                    (rec.id, model_id, int(stacked.shape[0] - 1), mean_u, sha, now),
                )
                proposal_id = int(cur.lastrowid or 0)
            else:
                proposal_id = int(row[0])
                tx.execute(
                    "UPDATE proposals SET classes = ?, uncertainty = ?, file_sha256 = ?, created_at = ? "
                    "WHERE id = ?",
                    (int(stacked.shape[0] - 1), mean_u, sha, now, proposal_id),
                )
            tx.execute(
                "UPDATE images SET uncertainty = ?, "
                "state = CASE WHEN state = 'unlabeled' THEN 'proposed' ELSE state END WHERE id = ?",
                (mean_u, rec.id),
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

    def _load_proposal_by_id(self, proposal_id: int) -> tuple[ProposalRecord, np.ndarray, np.ndarray]:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_PROP_COLS} FROM proposals WHERE id = ?", (proposal_id,)).fetchone()
        if row is None:
            raise DataError(f"there is no proposal {proposal_id} in project {self._root}.")
        prop = _proposal(row)
        probs, unc = self._load_proposal_file(prop)
        return prop, probs, unc

    def proposal(
        self, image: ImageRef, model_id: str | None = None
    ) -> tuple[ProposalRecord, np.ndarray, np.ndarray] | None:
        """The latest proposal for an image (of ``model_id`` if given): record, probs ``(K, H, W)``,
        uncertainty ``(H, W)`` (float32); None when there is none."""
        found = self.proposals(image, model_id)
        if not found:
            return None
        prop = found[-1]
        probs, unc = self._load_proposal_file(prop)
        self._remember_mask(prop, probs)
        return prop, probs, unc

    # -------------------------------------------------------------------------------------- models

    def register_model(
        self,
        model_dir_or_id: PathLike,
        *,
        round: int,
        method: str,
        metrics: Mapping[str, Any] | None = None,
        model_id: str | None = None,
    ) -> str:
        """Record a model folder in the project.

        A folder outside the project is copied to ``models/<model_id>/`` (id: ``model_id`` or the folder's
        name); a folder already in ``models/`` (or the bare id of one) is recorded in place.

        Args:
            model_dir_or_id: A model folder, or the id of a folder already in ``models/``.
            round: Co-training round (0 for a pretrained teacher).
            method: How it was trained.
            metrics: JSON-serialisable metrics to record.
            model_id: Id for a copied folder (default: the folder's name).

        Returns:
            The model id.

        Raises:
            DataError: No such folder, an invalid or already registered id, metrics that are not JSON.
        """
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise DataError(f"round must be a non-negative integer, got {round!r}.")
        if not isinstance(method, str) or len(method) > 100:
            raise DataError(f"method must be a short string, got {method!r}.")
        metrics_json = _to_json(dict(metrics or {}), "model metrics")
        models_root = self._root / "models"
        raw = os.fspath(model_dir_or_id)
        src = Path(raw)
        if SAFE_ID_RE.match(raw) and (models_root / raw).is_dir():
            src = models_root / raw
        if not src.is_dir():
            raise DataError(
                f"cannot register model {raw!r}: it is neither a folder nor a folder in {models_root}."
            )
        in_place = src.resolve().parent == models_root.resolve()
        if in_place:
            mid = check_safe_id(src.name, "model id")
            if model_id is not None and model_id != mid:
                raise DataError(
                    f"{src} is already in the project as {mid!r}; it cannot be registered as {model_id!r}."
                )
        else:
            mid = check_safe_id(model_id if model_id is not None else src.name, "model id")
        dest = models_root / mid
        tmp: Path | None = None
        with self._read() as conn:
            if conn.execute("SELECT 1 FROM models WHERE id = ?", (mid,)).fetchone() is not None:
                raise DataError(f"model {mid!r} is already registered; choose another id.")
        if not in_place:
            if dest.exists():
                raise DataError(f"{dest} already exists; register it by id or choose another model id.")
            tmp = models_root / f".tmp-{mid}-{secrets.token_hex(4)}"
            try:
                copy_tree_durable(src, tmp)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise DataError(f"cannot copy model folder {src} into the project: {exc}.") from exc
        try:
            with self._write() as tx:
                if tx.execute("SELECT 1 FROM models WHERE id = ?", (mid,)).fetchone() is not None:
                    raise DataError(f"model {mid!r} is already registered; choose another id.")
                if tmp is not None:
                    try:
                        os.rename(tmp, dest)
                    except OSError as exc:
                        raise DataError(f"cannot move the model into {dest}: {exc}.") from exc
                    tx.on_rollback(lambda: shutil.rmtree(dest))
                tx.execute(
                    f"INSERT INTO models ({_MODEL_COLS}) VALUES (?, ?, ?, ?, 0, ?)",
                    (mid, round, method, metrics_json, time.time()),
                )
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return mid

    def models(self) -> list[ModelRecord]:
        """Every registered model, oldest first."""
        with self._read() as conn:
            rows = conn.execute(f"SELECT {_MODEL_COLS} FROM models ORDER BY created_at, id").fetchall()
        return [_model(r) for r in rows]

    def model(self, model_id: str) -> ModelRecord:
        """One model's record.

        Raises:
            DataError: Unknown model id.
        """
        check_safe_id(model_id, "model id")
        with self._read() as conn:
            row = conn.execute(f"SELECT {_MODEL_COLS} FROM models WHERE id = ?", (model_id,)).fetchone()
        if row is None:
            raise DataError(f"project {self._root} has no model {model_id!r}: list the models with models().")
        return _model(row)

    def set_active_model(self, model_id: str) -> ModelRecord:
        """Make ``model_id`` the one active model; returns its record."""
        self.model(model_id)
        with self._write() as tx:
            tx.execute("UPDATE models SET active = 0 WHERE active = 1 AND id != ?", (model_id,))
            tx.execute("UPDATE models SET active = 1 WHERE id = ?", (model_id,))
        return self.model(model_id)

    def active_model(self) -> ModelRecord | None:
        """The active model, or None before one is set."""
        with self._read() as conn:
            row = conn.execute(f"SELECT {_MODEL_COLS} FROM models WHERE active = 1").fetchone()
        return None if row is None else _model(row)

    # -------------------------------------------------------------------------------------- jobs

    def create_job(self, kind: str, params: Mapping[str, Any] | None = None) -> int:
        """Record a new queued job and create ``jobs/<id>/``; returns the job id."""
        check_safe_id(kind, "job kind")
        params_json = _to_json(dict(params or {}), "job parameters")
        now = time.time()
        with self._write() as tx:
            cur = tx.execute(
                "INSERT INTO jobs (kind, params, state, created_at, updated_at) VALUES (?, ?, 'queued', ?, ?)",
                (kind, params_json, now, now),
            )
            job_id = int(cur.lastrowid or 0)
        ensure_dir(self._root / "jobs" / str(job_id))
        return job_id

    def job(self, job_id: int) -> JobRecord:
        """One job's record.

        Raises:
            DataError: Unknown job id.
        """
        if isinstance(job_id, bool) or not isinstance(job_id, int):
            raise DataError(f"a job id is an integer, got {job_id!r}.")
        with self._read() as conn:
            row = conn.execute(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise DataError(f"project {self._root} has no job {job_id}: list the jobs with jobs().")
        return _job(row)

    def jobs(self, state: str | None = None) -> list[JobRecord]:
        """Every job (optionally only those in ``state``), oldest first."""
        sql, params = f"SELECT {_JOB_COLS} FROM jobs", ()
        if state is not None:
            if state not in JOB_STATES:
                raise DataError(f"unknown job state {state!r}: use one of {', '.join(JOB_STATES)}.")
            sql, params = sql + " WHERE state = ?", (state,)
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY id", params).fetchall()
        return [_job(r) for r in rows]

    def set_job_state(
        self, job_id: int, state: str, error: str | None = None, pid: int | None = None
    ) -> JobRecord:
        """Move a job to ``state``, recording an error message and/or the process id.

        Allowed moves: queued → running/cancelled/failed/interrupted; running → done/failed/cancelled/
        interrupted; interrupted → queued/running/cancelled/failed; cancelled or failed → queued/running
        (resume); done is final. Setting the current state again only updates ``error`` / ``pid``.

        Raises:
            DataError: Unknown job or state.
            ConfigError: A move the table above does not allow.
        """
        if state not in JOB_STATES:
            raise DataError(f"unknown job state {state!r}: use one of {', '.join(JOB_STATES)}.")
        if error is not None and not isinstance(error, str):
            raise DataError("a job error must be a string.")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
            raise DataError(f"a pid must be an integer, got {pid!r}.")
        self.job(job_id)
        now = time.time()
        with self._write() as tx:
            old = tx.execute("SELECT state, started_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            current, started = old[0], old[1]
            if state != current and state not in _JOB_TRANSITIONS[current]:
                raise ConfigError(f"job {job_id} is {current}; it cannot become {state}.")
            sets = ["state = ?", "updated_at = ?"]
            params: list[Any] = [state, now]
            if error is not None or state in ("queued", "running"):
                sets.append("error = ?")
                params.append(error)
            if pid is not None:
                sets.append("pid = ?")
                params.append(pid)
            if state == "running" and started is None:
                sets.append("started_at = ?")
                params.append(now)
            if state in TERMINAL_JOB_STATES and state != current:
                sets.append("finished_at = ?")
                params.append(now)
            elif state in ("queued", "running"):
                sets.append("finished_at = NULL")
            tx.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", [*params, job_id])
        return self.job(job_id)

    def append_event(self, job_id: int, event: Mapping[str, Any]) -> int:
        """Persist one JSON event of a job; returns its sequence number (1, 2, 3...)."""
        data = _to_json(dict(event), "a job event")
        self.job(job_id)
        now = time.time()
        with self._write() as tx:
            seq = int(
                tx.execute(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job_id = ?", (job_id,)
                ).fetchone()[0]
            )
            tx.execute(
                "INSERT INTO job_events (job_id, seq, time, data) VALUES (?, ?, ?, ?)",
                (job_id, seq, now, data),
            )
            tx.execute("UPDATE jobs SET updated_at = ? WHERE id = ?", (now, job_id))
        return seq

    def events(self, job_id: int, since: int = 0, limit: int | None = None) -> list[JobEvent]:
        """A job's events with ``seq > since``, in order (at most ``limit``)."""
        self.job(job_id)
        sql = "SELECT job_id, seq, time, data FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq"
        params: list[Any] = [job_id, int(since)]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._read() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [JobEvent(job_id=r[0], seq=r[1], time=r[2], data=json.loads(r[3])) for r in rows]

    def mark_running_jobs_interrupted(self) -> list[int]:
        """Mark every ``running`` job ``interrupted`` (the backend calls this at start-up); returns their ids."""
        now = time.time()
        with self._write() as tx:
            ids = [int(r[0]) for r in tx.execute("SELECT id FROM jobs WHERE state = 'running'").fetchall()]
            tx.execute(
                "UPDATE jobs SET state = 'interrupted', finished_at = ?, updated_at = ?, "
                "error = COALESCE(error, 'the backend stopped while the job was running') WHERE state = 'running'",
                (now, now),
            )
        return ids

    # -------------------------------------------------------------------------------------- check

    def check(self) -> dict[str, Any]:
        """Verify the database and every recorded file.

        Runs ``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check``, checks that every image,
        annotation and proposal file exists with its recorded sha256, and that every model folder exists.

        Returns:
            ``{"ok": bool, "images": int, "annotations": int, "models": int, "problems": [str]}``.
        """
        problems: list[str] = []
        files: list[tuple[str, Path, str]] = []
        model_ids: list[str] = []
        counts = {"images": 0, "annotations": 0, "models": 0}
        try:
            with self._snapshot() as conn:
                integrity = [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
                if integrity != ["ok"]:
                    problems.extend(f"database integrity: {msg}" for msg in integrity)
                for table, _rowid, parent, _fk in conn.execute("PRAGMA foreign_key_check").fetchall():
                    problems.append(f"database: a row of {table} points at a missing {parent} row")
                version = read_schema_version(conn)
                if version != SCHEMA_VERSION:
                    problems.append(f"database: schema version {version}, expected {SCHEMA_VERSION}")
                for image_id, name, sha in conn.execute(
                    "SELECT id, name, file_sha256 FROM images ORDER BY name"
                ):
                    counts["images"] += 1
                    if not IMAGE_ID_RE.match(image_id):
                        problems.append(f"image {name!r}: invalid id {image_id!r}")
                        continue
                    files.append((f"image {name!r} ({image_id})", self._image_path(image_id), sha))
                for image_id, version, sha in conn.execute(
                    "SELECT image_id, version, file_sha256 FROM annotations ORDER BY image_id, version"
                ):
                    counts["annotations"] += 1
                    if not IMAGE_ID_RE.match(image_id):
                        problems.append(f"annotation v{version}: invalid image id {image_id!r}")
                    else:
                        files.append(
                            (
                                f"annotation v{version} of image {image_id}",
                                self._annotation_path(image_id, version),
                                sha,
                            )
                        )
                for pid, image_id, model_id, sha in conn.execute(
                    "SELECT id, image_id, model_id, file_sha256 FROM proposals ORDER BY id"
                ):
                    if SAFE_ID_RE.match(model_id) and IMAGE_ID_RE.match(image_id):
                        files.append((f"proposal {pid}", self._proposal_path(model_id, image_id), sha))
                    else:
                        problems.append(f"proposal {pid}: invalid model or image id")
                model_ids = [str(r[0]) for r in conn.execute("SELECT id FROM models ORDER BY id")]
                counts["models"] = len(model_ids)
        except sqlite3.DatabaseError as exc:
            problems.append(f"database error: {exc}")
        for what, path, sha in files:
            rel = path.relative_to(self._root).as_posix()
            if not path.is_file():
                problems.append(f"{what}: file {rel} is missing")
                continue
            try:
                actual = sha256_file(path)
            except OSError as exc:
                problems.append(f"{what}: cannot read {rel} ({exc})")
                continue
            if actual != sha:
                problems.append(f"{what}: file {rel} has been modified or is corrupt (sha256 mismatch)")
        for mid in model_ids:
            if not SAFE_ID_RE.match(mid):
                problems.append(f"model {mid!r}: invalid id")
            elif not (self._root / "models" / mid).is_dir():
                problems.append(f"model {mid!r}: folder models/{mid}/ is missing")
        return {"ok": not problems, **counts, "problems": problems}


def check_project(path: PathLike) -> dict[str, Any]:
    """:meth:`Project.check` for a folder; a database too damaged to open is reported, not raised.

    Raises:
        DataError: ``path`` is not a project at all (no ``project.db``), or its schema is too new.
    """
    root = Path(path)
    try:
        project = Project.open(root)
    except DataError as exc:
        if Project.is_project(root) and isinstance(exc.__cause__, sqlite3.DatabaseError):
            return {"ok": False, "images": 0, "annotations": 0, "models": 0, "problems": [str(exc)]}
        raise
    with project:
        return project.check()
