"""Validation inside training: the Dice it measures, the best weights it keeps, and the pseudo-label gate."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import napari_diffseg.core.training
from napari_diffseg.base.errors import ConfigError
from napari_diffseg.base.events import Ticker
from napari_diffseg.base.presets import get_preset
from napari_diffseg.core.metrics import segmentation_metrics
from napari_diffseg.core.models import ModelBundle, ModelSpec
from napari_diffseg.core.training import (
    CoTrainModule,
    TrainData,
    _sup_loss,
    cotrain,
    cps_weight,
    teacher_val_dice,
    train_baseline,
    train_teacher,
)
from napari_diffseg.core.validation import Validator, ValSet, gate_weight, image_dice, mean_dice

CPU = torch.device("cpu")


@pytest.mark.parametrize("k", [2, 3])
def test_image_dice_matches_segmentation_metrics(k: int) -> None:
    rng = np.random.default_rng(k)
    for _ in range(5):
        p = rng.integers(0, k, (20, 24))
        t = rng.integers(0, k, (20, 24))
        expected = segmentation_metrics(p, t, k)["dice"]
        assert image_dice(torch.from_numpy(p), torch.from_numpy(t), k) == pytest.approx(expected)
    empty = torch.zeros(8, 8, dtype=torch.long)
    assert image_dice(empty, empty, 2) == 1.0  # the convention of segmentation_metrics
    assert image_dice(empty, empty + 1, 2) == 0.0


def test_mean_dice_scores_inside_the_region_only() -> None:
    y = torch.zeros(10, 10, dtype=torch.long)
    y[2:5, 2:5] = 1
    pred = y.clone()
    pred[7:, 7:] = 1  # a false positive outside the field of view
    region = torch.zeros(10, 10, dtype=torch.bool)
    region[:6, :6] = True
    val = ValSet([torch.zeros(1, 10, 10)], [y], [region])
    assert mean_dice([pred], val, 2) == 1.0
    assert mean_dice([pred], ValSet([torch.zeros(1, 10, 10)], [y]), 2) < 1.0


def test_gate_weight() -> None:
    assert gate_weight(0.8, 0.7, 0.05) == 1.0  # the teacher is better: full weight
    assert gate_weight(0.7, 0.7, 0.05) == 1.0
    assert gate_weight(0.675, 0.7, 0.05) == pytest.approx(0.5)
    assert gate_weight(0.5, 0.7, 0.05) == 0.0  # the teacher is worse by more than the margin: off
    assert gate_weight(float("nan"), 0.7, 0.05) == 1.0  # not measured yet


class _Threshold(nn.Module):
    """Two-class logits from one learnable offset: foreground where x + b > 0."""

    def __init__(self, b: float) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 10 * (x[:, :1] + self.b)
        return torch.cat([-z, z], 1)


def test_validator_keeps_and_restores_the_best_weights() -> None:
    x = torch.linspace(-1, 1, 64).reshape(1, 8, 8)
    y = (x[0] > 0).long()
    net = _Threshold(0.0)  # perfect
    tensors: dict[str, torch.Tensor] = {}
    v = Validator(
        {"student": net},
        ValSet([x], [y]),
        tensors,
        num_classes=2,
        multiple=1,
        roi=8,
        sw_batch=1,
        every=1,
    )
    assert v.check(1)["val_dice"] == 1.0 and v.best_step == 1
    with torch.no_grad():
        net.b.fill_(0.9)  # now most of the image is foreground: worse
    out = v.check(2)
    assert out["val_dice"] < 1.0 and out["val_best"] == 1.0 and v.best_step == 1
    assert v.restore_best() == 1 and net.b.item() == 0.0
    # the state lives in the checkpoint tensors: a new validator over them (a resumed run) agrees
    v2 = Validator(
        {"student": net}, ValSet([x], [y]), tensors, num_classes=2, multiple=1, roi=8, sw_batch=1, every=1
    )
    assert v2.best_step == 1 and v2.best_dice == 1.0


def test_students_that_fall_back_below_the_teacher_reopen_the_gate() -> None:
    """The gate compares the teacher with the students' last check: students that passed the teacher and then
    fall below it get its pseudo-labels back (a variant that kept the gate shut on the students' best check
    measured worse: DSB 10 %, seed 2, see ``benchmarks/results/evidence-gate-best/``)."""
    x = torch.linspace(-1, 1, 64).reshape(1, 8, 8)
    y = (x[0] > 0).long()
    net = _Threshold(0.0)  # perfect
    v = Validator(
        {"student": net}, ValSet([x], [y]), {}, num_classes=2, multiple=1, roi=8, sw_batch=1, every=1
    )
    v.set_teacher_dice(0.8)
    assert v.gate == 1.0  # no check yet
    assert v.check(1)["gate"] == 0.0  # students 1.0 against a teacher at 0.8
    with torch.no_grad():
        net.b.fill_(0.9)  # most of the image foreground now: the students fall below the teacher
    out = v.check(2)
    assert out["val_dice"] < 0.8 < v.best_dice
    assert out["gate"] == 1.0 == gate_weight(0.8, out["val_dice"], v.margin)
    v.set_teacher_dice(out["val_dice"] - 0.02)  # a refresh slightly worse than the students: partly shut
    assert v.gate == pytest.approx(0.6)


def _ramp_validator(deployed: dict[str, nn.Module], **options) -> Validator:
    """A validator on one 8×8 ramp image whose truth is its positive half, checking every step."""
    x = torch.linspace(-1, 1, 64).reshape(1, 8, 8)
    val = ValSet([x], [(x[0] > 0).long()])
    return Validator(deployed, val, {}, num_classes=2, multiple=1, roi=8, sw_batch=1, every=1, **options)


def test_the_reference_gate_cuts_a_teacher_that_keeps_the_students_below_their_labels() -> None:
    """The teacher labels the validation images better than the students segment them (the teacher gate
    stays open), but a labels-only reference segments them better still: the reference gate shuts."""
    students, reference = _Threshold(0.9), _Threshold(0.0)  # poor students, a perfect reference
    v = _ramp_validator({"student": students}, reference=reference)
    v.set_teacher_dice(1.0)
    out = v.check(1)
    assert out["val_reference"] == 1.0 and out["val_dice"] < 1.0 - v.margin
    assert gate_weight(1.0, out["val_dice"], v.margin) == 1.0  # what the teacher gate alone would give
    assert out["gate"] == 0.0 and v.summary()["last_reference_dice"] == 1.0
    # the reference gate's own weight (what reference_gate_cps puts on CPS), with the teacher gate open
    assert out["reference_weight"] == v.reference_weight == 0.0
    with torch.no_grad():
        students.b.fill_(0.02)  # a pixel below labels alone: partly shut, by the margin rule
    out = v.check(3)
    expected = 1.0 + (out["val_dice"] - 1.0) / v.margin
    assert 0.0 < expected < 1.0 and out["reference_weight"] == pytest.approx(expected)
    with torch.no_grad():
        students.b.fill_(0.0)  # the students catch up with labels alone: the teacher's weight is back
    assert v.check(2)["gate"] == 1.0
    assert v.reference_weight == 1.0
    # without a reference nothing is scored or reported for it
    plain = _ramp_validator({"student": students})
    assert "val_reference" not in plain.check(1) and "last_reference_dice" not in plain.summary()
    assert plain.reference_weight == 1.0  # no reference: nothing to weight CPS by


def test_cotrain_trains_and_scores_the_reference_only_when_asked() -> None:
    pr = get_preset("tiny").with_overrides(cotrain_steps=6, refresh_every=1000, val_every=3)
    imgs, masks = _blobs(7)
    data = TrainData(imgs[:2], masks[:2], unlabeled_images=imgs[2:5], val=ValSet(imgs[5:], masks[5:]))
    off = pr.with_overrides(reference_fallback=False)
    assert CoTrainModule(_bundle(), off).reference is None  # no gate, no fallback: nothing extra trains
    assert CoTrainModule(_bundle(), pr).reference is not None  # the default's fallback trains one
    # without validation images neither the gate nor the fallback can act: nothing extra trains
    assert (
        CoTrainModule(_bundle(), pr.with_overrides(pseudo_gate_reference=True), validated=False).reference
        is None
    )
    no_val = TrainData(imgs[:2], masks[:2], unlabeled_images=imgs[2:5])
    gen = torch.Generator().manual_seed(0)
    steps = [
        e.losses
        for e in cotrain(_bundle(), no_val, pr, generator=gen, seed=0, device=CPU)
        if e.kind == "progress"
    ]
    assert steps and not any("ref_sup" in s for s in steps)
    on = off.with_overrides(pseudo_gate_reference=True)
    b = _bundle()
    module = CoTrainModule(b, on)
    assert module.reference is not None and module.reference is not b.nets["student_a"]
    events = list(cotrain(b, data, on, generator=torch.Generator().manual_seed(0), seed=0, device=CPU))
    checks = [e.losses for e in events if e.kind == "progress" and "val_dice" in e.losses]
    assert checks and all(0.0 <= c["val_reference"] <= 1.0 for c in checks)
    steps = [e.losses for e in events if e.kind == "progress" and e.phase == "cotrain"]
    assert all(s["ref_sup"] > 0 for s in steps)
    assert set(b.nets) == set(_bundle().nets)  # the reference is not part of the model that is saved


def _blobs(n: int, size: int = 32, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    imgs, masks = [], []
    for _ in range(n):
        y = torch.zeros(size, size, dtype=torch.long)
        cy, cx = torch.randint(8, size - 8, (2,), generator=g).tolist()
        y[cy - 6 : cy + 6, cx - 6 : cx + 6] = 1
        imgs.append(y.float()[None] * 2 - 1 + 0.2 * torch.randn((1, size, size), generator=g))
        masks.append(y)
    return imgs, masks


def _bundle(method: str = "diffseg") -> ModelBundle:
    pr = get_preset("tiny")
    return ModelBundle(ModelSpec(method, 1, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim), seed=0)


def test_a_useless_teacher_is_gated_off() -> None:
    """A teacher that labels nothing (zero weights: constant logits) scores 0 on the validation images;
    once the students beat it by the margin, their pseudo-label loss gets weight 0."""
    pr = get_preset("tiny").with_overrides(cotrain_steps=12, refresh_every=1000, val_every=2, lr=3e-3)
    imgs, masks = _blobs(8)
    data = TrainData(imgs[:2], masks[:2], unlabeled_images=imgs[2:5], val=ValSet(imgs[5:], masks[5:]))
    b = _bundle()
    with torch.no_grad():
        for p in b.nets["teacher_mask"].parameters():
            p.zero_()
    events = list(cotrain(b, data, pr, generator=torch.Generator().manual_seed(0), seed=0, device=CPU))
    checks = [e.losses for e in events if e.kind == "progress" and "val_dice" in e.losses]
    assert checks and checks[0]["val_teacher"] == 0.0
    assert checks[-1]["val_dice"] >= pr.pseudo_gate_margin and checks[-1]["gate"] == 0.0
    assert any(e.kind == "log" and e.message.startswith("kept the weights") for e in events)


def test_without_validation_images_nothing_changes() -> None:
    """No validation set: gate 1, no checks, the last weights; the random stream is untouched."""
    pr = get_preset("tiny")
    imgs, masks = _blobs(5)
    runs = []
    for val in (None, ValSet()):
        b = _bundle("supervised")
        data = TrainData(imgs[:2], masks[:2], val=val)
        ev = list(train_baseline(b, data, pr, generator=torch.Generator().manual_seed(0), device=CPU))
        assert not any("val_dice" in e.losses for e in ev)
        runs.append(torch.cat([p.flatten() for p in b.nets["student"].parameters()]))
    assert torch.equal(runs[0], runs[1])


def _grads(module: CoTrainModule, batch: dict, gate: float, cps_gate: float = 1.0) -> torch.Tensor:
    module.zero_grad()
    out = module(batch, 1.0, torch.Generator().manual_seed(0), gate, cps_gate)
    out["loss"].backward()
    return torch.cat([p.grad.flatten() for p in module.student_a.parameters()])


def _step_batch(p: int) -> dict:
    """One co-training batch of two blob patches, with random pseudo-labels."""
    g = torch.Generator().manual_seed(1)
    n = 2
    imgs, masks = _blobs(2, p)
    probs = torch.softmax(torch.randn((n, 2, p, p), generator=g), 1)
    return {
        "xa_l": torch.stack(imgs),
        "xb_l": torch.stack(imgs),
        "xa_u": torch.stack(imgs),
        "xb_u": torch.stack(imgs),
        "y_l": torch.stack(masks),
        "pl_probs": probs,
        "pl_conf": torch.ones(n, p, p),
        "t_l": torch.tensor([500, 900]),
        "t_u": torch.tensor([500, 900]),
        "eps_l": torch.randn((n, 2, p, p), generator=g),
        "eps_u": torch.randn((n, 2, p, p), generator=g),
    }


def test_pseudo_label_and_cps_terms_change_the_students_gradients() -> None:
    pr = get_preset("tiny")
    b = _bundle()
    batch = _step_batch(pr.patch_size)
    with_pseudo = _grads(CoTrainModule(b, pr), batch, 1.0)
    gated = _grads(CoTrainModule(b, pr), batch, 0.0)
    no_cps = _grads(CoTrainModule(b, pr.with_overrides(cps_weight=0.0)), batch, 0.0)
    assert not torch.allclose(with_pseudo, gated)  # the teacher's pseudo-labels move the students
    assert not torch.allclose(gated, no_cps)  # so does cross pseudo-supervision


def test_the_cps_gate_scales_cross_pseudo_supervision_alone() -> None:
    """reference_gate_cps's weight on the CPS term: 0 leaves the students exactly the gradient of a run
    without CPS, 1 that of the default, and it never touches the teacher's pseudo-label term."""
    pr = get_preset("tiny")
    b = _bundle()
    batch = _step_batch(pr.patch_size)
    no_cps = _grads(CoTrainModule(b, pr.with_overrides(cps_weight=0.0)), batch, 1.0)
    assert torch.allclose(_grads(CoTrainModule(b, pr), batch, 1.0, 0.0), no_cps, atol=1e-6)
    full = _grads(CoTrainModule(b, pr), batch, 1.0, 1.0)
    assert torch.equal(full, _grads(CoTrainModule(b, pr), batch, 1.0))  # 1: the default step
    half = _grads(CoTrainModule(b, pr), batch, 1.0, 0.5)
    assert torch.allclose(half, (full + no_cps) / 2, atol=1e-6)  # the term is linear in its weight
    # with the teacher's term gated off too, nothing but the labels moves the students
    labels_only = _grads(CoTrainModule(b, pr.with_overrides(cps_weight=0.0, unsup_weight=0.0)), batch, 1.0)
    assert torch.allclose(_grads(CoTrainModule(b, pr), batch, 0.0, 0.0), labels_only, atol=1e-6)


