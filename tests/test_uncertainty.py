"""The uncertainty scale, the flat-map check and the error-detection scores (base/uncertainty.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_diffseg.base.uncertainty import (
    DEFAULT_THRESHOLD,
    binary_entropy,
    error_detection,
    probability_band,
    summarize_map,
)


def test_the_scale_is_bits_for_a_binary_task() -> None:
    assert binary_entropy(0.5) == pytest.approx(1.0)
    assert binary_entropy(0.0) == binary_entropy(1.0) == 0.0
    lo, hi = probability_band(DEFAULT_THRESHOLD)
    assert lo == pytest.approx(0.110, abs=1e-3) and hi == pytest.approx(0.890, abs=1e-3)
    assert binary_entropy(lo) == pytest.approx(DEFAULT_THRESHOLD, abs=1e-6)
    # the teacher's own definition (normalised entropy of the mean probabilities) agrees
    torch = pytest.importorskip("torch")
    from napari_diffseg.core.diffusion import normalized_entropy

    p = torch.tensor([[[[lo]], [[hi]]]], dtype=torch.float64)  # (B, K, H, W) = (1, 2, 1, 1)
    assert float(normalized_entropy(p)) == pytest.approx(DEFAULT_THRESHOLD, abs=1e-6)


def test_a_nearly_uniform_high_map_is_flat_and_says_so() -> None:
    rng = np.random.default_rng(0)
    young = 0.97 + 0.03 * rng.random((64, 64))  # what an untrained teacher gives: 0.97-1.00 everywhere
    s = summarize_map(young)
    assert s.flat and s.coloured == 1.0
    assert "not trained enough" in s.text()
    informative = np.where(rng.random((64, 64)) < 0.1, 0.8, 0.05)
    s = summarize_map(informative)
    assert not s.flat and s.coloured == pytest.approx(0.1, abs=0.02)
    assert "% of the image" in s.text()
    broad = np.where(rng.random((64, 64)) < 0.7, 0.8, 0.05)  # most of the image: no single error
    s = summarize_map(broad)
    assert s.broad and not s.flat and "cannot single out errors" in s.text()
    assert not summarize_map(broad, threshold=0.9).broad  # a higher threshold: nothing that wide
    sure = np.full((8, 8), 0.01)
    s = summarize_map(sure)
    assert not s.flat and s.coloured == 0.0 and "sure everywhere" in s.text()


def test_error_detection_perfect_random_and_inverted() -> None:
    rng = np.random.default_rng(1)
    truth = rng.random((80, 80)) > 0.6
    proposal = truth.copy()
    proposal[:8] = ~proposal[:8]  # 10 % of the pixels wrong
    wrong = proposal != truth
    perfect = np.where(wrong, 0.9, 0.1)
    e = error_detection([perfect], [proposal], [truth])
    assert e.auroc == pytest.approx(1.0)
    assert e.error_rate == pytest.approx(0.1)
    assert e.area == pytest.approx(1 - e.error_rate / 2)
    assert e.at_threshold[DEFAULT_THRESHOLD] == pytest.approx((0.1, 1.0))
    assert (
        e.inspected[0] == 0.0 and e.inspected[-1] == pytest.approx(1.0) and e.found[-1] == pytest.approx(1.0)
    )
    noise = rng.random((80, 80))
    assert error_detection([noise], [proposal], [truth]).auroc == pytest.approx(0.5, abs=0.03)
    assert error_detection([1 - perfect], [proposal], [truth]).auroc == pytest.approx(0.0)
    # ties count half: a constant map is exactly chance
    e = error_detection([np.full((80, 80), 0.7)], [proposal], [truth])
    assert e.auroc == pytest.approx(0.5) and e.area == pytest.approx(0.5)


def test_error_detection_pools_images_and_respects_a_field_of_view() -> None:
    truth = np.zeros((10, 10), np.uint8)
    prop = truth.copy()
    prop[0, :5] = 1  # five false positives
    unc = np.zeros((10, 10))
    unc[0, :5] = 1.0
    unc[9, :] = 1.0  # confident-looking noise outside the field of view
    fov = np.ones((10, 10), bool)
    fov[9] = False
    e = error_detection([unc, unc], [prop, prop], [truth, truth], valid=[fov, None])
    assert e.per_image[0] == pytest.approx(1.0)
    assert e.per_image[1] < 1.0  # the last row counts there
    assert e.pixels == 190
    no_errors = error_detection([unc], [truth], [truth])
    assert math.isnan(no_errors.auroc) and math.isnan(no_errors.area)
    with pytest.raises(ValueError, match="shapes differ"):
        error_detection([unc], [prop[:5]], [truth])
