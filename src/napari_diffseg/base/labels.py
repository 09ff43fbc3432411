"""What an annotator's correction cost: edit Dice and pixels changed between two label masks, and for
instance masks the objects added, removed and changed (numpy only).

The conventions are those of :mod:`napari_diffseg.core.metrics`: only foreground classes ``1..K-1`` count,
an image's score is the mean Dice over the classes present in either map, and both maps empty score 1.
numpy only (a confusion matrix by ``bincount``), so the project store and the server score a save without
pulling in torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

__all__ = [
    "ObjectEdits",
    "confusion",
    "edit_dice",
    "edit_stats",
    "foreground_dice",
    "object_edits",
    "pixels_changed",
]


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion counts ``C[i, j]`` = number of pixels with ``pred == i`` and ``target == j``.

    Both maps hold integer labels in ``0..num_classes-1`` and have the same number of pixels.
    """
    p = np.asarray(pred).astype(np.int64, copy=False).ravel()
    t = np.asarray(target).astype(np.int64, copy=False).ravel()
    return np.bincount(p * num_classes + t, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def foreground_dice(conf: np.ndarray) -> float:
    """Mean foreground Dice from a confusion matrix over the classes present in either map (none → 1)."""
    pred_count = conf.sum(axis=1)
    target_count = conf.sum(axis=0)
    scores = [
        2.0 * conf[c, c] / (pred_count[c] + target_count[c])
        for c in range(1, conf.shape[0])
        if pred_count[c] + target_count[c] > 0
    ]
    return float(np.mean(scores)) if scores else 1.0


def edit_stats(proposed: np.ndarray, corrected: np.ndarray) -> tuple[float, int]:
    """Edit Dice (mean foreground Dice over the labels present, both empty → 1) and pixels changed.

    ``proposed`` and ``corrected`` are non-negative integer (or bool) label maps of the same shape.
    """
    p = np.asarray(proposed).astype(np.int64, copy=False).ravel()
    t = np.asarray(corrected).astype(np.int64, copy=False).ravel()
    changed = int(np.count_nonzero(p != t))
    k = int(max(p.max(initial=0), t.max(initial=0))) + 1
    if k < 2:
        return 1.0, changed
    return foreground_dice(confusion(p, t, k)), changed


def edit_dice(proposed: np.ndarray, corrected: np.ndarray) -> float:
    """Foreground Dice between a proposed mask and its correction (1 = nothing edited); see :func:`edit_stats`."""
    return edit_stats(proposed, corrected)[0]


def pixels_changed(proposed: np.ndarray, corrected: np.ndarray) -> int:
    """Number of pixels whose label differs between the proposal and the correction."""
    return int(np.count_nonzero(np.asarray(proposed) != np.asarray(corrected)))


class ObjectEdits(NamedTuple):
    """What an annotator did to the objects of a proposal (instance projects): see :func:`object_edits`."""

    added: int
    removed: int
    changed: int


def _dense(ids: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Ids renumbered 0..n (0 stays background), n, and each new number's original id."""
    values, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.reshape(ids.shape)
    if values.size and values[0] == 0:
        return inverse, int(values.size - 1), values
    return inverse + 1, int(values.size), np.concatenate([[0], values])


def object_edits(
    proposed: np.ndarray,
    corrected: np.ndarray,
    threshold: float = 0.5,
    *,
    proposed_classes: Mapping[int, int] | None = None,
    corrected_classes: Mapping[int, int] | None = None,
) -> ObjectEdits:
    """The edit cost in objects between two instance label images (0 = background, any ids).

    Objects are matched one to one, the pairs of highest IoU first, among pairs with IoU >= ``threshold``
    (0.5: then a pair is unique). A matched pair whose pixels differ at all is ``changed`` (a boundary
    redrawn, a piece added or cut off); a proposed object with no match was ``removed`` (erased, or
    merged into a neighbour beyond recognition), a corrected object with no match was ``added`` (painted
    new, or split off). Splitting one object in two thus counts one changed and one added; merging two,
    one changed and one removed. A ``(Z, H, W)`` stack is counted plane by plane (objects are matched
    within each plane) and summed. With each side's ``{id: class}`` (objects of several classes) a matched
    pair whose class differs is ``changed`` too, even with the same pixels (the annotator recoloured it).

    Raises:
        ValueError: The two images differ in shape.
    """
    p = np.asarray(proposed).astype(np.int64, copy=False)
    t = np.asarray(corrected).astype(np.int64, copy=False)
    if p.shape != t.shape:
        raise ValueError(f"proposed {p.shape} and corrected {t.shape} must have the same shape")
    if p.ndim == 3:
        per = [
            object_edits(
                a, b, threshold, proposed_classes=proposed_classes, corrected_classes=corrected_classes
            )
            for a, b in zip(p, t, strict=True)
        ]
        return ObjectEdits(*(int(sum(x)) for x in zip(*per, strict=True))) if per else ObjectEdits(0, 0, 0)
    pr, n_p, ids_p = _dense(p)
    tr, n_t, ids_t = _dense(t)
    classed = proposed_classes is not None and corrected_classes is not None
    table = np.bincount((pr * (n_t + 1) + tr).ravel(), minlength=(n_p + 1) * (n_t + 1)).reshape(
        n_p + 1, n_t + 1
    )
    area_p, area_t = table.sum(1), table.sum(0)
    inter = table[1:, 1:].astype(np.float64)
    union = area_p[1:, None] + area_t[None, 1:] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    rows, cols = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_p, used_t = np.zeros(n_p, bool), np.zeros(n_t, bool)
    matched = changed = 0
    for r, c in zip(rows[order], cols[order], strict=True):
        if used_p[r] or used_t[c]:
            continue
        used_p[r] = used_t[c] = True
        matched += 1
        if inter[r, c] != area_p[r + 1] or inter[r, c] != area_t[c + 1]:
            changed += 1
        elif classed and proposed_classes.get(int(ids_p[r + 1])) != corrected_classes.get(int(ids_t[c + 1])):  # type: ignore[union-attr]
            changed += 1
    return ObjectEdits(added=n_t - matched, removed=n_p - matched, changed=changed)
