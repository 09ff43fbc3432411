"""Jobs on a project: teacher pretraining, proposals, co-training rounds.

Why one module of ~800 lines: the three job kinds share its event, checkpoint, cancel and resume plumbing;
splitting them into ``jobs/pretrain.py`` etc. is the next step when a fourth kind arrives.

``execute_job(root, job_id)`` runs one job recorded in the project store: it marks it running, feeds
every core event into the job's event log (so any client, now or after a reconnect, sees the history),
honours a cancel file (``jobs/<id>/cancel``) and checkpoints into ``jobs/<id>/`` so that a cancelled,
failed or killed job resumes where it stopped when executed again. The CLI runs jobs in-process; the
backend service runs the same function in a child process.

Only ``train``-split images (and never ``test*`` images) are used for training; labeled images are
those with an annotation (ground truth or a human correction; corrections weigh more).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base.contracts import JOB_KINDS, CotrainParams, PretrainParams, ProposeParams, parse_job_params
from ..base.cost import is_label_free, propose_sampling
from ..base.errors import Cancelled, ConfigError, DataError, DiffsegError, TrainingDiverged
from ..base.events import CancelToken, Event
from ..base.fileio import atomic_write_bytes
from ..base.masks import MaskError, Task, check_labels
from ..base.preprocessing import Normalization, dataset_statistics
from ..base.presets import Preset
from ..core.device import choose_device
from ..core.diffusion import SamplerConfig
from ..core.distributed import DistInfo
from ..core.inference import propose
from ..core.instance_metrics import class_matching, instance_metrics, summarize_instances
from ..core.instance_tuning import tune_watershed
from ..core.instances import Watershed, classify_objects, instances_to_target, probs_to_instances
from ..core.label_free import anchor_applies, fit_temperature, is_dark_field
from ..core.metrics import dice_per_class, mean_per_class, segmentation_metrics, summarize
from ..core.models import ModelBundle, ModelSpec, deployed_probs, load_bundle, preprocess, save_bundle
from ..core.pipeline import run_stages
from ..core.training import TrainData, nonfinite_weights, pretrain_teacher
from ..core.validation import ValSet
from ..project import Project

__all__ = ["JOB_KINDS", "JobFailed", "execute_job", "start_job"]

Reporter = Callable[[Event], None]


class JobFailed(DiffsegError):
    """A job stopped with an error; the message says which job and why."""


def start_job(
    project: Project,
    kind: str,
    params: dict[str, Any] | PretrainParams | ProposeParams | CotrainParams | None = None,
) -> int:
    """Validate parameters (:data:`~napari_diffseg.base.contracts.JobParams`; ``overrides`` adjusts the preset) and record a
    queued job; returns its id."""
    typed = (
        params
        if isinstance(params, PretrainParams | ProposeParams | CotrainParams)
        else parse_job_params(kind, params)
    )
    if typed.kind != kind:
        raise ConfigError(f"{typed.kind} parameters given for a {kind} job")
    return project.create_job(kind, typed.stored())


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _channels(project: Project) -> int:
    """The project's channel count (fixed at its first import; 3 once grey and RGB images mix)."""
    return project.channel_count() or 1


class BadImage(DataError):
    """An image a job cannot use (unreadable, NaN or infinite values); the message names it and the fix."""


def _bad_image(project: Project, image_id: str, problem: str) -> BadImage:
    try:
        rec = project.image(image_id)
        which = f"image {rec.id} ({rec.name!r})"
    except DiffsegError:
        which = f"image {image_id}"
    return BadImage(
        f"{which} {problem}. Exclude it (state 'excluded': Skip in the Annotate widget, or POST "
        "/images/{ref}/state), re-import a fixed copy if you need the image, then start the job again."
    )


def _image(project: Project, image_id: str) -> np.ndarray:
    """An image's raw intensities, (C, H, W) float32 (a z-stack's (Z, C, H, W)).

    Raises:
        BadImage: The file cannot be read, or holds NaN / infinite values (also after the conversion to
            float32: a float64 image with values beyond ~3.4e38); the message names the image.
    """
    try:
        raw = project.load_image(image_id)
    except DataError as exc:
        raise _bad_image(project, image_id, f"cannot be read ({exc})") from exc
    with np.errstate(over="ignore", invalid="ignore"):
        arr = raw.astype(np.float32)
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise _bad_image(project, image_id, f"holds {bad} NaN or infinite pixel value(s) (as float32)")
    return arr


