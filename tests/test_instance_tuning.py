"""A model's watershed parameters, chosen on validation images (issue 13): the parameters themselves
(checked, stored in a model's config), the tuner on hand-made probabilities where the defaults merge
touching objects or split a ragged one, and the parameters travelling with the model — into
``experiment``'s test figures and saved model, ``predict`` / ``evaluate``, a project's co-training round
and the objects its proposals show."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_diffseg.base.errors import DataError
from napari_diffseg.base.task import make_task
from napari_diffseg.core.instance_tuning import MIN_OBJECTS, mean_ap_50, tune_watershed
from napari_diffseg.core.instances import Watershed, probs_to_instances, stack_instances
from napari_diffseg.project import Project


def _pairs(n_pairs: int, bridge: float = 0.7, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(3, H, W)`` of ``n_pairs`` pairs of touching squares whose interiors a bridge of
    interior probability ``bridge`` joins (a short-budget network's typical merge), and the true ids."""
    ids = np.zeros((size, size), np.int64)
    interior = np.zeros((size, size), np.float32)
    boundary = np.zeros((size, size), np.float32)
    for k in range(n_pairs):
        y = 4 + 14 * k
        for j, x in enumerate((4, 16)):
            ids[y : y + 10, x : x + 10] = 2 * k + j + 1
            boundary[y : y + 10, x : x + 10] = 0.9
            interior[y + 2 : y + 8, x + 2 : x + 8] = 0.95
            boundary[y + 2 : y + 8, x + 2 : x + 8] = 0.04
        interior[y + 4 : y + 6, 12:18] = bridge  # across the two rims
        boundary[y + 4 : y + 6, 12:18] = 0.25
    background = np.clip(1.0 - interior - boundary, 0.0, 1.0)
    return np.stack([background, interior, boundary]), ids


