"""``diffseg demo``: the whole human-in-the-loop method, end to end, on generated sample data.

What it does, through the real backend (``diffseg serve`` in a child process on a free loopback port)
and only through :class:`~napari_diffseg.backend.client.DiffsegClient`:

1. writes a synthetic H&E-like dataset (train / val / test, with ground truth; no network) to
   ``OUT/data`` and creates the project ``OUT/project``;
2. uploads the train and val images; ``k`` train images and every val image get their ground truth;
   the test images never enter the project (they are read only to score the students);
3. runs co-training round 1 (a cold start: the teacher learns from the labeled images, without the
   label-free Stage A, which issue 14's ablation found the students do not need) and scores the active
   model's students on the test images;
4. proposes masks with uncertainty for the unlabeled train images (and the val images, to measure how
   well the uncertainty finds the proposals' errors); a simulated annotator opens the ``b`` most
   uncertain ones (the backend's ``/next``) and saves the ground truth as a correction of the proposal
   it started from, so the project records the edit Dice and the pixels changed;
5. runs co-training round 2 and scores the students again (and the round-2 teacher's uncertainty on the
   val images);
6. writes ``OUT/report/`` (``report.html``, PNGs, ``report.json``).

No Qt here: ``--gui`` is handled by :mod:`napari_diffseg._widgets.launch`.

Why one module of ~650 lines: it is a script read top to bottom (settings, the steps above in order, the
simulated annotator, the baselines); the report is drawn in :mod:`napari_diffseg.report`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from napari_diffseg.base.contracts import Job, JobEventOut
from napari_diffseg.base.errors import ConfigError, DataError, DiffsegError
from napari_diffseg.base.progress import EventBars

__all__ = [
    "DEMO_PRESETS",
    "MARKER",
    "DemoError",
    "DemoSettings",
    "default_out",
    "default_threads",
    "prepare_out",
    "run_demo",
]

MARKER = "diffseg-demo.json"
"""The file that marks a folder as made by ``diffseg demo`` (such a folder may be reused)."""
_OURS = ("data", "project", "report", "backend.log", MARKER)


class DemoError(DiffsegError):
    """The demo could not run or a backend job failed; the message says which step and why."""


@dataclass(frozen=True)
class DemoSettings:
    """Data size, the annotation budget and the compute budget of one demo run."""

    name: str
    job_preset: str  # the backend preset the jobs run with ...
    overrides: dict[str, Any] = field(default_factory=dict)  # ... and these preset fields changed
    kind: str = "glands"
    size: int = 256
    n_train: int = 20
    n_val: int = 4
    n_test: int = 8
    k: int = 2  # train images labeled with ground truth at the start
    b: int = 4  # most uncertain images the simulated annotator corrects
    propose_steps: int = 5  # DDIM steps S of the proposals shown to the annotator
    propose_samples: int = 4  # samples E (their disagreement is the uncertainty)
    propose_rounds: int = 2  # chained rounds R
    overlay_images: int = 3  # rows of the overlay strips
    baselines: bool = True  # also train supervised-only students on the same labels, for comparison
    seed: int = 0


DEMO_PRESETS: dict[str, DemoSettings] = {
    # For tests: seconds of compute, the same steps as the real thing.
    "tiny": DemoSettings(
        name="tiny",
        job_preset="tiny",
        size=64,
        n_train=6,
        n_val=1,
        n_test=2,
        k=2,
        b=2,
        propose_steps=2,
        propose_samples=2,
        propose_rounds=1,
        overlay_images=2,
    ),
    # The default: a 2-core CPU finishes the whole demo in a few minutes.
    "cpu": DemoSettings(
        name="cpu",
        job_preset="cpu",
        overrides={
            "batch_size": 4,
            "teacher_steps": 100,
            "cotrain_steps": 150,
            "refresh_every": 150,
            "roi_size": 256,
            "checkpoint_every": 50,
        },
        propose_rounds=1,
    ),
}


# ------------------------------------------------------------------------------------------ output folder


def default_out(now: datetime | None = None) -> Path:
    """``./diffseg-demo-YYYYMMDD-HHMMSS``."""
    return Path.cwd() / f"diffseg-demo-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def prepare_out(out: Path) -> Path:
    """Make ``out`` ready: a new or empty folder, or one an earlier demo made (its results are replaced).

    Raises:
        DataError: ``out`` is a file, or a non-empty folder that ``diffseg demo`` did not make.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; pass a new folder (or leave --out out for a fresh one)")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise DataError(
                f"--out {out} is a folder with other content in it; pass a new or empty folder, or the "
                "folder of an earlier demo"
            )
        for name in _OURS:  # an earlier demo's folder: replace what it made, nothing else
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"created": time.time(), "what": "diffseg demo output"}) + "\n")
    return out


