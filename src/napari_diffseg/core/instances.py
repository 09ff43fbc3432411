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

**Back to instances** (:func:`probs_to_instances`). From the 3 class probabilities ``p``:

1. foreground = ``p_interior + p_boundary > 0.5`` (the background class is not the most likely);
2. seeds = connected (4-connected) pieces of confident interior, ``p_interior > 0.5``, of at least
   :data:`MIN_SEED_SIZE` pixels;
3. a seeded watershed (scikit-image) on ``1 − p_interior`` floods the foreground from the seeds, so the
   boundary pixels are shared out between the objects they separate;
4. foreground pieces that no seed reached (an object predicted as boundary only) become objects too;
5. objects under :data:`MIN_OBJECT_SIZE` pixels (16: a 4 × 4 square; the smallest DSB nucleus is ~23) are
   removed (set to background) and ids renumbered 1..N, uint16 (uint32 beyond 65,535 objects).

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
    "instances_to_target",
    "labels_to_instances",
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


def instances_to_target(instances: np.ndarray, boundary_width: int = BOUNDARY_WIDTH) -> np.ndarray:
    """Instance ids ``(H, W)`` (any non-negative integers, 0 = background) → the 3-class target, uint8:
    0 background, 1 interior, 2 an object's inner rim ``boundary_width`` pixels thick.

    Raises:
        DataError: Not a 2D integer array, or negative ids.
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


def _seeded_watershed(
    interior: np.ndarray, boundary: np.ndarray, *, min_size: int, min_seed_size: int, threshold: float
) -> np.ndarray:
    """Steps 1-5 of the module docstring on interior / boundary probabilities of any dimension (2D: an
    image, 3D: a stack), face-connected."""
    from skimage.segmentation import watershed

    face = ndi.generate_binary_structure(interior.ndim, 1)
    foreground = (interior + boundary) > threshold
    seeds, n = ndi.label((interior > threshold) & foreground, structure=face)
    if n:
        sizes = np.bincount(seeds.ravel())
        small = sizes < min_seed_size
        small[0] = False
        seeds[small[seeds]] = 0
    labels = watershed(1.0 - interior, markers=seeds, mask=foreground, connectivity=1)
    # foreground that no seed reached (an object predicted as boundary only) is an object of its own
    rest, n_rest = ndi.label(foreground & (labels == 0), structure=face)
    if n_rest:
        labels = np.where(rest > 0, rest + labels.max(initial=0), labels)
    return _renumber(labels.astype(np.int64), min_size)


def probs_to_instances(
    probs: np.ndarray,
    *,
    min_size: int = MIN_OBJECT_SIZE,
    min_seed_size: int = MIN_SEED_SIZE,
    threshold: float = 0.5,
) -> np.ndarray:
    """3-class probabilities ``(3, H, W)`` (background, interior, boundary) → instance ids ``(H, W)``
    by a seeded watershed (module docstring). Returns uint16 (uint32 beyond 65,535 objects).

    Raises:
        DataError: Not a ``(3, H, W)`` array.
    """
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 3 or p.shape[0] != INSTANCE_CLASSES:
        raise DataError(f"instance post-processing needs (3, H, W) class probabilities, got shape {p.shape}")
    return _seeded_watershed(
        p[INTERIOR], p[BOUNDARY], min_size=min_size, min_seed_size=min_seed_size, threshold=threshold
    )


def stack_instances(
    probs: np.ndarray,
    *,
    min_size: int = MIN_OBJECT_SIZE,
    min_seed_size: int = MIN_SEED_SIZE,
    threshold: float = 0.5,
    link_max_voxels: int = LINK_MAX_VOXELS,
) -> np.ndarray:
    """A z-stack's 3-class probabilities ``(Z, 3, H, W)`` → instance ids ``(Z, H, W)``, objects linked
    across planes (one id per object through the planes it crosses; module docstring). Beyond
    ``link_max_voxels`` plane by plane, each plane's ids offset by the largest id of the planes before it.
    uint16 (uint32 beyond 65,535 objects).

    Raises:
        DataError: Not a ``(Z, 3, H, W)`` array.
    """
    p = np.asarray(probs)
    if p.ndim != 4 or p.shape[1] != INSTANCE_CLASSES:
        raise DataError(f"a stack's instance post-processing needs (Z, 3, H, W) probabilities, got {p.shape}")
    kw: dict[str, Any] = {"min_size": min_size, "min_seed_size": min_seed_size, "threshold": threshold}
    if p.shape[0] * p.shape[2] * p.shape[3] <= link_max_voxels:
        return _seeded_watershed(p[:, INTERIOR].astype(np.float32), p[:, BOUNDARY].astype(np.float32), **kw)
    planes, offset = [], 0
    for plane in p:
        ids = probs_to_instances(plane, **kw).astype(np.int64)
        ids = np.where(ids > 0, ids + offset, 0)
        offset = int(ids.max(initial=offset))
        planes.append(ids)
    out = np.stack(planes)
    return out.astype(np.uint16 if out.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32)


def labels_to_instances(classes: np.ndarray, min_size: int = MIN_OBJECT_SIZE) -> np.ndarray:
    """A hard 3-class map ``(H, W)`` (e.g. the argmax of a prediction) → instances, by the same
    watershed with one-hot probabilities."""
    c = np.asarray(classes)
    onehot = np.stack([c == k for k in range(INSTANCE_CLASSES)]).astype(np.float32)
    return probs_to_instances(onehot, min_size=min_size)


def proposal_instances(probs: np.ndarray) -> np.ndarray:
    """:func:`probs_to_instances` of a proposal: ``(3, H, W)`` → ``(H, W)``; a z-stack's ``(Z, 3, H, W)`` →
    ``(Z, H, W)`` by :func:`stack_instances` (objects linked across planes). uint16 (uint32 beyond 65,535
    objects).

    Raises:
        DataError: Not 3-class probabilities.
    """
    p = np.asarray(probs)
    if p.ndim == 3:
        return probs_to_instances(p)
    if p.ndim != 4:
        raise DataError(f"a proposal is (3, H, W) or (Z, 3, H, W) probabilities, got shape {p.shape}")
    return stack_instances(p)
