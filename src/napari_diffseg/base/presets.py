"""Presets: named compute budgets (``tiny`` for tests, ``cpu`` for a laptop, ``gpu`` for the paper's scale)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import ConfigError

__all__ = ["PRESETS", "Preset", "get_preset"]


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
    # Stage A: unsupervised cycle pretraining of the teacher.
    pretrain_steps: int = 200
    pretrain_tau: float = 1.0
    pretrain_marginal_weight: float = 1.0
    pretrain_pixel_entropy_weight: float = 0.1
    # The image is corrupted at t ~ U(pretrain_t_min_frac·T, T): near 1 the image pathway cannot
    # reconstruct without the mask. With pretrain_min_class_share > 0 the marginal term only keeps every
    # class above that share of the pixels (a hinge) instead of pushing the split towards 50/50.
    pretrain_t_min_frac: float = 0.0
    pretrain_min_class_share: float = 0.0
    # Stage B: the teacher as a mask diffusion model on labeled images (warm-up before co-training).
    teacher_steps: int = 300
    recycle_prob: float = 0.5  # share of teacher samples that start from its own estimate (refinement)
    # Stage C: co-training (and the baselines, which get the same number of student iterations).
    cotrain_steps: int = 600
    unsup_weight: float = 1.0
    cps_weight: float = 0.5
    teacher_unsup_weight: float = 0.5
    rampup_frac: float = 0.3
    consensus_threshold: float = 0.8
    refresh_every: int = 200
    correction_weight: float = 2.0
    ema_decay: float = 0.99
    # Validation (core/validation.py): check the deployed networks every `val_every` steps, keep the
    # best; the students' pseudo-label loss fades out when the teacher labels the validation images
    # `pseudo_gate_margin` (Dice) worse than the students segment them.
    val_every: int = 50
    pseudo_gate_margin: float = 0.05
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
        if self.patch_size % 2 ** len(self.student_channels) or self.patch_size % 2 ** len(
            self.teacher_channels
        ):
            raise ConfigError(
                f"patch_size {self.patch_size} must be divisible by 2**levels of the networks "
                f"({2 ** len(self.student_channels)})"
            )
        if self.roi_size % 2 ** len(self.teacher_channels):
            raise ConfigError(
                f"roi_size {self.roi_size} must be divisible by {2 ** len(self.teacher_channels)}"
            )
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_steps") and (not isinstance(v, int) or v < 0):
                raise ConfigError(f"{f.name} must be a non-negative integer, got {v!r}")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["student_channels"] = list(self.student_channels)
        d["teacher_channels"] = list(self.teacher_channels)
        return d

    def with_overrides(self, **kw: Any) -> Preset:
        known = {f.name for f in fields(self)}
        unknown = set(kw) - known
        if unknown:
            raise ConfigError(f"unknown preset option(s) {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **kw)

    def parse_overrides(self, overrides: Mapping[str, Any] | None) -> Preset:
        """This preset with ``overrides`` from JSON (a job's ``overrides``, the CLI's ``--set``) applied.

        The one place where override values are checked: each must have the type of the preset's own
        value (lists become tuples of channel widths, ints stay ints), step counts lie in
        ``[0, 10**7]`` and other integers are positive; ``name`` cannot be overridden.

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


_MAX_OVERRIDE_STEPS = 10**7


def _override_value(name: str, default: object, value: object) -> object:
    """Check one preset override against the type of the preset's own value; return it normalised."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and name.endswith("_steps") and not 0 <= value <= _MAX_OVERRIDE_STEPS:  # type: ignore[operator]
            raise ConfigError(f"preset override {name!r} must lie in [0, {_MAX_OVERRIDE_STEPS}].")
        if ok and not name.endswith("_steps") and value <= 0:  # type: ignore[operator]
            raise ConfigError(f"preset override {name!r} must be a positive integer, got {value!r}.")
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value
        value = float(value) if ok else value  # type: ignore[arg-type]
    elif isinstance(default, tuple):
        ok = (
            isinstance(value, list | tuple)
            and 1 <= len(value) <= 8
            and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in value)
        )
        value = tuple(value) if ok else value  # type: ignore[arg-type]
    else:
        ok = False  # `name` and anything else that is not a number
    if not ok:
        raise ConfigError(
            f"preset override {name!r} must be of the same type as the preset's value {default!r}, "
            f"got {value!r}."
        )
    return value


PRESETS: dict[str, Preset] = {
    # Seconds: for tests. Tiny networks, a handful of steps.
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
        refresh_every=2,
        ddim_steps=2,
        samples=2,
        rounds=2,
        refresh_ddim_steps=1,
        refresh_samples=2,
        roi_size=64,
        sw_batch_size=2,
        checkpoint_every=2,
        val_every=2,
    ),
    # Minutes on a 2-core laptop: one GlaS run of `diffseg experiment` in under 10 minutes.
    "cpu": Preset(name="cpu", pretrain_steps=150, cotrain_steps=500, refresh_every=250, roi_size=512),
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