def _grads_at(module: CoTrainModule, batch: dict, ramp: float, gate: float) -> torch.Tensor:
    module.zero_grad()
    module(batch, ramp, torch.Generator().manual_seed(0), gate)["loss"].backward()
    return torch.cat([p.grad.flatten() for p in module.student_a.parameters()])


def test_an_unramped_teacher_term_counts_from_the_first_step() -> None:
    """pseudo_rampup=false (arm diffseg-trust): at ramp 0 the teacher's pseudo-labels already move the
    students by their full gated weight while CPS still waits for its ramp; the default waits for both."""
    pr = get_preset("tiny")
    b = _bundle()
    batch = _step_batch(pr.patch_size)
    labels_only = _grads_at(CoTrainModule(b, pr), batch, 0.0, 1.0)  # ramp 0: the default's labels alone
    unramped = pr.with_overrides(pseudo_rampup=False)
    at_start = _grads_at(CoTrainModule(b, unramped), batch, 0.0, 1.0)
    assert not torch.allclose(at_start, labels_only, atol=1e-6)
    # ... and that is the teacher's term alone: with CPS off the default at ramp 1 steps the same way
    no_cps = _grads_at(CoTrainModule(b, pr.with_overrides(cps_weight=0.0)), batch, 1.0, 1.0)
    assert torch.allclose(at_start, no_cps, atol=1e-6)
    # the gate still weighs it: shut, the unramped run at ramp 0 is the labels alone
    assert torch.allclose(_grads_at(CoTrainModule(b, unramped), batch, 0.0, 0.0), labels_only, atol=1e-6)
    # at ramp 1 the two rules are one loss
    assert torch.allclose(
        _grads_at(CoTrainModule(b, unramped), batch, 1.0, 0.6),
        _grads_at(CoTrainModule(b, pr), batch, 1.0, 0.6),
        atol=1e-6,
    )


