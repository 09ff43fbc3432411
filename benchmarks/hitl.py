"""Human-in-the-loop simulation (issue #5): does the correct-and-retrain loop save annotators work?

    python benchmarks/hitl.py --dataset glas                      # every arm that is missing, then report
    python benchmarks/hitl.py --dataset drive --k 2 --b 2 --rounds 3
    python benchmarks/hitl.py --dataset glas --arms uncertainty --jobs 1 --threads 2
    python benchmarks/hitl.py --report-only
    python benchmarks/hitl.py --dataset glas --rounds 3 --arms power uncertainty full --threads 1 \
        --cotrain-steps 600 --refresh-every 300 --out benchmarks/results/hitl_long   # 2x budget per round
    python benchmarks/hitl.py --dataset glas --rounds 3 --arms power full --threads 2 --device cuda \
        --cotrain-steps 1200 --refresh-every 600 --out benchmarks/results/hitl_gpu   # 4x, on a GPU
    python benchmarks/hitl.py --dataset glas --arms power --rounds 2 --correct-last --threads 1 --seed 2 \
        --out benchmarks/results/hitl_default     # target 2 at the default budget: round 2's corrections

The loop runs through the product itself: a real project store, the backend's own ``cotrain`` and
``propose`` jobs (``backend.jobs.execute_job``, in-process) and the store's edit-Dice bookkeeping. Test
images never enter the project; they are read only to score the students after each round.

Arms (one process each; ``--jobs 2`` runs two at a time with ``--threads`` torch threads each):

- ``uncertainty``: start with ``k`` ground-truth images; after each co-training round the teacher proposes
  on every unlabeled training image and a simulated annotator corrects the ``b`` most uncertain ones (the
  correction is the ground truth, saved against the proposal it started from, so the store records edit
  Dice and pixels changed); then the next round, warm-started from the last model.
- ``power``: the same, but the ``b`` images are drawn with probability proportional to their uncertainty
  (stochastic power acquisition, Kirsch et al. 2023; ``core/acquisition.py``).
- ``random``: the same, but the ``b`` images are drawn at random (proposals made only for them).
- ``scratch``: annotating from scratch: a supervised student trained on the same number of fully drawn
  (random) images, for as many student iterations as the diffseg students have had by that round.
- ``full``: the fully supervised reference: every training image labeled, same iteration budget as the
  last round.

"Pixels drawn from scratch" for an image is its number of foreground pixels in the ground truth, so
``changed / drawn`` is the share of painting a correction costs compared with drawing the mask.

Protocol (issue 14): ``--val-fraction`` (default 0.2) of the training images are carved, seeded, into a
validation split before anything else (``experiment.choose_val``, as ``diffseg experiment``): imported into
the project as annotated ``val`` images, they choose the kept checkpoint and gate the pseudo-labels, and are
never picked, corrected or counted as training images; the start images and every pick come from the rest.
The test images score each round's students (the learning curve is the measurement; nothing is chosen on
them). Every arm's JSON records ``provenance`` (commit, dirty flag, resolved preset, versions, device,
threads, wall seconds).

Instances (``--task instances``, issue 13): the project is created with task ``instances``; the start
images, the validation images and every correction are the dataset's ``instances/`` (one id per object), and
each correction is saved against the proposal it started from, so the store records its edit cost in
objects (added / removed / changed, matched at IoU >= 0.5, ``base.labels.object_edits`` on the objects the
annotator was shown). Each round's row records, per corrected image, those counts beside the number of true
objects (the cost of drawing every object from scratch), and the students' test AP@0.5 / AP@0.75 / F1@0.5
(objects by the product's seeded watershed) beside the foreground's Dice; the scratch and full arms train
supervised 3-class (background / interior / boundary) students. Files: ``<dataset>_instances_<arm>_s<seed>``,
the report's "objects fixed per image by round vs objects drawn from scratch" section and
``<dataset>_instances.png``::

    python benchmarks/hitl.py --dataset dsb2018_nuclei --task instances --arms uncertainty scratch \
        --k 2 --b 3 --rounds 3 --threads 1 --out benchmarks/results/hitl_instances

Results: ``benchmarks/results/hitl/<dataset>_<arm>_s<seed>.json`` (resumable: finished arms are skipped),
``benchmarks/results/hitl/summary.md`` and ``benchmarks/results/hitl/<dataset>.png``. Working projects go
to ``--work`` (default a temp folder), never into the repository.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from glas_sweep import machine  # same folder: "CPU model, N cores"

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
OUT = HERE / "results" / "hitl"
ARMS = ("uncertainty", "power", "random", "scratch", "full")
LOOP_ARMS = ("uncertainty", "power", "random")  # the correct-and-co-train loop, through the project

# Per-round budget: the cpu preset with shorter stages, since every round warm-starts from the last one.
OVERRIDES = {"teacher_steps": 200, "cotrain_steps": 300, "refresh_every": 150}
PROPOSAL = {"steps": 5, "samples": 4}
OBJECT_KEYS = (
    "objects_added",
    "objects_removed",
    "objects_changed",
)  # as the store records them  # DDIM S=5 scores like S=10 (benchmarks/teacher_cost.py)


def _arm_path(out: Path, dataset: str, arm: str, seed: int, task: str = "binary") -> Path:
    return out / f"{dataset}{'' if task == 'binary' else '_' + task}_{arm}_s{seed}.json"


# ------------------------------------------------------------------------------------------------
# one arm (runs in its own process)
# ------------------------------------------------------------------------------------------------
def _fov(dataset_dir: Path, image_id: str):
    """DRIVE's field-of-view mask (standard protocol: score inside the FOV only), else None."""
    import numpy as np

    from napari_diffseg.data.io import read_mask

    path = dataset_dir / "fov" / f"{image_id}.png"
    return read_mask(path).astype(bool) if path.exists() else np.ones((0, 0), bool)


def _evaluate(bundle, test, preset) -> dict:
    import numpy as np

    from napari_diffseg.core.inference import predict_probs
    from napari_diffseg.core.metrics import segmentation_metrics, summarize

    per = []
    nets = bundle.deployed()
    for image_id, raw, y, fov in test:
        x = bundle.preprocess(raw)  # with the model's own normalisation
        probs = predict_probs(
            nets, x[None], multiple=bundle.spec.multiple, roi=preset.roi_size, sw_batch=preset.sw_batch_size
        )
        pred = probs.argmax(1)[0].cpu().numpy()
        if fov.size:
            pred = np.where(fov, pred, 0)
        per.append({"id": image_id, **segmentation_metrics(pred, y, bundle.spec.num_classes)})
    s = summarize(per)
    return {"dice": float(s["dice_mean"]), "iou": float(s["iou_mean"]), "n": int(s["n"])}