def _planes(project: Project, image_id: str) -> list[np.ndarray]:
    """An image as 2D planes, each (C, H, W) float32: a 2D image is one plane, a z-stack Z of them.

    The networks are 2D: every job treats each plane of a z-stack as a 2D image (never resampled).
    """
    arr = _image(project, image_id)
    return list(arr) if arr.ndim == 4 else [arr]


def _preprocessed(
    project: Project, image_id: str, prep: Callable[[np.ndarray], torch.Tensor]
) -> list[torch.Tensor]:
    """``prep`` (a bundle's ``preprocess``) of each plane of an image (one for a 2D image); a failure names
    the image."""
    planes = _planes(project, image_id)
    try:
        return [prep(arr) for arr in planes]
    except DataError as exc:
        raise _bad_image(project, image_id, f"cannot be preprocessed ({exc})") from exc


def _tensors(
    project: Project, image_id: str, channels: int, normalization: Normalization | None
) -> list[torch.Tensor]:
    """A training image's planes, preprocessed before any bundle exists, with the statistics the bundle
    will carry (with a bundle: ``bundle.preprocess``)."""
    return _preprocessed(project, image_id, lambda arr: preprocess(arr, channels, normalization))


def _normalization(project: Project, image_ids: list[str], channels: int) -> Normalization:
    """The normalisation statistics of a new model: pooled percentiles over its training images' planes."""
    try:
        return dataset_statistics((p for i in image_ids for p in _planes(project, i)), channels)
    except BadImage:
        raise
    except DataError as exc:
        raise ConfigError(f"cannot compute the normalisation of the training images: {exc}") from exc


def _base_normalization(project: Project, model_id: str) -> Normalization | None:
    """The normalisation a warm start keeps: the base model's own (None for a model saved before
    statistics existed, which keeps normalising per image)."""
    from ..core.checkpoint import load_model_files

    _, config, _ = load_model_files(project.model_dir(model_id))
    return Normalization.from_config(config)


def _data_manifest(project: Project, manifest: Path | None) -> list[tuple[str, int | None]]:
    """(image id, annotation version or None) of every training image; written to / read from ``manifest``."""
    return _manifest(project, manifest)[0]


def _manifest(
    project: Project, manifest: Path | None
) -> tuple[list[tuple[str, int | None]], list[tuple[str, int]]]:
    """The training entries (see :func:`_data_manifest`) and the annotated ``val`` images with their
    annotation versions (the validation set of checkpoint choice and the pseudo-label gate)."""
    if manifest is not None and manifest.exists():
        stored = json.loads(manifest.read_text())
        train = [(str(i), None if v is None else int(v)) for i, v in stored["images"]]
        return train, [(str(i), int(v)) for i, v in stored.get("val", [])]
    entries: list[tuple[str, int | None]] = []
    for rec in project.images(split="train"):
        if rec.state == "excluded":
            continue
        ann = project.annotation(rec.id)
        entries.append((rec.id, None if ann is None else ann.version))
    val: list[tuple[str, int]] = []
    for rec in project.images(split="val"):
        ann = project.annotation(rec.id)
        if rec.state != "excluded" and ann is not None:
            val.append((rec.id, ann.version))
    if manifest is not None:
        atomic_write_bytes(manifest, json.dumps({"images": entries, "val": val}).encode())
    return entries, val


def _training_data(
    project: Project,
    channels: int,
    preset: Preset,
    manifest: Path | None = None,
    normalization: Normalization | None = None,
    notes: list[str] | None = None,
) -> tuple[TrainData, dict[str, int]]:
    """The training images and the annotation version of each labeled one.

    A z-stack gives one 2D training image per plane: the planes its annotation version annotates
    (``AnnotationRecord.planes``) are labelled, the others unlabelled (a stack without an annotation: all
    unlabelled; in ``val``, only annotated planes are used). With ``manifest`` (``jobs/<id>/data.json``) the choice is written at a job's first start and read back
    when it resumes, so a resumed job trains on exactly the data its checkpoints were made with, even if
    annotations were saved in between (they count from the next job on).
    """
    entries, val_entries = _manifest(project, manifest)
    labeled_x, labeled_y, weights, unlabeled = [], [], [], []
    for image_id, version in entries:
        xs = _tensors(project, image_id, channels, normalization)
        if version is None:
            unlabeled.extend(xs)
            continue
        ann = project.annotation(image_id, version)
        mask = project.load_annotation(image_id, version)
        assert ann is not None and mask is not None
        weight = preset.correction_weight if ann.kind == "correction" else 1.0
        targets = _targets(project, image_id, version, _label_planes(mask, ann.planes), notes)
        for x, plane in zip(xs, targets, strict=True):
            if plane is None:
                unlabeled.append(x)
                continue
            labeled_x.append(x)
            labeled_y.append(torch.from_numpy(plane))
            weights.append(weight)
    val = ValSet()
    for image_id, version in val_entries:
        ann = project.annotation(image_id, version)
        mask = project.load_annotation(image_id, version)
        if ann is None or mask is None:
            continue
        planes = _targets(project, image_id, version, _label_planes(mask, ann.planes), notes)
        if all(p is None for p in planes):
            continue
        xs = _tensors(project, image_id, channels, normalization)
        for x, plane in zip(xs, planes, strict=True):
            if plane is not None:
                val.images.append(x)
                val.masks.append(torch.from_numpy(plane))
                val.regions.append(None)
    counts = {"labeled": len(labeled_x), "unlabeled": len(unlabeled), "val": len(val)}
    return TrainData(labeled_x, labeled_y, weights, unlabeled, val=val), counts


