"""Presets: named compute budgets (``tiny`` for tests, ``cpu`` for a laptop, ``gpu`` for the paper's scale)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import ConfigError

__all__ = ["CHANNELS_RANGE", "PRESETS", "PRESET_RANGES", "Preset", "Range", "get_preset"]


@dataclass(frozen=True)
class Range:
    """The values a numeric preset field may take: ``[lo, hi]``, or ``(lo, hi]`` when ``lo_open``."""

    lo: float
    hi: float
    lo_open: bool = False
    doc: str = ""

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            return False
        return (self.lo < value if self.lo_open else self.lo <= value) and value <= self.hi

    def __str__(self) -> str:
        return f"{'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}]"


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)


_STEPS = 10**7  # any step count or interval: far beyond the gpu preset's 20000 co-training steps
_WEIGHT = 1000.0  # any loss weight
PRESET_RANGES: dict[str, Range] = {
    "patch_size": Range(1, 4096, doc="training patch side in pixels"),
    "batch_size": Range(1, 1024, doc="patches per training step"),
    "lr": Range(0, 1, lo_open=True, doc="AdamW learning rate"),
    "weight_decay": Range(0, 1, doc="AdamW decoupled weight decay"),
    "emb_dim": Range(1, 4096, doc="time-embedding width"),
    "pretrain_steps": Range(0, _STEPS, doc="Stage A steps"),
    "pretrain_job_steps": Range(0, _STEPS, doc="the pretrain job's Stage A steps (0: pretrain_steps)"),
    "pretrain_tau": Range(0, 100, lo_open=True, doc="softmax temperature of Stage A"),
    "pretrain_marginal_weight": Range(0, _WEIGHT, doc="loss weight"),
    "pretrain_pixel_entropy_weight": Range(0, _WEIGHT, doc="loss weight"),
    "pretrain_t_min_frac": Range(0, 1, doc="a fraction of the diffusion steps"),
    "pretrain_min_class_share": Range(0, 1, doc="a share of the pixels"),
    "pretrain_class_var_weight": Range(0, _WEIGHT, doc="loss weight"),
    "pretrain_split_weight": Range(0, _WEIGHT, doc="loss weight"),
    "pretrain_smooth_weight": Range(0, _WEIGHT, doc="loss weight"),
    "teacher_steps": Range(0, _STEPS, doc="Stage B steps (a cap when teacher_val_every > 0)"),
    "teacher_val_every": Range(0, _STEPS, doc="Stage B steps between validation checks; 0: none"),
    "teacher_val_patience": Range(
        0, 10_000, doc="Stage B checks without improvement before stopping; 0: never"
    ),
    "recycle_prob": Range(0, 1, doc="a probability"),
    "cotrain_steps": Range(0, _STEPS, doc="Stage C or baseline steps"),
    "unsup_weight": Range(0, _WEIGHT, doc="loss weight"),
    "cps_weight": Range(0, _WEIGHT, doc="loss weight"),
    "teacher_unsup_weight": Range(0, _WEIGHT, doc="loss weight"),
    "rampup_frac": Range(0, 1, doc="a fraction of the steps"),
    "consensus_threshold": Range(0, 1, doc="a probability"),
    "refresh_every": Range(1, _STEPS, doc="steps between pseudo-label refreshes"),
    "correction_weight": Range(0, _WEIGHT, lo_open=True, doc="sampling weight of corrected images"),
    "ema_decay": Range(0, 1, doc="a decay factor"),
    "val_every": Range(0, _STEPS, doc="steps between validation checks; 0: none"),
    "pseudo_gate_margin": Range(0, 1000, doc="a Dice margin; a large one (1000) turns the gate off"),
    "val_patience": Range(0, 10_000, doc="validation checks without improvement before stopping; 0: never"),
    "ddim_steps": Range(1, 1000, doc="DDIM steps S"),
    "samples": Range(1, 256, doc="samples E per image"),
    "rounds": Range(1, 100, doc="chained rounds R"),
    "refresh_ddim_steps": Range(1, 1000, doc="DDIM steps of a refresh"),
    "refresh_samples": Range(1, 256, doc="samples per image of a refresh"),
    "roi_size": Range(1, 4096, doc="sliding-window side in pixels"),
    "sw_batch_size": Range(1, 1024, doc="windows per inference batch"),
    "checkpoint_every": Range(1, _STEPS, doc="steps between checkpoints"),
}
"""The documented range of every numeric :class:`Preset` field (NaN and infinities are never allowed).

