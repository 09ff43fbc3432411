"""End-to-end benchmark runs on a dataset folder (``diffseg experiment``), and model evaluation.

Protocol (docs/method.md, "Evaluation hygiene"):

- A **validation** split is the dataset's own ``val`` images, or else ``ceil(val_fraction × n)`` ids
  carved, seeded, from the sorted ``train`` ids. It is never trained on; every choice made during
  training (the deployed checkpoint, the pseudo-label gate) is made on it.
- The **labeled** subset is drawn with a seeded RNG from the remaining train ids and saved with the run;
  the rest of them are unlabeled.
- ``test*`` images are read once, after training, for the final evaluation. Nothing is chosen on them.
- Metrics are computed inside the dataset's ``fov/`` masks where it has them (DRIVE's field of view).
- Every result records its provenance: commit (and whether the tree was dirty), the fully resolved
  preset, package versions, device, threads and wall time.

Why one module of ~1,100 lines: :func:`run_experiment` is one protocol (split, train, read the test split
once, score, record), and its scoring helpers (per image, per z-stack, per class, per object) exist for it
and for ``diffseg evaluate``, which must score a saved model exactly as the experiment did; split apart they
would drift.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base.errors import ConfigError
from .base.events import CancelToken, Event
from .base.fileio import atomic_write_bytes
from .base.preprocessing import Normalization, dataset_statistics
from .base.presets import Preset, get_preset
from .core.diffusion import SamplerConfig
from .core.distributed import cleanup, setup_from_env
from .core.inference import predict_probs, propose
from .core.instance_metrics import class_matching, instance_metrics, summarize_classes, summarize_instances
from .core.instance_tuning import Tuning, tune_watershed
from .core.instances import (
    INSTANCE_CLASSES,
    Watershed,
    classify_objects,
    instances_to_target,
    probs_to_instances,
    stack_instances,
)
from .core.metrics import (
    best_permutation_dice,
    dice_per_class,
    mean_per_class,
    segmentation_metrics,
    summarize,
)
from .core.models import METHODS, ModelBundle, ModelSpec, deployed_probs, preprocess, save_bundle
from .core.pipeline import run_stages
from .core.training import TrainData
from .core.validation import ValSet, mean_dice
from .data.dataset import DatasetFolder, StackPlanes

__all__ = [
    "TASKS",
    "choose_labeled",
    "choose_val",
    "evaluate_bundle",
    "evaluate_instances",
    "evaluate_instances_folder",
    "label_free_report",
    "load_images",
    "model_task",
    "provenance",
    "run_experiment",
]

Reporter = Callable[[Event], None]

#: Tasks ``diffseg experiment`` runs: ``binary`` (masks/), ``multiclass`` (masks/ read as class maps, values
#: 0..K-1 for the K classes named; Dice per class) and ``instances`` (instances/: the networks learn the
#: 3-class target of :mod:`~napari_diffseg.core.instances`, scored as objects after the watershed).
TASKS = ("binary", "multiclass", "instances")


def choose_labeled(train_ids: Iterable[str], fraction: float, seed: int) -> list[str]:
    """ceil(fraction × n) ids drawn with a seeded RNG from the sorted id list (at least one)."""
    ids = sorted(train_ids)
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"--labeled-fraction must be in (0, 1], got {fraction}")
    if not ids:
        raise ConfigError("the dataset has no 'train' images; add split.csv or put images in images/")
    n = max(1, math.ceil(fraction * len(ids) - 1e-9))
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(ids), size=n, replace=False)
    return sorted(ids[i] for i in picked)


def choose_val(train_ids: Iterable[str], val_fraction: float, seed: int) -> list[str]:
    """``ceil(val_fraction × n)`` ids carved with a seeded RNG from the sorted ids (none when the
    fraction is 0; at least one, and never more than half of them, otherwise)."""
    ids = sorted(train_ids)
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0 or len(ids) < 2:
        return []
    n = min(len(ids) // 2, max(1, math.ceil(val_fraction * len(ids) - 1e-9)))
    rng = np.random.default_rng([seed, 0x7A1])  # its own stream: the labeled draw stays independent
    return sorted(ids[i] for i in rng.choice(len(ids), size=n, replace=False))


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """The checkout's ``commit`` and ``dirty`` flag now (None outside a git checkout). Taken when a run
    starts: the code a run executes is the code of its start, whatever is committed while it runs."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": _git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def provenance(
    preset: Preset, device: torch.device | str, world: int = 1, started: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a result needs to be reproduced: commit and dirty flag (``started``: the :func:`git_state` taken
    when the run began, with ``commit_at_end`` added when HEAD moved during the run; else now), the
    resolved preset, package versions, device, threads, host."""
    versions: dict[str, str | None] = {}
    for pkg in ("napari-diffseg", "torch", "monai", "numpy", "scikit-image", "tifffile"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    now = git_state()
    git = dict(started) if started is not None else now
    if started is not None and now["commit"] != started.get("commit"):
        git["commit_at_end"] = now["commit"]
    return {
        **git,
        "preset": preset.to_dict(),
        "versions": versions,
        "python": platform.python_version(),
        "device": str(device),
        "world_size": world,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": _cpu_model() or platform.processor() or None,
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def load_images(
    ds: DatasetFolder | StackPlanes,
    ids: Iterable[str],
    channels: int,
    normalization: Normalization | None = None,
) -> list[torch.Tensor]:
    """Read and preprocess each image (:func:`~napari_diffseg.core.models.preprocess`, with the model's
    ``normalization``) → (C, H, W) float32 tensors."""
    return [preprocess(ds.load_image(i), channels, normalization) for i in ids]


def dataset_channels(ds: DatasetFolder | StackPlanes, ids: Iterable[str]) -> int:
    """The dataset's channel count: its fluorescence channel count (2, 4, 5...; every image must have it),
    else 3 if any image is colour, else 1 (grey images are repeated to RGB, as in a project).

    Raises:
        ConfigError: Images with different fluorescence channel counts.
    """
    counts = {int(ds.load_image(i).shape[0]) for i in ids}
    odd = counts - {1, 3}
    if odd:
        if len(counts) > 1:
            raise ConfigError(
                f"the dataset's images have {', '.join(str(c) for c in sorted(counts))} channels; a model takes "
                "one channel count: keep the images with the same count in one dataset folder."
            )
        return odd.pop()
    return 3 if 3 in counts else 1


def consume(events: Iterator[Event], report: Reporter | None) -> None:
    for ev in events:
        if report is not None:
            report(ev)


def evaluate_bundle(
    bundle: ModelBundle,
    images: list[torch.Tensor],
    masks: list[np.ndarray],
    ids: list[str],
    preset: Preset,
    regions: list[np.ndarray | None] | None = None,
    preds: list[np.ndarray] | None = None,
) -> dict:
    """Per-image Dice / IoU / HD95 of the deployed networks (inside ``regions`` where given), plus their
    summary; each predicted label map is appended to ``preds`` when given."""
    per_image: list[dict[str, Any]] = []
    regs = regions if regions is not None else [None] * len(ids)
    for j, (i, x, y, region) in enumerate(zip(ids, images, masks, regs, strict=True)):
        probs = deployed_probs(bundle, x[None], roi=preset.roi_size, sw_batch=preset.sw_batch_size, index=j)
        pred = probs.argmax(1)[0].cpu().numpy()
        if region is not None:
            pred, y = pred * region, y * region
        m = segmentation_metrics(pred, y, bundle.spec.num_classes)
        per_image.append({"id": i, **m})
        if preds is not None:
            preds.append(pred)
    return {**summarize(per_image), "per_image": per_image}


def teacher_on_test(
    bundle: ModelBundle,
    val: ValSet | None,
    images: list[torch.Tensor],
    masks: list[np.ndarray],
    ids: list[str],
    regions: list[np.ndarray | None],
    preset: Preset,
) -> dict:
    """The teacher's own segmentation of the test images, for reporting (``--teacher-test``).

    Sampled as the co-training's validation checks sample it
    (:func:`~napari_diffseg.core.training.teacher_labels`: ``refresh_ddim_steps`` DDIM steps,
    ``refresh_samples`` samples, one round, a fixed seed per image), with the teacher's weights at the end of
    the run (its best-validated weights with ``teacher_keep_best``), and scored like the deployed networks
    (per-image Dice inside ``regions``). ``val_dice`` is the same teacher on the validation
    images, the figure a rule "deploy the teacher where it validates best" would compare with the deployed
    networks' best validation Dice; None without validation images.

    ``ensemble`` scores a third candidate the same way, for the same rule to weigh: the mean of the
    teacher's probabilities and the students' (the students' whatever the bundle deploys: ``deploy_mean``'s
    candidate), on the test images (``per_image``, ``dice_mean``) and on the validation images
    (``val_dice``). It reuses the teacher's samples above; the students' part costs one student pass per
    image."""
    from .core.training import teacher_and_mean_labels, teacher_check_config

    cfg = teacher_check_config(preset)

    def scored(labels: list[torch.Tensor]) -> list[dict[str, Any]]:
        rows = []
        for i, label, y, region in zip(ids, labels, masks, regions, strict=True):
            pred = label.numpy()
            if region is not None:
                pred, y = pred * region, y * region
            rows.append({"id": i, **segmentation_metrics(pred, y, bundle.spec.num_classes)})
        return rows

    test_teacher, test_mean = teacher_and_mean_labels(bundle, images, preset)
    per_image, per_image_mean = scored(test_teacher), scored(test_mean)
    val_teacher = val_mean = None
    if val is not None:
        labels_t, labels_m = teacher_and_mean_labels(bundle, val.images, preset)
        val_teacher = mean_dice(labels_t, val, bundle.spec.num_classes)
        val_mean = mean_dice(labels_m, val, bundle.spec.num_classes)
    return {
        **summarize(per_image),
        "per_image": per_image,
        "val_dice": val_teacher,
        "sampler": {"ddim_steps": cfg.steps, "samples": cfg.samples, "rounds": cfg.rounds},
        "ensemble": {**summarize(per_image_mean), "per_image": per_image_mean, "val_dice": val_mean},
        "note": "reporting only: the teacher at the end of the run"
        + (" (its best-validated weights: teacher_keep_best)" if preset.teacher_keep_best else "")
        + "; ensemble: the mean of its probabilities and the students'; nothing was chosen on the test images",
    }


def per_stack_scores(
    preds: list[np.ndarray],
    masks: list[np.ndarray],
    plane_ids: list[str],
    bundle: ModelBundle,
    steps: Mapping[str, tuple[float, float, float] | None] | None = None,
) -> dict:
    """Dice / IoU / HD95 per z-stack (its planes' label maps stacked into one volume), plus their summary.

    ``steps`` gives a stack's (Z, Y, X) voxel step in XY pixels (:meth:`DatasetFolder.voxel_steps`), so that
    HD95 counts a plane-to-plane distance as the planes' real distance; a stack without one is scored with
    unit steps (``"z_step": null`` in its row)."""
    by_stack: dict[str, list[int]] = {}
    for n, pid in enumerate(plane_ids):
        by_stack.setdefault(StackPlanes.split_id(pid)[0], []).append(n)
    rows = []
    for stack_id, idx in by_stack.items():
        pred = np.stack([preds[n] for n in idx])
        truth = np.stack([masks[n] for n in idx])
        step = (steps or {}).get(stack_id)
        scores = segmentation_metrics(pred, truth, bundle.spec.num_classes, spacing=step)
        rows.append(
            {"id": stack_id, "planes": len(idx), "z_step": None if step is None else step[0], **scores}
        )
    return {**summarize(rows), "per_image": rows}


def _instance_row(
    probs: np.ndarray,
    truth: np.ndarray,
    object_metrics: bool,
    true_classes: Mapping[int, int] | None = None,
    params: Watershed | None = None,
) -> tuple[dict, dict]:
    """(pixel metrics of the objects' foreground, instance metrics) of one image's K-class probabilities,
    objects by the watershed with ``params`` (the defaults when None); with ``true_classes`` (objects of
    several classes: ``{true id: class}``) the instance metrics get ``classes_50``, the per-class counts of
    :func:`~napari_diffseg.core.instance_metrics.class_matching` (each predicted object's class by
    :func:`~napari_diffseg.core.instances.classify_objects`)."""
    pred = probs_to_instances(probs, params)
    pixel = segmentation_metrics((pred > 0).astype(np.int64), (truth > 0).astype(np.int64), 2)
    obj = {**instance_metrics(pred, truth, glas=object_metrics), **_default_watershed(probs, truth, params)}
    if true_classes is not None:
        n = probs.shape[0] - 2
        obj["classes_50"] = class_matching(pred, truth, classify_objects(pred, probs), true_classes, n)
    return pixel, obj


def _default_watershed(probs: np.ndarray, truth: np.ndarray, params: Watershed | None) -> dict[str, float]:
    """With tuned ``params``: the image's ``ap_50`` / ``ap_75`` / ``f1_50`` with the default watershed too,
    as ``<key>_default_watershed`` (what the same networks score with the fixed post-processing: the figure
    runs made before models carried their own parameters report)."""
    if params is None or params == Watershed():
        return {}
    pred = probs_to_instances(probs) if probs.ndim == 3 else stack_instances(probs)
    base = instance_metrics(pred, truth)
    return {f"{k}_default_watershed": float(base[k]) for k in ("ap_50", "ap_75", "f1_50")}


def _instance_stack_row(
    probs: np.ndarray,
    truth: np.ndarray,
    spacing: tuple[float, ...] | None,
    true_classes: Mapping[int, int] | None = None,
    params: Watershed | None = None,
) -> tuple[dict, dict]:
    """:func:`_instance_row` of a z-stack: its planes' probabilities ``(Z, K, H, W)`` → objects linked across
    the planes (``core.instances.stack_instances``), scored in 3D against the stack's ids ``(Z, H, W)``
    (each object's IoU over its voxels; HD95 with the planes' real distance when ``spacing`` gives it);
    with ``true_classes`` each predicted object's class from its voxels' summed interior probabilities."""
    pred = stack_instances(probs, params)
    pixel = segmentation_metrics(
        (pred > 0).astype(np.int64), (truth > 0).astype(np.int64), 2, spacing=spacing
    )
    obj = {**instance_metrics(pred, truth), **_default_watershed(probs, truth, params)}
    if true_classes is not None:
        n = probs.shape[1] - 2
        obj["classes_50"] = class_matching(pred, truth, classify_objects(pred, probs), true_classes, n)
    return {"planes": int(probs.shape[0]), **pixel}, obj


def _instance_summary(
    rows: list[dict[str, Any]], objects: list[dict[str, Any]], class_names: list[str] | None = None
) -> dict:
    """Means over the images; with ``class_names`` (objects of several classes, class 1 first) also the
    per-class figures of :func:`~napari_diffseg.core.instance_metrics.summarize_classes`."""
    per_image = [{**r, **o} for r, o in zip(rows, objects, strict=True)]
    classed = summarize_classes([o["classes_50"] for o in objects], class_names) if class_names else {}
    return {**summarize(rows), **summarize_instances(objects), **classed, "per_image": per_image}


def dataset_object_classes(
    folder: DatasetFolder, image_id: str, ids: np.ndarray, object_classes: int
) -> dict[int, int]:
    """Each object's class ``{id: class}`` of a dataset image whose objects are of several classes: the
    majority class of its ``masks/`` class map (0 background, 1..n) under each object of ``instances/``.
    ``ids`` of a z-stack are ``(Z, H, W)``: its ``masks/`` file is then the ``(Z, H, W)`` class map, and an
    object crossing planes takes the class under most of its voxels.

    Raises:
        ConfigError: The image has no ``masks/`` file.
        MaskError: A class value above ``object_classes``, or an object with no class under it (the message
            names the image).
    """
    from .base.masks import object_classes_from_map

    if not folder.has_mask(image_id):
        raise ConfigError(
            f"image {image_id!r} of {folder.root} has no masks/ file: objects of {object_classes} classes need "
            f"masks/{image_id}.png (or .tif) beside instances/{image_id}.tif, holding each object's class "
            f"(1..{object_classes}; 0 background)"
        )
    if ids.ndim == 3:
        z, h, w = ids.shape
        class_map = folder.load_mask_stack(image_id, (z, h, w), binary=False)
    else:
        class_map = folder.load_mask(image_id, binary=False)
    return object_classes_from_map(
        ids,
        class_map,
        object_classes,
        source=f"image {image_id!r} of {folder.root} (its masks/ class map beside instances/)",
    )


def evaluate_instances(
    bundle: ModelBundle,
    images: list[torch.Tensor],
    instances: list[np.ndarray],
    ids: list[str],
    preset: Preset,
    *,
    object_metrics: bool = False,
    true_classes: list[dict[int, int]] | None = None,
    class_names: list[str] | None = None,
    params: Watershed | None = None,
) -> dict:
    """Instance figures of the deployed networks: the K-class probabilities → instances by the seeded
    watershed (with ``params``: also the defaults' ``ap_50_default_watershed``...), then per image AP at IoU 0.50...0.90, F1@0.5 (and with ``object_metrics`` the GlaS object
    F1 / Dice / Hausdorff) against ``instances``, beside the foreground's pixel Dice / IoU / HD95
    (``dice_mean``...: objects > 0 against true objects > 0); means over the images.

    Objects of several classes: ``true_classes`` (each image's ``{id: class}``) and ``class_names`` (the
    object classes, class 1 first) add ``ap_50_per_class``, ``class_accuracy`` and the object counts per
    class (:func:`~napari_diffseg.core.instance_metrics.summarize_classes`)."""
    rows: list[dict[str, Any]] = []
    objects: list[dict[str, Any]] = []
    per_image_classes = true_classes if true_classes is not None else [None] * len(ids)
    for j, (i, x, truth, classes) in enumerate(zip(ids, images, instances, per_image_classes, strict=True)):
        probs = deployed_probs(bundle, x[None], roi=preset.roi_size, sw_batch=preset.sw_batch_size, index=j)
        pixel, obj = _instance_row(probs[0].float().cpu().numpy(), truth, object_metrics, classes, params)
        rows.append({"id": i, **pixel})
        objects.append(obj)
    return _instance_summary(rows, objects, class_names if true_classes is not None else None)


def evaluate_instance_stacks(
    bundle: ModelBundle,
    images: list[torch.Tensor],
    plane_ids: list[str],
    planes: StackPlanes,
    preset: Preset,
    *,
    true_classes: Mapping[str, Mapping[int, int]] | None = None,
    class_names: list[str] | None = None,
    params: Watershed | None = None,
) -> dict:
    """:func:`evaluate_instances` of z-stacks: each plane's K-class probabilities, then per stack the
    objects of all its planes at once (``core.instances.stack_instances``: an object keeps one id through
    the planes it crosses) scored in 3D against the stack's ``instances/`` ids: AP@0.5...0.9 and F1@0.5
    over objects (an object's IoU over its voxels), the foreground's Dice / IoU over voxels (HD95 with the
    planes' real distance where the file gives it). One row per stack. Objects of several classes:
    ``true_classes`` (each stack's ``{id: class}``) and ``class_names`` add the per-class figures, each
    predicted object classed over all its voxels."""
    probs_by: dict[str, list[np.ndarray]] = {}
    for j, (pid, x) in enumerate(zip(plane_ids, images, strict=True)):
        probs = deployed_probs(bundle, x[None], roi=preset.roi_size, sw_batch=preset.sw_batch_size, index=j)
        probs_by.setdefault(StackPlanes.split_id(pid)[0], []).append(probs[0].float().cpu().numpy())
    rows: list[dict[str, Any]] = []
    objects: list[dict[str, Any]] = []
    for stack_id, plane_probs in probs_by.items():
        pixel, obj = _instance_stack_row(
            np.stack(plane_probs),
            planes.instance_stack(stack_id),
            planes.folder.voxel_steps(stack_id),
            None if true_classes is None else true_classes[stack_id],
            params,
        )
        rows.append({"id": stack_id, **pixel})
        objects.append(obj)
    return _instance_summary(rows, objects, class_names if true_classes is not None else None)


def evaluate_instances_folder(
    model: str | Path,
    dataset: str | Path,
    *,
    split: str = "test",
    device: str = "auto",
    object_metrics: bool | None = None,
) -> dict:
    """``diffseg evaluate`` of an instance model: :func:`evaluate_instances`'s figures on the dataset's
    ``instances/`` (``object_metrics`` None: the GlaS object metrics when the dataset's folder name holds
    "glas"). A model of several object classes is also scored per class against the dataset's ``masks/``
    class maps (:func:`evaluate_instances`)."""
    from .predict import load_model, object_class_names, predict_image, resolve_model

    bundle, config = load_model(model, device)
    names = object_class_names(config, bundle.spec.num_classes)
    ds = DatasetFolder(dataset)
    ids = ds.ids if split == "all" else ds.ids_in_split(split)
    ids = [i for i in ids if ds.has_instances(i)]
    if not ids:
        raise ConfigError(
            f"{dataset} has no images with instances/ masks in split {split!r}; try --split all"
        )
    glas = _is_glas(dataset) if object_metrics is None else object_metrics
    params = Watershed.from_config(config)  # the model's own (chosen on its validation images) or defaults
    rows: list[dict[str, Any]] = []
    objects: list[dict[str, Any]] = []
    if ds.holds_stacks():  # z-stacks: objects from each stack's planes at once, scored in 3D
        for i in ids:
            stack = ds.load_stack(i)
            probs = np.stack([predict_image(bundle, config, plane) for plane in stack])
            truth = ds.load_instance_stack(i, (stack.shape[0], *stack.shape[2:]))
            classes = dataset_object_classes(ds, i, truth, len(names)) if len(names) > 1 else None
            pixel, obj = _instance_stack_row(probs, truth, ds.voxel_steps(i), classes, params)
            rows.append({"id": i, **pixel})
            objects.append(obj)
    else:
        for i in ids:
            truth = ds.load_instances(i)
            classes = dataset_object_classes(ds, i, truth, len(names)) if len(names) > 1 else None
            probs = predict_image(bundle, config, ds.load_image(i))
            pixel, obj = _instance_row(probs, truth, glas, classes, params)
            rows.append({"id": i, **pixel})
            objects.append(obj)
    return {
        "model": str(resolve_model(model)),
        "dataset": str(dataset),
        "split": split,
        "task": "instances",
        "watershed": params.to_config(),
        **({"classes": ["background", *names]} if len(names) > 1 else {}),
        **_instance_summary(rows, objects, names if len(names) > 1 else None),
    }


def tune_on_validation(
    bundle: ModelBundle, images: list[torch.Tensor], truths: list[np.ndarray], preset: Preset
) -> Tuning:
    """The deployed networks' probabilities on the validation ``images`` (normalised ``(C, H, W)``), then the
    watershed parameters that give them the best mean AP@0.5 against ``truths`` (their object ids)."""
    probs = [
        deployed_probs(bundle, x[None], roi=preset.roi_size, sw_batch=preset.sw_batch_size, index=j)[0]
        .float()
        .cpu()
        .numpy()
        for j, x in enumerate(images)
    ]
    return tune_watershed(probs, truths)


def model_task(model: str | Path) -> str:
    """The task a model folder (or a project's active model) was trained for: ``config.json``'s ``task``,
    ``binary`` when it names none (every model saved before instances existed)."""
    from .core.checkpoint import CONFIG_FILE
    from .predict import resolve_model

    try:
        header = json.loads((resolve_model(model) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return "binary"  # loading the model itself reports what is wrong with the folder
    config = header.get("config", {}) if isinstance(header, dict) else {}
    return str(config.get("task", "binary")) if isinstance(config, dict) else "binary"


def _is_glas(dataset: str | Path) -> bool:
    return "glas" in Path(dataset).resolve().name.lower()


def teacher_report(
    bundle: ModelBundle,
    images: list[torch.Tensor],
    masks: list[np.ndarray],
    preset: Preset,
    *,
    seed: int,
    rounds: int = 3,
    regions: list[np.ndarray | None] | None = None,
) -> dict:
    """Dice of the teacher's proposals after each chained round (R = 1..rounds) and with S = 1, and how
    well each image's mean uncertainty predicts its error (Spearman ρ over the images) with E samples and
    with one.

    The uncertainty and the error of an image come from the same proposal: the product's own (S, R of the
    preset), with E = ``preset.samples`` or E = 1 and nothing else changed. Inside ``regions`` where given
    (DRIVE's field of view), as the test split is scored."""
    from scipy.stats import spearmanr

    diff = bundle.diffusion()
    k = bundle.spec.num_classes
    out: dict[str, Any] = {"dice_per_round": [[] for _ in range(rounds)], "dice_s1": []}
    unc: dict[str, list[float]] = {"E": [], "E1": []}
    err: dict[str, list[float]] = {"E": [], "E1": []}
    cfg = SamplerConfig(steps=preset.ddim_steps, samples=preset.samples, rounds=rounds, tol=0.0)
    cfg1 = SamplerConfig(steps=1, samples=preset.samples, rounds=1)
    cfg_e = SamplerConfig(steps=preset.ddim_steps, samples=preset.samples, rounds=preset.rounds)
    cfg_e1 = SamplerConfig(steps=preset.ddim_steps, samples=1, rounds=preset.rounds)
    regs: list[np.ndarray | None] = list(regions) if regions is not None else [None] * len(images)
    kw: dict[str, Any] = {
        "multiple": bundle.spec.multiple,
        "roi": preset.roi_size,
        "sw_batch": preset.sw_batch_size,
    }
    for j, (x, y, reg) in enumerate(zip(images, masks, regs, strict=True)):
        runs = {
            name: propose(
                bundle.mask_net, diff, x[None], c, torch.Generator().manual_seed(seed * 7919 + j), **kw
            )
            for name, c in (("R", cfg), ("E", cfg_e), ("E1", cfg_e1), ("S1", cfg1))
        }
        for r, m in enumerate(runs["R"].round_masks):
            out["dice_per_round"][r].append(_region_dice(m[0], y, k, reg))
        for key in ("E", "E1"):
            unc[key].append(_region_mean(runs[key].uncertainty[0], reg))
            err[key].append(1.0 - _region_dice(runs[key].mask[0], y, k, reg))
        out["dice_s1"].append(_region_dice(runs["S1"].mask[0], y, k, reg))
    return {
        "n_images": len(images),
        "ddim_steps": preset.ddim_steps,
        "samples": preset.samples,
        "rounds": preset.rounds,
        "dice_per_round": [float(np.mean(v)) if v else float("nan") for v in out["dice_per_round"]],
        "dice_s1": float(np.mean(out["dice_s1"])) if out["dice_s1"] else float("nan"),
        "uncertainty_vs_error_spearman": {
            f"E={preset.samples}": _spearman(spearmanr, unc["E"], err["E"]),
            "E=1": _spearman(spearmanr, unc["E1"], err["E1"]),
        },
    }


def _region_dice(pred: torch.Tensor, truth: np.ndarray, k: int, region: np.ndarray | None) -> float:
    """Dice of a (H, W) label map, inside ``region`` where given (as :func:`evaluate_bundle` scores)."""
    p_ = pred.cpu().numpy()
    if region is not None:
        p_, truth = p_ * region, truth * region
    return float(segmentation_metrics(p_, truth, k)["dice"])


def _region_mean(u: torch.Tensor, region: np.ndarray | None) -> float:
    """Mean of a (H, W) map over ``region`` (the whole map without one)."""
    a = u.float().cpu().numpy()
    return float(a[region].mean() if region is not None and region.any() else a.mean())


def _spearman(fn: Any, a: list[float], b: list[float]) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(fn(a, b).statistic)


def otsu_labels(x: torch.Tensor, region: np.ndarray | None = None) -> np.ndarray:
    """Otsu's threshold of the channel-mean image → 0/1 (the trivial label-free segmentation); the
    threshold is taken over the pixels inside ``region`` where given (DRIVE's field of view)."""
    from skimage.filters import threshold_otsu

    grey = x.float().mean(0).cpu().numpy()
    inside = grey[region] if region is not None and region.any() else grey
    if float(inside.max()) <= float(inside.min()):
        return np.zeros(grey.shape, dtype=np.int64)
    return (grey > threshold_otsu(inside)).astype(np.int64)


def _perm_dice(pred: np.ndarray, truth: np.ndarray, k: int, region: np.ndarray | None) -> float:
    """Best-permutation Dice over the pixels inside ``region`` only (all of them without one): the
    pixels outside take no part in either relabelling."""
    if region is not None:
        pred, truth = pred[region][None], truth[region][None]
    return best_permutation_dice(pred, truth, k)


@torch.no_grad()
def label_free_report(
    bundle: ModelBundle,
    images: list[torch.Tensor],
    masks: list[np.ndarray],
    preset: Preset,
    regions: list[np.ndarray | None] | None = None,
) -> dict[str, Any]:
    """Stage A's label-free masks against the trivial ones, best class permutation, same images (and
    inside ``regions`` where given, e.g. DRIVE's field of view).

    ``teacher_dice``: the pretrained teacher's one-step masks; ``otsu_dice``: Otsu's threshold of the
    image; ``all_foreground_dice``: every pixel foreground. Stage A has learned something only if it
    beats both.
    """
    k = bundle.spec.num_classes
    regs: list[np.ndarray | None] = list(regions) if regions is not None else [None] * len(images)
    teacher = pretrain_report(bundle, images, masks, preset, per_image=True, regions=regs)
    otsu = [_perm_dice(otsu_labels(x, r), y, k, r) for x, y, r in zip(images, masks, regs, strict=True)]
    allfg = [_perm_dice(np.ones_like(y), y, k, r) for y, r in zip(masks, regs, strict=True)]

    def mean(v: list[float]) -> float:
        return float(np.mean(v)) if v else float("nan")

    return {
        "n_images": len(images),
        "teacher_dice": mean(teacher),
        "otsu_dice": mean(otsu),
        "all_foreground_dice": mean(allfg),
        "teacher_minus_best_trivial": mean(teacher) - max(mean(otsu), mean(allfg)),
    }


@torch.no_grad()
def pretrain_report(
    bundle: ModelBundle,
    images: list[torch.Tensor],
    masks: list[np.ndarray],
    preset: Preset,
    *,
    per_image: bool = False,
    regions: list[np.ndarray | None] | None = None,
) -> Any:
    """Best-class-permutation Dice of the pretrained (label-free) teacher's one-step masks (their mean,
    or the list when ``per_image``), inside ``regions`` where given."""
    diff = bundle.diffusion()
    cfg = SamplerConfig(steps=1, samples=1, rounds=1)
    scores = []
    regs = regions if regions is not None else [None] * len(images)
    for j, (x, y, reg) in enumerate(zip(images, masks, regs, strict=True)):
        prop = propose(
            bundle.mask_net,
            diff,
            x[None],
            cfg,
            torch.Generator().manual_seed(j),
            multiple=bundle.spec.multiple,
            roi=preset.roi_size,
            sw_batch=preset.sw_batch_size,
        )
        scores.append(_perm_dice(prop.mask[0].cpu().numpy(), y, diff.num_classes, reg))
    if per_image:
        return scores
    return float(np.mean(scores)) if scores else float("nan")


def run_experiment(
    dataset: str | Path,
    *,
    labeled_fraction: float,
    method: str,
    preset: str | Preset = "cpu",
    seed: int = 0,
    device: str = "auto",
    model_out: str | Path | None = None,
    report: Reporter | None = None,
    cancel: CancelToken | None = None,
    teacher_eval_every: int = 4,
    val_fraction: float = 0.2,
    overrides: dict[str, Any] | None = None,
    normalization: str = "dataset",
    task: str = "binary",
    object_metrics: bool | None = None,
    classes: str | list[str] | None = None,
    watershed: str = "tuned",
    teacher_test: bool = False,
) -> dict:
    """Train ``method`` on a seeded labeled subset of the train split, evaluate on ``test*``.

    Args:
        val_fraction: Share of the train images carved (seeded) into the validation split when the
            dataset has no ``val`` images; 0 trains without validation (last weights, no gate).
        overrides: Preset fields to change (ablations: ``{"pretrain_steps": 0}``...), checked by
            :meth:`~napari_diffseg.base.presets.Preset.parse_overrides`.
        normalization: ``dataset`` (default): statistics over the train split's images (labeled and
            unlabeled, never val or test), stored with the model; ``per_image``: each image by its own
            percentiles, the scheme of models saved before statistics existed (for comparisons).
        task: ``binary`` (masks/) or ``instances`` (instances/: trained on the 3-class target through the
            K-class path, post-processed to objects, and scored with ``ap_50``, ``ap_75``, ``f1_50``... beside
            the foreground's ``dice_mean``; the result and the saved config say ``"task": "instances"``).
        object_metrics: With ``instances``, also the GlaS object F1 / Dice / Hausdorff; None: when the
            dataset's folder name holds "glas".
        watershed: With ``instances``: ``tuned`` (default) chooses the post-processing's parameters on the
            validation images after training (:func:`~napari_diffseg.core.instance_tuning.tune_watershed`;
            the result's ``watershed`` says what and on how many objects, the saved model keeps them, and
            the test block adds ``ap_50_default_watershed``... of the fixed defaults beside); ``default``
            keeps the fixed defaults (the behaviour before models carried their own).
        classes: With ``instances`` (optional): the class names, background first; three or more
            (``"background,disc,rod"``) make objects of several classes: ``masks/<id>`` is then each image's
            class map beside ``instances/<id>.tif`` (each object takes its majority class, every object
            needs one), the networks learn one interior per object class, and the test block gains
            ``ap_50_per_class`` (object class name → AP@0.5 matching only objects of that class, counts
            pooled over the images), ``class_accuracy`` (share of the class-agnostic matches at IoU 0.5
            whose predicted class is right) and the object counts per class
            (:func:`~napari_diffseg.core.instance_metrics.summarize_classes`).
            With ``multiclass`` (required): the K class names, background first
            (``"background,gland,lumen"``, as ``diffseg init --classes``); the dataset's masks are read as
            class maps and every one is checked to hold values 0..K-1 before anything trains. The test
            block then has ``dice_per_class`` (class name → mean Dice over the test images where the class
            occurs) and ``dice_class_mean`` (their mean); ``dice_mean`` is each image's mean over the
            foreground classes it holds, averaged.
        teacher_test: With ``diffseg`` on a binary 2D task: also score the teacher's own segmentation on the
            test images (``test_teacher``: :func:`teacher_on_test`). Reporting only, after everything the
            run deploys is fixed: it answers whether deploying the teacher where it validates best would
            pay, and chooses nothing.
    """
    t0 = time.perf_counter()
    started = git_state()  # the code this run executes, whatever is committed while it runs
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    pr = get_preset(preset) if isinstance(preset, str) else preset
    pr = pr.parse_overrides(overrides)
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if teacher_test and (method != "diffseg" or task != "binary"):
        raise ConfigError(
            "--teacher-test scores a diffseg teacher's binary masks; run it with --method diffseg and "
            "--task binary, or leave it out"
        )
    instances = task == "instances"
    multiclass = task == "multiclass"
    class_names: list[str] = []
    if multiclass:
        from .base.task import make_task

        if not classes:
            raise ConfigError(
                "--task multiclass needs the class names, background first: --classes background,CLASS1,CLASS2 "
                "(the masks hold their indices 0..K-1)"
            )
        class_names = make_task("multiclass", classes).class_names
    object_names: list[str] = []  # instances of several classes: the object classes' names, class 1 first
    if instances and classes:
        from .base.task import make_task

        object_names = make_task("instances", classes).class_names[1:]
    classed = len(object_names) > 1
    dist_info = setup_from_env(device)  # under torchrun: one process per GPU (or CPU, gloo)
    dev = dist_info.device
    torch.manual_seed(seed)
    folder = DatasetFolder(dataset)
    ds: DatasetFolder | StackPlanes = folder
    all_train_ids, test_ids = folder.train_ids, folder.test_ids
    has_truth: Callable[[str], bool] = folder.has_instances if instances else folder.has_mask
    stacks = folder.holds_stacks()
    if stacks and multiclass:
        raise ConfigError(
            f"{dataset} holds z-stacks; --task multiclass does not read stacks yet: run the binary task "
            "(masks/<id>.tif, one label plane per image plane) or --task instances (instances/<id>.tif)"
        )

    # classed: each image's (each stack's) {object id: class}, read once
    object_classes: dict[str, dict[int, int]] = {}

    def load_truth(i: str) -> np.ndarray:  # the class map the networks learn
        if instances:  # a plane's objects take their stack's classes
            classes = object_classes.get(StackPlanes.split_id(i)[0] if stacks else i)
            return instances_to_target(ds.load_instances(i), classes=classes).astype(np.int64)
        return ds.load_mask(i, binary=not multiclass)

    if multiclass:  # every mask is a class map of the K classes named, checked before anything trains
        check_class_maps(folder, [*all_train_ids, *test_ids], class_names)

    if instances:
        lacking = [i for i in [*all_train_ids, *test_ids] if not ds.has_instances(i)]
        if lacking:
            raise ConfigError(
                f"--task instances reads instances/<id>.tif; {len(lacking)} image(s) have none "
                f"(e.g. {lacking[:3]})"
            )
        if classed:  # every object's class from masks/, checked before anything trains
            whole = StackPlanes(folder) if stacks else None  # a stack's (Z, H, W) ids and class map
            for i in [*all_train_ids, *test_ids]:
                ids = whole.instance_stack(i) if whole is not None else folder.load_instances(i)
                object_classes[i] = dataset_object_classes(folder, i, ids, len(object_names))
    if not test_ids:
        raise ConfigError(
            f"{dataset} has no test images (split.csv split starting with 'test'); add some to evaluate"
        )
    val_ids = folder.val_ids or choose_val(all_train_ids, val_fraction, seed)
    if val_fraction == 0:
        val_ids = []
    missing = [i for i in val_ids if not has_truth(i)]
    if missing:
        raise ConfigError(f"validation images need masks; {missing[:3]} have none")
    train_ids = [i for i in all_train_ids if i not in set(val_ids)]
    labeled_ids = choose_labeled(train_ids, labeled_fraction, seed)
    unlabeled_ids = [i for i in train_ids if i not in set(labeled_ids)]
    if method != "supervised" and not unlabeled_ids:  # refused before any image is read or trained
        raise ConfigError(
            f"{method} learns from unlabeled images, and at --labeled-fraction {labeled_fraction:g} every "
            f"training image is labeled; use --method supervised, or a smaller fraction"
        )
    stack_ids = {"labeled": labeled_ids, "val": val_ids, "test": test_ids}
    if stacks:  # z-stacks: stacks are chosen (labeled, val), the 2D networks train on their planes
        planes = StackPlanes(folder)
        ds, has_truth = planes, (planes.has_instances if instances else planes.has_mask)
        all_train_ids, train_ids = planes.plane_ids(all_train_ids), planes.plane_ids(train_ids)
        labeled_ids, unlabeled_ids = planes.plane_ids(labeled_ids), planes.plane_ids(unlabeled_ids)
        val_ids, test_ids = planes.plane_ids(val_ids), planes.plane_ids(test_ids)
    channels = dataset_channels(ds, all_train_ids)
    if watershed not in ("tuned", "default"):
        raise ConfigError(f"watershed must be 'tuned' or 'default', got {watershed!r}")
    if normalization not in ("dataset", "per_image"):
        raise ConfigError(f"normalization must be 'dataset' or 'per_image', got {normalization!r}")
    norm = (
        dataset_statistics((ds.load_image(i) for i in train_ids), channels)
        if normalization == "dataset"
        else None
    )
    labeled_images = load_images(ds, labeled_ids, channels, norm)
    labeled_masks = [torch.from_numpy(load_truth(i)) for i in labeled_ids]
    unlabeled_images = load_images(ds, unlabeled_ids, channels, norm) if method != "supervised" else []

    def region(i: str) -> torch.Tensor | None:
        r = ds.load_region(i)
        return None if r is None else torch.from_numpy(r)

    val = ValSet(
        load_images(ds, val_ids, channels, norm),
        [torch.from_numpy(load_truth(i)) for i in val_ids],
        [region(i) for i in val_ids],
    )
    data = TrainData(labeled_images, labeled_masks, unlabeled_images=unlabeled_images, val=val)
    k = (
        INSTANCE_CLASSES + max(len(object_names), 1) - 1
        if instances
        else (len(class_names) if multiclass else 2)
    )
    spec = ModelSpec(method, channels, k, pr.student_channels, pr.teacher_channels, pr.emb_dim)
    bundle = ModelBundle(spec, seed=seed, normalization=norm).to(dev)
    extra: dict = {}

    def pretrain_check() -> None:
        """Label-free check of Stage A on train images with ground truth (never the test split); without
        Stage A (the default, ``cold_start_pretrain`` off) it scores the untrained teacher, and says so."""
        gt_ids = [i for i in train_ids if has_truth(i)][::teacher_eval_every]
        if gt_ids:
            lf = label_free_report(
                bundle,
                load_images(ds, gt_ids, channels, norm),
                [load_truth(i) for i in gt_ids],
                pr,
                regions=[ds.load_region(i) for i in gt_ids],
            )
            extra["label_free"] = {**lf, "stage_a": bool(pr.cold_start_pretrain and pr.pretrain_steps > 0)}
            extra["pretrain_best_perm_dice"] = lf["teacher_dice"]  # the name older results used

    events = run_stages(
        bundle,
        data,
        pr,
        generator=torch.Generator().manual_seed(seed),  # one generator through every stage
        seed=seed,
        device=dev,
        cancel=cancel,
        distributed=dist_info.enabled,
        after_pretrain=pretrain_check,
        instances=instances,
    )
    if not dist_info.is_main:  # co-training runs on every rank; rank 0 alone reports it
        events = (ev for ev in events if ev.phase not in ("cotrain", "pseudo-labels"))
    validation: list[dict[str, Any]] = []
    phase_seconds: dict[str, float] = {}

    def record(ev: Event) -> None:  # every validation check and each phase's time, for the result
        if ev.phase == "pseudo-labels":  # one ticker per refresh: add up the refreshes' last events
            if ev.kind == "progress" and ev.step == ev.total:
                key = "pseudo-labels" + (" (validation)" if "validation" in ev.message else "")
                phase_seconds[key] = phase_seconds.get(key, 0.0) + ev.elapsed
        elif ev.kind in ("done", "progress"):  # cotrain's own time includes its refreshes
            phase_seconds[ev.phase] = max(phase_seconds.get(ev.phase, 0.0), ev.elapsed)
        # each check once: a log event that repeats a check's figures is recorded by its message below
        if ev.kind != "log" and ev.losses and ("val_dice" in ev.losses or "teacher_val_dice" in ev.losses):
            validation.append({"phase": ev.phase, "step": ev.step, **ev.losses})
        if ev.kind == "log" and ev.message.startswith(
            ("kept the weights", "kept the teacher", "deploys the")
        ):
            validation.append({"phase": ev.phase, "message": ev.message, **ev.losses})
        if report is not None:
            report(ev)

    consume(events, record)
    train_seconds = time.perf_counter() - t0
    if dist_info.enabled:
        cleanup()
        if not dist_info.is_main:
            return {"rank": dist_info.rank, "note": "non-zero ranks do not evaluate"}
    params: Watershed | None = None  # an instance model's post-processing, chosen on validation images
    if instances and watershed == "tuned" and val_ids:
        tuning = tune_on_validation(bundle, val.images, [ds.load_instances(i) for i in val_ids], pr)
        params = tuning.params
        extra["watershed"] = tuning.to_dict()
    # ---- final evaluation: the first time test images are read ----
    test_images = load_images(ds, test_ids, channels, norm)
    test_masks = [load_truth(i) for i in test_ids]
    if instances:  # objects are scored on the whole image (a field of view would cut them)
        test_regions: list[np.ndarray | None] = [None] * len(test_ids)
        glas = _is_glas(dataset) if object_metrics is None else object_metrics
        if stacks:  # objects of a stack are made from all its planes at once and scored in 3D
            assert isinstance(ds, StackPlanes)
            test = evaluate_instance_stacks(
                bundle,
                test_images,
                test_ids,
                ds,
                pr,
                true_classes=object_classes if classed else None,
                class_names=object_names if classed else None,
                params=params,
            )
        else:
            test_instances = [ds.load_instances(i) for i in test_ids]
            test = evaluate_instances(
                bundle,
                test_images,
                test_instances,
                test_ids,
                pr,
                object_metrics=glas,
                true_classes=[object_classes[i] for i in test_ids] if classed else None,
                class_names=object_names if classed else None,
                params=params,
            )
    else:
        test_regions = [ds.load_region(i) for i in test_ids]
        plane_preds: list[np.ndarray] = []
        test = evaluate_bundle(bundle, test_images, test_masks, test_ids, pr, test_regions, plane_preds)
        if stacks:  # scored per stack: its planes' predictions as one (Z, H, W) volume
            steps = {sid: folder.voxel_steps(sid) for sid in stack_ids["test"]}
            test = {**per_stack_scores(plane_preds, test_masks, test_ids, bundle, steps), "per_plane": test}
        if multiclass:
            test = {**test, **per_class_scores(test, plane_preds, test_masks, test_regions, class_names)}
    prov = provenance(pr, dev, dist_info.world, started)
    result = {
        "method": method,
        "labeled_fraction": labeled_fraction,
        "seed": seed,
        "preset": pr.name,
        "overrides": dict(overrides or {}),
        "normalization": norm.to_dict() if norm is not None else "per_image",
        "n_labeled": len(labeled_ids),
        "n_unlabeled": len(unlabeled_ids),
        "n_val": len(val_ids),
        "labeled_ids": stack_ids["labeled"],
        "val_ids": stack_ids["val"],
        "scored_in_fov": any(r is not None for r in test_regions),
        "validation": validation,
        "phase_seconds": phase_seconds,
        "dataset": str(Path(dataset).resolve().name),
        "test": test,
        # what `test` scored: the students, or the teacher where deploy_best chose it on validation images
        "deployed": bundle.deployed_name,
        "train_seconds": train_seconds,
        "device": str(dev),
        "world_size": dist_info.world,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "provenance": prov,
    }
    if instances or multiclass:  # binary results stay exactly as they were
        result["task"] = task
    if multiclass:
        result["classes"] = class_names
    if classed:
        result["classes"] = ["background", *object_names]
    if stacks:  # counts above are of stacks; the networks saw their planes
        result["n_labeled"], result["n_val"] = len(stack_ids["labeled"]), len(stack_ids["val"])
        result["n_unlabeled"] = len({StackPlanes.split_id(i)[0] for i in unlabeled_ids})
        result["z_stacks"] = {
            "labeled_planes": len(labeled_ids),
            "unlabeled_planes": len(unlabeled_ids),
            "val_planes": len(val_ids),
            "test_planes": len(test_ids),
            "note": (
                "trained on 2D planes; test scored per stack over its voxels (HD95 in XY pixels, the planes "
                "z_step pixels apart as the files' metadata gives; 1 where a file gives none)"
            ),
        }
    if len(bundle.deploy) > 1:  # one student against the pair (is the ensemble what helps?)
        one = bundle.nets[bundle.deploy[0]]
        probs = [
            predict_probs([one], x[None], multiple=bundle.spec.multiple, roi=pr.roi_size).argmax(1)[0]
            for x in test_images
        ]
        scores = []
        for pred, y, reg in zip(probs, test_masks, test_regions, strict=True):
            p_, y_ = pred.cpu().numpy(), y
            if reg is not None:
                p_, y_ = p_ * reg, y_ * reg
            if instances:  # the foreground's Dice, as the pair's dice_mean
                p_, y_ = (p_ > 0).astype(np.int64), (y_ > 0).astype(np.int64)
            scores.append(segmentation_metrics(p_, y_, 2 if instances else bundle.spec.num_classes)["dice"])
        result["test_one_student"] = {"network": bundle.deploy[0], "dice_mean": float(np.mean(scores))}
    if method == "diffseg":
        if len(val):  # rounds, S and uncertainty are judged on validation images, never on test images
            extra["teacher"] = teacher_report(
                bundle,
                val.images,
                [m.numpy() for m in val.masks],
                pr,
                seed=seed,
                regions=[None if r is None else r.numpy().astype(bool) for r in val.regions],
            )
            extra["teacher"]["note"] = f"the {len(val)} validation images"
        else:
            sub = slice(None, None, teacher_eval_every)
            extra["teacher"] = teacher_report(
                bundle, test_images[sub], test_masks[sub], pr, seed=seed, regions=test_regions[sub]
            )
            extra["teacher"]["note"] = (
                f"every {teacher_eval_every}th test image (no validation split); reporting only"
            )
    if teacher_test and not stacks:  # last: nothing the run deploys or reports above depends on it
        extra["test_teacher"] = teacher_on_test(
            bundle, val if len(val) else None, test_images, test_masks, test_ids, test_regions, pr
        )
    result.update(extra)
    if model_out is not None:
        extra_config: dict[str, Any] = {"preset": pr.to_dict(), "labeled_ids": stack_ids["labeled"]}
        if instances:
            extra_config["task"] = task
            if params is not None:
                extra_config["watershed"] = params.to_config()
        if classed:
            from .base.task import make_task

            extra_config.update(make_task("instances", classes).model_config())
        if multiclass:
            from .base.task import make_task

            extra_config.update(make_task("multiclass", classes).model_config())
        save_bundle(bundle, model_out, extra=extra_config, metrics=test)
        result["model"] = str(model_out)
    result["seconds"] = time.perf_counter() - t0
    prov["wall_seconds"] = result["seconds"]  # the whole run: training and evaluation
    prov["train_seconds"] = train_seconds
    return result


def check_class_maps(folder: DatasetFolder, ids: Iterable[str], class_names: list[str]) -> None:
    """Refuse a multiclass dataset whose masks (read as class maps, not binarised) hold a value outside
    ``0..K-1`` for the K classes named, naming the first such mask, its values and what to do.

    Raises:
        ConfigError: A mask with a value the classes do not cover (a 0/255 mask, object ids...).
    """
    k = len(class_names)
    for i in ids:
        if not folder.has_mask(i):
            continue
        values = np.unique(folder.load_mask(i, binary=False))
        bad = values[(values < 0) | (values >= k)]
        if bad.size:
            shown = ", ".join(str(int(v)) for v in values[:8]) + (" …" if values.size > 8 else "")
            raise ConfigError(
                f"mask of {i!r} in {folder.root} holds the value {int(bad.max())} (its values: {shown}) but "
                f"--classes names {k} classes ({', '.join(class_names)}: values 0..{k - 1}); a multiclass "
                "dataset's masks hold class indices. Name every class in --classes (background first), or "
                "map the mask values to class indices"
            )


def per_class_scores(
    test: Mapping[str, Any],
    preds: list[np.ndarray],
    masks: list[np.ndarray],
    regions: list[np.ndarray | None],
    class_names: list[str],
) -> dict[str, Any]:
    """A multiclass run's per-class Dice on the test images: ``dice_per_class`` (class name → mean over the
    images where the class occurs in the prediction or the truth; NaN where it occurs in none),
    ``dice_class_mean`` (the mean of the finite ones) and each ``per_image`` row's ``dice_per_class``."""
    k = len(class_names)
    rows = []
    for pred, y, region in zip(preds, masks, regions, strict=True):
        truth = y if region is None else y * region  # the prediction is already cut to the region
        rows.append(dice_per_class(pred, truth, k))
    means = mean_per_class(rows)
    finite = [d for d in means if math.isfinite(d)]
    per_image = [
        {**row, "dice_per_class": dict(zip(class_names[1:], r, strict=True))}
        for row, r in zip(test["per_image"], rows, strict=True)
    ]
    return {
        "dice_per_class": dict(zip(class_names[1:], means, strict=True)),
        "dice_class_mean": float(np.mean(finite)) if finite else math.nan,
        "per_image": per_image,
    }


def write_json(path: str | Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON, atomically (the folder is created if needed)."""
    atomic_write_bytes(path, json.dumps(obj, indent=2, allow_nan=True).encode())