def _targets(
    project: Project, image_id: str, version: int, planes: list[np.ndarray | None], notes: list[str] | None
) -> list[np.ndarray | None]:
    """An annotation's label planes as the training targets of the project's task.

    Binary: foreground = value > 0 (an older project's correction painted with other values is taken as
    foreground, said in ``notes``); multiclass: class values checked to lie below K; instances: the object
    ids (any ids, as napari paints them) become the 3-class target background / interior / boundary
    (``core/instances.py``), here in the backend, never in the GUI — with several object classes each
    object's interior goes to its class's channel (the classes saved with the annotation). A mask that
    does not fit fails the job with a message naming the image and what to do.
    """
    task = project.task
    per_object: dict[int, int] | None = None
    if task.classed:
        ann = project.annotation(image_id, version)
        per_object = None if ann is None else ann.object_classes
        if per_object is None:
            raise _bad_image(
                project,
                image_id,
                f"has annotation v{version} without its objects' classes, but the project's objects are of "
                f"{task.object_classes} classes; save it again with a class map (diffseg correct --classes, "
                "the Annotate widget's classes layer)",
            )
    # instances: a z-stack's object may be in pieces within one plane; the target is made per plane anyway
    labels = Task("binary") if task.kind == "instances" else task.labels
    rec = project.image(image_id)
    out: list[np.ndarray | None] = []
    for z, plane in enumerate(planes):
        if plane is None:
            out.append(None)
            continue
        where = f"annotation v{version} of {rec.name!r}" + (f" (plane {z})" if len(planes) > 1 else "")
        if task.kind == "instances":
            try:
                check_labels(plane, labels, source=where)  # whole, non-negative ids that fit uint16
                out.append(instances_to_target(plane, classes=per_object).astype(np.int64))
            except DataError as exc:
                raise _bad_image(
                    project, image_id, f"has an annotation that is not an instance mask ({exc})"
                ) from exc
            continue
        try:
            checked = check_labels(plane, labels, source=where)
        except MaskError as exc:
            raise _bad_image(
                project,
                image_id,
                f"has an annotation that does not fit the project's task, {task} ({exc}); save a corrected "
                "version (diffseg correct, the Annotate widget)",
            ) from exc
        if notes is not None:
            notes.extend(checked.notes)
        out.append(checked.mask)
    return out


def _label_planes(mask: np.ndarray, planes: tuple[int, ...] | None) -> list[np.ndarray | None]:
    """An annotation's int64 label plane per image plane, None for a plane it does not annotate.

    A 2D mask is one annotated plane; a z-stack's ``(Z, H, W)`` mask annotates the ``planes`` recorded with
    it (None recorded: every plane).
    """
    if mask.ndim == 2:
        return [mask.astype(np.int64)]
    chosen = set(range(mask.shape[0]) if planes is None else planes)
    return [mask[z].astype(np.int64) if z in chosen else None for z in range(mask.shape[0])]


def _num_classes(project: Project) -> int:
    """Output classes of a new model: the project task's (2 binary, K multiclass, 3 instances)."""
    return project.task.num_classes


def _new_bundle(
    project: Project,
    channels: int,
    preset: Preset,
    seed: int,
    dev: torch.device,
    normalization: Normalization | None = None,
) -> ModelBundle:
    """A fresh diffseg bundle (teacher + twin students) sized by the preset, with its input statistics."""
    spec = ModelSpec(
        "diffseg",
        channels,
        _num_classes(project),
        preset.student_channels,
        preset.teacher_channels,
        preset.emb_dim,
    )
    return ModelBundle(spec, seed=seed, normalization=normalization).to(dev)


