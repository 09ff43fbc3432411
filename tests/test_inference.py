"""Sliding-window inference: any size, no seams, same answer as one pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_diffseg.core.diffusion import MaskDiffusion, SamplerConfig
from napari_diffseg.core.inference import pad_to_multiple, predict_probs, propose


class LocalSegmenter(nn.Module):
    """A fixed 5×5 local operator: any correct tiling must reproduce its full-image output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 5, padding=2, bias=False)
        torch.manual_seed(0)
        nn.init.normal_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_sliding_window_matches_one_pass_away_from_the_border() -> None:
    net = LocalSegmenter()
    x = torch.randn(1, 3, 300, 341)
    tiled = predict_probs([net], x, multiple=8, roi=64, sw_batch=4)
    whole = predict_probs([net], x, multiple=8, roi=4096)
    assert tiled.shape == whole.shape == (1, 2, 300, 341)
    inner = (slice(None), slice(None), slice(4, -20), slice(4, -20))
    assert (tiled[inner] - whole[inner]).abs().max() < 1e-4  # no seams between tiles


def test_padding_to_multiple() -> None:
    x = torch.randn(1, 1, 30, 17)
    xp, hw = pad_to_multiple(x, 8)
    assert xp.shape[-2:] == (32, 24) and hw == (30, 17)
    assert torch.equal(xp[..., :30, :17], x)


class LocalDenoiser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(5, 2, 3, padding=1)
        torch.manual_seed(1)
        nn.init.normal_(self.conv.weight, std=0.5)

    def forward(self, m, x, t):
        return self.conv(torch.cat([m, x], 1))


def test_tiled_proposals_match_one_pass_and_keep_odd_sizes() -> None:
    net = LocalDenoiser()
    diff = MaskDiffusion(2)
    x = torch.randn(1, 3, 150, 133)
    cfg = SamplerConfig(steps=3, samples=2)
    a = propose(net, diff, x, cfg, torch.Generator().manual_seed(0), multiple=8, roi=64)
    b = propose(net, diff, x, cfg, torch.Generator().manual_seed(0), multiple=8, roi=1024)
    assert a.probs.shape == (1, 2, 150, 133) and a.uncertainty.shape == (1, 150, 133)
    inner = (slice(None), slice(None), slice(4, -20), slice(4, -20))
    assert (a.probs[inner] - b.probs[inner]).abs().max() < 1e-3


def test_ensemble_is_the_mean_of_softmaxes() -> None:
    n1, n2 = LocalSegmenter(), LocalSegmenter()
    with torch.no_grad():
        n2.conv.weight.mul_(-1)
    x = torch.randn(1, 3, 32, 32)
    p = predict_probs([n1, n2], x, multiple=8, roi=64)
    expected = (F.softmax(n1(x), 1) + F.softmax(n2(x), 1)) / 2
    assert torch.allclose(p, expected, atol=1e-6)
