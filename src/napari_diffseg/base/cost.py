"""What a job will cost before it runs, phase by phase: the plan behind the Train widget's estimate and
the whole-job progress and ETA (:class:`napari_diffseg.review.JobHistory`).

A job is a sequence of phases (:class:`Phase`): the process start-up, Stage A pretraining, and per
co-training round the teacher's Stage B, the pseudo-label passes, the co-training steps and the
validation at the end of the round; a ``propose`` job is one pass of the teacher over its images. Each
phase has *units* (steps, or images × passes) that its progress events count, and predicted seconds:

* a training step costs :data:`STEP_SECONDS` of its preset and stage (independent of the image size:
  training draws fixed-size patches);
* the teacher's sampling costs, per image, its tiled area (:func:`windowed_pixels`) × the denoiser
  evaluations of the sampler (:func:`sampling_evaluations`) × :data:`EVAL_SECONDS_PER_MPX`; a student
  prediction (validation) one evaluation of each student.

The constants are **CPU seconds of one torch thread** on the development machine (a 2-vCPU VM whose
``/proc/cpuinfo`` reads "AMD EPYC"; a quiet machine runs at about that wall time), measured by
``benchmarks/preset_cost.py`` (``benchmarks/results/preset_cost.json``; the values here are the mean of
two runs). A busy or faster machine differs by a factor, which the ETA
measures as the job runs and the widget then uses for its next estimate.

No torch here (``base/``): the widgets compute plans from the image records the backend lists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .presets import Preset, get_preset

__all__ = [
    "CALIBRATION_IMAGES",
    "EVAL_SECONDS_PER_MPX",
    "REFERENCE",
    "STARTUP_SECONDS",
    "STEP_SECONDS",
    "ImageLike",
    "Phase",
    "Plan",
    "format_seconds",
    "is_label_free",
    "job_plan",
    "propose_sampling",
    "sampling_evaluations",
    "windowed_pixels",
]

CALIBRATION_IMAGES = 8
"""A label-free model's temperature is fitted on at most this many images (``core.label_free``)."""

REFERENCE = "one quiet CPU core of our 2-core development VM (AMD EPYC)"
"""What the constants below measure (``benchmarks/preset_cost.py``)."""

STARTUP_SECONDS = 5.0
"""A job process: import torch and MONAI (2.9 s measured), open the project, read a few images."""

STEP_SECONDS: dict[str, dict[str, float]] = {
    "tiny": {"pretrain": 0.017, "teacher": 0.011, "cotrain": 0.025},
    "cpu": {"pretrain": 0.45, "teacher": 0.27, "cotrain": 0.79},
    "gpu": {"pretrain": 1.2, "teacher": 0.68, "cotrain": 1.87},
}
"""Seconds per training step of each preset's Stage A (pretrain), B (teacher) and C (cotrain, without
its pseudo-label passes), on the CPU (the ``gpu`` preset on a GPU is far faster: the ETA measures it)."""

EVAL_SECONDS_PER_MPX: dict[str, dict[str, float]] = {
    "tiny": {"teacher": 0.45, "student": 0.13},
    "cpu": {"teacher": 0.72, "student": 0.26},
    "gpu": {"teacher": 1.82, "student": 0.69},
}
"""Seconds per megapixel of tiled area of one teacher denoiser evaluation (one sample) and of one
student prediction."""

_T = 1000  # the diffusion's training timesteps (core.diffusion.MaskDiffusion)
_ROUND_T_FRACS = (0.6, 0.4, 0.25)  # core.diffusion.SamplerConfig.round_t_fracs
_OVERLAP = 0.25  # core.inference's sliding-window overlap


