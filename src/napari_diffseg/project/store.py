"""The embedded project store: one SQLite database (WAL mode) plus files, no server (docs/architecture.md).

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

Code layout. This module holds the :class:`Project` facade (create, open, close); its methods come from one
mixin per resource: :mod:`.images` (queries, states, import), :mod:`.annotations`, :mod:`.proposals`,
:mod:`.models`, :mod:`.jobs` (jobs and their events) and :mod:`.integrity` (``check``). The connection,
transactions, file paths and row converters they share live in :mod:`._db`.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType

from napari_diffseg.base.errors import DataError
from napari_diffseg.base.task import ProjectTask
from napari_diffseg.project._db import PathLike, _connect
from napari_diffseg.project._util import ensure_dir
from napari_diffseg.project.annotations import _AnnotationsMixin
from napari_diffseg.project.images import _ImagesMixin
from napari_diffseg.project.integrity import _IntegrityMixin, check_project
from napari_diffseg.project.jobs import _JobsMixin
from napari_diffseg.project.models import _ModelsMixin
from napari_diffseg.project.proposals import _ProposalsMixin
from napari_diffseg.project.schema import SCHEMA_VERSION, apply_migrations, bootstrap, read_schema_version

__all__ = ["DB_NAME", "SUBDIRS", "Project", "check_project"]

DB_NAME = "project.db"
"""The database file inside a project folder."""
SUBDIRS: tuple[str, ...] = ("images", "annotations", "proposals", "models", "jobs")
"""The file folders of a project."""


class Project(_ImagesMixin, _AnnotationsMixin, _ProposalsMixin, _ModelsMixin, _JobsMixin, _IntegrityMixin):
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
    def create(cls, path: PathLike, *, exist_ok: bool = False, task: ProjectTask | None = None) -> Project:
        """Create a new project in ``path`` (a new or empty folder) and open it.

        Args:
            path: The project folder.
            exist_ok: Open ``path`` instead of failing when it already is a project.
            task: The project's task (:mod:`napari_diffseg.base.task`; default binary). Fixed for the
                project's life: every mask is checked against it and every model is trained for it.

        Raises:
            DataError: ``path`` is a file, a non-empty folder that is not a project, or (unless ``exist_ok``)
                already a project; with ``exist_ok``, a project of another task.
        """
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise DataError(f"cannot create a project at {root}: it is a file. Choose a folder.")
        if cls.is_project(root):
            if exist_ok:
                found = cls.open(root)
                have = found.task
                if task is not None and have != task:
                    found.close()
                    raise DataError(
                        f"{root} is already a project of task {have}, not {task}; choose another folder."
                    )
                return found
            raise DataError(
                f"{root} is already a napari-diffseg project: add images with `diffseg import {root} ...`."
            )
        if root.is_dir() and any(root.iterdir()):
            raise DataError(
                f"cannot create a project in {root}: the folder is not empty and is not a project. "
                f"{_init_advice(root)[0].upper()}{_init_advice(root)[1:]}"
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
            if task is not None:
                _write_task(conn, task)
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
                f"{root} is not a napari-diffseg project (it has no {DB_NAME}): {_init_advice(root)}"
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


def _write_task(conn: sqlite3.Connection, task: ProjectTask) -> None:
    """Record a new project's task in ``meta`` (one transaction)."""
    import json

    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('task', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (json.dumps(task.to_dict()),),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _init_advice(root: Path) -> str:
    """What to run for a folder that is not a project: ``diffseg init`` refuses a non-empty folder, so
    a folder of images (or a dataset folder) becomes the ``--images`` of a new project. Paths are quoted
    for the shell, so the command can be pasted as it is."""
    import shlex

    from napari_diffseg.base.formats import IMAGE_EXTENSIONS

    try:
        entries = list(root.iterdir())
    except OSError:
        entries = []
    if not entries:
        return f"create one there with `diffseg init {shlex.quote(str(root))}`."
    has_images = (root / "images").is_dir() or any(
        p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in entries
    )
    new = shlex.quote(f"{root.resolve().name or 'images'}-project")  # in the working folder
    if has_images:
        return (
            f"it holds images; to make a project of them run `diffseg init {new} --images "
            f"{shlex.quote(str(root))}` (a new folder: the images are copied into the project, the folder is "
            "left as it is)."
        )
    return f"create a project in a new or empty folder (`diffseg init {new}`) and import images into it."
