"""Objects of a large image made block by block (core/instance_bands.py) against the whole-image
post-processing, and `diffseg predict` of an instance model on OME-Zarr images (in memory and tile by tile)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_diffseg.core.instance_bands import BandInstances
from napari_diffseg.core.instances import (
    Watershed,
    classify_objects,
    instances_to_target,
    probs_to_instances,
)


def _discs(h: int, w: int, n: int, seed: int, rmax: int = 14) -> np.ndarray:
    """Up to ``n`` discs of radius 4..rmax, many touching (a later disc covers an earlier one's pixels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    ids = np.zeros((h, w), np.int64)
    for i in range(1, n + 1):
        r = rng.integers(4, rmax + 1)
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ids[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    # keep one connected piece per id (a disc cut in two by a later one keeps its largest piece)
    out = np.zeros_like(ids)
    for i in np.unique(ids[ids > 0]):
        lab, k = ndi.label(ids == i)
        if k:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            out[lab == sizes.argmax()] = i
    return out


def _probs(ids: np.ndarray, classes: dict[int, int] | None = None, seed: int = 0) -> np.ndarray:
    """Softened one-hot class probabilities of the instance target of ``ids`` (K = 3, or 4 with two classes)."""
    target = instances_to_target(ids, classes=classes)
    k = 3 if classes is None else 4
    onehot = np.stack([(target == c).astype(np.float32) for c in range(k)])
    rng = np.random.default_rng(seed)
    p = ndi.gaussian_filter(onehot, (0, 0.7, 0.7)) + rng.uniform(0, 0.05, onehot.shape).astype(np.float32)
    return p / p.sum(0, keepdims=True)


def _same_partition(a: np.ndarray, b: np.ndarray) -> None:
    """``a`` and ``b`` are the same objects up to their numbering."""
    assert ((a > 0) == (b > 0)).all()
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def _stream(
    probs: np.ndarray, bands: list[int], **kwargs
) -> tuple[np.ndarray, np.ndarray | None, BandInstances]:
    _, h, w = probs.shape
    ids = np.full((h, w), 99_999_999, np.int64)
    cls = np.zeros((h, w), np.int64)
    rows_seen: list[tuple[int, int]] = []

    def sink(y0: int, got: np.ndarray, c: np.ndarray | None) -> None:
        assert got.dtype == np.uint32 and got.shape[1] == w
        rows_seen.append((y0, got.shape[0]))
        ids[y0 : y0 + got.shape[0]] = got
        if c is not None:
            cls[y0 : y0 + got.shape[0]] = c

    st = BandInstances(h, w, kwargs.pop("params", Watershed()), sink, **kwargs)
    y = 0
    for n in bands:
        if y >= h:
            break
        st(y, probs[:, y : y + n])
        y += min(n, h - y)
    if y < h:
        st(y, probs[:, y:])
    st.flush()
    # blocks in order, covering every row once
    assert [y0 for y0, _ in rows_seen] == list(np.cumsum([0] + [n for _, n in rows_seen])[:-1])
    assert sum(n for _, n in rows_seen) == h
    return ids, (cls if kwargs.get("classed") else None), st


@pytest.mark.parametrize(
    ("block", "context", "bands"),
    [(64, 60, [1] * 7 + [50, 3, 200, 64, 64]), (37, 58, [300]), (500, 40, [17] * 30), (64, 64, [64] * 10)],
)
def test_blocks_give_the_whole_image_objects(block: int, context: int, bands: list[int]) -> None:
    ids = _discs(300, 180, 90, seed=1)  # objects up to 29 rows tall, their neighbours' seeds within ~2x that
    probs = _probs(ids)
    ref = probs_to_instances(probs)
    assert ref.max() > 60  # many objects, many touching: a real test of the seams
    got, _, st = _stream(probs, bands, block=block, context=context)
    _same_partition(got, ref)
    assert st.objects == ref.max() and st.cut == 0
    assert got.max() == st.objects and set(np.unique(got)) == set(range(st.objects + 1))


def test_tuned_watershed_and_two_object_classes_per_block() -> None:
    ids = _discs(260, 150, 70, seed=3)
    rng = np.random.default_rng(0)
    classes = {int(i): int(rng.integers(1, 3)) for i in np.unique(ids[ids > 0])}
    probs = _probs(ids, classes)
    params = Watershed(threshold=0.4, seed_threshold=0.7, seed_sigma=1.0, min_seed_size=8, min_size=20)
    ref = probs_to_instances(probs, params)
    ref_classes = classify_objects(ref, probs)
    got, cls, st = _stream(probs, [40] * 7, block=48, context=60, classed=True, params=params)
    _same_partition(got, ref)
    assert cls is not None
    for obj, c in st.object_class.items():
        ref_obj = int(np.bincount(ref[got == obj]).argmax())
        assert ref_classes[ref_obj] == c
        assert (cls[got == obj] == c).all()
    assert (cls[got == 0] == 0).all() and len(set(st.object_class.values())) == 2


def test_an_object_taller_than_the_context_is_counted_as_cut() -> None:
    ids = np.zeros((200, 60), np.int64)
    ids[20:180, 20:40] = 1  # 160 rows tall
    ids[50:60, 45:55] = 2
    probs = _probs(ids)
    _, _, short = _stream(probs, [200], block=32, context=24)
    assert short.cut >= 1
    got, _, enough = _stream(probs, [200], block=32, context=170)
    assert enough.cut == 0
    _same_partition(got, probs_to_instances(probs))


def test_bands_out_of_order_are_refused() -> None:
    st = BandInstances(10, 8, Watershed(), lambda *a: None)
    st(0, np.zeros((3, 4, 8), np.float32))
    with pytest.raises(ValueError, match="in order"):
        st(5, np.zeros((3, 4, 8), np.float32))
    with pytest.raises(ValueError, match="of 10 rows"):
        st.flush()


# ------------------------------------------------------------------------------------------- OME-Zarr


def _instance_model(root: Path, object_classes: int = 1) -> Path:
    """An untrained tiny-preset instance model (predict's wiring does not depend on training)."""
    from napari_diffseg.base.presets import get_preset
    from napari_diffseg.core.models import ModelBundle, ModelSpec, save_bundle

    pr = get_preset("tiny")
    k = object_classes + 2
    bundle = ModelBundle(
        ModelSpec("diffseg", 3, k, pr.student_channels, pr.teacher_channels, pr.emb_dim), seed=2
    )
    names = ["background", "object"] if object_classes == 1 else ["background", "round", "long"]
    extra = {
        "preset": pr.to_dict(),
        "task": "instances",
        "classes": [{"name": n} for n in names],
        "watershed": Watershed(seed_threshold=0.6).to_config(),
    }
    return save_bundle(bundle, root / "model", extra=extra)


@pytest.mark.parametrize(("tiled", "n_classes"), [(False, 1), (True, 2)])
def test_predict_ome_zarr_objects(tmp_path: Path, monkeypatch, capsys, tiled: bool, n_classes: int) -> None:
    """The students' probabilities are replaced by known ones (an untrained network's give no objects
    worth the name): what is checked is the wiring — uint32 ids equal to the whole-image post-processing
    with the model's watershed, the class image, the objects table, the note on cut objects."""
    pytest.importorskip("zarr")
    import napari_diffseg.core.tiled as tiled_mod
    import napari_diffseg.predict as predict_mod
    from napari_diffseg.cli import main
    from napari_diffseg.data.ome_zarr import open_ome_zarr
    from napari_diffseg.data.ome_zarr_write import write_ome_zarr

    h, w = 300, 280
    ids = _discs(h, w, 110, seed=5)
    classes = {int(i): 1 + int(i) % 2 for i in np.unique(ids[ids > 0])} if n_classes == 2 else None
    probs = _probs(ids, classes)
    model = _instance_model(tmp_path, object_classes=n_classes)
    names = ("round", "long") if n_classes == 2 else ("object",)
    monkeypatch.setattr(predict_mod, "predict_image", lambda bundle, config, image: probs)

    calls: list[int] = []

    def fake_rows(nets, source, stats, sink, **kwargs):  # the tiled predictor's bands, uneven sizes
        calls.append(1)
        y = 0
        for n in [33, 1, 90, 7] * 20:
            if y >= h:
                break
            sink(y, probs[:, y : y + n])
            y += min(n, h - y)

    monkeypatch.setattr(tiled_mod, "predict_rows", fake_rows)
    if tiled:
        monkeypatch.setattr(predict_mod, "IN_MEMORY_PIXELS", 1000)
        from napari_diffseg.data import ome_zarr_write

        monkeypatch.setattr(ome_zarr_write, "DEFAULT_CHUNK", 64)  # blocks of 64 rows: four seams
    image = np.zeros((3, h, w), np.uint8)
    src = write_ome_zarr(tmp_path / "slide.ome.zarr", image, levels=2, chunk=64)
    argv = ["predict", str(model), str(src), "--out", str(tmp_path / "out"), "-q", "--probabilities"]
    argv += ["--object-rows", "60"]
    rc = main(argv)
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert calls == ([1] if tiled else [])
    copy = tmp_path / "out" / "slide.ome.zarr"
    labels = open_ome_zarr(copy / "labels" / "diffseg")
    got = np.asarray(labels.read()[0])
    params = Watershed(seed_threshold=0.6)
    ref = probs_to_instances(probs, params)
    assert got.dtype == np.uint32 and len(labels.levels) == 2
    _same_partition(got, ref)
    ref_classes = classify_objects(ref, probs)
    if n_classes == 2:
        cls = np.asarray(open_ome_zarr(copy / "labels" / "diffseg-classes").read()[0])
        for obj in np.unique(got[got > 0])[:40]:
            ref_obj = int(np.bincount(ref[got == obj]).argmax())
            assert (cls[got == obj] == ref_classes[ref_obj]).all()
        assert "diffseg-classes" in out.out
    else:
        assert open_ome_zarr(copy).labels == ("diffseg",)
    table = (tmp_path / "out" / "slide.objects.csv").read_text().splitlines()
    assert table[0] == "id,class,class_name,area,centroid_y,centroid_x" and len(table) == 1 + ref.max()
    for row in table[1:40]:
        obj, c, name, area, cy, cx = row.split(",")
        yy, xx = np.nonzero(got == int(obj))
        assert name == names[int(c) - 1] and int(area) == yy.size
        assert abs(float(cy) - yy.mean()) <= 0.05 and abs(float(cx) - xx.mean()) <= 0.05
    assert "objects.csv" in out.out and "note:" not in out.err
    import zarr

    fg = np.asarray(zarr.open_group(tmp_path / "out" / "slide_probabilities.ome.zarr", mode="r")["0"])
    np.testing.assert_allclose(fg, probs[1:], atol=1e-6)
    # again with objects taller than the context: said, with what to pass
    if tiled:
        rc = main([*argv[:-2], "--object-rows", "16", "--overwrite"])
        err = capsys.readouterr().err
        assert rc == 0 and "may be cut in two" in err and "--object-rows 32" in err


def test_predict_watershed_overrides_the_models(tmp_path: Path, monkeypatch, capsys) -> None:
    """``diffseg predict --watershed '{...}'``: the objects with those parameters in place of the model's
    (image files here); bad parameters, or a model of another task, get one clear line and nothing written."""
    import tifffile

    import napari_diffseg.predict as predict_mod
    from napari_diffseg.cli import main

    ids = _discs(120, 100, 30, seed=2)
    probs = _probs(ids)
    model = _instance_model(tmp_path)  # its own watershed: seeds > 0.6
    monkeypatch.setattr(predict_mod, "predict_image", lambda bundle, config, image: probs)
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((120, 100), np.uint8))
    override = {"seed_threshold": 0.9, "min_size": 40}
    argv = ["predict", str(model), str(tmp_path / "a.tif"), "--out", str(tmp_path / "out"), "--no-overlays"]
    assert main([*argv, "--watershed", '{"seed_threshold": 0.9, "min_size": 40}']) == 0
    got = tifffile.imread(tmp_path / "out" / "a.tif.tif")
    _same_partition(got, probs_to_instances(probs, Watershed(seed_threshold=0.6).with_overrides(override)))
    capsys.readouterr()
    for bad, words in [
        ('{"seeds": 1}', "unknown watershed parameter"),
        ('{"min_size": 0}', "min_size must be a whole number"),
        ("0.9", "JSON object"),
        ("{seed", "JSON object"),
    ]:
        rc = main([*argv, "--out", str(tmp_path / "bad"), "--watershed", bad])
        err = capsys.readouterr().err
        assert rc == 2 and words in err and err.count("\n") == 1, (bad, err)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
    from napari_diffseg.base.presets import get_preset
    from napari_diffseg.core.models import ModelBundle, ModelSpec, save_bundle

    pr = get_preset("tiny")
    binary = save_bundle(
        ModelBundle(ModelSpec("diffseg", 3, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim), seed=0),
        tmp_path / "binary",
        extra={"preset": pr.to_dict(), "task": "binary"},
    )
    rc = main(
        ["predict", str(binary), str(tmp_path / "a.tif"), "--out", str(tmp_path / "b2"), "--watershed", "{}"]
    )
    assert rc == 0  # an empty object changes nothing, for any model
    rc = main(
        [*argv[:1], str(binary), *argv[2:], "--out", str(tmp_path / "b3"), "--watershed", '{"min_size": 5}']
    )
    err = capsys.readouterr().err
    assert rc == 2 and "applies to an instance model" in err
