"""The evidence sweep of issue 14: every arm at every fraction and seed, one `diffseg experiment` call each.

    python benchmarks/sweep.py --dataset ../shared/data/dsb2018_nuclei --fractions 0.1 0.2 --seeds 0 1 2
    python benchmarks/sweep.py --dataset ... --arms diffseg supervised        # a subset of the arms
    python benchmarks/sweep.py --dataset ... --report-only                    # tables from the JSONs

An **arm** is a method plus preset overrides (see ARMS): the methods themselves, and the ablations that
isolate each part of diffseg (Stage A off, teacher pseudo-labels off, ...). Every run uses the protocol of
`diffseg experiment`: a seeded validation split carved from the train images (checkpoint choice and the
pseudo-label gate), the labeled subset drawn from the rest, test images read once at the end.

Results: ``benchmarks/results/evidence/<dataset>/<arm>_f<fraction>_s<seed>.json``; a run whose JSON exists
is skipped (the sweep resumes). The report (``summary.md`` beside them) gives mean ± sample std (ddof 1)
over seeds and, for every arm against supervised / CPS / mean-teacher, the mean paired difference per
seed with its 95 % t interval; plus Stage A's label-free Dice against Otsu and all-foreground.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "evidence"

ARMS: dict[str, tuple[str, dict]] = {
    "diffseg": ("diffseg", {}),
    "supervised": ("supervised", {}),
    "cps": ("cps", {}),
    "mean-teacher": ("mean-teacher", {}),
    # two students on the labels alone, deployed as their mean: supervised with diffseg's ensemble
    "supervised-x2": ("cps", {"unsup_weight": 0.0}),
    # trained until its validation Dice stops improving (6 checks = 300 steps), at most 10x the budget
    "supervised-converged": ("supervised", {"cotrain_steps": 5000, "val_patience": 6}),
    # ablations of diffseg (same code path, one part switched off)
    "diffseg-noA": ("diffseg", {"pretrain_steps": 0}),
    "diffseg-nopseudo": ("diffseg", {"unsup_weight": 0.0}),
    "diffseg-nogate": ("diffseg", {"pseudo_gate_margin": 1000.0}),
    "diffseg-S1": ("diffseg", {"refresh_ddim_steps": 1, "ddim_steps": 1}),
    "diffseg-R1": ("diffseg", {"rounds": 1}),
}
REFERENCES = ("supervised", "cps", "mean-teacher")


def result_path(out: Path, arm: str, fraction: float, seed: int) -> Path:
    return out / f"{arm}_f{fraction:g}_s{seed}.json"


def experiment_command(
    dataset: Path,
    target: Path,
    method: str,
    fraction: float,
    seed: int,
    preset: str,
    threads: int,
    overrides: dict | None = None,
) -> list[str]:
    """The `diffseg experiment` command line of one run (``overrides`` as ``--set KEY=JSON``)."""
    cmd = [
        sys.executable,
        "-m",
        "napari_diffseg.cli",
        "experiment",
        str(dataset),
        "--labeled-fraction",
        str(fraction),
        "--method",
        method,
        "--preset",
        preset,
        "--seed",
        str(seed),
        "--json",
        str(target),
        "--threads",
        str(threads),
        "-q",
    ]
    for k, v in (overrides or {}).items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    return cmd


def run_one(dataset: Path, out: Path, arm: str, fraction: float, seed: int, preset: str, threads: int) -> int:
    method, overrides = ARMS[arm]
    target = result_path(out, arm, fraction, seed)
    cmd = experiment_command(dataset, target, method, fraction, seed, preset, threads, overrides)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with open(target.with_suffix(".log"), "w") as fh:
        return subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)


def t_quantile_975(df: int) -> float:
    """Two-sided 95 % quantile of Student's t (scipy when present, else a table)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:
        table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
        return table.get(df, 1.96)