def test_cps_fills_the_share_the_gate_shuts() -> None:
    """cps_fills_gate: the CPS weight goes from cps_weight (gate open) to unsup_weight, the CPS baseline's
    weight (gate shut), linearly; the default keeps cps_weight; it never drops below cps_weight."""
    pr = get_preset("cpu")
    on = pr.with_overrides(cps_fills_gate=True)
    assert [cps_weight(pr, g) for g in (1.0, 0.5, 0.0)] == [0.5, 0.5, 0.5]
    assert [cps_weight(on, g) for g in (1.0, 0.5, 0.0)] == [0.5, 0.75, 1.0]
    assert cps_weight(on.with_overrides(unsup_weight=0.2), 0.0) == 0.5
    tiny = get_preset("tiny")
    b = _bundle()
    batch = _step_batch(tiny.patch_size)
    # gate shut: the students step as with the teacher's term off and CPS at the baseline's weight
    filled = _grads_at(CoTrainModule(b, tiny.with_overrides(cps_fills_gate=True)), batch, 1.0, 0.0)
    baseline_cps = tiny.with_overrides(unsup_weight=0.0, cps_weight=tiny.unsup_weight)
    assert torch.allclose(filled, _grads_at(CoTrainModule(b, baseline_cps), batch, 1.0, 0.0), atol=1e-6)
    assert not torch.allclose(filled, _grads_at(CoTrainModule(b, tiny), batch, 1.0, 0.0), atol=1e-6)


