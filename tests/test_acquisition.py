"""Acquisition: which unreviewed images the annotator sees next (top-b uncertainty or a power draw)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_diffseg.base.errors import ConfigError
from napari_diffseg.core.acquisition import acquire


def test_uncertainty_is_top_b_with_ties_in_order_and_unscored_last() -> None:
    scores = [0.2, None, 0.5, 0.2, 0.9, None]
    assert acquire(scores, 3) == [4, 2, 0]
    assert acquire(scores, 10) == [4, 2, 0, 3, 1, 5]  # ties keep their order; no score goes last
    assert acquire(scores, 0) == [] and acquire([], 3) == []


def test_power_draws_in_proportion_to_the_score() -> None:
    scores = [0.1, 0.2, 0.7]
    rng = np.random.default_rng(0)
    picks = np.bincount([acquire(scores, 1, "power", rng=rng)[0] for _ in range(20000)], minlength=3)
    np.testing.assert_allclose(picks / picks.sum(), scores, atol=0.015)
    # beta sharpens the draw: u**4 puts ~99.6 % of the mass on the 0.7 image
    sharp = [acquire(scores, 1, "power", beta=4.0, rng=rng)[0] for _ in range(2000)]
    assert np.mean(np.asarray(sharp) == 2) > 0.98


def test_power_is_a_sample_without_replacement_and_seeded() -> None:
    scores = [0.3, 0.05, None, 0.4, 0.0, 0.25]
    a = acquire(scores, 4, "power", rng=np.random.default_rng(7))
    b = acquire(scores, 4, "power", rng=np.random.default_rng(7))
    assert a == b and len(set(a)) == 4 and 2 not in a  # unscored only after every scored image
    assert sorted(acquire(scores, 6, "power", rng=np.random.default_rng(1))) == list(range(6))
    assert acquire(scores, 6, "power", rng=np.random.default_rng(1))[-1] == 2
    # different seeds give different batches (the draw is not secretly top-b)
    batches = {tuple(acquire(scores, 2, "power", rng=np.random.default_rng(s))) for s in range(30)}
    assert len(batches) > 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "bald"}, "unknown acquisition strategy 'bald'"),
        ({"b": -1}, "b must be >= 0"),
        ({"strategy": "power", "beta": 0.0}, "beta must be a positive number"),
        ({"strategy": "power", "beta": float("nan")}, "beta must be a positive number"),
    ],
)
def test_bad_arguments_say_what_to_do(kwargs: dict, match: str) -> None:
    args = {"scores": [0.1, 0.2], "b": 1, **kwargs}
    with pytest.raises(ConfigError, match=match):
        acquire(**args)


def test_a_nan_score_is_refused() -> None:
    with pytest.raises(ConfigError, match="re-run the proposals"):
        acquire([0.1, float("nan")], 1)
