"""The annotate dock widget: the teacher's proposal as an editable Labels layer, its uncertainty as an
Image layer; save the correction (Shift-S) as a new annotation version, revert to the proposal, or reject
the image. Unsaved edits are never dropped silently: before another image or proposal replaces them the
annotator chooses Save, Discard or Cancel (:func:`ask_unsaved`)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QHBoxLayout, QLabel, QMessageBox, QPushButton, QVBoxLayout, QWidget

from napari_diffseg._widgets._session import notify_error, run_in_thread, session_for
from napari_diffseg._widgets.project import _fetch_image, show_image
from napari_diffseg.backend.errors import BackendUnavailable, StaleAnnotation

__all__ = ["REJECT_HELP", "SAVE_KEY", "AnnotateWidget", "ask_unsaved", "uncertainty_limits"]

SAVE_KEY = "Shift-S"
REJECT_HELP = (
    "Reject: the proposal is useless for this image. The image becomes 'excluded': no training job uses "
    "it and 'Next image' skips it; nothing is deleted. Then the next image opens. 'Include again' undoes "
    "it (so does saving a correction for the image)."
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


def _fetch_proposal(client: Any, image_id: str) -> dict[str, Any]:
    """Worker: the proposal record, its mask and uncertainty, and the image's latest annotation version."""
    record = client.proposal(image_id)
    if record is None:
        raise BackendUnavailable(
            0,
            "this image has no proposal yet: run `diffseg propose` (or pretrain first) and load it again.",
        )
    versions = client.annotations(image_id)
    return {
        "proposal": record,
        "mask": client.proposal_pixels(image_id, "mask"),
        "uncertainty": client.proposal_pixels(image_id, "uncertainty"),
        "base_version": int(versions[-1]["version"]) if versions else None,
    }


def _reject_and_next(client: Any, image_id: str) -> tuple[dict[str, Any], Any]:
    """Worker: mark the image excluded, then fetch the next one to review."""
    rejected = client.set_image_state(image_id, "excluded")
    return rejected, _fetch_image(client, None)


def uncertainty_limits(uncertainty: np.ndarray) -> tuple[float, float]:
    """Contrast limits that make this image's most uncertain regions stand out: its 2nd to 99.5th
    percentile (a span of at least 1e-3, so a flat map stays dark instead of amplifying noise)."""
    if not uncertainty.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(uncertainty, [2, 99.5]))
    return low, max(high, low + 1e-3)


