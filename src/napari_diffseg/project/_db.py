"""The store's database layer: connections, the write transaction, row → record converters.

:func:`_connect` opens a project database (WAL, foreign keys, busy timeout, full fsync); :class:`_Tx` is one
write transaction whose files are undone when it does not commit; :class:`_StoreBase` is what every
resource module of :class:`~napari_diffseg.project.store.Project` builds on (the connection, the read and
write transactions, the file paths, and the few methods one resource module uses from another).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_diffseg.base.errors import ConfigError, DataError, DiffsegError
from napari_diffseg.base.task import ProjectTask
from napari_diffseg.project._util import check_safe_id, sha256_bytes, write_file
from napari_diffseg.project.records import (
    AnnotationRecord,
    ImageRecord,
    JobRecord,
    ModelRecord,
    ProposalRecord,
)
from napari_diffseg.project.schema import rollback

PathLike = str | os.PathLike[str]
ImageRef = str | ImageRecord

BUSY_TIMEOUT_S = 30.0
"""How long a writer waits for another process's write transaction before giving up."""

_IMAGE_COLS = (
    "id, name, state, uncertainty, split, height, width, channels, dtype, source, file_sha256, created_at, "
    "axes, shape, channel_names, plane"
)
_ANN_COLS = (
    "image_id, version, kind, replaces, proposal_id, author, edit_dice, pixels_changed, labels, file_sha256, "
    "created_at, planes, objects_added, objects_removed, objects_changed, object_classes"
)
_PROP_COLS = "id, image_id, model_id, classes, uncertainty, file_sha256, created_at, plane"
_MODEL_COLS = "id, round, method, metrics, active, created_at"
_JOB_COLS = "id, kind, params, state, error, pid, created_at, started_at, finished_at, updated_at"


# ------------------------------------------------------------------------------------------ rows → records


def _image(row: Sequence[Any]) -> ImageRecord:
    shape = tuple(int(n) for n in json.loads(row[13] or "[]"))
    names = tuple(str(n) for n in json.loads(row[14] or "[]"))
    fields = ("id", "name", "state", "uncertainty", "split", "height", "width", "channels", "dtype", "source")
    return ImageRecord(
        **dict(zip(fields, row[:10], strict=True)),
        file_sha256=row[10],
        created_at=row[11],
        axes=str(row[12]),
        shape=shape,
        channel_names=names,
        plane=None if row[15] is None else int(row[15]),
    )


def _annotation(row: Sequence[Any]) -> AnnotationRecord:
    planes = None if row[11] is None else tuple(int(z) for z in json.loads(row[11]))
    names = ("image_id", "version", "kind", "replaces", "proposal_id", "author", "edit_dice")
    return AnnotationRecord(
        **dict(zip(names, row[:7], strict=True)),
        pixels_changed=row[7],
        labels=row[8],
        file_sha256=row[9],
        created_at=row[10],
        planes=planes,
        objects_added=row[12],
        objects_removed=row[13],
        objects_changed=row[14],
        object_classes=None if row[15] is None else {int(k): int(v) for k, v in json.loads(row[15]).items()},
    )


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


# ------------------------------------------------------------------------------------------ the base


class _StoreBase:
    """The connection, transactions and file paths every resource mixin of ``Project`` uses.

    ``Project.__init__`` sets the attributes. The methods at the end are implemented by the resource
    mixins; they are declared here so that one mixin can call another's and still type-check.
    """

    _root: Path
    _conn: sqlite3.Connection | None
    _lock: threading.RLock

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

    @property
    def task(self) -> ProjectTask:
        """The project's task and classes (``binary`` for a project made before tasks existed).

        Raises:
            DataError: The stored task cannot be read (the project is damaged).
        """
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'task'").fetchone()
        try:
            return ProjectTask.from_json(None if row is None else str(row[0]))
        except ConfigError as exc:
            raise DataError(f"project {self._root}: its stored task is damaged ({exc}).") from exc

    # -------------------------------------------------------------------------------------- paths

    def _image_path(self, image_id: str) -> Path:
        return self._root / "images" / f"{image_id}.tif"

    def _annotation_path(self, image_id: str, version: int) -> Path:
        return self._root / "annotations" / image_id / f"{int(version)}.tif"

    def _proposal_path(self, model_id: str, image_id: str) -> Path:
        return self._root / "proposals" / check_safe_id(model_id, "model id") / f"{image_id}.tif"

    # -------------------------------------------------------------------------------------- across resources
    # What one resource calls on another, declared for the type checker only: the mixins implement them.
    if TYPE_CHECKING:

        def image(self, image: ImageRef) -> ImageRecord:
            """Implemented in :mod:`.images`."""

        @staticmethod
        def _latest(conn: sqlite3.Connection, image_id: str) -> int | None:
            """Implemented in :mod:`.annotations`."""

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
            """Implemented in :mod:`.annotations`."""

        def _read_annotation(self, image_id: str, version: int) -> np.ndarray:
            """Implemented in :mod:`.annotations`."""

        def _proposal_hard_mask(self, proposal_id: int) -> tuple[ProposalRecord, np.ndarray]:
            """Implemented in :mod:`.proposals`."""

        def _proposal_instances(
            self, proposal_id: int, watershed: Mapping[str, Any] | None = None
        ) -> tuple[ProposalRecord, np.ndarray]:
            """Implemented in :mod:`.proposals`."""

        def _proposal_object_classes(
            self, proposal_id: int, watershed: Mapping[str, Any] | None = None
        ) -> dict[int, int]:
            """Implemented in :mod:`.proposals`."""
