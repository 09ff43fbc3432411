"""A project's task: what its masks mean and what its networks learn (issue 13).

- ``binary`` (the default, and what every project made before tasks existed is): 0 = background,
  a value > 0 = foreground; the networks have 2 output classes.
- ``multiclass`` with K named classes (K >= 2, background included, value 0): a mask holds class
  indices 0..K-1; the networks have K outputs and Dice is reported per class and as their mean.
- ``instances``: a mask holds object ids (0 = background, each object its own id, any ids); jobs turn
  it into the 3-class target background / interior / boundary (``core/instances.py``) the networks
  learn, and a seeded watershed turns their output back into objects. Objects may be of **several
  classes** (``--classes background,nucleus,mitosis``: n = 2 object classes): every annotation then
  carries each object's class, the target has n + 2 classes (one interior per object class, one shared
  boundary) and every object found gets one class.

The task is chosen when a project is created (``diffseg init --task``), stored in the project
(schema v5, ``meta.task``), returned by ``GET /project`` and written into every model's ``config.json``
(``task`` and ``classes``). Each class has a name and a colour (``#rrggbb``), shown by the widgets and
written with the model. Light module: the standard library only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from .errors import ConfigError

if TYPE_CHECKING:
    from .masks import Task

__all__ = [
    "INSTANCE_CLASSES",
    "MAX_CLASSES",
    "TASK_KINDS",
    "ClassInfo",
    "ProjectTask",
    "TaskKind",
    "make_task",
]

TaskKind = Literal["binary", "multiclass", "instances"]
TASK_KINDS: tuple[TaskKind, ...] = get_args(TaskKind)

#: Output classes of an instance model: background, object interior, object boundary
#: (``core.instances.INSTANCE_CLASSES``; base must not import core).
INSTANCE_CLASSES = 3
#: The most classes a multiclass project may have (its class maps are stored as uint8).
MAX_CLASSES = 255

_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_COLOUR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
_BACKGROUND_COLOUR = "#000000"


def _default_colour(value: int) -> str:
    return _BACKGROUND_COLOUR if value == 0 else _PALETTE[(value - 1) % len(_PALETTE)]


@dataclass(frozen=True)
class ClassInfo:
    """One class of a project: its name and display colour (``#rrggbb``); its value is its position."""

    name: str
    colour: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "colour": self.colour}


_DEFAULT_NAMES: dict[str, tuple[str, str]] = {
    "binary": ("background", "foreground"),
    "instances": ("background", "object"),
}


@dataclass(frozen=True)
class ProjectTask:
    """A project's task and its classes (value ``i`` is ``classes[i]``; 0 is background).

    Binary and instance projects have two classes (background and the foreground / object class); a
    multiclass project has K of them. Build one with :func:`make_task` (checked) or :meth:`from_dict`.
    """

    kind: TaskKind = "binary"
    classes: tuple[ClassInfo, ...] = (ClassInfo("background", "#000000"), ClassInfo("foreground", "#1f77b4"))

    @property
    def num_classes(self) -> int:
        """Output classes of the networks: 2 (binary), K (multiclass), 3 (instances of one class: the
        3-class target; n object classes: n + 2)."""
        if self.kind == "instances":
            return INSTANCE_CLASSES + self.object_classes - 1
        return len(self.classes)

    @property
    def object_classes(self) -> int:
        """An instance project's object classes (the classes but background); 0 for other tasks."""
        return len(self.classes) - 1 if self.kind == "instances" else 0

    @property
    def classed(self) -> bool:
        """An instance project whose objects are of several classes (each annotation carries them)."""
        return self.object_classes > 1

    @property
    def labels(self) -> Task:
        """What a mask must hold (:func:`napari_diffseg.base.masks.check_labels`)."""
        from .masks import Task

        if self.kind == "multiclass":
            return Task("multiclass", len(self.classes))
        return Task(self.kind)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def __str__(self) -> str:
        if self.kind == "multiclass":
            return f"multiclass ({len(self.classes)} classes: {', '.join(self.class_names)})"
        if self.classed:
            return f"instances ({self.object_classes} object classes: {', '.join(self.class_names[1:])})"
        return self.kind

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., "classes": [{"name", "colour"}, ...]}`` (what the project and models store)."""
        return {"kind": self.kind, "classes": [c.to_dict() for c in self.classes]}

    def model_config(self) -> dict[str, Any]:
        """The keys every model's ``config.json`` gets: ``task`` and ``classes``."""
        return {"task": self.kind, "classes": [c.to_dict() for c in self.classes]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ProjectTask:
        """The task stored as :meth:`to_dict` (missing classes: the kind's defaults; None: binary).

        Raises:
            ConfigError: An unknown kind or bad classes.
        """
        if not data:
            return make_task("binary")
        classes = data.get("classes")
        specs: list[tuple[str, str | None]] | None = None
        if classes:
            specs = [(str(c.get("name", "")), c.get("colour")) for c in classes]
        return _build(str(data.get("kind", "binary")), specs)

    @classmethod
    def from_json(cls, text: str | None) -> ProjectTask:
        """:meth:`from_dict` of a JSON text (None or empty: binary)."""
        if not text:
            return make_task("binary")
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"the stored task is not JSON ({exc})") from exc
        return cls.from_dict(data if isinstance(data, dict) else None)