def test_cotrain_puts_the_reference_weight_on_cps_only_when_asked(monkeypatch) -> None:
    """With reference_gate_cps every step's CPS weight is the reference weight of the last check (1 before
    it); without it, CPS keeps full weight however far the students are below the reference."""
    pr = get_preset("tiny").with_overrides(
        cotrain_steps=6, refresh_every=1000, val_every=2, pseudo_gate_reference=True
    )
    imgs, masks = _blobs(7)
    data = TrainData(imgs[:2], masks[:2], unlabeled_images=imgs[2:5], val=ValSet(imgs[5:], masks[5:]))
    # the students score 0.7 and the reference 0.78: the reference weight is 1 + (0.7 - 0.78) / 0.05 = 0
    monkeypatch.setattr(Validator, "score", lambda self, nets=None: 0.7 if nets is None else 0.78)
    seen: list[float] = []
    forward = CoTrainModule.forward

    def spy(self, batch, ramp, gen, gate=1.0, cps_gate=1.0):
        seen.append(cps_gate)
        return forward(self, batch, ramp, gen, gate, cps_gate)

    monkeypatch.setattr(CoTrainModule, "forward", spy)
    on = pr.with_overrides(reference_gate_cps=True)
    events = list(
        cotrain(_bundle(), data, on, generator=torch.Generator().manual_seed(0), seed=0, device=CPU)
    )
    assert seen == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]  # steps 1-2 before the first check, then shut
    logged = [e.losses["cps_gate"] for e in events if e.kind == "progress" and e.phase == "cotrain"]
    assert logged and logged[-1] == 0.0
    checks = [e.losses for e in events if e.kind == "progress" and "val_dice" in e.losses]
    assert checks and all(c["reference_weight"] == 0.0 for c in checks)
    seen.clear()
    list(cotrain(_bundle(), data, pr, generator=torch.Generator().manual_seed(0), seed=0, device=CPU))
    assert seen == [1.0] * 6  # the plain reference gate leaves CPS alone


