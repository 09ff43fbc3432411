"""Normalisation that survives sparse and empty fields (issue 12, item 5).

A model's input statistics are computed once over its training images (pooled per-channel percentiles),
stored with the model and applied unchanged to every image it sees; a model saved before they existed
falls back to the old per-image normalisation, bit for bit. The real sparse-field case is measured in
``benchmarks/sparse_field.py``; a quick version of it runs here when ``../shared`` is present.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_diffseg.base.errors import ConfigError, DataError
from napari_diffseg.base.preprocessing import (
    NORM_CLIP,
    Normalization,
    dataset_statistics,
    match_channels,
    normalize_image,
)
from napari_diffseg.base.presets import get_preset
from napari_diffseg.core.models import ModelBundle, ModelSpec, load_bundle, preprocess, save_bundle

BACKGROUND, SD, NUCLEUS = 13.0, 0.8, 110.0


def _field(n_blobs: int, seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like (1, H, W) uint8 field: camera noise around 13 and ``n_blobs`` bright discs."""
    rng = np.random.default_rng(seed)
    img = rng.normal(BACKGROUND, SD, (size, size))
    mask = np.zeros((size, size), bool)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n_blobs):
        cy, cx = rng.integers(8, size - 8, 2)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
    img[mask] = rng.normal(NUCLEUS, 10.0, int(mask.sum()))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)[None], mask


def _dense_stats() -> Normalization:
    return dataset_statistics([_field(25, s)[0] for s in range(6)], 1)


def test_statistics_are_pooled_percentiles_per_channel() -> None:
    imgs = [_field(25, s)[0] for s in range(6)]
    norm = dataset_statistics(imgs, 1)
    pooled = np.concatenate([i.reshape(-1) for i in imgs]).astype(np.float64)
    assert norm.channels == 1 and norm.n_images == 6 and norm.percentiles == (1.0, 99.8)
    assert norm.low[0] == pytest.approx(np.percentile(pooled, 1.0))
    assert norm.high[0] == pytest.approx(np.percentile(pooled, 99.8))
    assert BACKGROUND - 4 <= norm.low[0] <= BACKGROUND and norm.high[0] > 100
    # grey images for a 3-channel model: the same statistics thrice; large images are sampled, seeded
    rgb = dataset_statistics(imgs, 3)
    assert rgb.low == norm.low * 3 and rgb.high == norm.high * 3
    big = [np.random.default_rng(s).integers(0, 4096, (2, 300, 300)).astype(np.uint16) for s in range(3)]
    a = dataset_statistics(big, 2, pixels_per_image=1000)
    assert a == dataset_statistics(big, 2, pixels_per_image=1000) and a.channels == 2
    assert a.low[0] == pytest.approx(4096 * 0.01, abs=60) and a.high[1] == pytest.approx(4096 * 0.998, abs=60)


def test_a_dark_empty_field_stays_dark_and_a_sparse_one_keeps_its_nuclei() -> None:
    norm = _dense_stats()
    empty, _ = _field(0, 100)
    sparse, truth = _field(2, 101)
    dense, dense_truth = _field(25, 102)
    # the old per-image scheme stretches camera noise to the full range: the empty field looks like texture
    old = normalize_image(empty)
    assert old.std() == pytest.approx(1.0, abs=0.05) and old.max() - old.min() > 4
    # the model's statistics keep it dark: noise of a fraction of a grey level stays a few hundredths
    new = normalize_image(empty, norm)
    assert np.abs(new).max() < 0.1 and new.std() < 0.02
    # a nucleus is as bright in a sparse field as in a dense one (the same mapping, whatever the content)
    x_sparse, x_dense = normalize_image(sparse, norm)[0], normalize_image(dense, norm)[0]
    assert x_sparse[truth].mean() == pytest.approx(x_dense[dense_truth].mean(), abs=0.1)
    assert x_sparse[truth].mean() > 0.7 and np.abs(x_sparse[~truth]).max() < 0.1
    # ... and the mapping is the same on any crop: a tile is normalised exactly as the whole image
    np.testing.assert_array_equal(
        normalize_image(sparse[:, 10:50, 20:90], norm), x_sparse[None, 10:50, 20:90]
    )


