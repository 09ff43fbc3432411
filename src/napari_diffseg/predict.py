"""Deploying a trained model: segment files (``diffseg predict``) and score a dataset (``diffseg evaluate``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base.errors import CheckpointError, ConfigError, DataError
from .base.formats import IMAGE_EXTENSIONS
from .base.presets import Preset
from .core.device import choose_device
from .core.inference import predict_probs
from .core.metrics import segmentation_metrics, summarize
from .core.models import ModelBundle, load_bundle
from .data.dataset import DatasetFolder
from .data.io import read_image, write_mask, write_tiff

__all__ = ["evaluate_folder", "load_model", "predict_files", "predict_image", "resolve_model"]


def resolve_model(path: str | Path) -> Path:
    """A model folder, or a project folder → the folder of its active model (docs/architecture.md §2.3: MODEL_OR_PROJECT)."""
    path = Path(path)
    if (path / "project.db").exists():
        from .project import Project

        with Project.open(path) as project:
            active = project.active_model()
            if active is None:
                raise ConfigError(
                    f"project {path} has no model yet; run `diffseg pretrain` and `diffseg cotrain` first"
                )
            return project.model_dir(active.id)
    return path


def _image_files(items: Sequence[str | Path]) -> list[Path]:
    """Files as given; a folder stands for the image files directly inside it (sorted)."""
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            if not found:
                raise DataError(f"folder {p} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        else:
            files.append(p)
    return files


def load_model(path: str | Path, device: str = "auto") -> tuple[ModelBundle, dict]:
    """Load a model folder (or a project's active model) for inference."""
    path = resolve_model(path)
    if not path.is_dir():
        raise CheckpointError(f"model folder {path} does not exist")
    bundle, config, _ = load_bundle(path, choose_device(device))
    return bundle, config


def _roi(config: dict) -> tuple[int, int]:
    """Sliding-window tile and batch of the preset the model was trained with (256 and 4 without one)."""
    preset = Preset.from_config(config)
    return (256, 4) if preset is None else (preset.roi_size, preset.sw_batch_size)


def predict_image(bundle: ModelBundle, config: dict, image: np.ndarray) -> np.ndarray:
    """Raw (C, H, W) image → (K, H, W) probabilities of the deployed networks."""
    x = bundle.preprocess(image)
    roi, swb = _roi(config)
    probs = predict_probs(bundle.deployed(), x[None], multiple=bundle.spec.multiple, roi=roi, sw_batch=swb)
    return probs[0].cpu().numpy()


def predict_files(
    model: str | Path,
    images: Sequence[str | Path],
    out: str | Path,
    *,
    device: str = "auto",
    probabilities: bool = False,
) -> list[Path]:
    if not images:
        raise DataError("no images given; pass one or more image files")
    files = _image_files(images)
    bundle, config = load_model(model, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        probs = predict_image(bundle, config, read_image(path))
        target = out / f"{Path(path).stem}.png"
        write_mask(target, probs.argmax(0).astype(np.uint8))
        written.append(target)
        if probabilities:
            write_tiff(out / f"{Path(path).stem}_prob.tif", probs[1:].astype(np.float32))
    return written


def evaluate_folder(
    model: str | Path, dataset: str | Path, *, split: str = "test", device: str = "auto"
) -> dict:
    bundle, config = load_model(model, device)
    ds = DatasetFolder(dataset)
    ids = ds.ids if split == "all" else ds.ids_in_split(split)
    ids = [i for i in ids if ds.has_mask(i)]
    if not ids:
        raise DataError(f"{dataset} has no images with masks in split {split!r}; try --split all")
    per_image: list[dict[str, Any]] = []
    in_fov = False
    for i in ids:
        probs = predict_image(bundle, config, ds.load_image(i))
        pred, truth = probs.argmax(0), ds.load_mask(i)
        region = ds.load_region(i)  # score inside the dataset's field of view where it has one
        if region is not None:
            pred, truth, in_fov = pred * region, truth * region, True
        per_image.append({"id": i, **segmentation_metrics(pred, truth, bundle.spec.num_classes)})
    return {
        "model": str(resolve_model(model)),
        "dataset": str(dataset),
        "split": split,
        "scored_in_fov": in_fov,
        **summarize(per_image),
        "per_image": per_image,
    }