def _new_model_id(project: Project, job_id: int, what: str) -> str:
    base = f"{what}-job{job_id}"
    taken = {m.id for m in project.models()}
    mid, n = base, 1
    while mid in taken or project.model_dir(mid).exists():
        n += 1
        mid = f"{base}-{n}"
    return mid


def _save_model(
    project: Project,
    bundle: ModelBundle,
    mid: str,
    *,
    round: int,
    preset: Preset,
    metrics: dict,
    watershed: Watershed | None = None,
) -> str:
    """Save ``bundle`` as model ``mid``, register it and make it active (an instance model with the
    ``watershed`` parameters chosen on the project's validation images, when it has them).

    Weights with a NaN or an infinity are never saved (the store refuses to register them too); if the
    registration fails, the folder written for it is removed, so nothing is left half-written.

    Raises:
        TrainingDiverged: A weight is not finite; nothing is written and the active model is unchanged.
    """
    bad = nonfinite_weights(bundle.nets)
    if bad:
        raise TrainingDiverged(
            f"model {mid!r} was not saved: {len(bad)} weight tensor(s) hold NaN or infinite values (e.g. "
            f"{', '.join(bad[:3])}), so training diverged. Train again with a lower learning rate (lr is "
            f"{preset.lr:g}); the active model is unchanged."
        )
    folder = project.model_dir(mid)
    try:
        extra = {"preset": preset.to_dict(), "round": round, **project.task.model_config()}
        if watershed is not None:
            extra["watershed"] = watershed.to_config()
        save_bundle(bundle, folder, extra=extra, metrics=metrics)
        project.register_model(mid, round=round, method=bundle.spec.method, metrics=metrics)
    except BaseException:
        with contextlib.suppress(Exception):  # the original error is the one to report
            if mid not in {m.id for m in project.models()}:
                shutil.rmtree(folder, ignore_errors=True)
        raise
    project.set_active_model(mid)
    return mid


def _load_teacher(project: Project, mid: str, device: torch.device) -> tuple[ModelBundle, dict]:
    """A model's bundle and config.json; it must have a diffusion teacher."""
    bundle, config, _ = load_bundle(project.model_dir(mid), device)
    if not bundle.has_teacher:
        raise ConfigError(f"the model {mid!r} has no diffusion teacher; activate a diffseg model")
    return bundle, config


# ------------------------------------------------------------------------------------------------
# the three job kinds (generators of core events)
# ------------------------------------------------------------------------------------------------
def _barrier(dist_info: DistInfo | None) -> None:
    if dist_info is not None and dist_info.enabled:
        import torch.distributed as dist

        dist.barrier()


