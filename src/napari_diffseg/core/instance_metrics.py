"""Instance (object-level) metrics on label images where each object has its own id (0 = background).

Two families, each in the convention its benchmark publishes:

**Matching by IoU** (DSB 2018, StarDist, Cellpose). The IoU of every predicted object with every true
object comes from one contingency table. At a threshold ``t`` a predicted and a true object are matched
when their IoU is ``>= t`` (StarDist's and Cellpose's rule), one-to-one, maximising the summed IoU
(Hungarian assignment; for ``t > 0.5`` a match is unique anyway, because two objects of one side that do
not overlap cannot both have IoU > 0.5 with the same object). Then TP = matches, FP = unmatched
predictions, FN = unmatched true objects, and

    AP(t) = TP / (TP + FP + FN)        F1(t) = 2 TP / (2 TP + FP + FN)

(the DSB 2018 "average precision", which is really a critical success index). Thresholds 0.50, 0.55 ...
0.90. Both images empty: AP = F1 = 1 (nothing to find, nothing found); one side empty: 0.

**GlaS 2015 object-level metrics** (Sirinukunwattana et al., Medical Image Analysis 35, 2017; the
organisers' MATLAB code ``evaluation_v6``):

- *object F1*: each predicted object's ground truth is the true object it overlaps most; the prediction
  is a TP when that overlap is **more than 50 % of the true object's area**, else a FP; FN = true objects
  without a TP. F1 = 2 TP / (2 TP + FP + FN). Both empty: 1; one empty: 0.
- *object Dice*: ``½ [Σ_i γ_i Dice(G_i, S*(G_i)) + Σ_j σ_j Dice(G*(S_j), S_j)]`` with γ_i = |G_i| / Σ|G|,
  σ_j = |S_j| / Σ|S|, and S*(G_i) the predicted object overlapping G_i most (none: Dice 0), G*(S_j)
  likewise. Both empty: 1; one empty: 0.
- *object Hausdorff*: the same weighted sum of Hausdorff distances (pixels; between the objects' pixel
  sets), where an object that overlaps nothing is paired with the nearest object of the other side by
  Hausdorff distance. Both empty: 0; one side empty: undefined — the official code gives infinity, here
  ``nan`` (left out of means and counted, like HD95 in :mod:`.metrics`).

The challenge pools the area weights over the whole test set; :func:`instance_metrics` weights within each
image and :func:`summarize_instances` averages the images, so numbers are per-image means.

**Objects of several classes** (:func:`class_matching`, :func:`summarize_classes`). Each predicted and each
true object has one class. *Per-class AP@0.5*: for class ``c`` only the predicted objects of class ``c`` and
the true objects of class ``c`` are matched (IoU >= 0.5, as above), so a found object of the wrong class is
a FP of its predicted class and a FN of its true one; AP_c = TP_c / (TP_c + FP_c + FN_c) with the counts
**pooled over the images** (a class absent from an image would otherwise score it 1), ``nan`` when no
image holds an object of class ``c`` on either side. *Class accuracy*: of the class-agnostic matches at
IoU >= 0.5 (the pairs behind ``ap_50``), the share whose predicted class is the true one (pooled; ``nan``
without matches) — whether the objects found are named right, apart from whether they are found.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

from ..base.errors import DataError

__all__ = [
    "AP_THRESHOLDS",
    "average_precision",
    "class_matching",
    "glas_object_metrics",
    "instance_metrics",
    "iou_matrix",
    "match_counts",
    "match_pairs",
    "summarize_classes",
    "summarize_instances",
]

#: IoU thresholds of the AP figures: 0.50, 0.55 ... 0.90.
AP_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))


def _as_ids(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == bool:
        return a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating) or not np.all(a == np.round(a)):
            raise DataError(f"{name} must be an integer instance label image (0 = background), got {a.dtype}")
    a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise DataError(f"{name} holds negative ids (min {a.min()}); ids are 0 (background) or positive")
    return a


def _pair(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_ids(pred, "pred"), _as_ids(true, "true")
    if p.shape != t.shape:
        raise DataError(f"pred has shape {p.shape} but true has shape {t.shape}; they must match")
    return p, t


def _relabel(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive ids: (ids of ``a`` renumbered 0..n, the original ids 1..n in order)."""
    ids, inverse = np.unique(a, return_inverse=True)
    inverse = inverse.reshape(a.shape)
    if ids.size and ids[0] == 0:
        return inverse, ids[1:]
    return inverse + 1, ids


