"""What `diffseg experiment` reports about the teacher (issue 14): Stage A against the trivial masks, and the
teacher's S / R / E figures on the validation images, each read off the right proposal and, where a dataset
has a field of view, inside it. The sampler is replaced by a scripted one so that every figure is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_diffseg import experiment as exp
from napari_diffseg.base.presets import get_preset
from napari_diffseg.core.diffusion import Proposal, SamplerConfig
from napari_diffseg.core.models import ModelBundle, ModelSpec

H = W = 16


def _bundle() -> ModelBundle:
    pr = get_preset("tiny")
    return ModelBundle(
        ModelSpec("diffseg", 1, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim), seed=0
    )


def _truth() -> np.ndarray:
    y = np.zeros((H, W), np.int64)
    y[4:12, 2:10] = 1  # 64 foreground pixels, all in the left 10 columns
    return y


def _proposal(mask: np.ndarray, unc: float, rounds: list[np.ndarray] | None = None) -> Proposal:
    m = torch.from_numpy(mask)[None]
    probs = F.one_hot(m, 2).permute(0, 3, 1, 2).float()
    return Proposal(
        probs=probs,
        uncertainty=torch.full((1, H, W), unc),
        variance=torch.zeros(1, H, W),
        round_masks=[torch.from_numpy(r)[None] for r in (rounds or [mask])],
    )


def _flip_right(y: np.ndarray, n: int) -> np.ndarray:
    """``y`` with ``n`` background pixels of its right part (columns 12..) made foreground."""
    out = y.copy()
    rows, cols = np.nonzero(np.ones((H, W - 12), bool))
    out[rows[:n], cols[:n] + 12] = 1
    return out


def test_teacher_report_pairs_each_uncertainty_with_the_error_of_the_same_proposal(monkeypatch) -> None:
    pr = get_preset("tiny")  # S = 2, E = 2, R = 1
    y = _truth()
    n = 6
    calls: list[SamplerConfig] = []

    def scripted(net, diff, x, cfg, gen, **kw):
        calls.append(cfg)
        j = int(x[0, 0, 0, 0])  # the image's index, written in its first pixel
        if cfg.rounds == 3:  # the chained-rounds run (R = 1..3): its uncertainty runs against the error
            rounds = [_flip_right(y, 3 * j), _flip_right(y, 2 * j), _flip_right(y, j)]
            return _proposal(rounds[-1], unc=(n - j) / 10, rounds=rounds)
        if cfg.steps == 1:  # S = 1
            return _proposal(_flip_right(y, 0), unc=0.0)
        if cfg.samples == 1:  # E = 1: an uncertainty that ranks the errors backwards
            return _proposal(_flip_right(y, 4 * j), unc=(n - j) / 10)
        assert (cfg.steps, cfg.samples, cfg.rounds) == (pr.ddim_steps, pr.samples, pr.rounds)
        return _proposal(_flip_right(y, 4 * j), unc=j / 10)  # E > 1: more uncertain, more wrong

    monkeypatch.setattr(exp, "propose", scripted)
    images = [torch.full((1, H, W), float(j)) for j in range(n)]
    rep = exp.teacher_report(_bundle(), images, [y] * n, pr, seed=0)
    assert len(calls) == 4 * n
    rho = rep["uncertainty_vs_error_spearman"]
    assert rho[f"E={pr.samples}"] == pytest.approx(1.0) and rho["E=1"] == pytest.approx(-1.0)
    assert rep["dice_s1"] == 1.0 and rep["rounds"] == pr.rounds and rep["samples"] == pr.samples
    # round r's Dice is the mean over the images of that round's mask
    for r, per in enumerate((3, 2, 1)):
        want = np.mean([2 * 64 / (2 * 64 + per * j) for j in range(n)])
        assert rep["dice_per_round"][r] == pytest.approx(want)
    assert rep["dice_per_round"][0] < rep["dice_per_round"][1] < rep["dice_per_round"][2]

    # inside a field of view that leaves out the right part, every proposal is perfect
    fov = np.zeros((H, W), bool)
    fov[:, :12] = True
    inside = exp.teacher_report(_bundle(), images, [y] * n, pr, seed=0, regions=[fov] * n)
    assert inside["dice_per_round"] == [1.0, 1.0, 1.0]
    assert np.isnan(inside["uncertainty_vs_error_spearman"]["E=1"])  # no error to rank


def test_label_free_report_against_trivial_masks(monkeypatch) -> None:
    pr = get_preset("tiny")
    y = _truth()
    x = torch.from_numpy(y).float()[None] * 2 - 1  # the object is the bright part: Otsu finds it
    allfg = 2 * 64 / (64 + H * W)
    fov = np.zeros((H, W), bool)
    fov[:, :12] = True

    # a teacher whose classes are the truth's, swapped: best-permutation Dice 1
    monkeypatch.setattr(exp, "propose", lambda *a, **k: _proposal(1 - y, 0.0))
    lf = exp.label_free_report(_bundle(), [x], [y], pr)
    assert lf["teacher_dice"] == 1.0 and lf["otsu_dice"] == 1.0
    assert lf["all_foreground_dice"] == pytest.approx(allfg)
    # a constant teacher (a mask pathway that learned nothing) is the all-foreground mask: no gain
    monkeypatch.setattr(exp, "propose", lambda *a, **k: _proposal(np.zeros_like(y), 0.0))
    lf = exp.label_free_report(_bundle(), [x], [y], pr)
    assert lf["teacher_dice"] == pytest.approx(allfg) and lf["teacher_minus_best_trivial"] < -0.5
    # inside a field of view: the pixels outside take part in neither relabelling
    lf = exp.label_free_report(_bundle(), [x], [y], pr, regions=[fov])
    assert lf["all_foreground_dice"] == pytest.approx(2 * 64 / (64 + 12 * H))
    assert lf["teacher_dice"] == lf["all_foreground_dice"] and lf["otsu_dice"] == 1.0


def test_stage_a_off_still_reports_label_free_against_trivial_masks(synth_dataset) -> None:
    """The `diffseg-noA` ablation (pretrain_steps 0) keeps the contract: `label_free` of the untrained
    teacher beside Otsu and all-foreground, and the override in the result and its resolved preset; the
    default trains exactly as the ablation does, and `cold_start_pretrain` puts Stage A back."""

    def run(**overrides: object) -> dict:
        return exp.run_experiment(
            synth_dataset, labeled_fraction=0.2, method="diffseg", preset="tiny", seed=0, overrides=overrides
        )

    r = run(pretrain_steps=0)
    assert r["overrides"] == {"pretrain_steps": 0} and r["provenance"]["preset"]["pretrain_steps"] == 0
    lf = r["label_free"]
    assert set(lf) >= {"teacher_dice", "otsu_dice", "all_foreground_dice", "teacher_minus_best_trivial"}
    assert all(0.0 < lf[k] <= 1.0 for k in ("otsu_dice", "all_foreground_dice")) and lf["n_images"] == 3
    assert lf["stage_a"] is False
    # the default is Stage A off: the same training as the ablation, to the last bit of the test score
    default = run()
    assert default["provenance"]["preset"]["cold_start_pretrain"] is False
    assert default["test"]["dice_mean"] == r["test"]["dice_mean"] and default["label_free"] == lf
    # the paper's recipe, Stage A first: the teacher's label-free masks are those of a trained teacher
    with_a = run(cold_start_pretrain=True)
    assert with_a["label_free"]["stage_a"] is True
    assert with_a["label_free"]["teacher_dice"] != lf["teacher_dice"]


def test_provenance_records_the_commit_a_run_started_from(monkeypatch) -> None:
    """A run that outlives a commit records the code it ran (the commit at its start), and the commit HEAD
    had moved to by its end beside it; a run that did not see HEAD move records no commit_at_end."""
    heads = iter(["aaa111", "aaa111", "bbb222"])
    monkeypatch.setattr(exp, "_git", lambda *a: next(heads) if a[0] == "rev-parse" else "")
    started = exp.git_state()
    assert started == {"commit": "aaa111", "dirty": False}
    same = exp.provenance(get_preset("tiny"), "cpu", started=started)
    assert same["commit"] == "aaa111" and "commit_at_end" not in same
    moved = exp.provenance(get_preset("tiny"), "cpu", started=started)
    assert (moved["commit"], moved["commit_at_end"], moved["dirty"]) == ("aaa111", "bbb222", False)
