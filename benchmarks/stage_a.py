"""Stage A alone: does the label-free teacher learn more than a threshold? (issue 14, item 4)

    python benchmarks/stage_a.py --dataset ../shared/data/glas --variants current hinge highnoise both
    python benchmarks/stage_a.py --dataset ... --report-only

Each variant pretrains the teacher (Stage A only, the `cpu` preset's budget unless --steps) on every train
image of the dataset (no label is read) and scores its one-step masks against the ground truth with the best
class permutation, beside Otsu's threshold and an all-foreground mask on the same images
(``experiment.label_free_report``). Results: ``benchmarks/results/stage_a/<dataset>/<variant>_s<seed>.json``;
a variant whose JSON exists is skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from napari_diffseg.base.presets import get_preset
from napari_diffseg.core.models import ModelBundle, ModelSpec
from napari_diffseg.core.training import pretrain_teacher
from napari_diffseg.data.dataset import DatasetFolder
from napari_diffseg.experiment import dataset_channels, label_free_report, load_images, provenance

HERE = Path(__file__).resolve().parent
# The preset's default Stage A (noise target, 50/50 class prior), pinned so that the JSONs stay
# comparable whatever the defaults become.
OLD = {"pretrain_predict_x0": False, "pretrain_class_var_weight": 0.0, "pretrain_min_class_share": 0.0}
VARIANTS: dict[str, dict] = {
    "current": OLD,
    "hinge": {**OLD, "pretrain_min_class_share": 0.02},
    "highnoise": {**OLD, "pretrain_t_min_frac": 0.5},
    "both": {**OLD, "pretrain_min_class_share": 0.02, "pretrain_t_min_frac": 0.5},
    # the image pathway predicts the clean image (x0), not the noise: the mask must carry the image
    "x0": {**OLD, "pretrain_predict_x0": True},
    "x0hinge": {**OLD, "pretrain_predict_x0": True, "pretrain_min_class_share": 0.05},
    # x0 + the within-class variance of the image under the mask (minimal at a K-means split) + a hinge
    # class prior: issue 14's redesign (opt-in)
    "x0kmeans": {
        "pretrain_predict_x0": True,
        "pretrain_class_var_weight": 1.0,
        "pretrain_min_class_share": 0.05,
    },
}


def run(dataset: Path, variant: str, seed: int, steps: int | None, out: Path) -> dict:
    pr = get_preset("cpu").parse_overrides(VARIANTS[variant])
    if steps is not None:
        pr = pr.with_overrides(pretrain_steps=steps)
    ds = DatasetFolder(dataset)
    ids = ds.train_ids
    channels = dataset_channels(ds, ids)
    images = load_images(ds, ids, channels)
    spec = ModelSpec("diffseg", channels, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim)
    bundle = ModelBundle(spec, seed=seed)
    t0 = time.perf_counter()
    for _ in pretrain_teacher(
        bundle, images, pr, generator=torch.Generator().manual_seed(seed), device=torch.device("cpu")
    ):
        pass
    seconds = time.perf_counter() - t0
    gt = [i for i in ids if ds.has_mask(i)][::2]
    lf = label_free_report(bundle, load_images(ds, gt, channels), [ds.load_mask(i) for i in gt], pr)
    result = {
        "variant": variant,
        "overrides": VARIANTS[variant],
        "seed": seed,
        "dataset": dataset.resolve().name,
        "label_free": lf,
        "pretrain_seconds": seconds,
        "provenance": provenance(pr, "cpu"),
    }
    (out / f"{variant}_s{seed}.json").write_text(json.dumps(result, indent=2))
    return result


def report(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    lines = [
        f"## Stage A on {out.name} (best-permutation Dice, every 2nd train image)",
        "",
        "| variant | seed | teacher | Otsu | all-foreground | teacher − best trivial | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lf = r["label_free"]
        lines.append(
            f"| {r['variant']} | {r['seed']} | {lf['teacher_dice']:.3f} | {lf['otsu_dice']:.3f} | "
            f"{lf['all_foreground_dice']:.3f} | {lf['teacher_minus_best_trivial']:+.3f} | "
            f"{r['pretrain_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=None, help="pretrain steps (default: the cpu preset's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = HERE / "results" / "stage_a" / args.dataset.resolve().name
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for seed in args.seeds:
            for v in args.variants:
                if not (out / f"{v}_s{seed}.json").exists():
                    r = run(args.dataset, v, seed, args.steps, out)
                    print(v, seed, r["label_free"], f"{r['pretrain_seconds']:.0f} s", flush=True)
    text = report(out)
    (out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
