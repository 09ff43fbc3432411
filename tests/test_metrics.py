"""Numbers of the segmentation metrics on hand-made masks, and their empty-mask conventions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from napari_diffseg.base.errors import ConfigError, DataError
from napari_diffseg.core.metrics import (
    best_permutation_dice,
    edit_dice,
    pixels_changed,
    segmentation_metrics,
    summarize,
)


def square(
    top: int, left: int, size: int = 10, shape: tuple[int, int] = (64, 64), label: int = 1
) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.int64)
    mask[top : top + size, left : left + size] = label
    return mask


def test_half_overlap_gives_known_dice_and_iou() -> None:
    # Two 10x10 squares sharing a 10x5 strip: |A∩B| = 50, |A| = |B| = 100, |A∪B| = 150.
    pred = square(10, 10)
    target = square(10, 15)
    m = segmentation_metrics(pred, target)
    assert m["dice"] == pytest.approx(0.5)
    assert m["iou"] == pytest.approx(1 / 3)


def test_identical_masks_are_perfect_and_results_are_python_floats() -> None:
    mask = square(5, 5)
    m = segmentation_metrics(mask, mask.copy())
    assert m == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}
    assert all(type(v) is float for v in m.values())


def test_numpy_and_torch_inputs_agree() -> None:
    pred, target = square(10, 10), square(12, 14)
    a = segmentation_metrics(pred, target)
    b = segmentation_metrics(torch.from_numpy(pred).to(torch.uint8), torch.from_numpy(target))
    assert a == pytest.approx(b)


def test_hd95_of_squares_shifted_by_three_pixels_is_three() -> None:
    m = segmentation_metrics(square(10, 10, size=30), square(13, 10, size=30))
    assert m["hd95"] == pytest.approx(3.0, abs=0.5)


def test_both_empty_is_perfect() -> None:
    empty = np.zeros((16, 16), dtype=np.int64)
    assert segmentation_metrics(empty, empty) == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}


@pytest.mark.parametrize("pred_empty", [True, False])
def test_exactly_one_empty_scores_zero_and_nan_hd95(pred_empty: bool) -> None:
    full = square(4, 4)
    empty = np.zeros_like(full)
    pred, target = (empty, full) if pred_empty else (full, empty)
    m = segmentation_metrics(pred, target)
    assert m["dice"] == 0.0
    assert m["iou"] == 0.0
    assert math.isnan(m["hd95"])


def test_multiclass_means_over_present_foreground_classes() -> None:
    # Class 1 matches exactly, class 2 half-overlaps, class 3 is absent from both → mean of (1, 0.5).
    pred = square(2, 2, label=1) + square(30, 30, label=2)
    target = square(2, 2, label=1) + square(30, 35, label=2)
    m = segmentation_metrics(pred, target, num_classes=4)
    assert m["dice"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["iou"] == pytest.approx((1.0 + 1 / 3) / 2)


def test_bad_inputs_raise_data_errors() -> None:
    with pytest.raises(DataError, match="shape"):
        segmentation_metrics(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(DataError, match="num_classes=2"):
        segmentation_metrics(np.full((4, 4), 2), np.zeros((4, 4), int))
    with pytest.raises(DataError, match="non-integer"):
        segmentation_metrics(np.full((4, 4), 0.5), np.zeros((4, 4), int))
    with pytest.raises(ConfigError):
        segmentation_metrics(np.zeros((4, 4), int), np.zeros((4, 4), int), num_classes=1)


def test_summarize_handles_nan_hd95_and_is_json_serialisable() -> None:
    rows = [
        {"dice": 1.0, "iou": 1.0, "hd95": 2.0},
        {"dice": 0.5, "iou": 0.25, "hd95": 4.0},
        {"dice": 0.0, "iou": 0.0, "hd95": float("nan")},
    ]
    s = summarize(rows)
    assert s["n"] == 3
    assert s["hd95_n"] == 2
    assert s["dice_mean"] == pytest.approx(0.5)
    assert s["dice_std"] == pytest.approx(np.std([1.0, 0.5, 0.0]))
    assert s["iou_mean"] == pytest.approx(1.25 / 3)
    assert s["iou_std"] == pytest.approx(np.std([1.0, 0.25, 0.0]))
    assert s["hd95_mean"] == pytest.approx(3.0)
    assert all(type(v) in (float, int) for v in s.values())
    json.dumps(s)


def test_summarize_all_nan_hd95_gives_nan_mean() -> None:
    s = summarize([{"dice": 0.0, "iou": 0.0, "hd95": float("nan")}])
    assert math.isnan(s["hd95_mean"])
    assert s["hd95_n"] == 0


def test_best_permutation_dice_of_inverted_mask_is_one() -> None:
    target = square(10, 10)
    inverted = 1 - target
    assert segmentation_metrics(inverted, target)["dice"] < 0.3
    assert best_permutation_dice(inverted, target) == pytest.approx(1.0)


def test_best_permutation_dice_matches_plain_dice_when_labels_already_agree() -> None:
    pred, target = square(10, 10), square(10, 15)
    assert best_permutation_dice(pred, target) == pytest.approx(segmentation_metrics(pred, target)["dice"])


def test_best_permutation_dice_three_classes() -> None:
    target = square(2, 2, label=1) + square(30, 30, label=2)
    swapped = np.choose(target, [2, 0, 1])  # 0→2, 1→0, 2→1
    assert best_permutation_dice(swapped, target, num_classes=3) == pytest.approx(1.0)


def test_edit_dice_and_pixels_changed() -> None:
    proposal, correction = square(10, 10), square(10, 15)
    assert edit_dice(proposal, correction) == pytest.approx(0.5)
    assert pixels_changed(proposal, correction) == 100  # 50 removed + 50 added
    assert edit_dice(proposal, proposal) == 1.0
    assert pixels_changed(proposal, proposal) == 0
    empty = np.zeros_like(proposal)
    assert edit_dice(empty, empty) == 1.0
    assert edit_dice(empty, correction) == 0.0
    assert isinstance(pixels_changed(torch.from_numpy(proposal), correction), int)
