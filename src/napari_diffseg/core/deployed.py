"""The deployed prediction as one self-contained network: raw image in, class probabilities and labels out.

``DeployedStudents`` does, in one ``forward``, exactly what ``diffseg predict`` does with a model's
students (``napari_diffseg.predict.predict_image``):

1. normalise as ``napari_diffseg.base.preprocessing.normalize_image``: with the model's statistics
   (``norm_low`` / ``norm_high``, computed over its training images), per channel ``low → 0`` and
   ``high → 1``, clipped to [-1, 3] (a channel with ``high <= low`` becomes 0); for a model saved before
   statistics existed, per image and per channel, clip to the 0.5 / 99.5 percentiles and standardise
   (minus the mean, divided by the standard deviation floored at 1e-6; a constant channel becomes 0);
2. pad at the bottom / right (replicate) to a multiple of ``2 ** len(channels)``;
3. each student on the whole image when it fits one window of ``roi`` pixels, else on overlapping
   windows (a replicate margin of ``roi // 4``, MONAI's window grid, the blending weights of
   ``napari_diffseg.core.inference.window_weights``), logits blended per student;
4. the mean of the students' softmax, cropped back to the input size, and its argmax.

This module imports nothing but torch and MONAI (``UNet``), so its source file is what a bioimage.io
package ships as the architecture of its ``pytorch_state_dict`` weights, and it scripts to TorchScript.
Tests check it against the package's own preprocessing and inference, so the two cannot drift apart.

The window grid helpers (:func:`window_starts`, :func:`monai_pad`) are shared with the tile-by-tile
prediction of images that do not fit in memory (``napari_diffseg.core.tiled``).
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple  # noqa: UP035 (TorchScript reads these annotations)

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

__all__ = [
    "DeployedStudents",
    "Student",
    "monai_pad",
    "normalize_fixed",
    "normalize_per_image",
    "window_profile",
    "window_starts",
    "window_weights",
]


def window_profile(roi: int, overlap: float) -> torch.Tensor:
    """The 1D blending profile ``(roi,)`` whose outer product is :func:`window_weights`."""
    trim = max(1, roi // 16)
    ramp = max(1, int(roi * overlap) - trim)
    u = torch.arange(roi, dtype=torch.float32)
    d = torch.minimum(u, roi - 1 - u)
    t = ((d - trim + 1) / ramp).clamp(0, 1)
    t = t * t * (3 - 2 * t)
    return t.clamp_min(1e-6)


def window_weights(roi: int, overlap: float) -> torch.Tensor:
    """Blending weights ``(1, 1, roi, roi)``: the same numbers as ``core.inference.window_weights``."""
    t = window_profile(roi, overlap)
    return (t[:, None] * t[None, :])[None, None]


def window_starts(size: int, roi: int, overlap: float) -> List[int]:  # noqa: UP006
    """Start offsets of MONAI's sliding windows along one axis of ``size`` >= ``roi`` pixels
    (``monai.data.utils.dense_patch_slices`` with ``monai.inferers.utils._get_scan_interval``)."""
    if size == roi:
        return [0]
    interval = int(roi * (1 - overlap))
    if interval < 1:
        interval = 1
    num = math.ceil(float(size) / interval)
    count = 1
    for d in range(num):
        if d * interval + roi >= size:
            count = d + 1
            break
    starts: List[int] = []  # noqa: UP006
    for d in range(count):
        s = d * interval
        starts.append(s - max(s + roi - size, 0))
    return starts


def monai_pad(size: int, roi: int) -> Tuple[int, int]:  # noqa: UP006
    """The constant padding (before, after) MONAI's ``sliding_window_inference`` adds to an axis shorter
    than ``roi``."""
    diff = max(roi - size, 0)
    return diff // 2, diff - diff // 2


def _wide(x: torch.Tensor) -> torch.dtype:
    """float64 for the statistics, as numpy computes them; float32 on Apple GPUs (MPS has no float64)."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def _percentile(sorted_values: torch.Tensor, q: float) -> torch.Tensor:
    """numpy's default ('linear') percentile of the last axis of an already sorted float tensor (in
    float64, float32 on MPS)."""
    n = sorted_values.shape[-1]
    pos = q / 100.0 * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    a = sorted_values[..., lo].to(_wide(sorted_values))
    b = sorted_values[..., hi].to(_wide(sorted_values))
    if frac >= 0.5:
        return b - (b - a) * (1.0 - frac)
    return a + (b - a) * frac


