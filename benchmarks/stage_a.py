"""Stage A alone: does the label-free teacher learn more than a threshold? (issue 14, item 4)

    python benchmarks/stage_a.py --dataset ../shared/data/glas --variants current hinge highnoise both
    python benchmarks/stage_a.py --dataset ... --variants current split --seeds 0 1 2 [--steps 500]
    python benchmarks/stage_a.py --dataset ... --report-only
    python benchmarks/stage_a.py --dataset ... --references        # how far a label-free split can go
    python benchmarks/stage_a.py --dataset ... --distill otsu --seeds 0 1 2   # a student trained on a split

Each variant pretrains the teacher (Stage A only, the `cpu` preset's budget unless --steps) on every train
image of the dataset (no label is read) and scores its one-step masks against the ground truth with the best
class permutation, beside Otsu's threshold and an all-foreground mask on the same images
(``experiment.label_free_report``). Results: ``benchmarks/results/stage_a/<dataset>/<variant>_s<seed>.json``;
a variant whose JSON exists is skipped.

``--references`` asks how far *any* label-free split of these images goes, to size the goal (beat Otsu and
all-foreground by 0.05): Otsu's threshold of the image smoothed at several scales, skimage's other global
thresholds (Li, triangle, Yen, isodata, mean), the lower threshold of a 3-class Otsu, the hysteresis from it to
Otsu's threshold (``core.label_free.hysteresis_split``, the split Stage A's anchor uses), 2-means clustering of
per-pixel features (each channel's local mean and local standard deviation at one or several scales) and, on
colour images, the haematoxylin / eosin ratio of a colour deconvolution, per image, best permutation, on the same
train images and on the test images, and the best of them per image picked with the labels (a ceiling for
any choice among them); written to ``references.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from napari_diffseg.base.preprocessing import Normalization, dataset_statistics
from napari_diffseg.base.presets import get_preset
from napari_diffseg.core.inference import predict_probs
from napari_diffseg.core.label_free import hysteresis_split
from napari_diffseg.core.models import ModelBundle, ModelSpec, preprocess
from napari_diffseg.core.training import TrainData, pretrain_teacher, train_baseline
from napari_diffseg.data.dataset import DatasetFolder, StackPlanes
from napari_diffseg.experiment import (
    _perm_dice,
    dataset_channels,
    label_free_report,
    load_images,
    otsu_labels,
    provenance,
)

HERE = Path(__file__).resolve().parent
# Stage A before issue 14 (noise target, 50/50 class prior, no split anchor), pinned so that the JSONs
# stay comparable whatever the defaults become.
OLD = {
    "pretrain_predict_x0": False,
    "pretrain_class_var_weight": 0.0,
    "pretrain_min_class_share": 0.0,
    "pretrain_split_weight": 0.0,
    "pretrain_smooth_weight": 0.0,
}
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
    # on dark-field images the one-step mask is also pulled towards a classical split
    # (core.label_free.anchor_split): the default since issue 14
    "split": {**OLD, "pretrain_split_weight": 1.0},
    # the anchor weighted more: does Stage A reach its split within the `cpu` preset's 150 steps?
    "split3": {**OLD, "pretrain_split_weight": 3.0},
    "split10": {**OLD, "pretrain_split_weight": 10.0},
    # split10 with the mask's spatial continuity (``pretrain_smooth_weight``): on GlaS split10 drew a
    # checkerboard
    "split10smooth1": {**OLD, "pretrain_split_weight": 10.0, "pretrain_smooth_weight": 1.0},
    "split10smooth0.3": {**OLD, "pretrain_split_weight": 10.0, "pretrain_smooth_weight": 0.3},
    "x0kmeanssmooth1": {
        "pretrain_predict_x0": True,
        "pretrain_class_var_weight": 1.0,
        "pretrain_min_class_share": 0.05,
        "pretrain_split_weight": 10.0,
        "pretrain_smooth_weight": 1.0,
    },
    "split10smooth3": {**OLD, "pretrain_split_weight": 10.0, "pretrain_smooth_weight": 3.0},
    "split10smooth10": {**OLD, "pretrain_split_weight": 10.0, "pretrain_smooth_weight": 10.0},
}


def variant_name(variant: str, seed: int, steps: int | None, normalization: str = "per_image") -> str:
    """``<variant>[_steps<n>][_dsnorm]_s<seed>.json``: the preset's budget unnamed, another one in the name;
    ``_dsnorm`` for the dataset's statistics (the normalisation of a project and of ``diffseg experiment``)
    instead of each image's own 0.5 / 99.5 % clip (the default here, as the first runs had it)."""
    norm = "_dsnorm" if normalization == "dataset" else ""
    return f"{variant}{'' if steps is None else f'_steps{steps}'}{norm}_s{seed}.json"


