"""The teacher's per-pixel uncertainty: its fixed scale, how it is shown, and how well it finds errors.

**The scale** (the same in the Annotate widget, the report and the API): the normalised entropy of the
mean of the E masks the teacher samples for an image, ``H(p̄) / log K`` in ``[0, 1]``. For a binary task
it is the entropy in **bits**: 0 = every sample says the same with certainty, 1 = the samples' mean
foreground probability is 0.5 (they disagree as much as they can). It is never rescaled per image, so a
value means the same on every image and for every model.

**The display** colours only pixels at or above a threshold (default :data:`DEFAULT_THRESHOLD` = 0.5
bit: a mean foreground probability between 0.11 and 0.89); the rest stays transparent, so the image and
the proposal remain visible. :func:`summarize_map` says what share of an image is coloured and whether
the map carries information at all: a young model is unsure almost everywhere, and a map that is bright
everywhere points at nothing.

**What it is worth** (:func:`error_detection`): on images whose truth is known, how well the uncertainty
ranks the proposal's wrong pixels above its right ones: the area under the ROC curve (0.5 = no better than
chance, 1 = every wrong pixel more uncertain than every right one), and the *error-detection curve*: the
share of the proposal's wrong pixels found when the annotator inspects the most uncertain pixels first,
against the share of the image inspected (the diagonal is inspecting in random order).

numpy only: used by the widgets (through :mod:`napari_diffseg.review`), the report and the benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLD",
    "FLAT_MESSAGE",
    "LEGEND",
    "SCALE",
    "ErrorDetection",
    "MapSummary",
    "binary_entropy",
    "error_detection",
    "probability_band",
    "summarize_map",
]

SCALE = (0.0, 1.0)
"""The uncertainty's fixed range (normalised entropy; bits for a binary task)."""
DEFAULT_THRESHOLD = 0.5
"""Pixels at or above this uncertainty are coloured (0.5 bit: mean foreground probability 0.11–0.89)."""
FLAT_SPREAD = 0.1
"""A map whose 5th-95th percentile spread is below this carries no information about where errors are."""
FLAT_COVERAGE = 0.9
"""... nor does one that colours at least this share of the image."""
BROAD_COVERAGE = 0.5
"""A map that colours more than this share points at no single error: the summary says so."""
LEGEND = (
    "bright = the teacher disagrees with itself (its sampled masks differ): check there first. "
    "Scale 0–1 bit, the same for every image."
)
FLAT_MESSAGE = (
    "this model is not trained enough for its uncertainty to mean anything: the map is nearly the "
    "same everywhere. Train (more) before trusting it; the proposal may still be worth correcting."
)


