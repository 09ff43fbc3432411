"""Teacher cost and DDIM steps against quality (issue #2, docs/method.md "What is measured so far").

    python benchmarks/teacher_cost.py                      # step costs only (no trained model needed)
    python benchmarks/teacher_cost.py --model M --dataset D  # + DDIM steps S vs Dice and seconds

Prints (1) seconds per training step of the student, the teacher (Stage B) and a co-training step at
the `cpu` preset (128×128 patches, batch 8), measured in one process so the ratios are comparable;
(2) seconds per 256×256 proposal with E = 4 samples for S ∈ {1, 5, 10, 20, 50} and, with a trained
model, the teacher's Dice on 256×256 crops of every 8th test image; (3) seconds per prediction of a
DRIVE-sized (584×565) and a GlaS-sized (522×775) RGB image at the `cpu` preset by the students and by a
teacher deployed with ``deploy_best`` (``core.models.deployed_probs``), and their ratio.

    python benchmarks/teacher_cost.py --deploy-only          # (3) alone
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_diffseg.base.presets import get_preset
from napari_diffseg.core.diffusion import SamplerConfig
from napari_diffseg.core.inference import propose
from napari_diffseg.core.metrics import segmentation_metrics
from napari_diffseg.core.models import ModelBundle, ModelSpec, deployed_probs, load_bundle
from napari_diffseg.core.training import (
    TrainData,
    cotrain,
    teacher_check_config,
    train_baseline,
    train_teacher,
)

CPU = torch.device("cpu")


def _time_loop(make, steps: int) -> float:
    list(make(2))  # warm-up
    t0 = time.perf_counter()
    list(make(steps))
    return (time.perf_counter() - t0) / steps


def step_costs(steps: int = 10) -> dict[str, float]:
    pr = get_preset("cpu")
    g = torch.Generator().manual_seed(0)
    imgs = [torch.randn(3, 261, 387, generator=g) for _ in range(10)]
    masks = [(x[0] > 0).long() for x in imgs]
    data = TrainData(imgs[:3], masks[:3], unlabeled_images=imgs[3:])
    spec = lambda m: ModelSpec(m, 3, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim)  # noqa: E731
    sup, ds = ModelBundle(spec("supervised")), ModelBundle(spec("diffseg"))
    out = {
        "student_step_s": _time_loop(
            lambda n: train_baseline(sup, data, pr.with_overrides(cotrain_steps=n), generator=g, device=CPU),
            steps,
        ),
        "teacher_step_s": _time_loop(
            lambda n: train_teacher(ds, data, pr.with_overrides(teacher_steps=n), generator=g, device=CPU),
            steps,
        ),
    }
    # co-training step without the pseudo-label refresh (refresh_every beyond the run)
    list(
        cotrain(
            ds, data, pr.with_overrides(cotrain_steps=1, refresh_every=10**6), generator=g, seed=0, device=CPU
        )
    )
    t0 = time.perf_counter()
    evs = list(
        cotrain(
            ds,
            data,
            pr.with_overrides(cotrain_steps=steps, refresh_every=10**6),
            generator=g,
            seed=0,
            device=CPU,
        )
    )
    total = time.perf_counter() - t0
    refresh_events = [e for e in evs if e.phase == "pseudo-labels"]
    refresh_s = refresh_events[-1].elapsed if refresh_events else 0.0
    out["cotrain_step_s"] = (total - refresh_s) / steps
    out["pseudo_label_refresh_s_per_image"] = refresh_s / len(data.unlabeled_images)
    out["teacher_over_student"] = out["teacher_step_s"] / out["student_step_s"]
    return out


def ddim_sweep(
    model: Path | None, dataset: Path | None, steps_list=(1, 5, 10, 20, 50), samples: int = 4
) -> list[dict]:
    if model is not None:
        bundle, _, _ = load_bundle(model, CPU)
    else:
        pr = get_preset("cpu")
        bundle = ModelBundle(ModelSpec("diffseg", 3, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim))
    crops: list[tuple[torch.Tensor, np.ndarray | None]] = []
    if dataset is not None:
        from napari_diffseg.data.dataset import DatasetFolder

        ds = DatasetFolder(dataset)
        for i in ds.test_ids[::8]:
            x = bundle.preprocess(ds.load_image(i))
            y = ds.load_mask(i)
            h0, w0 = (x.shape[1] - 256) // 2, (x.shape[2] - 256) // 2
            if h0 < 0 or w0 < 0:
                continue
            crops.append((x[:, h0 : h0 + 256, w0 : w0 + 256].clone(), y[h0 : h0 + 256, w0 : w0 + 256]))
    else:
        crops = [(torch.randn(bundle.spec.in_channels, 256, 256), None) for _ in range(3)]
    rows = []
    for s in steps_list:
        cfg = SamplerConfig(steps=s, samples=samples, rounds=1)
        secs, dice = [], []
        for j, (x, y) in enumerate(crops):
            t0 = time.perf_counter()
            prop = propose(
                bundle.mask_net,
                bundle.diffusion(),
                x[None],
                cfg,
                torch.Generator().manual_seed(j),
                multiple=bundle.spec.multiple,
                roi=256,
            )
            secs.append(time.perf_counter() - t0)
            if y is not None:
                dice.append(segmentation_metrics(prop.mask[0].numpy(), y)["dice"])
        rows.append(
            {
                "S": s,
                "E": samples,
                "seconds_per_256px_image": float(np.median(secs)),
                "dice": float(np.mean(dice)) if dice else None,
                "n_images": len(crops),
            }
        )
    return rows


def deploy_costs(repeats: int = 3) -> list[dict]:
    """Seconds per prediction (median of ``repeats``) of the students and of the deployed teacher."""
    pr = get_preset("cpu")
    bundle = ModelBundle(ModelSpec("diffseg", 3, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim))
    for net in bundle.nets.values():
        net.eval()
    rows = []
    for name, (h, w) in (("DRIVE-sized", (584, 565)), ("GlaS-sized", (522, 775))):
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
        secs = {}
        for who, sampler in (("students", None), ("teacher", teacher_check_config(pr))):
            bundle.teacher_sampler = sampler
            deployed_probs(bundle, x, roi=pr.roi_size, sw_batch=pr.sw_batch_size)  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                with torch.no_grad():
                    deployed_probs(bundle, x, roi=pr.roi_size, sw_batch=pr.sw_batch_size)
                times.append(time.perf_counter() - t0)
            secs[who] = float(np.median(times))
        rows.append({"image": f"{name} {h}×{w}", **secs, "ratio": secs["teacher"] / secs["students"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--dataset", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--deploy-only", action="store_true", help="only the prediction costs (3)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    deploy = deploy_costs()
    pr = get_preset("cpu")
    print(
        f"prediction at the `cpu` preset (threads={torch.get_num_threads()}; teacher: "
        f"{pr.refresh_ddim_steps} DDIM steps × {pr.refresh_samples} samples)"
    )
    print("| image | students s | teacher s | teacher / students |")
    print("|---|---|---|---|")
    for r in deploy:
        print(f"| {r['image']} | {r['students']:.2f} | {r['teacher']:.2f} | {r['ratio']:.1f} |")
    if args.deploy_only:
        if args.json:
            args.json.write_text(json.dumps({"deploy": deploy}, indent=2))
        return
    costs = step_costs()
    print(f"threads={torch.get_num_threads()}")
    for k, v in costs.items():
        print(f"{k:45s} {v:.3f}")
    rows = ddim_sweep(args.model, args.dataset)
    print("| S | E | s / 256² image | Dice |")
    print("|---|---|---|---|")
    for r in rows:
        d = "—" if r["dice"] is None else f"{r['dice']:.3f}"
        print(f"| {r['S']} | {r['E']} | {r['seconds_per_256px_image']:.2f} | {d} |")
    if args.json:
        args.json.write_text(json.dumps({"costs": costs, "ddim": rows, "deploy": deploy}, indent=2))


if __name__ == "__main__":
    main()
