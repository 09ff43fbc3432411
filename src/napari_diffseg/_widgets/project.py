"""The project dock widget: open or create a project (a local backend is started for it) or connect to a
remote backend; import image layers or files; the image table; "Next image".

Why one module of ~810 lines: one QWidget class (its task choice, import dialogs and layer checks included) and the two helpers it shares with the reader path
(``show_image``, the import dialogs); backend start-up is in ``backend/local.py``, listings in ``review.py``.

A folder of images opened as a project is not refused: the widget offers a new project beside it
(``FOLDER-diffseg``) and imports the images into it (:func:`ask_create_from_images`). An import that does
not look like the project's other images (RGB into grey, a very different size) is imported with a
warning that says what it changes (:func:`napari_diffseg.base.import_check.import_warnings`)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_diffseg._layers import layer_axes, to_display
from napari_diffseg._widgets._session import (
    Session,
    notify_error,
    run_in_thread,
    session_for,
    set_layer_data,
)
from napari_diffseg._widgets._session import header as _header
from napari_diffseg.backend.errors import AuthError, BackendUnavailable
from napari_diffseg.backend.local import create_project, start_local_backend
from napari_diffseg.base.contracts import Image
from napari_diffseg.base.formats import IMAGE_EXTENSIONS
from napari_diffseg.base.import_check import import_warnings
from napari_diffseg.data.imagefile import file_stem
from napari_diffseg.review import fetch_image

__all__ = [
    "ImportReport",
    "ProjectWidget",
    "ask_create",
    "ask_create_from_images",
    "go_to_plane",
    "image_parts",
    "images_in",
    "show_image",
    "start_local_backend",
]

COLUMNS = ("name", "state", "uncertainty", "last edit Dice", "split")
UPLOAD_SUFFIXES = (".npy", ".tif", ".tiff", ".png")  # sent as they are; other images are decoded here
FILE_FILTER = "Images (*.tif *.tiff *.png *.jpg *.jpeg *.bmp *.npy);;All files (*)"
DEFAULT_URL = "http://127.0.0.1:8765"


def ask_create(parent: QWidget | None, folder: Path) -> bool:
    """Ask whether to create a new project in ``folder`` (tests replace this function)."""
    answer = QMessageBox.question(
        parent,
        "Create a DiffSeg project?",
        f"{folder} is not a DiffSeg project yet.\n\nCreate a new project there and start a local backend?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.Yes,
    )
    return bool(answer == QMessageBox.StandardButton.Yes)


def ask_create_from_images(parent: QWidget | None, folder: Path, target: Path, count: int) -> bool:
    """Ask whether to make a new project ``target`` of the ``count`` images in ``folder`` (tests replace
    this function)."""
    answer = QMessageBox.question(
        parent,
        "Make a DiffSeg project of these images?",
        f"{folder} is not a DiffSeg project: it holds {count} image(s).\n\nCreate a new project in {target} "
        "and import them? The folder itself is left as it is.",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.Yes,
    )
    return bool(answer == QMessageBox.StandardButton.Yes)


def images_in(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, or in its ``images/`` subfolder (a dataset folder)."""
    base = folder / "images" if (folder / "images").is_dir() else folder
    try:
        return sorted(p for p in base.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    except OSError:
        return []


def _create_and_start(
    folder: Path, create: bool, task: str = "binary", classes: str | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Worker: create the project (if asked) for ``task`` (``classes``: the class names, background first: a
    multiclass project's classes, or an instance project's object classes; none for a binary project), then
    start its local backend."""
    if create:
        create_project(folder, task, classes if task in CLASS_TASKS else None)
    return start_local_backend(folder)


TASK_CHOICES: tuple[tuple[str, str], ...] = (
    ("binary (one foreground)", "binary"),
    ("multiclass (named classes)", "multiclass"),
    ("instances (one id per object)", "instances"),
)
"""The Project widget's task choices for a new project: (label, task)."""

CLASS_TASKS = ("multiclass", "instances")
"""The tasks whose class names the Project widget takes (required for multiclass, optional for instances)."""

_CLASS_HINTS = {
    "multiclass": (
        "class names, background first: background,tumour,stroma",
        "A multiclass project's classes, comma-separated, background (value 0) first; a colour may follow "
        "a name: tumour:#ff0000",
    ),
    "instances": (
        "optional object classes, background first: background,nucleus,mitosis",
        "Optional: an instance project whose objects are of several classes names them, comma-separated, "
        "background (value 0) first, e.g. background,nucleus,mitosis (a colour may follow a name: "
        "mitosis:#ff0000). Each object then carries one class, painted in a 'classes' layer beside the "
        "objects. Empty: objects of one class.",
    ),
}


@dataclass
class ImportReport:
    """What an import did: names added, names whose pixels were already in the project, and failures."""

    added: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name or file, why)
    records: list[Image] = field(default_factory=list)  # the new images' records
    warnings: list[str] = field(default_factory=list)  # what is odd about them (import_warnings)


AXES_CHOICES: tuple[tuple[str, str | None], ...] = (
    ("axes: auto", None),
    ("CYX (channels)", "CYX"),
    ("YXC (colour last)", "YXC"),
    ("TYX (time-lapse)", "TYX"),
    ("ZYX (z-stack)", "ZYX"),
)
"""The Project widget's axes choices for an import: (label, OME letters or None to read them)."""


@dataclass(frozen=True)
class LayerPixels:
    """A copy of an Image layer's pixels and the axes they are uploaded with (:func:`layer_axes`)."""

    data: np.ndarray
    axes: str


Item = np.ndarray | Path | LayerPixels


def _upload_all(client: Any, items: Sequence[tuple[str, Item]], axes: str | None = None) -> ImportReport:
    """Worker: upload each ``(name, array, file or layer pixels)``; a bad item is recorded and the others
    go on.

    ``axes`` (OME letters, or None: read from the file) is sent with every upload, as ``diffseg import
    --axes``. A lost connection or a refused token stops the import (every further upload would fail
    the same way).
    """
    from napari_diffseg.backend.errors import BackendError
    from napari_diffseg.base.errors import DiffsegError

    report = ImportReport()
    for name, item in items:
        label = item.name if isinstance(item, Path) else name
        try:
            uploads = _uploads(name, item, axes)
        except (DiffsegError, OSError, ValueError) as exc:
            report.failed.append((label, _reason(exc)))
            continue
        for up_name, body, sent_axes in uploads:
            try:
                out = client.upload_image(body, name=up_name, axes=sent_axes)
            except (BackendUnavailable, AuthError):
                raise
            except (BackendError, DiffsegError, OSError, ValueError) as exc:
                report.failed.append((label if len(uploads) == 1 else up_name, _reason(exc)))
                continue
            (report.added if out.added else report.known).append(out.image.name)
            if out.added:
                report.records.append(out.image)
    return report


def _uploads(name: str, item: Item, axes: str | None) -> list[tuple[str, np.ndarray | Path, str | None]]:
    """What to send for one item: ``(name, body, axes)``. A TIFF or PNG holding one 2D image is sent as the
    file (the backend reads it, keeping its channel names); a file of several series or time points is
    read here and sent one image at a time (``NAME-s0``..., ``NAME-t000``...), like ``diffseg import``;
    JPEG and BMP are decoded here (EXIF orientation, CMYK) and sent as arrays. A layer's pixels go with
    their own axes (a time-lapse one time point each, ``NAME-t000``...)."""
    from napari_diffseg.data.imagefile import ImageRead, read_image_file, split_frames

    if isinstance(item, LayerPixels):
        frames = split_frames(ImageRead(Path(name), name, item.data, item.axes))
        return [(f.name, f.data, f.axes) for f in frames]
    if not isinstance(item, Path):
        return [(name, item, None)]

    frames = [f for r in read_image_file(item, axes=axes) for f in split_frames(r)]
    if len(frames) == 1 and item.suffix.lower() in UPLOAD_SUFFIXES:
        return [(name, item, axes)]
    stem = file_stem(item)
    out: list[tuple[str, np.ndarray | Path, str | None]] = []
    for frame in frames:
        frame_name = name + frame.name[len(stem) :] if frame.name.startswith(stem) else frame.name
        out.append((frame_name if len(frames) > 1 else name, frame.data, frame.axes))
    return out


def _reason(exc: BaseException) -> str:
    from napari_diffseg.backend.errors import BackendError

    return exc.message if isinstance(exc, BackendError) else str(exc)


def _unwrap(obj: Any) -> Any:
    return getattr(obj, "__wrapped__", obj)


def _reusable(layer: Any, data: np.ndarray, rgb: bool) -> bool:
    """Whether ``layer`` (an Image layer of ours) can take ``data`` in place (napari changes a layer's number
    of dimensions with its data, so a 2D layer takes a z-stack; RGB is fixed when a layer is made)."""
    from napari.layers import Image

    return isinstance(layer, Image) and not layer.multiscale and bool(layer.rgb) == rgb


def image_parts(record: Image, data: np.ndarray, rgb: bool) -> list[tuple[np.ndarray, str]]:
    """The Image layers an image is shown as: ``(data, name)`` each. Grey, RGB and a grey z-stack are one
    layer named as the image; fluorescence channels (``C`` > 1, not RGB) are one layer per channel (what
    napari's ``channel_axis`` gives), named ``IMAGE CHANNEL`` from the image's channel names (``c0``, ``c1``
    ... without them). ``data`` is what :func:`~napari_diffseg._layers.to_display` gives: channels just
    before Y, X (``(C, H, W)``, a stack's ``(Z, C, H, W)``)."""
    channels = int(record.channels)
    if rgb or channels <= 1 or data.ndim < 3 or data.shape[-3] != channels:
        return [(data, record.name)]
    names = list(record.channel_names)
    if len(names) != channels:
        names = [f"c{i}" for i in range(channels)]
    return [(np.ascontiguousarray(data[..., i, :, :]), f"{record.name} {names[i]}") for i in range(channels)]


def go_to_plane(viewer: Any, plane: int | None) -> None:
    """Name the Z slider of the z-stack on show "Z" and move it to ``plane`` (None: leave it where it is).

    The image, its proposal and its uncertainty are ``(Z, H, W)`` layers at scale 1, the last three of the
    viewer's dimensions. A label the user gave the axis is kept; napari drops ours when the dimensions
    change (a 2D image)."""
    viewer = _unwrap(viewer)
    axis = viewer.dims.ndim - 3
    if axis < 0:
        return
    labels = list(viewer.dims.axis_labels)
    if labels[axis].lstrip("-").isdigit():  # napari's default label (-3, or 0 in older versions)
        labels[axis] = "Z"
        viewer.dims.axis_labels = tuple(labels)
    if plane is not None:
        viewer.dims.set_point(axis, float(plane))


def show_image(viewer: Any, session: Session, result: tuple[Any, ...] | None) -> None:
    """Main thread: show a fetched image (``(record, stored pixels)``, or what ``fetch_image`` returns) and
    make it the image under review; ``None`` (nothing left to review) gives a notification.

    The Image layers of the previously opened image are reused (new data, name, contrast): removing layers
    and adding new ones is slow, and with some OpenGL drivers it crashes napari at the next paint. New
    layers are added only when there are none, or when the old ones cannot take the image (RGB ↔ grey,
    another number of channels); they are added before the old ones are removed. Fluorescence channels are
    one layer each (:func:`image_parts`); a z-stack is a 3D layer, and the Z slider goes to its most
    uncertain plane (``record.plane``) when it has one.
    """
    if result is None:
        show_info("Every image has been reviewed: start a training round in the DiffSeg train widget.")
        return
    record, pixels = result[0], result[1]
    prefetched = result[2] if len(result) > 2 else None
    data, rgb = (pixels, bool(result[3])) if len(result) > 3 else to_display(pixels, record.axes)
    parts = image_parts(record, data, rgb)
    viewer = _unwrap(viewer)  # napari hands plugins proxies: a new one per access, so `is` fails on them
    ours = [layer for layer in viewer.layers if "diffseg_image" in layer.metadata]
    names = {name for _data, name in parts}
    if len(ours) == len(parts) and all(
        _reusable(lay, d, rgb) for lay, (d, _n) in zip(ours, parts, strict=True)
    ):
        layers = ours
        for layer, (part, _name) in zip(layers, parts, strict=True):
            set_layer_data(layer, part)
            layer.reset_contrast_limits_range()
            layer.reset_contrast_limits()
    else:
        # where the image belongs: under the proposal and uncertainty layers of the review (a layer added
        # now lands on top of them and would hide the proposal), at the old image layer's place
        below = [
            i for i, lay in enumerate(viewer.layers) if lay in ours or "diffseg_image_id" in lay.metadata
        ]
        if len(parts) == 1:
            layers = [viewer.add_image(data, name=record.name, rgb=rgb)]
        else:
            added = viewer.add_image(data, channel_axis=data.ndim - 3, name=[n for _d, n in parts], rgb=False)
            layers = list(added) if isinstance(added, list) else [added]
        if below:
            for k, layer in enumerate(layers):
                viewer.layers.move(viewer.layers.index(layer), min(below) + k)
    for k, layer in enumerate(layers):
        layer.metadata = {"diffseg_image": record, **({"diffseg_channel": k} if len(layers) > 1 else {})}
    for other in list(viewer.layers):
        if not any(other is lay for lay in layers) and (any(other is o for o in ours) or other.name in names):
            viewer.layers.remove(other)
    for layer, (_part, name) in zip(layers, parts, strict=True):
        layer.name = name
    session.set_image(record, prefetched)
    if "Z" in (record.axes or ""):
        go_to_plane(viewer, record.plane)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _edit_cell(rec: Image) -> str:
    """The last edit Dice, and in an instance project the objects added / removed / changed beside it
    (``0.912 · +1 −0 ~2 objects``)."""
    text = _cell(rec.last_edit_dice)
    if (
        rec.last_objects_added is None
        and rec.last_objects_removed is None
        and rec.last_objects_changed is None
    ):
        return text
    objects = f"+{rec.last_objects_added or 0} −{rec.last_objects_removed or 0} ~{rec.last_objects_changed or 0} objects"
    return f"{text} · {objects}" if text else objects


class ProjectWidget(QWidget):
    """Open or create a project (its local backend starts by itself), or connect to a backend by URL and
    token; import image layers or files; browse the images and open one for review."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.images: list[Image] = []
        self._listing = 0  # the latest image listing asked for (refresh)
        self.last_import: ImportReport | None = None
        self._pending_import: list[Path] = []  # images to import once the new project's backend is up
        self._before_import: list[Image] = []

        self.folder = QLineEdit()
        self.folder.setPlaceholderText("project folder (a new or empty folder creates a project)")
        self.browse_button = QPushButton("Browse…")
        self.browse_button.setToolTip("Choose a project folder, or an empty one to create a project in")
        self.start_button = QPushButton("Open project")
        self.start_button.setToolTip(
            "Open the project in this folder (or create one in a new or empty folder) and start a local "
            "backend for it on 127.0.0.1"
        )
        self.task = QComboBox()
        for label, kind in TASK_CHOICES:
            self.task.addItem(label, kind)
        self.task.setToolTip(
            "The task of a project created here (fixed once created).\n"
            "binary: one foreground class (0 = background).\n"
            "multiclass: named classes (tissue maps); give their names, background first.\n"
            "instances: each object (cell, nucleus, gland) its own label id, to count and measure them; "
            "optionally of several named classes (background,nucleus,mitosis)."
        )
        self.classes = QLineEdit()
        self.classes.setPlaceholderText(_CLASS_HINTS["multiclass"][0])
        self.classes.setToolTip(_CLASS_HINTS["multiclass"][1])
        self.classes.setEnabled(False)
        self.url = QLineEdit(DEFAULT_URL)
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("only for a remote backend")
        self.connect_button = QPushButton("Connect")
        self.connect_button.setToolTip("Connect to a running `diffseg serve` (for example on a GPU server)")
        self.status = QLabel("not connected")
        self.status.setWordWrap(True)
        self.import_layers_button = QPushButton("Import selected layers")
        self.import_layers_button.setToolTip(
            "Upload the selected Image layers (grey or RGB) into the project"
        )
        self.import_files_button = QPushButton("Import files…")
        self.import_files_button.setToolTip(
            "Upload image files (TIFF, PNG, JPEG, BMP, .npy) into the project"
        )
        self.axes = QComboBox()
        for label, letters in AXES_CHOICES:
            self.axes.addItem(label, letters)
        self.axes.setToolTip(
            "How 'Import files' reads the files' axes. auto: from the file (ImageJ / OME-TIFF metadata; a plain\n"
            "stack of 2-4 pages is taken as channels, more as a z-stack). CYX: the first axis holds channels;\n"
            "TYX: time points, one image each; ZYX: a z-stack (one 3D image, annotated plane by plane).\n"
            "'Import selected layers' takes a grey 3D layer as a z-stack (ZYX) unless CYX or TYX is chosen."
        )
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setToolTip("Double-click an image to open it")
        _header(self.table.verticalHeader()).setVisible(False)
        self.table.setMinimumHeight(170)  # about six rows, even when the three docks share the side
        self.refresh_button = QPushButton("Refresh")
        self.next_button = QPushButton("Next image")
        self.next_button.setToolTip("Open the next unreviewed image, picked as the box beside it says")
        self.next_order = QComboBox()
        self.next_order.addItem("most uncertain", "uncertainty")
        self.next_order.addItem("uncertainty-weighted draw", "power")
        self.next_order.setToolTip(
            "How 'Next image' picks among the unreviewed images.\n"
            "most uncertain: fixes the worst proposals first (often atypical images that take long to correct).\n"
            "uncertainty-weighted draw: a random pick, likelier the more uncertain the image is; mixes hard\n"
            "and typical images (see the README's human-in-the-loop benchmark)."
        )

        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder)
        folder_row.addWidget(self.browse_button)
        form = QFormLayout()
        form.addRow("Backend URL", self.url)
        form.addRow("Token", self.token)
        imports = QHBoxLayout()
        imports.addWidget(self.import_layers_button)
        imports.addWidget(self.import_files_button)
        imports.addWidget(self.axes)
        buttons = QHBoxLayout()
        buttons.addWidget(self.refresh_button)
        buttons.addWidget(self.next_button)
        buttons.addWidget(self.next_order)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<b>Local project</b>"))
        layout.addLayout(folder_row)
        task_row = QHBoxLayout()
        task_row.addWidget(QLabel("new project's task"))
        task_row.addWidget(self.task)
        layout.addLayout(task_row)
        layout.addWidget(self.classes)
        layout.addWidget(self.start_button)
        layout.addWidget(QLabel("<b>or a running backend</b>"))
        layout.addLayout(form)
        layout.addWidget(self.connect_button)
        layout.addWidget(self.status)
        layout.addLayout(imports)
        layout.addWidget(self.table)
        layout.addLayout(buttons)

        self.connect_button.clicked.connect(self._on_connect)
        self.browse_button.clicked.connect(self._on_browse)
        self.start_button.clicked.connect(self._on_open_project)
        self.task.currentIndexChanged.connect(self._on_task)
        self.import_layers_button.clicked.connect(self.import_selected_layers)
        self.import_files_button.clicked.connect(lambda: self.import_files())
        self.refresh_button.clicked.connect(self.refresh)
        self.next_button.clicked.connect(self.open_next)
        self.next_order.currentIndexChanged.connect(self._on_next_order)
        self.table.cellDoubleClicked.connect(self._on_row_activated)
        self.session.connected.connect(self._on_connected)
        self.session.images_changed.connect(self.refresh)
        self.destroyed.connect(self.session.stop_server)

    # ------------------------------------------------------------------------------ connection

    def connect_to(self, url: str, token: str | None = None) -> None:
        """Connect to a running backend (its health is checked off the Qt thread)."""
        from napari_diffseg.backend.client import DiffsegClient

        client = DiffsegClient(url, token=token or None, retries=1)
        self.status.setText(f"connecting to {url}…")
        run_in_thread(
            client.health,
            on_done=lambda _health: self.session.set_client(client),
            on_error=partial(self._on_connect_failed, client),
        )

    def _on_connect_failed(self, client: Any, exc: BaseException) -> None:
        client.close()
        self._failed(exc)

    def open_project(self, folder: str | os.PathLike[str]) -> None:
        """Open the project in ``folder`` and start its local backend; a new or empty folder is offered
        to become a project first (:func:`ask_create`)."""
        path = Path(folder).expanduser()
        if not str(folder).strip():
            show_warning("Choose a project folder first (Browse…).")
            return
        if (path / "project.db").is_file():
            self.start_local(path)
        elif (path.parent / f"{path.name}-diffseg" / "project.db").is_file():
            made = path.parent / f"{path.name}-diffseg"  # made from this folder before: open it
            show_info(f"{path} holds images; opening the project made of them before, {made}.")
            self.folder.setText(str(made))
            self.start_local(made)
        elif path.is_dir() and images_in(path):
            files = images_in(path)
            target = _free_sibling(path)
            if ask_create_from_images(self, path, target, len(files)):
                self._pending_import = files
                self.folder.setText(str(target))
                self.start_local(target, create=True)
        elif path.is_file() or (path.is_dir() and any(path.iterdir())):
            self._failed(
                BackendUnavailable(
                    0,
                    f"{path} is not a diffseg project and not empty: choose a project folder, or a new or "
                    "empty folder to create a project in.",
                )
            )
        elif ask_create(self, path):
            self.start_local(path, create=True)

    def set_task(self, task: str, classes: str = "") -> None:
        """Choose the task of the next project created here (``binary``, ``multiclass`` with ``classes``,
        the class names background first, or ``instances``, with ``classes`` for objects of several
        classes: ``background,nucleus,mitosis``)."""
        index = self.task.findData(task)
        if index < 0:
            raise ValueError(f"unknown task {task!r}; choose one of {[k for _l, k in TASK_CHOICES]}")
        self.task.setCurrentIndex(index)
        self.classes.setText(classes)

    def _on_task(self, _index: int) -> None:
        task = self.task.currentData()
        self.classes.setEnabled(task in CLASS_TASKS)
        placeholder, tip = _CLASS_HINTS.get(str(task), _CLASS_HINTS["multiclass"])
        self.classes.setPlaceholderText(placeholder)
        self.classes.setToolTip(tip)

    def start_local(self, folder: str | os.PathLike[str], create: bool = False) -> None:
        """Start ``diffseg serve FOLDER`` on a free loopback port and connect to it; with ``create`` the
        project is created first (in a worker thread, like the start), for the task chosen in the widget
        (:meth:`set_task`)."""
        path = Path(folder).expanduser()
        if not create and not (path / "project.db").is_file():
            self._failed(
                BackendUnavailable(
                    0,
                    f"{path} is not a diffseg project (no project.db): create one with 'Open project' on a "
                    "new or empty folder, or with `diffseg init`.",
                )
            )
            return
        task = str(self.task.currentData() or "binary")
        classes = self.classes.text().strip() or None
        if create and task == "multiclass" and not classes:
            self.status.setText("not created: name the classes first")
            show_warning(
                "A multiclass project needs its class names, background first (background,tumour,stroma): "
                "enter them under the task, then open the folder again."
            )
            return
        self.session.stop_server()
        verb = f"creating a {task} project and starting" if create else "starting"
        self.status.setText(f"{verb} a backend for {path}…")
        self.start_button.setEnabled(False)
        run_in_thread(
            _create_and_start,
            path,
            create,
            task,
            classes,
            on_done=self._on_local_started,
            on_error=self._failed,
            on_finish=lambda: self.start_button.setEnabled(True),
        )

    def _on_connect(self) -> None:
        self.connect_to(self.url.text().strip(), self.token.text().strip())

    def _on_browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Project folder (or an empty folder for a new one)")
        if folder:
            self.folder.setText(folder)
            self.open_project(folder)

    def _on_open_project(self) -> None:
        self.open_project(self.folder.text().strip())

    def _on_local_started(self, result: tuple[subprocess.Popen[bytes], str]) -> None:
        proc, url = result
        self.session.server = proc
        self.url.setText(url)
        self.connect_to(url)

    def _on_connected(self, client: Any) -> None:
        self.status.setText(f"connected to {client.base_url}")
        self.refresh()
        pending, self._pending_import = self._pending_import, []
        if pending:  # a folder of images made into a project: import them now
            self._upload([(p.stem, p) for p in pending])

    def _failed(self, exc: BaseException) -> None:
        self.status.setText("not connected" if self.session.client is None else self.status.text())
        notify_error(exc)

    def _require_client(self) -> Any:
        if self.session.client is None:
            self._failed(
                BackendUnavailable(0, "not connected to a backend: open a project or connect first.")
            )
        return self.session.client

    # ------------------------------------------------------------------------------ import

    def import_selected_layers(self) -> None:
        """Upload the selected Image layers under their layer names: a 2D layer as a grey or RGB image, a
        3D one as a z-stack (ZYX; CYX or TYX when chosen in the axes box, :func:`layer_axes`). Other layers
        are skipped with a notification saying why and what to do (4D and more, the channel layers napari
        made of one file with ``channel_axis``: import the file). The upload runs in a worker thread on
        copies of the data."""
        if self._require_client() is None:
            return
        items: list[tuple[str, Item]] = []
        skipped: list[str] = []
        channels = _fluorescence_channels(self.images)
        for layer in self.viewer.layers.selection:
            why = _not_importable(layer) or _channel_layer(layer, self.viewer.layers)
            data = None
            if not why:
                data = layer.data[0] if layer.multiscale else layer.data
                try:
                    axes = layer_axes(
                        tuple(data.shape), bool(layer.rgb), layer.name, self.axes.currentData(), channels
                    )
                except ValueError as exc:
                    why = str(exc)
            if why or data is None:
                skipped.append(f"{layer.name} ({why})")
                continue
            items.append((layer.name, LayerPixels(np.array(data, copy=True), axes)))
        if skipped:
            show_warning("Not imported: " + "; ".join(skipped) + ".")
        if not items:
            if not skipped:
                show_warning("Select one or more Image layers in the layer list, then import them.")
            return
        self._upload(items)

    def import_files(self, paths: Sequence[str | os.PathLike[str]] | None = None) -> None:
        """Upload image files (default: ask with a file dialog), each under its file name, read with the
        axes choice beside the button; a corrupt or unsupported file is reported and the others are still
        imported."""
        if self._require_client() is None:
            return
        if paths is None:
            paths, _filter = QFileDialog.getOpenFileNames(self, "Import images", "", FILE_FILTER)
        if not paths:
            return
        self._upload([(file_stem(p), Path(p)) for p in paths], self.axes.currentData())

    def _upload(self, items: Sequence[tuple[str, Item]], axes: str | None = None) -> None:
        self.status.setText(f"importing {len(items)} image(s)…")
        self._before_import = list(self.images)  # what the new images are compared with
        for button in (self.import_layers_button, self.import_files_button):
            button.setEnabled(False)
        run_in_thread(
            _upload_all,
            self.session.client,
            items,
            axes,
            on_done=self._on_imported,
            on_error=self._failed,
            on_finish=self._on_import_finished,
        )

    def _on_import_finished(self) -> None:
        for button in (self.import_layers_button, self.import_files_button):
            button.setEnabled(True)
        if self.session.client is not None:
            self.status.setText(f"connected to {self.session.client.base_url}")
        self.session.images_changed.emit()

    def _on_imported(self, report: ImportReport) -> None:
        self.last_import = report
        report.warnings = import_warnings(self._before_import, report.records)
        for warning in report.warnings:
            show_warning(f"Imported, but: {warning}")
        if report.added or report.known:
            known = f" ({len(report.known)} already in the project)" if report.known else ""
            show_info(f"Imported {len(report.added) + len(report.known)} image(s){known}.")
        if report.failed:
            show_warning(
                "Not imported: "
                + "; ".join(f"{name}: {why}" for name, why in report.failed)
                + ". The other images were imported."
            )

    # ------------------------------------------------------------------------------ images

    def refresh(self) -> None:
        """Reload the image table from the backend."""
        if self.session.client is None:
            return
        self._listing += 1
        # a bound method as the handler (not a partial): Qt drops it with the widget, should it close first
        run_in_thread(_images_listing, self.session.client, self._listing, on_done=self._on_listing)

    def _on_listing(self, result: tuple[int, list[Image]]) -> None:
        listing, images = result
        if listing == self._listing:  # an older listing that answers late would show stale states
            self._show_images(images)

    def _show_images(self, images: list[Image]) -> None:
        self.images = list(images)
        self.table.setRowCount(len(self.images))
        for row, rec in enumerate(self.images):
            cells = (
                rec.name,
                rec.state,
                _cell(rec.uncertainty),
                _edit_cell(rec),
                rec.split,
            )
            for col, text in enumerate(cells):
                self.table.setItem(row, col, QTableWidgetItem(str(text)))
        header = _header(self.table.horizontalHeader())
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)  # a long name is elided, not the rest
        for row, rec in enumerate(self.images):
            item = self.table.item(row, 0)
            if item is not None:
                item.setToolTip(rec.name)

    def open_next(self) -> None:
        """Open the next unreviewed image, picked as the order box says (unsaved edits are saved or
        discarded first)."""
        self.open_image(None)

    def _on_next_order(self, _index: int) -> None:
        self.session.next_strategy = str(self.next_order.currentData())

    def open_image(self, record: Image | None) -> None:
        """Open one image (``None``: the backend's next one) as an Image layer, after the annotate widget
        has dealt with unsaved edits of the image under review (it may ask; cancelling keeps them)."""
        if self._require_client() is None:
            return
        self.session.before_switch(partial(self._fetch_and_show, record))

    def _fetch_and_show(self, record: Image | None) -> None:
        client = self.session.client
        if client is None:
            return
        run_in_thread(
            fetch_image,
            client,
            record,
            self.session.companion,
            (self.session.model_id, self.session.model_known),
            self.session.next_strategy,
            on_done=self._add_image,
        )

    def _on_row_activated(self, row: int, _col: int) -> None:
        if 0 <= row < len(self.images):
            self.open_image(self.images[row])

    def _add_image(self, result: tuple[Any, ...] | None) -> None:
        show_image(self.viewer, self.session, result)


def _images_listing(client: Any, listing: int) -> tuple[int, list[Image]]:
    """Worker: the project's images, with the number of the refresh that asked for them."""
    return listing, client.images()


def _not_importable(layer: Any) -> str:
    """Why a layer cannot be imported, whatever its shape ("" when it can; the shape: :func:`layer_axes`)."""
    from napari.layers import Image

    if not isinstance(layer, Image):
        return f"a {layer.__class__.__name__} layer, not an image"  # __class__: napari may pass a proxy
    if "diffseg_image" in layer.metadata or "diffseg_image_id" in layer.metadata:
        return "it comes from the project"
    return ""


def _channel_layer(layer: Any, layers: Sequence[Any]) -> str:
    """Why ``layer`` is not imported on its own when it is one of several grey layers of the same shape
    napari opened from one file (the file's channels, split with ``channel_axis``; napari-diffseg's reader
    says so in the layer's metadata, ``axes`` with a C); "" otherwise."""
    from napari.layers import Image

    path = getattr(getattr(layer, "source", None), "path", None)
    if not path or layer.rgb:
        return ""
    read_axes = layer.metadata.get("axes")  # napari-diffseg's reader: the file's axes, as read
    if isinstance(read_axes, str) and "C" not in read_axes:
        return ""  # one series or image of the file, not one of its channels
    siblings = [
        other
        for other in layers
        if other is not layer
        and isinstance(other, Image)
        and not other.rgb
        and getattr(other.source, "path", None) == path
        and other.level_shapes[0].tolist() == layer.level_shapes[0].tolist()
    ]
    if not siblings:
        return ""
    return (
        f"one of {len(siblings) + 1} layers napari opened from {Path(path).name}, its channels split into "
        "layers (channel_axis): a layer holds one channel of the image. Import the file itself with 'Import "
        "files' (axes read from the file, or chosen beside the button; `diffseg import FILE --axes CYX` or "
        "CZYX) so that its channels stay one image"
    )


def _fluorescence_channels(images: Sequence[Image]) -> int | None:
    """The channel count of the project's fluorescence images (axes with C before Y and X), None when it
    has none (grey or RGB images only, or no images)."""
    counts = [
        im.channels for im in images if im.channels > 1 and "C" in im.axes and not im.axes.endswith("C")
    ]
    return max(counts) if counts else None


def _free_sibling(folder: Path) -> Path:
    """``FOLDER-diffseg`` beside ``folder`` (``-2``, ``-3``... when that exists and is not empty)."""
    base = folder.parent / f"{folder.name}-diffseg"
    candidate, n = base, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = folder.parent / f"{base.name}-{n}"
    return candidate
