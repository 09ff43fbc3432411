"""Mask diffusion: training noise (MONAI DDPM schedule) and DDIM sampling with chained rounds.

Masks live in one-hot space scaled to {-1, +1} (``m0``). The mask pathway predicts the clean mask as
logits (x0-prediction); the sampler turns logits into ``2·softmax − 1`` and hands them to MONAI's
``DDIMScheduler`` with ``prediction_type="sample"``. E samples of an image are drawn as one batch (in
chunks when the field is large: ``SAMPLE_CHUNK_PIXELS``); the mean of their softmax maps is the pseudo-label probability and the normalised entropy of that mean is
the uncertainty.

Chained multi-round generation (docs/method.md): round 1 starts from pure noise; round r > 1 re-noises each
sample's previous clean-mask estimate to a smaller timestep ``t_r`` and denoises it again, conditioned
on the image. Rounds stop after R or when the hard mask changes by less than ``tol``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from ..base.errors import ConfigError

__all__ = ["MaskDiffusion", "Proposal", "SamplerConfig", "normalized_entropy"]

# denoise(m_t, x, t) -> clean-mask logits; t is a python int shared by the whole batch.
Denoiser = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]

# At most this many sample pixels (batch × samples × H × W) go through the denoiser at once: a 2,048²
# field is then drawn one sample at a time (its working buffers grow ~315 MiB per megapixel of
# samples on the cpu preset), while training patches (e.g. 8 × 4 × 128²) stay one batch.
SAMPLE_CHUNK_PIXELS = 1 << 22


@dataclass(frozen=True)
class SamplerConfig:
    """How pseudo-labels are drawn: DDIM steps S, samples E, chained rounds R. ``temperature`` divides
    the denoiser's logits before their softmax (1: as trained; below 1 sharpens towards the argmax)."""

    steps: int = 10
    samples: int = 4
    rounds: int = 1
    round_t_fracs: tuple[float, ...] = (0.6, 0.4, 0.25)
    tol: float = 0.002
    eta: float = 0.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 1000:
            raise ConfigError(f"DDIM steps must be in 1..1000, got {self.steps}")
        if self.samples < 1:
            raise ConfigError(f"the number of samples must be >= 1, got {self.samples}")
        if self.rounds < 1:
            raise ConfigError(f"the number of rounds must be >= 1, got {self.rounds}")
        if any(not 0.0 < f < 1.0 for f in self.round_t_fracs):
            raise ConfigError(f"round_t_fracs must lie in (0, 1), got {self.round_t_fracs}")
        if not 0.0 < self.temperature <= 100.0:
            raise ConfigError(f"the sampling temperature must lie in (0, 100], got {self.temperature}")

    def t_frac(self, round_index: int) -> float:
        """Re-noising level (fraction of T) for round ``round_index`` >= 1 (0-based)."""
        fr = self.round_t_fracs
        return fr[min(round_index - 1, len(fr) - 1)]


@dataclass
class Proposal:
    """What the teacher proposes for a batch of images."""

    probs: torch.Tensor  # (B, K, H, W) mean of the E softmax maps
    uncertainty: torch.Tensor  # (B, H, W) normalised entropy of probs, in [0, 1]
    variance: torch.Tensor  # (B, H, W) mean over classes of the variance across the E samples
    round_masks: list[torch.Tensor] = field(default_factory=list)  # hard mask after each round
    rounds_run: int = 1

    @property
    def mask(self) -> torch.Tensor:
        return self.probs.argmax(dim=1)