def test_mapping_clip_constant_channel_and_bad_input() -> None:
    norm = Normalization((10.0, 5.0), (110.0, 5.0))  # channel 2 was constant in training
    img = np.array([[[10.0, 60.0, 110.0, -1000.0, 1e6]], [[1.0, 5.0, 9.0, 5.0, 5.0]]], np.float32)
    out = normalize_image(img, norm)
    np.testing.assert_allclose(out[0, 0], [0.0, 0.5, 1.0, NORM_CLIP[0], NORM_CLIP[1]])
    assert out.dtype == np.float32 and not out[1].any()
    with pytest.raises(DataError, match=r"expects a \(2, H, W\)"):
        normalize_image(img[:1], norm)
    with pytest.raises(DataError, match="NaN"):
        normalize_image(np.full((2, 2, 2), np.nan, np.float32), norm)
    with pytest.raises(DataError, match="at least one"):
        dataset_statistics([], 1)
    with pytest.raises(ConfigError):
        Normalization((0.0,), (np.inf,))


def _bundle(norm: Normalization | None, method: str = "supervised", channels: int = 1) -> ModelBundle:
    pr = get_preset("tiny")
    spec = ModelSpec(method, channels, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim)
    bundle = ModelBundle(spec, seed=2, normalization=norm)
    for net in bundle.nets.values():
        net.eval()
    return bundle


def test_statistics_are_stored_with_the_model_and_reused(tmp_path: Path) -> None:
    norm = _dense_stats()
    bundle = _bundle(norm)
    save_bundle(bundle, tmp_path / "m", extra={"preset": get_preset("tiny").to_dict()})
    stored = json.loads((tmp_path / "m" / "config.json").read_text())["config"]["normalization"]
    assert (
        stored["mode"] == "dataset" and stored["low"] == list(norm.low) and stored["high"] == list(norm.high)
    )
    loaded, _config, _ = load_bundle(tmp_path / "m")
    assert loaded.normalization == norm
    img, _ = _field(3, 7)
    np.testing.assert_array_equal(loaded.preprocess(img).numpy(), norm.apply(img.astype(np.float32)))
    assert torch.equal(loaded.preprocess(img), preprocess(img, 1, norm))
    with pytest.raises(ConfigError, match="channel"):
        _bundle(norm, channels=3)


def test_a_model_without_statistics_falls_back_to_per_image(tmp_path: Path) -> None:
    """An old model (config.json without `normalization`) loads and predicts exactly as before."""
    from napari_diffseg.predict import predict_image

    bundle = _bundle(None)
    save_bundle(bundle, tmp_path / "old")
    cfg_file = tmp_path / "old" / "config.json"
    header = json.loads(cfg_file.read_text())
    assert header["config"]["normalization"]["mode"] == "per_image"  # what a new model without stats records
    del header["config"]["normalization"]  # ... and what an old model has: nothing
    cfg_file.write_text(json.dumps(header))
    loaded, config, _ = load_bundle(tmp_path / "old")
    assert loaded.normalization is None
    img, _ = _field(3, 8)
    np.testing.assert_array_equal(loaded.preprocess(img).numpy(), normalize_image(img.astype(np.float32)))
    np.testing.assert_array_equal(predict_image(loaded, config, img), predict_image(bundle, config, img))
    # a normalisation this version does not know is refused with a message, not guessed
    header["config"]["normalization"] = {"mode": "zscore-foo"}
    cfg_file.write_text(json.dumps(header))
    with pytest.raises(Exception, match="normalisation"):
        load_bundle(tmp_path / "old")


