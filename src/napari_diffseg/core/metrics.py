"""Segmentation metrics on integer label maps: Dice, IoU, HD95 and the edit measures of the annotation loop.

The per-class numbers come from MONAI (`compute_dice`, `compute_iou`, `compute_hausdorff_distance`); this
module only turns our label maps into MONAI's one-hot batches and applies the project's conventions:

- Only foreground classes ``1..num_classes-1`` count. An image's score is the mean over the foreground
  classes present in the prediction *or* the target.
- No foreground class in either map: dice 1, iou 1, hd95 0.0.
- A class present in exactly one of the two maps: dice 0 and iou 0 for that class, and the image's hd95
  is ``nan`` (the distance to an empty mask is undefined), so `summarize` leaves that image out of the
  HD95 mean and counts it in ``hd95_n`` as missing.
- HD95 is measured in pixels (unit spacing), at the resolution of the maps given, unless ``spacing`` gives
  the size of a step along each axis (a z-stack: Z planes in units of the XY pixel size).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

from napari_diffseg.base import labels as _labels
from napari_diffseg.base.errors import ConfigError, DataError

LabelMap = np.ndarray | torch.Tensor

#: Above this many classes `best_permutation_dice` would try too many permutations (K!).
MAX_PERMUTATION_CLASSES = 8

__all__ = [
    "MAX_PERMUTATION_CLASSES",
    "LabelMap",
    "best_permutation_dice",
    "dice_per_class",
    "edit_dice",
    "mean_per_class",
    "pixels_changed",
    "segmentation_metrics",
    "summarize",
]


def _as_labels(x: LabelMap, name: str) -> torch.Tensor:
    """Return ``x`` as an int64 CPU tensor, refusing non-integer values with a helpful `DataError`."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        try:
            t = torch.from_numpy(np.ascontiguousarray(x))
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"{name} must be an integer label map (numpy array or torch tensor), got {type(x).__name__} "
                f"with dtype {getattr(x, 'dtype', '?')}: convert it with `.astype(np.int64)`."
            ) from exc
    if t.dtype == torch.bool:
        return t.long()
    if t.is_floating_point() or t.is_complex():
        if (
            t.is_complex()
            or not bool(torch.all(torch.isfinite(t)))
            or not bool(torch.all(t == torch.round(t)))
        ):
            raise DataError(
                f"{name} has dtype {t.dtype} with non-integer values; metrics need an integer label map "
                "(0 = background, 1..K-1 = classes): threshold or argmax the prediction first."
            )
    return t.long()


