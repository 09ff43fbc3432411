"""Instance metrics against small cases computed by hand (the arithmetic is in each test)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_diffseg.base.errors import DataError
from napari_diffseg.core.instance_metrics import (
    AP_THRESHOLDS,
    average_precision,
    glas_object_metrics,
    instance_metrics,
    iou_matrix,
    summarize_instances,
)


def _case() -> tuple[np.ndarray, np.ndarray]:
    """10 × 12 image.

    true: A = rows 0-3, cols 0-3 (16 px), B = rows 0-3, cols 6-9 (16 px).
    pred: A' = rows 0-3, cols 0-2 (12 px, inside A); B' = rows 0-3, cols 6-11 (24 px, holds B);
          C' = rows 8-9, cols 0-1 (4 px, overlaps nothing).
    """
    true = np.zeros((10, 12), np.uint16)
    true[0:4, 0:4] = 1
    true[0:4, 6:10] = 2
    pred = np.zeros((10, 12), np.uint16)
    pred[0:4, 0:3] = 5  # ids need not be consecutive nor match
    pred[0:4, 6:12] = 9
    pred[8:10, 0:2] = 3
    return pred, true


def test_iou_matrix() -> None:
    pred, true = _case()
    iou = iou_matrix(pred, true)
    # rows: true 1, 2; columns: pred ids in increasing order 3 (C'), 5 (A'), 9 (B')
    # IoU(A, A') = 12 / 16 = 0.75; IoU(B, B') = 16 / 24 = 2/3; everything else 0
    expected = np.array([[0.0, 0.75, 0.0], [0.0, 0.0, 2 / 3]])
    np.testing.assert_allclose(iou, expected)


def test_average_precision_by_hand() -> None:
    pred, true = _case()
    ap = average_precision(pred, true)
    assert ap["thresholds"] == list(AP_THRESHOLDS)
    assert ap["n_true"] == 2 and ap["n_pred"] == 3
    # t = 0.50 ... 0.65: A-A' (0.75) and B-B' (0.667) match: TP 2, FP 1 (C'), FN 0 → AP 2/3, F1 4/5
    # t = 0.70, 0.75: only A-A' (0.75 >= t): TP 1, FP 2, FN 1 → AP 1/4, F1 2/(2+3) = 0.4
    # t = 0.80 ... 0.90: no match: TP 0, FP 3, FN 2 → 0
    expected_ap = [2 / 3] * 4 + [1 / 4] * 2 + [0.0] * 3
    np.testing.assert_allclose(ap["ap"], expected_ap)
    np.testing.assert_allclose(ap["f1"], [0.8] * 4 + [0.4] * 2 + [0.0] * 3)
    assert ap["tp"][0] == 2 and ap["fp"][0] == 1 and ap["fn"][0] == 0


def test_instance_metrics_keys_and_mean() -> None:
    pred, true = _case()
    m = instance_metrics(pred, true)
    assert m["ap_50"] == pytest.approx(2 / 3)
    assert m["ap_75"] == pytest.approx(0.25)
    assert m["ap_90"] == 0.0
    assert m["f1_50"] == pytest.approx(0.8)
    # mean over the 9 thresholds: (4 · 2/3 + 2 · 1/4 + 3 · 0) / 9 = (19/6) / 9 = 19/54
    assert m["ap_mean"] == pytest.approx(19 / 54)


def test_glas_object_metrics_by_hand() -> None:
    pred, true = _case()
    g = glas_object_metrics(pred, true)
    # object F1: A' covers 12 of A's 16 px (> 8) → TP; B' covers all 16 of B (> 8) → TP; C' overlaps
    # nothing → FP. TP 2, FP 1, FN 0 → F1 = 4 / 5
    assert (g["object_tp"], g["object_fp"], g["object_fn"]) == (2, 1, 0)
    assert g["object_f1"] == pytest.approx(0.8)
    # object Dice. Dice(A, A') = 2·12 / (16 + 12) = 6/7; Dice(B, B') = 2·16 / (16 + 24) = 0.8.
    # true side (areas 16, 16 of 32): 0.5 · 6/7 + 0.5 · 0.8 = 0.828571
    # pred side (areas 12, 24, 4 of 40): 0.3 · 6/7 + 0.6 · 0.8 + 0.1 · 0 = 0.737143
    true_side = 0.5 * 6 / 7 + 0.5 * 0.8
    pred_side = 0.3 * 6 / 7 + 0.6 * 0.8
    assert g["object_dice"] == pytest.approx(0.5 * (true_side + pred_side))
    assert g["object_dice"] == pytest.approx(0.782857, abs=1e-6)
    # object Hausdorff. H(A, A') = 1 (A's column 3 is 1 px from A's column 2); H(B, B') = 2 (B' columns 10,
    # 11 are 1 and 2 px from column 9). C' overlaps nothing: nearest true object by Hausdorff is A:
    # H(C', A) = max(C'→A: (9,0)→(3,0) = 6; A→C': (0,3)→(8,1) = √68) = √68 ≈ 8.246 (against B: √128).
    # true side: 0.5 · 1 + 0.5 · 2 = 1.5; pred side: 0.3 · 1 + 0.6 · 2 + 0.1 · √68 = 2.324621
    assert g["object_hausdorff"] == pytest.approx(0.5 * (1.5 + 0.3 + 1.2 + 0.1 * math.sqrt(68)))


def test_split_object() -> None:
    """One true object split in two predictions: only the larger piece counts."""
    true = np.zeros((4, 8), np.uint16)
    true[:, :] = 1  # 32 px
    pred = np.zeros((4, 8), np.uint16)
    pred[:, 0:5] = 1  # 20 px: IoU 20/32 = 0.625, covers 20 > 16 px of the truth → GlaS TP
    pred[:, 5:8] = 2  # 12 px: IoU 12/32 = 0.375, covers 12 < 16 → GlaS FP
    m = instance_metrics(pred, true, glas=True)
    # t = 0.5: TP 1, FP 1, FN 0 → AP 1/2, F1 2/3; t = 0.65: no match → AP 0
    assert m["ap_50"] == pytest.approx(0.5)
    assert m["ap_65"] == 0.0
    assert m["f1_50"] == pytest.approx(2 / 3)
    assert m["object_f1"] == pytest.approx(2 / 3)
    # object Dice: true side: the truth's best partner is piece 1: 2·20/(32+20) = 10/13.
    # pred side: piece 1 (20/32) · 10/13 + piece 2 (12/32) · 2·12/(32+12) = 0.625·10/13 + 0.375·6/11
    expected = 0.5 * (10 / 13 + 0.625 * 10 / 13 + 0.375 * 6 / 11)
    assert m["object_dice"] == pytest.approx(expected)


def test_both_empty() -> None:
    z = np.zeros((6, 6), np.uint16)
    m = instance_metrics(z, z, glas=True)
    # nothing to find and nothing found: a perfect answer
    assert all(m[f"ap_{round(t * 100)}"] == 1.0 for t in AP_THRESHOLDS)
    assert m["f1_50"] == 1.0
    assert (m["object_f1"], m["object_dice"], m["object_hausdorff"]) == (1.0, 1.0, 0.0)


def test_empty_prediction() -> None:
    true = np.zeros((6, 6), np.uint16)
    true[0:2, 0:2] = 1
    true[4:6, 4:6] = 2
    m = instance_metrics(np.zeros_like(true), true, glas=True)
    # TP 0, FP 0, FN 2 → AP 0 at every threshold, F1 0
    assert m["ap_50"] == 0.0 and m["f1_50"] == 0.0 and m["fn_50"] == 2
    assert m["object_f1"] == 0.0 and m["object_dice"] == 0.0
    assert math.isnan(m["object_hausdorff"])  # undefined (the official code: infinity)


def test_empty_truth() -> None:
    pred = np.zeros((6, 6), np.uint16)
    pred[1:3, 1:3] = 4
    m = instance_metrics(pred, np.zeros_like(pred), glas=True)
    # TP 0, FP 1, FN 0 → 0
    assert m["ap_50"] == 0.0 and m["fp_50"] == 1
    assert m["object_f1"] == 0.0 and m["object_dice"] == 0.0
    assert math.isnan(m["object_hausdorff"])


def test_perfect_and_relabelled() -> None:
    pred, true = _case()
    m = instance_metrics(true, true, glas=True)
    assert m["ap_90"] == 1.0 and m["object_dice"] == 1.0 and m["object_hausdorff"] == 0.0
    # renumbering ids changes nothing
    shuffled = np.select([pred == 5, pred == 9, pred == 3], [70000, 2, 11], 0).astype(np.uint32)
    assert instance_metrics(shuffled, true, glas=True) == instance_metrics(pred, true, glas=True)


def test_summarize_skips_nan_hausdorff() -> None:
    pred, true = _case()
    rows = [
        instance_metrics(pred, true, glas=True),
        instance_metrics(np.zeros_like(true), true, glas=True),
    ]
    s = summarize_instances(rows)
    assert s["ap_50"] == pytest.approx((2 / 3 + 0) / 2)
    assert s["object_hausdorff"] == pytest.approx(rows[0]["object_hausdorff"])
    assert s["object_hausdorff_n"] == 1
    assert s["objects_true"] == 4 and s["objects_pred"] == 3


def test_refuses_bad_input() -> None:
    with pytest.raises(DataError, match="shape"):
        iou_matrix(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(DataError, match="negative"):
        iou_matrix(-np.ones((3, 3), int), np.zeros((3, 3), int))
    with pytest.raises(DataError, match="integer"):
        iou_matrix(np.full((3, 3), 0.5), np.zeros((3, 3), int))