class ImageLike(Protocol):
    """What a plan needs of an image record (``base.contracts.Image`` has it)."""

    @property
    def height(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def split(self) -> str: ...


def windowed_pixels(height: int, width: int, roi: int, multiple: int, overlap: float = _OVERLAP) -> int:
    """Pixels the networks see for one pass over an image, as ``core.inference`` tiles it.

    The image is padded to a multiple of ``multiple``; one that fits in ``roi`` is one call; a larger one
    gets a margin of ``roi // 4`` on every side and MONAI's sliding windows of ``roi`` with ``overlap``.
    """
    h = math.ceil(height / multiple) * multiple
    w = math.ceil(width / multiple) * multiple
    if h <= roi and w <= roi:
        return h * w
    margin = roi // 4
    interval = max(1, int(roi * (1 - overlap)))

    def windows(length: int) -> int:
        length = max(length + 2 * margin, roi)
        if length == roi:
            return 1
        return max(0, math.ceil((length - roi) / interval)) + 1

    return windows(h) * windows(w) * roi * roi


def propose_sampling(
    preset: Preset,
    *,
    label_free: bool = False,
    steps: int | None = None,
    samples: int | None = None,
    rounds: int | None = None,
) -> tuple[int, int, int]:
    """A ``propose`` job's DDIM steps S, samples E and chained rounds R: those asked for, else the preset's;
    a label-free model (the ``pretrain`` job's, ``metrics["stage"] == "pretrain"``) takes one step and one
    round unless asked (Stage A trained its mask pathway on pure noise only: ``backend/jobs.py``)."""
    return (
        steps or (1 if label_free else preset.ddim_steps),
        samples or preset.samples,
        rounds or (1 if label_free else preset.rounds),
    )


def is_label_free(model: Any) -> bool:
    """Does this model (a record or API model with ``metrics``, or None) come from label-free pretraining?"""
    metrics = getattr(model, "metrics", None) or {}
    return metrics.get("stage") == "pretrain"


def sampling_evaluations(
    steps: int,
    samples: int,
    rounds: int,
    *,
    from_cache: bool = False,
    fracs: Sequence[float] = _ROUND_T_FRACS,
) -> int:
    """Denoiser evaluations (per image, counting each of the E samples) of the teacher's sampler.

    Round 1 runs all ``steps`` DDIM steps from noise (or, ``from_cache``, only those below the first
    re-noising level, starting from a cached mask); each further round re-noises to ``fracs[r]``·T and
    runs the steps below it. An upper bound: rounds stop early when the mask stops changing.
    """
    steps = max(1, int(steps))
    delta = _T // steps
    timesteps = [_T - 1 - delta * i for i in range(steps)]

    def below(frac: float) -> int:
        return max(1, sum(1 for t in timesteps if t <= int(frac * _T)))

    def frac(r: int) -> float:
        return fracs[min(r - 1, len(fracs) - 1)]

    chain = below(frac(1)) if from_cache else steps
    chain += sum(below(frac(r)) for r in range(1, max(1, rounds)))
    return chain * max(1, samples)


def format_seconds(seconds: float) -> str:
    """``45 s``, ``3 min``, ``1 h 20 min``: what a person reads in an estimate."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0.0, seconds)
    if s < 60:
        return f"{max(1, round(s))} s"
    if s < 3600:
        return f"{round(s / 60)} min" if s >= 600 else f"{s / 60:.1f} min".replace(".0 min", " min")
    hours, rest = divmod(round(s / 60), 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"


@dataclass(frozen=True)
class Phase:
    """One phase of a job.

    Attributes:
        key: What its progress events call it: ``start`` (no events: the process starting), ``pretrain``,
            ``teacher``, ``pseudo-labels``, ``val-pseudo-labels`` (the teacher's pseudo-labels of the
            annotated validation images, for the pseudo-label gate), ``cotrain``, ``validation`` (no
            events: the end of a round) or ``propose``.
        round: The co-training round it belongs to (1, 2, ...; 0 outside rounds).
        units: Its size in the units its events count (steps; images × passes for pseudo-labels; images
            for propose).
        seconds: Predicted seconds on the reference machine (:data:`REFERENCE`).
        label: What a person reads ("pseudo-labels (2 passes over 4 images)").
    """

    key: str
    round: int
    units: int
    seconds: float
    label: str = ""


@dataclass(frozen=True)
class Plan:
    """The phases of one job, in the order they run, and what they were computed from."""

    kind: str
    phases: tuple[Phase, ...]
    images: int = 0
    sizes: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    def breakdown(self, factor: float = 1.0, limit: int = 4) -> str:
        """The costliest phases (by kind, summed over rounds), e.g. ``pseudo-labels 2.1 min, co-training 40 s``."""
        names = {
            "start": "start-up",
            "pretrain": "label-free pretraining",
            "calibration": "calibration",
            "teacher": "teacher",
            "pseudo-labels": "pseudo-labels",
            "val-pseudo-labels": "pseudo-labels",
            "cotrain": "co-training",
            "validation": "validation",
            "propose": "proposals",
        }
        by_key: dict[str, float] = {}
        for p in self.phases:
            by_key[p.key] = by_key.get(p.key, 0.0) + p.seconds
        top = sorted(by_key.items(), key=lambda kv: -kv[1])[:limit]
        return ", ".join(f"{names.get(k, k)} {format_seconds(v * factor)}" for k, v in top if v > 0)


def _scaled(preset: Preset) -> tuple[dict[str, float], dict[str, float]]:
    """Step and evaluation constants for ``preset``: its named preset's, scaled by batch x patch**2 and
    by the square of the first network width when overrides changed them."""
    try:
        ref = get_preset(preset.name)
    except Exception:  # an unknown name: the cpu preset's constants
        ref = get_preset("cpu")
    name = ref.name if ref.name in STEP_SECONDS else "cpu"
    steps = dict(STEP_SECONDS[name])
    evals = dict(EVAL_SECONDS_PER_MPX[name])
    batch = (preset.batch_size * preset.patch_size**2) / (ref.batch_size * ref.patch_size**2)
    student = (preset.student_channels[0] / ref.student_channels[0]) ** 2
    teacher = (preset.teacher_channels[0] / ref.teacher_channels[0]) ** 2
    width = (student + teacher) / 2
    steps = {k: v * batch * width for k, v in steps.items()}
    evals = {"teacher": evals["teacher"] * teacher, "student": evals["student"] * student}
    return steps, evals


def _planes(im: ImageLike) -> int:
    """The Z planes of an image record (``axes`` and ``shape`` where it has them): 1 for a 2D image."""
    axes, shape = str(getattr(im, "axes", "") or ""), tuple(getattr(im, "shape", ()) or ())
    return int(shape[axes.index("Z")]) if "Z" in axes and len(shape) == len(axes) else 1


def _multiple(preset: Preset) -> int:
    return 2 ** max(len(preset.student_channels), len(preset.teacher_channels))


def _sizes(images: Sequence[ImageLike]) -> str:
    """``565×584`` when every image has that size, else the range of their sides; ``512×443 (20 planes)``
    when z-stacks make the planes more than the images (a job's cost follows the planes)."""
    if not images:
        return ""
    planes = sum(_planes(im) for im in images)
    in_planes = f" ({planes} planes)" if planes > len(images) else ""
    shapes = {(im.width, im.height) for im in images}
    if len(shapes) == 1:
        w, h = next(iter(shapes))
        return f"{w}×{h}{in_planes}"
    areas = sorted(im.width * im.height for im in images)
    side = [round(math.sqrt(a)) for a in (areas[0], areas[-1])]
    return f"{side[0]}²–{side[1]}²{in_planes}"


ANNOTATED = ("corrected", "ground_truth")


def job_plan(
    kind: str,
    preset: Preset | str,
    images: Sequence[ImageLike],
    *,
    warm_start: bool = False,
    rounds: int = 1,
    ids: Sequence[str] | None = None,
    steps: int | None = None,
    samples: int | None = None,
    sample_rounds: int | None = None,
    label_free: bool = False,
) -> Plan:
    """The phases of a ``pretrain``, ``cotrain`` or ``propose`` job on a project with ``images``.

    Args:
        kind: The job kind.
        preset: Its preset (a name, or a preset with overrides applied).
        images: Every image record of the project (``state``, ``split``, ``height``, ``width``).
        warm_start: A ``cotrain`` job continues from an active model (no Stage A; a cold start runs it
            only when the preset's ``cold_start_pretrain``).
        rounds: Co-training rounds.
        ids: A ``propose`` job's images (records with these ids or names); None: every non-test image
            that has no annotation and is not excluded (the job's own default).
        steps, samples, sample_rounds: A ``propose`` job's DDIM steps, samples and chained rounds (the
            preset's when None).
        label_free: A ``propose`` job whose (active) model is label-free: one step and one round unless
            given (:func:`propose_sampling`).
    """
    pr = get_preset(preset) if isinstance(preset, str) else preset
    step_s, eval_s = _scaled(pr)
    multiple = _multiple(pr)

    def area(im: ImageLike) -> float:  # a z-stack: every plane is one 2D pass
        return windowed_pixels(im.height, im.width, pr.roi_size, multiple) * _planes(im) / 1e6

    phases = [Phase("start", 0, 1, STARTUP_SECONDS, "start-up")]
    train = [im for im in images if im.split == "train" and im.state != "excluded"]
    if kind == "propose":
        if ids is not None:
            wanted = set(ids)
            chosen = [
                im
                for im in images
                if getattr(im, "id", None) in wanted or getattr(im, "name", None) in wanted
            ]
        else:
            chosen = [
                im
                for im in images
                if im.state in ("unlabeled", "proposed") and not im.split.startswith("test")
            ]
        s, e, r = propose_sampling(
            pr, label_free=label_free, steps=steps, samples=samples, rounds=sample_rounds
        )
        seconds = sum(area(im) for im in chosen) * sampling_evaluations(s, e, r) * eval_s["teacher"]
        label = f"proposals for {len(chosen)} image(s) (S={s}, E={e})"
        phases.append(Phase("propose", 0, len(chosen), seconds, label))
        return Plan(kind, tuple(phases), len(chosen), _sizes(chosen))
    if kind == "pretrain":
        steps = pr.label_free_steps()
        phases.append(Phase("pretrain", 0, steps, steps * step_s["pretrain"], "label-free pretraining"))
        pre_notes: tuple[str, ...] = ()
        if steps != pr.pretrain_steps:  # the job's length depends on pixels a plan does not see
            pre_notes = (
                f"at most: without a dark-field (fluorescence) image it runs {pr.pretrain_steps} steps, not "
                f"{steps}, and pretraining takes about {format_seconds(pr.pretrain_steps * step_s['pretrain'])}",
            )
        if pr.pretrain_split_weight > 0 and train:  # at most: only images with an anchor are read
            n = min(CALIBRATION_IMAGES, len(train))
            mean_area = sum(area(im) for im in train) / len(train)
            phases.append(
                Phase("calibration", 0, n, n * mean_area * eval_s["teacher"], "its proposals' temperature")
            )
        return Plan(kind, tuple(phases), len(train), _sizes(train), pre_notes)
    if kind != "cotrain":
        raise ValueError(f"no plan for a {kind!r} job")
    labeled = [im for im in train if im.state in ANNOTATED]
    unlabeled = [im for im in train if im.state not in ANNOTATED] or labeled
    val = [im for im in images if im.split == "val" and im.state in ANNOTATED]
    notes = []
    if not warm_start and pr.cold_start_pretrain:
        phases.append(
            Phase(
                "pretrain",
                1,
                pr.pretrain_steps,
                pr.pretrain_steps * step_s["pretrain"],
                "label-free pretraining",
            )
        )
        notes.append("starts with label-free pretraining (no model yet)")
    every = max(1, pr.refresh_every)
    passes = len(range(0, pr.cotrain_steps, every))
    unl_area = sum(area(im) for im in unlabeled)
    first = sampling_evaluations(pr.refresh_ddim_steps, pr.refresh_samples, pr.rounds)
    later = sampling_evaluations(pr.refresh_ddim_steps, pr.refresh_samples, pr.rounds, from_cache=True)
    per_area = eval_s["teacher"] * (first + later * max(0, passes - 1)) if passes else 0.0
    pl_seconds = unl_area * per_area
    val_area = sum(area(im) for im in val)
    # the two students on every val image, and the labels-only student of the reference gate or fallback
    nets = 3 if pr.pseudo_gate_reference or pr.reference_fallback else 2
    val_seconds = val_area * nets * eval_s["student"]
    checks = 0
    if val and pr.val_every > 0:  # during co-training: every val_every steps and at the end
        checks = len(range(pr.val_every, pr.cotrain_steps + 1, pr.val_every))
        checks += 0 if pr.cotrain_steps % pr.val_every == 0 else 1
    # a validated Stage B (teacher_val_every > 0): the teacher samples the validation images at each check;
    # teacher_steps is then a cap, and the estimate the cost of running to it
    t_checks = 0
    if val and pr.teacher_val_every > 0:
        t_checks = len(range(pr.teacher_val_every, pr.teacher_steps + 1, pr.teacher_val_every))
        t_checks += 0 if pr.teacher_steps % pr.teacher_val_every == 0 else 1
    t_check_s = (
        val_area * eval_s["teacher"] * sampling_evaluations(pr.refresh_ddim_steps, pr.refresh_samples, 1)
    )
    t_seconds = pr.teacher_steps * step_s["teacher"] + t_checks * t_check_s
    # teacher_keep_best: the same check before each refresh and when co-training ends
    k_checks = passes + 1 if val and pr.teacher_keep_best else 0
    c_what = ", ".join(
        ([f"{checks} validation checks"] if checks else [])
        + ([f"{k_checks} teacher checks"] if k_checks else [])
    )
    t_what = f"teacher (at most; {t_checks} validation checks)" if t_checks else "teacher"
    for r in range(1, max(1, rounds) + 1):
        phases.append(Phase("teacher", r, pr.teacher_steps, t_seconds, t_what))
        phases.append(
            Phase(
                "pseudo-labels",
                r,
                passes * len(unlabeled),
                pl_seconds,
                f"pseudo-labels ({passes} pass{'es' if passes != 1 else ''} over {len(unlabeled)} image(s))",
            )
        )
        if val and passes:
            phases.append(
                Phase(
                    "val-pseudo-labels",
                    r,
                    passes * len(val),
                    val_area * per_area,
                    f"the teacher on {len(val)} validation image(s)",
                )
            )
        phases.append(
            Phase(
                "cotrain",
                r,
                pr.cotrain_steps,
                pr.cotrain_steps * step_s["cotrain"] + checks * val_seconds + k_checks * t_check_s,
                "co-training" + (f" ({c_what})" if c_what else ""),
            )
        )
        phases.append(Phase("validation", r, 1, val_seconds + 1.0, "validation and saving"))
    return Plan(kind, tuple(phases), len(train), _sizes(train), tuple(notes))