def _check_pair(
    pred: LabelMap, target: LabelMap, num_classes: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert and validate a (prediction, reference) pair of label maps of the same 2D or 3D shape."""
    p = _as_labels(pred, "pred")
    t = _as_labels(target, "target")
    if p.shape != t.shape:
        raise DataError(
            f"pred has shape {tuple(p.shape)} but target has shape {tuple(t.shape)}: both label maps must "
            "cover the same pixels (resample the prediction to the target's size first)."
        )
    if p.ndim not in (2, 3):
        raise DataError(
            f"label maps must be 2D (H, W) or 3D (D, H, W), got shape {tuple(p.shape)}: "
            "squeeze channel/batch axes and score one image at a time."
        )
    if num_classes is not None:
        if num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2 (background + one class), got {num_classes}.")
        for name, x in (("pred", p), ("target", t)):
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_classes):
                raise DataError(
                    f"{name} has labels in [{int(x.min())}, {int(x.max())}] but num_classes={num_classes} "
                    f"allows 0..{num_classes - 1}: pass the right num_classes or relabel the mask."
                )
    return p, t


def _one_hot(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(H, W[, D]) int64 → (1, K, H, W[, D]) float32 one-hot batch, MONAI's metric input layout."""
    return F.one_hot(x, num_classes).movedim(-1, 0).unsqueeze(0).float()


def _hd95_pixels(
    pred_mask: torch.Tensor, target_mask: torch.Tensor, spacing: Sequence[float] | None = None
) -> float:
    """95th-percentile symmetric Hausdorff distance (pixels, or ``spacing`` units per axis) between two
    non-empty (1, 1, ...) masks."""
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about an argument it passes to itself internally.
        warnings.simplefilter("ignore", FutureWarning)
        hd = compute_hausdorff_distance(
            pred_mask,
            target_mask,
            include_background=True,
            percentile=95,
            spacing=None if spacing is None else [float(s) for s in spacing],
        )
    return float(hd.reshape(-1)[0])


def segmentation_metrics(
    pred: LabelMap, target: LabelMap, num_classes: int = 2, spacing: Sequence[float] | None = None
) -> dict[str, float]:
    """Dice, IoU and HD95 (pixels) of one predicted label map against its reference.

    Args:
        pred: integer label map (H, W) or (D, H, W), numpy or torch, values in ``0..num_classes-1``.
        target: reference label map of the same shape.
        num_classes: number of classes including background.
        spacing: the size of one step along each axis for HD95 (e.g. ``(4.95, 1, 1)`` for a stack whose
            planes are 4.95 XY pixels apart); ``None``: one pixel along every axis.

    Returns:
        ``{"dice": ..., "iou": ..., "hd95": ...}`` as Python floats, averaged over the foreground classes
        present in either map (see the module docstring for the empty-mask conventions).

    Raises:
        DataError: different shapes, non-integer values or labels outside ``0..num_classes-1``.
        ConfigError: ``num_classes < 2``.
    """
    p, t = _check_pair(pred, target, num_classes)
    p_oh = _one_hot(p, num_classes)
    t_oh = _one_hot(t, num_classes)
    spatial = tuple(range(2, p_oh.ndim))
    p_any = p_oh.sum(dim=spatial)[0, 1:] > 0
    t_any = t_oh.sum(dim=spatial)[0, 1:] > 0
    present = p_any | t_any
    if not bool(present.any()):
        return {"dice": 1.0, "iou": 1.0, "hd95": 0.0}

    dice = compute_dice(p_oh, t_oh, include_background=False, ignore_empty=False)[0]
    iou = compute_iou(p_oh, t_oh, include_background=False, ignore_empty=False)[0]

    distances: list[float] = []
    for k in torch.nonzero(present).flatten().tolist():
        if not (bool(p_any[k]) and bool(t_any[k])):
            distances = [math.nan]
            break
        c = k + 1
        distances.append(_hd95_pixels(p_oh[:, c : c + 1], t_oh[:, c : c + 1], spacing))
    return {
        "dice": float(dice[present].mean()),
        "iou": float(iou[present].mean()),
        "hd95": float(np.mean(distances)),
    }


def dice_per_class(pred: LabelMap, target: LabelMap, num_classes: int) -> list[float]:
    """Dice of each foreground class ``1..num_classes-1`` of one image (a multiclass project's report).

    A class absent from both maps has no Dice here (``nan``), so averaging over images with
    :func:`mean_per_class` counts each class only where it occurs; a class in exactly one map scores 0.

    Raises:
        DataError: as `segmentation_metrics`.
        ConfigError: ``num_classes < 2``.
    """
    p, t = _check_pair(pred, target, num_classes)
    conf = _labels.confusion(p.numpy(), t.numpy(), num_classes)
    pred_count, target_count = conf.sum(axis=1), conf.sum(axis=0)
    out = []
    for c in range(1, num_classes):
        total = int(pred_count[c] + target_count[c])
        out.append(math.nan if total == 0 else 2.0 * float(conf[c, c]) / total)
    return out


def mean_per_class(per_image: Sequence[Sequence[float]]) -> list[float]:
    """Per-class mean over images of :func:`dice_per_class` rows, ignoring the images where a class is
    absent (``nan`` when a class occurs in none)."""
    if not per_image:
        return []
    table = np.asarray(per_image, dtype=np.float64)
    return [_nan_stat(table[:, c], "mean") for c in range(table.shape[1])]


def _nan_stat(values: np.ndarray, fn: str) -> float:
    """nanmean/nanstd that returns nan (no warning) when no value is finite."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan
    return float(np.mean(finite)) if fn == "mean" else float(np.std(finite))


def summarize(per_image: Sequence[Mapping[str, Any]]) -> dict[str, float | int]:
    """Aggregate per-image `segmentation_metrics` results.

    Returns ``dice_mean``, ``dice_std``, ``iou_mean``, ``iou_std`` (population std over images, ddof=0),
    ``hd95_mean`` (mean over the images whose hd95 is finite; nan if none), ``hd95_n`` (how many were
    finite) and ``n`` (number of images). Values are plain Python floats/ints, JSON-serialisable
    (``nan`` is written as ``NaN`` by `json.dumps`). An empty list gives ``n = 0`` and nan statistics.

    Raises:
        DataError: an entry lacks one of the keys ``dice``, ``iou``, ``hd95``.
    """
    for i, row in enumerate(per_image):
        missing = [k for k in ("dice", "iou", "hd95") if k not in row]
        if missing:
            raise DataError(
                f"per-image metrics #{i} lacks {missing}: pass the dicts returned by segmentation_metrics."
            )
    dice = np.asarray([float(r["dice"]) for r in per_image], dtype=np.float64)
    iou = np.asarray([float(r["iou"]) for r in per_image], dtype=np.float64)
    hd95 = np.asarray([float(r["hd95"]) for r in per_image], dtype=np.float64)
    return {
        "dice_mean": _nan_stat(dice, "mean"),
        "dice_std": _nan_stat(dice, "std"),
        "iou_mean": _nan_stat(iou, "mean"),
        "iou_std": _nan_stat(iou, "std"),
        "hd95_mean": _nan_stat(hd95, "mean"),
        "hd95_n": int(np.isfinite(hd95).sum()),
        "n": len(per_image),
    }


def best_permutation_dice(pred: LabelMap, target: LabelMap, num_classes: int = 2) -> float:
    """Best foreground Dice over all relabellings of ``pred``'s classes (background included).

    For the unsupervised teacher, whose output classes carry no fixed meaning: with two classes an
    inverted mask (background ↔ foreground) scores 1. Tries all ``num_classes!`` permutations, so
    ``num_classes`` is limited to `MAX_PERMUTATION_CLASSES`.

    Raises:
        ConfigError: ``num_classes`` below 2 or above `MAX_PERMUTATION_CLASSES`.
        DataError: as `segmentation_metrics`.
    """
    if num_classes > MAX_PERMUTATION_CLASSES:
        raise ConfigError(
            f"best_permutation_dice tries num_classes! relabellings; {num_classes} classes is too many "
            f"(at most {MAX_PERMUTATION_CLASSES}): match classes by another method (e.g. Hungarian)."
        )
    p, t = _check_pair(pred, target, num_classes)
    conf = _labels.confusion(p.numpy(), t.numpy(), num_classes)
    best = 0.0
    for perm in itertools.permutations(range(num_classes)):
        # pred label i becomes perm[i]: row perm[i] of the relabelled confusion is row i of the original.
        relabelled = np.empty_like(conf)
        relabelled[list(perm)] = conf
        best = max(best, _labels.foreground_dice(relabelled))
    return best


def edit_dice(proposal: LabelMap, correction: LabelMap) -> float:
    """Foreground Dice between a proposed mask and the annotator's correction (1 = nothing edited).

    The classes are read from the maps (``1..max label``); the score is the mean Dice over those present
    in either map, so for binary masks it is the usual foreground Dice. Both empty → 1.

    Raises:
        DataError: different shapes, non-integer or negative labels.
    """
    p, t = _check_pair(proposal, correction, None)
    if p.numel() and min(int(p.min()), int(t.min())) < 0:
        raise DataError("label maps must not contain negative labels: 0 is background, 1..K-1 are classes.")
    return _labels.edit_dice(p.numpy(), t.numpy())


def pixels_changed(proposal: LabelMap, correction: LabelMap) -> int:
    """Number of pixels whose label differs between the proposal and the correction.

    Raises:
        DataError: different shapes or non-integer values.
    """
    p, t = _check_pair(proposal, correction, None)
    return _labels.pixels_changed(p.numpy(), t.numpy())