def binary_entropy(p: float) -> float:
    """Entropy in bits of a foreground probability ``p``."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def probability_band(threshold: float) -> tuple[float, float]:
    """The mean foreground probabilities whose binary entropy is at least ``threshold`` bits: ``(p, 1 - p)``."""
    if threshold <= 0.0:
        return 0.0, 1.0
    if threshold >= 1.0:
        return 0.5, 0.5
    lo, hi = 0.0, 0.5
    for _ in range(60):  # binary_entropy rises on [0, 0.5]
        mid = (lo + hi) / 2
        if binary_entropy(mid) < threshold:
            lo = mid
        else:
            hi = mid
    return hi, 1.0 - hi


@dataclass(frozen=True)
class MapSummary:
    """What one uncertainty map says, for the status line under the layer.

    Attributes:
        mean: Mean uncertainty (the image's score in the table and for ``/next``).
        coloured: Share of pixels at or above the threshold (what the layer colours).
        spread: 95th minus 5th percentile.
        flat: The map carries no information about where the errors are (see :data:`FLAT_MESSAGE`).
        threshold: The threshold ``coloured`` was counted at.
        broad: Not flat, but more than :data:`BROAD_COVERAGE` of the image is coloured: the teacher is
            unsure over most of it, so the map cannot single out errors at this threshold.
    """

    mean: float
    coloured: float
    spread: float
    flat: bool
    threshold: float
    broad: bool = False

    def text(self) -> str:
        """One line: how much is coloured, and the flat-map warning when it applies."""
        if self.flat:
            return (
                f"uncertainty: mean {self.mean:.2f} bit, {100 * self.coloured:.0f} % coloured; "
                + FLAT_MESSAGE
            )
        if self.coloured == 0.0:
            return (
                f"uncertainty: mean {self.mean:.2f} bit; no pixel reaches {self.threshold:.2f} bit: the "
                "teacher is sure everywhere (lower the threshold to see its least sure regions)."
            )
        text = (
            f"uncertainty: {100 * self.coloured:.1f} % of the image at ≥ {self.threshold:.2f} bit "
            f"(mean {self.mean:.2f} bit)"
        )
        if self.broad:
            return f"{text}: unsure over most of the image, it cannot single out errors yet."
        return text + "."


def summarize_map(uncertainty: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> MapSummary:
    """Summarise an uncertainty map (any shape, values on :data:`SCALE`); NaN pixels are ignored.

    The map is *flat* when its 5th–95th percentile spread is under :data:`FLAT_SPREAD` while most of
    it is uncertain, or when at least :data:`FLAT_COVERAGE` of it is at or above the threshold: it then
    cannot point at the proposal's errors. A map that is low everywhere is not flat in this sense: it
    says the teacher is sure (:meth:`MapSummary.text` says so).
    """
    values = np.asarray(uncertainty, dtype=np.float32).ravel()
    values = values[np.isfinite(values)]
    if not values.size:
        return MapSummary(float("nan"), 0.0, 0.0, True, threshold)
    p5, p95 = (float(v) for v in np.percentile(values, [5, 95]))
    mean = float(values.mean())
    coloured = float(np.count_nonzero(values >= threshold)) / values.size
    spread = p95 - p5
    flat = coloured >= FLAT_COVERAGE or (spread < FLAT_SPREAD and mean >= threshold)
    return MapSummary(mean, coloured, spread, flat, threshold, broad=not flat and coloured > BROAD_COVERAGE)


@dataclass(frozen=True)
class ErrorDetection:
    """How well uncertainty finds a proposal's wrong pixels (pooled over the images given).

    Attributes:
        auroc: Probability that a random wrong pixel is more uncertain than a random right one (ties
            count half); 0.5 = chance. NaN when there is no wrong or no right pixel.
        inspected, found: The error-detection curve: after inspecting the ``inspected`` share of pixels,
            most uncertain first, the ``found`` share of the wrong pixels has been seen (both from 0 to 1).
        area: Area under that curve (0.5 = random inspection order; the best possible is
            ``1 - error_rate / 2``).
        error_rate: Share of pixels the proposal has wrong.
        pixels: Pixels scored.
        at_threshold: ``(share of pixels coloured, share of wrong pixels among them)`` at each threshold
            asked for.
        per_image: AUROC of each image, in the order given.
    """

    auroc: float
    inspected: list[float]
    found: list[float]
    area: float
    error_rate: float
    pixels: int
    at_threshold: dict[float, tuple[float, float]] = field(default_factory=dict)
    per_image: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "auroc": self.auroc,
            "area": self.area,
            "error_rate": self.error_rate,
            "pixels": self.pixels,
            "at_threshold": {f"{t:g}": list(v) for t, v in self.at_threshold.items()},
            "per_image_auroc": self.per_image,
            "curve": {"inspected": self.inspected, "found": self.found},
        }


def _auroc(scores: np.ndarray, wrong: np.ndarray) -> float:
    """Mann-Whitney AUROC of ``scores`` separating ``wrong`` (True) from right pixels; ties count half."""
    n_wrong = int(np.count_nonzero(wrong))
    n_right = wrong.size - n_wrong
    if n_wrong == 0 or n_right == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # average ranks over ties (1-based)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks = np.repeat(avg, counts)
    rank_sum = float(ranks[wrong[order]].sum())
    return (rank_sum - n_wrong * (n_wrong + 1) / 2.0) / (n_wrong * n_right)


def _curve(scores: np.ndarray, wrong: np.ndarray, points: int) -> tuple[list[float], list[float], float]:
    """Error-detection curve (most uncertain first; tied pixels are inspected together) and its area."""
    n = scores.size
    n_wrong = int(np.count_nonzero(wrong))
    if n == 0 or n_wrong == 0:
        return [0.0, 1.0], [0.0, 1.0], float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    hits = np.cumsum(wrong[order])
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each run of equal scores
    x = np.r_[0.0, (ends + 1) / n]
    y = np.r_[0.0, hits[ends] / n_wrong]
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))  # trapezoids
    if x.size > points:  # thin for plotting; the area above uses every point
        keep = np.unique(np.r_[np.searchsorted(x, np.linspace(0, 1, points)), x.size - 1])
        x, y = x[keep], y[keep]
    return [float(v) for v in x], [float(v) for v in y], area


def error_detection(
    uncertainties: Sequence[np.ndarray],
    proposals: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    *,
    valid: Sequence[np.ndarray | None] | None = None,
    thresholds: Sequence[float] = (DEFAULT_THRESHOLD,),
    points: int = 201,
    binary: bool = True,
) -> ErrorDetection:
    """Score uncertainty maps as detectors of their proposals' errors, pooled over images.

    Args:
        uncertainties: (H, W) maps on :data:`SCALE`.
        proposals: (H, W) proposed label maps.
        truths: (H, W) true label maps.
        valid: Optional (H, W) boolean masks of the pixels to score (e.g. a field of view); None = all.
        thresholds: Display thresholds to report ``at_threshold`` for.
        points: Points kept of the curve (for plotting).
        binary: A pixel is wrong when proposal and truth disagree on foreground (> 0); False: when their
            labels differ.
    """
    if not (len(uncertainties) == len(proposals) == len(truths)):
        raise ValueError("error_detection needs as many uncertainty maps as proposals and truths")
    valid = list(valid) if valid is not None else [None] * len(truths)
    all_scores, all_wrong, per_image = [], [], []
    for unc, prop, truth, ok in zip(uncertainties, proposals, truths, valid, strict=True):
        unc, prop, truth = np.asarray(unc), np.asarray(prop), np.asarray(truth)
        if not (unc.shape == prop.shape == truth.shape):
            raise ValueError(
                f"shapes differ: uncertainty {unc.shape}, proposal {prop.shape}, truth {truth.shape}"
            )
        wrong = ((prop > 0) != (truth > 0)) if binary else (prop != truth)
        keep = np.isfinite(unc) if ok is None else (np.asarray(ok, bool) & np.isfinite(unc))
        scores, wrong = unc[keep].astype(np.float64), wrong[keep]
        per_image.append(_auroc(scores, wrong))
        all_scores.append(scores)
        all_wrong.append(wrong)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    wrong = np.concatenate(all_wrong) if all_wrong else np.zeros(0, bool)
    inspected, found, area = _curve(scores, wrong, points)
    n_wrong = int(np.count_nonzero(wrong))
    at: dict[float, tuple[float, float]] = {}
    for t in thresholds:
        flagged = scores >= t
        at[float(t)] = (
            float(flagged.mean()) if scores.size else float("nan"),
            float(np.count_nonzero(flagged & wrong)) / n_wrong if n_wrong else float("nan"),
        )
    return ErrorDetection(
        auroc=_auroc(scores, wrong),
        inspected=inspected,
        found=found,
        area=area,
        error_rate=n_wrong / scores.size if scores.size else float("nan"),
        pixels=int(scores.size),
        at_threshold=at,
        per_image=per_image,
    )
