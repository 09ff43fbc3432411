"""The integrity check: the database and every recorded file (``diffseg check``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from napari_diffseg.base.errors import DataError
from napari_diffseg.project._db import PathLike, _StoreBase
from napari_diffseg.project._util import IMAGE_ID_RE, SAFE_ID_RE, sha256_file
from napari_diffseg.project._weights import WEIGHTS_FILE, nonfinite_tensors
from napari_diffseg.project.schema import SCHEMA_VERSION, read_schema_version


class _IntegrityMixin(_StoreBase):
    """The integrity check of :class:`~napari_diffseg.project.store.Project`."""

    def check(self) -> dict[str, Any]:
        """Verify the database and every recorded file.

        Runs ``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check``, checks that every image,
        annotation and proposal file exists with its recorded sha256, that every model folder exists, and
        that each model's ``weights.safetensors`` loads and holds no NaN or infinite value (each bad
        model is reported by id).

        Returns:
            ``{"ok": bool, "images": int, "annotations": int, "models": int, "problems": [str]}``.
        """
        problems: list[str] = []
        files: list[tuple[str, Path, str]] = []
        model_ids: list[str] = []
        active: set[str] = set()
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
                rows = conn.execute("SELECT id, active FROM models ORDER BY id").fetchall()
                model_ids = [str(r[0]) for r in rows]
                active = {str(r[0]) for r in rows if r[1]}
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
            else:
                problem = _weights_problem(self._root / "models" / mid / WEIGHTS_FILE)
                if problem is not None:
                    fix = " (it is the active model: activate another)" if mid in active else ""
                    problems.append(f"model {mid!r}: {problem}{fix}")
        return {"ok": not problems, **counts, "problems": problems}


def _weights_problem(weights: Path) -> str | None:
    """What is wrong with a model's weights file (None: it loads and every weight is finite)."""
    rel = f"models/{weights.parent.name}/{weights.name}"
    if not weights.is_file():
        return f"weights file {rel} is missing"
    try:
        bad = nonfinite_tensors(weights)
    except DataError as exc:
        return f"weights file {rel} does not load: {exc}"
    if bad:
        return (
            f"weights file {rel} holds NaN or infinite values in {len(bad)} tensor(s) (e.g. "
            f"{', '.join(bad[:3])}): the model is broken, do not use it"
        )
    return None


def check_project(path: PathLike) -> dict[str, Any]:
    """:meth:`Project.check` for a folder; a database too damaged to open is reported, not raised.

    Raises:
        DataError: ``path`` is not a project at all (no ``project.db``), or its schema is too new.
    """
    from napari_diffseg.project.store import Project  # the facade imports this module

    root = Path(path)
    try:
        project = Project.open(root)
    except DataError as exc:
        if Project.is_project(root) and isinstance(exc.__cause__, sqlite3.DatabaseError):
            return {"ok": False, "images": 0, "annotations": 0, "models": 0, "problems": [str(exc)]}
        raise
    with project:
        return project.check()
