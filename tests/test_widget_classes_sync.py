"""The Annotate widget's class-map bookkeeping for objects of several classes (issue 13), without Qt:
:func:`napari_diffseg._widgets._classes.sync_classes` keeps the class map painted per object after a stroke,
:func:`~napari_diffseg._widgets._classes.fill_unclassed` gives objects with no class pixel the chosen class."""

from __future__ import annotations

import numpy as np

from napari_diffseg._widgets._classes import classed, fill_unclassed, sync_classes
from napari_diffseg.review import ShownTask


def _two_objects() -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((10, 10), np.int32)
    ids[1:4, 1:4] = 1
    ids[6:9, 6:9] = 2
    classes = np.where(ids == 1, 1, np.where(ids == 2, 2, 0)).astype(np.int32)
    return ids, classes


def _apply(classes: np.ndarray, found: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    out = classes.copy()
    if found is not None:
        flat, values = found
        out.ravel()[flat] = values
    return out


def test_a_dab_of_class_paint_recolours_the_whole_object() -> None:
    ids, before = _two_objects()
    painted = before.copy()
    painted[2, 2] = 2  # one pixel of object 1
    out = _apply(painted, sync_classes(ids, painted, ids, before, new_class=1))
    assert set(np.unique(out[ids == 1])) == {2} and set(np.unique(out[ids == 2])) == {2}
    painted = before.copy()
    painted[7, 7] = 0  # unclassing a pixel unclasses the object
    out = _apply(painted, sync_classes(ids, painted, ids, before, new_class=1))
    assert set(np.unique(out[ids == 2])) == {0} and set(np.unique(out[ids == 1])) == {1}


def test_object_edits_carry_their_classes() -> None:
    ids_before, classes = _two_objects()
    ids = ids_before.copy()
    ids[1:4, 1:4] = 0  # object 1 erased: its class pixels go
    ids[4, 6:9] = 2  # object 2 grows: the new pixels take its class
    ids[0, 7:10] = 3  # a new object: the chosen class
    out = _apply(classes, sync_classes(ids, classes, ids_before, classes, new_class=1))
    assert not out[1:4, 1:4].any()
    assert set(np.unique(out[ids == 2])) == {2} and set(np.unique(out[ids == 3])) == {1}
    assert sync_classes(ids_before, classes, ids_before, classes, new_class=1) is None  # nothing to do


def test_objects_without_a_class_get_the_chosen_one_and_only_they() -> None:
    ids, classes = _two_objects()
    ids[0, 7:10] = 3
    filled, which = fill_unclassed(ids, classes, 2)
    assert which == [3] and set(np.unique(filled[ids == 3])) == {2}
    assert np.array_equal(filled[ids != 3], classes[ids != 3]) and not classes[ids == 3].any()  # a copy
    assert fill_unclassed(ids, filled, 1)[1] == []


def test_only_instance_projects_of_several_classes_are_classed() -> None:
    two = ((0, "background", "#000000"), (1, "nucleus", "#00ff00"), (2, "mitosis", "#ff00ff"))
    assert classed(ShownTask("instances", two))
    assert not classed(ShownTask("instances", two[:2]))
    assert not classed(ShownTask("multiclass", two)) and not classed(ShownTask())