def _evaluate_instances(bundle, test, preset) -> dict:
    """An instance model's test figures: the students' 3-class output → objects by the product's seeded
    watershed, AP@0.5 / AP@0.75 / F1@0.5 against ``instances/`` (means over the images, as ``diffseg
    experiment --task instances``) and the foreground's pixel Dice."""
    from napari_diffseg.experiment import evaluate_instances

    ids = [t[0] for t in test]
    s = evaluate_instances(bundle, [bundle.preprocess(t[1]) for t in test], [t[2] for t in test], ids, preset)
    return {
        "dice": float(s["dice_mean"]),
        "iou": float(s["iou_mean"]),
        "ap_50": float(s["ap_50"]),
        "ap_75": float(s["ap_75"]),
        "f1_50": float(s["f1_50"]),
        "n": int(s["n"]),
    }


def _objects(proposed, truth) -> dict:
    """The edit cost in objects (``base.labels.object_edits``, as the store counts it) of correcting the
    objects ``proposed`` into ``truth``, beside the objects drawn from scratch (every true object)."""
    import numpy as np

    from napari_diffseg.base.labels import object_edits

    e = object_edits(proposed, truth)
    return {
        "objects_added": int(e.added),
        "objects_removed": int(e.removed),
        "objects_changed": int(e.changed),
        "objects_fixed": int(e.added + e.removed + e.changed),
        "objects_proposed": len(np.unique(proposed[proposed > 0])),
        "objects_drawn_from_scratch": len(np.unique(truth[truth > 0])),
    }


def _pool_objects(project, ds, pool: list, model_id: str) -> dict:
    """An instance project's :func:`_pool_cost`: the objects the annotator would fix on every image of
    ``pool`` had they corrected its proposal from ``model_id`` (the objects the store shows: the
    product's seeded watershed of the proposal), per image, against the objects drawn from scratch."""
    from napari_diffseg.core.instances import proposal_instances

    rows = []
    for image_id in pool:
        found = project.proposal(image_id, model_id)
        assert found is not None
        rows.append(_objects(proposal_instances(found[1]), ds.load_instances(project.image(image_id).name)))
    n = max(len(rows), 1)
    fixed = sum(r["objects_fixed"] for r in rows)
    drawn = sum(r["objects_drawn_from_scratch"] for r in rows)
    return {
        "n": len(rows),
        **({k: sum(r[k] for r in rows) / n for k in rows[0]} if rows else {}),
        "fixed_over_drawn": fixed / max(drawn, 1),
    }


def _save_round1(project, work: Path, cache: Path, meta: dict) -> None:
    """Snapshot the project after round 1 into ``cache`` (a consistent copy of the SQLite store through
    its backup API, the files beside it copied; written to a temp folder and renamed into place)."""
    import sqlite3

    if cache.exists():
        return
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(work, tmp, ignore=shutil.ignore_patterns("project.db*", "*.lock"))
    src = sqlite3.connect(work / "project.db")
    dst = sqlite3.connect(tmp / "project.db")
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    (tmp / "round1.json").write_text(json.dumps(meta))
    try:
        os.replace(tmp, cache)
    except OSError:  # another arm got there first
        shutil.rmtree(tmp, ignore_errors=True)


def _restore_round1(cache: Path, work: Path) -> dict | None:
    """Copy a round-1 snapshot to ``work``; its metadata, or None when there is none."""
    meta = cache / "round1.json"
    if not meta.exists():
        return None
    shutil.copytree(cache, work, ignore=shutil.ignore_patterns("round1.json"))
    return json.loads(meta.read_text())


def _pool_cost(project, ds, pool: list, model_id: str) -> dict:
    """Edit Dice and changed÷drawn (pooled) over every image of ``pool``, had the annotator corrected
    its proposal from ``model_id``: the cost of an average image, beside that of the picked ones."""
    import numpy as np

    from napari_diffseg.base.labels import edit_stats

    changed = drawn = 0
    dices = []
    for image_id in pool:
        found = project.proposal(image_id, model_id)
        assert found is not None
        truth = ds.load_mask(project.image(image_id).name)
        dice, n = edit_stats(np.argmax(found[1], axis=0), truth)
        dices.append(dice)
        changed += n
        drawn += int(np.count_nonzero(truth))
    return {
        "n": len(pool),
        "mean_edit_dice": float(np.mean(dices)),
        "changed_over_drawn": changed / max(drawn, 1),
    }


