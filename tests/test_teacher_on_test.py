"""`diffseg experiment --teacher-test` (issue 14): the teacher's own masks scored on the test images, for
reporting only — sampled exactly as the co-training's validation checks sample the teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_diffseg.base.presets import get_preset
from napari_diffseg.core.models import ModelBundle, ModelSpec
from napari_diffseg.core.training import teacher_labels
from napari_diffseg.core.validation import ValSet
from napari_diffseg.experiment import teacher_on_test


def _setup() -> tuple[ModelBundle, list[torch.Tensor], list[np.ndarray]]:
    pr = get_preset("tiny")
    torch.manual_seed(0)
    spec = ModelSpec("diffseg", 1, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim)
    bundle = ModelBundle(spec, seed=0)
    images = [torch.rand(1, 40, 48, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    # the teacher's own masks, sampled as its validation checks sample it (as teacher_on_test must)
    own = [m.numpy().astype(np.int64) for m in teacher_labels(bundle, images, pr)]
    return bundle, images, own


def test_teacher_on_test_scores_the_teacher_as_its_validation_checks_sample_it() -> None:
    pr = get_preset("tiny")
    bundle, images, own = _setup()
    ids = [f"test_{j}" for j in range(3)]
    # the teacher's own masks as the truth: Dice 1 on every image, and the same on validation images
    val = ValSet(images, [torch.from_numpy(m) for m in own], [None] * 3)
    r = teacher_on_test(bundle, val, images, own, ids, [None] * 3, pr)
    assert [p["id"] for p in r["per_image"]] == ids
    assert [p["dice"] for p in r["per_image"]] == pytest.approx([1.0] * 3)
    assert r["dice_mean"] == pytest.approx(1.0) and r["val_dice"] == pytest.approx(1.0)
    assert r["sampler"] == {"ddim_steps": pr.refresh_ddim_steps, "samples": pr.refresh_samples, "rounds": 1}
    # masks paired with the wrong images would not give 1 everywhere
    shifted = own[1:] + own[:1]
    r2 = teacher_on_test(bundle, None, images, shifted, ids, [None] * 3, pr)
    assert r2["val_dice"] is None and r2["dice_mean"] < 0.999
    # inside a region only: a mask wrong outside it still scores 1
    region = np.zeros((40, 48), bool)
    region[:, :20] = True
    spoiled = [m.copy() for m in own]
    for m in spoiled:
        m[:, 20:] = 1 - m[:, 20:]
    inside = teacher_on_test(bundle, None, images, spoiled, ids, [region] * 3, pr)
    whole = teacher_on_test(bundle, None, images, spoiled, ids, [None] * 3, pr)
    assert inside["dice_mean"] == pytest.approx(1.0) and whole["dice_mean"] < 0.9


def test_the_experiment_records_each_teacher_check_once_and_what_it_kept(monkeypatch, synth_dataset) -> None:
    """With teacher_keep_best the result's `validation` has each co-training teacher check once, and the
    restores as messages; a scripted teacher that falls after step 0 is given its step-0 weights back."""
    from napari_diffseg.experiment import run_experiment

    script = iter([0.6, 0.5, 0.4])  # co-training's checks at steps 0, 4 and the end (8)
    monkeypatch.setattr("napari_diffseg.core.training.teacher_val_dice", lambda *a: next(script))
    r = run_experiment(
        synth_dataset,
        labeled_fraction=0.5,
        method="diffseg",
        preset="tiny",
        overrides={"cotrain_steps": 8, "refresh_every": 4, "val_every": 4, "teacher_keep_best": True},
    )
    cot = [v for v in r["validation"] if v["phase"] == "cotrain"]
    checks = [
        (v["step"], v["teacher_val_dice"]) for v in cot if "teacher_val_dice" in v and "message" not in v
    ]
    assert checks == [(0, 0.6), (4, 0.5), (8, 0.4)]
    kept = [v["message"] for v in cot if v.get("message", "").startswith("kept the teacher")]
    assert len(kept) == 2 and all(m.startswith("kept the teacher's weights of step 0") for m in kept)
