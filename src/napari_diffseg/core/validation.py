"""Validation during training: the deployed networks' Dice on held-out labeled images, the best weights,
and the gate that keeps a weak teacher from dragging the students down.

Every trainer (Stage C and the baselines) scores its deployed networks on the validation images every
``preset.val_every`` steps and keeps a copy of the best weights, which it restores when it ends: the
checkpoint a run deploys is chosen on validation images, never on test images, by the same rule for every
method.

The **pseudo-label gate** (Stage C only): each pseudo-label refresh also labels the validation images with
the teacher (the same sampler, chained in the same way as the unlabeled images), so the teacher's
pseudo-label Dice ``d_T`` is measured where the truth is known. At every validation check the students'
own Dice ``d_S`` is measured too, and the weight of the students' pseudo-label loss becomes

    gate = clip(1 + (d_T − d_S) / margin, 0, 1)

— full weight while the teacher labels the validation images at least as well as the students segment
them, zero once it is ``margin`` worse. A teacher that was never good on a dataset (or that the students
have outgrown) cannot pull the students below what their labels alone would teach them.

``d_S`` is the students' **last** check, so students that fall back below the teacher reopen the gate. On
2026-12-02 a variant compared the teacher with the students' *best* check instead, to stop that reopening;
run on the 14 benchmark cells where the two rules act differently it scored −0.004 test Dice on average
(the runs are in ``benchmarks/results/evidence-gate-best/``). A students' best is often an early, noisy
check before the pseudo-label ramp: on DSB nuclei (10 %, seed 2) one such check shut the gate for good, the
students then drifted down on their labels alone (validation 0.69 → 0.55), where the reopened gate of the
last-check rule had lifted them to 0.76 (test 0.740 against 0.807). So the gate follows the last check.

What the teacher gate cannot see is a teacher that keeps the students *below their labels* while they stay
below it (DRIVE 10 %, seed 2: students under a 0.59 teacher for 300 steps, test 0.644 against 0.731 for
CPS on the same split). The opt-in **reference gate** (``preset.pseudo_gate_reference``) trains a
labels-only student beside the twins, scores it ``d_R`` at every check, and multiplies in a second weight

    clip(1 + (d_S − d_R) / margin, 0, 1)

— none once the students segment the validation images ``margin`` worse than labels alone would; the gate
is the smaller of the two. That weight (``reference_weight``) leaves the twins' cross pseudo-supervision
alone, which can be what holds them below their labels (DSB nuclei 5 %, seed 2: CPS alone 0.572 against
0.668 for supervised); with ``preset.reference_gate_cps`` it multiplies the CPS term as well, so below
labels alone the students fall back to their labels whichever unlabeled term pulled them down.

The **fallback** (``preset.reference_fallback``, on by default since issue 14's DSB nuclei and DRIVE
runs) trains the same labels-only student (with or without the reference gate; only when there are
validation images to judge it) and keeps its best weights too; when training ends, if it scored the
validation images better than the twins' best check did, its weights are what the run deploys (both
students take them). The product then never deploys twins that its own validation images rank below
labels alone; where those images rank wrongly (a few of them), it cannot help.

The state (best Dice and step, best weights, last ``d_S`` / ``d_T``, the gate) lives in the training loop's
checkpoint tensors, so an interrupted run resumes with the same choices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..base.errors import ConfigError
from .inference import predict_probs

__all__ = ["ValSet", "Validator", "gate_weight", "image_dice", "mean_dice"]

_PREFIX = "val:"  # checkpoint tensor names may not hold "." or "/"


@dataclass
class ValSet:
    """Normalised validation images (C, H, W) float32 and their masks (H, W) long.

    ``regions`` optionally restricts scoring to a boolean (H, W) area per image (e.g. DRIVE's field of
    view); None scores the whole image.
    """

    images: list[torch.Tensor] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)
    regions: list[torch.Tensor | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.masks):
            raise ConfigError("validation images and masks must have the same length")
        if not self.regions:
            self.regions = [None] * len(self.images)
        if len(self.regions) != len(self.images):
            raise ConfigError("validation regions must be one per image (or none)")
        for i, (x, y) in enumerate(zip(self.images, self.masks, strict=True)):
            if x.shape[-2:] != y.shape[-2:]:
                raise ConfigError(
                    f"validation image {i} is {tuple(x.shape[-2:])} but its mask {tuple(y.shape)}"
                )

    def __len__(self) -> int:
        return len(self.images)


def image_dice(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Dice of one (H, W) label map against another, with :func:`~.metrics.segmentation_metrics`'s
    convention: the mean over the foreground classes present in either map; 1.0 when neither has any."""
    scores = []
    for c in range(1, num_classes):
        p, t = pred == c, target == c
        n = int(p.sum()) + int(t.sum())
        if n == 0:
            continue
        scores.append(2.0 * int((p & t).sum()) / n)
    return float(sum(scores) / len(scores)) if scores else 1.0