def _view(dataset: Path) -> tuple[DatasetFolder | StackPlanes, list[str], list[str]]:
    """The dataset as the 2D networks see it, with its train and test ids: a folder of z-stacks as its
    planes (``<id>@z<n>``, as ``diffseg experiment`` trains on them), else the folder itself."""
    folder = DatasetFolder(dataset)
    if folder.holds_stacks():
        planes = StackPlanes(folder)
        return planes, planes.plane_ids(folder.train_ids), planes.plane_ids(folder.test_ids)
    return folder, folder.train_ids, folder.test_ids


def _normalization(
    ds: DatasetFolder, ids: list[str], channels: int, normalization: str
) -> Normalization | None:
    """The statistics pooled over ``ids`` (``dataset``, as a project's first model has them), or None (each
    image clipped to its own percentiles)."""
    if normalization not in ("dataset", "per_image"):
        raise SystemExit(f"--normalization must be dataset or per_image, not {normalization!r}")
    return (
        dataset_statistics((ds.load_image(i) for i in ids), channels) if normalization == "dataset" else None
    )


def run(
    dataset: Path, variant: str, seed: int, steps: int | None, out: Path, normalization: str = "per_image"
) -> dict:
    pr = get_preset("cpu").parse_overrides(VARIANTS[variant])
    if steps is not None:
        pr = pr.with_overrides(pretrain_steps=steps)
    ds, ids, _ = _view(dataset)
    channels = dataset_channels(ds, ids)
    norm = _normalization(ds, ids, channels, normalization)
    images = load_images(ds, ids, channels, norm)
    spec = ModelSpec("diffseg", channels, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim)
    bundle = ModelBundle(spec, seed=seed, normalization=norm)
    t0 = time.perf_counter()
    for _ in pretrain_teacher(
        bundle, images, pr, generator=torch.Generator().manual_seed(seed), device=torch.device("cpu")
    ):
        pass
    seconds = time.perf_counter() - t0
    gt = [i for i in ids if ds.has_mask(i)][::2]
    lf = label_free_report(bundle, load_images(ds, gt, channels, norm), [ds.load_mask(i) for i in gt], pr)
    result = {
        "variant": variant,
        "overrides": VARIANTS[variant],
        "seed": seed,
        "dataset": dataset.resolve().name,
        "normalization": normalization,
        "label_free": lf,
        "pretrain_seconds": seconds,
        "provenance": provenance(pr, "cpu"),
    }
    (out / variant_name(variant, seed, steps, normalization)).write_text(json.dumps(result, indent=2))
    return result


# Label-free references (``--references``): smoothing scales of Otsu's threshold, scale sets of the
# 2-means features.
OTSU_SIGMAS = (0.0, 1.0, 2.0, 4.0, 8.0)
KMEANS_SCALES: tuple[tuple[float, ...], ...] = (
    (1.0,),
    (2.0,),
    (4.0,),
    (1.0, 4.0),
    (2.0, 8.0),
    (1.0, 2.0, 4.0, 8.0),
)