def run_arm(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from napari_diffseg.backend.jobs import execute_job, start_job
    from napari_diffseg.base.contracts import parse_job_params
    from napari_diffseg.base.preprocessing import dataset_statistics
    from napari_diffseg.base.presets import get_preset
    from napari_diffseg.base.task import make_task
    from napari_diffseg.core.acquisition import acquire
    from napari_diffseg.core.device import choose_device
    from napari_diffseg.core.instances import instances_to_target, proposal_instances
    from napari_diffseg.core.models import ModelBundle, ModelSpec, load_bundle, preprocess
    from napari_diffseg.core.pipeline import run_stages
    from napari_diffseg.core.training import TrainData
    from napari_diffseg.data.dataset import DatasetFolder
    from napari_diffseg.experiment import git_state
    from napari_diffseg.project import Project

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    started = git_state()  # the code this arm runs (HEAD may move while it runs)
    dataset_dir = Path(args.data) / args.dataset
    ds = DatasetFolder(dataset_dir)
    instances = args.task == "instances"
    # the annotator's truth: object ids (instances/) for an instance project, else the binary mask
    truth_of = ds.load_instances if instances else ds.load_mask
    n_classes = 3 if instances else 2  # an instance model learns background / interior / boundary
    from napari_diffseg.core.validation import ValSet
    from napari_diffseg.experiment import choose_val, provenance

    all_train, test_ids = sorted(ds.train_ids), sorted(ds.test_ids)
    val_ids = sorted(ds.val_ids) or choose_val(all_train, args.val_fraction, args.seed)
    train_ids = [i for i in all_train if i not in set(val_ids)]
    rng = np.random.default_rng(args.seed)
    start_ids = sorted(rng.choice(train_ids, size=args.k, replace=False).tolist())  # same for every arm
    arm_rng = np.random.default_rng(args.seed + 1)
    channels = 3 if ds.load_image(train_ids[0]).shape[0] == 3 else 1

    # the supervised arms' input statistics: over every train image (label-free), as a project's model has
    norm = dataset_statistics((ds.load_image(i) for i in train_ids), channels)

    def tensor(image_id: str) -> torch.Tensor:
        return preprocess(ds.load_image(image_id), channels, norm)

    test = [(i, ds.load_image(i), truth_of(i), _fov(dataset_dir, i)) for i in test_ids]
    evaluate = _evaluate_instances if instances else _evaluate

    def target(image_id: str) -> torch.Tensor:  # what a supervised network learns (as the cotrain job)
        if instances:
            return torch.from_numpy(instances_to_target(ds.load_instances(image_id)).astype(np.int64))
        return torch.from_numpy(ds.load_mask(image_id))

    def val_set() -> ValSet:  # the supervised arms' validation images, as the project's cotrain job has them
        regions = [_fov(dataset_dir, i) for i in val_ids]
        return ValSet(
            [tensor(i) for i in val_ids],
            [target(i) for i in val_ids],
            [torch.from_numpy(r) if r.size and not instances else None for r in regions],
        )

    overrides = {k: getattr(args, k) for k in OVERRIDES} if args.preset == "cpu" else {}
    params = {"preset": args.preset, "overrides": overrides, "seed": args.seed, "device": args.device}
    device = choose_device(args.device)
    preset = parse_job_params("cotrain", params).resolve_preset()
    rounds_out: list[dict] = []
    result = {
        "dataset": args.dataset,
        **({"task": "instances"} if instances else {}),  # binary results stay exactly as they were
        "arm": args.arm,
        "seed": args.seed,
        "k": args.k,
        "b": args.b,
        "rounds": args.rounds,
        "correct_last": bool(args.correct_last),
        "n_train": len(train_ids),
        "n_val": len(val_ids),
        "val_ids": val_ids,
        "n_test": len(test_ids),
        "start_ids": start_ids,
        "preset": args.preset,
        "overrides": overrides,
        "proposal": PROPOSAL,
        "torch_threads": args.threads,
        "device": args.device,
        "machine": machine(),
        **({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}),
        "per_round": rounds_out,
    }

    if args.arm in ("scratch", "full"):
        labeled = list(start_ids)
        rounds = 1 if args.arm == "full" else args.rounds
        for r in range(1, rounds + 1):
            if args.arm == "full":
                labeled = list(train_ids)
                steps = preset.cotrain_steps * args.rounds
            else:
                steps = preset.cotrain_steps * r
            t0 = time.perf_counter()
            pr = get_preset(args.preset).with_overrides(**{**overrides, "cotrain_steps": steps})
            spec = ModelSpec(
                "supervised", channels, n_classes, pr.student_channels, pr.teacher_channels, pr.emb_dim
            )
            bundle = ModelBundle(spec, seed=args.seed, normalization=norm).to(device)
            data = TrainData(
                [tensor(i) for i in labeled],
                [target(i) for i in labeled],
                val=val_set(),
            )
            gen = torch.Generator().manual_seed(args.seed)
            for _ in run_stages(bundle, data, pr, generator=gen, seed=args.seed, device=device):
                pass
            t_train = time.perf_counter() - t0
            t0 = time.perf_counter()
            score = evaluate(bundle, test, pr)
            rounds_out.append(
                {
                    "round": r,
                    "n_labeled": len(labeled),
                    "fraction_labeled": len(labeled) / len(train_ids),
                    "student_steps": steps,
                    "test_dice": score["dice"],
                    "test_iou": score["iou"],
                    **({f"test_{k}": score[k] for k in ("ap_50", "ap_75", "f1_50")} if instances else {}),
                    "seconds_train": t_train,
                    "seconds_eval": time.perf_counter() - t0,
                    # from scratch every foreground pixel is drawn
                    "drawn_pixels_per_image": float(
                        np.mean([int((ds.load_mask(i) > 0).sum()) for i in labeled])
                    ),
                    # and every object
                    **(
                        {
                            "drawn_objects_per_image": float(
                                np.mean([len(np.unique(truth_of(i))) - 1 for i in labeled])
                            )
                        }
                        if instances
                        else {}
                    ),
                }
            )
            print(json.dumps(rounds_out[-1]), flush=True)
            pool = [i for i in train_ids if i not in labeled]
            labeled += sorted(arm_rng.choice(pool, size=min(args.b, len(pool)), replace=False).tolist())
        result["seconds"] = time.perf_counter() - t_start
        result["provenance"] = {**provenance(pr, device, started=started), "wall_seconds": result["seconds"]}
        return result

    work = Path(args.work) / f"{args.dataset}{'_instances' if instances else ''}_{args.arm}_s{args.seed}"
    if work.exists():
        shutil.rmtree(work)
    # Round 1 (pretraining + the first co-training round on the k start images) is the same for every
    # loop arm of a seed: the first arm to get there snapshots it and the others start from the copy.
    cache = Path(args.work) / (
        f"_round1_{args.dataset}_s{args.seed}_k{args.k}_{args.preset}_t{args.threads}_"
        + "_".join(f"{k}{v}" for k, v in sorted(overrides.items()))
        + f"_v{len(val_ids)}"
        + ("" if device.type == "cpu" else f"_{device.type}")
        + ("_instances" if instances else "")
    )
    cached = _restore_round1(cache, work)
    result["round1_from_cache"] = cached is not None
    task = make_task("instances") if instances else None
    with Project.open(work) if cached is not None else Project.create(work, task=task) as project:
        if cached is None:
            for i in train_ids:
                mask = truth_of(i) if i in start_ids else None
                project.import_array(ds.load_image(i), i, mask, split="train")
            for i in val_ids:  # annotated validation images: checkpoint choice and the pseudo-label gate
                project.import_array(ds.load_image(i), i, truth_of(i), split="val")
        labeled = list(start_ids)
        for r in range(1, args.rounds + 1):
            t0 = time.perf_counter()
            if r == 1 and cached is not None:
                t_train = float(cached["seconds_train"])  # as measured by the arm that trained it
            else:
                job = start_job(project, "cotrain", params)
                state = execute_job(work, job)
                if state != "done":
                    raise SystemExit(f"cotrain job {job} ended {state}")
                t_train = time.perf_counter() - t0
                if r == 1:
                    _save_round1(project, work, cache, {"seconds_train": t_train, "start_ids": start_ids})
            active = project.active_model()
            assert active is not None
            bundle, _, _ = load_bundle(project.model_dir(active.id), device)
            t0 = time.perf_counter()
            score = evaluate(bundle, test, preset)
            row: dict = {
                "round": r,
                "model": active.id,
                "n_labeled": len(labeled),
                "fraction_labeled": len(labeled) / len(train_ids),
                "student_steps": preset.cotrain_steps * r,
                "test_dice": score["dice"],
                "test_iou": score["iou"],
                **({f"test_{k}": score[k] for k in ("ap_50", "ap_75", "f1_50")} if instances else {}),
                "seconds_train": t_train,
                "seconds_eval": time.perf_counter() - t0,
            }
            if r < args.rounds or args.correct_last:
                # ---- the annotator's turn: proposals from this round's teacher, correct b images ----
                pool = [rec.id for rec in project.images(split="train") if rec.name not in labeled]
                t0 = time.perf_counter()
                if args.arm in ("uncertainty", "power"):
                    job = start_job(project, "propose", {**params, **PROPOSAL})
                    execute_job(work, job)
                    scores = [project.image(i).uncertainty for i in pool]
                    picked = acquire(scores, args.b, args.arm, rng=arm_rng)
                    chosen = [pool[j] for j in picked]
                else:
                    chosen = arm_rng.choice(pool, size=min(args.b, len(pool)), replace=False).tolist()
                    job = start_job(project, "propose", {**params, **PROPOSAL, "ids": chosen})
                    execute_job(work, job)
                t_propose = time.perf_counter() - t0
                if args.arm in ("uncertainty", "power"):
                    # every unlabeled image has a proposal now: what correcting *any* of them would cost
                    row["pool"] = (_pool_objects if instances else _pool_cost)(project, ds, pool, active.id)
                edits = []
                for image_id in chosen:
                    rec = project.image(image_id)
                    found = project.proposal(image_id, active.id)
                    assert found is not None
                    truth = truth_of(rec.name)
                    version = project.save_annotation(
                        image_id, truth, kind="correction", replaces=None, proposal_id=found[0].id
                    )
                    ann = project.annotation(image_id, version)
                    assert ann is not None and ann.pixels_changed is not None
                    drawn = int((truth > 0).sum())
                    edits.append(
                        {
                            "image": rec.name,
                            "uncertainty": rec.uncertainty,
                            "edit_dice": ann.edit_dice,
                            "pixels_changed": int(ann.pixels_changed),
                            "pixels_drawn_from_scratch": drawn,
                            "changed_over_drawn": ann.pixels_changed / max(drawn, 1),
                        }
                    )
                    if instances:  # the store's object edit cost, against drawing every object
                        assert ann.objects_added is not None
                        objects = _objects(proposal_instances(found[1]), truth)  # what the store shows
                        stored = (ann.objects_added, ann.objects_removed, ann.objects_changed)
                        assert stored == tuple(objects[k] for k in OBJECT_KEYS), (stored, objects)
                        edits[-1].update(objects)
                    labeled.append(rec.name)
                row.update(
                    {
                        "seconds_propose": t_propose,
                        "corrections": edits,
                        "mean_edit_dice": float(np.mean([e["edit_dice"] for e in edits])),
                        "mean_pixels_changed": float(np.mean([e["pixels_changed"] for e in edits])),
                        "mean_changed_over_drawn": float(np.mean([e["changed_over_drawn"] for e in edits])),
                    }
                )
                if instances:
                    row.update(
                        {
                            f"mean_{k}": float(np.mean([e[k] for e in edits]))
                            for k in (*OBJECT_KEYS, "objects_fixed", "objects_drawn_from_scratch")
                        }
                    )
            rounds_out.append(row)
            print(json.dumps(row), flush=True)  # with its corrections: --salvage rebuilds an arm from this
        result["check"] = project.check().get("ok", None)
    result["seconds"] = time.perf_counter() - t_start
    result["provenance"] = {**provenance(preset, device, started=started), "wall_seconds": result["seconds"]}
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def load(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*_s*.json"))]


def _n_test(args: argparse.Namespace, dataset: str) -> int | None:
    """The dataset's number of test images (for an arm rebuilt from its log with no finished arm beside it)."""
    from napari_diffseg.data.dataset import DatasetFolder

    folder = Path(args.data) / dataset
    return len(DatasetFolder(folder).test_ids) if folder.is_dir() else None


def salvage(out: Path, dataset: str, arm: str, seed: int, args: argparse.Namespace) -> Path | None:
    """An arm stopped before its end (time ran out): its JSON from the per-round lines of its log, marked
    ``incomplete``. Logs written since the per-round lines carry the corrections hold them; for older logs
    they come from the arm's kept project under ``--work``, or only their means are there."""
    task = getattr(args, "task", "binary")
    target = _arm_path(out, dataset, arm, seed, task)
    log = target.with_suffix(".log")
    if target.exists() or not log.exists():
        return None
    rows = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            rows.append(json.loads(line))
    if not rows:
        return None
    logged = {r["round"] for r in rows if "corrections" in r}  # logs written since the rows carry them
    project_dir = Path(args.work) / target.stem
    if (
        task == "binary" and (project_dir / "project.db").exists()
    ):  # instance logs carry their corrections  # the per-image corrections, from the project it drove
        import numpy as np

        from napari_diffseg.project import Project

        with Project.open(project_dir) as project:
            by_id = {p.id: p for p in project.proposals()}
            rounds = {m.id: m.round for m in project.models()}
            for rec in project.images():
                for ann in project.annotation_versions(rec.id):
                    prop = by_id.get(ann.proposal_id) if ann.proposal_id is not None else None
                    if ann.kind != "correction" or prop is None:
                        continue
                    r = rounds.get(prop.model_id)
                    row = next((x for x in rows if x["round"] == r), None)
                    if row is None or "mean_edit_dice" not in row or r in logged:
                        continue
                    drawn = int(np.count_nonzero(project.load_annotation(rec.id, ann.version)))
                    row.setdefault("corrections", []).append(
                        {
                            "image": rec.name,
                            "uncertainty": prop.uncertainty,
                            "edit_dice": ann.edit_dice,
                            "pixels_changed": ann.pixels_changed,
                            "pixels_drawn_from_scratch": drawn,
                            "changed_over_drawn": (ann.pixels_changed or 0) / max(drawn, 1),
                        }
                    )
    done = next((r for r in load(out) if r["dataset"] == dataset and r.get("task", "binary") == task), {})
    # where it ran: as the finished arms beside it, when they ran on the same kind of device
    same = done.get("device", "cpu") == args.device
    result = {
        "dataset": dataset,
        **({"task": task} if task != "binary" else {}),
        "arm": arm,
        "seed": seed,
        "k": args.k,
        "b": args.b,
        "rounds": args.rounds,
        "n_train": done.get("n_train") or round(rows[0]["n_labeled"] / rows[0]["fraction_labeled"]),
        "n_test": done.get("n_test") or (_n_test(args, dataset) if task != "binary" else None),
        "preset": args.preset,
        "overrides": {k: getattr(args, k) for k in OVERRIDES} if args.preset == "cpu" else {},
        "torch_threads": args.threads,
        "device": args.device,
        "machine": done["machine"] if same and "machine" in done else machine(),
        **({"gpu": done["gpu"]} if same and "gpu" in done else {}),
        "incomplete": f"stopped after {len(rows)} of {args.rounds} rounds; rebuilt from its log",
        "per_round": rows,
        "seconds": sum(
            r.get("seconds_train", 0) + r.get("seconds_propose", 0) + r.get("seconds_eval", 0) for r in rows
        ),
    }
    target.write_text(json.dumps(result, indent=2))
    return target


ARM_TITLES = {
    "uncertainty": "most uncertain",
    "power": "uncertainty-weighted draw",
    "random": "random",
    "scratch": "from scratch",
}


def _cell(by_arm: dict, arm: str, i: int, key: str = "test_dice") -> str:
    run = by_arm.get(arm)
    if run is None or i >= len(run["per_round"]) or key not in run["per_round"][i]:
        return "—"
    return f"{run['per_round'][i][key]:.3f}"


def _pooled_ratio(row: dict) -> float:
    """Pixels changed over pixels drawn from scratch, summed over the round's corrected images (a mean of
    per-image ratios would let one image with a tiny mask dominate); the per-image mean when the
    per-image numbers are not there (an arm salvaged from its log)."""
    edits = row.get("corrections")
    if edits:
        return sum(e["pixels_changed"] for e in edits) / max(
            1, sum(e["pixels_drawn_from_scratch"] for e in edits)
        )
    return float(row["mean_changed_over_drawn"])


def _edit(by_arm: dict, arm: str, i: int) -> str:
    run = by_arm.get(arm)
    if run is None or i >= len(run["per_round"]) or "mean_edit_dice" not in run["per_round"][i]:
        return "—"
    row = run["per_round"][i]
    star = "" if row.get("corrections") else "*"
    return f"{row['mean_edit_dice']:.3f} / {row['mean_pixels_changed'] / 1000:.1f}k / {_pooled_ratio(row):.2f}{star}"


def _findings(arm: str, run: dict, full_dice: float) -> list[str]:
    """Where a loop arm stands against the two targets of issue #5."""
    title = ARM_TITLES[arm]
    out = []
    target = 0.95 * full_dice
    hit = [r for r in run["per_round"] if r["test_dice"] >= target]
    if hit:
        first = hit[0]
        out.append(
            f"- **{title}**: 95 % of fully supervised ({target:.3f}) first reached in round {first['round']} "
            f"with {first['n_labeled']} labeled images ({100 * first['fraction_labeled']:.0f} % of the "
            f"training set): test Dice {first['test_dice']:.3f}."
        )
    else:
        out.append(
            f"- **{title}**: 95 % of fully supervised ({target:.3f}) not reached within the rounds run."
        )
    if len(run["per_round"]) >= 2 and "mean_changed_over_drawn" in run["per_round"][1]:
        ratio = _pooled_ratio(run["per_round"][1])
        verdict = "met" if ratio <= 1 / 3 else "missed"
        pool = run["per_round"][1].get("pool")
        average = (
            f"; correcting an average unlabeled image would have changed {pool['changed_over_drawn']:.2f}"
            if pool
            else ""
        )
        out.append(
            f"  Round 2 corrections changed {ratio:.2f} of the pixels the annotator would draw from scratch "
            f"(target ≤ 0.33: {verdict}{average}). Wall time {run['seconds']:.0f} s "
            f"({run['torch_threads']} torch thread(s){', round 1 from the shared snapshot' if run.get('round1_from_cache') else ''})."
        )
    return out


def _full_dice(runs: list[dict], seed: int) -> float:
    """The fully supervised reference of this seed, else the mean over the seeds that have one."""
    fulls = {r["seed"]: r["per_round"][-1]["test_dice"] for r in runs if r["arm"] == "full"}
    if seed in fulls:
        return fulls[seed]
    return float(sum(fulls.values()) / len(fulls)) if fulls else math.nan


def _seed_section(by_arm: dict, full_dice: float) -> list[str]:
    """The per-seed tables of one dataset: test Dice per arm and round, then the annotator's work."""
    any_run = next(iter(by_arm.values()))
    dice_arms = [a for a in (*LOOP_ARMS, "scratch") if a in by_arm]
    loop_arms = [a for a in LOOP_ARMS if a in by_arm]
    lines = [
        f"#### {any_run['dataset']}, seed {any_run['seed']}: {any_run['n_train']} training images, "
        f"{any_run['n_test']} test images, k = {any_run['k']} to start, b = {any_run['b']} corrected per round",
        "",
        f"Fully supervised ({any_run['n_train']} images, same iteration budget): test Dice **{full_dice:.3f}**"
        if "full" in by_arm
        else (
            f"Fully supervised reference: {full_dice:.3f} (the other seeds' mean)"
            if not math.isnan(full_dice)
            else "Fully supervised reference: not run yet."
        ),
        "",
    ]
    if not dice_arms:
        return lines
    lines += [
        "| round | labeled images | " + " | ".join(ARM_TITLES[a] for a in dice_arms) + " |",
        "|---|---|" + "---|" * len(dice_arms),
    ]
    n_rounds = max(len(by_arm[a]["per_round"]) for a in dice_arms)
    ref = max((by_arm[a] for a in dice_arms), key=lambda run: len(run["per_round"]))
    for i in range(n_rounds):
        row = ref["per_round"][min(i, len(ref["per_round"]) - 1)]
        lines.append(
            f"| {i + 1} | {row['n_labeled']} ({100 * row['fraction_labeled']:.0f} %) | "
            + " | ".join(_cell(by_arm, a, i) for a in dice_arms)
            + " |"
        )
    if loop_arms:
        lines += [
            "",
            "| after round | "
            + " | ".join(f"{ARM_TITLES[a]}: edit Dice / px changed / changed÷drawn" for a in loop_arms)
            + " | "
            + " | ".join(f"{ARM_TITLES[a]}: s" for a in loop_arms)
            + " |",
            "|---|" + "---|" * (2 * len(loop_arms)),
        ]
        for i in range(n_rounds):
            secs = []
            for a in loop_arms:
                rows = by_arm[a]["per_round"]
                secs.append(
                    f"{rows[i]['seconds_train']:.0f} + {rows[i].get('seconds_propose', 0):.0f}"
                    if i < len(rows)
                    else "—"
                )
            lines.append(
                f"| {i + 1} | "
                + " | ".join(_edit(by_arm, a, i) for a in loop_arms)
                + " | "
                + " | ".join(secs)
                + " |"
            )
    lines.append("")
    for arm, run in sorted(by_arm.items()):
        if run.get("incomplete"):
            lines.append(f"- **{ARM_TITLES.get(arm, arm)}**: {run['incomplete']}.")
    if not math.isnan(full_dice):
        for arm in loop_arms:
            lines += _findings(arm, by_arm[arm], full_dice)
    lines.append("")
    return lines


def _mean_section(runs: list[dict], seeds: list[int]) -> list[str]:
    """Across seeds: mean test Dice per arm and round, and the two targets per arm."""
    lines = [
        f"#### Mean over seeds {', '.join(map(str, seeds))}",
        "",
    ]
    arms = [a for a in (*LOOP_ARMS, "scratch") if any(r["arm"] == a for r in runs)]
    full = [_full_dice(runs, s) for s in seeds]
    full_mean = float(sum(full) / len(full))
    lines += [
        f"Fully supervised: {full_mean:.3f}. Cells: mean test Dice (seeds that ran that round).",
        "",
        "| round | " + " | ".join(ARM_TITLES[a] for a in arms) + " |",
        "|---|" + "---|" * len(arms),
    ]
    n_rounds = max(len(r["per_round"]) for r in runs if r["arm"] != "full")
    for i in range(n_rounds):
        cells = []
        for a in arms:
            vals = [r["per_round"][i]["test_dice"] for r in runs if r["arm"] == a and i < len(r["per_round"])]
            cells.append(f"{sum(vals) / len(vals):.3f} ({len(vals)})" if vals else "—")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    loop = [a for a in LOOP_ARMS if a in arms]
    lines += [
        "",
        "The annotator's work after each round (mean edit Dice / changed÷drawn pooled over the seeds' "
        "corrected images); *average image*: the same over every unlabeled image's proposal, from the "
        "arms that proposed on all of them:",
        "",
        "| after round | " + " | ".join(ARM_TITLES[a] for a in loop) + " | average image |",
        "|---|" + "---|" * (len(loop) + 1),
    ]
    for i in range(n_rounds):  # the rounds after which some arm corrected images (not the last, usually)
        if not any(
            "mean_edit_dice" in r["per_round"][i]
            for r in runs
            if r["arm"] in loop and i < len(r["per_round"])
        ):
            continue
        cells = []
        for a in loop:
            edits = [
                e
                for r in runs
                if r["arm"] == a and i < len(r["per_round"])
                for e in r["per_round"][i].get("corrections", [])
            ]
            if edits:
                ratio = sum(e["pixels_changed"] for e in edits) / max(
                    1, sum(e["pixels_drawn_from_scratch"] for e in edits)
                )
                cells.append(f"{sum(e['edit_dice'] for e in edits) / len(edits):.3f} / {ratio:.2f}")
            else:
                cells.append("—")
        by_seed: dict[int, list[dict]] = {}  # arms of one seed share round 1: average per seed first
        for r in runs:
            if r["arm"] in LOOP_ARMS and i < len(r["per_round"]) and "pool" in r["per_round"][i]:
                by_seed.setdefault(r["seed"], []).append(r["per_round"][i]["pool"])
        if by_seed:
            dice = [sum(q["mean_edit_dice"] for q in qs) / len(qs) for qs in by_seed.values()]
            ratio = [sum(q["changed_over_drawn"] for q in qs) / len(qs) for qs in by_seed.values()]
            cells.append(
                f"{sum(dice) / len(dice):.3f} / {sum(ratio) / len(ratio):.2f} "
                f"(seed {', '.join(map(str, sorted(by_seed)))})"
            )
        else:
            cells.append("—")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| arm | 95 % of fully supervised first reached (labeled, per seed) "
        "| round-2 changed÷drawn (pooled over seeds; per seed) |",
        "|---|---|---|",
    ]
    for a in [a for a in LOOP_ARMS if a in arms]:
        reached, changed, drawn, per_seed = [], 0, 0, []
        for r in sorted((r for r in runs if r["arm"] == a), key=lambda r: r["seed"]):
            target = 0.95 * _full_dice(runs, r["seed"])
            hit = [x for x in r["per_round"] if x["test_dice"] >= target]
            reached.append(
                f"s{r['seed']}: {hit[0]['n_labeled']} ({100 * hit[0]['fraction_labeled']:.0f} %)"
                if hit
                else f"s{r['seed']}: not reached" + (" (stopped early)" if r.get("incomplete") else "")
            )
            if len(r["per_round"]) >= 2 and r["per_round"][1].get("corrections"):
                c = sum(e["pixels_changed"] for e in r["per_round"][1]["corrections"])
                d = sum(e["pixels_drawn_from_scratch"] for e in r["per_round"][1]["corrections"])
                changed, drawn = changed + c, drawn + d
                per_seed.append(f"s{r['seed']}: {c / max(d, 1):.2f}")
        ratio = f"{changed / drawn:.2f} ({'; '.join(per_seed)})" if drawn else "—"
        lines.append(f"| {ARM_TITLES[a]} | {'; '.join(reached)} | {ratio} |")
    lines.append("")
    return lines


def _task(run: dict) -> str:
    return run.get("task", "binary")


def _full_run(runs: list[dict], seed: int) -> dict | None:
    """The fully supervised run of this seed, else None."""
    return next((r for r in runs if r["arm"] == "full" and r["seed"] == seed), None)


def _instance_score(run: dict | None, i: int) -> str:
    if run is None or i >= len(run["per_round"]):
        return "—"
    row = run["per_round"][i]
    return f"{row['test_ap_50']:.3f} / {row['test_f1_50']:.3f} / {row['test_dice']:.3f}"


def _instance_section(by_arm: dict) -> list[str]:
    """The per-seed tables of an instance run: AP@0.5 / F1@0.5 / Dice per arm and round, then the objects
    the annotator fixed per corrected image against the objects drawn from scratch."""
    any_run = next(iter(by_arm.values()))
    score_arms = [a for a in (*LOOP_ARMS, "scratch") if a in by_arm]
    loop_arms = [a for a in LOOP_ARMS if a in by_arm]
    full = by_arm.get("full")
    lines = [
        f"#### {any_run['dataset']} (instances), seed {any_run['seed']}: {any_run['n_train']} training images, "
        f"{any_run['n_test']} test images, k = {any_run['k']} to start, b = {any_run['b']} corrected per round",
        "",
        (
            f"Fully supervised ({any_run['n_train']} images, same iteration budget): test AP@0.5 / F1@0.5 / "
            f"Dice **{_instance_score(full, 0)}**"
            if full
            else "Fully supervised reference: not run."
        ),
        "",
    ]
    if not score_arms:
        return lines
    lines += [
        "| round | labeled images | "
        + " | ".join(f"{ARM_TITLES[a]}: AP@0.5 / F1@0.5 / Dice" for a in score_arms)
        + " |",
        "|---|---|" + "---|" * len(score_arms),
    ]
    ref = max((by_arm[a] for a in score_arms), key=lambda run: len(run["per_round"]))
    for i, row in enumerate(ref["per_round"]):
        lines.append(
            f"| {i + 1} | {row['n_labeled']} ({100 * row['fraction_labeled']:.0f} %) | "
            + " | ".join(_instance_score(by_arm[a], i) for a in score_arms)
            + " |"
        )
    if loop_arms:
        lines += [
            "",
            "| after round | arm | images corrected | objects drawn from scratch / image | objects fixed / image "
            "(added + removed + changed) | fixed ÷ from scratch | added + removed ÷ from scratch "
            "| average unlabeled image: fixed / from scratch per image | s (co-train + propose) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for a in loop_arms:
            for row in by_arm[a]["per_round"]:
                edits = row.get("corrections")
                if not edits:
                    continue
                n = len(edits)
                drawn = sum(e["objects_drawn_from_scratch"] for e in edits)
                add, rem, chg = (sum(e[k] for e in edits) for k in OBJECT_KEYS)
                pool = row.get("pool")
                average = (
                    f"{pool['objects_fixed']:.1f} / {pool['objects_drawn_from_scratch']:.1f} "
                    f"({pool['n']} images)"
                    if pool and "objects_fixed" in pool
                    else "—"
                )
                lines.append(
                    f"| {row['round']} | {ARM_TITLES[a]} | {n} | {drawn / n:.1f} | "
                    f"{(add + rem + chg) / n:.1f} ({add / n:.1f} + {rem / n:.1f} + {chg / n:.1f}) | "
                    f"{(add + rem + chg) / max(drawn, 1):.2f} | {(add + rem) / max(drawn, 1):.2f} | {average} | "
                    f"{row['seconds_train']:.0f} + {row.get('seconds_propose', 0):.0f} |"
                )
        lines.append("")
        for a in loop_arms:
            run = by_arm[a]
            if run.get("incomplete"):
                lines.append(f"- **{ARM_TITLES[a]}**: {run['incomplete']}.")
            else:
                lines.append(
                    f"- **{ARM_TITLES[a]}**: wall time {run['seconds']:.0f} s ({run['torch_threads']} torch "
                    f"thread(s)); the store's check: {'ok' if run.get('check') else run.get('check')}."
                )
    lines.append("")
    return lines


INSTANCE_NOTE = (
    "Instance projects (`--task instances`): the start images and every correction are the dataset's "
    "instances/ (one id per object), saved against the proposal it started from; the store counts the "
    "correction's edit cost in objects (`base.labels.object_edits`: the proposal's objects — the product's "
    "seeded watershed of its 3-class probabilities, as the annotator sees them — matched one to one with the "
    "true objects at IoU ≥ 0.5; a true object without a match was *added*, a proposed one without a match "
    "*removed*, a matched pair differing in any pixel *changed*). Drawing from scratch costs every true object. "
    "*Added + removed* are the objects drawn or erased whole; *changed* ones only needed their outline "
    "touched (any pixel counts). Test figures: AP@0.5 = TP / (TP + FP + FN) and F1@0.5 of the students' "
    "objects (the DSB 2018 convention, means over the test images) and the foreground's pixel Dice."
)


def report(out: Path) -> str:
    runs = load(out)
    if not runs:
        return "no results yet"
    gpus = sorted({r["gpu"] for r in runs if r.get("gpu")})
    where = runs[0]["machine"] + "".join(f", {g}" for g in gpus)
    threads = " or ".join(str(t) for t in sorted({r.get("torch_threads", 1) for r in runs}))
    binary = [r for r in runs if _task(r) == "binary"]
    instance = [r for r in runs if _task(r) == "instances"]
    lines = [f"Human-in-the-loop simulation. Machine: {where}.", ""]
    if binary:
        lines += [
            "Edit Dice: between the proposal and the truth, mean over the images corrected after that round "
            "(from that round's proposals). Changed÷drawn: the pixels whose label the annotator had to change "
            "over the foreground pixels they would paint from scratch, both summed over the round's images "
            "(* = mean of per-image ratios: an arm salvaged from its log). Seconds: the co-training round "
            f"(round 1 includes pretraining) + proposals, wall clock with {threads} torch thread(s) per arm "
            "and other arms running beside it; an arm that started from the shared round-1 snapshot reports "
            "the round-1 time of the arm that made it.",
            "",
        ]
    for dataset in sorted({r["dataset"] for r in binary}):
        ds_runs = [r for r in binary if r["dataset"] == dataset]
        seeds = sorted({r["seed"] for r in ds_runs})
        lines += [f"### {dataset}", ""]
        for seed in seeds:
            by_arm = {r["arm"]: r for r in ds_runs if r["seed"] == seed}
            lines += _seed_section(by_arm, _full_dice(ds_runs, seed))
        loop_seeds = sorted({r["seed"] for r in ds_runs if r["arm"] in LOOP_ARMS})
        if len(loop_seeds) > 1:
            lines += _mean_section(ds_runs, loop_seeds)
    if instance:
        lines += [
            INSTANCE_NOTE
            + " Seconds: wall clock with "
            + " or ".join(str(t) for t in sorted({r.get("torch_threads", 1) for r in instance}))
            + " torch thread(s), round 1 including pretraining.",
            "",
        ]
    for dataset in sorted({r["dataset"] for r in instance}):
        ds_runs = [r for r in instance if r["dataset"] == dataset]
        lines += [f"### {dataset}: objects fixed per image by round vs objects drawn from scratch", ""]
        for seed in sorted({r["seed"] for r in ds_runs}):
            lines += _instance_section({r["arm"]: r for r in ds_runs if r["seed"] == seed})
    return "\n".join(lines)


def _plot_instances(out: Path, dataset: str, runs: list[dict]) -> None:
    """``<dataset>_instances.png``: left, test AP@0.5 per arm against labeled images; right, per round,
    the objects fixed per corrected image (added / removed / changed, stacked) beside the objects drawn
    from scratch (the first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed = min(r["seed"] for r in runs)
    by_arm = {r["arm"]: r for r in runs if r["seed"] == seed}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for arm, style in (("uncertainty", "o-"), ("power", "D-"), ("random", "s--"), ("scratch", "^:")):
        run = by_arm.get(arm)
        if run is None:
            continue
        x = [row["n_labeled"] for row in run["per_round"]]
        ax.plot(x, [row["test_ap_50"] for row in run["per_round"]], style, label=ARM_TITLES[arm])
    if "full" in by_arm:
        ax.axhline(
            by_arm["full"]["per_round"][-1]["test_ap_50"],
            color="k",
            lw=1,
            label=f"all {runs[0]['n_train']} labeled",
        )
    ax.set_xlabel("labeled training images")
    ax.set_ylabel("test AP@0.5")
    ax.set_title(f"{dataset} instances: test AP@0.5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    loop = [a for a in LOOP_ARMS if a in by_arm]
    bars = [(a, row) for a in loop for row in by_arm[a]["per_round"] if row.get("corrections")]
    width = 0.38
    for j, (_arm, row) in enumerate(bars):
        edits = row["corrections"]
        n = len(edits)
        drawn = sum(e["objects_drawn_from_scratch"] for e in edits) / n
        parts = [sum(e[k] for e in edits) / n for k in OBJECT_KEYS]
        bx.bar(j - width / 2, drawn, width, color="0.6", label="drawn from scratch" if j == 0 else None)
        bottom = 0.0
        for k, (v, colour) in enumerate(zip(parts, ("tab:red", "tab:purple", "tab:orange"), strict=True)):
            label = ("added", "removed", "changed")[k] if j == 0 else None
            bx.bar(j + width / 2, v, width, bottom=bottom, color=colour, label=label)
            bottom += v
    bx.set_xticks(
        range(len(bars)),
        [f"after round {row['round']}" + (f"\n{ARM_TITLES[a]}" if len(loop) > 1 else "") for a, row in bars],
    )
    bx.set_ylabel("objects per corrected image")
    bx.set_title(
        f"objects fixed vs drawn from scratch ({ARM_TITLES[loop[0]] if len(loop) == 1 else 'per arm'})"
    )
    bx.grid(alpha=0.3, axis="y")
    if bars:
        bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{dataset}_instances.png")
    plt.close(fig)


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    everything = load(out)
    runs = [r for r in everything if _task(r) == "binary"]
    for dataset in sorted({r["dataset"] for r in everything if _task(r) == "instances"}):
        _plot_instances(
            out, dataset, [r for r in everything if r["dataset"] == dataset and _task(r) == "instances"]
        )
    for dataset in sorted({r["dataset"] for r in runs}):
        ds_runs = [r for r in runs if r["dataset"] == dataset]
        seeds = sorted({r["seed"] for r in ds_runs})
        fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
        for arm, style in (("uncertainty", "o-"), ("power", "D-"), ("random", "s--"), ("scratch", "^:")):
            arm_runs = [r for r in ds_runs if r["arm"] == arm]
            if not arm_runs:
                continue
            n = min(len(r["per_round"]) for r in arm_runs)
            x = [row["n_labeled"] for row in arm_runs[0]["per_round"][:n]]
            y = np.array([[row["test_dice"] for row in r["per_round"][:n]] for r in arm_runs])
            label = ARM_TITLES[arm] + (f" (mean of {len(arm_runs)} seeds)" if len(arm_runs) > 1 else "")
            (line,) = ax.plot(x, y.mean(0), style, label=label)
            if len(arm_runs) > 1:
                ax.fill_between(x, y.min(0), y.max(0), color=line.get_color(), alpha=0.15)
        full = [_full_dice(ds_runs, s) for s in seeds]
        if not any(math.isnan(f) for f in full):
            ref = float(np.mean(full))
            ax.axhline(ref, color="k", lw=1, label=f"all {ds_runs[0]['n_train']} labeled")
            ax.axhline(0.95 * ref, color="k", lw=1, ls=":", label="95 % of that")
        ax.set_xlabel("labeled training images")
        ax.set_ylabel("test Dice")
        ax.set_title(
            f"{dataset}: human-in-the-loop simulation" + (" (band: seed range)" if len(seeds) > 1 else "")
        )
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"{dataset}.png")
        plt.close(fig)


# ------------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="glas", help="a folder under ../shared/data (glas, drive, ...)")
    p.add_argument("--data", default=str(DATA), help="the folder holding the dataset folders")
    p.add_argument(
        "--task",
        default="binary",
        choices=("binary", "instances"),
        help="instances: an instance project; start images and corrections are the dataset's instances/",
    )
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--k", type=int, default=2, help="ground-truth images to start with")
    p.add_argument("--b", type=int, default=5, help="images corrected per round")
    p.add_argument("--rounds", type=int, default=4, help="co-training rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--correct-last",
        action="store_true",
        help="the annotator also corrects after the last round (its proposals and edits are measured; no "
        "further round trains): --rounds 2 --correct-last measures round 2's corrections at 2 rounds' cost",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="training images carved (seeded) into the validation split, unless the dataset has val images",
    )
    p.add_argument("--preset", default="cpu", help="cpu (the benchmark) or tiny (a smoke test)")
    for key, value in OVERRIDES.items():  # the cpu preset's per-round budget (a bigger one: another --out)
        p.add_argument(
            f"--{key.replace('_', '-')}", dest=key, type=int, default=value, help=f"default {value}"
        )
    p.add_argument("--device", default="cpu", help="cpu (the benchmark's figures), cuda, cuda:N or auto")
    p.add_argument("--jobs", type=int, default=1, help="arms run at the same time")
    p.add_argument("--threads", type=int, default=2, help="torch threads per arm")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "diffseg-hitl"))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--keep", action="store_true", help="keep the working projects")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--salvage", action="store_true", help="write JSON for stopped arms from their logs")
    p.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm in this process
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.arm:
        result = run_arm(args)
        target = _arm_path(out, args.dataset, args.arm, args.seed, args.task)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, target)
        return

    if not args.report_only:
        todo = [a for a in args.arms if not _arm_path(out, args.dataset, a, args.seed, args.task).exists()]

        def launch(arm: str) -> tuple[str, int, float]:
            cmd = [sys.executable, __file__, "--arm", arm] + [
                f"--{k}={v}"
                for k, v in (
                    ("dataset", args.dataset),
                    ("task", args.task),
                    ("data", args.data),
                    ("k", args.k),
                    ("b", args.b),
                    ("rounds", args.rounds),
                    ("seed", args.seed),
                    ("val-fraction", args.val_fraction),
                    ("preset", args.preset),
                    ("threads", args.threads),
                    ("device", args.device),
                    *((k.replace("_", "-"), getattr(args, k)) for k in OVERRIDES),
                    ("work", args.work),
                    ("out", args.out),
                )
            ]
            if args.keep:
                cmd.append("--keep")
            if args.correct_last:
                cmd.append("--correct-last")
            log = _arm_path(out, args.dataset, arm, args.seed, args.task).with_suffix(".log")
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            t0 = time.perf_counter()
            with open(log, "w") as fh:
                rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
            return arm, rc, time.perf_counter() - t0

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            for arm, rc, secs in pool.map(launch, todo):
                print(f"{args.dataset} {arm}: exit {rc} after {secs:.0f} s", flush=True)
    if args.salvage:
        for arm in args.arms:
            made = salvage(out, args.dataset, arm, args.seed, args)
            if made is not None:
                print(f"salvaged {made}")
    text = report(out)
    (out / "summary.md").write_text(text + "\n")
    plot(out)
    print(text)


if __name__ == "__main__":
    main()