def _pretrain(
    project: Project,
    job_id: int,
    params: PretrainParams,
    cancel: CancelToken,
    dist_info: DistInfo | None = None,
) -> Iterator[Event]:
    preset = params.resolve_preset()
    seed = params.seed
    dev = choose_device(params.device)
    channels = _channels(project)
    ids = [r.id for r in project.images(split="train") if r.state != "excluded"]
    if not ids:
        raise ConfigError("the project has no training images; import some first (diffseg import)")
    norm = _normalization(project, ids, channels)
    images = [x for i in ids for x in _tensors(project, i, channels, norm)]  # a z-stack: each plane
    instances = project.task.kind == "instances"
    # the job's own length (pretrain_job_steps) is for learning a threshold's split; without one to learn
    # (no dark-field image, a multiclass project, the anchor off) more steps bought nothing: GlaS scored
    # 0.656 at 150 steps and 0.597 at 500, all-foreground 0.686 (benchmarks/results/stage_a/glas)
    anchored = anchor_applies(preset.pretrain_split_weight, project.task.num_classes, instances) and any(
        is_dark_field(x) for x in images
    )
    steps = preset.label_free_steps() if anchored else preset.pretrain_steps
    if not anchored:
        shorter = (
            f": {steps} steps, not {preset.label_free_steps()} (more do not help without an anchor)"
            if steps != preset.label_free_steps()
            else ""
        )
        yield Event(
            "log",
            "pretrain",
            message=f"no image to anchor Stage A to (none is dark-field, as fluorescence is){shorter}. "
            "Without one a label-free model seldom finds the objects (on H&E glands, EM membranes and fundus "
            "vessels it scored no better than an all-foreground mask or Otsu's threshold): annotate two or "
            "three images and co-train for proposals worth correcting",
        )
    preset = preset.with_overrides(pretrain_steps=steps)
    bundle = _new_bundle(project, channels, preset, seed, dev, norm)
    gen = torch.Generator().manual_seed(seed)
    jd = project.job_dir(job_id)
    yield from pretrain_teacher(
        bundle,
        images,
        preset,
        generator=gen,
        device=dev,
        cancel=cancel,
        checkpoint=jd / "pretrain.safetensors",
        instances=instances,
    )
    # the proposals' temperature, fitted to the anchor Stage A learned from (core.label_free.fit_temperature)
    temperature, calibrated = 1.0, 0
    if anchored:
        cancel.raise_if_cancelled("calibration")
        temperature, calibrated = fit_temperature(
            bundle,
            images,
            instances=instances,
            generator=torch.Generator().manual_seed(seed),
            roi=preset.roi_size,
            sw_batch=preset.sw_batch_size,
        )
        if calibrated:
            yield Event(
                "log",
                "pretrain",
                message=f"its proposals' temperature: {temperature:g}, fitted to the threshold's split of "
                f"{calibrated} image(s) (its own probabilities are not calibrated)",
            )
    mid = _save_model(
        project,
        bundle,
        _new_model_id(project, job_id, "pretrained"),
        round=0,
        preset=preset,
        metrics={
            "stage": "pretrain",
            "images": len(ids),
            "planes": len(images),
            "temperature": temperature,
            "calibration_images": calibrated,
        },
    )
    yield Event("log", "pretrain", message=f"saved model {mid} (round 0) and made it active")


def _propose_plan(project: Project, job_id: int, params: ProposeParams) -> tuple[str, list[str]]:
    """(model id, image ids) of a propose job: chosen at its first start, read back when it resumes.

    ``jobs/<id>/propose.json`` fixes the model (the one active at the first start) and the images, so a
    resumed job proposes with the same model, for the same images, with the same per-image seeds.
    """
    plan_file = project.job_dir(job_id) / "propose.json"
    if plan_file.exists():
        plan = json.loads(plan_file.read_text())
        return str(plan["model"]), [str(i) for i in plan["images"]]
    active = project.active_model()
    if active is None:
        raise ConfigError("the project has no model yet; run pretraining or a co-training round first")
    if params.ids:
        ids = [project.image(i).id for i in params.ids]
    else:
        ids = [
            r.id
            for r in project.images()
            if r.state in ("unlabeled", "proposed") and not r.split.startswith("test")
        ]
    atomic_write_bytes(plan_file, json.dumps({"model": active.id, "images": ids}).encode())
    return active.id, ids


def _proposed_by_job(project: Project, job_id: int, mid: str) -> set[str]:
    """Images that job ``job_id`` has already proposed with model ``mid`` (saved since its first start)."""
    started = project.job(job_id).started_at
    if started is None:
        return set()
    return {p.image_id for p in project.proposals(model_id=mid) if p.created_at >= started}


