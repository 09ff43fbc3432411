"""What a round's proposals would cost to correct, image by image (a follow-up to ``hitl.py``).

    python benchmarks/hitl.py --dataset glas --arms power --keep --work /tmp/hitl ...   # keep the project
    python benchmarks/hitl_proposal_cost.py /tmp/hitl/glas_power_s0 round2-job3 --dataset glas

For every training image with a proposal from the given model: changed÷drawn (pixels the annotator must
change over the foreground they would paint from scratch) and edit Dice against the ground truth. Prints
how well the image's mean uncertainty predicts that cost (Spearman), the cost by uncertainty band, and
whether simple alternatives would have made the proposal cheaper to correct: another threshold on the
foreground probability, removing small objects and holes, or averaging the teacher's proposal with the
students' prediction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"


def _without_small_parts(mask, min_size: int):
    """``mask`` without objects and holes smaller than ``min_size`` pixels (scikit-image's keyword for
    this changed in 0.26: ``min_size``/``area_threshold`` became ``max_size``, inclusive)."""
    import inspect

    from skimage import morphology

    if "max_size" in inspect.signature(morphology.remove_small_objects).parameters:
        kept = morphology.remove_small_objects(mask, max_size=min_size - 1)
        return morphology.remove_small_holes(kept, max_size=min_size - 1)
    kept = morphology.remove_small_objects(mask, min_size=min_size)
    return morphology.remove_small_holes(kept, area_threshold=min_size)


def main() -> None:
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from napari_diffseg.base.labels import edit_stats
    from napari_diffseg.base.presets import get_preset
    from napari_diffseg.core.inference import predict_probs
    from napari_diffseg.core.models import load_bundle
    from napari_diffseg.data.dataset import DatasetFolder
    from napari_diffseg.project import Project

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("project", help="a project kept by hitl.py --keep")
    p.add_argument("model", help="the model whose proposals to score (e.g. round2-job3)")
    p.add_argument("--dataset", default="glas")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--preset", default="cpu", help="the preset the project was trained with (tiling)")
    p.add_argument("--min-size", type=int, default=200, help="objects and holes smaller than this go")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    ds = DatasetFolder(Path(args.data) / args.dataset)
    preset = get_preset(args.preset)
    variants = ["proposal (argmax)", "threshold 0.3", "threshold 0.4", "threshold 0.6"]
    variants += [f"small objects/holes < {args.min_size} px removed", "mean of teacher and students"]
    changed = dict.fromkeys(variants, 0)
    drawn_total = 0
    rows = []  # (mean uncertainty, changed, drawn, edit Dice) of the proposal as made
    with Project.open(args.project) as project:
        bundle, _, _ = load_bundle(project.model_dir(args.model), torch.device("cpu"))
        nets = bundle.deployed()
        for rec in project.images(split="train"):
            found = project.proposal(rec.id, args.model)
            if found is None:
                continue
            _, probs, unc = found
            truth = ds.load_mask(rec.name)
            drawn = int(np.count_nonzero(truth))
            fg = probs[1]
            x = bundle.preprocess(ds.load_image(rec.name))
            student = predict_probs(
                nets,
                x[None],
                multiple=bundle.spec.multiple,
                roi=preset.roi_size,
                sw_batch=preset.sw_batch_size,
            )[0].numpy()
            masks = [probs.argmax(0), fg > 0.3, fg > 0.4, fg > 0.6]
            masks.append(_without_small_parts(fg > 0.5, args.min_size))
            masks.append(((probs + student) / 2).argmax(0))
            stats = [edit_stats(mask.astype(np.uint8), truth) for mask in masks]
            for name, (_, n) in zip(variants, stats, strict=True):
                changed[name] += n
            dice, n = stats[0]  # the proposal as made
            rows.append((float(unc.mean()), n, drawn, dice))
            drawn_total += drawn
    if not rows:
        raise SystemExit(f"no proposals from model {args.model!r} in {args.project}")
    a = np.array(rows)
    ratio = a[:, 1] / np.maximum(a[:, 2], 1)
    print(f"{len(a)} images with a proposal from {args.model}")
    print(f"Spearman(mean uncertainty, changed÷drawn) = {spearmanr(a[:, 0], ratio)[0]:.2f}")
    print(f"Spearman(mean uncertainty, edit Dice)     = {spearmanr(a[:, 0], a[:, 3])[0]:.2f}")
    order = np.argsort(-a[:, 0])
    thirds = np.array_split(order, 3)
    for name, idx in zip(
        ("most uncertain third", "middle third", "least uncertain third"), thirds, strict=True
    ):
        b = a[idx]
        print(
            f"  {name:22s} changed÷drawn {b[:, 1].sum() / b[:, 2].sum():.2f}  edit Dice {b[:, 3].mean():.3f}"
        )
    print("changed÷drawn over all of them (pooled), had the annotator started from:")
    for name in variants:
        print(f"  {name:40s} {changed[name] / drawn_total:.3f}")


if __name__ == "__main__":
    main()
