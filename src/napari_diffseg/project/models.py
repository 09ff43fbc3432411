"""Models: registering model folders, listing them, the active model."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_diffseg.base.errors import DataError
from napari_diffseg.project._db import _MODEL_COLS, PathLike, _model, _StoreBase, _to_json
from napari_diffseg.project._util import SAFE_ID_RE, check_safe_id, copy_tree_durable
from napari_diffseg.project._weights import WEIGHTS_FILE, nonfinite_tensors
from napari_diffseg.project.records import ModelRecord

if TYPE_CHECKING:
    from napari_diffseg.core.instances import Watershed


class _ModelsMixin(_StoreBase):
    """The model methods of :class:`~napari_diffseg.project.store.Project`."""

    def model_dir(self, model_id: str) -> Path:
        """The folder ``models/<model_id>/`` (the id is validated, the folder need not exist)."""
        return self._root / "models" / check_safe_id(model_id, "model id")

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

        A model whose ``weights.safetensors`` holds a NaN or an infinity (a diverged training) is refused
        and nothing is recorded or copied. (A folder whose weights file is missing or unreadable is
        recorded: loading it fails loudly, and :meth:`check` reports it.)

        Args:
            model_dir_or_id: A model folder, or the id of a folder already in ``models/``.
            round: Co-training round (0 for a pretrained teacher).
            method: How it was trained.
            metrics: JSON-serialisable metrics to record.
            model_id: Id for a copied folder (default: the folder's name).

        Returns:
            The model id.

        Raises:
            DataError: No such folder, an invalid or already registered id, metrics that are not JSON,
                weights that hold NaN or infinite values.
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
            _refuse_nonfinite(mid, tmp if tmp is not None else src)
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
        """Make ``model_id`` the one active model; returns its record.

        Raises:
            DataError: Unknown model id, or its weights hold NaN or infinite values (a model registered
                before registration checked them); the active model is then unchanged.
        """
        self.model(model_id)
        _refuse_nonfinite(model_id, self.model_dir(model_id), "activate")
        with self._write() as tx:
            tx.execute("UPDATE models SET active = 0 WHERE active = 1 AND id != ?", (model_id,))
            tx.execute("UPDATE models SET active = 1 WHERE id = ?", (model_id,))
        return self.model(model_id)

    def model_watershed(self, model_id: str) -> Watershed:
        """The watershed parameters instance model ``model_id`` keeps (:func:`read_model_watershed`)."""
        return read_model_watershed(self.model_dir(model_id))

    def active_model(self) -> ModelRecord | None:
        """The active model, or None before one is set."""
        with self._read() as conn:
            row = conn.execute(f"SELECT {_MODEL_COLS} FROM models WHERE active = 1").fetchone()
        return None if row is None else _model(row)


def read_model_watershed(folder: Path) -> Watershed:
    """The watershed parameters an instance model keeps in its ``config.json`` (chosen on the project's
    validation images when it was trained); the defaults for a model without them, or whose folder is gone
    or unreadable (what every model used before they were stored)."""
    from napari_diffseg.core.instances import Watershed

    try:
        header = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return Watershed()
    config = header.get("config") if isinstance(header, dict) else None
    try:
        return Watershed.from_config(config if isinstance(config, dict) else None)
    except (DataError, TypeError):
        return Watershed()


def _refuse_nonfinite(mid: str, folder: Path, action: str = "register") -> None:
    """Raise DataError when the folder's weights hold NaN or infinity (an unreadable file is let through)."""
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        return
    try:
        bad = nonfinite_tensors(weights)
    except DataError:
        return
    if bad:
        raise DataError(
            f"cannot {action} model {mid!r}: {len(bad)} weight tensor(s) in {WEIGHTS_FILE} hold NaN or "
            f"infinite values (e.g. {', '.join(bad[:3])}); the training that made it diverged. Nothing was "
            f"{action}d: train again with a lower learning rate (preset field lr)."
        )