def _fallback_validator(students: nn.Module, reference: nn.Module, gate: bool = False) -> Validator:
    deployed = {"a": students, "b": copy.deepcopy(students)}
    return _ramp_validator(deployed, reference=reference, reference_gate=gate, fallback=True)


def test_the_fallback_deploys_labels_alone_only_when_they_validate_better() -> None:
    """The reference's best weights (not its last) replace every deployed network when its best check beat
    the students' best; otherwise the students' best weights stay. Without its gate the reference does not
    touch the pseudo-label weight."""
    students, reference = _Threshold(0.5), _Threshold(0.0)  # the reference is perfect at first
    v = _fallback_validator(students, reference)
    v.set_teacher_dice(1.0)
    out = v.check(1)
    assert out["val_reference"] == 1.0 > out["val_dice"]
    assert "reference_weight" not in out and out["gate"] == 1.0  # scored, not gating
    with torch.no_grad():
        reference.b.fill_(0.9)  # the reference gets worse: its best weights stay those of step 1
        students.b.fill_(0.3)
    v.check(2)
    assert v.best_reference_dice == 1.0 and v.best_dice < 1.0
    assert v.restore_best() == 1 and v.deployed_reference
    assert all(net.b.item() == 0.0 for net in v.deployed.values())  # both take the reference's best
    assert v.summary()["deployed_reference"] is True
    # students that beat the reference keep their own best weights
    students, reference = _Threshold(0.0), _Threshold(0.5)
    v = _fallback_validator(students, reference)
    v.check(1)
    with torch.no_grad():
        students.b.fill_(0.7)
    v.check(2)
    assert v.restore_best() == 1 and not v.deployed_reference
    assert all(net.b.item() == 0.0 for net in v.deployed.values())
    assert v.summary()["best_reference_dice"] < v.summary()["best_dice"]
    # with the gate too, a better reference shuts the pseudo-labels as the reference gate does
    assert _fallback_validator(_Threshold(0.9), _Threshold(0.0), gate=True).check(1)["gate"] == 0.0
    with pytest.raises(ConfigError, match="labels-only reference"):
        Validator({}, None, {}, num_classes=2, multiple=1, roi=8, sw_batch=1, every=1, fallback=True)


