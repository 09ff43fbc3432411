"""The annotate dock widget: the teacher's proposal as an editable Labels layer, its uncertainty as an
Image layer; save the correction (Shift-S) as a new annotation version, revert to the proposal, or reject
the image. Unsaved edits are never dropped silently: before another image or proposal replaces them the
annotator chooses Save, Discard or Cancel (:func:`ask_unsaved`).

Why one module of ~1,400 lines: one dock widget whose handlers guard the same editing state (unsaved edits,
the image and proposal on show, stale saves, the planes of a stack, the task's labels, the watershed the
objects were re-split with); everything that is not Qt (loading an image with its proposal, the uncertainty
summary, next-image choice, which planes a save annotates) lives in ``review.py`` and
``base/uncertainty.py``, and the object classes' and the Split objects panel's own parts in ``_classes.py``
and ``_objects.py``. The next split would move the task-specific layer set-up (instances, classes) into its
own helper module.

Proposals come by themselves: when an image is opened, the proposal of the **active model** is shown; when
that model has none for the image yet, a ``propose`` job is requested for it, followed in a worker thread
(the status line says "proposing…") and its result shown when it is done. The cached proposal is fetched
together with the image's pixels (the session's ``companion``, with the active model id the session
caches), so the image and its proposal appear at once.

**No model yet**: the image opens on an empty mask to paint from scratch (the "… annotation" layer,
:func:`~napari_diffseg.review.blank_canvas`); saved, it is the image's first annotation, so a first
co-training round can start from masks drawn here. Left untouched, it gives way to the proposal as soon as
a model is active.

An image that already has an annotation (state ``corrected`` or ``ground_truth``) opens with its **latest
annotation version** as the editable Labels layer (named "… annotation"; no proposal is requested). Saving
it sends a new version that replaces that one (``replaces=<latest>``, no proposal id), so a stale save is
still refused; "Load / request proposal" shows the active model's proposal instead.

**The uncertainty layer** is on a fixed scale (0 to 1 bit, :mod:`napari_diffseg.base.uncertainty`), never
stretched per image; only pixels at or above the threshold (the box under the legend, 0.5 bit by default)
are coloured, the rest is transparent, so the image and the proposal stay visible. The line under it says
how much of the image is coloured, or that the map is flat (a model not trained enough for its
uncertainty to mean anything). The proposal is drawn in one colour (yellow: the teacher's proposal, as
in the report) whatever the image's colours.

The Labels and uncertainty layers are created once and reused for every image (new data, name and
contrast; the Labels undo history is cleared so Ctrl-Z cannot bring back another image's mask): removing
layers and adding new ones is several times slower, and crashed napari with Mesa's software OpenGL.

**A z-stack** is shown as 3D layers: the image ``(Z, H, W)`` (one layer per fluorescence channel), its
proposal as a ``(Z, H, W)`` Labels layer and its uncertainty as a ``(Z, H, W)`` Image layer, so the
annotator corrects it slice by slice with napari's own tools and the Z slider; the slider opens at the
stack's most uncertain plane (``Image.plane``). A save sends the whole ``(Z, H, W)`` mask and names the
planes it annotates (:func:`~napari_diffseg.review.annotated_planes`): the planes edited, the plane on
show when saving (a proposal plane accepted as it is: look at it, Shift-S), and the planes of the version
it replaces when that is what the layer holds. The other planes still hold the untouched proposal and
stay unlabelled for training. A switch between a 2D image and a stack reuses the same layers (napari
changes a layer's dimensions with its data).

**The project's task** decides what the Labels layer holds (:class:`~napari_diffseg.review.ShownTask`, asked
once per connection): a binary project's proposal in one colour as above; a **multiclass** project's class
values in the project's class colours, with a line naming each value's class; an **instance** project's
proposal as objects (``part=instances``): each object its own id and colour (napari's own label colours),
corrected in napari's natural way: paint a new object with a fresh id (the layer's selected label is one
when a proposal opens and after each save; *New object* or napari's M key picks another), erase, fill,
merge (fill one object with another's id) or split (paint part of one with a fresh id). A save sends the
ids as they are; the backend turns them into the training target, and the saved line gives the edit cost
in objects (added, removed, changed) beside the pixels. *Split objects…* opens the watershed's parameters
(:mod:`._objects`): *Re-split* has the backend make the whole proposal's objects again with them (refused
while the layer holds unsaved edits), *Model's* brings back the proposing model's own; a save then sends
the same parameters, so the cost in objects counts from what was on show.

**Objects of several classes** (an instance project created with ``background,nucleus,mitosis``): the
objects are drawn as outlines and a second Labels layer, "<image> classes", below them fills each object
with its class in the project's class colours (the proposal's ``classes`` part, or the loaded annotation's
``{object id: class}``). The *Class* box lists the object classes: choosing one selects it in the classes
layer with the paint brush, and a dab of it on an object gives the whole object that class. A new object
takes the *Class* box's class as it is painted; at save, any object still without a class pixel under it
gets that class too (the widget says which), so nothing is sent unclassed. Save sends the ids and the class
map (``classes=``); the backend gives each object the majority class under it (:mod:`._classes`).

What is fetched, and the propose job followed, is the Qt-free :mod:`napari_diffseg.review`: this module
calls it in worker threads and displays what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_diffseg._widgets._classes import (
    classed,
    fill_unclassed,
    load_with_classes,
    object_classes,
    proposal_with_classes,
    sync_classes,
)
from napari_diffseg._widgets._objects import ObjectsPanel, resplit_proposal, watershed_text
from napari_diffseg._widgets._session import notify_error, run_in_thread, session_for, set_layer_data
from napari_diffseg._widgets.project import go_to_plane, show_image
from napari_diffseg.backend.errors import BackendError, StaleAnnotation
from napari_diffseg.base.contracts import Image, Job, SavedAnnotation
from napari_diffseg.base.uncertainty import DEFAULT_THRESHOLD, LEGEND, SCALE, probability_band, summarize_map
from napari_diffseg.core.instances import class_map
from napari_diffseg.review import (
    ShownTask,
    annotated_planes,
    blank_canvas,
    object_edits_text,
    prepared,
    reject_and_next,
    stack_planes,
    uncertainty_limits,
)

__all__ = [
    "PROPOSAL_COLOR",
    "REJECT_HELP",
    "SAVE_KEY",
    "AnnotateWidget",
    "ask_unsaved",
    "class_colormap",
    "fresh_label",
    "label_colormap",
    "task_colormap",
    "task_legend",
    "uncertainty_colormap",
    "uncertainty_limits",
]

CLOSED_LABELS = "(no proposal)"  # the names of the hidden layers kept for the next image
CLOSED_UNCERTAINTY = "(no uncertainty)"
CLOSED_CLASSES = "(no classes)"

SAVE_KEY = "Shift-S"
REJECT_HELP = (
    "Reject: the proposal is useless for this image. The image becomes 'excluded': no training job uses "
    "it and 'Next image' skips it; nothing is deleted. Then the next image opens. 'Include again' undoes "
    "it (so does saving a correction for the image)."
)


PROPOSAL_COLOR = "#ffd700"  # label 1: the teacher's proposal is yellow everywhere (widget and report)
_OTHER_LABELS = ("#00e5ff", "#ff4fd8", "#7cfc00", "#ff8c00", "#b388ff", "#ffffff")  # labels 2, 3, ...


def label_colormap() -> Any:
    """The Labels layer's colours: 0 transparent, 1 yellow, further classes fixed bright colours (never
    napari's random dark red, which vanished on red fundus photographs)."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[int | None, str] = {None: "#ff8c00", 0: "transparent", 1: PROPOSAL_COLOR}
    for i, color in enumerate(_OTHER_LABELS, start=2):
        colors[i] = color
    return DirectLabelColormap(color_dict=colors)