def mean_sd(values: list[float]) -> tuple[float, float]:
    n = len(values)
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return m, sd


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, float, int] | None:
    """Mean of a − b over the seeds both have, and its 95 % t interval."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = [a[s] - b[s] for s in seeds]
    m, sd = mean_sd(d)
    h = t_quantile_975(len(d) - 1) * sd / math.sqrt(len(d))
    return m, m - h, m + h, len(d)


def load(out: Path) -> dict[tuple[str, float], dict[int, dict]]:
    by: dict[tuple[str, float], dict[int, dict]] = {}
    for p in sorted(out.glob("*.json")):
        arm = p.stem.rsplit("_f", 1)[0]
        r = json.loads(p.read_text())
        by.setdefault((arm, r["labeled_fraction"]), {})[r["seed"]] = r
    return by


def report(out: Path) -> str:
    by = load(out)
    if not by:
        return "no results yet"
    fractions = sorted({f for _, f in by})
    arms = [a for a in ARMS if any((a, f) in by for f in fractions)]
    some = next(iter(next(iter(by.values())).values()))
    prov = some.get("provenance", {})
    runs = [r for rs in by.values() for r in rs.values()]
    commits = sorted({str(r.get("provenance", {}).get("commit"))[:10] for r in runs})
    dirty = sum(bool(r.get("provenance", {}).get("dirty")) for r in runs)
    lines = [
        f"## {out.name}: test Dice, preset `{some['preset']}`",
        "",
        f"Mean ± sample std (ddof 1) over seeds, n in brackets; {some['test']['n']} test images"
        + (", scored inside the field of view" if some.get("scored_in_fov") else "")
        + f"; validation split {some.get('n_val', 0)} train images. Commits {', '.join(commits)}"
        + (f" ({dirty} of {len(runs)} runs on a dirty tree)" if dirty else "")
        + f", {prov.get('processor') or prov.get('machine')}, {prov.get('threads')} thread(s).",
        "",
        "| arm | " + " | ".join(f"{f:.0%}" for f in fractions) + " | mean training s |",
        "|---|" + "---|" * (len(fractions) + 1),
    ]
    for a in arms:
        cells, secs = [], []
        for f in fractions:
            rs = by.get((a, f), {})
            if not rs:
                cells.append("—")
                continue
            m, sd = mean_sd([r["test"]["dice_mean"] for r in rs.values()])
            cells.append(f"{m:.3f} ± {sd:.3f} ({len(rs)})" if len(rs) > 1 else f"{m:.3f} (1)")
            secs += [r.get("train_seconds", r["seconds"]) for r in rs.values()]
        lines.append(f"| {a} | " + " | ".join(cells) + f" | {sum(secs) / max(1, len(secs)):.0f} |")
    full = by.get(("supervised-converged", 1.0)) or by.get(("supervised", 1.0))
    if full:
        ref_name = "supervised-converged" if ("supervised-converged", 1.0) in by else "supervised"
        ref, _ = mean_sd([r["test"]["dice_mean"] for r in full.values()])
        ratios = []
        for f in fractions:
            rs = by.get(("diffseg", f), {})
            if rs and f < 1:
                m, _ = mean_sd([r["test"]["dice_mean"] for r in rs.values()])
                ratios.append(f"{f:.0%}: {m / ref:.1%}")
        if ratios:
            lines += [
                "",
                f"diffseg as a share of {ref_name} at 100 % labels ({ref:.3f}): " + ", ".join(ratios),
            ]
    lines += ["", "Paired differences (arm − reference, same seeds), mean [95 % t interval] (n):", ""]
    lines += ["| arm | reference | " + " | ".join(f"{f:.0%}" for f in fractions) + " |"]
    lines += ["|---|---|" + "---|" * len(fractions)]
    for a in arms:
        if a in REFERENCES and a != "cps":
            continue
        for ref in REFERENCES:
            if ref == a:
                continue
            cells = []
            for f in fractions:
                da = {s: r["test"]["dice_mean"] for s, r in by.get((a, f), {}).items()}
                db = {s: r["test"]["dice_mean"] for s, r in by.get((ref, f), {}).items()}
                p = paired(da, db)
                cells.append("—" if p is None else f"{p[0]:+.3f} [{p[1]:+.3f}, {p[2]:+.3f}] ({p[3]})")
            if any(c != "—" for c in cells):
                lines.append(f"| {a} | {ref} | " + " | ".join(cells) + " |")
    lf = [
        (a, f, s, r["label_free"])
        for (a, f), rs in sorted(by.items())
        for s, r in sorted(rs.items())
        if "label_free" in r
    ]
    if lf:
        lines += [
            "",
            "Stage A, label-free (best class permutation, same train images): teacher vs Otsu vs all-foreground",
            "",
            "| arm | fraction | seed | teacher | Otsu | all-foreground |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {a} | {f:.0%} | {s} | {d['teacher_dice']:.3f} | {d['otsu_dice']:.3f} | "
            f"{d['all_foreground_dice']:.3f} |"
            for a, f, s, d in lf
        ]
    rows = [
        (a, f, s, checks[-1])
        for (a, f), rs in sorted(by.items())
        for s, r in sorted(rs.items())
        if ARMS.get(a, ("",))[0] == "diffseg"
        and (checks := [v for v in r.get("validation", []) if "gate" in v])
    ]
    if rows:
        lines += [
            "",
            "The pseudo-label gate at the end of co-training (validation images):",
            "",
            "| arm | fraction | seed | teacher pseudo-label Dice | students' Dice | gate |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {a} | {f:.0%} | {s} | {v['val_teacher']:.3f} | {v['val_dice']:.3f} | {v['gate']:.2f} |"
            for a, f, s, v in rows
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--arms", nargs="+", default=["diffseg", "supervised", "cps", "mean-teacher"])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/evidence/<dataset>")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    unknown = set(args.arms) - set(ARMS)
    if unknown:
        ap.error(f"unknown arm(s) {sorted(unknown)}; known: {', '.join(ARMS)}")
    out = args.out or RESULTS / args.dataset.resolve().name
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        todo = [
            (a, f, s)
            for s in args.seeds
            for f in args.fractions
            for a in args.arms
            if not result_path(out, a, f, s).exists()
        ]
        print(f"{len(todo)} run(s) to do in {out}", flush=True)
        for a, f, s in todo:
            t0 = time.perf_counter()
            rc = run_one(args.dataset, out, a, f, s, args.preset, args.threads)
            status = "ok" if rc == 0 else f"FAILED (rc {rc}, see .log)"
            print(f"{a} f={f:g} s={s}: {status} in {time.perf_counter() - t0:.0f} s", flush=True)
    text = report(out)
    (out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
