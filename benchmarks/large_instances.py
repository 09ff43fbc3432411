"""Objects of a slide too large to post-process at once: `diffseg predict` of an instance model on an
OME-Zarr mosaic of DSB 2018 nuclei, tile by tile, against the same model on the whole mosaic in memory.

    python benchmarks/large_instances.py --model MODEL [--size 3072] [--threads 1] [--object-rows 256]
                                         [--dataset ../shared/data/dsb2018_nuclei] [--json OUT]

1. The mosaic: the dataset's **test** images (uint8, grey ones as RGB), each randomly flipped, packed row
   by row into a --size² canvas until it is full, written as OME-Zarr (NGFF 0.4, 1024² chunks, a pyramid);
   their expert instances packed the same way (ids offset) are the truth.
2. `diffseg predict MODEL mosaic.ome.zarr --out OUT` in a child process: past ``IN_MEMORY_PIXELS`` the
   students run over the image one row of windows at a time and the objects are made block by block of
   1,024 rows with --object-rows of context (``core/instance_bands.py``). Seconds and peak RSS.
3. The same model on the whole mosaic in memory (``predict_image`` + ``probs_to_instances`` with the
   model's watershed): seconds and peak RSS of this process.
4. Printed: objects found each way, the share of the in-memory objects the tiled run made identically
   (IoU 1) and at IoU >= 0.9, and the test AP@0.5 / F1@0.5 of both against the expert instances.

MODEL is an instance model folder (`diffseg experiment --task instances --model-out DIR`, or
`benchmarks/sweep.py --models DIR`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _uint8_rgb(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    a = np.asarray(iio.imread(path))
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = (255 * (a.astype(np.float64) / max(1.0, float(a.max())))).astype(np.uint8)
    return a


def make_mosaic(dataset: Path, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(``(3, size, size)`` uint8 image, ``(size, size)`` uint32 expert ids, images placed)."""
    import csv

    import tifffile

    rows = list(csv.DictReader((dataset / "split.csv").open()))
    ids = [r["id"] for r in rows if r["split"] == "test"]
    images = {}
    for i in ids:
        files = sorted((dataset / "images").glob(f"{i}.*"))
        images[i] = (
            _uint8_rgb(files[0]),
            tifffile.imread(dataset / "instances" / f"{i}.tif").astype(np.int64),
        )
    rng = np.random.default_rng(seed)
    canvas = np.zeros((size, size, 3), np.uint8)
    truth = np.zeros((size, size), np.uint32)
    y = x = shelf = placed = 0
    next_id = 1
    while True:
        name = ids[rng.integers(len(ids))]
        img, inst = images[name]
        if rng.random() < 0.5:
            img, inst = img[::-1], inst[::-1]
        if rng.random() < 0.5:
            img, inst = img[:, ::-1], inst[:, ::-1]
        h, w = inst.shape
        if x + w > size:  # next shelf
            y, x, shelf = y + shelf, 0, 0
        if y + h > size:
            break
        canvas[y : y + h, x : x + w] = img
        objs = inst > 0
        truth[y : y + h, x : x + w][objs] = inst[objs] + next_id
        next_id += int(inst.max()) + 1
        x, shelf, placed = x + w, max(shelf, h), placed + 1
    _, inv = np.unique(truth, return_inverse=True)  # renumber 1..N
    truth = inv.reshape(truth.shape).astype(np.uint32)
    return np.moveaxis(canvas, -1, 0), truth, placed