def _contingency(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlap counts ``(n_true + 1, n_pred + 1)`` (row/column 0 = background) and the two area vectors."""
    pr, p_ids = _relabel(p)
    tr, t_ids = _relabel(t)
    n_p, n_t = len(p_ids) + 1, len(t_ids) + 1
    table = np.bincount((tr * n_p + pr).ravel(), minlength=n_t * n_p).reshape(n_t, n_p)
    return table, table.sum(1), table.sum(0)


def iou_matrix(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """IoU of every true object (rows, in increasing id order) with every predicted object (columns)."""
    p, t = _pair(pred, true)
    table, area_t, area_p = _contingency(p, t)
    inter = table[1:, 1:].astype(np.float64)
    union = area_t[1:, None] + area_p[None, 1:] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_counts(iou: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """(TP, FP, FN) of a one-to-one matching with IoU ``>= threshold``, maximising the summed IoU."""
    n_true, n_pred = iou.shape
    if n_true == 0 or n_pred == 0:
        return 0, n_pred, n_true
    ok = iou >= threshold
    if not ok.any():
        return 0, n_pred, n_true
    cost = -np.where(ok, iou, 0.0)
    rows, cols = linear_sum_assignment(cost)
    tp = int(ok[rows, cols].sum())
    return tp, n_pred - tp, n_true - tp


def match_pairs(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The matched (row, column) index pairs of :func:`match_counts`' matching (rows: true objects, columns:
    predicted ones, in increasing id order)."""
    empty = np.zeros(0, np.int64)
    if iou.size == 0:
        return empty, empty
    ok = iou >= threshold
    if not ok.any():
        return empty, empty
    rows, cols = linear_sum_assignment(-np.where(ok, iou, 0.0))
    keep = ok[rows, cols]
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)