def default_threads() -> int:
    """CPU threads for the demo's jobs: one per core but one, left to the server and this process.

    Measured on a 2-core machine shared with other work: 2 torch threads per job made a pretraining step
    5x slower than 1 thread (the threads wait on each other when a core is taken).
    """
    return max(1, (os.cpu_count() or 2) - 1)


# ------------------------------------------------------------------------------------------ sample data


def write_sample_data(root: Path, s: DemoSettings) -> dict[str, list[str]]:
    """A dataset folder (docs/architecture.md §2.1) with ``train_*``, ``val_*`` and ``test_*`` images and masks."""
    import imageio.v3 as iio

    from napari_diffseg.base.fileio import atomic_write_bytes
    from napari_diffseg.data.io import write_mask
    from napari_diffseg.data.synthetic import make_sample

    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    rows = ["id,split"]
    for split_no, (split, count) in enumerate((("train", s.n_train), ("val", s.n_val), ("test", s.n_test))):
        for i in range(count):
            image_id = f"{split}_{i:03d}"
            sub_seed = int(np.random.SeedSequence([s.seed, split_no, i]).generate_state(1)[0])
            image, mask = make_sample(sub_seed, size=(s.size, s.size), kind=s.kind)
            atomic_write_bytes(
                root / "images" / f"{image_id}.png", iio.imwrite("<bytes>", image, extension=".png")
            )
            write_mask(root / "masks" / f"{image_id}.png", mask)
            rows.append(f"{image_id},{split}")
            splits[split].append(image_id)
    atomic_write_bytes(root / "split.csv", ("\n".join(rows) + "\n").encode())
    return splits


def _read_rgb(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))


def _read_mask(path: Path) -> np.ndarray:
    from napari_diffseg.data.io import read_mask

    return read_mask(path, binary=True).astype(np.uint8)


# ------------------------------------------------------------------------------------------ progress


@contextlib.contextmanager
def _bar(desc: str, total: int, enabled: bool) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled)
    try:
        yield bar
    finally:
        bar.close()


# ------------------------------------------------------------------------------------------ the run


@dataclass
class _Run:
    """What a demo run collects on its way (becomes ``report.json``)."""

    out: Path
    settings: DemoSettings
    progress: bool
    say: Callable[[str], None]
    threads: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: dict[str, list[JobEventOut]] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    baselines: list[dict[str, Any]] = field(default_factory=list)
    corrections: list[dict[str, Any]] = field(default_factory=list)
    overlays: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    uncertainty: dict[str, dict[str, Any]] = field(default_factory=dict)
    test_predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - t0, 2)

    def job_params(self, **extra: Any) -> dict[str, Any]:
        s = self.settings
        params: dict[str, Any] = {"preset": s.job_preset, "seed": s.seed, **extra}
        if s.overrides:
            params["overrides"] = dict(s.overrides)
        return params

    def run_job(self, client: Any, key: str, kind: str, params: dict[str, Any], label: str) -> Job:
        """Start a job, show its streamed events as progress bars, keep its persisted events."""
        job = client.start_job(kind, params)
        bars = EventBars(label, self.progress, logs=True)
        try:
            for event in client.stream_events(job.id):
                bars(event.data.model_dump())
        finally:
            bars.close()
        job = client.wait(job.id, poll=0.2)
        events: list[JobEventOut] = []
        cursor = 0
        while True:  # the persisted history, page by page
            page = client.events(job.id, since=cursor, limit=5000)
            events.extend(page.events)
            if not page.events:
                break
            cursor = page.next
        self.events[key] = events
        self.jobs[key] = {
            "id": job.id,
            "kind": kind,
            "state": job.state,
            "seconds": (job.finished_at or 0) - (job.started_at or 0),
        }
        if job.state != "done":
            raise DemoError(
                f"the {kind} job {job.id} ended {job.state}: {job.error or 'no error recorded'} "
                f"(see {self.out / 'project' / 'jobs' / str(job.id) / 'worker.log'})"
            )
        return job


