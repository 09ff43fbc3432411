"""Does the teacher's uncertainty point at its proposals' errors? Measured on real data (issue 17).

    OMP_NUM_THREADS=1 python benchmarks/uncertainty_errors.py --dataset dsb2018_nuclei
    OMP_NUM_THREADS=1 python benchmarks/uncertainty_errors.py --dataset glas --n-train 30
    python benchmarks/uncertainty_errors.py --report-only

Through the product (a project store and the backend's own ``pretrain`` / ``cotrain`` / ``propose`` jobs,
run in-process): ``--n-train`` training images of the dataset's train split, ``--k`` of them with their
ground truth; ``--n-eval`` images of its test split are imported as held-out ``test`` images (never
trained on, never used to choose a checkpoint) and proposed on. After label-free pretraining (round 0)
and after each co-training round (``--rounds``; before each further round ``--b`` more training images,
drawn at random, get their ground truth, as corrections would) the teacher proposes on the held-out
images (DDIM S = 5, E = 4), and :func:`napari_diffseg.base.uncertainty.error_detection` scores each pixel's uncertainty as a
detector of the proposal's wrong pixels: AUROC, the error-detection curve and its area, and what the
Annotate widget's default threshold (0.5 bit) colours. :func:`~napari_diffseg.base.uncertainty.summarize_map`
says on how many images the widget would call the map flat.

Results: ``benchmarks/results/uncertainty/<dataset>[_<key>=<value>][_s<seed>].json`` (``--set`` overrides,
a seed other than 0; each with its ``provenance``: commit, dirty flag, resolved preset, versions),
``summary.md`` (a row per file, then mean ± sample std over the seeds of each dataset and overrides) and
``errors.png`` (seed 0). The working
project goes to ``--work`` (default: a temp folder), never into the repository; the data are read from
``../shared/data`` and never copied into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
OUT = HERE / "results" / "uncertainty"
# The demo's budget (a 2-core laptop): the cpu preset with shorter stages.
OVERRIDES = {
    "batch_size": 4,
    "pretrain_steps": 60,
    "teacher_steps": 100,
    "cotrain_steps": 150,
    "refresh_every": 150,
    "roi_size": 256,
    "checkpoint_every": 50,
}
PROPOSAL = {"steps": 5, "samples": 4, "rounds": 1}


def _machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def run(
    dataset: str,
    n_train: int,
    k: int,
    n_eval: int,
    seed: int,
    work: Path,
    threads: int,
    rounds: int,
    b: int,
    overrides: dict | None = None,
) -> dict:
    overrides = {**OVERRIDES, **(overrides or {})}
    import numpy as np
    import torch

    from napari_diffseg.backend.jobs import execute_job, start_job
    from napari_diffseg.base.uncertainty import error_detection, summarize_map
    from napari_diffseg.data.dataset import DatasetFolder
    from napari_diffseg.project import Project

    torch.set_num_threads(threads)
    ds = DatasetFolder(DATA / dataset)
    rng = np.random.default_rng(seed)
    train_ids = sorted(ds.ids_in_split("train"))
    train_ids = sorted(rng.choice(train_ids, size=min(n_train, len(train_ids)), replace=False).tolist())
    labeled = sorted(rng.choice(train_ids, size=k, replace=False).tolist())
    eval_ids = sorted(ds.ids_in_split("test"))
    eval_ids = sorted(rng.choice(eval_ids, size=min(n_eval, len(eval_ids)), replace=False).tolist())
    root = work / f"{dataset}-s{seed}"
    from napari_diffseg.base.presets import get_preset
    from napari_diffseg.experiment import git_state, provenance

    started = git_state()  # the code this run executes, whatever is committed while it runs
    result: dict = {
        "dataset": dataset,
        "seed": seed,
        "train_images": len(train_ids),
        "labeled": labeled,
        "held_out": eval_ids,
        "overrides": overrides,
        "proposal": PROPOSAL,
        "machine": _machine(),
        "threads": threads,
        "rounds": {},
        "seconds": {},
    }
    with Project.create(root) as proj:
        for image_id in train_ids:
            proj.import_array(ds.load_image(image_id), image_id)
            if image_id in labeled:
                proj.save_annotation(image_id, ds.load_mask(image_id), kind="ground_truth", replaces=None)
        for image_id in eval_ids:
            proj.import_array(ds.load_image(image_id), image_id, split="test")

    def job(kind: str, params: dict) -> None:
        t0 = time.perf_counter()
        with Project.open(root) as proj:
            job_id = start_job(proj, kind, {"preset": "cpu", "seed": seed, **params})
        state = execute_job(root, job_id)
        if state != "done":
            raise RuntimeError(f"{kind} job {job_id} ended {state}")
        result["seconds"][f"{kind}_{len(result['seconds'])}"] = round(time.perf_counter() - t0, 1)

    def score(label: str) -> None:
        job("propose", {"ids": eval_ids, **PROPOSAL})
        uncs, props, truths, flat = [], [], [], 0
        with Project.open(root) as proj:
            model = proj.active_model().id
            for image_id in eval_ids:
                found = proj.proposal(image_id, model)
                assert found is not None, f"no proposal of {model} for {image_id}"
                _record, probs, unc = found
                uncs.append(unc)
                props.append(np.asarray(probs).argmax(0))
                truths.append(ds.load_mask(image_id) > 0)
                flat += summarize_map(unc).flat
        d = error_detection(uncs, props, truths, thresholds=(0.3, 0.5, 0.7)).to_dict()
        d["model"] = model
        d["flat_maps"] = flat
        d["proposal_dice"] = [
            float(2 * (p & t).sum() / max(1, p.sum() + t.sum()))
            for p, t in ((p > 0, t) for p, t in zip(props, truths, strict=True))
        ]
        result["rounds"][label] = d
        print(
            f"{dataset} {label}: AUROC {d['auroc']:.3f}, area {d['area']:.3f}, error rate "
            f"{100 * d['error_rate']:.1f} %, at 0.5 bit {d['at_threshold']['0.5']}, flat maps {flat}/{len(eval_ids)}",
            flush=True,
        )

    result["provenance"] = provenance(get_preset("cpu").parse_overrides(overrides), "cpu", started=started)
    job("pretrain", {"overrides": overrides})
    score("round 0 (label-free)")
    unlabeled = [i for i in train_ids if i not in labeled]
    for r in range(1, rounds + 1):
        if r > 1:  # b more labels, as the annotator's corrections would add
            more = sorted(rng.choice(unlabeled, size=min(b, len(unlabeled)), replace=False).tolist())
            unlabeled = [i for i in unlabeled if i not in more]
            with Project.open(root) as proj:
                for image_id in more:
                    proj.save_annotation(image_id, ds.load_mask(image_id), kind="correction", replaces=None)
            result["labeled"] = [*result["labeled"], *more]
        job("cotrain", {"overrides": overrides, "rounds": 1})
        score(f"round {r}")
    return result


def _changed(res: dict) -> str:
    """`` (key=value, …)``: the overrides a result ran with beyond the demo's budget of today (empty: none)."""
    extra = {k: v for k, v in res.get("overrides", {}).items() if k not in OVERRIDES or OVERRIDES[k] != v}
    return f" ({', '.join(f'{k}={v}' for k, v in sorted(extra.items()))})" if extra else ""


