"""Objects of several classes (issue 13) in the Annotate widget, without Qt: what the widget fetches and
paints for an instance project whose objects are of several classes (``background,nucleus,mitosis``).

The annotator sees two Labels layers: the objects (one id each, drawn as outlines) and beside them the
**class map** ("<image> classes": each object's pixels filled with its class, in the project's class
colours; 0 = no class). The class map is what is sent: the backend gives each object the majority class
under it (:func:`napari_diffseg.base.masks.object_classes_from_map`); nothing here decides an object's
class for the backend. What this module does is keep the class map painted the way the annotator means it:

- :func:`with_classes` (worker): the class map of what was loaded, the proposal's ``classes`` part or
  the loaded annotation version's ``{object id: class}`` coloured by :func:`~napari_diffseg.core.instances.class_map`.
- :func:`sync_classes`: after a stroke in either layer, a dab of class paint on an object recolours the
  whole object, erased object pixels lose their class, the pixels an object grows by take its class, and a
  new object takes the class chosen in the widget's *Class* box.
- :func:`fill_unclassed`: before a save, the objects with no class pixel under them (painted new without a
  stroke event, e.g. by a script) get the *Class* box's class, and the widget says so.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np

from napari_diffseg.core.instances import class_map
from napari_diffseg.review import ShownTask, load_for_image, project_task, proposal_or_request

__all__ = [
    "classed",
    "fill_unclassed",
    "load_with_classes",
    "object_classes",
    "proposal_with_classes",
    "sync_classes",
    "with_classes",
]


def classed(task: ShownTask) -> bool:
    """Whether ``task`` is an instance project whose objects are of several classes (background and at
    least two object classes)."""
    return task.kind == "instances" and len([c for c in task.classes if c[0] > 0]) > 1


def object_classes(task: ShownTask) -> list[tuple[int, str, str]]:
    """The object classes ``(value, name, colour)`` (background left out)."""
    return [c for c in task.classes if c[0] > 0]


def with_classes(client: Any, result: dict[str, Any]) -> dict[str, Any]:
    """Worker: add ``result["classes"]``, the class map of what ``result`` shows (int32, the mask's shape),
    in a project of several object classes; other results are returned as they are.

    A proposal: its ``classes`` part (each proposed object coloured by its class). An annotation version:
    its stored ``{object id: class}`` coloured over its ids (no class stored: zeros).
    """
    if not isinstance(result, dict) or result.get("kind") not in ("proposal", "annotation"):
        return result
    task = result.get("task") or project_task(client)
    if not classed(task):
        return result
    mask = np.asarray(result["mask"])
    if result["kind"] == "proposal":
        record = result["proposal"]
        cmap = np.asarray(client.proposal_pixels(result["image_id"], "classes", model_id=record.model_id))
    else:
        version = int(result["version"])
        mapping = next(
            (a.object_classes for a in client.annotations(result["image_id"]) if a.version == version), None
        )
        cmap = class_map(mask, mapping or {})
    if cmap.shape != mask.shape:
        raise ValueError(f"the class map has shape {cmap.shape} but the objects {mask.shape}")
    result["classes"] = cmap.astype(np.int32)
    return result


def load_with_classes(
    client: Any, record: Any, model_id: str | None, model_known: bool = True
) -> dict[str, Any]:
    """Worker (the session's companion): :func:`~napari_diffseg.review.load_for_image` and
    :func:`with_classes`."""
    return with_classes(client, load_for_image(client, record, model_id, model_known))


def proposal_with_classes(client: Any, *args: Any) -> Generator[dict[str, Any], None, dict[str, Any]]:
    """Worker (generator): :func:`~napari_diffseg.review.proposal_or_request` and :func:`with_classes`."""
    result = yield from proposal_or_request(client, *args)
    return with_classes(client, result)


def _most_common(values: np.ndarray) -> int:
    """The most frequent value (ties: the smaller); 0 for none."""
    if not values.size:
        return 0
    return int(np.bincount(values.astype(np.int64)).argmax())


def sync_classes(
    ids: np.ndarray,
    classes: np.ndarray,
    ids_before: np.ndarray,
    classes_before: np.ndarray,
    new_class: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The class-map pixels to repaint after the annotator's strokes (``*_before``: both layers as they
    were after the last sync), as ``(flat indices, values)``; None when nothing needs repainting.

    - Object pixels whose id changed: erased (id 0) → no class; taken by an object that has other pixels →
      that object's class (the most frequent class > 0 under its other pixels); by a new object → ``new_class``.
    - Class pixels the annotator painted on an object: the whole object takes the class painted there (the
      most frequent value painted on it): a dab of class paint recolours an object; painting 0 unclasses it.
    """
    ids = np.asarray(ids)
    cls = np.asarray(classes)
    if ids.shape != cls.shape or ids_before.shape != ids.shape or classes_before.shape != cls.shape:
        return None
    target = cls.astype(np.int64, copy=True)
    moved = ids != ids_before
    if moved.any():
        target[moved & (ids == 0)] = 0
        for obj in np.unique(ids[moved & (ids > 0)]):
            mine = ids == obj
            known = _most_common(target[mine & ~moved & (target > 0)])
            target[mine & moved] = known if known > 0 else int(new_class)
    painted = (cls != classes_before) & ~moved & (ids > 0)
    if painted.any():
        for obj in np.unique(ids[painted]):
            mine = ids == obj
            target[mine] = _most_common(cls[painted & mine])
    changed = np.flatnonzero(target != cls)
    if not changed.size:
        return None
    return changed, target.ravel()[changed]


def fill_unclassed(ids: np.ndarray, classes: np.ndarray, new_class: int) -> tuple[np.ndarray, list[int]]:
    """``classes`` with every object of ``ids`` that has no class pixel under it painted ``new_class``
    (a copy), and those objects' ids."""
    i = np.asarray(ids)
    c = np.array(classes, copy=True)
    present = np.unique(i[i > 0])
    if not present.size:
        return c, []
    has = np.unique(i[(i > 0) & (c > 0)])
    missing = np.setdiff1d(present, has)
    if missing.size:
        c[np.isin(i, missing)] = int(new_class)
    return c, [int(m) for m in missing]
