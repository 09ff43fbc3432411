"""What a job will cost (base/cost.py) and the whole-job progress and ETA built on it (review.JobHistory).

The plan must describe what the code really does: the tiling and the sampler's evaluations are counted
against ``core.inference`` and ``core.diffusion`` themselves, and a real job's event stream must land in
its plan's phases from 0 to 100 %.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_diffseg.base.contracts import EventData
from napari_diffseg.base.cost import (
    CALIBRATION_IMAGES,
    STEP_SECONDS,
    format_seconds,
    job_plan,
    sampling_evaluations,
    windowed_pixels,
)
from napari_diffseg.base.presets import get_preset
from napari_diffseg.review import JobHistory, cost_text


@dataclass
class Img:
    id: str
    name: str
    height: int
    width: int
    state: str = "unlabeled"
    split: str = "train"


@pytest.mark.parametrize(
    ("h", "w", "roi"), [(64, 64, 64), (60, 50, 64), (584, 565, 64), (261, 387, 256), (40, 900, 256)]
)
def test_windowed_pixels_counts_what_core_inference_feeds_the_network(h: int, w: int, roi: int) -> None:
    from napari_diffseg.core.inference import _windowed, pad_to_multiple

    seen = []

    def fn(t: torch.Tensor) -> torch.Tensor:
        seen.append(t.shape[0] * t.shape[-2] * t.shape[-1])
        return t[:, :1]

    x, _ = pad_to_multiple(torch.zeros(1, 1, h, w), 4)
    _windowed(fn, x, roi, 4, 0.25)
    assert windowed_pixels(h, w, roi, 4) == sum(seen)


@pytest.mark.parametrize(
    ("steps", "samples", "rounds", "from_cache"),
    [
        (1, 2, 1, False),
        (1, 2, 2, False),
        (5, 2, 2, False),
        (5, 2, 2, True),
        (10, 4, 3, False),
        (10, 1, 2, True),
    ],
)
def test_sampling_evaluations_count_the_samplers_denoiser_calls(
    steps: int, samples: int, rounds: int, from_cache: bool
) -> None:
    from napari_diffseg.core.diffusion import MaskDiffusion, SamplerConfig

    diff = MaskDiffusion(2)
    calls = []

    def denoise(m_t: torch.Tensor, _x: torch.Tensor, _t: int) -> torch.Tensor:
        calls.append(m_t.shape[0])  # the E samples go as one batch
        return torch.zeros_like(m_t)

    init = torch.full((1, 2, 4, 4), 0.5) if from_cache else None
    cfg = SamplerConfig(steps=steps, samples=samples, rounds=rounds, tol=-1.0)  # no early stop
    diff.sample(denoise, torch.zeros(1, 1, 4, 4), cfg, torch.Generator().manual_seed(0), init_probs=init)
    assert sampling_evaluations(steps, samples, rounds, from_cache=from_cache) == sum(calls)


def test_plans_follow_the_project_and_the_preset() -> None:
    images = [Img("a", "a", 584, 565, "ground_truth"), *(Img(f"u{i}", f"u{i}", 584, 565) for i in range(4))]
    images.append(Img("t", "t", 584, 565, split="test"))
    cpu = get_preset("cpu")
    cold = job_plan("cotrain", cpu.with_overrides(cold_start_pretrain=True), images, rounds=2)
    warm = job_plan("cotrain", "cpu", images, warm_start=True, rounds=2)
    assert [p.key for p in cold.phases][:2] == ["start", "pretrain"]  # the paper's recipe: Stage A first
    assert "pretrain" not in [p.key for p in warm.phases]
    assert cold.seconds - warm.seconds == pytest.approx(cpu.pretrain_steps * STEP_SECONDS["cpu"]["pretrain"])
    default_cold = job_plan("cotrain", "cpu", images, rounds=2)  # the default cold start skips Stage A
    assert "pretrain" not in [p.key for p in default_cold.phases]
    assert default_cold.seconds == pytest.approx(warm.seconds)
    pl = [p for p in warm.phases if p.key == "pseudo-labels"]
    passes = math.ceil(cpu.cotrain_steps / cpu.refresh_every)
    assert [p.round for p in pl] == [1, 2] and pl[0].units == passes * 4  # the 4 unlabeled train images
    assert "val-pseudo-labels" not in [p.key for p in warm.phases]
    with_val = job_plan(
        "cotrain", "cpu", [*images, Img("v", "v", 584, 565, "ground_truth", "val")], warm_start=True
    )
    val = [p for p in with_val.phases if p.key == "val-pseudo-labels"]
    assert len(val) == 1 and val[0].units == passes and "validation checks" in with_val.phases[-2].label
    # a validated Stage B: the teacher's checks on the validation image add to its phase (run to the cap)
    checked = job_plan(
        "cotrain",
        cpu.with_overrides(teacher_steps=1000, teacher_val_every=100),
        [*images, Img("v", "v", 584, 565, "ground_truth", "val")],
        warm_start=True,
    )
    fixed = job_plan(
        "cotrain",
        cpu.with_overrides(teacher_steps=1000),
        [*images, Img("v", "v", 584, 565, "ground_truth", "val")],
    )
    t_checked, t_fixed = (next(p for p in plan.phases if p.key == "teacher") for plan in (checked, fixed))
    assert t_checked.seconds > t_fixed.seconds and "10 validation checks" in t_checked.label
    no_val = job_plan("cotrain", cpu.with_overrides(teacher_steps=1000, teacher_val_every=100), images)
    assert next(p for p in no_val.phases if p.key == "teacher").seconds == pytest.approx(t_fixed.seconds)
    # teacher_keep_best: one teacher check a refresh and one at the end, in co-training's phase
    v_img = Img("v", "v", 584, 565, "ground_truth", "val")
    kept = job_plan("cotrain", cpu.with_overrides(teacher_keep_best=True), [*images, v_img], warm_start=True)
    c_kept, c_plain = (next(p for p in plan.phases if p.key == "cotrain") for plan in (kept, with_val))
    t_check = t_checked.seconds - t_fixed.seconds  # ten checks of the same validation image
    assert c_kept.seconds - c_plain.seconds == pytest.approx((passes + 1) * t_check / 10)
    assert f"{passes + 1} teacher checks" in c_kept.label
    kept_no_val = job_plan("cotrain", cpu.with_overrides(teacher_keep_best=True), images, warm_start=True)
    assert kept_no_val.seconds == pytest.approx(job_plan("cotrain", "cpu", images, warm_start=True).seconds)
    # a propose job: the unreviewed non-test images by default, the ids given otherwise
    propose = job_plan("propose", "cpu", images)
    assert propose.phases[-1].units == 4 and propose.images == 4
    assert job_plan("propose", "cpu", images, ids=["a", "t"]).images == 2
    # bigger images cost more to propose, not to train
    small = [Img(i.id, i.name, 256, 256, i.state, i.split) for i in images]
    assert job_plan("propose", "cpu", small).seconds < propose.seconds
    pre_small, pre_big = (job_plan("pretrain", "cpu", imgs).phases for imgs in (small, images))
    assert pre_small[1].key == pre_big[1].key == "pretrain" and pre_small[1].seconds == pre_big[1].seconds
    # ... but the label-free model's temperature is fitted on its images (at most CALIBRATION_IMAGES)
    assert pre_small[-1].key == "calibration" and 0 < pre_small[-1].seconds < pre_big[-1].seconds
    assert pre_big[-1].units == min(CALIBRATION_IMAGES, len([i for i in images if i.split == "train"]))
    assert "calibration" not in [
        p.key for p in job_plan("pretrain", cpu.with_overrides(pretrain_split_weight=0), images).phases
    ]
    # the tiny preset is seconds for a handful of fundus-sized images; cpu minutes
    assert job_plan("cotrain", "tiny", images).seconds < 30
    assert 60 < warm.seconds
    assert (
        format_seconds(42) == "42 s"
        and format_seconds(150) == "2.5 min"
        and format_seconds(7260) == "2 h 1 min"
    )


def _progress(phase: str, step: int, total: int, message: str = "", **losses: float) -> EventData:
    return EventData(kind="progress", phase=phase, step=step, total=total, message=message, losses=losses)


def test_whole_job_progress_and_eta_from_a_plan() -> None:
    images = [Img("a", "a", 128, 128, "corrected"), Img("b", "b", 128, 128), Img("c", "c", 128, 128)]
    plan = job_plan("cotrain", "tiny", images, warm_start=True, rounds=2)
    pr = get_preset("tiny")
    h = JobHistory(plan, factor=3.0)
    h.set_started(1000.0)
    assert h.fraction() == 0.0
    assert h.job_eta_seconds() == pytest.approx(3.0 * plan.seconds)  # before anything is measured
    t = 1000.0
    seen = []

    def add(data: EventData, dt: float) -> None:
        nonlocal t
        t += dt
        h.add(data, t)
        seen.append(h.fraction())

    for r in (1, 2):
        add(_progress("teacher", pr.teacher_steps, pr.teacher_steps, loss=1.0), 2.0)
        add(_progress("pseudo-labels", 1, 2, "refresh 0"), 1.0)
        add(_progress("pseudo-labels", 2, 2, "refresh 0"), 1.0)
        for step in range(1, pr.cotrain_steps + 1):
            add(_progress("cotrain", step, pr.cotrain_steps, loss=0.5), 0.5)
        add(EventData(kind="metrics", phase="cotrain", step=r, total=2, metrics={"round": float(r)}), 0.1)
        assert h.round == r + 1
    assert all(b >= a for a, b in itertools.pairwise(seen))  # never goes back
    assert seen[-1] == pytest.approx(1.0)
    assert h.eta_text().startswith("round 2/2 · cotrain 4/4 · about 0:00 left in the whole job")
    # the measured speed: wall time since the job's start / predicted seconds done since (the process
    # start-up comes before the job's start time); a tiny job is too short to measure by default
    start = plan.phases[0].seconds
    assert h.speed() is None
    h.MIN_MEASURED = 0.0
    assert h.speed() == pytest.approx((t - 1000.0) / (plan.seconds - start))

    # queue to end, start-up included: what the next estimate uses
    @dataclass
    class Done:
        created_at: float = 990.0
        finished_at: float = 1000.0 + 2 * plan.seconds

    assert h.overall_speed(Done()) == pytest.approx((10.0 + 2 * plan.seconds) / plan.seconds)


def test_eta_uses_the_measured_speed_once_there_is_enough_work_done() -> None:
    images = [Img("a", "a", 584, 565, "corrected"), *(Img(f"u{i}", f"u{i}", 584, 565) for i in range(4))]
    plan = job_plan("cotrain", "cpu", images, warm_start=True)
    teacher = next(p for p in plan.phases if p.key == "teacher")
    h = JobHistory(plan, factor=1.0)
    h.set_started(0.0)
    start = plan.phases[0].seconds
    # the teacher phase half done, at twice the predicted time (counted from the job's start, which comes
    # after the process start-up)
    done = start + teacher.seconds / 2
    h.add(_progress("teacher", teacher.units // 2, teacher.units, loss=1.0), 2 * (done - start))
    assert h.speed() == pytest.approx(2.0, rel=1e-3)
    assert h.job_eta_seconds() == pytest.approx(2 * (plan.seconds - done), rel=1e-3)
    assert "round" not in h.eta_text() and "left in the whole job" in h.eta_text()
    # history of an earlier run (before a resume) does not count as this run's speed
    h2 = JobHistory(plan)
    h2.set_started(100.0)
    h2.add(_progress("teacher", teacher.units // 2, teacher.units, loss=1.0), 50.0)
    h2.add(_progress("teacher", teacher.units, teacher.units, loss=1.0), 100.0 + teacher.seconds / 2)
    assert h2.speed() == pytest.approx(1.0, rel=1e-3)


def test_a_real_jobs_events_walk_its_plan_to_the_end(tmp_path: Path, synth_dataset: Path) -> None:
    """A tiny cotrain job (cold start, two rounds, a validation image) run in-process: every progress
    event lands in a phase of the plan, and the history ends at 100 %."""
    from napari_diffseg.backend.jobs import execute_job, start_job
    from napari_diffseg.data.io import read_mask
    from napari_diffseg.project import Project

    root = tmp_path / "proj"
    with Project.create(root) as p:
        paths = sorted((synth_dataset / "images").glob("train_*.png"))[:4]
        p.import_files(paths)
        p.import_files([sorted((synth_dataset / "images").glob("test_*.png"))[0]], split="val")
        for path in (paths[0], sorted((synth_dataset / "images").glob("test_*.png"))[0]):
            p.save_annotation(
                path.stem, read_mask(synth_dataset / "masks" / path.name), kind="ground_truth", replaces=None
            )
        records = [Img(r.id, r.name, r.height, r.width, r.state, r.split) for r in p.images()]
        job = start_job(p, "cotrain", {"preset": "tiny", "rounds": 2})
    plan = job_plan("cotrain", "tiny", records, warm_start=False, rounds=2)
    assert "val-pseudo-labels" in [ph.key for ph in plan.phases]
    history = JobHistory(plan)
    placed_before = []

    def report(ev) -> None:
        data = EventData.model_validate(ev.to_dict())
        before = dict(history._done)
        history.add(data, 0.0)
        if data.kind == "progress" and data.total:
            placed_before.append(history._done != before or data.step == 0)

    assert execute_job(root, job, report=report) == "done"
    assert placed_before and all(placed_before)  # every progress event moved its phase of the plan
    assert history.done_seconds() == pytest.approx(plan.seconds)  # all of it, the validation phases too
    assert np.isclose(history.fraction(), 1.0)


def test_one_loop_key_in_two_phases_is_two_losses() -> None:
    """Stage B's ``loss`` is the teacher's (labelled masks); co-training's ``loss`` is the total: the plot
    groups them apart, and the teacher's labelled-mask loss continues as co-training's ``teacher_sup``."""
    from napari_diffseg.review import loss_name

    h = JobHistory()
    h.add(_progress("teacher", 1, 2, loss=2.0))
    h.add(_progress("teacher", 2, 2, loss=1.5))
    h.add(_progress("cotrain", 1, 3, loss=3.0, sup=1.0, teacher_sup=1.2, gate=1.0, val_dice=0.5))
    assert set(h.by_phase) == {
        ("teacher", "loss"),
        ("cotrain", "loss"),
        ("cotrain", "sup"),
        ("cotrain", "teacher_sup"),
    }
    named = {key: loss_name(*key) for key in h.by_phase}
    assert named[("teacher", "loss")] == named[("cotrain", "teacher_sup")] == ("teacher", "labelled masks")
    assert named[("cotrain", "loss")][0] == "total" and named[("cotrain", "sup")] == (
        "students",
        "labelled images",
    )
    assert h.by_phase[("teacher", "loss")][1][:2] == [2.0, 1.5]


def test_the_suggested_job_and_the_cost_line() -> None:
    from napari_diffseg.review import suggested_kind

    fresh = [Img("a", "a", 256, 256), Img("b", "b", 256, 256)]
    annotated = [Img("a", "a", 256, 256, "corrected"), Img("b", "b", 256, 256)]
    assert suggested_kind(fresh, []) == "pretrain"  # nothing to learn from but the images
    assert suggested_kind(annotated, []) == "cotrain"  # an annotation: co-train (Stage A would not help)
    assert suggested_kind(fresh, ["m"]) == "propose"
    assert suggested_kind(annotated, ["m"]) == "cotrain"

    plan = job_plan("pretrain", "cpu", fresh)
    text = cost_text(plan, fresh, has_model=False, speed=None)
    assert (
        text.startswith(f"about {format_seconds(plan.seconds)} for 2 image(s) of 256×256") and "quiet" in text
    )
    text = cost_text(plan, fresh, has_model=False, speed=2.5)
    assert f"about {format_seconds(2.5 * plan.seconds)}" in text and "2.5× the reference" in text
    assert "last job" in text
    # pretraining: when a first proposal will be on screen (pretraining + one proposal of the largest image)
    from napari_diffseg.review import first_proposal_plan

    mixed = [Img("s", "s", 100, 100), Img("L", "L", 300, 200), Img("t", "t", 900, 900, split="test")]
    first = first_proposal_plan(get_preset("cpu"), mixed)
    assert first is not None and first.kind == "propose" and first.images == 1 and first.sizes == "200×300"
    assert "(S=1," in first.phases[-1].label  # the label-free model's proposal: one step (below)
    text = cost_text(job_plan("pretrain", "cpu", mixed), mixed, False, 2.0, "start", first_proposal=first)
    total = 2.0 * (job_plan("pretrain", "cpu", mixed).seconds + first.seconds)
    assert f"Then the first proposal (200×300) about {format_seconds(2.0 * first.seconds)}" in text
    assert f"one on screen about {format_seconds(total)} after Start" in text
    assert first_proposal_plan(get_preset("cpu"), [Img("a", "a", 9, 9, "ground_truth")]) is None
    text = cost_text(plan, fresh, has_model=False, speed=0.5, source="start")
    assert f"about {format_seconds(0.5 * plan.seconds)}" in text and "measured when it started (0.5×" in text
    # what the backend would refuse is said instead of a time
    assert "will be refused" in cost_text(job_plan("cotrain", "cpu", fresh), fresh, True, None)
    assert "no model to propose with" in cost_text(job_plan("propose", "cpu", fresh), fresh, False, None)
    assert "no images" in cost_text(job_plan("pretrain", "cpu", []), [], False, None)
    assert "connect" in cost_text(None, [], False, None)


def test_a_label_free_models_proposals_cost_one_step_and_one_round() -> None:
    """The propose job gives a label-free model one DDIM step and one round unless asked
    (``backend/jobs.py``); its plan counts the same, so the cost line does not promise ten times the wait."""
    from napari_diffseg.base.contracts import Model
    from napari_diffseg.base.cost import is_label_free, propose_sampling, sampling_evaluations

    cpu = get_preset("cpu")
    assert propose_sampling(cpu) == (cpu.ddim_steps, cpu.samples, cpu.rounds)
    assert propose_sampling(cpu, label_free=True) == (1, cpu.samples, 1)
    assert propose_sampling(cpu, label_free=True, steps=3, rounds=2) == (3, cpu.samples, 2)
    imgs = [Img("a", "a", 256, 256), Img("b", "b", 256, 256)]
    trained = job_plan("propose", cpu, imgs)
    free = job_plan("propose", cpu, imgs, label_free=True)
    start = trained.phases[0].seconds
    ratio = (trained.seconds - start) / (free.seconds - start)
    assert cpu.ddim_steps > 1 and ratio == pytest.approx(
        sampling_evaluations(cpu.ddim_steps, cpu.samples, cpu.rounds)
        / sampling_evaluations(1, cpu.samples, 1)
    )
    assert "(S=1, E=" in free.phases[-1].label
    model = {"id": "m", "round": 0, "method": "diffseg", "active": True, "created_at": 0.0}
    assert is_label_free(Model(**model, metrics={"stage": "pretrain"}))
    assert not is_label_free(Model(**model, metrics={"val_dice": 0.8})) and not is_label_free(None)


def test_the_pretrain_jobs_own_length() -> None:
    """The `cpu` preset's label-free `pretrain` job runs `pretrain_job_steps` (500), a cold-start Stage A
    and the sweeps `pretrain_steps` (150); an override of `pretrain_steps` alone sets both; the plan
    counts what the job runs."""
    cpu = get_preset("cpu")
    assert (cpu.pretrain_steps, cpu.label_free_steps()) == (150, 500)
    assert get_preset("tiny").label_free_steps() == get_preset("tiny").pretrain_steps  # 0: the same
    asked = cpu.parse_overrides({"pretrain_steps": 40})
    assert asked.label_free_steps() == 40
    assert cpu.parse_overrides({"pretrain_steps": 40, "pretrain_job_steps": 70}).label_free_steps() == 70
    imgs = [Img("a", "a", 256, 256), Img("b", "b", 256, 256)]
    plan = job_plan("pretrain", cpu, imgs)
    assert plan.phases[1].key == "pretrain" and plan.phases[1].units == 500
    assert plan.phases[1].seconds == pytest.approx(500 * STEP_SECONDS["cpu"]["pretrain"])
    assert job_plan("pretrain", asked, imgs).phases[1].units == 40
    # a plan cannot see pixels: it says what a project without a dark-field image gets (150 steps)
    short = format_seconds(150 * STEP_SECONDS["cpu"]["pretrain"])
    assert plan.notes == (
        f"at most: without a dark-field (fluorescence) image it runs 150 steps, not 500, and pretraining "
        f"takes about {short}",
    )
    assert job_plan("pretrain", asked, imgs).notes == ()  # one length: nothing to say
    assert "quiet CPU core; a busy machine is slower" in cost_text(plan, imgs, has_model=False, speed=None)
    assert cost_text(plan, imgs, has_model=False, speed=None).endswith(
        f"). At most: without a dark-field (fluorescence) image it runs 150 steps, not 500, and pretraining "
        f"takes about {short}."
    )
