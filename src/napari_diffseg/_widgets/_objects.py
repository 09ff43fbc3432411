"""Re-splitting a proposal's objects (an instance project): the watershed's parameters in the Annotate
widget, as Cellpose's GUI lets one move its thresholds before correcting by hand.

The objects an instance proposal shows come from the seeded watershed of the proposing model (its
parameters chosen on the project's validation images; ``core/instances.py``). Where touching nuclei come
joined, or a gland comes in pieces, one setting for the whole image often fixes most of them at once: seeds
above a higher probability split what a thin bridge joins, smoothed seeds and a larger smallest seed join
the pieces of one object. The panel sends the parameters to the backend, which makes the objects again
from the stored probabilities (``GET .../proposal/pixels?part=instances&watershed=...``: the GUI never
post-processes); the correction is then saved with the same parameters, so its cost in objects counts from
what the annotator saw.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from ..review import prepared
from ._classes import classed

__all__ = ["ObjectsPanel", "resplit_proposal", "watershed_text"]

_FIELDS = (  # name, label, tooltip
    (
        "threshold",
        "Foreground above",
        "A pixel belongs to an object where p(interior) + p(boundary) exceeds this",
    ),
    (
        "seed_threshold",
        "Seeds above",
        "Each object grows from a seed: a piece of interior above this probability. Higher splits touching "
        "objects that a thin bridge joins; lower joins the pieces of one object",
    ),
    (
        "seed_sigma",
        "Seed smoothing",
        "Smooth the interior probability by this many pixels before seeding: joins the ragged pieces of a "
        "large object's interior into one seed (0: none)",
    ),
    (
        "min_seed_size",
        "Smallest seed",
        "Seeds smaller than this many pixels are dropped (their area joins a neighbour)",
    ),
    ("min_size", "Smallest object", "Objects smaller than this many pixels are removed"),
)


def watershed_text(params: Mapping[str, Any]) -> str:
    """``seeds > 0.7, smoothed 2 px, seeds ≥ 48 px, objects ≥ 16 px, foreground > 0.5`` for a status line."""
    parts = [f"seeds > {float(params.get('seed_threshold', 0.5)):g}"]
    if float(params.get("seed_sigma", 0) or 0):
        parts.append(f"smoothed {float(params['seed_sigma']):g} px")
    parts.append(f"seeds ≥ {int(params.get('min_seed_size', 4))} px")
    parts.append(f"objects ≥ {int(params.get('min_size', 16))} px")
    parts.append(f"foreground > {float(params.get('threshold', 0.5)):g}")
    return ", ".join(parts)


class ObjectsPanel(QGroupBox):
    """The watershed's five parameters, *Re-split* (with them) and *Model's* (the proposing model's own).

    Args:
        on_apply: Called with the parameters to re-split with (``{}``: the model's own).
    """

    def __init__(self, on_apply: Callable[[dict[str, Any]], None]) -> None:
        super().__init__("Split objects (the whole proposal)")
        self._on_apply = on_apply
        self.boxes: dict[str, QDoubleSpinBox | QSpinBox] = {}
        form = QFormLayout()
        for name, label, tip in _FIELDS:
            box: QDoubleSpinBox | QSpinBox
            if name in ("min_seed_size", "min_size"):
                box = QSpinBox()
                box.setRange(1, 100_000)
                box.setSuffix(" px")
            else:
                box = QDoubleSpinBox()
                box.setDecimals(2)
                if name == "seed_sigma":
                    box.setRange(0.0, 20.0)
                    box.setSingleStep(0.5)
                    box.setSuffix(" px")
                else:
                    box.setRange(0.05, 0.95)
                    box.setSingleStep(0.05)
            box.setToolTip(tip)
            self.boxes[name] = box
            form.addRow(label, box)
        self.apply_button = QPushButton("Re-split")
        self.apply_button.setToolTip(
            "Make the proposal's objects again with these parameters (the backend does it from the stored "
            "probabilities); the correction you then save counts its objects from these"
        )
        self.model_button = QPushButton("Model's")
        self.model_button.setToolTip("The objects as the proposing model splits them (its own parameters)")
        row = QHBoxLayout()
        row.addWidget(self.apply_button)
        row.addWidget(self.model_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(row)
        self.setMinimumHeight(self.sizeHint().height())  # a crowded dock must not squash the rows
        self.apply_button.clicked.connect(lambda: self._on_apply(self.values()))
        self.model_button.clicked.connect(lambda: self._on_apply({}))

    def values(self) -> dict[str, Any]:
        """The parameters as the boxes hold them."""
        out: dict[str, Any] = {}
        for name, box in self.boxes.items():
            out[name] = int(box.value()) if isinstance(box, QSpinBox) else round(float(box.value()), 4)
        return out

    def set_values(self, params: Mapping[str, Any]) -> None:
        """Show ``params`` (those of the objects on show); unknown keys are ignored."""
        for name, box in self.boxes.items():
            if name not in params:
                continue
            if isinstance(box, QSpinBox):
                box.setValue(int(params[name]))
            else:
                box.setValue(float(params[name]))


def resplit_proposal(
    client: Any,
    image_id: str,
    proposal_id: int,
    model_id: str,
    task: Any,
    base_version: int | None,
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """Worker: proposal ``proposal_id``'s objects made again by the backend with ``overrides`` (``{}``: the
    model's own parameters), as the Annotate widget shows a proposal (with its uncertainty, its class map
    in a project of several object classes, ``watershed``: the parameters used, ``watershed_overrides``).

    Raises:
        ValueError: The image has a newer proposal than the one shown (load that one first).
    """
    record = client.proposal(image_id, model_id=model_id)
    if record is None or record.id != proposal_id:
        raise ValueError(
            f"image {image_id} has a newer proposal than the one shown ({proposal_id}): load it first "
            "(Load / request proposal), then re-split"
        )
    sent = dict(overrides) or None
    ids, used = client.proposal_objects(image_id, "instances", model_id=model_id, watershed=sent)
    result: dict[str, Any] = {
        "kind": "proposal",
        "image_id": image_id,
        "proposal": record,
        "model_id": model_id,
        "mask": ids,
        "uncertainty": client.proposal_pixels(image_id, "uncertainty", model_id=model_id),
        "task": task,
        "watershed": used,
        "watershed_overrides": sent,
    }
    if classed(task):
        cmap = client.proposal_pixels(image_id, "classes", model_id=model_id, watershed=sent)
        result["classes"] = np.asarray(cmap).astype(np.int32)
    result = prepared(result)
    result["base_version"] = base_version
    return result
