"""Checking a label image against a project's task before it is stored or trained on (issue 13).

A task is ``binary``, ``multiclass(K)`` (K classes including background, values 0..K-1) or
``instances`` (0 = background, each object its own positive id). :func:`check_labels` takes the raw
pixels of a label image (as the file holds them, before any cast) and either returns the mask to store
with the notes the user should see, or raises :class:`MaskError` with one message that names the file
and the offending value. Every task refuses:

- negative values (an "ignore" −1 would become one more class, or wrap to 65535 when cast);
- non-integer floats (a resized or probability map: 0.5 is neither background nor object);
- NaN or infinite values;
- values above 65,535, which the store's uint16 label files cannot hold (renumber the ids 1..N).

Then, per task:

- ``binary``: foreground = value > 0. Values above 1 are merged into the foreground **with a note that
  names them**, never silently (a class map 0/1/2 or an instance mask painted in napari).
- ``multiclass(K)``: values must lie in 0..K-1; a mask with more distinct values than K (an instance or
  over-segmentation export: 400 ids) is refused naming how many it has.
- ``instances``: each id must cover one connected piece (8-connected); an id covering two separate
  pieces is refused naming the id and its number of parts. Ids need not be consecutive.

:func:`read_labels` reads a label file's raw pixels (TIFF by tifffile, PNG/others by imageio) without
any conversion, for :func:`check_label_file`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import ConfigError, DataError

__all__ = [
    "MAX_STORED_ID",
    "LabelCheck",
    "MaskError",
    "Task",
    "check_label_file",
    "check_labels",
    "check_object_classes",
    "check_task_mask",
    "object_classes_from_map",
    "parse_task",
    "read_labels",
]

#: The largest id the store's uint16 label files hold.
MAX_STORED_ID = int(np.iinfo(np.uint16).max)

TaskKind = Literal["binary", "multiclass", "instances"]


class MaskError(DataError):
    """A label image does not fit the project's task (the message names the file and the value)."""


@dataclass(frozen=True)
class Task:
    """A project's task: ``binary``, ``multiclass`` with ``num_classes`` (incl. background) or ``instances``."""

    kind: TaskKind
    num_classes: int = 2

    def __post_init__(self) -> None:
        if self.kind not in ("binary", "multiclass", "instances"):
            raise ConfigError(f"unknown task {self.kind!r}; choose binary, multiclass(K) or instances")
        if self.kind == "multiclass" and self.num_classes < 2:
            raise ConfigError(
                f"a multiclass task needs K >= 2 classes incl. background, got {self.num_classes}"
            )

    def __str__(self) -> str:
        return f"multiclass({self.num_classes})" if self.kind == "multiclass" else self.kind


def parse_task(text: str | Task) -> Task:
    """``"binary"``, ``"instances"``, ``"multiclass(3)"`` or ``"multiclass:3"`` → :class:`Task`."""
    if isinstance(text, Task):
        return text
    s = text.strip().lower()
    if s in ("binary", "instances"):
        return Task(s)  # type: ignore[arg-type]
    m = re.fullmatch(r"multiclass\s*[(:]\s*(\d+)\s*\)?", s)
    if m:
        return Task("multiclass", int(m.group(1)))
    raise ConfigError(f"unknown task {text!r}; write binary, instances or multiclass(K), e.g. multiclass(3)")


@dataclass(frozen=True)
class LabelCheck:
    """A label image that fits its task: ``mask`` (int64, what to store) and ``notes`` to show the user."""

    mask: np.ndarray
    notes: list[str] = field(default_factory=list)
    num_objects: int | None = None


def _values(v: np.ndarray, limit: int = 6) -> str:
    shown = ", ".join(str(int(x)) if float(x).is_integer() else f"{float(x):g}" for x in v[:limit])
    return shown + (f" ... ({len(v)} values)" if len(v) > limit else "")