Every preset, however it is built (a named one, :meth:`Preset.with_overrides`, a job's ``overrides``
through :meth:`Preset.parse_overrides`, the CLI, ``POST /jobs``), is checked against it; a value
outside is a :class:`ConfigError` that names the field, the range and the value."""

CHANNELS_RANGE = Range(1, 4096, doc="channel width")
"""Each entry of ``student_channels`` / ``teacher_channels``; each tuple has 1 to 8 entries (levels)."""
_MAX_LEVELS = 8


def _range_problem(name: str, value: object) -> str | None:
    """Why ``value`` is not allowed for preset field ``name`` (None: it is, or the field has no range)."""
    rng = PRESET_RANGES.get(name)
    if rng is None or value in rng:
        return None
    about = f" ({rng.doc})" if rng.doc else ""
    return f"{name!r} must lie in {rng}{about}, got {value!r}"


def _channels_problem(name: str, value: object) -> str | None:
    ok = (
        isinstance(value, list | tuple)
        and 1 <= len(value) <= _MAX_LEVELS
        and all(isinstance(v, int) and not isinstance(v, bool) and v in CHANNELS_RANGE for v in value)
    )
    if ok:
        return None
    return f"{name!r} must be 1 to {_MAX_LEVELS} integer channel widths in {CHANNELS_RANGE}, got {value!r}"


@dataclass(frozen=True)
class Preset:
    """Everything that sets the cost and the schedule of training and sampling."""

    name: str
    patch_size: int = 128
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    student_channels: tuple[int, ...] = (16, 32, 64, 128)
    teacher_channels: tuple[int, ...] = (16, 32, 64, 128)
    emb_dim: int = 64
    # Stage A: unsupervised cycle pretraining of the teacher. `pretrain_steps` is its length wherever it
    # runs: the label-free `pretrain` job always, and a co-training round that starts without a model only
    # when `cold_start_pretrain` (the paper's recipe). Off by default since issue 14's ablation: on GlaS
    # (5 and 10 %, 3 seeds) and DSB nuclei the students were no worse without it, in 60-80 % of the time
    # (docs/method.md, "What each part contributes").
    pretrain_steps: int = 200
    # The label-free `pretrain` job's own length when > 0 and some training image gives Stage A an anchor
    # (dark-field; without one it runs `pretrain_steps`: GlaS scored 0.656 at 150 steps, 0.597 at 500). Its
    # model is what a new project proposes with; a cold-start Stage A and the sweeps keep `pretrain_steps`.
    # `cpu`: 500 — on DSB nuclei the anchored Stage A scored 0.78 at 150 steps, under Otsu's threshold
    # (0.82), and about 0.88 at 500 (docs/method.md).
    pretrain_job_steps: int = 0
    cold_start_pretrain: bool = False
    pretrain_tau: float = 1.0
    pretrain_marginal_weight: float = 1.0
    pretrain_pixel_entropy_weight: float = 0.1
    # The image is corrupted at t ~ U(pretrain_t_min_frac·T, T): near 1 the image pathway cannot
    # reconstruct without the mask. With pretrain_min_class_share > 0 the marginal term only keeps every
    # class above that share of the pixels (a hinge) instead of pushing the split towards 50/50.
    pretrain_t_min_frac: float = 0.0
    pretrain_min_class_share: float = 0.0
    # The redesign of issue 14 (opt-in): the image pathway predicts the clean image (x0) instead of the
    # noise, whose best prediction hardly depends on the mask once x_t is mostly noise, and the
    # within-class variance of the image under the mask (one colour per class: minimal at a K-means split
    # and at hard masks) is added with this weight; with pretrain_min_class_share=0.05 it learns the
    # split of trivially separable images and lifts DSB nuclei from 0.16 to 0.55, but scores below this
    # default on GlaS (0.63/0.60 against 0.64/0.65), so the default stays (docs/method.md, Stage A).
    pretrain_predict_x0: bool = False
    pretrain_class_var_weight: float = 0.0
    # On by default (issue 14): on dark-field images (fluorescence) the mask pathway's one-step mask is
    # also pulled (cross-entropy, this weight) towards a classical label-free split of each patch
    # (core.label_free.anchor_split: the bright side of a hysteresis from a 3-class to a 2-class Otsu
    # threshold). DSB nuclei (the dataset's statistics, 3 seeds): 0.16 → 0.78 best-permutation Dice at
    # 150 steps with weight 1, 0.81 with 10; at 500 steps 0.87 and 0.88, Otsu 0.82; CTC CHO at 150 steps
    # 0.18 → 0.62 (1) and 0.64 (10). On bright-field sets (GlaS, DRIVE, ISBI) it sets no anchor and Stage A
    # is what it was. 0: the old Stage A.
    pretrain_split_weight: float = 10.0
    # Spatial continuity of Stage A's mask (issue 14): the mean absolute difference of the class
    # probabilities between neighbouring pixels (core.training.spatial_variation), with this weight, on the
    # patches no anchor ties to the image. Without it a bright-field set meets the 50/50 prior with a
    # checkerboard that says nothing about the image. The dataset's statistics, 150 steps, seed 0: GlaS 0.509
    # (a random split's score) → 0.656 (seeds 1, 2: 0.647, 0.643), ISBI 0.306 → 0.351, DRIVE 0.160 → 0.209;
    # DSB unchanged (its patches are anchored). 3 and 10 gave a constant mask on GlaS. 0: as before.
    pretrain_smooth_weight: float = 1.0
    # Stage B: the teacher as a mask diffusion model on labeled images (warm-up before co-training).
    teacher_steps: int = 300
    # Opt-in (issue 14, arm `diffseg-Tval`): validate the teacher during Stage B (its samples' Dice on the
    # validation images every `teacher_val_every` steps), keep its best weights and stop after
    # `teacher_val_patience` checks without improvement, so `teacher_steps` is a cap: a longer-trained
    # teacher helps GlaS but overfits DSB nuclei's one or two labeled images.
    teacher_val_every: int = 0
    teacher_val_patience: int = 0
    # Opt-in (issue 14, arm `diffseg-Tkeep`): in co-training, score the teacher's samples on the validation
    # images before each pseudo-label refresh and at the end; a teacher that scores below its best check
    # takes its best weights back before it labels, and the run ends with them, so neither the students'
    # pseudo-labels nor the saved model's proposals come from a teacher its validation images rank lower
    # (DRIVE 10 %, seed 2: the teacher fell from 0.723 to 0.643 during co-training). Needs validation
    # images; one teacher pass over them per refresh.
    teacher_keep_best: bool = False
    # Opt-in (issue 14, arm `diffseg-Tbest`; needs `teacher_keep_best`): when co-training ends, a teacher
    # whose best check scored the validation images above what the run would otherwise deploy (the twins'
    # best check, or the labels-only student the fallback chose) is what the model predicts with: its mean
    # sample as a check draws it (`refresh_ddim_steps` DDIM steps, `refresh_samples` samples): at `cpu`
    # 11-13 times the students' time per image (benchmarks/teacher_cost.py). DRIVE 10 %: the kept
    # teacher validated above the students on all five seeds and scored 0.752 on the test images against
    # the students' 0.735 (docs/method.md).
    deploy_best: bool = False
    # Opt-in (issue 14, arm `diffseg-Tmean`; needs `deploy_best`): a third candidate for deploy_best, the
    # mean of the teacher's probabilities (its check's sample) and the students'. Chosen only where it
    # scores the validation images above both (a tie goes to the cheaper: students, then the teacher); it
    # costs the teacher's time plus the students' per image, and one more teacher pass over the validation
    # images when co-training ends.
    deploy_mean: bool = False
    recycle_prob: float = 0.5  # share of teacher samples that start from its own estimate (refinement)
    # Stage C: co-training (and the baselines, which get the same number of student iterations).
    cotrain_steps: int = 600
    unsup_weight: float = 1.0
    cps_weight: float = 0.5
    teacher_unsup_weight: float = 0.5
    rampup_frac: float = 0.3
    # Opt-in (issue 14, arm `diffseg-trust`; screened out on GlaS 10 %'s validation images, docs/method.md):
    # with `pseudo_rampup` false the teacher's pseudo-label term counts fully from the first step (the
    # gate alone weighs it; `rampup_frac` still ramps cross pseudo-supervision and the teacher's
    # consensus term), and with `cps_fills_gate` the CPS weight rises from `cps_weight` towards
    # `unsup_weight` (the CPS baseline's weight) as the gate shuts the teacher out:
    # cps_weight + (1 - gate) * max(0, unsup_weight - cps_weight).
    pseudo_rampup: bool = True
    cps_fills_gate: bool = False
    consensus_threshold: float = 0.8
    refresh_every: int = 200
    correction_weight: float = 2.0
    ema_decay: float = 0.99
    # Validation (core/validation.py): check the deployed networks every `val_every` steps, keep the
    # best; the students' pseudo-label loss fades out when the teacher labels the validation images
    # `pseudo_gate_margin` (Dice) worse than the students segment them.
    val_every: int = 50
    pseudo_gate_margin: float = 0.05
    # Opt-in (issue 14; measured on a few benchmark cells, docs/method.md): a labels-only reference
    # student trains beside the twins on the same labeled patches, and the pseudo-label weight also falls
    # once the students segment the validation images `pseudo_gate_margin` worse than it does — the case
    # the teacher gate cannot see (a teacher that keeps the students below their labels while they stay
    # below it).
    pseudo_gate_reference: bool = False
    # Opt-in with the reference gate (issue 14): its weight clip(1 + (d_S − d_R) / margin, 0, 1) also
    # multiplies the twins' cross pseudo-supervision, so below labels alone the students fall back to
    # their labels whichever unlabeled term pulled them down (DSB nuclei 5 %, seed 2: CPS did).
    reference_gate_cps: bool = False
    # The fallback (on by default since issue 14's DSB nuclei and DRIVE runs, docs/method.md): train that
    # labels-only student (with or without its gate) and, when training ends, deploy its best weights
    # instead of the twins' if it scored the validation images better — so a run never deploys twins its
    # validation images rank below labels alone. Nothing extra trains when there are no validation images.
    reference_fallback: bool = True
    # Stop a loop once its validation Dice has not improved for this many checks (0: run every step):
    # `diffseg experiment --converge` uses it to train references until they converge.
    val_patience: int = 0
    # Sampling (proposals for the annotator, and pseudo-labels during co-training).
    ddim_steps: int = 10
    samples: int = 4
    rounds: int = 2
    refresh_ddim_steps: int = 5
    refresh_samples: int = 2
    # Inference.
    roi_size: int = 256
    sw_batch_size: int = 4
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (not isinstance(v, int) or isinstance(v, bool)):
                raise ConfigError(f"preset {self.name!r}: {f.name!r} must be an integer, got {v!r}.")
            problem = (
                _channels_problem(f.name, v)
                if f.name in ("student_channels", "teacher_channels")
                else _range_problem(f.name, v)
            )
            if problem is not None:
                raise ConfigError(f"preset {self.name!r}: {problem}.")
        if self.patch_size % 2 ** len(self.student_channels) or self.patch_size % 2 ** len(
            self.teacher_channels
        ):
            raise ConfigError(
                f"patch_size {self.patch_size} must be divisible by 2**levels of the networks "
                f"({2 ** len(self.student_channels)})"
            )
        if self.deploy_best and not self.teacher_keep_best:
            raise ConfigError(
                "deploy_best compares the teacher's best-validated weights with the students: "
                "set teacher_keep_best=true too (or deploy_best=false)"
            )
        if self.deploy_mean and not self.deploy_best:
            raise ConfigError(
                "deploy_mean adds the teacher-student mean to deploy_best's candidates: "
                "set deploy_best=true and teacher_keep_best=true too (or deploy_mean=false)"
            )
        if self.reference_gate_cps and not self.pseudo_gate_reference:
            raise ConfigError(
                "reference_gate_cps weights cross pseudo-supervision by the reference gate: "
                "set pseudo_gate_reference=true too (or reference_gate_cps=false)"
            )
        if self.roi_size % 2 ** len(self.teacher_channels):
            raise ConfigError(
                f"roi_size {self.roi_size} must be divisible by {2 ** len(self.teacher_channels)}"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["student_channels"] = list(self.student_channels)
        d["teacher_channels"] = list(self.teacher_channels)
        return d

    def label_free_steps(self) -> int:
        """The label-free ``pretrain`` job's Stage A steps: ``pretrain_job_steps``, else ``pretrain_steps``."""
        return self.pretrain_job_steps or self.pretrain_steps

    def with_overrides(self, **kw: Any) -> Preset:
        known = {f.name for f in fields(self)}
        unknown = set(kw) - known
        if unknown:
            raise ConfigError(f"unknown preset option(s) {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **kw)

    def parse_overrides(self, overrides: Mapping[str, Any] | None) -> Preset:
        """This preset with ``overrides`` from JSON (a job's ``overrides``, the CLI's ``--set``) applied.

        The one place where override values are checked: each must have the type of the preset's own
        value (lists become tuples of channel widths, ints stay ints) and lie in the field's range in
        :data:`PRESET_RANGES` (e.g. ``lr`` in ``(0, 1]``, ``batch_size`` in ``[1, 1024]``, step counts in
        ``[0, 10**7]``; never NaN or infinite); ``name`` cannot be overridden.

        Raises:
            ConfigError: An unknown field or a badly typed or out-of-range value (the message names it).
        """
        if not overrides:
            return self
        if not isinstance(overrides, Mapping):
            raise ConfigError("preset overrides must be an object of preset fields and values.")
        known = {f.name for f in fields(self) if f.name != "name"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown preset option(s) {unknown}; known: {sorted(known)}.")
        clean = {k: _override_value(k, getattr(self, k), v) for k, v in overrides.items()}
        if "pretrain_steps" in clean and "pretrain_job_steps" not in clean:
            clean["pretrain_job_steps"] = 0  # Stage A's length, asked for, is the pretrain job's too
        return self.with_overrides(**clean)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Preset | None:
        """The preset a saved model was trained with (its ``config.json``'s ``preset`` dict); None when
        the config has none or an unusable one (an older model: callers fall back to a named preset)."""
        stored = config.get("preset")
        if not isinstance(stored, Mapping):
            return None
        known = {f.name for f in fields(cls)}
        try:
            values: dict[str, Any] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in known
            }
            return cls(**values)
        except (TypeError, ValueError, ConfigError):
            return None


def _override_value(name: str, default: object, value: object) -> object:
    """Check one preset override against the type of the preset's own value and the field's range;
    return it normalised."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value  # type: ignore[arg-type]
    elif isinstance(default, tuple):
        ok = isinstance(value, list | tuple)
        if ok and (problem := _channels_problem(name, value)) is not None:
            raise ConfigError(f"preset override {problem}.")
        value = tuple(value) if ok else value  # type: ignore[arg-type]
    else:
        ok = False  # `name` and anything else that is not a number
    if not ok:
        raise ConfigError(
            f"preset override {name!r} must be of the same type as the preset's value {default!r}, "
            f"got {value!r}."
        )
    problem = _range_problem(name, value)
    if problem is not None:
        raise ConfigError(f"preset override {problem}.")
    return value


PRESETS: dict[str, Preset] = {
    # Seconds: for tests and a first look. Tiny networks, a handful of steps, one pseudo-label pass per
    # round without chained rounds (its cost is per image pixel: with two passes and two rounds a round
    # on five 565x584 fundus images spent most of its time there), tiles of 64 px in batches of 8.
    "tiny": Preset(
        name="tiny",
        patch_size=32,
        batch_size=2,
        student_channels=(8, 16),
        teacher_channels=(8, 16),
        emb_dim=16,
        pretrain_steps=3,
        teacher_steps=3,
        cotrain_steps=4,
        refresh_every=4,
        ddim_steps=2,
        samples=2,
        rounds=1,
        refresh_ddim_steps=1,
        refresh_samples=2,
        roi_size=64,
        sw_batch_size=8,
        checkpoint_every=2,
        val_every=2,
    ),
    # Minutes on a 2-core laptop: one GlaS run of `diffseg experiment` in under 10 minutes.
    "cpu": Preset(
        name="cpu",
        pretrain_steps=150,
        pretrain_job_steps=500,
        cotrain_steps=500,
        refresh_every=250,
        roi_size=512,
    ),
    # The paper's scale on one GPU (128x128 patches, batch 8, ~200 epochs of the unlabeled set).
    "gpu": Preset(
        name="gpu",
        student_channels=(32, 64, 128, 256),
        teacher_channels=(32, 64, 128, 256),
        emb_dim=128,
        pretrain_steps=4000,
        teacher_steps=4000,
        cotrain_steps=20000,
        refresh_every=2000,
        refresh_ddim_steps=10,
        refresh_samples=4,
        rounds=3,
        roi_size=512,
        sw_batch_size=8,
        checkpoint_every=500,
        val_every=500,
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