def test_cotrain_falls_back_to_labels_alone_and_otherwise_trains_the_twins_as_before(monkeypatch) -> None:
    """With reference_fallback the twins train exactly as without it (the reference has its own parameters
    and does not gate); at the end they take the reference's weights only when it validated better."""
    pr = get_preset("tiny").with_overrides(
        cotrain_steps=4, refresh_every=1000, val_every=2, reference_fallback=False
    )
    imgs, masks = _blobs(7)
    data = TrainData(imgs[:2], masks[:2], unlabeled_images=imgs[2:5], val=ValSet(imgs[5:], masks[5:]))
    # every step reports its gate: progress events are otherwise throttled by wall time, and the
    # runs below compare their gates step by step
    monkeypatch.setattr(Ticker, "due", lambda self, force=False: True)

    def train(preset, reference_score: float) -> tuple[ModelBundle, list]:
        # the twins score 0.7 at every check; the reference scores ``reference_score``
        monkeypatch.setattr(
            Validator, "score", lambda self, nets=None: 0.7 if nets is None else reference_score
        )
        b = _bundle()
        gen = torch.Generator().manual_seed(0)
        return b, list(cotrain(b, data, preset, generator=gen, seed=0, device=CPU))

    plain, plain_events = train(pr, 0.0)
    fb = pr.with_overrides(reference_fallback=True)
    kept, events = train(fb, 0.5)  # labels alone validate worse: the twins stay
    for name in ("student_a", "student_b", "teacher_mask"):
        for key, value in plain.nets[name].state_dict().items():
            assert torch.equal(kept.nets[name].state_dict()[key], value), (name, key)
    log = [e for e in events if e.kind == "log" and e.message.startswith("kept the weights")]
    assert log[-1].losses == {"deployed_reference": 0.0} and "labels-only" not in log[-1].message

    def gates(evs: list) -> list[tuple[int, float]]:
        return [(e.step, e.losses["gate"]) for e in evs if e.kind == "progress" and e.phase == "cotrain"]

    assert [step for step, _ in gates(events)] == [1, 2, 3, 4]
    assert gates(events) and gates(events) == gates(plain_events)  # the fallback alone never gates
    fell, events = train(fb, 0.9)  # labels alone validate better: both students take its weights
    log = [e for e in events if e.kind == "log" and e.message.startswith("kept the weights")]
    assert log[-1].losses == {"deployed_reference": 1.0} and "labels-only student" in log[-1].message
    assert gates(events) == gates(plain_events)  # a reference 0.2 above the twins: still no gate
    a, b2 = fell.nets["student_a"].state_dict(), fell.nets["student_b"].state_dict()
    assert all(torch.equal(a[k], b2[k]) for k in a)
    assert any(not torch.equal(a[k], plain.nets["student_a"].state_dict()[k]) for k in a)
    assert set(fell.nets) == set(plain.nets)  # the reference itself is not saved


def test_reference_gate_cps_needs_the_reference() -> None:
    with pytest.raises(ConfigError, match="pseudo_gate_reference=true"):
        get_preset("tiny").with_overrides(reference_gate_cps=True)
    assert get_preset("tiny").with_overrides(pseudo_gate_reference=True, reference_gate_cps=True)


def test_the_reference_trains_on_the_labels_alone_and_leaves_the_students_untouched() -> None:
    pr = get_preset("tiny")
    batch = _step_batch(pr.patch_size)
    plain = _grads(CoTrainModule(_bundle(), pr), batch, 1.0)
    module = CoTrainModule(_bundle(), pr.with_overrides(pseudo_gate_reference=True))
    assert torch.equal(_grads(module, batch, 1.0), plain)  # the students' gradients do not see it
    ref = torch.cat([q.grad.flatten() for q in module.reference.parameters()])
    assert ref.abs().sum() > 0  # it learns from the labeled patches
    module.zero_grad()
    labels_only = _sup_loss(module.reference(batch["xa_l"]), batch["y_l"])
    labels_only.backward()
    again = torch.cat([q.grad.flatten() for q in module.reference.parameters()])
    assert torch.allclose(again, ref, atol=1e-6)  # its whole gradient is that of the supervised loss


def test_training_stops_when_validation_stalls(monkeypatch) -> None:
    """With val_patience, a loop ends once its validation Dice has not improved for that many checks."""
    monkeypatch.setattr(Validator, "score", lambda self: 0.5)  # never improves after the first check
    pr = get_preset("tiny").with_overrides(cotrain_steps=100, val_every=2, val_patience=3)
    imgs, masks = _blobs(4)
    data = TrainData(imgs[:2], masks[:2], val=ValSet(imgs[2:], masks[2:]))
    b = _bundle("supervised")
    events = list(train_baseline(b, data, pr, generator=torch.Generator().manual_seed(0), device=CPU))
    stop = [e for e in events if e.kind == "log" and "has not improved for 3 checks" in e.message]
    assert len(stop) == 1 and stop[0].step == 2 + 3 * 2  # best at step 2, then 3 checks without gain
    assert max(e.step for e in events if e.kind == "progress") == 8
    assert events[-1].kind == "done"