def check_labels(
    pixels: np.ndarray, task: Task | str, *, source: str = "the mask", max_id: int = MAX_STORED_ID
) -> LabelCheck:
    """Check raw label pixels ``(H, W)`` (or ``(Z, H, W)``) against ``task`` (module docstring).

    Args:
        pixels: The label image as read, before any cast.
        task: The project's task.
        source: How to name the image in messages (its file name).
        max_id: The largest value the store can hold.

    Raises:
        MaskError: The image does not fit the task; nothing should be saved.
    """
    t = parse_task(task)
    a = np.asarray(pixels)
    if a.ndim not in (2, 3):
        raise MaskError(f"{source}: a label image must be 2D (or a 3D stack), got shape {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise MaskError(f"{source}: a label image must hold numbers, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a)
        if not finite.all():
            raise MaskError(
                f"{source}: {int((~finite).sum())} pixel(s) are NaN or infinite; labels must be whole numbers"
            )
        frac = np.unique(a[a != np.round(a)])
        if frac.size:
            raise MaskError(
                f"{source} holds non-integer values ({_values(frac)}), as after interpolated resizing or in a "
                "probability map; save integer labels (0 = background), resized with nearest-neighbour"
            )
    if a.size and a.min() < 0:
        neg = np.unique(a[a < 0])
        raise MaskError(
            f"{source} holds negative values ({_values(neg)}); labels are 0 (background) or positive. An "
            "'ignore' value such as -1 is not supported: set those pixels to 0 or leave the image unlabeled"
        )
    top = a.max(initial=0)
    if top > max_id:
        raise MaskError(
            f"{source} holds ids above {max_id} (max {int(top)}), which the project's uint16 label files cannot "
            "hold; renumber the ids 1..N (e.g. skimage.segmentation.relabel_sequential)"
        )
    ids = a.astype(np.int64)
    values = np.unique(ids)
    fg = values[values > 0]
    if t.kind == "binary":
        notes = []
        if fg.size > 1 or (fg.size == 1 and fg[0] != 1):
            notes.append(
                f"{source}: values {_values(fg)} all taken as foreground (binary project); for classes use a "
                "multiclass project, for objects an instance project"
            )
        return LabelCheck((ids > 0).astype(np.int64), notes)
    if t.kind == "multiclass":
        k = t.num_classes
        if values.size > k or (values.size and values[-1] >= k):
            raise MaskError(
                f"{source} holds {values.size} distinct values ({_values(values)}) but the project has "
                f"{k} classes (0..{k - 1}); an instance or over-segmentation mask does not fit a multiclass "
                "project (use an instance project, or map the values to class indices)"
            )
        return LabelCheck(ids, [])
    # instances: each id one connected piece
    from scipy import ndimage as ndi

    structure = ndi.generate_binary_structure(ids.ndim, ids.ndim)
    boxes = ndi.find_objects(ids)
    for label, box in enumerate(boxes, start=1):
        if box is None:
            continue
        _, parts = ndi.label(ids[box] == label, structure=structure)
        if parts > 1:
            raise MaskError(
                f"{source}: id {label} covers {parts} separate parts; in an instance mask each object has its "
                "own id (give each part a new id, or join them)"
            )
    return LabelCheck(ids, [], num_objects=int(fg.size))


#: A binary project's mask may paint its foreground with at most this many different values (1, or 255,
#: or a second napari label); more look like objects or classes (:func:`check_task_mask`).
MAX_BINARY_LABELS = 2


def check_task_mask(
    pixels: np.ndarray,
    task: Task | str,
    *,
    source: str = "the mask",
    binarize: bool = False,
    max_id: int = MAX_STORED_ID,
) -> LabelCheck:
    """:func:`check_labels` as a project applies it when a mask enters it (import, correction, job).

    One rule more for a binary project: a mask painted with more than :data:`MAX_BINARY_LABELS`
    different foreground values (an instance mask with one id per object, a class map) is refused
    unless ``binarize`` says to take every value > 0 as foreground, so objects or classes are never
    merged by accident. Multiclass and instance masks follow :func:`check_labels`.

    Raises:
        MaskError: The mask does not fit the task; the message names ``source`` and what to do.
    """
    t = parse_task(task)
    checked = check_labels(pixels, t, source=source, max_id=max_id)
    if t.kind == "binary":
        a = np.asarray(pixels)
        fg = np.unique(a[a > 0]) if a.size else a
        if fg.size == 1 and fg[0] == 255:  # 0/255, as many tools save a binary mask: nothing to say
            return LabelCheck(checked.mask, [])
        if fg.size > MAX_BINARY_LABELS and not binarize:
            raise MaskError(
                f"{source} holds {fg.size} different labels ({_values(fg)}), but this is a binary project: "
                "0 = background and one foreground value (1, or 255). Each object with its own id belongs "
                "in an instance project (diffseg init --task instances), classes in a multiclass project "
                "(--task multiclass --classes ...); to take every value > 0 as foreground here, pass "
                "--binarize (binarize=true)"
            )
    return checked