def _parse_classes(classes: str | Sequence[str]) -> list[tuple[str, str | None]]:
    """``"background,tumour:#ff0000,stroma"`` (or a list of such items) → [(name, colour or None)]."""
    items = classes.split(",") if isinstance(classes, str) else list(classes)
    out: list[tuple[str, str | None]] = []
    for item in items:
        name, sep, colour = str(item).partition(":")
        out.append((name.strip(), colour.strip() if sep else None))
    return out


def _build(kind: str, specs: list[tuple[str, str | None]] | None) -> ProjectTask:
    if kind not in TASK_KINDS:
        raise ConfigError(f"unknown task {kind!r}: choose binary, multiclass or instances")
    if specs is None:
        if kind == "multiclass":
            raise ConfigError(
                "a multiclass project needs its classes named, background first, e.g. "
                "--classes background,tumour,stroma"
            )
        specs = [(n, None) for n in _DEFAULT_NAMES[kind]]
    k = len(specs)
    if kind == "binary" and k != 2:
        raise ConfigError(
            f"a binary project has 2 classes (background and the foreground class), got {k} "
            "names; for several classes create a multiclass project (--task multiclass), for objects of "
            "several classes an instance project (--task instances --classes background,a,b)"
        )
    if kind == "instances" and k < 2:
        raise ConfigError(
            f"an instance project names background and at least one object class, got {k} name(s): e.g. "
            "--classes background,nucleus (or background,nucleus,mitosis for objects of two classes)"
        )
    if not 2 <= k <= MAX_CLASSES:
        raise ConfigError(
            f"a multiclass project has 2 to {MAX_CLASSES} classes including background (value 0), got {k}: "
            "name them all, background first, e.g. --classes background,tumour,stroma"
        )
    seen: set[str] = set()
    classes = []
    for value, (name, colour) in enumerate(specs):
        if not name or len(name) > 60 or any(ord(ch) < 32 for ch in name):
            raise ConfigError(
                f"class {value} has the name {name!r}: a class name is 1 to 60 printable characters"
            )
        if name.lower() in seen:
            raise ConfigError(f"the class name {name!r} is given twice; class names must differ")
        seen.add(name.lower())
        if colour is None or colour == "":
            colour = _default_colour(value)
        if not isinstance(colour, str) or not _COLOUR_RE.match(colour):
            raise ConfigError(f"class {name!r}: colour {colour!r} is not of the form #rrggbb (e.g. #ff0000)")
        classes.append(ClassInfo(name, colour.lower()))
    return ProjectTask(kind, tuple(classes))


def make_task(kind: str = "binary", classes: str | Sequence[str] | None = None) -> ProjectTask:
    """A checked task from what a user gives (``diffseg init --task KIND --classes ...``).

    Args:
        kind: ``binary``, ``multiclass`` or ``instances``.
        classes: The class names in value order, background first: ``"background,tumour,stroma"`` or a
            list; each may carry a colour, ``"tumour:#ff0000"``. Required for multiclass (K >= 2); binary
            projects take 2 names (default ``background,foreground``), instance projects 2 or more
            (default ``background,object``; more: objects of several classes).

    Raises:
        ConfigError: An unknown kind, a multiclass task without classes, a wrong count, an empty or
            repeated name, a malformed colour.
    """
    return _build(kind, None if classes is None else _parse_classes(classes))