def _propose(
    project: Project,
    job_id: int,
    params: ProposeParams,
    cancel: CancelToken,
    dist_info: DistInfo | None = None,
) -> Iterator[Event]:
    """Proposals, one image at a time; each is stored as soon as it is made, so a resumed job (cancelled,
    failed or killed) proposes only the images it had not done yet. A z-stack is proposed plane by plane
    (2D networks) and stored as one ``(Z, K, H, W)`` proposal with its ``(Z, H, W)`` uncertainty."""
    dev = choose_device(params.device)
    mid, ids = _propose_plan(project, job_id, params)
    bundle, config = _load_teacher(project, mid, dev)
    # without an explicit preset, propose at the cost of the preset the model was trained with
    pr = params.resolve_preset(default=Preset.from_config(config))
    # a label-free model (the `pretrain` job's): Stage A trains the mask pathway at t = T - 1 only, so it
    # has never denoised a partly noised mask; more DDIM steps or chained rounds pass it through noise
    # levels it never saw (DSB nuclei, 6 images: one step 0.794 Dice against 0.748 with S = 10, R = 2).
    # Its probabilities are not calibrated either: they are sharpened by the temperature the pretrain job
    # fitted (core.label_free.fit_temperature; 1 where it had no anchor, and for a model from before it)
    model = project.model(mid)
    label_free = is_label_free(model)
    steps, samples, rounds = propose_sampling(
        pr, label_free=label_free, steps=params.steps, samples=params.samples, rounds=params.rounds
    )
    cfg = SamplerConfig(
        steps=steps,
        samples=samples,
        rounds=rounds,
        temperature=float(model.metrics.get("temperature", 1.0)) if label_free else 1.0,
    )
    if label_free:
        sharpened = (
            f", probabilities at the temperature fitted to its anchor, {cfg.temperature:g}"
            if cfg.temperature != 1.0
            else ""
        )
        yield Event(
            "log",
            "propose",
            message=f"label-free model {mid}: S={cfg.steps}, R={cfg.rounds} "
            f"(one step and one round unless asked: its label-free training saw only pure noise){sharpened}",
        )
    done = _proposed_by_job(project, job_id, mid)
    if done:
        left = sum(1 for i in ids if i not in done)
        yield Event(
            "log",
            "propose",
            message=f"resuming: {len(ids) - left} of {len(ids)} images already proposed, {left} to go",
        )
    seed = params.seed
    diff = bundle.diffusion()
    for n, image_id in enumerate(ids):
        if image_id in done:
            continue
        cancel.raise_if_cancelled("proposals")
        gen = torch.Generator().manual_seed(seed * 100_003 + n)  # n: the image's place in the plan
        probs, uncs = [], []
        for x in _preprocessed(project, image_id, bundle.preprocess):  # one plane, or each of a z-stack
            cancel.raise_if_cancelled("proposals")
            prop = propose(
                bundle.mask_net,
                diff,
                x[None],
                cfg,
                gen,
                multiple=bundle.spec.multiple,
                roi=pr.roi_size,
                sw_batch=pr.sw_batch_size,
            )
            probs.append(prop.probs[0].cpu().numpy())
            uncs.append(prop.uncertainty[0].cpu().numpy())
        stack = project.image(image_id).is_stack
        pid = project.save_proposal(
            mid, image_id, np.stack(probs) if stack else probs[0], np.stack(uncs) if stack else uncs[0]
        )
        metrics = {"uncertainty": float(np.mean([u.mean() for u in uncs]))}
        saved = project.proposals(image_id, mid)
        plane = next((p.plane for p in saved if p.id == pid), None)
        if plane is not None:
            metrics["plane"] = float(plane)
        yield Event("progress", "propose", n + 1, len(ids), metrics=metrics, message=image_id)


def _val_metrics(
    project: Project, bundle: ModelBundle, preset: Preset
) -> tuple[dict[str, float], Watershed | None]:
    """The saved model's scores on the annotated ``val`` images: ``val_dice`` (mean over the foreground
    classes present), ``val_iou``, ``val_n``; a multiclass project adds each class's Dice
    (``val_dice_class<k>``, classes absent from an image left out) and an instance project the objects'
    ``val_ap_50`` and ``val_f1_50`` (the watershed's objects against the annotated ones); with several
    object classes also ``val_class_accuracy`` (the share of objects matched at IoU 0.5 whose class is right).

    An instance project's watershed parameters are chosen on the same images first
    (:func:`~napari_diffseg.core.instance_tuning.tune_watershed`; the defaults are kept under 20 annotated
    objects) and returned with the scores, for the model to keep; the object scores are then those of the
    chosen parameters (optimistic: chosen on these images) with ``val_ap_50_default_watershed`` beside."""
    task = project.task
    kind = task.kind
    k = bundle.spec.num_classes
    per, classes = [], []
    found_on: list[
        tuple[np.ndarray, np.ndarray, dict[int, int] | None]
    ] = []  # instances: probs, ids, classes
    for rec in project.images(split="val"):
        if rec.state == "excluded":
            continue
        ann = project.annotation(rec.id)
        mask = project.load_annotation(rec.id)
        if ann is None or mask is None:
            continue
        raw = _label_planes(mask, ann.planes)
        planes = _targets(project, rec.id, ann.version, raw, None)
        if all(p is None for p in planes):
            continue
        xs = _preprocessed(project, rec.id, bundle.preprocess)
        for x, plane, ids in zip(xs, planes, raw, strict=True):  # a z-stack: its annotated planes, each 2D
            if plane is None or ids is None:
                continue
            batch = deployed_probs(bundle, x[None], roi=preset.roi_size, sw_batch=preset.sw_batch_size)
            probs = batch[0].cpu().numpy()
            per.append(segmentation_metrics(probs.argmax(0), plane, k))
            if kind == "multiclass":
                classes.append(dice_per_class(probs.argmax(0), plane, k))
            elif kind == "instances" and k >= 3:
                classed = task.classed and ann.object_classes is not None and k == task.num_classes
                found_on.append((probs, ids, ann.object_classes if classed else None))
    if not per:
        return {}, None
    params = (
        tune_watershed([p for p, _, _ in found_on], [i for _, i, _ in found_on]).params if found_on else None
    )
    objects, matched, correct = [], 0, 0
    for probs, ids, object_classes in found_on:
        found = probs_to_instances(probs, params)
        objects.append(instance_metrics(found, ids))
        if params is not None and params != Watershed():
            objects[-1]["ap_50_default_watershed"] = instance_metrics(probs_to_instances(probs), ids)["ap_50"]
        if object_classes is not None:
            counts = class_matching(
                found, ids, classify_objects(found, probs), object_classes, task.object_classes
            )
            matched += int(counts["matched"])
            correct += int(counts["class_correct"])
    s = summarize(per)
    out = {"val_dice": float(s["dice_mean"]), "val_iou": float(s["iou_mean"]), "val_n": int(s["n"])}
    for c, dice in enumerate(mean_per_class(classes), start=1):
        if np.isfinite(dice):  # a class on no validation image has no Dice
            out[f"val_dice_class{c}"] = dice
    if objects:
        o = summarize_instances(objects)
        out.update(val_ap_50=float(o["ap_50"]), val_f1_50=float(o["f1_50"]))
        if "ap_50_default_watershed" in o:
            out["val_ap_50_default_watershed"] = float(o["ap_50_default_watershed"])
    if matched:
        out["val_class_accuracy"] = correct / matched
    return out, params


