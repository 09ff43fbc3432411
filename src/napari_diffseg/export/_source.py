"""What a bioimage.io export packages: the model, its config and metrics, what it was trained on (from the
project's job manifest), and the test image; plus the checks that refuse what cannot be reproduced."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..base.errors import ConfigError, DataError

__all__ = ["MAX_TEST_SIDE", "Source", "check_normalization", "class_names", "collect", "task_of"]

MAX_TEST_SIDE = 512
"""Test images larger than this are centre-cropped (keeps the package small and its test fast)."""


@dataclass
class Source:
    model_dir: Path
    model_id: str
    config: dict
    metrics: dict
    project: Path | None
    project_name: str | None
    training: dict[str, Any]
    val_split: dict[str, Any]
    test_image: np.ndarray
    test_image_name: str


def task_of(config: dict, num_classes: int) -> str:
    task = config.get("task") or ("binary" if num_classes == 2 else "multiclass")
    if task not in ("binary", "multiclass", "instances"):
        raise ConfigError(
            f"the model's task is {task!r}; binary, multi-class and instance models can be exported"
        )
    if task == "instances" and num_classes < 3:
        raise ConfigError(
            f"an instance model has at least 3 classes (background, interior, boundary); this one has {num_classes}"
        )
    return str(task)


def object_class_names(config: dict, k: int) -> list[str]:
    """An instance model's object class names, class 1 first (``k - 2`` of them; as ``diffseg predict``
    names them, :func:`napari_diffseg.predict.object_class_names`)."""
    from ..predict import object_class_names as names

    return names(config, k)


def check_normalization(config: dict) -> None:
    """The exported network normalises each image as ``diffseg predict`` does (the model's fixed statistics,
    ``dataset``, or per image); a model whose config asks for another normalisation must not be exported
    with it."""
    norm = config.get("normalization", config.get("normalisation"))
    if norm in (None, "per_image") or (
        isinstance(norm, dict) and norm.get("mode") in ("per_image", "dataset")
    ):
        return
    raise ConfigError(
        f"the model's config.json names the normalisation {norm!r}, which this export does not know how to "
        "reproduce; update napari_diffseg.export.bioimageio (and core/deployed.py) before exporting it"
    )


def class_names(config: dict, k: int) -> list[str]:
    names = config.get("class_names")
    if isinstance(names, list) and len(names) == k and all(isinstance(n, str) and n for n in names):
        return [str(n) for n in names]
    if config.get("task") == "instances" and k == 3:
        return ["background", "interior", "boundary"]
    if (
        config.get("task") == "instances" and k > 3
    ):  # one interior channel per object class (core/instances.py)
        from ..core.instances import interior_channel

        out = ["background", "", "boundary", *[""] * (k - 3)]
        for c, name in enumerate(object_class_names(config, k), start=1):
            out[interior_channel(c)] = f"interior of {name}"
        return out
    return ["background", "foreground"] if k == 2 else ["background", *(f"class_{i}" for i in range(1, k))]


def _crop(image: np.ndarray) -> np.ndarray:
    _, h, w = image.shape
    top, left = max(0, (h - MAX_TEST_SIDE) // 2), max(0, (w - MAX_TEST_SIDE) // 2)
    return image[:, top : top + MAX_TEST_SIDE, left : left + MAX_TEST_SIDE]


def _training_from_job(project: Any, model_id: str) -> dict[str, Any] | None:
    """The training images and annotations of a co-training model, from its job's data manifest."""
    m = re.fullmatch(r"round\d+-job(\d+)", model_id)
    if m is None:
        return None
    manifest = project.job_dir(int(m.group(1))) / "data.json"
    if not manifest.is_file():
        return None
    entries = json.loads(manifest.read_text())["images"]
    kinds: dict[str, int] = {}
    for image_id, version in entries:
        if version is None:
            continue
        ann = project.annotation(str(image_id), int(version))
        kind = getattr(ann, "kind", "annotation") if ann is not None else "annotation"
        kinds[kind] = kinds.get(kind, 0) + 1
    labeled = sum(kinds.values())
    return {
        "train_images": len(entries),
        "labeled": labeled,
        "unlabeled": len(entries) - labeled,
        "labels_by_kind": kinds,
        "from": f"jobs/{m.group(1)}/data.json",
    }


def collect(source: Path, model_id: str | None, test_image: Path | None, device: str) -> tuple[Source, Any]:
    from ..core.models import load_bundle
    from ..data.io import read_image
    from ..project import Project

    project_root: Path | None = None
    project_name = None
    training: dict[str, Any] = {}
    val_split: dict[str, Any] = {}
    image: np.ndarray | None = None
    image_name = ""
    if (source / "project.db").exists():
        project_root = source
        with Project.open(source) as proj:
            rec = proj.model(model_id) if model_id else proj.active_model()
            if rec is None:
                raise ConfigError(
                    f"project {source} has no model yet; run `diffseg pretrain` and `diffseg cotrain` first"
                )
            model_id = rec.id
            model_dir = proj.model_dir(rec.id)
            project_name = source.resolve().name
            training = _training_from_job(proj, rec.id) or {}
            records = [r for r in proj.images() if r.state != "excluded"]
            vals = [r for r in records if r.split == "val" and proj.annotation(r.id) is not None]
            val_split = {"images": len(vals), "split": "val"}
            splits: dict[str, int] = {}
            for r in records:
                splits[r.split] = splits.get(r.split, 0) + 1
            training["images_by_split"] = splits
            if test_image is None:
                pick = vals[0] if vals else next((r for r in records if r.split == "train"), None)
                pick = pick or (records[0] if records else None)
                if pick is None:
                    raise DataError(
                        f"project {source} has no images to take a test input from; pass --test-image"
                    )
                image, image_name = (
                    proj.load_planes(pick.id)[0],  # a z-stack: its first plane
                    f"{pick.name} (split {pick.split}, id {pick.id})",
                )
    else:
        if model_id is not None:
            raise ConfigError("--model picks a model of a project; give a project folder, or drop --model")
        model_dir = source
        model_id = source.resolve().name
        if not (model_dir / "config.json").is_file():
            raise ConfigError(f"{source} is neither a project nor a model folder (no config.json)")
        if test_image is None:
            raise DataError(
                f"{source} is a model folder without a project: pass --test-image FILE (an image like those "
                "the model was trained on) for the package's test input"
            )
    if test_image is not None:
        image, image_name = read_image(test_image), Path(test_image).name
    assert image is not None
    from ..core.device import choose_device

    bundle, config, metrics = load_bundle(model_dir, choose_device(device))
    if not training and isinstance(metrics, dict):
        training = {k: metrics[k] for k in ("labeled", "unlabeled") if k in metrics}
    if "labeled_ids" in config:
        training["labeled_ids"] = list(config["labeled_ids"])
    src = Source(
        model_dir=model_dir,
        model_id=str(model_id),
        config=config,
        metrics=dict(metrics or {}),
        project=project_root,
        project_name=project_name,
        training=training,
        val_split=val_split,
        test_image=_crop(np.asarray(image)),
        test_image_name=image_name,
    )
    return src, bundle
