"""What to import: dataset folders, loose image files with an optional masks folder.

Collecting only looks at file names (cheap); :func:`load_item` decodes and validates one item. The
:class:`~napari_diffseg.project.store.Project` import methods first load every item (so a corrupt file
anywhere stops the import before anything is written), then store them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_diffseg.base.errors import DataError
from napari_diffseg.base.formats import IMAGE_EXTENSIONS, MASK_EXTENSIONS
from napari_diffseg.data.dataset import DEFAULT_SPLIT, DatasetFolder, is_valid_split
from napari_diffseg.data.io import read_mask
from napari_diffseg.project._util import check_name, read_raw_image

__all__ = ["ImportItem", "collect_dataset", "collect_paths", "load_item"]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class ImportItem:
    """One image file to import, with its optional mask file, its name and its split."""

    image: Path
    mask: Path | None
    name: str
    split: str = DEFAULT_SPLIT


def _check_split(split: str) -> str:
    if not is_valid_split(split):
        raise DataError(f"unknown split {split!r}: use 'train', 'val' or a name starting with 'test'.")
    return split


def collect_dataset(folder: PathLike) -> list[ImportItem]:
    """Items for every image of a dataset folder (``images/``, optional ``masks/`` and ``split.csv``).

    Raises:
        DataError: The folder is not a valid dataset folder, or an id is not a valid image name.
    """
    ds = DatasetFolder(folder)
    return [
        ImportItem(ds.image_path(i), ds.mask_path(i), check_name(i, f"image id in {ds.root}"), ds.split_of(i))
        for i in ds.ids
    ]


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
    return ImportItem(path, None, check_name(path.stem, f"image name (file stem of {path})"), split)


def collect_paths(
    paths: Iterable[PathLike], masks_dir: PathLike | None = None, *, split: str = DEFAULT_SPLIT
) -> list[ImportItem]:
    """Items for image files, plain folders of images and dataset folders.

    A folder holding ``images/`` is a dataset folder (its masks and ``split.csv`` are used); any other
    folder contributes its image files (not recursive, hidden files skipped). Masks for loose files and
    plain folders come from ``masks_dir``, matched by file stem; images without a mask there get none.

    Raises:
        DataError: A missing path, an unsupported extension, a folder without images, a bad dataset folder,
            ``masks_dir`` together with a dataset folder, or a bad ``split``.
    """
    _check_split(split)
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
                items.extend(collect_dataset(path))
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
    return items


def load_item(item: ImportItem, *, binary_masks: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode and validate one item: the ``(C, H, W)`` image in its stored dtype and the int64 mask or None.

    Args:
        item: What to load.
        binary_masks: Map every mask value > 0 to 1 (the binary task; instance ids become foreground).

    Raises:
        DataError: A bad image or mask file, or a mask whose (H, W) differs from the image's.
    """
    image = read_raw_image(item.image)
    if item.mask is None:
        return image, None
    mask = read_mask(item.mask, binary=binary_masks)
    if mask.shape != image.shape[1:]:
        raise DataError(
            f"mask {item.mask} is {mask.shape[0]}x{mask.shape[1]} but image {item.image} is "
            f"{image.shape[1]}x{image.shape[2]} (H x W); a mask must have its image's height and width."
        )
    return image, mask