def task_colormap(task: ShownTask) -> Any:
    """The Labels layer's colours for a project's task: an instance project's objects in napari's own
    label colours (each id its own, cycling); a multiclass project's classes in the project's colours (0
    transparent); a binary project's :func:`label_colormap`."""
    if task.kind == "instances":
        from napari.utils.colormaps import label_colormap as napari_label_colormap

        return napari_label_colormap(49)
    if task.kind == "multiclass" and task.classes:
        from napari.utils.colormaps import DirectLabelColormap

        colors: dict[int | None, str] = {None: "#ff8c00", 0: "transparent"}
        for value, _name, colour in task.classes:
            if value > 0:
                colors[value] = colour
        return DirectLabelColormap(color_dict=colors)
    return label_colormap()


def class_colormap(task: ShownTask) -> Any:
    """The classes layer's colours (objects of several classes): each object class in the project's colour,
    0 (no class) transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[int | None, str] = {None: "#ff8c00", 0: "transparent"}
    for value, _name, colour in object_classes(task):
        colors[value] = colour
    return DirectLabelColormap(color_dict=colors)


def task_legend(task: ShownTask) -> str:
    """The line under the status saying what the Labels layer's values are ("" for a binary project)."""
    if classed(task):
        names = " · ".join(
            f"<span style='color:{colour}'>■</span> {value} {name}"
            for value, name, colour in object_classes(task)
        )
        return (
            "<b>Objects</b> (outlines): one label id each; <i>New object</i> or M paints a new one, 0 erases. "
            f"<b>Classes</b> (fill): {names}. Choose one in <i>Class</i> and dab it on an object: the whole "
            "object takes it, and so do new objects. Save sends the ids and the classes."
        )
    if task.kind == "multiclass":
        names = " · ".join(
            f"<span style='color:{colour}'>■</span> {value} {name}"
            for value, name, colour in task.classes
            if value > 0
        )
        return f"<b>Classes</b> (label value → class; 0 erases): {names}"
    if task.kind == "instances":
        return (
            "<b>Objects</b>: one label id and colour each. A fresh id paints a new object (<i>New object</i> "
            "or M); label 0 erases; merge: fill one object with another's id; split: paint part of one with a "
            "fresh id. Save sends the ids as painted."
        )
    return ""


def fresh_label(data: Any) -> int:
    """An id no object of ``data`` uses: the largest plus one (1 for an empty layer)."""
    values = np.asarray(data)
    return int(values.max()) + 1 if values.size else 1


def uncertainty_colormap(threshold: float = DEFAULT_THRESHOLD) -> Any:
    """Magma from ``threshold`` to 1 bit, transparent below it (for contrast limits :data:`SCALE`).

    The colours run from magma's violet (not its black, which would hide the image) to its orange-pink
    (not its pale yellow, which is the proposal's colour); alpha rises from 0.55 to 0.9 so the most
    uncertain regions stand out most."""
    from napari.utils.colormaps import Colormap
    from napari.utils.colormaps.colormap_utils import ensure_colormap

    t = float(min(max(threshold, 0.0), 0.999))
    magma = ensure_colormap("magma")
    stops = np.linspace(0.0, 1.0, 9)
    values = magma.map(0.3 + 0.5 * stops)  # violet → red → orange-pink
    values[:, 3] = 0.55 + 0.35 * stops
    controls = [0.0, t, *(t + (1.0 - t) * stops)]
    colors = np.vstack([[0, 0, 0, 0], [0, 0, 0, 0], values])
    if t <= 0.0:
        controls, colors = controls[2:], colors[2:]
    controls[-1] = 1.0
    return Colormap(
        colors=colors, controls=controls, name=f"uncertainty ≥ {t:.2f} bit", interpolation="linear"
    )


def ask_unsaved(parent: QWidget | None, name: str) -> str:
    """Ask what to do with unsaved edits of the layer ``name``: ``"save"``, ``"discard"`` or ``"cancel"``.

    A module-level function so tests (and scripts) can replace the dialog.
    """
    buttons = QMessageBox.StandardButton
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle("Unsaved edits")
    box.setText(f"{name} has edits that are not saved.")
    box.setInformativeText("Save them as a new annotation version, discard them, or stay on this image?")
    box.setStandardButtons(buttons.Save | buttons.Discard | buttons.Cancel)
    box.setDefaultButton(buttons.Save)
    box.setEscapeButton(buttons.Cancel)
    box.exec()
    clicked = box.standardButton(box.clickedButton())
    return {buttons.Save: "save", buttons.Discard: "discard"}.get(clicked, "cancel")


