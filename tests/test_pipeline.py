"""One pipeline, one preprocessing: ``run_stages`` is the stage sequence, ``preprocess`` the input, and the
torch-free base holds the shared file, format and label helpers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_diffseg.base.errors import DataError
from napari_diffseg.base.events import Event
from napari_diffseg.base.fileio import atomic_write, atomic_write_bytes
from napari_diffseg.base.formats import tiff_bytes
from napari_diffseg.base.labels import edit_dice, edit_stats, pixels_changed
from napari_diffseg.base.preprocessing import match_channels, normalize_image
from napari_diffseg.base.presets import get_preset
from napari_diffseg.base.progress import EventBars
from napari_diffseg.core import metrics
from napari_diffseg.core.models import ModelBundle, ModelSpec, preprocess
from napari_diffseg.core.pipeline import run_stages
from napari_diffseg.core.training import TrainData, cotrain, pretrain_teacher, train_baseline, train_teacher

CPU = torch.device("cpu")


def _data(seed: int = 0) -> TrainData:
    g = torch.Generator().manual_seed(seed)
    imgs, masks = [], []
    for _ in range(4):
        y = torch.zeros(48, 48, dtype=torch.long)
        cy, cx = torch.randint(12, 36, (2,), generator=g).tolist()
        y[cy - 8 : cy + 8, cx - 8 : cx + 8] = 1
        imgs.append(y.float()[None].repeat(3, 1, 1) * 2 - 1 + 0.3 * torch.randn((3, 48, 48), generator=g))
        masks.append(y)
    return TrainData(imgs[:2], masks[:2], unlabeled_images=imgs[2:])


def _bundle(method: str) -> ModelBundle:
    pr = get_preset("tiny")
    return ModelBundle(ModelSpec(method, 3, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim), seed=0)


def _weights(b: ModelBundle) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.clone() for n, net in b.nets.items() for k, v in net.state_dict().items()}


@pytest.mark.parametrize(("method", "stage_a"), [("diffseg", False), ("diffseg", True), ("cps", False)])
def test_run_stages_is_the_stage_sequence_bit_for_bit(method: str, stage_a: bool) -> None:
    """Stage A runs on a cold start only when the preset asks for it (``cold_start_pretrain``, off by
    default: issue 14's ablation), then Stages B and C; a baseline is its one loop."""
    pr = get_preset("tiny").with_overrides(cold_start_pretrain=stage_a)
    by_hand = _bundle(method)
    g = torch.Generator().manual_seed(0)
    if method == "diffseg":
        if stage_a:
            list(pretrain_teacher(by_hand, _data().all_images, pr, generator=g, device=CPU))
        list(train_teacher(by_hand, _data(), pr, generator=g, device=CPU))
        list(cotrain(by_hand, _data(), pr, generator=g, seed=0, device=CPU))
    else:
        list(train_baseline(by_hand, _data(), pr, generator=g, device=CPU))
    piped = _bundle(method)
    events = list(
        run_stages(piped, _data(), pr, generator=torch.Generator().manual_seed(0), seed=0, device=CPU)
    )
    a, b = _weights(by_hand), _weights(piped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    phases = {e.phase for e in events if e.kind == "done"}
    stages = {"pretrain", "teacher", "cotrain"} if stage_a else {"teacher", "cotrain"}
    assert phases == (stages if method == "diffseg" else {"cps"})
    assert not get_preset("tiny").cold_start_pretrain and not get_preset("cpu").cold_start_pretrain


def test_run_stages_warm_start_skips_pretraining_and_checkpoints_each_stage(tmp_path: Path) -> None:
    pr = get_preset("tiny")
    called = []
    ck = {"pretrain": tmp_path / "a.safetensors", "teacher": tmp_path / "b.safetensors"}
    gen = torch.Generator().manual_seed(0)
    events = list(
        run_stages(
            _bundle("diffseg"),
            _data(),
            pr,
            generator=gen,
            seed=0,
            device=CPU,
            checkpoints=ck,
            cold_start=False,
            after_pretrain=lambda: called.append(True),
        )
    )
    assert "pretrain" not in {e.phase for e in events} and not called
    assert not ck["pretrain"].exists() and ck["teacher"].exists()
    for stage_a in (False, True):  # a cold start scores the teacher before Stage B, with or without Stage A
        events = list(
            run_stages(
                _bundle("diffseg"),
                _data(),
                pr.with_overrides(cold_start_pretrain=stage_a),
                generator=gen,
                seed=0,
                device=CPU,
                after_pretrain=lambda: called.append(1),
            )
        )
        assert ("pretrain" in {e.phase for e in events}) is stage_a
    assert called == [1, 1]


def test_preprocess_is_normalisation_after_channel_matching() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 4000, (1, 20, 24)).astype(np.float32)
    x = preprocess(grey, 3)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (3, 20, 24)
    assert np.array_equal(x.numpy(), normalize_image(match_channels(grey, 3)))
    bundle = _bundle("supervised")
    assert torch.equal(bundle.preprocess(grey), x)
    with pytest.raises(DataError):
        preprocess(np.zeros((2, 8, 8), np.float32), 3)


def test_base_labels_agree_with_core_metrics() -> None:
    rng = np.random.default_rng(1)
    for k in (2, 4):
        a, b = rng.integers(0, k, (2, 40, 40))
        assert edit_dice(a, b) == pytest.approx(metrics.edit_dice(a, b), abs=0)
        assert pixels_changed(a, b) == metrics.pixels_changed(a, b) == int((a != b).sum())
        assert edit_stats(a, b) == (edit_dice(a, b), pixels_changed(a, b))
    empty = np.zeros((8, 8), np.uint8)
    assert edit_stats(empty, empty) == (1.0, 0)


def test_atomic_writes_replace_whole_files_and_leave_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.json"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"one"
    atomic_write(target, lambda tmp: tmp.write_text(json.dumps({"a": 1})))
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]


def test_tiff_bytes_round_trip() -> None:
    arr = np.arange(2 * 9 * 11, dtype=np.uint16).reshape(2, 9, 11)
    data = tiff_bytes(arr)
    assert data == tiff_bytes(arr.copy())  # deterministic
    back = tifffile.imread(io.BytesIO(data))
    assert back.dtype == arr.dtype and np.array_equal(back, arr)


def test_event_bars_take_events_and_their_dicts(capsys: pytest.CaptureFixture[str]) -> None:
    bars = EventBars("job", logs=True)
    bars(Event("log", "cotrain", message="hello"))
    bars(Event("progress", "teacher", 1, 3, losses={"loss": 0.5}))
    bars(Event("progress", "teacher", 3, 3).to_dict())
    bars({"kind": "progress", "phase": "cotrain", "step": 1, "total": 0})  # no total: no bar
    assert bars.phase == "teacher"
    bars.close()
    err = capsys.readouterr().err
    assert "job: hello" in err and "job · teacher" in err
    quiet = EventBars(enabled=False)
    quiet(Event("progress", "teacher", 1, 3))
    assert quiet.bar is None and not capsys.readouterr().err