def _evaluate(run: _Run, client: Any, data_dir: Path, test_ids: list[str], label: str) -> dict[str, Any]:
    """Test Dice of the active model's students (the deployed twins), per image and the mean."""
    from napari_diffseg.core.metrics import segmentation_metrics, summarize
    from napari_diffseg.data.io import read_image
    from napari_diffseg.predict import load_model, predict_image

    active = client.project().active_model
    if active is None:
        raise DemoError("the backend has no active model after co-training")
    bundle, config = load_model(run.out / "project" / "models" / active.id, device="auto")
    per_image: list[dict[str, Any]] = []
    preds: dict[str, np.ndarray] = {}
    with _bar(f"{label} · test Dice", len(test_ids), run.progress) as bar:
        for image_id in test_ids:
            probs = predict_image(bundle, config, read_image(data_dir / "images" / f"{image_id}.png"))
            pred = probs.argmax(0).astype(np.uint8)
            gt = _read_mask(data_dir / "masks" / f"{image_id}.png")
            per_image.append({"id": image_id, **segmentation_metrics(pred, gt, bundle.spec.num_classes)})
            preds[image_id] = pred
            bar.update(1)
    run.test_predictions[label] = preds
    summary = summarize(per_image)
    return {
        "model_id": active.id,
        "model_metrics": active.metrics,
        "test_dice_mean": float(summary["dice_mean"]),
        "test_dice_std": float(summary["dice_std"]),
        "test_iou_mean": float(summary["iou_mean"]),
        "test_dice_per_image": {p["id"]: float(p["dice"]) for p in per_image},
    }


def _overlay_rows(
    client: Any, data_dir: Path, names: list[str], truths: dict[str, np.ndarray], model_id: str
) -> list[dict[str, Any]]:
    """Image, the model's proposal and uncertainty, and the correction (the ground truth) of a few images."""
    rows = []
    for name in names:
        proposal = np.asarray(client.proposal_pixels(name, "mask", model_id=model_id))
        rows.append(
            {
                "name": name,
                "image": _read_rgb(data_dir / "images" / f"{name}.png"),
                "proposal": proposal,
                "uncertainty": np.asarray(client.proposal_pixels(name, "uncertainty", model_id=model_id)),
                "correction": truths[name],
                "proposal_dice": _dice(proposal, truths[name]),
            }
        )
    return rows


def _error_detection(client: Any, data_dir: Path, names: list[str], model_id: str) -> dict[str, Any]:
    """How well the model's uncertainty finds its proposals' wrong pixels on ``names`` (the val images,
    whose truth is known): :func:`napari_diffseg.base.uncertainty.error_detection`, pooled."""
    from napari_diffseg.base.uncertainty import error_detection

    uncs, props, truths = [], [], []
    for name in names:
        uncs.append(np.asarray(client.proposal_pixels(name, "uncertainty", model_id=model_id)))
        props.append(np.asarray(client.proposal_pixels(name, "mask", model_id=model_id)))
        truths.append(_read_mask(data_dir / "masks" / f"{name}.png"))
    result = error_detection(uncs, props, truths, thresholds=(0.5,)).to_dict()
    result["images"] = len(names)
    result["names"] = list(names)
    result["model_id"] = model_id
    return result