def mean_dice(labels: Sequence[torch.Tensor], val: ValSet, num_classes: int) -> float:
    """Mean per-image Dice of predicted label maps (one per validation image) inside their regions."""
    scores = []
    for pred, y, region in zip(labels, val.masks, val.regions, strict=True):
        pred, y = pred.cpu(), y.cpu()
        if region is not None:
            pred, y = pred * region, y * region
        scores.append(image_dice(pred, y, num_classes))
    return float(sum(scores) / len(scores)) if scores else float("nan")


def gate_weight(teacher_dice: float, student_dice: float, margin: float) -> float:
    """``clip(1 + (d_T − d_S) / margin, 0, 1)``; 1 when either Dice is unknown (nan)."""
    if teacher_dice != teacher_dice or student_dice != student_dice:
        return 1.0
    if margin <= 0:
        return 1.0 if teacher_dice >= student_dice else 0.0
    return float(min(1.0, max(0.0, 1.0 + (teacher_dice - student_dice) / margin)))


class Validator:
    """Scores ``deployed`` networks on ``val`` every ``every`` steps and keeps their best weights.

    Args:
        deployed: The networks whose mean softmax is the prediction, by name (their weights are what
            "best" copies and restores).
        val: Validation images; an empty set disables everything (no check, gate 1).
        tensors: The training loop's checkpoint tensors; the validator keeps its state there.
        every: Check every this many steps (and at the last step); 0 disables the checks.
        reference: The labels-only network, scored at every check (None: no reference).
        reference_gate: Whether the reference's Dice gates the pseudo-label loss (the reference gate);
            False: it is only scored (and kept, with ``fallback``).
        fallback: Keep the reference's best weights and deploy them when they beat the students' best.
        scorer: Scores the deployed networks instead of their mean softmax (e.g. the teacher, whose
            prediction is a diffusion sampler's: `core.training.teacher_val_dice`).
        prefix: Where in ``tensors`` its state lives, so that two validators can share one loop
            (co-training's students and, with ``preset.teacher_keep_best``, its teacher).
    """

    def __init__(
        self,
        deployed: Mapping[str, nn.Module],
        val: ValSet | None,
        tensors: dict[str, torch.Tensor],
        *,
        num_classes: int,
        multiple: int,
        roi: int,
        sw_batch: int,
        every: int,
        margin: float = 0.05,
        patience: int = 0,
        reference: nn.Module | None = None,
        reference_gate: bool = True,
        fallback: bool = False,
        scorer: Callable[[], float] | None = None,
        prefix: str = _PREFIX,
    ) -> None:
        if fallback and reference is None:
            raise ConfigError("the fallback to labels alone needs the labels-only reference network")
        self.deployed = dict(deployed)
        self.reference = reference
        self.reference_gate = reference_gate
        self.fallback = fallback
        self.val = val if val is not None else ValSet()
        self.tensors = tensors
        self.num_classes = num_classes
        self.multiple, self.roi, self.sw_batch = multiple, roi, sw_batch
        self.every = every
        self.margin = margin
        self.patience = patience
        self.scorer = scorer
        self.prefix = prefix

    @property
    def enabled(self) -> bool:
        return len(self.val) > 0 and self.every > 0

    # -- scalar state kept in the checkpoint tensors ------------------------------------------------
    def _get(self, name: str, default: float = float("nan")) -> float:
        t = self.tensors.get(self.prefix + name)
        return float(t.item()) if t is not None else default

    def _set(self, name: str, value: float) -> None:
        self.tensors[self.prefix + name] = torch.tensor([value], dtype=torch.float64)

    @property
    def best_dice(self) -> float:
        return self._get("best_dice")

    @property
    def best_step(self) -> int:
        return int(self._get("best_step", -1.0))

    @property
    def student_dice(self) -> float:
        """The deployed networks' Dice at the last check (nan before the first)."""
        return self._get("student_dice")

    @property
    def teacher_dice(self) -> float:
        """The teacher's pseudo-label Dice on the validation images at the last refresh (nan before)."""
        return self._get("teacher_dice")

    @property
    def reference_dice(self) -> float:
        """The labels-only reference's Dice at the last check (nan before, or without a reference)."""
        return self._get("reference_dice")

    @property
    def best_reference_dice(self) -> float:
        """The labels-only reference's best Dice so far (nan before a check, or without the fallback)."""
        return self._get("best_reference_dice")

    @property
    def deployed_reference(self) -> bool:
        """True once :meth:`restore_best` deployed the reference's weights (the fallback)."""
        return self._get("deployed_reference", 0.0) > 0

    @property
    def gate(self) -> float:
        """Weight of the students' pseudo-label loss (see the module docstring)."""
        return self._get("gate", 1.0)

    @property
    def reference_weight(self) -> float:
        """The reference gate's own weight ``clip(1 + (d_S − d_R) / margin, 0, 1)`` at the last check (1
        before it, or without a reference gate); ``preset.reference_gate_cps`` puts it on the CPS term too."""
        if not self.reference_gate:
            return 1.0
        return gate_weight(self.student_dice, self.reference_dice, self.margin)

    def _update_gate(self) -> None:
        gate = gate_weight(self.teacher_dice, self.student_dice, self.margin)
        # the reference gate: the students against labels alone (nan without a reference: weight 1)
        self._set("gate", min(gate, self.reference_weight))

    # -- checks ------------------------------------------------------------------------------------
    def due(self, step: int, total: int) -> bool:
        """True after ``step`` completed steps when a check is due."""
        return self.enabled and (step == total or step % self.every == 0)

    @torch.no_grad()
    def score(self, nets: Sequence[nn.Module] | None = None) -> float:
        """Mean validation Dice of the mean softmax of ``nets`` (default: the deployed networks, through
        ``scorer`` when there is one)."""
        if nets is None and self.scorer is not None:
            return self.scorer()
        nets = list(self.deployed.values()) if nets is None else list(nets)
        labels = [
            predict_probs(nets, x[None], multiple=self.multiple, roi=self.roi, sw_batch=self.sw_batch)
            .argmax(1)[0]
            .cpu()
            for x in self.val.images
        ]
        return mean_dice(labels, self.val, self.num_classes)

    def check(self, step: int) -> dict[str, float]:
        """Score the networks, keep their weights when they beat the best so far, update the gate."""
        dice = self.score()
        self._set("student_dice", dice)
        if not dice <= self.best_dice:  # strictly better, or the first check (best is nan)
            self._set("best_dice", dice)
            self._set("best_step", float(step))
            for name, net in self.deployed.items():
                self._store(f"best:{name}:", net)
        extra: dict[str, float] = {}
        if self.reference is not None:
            self._set("reference_dice", self.score([self.reference]))
            extra = {"val_reference": self.reference_dice}
            if self.reference_gate:
                extra["reference_weight"] = self.reference_weight
            if self.fallback and not self.reference_dice <= self.best_reference_dice:
                self._set("best_reference_dice", self.reference_dice)
                self._set("best_reference_step", float(step))
                self._store("best-reference:", self.reference)
        self._update_gate()
        return {
            "val_dice": dice,
            "val_best": self.best_dice,
            "val_teacher": self.teacher_dice,
            **extra,
            "gate": self.gate,
        }

    def _store(self, prefix: str, net: nn.Module) -> None:
        for key, value in net.state_dict().items():
            self.tensors[self.prefix + prefix + key.replace(".", ":")] = value.detach().cpu().clone()

    def _stored(self, prefix: str) -> dict[str, torch.Tensor]:
        full = self.prefix + prefix
        return {k[len(full) :].replace(":", "."): v for k, v in self.tensors.items() if k.startswith(full)}

    def stalled(self, step: int) -> bool:
        """True when ``patience`` > 0 and the last ``patience`` checks (up to ``step``) did not improve."""
        if not self.enabled or self.patience <= 0 or self.best_step < 0:
            return False
        return step - self.best_step >= self.patience * self.every

    def set_teacher_dice(self, dice: float) -> None:
        self._set("teacher_dice", dice)
        self._update_gate()

    def restore_best(self) -> int | None:
        """Load the best weights into the deployed networks; the step they came from (None if none).

        With the fallback, when the labels-only reference's best check beat the students' best, every
        deployed network takes the reference's best weights instead (:attr:`deployed_reference`), and the
        step is the reference's."""
        if not self.enabled or self.best_step < 0:
            return None
        use_reference = self.fallback and self.best_reference_dice > self.best_dice
        self._set("deployed_reference", float(use_reference))
        for name, net in self.deployed.items():
            state = self._stored("best-reference:" if use_reference else f"best:{name}:")
            if state:
                dev = next(net.parameters()).device
                net.load_state_dict({k: v.to(dev) for k, v in state.items()})
        return int(self._get("best_reference_step")) if use_reference else self.best_step

    def summary(self) -> dict[str, float | int]:
        """What the run chose, for its result (best step and Dice, last teacher/student Dice, gate)."""
        return {
            "val_images": len(self.val),
            "best_step": self.best_step,
            "best_dice": self.best_dice,
            "last_student_dice": self.student_dice,
            "last_teacher_dice": self.teacher_dice,
            **({"last_reference_dice": self.reference_dice} if self.reference is not None else {}),
            **(
                {
                    "best_reference_dice": self.best_reference_dice,
                    "deployed_reference": self.deployed_reference,
                }
                if self.fallback
                else {}
            ),
            "gate": self.gate,
        }
