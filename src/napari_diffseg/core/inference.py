"""Inference on images of any size: padding, sliding windows (MONAI) and the teacher's proposals.

Both the students' single pass and every denoising step of the teacher run through
``monai.inferers.sliding_window_inference`` with Gaussian blending once an image is larger than the
region of interest, so a 4000×4000 image fits in memory and shows no tile seams. The teacher's noisy
mask lives at the full (padded) image size, so its noise is consistent across tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import nn

from .device import autocast
from .diffusion import MaskDiffusion, Proposal, SamplerConfig

__all__ = ["pad_to_multiple", "predict_probs", "propose"]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) at the bottom/right to a multiple of ``multiple`` (replicate). Returns the old size."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def window_weights(roi: int, overlap: float, device: torch.device | None = None) -> torch.Tensor:
    """Blending weights (1, 1, roi, roi) for overlapping windows.

    A window's outermost ``roi // 16`` pixels saw the window's zero padding instead of the image, so
    they get (almost) no weight; inside, the weight rises smoothly over the rest of the overlap. Where
    two windows overlap, the one that sees a pixel from further inside dominates, so the tiles blend
    without seams. (MONAI's Gaussian map is clamped at 1e-3, which lets wrong edge pixels through where
    every window's weight is small.)
    """
    trim = max(1, roi // 16)
    ramp = max(1, int(roi * overlap) - trim)
    u = torch.arange(roi, dtype=torch.float32, device=device)
    d = torch.minimum(u, roi - 1 - u)
    t = ((d - trim + 1) / ramp).clamp(0, 1)
    t = t * t * (3 - 2 * t)  # smoothstep
    t = t.clamp_min(1e-6)
    return (t[:, None] * t[None, :])[None, None]


def _windowed(
    fn: Callable[[torch.Tensor], torch.Tensor], inp: torch.Tensor, roi: int, sw_batch: int, overlap: float
) -> torch.Tensor:
    h, w = inp.shape[-2:]
    if h <= roi and w <= roi:
        return fn(inp)
    # A margin keeps the image's own border away from the windows' down-weighted edges.
    m = roi // 4
    padded = F.pad(inp, (m, m, m, m), mode="replicate")
    out = sliding_window_inference(  # a tensor in, a tensor out
        padded,
        roi_size=(roi, roi),
        sw_batch_size=sw_batch,
        predictor=fn,
        overlap=overlap,
        roi_weight_map=window_weights(roi, overlap, inp.device),
    )
    assert isinstance(out, torch.Tensor)
    return out[..., m : m + h, m : m + w]


@torch.no_grad()
def predict_probs(
    nets: Sequence[nn.Module],
    x: torch.Tensor,
    *,
    multiple: int,
    roi: int = 256,
    sw_batch: int = 4,
    overlap: float = 0.25,
) -> torch.Tensor:
    """Mean softmax of one or more segmentation networks over (B, C, H, W) → (B, K, H, W)."""
    dev = next(nets[0].parameters()).device
    xp, (h, w) = pad_to_multiple(x.to(dev), multiple)
    total = torch.zeros(())
    for net in nets:
        was_training = net.training
        net.eval()

        def fn(t: torch.Tensor, net: nn.Module = net) -> torch.Tensor:
            return net(t).float()

        with autocast(dev):
            logits = _windowed(fn, xp, roi, sw_batch, overlap)
        total = total + torch.softmax(logits.float(), dim=1)
        net.train(was_training)
    return (total / len(nets))[..., :h, :w]


@torch.no_grad()
def propose(
    mask_net: nn.Module,
    diffusion: MaskDiffusion,
    x: torch.Tensor,
    config: SamplerConfig,
    generator: torch.Generator,
    *,
    multiple: int,
    roi: int = 256,
    sw_batch: int = 4,
    overlap: float = 0.25,
    init_probs: torch.Tensor | None = None,
    init_t_frac: float | None = None,
) -> Proposal:
    """Teacher pseudo-labels with uncertainty for (B, C, H, W) images of any size."""
    dev = next(mask_net.parameters()).device
    was_training = mask_net.training
    mask_net.eval()
    xp, (h, w) = pad_to_multiple(x.to(dev), multiple)
    k = diffusion.num_classes
    if init_probs is not None:
        init_probs, _ = pad_to_multiple(init_probs.to(dev), multiple)

    def denoise(m_t: torch.Tensor, xe: torch.Tensor, t: int) -> torch.Tensor:
        def fn(win: torch.Tensor) -> torch.Tensor:
            tt = torch.full((win.shape[0],), t, device=win.device, dtype=torch.long)
            return mask_net(win[:, :k], win[:, k:], tt).float()

        with autocast(dev):
            return _windowed(fn, torch.cat([m_t, xe], dim=1), roi, sw_batch, overlap)

    try:
        prop = diffusion.sample(
            denoise, xp, config, generator, init_probs=init_probs, init_t_frac=init_t_frac
        )
    finally:
        mask_net.train(was_training)
    return Proposal(
        probs=prop.probs[..., :h, :w],
        uncertainty=prop.uncertainty[..., :h, :w],
        variance=prop.variance[..., :h, :w],
        round_masks=[m[..., :h, :w] for m in prop.round_masks],
        rounds_run=prop.rounds_run,
    )