class AnnotateWidget(QWidget):
    """Show the proposal of the image under review, edit it with napari's label tools, then save it
    (Shift-S), revert to the proposal, or reject the image.

    Opening an image (Next image, a table double-click, Reject) shows its proposal from the active model,
    requesting one first when that model has none for it (see :func:`proposal_or_request`); "Load /
    request proposal" does the same on demand. Only the latest request is shown, and only while its image
    is still the one under review.

    Attributes:
        model_id: The model whose proposal is shown (None when none is).
        propose_options: Extra :meth:`~napari_diffseg.backend.client.DiffsegClient.request_proposals`
            arguments for the propose jobs this widget requests (e.g. ``{"preset": "tiny"}``); default: the
            backend's defaults.

    Unsaved edits: the Labels layer is compared with what was last loaded or saved whenever another image
    or proposal would replace it (Next image, a table double-click, Reject, Load proposal); if it differs,
    :func:`ask_unsaved` decides: save (then switch), discard (then switch) or cancel (stay, edits kept).

    Reject (see :data:`REJECT_HELP`): the image is marked ``excluded`` in the backend, so it is not used
    for training and "Next image" skips it; the next image opens. "Include again" sets it back.
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.labels: Any = None  # the editable Labels layer
        self.uncertainty: Any = None  # the uncertainty Image layer
        self.proposal_mask: np.ndarray | None = None
        self.image_id: str | None = None
        self.proposal_id: int | None = None
        self.model_id: str | None = None
        self.base_version: int | None = None
        self.propose_options: dict[str, Any] = {}
        self._loading: str | None = None  # the image whose proposal is being fetched (or proposed)
        self._load_token = 0  # only the latest fetch is shown
        self._propose_jobs: dict[str, int] = {}  # image id → the propose job requested for it
        self._alive = _Alive()  # False once Qt has deleted the widget (a fetch may still be under way)
        self.last_rejected: Image | None = None
        self._clean: np.ndarray | None = None  # the Labels data as last loaded or saved
        self._saving: np.ndarray | None = None  # the data of the save in flight
        self._after_save: list[Callable[[], None]] = []
        self._waiting_for_model = False  # no proposal was shown for want of a model: show one when it comes
        self._blank = False  # the Labels layer holds an empty mask to paint (no model yet), not a proposal
        self._shown_unc: np.ndarray | None = None
        self._annotated: list[int] = []  # a z-stack: the planes the version in the Labels layer annotates
        self.task = ShownTask()  # the project's task as the Labels layer shows it
        self._layer_task: ShownTask | None = None  # the task whose colours the Labels layer has
        # objects of several classes: the class map layer beside the objects, and what it held
        self.class_layer: Any = None
        self.proposal_classes: np.ndarray | None = None  # the class map as loaded (Revert)
        self._classes_clean: np.ndarray | None = None  # the class map as last loaded or saved
        self._saving_classes: np.ndarray | None = None
        self._class_layer_task: ShownTask | None = None
        self._snap: tuple[np.ndarray, np.ndarray] | None = None  # both layers after the last class sync
        self._syncing = False
        self._sync_pending = False
        # an instance project: the watershed parameters the shown objects were re-split with (None: the
        # model's own), sent with the correction; and those that made them (for the Split objects panel)
        self._watershed: dict[str, Any] | None = None
        self._watershed_used: dict[str, Any] | None = None

        self.current = QLabel("no image: open one in the DiffSeg project widget (Next image)")
        self.current.setWordWrap(True)
        self.current.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.current.setMinimumHeight(2 * self.current.fontMetrics().lineSpacing() + 4)  # two lines
        low, high = probability_band(DEFAULT_THRESHOLD)
        self.classes_legend = QLabel("")
        self.classes_legend.setWordWrap(True)
        self.classes_legend.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.classes_legend.setMinimumHeight(3 * self.classes_legend.fontMetrics().lineSpacing() + 2)
        self.classes_legend.setVisible(False)
        self.new_object_button = QPushButton("New object (fresh label id)")
        self.new_object_button.setToolTip(
            "Select an id no object uses yet and the paint brush: the next strokes paint a new object"
        )
        self.new_object_button.setVisible(False)
        self.objects_button = QPushButton("Split objects…")
        self.objects_button.setCheckable(True)
        self.objects_button.setToolTip(
            "Touching objects joined, or one object in pieces? Make the whole proposal's objects again with "
            "other watershed parameters before correcting by hand"
        )
        self.objects_button.setVisible(False)
        self.objects_panel = ObjectsPanel(self.resplit)
        self.objects_panel.setVisible(False)
        self.class_box = QComboBox()
        self.class_box.setToolTip(
            "Objects of several classes: the class to paint. Choosing one selects it in the '… classes' layer "
            "with the paint brush; a dab on an object gives the whole object that class. A new object takes "
            "this class as it is painted, and at save any object with no class under it gets this class too "
            "(the saved line names them): your choice here, never a guess."
        )
        self.class_row = QWidget()
        class_row = QHBoxLayout(self.class_row)
        class_row.setContentsMargins(0, 0, 0, 0)
        class_row.addWidget(QLabel("Class"))
        class_row.addWidget(self.class_box, 1)
        self.class_row.setVisible(False)
        self.legend = QLabel(f"<b>Uncertainty</b> (0–1 bit): {LEGEND}")
        self.legend.setWordWrap(True)
        self.legend.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.legend.setMinimumHeight(3 * self.legend.fontMetrics().lineSpacing() + 2)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 0.95)
        self.threshold.setSingleStep(0.05)
        self.threshold.setDecimals(2)
        self.threshold.setSuffix(" bit")
        self.threshold.setValue(DEFAULT_THRESHOLD)
        self.threshold.setToolTip(
            "Pixels at or above this uncertainty are coloured; the rest is transparent. "
            f"{DEFAULT_THRESHOLD:g} bit: the teacher's mean foreground probability lies between "
            f"{low:.2f} and {high:.2f}; 1 bit: its samples split 50/50."
        )
        self.unc_summary = QLabel("")
        self.unc_summary.setWordWrap(True)
        self.unc_summary.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.unc_summary.setMinimumHeight(4 * self.unc_summary.fontMetrics().lineSpacing() + 2)
        self.load_button = QPushButton("Load / request proposal")
        self.load_button.setToolTip(
            "Show the active model's proposal for this image again; when it has none yet, ask the backend "
            "to propose one (it opens by itself when an image is opened)"
        )
        self.save_button = QPushButton(f"Save correction ({SAVE_KEY})")
        self.save_button.setToolTip("Save the Labels layer as a new annotation version of this image")
        self.revert_button = QPushButton("Revert to proposal")
        self.reject_button = QPushButton("Reject")
        self.reject_button.setToolTip(REJECT_HELP)
        self.include_button = QPushButton("Include again")
        self.include_button.setToolTip(
            "Undo Reject: the image is used for training and offered by 'Next image' again"
        )
        self.include_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.revert_button)
        review = QHBoxLayout()
        review.addWidget(self.reject_button)
        review.addWidget(self.include_button)
        threshold_row = QHBoxLayout()
        threshold_row.addWidget(QLabel("colour uncertainty from"))
        threshold_row.addWidget(self.threshold)
        threshold_row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.current)
        layout.addWidget(self.classes_legend)
        objects_row = QHBoxLayout()
        objects_row.addWidget(self.new_object_button, 1)
        objects_row.addWidget(self.objects_button)
        layout.addLayout(objects_row)
        layout.addWidget(self.objects_panel)
        layout.addWidget(self.class_row)
        layout.addWidget(self.load_button)
        layout.addLayout(buttons)
        layout.addLayout(review)
        layout.addWidget(self.legend)
        layout.addLayout(threshold_row)
        layout.addWidget(self.unc_summary)
        layout.addStretch(1)

        self.load_button.clicked.connect(self.load_proposal)
        self.new_object_button.clicked.connect(self.new_object)
        self.objects_button.toggled.connect(self._on_objects_toggled)
        self.class_box.activated.connect(self._on_class_activated)
        self.save_button.clicked.connect(self.save)
        self.revert_button.clicked.connect(self.revert)
        self.reject_button.clicked.connect(self.reject)
        self.include_button.clicked.connect(self.include_again)
        self.threshold.valueChanged.connect(self._on_threshold)
        self.session.image_opened.connect(self._on_image_opened)
        self.session.model_changed.connect(self._on_model_changed)
        self.session.switch_guard = self.confirm_switch
        # the proposal (and its class map) is fetched with the image's pixels
        self.session.companion = load_with_classes
        self.destroyed.connect(partial(_drop_guard, self.session))
        self.destroyed.connect(partial(_mark_deleted, self._alive))
        self.viewer.bind_key(SAVE_KEY, self._on_save_key, overwrite=True)
        if self.session.image is not None:
            self._on_image_opened(self.session.image)

    def _on_image_opened(self, record: Image) -> None:
        prefetched = self.session.prefetched
        self.session.prefetched = None
        if self.labels is not None and record.id != self.image_id:
            if self.has_unsaved_edits():  # only reachable around the guard: keep the edits
                show_warning(
                    f"The edits in layer {self.labels.name!r} are not saved; they stay in that layer: save "
                    "them (they go to their own image) or revert them."
                )
            else:
                self._close_proposal()
                self._fit_closed_layers(record)
        self.include_button.setEnabled(record.state == "excluded" or self.last_rejected is not None)
        self._waiting_for_model = False
        self.current.setText(f"{record.name} ({record.state}): loading…")
        if self.session.client is None or self.has_unsaved_edits():
            return
        self._load_token += 1  # whatever was being fetched for the previous image is not shown
        self._loading = None
        if prefetched is not None and prefetched[0] == record.id:
            self._on_loaded(self._load_token, prefetched[1])
        else:  # opened without the companion fetch (e.g. this widget docked later): fetch it now
            token = self._load_token
            self._loading = record.id
            run_in_thread(
                load_with_classes,
                self.session.client,
                record,
                self.session.model_id,
                self.session.model_known,
                on_done=partial(self._on_loaded, token),
                on_error=partial(self._on_loaded, token),
            )

    def _on_loaded(self, token: int, result: Any) -> None:
        """Main thread: what :func:`load_for_image` fetched for the image just opened (or the exception
        it raised): shown, or for a missing proposal (or a failed fetch) the full load/request path."""
        if token != self._load_token or not self._alive.value:
            return
        self._loading = None
        image = self.session.image
        if image is None:
            return
        if isinstance(result, dict) and "active_model" in result:
            self.session.set_model_id(result["active_model"])
        if isinstance(result, BaseException) or result.get("kind") == "missing":
            # the full path: it checks that the cached model is still the active one, then proposes
            self._request_proposal(image.id, explicit=False)
            return
        self._show_loaded(result)

    def _on_save_key(self, _viewer: Any) -> None:
        self.save()

    def _on_model_changed(self, model_id: str | None) -> None:
        """A model became active: if the image under review showed nothing for want of one (or the
        proposal request failed that way), show its proposal now (no click needed)."""
        image = self.session.image
        if model_id is None or image is None or not self._waiting_for_model or not self._alive.value:
            return
        if self.has_unsaved_edits() or (self.image_id is not None and not self._blank):
            return  # painted on the empty mask: the strokes stay until saved or reverted
        self._waiting_for_model = False
        self._request_proposal(image.id, explicit=False)

    # ------------------------------------------------------------------------------ unsaved edits

    def has_unsaved_edits(self) -> bool:
        """Whether the Labels layer differs from what was last loaded or saved (one array comparison)."""
        if (
            self.labels is None
            or self._clean is None
            or self.image_id is None
            or self.labels not in self.viewer.layers
        ):
            return False
        return not np.array_equal(np.asarray(self.labels.data), self._clean) or self._classes_edited()

    def _class_data(self) -> np.ndarray | None:
        """The classes layer's data in a project of several object classes (None elsewhere)."""
        layer = self.class_layer
        if not classed(self.task) or layer is None or layer not in self.viewer.layers:
            return None
        return np.asarray(layer.data)

    def _classes_edited(self) -> bool:
        data = self._class_data()
        return (
            data is not None
            and self._classes_clean is not None
            and not np.array_equal(data, self._classes_clean)
        )

    def confirm_switch(self, proceed: Callable[[], None]) -> None:
        """The session's switch guard: call ``proceed`` now when there is nothing unsaved, after the save
        when the annotator chooses Save (not at all if it fails), after dropping the edits on Discard, and
        never on Cancel."""
        if self.labels is None or self.image_id is None or self.labels not in self.viewer.layers:
            proceed()
            return
        data = np.asarray(self.labels.data)
        classes = self._class_data()
        if (
            self._saving is not None
            and np.array_equal(data, self._saving)
            and (
                classes is None
                or self._saving_classes is None
                or np.array_equal(classes, self._saving_classes)
            )
        ):
            self._after_save.append(proceed)  # these edits are being saved: switch when that is done
            return
        if self._clean is not None and np.array_equal(data, self._clean) and not self._classes_edited():
            proceed()
            return
        answer = ask_unsaved(self, self.labels.name)
        if answer == "save":
            self._save(then=proceed)
        elif answer == "discard":
            self._close_proposal()
            proceed()
        else:
            show_info(f"Stayed on {self.labels.name}: your edits are still there.")

    def _close_proposal(self) -> None:
        """Forget the shown proposal; its layers are hidden, and reused (new data) for the next one.

        Layers are not removed: removing a Labels and an Image layer and adding new ones crashes napari
        at the next paint with some OpenGL drivers, and swapping data is several times faster."""
        for layer, name in (
            (self.labels, CLOSED_LABELS),
            (self.class_layer, CLOSED_CLASSES),
            (self.uncertainty, CLOSED_UNCERTAINTY),
        ):
            if layer is not None and layer in self.viewer.layers:
                layer.visible = False
                layer.name = name
                if layer is not self.uncertainty:
                    _clear_history(layer)  # Ctrl-Z must not bring back what was dropped
        self.proposal_mask = self._clean = None
        self.proposal_classes = self._classes_clean = None
        self._snap = None
        self.image_id = self.proposal_id = self.base_version = self.model_id = None
        self._blank = False
        self._shown_unc = None
        self._annotated = []
        self.unc_summary.setText("")

    def _fit_closed_layers(self, record: Image) -> None:
        """Give the hidden layers kept for reuse empty data of the new image's dimensions when theirs
        differ (a stack's hidden 3D layers would keep a Z slider on a 2D image, and the reverse)."""
        planes = stack_planes(record)
        shape: tuple[int, ...] = (int(record.height), int(record.width))
        if planes is not None:
            shape = (planes, *shape)
        for layer, dtype in (
            (self.labels, np.int32),
            (self.class_layer, np.int32),
            (self.uncertainty, np.float32),
        ):
            if layer is None or layer not in self.viewer.layers or layer.visible:
                continue
            if np.ndim(layer.data) != len(shape) and not getattr(layer, "multiscale", False):
                set_layer_data(layer, np.zeros(shape, dtype))
                if layer is not self.uncertainty:
                    _clear_history(layer)

    def _plane_on_show(self) -> int | None:
        """The plane of the ``(Z, H, W)`` Labels layer the Z slider shows, or None when Z is displayed (the
        3D view) or there is no 3D Labels layer."""
        labels = self.labels
        if labels is None or labels.ndim != 3:
            return None
        dims = self.viewer.dims
        axis = dims.ndim - labels.ndim  # napari lines up a layer's dimensions with the viewer's last ones
        if axis < 0 or axis in dims.displayed:
            return None
        plane = (float(dims.point[axis]) - float(labels.translate[0])) / float(labels.scale[0])
        return round(plane)

    # ------------------------------------------------------------------------------ load / revert

    def load_proposal(self) -> None:
        """Fetch the active model's proposal of the current image (requesting one when there is none) and
        show it (Labels) with its uncertainty (Image); unsaved edits are dealt with first. This also
        replaces an annotation shown for a corrected image by the proposal (saving then replaces the
        image's latest version, as before)."""
        image = self.session.image
        if self.session.client is None or image is None:
            show_warning("Open an image in the DiffSeg project widget first (connect, then 'Next image').")
            return
        self.session.before_switch(partial(self._request_proposal, image.id))

    def _request_proposal(self, image_id: str, explicit: bool = True) -> None:
        """Fetch (or have proposed) the proposal of ``image_id`` in a worker; a fetch of the same image
        already under way is not started twice. ``explicit``: asked for with the button (a missing model
        is then a notification, not only a status line)."""
        client = self.session.client
        if client is None or self._loading == image_id:
            return
        self._load_token += 1
        token = self._load_token
        self._loading = image_id
        self.current.setText(f"{self._image_name(image_id)}: loading the proposal…")
        run_in_thread(
            proposal_with_classes,
            client,
            image_id,
            dict(self.propose_options),
            self._propose_jobs.get(image_id),
            self.session.model_id,
            self.session.model_known and not explicit,  # the button asks which model is active
            on_yield=partial(self._on_proposing, token, image_id, client),
            on_done=partial(self._on_proposal_fetched, token),
            on_error=partial(self._on_proposal_failed, token, explicit),
        )

    def _image_name(self, image_id: str) -> str:
        image = self.session.image
        return image.name if image is not None and image.id == image_id else image_id

    def _on_proposing(self, token: int, image_id: str, client: Any, item: dict[str, Any]) -> None:
        if client is self.session.client:
            self.session.set_model_id(item["model_id"])
        job: Job | None = item.get("job")
        if job is None:
            return
        self._propose_jobs[image_id] = job.id
        if token == self._load_token and self._alive.value:
            self.current.setText(
                f"{self._image_name(image_id)}: no proposal from model {item['model_id']} yet: proposing… "
                f"(job {job.id}, {job.state})"
            )

    def _on_proposal_fetched(self, token: int, result: dict[str, Any]) -> None:
        self._propose_jobs.pop(str(result["image_id"]), None)
        if token != self._load_token or not self._alive.value:
            return  # a later request replaced this one, or the widget was closed
        self._loading = None
        self._show_loaded(result)

    def _on_proposal_failed(self, token: int, explicit: bool, exc: BaseException) -> None:
        if token != self._load_token or not self._alive.value:
            return
        image_id, self._loading = self._loading, None
        if image_id is not None:
            self._propose_jobs.pop(image_id, None)
        no_model = isinstance(exc, BackendError) and (
            exc.code == "no_model" or (exc.code == "not_ready" and self.session.model_id is None)
        )
        message = exc.message if isinstance(exc, BackendError) else str(exc)
        name = self._image_name(image_id) if image_id is not None else "this image"
        if no_model:
            self._waiting_for_model = True
            self.current.setText(
                f"{name}: no proposal shown: the project has no model yet. Run 'pretrain' in the DiffSeg "
                "Train widget (a label-free first model to correct) or, with images imported with their "
                "masks, 'cotrain'; the proposal then opens here by itself."
            )
            image = self.session.image
            client = self.session.client
            if (
                image is not None
                and image.id == image_id
                and client is not None
                and not self.has_unsaved_edits()
            ):
                run_in_thread(  # an empty mask to paint from scratch meanwhile
                    blank_canvas,
                    client,
                    image,
                    on_done=partial(self._on_blank, token),
                    on_error=lambda _e: None,
                )
        else:
            self.current.setText(f"{name}: no proposal shown: {message}")
        self.current.setToolTip(message)
        if explicit or not no_model:
            notify_error(exc)

    def _on_blank(self, token: int, result: dict[str, Any]) -> None:
        """Main thread: the empty mask of an image the project has no model for (unless another image or
        proposal was asked for meanwhile)."""
        if token != self._load_token or not self._alive.value or not self._waiting_for_model:
            return
        self._show_loaded(result)

    def _show_proposal(self, result: dict[str, Any]) -> None:
        """Show a fetched proposal (``{"proposal", "mask", "uncertainty", "base_version"}``)."""
        result = dict(result)
        result.setdefault("kind", "proposal")
        result.setdefault("image_id", result["proposal"].image_id)
        result.setdefault("model_id", result["proposal"].model_id)
        if "edit" not in result:
            result = prepared(result)
        self._show_loaded(result)

    def _show_loaded(self, result: dict[str, Any]) -> None:
        """Show what :func:`load_for_image` or :func:`proposal_or_request` fetched: the mask in the
        editable Labels layer, the uncertainty in the Image layer (both reused when they exist)."""
        image_id = result["image_id"]
        image = self.session.image
        if image is not None and image.id != image_id:
            return  # another image was opened meanwhile
        if self.has_unsaved_edits():
            show_warning(f"Not loaded: {self.labels.name} was edited meanwhile; save or revert it first.")
            return
        name = image_id if image is None else image.name
        self.image_id = image_id
        self.base_version = result["base_version"]
        self.model_id = result.get("model_id")
        self.proposal_mask = result["mask"]
        self._clean = self.proposal_mask
        meta = {"diffseg_image_id": image_id}
        plane: int | None = None
        self._blank = result["kind"] == "blank"
        if result["kind"] == "annotation":
            self.proposal_id = None
            self._annotated = [int(z) for z in result.get("planes") or []]
            what = f"annotation version {result['version']}"
            title = f"{name} annotation"
        elif self._blank:
            self.proposal_id = None
            self._annotated = []
            what = "no model yet: paint its mask from scratch, or 'pretrain' (Train) for a first model to correct"
            title = f"{name} annotation"
        else:
            self.proposal_id = result["proposal"].id
            self._annotated = []  # the proposal: no plane of it is annotated until edited or accepted
            plane = result["proposal"].plane
            what = f"proposal {self.proposal_id} of model {self.model_id}"
            if result.get("watershed_overrides"):
                what += f", objects re-split ({watershed_text(result.get('watershed') or {})})"
            title = f"{name} proposal"
        self._watershed = result.get("watershed_overrides") or None
        self._watershed_used = result.get("watershed") or None
        if self._watershed_used:
            self.objects_panel.set_values(self._watershed_used)
        elif self.objects_panel.isVisible() and result["kind"] == "proposal":
            QTimer.singleShot(0, partial(self._on_objects_toggled, True))  # fill it for this proposal
        self._waiting_for_model = self._blank  # an untouched empty mask gives way to the first proposal
        self._set_uncertainty(name, result.get("uncertainty"), result.get("limits"), meta)
        labels = self.labels
        if labels is not None and labels in self.viewer.layers:
            labels.visible = True  # first: napari updates a hidden layer's extent late (set_layer_data)
            labels.data = result["edit"]
            _clear_history(labels)  # Ctrl-Z must not bring back the previous image's mask
            labels.metadata = meta
        else:
            labels = self.labels = self.viewer.add_labels(result["edit"], opacity=0.5, metadata=meta)
            labels.events.paint.connect(self._on_paint)
            self._layer_task = None
        self._apply_task(labels, result.get("task") or ShownTask())
        labels.name = title
        self._show_classes(name, result, meta)
        self.viewer.layers.selection.active = labels
        planes = stack_planes(image) if image is not None else None
        if planes is None or np.ndim(result["edit"]) != 3:
            self.current.setText(f"{name}: {what}; edit, then {SAVE_KEY}")
        else:
            if image is not None and image.plane is None and plane is not None:
                go_to_plane(self.viewer, plane)  # proposed since it was opened: its most uncertain plane
            worst = plane if plane is not None else (image.plane if image is not None else None)
            where = f"; Z plane {worst} is the most uncertain" if worst is not None else ""
            done = f"; annotated planes {_planes_text(self._annotated)}" if self._annotated else ""
            self.current.setText(
                f"{name}: {what}{where}{done}. Edit, then {SAVE_KEY}: saves the planes edited and the one "
                "on show"
            )
        self.current.setToolTip("")

    def _apply_task(self, labels: Any, task: ShownTask) -> None:
        """Colour the Labels layer for the project's task (only when it changed), say what its values are,
        and in an instance project select a fresh id (a stroke paints a new object)."""
        self.task = task
        if self._layer_task != task:
            labels.colormap = task_colormap(task)
            # objects of several classes: outlines over the classes layer's fill (the class shows through)
            labels.contour = 2 if classed(task) else 0
            labels.opacity = 0.9 if classed(task) else 0.5
            self._layer_task = task
            self._fill_class_box(task)
        legend = task_legend(task)
        lines = 5 if classed(task) else 3  # the classed legend names the classes too: room for it
        self.classes_legend.setMinimumHeight(lines * self.classes_legend.fontMetrics().lineSpacing() + 2)
        self.classes_legend.setText(legend)
        self.classes_legend.setVisible(bool(legend))
        self.new_object_button.setVisible(task.kind == "instances")
        self.objects_button.setVisible(task.kind == "instances")
        self.objects_panel.setVisible(task.kind == "instances" and self.objects_button.isChecked())
        if task.kind == "instances":
            labels.selected_label = fresh_label(labels.data)
        elif task.kind == "multiclass" and not 0 < labels.selected_label < len(task.classes):
            labels.selected_label = 1

    # ------------------------------------------------------------------------------ split objects

    def _on_objects_toggled(self, checked: bool) -> None:
        """Show or hide the Split objects panel; on first showing, fill it with the parameters that made
        the objects on show (asked of the backend)."""
        self.objects_panel.setVisible(checked and self.task.kind == "instances")
        client = self.session.client
        if not checked or self._watershed_used or client is None or self.proposal_id is None:
            return
        if self.image_id is None or self.model_id is None:
            return
        run_in_thread(
            client.proposal_objects,
            self.image_id,
            "instances",
            model_id=self.model_id,
            on_done=self._on_watershed_known,
            on_error=lambda exc: None,  # the panel keeps its values; re-splitting still works
        )

    def _on_watershed_known(self, found: tuple[Any, dict[str, Any]]) -> None:
        used = found[1]
        if used and self._alive.value:
            self._watershed_used = used
            self.objects_panel.set_values(used)

    def resplit(self, overrides: dict[str, Any]) -> None:
        """Have the backend make the shown proposal's objects again with the watershed parameters
        ``overrides`` (``{}``: the proposing model's own) and show them; refused while the objects are
        edited (re-splitting would replace the edits)."""
        client = self.session.client
        if client is None or self.image_id is None or self.proposal_id is None or self.model_id is None:
            show_warning("Load a proposal first: re-splitting makes a proposal's objects again.")
            return
        if self.has_unsaved_edits():
            show_warning(
                "Not re-split: the objects are edited. Save or revert your edits first — re-splitting "
                "replaces the objects shown."
            )
            return
        self._load_token += 1
        token = self._load_token
        self.current.setText(f"{self._image_name(self.image_id)}: splitting the objects again…")
        run_in_thread(
            resplit_proposal,
            client,
            self.image_id,
            self.proposal_id,
            self.model_id,
            self.task,
            self.base_version,
            dict(overrides),
            on_done=partial(self._on_resplit, token),
            on_error=partial(self._on_resplit_failed, token),
        )

    def _on_resplit(self, token: int, result: dict[str, Any]) -> None:
        if token == self._load_token and self._alive.value:
            self._show_loaded(result)

    def _on_resplit_failed(self, token: int, exc: BaseException) -> None:
        if token != self._load_token or not self._alive.value:
            return
        message = exc.message if isinstance(exc, BackendError) else str(exc)
        self.current.setText(f"{self._image_name(self.image_id or '')}: not re-split: {message}")
        notify_error(exc)

    # ------------------------------------------------------------------------------ object classes

    def _fill_class_box(self, task: ShownTask) -> None:
        """The *Class* box lists the object classes (a project of several; hidden elsewhere)."""
        from qtpy.QtGui import QColor, QIcon, QPixmap

        chosen = self.class_box.currentData()
        self.class_box.clear()
        for value, name, colour in object_classes(task) if classed(task) else []:
            swatch = QPixmap(12, 12)
            swatch.fill(QColor(colour))
            self.class_box.addItem(QIcon(swatch), f"{value} {name}", value)
        index = self.class_box.findData(chosen)
        self.class_box.setCurrentIndex(max(index, 0))
        self.class_row.setVisible(classed(task))

    def chosen_class(self) -> int:
        """The class in the *Class* box (1 when none is listed)."""
        value = self.class_box.currentData()
        return int(value) if value is not None else 1

    def _on_class_activated(self, index: int) -> None:
        value = self.class_box.itemData(index)
        if value is not None:
            self.choose_class(int(value))

    def choose_class(self, value: int) -> None:
        """Choose object class ``value``: listed in the *Class* box, selected in the classes layer with the
        paint brush (that layer active), and given to the next new objects."""
        index = self.class_box.findData(int(value))
        if index < 0:
            raise ValueError(
                f"no object class {value}: the project's object classes are {self._class_values()}"
            )
        self.class_box.setCurrentIndex(index)
        layer = self.class_layer
        if layer is None or layer not in self.viewer.layers or not layer.visible:
            return
        layer.selected_label = int(value)
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer

    def _class_values(self) -> list[int]:
        return [int(self.class_box.itemData(i)) for i in range(self.class_box.count())]

    def _on_class_label(self, _event: Any = None) -> None:
        """The classes layer's selected label changed (its own controls): the *Class* box follows."""
        layer = self.class_layer
        if layer is None:
            return
        index = self.class_box.findData(int(layer.selected_label))
        if index >= 0:
            self.class_box.setCurrentIndex(index)

    def _show_classes(self, name: str, result: dict[str, Any], meta: dict[str, Any]) -> None:
        """Objects of several classes: the class map that came with ``result`` in the "<image> classes"
        layer, just below the objects (created once, then reused); other projects: that layer hidden."""
        layer = self.class_layer
        alive = layer is not None and layer in self.viewer.layers
        if not classed(self.task):
            if alive:
                layer.visible = False
                layer.name = CLOSED_CLASSES
            self.proposal_classes = self._classes_clean = None
            self._snap = None
            return
        cmap = result.get("classes")
        if cmap is None:  # with_classes adds it; a stand-in loader may not
            cmap = np.zeros(np.shape(result["mask"]), np.int32)
            show_warning(
                f"{name}: no class map came with the objects: every object is shown without a class; paint "
                "their classes before saving."
            )
        cmap = np.asarray(cmap).astype(np.int32)
        if alive:
            layer.visible = True  # first: napari updates a hidden layer's extent late
            layer.data = cmap.copy()
            _clear_history(layer)
            layer.metadata = meta
        else:
            from napari.layers import Labels

            layer = self.class_layer = Labels(
                cmap.copy(), opacity=0.45, metadata=meta, name=f"{name} classes"
            )
            self.viewer.layers.insert(self.viewer.layers.index(self.labels), layer)  # below the objects
            layer.events.paint.connect(self._on_paint)
            layer.events.selected_label.connect(self._on_class_label)
            self._class_layer_task = None
        if self._class_layer_task != self.task:
            layer.colormap = class_colormap(self.task)
            self._class_layer_task = self.task
        layer.name = f"{name} classes"
        layer.selected_label = self.chosen_class()
        self.proposal_classes = self._classes_clean = cmap
        self.viewer.layers.selection.active = self.labels  # the objects stay the layer being edited
        self._snapshot()

    def _snapshot(self) -> None:
        classes = self._class_data()
        if classes is None or self.labels is None:
            self._snap = None
            return
        self._snap = (np.array(self.labels.data, copy=True), np.array(classes, copy=True))

    def _on_paint(self, _event: Any = None) -> None:
        """A stroke in the objects or the classes layer (objects of several classes): keep the class map
        painted per object, once the stroke's pixels are written (napari may announce a single dab before
        it writes it: the sync runs from the event loop)."""
        if self._syncing or self._snap is None or self._sync_pending:
            return
        self._sync_pending = True
        QTimer.singleShot(0, self._sync_classes)

    def _sync_classes(self) -> None:
        """:func:`~._classes.sync_classes` since the last sync: a dab recolours the whole object, a new object
        takes the *Class* box's class, erased pixels lose theirs; one undo step of the classes layer."""
        self._sync_pending = False
        if not self._alive.value or self._snap is None:
            return
        classes = self._class_data()
        if classes is None or self.labels is None:
            return
        ids = np.asarray(self.labels.data)
        found = sync_classes(ids, classes, self._snap[0], self._snap[1], self.chosen_class())
        if found is not None:
            flat, values = found
            self._paint_classes(flat, values)
        self._snapshot()

    def _paint_classes(self, flat: np.ndarray, values: np.ndarray) -> None:
        """Set class-map pixels (flat indices) in the classes layer, as one undo step."""
        layer = self.class_layer
        shape = np.shape(layer.data)
        self._syncing = True
        try:
            with layer.block_history():
                for value in np.unique(values):
                    where = np.unravel_index(flat[values == value], shape)
                    layer.data_setitem(where, int(value))
        finally:
            self._syncing = False

    def new_object(self) -> None:
        """Select an id no object uses and the paint brush (an instance project): the next strokes paint a
        new object."""
        labels = self.labels
        if labels is None or labels not in self.viewer.layers:
            show_warning("Open an image with its proposal first.")
            return
        labels.selected_label = fresh_label(labels.data)
        labels.mode = "paint"
        self.viewer.layers.selection.active = labels

    def _set_uncertainty(
        self, name: str, unc: np.ndarray | None, limits: tuple[float, float] | None, meta: dict[str, Any]
    ) -> None:
        """Show ``unc`` on the fixed scale (``limits`` is always :data:`SCALE`), coloured from the threshold
        up and transparent below it, and say in the summary line what it shows."""
        layer = self.uncertainty
        alive = layer is not None and layer in self.viewer.layers
        self._shown_unc = unc
        if unc is None:
            if alive:
                layer.visible = False  # this image has no uncertainty to show
                layer.metadata = meta
                layer.name = CLOSED_UNCERTAINTY
            self.unc_summary.setText(f"{name}: no uncertainty map (no proposal of a model for it).")
            return
        limits = SCALE
        if alive and not layer.multiscale:  # a 2D layer takes a stack's 3D map (and back)
            layer.visible = True  # first: napari updates a hidden layer's extent late (set_layer_data)
            layer.data = unc
            layer.contrast_limits_range = limits
            layer.contrast_limits = limits
            layer.metadata = meta
        else:
            old = layer if alive else None
            layer = self.uncertainty = self.viewer.add_image(
                unc,
                colormap=uncertainty_colormap(self.threshold.value()),
                contrast_limits=limits,
                blending="translucent",  # transparent below the threshold: the image shows through
                opacity=0.85,
                visible=True,
                metadata=meta,
            )
            if old is not None:  # added before the old one goes (see _close_proposal)
                self.viewer.layers.remove(old)
        layer.name = f"{name} uncertainty"
        self._update_summary(name)

    def _on_threshold(self, value: float) -> None:
        layer = self.uncertainty
        if layer is not None and layer in self.viewer.layers:
            layer.colormap = uncertainty_colormap(value)
        image = self.session.image
        if self._shown_unc is not None:
            self._update_summary(image.name if image is not None else "")

    def _update_summary(self, name: str) -> None:
        """The line under the legend: the share of the image coloured, or why the map says nothing."""
        if self._shown_unc is None:
            return
        summary = summarize_map(self._shown_unc, self.threshold.value())
        text = f"{name}: {summary.text()}" if name else summary.text()
        # a map that covers most of the image would hide the image and the proposal and point at nothing:
        # it is hidden (the eye in the layer list shows it; a higher threshold brings it back by itself)
        hide = summary.flat or summary.broad
        if hide:
            text += " Layer hidden: a higher threshold (or its eye in the layer list) shows it."
        layer = self.uncertainty
        if layer is not None and layer in self.viewer.layers:
            layer.visible = not hide
        self.unc_summary.setText(f"<span style='color:#e8a33d'>{text}</span>" if hide else text)

    def revert(self) -> None:
        """Put the proposal back into the Labels layer (the edits since are dropped); for an image opened
        from its annotation, that annotation version."""
        if self.labels is None or self.proposal_mask is None:
            return
        self.labels.data = self.proposal_mask.copy()
        layer = self.class_layer
        if self.proposal_classes is not None and layer is not None and layer in self.viewer.layers:
            layer.data = self.proposal_classes.copy()
        self._snapshot()

    # ------------------------------------------------------------------------------ save

    def save(self) -> None:
        """Send the Labels layer as a new annotation version (replacing the version it was loaded on)."""
        self._save()

    def _save(self, then: Callable[[], None] | None = None) -> None:
        if self.labels is None or self.image_id is None or self.session.client is None:
            show_warning("Load a proposal first: nothing to save.")
            return
        mask = np.array(self.labels.data, copy=True)  # the worker gets a copy, never the layer
        classes: np.ndarray | None = None
        filled: list[int] = []
        if classed(self.task):
            found = self._classes_to_save(mask)
            if found is None:
                return
            classes, filled = found
        planes: list[int] | None = None
        if mask.ndim == 3:  # a z-stack: name the planes this save annotates
            planes = annotated_planes(mask, self._clean, self._annotated, self._plane_on_show())
            if classes is not None and self._classes_clean is not None:  # a class repainted is an edit too
                planes = sorted(set(planes) | set(annotated_planes(classes, self._classes_clean)))
            if not planes:
                show_warning(
                    "Nothing saved: no plane of the stack is edited and none is on show (the 3D view). "
                    "Go to a plane you reviewed with the Z slider (2D view) and save: it counts as "
                    "annotated as it is."
                )
                return
        self._saving = mask
        self._saving_classes = classes
        if then is not None:
            self._after_save.append(then)
        extra: dict[str, Any] = {} if classes is None else {"classes": classes}
        if self._watershed and self.proposal_id is not None:  # counted against the objects re-split
            extra["watershed"] = self._watershed
        run_in_thread(
            self.session.client.save_annotation,
            self.image_id,
            mask,
            replaces=self.base_version,
            proposal_id=self.proposal_id,
            planes=planes,
            **extra,
            on_done=partial(self._on_saved, self.image_id, mask, classes, filled),
            on_error=self._on_save_failed,
        )

    def _classes_to_save(self, mask: np.ndarray) -> tuple[np.ndarray, list[int]] | None:
        """The class map to send beside ``mask`` (objects of several classes), a copy, and the objects that
        had no class pixel under them and were given the *Class* box's class (painted in the classes layer
        too, so what is on screen is what is sent); None (with a warning) when there is no classes layer."""
        if self._sync_pending:
            self._sync_classes()  # a stroke just made: its classes first
        data = self._class_data()
        if data is None or np.shape(data) != mask.shape:
            show_warning(
                "Not saved: this project's objects carry classes, but the classes layer is missing or does "
                "not match the objects; load the proposal again ('Load / request proposal')."
            )
            return None
        classes, filled = fill_unclassed(mask, data, self.chosen_class())
        if filled:
            flat = np.flatnonzero(np.isin(mask, filled))
            self._paint_classes(flat, np.full(flat.size, self.chosen_class(), np.int64))
            self._snapshot()
        return classes, filled

    def _on_saved(
        self,
        image_id: str,
        mask: np.ndarray,
        classes: np.ndarray | None,
        filled: list[int],
        saved: SavedAnnotation,
    ) -> None:
        version = saved.version
        image = self.session.image
        name = image.name if image is not None and image.id == image_id else image_id
        ann = saved.annotation
        if image_id == self.image_id:
            self.base_version = version
            self._clean = mask
            self._blank = self._waiting_for_model = False  # a saved mask is kept when a first model comes
            self._annotated = [int(z) for z in ann.planes or []]
            if self.labels is not None and self.labels in self.viewer.layers:
                self.labels.name = f"{name} annotation"  # what the layer now holds
                if self.task.kind == "instances" and np.any(mask == self.labels.selected_label):
                    self.labels.selected_label = fresh_label(mask)  # the next stroke: a new object
            if classes is not None:
                self._saved_classes(name, mask, classes, ann.object_classes)
        if self._saving is mask:
            self._saving = self._saving_classes = None
        cost = []
        if ann.edit_dice is not None:
            cost.append(
                f"edit Dice {ann.edit_dice:.3f} against the proposal, {ann.pixels_changed} pixels changed"
            )
        objects = object_edits_text(ann.objects_added, ann.objects_removed, ann.objects_changed)
        if objects:  # an instance project: the cost in objects beside the pixels
            cost.append(objects)
        if ann.object_classes:
            cost.append(_classes_text(ann.object_classes, self.task, filled, self.chosen_class()))
        edit = f" ({'; '.join(cost)})" if cost else ""
        if ann.planes is not None:
            edit += f"; annotated planes {_planes_text(ann.planes)}"
        show_info(f"Saved {name}: annotation version {version}{edit}.")
        if image_id == self.image_id:
            self.current.setText(
                f"{name}: saved as annotation version {version}{edit}; further edits save a new version"
            )
        self.session.images_changed.emit()
        pending, self._after_save = self._after_save, []
        for proceed in pending:
            proceed()

    def _saved_classes(
        self, name: str, mask: np.ndarray, classes: np.ndarray, stored: dict[int, int] | None
    ) -> None:
        """After a save: the classes layer shows each object in the class the backend stored for it (the
        majority under it), unless it was edited while the save was under way."""
        self._classes_clean = classes
        layer = self.class_layer
        if layer is None or layer not in self.viewer.layers:
            return
        layer.name = f"{name} classes"
        if stored is None or not np.array_equal(np.asarray(layer.data), classes):
            return
        if not np.array_equal(np.asarray(self.labels.data), mask):
            return
        shown = class_map(mask, stored).astype(np.int32)
        shown[mask == 0] = classes[mask == 0]  # class paint outside every object is left as it is
        differ = np.flatnonzero(shown != classes)
        if differ.size:
            self._paint_classes(differ, shown.ravel()[differ])
        self._classes_clean = np.array(layer.data, copy=True)
        self._snapshot()

    def _on_save_failed(self, exc: BaseException) -> None:
        self._saving = self._saving_classes = None
        self._after_save.clear()  # never switch away from edits that were not saved
        if isinstance(exc, StaleAnnotation):
            show_warning(
                f"Not saved: someone saved version {exc.current} of this image after you loaded it, and "
                "nothing was overwritten. Load the proposal again (or open the latest version), redo your "
                "edits and save."
            )
            image = self.session.image
            name = image.name if image is not None else "this image"
            self.current.setText(f"{name}: not saved: version {exc.current} exists, reload before saving")
            return
        notify_error(exc)

    # ------------------------------------------------------------------------------ reject

    def reject(self) -> None:
        """Reject the image under review (see :data:`REJECT_HELP`) and open the next one; unsaved edits
        are dealt with first."""
        image = self.session.image
        if self.session.client is None or image is None:
            show_warning("Open an image in the DiffSeg project widget first: there is nothing to reject.")
            return
        self.session.before_switch(partial(self._reject, image))

    def _reject(self, image: Image) -> None:
        if self.session.client is None:
            return
        self.reject_button.setEnabled(False)
        run_in_thread(
            reject_and_next,
            self.session.client,
            image.id,
            self.session.companion,
            (self.session.model_id, self.session.model_known),
            self.session.next_strategy,
            on_done=self._on_rejected,
            on_finish=lambda: self.reject_button.setEnabled(True),
        )

    def _on_rejected(self, result: tuple[Image, Any]) -> None:
        rejected, following = result
        self.last_rejected = rejected
        self.include_button.setEnabled(True)
        if self.image_id == rejected.id and not self.has_unsaved_edits():
            self._close_proposal()
        show_info(
            f"Rejected {rejected.name}: it is excluded from training and from 'Next image'. "
            "'Include again' undoes it."
        )
        self.session.images_changed.emit()
        show_image(self.viewer, self.session, following)

    def include_again(self) -> None:
        """Undo a rejection: the image under review if it is excluded, else the last rejected image gets
        back the state its annotations and proposals imply."""
        image = self.session.image
        target = image if image is not None and image.state == "excluded" else self.last_rejected
        if self.session.client is None or target is None:
            show_warning("Nothing to include again: no image was rejected.")
            return
        run_in_thread(self.session.client.set_image_state, target.id, "included", on_done=self._on_included)

    def _on_included(self, record: Image) -> None:
        if self.last_rejected is not None and self.last_rejected.id == record.id:
            self.last_rejected = None
        image = self.session.image
        if image is not None and image.id == record.id:
            image.state = record.state
        self.include_button.setEnabled(self.last_rejected is not None)
        show_info(f"{record.name} is included again ({record.state}).")
        self.session.images_changed.emit()


