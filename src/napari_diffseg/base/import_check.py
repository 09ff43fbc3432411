"""Warnings for an import that does not look like the project's other images (the CLI and the Project
widget say them; nothing is refused).

Two things quietly change what a project learns:

* **channels**: a job's networks take RGB input as soon as one training image is RGB (grey images are
  then repeated into three channels), so one RGB fundus photograph imported into a grey EM project
  changes every later model;
* **size**: the networks learn at one scale; an image whose pixels cover a very different area
  (4× larger or smaller than the project's typical image) is usually another magnification.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median
from typing import Protocol

__all__ = ["SIZE_RATIO", "ImageShape", "import_warnings"]

SIZE_RATIO = 4.0
"""An image this many times larger or smaller (in area) than the project's median is worth a warning."""


class ImageShape(Protocol):
    """What the check needs of an image record (the store's records and ``base.contracts.Image``)."""

    @property
    def name(self) -> str: ...
    @property
    def channels(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def width(self) -> int: ...


def _kind(channels: int) -> str:
    return "RGB" if channels >= 3 else "grey"


def _names(images: Sequence[ImageShape], limit: int = 3) -> str:
    shown = ", ".join(im.name for im in images[:limit])
    return shown + (f" and {len(images) - limit} more" if len(images) > limit else "")


def import_warnings(existing: Sequence[ImageShape], added: Sequence[ImageShape]) -> list[str]:
    """What is odd about ``added`` next to the project's ``existing`` images (empty: nothing)."""
    if not existing or not added:
        return []
    out = []
    kinds = {_kind(im.channels) for im in existing}
    if len(kinds) == 1:
        (project_kind,) = kinds
        odd = [im for im in added if _kind(im.channels) != project_kind]
        if odd:
            new_kind = _kind(odd[0].channels)
            effect = (
                "the project's models will now take RGB input and see every grey image repeated into "
                "three channels"
                if new_kind == "RGB"
                else "the models take RGB input and will see it repeated into three channels"
            )
            out.append(
                f"{_names(odd)} {'is' if len(odd) == 1 else 'are'} {new_kind} but the project's "
                f"{len(existing)} image(s) are {project_kind}: {effect}. If it does not belong to this "
                "project, exclude it (Reject in the Annotate widget) or import it into another project."
            )
    typical = median(im.height * im.width for im in existing)
    far = [im for im in added if not 1 / SIZE_RATIO <= (im.height * im.width) / typical <= SIZE_RATIO]
    if far:
        sizes = ", ".join(f"{im.width}×{im.height}" for im in far[:3])
        side = round(typical**0.5)
        out.append(
            f"{_names(far)} ({sizes}) {'is' if len(far) == 1 else 'are'} far from the project's typical "
            f"size (about {side}×{side}): if the pixel size differs (another magnification), the networks, "
            "which learn at one scale, will do worse on it; resample it to the project's pixel size."
        )
    return out
