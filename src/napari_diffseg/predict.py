"""Deploying a trained model: segment files (``diffseg predict``) and score a dataset (``diffseg evaluate``).

Image files are read whole. An OME-Zarr image (:mod:`napari_diffseg.data.ome_zarr`) is read lazily: its
normalisation statistics are streamed, then the students run over it one row of windows at a time
(:func:`napari_diffseg.core.tiled.predict_rows`, the same numbers as the in-memory path) and its labels are
written tile by tile as an OME-Zarr ``labels`` image, into a copy of the image (default) or into the
image itself (``into_source``); the whole image is never in memory. An instance model's objects are made
there block by block (:mod:`napari_diffseg.core.instance_bands`).

Why one module of ~670 lines: every input kind (a file, a z-stack, a folder, an OME-Zarr image) goes
through the same model loading, label making (classes, or objects for an instance model) and output naming,
and each path is short; the block-by-block object making itself lives in ``core/instance_bands.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .base.errors import CheckpointError, ConfigError, DataError, DiffsegError
from .base.fileio import atomic_write_bytes
from .base.formats import IMAGE_EXTENSIONS
from .base.presets import Preset
from .core.device import choose_device
from .core.instance_bands import CONTEXT_ROWS
from .core.metrics import segmentation_metrics, summarize
from .core.models import ModelBundle, deployed_probs, load_bundle
from .data.dataset import DatasetFolder
from .data.io import read_image, write_tiff

__all__ = [
    "IN_MEMORY_PIXELS",
    "Outcome",
    "PredictReport",
    "evaluate_folder",
    "load_model",
    "object_class_names",
    "objects_csv",
    "objects_table",
    "output_names",
    "overlay_rgb",
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
    """Raw (C, H, W) image → (K, H, W) probabilities of what the model deploys: its students' mean or, for a
    model that deploys its teacher (``deploy_best``), the teacher's mean sample
    (:func:`~napari_diffseg.core.models.deployed_probs`)."""
    x = bundle.preprocess(image)
    roi, swb = _roi(config)
    return deployed_probs(bundle, x[None], roi=roi, sw_batch=swb)[0].cpu().numpy()


def _labels(bundle: ModelBundle, config: dict, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, H, W) probabilities → (label image, probs): class indices (uint8, uint16 beyond 255 classes) or,
    for an instance model, one id per object (core/instances.py, uint16/uint32)."""
    if config.get("task") == "instances":  # with the model's own watershed parameters, if it has them
        from .core.instances import Watershed, probs_to_instances

        return probs_to_instances(probs, Watershed.from_config(config)), probs
    return probs.argmax(0).astype(np.uint8 if bundle.spec.num_classes <= 256 else np.uint16), probs


def object_class_names(config: dict, num_classes: int) -> list[str]:
    """An instance model's object class names, class 1 first: its ``config.json`` classes but background
    (``["object"]`` / ``class_1``, ... where it names none); ``[]`` for a model of another task. More than one
    name: a model of several object classes (``num_classes`` = names + 2)."""
    if config.get("task") != "instances":
        return []
    n = max(1, int(num_classes) - 2)
    given = config.get("classes")
    names = [str(c.get("name")) for c in given if isinstance(c, dict)] if isinstance(given, list) else []
    if len(names) == n + 1 and all(names):
        return names[1:]
    return ["object"] if n == 1 else [f"class_{i}" for i in range(1, n + 1)]


def objects_csv(ids: np.ndarray, classes: dict[int, int], names: Sequence[str]) -> str:
    """One row per object of ``ids`` (a 2D image or a z-stack): ``id,class,class_name,area`` (area in pixels,
    voxels for a stack), ids in increasing order."""
    flat = np.asarray(ids).ravel().astype(np.int64)
    return objects_table(classes, names, np.bincount(flat) if flat.size else np.zeros(1, np.int64))


