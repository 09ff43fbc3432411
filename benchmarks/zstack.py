"""Z-stacks through the project loop (issue 12): pretrain, a co-training round and proposals on confocal
stacks at the `cpu` preset, and what a plane of a stack costs against a 2D image of the same size.

    python benchmarks/zstack.py [--dataset ../shared/data/ctc_cho_3d] [--stacks 6] [--annotated 2]
                                [--propose 2] [--threads 2] [--preset cpu] [--json OUT]

1. A project of --stacks train stacks of the dataset (each one (Z, Y, X) image), the ground truth of the
   first --annotated stacks saved as corrections of every plane (``diffseg correct``); the other stacks
   stay unlabelled.
2. ``diffseg pretrain``, ``diffseg cotrain`` (one round) and ``diffseg propose`` of --propose stacks, each
   a child process: wall seconds, CPU seconds (start-up included; they do not grow with the machine's
   load as wall seconds do) and the child's peak resident memory (``wait4``).
3. The same planes as 2D images (one TIFF per plane, 443 × 512 for CTC CHO) in a second project with
   the first project's model: ``diffseg propose`` of as many planes as step 2 proposed. Seconds per plane
   of a stack against per 2D image: a stack is proposed plane by plane by the 2D networks, so they
   should be equal up to the stack's bookkeeping.

The dataset's labels are algorithmic (CTC ERR_SEG), so no accuracy is claimed here; the test Dice of
the round's model on the test stacks is printed only as a sanity check that the loop learned something.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "ctc_cho_3d"


def run(cmd: list[str], threads: int) -> dict:
    """Run ``diffseg CMD`` in a child process; wall / CPU seconds and its peak RSS (MiB)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "napari_diffseg.cli", *cmd], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"diffseg {' '.join(cmd)} failed (exit {os.waitstatus_to_exitcode(status)})")
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=SHARED)
    ap.add_argument("--stacks", type=int, default=6, help="train stacks in the project")
    ap.add_argument("--annotated", type=int, default=2, help="stacks whose every plane is corrected")
    ap.add_argument("--propose", type=int, default=2, help="stacks proposed (and as many 2D planes)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from napari_diffseg.data.dataset import DatasetFolder
    from napari_diffseg.project import Project

    ds = DatasetFolder(args.dataset)
    train = ds.train_ids[: args.stacks]
    if len(train) < max(args.annotated, args.propose) or args.annotated >= len(train):
        raise SystemExit(f"{args.dataset} has {len(ds.train_ids)} train stacks; need more than --annotated")
    work = args.work or Path(tempfile.mkdtemp(prefix="diffseg-zstack-"))
    work.mkdir(parents=True, exist_ok=True)
    quick = ["--preset", args.preset, "--device", "cpu", "--threads", str(args.threads)]
    root = work / "stacks"
    run(["init", str(root)], 1)
    run(["import", str(root), *[str(ds.image_path(i)) for i in train]], 1)
    z, h, w = tifffile.imread(ds.image_path(train[0])).shape
    for i in train[: args.annotated]:
        run(["correct", str(root), i, str(ds.mask_path(i))], 1)
    result: dict = {
        "dataset": args.dataset.name,
        "stack_shape": [z, h, w],
        "stacks": len(train),
        "annotated_stacks": args.annotated,
        "preset": args.preset,
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        ).stdout.strip(),
    }
    for step, cmd in (
        ("pretrain", ["pretrain", str(root), *quick]),
        ("cotrain", ["cotrain", str(root), *quick]),
    ):
        result[step] = run(cmd, args.threads)
        print(f"{step}: {result[step]}", flush=True)
    with Project.open(root) as proj:
        model = proj.active_model()
        result["cotrain"]["labeled_planes"] = model.metrics.get("labeled")
        result["cotrain"]["unlabeled_planes"] = model.metrics.get("unlabeled")
        model_dir = proj.model_dir(model.id)
    ids = train[args.annotated : args.annotated + args.propose]
    prop = run(["propose", str(root), "--ids", *ids, *quick], args.threads)
    prop["planes"] = len(ids) * z
    prop["s_per_plane"] = round(prop["wall_s"] / prop["planes"], 2)
    prop["cpu_s_per_plane"] = round(prop["cpu_s"] / prop["planes"], 2)
    result["propose_stacks"] = prop
    print(f"propose {len(ids)} stacks: {prop}", flush=True)

    # the same planes as 2D images, proposed by the same model
    flat = work / "planes"
    flat.mkdir(exist_ok=True)
    names = []
    for i in ids:
        for n, plane in enumerate(tifffile.imread(ds.image_path(i))):
            tifffile.imwrite(flat / f"{i}_z{n}.tif", plane)
            names.append(f"{i}_z{n}")
    root2 = work / "planes-project"
    run(["init", str(root2)], 1)
    run(["import", str(root2), str(flat)], 1)
    with Project.open(root2) as proj:
        proj.register_model(model_dir, round=1, method="diffseg", model_id="from-stacks")
        proj.set_active_model("from-stacks")
    prop2 = run(["propose", str(root2), *quick], args.threads)
    prop2["planes"] = len(names)
    prop2["s_per_plane"] = round(prop2["wall_s"] / prop2["planes"], 2)
    prop2["cpu_s_per_plane"] = round(prop2["cpu_s"] / prop2["planes"], 2)
    result["propose_2d"] = prop2
    # CPU seconds do not depend on what else the machine runs; each includes the job's start-up
    result["stack_plane_vs_2d_cpu"] = round(prop["cpu_s_per_plane"] / prop2["cpu_s_per_plane"], 2)
    print(f"propose {len(names)} 2D planes: {prop2}", flush=True)

    with Project.open(root) as proj:  # sanity only: the labels are algorithmic
        from napari_diffseg.predict import evaluate_folder

        scored = evaluate_folder(
            proj.model_dir(proj.active_model().id), args.dataset, split="test", device="cpu"
        )
        result["sanity_test_dice_vs_algorithmic_labels"] = round(float(scored["dice_mean"]), 3)
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
