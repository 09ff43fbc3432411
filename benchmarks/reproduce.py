"""Do the evidence JSONs say what the current commit makes? Re-run some of them and compare (issue 14).

    python benchmarks/reproduce.py --data ../shared/data glas/supervised_f0.05_s0 drive/cps_f0.05_s0
    python benchmarks/reproduce.py --report-only
    python benchmarks/reproduce.py --out benchmarks/results/reproduce-<commit> ...   # a later round of re-runs

Each argument names a result of ``benchmarks/results/evidence/`` (``<folder>/<arm>_f<fraction>_s<seed>``,
binary runs). It is run again by :func:`sweep.run_one` — the same `diffseg experiment` command, arm and
seed — with the code of the working tree, into ``benchmarks/results/reproduce/<folder>/`` (or ``--out``'s
``<folder>/``: each round of re-runs at a later commit keeps its own folder and ``summary.md``); a re-run
whose JSON exists is not run again (the script resumes). The report compares each pair: the commit and
processor of both runs, the mean test Dice of both and the largest per-image difference, and whether the
validation checks (the step and Dice of every check, hence the kept weights) are the same.

PyTorch on CPU is deterministic for a fixed seed, thread count and processor, so a re-run on the processor
of the original must give the same figures to the last digit when the code path of that arm has not
changed since; on another processor the floating-point sums differ and the runs drift apart (what the
report's processor column is for). Results of a ``--split`` view (``<dataset>-<split stem>``) are re-run on a
view made under ``--views`` from ``benchmarks/splits/<split stem>.csv``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path

import sweep

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "reproduce"
NAME = re.compile(r"^(?P<arm>.+)_f(?P<fraction>[0-9.]+)_s(?P<seed>\d+)$")


def current_commit() -> tuple[str, bool]:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True, check=True).stdout

    return git("rev-parse", "HEAD").strip(), bool(
        git("status", "--porcelain", "--untracked-files=no").strip()
    )


def dataset_for(folder: str, data: Path, views: Path) -> Path:
    """The dataset (or split view) a results folder was made from."""
    if (data / folder).is_dir():
        return data / folder
    for split in sorted((HERE / "splits").glob("*.csv")):
        name = folder.removesuffix("-" + split.stem)
        if name != folder and (data / name).is_dir():
            return sweep.dataset_view(data / name, split, views)
    raise SystemExit(
        f"{folder}: no dataset of that name under {data}, and no benchmarks/splits/*.csv makes that view; "
        "pass --data the folder that holds the datasets (e.g. ../shared/data)"
    )


def rerun(spec: str, data: Path, views: Path, threads: int, out_root: Path = OUT) -> Path:
    folder, _, stem = spec.removesuffix(".json").partition("/")
    m = NAME.match(stem)
    if not m or not (sweep.RESULTS / folder / f"{stem}.json").exists():
        raise SystemExit(f"{spec}: not a result of {sweep.RESULTS} (<folder>/<arm>_f<fraction>_s<seed>)")
    if m["arm"] not in sweep.ARMS:
        raise SystemExit(f"{spec}: arm {m['arm']!r} is not in sweep.ARMS")
    original = json.loads((sweep.RESULTS / folder / f"{stem}.json").read_text())
    if original.get("task", "binary") != "binary":
        raise SystemExit(f"{spec}: only binary runs are re-run here")
    out = out_root / folder
    out.mkdir(parents=True, exist_ok=True)
    target = sweep.result_path(out, m["arm"], float(m["fraction"]), int(m["seed"]))
    if not target.exists():
        ds = dataset_for(folder, data, views)
        rc = sweep.run_one(
            ds,
            out,
            m["arm"],
            float(m["fraction"]),
            int(m["seed"]),
            original.get("preset", "cpu"),
            threads,
            teacher_test="test_teacher" in original,  # scored with --teacher-test: so is the re-run
        )
        if rc != 0 or not target.exists():
            raise SystemExit(f"{spec}: the re-run failed (exit {rc}); see {target.with_suffix('.log')}")
    return target


def _checks(r: dict) -> list[tuple]:
    """(phase, step, validation Dice, training loss) of every validation check of a run."""
    return [
        (c.get("phase"), c.get("step"), f"{float(c['val_dice']):.9f}", f"{float(c.get('loss', 'nan')):.6f}")
        for c in r.get("validation", [])
        if "val_dice" in c
    ]


def deployed(r: dict) -> str:
    """What a run with the fallback to labels alone deployed ("" for a run without it)."""
    kept = [v for v in r.get("validation", []) if "deployed_reference" in v]
    if not kept:
        return ""
    return "labels-only" if kept[-1]["deployed_reference"] else "twins"


def _teacher(r: dict) -> str:
    """The ``--teacher-test`` figures of a run: the teacher's and the teacher-student mean's test Dice, and
    what the run deployed ("" for a run scored without it)."""
    t = r.get("test_teacher")
    if not t:
        return ""
    mean = t.get("ensemble", {}).get("dice_mean")
    return (
        f"{t['dice_mean']:.6f} / "
        + (f"{mean:.6f}" if mean is not None else "-")
        + f" / {r.get('deployed', '?')}"
    )


def compare(original: dict, again: dict) -> dict:
    a = {p["id"]: p["dice"] for p in original["test"]["per_image"]}
    b = {p["id"]: p["dice"] for p in again["test"]["per_image"]}
    if a.keys() != b.keys():
        raise ValueError("the two runs scored different test images")
    checks = _checks(original)
    return {
        "commit": original["provenance"]["commit"][:7],
        "processor": original["provenance"].get("processor", "?"),
        "commit_again": again["provenance"]["commit"][:7]
        + ("+dirty" if again["provenance"].get("dirty") else ""),
        "processor_again": again["provenance"].get("processor", "?"),
        "dice": original["test"]["dice_mean"],
        "dice_again": again["test"]["dice_mean"],
        "max_image_diff": max(abs(a[k] - b[k]) for k in a),
        "same_checks": checks == _checks(again),
        "n_checks": len(checks),
        "deployed": deployed(original),
        "deployed_again": deployed(again),
        "teacher": _teacher(original),
        "teacher_again": _teacher(again),
    }


def report(out_root: Path = OUT) -> str:
    lines = [
        "## Evidence JSONs re-run with later code (`benchmarks/reproduce.py`)",
        "",
        "| result | made at | on | re-run at | on | test Dice | again | largest per-image difference "
        "| same validation checks | deployed (fallback runs) | teacher / mean / deployed (--teacher-test runs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted(out_root.glob("*/*.json")):
        c = compare(
            json.loads((sweep.RESULTS / p.parent.name / p.name).read_text()), json.loads(p.read_text())
        )
        lines.append(
            f"| {p.parent.name}/{p.stem} | {c['commit']} | {c['processor']} | {c['commit_again']} | "
            f"{c['processor_again']} | {c['dice']:.6f} | {c['dice_again']:.6f} | {c['max_image_diff']:.1e} | "
            f"{'yes' if c['same_checks'] else 'no'} ({c['n_checks']}) | "
            + (f"{c['deployed']} / {c['deployed_again']} |" if c["deployed"] or c["deployed_again"] else "|")
            + (
                f" {c['teacher']}; again {c['teacher_again']} |"
                if c["teacher"] or c["teacher_again"]
                else " |"
            )
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="*", help="<folder>/<arm>_f<fraction>_s<seed> under results/evidence/")
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    ap.add_argument("--views", type=Path, default=Path(tempfile.gettempdir()) / "diffseg-views")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the evidence runs used 1)")
    ap.add_argument(
        "--out", type=Path, default=OUT, help="where the re-runs and summary.md go (default %(default)s)"
    )
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if not args.report_only:
        commit, dirty = current_commit()
        if dirty:
            print(f"note: the working tree differs from {commit[:7]}; the re-runs record it as dirty")
        for spec in args.results:
            print(spec, "->", rerun(spec, args.data, args.views, args.threads, args.out), flush=True)
    text = report(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