def normalized_entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Entropy of a probability map divided by log K: 0 = certain, 1 = uniform."""
    k = probs.shape[dim]
    ent = -(probs * torch.log(probs.clamp_min(1e-8))).sum(dim=dim)
    return ent / math.log(k)


class MaskDiffusion:
    """Noise schedule for masks (T training steps) and a seeded DDIM sampler."""

    def __init__(
        self, num_classes: int, num_train_timesteps: int = 1000, schedule: str = "linear_beta"
    ) -> None:
        if num_classes < 2:
            raise ConfigError("a segmentation task needs at least 2 classes (background + foreground)")
        self.num_classes = num_classes
        self.T = num_train_timesteps
        self.schedule = schedule
        self.ddpm = DDPMScheduler(num_train_timesteps=num_train_timesteps, schedule=schedule)
        self.alpha_bar = self.ddpm.alphas_cumprod.float()

    # ----- training side -------------------------------------------------------------------------
    def to_m0(self, y: torch.Tensor) -> torch.Tensor:
        """Label map (B, H, W) → one-hot scaled to {-1, +1}, (B, K, H, W)."""
        return F.one_hot(y.long(), self.num_classes).permute(0, 3, 1, 2).float() * 2.0 - 1.0

    def sample_timesteps(self, n: int, generator: torch.Generator, power: float = 0.5) -> torch.Tensor:
        """Training timesteps, biased towards high noise (``t = T·u^power``).

        High t is where an x0-predicting denoiser must segment from the image alone, which is what a
        one-step (S = 1) proposal uses; low t still gets samples so that later DDIM steps and chained
        rounds refine.
        """
        u = torch.rand(n, generator=generator)
        return (u.pow(power) * self.T).long().clamp_(0, self.T - 1)

    def q_sample(self, m0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process m_t = √ᾱ_t m0 + √(1−ᾱ_t) ε (MONAI's ``add_noise``)."""
        return self.ddpm.add_noise(original_samples=m0, noise=noise, timesteps=t.to(m0.device))

    # ----- sampling side -------------------------------------------------------------------------
    def _ddim(self, steps: int) -> tuple[DDIMScheduler, int]:
        sched = DDIMScheduler(
            num_train_timesteps=self.T, schedule=self.schedule, clip_sample=True, prediction_type="sample"
        )
        sched.set_timesteps(steps)
        # MONAI spaces timesteps with linspace but steps back by T // S; use the matching "trailing"
        # spacing so each step lands exactly on the next timestep it evaluates.
        delta = self.T // steps
        sched.timesteps = torch.tensor([self.T - 1 - delta * i for i in range(steps)], dtype=torch.long)
        return sched, delta

    @torch.no_grad()
    def sample(
        self,
        denoise: Denoiser,
        x: torch.Tensor,
        config: SamplerConfig,
        generator: torch.Generator,
        *,
        init_probs: torch.Tensor | None = None,
        init_t_frac: float | None = None,
        chunk_pixels: int = SAMPLE_CHUNK_PIXELS,
    ) -> Proposal:
        """Draw ``config.samples`` masks per image of ``x`` (B, C, H, W) and summarise them.

        ``init_probs`` (B, K, H, W) starts the chain from an existing mask re-noised to ``init_t_frac``·T
        instead of from pure noise (used to refine a cached proposal).

        The E samples go through the denoiser in chunks of at most ``chunk_pixels`` sample pixels
        (at least one sample per chunk), so a large field of view holds one chunk's working buffers
        instead of E image-sized copies of every buffer; only the samples' clean-mask estimates are
        kept whole (they seed the next chained round). The stop rule of the chained rounds is judged
        on the mean of all E samples, as before.
        """
        b, _, h, w = x.shape
        e, k = config.samples, self.num_classes
        sched, _ = self._ddim(config.steps)
        dev = x.device
        per_chunk = max(1, min(e, chunk_pixels // max(1, b * h * w)))
        chunks = [(s, min(e, s + per_chunk)) for s in range(0, e, per_chunk)]

        def run_chain(m_t: torch.Tensor, xe: torch.Tensor, timesteps: Sequence[int]) -> torch.Tensor:
            x0 = m_t
            for t in timesteps:
                logits = denoise(m_t, xe, int(t)).float()
                if config.temperature != 1.0:
                    logits = logits / config.temperature
                x0_pred = 2.0 * torch.softmax(logits, dim=1) - 1.0
                m_t, x0 = sched.step(x0_pred, int(t), m_t, eta=config.eta, generator=generator)
            return x0  # the last step's clean-mask estimate, in [-1, 1]

        def start_steps(frac: float) -> list[int]:
            t_start = int(frac * self.T)
            return [int(t) for t in sched.timesteps if int(t) <= t_start] or [int(sched.timesteps[-1])]

        def renoise(m0: torch.Tensor, ts: list[int]) -> torch.Tensor:
            noise = torch.randn(m0.shape, generator=generator).to(dev)
            t_tensor = torch.full((m0.shape[0],), ts[0], dtype=torch.long)
            return self.q_sample(m0, t_tensor, noise)

        # x0 of every sample, (B, E, K, H, W): what the next round re-noises and the summary reads.
        x0_all = torch.empty((b, e, k, h, w), dtype=torch.float32, device=dev)

        def one_round(first: bool, ts: list[int]) -> None:
            for s0, s1 in chunks:
                n = s1 - s0
                xe = x.repeat_interleave(n, dim=0)
                if not first:
                    m_t = renoise(x0_all[:, s0:s1].reshape(b * n, k, h, w), ts)
                elif init_probs is not None:
                    m0 = (2.0 * init_probs.to(dev).float() - 1.0).repeat_interleave(n, dim=0)
                    m_t = renoise(m0, ts)
                else:
                    m_t = torch.randn((b * n, k, h, w), generator=generator).to(dev)
                x0_all[:, s0:s1] = run_chain(m_t, xe, ts).view(b, n, k, h, w)
                del xe, m_t

        if init_probs is not None:
            first_ts = start_steps(init_t_frac if init_t_frac is not None else config.t_frac(1))
        else:
            first_ts = [int(t) for t in sched.timesteps]
        one_round(True, first_ts)
        round_masks = [self._sample_stats(x0_all)[0].argmax(1)]
        rounds_run = 1
        for r in range(1, config.rounds):
            one_round(False, start_steps(config.t_frac(r)))
            new_mask = self._sample_stats(x0_all)[0].argmax(1)
            changed = (new_mask != round_masks[-1]).float().mean().item()
            round_masks.append(new_mask)
            rounds_run += 1
            if changed < config.tol:
                break
        probs, variance = self._sample_stats(x0_all, variance=True)
        return Proposal(
            probs=probs,
            uncertainty=normalized_entropy(probs),
            variance=variance,
            round_masks=round_masks,
            rounds_run=rounds_run,
        )

    @staticmethod
    def _sample_probs(x0: torch.Tensor) -> torch.Tensor:
        # x0 in [-1, 1] one-hot space → probabilities per sample (class axis 1)
        p = ((x0 + 1.0) / 2.0).clamp_min(0.0)
        return p / p.sum(dim=1, keepdim=True).clamp_min(1e-8)

    def _sample_stats(
        self, x0_all: torch.Tensor, variance: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean of the E samples' probabilities (B, K, H, W) and, if asked, the variance across the samples
        averaged over classes (B, H, W); one sample at a time, so no E-sized temporaries."""
        e = x0_all.shape[1]
        total = torch.zeros_like(x0_all[:, 0])
        squares = torch.zeros_like(x0_all[:, 0]) if variance and e > 1 else None
        for j in range(e):
            p = self._sample_probs(x0_all[:, j])
            total += p
            if squares is not None:
                squares += p * p
        mean = total / e
        if squares is None:
            return mean, torch.zeros_like(mean[:, 0])
        var = (squares / e - mean * mean).clamp_min_(0.0)
        return mean, var.mean(dim=1)
