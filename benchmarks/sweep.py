"""The evidence sweep of issue 14: every arm at every fraction and seed, one `diffseg experiment` call each.

    python benchmarks/sweep.py --dataset ../shared/data/dsb2018_nuclei --fractions 0.1 0.2 --seeds 0 1 2
    python benchmarks/sweep.py --dataset ... --arms diffseg supervised        # a subset of the arms
    python benchmarks/sweep.py --dataset ... --report-only                    # table + figure from the JSONs
    python benchmarks/sweep.py --report-all               # every dataset under results/evidence/ at once
    python benchmarks/sweep.py --dataset ../shared/data/isbi2012_em \
        --split benchmarks/splits/isbi2012_em_blocks.csv                      # ISBI 2012: a block split
    python benchmarks/sweep.py --dataset ../shared/data/dsb2018_nuclei --task instances \
        --arms supervised diffseg --fractions 0.1 0.2 1.0                     # issue 13: one label per object

An **arm** is a method plus preset overrides (see ARMS): the methods themselves, and the ablations that
isolate each part of diffseg (Stage A off, teacher pseudo-labels off, ...). Every run uses the protocol of
`diffseg experiment`: a seeded validation split carved from the train images (checkpoint choice and the
pseudo-label gate), the labeled subset drawn from the rest, test images read once at the end.

Results: ``benchmarks/results/evidence/<dataset>/<arm>_f<fraction>_s<seed>.json``; a run whose JSON exists
is skipped (the sweep resumes), and so is one another sweep is running (``<arm>_f<fraction>_s<seed>.running``
holds its pid): on two cores, start the same command twice, one thread each, and the two share the runs.
The report (``summary.md`` and ``dice.png`` beside them, both made from the JSONs alone) gives mean ± sample std (ddof 1) over seeds and, for every arm against supervised / CPS /
mean-teacher and every ablation against the arm it ablates, the mean paired difference per seed with its
95 % t interval; one student against the deployed pair; the teacher on the validation images (S = 1 against
S, chained rounds R = 1..3, Spearman ρ of an image's uncertainty with its error for E > 1 and E = 1); Stage
A's label-free Dice against Otsu and all-foreground; and the pseudo-label gate.

``--split FILE`` runs on a view of the dataset with another ``split.csv`` (ISBI 2012 ships every slice as
``train``; ``benchmarks/splits/isbi2012_em_blocks.csv`` holds contiguous blocks: slices 0-15 train, 16-19
validation, 20-29 test): a folder of symlinks to the dataset's images/, masks/ and fov/ beside that
``split.csv``, made under ``--views`` (a temporary folder, never the repository); the results go to
``results/evidence/<dataset>-<split file stem>``.

``--task instances`` (issue 13) trains every arm on the dataset's ``instances/`` (the background / interior /
boundary target, objects by a seeded watershed: ``diffseg experiment --task instances``); the results go to
``results/evidence/<dataset>-instances`` and the report's main figure is then the test **AP@0.5** (mean over
the test images), with AP@0.75, F1@0.5 and the pixel Dice beside it, and for GlaS the challenge's object F1 /
object Dice / object Hausdorff. ``--task multiclass --classes background,a,b`` scores the mean Dice over the
foreground classes and lists Dice per class. ``--task instances --object-classes grade_glas`` trains on objects
of several classes, each gland taking its image's grade (benign / malignant), from a view whose masks/ are
class maps; the results go to ``results/evidence/glas-grade_glas-instances``. ``--watershed tuned`` (instances)
lets each run choose its watershed's parameters on its validation images, as ``diffseg experiment`` does by
default; the results go to ``results/evidence/<dataset>-instances-tuned`` and the report adds the tuned −
fixed AP@0.5 of the same networks. Without it the runs keep the fixed watershed, as every instance folder
made before it did. ``--models DIR`` keeps each run's trained model under ``DIR/<results folder>/`` (outside the
repository) to evaluate it again later without training again.

Why one script of ~800 lines: running the arms and reporting them (tables, paired intervals, figure) read
the same result files and arm table, and the report must be remade from the JSONs alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "evidence"

#: diffseg-Tval's overrides: the teacher validated during Stage B (see ARMS)
TVAL = {
    "teacher_steps": 1000,
    "teacher_val_every": 100,
    "teacher_val_patience": 3,
    "reference_fallback": True,
}
#: the long budget's rule, one for every method (see ARMS)
LONG = {"cotrain_steps": 1500, "val_patience": 10}

ARMS: dict[str, tuple[str, dict]] = {
    # the paper's recipe: Stage A (label-free) first on a cold start. The preset default until issue 14's
    # ablation; every `diffseg` JSON made before the default changed ran exactly this. Every diffseg arm
    # below but `diffseg-fb` and the two made after it (`diffseg-trust`, `diffseg-T1000`) sets
    # `reference_fallback` off: their runs were made before it became the default, and the override keeps
    # each arm what its JSONs measured.
    "diffseg": (
        "diffseg",
        {
            "cold_start_pretrain": True,
            "reference_fallback": False,
            "pretrain_split_weight": 0.0,
            "pretrain_smooth_weight": 0.0,
        },
    ),
    "supervised": ("supervised", {}),
    "cps": ("cps", {}),
    "mean-teacher": ("mean-teacher", {}),
    # two students on the labels alone, deployed as their mean: supervised with diffseg's ensemble
    "supervised-x2": ("cps", {"unsup_weight": 0.0}),
    # trained until its validation Dice stops improving for 20 checks (1,000 steps), at most 10x the budget.
    # (Before 2026-12-02: 6 checks, which stopped GlaS seeds at 500-800 steps on a noisy validation curve,
    # 0.79-0.85; the issue-13 instance references under evidence/*-instances* were made that way.)
    "supervised-converged": ("supervised", {"cotrain_steps": 5000, "val_patience": 20}),
    # Stage A off (the preset default since issue 14's ablation; the override keeps the runs made before
    # that change the same arm), no fallback; the ablations below change this arm in one more part
    "diffseg-noA": ("diffseg", {"pretrain_steps": 0, "reference_fallback": False}),
    "diffseg-nopseudo": ("diffseg", {"unsup_weight": 0.0, "reference_fallback": False}),
    # the students' loss of the CPS baseline (sup + ramp x 1.0 x CPS) through diffseg's code path: the
    # teacher's pseudo-labels off and the CPS weight that of the `cps` arm
    "diffseg-cpsonly": ("diffseg", {"unsup_weight": 0.0, "cps_weight": 1.0, "reference_fallback": False}),
    "diffseg-nogate": ("diffseg", {"pseudo_gate_margin": 1000.0, "reference_fallback": False}),
    # the opt-in reference gate: a labels-only student beside the twins also shuts the teacher's weight
    "diffseg-ref": ("diffseg", {"pseudo_gate_reference": True, "reference_fallback": False}),
    # ... whose weight also multiplies the twins' cross pseudo-supervision (below labels alone, labels only)
    "diffseg-refcps": (
        "diffseg",
        {"pseudo_gate_reference": True, "reference_gate_cps": True, "reference_fallback": False},
    ),
    # the fallback: a labels-only student beside the twins (no gate), deployed instead of them when it
    # scores the validation images better. The preset default since issue 14's DSB and DRIVE runs.
    "diffseg-fb": ("diffseg", {"reference_fallback": True}),
    # the default (with its fallback) trusting a validated teacher sooner: its pseudo-labels at full weight
    # from the first step (no ramp; the gate weighs them), and CPS at the CPS baseline's weight where the
    # gate shuts them out (opt-in, issue 14: aimed at 10 %, where the default ties CPS)
    "diffseg-trust": (
        "diffseg",
        {"pseudo_rampup": False, "cps_fills_gate": True, "reference_fallback": True},
    ),
    # the default with a teacher trained 1,000 steps on the labels before co-training instead of 300 (the
    # students' budget unchanged): at 10 % the 300-step teacher is often no better than the students
    "diffseg-T1000": ("diffseg", {"teacher_steps": 1000, "reference_fallback": True}),
    # the teacher validated during Stage B: up to 1,000 steps, its best check kept, stopped after 3 checks
    # without a gain (T1000 helps GlaS but overfits DSB nuclei's one or two labeled images)
    "diffseg-Tval": ("diffseg", TVAL),
    # diffseg-Tval whose teacher keeps its best-validated weights through co-training: scored on the
    # validation images before each pseudo-label refresh and at the end, it labels and ends with its best
    # weights (on DRIVE 10 % the validated teacher validates above its twins and CPS, yet fell during
    # co-training on seed 2)
    "diffseg-Tkeep": ("diffseg", {**TVAL, "teacher_keep_best": True}),
    # diffseg-Tkeep deploying the teacher where its best check scores the validation images above the
    # students (deploy_best): on DRIVE 10 % the kept teacher validated, and tested, above its students.
    # Its training is diffseg-Tkeep's step for step, so a diffseg-Tkeep run with --teacher-test also gives
    # this arm's result (:func:`derive_deployed`; tests/test_deploy_best.py checks the identity)
    "diffseg-Tbest": ("diffseg", {**TVAL, "teacher_keep_best": True, "deploy_best": True}),
    # diffseg-Tbest with a third candidate, the mean of the teacher's probabilities and the students'
    # (deploy_mean): teacher and students disagree image by image (GlaS: per-image Dice differences of sd
    # 0.04-0.11 around a mean near 0). Also derived from diffseg-Tkeep runs whose --teacher-test scored
    # the mean (test_teacher.ensemble, since 576cb06)
    "diffseg-Tmean": (
        "diffseg",
        {**TVAL, "teacher_keep_best": True, "deploy_best": True, "deploy_mean": True},
    ),
    # the default with label-free Stage A first, its one-step mask pulled towards a threshold's split on
    # dark-field images (the split anchor, on by default since issue 14): does a nuclei-aware label-free
    # start help where the labels are fewest (DSB nuclei 5 %: two labeled images)?
    "diffseg-As": (
        "diffseg",
        {
            "cold_start_pretrain": True,
            "pretrain_split_weight": 1.0,
            "pretrain_smooth_weight": 0.0,
            "reference_fallback": True,
        },
    ),
    # the long budget (issue 14, a probe): every method's students up to 1,500 steps (3x the `cpu` preset's
    # 500), stopped after 10 validation checks (500 steps) without a gain, the best check kept. At 500 steps
    # nearly every arm's validation Dice is still rising (best check at 450-500 in most runs), and on GlaS
    # the validated teacher scores the validation images above its own students: do the students take
    # more of the teacher with more steps, and does CPS gain as much?
    **{f"{m}-long": (m, LONG) for m in ("supervised", "cps", "mean-teacher")},
    "diffseg-Tval-long": ("diffseg", {**TVAL, **LONG}),
    "diffseg-S1": ("diffseg", {"refresh_ddim_steps": 1, "ddim_steps": 1, "reference_fallback": False}),
    "diffseg-E1": ("diffseg", {"refresh_samples": 1, "samples": 1, "reference_fallback": False}),
    "diffseg-R1": ("diffseg", {"rounds": 1, "reference_fallback": False}),
    "diffseg-R3": ("diffseg", {"rounds": 3, "reference_fallback": False}),
}
REFERENCES = ("supervised", "cps", "mean-teacher")
#: what each ablation is compared with, paired by seed (the arm it changes one thing of)
ABLATES: dict[str, tuple[str, ...]] = {
    **{a: ("diffseg-noA",) for a in ARMS if a.startswith("diffseg-")},
    "diffseg-noA": ("diffseg",),  # Stage A's contribution
    "diffseg-cpsonly": ("diffseg-noA", "cps"),  # the pseudo-labels' contribution; the same loss as `cps`
    "diffseg-refcps": ("diffseg-noA", "diffseg-ref"),  # gating CPS too, against gating the teacher alone
    "diffseg-trust": ("diffseg-fb",),  # what trusting the teacher sooner adds to the default
    "diffseg-T1000": ("diffseg-fb",),  # what a longer-trained teacher adds to the default
    "diffseg-Tval": ("diffseg-fb", "diffseg-T1000"),  # a validated teacher against fixed 300 / 1,000 steps
    "diffseg-Tkeep": ("diffseg-Tval",),  # what keeping the teacher's best weights in co-training adds
    "diffseg-Tbest": ("diffseg-Tkeep",),  # what deploying the teacher where it validates best adds
    "diffseg-Tmean": ("diffseg-Tbest",),  # what the teacher-student mean adds as a third candidate
    "diffseg-As": ("diffseg-fb", "diffseg"),  # the anchored Stage A first, against none and the paper's
    "supervised-x2": ("supervised",),
    "supervised-converged": ("supervised",),
    # the long budget: against the same method at 500 steps, and diffseg against the long baselines
    "supervised-long": ("supervised",),
    "cps-long": ("cps",),
    "mean-teacher-long": ("mean-teacher",),
    "diffseg-Tval-long": ("diffseg-Tval", "supervised-long", "cps-long", "mean-teacher-long"),
}
#: the arms the figure draws (the others are in the tables)
PLOTTED = ("diffseg", "diffseg-noA", "diffseg-fb", "supervised", "cps", "mean-teacher", "supervised-x2")
#: what the main tables say of an arm whose name alone does not
ARM_NOTES = {
    "diffseg": "the paper's recipe, label-free Stage A first",
    "diffseg-noA": "Stage A off, no fallback: the default from issue 14's Stage A ablation to the fallback",
    "diffseg-ref": "diffseg-noA with the opt-in reference gate",
    "diffseg-refcps": "the reference gate on CPS too",
    "diffseg-fb": "diffseg-noA with the fallback to labels alone: **the default**",
    "diffseg-cpsonly": "diffseg-noA with the teacher's pseudo-labels off: CPS through diffseg's code path",
    "diffseg-nogate": "diffseg-noA with the pseudo-label gate off",
    "diffseg-trust": "diffseg-fb with the teacher's pseudo-labels unramped and CPS filling the gate",
    "diffseg-T1000": "diffseg-fb with the teacher trained 1,000 steps before co-training, not 300",
    "diffseg-Tval": "diffseg-fb with the teacher's best validation check in up to 1,000 steps",
    "diffseg-Tkeep": "diffseg-Tval whose teacher keeps its best-validated weights through co-training",
    "diffseg-Tbest": "diffseg-Tkeep deploying the teacher where it validates above the students; runs "
    "without their own JSON are their diffseg-Tkeep run's figures under the same rule",
    "diffseg-Tmean": "diffseg-Tbest with the mean of teacher and students as a third candidate; derived "
    "as diffseg-Tbest is",
    "diffseg-As": "diffseg-fb with label-free Stage A first, anchored to a threshold's split on fluorescence",
    "supervised-x2": "two supervised students deployed as their mean",
    **{
        f"{m}-long": ("diffseg-Tval, " if m == "diffseg-Tval" else "")
        + "up to 1,500 steps, stopped after 10 checks without a gain"
        for m in ("supervised", "cps", "mean-teacher", "diffseg-Tval")
    },
}
PLOT_LABELS = {
    "diffseg": "diffseg (Stage A first)",
    "diffseg-noA": "diffseg-noA (no fallback)",
    "diffseg-fb": "diffseg-fb (the default)",
}
#: the arms compared with every reference (supervised, CPS, mean-teacher); the reference gate is a candidate
#: default, so it is held to the same comparisons
COMPARED = (
    "diffseg",
    "diffseg-noA",
    "diffseg-ref",
    "diffseg-refcps",
    "diffseg-fb",
    "diffseg-trust",
    "diffseg-T1000",
    "diffseg-Tval",
    "diffseg-Tkeep",
    "diffseg-Tbest",
    "diffseg-Tmean",
    "diffseg-As",
)


#: instance runs: the extra test figures listed beside the main one (GlaS's object metrics when present)
INSTANCE_EXTRAS = (
    ("ap_50_default_watershed", "AP@0.5, fixed watershed"),
    ("ap_75", "AP@0.75"),
    ("f1_50", "F1@0.5"),
    ("dice_mean", "pixel Dice"),
    ("object_f1", "GlaS object F1"),
    ("object_dice", "GlaS object Dice"),
    ("object_hausdorff", "GlaS object Hausdorff (px)"),
)


def main_key(r: dict) -> str:
    """The figure a run is ranked by: test AP@0.5 for an instance run, the mean of the per-class Dice for a
    multiclass run, else the foreground Dice."""
    test = r.get("test", {})
    if r.get("task") == "instances" and "ap_50" in test:
        return "ap_50"
    if r.get("task") == "multiclass" and "dice_class_mean" in test:
        return "dice_class_mean"
    return "dice_mean"


def score(r: dict, part: str = "test") -> float:
    """A run's main figure (:func:`main_key`) on ``part`` (``test`` or ``test_one_student``)."""
    d = r[part]
    return float(d[main_key(r)] if main_key(r) in d else d["dice_mean"])