def _classes_text(stored: dict[int, int], task: ShownTask, filled: list[int], chosen: int) -> str:
    """``objects by class: 12 nucleus, 3 mitosis; 1 new object given class mitosis (the Class box)``."""
    names = {value: name for value, name, _colour in task.classes}
    counts = np.bincount(np.asarray(list(stored.values()), np.int64), minlength=len(names))
    text = "objects by class: " + ", ".join(
        f"{int(counts[v])} {names[v]}" for v in sorted(names) if v > 0 and v < counts.size
    )
    if filled:
        text += (
            f"; {len(filled)} object{'s' if len(filled) != 1 else ''} without a class given class "
            f"{names.get(chosen, chosen)} (the Class box)"
        )
    return text


def _planes_text(planes: list[int] | tuple[int, ...]) -> str:
    """``0, 2, 3`` (at most 12 listed)."""
    shown = ", ".join(str(int(z)) for z in list(planes)[:12])
    return shown + (f" … ({len(planes)} planes)" if len(planes) > 12 else "")


def _clear_history(labels: Any) -> None:
    """Drop the undo / redo history of a Labels layer (napari clears it when a layer is made read-only;
    the tool mode the annotator chose is kept)."""
    mode = labels.mode
    labels.editable = False
    labels.editable = True
    if labels.mode != mode:
        labels.mode = mode


def _drop_guard(session: Any, *_args: Any) -> None:
    session.switch_guard = None
    session.companion = None


class _Alive:
    """Whether a widget still exists (a plain object: it outlives the Qt widget it describes)."""

    def __init__(self) -> None:
        self.value = True


def _mark_deleted(alive: _Alive, *_args: Any) -> None:
    alive.value = False