def test_teacher_validation_keeps_its_best_weights_and_stops(monkeypatch) -> None:
    """With teacher_val_every, Stage B scores the teacher on the validation images, stops after
    teacher_val_patience checks without a gain, and ends with the weights of its best check."""
    script = iter([0.5, 0.7, 0.6, 0.65, 0.4, 0.9, 0.9])  # best at the 2nd check (step 4)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    b = _bundle()
    f = b.nets["teacher_mask"]

    def scripted(bundle, val, preset) -> float:
        snapshots[len(snapshots) + 1] = copy.deepcopy(f.state_dict())
        return next(script)

    monkeypatch.setattr("napari_diffseg.core.training.teacher_val_dice", scripted)
    pr = get_preset("tiny").with_overrides(
        teacher_steps=40, teacher_val_every=2, teacher_val_patience=3, lr=3e-3
    )
    imgs, masks = _blobs(4)
    data = TrainData(imgs[:2], masks[:2], val=ValSet(imgs[2:], masks[2:]))
    events = list(train_teacher(b, data, pr, generator=torch.Generator().manual_seed(0), device=CPU))
    checks = [e.losses for e in events if e.kind == "progress" and "teacher_val_dice" in e.losses]
    assert [c["teacher_val_dice"] for c in checks] == [0.5, 0.7, 0.6, 0.65, 0.4]
    assert [c["teacher_val_best"] for c in checks] == [0.5, 0.7, 0.7, 0.7, 0.7]
    stop = [e for e in events if e.kind == "log" and "has not improved for 3 checks" in e.message]
    assert len(stop) == 1 and stop[0].step == 10  # best at step 4, then 3 checks (steps 6, 8, 10)
    assert any(e.kind == "log" and e.message.startswith("kept the weights of step 4") for e in events)
    best, last = snapshots[2], snapshots[5]
    assert any(not torch.equal(best[k], last[k]) for k in best)  # the teacher moved after its best check
    assert all(torch.equal(f.state_dict()[k], best[k]) for k in best)  # and got its best weights back
    assert events[-1].kind == "done"


def test_teacher_validation_off_runs_fixed_steps(monkeypatch) -> None:
    """teacher_val_every = 0 (the default) trains exactly teacher_steps, without a check."""
    monkeypatch.setattr("napari_diffseg.core.training.teacher_val_dice", lambda *a: pytest.fail("scored"))
    pr = get_preset("tiny").with_overrides(teacher_steps=6)
    imgs, masks = _blobs(4)
    data = TrainData(imgs[:2], masks[:2], val=ValSet(imgs[2:], masks[2:]))
    events = list(train_teacher(_bundle(), data, pr, generator=torch.Generator().manual_seed(0), device=CPU))
    assert max(e.step for e in events if e.kind == "progress") == 6
    assert not any(e.kind == "log" for e in events)


def test_teacher_val_dice_scores_the_teachers_samples() -> None:
    """A teacher with zero weights (constant logits: background everywhere) scores 0 on images with
    objects; the score is deterministic, so two checks differ by the weights alone."""
    pr = get_preset("tiny")
    imgs, masks = _blobs(3)
    val = ValSet(imgs, masks)
    b = _bundle()
    with torch.no_grad():
        for p in b.nets["teacher_mask"].parameters():
            p.zero_()
    assert teacher_val_dice(b, val, pr) == 0.0
    trained = _bundle()
    data = TrainData(imgs, masks)
    pr_t = pr.with_overrides(teacher_steps=60, lr=3e-3)
    list(train_teacher(trained, data, pr_t, generator=torch.Generator().manual_seed(0), device=CPU))
    first = teacher_val_dice(trained, val, pr)
    assert first == teacher_val_dice(trained, val, pr)
    assert first > 0.3  # a trained teacher finds the squares it was trained on