def object_classes_from_map(
    ids: np.ndarray, classes: np.ndarray, object_classes: int, *, source: str = "the mask"
) -> dict[int, int]:
    """Each object's class from a class map painted beside its ids (the form a user gives them: a
    dataset folder's ``masks/`` beside ``instances/``, a "classes" Labels layer beside the objects):
    the most frequent class value > 0 under the object's pixels (ties: the smaller value); pixels of the
    class map outside every object are ignored.

    Args:
        ids: Object ids ``(H, W)`` or ``(Z, H, W)``, 0 = background (checked by :func:`check_labels`).
        classes: The class map, same shape: 0 = no class, 1..``object_classes``.
        object_classes: The project's object classes (its classes but background).
        source: How to name the image in messages.

    Returns:
        ``{object id: class}`` for every object of ``ids``.

    Raises:
        MaskError: Shapes differ, a class value outside 0..object_classes, or an object with no class
            pixel under it (named, with what to do).
    """
    i = np.asarray(ids)
    c = np.asarray(classes)
    if c.shape != i.shape:
        raise MaskError(
            f"{source}: the class map has shape {c.shape} but the object ids {i.shape}; they must match"
        )
    if c.dtype == bool:
        c = c.astype(np.uint8)
    if not np.issubdtype(c.dtype, np.integer) or (c.size and (c.min() < 0 or c.max() > object_classes)):
        bad = np.unique(c[(c < 0) | (c > object_classes)]) if np.issubdtype(c.dtype, np.number) else c[:0]
        raise MaskError(
            f"{source}: the class map holds {_values(bad) if bad.size else c.dtype} but the project has "
            f"{object_classes} object class(es): values 0 (none) to {object_classes}"
        )
    i = i.astype(np.int64)
    present = np.unique(i[i > 0])
    if not present.size:
        return {}
    sel = (i > 0) & (c > 0)
    index = np.searchsorted(present, i[sel])
    counts = np.bincount(
        index * (object_classes + 1) + c[sel].astype(np.int64), minlength=present.size * (object_classes + 1)
    ).reshape(present.size, object_classes + 1)
    counts[:, 0] = 0
    missing = present[counts.max(axis=1) == 0]
    if missing.size:
        raise MaskError(
            f"{source}: object(s) {_values(missing)} have no class: paint each object's class in the class "
            f"map (values 1..{object_classes}) over at least one of its pixels"
        )
    return {int(obj): int(k) for obj, k in zip(present, counts.argmax(axis=1), strict=True)}


def check_object_classes(
    ids: np.ndarray, classes: object, object_classes: int, *, source: str = "the mask"
) -> dict[int, int]:
    """A ``{object id: class}`` map as a client sends it (JSON keys may be strings) checked against the
    objects of ``ids``: every object has a class in 1..``object_classes``; ids that are not in the mask
    are dropped.

    Raises:
        MaskError: Not a mapping, a key or class that is not a whole number, a class out of range, an
            object without a class.
    """
    if not isinstance(classes, dict):
        raise MaskError(
            f"{source}: object classes must be a mapping {{object id: class}}, got {type(classes).__name__}"
        )
    parsed: dict[int, int] = {}
    for key, value in classes.items():
        try:
            obj, k = int(key), int(value)
        except (TypeError, ValueError) as exc:
            raise MaskError(
                f"{source}: object class entry {key!r}: {value!r} is not two whole numbers"
            ) from exc
        if isinstance(value, bool) or not 1 <= k <= object_classes:
            raise MaskError(
                f"{source}: object {obj} has class {value!r}; the project's object classes are 1..{object_classes}"
            )
        parsed[obj] = k
    present = np.unique(np.asarray(ids)[np.asarray(ids) > 0]).astype(np.int64)
    missing = [int(o) for o in present if int(o) not in parsed]
    if missing:
        raise MaskError(
            f"{source}: object(s) {_values(np.asarray(missing))} have no class; give every object one "
            f"(1..{object_classes})"
        )
    return {int(o): parsed[int(o)] for o in present}


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """The raw pixels of a label file (TIFF: first series as stored; PNG and others: imageio), no cast.

    A grey image saved with equal colour channels gives its first channel.

    Raises:
        DataError: The file cannot be read.
    """
    p = Path(path)
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            a = np.asarray(tifffile.imread(p))
        else:
            import imageio.v3 as iio

            a = np.asarray(iio.imread(p))
    except Exception as exc:  # every reader's own error: one message naming the file
        raise DataError(f"cannot read label file {p.name}: {exc}") from exc
    if a.ndim == 3 and a.shape[-1] in (3, 4) and np.all(a[..., :3] == a[..., :1]):
        a = a[..., 0]
    return a


def check_label_file(
    path: str | os.PathLike[str], task: Task | str, *, max_id: int = MAX_STORED_ID
) -> LabelCheck:
    """:func:`read_labels` then :func:`check_labels`, messages naming the file."""
    return check_labels(read_labels(path), task, source=Path(path).name, max_id=max_id)
