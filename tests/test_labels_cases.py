"""One test per label image in ``../shared/cases/labels/`` against the RIGHT outcome of its README row:
each checked against the project tasks by :mod:`napari_diffseg.base.masks`. Skipped cleanly where the
shared folder is absent."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_data_dir
from napari_diffseg.base.errors import ConfigError
from napari_diffseg.base.masks import MaskError, Task, check_label_file, check_labels, parse_task, read_labels

LABELS = shared_data_dir().parent / "cases" / "labels"
pytestmark = pytest.mark.skipif(
    not (LABELS / "instance_painted.tif").is_file(), reason="../shared/cases is absent"
)

BINARY, THREE, INSTANCES = Task("binary"), Task("multiclass", 3), Task("instances")


def test_base_image() -> None:
    """image.png: the base image the labels sit on, (256, 256) uint8."""
    a = read_labels(LABELS / "image.png")
    assert a.shape == (256, 256) and a.dtype == np.uint8


def test_instance_painted() -> None:
    """Binary project: foreground = id > 0, never 18/19 classes; instance project: 18 objects."""
    binary = check_label_file(LABELS / "instance_painted.tif", BINARY)
    assert set(np.unique(binary.mask)) == {0, 1}
    assert binary.notes and "1, 2, 3" in binary.notes[0] and "foreground" in binary.notes[0]
    inst = check_label_file(LABELS / "instance_painted.tif", INSTANCES)
    assert inst.num_objects == 18
    with pytest.raises(MaskError, match=r"instance_painted\.tif holds 19 distinct values"):
        check_label_file(LABELS / "instance_painted.tif", THREE)


def test_classes_012() -> None:
    """Multiclass project: 3 classes (0, 1, 2); binary project: merged with a note naming 1 and 2."""
    multi = check_label_file(LABELS / "classes_012.png", THREE)
    assert sorted(np.unique(multi.mask).tolist()) == [0, 1, 2]
    binary = check_label_file(LABELS / "classes_012.png", BINARY)
    assert sorted(np.unique(binary.mask).tolist()) == [0, 1]
    assert "classes_012.png: values 1, 2 all taken as foreground" in binary.notes[0]


def test_negative_ids() -> None:
    """Refused in every task, naming the file and the value -1."""
    for task in (BINARY, THREE, INSTANCES):
        with pytest.raises(MaskError, match=r"negative_ids\.tif holds negative values \(-1\)"):
            check_label_file(LABELS / "negative_ids.tif", task)


def test_float_mask() -> None:
    """Refused, naming the file and its non-integer value 0.5."""
    for task in (BINARY, THREE, INSTANCES):
        with pytest.raises(MaskError, match=r"float_mask\.tif holds non-integer values \(0\.5\)"):
            check_label_file(LABELS / "float_mask.tif", task)
    # a float mask of whole numbers is fine
    assert check_labels(np.array([[0.0, 1.0], [2.0, 0.0]], np.float32), THREE).mask.dtype == np.int64


def test_overflow_ids() -> None:
    """Refused, naming the file and ids above 65535 (max 70018)."""
    for task in (BINARY, INSTANCES):
        with pytest.raises(MaskError, match=r"overflow_ids\.tif holds ids above 65535 \(max 70018\)"):
            check_label_file(LABELS / "overflow_ids.tif", task)


def test_disconnected_id() -> None:
    """Instance project: refused naming id 1 and its 2 separate parts; a binary project takes it."""
    with pytest.raises(MaskError, match=r"disconnected_id\.tif: id 1 covers 2 separate parts"):
        check_label_file(LABELS / "disconnected_id.tif", INSTANCES)
    assert set(np.unique(check_label_file(LABELS / "disconnected_id.tif", BINARY).mask)) == {0, 1}


def test_too_many_ids_for_multiclass() -> None:
    """Multiclass project: refused naming 400 distinct values."""
    with pytest.raises(MaskError, match=r"too_many_ids_for_multiclass\.tif holds 400 distinct values"):
        check_label_file(LABELS / "too_many_ids_for_multiclass.tif", THREE)
    # as instances it is 400 objects, each one piece
    assert check_label_file(LABELS / "too_many_ids_for_multiclass.tif", INSTANCES).num_objects == 400


def test_parse_task() -> None:
    assert parse_task("multiclass(4)") == Task("multiclass", 4)
    assert parse_task("multiclass:3") == THREE
    assert str(parse_task("instances")) == "instances"
    with pytest.raises(ConfigError, match="unknown task"):
        parse_task("semantic")