def _ragged(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One large object whose confident interior comes in 9 separate blobs (a gland's ragged interior):
    the defaults seed it 9 times; smoothing (or a larger minimum seed) makes it one."""
    ids = np.zeros((size, size), np.int64)
    ids[8:56, 8:56] = 1
    interior = np.zeros((size, size), np.float32)
    interior[8:56, 8:56] = 0.3  # below every seed threshold of the grid
    for cy in (16, 32, 48):
        for cx in (16, 32, 48):
            interior[cy - 3 : cy + 3, cx - 3 : cx + 3] = 0.9
    boundary = np.where(ids > 0, 0.5, 0.0).astype(np.float32)
    boundary[ids > 0] = np.clip(1.0 - interior[ids > 0], 0, 1) * 0.9
    background = np.clip(1.0 - interior - boundary, 0.0, 1.0)
    return np.stack([background, interior, boundary]), ids


# ------------------------------------------------------------------------------------------ parameters


def test_watershed_parameters_are_checked_and_round_trip() -> None:
    w = Watershed(threshold=0.4, seed_threshold=0.8, seed_sigma=2.0, min_seed_size=48, min_size=16)
    assert Watershed.from_config({"watershed": w.to_config()}) == w
    assert Watershed.from_config({}) == Watershed() == Watershed.from_config(None)
    assert "seeds > 0.8 after smoothing σ = 2 px" in str(w)
    for bad in ({"threshold": 1.0}, {"seed_threshold": 0}, {"seed_sigma": -1}, {"min_seed_size": 0}):
        with pytest.raises(DataError, match="watershed"):
            Watershed(**bad)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="unknown watershed parameter"):
        Watershed.from_config({"watershed": {"thresh": 0.5}})
    # the old keyword still sets both thresholds
    probs, _ = _pairs(1)
    assert np.array_equal(
        probs_to_instances(probs, threshold=0.8), probs_to_instances(probs, Watershed(0.8, 0.8))
    )


# ------------------------------------------------------------------------------------------ the tuner


def test_the_tuner_splits_what_the_defaults_merge() -> None:
    images = [_pairs(4) for _ in range(3)]  # 24 true objects
    probs, truths = [p for p, _ in images], [t for _, t in images]
    assert int(probs_to_instances(probs[0]).max()) == 4  # the defaults: each pair one object
    tuning = tune_watershed(probs, truths)
    assert tuning.tuned and tuning.objects == 24 and tuning.images == 3
    assert tuning.ap_50_start == 0.0 and tuning.ap_50 == 1.0
    assert tuning.params.seed_threshold >= 0.7  # the bridge (0.7) is not above it: it drops out
    assert int(probs_to_instances(probs[0], tuning.params).max()) == 8
    assert tuning.runs < 60  # a coordinate ascent, not the whole grid
    assert mean_ap_50(probs, truths, tuning.params) == 1.0
    # it only moves for a gain: on probabilities the defaults already get right nothing changes
    clean = [_pairs(4, bridge=0.0) for _ in range(3)]
    same = tune_watershed([p for p, _ in clean], [t for _, t in clean])
    assert same.params == Watershed() and same.ap_50 == same.ap_50_start == 1.0


def test_the_tuner_joins_what_the_defaults_split() -> None:
    images = [_ragged() for _ in range(MIN_OBJECTS)]
    probs, truths = [p for p, _ in images], [t for _, t in images]
    assert int(probs_to_instances(probs[0]).max()) > 1
    tuning = tune_watershed(probs, truths)
    assert tuning.ap_50 == 1.0 > tuning.ap_50_start
    assert tuning.params != Watershed()  # fewer seeds: smoothed, larger, or only the surest
    assert int(probs_to_instances(probs[0], tuning.params).max()) == 1


def test_too_few_objects_keep_the_defaults_and_stacks_tune_in_3d() -> None:
    p, t = _pairs(2)  # 4 objects: too few to choose from
    few = tune_watershed([p], [t])
    assert not few.tuned and few.params == Watershed() and few.runs == 1 and few.objects == 4
    with pytest.raises(DataError, match="2 probability maps for 1"):
        tune_watershed([p, p], [t])
    # a stack's (Z, K, H, W) probabilities are post-processed in 3D, with the same parameters
    probs, ids = _pairs(4)
    stack_p, stack_t = np.stack([probs] * 3), np.stack([ids] * 3)
    tuning = tune_watershed([stack_p] * 3, [stack_t] * 3)
    assert tuning.ap_50 == 1.0
    assert int(stack_instances(stack_p, tuning.params).max()) == 8


# ------------------------------------------------------------------------------------------ the model


def test_experiment_tunes_on_validation_and_the_model_keeps_it(tmp_path: Path) -> None:
    from napari_diffseg.data.synthetic import make_sample_dataset
    from napari_diffseg.experiment import evaluate_instances_folder, run_experiment
    from napari_diffseg.predict import load_model, predict_image

    ds = make_sample_dataset(
        tmp_path / "ds", n_train=10, n_test=2, size=(64, 64), kind="nuclei", instances=True
    )
    common = dict(labeled_fraction=1.0, method="supervised", preset="tiny", device="cpu", task="instances")
    result = run_experiment(ds, model_out=tmp_path / "m", val_fraction=0.3, **common)  # type: ignore[arg-type]
    tuning = result["watershed"]
    assert tuning["images"] == 3 and set(tuning) >= {"params", "ap_50", "ap_50_start", "objects", "tuned"}
    assert tuning["ap_50"] >= tuning["ap_50_start"]  # never worse on the images it chose on
    params = Watershed(**tuning["params"])
    config = json.loads((tmp_path / "m" / "config.json").read_text())["config"]
    assert Watershed.from_config(config) == params
    if params != Watershed():  # the defaults' figures beside the tuned ones
        assert 0.0 <= result["test"]["ap_50_default_watershed"] <= 1.0
    # predict and evaluate use the model's own parameters
    bundle, cfg = load_model(tmp_path / "m", "cpu")
    from napari_diffseg.data.dataset import DatasetFolder

    folder = DatasetFolder(ds)
    probs = predict_image(bundle, cfg, folder.load_image(folder.test_ids[0]))
    from napari_diffseg.predict import _labels

    assert np.array_equal(_labels(bundle, cfg, probs)[0], probs_to_instances(probs, params))
    scored = evaluate_instances_folder(tmp_path / "m", ds, device="cpu")
    assert scored["watershed"] == params.to_config()
    assert scored["ap_50"] == pytest.approx(result["test"]["ap_50"], abs=1e-6)
    # --watershed default keeps the fixed defaults: nothing tuned, nothing stored
    plain = run_experiment(ds, model_out=tmp_path / "d", val_fraction=0.3, watershed="default", **common)  # type: ignore[arg-type]
    assert "watershed" not in plain and "ap_50_default_watershed" not in plain["test"]
    assert "watershed" not in json.loads((tmp_path / "d" / "config.json").read_text())["config"]
    with pytest.raises(Exception, match="'tuned' or 'default'"):
        run_experiment(ds, watershed="best", **common)  # type: ignore[arg-type]


def test_a_project_model_keeps_its_parameters_and_its_proposals_use_them(tmp_path: Path) -> None:
    from napari_diffseg.backend import jobs as jobs_mod
    from napari_diffseg.base.presets import get_preset

    probs, _ids = _pairs(4)
    with Project.create(tmp_path / "p", task=make_task("instances")) as proj:
        proj.import_array(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8), "img")
        preset = get_preset("tiny")
        bundle = jobs_mod._new_bundle(proj, 1, preset, 0, torch.device("cpu"))
        split = Watershed(seed_threshold=0.8)
        jobs_mod._save_model(proj, bundle, "tuned", round=1, preset=preset, metrics={}, watershed=split)
        jobs_mod._save_model(proj, bundle, "plain", round=1, preset=preset, metrics={})
        assert proj.model_watershed("tuned") == split and proj.model_watershed("plain") == Watershed()
        unc = np.zeros((64, 64), np.float32)
        tuned_pid = proj.save_proposal("tuned", "img", probs, unc)
        plain_pid = proj.save_proposal("plain", "img", probs, unc)
        # the objects the annotator is shown: each model's own watershed
        assert int(proj._proposal_instances(tuned_pid)[1].max()) == 8
        assert int(proj._proposal_instances(plain_pid)[1].max()) == 4
        # a model folder edited by hand into nonsense falls back to the defaults instead of failing
        cfg_file = proj.model_dir("tuned") / "config.json"
        header = json.loads(cfg_file.read_text())
        header["config"]["watershed"] = {"threshold": 7}
        cfg_file.write_text(json.dumps(header))
        assert proj.model_watershed("tuned") == Watershed()
