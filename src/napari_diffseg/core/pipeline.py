"""The one stage sequence every trainer runs: (Stage A →) Stage B → Stage C for diffseg, one loop for a baseline.

``diffseg experiment``, the project's ``cotrain`` job and the benchmarks all train through
:func:`run_stages`, so the order of the stages, their random generators and their checkpoints are the
same everywhere (and a fixed seed gives the same weights whichever caller runs it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from ..base.events import CancelToken, Event
from ..base.presets import Preset
from .models import ModelBundle
from .training import TrainData, cotrain, pretrain_teacher, train_baseline, train_teacher

__all__ = ["STAGES", "run_stages"]

STAGES = ("pretrain", "teacher", "cotrain", "baseline")
"""The keys of ``run_stages``'s ``checkpoints``: diffseg's three stages, and a baseline's one loop."""


def run_stages(
    bundle: ModelBundle,
    data: TrainData,
    preset: Preset,
    *,
    generator: torch.Generator,
    seed: int,
    device: torch.device,
    cancel: CancelToken | None = None,
    checkpoints: Mapping[str, str | Path] | None = None,
    cold_start: bool = True,
    pretrain_generator: torch.Generator | None = None,
    distributed: bool = False,
    after_pretrain: Callable[[], None] | None = None,
    instances: bool = False,
) -> Iterator[Event]:
    """Train ``bundle`` on ``data``, yielding every stage's events.

    For a ``diffseg`` bundle: Stage A (label-free cycle pretraining of the teacher on every image) when
    the bundle starts untrained and the preset asks for it (``cold_start_pretrain``), then every network
    in training mode, Stage B (the teacher as a mask diffusion model on the labeled images) and Stage C (co-training with the twin students, under DDP when ``distributed``).
    For a baseline (``supervised``, ``mean-teacher``, ``cps``): its one training loop.

    Args:
        bundle: The networks to train, on ``device`` already.
        data: Normalised images (see :func:`~napari_diffseg.core.models.preprocess`) and masks.
        preset: The schedule and the budget of every stage.
        generator: Random generator of Stages B and C (or of the baseline's loop), used in that order.
        seed: Seed of Stage C's pseudo-label refreshes.
        device: Where the batches go.
        cancel: Checked before each step of every stage.
        checkpoints: Checkpoint file per stage (keys from :data:`STAGES`); a stage without one is not
            checkpointed. A stage resumes from its file when it exists.
        cold_start: The bundle is untrained: Stage A runs first when ``preset.cold_start_pretrain``
            (a bundle warm-started from a trained model never runs it).
        pretrain_generator: Random generator of Stage A; ``generator`` when None.
        distributed: Stage C runs under DDP (inside ``torchrun``, process group initialised).
        after_pretrain: Called on a cold start before Stage B (after Stage A when it ran), e.g. to score
            the teacher's label-free masks.
        instances: An instance project: Stage A's split anchor is its 3-class target (see
            :func:`~napari_diffseg.core.training.pretrain_teacher`).

    Raises:
        Cancelled: ``cancel`` was set; the running stage saved its checkpoint first.
        ConfigError: The data do not suit the method (no labeled image, no unlabeled one for a baseline
            that needs them).
    """
    ck = dict(checkpoints or {})
    if bundle.spec.method != "diffseg":
        yield from train_baseline(
            bundle,
            data,
            preset,
            generator=generator,
            device=device,
            cancel=cancel,
            checkpoint=ck.get("baseline"),
        )
        return
    if cold_start:
        if preset.cold_start_pretrain:
            yield from pretrain_teacher(
                bundle,
                data.all_images,
                preset,
                generator=generator if pretrain_generator is None else pretrain_generator,
                device=device,
                cancel=cancel,
                checkpoint=ck.get("pretrain"),
                instances=instances,
            )
        if after_pretrain is not None:
            after_pretrain()
    for net in bundle.nets.values():
        net.train()
    yield from train_teacher(
        bundle, data, preset, generator=generator, device=device, cancel=cancel, checkpoint=ck.get("teacher")
    )
    yield from cotrain(
        bundle,
        data,
        preset,
        generator=generator,
        seed=seed,
        device=device,
        cancel=cancel,
        checkpoint=ck.get("cotrain"),
        distributed=distributed,
    )
