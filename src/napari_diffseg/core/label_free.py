"""A classical label-free split of an image, for Stage A to start from (issue 14, item 4).

Stage A's cycle objective alone learns no more than an intensity split, and on sparse fluorescence it
does not even find that one (DSB nuclei: best-permutation Dice 0.15, all-foreground's level). With
``pretrain_split_weight > 0`` its mask pathway is also pulled towards the split below wherever that split
can be trusted: on dark-field images (fluorescence), bright objects on a dark background. On bright-field
images (H&E, electron microscopy, fundus photographs) the bright side is background or tissue, no split
here is better than Stage A's own, and nothing changes (``benchmarks/stage_a.py --references``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..base.cost import CALIBRATION_IMAGES

#: an image is dark-field when its median lies in this lowest share of its 1-99 % intensity range
DARK_FIELD_MEDIAN = 0.25

#: the temperatures :func:`fit_temperature` chooses among (1: the model's own probabilities)
TEMPERATURES = (1.0, 0.7, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1)
#: at most CALIBRATION_IMAGES images (evenly spread over those with an anchor) and this many pixels of
#: each are read
CALIBRATION_PIXELS = 200_000


def anchor_applies(split_weight: float, num_classes: int, instances: bool) -> bool:
    """Does Stage A take an anchor in this project (before looking at its images)? The anchor is on
    (``pretrain_split_weight > 0``) and the project is binary or of instances: a multiclass project's
    classes are not a threshold's split."""
    return split_weight > 0 and (num_classes == 2 or instances)


def is_dark_field(x: torch.Tensor) -> bool:
    """Is most of this ``(C, H, W)`` image dark background, with bright objects (fluorescence)? Its
    channel-mean's median lies in the lowest quarter of the range between its 1st and 99th percentiles.
    Over the project's datasets this holds for 52 of 53 DSB nuclei images (the other is a dense
    field) and for none of GlaS (H&E), DRIVE (fundus) or ISBI 2012 (EM)."""
    grey = x.float().mean(0).cpu().numpy()
    lo, hi = np.percentile(grey, [1.0, 99.0])
    return bool(hi > lo and (np.median(grey) - lo) / (hi - lo) < DARK_FIELD_MEDIAN)


def hysteresis_split(x: torch.Tensor) -> np.ndarray:
    """The channel-mean of a normalised ``(C, H, W)`` image → ``(H, W)`` int64 0/1: every pixel above the
    lower threshold of a 3-class Otsu that is connected to a pixel above Otsu's threshold. The dim parts of
    a nucleus join its bright core, while background noise above the low threshold that touches no bright
    core does not; one very bright object no longer pushes a single threshold above the dim ones. Class 1
    is the brighter side. All 0 on an image with fewer than three grey levels."""
    from skimage.filters import apply_hysteresis_threshold, threshold_multiotsu, threshold_otsu

    grey = x.float().mean(0).cpu().numpy()
    if np.unique(grey).size < 3:
        return np.zeros(grey.shape, dtype=np.int64)
    low, high = threshold_multiotsu(grey, 3)[0], threshold_otsu(grey)
    return apply_hysteresis_threshold(grey, min(low, high), high).astype(np.int64)


def anchor_split(x: torch.Tensor, instances: bool = False) -> np.ndarray | None:
    """The target Stage A's anchor pulls towards on this image, ``(H, W)`` int64, or ``None`` where the
    split is not to be trusted (not :func:`is_dark_field`): :func:`hysteresis_split` (0/1) or, for an
    instance project, its connected pieces as the 3-class instance target (background, interior, an inner
    rim: :func:`~napari_diffseg.core.instances.instances_to_target`; touching objects stay one piece)."""
    if not is_dark_field(x):
        return None
    split = hysteresis_split(x)
    if not instances:
        return split
    from scipy import ndimage as ndi

    from .instances import instances_to_target

    return instances_to_target(ndi.label(split)[0]).astype(np.int64)


def fit_temperature(
    bundle: Any,
    images: Sequence[torch.Tensor],
    *,
    instances: bool = False,
    generator: torch.Generator,
    roi: int = 256,
    sw_batch: int = 4,
) -> tuple[float, int]:
    """Temperature scaling of a label-free model against its own anchor: ``(temperature, images read)``.

    Stage A's image pathway reads the soft mask, so the mask pathway keeps background pixels near
    P = 1/2 (an extra channel for the reconstruction) while its argmax is right: on sparse DSB nuclei the
    median background P(object) was 0.49 and the nuclei's 0.96, an instance watershed (foreground
    P(object) > 1/2) flooded the background with objects, and the uncertainty map covered 90 % of the
    image. The one-step probabilities of the images with an :func:`anchor_split` (at most
    :data:`CALIBRATION_IMAGES`, :data:`CALIBRATION_PIXELS` pixels each) are sharpened by the temperature
    of :data:`TEMPERATURES` whose softmax best predicts the anchor (the cross-entropy; no label is read),
    as a classifier is calibrated on held-out labels (Guo et al. 2017). The argmax does not change.
    ``(1.0, 0)`` where no image has an anchor (bright-field: the model's split has no reference to be
    confident about, so its probabilities are left as they are).
    """
    from .diffusion import SamplerConfig
    from .inference import propose

    dark = [x for x in images if is_dark_field(x)]  # the images with an anchor (anchor_split's gate)
    if len(dark) > CALIBRATION_IMAGES:  # evenly spread; only these anchors are made
        dark = [dark[int(i)] for i in np.linspace(0, len(dark) - 1, CALIBRATION_IMAGES).round()]
    found = [(x, a) for x in dark if (a := anchor_split(x, instances)) is not None]
    if not found:
        return 1.0, 0
    logs, targets = [], []
    for x, a in found:
        prop = propose(
            bundle.mask_net,
            bundle.diffusion(),
            x[None],
            SamplerConfig(steps=1, samples=1, rounds=1),
            generator,
            multiple=bundle.spec.multiple,
            roi=roi,
            sw_batch=sw_batch,
        )
        lp = torch.log(prop.probs[0].float().clamp_min(1e-8).cpu()).flatten(1)  # logits up to a constant
        target = torch.from_numpy(a).flatten()
        if target.numel() > CALIBRATION_PIXELS:
            keep = torch.randperm(target.numel(), generator=generator)[:CALIBRATION_PIXELS]
            lp, target = lp[:, keep], target[keep]
        logs.append(lp)
        targets.append(target)
    lp, target = torch.cat(logs, 1).T, torch.cat(targets)
    if not bool((target >= 0).any()):
        return 1.0, 0
    losses = [float(F.cross_entropy(lp / t, target, ignore_index=-1)) for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(losses))]), len(found)