def smoothed_otsu(x: torch.Tensor, sigma: float) -> np.ndarray:
    """Otsu's threshold (:func:`~napari_diffseg.experiment.otsu_labels`) of the image after a Gaussian of
    ``sigma`` px on each channel → 0/1."""
    from skimage.filters import gaussian

    if sigma > 0:
        x = torch.from_numpy(gaussian(x.float().numpy(), sigma, channel_axis=0))
    return otsu_labels(x)


def kmeans2(x: torch.Tensor, scales: tuple[float, ...], iters: int = 30, sample: int = 20000) -> np.ndarray:
    """2-means of per-pixel features (each channel's local mean and local std at each scale, z-scored),
    fitted on a seeded sample of pixels from centres at the 10th and 90th percentiles → 0/1."""
    from skimage.filters import gaussian

    a = x.float().numpy()
    feats = []
    for s in scales:
        for c in a:
            m = gaussian(c, s)
            feats += [m, np.sqrt(np.maximum(gaussian(c * c, s) - m * m, 0.0))]
    f = np.stack(feats, -1).reshape(-1, len(feats))
    f = (f - f.mean(0)) / (f.std(0) + 1e-6)
    rng = np.random.default_rng(0)
    sub = f[rng.choice(len(f), min(len(f), sample), replace=False)]
    centres = np.stack([np.percentile(sub, 10, axis=0), np.percentile(sub, 90, axis=0)])
    for _ in range(iters):
        near = ((sub[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        centres = np.stack([sub[near == j].mean(0) if (near == j).any() else centres[j] for j in range(2)])
    return ((f[:, None] - centres[None]) ** 2).sum(-1).argmin(1).reshape(a.shape[1:]).astype(np.int64)


#: skimage's global thresholds besides Otsu, on the channel-mean image (as ``otsu_labels`` takes it)
THRESHOLDS = ("li", "triangle", "yen", "isodata", "mean")


def global_threshold(x: torch.Tensor, method: str) -> np.ndarray:
    """skimage's ``threshold_<method>`` of the channel-mean image → 0/1 (all 0 on a flat image)."""
    from skimage import filters

    grey = x.float().mean(0).numpy()
    if float(grey.max()) <= float(grey.min()):
        return np.zeros(grey.shape, dtype=np.int64)
    return (grey > getattr(filters, f"threshold_{method}")(grey)).astype(np.int64)


def multiotsu_low(x: torch.Tensor) -> np.ndarray:
    """The lower of the two thresholds of a 3-class Otsu on the channel-mean image → 0/1: one very bright
    object (a mitotic nucleus, a bright streak) then gets its own class instead of pushing the one
    threshold above the dim nuclei (all 0 on an image with fewer than three grey levels)."""
    from skimage.filters import threshold_multiotsu

    grey = x.float().mean(0).numpy()
    if np.unique(grey).size < 3:
        return np.zeros(grey.shape, dtype=np.int64)
    return (grey > threshold_multiotsu(grey, 3)[0]).astype(np.int64)


#: smoothing scales (px) of the stain-ratio reference
STAIN_SIGMAS = (8.0, 16.0)


def stain_ratio(raw: np.ndarray, sigma: float) -> np.ndarray | None:
    """For a colour (H&E) image: the ratio of the haematoxylin to the eosin density (skimage's colour
    deconvolution of the *raw* RGB, before any normalisation changes its colour balance), each smoothed at
    ``sigma`` px, Otsu's threshold, holes filled → 0/1: glands are rich in nuclei and poor in stroma. ``None``
    for an image that is not colour (a grey image stored as RGB included)."""
    from scipy.ndimage import binary_fill_holes
    from skimage.color import rgb2hed
    from skimage.filters import gaussian, threshold_otsu

    a = np.asarray(raw, dtype=np.float64)
    if a.ndim != 3 or a.shape[0] < 3 or (np.array_equal(a[0], a[1]) and np.array_equal(a[1], a[2])):
        return None
    rgb = np.moveaxis(a[:3], 0, -1)
    rgb = rgb / max(float(rgb.max()), 1e-12)
    hed = rgb2hed(rgb)
    ratio = gaussian(hed[..., 0], sigma) / (gaussian(hed[..., 1], sigma) + 1e-3)
    if float(ratio.max()) <= float(ratio.min()):
        return np.zeros(ratio.shape, dtype=np.int64)
    return binary_fill_holes(ratio > threshold_otsu(ratio)).astype(np.int64)


ORACLE = "best of the above per image (picked with the labels: a ceiling, not a method)"
#: two label-free ways to choose among the splits on each image, scored to see whether a rule could reach the
#: ceiling without labels
PICKERS = {
    "consensus": "the split that agrees most with the others (label-free pick)",
    "edges": "the split whose outline lies on the strongest edges (label-free pick)",
}


def _outline(m: np.ndarray) -> np.ndarray:
    return (m != np.roll(m, 1, 0)) | (m != np.roll(m, 1, 1))


def pick(splits: dict[str, np.ndarray], x: torch.Tensor, how: str) -> str:
    """The name of the split chosen without labels: ``consensus``, the highest mean best-permutation Dice
    with every other split (both ways); ``edges``, the highest mean Sobel gradient of the channel-mean image
    along the split's outline (a split with no outline scores 0)."""
    names = list(splits)
    if how == "consensus":
        score = {
            n: np.mean(
                [
                    _perm_dice(splits[n], splits[o], 2, None) + _perm_dice(splits[o], splits[n], 2, None)
                    for o in names
                    if o != n
                ]
            )
            for n in names
        }
    elif how == "edges":
        from skimage.filters import sobel

        grad = sobel(x.float().mean(0).numpy())
        outlines = {n: _outline(splits[n]) for n in names}
        score = {n: float(grad[o].mean()) if o.any() else 0.0 for n, o in outlines.items()}
    else:
        raise ValueError(f"unknown pick {how!r}: one of {', '.join(PICKERS)}")
    return max(names, key=lambda n: score[n])


def label_free_splits(x: torch.Tensor, raw: np.ndarray) -> dict[str, np.ndarray]:
    """Every label-free split of one image, by name: ``x`` the preprocessed image, ``raw`` the file's
    ``(C, H, W)`` array (for the stain ratio)."""
    splits = {f"otsu sigma={s:g}": smoothed_otsu(x, s) for s in OTSU_SIGMAS}
    splits.update({f"{m} threshold": global_threshold(x, m) for m in THRESHOLDS})
    for sc in KMEANS_SCALES:
        splits["2-means scales=" + ",".join(f"{v:g}" for v in sc)] = kmeans2(x, sc)
    splits["3-class Otsu, lower threshold"] = multiotsu_low(x)
    splits["hysteresis, 3-class Otsu's lower threshold to Otsu's"] = hysteresis_split(x)
    for s in STAIN_SIGMAS:
        stain = stain_ratio(raw, s)
        if stain is not None:
            splits[f"H&E stain ratio sigma={s:g}, holes filled"] = stain
    return splits


def references_name(normalization: str = "per_image") -> str:
    return "references_dsnorm.json" if normalization == "dataset" else "references.json"


def references(dataset: Path, out: Path, normalization: str = "per_image") -> dict:
    """Every label-free reference on the train images Stage A is scored on, and on the test images; with
    ``normalization="dataset"`` on the images normalised with the train images' pooled statistics (the
    stain ratio reads the raw file either way)."""
    ds, train_ids, test_ids = _view(dataset)
    channels = dataset_channels(ds, train_ids)
    norm = _normalization(ds, train_ids, channels, normalization)
    result: dict = {"dataset": dataset.resolve().name, "normalization": normalization}
    for split, ids in (("train", [i for i in train_ids if ds.has_mask(i)][::2]), ("test", test_ids)):
        ids = [i for i in ids if ds.has_mask(i)]
        scores: dict[str, list[float]] = {}
        for i in ids:
            raw, y = ds.load_image(i), ds.load_mask(i)
            x = preprocess(
                raw, channels, norm
            )  # as load_images does: read once, for both the splits and the stain ratio
            scores.setdefault("all-foreground", []).append(_perm_dice(np.ones_like(y), y, 2, None))
            splits = label_free_splits(x, raw)
            dice = {n: _perm_dice(m, y, 2, None) for n, m in splits.items()}
            for n, d in dice.items():
                scores.setdefault(n, []).append(d)
            for how, label in PICKERS.items():
                scores.setdefault(label, []).append(dice[pick(splits, x, how)])
            scores.setdefault(ORACLE, []).append(max(max(dice.values()), scores["all-foreground"][-1]))
        result[split] = {"n_images": len(ids), "dice": {k: float(np.mean(v)) for k, v in scores.items()}}
    (out / references_name(normalization)).write_text(json.dumps(result, indent=2))
    return result


#: the label-free splits ``--distill`` can train a student on: name → split of (raw image, channels)
DISTILL = {
    "otsu": lambda raw, ch: smoothed_otsu(preprocess(raw, ch), 0.0),
    "multiotsu": lambda raw, ch: multiotsu_low(preprocess(raw, ch)),
    "hysteresis": lambda raw, ch: hysteresis_split(preprocess(raw, ch)),
    "stain16": lambda raw, ch: stain_ratio(raw, 16.0),
}


def distill_name(rule: str, seed: int, steps: int | None) -> str:
    """``distill_<rule>[_steps<n>]_s<seed>.json``: the preset's budget unnamed, another one in the name."""
    return f"distill_{rule}{'' if steps is None else f'_steps{steps}'}_s{seed}.json"


def distill(dataset: Path, rule: str, seed: int, steps: int | None, out: Path) -> dict:
    """Does a network trained on a label-free split of every train image learn more than the split? The
    ``supervised`` student (the `cpu` preset's network and budget unless ``steps``) trained on the split
    ``rule`` of every train image as if it were a mask, then scored (best permutation) beside the split on
    Stage A's images and on the test images — what any label-free stage that learns from such a split
    could hope for. Written to :func:`distill_name`."""
    pr = get_preset("cpu")
    if steps is not None:
        pr = pr.with_overrides(cotrain_steps=steps)
    ds = DatasetFolder(dataset)
    ids = ds.train_ids
    channels = dataset_channels(ds, ids)
    norm = _normalization(ds, ids, channels, "dataset")
    raws = [ds.load_image(i) for i in ids]
    targets = [DISTILL[rule](r, channels) for r in raws]
    if any(t is None for t in targets):
        raise SystemExit(f"the split {rule!r} does not apply to every image of {dataset}")
    spec = ModelSpec("supervised", channels, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim)
    bundle = ModelBundle(spec, seed=seed, normalization=norm)
    data = TrainData([bundle.preprocess(r) for r in raws], [torch.from_numpy(t) for t in targets])
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    for _ in train_baseline(bundle, data, pr, generator=gen, device=torch.device("cpu")):
        pass
    seconds = time.perf_counter() - t0

    def student(i: str) -> np.ndarray:
        x = bundle.preprocess(ds.load_image(i))[None]
        return predict_probs(bundle.deployed(), x, multiple=16).argmax(1)[0].numpy()

    def mean_dice(segment: Callable[[str], np.ndarray], which: list[str]) -> float:
        return float(np.mean([_perm_dice(segment(i), ds.load_mask(i), 2, None) for i in which]))

    def split_of(i: str) -> np.ndarray:
        return targets[ids.index(i)] if i in ids else DISTILL[rule](ds.load_image(i), channels)

    scored = [i for i in ids if ds.has_mask(i)][::2]
    tests = [i for i in ds.test_ids if ds.has_mask(i)]
    result = {
        "rule": rule,
        "seed": seed,
        "steps": pr.cotrain_steps,
        "dataset": dataset.resolve().name,
        "split_train": mean_dice(split_of, scored),
        "student_train": mean_dice(student, scored),
        "split_test": mean_dice(split_of, tests),
        "student_test": mean_dice(student, tests),
        "train_seconds": seconds,
        "provenance": provenance(pr, "cpu"),
    }
    (out / distill_name(rule, seed, steps)).write_text(json.dumps(result, indent=2))
    return result


def references_table(r: dict) -> str:
    tr, te = r["train"], r["test"]
    on = "the dataset's pooled statistics" if r.get("normalization") == "dataset" else "each image's own clip"
    lines = [
        f"## Label-free references on {r['dataset']} (best-permutation Dice, per image; normalised with {on})",
        "",
        f"| label-free split | train ({tr['n_images']}, every 2nd, Stage A's images) | test ({te['n_images']}) |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.3f} | {te['dice'][k]:.3f} |" for k, v in tr["dice"].items()]
    return "\n".join(lines)


def report(out: Path) -> str:
    rows = [
        json.loads(p.read_text()) for p in sorted(out.glob("*_s*.json")) if not p.name.startswith("distill_")
    ]
    lines = [
        f"## Stage A on {out.name} (best-permutation Dice, every 2nd train image)",
        "",
        "Normalisation: *image*, each image clipped to its own 0.5 / 99.5 % percentiles (the first runs);"
        " *dataset*, the statistics pooled over the train images, as a project's first model and"
        " `diffseg experiment` have them (`--normalization dataset`). Otsu is scored on the same images.",
        "",
        "| variant | steps | normalisation | seed | teacher | Otsu | all-foreground | teacher − best trivial | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lf = r["label_free"]
        norm = "dataset" if r.get("normalization") == "dataset" else "image"
        lines.append(
            f"| {r['variant']} | {r['provenance']['preset']['pretrain_steps']} | {norm} | {r['seed']} | {lf['teacher_dice']:.3f} | {lf['otsu_dice']:.3f} | "
            f"{lf['all_foreground_dice']:.3f} | {lf['teacher_minus_best_trivial']:+.3f} | "
            f"{r['pretrain_seconds']:.0f} |"
        )
    for name in (references_name("per_image"), references_name("dataset")):
        if (out / name).exists():
            lines += ["", references_table(json.loads((out / name).read_text()))]
    distilled = [json.loads(p.read_text()) for p in sorted(out.glob("distill_*_s*.json"))]
    if distilled:
        lines += [
            "",
            f"## A student trained on a label-free split of every train image ({out.name}, `--distill`)",
            "",
            "| split | student steps | seed | split, train | student, train | split, test | student, test | s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {d['rule']} | {d['provenance']['preset']['cotrain_steps']} | {d['seed']} | {d['split_train']:.3f} | {d['student_train']:.3f} | "
            f"{d['split_test']:.3f} | {d['student_test']:.3f} | {d['train_seconds']:.0f} |"
            for d in distilled
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=None, help="pretrain steps (default: the cpu preset's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--normalization",
        choices=["per_image", "dataset"],
        default="per_image",
        help="Stage A's and the scoring's images: each clipped to its own percentiles (default, as the first "
        "runs) or the dataset's pooled statistics (as a project's first model)",
    )
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--references", action="store_true", help="label-free references only (no training)")
    ap.add_argument(
        "--distill", choices=list(DISTILL), help="train a student on this label-free split (only)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = HERE / "results" / "stage_a" / args.dataset.resolve().name
    out.mkdir(parents=True, exist_ok=True)
    if args.references and not (out / references_name(args.normalization)).exists():
        references(args.dataset, out, args.normalization)
    if args.distill:
        for seed in args.seeds:
            if not (out / distill_name(args.distill, seed, args.steps)).exists():
                print(distill(args.dataset, args.distill, seed, args.steps, out), flush=True)
    if not args.report_only and not args.references and not args.distill:
        for seed in args.seeds:
            for v in args.variants:
                if not (out / variant_name(v, seed, args.steps, args.normalization)).exists():
                    r = run(args.dataset, v, seed, args.steps, out, args.normalization)
                    print(v, seed, r["label_free"], f"{r['pretrain_seconds']:.0f} s", flush=True)
    text = report(out)
    (out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