def _cotrain(
    project: Project,
    job_id: int,
    params: CotrainParams,
    cancel: CancelToken,
    dist_info: DistInfo | None = None,
) -> Iterator[Event]:
    """Co-training rounds. Under torchrun (``dist_info.enabled``) every rank runs this; rank 0 alone
    writes to the project, and Stage C runs under DDP."""
    preset = params.resolve_preset()
    rounds = params.rounds
    seed = params.seed
    distributed = dist_info is not None and dist_info.enabled
    main = dist_info is None or dist_info.is_main
    dev = dist_info.device if dist_info is not None else choose_device(params.device)
    if rounds < 1:
        raise ConfigError("--rounds must be >= 1")
    jd = project.job_dir(job_id)
    base_file = jd / "base.json"
    # The model a job starts from is fixed at its first start, so a resumed job repeats nothing.
    if main and not base_file.exists():
        active = project.active_model()
        base = {"model": active.id if active else None, "round": active.round if active else 0}
        atomic_write_bytes(base_file, json.dumps(base).encode())
    channels = _channels(project)
    if main:
        _data_manifest(project, jd / "data.json")  # written at the first start, read back on resume
    _barrier(dist_info)  # every rank now reads the same base model and the same data manifest
    base = json.loads(base_file.read_text())
    # the input statistics: a warm start keeps its base model's; a first model computes them over its
    # training images (the same on every rank and on resume: the data manifest is fixed)
    if base["model"] is not None:
        norm = _base_normalization(project, base["model"])
    else:
        norm = _normalization(project, [i for i, _ in _data_manifest(project, jd / "data.json")], channels)
    notes: list[str] = []
    data, counts = _training_data(project, channels, preset, jd / "data.json", norm, notes)
    if counts["labeled"] == 0:
        raise ConfigError(
            "co-training needs at least one annotated image; correct a proposal or import masks"
        )
    for note in list(dict.fromkeys(notes))[:5]:
        yield Event("log", "cotrain", message=f"note: {note}")
    yield Event(
        "log",
        "cotrain",
        message=f"{counts['labeled']} labeled, {counts['unlabeled']} unlabeled images, {counts['val']} "
        "annotated validation images (checkpoint choice and pseudo-label gate; each plane of a z-stack "
        "counts as one image)",
    )
    prev = base["model"]
    for r in range(1, rounds + 1):
        round_no = int(base["round"]) + r
        done_id = f"round{round_no}-job{job_id}"
        if done_id in {m.id for m in project.models()}:
            prev = done_id  # finished before an interruption
            continue
        if prev is not None:
            bundle, _, _ = load_bundle(project.model_dir(prev), dev)
            if not bundle.has_teacher:
                raise ConfigError(f"model {prev!r} has no diffusion teacher; activate a diffseg model first")
        else:
            bundle = _new_bundle(project, channels, preset, seed, dev, norm)
        yield from run_stages(
            bundle,
            data,
            preset,
            generator=torch.Generator().manual_seed(seed * 1000 + round_no),
            seed=seed * 1000 + round_no,
            device=dev,
            cancel=cancel,
            checkpoints={
                "pretrain": jd / "pretrain.safetensors",
                "teacher": jd / f"round{round_no}_teacher.safetensors",
                "cotrain": jd / f"round{round_no}_cotrain.safetensors",
            },
            cold_start=prev is None,  # Stage A only then, and only if the preset asks for it
            pretrain_generator=torch.Generator().manual_seed(seed),
            distributed=distributed,
            instances=project.task.kind == "instances",
        )
        scores, watershed = _val_metrics(project, bundle, preset)
        metrics = {"round": round_no, **counts, **scores}
        if main:
            _save_model(
                project, bundle, done_id, round=round_no, preset=preset, metrics=metrics, watershed=watershed
            )
        _barrier(dist_info)
        prev = done_id
        yield Event(
            "metrics",
            "cotrain",
            r,
            rounds,
            metrics={k: float(v) for k, v in metrics.items()},
            message=f"saved model {prev} (round {round_no}) and made it active",
        )