def _simulate_annotator(run: _Run, client: Any, data_dir: Path) -> list[str]:
    """Open the ``b`` most uncertain train images (``/next``); save the ground truth as the correction."""
    s = run.settings
    corrected: list[str] = []
    with _bar("annotator · corrections", s.b, run.progress) as bar:
        for _ in range(s.b):
            record = client.next_image(split="train")
            if record is None:
                break
            name = record.name
            proposal = client.proposal(record.id)
            if proposal is None:
                raise DemoError(f"image {name} has no proposal to correct")
            proposed = np.asarray(client.proposal_pixels(record.id, "mask"))
            truth = _read_mask(data_dir / "masks" / f"{name}.png")
            t0 = time.perf_counter()
            saved = client.save_annotation(
                record.id,
                truth,
                replaces=record.latest_version,
                kind="correction",
                proposal_id=proposal.id,
                author="simulated annotator (ground truth)",
            )
            ann = saved.annotation
            run.corrections.append(
                {
                    "image_id": record.id,
                    "name": name,
                    "uncertainty": record.uncertainty,
                    "proposal_id": proposal.id,
                    "proposal_model": proposal.model_id,
                    "version": saved.version,
                    "edit_dice": ann.edit_dice,
                    "pixels_changed": ann.pixels_changed,
                    "pixels": int(truth.size),
                    "pixels_changed_fraction": (
                        None if ann.pixels_changed is None else ann.pixels_changed / truth.size
                    ),
                    "foreground_pixels": int((truth > 0).sum()),
                    "proposal_foreground_pixels": int((proposed > 0).sum()),
                    "save_seconds": round(time.perf_counter() - t0, 4),
                }
            )
            corrected.append(name)
            bar.update(1)
    if not corrected:
        raise DemoError("no proposed image was left to correct")
    return corrected


def _supervised_baseline(
    run: _Run, data_dir: Path, labeled: list[str], test_ids: list[str], label: str
) -> dict[str, Any]:
    """Students trained on ``labeled`` alone (no teacher, no unlabeled images), same preset and steps as
    one co-training round; scored on the test images. Runs here, not in the backend: a reference only."""
    import torch

    from napari_diffseg.base.contracts import parse_job_params
    from napari_diffseg.base.preprocessing import dataset_statistics
    from napari_diffseg.core.device import choose_device
    from napari_diffseg.core.models import ModelBundle, ModelSpec, preprocess
    from napari_diffseg.core.pipeline import run_stages
    from napari_diffseg.core.training import TrainData
    from napari_diffseg.data.io import read_image
    from napari_diffseg.experiment import evaluate_bundle

    def raw(image_id: str) -> np.ndarray:
        return read_image(data_dir / "images" / f"{image_id}.png").astype(np.float32)

    norm = dataset_statistics((raw(i) for i in labeled), 3)  # over its own training images

    def tensor(image_id: str) -> torch.Tensor:
        return preprocess(raw(image_id), 3, norm)

    s = run.settings
    pr = parse_job_params("cotrain", run.job_params()).resolve_preset()
    dev = choose_device("auto")
    masks = [torch.from_numpy(_read_mask(data_dir / "masks" / f"{i}.png").astype(np.int64)) for i in labeled]
    data = TrainData([tensor(i) for i in labeled], masks)
    spec = ModelSpec("supervised", 3, 2, pr.student_channels, pr.teacher_channels, pr.emb_dim)
    bundle = ModelBundle(spec, seed=s.seed, normalization=norm).to(dev)
    bars = EventBars(label, run.progress, logs=True)
    try:
        for ev in run_stages(
            bundle, data, pr, generator=torch.Generator().manual_seed(s.seed), seed=s.seed, device=dev
        ):
            bars(ev)
    finally:
        bars.close()
    test_masks = [_read_mask(data_dir / "masks" / f"{i}.png") for i in test_ids]
    res = evaluate_bundle(bundle, [tensor(i) for i in test_ids], test_masks, test_ids, pr)
    return {
        "name": label,
        "labeled": len(labeled),
        "steps": pr.cotrain_steps,
        "test_dice_mean": float(res["dice_mean"]),
        "test_dice_std": float(res["dice_std"]),
        "test_iou_mean": float(res["iou_mean"]),
        "test_dice_per_image": {p["id"]: float(p["dice"]) for p in res["per_image"]},
    }