def run_child(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MiB, exit status, stderr) of a child process (stderr kept in ``log``)."""
    t0 = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, env=env, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    return seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), log.read_text()


def identical_share(tiled: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Share of ``ref``'s objects with a partner in ``tiled`` at IoU 1 and at IoU >= 0.9."""
    from napari_diffseg.core.instance_metrics import iou_matrix, match_counts

    iou = iou_matrix(tiled, ref)  # rows: ref objects
    n = max(1, iou.shape[0])
    same = int((iou.max(axis=1, initial=0.0) >= 1.0 - 1e-9).sum()) if iou.size else 0
    return same / n, match_counts(iou, 0.9)[0] / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="an instance model folder")
    ap.add_argument("--dataset", type=Path, default=HERE.parent.parent / "shared" / "data" / "dsb2018_nuclei")
    ap.add_argument("--size", type=int, default=3072)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--object-rows", type=int, default=256)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "diffseg-large-instances")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch
    from large_ome_zarr import _commit  # this folder is on sys.path when the script runs

    torch.set_num_threads(args.threads)
    from napari_diffseg.core.instance_metrics import average_precision
    from napari_diffseg.core.instances import Watershed, probs_to_instances
    from napari_diffseg.data.ome_zarr import open_ome_zarr
    from napari_diffseg.data.ome_zarr_write import write_ome_zarr
    from napari_diffseg.predict import IN_MEMORY_PIXELS, load_model, predict_image

    if args.size * args.size <= IN_MEMORY_PIXELS:
        sys.exit(
            f"--size {args.size} is predicted in memory anyway; choose more than {int(IN_MEMORY_PIXELS**0.5)}"
        )
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    image, truth, placed = make_mosaic(args.dataset, args.size)
    slide = write_ome_zarr(work / "mosaic.ome.zarr", image, levels=3, chunk=1024, overwrite=True)
    print(
        f"mosaic: {args.size}² px, {placed} test images placed, {int(truth.max())} expert nuclei", flush=True
    )

    out = work / "out"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "napari_diffseg.cli", "predict", str(args.model), str(slide)]
    cmd += ["--out", str(out), "--threads", str(args.threads), "-q", "--overwrite"]
    cmd += ["--object-rows", str(args.object_rows)]
    t_tiled, rss_tiled, rc, err = run_child(cmd, env, work / "predict.err")
    if rc != 0:
        sys.exit(f"predict failed ({rc}): {err}")
    tiled = np.asarray(open_ome_zarr(out / "mosaic.ome.zarr" / "labels" / "diffseg").read()[0])
    cut = [line for line in err.splitlines() if line.startswith("note:")]

    bundle, config = load_model(args.model, "cpu")
    t0 = time.perf_counter()
    probs = predict_image(bundle, config, image)
    ref = probs_to_instances(probs, Watershed.from_config(config))
    t_mem = time.perf_counter() - t0
    rss_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del probs

    same, close = identical_share(tiled, ref)
    ap_tiled = average_precision(tiled, truth, (0.5,))
    ap_mem = average_precision(ref, truth, (0.5,))
    result = {
        "size": args.size,
        "images_placed": placed,
        "expert_objects": int(truth.max()),
        "object_rows": args.object_rows,
        "threads": args.threads,
        "tiled": {
            "seconds": round(t_tiled, 1),
            "peak_rss_mib": round(rss_tiled),
            "objects": int(len(np.unique(tiled)) - 1),
            "ap_50": ap_tiled["ap"][0],
            "f1_50": ap_tiled["f1"][0],
            "notes": cut,
        },
        "in_memory": {
            "seconds": round(t_mem, 1),
            "peak_rss_mib": round(rss_mem),
            "objects": int(ref.max()),
            "ap_50": ap_mem["ap"][0],
            "f1_50": ap_mem["f1"][0],
        },
        "identical_objects": same,
        "objects_at_iou_0.9": close,
        "model": str(args.model),
        "commit": _commit(),  # benchmarks/large_ome_zarr.py's
    }
    print(
        f"tiled (predict, child): {t_tiled:.1f} s, peak RSS {rss_tiled:.0f} MiB, {result['tiled']['objects']} "
        f"objects, AP@0.5 {ap_tiled['ap'][0]:.4f}, F1@0.5 {ap_tiled['f1'][0]:.4f}"
    )
    print(
        f"in memory: {t_mem:.1f} s, peak RSS {rss_mem:.0f} MiB, {result['in_memory']['objects']} objects, "
        f"AP@0.5 {ap_mem['ap'][0]:.4f}, F1@0.5 {ap_mem['f1'][0]:.4f}"
    )
    print(f"in-memory objects made identically tile by tile: {same:.2%} (IoU >= 0.9: {close:.2%})")
    for line in cut:
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
