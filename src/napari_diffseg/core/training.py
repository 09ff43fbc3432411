"""Training loops: Stage A (cycle pretraining), Stage B (mask diffusion), Stage C (co-training), baselines.

Every loop is a generator that yields ``Event``s at least every ~0.25 s, checks its ``CancelToken``
before each step (and inside long pseudo-label refreshes), checkpoints every ``checkpoint_every`` steps
and when cancelled, and resumes bit-for-bit from its checkpoint: the checkpoint holds the networks, the
optimiser, the random generator and the cached pseudo-labels, so an interrupted run continues exactly
where it stopped.

Every loop also stops at the first non-finite loss or gradient (after the backward pass, before the
optimiser step: one ``isfinite`` over the total loss and over the total gradient norm) and, when it ends,
at any non-finite weight, with :class:`~napari_diffseg.base.errors.TrainingDiverged` naming the stage,
the step and the loss terms; the step's update is never applied and never checkpointed.

Why one module of ~850 lines: the four loops share their resumable-state plumbing (checkpoint, RNG,
pseudo-label cache, ramp-up) and are read side by side when the method changes; the stage *sequence*
lives in :mod:`.pipeline`.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from ..base.errors import Cancelled, ConfigError, TrainingDiverged
from ..base.events import CancelToken, Event, Ticker
from ..base.presets import Preset
from .augment import intensity_jitter, sample_patches
from .checkpoint import load_training_state, save_training_state, saved_module_names
from .device import autocast
from .diffusion import MaskDiffusion, SamplerConfig, normalized_entropy
from .inference import predict_probs, propose
from .label_free import anchor_applies, anchor_split
from .models import ModelBundle, teacher_probs
from .validation import Validator, ValSet, mean_dice

__all__ = [
    "TrainData",
    "cotrain",
    "nonfinite_weights",
    "pretrain_teacher",
    "rampup",
    "spatial_variation",
    "train_baseline",
    "train_teacher",
]


@dataclass
class TrainData:
    """Normalised images (C, H, W) float32; masks (H, W) long for the labeled ones."""

    labeled_images: list[torch.Tensor] = field(default_factory=list)
    labeled_masks: list[torch.Tensor] = field(default_factory=list)
    labeled_weights: list[float] = field(default_factory=list)  # corrections weigh more than ground truth
    unlabeled_images: list[torch.Tensor] = field(default_factory=list)
    val: ValSet | None = None  # held-out labeled images: checkpoint choice and the pseudo-label gate

    def __post_init__(self) -> None:
        if len(self.labeled_images) != len(self.labeled_masks):
            raise ConfigError("labeled_images and labeled_masks must have the same length")
        if not self.labeled_weights:
            self.labeled_weights = [1.0] * len(self.labeled_images)
        for i, (x, y) in enumerate(zip(self.labeled_images, self.labeled_masks, strict=True)):
            if x.shape[-2:] != y.shape[-2:]:
                raise ConfigError(f"labeled image {i} is {tuple(x.shape[-2:])} but its mask {tuple(y.shape)}")

    @property
    def all_images(self) -> list[torch.Tensor]:
        return self.labeled_images + self.unlabeled_images


def rampup(step: int, total: int, frac: float) -> float:
    """Sigmoid ramp-up exp(-5 (1 - s)^2) over the first ``frac`` of training (Laine & Aila)."""
    if frac <= 0:
        return 1.0
    s = min(1.0, step / max(1.0, frac * total))
    return math.exp(-5.0 * (1.0 - s) ** 2)


_dicece = DiceCELoss(to_onehot_y=True, softmax=True)


def _sup_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _dicece(logits.float(), y[:, None])


def _weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    return (ce * weight).sum() / weight.sum().clamp_min(1.0)


def _world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def synced_cancelled(token: CancelToken) -> bool:
    """The token's state, agreed by every rank under torch.distributed (any rank cancelled → all stop).

    Without the agreement a rank that saw a cancel file one step earlier than another would leave its
    peers waiting forever in the next gradient all-reduce.
    """
    return _any_rank(token.cancelled)


def _any_rank(flag: bool) -> bool:
    """``flag``, True on every rank when it is True on any (a no-op without torch.distributed)."""
    if _world()[1] > 1:
        import torch.distributed as dist

        # NCCL reduces only CUDA tensors (torchrun sets each rank's device: core/distributed.py)
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        t = torch.tensor([1.0 if flag else 0.0], device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flag = bool(t.item() > 0)
    return flag


class _Loop:
    """Bookkeeping shared by every loop: resume, events, checkpoints, cancellation."""

    def __init__(
        self,
        phase: str,
        total: int,
        *,
        modules: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        generator: torch.Generator,
        cancel: CancelToken | None,
        checkpoint: str | Path | None,
        checkpoint_every: int,
        is_main: bool = True,
    ) -> None:
        self.phase, self.total = phase, total
        self.modules, self.optimizers, self.generator = modules, optimizers, generator
        self.cancel = cancel or CancelToken()
        self.path = Path(checkpoint) if checkpoint is not None else None
        self.every = checkpoint_every
        self.ticker = Ticker()
        self.is_main = is_main and _world()[0] == 0  # under torch.distributed only rank 0 writes
        self.tensors: dict[str, torch.Tensor] = {}

    def parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter of the loop's modules (whose gradients the non-finite check reads)."""
        for module in self.modules.values():
            yield from module.parameters()

    def resume(self) -> int:
        if self.path is None or not self.path.exists():
            return 0
        tensors, extra = load_training_state(
            self.path, modules=self.modules, optimizers=self.optimizers, generators={"gen": self.generator}
        )
        if extra.get("phase") != self.phase:
            raise ConfigError(
                f"checkpoint {self.path} belongs to phase {extra.get('phase')!r}, not {self.phase!r}"
            )
        self.tensors = tensors
        return int(extra["step"])

    def save(self, step: int) -> Event | None:
        if self.path is None or not self.is_main:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_training_state(
            self.path,
            modules=self.modules,
            optimizers=self.optimizers,
            generators={"gen": self.generator},
            tensors=self.tensors,
            extra={"phase": self.phase, "step": step, "total": self.total},
        )
        return Event(
            "checkpoint", self.phase, step, self.total, message=str(self.path), elapsed=self.ticker.elapsed
        )

    def check_cancel(self, step: int) -> Iterator[Event]:
        if synced_cancelled(self.cancel):
            ev = self.save(step)
            if ev is not None:
                yield ev
            raise Cancelled(
                f"{self.phase} cancelled at step {step}/{self.total}; its checkpoint can be resumed"
            )

    def after_step(self, step: int, losses: dict[str, float], force: bool = False) -> Iterator[Event]:
        """``step`` = number of steps completed."""
        last = step == self.total
        if self.ticker.due(force or last or step == 1):
            yield Event("progress", self.phase, step, self.total, losses=losses, elapsed=self.ticker.elapsed)
        if self.path is not None and (last or (self.every and step % self.every == 0)):
            ev = self.save(step)
            if ev is not None:
                yield ev


