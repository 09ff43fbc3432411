"""What an annotator's correction cost: edit Dice and pixels changed between two label masks (numpy only).

The conventions are those of :mod:`napari_diffseg.core.metrics`: only foreground classes ``1..K-1`` count,
an image's score is the mean Dice over the classes present in either map, and both maps empty score 1.
numpy only (a confusion matrix by ``bincount``), so the project store and the server score a save without
pulling in torch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["confusion", "edit_dice", "edit_stats", "foreground_dice", "pixels_changed"]


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
