"""The 3-class instance target and the watershed back to instances."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_data_dir
from napari_diffseg.base.errors import DataError
from napari_diffseg.core.instance_metrics import iou_matrix
from napari_diffseg.core.instances import (
    BOUNDARY,
    INTERIOR,
    instances_to_target,
    labels_to_instances,
    probs_to_instances,
)


def _touching_discs() -> np.ndarray:
    """Five discs of radius 12 in a row, each touching the next (centres 22 px apart), plus a free one."""
    yy, xx = np.mgrid[:64, :160]
    ids = np.zeros((64, 160), np.uint16)
    for k, cx in enumerate(range(20, 20 + 5 * 22, 22)):
        ids[(yy - 30) ** 2 + (xx - cx) ** 2 <= 12**2] = k + 1  # later discs overwrite the shared edge
    ids[(yy - 55) ** 2 + (xx - 150) ** 2 <= 6**2] = 6
    return ids


def test_target_rim_is_two_pixels() -> None:
    ids = np.zeros((9, 9), np.uint16)
    ids[1:8, 1:8] = 3  # a 7 × 7 square
    t = instances_to_target(ids)
    # rings 1 and 2 of the square are boundary; its 3 × 3 centre is interior
    assert (t[4, 4], t[1, 1], t[2, 2], t[3, 3]) == (INTERIOR, BOUNDARY, BOUNDARY, INTERIOR)
    assert int((t == INTERIOR).sum()) == 9 and int((t == BOUNDARY).sum()) == 49 - 9
    assert t[0, 0] == 0


def test_target_separates_touching_objects_and_keeps_tiny_ones() -> None:
    ids = np.zeros((6, 12), np.uint16)
    ids[:, 0:6] = 1
    ids[:, 6:12] = 2
    ids[0, 0] = 0
    t = instances_to_target(ids)
    # the shared edge: 2 boundary columns on each side (cols 4-7); the image's edge is not a boundary
    assert np.all(t[2:4, 4:8] == BOUNDARY) and np.all(t[2:4, 2:4] == INTERIOR)
    tiny = np.zeros((5, 5), np.uint16)
    tiny[2:4, 2:4] = 7  # 2 × 2: all rim, so it keeps its area as interior
    assert int((instances_to_target(tiny) == INTERIOR).sum()) == 4


def test_round_trip_touching_discs() -> None:
    ids = _touching_discs()
    back = labels_to_instances(instances_to_target(ids))
    assert back.dtype == np.uint16
    assert int(back.max()) == 6 == len(np.unique(back)) - 1
    iou = iou_matrix(back, ids)
    # every true disc has one predicted object with IoU > 0.8
    assert np.all(iou.max(1) > 0.8), iou.max(1)


def test_soft_probabilities_and_small_object_removal() -> None:
    ids = _touching_discs()
    t = instances_to_target(ids)
    onehot = np.stack([t == k for k in range(3)]).astype(np.float32)
    soft = 0.15 + 0.7 * onehot  # the true class 0.85 / 1.15 ≈ 0.74, the others 0.13 each
    soft /= soft.sum(0, keepdims=True)
    back = probs_to_instances(soft)
    assert int(back.max()) == 6
    speck = np.zeros((3, 64, 160), np.float32)
    speck[0] = 1.0
    speck[:, 5:8, 5:8] = [[[0]], [[1]], [[0]]]  # a 9-pixel object: under the 16-pixel minimum
    assert int(probs_to_instances(speck).max()) == 0
    assert int(probs_to_instances(speck, min_size=4).max()) == 1


def test_refuses_bad_input() -> None:
    with pytest.raises(DataError, match="negative"):
        instances_to_target(-np.ones((4, 4), np.int16))
    with pytest.raises(DataError, match="integer"):
        instances_to_target(np.full((4, 4), 0.5))
    with pytest.raises(DataError, match=r"\(K, H, W\) class probabilities, K >= 3"):
        probs_to_instances(np.zeros((2, 4, 4)))


def test_painted_case_round_trip() -> None:
    path = shared_data_dir().parent / "cases" / "labels" / "instance_painted.tif"
    if not path.is_file():
        pytest.skip(f"shared cases not found at {path}")
    import tifffile

    ids = tifffile.imread(path)
    back = labels_to_instances(instances_to_target(ids))
    assert int(back.max()) == 18
    assert np.all(iou_matrix(back, ids).max(1) > 0.8)


def test_dsb_round_trip_ceiling() -> None:
    """The target loses almost nothing on real nuclei: AP@0.5 of ids → target → ids over DSB's test split
    (measured 0.996 over all 53 images; the misses are a few tiny or touching nuclei)."""
    root = shared_data_dir() / "dsb2018_nuclei"
    if not (root / "instances").is_dir():
        pytest.skip(f"{root} not found")
    from napari_diffseg.core.instance_metrics import instance_metrics
    from napari_diffseg.data.dataset import DatasetFolder

    ds = DatasetFolder(root)
    aps = []
    for i in ds.test_ids:
        ids = ds.load_instances(i)
        aps.append(instance_metrics(labels_to_instances(instances_to_target(ids)), ids)["ap_50"])
    assert len(aps) == 13 and float(np.mean(aps)) > 0.99


def _stack_probs(ids: np.ndarray) -> np.ndarray:
    """Confident ``(Z, 3, H, W)`` probabilities of a ``(Z, H, W)`` stack of ids (its per-plane target)."""
    target = np.stack([instances_to_target(plane) for plane in ids])
    return np.stack([(target == k) for k in range(3)], axis=1).astype(np.float32)


def _two_nuclei_stack() -> np.ndarray:
    """Four planes: nucleus 1 in planes 0-2, nucleus 2 in planes 1-3 beside it (not touching), a third in
    plane 3 only, away from both."""
    zz, yy, xx = np.mgrid[:4, :48, :64]
    ids = np.zeros((4, 48, 64), np.uint16)
    ids[(zz <= 2) & ((yy - 16) ** 2 + (xx - 16) ** 2 <= 9**2)] = 1
    ids[(zz >= 1) & ((yy - 24) ** 2 + (xx - 46) ** 2 <= 10**2)] = 2
    ids[3][(yy[3] - 36) ** 2 + (xx[3] - 12) ** 2 <= 6**2] = 3
    return ids


def test_stack_objects_keep_one_id_through_their_planes() -> None:
    from napari_diffseg.core.instances import proposal_instances, stack_instances

    truth = _two_nuclei_stack()
    probs = _stack_probs(truth)
    linked = stack_instances(probs)
    assert linked.shape == truth.shape and linked.dtype == np.uint16
    assert np.unique(linked[linked > 0]).size == 3  # three objects, not 2 + 2 + 2 + 2 plane pieces
    for t in (1, 2, 3):
        ids = np.unique(linked[truth == t])
        ids = ids[ids > 0]
        assert ids.size == 1, (t, ids)  # one id through every plane the object crosses
        inside = linked == ids[0]
        # the object's voxels are the truth's, less nothing but boundary shared with the background
        assert (inside & (truth != t)).sum() == 0 and inside.sum() >= 0.95 * (truth == t).sum()
    assert np.array_equal(proposal_instances(probs), linked)  # what a stack proposal shows
    # plane by plane (the fallback beyond the voxel limit): one id per plane piece, none shared
    per_plane = stack_instances(probs, link_max_voxels=0)
    assert (
        np.unique(per_plane[per_plane > 0]).size == 1 + 2 + 2 + 2
    )  # objects per plane: {1}, {1,2}, {1,2}, {2,3}
    assert not set(np.unique(per_plane[0])[1:]) & set(np.unique(per_plane[1])[1:])
    with pytest.raises(DataError, match=r"\(Z, K, H, W\)"):
        stack_instances(probs[0])


def test_stack_linking_is_by_faces_not_corners() -> None:
    """Two blobs in adjacent planes that touch only diagonally (no voxel directly above another) stay two
    objects: Z is linked only where the planes overlap (no resampling, no 26-connectivity)."""
    from napari_diffseg.core.instances import stack_instances

    ids = np.zeros((2, 32, 32), np.uint16)
    ids[0, 4:12, 4:12] = 1
    ids[1, 12:20, 12:20] = 2  # its corner (12, 12) is diagonal to (11, 11) of the plane below
    linked = stack_instances(_stack_probs(ids))
    assert np.unique(linked[linked > 0]).size == 2


def test_predict_of_a_stack_links_instances_across_planes(monkeypatch: pytest.MonkeyPatch) -> None:
    """``predict`` of a z-stack with an instance model: the networks plane by plane, the objects from the
    whole stack (one id per nucleus), and the probabilities returned per plane."""
    from napari_diffseg import predict

    truth = _two_nuclei_stack()
    probs = _stack_probs(truth)
    stack = truth[:, None].astype(np.float32)  # (Z, C, H, W); the fake networks read the plane's ids
    lookup = {truth[z].tobytes(): probs[z] for z in range(truth.shape[0])}
    monkeypatch.setattr(
        predict, "predict_image", lambda _b, _c, plane: lookup[plane[0].astype(np.uint16).tobytes()]
    )
    from types import SimpleNamespace

    bundle = SimpleNamespace(spec=SimpleNamespace(num_classes=3))  # all _labels reads of a model
    labels, out_probs = predict._predict_stack(bundle, {"task": "instances"}, stack)  # type: ignore[arg-type]
    assert np.array_equal(out_probs, probs)
    assert labels.shape == truth.shape and np.unique(labels[labels > 0]).size == 3
    labels_b, _ = predict._predict_stack(bundle, {"task": "multiclass"}, stack)  # type: ignore[arg-type]
    assert np.array_equal(labels_b, probs.argmax(1))  # class maps stay per plane