@pytest.mark.parametrize("shape", [(1, 70, 90), (1, 150, 230)])
def test_deployed_and_tiled_paths_use_the_same_statistics(shape) -> None:
    """The exported network and the tile-by-tile predictor normalise with the model's statistics, to the bit."""
    from napari_diffseg.core.tiled import ChannelStats
    from napari_diffseg.export.bioimageio import deployed_network
    from napari_diffseg.predict import predict_image

    norm = Normalization((12.0,), (180.0,))
    bundle = _bundle(norm, "cps")
    config = {"preset": get_preset("tiny").to_dict()}
    img = np.random.default_rng(3).integers(0, 255, shape).astype(np.uint8)
    img[0, :2, :2] = 255
    raw = img.astype(np.float32)
    np.testing.assert_array_equal(ChannelStats.of_model(norm).apply(raw), norm.apply(raw))
    net = deployed_network(bundle, config)
    with torch.no_grad():
        probs, _ = net(torch.from_numpy(raw[None]))
    np.testing.assert_allclose(probs[0].numpy(), predict_image(bundle, config, img), atol=1e-6)
    from napari_diffseg.core.deployed import normalize_fixed

    c_lo, c_hi, off, sc = norm.bounds()
    got = normalize_fixed(torch.from_numpy(raw[None]), list(c_lo), list(c_hi), list(off), list(sc))
    np.testing.assert_array_equal(got[0].numpy(), norm.apply(raw))


