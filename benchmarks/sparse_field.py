"""Sparse and empty fields: the model's fixed normalisation against the old per-image one (issue 12).

    OMP_NUM_THREADS=1 nice python benchmarks/sparse_field.py                 # cpu preset, seed 0
    OMP_NUM_THREADS=1 nice python benchmarks/sparse_field.py --seeds 0 1 2   # more seeds
    python benchmarks/sparse_field.py --report-only                          # the table from the JSON

For each seed, two models are trained by ``diffseg experiment``'s own code (:func:`~napari_diffseg.experiment.
run_experiment`: supervised, every train image of ``../shared/data/dsb2018_nuclei`` labeled, 20 % of them
carved off for validation, the ``cpu`` preset), identical but for the normalisation of their input:

* **before** — ``normalization="per_image"``: each image clipped to its own 0.5 / 99.5 percentiles and
  standardised (the scheme of every model saved before issue 12, still used for models without statistics);
* **after** — ``normalization="dataset"`` (the default): per channel, the 1 / 99.8 percentiles of the train
  images' pooled pixels map to 0 / 1, stored with the model.

Each saved model is then loaded as ``diffseg predict`` loads it and predicts the real sparse-field case
(``../shared/cases/sparse_field``): ``sparse.tif`` (768², three real nuclei, 0.072 % foreground) scored
with Dice against ``sparse_mask.tif``, and ``empty.tif`` (the same camera's background, no nucleus) as
the share of pixels predicted foreground. The dense DSB test split (13 images, never trained on) gives the
Dice both models keep on ordinary fields. Targets (issue 12): sparse Dice >= 0.8, empty < 0.5 %, dense test
Dice not worse.

Results: ``benchmarks/results/sparse_field/seed<S>.json`` (every figure, per-image test Dice, provenance)
and ``summary.md``. Models go to a temp folder (``--work``), never into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
CASE = HERE.parents[1] / "shared" / "cases" / "sparse_field"
OUT = HERE / "results" / "sparse_field"
SCHEMES = ("per_image", "dataset")
LABEL = {"per_image": "before (per image)", "dataset": "after (model's statistics)"}


def _machine() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def score_model(model_dir: Path, case: Path) -> dict:
    """Sparse-field Dice (and foreground share) and empty-field foreground share of a saved model."""
    import numpy as np

    from napari_diffseg.core.metrics import segmentation_metrics
    from napari_diffseg.data.io import read_image
    from napari_diffseg.predict import load_model, predict_image

    bundle, config = load_model(model_dir, "cpu")
    truth = (read_image(case / "sparse_mask.tif")[0] > 0).astype(np.int64)
    t0 = time.perf_counter()
    sparse = predict_image(bundle, config, read_image(case / "sparse.tif")).argmax(0)
    empty = predict_image(bundle, config, read_image(case / "empty.tif")).argmax(0)
    seconds = time.perf_counter() - t0
    m = segmentation_metrics(sparse, truth)
    return {
        "sparse_dice": float(m["dice"]),
        "sparse_foreground_percent": float(100 * sparse.mean()),
        "sparse_truth_percent": float(100 * truth.mean()),
        "empty_foreground_percent": float(100 * empty.mean()),
        "empty_foreground_pixels": int(empty.sum()),
        "predict_seconds_both": seconds,
        "normalization": config.get("normalization"),
    }


def run_seed(seed: int, preset: str, work: Path, dataset: Path, case: Path) -> dict:
    from napari_diffseg.experiment import run_experiment

    out: dict = {"seed": seed, "preset": preset, "dataset": dataset.name, "machine": _machine()}
    for scheme in SCHEMES:
        model_dir = work / f"{scheme}_seed{seed}"
        t0 = time.perf_counter()
        res = run_experiment(
            dataset,
            labeled_fraction=1.0,
            method="supervised",
            preset=preset,
            seed=seed,
            device="cpu",
            model_out=model_dir,
            normalization=scheme,
        )
        figures = score_model(model_dir, case)
        out[scheme] = {
            "test_dice_mean": res["test"]["dice_mean"],
            "test_dice_std": res["test"]["dice_std"],
            "test_iou_mean": res["test"]["iou_mean"],
            "test_dice_per_image": {p["id"][:8]: p["dice"] for p in res["test"]["per_image"]},
            "n_labeled": res["n_labeled"],
            "n_val": res["n_val"],
            "train_seconds": res["train_seconds"],
            "seconds": time.perf_counter() - t0,
            **figures,
        }
        out.setdefault("provenance", res["provenance"])
        print(_line(scheme, out[scheme]), flush=True)
    return out


def _line(scheme: str, r: dict) -> str:
    return (
        f"{LABEL[scheme]:28s} dense test Dice {r['test_dice_mean']:.3f} ± {r['test_dice_std']:.3f} | sparse.tif "
        f"Dice {r['sparse_dice']:.3f} ({r['sparse_foreground_percent']:.3f} % foreground, truth "
        f"{r['sparse_truth_percent']:.3f} %) | empty.tif {r['empty_foreground_percent']:.3f} % foreground "
        f"({r['empty_foreground_pixels']} px) | {r['train_seconds']:.0f} s training"
    )


def summary(out_dir: Path) -> str:
    import numpy as np

    runs = [json.loads(p.read_text()) for p in sorted(out_dir.glob("seed*.json"))]
    if not runs:
        return "no results yet"
    lines = [
        "# Sparse and empty fields: per-image normalisation (before) vs the model's statistics (after)",
        "",
        f"Supervised students, every DSB 2018 train image labeled (20 % carved for validation), preset "
        f"`{runs[0]['preset']}`, seeds {', '.join(str(r['seed']) for r in runs)}; {runs[0]['machine']}. "
        "Targets: sparse Dice >= 0.8, empty < 0.5 % foreground, dense test Dice kept.",
        "",
        "| seed | normalisation | dense test Dice (13 images) | sparse.tif Dice | sparse.tif foreground | "
        "empty.tif foreground |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        for s in SCHEMES:
            x = r[s]
            lines.append(
                f"| {r['seed']} | {LABEL[s]} | {x['test_dice_mean']:.3f} ± {x['test_dice_std']:.3f} | "
                f"{x['sparse_dice']:.3f} | {x['sparse_foreground_percent']:.3f} % (truth "
                f"{x['sparse_truth_percent']:.3f} %) | {x['empty_foreground_percent']:.3f} % |"
            )
    if len(runs) > 1:
        for s in SCHEMES:
            d = [r[s]["test_dice_mean"] for r in runs]
            sp = [r[s]["sparse_dice"] for r in runs]
            em = [r[s]["empty_foreground_percent"] for r in runs]
            lines.append(
                f"| mean | {LABEL[s]} | {np.mean(d):.3f} | {np.mean(sp):.3f} | | {np.mean(em):.3f} % |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--preset", default="cpu", help="cpu (the benchmark) or tiny (a smoke test)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", type=Path, default=DATA / "dsb2018_nuclei")
    p.add_argument("--case", type=Path, default=CASE)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--work", type=Path, default=None, help="where the models go (default: a temp folder)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)
        args.out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="sparse_field_") as tmp:
            work = args.work or Path(tmp)
            for seed in args.seeds:
                res = run_seed(seed, args.preset, work, args.data, args.case)
                res["threads"] = args.threads
                name = f"seed{seed}.json" if args.preset == "cpu" else f"{args.preset}_seed{seed}.json"
                (args.out / name).write_text(json.dumps(res, indent=2))
    text = summary(args.out)
    if not args.report_only:
        (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