def class_matching(
    pred: np.ndarray,
    true: np.ndarray,
    pred_classes: Mapping[int, int],
    true_classes: Mapping[int, int],
    object_classes: int,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """One image's counts for the per-class figures (module docstring): per object class ``1..n``, TP / FP /
    FN of matching only that class's predicted and true objects; and of the class-agnostic matching, the
    matched pairs and those whose classes agree.

    Args:
        pred, true: Instance label images (0 = background).
        pred_classes, true_classes: ``{object id: class}`` (1..``object_classes``) of every object of each.

    Returns:
        ``{"tp": [n], "fp": [n], "fn": [n], "matched": int, "class_correct": int}`` (lists by class 1..n).

    Raises:
        DataError: An object without a class, or a class outside 1..``object_classes``.
    """
    p, t = _pair(pred, true)
    p_ids, t_ids = np.unique(p[p > 0]), np.unique(t[t > 0])
    for name, ids, classes in (("pred", p_ids, pred_classes), ("true", t_ids, true_classes)):
        for i in ids:
            c = classes.get(int(i))
            if c is None or not 1 <= int(c) <= object_classes:
                raise DataError(
                    f"{name} object {int(i)} has class {c!r}; every object needs one in 1..{object_classes}"
                )
    tp, fp, fn = [], [], []
    for c in range(1, object_classes + 1):
        p_c = np.where(np.isin(p, [i for i in p_ids if int(pred_classes[int(i)]) == c]), p, 0)
        t_c = np.where(np.isin(t, [i for i in t_ids if int(true_classes[int(i)]) == c]), t, 0)
        counts = match_counts(iou_matrix(p_c, t_c), threshold)
        tp.append(counts[0])
        fp.append(counts[1])
        fn.append(counts[2])
    rows, cols = match_pairs(iou_matrix(p, t), threshold)
    correct = sum(
        int(true_classes[int(t_ids[r])]) == int(pred_classes[int(p_ids[c])])
        for r, c in zip(rows, cols, strict=True)
    )
    return {"tp": tp, "fp": fp, "fn": fn, "matched": int(rows.size), "class_correct": int(correct)}


def summarize_classes(rows: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict[str, Any]:
    """The per-class figures of a test set from :func:`class_matching`'s rows (counts pooled over the
    images; module docstring): ``ap_50_per_class`` (object class name → AP@0.5, ``nan`` where the class
    has no object on either side), ``class_accuracy`` (``nan`` without matches), ``objects_matched_50``
    and ``objects_true_per_class`` / ``objects_pred_per_class`` (name → count).

    Args:
        class_names: The object classes' names, class 1 first (background not included).
    """
    n = len(class_names)
    tp = np.zeros(n, np.int64)
    fp = np.zeros(n, np.int64)
    fn = np.zeros(n, np.int64)
    matched = correct = 0
    for r in rows:
        tp += np.asarray(r["tp"], np.int64)
        fp += np.asarray(r["fp"], np.int64)
        fn += np.asarray(r["fn"], np.int64)
        matched += int(r["matched"])
        correct += int(r["class_correct"])
    denom = tp + fp + fn
    ap = [float(a / d) if d else math.nan for a, d in zip(tp, denom, strict=True)]
    names = [str(c) for c in class_names]
    return {
        "ap_50_per_class": dict(zip(names, ap, strict=True)),
        "class_accuracy": correct / matched if matched else math.nan,
        "objects_matched_50": matched,
        "objects_true_per_class": {c: int(v) for c, v in zip(names, tp + fn, strict=True)},
        "objects_pred_per_class": {c: int(v) for c, v in zip(names, tp + fp, strict=True)},
    }


def average_precision(
    pred: np.ndarray, true: np.ndarray, thresholds: Sequence[float] = AP_THRESHOLDS
) -> dict[str, Any]:
    """AP = TP / (TP + FP + FN) and F1 at each IoU threshold, with the counts.

    Returns:
        ``{"thresholds": [...], "ap": [...], "f1": [...], "tp": [...], "fp": [...], "fn": [...],
        "n_pred": ..., "n_true": ...}``.
    """
    iou = iou_matrix(pred, true)
    out: dict[str, Any] = {"thresholds": [float(t) for t in thresholds], "ap": [], "f1": []}
    out.update(tp=[], fp=[], fn=[], n_true=int(iou.shape[0]), n_pred=int(iou.shape[1]))
    for thr in thresholds:
        tp, fp, fn = match_counts(iou, thr)
        denom = tp + fp + fn
        out["ap"].append(1.0 if denom == 0 else tp / denom)
        out["f1"].append(1.0 if denom == 0 else 2 * tp / (2 * tp + fp + fn))
        out["tp"].append(tp)
        out["fp"].append(fp)
        out["fn"].append(fn)
    return out


def _best_partner(table: np.ndarray) -> np.ndarray:
    """For each row object (row 0 = background skipped), the column object (1..) it overlaps most, 0 if none."""
    inner = table[1:, 1:]
    if inner.shape[1] == 0:
        return np.zeros(inner.shape[0], dtype=np.int64)
    best = inner.argmax(1) + 1
    return np.where(inner.max(1) > 0, best, 0)


def _hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """Hausdorff distance (pixels) between two non-empty boolean masks' pixel sets, on their joint box."""
    both = a | b
    box = ndi.find_objects(both.astype(np.uint8))[0]
    a, b = a[box], b[box]
    d_to_b = ndi.distance_transform_edt(np.pad(~b, 1, constant_values=True))[1:-1, 1:-1]
    d_to_a = ndi.distance_transform_edt(np.pad(~a, 1, constant_values=True))[1:-1, 1:-1]
    return float(max(d_to_b[a].max(), d_to_a[b].max()))


def glas_object_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """The GlaS challenge's object F1, object Dice and object Hausdorff of one image (module docstring).

    Returns:
        ``{"object_f1", "object_dice", "object_hausdorff", "object_tp", "object_fp", "object_fn"}``.
    """
    p, t = _pair(pred, true)
    if p.ndim != 2:
        raise DataError(f"GlaS object metrics take 2D label images, got shape {p.shape}")
    pr, _ = _relabel(p)
    tr, _ = _relabel(t)
    table, area_t, area_p = _contingency(pr, tr)
    n_t, n_p = len(area_t) - 1, len(area_p) - 1
    if n_t == 0 and n_p == 0:
        return dict(
            object_f1=1.0, object_dice=1.0, object_hausdorff=0.0, object_tp=0, object_fp=0, object_fn=0
        )
    if n_t == 0 or n_p == 0:
        return dict(
            object_f1=0.0,
            object_dice=0.0,
            object_hausdorff=math.nan,
            object_tp=0,
            object_fp=n_p,
            object_fn=n_t,
        )
    # object F1: a prediction is a TP when it covers > 50 % of the true object it overlaps most
    true_of_pred = _best_partner(table.T)  # (n_p,) true id per predicted object, 0 = none
    inter = table[true_of_pred, np.arange(1, n_p + 1)]
    hit = (true_of_pred > 0) & (2 * inter > area_t[true_of_pred])
    tp = int(hit.sum())
    fp, fn = n_p - tp, n_t - tp
    f1 = 2 * tp / (2 * tp + fp + fn)
    # object Dice and Hausdorff, each side weighted by its objects' areas
    pred_of_true = _best_partner(table)  # (n_t,) predicted id per true object
    dice_t = sum(
        area_t[i] / area_t[1:].sum() * (2 * table[i, j] / (area_t[i] + area_p[j]) if j else 0.0)
        for i, j in zip(range(1, n_t + 1), pred_of_true, strict=True)
    )
    dice_p = sum(
        area_p[j] / area_p[1:].sum() * (2 * table[i, j] / (area_t[i] + area_p[j]) if i else 0.0)
        for j, i in zip(range(1, n_p + 1), true_of_pred, strict=True)
    )
    t_masks = [tr == i for i in range(1, n_t + 1)]
    p_masks = [pr == j for j in range(1, n_p + 1)]

    def side(
        masks: list[np.ndarray], others: list[np.ndarray], partner: np.ndarray, area: np.ndarray
    ) -> float:
        total = 0.0
        for k, (m, j) in enumerate(zip(masks, partner, strict=True)):
            if j:
                h = _hausdorff(m, others[j - 1])
            else:  # overlaps nothing: the nearest object of the other side, by Hausdorff distance
                h = min(_hausdorff(m, o) for o in others)
            total += area[k + 1] / area[1:].sum() * h
        return total

    haus = 0.5 * (side(t_masks, p_masks, pred_of_true, area_t) + side(p_masks, t_masks, true_of_pred, area_p))
    return dict(
        object_f1=float(f1),
        object_dice=float(0.5 * (dice_t + dice_p)),
        object_hausdorff=float(haus),
        object_tp=tp,
        object_fp=fp,
        object_fn=fn,
    )


def _key(thr: float) -> str:
    return f"ap_{round(thr * 100):d}"


def instance_metrics(pred: np.ndarray, true: np.ndarray, *, glas: bool = False) -> dict[str, Any]:
    """One image's instance figures: ``ap_50`` ... ``ap_90`` (one per :data:`AP_THRESHOLDS`), ``ap_mean``
    (their mean), ``f1_50``, the object counts, and with ``glas`` the GlaS object metrics."""
    ap = average_precision(pred, true)
    out: dict[str, Any] = {_key(t): float(a) for t, a in zip(ap["thresholds"], ap["ap"], strict=True)}
    out["ap_mean"] = float(np.mean(ap["ap"]))
    out["f1_50"] = float(ap["f1"][0])
    out.update(
        n_pred=ap["n_pred"], n_true=ap["n_true"], tp_50=ap["tp"][0], fp_50=ap["fp"][0], fn_50=ap["fn"][0]
    )
    if glas:
        out.update(glas_object_metrics(pred, true))
    return out


def summarize_instances(per_image: Sequence[Mapping[str, Any]]) -> dict[str, float | int]:
    """Means over images of every float figure of :func:`instance_metrics` (``nan`` values are left out,
    and ``object_hausdorff_n`` says how many images had one), plus ``objects_pred`` / ``objects_true``
    (totals)."""
    out: dict[str, float | int] = {}
    if not per_image:
        return {"ap_50": math.nan, "ap_75": math.nan, "f1_50": math.nan}
    keys = [k for k, v in per_image[0].items() if isinstance(v, float)]
    for k in keys:
        vals = np.asarray([float(r[k]) for r in per_image], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        out[k] = float(finite.mean()) if finite.size else math.nan
        if k == "object_hausdorff":
            out["object_hausdorff_n"] = int(finite.size)
    out["objects_pred"] = int(sum(int(r["n_pred"]) for r in per_image))
    out["objects_true"] = int(sum(int(r["n_true"]) for r in per_image))
    return out
