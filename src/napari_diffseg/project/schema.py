"""The database schema of a project, as an explicit, ordered list of migrations.

``MIGRATIONS[i]`` takes a database from schema version ``i`` to ``i + 1``; :data:`SCHEMA_VERSION` is the
version this code writes. A new database starts at version 0 (just the ``meta`` table, see
:func:`bootstrap`) and every migration is applied in order, each in its own ``BEGIN IMMEDIATE`` transaction
together with the ``schema_version`` bump, so a crash or a second process opening the project at the same
time never leaves a half-migrated database. Migrations are append-only: never edit a released one, add a
new one instead.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from napari_diffseg.base.errors import DataError

__all__ = [
    "APP_ID",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "apply_migrations",
    "bootstrap",
    "read_schema_version",
    "rollback",
]

APP_ID = "napari-diffseg"
"""Value of ``meta.app``: marks a SQLite file as a napari-diffseg project."""


@dataclass(frozen=True)
class Migration:
    """One schema step: a description and the SQL statements that perform it (no transaction control)."""

    description: str
    statements: tuple[str, ...]


_IMAGE_STATES_SQL = "('unlabeled','proposed','in_review','corrected','ground_truth','excluded')"
_JOB_STATES_SQL = "('queued','running','done','failed','cancelled','interrupted')"

MIGRATIONS: list[Migration] = [
    Migration(
        "v1: images, models, proposals, append-only annotation versions",
        (
            f"""CREATE TABLE images (
                id TEXT PRIMARY KEY CHECK (length(id) = 16),
                name TEXT NOT NULL UNIQUE,
                source TEXT NOT NULL DEFAULT '',
                height INTEGER NOT NULL CHECK (height > 0),
                width INTEGER NOT NULL CHECK (width > 0),
                channels INTEGER NOT NULL CHECK (channels > 0),
                dtype TEXT NOT NULL,
                state TEXT NOT NULL DEFAULT 'unlabeled' CHECK (state IN {_IMAGE_STATES_SQL}),
                uncertainty REAL,
                split TEXT NOT NULL DEFAULT 'train',
                file_sha256 TEXT NOT NULL,
                created_at REAL NOT NULL
            )""",
            """CREATE TABLE models (
                id TEXT PRIMARY KEY,
                round INTEGER NOT NULL DEFAULT 0,
                method TEXT NOT NULL DEFAULT '',
                metrics TEXT NOT NULL DEFAULT '{}',
                active INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
                created_at REAL NOT NULL
            )""",
            "CREATE UNIQUE INDEX models_one_active ON models(active) WHERE active = 1",
            """CREATE TABLE proposals (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                image_id TEXT NOT NULL REFERENCES images(id),
                model_id TEXT NOT NULL REFERENCES models(id),
                classes INTEGER NOT NULL CHECK (classes > 0),
                uncertainty REAL NOT NULL,
                file_sha256 TEXT NOT NULL,
                created_at REAL NOT NULL,
                UNIQUE (model_id, image_id)
            )""",
            "CREATE INDEX proposals_image ON proposals(image_id, created_at)",
            """CREATE TABLE annotations (
                image_id TEXT NOT NULL REFERENCES images(id),
                version INTEGER NOT NULL CHECK (version > 0),
                kind TEXT NOT NULL CHECK (kind IN ('ground_truth', 'correction')),
                replaces INTEGER,
                proposal_id INTEGER REFERENCES proposals(id),
                author TEXT NOT NULL DEFAULT '',
                edit_dice REAL,
                pixels_changed INTEGER,
                labels INTEGER NOT NULL DEFAULT 0,
                file_sha256 TEXT NOT NULL,
                created_at REAL NOT NULL,
                PRIMARY KEY (image_id, version)
            )""",
            """CREATE TRIGGER annotations_no_update BEFORE UPDATE ON annotations
               BEGIN SELECT RAISE(ABORT, 'annotation versions are append-only'); END""",
            """CREATE TRIGGER annotations_no_delete BEFORE DELETE ON annotations
               BEGIN SELECT RAISE(ABORT, 'annotation versions are append-only'); END""",
        ),
    ),
    Migration(
        "v2: jobs and their persisted events; image listing indexes",
        (
            f"""CREATE TABLE jobs (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                kind TEXT NOT NULL,
                params TEXT NOT NULL DEFAULT '{{}}',
                state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN {_JOB_STATES_SQL}),
                error TEXT,
                pid INTEGER,
                created_at REAL NOT NULL,
                started_at REAL,
                finished_at REAL,
                updated_at REAL NOT NULL
            )""",
            """CREATE TABLE job_events (
                job_id INTEGER NOT NULL REFERENCES jobs(id),
                seq INTEGER NOT NULL CHECK (seq > 0),
                time REAL NOT NULL,
                data TEXT NOT NULL,
                PRIMARY KEY (job_id, seq)
            )""",
            "CREATE INDEX images_state_uncertainty ON images(state, uncertainty)",
            "CREATE INDEX images_split ON images(split)",
        ),
    ),
    Migration(
        "v3: each image's axes (T, Z, C, Y, X letters in storage order), shape and channel names",
        (
            "ALTER TABLE images ADD COLUMN axes TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE images ADD COLUMN shape TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE images ADD COLUMN channel_names TEXT NOT NULL DEFAULT '[]'",
            # Older projects stored grey (1 channel) and RGB (3) 2D images as (C, H, W): say so.
            """UPDATE images SET
                axes = CASE channels WHEN 1 THEN 'YX' WHEN 3 THEN 'YXC' ELSE 'CYX' END,
                shape = CASE channels
                    WHEN 1 THEN '[' || height || ', ' || width || ']'
                    WHEN 3 THEN '[' || height || ', ' || width || ', 3]'
                    ELSE '[' || channels || ', ' || height || ', ' || width || ']' END""",
        ),
    ),
    Migration(
        "v4: z-stacks: the planes an annotation covers, the most uncertain plane of a proposal and an image",
        (
            # JSON list of annotated plane indices of a z-stack's annotation; NULL: a 2D image (all of it)
            "ALTER TABLE annotations ADD COLUMN planes TEXT",
            # the plane with the highest mean uncertainty of a z-stack's proposal; NULL for a 2D image
            "ALTER TABLE proposals ADD COLUMN plane INTEGER",
            "ALTER TABLE images ADD COLUMN plane INTEGER",
        ),
    ),
    Migration(
        "v5: the project's task (binary, multiclass with named classes, instances); the edit cost in objects",
        (
            # JSON {"kind", "classes": [{"name", "colour"}]} (base/task.py); every older project is binary
            """INSERT OR IGNORE INTO meta (key, value) VALUES ('task', '{"kind": "binary"}')""",
            # an instance project's correction against its proposal's objects (matched at IoU 0.5);
            # NULL without a proposal, or in a binary / multiclass project
            "ALTER TABLE annotations ADD COLUMN objects_added INTEGER",
            "ALTER TABLE annotations ADD COLUMN objects_removed INTEGER",
            "ALTER TABLE annotations ADD COLUMN objects_changed INTEGER",
        ),
    ),
    Migration(
        "v6: objects of several classes: each object's class in an instance project's annotation",
        (
            # JSON {"<object id>": class 1..n}; NULL in binary / multiclass / one-class instance projects
            "ALTER TABLE annotations ADD COLUMN object_classes TEXT",
        ),
    ),
]

SCHEMA_VERSION: int = len(MIGRATIONS)
"""The schema version this code creates and understands."""


def read_schema_version(conn: sqlite3.Connection) -> int | None:
    """The ``schema_version`` recorded in ``meta``, or None when the file is not a napari-diffseg project."""
    try:
        rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('app', 'schema_version')"))
    except sqlite3.DatabaseError:
        return None
    if rows.get("app") != APP_ID or "schema_version" not in rows:
        return None
    try:
        return int(rows["schema_version"])
    except ValueError:
        return None


def bootstrap(conn: sqlite3.Connection, created_at: float) -> None:
    """Create the ``meta`` table of a brand-new database at schema version 0 (one transaction).

    ``conn`` must be in autocommit mode (``isolation_level=None``).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('app', ?), ('schema_version', '0'), "
            "('created_at', ?)",
            (APP_ID, repr(created_at)),
        )
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any (SQLite may already have rolled it back after an error)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def apply_migrations(
    conn: sqlite3.Connection, target: int | None = None, migrations: list[Migration] | None = None
) -> int:
    """Bring the database up to ``target`` (default: the latest), one migration per transaction.

    The current version is re-read inside each write transaction, so several processes may call this at
    once: each step is applied exactly once. ``conn`` must be in autocommit mode.

    Args:
        conn: An open connection to a bootstrapped project database.
        target: Stop at this version (tests use it to build an older database).
        migrations: The migration list (default :data:`MIGRATIONS`).

    Returns:
        The schema version reached.

    Raises:
        DataError: Not a project database, or its version is newer than ``target`` / this code supports.
    """
    steps = MIGRATIONS if migrations is None else migrations
    goal = len(steps) if target is None else target
    if not 0 <= goal <= len(steps):
        raise DataError(
            f"schema version {goal} is unknown: this version of napari-diffseg knows 0..{len(steps)}."
        )
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = read_schema_version(conn)
            if version is None:
                raise DataError("the database is not a napari-diffseg project (no meta table or app marker).")
            if version > len(steps):
                raise DataError(
                    f"the project has schema version {version} but this napari-diffseg supports at most "
                    f"{len(steps)}: upgrade napari-diffseg (pip install -U napari-diffseg) to open it."
                )
            if version >= goal:
                conn.execute("COMMIT")
                return version
            for statement in steps[version].statements:
                conn.execute(statement)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version + 1),))
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
