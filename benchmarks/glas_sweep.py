"""GlaS sweep for issue #2: every configuration is its own `diffseg experiment` call.

Issue 14's evidence (every arm and ablation, converged references, paired intervals) is made by
``benchmarks/sweep.py --dataset ../shared/data/glas``; this script keeps the issue-2 table and figure. Its runs
follow the same protocol (they are `diffseg experiment` calls: validation split, test read once, provenance),
and its spreads are sample std (ddof 1).

    python benchmarks/glas_sweep.py                 # run what is missing (resumable), then report
    python benchmarks/glas_sweep.py --jobs 2        # two runs at a time, one torch thread each
    python benchmarks/glas_sweep.py --report-only   # table + plot from the JSON files present

Results: benchmarks/results/<dataset>/<method>_f<fraction>_s<seed>.json (one per run), the table in
benchmarks/results/<dataset>/summary.md and the plot in benchmarks/results/<dataset>/dice.png. Runs
whose JSON exists are skipped, so a long sweep can be stopped and resumed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sweep import experiment_command  # benchmarks/ is on sys.path when a script there runs

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "glas"

CONFIGS = (
    [("diffseg", f) for f in (0.05, 0.1, 0.2)]
    + [("supervised", f) for f in (0.05, 0.1, 0.2, 1.0)]
    + [("mean-teacher", f) for f in (0.05, 0.1)]
    + [("cps", f) for f in (0.05, 0.1)]
)
METHOD_ORDER = ["diffseg", "supervised", "mean-teacher", "cps"]


def result_path(out: Path, method: str, fraction: float, seed: int) -> Path:
    return out / f"{method}_f{fraction:g}_s{seed}.json"


def run_one(
    dataset: Path,
    out: Path,
    method: str,
    fraction: float,
    seed: int,
    preset: str,
    threads: int,
    save_model: bool,
) -> tuple[str, float, int]:
    target = result_path(out, method, fraction, seed)
    cmd = experiment_command(dataset, target, method, fraction, seed, preset, threads)
    if save_model:
        cmd += ["--model-out", str(out.parent / "models" / target.stem)]
    t0 = time.perf_counter()
    log = target.with_suffix(".log")
    with open(log, "w") as fh:
        rc = subprocess.call(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": str(threads)}
        )
    return target.name, time.perf_counter() - t0, rc


def load_results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def recorded_machines(rows: list[dict]) -> str:
    """The machines the runs recorded (their provenance), not the one making the report."""
    seen = sorted(
        {
            f"{r['provenance'].get('processor') or r['provenance'].get('machine')}, {r['provenance'].get('cpu_count')} cores"
            for r in rows
            if "provenance" in r
        }
    )
    missing = sum("provenance" not in r for r in rows)
    return "; ".join(
        seen + ([f"not recorded by {missing} of {len(rows)} runs (before provenance)"] if missing else [])
    )


def report(out: Path) -> str:
    import numpy as np

    rows = load_results(out)
    if not rows:
        return "no results yet"
    by: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        by.setdefault((r["method"], r["labeled_fraction"]), []).append(r)
    fractions = sorted({f for _, f in by})
    lines = [
        f"GlaS test Dice (testA + testB, {rows[0]['test']['n']} images, half resolution), preset "
        f"`{rows[0]['preset']}`, mean ± sample std (ddof 1) over seeds (n seeds in brackets). Machine: "
        f"{recorded_machines(rows)}.",
        "",
        "| method | " + " | ".join(f"{f:.0%} labeled" for f in fractions) + " |",
        "|---|" + "---|" * len(fractions),
    ]
    for m in METHOD_ORDER:
        cells = []
        for f in fractions:
            rs = by.get((m, f), [])
            if not rs:
                cells.append("—")
                continue
            d = np.array([r["test"]["dice_mean"] for r in rs])
            cells.append(
                f"{d.mean():.3f} ± {d.std(ddof=1):.3f} ({len(d)})" if len(d) > 1 else f"{d[0]:.3f} (1)"
            )
        if any(c != "—" for c in cells):
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    secs = {
        m: np.mean([r["seconds"] for r in rows if r["method"] == m])
        for m in METHOD_ORDER
        if any(r["method"] == m for r in rows)
    }
    lines += [
        "",
        "Mean wall-clock seconds per run: " + ", ".join(f"{m} {s:.0f} s" for m, s in secs.items()),
        "",
    ]
    ds = [r for r in rows if r["method"] == "diffseg" and "teacher" in r]
    if ds:
        lines += [
            "Diffusion teacher (diffseg runs; on "
            + ", ".join(sorted({r["teacher"].get("note", "every 4th test image") for r in ds}))
            + "):",
            "",
            "| fraction | seed | pretrained teacher, best-permutation Dice (train images) | teacher S=1 | "
            "round 1 | round 2 | round 3 | students |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(ds, key=lambda r: (r["labeled_fraction"], r["seed"])):
            t = r["teacher"]
            rounds = " | ".join(f"{d:.3f}" for d in t["dice_per_round"])
            lines.append(
                f"| {r['labeled_fraction']:.0%} | {r['seed']} | {r.get('pretrain_best_perm_dice', float('nan')):.3f} | "
                f"{t['dice_s1']:.3f} | {rounds} | {r['test']['dice_mean']:.3f} |"
            )
    return "\n".join(lines)


def plot(out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = load_results(out)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for m in METHOD_ORDER:
        fs = sorted({r["labeled_fraction"] for r in rows if r["method"] == m and r["labeled_fraction"] < 1})
        if not fs:
            continue
        mean = [
            np.mean([r["test"]["dice_mean"] for r in rows if r["method"] == m and r["labeled_fraction"] == f])
            for f in fs
        ]
        std = [  # sample std (ddof 1); 0 where one seed ran
            float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
            for d in (
                [r["test"]["dice_mean"] for r in rows if r["method"] == m and r["labeled_fraction"] == f]
                for f in fs
            )
        ]
        ax.errorbar([100 * f for f in fs], mean, yerr=std, marker="o", capsize=3, label=m)
    full = [
        r["test"]["dice_mean"] for r in rows if r["method"] == "supervised" and r["labeled_fraction"] == 1.0
    ]
    if full:
        ax.axhline(np.mean(full), color="grey", ls="--", label="supervised, 100 %")
        ax.axhline(0.95 * np.mean(full), color="grey", ls=":", label="95 % of that")
    ax.set_xlabel("labeled training images (%)")
    ax.set_ylabel("test Dice")
    ax.set_title(f"GlaS, preset {rows[0]['preset']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    target = out / "dice.png"
    fig.savefig(target)
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/<dataset name>")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default cores / jobs)")
    ap.add_argument("--only", nargs="*", default=None, help="methods to run (default all)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument(
        "--save-models", action="store_true", help="keep diffseg models (benchmarks/results/models)"
    )
    args = ap.parse_args()
    out = args.out or HERE / "results" / args.dataset.name
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        todo = [
            (m, f, s)
            for s in args.seeds
            for (m, f) in CONFIGS
            if (args.only is None or m in args.only) and not result_path(out, m, f, s).exists()
        ]
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        print(f"{len(todo)} run(s) to do, {args.jobs} at a time, {threads} thread(s) each", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [
                pool.submit(
                    run_one,
                    args.dataset,
                    out,
                    m,
                    f,
                    s,
                    args.preset,
                    threads,
                    args.save_models and m == "diffseg",
                )
                for m, f, s in todo
            ]
            for fut in futures:
                name, secs, rc = fut.result()
                print(
                    f"{name}: {'ok' if rc == 0 else f'FAILED (rc {rc}, see .log)'} in {secs:.0f} s",
                    flush=True,
                )
    text = report(out)
    (out / "summary.md").write_text(text + "\n")
    plot(out)
    print(text)


if __name__ == "__main__":
    main()
