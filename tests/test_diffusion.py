"""The sampler, driven by analytic dummy denoisers instead of trained weights (diffusers style)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from napari_diffseg.base.errors import ConfigError
from napari_diffseg.core.diffusion import MaskDiffusion, SamplerConfig, normalized_entropy
from napari_diffseg.core.metrics import segmentation_metrics


def _truth(h: int = 32, w: int = 32) -> torch.Tensor:
    y = torch.zeros(h, w, dtype=torch.long)
    y[8:24, 6:20] = 1
    return y


def _oracle(y: torch.Tensor, strength: float = 6.0):
    onehot = F.one_hot(y, 2).permute(2, 0, 1).float()

    def denoise(m_t, x, t):
        return strength * (2 * onehot - 1).expand(m_t.shape[0], -1, -1, -1)

    return denoise


def test_oracle_denoiser_recovers_the_mask_with_low_uncertainty() -> None:
    y = _truth()
    diff = MaskDiffusion(2)
    x = torch.zeros(1, 3, 32, 32)
    for steps in (1, 5, 10):
        prop = diff.sample(
            _oracle(y), x, SamplerConfig(steps=steps, samples=4), torch.Generator().manual_seed(0)
        )
        assert prop.probs.shape == (1, 2, 32, 32)
        assert torch.equal(prop.mask[0], y)
        assert prop.uncertainty.max() < 0.05
        assert torch.allclose(prop.probs.sum(1), torch.ones(1, 32, 32), atol=1e-5)


def test_uninformative_denoiser_gives_maximal_uncertainty() -> None:
    diff = MaskDiffusion(2)
    prop = diff.sample(
        lambda m, x, t: torch.zeros_like(m),
        torch.zeros(2, 1, 16, 16),
        SamplerConfig(steps=3, samples=3),
        torch.Generator().manual_seed(0),
    )
    assert prop.uncertainty.min() > 0.99
    assert prop.probs.shape == (2, 2, 16, 16)


def test_uncertainty_tracks_disagreement_between_samples() -> None:
    # A denoiser that copies its noisy input: samples disagree everywhere → variance > 0.
    diff = MaskDiffusion(2)
    prop = diff.sample(
        lambda m, x, t: 4 * m,
        torch.zeros(1, 1, 16, 16),
        SamplerConfig(steps=4, samples=6),
        torch.Generator().manual_seed(1),
    )
    assert prop.variance.mean() > 0.05
    assert prop.uncertainty.mean() > 0.3


def test_sampling_is_seeded() -> None:
    diff = MaskDiffusion(2)
    den = lambda m, x, t: 3 * m  # noqa: E731
    cfg = SamplerConfig(steps=5, samples=2, rounds=2, tol=0.0)
    a = diff.sample(den, torch.zeros(1, 1, 16, 16), cfg, torch.Generator().manual_seed(7))
    b = diff.sample(den, torch.zeros(1, 1, 16, 16), cfg, torch.Generator().manual_seed(7))
    c = diff.sample(den, torch.zeros(1, 1, 16, 16), cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a.probs, b.probs)
    assert not torch.equal(a.probs, c.probs)


def test_ddim_evaluates_the_expected_timesteps() -> None:
    diff = MaskDiffusion(2)
    seen: list[int] = []

    def den(m, x, t):
        seen.append(t)
        return torch.zeros_like(m)

    diff.sample(
        den, torch.zeros(1, 1, 8, 8), SamplerConfig(steps=10, samples=1), torch.Generator().manual_seed(0)
    )
    assert seen == [999 - 100 * i for i in range(10)]
    seen.clear()
    cfg = SamplerConfig(steps=10, samples=1, rounds=2, round_t_fracs=(0.5,), tol=0.0)
    diff.sample(den, torch.zeros(1, 1, 8, 8), cfg, torch.Generator().manual_seed(0))
    assert seen[10:] == [499 - 100 * i for i in range(5)]  # round 2 restarts at 0.5 T


def _noisy_oracle(y: torch.Tensor, signal: float):
    onehot = 2 * F.one_hot(y, 2).permute(2, 0, 1).float() - 1

    def denoise(m_t, x, t):
        # weak knowledge of the truth plus whatever the noisy mask says
        return signal * onehot + 2.0 * m_t

    return denoise


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_multi_round_never_makes_the_dummy_case_worse(seed: int) -> None:
    y = _truth(48, 48)
    diff = MaskDiffusion(2)
    cfg = SamplerConfig(steps=10, samples=4, rounds=4, round_t_fracs=(0.6, 0.4, 0.25), tol=0.0)
    prop = diff.sample(
        _noisy_oracle(y, 0.6), torch.zeros(1, 1, 48, 48), cfg, torch.Generator().manual_seed(seed)
    )
    dice = [segmentation_metrics(m[0], y)["dice"] for m in prop.round_masks]
    assert len(dice) == 4
    assert dice[0] < 0.999  # round 1 is imperfect: there is room to improve
    for a, b in itertools.pairwise(dice):
        assert b >= a - 1e-9, dice
    assert dice[-1] > dice[0]


def test_rounds_stop_early_when_the_mask_is_stable() -> None:
    y = _truth()
    cfg = SamplerConfig(steps=4, samples=2, rounds=5, tol=0.01)
    prop = MaskDiffusion(2).sample(
        _oracle(y), torch.zeros(1, 1, 32, 32), cfg, torch.Generator().manual_seed(0)
    )
    assert prop.rounds_run == 2  # round 2 changed nothing → stop


def test_refinement_from_an_existing_mask() -> None:
    y = _truth()
    init = F.one_hot(y, 2).permute(2, 0, 1).float()[None]
    cfg = SamplerConfig(steps=10, samples=2)
    prop = MaskDiffusion(2).sample(
        _noisy_oracle(y, 0.2),
        torch.zeros(1, 1, 32, 32),
        cfg,
        torch.Generator().manual_seed(0),
        init_probs=init,
        init_t_frac=0.25,
    )
    assert segmentation_metrics(prop.mask[0], y)["dice"] > 0.95


def test_training_noise_and_timesteps() -> None:
    diff = MaskDiffusion(2)
    g = torch.Generator().manual_seed(0)
    t = diff.sample_timesteps(10000, g)
    assert t.min() >= 0 and t.max() <= 999
    assert (t > 500).float().mean() > 0.6  # biased towards high noise
    m0 = diff.to_m0(_truth()[None])
    assert set(m0.unique().tolist()) == {-1.0, 1.0}
    noisy = diff.q_sample(m0, torch.tensor([999]), torch.randn(m0.shape, generator=g))
    assert abs(float(noisy.std()) - 1.0) < 0.05


def test_normalized_entropy_bounds() -> None:
    p = torch.tensor([[1.0, 0.5], [0.0, 0.5]])[None]
    e = normalized_entropy(p)
    assert e[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert e[0, 1].item() == pytest.approx(1.0, abs=1e-6)


def test_bad_sampler_config() -> None:
    with pytest.raises(ConfigError):
        SamplerConfig(steps=0)
    with pytest.raises(ConfigError):
        SamplerConfig(round_t_fracs=(1.5,))
    with pytest.raises(ConfigError):
        MaskDiffusion(1)
    with pytest.raises(ConfigError):
        SamplerConfig(temperature=0.0)


def test_temperature_sharpens_the_probabilities_and_keeps_the_mask() -> None:
    """One step: the proposal is softmax(logits / temperature); a soft denoiser (a label-free model's
    background near P = 1/2) becomes confident where its argmax already was, the mask unchanged."""
    y = _truth()
    diff = MaskDiffusion(2)
    x = torch.zeros(1, 3, 32, 32)
    soft = _oracle(y, strength=0.1)  # logits ±0.1: P = sigmoid(0.2) = 0.55 for the right class
    props = {
        tau: diff.sample(soft, x, SamplerConfig(steps=1, samples=2, temperature=tau), torch.Generator())
        for tau in (1.0, 0.25)
    }
    right = F.one_hot(y, 2).permute(2, 0, 1).bool()[None]
    assert props[1.0].probs[right].mean().item() == pytest.approx(
        torch.sigmoid(torch.tensor(0.2)).item(), abs=1e-4
    )
    assert props[0.25].probs[right].mean().item() == pytest.approx(
        torch.sigmoid(torch.tensor(0.8)).item(), abs=1e-4
    )
    assert torch.equal(props[0.25].mask, props[1.0].mask) and torch.equal(props[1.0].mask[0], y)
    assert props[0.25].uncertainty.max() < props[1.0].uncertainty.min()


def test_samples_drawn_in_chunks_pair_each_sample_with_its_image() -> None:
    # A large field of view is sampled a few samples at a time (memory). With a denoiser that reads the
    # image only, every sample of an image is the same mask, so chunking must not change the proposal;
    # a sample paired with another image's pixels would. Chained rounds re-noise every sample.
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 16, 16, generator=gen)
    seen: list[int] = []

    def denoise(m_t, xe, t):
        seen.append(m_t.shape[0])
        return 4.0 * torch.cat([xe - 0.5, 0.5 - xe], dim=1)

    cfg = SamplerConfig(steps=3, samples=4, rounds=3, tol=0.0)
    diff = MaskDiffusion(2)
    whole = diff.sample(denoise, x, cfg, torch.Generator().manual_seed(11))
    assert set(seen) == {8}  # 2 images x 4 samples in one batch
    seen.clear()
    chunked = diff.sample(denoise, x, cfg, torch.Generator().manual_seed(11), chunk_pixels=3 * 16 * 16)
    assert set(seen) == {2}  # one sample of each image per call
    assert whole.rounds_run == chunked.rounds_run == 3
    assert torch.allclose(whole.probs, chunked.probs, atol=1e-6)
    assert torch.equal(chunked.mask, (x[:, 0] < 0.5).long())  # class 1 where x < 0.5
    for a, b in zip(whole.round_masks, chunked.round_masks, strict=True):
        assert torch.equal(a, b)


def test_sample_statistics_are_the_mean_and_variance_of_the_samples() -> None:
    # The summary is accumulated one sample at a time; it must equal the batched formula.
    x0 = torch.rand(2, 5, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (B, E, K, H, W)
    p = MaskDiffusion._sample_probs(x0.flatten(0, 1)).view(2, 5, 3, 8, 8)
    mean, var = MaskDiffusion(3)._sample_stats(x0, variance=True)
    assert torch.allclose(mean, p.mean(dim=1), atol=1e-6)
    assert torch.allclose(var, p.var(dim=1, unbiased=False).mean(dim=1), atol=1e-6)
    assert var.min() > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_uncertain_pixels_are_the_wrong_ones(seed: int) -> None:
    # A denoiser that knows the truth only weakly, with a strength that varies over the image: where it
    # knows little, samples disagree, and the mean mask is wrong more often. Uncertainty that did not track
    # this (a constant, or an entropy of the wrong quantity) would not separate the two groups of pixels.
    y = _truth(48, 48)
    onehot = 2 * F.one_hot(y, 2).permute(2, 0, 1).float() - 1
    strength = torch.linspace(0.05, 3.0, 48)[None, None, None, :]  # weak on the left, strong on the right

    def denoise(m_t, x, t):
        return strength * onehot + 2.0 * m_t

    cfg = SamplerConfig(steps=5, samples=8)
    prop = MaskDiffusion(2).sample(
        denoise, torch.zeros(1, 1, 48, 48), cfg, torch.Generator().manual_seed(seed)
    )
    wrong = (prop.mask[0] != y).float().flatten()
    unc = prop.uncertainty[0].flatten()
    high = unc > unc.median()
    assert wrong.sum() > 0  # there are errors to find
    assert wrong[high].mean() > 2 * wrong[~high].mean() + 0.05, (wrong[high].mean(), wrong[~high].mean())
