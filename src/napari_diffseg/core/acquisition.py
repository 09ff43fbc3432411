"""Which unreviewed images to show the annotator next (active-learning acquisition).

Two strategies, both driven by the teacher's per-image uncertainty (the mean of the proposal's
normalised-entropy map, docs/method.md "Stage B"):

- ``"uncertainty"`` (the method's default): the ``b`` most uncertain images. It fixes the worst
  pseudo-labels first, but on a young model these are also the atypical images whose proposals are
  mostly wrong, so each correction costs nearly as much as drawing the mask (benchmarks/hitl.py).
- ``"power"``: stochastic power acquisition (Kirsch et al., "Stochastic Batch Acquisition: A Simple
  Baseline for Deep Active Learning", TMLR 2023): draw ``b`` images without replacement with probability
  proportional to ``uncertainty ** beta``. Uncertain images stay the likeliest picks, but a batch is no
  longer made only of outliers. ``beta = 1`` is the paper's default and ours; ``beta -> inf`` is top-b.

The draw uses the Gumbel-top-k trick (Kool et al. 2019): ``argtopk(beta * log u + Gumbel noise)`` is a
sample without replacement proportional to ``u ** beta``. Images without an uncertainty (no proposal
yet) rank after every scored image, in their given order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..base.errors import ConfigError

STRATEGIES = ("uncertainty", "power")
DEFAULT_BETA = 1.0
_FLOOR = 1e-12  # a zero uncertainty keeps a (tiny) chance instead of log(0)


def check_strategy(strategy: str) -> None:
    """Raise ConfigError naming the strategies when ``strategy`` is not one of them."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown acquisition strategy {strategy!r}: use one of {', '.join(STRATEGIES)}.")


def acquire(
    scores: Sequence[float | None],
    b: int,
    strategy: str = "uncertainty",
    *,
    beta: float = DEFAULT_BETA,
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Indices of the ``b`` images to review, in review order.

    Args:
        scores: Per-image uncertainty in [0, 1]; None for an image without a proposal.
        b: How many to pick (fewer when there are fewer images).
        strategy: ``"uncertainty"`` (top-b, ties by position) or ``"power"`` (sampled ∝ score**beta).
        beta: The power for ``"power"``; must be > 0.
        rng: Random generator for ``"power"`` (a fresh unseeded one when None).

    Raises:
        ConfigError: unknown strategy, ``b < 0``, ``beta <= 0`` or a score that is not finite.
    """
    check_strategy(strategy)
    if b < 0:
        raise ConfigError(f"cannot pick {b} images: b must be >= 0.")
    if not (np.isfinite(beta) and beta > 0):
        raise ConfigError(f"beta must be a positive number, got {beta!r}.")
    scored = [i for i, s in enumerate(scores) if s is not None]
    unscored = [i for i, s in enumerate(scores) if s is None]
    values = np.asarray([scores[i] for i in scored], dtype=np.float64)
    if values.size and not np.isfinite(values).all():
        raise ConfigError("an uncertainty score is NaN or infinite: re-run the proposals for these images.")
    if strategy == "uncertainty":
        # stable sort on -score: ties keep the given order
        order = [scored[j] for j in np.argsort(-values, kind="stable")]
    else:
        rng = rng if rng is not None else np.random.default_rng()
        keys = beta * np.log(np.clip(values, _FLOOR, None)) + rng.gumbel(size=values.size)
        order = [scored[j] for j in np.argsort(-keys, kind="stable")]
    return (order + unscored)[:b]
