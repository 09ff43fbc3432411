"""Dataset folders: ``images/<id>.*``, optional ``masks/<id>.*`` and optional ``split.csv`` (docs/architecture.md §2.1).

::

    DATASET/
      images/<id>.{png,tif,tiff,jpg,jpeg,bmp}
      masks/<id>.{png,tif,tiff}          optional, same id
      instances/<id>.{tif,tiff,png}      optional: object ids (0 = background), the instance task's truth
      fov/<id>.{png,tif,tiff}            optional: the area metrics are computed in (e.g. DRIVE's FOV)
      split.csv                          optional, header ``id,split`` (more columns allowed)

The split of an image is ``train``, ``val`` or a name starting with ``test`` (``testA``, ``testB``...). Without
``split.csv`` every image is ``train``; with one, images it does not list are ``train`` too.

An image may be a z-stack (a TIFF with a Z axis; its mask a ``(Z, H, W)`` TIFF): :meth:`DatasetFolder.
load_stack` reads it, and :class:`StackPlanes` shows such a folder as a dataset of 2D planes (what the 2D
networks train on), each plane id ``<id>@z<n>`` in its stack's split.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from napari_diffseg.base.errors import DataError
from napari_diffseg.base.formats import IMAGE_EXTENSIONS, MASK_EXTENSIONS
from napari_diffseg.data.io import read_image, read_image_shape, read_mask, read_mask_stack

__all__ = ["DEFAULT_SPLIT", "DatasetFolder", "StackPlanes", "is_valid_split"]

DEFAULT_SPLIT = "train"
"""Split of an image that ``split.csv`` does not list (or when there is no ``split.csv``)."""


def is_valid_split(name: str) -> bool:
    """True for ``train``, ``val`` and any name starting with ``test``."""
    return name in ("train", "val") or name.startswith("test")


def _scan(folder: Path, extensions: tuple[str, ...], what: str) -> dict[str, Path]:
    """Map id (file stem) → path for the files in ``folder`` with one of ``extensions``.

    Hidden files and files with other extensions are ignored. Two files with the same id are an error.
    """
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.suffix.lower() not in extensions or not entry.is_file():
            continue
        other = found.get(entry.stem)
        if other is not None:
            raise DataError(
                f"Dataset folder {folder.parent}: {what} id {entry.stem!r} has two files, {other.name} and "
                f"{entry.name}. Each id must have exactly one {what} file; remove or rename one of them."
            )
        found[entry.stem] = entry
    return found


class DatasetFolder:
    """Read-only view of a dataset folder (see the module docstring for the layout).

    Scanning happens once, in the constructor; pixels are read on demand by :meth:`load_image` and
    :meth:`load_mask`.

    Args:
        root: The dataset folder.

    Raises:
        DataError: ``root`` or ``root/images`` is missing, there are no images, an id has two image (or two
            mask) files, or ``split.csv`` is malformed (no ``id``/``split`` columns, an id without an image, a
            repeated id, an unknown split name).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"Dataset folder {self.root} does not exist or is not a folder.")
        images_dir = self.root / "images"
        if not images_dir.is_dir():
            raise DataError(
                f"Dataset folder {self.root} has no images/ folder. A dataset folder holds images/<id>.png "
                "(or .tif, .jpg...), optionally masks/<id>.png and split.csv with columns id,split."
            )
        self._images = _scan(images_dir, IMAGE_EXTENSIONS, "image")
        if not self._images:
            raise DataError(
                f"Dataset folder {self.root}: images/ holds no image files "
                f"(accepted extensions: {', '.join(IMAGE_EXTENSIONS)})."
            )
        masks_dir = self.root / "masks"
        masks = _scan(masks_dir, MASK_EXTENSIONS, "mask") if masks_dir.is_dir() else {}
        self._masks = {i: p for i, p in masks.items() if i in self._images}
        fov_dir = self.root / "fov"
        fovs = _scan(fov_dir, MASK_EXTENSIONS, "field-of-view mask") if fov_dir.is_dir() else {}
        self._fovs = {i: p for i, p in fovs.items() if i in self._images}
        inst_dir = self.root / "instances"
        insts = _scan(inst_dir, MASK_EXTENSIONS, "instance mask") if inst_dir.is_dir() else {}
        self._instances = {i: p for i, p in insts.items() if i in self._images}
        self.ids: list[str] = sorted(self._images)
        self._splits = self._read_splits()

    # -- split.csv ------------------------------------------------------------------------------------------

    def _read_splits(self) -> dict[str, str]:
        splits = dict.fromkeys(self.ids, DEFAULT_SPLIT)
        csv_path = self.root / "split.csv"
        if not csv_path.is_file():
            return splits
        try:
            with csv_path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                fields = [f.strip() for f in (reader.fieldnames or [])]
                if "id" not in fields or "split" not in fields:
                    raise DataError(
                        f"{csv_path}: the header must have columns 'id' and 'split' (found {fields or 'none'}). "
                        "Write a first line like `id,split`."
                    )
                reader.fieldnames = fields
                rows = [(n + 2, row) for n, row in enumerate(reader)]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(
                f"Cannot read {csv_path}: {exc}. Save it as UTF-8 CSV with columns id,split."
            ) from exc

        seen: dict[str, int] = {}
        unknown: list[str] = []
        for line, row in rows:
            image_id = (row.get("id") or "").strip()
            split = (row.get("split") or "").strip()
            if not image_id:
                continue
            if image_id not in self._images:
                unknown.append(image_id)
                continue
            if not is_valid_split(split):
                raise DataError(
                    f"{csv_path}, line {line}: unknown split {split!r} for id {image_id!r}. A split must be "
                    "'train', 'val' or a name starting with 'test' (e.g. 'test', 'testA')."
                )
            if image_id in seen:
                raise DataError(
                    f"{csv_path}, line {line}: id {image_id!r} is listed again (first on line {seen[image_id]}). "
                    "List each id once."
                )
            seen[image_id] = line
            splits[image_id] = split
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise DataError(
                f"{csv_path} lists {len(unknown)} id(s) with no image in {self.root / 'images'}: {shown}. "
                "Remove those rows or add the images (the id is the file name without extension)."
            )
        return splits

    # -- ids and splits -------------------------------------------------------------------------------------

    def _check_id(self, image_id: str) -> None:
        if image_id not in self._images:
            raise DataError(f"Dataset folder {self.root} has no image with id {image_id!r}.")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._images

    def __repr__(self) -> str:
        return f"DatasetFolder({str(self.root)!r}, images={len(self.ids)}, masks={len(self._masks)})"

    def split_of(self, image_id: str) -> str:
        """The split name of ``image_id`` (``train``, ``val``, ``testA``...)."""
        self._check_id(image_id)
        return self._splits[image_id]

    def ids_in_split(self, prefix: str) -> list[str]:
        """Sorted ids whose split name starts with ``prefix`` (``'test'`` matches ``testA``, ``testB``...)."""
        return [i for i in self.ids if self._splits[i].startswith(prefix)]

    @property
    def splits(self) -> dict[str, str]:
        """A copy of the id → split mapping."""
        return dict(self._splits)

    @property
    def train_ids(self) -> list[str]:
        """Sorted ids in the ``train`` split."""
        return [i for i in self.ids if self._splits[i] == "train"]

    @property
    def val_ids(self) -> list[str]:
        """Sorted ids in the ``val`` split."""
        return [i for i in self.ids if self._splits[i] == "val"]

    @property
    def test_ids(self) -> list[str]:
        """Sorted ids in any split whose name starts with ``test``."""
        return self.ids_in_split("test")

    # -- files ----------------------------------------------------------------------------------------------

    def image_path(self, image_id: str) -> Path:
        """Path of the image file of ``image_id``."""
        self._check_id(image_id)
        return self._images[image_id]

    def mask_path(self, image_id: str) -> Path | None:
        """Path of the mask file of ``image_id``, or None if it has none."""
        self._check_id(image_id)
        return self._masks.get(image_id)

    def has_mask(self, image_id: str) -> bool:
        """True if ``image_id`` has a mask file."""
        return self.mask_path(image_id) is not None

    def instance_path(self, image_id: str) -> Path | None:
        """Path of the instance mask of ``image_id`` (``instances/<id>.tif``), or None if it has none."""
        self._check_id(image_id)
        return self._instances.get(image_id)

    def has_instances(self, image_id: str) -> bool:
        """True if ``image_id`` has an instance mask (``instances/<id>.tif``)."""
        self._check_id(image_id)
        return image_id in self._instances

    def load_instances(self, image_id: str) -> np.ndarray:
        """int64 ``(H, W)`` object ids of ``image_id`` (0 = background), checked to have the image's size.

        Raises:
            DataError: No instance mask for this id, a bad file, or a size that differs from the image's.
        """
        path = self._instance_path(image_id, "with one id per object")
        ids = read_mask(path, binary=False)
        hw = read_image_shape(self._images[image_id])
        if ids.shape != hw:
            raise DataError(
                f"Instance mask {path} is {ids.shape[0]}x{ids.shape[1]} but its image is {hw[0]}x{hw[1]} "
                "(H x W); it must have the image's height and width."
            )
        return ids

    def load_region(self, image_id: str) -> np.ndarray | None:
        """Boolean ``(H, W)`` area to score ``image_id`` in (``fov/<id>.png``, e.g. DRIVE's field of view),
        or None when the dataset has none for it: metrics then cover the whole image."""
        self._check_id(image_id)
        path = self._fovs.get(image_id)
        if path is None:
            return None
        region = read_mask(path, binary=True).astype(bool)
        hw = read_image_shape(self._images[image_id])
        if region.shape != hw:
            raise DataError(
                f"Field-of-view mask {path} is {region.shape[0]}x{region.shape[1]} but its image is "
                f"{hw[0]}x{hw[1]} (H x W); it must have the image's height and width."
            )
        return region

    def load_image(self, image_id: str) -> np.ndarray:
        """Raw float32 ``(C, H, W)`` image of ``image_id`` (see :func:`~napari_diffseg.data.io.read_image`)."""
        return read_image(self.image_path(image_id))

    def load_stack(self, image_id: str) -> np.ndarray:
        """Raw float32 ``(Z, C, H, W)`` of ``image_id``: a z-stack's planes, or a 2D image as one plane."""
        arr = read_image(self.image_path(image_id), stacks=True)
        return arr if arr.ndim == 4 else arr[np.newaxis]

    def load_mask_stack(self, image_id: str, shape: tuple[int, int, int], binary: bool = True) -> np.ndarray:
        """int64 ``(Z, H, W)`` mask of the z-stack ``image_id`` of ``shape`` (a ``(Z, H, W)`` TIFF).

        Raises:
            DataError: No mask for this id, a bad file, or another shape than the stack's.
        """
        mask_file = self.mask_path(image_id)
        if mask_file is None:
            raise DataError(
                f"Dataset folder {self.root}: image {image_id!r} has no mask (expected masks/{image_id}.tif)."
            )
        return read_mask_stack(mask_file, shape, binary=binary)

    def load_instance_stack(self, image_id: str, shape: tuple[int, int, int]) -> np.ndarray:
        """int64 ``(Z, H, W)`` object ids of the z-stack ``image_id`` of ``shape`` (``instances/<id>.tif``,
        a ``(Z, H, W)`` TIFF; an object keeps its id through the planes it crosses).

        Raises:
            DataError: No instance mask for this id, a bad file, or another shape than the stack's.
        """
        path = self._instance_path(image_id, "a (Z, Y, X) TIFF with one id per object")
        return read_mask_stack(path, shape, binary=False)

    def _instance_path(self, image_id: str, expected: str) -> Path:
        self._check_id(image_id)
        path = self._instances.get(image_id)
        if path is None:
            raise DataError(
                f"Dataset folder {self.root}: image {image_id!r} has no instance mask "
                f"(expected instances/{image_id}.tif, {expected})."
            )
        return path

    def voxel_steps(self, image_id: str) -> tuple[float, float, float] | None:
        """A z-stack's (Z, Y, X) step in units of its Y pixel size, from the file's metadata (ImageJ
        ``spacing`` and resolution, OME physical sizes): ``(4.95, 1, 1)`` for planes 1 µm apart at 0.202 µm
        per pixel. ``None`` when the file does not give both the Z spacing and the pixel size."""
        from napari_diffseg.data.imagefile import read_image_file

        read = read_image_file(self.image_path(image_id))[0]
        if read.z_spacing is None or read.pixel_size is None or min(read.pixel_size) <= 0:
            return None
        py, px = read.pixel_size
        return (read.z_spacing / py, 1.0, px / py)

    def holds_stacks(self) -> bool:
        """True when any image is a z-stack (only TIFF files can be; each is read once to know)."""
        from napari_diffseg.base.formats import TIFF_EXTENSIONS
        from napari_diffseg.data.imagefile import read_image_file

        for i in self.ids:
            path = self._images[i]
            if path.suffix.lower() in TIFF_EXTENSIONS:
                if any("Z" in r.axes for r in read_image_file(path)):
                    return True
        return False

    def load_mask(self, image_id: str, binary: bool = True) -> np.ndarray:
        """int64 ``(H, W)`` mask of ``image_id``, checked to have the image's height and width.

        Raises:
            DataError: No mask for this id, a bad mask file, or a mask whose shape differs from the image's.
        """
        mask_file = self.mask_path(image_id)
        if mask_file is None:
            raise DataError(
                f"Dataset folder {self.root}: image {image_id!r} has no mask "
                f"(expected masks/{image_id}.png or .tif)."
            )
        mask = read_mask(mask_file, binary=binary)
        image_file = self._images[image_id]
        hw = read_image_shape(image_file)
        if mask.shape != hw:
            raise DataError(
                f"Mask {mask_file} has shape {mask.shape[0]}x{mask.shape[1]} but image {image_file} is "
                f"{hw[0]}x{hw[1]} (H x W). A mask must have the same height and width as its image."
            )
        return mask