def _validator(
    bundle: ModelBundle,
    data: TrainData,
    preset: Preset,
    loop: _Loop,
    reference: nn.Module | None = None,
    *,
    nets: dict[str, nn.Module] | None = None,
    every: int | None = None,
    patience: int | None = None,
    scorer: Callable[[], float] | None = None,
    prefix: str = "val:",
) -> Validator:
    """The validator of a loop's deployed networks (call after ``loop.resume()``: it keeps its state in
    the loop's checkpoint tensors); ``reference``: the labels-only student of the reference gate and of the
    fallback. ``nets`` / ``every`` / ``patience`` / ``scorer`` replace the deployed networks, the preset's
    ``val_every`` and ``val_patience``, and their scoring (Stage B's teacher: `_teacher_validator`);
    ``prefix`` keeps its state apart from another validator's in the same loop."""
    return Validator(
        {name: bundle.nets[name] for name in bundle.deploy} if nets is None else nets,
        data.val,
        loop.tensors,
        num_classes=bundle.spec.num_classes,
        multiple=bundle.spec.multiple,
        roi=preset.roi_size,
        sw_batch=preset.sw_batch_size,
        every=preset.val_every if every is None else every,
        margin=preset.pseudo_gate_margin,
        patience=preset.val_patience if patience is None else patience,
        reference=reference,
        reference_gate=preset.pseudo_gate_reference,
        fallback=preset.reference_fallback and reference is not None,
        scorer=scorer,
        prefix=prefix,
    )


def _finish(validator: Validator, phase: str, total: int, elapsed: float) -> Iterator[Event]:
    """Restore the best validation weights and say so."""
    best = validator.restore_best()
    if best is None:
        return
    message = f"kept the weights of step {best} (validation Dice {validator.best_dice:.3f})"
    losses = {}
    if validator.fallback:
        losses = {"deployed_reference": float(validator.deployed_reference)}
        if validator.deployed_reference:
            message = (
                f"kept the weights of the labels-only student, step {best} (validation Dice "
                f"{validator.best_reference_dice:.3f} against the twins' best {validator.best_dice:.3f}): "
                "the unlabeled images did not help on the validation images, so both students take them"
            )
    yield Event("log", phase, total, total, losses=losses, elapsed=elapsed, message=message)


def nonfinite_weights(modules: Mapping[str, nn.Module]) -> list[str]:
    """``"{module}.{key}"`` of every floating-point weight or buffer that holds a NaN or an infinity."""
    names, flags = [], []
    for name, module in modules.items():
        for key, t in module.state_dict().items():
            if t.is_floating_point() or t.is_complex():
                names.append(f"{name}.{key}")
                flags.append(torch.isfinite(t.detach()).all())
    if not flags:
        return []
    ok = torch.stack(flags).cpu().tolist()
    return [n for n, good in zip(names, ok, strict=True) if not good]


def _divergence_advice(preset: Preset) -> str:
    lower = min(preset.lr / 10, 1e-3)  # 1e-3: every named preset's lr
    return (
        f"Lower the learning rate (lr is {preset.lr:g}; try {lower:g}, e.g. overrides "
        f'{{"lr": {lower:g}}}) or the loss weights, or look for NaN or extreme values in the training '
        "images, and train again: resuming this run repeats the divergence. Nothing from the diverged "
        "step was applied or saved."
    )


def _fmt(v: torch.Tensor | float) -> str:
    return f"{float(v.detach()) if isinstance(v, torch.Tensor) else float(v):.4g}"


def _grad_norm(params: Iterable[nn.Parameter]) -> torch.Tensor:
    """Total L2 norm of the gradients (what gradient clipping computes); 0 without any."""
    norms = [torch.linalg.vector_norm(p.grad.detach()) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def _check_step(
    phase: str,
    step: int,
    total: int,
    preset: Preset,
    terms: Mapping[str, torch.Tensor | float],
    params: Iterable[nn.Parameter],
) -> None:
    """Stop at a non-finite loss or gradient: call after ``backward()``, before the optimiser step.

    ``terms["loss"]`` is the total loss; ``step`` counts from 1. One sync per step (the loops read the
    loss anyway); under torch.distributed every rank agrees, so all of them stop at the same step.

    Raises:
        TrainingDiverged: The total loss or the total gradient norm is NaN or infinite (on any rank).
    """
    loss = terms["loss"]
    loss_t = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
    grad_norm = _grad_norm(params)
    finite = torch.stack([torch.isfinite(loss_t).all(), torch.isfinite(grad_norm.to(loss_t.device))])
    loss_ok, grad_ok = (bool(x) for x in finite.cpu().tolist())
    if not _any_rank(not (loss_ok and grad_ok)):
        return
    values = ", ".join(f"{k}={_fmt(v)}" for k, v in terms.items())
    what = (
        "the loss is not finite"
        if not loss_ok
        else "the gradient is not finite"
        if not grad_ok
        else "the loss or the gradient of another process is not finite"
    )
    raise TrainingDiverged(
        f"training diverged in stage {phase!r} at step {step}/{total}: {what} ({values}; gradient norm "
        f"{_fmt(grad_norm)}). {_divergence_advice(preset)}"
    )


def _check_weights(phase: str, total: int, preset: Preset, modules: Mapping[str, nn.Module]) -> None:
    """Stop when a stage ends with a non-finite weight (e.g. its last update overflowed).

    Raises:
        TrainingDiverged: Some weight or buffer holds NaN or infinity; the message names them.
    """
    bad = nonfinite_weights(modules)
    if bad:
        raise TrainingDiverged(
            f"training diverged in stage {phase!r} (step {total}/{total}): {len(bad)} weight tensor(s) "
            f"hold NaN or infinite values (e.g. {', '.join(bad[:3])}). {_divergence_advice(preset)}"
        )


def _stop_event(validator: Validator, phase: str, step: int, loop: _Loop) -> Event:
    return Event(
        "log",
        phase,
        step,
        loop.total,
        elapsed=loop.ticker.elapsed,
        message=f"validation Dice has not improved for {validator.patience} checks (best "
        f"{validator.best_dice:.3f} at step {validator.best_step}): stopping at step {step}",
    )


def _adam(params: Sequence[nn.Parameter], preset: Preset) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=preset.lr, weight_decay=preset.weight_decay)


def _to(dev: torch.device, *ts: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(dev, non_blocking=True) for t in ts]


def _pick(weights: Sequence[float], n: int, gen: torch.Generator) -> list[int]:
    w = torch.tensor(weights, dtype=torch.float64)
    return torch.multinomial(w, n, replacement=True, generator=gen).tolist()


