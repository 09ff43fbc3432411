"""Random training patches with geometric augmentation, and intensity jitter.

All randomness comes from an explicit :class:`torch.Generator`, so a run is reproducible from its seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["intensity_jitter", "sample_patches"]


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in ``[low, high]`` (inclusive) drawn from ``generator``."""
    return int(torch.randint(low, high + 1, (1,), generator=generator, device=generator.device).item())


def _reflect_indices(start: int, length: int, size: int, device: torch.device) -> torch.Tensor:
    """Indices ``start .. start + length - 1`` into an axis of ``size``, mirrored at the edges.

    Out-of-range positions are reflected without repeating the edge pixel (like ``numpy.pad(mode='reflect')``)
    as often as needed, so any amount of padding works, for any dtype, without inventing values.
    """
    pos = torch.arange(start, start + length, device=device)
    if size == 1:
        return torch.zeros_like(pos)
    period = 2 * (size - 1)
    pos = torch.remainder(pos, period)
    return torch.where(pos < size, pos, period - pos)


def sample_patches(
    fields: Sequence[Sequence[torch.Tensor]],
    indices: Sequence[int],
    patch_size: int,
    generator: torch.Generator,
    *,
    augment: bool = True,
) -> list[torch.Tensor]:
    """Cut one random ``patch_size`` x ``patch_size`` window per index, the same window in every field.

    Args:
        fields: A list of fields; each field is a list over images of tensors shaped ``(..., H, W)``, for example
            normalised images ``(C, H, W)``, masks ``(H, W)``, teacher probabilities ``(K, H, W)``, confidence
            ``(H, W)``. All fields of image ``i`` share ``H`` and ``W``.
        indices: Which images to sample (repeats allowed); one patch per entry.
        patch_size: Side of the square patch.
        generator: Source of all randomness (window position, flips, rotation).
        augment: Apply the same random horizontal flip, vertical flip and 90° rotation to every field.

    Images smaller than the patch are reflect-padded (by index mirroring, so integer fields get no new
    values), placed at a random offset inside the patch.

    Returns:
        One tensor per field, shaped ``(len(indices), ..., patch_size, patch_size)``, with the field's dtype and
        device.

    Raises:
        ValueError: Empty ``fields`` or ``indices``, a bad ``patch_size``, an index out of range, or fields of
            one image that disagree on ``H, W``.
    """
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if not fields:
        raise ValueError("sample_patches needs at least one field")
    if len(indices) == 0:
        raise ValueError("sample_patches needs at least one index")
    n_images = len(fields[0])
    if any(len(f) != n_images for f in fields):
        raise ValueError(
            f"every field must hold one tensor per image; lengths are {[len(f) for f in fields]}"
        )

    out: list[list[torch.Tensor]] = [[] for _ in fields]
    for idx in indices:
        i = int(idx)
        if not 0 <= i < n_images:
            raise ValueError(f"index {i} out of range for {n_images} images")
        h, w = fields[0][i].shape[-2:]
        for k, field in enumerate(fields):
            if tuple(field[i].shape[-2:]) != (h, w):
                raise ValueError(
                    f"image {i}: field {k} has H, W = {tuple(field[i].shape[-2:])}, field 0 has {(h, w)}"
                )
        # Window origin: inside the image when it is large enough, else a random placement of the
        # image inside the (mirror-padded) patch.
        y0 = _randint(generator, min(0, h - patch_size), max(0, h - patch_size))
        x0 = _randint(generator, min(0, w - patch_size), max(0, w - patch_size))
        if augment:
            hflip = _randint(generator, 0, 1) == 1
            vflip = _randint(generator, 0, 1) == 1
            rot = _randint(generator, 0, 3)
        else:
            hflip = vflip = False
            rot = 0
        for k, field in enumerate(fields):
            t = field[i]
            rows = _reflect_indices(y0, patch_size, h, t.device)
            cols = _reflect_indices(x0, patch_size, w, t.device)
            if hflip:
                cols = cols.flip(0)
            if vflip:
                rows = rows.flip(0)
            patch = t.index_select(-2, rows).index_select(-1, cols)
            if rot:
                patch = torch.rot90(patch, rot, dims=(-2, -1))
            out[k].append(patch)

    result: list[torch.Tensor] = []
    for k, patches in enumerate(out):
        try:
            result.append(torch.stack(patches).contiguous())
        except RuntimeError as exc:
            shapes = sorted({tuple(p.shape) for p in patches})
            raise ValueError(f"field {k}: patches have different shapes {shapes}; cannot stack them") from exc
    return result


def _randn(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).to(like.device, like.dtype)


def _rand(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).to(like.device, like.dtype)


def intensity_jitter(x: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Random per-sample gain, bias, per-channel colour shift and Gaussian noise on normalised images.

    For each sample: ``x * exp(N(0, 0.15 s)) + N(0, 0.15 s) + shift_c + noise`` with ``shift_c ~ N(0, 0.05 s)``
    per channel and pixel noise of standard deviation drawn uniformly from ``[0, 0.08 s]``, ``s = strength``.

    Args:
        x: ``(B, C, H, W)`` floating-point batch.
        generator: Source of all randomness; a CPU generator works for any device, a CUDA generator draws on
            the GPU directly.
        strength: Scale of every perturbation; 0 returns ``x`` itself, unchanged.

    Returns:
        A new tensor (``x`` is not modified).
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if strength == 0:
        return x
    if x.ndim != 4:
        raise ValueError(f"intensity_jitter expects (B, C, H, W), got shape {tuple(x.shape)}")
    b, c = x.shape[:2]
    s = float(strength)
    gain = torch.exp(_randn((b, 1, 1, 1), generator, x) * (0.15 * s))
    bias = _randn((b, 1, 1, 1), generator, x) * (0.15 * s)
    shift = _randn((b, c, 1, 1), generator, x) * (0.05 * s)
    noise_std = _rand((b, 1, 1, 1), generator, x) * (0.08 * s)
    noise = _randn(tuple(x.shape), generator, x) * noise_std
    return x * gain + bias + shift + noise