class StackPlanes:
    """A dataset folder of z-stacks seen as 2D planes: what ``diffseg experiment`` trains the 2D networks on.

    Plane ids are ``<id>@z<n>`` (a 2D image of the folder is one plane, ``<id>@z0``); a plane is in its
    stack's split, and has a mask when its stack has one. The last stack read is kept, so reading its planes
    in order decodes each file once. A stack's instance mask (``instances/<id>.tif``, ``(Z, H, W)``) gives each
    plane its ids; field-of-view masks of stacks are not read (every voxel is scored).
    """

    def __init__(self, folder: DatasetFolder) -> None:
        self.folder = folder
        self.root = folder.root
        self._planes: dict[str, int] = {}
        self._cached: tuple[str, np.ndarray, np.ndarray | None] | None = None
        self._cached_ids: tuple[str, np.ndarray] | None = None

    def _stack(self, stack_id: str, with_mask: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if self._cached is None or self._cached[0] != stack_id or (with_mask and self._cached[2] is None):
            image = self.folder.load_stack(stack_id)
            mask = None
            if with_mask:
                z, _c, h, w = image.shape
                mask = self.folder.load_mask_stack(stack_id, (z, h, w))
            self._cached = (stack_id, image, mask)
            self._planes[stack_id] = int(image.shape[0])
        return self._cached[1], self._cached[2]

    def planes(self, stack_id: str) -> int:
        """The number of planes of a stack (1 for a 2D image)."""
        if stack_id not in self._planes:
            self._stack(stack_id, with_mask=False)
        return self._planes[stack_id]

    def plane_ids(self, stack_ids: list[str]) -> list[str]:
        """The plane ids of ``stack_ids``, stack by stack, planes in order."""
        return [f"{s}@z{z}" for s in stack_ids for z in range(self.planes(s))]

    @staticmethod
    def split_id(plane_id: str) -> tuple[str, int]:
        """``<id>@z<n>`` → (stack id, plane index)."""
        stack_id, _, z = plane_id.rpartition("@z")
        if not stack_id or not z.isdigit():
            raise DataError(f"{plane_id!r} is not a plane id (<image id>@z<plane>).")
        return stack_id, int(z)

    def has_mask(self, plane_id: str) -> bool:
        """True if the plane's stack has a mask."""
        return self.folder.has_mask(self.split_id(plane_id)[0])

    def has_instances(self, plane_id: str) -> bool:
        """True if the plane's stack has an instance mask."""
        return self.folder.has_instances(self.split_id(plane_id)[0])

    def load_image(self, plane_id: str) -> np.ndarray:
        """Raw float32 ``(C, H, W)`` of one plane."""
        stack_id, z = self.split_id(plane_id)
        return self._stack(stack_id, with_mask=False)[0][z]

    def load_mask(self, plane_id: str, binary: bool = True) -> np.ndarray:
        """int64 ``(H, W)`` mask of one plane (binary: foreground > 0)."""
        stack_id, z = self.split_id(plane_id)
        mask = self._stack(stack_id, with_mask=True)[1]
        assert mask is not None
        return mask[z]

    def load_region(self, plane_id: str) -> np.ndarray | None:
        """Stacks are scored on every voxel: None."""
        return None

    def instance_stack(self, stack_id: str) -> np.ndarray:
        """int64 ``(Z, H, W)`` object ids of a stack (the last one read is kept)."""
        if self._cached_ids is None or self._cached_ids[0] != stack_id:
            z, _c, h, w = self._stack(stack_id, with_mask=False)[0].shape
            self._cached_ids = (stack_id, self.folder.load_instance_stack(stack_id, (z, h, w)))
        return self._cached_ids[1]

    def load_instances(self, plane_id: str) -> np.ndarray:
        """int64 ``(H, W)`` object ids of one plane (its stack's ids: an object crossing planes keeps one)."""
        stack_id, z = self.split_id(plane_id)
        return self.instance_stack(stack_id)[z]