def _uniform(n_items: int, n: int, gen: torch.Generator) -> list[int]:
    return torch.randint(0, n_items, (n,), generator=gen).tolist()


# ------------------------------------------------------------------------------------------------
# Stage A: unsupervised cycle pretraining
# ------------------------------------------------------------------------------------------------
def class_variance(x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Expected within-class variance of image ``x`` (B, C, H, W) under the soft mask ``probs``
    (B, K, H, W): sum_k p_k |x - mu_k|^2 averaged over pixels and channels, with mu_k the p_k-weighted
    mean of each image. The image explained by the mask alone (one colour per class): its minimum over
    hard masks is the K-means split of the image, and for fixed means it is linear in p, so it is
    minimal at hard masks (no soft code for intensity can lower it)."""
    w = probs.float()
    xf = x.float()
    mass = w.sum(dim=(2, 3)).clamp_min(1e-6)  # (B, K)
    mu = torch.einsum("bkhw,bchw->bkc", w, xf) / mass[..., None]  # (B, K, C)
    d2 = (xf[:, None] - mu[..., None, None]).pow(2).mean(dim=2)  # (B, K, H, W)
    return (w * d2).sum(dim=1).mean()


def spatial_variation(probs: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
    """The mean absolute difference of ``probs`` ``(B, K, H, W)`` between vertically and between horizontally
    neighbouring pixels, summed over the classes and halved: 0 for a constant map, 1 for a hard
    checkerboard, about the share of pixels on a boundary for a hard mask of blobs (one value per sample
    with ``per_sample``)."""
    dy = (probs[:, :, 1:] - probs[:, :, :-1]).abs().sum(1).flatten(1).mean(1)
    dx = (probs[..., 1:] - probs[..., :-1]).abs().sum(1).flatten(1).mean(1)
    v = (dy + dx) / 4
    return v if per_sample else v.mean()


def pretrain_teacher(
    bundle: ModelBundle,
    images: Sequence[torch.Tensor],
    preset: Preset,
    *,
    generator: torch.Generator,
    device: torch.device,
    cancel: CancelToken | None = None,
    checkpoint: str | Path | None = None,
    instances: bool = False,
) -> Iterator[Event]:
    """Stage A: the mask pathway's one-step mask must help the image pathway reconstruct the image.

    The image pathway predicts the clean image from the noised one and the mask (``pretrain_predict_x0``;
    else the noise, the design before issue 14, which hardly needs the mask), the within-class variance
    of the image under the mask is added (``pretrain_class_var_weight``), and the class prior is a hinge
    on a minimum share (``pretrain_min_class_share``; 0: the pull towards equal shares). With
    ``pretrain_split_weight`` the one-step mask is also pulled towards a classical label-free split of the
    patch on dark-field images (:func:`~napari_diffseg.core.label_free.anchor_split`, class 1 the brighter
    side; with ``instances``, an instance project's 3-class target of its pieces); images without one, every
    image of a bright-field set, and a multiclass project (more than two classes, not ``instances``) train
    as without it. On the patches without an anchor the mask's :func:`spatial_variation` is added
    (``pretrain_smooth_weight``): without it the 50/50 prior is met by a checkerboard.
    """
    if not images:
        raise ConfigError("pretraining needs at least one image")
    f, g = bundle.nets["teacher_mask"], bundle.nets["teacher_image"]
    diff = bundle.diffusion()
    k = diff.num_classes
    opt = _adam([*f.parameters(), *g.parameters()], preset)
    loop = _Loop(
        "pretrain",
        preset.pretrain_steps,
        modules={"teacher_mask": f, "teacher_image": g},
        optimizers={"opt": opt},
        generator=generator,
        cancel=cancel,
        checkpoint=checkpoint,
        checkpoint_every=preset.checkpoint_every,
    )
    start = loop.resume()
    f.train()
    g.train()
    b, p = preset.batch_size, preset.patch_size
    t_lo = min(diff.T - 1, int(preset.pretrain_t_min_frac * diff.T))  # high noise: the mask must help
    min_share = preset.pretrain_min_class_share
    fields = [list(images)]
    if anchor_applies(preset.pretrain_split_weight, k, instances):
        splits = [anchor_split(im, instances) for im in images]
        if any(sp is not None for sp in splits):  # an image without one takes no part in the anchor
            fields.append(
                [
                    torch.from_numpy(sp)
                    if sp is not None
                    else torch.full(im.shape[-2:], -1, dtype=torch.long)
                    for sp, im in zip(splits, images, strict=True)
                ]
            )
    for step in range(start, loop.total):
        yield from loop.check_cancel(step)
        x, *split = sample_patches(fields, _uniform(len(images), b, generator), p, generator)
        x = intensity_jitter(x, generator, 0.5)
        m_T = torch.randn((b, k, p, p), generator=generator)
        t = torch.randint(t_lo, diff.T, (b,), generator=generator)
        eps = torch.randn(x.shape, generator=generator)
        x, m_T, eps = _to(device, x, m_T, eps)
        with autocast(device):
            logits = f(m_T, x, torch.full((b,), diff.T - 1, device=device, dtype=torch.long))
            probs = torch.softmax(logits.float() / preset.pretrain_tau, dim=1)
            x_t = diff.q_sample(x, t, eps)
            out = g(x_t, probs, t.to(device))
        # x0: the image itself, which at high t only the mask can tell; eps: the noise (the old target,
        # whose optimum barely depends on the image, and so on the mask, once x_t is mostly noise)
        rec = F.mse_loss(out.float(), x if preset.pretrain_predict_x0 else eps)
        share = probs.mean(dim=(0, 2, 3))
        if min_share > 0:  # only stop a class from vanishing: the split itself is learned
            marginal = F.relu(min_share - share).sum() / min_share
        else:  # push the split towards equal shares
            marginal = math.log(k) - normalized_entropy(share[None, :, None]).mean() * math.log(k)
        pixel = normalized_entropy(probs).mean()
        loss = rec + preset.pretrain_marginal_weight * marginal + preset.pretrain_pixel_entropy_weight * pixel
        terms = {"loss": loss, "reconstruction": rec, "marginal": marginal, "pixel_entropy": pixel}
        if preset.pretrain_class_var_weight > 0:
            cvar = class_variance(x, probs)
            terms["class_variance"] = cvar
            terms["loss"] = loss = loss + preset.pretrain_class_var_weight * cvar
        target = split[0].to(device).long() if split else None
        if preset.pretrain_smooth_weight > 0:  # on the patches the anchor does not tie to the image
            free = (
                (target < 0).flatten(1).all(1).float() if target is not None else torch.ones(b, device=device)
            )
            smooth = (spatial_variation(probs, per_sample=True) * free).sum() / free.sum().clamp(min=1)
            terms["smoothness"] = smooth
            terms["loss"] = loss = loss + preset.pretrain_smooth_weight * smooth
        if target is not None:
            known = int((target >= 0).sum())
            anchor = F.cross_entropy(logits.float(), target, ignore_index=-1, reduction="sum") / max(known, 1)
            terms["split"] = anchor
            terms["loss"] = loss = loss + preset.pretrain_split_weight * anchor
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _check_step("pretrain", step + 1, loop.total, preset, terms, loop.parameters())
        opt.step()
        yield from loop.after_step(step + 1, {k: float(v.detach()) for k, v in terms.items()})
    _check_weights("pretrain", loop.total, preset, loop.modules)
    yield Event("done", "pretrain", loop.total, loop.total, elapsed=loop.ticker.elapsed)


# ------------------------------------------------------------------------------------------------
# Stage B: the teacher as a mask diffusion model on labeled images
# ------------------------------------------------------------------------------------------------
def recycled_start(
    f: nn.Module,
    diff: MaskDiffusion,
    m0: torch.Tensor,
    x: torch.Tensor,
    t: torch.Tensor,
    gen: torch.Generator,
    prob: float,
    t_max_frac: float = 0.7,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a random part of the batch's clean masks by the teacher's own one-step estimate.

    Chained rounds (and later DDIM steps) re-noise the teacher's *own* previous estimate, not a ground
    truth; trained only on noised ground truth, a denoiser learns to trust the noisy mask at small t
    and so copies its own mistakes. With probability ``prob`` a sample instead starts from the
    teacher's detached one-step prediction, noised to t ~ U(0.1, t_max_frac)·T, and must still output
    the true mask: the teacher learns to *refine*, which is what rounds r > 1 ask of it.
    Returns the (possibly replaced) m0 and t.
    """
    b = m0.shape[0]
    if prob <= 0:
        return m0, t
    pick = torch.rand(b, generator=gen) < prob
    if not bool(pick.any()):
        return m0, t
    dev = m0.device
    noise = torch.randn(m0.shape, generator=gen).to(dev)
    t_rec = (0.1 + (t_max_frac - 0.1) * torch.rand(b, generator=gen)) * diff.T
    t_rec = t_rec.long().clamp_(0, diff.T - 1)
    with torch.no_grad():
        idx = pick.nonzero().flatten().to(dev)
        t_top = torch.full((len(idx),), diff.T - 1, dtype=torch.long, device=dev)
        with autocast(dev):
            est = 2.0 * torch.softmax(f(noise[idx], x[idx], t_top).float(), dim=1) - 1.0
    m0 = m0.clone()
    m0[idx] = est.to(m0.dtype)
    t = torch.where(pick, t_rec, t)
    return m0, t


def _teacher_loss(
    f: nn.Module,
    diff: MaskDiffusion,
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    device: torch.device,
    recycle_prob: float = 0.0,
) -> torch.Tensor:
    b = x.shape[0]
    t = diff.sample_timesteps(b, gen)
    m0, t = recycled_start(f, diff, diff.to_m0(y), x, t, gen, recycle_prob)
    eps = torch.randn((b, diff.num_classes, *y.shape[-2:]), generator=gen).to(device)
    m_t = diff.q_sample(m0, t, eps)
    with autocast(device):
        logits = f(m_t, x, t.to(device))
    return _sup_loss(logits, y)


def teacher_check_config(preset: Preset) -> SamplerConfig:
    """How a validation check samples the teacher: as a first pseudo-label refresh samples
    (``refresh_ddim_steps`` DDIM steps, ``refresh_samples`` samples), one round."""
    return SamplerConfig(steps=preset.refresh_ddim_steps, samples=preset.refresh_samples, rounds=1)


@torch.no_grad()
def teacher_labels(bundle: ModelBundle, images: Sequence[torch.Tensor], preset: Preset) -> list[torch.Tensor]:
    """The teacher's label map of each (C, H, W) image, sampled as a validation check samples it
    (:func:`teacher_check_config`) with a fixed seed per image (its position:
    :func:`~napari_diffseg.core.models.teacher_probs`), so that two checks differ by the teacher's weights
    alone and a bundle that deploys its teacher (``deploy_best``) predicts these very labels."""
    cfg = teacher_check_config(preset)
    return [
        teacher_probs(bundle, x, cfg, roi=preset.roi_size, sw_batch=preset.sw_batch_size, index=i)
        .argmax(0)
        .cpu()
        for i, x in enumerate(images)
    ]


def teacher_and_mean_labels(
    bundle: ModelBundle, images: Sequence[torch.Tensor], preset: Preset
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two candidates' label maps of each (C, H, W) image from one teacher sample: the teacher's
    (exactly :func:`teacher_labels`') and the mean of its probabilities and the students' mean softmax
    (``deploy_mean``'s candidate: what a bundle with ``teacher_weight`` 0.5 predicts)."""
    cfg = teacher_check_config(preset)
    roi, sw = preset.roi_size, preset.sw_batch_size
    teacher, mean = [], []
    with torch.no_grad():
        for i, x in enumerate(images):
            t = teacher_probs(bundle, x, cfg, roi=roi, sw_batch=sw, index=i)
            s = predict_probs(
                bundle.deployed(), x[None], multiple=bundle.spec.multiple, roi=roi, sw_batch=sw
            )[0]
            teacher.append(t.argmax(0).cpu())
            mean.append((0.5 * t + 0.5 * s.to(t.device)).argmax(0).cpu())
    return teacher, mean


def teacher_val_dice(bundle: ModelBundle, val: ValSet, preset: Preset) -> float:
    """The teacher's mean Dice on the validation images (:func:`teacher_labels`)."""
    return mean_dice(teacher_labels(bundle, val.images, preset), val, bundle.spec.num_classes)


def teacher_mean_val_dice(bundle: ModelBundle, val: ValSet, preset: Preset) -> float:
    """The teacher-student mean's Dice on the validation images (:func:`teacher_and_mean_labels`)."""
    return mean_dice(teacher_and_mean_labels(bundle, val.images, preset)[1], val, bundle.spec.num_classes)


def _teacher_validator(
    bundle: ModelBundle,
    data: TrainData,
    preset: Preset,
    loop: _Loop,
    *,
    every: int,
    patience: int = 0,
    prefix: str = "val:",
) -> Validator | None:
    """A validator of the teacher's samples on the validation images (:func:`teacher_val_dice`) every
    ``every`` steps, keeping its best weights; None without validation images or with ``every`` 0.

    Stage B's (``preset.teacher_val_every``) also stops the stage after ``preset.teacher_val_patience``
    checks without improvement; co-training's (``preset.teacher_keep_best``, every refresh) keeps its
    state under ``tval:`` in the loop's checkpoint tensors, apart from the students' validator."""
    if every <= 0 or data.val is None or len(data.val) == 0:
        return None
    return _validator(
        bundle,
        data,
        preset,
        loop,
        nets={"teacher_mask": bundle.nets["teacher_mask"]},
        every=every,
        patience=patience,
        scorer=functools.partial(teacher_val_dice, bundle, data.val, preset),
        prefix=prefix,
    )


def _keep_teacher(
    keeper: Validator, step: int, total: int, elapsed: float, *, final: bool
) -> Iterator[Event]:
    """Score the teacher after ``step`` co-training steps; where it scores below its best check, give it
    that check's weights back (before a refresh: so that it labels with them; ``final``: the run ends
    with them). Yields the check as a progress event and any restore as a log event."""
    checked = keeper.check(step)
    losses = {"teacher_val_dice": checked["val_dice"], "teacher_val_best": checked["val_best"]}
    yield Event("progress", "cotrain", step, total, losses=losses, elapsed=elapsed)
    if checked["val_dice"] < keeper.best_dice:
        best = keeper.restore_best()
        yield Event(
            "log",
            "cotrain",
            step,
            total,
            losses=losses,
            elapsed=elapsed,
            message=(
                f"kept the teacher's weights of step {best} (validation Dice {keeper.best_dice:.3f} against "
                f"{checked['val_dice']:.3f} at step {step})"
                + ("" if final else ": it labels the next pseudo-labels with them")
            ),
        )


def _deploy_best(
    bundle: ModelBundle,
    preset: Preset,
    validator: Validator,
    keeper: Validator | None,
    val: ValSet | None,
    total: int,
    elapsed: float,
) -> Event:
    """``preset.deploy_best``, once the students and the teacher hold their best weights: the teacher is
    what the bundle predicts with (``bundle.teacher_sampler``) when its best check scored the validation
    images above what the students deploy (their best check, or the labels-only student the fallback
    chose); a tie keeps the cheaper students, and so does a round without validation images (``keeper``
    None). With ``preset.deploy_mean`` the mean of the teacher's probabilities and the students' is a third
    candidate, scored on the same images (one more teacher pass) and chosen only above both (a tie goes to
    the cheaper). A log event says which, with the figures."""
    if keeper is None:
        return Event(
            "log",
            "cotrain",
            total,
            total,
            elapsed=elapsed,
            message="deploys the students: deploy_best compares them with the teacher on validation images, "
            "and this round has none (annotate images of the val split)",
        )
    students = validator.best_reference_dice if validator.deployed_reference else validator.best_dice
    teacher = keeper.best_dice
    mean = float("nan")
    if preset.deploy_mean and val is not None and len(val):
        mean = teacher_mean_val_dice(bundle, val, preset)
    sampler = f"{preset.refresh_ddim_steps} DDIM steps, {preset.refresh_samples} samples"  # how the teacher predicts
    also = "" if mean != mean else f", the mean of both {mean:.3f}"
    losses = {"teacher_val_best": teacher}
    if mean == mean:
        losses["mean_val"] = mean
    scored = all(v == v for v in (students, teacher, mean))  # nan: never scored
    if scored and mean > max(students, teacher):
        bundle.teacher_sampler, bundle.teacher_weight = teacher_check_config(preset), 0.5
        message = (
            f"deploys the mean of the teacher and the students: validation Dice {mean:.3f} against the "
            f"teacher's {teacher:.3f} and the students' {students:.3f}; predictions average the teacher's "
            f"mean sample ({sampler}) with the students'"
        )
    elif teacher > students:  # not where either was never scored (nan): the students stay
        bundle.teacher_sampler, bundle.teacher_weight = teacher_check_config(preset), 1.0
        message = (
            f"deploys the teacher: validation Dice {teacher:.3f} against the students' {students:.3f}{also}; "
            f"predictions are its mean sample ({sampler})"
        )
    else:
        message = (
            f"deploys the students: validation Dice {students:.3f} against the teacher's {teacher:.3f}{also}"
        )
    losses["deploy_teacher"] = bundle.teacher_weight if bundle.deploys_teacher else 0.0
    return Event("log", "cotrain", total, total, losses=losses, elapsed=elapsed, message=message)


def train_teacher(
    bundle: ModelBundle,
    data: TrainData,
    preset: Preset,
    *,
    generator: torch.Generator,
    device: torch.device,
    cancel: CancelToken | None = None,
    checkpoint: str | Path | None = None,
    steps: int | None = None,
) -> Iterator[Event]:
    """Stage B: x0-prediction mask diffusion, loss = Dice + cross-entropy against the labels.

    With ``preset.teacher_val_every`` > 0 (and validation images) ``teacher_steps`` is a cap: the teacher's
    samples are scored on the validation images every that many steps, its best weights are kept, and the
    stage stops after ``preset.teacher_val_patience`` checks without improvement (0: runs to the cap)."""
    if not data.labeled_images:
        raise ConfigError(
            "the teacher needs at least one labeled (or corrected) image; correct a proposal first"
        )
    f = bundle.nets["teacher_mask"]
    diff = bundle.diffusion()
    opt = _adam(list(f.parameters()), preset)
    loop = _Loop(
        "teacher",
        preset.teacher_steps if steps is None else steps,
        modules={"teacher_mask": f},
        optimizers={"opt": opt},
        generator=generator,
        cancel=cancel,
        checkpoint=checkpoint,
        checkpoint_every=preset.checkpoint_every,
    )
    start = loop.resume()
    validator = _teacher_validator(
        bundle, data, preset, loop, every=preset.teacher_val_every, patience=preset.teacher_val_patience
    )
    f.train()
    b, p = preset.batch_size, preset.patch_size
    for step in range(start, loop.total):
        yield from loop.check_cancel(step)
        idx = _pick(data.labeled_weights, b, generator)
        x, y = sample_patches([data.labeled_images, data.labeled_masks], idx, p, generator)
        x = intensity_jitter(x, generator, 1.0)
        x, y = _to(device, x, y)
        loss = _teacher_loss(f, diff, x, y, generator, device, preset.recycle_prob)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _check_step("teacher", step + 1, loop.total, preset, {"loss": loss}, loop.parameters())
        opt.step()
        losses = {"loss": loss.item()}
        if validator is not None and validator.due(step + 1, loop.total):
            checked = validator.check(step + 1)
            losses |= {"teacher_val_dice": checked["val_dice"], "teacher_val_best": checked["val_best"]}
            f.train()
        yield from loop.after_step(step + 1, losses, force="teacher_val_dice" in losses)
        if validator is not None and validator.stalled(step + 1):
            yield _stop_event(validator, "teacher", step + 1, loop)
            break
    if validator is not None:
        yield from _finish(validator, "teacher", loop.total, loop.ticker.elapsed)
    _check_weights("teacher", loop.total, preset, loop.modules)
    yield Event("done", "teacher", loop.total, loop.total, elapsed=loop.ticker.elapsed)


# ------------------------------------------------------------------------------------------------
# Stage C: co-training of the teacher and the twin students
# ------------------------------------------------------------------------------------------------
def _wants_reference(preset: Preset, validated: bool) -> bool:
    """Whether a co-training round trains the labels-only student (see `CoTrainModule`)."""
    return validated and (preset.pseudo_gate_reference or preset.reference_fallback)


class CoTrainModule(nn.Module):
    """Teacher mask pathway + twin students; ``forward`` returns every loss of one co-training step.

    One module, one forward, one backward: this is what DDP wraps when the loop runs under torchrun.
    """

    def __init__(
        self, bundle: ModelBundle, preset: Preset, validated: bool = True, reference: bool | None = None
    ) -> None:
        super().__init__()
        self.teacher = bundle.nets["teacher_mask"]
        self.student_a = bundle.nets["student_a"]
        self.student_b = bundle.nets["student_b"]
        # the labels-only student of the reference gate and of the fallback (preset.pseudo_gate_reference,
        # preset.reference_fallback): a copy of student A at the round's start, trained on the same
        # labeled patches with the supervised loss alone. Both act on validation checks, so a run without
        # validation images (``validated`` False) trains none. ``reference`` (True/False) overrides that
        # rule: a resumed run keeps what its checkpoint was trained with.
        with_reference = _wants_reference(preset, validated) if reference is None else reference
        self.reference = copy.deepcopy(self.student_a) if with_reference else None
        self.diff = bundle.diffusion()
        self.preset = preset

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        ramp: float,
        gen: torch.Generator,
        gate: float = 1.0,
        cps_gate: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        pr = self.preset
        xa_l, xb_l, y_l = batch["xa_l"], batch["xb_l"], batch["y_l"]
        xa_u, xb_u = batch["xa_u"], batch["xb_u"]
        pl_probs, pl_conf = batch["pl_probs"], batch["pl_conf"]
        dev = xa_l.device
        la_l, lb_l = self.student_a(xa_l), self.student_b(xb_l)
        la_u, lb_u = self.student_a(xa_u), self.student_b(xb_u)
        sup = _sup_loss(la_l, y_l) + _sup_loss(lb_l, y_l)
        # students ← teacher pseudo-labels, weighted by the teacher's confidence
        y_t = pl_probs.argmax(1)
        pseudo = _weighted_ce(la_u, y_t, pl_conf) + _weighted_ce(lb_u, y_t, pl_conf)
        # cross pseudo-supervision between the twins
        pa, pb = torch.softmax(la_u.float(), 1).detach(), torch.softmax(lb_u.float(), 1).detach()
        ones = torch.ones_like(pl_conf)
        cps = _weighted_ce(la_u, pb.argmax(1), ones) + _weighted_ce(lb_u, pa.argmax(1), ones)
        # teacher: Stage-B loss on labeled data, and towards the students' confident consensus
        # (on the first half of each batch: the teacher is the dearer network)
        h = max(1, y_l.shape[0] // 2)
        t_l, eps_l, t_u, eps_u = batch["t_l"][:h], batch["eps_l"][:h], batch["t_u"][:h], batch["eps_u"][:h]
        m0_l, t_l = recycled_start(
            self.teacher, self.diff, self.diff.to_m0(y_l[:h]), xa_l[:h], t_l, gen, pr.recycle_prob
        )
        m_l = self.diff.q_sample(m0_l, t_l, eps_l)
        teacher_sup = _sup_loss(self.teacher(m_l, xa_l[:h], t_l.to(dev)), y_l[:h])
        pm = (pa[:h] + pb[:h]) / 2
        y_c = pm.argmax(1)
        agree = ((pa[:h].argmax(1) == pb[:h].argmax(1)) & (pm.amax(1) > pr.consensus_threshold)).float()
        m_u = self.diff.q_sample(self.diff.to_m0(y_c), t_u, eps_u)
        teacher_unsup = _weighted_ce(self.teacher(m_u, xa_u[:h], t_u.to(dev)), y_c, agree)
        cps_w = cps_weight(pr, gate)
        if pr.pseudo_rampup:
            unsup = ramp * (gate * pr.unsup_weight * pseudo + cps_gate * cps_w * cps)
        else:  # the teacher's term at full weight from the first step: the gate alone weighs it
            unsup = gate * pr.unsup_weight * pseudo + ramp * cps_gate * cps_w * cps
        loss = sup + unsup + teacher_sup + ramp * pr.teacher_unsup_weight * teacher_unsup
        out = {
            "sup": sup.detach(),
            "pseudo": pseudo.detach(),
            "cps": cps.detach(),
            "teacher_sup": teacher_sup.detach(),
            "teacher_unsup": teacher_unsup.detach(),
            "agree": agree.mean().detach(),
        }
        if self.reference is not None:  # its own parameters: adding its loss trains it alone
            ref_sup = _sup_loss(self.reference(xa_l), y_l)
            loss = loss + ref_sup
            out["ref_sup"] = ref_sup.detach()
        return {"loss": loss, **out}


def cps_weight(preset: Preset, gate: float) -> float:
    """The twins' cross pseudo-supervision weight at pseudo-label gate ``gate``: ``cps_weight``, or with
    ``cps_fills_gate`` rising towards ``unsup_weight`` (the CPS baseline's weight) as the gate shuts."""
    if not preset.cps_fills_gate:
        return preset.cps_weight
    return preset.cps_weight + (1.0 - gate) * max(0.0, preset.unsup_weight - preset.cps_weight)


def _refresh_generator(seed: int, refresh: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + refresh * 10_007 + index)


def refresh_pseudo_labels(
    bundle: ModelBundle,
    images: Sequence[torch.Tensor],
    preset: Preset,
    cache: dict[str, torch.Tensor],
    *,
    refresh: int,
    seed: int,
    device: torch.device,
    cancel: CancelToken | None = None,
    rank: int = 0,
    world: int = 1,
    prefix: str = "",
) -> Iterator[Event]:
    """Multi-round teacher pseudo-labels for every unlabeled image, cached in ``cache`` in place.

    The first refresh samples from noise; later ones chain from the cached mask (re-noised to
    ``round_t_fracs[0]``·T), so pseudo-labels keep improving across refreshes. Under DDP each rank
    computes every ``world``-th image and broadcasts it.
    """
    cfg = SamplerConfig(steps=preset.refresh_ddim_steps, samples=preset.refresh_samples, rounds=preset.rounds)
    diff = bundle.diffusion()
    ticker = Ticker()
    n = len(images)
    for i, x in enumerate(images):
        if cancel is not None and synced_cancelled(cancel):
            raise Cancelled("pseudo-label refresh cancelled")
        key_p, key_c = f"{prefix}pl_probs_{i}", f"{prefix}pl_conf_{i}"
        if i % world == rank:
            prev = cache.get(key_p)
            prop = propose(
                bundle.mask_net,
                diff,
                x[None],
                cfg,
                _refresh_generator(seed, refresh, i + (10**6 if prefix else 0)),
                multiple=bundle.spec.multiple,
                roi=preset.roi_size,
                sw_batch=preset.sw_batch_size,
                init_probs=None if prev is None else prev[None].float(),
            )
            probs = prop.probs[0].to(torch.float16).cpu()
            conf = (1.0 - prop.uncertainty[0]).clamp(0, 1).to(torch.float16).cpu()
        else:
            probs = torch.empty((diff.num_classes, *x.shape[-2:]), dtype=torch.float16)
            conf = torch.empty(x.shape[-2:], dtype=torch.float16)
        if world > 1:
            import torch.distributed as dist

            probs, conf = probs.to(device), conf.to(device)
            dist.broadcast(probs, src=i % world)
            dist.broadcast(conf, src=i % world)
            probs, conf = probs.cpu(), conf.cpu()
        cache[key_p], cache[key_c] = probs, conf
        if ticker.due(i + 1 == n):
            yield Event(
                "progress",
                "pseudo-labels",
                i + 1,
                n,
                elapsed=ticker.elapsed,
                message=f"refresh {refresh}" + (" (validation images)" if prefix else ""),
            )


def cotrain(
    bundle: ModelBundle,
    data: TrainData,
    preset: Preset,
    *,
    generator: torch.Generator,
    seed: int,
    device: torch.device,
    cancel: CancelToken | None = None,
    checkpoint: str | Path | None = None,
    distributed: bool = False,
) -> Iterator[Event]:
    """Stage C: teacher + twin students, with pseudo-labels refreshed every ``refresh_every`` steps.

    With ``distributed=True`` (inside ``torchrun``, process group initialised) the step runs under DDP:
    each rank draws its own batches, gradients are averaged, and replicas stay identical.
    """
    if not data.labeled_images:
        raise ConfigError("co-training needs at least one labeled or corrected image")
    # the students deploy unless this round's end says otherwise (deploy_best)
    bundle.teacher_sampler, bundle.teacher_weight = None, 1.0
    unl = (
        data.unlabeled_images or data.labeled_images
    )  # with nothing unlabeled, consistency on labeled images
    validated = data.val is not None and len(data.val) > 0 and preset.val_every > 0
    # a resumed run trains what its checkpoint holds: one written before the fallback became the default
    # (or with it turned off) has no labels-only student, and resumes without one rather than failing
    saved = saved_module_names(checkpoint) if checkpoint is not None else None
    wanted = _wants_reference(preset, validated)
    module = CoTrainModule(bundle, preset, reference=wanted if saved is None else "reference" in saved)
    rank, world = 0, 1
    step_module: nn.Module = module
    if distributed:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP

        rank, world = dist.get_rank(), dist.get_world_size()
        step_module = DDP(module, device_ids=[device.index] if device.type == "cuda" else None)
    opt = _adam(list(module.parameters()), preset)
    loop = _Loop(
        "cotrain",
        preset.cotrain_steps,
        modules={
            "teacher_mask": module.teacher,
            "student_a": module.student_a,
            "student_b": module.student_b,
            **({"reference": module.reference} if module.reference is not None else {}),
        },
        optimizers={"opt": opt},
        generator=generator,
        cancel=cancel,
        checkpoint=checkpoint,
        checkpoint_every=preset.checkpoint_every,
        is_main=rank == 0,
    )
    start = loop.resume()
    cache = loop.tensors  # pseudo-labels persist in the checkpoint
    validator = _validator(bundle, data, preset, loop, module.reference)
    keeper = (  # preset.teacher_keep_best: the teacher labels, and ends, with its best-validated weights
        _teacher_validator(bundle, data, preset, loop, every=max(1, preset.refresh_every), prefix="tval:")
        if validated and preset.teacher_keep_best
        else None
    )
    if wanted and module.reference is None:
        yield Event(
            "log",
            "cotrain",
            start,
            loop.total,
            message=(
                "resumed a checkpoint saved without the labels-only student: this round trains the twins "
                "alone, so neither the fallback to labels alone nor the reference gate acts; the next round "
                "has both again"
            ),
        )
    module.train()
    b, p, diff = preset.batch_size, preset.patch_size, module.diff
    every = max(1, preset.refresh_every)
    done = start  # steps completed (a stalled run stops before loop.total)
    for step in range(start, loop.total):
        yield from loop.check_cancel(step)
        if step % every == 0 or "pl_probs_0" not in cache:
            if keeper is not None:  # the teacher labels with its best-validated weights
                yield from _keep_teacher(keeper, step, loop.total, loop.ticker.elapsed, final=False)
            refresh = functools.partial(
                refresh_pseudo_labels,
                refresh=step // every,
                seed=seed,
                device=device,
                cancel=loop.cancel,
                rank=rank,
                world=world,
            )
            yield from refresh(bundle, unl, preset, cache)
            if validator.enabled:  # the teacher's pseudo-labels where the truth is known: the gate
                val = validator.val
                yield from refresh(bundle, val.images, preset, cache, prefix="val:")
                labels = [cache[f"val:pl_probs_{i}"].float().argmax(0) for i in range(len(val))]
                validator.set_teacher_dice(mean_dice(labels, val, bundle.spec.num_classes))
            module.train()
        idx_l = _pick(data.labeled_weights, b, generator)
        x_l, y_l = sample_patches([data.labeled_images, data.labeled_masks], idx_l, p, generator)
        idx_u = _uniform(len(unl), b, generator)
        # crop the cached float16 maps, convert only the batch (exact: the conversion is elementwise)
        probs = [cache[f"pl_probs_{i}"] for i in range(len(unl))]
        confs = [cache[f"pl_conf_{i}"] for i in range(len(unl))]
        x_u, pl_probs, pl_conf = sample_patches([list(unl), probs, confs], idx_u, p, generator)
        pl_probs, pl_conf = pl_probs.float(), pl_conf.float()
        batch = {
            "xa_l": intensity_jitter(x_l, generator, 1.0),
            "xb_l": intensity_jitter(x_l, generator, 1.0),
            "xa_u": intensity_jitter(x_u, generator, 1.0),
            "xb_u": intensity_jitter(x_u, generator, 1.0),
            "y_l": y_l,
            "pl_probs": pl_probs,
            "pl_conf": pl_conf,
            "t_l": diff.sample_timesteps(b, generator),
            "t_u": diff.sample_timesteps(b, generator),
        }
        batch["eps_l"] = torch.randn((b, diff.num_classes, p, p), generator=generator)
        batch["eps_u"] = torch.randn((b, diff.num_classes, p, p), generator=generator)
        batch = {k: v.to(device) if k not in ("t_l", "t_u") else v for k, v in batch.items()}
        ramp = rampup(step, loop.total, preset.rampup_frac)
        gate = validator.gate
        # the reference gate's weight on cross pseudo-supervision too (preset.reference_gate_cps)
        cps_gate = validator.reference_weight if preset.reference_gate_cps else 1.0
        with autocast(device):
            out = step_module(batch, ramp, generator, gate, cps_gate)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        _check_step("cotrain", step + 1, loop.total, preset, out, loop.parameters())
        opt.step()
        losses = {k: float(v.detach()) for k, v in out.items()} | {"ramp": ramp, "gate": gate}
        if preset.reference_gate_cps:
            losses["cps_gate"] = cps_gate
        if preset.cps_fills_gate:
            losses["cps_w"] = cps_weight(preset, gate)
        if validator.due(step + 1, loop.total):
            losses |= validator.check(step + 1)
            module.train()
        yield from loop.after_step(step + 1, losses, force="val_dice" in losses)
        done = step + 1
        if validator.stalled(step + 1):
            yield _stop_event(validator, "cotrain", step + 1, loop)
            break
    if keeper is not None:  # the saved teacher (the next proposals, the next round) is its best
        yield from _keep_teacher(keeper, done, loop.total, loop.ticker.elapsed, final=True)
    yield from _finish(validator, "cotrain", loop.total, loop.ticker.elapsed)
    if preset.deploy_best:
        yield _deploy_best(bundle, preset, validator, keeper, data.val, loop.total, loop.ticker.elapsed)
    _check_weights("cotrain", loop.total, preset, loop.modules)
    yield Event("done", "cotrain", loop.total, loop.total, elapsed=loop.ticker.elapsed)


# ------------------------------------------------------------------------------------------------
# Baselines sharing the student network, the budget and the labeled subset
# ------------------------------------------------------------------------------------------------
def train_baseline(
    bundle: ModelBundle,
    data: TrainData,
    preset: Preset,
    *,
    generator: torch.Generator,
    device: torch.device,
    cancel: CancelToken | None = None,
    checkpoint: str | Path | None = None,
) -> Iterator[Event]:
    """``supervised`` (labeled only), ``mean-teacher`` (EMA consistency) or ``cps`` (cross pseudo-supervision)."""
    method = bundle.spec.method
    if method == "diffseg":
        raise ConfigError("use cotrain() for the diffseg method")
    if not data.labeled_images:
        raise ConfigError("a baseline needs at least one labeled image")
    nets = bundle.nets
    trainable = {k: v for k, v in nets.items() if k != "ema"}
    opt = _adam([q for net in trainable.values() for q in net.parameters()], preset)
    loop = _Loop(
        method,
        preset.cotrain_steps,
        modules=dict(nets),
        optimizers={"opt": opt},
        generator=generator,
        cancel=cancel,
        checkpoint=checkpoint,
        checkpoint_every=preset.checkpoint_every,
    )
    start = loop.resume()
    validator = _validator(bundle, data, preset, loop)
    for net in trainable.values():
        net.train()
    b, p = preset.batch_size, preset.patch_size
    unl = data.unlabeled_images
    for step in range(start, loop.total):
        yield from loop.check_cancel(step)
        idx_l = _pick(data.labeled_weights, b, generator)
        x_l, y_l = sample_patches([data.labeled_images, data.labeled_masks], idx_l, p, generator)
        ramp = rampup(step, loop.total, preset.rampup_frac)
        losses: dict[str, torch.Tensor] = {}
        if method == "supervised":
            (x_l,) = _to(device, intensity_jitter(x_l, generator, 1.0))
            y_l = y_l.to(device)
            with autocast(device):
                losses["sup"] = _sup_loss(nets["student"](x_l), y_l)
            loss = losses["sup"]
        else:
            if not unl:
                raise ConfigError(f"{method} needs unlabeled images; use --method supervised")
            (x_u,) = sample_patches([list(unl)], _uniform(len(unl), b, generator), p, generator)
            xa_l, xb_l = intensity_jitter(x_l, generator, 1.0), intensity_jitter(x_l, generator, 1.0)
            xa_u, xb_u = intensity_jitter(x_u, generator, 1.0), intensity_jitter(x_u, generator, 1.0)
            xa_l, xb_l, xa_u, xb_u, y_l = _to(device, xa_l, xb_l, xa_u, xb_u, y_l)
            with autocast(device):
                if method == "mean-teacher":
                    s, ema = nets["student"], nets["ema"]
                    losses["sup"] = _sup_loss(s(xa_l), y_l)
                    with torch.no_grad():
                        target = torch.softmax(ema(xb_u).float(), 1)
                    losses["consistency"] = F.mse_loss(torch.softmax(s(xa_u).float(), 1), target)
                    loss = losses["sup"] + ramp * preset.unsup_weight * 10.0 * losses["consistency"]
                else:  # cps
                    sa, sb = nets["student_a"], nets["student_b"]
                    losses["sup"] = _sup_loss(sa(xa_l), y_l) + _sup_loss(sb(xb_l), y_l)
                    la_u, lb_u = sa(xa_u), sb(xb_u)
                    ones = torch.ones(la_u.shape[0], *la_u.shape[2:], device=la_u.device)
                    losses["cps"] = _weighted_ce(la_u, lb_u.argmax(1).detach(), ones) + _weighted_ce(
                        lb_u, la_u.argmax(1).detach(), ones
                    )
                    loss = losses["sup"] + ramp * preset.unsup_weight * losses["cps"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _check_step(method, step + 1, loop.total, preset, {"loss": loss, **losses}, loop.parameters())
        opt.step()
        if method == "mean-teacher":
            with torch.no_grad():
                d = min(preset.ema_decay, (step + 1) / (step + 10))
                for pe, ps in zip(nets["ema"].parameters(), nets["student"].parameters(), strict=True):
                    pe.mul_(d).add_(ps.detach(), alpha=1 - d)
        scalars = {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}
        if validator.due(step + 1, loop.total):
            scalars |= validator.check(step + 1)
            for net in trainable.values():
                net.train()
        yield from loop.after_step(step + 1, scalars, force="val_dice" in scalars)
        if validator.stalled(step + 1):
            yield _stop_event(validator, method, step + 1, loop)
            break
    yield from _finish(validator, method, loop.total, loop.ticker.elapsed)
    _check_weights(method, loop.total, preset, loop.modules)
    yield Event("done", method, loop.total, loop.total, elapsed=loop.ticker.elapsed)