def test_project_jobs_compute_store_and_keep_the_statistics(
    tmp_path: Path, synth_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pretrain computes the statistics over the project's training images and trains with them; cotrain's
    warm start keeps them, for its training data and for the model it saves."""
    from napari_diffseg.backend import jobs
    from napari_diffseg.cli import main
    from napari_diffseg.data.dataset import DatasetFolder

    used: list[Normalization | None] = []

    def spy(image: np.ndarray, channels: int, normalization: Normalization | None = None) -> torch.Tensor:
        used.append(normalization)
        return preprocess(image, channels, normalization)

    monkeypatch.setattr(jobs, "preprocess", spy)
    proj = tmp_path / "p"
    assert main(["init", str(proj), "--images", str(synth_dataset), "--json"]) == 0
    assert main(["pretrain", str(proj), "--preset", "tiny", "-q", "--threads", "1"]) == 0
    n_pretrain = len(used)
    assert main(["cotrain", str(proj), "--preset", "tiny", "-q", "--threads", "1"]) == 0
    assert n_pretrain > 0 and len(used) > n_pretrain
    assert all(u is not None and u == used[0] for u in used)  # every training image, both jobs
    configs = {
        d.name: json.loads((d / "config.json").read_text())["config"] for d in (proj / "models").iterdir()
    }
    norms = {name: Normalization.from_config(c) for name, c in configs.items()}
    assert len(norms) == 2 and all(n is not None for n in norms.values())
    first, second = sorted(norms, key=lambda n: configs[n].get("round", 0))
    assert norms[first] == norms[second]  # the warm start kept its base model's statistics
    ds = DatasetFolder(synth_dataset)
    expect = dataset_statistics([match_channels(ds.load_image(i), 3) for i in sorted(ds.train_ids)], 3)
    norm = norms[first]
    assert norm is not None and norm.n_images == len(ds.train_ids)
    assert max(abs(a - b) for a, b in zip(norm.low + norm.high, expect.low + expect.high, strict=True)) < 3


_SHARED = os.environ.get("DIFFSEG_SHARED_DATA")
DATA = Path(_SHARED) if _SHARED else Path(__file__).resolve().parents[2] / "shared" / "data"
SPARSE = DATA.parent / "cases" / "sparse_field"
DSB = DATA / "dsb2018_nuclei"


@pytest.mark.skipif(not (SPARSE / "sparse.tif").is_file() or not DSB.is_dir(), reason="../shared is absent")
def test_real_sparse_field_with_a_small_model() -> None:
    """A small supervised model trained for seconds on dense DSB nuclei, with the dataset normalisation,
    finds the three nuclei of the real sparse field and keeps the empty field empty (the full-size figures
    are in benchmarks/sparse_field.py)."""
    from napari_diffseg.core.metrics import segmentation_metrics
    from napari_diffseg.core.pipeline import run_stages
    from napari_diffseg.core.training import TrainData
    from napari_diffseg.data.dataset import DatasetFolder
    from napari_diffseg.data.io import read_image
    from napari_diffseg.predict import predict_image

    ds = DatasetFolder(DSB)
    ids = sorted(ds.train_ids)
    raw = [match_channels(ds.load_image(i), 1) for i in ids]
    norm = dataset_statistics(raw, 1)
    pr = get_preset("tiny").with_overrides(
        cotrain_steps=250, patch_size=64, batch_size=8, lr=3e-3, student_channels=(8, 16, 32), roi_size=256
    )
    spec = ModelSpec("supervised", 1, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim)
    bundle = ModelBundle(spec, seed=0, normalization=norm)
    data = TrainData(
        [preprocess(r, 1, norm) for r in raw],
        [torch.from_numpy(ds.load_mask(i).astype(np.int64)) for i in ids],
    )
    for _ in run_stages(
        bundle, data, pr, generator=torch.Generator().manual_seed(0), seed=0, device=torch.device("cpu")
    ):
        pass
    for net in bundle.nets.values():
        net.eval()
    config = {"preset": pr.to_dict()}
    sparse = read_image(SPARSE / "sparse.tif")
    truth = read_image(SPARSE / "sparse_mask.tif")[0] > 0
    pred = predict_image(bundle, config, sparse).argmax(0)
    empty = predict_image(bundle, config, read_image(SPARSE / "empty.tif")).argmax(0)
    dice = segmentation_metrics(pred, truth.astype(np.int64))["dice"]
    print(f"sparse Dice {dice:.3f}, empty {100 * empty.mean():.3f} %")
    assert dice >= 0.8, f"sparse field Dice {dice:.3f}"
    assert empty.mean() < 0.005, f"empty field {100 * empty.mean():.2f} % foreground"


def test_tile_by_tile_ome_zarr_uses_the_model_statistics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OME-Zarr predicted row band by row band streams no image statistics when the model has its own,
    and gives the in-memory prediction."""
    pytest.importorskip("zarr")
    import napari_diffseg.core.tiled as tiled_mod
    import napari_diffseg.predict as predict_mod
    from napari_diffseg.data.ome_zarr import open_ome_zarr
    from napari_diffseg.data.ome_zarr_write import write_ome_zarr
    from napari_diffseg.predict import load_model, predict_files, predict_image

    pr = get_preset("tiny")
    spec = ModelSpec("cps", 1, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim)
    model = save_bundle(
        ModelBundle(spec, seed=4, normalization=Normalization((12.0,), (150.0,))),
        tmp_path / "m",
        extra={"preset": pr.to_dict()},
    )
    monkeypatch.setattr(predict_mod, "IN_MEMORY_PIXELS", 1000)  # the tiled path on a small image

    def no_streaming(*_args, **_kwargs):
        raise AssertionError("image statistics streamed for a model that has its own")

    monkeypatch.setattr(tiled_mod, "image_stats", no_streaming)
    calls: list[int] = []
    real_rows = tiled_mod.predict_rows
    monkeypatch.setattr(tiled_mod, "predict_rows", lambda *a, **k: calls.append(1) or real_rows(*a, **k))
    img = np.concatenate([_field(4, 9, size=150)[0], _field(0, 10, size=150)[0]], axis=2)  # (1, 150, 300)
    src = write_ome_zarr(tmp_path / "f.ome.zarr", img, levels=1, chunk=64)
    report = predict_files(model, [src], tmp_path / "out", device="cpu")
    assert report.failed == [] and len(report.written) == 1 and calls == [1]
    bundle, config = load_model(model, "cpu")
    ref = predict_image(bundle, config, img).argmax(0)
    np.testing.assert_array_equal(open_ome_zarr(report.written[0]).read()[0], ref)