class AnnotateWidget(QWidget):
    """Load the proposal of the image under review, edit it with napari's label tools, then save it
    (Shift-S), revert to the proposal, or reject the image.

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
        self.base_version: int | None = None
        self.last_rejected: dict[str, Any] | None = None
        self._clean: np.ndarray | None = None  # the Labels data as last loaded or saved
        self._saving: np.ndarray | None = None  # the data of the save in flight
        self._after_save: list[Callable[[], None]] = []

        self.current = QLabel("no image: open one in the DiffSeg project widget")
        self.current.setWordWrap(True)
        self.load_button = QPushButton("Load proposal")
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
        layout = QVBoxLayout(self)
        layout.addWidget(self.current)
        layout.addWidget(self.load_button)
        layout.addLayout(buttons)
        layout.addLayout(review)
        layout.addStretch(1)

        self.load_button.clicked.connect(self.load_proposal)
        self.save_button.clicked.connect(self.save)
        self.revert_button.clicked.connect(self.revert)
        self.reject_button.clicked.connect(self.reject)
        self.include_button.clicked.connect(self.include_again)
        self.session.image_opened.connect(self._on_image_opened)
        self.session.switch_guard = self.confirm_switch
        self.destroyed.connect(partial(_drop_guard, self.session))
        self.viewer.bind_key(SAVE_KEY, self._on_save_key, overwrite=True)
        if self.session.image is not None:
            self._on_image_opened(self.session.image)

    def _on_image_opened(self, record: dict[str, Any]) -> None:
        if self.labels is not None and record["id"] != self.image_id:
            if self.has_unsaved_edits():  # only reachable around the guard: keep the edits
                show_warning(
                    f"The edits in layer {self.labels.name!r} are not saved; they stay in that layer: save "
                    "them (they go to their own image) or revert them."
                )
            else:
                self._close_proposal()
        self.include_button.setEnabled(record["state"] == "excluded" or self.last_rejected is not None)
        self.current.setText(f"image: {record['name']} ({record['state']})")

    def _on_save_key(self, _viewer: Any) -> None:
        self.save()

    # ------------------------------------------------------------------------------ unsaved edits

    def has_unsaved_edits(self) -> bool:
        """Whether the Labels layer differs from what was last loaded or saved (one array comparison)."""
        if self.labels is None or self._clean is None or self.labels not in self.viewer.layers:
            return False
        return not np.array_equal(np.asarray(self.labels.data), self._clean)

    def confirm_switch(self, proceed: Callable[[], None]) -> None:
        """The session's switch guard: call ``proceed`` now when there is nothing unsaved, after the save
        when the annotator chooses Save (not at all if it fails), after dropping the edits on Discard, and
        never on Cancel."""
        if self.labels is None or self.labels not in self.viewer.layers:
            proceed()
            return
        data = np.asarray(self.labels.data)
        if self._saving is not None and np.array_equal(data, self._saving):
            self._after_save.append(proceed)  # these edits are being saved: switch when that is done
            return
        if self._clean is not None and np.array_equal(data, self._clean):
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
        """Remove the proposal and uncertainty layers this widget added and forget them."""
        for layer in (self.labels, self.uncertainty):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.labels = self.uncertainty = None
        self.proposal_mask = self._clean = None
        self.image_id = self.proposal_id = self.base_version = None

    # ------------------------------------------------------------------------------ load / revert

    def load_proposal(self) -> None:
        """Fetch the proposal of the current image and show it (Labels) with its uncertainty (Image);
        unsaved edits are dealt with first."""
        image = self.session.image
        if self.session.client is None or image is None:
            show_warning("Open an image in the DiffSeg project widget first (connect, then 'Next image').")
            return
        self.session.before_switch(partial(self._request_proposal, image["id"]))

    def _request_proposal(self, image_id: str) -> None:
        if self.session.client is None:
            return
        run_in_thread(_fetch_proposal, self.session.client, image_id, on_done=self._show_proposal)

    def _show_proposal(self, result: dict[str, Any]) -> None:
        image_id = result["proposal"]["image_id"]
        image = self.session.image or {"id": image_id, "name": image_id}
        if image["id"] != image_id:
            return  # another image was opened meanwhile
        if self.has_unsaved_edits():
            show_warning(f"Not loaded: {self.labels.name} was edited meanwhile; save or revert it first.")
            return
        self._close_proposal()
        name = image["name"]
        self.image_id = image_id
        self.proposal_id = int(result["proposal"]["id"])
        self.base_version = result["base_version"]
        self.proposal_mask = np.asarray(result["mask"]).astype(np.int32)
        self._clean = self.proposal_mask
        unc = np.asarray(result["uncertainty"], dtype=np.float32)
        for layer_name in (f"{name} uncertainty", f"{name} proposal"):
            if layer_name in self.viewer.layers:
                self.viewer.layers.remove(layer_name)
        self.uncertainty = self.viewer.add_image(
            unc,
            name=f"{name} uncertainty",
            colormap="magma",
            contrast_limits=uncertainty_limits(unc),
            blending="translucent",
            opacity=0.6,
            visible=True,
            metadata={"diffseg_image_id": image_id},
        )
        self.labels = self.viewer.add_labels(
            self.proposal_mask.copy(),
            name=f"{name} proposal",
            opacity=0.5,
            metadata={"diffseg_image_id": image_id},
        )
        self.viewer.layers.selection.active = self.labels
        self.current.setText(f"{name}: proposal {self.proposal_id}; edit, then {SAVE_KEY}")

    def revert(self) -> None:
        """Put the proposal back into the Labels layer (the edits since are dropped)."""
        if self.labels is None or self.proposal_mask is None:
            return
        self.labels.data = self.proposal_mask.copy()

    # ------------------------------------------------------------------------------ save

    def save(self) -> None:
        """Send the Labels layer as a new annotation version (replacing the version it was loaded on)."""
        self._save()

    def _save(self, then: Callable[[], None] | None = None) -> None:
        if self.labels is None or self.image_id is None or self.session.client is None:
            show_warning("Load a proposal first: nothing to save.")
            return
        mask = np.array(self.labels.data, copy=True)  # the worker gets a copy, never the layer
        self._saving = mask
        if then is not None:
            self._after_save.append(then)
        run_in_thread(
            self.session.client.save_annotation,
            self.image_id,
            mask,
            replaces=self.base_version,
            proposal_id=self.proposal_id,
            on_done=partial(self._on_saved, self.image_id, mask),
            on_error=self._on_save_failed,
        )

    def _on_saved(self, image_id: str, mask: np.ndarray, saved: dict[str, Any]) -> None:
        version = int(saved["version"])
        if image_id == self.image_id:
            self.base_version = version
            self._clean = mask
        if self._saving is mask:
            self._saving = None
        show_info(f"Saved annotation version {version}.")
        self.current.setText(f"saved version {version}")
        self.session.images_changed.emit()
        pending, self._after_save = self._after_save, []
        for proceed in pending:
            proceed()

    def _on_save_failed(self, exc: BaseException) -> None:
        self._saving = None
        self._after_save.clear()  # never switch away from edits that were not saved
        if isinstance(exc, StaleAnnotation):
            show_warning(
                f"Not saved: someone saved version {exc.current} of this image after you loaded it, and "
                "nothing was overwritten. Load the proposal again (or open the latest version), redo your "
                "edits and save."
            )
            self.current.setText(f"stale: version {exc.current} exists, reload before saving")
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

    def _reject(self, image: dict[str, Any]) -> None:
        if self.session.client is None:
            return
        self.reject_button.setEnabled(False)
        run_in_thread(
            _reject_and_next,
            self.session.client,
            image["id"],
            on_done=self._on_rejected,
            on_finish=lambda: self.reject_button.setEnabled(True),
        )

    def _on_rejected(self, result: tuple[dict[str, Any], Any]) -> None:
        rejected, following = result
        self.last_rejected = rejected
        self.include_button.setEnabled(True)
        if self.image_id == rejected["id"] and not self.has_unsaved_edits():
            self._close_proposal()
        show_info(
            f"Rejected {rejected['name']}: it is excluded from training and from 'Next image'. "
            "'Include again' undoes it."
        )
        self.session.images_changed.emit()
        show_image(self.viewer, self.session, following)

    def include_again(self) -> None:
        """Undo a rejection: the image under review if it is excluded, else the last rejected image gets
        back the state its annotations and proposals imply."""
        image = self.session.image
        target = image if image is not None and image["state"] == "excluded" else self.last_rejected
        if self.session.client is None or target is None:
            show_warning("Nothing to include again: no image was rejected.")
            return
        run_in_thread(
            self.session.client.set_image_state, target["id"], "included", on_done=self._on_included
        )

    def _on_included(self, record: dict[str, Any]) -> None:
        if self.last_rejected is not None and self.last_rejected["id"] == record["id"]:
            self.last_rejected = None
        image = self.session.image
        if image is not None and image["id"] == record["id"]:
            image["state"] = record["state"]
        self.include_button.setEnabled(self.last_rejected is not None)
        show_info(f"{record['name']} is included again ({record['state']}).")
        self.session.images_changed.emit()


def _drop_guard(session: Any, *_args: Any) -> None:
    session.switch_guard = None