def normalize_per_image(
    x: torch.Tensor, low: float = 0.5, high: float = 99.5, std_floor: float = 1e-6
) -> torch.Tensor:
    """``(B, C, H, W)`` raw intensities → per image and channel clipped to the ``low`` / ``high``
    percentiles and standardised (the standard deviation floored at ``std_floor``), float32:
    ``base.preprocessing.normalize_image`` on each image of the batch."""
    x = x.float()
    b, c = x.shape[0], x.shape[1]
    flat = x.reshape(b, c, -1)
    values = flat.sort(dim=-1).values
    lo = _percentile(values, low).float()
    hi = _percentile(values, high).float()
    clipped = torch.maximum(torch.minimum(flat, hi[..., None]), lo[..., None])
    mean = clipped.to(_wide(x)).mean(dim=-1)
    std = clipped.to(_wide(x)).std(dim=-1, unbiased=False).clamp_min(std_floor)
    out = (clipped - mean.float()[..., None]) / std.float()[..., None]
    constant = (hi <= lo)[..., None]
    out = torch.where(constant, torch.zeros_like(out), out)
    return out.reshape(x.shape)


def normalize_fixed(
    x: torch.Tensor,
    clip_low: List[float],  # noqa: UP006
    clip_high: List[float],  # noqa: UP006
    offset: List[float],  # noqa: UP006
    scale: List[float],  # noqa: UP006
) -> torch.Tensor:
    """``(B, C, H, W)`` raw intensities → per channel clipped to ``[clip_low, clip_high]``, minus ``offset``,
    divided by ``scale`` (a channel with ``scale <= 0`` becomes 0), float32: the float32 steps of
    ``base.preprocessing.Normalization.apply``."""
    x = x.float()
    c = x.shape[1]
    lo = torch.tensor(clip_low, dtype=torch.float32, device=x.device).reshape(1, c, 1, 1)
    hi = torch.tensor(clip_high, dtype=torch.float32, device=x.device).reshape(1, c, 1, 1)
    off = torch.tensor(offset, dtype=torch.float32, device=x.device).reshape(1, c, 1, 1)
    sc = torch.tensor(scale, dtype=torch.float32, device=x.device).reshape(1, c, 1, 1)
    ok = sc > 0
    out = (torch.maximum(torch.minimum(x, hi), lo) - off) / torch.where(ok, sc, torch.ones_like(sc))
    return torch.where(ok, out, torch.zeros_like(out))


class Student(nn.Module):
    """One student: MONAI's ``UNet`` as ``napari_diffseg.core.networks.StudentNet`` builds it (same
    parameter names, so a student's state dict loads unchanged)."""

    def __init__(self, in_channels: int, num_classes: int, channels: List[int]) -> None:  # noqa: UP006
        super().__init__()
        self.unet = UNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            channels=tuple(channels),
            strides=(2,) * (len(channels) - 1),
            num_res_units=1,
            norm="INSTANCE",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x)