def run_demo(
    out: Path,
    settings: DemoSettings,
    *,
    progress: bool = True,
    say: Callable[[str], None] = print,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run the demo into ``out`` (see the module docstring); returns the report's numbers.

    ``out`` must have been prepared with :func:`prepare_out`. The backend child process is stopped on
    the way out, also on an error or a Ctrl-C. ``threads``: CPU threads of the backend's jobs and of
    the evaluation here (default: :func:`default_threads`).

    Raises:
        DemoError: A job failed or the backend did not start.
    """
    from napari_diffseg.backend.client import DiffsegClient
    from napari_diffseg.backend.local import start_local_backend, stop_local_backend
    from napari_diffseg.project import Project

    s = settings
    threads = threads or default_threads()
    import torch

    torch.set_num_threads(threads)
    if not 1 <= s.k < s.n_train or s.b < 1 or s.k + s.b > s.n_train or s.n_test < 1:
        raise ConfigError(f"demo settings need 1 <= k < n_train, b >= 1, k + b <= n_train, n_test >= 1: {s}")
    run = _Run(out=out, settings=s, progress=progress, say=say, threads=threads)
    t_start = time.perf_counter()
    data_dir, project_dir, report_dir = out / "data", out / "project", out / "report"

    with run.step("sample_data"):
        say(
            f"writing {s.n_train} train + {s.n_val} val + {s.n_test} test synthetic {s.kind} images to {data_dir}"
        )
        splits = write_sample_data(data_dir, s)
        Project.create(project_dir).close()
    rng = np.random.default_rng(s.seed)
    labeled = sorted(str(i) for i in rng.choice(splits["train"], size=s.k, replace=False))

    with run.step("backend_start"):
        proc, url = start_local_backend(
            project_dir, log=out / "backend.log", new_session=True, threads=threads
        )
    say(f"backend: {url} (pid {proc.pid}, log {out / 'backend.log'})")
    try:
        with DiffsegClient(url, timeout=120) as client:
            with run.step("upload"):
                uploads = [(i, "train") for i in splits["train"]] + [(i, "val") for i in splits["val"]]
                with _bar("upload images", len(uploads), progress) as bar:
                    for image_id, split in uploads:
                        client.upload_image(
                            data_dir / "images" / f"{image_id}.png", name=image_id, split=split
                        )
                        if image_id in labeled or split == "val":
                            client.save_annotation(
                                image_id,
                                _read_mask(data_dir / "masks" / f"{image_id}.png"),
                                replaces=None,
                                kind="ground_truth",
                                author="sample ground truth",
                            )
                        bar.update(1)
            say(
                f"labeled at the start (ground truth): {', '.join(labeled)}; {s.n_val} val images with ground truth"
            )

            with run.step("cotrain_round1"):
                run.run_job(client, "cotrain_round1", "cotrain", run.job_params(rounds=1), "round 1")
            with run.step("evaluate_round1"):
                r1 = _evaluate(run, client, data_dir, splits["test"], "round 1")
            run.rounds.append({"round": 1, "labeled": s.k, "corrected": 0, **r1})
            say(f"round 1 ({s.k} labeled): students' test Dice {r1['test_dice_mean']:.3f}")

            unlabeled = [i for i in splits["train"] if i not in labeled]
            with run.step("propose"):
                run.run_job(
                    client,
                    "propose",
                    "propose",
                    run.job_params(
                        ids=unlabeled + splits["val"],  # val: to measure the uncertainty against the truth
                        steps=s.propose_steps,
                        samples=s.propose_samples,
                        rounds=s.propose_rounds,
                    ),
                    "proposals",
                )
            run.uncertainty["round 1"] = _error_detection(client, data_dir, splits["val"], r1["model_id"])
            with run.step("correct"):
                corrected = _simulate_annotator(run, client, data_dir)
            truths = {n: _read_mask(data_dir / "masks" / f"{n}.png") for n in corrected}
            shown = corrected[: s.overlay_images]
            run.overlays["round 1"] = _overlay_rows(client, data_dir, shown, truths, r1["model_id"])
            say(
                f"annotator corrected the {len(corrected)} most uncertain images: mean edit Dice "
                f"{_mean(c['edit_dice'] for c in run.corrections):.3f}, "
                f"{_mean(c['pixels_changed_fraction'] for c in run.corrections) * 100:.1f} % of pixels changed"
            )

            with run.step("cotrain_round2"):
                run.run_job(client, "cotrain_round2", "cotrain", run.job_params(rounds=1), "round 2")
            with run.step("evaluate_round2"):
                r2 = _evaluate(run, client, data_dir, splits["test"], "round 2")
            run.rounds.append({"round": 2, "labeled": s.k, "corrected": len(corrected), **r2})
            say(
                f"round 2 ({s.k} labeled + {len(corrected)} corrected): students' test Dice {r2['test_dice_mean']:.3f}"
            )
            with run.step("propose_round2"):  # the round-2 teacher on the same images, for the figure
                run.run_job(
                    client,
                    "propose_round2",
                    "propose",
                    run.job_params(
                        ids=shown + splits["val"],
                        steps=s.propose_steps,
                        samples=s.propose_samples,
                        rounds=s.propose_rounds,
                    ),
                    "round-2 proposals",
                )
            run.uncertainty["round 2"] = _error_detection(client, data_dir, splits["val"], r2["model_id"])
            run.overlays["round 2"] = _overlay_rows(client, data_dir, shown, truths, r2["model_id"])
    finally:
        stop_local_backend(proc)

    if s.baselines:
        with run.step("baselines"):
            corrected_ids = [c["name"] for c in run.corrections]
            for ids, label in (
                (labeled, f"supervised, {len(labeled)} GT"),
                (labeled + corrected_ids, f"supervised, {len(labeled)} GT + {len(corrected_ids)} corrected"),
            ):
                base = _supervised_baseline(run, data_dir, ids, splits["test"], label)
                run.baselines.append(base)
                say(
                    f"reference: students trained on the {len(ids)} labeled images only: test Dice {base['test_dice_mean']:.3f}"
                )

    from napari_diffseg.report import write_figures, write_html

    numbers = _numbers(run, splits, labeled)
    with run.step("report"):
        overlay_files = write_figures(
            report_dir, numbers, run.events, run.overlays, _test_figure_rows(run, data_dir, splits)
        )
    numbers["seconds"] = {**run.seconds, "total": round(time.perf_counter() - t_start, 2)}
    numbers["report"] = str(write_html(report_dir, numbers, overlay_files))
    (report_dir / "report.json").write_text(json.dumps(numbers, indent=2, allow_nan=True) + "\n")
    return numbers


def _test_figure_rows(run: _Run, data_dir: Path, splits: dict[str, list[str]]) -> list[dict[str, Any]]:
    rows = []
    for image_id in splits["test"][: run.settings.overlay_images]:
        rows.append(
            {
                "name": image_id,
                "image": _read_rgb(data_dir / "images" / f"{image_id}.png"),
                "truth": _read_mask(data_dir / "masks" / f"{image_id}.png"),
                "predictions": {label: preds[image_id] for label, preds in run.test_predictions.items()},
                "dice": {r["round"]: r["test_dice_per_image"][image_id] for r in run.rounds},
            }
        )
    return rows


def _mean(values: Iterator[Any] | Any) -> float:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """Foreground Dice of two masks (any label > 0 is foreground; both empty → 1)."""
    from napari_diffseg.base.labels import edit_dice

    return edit_dice(np.asarray(a) > 0, np.asarray(b) > 0)


def _numbers(run: _Run, splits: dict[str, list[str]], labeled: list[str]) -> dict[str, Any]:
    import torch

    s = run.settings
    losses = {}
    for key, events in run.events.items():
        losses[key] = sum(1 for e in events if e.data.losses)
    return {
        "what": "diffseg demo: synthetic H&E glands, 2 co-training rounds, a simulated "
        "annotator correcting the most uncertain proposals",
        "settings": asdict(s),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "job_threads": run.threads,
        },
        "data": {
            "train": len(splits["train"]),
            "val": len(splits["val"]),
            "test": len(splits["test"]),
            "size": [s.size, s.size],
            "labeled_at_start": labeled,
            "corrected": [c["name"] for c in run.corrections],
        },
        "rounds": run.rounds,
        "test_dice_per_round": {str(r["round"]): r["test_dice_mean"] for r in run.rounds},
        # references, not part of the loop: students trained on the labeled images alone
        "baselines": run.baselines,
        "corrections": run.corrections,
        "mean_edit_dice": _mean(c["edit_dice"] for c in run.corrections),
        "mean_pixels_changed": _mean(c["pixels_changed"] for c in run.corrections),
        "mean_pixels_changed_fraction": _mean(c["pixels_changed_fraction"] for c in run.corrections),
        # the teacher's proposals for the first corrected images: after round 1 (what the annotator
        # corrected) and after round 2 (the same images, for the figure)
        "proposal_dice_shown": {
            label: {row["name"]: row["proposal_dice"] for row in rows} for label, rows in run.overlays.items()
        },
        # how well each round's uncertainty finds its proposals' wrong pixels on the val images
        "uncertainty": run.uncertainty,
        "jobs": run.jobs,
        "events_with_losses": losses,
        "project": str(run.out / "project"),
    }
