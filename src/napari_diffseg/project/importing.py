"""What to import: dataset folders, loose image files with an optional masks folder.

Collecting only looks at file names (cheap); :func:`load_images` decodes and validates one item, which may
hold several images: every series of a multi-series file (``stem-s0``, ``stem-s1``...) and every time point
of a time-lapse (``stem-t000``, ``stem-t001``...). A z-stack is one image, stored ``(Z, C, H, W)`` (Z is never
resampled), and its mask, if any, is ``(Z, H, W)``. The
:class:`~napari_diffseg.project.store.Project` import methods first load every item (so a corrupt file
anywhere stops the import before anything is written), then store them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from napari_diffseg.base.errors import DataError
from napari_diffseg.base.formats import IMAGE_EXTENSIONS, MASK_EXTENSIONS
from napari_diffseg.data.dataset import DEFAULT_SPLIT, DatasetFolder, is_valid_split
from napari_diffseg.data.imagefile import (
    ImageRead,
    check_axes,
    file_stem,
    read_image_file,
    split_frames,
    to_chw,
    to_zchw,
)
from napari_diffseg.data.io import DEFAULT_MAX_PIXELS, read_mask, read_mask_stack
from napari_diffseg.project._util import _check_pixels, check_name

__all__ = [
    "ImportItem",
    "LoadedImage",
    "collect_dataset",
    "collect_paths",
    "load_images",
    "load_item",
    "prepare",
]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class ImportItem:
    """One image file to import, with its optional mask file, its name and its split."""

    image: Path
    mask: Path | None
    name: str
    split: str = DEFAULT_SPLIT
    axes: str | None = None
    """The axes the user gave (``--axes``), overriding what the file says; None: read them."""
    classes: Path | None = None
    """A class map beside an instance mask (objects of several classes: a dataset folder's ``masks/``
    file beside its ``instances/`` one); each object takes the majority class under it."""


@dataclass(frozen=True)
class LoadedImage:
    """One image ready to store: ``(C, H, W)`` pixels (a z-stack: ``(Z, C, H, W)``), its axes and shape as
    read, and what was assumed."""

    name: str
    chw: np.ndarray
    axes: str
    shape: tuple[int, ...]
    channel_names: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    mask: np.ndarray | None = None
    classes: np.ndarray | None = None

    @property
    def mask_shape(self) -> tuple[int, ...]:
        """The shape a mask of this image has: ``(H, W)``, or ``(Z, H, W)`` for a z-stack."""
        return (self.chw.shape[0], *self.chw.shape[2:]) if self.chw.ndim == 4 else tuple(self.chw.shape[1:])


def _check_split(split: str) -> str:
    if not is_valid_split(split):
        raise DataError(f"unknown split {split!r}: use 'train', 'val' or a name starting with 'test'.")
    return split


def collect_dataset(folder: PathLike, *, instances: bool = False, classed: bool = False) -> list[ImportItem]:
    """Items for every image of a dataset folder (``images/``, optional ``masks/`` and ``split.csv``).

    With ``instances`` (an instance project) an image's mask is its ``instances/<id>.tif`` (object ids)
    where the folder has one, else its ``masks/`` file. With ``classed`` too (objects of several classes)
    the ``masks/`` file beside an ``instances/`` one is the class map the objects take their class from.

    Raises:
        DataError: The folder is not a valid dataset folder, or an id is not a valid image name.
    """
    ds = DatasetFolder(folder)
    items = []
    for i in ds.ids:
        inst = ds.instance_path(i) if instances else None
        items.append(
            ImportItem(
                ds.image_path(i),
                inst or ds.mask_path(i),
                check_name(i, f"image id in {ds.root}"),
                ds.split_of(i),
                classes=ds.mask_path(i) if classed and inst is not None else None,
            )
        )
    return items


def _scan_masks(masks_dir: Path) -> dict[str, Path]:
    if not masks_dir.is_dir():
        raise DataError(f"masks folder {masks_dir} does not exist or is not a folder.")
    found: dict[str, Path] = {}
    for entry in sorted(masks_dir.iterdir()):
        if entry.name.startswith(".") or not entry.is_file() or entry.suffix.lower() not in MASK_EXTENSIONS:
            continue
        if entry.stem in found:
            raise DataError(
                f"masks folder {masks_dir}: {found[entry.stem].name} and {entry.name} are both masks for "
                f"{entry.stem!r}; keep one."
            )
        found[entry.stem] = entry
    return found


def _image_file(path: Path, split: str) -> ImportItem:
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise DataError(
            f"cannot import {path}: unsupported extension {path.suffix or '(none)'!r}; images must be one of "
            f"{', '.join(IMAGE_EXTENSIONS)}."
        )
    return ImportItem(path, None, check_name(file_stem(path), f"image name (file stem of {path})"), split)


def collect_paths(
    paths: Iterable[PathLike],
    masks_dir: PathLike | None = None,
    *,
    split: str = DEFAULT_SPLIT,
    axes: str | None = None,
    instances: bool = False,
    classed: bool = False,
) -> list[ImportItem]:
    """Items for image files, plain folders of images and dataset folders.

    A folder holding ``images/`` is a dataset folder (its masks and ``split.csv`` are used); any other
    folder contributes its image files (not recursive, hidden files skipped). Masks for loose files and
    plain folders come from ``masks_dir``, matched by file stem; images without a mask there get none.

    ``axes`` (``--axes``) overrides the axes of every image file collected; ``instances`` (an instance
    project) takes a dataset folder's ``instances/`` masks, with ``classed`` its ``masks/`` as their class
    map (:func:`collect_dataset`).

    Raises:
        DataError: A missing path, an unsupported extension, a folder without images, a bad dataset folder,
            ``masks_dir`` together with a dataset folder, a bad ``split`` or ``axes``.
    """
    _check_split(split)
    letters = None if axes is None else check_axes(axes)
    masks = _scan_masks(Path(masks_dir)) if masks_dir is not None else {}
    items: list[ImportItem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            if (path / "images").is_dir():
                if masks_dir is not None:
                    raise DataError(
                        f"{path} is a dataset folder, which brings its own masks/: drop --masks, or import "
                        "its images/ folder with --masks."
                    )
                items.extend(collect_dataset(path, instances=instances, classed=classed))
                continue
            files = [
                p
                for p in sorted(path.iterdir())
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
            ]
            if not files:
                raise DataError(
                    f"folder {path} holds no image files ({', '.join(IMAGE_EXTENSIONS)}) and no images/ "
                    "folder."
                )
            found = [_image_file(p, split) for p in files]
        elif path.is_file():
            found = [_image_file(path, split)]
        else:
            raise DataError(f"cannot import {path}: no such file or folder.")
        items.extend(ImportItem(i.image, masks.get(i.name), i.name, i.split) for i in found)
    if not items:
        raise DataError("nothing to import: pass image files, folders of images or dataset folders.")
    if letters is not None:
        items = [replace(i, axes=letters) for i in items]
    return items


def prepare(
    reads: Iterable[ImageRead], what: str, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[LoadedImage]:
    """Images ready to store from reads: time-lapses split into frames, each as checked ``(C, H, W)``, a
    z-stack as one checked ``(Z, C, H, W)`` image (its voxels within ``max_pixels``).

    Raises:
        DataError: Pixels the store refuses (the message says what to do).
    """
    out = []
    for read in reads:
        for frame in split_frames(read):
            pixels = to_zchw(frame) if "Z" in frame.axes else to_chw(frame)
            chw = _check_pixels(pixels, what, max_pixels)
            notes = frame.notes
            if "T" in read.axes:
                count = read.shape[read.axes.index("T")]
                notes = (
                    *notes,
                    f"{count} time points, each imported as its own image ({read.name}-t000, ...)",
                )
            out.append(LoadedImage(frame.name, chw, frame.axes, frame.shape, frame.channel_names, notes))
    return out


def load_images(
    item: ImportItem, *, binary_masks: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[LoadedImage]:
    """Decode and validate one item: every image its file holds, the mask (if any) with the only one.

    A file holding one image is named by the item (a dataset id or the file stem); several series are
    ``name-s0``, ``name-s1``... and time points ``name-t000``... A mask goes with a file of one image (a
    z-stack's mask is a ``(Z, H, W)`` TIFF).

    Raises:
        DataError: A bad image or mask file, a mask for a file of several images, or a mask whose (H, W) (a
            stack's (Z, H, W)) differs from the image's.
    """
    reads = read_image_file(item.image, axes=item.axes, max_pixels=max_pixels)
    if len(reads) == 1:
        reads = [replace(reads[0], name=item.name)]
    else:
        reads = [replace(r, name=f"{item.name}-s{r.series}") for r in reads]
    loaded = prepare(reads, f"Cannot use image {item.image}", max_pixels=max_pixels)
    if item.mask is None:
        return loaded
    if len(loaded) != 1:
        names = ", ".join(x.name for x in loaded[:3])
        raise DataError(
            f"mask {item.mask}: image {item.image} holds {len(loaded)} images ({names}...); a mask goes with a "
            "file of one image. Import the images without --masks."
        )
    image = loaded[0]
    mask = _read_item_mask(item.mask, item, image, binary_masks, max_pixels)
    classes = None if item.classes is None else _read_item_mask(item.classes, item, image, False, max_pixels)
    return [replace(image, mask=mask, classes=classes)]


def _read_item_mask(
    path: Path, item: ImportItem, image: LoadedImage, binary: bool, max_pixels: int
) -> np.ndarray:
    if image.chw.ndim == 4:
        return read_mask_stack(path, image.mask_shape, binary=binary, max_pixels=max_pixels)
    mask = read_mask(path, binary=binary)
    if mask.shape != image.chw.shape[1:]:
        raise DataError(
            f"mask {path} is {mask.shape[0]}x{mask.shape[1]} but image {item.image} is "
            f"{image.chw.shape[1]}x{image.chw.shape[2]} (H x W); a mask must have its image's height and width."
        )
    return mask


def load_item(item: ImportItem, *, binary_masks: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`load_images` for a file of exactly one image: its ``(C, H, W)`` pixels and mask (or None).

    Raises:
        DataError: What :func:`load_images` raises, or a file holding several images.
    """
    loaded = load_images(item, binary_masks=binary_masks)
    if len(loaded) != 1:
        raise DataError(f"image {item.image} holds {len(loaded)} images; import it with `diffseg import`.")
    return loaded[0].chw, loaded[0].mask