def result_path(out: Path, arm: str, fraction: float, seed: int) -> Path:
    return out / f"{arm}_f{fraction:g}_s{seed}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


def claim(target: Path) -> bool:
    """Take the run whose result is ``target`` for this process: ``<target>.running`` holds its pid, made
    exclusively, so that two sweeps started with the same arguments (one per core) share the runs instead
    of both doing each. False when a live process holds it; a claim left by a dead process is taken over.
    :func:`release` removes it."""
    lock = target.with_suffix(".running")
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or "0")
            except (OSError, ValueError):
                holder = 0
            if holder > 0 and holder != os.getpid() and _alive(holder):
                return False
            lock.unlink(missing_ok=True)  # stale: its sweep died
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def release(target: Path) -> None:
    target.with_suffix(".running").unlink(missing_ok=True)


def experiment_command(
    dataset: Path,
    target: Path,
    method: str,
    fraction: float,
    seed: int,
    preset: str,
    threads: int,
    overrides: dict | None = None,
    task: str = "binary",
    classes: str | None = None,
    watershed: str = "default",
    model_out: Path | None = None,
    teacher_test: bool = False,
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
    if task != "binary":
        cmd += ["--task", task]
    if task == "instances":
        cmd += ["--watershed", watershed]
    if model_out is not None:
        cmd += ["--model-out", str(model_out)]
    if classes:
        cmd += ["--classes", classes]
    if teacher_test:
        cmd += ["--teacher-test"]
    for k, v in (overrides or {}).items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    return cmd


def run_one(
    dataset: Path,
    out: Path,
    arm: str,
    fraction: float,
    seed: int,
    preset: str,
    threads: int,
    task: str = "binary",
    classes: str | None = None,
    watershed: str = "default",
    models: Path | None = None,
    teacher_test: bool = False,
) -> int:
    method, overrides = ARMS[arm]
    target = result_path(out, arm, fraction, seed)
    model_out = None if models is None else models / out.name / target.stem
    cmd = experiment_command(
        dataset,
        target,
        method,
        fraction,
        seed,
        preset,
        threads,
        overrides,
        task,
        classes,
        watershed,
        model_out,
        teacher_test and method == "diffseg",
    )
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


def _paired_cell(a: dict[int, float], b: dict[int, float]) -> str:
    """``mean [lo, hi] (n)`` over the shared seeds; one shared seed: its difference alone, no interval."""
    p = paired(a, b)
    if p is not None:
        return f"{p[0]:+.3f} [{p[1]:+.3f}, {p[2]:+.3f}] ({p[3]})"
    shared = sorted(set(a) & set(b))
    return f"{a[shared[0]] - b[shared[0]]:+.3f} (1, no interval)" if shared else "—"


def _mean_sd_cell(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v == v]  # NaN (too few images for a correlation) left out
    if not values:
        return "—"
    m, sd = mean_sd(values)
    return f"{m:.{digits}f} ± {sd:.{digits}f} ({len(values)})" if len(values) > 1 else f"{m:.{digits}f} (1)"


def _one_student_section(by: dict[tuple[str, float], dict[int, dict]]) -> list[str]:
    """Two-student arms: the deployed pair against its first student alone, paired over the same runs."""
    rows = []
    for (a, f), rs in sorted(
        by.items(), key=lambda kv: (list(ARMS).index(kv[0][0]) if kv[0][0] in ARMS else 99, kv[0][1])
    ):
        runs = {s: r for s, r in rs.items() if "test_one_student" in r}
        if not runs:
            continue
        # the one-student block of an instance run holds the pixel Dice only: both sides on the same figure
        key = {
            s: main_key(r) if main_key(r) in r["test_one_student"] else "dice_mean" for s, r in runs.items()
        }
        pair = {s: float(r["test"][key[s]]) for s, r in runs.items()}
        one = {s: float(r["test_one_student"][key[s]]) for s, r in runs.items()}
        rows.append(
            f"| {a} | {f:.0%} | {_mean_sd_cell(list(pair.values()))} | {_mean_sd_cell(list(one.values()))} | "
            f"{_paired_cell(pair, one)} |"
        )
    if not rows:
        return []
    return [
        "",
        "Twin students deployed as their mean against one student alone (same runs; test Dice, for instance runs "
        "the pixel Dice of the foreground):",
        "",
        "| arm | fraction | pair | one student | pair − one [95 % t] (n) |",
        "|---|---|---|---|---|",
        *rows,
    ]


def _teacher_test_section(by: dict[tuple[str, float], dict[int, dict]]) -> list[str]:
    """Runs made with ``--teacher-test``: the teacher's own masks on the test images beside the deployed
    networks, and what the rule "deploy the teacher where its validation Dice beats the deployed networks'
    best check" would have scored (reporting only: no run deployed it), paired with CPS where it ran."""
    lines: list[str] = []
    for (a, f), rs in sorted(by.items()):
        runs = {s: r for s, r in sorted(rs.items()) if r.get("test_teacher") and not r.get("derived_from")}
        if not runs:
            continue
        if not lines:
            lines = [
                "",
                "The teacher on the test images (`--teacher-test`; reporting only): its masks sampled as its "
                "validation checks sample it, at the end of the run (diffseg-Tkeep: its best-validated weights); "
                "*rule*: the teacher where its validation "
                "Dice beats the deployed networks' best check, else what the run deployed; *mean*: the mean "
                "of the teacher's probabilities and the students' (diffseg-Tmean's third candidate; runs "
                "made since it is scored):",
                "",
                "| arm | fraction | seed | deployed | teacher | teacher validation | mean | mean validation "
                "| deployed's best validation | rule |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
        dep, tea, rule, mean = {}, {}, {}, {}
        for s, r in runs.items():
            # the deployed networks' best check: the twins', or the labels-only student's where the
            # fallback deployed it (it deploys whichever validated better)
            tt, bv = r["test_teacher"], deployed_best_val(r)
            dep[s], tea[s] = float(r["test"]["dice_mean"]), float(tt["dice_mean"])
            pick = tt.get("val_dice") is not None and bv is not None and tt["val_dice"] > bv
            rule[s] = tea[s] if pick else dep[s]
            tv = "—" if tt.get("val_dice") is None else f"{tt['val_dice']:.3f}"
            bvs = "—" if bv is None else f"{bv:.3f}"
            ens = tt.get("ensemble") or {}
            mv = "—" if ens.get("val_dice") is None else f"{ens['val_dice']:.3f}"
            if "dice_mean" in ens:
                mean[s] = float(ens["dice_mean"])
            ms = f"{mean[s]:.3f}" if s in mean else "—"
            lines.append(
                f"| {a} | {f:.0%} | {s} | {dep[s]:.3f} | {tea[s]:.3f} | {tv} | {ms} | {mv} | {bvs} | "
                f"{rule[s]:.3f}{' (teacher)' if pick else ''} |"
            )
        cps = {s: score(r) for s, r in by.get(("cps", f), {}).items()}
        lines.append(
            f"| {a} | {f:.0%} | paired (n) | | teacher − deployed {_paired_cell(tea, dep)} | | "
            + (f"mean − deployed {_paired_cell(mean, dep)}" if mean else "")
            + f" | | | rule − deployed {_paired_cell(rule, dep)}"
            + (f"; rule − cps {_paired_cell(rule, cps)}" if cps else "")
            + " |"
        )
    return lines


def _teacher_section(by: dict[tuple[str, float], dict[int, dict]]) -> list[str]:
    """The teacher on the validation images of every diffseg run: S = 1 against S, R = 1..3, and the
    Spearman ρ of an image's mean uncertainty with its error (1 − Dice) for E > 1 and E = 1."""
    rows = []
    for (a, f), rs in sorted(
        by.items(), key=lambda kv: (list(ARMS).index(kv[0][0]) if kv[0][0] in ARMS else 99, kv[0][1])
    ):
        ts = [r["teacher"] for r in rs.values() if "teacher" in r]
        if not ts:
            continue
        per_round = [  # teacher_report chains three rounds
            _mean_sd_cell([t["dice_per_round"][i] for t in ts if len(t["dice_per_round"]) > i])
            for i in range(3)
        ]
        rho = [t.get("uncertainty_vs_error_spearman", {}) for t in ts]
        e_key = next((k for r_ in rho for k in r_ if k != "E=1"), "E>1")
        where = {t.get("note", "") for t in ts}
        rows.append(
            f"| {a} | {f:.0%} | {ts[0].get('ddim_steps')} | {_mean_sd_cell([t['dice_s1'] for t in ts])} | "
            + " | ".join(per_round)
            + f" | {_mean_sd_cell([r_.get(e_key, float('nan')) for r_ in rho], 2)} ({e_key}) | "
            f"{_mean_sd_cell([r_.get('E=1', float('nan')) for r_ in rho], 2)} | "
            + ("validation" if all("validation" in w for w in where) else "TEST images (no validation split)")
            + " |"
        )
    if not rows:
        return []
    return [
        "",
        "The teacher's proposals on the validation images (Dice, mean ± sample std over seeds), and how well an "
        "image's mean uncertainty ranks its error (Spearman ρ; > 0: the uncertain images are the wrong ones):",
        "",
        "| arm | fraction | S | Dice S = 1 (R = 1) | Dice S, R = 1 | R = 2 | R = 3 | ρ, E > 1 | ρ, E = 1 | images |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _extras_section(
    by: dict[tuple[str, float], dict[int, dict]], arms: list[str], fractions: list[float]
) -> list[str]:
    """Instance runs: AP@0.75, F1@0.5, pixel Dice (and GlaS's object metrics) per arm and fraction; multiclass
    runs: Dice per class. Mean ± sample std over seeds."""
    runs = [r for rs in by.values() for r in rs.values()]
    if any(r.get("task") == "instances" for r in runs):
        keys = [(k, name) for k, name in INSTANCE_EXTRAS if any(k in r["test"] for r in runs)]
        # objects of several classes: AP@0.5 per object class (only that class's objects matched) and the
        # share of the class-agnostic matches whose class is right
        names = next((list(r["test"]["ap_50_per_class"]) for r in runs if "ap_50_per_class" in r["test"]), [])
        keys += [(f"ap_50_per_class/{n}", f"AP@0.5 {n}") for n in names]
        if any("class_accuracy" in r["test"] for r in runs):
            keys.append(("class_accuracy", "class accuracy"))
        head = "| arm | fraction | " + " | ".join(name for _, name in keys) + " |"
        rows = []

        def value(r: dict, k: str) -> float:
            top, _, sub = k.partition("/")
            v = r["test"].get(top, float("nan"))
            return float(v.get(sub, float("nan")) if isinstance(v, dict) else v)

        for a in arms:
            for f in fractions:
                rs = by.get((a, f), {})
                if rs:
                    cells = [_mean_sd_cell([value(r, k) for r in rs.values()]) for k, _ in keys]
                    rows.append(f"| {a} | {f:.0%} | " + " | ".join(cells) + " |")
        return [
            "",
            "The other test figures of the same runs:",
            "",
            head,
            "|---|---|" + "---|" * len(keys),
            *rows,
        ]
    if any(r.get("task") == "multiclass" for r in runs):
        names = next((list(r["test"]["dice_per_class"]) for r in runs if "dice_per_class" in r["test"]), [])
        rows = []
        for a in arms:
            for f in fractions:
                rs = by.get((a, f), {})
                if rs and names:
                    cells = [
                        _mean_sd_cell(
                            [float(r["test"]["dice_per_class"].get(n, float("nan"))) for r in rs.values()]
                        )
                        for n in names
                    ]
                    rows.append(f"| {a} | {f:.0%} | " + " | ".join(cells) + " |")
        if rows:
            return [
                "",
                "Test Dice per class:",
                "",
                "| arm | fraction | " + " | ".join(names) + " |",
                "|---|---|" + "---|" * len(names),
                *rows,
            ]
    return []


def _watershed_section(
    by: dict[tuple[str, float], dict[int, dict]], arms: list[str], fractions: list[float]
) -> list[str]:
    """Runs whose watershed was tuned on the validation images (``--watershed tuned``): test AP@0.5 with the
    tuned parameters minus the fixed defaults' on the **same networks**, per seed, with its 95 % t interval
    (only the post-processing differs), and the parameters each run chose."""
    rows, chosen = [], []
    for a in arms:
        cells = []
        for f in fractions:
            rs = by.get((a, f), {})
            tuned = {s: float(r["test"]["ap_50"]) for s, r in rs.items() if "watershed" in r}
            fixed = {
                s: float(r["test"].get("ap_50_default_watershed", r["test"]["ap_50"]))
                for s, r in rs.items()
                if "watershed" in r
            }
            cells.append(_paired_cell(tuned, fixed) if tuned else "—")
            for s, r in sorted(rs.items()):
                if "watershed" in r:
                    w = r["watershed"]
                    params = ", ".join(f"{k} {v:g}" for k, v in w["params"].items())
                    chosen.append(
                        f"| {a} | {f:.0%} | {s} | {w['objects']} | {w['ap_50_start']:.3f} → {w['ap_50']:.3f} | "
                        f"{params} |"
                    )
        if any(c != "—" for c in cells):
            rows.append(f"| {a} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "",
        "The watershed tuned on the validation images against the fixed defaults, test AP@0.5 on the same "
        "networks (tuned − fixed), mean [95 % t interval] (n):",
        "",
        "| arm | " + " | ".join(f"{f:.0%}" for f in fractions) + " |",
        "|---|" + "---|" * len(fractions),
        *rows,
        "",
        "What each run chose (validation objects; validation AP@0.5 fixed → tuned; parameters):",
        "",
        "| arm | fraction | seed | objects | validation AP@0.5 | parameters |",
        "|---|---|---|---|---|---|",
        *chosen,
    ]


def _parts(r: dict) -> dict[str, list[dict]]:
    """A run's per-image test rows grouped by test part: the id's prefix before ``_`` for ids like GlaS's
    ``testA_12`` / ``testB_3`` (empty when the ids have no such parts)."""
    by: dict[str, list[dict]] = {}
    for row in r["test"].get("per_image", []):
        head, sep, _ = str(row.get("id", "")).partition("_")
        if sep and head.startswith("test") and head != "test":
            by.setdefault(head, []).append(row)
    return by if len(by) > 1 else {}


def _glas_parts_section(
    by: dict[tuple[str, float], dict[int, dict]], arms: list[str], fractions: list[float]
) -> list[str]:
    """GlaS-style object figures per test part (testA, testB) as the challenge reports them: object F1 from
    the TP / FP / FN pooled over the part's images, object Dice and object Hausdorff averaged over its
    images (the challenge weights them by area over the part: close, not equal). Mean ± sample std over
    seeds."""
    rows = []
    for a in arms:
        for f in fractions:
            rs = [r for r in by.get((a, f), {}).values() if "object_f1" in r["test"] and _parts(r)]
            if not rs:
                continue
            for part in sorted(_parts(rs[0])):
                f1, dice, haus = [], [], []
                for r in rs:
                    rows_p = _parts(r).get(part, [])
                    tp = sum(int(x["object_tp"]) for x in rows_p)
                    fp = sum(int(x["object_fp"]) for x in rows_p)
                    fn = sum(int(x["object_fn"]) for x in rows_p)
                    f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"))
                    dice.append(sum(float(x["object_dice"]) for x in rows_p) / max(1, len(rows_p)))
                    hs = [
                        float(x["object_hausdorff"])
                        for x in rows_p
                        if x["object_hausdorff"] == x["object_hausdorff"]
                    ]
                    haus.append(sum(hs) / len(hs) if hs else float("nan"))
                rows.append(
                    f"| {a} | {f:.0%} | {part} ({len(_parts(rs[0])[part])}) | {_mean_sd_cell(f1)} | "
                    f"{_mean_sd_cell(dice)} | {_mean_sd_cell(haus, 1)} |"
                )
    if not rows:
        return []
    return [
        "",
        "Object figures per test part (object F1 pooled over the part's images, object Dice and Hausdorff "
        "averaged over them; Hausdorff in the stored images' pixels):",
        "",
        "| arm | fraction | part (images) | object F1 | object Dice | object Hausdorff |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


#: the arms a diffseg-Tkeep run made with ``--teacher-test`` also gives (:func:`derive_deployed`): the same
#: training step for step, then a deploy rule on the run's own validation figures
DERIVED_ARMS = ("diffseg-Tbest", "diffseg-Tmean")


def load(out: Path) -> dict[tuple[str, float], dict[int, dict]]:
    """Every result JSON under ``out`` by (arm, fraction) and seed, plus the results of
    :data:`DERIVED_ARMS` that diffseg-Tkeep runs with ``--teacher-test`` give (:func:`derive_deployed`)
    where no run of that arm, fraction and seed exists."""
    by: dict[tuple[str, float], dict[int, dict]] = {}
    for p in sorted(out.glob("*.json")):
        arm = p.stem.rsplit("_f", 1)[0]
        r = json.loads(p.read_text())
        r["_file"] = p.name
        by.setdefault((arm, r["labeled_fraction"]), {})[r["seed"]] = r
    for (arm, f), rs in list(by.items()):
        if arm != "diffseg-Tkeep":
            continue
        for s, r in rs.items():
            for target in DERIVED_ARMS:
                derived = derive_deployed(r, mean=target == "diffseg-Tmean")
                if derived is not None:
                    by.setdefault((target, f), {}).setdefault(s, derived)
    return by


def deployed_best_val(r: dict) -> float | None:
    """The validation Dice of what a run deployed: the twins' best check, or the labels-only student's
    where the fallback deployed it (it deploys whichever validated better)."""
    refs = [float(v["val_reference"]) for v in r.get("validation", []) if "val_reference" in v]
    return max([x for x in (best_val(r), *refs) if x is not None], default=None)


def derive_deployed(r: dict, *, mean: bool = False) -> dict | None:
    """The diffseg-Tbest result (``mean``: diffseg-Tmean's) of a diffseg-Tkeep run made with
    ``--teacher-test``: the same training step for step (``deploy_best`` decides only when co-training
    ends and draws no random number), then the rule of ``core.training._deploy_best`` on the run's own
    figures — the teacher's best-validated weights (``test_teacher.val_dice``) and, with ``mean``, the
    teacher-student mean (``test_teacher.ensemble.val_dice``) against the deployed networks' best check
    (:func:`deployed_best_val`); the mean only above both, the teacher only above the students — and the
    test Dice of what it picks: ``test_teacher`` or its ``ensemble`` (scored exactly as a deployed teacher
    or mean is) or the run's ``test``. None for a run without those figures."""
    tt = r.get("test_teacher")
    students = deployed_best_val(r)
    if not tt or tt.get("val_dice") is None or students is None or r.get("derived_from"):
        return None
    ens = tt.get("ensemble")
    if mean and (not ens or ens.get("val_dice") is None):
        return None
    meta = ("val_dice", "sampler", "note", "ensemble")
    if mean and ens["val_dice"] > max(students, tt["val_dice"]):
        deployed, test = "teacher+students", {k: v for k, v in ens.items() if k not in meta}
    elif tt["val_dice"] > students:
        deployed, test = "teacher", {k: v for k, v in tt.items() if k not in meta}
    else:
        deployed, test = "students", r["test"]
    keys = {"deploy_best": True, **({"deploy_mean": True} if mean else {})}
    return {
        **{k: v for k, v in r.items() if k not in ("test_teacher", "test_one_student", "_file")},
        "overrides": {**r.get("overrides", {}), **keys},
        "test": test,
        "deployed": deployed,
        "derived_from": r.get("_file", "a diffseg-Tkeep run"),
    }


def _main_table(
    by: dict[tuple[str, float], dict[int, dict]], arms: list[str], fractions: list[float]
) -> list[str]:
    """One row per arm: the main figure's mean ± sample std (n seeds) at each fraction, mean training s."""
    lines = [
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
            m, sd = mean_sd([score(r) for r in rs.values()])
            cells.append(f"{m:.3f} ± {sd:.3f} ({len(rs)})" if len(rs) > 1 else f"{m:.3f} (1)")
            secs += [r.get("train_seconds", r["seconds"]) for r in rs.values()]
        name = f"{a} ({ARM_NOTES[a]})" if a in ARM_NOTES else a
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(secs) / max(1, len(secs)):.0f} |")
    return lines


def _paired_table(
    by: dict[tuple[str, float], dict[int, dict]], fractions: list[float], pairs: list[tuple[str, str]]
) -> list[str]:
    """One row per (arm, reference) pair with runs: the paired difference per seed at each fraction."""
    lines = ["| arm | reference | " + " | ".join(f"{f:.0%}" for f in fractions) + " |"]
    lines += ["|---|---|" + "---|" * len(fractions)]
    for a, ref in pairs:
        cells = []
        for f in fractions:
            da = {s: score(r) for s, r in by.get((a, f), {}).items()}
            db = {s: score(r) for s, r in by.get((ref, f), {}).items()}
            cells.append(_paired_cell(da, db))
        if any(c != "—" for c in cells):
            lines.append(f"| {a} | {ref} | " + " | ".join(cells) + " |")
    return lines


def _share_lines(by: dict[tuple[str, float], dict[int, dict]], fractions: list[float]) -> list[str]:
    """Each compared arm's mean at every fraction below 100 % as a share of full supervision's mean: converged
    (``supervised-converged``) when it ran, else ``supervised`` at 100 %; nothing without either."""
    full = by.get(("supervised-converged", 1.0)) or by.get(("supervised", 1.0))
    if not full:
        return []
    ref_name = "supervised-converged" if ("supervised-converged", 1.0) in by else "supervised"
    ref, _ = mean_sd([score(r) for r in full.values()])
    lines = []
    for arm in COMPARED:
        ratios = []
        for f in fractions:
            rs = by.get((arm, f), {})
            if rs and f < 1:
                m, _ = mean_sd([score(r) for r in rs.values()])
                ratios.append(f"{f:.0%}: {m / ref:.1%}")
        if ratios:
            lines += [
                "",
                f"{arm} as a share of {ref_name} at 100 % labels ({ref:.3f}, n = {len(full)}): "
                + ", ".join(ratios),
            ]
    return lines


GATE_RULE = "last"  # which students' check the pseudo-label gate compares with the teacher ("last" / "best")


def _gate_weight(teacher: float, students: float, margin: float) -> float:
    """``core.validation.gate_weight``, restated so that the report needs only the JSONs."""
    if teacher != teacher or students != students:
        return 1.0
    if margin <= 0:
        return 1.0 if teacher >= students else 0.0
    return min(1.0, max(0.0, 1.0 + (teacher - students) / margin))


def reference_gates(r: dict) -> bool:
    """Whether a run's labels-only student gated the teacher (``pseudo_gate_reference``); the fallback's
    student is scored at every check too but gates nothing. A preset without the key predates the fallback,
    when every run with a labels-only student had the gate."""
    return bool(r.get("provenance", {}).get("preset", {}).get("pseudo_gate_reference", True))


def gate_replay(r: dict) -> dict[str, bool]:
    """Replay a diffseg run's pseudo-label gate from its validation checks under both rules.

    The gate compares the teacher's pseudo-label Dice with the students' **last** check; from 7b4cdc8 until
    its revert on 2026-12-03 it compared with their **best** check (``GATE_RULE``; why the revert:
    ``core/validation.py``). Returns ``recorded_best`` / ``recorded_last`` (the gate recorded at every check
    is that rule's) and ``current``: the run is a run of the current rule — made by it (its recorded gates are
    the current rule's and not the other's), or made by the other rule where the gate its training steps got
    (after every check, with the teacher of the next check, which a refresh may have changed) is the same
    under both rules. A run that fits both rules at every check but not after a refresh counts as not
    current (it cannot tell which rule made it).
    """
    checks = [v for v in r.get("validation", []) if "gate" in v and "val_dice" in v]
    margin = float(r.get("provenance", {}).get("preset", {}).get("pseudo_gate_margin", 0.05))
    gated = reference_gates(r)
    best = float("nan")
    rec_best = rec_last = same = True

    def weight(teacher: float, students: float, reference: float) -> float:
        # the teacher gate and, for a run with the reference gate, the students against labels alone
        return min(_gate_weight(teacher, students, margin), _gate_weight(students, reference, margin))

    for k, v in enumerate(checks):
        last = float(v["val_dice"])
        best = last if not best >= last else best
        teacher = float(v["val_teacher"])
        ref = float(v.get("val_reference", float("nan"))) if gated else float("nan")
        rec_best &= abs(v["gate"] - weight(teacher, best, ref)) < 1e-6
        rec_last &= abs(v["gate"] - weight(teacher, last, ref)) < 1e-6
        if k + 1 < len(checks):
            nxt = float(checks[k + 1]["val_teacher"])
            same &= abs(weight(nxt, best, ref) - weight(nxt, last, ref)) < 1e-9
    rec_cur, rec_other = (rec_last, rec_best) if GATE_RULE == "last" else (rec_best, rec_last)
    current = same or (rec_cur and not rec_other)
    return {"recorded_best": rec_best, "recorded_last": rec_last, "current": current}


def _machines(runs: list[dict]) -> str:
    """The processors the runs ran on and their threads, each once ("AMD EPYC, Intel(R) Xeon(R) Processor")."""
    provs = [r.get("provenance", {}) for r in runs]
    cpus = sorted({str(p.get("processor") or p.get("machine")) for p in provs})
    threads = sorted({str(p.get("threads")) for p in provs})
    return f"{' / '.join(cpus)}, {' / '.join(threads)} thread(s)"


def report(out: Path) -> str:
    by = load(out)
    if not by:
        return "no results yet"
    fractions = sorted({f for _, f in by})
    arms = [a for a in ARMS if any((a, f) in by for f in fractions)]
    some = next(iter(next(iter(by.values())).values()))
    runs = [r for rs in by.values() for r in rs.values() if not r.get("derived_from")]
    commits = sorted({str(r.get("provenance", {}).get("commit"))[:10] for r in runs})
    dirty = sum(bool(r.get("provenance", {}).get("dirty")) for r in runs)
    what = {"ap_50": "test AP@0.5 (objects, mean over the test images)"}.get(main_key(some), "test Dice")
    if some.get("task") == "multiclass":
        what = "test Dice (mean over the foreground classes)"
    lines = [
        f"## {out.name}: {what}, preset `{some['preset']}`",
        "",
        f"Mean ± sample std (ddof 1) over seeds, n in brackets; {some['test']['n']} test images"
        + (", scored inside the field of view" if some.get("scored_in_fov") else "")
        + f"; validation split {some.get('n_val', 0)} train images. Commits {', '.join(commits)}"
        + (f" ({dirty} of {len(runs)} runs on a dirty tree)" if dirty else "")
        + f", {_machines(runs)}.",
        "",
    ]
    lines += _main_table(by, arms, fractions)
    lines += _extras_section(by, arms, fractions)
    lines += _watershed_section(by, arms, fractions)
    lines += _glas_parts_section(by, arms, fractions)
    lines += _share_lines(by, fractions)
    pairs = [(a, ref) for a in (*COMPARED, "cps") for ref in REFERENCES if ref != a]
    pairs += [(a, ref) for a in ARMS for ref in ABLATES.get(a, ())]
    lines += ["", "Paired differences (arm − reference, same seeds), mean [95 % t interval] (n):", ""]
    lines += _paired_table(by, fractions, pairs)
    lines += _one_student_section(by)
    lines += _teacher_section(by)
    lines += _teacher_test_section(by)
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
            "The pseudo-label gate at the end of co-training (validation images; it compares the teacher "
            "with the students' last check; from 7b4cdc8 to its revert on 2026-12-03, with their best):",
            "",
            "| arm | fraction | seed | teacher pseudo-label Dice | students' Dice (last) | (best) | gate |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {a} | {f:.0%} | {s} | {v['val_teacher']:.3f} | {v['val_dice']:.3f} "
            f"| {v.get('val_best', float('nan')):.3f} | {v['gate']:.2f} |"
            for a, f, s, v in rows
        ]
        stale = [
            f"{a} {f:.0%} seed {s}"
            for (a, f), rs in sorted(by.items())
            for s, r in sorted(rs.items())
            if ARMS.get(a, ("",))[0] == "diffseg" and not gate_replay(r)["current"]
        ]
        lines += [
            "",
            "Gate replayed from each run's checks: "
            + (
                "every run's training got the gate the current rule gives."
                if not stale
                else "made under the other rule (7b4cdc8 to its revert), whose gate the current rule changes (run again): "
                + ", ".join(stale)
                + "."
            ),
        ]
    lines += _reference_gate_lines(by)
    lines += _fallback_lines(by)
    lines += _validation_pick_lines(by, fractions)
    return "\n".join(lines)


def best_val(r: dict) -> float | None:
    """A run's best validation Dice over its checks (None without checks)."""
    vals = [float(v["val_dice"]) for v in r.get("validation", []) if "val_dice" in v]
    return max(vals) if vals else None


def _validation_pick_lines(
    by: dict[tuple[str, float], dict[int, dict]], fractions: list[float], arm: str = "diffseg-noA"
) -> list[str]:
    """The rule of the fallback applied to two separate runs: per seed, deploy whichever of ``arm`` and
    ``supervised`` has the higher best validation Dice (the twins on a tie), and score that run's test."""
    rows = []
    for f in fractions:
        a, sup = by.get((arm, f), {}), by.get(("supervised", f), {})
        va = {s: best_val(a[s]) for s in sorted(set(a) & set(sup))}
        vs = {s: best_val(sup[s]) for s in va}
        seeds = [s for s in va if va[s] is not None and vs[s] is not None]
        if not seeds:
            continue
        picked = {s: sup[s] if (vs[s] or 0.0) > (va[s] or 0.0) else a[s] for s in seeds}
        switched = [s for s in seeds if picked[s] is sup[s]]
        pick = {s: score(picked[s]) for s in seeds}
        rows.append(
            f"| {f:.0%} | {_mean_sd_cell(list(pick.values()))} | {len(switched)} of {len(seeds)}"
            + (f" (seed {', '.join(map(str, switched))})" if switched else "")
            + f" | {_paired_cell(pick, {s: score(a[s]) for s in seeds})}"
            f" | {_paired_cell(pick, {s: score(sup[s]) for s in seeds})} |"
        )
    if not rows:
        return []
    return [
        "",
        f"Deploying whichever of {arm} and supervised (separate runs) validates better, seed by seed — the "
        "fallback's rule, with the labels-only network a run of its own:",
        "",
        f"| fraction | test Dice | supervised picked | picked − {arm} | picked − supervised |",
        "|---|---|---|---|---|",
        *rows,
    ]


def _fallback_lines(by: dict) -> list[str]:
    """Every run with the fallback to labels alone: the twins' and the labels-only student's best
    validation Dice, and which the run deployed."""
    rows = []
    for (a, f), rs in sorted(by.items()):
        for s, r in sorted(rs.items()):
            kept = [v for v in r.get("validation", []) if "deployed_reference" in v]
            checks = [v for v in r.get("validation", []) if "val_reference" in v and "val_dice" in v]
            if not kept or not checks:
                continue
            twins = best_val(r)
            alone = max(float(v["val_reference"]) for v in checks)
            which = "labels-only student" if kept[-1]["deployed_reference"] else "twins"
            rows.append(f"| {a} | {f:.0%} | {s} | {twins:.3f} | {alone:.3f} | {which} |")
    if not rows:
        return []
    return [
        "",
        "The fallback to labels alone: the twins' and the labels-only student's best validation Dice, and "
        "what the run deployed (the better of the two):",
        "",
        "| arm | fraction | seed | twins (best) | labels-only (best) | deployed |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def _reference_gate_lines(by: dict) -> list[str]:
    """The reference gate over co-training, for every run that had it: the labels-only student and the
    twins at the last check, and the mean weights the steps got (the teacher's pseudo-labels; and CPS's,
    which is the reference weight with ``reference_gate_cps`` and 1 without)."""
    rows = []
    for (a, f), rs in sorted(by.items()):
        for s, r in sorted(rs.items()):
            checks = [v for v in r.get("validation", []) if "val_reference" in v and "val_dice" in v]
            if not checks or not reference_gates(r):  # the fallback's student gates nothing
                continue
            preset = r.get("provenance", {}).get("preset", {})
            margin = float(preset.get("pseudo_gate_margin", 0.05))
            ref_w = [_gate_weight(float(v["val_dice"]), float(v["val_reference"]), margin) for v in checks]
            cps_w = ref_w if preset.get("reference_gate_cps") else [1.0] * len(checks)
            n = len(checks)
            rows.append(
                f"| {a} | {f:.0%} | {s} | {checks[-1]['val_reference']:.3f} | {checks[-1]['val_dice']:.3f} "
                f"| {sum(v['gate'] for v in checks) / n:.2f} | {sum(cps_w) / n:.2f} |"
            )
    if not rows:
        return []
    return [
        "",
        "The reference gate (a labels-only student beside the twins) over co-training: its and the twins' "
        "validation Dice at the last check, and the mean weight over the checks of the teacher's "
        "pseudo-labels and of CPS (gated too with `reference_gate_cps`):",
        "",
        "| arm | fraction | seed | labels-only Dice (last) | students' Dice (last) | teacher weight | CPS weight |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def plot(out: Path) -> Path | None:
    """``dice.png`` beside the JSONs: test Dice (mean ± sample std over seeds) against the labeled fraction for
    the arms of PLOTTED, with converged full supervision (else supervised at 100 %) and 95 % of it."""
    by = load(out)
    if not by:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for n, a in enumerate(PLOTTED):
        fs = sorted(f for (arm, f) in by if arm == a and f < 1)
        if not fs:
            continue
        stats = [mean_sd([score(r) for r in by[(a, f)].values()]) for f in fs]
        dodge = 1 + 0.02 * (n - 2)  # the arms a little apart, so that their bars do not hide each other
        ax.errorbar(
            [100 * f * dodge for f in fs],
            [m for m, _ in stats],
            yerr=[0.0 if sd != sd else sd for _, sd in stats],
            marker="o",
            capsize=3,
            label=PLOT_LABELS.get(a, a),
        )
    for name in ("supervised-converged", "supervised"):
        full = by.get((name, 1.0))
        if full:
            ref, _ = mean_sd([score(r) for r in full.values()])
            ax.axhline(ref, color="grey", ls="--", label=f"{name}, 100 % ({len(full)} seeds)")
            ax.axhline(0.95 * ref, color="grey", ls=":", label="95 % of that")
            break
    some = next(iter(next(iter(by.values())).values()))
    ax.set_xlabel("labeled training images (%)")
    if main_key(some) == "ap_50":
        ax.set_ylabel("test AP@0.5 (objects)")
    else:
        ax.set_ylabel("test Dice" + (" (inside the field of view)" if some.get("scored_in_fov") else ""))
    ax.set_title(f"{out.name}, preset {some['preset']} (error bars: sample std over seeds)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    target = out / ("ap50.png" if main_key(some) == "ap_50" else "dice.png")
    fig.savefig(target)
    plt.close(fig)
    return target


def write_report(out: Path) -> str:
    """summary.md and dice.png (ap50.png for instance runs) of one dataset folder, from its JSONs."""
    text = report(out)
    (out / "summary.md").write_text(text + "\n")
    plot(out)
    return text


#: a README block made from one results folder: ``<!-- evidence:FOLDER -->`` ... ``<!-- /evidence:FOLDER -->``
README_BLOCK = re.compile(r"(<!-- evidence:(?P<name>[\w.-]+) -->\n).*?(<!-- /evidence:(?P=name) -->)", re.S)


def readme_block(out: Path, readme_dir: Path) -> str:
    """The README's table of one results folder, from its JSONs alone: every arm's mean ± sample std at each
    fraction, diffseg (and each ablation) paired by seed against the arms it is judged against, and the figure
    (``write_report`` draws it; the rest of the report stays in ``summary.md``)."""
    by = load(out)
    if not by:
        raise SystemExit(f"{out}: no result JSONs for its README block")
    fractions = sorted({f for _, f in by})
    arms = [a for a in ARMS if any((a, f) in by for f in fractions)]
    runs = [r for rs in by.values() for r in rs.values() if not r.get("derived_from")]
    derived = sum(1 for rs in by.values() for r in rs.values() if r.get("derived_from"))
    some = runs[0]
    commits = sorted({str(r.get("provenance", {}).get("commit"))[:7] for r in runs})
    what = "test AP@0.5" if main_key(some) == "ap_50" else "test Dice"
    made = f"{len(runs)} result JSONs" + (
        f" (and {derived} {' / '.join(DERIVED_ARMS)} results derived from diffseg-Tkeep runs)"
        if derived
        else ""
    )
    lines = [
        f"*Made from the {made} of [`{out.name}/`]({os.path.relpath(out, readme_dir)}/) by "
        "`python benchmarks/sweep.py --report-all --readme README.md` (do not edit by hand).* "
        f"{what[0].upper() + what[1:]}, {some['test']['n']} test images"
        + (" scored inside the field of view" if some.get("scored_in_fov") else "")
        + f", preset `{some['preset']}`; mean ± sample std over seeds (n); "
        f"{_machines(runs)} a run; commits " + ", ".join(commits) + ".",
        "",
    ]
    lines += _main_table(by, arms, fractions)
    lines += _share_lines(by, fractions)
    pairs = [(a, ref) for a in COMPARED for ref in REFERENCES]
    pairs += [(a, ref) for a in ARMS for ref in ABLATES.get(a, ()) if (a, ref) not in pairs]
    lines += ["", f"Paired by seed, {what} difference, mean [95 % t interval] (n):", ""]
    lines += _paired_table(by, fractions, pairs)
    figure = out / ("ap50.png" if main_key(some) == "ap_50" else "dice.png")
    lines += [
        "",
        f"![{out.name}: {what} against the labeled fraction]({os.path.relpath(figure, readme_dir)})",
    ]
    return "\n".join(lines)


def update_readme(readme: Path, results: Path = RESULTS) -> list[str]:
    """Rewrite every ``<!-- evidence:FOLDER -->`` block of ``readme`` from ``results/FOLDER``'s JSONs; returns
    the folders written. A block naming a folder without results stops with an error (nothing written)."""
    text = readme.read_text()
    done: list[str] = []

    def fill(m: re.Match[str]) -> str:
        done.append(m["name"])
        return m.group(1) + readme_block(results / m["name"], readme.resolve().parent) + "\n" + m.group(3)

    new = README_BLOCK.sub(fill, text)
    if new != text:
        readme.write_text(new)
    return done


def dataset_view(dataset: Path, split_csv: Path, views: Path) -> Path:
    """``<views>/<dataset>-<split stem>``: symlinks to the dataset's images/, masks/, fov/ and instances/, and
    a copy of ``split_csv`` as its split.csv (the dataset itself is never copied or changed)."""
    dataset = dataset.resolve()
    view = views / f"{dataset.name}-{split_csv.stem.removeprefix(dataset.name + '_')}"
    view.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "masks", "fov", "instances"):
        src, link = dataset / sub, view / sub
        if src.is_dir() and not link.exists():
            link.symlink_to(src, target_is_directory=True)
    (view / "split.csv").write_text(split_csv.read_text())
    return view


def object_class_view(dataset: Path, column: str, views: Path) -> tuple[Path, str]:
    """Objects of several classes from a per-image label of ``split.csv`` (GlaS: ``grade_glas``, benign or
    malignant): ``<views>/<dataset>-<column>`` with symlinks to images/ and instances/, the split.csv, and
    masks/ written as class maps (each object of an image takes the image's class: its value's position in
    the sorted values, from 1). Returns the view and the ``--classes`` list (background first).

    Raises:
        SystemExit: No such column, or an image without a value.
    """
    import csv

    import numpy as np
    import tifffile

    from napari_diffseg.base.masks import read_labels
    from napari_diffseg.data.dataset import DatasetFolder

    dataset = dataset.resolve()
    with (dataset / "split.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or column not in rows[0]:
        raise SystemExit(f"{dataset / 'split.csv'} has no column {column!r}")
    values = sorted({r[column].strip() for r in rows})
    if "" in values or len(values) < 2:
        raise SystemExit(
            f"column {column!r} needs a value for every image and at least two values, got {values}"
        )
    view = views / f"{dataset.name}-{column}"
    (view / "masks").mkdir(parents=True, exist_ok=True)
    for sub in ("images", "instances"):
        link = view / sub
        if not link.exists():
            link.symlink_to(dataset / sub, target_is_directory=True)
    for r in rows:
        target = view / "masks" / f"{r['id']}.tif"
        if target.exists():
            continue
        source = DatasetFolder(dataset).instance_path(r["id"])
        if source is None:
            raise SystemExit(f"{dataset} has no instances/ file for {r['id']}")
        ids = read_labels(source)
        tifffile.imwrite(target, ((ids > 0) * (values.index(r[column].strip()) + 1)).astype(np.uint8))
    (view / "split.csv").write_text((dataset / "split.csv").read_text())
    return view, ",".join(["background", *values])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path)
    ap.add_argument("--split", type=Path, default=None, help="another split.csv for the dataset (a view)")
    ap.add_argument(
        "--views",
        type=Path,
        default=Path(tempfile.gettempdir()) / "diffseg-views",
        help="where --split views are made (outside the repository)",
    )
    ap.add_argument("--report-all", action="store_true", help="summary.md + dice.png of every results folder")
    ap.add_argument(
        "--readme",
        type=Path,
        help="with --report-all: also rewrite this file's <!-- evidence:FOLDER --> blocks from the JSONs",
    )
    ap.add_argument("--arms", nargs="+", default=["diffseg", "supervised", "cps", "mean-teacher"])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/evidence/<dataset>")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--task", default="binary", choices=("binary", "multiclass", "instances"))
    ap.add_argument("--classes", default=None, help="--task multiclass: class names, background first")
    ap.add_argument(
        "--object-classes",
        default=None,
        metavar="COLUMN",
        help="--task instances: objects of several classes, each object taking its image's value of this "
        "split.csv column (GlaS: grade_glas); a view with class maps is made under --views",
    )
    ap.add_argument(
        "--watershed",
        default="default",
        choices=("default", "tuned"),
        help="--task instances: the fixed watershed (default; what every evidence folder before it used) or "
        "the one tuned on the validation images (diffseg experiment's default); tuned results go to "
        "<dataset>-instances-tuned",
    )
    ap.add_argument(
        "--models",
        type=Path,
        default=None,
        help="also keep each run's trained model, as MODELS/<results folder>/<arm>_f<fraction>_s<seed>/ "
        "(outside the repository: for evaluating again without training again)",
    )
    ap.add_argument(
        "--teacher-test",
        action="store_true",
        help="diffseg arms: also score the teacher's own masks on the test images (test_teacher in the JSON; "
        "reporting only: would deploying the teacher where it validates best pay?)",
    )
    args = ap.parse_args()
    unknown = set(args.arms) - set(ARMS)
    if unknown:
        ap.error(f"unknown arm(s) {sorted(unknown)}; known: {', '.join(ARMS)}")
    if args.readme is not None and not args.report_all:
        ap.error("--readme goes with --report-all (the README's blocks are rewritten after every summary)")
    if args.report_all:
        for folder in sorted(p for p in (args.out or RESULTS).iterdir() if p.is_dir()):
            if any(folder.glob("*.json")):
                write_report(folder)
                print(f"{folder}: summary.md, dice.png")
        if args.readme is not None:
            print(f"{args.readme}: blocks of {', '.join(update_readme(args.readme, args.out or RESULTS))}")
        return
    if args.dataset is None:
        ap.error("--dataset is required (or --report-all)")
    if args.split is not None:
        args.dataset = dataset_view(args.dataset, args.split, args.views)
    if args.object_classes is not None:
        if args.task != "instances":
            ap.error("--object-classes goes with --task instances")
        args.dataset, args.classes = object_class_view(args.dataset, args.object_classes, args.views)
    tuned = args.task == "instances" and args.watershed == "tuned"
    out = args.out or RESULTS / (
        args.dataset.resolve().name
        + ("" if args.task == "binary" else f"-{args.task}")
        + ("-tuned" if tuned else "")
    )
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
            target = result_path(out, a, f, s)
            # another sweep may be doing it, or have done it since the list was made (claim, then look,
            # so that a run finished between the two is not done again)
            ours = claim(target)
            if not ours or target.exists():
                if ours:
                    release(target)
                print(f"{a} f={f:g} s={s}: done or running in another sweep, skipped", flush=True)
                continue
            t0 = time.perf_counter()
            try:
                rc = run_one(
                    args.dataset,
                    out,
                    a,
                    f,
                    s,
                    args.preset,
                    args.threads,
                    args.task,
                    args.classes,
                    args.watershed,
                    args.models,
                    args.teacher_test,
                )
            finally:
                release(target)
            status = "ok" if rc == 0 else f"FAILED (rc {rc}, see .log)"
            print(f"{a} f={f:g} s={s}: {status} in {time.perf_counter() - t0:.0f} s", flush=True)
    print(write_report(out))


if __name__ == "__main__":
    main()
