"""A model's watershed parameters, chosen on validation images (issue 13).

The post-processing of :mod:`napari_diffseg.core.instances` has a few numbers that no single value suits
every model and every kind of object: how sure the interior must be to seed an object, how much to smooth
it first, how small a seed may be. A short-budget model that leaves touching nuclei joined by a thin
bridge of interior wants a higher seed threshold (the bridge drops out, two seeds remain); one whose
glands come out with a ragged interior wants smoothing and a larger minimum seed (one seed per gland,
not five). StarDist chooses its probability and overlap thresholds on validation images after training
(``optimize_thresholds``) for the same reason; this is our counterpart.

:func:`tune_watershed` runs a **coordinate ascent** over :data:`GRID` from each of :data:`STARTS` (the
defaults, and a smoothed start with a larger smallest seed): each parameter in turn takes each of its values,
the others held, and a value is kept only when it raises the mean AP@0.5 over the images (the figure
``experiment`` reports); two passes; the best of the starts wins (the defaults' on a tie). That is about
sixty watershed runs per image instead of the grid's 700. Two starts because the parameters interact: from
the defaults alone the ascent stops at a local best on glands (GlaS validation AP@0.5 0.215, test 0.210),
where smoothing and a larger smallest seed only pay together (from the smoothed start: 0.273, test 0.249);
on nuclei both starts end at the same place. Only validation images may be used — never test
images, and never the images the model trained on, whose over-confident predictions would choose
parameters that do not carry to new images. With fewer than :data:`MIN_OBJECTS` true objects on them the
defaults are kept (too few to choose from without fitting noise), and the result says so.

What it bought on one model each (supervised students, 20 % labels, seed 0, ``cpu`` preset; parameters
chosen on the experiment's validation split, scored on the untouched test split): DSB 2018 nuclei AP@0.5
0.525 → 0.580; GlaS glands 0.174 → 0.249. README gives the sweep figures over seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..base.errors import DataError
from .instance_metrics import iou_matrix, match_counts
from .instances import Watershed, proposal_instances

__all__ = ["GRID", "MIN_OBJECTS", "STARTS", "Tuning", "mean_ap_50", "tune_watershed"]

#: The values each parameter may take (the defaults among them).
GRID: Mapping[str, tuple[float | int, ...]] = {
    "seed_threshold": (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    "threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "seed_sigma": (0.0, 1.0, 2.0, 4.0),
    "min_seed_size": (4, 16, 48, 128, 256),
}
#: Fewer true objects than this on the validation images: the defaults are kept.
MIN_OBJECTS = 20
#: Where the ascent starts: the defaults, and smoothed seeds of at least 48 px (module docstring: why two).
STARTS: tuple[Watershed, ...] = (Watershed(), Watershed(seed_sigma=2.0, min_seed_size=48))


@dataclass(frozen=True)
class Tuning:
    """What :func:`tune_watershed` chose, and on what."""

    params: Watershed
    ap_50: float
    """Mean AP@0.5 over the images with ``params``."""
    ap_50_start: float
    """... with the parameters it started from (the defaults unless given)."""
    images: int
    objects: int
    """True objects on the images."""
    runs: int
    """Parameter sets tried."""
    tuned: bool
    """False: too few objects, the start was kept without trying anything."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params.to_config(),
            "ap_50": self.ap_50,
            "ap_50_start": self.ap_50_start,
            "images": self.images,
            "objects": self.objects,
            "runs": self.runs,
            "tuned": self.tuned,
        }


def _ap_50(pred: np.ndarray, true: np.ndarray) -> float:
    tp, fp, fn = match_counts(iou_matrix(pred, true), 0.5)
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom


def mean_ap_50(probs: Sequence[np.ndarray], truths: Sequence[np.ndarray], params: Watershed) -> float:
    """Mean AP@0.5 over images of the objects ``params`` makes from ``probs`` (each ``(K, H, W)``, or a
    stack's ``(Z, K, H, W)``) against ``truths`` (object ids of the same ``(H, W)`` / ``(Z, H, W)``)."""
    scores = [_ap_50(proposal_instances(p, params), t) for p, t in zip(probs, truths, strict=True)]
    return float(np.mean(scores)) if scores else float("nan")


def tune_watershed(
    probs: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    *,
    start: Watershed | Sequence[Watershed] | None = None,
    grid: Mapping[str, Sequence[float | int]] = GRID,
    passes: int = 2,
    min_objects: int = MIN_OBJECTS,
) -> Tuning:
    """The watershed parameters with the best mean AP@0.5 on validation images (module docstring).

    Args:
        probs: Each image's class probabilities ``(K, H, W)`` (a stack: ``(Z, K, H, W)``).
        truths: Each image's true object ids, same spatial shape.
        start: Where the search starts (one or several; the first is what it keeps on a tie and reports
            as ``ap_50_start``): :data:`STARTS` when None.
        grid: The values of each :class:`~napari_diffseg.core.instances.Watershed` field to try.
        passes: Rounds over the fields (it stops early when a round changes nothing).
        min_objects: Fewer true objects than this: ``start`` is returned untried (``tuned`` False).

    Raises:
        DataError: ``probs`` and ``truths`` differ in number, or a grid names an unknown field.
    """
    if len(probs) != len(truths):
        raise DataError(f"tune_watershed: {len(probs)} probability maps for {len(truths)} truths")
    unknown = set(grid) - set(Watershed().to_config())
    if unknown:
        raise DataError(f"tune_watershed: unknown watershed parameter(s) {sorted(unknown)}")
    starts = list(STARTS if start is None else [start] if isinstance(start, Watershed) else start)
    if not starts:
        raise DataError("tune_watershed: no start given")
    objects = int(sum(np.unique(np.asarray(t)[np.asarray(t) > 0]).size for t in truths))
    if objects < min_objects or not probs:
        score = mean_ap_50(probs, truths, starts[0]) if probs else float("nan")
        return Tuning(starts[0], score, score, len(probs), objects, 1 if probs else 0, tuned=False)
    scores: dict[Watershed, float] = {}

    def score_of(w: Watershed) -> float:  # each parameter set is scored once, whichever start reaches it
        if w not in scores:
            scores[w] = mean_ap_50(probs, truths, w)
        return scores[w]

    start_score = score_of(starts[0])
    winner, winner_score = starts[0], start_score
    for first in starts:
        best, best_score = first, score_of(first)
        for _ in range(max(1, passes)):
            changed = False
            for name, values in grid.items():
                for value in values:
                    candidate = replace(best, **{name: value})  # type: ignore[arg-type]
                    if candidate == best:
                        continue
                    score = score_of(candidate)
                    if score > best_score + 1e-9:
                        best, best_score, changed = candidate, score, True
            if not changed:
                break
        if best_score > winner_score + 1e-9:
            winner, winner_score = best, best_score
    return Tuning(winner, winner_score, start_score, len(probs), objects, len(scores), tuned=True)
