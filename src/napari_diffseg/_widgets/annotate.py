"""The annotate dock widget: the teacher's proposal as an editable Labels layer, its uncertainty as an
Image layer; save the correction (Shift-S) as a new annotation version, or revert to the proposal."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_diffseg._widgets._session import notify_error, run_in_thread, session_for
from napari_diffseg.backend.errors import BackendUnavailable, StaleAnnotation

__all__ = ["SAVE_KEY", "AnnotateWidget"]

SAVE_KEY = "Shift-S"


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


def uncertainty_limits(uncertainty: np.ndarray) -> tuple[float, float]:
    """Contrast limits that make this image's most uncertain regions stand out: its 2nd to 99.5th
    percentile (a span of at least 1e-3, so a flat map stays dark instead of amplifying noise)."""
    if not uncertainty.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(uncertainty, [2, 99.5]))
    return low, max(high, low + 1e-3)


class AnnotateWidget(QWidget):
    """Load the proposal of the image under review, edit it with napari's label tools, save or revert."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.labels: Any = None  # the editable Labels layer
        self.proposal_mask: np.ndarray | None = None
        self.image_id: str | None = None
        self.proposal_id: int | None = None
        self.base_version: int | None = None

        self.current = QLabel("no image: open one in the DiffSeg project widget")
        self.current.setWordWrap(True)
        self.load_button = QPushButton("Load proposal")
        self.save_button = QPushButton(f"Save correction ({SAVE_KEY})")
        self.revert_button = QPushButton("Revert to proposal")
        buttons = QHBoxLayout()
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.revert_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.current)
        layout.addWidget(self.load_button)
        layout.addLayout(buttons)
        layout.addStretch(1)

        self.load_button.clicked.connect(self.load_proposal)
        self.save_button.clicked.connect(self.save)
        self.revert_button.clicked.connect(self.revert)
        self.session.image_opened.connect(self._on_image_opened)
        self.viewer.bind_key(SAVE_KEY, self._on_save_key, overwrite=True)
        if self.session.image is not None:
            self._on_image_opened(self.session.image)

    def _on_image_opened(self, record: dict[str, Any]) -> None:
        self.current.setText(f"image: {record['name']} ({record['state']})")

    def _on_save_key(self, _viewer: Any) -> None:
        self.save()

    # ------------------------------------------------------------------------------ load / revert

    def load_proposal(self) -> None:
        """Fetch the proposal of the current image and show it (Labels) with its uncertainty (Image)."""
        image = self.session.image
        if self.session.client is None or image is None:
            show_warning("Open an image in the DiffSeg project widget first (connect, then 'Next image').")
            return
        run_in_thread(_fetch_proposal, self.session.client, image["id"], on_done=self._show_proposal)

    def _show_proposal(self, result: dict[str, Any]) -> None:
        image = self.session.image or {"name": result["proposal"]["image_id"]}
        name = image["name"]
        self.image_id = result["proposal"]["image_id"]
        self.proposal_id = int(result["proposal"]["id"])
        self.base_version = result["base_version"]
        self.proposal_mask = np.asarray(result["mask"]).astype(np.int32)
        unc = np.asarray(result["uncertainty"], dtype=np.float32)
        for layer_name in (f"{name} uncertainty", f"{name} proposal"):
            if layer_name in self.viewer.layers:
                self.viewer.layers.remove(layer_name)
        self.viewer.add_image(
            unc,
            name=f"{name} uncertainty",
            colormap="magma",
            contrast_limits=uncertainty_limits(unc),
            blending="translucent",
            opacity=0.6,
            visible=True,
        )
        self.labels = self.viewer.add_labels(
            self.proposal_mask.copy(),
            name=f"{name} proposal",
            opacity=0.5,
            metadata={"diffseg_image_id": self.image_id},
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
        if self.labels is None or self.image_id is None or self.session.client is None:
            show_warning("Load a proposal first: nothing to save.")
            return
        mask = np.array(self.labels.data, copy=True)  # the worker gets a copy, never the layer
        run_in_thread(
            self.session.client.save_annotation,
            self.image_id,
            mask,
            replaces=self.base_version,
            proposal_id=self.proposal_id,
            on_done=self._on_saved,
            on_error=self._on_save_failed,
        )

    def _on_saved(self, saved: dict[str, Any]) -> None:
        self.base_version = int(saved["version"])
        show_info(f"Saved annotation version {self.base_version}.")
        self.current.setText(f"saved version {self.base_version}")

    def _on_save_failed(self, exc: BaseException) -> None:
        if isinstance(exc, StaleAnnotation):
            show_warning(
                f"Not saved: someone saved version {exc.current} of this image after you loaded it, and "
                "nothing was overwritten. Load the proposal again (or open the latest version), redo your "
                "edits and save."
            )
            self.current.setText(f"stale: version {exc.current} exists, reload before saving")
            return
        notify_error(exc)