def _label(res: dict) -> str:
    """The dataset, the overrides it ran with (:func:`_changed`) and its seed where not 0."""
    return f"{res['dataset']}{_changed(res)}" + (f", seed {res['seed']}" if res.get("seed") else "")


def _over_seeds(results: list[dict]) -> list[str]:
    """Rows of mean ± sample std (ddof = 1) over seeds, for each dataset and overrides run on two seeds or
    more: proposal Dice, pixels wrong, AUROC per round."""
    import numpy as np

    groups: dict[str, list[dict]] = {}
    for res in results:
        groups.setdefault(f"{res['dataset']}{_changed(res)}", []).append(res)
    rows = []
    for name, group in groups.items():
        if len(group) < 2:
            continue
        seeds = ", ".join(str(r.get("seed", 0)) for r in group)
        for label in group[0]["rounds"]:
            runs = [r["rounds"][label] for r in group if label in r["rounds"]]
            dice = [float(np.mean(d["proposal_dice"])) for d in runs]
            wrong = [100 * d["error_rate"] for d in runs]
            auroc = [d["auroc"] for d in runs]
            rows.append(
                f"| {name} | {label} | {seeds} | "
                + " | ".join(
                    f"{np.mean(v):.{n}f} ± {np.std(v, ddof=1):.{n}f}"
                    for v, n in ((dice, 3), (wrong, 1), (auroc, 3))
                )
                + " |"
            )
    if not rows:
        return []
    return [
        "",
        "Over seeds (mean ± sample std; each seed draws its own training, labeled and held-out images):",
        "",
        "| dataset | model | seeds | proposal Dice | pixels wrong (%) | AUROC |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def report(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    if not results:
        return
    lines = [
        "# Does the uncertainty point at the errors? (issue 17)",
        "",
        "`benchmarks/uncertainty_errors.py`: held-out test images of each dataset, proposals with DDIM S = 5, "
        "E = 4; every pixel's uncertainty scored as a detector of the proposal's wrong pixels. AUROC 0.5 = "
        "chance; *area*: under the error-detection curve (pixels inspected most uncertain first against the "
        "share of wrong pixels found; 0.5 = random order, best = 1 − error rate / 2); *at 0.5 bit*: the share "
        "of pixels the Annotate widget colours at its default threshold, and the share of wrong pixels among "
        "them; *flat*: maps the widget calls uninformative.",
        "",
        "| dataset | model | images | proposal Dice (mean) | pixels wrong | AUROC | area (best) | at 0.5 bit: coloured / errors in it | flat maps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    shown = [r for r in results if not r.get("seed")]  # the figure: seed 0 of each dataset and overrides
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(5.2 * max(len(shown), 1), 4.6), squeeze=False)
    panel = {id(r): ax for r, ax in zip(shown, axes.flat, strict=False)}
    for res in results:
        ax = panel.get(id(res))
        if ax is not None:
            ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="random order")
        for style, (label, d) in zip(("-", "-.", ":", "--"), res["rounds"].items(), strict=False):
            at = d["at_threshold"]["0.5"]
            dice = sum(d["proposal_dice"]) / len(d["proposal_dice"])
            lines.append(
                f"| {_label(res)} | {label} | {len(res['held_out'])} | {dice:.3f} | {100 * d['error_rate']:.1f} % | "
                f"{d['auroc']:.3f} | {d['area']:.3f} ({1 - d['error_rate'] / 2:.3f}) | "
                f"{100 * at[0]:.1f} % / {100 * at[1]:.1f} % | {d['flat_maps']}/{len(res['held_out'])} |"
            )
            if ax is None:
                continue
            ax.plot(
                d["curve"]["inspected"],
                d["curve"]["found"],
                ls=style,
                color="black",
                lw=1.6,
                label=f"{label}: AUROC {d['auroc']:.2f}",
            )
            ax.plot([at[0]], [at[1]], "o", color="black", mfc="white" if style != "-" else "black")
        if ax is None:
            continue
        ax.set_title(f"{_label(res)}: {len(res['held_out'])} held-out images", fontsize=10)
        ax.set_xlabel("share of pixels inspected, most uncertain first")
        ax.set_ylabel("share of wrong pixels found")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "errors.png", dpi=96)
    machines = sorted({r["machine"] for r in results})
    seconds = "; ".join(
        f"{_label(r)}: " + ", ".join(f"{k} {v:.0f} s" for k, v in r["seconds"].items()) for r in results
    )
    lines += _over_seeds(results)
    lines += [
        "",
        f"Machine: {', '.join(machines)}; one torch thread; seconds (wall, on a shared, busy machine): {seconds}.",
        "",
        "![error-detection curves](errors.png)",
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="dsb2018_nuclei")
    ap.add_argument("--n-train", type=int, default=40)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--n-eval", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2, help="co-training rounds")
    ap.add_argument(
        "--b", type=int, default=4, help="images given their ground truth before each further round"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a preset override on top of the demo's budget (repeatable); the result file is then named "
        "<dataset>_<key>=<value>.json",
    )
    args = ap.parse_args()
    extra = {k: json.loads(v) for k, v in (a.split("=", 1) for a in args.set)}
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        work = args.work or Path(tempfile.mkdtemp(prefix="diffseg-unc-"))
        res = run(
            args.dataset,
            args.n_train,
            args.k,
            args.n_eval,
            args.seed,
            work,
            args.threads,
            args.rounds,
            args.b,
            extra,
        )
        suffix = "".join(f"_{k}={v}" for k, v in sorted(extra.items())) + (
            f"_s{args.seed}" if args.seed else ""
        )
        (args.out / f"{args.dataset}{suffix}.json").write_text(json.dumps(res, indent=1) + "\n")
    report(args.out)


if __name__ == "__main__":
    main()