def _keep_best_run(monkeypatch, script: list[float]):
    """Co-training with ``teacher_keep_best`` and a scripted teacher score; returns the bundle, its events,
    the teacher's weights at each check and at each refresh of the unlabeled images."""
    scores = iter(script)
    b = _bundle()
    teacher = b.nets["teacher_mask"]
    at_check: list[dict[str, torch.Tensor]] = []
    at_refresh: list[dict[str, torch.Tensor]] = []

    def scripted(bundle, val, preset) -> float:
        at_check.append(copy.deepcopy(teacher.state_dict()))
        return next(scores)

    real_refresh = napari_diffseg.core.training.refresh_pseudo_labels

    def watched(bundle, images, preset, cache, **kw):
        if not kw.get("prefix"):
            at_refresh.append(copy.deepcopy(teacher.state_dict()))
        yield from real_refresh(bundle, images, preset, cache, **kw)

    monkeypatch.setattr("napari_diffseg.core.training.teacher_val_dice", scripted)
    monkeypatch.setattr("napari_diffseg.core.training.refresh_pseudo_labels", watched)
    pr = get_preset("tiny").with_overrides(
        cotrain_steps=12, refresh_every=4, val_every=4, lr=3e-3, teacher_keep_best=True
    )
    imgs, masks = _blobs(7)
    data = TrainData(imgs[:2], masks[:2], unlabeled_images=imgs[2:5], val=ValSet(imgs[5:], masks[5:]))
    events = list(cotrain(b, data, pr, generator=torch.Generator().manual_seed(0), seed=0, device=CPU))
    return b, events, at_check, at_refresh


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_teacher_that_falls_in_cotrain_labels_and_ends_with_its_best_weights(monkeypatch) -> None:
    """teacher_keep_best: the teacher is scored before each refresh (steps 0, 4, 8) and at the end (12);
    below its best it takes that check's weights back before it labels, and it ends with its best."""
    b, events, at_check, at_refresh = _keep_best_run(monkeypatch, [0.6, 0.5, 0.7, 0.4])
    checks = [e for e in events if e.kind == "progress" and "teacher_val_dice" in e.losses]
    assert [e.step for e in checks] == [0, 4, 8, 12]
    assert [e.losses["teacher_val_best"] for e in checks] == [0.6, 0.6, 0.7, 0.7]
    assert len(at_check) == 4 and len(at_refresh) == 3
    assert not _same(at_check[1], at_check[0])  # co-training moved the teacher ...
    assert _same(at_refresh[1], at_check[0])  # ... and, below its best, it labelled with the best weights
    assert _same(at_refresh[2], at_check[2])  # a new best labels with its own weights
    assert not _same(at_check[3], at_check[2])
    assert _same(b.nets["teacher_mask"].state_dict(), at_check[2])  # the run ends with the best
    kept = [e.message for e in events if e.kind == "log" and e.message.startswith("kept the teacher")]
    assert kept == [
        "kept the teacher's weights of step 0 (validation Dice 0.600 against 0.500 at step 4): it labels "
        "the next pseudo-labels with them",
        "kept the teacher's weights of step 8 (validation Dice 0.700 against 0.400 at step 12)",
    ]


def test_a_teacher_that_keeps_improving_is_left_alone(monkeypatch) -> None:
    """A teacher that scores its best at every check keeps training as without teacher_keep_best: the
    students' weights are those of the same run with the flag off."""
    b, events, at_check, _ = _keep_best_run(monkeypatch, [0.5, 0.6, 0.7, 0.8])
    assert not any(e.kind == "log" and e.message.startswith("kept the teacher") for e in events)
    assert _same(b.nets["teacher_mask"].state_dict(), at_check[3])
    off = _bundle()
    pr = get_preset("tiny").with_overrides(cotrain_steps=12, refresh_every=4, val_every=4, lr=3e-3)
    imgs, masks = _blobs(7)
    data = TrainData(imgs[:2], masks[:2], unlabeled_images=imgs[2:5], val=ValSet(imgs[5:], masks[5:]))
    list(cotrain(off, data, pr, generator=torch.Generator().manual_seed(0), seed=0, device=CPU))
    for name in ("student_a", "student_b", "teacher_mask"):
        assert _same(b.nets[name].state_dict(), off.nets[name].state_dict())


def test_teacher_keep_best_needs_validation_images(monkeypatch) -> None:
    """Without validation images there is nothing to keep the teacher's best by: no check, no restore."""
    monkeypatch.setattr("napari_diffseg.core.training.teacher_val_dice", lambda *a: pytest.fail("scored"))
    pr = get_preset("tiny").with_overrides(cotrain_steps=6, refresh_every=2, teacher_keep_best=True)
    imgs, masks = _blobs(5)
    data = TrainData(imgs[:2], masks[:2], unlabeled_images=imgs[2:5])
    events = list(
        cotrain(_bundle(), data, pr, generator=torch.Generator().manual_seed(0), seed=0, device=CPU)
    )
    assert not any("teacher_val_dice" in e.losses for e in events) and events[-1].kind == "done"