class DeployedStudents(nn.Module):
    """The students of a model as ``diffseg predict`` runs them (see the module docstring).

    ``forward(x)`` takes raw intensities ``(B, in_channels, H, W)`` (any real dtype, any H, W >= 1) and
    returns ``(probabilities (B, K, H, W) float32, labels (B, 1, H, W) int64)``.

    Args:
        in_channels: Input channels (1 or 3).
        num_classes: Classes K, background included.
        channels: The students' channel levels (``ModelSpec.student_channels``).
        n_students: How many students are averaged (2 for diffseg and cps, 1 otherwise).
        multiple: Inputs are padded to a multiple of this (``ModelSpec.multiple``).
        roi: Window side (the preset's ``roi_size``).
        sw_batch: Windows per network call (the preset's ``sw_batch_size``).
        overlap: Window overlap (0.25, as ``predict``).
        percentiles: The clipping percentiles of the per-image normalisation.
        std_floor: The smallest standard deviation divided by (per-image normalisation).
        norm_low, norm_high: The model's normalisation statistics per channel (``config.json``
            ``normalization.low`` / ``.high``); None: per-image normalisation (a model saved before
            statistics existed).
        norm_clip: Normalised values are clipped to this range.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: List[int],  # noqa: UP006
        n_students: int = 2,
        multiple: int = 16,
        roi: int = 256,
        sw_batch: int = 4,
        overlap: float = 0.25,
        percentiles: Tuple[float, float] = (0.5, 99.5),  # noqa: UP006
        std_floor: float = 1e-6,
        norm_low: Optional[List[float]] = None,  # noqa: UP006, UP045
        norm_high: Optional[List[float]] = None,  # noqa: UP006, UP045
        norm_clip: Tuple[float, float] = (-1.0, 3.0),  # noqa: UP006
    ) -> None:
        super().__init__()
        self.students = nn.ModuleList(
            [Student(in_channels, num_classes, channels) for _ in range(n_students)]
        )
        self.multiple = int(multiple)
        self.roi = int(roi)
        self.sw_batch = int(sw_batch)
        self.overlap = float(overlap)
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))
        self.std_floor = float(std_floor)
        self.fixed_norm = norm_low is not None and norm_high is not None
        low = [float(v) for v in norm_low] if norm_low is not None else [0.0] * in_channels
        high = [float(v) for v in norm_high] if norm_high is not None else [1.0] * in_channels
        if len(low) != in_channels or len(high) != in_channels:
            raise ValueError(f"norm_low and norm_high need {in_channels} value(s) each")
        scale = [h - lo for lo, h in zip(low, high, strict=True)]
        # the same float64 arithmetic as base.preprocessing.Normalization.bounds
        clip_low = [lo + float(norm_clip[0]) * r for lo, r in zip(low, scale, strict=True)]
        clip_high = [lo + float(norm_clip[1]) * r for lo, r in zip(low, scale, strict=True)]
        self.norm_clip_low: List[float] = clip_low  # noqa: UP006
        self.norm_clip_high: List[float] = clip_high  # noqa: UP006
        self.norm_offset: List[float] = low  # noqa: UP006
        self.norm_scale: List[float] = scale  # noqa: UP006

    def _logits(self, x: torch.Tensor) -> List[torch.Tensor]:  # noqa: UP006
        """Each student's logits over ``x`` (B, C, H, W), H and W multiples of ``self.multiple``."""
        h, w = x.shape[-2], x.shape[-1]
        roi = self.roi
        outs: List[torch.Tensor] = []  # noqa: UP006
        if h <= roi and w <= roi:
            for net in self.students:
                outs.append(net(x).float())
            return outs
        m = roi // 4
        xp = F.pad(x, (m, m, m, m), mode="replicate")
        py = monai_pad(xp.shape[-2], roi)
        px = monai_pad(xp.shape[-1], roi)
        if py[0] + py[1] + px[0] + px[1] > 0:
            xp = F.pad(xp, (px[0], px[1], py[0], py[1]), mode="constant", value=0.0)
        bsz, hh, ww = xp.shape[0], xp.shape[-2], xp.shape[-1]
        ys = window_starts(hh, roi, self.overlap)
        xs = window_starts(ww, roi, self.overlap)
        wmap = window_weights(roi, self.overlap).to(device=xp.device, dtype=xp.dtype)
        corners: List[Tuple[int, int]] = []  # noqa: UP006
        for y0 in ys:
            for x0 in xs:
                corners.append((y0, x0))
        count = torch.zeros((1, 1, hh, ww), dtype=xp.dtype, device=xp.device)
        for y0, x0 in corners:
            count[:, :, y0 : y0 + roi, x0 : x0 + roi] += wmap
        for _ in range(len(self.students)):
            outs.append(torch.zeros(0))
        for i in range(0, len(corners), self.sw_batch):
            chunk = corners[i : i + self.sw_batch]
            wins = torch.cat([xp[:, :, y0 : y0 + roi, x0 : x0 + roi] for y0, x0 in chunk], dim=0)
            for k, net in enumerate(self.students):
                logits = net(wins).float()
                if outs[k].numel() == 0:
                    outs[k] = torch.zeros((bsz, logits.shape[1], hh, ww), dtype=xp.dtype, device=xp.device)
                acc = outs[k]
                for j in range(len(chunk)):
                    y0, x0 = chunk[j]
                    acc[:, :, y0 : y0 + roi, x0 : x0 + roi] += logits[j * bsz : (j + 1) * bsz] * wmap
        top, left = py[0] + m, px[0] + m
        return [(o / count)[:, :, top : top + h, left : left + w] for o in outs]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:  # noqa: UP006
        h, w = x.shape[-2], x.shape[-1]
        if self.fixed_norm:
            x = normalize_fixed(x, self.norm_clip_low, self.norm_clip_high, self.norm_offset, self.norm_scale)
        else:
            x = normalize_per_image(x, self.percentiles[0], self.percentiles[1], self.std_floor)
        ph = (self.multiple - h % self.multiple) % self.multiple
        pw = (self.multiple - w % self.multiple) % self.multiple
        if ph > 0 or pw > 0:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        logits = self._logits(x)
        total = torch.softmax(logits[0], dim=1)
        for k in range(1, len(logits)):
            total = total + torch.softmax(logits[k], dim=1)
        probs = (total / len(logits))[:, :, :h, :w]
        return probs, probs.argmax(dim=1, keepdim=True)
