"""Instances ↔ the 3-class target the networks learn, and back (issue 13).

**The target.** An instance label image (0 = background, each object its own id) becomes a class map
with ``K = 3``: 0 background, 1 object interior, 2 object boundary. The boundary is each object's own
**inner rim, 2 pixels thick** (:data:`BOUNDARY_WIDTH`): the pixels of the object within 2 steps
(4-connected) of a pixel that is not the object — background, another object's id; the image's edge
does not count, so an object cut by the edge has no rim there. Why 2: where two objects touch, their
interiors are then 4 pixels apart, which a network's softened prediction still separates; a 1-pixel
rim leaves 2 pixels, often blurred shut, and touching nuclei merge. Thicker rims would swallow the
small objects (DSB's smallest nuclei are ~25 pixels, ~3 pixels in radius). An object too small to keep
any interior under its rim keeps its whole area as interior, so every object still has a seed. (The
shared ``classes_012.png`` case uses the same 2-pixel inner rim.)

**Back to instances** (:func:`probs_to_instances`). From the 3 class probabilities ``p``, with the
parameters of a :class:`Watershed` (the defaults in brackets; a model may carry its own, chosen on
validation images by :func:`napari_diffseg.core.instance_tuning.tune_watershed`):

1. foreground = ``p_interior + p_boundary > threshold`` (0.5: the background class is not the most likely);
2. seeds = connected (4-connected) pieces of confident interior, ``p_interior > seed_threshold`` (0.5)
   after a Gaussian smoothing of ``seed_sigma`` pixels (0: none; it joins the pieces of a large object's
   ragged interior into one seed), of at least ``min_seed_size`` (:data:`MIN_SEED_SIZE`) pixels;
3. a seeded watershed (scikit-image) on ``1 − p_interior`` floods the foreground from the seeds, so the
   boundary pixels are shared out between the objects they separate;
4. foreground pieces that no seed reached (an object predicted as boundary only) become objects too;
5. objects under ``min_size`` (:data:`MIN_OBJECT_SIZE`) pixels (16: a 4 × 4 square; the smallest DSB
   nucleus is ~23) are removed (set to background) and ids renumbered 1..N, uint16 (uint32 beyond 65,535 objects).

**Objects of several classes** (a project of task ``instances`` with classes ``background, nucleus,
mitosis, ...``: ``n`` object classes). The target then has ``K = n + 2`` classes: 0 background, 2 the
boundary (shared by every class: a rim separates objects whatever their class), and the interior of object
class ``c`` at channel :func:`interior_channel` ``(c)`` = 1 for ``c = 1`` and ``c + 1`` beyond — so a
one-class project keeps the 3-class target above, and its models, unchanged. Post-processing sums the
interior channels into one interior probability and runs the same watershed (objects are found whatever
their class); each object's class is then the object class whose interior probability, summed over the
object's pixels, is largest (:func:`classify_objects`) — one class per object, never a patchwork. An
annotation's classes come as a map ``{object id: class}`` (``1..n``), made in the backend from a class map
painted beside the ids (:func:`napari_diffseg.base.masks.object_classes_from_map`: the majority class
under each object).

**Z-stacks** (:func:`stack_instances`). The networks are 2D and see one plane at a time, but a nucleus spans
several planes, and counting it once per plane would count it several times. A stack's ``(Z, 3, H, W)``
probabilities are therefore post-processed as one volume: the same five steps with 3D face connectivity
(a voxel touches its 4 in-plane neighbours and the voxels directly above and below it — nothing is
resampled, so a coarse Z step links only what overlaps from one plane to the next), so one object keeps one
id through the planes it crosses. Sizes are then in voxels. A stack of more than :data:`LINK_MAX_VOXELS`
voxels (the backend's upload limit) is done plane by plane instead, ids offset so that no two objects share
one, to bound the watershed's memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..base.errors import DataError

__all__ = [
    "BACKGROUND",
    "BOUNDARY",
    "BOUNDARY_WIDTH",
    "INSTANCE_CLASSES",
    "INTERIOR",
    "MIN_OBJECT_SIZE",
    "MIN_SEED_SIZE",
    "Watershed",
    "class_map",
    "classify_objects",
    "instance_channels",
    "instances_to_target",
    "interior_channel",
    "labels_to_instances",
    "object_classes_of",
    "probs_to_instances",
    "proposal_instances",
    "stack_instances",
]

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
#: Classes of the instance target (background, interior, boundary).
INSTANCE_CLASSES = 3
#: Thickness in pixels of each object's inner rim (module docstring: why 2).
BOUNDARY_WIDTH = 2
#: Interior pieces smaller than this (pixels) do not seed an object.
MIN_SEED_SIZE = 4
#: Objects smaller than this (pixels) are removed from the post-processed instances.
MIN_OBJECT_SIZE = 16
#: Stacks up to this many voxels are post-processed as one volume (objects linked across planes).
LINK_MAX_VOXELS = 2**26


@dataclass(frozen=True)
class Watershed:
    """The post-processing's parameters (module docstring, steps 1, 2 and 5). The defaults are the fixed
    choice every model used before models carried their own; a model's ``config.json`` may hold others
    under ``"watershed"`` (chosen on validation images, :mod:`napari_diffseg.core.instance_tuning`)."""

    threshold: float = 0.5
    """Foreground: ``p_interior + p_boundary > threshold``."""
    seed_threshold: float = 0.5
    """Seeds: the (smoothed) interior probability above this."""
    seed_sigma: float = 0.0
    """Gaussian smoothing (pixels, in-plane) of the interior probability before seeding; 0: none."""
    min_seed_size: int = MIN_SEED_SIZE
    """Seeds smaller than this (pixels, voxels in a stack) are dropped."""
    min_size: int = MIN_OBJECT_SIZE
    """Objects smaller than this are removed."""

    def __post_init__(self) -> None:
        for name in ("threshold", "seed_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 < float(v) < 1.0):
                raise DataError(f"watershed {name} must be a probability in (0, 1), got {v!r}")
        if not (isinstance(self.seed_sigma, (int, float)) and 0.0 <= float(self.seed_sigma) <= 50.0):
            raise DataError(f"watershed seed_sigma must be 0...50 pixels, got {self.seed_sigma!r}")
        for name in ("min_seed_size", "min_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DataError(f"watershed {name} must be a whole number of pixels >= 1, got {v!r}")

    def to_config(self) -> dict[str, float | int]:
        """The parameters as a JSON object (a model's ``config.json`` ``"watershed"``)."""
        return asdict(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> Watershed:
        """The parameters a model's config holds under ``"watershed"``; the defaults where it has none.

        Raises:
            DataError: Unknown keys or values out of range (the model folder was edited by hand).
        """
        raw = (config or {}).get("watershed")
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise DataError(f"a model's watershed parameters must be a JSON object, got {raw!r}")
        return cls().with_overrides(raw)

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> Watershed:
        """These parameters with those of ``overrides`` (a JSON object: some or all of the fields; a whole
        number such as ``48.0`` is taken as ``48``) in their place.

        Raises:
            DataError: Not an object, unknown keys, or values out of range (each message says the range).
        """
        if not overrides:
            return self
        if not isinstance(overrides, Mapping):
            raise DataError(f"watershed parameters must be a JSON object, got {overrides!r}")
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise DataError(f"unknown watershed parameter(s) {unknown}; known: {sorted(known)}")
        values = dict(overrides)
        for name in ("min_seed_size", "min_size"):
            v = values.get(name)
            if isinstance(v, float) and v.is_integer():
                values[name] = int(v)
        return replace(self, **values)

    def __str__(self) -> str:
        return (
            f"foreground > {self.threshold:g}, seeds > {self.seed_threshold:g}"
            + (f" after smoothing σ = {self.seed_sigma:g} px" if self.seed_sigma else "")
            + f", seeds ≥ {self.min_seed_size} px, objects ≥ {self.min_size} px"
        )


def _params(
    params: Watershed | None, min_size: int | None, min_seed_size: int | None, threshold: float | None
) -> Watershed:
    """``params`` (the defaults when None) with the single parameters given by keyword; ``threshold`` alone
    sets both the foreground's and the seeds' (what it meant before they were two)."""
    w = params if params is not None else Watershed()
    if threshold is not None:
        w = replace(w, threshold=threshold, seed_threshold=threshold)
    if min_size is not None:
        w = replace(w, min_size=min_size)
    if min_seed_size is not None:
        w = replace(w, min_seed_size=min_seed_size)
    return w


def instance_channels(object_classes: int = 1) -> int:
    """Output classes of an instance model with ``object_classes`` object classes: ``object_classes + 2``."""
    if object_classes < 1:
        raise DataError(f"an instance task has at least one object class, got {object_classes}")
    return int(object_classes) + 2


def object_classes_of(num_classes: int) -> int:
    """Object classes of an instance model with ``num_classes`` outputs (3 → 1, 4 → 2, ...).

    Raises:
        DataError: Fewer than 3 outputs (not an instance model).
    """
    if num_classes < INSTANCE_CLASSES:
        raise DataError(
            f"an instance model has at least 3 output classes (background, interior, boundary), got {num_classes}"
        )
    return int(num_classes) - 2


def interior_channel(object_class: int) -> int:
    """The target channel of object class ``object_class``'s interior (1 → 1, 2 → 3, 3 → 4, ...)."""
    if object_class < 1:
        raise DataError(f"object classes are numbered from 1, got {object_class}")
    return INTERIOR if object_class == 1 else int(object_class) + 1


def _interior_channels(num_classes: int) -> list[int]:
    return [interior_channel(c) for c in range(1, object_classes_of(num_classes) + 1)]


def _check_ids(instances: np.ndarray) -> np.ndarray:
    a = np.asarray(instances)
    if a.ndim != 2:
        raise DataError(f"an instance label image must be 2D (H, W), got shape {a.shape}")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"an instance label image must hold integer ids, got {a.dtype}")
    if a.size and a.min() < 0:
        raise DataError(f"an instance label image holds negative ids (min {a.min()})")
    return a.astype(np.int64, copy=False)


def _rim(ids: np.ndarray) -> np.ndarray:
    """Pixels of an object with a 4-neighbour of another id (the image's edge is not a neighbour)."""
    out = np.zeros(ids.shape, bool)
    diff_v = ids[1:, :] != ids[:-1, :]
    diff_h = ids[:, 1:] != ids[:, :-1]
    out[1:, :] |= diff_v
    out[:-1, :] |= diff_v
    out[:, 1:] |= diff_h
    out[:, :-1] |= diff_h
    return out & (ids > 0)


def instances_to_target(
    instances: np.ndarray,
    boundary_width: int = BOUNDARY_WIDTH,
    classes: Mapping[int, int] | None = None,
) -> np.ndarray:
    """Instance ids ``(H, W)`` (any non-negative integers, 0 = background) → the target, uint8:
    0 background, 1 interior, 2 an object's inner rim ``boundary_width`` pixels thick.

    With ``classes`` (``{object id: class}``, classes ``1..n``; module docstring) an object of class ``c``
    has its interior at :func:`interior_channel` ``(c)``; the rim stays 2 whatever the class.

    Raises:
        DataError: Not a 2D integer array, negative ids, or an object without a class in ``classes``.
    """
    ids = _check_ids(instances)
    if boundary_width < 1:
        raise DataError(f"boundary_width must be >= 1, got {boundary_width}")
    target = (ids > 0).astype(np.uint8)
    remaining = ids.copy()
    boundary = np.zeros(ids.shape, bool)
    for _ in range(boundary_width):  # peel one 4-connected ring per object per pass
        ring = _rim(remaining)
        boundary |= ring
        remaining[ring] = 0
    target[boundary] = BOUNDARY
    # an object with no interior left under its rim keeps its whole area as interior (a seed)
    present = np.unique(ids[ids > 0])
    if present.size:
        has_interior = np.zeros(int(ids.max()) + 1, bool)
        has_interior[np.unique(remaining[remaining > 0])] = True
        lost = present[~has_interior[present]]
        if lost.size:
            target[np.isin(ids, lost)] = INTERIOR
    if classes is not None and present.size:
        lut = np.zeros(int(ids.max()) + 1, np.uint8)
        for obj in present:
            c = classes.get(int(obj))
            if c is None:
                raise DataError(f"object {int(obj)} has no class; every object of the mask needs one")
            lut[obj] = interior_channel(int(c))
        interior = target == INTERIOR
        target[interior] = lut[ids[interior]]
    return target


def _renumber(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Remove objects under ``min_size`` pixels and number the rest 1..N (uint16, uint32 if N > 65535)."""
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(1, min_size)
    keep[0] = False
    new_ids = np.zeros(sizes.size, np.int64)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1)
    out = new_ids[labels]
    return out.astype(np.uint16 if out.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32)


def _seeded_watershed(interior: np.ndarray, boundary: np.ndarray, w: Watershed) -> np.ndarray:
    """Steps 1-5 of the module docstring on interior / boundary probabilities of any dimension (2D: an
    image, 3D: a stack: smoothed in-plane only), face-connected."""
    from skimage.segmentation import watershed

    face = ndi.generate_binary_structure(interior.ndim, 1)
    foreground = (interior + boundary) > w.threshold
    seed_map = interior
    if w.seed_sigma > 0:
        sigma = [0.0] * (interior.ndim - 2) + [float(w.seed_sigma)] * 2
        seed_map = ndi.gaussian_filter(interior, sigma)
    seeds, n = ndi.label((seed_map > w.seed_threshold) & foreground, structure=face)
    if n:
        sizes = np.bincount(seeds.ravel())
        small = sizes < w.min_seed_size
        small[0] = False
        seeds[small[seeds]] = 0
    labels = watershed(1.0 - interior, markers=seeds, mask=foreground, connectivity=1)
    # foreground that no seed reached (an object predicted as boundary only) is an object of its own
    rest, n_rest = ndi.label(foreground & (labels == 0), structure=face)
    if n_rest:
        labels = np.where(rest > 0, rest + labels.max(initial=0), labels)
    return _renumber(labels.astype(np.int64), w.min_size)


def probs_to_instances(
    probs: np.ndarray,
    params: Watershed | None = None,
    *,
    min_size: int | None = None,
    min_seed_size: int | None = None,
    threshold: float | None = None,
) -> np.ndarray:
    """Class probabilities ``(K, H, W)`` (background, interior, boundary[, interiors of further object
    classes]) → instance ids ``(H, W)`` by a seeded watershed (module docstring; the interior channels are
    summed) with ``params`` (the defaults when None; a keyword given overrides its field, ``threshold``
    both thresholds). Returns uint16 (uint32 beyond 65,535 objects).

    Raises:
        DataError: Not a ``(K, H, W)`` array with K >= 3.
    """
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 3 or p.shape[0] < INSTANCE_CLASSES:
        raise DataError(
            f"instance post-processing needs (K, H, W) class probabilities, K >= 3, got {p.shape}"
        )
    return _seeded_watershed(
        _interior(p, 0), p[BOUNDARY], _params(params, min_size, min_seed_size, threshold)
    )


def _interior(p: np.ndarray, axis: int) -> np.ndarray:
    """The summed interior probability of every object class (``axis``: the class axis)."""
    chans = _interior_channels(p.shape[axis])
    out = np.take(p, chans[0], axis=axis).astype(np.float32)
    for c in chans[1:]:
        out = out + np.take(p, c, axis=axis)
    return out


def classify_objects(instances: np.ndarray, probs: np.ndarray) -> dict[int, int]:
    """Each object's class ``{id: class}`` (``1..n``): the object class whose interior probability,
    summed over the object's pixels, is largest (module docstring). ``instances`` is ``(H, W)`` with
    ``probs`` ``(K, H, W)``, or a stack's ``(Z, H, W)`` with ``(Z, K, H, W)``. With one object class
    (K = 3) every object is class 1.

    Raises:
        DataError: Shapes that do not match.
    """
    ids = np.asarray(instances)
    p = np.asarray(probs)
    axis = 0 if p.ndim == 3 else 1
    if p.ndim not in (3, 4) or ids.ndim != p.ndim - 1 or np.delete(p.shape, axis).tolist() != list(ids.shape):
        raise DataError(f"classify_objects: instances {ids.shape} do not match probabilities {p.shape}")
    present = np.unique(ids[ids > 0]).astype(np.int64)
    if not present.size:
        return {}
    chans = _interior_channels(p.shape[axis])
    if len(chans) == 1:
        return {int(i): 1 for i in present}
    scores = np.stack(
        [ndi.sum_labels(np.take(p, c, axis=axis).astype(np.float64), ids, present) for c in chans]
    )
    return {int(i): int(c) + 1 for i, c in zip(present, scores.argmax(axis=0), strict=True)}


def class_map(instances: np.ndarray, classes: Mapping[int, int]) -> np.ndarray:
    """The per-pixel class (uint8, 0 = background) of instance ids coloured by ``{id: class}``; an id
    without a class is 0."""
    ids = np.asarray(instances).astype(np.int64)
    lut = np.zeros(int(ids.max(initial=0)) + 1, np.uint8)
    for obj, c in classes.items():
        if 0 < int(obj) < lut.size:
            lut[int(obj)] = int(c)
    return lut[ids]


def stack_instances(
    probs: np.ndarray,
    params: Watershed | None = None,
    *,
    min_size: int | None = None,
    min_seed_size: int | None = None,
    threshold: float | None = None,
    link_max_voxels: int = LINK_MAX_VOXELS,
) -> np.ndarray:
    """A z-stack's class probabilities ``(Z, K, H, W)`` (K >= 3) → instance ids ``(Z, H, W)``, objects linked
    across planes (one id per object through the planes it crosses; module docstring). Beyond
    ``link_max_voxels`` plane by plane, each plane's ids offset by the largest id of the planes before it.
    uint16 (uint32 beyond 65,535 objects).

    Raises:
        DataError: Not a ``(Z, 3, H, W)`` array.
    """
    p = np.asarray(probs)
    if p.ndim != 4 or p.shape[1] < INSTANCE_CLASSES:
        raise DataError(f"a stack's instance post-processing needs (Z, K, H, W) probabilities, got {p.shape}")
    w = _params(params, min_size, min_seed_size, threshold)
    if p.shape[0] * p.shape[2] * p.shape[3] <= link_max_voxels:
        return _seeded_watershed(_interior(p, 1), p[:, BOUNDARY].astype(np.float32), w)
    planes, offset = [], 0
    for plane in p:
        ids = probs_to_instances(plane, w).astype(np.int64)
        ids = np.where(ids > 0, ids + offset, 0)
        offset = int(ids.max(initial=offset))
        planes.append(ids)
    out = np.stack(planes)
    return out.astype(np.uint16 if out.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32)


def labels_to_instances(
    classes: np.ndarray, min_size: int = MIN_OBJECT_SIZE, num_classes: int = INSTANCE_CLASSES
) -> np.ndarray:
    """A hard target map ``(H, W)`` (e.g. the argmax of a prediction, ``num_classes`` classes) →
    instances, by the same watershed with one-hot probabilities."""
    c = np.asarray(classes)
    onehot = np.stack([c == k for k in range(num_classes)]).astype(np.float32)
    return probs_to_instances(onehot, min_size=min_size)


def proposal_instances(probs: np.ndarray, params: Watershed | None = None) -> np.ndarray:
    """:func:`probs_to_instances` of a proposal: ``(K, H, W)`` → ``(H, W)``; a z-stack's ``(Z, K, H, W)`` →
    ``(Z, H, W)`` by :func:`stack_instances` (objects linked across planes); with the ``params`` of the
    model that proposed it. uint16 (uint32 beyond 65,535 objects).

    Raises:
        DataError: Not 3-class probabilities.
    """
    p = np.asarray(probs)
    if p.ndim == 3:
        return probs_to_instances(p, params)
    if p.ndim != 4:
        raise DataError(f"a proposal is (K, H, W) or (Z, K, H, W) probabilities, got shape {p.shape}")
    return stack_instances(p, params)