_RUNNERS = {"pretrain": _pretrain, "propose": _propose, "cotrain": _cotrain}


def execute_job(
    root: str | Path,
    job_id: int,
    *,
    report: Reporter | None = None,
    cancel: CancelToken | None = None,
    dist_info: DistInfo | None = None,
) -> str:
    """Run job ``job_id`` of the project at ``root`` to its end; returns its final state.

    Our own errors mark the job failed and are re-raised as ``JobFailed`` (cause chained); anything
    else is recorded the same way with its type name. Under torchrun (``dist_info.world > 1``, a
    ``cotrain`` job) every rank calls this; only rank 0 records state and events.
    """
    if dist_info is not None and dist_info.enabled and not dist_info.is_main:
        return _execute_follower(root, job_id, cancel, dist_info)
    with Project.open(root) as project:
        job = project.job(job_id)
        if job.state == "done":
            return "done"
        if job.kind not in _RUNNERS:
            raise ConfigError(f"job {job_id} has unknown kind {job.kind!r}")
        token = cancel or CancelToken(project.job_dir(job_id) / "cancel")
        if token.path is not None and token.path.exists():
            token.path.unlink()  # a resumed job starts un-cancelled
        project.set_job_state(job_id, "running", pid=os.getpid())
        try:
            params = parse_job_params(job.kind, job.params)
            for ev in _RUNNERS[job.kind](project, job_id, params, token, dist_info):  # type: ignore[operator]
                # progress events come at most ~4 per second; all of them are kept
                project.append_event(job_id, ev.to_dict())
                if report is not None:
                    report(ev)
        # the final event and the final state are written in one transaction (a kill between them
        # would otherwise leave a "done" event on an interrupted job, and a second one after its resume)
        except Cancelled as exc:
            final = Event("log", job.kind, message=str(exc)).to_dict()
            project.set_job_state(job_id, "cancelled", error=str(exc), event=final)
            return "cancelled"
        except DiffsegError as exc:
            final = Event("error", job.kind, message=str(exc)).to_dict()
            project.set_job_state(job_id, "failed", error=str(exc), event=final)
            raise JobFailed(f"job {job_id} ({job.kind}) failed: {exc}") from exc
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}"
            final = Event("error", job.kind, message=msg).to_dict()
            project.set_job_state(job_id, "failed", error=msg, event=final)
            raise JobFailed(f"job {job_id} ({job.kind}) failed unexpectedly: {msg}") from exc
        project.set_job_state(job_id, "done", event=Event("done", job.kind, message="finished").to_dict())
        return "done"


def _execute_follower(root: str | Path, job_id: int, cancel: CancelToken | None, dist_info: DistInfo) -> str:
    """A rank > 0 of a distributed job: run the same steps, write nothing to the project."""
    with Project.open(root) as project:
        job = project.job(job_id)
        if job.kind != "cotrain":
            raise ConfigError(f"only cotrain jobs run on several processes, not {job.kind!r}")
        token = cancel or CancelToken(project.job_dir(job_id) / "cancel")
        try:
            params = parse_job_params(job.kind, job.params)
            assert isinstance(params, CotrainParams)
            for _ in _cotrain(project, job_id, params, token, dist_info):
                pass
        except Cancelled:
            return "cancelled"
        return "done"
