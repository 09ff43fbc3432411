"""Deploying a trained model: segment files (``diffseg predict``) and score a dataset (``diffseg evaluate``).

Image files are read whole. An OME-Zarr image (:mod:`napari_diffseg.data.ome_zarr`) is read lazily: its
normalisation statistics are streamed, then the students run over it one row of windows at a time
(:func:`napari_diffseg.core.tiled.predict_rows`, the same numbers as the in-memory path) and its labels are
written tile by tile as an OME-Zarr ``labels`` image, into a copy of the image (default) or into the
image itself (``into_source``); the whole image is never in memory.
"""

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

__all__ = [
    "IN_MEMORY_PIXELS",
    "evaluate_folder",
    "load_model",
    "predict_files",
    "predict_image",
    "predict_ome_zarr",
    "resolve_model",
]

IN_MEMORY_PIXELS = 2048 * 2048
"""OME-Zarr images up to this many pixels are predicted in memory; larger ones tile by tile (the same
numbers; in memory a 4000² image peaks at about 1.5 GiB, tile by tile a 20,000² one stays below 2 GiB)."""


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
    """Files as given; a folder stands for the image files and OME-Zarr images directly inside it (sorted);
    an OME-Zarr image (itself a folder) stands for itself."""
    from .data.ome_zarr import is_ome_zarr

    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir() and is_ome_zarr(p):
            files.append(p)  # an OME-Zarr image (a folder)
        elif p.is_dir():
            found = sorted(
                f
                for f in p.iterdir()
                if (f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
                or (f.suffix.lower() == ".zarr" and is_ome_zarr(f))
            )
            if not found:
                raise DataError(f"folder {p} holds no images ({', '.join(IMAGE_EXTENSIONS)}, or OME-Zarr)")
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
    into_source: bool = False,
    labels_name: str = "diffseg",
    overwrite: bool = False,
    progress: Any = None,
) -> list[Path]:
    """Segment image files and OME-Zarr images; returns what was written (mask files, OME-Zarr label
    images). OME-Zarr options: see :func:`predict_ome_zarr`."""
    if not images:
        raise DataError("no images given; pass one or more image files")
    files = _image_files(images)
    bundle, config = load_model(model, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    from .data.ome_zarr import is_ome_zarr

    for path in files:
        if is_ome_zarr(path):
            written.append(
                predict_ome_zarr(
                    bundle,
                    config,
                    path,
                    out,
                    into_source=into_source,
                    labels_name=labels_name,
                    probabilities=probabilities,
                    overwrite=overwrite,
                    progress=progress,
                )
            )
            continue
        probs = predict_image(bundle, config, read_image(path))
        target = out / f"{Path(path).stem}.png"
        write_mask(target, probs.argmax(0).astype(np.uint8))
        written.append(target)
        if probabilities:
            write_tiff(out / f"{Path(path).stem}_prob.tif", probs[1:].astype(np.float32))
    return written


class _ZarrRows:
    """An OME-Zarr's full-resolution level as a :class:`~napari_diffseg.core.tiled.RowSource`."""

    def __init__(self, image: Any) -> None:
        self.image = image
        self.height, self.width = image.height, image.width

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.image.read(y0, y1)


class _Bands:
    """Collects the predictor's row bands into whole chunk rows for the writers, keeping only what is
    written: the labels (argmax, small integers) and, when asked for, the foreground probabilities."""

    def __init__(self, rows: int, write: Any, dtype: Any, probabilities: bool) -> None:
        self.rows, self.write, self.dtype, self.probabilities = rows, write, dtype, probabilities
        self.y0 = 0
        self.labels: list[np.ndarray] = []
        self.probs: list[np.ndarray] = []

    def __call__(self, y0: int, probs: np.ndarray) -> None:
        self.labels.append(probs.argmax(0).astype(self.dtype))
        if self.probabilities:
            self.probs.append(probs[1:].astype(np.float32))
        if sum(a.shape[0] for a in self.labels) >= self.rows:
            self._emit(final=False)

    def _emit(self, final: bool) -> None:
        labels = np.concatenate(self.labels, axis=0)
        probs = np.concatenate(self.probs, axis=1) if self.probabilities else None
        n = labels.shape[0] if final else (labels.shape[0] // self.rows) * self.rows
        if n:
            self.write(self.y0, labels[:n], None if probs is None else probs[:, :n])
            self.y0 += n
        self.labels = [labels[n:]] if n < labels.shape[0] else []
        self.probs = [probs[:, n:]] if probs is not None and n < labels.shape[0] else []

    def flush(self) -> None:
        if self.labels:
            self._emit(final=True)


def predict_ome_zarr(
    bundle: ModelBundle,
    config: dict,
    path: str | Path,
    out: str | Path,
    *,
    into_source: bool = False,
    labels_name: str = "diffseg",
    probabilities: bool = False,
    overwrite: bool = False,
    progress: Any = None,
) -> Path:
    """Segment an OME-Zarr image (its full-resolution level) and write the labels as an OME-Zarr label image.

    Args:
        bundle, config: The model (see :func:`load_model`).
        path: The OME-Zarr image group.
        out: Output folder. By default the image is copied there (chunk by chunk, every level, same format)
            as ``<name>.ome.zarr`` and the labels go into the copy's ``labels/<labels_name>``.
        into_source: Write ``labels/<labels_name>`` into the input image itself instead (no copy).
        labels_name: The label image's name.
        probabilities: Also write the foreground probabilities (K - 1 channels, float32) as the OME-Zarr
            image ``<out>/<name>_probabilities.ome.zarr``.
        overwrite: Replace an existing copy, label image or probability image.
        progress: Called as ``progress(rows done, rows)``.

    Returns:
        The label image's folder.

    Raises:
        DataError: A bad OME-Zarr (see :func:`~napari_diffseg.data.ome_zarr.open_ome_zarr`), an existing
            output without ``overwrite``, a copy that would replace its source.
    """
    from .core.tiled import ChannelStats, image_stats, predict_rows
    from .data.ome_zarr import image_stem, open_ome_zarr
    from .data.ome_zarr_write import ImageWriter, LabelsWriter, copy_image

    src = open_ome_zarr(path)
    out = Path(out)
    name = image_stem(src.path)
    if into_source:
        target = src
    else:
        dest = out / f"{name}.ome.zarr"
        if dest.resolve() == src.path.resolve():
            raise DataError(
                f"the copy of {src.path} would replace it; choose another --out folder, or --into-source to "
                "write the labels into the image itself"
            )
        target = copy_image(src, dest, overwrite=overwrite)
    k = bundle.spec.num_classes
    labels = LabelsWriter(target, labels_name, k, overwrite=overwrite)
    prob_writer = None
    if probabilities:
        prob_writer = ImageWriter(
            out / f"{name}_probabilities.ome.zarr",
            k - 1,
            src.height,
            src.width,
            np.float32,
            version=target.version,
            name=f"{name} probabilities",
            scale=src.scales[0],
            translation=src.translation,
            units=src.units,
            overwrite=overwrite,
        )

    def write(y0: int, label_rows: np.ndarray, fg: np.ndarray | None) -> None:
        labels.write(y0, label_rows)
        if prob_writer is not None and fg is not None:
            prob_writer.write(y0, fg)

    roi, swb = _roi(config)
    m = roi // 4
    multiple = bundle.spec.multiple
    hp, wp = src.height + (-src.height) % multiple, src.width + (-src.width) % multiple
    small = src.height * src.width <= IN_MEMORY_PIXELS or hp + 2 * m < roi or wp + 2 * m < roi
    if small or (hp <= roi and wp <= roi):
        probs = predict_image(bundle, config, src.read())
        write(0, probs.argmax(0).astype(labels.dtype), probs[1:].astype(np.float32))
        if progress is not None:
            progress(src.height, src.height)
    else:
        chunk_rows = src.chunk_rows()
        if bundle.normalization is not None:  # the model's own statistics: nothing to stream
            stats = ChannelStats.of_model(bundle.normalization)
        else:
            stats = image_stats(
                lambda: (band for _, band in src.iter_rows(chunk_rows)),
                bundle.spec.in_channels,
                src.dtype,
                src.channels,
            )
        bands = _Bands(labels.chunk, write, labels.dtype, prob_writer is not None)
        predict_rows(
            bundle.deployed(),
            _ZarrRows(src),
            stats,
            bands,
            channels=bundle.spec.in_channels,
            multiple=multiple,
            roi=roi,
            sw_batch=swb,
            read_block=chunk_rows,
            progress=progress,
        )
        bands.flush()
    if prob_writer is not None:
        prob_writer.close()
    return labels.close()


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