def objects_table(
    classes: dict[int, int], names: Sequence[str], areas: np.ndarray, centroids: np.ndarray | None = None
) -> str:
    """:func:`objects_csv` from each object's area (``areas[id]``, pixels) instead of the ids; with
    ``centroids`` (``(ids, 2)``: row, column) two more columns ``centroid_y,centroid_x`` (pixels, 0.1 px)."""
    lines = ["id,class,class_name,area" + (",centroid_y,centroid_x" if centroids is not None else "")]
    for obj in sorted(classes):
        c = int(classes[obj])
        name = names[c - 1] if 1 <= c <= len(names) else f"class_{c}"
        line = f"{int(obj)},{c},{name.replace(',', ' ')},{int(areas[obj]) if obj < areas.size else 0}"
        if centroids is not None:
            line += f",{centroids[obj, 0]:.1f},{centroids[obj, 1]:.1f}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _predict_stack(bundle: ModelBundle, config: dict, stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A raw (Z, C, H, W) z-stack → its (Z, H, W) label image and (Z, K, H, W) probabilities: the networks
    plane by plane; an instance model's objects made from the whole stack's probabilities at once, so an
    object keeps one id through the planes it crosses (``core.instances.stack_instances``)."""
    probs = np.stack([predict_image(bundle, config, plane) for plane in stack])
    if config.get("task") == "instances":
        from .core.instances import Watershed, stack_instances

        return stack_instances(probs, Watershed.from_config(config)), probs
    return np.stack([_labels(bundle, config, p)[0] for p in probs]), probs


@dataclass(frozen=True)
class Outcome:
    """What ``predict`` made of one input: its outputs, or why it could not be predicted."""

    source: Path
    labels: Path | None = None
    """The label TIFF (``OUT/NAME.EXT.tif``) or the OME-Zarr label image."""
    overlay: Path | None = None
    probabilities: Path | None = None
    error: str | None = None
    classes: Path | None = None
    """A model of several object classes: ``OUT/NAME.EXT.classes.tif``, each object's class per pixel."""
    objects: Path | None = None
    """A model of several object classes: ``OUT/NAME.EXT.objects.csv``, one row per object."""
    note: str | None = None
    """Something to know about an output that was written (an OME-Zarr's objects that may be cut)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, str | None]:
        out = {
            "source": str(self.source),
            "labels": None if self.labels is None else str(self.labels),
            "overlay": None if self.overlay is None else str(self.overlay),
            "probabilities": None if self.probabilities is None else str(self.probabilities),
            "error": self.error,
        }
        if self.classes is not None or self.objects is not None:  # other models' JSON stays as it was
            out["classes"] = None if self.classes is None else str(self.classes)
            out["objects"] = None if self.objects is None else str(self.objects)
        if self.note is not None:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class PredictReport:
    """Every input of a ``predict`` run, in order, with its outputs or the reason it failed."""

    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def done(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def written(self) -> list[Path]:
        """The label outputs (label TIFFs, OME-Zarr label images), in input order."""
        return [o.labels for o in self.outcomes if o.ok and o.labels is not None]


def output_names(files: Sequence[Path]) -> list[str]:
    """The output base name of each input file: its whole file name, extension included (``a.png`` →
    ``a.png``, ``a.tif`` → ``a.tif``), so inputs that share a stem never share an output. Two inputs with
    the same file name (from different folders) get ``-2``, ``-3``, ... before the extension of the later
    ones (``a-2.png``). The outputs are ``NAME.tif`` (labels), ``NAME.overlay.png`` and ``NAME.prob.tif``."""
    taken: set[str] = set()
    names = []
    for f in files:
        name = f.name
        if name.lower() in taken:
            stem, dot, ext = name.partition(".")
            n = 2
            while f"{stem}-{n}{dot}{ext}".lower() in taken:
                n += 1
            name = f"{stem}-{n}{dot}{ext}"
        taken.add(name.lower())
        names.append(name)
    return names


_CLASS_COLOURS = np.array(
    [[47, 112, 219], [230, 97, 1], [26, 152, 80], [215, 48, 39], [152, 78, 163], [255, 217, 47]], np.float32
)
"""Overlay colours of classes 1, 2, ... (blue first: the students' colour of the demo report)."""


def overlay_rgb(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A raw ``(C, H, W)`` image, contrast-stretched to 8 bit (3 channels as colour, else the channels' mean
    as grey), with each class (or object id) of ``labels`` ``(H, W)`` tinted in its colour and outlined →
    ``(H, W, 3)`` uint8: a mask a person can look at (a 0/1 label image looks black in every viewer)."""
    chw = np.asarray(image, np.float32)
    grey_or_rgb = chw if chw.shape[0] == 3 else chw.mean(axis=0, keepdims=True)
    lo, hi = np.percentile(grey_or_rgb, [0.5, 99.5])
    scaled = np.clip((grey_or_rgb - lo) / max(float(hi - lo), 1e-6) * 255, 0, 255)
    rgb = np.moveaxis(np.repeat(scaled, 3, axis=0) if scaled.shape[0] == 1 else scaled, 0, -1)
    lab = np.asarray(labels)
    fg = lab > 0
    if fg.any():  # vectorised: as cheap for 10,000 objects of an instance model as for one class
        colour = _CLASS_COLOURS[(lab[fg].astype(np.int64) - 1) % len(_CLASS_COLOURS)]
        rgb[fg] = 0.55 * rgb[fg] + 0.45 * colour
        same = (
            (np.roll(lab, 1, 0) == lab)
            & (np.roll(lab, -1, 0) == lab)
            & (np.roll(lab, 1, 1) == lab)
            & (np.roll(lab, -1, 1) == lab)
        )
        edge = fg & ~same  # each object's (or class region's) outline
        rgb[edge] = _CLASS_COLOURS[(lab[edge].astype(np.int64) - 1) % len(_CLASS_COLOURS)]
    return rgb.astype(np.uint8)


_READ_ERRORS = (DiffsegError, OSError, ValueError, MemoryError)
"""What a file that cannot be read or predicted raises; it is listed with its reason, the rest go on."""


def predict_files(
    model: str | Path,
    images: Sequence[str | Path],
    out: str | Path,
    *,
    device: str = "auto",
    probabilities: bool = False,
    overlays: bool = True,
    into_source: bool = False,
    labels_name: str = "diffseg",
    overwrite: bool = False,
    progress: Any = None,
    object_rows: int = CONTEXT_ROWS,
    watershed: Mapping[str, Any] | None = None,
) -> PredictReport:
    """Segment image files and OME-Zarr images, each on its own: a file that cannot be read or predicted is
    recorded with its reason (``PredictReport.failed``) and the others are still predicted.

    Outputs in ``out`` for an image file ``NAME.EXT`` (names: :func:`output_names`, never shared by two
    inputs): ``NAME.EXT.tif``, the label image (uint8, uint16 beyond 255 classes; 0 = background, k =
    class k; an instance model's: one id per object, uint16, uint32 beyond 65,535 objects); ``NAME.EXT.overlay.png`` with ``overlays``, the image with the labels tinted, for a person;
    ``NAME.EXT.prob.tif`` with ``probabilities``, the foreground probabilities (K − 1, H, W) float32. A
    model of several object classes adds ``NAME.EXT.classes.tif``, each object's class per pixel (uint8, 0 =
    background; the class of an object by :func:`~napari_diffseg.core.instances.classify_objects`), and
    ``NAME.EXT.objects.csv`` (:func:`objects_csv`: id, class, class name, area). An
    existing output is never replaced without ``overwrite`` (that input fails, naming the file). A z-stack
    ``(Z, [C,] Y, X)`` is predicted plane by plane and its label TIFF is ``(Z, Y, X)`` (probabilities
    ``(Z, K − 1, Y, X)``; no overlay PNG). OME-Zarr
    options: see :func:`predict_ome_zarr`. ``watershed`` (an instance model): some or all of the watershed's
    parameters in place of the model's own (``core.instances.Watershed``).

    Raises:
        DataError: No image given, a folder without images, ``watershed`` for a model of another task or
            with unknown parameters or values out of range.
        CheckpointError: The model cannot be loaded.
    """
    if not images:
        raise DataError("no images given; pass one or more image files")
    files = _image_files(images)
    bundle, config = load_model(model, device)
    if watershed:
        from .core.instances import Watershed

        if config.get("task") != "instances":
            raise DataError(
                f"--watershed applies to an instance model; {model} is a {config.get('task', 'binary')} model"
            )
        config = {**config, "watershed": Watershed.from_config(config).with_overrides(watershed).to_config()}
    names = object_class_names(config, bundle.spec.num_classes)
    classed = len(names) > 1
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from .data.ome_zarr import is_ome_zarr

    outcomes: list[Outcome] = []
    for path, name in zip(files, output_names(files), strict=True):
        try:
            if is_ome_zarr(path):
                outcome = predict_ome_zarr(
                    bundle,
                    config,
                    path,
                    out,
                    into_source=into_source,
                    labels_name=labels_name,
                    probabilities=probabilities,
                    overwrite=overwrite,
                    progress=progress,
                    object_rows=object_rows,
                )
                outcomes.append(outcome)
                continue
            labels_file = out / f"{name}.tif"
            overlay_file = out / f"{name}.overlay.png" if overlays else None
            prob_file = out / f"{name}.prob.tif" if probabilities else None
            classes_file = out / f"{name}.classes.tif" if classed else None
            objects_file = out / f"{name}.objects.csv" if classed else None
            outputs = (labels_file, overlay_file, prob_file, classes_file, objects_file)
            existing = [t for t in outputs if t is not None and t.exists()]
            if existing and not overwrite:
                raise DataError(
                    f"{existing[0]} already exists (an earlier run?); pass --overwrite to replace it, or "
                    "choose another --out folder"
                )
            image = read_image(path, stacks=True)
            if image.ndim == 4:  # a z-stack (Z, C, H, W): each plane by the 2D networks, Z kept as is
                labels_arr, probs = _predict_stack(bundle, config, image)
            else:
                labels_arr, probs = _labels(bundle, config, predict_image(bundle, config, image))
            write_tiff(labels_file, labels_arr)
            if classes_file is not None and objects_file is not None:
                from .core.instances import class_map, classify_objects

                per_object = classify_objects(labels_arr, probs)
                write_tiff(classes_file, class_map(labels_arr, per_object))
                atomic_write_bytes(objects_file, objects_csv(labels_arr, per_object, names).encode())
            if prob_file is not None:
                write_tiff(prob_file, probs[..., 1:, :, :].astype(np.float32))
            if overlay_file is not None:
                if labels_arr.ndim == 2:
                    import imageio.v3 as iio

                    png = iio.imwrite("<bytes>", overlay_rgb(image, labels_arr), extension=".png")
                    atomic_write_bytes(overlay_file, png)
                else:
                    overlay_file = None
            outcomes.append(
                Outcome(
                    path,
                    labels=labels_file,
                    overlay=overlay_file,
                    probabilities=prob_file,
                    classes=classes_file,
                    objects=objects_file,
                )
            )
        except _READ_ERRORS as exc:
            outcomes.append(Outcome(path, error=str(exc) or type(exc).__name__))
    return PredictReport(outcomes)


class _ZarrRows:
    """An OME-Zarr's full-resolution level as a :class:`~napari_diffseg.core.tiled.RowSource`."""

    def __init__(self, image: Any) -> None:
        self.image = image
        self.height, self.width = image.height, image.width

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.image.read(y0, y1)


class _Bands:
    """Collects the predictor's row bands into whole chunk rows for the writers, keeping only what is
    written: the labels (argmax, small integers; not with ``labels=False``, an instance model's, whose
    objects are made elsewhere) and, when asked for, the foreground probabilities."""

    def __init__(
        self, rows: int, write: Any, dtype: Any, probabilities: bool, *, labels: bool = True
    ) -> None:
        self.rows, self.write, self.dtype, self.probabilities = rows, write, dtype, probabilities
        self.with_labels = labels
        self.y0 = 0
        self.pending = 0
        self.labels: list[np.ndarray] = []
        self.probs: list[np.ndarray] = []

    def __call__(self, y0: int, probs: np.ndarray) -> None:
        if not (self.with_labels or self.probabilities):
            return
        if self.with_labels:
            self.labels.append(probs.argmax(0).astype(self.dtype))
        if self.probabilities:
            self.probs.append(probs[1:].astype(np.float32))
        self.pending += probs.shape[1]
        if self.pending >= self.rows:
            self._emit(final=False)

    def _emit(self, final: bool) -> None:
        labels = np.concatenate(self.labels, axis=0) if self.with_labels else None
        probs = np.concatenate(self.probs, axis=1) if self.probabilities else None
        n = self.pending if final else (self.pending // self.rows) * self.rows
        if n:
            self.write(
                self.y0, None if labels is None else labels[:n], None if probs is None else probs[:, :n]
            )
            self.y0 += n
        self.pending -= n
        self.labels = [labels[n:]] if labels is not None and self.pending else []
        self.probs = [probs[:, n:]] if probs is not None and self.pending else []

    def flush(self) -> None:
        if self.pending:
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
    object_rows: int = CONTEXT_ROWS,
) -> Outcome:
    """Segment an OME-Zarr image (its full-resolution level) and write the labels as an OME-Zarr label image.

    An instance model's objects (one uint32 id each) are made block by block of the label image's chunk rows,
    each post-processed with ``object_rows`` rows of context above and below
    (:mod:`napari_diffseg.core.instance_bands`: objects up to that tall are made whole across blocks, as
    the whole-image post-processing would make them), with ``<out>/<name>.objects.csv`` listing every object
    (:func:`objects_table` with centroids); a model of several object classes adds the label image
    ``<labels_name>-classes`` (each object's class per pixel).

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
        object_rows: An instance model: the rows of context (the tallest object made whole).

    Returns:
        What was written: ``labels`` the label image's folder, ``probabilities``, ``classes`` and ``objects``
        where written, and a ``note`` when objects may have been cut (taller than ``object_rows``).

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
    k = bundle.spec.num_classes
    instances = config.get("task") == "instances"
    names = object_class_names(config, k)
    classed = len(names) > 1
    classes_name = f"{labels_name}-classes"
    objects_file = out / f"{name}.objects.csv" if instances else None  # a slide's objects: always a table
    if objects_file is not None and objects_file.exists() and not overwrite:
        raise DataError(f"{objects_file} already exists (an earlier run?); pass --overwrite to replace it")
    if into_source:
        target = src
        if classed and (src.path / "labels" / classes_name).exists() and not overwrite:
            raise DataError(
                f"{src.path} already has a label image {classes_name!r}; pass --overwrite, or --labels-name "
                "another"
            )
    else:
        dest = out / f"{name}.ome.zarr"
        if dest.resolve() == src.path.resolve():
            raise DataError(
                f"the copy of {src.path} would replace it; choose another --out folder, or --into-source to "
                "write the labels into the image itself"
            )
        target = copy_image(src, dest, overwrite=overwrite)
    labels = LabelsWriter(target, labels_name, k, overwrite=overwrite, instances=instances)
    class_labels = (
        LabelsWriter(target, classes_name, len(names) + 1, overwrite=overwrite) if classed else None
    )
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

    def write(y0: int, label_rows: np.ndarray | None, fg: np.ndarray | None) -> None:
        if label_rows is not None:
            labels.write(y0, label_rows)
        if prob_writer is not None and fg is not None:
            prob_writer.write(y0, fg)

    roi, swb = _roi(config)
    m = roi // 4
    multiple = bundle.spec.multiple
    hp, wp = src.height + (-src.height) % multiple, src.width + (-src.width) % multiple
    small = src.height * src.width <= IN_MEMORY_PIXELS or hp + 2 * m < roi or wp + 2 * m < roi
    small = small or (hp <= roi and wp <= roi)
    areas = np.zeros(1, np.int64)
    sums = np.zeros((1, 2), np.float64)  # per object: the sums of its pixels' rows and columns
    objects: Any = None
    bands = _Bands(labels.chunk, write, labels.dtype, prob_writer is not None, labels=not instances)
    if instances:  # objects block by block, each with context rows around it (core/instance_bands.py)
        from .core.instance_bands import BandInstances
        from .core.instances import Watershed

        def write_objects(y0: int, ids: np.ndarray, cls: np.ndarray | None) -> None:
            nonlocal areas, sums
            labels.write(y0, ids)
            if class_labels is not None and cls is not None:
                class_labels.write(y0, cls)
            n = max(areas.size, int(ids.max(initial=0)) + 1)
            counts = np.bincount(ids.ravel(), minlength=n)
            counts[: areas.size] += areas
            new_sums = np.zeros((n, 2), np.float64)
            new_sums[: sums.shape[0]] += sums
            for r in range(0, ids.shape[0], 128):  # 128 rows at a time: coordinates of a wide slide are big
                part = ids[r : r + 128]
                rows, cols = np.indices(part.shape, dtype=np.float64)
                new_sums[:, 0] += np.bincount(part.ravel(), (rows + y0 + r).ravel(), n)
                new_sums[:, 1] += np.bincount(part.ravel(), cols.ravel(), n)
            areas, sums = counts, new_sums

        objects = BandInstances(
            src.height,
            src.width,
            Watershed.from_config(config),
            write_objects,
            block=src.height if small else labels.chunk,  # in memory: the whole image at once
            context=object_rows,
            classed=classed,
        )

    def sink(y0: int, probs: np.ndarray) -> None:
        if objects is not None:
            objects(y0, probs)
        bands(y0, probs)

    students_note = None
    if small:
        sink(0, predict_image(bundle, config, src.read()))
        if progress is not None:
            progress(src.height, src.height)
    else:
        if bundle.deploys_teacher:  # the teacher samples a whole image at once; rows take the students
            students_note = (
                "this model deploys its teacher (alone or averaged with its students), which samples a whole "
                "image at once; an image too large for memory is predicted row by row with its students, "
                "which validated below what the model deploys"
            )
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
        predict_rows(
            bundle.deployed(),
            _ZarrRows(src),
            stats,
            sink,
            channels=bundle.spec.in_channels,
            multiple=multiple,
            roi=roi,
            sw_batch=swb,
            read_block=chunk_rows,
            progress=progress,
        )
    bands.flush()
    note = None
    if objects is not None:
        objects.flush()
        if objects.cut:
            note = (
                f"{objects.cut} object(s) reached the edge of the {object_rows} rows of context each block of "
                f"{labels.chunk} rows is post-processed with, and may be cut in two: objects this tall need "
                f"--object-rows {2 * object_rows}"
            )
    if students_note is not None:
        note = students_note if note is None else f"{note}; {students_note}"
    prob_path = None if prob_writer is None else prob_writer.close()
    classes_path = None if class_labels is None else class_labels.close()
    if objects_file is not None and objects is not None:
        present = {i: c for i, c in objects.object_class.items() if i < areas.size and areas[i] > 0}
        centroids = sums / np.maximum(areas, 1)[:, None]
        atomic_write_bytes(objects_file, objects_table(present, names, areas, centroids).encode())
    return Outcome(
        Path(path),
        labels=labels.close(),
        probabilities=prob_path,
        classes=classes_path,
        objects=objects_file,
        note=note,
    )


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
        image = ds.load_stack(i)
        step: tuple[float, float, float] | None = None
        if image.shape[0] > 1:  # a z-stack: each plane by the 2D networks, scored over its voxels
            z, _c, h, w = image.shape
            pred = np.stack([predict_image(bundle, config, plane).argmax(0) for plane in image])
            truth = ds.load_mask_stack(i, (z, h, w))
            step = ds.voxel_steps(i)  # HD95 with the planes' real distance, where the file gives it
        else:
            pred, truth = predict_image(bundle, config, image[0]).argmax(0), ds.load_mask(i)
        region = ds.load_region(i)  # score inside the dataset's field of view where it has one
        if region is not None:
            pred, truth, in_fov = pred * region, truth * region, True
        row = segmentation_metrics(pred, truth, bundle.spec.num_classes, spacing=step)
        per_image.append({"id": i, **({"z_step": step[0]} if step else {}), **row})
    return {
        "model": str(resolve_model(model)),
        "dataset": str(dataset),
        "split": split,
        "scored_in_fov": in_fov,
        **summarize(per_image),
        "per_image": per_image,
    }
