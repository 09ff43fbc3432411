"""Networks: the twin students and the teacher's two conditional denoisers.

* ``StudentNet`` wraps MONAI's ``UNet``: a cheap single-pass segmenter, what ``predict`` deploys.
* ``CondUNet`` is a residual UNet built from MONAI ``Convolution`` blocks whose residual units are
  modulated by the diffusion timestep through scale-and-shift (FiLM). The condition (the image for the
  mask pathway, the mask probabilities for the image pathway) is concatenated to the noisy input. It
  has no attention so that, at CPU presets, a teacher step costs about as much as a student step
  (docs/method.md, "What the code adds").

Every network here uses instance normalisation (no running statistics), so distributed replicas
hold nothing but parameters and stay bit-identical under DDP.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import UNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from ..base.errors import ConfigError

__all__ = ["CondUNet", "NetConfig", "StudentNet", "build_image_denoiser", "build_mask_denoiser"]


@dataclass(frozen=True)
class NetConfig:
    """Architecture of one network. Saved with the weights; loading checks it."""

    in_channels: int
    out_channels: int
    channels: tuple[int, ...] = (16, 32, 64, 128)
    cond_channels: int = 0
    emb_dim: int = 64

    def __post_init__(self) -> None:
        if len(self.channels) < 2:
            raise ConfigError("a network needs at least two channel levels, e.g. (16, 32, 64, 128)")
        if min(self.channels) < 1 or self.in_channels < 1 or self.out_channels < 1:
            raise ConfigError(f"channel counts must be positive, got {self}")

    @property
    def multiple(self) -> int:
        """Height and width of an input must be divisible by this number."""
        return 2 ** len(self.channels)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> NetConfig:
        return cls(**{**d, "channels": tuple(d["channels"])})


def _check_size(x: torch.Tensor, multiple: int, name: str) -> None:
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ConfigError(
            f"{name} needs height and width divisible by {multiple}, got {h}x{w}; pad the image or use "
            "napari_diffseg.core.inference (sliding window), which pads automatically"
        )


class StudentNet(nn.Module):
    """A MONAI ``UNet`` (residual units, instance norm) with a helpful size check."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = UNet(
            spatial_dims=2,
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            channels=config.channels,
            strides=(2,) * (len(config.channels) - 1),
            num_res_units=1,
            norm="INSTANCE",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_size(x, self.config.multiple, "StudentNet")
        return self.unet(x)


class FiLMResBlock(nn.Module):
    """conv-norm-act, FiLM(timestep), conv-norm-act, plus a (1x1 if needed) skip connection."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int) -> None:
        super().__init__()
        self.conv1 = Convolution(
            2, in_ch, out_ch, kernel_size=3, act="SWISH", norm=("INSTANCE", {"affine": False})
        )
        self.film = nn.Linear(emb_dim, 2 * out_ch)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.conv2 = Convolution(2, out_ch, out_ch, kernel_size=3, act="SWISH", norm="INSTANCE")
        self.skip = (
            nn.Identity() if in_ch == out_ch else Convolution(2, in_ch, out_ch, kernel_size=1, conv_only=True)
        )

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        y = self.conv1(h)
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        y = y * (1 + scale) + shift
        return self.conv2(y) + self.skip(h)


class CondUNet(nn.Module):
    """Conditional denoiser ``net(noisy, cond, t)``: UNet with FiLM timestep modulation in every block."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        if config.cond_channels < 1:
            raise ConfigError("a conditional denoiser needs cond_channels >= 1")
        self.config = config
        ch: Sequence[int] = config.channels
        e = config.emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(e, e * 2), nn.SiLU(), nn.Linear(e * 2, e))
        n_in = config.in_channels + config.cond_channels
        # Like MONAI's UNet, the first level already works at half resolution; full resolution is only
        # touched by the stem, the last up-convolution and a light head that sees the raw input again.
        self.stem = Convolution(2, n_in, ch[0], strides=2, kernel_size=3, act="SWISH", norm="INSTANCE")
        self.enc = nn.ModuleList([FiLMResBlock(ch[0], ch[0], e)])
        self.down = nn.ModuleList()
        for c_prev, c in itertools.pairwise(ch):
            self.down.append(
                Convolution(2, c_prev, c, strides=2, kernel_size=3, act="SWISH", norm="INSTANCE")
            )
            self.enc.append(FiLMResBlock(c, c, e))
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for c_deep, c in zip(ch[:0:-1], ch[-2::-1], strict=True):
            self.up.append(
                Convolution(
                    2, c_deep, c, strides=2, kernel_size=3, is_transposed=True, act="SWISH", norm="INSTANCE"
                )
            )
            self.dec.append(FiLMResBlock(2 * c, c, e))
        c_top = max(ch[0] // 2, 8)
        self.top_up = Convolution(
            2, ch[0], c_top, strides=2, kernel_size=3, is_transposed=True, act="SWISH", norm="INSTANCE"
        )
        self.head = nn.Sequential(
            Convolution(2, c_top + n_in, c_top, kernel_size=3, act="SWISH", norm="INSTANCE"),
            Convolution(2, c_top, config.out_channels, kernel_size=1, conv_only=True),
        )

    def forward(self, noisy: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _check_size(noisy, self.config.multiple, "CondUNet")
        if t.ndim == 0:
            t = t.expand(noisy.shape[0])
        emb = self.time_mlp(get_timestep_embedding(t.to(noisy.dtype), self.config.emb_dim).to(noisy.dtype))
        inp = torch.cat([noisy, cond.to(noisy.dtype)], dim=1)
        h = self.stem(inp)
        h = self.enc[0](h, emb)
        skips = [h]
        for down, block in zip(self.down, self.enc[1:], strict=True):
            h = block(down(h), emb)
            skips.append(h)
        skips.pop()
        for up, block in zip(self.up, self.dec, strict=True):
            h = block(torch.cat([up(h), skips.pop()], dim=1), emb)
        return self.head(torch.cat([self.top_up(h), inp], dim=1))


def build_mask_denoiser(
    num_classes: int, image_channels: int, channels: Sequence[int], emb_dim: int = 64
) -> CondUNet:
    """Mask pathway f_θ(m_t, x, t) → clean-mask logits (x0-prediction)."""
    return CondUNet(NetConfig(num_classes, num_classes, tuple(channels), image_channels, emb_dim))


def build_image_denoiser(
    num_classes: int, image_channels: int, channels: Sequence[int], emb_dim: int = 64
) -> CondUNet:
    """Image pathway g_φ(x_t, p, t) → predicted noise, conditioned on mask probabilities."""
    return CondUNet(NetConfig(image_channels, image_channels, tuple(channels), num_classes, emb_dim))
